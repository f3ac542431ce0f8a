//! Harness for the end-to-end tests: starts `voice-sim` and `voice-gateway` as processes on
//! 127.0.0.1 with free ports (killed on drop), talks to the gateway over gRPC and scrapes its
//! admin port over plain HTTP/1.0.
//!
//! Binaries, processes, ports and the simulator come from `test_support::processes`
//! (`VOICE_BINS_DIR`, or `VOICE_GATEWAY_BIN` / `VOICE_SIM_BIN` / `VOICE_CLIENT_BIN`, or one
//! `cargo build` per test binary run).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub use test_support::processes::{GatewayProcess, Proc, Sim, bins, free_port, http_get, poll};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use voice_proto::voice::voice_gateway_client::VoiceGatewayClient;
use voice_proto::voice::{
    BargeIn, ClientMessage, EventType, ServerMessage, VoiceConfig, client_message,
    server_message::Content,
};

/// The `voice-sim` binary (for its `speak` subcommand).
pub fn sim_bin() -> &'static PathBuf {
    &bins().sim
}

/// The `voice-client` binary.
pub fn client_bin() -> &'static PathBuf {
    &bins().client
}

/// A running gateway (test-support's process, with the e2e tests' gRPC helpers).
#[derive(Debug)]
pub struct Gateway(pub GatewayProcess);

impl std::ops::Deref for Gateway {
    type Target = GatewayProcess;
    fn deref(&self) -> &GatewayProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut GatewayProcess {
        &mut self.0
    }
}

impl Gateway {
    /// Starts `voice-gateway` against `riva` and `llm` (host:port) with extra env vars, and waits
    /// until `/livez` answers (not `/readyz`: some tests start it against dead backends).
    pub fn start(riva: &str, llm: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        GatewayProcess::start(riva, llm, env).map(Self)
    }

    /// Starts the gateway against a simulator and waits until it is ready.
    pub fn with_sim(sim: &Sim, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        GatewayProcess::with_sim(sim, env).map(Self)
    }

    /// [`Self::with_sim`], with the gateway's logs written to `log` (read them with `logs`).
    pub fn with_sim_logged(
        sim: &Sim,
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> anyhow::Result<Self> {
        GatewayProcess::with_sim_logged(sim, env, log).map(Self)
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        Ok(Metrics(self.http("/metrics")?.1))
    }

    /// A connected gRPC client.
    pub async fn client(&self) -> anyhow::Result<VoiceGatewayClient<tonic::transport::Channel>> {
        Ok(VoiceGatewayClient::connect(format!("http://127.0.0.1:{}", self.grpc_port)).await?)
    }

    /// Opens a stream; returns the sender of client messages and the server's stream.
    pub async fn open(&self) -> anyhow::Result<Conversation> {
        Self::open_on(self.client().await?).await
    }

    /// Opens a stream, sends the config (16 kHz, no timings) and waits for its first LISTENING.
    pub async fn listening(&self) -> anyhow::Result<Conversation> {
        let mut c = self.open().await?;
        c.send(msg::config(16_000, false)).await?;
        c.until(|g| matches!(g, Got::Event(EventType::Listening, _)))
            .await?;
        Ok(c)
    }

    /// A whole spoken conversation: opens a stream, sends the config (16 kHz, no timings), says
    /// `text`, half-closes, and reads the stream to its end.
    pub async fn speak_and_close(&self, text: &str) -> anyhow::Result<Vec<Got>> {
        let c = self.open().await?;
        c.send(msg::config(16_000, false)).await?;
        c.speak(text).await?;
        Ok(c.finish().await?)
    }

    /// Opens a stream on a connection of its own whose HTTP/2 windows (stream and connection)
    /// are `window` bytes: once the client has that much unread, the gateway can send no more.
    pub async fn open_with_window(&self, window: u32) -> anyhow::Result<Conversation> {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", self.grpc_port))?
            .initial_stream_window_size(window)
            .initial_connection_window_size(window)
            .connect()
            .await?;
        Self::open_on(VoiceGatewayClient::new(channel)).await
    }

    async fn open_on(
        mut c: VoiceGatewayClient<tonic::transport::Channel>,
    ) -> anyhow::Result<Conversation> {
        let (tx, rx) = mpsc::channel(64);
        let resp = c.stream_audio(ReceiverStream::new(rx)).await?;
        Ok(Conversation {
            tx,
            rx: resp.into_inner(),
        })
    }

    /// Waits in a blocking task until the process exits, at most `within`; its exit status, or
    /// `None` if it still runs.
    pub async fn wait_exit(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            loop {
                if let Some(s) = self.proc.0.try_wait().expect("try_wait") {
                    return Some(s);
                }
                if start.elapsed() > within {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .expect("the waiting task")
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) -> anyhow::Result<()> {
        let st = Command::new("kill")
            .args(["-TERM", &self.proc.0.id().to_string()])
            .status()?;
        anyhow::ensure!(st.success(), "kill -TERM failed");
        Ok(())
    }
}

/// Scraped metrics text.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// Value of the sample whose name-and-labels part is exactly `series` (0 if absent).
    pub fn value(&self, series: &str) -> f64 {
        self.0
            .lines()
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == series).then(|| v.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// `voice_gateway_requests_total`: (success, error).
    pub fn requests(&self) -> (f64, f64) {
        let status =
            |s: &str| self.value(&format!("voice_gateway_requests_total{{status=\"{s}\"}}"));
        (status("success"), status("error"))
    }
}

/// An open StreamAudio call.
#[derive(Debug)]
pub struct Conversation {
    /// Client → gateway.
    pub tx: mpsc::Sender<ClientMessage>,
    /// Gateway → client.
    pub rx: tonic::Streaming<ServerMessage>,
}

/// Builders of client messages.
pub mod msg {
    use super::*;

    /// `config`.
    pub fn config(sample_rate: i32, timings: bool) -> ClientMessage {
        let mut m = session("e2e", sample_rate, "en-US");
        if let Some(client_message::Content::Config(c)) = &mut m.content {
            c.enable_timings = timings;
        }
        m
    }
    /// `config` with a session id, a sample rate and a language code of the test's choosing.
    pub fn session(session_id: &str, sample_rate: i32, language_code: &str) -> ClientMessage {
        ClientMessage {
            content: Some(client_message::Content::Config(VoiceConfig {
                language_code: language_code.into(),
                session_id: session_id.into(),
                sample_rate,
                enable_timings: false,
                tts_voice: String::new(),
            })),
        }
    }
    /// `audio_chunk`.
    pub fn audio(b: &[u8]) -> ClientMessage {
        ClientMessage {
            content: Some(client_message::Content::AudioChunk(
                bytes::Bytes::copy_from_slice(b),
            )),
        }
    }
    /// `text_input`.
    pub fn text(t: &str) -> ClientMessage {
        ClientMessage {
            content: Some(client_message::Content::TextInput(t.into())),
        }
    }
    /// `barge_in`.
    pub fn barge_in() -> ClientMessage {
        ClientMessage {
            content: Some(client_message::Content::BargeIn(BargeIn {})),
        }
    }
}

/// A server message reduced to what tests compare.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    /// transcript_chunk.
    Transcript(String),
    /// llm_response_chunk.
    Llm(String),
    /// audio_chunk (bytes).
    Audio(bytes::Bytes),
    /// event (type, message).
    Event(EventType, String),
    /// timings.
    Timings(voice_proto::voice::TurnTimings),
}

impl Got {
    /// From the wire message.
    pub fn from(m: ServerMessage) -> Option<Self> {
        Some(match m.content? {
            Content::TranscriptChunk(t) => Got::Transcript(t),
            Content::LlmResponseChunk(t) => Got::Llm(t),
            Content::AudioChunk(a) => Got::Audio(a),
            Content::Event(e) => Got::Event(
                EventType::try_from(e.r#type).unwrap_or(EventType::EventUnspecified),
                e.message,
            ),
            Content::Timings(t) => Got::Timings(t),
        })
    }

    /// Short tag for sequence assertions: audio and text chunks collapse into one tag per run.
    pub fn tag(&self) -> String {
        match self {
            Got::Transcript(_) => "transcript".into(),
            Got::Llm(_) => "llm".into(),
            Got::Audio(_) => "audio".into(),
            Got::Event(t, _) => t.as_str_name().to_string(),
            Got::Timings(_) => "timings".into(),
        }
    }
}

impl Conversation {
    /// Sends `text` as the simulator's speech, in 100 ms audio chunks.
    pub async fn speak(&self, text: &str) -> anyhow::Result<()> {
        for chunk in speech_chunks(text) {
            self.send(msg::audio(&chunk)).await?;
        }
        Ok(())
    }

    /// Sends a message.
    pub async fn send(&self, m: ClientMessage) -> anyhow::Result<()> {
        self.tx
            .send(m)
            .await
            .map_err(|_| anyhow::anyhow!("stream closed"))
    }

    /// Next message, with a 20 s guard against hangs. `Ok(None)` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<Got>, tonic::Status> {
        match tokio::time::timeout(Duration::from_secs(20), self.rx.message()).await {
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "test: no server message in 20 s",
            )),
            Ok(r) => Ok(r?.and_then(Got::from)),
        }
    }

    /// Reads until `pred` matches (inclusive), returning everything read.
    pub async fn until(&mut self, pred: impl Fn(&Got) -> bool) -> Result<Vec<Got>, tonic::Status> {
        let mut v = Vec::new();
        while let Some(g) = self.next().await? {
            let stop = pred(&g);
            v.push(g);
            if stop {
                return Ok(v);
            }
        }
        Err(tonic::Status::aborted(format!(
            "stream ended before the awaited message: {:?}",
            tags(&v)
        )))
    }

    /// Closes the client side and reads to the end of the stream.
    pub async fn finish(self) -> Result<Vec<Got>, tonic::Status> {
        let Self { tx, rx } = self;
        drop(tx);
        let mut c = Conversation {
            tx: mpsc::channel(1).0,
            rx,
        };
        c.rest().await
    }

    /// Reads to the end of the stream.
    pub async fn rest(&mut self) -> Result<Vec<Got>, tonic::Status> {
        let mut v = Vec::new();
        while let Some(g) = self.next().await? {
            v.push(g);
        }
        Ok(v)
    }
}

/// Tags with consecutive duplicates collapsed: the shape of a conversation.
pub fn tags(v: &[Got]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for g in v {
        let t = g.tag();
        if out.last() != Some(&t) {
            out.push(t);
        }
    }
    out
}

/// All LLM text in `v`.
pub fn llm_text(v: &[Got]) -> String {
    v.iter()
        .filter_map(|g| match g {
            Got::Llm(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// All audio in `v`, concatenated.
pub fn audio(v: &[Got]) -> Vec<u8> {
    let mut out = Vec::new();
    for g in v {
        if let Got::Audio(a) = g {
            out.extend_from_slice(a);
        }
    }
    out
}

/// What the simulator's speech in `pcm` says, utterance by utterance.
pub fn hear(pcm: &[u8]) -> Vec<String> {
    let mut d = voice_sim::codec::SpeechDecoder::default();
    d.push(pcm)
        .into_iter()
        .filter_map(|r| match r {
            voice_sim::codec::Recognized::Final(t) => Some(t),
            voice_sim::codec::Recognized::Interim(_) => None,
        })
        .collect()
}

/// The simulator's speech of `text` at 16 kHz, as the client's audio chunks of 100 ms.
pub fn speech_chunks(text: &str) -> Vec<Vec<u8>> {
    voice_sim::codec::encode_speech(text, 16_000)
        .chunks(3200)
        .map(<[u8]>::to_vec)
        .collect()
}
