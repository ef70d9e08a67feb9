# files-after-reboot: a file delivered to web1 (outside the store, in /run) is back after a
# reboot, put there by bento-files.service before the services that read it start.
{ config, hostPkgs, ... }:
let
  greeting = hostPkgs.writeText "bento-test-greeting" "hello web1\n";
in
{
  name = "bento-files-after-reboot";
  nodes.server.services.bento.server.settings.hosts.web1.files.greeting = {
    source = "${greeting}";
    mode = "0440";
  };
  nodes.web1 = {
    # Reads the delivered file at start, ordered as docs/nixos.md tells services to be.
    systemd.services.greeting-reader = {
      wantedBy = [ "multi-user.target" ];
      after = [ "bento-files.target" ];
      wants = [ "bento-files.target" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      script = "cat /run/bento/files/greeting > /run/greeting-seen || echo missing > /run/greeting-seen";
    };
  };

  testScript = config.bento.prelude + ''
    start_fleet()
    web1.wait_for_unit("greeting-reader.service")
    assert web1.succeed("cat /run/greeting-seen") == "missing\n"

    with subtest("the file arrives with a release of web1's own system, without activation"):
        deploy(web1=BASE["web1"])
        assert trigger(web1) in ("applied", "up-to-date")
        assert activations(web1) == [], activations(web1)
        assert web1.succeed("cat /run/bento/files/greeting") == "hello web1\n"
        assert web1.succeed("stat -c %a /run/bento/files/greeting").strip() == "440"
        web2.fail("test -e /run/bento/files/greeting")

    with subtest("after a reboot it is back before the service that reads it"):
        reboot(web1)
        web1.wait_for_unit("greeting-reader.service")
        web1.succeed("systemctl is-active bento-files.service")
        assert web1.succeed("cat /run/greeting-seen") == "hello web1\n"
        assert web1.succeed("stat -c %a /run/bento/files/greeting").strip() == "440"
  '';
}
