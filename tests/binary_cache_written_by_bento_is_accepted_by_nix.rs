//! A binary cache written entirely by our code (NARs from `nix::nar`, narinfos from
//! `nix::narinfo::build` signed with our key) must be accepted by the real Nix client with
//! `require-sigs = true` and only our key trusted; and every kind of tampering must be
//! refused by Nix, each on a fresh destination store: a flipped NAR byte, a dropped
//! reference under the old signature, an altered signature, a signature by another key of
//! the same name, no signature.
//!
//! The judge is Nix itself: the agent's own `nix copy --from file://CACHE` command (its
//! trust options are what is tested) into a store of its own, and `nix store verify`.
//! Source and destination stores are `local?root=` stores of the test: no root needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::path::Path;

use base64::Engine as _;
use bento::agent::config::Agent;
use bento::nix::narinfo::{self, Compression, FileInfo};
use bento::nix::pathinfo::PathInfoError;
use bento::nix::store::{self, StorePath};
use bento::nix::{PathInfo, SecretKey, nar};
use harness::nix::{Built, Drv, Nix, nonce};

const MARKER: &str = "bento-marker-0123456789";

fn closure(nix: &Nix) -> Built {
    nix.build(&[
        Drv::new("dep", "echo hello > $out"),
        Drv::new("dep2", "mkdir $out; echo $dep > $out/d").dep("dep"),
        Drv::new(
            "odd",
            r#"set -e
mkdir $out; cd $out
printf 'x' > "$(printf '\377\376')"
ln -s "$(head -c 3000 /dev/zero | tr '\0' x | sed 's/xxxx/abc\//g')" long-link
mkdir empty-dir; : > empty
printf '#!/bin/sh\n' > exe; chmod +x exe
echo $out > self
"#,
        ),
        Drv::new(
            "top",
            &format!("mkdir $out; echo $dep $dep2 $odd > $out/refs; echo {MARKER} > $out/m"),
        )
        .dep("dep")
        .dep("dep2")
        .dep("odd"),
    ])
}

/// One path as our cache serves it; tests tamper with these before they are written.
struct Entry {
    info: PathInfo,
    nar: Vec<u8>,
    narinfo: String,
}

/// Builds the cache entries of `closure` (in `nix`'s store) with our code, signed by `key`.
fn entries(nix: &Nix, closure: &[PathInfo], key: &SecretKey) -> Vec<Entry> {
    closure
        .iter()
        .map(|info| {
            let path = store::render(&info.path);
            let (hash, size, nar) = nar::dump_hashed(&nix.real(&path), Vec::new()).unwrap();
            assert_eq!((hash, size), (info.nar_hash, info.nar_size), "{path}");
            let url = format!("nar/{}.nar", hash.nix32_digest());
            let ni = narinfo::build(
                info,
                &url,
                Compression::None,
                Some(FileInfo { hash, size }),
                Some(key),
            )
            .unwrap();
            Entry {
                info: info.clone(),
                nar,
                narinfo: String::from_utf8(narinfo::render(&ni)).unwrap(),
            }
        })
        .collect()
}

fn write_cache(dir: &Path, entries: &[Entry]) {
    std::fs::create_dir_all(dir.join("nar")).unwrap();
    std::fs::write(
        dir.join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n",
    )
    .unwrap();
    for e in entries {
        let ni = narinfo::parse(e.narinfo.as_bytes()).unwrap();
        std::fs::write(dir.join(ni.url()), &e.nar).unwrap();
        std::fs::write(
            dir.join(format!("{}.narinfo", store::hash_part(&e.info.path))),
            &e.narinfo,
        )
        .unwrap();
    }
}

/// Everything one attempt needs: the paths in a store of their own, and our key.
struct Fixture {
    nix: Nix,
    built: Built,
    closure: Vec<PathInfo>,
    key: SecretKey,
    top: String,
}

/// One copy: the cache it reads, and the store it copies into.
struct Copy {
    _cache: tempfile::TempDir,
    dest: Nix,
}

impl Fixture {
    fn new() -> Self {
        let nix = Nix::chroot();
        let built = closure(&nix);
        let closure = nix
            .pathinfo()
            .closure(&[built.path("top").clone()])
            .unwrap();
        assert_eq!(closure.len(), 4);
        let key = SecretKey::generate(&format!("bento-fleet-{}", nonce())).unwrap();
        let top = built.abs("top");
        Fixture {
            nix,
            built,
            closure,
            key,
            top,
        }
    }

    fn entries(&self) -> Vec<Entry> {
        entries(&self.nix, &self.closure, &self.key)
    }

    fn entry<'a>(&self, entries: &'a mut [Entry], name: &str) -> &'a mut Entry {
        let path = self.built.path(name);
        entries.iter_mut().find(|e| &e.info.path == path).unwrap()
    }

    /// The agent of a host that trusts our key, reading the cache at `cache_url`.
    fn agent(&self, cache_url: &str) -> Agent {
        let text = format!(
            "host = \"web1\"\nserver = \"127.0.0.1:1\"\nserver_host_key = \"{}\"\n\
             ssh_key = \"/nonexistent\"\ncache_url = \"{cache_url}\"\n\
             fleet_public_key = \"{}\"\n",
            harness::keys::made_up_public_key(1),
            self.key.public()
        );
        Agent::parse(Path::new("agent.toml"), &text).unwrap()
    }

    /// The agent's own copy command (`copy_command`: signatures required, only the fleet
    /// key trusted) from a cache of `entries` into a new store, on a fresh narinfo disk
    /// cache.
    fn copy(&self, entries: &[Entry]) -> (bento::nix::Command, Copy) {
        let cache = tempfile::tempdir().unwrap();
        write_cache(cache.path(), entries);
        let dest = Nix::chroot();
        let agent = self.agent(&format!("file://{}", cache.path().display()));
        let c = dest.prepare(
            bento::agent::system::copy_command(&agent, &self.top).args(["--to", &dest.store_url()]),
        );
        (
            c,
            Copy {
                _cache: cache,
                dest,
            },
        )
    }

    /// Runs a copy that Nix must refuse with `needle`, then checks that the top path did
    /// not become valid in the destination.
    fn refused(&self, entries: &[Entry], needle: &str) {
        let (c, copy) = self.copy(entries);
        let stderr = self.nix.refuses(c, needle);
        assert!(stderr.contains(&format!("'{}'", self.top)), "{stderr}");
        eprintln!("Nix refused, as it must:\n{stderr}");
        match copy
            .dest
            .pathinfo()
            .query(&[self.built.path("top").clone()])
        {
            Err(PathInfoError::NotValid(p)) => assert_eq!(p, self.top),
            other => panic!(
                "top must not be valid in {}: {other:?}",
                copy.dest.store_url()
            ),
        }
    }
}

#[test]
fn nix_copies_and_verifies_a_cache_written_by_bento() {
    let f = Fixture::new();
    let (c, copy) = f.copy(&f.entries());
    f.nix.run(c);
    let trusted = f.key.public().to_string();
    f.nix.run(
        copy.dest
            .nix()
            .args(["store", "verify", "-r", &f.top])
            .args(["--option", "trusted-public-keys", &trusted]),
    );
    // The destination holds the whole closure with our signature and Nix's own NarHash.
    let paths: Vec<StorePath> = f.closure.iter().map(|i| i.path.clone()).collect();
    let mut copied = copy.dest.pathinfo().query(&paths).unwrap();
    copied.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(copied.len(), f.closure.len());
    for (theirs, ours) in copied.iter().zip(&f.closure) {
        assert_eq!(theirs.path, ours.path);
        assert_eq!(theirs.nar_hash, ours.nar_hash);
        assert_eq!(theirs.references, ours.references);
        let sig = narinfo::sign_path_info(ours, &f.key).to_nix_string();
        assert!(theirs.signatures.contains(&sig), "{:?}", theirs.signatures);
    }
    // The odd shapes arrived intact.
    let odd = copy.dest.real(&f.built.abs("odd"));
    assert_eq!(
        std::fs::read_link(odd.join("long-link"))
            .unwrap()
            .as_os_str()
            .len(),
        3000
    );
}

#[test]
fn nix_refuses_a_nar_with_one_byte_flipped() {
    let f = Fixture::new();
    let mut entries = f.entries();
    let top = f.entry(&mut entries, "top");
    let at = top
        .nar
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())
        .unwrap();
    top.nar[at] ^= 0x01;
    f.refused(&entries, "hash mismatch");
}

#[test]
fn nix_refuses_a_narinfo_with_a_reference_dropped_under_the_old_signature() {
    let f = Fixture::new();
    let mut entries = f.entries();
    let dropped = store::render(f.built.path("dep2"));
    let dropped_base = dropped.trim_start_matches("/nix/store/").to_owned();
    let top = f.entry(&mut entries, "top");
    let before = top.narinfo.clone();
    top.narinfo = top
        .narinfo
        .lines()
        .map(|l| match l.strip_prefix("References: ") {
            Some(refs) => format!(
                "References: {}\n",
                refs.split(' ')
                    .filter(|r| *r != dropped_base)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(top.narinfo, before);
    let tampered = narinfo::parse(top.narinfo.as_bytes()).unwrap();
    assert_eq!(tampered.references().len(), 2);
    // Our verifier refuses it too.
    assert!(narinfo::verify(&tampered, &f.key.public()).is_err());
    f.refused(&entries, "lacks a valid signature");
}

fn replace_sig(entry: &mut Entry, sig: &str) {
    entry.narinfo = entry
        .narinfo
        .lines()
        .filter(|l| !l.starts_with("Sig: "))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + &(if sig.is_empty() {
            String::new()
        } else {
            format!("Sig: {sig}\n")
        });
}

#[test]
fn nix_refuses_a_signature_with_one_byte_altered() {
    let f = Fixture::new();
    let mut entries = f.entries();
    let b64 = base64::engine::general_purpose::STANDARD;
    let top = f.entry(&mut entries, "top");
    let sig = narinfo::sign_path_info(&top.info, &f.key);
    let mut bytes = b64.decode(&sig.encoded).unwrap();
    bytes[17] ^= 0x40;
    replace_sig(top, &format!("{}:{}", sig.key_name, b64.encode(&bytes)));
    let tampered = narinfo::parse(top.narinfo.as_bytes()).unwrap();
    assert!(narinfo::verify(&tampered, &f.key.public()).is_err());
    f.refused(&entries, "lacks a valid signature");
}

#[test]
fn nix_refuses_a_signature_by_another_key_of_the_same_name() {
    let f = Fixture::new();
    let mut entries = f.entries();
    let impostor = SecretKey::generate(f.key.name()).unwrap();
    assert_eq!(impostor.name(), f.key.name());
    let top = f.entry(&mut entries, "top");
    let sig = narinfo::sign_path_info(&top.info, &impostor).to_nix_string();
    replace_sig(top, &sig);
    let tampered = narinfo::parse(top.narinfo.as_bytes()).unwrap();
    assert!(narinfo::verify(&tampered, &f.key.public()).is_err());
    assert!(narinfo::verify(&tampered, &impostor.public()).is_ok());
    f.refused(&entries, "lacks a valid signature");
}

#[test]
fn nix_refuses_an_unsigned_narinfo() {
    let f = Fixture::new();
    let mut entries = f.entries();
    let top = f.entry(&mut entries, "top");
    replace_sig(top, "");
    assert!(!top.narinfo.contains("Sig:"));
    f.refused(&entries, "lacks a valid signature");
}
