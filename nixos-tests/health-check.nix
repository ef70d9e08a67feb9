# health-check: with a `systemctl is-active` check (and a curl one, which needs
# extraPackages on the agent's PATH), a system whose service is missing is rolled back and
# one that runs it is applied.
{ config, ... }:
let
  demo =
    { pkgs, ... }:
    {
      systemd.services.demo = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig.ExecStart = "${pkgs.coreutils}/bin/sleep infinity";
      };
    };
in
{
  name = "bento-health-check";
  nodes.web1.services.bento.agent.healthChecks = [
    [
      "systemctl"
      "is-active"
      "demo.service"
    ]
    [
      "curl"
      "-sf"
      "-o"
      "/dev/null"
      "http://server:8080/nix-cache-info"
    ]
  ];
  bento.variants.web1 = {
    healthy = demo;
    sick = { };
    healthy-again = {
      imports = [ demo ];
      environment.etc."bento-test/again".text = "again";
    };
  };

  testScript = config.bento.prelude + ''
    start_fleet()

    with subtest("passing checks: applied"):
        deploy(web1=SYSTEMS["web1"]["healthy"])
        expect(web1, "applied")
        assert running(web1) == SYSTEMS["web1"]["healthy"]

    with subtest("a failing check: rolled back"):
        deploy(web1=SYSTEMS["web1"]["sick"])
        expect(web1, "rolled-back")
        assert running(web1) == SYSTEMS["web1"]["healthy"]
        assert profile(web1) == SYSTEMS["web1"]["healthy"]
        web1.succeed("systemctl is-active demo.service")
        wait_state("web1", "rolled-back")

    with subtest("passing checks again: applied"):
        deploy(web1=SYSTEMS["web1"]["healthy-again"])
        expect(web1, "applied")
        assert running(web1) == SYSTEMS["web1"]["healthy-again"]
  '';
}
