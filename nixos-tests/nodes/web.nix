# A host of the VM tests (web1, web2): `import ./web.nix "web1"`. The same file gives the
# module evaluation's rows for the tests' hosts (module-eval/table.nix).
#
# Agents here only act on `bento agent trigger` (no instant updates, an hour between
# polls), with short confirmation and retry delays, so each step of a test is one attempt.
# Every activation appends "<action> <variant>" to /var/lib/bento-test/activations
# ("boot <variant>" when the system starts), which is how the tests count activations.
name:
{
  config,
  lib,
  pkgs,
  extendModules,
  ...
}:
let
  keys = import ../keys;
in
{
  options.bentoTest.variant = lib.mkOption {
    type = lib.types.str;
    default = "base";
    description = "This system's name among a test's variants (../harness.nix).";
  };
  # This host's configuration plus more modules: how the harness builds a variant system.
  # (A node's configuration, as the test framework hands it out, does not carry
  # `extendModules`; the node's own modules receive it.)
  options.bentoTest.extend = lib.mkOption {
    type = lib.types.raw;
    readOnly = true;
    internal = true;
    default = modules: extendModules { inherit modules; };
    description = "Extends this host's configuration with a list of modules.";
  };

  config = {
    networking.hostName = name;
    services.bento.agent = {
      enable = true;
      server = "server:2222";
      cacheUrl = "http://server:8080";
      serverHostKey = keys.server.public;
      fleetPublicKey = keys.fleet.public;
      sshKeyFile = "/etc/bento-test/host_key";
      extraPackages = [ pkgs.curl ];
      settings = {
        poll_interval_secs = 3600;
        instant_updates = false;
        confirm_timeout_secs = 20;
        confirm_retry_secs = 2;
        retry_base_secs = 5;
      };
    };
    # Test key only: a real host uses sshd's key or the one the module makes.
    environment.etc."bento-test/host_key" = {
      source = keys.${name}.secret;
      mode = "0400";
    };
    environment.etc."bento-test/variant".text = config.bentoTest.variant;
    environment.systemPackages = [
      pkgs.curl
      pkgs.openssh
    ];
    system.activationScripts.bentoTestRecord = ''
      mkdir -p /var/lib/bento-test
      echo "''${NIXOS_ACTION:-boot} ${config.bentoTest.variant}" >> /var/lib/bento-test/activations
    '';
  };
}
