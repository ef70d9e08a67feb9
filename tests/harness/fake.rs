//! Fake NixOS system closures: a store path with `bin/switch-to-configuration`,
//! `nixos-version` and a dependency, whose activation script the test controls.

use std::path::Path;

use super::nix_system;

/// How a fake system's `switch-to-configuration` behaves, besides recording itself in
/// `/run/activations` and pointing `/run/current-system` at itself (as NixOS does).
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Activates fine.
    Good,
    /// Exits 1 after recording the attempt (before touching /run/current-system).
    FailActivation,
    /// Activates, then takes the host's network down (`ip link set eth0 down`); every
    /// system's script brings it up first, so a rollback restores it.
    BreakNetwork,
    /// Activates, then sleeps this many seconds (for killing the agent mid-activation).
    Sleep(u32),
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

/// A Nix expression for a fake system of `host` at `generation`; `salt` makes otherwise
/// identical systems distinct.
pub fn expression(host: &str, generation: u64, behaviour: &Behaviour, salt: &str) -> String {
    expression_sized(host, generation, behaviour, salt, 0)
}

/// [`expression`], with an incompressible `blob_mib` MiB file in the system's dependency
/// (none for 0), so that copying it takes a moment.
pub fn expression_sized(
    host: &str,
    generation: u64,
    behaviour: &Behaviour,
    salt: &str,
    blob_mib: u32,
) -> String {
    let (before, after) = match behaviour {
        Behaviour::Good => (String::new(), String::new()),
        Behaviour::FailActivation => (
            "echo 'activation failed on purpose' >&2; exit 1".to_owned(),
            String::new(),
        ),
        Behaviour::BreakNetwork => (String::new(), "ip link set eth0 down".to_owned()),
        Behaviour::Sleep(s) => (String::new(), format!("sleep {s}")),
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
in mk "nixos-system-{host}-g{generation}" ''
  mkdir -p $out/bin
  echo ${{dep}} > $out/etc-ref
  echo "{generation}" > $out/nixos-version
  sed "s|@out@|$out|g" ${{script}} > $out/bin/switch-to-configuration
  chmod +x $out/bin/switch-to-configuration
  {unit}
''
"#,
        system = nix_system()
    )
}

/// Builds a fake system in the server's store and returns its store path.
pub fn build(dir: &Path, host: &str, generation: u64, behaviour: &Behaviour, salt: &str) -> String {
    build_sized(dir, host, generation, behaviour, salt, 0)
}

/// [`build`], with an incompressible `blob_mib` MiB file in a dependency (none for 0), so
/// that copying it takes a moment.
pub fn build_sized(
    dir: &Path,
    host: &str,
    generation: u64,
    behaviour: &Behaviour,
    salt: &str,
    blob_mib: u32,
) -> String {
    let file = dir.join(format!("{host}-g{generation}-{salt}.nix"));
    let expr = expression_sized(host, generation, behaviour, salt, blob_mib);
    std::fs::write(&file, expr).unwrap();
    super::nix_build(&file).pop().unwrap()
}

/// What `/run/activations` holds after `switch-to-configuration switch` of each of
/// `systems`, in that order.
pub fn switched(systems: &[&str]) -> Vec<String> {
    systems
        .iter()
        .map(|s| format!("{s}/bin/switch-to-configuration switch"))
        .collect()
}
