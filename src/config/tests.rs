//! Fleet-file parsing, defaults and selection, table-driven.

use base64::Engine as _;

use super::*;

/// A well-formed ed25519 OpenSSH key whose 32 key bytes are all `byte`.
pub(crate) fn ssh_key(byte: u8) -> String {
    let mut blob = Vec::new();
    for part in [&b"ssh-ed25519"[..], &[byte; 32][..]] {
        blob.extend((part.len() as u32).to_be_bytes());
        blob.extend(part);
    }
    format!(
        "ssh-ed25519 {} root@h{byte}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// A directory of this test process (any user may run the unit tests, in parallel).
fn unit_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .to_owned()
}

fn parse(text: &str) -> Result<Fleet, FleetFileError> {
    // The fleet file lives in a directory with a flake.nix, so flake hosts validate.
    let dir = unit_dir();
    std::fs::write(dir.join("flake.nix"), "{ outputs = _: {}; }").unwrap();
    Fleet::parse(text, &dir.join("bento.toml"))
}

#[test]
fn defaults_fill_everything_not_written() {
    let fleet = parse(&format!("[hosts.web1]\nssh_key = \"{}\"\n", ssh_key(1))).unwrap();
    let dir = unit_dir();
    assert_eq!(fleet.flake, dir.to_string_lossy());
    assert_eq!(fleet.state.root(), Path::new("/var/lib/bento"));
    assert_eq!(
        fleet.signing_key,
        Path::new("/var/lib/bento/keys/fleet.secret")
    );
    assert_eq!(fleet.jobs, None);
    assert_eq!(fleet.keep_systems, 5);
    let web1 = &fleet.hosts["web1"];
    assert_eq!(
        web1.system,
        System::Flake {
            flake: dir.to_string_lossy().into_owned(),
            attr: "nixosConfigurations.web1.config.system.build.toplevel".into()
        }
    );
    assert!(web1.tags.is_empty());
}

#[test]
fn relative_paths_resolve_against_the_fleet_file() {
    let dir = unit_dir();
    std::fs::create_dir_all(dir.join("hosts")).unwrap();
    std::fs::write(dir.join("hosts/router.nix"), "{ }").unwrap();
    let text = format!(
        "[fleet]\nflake = \"github:example/fleet\"\nstate_dir = \"state\"\nsigning_key = \"keys/k.secret\"\njobs = 3\n\
         [hosts.router]\nssh_key = \"{}\"\nconfiguration = \"hosts/router.nix\"\ntags = [\"b\", \"a\", \"b\"]\n\
         [hosts.web1]\nssh_key = \"{}\"\nattr = \"packages.x86_64-linux.web1\"\n",
        ssh_key(1),
        ssh_key(2)
    );
    let fleet = parse(&text).unwrap();
    assert_eq!(fleet.flake, "github:example/fleet");
    assert_eq!(fleet.state.root(), dir.join("state"));
    assert_eq!(fleet.signing_key, dir.join("keys/k.secret"));
    assert_eq!(fleet.jobs, Some(3));
    assert_eq!(
        fleet.hosts["router"].system,
        System::Configuration {
            path: dir.join("hosts/router.nix")
        }
    );
    assert_eq!(fleet.hosts["router"].tags, vec!["a", "b"]);
    assert_eq!(
        fleet.hosts["web1"].system,
        System::Flake {
            flake: "github:example/fleet".into(),
            attr: "packages.x86_64-linux.web1".into()
        }
    );
}

#[test]
fn default_attr_quotes_dotted_names() {
    assert_eq!(
        defaults::attr("web1.example.org"),
        "nixosConfigurations.\"web1.example.org\".config.system.build.toplevel"
    );
}

#[test]
fn each_error_names_host_and_field() {
    let k1 = ssh_key(1);
    let k2 = ssh_key(2);
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "unknown host field",
            format!("[hosts.web1]\nssh_key = \"{k1}\"\nsshkey = \"x\"\n"),
            &[
                "line 3",
                "host web1, field sshkey",
                "unknown field `sshkey`",
            ],
        ),
        (
            "unknown fleet field",
            "[fleet]\nstatedir = \"/x\"\n".into(),
            &["line 2", "[fleet] field statedir", "unknown field"],
        ),
        (
            "duplicate host",
            format!("[hosts.web1]\nssh_key = \"{k1}\"\n[hosts.web1]\nssh_key = \"{k2}\"\n"),
            &["line 3", "host web1 is defined twice"],
        ),
        (
            "wrong type",
            format!("[hosts.web1]\nssh_key = \"{k1}\"\ntags = \"web\"\n"),
            &["host web1, field tags", "invalid type"],
        ),
        (
            "missing ssh key",
            "[hosts.web1]\ntags = []\n".into(),
            &["host web1, field ssh_key", "is missing"],
        ),
        (
            "invalid ssh key",
            "[hosts.web1]\nssh_key = \"ssh-ed25519 AAAA!\"\n".into(),
            &["host web1, field ssh_key", "not valid base64"],
        ),
        (
            "shared ssh key",
            format!("[hosts.a]\nssh_key = \"{k1}\"\n[hosts.b]\nssh_key = \"{k1}\"\n"),
            &["host b, field ssh_key", "same key as host a"],
        ),
        (
            "bad host name",
            format!("[hosts.\"../etc\"]\nssh_key = \"{k1}\"\n"),
            &["host ../etc, field name", "not valid"],
        ),
        (
            "host names differing in case",
            format!("[hosts.Web1]\nssh_key = \"{k1}\"\n[hosts.web1]\nssh_key = \"{k2}\"\n"),
            &["host web1, field name", "only in case"],
        ),
        (
            "attr and configuration",
            format!("[hosts.web1]\nssh_key = \"{k1}\"\nattr = \"x\"\nconfiguration = \"c.nix\"\n"),
            &["host web1, field configuration", "together with attr"],
        ),
        (
            "missing configuration file",
            format!("[hosts.web1]\nssh_key = \"{k1}\"\nconfiguration = \"nope.nix\"\n"),
            &["host web1, field configuration", "nope.nix does not exist"],
        ),
        (
            "bad tag",
            format!("[hosts.web1]\nssh_key = \"{k1}\"\ntags = [\"a b\"]\n"),
            &["host web1, field tags", "\"a b\""],
        ),
        (
            "zero jobs",
            "[fleet]\njobs = 0\n".into(),
            &["[fleet] field jobs", "at least 1"],
        ),
        (
            "file name with a slash",
            format!(
                "[hosts.web1]\nssh_key = \"{k1}\"\n[hosts.web1.files]\n\"a/b\" = \"flake.nix\"\n"
            ),
            &["host web1, field files", "\"a/b\" is not valid"],
        ),
        (
            "set-uid file mode",
            format!(
                "[hosts.web1]\nssh_key = \"{k1}\"\n[hosts.web1.files]\ndb = {{ source = \"flake.nix\", mode = 0o4755 }}\n"
            ),
            &["host web1, field files", "mode 4755 is not valid"],
        ),
        (
            "missing file source",
            format!("[hosts.web1]\nssh_key = \"{k1}\"\n[hosts.web1.files]\ndb = \"secrets/db\"\n"),
            &["host web1, field files.db", "secrets/db does not exist"],
        ),
        (
            "zero systems kept",
            "[fleet]\nkeep_systems = 0\n".into(),
            &["[fleet] field keep_systems", "at least 1"],
        ),
    ];
    for (name, text, wants) in cases {
        let msg = match parse(&text) {
            Ok(_) => panic!("case {name}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains("bento.toml"), "case {name}: {msg}");
        for want in wants {
            assert!(msg.contains(want), "case {name}: {msg:?} lacks {want:?}");
        }
    }
}

#[test]
fn missing_flake_is_reported_only_when_a_host_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bento.toml");
    let text = format!("[hosts.web1]\nssh_key = \"{}\"\n", ssh_key(1));
    let msg = Fleet::parse(&text, &file)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("[fleet] field flake") && msg.contains("flake.nix does not exist"),
        "{msg}"
    );
    assert!(Fleet::parse("", &file).is_ok());
}

fn fleet_for_selection() -> Fleet {
    let mut text = String::new();
    for (i, (name, tags)) in [
        ("web1", "\"web\", \"prod\""),
        ("web2", "\"web\""),
        ("db1", "\"prod\""),
        ("lab", ""),
    ]
    .iter()
    .enumerate()
    {
        text.push_str(&format!(
            "[hosts.{name}]\nssh_key = \"{}\"\ntags = [{tags}]\n",
            ssh_key(i as u8)
        ));
    }
    parse(&text).unwrap()
}

#[test]
fn selection_by_host_and_tag() {
    let fleet = fleet_for_selection();
    let cases: Vec<(&[&str], &[&str])> = vec![
        (&[], &["db1", "lab", "web1", "web2"]),
        (&["web2"], &["web2"]),
        (&["@web"], &["web1", "web2"]),
        (&["@prod", "lab"], &["db1", "lab", "web1"]),
        (&["web1", "@web", "web1"], &["web1", "web2"]),
    ];
    for (args, want) in cases {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let got: Vec<&str> = select(&fleet, &args)
            .unwrap()
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(got, want, "{args:?}");
    }
}

#[test]
fn selection_of_unknown_names_lists_what_exists() {
    let fleet = fleet_for_selection();
    let cases: Vec<(&str, &str)> = vec![
        ("web3", "unknown host \"web3\"; the hosts in"),
        ("web3", "db1, lab, web1, web2"),
        ("@dev", "unknown tag @dev; the tags in"),
        ("@dev", "@prod, @web"),
    ];
    for (arg, want) in cases {
        let msg = select(&fleet, &[arg.to_owned()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains(want), "{arg}: {msg}");
    }
    let empty = parse("").unwrap();
    let msg = select(&empty, &[])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("defines no hosts"), "{msg}");
}

#[test]
fn delivered_files_default_to_root_only() {
    let fleet = parse(&format!(
        "[hosts.web1]\nssh_key = \"{}\"\n[hosts.web1.files]\ndb = \"flake.nix\"\n\"tls.key\" = {{ source = \"flake.nix\", mode = 0o440 }}\n",
        ssh_key(1)
    ))
    .unwrap();
    let files = &fleet.hosts["web1"].files;
    let dir = unit_dir();
    assert_eq!(files["db"].mode, 0o400);
    assert_eq!(files["db"].source, dir.join("flake.nix"));
    assert_eq!(files["tls.key"].mode, 0o440);
}

/// Four hosts (web1, web2 tagged web; db1; lab tagged canary) and `extra` appended.
fn fleet_with(extra: &str) -> Result<Fleet, FleetFileError> {
    let mut text = String::new();
    for (i, (name, tags)) in [
        ("web1", "\"web\""),
        ("web2", "\"web\""),
        ("db1", ""),
        ("lab", "\"canary\""),
    ]
    .iter()
    .enumerate()
    {
        text.push_str(&format!(
            "[hosts.{name}]\nssh_key = \"{}\"\ntags = [{tags}]\n",
            ssh_key(i as u8 + 10)
        ));
    }
    text.push_str(extra);
    parse(&text)
}

#[test]
fn rollout_waves_take_each_host_once_in_order() {
    let fleet = fleet_with(
        "[rollout]\ntimeout_secs = 60\n\
         [[rollout.waves]]\nname = \"canary\"\nhosts = [\"@canary\", \"web1\"]\nsoak_secs = 5\n\
         [[rollout.waves]]\nhosts = [\"@web\"]\nthreshold = 50\n\
         [[rollout.waves]]\nname = \"rest\"\nhosts = [\"*\"]\n",
    )
    .unwrap();
    let policy = fleet.rollout.clone().unwrap();
    assert_eq!(policy.timeout_secs, 60);
    assert_eq!(policy.supersede, Supersede::Wait);
    let hosts: Vec<&Host> = fleet.hosts.values().collect();
    let (waves, left) = policy.assign(&hosts);
    let names: Vec<(&str, Vec<&str>, u8, u64)> = waves
        .iter()
        .map(|(w, hs)| {
            (
                w.name.as_str(),
                hs.iter().map(|h| h.name.as_str()).collect(),
                w.threshold,
                w.soak_secs,
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("canary", vec!["lab", "web1"], 100, 5),
            ("wave2", vec!["web2"], 50, 0),
            ("rest", vec!["db1"], 100, 0),
        ]
    );
    assert!(left.is_empty());
    // A selection leaves empty waves out.
    let (waves, _) = policy.assign(&[&fleet.hosts["db1"]]);
    assert_eq!(waves.len(), 1);
    assert_eq!(waves[0].0.name, "rest");
}

#[test]
fn rollout_and_git_errors_name_the_field() {
    let cases = [
        ("[rollout]\n", "[rollout] field waves: lists no wave"),
        (
            "[rollout]\n[[rollout.waves]]\nhosts = [\"@web\"]\n",
            "host(s) db1, lab are in no wave",
        ),
        (
            "[rollout]\n[[rollout.waves]]\nhosts = [\"@nope\"]\n",
            "\"@nope\" is neither a host",
        ),
        (
            "[rollout]\n[[rollout.waves]]\nhosts = [\"*\"]\nthreshold = 0\n",
            "threshold 0 is not a percentage",
        ),
        (
            "[rollout]\n[[rollout.waves]]\nname = \"a\"\nhosts = [\"web1\"]\n[[rollout.waves]]\nname = \"a\"\nhosts = [\"*\"]\n",
            "wave name \"a\" is used twice",
        ),
        (
            "[rollout]\nsupersede = \"sometimes\"\n[[rollout.waves]]\nhosts = [\"*\"]\n",
            "sometimes",
        ),
    ];
    for (extra, want) in cases {
        let err = fleet_with(extra).unwrap_err().to_string();
        assert!(err.contains(want), "{extra}: {err}");
    }
    let git_cases = [
        ("git = \"\"", "is not a repository URL"),
        ("git = { url = \"/r\", branch = \"-x\" }", "branch \"-x\""),
        ("git = { url = \"/r\", interval_secs = 0 }", "interval_secs"),
        (
            "git = { url = \"/r\", fleet_file = \"../x\" }",
            "fleet_file",
        ),
    ];
    for (line, want) in git_cases {
        let err = parse(&format!(
            "[fleet]\n{line}\n[hosts.a]\nssh_key = \"{}\"\n",
            ssh_key(3)
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[fleet] field git") && err.contains(want),
            "{line}: {err}"
        );
    }
}

#[test]
fn git_sources_keep_urls_and_resolve_paths() {
    let dir = unit_dir();
    let cases = [
        (
            "git = \"repo\"",
            dir.join("repo").to_string_lossy().into_owned(),
            "main",
        ),
        (
            "git = { url = \"https://git.example/fleet.git\", branch = \"prod/eu\" }",
            "https://git.example/fleet.git".to_owned(),
            "prod/eu",
        ),
        (
            "git = { url = \"git@git.example:fleet.git\" }",
            "git@git.example:fleet.git".to_owned(),
            "main",
        ),
    ];
    for (line, url, branch) in cases {
        let fleet = parse(&format!(
            "[fleet]\n{line}\n[hosts.a]\nssh_key = \"{}\"\n",
            ssh_key(3)
        ))
        .unwrap();
        let git = fleet.git.unwrap();
        assert_eq!(
            (git.url.as_str(), git.branch.as_str()),
            (url.as_str(), branch)
        );
        assert_eq!(git.fleet_file, Path::new("bento.toml"));
        assert_eq!(git.interval_secs, 60);
    }
}
