"""NVIDIA's own Python client (nvidia-riva-client) against voice-sim's Riva API."""
import subprocess

import grpc
import riva.client
from riva.client.proto import health_pb2, health_pb2_grpc, riva_asr_pb2, riva_audio_pb2, riva_common_pb2, riva_tts_pb2
from google.protobuf import descriptor_pb2

from conftest import _bin, hear, speak_wav


def test_streaming_asr_reads_the_wav_header(sim, tmp_path):
    wav = speak_wav(tmp_path, "turn on the kitchen lights", rate=16000)
    auth = riva.client.Auth(uri=sim.riva)
    asr = riva.client.ASRService(auth)
    # As NVIDIA's examples do: encoding and sample rate left unset, the WAV header tells.
    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(language_code="en-US", max_alternatives=1),
        interim_results=True)
    with riva.client.AudioChunkFileIterator(str(wav), 1600) as chunks:
        responses = list(asr.streaming_response_generator(audio_chunks=chunks, streaming_config=config))
    results = [r for resp in responses for r in resp.results]
    finals = [r.alternatives[0].transcript for r in results if r.is_final]
    interims = [r.alternatives[0].transcript for r in results if not r.is_final]
    assert finals == ["turn on the kitchen lights"]
    assert interims == ["turn", "turn on", "turn on the", "turn on the kitchen"]


def test_streaming_asr_rejects_audio_without_rate(sim):
    auth = riva.client.Auth(uri=sim.riva)
    asr = riva.client.ASRService(auth)
    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(language_code="en-US"), interim_results=False)
    try:
        list(asr.streaming_response_generator(audio_chunks=[b"\x00\x01" * 800], streaming_config=config))
        raise AssertionError("expected INVALID_ARGUMENT")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sample_rate_hertz" in e.details()


def test_streaming_tts_round_trips_through_asr(sim):
    auth = riva.client.Auth(uri=sim.riva)
    tts = riva.client.SpeechSynthesisService(auth)
    text = "Dr. Sim measured 3.5 seconds."
    chunks = list(tts.synthesize_online(text, language_code="en-US", sample_rate_hz=22050,
                                        encoding=riva.client.AudioEncoding.LINEAR_PCM))
    assert len(chunks) > 1, "streamed in several chunks"
    pcm = b"".join(c.audio for c in chunks)
    assert hear(pcm) == [text]
    # 60 ms of audio per byte of text, plus start and end slots, at 22050 Hz, 16-bit.
    assert len(pcm) == (len(text) + 2) * int(22050 * 0.06) * 2
    # Several sentences on one bidirectional stream, as the client can send.
    many = list(tts.synthesize_online(["One.", "Two."], language_code="en-US", sample_rate_hz=16000))
    assert hear(b"".join(c.audio for c in many)) == ["One.", "Two."]


def test_tts_unary_and_error_status(sim):
    auth = riva.client.Auth(uri=sim.riva)
    tts = riva.client.SpeechSynthesisService(auth)
    resp = tts.synthesize("Hello.", language_code="en-US", sample_rate_hz=16000)
    assert hear(resp.audio) == ["Hello."]
    try:
        list(tts.synthesize_online("fail [tts-error]", language_code="en-US", sample_rate_hz=16000))
        raise AssertionError("expected an error")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INTERNAL


def test_health_says_simulator(sim):
    with grpc.insecure_channel(sim.riva) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ["", "voice-sim", "nvidia.riva.asr.RivaSpeechRecognition"]:
            r = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert r.status == health_pb2.HealthCheckResponse.SERVING


def _messages(fdp, prefix=""):
    for m in fdp.message_type if hasattr(fdp, "message_type") else fdp.nested_type:
        name = f"{prefix}.{m.name}"
        yield name, m
        yield from _messages(m, name)


def test_our_riva_protos_match_nvidias_descriptors(tmp_path):
    """Field by field: every message, field number, type, label and oneof of NVIDIA's 2.28.0
    descriptors must be the same in the protos voice-sim and voice-gateway are built from."""
    path = tmp_path / "fds.bin"
    subprocess.run([_bin("VOICE_SIM_BIN"), "--dump-descriptors", str(path)], check=True)
    ours = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    ours_by_name = {f.name: f for f in ours.file}
    for module in [riva_audio_pb2, riva_common_pb2, riva_asr_pb2, riva_tts_pb2]:
        theirs = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(theirs)
        mine = ours_by_name[theirs.name]
        assert mine.package == theirs.package
        a = dict(_messages(theirs, theirs.package))
        b = dict(_messages(mine, mine.package))
        assert a.keys() == b.keys()
        for name, tm in a.items():
            om = b[name]
            tf = {(f.name, f.number, f.type, f.label, f.type_name, f.proto3_optional) for f in tm.field}
            of = {(f.name, f.number, f.type, f.label, f.type_name, f.proto3_optional) for f in om.field}
            assert tf == of, name
            assert [o.name for o in tm.oneof_decl] == [o.name for o in om.oneof_decl], name
        assert [(e.name, [(v.name, v.number) for v in e.value]) for e in theirs.enum_type] == \
               [(e.name, [(v.name, v.number) for v in e.value]) for e in mine.enum_type]
        for ts, os_ in zip(theirs.service, mine.service):
            assert [(m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                    for m in ts.method] == \
                   [(m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                    for m in os_.method]
