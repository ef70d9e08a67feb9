//! A new rollout from the policy and the hosts whose systems change: each host in the first
//! wave that selects it, waves without hosts left out. Pure.

use std::path::PathBuf;

use crate::config::{Host, RolloutPolicy};
use crate::deploy::Commit;

use super::RolloutError;
use super::record::{FORMAT, Progress, Rollout, RolloutState, Target, Wave};

/// One host to roll out.
#[derive(Debug, Clone)]
pub struct Planned<'a> {
    pub host: &'a Host,
    pub store_path: String,
    /// The generation it has now (none: no release yet).
    pub previous: Option<u64>,
}

/// What a new rollout is made of besides its hosts.
#[derive(Debug, Clone)]
pub struct Origin {
    pub id: u64,
    pub now: u64,
    pub commit: Option<Commit>,
    /// The fleet file the systems were built from.
    pub source: PathBuf,
    pub force: bool,
}

/// The rollout of `hosts` by `policy`, nothing started. Fails naming the hosts no wave
/// selects.
pub fn plan(
    origin: Origin,
    policy: &RolloutPolicy,
    hosts: &[Planned<'_>],
) -> Result<Rollout, RolloutError> {
    let refs: Vec<&Host> = hosts.iter().map(|p| p.host).collect();
    let (assigned, left) = policy.assign(&refs);
    if !left.is_empty() {
        let names: Vec<&str> = left.iter().map(|h| h.name.as_str()).collect();
        return Err(RolloutError::Unassigned(names.join(", ")));
    }
    let waves = assigned
        .into_iter()
        .map(|(spec, members)| Wave {
            name: spec.name.clone(),
            threshold: spec.threshold,
            soak_secs: spec.soak_secs,
            targets: members
                .iter()
                .filter_map(|h| hosts.iter().find(|p| p.host.name == h.name))
                .map(|p| Target {
                    host: p.host.name.clone(),
                    store_path: p.store_path.clone(),
                    generation: None,
                    previous: p.previous,
                    progress: Progress::NotStarted,
                    detail: None,
                })
                .collect(),
            started: None,
            met: None,
            passed: None,
        })
        .collect();
    Ok(Rollout {
        format: FORMAT,
        id: origin.id,
        created: origin.now,
        commit: origin.commit,
        source: origin.source,
        force: origin.force,
        timeout_secs: policy.timeout_secs,
        state: RolloutState::Running,
        reason: None,
        wave: 0,
        waves,
        events: Vec::new(),
    })
}

/// An id above `previous` (ids grow with time: Unix milliseconds when possible).
pub fn next_id(previous: Option<u64>, now_ms: u64) -> u64 {
    previous.map_or(now_ms, |p| now_ms.max(p.saturating_add(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Supersede, WaveSpec};

    fn host(name: &str, tags: &[&str]) -> Host {
        Host {
            name: name.into(),
            ssh_key: crate::config::SshPublicKey::parse(&crate::config::tests_support_ssh_key(
                name.len() as u8,
            ))
            .unwrap(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            system: crate::config::System::Configuration {
                path: "/x.nix".into(),
            },
            files: Default::default(),
        }
    }

    #[test]
    fn hosts_go_to_their_first_wave_and_empty_waves_go() {
        let wave = |name: &str, hosts: &[&str]| WaveSpec {
            name: name.into(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            threshold: 100,
            soak_secs: 5,
        };
        let policy = RolloutPolicy {
            waves: vec![
                wave("canary", &["@canary"]),
                wave("db", &["@db"]),
                wave("rest", &["*"]),
            ],
            timeout_secs: 60,
            supersede: Supersede::Wait,
        };
        let (a, b, c) = (
            host("a", &["canary"]),
            host("bb", &[]),
            host("ccc", &["web"]),
        );
        let planned: Vec<Planned> = [&a, &b, &c]
            .iter()
            .map(|h| Planned {
                host: h,
                store_path: format!("/nix/store/{}", h.name),
                previous: Some(1),
            })
            .collect();
        let origin = Origin {
            id: 5,
            now: 100,
            commit: None,
            source: "/f".into(),
            force: false,
        };
        let r = plan(origin.clone(), &policy, &planned).unwrap();
        let waves: Vec<(&str, Vec<&str>)> = r
            .waves
            .iter()
            .map(|w| {
                (
                    w.name.as_str(),
                    w.targets.iter().map(|t| t.host.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            waves,
            vec![("canary", vec!["a"]), ("rest", vec!["bb", "ccc"])]
        );
        assert_eq!(
            (r.state, r.wave, r.timeout_secs),
            (RolloutState::Running, 0, 60)
        );

        let narrow = RolloutPolicy {
            waves: vec![wave("canary", &["@canary"])],
            ..policy
        };
        let err = plan(origin, &narrow, &planned).unwrap_err().to_string();
        assert!(err.contains("hosts bb, ccc are in no wave"), "{err}");
        assert_eq!(next_id(None, 7), 7);
        assert_eq!(next_id(Some(9), 7), 10);
        assert_eq!(next_id(Some(9), 70), 70);
    }
}
