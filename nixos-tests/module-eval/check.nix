# Entry of scripts/check-nixos.sh: the rows of table.nix evaluated with nixpkgs' real
# `lib.evalModules`, the stub NixOS options of stubs.nix and the stub packages of
# stub-pkgs.nix (this machine has nixpkgs' lib but no nixpkgs).
#
#   nix eval --raw -f check.nix --argstr nixpkgsLib DIR --arg bentoBin FILE allLines
#   nix-instantiate check.nix --argstr nixpkgsLib DIR --arg bentoBin FILE -A 'rows."agent-minimal".files.agent'
{
  nixpkgsLib,
  bentoBin,
}:

let
  lib = import "${nixpkgsLib}/lib";
  pkgs = import ./stub-pkgs.nix { inherit lib bentoBin; };
  modules = [
    ./stubs.nix
    ../../nix/module-server.nix
    ../../nix/module-agent.nix
    { _module.args.pkgs = pkgs; }
  ];
  evalConfig = extra: lib.evalModules { modules = modules ++ extra; };
  rows = import ./judge.nix { inherit lib; } {
    inherit evalConfig;
    rows = import ./table.nix { inherit lib pkgs; };
  };
  options = (evalConfig [ ]).options;
  # One line per row for the shell, fields separated by "|": name, expect, needs, files
  # (key=.drv), problems.
  line =
    name: r:
    lib.concatStringsSep "|" [
      name
      r.report.expect
      (lib.concatStringsSep "," r.report.needs)
      (lib.concatStringsSep " " (lib.mapAttrsToList (k: v: "${k}=${v.drvPath}") r.files))
      (lib.replaceStrings [ "\n" "|" ] [ " " "/" ] (lib.concatStringsSep " ;; " r.report.problems))
    ]
    + "\n";
in
{
  inherit rows;
  names = builtins.attrNames rows;
  reports = lib.mapAttrs (_: r: r.report) rows;
  lines = lib.mapAttrs line rows;
  allLines = lib.concatStrings (lib.mapAttrsToList line rows);
  # The option reference of docs/nixos.md, generated from the modules.
  optionsDoc = import ./options-doc.nix { inherit lib; } [
    options.services.bento.server
    options.services.bento.agent
  ];
}
