//! One message per rule and Nix version: the 2.8 lines are what Debian's Nix 2.8.0 printed
//! here (docs of the research: fake caches tampered with one way each); the newer lines are
//! Nix's format strings of the version named, filled in.

use super::*;

const DEP: &str = "/nix/store/0svby7nmnsvmdjcq9r7dgqm0kmi9z8c3-bento-msg-dep";

/// A Nix version, a message it prints, and what the message means.
type Case = (&'static str, String, Option<Meaning>);

fn check(cases: Vec<Case>) {
    for (version, stderr, want) in cases {
        assert_eq!(
            classify(&stderr),
            want,
            "Nix {version}: {stderr:?} (rule: {:?})",
            origin(&stderr)
        );
    }
}

fn signatures_refused_by_every_version() -> Vec<Case> {
    let mut v = Vec::new();
    let mut c = |version: &'static str, stderr: &str, want: Option<Meaning>| {
        v.push((version, stderr.to_owned(), want))
    };
    let copying = format!("copying path '{DEP}' from 'file:///tmp/nixexp/x'...\n");
    c(
        "2.8.0 (observed)",
        &format!(
            "copying 2 paths...\n{copying}error: cannot add path '{DEP}' because it lacks a valid signature\n"
        ),
        Some(Refused),
    );
    c(
        "2.12.0-2.35",
        &format!(
            "{copying}error: cannot add path '{DEP}' because it lacks a signature by a trusted key"
        ),
        Some(Refused),
    );
    c(
        "2.8.0-2.9.2 (observed, substitution)",
        &format!(
            "warning: the substitute for '{DEP}' from 'file:///tmp/nixexp/x' is not signed by any of the keys in 'trusted-public-keys'\nerror: path '{DEP}' is required, but there is no substituter that can build it"
        ),
        Some(Refused),
    );
    c(
        "2.10.0-2.35 (substitution)",
        &format!(
            "warning: ignoring substitute for '{DEP}' from 'http://10.0.0.1:8080', as it's not signed by any of the keys in 'trusted-public-keys'"
        ),
        Some(Refused),
    );
    c(
        "2.8.0 (observed)",
        "error: invalid character in Base64 string: ''",
        Some(Refused),
    );
    c(
        "2.8.0 (observed)",
        "error: signature is not valid",
        Some(Refused),
    );
    c("2.34.0-2.35", "error: signature is corrupt", Some(Refused));
    c(
        "2.8.0 (observed, nix-store --realise from http://, the agent's substitution)",
        &format!(
            "this path will be fetched (0.00 MiB download, 0.00 MiB unpacked):\n  {DEP}\nwarning: the substitute for '{DEP}' from 'http://10.77.133.1:38779' is not signed by any of the keys in 'trusted-public-keys'\nerror: build of '{DEP}' failed\n"
        ),
        Some(Refused),
    );
    v
}

#[test]
fn signatures_refused_by_every_version_test() {
    check(signatures_refused_by_every_version());
}

fn altered_nars_and_narinfos_refused_by_every_version() -> Vec<Case> {
    let mut v = Vec::new();
    let mut c = |version: &'static str, stderr: &str, want: Option<Meaning>| {
        v.push((version, stderr.to_owned(), want))
    };
    c(
        "2.8.0 (observed)",
        &format!(
            "error: hash mismatch importing path '{DEP}';\n         specified: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n         got:       sha256:14sxxbhnqpgp7pln0vq4vrs771c5mjjhrs5180p2fh0sdy3zkn6z"
        ),
        Some(Refused),
    );
    c(
        "2.35 (SRI hashes)",
        &format!(
            "error: hash mismatch importing path '{DEP}';\n  specified: sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=\n  got:       sha256-AAfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="
        ),
        Some(Refused),
    );
    c(
        "2.8-2.35",
        &format!("error: ca hash mismatch importing path '{DEP}';"),
        Some(Refused),
    );
    c(
        "2.8.0 (observed, --no-check-sigs)",
        &format!(
            "error: size mismatch importing path '{DEP}';\n         specified: 121\n         got:       120"
        ),
        Some(Refused),
    );
    c(
        "2.8.0 (observed)",
        "error: bad archive: input doesn't look like a Nix archive",
        Some(Refused),
    );
    c(
        "2.8.0 (observed)",
        "error: bad archive: unknown field contentz",
        Some(Refused),
    );
    c(
        "2.25.0-2.35",
        "error: bad archive: expected tag 'contents', got 'contentz'",
        Some(Refused),
    );
    c(
        "2.8.0 (observed, truncated NAR)",
        "error: non-zero padding",
        Some(Refused),
    );
    c(
        "2.8-2.35",
        "error: NAR contains invalid file name 'a/b'",
        Some(Refused),
    );
    c(
        "2.25.0-2.35",
        "error: NAR contains invalid symlink target",
        Some(Refused),
    );
    c(
        "2.8-2.35",
        "error: NAR directory is not sorted",
        Some(Refused),
    );
    c(
        "2.8.0 (observed)",
        "error: NAR info file '0svby7nmnsvmdjcq9r7dgqm0kmi9z8c3.narinfo' is corrupt",
        Some(Refused),
    );
    c(
        "2.16.0-2.35",
        "error: NAR info file '0svby7nmnsvmdjcq9r7dgqm0kmi9z8c3.narinfo' is corrupt: NarHash missing",
        Some(Refused),
    );
    c(
        "2.8.0 (observed)",
        "error: path '/gnu/store/0svby7nmnsvmdjcq9r7dgqm0kmi9z8c3-bento-msg-dep' is not in the Nix store",
        Some(Refused),
    );
    c(
        "2.34.0-2.35",
        "error: path \"/gnu/store/0svby7nmnsvmdjcq9r7dgqm0kmi9z8c3-bento-msg-dep\" is not in the Nix store",
        Some(Refused),
    );
    c(
        "2.8.0 (observed, substitution)",
        &format!(
            "asked 'file:///tmp/nixexp/xwrong' for '/nix/store/m55yk9d77jqb2fn8m30lp2zia3iqv9a1-bento-msg-top' but got '{DEP}'"
        ),
        Some(Refused),
    );
    c(
        "2.27.0-2.35",
        &format!("error: NAR for '{DEP}' fetched from 'http://10.0.0.1:8080' is incomplete"),
        Some(Refused),
    );
    c(
        "2.8.0 (observed, nix-store --realise from file:// and http://, the agent's substitution)",
        &format!(
            "copying path '{DEP}' from 'http://10.77.133.1:40623'...\nerror: hash mismatch importing path '{DEP}';\n         specified: sha256:1h32zasi2wkfi6zc4h9khfr3xb7crk3bykms9vy9qipncvllr3f4\n         got:       sha256:017gajnzppl9xw3vhlm3fmy99463g4lpnxzjsfsv81pyz8k5kbk2\nerror: build of '{DEP}' failed\n"
        ),
        Some(Refused),
    );
    c(
        "2.8.0 (observed, nix-store --realise of a truncated NAR from file://)",
        &format!(
            "error: NAR for '{DEP}' fetched from 'file:///tmp/.tmpDBXMgB/truncated' is incomplete\nerror: build of '{DEP}' failed"
        ),
        Some(Refused),
    );
    c(
        "2.8.0 (observed, xz)",
        "error: Failed to open archive (Lzma library error: Corrupted input data)",
        Some(Refused),
    );
    c(
        "2.8.0 (observed)",
        "error: input compression not recognized",
        Some(Refused),
    );
    c(
        "2.8-2.35",
        "error: error while decompressing zstd file",
        Some(Refused),
    );
    v
}

#[test]
fn altered_nars_and_narinfos_refused_by_every_version_test() {
    check(altered_nars_and_narinfos_refused_by_every_version());
}

fn missing_paths_are_missing() -> Vec<Case> {
    let mut v = Vec::new();
    let mut c = |version: &'static str, stderr: &str, want: Option<Meaning>| {
        v.push((version, stderr.to_owned(), want))
    };
    c(
        "2.8.0 (observed)",
        "error: path '/nix/store/m55yk9d77jqb2fn8m30lp2zia3iqv9a1-bento-msg-top' is required, but there is no substituter that can build it",
        Some(Missing),
    );
    c(
        "2.8.0 (observed)",
        "error: file 'nar/04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw.nar' does not exist in binary cache",
        Some(Missing),
    );
    c(
        "2.8-2.35 (http)",
        "error: file 'nar/04zw.nar' does not exist in binary cache 'http://10.0.0.1:8080'",
        Some(Missing),
    );
    c(
        "2.8.0 (observed)",
        &format!("error: path '{DEP}' is not valid"),
        Some(Missing),
    );
    c(
        "2.8.0 (observed, nix-store --realise)",
        "don't know how to build these paths:\n  /nix/store/m55yk9d77jqb2fn8m30lp2zia3iqv9a1-bento-msg-top",
        Some(Missing),
    );
    v
}

#[test]
fn missing_paths_are_missing_test() {
    check(missing_paths_are_missing());
}

fn network_disk_and_races_are_transient() -> Vec<Case> {
    let mut v = Vec::new();
    let mut c = |version: &'static str, stderr: &str, want: Option<Meaning>| {
        v.push((version, stderr.to_owned(), want))
    };
    c(
        "2.8.0 (observed)",
        "error: unable to download 'http://127.0.0.1:38471/err500/x.narinfo': HTTP error 500 ('Internal Server Error')\n\n       response body:\n\n       oops",
        Some(Transient),
    );
    c(
        "2.9.0-2.35",
        "error: unable to download 'http://10.0.0.1:8080/nar/x.nar': HTTP error 503",
        Some(Transient),
    );
    c(
        "2.8.0 (observed)",
        "error: unable to download 'http://127.0.0.1:38472/x/nar/x.nar': Couldn't connect to server (7)",
        Some(Transient),
    );
    c(
        "2.25.0-2.35",
        "error: unable to download 'http://10.0.0.1:8080/x.narinfo': Timeout was reached (28) Connection timed out after 5000 milliseconds",
        Some(Transient),
    );
    c(
        "2.8.0-2.34.0 (observed)",
        "warning: error: unable to download 'http://x/nar/a.nar': HTTP error 503 ('Service Unavailable'); retrying in 287 ms",
        Some(Transient),
    );
    c(
        "2.34.1-2.35",
        "warning: unable to download 'http://x/nar/a.nar': HTTP error 503; retrying in 287 ms (attempt 2/5)",
        Some(Transient),
    );
    c(
        "2.8.0 (observed)",
        "error: SQLite database '/nix/var/nix/db/db.sqlite' is busy",
        Some(Transient),
    );
    c(
        "2.8.0 (observed)",
        "error: executing SQLite statement 'create table': database or disk is full (in '/nix/var/nix/db/db.sqlite')",
        Some(Transient),
    );
    c(
        "2.8.0 (observed, an 8 KiB disk)",
        "error: executing SQLite statement 'create table': disk I/O error (in '/nix/var/nix/db/db.sqlite')",
        Some(Transient),
    );
    c(
        "2.8.0 (observed)",
        "error: writing to file: No space left on device",
        Some(Transient),
    );
    c(
        "2.34.0-2.35",
        "error: write of 65536 bytes: No space left on device",
        Some(Transient),
    );
    c(
        "2.8.0 (observed)",
        "error: writing to file: Broken pipe",
        Some(Transient),
    );
    c(
        "2.8.0 (observed)",
        "error: creating symlink from '/nix/var/nix/gcroots/profiles' to '/nix/var/nix/profiles': File exists",
        Some(Transient),
    );
    c(
        "2.25.3-2.29",
        "error: creating symlink '/nix/var/nix/gcroots/profiles' -> '/nix/var/nix/profiles': File exists",
        Some(Transient),
    );
    c(
        "2.23.0-2.25.2",
        "error: filesystem error: cannot create symlink: File exists [/a] [/b]",
        Some(Transient),
    );
    c(
        "2.8.0 (observed)",
        "error: '/nix/var/nix/db/schema' is corrupt",
        Some(Transient),
    );
    c(
        "2.34.0-2.35",
        "error: \"/nix/var/nix/db/schema\" is corrupt",
        Some(Transient),
    );
    c(
        "2.8.0 (observed, concurrent copies)",
        "error: not an absolute path: 'nix-archive-1'",
        Some(Transient),
    );
    c(
        "2.8.0 (observed)",
        "waiting for the big Nix store lock...",
        Some(Transient),
    );
    c(
        "2.8.0 (observed)",
        "error: interrupted by the user",
        Some(Transient),
    );
    c(
        "2.8.0 (observed)",
        "disabling binary cache 'http://127.0.0.1:38471/err500' for 60 seconds",
        Some(Transient),
    );
    c(
        "2.8-2.35",
        "error: download of 'http://10.0.0.1:8080/x.nar' was interrupted",
        Some(Transient),
    );
    v
}

#[test]
fn network_disk_and_races_are_transient_test() {
    check(network_disk_and_races_are_transient());
}

fn a_refusal_wins_over_the_noise_around_it_and_colours_do_not_matter() -> Vec<Case> {
    let mut v = Vec::new();
    let mut c = |version: &'static str, stderr: &str, want: Option<Meaning>| {
        v.push((version, stderr.to_owned(), want))
    };
    // A retried download, then the refusal (2.8 layout).
    c(
        "2.8.0",
        &format!(
            "warning: error: unable to download 'http://x/a.narinfo': HTTP error 503 ('Service Unavailable'); retrying in 250 ms\ncopying path '{DEP}' from 'http://x'...\nerror: cannot add path '{DEP}' because it lacks a valid signature"
        ),
        Some(Refused),
    );
    // What escapes through std::terminate keeps its colours (observed on 2.8).
    c(
        "2.8.0 (observed)",
        "terminate called after throwing an instance of 'nix::SubstituterDisabled'\n  what():  \u{1b}[31;1merror:\u{1b}[0m substituter '\u{1b}[35;1mhttp://127.0.0.1:38471/err500\u{1b}[0m' is disabled",
        Some(Transient),
    );
    c(
        "2.8.0",
        "\u{1b}[31;1merror:\u{1b}[0m hash mismatch importing path '/nix/store/x'",
        Some(Refused),
    );
    v
}

#[test]
fn a_refusal_wins_over_the_noise_around_it_and_colours_do_not_matter_test() {
    check(a_refusal_wins_over_the_noise_around_it_and_colours_do_not_matter());
}

fn what_no_rule_knows_is_unknown() -> Vec<Case> {
    let mut v = Vec::new();
    let mut c = |version: &'static str, stderr: &str, want: Option<Meaning>| {
        v.push((version, stderr.to_owned(), want))
    };
    // A truncated NAR on 2.8-2.26 gives libstdc++'s texts (observed): the agent then checks
    // the NAR itself.
    c("2.8.0 (observed)", "error: basic_string::_M_create", None);
    c(
        "2.8.0 (observed, the last path's NAR cut in half)",
        "error: coroutine has finished",
        None,
    );
    c("2.8.0 (observed)", "error: out of memory", None);
    // `nix-store --realise` ends every failure so, whatever the cause: no meaning alone.
    c(
        "2.8.0 (observed, nix-store --realise)",
        &format!("error: build of '{DEP}' failed"),
        None,
    );
    // A byte flipped in a length field of a small uncompressed NAR, substituted (observed).
    c(
        "2.8.0 (observed, nix-store --realise)",
        &format!(
            "copying path '{DEP}' from 'file:///tmp/fb/plain'...\nstd::bad_alloc\nerror: build of '{DEP}' failed"
        ),
        None,
    );
    c("any", "", None);
    // A bare "error:" prefix alone means nothing.
    c("any", "error: something new in Nix 3.0", None);
    v
}

#[test]
fn what_no_rule_knows_is_unknown_test() {
    check(what_no_rule_knows_is_unknown());
}

#[test]
fn every_rule_has_a_message_above() {
    // Guards the table against a rule that can never match (a typo in its pattern).
    let all: Vec<Case> = [
        signatures_refused_by_every_version(),
        altered_nars_and_narinfos_refused_by_every_version(),
        missing_paths_are_missing(),
        network_disk_and_races_are_transient(),
        a_refusal_wins_over_the_noise_around_it_and_colours_do_not_matter(),
        what_no_rule_knows_is_unknown(),
    ]
    .into_iter()
    .flatten()
    .collect();
    for r in RULES {
        let found = all
            .iter()
            .any(|(_, stderr, _)| stderr.lines().any(|l| r.shape.matches(&normalise(l))));
        assert!(
            found,
            "no message for the rule {:?} ({})",
            r.shape, r.origin
        );
    }
}
