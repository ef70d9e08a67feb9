//! Our narinfo and key code must agree with Nix 2.8 exactly: golden data here is made by
//! Nix itself (`nix key generate-secret`, `nix copy --to file://...?secret-key=`,
//! `nix store sign`), never written by hand.
//!
//! - every narinfo Nix writes parses, re-renders byte-identically and verifies with Nix's
//!   public key; the narinfo we build for the same path is the same bytes;
//! - the NAR files Nix writes are our NARs (plain, and zstd once decompressed);
//! - our signature of a path is the one `nix store sign` adds;
//! - our key parser accepts Nix's keys and derives Nix's public key.
//!
//! Every test works in a Nix store of its own (`local?root=`): no root needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::BTreeMap;
use std::path::Path;

use bento::nix::narinfo::{self, Compression, FileInfo};
use bento::nix::store::{self, StorePath};
use bento::nix::{PathInfo, PublicKey, SecretKey, Sha256Hash, nar};
use harness::nix::{Built, Drv, Nix, nonce};

/// A closure with the shapes a narinfo can describe: no references, references, a
/// reference to itself, several references; every path has a deriver.
fn closure(nix: &Nix) -> Built {
    nix.build(&[
        Drv::new("dep", "echo hello > $out"),
        Drv::new("dep2", "mkdir $out; echo $dep > $out/d").dep("dep"),
        Drv::new(
            "selfref",
            "mkdir $out; echo $out > $out/me; echo $dep > $out/d",
        )
        .dep("dep"),
        Drv::new(
            "top",
            "mkdir $out; echo $dep $dep2 $selfref > $out/refs; printf x > $out/x",
        )
        .dep("dep")
        .dep("dep2")
        .dep("selfref"),
    ])
}

/// Paths without a deriver but with a content address: `nix store add-file` (flat) and
/// `nix store add-path` (recursive).
fn content_addressed(nix: &Nix, dir: &Path, nonce: &str) -> Vec<String> {
    let file = dir.join(format!("added-{nonce}.txt"));
    std::fs::write(&file, format!("added file {nonce}\n")).unwrap();
    let tree = dir.join(format!("added-tree-{nonce}"));
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/f"), nonce).unwrap();
    vec![
        nix.run(nix.nix().args(["store", "add-file"]).arg(&file))
            .stdout_text(),
        nix.run(nix.nix().args(["store", "add-path"]).arg(&tree))
            .stdout_text(),
    ]
}

#[test]
fn nix_made_keys_parse_and_give_nix_public_key() {
    let nix = Nix::chroot();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..8 {
        let name = format!("cache.example.org-{i}");
        let key = nix.generate_key(&name, dir.path());
        let sk = SecretKey::parse(&key.secret).unwrap();
        assert_eq!(sk.name(), name);
        assert_eq!(sk.public().to_string(), key.public);
        assert_eq!(sk.to_secret_string(), key.secret.trim());
        assert_eq!(PublicKey::parse(&key.public).unwrap(), sk.public());
        assert_eq!(SecretKey::load(&key.path).unwrap().public(), sk.public());
    }
}

#[test]
fn our_signature_is_the_one_nix_store_sign_adds() {
    let nix = Nix::chroot();
    let dir = tempfile::tempdir().unwrap();
    let nonce = nonce();
    let built = closure(&nix);
    let key = nix.generate_key(&format!("bento-test-{nonce}"), dir.path());
    let sk = SecretKey::parse(&key.secret).unwrap();

    let paths: Vec<StorePath> = built.paths.values().cloned().collect();
    let before = nix.pathinfo().query(&paths).unwrap();
    assert_eq!(before.len(), paths.len());
    for info in &before {
        let ours = narinfo::sign_path_info(info, &sk).to_nix_string();
        assert!(!info.signatures.contains(&ours), "signed before signing");
    }

    nix.run(
        nix.nix()
            .args(["store", "sign", "-k"])
            .arg(&key.path)
            .args(paths.iter().map(store::render)),
    );

    let after = nix.pathinfo().query(&paths).unwrap();
    assert_eq!(after.len(), paths.len());
    for info in &after {
        let ours = narinfo::sign_path_info(info, &sk).to_nix_string();
        let theirs: Vec<&String> = info
            .signatures
            .iter()
            .filter(|s| s.starts_with(&format!("{}:", sk.name())))
            .collect();
        assert_eq!(theirs, vec![&ours], "{}", store::render(&info.path));
        // And Nix's signature verifies with our verifier.
        let fp = narinfo::fingerprint(&info.path, &info.nar_hash, info.nar_size, &info.references);
        sk.public().verify(fp.as_bytes(), theirs[0]).unwrap();
    }
}

/// What one `nix copy --to file://` wrote: narinfo bytes by store path, and the cache dir.
struct NixCache {
    dir: tempfile::TempDir,
    narinfos: BTreeMap<String, Vec<u8>>,
}

fn nix_copy(nix: &Nix, secret: &Path, compression: &str, args: &[&str]) -> NixCache {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "file://{}?secret-key={}&compression={compression}",
        dir.path().display(),
        secret.display()
    );
    // Derivations are copied as themselves in a second call (`--derivation`); given a
    // .drv, `nix copy` copies its outputs.
    let (drvs, others): (Vec<&str>, Vec<&str>) = args.iter().partition(|a| a.ends_with(".drv"));
    nix.run(nix.nix().args(["copy", "--to", &url]).args(&others));
    if !drvs.is_empty() {
        nix.run(
            nix.nix()
                .args(["copy", "--derivation", "--to", &url])
                .args(&drvs),
        );
    }
    let mut narinfos = BTreeMap::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "narinfo") {
            let bytes = std::fs::read(&p).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            let sp = text
                .lines()
                .find_map(|l| l.strip_prefix("StorePath: "))
                .unwrap()
                .to_owned();
            narinfos.insert(sp, bytes);
        }
    }
    NixCache { dir, narinfos }
}

#[test]
fn narinfos_written_by_nix_parse_render_and_verify() {
    let nix = Nix::chroot();
    let dir = tempfile::tempdir().unwrap();
    let nonce = nonce();
    let built = closure(&nix);
    let added = content_addressed(&nix, dir.path(), &nonce);
    let key = nix.generate_key(&format!("bento-test-{nonce}"), dir.path());
    let public = PublicKey::parse(&key.public).unwrap();
    let sk = SecretKey::parse(&key.secret).unwrap();

    // The closure of top, the CA paths, and top's derivation (a text-hashed CA path with
    // references).
    let top_drv = nix
        .run(
            nix.cmd("nix-store")
                .args(["--query", "--deriver", &built.abs("top")]),
        )
        .stdout_text();
    let mut args: Vec<&str> = vec![];
    let top = built.abs("top");
    args.push(&top);
    args.extend(added.iter().map(String::as_str));
    args.push(&top_drv);

    // What the store says about each of them and their closures (which `nix copy` copies
    // too), through our query.
    let mut wanted: Vec<StorePath> = built.paths.values().cloned().collect();
    wanted.extend(added.iter().map(|p| store::parse(p).unwrap()));
    wanted.push(store::parse(&top_drv).unwrap());
    let infos: BTreeMap<String, PathInfo> = nix
        .pathinfo()
        .closure(&wanted)
        .unwrap()
        .into_iter()
        .map(|i| (store::render(&i.path), i))
        .collect();
    for p in &wanted {
        assert!(
            infos.contains_key(&store::render(p)),
            "{p:?} not in closure"
        );
    }
    // The closure of the derivation holds the other derivations and the build scripts.
    assert!(infos.keys().any(|p| p.ends_with("-dep.drv")));
    assert!(infos.keys().any(|p| p.ends_with("-top.sh")));
    assert!(infos[&top_drv].ca.as_deref().unwrap().starts_with("text:"));
    assert!(
        infos[&added[0]]
            .ca
            .as_deref()
            .unwrap()
            .starts_with("fixed:sha256:")
    );
    assert!(
        infos[&added[1]]
            .ca
            .as_deref()
            .unwrap()
            .starts_with("fixed:r:sha256:")
    );
    assert!(
        infos[&built.abs("selfref")]
            .references
            .contains(built.path("selfref"))
    );

    for compression in ["none", "zstd", "xz", "bzip2", "br"] {
        let cache = nix_copy(&nix, &key.path, compression, &args);
        assert_eq!(
            cache.narinfos.keys().collect::<Vec<_>>(),
            infos.keys().collect::<Vec<_>>(),
            "compression={compression}"
        );
        for (path, bytes) in &cache.narinfos {
            let what = format!("{path} (compression={compression})");
            let ni = narinfo::parse(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                String::from_utf8_lossy(&narinfo::render(&ni)),
                String::from_utf8_lossy(bytes),
                "{what}: rendering differs from Nix's"
            );
            narinfo::verify(&ni, &public).unwrap_or_else(|e| panic!("{what}: {e}"));

            // The record describes what the store holds.
            let info = &infos[path];
            assert_eq!(store::render(ni.store_path()), *path);
            assert_eq!(
                Sha256Hash::from_nix_hash(ni.nar_hash()).unwrap(),
                info.nar_hash
            );
            assert_eq!(ni.nar_size(), info.nar_size);
            assert_eq!(ni.references(), &info.references, "{what}");
            assert_eq!(ni.deriver(), info.deriver.as_ref(), "{what}");
            assert_eq!(
                ni.content_address().map(|c| c.to_nix_string()),
                info.ca.clone(),
                "{what}"
            );
            assert_eq!(ni.compression().as_str(), compression);

            // The file it points to is what FileHash and FileSize say, and it holds our NAR.
            let file = std::fs::read(cache.dir.path().join(ni.url())).unwrap();
            let file_info = FileInfo {
                hash: Sha256Hash::from_nix_hash(ni.file_hash().unwrap()).unwrap(),
                size: ni.file_size().unwrap(),
            };
            assert_eq!(file_info.hash, Sha256Hash::of(&file), "{what}");
            assert_eq!(file_info.size, file.len() as u64, "{what}");
            let mut our_nar = Vec::new();
            nar::dump(&nix.real(path), &mut our_nar).unwrap();
            match ni.compression() {
                Compression::None => assert!(file == our_nar, "{what}: NAR differs"),
                Compression::Zstd => {
                    let plain = zstd::decode_all(file.as_slice()).unwrap();
                    assert!(plain == our_nar, "{what}: NAR differs");
                }
                _ => {}
            }

            // The narinfo we build for the same path, URL and file is Nix's, byte for byte.
            let ours = narinfo::build(
                info,
                ni.url(),
                ni.compression().clone(),
                Some(file_info),
                Some(&sk),
            )
            .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&narinfo::render(&ours)),
                String::from_utf8_lossy(bytes),
                "{what}: our narinfo differs from Nix's"
            );
        }
    }
}
