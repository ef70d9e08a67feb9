//! The stock OpenSSH `sftp` client and our Rust client, each logged in as a host with its own
//! key and pinning the printed host key, read `/release` and `/files/...` and upload a report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::servers::SftpServer;

#[tokio::test]
async fn stock_sftp_reads_release_and_uploads_report() {
    let server = SftpServer::start(&["web1", "web2"]).await;
    let release = server.dir.publish_made_up("web1", 3);
    server.dir.publish_made_up("web2", 9);
    server
        .dir
        .write_file("web1", "secret.key", b"web1 secret\n");

    let local = server.dir.scratch().join("got-release");
    let got_secret = server.dir.scratch().join("got-secret");
    let report = server.dir.scratch().join("report.json");
    std::fs::write(&report, b"{\"outcome\":\"applied\"}\n").unwrap();
    let batch = format!(
        "ls -1 /\nget /release {}\nget files/secret.key {}\nput {} /reports/gen-3.json\n",
        local.display(),
        got_secret.display(),
        report.display()
    );
    let out = server
        .sftp_batch("web1", server.key("web1"), &batch)
        .await
        .expect("sftp batch succeeds");
    let listing = String::from_utf8_lossy(&out.stdout);
    for name in ["release", "files", "reports"] {
        assert!(listing.contains(name), "ls / shows {name}: {listing}");
    }
    assert_eq!(std::fs::read(&local).unwrap(), release);
    assert_eq!(std::fs::read(&got_secret).unwrap(), b"web1 secret\n");
    assert_eq!(server.dir.reports_on_disk("web1"), vec!["gen-3.json"]);
    assert_eq!(
        std::fs::read(server.dir.host_dir("web1").join("reports/gen-3.json")).unwrap(),
        std::fs::read(&report).unwrap()
    );
    // Positive control for isolation: web2 reads its own release, not web1's.
    let local2 = server.dir.scratch().join("got-release-2");
    server
        .sftp_batch(
            "web2",
            server.key("web2"),
            &format!("get /release {}\n", local2.display()),
        )
        .await
        .unwrap();
    let fetched = std::fs::read(&local2).unwrap();
    assert_eq!(
        bento::release::Release::parse_untrusted(&fetched)
            .unwrap()
            .generation,
        9
    );

    let m = server.state.metrics().snapshot();
    assert!(m.reports_received >= 1 && m.auth_successes >= 2, "{m:?}");
    server.stop().await;
}

#[tokio::test]
async fn rust_client_reads_release_and_uploads_report() {
    let server = SftpServer::start(&["web1", "db1"]).await;
    let release = server.dir.publish_made_up("web1", 5);
    server.dir.write_file("web1", "nested/dir/token", b"t0k3n");

    let s = server.client("web1").await.unwrap();
    assert_eq!(s.read_release().await.unwrap(), Some(release));
    assert_eq!(
        s.read_file("/files/nested/dir/token").await.unwrap(),
        b"t0k3n"
    );
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    s.upload_report("gen-5.json", &big).await.unwrap();
    assert_eq!(
        std::fs::read(server.dir.host_dir("web1").join("reports/gen-5.json")).unwrap(),
        big
    );
    assert_eq!(
        server.dir.reports_on_disk("web1"),
        vec!["gen-5.json"],
        "no temporaries left"
    );
    s.close().await;

    // A host without a release yet gets None, not an error.
    let s = server.client("db1").await.unwrap();
    assert_eq!(s.read_release().await.unwrap(), None);
    s.close().await;
    server.stop().await;
}
