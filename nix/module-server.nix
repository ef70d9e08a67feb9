# services.bento.server: the central machine. Runs `bento serve` (the binary cache hosts
# copy closures from, and the SFTP publisher they pull releases from) as the `bento` user,
# sandboxed, with write access to the state directory only.
#
# The fleet file comes from `settings` (RFC 42: rendered to /etc/bento/bento.toml and
# checked at build time with `bento serve --check-config`; a change is a reload, not a
# restart) or from `configFile`, a bento.toml kept in the fleet's repository outside the
# store (re-read by `bento serve` when it changes).
#
# Keys: the fleet signing key and the SSH host key come from `fleetKeyFile` /
# `sshHostKeyFile` through LoadCredential=, or are made on first start; never in the store.
# Members of the `bento` group can read the state directory and run `bento deploy` (the
# `bento` on their PATH sets BENTO_CONFIG and a group-friendly umask).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types literalExpression;
  bentoLib = import ./lib.nix { inherit lib; };
  cfg = config.services.bento.server;
  toml = pkgs.formats.toml { };

  usesSettings = cfg.configFile == null;
  configPath = if usesSettings then "/etc/bento/bento.toml" else toString cfg.configFile;
  keysDir = "${cfg.stateDir}/keys";
  fleetKey = "${keysDir}/fleet.secret";
  hostKey = "${cfg.stateDir}/ssh/host_ed25519_key";

  # bento.toml from settings: nulls dropped, file modes written as "0440" turned into
  # numbers (TOML has octal literals; Nix has not).
  renderFile =
    f:
    if builtins.isString f then
      f
    else
      bentoLib.withoutNulls (
        f // lib.optionalAttrs (builtins.isString (f.mode or null)) { mode = bentoLib.fromOctal f.mode; }
      );
  renderHost = h: bentoLib.withoutNulls (h // { files = lib.mapAttrs (_: renderFile) h.files; });
  fleetSettings = cfg.settings // {
    fleet = bentoLib.withoutNulls cfg.settings.fleet;
    hosts = lib.mapAttrs (_: renderHost) cfg.settings.hosts;
  };
  settingsFile = toml.generate "bento.toml" fleetSettings;

  listenFlags = [
    "--sftp-listen"
    "[::]:${toString cfg.sftpPort}"
    "--cache-listen"
    "[::]:${toString cfg.cachePort}"
  ]
  ++ (
    if cfg.dashboardListen == null then
      [ "--no-dashboard" ]
    else
      [
        "--dashboard-listen"
        cfg.dashboardListen
      ]
  )
  ++ lib.optional cfg.hostTokens "--host-tokens";

  checkedFleet = bentoLib.checkedFile pkgs {
    name = "bento.toml";
    file = settingsFile;
    check =
      if cfg.checkConfig then
        "${lib.getExe cfg.package} serve --check-config --config ${settingsFile} ${lib.escapeShellArgs listenFlags}"
      else
        null;
    hint = [
      "the fleet file rendered from services.bento.server.settings was refused (above)."
      "the check runs in the build sandbox, where only the Nix store exists; if it names a"
      "file outside the store, set services.bento.server.checkConfig = false."
    ];
  };

  credentials =
    lib.optional (cfg.fleetKeyFile != null) "fleet-key:${toString cfg.fleetKeyFile}"
    ++ lib.optional (cfg.sshHostKeyFile != null) "ssh-host-key:${toString cfg.sshHostKeyFile}"
    ++ lib.optional (cfg.metricsTokenFile != null) "metrics-token:${toString cfg.metricsTokenFile}";

  coreutils = "${pkgs.coreutils}/bin";
  # Runs as `bento` before `bento serve`, inside the same sandbox. Keys given as credentials
  # are installed where bento.toml's defaults expect them (the fleet key group-readable, so
  # that members of `bento` can sign with `bento deploy`); a missing fleet key is made.
  # `bento serve` then prints both public keys, and makes the SSH host key if it is missing.
  keysScript = pkgs.writeShellScript "bento-server-keys" ''
    set -eu
    # Plain mkdir: the new directories inherit the state directory's set-group-ID bit
    # (RestrictSUIDSGID= forbids setting it explicitly) and get 0770 from the umask.
    ${coreutils}/mkdir -p ${keysDir} ${cfg.stateDir}/ssh
    creds=''${CREDENTIALS_DIRECTORY:-/nonexistent}
    if [ -e "$creds/fleet-key" ]; then
      ${coreutils}/install -m 0640 "$creds/fleet-key" ${keysDir}/.fleet.secret.new
      ${coreutils}/mv -f ${keysDir}/.fleet.secret.new ${fleetKey}
      echo "bento: fleet signing key ${fleetKey} installed from services.bento.server.fleetKeyFile"
    ${lib.optionalString cfg.generateFleetKey ''
      elif [ ! -e ${fleetKey} ]; then
        tmp=$(${coreutils}/mktemp -d ${keysDir}/.new-XXXXXX)
        if ! out=$(${lib.getExe cfg.package} keygen --name ${lib.escapeShellArg cfg.fleetKeyName} --out "$tmp" 2>&1); then
          echo "$out" >&2
          exit 1
        fi
        ${coreutils}/chmod 0640 "$tmp/${cfg.fleetKeyName}.secret"
        ${coreutils}/mv "$tmp/${cfg.fleetKeyName}.public" ${keysDir}/fleet.public
        ${coreutils}/mv "$tmp/${cfg.fleetKeyName}.secret" ${fleetKey}
        ${coreutils}/rmdir "$tmp"
        echo "bento: generated the fleet signing key ${fleetKey}; hosts trust its public half: $(${coreutils}/cat ${keysDir}/fleet.public)"
    ''}
    fi
    if [ -e "$creds/ssh-host-key" ]; then
      ${coreutils}/install -m 0600 "$creds/ssh-host-key" ${hostKey}.new
      ${coreutils}/mv -f ${hostKey}.new ${hostKey}
      ${coreutils}/rm -f ${hostKey}.pub
      echo "bento: SSH host key ${hostKey} installed from services.bento.server.sshHostKeyFile"
    fi
  '';

  # What people run: the package's bento with the fleet file preset and a umask that keeps
  # what they publish readable and writable by the server (group `bento`).
  adminBento = pkgs.writeShellScriptBin "bento" ''
    export BENTO_CONFIG="''${BENTO_CONFIG:-${configPath}}"
    umask 0007
    exec ${lib.getExe cfg.package} "$@"
  '';

  privilegedPort = lib.any (p: p < 1024) [
    cfg.sftpPort
    cfg.cachePort
  ];

  optional = bentoLib.nullableOption;

  deliveredFile = types.either types.str (
    types.submodule {
      freeformType = toml.type;
      options = {
        source = mkOption {
          type = types.str;
          description = "Where the file is read on the server (absolute).";
        };
        mode = mkOption {
          type = types.nullOr (types.either types.ints.unsigned (types.strMatching "0?[0-7]{3}"));
          default = null;
          example = "0440";
          description = "Its mode on the host, as a number or an octal string (default 0400).";
        };
      };
    }
  );
in
{
  options.services.bento.server = {
    enable = lib.mkEnableOption "the Bento server (binary cache and SFTP publisher)";

    package = bentoLib.packageOption pkgs;

    settings = mkOption {
      default = { };
      description = ''
        The fleet file (bento.toml) as Nix: `[fleet]` and one `hosts.<name>` per host. Rendered
        to /etc/bento/bento.toml, where relative paths would point into the Nix store: give
        `fleet.flake` as an absolute path or a flake URL, and file sources as absolute paths.
        Ignored when `configFile` is set.
      '';
      example = literalExpression ''
        {
          fleet.flake = "git+file:///srv/fleet";
          hosts.web1 = {
            ssh_key = "ssh-ed25519 AAAA... root@web1";
            tags = [ "web" ];
            files."db-password" = { source = "/srv/secrets/web1/db-password"; mode = "0440"; };
          };
        }
      '';
      type = types.submodule {
        freeformType = toml.type;
        options = {
          fleet = mkOption {
            default = { };
            description = "The `[fleet]` table.";
            type = types.submodule {
              freeformType = toml.type;
              options = {
                flake = optional types.str "The flake holding nixosConfigurations: an absolute path or a flake URL.";
                state_dir = mkOption {
                  type = types.str;
                  default = cfg.stateDir;
                  defaultText = literalExpression "config.services.bento.server.stateDir";
                  description = "The state directory; must equal `services.bento.server.stateDir`.";
                };
                signing_key = optional types.str "The fleet signing key (default: `<state_dir>/keys/fleet.secret`, which the module fills from `fleetKeyFile` or makes).";
                jobs = optional types.ints.positive "Hosts built at once (default: from cores and memory).";
                keep_systems = optional types.ints.positive "Per host, the newest published systems kept from garbage collection (default 5).";
                stale_after_secs = optional types.ints.positive "Seconds of silence after which a host is stale (default 300).";
              };
            };
          };
          hosts = mkOption {
            default = { };
            description = "One table per host; the name is the host's name (and its agent's `hostName`).";
            type = types.attrsOf (
              types.submodule {
                freeformType = toml.type;
                options = {
                  ssh_key = mkOption {
                    type = types.str;
                    description = "The host's SSH public key (its agent's `sshKeyFile`, public half).";
                  };
                  tags = mkOption {
                    type = types.listOf types.str;
                    default = [ ];
                    description = "Tags, to select hosts as @tag.";
                  };
                  attr = optional types.str "Flake attribute of the host's system (default nixosConfigurations.<name>.config.system.build.toplevel).";
                  configuration = optional types.str "A configuration.nix to build instead of a flake attribute (absolute).";
                  files = mkOption {
                    type = types.attrsOf deliveredFile;
                    default = { };
                    description = "Files delivered to the host outside the Nix store, under its agent's files_dir: name = source or { source, mode }.";
                  };
                };
              }
            );
          };
        };
      };
    };

    configFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/srv/fleet/bento.toml";
      description = ''
        A bento.toml outside the Nix store (typically in the fleet's git checkout), used
        instead of `settings`; `bento serve` re-reads it when it changes. It must be
        readable by the `bento` user, and so must the flake and files it names; its
        `[fleet] state_dir` must be `stateDir`. Not checked at build time.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Check the bento.toml rendered from `settings` at build time with
        `bento serve --check-config`. The check runs in the build sandbox, where only the Nix
        store exists: turn it off when the file names files outside the store that the
        check would look for.
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/bento";
      description = ''
        Releases, reports, the cache's compressed NARs and the keys. Owned by `bento`, mode
        2770: members of the `bento` group read it and can publish into it.
      '';
    };

    fleetKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/bento-fleet-key";
      description = ''
        The fleet signing key (Nix format, `bento keygen`), e.g. placed by agenix or
        sops-nix. Read through LoadCredential= and installed on each start as
        `<stateDir>/keys/fleet.secret`, mode 0640, group `bento`. When null, a key is made there
        on first start (see `generateFleetKey`) and its public half printed in the journal.
        A path outside the Nix store, given as a string.
      '';
    };

    generateFleetKey = mkOption {
      type = types.bool;
      default = cfg.fleetKeyFile == null && cfg.settings.fleet.signing_key == null;
      defaultText = literalExpression "fleetKeyFile == null && settings.fleet.signing_key == null";
      description = "Make `<stateDir>/keys/fleet.secret` on first start when it is missing.";
    };

    fleetKeyName = mkOption {
      type = types.strMatching "[A-Za-z0-9._-]+";
      default = "bento-fleet-1";
      description = "Name of a generated fleet key, as it appears in signatures and in the hosts' `fleetPublicKey`.";
    };

    sshHostKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/bento-ssh-host-key";
      description = ''
        The SFTP server's SSH host key (OpenSSH ed25519 private key), through
        LoadCredential=. When null, `bento serve` makes `<stateDir>/ssh/host_ed25519_key` on
        first start; either way it prints the public key hosts pin. A path outside the Nix
        store, given as a string.
      '';
    };

    sftpPort = mkOption {
      type = types.port;
      default = 2222;
      description = "Port of the SFTP publisher hosts pull releases from.";
    };

    cachePort = mkOption {
      type = types.port;
      default = 8080;
      description = "Port of the binary cache hosts copy closures from (also /metrics).";
    };

    dashboardListen = mkOption {
      type = types.nullOr types.str;
      default = "127.0.0.1:8081";
      example = "[::1]:8081";
      description = ''
        IP:port of the fleet dashboard. It has no login and shows every host's logs: keep it
        on loopback and reach it through an SSH tunnel or an authenticating proxy. Never
        opened in the firewall. null turns it off.
      '';
    };

    hostTokens = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Give each host a cache token (`<stateDir>/cache-tokens/<host>`, made when missing) and
        let it fetch only its own closure. Each agent then needs `cacheNetrcFile`.
      '';
    };

    metricsTokenFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/bento-metrics-token";
      description = ''
        A file holding a token that /metrics then requires (`Authorization: Bearer <token>`),
        through LoadCredential=. A path outside the Nix store, given as a string.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the SFTP and cache ports (never the dashboard's) in the firewall.";
    };

    openFilesLimit = mkOption {
      type = types.ints.positive;
      default = 65536;
      description = ''
        LimitNOFILE of the server. Every agent with instant updates holds one connection,
        and each download a few more: the default 1024 stops a fleet of about a thousand
        hosts.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "--max-nar-streams"
        "128"
      ];
      description = "More arguments for `bento serve` (see `bento serve --help`).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      (bentoLib.secretOutsideStore "services.bento.server.fleetKeyFile" cfg.fleetKeyFile)
      (bentoLib.secretOutsideStore "services.bento.server.sshHostKeyFile" cfg.sshHostKeyFile)
      (bentoLib.secretOutsideStore "services.bento.server.metricsTokenFile" cfg.metricsTokenFile)
      {
        assertion = cfg.dashboardListen == null || bentoLib.isSocketAddress cfg.dashboardListen;
        message =
          "services.bento.server.dashboardListen = \"${toString cfg.dashboardListen}\" is not an IP:port address "
          + "(host names are not accepted): write e.g. \"127.0.0.1:8081\" or \"[::1]:8081\", or null to turn the dashboard off.";
      }
      {
        assertion = cfg.sftpPort != cfg.cachePort;
        message = "services.bento.server.sftpPort and services.bento.server.cachePort are both ${toString cfg.sftpPort}.";
      }
      {
        assertion = !usesSettings || cfg.settings.hosts != { };
        message =
          "services.bento.server has no fleet: set services.bento.server.configFile to your fleet's bento.toml, "
          + "or describe the hosts in services.bento.server.settings.hosts.";
      }
      {
        assertion = usesSettings || cfg.settings.hosts == { };
        message = "services.bento.server: set either configFile or settings.hosts, not both (settings are ignored when configFile is set).";
      }
      {
        assertion = !(builtins.isPath cfg.configFile) && !(lib.hasPrefix builtins.storeDir (toString cfg.configFile));
        message =
          "services.bento.server.configFile = ${toString cfg.configFile} would be (or is) in the Nix store, away from the "
          + "flake and files it names, and edits would need a rebuild. Give the path of the bento.toml in your fleet's "
          + "checkout as a string, e.g. \"/srv/fleet/bento.toml\", or use services.bento.server.settings.";
      }
      {
        assertion = usesSettings || !(lib.hasPrefix "/home/" (toString cfg.configFile) || lib.hasPrefix "/root/" (toString cfg.configFile));
        message = "services.bento.server.configFile = ${toString cfg.configFile} is under a home directory, which the server's sandbox hides (ProtectHome=): keep the fleet repository elsewhere, e.g. /srv/fleet.";
      }
      {
        assertion =
          let
            flake = cfg.settings.fleet.flake;
          in
          !usesSettings || (flake != null && (lib.hasPrefix "/" flake || lib.hasInfix ":" flake));
        message =
          "services.bento.server.settings.fleet.flake must be set to an absolute path or a flake URL: the bento.toml "
          + "rendered from settings lives in the Nix store, where the default \".\" would point.";
      }
      {
        assertion = cfg.settings.fleet.state_dir == cfg.stateDir;
        message = "services.bento.server.settings.fleet.state_dir must equal services.bento.server.stateDir (${cfg.stateDir}): the service can write only there.";
      }
      {
        assertion = lib.hasPrefix "/" cfg.stateDir && cfg.stateDir != "/";
        message = "services.bento.server.stateDir = \"${cfg.stateDir}\" must be an absolute path other than /.";
      }
      {
        assertion = !(cfg.fleetKeyFile != null && cfg.settings.fleet.signing_key != null);
        message = "services.bento.server: fleetKeyFile is installed as <stateDir>/keys/fleet.secret, the default signing_key; do not also set settings.fleet.signing_key.";
      }
    ];

    users.users.bento = {
      isSystemUser = true;
      group = "bento";
      home = cfg.stateDir;
      description = "Bento server";
    };
    users.groups.bento = { };

    systemd.tmpfiles.rules = [ "d ${cfg.stateDir} 2770 bento bento - -" ];

    environment.etc."bento/bento.toml" = lib.mkIf usesSettings { source = checkedFleet; };
    environment.systemPackages = [ (lib.hiPrio adminBento) ];
    environment.variables.BENTO_CONFIG = configPath;

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [
      cfg.sftpPort
      cfg.cachePort
    ];

    systemd.services.bento-server = {
      description = "Bento server: binary cache and SFTP publisher";
      wantedBy = [ "multi-user.target" ];
      after = [
        "network.target"
        "nix-daemon.socket"
      ];
      wants = [ "nix-daemon.socket" ];
      path = [ config.nix.package ];
      environment = {
        BENTO_CONFIG = configPath;
        NIX_REMOTE = "daemon";
        XDG_CACHE_HOME = "/var/cache/bento";
      };
      # A new bento.toml from settings keeps the unit file as it is (it names
      # /etc/bento/bento.toml): the switch reloads the server, which keeps the other hosts'
      # sessions, instead of restarting it.
      reloadTriggers = lib.optional usesSettings checkedFleet;
      serviceConfig = {
        User = "bento";
        Group = "bento";
        UMask = "0007";
        ExecStartPre = [ keysScript ];
        ExecStart = lib.escapeShellArgs (
          [
            (lib.getExe cfg.package)
            "serve"
            "--config"
            configPath
          ]
          ++ listenFlags
          ++ lib.optionals (cfg.metricsTokenFile != null) [
            "--metrics-token-file"
            "%d/metrics-token"
          ]
          ++ cfg.extraArgs
        );
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "always";
        RestartSec = 5;
        LimitNOFILE = cfg.openFilesLimit;
        LoadCredential = credentials;
        CacheDirectory = "bento";

        # Sandbox: read-only system, writable state directory only.
        ReadWritePaths = [ cfg.stateDir ];
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        NoNewPrivileges = true;
        CapabilityBoundingSet = if privilegedPort then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
        AmbientCapabilities = lib.optional privilegedPort "CAP_NET_BIND_SERVICE";
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
        SystemCallArchitectures = "native";
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        DevicePolicy = "closed";
      };
    };
  };
}
