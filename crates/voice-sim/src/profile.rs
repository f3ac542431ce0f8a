//! Latency profiles and fault injection: what makes the simulator behave like a backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latencies the simulated backends add. All deterministic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// ASR: end of an utterance in the audio → final result.
    pub asr_final_delay: Duration,
    /// LLM: request → first content token.
    pub llm_ttft: Duration,
    /// LLM: between two tokens.
    pub llm_token_delay: Duration,
    /// TTS: request → first audio chunk.
    pub tts_first_chunk: Duration,
    /// TTS: wall time per second of audio after the first chunk (real-time factor).
    pub tts_rtf: f64,
    /// TTS: audio per streamed chunk.
    pub tts_chunk: Duration,
}

impl Profile {
    /// Every latency zero: measures the gateway (and the simulator's own CPU), nothing else.
    pub const ZERO: Self = Self {
        asr_final_delay: Duration::ZERO,
        llm_ttft: Duration::ZERO,
        llm_token_delay: Duration::ZERO,
        tts_first_chunk: Duration::ZERO,
        tts_rtf: 0.0,
        tts_chunk: Duration::from_millis(200),
    };

    /// Built from the seed deployment's measurements (SYSTEM.md, "Latency references"): LLM TTFT
    /// median 49 ms, Llama-3.1-8B at ~100 tokens/s, TTS first audio 170 ms (the low end of the
    /// measured 0.17–0.52 s), FastPitch faster than real time (RTF 0.05); ASR final 100 ms after
    /// the end of speech (the rest of the seed's 0.54 s ASR median is the utterance itself).
    pub const SEED: Self = Self {
        asr_final_delay: Duration::from_millis(100),
        llm_ttft: Duration::from_millis(49),
        llm_token_delay: Duration::from_millis(10),
        tts_first_chunk: Duration::from_millis(170),
        tts_rtf: 0.05,
        tts_chunk: Duration::from_millis(200),
    };

    /// NVIDIA's voice-agent benchmark on H100s: ASR 50 ms, TTFT 100 ms, TTS first audio 80 ms.
    pub const H100: Self = Self {
        asr_final_delay: Duration::from_millis(50),
        llm_ttft: Duration::from_millis(100),
        llm_token_delay: Duration::from_millis(8),
        tts_first_chunk: Duration::from_millis(80),
        tts_rtf: 0.02,
        tts_chunk: Duration::from_millis(200),
    };

    /// Looks a profile up by name (`zero`, `seed`, `h100`).
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "zero" => Some(Self::ZERO),
            "seed" => Some(Self::SEED),
            "h100" => Some(Self::H100),
            _ => None,
        }
    }
}

/// Random faults, drawn from a seeded counter so that a run repeats exactly. Deterministic faults
/// come from trigger words in the text instead: `[asr-error]` in the speech, `[llm-error]`,
/// `[llm-stall]`, `[llm-disconnect]`, `[llm-midstream-error]` in the user's message (and
/// `[count]`, answered with the number of messages received), `[tts-error]` and `[tts-stall]`
/// in the text to synthesize (the default LLM reply repeats the user's words, so a user can
/// trigger them).
#[derive(Debug)]
pub struct Faults {
    /// Probability that a request fails at once (UNAVAILABLE / HTTP 503).
    pub error_rate: f64,
    /// Probability that a request never answers.
    pub stall_rate: f64,
    /// Probability that a streamed answer breaks off midway.
    pub disconnect_rate: f64,
    /// Probability that a TTS call never answers (no response headers, no audio), drawn per
    /// `SynthesizeOnline` call apart from the faults above, so TTS stalls while ASR and LLM work.
    pub tts_stall_rate: f64,
    /// Probability that a `StreamingRecognize` call, once it has its config, reads no more audio
    /// and answers nothing, drawn per call apart from the faults above.
    pub asr_stall_rate: f64,
    seed: u64,
    counter: AtomicU64,
}

/// The fault drawn for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    None,
    /// Fail at once.
    Error,
    /// Never answer.
    Stall,
    /// Break off midway.
    Disconnect,
}

impl Faults {
    /// Fault rates in [0, 1] and the seed of the draw.
    pub fn new(error_rate: f64, stall_rate: f64, disconnect_rate: f64, seed: u64) -> Self {
        Self {
            error_rate,
            stall_rate,
            disconnect_rate,
            tts_stall_rate: 0.0,
            asr_stall_rate: 0.0,
            seed,
            counter: AtomicU64::new(0),
        }
    }

    /// Draws whether the next TTS call stalls ([`Self::tts_stall_rate`]).
    pub fn draw_tts_stall(&self) -> bool {
        self.tts_stall_rate > 0.0 && self.uniform() < self.tts_stall_rate
    }

    /// Draws whether the next ASR call stops reading ([`Self::asr_stall_rate`]).
    pub fn draw_asr_stall(&self) -> bool {
        self.asr_stall_rate > 0.0 && self.uniform() < self.asr_stall_rate
    }

    /// The next number of the seeded draw, in [0, 1).
    fn uniform(&self) -> f64 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        (splitmix64(self.seed ^ n) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Draws the fault for the next request.
    pub fn draw(&self) -> Fault {
        if self.error_rate <= 0.0 && self.stall_rate <= 0.0 && self.disconnect_rate <= 0.0 {
            return Fault::None;
        }
        let x = self.uniform();
        if x < self.error_rate {
            Fault::Error
        } else if x < self.error_rate + self.stall_rate {
            Fault::Stall
        } else if x < self.error_rate + self.stall_rate + self.disconnect_rate {
            Fault::Disconnect
        } else {
            Fault::None
        }
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_draw_is_deterministic_and_near_rate() {
        let a = Faults::new(0.25, 0.0, 0.0, 7);
        let b = Faults::new(0.25, 0.0, 0.0, 7);
        let da: Vec<_> = (0..1000).map(|_| a.draw()).collect();
        let db: Vec<_> = (0..1000).map(|_| b.draw()).collect();
        assert_eq!(da, db);
        let errors = da.iter().filter(|f| **f == Fault::Error).count();
        assert!((200..300).contains(&errors), "{errors}");
        assert_eq!(Faults::new(0.0, 0.0, 0.0, 1).draw(), Fault::None);
    }
}
