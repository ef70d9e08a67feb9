# Judges the rows of table.nix. `evalConfig` turns a list of modules into an evaluation
# (`lib.evalModules` with stub NixOS options in check.nix; `nixpkgs.lib.nixosSystem` in the
# flake's checks). For each row it gives `problems` (empty when the row is as expected),
# `warnings`, and `files`: the derivations to build, whose builds run the real `bento`
# checks on what the modules rendered (agent check-config, serve --check-config) and the
# key scripts the units run first.
#
# The contract checks hold for every row that enables a module: what INTERFACES.md and
# issue 16 promise about the units (self-update, bento-files, key ordering, sandbox).
{ lib }:
{ evalConfig, rows }:

let
  check = what: ok: { inherit what ok; };

  agentContract =
    c:
    let
      cfg = c.services.bento.agent;
      unit = c.systemd.services.bento-agent;
      files = c.systemd.services.bento-files;
      json = builtins.fromJSON (builtins.unsafeDiscardStringContext c.environment.etc."bento/agent-unit.json".text);
      tomlFile = "${c.environment.etc."bento/agent.toml".source}";
      sshdKeys = lib.optionals c.services.openssh.enable (map (k: k.path) c.services.openssh.hostKeys);
    in
    [
      (check "agent-unit.json names the checked config and the real binary" (
        json.format == 1 && json.config == tomlFile && !(lib.hasSuffix "/bin/bento" json.binary && cfg.package ? realExe)
      ))
      (check "the agent starts as `<binary> agent --config <config store path>`" (
        unit.serviceConfig.ExecStart == "${json.binary} agent --config ${json.config}"
      ))
      (check "activation neither stops nor restarts the agent; systemd always restarts it" (
        !unit.restartIfChanged
        && !unit.stopIfChanged
        && unit.serviceConfig.Restart == "always"
        && unit.unitConfig.StartLimitIntervalSec == 0
      ))
      (check "nix, systemd (systemd-run) and extraPackages are on the agent's PATH" (
        lib.all (p: lib.elem p unit.path) ([ c.nix.package c.systemd.package ] ++ cfg.extraPackages)
      ))
      (check "bento-files.service restores files before bento-files.target" (
        files.serviceConfig.Type == "oneshot"
        && files.serviceConfig.RemainAfterExit
        && lib.elem "bento-files.target" files.before
        && files.serviceConfig.ExecStart == "${json.binary} agent restore-files --config ${json.config}"
        && c.systemd.targets ? bento-files
        && lib.elem "bento-files.service" unit.after
      ))
      (check "the agent starts after its key exists" (
        if lib.elem (toString cfg.sshKeyFile) sshdKeys then
          lib.elem "sshd-keygen.service" unit.after
        else if toString cfg.sshKeyFile == "/var/lib/bento-agent/ssh/id_ed25519" then
          unit.serviceConfig.ExecStartPre != [ ]
        else
          true
      ))
    ];

  serverContract =
    c:
    let
      cfg = c.services.bento.server;
      sc = c.systemd.services.bento-server.serviceConfig;
      hasFlag = flag: lib.hasInfix flag sc.ExecStart;
    in
    [
      (check "runs as bento, in a sandbox that writes only the state directory" (
        sc.User == "bento"
        && sc.Group == "bento"
        && c.users.users.bento.group == "bento"
        && c.users.groups ? bento
        && sc.ProtectSystem == "strict"
        && sc.ProtectHome == true
        && sc.PrivateTmp == true
        && sc.NoNewPrivileges == true
        && sc.ReadWritePaths == [ cfg.stateDir ]
        && lib.elem "@system-service" sc.SystemCallFilter
        && sc.RestrictAddressFamilies != [ ]
        && sc.CapabilityBoundingSet != null
      ))
      (check "open files sized for the fleet; restarts spaced out" (
        sc.LimitNOFILE >= 65536 && sc.RestartSec >= 1 && sc.Restart == "always"
      ))
      (check "given keys come through LoadCredential, never as paths on the command line" (
        lib.all (x: x.file == null || lib.any (lib.hasPrefix "${x.id}:") sc.LoadCredential) [
          {
            id = "fleet-key";
            file = cfg.fleetKeyFile;
          }
          {
            id = "ssh-host-key";
            file = cfg.sshHostKeyFile;
          }
          {
            id = "metrics-token";
            file = cfg.metricsTokenFile;
          }
        ]
        && !(cfg.fleetKeyFile != null && hasFlag (toString cfg.fleetKeyFile))
      ))
      (check "host tokens and the dashboard address reach `bento serve`" (
        hasFlag "--host-tokens" == cfg.hostTokens
        && (if cfg.dashboardListen == null then hasFlag "--no-dashboard" else hasFlag "--dashboard-listen ${lib.escapeShellArg cfg.dashboardListen}")
      ))
      (check "the firewall opens the SFTP and cache ports only when asked, never the dashboard's" (
        let
          ports = c.networking.firewall.allowedTCPPorts;
        in
        (lib.elem cfg.sftpPort ports && lib.elem cfg.cachePort ports) == cfg.openFirewall
      ))
      (check "a new bento.toml from settings reloads the server instead of restarting it" (
        (c.systemd.services.bento-server.reloadTriggers != [ ]) == (cfg.configFile == null)
      ))
      (check "the first start makes or installs keys (ExecStartPre)" (lib.length sc.ExecStartPre == 1))
    ];

  judge =
    name: row:
    let
      result = row.eval evalConfig;
      c = result.config;
      failed = map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);
      agentOn = c.services.bento.agent.enable or false;
      serverOn = c.services.bento.server.enable or false;
      contract =
        lib.optionals agentOn (agentContract c) ++ lib.optionals serverOn (serverContract c) ++ row.checks c;
      broken = map (x: "contract: ${x.what}") (lib.filter (x: !x.ok) contract);
      warningProblem = lib.optional (
        row.expectWarning != null && !(lib.any (lib.hasInfix row.expectWarning) c.warnings)
      ) "expected a warning mentioning ${row.expectWarning}; warnings: ${builtins.toJSON c.warnings}";
      evaluates = row.expect == "ok" || lib.hasPrefix "refused at build: " row.expect;
      problems =
        if evaluates then
          map (m: "failed assertion: ${m}") failed ++ broken ++ warningProblem
        else if lib.any (lib.hasInfix row.expect) failed then
          [ ]
        else
          [ "expected a failed assertion containing \"${row.expect}\"; failed: ${builtins.toJSON failed}" ];
      firstPre = unit: lib.head (unit.serviceConfig.ExecStartPre ++ [ null ]);
      files =
        lib.optionalAttrs (evaluates && agentOn) (
          {
            agent = c.environment.etc."bento/agent.toml".source;
            agent-package = c.services.bento.agent.package;
            agent-unchecked = c.environment.etc."bento/agent.toml".source.unchecked;
          }
          // lib.optionalAttrs (firstPre c.systemd.services.bento-agent != null) {
            agent-key-script = firstPre c.systemd.services.bento-agent;
          }
        )
        // lib.optionalAttrs (evaluates && serverOn) (
          lib.optionalAttrs (c.services.bento.server.configFile == null) {
            server = c.environment.etc."bento/bento.toml".source;
            server-unchecked = c.environment.etc."bento/bento.toml".source.unchecked;
          }
          // {
            server-keys-script = firstPre c.systemd.services.bento-server;
          }
        );
    in
    {
      report = {
        inherit (row) expect needs;
        inherit problems;
        warnings = c.warnings;
        files = lib.mapAttrs (_: toString) files;
        # For running the key scripts: where they act.
        server-state-dir = if serverOn then c.services.bento.server.stateDir else null;
        server-key-name = if serverOn then c.services.bento.server.fleetKeyName else null;
      };
      inherit files;
    };
in
lib.mapAttrs judge rows
