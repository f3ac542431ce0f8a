//! The simulator's "speech": PCM that carries its own transcript.
//!
//! The simulated TTS writes each UTF-8 byte of the text into one slot of audio
//! ([`SLOT_MS`] long): a marker sample ([`MAGIC`]), a code sample, then a quiet 440 Hz tone, so the
//! audio is audible and realistically long. The simulated ASR scans samples for the marker and
//! reads the text back, byte for byte, whatever the chunking. An utterance is
//! `START, bytes…, END`; the END slot is where a real recogniser's endpointing would fire.
//!
//! ```text
//! slot:  [MAGIC][code][tone … tone]   code = START | END | 1000 + byte
//! ```

/// Length of one slot (one byte of text) in milliseconds: about the pace of speech.
pub const SLOT_MS: u32 = 60;
/// Marker sample that opens a slot; the tone never reaches this amplitude.
pub const MAGIC: i16 = 31_337;
const CODE_START: i16 = 900;
const CODE_END: i16 = 901;
const CODE_BYTE: i16 = 1000;
const TONE_AMPLITUDE: f64 = 2000.0;

/// Samples in one slot at `sample_rate`.
pub fn slot_samples(sample_rate: u32) -> usize {
    (sample_rate as usize * SLOT_MS as usize / 1000).max(3)
}

/// Encodes `text` as one utterance of 16-bit little-endian PCM.
///
/// The tone repeats every `sample_rate / gcd(sample_rate, 440)` samples (400 at 16 kHz), so one
/// period is computed and then copied: the simulator's TTS shares the cores with the gateway it
/// measures, and a `sin` per sample was most of its CPU per turn.
pub fn encode_speech(text: &str, sample_rate: u32) -> Vec<u8> {
    let slot = slot_samples(sample_rate);
    let codes = std::iter::once(CODE_START)
        .chain(text.bytes().map(|b| CODE_BYTE + i16::from(b)))
        .chain(std::iter::once(CODE_END));
    let slots = text.len() + 2;
    let tone_samples = slots * (slot - 2);
    let period = (sample_rate / gcd(sample_rate.max(1), 440)).max(1) as usize;
    let tone: Vec<[u8; 2]> = (0..period.min(tone_samples))
        .map(|t| {
            let phase = 2.0 * std::f64::consts::PI * 440.0 * t as f64 / f64::from(sample_rate);
            ((phase.sin() * TONE_AMPLITUDE) as i16).to_le_bytes()
        })
        .collect();
    let mut out = Vec::with_capacity(slots * slot * 2);
    let mut t = 0usize;
    for code in codes {
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&code.to_le_bytes());
        let mut left = slot - 2;
        while left > 0 {
            let i = t % period;
            let n = left.min(tone.len() - i);
            out.extend_from_slice(tone[i..i + n].as_flattened());
            t += n;
            left -= n;
        }
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Duration of the speech [`encode_speech`] produces for `text`.
pub fn speech_duration(text: &str) -> std::time::Duration {
    std::time::Duration::from_millis(u64::from(SLOT_MS) * (text.len() as u64 + 2))
}

/// What the decoder recognised after a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recognized {
    /// A word boundary inside an utterance: the text so far.
    Interim(String),
    /// The end of an utterance: its full text.
    Final(String),
}

/// Incremental decoder of [`encode_speech`] audio, tolerant of any chunking (odd byte counts too).
#[derive(Debug, Default)]
pub struct SpeechDecoder {
    odd_byte: Option<u8>,
    after_magic: bool,
    in_utterance: bool,
    text: Vec<u8>,
    /// Whether any marker was ever seen (otherwise the audio is foreign, e.g. a real WAV).
    pub seen_marker: bool,
}

impl SpeechDecoder {
    /// Feeds PCM bytes; returns what was recognised in them, in order.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Recognized> {
        let mut out = Vec::new();
        if let Some(lo) = self.odd_byte.take() {
            if let Some((&hi, rest)) = bytes.split_first() {
                self.sample(i16::from_le_bytes([lo, hi]), &mut out);
                bytes = rest;
            } else {
                self.odd_byte = Some(lo);
                return out;
            }
        }
        let mut pairs = bytes.chunks_exact(2);
        for p in &mut pairs {
            self.sample(i16::from_le_bytes([p[0], p[1]]), &mut out);
        }
        if let [last] = pairs.remainder() {
            self.odd_byte = Some(*last);
        }
        out
    }

    /// Text of an utterance that started but has not ended (flushed at end of input).
    pub fn pending(&self) -> Option<String> {
        (self.in_utterance && !self.text.is_empty())
            .then(|| String::from_utf8_lossy(&self.text).into_owned())
    }

    fn sample(&mut self, s: i16, out: &mut Vec<Recognized>) {
        if !self.after_magic {
            self.after_magic = s == MAGIC;
            return;
        }
        self.after_magic = false;
        self.seen_marker = true;
        match s {
            CODE_START => {
                self.in_utterance = true;
                self.text.clear();
            }
            CODE_END if self.in_utterance => {
                self.in_utterance = false;
                let text = String::from_utf8_lossy(&self.text).into_owned();
                self.text.clear();
                out.push(Recognized::Final(text));
            }
            c if self.in_utterance && (CODE_BYTE..CODE_BYTE + 256).contains(&c) => {
                let b = (c - CODE_BYTE) as u8;
                if b == b' ' && !self.text.is_empty() {
                    out.push(Recognized::Interim(
                        String::from_utf8_lossy(&self.text).into_owned(),
                    ));
                }
                self.text.push(b);
            }
            MAGIC => self.after_magic = true,
            _ => {}
        }
    }
}

/// Format of a RIFF/WAV header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavInfo {
    /// 1 = PCM, 6 = A-law, 7 = mu-law.
    pub format: u16,
    /// Channels.
    pub channels: u16,
    /// Frames per second.
    pub sample_rate: u32,
    /// Bits per sample.
    pub bits: u16,
    /// Offset of the first data byte.
    pub data_offset: usize,
    /// Length of the data chunk as declared.
    pub data_len: u32,
}

/// Parses a RIFF/WAV header at the start of `bytes` (`None` if it is not one, or is cut short).
pub fn parse_wav(bytes: &[u8]) -> Option<WavInfo> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let u16at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let mut off = 12;
    let mut fmt = None;
    while off + 8 <= bytes.len() {
        let id = &bytes[off..off + 4];
        let len = u32at(off + 4)? as usize;
        let body = off + 8;
        if id == b"fmt " {
            fmt = Some((
                u16at(body)?,
                u16at(body + 2)?,
                u32at(body + 4)?,
                u16at(body + 14)?,
            ));
        } else if id == b"data" {
            let (format, channels, sample_rate, bits) = fmt?;
            return Some(WavInfo {
                format,
                channels,
                sample_rate,
                bits,
                data_offset: body,
                data_len: len as u32,
            });
        }
        off = body + len + (len & 1);
    }
    None
}

/// A 44-byte header for mono 16-bit PCM.
pub fn wav_header(sample_rate: u32, data_len: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_len).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&1u16.to_le_bytes());
    h[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&(sample_rate * 2).to_le_bytes());
    h[32..34].copy_from_slice(&2u16.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// A complete WAV file of mono 16-bit PCM.
pub fn wav_file(sample_rate: u32, pcm: &[u8]) -> Vec<u8> {
    let mut v = wav_header(sample_rate, pcm.len() as u32).to_vec();
    v.extend_from_slice(pcm);
    v
}

/// FNV-1a, for fingerprints of foreign audio (sidecar transcripts).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_from_one_period_matches_the_formula() {
        for rate in [8_000, 16_000, 22_050, 44_100, 48_000, 7] {
            let pcm = encode_speech("abc", rate);
            let slot = slot_samples(rate);
            let mut t = 0usize;
            for (n, s) in pcm.chunks_exact(2).enumerate() {
                if n % slot < 2 {
                    continue; // marker and code
                }
                let phase = 2.0 * std::f64::consts::PI * 440.0 * t as f64 / f64::from(rate);
                let want = (phase.sin() * TONE_AMPLITUDE) as i16;
                let got = i16::from_le_bytes([s[0], s[1]]);
                assert!(
                    (got - want).abs() <= 1,
                    "rate {rate} sample {n}: {got} vs {want}"
                );
                t += 1;
            }
            assert_eq!(pcm.len(), 5 * slot * 2);
        }
    }

    #[test]
    fn round_trip_in_odd_chunks() {
        let pcm = encode_speech("hello big world", 16_000);
        let mut d = SpeechDecoder::default();
        let mut got = Vec::new();
        for chunk in pcm.chunks(333) {
            got.extend(d.push(chunk));
        }
        assert_eq!(
            got,
            vec![
                Recognized::Interim("hello".into()),
                Recognized::Interim("hello big".into()),
                Recognized::Final("hello big world".into()),
            ]
        );
        assert_eq!(pcm.len(), 17 * slot_samples(16_000) * 2);
    }

    #[test]
    fn two_utterances_and_pending() {
        let mut pcm = encode_speech("one", 8_000);
        pcm.extend(encode_speech("two", 8_000));
        let three = encode_speech("three", 8_000);
        pcm.extend_from_slice(&three[..three.len() / 2]);
        let mut d = SpeechDecoder::default();
        let got = d.push(&pcm);
        assert_eq!(
            got,
            vec![
                Recognized::Final("one".into()),
                Recognized::Final("two".into())
            ]
        );
        assert_eq!(d.pending().as_deref(), Some("thr"));
    }

    #[test]
    fn wav_header_round_trip() {
        let w = wav_file(22_050, &[1, 2, 3, 4]);
        let info = parse_wav(&w).unwrap();
        assert_eq!(info.sample_rate, 22_050);
        assert_eq!(info.data_offset, 44);
        assert_eq!(info.data_len, 4);
        assert_eq!((info.format, info.channels, info.bits), (1, 1, 16));
        assert!(parse_wav(b"not a wav file at all").is_none());
    }
}
