//! The stock OpenSSH `sftp` client and our Rust client, each logged in as a host with its own
//! key and pinning the printed host key, read `/release` and `/files/...` and upload a report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod publish_harness;

use publish_harness::Fleet;

#[tokio::test]
async fn stock_sftp_reads_release_and_uploads_report() {
    let fleet = Fleet::start(&["web1", "web2"]).await;
    let release = fleet.write_release("web1", 3);
    fleet.write_release("web2", 9);
    fleet.write_file("web1", "secret.key", b"web1 secret\n");

    let local = fleet.tmp.path().join("got-release");
    let got_secret = fleet.tmp.path().join("got-secret");
    let report = fleet.tmp.path().join("report.json");
    std::fs::write(&report, b"{\"outcome\":\"applied\"}\n").unwrap();
    let batch = format!(
        "ls -1 /\nget /release {}\nget files/secret.key {}\nput {} /reports/gen-3.json\n",
        local.display(),
        got_secret.display(),
        report.display()
    );
    let out = fleet
        .sftp_batch("web1", fleet.key("web1"), &batch)
        .await
        .expect("sftp batch succeeds");
    let listing = String::from_utf8_lossy(&out.stdout);
    for name in ["release", "files", "reports"] {
        assert!(listing.contains(name), "ls / shows {name}: {listing}");
    }
    assert_eq!(std::fs::read(&local).unwrap(), release);
    assert_eq!(std::fs::read(&got_secret).unwrap(), b"web1 secret\n");
    assert_eq!(fleet.reports_on_disk("web1"), vec!["gen-3.json"]);
    assert_eq!(
        std::fs::read(fleet.host_dir("web1").join("reports/gen-3.json")).unwrap(),
        std::fs::read(&report).unwrap()
    );
    // Positive control for isolation: web2 reads its own release, not web1's.
    let local2 = fleet.tmp.path().join("got-release-2");
    fleet
        .sftp_batch(
            "web2",
            fleet.key("web2"),
            &format!("get /release {}\n", local2.display()),
        )
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&std::fs::read(&local2).unwrap()).contains("\"generation\":9"));

    let m = fleet.state.metrics().snapshot();
    assert!(m.reports_received >= 1 && m.auth_successes >= 2, "{m:?}");
    fleet.stop().await;
}

#[tokio::test]
async fn rust_client_reads_release_and_uploads_report() {
    let fleet = Fleet::start(&["web1", "db1"]).await;
    let release = fleet.write_release("web1", 5);
    fleet.write_file("web1", "nested/dir/token", b"t0k3n");

    let s = fleet.client("web1").await.unwrap();
    assert_eq!(s.read_release().await.unwrap(), Some(release));
    assert_eq!(
        s.read_file("/files/nested/dir/token").await.unwrap(),
        b"t0k3n"
    );
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    s.upload_report("gen-5.json", &big).await.unwrap();
    assert_eq!(
        std::fs::read(fleet.host_dir("web1").join("reports/gen-5.json")).unwrap(),
        big
    );
    assert_eq!(
        fleet.reports_on_disk("web1"),
        vec!["gen-5.json"],
        "no temporaries left"
    );
    s.close().await;

    // A host without a release yet gets None, not an error.
    let s = fleet.client("db1").await.unwrap();
    assert_eq!(s.read_release().await.unwrap(), None);
    s.close().await;
    fleet.stop().await;
}
