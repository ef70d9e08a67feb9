# server-blink: the server goes down right after web1 activates and stays down past the
# confirm timeout. The agent rolls back, and since the server is still unreachable after
# the rollback it does not blame the system: retry-later. Once the server is back, the
# same generation applies.
{ config, ... }:
{
  name = "bento-server-blink";
  bento.variants.web1 = {
    v1 = { };
    # Tells the test the switch is under way, then leaves it time to stop the server before
    # the agent starts confirming.
    blink.system.activationScripts.bentoTestBlink = ''
      if [ "''${NIXOS_ACTION:-}" = switch ]; then touch /run/bento-test-activating; sleep 15; fi
    '';
  };

  testScript = config.bento.prelude + ''
    start_fleet()
    deploy(web1=SYSTEMS["web1"]["v1"])
    expect(web1, "applied")

    with subtest("server down past the confirm timeout: rolled back, retry later"):
        deploy(web1=SYSTEMS["web1"]["blink"])
        web1.succeed(
            "systemd-run --unit=bento-test-trigger --collect"
            " -p StandardOutput=file:/tmp/trigger.log /run/current-system/sw/bin/bento agent trigger"
        )
        web1.wait_for_file("/run/bento-test-activating", timeout=180)
        server.succeed("systemctl stop bento-server.service")
        web1.wait_until_succeeds("grep -q '^result: ' /tmp/trigger.log", timeout=300)
        result = web1.succeed("grep '^result: ' /tmp/trigger.log").strip()
        assert result == "result: retry-later", result
        assert running(web1) == SYSTEMS["web1"]["v1"]

    with subtest("the server is back: the report arrives and the generation applies"):
        server.succeed("systemctl start bento-server.service")
        server.wait_for_open_port(2222)
        web1.wait_until_succeeds("bento agent trigger | grep -qx 'result: applied'", timeout=300)
        assert running(web1) == SYSTEMS["web1"]["blink"]
        server.succeed("grep -l 'retry-later' /var/lib/bento/publish/web1/reports/*")
        wait_state("web1", "up-to-date")
  '';
}
