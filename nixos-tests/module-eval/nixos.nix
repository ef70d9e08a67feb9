# The module evaluation against real NixOS, for the flake's `checks.<system>.module-eval`:
# the rows of table.nix evaluated with nixpkgs' own `nixosSystem` and judged as check.nix
# judges them with stubs. Evaluation fails, naming the rows, if any row is not as expected;
# the check's build depends on every file the rows render, so building it runs every
# `bento agent check-config` and `bento serve --check-config` of the table.
{ nixpkgs, pkgs }:

let
  inherit (pkgs) lib;
  evalConfig =
    modules:
    nixpkgs.lib.nixosSystem {
      modules = [
        ../../nix/module-server.nix
        ../../nix/module-agent.nix
        {
          nixpkgs.pkgs = pkgs;
          # Just enough of a machine to evaluate.
          boot.loader.grub.enable = false;
          fileSystems."/".device = "/dev/null";
          system.stateVersion = "25.11";
        }
      ]
      ++ modules;
    };
  rows = import ./judge.nix { inherit lib; } {
    inherit evalConfig;
    rows = import ./table.nix { inherit lib pkgs; };
  };
  wrong = lib.filterAttrs (_: r: r.report.problems != [ ]) rows;
  files = lib.concatMap (r: lib.attrValues r.files) (lib.attrValues rows);
in
if wrong != { } then
  throw "bento module evaluation: rows not as expected: ${builtins.toJSON (lib.mapAttrs (_: r: r.report.problems) wrong)}"
else
  pkgs.runCommand "bento-module-eval"
    {
      inherit files;
      rows = builtins.attrNames rows;
    }
    ''
      for r in $rows; do echo "ok $r"; done > $out
    ''
