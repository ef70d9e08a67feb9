# services.bento.agent: the host side. Renders the agent's TOML configuration, validates it
# at build time with `bento agent check-config`, and runs the agent as a service that
# activation does not restart (the agent must survive the switch it performs).
self:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.bento.agent;
  toml = pkgs.formats.toml { };
  settings = {
    host = cfg.hostName;
    server = cfg.server;
    server_host_key = cfg.serverHostKey;
    ssh_key = toString cfg.sshKeyFile;
    cache_url = cfg.cacheUrl;
    fleet_public_key = cfg.fleetPublicKey;
    action = cfg.action;
    poll_interval_secs = cfg.pollInterval;
    confirm_timeout_secs = cfg.confirmTimeout;
    health_checks = cfg.healthChecks;
    instant_updates = cfg.instantUpdates;
    state_dir = "/var/lib/bento-agent";
    files_dir = cfg.filesDir;
  } // lib.optionalAttrs (cfg.cacheNetrcFile != null) { cache_netrc = toString cfg.cacheNetrcFile; }
    // lib.optionalAttrs (cfg.metricsTextfile != null) { metrics_textfile = cfg.metricsTextfile; };
  rendered = toml.generate "bento-agent.toml" settings;
  checked = pkgs.runCommand "bento-agent.toml" { } ''
    ${lib.getExe cfg.package} agent check-config ${rendered}
    cp ${rendered} $out
  '';
in
{
  options.services.bento.agent = {
    enable = lib.mkEnableOption "the Bento agent, which pulls and activates this host's system";
    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.bento;
      description = "The bento package.";
    };
    hostName = lib.mkOption {
      type = lib.types.str;
      default = config.networking.hostName;
      description = "This host's name in bento.toml (also its SFTP user name).";
    };
    server = lib.mkOption {
      type = lib.types.str;
      example = "bento.example.org:2222";
      description = "The Bento server's SFTP address, host:port.";
    };
    serverHostKey = lib.mkOption {
      type = lib.types.str;
      example = "ssh-ed25519 AAAA...";
      description = "The server's SSH host key, as `bento serve` prints it. Pinned: no trust on first use.";
    };
    sshKeyFile = lib.mkOption {
      type = lib.types.path;
      default = "/etc/ssh/ssh_host_ed25519_key";
      description = "Private key this host logs in with; its public half is the host's ssh_key in bento.toml.";
    };
    cacheUrl = lib.mkOption {
      type = lib.types.str;
      example = "http://bento.example.org:8080";
      description = "The Bento server's binary cache.";
    };
    cacheNetrcFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "netrc file with this host's cache token, when the cache requires tokens.";
    };
    fleetPublicKey = lib.mkOption {
      type = lib.types.str;
      description = "The fleet's public signing key (name:base64); the only signer trusted.";
    };
    action = lib.mkOption {
      type = lib.types.enum [ "switch" "boot" "test" ];
      default = "switch";
      description = "What switch-to-configuration is asked to do.";
    };
    pollInterval = lib.mkOption {
      type = lib.types.ints.positive;
      default = 60;
      description = "Seconds between polls (with ±20% jitter), when instant updates are unavailable.";
    };
    confirmTimeout = lib.mkOption {
      type = lib.types.ints.positive;
      default = 90;
      description = "Seconds a new system has to reach the server and pass health checks before it is rolled back.";
    };
    healthChecks = lib.mkOption {
      type = lib.types.listOf (lib.types.listOf lib.types.str);
      default = [ ];
      example = [ [ "systemctl" "is-active" "nginx.service" ] ];
      description = "Commands (argv lists) that must all succeed for a new system to be kept.";
    };
    instantUpdates = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Keep one SSH session open to learn of new releases at once.";
    };
    filesDir = lib.mkOption {
      type = lib.types.str;
      default = "/run/bento/files";
      description = "Where the files bento.toml delivers to this host ([hosts.<name>.files]) are installed, outside the Nix store; under /run they never touch the disk. Point services at /run/bento/files/<name>.";
    };
    metricsTextfile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/var/lib/prometheus-node-exporter/bento.prom";
      description = "Write the agent's last outcome there after each attempt, for node exporter's textfile collector.";
    };
  };

  config = lib.mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];
    systemd.services.bento-agent = {
      description = "Bento agent: pull, activate, confirm or roll back";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      # Activation must not restart the agent that is performing it.
      restartIfChanged = false;
      stopIfChanged = false;
      path = [ config.nix.package pkgs.iproute2 ];
      serviceConfig = {
        ExecStart = "${lib.getExe cfg.package} agent --config ${checked}";
        Restart = "always";
        RestartSec = 10;
        StateDirectory = "bento-agent";
        RuntimeDirectory = "bento-agent";
      };
    };
  };
}
