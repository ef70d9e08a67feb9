# The rows of the module evaluation. Each row is a NixOS configuration and what it must
# give:
#   expect = "ok"     no failed assertion, the contract checks of judge.nix hold, and the
#                     files it renders pass the real `bento` checks (the caller builds them);
#   expect = "<text>" a failed assertion whose message contains <text> (and names the option);
#   expect = "refused at build: <text>"  evaluates like "ok", but building its rendered
#                     file fails, `bento` naming <text>.
# `needs` lists what the bento binary must have for the row's files to be checked (see
# scripts/check-nixos.sh); `checks` adds the row's own checks over its config.
#
# The rows named node-* and variant-* are the VM tests' own nodes, scenario overrides and
# variant systems (../nodes, ../<scenario>.nix): what is evaluated here is what boots there.
{ lib, pkgs }:

let
  keys = import ../keys;
  storeFile = "${builtins.storeDir}/00000000000000000000000000000000-secret";

  agent = {
    networking.hostName = "web1";
    services.bento.agent = {
      enable = true;
      server = "bento.example.org:2222";
      cacheUrl = "http://bento.example.org:8080";
      serverHostKey = keys.server.public;
      fleetPublicKey = keys.fleet.public;
    };
  };
  server = {
    services.bento.server = {
      enable = true;
      settings = {
        fleet.flake = "git+file:///srv/fleet";
        hosts.web1.ssh_key = keys.web1.public;
      };
    };
  };

  row = expect: modules: extra: {
    inherit expect;
    eval = evalConfig: evalConfig modules;
    needs = extra.needs or [ ];
    checks = extra.checks or (_: [ ]);
    expectWarning = extra.expectWarning or null;
  };
  ok = modules: row "ok" modules { };
  fails = text: modules: row text modules { };
  check = what: ok: { inherit what ok; };

  base = {
    agent-minimal = row "ok" [ agent ] {
      checks = c: [
        (check "without sshd the agent makes its own key" (
          c.services.bento.agent.sshKeyFile == "/var/lib/bento-agent/ssh/id_ed25519"
          && c.systemd.services.bento-agent.serviceConfig.ExecStartPre != [ ]
        ))
      ];
    };
    agent-with-sshd = row "ok" [
      agent
      { services.openssh.enable = true; }
    ] {
      checks = c: [
        (check "with sshd the agent logs in with sshd's key, made before it starts" (
          c.services.bento.agent.sshKeyFile == "/etc/ssh/ssh_host_ed25519_key"
          && lib.elem "sshd-keygen.service" c.systemd.services.bento-agent.after
          && c.systemd.services.bento-agent.serviceConfig.ExecStartPre == [ ]
        ))
      ];
    };
    agent-full =
      row "ok"
        [
          agent
          (
            { pkgs, ... }:
            {
              services.bento.agent = {
                hostName = "web-1.example";
                sshKeyFile = "/run/secrets/bento-key";
                cacheNetrcFile = "/run/secrets/bento-netrc";
                action = "test";
                healthChecks = [
                  [
                    "systemctl"
                    "is-active"
                    "nginx.service"
                  ]
                  [
                    "curl"
                    "-fsS"
                    "http://127.0.0.1/health"
                  ]
                ];
                extraPackages = [ pkgs.curl ];
                settings = {
                  poll_interval_secs = 120;
                  poll_jitter = 0.1;
                  confirm_timeout_secs = 60;
                  confirm_retry_secs = 5;
                  retry_base_secs = 30;
                  instant_updates = false;
                  files_dir = "/run/bento/files";
                  trigger_group = "wheel";
                  http_trigger = "127.0.0.1:51337";
                  metrics_textfile = "/var/lib/prometheus-node-exporter/bento.prom";
                };
              };
            }
          )
        ]
        {
          checks = c: [
            (check "extraPackages are on the agent's PATH" (lib.elem pkgs.curl c.systemd.services.bento-agent.path))
            (check "a custom key needs neither sshd nor a generated key" (
              c.systemd.services.bento-agent.serviceConfig.ExecStartPre == [ ]
              && !(lib.elem "sshd-keygen.service" c.systemd.services.bento-agent.after)
            ))
          ];
        };
    # Keys of INTERFACES.md that the agent issue adds.
    agent-timeouts =
      row "ok"
        [
          agent
          {
            services.bento.agent.settings = {
              activation_timeout_secs = 300;
              copy_timeout_secs = 1200;
            };
          }
        ]
        {
          needs = [ "agent-timeout-keys" ];
        };
    # Keys of the copy's fallback (issue 15): substitution from a cache carried by hand.
    agent-copy-method =
      row "ok"
        [
          agent
          {
            services.bento.agent.settings = {
              cache_url = "file:///mnt/bento-cache";
              copy_method = "substitute";
              substitute_jobs = 8;
            };
          }
        ]
        {
          needs = [ "agent-copy-keys" ];
        };
    # The transfer speaks only to bento serve over http://: refused when the file is built.
    agent-transfer-needs-http = row "refused at build: copy_method" [
      agent
      {
        services.bento.agent.settings.cache_url = "file:///mnt/bento-cache";
        services.bento.agent.settings.copy_method = "transfer";
      }
    ] { };
    # Positive control of the build-time check: a key the agent does not know evaluates
    # (settings are freeform) and is refused when the file is built.
    agent-unknown-key = row "refused at build: surprise" [
      agent
      { services.bento.agent.settings.surprise = 1; }
    ] { };
    agent-renamed-options =
      row "ok"
        [
          agent
          {
            services.bento.agent = {
              pollInterval = 30;
              confirmTimeout = 45;
              instantUpdates = false;
              metricsTextfile = "/var/lib/bento.prom";
            };
          }
        ]
        {
          expectWarning = "services.bento.agent.pollInterval";
          checks = c: [
            (check "old options land in settings" (
              c.services.bento.agent.settings.poll_interval_secs == 30
              && c.services.bento.agent.settings.confirm_timeout_secs == 45
              && c.services.bento.agent.settings.instant_updates == false
            ))
          ];
        };

    server-minimal = row "ok" [ server ] {
      needs = [ "serve-check-config" ];
      checks = c: [
        (check "no firewall port opened by default" (c.networking.firewall.allowedTCPPorts == [ ]))
        (check "a fleet key is made on first start" c.services.bento.server.generateFleetKey)
      ];
    };
    server-full =
      row "ok"
        [
          server
          {
            services.bento.server = {
              fleetKeyFile = "/run/secrets/bento-fleet-key";
              sshHostKeyFile = "/run/secrets/bento-ssh-host-key";
              metricsTokenFile = "/run/secrets/bento-metrics-token";
              hostTokens = true;
              openFirewall = true;
              sftpPort = 22;
              cachePort = 80;
              dashboardListen = "[::1]:9000";
              openFilesLimit = 200000;
              extraArgs = [
                "--max-nar-streams"
                "128"
              ];
              # Files outside the store: the build sandbox cannot see them.
              checkConfig = false;
              settings = {
                fleet = {
                  jobs = 4;
                  keep_systems = 10;
                  stale_after_secs = 900;
                };
                hosts.web1 = {
                  tags = [
                    "web"
                    "prod"
                  ];
                  files."db-password" = "/srv/secrets/web1/db-password";
                  files."tls.key" = {
                    source = "/srv/secrets/web1/tls.key";
                    mode = "0440";
                  };
                };
                hosts.router = {
                  ssh_key = keys.web2.public;
                  configuration = "/srv/fleet/hosts/router/configuration.nix";
                };
              };
            };
          }
        ]
        {
          checks = c: [
            (check "both ports open in the firewall, the dashboard's never" (
              c.networking.firewall.allowedTCPPorts == [
                22
                80
              ]
            ))
            (check "ports below 1024 get CAP_NET_BIND_SERVICE and nothing else" (
              c.systemd.services.bento-server.serviceConfig.AmbientCapabilities == [ "CAP_NET_BIND_SERVICE" ]
            ))
            (check "the three secrets are credentials" (
              lib.length c.systemd.services.bento-server.serviceConfig.LoadCredential == 3
            ))
            (check "no fleet key is generated when one is given" (!c.services.bento.server.generateFleetKey))
          ];
        };
    server-config-file =
      row "ok"
        [
          {
            services.bento.server = {
              enable = true;
              configFile = "/srv/fleet/bento.toml";
            };
          }
        ]
        {
          checks = c: [
            (check "the server reads the given file and /etc/bento/bento.toml is not made" (
              !(c.environment.etc ? "bento/bento.toml")
              && lib.hasInfix "--config /srv/fleet/bento.toml" c.systemd.services.bento-server.serviceConfig.ExecStart
              && c.environment.variables.BENTO_CONFIG == "/srv/fleet/bento.toml"
            ))
          ];
        };
    server-and-agent =
      row "ok"
        [
          server
          agent
          { services.openssh.enable = true; }
        ]
        {
          needs = [ "serve-check-config" ];
          checks = c: [
            (check "both units" (c.systemd.services ? bento-server && c.systemd.services ? bento-agent))
            (check "people get the server's bento (BENTO_CONFIG set), ahead of the agent's package" (
              lib.any (p: (p.meta.priority or 5) < 5) c.environment.systemPackages
            ))
          ];
        };

    assert-empty-hostname = fails "services.bento.agent.hostName is empty" [
      agent
      { networking.hostName = lib.mkForce ""; }
    ];
    assert-bad-hostname = fails "services.bento.agent.hostName = \"web 1\" is not a Bento host name" [
      agent
      { services.bento.agent.hostName = "web 1"; }
    ];
    assert-netrc-path-literal = fails "services.bento.agent.cacheNetrcFile is the path literal" [
      agent
      { services.bento.agent.cacheNetrcFile = ./table.nix; }
    ];
    assert-ssh-key-in-store = fails "services.bento.agent.sshKeyFile = ${storeFile} is in the Nix store" [
      agent
      { services.bento.agent.sshKeyFile = storeFile; }
    ];
    assert-agent-state-dir = fails "services.bento.agent.settings.state_dir" [
      agent
      { services.bento.agent.settings.state_dir = "/srv/bento-agent"; }
    ];
    assert-http-trigger-name = fails "services.bento.agent.settings.http_trigger" [
      agent
      { services.bento.agent.settings.http_trigger = "localhost:51337"; }
    ];
    assert-dashboard-name = fails "services.bento.server.dashboardListen = \"localhost:8081\" is not an IP:port" [
      server
      { services.bento.server.dashboardListen = "localhost:8081"; }
    ];
    assert-dashboard-port = fails "services.bento.server.dashboardListen" [
      server
      { services.bento.server.dashboardListen = "127.0.0.1:99999"; }
    ];
    assert-fleet-key-path-literal = fails "services.bento.server.fleetKeyFile is the path literal" [
      server
      { services.bento.server.fleetKeyFile = ./stubs.nix; }
    ];
    assert-host-key-in-store = fails "services.bento.server.sshHostKeyFile = ${storeFile} is in the Nix store" [
      server
      { services.bento.server.sshHostKeyFile = storeFile; }
    ];
    assert-metrics-token-in-store = fails "services.bento.server.metricsTokenFile" [
      server
      { services.bento.server.metricsTokenFile = storeFile; }
    ];
    assert-same-ports = fails "services.bento.server.sftpPort and services.bento.server.cachePort" [
      server
      { services.bento.server.cachePort = 2222; }
    ];
    assert-no-fleet = fails "services.bento.server has no fleet" [ { services.bento.server.enable = true; } ];
    assert-two-fleets = fails "set either configFile or settings.hosts" [
      server
      { services.bento.server.configFile = "/srv/fleet/bento.toml"; }
    ];
    assert-config-file-path-literal = fails "services.bento.server.configFile" [
      {
        services.bento.server = {
          enable = true;
          configFile = ./table.nix;
        };
      }
    ];
    assert-config-file-in-home = fails "is under a home directory" [
      {
        services.bento.server = {
          enable = true;
          configFile = "/home/alice/fleet/bento.toml";
        };
      }
    ];
    assert-relative-flake = fails "services.bento.server.settings.fleet.flake" [
      server
      { services.bento.server.settings.fleet.flake = lib.mkForce "."; }
    ];
    assert-unset-flake = fails "services.bento.server.settings.fleet.flake" [
      {
        services.bento.server = {
          enable = true;
          settings.hosts.web1.ssh_key = keys.web1.public;
        };
      }
    ];
    assert-state-dir-mismatch = fails "settings.fleet.state_dir must equal services.bento.server.stateDir" [
      server
      { services.bento.server.settings.fleet.state_dir = "/srv/bento"; }
    ];
    assert-relative-state-dir = fails "services.bento.server.stateDir = \"var/bento\"" [
      server
      { services.bento.server.stateDir = "var/bento"; }
    ];
    assert-fleet-key-twice = fails "do not also set settings.fleet.signing_key" [
      server
      {
        services.bento.server = {
          fleetKeyFile = "/run/secrets/fleet";
          settings.fleet.signing_key = "/srv/keys/fleet.secret";
        };
      }
    ];
  };

  # The VM tests: base nodes, each scenario's node overrides and specialisations, and every
  # variant system (built as the harness builds it: the host's configuration extended).
  nodeFile = {
    server = ../nodes/server.nix;
    web1 = import ../nodes/web.nix "web1";
    web2 = import ../nodes/web.nix "web2";
  };
  scenario =
    name:
    import (../. + "/${name}.nix") {
      config.bento.prelude = "";
      inherit lib;
      hostPkgs = pkgs;
    };
  nodeModules =
    name: node:
    let
      overrides = (scenario name).nodes or { };
    in
    [ nodeFile.${node} ] ++ lib.optional (overrides ? ${node}) overrides.${node};
  needsFor = node: lib.optional (node == "server") "serve-check-config";
  forScenario =
    name:
    let
      s = scenario name;
      overridden = lib.attrNames (s.nodes or { });
      nodeRows = lib.listToAttrs (
        map (node: {
          name = "node-${name}-${node}";
          value = row "ok" (nodeModules name node) { needs = needsFor node; };
        }) overridden
      );
      specRows = lib.listToAttrs (
        lib.concatMap (
          node:
          lib.mapAttrsToList (spec: def: {
            name = "node-${name}-${node}-${spec}";
            value = row "ok" (nodeModules name node ++ [ def.configuration ]) { needs = needsFor node; };
          }) (s.nodes.${node}.specialisation or { })
        ) overridden
      );
      variantRows = lib.listToAttrs (
        lib.concatLists (
          lib.mapAttrsToList (
            host: variants:
            lib.mapAttrsToList (variant: module: {
              name = "variant-${name}-${host}-${variant}";
              value = {
                expect = "ok";
                needs = [ ];
                checks = _: [ ];
                expectWarning = null;
                # As the harness builds it: the host's own extension.
                eval =
                  evalConfig:
                  (evalConfig (nodeModules name host)).config.bentoTest.extend [
                    module
                    { bentoTest.variant = variant; }
                  ];
              };
            }) variants
          ) (s.bento.variants or { })
        )
      );
    in
    nodeRows // specRows // variantRows;

  tests = {
    node-server = row "ok" [ nodeFile.server ] { needs = [ "serve-check-config" ]; };
    node-web1 = ok [ nodeFile.web1 ];
    node-web2 = ok [ nodeFile.web2 ];
  }
  // lib.foldl' (acc: name: acc // forScenario name) { } (import ../scenarios.nix);
in
base // tests
