//! Prometheus metrics: the seed's names, types and labels exactly (SYSTEM.md), with the seed's
//! bucket bounds kept and finer low buckets added, plus what an operator needs beyond them.
//!
//! prometheus-client appends `_total` to counters itself, so counters are registered without it
//! (`voice_gateway_requests` is exposed as `voice_gateway_requests_total`); the seed's
//! `voice_gateway_llm_tokens_total` and `voice_gateway_tts_characters_total` are histograms and
//! keep their full names. A unit test checks the exposed text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `language` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Language {
    /// BCP-47 code, e.g. `en-US`.
    pub language: String,
}

/// `model` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Model {
    /// LLM model name.
    pub model: String,
}

/// `status` label of `requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    /// `success` or `error`.
    pub status: &'static str,
}

/// `error_type` label of the `*_errors_total` counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorType {
    /// Short machine-readable kind: `unavailable`, `timeout`, `http_5xx`, `stream`, …
    pub error_type: String,
}

/// `stage` label of the queue-time histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    /// `tts` (a sentence, from the LLM reader until its synthesis starts), `client` (a reply
    /// audio chunk, waiting for room in the stream's outbound queue).
    pub stage: &'static str,
}

type Ctor = fn() -> Histogram;
/// A histogram family with fixed buckets.
pub type HistFamily<L> = Family<L, Histogram, Ctor>;

/// ASR and TTS latency: seed .05 … 5 plus 1, 2.5, 5, 10, 25 ms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
];
/// LLM time to first token: seed .1 … 5 plus 1 … 50 ms.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
];
/// LLM total time: seed .5 … 30 plus 10 … 250 ms.
pub const LLM_TOTAL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
];
/// Tokens per reply: seed 10 … 2000 plus 1, 5.
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
];
/// Characters per TTS call: seed 10 … 1000 plus 1, 5.
pub const CHAR_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
/// End to end: seed .5 … 30 plus 1 … 250 ms.
pub const E2E_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
    15.0, 20.0, 30.0,
];
/// Queue time per stage: 10 µs … 5 s.
pub const QUEUE_BUCKETS: &[f64] = &[
    0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

fn family<L: Clone + std::hash::Hash + Eq>(ctor: Ctor) -> HistFamily<L> {
    Family::new_with_constructor(ctor)
}

/// Every metric of the gateway, registered in [`Metrics::registry`].
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// First audio chunk of an utterance → final transcript.
    pub asr_latency: HistFamily<Language>,
    /// LLM request → first content token.
    pub llm_ttft: HistFamily<Model>,
    /// LLM request → end of its stream.
    pub llm_total: HistFamily<Model>,
    /// Tokens per reply (the server's usage count when it sends one).
    pub llm_tokens: HistFamily<Model>,
    /// TTS request → first audio chunk, per sentence.
    pub tts_latency: HistFamily<Language>,
    /// Characters per TTS call.
    pub tts_characters: HistFamily<Language>,
    /// Final transcript (or text input) → first reply audio chunk.
    pub e2e_latency: Histogram,
    /// Turns by outcome.
    pub requests: Family<Status, Counter>,
    /// Open StreamAudio calls.
    pub active_streams: Gauge,
    /// ASR failures by kind.
    pub asr_errors: Family<ErrorType, Counter>,
    /// LLM failures by kind.
    pub llm_errors: Family<ErrorType, Counter>,
    /// TTS failures by kind.
    pub tts_errors: Family<ErrorType, Counter>,
    /// Ours: replies interrupted by the client.
    pub barge_ins: Counter,
    /// Ours: streams refused with RESOURCE_EXHAUSTED.
    pub streams_rejected: Counter,
    /// Ours: streams ended because their client read nothing for CLIENT_STALL_TIMEOUT.
    pub client_stalls: Counter,
    /// Ours: time work waits between stages.
    pub queue_seconds: HistFamily<Stage>,
    /// The `language` label values in use, at most [`MAX_LANGUAGES`].
    languages: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct `language` label values at most: each is three histograms that live as long as the
/// process, and the value comes from the client. Sessions in further languages are counted
/// under [`OTHER_LANGUAGE`].
pub const MAX_LANGUAGES: usize = 32;

/// The `language` label of sessions past [`MAX_LANGUAGES`].
pub const OTHER_LANGUAGE: &str = "other";

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The `language` label of a session in `code`: the code itself while fewer than
    /// [`MAX_LANGUAGES`] are in use (or it is one of them), [`OTHER_LANGUAGE`] after.
    pub fn language(&self, code: &str) -> Language {
        let mut known = self.languages.lock().expect("not poisoned");
        let language = if known.contains(code)
            || known.len() < MAX_LANGUAGES && known.insert(code.to_string())
        {
            code.to_string()
        } else {
            OTHER_LANGUAGE.to_string()
        };
        Language { language }
    }

    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            asr_latency: family(|| Histogram::new(LATENCY_BUCKETS.iter().copied())),
            llm_ttft: family(|| Histogram::new(TTFT_BUCKETS.iter().copied())),
            llm_total: family(|| Histogram::new(LLM_TOTAL_BUCKETS.iter().copied())),
            llm_tokens: family(|| Histogram::new(TOKEN_BUCKETS.iter().copied())),
            tts_latency: family(|| Histogram::new(LATENCY_BUCKETS.iter().copied())),
            tts_characters: family(|| Histogram::new(CHAR_BUCKETS.iter().copied())),
            e2e_latency: Histogram::new(E2E_BUCKETS.iter().copied()),
            requests: Family::default(),
            active_streams: Gauge::default(),
            asr_errors: Family::default(),
            llm_errors: Family::default(),
            tts_errors: Family::default(),
            barge_ins: Counter::default(),
            streams_rejected: Counter::default(),
            client_stalls: Counter::default(),
            queue_seconds: family(|| Histogram::new(QUEUE_BUCKETS.iter().copied())),
            languages: Default::default(),
        };
        let r = &mut m.registry;
        r.register(
            "voice_gateway_asr_latency_seconds",
            "ASR transcription latency",
            m.asr_latency.clone(),
        );
        r.register(
            "voice_gateway_llm_ttft_seconds",
            "LLM Time to First Token",
            m.llm_ttft.clone(),
        );
        r.register(
            "voice_gateway_llm_total_seconds",
            "LLM total generation time",
            m.llm_total.clone(),
        );
        r.register(
            "voice_gateway_llm_tokens_total",
            "Tokens generated per response",
            m.llm_tokens.clone(),
        );
        r.register(
            "voice_gateway_tts_latency_seconds",
            "TTS synthesis latency",
            m.tts_latency.clone(),
        );
        r.register(
            "voice_gateway_tts_characters_total",
            "Characters per TTS call",
            m.tts_characters.clone(),
        );
        r.register(
            "voice_gateway_e2e_latency_seconds",
            "End-to-end latency",
            m.e2e_latency.clone(),
        );
        r.register(
            "voice_gateway_requests",
            "Total requests (by status)",
            m.requests.clone(),
        );
        r.register(
            "voice_gateway_active_streams",
            "Current active streams",
            m.active_streams.clone(),
        );
        r.register(
            "voice_gateway_asr_errors",
            "ASR errors by type",
            m.asr_errors.clone(),
        );
        r.register(
            "voice_gateway_llm_errors",
            "LLM errors by type",
            m.llm_errors.clone(),
        );
        r.register(
            "voice_gateway_tts_errors",
            "TTS errors by type",
            m.tts_errors.clone(),
        );
        r.register(
            "voice_gateway_barge_ins",
            "Replies interrupted by the client",
            m.barge_ins.clone(),
        );
        r.register(
            "voice_gateway_streams_rejected",
            "Streams refused above MAX_CONCURRENT_STREAMS",
            m.streams_rejected.clone(),
        );
        r.register(
            "voice_gateway_client_stalls",
            "Streams ended because the client read nothing for CLIENT_STALL_TIMEOUT seconds",
            m.client_stalls.clone(),
        );
        r.register(
            "voice_gateway_stage_queue_seconds",
            "Time work waits before a stage: tts (a sentence, from the LLM reader until its synthesis starts), client (a reply audio chunk, for room in the stream's 32-message outbound queue: more than zero only once the client reads slower than the reply comes and the HTTP/2 buffers are full)",
            m.queue_seconds.clone(),
        );
        m
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// Counts a failed turn at `stage`.
    pub fn error(&self, stage: crate::error::Stage, error_type: &str) {
        let fam = match stage {
            crate::error::Stage::Asr => &self.asr_errors,
            crate::error::Stage::Llm => &self.llm_errors,
            crate::error::Stage::Tts => &self.tts_errors,
        };
        fam.get_or_create(&ErrorType {
            error_type: error_type.to_string(),
        })
        .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn type_line(text: &str, name: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("# TYPE {name} ")))
            .map(str::to_string)
    }

    #[test]
    fn exposed_names_and_types_are_the_seeds() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&Status { status: "success" })
            .inc();
        m.asr_errors
            .get_or_create(&ErrorType {
                error_type: "timeout".into(),
            })
            .inc();
        m.llm_errors
            .get_or_create(&ErrorType {
                error_type: "http_5xx".into(),
            })
            .inc();
        m.tts_errors
            .get_or_create(&ErrorType {
                error_type: "unavailable".into(),
            })
            .inc();
        m.asr_latency
            .get_or_create(&Language {
                language: "en-US".into(),
            })
            .observe(0.2);
        m.llm_ttft
            .get_or_create(&Model { model: "m".into() })
            .observe(0.05);
        m.llm_tokens
            .get_or_create(&Model { model: "m".into() })
            .observe(12.0);
        m.tts_characters
            .get_or_create(&Language {
                language: "en-US".into(),
            })
            .observe(40.0);
        m.tts_latency
            .get_or_create(&Language {
                language: "en-US".into(),
            })
            .observe(0.1);
        m.llm_total
            .get_or_create(&Model { model: "m".into() })
            .observe(1.0);
        let text = m.encode();
        for (name, ty) in [
            ("voice_gateway_asr_latency_seconds", "histogram"),
            ("voice_gateway_llm_ttft_seconds", "histogram"),
            ("voice_gateway_llm_total_seconds", "histogram"),
            ("voice_gateway_llm_tokens_total", "histogram"),
            ("voice_gateway_tts_latency_seconds", "histogram"),
            ("voice_gateway_tts_characters_total", "histogram"),
            ("voice_gateway_e2e_latency_seconds", "histogram"),
            ("voice_gateway_requests", "counter"),
            ("voice_gateway_active_streams", "gauge"),
            ("voice_gateway_asr_errors", "counter"),
            ("voice_gateway_llm_errors", "counter"),
            ("voice_gateway_tts_errors", "counter"),
        ] {
            assert_eq!(
                type_line(&text, name).as_deref(),
                Some(format!("# TYPE {name} {ty}").as_str()),
                "{text}"
            );
        }
        // What Prometheus stores: counters with _total, histograms with _bucket/_sum/_count.
        assert!(text.contains("voice_gateway_requests_total{status=\"success\"} 1"));
        assert!(text.contains("voice_gateway_asr_errors_total{error_type=\"timeout\"} 1"));
        assert!(text.contains("voice_gateway_llm_errors_total{error_type=\"http_5xx\"} 1"));
        assert!(text.contains("voice_gateway_tts_errors_total{error_type=\"unavailable\"} 1"));
        assert!(text.contains("voice_gateway_asr_latency_seconds_count{language=\"en-US\"} 1"));
        assert!(text.contains("voice_gateway_llm_ttft_seconds_bucket{le=\"0.05\",model=\"m\"} 1"));
        assert!(text.contains("voice_gateway_llm_tokens_total_count{model=\"m\"} 1"));
        assert!(text.contains("voice_gateway_tts_characters_total_sum{language=\"en-US\"} 40.0"));
        assert!(text.contains("voice_gateway_active_streams 0"));
        assert!(!text.contains("_total_total"));
    }

    #[test]
    fn language_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_LANGUAGES {
            assert_eq!(m.language(&format!("x{i:02}")).language, format!("x{i:02}"));
        }
        assert_eq!(m.language("en-US").language, OTHER_LANGUAGE, "one too many");
        assert_eq!(
            m.language("x07").language,
            "x07",
            "a known one keeps its label"
        );
    }

    #[test]
    fn seed_buckets_are_kept() {
        let seed_latency = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0];
        let seed_ttft = [0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0];
        let seed_total = [0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0];
        let seed_tokens = [10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0];
        let seed_chars = [10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
        let seed_e2e = [0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0];
        for (ours, seed) in [
            (LATENCY_BUCKETS, &seed_latency[..]),
            (TTFT_BUCKETS, &seed_ttft[..]),
            (LLM_TOTAL_BUCKETS, &seed_total[..]),
            (TOKEN_BUCKETS, &seed_tokens[..]),
            (CHAR_BUCKETS, &seed_chars[..]),
            (E2E_BUCKETS, &seed_e2e[..]),
        ] {
            for b in seed {
                assert!(ours.contains(b), "{b} missing from {ours:?}");
            }
            assert!(ours[0] < seed[0], "no finer low bucket in {ours:?}");
            assert!(ours.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
