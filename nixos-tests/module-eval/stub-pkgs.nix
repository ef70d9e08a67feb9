# Stand-ins for the few parts of nixpkgs the modules, nix/package.nix and the test nodes use,
# for evaluating them on a machine without nixpkgs (scripts/check-nixos.sh). Every
# derivation is real and builds with /bin/sh and the machine's own tools (no sandbox), so
# the rendered configuration files really go through the real `bento`:
#
#   - `bentoBin`: a bento binary (target/debug/bento, stripped) standing in for the
#     result of `rustPlatform.buildRustPackage`; package.nix's own postInstall (moving the
#     binary to libexec/ and wrapping it) runs on it, with a small makeWrapper.
#   - formats.toml: renders TOML with the small printer below (nixpkgs uses remarshal).
#   - tools (coreutils, openssh, nix, ...): links to the machine's programs.
#
# Only used by nixos-tests/module-eval/check.nix; the flake's checks use real nixpkgs.
{ lib, bentoBin }:

let
  system = builtins.currentSystem;
  platform = lib.systems.elaborate system;

  # A derivation built by /bin/sh with the machine's tools.
  sh =
    name: script: env:
    derivation (
      {
        inherit name system;
        builder = "/bin/sh";
        args = [
          "-c"
          script
        ];
        PATH = "/usr/local/bin:/usr/bin:/bin";
      }
      // env
    );

  # A package whose bin/ links the machine's programs (by name).
  machineTools =
    name: programs:
    sh name ''
      mkdir -p $out/bin
      for p in ${toString programs}; do
        found=$(command -v "$p") || { echo "stub ${name}: $p not found on this machine" >&2; exit 1; }
        ln -s "$found" "$out/bin/$p"
      done
    '' { }
    // {
      meta = {
        mainProgram = builtins.head programs;
        platforms = lib.platforms.all;
      };
    };

  # TOML printer: scalars and arrays first, then sub-tables (with dotted headers). Strings
  # are JSON-quoted, which TOML basic strings accept.
  toTOML =
    let
      isTable = v: builtins.isAttrs v && !(lib.isDerivation v);
      key = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else builtins.toJSON k;
      value =
        v:
        if builtins.isString v || lib.isDerivation v || builtins.isPath v then
          builtins.toJSON "${v}"
        else if builtins.isBool v then
          lib.boolToString v
        else if builtins.isInt v || builtins.isFloat v then
          builtins.toJSON v
        else if builtins.isList v then
          "[" + lib.concatMapStringsSep ", " value v + "]"
        else if isTable v then
          "{ " + lib.concatStringsSep ", " (lib.mapAttrsToList (k: x: "${key k} = ${value x}") v) + " }"
        else
          throw "stub formats.toml: cannot render ${builtins.typeOf v}";
      table =
        prefix: attrs:
        let
          plain = lib.filterAttrs (_: v: !isTable v) attrs;
          tables = lib.filterAttrs (_: isTable) attrs;
          header = lib.optionalString (prefix != [ ]) "[${lib.concatMapStringsSep "." key prefix}]\n";
        in
        header
        + lib.concatStrings (lib.mapAttrsToList (k: v: "${key k} = ${value v}\n") plain)
        + "\n"
        + lib.concatStrings (lib.mapAttrsToList (k: v: table (prefix ++ [ k ]) v) tables);
    in
    table [ ];

  tomlValue = lib.types.nullOr (
    lib.types.oneOf [
      lib.types.bool
      lib.types.int
      lib.types.float
      lib.types.str
      lib.types.path
      (lib.types.attrsOf tomlValue)
      (lib.types.listOf tomlValue)
    ]
  )
  // {
    description = "TOML value";
  };

  writeTextFile =
    {
      name,
      text,
      executable ? false,
      destination ? "",
    }:
    sh name ''
      target=$out${destination}
      mkdir -p "$(dirname "$target")"
      cp "$textPath" "$target"
      ${lib.optionalString executable ''chmod +x "$target"''}
    '' {
      inherit text;
      passAsFile = [ "text" ];
    };

  # The result of buildRustPackage: the given binary, then the package's own postInstall.
  # makeWrapper supports what package.nix uses (--suffix/--prefix PATH : dirs).
  buildRustPackage =
    attrs:
    assert builtins.pathExists attrs.cargoLock.lockFile;
    sh "${attrs.pname}-${attrs.version}" ''
      makeWrapper() {
        real=$1; wrapper=$2; shift 2
        path_line=""
        while [ $# -gt 0 ]; do
          case $1 in
            --suffix) path_line="export $2=\"\''${$2:+\$$2$3}$4\""; shift 4 ;;
            --prefix) path_line="export $2=\"$4\''${$2:+$3\$$2}\""; shift 4 ;;
            *) echo "stub makeWrapper: $1 unsupported" >&2; return 1 ;;
          esac
        done
        printf '#!/bin/sh\n%s\nexec "%s" "$@"\n' "$path_line" "$real" > "$wrapper"
        chmod +x "$wrapper"
      }
      wrapProgram() { mv "$1" "$(dirname "$1")/.$(basename "$1")-wrapped"; p=$1; shift; makeWrapper "$(dirname "$p")/.$(basename "$p")-wrapped" "$p" "$@"; }
      set -e
      mkdir -p $out/bin
      cp ${bentoBin} $out/bin/bento
      chmod +x $out/bin/bento
      ${attrs.postInstall or ""}
    '' { }
    // {
      inherit (attrs) meta;
      passthru = attrs.passthru or { };
    }
    // (attrs.passthru or { });

  pkgs = {
    inherit lib system;
    stdenv = {
      hostPlatform = platform;
      buildPlatform = platform;
      inherit (platform) isLinux;
    };
    formats.toml = _: {
      type = lib.types.attrsOf tomlValue;
      generate =
        name: value:
        writeTextFile {
          inherit name;
          text = toTOML value;
        };
    };
    inherit writeTextFile;
    writeText =
      name: text:
      writeTextFile {
        inherit name text;
      };
    writeShellScript =
      name: text:
      writeTextFile {
        inherit name;
        executable = true;
        text = "#!/bin/bash\n" + text;
      };
    writeShellScriptBin =
      name: text:
      writeTextFile {
        inherit name;
        executable = true;
        destination = "/bin/${name}";
        text = "#!/bin/bash\n" + text;
      }
      // {
        meta.mainProgram = name;
      };
    runCommand =
      name: env: script:
      sh name "set -e\n${script}" (removeAttrs env [ "passthru" ]) // (env.passthru or { });
    callPackage =
      fn: args:
      let
        f = if builtins.isFunction fn then fn else import fn;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // args);
    rustPlatform = {
      inherit buildRustPackage;
    };
    makeWrapper = machineTools "make-wrapper-stub" [ "true" ];
    coreutils = machineTools "coreutils" [
      "install"
      "mkdir"
      "mktemp"
      "mv"
      "chmod"
      "rm"
      "rmdir"
      "cat"
      "cut"
      "dirname"
      "kill"
    ];
    openssh = machineTools "openssh" [
      "ssh"
      "ssh-keygen"
      "sftp"
    ];
    nix = machineTools "nix" [
      "nix"
      "nix-store"
      "nix-env"
      "nix-instantiate"
    ];
    iproute2 = machineTools "iproute2" [ "ip" ];
    systemd = machineTools "systemd-stub" [ "true" ];
    curl = machineTools "curl" [ "curl" ];
    hello = machineTools "hello-stub" [ "true" ];
  };
in
pkgs
