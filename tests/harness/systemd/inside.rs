//! Running things inside a box: commands through `nsenter` into its namespaces, files,
//! units, their properties and their journal.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::super::ran::Ran;
use super::{BOX_PATH, SystemdBox};

impl SystemdBox {
    /// `program args` inside the box, as root, in all its namespaces, with a clean
    /// environment (`PATH`, `HOME`, `LANG`) and no stdin. Not started yet.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.leader.to_string())
            .args(["-m", "-u", "-i", "-n", "-p", "--", program])
            .args(args)
            .env_clear()
            .env("PATH", BOX_PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        c
    }

    /// Runs `program args` inside the box to its end.
    pub fn run(&self, program: &str, args: &[&str]) -> Ran {
        Ran::of(&mut self.command(program, args))
    }

    /// Runs `program args` inside the box; panics with its output unless it succeeds.
    /// Returns stdout, trimmed.
    pub fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.success(),
            "`{program} {}` failed in box {}: {}",
            args.join(" "),
            self.name,
            out.both()
        );
        out.stdout.trim().to_owned()
    }

    /// Runs a shell script inside the box (`sh -c SCRIPT`).
    pub fn sh(&self, script: &str) -> Ran {
        self.run("sh", &["-c", script])
    }

    /// Writes `contents` to `path` inside the box with `mode`, making its directory.
    pub fn write_file(&self, path: &str, contents: &str, mode: u32) {
        let mut c = self.command(
            "sh",
            &[
                "-c",
                r#"mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1""#,
                "sh",
                path,
                &format!("{mode:o}"),
            ],
        );
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("start nsenter");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(contents.as_bytes()).expect("write file");
        drop(stdin);
        let out = Ran::from(child.wait_with_output().expect("wait nsenter"));
        assert!(
            out.success(),
            "cannot write {path} in box {}: {}",
            self.name,
            out.both()
        );
    }

    /// Installs a unit file in `/etc/systemd/system` and reloads systemd.
    pub fn install_unit(&self, unit: &str, contents: &str) {
        self.write_file(&format!("/etc/systemd/system/{unit}"), contents, 0o644);
        self.ok("systemctl", &["daemon-reload"]);
    }

    /// One property of a unit (`systemctl show -p PROPERTY --value UNIT`).
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.ok("systemctl", &["show", "-p", property, "--value", unit])
    }

    /// The messages a unit logged (`journalctl -u UNIT -o cat`).
    pub fn journal(&self, unit: &str) -> String {
        self.ok("journalctl", &["-u", unit, "--no-pager", "-o", "cat"])
    }
}
