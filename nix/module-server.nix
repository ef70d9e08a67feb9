# services.bento.server: the central machine. Runs `bento serve` (binary cache over HTTP
# and the per-host SFTP publisher) from the fleet's bento.toml.
self:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.bento.server;
in
{
  options.services.bento.server = {
    enable = lib.mkEnableOption "the Bento server (binary cache and SFTP publisher)";
    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.bento;
      description = "The bento package.";
    };
    configFile = lib.mkOption {
      type = lib.types.path;
      example = "/srv/fleet/bento.toml";
      description = "The fleet file (bento.toml). Kept as a path so that edits are picked up by a reload.";
    };
    sftpPort = lib.mkOption {
      type = lib.types.port;
      default = 2222;
      description = "Port of the SFTP publisher hosts pull releases from.";
    };
    cachePort = lib.mkOption {
      type = lib.types.port;
      default = 8080;
      description = "Port of the binary cache hosts copy closures from.";
    };
    dashboardListen = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = "127.0.0.1:8081";
      description = "Address of the fleet dashboard (no login: keep it on loopback and reach it through an SSH tunnel or an authenticating proxy); null turns it off. Never opened in the firewall.";
    };
    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open both ports in the firewall.";
    };
  };

  config = lib.mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];
    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ cfg.sftpPort cfg.cachePort ];
    systemd.services.bento-server = {
      description = "Bento server: binary cache and SFTP publisher";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      path = [ config.nix.package ];
      serviceConfig = {
        ExecStart = lib.concatStringsSep " " [
          (lib.getExe cfg.package)
          "serve"
          "--config"
          (toString cfg.configFile)
          "--sftp-listen"
          "[::]:${toString cfg.sftpPort}"
          "--cache-listen"
          "[::]:${toString cfg.cachePort}"
          (if cfg.dashboardListen == null then "--no-dashboard" else "--dashboard-listen ${cfg.dashboardListen}")
        ];
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "always";
        StateDirectory = "bento";
      };
    };
  };
}
