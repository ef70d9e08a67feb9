//! A failed copy that Nix did not explain as a refusal, checked by the agent itself: is
//! what the cache serves what the fleet key signed?
//!
//! Nix's words for a tampered NAR change between versions, and some versions give none
//! (a truncated NAR makes Nix 2.8 print `basic_string::_M_create`). So, when
//! `nix::messages` does not call a failed copy a refusal or a network fault, the agent
//! asks the cache for the closure's narinfos (`nix path-info --store <cache>`), checks each
//! one's signature by the fleet key, and streams the NAR of every path still missing here
//! (`nix store dump-path --store <cache>`, decompressed by Nix, hashed here) against the
//! signed NarHash and NarSize. The paths Nix was copying when it failed go first. A
//! mismatch is tampering, refused on every Nix version; a check that cannot finish leaves
//! the copy failed (tried again).

use std::collections::BTreeSet;

use sha2::Digest as _;

use super::children;
use super::config::Agent;
use super::system::{cache_options, push_line};
use crate::nix::cmd::{self, Command};
use crate::nix::hash::Sha256Hash;
use crate::nix::narinfo;
use crate::nix::pathinfo::{self, PathInfo};
use crate::nix::store;

/// Most NARs fetched again by one check.
const MAX_NARS: usize = 64;

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The cache serves something the fleet key did not sign: why.
    Tampered(String),
    /// Every narinfo is signed and every NAR checked matches it: the copy failed for
    /// another reason.
    Consistent { checked: usize },
    /// The check could not be made (the cache unreachable, a path missing): why.
    Inconclusive(String),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Tampered(why) => write!(f, "tampering found: {why}"),
            Finding::Consistent { checked } => write!(
                f,
                "the cache's narinfos are signed by the fleet key and the {checked} NAR(s) checked match them"
            ),
            Finding::Inconclusive(why) => write!(f, "the cache could not be checked: {why}"),
        }
    }
}

/// The store paths Nix announced copying (`copying path '<p>' from ...`), in order.
pub fn announced(nix_output: &str) -> Vec<String> {
    nix_output
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("copying path '")?
                .split_once('\'')
                .map(|(p, _)| p.to_owned())
        })
        .collect()
}

/// Whether `info` carries a valid signature by the fleet key.
fn signed(agent: &Agent, info: &PathInfo) -> bool {
    let fp = narinfo::fingerprint(&info.path, &info.nar_hash, info.nar_size, &info.references);
    info.signatures
        .iter()
        .any(|s| agent.fleet_key.verify(fp.as_bytes(), s).is_ok())
}

/// Checks the cache's answer for `wanted`'s closure; `nix_output` is what the failed copy
/// printed. Progress goes to `log`.
pub async fn check(agent: &Agent, wanted: &str, nix_output: &str, log: &mut String) -> Finding {
    let query = cmd::nix()
        .args([
            "path-info",
            "--json",
            "--recursive",
            "--store",
            agent.cache_url.as_str(),
        ])
        .args(cache_options(agent))
        .arg(wanted)
        .timeout(agent.copy_timeout);
    let infos = match children::run(&agent.state_dir, query, |l| push_line(log, l)).await {
        Ok(out) => match pathinfo::parse_json(&out.stdout) {
            Ok(infos) => infos,
            Err(e) => return Finding::Inconclusive(e.to_string()),
        },
        Err(e) => return Finding::Inconclusive(e.to_string()),
    };
    for info in &infos {
        // Content-addressed paths need no signature (require-sigs does not cover them).
        if info.ca.is_none() && !signed(agent, info) {
            return Finding::Tampered(format!(
                "the narinfo of {} from {} carries no valid signature by {}",
                store::render(&info.path),
                agent.cache_url,
                agent.fleet_key.name()
            ));
        }
    }
    let all: Vec<String> = infos.iter().map(|i| store::render(&i.path)).collect();
    let validity = Command::new("nix-store")
        .args(["--check-validity", "--print-invalid"])
        .args(&all)
        .timeout(agent.copy_timeout);
    let missing: BTreeSet<String> =
        match children::run(&agent.state_dir, validity, |l| push_line(log, l)).await {
            Ok(out) => out.stdout_text().lines().map(str::to_owned).collect(),
            Err(e) => return Finding::Inconclusive(e.to_string()),
        };
    let first = announced(nix_output);
    let mut order: Vec<&PathInfo> = infos
        .iter()
        .filter(|i| missing.contains(&store::render(&i.path)))
        .collect();
    order.sort_by_key(|i| {
        let p = store::render(&i.path);
        first
            .iter()
            .rposition(|a| *a == p)
            .map_or(usize::MAX, |pos| first.len() - pos)
    });
    let mut checked = 0;
    for info in order.into_iter().take(MAX_NARS) {
        match nar_matches(agent, info).await {
            Ok(None) => checked += 1,
            Ok(Some(why)) => return Finding::Tampered(why),
            Err(why) => return Finding::Inconclusive(why),
        }
    }
    Finding::Consistent { checked }
}

/// Streams the NAR of `info` from the cache and compares it with the signed narinfo:
/// `Ok(None)` when it matches, `Ok(Some(why))` when it does not.
async fn nar_matches(agent: &Agent, info: &PathInfo) -> Result<Option<String>, String> {
    let path = store::render(&info.path);
    let dump = cmd::nix()
        .args(["store", "dump-path", "--store", agent.cache_url.as_str()])
        .args(cache_options(agent))
        .arg(&path)
        .timeout(agent.copy_timeout);
    let mut hasher = sha2::Sha256::new();
    let mut size: u64 = 0;
    children::run_streaming(&agent.state_dir, dump, |chunk| {
        hasher.update(chunk);
        size += chunk.len() as u64;
    })
    .await
    .map_err(|e| e.to_string())?;
    let got = Sha256Hash(hasher.finalize().into());
    if got == info.nar_hash && size == info.nar_size {
        return Ok(None);
    }
    Ok(Some(format!(
        "the NAR of {path} served by {} is {size} bytes hashing to {}, but its signed narinfo says {} bytes hashing to {}",
        agent.cache_url,
        got.to_nix32(),
        info.nar_size,
        info.nar_hash.to_nix32()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paths_nix_was_copying_are_read_from_its_output() {
        let out = "copying 2 paths...\n\
                   copying path '/nix/store/0svby7nmnsvmdjcq9r7dgqm0kmi9z8c3-bento-msg-dep' from 'file:///tmp/x'...\n\
                   copying path '/nix/store/m55yk9d77jqb2fn8m30lp2zia3iqv9a1-bento-msg-top' from 'file:///tmp/x'...\n\
                   error: basic_string::_M_create";
        assert_eq!(
            announced(out),
            [
                "/nix/store/0svby7nmnsvmdjcq9r7dgqm0kmi9z8c3-bento-msg-dep",
                "/nix/store/m55yk9d77jqb2fn8m30lp2zia3iqv9a1-bento-msg-top"
            ]
        );
        assert!(announced("error: out of memory").is_empty());
    }
}
