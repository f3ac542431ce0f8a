//! Harness for the end-to-end tests: starts `voice-sim` and `voice-gateway` as processes on
//! 127.0.0.1 with free ports (killed on drop), talks to the gateway over gRPC and scrapes its
//! admin port over plain HTTP/1.0.
//!
//! Binaries come from `VOICE_GATEWAY_BIN` / `VOICE_SIM_BIN` / `VOICE_CLIENT_BIN` (default: next to
//! the sim), or are built with cargo into the target directory of this test (one `cargo build`
//! per test binary run).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use voice_proto::voice::voice_gateway_client::VoiceGatewayClient;
use voice_proto::voice::{
    BargeIn, ClientMessage, EventType, ServerMessage, VoiceConfig, client_message,
    server_message::Content,
};

fn build_once() -> &'static (PathBuf, PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let from_env = |v: &str| std::env::var_os(v).map(PathBuf::from);
        if let (Some(g), Some(s)) = (from_env("VOICE_GATEWAY_BIN"), from_env("VOICE_SIM_BIN")) {
            let c =
                from_env("VOICE_CLIENT_BIN").unwrap_or_else(|| s.with_file_name("voice-client"));
            return (g, s, c);
        }
        // <target>/<profile>/deps/<this test> → <target>/<profile>/
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target dir")
            .to_path_buf();
        let profile_release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "voice-gateway",
            "-p",
            "voice-sim",
            "-p",
            "voice-client",
            "--bin",
            "voice-gateway",
            "--bin",
            "voice-sim",
            "--bin",
            "voice-client",
        ]);
        if profile_release {
            cmd.arg("--release");
        }
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let st = cmd.status().expect("run cargo build");
        assert!(
            st.success(),
            "cargo build of voice-gateway, voice-sim and voice-client failed"
        );
        (
            dir.join("voice-gateway"),
            dir.join("voice-sim"),
            dir.join("voice-client"),
        )
    })
}

/// The `voice-sim` binary (for its `speak` subcommand).
pub fn sim_bin() -> &'static PathBuf {
    &build_once().1
}

/// The `voice-client` binary.
pub fn client_bin() -> &'static PathBuf {
    &build_once().2
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A child process killed when dropped.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct Sim {
    /// Process.
    pub proc: Proc,
    /// Riva gRPC address.
    pub riva: String,
    /// LLM HTTP address.
    pub llm: String,
}

impl Sim {
    /// Starts `voice-sim` with extra arguments (profile, faults …).
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let (_, sim, _) = build_once();
        let mut child = Command::new(sim)
            .args(["--riva-addr", "127.0.0.1:0", "--llm-addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", sim.display()))?;
        let stdout = child.stdout.take().context("sim stdout")?;
        let proc = Proc(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
                .with_context(|| format!("no {k} in {line:?}"))
        };
        Ok(Self {
            riva: field("riva=")?,
            llm: field("llm=")?,
            proc,
        })
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Process.
    pub proc: Proc,
    /// gRPC port.
    pub grpc_port: u16,
    /// Admin port.
    pub admin_port: u16,
}

impl Gateway {
    /// Starts `voice-gateway` against `riva` and `llm` (host:port) with extra env vars, and waits
    /// until `/livez` answers (not `/readyz`: some tests start it against dead backends).
    pub fn start(riva: &str, llm: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let (gw, _, _) = build_once();
        let grpc_port = free_port();
        let admin_port = free_port();
        let child = Command::new(gw)
            .env("RIVA_URI", riva)
            .env("LLM_SERVICE_URL", format!("http://{llm}/v1"))
            .env("GRPC_PORT", grpc_port.to_string())
            .env("METRICS_PORT", admin_port.to_string())
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("LLM_MODEL", "sim-model")
            .env(
                "LOG_LEVEL",
                std::env::var("GATEWAY_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", gw.display()))?;
        let g = Self {
            proc: Proc(child),
            grpc_port,
            admin_port,
        };
        g.wait_http("/livez", 200, Duration::from_secs(20))?;
        Ok(g)
    }

    /// Starts the gateway against a simulator and waits until it is ready.
    pub fn with_sim(sim: &Sim, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let g = Self::start(&sim.riva, &sim.llm, env)?;
        g.wait_http("/readyz", 200, Duration::from_secs(20))?;
        Ok(g)
    }

    /// `GET path` on the admin port: (status, body).
    pub fn http(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.admin_port, path)
    }

    /// Polls `path` until it answers `status`.
    pub fn wait_http(&self, path: &str, status: u16, within: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if self.http(path).is_ok_and(|(s, _)| s == status) {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!("{path} did not answer {status} within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
        let mut c = self.client().await?;
        let (tx, rx) = mpsc::channel(64);
        let resp = c.stream_audio(ReceiverStream::new(rx)).await?;
        Ok(Conversation {
            tx,
            rx: resp.into_inner(),
        })
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

fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bad HTTP status line")?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
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
        ClientMessage {
            content: Some(client_message::Content::Config(VoiceConfig {
                language_code: "en-US".into(),
                session_id: "e2e".into(),
                sample_rate,
                enable_timings: timings,
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
