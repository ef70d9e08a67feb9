# services.bento.agent: the host side.
#
# Renders the agent's TOML from `settings` (RFC 42: freeform, the known keys typed, the
# common ones also as shortcut options), checks it at build time with
# `bento agent check-config`, and runs the agent as a unit that activation never restarts
# (the agent must survive the switch it performs; it restarts itself, exit code 9, when a
# new system brings a new agent: see /etc/bento/agent-unit.json below). Also provides
# /etc/bento/agent.toml for `bento agent --once`, `bento-files.service` which puts the
# delivered files back after a reboot, and the host's SSH key when sshd does not make one.
#
# The agent runs as root and is not sandboxed: it replaces the whole system, and the one
# config file must also serve `bento agent --once` and `bento-files.service`, so secrets are
# named by their paths on the host (checked to be outside the store) rather than through
# LoadCredential, whose paths exist only inside one unit.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types literalExpression;
  bentoLib = import ./lib.nix { inherit lib; };
  cfg = config.services.bento.agent;
  toml = pkgs.formats.toml { };

  # The key this module makes when sshd does not make one (services.openssh disabled).
  ownKey = "/var/lib/bento-agent/ssh/id_ed25519";
  usesOwnKey = toString cfg.sshKeyFile == ownKey;
  # Keys sshd generates (sshd-keygen.service, or sshd's own start on older NixOS).
  sshdKeys = lib.optionals (config.services.openssh.enable or false) (
    map (k: toString k.path) (config.services.openssh.hostKeys or [ ])
  );
  usesSshdKey = lib.elem (toString cfg.sshKeyFile) sshdKeys;

  settingsFile = toml.generate "bento-agent.toml" (bentoLib.withoutNulls cfg.settings);
  # The rendered file, accepted by the agent that will read it. Its store path is what the
  # unit runs with and what agent-unit.json names.
  checkedConfig = bentoLib.checkedFile pkgs {
    name = "bento-agent.toml";
    file = settingsFile;
    check = "${lib.getExe cfg.package} agent check-config ${settingsFile}";
    hint = [ "the agent configuration rendered from services.bento.agent.settings was refused (above)." ];
  };
  exe = bentoLib.realExe cfg.package;

  ownKeyScript = pkgs.writeShellScript "bento-agent-key" ''
    set -eu
    key=${ownKey}
    if [ ! -e "$key" ]; then
      ${pkgs.coreutils}/bin/install -d -m 0700 "$(${pkgs.coreutils}/bin/dirname "$key")"
      ${pkgs.openssh}/bin/ssh-keygen -q -t ed25519 -N "" -C "bento-agent@${cfg.settings.host}" -f "$key"
      echo "bento: generated this host's key $key"
    fi
    echo "bento: this host logs in with $key; in bento.toml: [hosts.${cfg.settings.host}] ssh_key = \"$(${pkgs.coreutils}/bin/cut -d' ' -f1,2 "$key.pub")\""
  '';

  optional = bentoLib.nullableOption;
  actions = types.enum [
    "switch"
    "boot"
    "test"
  ];
  # A settings key that defaults to the shortcut option of the same meaning.
  fromShortcut =
    type: shortcut: description:
    mkOption {
      inherit type description;
      default = cfg.${shortcut};
      defaultText = literalExpression "config.services.bento.agent.${shortcut}";
    };
in
{
  imports =
    let
      moved = old: new: lib.mkRenamedOptionModule [ "services" "bento" "agent" old ] [ "services" "bento" "agent" "settings" new ];
    in
    [
      (moved "pollInterval" "poll_interval_secs")
      (moved "confirmTimeout" "confirm_timeout_secs")
      (moved "instantUpdates" "instant_updates")
      (moved "filesDir" "files_dir")
      (moved "metricsTextfile" "metrics_textfile")
    ];

  options.services.bento.agent = {
    enable = lib.mkEnableOption "the Bento agent, which pulls, activates and confirms this host's system";

    package = bentoLib.packageOption pkgs;

    hostName = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      example = "web1";
      description = ''
        This host's name in bento.toml, also its SFTP user name. Set it when
        `networking.hostName` is empty (a name from DHCP) or differs from the fleet's name.
      '';
    };

    server = mkOption {
      type = types.str;
      example = "bento.example.org:2222";
      description = "The Bento server's SFTP address, `host:port`.";
    };

    serverHostKey = mkOption {
      type = types.str;
      example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...";
      description = ''
        The server's SSH host key, as `bento serve` prints it at start (`journalctl -u
        bento-server`). Pinned: no other key is trusted, not even on first use.
      '';
    };

    fleetPublicKey = mkOption {
      type = types.str;
      example = "bento-fleet-1:cb1G7tENqlCU2ZJAj+1Tk7f3LzTABDCtJrspN2aDpzw=";
      description = "The fleet's public signing key (`name:base64`): the only signer of releases and closures this host accepts.";
    };

    cacheUrl = mkOption {
      type = types.str;
      example = "http://bento.example.org:8080";
      description = "The Bento server's binary cache (or `file:///mnt/cache` for a cache carried to the host).";
    };

    sshKeyFile = mkOption {
      type = types.path;
      default = if config.services.openssh.enable or false then "/etc/ssh/ssh_host_ed25519_key" else ownKey;
      defaultText = literalExpression ''
        if config.services.openssh.enable
        then "/etc/ssh/ssh_host_ed25519_key"
        else "${ownKey}"
      '';
      description = ''
        Private key this host logs in to the server with; its public half is the host's
        `ssh_key` in bento.toml. The agent starts after sshd has made its host key; without
        sshd, the module makes ${ownKey} on first start and prints its public half
        in the journal (`journalctl -u bento-agent`). A path outside the Nix store, given as
        a string.
      '';
    };

    cacheNetrcFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/bento-netrc";
      description = ''
        netrc file with this host's cache token (`machine <server> login <host> password
        <token>`), when the server runs with `hostTokens`. A path outside the Nix store,
        given as a string.
      '';
    };

    action = mkOption {
      type = actions;
      default = "switch";
      description = "What `switch-to-configuration` is asked to do; `boot` makes the new system the boot default only.";
    };

    healthChecks = mkOption {
      type = types.listOf (types.listOf types.str);
      default = [ ];
      example = literalExpression ''[ [ "systemctl" "is-active" "nginx.service" ] [ "curl" "-fsS" "http://127.0.0.1/health" ] ]'';
      description = ''
        Commands (argument lists) that must all succeed, within the confirm timeout, for a
        new system to be kept. They run with the agent's PATH: add what they need to
        `extraPackages`, or name programs by their store path.
      '';
    };

    extraPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = literalExpression "[ pkgs.curl pkgs.postgresql ]";
      description = "Packages on the agent's PATH for health checks, besides nix, iproute2 and systemd.";
    };

    settings = mkOption {
      default = { };
      description = ''
        The agent's configuration file (TOML), as documented in docs/agent.md. Keys not
        listed here are passed through; `bento agent check-config` refuses unknown ones at
        build time. Keys left null take the agent's own default.
      '';
      type = types.submodule {
        freeformType = toml.type;
        options = {
          host = fromShortcut types.str "hostName" "This host's name in the fleet.";
          server = fromShortcut types.str "server" "SFTP address of the server.";
          server_host_key = fromShortcut types.str "serverHostKey" "The server's pinned SSH host key.";
          fleet_public_key = fromShortcut types.str "fleetPublicKey" "The fleet's public signing key.";
          cache_url = fromShortcut types.str "cacheUrl" "The binary cache.";
          ssh_key = mkOption {
            type = types.str;
            default = toString cfg.sshKeyFile;
            defaultText = literalExpression "toString config.services.bento.agent.sshKeyFile";
            description = "Path of the host's private key.";
          };
          cache_netrc = mkOption {
            type = types.nullOr types.str;
            default = bentoLib.secretPath cfg.cacheNetrcFile;
            defaultText = literalExpression "config.services.bento.agent.cacheNetrcFile";
            description = "Path of the netrc file with the host's cache token.";
          };
          action = fromShortcut actions "action" "What switch-to-configuration is asked to do.";
          health_checks = fromShortcut (types.listOf (types.listOf types.str)) "healthChecks" "Commands that must all succeed for a new system to be kept.";
          state_dir = mkOption {
            type = types.str;
            default = "/var/lib/bento-agent";
            description = "The agent's state (applied generation, outbox, verified files); under /var/lib, made by systemd's StateDirectory=.";
          };
          poll_interval_secs = optional types.ints.positive "Seconds between polls (default 60).";
          poll_jitter = optional (types.numbers.between 0 1) "Random spread of the poll interval, as a fraction (default 0.2).";
          confirm_timeout_secs = optional types.ints.positive "Seconds a new system has to reach the server and pass its health checks (default 90).";
          confirm_retry_secs = optional types.ints.positive "Seconds between confirmation attempts (default 3).";
          retry_base_secs = optional types.ints.positive "First delay before retrying a generation rolled back while the server was unreachable (default 60, doubling, at most an hour).";
          activation_timeout_secs = optional types.ints.positive "Deadline of switch-to-configuration (default 600).";
          copy_timeout_secs = optional types.ints.positive "Deadline of copying a closure (default 3600).";
          copy_method = optional (types.enum [
            "auto"
            "transfer"
            "substitute"
          ]) "How closures are copied: auto (the whole-closure transfer from bento serve over http://, parallel substitution from any other cache), transfer or substitute (default auto).";
          substitute_jobs = optional (types.ints.between 1 256) "Paths substituted at once when copying by substitution (default 16).";
          instant_updates = optional types.bool "Keep one SSH session open to learn of new releases at once (default true).";
          files_dir = optional types.str "Where delivered files are installed (default /run/bento/files); a directory Bento owns.";
          memory_staging_dir = optional types.str "Where a small delivery is staged, on a memory file system (default /run/bento-agent/transfer).";
          memory_staging_max_mib = optional types.ints.unsigned "The largest delivery staged in memory_staging_dir, in MiB; 0 stages every delivery in the state directory (default 64).";
          trigger_socket = optional types.str "Socket of `bento agent trigger` (default /run/bento-agent/trigger.sock).";
          trigger_group = optional types.str "Group that may use the trigger socket (default: root only).";
          http_trigger = optional types.str "Loopback address of a local \"check now\" page, e.g. 127.0.0.1:51337 (default off).";
          metrics_textfile = optional types.str "Node-exporter textfile written after each attempt, e.g. /var/lib/prometheus-node-exporter/bento.prom.";
          profile = optional types.str "The system profile (default /nix/var/nix/profiles/system).";
          current_system = optional types.str "The link to the running system (default /run/current-system).";
        };
      };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.settings.host != "";
        message =
          "services.bento.agent.hostName is empty (it defaults to networking.hostName, which is \"\" "
          + "when the name comes from DHCP). Set services.bento.agent.hostName to this host's name in bento.toml.";
      }
      {
        assertion = cfg.settings.host == "" || bentoLib.isHostName cfg.settings.host;
        message = "services.bento.agent.hostName = \"${cfg.settings.host}\" is not a Bento host name: 1 to 63 of A-Z a-z 0-9 . _ -, starting with a letter or digit.";
      }
      (bentoLib.secretOutsideStore "services.bento.agent.sshKeyFile" cfg.sshKeyFile)
      (bentoLib.secretOutsideStore "services.bento.agent.cacheNetrcFile" cfg.cacheNetrcFile)
      {
        assertion = lib.hasPrefix "/var/lib/" cfg.settings.state_dir;
        message = "services.bento.agent.settings.state_dir = \"${cfg.settings.state_dir}\" must be under /var/lib/ (the unit makes it with StateDirectory=).";
      }
      {
        assertion = cfg.settings.http_trigger == null || bentoLib.isSocketAddress cfg.settings.http_trigger;
        message = "services.bento.agent.settings.http_trigger = \"${toString cfg.settings.http_trigger}\" is not an IP:port address such as 127.0.0.1:51337.";
      }
    ];

    environment.systemPackages = [ cfg.package ];

    # For people: `bento agent --once` and `bento agent check-config` read this by default.
    environment.etc."bento/agent.toml".source = checkedConfig;
    # For the agent's self-update (docs/nixos.md): after a confirmed switch it reads this
    # file of the new system and exits with code 9 when the config or binary differ from
    # those it runs with; Restart=always then starts the new one.
    environment.etc."bento/agent-unit.json".text = builtins.toJSON {
      format = 1;
      config = "${checkedConfig}";
      binary = exe;
    };

    systemd.services.bento-agent = {
      description = "Bento agent: pull, activate, confirm or roll back";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ] ++ lib.optional usesSshdKey "sshd-keygen.service";
      after = [
        "network-online.target"
        "bento-files.service"
      ]
      ++ lib.optionals usesSshdKey [
        "sshd-keygen.service"
        "sshd.service"
      ];
      # Activation must not stop or restart the agent that performs it.
      restartIfChanged = false;
      stopIfChanged = false;
      path = [
        config.nix.package
        pkgs.iproute2
        config.systemd.package
      ]
      ++ cfg.extraPackages;
      # Never give up on the one process that can repair this host.
      unitConfig.StartLimitIntervalSec = 0;
      serviceConfig = {
        ExecStartPre = lib.optional usesOwnKey ownKeyScript;
        ExecStart = "${exe} agent --config ${checkedConfig}";
        Restart = "always";
        RestartSec = 5;
        StateDirectory = lib.removePrefix "/var/lib/" cfg.settings.state_dir;
        StateDirectoryMode = "0700";
        RuntimeDirectory = "bento-agent";
      };
    };

    # /run is empty after a reboot: put the delivered files back from the agent's verified
    # copy before the services that read them start. Those services use
    #   after = [ "bento-files.target" ]; wants = [ "bento-files.target" ];
    systemd.services.bento-files = {
      description = "Bento: put back the files delivered to this host";
      wantedBy = [
        "bento-files.target"
        "multi-user.target"
      ];
      before = [ "bento-files.target" ];
      after = [ "local-fs.target" ];
      restartIfChanged = false;
      path = [ config.nix.package ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${exe} agent restore-files --config ${checkedConfig}";
        TimeoutStartSec = "2min";
      };
    };
    systemd.targets.bento-files = {
      description = "Files delivered by Bento are in place";
      wantedBy = [ "multi-user.target" ];
    };
  };
}
