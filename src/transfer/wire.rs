//! The transfer's formats, written and read here only. Pure: bytes in, values out, no I/O;
//! the parsers take any bytes (the `transfer_stream` fuzz target feeds them).
//!
//! Request bodies (both endpoints): store paths, one per line.
//!
//! The closure answer, text:
//!
//! ```text
//! bento-closure 1
//! /nix/store/<hash>-<name> <file size> <nar size>      (dependencies first)
//! end <count>
//! ```
//!
//! The NAR stream, text headers around raw bytes:
//!
//! ```text
//! bento-nars 1
//! entry <narinfo length> <file length>
//! <narinfo bytes><file bytes>                           (repeated, dependencies first)
//! end <count>
//! ```
//!
//! The `end` line makes a cut-short answer distinguishable from a complete one.

use bytes::{Buf as _, Bytes, BytesMut};
use thiserror::Error;

use crate::nix::store::{self, StorePath};

const CLOSURE_MAGIC: &str = "bento-closure 1";
const NARS_MAGIC: &str = "bento-nars 1";
/// Longest header line of the NAR stream (`entry` with two 20-digit numbers fits).
const MAX_LINE: usize = 128;
/// Largest narinfo accepted (one with thousands of references fits).
pub const MAX_NARINFO: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("the transfer answer does not start with {0:?}: not a Bento transfer (or a newer one)")]
    Magic(&'static str),
    #[error("malformed transfer line {line:?}: {why}")]
    Line { line: String, why: &'static str },
    #[error("line {line} of the request is not a store path: {why}")]
    Path { line: usize, why: String },
    #[error("the request names more than {max} store paths")]
    TooMany { max: usize },
    #[error("a narinfo of {len} bytes is larger than the {max} accepted")]
    NarInfoTooLarge { len: u64, max: usize },
    #[error("an entry of {len} bytes is larger than the {max} bytes accepted")]
    FileTooLarge { len: u64, max: u64 },
    #[error("the transfer says it sent {said} entries but sent {sent}")]
    Count { said: u64, sent: u64 },
    #[error("bytes follow the end of the transfer")]
    Trailing,
    #[error("the transfer was cut short ({0})")]
    Truncated(&'static str),
}

fn bad(line: &[u8], why: &'static str) -> WireError {
    WireError::Line {
        line: String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]).into_owned(),
        why,
    }
}

/// The body naming `paths`.
pub fn encode_paths<'a>(paths: impl IntoIterator<Item = &'a StorePath>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        out.extend_from_slice(store::render(p).as_bytes());
        out.push(b'\n');
    }
    out
}

/// Parses a request body: store paths, one per line, at most `max`, duplicates dropped,
/// in the order given.
pub fn parse_paths(body: &[u8], max: usize) -> Result<Vec<StorePath>, WireError> {
    let text = std::str::from_utf8(body).map_err(|_| WireError::Path {
        line: 1 + body
            .iter()
            .take_while(|b| b.is_ascii())
            .filter(|b| **b == b'\n')
            .count(),
        why: "not UTF-8".into(),
    })?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if out.len() == max {
            return Err(WireError::TooMany { max });
        }
        let path = store::parse(line).map_err(|e| WireError::Path {
            line: i + 1,
            why: e.to_string(),
        })?;
        if seen.insert(path.clone()) {
            out.push(path);
        }
    }
    Ok(out)
}

/// The file name a narinfo's `URL` gives, when it is one the transfer writes:
/// `nar/<52 characters of nix32>.nar` or `.nar.zst`, nothing else (no directories, no
/// `..`), so that a URL can never name a file outside the staging directory.
pub fn nar_file_name(url: &str) -> Option<&str> {
    let name = url.strip_prefix("nar/")?;
    let stem = name
        .strip_suffix(".nar.zst")
        .or_else(|| name.strip_suffix(".nar"))?;
    let nix32 = |b: u8| b.is_ascii_digit() || (b.is_ascii_lowercase() && !b"eotu".contains(&b));
    (stem.len() == 52 && stem.bytes().all(nix32)).then_some(name)
}

/// One path of a closure answer: what it costs to fetch and to unpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosureEntry {
    pub path: StorePath,
    /// Bytes of the file sent (compressed NAR, or plain NAR).
    pub file_size: u64,
    /// Bytes of the NAR, what the path takes in the store, about.
    pub nar_size: u64,
}

/// Renders a closure answer.
pub fn encode_closure(entries: &[ClosureEntry]) -> Vec<u8> {
    let mut out = format!("{CLOSURE_MAGIC}\n");
    for e in entries {
        out.push_str(&format!(
            "{} {} {}\n",
            store::render(&e.path),
            e.file_size,
            e.nar_size
        ));
    }
    out.push_str(&format!("end {}\n", entries.len()));
    out.into_bytes()
}

fn number(line: &[u8], field: Option<&str>) -> Result<u64, WireError> {
    let f = field.ok_or_else(|| bad(line, "a field is missing"))?;
    if f.is_empty() || f.len() > 20 || !f.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(line, "not a decimal number"));
    }
    f.parse().map_err(|_| bad(line, "number out of range"))
}

/// Parses a closure answer (whole, with its `end` line).
pub fn parse_closure(body: &[u8]) -> Result<Vec<ClosureEntry>, WireError> {
    let mut lines = body.split(|b| *b == b'\n');
    if lines.next() != Some(CLOSURE_MAGIC.as_bytes()) {
        return Err(WireError::Magic(CLOSURE_MAGIC));
    }
    let mut out = Vec::new();
    loop {
        let Some(line) = lines.next() else {
            return Err(WireError::Truncated("no end line"));
        };
        if line.is_empty() {
            return Err(WireError::Truncated("no end line"));
        }
        let text = std::str::from_utf8(line).map_err(|_| bad(line, "not UTF-8"))?;
        let mut fields = text.split(' ');
        let first = fields.next().unwrap_or_default();
        if first == "end" {
            let said = number(line, fields.next())?;
            if fields.next().is_some() {
                return Err(bad(line, "extra fields"));
            }
            if said != out.len() as u64 {
                return Err(WireError::Count {
                    said,
                    sent: out.len() as u64,
                });
            }
            // Only the final newline may follow.
            return match (lines.next(), lines.next()) {
                (Some([]), None) => Ok(out),
                (None, _) => Err(WireError::Truncated("the end line has no newline")),
                _ => Err(WireError::Trailing),
            };
        }
        let path = store::parse(first).map_err(|_| bad(line, "not a store path"))?;
        let file_size = number(line, fields.next())?;
        let nar_size = number(line, fields.next())?;
        if fields.next().is_some() {
            return Err(bad(line, "extra fields"));
        }
        out.push(ClosureEntry {
            path,
            file_size,
            nar_size,
        });
    }
}

/// The first bytes of a NAR stream.
pub fn nars_start() -> Vec<u8> {
    format!("{NARS_MAGIC}\n").into_bytes()
}

/// The header of one entry, before its narinfo and file bytes.
pub fn entry_header(narinfo_len: usize, file_len: u64) -> Vec<u8> {
    format!("entry {narinfo_len} {file_len}\n").into_bytes()
}

/// The last bytes of a NAR stream of `count` entries.
pub fn nars_end(count: u64) -> Vec<u8> {
    format!("end {count}\n").into_bytes()
}

/// The length of a whole NAR stream of entries of these (narinfo, file) lengths.
pub fn nars_len(entries: impl IntoIterator<Item = (usize, u64)>) -> u64 {
    let mut total = nars_start().len() as u64;
    let mut count = 0u64;
    for (narinfo, file) in entries {
        total += entry_header(narinfo, file).len() as u64 + narinfo as u64 + file;
        count += 1;
    }
    total + nars_end(count).len() as u64
}

/// What the decoder found next in a NAR stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new entry: its narinfo, and how many file bytes follow.
    Entry { narinfo: Bytes, file_len: u64 },
    /// Bytes of the current entry's file, in order.
    Data(Bytes),
    /// The current entry's file is complete.
    EntryEnd,
    /// The stream ended properly.
    End { count: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Magic,
    Header,
    NarInfo { len: usize, file_len: u64 },
    File { remaining: u64 },
    Done,
}

/// An incremental reader of a NAR stream: [`Decoder::push`] bytes as they arrive, take
/// [`Decoder::next_event`] until it says it needs more, and call [`Decoder::finish`] at the end
/// of input. Holds at most one header line or one narinfo in memory, never a whole file.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    state: State,
    entries: u64,
    max_file: u64,
}

impl Decoder {
    /// A decoder accepting files of at most `max_file` bytes each.
    pub fn new(max_file: u64) -> Self {
        Decoder {
            buf: BytesMut::new(),
            state: State::Magic,
            entries: 0,
            max_file,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Entries begun so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn line(&mut self) -> Result<Option<Bytes>, WireError> {
        match self.buf.iter().position(|b| *b == b'\n') {
            Some(at) if at <= MAX_LINE => {
                let line = self.buf.split_to(at + 1).freeze();
                Ok(Some(line.slice(..at)))
            }
            Some(_) => Err(bad(&self.buf, "line too long")),
            None if self.buf.len() > MAX_LINE => Err(bad(&self.buf, "line too long")),
            None => Ok(None),
        }
    }

    /// The next event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, WireError> {
        loop {
            match self.state {
                State::Magic => {
                    // Judged on every byte that arrived, however the input is split: a
                    // prefix of the magic line waits for more, anything else is refused.
                    let want = format!("{NARS_MAGIC}\n");
                    let n = self.buf.len().min(want.len());
                    if self.buf[..n] != want.as_bytes()[..n] {
                        return Err(WireError::Magic(NARS_MAGIC));
                    }
                    if n < want.len() {
                        return Ok(None);
                    }
                    let _ = self.buf.split_to(n);
                    self.state = State::Header;
                }
                State::Header => {
                    let Some(line) = self.line()? else {
                        return Ok(None);
                    };
                    let text = std::str::from_utf8(&line).map_err(|_| bad(&line, "not UTF-8"))?;
                    let mut fields = text.split(' ');
                    match fields.next() {
                        Some("entry") => {
                            let len = number(&line, fields.next())?;
                            let file_len = number(&line, fields.next())?;
                            if fields.next().is_some() {
                                return Err(bad(&line, "extra fields"));
                            }
                            if len > MAX_NARINFO as u64 || len == 0 {
                                return Err(WireError::NarInfoTooLarge {
                                    len,
                                    max: MAX_NARINFO,
                                });
                            }
                            if file_len > self.max_file {
                                return Err(WireError::FileTooLarge {
                                    len: file_len,
                                    max: self.max_file,
                                });
                            }
                            self.state = State::NarInfo {
                                len: len as usize,
                                file_len,
                            };
                        }
                        Some("end") => {
                            let said = number(&line, fields.next())?;
                            if fields.next().is_some() {
                                return Err(bad(&line, "extra fields"));
                            }
                            if said != self.entries {
                                return Err(WireError::Count {
                                    said,
                                    sent: self.entries,
                                });
                            }
                            self.state = State::Done;
                            return Ok(Some(Event::End { count: said }));
                        }
                        _ => return Err(bad(&line, "expected `entry` or `end`")),
                    }
                }
                State::NarInfo { len, file_len } => {
                    if self.buf.len() < len {
                        return Ok(None);
                    }
                    let narinfo = self.buf.split_to(len).freeze();
                    self.entries += 1;
                    self.state = State::File {
                        remaining: file_len,
                    };
                    return Ok(Some(Event::Entry { narinfo, file_len }));
                }
                State::File { remaining: 0 } => {
                    self.state = State::Header;
                    return Ok(Some(Event::EntryEnd));
                }
                State::File { remaining } => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (remaining.min(self.buf.len() as u64)) as usize;
                    let data = self.buf.split_to(n).freeze();
                    self.state = State::File {
                        remaining: remaining - n as u64,
                    };
                    return Ok(Some(Event::Data(data)));
                }
                State::Done => {
                    if self.buf.has_remaining() {
                        return Err(WireError::Trailing);
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// At the end of input: whether the stream was complete.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.state {
            State::Done if self.buf.is_empty() => Ok(()),
            State::Done => Err(WireError::Trailing),
            State::Magic | State::Header => Err(WireError::Truncated("between entries")),
            State::NarInfo { .. } | State::File { .. } => {
                Err(WireError::Truncated("inside an entry"))
            }
        }
    }
}

/// Decodes a whole stream given in pieces (for tests and the fuzz target): the events,
/// with adjacent `Data` joined, or the first error.
pub fn decode_all<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
    max_file: u64,
) -> Result<Vec<Event>, WireError> {
    let mut d = Decoder::new(max_file);
    let mut out: Vec<Event> = Vec::new();
    for piece in pieces {
        d.push(piece);
        while let Some(e) = d.next_event()? {
            match (out.last_mut(), e) {
                (Some(Event::Data(prev)), Event::Data(more)) => {
                    let mut joined = BytesMut::from(&prev[..]);
                    joined.extend_from_slice(&more);
                    *prev = joined.freeze();
                }
                (_, e) => out.push(e),
            }
        }
    }
    d.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzz target: a stream that is not one, given whole or a byte at a
    /// time, is refused for the same reason.
    #[test]
    fn a_wrong_magic_is_refused_however_the_input_is_split() {
        let bytes: &[u8] = b"benbe7rvmx\0be7rvmx772lto-cl2llosure 1@k25xk0/\xeei1";
        let whole = decode_all([bytes], 1 << 20);
        assert_eq!(whole, Err(WireError::Magic(NARS_MAGIC)));
        let ones: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_all(ones, 1 << 20), whole);
        // A prefix of the magic line alone is a truncated stream, not a wrong one.
        let prefix = &NARS_MAGIC.as_bytes()[..3];
        assert!(matches!(
            decode_all([prefix], 1 << 20),
            Err(WireError::Truncated(_))
        ));
    }

    fn path(name: &str) -> StorePath {
        store::parse(&format!(
            "/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-{name}"
        ))
        .unwrap()
    }

    fn stream(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut out = nars_start();
        for (ni, file) in entries {
            out.extend(entry_header(ni.len(), file.len() as u64));
            out.extend(ni.as_bytes());
            out.extend(file.as_bytes());
        }
        out.extend(nars_end(entries.len() as u64));
        out
    }

    #[test]
    fn a_stream_decodes_the_same_however_it_is_split() {
        let entries = [("StorePath: a\n", "0123456789"), ("StorePath: b\n", "")];
        let bytes = stream(&entries);
        assert_eq!(
            nars_len(entries.iter().map(|(n, f)| (n.len(), f.len() as u64))),
            bytes.len() as u64
        );
        let want = vec![
            Event::Entry {
                narinfo: Bytes::from_static(b"StorePath: a\n"),
                file_len: 10,
            },
            Event::Data(Bytes::from_static(b"0123456789")),
            Event::EntryEnd,
            Event::Entry {
                narinfo: Bytes::from_static(b"StorePath: b\n"),
                file_len: 0,
            },
            Event::EntryEnd,
            Event::End { count: 2 },
        ];
        assert_eq!(decode_all([&bytes[..]], 100).unwrap(), want);
        for at in 0..bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(decode_all([a, b], 100).unwrap(), want, "split at {at}");
        }
        let ones: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_all(ones, 100).unwrap(), want);
    }

    #[test]
    fn bad_streams_are_refused() {
        let good = stream(&[("StorePath: a\n", "0123456789")]);
        let cut = |n: usize| good[..good.len() - n].to_vec();
        let with =
            |from: &str, to: &str| String::from_utf8(good.clone()).unwrap().replace(from, to);
        let cases: Vec<(Vec<u8>, WireError)> = vec![
            (cut(1), WireError::Truncated("between entries")),
            (cut(6), WireError::Truncated("between entries")),
            (cut(7), WireError::Truncated("inside an entry")),
            (good[..5].to_vec(), WireError::Truncated("between entries")),
            (b"HTTP/1.1 200".to_vec(), WireError::Magic(NARS_MAGIC)),
            ([&good[..], b"x"].concat(), WireError::Trailing),
            (
                with("end 1", "end 2").into(),
                WireError::Count { said: 2, sent: 1 },
            ),
            (
                with("entry 13 10", "entry 13 101").into(),
                WireError::FileTooLarge { len: 101, max: 100 },
            ),
            (
                with("entry 13 10", "entry 0 10").into(),
                WireError::NarInfoTooLarge {
                    len: 0,
                    max: MAX_NARINFO,
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_all([&bytes[..]], 100), Err(want), "{bytes:?}");
        }
        for text in [
            "entry 13 +10",
            "entry 13",
            "entry 13 10 1",
            "entry -1 10",
            "fin 1",
        ] {
            let s = with("entry 13 10", text);
            assert!(
                matches!(decode_all([s.as_bytes()], 100), Err(WireError::Line { .. })),
                "{text}"
            );
        }
        let long = [nars_start(), vec![b'e'; MAX_LINE + 1]].concat();
        assert!(matches!(
            decode_all([&long[..]], 100),
            Err(WireError::Line { .. })
        ));
    }

    #[test]
    fn closures_round_trip_and_bad_ones_are_refused() {
        let entries = vec![
            ClosureEntry {
                path: path("a"),
                file_size: 10,
                nar_size: 20,
            },
            ClosureEntry {
                path: path("b"),
                file_size: 0,
                nar_size: u64::MAX,
            },
        ];
        let text = encode_closure(&entries);
        assert_eq!(parse_closure(&text).unwrap(), entries);
        assert_eq!(parse_closure(&encode_closure(&[])).unwrap(), vec![]);
        let s = String::from_utf8(text).unwrap();
        type Case<'a> = (&'a str, fn(&WireError) -> bool);
        let cases: &[Case] = &[
            ("bento-closure 2\nend 0\n", |e| {
                matches!(e, WireError::Magic(_))
            }),
            (&s[..s.len() - 1], |e| matches!(e, WireError::Truncated(_))),
            (&s[..s.len() - 6], |e| matches!(e, WireError::Truncated(_))),
            ("bento-closure 1\nend 1\n", |e| {
                matches!(e, WireError::Count { said: 1, sent: 0 })
            }),
            ("bento-closure 1\nend 0\n\n", |e| *e == WireError::Trailing),
            ("bento-closure 1\n/etc/passwd 1 1\nend 1\n", |e| {
                matches!(e, WireError::Line { .. })
            }),
        ];
        for (text, ok) in cases {
            let got = parse_closure(text.as_bytes());
            assert!(got.as_ref().is_err_and(ok), "{text:?}: {got:?}");
        }
    }

    #[test]
    fn only_plain_nar_file_names_are_accepted() {
        let h = "1b9p07z77phvv2hf6gm9f28syp39f1ag2hhcqbxzn5ml2a8bg5mk";
        let good = [format!("nar/{h}.nar"), format!("nar/{h}.nar.zst")];
        for url in &good {
            assert_eq!(nar_file_name(url), url.strip_prefix("nar/"), "{url}");
        }
        let bad = [
            format!("nar/{h}.nar.xz"),
            format!("{h}.nar"),
            format!("nar/../{h}.nar"),
            format!("nar/{}.nar", &h[..51]),
            format!("nar/{}e.nar", &h[..51]),
            format!("nar/x/{h}.nar"),
            format!("/nar/{h}.nar"),
        ];
        for url in &bad {
            assert_eq!(nar_file_name(url), None, "{url}");
        }
    }

    #[test]
    fn request_bodies_name_store_paths_only() {
        let paths = vec![path("a"), path("b")];
        let body = encode_paths(&paths);
        assert_eq!(parse_paths(&body, 10).unwrap(), paths);
        let twice = [&body[..], &body[..]].concat();
        assert_eq!(
            parse_paths(&twice, 10).unwrap(),
            paths,
            "duplicates dropped"
        );
        assert_eq!(parse_paths(&body, 1), Err(WireError::TooMany { max: 1 }));
        for bad in [
            &b"/etc/passwd\n"[..],
            b"\n",
            b"\xff\n",
            b"/nix/store/../x\n",
        ] {
            assert!(
                matches!(parse_paths(bad, 10), Err(WireError::Path { .. })),
                "{bad:?}"
            );
        }
    }
}
