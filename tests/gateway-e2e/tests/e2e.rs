//! voice-gateway and voice-sim as processes: the seed's event sequence, audio, metrics, several
//! turns, barge-in, every error path, graceful drain.

use std::time::Duration;

use gateway_e2e::*;
use voice_proto::voice::EventType;

const REPLY_TAIL: &str = "This reply comes from the voice simulator. \
Dr. Sim measured 3.5 seconds of audio! Is that not remarkable?";

fn is_event(t: EventType) -> impl Fn(&Got) -> bool {
    move |g| matches!(g, Got::Event(e, _) if *e == t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_turn_gives_seed_sequence_audio_and_metrics() -> anyhow::Result<()> {
    let sim = Sim::start(&["--profile", "zero"])?;
    let gw = Gateway::with_sim(&sim, &[])?;
    // Half-close: the gateway finishes the turn, then END_OF_TURN.
    let got = gw.speak_and_close("what is the weather").await?;
    // The LLM keeps streaming while the first sentence is spoken (pipelining), so under load
    // its last chunks may come after SPEAKING, between audio chunks: those are left out here
    // (the full text is checked below).
    let speaking = got
        .iter()
        .position(is_event(EventType::Speaking))
        .unwrap_or(got.len());
    let in_order: Vec<Got> = got
        .iter()
        .enumerate()
        .filter(|(i, g)| *i < speaking || !matches!(g, Got::Llm(_)))
        .map(|(_, g)| g.clone())
        .collect();
    assert_eq!(
        tags(&in_order),
        [
            "LISTENING",
            "transcript",
            "PROCESSING",
            "llm",
            "SPEAKING",
            "audio",
            "LISTENING",
            "END_OF_TURN"
        ]
        .map(String::from),
        "{got:?}"
    );
    let transcripts: Vec<_> = got
        .iter()
        .filter_map(|g| match g {
            Got::Transcript(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        transcripts,
        ["what", "what is", "what is the", "what is the weather"]
    );
    let reply = format!("You said: what is the weather. {REPLY_TAIL}");
    assert_eq!(llm_text(&got), reply);
    // The reply audio says the reply, split into sentences, in order.
    assert_eq!(
        hear(&audio(&got)),
        [
            "You said: what is the weather.",
            "This reply comes from the voice simulator.",
            "Dr. Sim measured 3.5 seconds of audio!",
            "Is that not remarkable?"
        ]
    );
    let m = gw.metrics()?;
    let lang = "{language=\"en-US\"}";
    let model = "{model=\"sim-model\"}";
    assert_eq!(
        m.value(&format!("voice_gateway_asr_latency_seconds_count{lang}")),
        1.0
    );
    assert_eq!(
        m.value(&format!("voice_gateway_llm_ttft_seconds_count{model}")),
        1.0
    );
    assert_eq!(
        m.value(&format!("voice_gateway_llm_total_seconds_count{model}")),
        1.0
    );
    assert_eq!(
        m.value(&format!("voice_gateway_llm_tokens_total_count{model}")),
        1.0
    );
    // Usage from the server: the sim's reply is 24 words = 24 tokens.
    assert_eq!(
        m.value(&format!("voice_gateway_llm_tokens_total_sum{model}")),
        24.0
    );
    assert_eq!(
        m.value(&format!("voice_gateway_tts_latency_seconds_count{lang}")),
        4.0
    );
    assert_eq!(
        m.value(&format!("voice_gateway_tts_characters_total_count{lang}")),
        4.0
    );
    assert_eq!(
        m.value(&format!("voice_gateway_tts_characters_total_sum{lang}")),
        (reply.len() - 3) as f64
    );
    assert_eq!(m.value("voice_gateway_e2e_latency_seconds_count"), 1.0);
    assert_eq!(
        m.value("voice_gateway_requests_total{status=\"success\"}"),
        1.0
    );
    assert_eq!(
        m.value("voice_gateway_requests_total{status=\"error\"}"),
        0.0
    );
    Ok(())
}

/// Audio that Riva finalises as an empty transcript (noise: here a WAV of silence with an
/// empty sidecar transcript) starts no turn and is not an ASR latency observation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_final_transcript_is_no_turn_and_not_timed() -> anyhow::Result<()> {
    let dir = test_support::processes::TempDir::new("gateway-e2e-empty-final");
    let silence = vec![0u8; 32_000];
    std::fs::write(
        dir.join("noise.wav"),
        voice_sim::codec::wav_file(16_000, &silence),
    )?;
    std::fs::write(dir.join("noise.txt"), "")?;
    let sim = Sim::start(&[
        "--profile",
        "zero",
        "--transcripts",
        dir.0.to_str().unwrap(),
    ])?;
    let gw = Gateway::with_sim(&sim, &[])?;
    let c = gw.open().await?;
    c.send(msg::config(16_000, false)).await?;
    for chunk in silence.chunks(3200) {
        c.send(msg::audio(chunk)).await?;
    }
    let got = c.finish().await?;
    assert_eq!(
        tags(&got),
        ["LISTENING", "END_OF_TURN"].map(String::from),
        "{got:?}"
    );
    let m = gw.metrics()?;
    let count = "voice_gateway_asr_latency_seconds_count{language=\"en-US\"}";
    assert_eq!(m.value(count), 0.0, "{count}");
    assert_eq!(
        m.value("voice_gateway_requests_total{status=\"success\"}"),
        0.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_turns_with_timings_and_bounded_history() -> anyhow::Result<()> {
    let sim = Sim::start(&["--profile", "zero"])?;
    let gw = Gateway::with_sim(&sim, &[("LLM_HISTORY_TURNS", "2")])?;
    let mut c = gw.open().await?;
    c.send(msg::config(0, true)).await?;
    c.until(is_event(EventType::Listening)).await?;
    let mut counts = Vec::new();
    for turn in 0..4 {
        c.send(msg::text(&format!("turn {turn} [count]"))).await?;
        let got = c.until(is_event(EventType::Listening)).await?;
        assert_eq!(
            tags(&got),
            [
                "PROCESSING",
                "llm",
                "SPEAKING",
                "audio",
                "timings",
                "LISTENING"
            ]
            .map(String::from),
            "{got:?}"
        );
        let t = got
            .iter()
            .find_map(|g| match g {
                Got::Timings(t) => Some(*t),
                _ => None,
            })
            .expect("timings");
        assert_eq!(t.asr_ms, 0.0, "a text turn has no ASR");
        assert!(
            t.llm_first_token_ms > 0.0 && t.llm_first_token_ms <= t.llm_total_ms,
            "{t:?}"
        );
        assert!(
            t.first_audio_ms > 0.0 && t.first_audio_ms <= t.turn_total_ms,
            "{t:?}"
        );
        let own = t.gateway_ms.expect("gateway_ms with audio");
        assert!(own >= 0.0 && own <= t.first_audio_ms, "{t:?}");
        assert_eq!(t.sentences, 1);
        assert_eq!(t.audio_bytes as usize, audio(&got).len());
        counts.push(llm_text(&got));
    }
    // system + history (2 turns = 4 messages at most) + the new user message.
    assert_eq!(
        counts,
        [
            "This conversation has 2 messages.",
            "This conversation has 4 messages.",
            "This conversation has 6 messages.",
            "This conversation has 6 messages."
        ]
    );
    let rest = c.finish().await?;
    assert_eq!(tags(&rest), ["END_OF_TURN"]);
    assert_eq!(
        gw.metrics()?
            .value("voice_gateway_requests_total{status=\"success\"}"),
        4.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_and_text_turns_share_one_stream() -> anyhow::Result<()> {
    let sim = Sim::start(&["--profile", "zero"])?;
    let gw = Gateway::with_sim(&sim, &[])?;
    let mut c = gw.listening().await?;
    for (i, words) in ["first question", "second question"].iter().enumerate() {
        c.speak(words).await?;
        let got = c.until(is_event(EventType::Listening)).await?;
        assert_eq!(
            llm_text(&got),
            format!("You said: {words}. {REPLY_TAIL}"),
            "turn {i}"
        );
        assert_eq!(hear(&audio(&got)).len(), 4);
    }
    c.send(msg::text("and a typed one")).await?;
    let got = c.until(is_event(EventType::Listening)).await?;
    assert!(llm_text(&got).starts_with("You said: and a typed one."));
    let m = gw.metrics()?;
    assert_eq!(
        m.value("voice_gateway_requests_total{status=\"success\"}"),
        3.0
    );
    assert_eq!(
        m.value("voice_gateway_asr_latency_seconds_count{language=\"en-US\"}"),
        2.0
    );
    assert_eq!(m.value("voice_gateway_e2e_latency_seconds_count"), 3.0);
    assert_eq!(m.value("voice_gateway_active_streams"), 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_stops_the_reply_and_listens() -> anyhow::Result<()> {
    // Real-time TTS: the reply takes seconds to stream, so there is something to interrupt.
    let sim = Sim::start(&["--profile", "zero", "--tts-rtf", "1.0"])?;
    let gw = Gateway::with_sim(&sim, &[])?;
    let mut c = gw.listening().await?;
    c.send(msg::text("tell me a long story")).await?;
    c.until(|g| matches!(g, Got::Audio(_))).await?;
    c.send(msg::barge_in()).await?;
    let got = c.until(is_event(EventType::Listening)).await?;
    let Some(Got::Event(_, why)) = got.last() else {
        unreachable!()
    };
    assert_eq!(why, "Interrupted");
    // The interrupted reply was far from complete: 4 sentences of ~2.5 s audio at real time.
    let heard = audio(&got).len();
    assert!(
        heard < 3 * 32_000,
        "{heard} bytes of audio after the barge-in"
    );
    // The next turn works, and nothing of the old one arrives after LISTENING.
    c.send(msg::text("short [count]")).await?;
    let next = c.until(is_event(EventType::Listening)).await?;
    assert_eq!(
        tags(&next),
        ["PROCESSING", "llm", "SPEAKING", "audio", "LISTENING"].map(String::from)
    );
    // History kept the interrupted exchange: system + user + partial assistant + new user.
    assert_eq!(llm_text(&next), "This conversation has 4 messages.");
    assert_eq!(hear(&audio(&next)), ["This conversation has 4 messages."]);
    let m = gw.metrics()?;
    assert_eq!(m.value("voice_gateway_barge_ins_total"), 1.0);
    // The interrupted turn and the next one are both successes; nothing is an error.
    assert_eq!(
        m.value("voice_gateway_requests_total{status=\"success\"}"),
        2.0
    );
    assert_eq!(
        m.value("voice_gateway_requests_total{status=\"error\"}"),
        0.0
    );
    Ok(())
}

/// A barge-in after the reply has finished, from a client that has not read all of it: the
/// reply's rest (audio, timings, LISTENING) still in the gateway's queue is dropped, and
/// LISTENING "Interrupted" follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_after_the_reply_finished_drops_its_queued_rest() -> anyhow::Result<()> {
    // ~140 KB of audio (200 ms chunks of 6.4 KB): more than the client's 16 KiB window and the
    // gateway's HTTP/2 send buffer take (77 KB in all, measured), less than those and its
    // 32-message queue hold (~280 KB), so the turn ends with the reply's tail in the queue.
    let reply = "This sentence is one of many in a long reply. Here is one more of them.";
    let sim = Sim::replying(reply, &[])?;
    let gw = Gateway::with_sim(&sim, &[("LLM_MAX_TOKENS", "1000")])?;
    let mut c = gw.open_with_window(16 * 1024).await?;
    c.send(msg::config(16_000, true)).await?;
    c.until(is_event(EventType::Listening)).await?;
    c.send(msg::text("tell me a story")).await?;
    // Nothing is read until the turn has ended in the gateway.
    poll(Duration::from_secs(10), "the turn finished", || {
        let m = gw.metrics().ok()?;
        (m.value("voice_gateway_requests_total{status=\"success\"}") == 1.0).then_some(())
    })?;
    c.send(msg::barge_in()).await?;
    let got = c.until(is_event(EventType::Listening)).await?;
    let Some(Got::Event(_, why)) = got.last() else {
        unreachable!()
    };
    assert_eq!(why, "Interrupted", "{:?}", tags(&got));
    assert!(
        !got.iter().any(|g| matches!(g, Got::Timings(_))),
        "{:?}",
        tags(&got)
    );
    let heard = audio(&got).len();
    let whole = voice_sim::codec::encode_speech(reply, 16_000).len();
    assert!(heard > 0 && heard < whole, "{heard} of {whole} bytes");
    // A second barge-in has nothing left to drop: no second "Interrupted" (checked below).
    c.send(msg::barge_in()).await?;

    // The next turn is whole, and its history has the finished exchange.
    c.send(msg::text("short [count]")).await?;
    let next = c.until(is_event(EventType::Listening)).await?;
    assert_eq!(llm_text(&next), "This conversation has 4 messages.");
    // A barge-in once the client has read a reply to its end has nothing to drop: no event.
    c.send(msg::barge_in()).await?;
    c.send(msg::text("short [count]")).await?;
    let last = c.until(is_event(EventType::Listening)).await?;
    assert_eq!(tags(&last)[0], "PROCESSING", "{:?}", tags(&last));
    let m = gw.metrics()?;
    assert_eq!(m.value("voice_gateway_barge_ins_total"), 1.0);
    assert_eq!(
        m.value("voice_gateway_requests_total{status=\"success\"}"),
        3.0
    );
    Ok(())
}

/// A client that stops reading while its reply streams: after CLIENT_STALL_TIMEOUT with the
/// outbound queue full, the gateway ends that stream with RESOURCE_EXHAUSTED and frees its slot,
/// its backend calls and its queue, while other streams carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_ended_and_frees_its_slot() -> anyhow::Result<()> {
    // A reply of megabytes of audio: more than the client's 16 KiB windows, the gateway's
    // HTTP/2 send buffer for the stream and its outbound queue hold together (~280 KB, see
    // barge_in_after_the_reply_finished_drops_its_queued_rest).
    let long_reply = "This sentence is one of many in a very long reply. ".repeat(40);
    let sim = Sim::replying(&long_reply, &[])?;
    let gw = Gateway::with_sim(
        &sim,
        &[
            ("CLIENT_STALL_TIMEOUT", "1"),
            ("MAX_CONCURRENT_STREAMS", "1"),
            ("LLM_MAX_TOKENS", "1000"),
        ],
    )?;
    let mut stalled = gw.open_with_window(16 * 1024).await?;
    stalled.send(msg::config(16_000, false)).await?;
    stalled.until(is_event(EventType::Listening)).await?;
    stalled.send(msg::text("tell me a long story")).await?;
    // ... and nothing more is read from it.
    let m = poll(Duration::from_secs(20), "the stalled stream ended", || {
        let m = gw.metrics().ok()?;
        (m.value("voice_gateway_client_stalls_total") == 1.0
            && m.value("voice_gateway_active_streams") == 0.0)
            .then_some(m)
    })?;
    // Not a backend failure, and the turn did not complete.
    assert_eq!(
        m.value("voice_gateway_requests_total{status=\"error\"}"),
        0.0
    );
    assert_eq!(
        m.value("voice_gateway_requests_total{status=\"success\"}"),
        0.0
    );
    // Its slot is free: with MAX_CONCURRENT_STREAMS=1 another stream is served in full.
    let mut next = gw.listening().await?;
    next.send(msg::text("hello")).await?;
    let got = next.until(is_event(EventType::Listening)).await?;
    assert_eq!(llm_text(&got).trim_end(), long_reply.trim_end());
    assert!(audio(&got).len() > 1_000_000, "{} bytes", audio(&got).len());
    next.finish().await?;
    // When the stalled client reads again, it gets what was already in flight, then the status.
    let status = loop {
        match stalled.rx.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stalled stream ended OK, expected RESOURCE_EXHAUSTED"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("CLIENT_STALL_TIMEOUT"),
        "{status:?}"
    );
    Ok(())
}

/// `stage_queue_seconds{stage="client"}` times each reply audio chunk's wait for room in the
/// outbound queue: a client that reads slowly makes it grow, one observation per chunk;
/// `stage="tts"` has one per sentence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_shows_in_the_client_queue_time() -> anyhow::Result<()> {
    // About 60 s of reply audio, 300 chunks: more than the HTTP/2 buffers and the queue hold.
    let long_reply = "This sentence is one of many in a very long reply. ".repeat(20);
    let sim = Sim::replying(long_reply.trim(), &[])?;
    let gw = Gateway::with_sim(&sim, &[("LLM_MAX_TOKENS", "1000")])?;
    let mut c = gw.open_with_window(16 * 1024).await?;
    c.send(msg::config(16_000, false)).await?;
    c.until(is_event(EventType::Listening)).await?;
    c.send(msg::text("tell me a long story")).await?;
    let mut chunks = 0;
    loop {
        match c.next().await? {
            Some(Got::Audio(_)) => {
                chunks += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Some(Got::Event(EventType::Listening, _)) => break,
            Some(_) => {}
            None => anyhow::bail!("the stream ended before LISTENING"),
        }
    }
    let m = gw.metrics()?;
    let client = |s: &str| {
        m.value(&format!(
            "voice_gateway_stage_queue_seconds_{s}{{stage=\"client\"}}"
        ))
    };
    assert!(chunks > 250, "{chunks} audio chunks");
    assert_eq!(client("count"), f64::from(chunks));
    // Some 200 chunks waited about 10 ms each for the client.
    assert!(client("sum") > 1.0, "client stage: {} s", client("sum"));
    assert_eq!(
        m.value("voice_gateway_stage_queue_seconds_count{stage=\"tts\"}"),
        20.0
    );
    assert_eq!(m.requests(), (1.0, 0.0));
    Ok(())
}

async fn expect_status(
    gw: &Gateway,
    msgs: Vec<voice_proto::voice::ClientMessage>,
) -> tonic::Status {
    let mut c = gw.open().await.expect("open");
    for m in msgs {
        let _ = c.send(m).await;
    }
    // `next` gives up after 20 s of silence: an accepted message fails the test, not hangs it.
    loop {
        match c.next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended OK, expected an error status"),
            Err(s) => return s,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_and_resource_exhausted() -> anyhow::Result<()> {
    let sim = Sim::start(&["--profile", "zero"])?;
    let gw = Gateway::with_sim(&sim, &[("MAX_CONCURRENT_STREAMS", "2")])?;
    let s = expect_status(&gw, vec![msg::audio(&[0, 0, 1, 1])]).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("audio_chunk before config"), "{s:?}");
    let s = expect_status(&gw, vec![msg::text("hi")]).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let s = expect_status(&gw, vec![msg::config(12_345, false)]).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(
        s.message().contains("unsupported sample_rate 12345"),
        "{s:?}"
    );
    // A client's language_code becomes a metric label: only a plausible BCP-47 tag is taken.
    let with_language = |code: &str| {
        let mut m = msg::config(16_000, false);
        if let Some(voice_proto::voice::client_message::Content::Config(c)) = &mut m.content {
            c.language_code = code.into();
        }
        m
    };
    let s = expect_status(&gw, vec![with_language(&"x".repeat(10_000))]).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("not a BCP-47 tag"), "{s:?}");
    let s = expect_status(&gw, vec![with_language("en_US\"} 1")]).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    // A session_id too long for a log line.
    let s = expect_status(&gw, vec![msg::session(&"s".repeat(200), 16_000, "en-US")]).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(
        s.message().contains("session_id must be at most 128 bytes"),
        "{s:?}"
    );
    // One text turn in a session of language `code`; the metrics after it.
    let hello_in = async |code: &str| -> anyhow::Result<Metrics> {
        let mut c = gw.open().await?;
        c.send(with_language(code)).await?;
        c.until(is_event(EventType::Listening)).await?;
        c.send(msg::text("hello")).await?;
        c.until(is_event(EventType::Listening)).await?;
        c.finish().await?;
        gw.metrics()
    };
    // Empty: ASR_LANGUAGE.
    let m = hello_in("").await?;
    assert!(
        !m.0.contains("xxxx"),
        "a rejected language_code made a series"
    );
    let en_us = "voice_gateway_tts_characters_total_count{language=\"en-US\"}";
    let before = m.value(en_us);
    assert!(before > 0.0);
    // Tags are case-insensitive: EN-us is en-US, one series.
    let m = hello_in("EN-us").await?;
    assert_eq!(m.value(en_us), 2.0 * before);
    assert!(!m.0.contains("EN-us"), "a second series for en-US");
    let s = expect_status(
        &gw,
        vec![msg::config(16_000, false), msg::config(16_000, false)],
    )
    .await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let s = expect_status(
        &gw,
        vec![
            msg::config(16_000, false),
            voice_proto::voice::ClientMessage { content: None },
        ],
    )
    .await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);

    // Two streams fill the gateway; the third is refused; closing one frees a place.
    let a = gw.listening().await?;
    let _b = gw.listening().await?;
    let err = gw.open().await.expect_err("third stream must be refused");
    let s = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        gw.metrics()?.value("voice_gateway_streams_rejected_total"),
        1.0
    );
    a.finish().await?;
    gw.listening().await?;
    Ok(())
}

/// The gateway's JSON log lines of a session carry the session_id its client gave, at
/// LOG_LEVEL=info and at warn; a session refused for its config is logged at warn with its
/// session_id and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_the_client_session_id() -> anyhow::Result<()> {
    let sim = Sim::start(&["--profile", "zero"])?;
    let dir = test_support::processes::TempDir::new("gateway-e2e-logs");
    for level in ["info", "warn"] {
        let path = dir.join(&format!("{level}.log"));
        let gw = Gateway::with_sim_logged(&sim, &[("LOG_LEVEL", level)], &path)?;
        let id = format!("e2e-logs-{level}");
        // A spoken turn that works, then a text turn whose LLM fails.
        let mut c = gw.open().await?;
        c.send(msg::session(&id, 16_000, "en-US")).await?;
        c.speak("log this").await?;
        c.until(is_event(EventType::Listening)).await?;
        c.until(is_event(EventType::Listening)).await?;
        c.send(msg::text("x [llm-error]")).await?;
        c.rest().await?;
        let s = expect_status(&gw, vec![msg::session("refused-rate", 12_345, "en-US")]).await;
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        let s = expect_status(&gw, vec![msg::session("refused-lang", 16_000, "en_US")]).await;
        assert_eq!(s.code(), tonic::Code::InvalidArgument);

        let lines = poll(Duration::from_secs(5), "the refusals logged", || {
            let text = gw.logs().ok()?;
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            let refusals = lines
                .iter()
                .filter(|l| l["fields"]["message"] == "session refused")
                .count();
            (refusals == 2).then_some(lines)
        })?;
        let find = |message: &str, session_id: &str| {
            lines
                .iter()
                .find(|l| {
                    l["fields"]["message"] == message && l["span"]["session_id"] == session_id
                })
                .unwrap_or_else(|| {
                    let what = format!("{message:?} of session {session_id:?}");
                    panic!("LOG_LEVEL={level}: no {what} in {lines:#?}")
                })
        };
        let failed = find("turn failed", &id);
        assert_eq!(failed["level"], "WARN");
        assert_eq!(failed["fields"]["stage"], "LLM");
        assert!(
            failed["fields"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("503")),
            "{failed}"
        );
        if level == "info" {
            for message in ["session started", "final transcript"] {
                find(message, &id);
            }
            // Every line logged in a session's span names that session.
            let known = [id.as_str(), "refused-rate", "refused-lang"];
            let in_sessions: Vec<_> = lines
                .iter()
                .filter(|l| l["span"]["name"] == "session" || l["span"]["name"] == "turn")
                .collect();
            assert!(in_sessions.len() >= 5, "{lines:#?}");
            for l in in_sessions {
                let sid = l["span"]["session_id"].as_str().unwrap_or_default();
                assert!(known.contains(&sid), "{l}");
            }
        }
        for (session_id, why) in [
            ("refused-rate", "unsupported sample_rate 12345"),
            ("refused-lang", "not a BCP-47 tag"),
        ] {
            let l = find("session refused", session_id);
            assert_eq!(l["level"], "WARN");
            assert!(
                l["fields"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(why)),
                "{l}"
            );
        }
    }
    Ok(())
}

/// A backend failure: ERROR event, the stage's error counter, requests{error}; the call ends OK.
async fn expect_backend_error(
    gw: &Gateway,
    send: Vec<voice_proto::voice::ClientMessage>,
) -> String {
    let mut c = gw.open().await.expect("open");
    c.send(msg::config(16_000, false)).await.expect("config");
    for m in send {
        c.send(m).await.expect("send");
    }
    let got = c
        .rest()
        .await
        .expect("the stream ends cleanly after an ERROR event");
    match got.last() {
        Some(Got::Event(EventType::Error, m)) => m.clone(),
        other => panic!(
            "expected an ERROR event last, got {other:?} in {:?}",
            tags(&got)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_end_the_stream_with_error_and_counters() -> anyhow::Result<()> {
    let sim = Sim::start(&["--profile", "zero"])?;
    let gw = Gateway::with_sim(
        &sim,
        &[
            ("LLM_IDLE_TIMEOUT", "0.5"),
            ("LLM_FIRST_TOKEN_TIMEOUT", "0.5"),
        ],
    )?;
    // Another stream carries on through all of it.
    let mut bystander = gw.listening().await?;

    let m = expect_backend_error(&gw, vec![msg::text("x [llm-error]")]).await;
    assert!(m.contains("LLM") && m.contains("503"), "{m}");
    let m = expect_backend_error(&gw, vec![msg::text("x [llm-midstream-error]")]).await;
    assert!(m.contains("mid-stream error"), "{m}");
    let m = expect_backend_error(&gw, vec![msg::text("x [llm-disconnect]")]).await;
    assert!(m.contains("LLM"), "{m}");
    let m = expect_backend_error(&gw, vec![msg::text("x [llm-stall]")]).await;
    assert!(m.contains("stalled"), "{m}");
    let m = expect_backend_error(&gw, vec![msg::text("say [tts-error]")]).await;
    assert!(m.contains("TTS"), "{m}");
    let speech: Vec<_> = speech_chunks("boom [asr-error]")
        .iter()
        .map(|c| msg::audio(c))
        .collect();
    let m = expect_backend_error(&gw, speech).await;
    assert!(m.contains("ASR"), "{m}");

    bystander.send(msg::text("still there?")).await?;
    let got = bystander.until(is_event(EventType::Listening)).await?;
    assert!(llm_text(&got).starts_with("You said: still there. "));

    let mx = gw.metrics()?;
    assert_eq!(
        mx.value("voice_gateway_llm_errors_total{error_type=\"http_5xx\"}"),
        1.0
    );
    assert_eq!(
        mx.value("voice_gateway_llm_errors_total{error_type=\"api_error\"}"),
        1.0
    );
    assert_eq!(
        mx.value("voice_gateway_llm_errors_total{error_type=\"stream\"}"),
        1.0
    );
    assert_eq!(
        mx.value("voice_gateway_llm_errors_total{error_type=\"timeout\"}"),
        1.0
    );
    assert_eq!(
        mx.value("voice_gateway_tts_errors_total{error_type=\"internal\"}"),
        1.0
    );
    assert_eq!(
        mx.value("voice_gateway_asr_errors_total{error_type=\"internal\"}"),
        1.0
    );
    assert_eq!(
        mx.value("voice_gateway_requests_total{status=\"error\"}"),
        6.0
    );
    assert_eq!(
        mx.value("voice_gateway_requests_total{status=\"success\"}"),
        1.0
    );
    Ok(())
}

/// Once `active` streams remain: the one failed turn counted in its stage's `error_counter`
/// and in `requests_total{status="error"}`, and no turn a success.
fn expect_one_failure(gw: &Gateway, active: f64, error_counter: &str) -> anyhow::Result<()> {
    let mx = poll(
        Duration::from_secs(5),
        "the failed stream's slot freed",
        || {
            let m = gw.metrics().ok()?;
            (m.value("voice_gateway_active_streams") == active).then_some(m)
        },
    )?;
    for (series, want) in [
        (error_counter, 1.0),
        ("voice_gateway_requests_total{status=\"error\"}", 1.0),
        ("voice_gateway_requests_total{status=\"success\"}", 0.0),
    ] {
        assert_eq!(mx.value(series), want, "{series}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_asr_is_a_timeout_error_after_the_end_of_audio() -> anyhow::Result<()> {
    // Every call to this simulator stalls: its ASR reads the audio and never answers.
    let sim = Sim::start(&["--profile", "zero", "--stall-rate", "1"])?;
    let gw = Gateway::with_sim(&sim, &[("RIVA_TIMEOUT", "1")])?;
    // Half-close: RIVA_TIMEOUT later the speech still has no transcript.
    let got = gw
        .speak_and_close("is anyone listening")
        .await
        .expect("the stream ends cleanly after an ERROR event");
    match got.last() {
        Some(Got::Event(EventType::Error, m)) => {
            assert!(m.contains("ASR") && m.contains("timeout"), "{m}")
        }
        other => panic!(
            "expected an ERROR event last, got {other:?} in {:?}",
            tags(&got)
        ),
    }
    expect_one_failure(
        &gw,
        0.0,
        "voice_gateway_asr_errors_total{error_type=\"timeout\"}",
    )
}

/// A live microphone on `c`: 100 ms chunks of silence, 200 s of them, more than every window
/// and queue on the way holds, sent as fast as they are taken; the client never half-closes.
fn live_microphone(c: &Conversation) -> tokio::task::JoinHandle<()> {
    let tx = c.tx.clone();
    tokio::spawn(async move {
        let chunk = msg::audio(&[0u8; 3200]);
        for _ in 0..2_000 {
            if tx.send(chunk.clone()).await.is_err() {
                break;
            }
        }
    })
}

/// A Riva ASR that stops reading audio mid-utterance (a hung server: once its HTTP/2 window is
/// full the gateway can hand it nothing more) while the client keeps streaming: after
/// RIVA_TIMEOUT without room for a chunk, an ERROR event naming the ASR timeout, its counters,
/// and the slot freed, while a text turn on another stream carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asr_that_stops_reading_audio_is_a_timeout_error_mid_stream() -> anyhow::Result<()> {
    let sim = Sim::start(&["--profile", "zero", "--asr-stall-rate", "1"])?;
    let gw = Gateway::with_sim(&sim, &[("RIVA_TIMEOUT", "1")])?;
    let mut bystander = gw.listening().await?;

    let mut c = gw.listening().await?;
    let mic = live_microphone(&c);
    let got = c.until(is_event(EventType::Error)).await?;
    let Some(Got::Event(_, m)) = got.last() else {
        unreachable!()
    };
    assert!(
        m.contains("ASR") && m.contains("timeout") && m.contains("took no audio"),
        "{m}"
    );
    match c.next().await {
        Ok(None) => {}
        other => panic!("expected the stream to end OK after the ERROR event, got {other:?}"),
    }
    mic.abort();
    expect_one_failure(
        &gw,
        1.0,
        "voice_gateway_asr_errors_total{error_type=\"timeout\"}",
    )?;

    bystander.send(msg::text("still there?")).await?;
    let after = bystander.until(is_event(EventType::Listening)).await?;
    assert!(llm_text(&after).starts_with("You said: still there. "));
    Ok(())
}

/// A client that goes away (its process killed, so its connection closes) while its audio waits
/// for a stalled ASR frees its slot at once, with no ASR timeout counted against Riva.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_the_asr_takes_no_audio_frees_its_slot() -> anyhow::Result<()> {
    let sim = Sim::start(&["--profile", "zero", "--asr-stall-rate", "1"])?;
    let gw = Gateway::with_sim(&sim, &[("RIVA_TIMEOUT", "60")])?;
    let dir = test_support::processes::TempDir::new("gateway-e2e-gone");
    let wav = dir.join("long.wav");
    // 200 s of silence, sent at once: more than every window and queue on the way holds.
    std::fs::write(
        &wav,
        voice_sim::codec::wav_file(16_000, &vec![0u8; 6_400_000]),
    )?;
    let mut client = Proc(
        std::process::Command::new(client_bin())
            .args(["--target", &format!("127.0.0.1:{}", gw.grpc_port)])
            .arg("--wav")
            .arg(&wav)
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    poll(Duration::from_secs(10), "the client's stream open", || {
        let m = gw.metrics().ok()?;
        (m.value("voice_gateway_active_streams") == 1.0).then_some(())
    })?;
    // The windows and queues on the way fill within milliseconds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    anyhow::ensure!(client.0.try_wait()?.is_none(), "the client ended by itself");
    client.0.kill()?;
    let m = poll(Duration::from_secs(10), "the slot freed", || {
        let m = gw.metrics().ok()?;
        (m.value("voice_gateway_active_streams") == 0.0).then_some(m)
    })?;
    assert_eq!(
        m.value("voice_gateway_asr_errors_total{error_type=\"timeout\"}"),
        0.0
    );
    Ok(())
}

/// While Riva ASR takes no audio, the session still serves its turn: a text turn sent before the
/// audio reaches its LISTENING, and only RIVA_TIMEOUT after the audio stopped going through does
/// the ASR timeout end the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_finishes_while_the_asr_takes_no_audio() -> anyhow::Result<()> {
    // The reply's first token comes 500 ms after the request: the audio is stuck by then.
    let sim = Sim::start(&[
        "--profile",
        "zero",
        "--asr-stall-rate",
        "1",
        "--llm-ttft-ms",
        "500",
    ])?;
    let gw = Gateway::with_sim(&sim, &[("RIVA_TIMEOUT", "3")])?;
    let mut c = gw.listening().await?;
    c.send(msg::text("hello")).await?;
    let mic = live_microphone(&c);
    let got = c.until(is_event(EventType::Error)).await?;
    mic.abort();
    // The whole reply, then the ASR timeout. (Its later sentences' text may come between audio
    // chunks: their TTS runs beside the LLM stream.)
    let t = tags(&got);
    let reply = t.get(4..t.len().saturating_sub(2)).unwrap_or_default();
    assert!(
        t.starts_with(&["PROCESSING", "llm", "SPEAKING", "audio"].map(String::from))
            && t.ends_with(&["LISTENING", "ERROR"].map(String::from))
            && reply.iter().all(|x| x == "llm" || x == "audio"),
        "{t:?}: {:?}",
        got.last()
    );
    Ok(())
}

/// A TTS that stalls, before it answers or once its call is open: after RIVA_TIMEOUT an ERROR
/// event naming TTS and the timeout, `tts_errors_total{error_type="timeout"}`,
/// `requests_total{status="error"}`, and the stream's slot is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tts_is_a_timeout_error() -> anyhow::Result<()> {
    // Every TTS call of this simulator never answers (ASR and LLM work).
    let silent = Sim::start(&["--profile", "zero", "--tts-stall-rate", "1"])?;
    // This one answers `[tts-stall]` text with response headers, then nothing.
    let stalling = Sim::start(&["--profile", "zero"])?;
    for (sim, say, what) in [
        (&silent, "hello", "TTS did not answer"),
        (&stalling, "say [tts-stall]", "TTS stream stalled"),
    ] {
        let gw = Gateway::with_sim(sim, &[("RIVA_TIMEOUT", "1")])?;
        let m = expect_backend_error(&gw, vec![msg::text(say)]).await;
        assert!(
            m.contains("TTS") && m.contains("timeout") && m.contains(what),
            "{m}"
        );
        expect_one_failure(
            &gw,
            0.0,
            "voice_gateway_tts_errors_total{error_type=\"timeout\"}",
        )?;
    }
    Ok(())
}

/// LLM_API_KEY goes to the LLM as a bearer token and RIVA_METADATA with every Riva call: a
/// simulator that requires both serves a gateway that sends them (ASR, LLM and TTS all pass),
/// and refuses one that sends others (LLM 401: `http_4xx`; Riva: `unauthenticated`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_api_key_and_riva_metadata_reach_the_backends() -> anyhow::Result<()> {
    let sim = Sim::start(&[
        "--profile",
        "zero",
        "--require-api-key",
        "sk-e2e",
        "--require-metadata",
        "authorization=Bearer riva-e2e",
        "--require-metadata",
        "function-id=e2e",
    ])?;
    let metadata = "authorization=Bearer riva-e2e,Function-Id=e2e";
    let good = Gateway::with_sim(
        &sim,
        &[("LLM_API_KEY", "sk-e2e"), ("RIVA_METADATA", metadata)],
    )?;
    let got = good.speak_and_close("are you there").await?;
    assert!(
        llm_text(&got).starts_with("You said: are you there. "),
        "{got:?}"
    );
    assert_eq!(hear(&audio(&got)).len(), 4, "{:?}", tags(&got));
    assert_eq!(good.metrics()?.requests(), (1.0, 0.0));

    let bad = Gateway::start(
        &sim.riva,
        &sim.llm,
        &[
            ("LLM_API_KEY", "sk-other"),
            (
                "RIVA_METADATA",
                "authorization=Bearer other,function-id=e2e",
            ),
        ],
    )?;
    // A refused key keeps the pod out of the Service (and a rollout from going on).
    let why = poll(
        Duration::from_secs(10),
        "/readyz names the refused key",
        || {
            let (status, why) = bad.http("/readyz").ok()?;
            (status == 503 && why.contains("LLM refused the API key (401")).then_some(why)
        },
    )?;
    assert!(why.contains("LLM_API_KEY"), "{why}");
    let m = expect_backend_error(&bad, vec![msg::text("hello")]).await;
    assert!(m.contains("LLM") && m.contains("401"), "{m}");
    let speech = speech_chunks("hello")
        .iter()
        .map(|c| msg::audio(c))
        .collect();
    let m = expect_backend_error(&bad, speech).await;
    assert!(m.contains("ASR") && m.contains("unauthenticated"), "{m}");
    let m = bad.metrics()?;
    assert_eq!(
        m.value("voice_gateway_llm_errors_total{error_type=\"http_4xx\"}"),
        1.0
    );
    assert_eq!(
        m.value("voice_gateway_asr_errors_total{error_type=\"unauthenticated\"}"),
        1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_down_means_not_ready_and_errors() -> anyhow::Result<()> {
    let dead_riva = format!("127.0.0.1:{}", free_port());
    let dead_llm = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&dead_riva, &dead_llm, &[("RIVA_TIMEOUT", "1")])?;
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = gw.http("/readyz")?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Riva") && body.contains("LLM"), "{body}");
    let m = expect_backend_error(&gw, vec![msg::text("anyone?")]).await;
    assert!(m.contains("LLM") && m.contains("connect"), "{m}");
    let speech: Vec<_> = speech_chunks("hello")
        .iter()
        .map(|c| msg::audio(c))
        .collect();
    let m = expect_backend_error(&gw, speech).await;
    assert!(m.contains("ASR"), "{m}");
    let mx = gw.metrics()?;
    assert_eq!(
        mx.value("voice_gateway_llm_errors_total{error_type=\"connect\"}"),
        1.0
    );
    assert_eq!(
        mx.value("voice_gateway_asr_errors_total{error_type=\"unavailable\"}"),
        1.0
    );
    assert_eq!(gw.http("/livez")?.0, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_quirks_are_tolerated_end_to_end() -> anyhow::Result<()> {
    let sim = Sim::start(&["--profile", "zero", "--llm-quirks"])?;
    let gw = Gateway::with_sim(&sim, &[])?;
    let mut c = gw.listening().await?;
    c.send(msg::text("quirky")).await?;
    let got = c.until(is_event(EventType::Listening)).await?;
    // Reasoning and <think> never reach the text or the audio.
    let expected = format!("You said: quirky. {REPLY_TAIL}");
    assert_eq!(llm_text(&got), expected);
    assert_eq!(hear(&audio(&got)).concat().len(), expected.len() - 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_active_turns_then_exits() -> anyhow::Result<()> {
    // TTS at real time: the turn lasts several seconds, well inside the grace period.
    let sim = Sim::start(&["--profile", "zero", "--tts-rtf", "0.5"])?;
    let gw = Gateway::with_sim(&sim, &[("SHUTDOWN_GRACE_PERIOD", "20")])?;
    let mut c = gw.open().await?;
    c.send(msg::config(16_000, false)).await?;
    c.send(msg::text("a turn in flight")).await?;
    c.until(is_event(EventType::Speaking)).await?;
    gw.sigterm()?;
    // The turn finishes: every sentence's audio, LISTENING, END_OF_TURN, clean end.
    let rest = c.rest().await?;
    let t = tags(&rest);
    assert_eq!(
        t[t.len() - 2..],
        ["LISTENING".to_string(), "END_OF_TURN".to_string()],
        "{t:?}"
    );
    // The process exits by itself, successfully.
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    Ok(())
}

/// What the simulator behind [`voice_client_turn`] answers.
const CLIENT_REPLY: &str = "Sure, here is a short answer. It has two sentences.";

/// The rest of the line of `stdout` that starts with `prefix`, trimmed.
fn line(stdout: &str, prefix: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"))
        .to_string()
}

/// Runs `voice-client` with `input` (`--wav FILE` or `--text TEXT`) and `--out` through a
/// gateway whose simulator answers [`CLIENT_REPLY`]; checks the reply, latency and saved lines
/// and the saved WAV (16-bit mono 16 kHz PCM that says the reply), and returns the stdout.
async fn voice_client_turn(
    dir: &test_support::processes::TempDir,
    input: Vec<std::ffi::OsString>,
) -> anyhow::Result<String> {
    let sim = Sim::replying(CLIENT_REPLY, &[])?;
    let gw = Gateway::with_sim(&sim, &[])?;
    let reply_wav = dir.join("reply.wav");
    let target = format!("127.0.0.1:{}", gw.grpc_port);
    let out = reply_wav.clone();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(client_bin())
            .args(["--target", &target])
            .args(input)
            .arg("--out")
            .arg(&out)
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(line(&stdout, "reply:"), CLIENT_REPLY);
    assert!(
        line(&stdout, "latency:").contains("first audio (e2e)"),
        "{stdout}"
    );
    let saved = line(&stdout, "saved:");
    let wav = std::fs::read(&reply_wav)?;
    let info = voice_sim::codec::parse_wav(&wav).expect("a WAV file");
    assert_eq!(
        (info.format, info.channels, info.bits, info.sample_rate),
        (1, 1, 16, 16_000)
    );
    let pcm = &wav[info.data_offset..];
    assert_eq!(pcm.len(), info.data_len as usize);
    assert!(
        saved.ends_with(&format!("({} bytes of audio)", pcm.len())),
        "{saved}"
    );
    // The saved audio says the reply, sentence by sentence.
    assert_eq!(
        hear(pcm),
        ["Sure, here is a short answer.", "It has two sentences."]
    );
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_client_speaks_a_wav_and_saves_the_reply() -> anyhow::Result<()> {
    let dir = test_support::processes::TempDir::new("gateway-e2e-client-wav");
    let input = dir.join("in.wav");
    let st = std::process::Command::new(sim_bin())
        .args(["speak", "--text", "what is the weather", "--out"])
        .arg(&input)
        .status()?;
    anyhow::ensure!(st.success(), "voice-sim speak: {st}");
    let stdout = voice_client_turn(&dir, vec!["--wav".into(), input.into()]).await?;
    assert_eq!(line(&stdout, "transcript:"), "what is the weather");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_client_types_a_text_turn_and_saves_the_reply() -> anyhow::Result<()> {
    let dir = test_support::processes::TempDir::new("gateway-e2e-client-text");
    let input = vec!["--text".into(), "what is the weather".into()];
    let stdout = voice_client_turn(&dir, input).await?;
    // A text turn's transcript is its text; it has no ASR time.
    assert_eq!(line(&stdout, "transcript:"), "what is the weather");
    assert!(
        line(&stdout, "latency:").starts_with("asr 0.0 ms |"),
        "{stdout}"
    );
    assert!(line(&stdout, "client:").contains("first audio"), "{stdout}");
    Ok(())
}
