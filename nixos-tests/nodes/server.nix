# The VM tests' server. The same file is a row of the module evaluation
# (module-eval/table.nix), so what `make check-nixos` evaluates is what the VM boots.
# VM-only settings (memory, disk, the systems to publish) are in ../harness.nix.
{ ... }:
let
  keys = import ../keys;
in
{
  services.bento.server = {
    enable = true;
    openFirewall = true;
    # Both keys come in as credentials, as from agenix or sops-nix on a real server.
    fleetKeyFile = "/etc/bento-test/fleet.secret";
    sshHostKeyFile = "/etc/bento-test/server_host_key";
    settings = {
      # Never built from: the tests build the hosts' systems outside the VMs and publish
      # them with `bento deploy --store-path`.
      fleet.flake = "git+file:///var/empty";
      fleet.stale_after_secs = 600;
      hosts.web1 = {
        ssh_key = keys.web1.public;
        tags = [ "web" ];
      };
      hosts.web2 = {
        ssh_key = keys.web2.public;
        tags = [ "web" ];
      };
    };
  };
  # Test keys only: a real server never puts a private key in the store.
  environment.etc."bento-test/fleet.secret" = {
    source = keys.fleet.secret;
    mode = "0400";
  };
  environment.etc."bento-test/server_host_key" = {
    source = keys.server.secret;
    mode = "0400";
  };
}
