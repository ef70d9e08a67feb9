//! Copying a release's closure by parallel substitution, for caches that are not
//! `bento serve`: a `file://` cache carried to an air-gapped host, a plain binary cache over
//! `http(s)://`, an `s3://` bucket holding the cache's files.
//!
//! `nix-store --realise <top>` with that cache as the only substituter: Nix walks the
//! closure from the narinfos and fetches up to `substitute_jobs` paths at once over up to
//! [`HTTP_CONNECTIONS`] connections, where `nix copy` (Nix 2.8) keeps one request in
//! flight. The top path of a release is an output path with no derivation on the host, so
//! nothing can be built: substitution is all `--realise` does with it (and `builders` is
//! emptied so that no remote builder is ever asked). Trust is the same as for any copy:
//! signatures required, only the fleet key trusted, absences never remembered, narinfos
//! remembered per fleet key (`system::narinfo_cache_dir`), within `copy_timeout_secs`; a
//! failure is judged by `system::copy_judged` (Nix's messages, then `nar_check`).
//!
//! May import: `agent::{config, system}`, `nix`.

use super::config::Agent;
use super::system::{self, SystemError};
use crate::nix::cmd::Command;

/// Connections Nix opens to an HTTP cache at once (Nix's `http-connections`).
pub const HTTP_CONNECTIONS: u32 = 25;

/// The `--option`s of a substitution from the agent's cache: the cache alone as substituter
/// (a set value replaces the machine's `substituters` and `extra-substituters`), the fleet
/// key alone trusted, signatures required, `substitute_jobs` paths at once, no absences
/// remembered, no build anywhere.
pub fn options(agent: &Agent) -> Vec<String> {
    let jobs = agent.substitute_jobs.to_string();
    let connections = HTTP_CONNECTIONS.to_string();
    let key = agent.fleet_key.to_string();
    let pairs: [(&str, &str); 9] = [
        ("substituters", agent.cache_url.as_str()),
        ("trusted-public-keys", &key),
        ("require-sigs", "true"),
        ("substitute", "true"),
        ("max-jobs", &jobs),
        ("http-connections", &connections),
        ("narinfo-cache-negative-ttl", "0"),
        ("builders", ""),
        ("fallback", "false"),
    ];
    let mut o = Vec::with_capacity(pairs.len() * 3 + 3);
    for (name, value) in pairs {
        o.extend(["--option".to_owned(), name.to_owned(), value.to_owned()]);
    }
    if let Some(netrc) = &agent.cache_netrc {
        o.extend(["--option".into(), "netrc-file".into()]);
        o.push(netrc.to_string_lossy().into_owned());
    }
    o
}

/// `nix-store --realise <path>` from the cache alone (see [`options`]), with the fleet
/// key's narinfo cache, within `copy_timeout_secs`.
pub fn command(agent: &Agent, path: &str) -> Command {
    Command::new("nix-store")
        .env("XDG_CACHE_HOME", system::narinfo_cache_dir(agent))
        .args(["--realise", "--no-gc-warning", path])
        .args(options(agent))
        .timeout(agent.copy_timeout)
}

/// Copies `path`'s closure into this host's store by substitution; a failure is judged as
/// any copy's is (refused, tampered, or failed and tried again).
pub async fn copy_closure(agent: &Agent, path: &str, log: &mut String) -> Result<(), SystemError> {
    system::push_line(
        log,
        &format!(
            "substituting the closure from {} ({} paths at once)",
            agent.cache_url, agent.substitute_jobs
        ),
    );
    system::copy_judged(agent, command(agent, path), path, log).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn agent(extra: &str) -> Agent {
        let text = format!(
            r#"
host = "web1"
server = "10.77.0.1:2222"
server_host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOJO9ASb4F2D1xKP2Xmvh66LRWTxkAa/c3FHXOlUcY+n"
ssh_key = "/etc/bento/id_ed25519"
fleet_public_key = "test1:cb1G7tENqlCU2ZJAj+1Tk7f3LzTABDCtJrspN2aDpzw="
state_dir = "/var/lib/bento-agent"
{extra}
"#
        );
        Agent::parse(Path::new("agent.toml"), &text).unwrap()
    }

    /// The value given to `--option name`, if any (the last one wins in Nix too).
    fn option<'a>(o: &'a [String], name: &str) -> Option<&'a str> {
        o.windows(3)
            .filter(|w| w[0] == "--option" && w[1] == name)
            .map(|w| w[2].as_str())
            .next_back()
    }

    #[test]
    fn only_the_cache_and_the_fleet_key_are_trusted_and_nothing_is_built() {
        let cases = [
            (
                "cache_url = \"file:///mnt/cache\"",
                "file:///mnt/cache",
                "16",
                None,
            ),
            (
                "cache_url = \"http://10.77.0.1:8080\"\nsubstitute_jobs = 4\ncache_netrc = \"/etc/bento/netrc\"",
                "http://10.77.0.1:8080/",
                "4",
                Some("/etc/bento/netrc"),
            ),
        ];
        for (extra, url, jobs, netrc) in cases {
            let a = agent(extra);
            let o = options(&a);
            let want = [
                ("substituters", Some(url)),
                (
                    "trusted-public-keys",
                    Some("test1:cb1G7tENqlCU2ZJAj+1Tk7f3LzTABDCtJrspN2aDpzw="),
                ),
                ("require-sigs", Some("true")),
                ("substitute", Some("true")),
                ("max-jobs", Some(jobs)),
                ("http-connections", Some("25")),
                ("narinfo-cache-negative-ttl", Some("0")),
                ("builders", Some("")),
                ("fallback", Some("false")),
                ("netrc-file", netrc),
                ("extra-substituters", None),
                ("narinfo-cache-positive-ttl", None),
            ];
            for (name, value) in want {
                assert_eq!(option(&o, name), value, "{extra}: {name}");
            }
            let argv = command(&a, "/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top").argv();
            assert!(
                argv.starts_with(
                    "nix-store --realise --no-gc-warning /nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-top"
                ),
                "{argv}"
            );
        }
    }
}
