//! What Nix means when a copy from a binary cache fails, told from its messages.
//!
//! `nix copy` and `nix-store --realise` (the agent's substitution) exit 1 whatever went
//! wrong, so the agent reads stderr: **refused** (the
//! cache served something Nix rejects: a signature, a hash, a malformed NAR or narinfo),
//! **missing** (the cache lacks a narinfo or NAR, or answered 401/403) or **transient**
//! (network, server, disk, locks, races). Anything else is unknown; the agent then checks
//! the NARs against their signed narinfos itself (`agent::nar_check`), so a tampered
//! closure is refused whatever a Nix version calls it.
//!
//! This table is the one place that knows Nix's wording. Each rule names the Nix versions
//! whose source prints it (checked against the NixOS/nix tags 2.8 to 2.35 and master, and
//! for 2.8 against real runs); the tests give one message per rule and version. Matching
//! is per line, with ANSI colours and the `error: ` / `warning: ` prefix removed, and the
//! classes are tried in the order refused, missing, transient: a refusal explains a
//! failure whatever else was printed around it.
//!
//! Pure. Imports nothing of Bento.

/// What a failed copy's messages mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// Nix rejected what the cache served: never retry blindly.
    Refused,
    /// The cache does not have a path (or would not say, 401/403): retry later.
    Missing,
    /// Network, server, disk, lock or a race: retry later.
    Transient,
}

/// How a rule looks at one line.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// The line contains this text.
    Contains(&'static str),
    /// The line starts with this text.
    Starts(&'static str),
    /// The line starts with the first text and contains the second after it.
    StartsContains(&'static str, &'static str),
    /// The line is exactly this text.
    Exactly(&'static str),
    /// The line contains both texts, the second after the first.
    Both(&'static str, &'static str),
}

impl Shape {
    fn matches(self, line: &str) -> bool {
        match self {
            Shape::Contains(s) => line.contains(s),
            Shape::Starts(s) => line.starts_with(s),
            Shape::StartsContains(a, b) => {
                line.strip_prefix(a).is_some_and(|rest| rest.contains(b))
            }
            Shape::Exactly(s) => line == s,
            Shape::Both(a, b) => line.split_once(a).is_some_and(|(_, rest)| rest.contains(b)),
        }
    }
}

/// One message of Nix: what it means, how it is recognised, and where it comes from.
#[derive(Debug, Clone, Copy)]
struct Rule {
    meaning: Meaning,
    shape: Shape,
    /// Nix versions whose source prints it, and the file it comes from.
    origin: &'static str,
    /// Another Nix process using the same local store at the same moment (a busy
    /// database, a race to initialise a fresh store): any store call, not only a copy,
    /// may fail so and succeed when run again.
    contention: bool,
}

const fn rule(meaning: Meaning, shape: Shape, origin: &'static str) -> Rule {
    Rule {
        meaning,
        shape,
        origin,
        contention: false,
    }
}

/// A transient rule that is store contention (see [`Rule::contention`]).
const fn contention(shape: Shape, origin: &'static str) -> Rule {
    Rule {
        meaning: Transient,
        shape,
        origin,
        contention: true,
    }
}

use Meaning::{Missing, Refused, Transient};
use Shape::{Both, Contains, Exactly, Starts, StartsContains};

/// The table, grouped by meaning (the order of the groups is the order of the classes).
const RULES: &[Rule] = &[
    // --- refused ---
    rule(
        Refused,
        Contains("because it lacks a valid signature"),
        "2.8.0-2.11.1, local-store.cc LocalStore::addToStore (any signed field altered, no Sig, untrusted key)",
    ),
    rule(
        Refused,
        Contains("because it lacks a signature by a trusted key"),
        "2.12.0-2.35, local-store.cc LocalStore::addToStore",
    ),
    rule(
        Refused,
        Contains("not signed by any of the keys in 'trusted-public-keys'"),
        "2.8-2.9 (`the substitute for`) and 2.10-2.35 (`ignoring substitute for`), substitution-goal.cc: a warning, then a generic failure (2.8 `nix-store --realise`: `build of '...' failed`, observed)",
    ),
    rule(
        Refused,
        Contains("hash mismatch importing path"),
        "2.8-2.35 (also `ca hash mismatch`), local-store.cc LocalStore::addToStore (observed on 2.8 for `nix copy` and `nix-store --realise`)",
    ),
    rule(
        Refused,
        Contains("size mismatch importing path"),
        "2.8-2.35, local-store.cc LocalStore::addToStore",
    ),
    rule(
        Refused,
        Starts("bad archive: "),
        "2.8-2.35, archive.cc badArchive (malformed NAR)",
    ),
    rule(
        Refused,
        Exactly("non-zero padding"),
        "2.8-2.35, serialise.cc readPadding (malformed or truncated NAR)",
    ),
    rule(
        Refused,
        Starts("NAR contains invalid"),
        "2.8-2.35, archive.cc (invalid file name; 2.25+: symlink target)",
    ),
    rule(
        Refused,
        Starts("NAR directory "),
        "2.8-2.35, archive.cc (not sorted; 2.25+: nesting too deep)",
    ),
    rule(
        Refused,
        StartsContains("NAR info file '", "' is corrupt"),
        "2.8.0-2.15.3 bare, 2.16.0-2.35 with `: <why>`, nar-info.cc NarInfo::NarInfo",
    ),
    rule(
        Refused,
        Starts("invalid character in Base64 string"),
        "2.8-2.35, util.cc base64Decode / base-n.cc (a Sig that is not base64)",
    ),
    rule(
        Refused,
        Exactly("signature is not valid"),
        "2.8-2.35, crypto.cc verifyDetached / local-keys.cc (a Sig of the wrong length)",
    ),
    rule(
        Refused,
        Exactly("signature is corrupt"),
        "2.34.0-2.35, local-keys.cc parseColonBase64 (a Sig without `name:`)",
    ),
    rule(
        Refused,
        Contains("is not in the Nix store"),
        "2.8-2.33 `path '%s'`, 2.34-2.35 `path \"%s\"`, a narinfo StorePath outside the store",
    ),
    rule(
        Refused,
        StartsContains("asked '", "' but got '"),
        "2.8-2.35, substitution-goal.cc (a narinfo naming another path)",
    ),
    rule(
        Refused,
        StartsContains("NAR for '", "' is incomplete"),
        "2.27.0-2.35, store-api.cc copyStorePath (a truncated NAR); 2.8 substitution, observed (`nix-store --realise`)",
    ),
    rule(
        Refused,
        Starts("Failed to open archive ("),
        "2.8-2.35, tarfile.cc TarArchive (a corrupt compressed NAR)",
    ),
    rule(
        Refused,
        Exactly("input compression not recognized"),
        "2.8-2.35, compression.cc (an unknown Compression:)",
    ),
    rule(
        Refused,
        Starts("error while decompressing"),
        "2.8-2.35, compression.cc (zstd, brotli, ... decoders)",
    ),
    // --- missing ---
    rule(
        Missing,
        Contains("is required, but there is no substituter that can build it"),
        "2.8-2.35, substitution-goal.cc: no narinfo for the path asked for (or 401/403)",
    ),
    rule(
        Missing,
        StartsContains("file '", "' does not exist in binary cache"),
        "2.8-2.35, local-binary-cache-store.cc / http-binary-cache-store.cc: narinfo without its NAR",
    ),
    rule(
        Missing,
        StartsContains("path '", "' is not valid"),
        "2.8-2.35, store-api.cc queryPathInfo: a dependency without narinfo (or a narinfo naming another path)",
    ),
    rule(
        Missing,
        Starts("don't know how to build these paths"),
        "2.8-2.35, shared.cc printMissing",
    ),
    // --- transient ---
    rule(
        Transient,
        StartsContains("unable to download '", "'"),
        "2.8-2.35, filetransfer.cc: HTTP status (2.8 adds the reason phrase) or curl error",
    ),
    rule(
        Transient,
        Contains("; retrying in "),
        "2.8-2.34.0 `retrying in N ms`, 2.34.1-2.35 with `(attempt i/n)`, filetransfer.cc",
    ),
    contention(
        StartsContains("SQLite database '", "' is busy"),
        "2.8-2.35, sqlite.cc",
    ),
    rule(
        Transient,
        Contains("database or disk is full"),
        "2.8-2.35, sqlite.cc (SQLite's own text)",
    ),
    rule(
        Transient,
        Contains("disk I/O error"),
        "2.8-2.35, sqlite.cc (SQLite's own text)",
    ),
    rule(
        Transient,
        Contains("No space left on device"),
        "2.8-2.33 `writing to file: `, 2.34-2.35 `write of N bytes: ` (strerror)",
    ),
    rule(Transient, Contains("Broken pipe"), "2.8-2.35 (strerror)"),
    contention(
        StartsContains("creating symlink ", "File exists"),
        "2.8.0-2.22 `from '%1%' to '%2%'`, 2.25.3-2.29 `'%1%' -> '%2%'`: fresh-store race",
    ),
    contention(
        Starts("filesystem error: cannot create symlink"),
        "2.23.0-2.25.2, libstdc++'s text from createSymlink: fresh-store race",
    ),
    contention(
        Contains("/db/schema' is corrupt"),
        "2.8.0-2.33, local-store.cc getSchema: fresh-store race",
    ),
    contention(
        Contains("/db/schema\" is corrupt"),
        "2.34.0-2.35, local-store.cc getSchema",
    ),
    rule(
        Transient,
        Exactly("not an absolute path: 'nix-archive-1'"),
        "2.8-2.34, local-store.cc addToStore: two copies of one path into one store",
    ),
    rule(
        Transient,
        Starts("waiting for the big "),
        "2.8-2.35, local-store.cc / gc.cc: the store or GC lock",
    ),
    rule(
        Transient,
        Exactly("interrupted by the user"),
        "2.8-2.35, util.cc: SIGINT/SIGTERM",
    ),
    rule(
        Transient,
        Starts("disabling binary cache '"),
        "2.8-2.35, http-binary-cache-store.cc",
    ),
    rule(
        Transient,
        Both("substituter '", "' is disabled"),
        "2.8-2.35, http-binary-cache-store.cc (on 2.8 it escapes through std::terminate, coloured)",
    ),
    rule(
        Transient,
        Contains("' was interrupted"),
        "2.8-2.35, filetransfer.cc `download of '%s' was interrupted`",
    ),
];

/// One line as the rules see it: colours and the `error: ` / `warning: ` prefix removed,
/// surrounding blanks trimmed (2.8 indents continuation lines).
fn normalise(line: &str) -> String {
    let plain = strip_colours(line);
    let mut rest = plain.trim();
    // `warning: error: unable to download ...; retrying` carries both prefixes.
    loop {
        let stripped = rest
            .strip_prefix("error: ")
            .or_else(|| rest.strip_prefix("warning: "));
        match stripped {
            Some(s) => rest = s.trim_start(),
            None => break,
        }
    }
    rest.to_owned()
}

/// `line` without its ANSI colour sequences.
fn strip_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain
}

/// The first rule of the first class that some line of `stderr` matches.
fn first_match(stderr: &str) -> Option<&'static Rule> {
    let lines: Vec<String> = stderr.lines().map(normalise).collect();
    [Refused, Missing, Transient].into_iter().find_map(|class| {
        RULES
            .iter()
            .filter(|r| r.meaning == class)
            .find(|r| lines.iter().any(|l| r.shape.matches(l)))
    })
}

/// What the messages of a failed copy mean; `None` when no rule knows them.
pub fn classify(stderr: &str) -> Option<Meaning> {
    first_match(stderr).map(|r| r.meaning)
}

/// Whether a failed store call (any, not only a copy) failed because another Nix process
/// held the same store: a busy database or a race to initialise a fresh `/nix`. Only
/// `error:` lines count: Nix prints `warning: error: SQLite database ... is busy` while it
/// waits and then goes on, so a later, real error is never taken for contention; and
/// `error (ignored): ...` (the evaluation cache) is not a failure at all.
pub fn store_contention(stderr: &str) -> bool {
    stderr
        .lines()
        .filter(|l| strip_colours(l).trim_start().starts_with("error: "))
        .map(normalise)
        .any(|l| RULES.iter().any(|r| r.contention && r.shape.matches(&l)))
}

/// Where the rule that classified `stderr` comes from (for logs and tests).
pub fn origin(stderr: &str) -> Option<&'static str> {
    first_match(stderr).map(|r| r.origin)
}

#[cfg(test)]
mod tests;
