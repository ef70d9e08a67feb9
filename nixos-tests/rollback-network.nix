# rollback-network: web1's new system cuts its route to the server; the agent cannot
# confirm it and puts the previous system back within the confirm timeout; the status says
# why; web2 is untouched; a fixed generation then applies.
{ config, ... }:
{
  name = "bento-rollback-network";
  bento.variants.web1 = {
    v1 = { };
    # While this unit runs the server is unreachable; stopping it (as the rollback's switch
    # does, the unit being absent from v1) gives the route back.
    cut =
      { pkgs, ... }:
      {
        systemd.services.cut-route-to-server = {
          wantedBy = [ "multi-user.target" ];
          path = [
            pkgs.iproute2
            pkgs.getent
          ];
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
          };
          script = ''ip route add blackhole "$(getent ahostsv4 server | cut -d' ' -f1 | head -n1)/32"'';
          preStop = ''ip route del blackhole "$(getent ahostsv4 server | cut -d' ' -f1 | head -n1)/32" || true'';
        };
      };
    v2.environment.etc."bento-test/fixed".text = "fixed";
  };
  bento.variants.web2.v1 = { };

  testScript = config.bento.prelude + ''
    import time

    start_fleet()
    deploy(web1=SYSTEMS["web1"]["v1"], web2=SYSTEMS["web2"]["v1"])
    expect(web1, "applied")
    expect(web2, "applied")
    web2_before = host_status("web2")

    with subtest("a system that cuts the route to the server is rolled back in time"):
        deploy(web1=SYSTEMS["web1"]["cut"])
        started = time.monotonic()
        expect(web1, "rolled-back")
        # A deadline, not a speed figure: confirm_timeout_secs (20) plus the two switches.
        assert time.monotonic() - started < 20 + 180
        assert activations(web1) == ["v1", "cut", "v1"], activations(web1)
        assert running(web1) == SYSTEMS["web1"]["v1"]
        assert profile(web1) == SYSTEMS["web1"]["v1"]
        web1.succeed("curl -sf http://server:8080/nix-cache-info")
        wait_state("web1", "rolled-back")
        assert host_status("web1")["last_error"], host_status("web1")

    with subtest("web2 was untouched"):
        after = host_status("web2")
        assert after["state"] == "up-to-date", after
        assert after["desired"] == web2_before["desired"], (web2_before, after)
        assert activations(web2) == ["v1"], activations(web2)

    with subtest("a fixed generation then applies"):
        deploy(web1=SYSTEMS["web1"]["v2"])
        expect(web1, "applied")
        assert running(web1) == SYSTEMS["web1"]["v2"]
        wait_state("web1", "up-to-date")
  '';
}
