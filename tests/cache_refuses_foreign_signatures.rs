//! A cache whose narinfos are signed by a key the client does not trust is refused by Nix
//! itself, with its own message; the same copy with the right key trusted succeeds
//! (positive control), so the refusal is the signature's doing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cache_harness;

use bento::nix::keys::SecretKey;
use cache_harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_refuses_narinfos_signed_by_another_key() {
    let salt = nonce();
    let top = build(&format!(
        r#"mk "bento-foreign-{salt}" "echo foreign > $out""#
    ))
    .await;
    // The hosts trust the fleet key; this server signs with another key (of the same
    // name, so only the signature bytes differ).
    let fleet = Fleet::new();
    let impostor = SecretKey::generate(fleet.key.name()).unwrap();
    let mut config = fleet.config();
    config.signing_key = impostor.clone();
    fleet.publish_signed("web1", 1, &top, &impostor);
    let server = Server::start(config).await;
    let ni = server.get(&format!("/{}.narinfo", hash_part(&top))).await;
    assert_eq!(ni.status, 200, "the impostor cache serves the path");

    let trusted = fleet.key.public().to_string();
    let client = Client::new();
    let err = client
        .copy(&server.url(), &trusted, &top, &[])
        .await
        .expect_err("Nix must refuse a narinfo signed by an untrusted key");
    let msg = err.to_string();
    assert!(
        msg.contains("lacks a valid signature"),
        "unexpected refusal: {msg}"
    );
    assert!(!client.has(&top));

    // Positive control: trusting the key that actually signed, the same copy works.
    let ok = Client::new()
        .copy(&server.url(), &impostor.public().to_string(), &top, &[])
        .await;
    assert!(ok.is_ok(), "{}", ok.err().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_not_signed_by_the_fleet_key_are_not_served() {
    let salt = nonce();
    let good = build(&format!(r#"mk "bento-good-{salt}" "echo good > $out""#)).await;
    let forged = build(&format!(r#"mk "bento-forged-{salt}" "echo forged > $out""#)).await;
    let fleet = Fleet::new();
    fleet.publish("web1", 1, &good);
    fleet.publish_signed(
        "web2",
        1,
        &forged,
        &SecretKey::generate("bento-test-fleet-1").unwrap(),
    );
    let server = Server::start(fleet.config()).await;
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
