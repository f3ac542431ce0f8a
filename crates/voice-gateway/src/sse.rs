//! Reading OpenAI-compatible streaming chat completions: an SSE decoder, a chunk parser and a
//! `<think>` filter, each tolerant of what real servers send (SYSTEM.md):
//!
//! - role-only and empty-`choices` chunks, the `usage` chunk (`stream_options.include_usage`);
//! - comment lines (`: keep-alive`), `\r\n` line ends, `data:` without a space, events split
//!   across reads anywhere (even inside a UTF-8 character or between `\r` and `\n`);
//! - `{"error": …}` bodies mid-stream (and bare JSON lines without `data:`);
//! - streams that end without `data: [DONE]` (the last event is flushed at EOF);
//! - reasoning in `delta.reasoning`, `delta.reasoning_content` or `<think>…</think>`: never spoken.

use serde::Deserialize;

/// Largest SSE event (its line in progress plus the data gathered so far) the decoder buffers.
/// A chat completion chunk is well under 1 KiB; a server that never ends its line or event
/// would otherwise grow the buffer without bound.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// `error_type` of an SSE event over the size limit.
pub const EVENT_TOO_LARGE: &str = "event_too_large";

/// Incremental SSE decoder: bytes in, complete `data` payloads out.
#[derive(Debug)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    max: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    /// A decoder that refuses events over `max` bytes.
    pub fn with_limit(max: usize) -> Self {
        Self {
            line: Vec::new(),
            data: String::new(),
            has_data: false,
            max,
        }
    }

    /// Feeds bytes; appends each completed event's data to `out`. `Err((EVENT_TOO_LARGE, …))`
    /// once an event in progress exceeds the limit (the decoder is then spent).
    ///
    /// Works a line at a time: a line that arrives whole in `bytes` (the usual case) is handled
    /// in place, without going through the line buffer.
    pub fn push(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<String>,
    ) -> Result<(), (&'static str, String)> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let nl = rest.iter().position(|&b| b == b'\n');
            let seg = &rest[..nl.unwrap_or(rest.len())];
            // Bytes taken from `rest` now (the line's and its `\n`): each one must find the event
            // under the limit, as if they came one by one.
            let taken = seg.len() + usize::from(nl.is_some());
            if self.line.len() + self.data.len() + taken > self.max {
                return Err((
                    EVENT_TOO_LARGE,
                    format!("LLM stream event larger than {} bytes", self.max),
                ));
            }
            let Some(i) = nl else {
                self.line.extend_from_slice(seg);
                break;
            };
            if self.line.is_empty() {
                self.line_done(strip_cr(seg), out);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(seg);
                self.line_done(strip_cr(&line), out);
                self.line = line;
                self.line.clear();
            }
            rest = &rest[i + 1..];
        }
        Ok(())
    }

    /// End of stream: the event in progress, if any (servers that close without a blank line).
    pub fn finish(&mut self, out: &mut Vec<String>) {
        let line = std::mem::take(&mut self.line);
        let line = strip_cr(&line);
        if !line.is_empty() {
            self.line_done(line, out);
        }
        self.dispatch(out);
    }

    fn dispatch(&mut self, out: &mut Vec<String>) {
        if self.has_data {
            out.push(std::mem::take(&mut self.data));
            self.has_data = false;
        }
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<String>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        if line[0] == b'{' && !self.has_data {
            // A bare JSON line (an error body on a 200, or a server that forgot `data:`).
            out.push(String::from_utf8_lossy(line).into_owned());
            return;
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push('\n');
            }
            match std::str::from_utf8(value) {
                Ok(v) => self.data.push_str(v),
                Err(_) => self.data.push_str(&String::from_utf8_lossy(value)),
            }
            self.has_data = true;
        }
        // `event:`, `id:`, `retry:` carry nothing we use.
    }
}

/// A line without its `\r` (of a `\r\n` line end).
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    message: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// One parsed SSE event of a chat completion stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChatEvent {
    /// `[DONE]`.
    pub done: bool,
    /// Text to speak (may still hold `<think>` tags: see [`ThinkFilter`]).
    pub content: Option<String>,
    /// Whether the chunk carried reasoning (dropped, never spoken).
    pub reasoning: bool,
    /// `finish_reason` of the choice.
    pub finish_reason: Option<String>,
    /// `usage.completion_tokens`.
    pub completion_tokens: Option<u64>,
}

/// Parses one event's data. `Err` carries the message of an `{"error": …}` payload or a parse
/// failure, prefixed with its kind (`api_error`, `parse`).
pub fn parse_event(data: &str) -> Result<ChatEvent, (&'static str, String)> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(ChatEvent {
            done: true,
            ..Default::default()
        });
    }
    if data.is_empty() {
        return Ok(ChatEvent::default());
    }
    let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
        (
            "parse",
            format!("unparseable stream event ({e}): {data:.200}"),
        )
    })?;
    if let Some(err) = chunk.error {
        return Err(("api_error", error_message(&err)));
    }
    let mut ev = ChatEvent {
        completion_tokens: chunk.usage.and_then(|u| u.completion_tokens),
        ..Default::default()
    };
    if let Some(choice) = chunk.choices.into_iter().next() {
        ev.finish_reason = choice.finish_reason;
        if let Some(d) = choice.delta.or(choice.message) {
            ev.reasoning = d.reasoning.is_some_and(|r| !r.is_empty())
                || d.reasoning_content.is_some_and(|r| !r.is_empty());
            ev.content = d.content.filter(|c| !c.is_empty());
        }
    }
    Ok(ev)
}

/// The human-readable message inside an OpenAI-style error value (`{"message": …}` or a string).
pub fn error_message(err: &serde_json::Value) -> String {
    match err {
        serde_json::Value::String(s) => s.clone(),
        v => v
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string()),
    }
}

/// Removes `<think>…</think>` spans from streamed text, whatever the chunking.
#[derive(Debug, Default)]
pub struct ThinkFilter {
    inside: bool,
    pending: String,
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Length of the longest suffix of `s` that is a proper prefix of `tag`.
fn partial_tag_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && s.ends_with(&tag[..n]))
        .unwrap_or(0)
}

impl ThinkFilter {
    /// Feeds text; returns what may be spoken.
    pub fn push(&mut self, text: &str) -> String {
        let mut s = std::mem::take(&mut self.pending);
        s.push_str(text);
        let mut out = String::new();
        let mut rest = s.as_str();
        loop {
            if self.inside {
                match rest.find(CLOSE) {
                    Some(i) => {
                        rest = &rest[i + CLOSE.len()..];
                        self.inside = false;
                    }
                    None => {
                        let keep = partial_tag_suffix(rest, CLOSE);
                        self.pending = rest[rest.len() - keep..].to_string();
                        return out;
                    }
                }
            } else {
                match rest.find(OPEN) {
                    Some(i) => {
                        out.push_str(&rest[..i]);
                        rest = &rest[i + OPEN.len()..];
                        self.inside = true;
                    }
                    None => {
                        let keep = partial_tag_suffix(rest, OPEN);
                        out.push_str(&rest[..rest.len() - keep]);
                        self.pending = rest[rest.len() - keep..].to_string();
                        return out;
                    }
                }
            }
        }
    }

    /// End of stream: text held back as a possible tag start is spoken after all; an unclosed
    /// `<think>` is dropped.
    pub fn finish(&mut self) -> String {
        let p = std::mem::take(&mut self.pending);
        if self.inside { String::new() } else { p }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(parts: &[&[u8]]) -> Vec<String> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for p in parts {
            d.push(p, &mut out).unwrap();
        }
        d.finish(&mut out);
        out
    }

    /// Content spoken from a whole stream, as the LLM client assembles it.
    fn spoken(parts: &[&[u8]]) -> Result<(String, Option<u64>, bool), (&'static str, String)> {
        let mut text = String::new();
        let mut think = ThinkFilter::default();
        let mut usage = None;
        let mut done = false;
        for data in decode_all(parts) {
            let ev = parse_event(&data)?;
            done |= ev.done;
            usage = ev.completion_tokens.or(usage);
            if let Some(c) = ev.content {
                text.push_str(&think.push(&c));
            }
        }
        text.push_str(&think.finish());
        Ok((text, usage, done))
    }

    const C: &str = r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;

    #[test]
    fn plain_stream() {
        let s = format!("data: {C}\n\ndata: [DONE]\n\n");
        assert_eq!(spoken(&[s.as_bytes()]).unwrap(), ("Hi".into(), None, true));
    }

    #[test]
    fn role_only_and_empty_choices_chunks() {
        let s = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n",
            "data: {\"choices\":[]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        );
        assert_eq!(spoken(&[s.as_bytes()]).unwrap().0, "ok");
    }

    #[test]
    fn usage_chunk_with_empty_choices() {
        let s = format!(
            "data: {C}\n\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":7,\"total_tokens\":16}}}}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(
            spoken(&[s.as_bytes()]).unwrap(),
            ("Hi".into(), Some(7), true)
        );
    }

    #[test]
    fn comments_crlf_and_no_space() {
        let s = format!(": keep-alive\r\n\r\ndata:{C}\r\n\r\n:another\r\ndata: [DONE]\r\n\r\n");
        assert_eq!(spoken(&[s.as_bytes()]).unwrap(), ("Hi".into(), None, true));
    }

    #[test]
    fn events_split_at_every_byte() {
        let s = format!(
            "data: {}\r\n\r\ndata: {}\n\ndata: [DONE]\n\n",
            r#"{"choices":[{"delta":{"content":"héllo "}}]}"#,
            r#"{"choices":[{"delta":{"content":"wörld"}}]}"#
        );
        let bytes = s.as_bytes();
        let parts: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(spoken(&parts).unwrap().0, "héllo wörld");
        for cut in 0..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(spoken(&[a, b]).unwrap().0, "héllo wörld", "cut at {cut}");
        }
    }

    #[test]
    fn closes_without_done_or_final_blank_line() {
        let s = format!(
            "data: {C}\n\ndata: {}",
            r#"{"choices":[{"delta":{"content":"!"}}]}"#
        );
        assert_eq!(
            spoken(&[s.as_bytes()]).unwrap(),
            ("Hi!".into(), None, false)
        );
    }

    #[test]
    fn error_mid_stream() {
        let s = format!(
            "data: {C}\n\ndata: {{\"error\":{{\"message\":\"overloaded\",\"type\":\"server_error\"}}}}\n\n"
        );
        assert_eq!(
            spoken(&[s.as_bytes()]),
            Err(("api_error", "overloaded".into()))
        );
        // A bare JSON error line without `data:` too.
        let bare = b"{\"error\":\"model not loaded\"}\n";
        assert_eq!(
            spoken(&[bare]),
            Err(("api_error", "model not loaded".into()))
        );
    }

    #[test]
    fn unparseable_event_is_an_error() {
        assert_eq!(spoken(&[b"data: {not json\n\n"]).unwrap_err().0, "parse");
    }

    #[test]
    fn reasoning_fields_are_never_spoken() {
        let s = concat!(
            "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"secret plan\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"reasoning\":\"more secrets\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Answer.\"}}]}\n\n",
        );
        assert_eq!(spoken(&[s.as_bytes()]).unwrap().0, "Answer.");
        let ev = parse_event(r#"{"choices":[{"delta":{"reasoning":"x"}}]}"#).unwrap();
        assert!(ev.reasoning && ev.content.is_none());
    }

    #[test]
    fn think_tags_split_anywhere() {
        let text = "<think>I should greet.</think>Hello there. <think>again</think>Bye.";
        for cut in 0..text.len() {
            let mut f = ThinkFilter::default();
            let mut out = f.push(&text[..cut]);
            out.push_str(&f.push(&text[cut..]));
            out.push_str(&f.finish());
            assert_eq!(out, "Hello there. Bye.", "cut at {cut}");
        }
        let mut f = ThinkFilter::default();
        let mut out = String::new();
        for c in text.chars() {
            out.push_str(&f.push(&c.to_string()));
        }
        out.push_str(&f.finish());
        assert_eq!(out, "Hello there. Bye.");
    }

    #[test]
    fn text_that_looks_like_a_tag_start_is_kept() {
        let mut f = ThinkFilter::default();
        assert_eq!(f.push("a <th"), "a ");
        assert_eq!(f.push("ing> b"), "<thing> b");
        assert_eq!(f.push(" x <"), " x ");
        assert_eq!(f.finish(), "<");
        let mut g = ThinkFilter::default();
        assert_eq!(g.push("<think>never closed"), "");
        assert_eq!(g.finish(), "");
    }

    #[test]
    fn multi_line_data_is_joined() {
        assert_eq!(
            decode_all(&[b"data: a\ndata: b\n\n"]),
            vec!["a\nb".to_string()]
        );
        assert_eq!(
            decode_all(&[b"event: x\nid: 1\nretry: 5\ndata: y\n\n"]),
            vec!["y".to_string()]
        );
    }

    #[test]
    fn event_over_the_limit_is_an_error() {
        // Just under the limit passes (line + data gathered so far).
        let mut d = SseDecoder::with_limit(64);
        let mut out = Vec::new();
        let ok = format!("data: {}\n\n", "a".repeat(50));
        d.push(ok.as_bytes(), &mut out).unwrap();
        assert_eq!(out, ["a".repeat(50)]);
        // A line that never ends.
        let mut d = SseDecoder::with_limit(64);
        let e = d.push("b".repeat(100).as_bytes(), &mut out).unwrap_err();
        assert_eq!(e.0, EVENT_TOO_LARGE);
        assert!(e.1.contains("64 bytes"), "{e:?}");
        // Many short data lines that never make an event, fed in pieces.
        let mut d = SseDecoder::with_limit(64);
        let line = b"data: xxxxxxxx\n";
        let r = (0..20).try_for_each(|_| d.push(line, &mut out));
        assert_eq!(r.unwrap_err().0, EVENT_TOO_LARGE);
        // The default limit is 1 MiB.
        let mut d = SseDecoder::default();
        let big = vec![b'c'; MAX_EVENT_BYTES - 1];
        d.push(&big, &mut out).unwrap();
        assert_eq!(d.push(b"cc", &mut out).unwrap_err().0, EVENT_TOO_LARGE);
    }
}
