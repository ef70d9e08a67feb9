//! An authenticated host can do nothing but SFTP: exec, shell, other subsystems, local and
//! remote port forwarding, stdio forwarding and agent forwarding are all refused, and the
//! session stays usable for SFTP afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::sync::Arc;

use harness::ran::failure_text;
use harness::servers::SftpServer;

#[tokio::test]
async fn stock_ssh_cannot_exec_or_forward() {
    let server = SftpServer::start(&["web1"]).await;
    let key = server.key("web1");
    let marker = server.dir.scratch().join("exec-ran");
    let touch = format!("touch {}", marker.display());

    let err = failure_text(server.ssh("web1", key, &[], &["true"]).await, "exec");
    assert!(err.contains("exec request failed"), "{err}");
    let err = failure_text(server.ssh("web1", key, &[], &[&touch]).await, "exec touch");
    assert!(err.contains("exec request failed"), "{err}");
    assert!(!marker.exists(), "the command must not have run");

    let err = failure_text(server.ssh("web1", key, &["-tt"], &[]).await, "a pty");
    assert!(err.contains("PTY allocation request failed"), "{err}");
    let err = failure_text(server.ssh("web1", key, &["-T"], &[]).await, "a shell");
    assert!(err.contains("shell request failed"), "{err}");

    let err = failure_text(
        server.ssh("web1", key, &["-s"], &["netconf"]).await,
        "another subsystem",
    );
    assert!(err.contains("subsystem request failed"), "{err}");

    // Stdio forwarding (-W) opens a direct-tcpip channel right away.
    let target = format!("127.0.0.1:{}", server.addr.port());
    let err = failure_text(
        server.ssh("web1", key, &["-W", &target], &[]).await,
        "stdio forwarding",
    );
    assert!(err.contains("administratively prohibited"), "{err}");

    // Remote forwarding is refused when requested.
    let err = failure_text(
        server
            .ssh(
                "web1",
                key,
                &[
                    "-N",
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-R",
                    "0:127.0.0.1:9",
                ],
                &[],
            )
            .await,
        "remote forwarding",
    );
    assert!(err.contains("remote port forwarding failed"), "{err}");
    assert!(server.state.metrics().snapshot().requests_refused >= 6);
    server.stop().await;
}

#[tokio::test]
async fn forwarding_channels_are_refused_and_sftp_still_works() {
    let server = SftpServer::start(&["web1"]).await;
    server.dir.publish_made_up("web1", 4);
    let key = russh::keys::load_secret_key(server.key("web1"), None).unwrap();
    let pinned = bento::sftp::client::parse_pinned_key(&server.pinned).unwrap();
    let mut ssh = russh::client::connect(
        Arc::new(russh::client::Config::default()),
        server.addr,
        Pin(pinned),
    )
    .await
    .unwrap();
    let auth = ssh
        .authenticate_publickey(
            "web1",
            russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
        )
        .await
        .unwrap();
    assert!(auth.success());

    // Local forwarding (-L) and unix socket forwarding: the channel open is refused.
    let err = ssh
        .channel_open_direct_tcpip("127.0.0.1", 22, "127.0.0.1", 40000)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("prohibited")
            || matches!(err, russh::Error::ChannelOpenFailure(_)),
        "{err}"
    );
    assert!(
        ssh.channel_open_direct_streamlocal("/run/docker.sock")
            .await
            .is_err()
    );
    // Remote forwarding request.
    assert!(ssh.tcpip_forward("127.0.0.1", 0).await.is_err());

    // Exec, env and agent forwarding on a session channel.
    let ch = ssh.channel_open_session().await.unwrap();
    ch.exec(true, "id").await.unwrap();
    let mut ch = ch;
    let mut refused = false;
    while let Some(msg) = ch.wait().await {
        match msg {
            russh::ChannelMsg::Failure => {
                refused = true;
                break;
            }
            russh::ChannelMsg::Success | russh::ChannelMsg::Data { .. } => {
                panic!("exec ran: {msg:?}")
            }
            _ => {}
        }
    }
    assert!(refused, "exec was not refused");

    // The connection is still good for SFTP on a fresh channel.
    let ch = ssh.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "sftp").await.unwrap();
    let sftp = russh_sftp::client::SftpSession::new(ch.into_stream())
        .await
        .unwrap();
    let release = sftp.read("/release").await.unwrap();
    assert_eq!(
        bento::release::Release::parse_untrusted(&release)
            .unwrap()
            .generation,
        4
    );
    server.stop().await;
}

struct Pin(russh::keys::PublicKey);

impl russh::client::Handler for Pin {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(
            matches!(key, russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.0.key_data()),
        )
    }
}
