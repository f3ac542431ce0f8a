"""The openai Python SDK against voice-sim's OpenAI-compatible LLM API."""
import openai
import pytest

from conftest import Sim


def client(sim):
    return openai.OpenAI(base_url=f"http://{sim.llm}/v1", api_key="not-needed", max_retries=0)


def test_streaming_chat_with_usage(sim):
    stream = client(sim).chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "hello there"}],
        stream=True, stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text.startswith("You said: hello there. This reply comes from the voice simulator.")
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == len(text.split(" "))


def test_non_streaming_and_models(sim):
    c = client(sim)
    r = c.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content.startswith("You said: hi.")
    ids = [m.id for m in c.models.list()]
    assert ids == ["voice-sim/llm-simulator"]


def test_error_status_is_an_api_error(sim):
    with pytest.raises(openai.APIStatusError) as e:
        client(sim).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x [llm-error]"}], stream=True)
    assert e.value.status_code == 503
    assert "simulated LLM outage" in str(e.value)


def test_sdk_reads_the_quirky_stream():
    s = Sim("--profile", "zero", "--llm-quirks")
    try:
        stream = client(s).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "quirks"}], stream=True)
        text = "".join((ch.choices[0].delta.content or "") for ch in stream if ch.choices)
        # The SDK does not strip <think>: that is the gateway's job.
        assert text.startswith("<think>Plan the reply. Done.</think>You said: quirks.")
    finally:
        s.stop()
