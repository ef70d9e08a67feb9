# The shared harness of the VM tests: a `runNixOSTest` module that every scenario file
# imports (./default.nix does it). It gives
#
#   - three nodes: `server` (nodes/server.nix) and `web1`, `web2` (nodes/web.nix), the same
#     files `make check-nixos` evaluates;
#   - `bento.variants.<host>.<name> = <module>`: other systems of a host, built outside the
#     VMs (the host's own configuration plus the module, so they boot in the same VM),
#     registered in the server's store, and published in the test with
#     `deploy(web1=SYSTEMS["web1"]["v2"])`, i.e. `bento deploy --store-path`;
#   - `bento.prelude`: the Python helpers every test script starts with.
#
# Web hosts boot through systemd-boot, so that a reboot starts what the agent installed
# (the `boot` action, the system after a rollback) and not the VM's first system.
{
  config,
  lib,
  hostPkgs,
  ...
}:

let
  inherit (lib) mkOption types;
  keys = import ./keys;
  webHosts = [
    "web1"
    "web2"
  ];

  systemOf =
    host: variant: module:
    (config.nodes.${host}.bentoTest.extend [
      module
      { bentoTest.variant = variant; }
    ]).config.system.build.toplevel;
  systems = lib.mapAttrs (host: lib.mapAttrs (systemOf host)) config.bento.variants;
  base = lib.genAttrs webHosts (host: config.nodes.${host}.system.build.toplevel);
  published = lib.attrValues base ++ lib.concatMap lib.attrValues (lib.attrValues systems);

  webVm = {
    virtualisation = {
      memorySize = 1024;
      diskSize = 4096;
      useBootLoader = true;
      useEFIBoot = true;
      writableStoreUseTmpfs = false;
    };
    boot.loader.systemd-boot.enable = true;
    boot.loader.efi.canTouchEfiVariables = true;
  };
in
{
  options.bento = {
    variants = mkOption {
      type = types.attrsOf (types.attrsOf types.deferredModule);
      default = { };
      description = "Per web host, named systems the test publishes (each the host's configuration plus a module).";
    };
    prelude = mkOption {
      type = types.str;
      readOnly = true;
      description = "Python helpers every test script starts with.";
    };
  };

  config = {
    defaults = {
      imports = [
        ../nix/module-server.nix
        ../nix/module-agent.nix
      ];
      documentation.enable = false;
    };

    nodes.server =
      { pkgs, ... }:
      {
        imports = [ ./nodes/server.nix ];
        virtualisation = {
          memorySize = 1536;
          diskSize = 8192;
          additionalPaths = published;
        };
        environment.systemPackages = [
          pkgs.jq
          pkgs.curl
        ];
      };
    nodes.web1 = {
      imports = [
        (import ./nodes/web.nix "web1")
        webVm
      ];
    };
    nodes.web2 = {
      imports = [
        (import ./nodes/web.nix "web2")
        webVm
      ];
    };

    bento.prelude = ''
      import json

      # Systems built outside the VMs, in the server's store: SYSTEMS[host][variant], and
      # each host's first system BASE[host].
      SYSTEMS = json.loads(r"""${builtins.toJSON systems}""")
      BASE = json.loads(r"""${builtins.toJSON base}""")
      FLEET = "/etc/bento/bento.toml"
      SERVER_HOST_KEY = "${keys.server.public}"
      # Server-side commands run as `bento`, like a member of the bento group would.
      AS_BENTO = "runuser -u bento -- bento"


      def start_fleet():
          start_all()
          server.wait_for_unit("bento-server.service")
          server.wait_for_open_port(2222)
          server.wait_for_open_port(8080)
          for m in (web1, web2):
              m.wait_for_unit("bento-agent.service")


      def served(host, path):
          """Whether the cache serves the system's narinfo to its host (with its token, if any)."""
          narinfo = path.split("/")[3][:32] + ".narinfo"
          token = server.succeed(f"cat /var/lib/bento/cache-tokens/{host} 2>/dev/null || true").strip()
          auth = f"-u {host}:{token} " if token else ""
          return server.execute(f"curl -sf -o /dev/null {auth}http://127.0.0.1:8080/{narinfo}")[0] == 0


      def deploy(**hosts):
          """Publish each host's system as its next release (bento deploy --store-path), and
          wait until the cache serves it, so that the next attempt can copy it."""
          args = " ".join(f"--store-path {h}={p}" for h, p in hosts.items())
          out = server.succeed(f"{AS_BENTO} deploy --config {FLEET} {args}")
          retry(lambda _: all(served(h, p) for h, p in hosts.items()), timeout=60)
          return out


      def host_status(host):
          """The host's entry of `bento status --json` (docs/status.md, schema 1)."""
          _, out = server.execute(f"{AS_BENTO} status --config {FLEET} --json {host}")
          return json.loads(out)["hosts"][0]


      def wait_state(host, state, timeout=120):
          server.wait_until_succeeds(
              f"{AS_BENTO} status --config {FLEET} --json {host}"
              f" | jq -e '.hosts[0].state == \"{state}\"'",
              timeout=timeout,
          )


      def trigger(machine):
          """One attempt now; the agent's result ("applied", "nothing to do", ...)."""
          _, out = machine.execute("bento agent trigger 2>&1")
          results = [l[len("result: "):] for l in out.splitlines() if l.startswith("result: ")]
          assert results, f"{machine.name}: bento agent trigger gave no result:\n{out}"
          return results[-1]


      def expect(machine, wanted):
          got = trigger(machine)
          assert got == wanted, f"{machine.name}: expected {wanted!r}, the agent said {got!r}"


      def running(machine):
          return machine.succeed("readlink -f /run/current-system").strip()


      def profile(machine):
          return machine.succeed("readlink -f /nix/var/nix/profiles/system").strip()


      def activations(machine, action="switch"):
          """Variants activated with `action` (switch, test, boot = system start), in order."""
          out = machine.succeed("cat /var/lib/bento-test/activations 2>/dev/null || true")
          return [l.split()[1] for l in out.splitlines() if l.split()[0] == action]


      def reboot(machine):
          machine.shutdown()
          machine.start()
          machine.wait_for_unit("bento-agent.service")
    '';
  };
}
