# The VM tests (issue 16): one file per scenario, each on the shared harness. They need a
# full nixpkgs and KVM; `nix flake check -L` runs them as checks.<system>.vm-<scenario>.
# (`make check-nixos` evaluates the same node files and variants without nixpkgs.)
{ pkgs }:
let
  scenarios = import ./scenarios.nix;
in
pkgs.lib.genAttrs scenarios (
  scenario:
  pkgs.testers.runNixOSTest {
    imports = [
      ./harness.nix
      (./. + "/${scenario}.nix")
    ];
  }
)
