//! A host reaches nothing outside `publish/<host>/`: `..` and absolute paths out of the
//! tree, symlinks planted in the state directory (to `/etc/passwd`, to another host's
//! directory, through `/proc`), and a host directory or release that is itself a symlink all
//! fail. Inside the tree, `/release` and `/files` are read-only and `/reports` is create-new
//! only: no overwrite, delete, rename, mkdir, chmod or link, and no upload past the cap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::os::unix::fs::symlink;

use bento::sftp::server::SftpConfig;
use harness::ran::failure_text;
use harness::servers::{SftpServer, sftp_config, status_of};
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

const CAP: u64 = 64 * 1024;

/// What no download may ever contain.
const POISON: [&str; 2] = ["root:x:0:0", "POISON-WEB2"];

async fn server() -> SftpServer {
    let server = SftpServer::start_with(
        &["web1", "web2", "web3", "web4"],
        SftpConfig {
            max_report_bytes: CAP,
            ..sftp_config()
        },
    )
    .await;
    server.dir.publish_made_up("web1", 1);
    std::fs::create_dir_all(server.dir.host_dir("web2")).unwrap();
    std::fs::write(server.dir.host_dir("web2").join("release"), "POISON-WEB2\n").unwrap();
    server.dir.write_file("web1", "own.txt", b"web1 file\n");
    let files = server.dir.host_dir("web1").join("files");
    symlink("/etc/passwd", files.join("passwd")).unwrap();
    symlink("../../web2/release", files.join("web2-release")).unwrap();
    symlink("../../web2", files.join("web2-dir")).unwrap();
    symlink("/proc/self/root/etc/passwd", files.join("proc")).unwrap();
    symlink("../release", files.join("own-link")).unwrap();
    // web3's release is a symlink to web2's; web4's whole directory is one.
    std::fs::create_dir_all(server.dir.host_dir("web3")).unwrap();
    symlink(
        "../web2/release",
        server.dir.host_dir("web3").join("release"),
    )
    .unwrap();
    symlink("web2", server.dir.host_dir("web4")).unwrap();
    server
}

#[tokio::test]
async fn stock_sftp_cannot_leave_or_alter_the_tree() {
    let server = server().await;
    let key = server.key("web1");
    let local = server.dir.scratch().join("local.txt");
    std::fs::write(&local, b"upload\n").unwrap();
    let big = server.dir.scratch().join("big.bin");
    std::fs::write(&big, vec![7u8; 4 * CAP as usize]).unwrap();
    // A report to attack.
    server
        .sftp_batch(
            "web1",
            key,
            &format!("put {} /reports/r1\n", local.display()),
        )
        .await
        .expect("first upload of r1");

    let out = |n: usize| server.dir.scratch().join(format!("got-{n}"));
    // (command, what it tries, what the stock client must say)
    let attempts: Vec<(String, &str, &str)> = vec![
        (
            format!("get ../../etc/passwd {}", out(1).display()),
            "relative escape",
            "not found",
        ),
        (
            format!("get /../etc/passwd {}", out(2).display()),
            "absolute escape",
            "not found",
        ),
        (
            format!("get /etc/passwd {}", out(3).display()),
            "path outside the tree",
            "not found",
        ),
        (
            format!("get ../web2/release {}", out(4).display()),
            "sibling host by ..",
            "not found",
        ),
        (
            format!("get /files/passwd {}", out(5).display()),
            "link to /etc/passwd",
            "not found",
        ),
        (
            format!("get /files/web2-release {}", out(6).display()),
            "link to web2's release",
            "not found",
        ),
        (
            format!("get /files/web2-dir/release {}", out(7).display()),
            "link to web2's dir",
            "not found",
        ),
        (
            format!("get /files/proc {}", out(8).display()),
            "magic link through /proc",
            "not found",
        ),
        (
            "cd ..".to_owned(),
            "cd above the root",
            "outside this host's tree",
        ),
        (
            format!("put {} /release", local.display()),
            "write /release",
            "Permission denied",
        ),
        (
            format!("put {} /files/new", local.display()),
            "write under /files",
            "Permission denied",
        ),
        (
            format!("put {} /reports/r1", local.display()),
            "overwrite a report",
            "Permission denied",
        ),
        (
            "rm /reports/r1".to_owned(),
            "delete a report",
            "Permission denied",
        ),
        (
            "rename /reports/r1 /reports/r9".to_owned(),
            "rename a report",
            "Permission denied",
        ),
        (
            "mkdir /reports/sub".to_owned(),
            "mkdir",
            "Permission denied",
        ),
        (
            "mkdir /new".to_owned(),
            "mkdir at the root",
            "Permission denied",
        ),
        (
            "chmod 777 /reports/r1".to_owned(),
            "setstat",
            "Permission denied",
        ),
        (
            "ln -s /etc/passwd /reports/l".to_owned(),
            "symlink",
            "Permission denied",
        ),
        (
            format!("get /reports/r1 {}", out(9).display()),
            "read a report back",
            "not found",
        ),
        (
            format!("put {} /reports/big", big.display()),
            "upload over the cap",
            "Failure",
        ),
    ];
    for (command, what, says) in &attempts {
        let err = failure_text(
            server
                .sftp_batch("web1", key, &format!("{command}\n"))
                .await,
            what,
        );
        assert!(err.contains(says), "{what}: expected {says:?} in {err}");
    }
    for n in 1..=9 {
        if let Ok(bytes) = std::fs::read(out(n)) {
            let text = String::from_utf8_lossy(&bytes);
            for poison in POISON {
                assert!(!text.contains(poison), "got-{n} leaked {poison}");
            }
        }
    }
    assert_eq!(
        std::fs::read(server.dir.host_dir("web1").join("reports/r1")).unwrap(),
        b"upload\n",
        "r1 untouched"
    );
    assert_eq!(
        server.dir.reports_on_disk("web1"),
        vec!["r1"],
        "no partial upload left"
    );
    assert!(server.dir.host_dir("web1").join("release").is_file());

    // Positive controls: a symlink inside the tree is followed, listing works.
    let own = server.dir.scratch().join("own");
    let listing = server
        .sftp_batch(
            "web1",
            key,
            &format!("get /files/own-link {}\nls -1 /files\n", own.display()),
        )
        .await
        .unwrap();
    let own_release = std::fs::read(&own).unwrap();
    assert_eq!(
        bento::release::Release::parse_untrusted(&own_release)
            .unwrap()
            .host,
        "web1"
    );
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("own.txt") && listing.contains("passwd"),
        "{listing}"
    );
    server.stop().await;
}

#[tokio::test]
async fn rust_client_gets_the_same_refusals() {
    let server = server().await;
    let s = server.client("web1").await.unwrap();
    s.upload_report("r1", b"first").await.unwrap();

    let open_read = |path: &'static str| {
        let sftp = s.sftp();
        async move {
            sftp.open(path, OpenFlags::READ, FileAttributes::empty())
                .await
                .map(|_| ())
                .map_err(|e| match e {
                    russh_sftp::client::error::Error::Status(st) => st.status_code,
                    other => panic!("{path}: {other}"),
                })
        }
    };
    use StatusCode::{NoSuchFile, PermissionDenied};
    let cases = [
        ("../../etc/passwd", PermissionDenied),
        ("/../etc/passwd", PermissionDenied),
        ("/etc/passwd", NoSuchFile),
        ("/files/passwd", PermissionDenied),
        ("/files/web2-release", PermissionDenied),
        ("/files/web2-dir/release", PermissionDenied),
        ("/files/proc", PermissionDenied),
        ("/reports/r1", PermissionDenied),
    ];
    for (path, want) in cases {
        assert_eq!(open_read(path).await, Err(want), "{path}");
    }
    assert_eq!(open_read("/files/own-link").await, Ok(()));

    let sftp = s.sftp();
    let w = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    assert_eq!(
        code(sftp.open("/release", w, FileAttributes::empty()).await),
        PermissionDenied
    );
    assert_eq!(
        code(sftp.open("/files/x", w, FileAttributes::empty()).await),
        PermissionDenied
    );
    assert_eq!(
        code(sftp.open("/reports/r1", w, FileAttributes::empty()).await),
        PermissionDenied
    );
    assert_eq!(code(sftp.remove("/reports/r1").await), PermissionDenied);
    assert_eq!(code(sftp.remove("/release").await), PermissionDenied);
    assert_eq!(
        code(sftp.rename("/reports/r1", "/reports/r2").await),
        PermissionDenied
    );
    assert_eq!(
        code(sftp.mkdir("/reports/d", FileAttributes::empty()).await),
        PermissionDenied
    );
    assert_eq!(
        code(sftp.symlink("/reports/l", "/etc/passwd").await),
        PermissionDenied
    );
    assert_eq!(
        code(sftp.setstat("/reports/r1", FileAttributes::empty()).await),
        PermissionDenied
    );
    assert_eq!(
        code(sftp.stat("/reports/r1").await),
        NoSuchFile,
        "reports are write-only"
    );
    assert_eq!(code(sftp.realpath("/..").await), PermissionDenied);
    assert_eq!(
        sftp.realpath("files/../release").await.unwrap().files[0].filename,
        "/release"
    );

    let err = s.upload_report("r1", b"again").await.unwrap_err();
    assert_eq!(status_of(&err), Some(PermissionDenied), "{err}");
    let err = s
        .upload_report("big", &vec![1u8; 2 * CAP as usize])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    assert_eq!(
        server.dir.reports_on_disk("web1"),
        vec!["r1"],
        "partial upload removed"
    );
    assert_eq!(
        std::fs::read(server.dir.host_dir("web1").join("reports/r1")).unwrap(),
        b"first"
    );
    // Exactly at the cap is fine.
    s.upload_report("at-cap", &vec![2u8; CAP as usize])
        .await
        .unwrap();
    s.close().await;

    // web3's release is a symlink to web2's, web4's directory is a link to web2's: refused.
    for host in ["web3", "web4"] {
        let s = server.client(host).await.unwrap();
        let err = s.read_release().await.unwrap_err();
        assert_eq!(status_of(&err), Some(PermissionDenied), "{host}: {err}");
        s.close().await;
    }
    assert!(server.state.metrics().snapshot().requests_refused >= 15);
    server.stop().await;
}

/// The status a raw request got (`Ok` when it succeeded).
fn code<T>(r: Result<T, russh_sftp::client::error::Error>) -> StatusCode {
    match r {
        Err(russh_sftp::client::error::Error::Status(st)) => st.status_code,
        Err(other) => panic!("{other}"),
        Ok(_) => StatusCode::Ok,
    }
}
