# Declarations of the NixOS options that Bento's modules and the test nodes touch, typed
# and merged as NixOS does (lists concatenate, unit settings merge per key), so that
# `lib.evalModules` can evaluate the modules on a machine without nixpkgs. An option the
# modules set but NixOS does not have is an error here too ("option does not exist"); keep
# the names exactly NixOS's. Not a model of what NixOS does with the values: assertions
# are collected, not enforced (the check reads `config.assertions` itself).
{ lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  opt =
    type: default:
    mkOption {
      inherit type default;
    };
  strings = opt (types.listOf types.str) [ ];
  # systemd unit settings: a list concatenates, a single value must agree (NixOS's unitOption).
  unitScalar = types.oneOf [
    types.bool
    types.int
    types.str
    types.path
    types.package
  ];
  unitValue = types.either (types.listOf unitScalar) unitScalar;
  unitSection = opt (types.attrsOf unitValue) { };
  unitOptions = {
      enable = opt types.bool true;
      description = opt types.str "";
      documentation = strings;
      wantedBy = strings;
      requiredBy = strings;
      wants = strings;
      requires = strings;
      after = strings;
      before = strings;
      bindsTo = strings;
      partOf = strings;
      conflicts = strings;
      unitConfig = unitSection;
  };
  unit = types.submodule { options = unitOptions; };
  service = types.submodule {
    options = unitOptions // {
      path = opt (types.listOf (types.either types.package types.str)) [ ];
      environment = opt (types.attrsOf (types.nullOr (types.oneOf [
        types.str
        types.path
        types.package
      ]))) { };
      restartIfChanged = opt types.bool true;
      reloadIfChanged = opt types.bool false;
      stopIfChanged = opt types.bool true;
      restartTriggers = opt (types.listOf unitScalar) [ ];
      reloadTriggers = opt (types.listOf unitScalar) [ ];
      serviceConfig = unitSection;
      script = opt types.lines "";
      preStart = opt types.lines "";
      postStart = opt types.lines "";
      preStop = opt types.lines "";
      startAt = opt (types.either types.str (types.listOf types.str)) [ ];
    };
  };
  etcFile = types.submodule (
    { name, config, ... }:
    {
      options = {
        enable = opt types.bool true;
        target = opt types.str name;
        text = opt (types.nullOr types.lines) null;
        source = mkOption { type = types.path; };
        mode = opt types.str "symlink";
        user = opt types.str "+0";
        group = opt types.str "+0";
      };
      config.source = lib.mkIf (config.text != null) (
        lib.mkDerivedConfig (lib.mkOptionDefault config.text) (pkgs.writeText "etc-${baseNameOf name}")
      );
    }
  );
  user = types.submodule {
    options = {
      isSystemUser = opt types.bool false;
      isNormalUser = opt types.bool false;
      group = opt types.str "";
      extraGroups = strings;
      home = opt types.str "/var/empty";
      createHome = opt types.bool false;
      description = opt types.str "";
      uid = opt (types.nullOr types.int) null;
    };
  };
in
{
  options = {
    assertions = opt (types.listOf types.unspecified) [ ];
    warnings = opt (types.listOf types.str) [ ];

    networking.hostName = opt types.str "nixos";
    networking.firewall.enable = opt types.bool true;
    networking.firewall.allowedTCPPorts = opt (types.listOf types.port) [ ];
    networking.firewall.allowedUDPPorts = opt (types.listOf types.port) [ ];

    nix.package = opt types.package pkgs.nix;

    services.openssh.enable = opt types.bool false;
    services.openssh.hostKeys = opt (types.listOf (types.attrsOf types.anything)) [
      {
        type = "ed25519";
        path = "/etc/ssh/ssh_host_ed25519_key";
      }
    ];

    systemd.package = opt types.package pkgs.systemd;
    systemd.services = opt (types.attrsOf service) { };
    systemd.targets = opt (types.attrsOf unit) { };
    systemd.tmpfiles.rules = strings;

    users.users = opt (types.attrsOf user) { };
    users.groups = opt (types.attrsOf (types.submodule { options.gid = opt (types.nullOr types.int) null; })) { };

    environment.etc = opt (types.attrsOf etcFile) { };
    environment.systemPackages = opt (types.listOf types.package) [ ];
    environment.variables = opt (types.attrsOf (types.either types.str types.path)) { };

    system.activationScripts = opt (types.attrsOf (types.either types.str types.attrs)) { };
    system.stateVersion = opt types.str "25.11";

    specialisation = opt (types.attrsOf (types.submodule {
      options.inheritParentConfig = opt types.bool true;
      options.configuration = opt types.deferredModule { };
    })) { };
  };
}
