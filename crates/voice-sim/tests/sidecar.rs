//! Foreign audio (a WAV that is not the simulator's own speech) is recognised as the sidecar
//! transcript beside it (`voice-sim --transcripts DIR`: `NAME.wav` + `NAME.txt`), whether the
//! client gives encoding and sample rate or sends 0 and the WAV header, as NVIDIA's client does.

use std::sync::Arc;

use bytes::Bytes;
use voice_proto::riva::AudioEncoding;
use voice_proto::riva::asr::riva_speech_recognition_client::RivaSpeechRecognitionClient;
use voice_proto::riva::asr::streaming_recognize_request::StreamingRequest;
use voice_proto::riva::asr::{
    RecognitionConfig, StreamingRecognitionConfig, StreamingRecognizeRequest,
};
use voice_sim::{SimState, codec, profile, riva};

/// Noise-like 16-bit PCM, well below the simulator's speech marker: foreign audio.
fn foreign_pcm(bytes: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..bytes / 2)
        .flat_map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((x >> 16) as i16 / 4).to_le_bytes()
        })
        .collect()
}

/// Streams `audio` in 4000-byte chunks with `encoding` and `sample_rate`; the final transcripts.
async fn finals(
    riva: &str,
    encoding: AudioEncoding,
    sample_rate: i32,
    audio: &[u8],
) -> Vec<String> {
    let mut client = RivaSpeechRecognitionClient::connect(format!("http://{riva}"))
        .await
        .expect("connect");
    let config = StreamingRecognitionConfig {
        config: Some(RecognitionConfig {
            encoding: encoding as i32,
            sample_rate_hertz: sample_rate,
            language_code: "en-US".into(),
            ..Default::default()
        }),
        interim_results: false,
    };
    let first = StreamingRequest::StreamingConfig(config);
    let requests: Vec<_> = std::iter::once(first)
        .chain(
            audio
                .chunks(4000)
                .map(|c| StreamingRequest::AudioContent(Bytes::copy_from_slice(c))),
        )
        .map(|r| StreamingRecognizeRequest {
            streaming_request: Some(r),
            ..Default::default()
        })
        .collect();
    let mut responses = client
        .streaming_recognize(tokio_stream::iter(requests))
        .await
        .expect("streaming_recognize")
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = responses.message().await.expect("a response") {
        for result in r.results.into_iter().filter(|r| r.is_final) {
            out.extend(result.alternatives.into_iter().map(|a| a.transcript));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wav_with_a_sidecar_transcript_is_recognised_as_that_transcript() {
    let dir = std::env::temp_dir().join(format!("voice-sim-sidecar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Two seconds of "speech", and one shorter than the fingerprint (the end of audio decides).
    let question = foreign_pcm(64_000, 1);
    let short = foreign_pcm(riva::FINGERPRINT_BYTES / 2, 2);
    for (name, pcm, text) in [
        ("question", &question, Some("what is the weather\n")),
        ("short", &short, Some("yes")),
        ("no-sidecar", &foreign_pcm(64_000, 3), None),
    ] {
        let wav = dir.join(format!("{name}.wav"));
        std::fs::write(&wav, codec::wav_file(16_000, pcm)).expect("write wav");
        if let Some(t) = text {
            std::fs::write(wav.with_extension("txt"), t).expect("write txt");
        }
    }
    let sidecars = riva::load_sidecars(&dir).expect("load sidecars");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(sidecars.len(), 2, "a WAV without a .txt is not registered");
    let state = Arc::new(SimState {
        profile: profile::Profile::ZERO,
        faults: profile::Faults::new(0.0, 0.0, 0.0, 1),
        script: Default::default(),
        sidecars,
        model: "sim".into(),
        llm_quirks: false,
        required: Default::default(),
    });
    let any = "127.0.0.1:0".parse().expect("addr");
    let (bound, _serving) = voice_sim::start(state, any, any).await.expect("simulator");
    let riva = bound.riva.to_string();

    // Encoding and rate given, headerless PCM.
    let pcm = AudioEncoding::LinearPcm;
    assert_eq!(
        finals(&riva, pcm, 16_000, &question).await,
        ["what is the weather"]
    );
    assert_eq!(finals(&riva, pcm, 16_000, &short).await, ["yes"]);
    // Encoding and rate 0: the WAV file as it is, header first.
    let unset = AudioEncoding::EncodingUnspecified;
    let wav = codec::wav_file(16_000, &question);
    assert_eq!(finals(&riva, unset, 0, &wav).await, ["what is the weather"]);
    let wav = codec::wav_file(16_000, &short);
    assert_eq!(finals(&riva, unset, 0, &wav).await, ["yes"]);
    // Foreign audio without a sidecar is heard as nothing.
    let other = codec::wav_file(16_000, &foreign_pcm(64_000, 3));
    assert!(finals(&riva, unset, 0, &other).await.is_empty());
}
