//! The gateway's Riva client against the Riva simulator (in-process, real gRPC over loopback):
//! TTS calls whose audio nobody reads (their clients stopped reading) must not stall the other
//! calls sharing the HTTP/2 connection to Riva, and ASR calls whose audio Riva does not read
//! (recognizers behind, or hung) must not stall TTS.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use voice_gateway::riva::{AsrParams, Metadata, Riva};
use voice_sim::{SimState, codec, profile};

/// The gateway's Riva client of a zero-latency simulator with `faults`, serving (spawned) until
/// the test's runtime ends.
async fn riva_of_a_simulator(faults: profile::Faults) -> Riva {
    let state = Arc::new(SimState {
        profile: profile::Profile::by_name("zero").expect("zero profile"),
        faults,
        script: Default::default(),
        sidecars: Default::default(),
        model: "sim".into(),
        llm_quirks: false,
        required: Default::default(),
    });
    let any = "127.0.0.1:0".parse().expect("addr");
    let (bound, _serving) = voice_sim::start(state, any, any).await.expect("simulator");
    Riva::new(
        &bound.riva.to_string(),
        false,
        Metadata::default(),
        Duration::from_secs(5),
    )
    .expect("riva client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_tts_calls_do_not_stall_the_shared_connection() {
    let riva = riva_of_a_simulator(profile::Faults::new(0.0, 0.0, 0.0, 1)).await;

    // Each unread call has more audio than any stream window holds, so each pins a full
    // stream window of the connection. 24 of them pin 24 windows: with 1 MiB stream windows
    // and the 16 MiB connection window the gateway had, the connection stalls.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(60);
    let audio = codec::encode_speech(&long, 16_000).len();
    assert!(
        audio > 2 << 20,
        "{audio} bytes: too short to fill a stream window"
    );
    let mut unread = Vec::new();
    for _ in 0..24 {
        unread.push(
            riva.synthesize_online(long.clone(), "en-US", "", 16_000)
                .await
                .expect("TTS call"),
        );
    }
    // Give Riva time to send what the windows allow.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut fresh = riva
        .synthesize_online("Is anyone there?".into(), "en-US", "", 16_000)
        .await
        .expect("TTS call");
    let mut got = 0;
    let read = async {
        while let Some(m) = fresh.message().await.expect("TTS stream") {
            got += m.audio.len();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a TTS call stalled behind 24 unread calls on the shared connection");
    assert_eq!(got, codec::encode_speech("Is anyone there?", 16_000).len());
    drop(unread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_audio_that_riva_does_not_read_does_not_stall_tts() {
    // Every ASR call of this simulator takes its config and then reads no audio.
    let mut faults = profile::Faults::new(0.0, 0.0, 0.0, 1);
    faults.asr_stall_rate = 1.0;
    let riva = riva_of_a_simulator(faults).await;

    // Four sessions' audio, sent faster than Riva reads it: 4 MiB, more than the flow-control
    // window Riva (here hyper's 1 MiB defaults) gives a connection.
    let params = AsrParams {
        language: "en-US".into(),
        sample_rate: 16_000,
        interim: true,
    };
    // All four calls open before any audio goes: with the simulator's windows, one stream's
    // unread audio can fill its connection's whole window, and the next call's config would not
    // go out behind it.
    let mut calls = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = mpsc::channel(32);
        let call = tokio::time::timeout(
            Duration::from_secs(3),
            riva.streaming_recognize(&params, rx),
        )
        .await
        .expect("ASR call opened")
        .expect("ASR call");
        calls.push(call);
        senders.push(tx);
    }
    let feeders: Vec<_> = senders
        .into_iter()
        .map(|tx| {
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![0u8; 6400]);
                for _ in 0..160 {
                    if tx.send(chunk.clone()).await.is_err() {
                        break;
                    }
                }
                // Holds the call open, as a live microphone does.
                tx.closed().await;
            })
        })
        .collect();
    // Give the audio time to fill what Riva's windows allow.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let say = "Is anyone there?";
    let tts = async {
        let mut s = riva
            .synthesize_online(say.into(), "en-US", "", 16_000)
            .await
            .expect("TTS call");
        let mut got = 0;
        while let Some(m) = s.message().await.expect("TTS stream") {
            got += m.audio.len();
        }
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(3), tts)
        .await
        .expect("a TTS call stalled behind ASR audio that Riva did not read");
    assert_eq!(got, codec::encode_speech(say, 16_000).len());
    drop(calls);
    for f in feeders {
        f.abort();
    }
}
