# rollback-activation: a system with a unit that fails to start makes
# switch-to-configuration fail; the agent re-activates the previous system and puts the
# profile back; the status says activation-failed.
{ config, ... }:
{
  name = "bento-rollback-activation";
  bento.variants.web1 = {
    v1 = { };
    broken =
      { pkgs, ... }:
      {
        systemd.services.fails-to-start = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            Type = "oneshot";
            ExecStart = "${pkgs.coreutils}/bin/false";
          };
        };
      };
  };

  testScript = config.bento.prelude + ''
    start_fleet()
    deploy(web1=SYSTEMS["web1"]["v1"])
    expect(web1, "applied")

    with subtest("a failing unit: activation-failed, previous system and profile restored"):
        deploy(web1=SYSTEMS["web1"]["broken"])
        expect(web1, "activation-failed")
        assert activations(web1) == ["v1", "broken", "v1"], activations(web1)
        assert running(web1) == SYSTEMS["web1"]["v1"]
        assert profile(web1) == SYSTEMS["web1"]["v1"]
        web1.fail("systemctl cat fails-to-start.service")
        wait_state("web1", "activation-failed")

    with subtest("the failed generation is not tried again"):
        expect(web1, "nothing to do")
        assert activations(web1) == ["v1", "broken", "v1"], activations(web1)
  '';
}
