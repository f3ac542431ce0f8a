//! `voice-gateway`: the latency-critical half of the voice pipeline.
//!
//! ```text
//! client ══ gRPC voice_workflow.VoiceGateway/StreamAudio ══► session (one per call)
//!    audio ─► Riva StreamingRecognize ─► final transcript ─► LLM chat/completions (SSE)
//!          ─► sentence aggregation ─► Riva SynthesizeOnline per sentence (pipelined) ─► audio
//! :METRICS_PORT  /metrics /livez /readyz            :GRPC_PORT  + grpc.health.v1 + reflection
//! ```
//!
//! A drop-in replacement for the seed's Python gateway: same wire protocol, environment
//! variables ([`config::Config`]) and metric names ([`metrics::Metrics`]).

pub mod config;
pub mod error;
pub mod llm;
pub mod metrics;
pub mod riva;
pub mod sentence;
pub mod server;
pub mod session;
pub mod sse;

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    /// Configuration.
    pub config: config::Config,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// Riva clients.
    pub riva: riva::Riva,
    /// LLM client.
    pub llm: llm::LlmClient,
    /// Becomes true on SIGTERM: sessions finish their turn and end.
    pub drain: tokio::sync::watch::Receiver<bool>,
}
