//! Incremental sentence aggregation: LLM text deltas in, sentences for TTS out, as early as is
//! safe.
//!
//! A sentence ends at `.`, `!`, `?`, `…` (and CJK `。！？`) only when the next character is known
//! and is whitespace (one character of lookahead): so `3.5`, `e.g.`, `U.S.` and `Dr. Smith`
//! (an abbreviation list, single-letter initials) do not split; a line break always ends one.
//! A sentence shorter than `min_chars` waits for the next one; text that reaches `max_chars`
//! without an end is cut at the last clause mark (`,;:`) or space before the limit; `finish`
//! flushes the rest.

/// Words whose trailing `.` is not the end of a sentence (compared lower-case).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "mt", "fig",
    "inc", "ltd", "co", "corp", "approx", "dept", "est", "no", "vol", "ca", "cf", "jan", "feb",
    "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "a.m", "p.m",
];

/// The aggregator. See the module docs.
#[derive(Debug)]
pub struct SentenceSplitter {
    buf: String,
    min_chars: usize,
    max_chars: usize,
}

fn is_terminal(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？')
}

fn is_cjk_terminal(c: char) -> bool {
    matches!(c, '。' | '！' | '？')
}

/// Whether the `.` at byte `i` of `s` follows an abbreviation or an initial.
fn dot_is_abbreviation(s: &str, i: usize) -> bool {
    let word_start = s[..i]
        .rfind(|c: char| c.is_whitespace() || c == '(' || c == '"')
        .map_or(0, |p| p + s[p..].chars().next().map_or(1, char::len_utf8));
    let word = &s[word_start..i];
    if word.is_empty() {
        return false;
    }
    let mut chars = word.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        // A single capital: an initial ("J. Smith").
        return c.is_uppercase();
    }
    let lower = word.to_lowercase();
    ABBREVIATIONS.contains(&lower.as_str())
}

impl SentenceSplitter {
    /// A splitter with the given length bounds (in characters).
    pub fn new(min_chars: usize, max_chars: usize) -> Self {
        Self {
            buf: String::new(),
            min_chars,
            max_chars: max_chars.max(min_chars + 1).max(2),
        }
    }

    /// Feeds a delta; appends completed sentences to `out`.
    pub fn push(&mut self, text: &str, out: &mut Vec<String>) {
        self.buf.push_str(text);
        loop {
            if let Some(end) = self.find_boundary() {
                self.emit(end, out);
            } else if self.buf.chars().count() > self.max_chars {
                let end = self.cut_point();
                self.emit(end, out);
            } else {
                return;
            }
        }
    }

    /// End of the reply: whatever is left.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        let rest = self.buf.trim();
        if !rest.is_empty() {
            out.push(rest.to_string());
        }
        self.buf.clear();
    }

    fn emit(&mut self, end: usize, out: &mut Vec<String>) {
        let sentence = self.buf[..end].trim();
        if !sentence.is_empty() {
            out.push(sentence.to_string());
        }
        self.buf.drain(..end);
        let lead = self.buf.len() - self.buf.trim_start().len();
        self.buf.drain(..lead);
    }

    /// Byte index just past the first acceptable sentence end, if one is certain yet.
    fn find_boundary(&self) -> Option<usize> {
        let s = self.buf.as_str();
        let mut it = s.char_indices().peekable();
        let mut chars_before = 0usize;
        while let Some((i, c)) = it.next() {
            chars_before += 1;
            let end = i + c.len_utf8();
            let long_enough = chars_before >= self.min_chars;
            if c == '\n' {
                if long_enough && !s[..i].trim().is_empty() {
                    return Some(end);
                }
                continue;
            }
            if !is_terminal(c) {
                continue;
            }
            if is_cjk_terminal(c) {
                if long_enough {
                    return Some(end);
                }
                continue;
            }
            // Lookahead: skip closing quotes/brackets, then need whitespace.
            let mut j = end;
            let mut next = None;
            for (k, n) in s[end..].char_indices() {
                if matches!(n, '"' | '\'' | ')' | ']' | '”' | '’') {
                    j = end + k + n.len_utf8();
                    continue;
                }
                next = Some(n);
                break;
            }
            let Some(next) = next else {
                return None; // not known yet: wait for more text
            };
            if !next.is_whitespace() {
                continue; // "3.5", "e.g.x", "...!" mid-token
            }
            if c == '.' && dot_is_abbreviation(s, i) {
                continue;
            }
            if long_enough {
                return Some(j);
            }
            let _ = it.peek();
        }
        None
    }

    /// Where to cut an over-long buffer: after the last clause mark or space within `max_chars`.
    fn cut_point(&self) -> usize {
        let limit = self
            .buf
            .char_indices()
            .nth(self.max_chars)
            .map_or(self.buf.len(), |(i, _)| i);
        let head = &self.buf[..limit];
        if let Some(i) = head.rfind([',', ';', ':']).filter(|&i| i > 0) {
            return i + 1;
        }
        if let Some(i) = head.rfind(char::is_whitespace).filter(|&i| i > 0) {
            return i;
        }
        limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_stream(deltas: &[&str], min: usize, max: usize) -> Vec<String> {
        let mut s = SentenceSplitter::new(min, max);
        let mut out = Vec::new();
        for d in deltas {
            s.push(d, &mut out);
        }
        s.finish(&mut out);
        out
    }

    fn split_all_ways(text: &str, min: usize, max: usize) -> Vec<String> {
        let whole = split_stream(&[text], min, max);
        // Every single-cut chunking and char-by-char give the same result.
        for (cut, _) in text.char_indices() {
            assert_eq!(
                split_stream(&[&text[..cut], &text[cut..]], min, max),
                whole,
                "cut {cut}"
            );
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split_stream(&refs, min, max), whole);
        whole
    }

    #[test]
    fn splits_on_terminal_punctuation() {
        assert_eq!(
            split_all_ways("Hello there. How are you? I am fine!", 1, 200),
            vec!["Hello there.", "How are you?", "I am fine!"]
        );
    }

    #[test]
    fn decimals_abbreviations_and_initials_do_not_split() {
        assert_eq!(
            split_all_ways(
                "It costs 3.5 dollars. Dr. Smith and J. R. Tolkien agree, e.g. today. Done.",
                1,
                200
            ),
            vec![
                "It costs 3.5 dollars.",
                "Dr. Smith and J. R. Tolkien agree, e.g. today.",
                "Done."
            ]
        );
        assert_eq!(
            split_all_ways("Version 2.0.1 is out. Yes.", 1, 200),
            vec!["Version 2.0.1 is out.", "Yes."]
        );
    }

    #[test]
    fn waits_for_lookahead_before_emitting() {
        let mut s = SentenceSplitter::new(1, 200);
        let mut out = Vec::new();
        s.push("The value is 3.", &mut out);
        assert!(
            out.is_empty(),
            "must not split before seeing what follows the dot"
        );
        s.push("5 today.", &mut out);
        assert!(out.is_empty());
        s.push(" Next", &mut out);
        assert_eq!(out, vec!["The value is 3.5 today."]);
    }

    #[test]
    fn quotes_and_ellipsis() {
        assert_eq!(
            split_all_ways("He said \"stop.\" Then... nothing happened. Right?", 1, 200),
            vec![
                "He said \"stop.\"",
                "Then...",
                "nothing happened.",
                "Right?"
            ]
        );
    }

    #[test]
    fn minimum_length_merges_short_sentences() {
        assert_eq!(
            split_all_ways("Yes. Ok. That is a longer one. No.", 10, 200),
            vec!["Yes. Ok. That is a longer one.", "No."]
        );
    }

    #[test]
    fn maximum_length_cuts_at_clause_or_space() {
        let out = split_all_ways(
            "one two three, four five six seven eight nine ten eleven",
            1,
            20,
        );
        assert_eq!(out[0], "one two three,");
        assert!(out.iter().all(|s| s.chars().count() <= 20), "{out:?}");
        assert_eq!(
            out.join(" "),
            "one two three, four five six seven eight nine ten eleven"
        );
        let hard = split_all_ways("abcdefghijklmnopqrstuvwxyz", 1, 10);
        assert_eq!(hard, vec!["abcdefghij", "klmnopqrst", "uvwxyz"]);
    }

    #[test]
    fn newlines_and_flush_at_end() {
        assert_eq!(
            split_all_ways("First line\nSecond line without a stop", 1, 200),
            vec!["First line", "Second line without a stop"]
        );
        assert_eq!(split_all_ways("   ", 1, 200), Vec::<String>::new());
        assert_eq!(
            split_all_ways("ends with a dot.", 1, 200),
            vec!["ends with a dot."]
        );
    }

    #[test]
    fn unicode_is_safe() {
        assert_eq!(
            split_all_ways("Ça va? Très bien… merci. 你好。再见！", 1, 200),
            vec!["Ça va?", "Très bien…", "merci.", "你好。", "再见！"]
        );
    }
}
