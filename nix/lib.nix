# Helpers shared by the two NixOS modules: keeping secrets out of the store, rendering
# settings, the executable the agent runs as. Pure functions of `lib`; nothing here touches
# `pkgs` or `config`.
{ lib }:

rec {
  # An assertion that the secret given to option `name` is a path outside the Nix store.
  # A path literal (./netrc) is copied into the world-readable store as soon as it is used
  # in a string, so it is refused too, with a message saying how to write it instead.
  # Never interpolate such a value before this assertion has run: use `toString`.
  secretOutsideStore = name: value: {
    assertion =
      value == null || !(builtins.isPath value || lib.hasPrefix builtins.storeDir (toString value));
    message =
      if builtins.isPath value then
        "${name} is the path literal ${toString value}: Nix would copy it into ${builtins.storeDir}, "
        + "which every local user can read. Write the secret's location on the machine as a "
        + "string instead, e.g. \"/run/secrets/bento\" (placed there by agenix, sops-nix or by hand)."
      else
        "${name} = ${toString value} is in the Nix store, which every local user can read. "
        + "Point it at a file outside the store, e.g. \"/run/secrets/bento\" (placed there by "
        + "agenix, sops-nix or by hand).";
  };

  # A secret's path as the string written into a config file, without copying a path
  # literal into the store (the assertion above refuses those).
  secretPath = value: if value == null then null else toString value;

  # Top-level keys set to null mean "the program's own default": left out of the file.
  withoutNulls = lib.filterAttrs (_: v: v != null);

  # "0440" -> 288. Nix has no octal literals; file modes read better in octal.
  fromOctal = s: lib.foldl' (acc: c: acc * 8 + lib.toIntBase10 c) 0 (lib.stringToCharacters s);

  # "127.0.0.1:8081" or "[::1]:8081": what Rust's SocketAddr accepts. Host names are not
  # (`localhost:8081` passes a string type and then stops `bento serve` at start).
  isSocketAddress =
    s:
    let
      v4 = builtins.match "([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3}):([0-9]{1,5})" s;
      v6 = builtins.match "[[]([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)[]]:([0-9]{1,5})" s;
      below = max: x: lib.toIntBase10 x <= max;
    in
    if v4 != null then
      lib.all (below 255) (lib.take 4 v4) && below 65535 (lib.last v4)
    else
      v6 != null && below 65535 (lib.last v6);

  # The `package` option of both modules: built with the system's own nixpkgs.
  packageOption =
    pkgs:
    lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage (bento + \"/nix/package.nix\") { }";
      description = "The bento package, built by default with this system's own nixpkgs.";
    };

  # A settings key whose default is the program's own: null leaves it out of the file.
  nullableOption =
    type: description:
    lib.mkOption {
      type = lib.types.nullOr type;
      default = null;
      inherit description;
    };

  # `file` as rendered, once the shell command `check` has accepted it; otherwise the build
  # fails with `check`'s message and the `hint` lines. No check when `check` is null, or
  # when the build machine cannot run the host's binaries (a cross build).
  # passthru.unchecked is the file itself (scripts/check-nixos.sh builds it when its bento
  # cannot check yet).
  checkedFile =
    pkgs:
    {
      name,
      file,
      check,
      hint,
    }:
    let
      canRun = pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform;
    in
    pkgs.runCommand name
      {
        preferLocalBuild = true;
        passthru.unchecked = file;
      }
      ''
        ${lib.optionalString (check != null && canRun) ''
          if ! ${check} >&2; then
            ${lib.concatMapStrings (line: "echo ${lib.escapeShellArg "bento: ${line}"} >&2
") hint}
            exit 1
          fi
        ''}
        cp ${file} $out
      '';

  # Host names as `bento` accepts them (src/release/mod.rs, check_host_name).
  isHostName = s: builtins.match "[A-Za-z0-9][A-Za-z0-9._-]{0,62}" s != null;

  # The file the kernel runs when the package's `bento` starts. nix/package.nix wraps the
  # binary (bin/bento is a script adding tools to PATH) and names the real one in
  # passthru.realExe; the agent compares this path with its own /proc/self/exe to notice
  # that a new system brings a new agent, so it must be the real file, not the wrapper.
  realExe = package: if package ? realExe then "${package}/${package.realExe}" else lib.getExe package;
}
