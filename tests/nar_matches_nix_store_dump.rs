//! Our NAR encoder (`nix::nar`) must be byte-identical to `nix-store --dump` for every
//! shape a store path can take, and its hash and size must be the NarHash and NarSize that
//! Nix records: otherwise hosts refuse the NARs Bento serves (hash mismatch).
//!
//! Each test builds its path in a Nix store of its own (`local?root=`), so no root is
//! needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;

use bento::nix::store;
use bento::nix::{Sha256Hash, nar};
use harness::nix::{Drv, Nix};

/// Entries in the big directory; more than 10,000.
const MANY: usize = 10_050;

const SHAPES: &str = r#"set -e
mkdir "$out"
cd "$out"
# A file name that is not UTF-8 (bytes 0xff 0xfe), and a directory named so too.
printf 'not utf-8\n' > "$(printf 'bad-\377\376')"
mkdir "$(printf '\377dir')"
printf 'inside\n' > "$(printf '\377dir')/inner"
# A symlink whose target is 3000 bytes long (750 times "abc/").
ln -s "$(head -c 3000 /dev/zero | tr '\0' x | sed 's/xxxx/abc\//g')" long-link
ln -s plain relative-link
ln -s /nix/store/00000000000000000000000000000000-dangling absolute-link
ln -s sub dir-link
# Empty files and empty directories, at the top and nested.
: > empty
: > empty-exe
chmod +x empty-exe
mkdir empty-dir
mkdir -p sub/deeper/deepest/empty-too
# Executable and non-executable files; sizes that need padding (not multiples of 8).
printf '#!/bin/sh\necho hi\n' > exe
chmod 755 exe
printf 'plain text' > plain
chmod 644 plain
printf '1234567' > sub/seven
printf '12345678' > sub/eight
printf '123456789' > sub/deeper/nine
# Names whose byte order differs from other orders: NAR sorts by bytes.
for n in B a _ .hidden Z9 a.b a-b a0 aa A "$(printf '\303\244')" "$(printf '\177')"; do
  printf '%s' "$n" > "sorted-$n"
done
# A file larger than one write buffer, with random content.
head -c 1048583 /dev/urandom > big
"#;

const MANY_SCRIPT: &str = r#"set -e
mkdir -p "$out/many"
cd "$out/many"
# Not zero-padded: byte order ("10" < "9") differs from numeric order.
seq 0 10049 | xargs touch
mkdir 5000-dir
echo x > 5000-dir/file
"#;

/// The derivation of each path this file checks, by name.
fn drv(name: &str) -> Drv {
    match name {
        "nar-shapes" => Drv::new(name, SHAPES),
        "nar-many" => Drv::new(name, MANY_SCRIPT),
        "nar-root-file" => Drv::new(name, "printf 'a single file' > $out"),
        "nar-root-exe" => Drv::new(name, "printf '#!/bin/sh\\nexit 0\\n' > $out; chmod +x $out"),
        "nar-root-empty" => Drv::new(name, ": > $out"),
        "nar-root-symlink" => Drv::new(name, "ln -s /etc/hostname $out"),
        other => panic!("no derivation {other}"),
    }
}

/// A store of its own holding the path `name`, and the path.
fn built(name: &str) -> (Nix, String) {
    let nix = Nix::chroot();
    let path = nix.build(&[drv(name)]).abs(name);
    (nix, path)
}

/// Asserts that our NAR of `name` is `nix-store --dump`'s, byte for byte, and that our
/// hash and size are Nix's NarHash and NarSize.
fn assert_matches_nix(nix: &Nix, path: &str) {
    let real = nix.real(path);
    let theirs = nix
        .run(nix.cmd("nix-store").arg("--dump").arg(&real))
        .stdout;
    let mut ours = Vec::new();
    nar::dump(&real, &mut ours).unwrap();

    assert_eq!(
        (Sha256Hash::of(&ours), ours.len()),
        (Sha256Hash::of(&theirs), theirs.len()),
        "NAR of {path} differs from nix-store --dump"
    );
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!("NAR of {path} differs from nix-store --dump at byte {i}");
    }
    assert_eq!(ours, theirs);

    // Streaming hash and one-pass dump agree with the bytes.
    let (hash, size) = nar::hash(&real).unwrap();
    assert_eq!((hash, size), (Sha256Hash::of(&theirs), theirs.len() as u64));
    let (hash2, size2, copy) = nar::dump_hashed(&real, Vec::new()).unwrap();
    assert_eq!((hash2, size2), (hash, size));
    assert_eq!(copy, theirs);

    // And they are what Nix recorded when it registered the path.
    let infos = nix
        .pathinfo()
        .query(&[store::parse(path).unwrap()])
        .unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(store::render(&infos[0].path), path);
    assert_eq!(infos[0].nar_hash, hash, "NarHash of {path}");
    assert_eq!(infos[0].nar_size, size, "NarSize of {path}");
}

#[test]
fn every_file_shape_dumps_like_nix_store_dump() {
    let (nix, path) = built("nar-shapes");
    // Positive control: the shapes this test is about really are in the path.
    let root = nix.real(&path);
    let names: Vec<Vec<u8>> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert!(names.contains(&b"bad-\xff\xfe".to_vec()), "{names:?}");
    assert!(names.iter().any(|n| std::str::from_utf8(n).is_err()));
    assert_eq!(
        std::fs::read_link(root.join("long-link"))
            .unwrap()
            .as_os_str()
            .len(),
        3000
    );
    assert_eq!(std::fs::metadata(root.join("empty")).unwrap().len(), 0);
    assert_eq!(
        std::fs::read_dir(root.join("empty-dir")).unwrap().count(),
        0
    );
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_ne!(mode("exe") & 0o111, 0);
    assert_ne!(mode("empty-exe") & 0o111, 0);
    assert_eq!(mode("plain") & 0o111, 0);
    assert!(std::fs::metadata(root.join("big")).unwrap().len() > 1 << 20);

    assert_matches_nix(&nix, &path);
}

#[test]
fn a_directory_with_more_than_10000_entries_dumps_like_nix_store_dump() {
    let (nix, path) = built("nar-many");
    let many = nix.real(&path).join("many");
    assert_eq!(std::fs::read_dir(many).unwrap().count(), MANY + 1);
    assert_matches_nix(&nix, &path);
}

#[test]
fn a_store_path_that_is_a_single_file_dumps_like_nix_store_dump() {
    let (nix, path) = built("nar-root-file");
    assert_matches_nix(&nix, &path);
}

#[test]
fn a_store_path_that_is_an_executable_file_dumps_like_nix_store_dump() {
    let (nix, path) = built("nar-root-exe");
    assert_matches_nix(&nix, &path);
}

#[test]
fn a_store_path_that_is_an_empty_file_dumps_like_nix_store_dump() {
    let (nix, path) = built("nar-root-empty");
    assert_matches_nix(&nix, &path);
}

#[test]
fn a_store_path_that_is_a_symlink_dumps_like_nix_store_dump() {
    let (nix, path) = built("nar-root-symlink");
    assert!(
        std::fs::symlink_metadata(nix.real(&path))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_matches_nix(&nix, &path);
}
