//! `voice-bench`: measures the gateway against the simulator, side by side with the same work
//! done directly against the simulator in the same run (same load, same moment).
//!
//! - `overhead`: time to first audio through the gateway vs. directly (LLM until the first
//!   sentence, then TTS until its first chunk), N concurrent streams; p50/p99 of both and of the
//!   paired difference. A turn and its direct twin alternate which runs first (the second finds
//!   every process awake). `through`: per turn, first audio as the client saw it minus the
//!   backends' own latencies of that turn as the gateway measured them, i.e. the gateway's own
//!   share plus the two client↔gateway hops, with no other turn subtracted. Two offered loads: back to back (`--pace-ms 0`: every stream starts its
//!   next turn as soon as the last one ends, which saturates the machine and measures queueing)
//!   and paced (`--pace-ms P`: each stream starts a turn every P ms on average, fixed or Poisson,
//!   as users who speak with pauses do). With `--gateway-pid`/`--sim-pid`, the CPU time each
//!   process (and the bench itself) spent per turn during the run.
//! - `pipeline`: turn completion through the gateway vs. the ideal bound (later of LLM completion
//!   and the TTS work that cannot overlap, measured directly) and vs. the sequential sum.
//! - `capacity`: N paced streams through the gateway alone (no direct twins), each starting a
//!   turn every P ms (phases spread evenly), reporting whether it sustains them: every turn
//!   served and started on time, `through` p99 within a limit.
//!   `bench.sh` doubles N until it does not, for "the most streams sustained on 2 cores".
//! - `idle-memory`: gateway RSS growth per idle stream.
//! - `histogram`: cost of one histogram observation.
//! - `null-gateway`: a server of the gateway's API that does no work (`--chunks N` audio chunks
//!   back at once per text turn, default one) on the same gRPC stack, so `overhead` against it
//!   measures the bare client ↔ server round trip that every `through` figure contains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::sync::{Barrier, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use voice_gateway::llm::{ChatMessage, LlmClient, LlmPiece, LlmSettings};
use voice_gateway::riva::{Metadata, Riva};
use voice_gateway::sentence::SentenceSplitter;
use voice_gateway::sse::ThinkFilter;
use voice_proto::voice::voice_gateway_client::VoiceGatewayClient;
use voice_proto::voice::voice_gateway_server::{VoiceGateway, VoiceGatewayServer};
use voice_proto::voice::{
    ClientMessage, EventType, ServerEvent, ServerMessage, TurnTimings, VoiceConfig,
    client_message::Content as C, server_message::Content as S,
};

#[derive(Debug, Parser)]
#[command(name = "voice-bench")]
struct Args {
    /// Threads of the bench client's own runtime; 1 runs it on one thread, which then also
    /// polls the sockets, so no reply waits for a wake-up of another of the client's threads.
    /// Default: one per core.
    #[arg(long, global = true, default_value_t = 0)]
    client_threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Args, Clone)]
struct Targets {
    /// Gateway gRPC address.
    #[arg(long)]
    target: String,
    /// The simulator's Riva address (for the direct baseline).
    #[arg(long)]
    riva: String,
    /// The simulator's LLM address (for the direct baseline).
    #[arg(long)]
    llm: String,
    /// Text of each turn.
    #[arg(long, default_value = "benchmark turn")]
    text: String,
}

/// The offered load of `overhead`, and the processes whose CPU it reports.
#[derive(Debug, clap::Args, Clone)]
struct Load {
    /// Mean time between the starts of two turns of one stream, in ms; 0: back to back.
    #[arg(long, default_value_t = 0)]
    pace_ms: u64,
    /// Turn starts in the paced mode: `fixed` (every PACE ms, streams' phases spread evenly
    /// over one period) or `poisson` (exponential gaps of mean PACE ms, independent streams).
    #[arg(long, value_enum, default_value_t = Arrival::Poisson)]
    arrival: Arrival,
    /// Pause between a turn and its direct twin, in ms (0: none). Whichever twin runs second
    /// finds the processes awake; with a pause both start from idle, as a user's turn does.
    #[arg(long, default_value_t = 0)]
    twin_gap_ms: u64,
    /// Gateway process id: its CPU time per turn is reported.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Simulator process id: its CPU time per turn is reported (it serves the direct turns too).
    #[arg(long)]
    sim_pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Arrival {
    Fixed,
    Poisson,
}

impl Load {
    fn describe(&self) -> String {
        match (self.pace_ms, self.arrival) {
            (0, _) => "back to back".into(),
            (p, Arrival::Fixed) => format!("every {:.1} s", p as f64 / 1e3),
            (p, Arrival::Poisson) => format!("Poisson, mean {:.1} s", p as f64 / 1e3),
        }
    }
}

/// Turn start times of one stream in the paced mode (xorshift64*: no dependency, repeatable).
#[derive(Debug)]
struct Pacer {
    pace: Duration,
    arrival: Arrival,
    state: u64,
}

impl Pacer {
    fn new(load: &Load, stream: usize, streams: usize) -> (Self, Duration) {
        let mut p = Self {
            pace: Duration::from_millis(load.pace_ms),
            arrival: load.arrival,
            state: 0x9E37_79B9_7F4A_7C15 ^ (stream as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
        };
        let first = match p.arrival {
            Arrival::Fixed => p.pace.mul_f64(stream as f64 / streams.max(1) as f64),
            Arrival::Poisson => p.gap(),
        };
        (p, first)
    }

    fn uniform(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64 // (0, 1]
    }

    /// Time from one turn start to the next.
    fn gap(&mut self) -> Duration {
        match self.arrival {
            Arrival::Fixed => self.pace,
            Arrival::Poisson => self.pace.mul_f64(-self.uniform().ln()),
        }
    }
}

/// CPU time (user + system) of a process so far; `None` if it cannot be read.
fn cpu_time(pid: &str) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / 100.0)) // USER_HZ is 100 on Linux
}

/// CPU per turn of the gateway, the simulator and the bench, between two snapshots.
#[derive(Debug)]
struct CpuSnap([Option<Duration>; 3]);

impl CpuSnap {
    fn take(load: &Load) -> Self {
        let pid = |p: Option<u32>| p.and_then(|p| cpu_time(&p.to_string()));
        Self([pid(load.gateway_pid), pid(load.sim_pid), cpu_time("self")])
    }

    fn per_turn(&self, later: &Self, turns: usize) -> [String; 3] {
        std::array::from_fn(|i| match (self.0[i], later.0[i]) {
            (Some(a), Some(b)) if turns > 0 => {
                format!("{:.3}", (b - a).as_secs_f64() * 1e3 / turns as f64)
            }
            _ => "n/a".into(),
        })
    }
}

/// The level `capacity` measures.
#[derive(Debug, clap::Args, Clone)]
struct CapacityArgs {
    /// Gateway gRPC address.
    #[arg(long)]
    target: String,
    /// Concurrent streams, all open before the first turn.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Turns per stream.
    #[arg(long, default_value_t = 2)]
    turns: usize,
    /// Time between the starts of two turns of one stream, in ms (fixed; the streams' phases
    /// spread evenly over it, so the gateway gets a steady STREAMS / PACE turns a second).
    #[arg(long, default_value_t = 5000)]
    pace_ms: u64,
    /// Sustained only while `through` p99 stays within this, in ms.
    #[arg(long, default_value_t = 5.0)]
    p99_limit_ms: f64,
    /// Gateway process id: its CPU (in cores) and peak RSS are reported.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Text of each turn.
    #[arg(long, default_value = "benchmark turn")]
    text: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Gateway overhead on time to first audio.
    Overhead {
        #[command(flatten)]
        t: Targets,
        /// Concurrent streams.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Turns per stream (each with one direct baseline turn beside it).
        #[arg(long, default_value_t = 20)]
        turns: usize,
        #[command(flatten)]
        load: Load,
    },
    /// Whether the gateway sustains N paced streams: one row, its last column `yes` or `no`.
    Capacity(CapacityArgs),
    /// Turn completion vs. the ideal pipelined bound and the sequential sum.
    Pipeline {
        #[command(flatten)]
        t: Targets,
        /// Turns.
        #[arg(long, default_value_t = 10)]
        turns: usize,
    },
    /// Gateway RSS per idle stream.
    IdleMemory {
        /// Gateway gRPC address.
        #[arg(long)]
        target: String,
        /// Gateway process id.
        #[arg(long)]
        pid: u32,
        /// Idle streams to open.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
    },
    /// Serves the gateway's gRPC API doing no work: each text turn gets `--chunks` audio
    /// chunks, timings (first audio and gateway share both 0 ms, so `through` = the client's
    /// time to first audio) and LISTENING at once. The same stack as voice-gateway (tonic,
    /// TCP_NODELAY on accepted sockets); `overhead --target` at it measures the round trip
    /// alone. Runs until killed.
    NullGateway {
        /// Address to listen on (port 0: any; the chosen address is printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Bytes of the audio chunk (default: 200 ms of 16 kHz 16-bit audio, the sim's chunk).
        #[arg(long, default_value_t = 6400)]
        chunk_bytes: usize,
        /// Audio chunks per turn, sent at once (a TTS faster than real time sends a burst).
        #[arg(long, default_value_t = 1)]
        chunks: usize,
    },
    /// Cost of one histogram observation.
    Histogram {
        /// Observations.
        #[arg(long, default_value_t = 10_000_000)]
        n: u64,
    },
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// A percentile, or `n/a` when the gateway reported none.
fn opt(v: &mut [f64], p: f64) -> String {
    if v.is_empty() {
        "n/a".into()
    } else {
        format!("{:.3}", pct(v, p))
    }
}

fn uri(a: &str) -> String {
    if a.contains("://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

struct Direct {
    llm: LlmClient,
    riva: Riva,
}

impl Direct {
    fn new(t: &Targets) -> anyhow::Result<Self> {
        Ok(Self {
            llm: LlmClient::new(LlmSettings {
                base_url: format!("http://{}/v1", t.llm),
                api_key: String::new(),
                model: "bench".into(),
                temperature: 0.5,
                max_tokens: 256,
                include_usage: true,
                first_token_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(30),
            })?,
            riva: Riva::new(&t.riva, false, Metadata::default(), Duration::from_secs(30))?,
        })
    }

    fn messages(text: &str) -> Vec<ChatMessage> {
        vec![
            ChatMessage {
                role: "system",
                content: voice_gateway::config::DEFAULT_SYSTEM_PROMPT.into(),
            },
            ChatMessage {
                role: "user",
                content: text.into(),
            },
        ]
    }

    /// LLM until the first sentence, TTS until its first chunk: the backends' own share.
    async fn first_audio(&self, text: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut s = self.llm.stream(&Self::messages(text)).await?;
        let mut think = ThinkFilter::default();
        let mut split = SentenceSplitter::new(6, 250);
        let mut out = Vec::new();
        while out.is_empty() {
            match s.next().await? {
                Some(LlmPiece::Content(c)) => split.push(&think.push(&c), &mut out),
                Some(LlmPiece::Usage(_)) => {}
                None => {
                    split.finish(&mut out);
                    break;
                }
            }
        }
        let sentence = out
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("empty reply"))?;
        let mut tts = self
            .riva
            .synthesize_online(sentence, "en-US", "", 16_000)
            .await?;
        tts.message().await?;
        let first = t.elapsed();
        // Drain rather than cancel: thousands of cancelled streams make h2 servers send GOAWAY.
        while tts.message().await?.is_some() {}
        Ok(first)
    }

    /// (ideal pipelined bound, sequential sum), measured by running each stage alone.
    async fn bounds(&self, text: &str) -> anyhow::Result<(Duration, Duration)> {
        let t = Instant::now();
        let mut s = self.llm.stream(&Self::messages(text)).await?;
        let mut think = ThinkFilter::default();
        let mut split = SentenceSplitter::new(6, 250);
        let mut ready = Vec::new();
        let mut out = Vec::new();
        loop {
            match s.next().await? {
                Some(LlmPiece::Content(c)) => split.push(&think.push(&c), &mut out),
                Some(LlmPiece::Usage(_)) => {}
                None => {
                    split.finish(&mut out);
                    ready.extend(out.drain(..).map(|x| (x, t.elapsed())));
                    break;
                }
            }
            ready.extend(out.drain(..).map(|x| (x, t.elapsed())));
        }
        let llm_done = t.elapsed();
        let mut tts_end = Duration::ZERO;
        let mut tts_sum = Duration::ZERO;
        for (sentence, at) in ready {
            let start = Instant::now();
            let mut tts = self
                .riva
                .synthesize_online(sentence, "en-US", "", 16_000)
                .await?;
            while tts.message().await?.is_some() {}
            let d = start.elapsed();
            tts_sum += d;
            tts_end = tts_end.max(at) + d;
        }
        Ok((llm_done.max(tts_end), llm_done + tts_sum))
    }
}

struct GwStream {
    tx: mpsc::Sender<ClientMessage>,
    rx: tonic::Streaming<ServerMessage>,
}

fn msg(c: C) -> ClientMessage {
    ClientMessage { content: Some(c) }
}

impl GwStream {
    async fn open(ch: Channel) -> anyhow::Result<Self> {
        let mut c = VoiceGatewayClient::new(ch);
        let (tx, rx) = mpsc::channel(16);
        tx.send(msg(C::Config(VoiceConfig {
            language_code: "en-US".into(),
            session_id: String::new(),
            sample_rate: 16_000,
            enable_timings: true,
            tts_voice: String::new(),
        })))
        .await?;
        let mut rx = c.stream_audio(ReceiverStream::new(rx)).await?.into_inner();
        rx.message().await?; // LISTENING "Ready"
        Ok(Self { tx, rx })
    }

    /// One turn through the gateway, timed by this client and as the gateway reports it.
    async fn turn(&mut self, text: &str) -> anyhow::Result<GwTurn> {
        let t = Instant::now();
        self.tx.send(msg(C::TextInput(text.into()))).await?;
        let mut first = None;
        let (mut own, mut reported) = (None, None);
        let mut last_audio = t.elapsed();
        while let Some(m) = self.rx.message().await? {
            match m.content {
                Some(S::AudioChunk(_)) => {
                    let e = t.elapsed();
                    first.get_or_insert(e);
                    last_audio = e;
                }
                Some(S::Timings(tm)) => {
                    own = tm.gateway_ms;
                    reported = Some(tm.first_audio_ms);
                }
                Some(S::Event(e)) if e.r#type == EventType::Listening as i32 => {
                    return Ok(GwTurn {
                        first_audio: first.ok_or_else(|| anyhow::anyhow!("no audio"))?,
                        last_audio,
                        own_ms: own,
                        reported_first_audio_ms: reported,
                    });
                }
                Some(S::Event(e)) if e.r#type == EventType::Error as i32 => {
                    anyhow::bail!("gateway error: {}", e.message)
                }
                _ => {}
            }
        }
        anyhow::bail!("stream ended mid-turn")
    }
}

/// One turn through the gateway.
struct GwTurn {
    /// Text sent → first audio chunk received, on this client's clock.
    first_audio: Duration,
    /// Text sent → last audio chunk received.
    last_audio: Duration,
    /// The gateway's own share of first audio (`TurnTimings.gateway_ms`).
    own_ms: Option<f64>,
    /// Text received → first audio sent, on the gateway's clock (`TurnTimings.first_audio_ms`).
    reported_first_audio_ms: Option<f64>,
}

impl GwTurn {
    /// What the gateway added to this turn's time to first audio: first audio as this client saw
    /// it minus the backends' own latencies of this very turn, as the gateway measured them at
    /// its backend clients (LLM request → first sentence, TTS request → first chunk). It is the
    /// gateway's own share plus the two client↔gateway hops; unlike `paired`, it subtracts no
    /// other turn's backend time.
    fn through_ms(&self) -> Option<f64> {
        let backends = self.reported_first_audio_ms? - self.own_ms?;
        Some(self.first_audio.as_secs_f64() * 1e3 - backends)
    }
}

async fn channels(target: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            tonic::transport::Endpoint::from_shared(uri(target))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    Ok(v)
}

async fn overhead(t: Targets, streams: usize, turns: usize, load: Load) -> anyhow::Result<()> {
    let chans = channels(&t.target, streams.div_ceil(100)).await?;
    let direct = Arc::new(Direct::new(&t)?);
    // Every stream open before any turn starts; the main task joins to start the clocks.
    let barrier = Arc::new(Barrier::new(streams + 1));
    let mut tasks = Vec::new();
    for i in 0..streams {
        let ch = chans[i % chans.len()].clone();
        let (direct, barrier, text) = (direct.clone(), barrier.clone(), t.text.clone());
        let (mut pacer, first) = Pacer::new(&load, i, streams);
        let paced = load.pace_ms > 0;
        let twin_gap = Duration::from_millis(load.twin_gap_ms);
        tasks.push(tokio::spawn(async move {
            let mut s = GwStream::open(ch).await;
            barrier.wait().await;
            let s = s.as_mut().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut out = Vec::new();
            let mut late = 0usize;
            let mut next = tokio::time::Instant::now() + first;
            for k in 0..turns {
                if paced {
                    // The previous turn (and its direct twin) overran the pause; a first turn has
                    // none before it (with `--arrival fixed`, stream 0's starts at once).
                    if k > 0 && tokio::time::Instant::now() > next {
                        late += 1;
                    }
                    tokio::time::sleep_until(next).await;
                    next += pacer.gap();
                }
                // The twin that runs second finds the processes awake and the caches warm (on
                // this VM a wake-up of an idle vCPU costs tens of microseconds): alternate.
                let (g, d) = if (i + k) % 2 == 0 {
                    let g = s.turn(&text).await?;
                    tokio::time::sleep(twin_gap).await;
                    (g, direct.first_audio(&text).await?)
                } else {
                    let d = direct.first_audio(&text).await?;
                    tokio::time::sleep(twin_gap).await;
                    (s.turn(&text).await?, d)
                };
                out.push((g, d));
            }
            anyhow::Ok((out, late))
        }));
    }
    barrier.wait().await;
    let cpu0 = CpuSnap::take(&load);
    let start = Instant::now();
    let (mut g, mut d, mut diff, mut errors) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let (mut own, mut through, mut late) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        match t.await? {
            Ok((v, l)) => {
                late += l;
                for (turn, b) in v {
                    let a = turn.first_audio;
                    own.extend(turn.own_ms);
                    through.extend(turn.through_ms());
                    g.push(a.as_secs_f64() * 1e3);
                    d.push(b.as_secs_f64() * 1e3);
                    diff.push((a.as_secs_f64() - b.as_secs_f64()) * 1e3);
                }
            }
            Err(e) => {
                errors += 1;
                eprintln!("stream failed: {e}");
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let [cpu_gw, cpu_sim, cpu_bench] = cpu0.per_turn(&CpuSnap::take(&load), g.len());
    let (g50, g99, d50, d99) = (
        pct(&mut g, 0.5),
        pct(&mut g, 0.99),
        pct(&mut d, 0.5),
        pct(&mut d, 0.99),
    );
    println!(
        "| {} | {streams} | {} | {:.0} | {late} | {g50:.3} | {g99:.3} | {d50:.3} | {d99:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {cpu_gw} | {cpu_sim} | {cpu_bench} | {errors} |",
        load.describe(),
        g.len(),
        g.len() as f64 / elapsed,
        g50 - d50,
        g99 - d99,
        pct(&mut diff, 0.5),
        pct(&mut diff, 0.99),
        opt(&mut own, 0.5),
        opt(&mut own, 0.99),
        opt(&mut through, 0.5),
        opt(&mut through, 0.99),
    );
    Ok(())
}

/// What one `capacity` level measured.
#[derive(Debug)]
struct Level {
    /// Turns that started after their time: the stream's previous turn took longer than the
    /// pace.
    late_starts: usize,
    failed_streams: usize,
    /// `through` p99, in ms (NaN when no turn reported its timings).
    through_p99_ms: f64,
}

impl Level {
    /// Every stream served all its turns, each started on time, with `through` p99 within
    /// `limit_ms`.
    fn sustained(&self, limit_ms: f64) -> bool {
        self.failed_streams == 0 && self.late_starts == 0 && self.through_p99_ms <= limit_ms
    }
}

async fn capacity(a: CapacityArgs) -> anyhow::Result<()> {
    let CapacityArgs {
        target,
        streams,
        turns,
        pace_ms,
        p99_limit_ms,
        gateway_pid,
        text,
    } = a;
    anyhow::ensure!(pace_ms > 0, "--pace-ms must be above 0");
    let load = Load {
        pace_ms,
        arrival: Arrival::Fixed,
        twin_gap_ms: 0,
        gateway_pid,
        sim_pid: None,
    };
    let chans = channels(&target, streams.div_ceil(100)).await?;
    let barrier = Arc::new(Barrier::new(streams + 1));
    let mut tasks = Vec::new();
    for i in 0..streams {
        let ch = chans[i % chans.len()].clone();
        let (barrier, text) = (barrier.clone(), text.clone());
        let (mut pacer, first) = Pacer::new(&load, i, streams);
        tasks.push(tokio::spawn(async move {
            let mut s = GwStream::open(ch).await;
            barrier.wait().await;
            let s = s.as_mut().map_err(|e| anyhow::anyhow!("{e}"))?;
            let (mut out, mut late) = (Vec::new(), 0usize);
            let mut next = tokio::time::Instant::now() + first;
            for k in 0..turns {
                // The previous turn ended after this one's start time (the first turn has none:
                // the stream whose phase is 0 starts at once).
                if k > 0 && tokio::time::Instant::now() > next {
                    late += 1;
                }
                tokio::time::sleep_until(next).await;
                next += pacer.gap();
                out.push(s.turn(&text).await?);
            }
            anyhow::Ok((out, late))
        }));
    }
    barrier.wait().await;
    let cpu0 = CpuSnap::take(&load);
    let start = Instant::now();
    let (mut first, mut through, mut own) = (Vec::new(), Vec::new(), Vec::new());
    let (mut late, mut failed) = (0, 0);
    for t in tasks {
        match t.await? {
            Ok((v, l)) => {
                late += l;
                for turn in v {
                    first.push(turn.first_audio.as_secs_f64() * 1e3);
                    through.extend(turn.through_ms());
                    own.extend(turn.own_ms);
                }
            }
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("stream failed: {e}");
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let cores = match (cpu0.0[0], CpuSnap::take(&load).0[0]) {
        (Some(a), Some(b)) => format!("{:.2}", (b - a).as_secs_f64() / elapsed.as_secs_f64()),
        _ => "n/a".into(),
    };
    let peak_rss = gateway_pid
        .and_then(|p| peak_rss_kib(p).ok())
        .map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    let level = Level {
        late_starts: late,
        failed_streams: failed,
        through_p99_ms: if through.is_empty() {
            f64::NAN
        } else {
            pct(&mut through, 0.99)
        },
    };
    println!(
        "| {streams} | {:.1} | {:.1} | {} | {late} | {} | {} | {} | {:.3} | {} | {cores} | {peak_rss} | {failed} | {} |",
        streams as f64 * 1e3 / pace_ms as f64,
        first.len() as f64 / elapsed.as_secs_f64(),
        first.len(),
        opt(&mut first, 0.5),
        opt(&mut first, 0.99),
        opt(&mut through, 0.5),
        level.through_p99_ms,
        opt(&mut own, 0.99),
        if level.sustained(p99_limit_ms) {
            "yes"
        } else {
            "no"
        },
    );
    Ok(())
}

async fn pipeline(t: Targets, turns: usize) -> anyhow::Result<()> {
    let ch = channels(&t.target, 1).await?.remove(0);
    let direct = Direct::new(&t)?;
    let mut s = GwStream::open(ch).await?;
    let (mut vs_bound, mut vs_seq, mut gw, mut bound) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut seq = Vec::new();
    for _ in 0..turns {
        let total = s.turn(&t.text).await?.last_audio;
        let (b, sq) = direct.bounds(&t.text).await?;
        vs_bound.push(total.as_secs_f64() / b.as_secs_f64());
        vs_seq.push(total.as_secs_f64() / sq.as_secs_f64());
        gw.push(total.as_secs_f64() * 1e3);
        bound.push(b.as_secs_f64() * 1e3);
        seq.push(sq.as_secs_f64() * 1e3);
    }
    println!(
        "| {turns} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} | {:.3} |",
        pct(&mut gw, 0.5),
        pct(&mut bound, 0.5),
        pct(&mut seq, 0.5),
        pct(&mut vs_bound, 0.5),
        pct(&mut vs_bound, 0.99),
        pct(&mut vs_seq, 0.5),
    );
    Ok(())
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field}"))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM")
}

async fn idle_memory(target: String, pid: u32, streams: usize) -> anyhow::Result<()> {
    let chans = channels(&target, streams.div_ceil(100)).await?;
    // Warm up: one stream, so one-off allocations are not counted per stream.
    let warm = GwStream::open(chans[0].clone()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let mut open = Vec::new();
    for i in 0..streams {
        open.push(GwStream::open(chans[i % chans.len()].clone()).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid)?;
    println!(
        "| {streams} | {before} | {after} | {:.1} |",
        (after.saturating_sub(before)) as f64 / streams as f64
    );
    drop(open);
    drop(warm);
    Ok(())
}

/// The gateway's API with no work behind it (see `Cmd::NullGateway`).
struct NullGateway {
    chunk: bytes::Bytes,
    chunks: usize,
}

/// What the null gateway answers to one client message. Config: LISTENING "Ready". A text
/// turn: `chunks` (at least one) copies of `chunk`, timings that report no backend time (first
/// audio = gateway share = 0 ms), then LISTENING. Anything else: nothing.
fn null_replies(m: ClientMessage, chunk: &bytes::Bytes, chunks: usize) -> Vec<S> {
    let listening = |message: &str| {
        S::Event(ServerEvent {
            r#type: EventType::Listening as i32,
            message: message.into(),
        })
    };
    match m.content {
        Some(C::Config(_)) => vec![listening("Ready")],
        Some(C::TextInput(_)) => {
            let mut out: Vec<S> = (0..chunks.max(1))
                .map(|_| S::AudioChunk(chunk.clone()))
                .collect();
            out.push(S::Timings(TurnTimings {
                first_audio_ms: 0.0,
                gateway_ms: Some(0.0),
                audio_bytes: (chunk.len() * out.len()) as u64,
                ..Default::default()
            }));
            out.push(listening(""));
            out
        }
        _ => vec![],
    }
}

#[tonic::async_trait]
impl VoiceGateway for NullGateway {
    type StreamAudioStream = ReceiverStream<Result<ServerMessage, tonic::Status>>;

    async fn stream_audio(
        &self,
        req: tonic::Request<tonic::Streaming<ClientMessage>>,
    ) -> Result<tonic::Response<Self::StreamAudioStream>, tonic::Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (chunk, chunks) = (self.chunk.clone(), self.chunks);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                for c in null_replies(m, &chunk, chunks) {
                    if tx
                        .send(Ok(ServerMessage { content: Some(c) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

async fn null_gateway(listen: String, chunk_bytes: usize, chunks: usize) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(&listen).await?;
    println!("null-gateway listening on {}", l.local_addr()?);
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(u32::MAX))
        .add_service(VoiceGatewayServer::new(NullGateway {
            chunk: bytes::Bytes::from(vec![0u8; chunk_bytes]),
            chunks,
        }))
        .serve_with_incoming(voice_gateway::server::grpc_incoming(l))
        .await?;
    Ok(())
}

fn histogram(n: u64) {
    use prometheus_client::metrics::histogram::Histogram;
    let h = Histogram::new(voice_gateway::metrics::LATENCY_BUCKETS.iter().copied());
    let t = Instant::now();
    for i in 0..n {
        h.observe((i % 1000) as f64 * 0.001);
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!("| {n} | {ns:.1} |");
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = match args.client_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        0 => tokio::runtime::Runtime::new()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    rt.block_on(async {
        match args.cmd {
            Cmd::Overhead {
                t,
                streams,
                turns,
                load,
            } => overhead(t, streams, turns, load).await,
            Cmd::Capacity(a) => capacity(a).await,
            Cmd::Pipeline { t, turns } => pipeline(t, turns).await,
            Cmd::IdleMemory {
                target,
                pid,
                streams,
            } => idle_memory(target, pid, streams).await,
            Cmd::NullGateway {
                listen,
                chunk_bytes,
                chunks,
            } => null_gateway(listen, chunk_bytes, chunks).await,
            Cmd::Histogram { n } => {
                histogram(n);
                Ok(())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(c: C) -> ClientMessage {
        ClientMessage { content: Some(c) }
    }

    fn is_listening(s: &S, text: &str) -> bool {
        matches!(s, S::Event(e) if e.r#type == EventType::Listening as i32 && e.message == text)
    }

    #[test]
    fn a_level_is_sustained_only_with_every_turn_served_on_time_within_the_limit() {
        let level = |late_starts, failed_streams, through_p99_ms| Level {
            late_starts,
            failed_streams,
            through_p99_ms,
        };
        assert!(level(0, 0, 0.8).sustained(5.0));
        assert!(!level(0, 1, 0.8).sustained(5.0), "a stream failed");
        assert!(!level(1, 0, 0.8).sustained(5.0), "fell behind");
        assert!(!level(0, 0, 5.1).sustained(5.0), "too slow");
        assert!(!level(0, 0, f64::NAN).sustained(5.0), "no timings");
    }

    #[test]
    fn null_gateway_answers_config_with_ready() {
        let out = null_replies(
            msg(C::Config(VoiceConfig::default())),
            &bytes::Bytes::new(),
            3,
        );
        assert_eq!(out.len(), 1);
        assert!(is_listening(&out[0], "Ready"));
    }

    #[test]
    fn null_gateway_answers_a_text_turn_with_its_chunks_timings_and_listening() {
        let chunk = bytes::Bytes::from(vec![7u8; 10]);
        let out = null_replies(msg(C::TextInput("hello".into())), &chunk, 3);
        assert_eq!(out.len(), 5);
        assert!(
            out[..3]
                .iter()
                .all(|s| matches!(s, S::AudioChunk(b) if *b == chunk))
        );
        let S::Timings(t) = &out[3] else {
            panic!("expected timings, got {:?}", out[3]);
        };
        assert_eq!(t.gateway_ms, Some(t.first_audio_ms));
        assert_eq!(t.audio_bytes, 30);
        assert!(is_listening(&out[4], ""));
        // `through` of such a turn is the client's own time to first audio.
        let turn = GwTurn {
            first_audio: Duration::from_micros(400),
            last_audio: Duration::from_micros(500),
            own_ms: t.gateway_ms,
            reported_first_audio_ms: Some(t.first_audio_ms),
        };
        assert!((turn.through_ms().unwrap() - 0.4).abs() < 1e-9);
    }

    #[test]
    fn null_gateway_sends_at_least_one_chunk_and_ignores_other_messages() {
        let chunk = bytes::Bytes::from_static(b"ab");
        let out = null_replies(msg(C::TextInput("hi".into())), &chunk, 0);
        assert_eq!(
            out.iter().filter(|s| matches!(s, S::AudioChunk(_))).count(),
            1
        );
        assert!(null_replies(msg(C::AudioChunk(chunk.clone())), &chunk, 2).is_empty());
        assert!(null_replies(ClientMessage { content: None }, &chunk, 2).is_empty());
    }
}
