//! `voice-sim`: a simulator of the gateway's backends, for tests, benchmarks and the demo.
//!
//! ```text
//!   --riva-addr ──► gRPC (TLS with --tls-cert/--tls-key):
//!                         nvidia.riva.asr.RivaSpeechRecognition   (StreamingRecognize, Recognize)
//!                         nvidia.riva.tts.RivaSpeechSynthesis     (SynthesizeOnline, Synthesize)
//!                         grpc.health.v1.Health                   ("", the two services, "voice-sim")
//!   --llm-addr  ──► HTTP: POST /v1/chat/completions (SSE), GET /v1/models, GET /health
//! ```
//!
//! Speech is synthetic ([`codec`]): the TTS writes the text into the audio and the ASR reads it
//! back, so a reply spoken by the sim can be fed back in as the next user turn. Latency comes from
//! a [`profile::Profile`]; faults from [`profile::Faults`] or trigger words.

pub mod clock;
pub mod codec;
pub mod llm;
pub mod profile;
pub mod riva;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};
use voice_proto::riva::asr::riva_speech_recognition_server::RivaSpeechRecognitionServer;
use voice_proto::riva::tts::riva_speech_synthesis_server::RivaSpeechSynthesisServer;

/// Everything the simulated backends share.
#[derive(Debug)]
pub struct SimState {
    /// Latencies.
    pub profile: profile::Profile,
    /// Random faults.
    pub faults: profile::Faults,
    /// Scripted LLM replies.
    pub script: llm::Script,
    /// Transcripts for foreign WAV audio.
    pub sidecars: riva::Sidecars,
    /// Model name reported when a request names none.
    pub model: String,
    /// Speak SSE with every tolerated quirk (comments, CRLF, split events, reasoning, no [DONE]).
    pub llm_quirks: bool,
    /// Credentials the backends require of their clients.
    pub required: Required,
}

/// Credentials the simulated backends require of their clients, as a hosted LLM or Riva behind
/// an API gateway does (none by default), so that tests can see that a client sends them.
#[derive(Debug, Clone, Default)]
pub struct Required {
    /// The LLM API (`/v1/...`) answers 401 to a request without `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Riva ASR and TTS calls without each of these `key: value` gRPC metadata entries fail
    /// with UNAUTHENTICATED (gRPC health stays open, as readiness probes need).
    pub metadata: Vec<(String, String)>,
}

impl Required {
    /// A tonic interceptor that refuses calls without the required metadata.
    fn metadata_check(&self) -> impl tonic::service::Interceptor + Clone + use<> {
        let required = Arc::new(self.metadata.clone());
        move |req: tonic::Request<()>| {
            for (k, v) in required.iter() {
                let got = req.metadata().get(k.as_str()).and_then(|x| x.to_str().ok());
                if got != Some(v.as_str()) {
                    return Err(tonic::Status::unauthenticated(format!(
                        "voice-sim: gRPC metadata {k:?} missing or not the required value"
                    )));
                }
            }
            Ok(req)
        }
    }
}

/// Addresses the simulator actually listens on (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Riva gRPC.
    pub riva: SocketAddr,
    /// OpenAI-compatible HTTP.
    pub llm: SocketAddr,
}

/// An axum listener whose accepted sockets have TCP_NODELAY.
pub fn nodelay(
    l: TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    l.tap_io(|s| {
        let _ = s.set_nodelay(true);
    })
}

/// Binds both listeners and serves until the process ends. Returns once bound, with the serving
/// futures spawned on the current runtime.
pub async fn start(
    state: Arc<SimState>,
    riva_addr: SocketAddr,
    llm_addr: SocketAddr,
) -> anyhow::Result<(Bound, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    start_with_tls(state, riva_addr, llm_addr, None).await
}

/// [`start`], with the Riva gRPC listener (its health service included) serving TLS with
/// `tls` (certificate chain and key) when given; the LLM HTTP listener stays plain.
pub async fn start_with_tls(
    state: Arc<SimState>,
    riva_addr: SocketAddr,
    llm_addr: SocketAddr,
    tls: Option<Identity>,
) -> anyhow::Result<(Bound, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let riva_l = TcpListener::bind(riva_addr).await?;
    let llm_l = TcpListener::bind(llm_addr).await?;
    let bound = Bound {
        riva: riva_l.local_addr()?,
        llm: llm_l.local_addr()?,
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in [
        "nvidia.riva.asr.RivaSpeechRecognition",
        "nvidia.riva.tts.RivaSpeechSynthesis",
        "voice-sim",
    ] {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    // `Server::tcp_nodelay` is ignored by `serve_with_incoming`: set it on accepted sockets
    // (both servers), or Nagle delays the small frames (TTS chunks, SSE tokens) until an ACK.
    let check = state.required.metadata_check();
    let mut builder = tonic::transport::Server::builder();
    if let Some(identity) = tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| anyhow::anyhow!("TLS certificate or key not usable: {e:?}"))?;
    }
    let grpc = builder
        .max_concurrent_streams(Some(100_000))
        .add_service(health)
        .add_service(RivaSpeechRecognitionServer::with_interceptor(
            riva::Asr(state.clone()),
            check.clone(),
        ))
        .add_service(RivaSpeechSynthesisServer::with_interceptor(
            riva::Tts(state.clone()),
            check,
        ))
        .serve_with_incoming(TcpIncoming::from(riva_l).with_nodelay(Some(true)));
    let http = axum::serve(nodelay(llm_l), llm::router(state));
    let handle = tokio::spawn(async move {
        tokio::select! {
            r = grpc => r.map_err(anyhow::Error::from),
            r = http => r.map_err(anyhow::Error::from),
        }
    });
    Ok((bound, handle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;

    #[tokio::test]
    async fn accepted_llm_sockets_have_nodelay() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut l = nodelay(l);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = l.accept().await;
        assert!(accepted.nodelay().unwrap());
    }
}
