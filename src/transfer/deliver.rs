//! The one-request form of the transfer ([`crate::transfer::DELIVER_PATH`]): the agent
//! names its release's top path and what it already holds; the cache answers with the
//! entries of the rest of the closure at once. Spread over a few connections (shards), each
//! starting its own TCP window, so a host far away gets a closure in about the round trips
//! of one GET. Pure: bytes in, values out (the `transfer_stream` fuzz target feeds the
//! parsers).
//!
//! The request, text lines then raw bytes:
//!
//! ```text
//! bento-deliver 1
//! /nix/store/<hash>-<name>          (the top path)
//! shard <i> <k>                     (this request's share: i of k, 0 <= i < k <= 16)
//! have <n>
//! <n × 5 bytes>                     (the first 5 bytes of the digest of each path held)
//! ```
//!
//! The answer: one line, then a NAR stream as [`crate::transfer::wire`] describes it,
//! of this shard's entries in dependency order:
//!
//! ```text
//! bento-deliver 1 <entries of this shard> <entries> <file bytes> <nar bytes>
//! ```
//!
//! where the last three count every shard (what the space check needs). "Held" is a hint:
//! a path left out because of it that the host turns out to lack is asked for afterwards
//! by the two-request form; 40 bits make a wrong match about one in 10^5 requests of
//! thousands of paths each.

use std::collections::HashSet;

use crate::nix::store::{self, StorePath};

use super::wire::WireError;

const MAGIC: &str = "bento-deliver 1";
/// Most shards one delivery is spread over.
pub const MAX_SHARDS: usize = 16;
/// Bytes of each "held" hint.
pub const HINT_BYTES: usize = 5;
/// Most hints one request carries.
pub const MAX_HINTS: usize = super::MAX_PATHS;

/// The hint naming `path`: the first [`HINT_BYTES`] of its digest.
pub fn hint(path: &StorePath) -> [u8; HINT_BYTES] {
    let mut out = [0u8; HINT_BYTES];
    out.copy_from_slice(&path.digest()[..HINT_BYTES]);
    out
}

/// A delivery request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub top: StorePath,
    pub shard: usize,
    pub shards: usize,
    /// Hints of the paths the host holds (or has staged).
    pub have: HashSet<[u8; HINT_BYTES]>,
}

/// The request body for `top`, shard `shard` of `shards`, holding `have`.
pub fn encode_request<'a>(
    top: &StorePath,
    shard: usize,
    shards: usize,
    have: impl IntoIterator<Item = &'a StorePath>,
) -> Vec<u8> {
    let hints: HashSet<[u8; HINT_BYTES]> = have.into_iter().map(hint).take(MAX_HINTS).collect();
    let mut out = format!(
        "{MAGIC}\n{}\nshard {shard} {shards}\nhave {}\n",
        store::render(top),
        hints.len()
    )
    .into_bytes();
    let mut sorted: Vec<_> = hints.into_iter().collect();
    sorted.sort_unstable();
    for h in sorted {
        out.extend_from_slice(&h);
    }
    out
}

/// Splits off the first line of `body` (without its newline) and the rest.
fn line(body: &[u8]) -> Result<(&str, &[u8]), WireError> {
    let end = body
        .iter()
        .take(super::MAX_REQUEST_BYTES)
        .position(|b| *b == b'\n')
        .ok_or(WireError::Truncated(
            "a line of the delivery request has no end",
        ))?;
    let text = std::str::from_utf8(&body[..end]).map_err(|_| bad(&body[..end], "not UTF-8"))?;
    Ok((text, &body[end + 1..]))
}

fn bad(line: &[u8], why: &'static str) -> WireError {
    WireError::Line {
        line: String::from_utf8_lossy(&line[..line.len().min(128)]).into_owned(),
        why,
    }
}

fn number(word: Option<&str>, line: &str, why: &'static str) -> Result<usize, WireError> {
    word.and_then(|w| w.parse::<usize>().ok())
        .ok_or_else(|| bad(line.as_bytes(), why))
}

/// Parses a delivery request.
pub fn parse_request(body: &[u8]) -> Result<Request, WireError> {
    let (magic, rest) = line(body)?;
    if magic != MAGIC {
        return Err(WireError::Magic(MAGIC));
    }
    let (top, rest) = line(rest)?;
    let top = store::parse(top).map_err(|e| WireError::Path {
        line: 2,
        why: e.to_string(),
    })?;
    let (shard_line, rest) = line(rest)?;
    let mut words = shard_line.split(' ');
    if words.next() != Some("shard") {
        return Err(bad(shard_line.as_bytes(), "expected `shard <i> <k>`"));
    }
    let shard = number(words.next(), shard_line, "the shard is not a number")?;
    let shards = number(words.next(), shard_line, "the shard count is not a number")?;
    if words.next().is_some() || shards == 0 || shards > MAX_SHARDS || shard >= shards {
        return Err(bad(
            shard_line.as_bytes(),
            "expected `shard <i> <k>` with 0 <= i < k <= 16",
        ));
    }
    let (have_line, rest) = line(rest)?;
    let count = have_line
        .strip_prefix("have ")
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| bad(have_line.as_bytes(), "expected `have <n>`"))?;
    if count > MAX_HINTS {
        return Err(WireError::TooMany { max: MAX_HINTS });
    }
    if rest.len() != count * HINT_BYTES {
        return Err(if rest.len() < count * HINT_BYTES {
            WireError::Truncated("fewer hints than announced")
        } else {
            WireError::Trailing
        });
    }
    let have = rest
        .chunks_exact(HINT_BYTES)
        .map(|c| {
            let mut h = [0u8; HINT_BYTES];
            h.copy_from_slice(c);
            h
        })
        .collect();
    Ok(Request {
        top,
        shard,
        shards,
        have,
    })
}

/// The first line of an answer: this shard's entries, then every shard's entries, file
/// bytes and NAR bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    pub shard_entries: u64,
    pub entries: u64,
    pub file_bytes: u64,
    pub nar_bytes: u64,
}

pub fn encode_head(head: &Head) -> Vec<u8> {
    format!(
        "{MAGIC} {} {} {} {}\n",
        head.shard_entries, head.entries, head.file_bytes, head.nar_bytes
    )
    .into_bytes()
}

/// The head at the start of `buf` and its length, `None` while its line is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, WireError> {
    let Some(end) = buf.iter().take(256).position(|b| *b == b'\n') else {
        if buf.len() >= 256 {
            return Err(bad(buf, "the delivery answer's first line is too long"));
        }
        return if buf.is_empty() || MAGIC.as_bytes().starts_with(&buf[..buf.len().min(15)]) {
            Ok(None)
        } else {
            Err(WireError::Magic(MAGIC))
        };
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| bad(&buf[..end], "not UTF-8"))?;
    let rest = text
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(WireError::Magic(MAGIC))?;
    let n: Vec<u64> = rest
        .split(' ')
        .map(|w| w.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad(text.as_bytes(), "expected four numbers"))?;
    let [shard_entries, entries, file_bytes, nar_bytes] = n[..] else {
        return Err(bad(text.as_bytes(), "expected four numbers"));
    };
    if shard_entries > entries {
        return Err(bad(text.as_bytes(), "a shard holds more entries than all"));
    }
    Ok(Some((
        Head {
            shard_entries,
            entries,
            file_bytes,
            nar_bytes,
        },
        end + 1,
    )))
}

/// The shard of each of `sizes` (NAR sizes, dependency order) among `shards`: each goes
/// to the shard with the fewest bytes so far (the first of equals), so every shard's
/// stream starts at once and they end together. Depends only on the sizes, which never
/// change for a path, so every request of one delivery computes the same split.
pub fn split(sizes: &[u64], shards: usize) -> Vec<usize> {
    let shards = shards.clamp(1, MAX_SHARDS);
    let mut load = vec![0u64; shards];
    sizes
        .iter()
        .map(|s| {
            let (i, _) = load
                .iter()
                .enumerate()
                .min_by_key(|(i, l)| (**l, *i))
                .unwrap_or((0, &0));
            load[i] = load[i].saturating_add((*s).max(1));
            i
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::test_path as p;

    #[test]
    fn a_request_reads_back_as_written() {
        let have = [p("a"), p("b"), p("b")];
        let body = encode_request(&p("top"), 2, 4, &have);
        let r = parse_request(&body).unwrap();
        assert_eq!((r.top, r.shard, r.shards), (p("top"), 2, 4));
        let want: HashSet<_> = [hint(&p("a")), hint(&p("b"))].into_iter().collect();
        assert_eq!(r.have, want);
        let empty = parse_request(&encode_request(&p("top"), 0, 1, &[])).unwrap();
        assert!(empty.have.is_empty());
    }

    #[test]
    fn bad_requests_are_refused() {
        let good = encode_request(&p("top"), 0, 2, &[p("a")]);
        let text = |s: &str| s.as_bytes().to_vec();
        let top = store::render(&p("top"));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "empty"),
            (text("bento-deliver 2\n"), "magic"),
            (text("bento-deliver 1\n/tmp/x\nshard 0 1\nhave 0\n"), "top"),
            (
                text(&format!("bento-deliver 1\n{top}\nshard 1 1\nhave 0\n")),
                "i >= k",
            ),
            (
                text(&format!("bento-deliver 1\n{top}\nshard 0 0\nhave 0\n")),
                "k = 0",
            ),
            (
                text(&format!("bento-deliver 1\n{top}\nshard 0 17\nhave 0\n")),
                "k > 16",
            ),
            (
                text(&format!("bento-deliver 1\n{top}\nshard 0 1 2\nhave 0\n")),
                "extra",
            ),
            (
                text(&format!("bento-deliver 1\n{top}\nshard 0 1\nhave 1\n")),
                "short",
            ),
            (
                text(&format!("bento-deliver 1\n{top}\nshard 0 1\nhave x\n")),
                "count",
            ),
            (
                text(&format!("bento-deliver 1\n{top}\nshard 0 1\nhave 0\nz")),
                "trailing",
            ),
            (
                text(&format!(
                    "bento-deliver 1\n{top}\nshard 0 1\nhave 999999999\n"
                )),
                "too many",
            ),
            (good[..good.len() - 1].to_vec(), "cut"),
        ];
        for (body, why) in cases {
            assert!(parse_request(&body).is_err(), "{why}: accepted");
        }
        assert!(parse_request(&good).is_ok());
    }

    #[test]
    fn the_head_reads_back_and_waits_for_its_line() {
        let head = Head {
            shard_entries: 3,
            entries: 10,
            file_bytes: 1234,
            nar_bytes: 99999,
        };
        let mut bytes = encode_head(&head);
        let len = bytes.len();
        bytes.extend_from_slice(b"bento-nars 1\n");
        assert_eq!(parse_head(&bytes).unwrap(), Some((head, len)));
        for cut in 0..len {
            assert_eq!(parse_head(&bytes[..cut]).unwrap(), None, "cut at {cut}");
        }
        let cases: &[&[u8]] = &[
            b"bento-nars 1\n",
            b"HTTP/1.1",
            b"bento-deliver 1 1 2 3\n",
            b"bento-deliver 1 5 2 3 4\n",
            b"bento-deliver 1 a 2 3 4\n",
            b"bento-deliver 1 1 2 3 4 5\n",
            &[b'x'; 300],
        ];
        for bad in cases {
            assert!(
                parse_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_split_balances_bytes_and_is_the_same_every_time() {
        let cases: &[(&[u64], usize, &[usize])] = &[
            (&[], 4, &[]),
            (&[10, 10, 10, 10, 10], 1, &[0, 0, 0, 0, 0]),
            (&[10, 10, 10, 10, 10], 2, &[0, 1, 0, 1, 0]),
            (&[100, 1, 1, 1, 1], 2, &[0, 1, 1, 1, 1]),
            (&[5, 0, 0], 3, &[0, 1, 2]),
            (&[1, 2, 3], 0, &[0, 0, 0]),
            (&[7], 99, &[0]),
        ];
        for (sizes, k, want) in cases {
            assert_eq!(split(sizes, *k), *want, "{sizes:?} over {k}");
        }
    }
}
