//! Our NAR encoder (`nix::nar`) must be byte-identical to `nix-store --dump` for every
//! shape a store path can take, and its hash and size must be the NarHash and NarSize that
//! Nix records: otherwise hosts refuse the NARs Bento serves (hash mismatch).
//!
//! The paths are built once per run of this file (one `nix-build`); they do not depend on
//! the run, so a second run finds them already built.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::OnceLock;

use bento::nix::store;
use bento::nix::{Sha256Hash, nar};
use common::{Built, Drv, Nix};

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

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let nix = Nix::new();
        nix.build(
            &[
                Drv::new("nar-shapes", SHAPES),
                Drv::new("nar-many", MANY_SCRIPT),
                Drv::new("nar-root-file", "printf 'a single file' > $out"),
                Drv::new(
                    "nar-root-exe",
                    "printf '#!/bin/sh\\nexit 0\\n' > $out; chmod +x $out",
                ),
                Drv::new("nar-root-empty", ": > $out"),
                Drv::new("nar-root-symlink", "ln -s /etc/hostname $out"),
            ],
            None,
        )
    })
}

/// Asserts that our NAR of `name` is `nix-store --dump`'s, byte for byte, and that our
/// hash and size are Nix's NarHash and NarSize.
fn assert_matches_nix(name: &str) {
    if !common::root_or_skip(name) {
        return;
    }
    let built = built();
    let path = built.abs(name);
    let nix = Nix::new();

    let theirs = nix.run(nix.cmd("nix-store").args(["--dump", &path])).stdout;
    let mut ours = Vec::new();
    nar::dump(Path::new(&path), &mut ours).unwrap();

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
    let (hash, size) = nar::hash(Path::new(&path)).unwrap();
    assert_eq!((hash, size), (Sha256Hash::of(&theirs), theirs.len() as u64));
    let (hash2, size2, copy) = nar::dump_hashed(Path::new(&path), Vec::new()).unwrap();
    assert_eq!((hash2, size2), (hash, size));
    assert_eq!(copy, theirs);

    // And they are what Nix recorded when it registered the path.
    let infos = nix.store(None).query(&[built.path(name).clone()]).unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(store::render(&infos[0].path), path);
    assert_eq!(infos[0].nar_hash, hash, "NarHash of {path}");
    assert_eq!(infos[0].nar_size, size, "NarSize of {path}");
}

#[test]
fn every_file_shape_dumps_like_nix_store_dump() {
    if !common::root_or_skip("every_file_shape_dumps_like_nix_store_dump") {
        return;
    }
    // Positive control: the shapes this test is about really are in the path.
    let root = std::path::PathBuf::from(built().abs("nar-shapes"));
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

    assert_matches_nix("nar-shapes");
}

#[test]
fn a_directory_with_more_than_10000_entries_dumps_like_nix_store_dump() {
    if !common::root_or_skip("a_directory_with_more_than_10000_entries_dumps_like_nix") {
        return;
    }
    let many = Path::new(&built().abs("nar-many")).join("many");
    assert_eq!(std::fs::read_dir(many).unwrap().count(), MANY + 1);
    assert_matches_nix("nar-many");
}

#[test]
fn a_store_path_that_is_a_single_file_dumps_like_nix_store_dump() {
    assert_matches_nix("nar-root-file");
}

#[test]
fn a_store_path_that_is_an_executable_file_dumps_like_nix_store_dump() {
    assert_matches_nix("nar-root-exe");
}

#[test]
fn a_store_path_that_is_an_empty_file_dumps_like_nix_store_dump() {
    assert_matches_nix("nar-root-empty");
}

#[test]
fn a_store_path_that_is_a_symlink_dumps_like_nix_store_dump() {
    if !common::root_or_skip("a_store_path_that_is_a_symlink_dumps_like_nix_store_dump") {
        return;
    }
    let path = built().abs("nar-root-symlink");
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_matches_nix("nar-root-symlink");
}
