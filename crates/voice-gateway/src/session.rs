//! One `StreamAudio` call: a conversation of many turns.
//!
//! ```text
//! client ──audio──► [ASR task] ──transcripts──► session loop ──spawn──► turn task
//!                                                   │                    ├─ LLM reader ──sentences (bounded)──┐
//!                                                   │                    └─ TTS writer ◄──────────────────────┘
//! client ◄──────────────── bounded outbound queue (tagged by turn; a barge-in drops its turn's entries)
//! ```
//!
//! The session loop owns the state (history, pending turns, ASR stream); each turn runs in its
//! own task so a barge-in can stop LLM and TTS at once by aborting it. Inside a turn the LLM
//! stream keeps being read while earlier sentences are synthesised; the outbound queue,
//! the sentence queue and the ASR audio queue are all bounded, so a slow client slows its own
//! turn and nothing grows without bound.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Status, Streaming};
use tracing::{Instrument, debug, info, warn};
use voice_proto::voice::{
    ClientMessage, EventType, ServerEvent, ServerMessage, TurnTimings, VoiceConfig, client_message,
    server_message::Content,
};

use crate::Shared;
use crate::config::SUPPORTED_SAMPLE_RATES;
use crate::error::{Stage, TurnError};
use crate::llm::{ChatMessage, LlmPiece};
use crate::metrics::Model;
use crate::riva::AsrParams;
use crate::sentence::SentenceSplitter;
use crate::sse::ThinkFilter;

/// Messages queued for the client (per stream). Bounds memory for a slow reader.
pub const OUTBOUND_QUEUE: usize = 32;
/// Audio chunks queued for Riva ASR.
pub const ASR_AUDIO_QUEUE: usize = 32;
/// Sentences queued between the LLM reader and the TTS writer.
pub const SENTENCE_QUEUE: usize = 16;
/// Final transcripts waiting while a turn is running (the oldest is dropped beyond).
pub const PENDING_TURNS: usize = 4;

/// An outbound message tagged with its turn (0: not part of a turn, never dropped).
#[derive(Debug)]
pub struct Out {
    turn: u64,
    /// The turn's last message (its LISTENING): once the stream takes it, none of the turn is
    /// left in the queue.
    ends_turn: bool,
    msg: Result<ServerMessage, Status>,
}

/// What a session and its response stream share besides the queue.
#[derive(Debug, Default)]
pub struct OutCtl {
    /// Queued messages of turns below this one were interrupted (barge-in): dropped, not sent.
    floor: AtomicU64,
    /// The last turn whose closing message the stream has taken: a barge-in once a later turn has
    /// finished finds that turn's reply still queued, and drops it.
    taken_turn: AtomicU64,
    /// Set when the client stopped reading: the stream drops what is queued and ends with it.
    stalled: OnceLock<Status>,
}

/// The response stream: the outbound queue minus the messages of interrupted turns.
#[derive(Debug)]
pub struct OutStream {
    rx: mpsc::Receiver<Out>,
    ctl: Arc<OutCtl>,
    ended: bool,
}

impl OutStream {
    /// A stream and the queue feeding it.
    pub fn new() -> (Self, mpsc::Sender<Out>, Arc<OutCtl>) {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let ctl = Arc::new(OutCtl::default());
        (
            Self {
                rx,
                ctl: ctl.clone(),
                ended: false,
            },
            tx,
            ctl,
        )
    }
}

impl futures::Stream for OutStream {
    type Item = Result<ServerMessage, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(s) = this.ctl.stalled.get() {
            this.ended = true;
            return Poll::Ready(Some(Err(s.clone())));
        }
        loop {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(o)) => {
                    if o.turn != 0 && o.turn < this.ctl.floor.load(Ordering::Acquire) {
                        continue; // queued output of an interrupted turn
                    }
                    if o.ends_turn {
                        this.ctl.taken_turn.store(o.turn, Ordering::Release);
                    }
                    return Poll::Ready(Some(o.msg));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn event(t: EventType, message: &str) -> Content {
    Content::Event(ServerEvent {
        r#type: t as i32,
        message: message.to_string(),
    })
}

/// Why a message did not reach the outbound queue.
#[derive(Debug, PartialEq, Eq)]
enum Unsent {
    /// The response stream is gone (the client cancelled or disconnected).
    Closed,
    /// The queue stayed full for the whole stall timeout: the client reads nothing.
    Stalled,
}

/// Queues `out` for the client, waiting at most `stall` for room.
async fn enqueue(tx: &mpsc::Sender<Out>, out: Out, stall: Duration) -> Result<(), Unsent> {
    // The common case, room in the queue, takes no timer.
    match tx.try_send(out) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(Unsent::Closed),
        Err(mpsc::error::TrySendError::Full(out)) => {
            match tokio::time::timeout(stall, tx.send(out)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Unsent::Closed),
                Err(_) => Err(Unsent::Stalled),
            }
        }
    }
}

/// Sends to the client on behalf of one turn.
#[derive(Debug, Clone)]
struct Tx {
    tx: mpsc::Sender<Out>,
    turn: u64,
    stall: Duration,
}

impl Tx {
    async fn send(&self, c: Content) -> Result<(), TurnError> {
        let out = Out {
            turn: self.turn,
            ends_turn: false,
            msg: Ok(ServerMessage { content: Some(c) }),
        };
        enqueue(&self.tx, out, self.stall)
            .await
            .map_err(|e| match e {
                Unsent::Closed => TurnError::ClientGone,
                Unsent::Stalled => TurnError::ClientStalled,
            })
    }
}

/// Metric handles resolved once per session (no label lookups on the hot path).
#[derive(Debug)]
struct Handles {
    asr_latency: Histogram,
    tts_latency: Histogram,
    tts_chars: Histogram,
    llm_ttft: Histogram,
    llm_total: Histogram,
    llm_tokens: Histogram,
    e2e: Histogram,
    queue_tts: Histogram,
    queue_client: Histogram,
}

impl Handles {
    fn new(shared: &Shared, language: &str) -> Self {
        let m = &shared.metrics;
        let lang = m.language(language);
        let model = Model {
            model: shared.llm.model().to_string(),
        };
        let stage = |s| {
            m.queue_seconds
                .get_or_create(&crate::metrics::Stage { stage: s })
                .clone()
        };
        Self {
            asr_latency: m.asr_latency.get_or_create(&lang).clone(),
            tts_latency: m.tts_latency.get_or_create(&lang).clone(),
            tts_chars: m.tts_characters.get_or_create(&lang).clone(),
            llm_ttft: m.llm_ttft.get_or_create(&model).clone(),
            llm_total: m.llm_total.get_or_create(&model).clone(),
            llm_tokens: m.llm_tokens.get_or_create(&model).clone(),
            e2e: m.e2e_latency.clone(),
            queue_tts: stage("tts"),
            queue_client: stage("client"),
        }
    }
}

/// Everything a turn needs, fixed for the session.
#[derive(Debug)]
struct TurnCtx {
    shared: Arc<Shared>,
    handles: Handles,
    language: String,
    voice: String,
    timings: bool,
}

#[derive(Debug)]
struct Pending {
    text: String,
    t0: Instant,
    asr_ms: f64,
}

#[derive(Debug)]
struct Running {
    id: u64,
    handle: JoinHandle<Result<String, TurnError>>,
    user: String,
    reply: Arc<Mutex<String>>,
}

/// How a session ends.
enum End {
    /// With a gRPC status (INVALID_ARGUMENT …).
    Status(Status),
    /// With an ERROR event after a backend failure; the call itself ends OK.
    Failed(TurnError),
    /// Quietly: the client is gone.
    Quiet,
    /// The client stopped reading: the stream ends with RESOURCE_EXHAUSTED.
    Stalled,
}

type TurnResult = Result<Result<String, TurnError>, tokio::task::JoinError>;

/// What woke the session loop.
enum Ev {
    Turn(TurnResult),
    Drain,
    Asr(Option<Result<AsrEvent, Status>>),
    AsrDeadline,
    /// The audio chunk that waited for room went to Riva (or was dropped with its closed call).
    AudioSent,
    /// RIVA_TIMEOUT passed with no room for that chunk.
    AudioStalled,
    /// The response stream is gone while the client's stream was not being read.
    ClientGone,
    Client(Result<Option<ClientMessage>, Status>),
}

#[derive(Debug)]
struct AsrEvent {
    text: String,
    is_final: bool,
}

/// One open Riva `StreamingRecognize` call: the events its reader task forwards, and that task,
/// aborted on drop (which cancels the call), so a Riva that never answers or never closes
/// cannot keep a call open beyond its session.
#[derive(Debug)]
struct AsrCall {
    events: mpsc::Receiver<Result<AsrEvent, Status>>,
    task: JoinHandle<()>,
}

impl Drop for AsrCall {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps `voice_gateway_active_streams` right however the session ends.
struct ActiveGuard(Arc<Shared>);

impl ActiveGuard {
    fn new(s: &Arc<Shared>) -> Self {
        s.metrics.active_streams.inc();
        Self(s.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.metrics.active_streams.dec();
    }
}

fn malformed(s: &Status) -> Option<Status> {
    let m = s.message();
    (s.code() == tonic::Code::InvalidArgument || m.contains("decode") || m.contains("Decode"))
        .then(|| Status::invalid_argument(format!("malformed ClientMessage: {m}")))
}

/// Longest `language_code` accepted: BCP-47's recommended minimum buffer for a tag.
const MAX_LANGUAGE_CODE: usize = 35;

/// Whether a client's `language_code` looks like a BCP-47 tag (`en-US`, `zh-Hans-CN`, and
/// Riva's `multi`): a primary subtag of 2–8 letters, then `-` subtags of 1–8 letters or digits,
/// at most [`MAX_LANGUAGE_CODE`] characters. It becomes the `language` label of the ASR and TTS
/// metrics (at most [`crate::metrics::MAX_LANGUAGES`] values), so anything else is refused
/// before a series is made for it.
fn plausible_language_code(code: &str) -> bool {
    let mut subtags = code.split('-');
    let primary = subtags.next().unwrap_or_default();
    code.len() <= MAX_LANGUAGE_CODE
        && (2..=8).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && subtags
            .all(|t| (1..=8).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `code` in BCP-47's conventional case (`en-us` → `en-US`, `ZH-hans-cn` → `zh-Hans-CN`): the
/// primary subtag lower case, a 4-letter script title case, a 2-letter region upper case, the
/// rest (and everything after a one-letter extension subtag) lower case. Tags are
/// case-insensitive, so one language is one `language` label value and one tag to Riva, whose
/// model names use this case.
fn canonical_language(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut in_extension = false;
    for (i, sub) in code.split('-').enumerate() {
        if i > 0 {
            out.push('-');
        }
        let letters = sub.bytes().all(|b| b.is_ascii_alphabetic());
        if i > 0 && sub.len() == 1 {
            in_extension = true;
        }
        if i == 0 || in_extension || !letters {
            out.push_str(&sub.to_ascii_lowercase());
        } else if sub.len() == 2 {
            out.push_str(&sub.to_ascii_uppercase());
        } else if sub.len() == 4 {
            out.push_str(&sub[..1].to_ascii_uppercase());
            out.push_str(&sub[1..].to_ascii_lowercase());
        } else {
            out.push_str(&sub.to_ascii_lowercase());
        }
    }
    out
}

/// Longest client `session_id` accepted, in bytes: it is on every log line of its session.
const MAX_SESSION_ID: usize = 128;

/// The session's id: the client's, when it gave one that fits on a log line (at most
/// [`MAX_SESSION_ID`] bytes, no control characters), else a fresh one.
fn session_id(given: &str) -> Result<String, Status> {
    if given.is_empty() {
        return Ok(new_session_id());
    }
    if given.len() > MAX_SESSION_ID || given.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "session_id must be at most {MAX_SESSION_ID} bytes without control characters \
             (got {} bytes); empty means the gateway picks one",
            given.len()
        )));
    }
    Ok(given.to_string())
}

fn new_session_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("gw-{:x}-{n}", t ^ u64::from(std::process::id()) << 40)
}

/// Ends a call with `s`, its last message (a refusal, or an error of the client's).
async fn end_with(tx: &mpsc::Sender<Out>, s: Status) {
    let _ = tx
        .send(Out {
            turn: 0,
            ends_turn: false,
            msg: Err(s),
        })
        .await;
}

/// Runs one StreamAudio call to its end.
pub async fn run(
    shared: Arc<Shared>,
    mut inbound: Streaming<ClientMessage>,
    tx: mpsc::Sender<Out>,
    ctl: Arc<OutCtl>,
    permit: OwnedSemaphorePermit,
) {
    let _active = ActiveGuard::new(&shared);
    let _permit = permit;
    let first = inbound.message().await;
    let config = match first {
        Ok(Some(ClientMessage {
            content: Some(client_message::Content::Config(c)),
        })) => c,
        Ok(Some(m)) => {
            let what = match m.content {
                Some(client_message::Content::AudioChunk(_)) => "audio_chunk",
                Some(client_message::Content::TextInput(_)) => "text_input",
                Some(client_message::Content::BargeIn(_)) => "barge_in",
                _ => "an empty message",
            };
            let s = Status::invalid_argument(format!(
                "{what} before config: the first ClientMessage must be config"
            ));
            end_with(&tx, s).await;
            return;
        }
        Ok(None) => return,
        Err(s) => {
            if let Some(s) = malformed(&s) {
                end_with(&tx, s).await;
            }
            return;
        }
    };
    let id = match session_id(&config.session_id) {
        Ok(id) => id,
        Err(s) => {
            warn!(code = ?s.code(), reason = s.message(), "session refused");
            end_with(&tx, s).await;
            return;
        }
    };
    // At ERROR level, so the span (and the session_id it gives every line) exists at any
    // LOG_LEVEL that shows a session's lines: an `info` span would be filtered out at `warn`,
    // the level of the lines that matter most. None at all when even warn is off (the gateway
    // logs nothing at error level): a span entered on every poll costs CPU per turn.
    let span = if tracing::enabled!(tracing::Level::WARN) {
        tracing::error_span!("session", session_id = %id)
    } else {
        tracing::Span::none()
    };
    let session = match Session::new(shared, id, config, tx.clone(), ctl) {
        Ok(s) => s,
        Err(s) => {
            span.in_scope(|| warn!(code = ?s.code(), reason = s.message(), "session refused"));
            end_with(&tx, s).await;
            return;
        }
    };
    session.run(inbound).instrument(span).await;
}

struct Session {
    id: String,
    ctx: Arc<TurnCtx>,
    tx: mpsc::Sender<Out>,
    ctl: Arc<OutCtl>,
    sample_rate: i32,
    history: VecDeque<ChatMessage>,
    next_turn: u64,
    /// The last turn that ran to its end, while a barge-in may still drop its queued rest (0: none,
    /// or a barge-in has already dropped it).
    finished_turn: u64,
    current: Option<Running>,
    pending: VecDeque<Pending>,
    asr_audio: Option<mpsc::Sender<Bytes>>,
    /// A client audio chunk waiting for room in the ASR audio queue, and when RIVA_TIMEOUT of
    /// waiting ends. Meanwhile the client's stream is not read; everything else goes on.
    audio_waiting: Option<(Bytes, Instant)>,
    asr_call: Option<AsrCall>,
    asr_deadline: Option<Instant>,
    utterance_start: Option<Instant>,
    input_closed: bool,
    draining: bool,
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        id: String,
        c: VoiceConfig,
        tx: mpsc::Sender<Out>,
        ctl: Arc<OutCtl>,
    ) -> Result<Self, Status> {
        let cfg = &shared.config;
        let sample_rate = if c.sample_rate == 0 {
            cfg.asr_sample_rate
        } else {
            c.sample_rate
        };
        if !SUPPORTED_SAMPLE_RATES.contains(&sample_rate) {
            return Err(Status::invalid_argument(format!(
                "unsupported sample_rate {sample_rate} Hz (supported: {SUPPORTED_SAMPLE_RATES:?}; 0 means ASR_SAMPLE_RATE)"
            )));
        }
        let language = if c.language_code.is_empty() {
            canonical_language(&cfg.asr_language)
        } else if plausible_language_code(&c.language_code) {
            canonical_language(&c.language_code)
        } else {
            let shown: String = c
                .language_code
                .chars()
                .take(MAX_LANGUAGE_CODE + 1)
                .collect();
            return Err(Status::invalid_argument(format!(
                "language_code {shown:?} is not a BCP-47 tag such as en-US (2-8 letters, then \
                 -subtags of 1-8 letters or digits, at most {MAX_LANGUAGE_CODE} characters; \
                 empty means ASR_LANGUAGE)"
            )));
        };
        let voice = if c.tts_voice.is_empty() {
            cfg.tts_voice.clone()
        } else {
            c.tts_voice
        };
        let handles = Handles::new(&shared, &language);
        Ok(Self {
            id,
            ctx: Arc::new(TurnCtx {
                shared,
                handles,
                language,
                voice,
                timings: c.enable_timings,
            }),
            tx,
            ctl,
            sample_rate,
            history: VecDeque::new(),
            next_turn: 1,
            finished_turn: 0,
            current: None,
            pending: VecDeque::new(),
            asr_audio: None,
            audio_waiting: None,
            asr_call: None,
            asr_deadline: None,
            utterance_start: None,
            input_closed: false,
            draining: false,
        })
    }

    async fn send0(&self, c: Content) -> Result<(), End> {
        self.send_tagged(0, c).await
    }

    /// Queues `c` as the last message of turn `turn` (0: of none), so that a barge-in can drop it.
    async fn send_tagged(&self, turn: u64, c: Content) -> Result<(), End> {
        let out = Out {
            turn,
            ends_turn: turn != 0,
            msg: Ok(ServerMessage { content: Some(c) }),
        };
        enqueue(&self.tx, out, self.ctx.shared.config.client_stall_timeout())
            .await
            .map_err(|e| match e {
                Unsent::Closed => End::Quiet,
                Unsent::Stalled => End::Stalled,
            })
    }

    async fn run(mut self, inbound: Streaming<ClientMessage>) {
        info!(language = %self.ctx.language, sample_rate = self.sample_rate, "session started");
        let end = self.main_loop(inbound).await;
        if let Some(r) = self.current.take() {
            r.handle.abort();
        }
        match end {
            Ok(()) => info!("session ended"),
            Err(End::Quiet) => info!("client went away"),
            Err(End::Stalled) => {
                let secs = self.ctx.shared.config.client_stall_timeout;
                warn!(
                    timeout_seconds = secs,
                    "client read nothing with its queue full: ending the stream"
                );
                self.ctx.shared.metrics.client_stalls.inc();
                let _ = self.ctl.stalled.set(Status::resource_exhausted(format!(
                    "the client read nothing for CLIENT_STALL_TIMEOUT={secs} s while {OUTBOUND_QUEUE} \
                     messages waited: stream ended, queued messages dropped"
                )));
            }
            Err(End::Status(s)) => {
                warn!(code = ?s.code(), reason = s.message(), "session rejected");
                end_with(&self.tx, s).await;
            }
            Err(End::Failed(e)) => {
                let m = &self.ctx.shared.metrics;
                if let TurnError::Backend {
                    stage,
                    error_type,
                    message,
                } = &e
                {
                    m.error(*stage, error_type);
                    m.requests
                        .get_or_create(&crate::metrics::Status { status: "error" })
                        .inc();
                    warn!(%stage, error_type, reason = message, "turn failed");
                    let _ = self.send0(event(EventType::Error, &e.to_string())).await;
                }
            }
        }
    }

    async fn main_loop(&mut self, mut inbound: Streaming<ClientMessage>) -> Result<(), End> {
        self.send0(event(EventType::Listening, "Ready")).await?;
        let mut drain = self.ctx.shared.drain.clone();
        loop {
            let asr_open = self.asr_call.is_some();
            let has_turn = self.current.is_some();
            let asr_done = self.input_closed && !asr_open;
            if (self.draining || asr_done) && self.current.is_none() && self.pending.is_empty() {
                self.send0(event(EventType::EndOfTurn, "")).await?;
                return Ok(());
            }
            let deadline = self.asr_deadline;
            if self.asr_audio.is_none() {
                self.audio_waiting = None; // its call is gone, or the session drains
            }
            let audio_deadline = self.audio_waiting.as_ref().map(|w| w.1);
            let room = self.asr_audio.as_ref().filter(|_| audio_deadline.is_some());
            let waiting = &mut self.audio_waiting;
            let out = &self.tx;
            let running = self.current.as_mut().map(|r| &mut r.handle);
            let asr_call = self.asr_call.as_mut();
            let input_closed = self.input_closed;
            let draining = self.draining;
            let ev = tokio::select! {
                biased;
                r = async { running.expect("guarded").await }, if has_turn => Ev::Turn(r),
                _ = drain.wait_for(|d| *d), if !draining => Ev::Drain,
                ev = async { asr_call.expect("guarded").events.recv().await }, if asr_open => Ev::Asr(ev),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() && asr_open => Ev::AsrDeadline,
                _ = async {
                    let permit = room.expect("guarded").reserve().await;
                    if let (Ok(p), Some((chunk, _))) = (permit, waiting.take()) {
                        p.send(chunk);
                    }
                }, if room.is_some() => Ev::AudioSent,
                _ = tokio::time::sleep_until(audio_deadline.unwrap_or_else(Instant::now)),
                    if room.is_some() => Ev::AudioStalled,
                _ = out.closed(), if room.is_some() => Ev::ClientGone,
                m = inbound.message(), if !input_closed && room.is_none() => Ev::Client(m),
            };
            match ev {
                Ev::Turn(r) => self.turn_done(r).await?,
                Ev::Drain => {
                    info!("draining: finishing the current turn, then ending the stream");
                    self.draining = true;
                    self.pending.clear();
                    self.asr_audio = None;
                }
                Ev::Asr(ev) => self.on_asr(ev).await?,
                Ev::AsrDeadline => self.asr_timed_out()?,
                Ev::AudioSent => self.audio_waiting = None,
                Ev::AudioStalled => {
                    let secs = self.ctx.shared.config.riva_timeout;
                    return Err(End::Failed(TurnError::backend(
                        Stage::Asr,
                        "timeout",
                        format!("Riva ASR took no audio for RIVA_TIMEOUT={secs} s"),
                    )));
                }
                Ev::ClientGone => return Err(End::Quiet),
                Ev::Client(m) => self.on_client(m).await?,
            }
        }
    }

    async fn on_client(&mut self, m: Result<Option<ClientMessage>, Status>) -> Result<(), End> {
        let msg = match m {
            Err(s) => return Err(malformed(&s).map_or(End::Quiet, End::Status)),
            Ok(None) => {
                debug!("client closed its side");
                self.input_closed = true;
                self.asr_audio = None;
                if self.asr_call.is_some() {
                    self.asr_deadline =
                        Some(Instant::now() + self.ctx.shared.config.riva_timeout());
                }
                return Ok(());
            }
            Ok(Some(m)) => m,
        };
        use client_message::Content as C;
        match msg.content {
            None => Err(End::Status(Status::invalid_argument(
                "ClientMessage has no content (expected audio_chunk, text_input or barge_in)",
            ))),
            Some(C::Config(_)) => Err(End::Status(Status::invalid_argument(
                "config may only be sent once, as the first message",
            ))),
            Some(C::AudioChunk(audio)) => {
                if self.draining || audio.is_empty() {
                    return Ok(());
                }
                if self.asr_audio.as_ref().is_none_or(|a| a.is_closed()) && self.asr_call.is_none()
                {
                    self.open_asr();
                }
                self.utterance_start.get_or_insert_with(Instant::now);
                let Some(a) = &self.asr_audio else {
                    return Ok(());
                };
                // Bounded: with the queue full the chunk waits, and the client's stream is not
                // read until it has gone, so a slow ASR slows the reading of this client and
                // nothing piles up. One that takes no audio for RIVA_TIMEOUT has stalled (a hung
                // server stops reading once its HTTP/2 window is full). Turns, transcripts and
                // drain go on while a chunk waits.
                match a.try_send(audio) {
                    // Closed: the call has ended, and its reader reports why.
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                    Err(mpsc::error::TrySendError::Full(audio)) => {
                        let until = Instant::now() + self.ctx.shared.config.riva_timeout();
                        self.audio_waiting = Some((audio, until));
                    }
                }
                Ok(())
            }
            Some(C::TextInput(text)) => {
                if text.trim().is_empty() {
                    return Err(End::Status(Status::invalid_argument("text_input is empty")));
                }
                if !self.draining {
                    self.enqueue(Pending {
                        text,
                        t0: Instant::now(),
                        asr_ms: 0.0,
                    });
                }
                Ok(())
            }
            Some(C::BargeIn(_)) => self.barge_in().await,
        }
    }

    fn open_asr(&mut self) {
        let (atx, arx) = mpsc::channel(ASR_AUDIO_QUEUE);
        let (etx, erx) = mpsc::channel(32);
        let params = AsrParams {
            language: self.ctx.language.clone(),
            sample_rate: self.sample_rate,
            interim: self.ctx.shared.config.asr_interim_results,
        };
        let riva = self.ctx.shared.riva.clone();
        let task = tokio::spawn(
            async move {
                let mut stream = match riva.streaming_recognize(&params, arx).await {
                    Ok(s) => s,
                    Err(s) => {
                        let _ = etx.send(Err(s)).await;
                        return;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            for r in resp.results {
                                let Some(alt) = r.alternatives.into_iter().next() else {
                                    continue;
                                };
                                let ev = AsrEvent {
                                    text: alt.transcript,
                                    is_final: r.is_final,
                                };
                                if etx.send(Ok(ev)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(None) => return,
                        Err(s) => {
                            let _ = etx.send(Err(s)).await;
                            return;
                        }
                    }
                }
            }
            .in_current_span(),
        );
        self.asr_audio = Some(atx);
        self.asr_call = Some(AsrCall { events: erx, task });
    }

    /// RIVA_TIMEOUT has passed since the client's end of audio and the ASR call is still open.
    /// Speech still waiting for its final transcript is lost: a backend failure (`timeout`),
    /// like an LLM or TTS stall. With every utterance transcribed, only the close is missing:
    /// the call is dropped and the session goes on.
    fn asr_timed_out(&mut self) -> Result<(), End> {
        self.asr_call = None;
        self.asr_deadline = None;
        if self.utterance_start.is_some() {
            let secs = self.ctx.shared.config.riva_timeout;
            return Err(End::Failed(TurnError::backend(
                Stage::Asr,
                "timeout",
                format!("no final transcript within RIVA_TIMEOUT={secs} s of the end of audio"),
            )));
        }
        warn!("ASR did not close its stream after the end of audio");
        Ok(())
    }

    async fn on_asr(&mut self, ev: Option<Result<AsrEvent, Status>>) -> Result<(), End> {
        let ev = match ev {
            None => {
                self.asr_call = None;
                self.asr_audio = None;
                self.asr_deadline = None;
                return Ok(());
            }
            Some(Err(s)) => return Err(End::Failed(TurnError::from_status(Stage::Asr, &s))),
            Some(Ok(ev)) => ev,
        };
        if !ev.is_final {
            if !ev.text.is_empty() {
                self.send0(Content::TranscriptChunk(ev.text)).await?;
            }
            return Ok(());
        }
        let now = Instant::now();
        // The utterance ends either way; an empty final (noise, silence) is no transcript, and
        // its wait is not one in the ASR latency.
        let asr = self.utterance_start.take().map(|t| now - t);
        let text = ev.text.trim().to_string();
        if text.is_empty() {
            debug!("empty final transcript");
            return Ok(());
        }
        if let Some(d) = asr {
            self.ctx.handles.asr_latency.observe(d.as_secs_f64());
        }
        info!(transcript = %text, asr_ms = asr.map(|d| d.as_secs_f64() * 1e3), "final transcript");
        self.send0(Content::TranscriptChunk(text.clone())).await?;
        if !self.draining {
            self.enqueue(Pending {
                text,
                t0: now,
                asr_ms: asr.map_or(0.0, |d| d.as_secs_f64() * 1e3),
            });
        }
        Ok(())
    }

    fn enqueue(&mut self, p: Pending) {
        self.pending.push_back(p);
        if self.pending.len() > PENDING_TURNS {
            warn!("too many turns waiting; dropping the oldest");
            self.pending.pop_front();
        }
        self.maybe_start();
    }

    fn maybe_start(&mut self) {
        if self.current.is_some() || self.draining {
            return;
        }
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        let id = self.next_turn;
        self.next_turn += 1;
        let cfg = &self.ctx.shared.config;
        let mut messages = Vec::with_capacity(self.history.len() + 2);
        messages.push(ChatMessage {
            role: "system",
            content: cfg.llm_system_prompt.clone(),
        });
        messages.extend(self.history.iter().cloned());
        messages.push(ChatMessage {
            role: "user",
            content: p.text.clone(),
        });
        let reply = Arc::new(Mutex::new(String::new()));
        let tx = Tx {
            tx: self.tx.clone(),
            turn: id,
            stall: cfg.client_stall_timeout(),
        };
        let fut = run_turn(
            self.ctx.clone(),
            tx,
            messages,
            p.t0,
            p.asr_ms,
            reply.clone(),
        );
        // The JSON log shows the innermost span's fields only: the turn's carry the session_id
        // too (ERROR level, and none when warn is off, for the session span's reasons).
        let span = if tracing::enabled!(tracing::Level::WARN) {
            tracing::error_span!("turn", session_id = %self.id, turn = id)
        } else {
            tracing::Span::none()
        };
        let handle = tokio::spawn(fut.instrument(span));
        self.current = Some(Running {
            id,
            handle,
            user: p.text,
            reply,
        });
    }

    fn remember(&mut self, user: String, reply: String) {
        self.history.push_back(ChatMessage {
            role: "user",
            content: user,
        });
        if !reply.is_empty() {
            self.history.push_back(ChatMessage {
                role: "assistant",
                content: reply,
            });
        }
        let max = self.ctx.shared.config.llm_history_turns * 2;
        while self.history.len() > max {
            self.history.pop_front();
        }
    }

    async fn turn_done(&mut self, r: TurnResult) -> Result<(), End> {
        let Some(running) = self.current.take() else {
            return Ok(());
        };
        match r {
            Ok(Ok(reply)) => {
                self.ctx
                    .shared
                    .metrics
                    .requests
                    .get_or_create(&crate::metrics::Status { status: "success" })
                    .inc();
                self.remember(running.user, reply);
                self.finished_turn = running.id;
                self.send_tagged(running.id, event(EventType::Listening, ""))
                    .await?;
                self.maybe_start();
                Ok(())
            }
            Ok(Err(TurnError::ClientGone)) => Err(End::Quiet),
            Ok(Err(TurnError::ClientStalled)) => Err(End::Stalled),
            Ok(Err(e)) => Err(End::Failed(e)),
            Err(j) => Err(End::Failed(TurnError::backend(
                Stage::Llm,
                "internal",
                format!("turn task failed: {j}"),
            ))),
        }
    }

    async fn barge_in(&mut self) -> Result<(), End> {
        let Some(r) = self.current.take() else {
            return self.drop_queued_reply().await;
        };
        r.handle.abort();
        // Everything this turn (and any before it) queued for the client is dropped from here on.
        self.ctl.floor.store(r.id + 1, Ordering::Release);
        self.finished_turn = 0;
        // A barged-in turn counts as a success: no backend failed, the gateway stopped as asked.
        // (requests_total has only success/error; the seed's dashboards divide error by total.)
        let m = &self.ctx.shared.metrics;
        m.barge_ins.inc();
        m.requests
            .get_or_create(&crate::metrics::Status { status: "success" })
            .inc();
        let partial = r.reply.lock().map(|s| s.clone()).unwrap_or_default();
        info!(turn = r.id, spoken_chars = partial.len(), "barge-in");
        self.remember(r.user, partial);
        self.pending.clear();
        self.send0(event(EventType::Listening, "Interrupted"))
            .await?;
        Ok(())
    }

    /// A barge-in once the last turn has finished: its reply is all queued, and the client may
    /// not have read the end of it (a slow reader; what left the queue is the client's to stop).
    /// Its rest and its LISTENING are dropped, and LISTENING "Interrupted" follows, as for a
    /// turn in progress. The turn stays a success and its reply stays in the history whole.
    async fn drop_queued_reply(&mut self) -> Result<(), End> {
        let turn = self.finished_turn;
        if turn == 0 || self.ctl.taken_turn.load(Ordering::Acquire) >= turn {
            debug!("barge-in with no reply in progress or queued");
            return Ok(());
        }
        self.ctl.floor.store(turn + 1, Ordering::Release);
        self.finished_turn = 0;
        self.ctx.shared.metrics.barge_ins.inc();
        info!(
            turn,
            "barge-in: the rest of the finished reply dropped from the queue"
        );
        self.send0(event(EventType::Listening, "Interrupted")).await
    }
}

#[derive(Debug, Default)]
struct TtsStats {
    first_audio: Option<Instant>,
    /// First sentence's TTS request -> its first audio chunk.
    first_wait: Option<Duration>,
    last_audio: Option<Instant>,
    sentences: u32,
    bytes: u64,
}

/// The gateway's own share of the time to first audio: all of it minus the two backend waits.
fn own_ms(
    t0: Instant,
    first_audio: Option<Instant>,
    llm_wait: Option<std::time::Duration>,
    tts_wait: Option<std::time::Duration>,
) -> Option<f64> {
    let total = first_audio? - t0;
    let own = total.saturating_sub(llm_wait? + tts_wait?);
    Some(own.as_secs_f64() * 1e3)
}

fn ms(a: Instant, b: Option<Instant>) -> f64 {
    b.map_or(0.0, |b| (b - a).as_secs_f64() * 1e3)
}

/// One turn: PROCESSING, LLM text, SPEAKING, audio (pipelined), timings. LISTENING is the
/// session's to send. Returns the reply text for the history.
async fn run_turn(
    ctx: Arc<TurnCtx>,
    tx: Tx,
    messages: Vec<ChatMessage>,
    t0: Instant,
    asr_ms: f64,
    reply: Arc<Mutex<String>>,
) -> Result<String, TurnError> {
    let shared = &ctx.shared;
    let cfg = &shared.config;
    let h = &ctx.handles;
    tx.send(event(EventType::Processing, "")).await?;
    let (stx, mut srx) = mpsc::channel::<(String, Instant)>(SENTENCE_QUEUE);

    let llm_side = async {
        let stx = stx;
        let start = Instant::now();
        let mut stream = shared.llm.stream(&messages).await?;
        let mut think = ThinkFilter::default();
        let mut splitter = SentenceSplitter::new(cfg.sentence_min_chars, cfg.sentence_max_chars);
        let mut sentences = Vec::new();
        let mut first = None;
        let mut first_sentence = None;
        let mut pieces = 0u64;
        let mut usage = None;
        loop {
            let visible = match stream.next().await? {
                Some(LlmPiece::Usage(n)) => {
                    usage = Some(n);
                    continue;
                }
                Some(LlmPiece::Content(c)) => {
                    pieces += 1;
                    think.push(&c)
                }
                None => {
                    let tail = think.finish();
                    splitter.push(&tail, &mut sentences);
                    splitter.finish(&mut sentences);
                    if !sentences.is_empty() {
                        first_sentence.get_or_insert_with(Instant::now);
                    }
                    for s in sentences.drain(..) {
                        let _ = stx.send((s, Instant::now())).await;
                    }
                    if !tail.is_empty() {
                        tx.send(Content::LlmResponseChunk(tail.clone())).await?;
                        if let Ok(mut r) = reply.lock() {
                            r.push_str(&tail);
                        }
                    }
                    break;
                }
            };
            if visible.is_empty() {
                continue;
            }
            if first.is_none() {
                first = Some(Instant::now());
                h.llm_ttft.observe(start.elapsed().as_secs_f64());
            }
            splitter.push(&visible, &mut sentences);
            if !sentences.is_empty() {
                first_sentence.get_or_insert_with(Instant::now);
            }
            for s in sentences.drain(..) {
                // Bounded: if TTS is far behind, reading the LLM waits.
                let _ = stx.send((s, Instant::now())).await;
            }
            if let Ok(mut r) = reply.lock() {
                r.push_str(&visible);
            }
            tx.send(Content::LlmResponseChunk(visible)).await?;
        }
        drop(stx);
        let end = Instant::now();
        h.llm_total.observe((end - start).as_secs_f64());
        let tokens = usage.unwrap_or(pieces);
        h.llm_tokens.observe(tokens as f64);
        let llm_wait = first_sentence.map(|t| t - start);
        Ok::<_, TurnError>((first, end, tokens, llm_wait))
    };

    let tts_side = async {
        let timeout = cfg.riva_timeout();
        let rate = cfg.tts_sample_rate;
        let mut st = TtsStats::default();
        while let Some((text, queued_at)) = srx.recv().await {
            h.queue_tts.observe(queued_at.elapsed().as_secs_f64());
            let chars = text.chars().count();
            let req_at = Instant::now();
            let mut stream = tokio::time::timeout(
                timeout,
                shared
                    .riva
                    .synthesize_online(text, &ctx.language, &ctx.voice, rate),
            )
            .await
            .map_err(|_| TurnError::backend(Stage::Tts, "timeout", "TTS did not answer"))?
            .map_err(|s| TurnError::from_status(Stage::Tts, &s))?;
            let mut first = true;
            loop {
                let msg = tokio::time::timeout(timeout, stream.message())
                    .await
                    .map_err(|_| TurnError::backend(Stage::Tts, "timeout", "TTS stream stalled"))?
                    .map_err(|s| TurnError::from_status(Stage::Tts, &s))?;
                let Some(resp) = msg else { break };
                if resp.audio.is_empty() {
                    continue;
                }
                let now = Instant::now();
                if first {
                    first = false;
                    h.tts_latency.observe((now - req_at).as_secs_f64());
                }
                if st.first_audio.is_none() {
                    st.first_audio = Some(now);
                    st.first_wait = Some(now - req_at);
                    h.e2e.observe((now - t0).as_secs_f64());
                    tx.send(event(EventType::Speaking, "")).await?;
                }
                st.bytes += resp.audio.len() as u64;
                let before = Instant::now();
                tx.send(Content::AudioChunk(resp.audio)).await?;
                let after = Instant::now();
                h.queue_client.observe((after - before).as_secs_f64());
                st.last_audio = Some(after);
            }
            h.tts_chars.observe(chars as f64);
            st.sentences += 1;
        }
        Ok::<_, TurnError>(st)
    };

    let ((first_token, llm_end, tokens, llm_wait), st) = tokio::try_join!(llm_side, tts_side)?;
    if ctx.timings {
        tx.send(Content::Timings(TurnTimings {
            asr_ms,
            llm_first_token_ms: ms(t0, first_token),
            first_audio_ms: ms(t0, st.first_audio),
            llm_total_ms: ms(t0, Some(llm_end)),
            turn_total_ms: ms(t0, st.last_audio.or(Some(llm_end))),
            llm_tokens: tokens as u32,
            sentences: st.sentences,
            audio_bytes: st.bytes,
            gateway_ms: own_ms(t0, st.first_audio, llm_wait, st.first_wait),
        }))
        .await?;
    }
    let text = reply.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    fn chunk(turn: u64) -> Out {
        Out {
            turn,
            ends_turn: false,
            msg: Ok(ServerMessage {
                content: Some(event(EventType::Speaking, "")),
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_that_nobody_reads_stalls_after_the_timeout_and_no_sooner() {
        let (mut out, tx, _ctl) = OutStream::new();
        for _ in 0..OUTBOUND_QUEUE {
            enqueue(&tx, chunk(1), Duration::from_secs(30))
                .await
                .unwrap();
        }
        // Room made within the timeout: the message goes through.
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { enqueue(&tx, chunk(1), Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(out.next().await.unwrap().is_ok());
        assert_eq!(waiting.await.unwrap(), Ok(()));
        // Nobody reads: the timeout ends the wait, and only the timeout.
        let started = tokio::time::Instant::now();
        let r = enqueue(&tx, chunk(1), Duration::from_secs(30)).await;
        assert_eq!(r, Err(Unsent::Stalled));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop(out);
        assert_eq!(
            enqueue(&tx, chunk(1), Duration::from_secs(30)).await,
            Err(Unsent::Closed)
        );
    }

    #[tokio::test]
    async fn a_stalled_stream_ends_with_resource_exhausted_and_drops_what_was_queued() {
        let (mut out, tx, ctl) = OutStream::new();
        for _ in 0..3 {
            tx.try_send(chunk(1)).unwrap();
        }
        ctl.stalled
            .set(Status::resource_exhausted("client read nothing"))
            .unwrap();
        let first = out.next().await.expect("an item");
        assert_eq!(first.unwrap_err().code(), tonic::Code::ResourceExhausted);
        assert!(out.next().await.is_none(), "queued messages are dropped");
    }

    #[tokio::test]
    async fn dropping_an_asr_call_aborts_its_reader_task() {
        let (_etx, events) = mpsc::channel(1);
        let (alive, gone) = tokio::sync::oneshot::channel::<()>();
        // A reader stuck on a Riva call that never answers.
        let task = tokio::spawn(async move {
            let _alive = alive;
            std::future::pending::<()>().await
        });
        drop(AsrCall { events, task });
        let r = tokio::time::timeout(Duration::from_secs(5), gone).await;
        assert!(matches!(r, Ok(Err(_))), "the reader task outlived its call");
    }

    #[test]
    fn session_ids_fit_on_a_log_line() {
        assert_eq!(session_id("call-42").unwrap(), "call-42");
        assert!(!session_id("").unwrap().is_empty(), "a fresh one");
        assert!(session_id(&"x".repeat(MAX_SESSION_ID)).is_ok());
        for bad in [
            "x".repeat(MAX_SESSION_ID + 1),
            "a\nforged log line".into(),
            "\u{1b}[31m".into(),
        ] {
            let s = session_id(&bad).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn language_codes_must_look_like_bcp47_tags() {
        for ok in [
            "en",
            "en-US",
            "es-419",
            "zh-Hans-CN",
            "yue-HK",
            "EN-us",
            "multi",
        ] {
            assert!(plausible_language_code(ok), "{ok}");
        }
        let long = format!("en-{}", ["abcdefgh"; 4].join("-"));
        assert_eq!(long.len(), 38);
        for bad in [
            "",
            "e",
            "toolongprimary",
            "en_US",
            "en-",
            "en--US",
            "-US",
            "en-US ",
            "en-toolongtag",
            "e1-US",
            "ñe-US",
            &long,
        ] {
            assert!(!plausible_language_code(bad), "{bad}");
        }
    }

    #[test]
    fn language_codes_take_their_conventional_case() {
        for (given, canonical) in [
            ("en-US", "en-US"),
            ("en-us", "en-US"),
            ("EN-US", "en-US"),
            ("multi", "multi"),
            ("ES-419", "es-419"),
            ("zh-hans-cn", "zh-Hans-CN"),
            ("SR-LATN", "sr-Latn"),
            ("de-CH-1996", "de-CH-1996"),
            ("en-US-u-CA-gregory", "en-US-u-ca-gregory"),
            ("en-US-x-AB", "en-US-x-ab"),
        ] {
            assert_eq!(canonical_language(given), canonical, "{given}");
        }
    }

    #[test]
    fn own_share_is_first_audio_minus_backend_waits() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let own = own_ms(t0, Some(t0 + ms(30)), Some(ms(20)), Some(ms(7))).unwrap();
        assert!((own - 3.0).abs() < 1e-9, "{own}");
        // Waits measured across a clock tick can exceed the total: never negative.
        assert_eq!(
            own_ms(t0, Some(t0 + ms(5)), Some(ms(4)), Some(ms(2))),
            Some(0.0)
        );
        assert_eq!(own_ms(t0, None, Some(ms(1)), Some(ms(1))), None);
        assert_eq!(own_ms(t0, Some(t0 + ms(5)), None, Some(ms(1))), None);
    }
}
