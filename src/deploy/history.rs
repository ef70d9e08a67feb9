//! `history/<host>.jsonl`: every release published for a host, one JSON object per line,
//! appended and fsynced. A crash mid-append can leave a torn last line: reading ignores it,
//! and the next append cuts it off first. A damaged line anywhere else is refused loudly.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::DeployError;

/// The line format this code writes and reads.
pub const HISTORY_FORMAT: u32 = 1;

/// One published release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    pub format: u32,
    pub generation: u64,
    pub store_path: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// For a rollback: the generation whose system was republished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// The commit of the configuration repository the system was built from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The working tree had changes not committed (a manual deploy): the commit alone does
    /// not say what was built.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dirty: bool,
}

/// The commit a deploy was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The full commit id.
    pub id: String,
    /// Uncommitted changes were built too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dirty: bool,
}

impl Commit {
    /// `0123abcd` or `0123abcd+dirty`, for tables.
    pub fn short(&self) -> String {
        let id: String = self.id.chars().take(8).collect();
        if self.dirty {
            format!("{id}+dirty")
        } else {
            id
        }
    }
}

impl HistoryEntry {
    /// The commit the entry's system was built from, if recorded.
    pub fn source(&self) -> Option<Commit> {
        self.commit.as_ref().map(|id| Commit {
            id: id.clone(),
            dirty: self.dirty,
        })
    }
}

/// A history file's entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub entries: Vec<HistoryEntry>,
    /// A torn last line was ignored.
    pub torn_tail: bool,
}

impl History {
    pub fn max_generation(&self) -> Option<u64> {
        self.entries.iter().map(|e| e.generation).max()
    }
}

fn parse_line(line: &[u8]) -> Result<HistoryEntry, String> {
    let entry: HistoryEntry = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if entry.format != HISTORY_FORMAT {
        return Err(format!(
            "format {} is not the format {HISTORY_FORMAT} this Bento reads",
            entry.format
        ));
    }
    Ok(entry)
}

/// A damaged line of a history file: its number (from 1) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedLine {
    pub line: usize,
    pub problem: String,
}

/// Parses a history file; a damaged line that is not the unterminated last one is an error.
pub fn parse(bytes: &[u8]) -> Result<History, DamagedLine> {
    let mut history = History::default();
    let mut segments: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // After the last '\n' comes "" for a complete file, or an unterminated tail.
    let tail = segments.pop().unwrap_or_default();
    for (i, line) in segments.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        history
            .entries
            .push(parse_line(line).map_err(|problem| DamagedLine {
                line: i + 1,
                problem,
            })?);
    }
    if !tail.iter().all(u8::is_ascii_whitespace) {
        match parse_line(tail) {
            Ok(entry) => history.entries.push(entry),
            Err(_) => history.torn_tail = true,
        }
    }
    Ok(history)
}

/// Reads a host's history; empty when there is none.
pub fn read(path: &Path) -> Result<History, DeployError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(History::default()),
        Err(source) => {
            return Err(DeployError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let history = parse(&bytes).map_err(|DamagedLine { line, problem }| DeployError::History {
        path: path.to_owned(),
        line,
        problem,
    })?;
    if history.torn_tail {
        tracing::warn!(path = %path.display(), "ignoring a torn last line (an append was interrupted)");
    }
    Ok(history)
}

/// How much of the end of a history file [`read_tail`] reads.
pub const TAIL_BYTES: u64 = 64 * 1024;

/// The entries in the last [`TAIL_BYTES`] of a history file (the first, possibly cut, line
/// left out), oldest first; empty when there is none. For readers that only need recent
/// generations (`bento status`), so that a long history costs nothing per poll. Damage is
/// not an error here: a line that does not parse is skipped.
pub fn read_tail(path: &Path) -> Result<Vec<HistoryEntry>, DeployError> {
    let io = |source| DeployError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(std::io::SeekFrom::Start(start)).map_err(io)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    let mut lines = bytes.split(|b| *b == b'\n');
    if start > 0 {
        lines.next();
    }
    Ok(lines.filter_map(|l| parse_line(l).ok()).collect())
}

/// Appends one entry durably: a torn last line is cut off first, the line is written in
/// one call and fsynced, and a new file's directory is fsynced too.
pub fn append(path: &Path, entry: &HistoryEntry) -> Result<(), DeployError> {
    let io = |source| DeployError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let existed = path.exists();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    let mut line = Vec::new();
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let last_nl = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        if parse_line(&bytes[last_nl..]).is_ok() {
            // A complete entry that only lacks its newline.
            line.push(b'\n');
        } else {
            file.set_len(last_nl as u64).map_err(io)?;
        }
    }
    let mut json = serde_json::to_vec(entry).map_err(|e| io(std::io::Error::other(e)))?;
    line.append(&mut json);
    line.push(b'\n');
    file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
    file.write_all(&line).map_err(io)?;
    file.sync_all().map_err(io)?;
    if !existed {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(generation: u64) -> HistoryEntry {
        HistoryEntry {
            format: HISTORY_FORMAT,
            generation,
            store_path: format!("/nix/store/{}-sys", "a".repeat(32)),
            created: 1_790_000_000,
            rollback_of: None,
            commit: None,
            dirty: false,
        }
    }

    fn line(generation: u64) -> String {
        format!("{}\n", serde_json::to_string(&entry(generation)).unwrap())
    }

    #[test]
    fn torn_tails_are_tolerated_and_damage_elsewhere_is_not() {
        let two = format!("{}{}", line(1), line(2));
        let gens = |h: &History| h.entries.iter().map(|e| e.generation).collect::<Vec<_>>();
        // (name, file content, Ok((generations, torn tail)) or Err(damaged line))
        type Case<'a> = (&'a str, String, Result<(Vec<u64>, bool), usize>);
        let cases: Vec<Case> = vec![
            ("empty", String::new(), Ok((vec![], false))),
            ("complete", two.clone(), Ok((vec![1, 2], false))),
            (
                "torn tail",
                format!("{two}{{\"format\":1,\"gen"),
                Ok((vec![1, 2], true)),
            ),
            (
                "tail lacking only its newline",
                format!("{}{}", line(1), line(2).trim_end()),
                Ok((vec![1, 2], false)),
            ),
            (
                "blank lines",
                format!("\n{}\n", line(1)),
                Ok((vec![1], false)),
            ),
            (
                "damaged middle line",
                format!("{}garbage\n{}", line(1), line(2)),
                Err(2),
            ),
            (
                "newer format",
                line(1).replace("\"format\":1", "\"format\":2"),
                Err(1),
            ),
            ("unknown field", line(1).replace("{", "{\"x\":1,"), Err(1)),
        ];
        for (name, text, want) in cases {
            let got = parse(text.as_bytes())
                .map(|h| (gens(&h), h.torn_tail))
                .map_err(|d| d.line);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn append_repairs_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history").join("web1.jsonl");
        append(&path, &entry(1)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"format\":1,\"generation\":2,\"sto")
            .unwrap();
        drop(f);
        assert_eq!(read(&path).unwrap().entries, vec![entry(1)]);
        append(&path, &entry(2)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}{}", line(1), line(2))
        );

        // A complete last entry without its newline is kept.
        std::fs::write(&path, line(1).trim_end()).unwrap();
        append(&path, &entry(2)).unwrap();
        assert_eq!(read(&path).unwrap().entries, vec![entry(1), entry(2)]);
    }

    #[test]
    fn the_tail_holds_the_newest_entries_and_their_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web1.jsonl");
        assert!(read_tail(&path).unwrap().is_empty());
        let n = 1000;
        for g in 1..=n {
            let mut e = entry(g);
            e.commit = Some(format!("{g:040}"));
            e.dirty = g % 2 == 0;
            append(&path, &e).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() > TAIL_BYTES);
        let tail = read_tail(&path).unwrap();
        assert!(
            tail.len() > 100 && tail.len() < n as usize,
            "{}",
            tail.len()
        );
        let last = tail.last().unwrap();
        assert_eq!(last.generation, n);
        assert_eq!(
            last.source().map(|c| c.short()),
            Some("00000000+dirty".to_owned())
        );
        assert_eq!(read(&path).unwrap().entries.len(), n as usize);
    }
}
