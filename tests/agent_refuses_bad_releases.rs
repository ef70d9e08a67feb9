//! Refusals on the host: a replayed older release, another host's release, a release signed
//! by another key, and a closure whose NAR was tampered with (also one that Nix does not
//! call a refusal: the agent checks the NAR itself). Each is refused with exit 4, nothing
//! is activated, and the report says why.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::nix::keys::SecretKey;
use bento::release::Release;
use harness::fake::Behaviour;
use harness::scene::{OneHost, agent_once};

async fn setup(salt: &str) -> Option<OneHost> {
    OneHost::start(salt, &[Behaviour::Good, Behaviour::Good], "").await
}

/// Runs the agent, expects a refusal whose reason contains `why`, and nothing activated
/// beyond `activations_before`.
async fn assert_refused(c: &OneHost, why: &str, activations_before: usize) {
    let (code, log) = agent_once(&c.host, &c.config).await;
    assert_eq!(code, 4, "{log}");
    assert_eq!(
        c.host.activations().len(),
        activations_before,
        "nothing activated"
    );
    let r = c.server.final_reports("web1").pop().unwrap();
    assert_eq!(r.outcome.as_str(), "refused");
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains(why),
        "reason {reason:?} should contain {why:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_older_release_is_refused() {
    let Some(c) = setup("replay").await else {
        return;
    };
    c.server.publish_release("web1", 2, &c.systems[1]).await;
    let (code, log) = agent_once(&c.host, &c.config).await;
    assert_eq!(code, 0, "{log}");
    // An attacker (or a restored backup) puts generation 1 back: validly signed, but old.
    c.server.publish_release("web1", 1, &c.systems[0]).await;
    assert_refused(&c, "not newer than generation 2", 1).await;
    assert_eq!(c.host.running().as_deref(), Some(c.systems[1].as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_hosts_release_is_refused() {
    let Some(c) = setup("otherhost").await else {
        return;
    };
    let foreign =
        Release::sign("web2", 5, &c.systems[1], 1_790_000_000, &c.server.dir.key).unwrap();
    c.server.write_release("web1", &foreign.to_bytes()).await;
    assert_refused(&c, "release is for host \"web2\"", 0).await;
    assert_eq!(c.host.running().as_deref(), Some(c.systems[0].as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_signed_by_another_key_is_refused() {
    let Some(c) = setup("badsig").await else {
        return;
    };
    // Same key name as the fleet's, other bytes: the signature does not verify.
    let impostor = SecretKey::generate(c.server.dir.key.name()).unwrap();
    let forged = Release::sign("web1", 2, &c.systems[1], 1_790_000_000, &impostor).unwrap();
    c.server.write_release("web1", &forged.to_bytes()).await;
    assert_refused(&c, "signature does not verify", 0).await;
    // Another fleet's key altogether.
    let stranger = SecretKey::generate("other-fleet").unwrap();
    let forged = Release::sign("web1", 3, &c.systems[1], 1_790_000_000, &stranger).unwrap();
    c.server.write_release("web1", &forged.to_bytes()).await;
    assert_refused(&c, "signed by \"other-fleet\"", 0).await;
    assert_eq!(c.host.running().as_deref(), Some(c.systems[0].as_str()));
}

/// Puts the new system in a cache carried to the host by other means (`file://`, its own
/// directory `name`), signed by the fleet key, lets `alter` change the bytes of its NAR, and
/// points the agent at it.
fn file_cache_with_altered_nar(c: &OneHost, name: &str, alter: impl FnOnce(&mut Vec<u8>)) {
    let dir = c.server.dir.scratch().join(name);
    harness::nix::signed_file_cache(&dir, &c.server.dir.key, &c.systems[1]);
    let top_hash = c.systems[1]
        .trim_start_matches("/nix/store/")
        .split('-')
        .next()
        .unwrap();
    let narinfo = std::fs::read_to_string(dir.join(format!("{top_hash}.narinfo"))).unwrap();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let nar = dir.join(url);
    let mut bytes = std::fs::read(&nar).unwrap();
    alter(&mut bytes);
    std::fs::write(&nar, bytes).unwrap();
    let config = std::fs::read_to_string(&c.config)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("cache_url") {
                format!("cache_url = \"file://{}\"", dir.display())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&c.config, config).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_nar_is_refused() {
    let Some(c) = setup("tamper").await else {
        return;
    };
    // One byte of the new system's NAR flipped: Nix says "hash mismatch".
    file_cache_with_altered_nar(&c, "flipped", |bytes| {
        let i = bytes.len() / 2;
        bytes[i] ^= 0x20;
    });
    c.server.publish_release("web1", 2, &c.systems[1]).await;
    assert_refused(&c, "refused by Nix", 0).await;
    let r = c.server.final_reports("web1").pop().unwrap();
    assert!(r.log.contains("hash mismatch"), "{}", r.log);
    assert_eq!(c.host.running().as_deref(), Some(c.systems[0].as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_nar_is_refused_though_nix_does_not_say_why() {
    let Some(c) = setup("truncated").await else {
        return;
    };
    // Half of the NAR: `nix copy` (2.8) failed with words of no refusal ("coroutine has
    // finished"); the substitution the agent uses for a `file://` cache says it.
    file_cache_with_altered_nar(&c, "truncated", |bytes| bytes.truncate(bytes.len() / 2));
    c.server.publish_release("web1", 2, &c.systems[1]).await;
    assert_refused(&c, "refused by Nix", 0).await;
    let r = c.server.final_reports("web1").pop().unwrap();
    assert!(r.log.contains("is incomplete"), "{}", r.log);
    // The length of the NAR's second string (the "(" after the magic) made huge: Nix 2.8
    // fails with words of no refusal ("std::bad_alloc"), which would be a failed copy,
    // retried forever. The agent checks the NAR itself.
    file_cache_with_altered_nar(&c, "huge-length", |bytes| bytes[29] ^= 0x20);
    c.server.publish_release("web1", 3, &c.systems[1]).await;
    assert_refused(&c, "does not match what the fleet key signed", 0).await;
    let r = c.server.final_reports("web1").pop().unwrap();
    assert!(r.log.contains("its signed narinfo says"), "{}", r.log);
    assert_eq!(c.host.running().as_deref(), Some(c.systems[0].as_str()));
    // Positive control: the same cache, whole again, is copied and applied.
    file_cache_with_altered_nar(&c, "whole", |_| {});
    c.server.publish_release("web1", 4, &c.systems[1]).await;
    let (code, log) = agent_once(&c.host, &c.config).await;
    assert_eq!(code, 0, "{log}");
}
