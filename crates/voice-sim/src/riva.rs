//! Riva-compatible ASR (`nvidia.riva.asr.RivaSpeechRecognition`) and TTS
//! (`nvidia.riva.tts.RivaSpeechSynthesis`) services.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use voice_proto::riva::AudioEncoding;
use voice_proto::riva::asr::{self, streaming_recognize_request::StreamingRequest};
use voice_proto::riva::tts;

use crate::codec::{self, Recognized, SpeechDecoder};
use crate::profile::Fault;
use crate::{SimState, clock};

/// Bytes of foreign (non-simulator) audio hashed to find a sidecar transcript.
pub const FINGERPRINT_BYTES: usize = 3200;

/// A transcript for foreign audio, registered from a WAV with a `.txt` sidecar.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// What the ASR answers.
    pub transcript: String,
    /// PCM bytes in the file: the final result comes once this much audio has arrived.
    pub pcm_len: usize,
}

/// Sidecar transcripts by fingerprint of the first [`FINGERPRINT_BYTES`] of PCM.
pub type Sidecars = HashMap<u64, Sidecar>;

/// Loads every `NAME.wav` that has a `NAME.txt` beside it.
pub fn load_sidecars(dir: &std::path::Path) -> anyhow::Result<Sidecars> {
    let mut out = Sidecars::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wav") {
            let txt = path.with_extension("txt");
            let Ok(transcript) = std::fs::read_to_string(&txt) else {
                continue;
            };
            let wav = std::fs::read(&path)?;
            let info = codec::parse_wav(&wav)
                .ok_or_else(|| anyhow::anyhow!("{} is not a WAV file", path.display()))?;
            let pcm = &wav[info.data_offset.min(wav.len())..];
            let fp = codec::fnv1a(&pcm[..pcm.len().min(FINGERPRINT_BYTES)]);
            out.insert(
                fp,
                Sidecar {
                    transcript: transcript.trim().to_string(),
                    pcm_len: pcm.len(),
                },
            );
        }
    }
    Ok(out)
}

fn linear_pcm_or_unset(encoding: i32) -> bool {
    encoding == AudioEncoding::EncodingUnspecified as i32
        || encoding == AudioEncoding::LinearPcm as i32
}

// === impl Asr ===

/// The simulated recogniser.
#[derive(Debug, Clone)]
pub struct Asr(pub Arc<SimState>);

type Item<T> = (Instant, Result<T, Status>);

/// Forwards items to `tx` no earlier than their deadlines, in order; stops after an error.
fn spawn_delayed<T: Send + 'static>(tx: mpsc::Sender<Result<T, Status>>) -> mpsc::Sender<Item<T>> {
    let (dtx, mut drx) = mpsc::channel::<Item<T>>(64);
    tokio::spawn(async move {
        while let Some((at, item)) = drx.recv().await {
            clock::until(at).await;
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    dtx
}

fn result(text: String, is_final: bool, processed_s: f32) -> asr::StreamingRecognizeResponse {
    asr::StreamingRecognizeResponse {
        results: vec![asr::StreamingRecognitionResult {
            alternatives: vec![asr::SpeechRecognitionAlternative {
                transcript: text,
                confidence: if is_final { 1.0 } else { 0.0 },
                ..Default::default()
            }],
            is_final,
            stability: if is_final { 1.0 } else { 0.5 },
            audio_processed: processed_s,
            ..Default::default()
        }],
        id: None,
    }
}

impl Asr {
    async fn run_stream(
        self,
        config: asr::StreamingRecognitionConfig,
        mut inbound: Streaming<asr::StreamingRecognizeRequest>,
        tx: mpsc::Sender<Result<asr::StreamingRecognizeResponse, Status>>,
        fault: Fault,
    ) {
        let state = self.0;
        let delay = state.profile.asr_final_delay;
        let out = spawn_delayed(tx);
        let rc = config.config.unwrap_or_default();
        let interim = config.interim_results;
        let mut rate = rc.sample_rate_hertz.max(0) as u32;
        let mut encoding = rc.encoding;
        let mut decoder = SpeechDecoder::default();
        let mut first = true;
        let mut processed = 0usize;
        let mut foreign: Vec<u8> = Vec::new();
        let mut sidecar: Option<Sidecar> = None;
        let secs = |n: usize, rate: u32| n as f32 / 2.0 / rate.max(1) as f32;
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => return,
            };
            if fault == Fault::Stall {
                continue;
            }
            let audio: Bytes = match msg.streaming_request {
                Some(StreamingRequest::AudioContent(b)) => b,
                Some(StreamingRequest::StreamingConfig(_)) => {
                    let e =
                        Status::invalid_argument("streaming_config may only be the first message");
                    let _ = out.send((Instant::now(), Err(e))).await;
                    return;
                }
                None => continue,
            };
            let mut data: &[u8] = &audio;
            if first {
                first = false;
                if let Some(w) = codec::parse_wav(data) {
                    if rate == 0 {
                        rate = w.sample_rate;
                    }
                    if encoding == 0 && w.format == 1 {
                        encoding = AudioEncoding::LinearPcm as i32;
                    }
                    data = &data[w.data_offset.min(data.len())..];
                }
                let err = if !linear_pcm_or_unset(encoding) {
                    Some("the simulator recognises LINEAR_PCM only")
                } else if rate == 0 {
                    Some("sample_rate_hertz is 0 and the audio has no WAV header")
                } else {
                    None
                };
                if let Some(e) = err {
                    let _ = out
                        .send((Instant::now(), Err(Status::invalid_argument(e))))
                        .await;
                    return;
                }
            }
            processed += data.len();
            let now = Instant::now();
            for r in decoder.push(data) {
                match r {
                    Recognized::Interim(t) if interim => {
                        let _ = out
                            .send((now, Ok(result(t, false, secs(processed, rate)))))
                            .await;
                    }
                    Recognized::Interim(_) => {}
                    Recognized::Final(t) if t.contains("[asr-error]") => {
                        let e = Status::internal("voice-sim: simulated ASR failure");
                        let _ = out.send((now + delay, Err(e))).await;
                        return;
                    }
                    Recognized::Final(t) => {
                        tracing::debug!(transcript = %t, "voice-sim ASR final");
                        let _ = out
                            .send((now + delay, Ok(result(t, true, secs(processed, rate)))))
                            .await;
                    }
                }
            }
            if !decoder.seen_marker && !state.sidecars.is_empty() {
                if foreign.len() < FINGERPRINT_BYTES {
                    let take = (FINGERPRINT_BYTES - foreign.len()).min(data.len());
                    foreign.extend_from_slice(&data[..take]);
                    if foreign.len() == FINGERPRINT_BYTES {
                        sidecar = state.sidecars.get(&codec::fnv1a(&foreign)).cloned();
                    }
                }
                if let Some(s) = sidecar.as_ref().filter(|s| processed >= s.pcm_len) {
                    let r = result(s.transcript.clone(), true, secs(processed, rate));
                    let _ = out.send((now + delay, Ok(r))).await;
                    sidecar = None;
                }
            }
            if fault == Fault::Disconnect && processed > 16_000 {
                let e = Status::unavailable("voice-sim: simulated disconnect");
                let _ = out.send((now, Err(e))).await;
                return;
            }
        }
        if fault == Fault::Stall {
            std::future::pending::<()>().await;
        }
        let now = Instant::now();
        let tail = decoder.pending().or_else(|| {
            if foreign.len() < FINGERPRINT_BYTES && !foreign.is_empty() {
                state
                    .sidecars
                    .get(&codec::fnv1a(&foreign))
                    .map(|s| s.transcript.clone())
            } else {
                sidecar.map(|s| s.transcript)
            }
        });
        if let Some(t) = tail {
            let _ = out
                .send((now + delay, Ok(result(t, true, secs(processed, rate)))))
                .await;
        }
    }
}

#[tonic::async_trait]
impl asr::riva_speech_recognition_server::RivaSpeechRecognition for Asr {
    async fn recognize(
        &self,
        request: Request<asr::RecognizeRequest>,
    ) -> Result<Response<asr::RecognizeResponse>, Status> {
        let req = request.into_inner();
        let mut audio: &[u8] = &req.audio;
        if let Some(w) = codec::parse_wav(audio) {
            audio = &audio[w.data_offset.min(audio.len())..];
        }
        let mut d = SpeechDecoder::default();
        let mut texts: Vec<String> = d
            .push(audio)
            .into_iter()
            .filter_map(|r| match r {
                Recognized::Final(t) => Some(t),
                Recognized::Interim(_) => None,
            })
            .collect();
        texts.extend(d.pending());
        clock::after(self.0.profile.asr_final_delay).await;
        Ok(Response::new(asr::RecognizeResponse {
            results: texts
                .into_iter()
                .map(|t| asr::SpeechRecognitionResult {
                    alternatives: vec![asr::SpeechRecognitionAlternative {
                        transcript: t,
                        confidence: 1.0,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
            id: None,
        }))
    }

    type StreamingRecognizeStream = ReceiverStream<Result<asr::StreamingRecognizeResponse, Status>>;

    async fn streaming_recognize(
        &self,
        request: Request<Streaming<asr::StreamingRecognizeRequest>>,
    ) -> Result<Response<Self::StreamingRecognizeStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty StreamingRecognize stream"))?;
        let Some(StreamingRequest::StreamingConfig(config)) = first.streaming_request else {
            return Err(Status::invalid_argument(
                "the first StreamingRecognizeRequest must carry streaming_config",
            ));
        };
        let fault = self.0.faults.draw();
        if fault == Fault::Error {
            return Err(Status::unavailable("voice-sim: simulated ASR outage"));
        }
        let (tx, rx) = mpsc::channel(64);
        if self.0.faults.draw_asr_stall() {
            // Holds the call open without reading it, until the client gives up on it.
            tokio::spawn(async move {
                let _unread = inbound;
                tx.closed().await;
            });
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        tokio::spawn(self.clone().run_stream(config, inbound, tx, fault));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_riva_speech_recognition_config(
        &self,
        _request: Request<asr::RivaSpeechRecognitionConfigRequest>,
    ) -> Result<Response<asr::RivaSpeechRecognitionConfigResponse>, Status> {
        Ok(Response::new(asr::RivaSpeechRecognitionConfigResponse {
            model_config: vec![asr::riva_speech_recognition_config_response::Config {
                model_name: "voice-sim-asr-simulator".into(),
                parameters: [
                    ("type".to_string(), "online".to_string()),
                    ("language_code".to_string(), "en-US".to_string()),
                    ("simulator".to_string(), "true".to_string()),
                ]
                .into(),
            }],
        }))
    }
}

// === impl Tts ===

/// The simulated synthesiser.
#[derive(Debug, Clone)]
pub struct Tts(pub Arc<SimState>);

impl Tts {
    fn validate(req: &tts::SynthesizeSpeechRequest) -> Result<u32, Status> {
        if req.text.trim().is_empty() {
            return Err(Status::invalid_argument("text is empty"));
        }
        if !linear_pcm_or_unset(req.encoding) {
            return Err(Status::invalid_argument(
                "the simulator synthesises LINEAR_PCM only",
            ));
        }
        if req.sample_rate_hz <= 0 {
            return Err(Status::invalid_argument("sample_rate_hz must be positive"));
        }
        if req.text.contains("[tts-error]") {
            return Err(Status::internal("voice-sim: simulated TTS failure"));
        }
        Ok(req.sample_rate_hz as u32)
    }

    /// Streams one request's audio into `tx`; false if the client went away.
    async fn stream_one(
        &self,
        req: tts::SynthesizeSpeechRequest,
        tx: &mpsc::Sender<Result<tts::SynthesizeSpeechResponse, Status>>,
    ) -> bool {
        let p = self.0.profile;
        let start = Instant::now();
        let fault = self.0.faults.draw();
        let rate = match Self::validate(&req) {
            Ok(r) if fault != Fault::Error => r,
            Ok(_) => {
                let _ = tx
                    .send(Err(Status::unavailable("voice-sim: simulated TTS outage")))
                    .await;
                return false;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return false;
            }
        };
        if fault == Fault::Stall || req.text.contains("[tts-stall]") {
            tx.closed().await;
            return false;
        }
        let pcm = Bytes::from(codec::encode_speech(&req.text, rate));
        let chunk_bytes = ((rate as u128 * p.tts_chunk.as_millis() / 1000) as usize * 2).max(2);
        let chunk_wall = p.tts_chunk.mul_f64(p.tts_rtf);
        let n = pcm.len().div_ceil(chunk_bytes);
        for i in 0..n {
            let at = start + p.tts_first_chunk + chunk_wall * i as u32;
            clock::until(at).await;
            if fault == Fault::Disconnect && i * 2 >= n {
                let _ = tx
                    .send(Err(Status::unavailable("voice-sim: simulated disconnect")))
                    .await;
                return false;
            }
            let audio = pcm.slice(i * chunk_bytes..((i + 1) * chunk_bytes).min(pcm.len()));
            let meta = (i == 0).then(|| tts::SynthesizeSpeechResponseMetadata {
                text: req.text.clone(),
                processed_text: req.text.clone(),
                ..Default::default()
            });
            if tx
                .send(Ok(tts::SynthesizeSpeechResponse {
                    audio,
                    meta,
                    id: None,
                }))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }
}

#[tonic::async_trait]
impl tts::riva_speech_synthesis_server::RivaSpeechSynthesis for Tts {
    async fn synthesize(
        &self,
        request: Request<tts::SynthesizeSpeechRequest>,
    ) -> Result<Response<tts::SynthesizeSpeechResponse>, Status> {
        let req = request.into_inner();
        let rate = Self::validate(&req)?;
        let p = self.0.profile;
        let audio = codec::encode_speech(&req.text, rate);
        let dur = codec::speech_duration(&req.text);
        clock::after(p.tts_first_chunk + dur.mul_f64(p.tts_rtf)).await;
        Ok(Response::new(tts::SynthesizeSpeechResponse {
            audio: audio.into(),
            meta: None,
            id: None,
        }))
    }

    type SynthesizeOnlineStream = ReceiverStream<Result<tts::SynthesizeSpeechResponse, Status>>;

    async fn synthesize_online(
        &self,
        request: Request<Streaming<tts::SynthesizeSpeechRequest>>,
    ) -> Result<Response<Self::SynthesizeOnlineStream>, Status> {
        if self.0.faults.draw_tts_stall() {
            // Never answers; the call's future is dropped when the client gives up.
            std::future::pending::<()>().await;
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                if !this.stream_one(req, &tx).await {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_riva_synthesis_config(
        &self,
        _request: Request<tts::RivaSynthesisConfigRequest>,
    ) -> Result<Response<tts::RivaSynthesisConfigResponse>, Status> {
        Ok(Response::new(tts::RivaSynthesisConfigResponse {
            model_config: vec![tts::riva_synthesis_config_response::Config {
                model_name: "voice-sim-tts-simulator".into(),
                parameters: [
                    ("language_code".to_string(), "en-US".to_string()),
                    ("voice_name".to_string(), "voice-sim.Female-1".to_string()),
                    ("simulator".to_string(), "true".to_string()),
                ]
                .into(),
            }],
        }))
    }
}
