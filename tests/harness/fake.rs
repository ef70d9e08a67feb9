//! Fake NixOS systems: a store path named `nixos-system-<host>-<generation>` with
//! `bin/switch-to-configuration`, `nixos-version` and a dependency, whose activation the
//! test controls. Activation records itself in `/run/activations` and points
//! `/run/current-system` at the system, as NixOS does.

use super::nix::{self, nix_system};

/// The file in a host's `/run` that lets a [`Behaviour::Hold`] activation finish
/// (`net::Host::release_hold` writes it).
pub const HOLD_FILE: &str = "bento-test-release-hold";

/// How a fake system's `switch-to-configuration` behaves, besides recording itself.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Activates fine.
    Good,
    /// Exits 1 after recording the attempt (before touching /run/current-system).
    FailActivation,
    /// Activates, then takes the host's network down (`ip link set eth0 down`); every
    /// system's script brings it up first, so a rollback restores it.
    BreakNetwork,
    /// Activates (the host runs it), then does not finish until the test says so
    /// (`Host::release_hold`), at most 10 minutes: the test decides what happens while an
    /// activation runs, instead of racing a sleep.
    Hold,
    /// Activates, printing this many numbered lines (`activation line N of M`) to stdout
    /// first: a long log whose every line can be checked where it arrives.
    Chatty(u32),
    /// Activates halfway (points `/run/current-system` at itself), then hangs forever with
    /// a child of its own (`sleep 86400`, tagged with the system's path).
    Hang,
    /// On a systemd host: stops `bento-agent.service` (the agent that runs this switch),
    /// activates, starts the agent again and marks the end (`/run/switch-finished`).
    StopsAgent,
    /// Activates fine; the system names an agent configuration (`etc/bento/agent-unit.json`
    /// with this `config`), as the NixOS module's systems do.
    NamesAgent(String),
}

/// A Nix expression for a fake system of `host` at `generation`, with an incompressible
/// `blob_mib` MiB file in its dependency (none for 0); `salt` makes otherwise identical
/// systems distinct.
pub fn expression(
    host: &str,
    generation: u64,
    behaviour: &Behaviour,
    salt: &str,
    blob_mib: u32,
) -> String {
    expression_with_leaves(host, generation, behaviour, salt, blob_mib, 0)
}

/// [`expression`] with `leaves` more store paths in the closure, 128 KiB of incompressible
/// data each (a closure of many paths, as a real system's is).
pub fn expression_with_leaves(
    host: &str,
    generation: u64,
    behaviour: &Behaviour,
    salt: &str,
    blob_mib: u32,
    leaves: u32,
) -> String {
    let (before, after) = match behaviour {
        Behaviour::Good => (String::new(), String::new()),
        Behaviour::FailActivation => (
            "echo 'activation failed on purpose' >&2; exit 1".to_owned(),
            String::new(),
        ),
        Behaviour::BreakNetwork => (String::new(), "ip link set eth0 down".to_owned()),
        Behaviour::Hold => (
            String::new(),
            format!(
                "i=0; while [ ! -e /run/{HOLD_FILE} ] && [ $i -lt 6000 ]; do sleep 0.1; \
                 i=$((i+1)); done; rm -f /run/{HOLD_FILE}"
            ),
        ),
        Behaviour::Chatty(n) => (
            format!("for i in $(seq 1 {n}); do echo \"activation line $i of {n}\"; done"),
            String::new(),
        ),
        Behaviour::Hang => (
            String::new(),
            "echo 'hanging on purpose'; sh -c 'sleep 86400; :' hang-@out@ & wait".to_owned(),
        ),
        Behaviour::StopsAgent => (
            "systemctl stop bento-agent.service".to_owned(),
            "systemctl start bento-agent.service; touch /run/switch-finished".to_owned(),
        ),
        Behaviour::NamesAgent(_) => (String::new(), String::new()),
    };
    let unit = match behaviour {
        Behaviour::NamesAgent(config) => format!(
            "mkdir -p $out/etc/bento; echo '{{\"format\":1,\"config\":\"{config}\",\"binary\":\"/usr/local/bin/bento\"}}' > $out/etc/bento/agent-unit.json"
        ),
        _ => String::new(),
    };
    let blob = if blob_mib > 0 {
        format!("head -c {blob_mib}M /dev/urandom > $out/blob; ")
    } else {
        String::new()
    };
    let leaf_refs = if leaves > 0 {
        "echo ${toString leaves} > $out/leaves"
    } else {
        ""
    };
    let script = format!(
        "#!/bin/sh\n\
         echo \"$0 $1\" >> /run/activations\n\
         ip link set eth0 up 2>/dev/null || true\n\
         {before}\n\
         ln -sfn @out@ /run/current-system\n\
         {after}\n\
         exit 0\n"
    );
    format!(
        r#"
let
  mk = name: script: derivation {{
    inherit name; system = "{system}";
    builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ];
  }};
  dep = mk "{host}-etc-{generation}" "mkdir $out; {blob}echo 'host {host} generation {generation} {salt}' > $out/motd";
  script = builtins.toFile "switch-to-configuration" {script:?};
  leaves = builtins.genList (i: mk "{host}-leaf-{generation}-${{toString i}}" "head -c 128K /dev/urandom > $out; echo {salt} >> $out") {leaves};
in mk "nixos-system-{host}-{generation}" ''
  mkdir -p $out/bin
  echo ${{dep}} > $out/etc-ref
  {leaf_refs}
  echo "{generation}" > $out/nixos-version
  sed "s|@out@|$out|g" ${{script}} > $out/bin/switch-to-configuration
  chmod +x $out/bin/switch-to-configuration
  {unit}
''
"#,
        system = nix_system()
    )
}

/// Builds a fake system in the machine's store and returns its store path.
pub fn build(host: &str, generation: u64, behaviour: &Behaviour, salt: &str) -> String {
    build_expression(&expression(host, generation, behaviour, salt, 0))
}

/// Builds an [`expression`] in the machine's store and returns its store path.
pub fn build_expression(expr: &str) -> String {
    // `nix::build` prefixes its `mk`; this expression brings its own.
    let out = nix::command("nix-build")
        .args(["--no-out-link", "-E", expr])
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.stdout_text().lines().last().unwrap().to_owned()
}

/// What `/run/activations` holds after `switch-to-configuration switch` of each of
/// `systems`, in that order.
pub fn switched(systems: &[&str]) -> Vec<String> {
    systems
        .iter()
        .map(|s| format!("{s}/bin/switch-to-configuration switch"))
        .collect()
}
