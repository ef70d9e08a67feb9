//! The agent's Nix remembers the narinfos it found (Nix's positive narinfo cache, on disk,
//! a month by default), which spares asking for each one several times per copy. A fleet
//! key rotation must never meet one of them: the cache then serves the same paths signed
//! by the new key, at the same URL, and a remembered narinfo carries only the old key's
//! signature, which Nix refuses. The agent keeps one narinfo cache per fleet key.
//!
//! Real Nix, a real `bento` cache behind one address whose server (and key) changes, the
//! agent's own copy command into fresh stores. Positive control: the same copy on the
//! narinfo cache of the old key is refused, so the memory the test avoids is really there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bento::agent::config::Agent;
use bento::agent::system::{copy_command, narinfo_cache_dir};
use harness::nix::{NIX_CONFIG, Nix, build_fan, nonce};
use harness::servers::{CacheServer, ServerDir};
use tokio::net::{TcpListener, TcpStream};

/// One address in front of a server that the test can replace (a restart with a new key
/// keeps its URL, and Nix keys its narinfo memory by URL).
async fn front(backend: Arc<Mutex<SocketAddr>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let to = *backend.lock().unwrap();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

fn agent(cache: SocketAddr, key: &bento::nix::SecretKey, state_dir: &Path) -> Agent {
    let text = format!(
        "host = \"web1\"\nserver = \"127.0.0.1:1\"\nserver_host_key = \"{}\"\n\
         ssh_key = \"/nonexistent\"\ncache_url = \"http://{cache}\"\n\
         fleet_public_key = \"{}\"\nstate_dir = \"{}\"\n",
        harness::keys::made_up_public_key(1),
        key.public(),
        state_dir.display()
    );
    Agent::parse(Path::new("agent.toml"), &text).unwrap()
}

/// The agent's copy of `top` into the fresh store `dest`, with Nix's default positive
/// narinfo TTL (the tests' usual settings turn it off).
fn copy(agent: &Agent, top: &str, dest: &Nix) -> bento::nix::Command {
    let config: String = NIX_CONFIG
        .lines()
        .filter(|l| !l.starts_with("narinfo-cache-positive-ttl"))
        .collect::<Vec<_>>()
        .join("\n");
    copy_command(agent, top)
        .args(["--to", &dest.store_url()])
        .env("NIX_CONFIG", config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_never_meets_a_remembered_narinfo() {
    if !harness::needs_root("the machine's Nix store, which the cache serves") {
        return;
    }
    let top = build_fan(&format!("rotate-{}", nonce()), 3, 64);
    let state = tempfile::tempdir().unwrap();

    let old = ServerDir::new();
    old.publish("web1", 1, &top);
    let old_server = CacheServer::start(old.cache_config()).await;
    let backend = Arc::new(Mutex::new(old_server.addr));
    let url = front(backend.clone()).await;
    let before = agent(url, &old.key, state.path());
    let judge = Nix::new();
    judge.run(copy(&before, &top, &Nix::chroot()));
    let remembered = narinfo_cache_dir(&before);
    assert!(
        remembered.join("nix/binary-cache-v6.sqlite").exists(),
        "Nix kept no narinfo cache in {}",
        remembered.display()
    );

    // The server restarts with a new fleet key (same key name), at the same URL.
    let new = ServerDir::new();
    assert_ne!(new.key.public().to_string(), old.key.public().to_string());
    new.publish("web1", 1, &top);
    let new_server = CacheServer::start(new.cache_config()).await;
    *backend.lock().unwrap() = new_server.addr;
    drop(old_server);
    let after = agent(url, &new.key, state.path());
    assert_ne!(narinfo_cache_dir(&after), remembered);

    // Positive control: on the old key's narinfo cache, Nix uses what it remembered.
    let stale = copy(&after, &top, &Nix::chroot()).env("XDG_CACHE_HOME", &remembered);
    judge.refuses(stale, "lacks a valid signature");

    // The agent, on its own narinfo cache for the new key, copies the whole closure.
    let dest = Nix::chroot();
    judge.run(copy(&after, &top, &dest));
    for path in harness::nix::closure(&top) {
        assert!(dest.has(&path), "{path} was not copied");
    }
}
