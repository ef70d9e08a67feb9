//! The server, not the client, keeps a host's reports within bounds: past the file-count cap
//! or the total-size cap the oldest reports are deleted, never the one just uploaded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::sftp::server::SftpConfig;
use harness::servers::{SftpServer, sftp_config};

#[tokio::test]
async fn oldest_reports_are_rotated_past_the_count_cap() {
    let server = SftpServer::start_with(
        &["web1", "web2"],
        SftpConfig {
            max_reports: 3,
            ..sftp_config()
        },
    )
    .await;
    let s = server.client("web1").await.unwrap();
    for i in 1..=5 {
        s.upload_report(&format!("gen-{i}.json"), format!("report {i}").as_bytes())
            .await
            .unwrap();
        // mtimes are the server's clock; keep them apart for a stable order.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.dir.reports_on_disk("web1"),
        vec!["gen-3.json", "gen-4.json", "gen-5.json"]
    );
    assert_eq!(server.state.metrics().snapshot().reports_rotated, 2);

    // Rotation is per host: web2's upload does not touch web1's reports.
    let s2 = server.client("web2").await.unwrap();
    s2.upload_report("gen-1.json", b"web2").await.unwrap();
    assert_eq!(server.dir.reports_on_disk("web1").len(), 3);
    assert_eq!(server.dir.reports_on_disk("web2"), vec!["gen-1.json"]);

    // The stock client's uploads are rotated the same way.
    let local = server.dir.scratch().join("r");
    std::fs::write(&local, b"stock").unwrap();
    server
        .sftp_batch(
            "web1",
            server.key("web1"),
            &format!("put {} /reports/gen-6.json\n", local.display()),
        )
        .await
        .unwrap();
    assert_eq!(
        server.dir.reports_on_disk("web1"),
        vec!["gen-4.json", "gen-5.json", "gen-6.json"]
    );
    server.stop().await;
}

#[tokio::test]
async fn oldest_reports_are_rotated_past_the_size_cap() {
    let server = SftpServer::start_with(
        &["web1"],
        SftpConfig {
            max_report_bytes: 1000,
            max_reports_total_bytes: 2500,
            ..sftp_config()
        },
    )
    .await;
    let s = server.client("web1").await.unwrap();
    for i in 1..=4 {
        s.upload_report(&format!("r{i}"), &[b'x'; 1000])
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // 4000 bytes uploaded, 2500 allowed: the two oldest went.
    assert_eq!(server.dir.reports_on_disk("web1"), vec!["r3", "r4"]);
    server.stop().await;
}
