# The bento package: the binary, wrapped so that the programs it runs are found even where
# they are not on PATH (a minimal container, a non-NixOS machine, a systemd unit with a short
# PATH). The host's own tools come first: the wrapper only *appends* them (--suffix), so a
# NixOS host keeps using its own `nix` (the one that matches its daemon) and its own
# systemd.
#
# Tests are not run in the build: they need root, namespaces and a writable Nix store
# (`make test` runs them; `nix flake check` runs the VM tests in nixos-tests/).
{
  lib,
  stdenv,
  rustPlatform,
  makeWrapper,
  nix,
  systemd,
  # `systemd-run`: the agent runs switch-to-configuration in a transient unit when the
  # machine runs systemd. Off where systemd is not available for the platform.
  withSystemd ? lib.meta.availableOn stdenv.hostPlatform systemd,
}:

let
  cargo = lib.importTOML ../Cargo.toml;
  # What `bento` runs (src/nix/cmd.rs and the agent): nix, nix-store, nix-env,
  # nix-instantiate; systemd-run for the switch. SSH is russh inside the binary: no
  # openssh is needed.
  runtimeTools = [ nix ] ++ lib.optional withSystemd systemd;
in
rustPlatform.buildRustPackage {
  pname = "bento";
  inherit (cargo.package) version;

  src = lib.cleanSourceWith {
    name = "bento-source";
    src = ../.;
    filter =
      path: type:
      let
        base = baseNameOf path;
      in
      !(builtins.elem base [
        "target"
        "fuzz"
        ".ci"
        ".github"
        "nixos-tests"
        "docs"
        "result"
      ])
      && !(lib.hasSuffix ".nix" base && type == "regular");
  };
  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ makeWrapper ];
  doCheck = false;

  # The real binary goes to libexec/ and bin/bento becomes the wrapper. The agent compares
  # its own /proc/self/exe with the `binary` its new system names (self-update), so the
  # NixOS module starts the agent with libexec/bento itself (passthru.realExe) and puts
  # these tools on the unit's PATH instead.
  postInstall = ''
    mkdir -p $out/libexec
    mv $out/bin/bento $out/libexec/bento
    makeWrapper $out/libexec/bento $out/bin/bento --suffix PATH : ${lib.makeBinPath runtimeTools}
  '';

  passthru = {
    inherit runtimeTools;
    realExe = "libexec/bento";
  };

  meta = {
    description = "Pull-based deployment for fleets of NixOS machines";
    longDescription = ''
      One server builds every host's system and serves it (a signed release over SFTP,
      the closure from its own binary cache); each host's agent pulls, activates,
      confirms it can still reach the server and is healthy, or rolls back by itself.
    '';
    license = lib.licenses.mit;
    mainProgram = "bento";
    platforms = lib.platforms.linux;
  }
  // lib.optionalAttrs (cargo.package ? repository) { homepage = cargo.package.repository; };
}
