# isolation: with host tokens, web2 cannot log in as web1, read web1's release or files,
# or fetch web1's closure from the cache (each refusal next to the same request that
# succeeds for its rightful host); a host removed from bento.toml is cut at the reload
# that switching the server's configuration performs, while the server keeps running.
{ config, lib, hostPkgs, ... }:
let
  onlyWeb1 = hostPkgs.writeText "bento-test-only-web1" "in web1's closure only\n";
  secret = hostPkgs.writeText "bento-test-web1-secret" "web1's secret\n";
  netrc = "/var/lib/bento-test/netrc";
in
{
  name = "bento-isolation";
  nodes.server = {
    services.bento.server.hostTokens = true;
    services.bento.server.settings.hosts.web1.files.secret = "${secret}";
    # The same server without web2: switched to during the test.
    specialisation.without-web2.configuration = {
      services.bento.server.settings.hosts = lib.mkForce {
        web1 = {
          ssh_key = (import ./keys).web1.public;
          files.secret = "${secret}";
        };
      };
    };
  };
  nodes.web1.services.bento.agent.cacheNetrcFile = netrc;
  nodes.web2.services.bento.agent.cacheNetrcFile = netrc;
  bento.variants.web1.v1.environment.etc."bento-test/only-web1".source = onlyWeb1;
  bento.variants.web2.v1 = { };

  testScript = config.bento.prelude + ''
    start_fleet()
    for m in (web1, web2):
        server.wait_for_file(f"/var/lib/bento/cache-tokens/{m.name}")
        token = server.succeed(f"cat /var/lib/bento/cache-tokens/{m.name}").strip()
        m.succeed(
            "umask 077 && mkdir -p /var/lib/bento-test"
            f" && echo 'machine server login {m.name} password {token}' > ${netrc}"
            f" && echo '[server]:2222 {SERVER_HOST_KEY}' > /var/lib/bento-test/known_hosts"
        )
    deploy(web1=SYSTEMS["web1"]["v1"], web2=SYSTEMS["web2"]["v1"])
    expect(web1, "applied")
    expect(web2, "applied")

    sftp = (
        "sftp -b - -P 2222 -i /etc/bento-test/host_key -o BatchMode=yes"
        " -o UserKnownHostsFile=/var/lib/bento-test/known_hosts"
    )

    with subtest("web2 cannot log in as web1"):
        web1.succeed(f"echo 'get /release /tmp/r' | {sftp} web1@server")
        web2.succeed(f"echo 'get /release /tmp/r' | {sftp} web2@server")
        web2.fail(f"echo 'get /release /tmp/x' | {sftp} web1@server")

    with subtest("web2 cannot read web1's release or files"):
        web2.fail(f"echo 'get ../web1/release /tmp/x' | {sftp} web2@server")
        web1.succeed(f"echo 'get /files/manifest.json /tmp/m' | {sftp} web1@server")
        web2.fail(f"echo 'get ../web1/files/manifest.json /tmp/x' | {sftp} web2@server")
        web1.succeed("test \"$(cat /run/bento/files/secret)\" = \"web1's secret\"")
        web2.fail("test -e /run/bento/files/secret")

    with subtest("web2 cannot fetch web1's closure"):
        h = "${onlyWeb1}".split("/")[3][:32]
        web1.succeed(f"curl -sf --netrc-file ${netrc} http://server:8080/{h}.narinfo")
        web2.fail(f"curl -sf --netrc-file ${netrc} http://server:8080/{h}.narinfo")
        web2.fail(f"curl -sf http://server:8080/{h}.narinfo")

    with subtest("a host removed from bento.toml is cut at the reload"):
        pid = server.succeed("systemctl show -p MainPID --value bento-server").strip()
        server.succeed("/run/current-system/specialisation/without-web2/bin/switch-to-configuration test")
        web2.wait_until_fails(f"echo 'get /release /tmp/r' | {sftp} web2@server", timeout=60)
        assert server.succeed("systemctl show -p MainPID --value bento-server").strip() == pid, "restarted, not reloaded"
        web1.succeed(f"echo 'get /release /tmp/r' | {sftp} web1@server")
        expect(web1, "nothing to do")
  '';
}
