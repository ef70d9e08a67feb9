//! Only a host's own key logs in as that host: another host's user name, an unknown key,
//! password and keyboard-interactive authentication are refused, and clients refuse a server
//! whose host key is not the pinned one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::sync::Arc;

use bento::sftp::client::ClientError;
use harness::ran::failure_text;
use harness::servers::{AcceptAny, SftpServer};

#[tokio::test]
async fn another_hosts_user_or_an_unknown_key_is_refused() {
    let server = SftpServer::start(&["web1", "web2"]).await;
    server.dir.publish_made_up("web1", 1);
    server.dir.publish_made_up("web2", 2);
    let stranger = server.stranger_key("stranger");
    let get = format!(
        "get /release {}\n",
        server.dir.scratch().join("x").display()
    );

    // web1's key, user web2: stock client and ours.
    let err = failure_text(
        server.sftp_batch("web2", server.key("web1"), &get).await,
        "web1's key as web2",
    );
    assert!(err.contains("Permission denied"), "{err}");
    let err = server
        .client_with("web2", server.key("web1"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");

    // An unknown key as web1.
    let err = failure_text(
        server.sftp_batch("web1", &stranger, &get).await,
        "unknown key",
    );
    assert!(err.contains("Permission denied"), "{err}");
    let err = server.client_with("web1", &stranger).await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");

    // A user that is no host at all.
    let err = server
        .client_with("root", server.key("web1"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err}");

    // Positive control: the right key as the right host works, with both clients.
    server
        .sftp_batch("web1", server.key("web1"), &get)
        .await
        .expect("web1 with its own key");
    assert!(server.client("web2").await.is_ok());
    let got = std::fs::read(server.dir.scratch().join("x")).unwrap();
    assert_eq!(
        bento::release::Release::parse_untrusted(&got).unwrap().host,
        "web1"
    );
    assert!(server.state.metrics().snapshot().auth_failures >= 4);
    server.stop().await;
}

#[tokio::test]
async fn password_and_keyboard_interactive_are_refused() {
    let server = SftpServer::start(&["web1"]).await;

    // OpenSSH sees only "publickey" offered and gives up on password/keyboard-interactive.
    for method in ["password", "keyboard-interactive"] {
        let err = failure_text(
            server
                .ssh(
                    "web1",
                    server.key("web1"),
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
    let failures_before = server.state.metrics().snapshot().auth_failures;
    let mut ssh = raw_ssh(&server).await;
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
    assert!(server.state.metrics().snapshot().auth_failures >= failures_before + 3);
    server.stop().await;
}

#[tokio::test]
async fn clients_refuse_a_server_with_another_host_key() {
    let server = SftpServer::start(&["web1"]).await;
    let other = bento::sftp::server::HostKey::generate();

    let err = bento::sftp::client::connect(
        server.addr,
        "web1",
        server.key("web1"),
        &other.public_openssh(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::HostKeyMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&server.state.host_key().fingerprint()),
        "{err}"
    );

    let wrong_known_hosts = server.dir.scratch().join("wrong_known_hosts");
    std::fs::write(
        &wrong_known_hosts,
        format!(
            "{}\n",
            other.known_hosts_line("127.0.0.1", server.addr.port())
        ),
    )
    .unwrap();
    let mut opts = server.ssh_options(server.key("web1"));
    for o in opts.iter_mut() {
        if o.starts_with("UserKnownHostsFile=") {
            *o = format!("UserKnownHostsFile={}", wrong_known_hosts.display());
        }
    }
    let err = bento::nix::cmd::Command::new("sftp")
        .args(["-b", "/dev/null"])
        .args(opts)
        .args(["-P", &server.addr.port().to_string(), "web1@127.0.0.1"])
        .run_async()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Host key verification failed"), "{err}");

    // Positive control: the printed key (also as a known_hosts line) is accepted.
    let line = server
        .state
        .host_key()
        .known_hosts_line("127.0.0.1", server.addr.port());
    assert!(
        bento::sftp::client::connect(server.addr, "web1", server.key("web1"), &line)
            .await
            .is_ok()
    );
    server.stop().await;
}

/// A bare russh client connection, not yet authenticated.
async fn raw_ssh(server: &SftpServer) -> russh::client::Handle<AcceptAny> {
    russh::client::connect(
        Arc::new(russh::client::Config::default()),
        server.addr,
        AcceptAny,
    )
    .await
    .unwrap()
}
