# The VM test scenarios, one file each (./<name>.nix): run by ./default.nix, their nodes and
# variant systems evaluated by module-eval/table.nix.
[
  "converge"
  "rollback-network"
  "rollback-activation"
  "health-check"
  "isolation"
  "server-restart"
  "server-blink"
  "agent-self-update"
  "files-after-reboot"
  "boot-action"
]
