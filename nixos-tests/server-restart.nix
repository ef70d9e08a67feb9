# server-restart: the server is killed while both hosts download a large closure
# (bandwidth capped so that downloads are in flight); it comes back by itself
# (Restart=always); every host completes, activates once, and its store verifies.
{ config, ... }:
let
  big =
    { config, pkgs, ... }:
    {
      environment.etc."bento-test/big".source = pkgs.runCommand "bento-test-big-${config.networking.hostName}" { } ''
        head -c 48M /dev/urandom > $out
      '';
    };
in
{
  name = "bento-server-restart";
  bento.variants.web1.big = big;
  bento.variants.web2.big = big;

  testScript = config.bento.prelude + ''
    start_fleet()
    deploy(web1=SYSTEMS["web1"]["big"], web2=SYSTEMS["web2"]["big"])
    server.succeed("tc qdisc add dev eth1 root tbf rate 16mbit burst 64kb latency 500ms")
    for m in (web1, web2):
        m.succeed("systemd-run --unit=bento-test-trigger --collect /run/current-system/sw/bin/bento agent trigger")

    with subtest("the server is killed with both downloads in flight and restarts"):
        server.wait_until_succeeds(
            "test $(ss -Htn state established '( sport = :8080 )' | wc -l) -ge 2", timeout=120
        )
        server.sleep(3)
        pid = server.succeed("systemctl show -p MainPID --value bento-server").strip()
        server.succeed("systemctl kill --signal=SIGKILL bento-server.service")
        server.wait_until_succeeds(
            f"p=$(systemctl show -p MainPID --value bento-server); [ \"$p\" != 0 ] && [ \"$p\" != {pid} ]",
            timeout=60,
        )
        server.wait_for_open_port(8080)
        server.succeed("tc qdisc del dev eth1 root")

    with subtest("every host completes, activates once, and its store verifies"):
        for m in (web1, web2):
            want = SYSTEMS[m.name]["big"]
            m.wait_until_succeeds(
                f"[ \"$(readlink -f /run/current-system)\" = {want} ] || {{ bento agent trigger; false; }}",
                timeout=900,
            )
            assert activations(m) == ["big"], activations(m)
            m.succeed("nix --extra-experimental-features nix-command store verify --all")
            wait_state(m.name, "up-to-date")
  '';
}
