//! A cache whose narinfos are signed by a key the client does not trust is refused by Nix
//! itself, with its own message; the same copy with the right key trusted succeeds
//! (positive control), so the refusal is the signature's doing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::nix::keys::SecretKey;
use harness::nix::{Nix, build, hash_part, nonce};
use harness::servers::{CacheServer, ServerDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_refuses_narinfos_signed_by_another_key() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let salt = nonce();
    let top = build(&format!(
        r#"mk "bento-foreign-{salt}" "echo foreign > $out""#
    ));
    // The hosts trust the fleet key; this server signs with another key (of the same
    // name, so only the signature bytes differ).
    let dir = ServerDir::new();
    let impostor = SecretKey::generate(dir.key.name()).unwrap();
    let mut config = dir.cache_config();
    config.signing_key = impostor.clone();
    dir.publish_signed("web1", 1, &top, &impostor);
    let server = CacheServer::start(config).await;
    let ni = server.get(&format!("/{}.narinfo", hash_part(&top))).await;
    assert_eq!(ni.status, 200, "the impostor cache serves the path");

    let trusted = dir.key.public().to_string();
    let client = Nix::chroot();
    let err = client
        .copy_from(&server.url(), &trusted, &top, &[])
        .await
        .expect_err("Nix must refuse a narinfo signed by an untrusted key");
    let msg = err.to_string();
    assert!(
        msg.contains("lacks a valid signature"),
        "unexpected refusal: {msg}"
    );
    assert!(!client.has(&top));

    // Positive control: trusting the key that actually signed, the same copy works.
    let ok = Nix::chroot()
        .copy_from(&server.url(), &impostor.public().to_string(), &top, &[])
        .await;
    assert!(ok.is_ok(), "{}", ok.err().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_not_signed_by_the_fleet_key_are_not_served() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let salt = nonce();
    let good = build(&format!(r#"mk "bento-good-{salt}" "echo good > $out""#));
    let forged = build(&format!(r#"mk "bento-forged-{salt}" "echo forged > $out""#));
    let dir = ServerDir::new();
    dir.publish("web1", 1, &good);
    dir.publish_signed(
        "web2",
        1,
        &forged,
        &SecretKey::generate("bento-test-fleet-1").unwrap(),
    );
    let server = CacheServer::start(dir.cache_config()).await;
    assert_eq!(
        server
            .get(&format!("/{}.narinfo", hash_part(&good)))
            .await
            .status,
        200
    );
    assert_eq!(
        server
            .get(&format!("/{}.narinfo", hash_part(&forged)))
            .await
            .status,
        404
    );
}
