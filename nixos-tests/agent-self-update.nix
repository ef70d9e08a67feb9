# agent-self-update: a generation that changes the agent's own settings. The running agent
# applies it, reports, and exits with code 9; systemd starts the new agent, which runs the
# new settings (here: a local "check now" page on 127.0.0.1:51337). A generation that
# leaves the agent alone does not restart it.
{ config, ... }:
{
  name = "bento-agent-self-update";
  bento.variants.web1 = {
    v1 = { };
    tuned.services.bento.agent.settings.http_trigger = "127.0.0.1:51337";
  };

  testScript = config.bento.prelude + ''
    def agent_pid():
        return web1.succeed("systemctl show -p MainPID --value bento-agent").strip()

    start_fleet()

    with subtest("a generation that leaves the agent's settings alone keeps the agent"):
        pid = agent_pid()
        deploy(web1=SYSTEMS["web1"]["v1"])
        expect(web1, "applied")
        web1.sleep(5)
        assert agent_pid() == pid, "the agent restarted for a generation that did not change it"
        web1.fail("curl -s http://127.0.0.1:51337/")

    with subtest("a generation that changes them: the new agent runs the new settings"):
        deploy(web1=SYSTEMS["web1"]["tuned"])
        expect(web1, "applied")
        unit = json.loads(web1.succeed("cat /run/current-system/etc/bento/agent-unit.json"))
        web1.wait_until_succeeds(
            "tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value bento-agent)/cmdline"
            f" | grep -q -- '--config {unit['config']}'",
            timeout=60,
        )
        assert agent_pid() != pid
        web1.succeed("journalctl -u bento-agent | grep -q 'status=9'")
        web1.wait_for_open_port(51337)
        expect(web1, "nothing to do")
  '';
}
