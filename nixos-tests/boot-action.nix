# boot-action: with action = "boot" a new release becomes the boot default only; the host
# keeps running its system until it reboots, then runs the new one.
{ config, ... }:
{
  name = "bento-boot-action";
  nodes.web1.services.bento.agent.action = "boot";
  bento.variants.web1.v1 = { };

  testScript = config.bento.prelude + ''
    start_fleet()

    with subtest("applied as the boot default, not activated"):
        deploy(web1=SYSTEMS["web1"]["v1"])
        expect(web1, "applied")
        assert running(web1) == BASE["web1"], running(web1)
        assert profile(web1) == SYSTEMS["web1"]["v1"]
        assert activations(web1) == [], activations(web1)

    with subtest("after a reboot the host runs the new system"):
        reboot(web1)
        assert running(web1) == SYSTEMS["web1"]["v1"], running(web1)
        assert activations(web1, "boot")[-1] == "v1"
        expect(web1, "nothing to do")
        wait_state("web1", "up-to-date")
  '';
}
