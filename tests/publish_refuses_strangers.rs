//! Only a host's own key logs in as that host: another host's user name, an unknown key,
//! password and keyboard-interactive authentication are refused, and clients refuse a server
//! whose host key is not the pinned one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod publish_harness;

use std::sync::Arc;

use bento::sftp::client::ClientError;
use publish_harness::{AcceptAny, Fleet, failure_text};

#[tokio::test]
async fn another_hosts_user_or_an_unknown_key_is_refused() {
    let fleet = Fleet::start(&["web1", "web2"]).await;
    fleet.write_release("web1", 1);
    fleet.write_release("web2", 2);
    let stranger = fleet.stranger_key("stranger");
    let get = format!("get /release {}\n", fleet.tmp.path().join("x").display());

    // web1's key, user web2: stock client and ours.
    let err = failure_text(
        fleet.sftp_batch("web2", fleet.key("web1"), &get).await,
        "web1's key as web2",
    );
    assert!(err.contains("Permission denied"), "{err}");
    let err = fleet
        .client_with("web2", fleet.key("web1"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");

    // An unknown key as web1.
    let err = failure_text(
        fleet.sftp_batch("web1", &stranger, &get).await,
        "unknown key",
    );
    assert!(err.contains("Permission denied"), "{err}");
    let err = fleet.client_with("web1", &stranger).await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");

    // A user that is no host at all.
    let err = fleet
        .client_with("root", fleet.key("web1"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");

    // Positive control: the right key as the right host works, with both clients.
    fleet
        .sftp_batch("web1", fleet.key("web1"), &get)
        .await
        .expect("web1 with its own key");
    assert!(fleet.client("web2").await.is_ok());
    let got = std::fs::read_to_string(fleet.tmp.path().join("x")).unwrap();
    assert!(got.contains("\"host\":\"web1\""), "{got}");
    assert!(fleet.state.metrics().snapshot().auth_failures >= 4);
    fleet.stop().await;
}

#[tokio::test]
async fn password_and_keyboard_interactive_are_refused() {
    let fleet = Fleet::start(&["web1"]).await;

    // OpenSSH sees only "publickey" offered and gives up on password/keyboard-interactive.
    for method in ["password", "keyboard-interactive"] {
        let err = failure_text(
            fleet
                .ssh(
                    "web1",
                    fleet.key("web1"),
                    &[
                        "-o",
                        &format!("PreferredAuthentications={method}"),
                        "-o",
                        "PubkeyAuthentication=no",
                        "-o",
                        "NumberOfPasswordPrompts=0",
                    ],
                    &["true"],
                )
                .await,
            method,
        );
        assert!(
            err.contains("Permission denied (publickey)"),
            "{method}: {err}"
        );
    }

    // Our side does not merely not advertise them: a client that sends them anyway is refused.
    let failures_before = fleet.state.metrics().snapshot().auth_failures;
    let mut ssh = raw_ssh(&fleet).await;
    let r = ssh.authenticate_password("web1", "hunter2").await.unwrap();
    assert!(!r.success(), "password accepted: {r:?}");
    let r = ssh
        .authenticate_keyboard_interactive_start("web1", None::<String>)
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            russh::client::KeyboardInteractiveAuthResponse::Failure { .. }
        ),
        "keyboard-interactive not refused: {r:?}"
    );
    // Both failures advertise public keys only.
    let r = ssh.authenticate_password("web1", "").await.unwrap();
    match r {
        russh::client::AuthResult::Failure {
            remaining_methods, ..
        } => {
            let names: Vec<&str> = remaining_methods.iter().map(<&str>::from).collect();
            assert_eq!(names, vec!["publickey"]);
        }
        other => panic!("empty password accepted: {other:?}"),
    }
    assert!(fleet.state.metrics().snapshot().auth_failures >= failures_before + 3);
    fleet.stop().await;
}

#[tokio::test]
async fn clients_refuse_a_server_with_another_host_key() {
    let fleet = Fleet::start(&["web1"]).await;
    let other = bento::sftp::server::HostKey::generate();

    let err = bento::sftp::client::connect(
        fleet.addr,
        "web1",
        fleet.key("web1"),
        &other.public_openssh(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::HostKeyMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&fleet.state.host_key().fingerprint()),
        "{err}"
    );

    let wrong_known_hosts = fleet.tmp.path().join("wrong_known_hosts");
    std::fs::write(
        &wrong_known_hosts,
        format!(
            "{}\n",
            other.known_hosts_line("127.0.0.1", fleet.addr.port())
        ),
    )
    .unwrap();
    let mut opts = fleet.ssh_options(fleet.key("web1"));
    for o in opts.iter_mut() {
        if o.starts_with("UserKnownHostsFile=") {
            *o = format!("UserKnownHostsFile={}", wrong_known_hosts.display());
        }
    }
    let err = bento::nix::cmd::Command::new("sftp")
        .args(["-b", "/dev/null"])
        .args(opts)
        .args(["-P", &fleet.addr.port().to_string(), "web1@127.0.0.1"])
        .run_async()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Host key verification failed"), "{err}");

    // Positive control: the printed key (also as a known_hosts line) is accepted.
    let line = fleet
        .state
        .host_key()
        .known_hosts_line("127.0.0.1", fleet.addr.port());
    assert!(
        bento::sftp::client::connect(fleet.addr, "web1", fleet.key("web1"), &line)
            .await
            .is_ok()
    );
    fleet.stop().await;
}

/// A bare russh client connection, not yet authenticated.
async fn raw_ssh(fleet: &Fleet) -> russh::client::Handle<AcceptAny> {
    russh::client::connect(
        Arc::new(russh::client::Config::default()),
        fleet.addr,
        AcceptAny,
    )
    .await
    .unwrap()
}
