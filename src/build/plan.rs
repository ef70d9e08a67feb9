//! Pure decisions of a fleet build: the exact commands run for a host, how their output is
//! read, how an error is cut down for the summary, and how many hosts to build at once.
//!
//! A host is built in two processes so that the summary can say which phase failed:
//! 1. evaluate to a derivation: `nix eval --raw <flake>#<attr>.drvPath`, or for a host
//!    without flakes `nix-instantiate '<nixpkgs/nixos>' -A system -I nixos-config=PATH`
//!    (the evaluation half of `nix-build '<nixpkgs/nixos>' -A system ...`);
//! 2. build it: `nix build --json --out-link <state>/gcroots/<host>/build <drv>`, which
//!    also registers the GC root. (Nix 2.8 has no `--print-out-paths`; `--json` it has.)
//!
//! Evaluations run with `eval-cache = false`: Nix's flake evaluation cache is one SQLite
//! database per flake source, and each evaluating process holds its write transaction
//! until it exits, so parallel evaluations of one flake would run one after the other
//! (measured on Nix 2.8: two parallel evaluations took 1.9x one; 1.05x without the cache).
//! `nix eval` never reads that cache for `.drvPath` anyway.

use std::path::Path;

use serde::Deserialize;

use crate::config::System;
use crate::nix::cmd::{self, Command};
use crate::nix::store;

/// The command that evaluates a host's system to a derivation path on stdout.
pub fn eval_command(system: &System) -> Command {
    match system {
        System::Flake { flake, attr } => cmd::nix()
            .args(["eval", "--option", "eval-cache", "false", "--raw"])
            .arg(format!("{flake}#{attr}.drvPath")),
        System::Configuration { path } => Command::new("nix-instantiate")
            .args(["<nixpkgs/nixos>", "-A", "system", "-I"])
            .arg(format!("nixos-config={}", path.display())),
    }
}

/// The command that builds a derivation and keeps its output alive with `out_link`.
pub fn build_command(drv_path: &str, out_link: &Path) -> Command {
    cmd::nix()
        .args(["build", "--json", "--out-link"])
        .arg(out_link)
        .arg(drv_path)
}

/// The derivation path an evaluation printed (the last line of stdout).
pub fn parse_drv_path(stdout: &str) -> Result<String, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim();
    match store::parse(line) {
        Ok(_) if line.ends_with(".drv") => Ok(line.to_owned()),
        _ => Err(format!(
            "the evaluation printed {line:?}, not a derivation path; is the attribute a NixOS system (config.system.build.toplevel)?"
        )),
    }
}

#[derive(Deserialize)]
struct BuiltJson {
    outputs: std::collections::BTreeMap<String, String>,
}

/// The `out` path from `nix build --json` (Nix 2.8: `[{"drvPath":..,"outputs":{"out":..}}]`).
pub fn parse_build_json(stdout: &str) -> Result<String, String> {
    let built: Vec<BuiltJson> = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("cannot read the output of nix build --json ({e}): {stdout:?}"))?;
    let path = built
        .first()
        .and_then(|b| b.outputs.get("out"))
        .ok_or_else(|| format!("nix build --json names no `out` output: {stdout:?}"))?;
    store::parse(path).map_err(|e| format!("nix build printed {path:?}: {e}"))?;
    Ok(path.clone())
}

/// The lines of a Nix error worth showing in a summary: from the first `error:` line on,
/// without Nix's `--show-trace` hint, at most `max` lines. When there is no `error:` line,
/// the last `max` non-empty lines.
pub fn error_excerpt(stderr: &str, max: usize) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("use '--show-trace'"))
        .collect();
    let from = lines
        .iter()
        .position(|l| l.trim_start().starts_with("error:"))
        .unwrap_or_else(|| lines.len().saturating_sub(max));
    let mut out: Vec<&str> = lines.iter().skip(from).take(max).copied().collect();
    if lines.len() - from > max {
        out.push("...");
    }
    out.join("\n")
}

/// Memory one evaluation of a NixOS system may take.
pub const MEMORY_PER_JOB: u64 = 1536 * 1024 * 1024;

/// How many hosts to evaluate and build at once: one per core, fewer when the available
/// memory would not carry that many evaluations, never less than one.
pub fn default_jobs(cores: usize, mem_available: Option<u64>) -> usize {
    let by_memory = mem_available.map_or(usize::MAX, |m| {
        usize::try_from(m / MEMORY_PER_JOB).unwrap_or(usize::MAX)
    });
    cores.min(by_memory).max(1)
}

/// `MemAvailable` from the text of `/proc/meminfo`, in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn commands_for_each_kind_of_host() {
        let flake = System::Flake {
            flake: "/srv/fleet".into(),
            attr: "nixosConfigurations.web1.config.system.build.toplevel".into(),
        };
        let conf = System::Configuration {
            path: PathBuf::from("/srv/fleet/hosts/router/configuration.nix"),
        };
        let cases = [
            (
                eval_command(&flake).argv(),
                "nix --extra-experimental-features 'nix-command flakes' eval --option eval-cache false --raw '/srv/fleet#nixosConfigurations.web1.config.system.build.toplevel.drvPath'",
            ),
            (
                eval_command(&conf).argv(),
                "nix-instantiate '<nixpkgs/nixos>' -A system -I nixos-config=/srv/fleet/hosts/router/configuration.nix",
            ),
            (
                build_command(
                    "/nix/store/3g1zvp7n3436q9rvq5hhda8p8yhayppn-x.drv",
                    Path::new("/var/lib/bento/gcroots/web1/build"),
                )
                .argv(),
                "nix --extra-experimental-features 'nix-command flakes' build --json --out-link /var/lib/bento/gcroots/web1/build /nix/store/3g1zvp7n3436q9rvq5hhda8p8yhayppn-x.drv",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn reading_what_nix_printed() {
        let drv = "/nix/store/3g1zvp7n3436q9rvq5hhda8p8yhayppn-ok-probe.drv";
        assert_eq!(parse_drv_path(drv), Ok(drv.to_owned()));
        assert_eq!(
            parse_drv_path(&format!("warning: x\n{drv}\n")),
            Ok(drv.to_owned())
        );
        assert!(parse_drv_path("/nix/store/fqa7y5gpznfbw8x0givjsd3gpdcr0bmy-ok-probe").is_err());
        assert!(parse_drv_path("hello").unwrap_err().contains("\"hello\""));

        let json = r#"[{"drvPath":"/nix/store/3g1zvp7n3436q9rvq5hhda8p8yhayppn-ok-probe.drv","outputs":{"out":"/nix/store/fqa7y5gpznfbw8x0givjsd3gpdcr0bmy-ok-probe"}}]"#;
        assert_eq!(
            parse_build_json(json),
            Ok("/nix/store/fqa7y5gpznfbw8x0givjsd3gpdcr0bmy-ok-probe".to_owned())
        );
        assert!(parse_build_json("[]").is_err());
        assert!(parse_build_json("{").is_err());
        assert!(parse_build_json(r#"[{"outputs":{"out":"/tmp/x"}}]"#).is_err());
    }

    #[test]
    fn error_excerpts() {
        let eval = "error: deliberate eval failure\n(use '--show-trace' to show detailed location information)\n";
        let build = "building '/nix/store/r0pd-bf.drv'...\nerror: builder for '/nix/store/r0pd-bf.drv' failed with exit code 1;\n       last 1 log lines:\n       > deliberate build failure\n       For full logs, run 'nix log /nix/store/r0pd-bf.drv'.\n";
        let cases = [
            (eval, 5, "error: deliberate eval failure"),
            (
                build,
                3,
                "error: builder for '/nix/store/r0pd-bf.drv' failed with exit code 1;\n       last 1 log lines:\n       > deliberate build failure\n...",
            ),
            ("a\nb\nc\n\n", 2, "b\nc"),
            ("", 3, ""),
        ];
        for (stderr, max, want) in cases {
            assert_eq!(error_excerpt(stderr, max), want);
        }
    }

    #[test]
    fn jobs_fit_cores_and_memory() {
        const GIB: u64 = 1024 * 1024 * 1024;
        let cases = [
            (2, Some(24 * GIB), 2),
            (16, Some(8 * GIB), 5),
            (16, Some(GIB), 1),
            (4, None, 4),
            (0, None, 1),
        ];
        for (cores, mem, want) in cases {
            assert_eq!(default_jobs(cores, mem), want, "{cores} cores, {mem:?}");
        }
        assert_eq!(
            parse_mem_available("MemTotal: 100 kB\nMemAvailable:   2048 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_mem_available("MemTotal: 100 kB\n"), None);
    }
}
