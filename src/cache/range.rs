//! The `Range` header, decided for one resource of known length (RFC 9110 §14).
//!
//! Pure. Only single byte ranges are served (what Nix's downloader sends when it resumes);
//! a header that is not a valid `bytes=` range, or asks for several ranges, is ignored and
//! the whole resource is sent, as the RFC allows. A syntactically valid range that starts
//! past the end is unsatisfiable (416).
//!
//! Hand-written, not `headers::Range`: serving one byte range of a known length is eighty
//! lines of pure, table-tested parsing, and the typed header would add its crate family
//! while leaving the 416-or-ignore decision to us anyway.

/// What to send for a request with (or without) a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// 200 with the whole resource.
    Full,
    /// 206 with bytes `start..=end` (inclusive, as in `Content-Range`).
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

impl RangeDecision {
    /// Offset of the first byte to send and how many bytes to send, for a resource of `len`.
    pub fn span(&self, len: u64) -> (u64, u64) {
        match *self {
            RangeDecision::Full => (0, len),
            RangeDecision::Partial { start, end } => (start, end - start + 1),
            RangeDecision::Unsatisfiable => (0, 0),
        }
    }
}

/// Decides what to send given the `Range` header (if any) and the resource's length.
pub fn decide(header: Option<&[u8]>, len: u64) -> RangeDecision {
    let Some(header) = header else {
        return RangeDecision::Full;
    };
    let Ok(text) = std::str::from_utf8(header) else {
        return RangeDecision::Full;
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return RangeDecision::Full;
    };
    if spec.contains(',') {
        return RangeDecision::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => {
            let Some(n) = number(last) else {
                return RangeDecision::Full;
            };
            if n == 0 || len == 0 {
                return RangeDecision::Unsatisfiable;
            }
            RangeDecision::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            }
        }
        // `bytes=N-`: from N to the end.
        (false, true) => {
            let Some(start) = number(first) else {
                return RangeDecision::Full;
            };
            if start >= len {
                return RangeDecision::Unsatisfiable;
            }
            RangeDecision::Partial {
                start,
                end: len - 1,
            }
        }
        // `bytes=N-M`.
        (false, false) => {
            let (Some(start), Some(end)) = (number(first), number(last)) else {
                return RangeDecision::Full;
            };
            if end < start {
                return RangeDecision::Full;
            }
            if start >= len {
                return RangeDecision::Unsatisfiable;
            }
            RangeDecision::Partial {
                start,
                end: end.min(len - 1),
            }
        }
        (true, true) => RangeDecision::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeDecision::*;

    #[test]
    fn decisions() {
        let cases: &[(Option<&str>, u64, RangeDecision)] = &[
            (None, 100, Full),
            (Some("bytes=0-99"), 100, Partial { start: 0, end: 99 }),
            (Some("bytes=0-0"), 100, Partial { start: 0, end: 0 }),
            (Some("bytes=10-"), 100, Partial { start: 10, end: 99 }),
            (Some("bytes=99-"), 100, Partial { start: 99, end: 99 }),
            (Some("bytes=10-1000"), 100, Partial { start: 10, end: 99 }),
            (Some("bytes=-10"), 100, Partial { start: 90, end: 99 }),
            (Some("bytes=-1000"), 100, Partial { start: 0, end: 99 }),
            (Some(" bytes= 5 - 6 "), 100, Partial { start: 5, end: 6 }),
            // Unsatisfiable: starts at or past the end, or asks for nothing.
            (Some("bytes=100-"), 100, Unsatisfiable),
            (Some("bytes=100-200"), 100, Unsatisfiable),
            (Some("bytes=-0"), 100, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=-5"), 0, Unsatisfiable),
            // Ignored: not a single valid byte range.
            (Some("bytes=0-1,5-6"), 100, Full),
            (Some("bytes=5-1"), 100, Full),
            (Some("bytes=-"), 100, Full),
            (Some("bytes=a-b"), 100, Full),
            (Some("bytes=+1-2"), 100, Full),
            (Some("bytes=1"), 100, Full),
            (Some("items=0-1"), 100, Full),
            (Some("bytes=99999999999999999999999-"), 100, Full),
            (Some(""), 100, Full),
        ];
        for (header, len, want) in cases {
            assert_eq!(
                decide(header.map(str::as_bytes), *len),
                *want,
                "{header:?} of {len}"
            );
        }
        assert_eq!(decide(Some(b"bytes=\xff-1"), 10), Full);
    }

    #[test]
    fn spans() {
        assert_eq!(Full.span(100), (0, 100));
        assert_eq!(Partial { start: 10, end: 19 }.span(100), (10, 10));
        assert_eq!(Unsatisfiable.span(100), (0, 0));
    }
}
