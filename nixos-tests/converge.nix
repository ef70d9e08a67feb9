# converge: the first deploy brings both hosts up to date, each activated once; after a
# reboot web1 runs the same system and has nothing to do; the dashboard is reachable on
# the server only, while the cache is reachable from the hosts.
{ config, ... }:
{
  name = "bento-converge";
  bento.variants.web1.v1 = { };
  bento.variants.web2.v1 = { };

  testScript = config.bento.prelude + ''
    start_fleet()

    with subtest("before the first deploy, no host has a release"):
        for h in ("web1", "web2"):
            assert host_status(h)["state"] == "not-deployed", host_status(h)

    with subtest("one deploy, one attempt each: both up to date, each activated once"):
        deploy(web1=SYSTEMS["web1"]["v1"], web2=SYSTEMS["web2"]["v1"])
        for m in (web1, web2):
            expect(m, "applied")
            assert running(m) == SYSTEMS[m.name]["v1"], running(m)
            assert activations(m) == ["v1"], activations(m)
            wait_state(m.name, "up-to-date")

    with subtest("after a reboot web1 runs the same system and has nothing to do"):
        reboot(web1)
        assert running(web1) == SYSTEMS["web1"]["v1"], running(web1)
        expect(web1, "nothing to do")
        assert activations(web1) == ["v1"], activations(web1)
        assert activations(web1, "boot")[-1] == "v1"
        wait_state("web1", "up-to-date")

    with subtest("the dashboard answers on the server only; the cache answers the hosts"):
        server.succeed("curl -sf http://127.0.0.1:8081/ >/dev/null")
        web1.succeed("curl -sf http://server:8080/nix-cache-info")
        web1.fail("curl -sf --max-time 5 http://server:8081/")
  '';
}
