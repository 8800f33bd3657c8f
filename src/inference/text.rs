//! Text helpers for the engine threads: token bytes → valid UTF-8, and stop strings.
//!
//! Pure code, kept out of `llama.rs` so it can be unit-tested without a model.

/// Reassembles UTF-8 across token boundaries: a token may end in the middle of a multi-byte
/// character, whose remaining bytes come with the next token.
#[derive(Debug, Default)]
pub(crate) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Appends bytes and returns all text that is complete. Bytes that can never be valid
    /// become U+FFFD; an incomplete sequence at the end is kept for the next call.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // Checked by from_utf8 just above.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Flushes whatever is left at the end of a generation (lossily).
    pub(crate) fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Holds back output that might be the start of a stop string until it is disambiguated.
#[derive(Debug)]
pub(crate) struct StopFilter {
    stops: Vec<String>,
    /// Tail of the output not yet emitted: the longest suffix that is a prefix of a stop.
    held: String,
}

/// What [`StopFilter::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Filtered {
    /// Text safe to emit now.
    pub(crate) emit: String,
    /// A stop string was found: `emit` ends right before it; generation must end.
    pub(crate) stopped: bool,
}

impl StopFilter {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            held: String::new(),
        }
    }

    pub(crate) fn push(&mut self, text: &str) -> Filtered {
        if self.stops.is_empty() {
            return Filtered {
                emit: text.to_owned(),
                stopped: false,
            };
        }
        self.held.push_str(text);
        // Any stop occurrence lies entirely inside `held`: its beginning was a prefix of that
        // stop when it arrived, so it was held back then.
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let emit = self.held[..at].to_owned();
            self.held.clear();
            return Filtered {
                emit,
                stopped: true,
            };
        }
        let keep_from = self.partial_stop_start();
        let emit = self.held[..keep_from].to_owned();
        self.held.drain(..keep_from);
        Filtered {
            emit,
            stopped: false,
        }
    }

    /// Start of the longest suffix of `held` that is a proper prefix of some stop string.
    fn partial_stop_start(&self) -> usize {
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }

    /// The held-back text, released when generation ends for another reason.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_pushes() {
        let bytes = "é€😀".as_bytes();
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&s.push(&[*b]));
        }
        out.push_str(&s.finish());
        assert_eq!(out, "é€😀");
    }

    #[test]
    fn utf8_invalid_bytes_are_replaced_not_held() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
        assert_eq!(s.push(&[0xe2, 0x82]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let r = f.push(p);
            out.push_str(&r.emit);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&f.finish());
        (out, false)
    }

    #[test]
    fn stop_split_over_pieces_is_excluded() {
        assert_eq!(
            run(&["###"], &["Hello #", "#", "# world"]),
            ("Hello ".into(), true)
        );
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(
            run(&["STOP"], &["ST", "ORM", " ahead"]),
            ("STORM ahead".into(), false)
        );
    }

    #[test]
    fn held_prefix_released_at_end() {
        assert_eq!(run(&["\n\n"], &["a", "\n"]), ("a\n".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(
            run(&["world", "lo w"], &["hello world"]),
            ("hel".into(), true)
        );
    }

    #[test]
    fn held_text_is_not_emitted_early() {
        let mut f = StopFilter::new(vec!["</s>".into()]);
        assert_eq!(
            f.push("abc</"),
            Filtered {
                emit: "abc".into(),
                stopped: false
            }
        );
        assert_eq!(
            f.push("x"),
            Filtered {
                emit: "</x".into(),
                stopped: false
            }
        );
    }
}
