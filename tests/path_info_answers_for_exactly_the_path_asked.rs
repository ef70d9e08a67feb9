//! `pathinfo::Store` must answer for exactly the store path it was asked about, from the
//! store alone:
//! - given a `.drv`, Nix 2.8's `nix path-info` answers for the derivation's *outputs*
//!   (or says an output is not valid) unless told `--derivation`, and given an output with
//!   that flag it answers for the *deriver*: a query must get neither wrong;
//! - given a path that is not valid, `nix path-info` asks every configured substituter
//!   over the network: a query must not (an offline host would stall; a server would leak
//!   what it looks up).
//!
//! Every test works in a Nix store of its own (`local?root=`): no root needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bento::nix::pathinfo::PathInfoError;
use bento::nix::store::{self, StorePath};
use harness::nix::{Drv, Nix, nonce};

#[test]
fn a_derivation_is_answered_for_itself_and_an_output_for_itself() {
    let nix = Nix::chroot();
    let built = nix.build(&[
        Drv::new("dep", "echo dep > $out"),
        Drv::new("top", "echo $dep > $out").dep("dep"),
    ]);
    let top_drv = nix
        .run(
            nix.cmd("nix-store")
                .args(["--query", "--deriver", &built.abs("top")]),
        )
        .stdout_text();
    let top_drv = store::parse(&top_drv).unwrap();
    let top = built.path("top").clone();

    // Asked about both at once, the answer is about both, each for itself.
    let mut infos = nix
        .pathinfo()
        .query(&[top_drv.clone(), top.clone()])
        .unwrap();
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    let mut want = vec![top_drv.clone(), top.clone()];
    want.sort();
    assert_eq!(
        infos.iter().map(|i| i.path.clone()).collect::<Vec<_>>(),
        want
    );
    let drv_info = infos.iter().find(|i| i.path == top_drv).unwrap();
    assert!(drv_info.ca.as_deref().unwrap().starts_with("text:"));
    let out_info = infos.iter().find(|i| i.path == top).unwrap();
    assert_eq!(out_info.deriver.as_ref(), Some(&top_drv));
    assert!(out_info.references.contains(built.path("dep")));

    // The closure of a derivation is its build closure (derivations and sources), not
    // the closure of its outputs.
    let closure = nix
        .pathinfo()
        .closure(std::slice::from_ref(&top_drv))
        .unwrap();
    let names: Vec<&str> = closure.iter().map(|i| i.path.name()).collect();
    assert!(names.contains(&"top.drv"), "{names:?}");
    assert!(names.contains(&"dep.drv"), "{names:?}");
    assert!(!names.contains(&"top"), "{names:?}");
}

#[test]
fn a_derivation_whose_outputs_were_never_built_is_still_valid() {
    let nix = Nix::chroot();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unbuilt.nix");
    std::fs::write(
        &file,
        format!(
            "derivation {{ name = \"unbuilt\"; system = builtins.currentSystem; \
             builder = \"/bin/sh\"; args = [ \"-c\" \"exit 1\" ]; n = \"{}\"; }}",
            nonce()
        ),
    )
    .unwrap();
    let drv = nix.run(nix.cmd("nix-instantiate").arg(&file)).stdout_text();
    let drv = store::parse(&drv).unwrap();
    let infos = nix.pathinfo().query(std::slice::from_ref(&drv)).unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].path, drv);
}

/// A substituter on 127.0.0.1 that counts the requests it gets and answers each with 404.
struct CountingSubstituter {
    port: u16,
    requests: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingSubstituter {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                if buf[..n].starts_with(b"STOP") {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        CountingSubstituter {
            port,
            requests,
            thread: Some(thread),
        }
    }

    /// `nix`'s settings with this substituter added.
    fn nix_config(&self, nix: &Nix) -> String {
        format!(
            "{}\nsubstituters = http://127.0.0.1:{}\nconnect-timeout = 5",
            nix.config(),
            self.port
        )
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for CountingSubstituter {
    fn drop(&mut self) {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = c.write_all(b"STOP");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_missing_path_is_not_valid_and_no_substituter_is_asked() {
    let nix = Nix::chroot();
    let substituter = CountingSubstituter::start();
    let missing: StorePath =
        store::parse(&format!("/nix/store/{}-missing", "0".repeat(32))).unwrap();
    let missing_drv: StorePath =
        store::parse(&format!("/nix/store/{}-missing.drv", "1".repeat(32))).unwrap();

    let queries = nix
        .pathinfo()
        .env("NIX_CONFIG", substituter.nix_config(&nix));
    for path in [&missing, &missing_drv] {
        match queries.query(std::slice::from_ref(path)) {
            Err(PathInfoError::NotValid(p)) => assert_eq!(p, store::render(path)),
            other => panic!("{path:?}: {other:?}"),
        }
        match queries.closure(std::slice::from_ref(path)) {
            Err(PathInfoError::NotValid(p)) => assert_eq!(p, store::render(path)),
            other => panic!("{path:?}: {other:?}"),
        }
    }
    assert_eq!(substituter.requests(), 0, "a query asked the substituter");

    // Positive control: plain `nix path-info` does ask it, so the count above means
    // something.
    let out = nix.run(
        nix.nix()
            .args(["path-info", "--json", &store::render(&missing)])
            .env("NIX_CONFIG", substituter.nix_config(&nix)),
    );
    assert!(out.stdout_text().contains("\"valid\":false"));
    assert!(substituter.requests() > 0, "the control did not reach it");
}
