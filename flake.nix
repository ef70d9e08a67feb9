{
  description = "Bento: pull-based deployment for fleets of NixOS machines";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = lib.genAttrs systems;
      # Attribute names below never depend on this, so that `nix eval` of the outputs'
      # names works even with nixpkgs' lib alone as the input.
      pkgsFor =
        system:
        nixpkgs.legacyPackages.${system} or (throw (
          "bento: the nixpkgs input has no legacyPackages (is it nixpkgs' lib alone?); "
          + "packages, apps, devShells and checks need a full nixpkgs"
        ));
      scenarios = import ./nixos-tests/scenarios.nix;
    in
    {
      overlays.default = final: _prev: {
        bento = final.callPackage ./nix/package.nix { };
      };

      # Each module builds its default package with the system's own pkgs.
      nixosModules = {
        server = ./nix/module-server.nix;
        agent = ./nix/module-agent.nix;
        default = {
          imports = [
            ./nix/module-server.nix
            ./nix/module-agent.nix
          ];
        };
      };

      packages = forAllSystems (system: {
        bento = (pkgsFor system).callPackage ./nix/package.nix { };
        default = self.packages.${system}.bento;
      });

      apps = forAllSystems (system: {
        default = {
          type = "app";
          program = lib.getExe self.packages.${system}.bento;
        };
      });

      devShells = forAllSystems (system: {
        default =
          let
            pkgs = pkgsFor system;
          in
          pkgs.mkShell {
            inputsFrom = [ self.packages.${system}.bento ];
            packages = with pkgs; [
              cargo
              rustc
              clippy
              rustfmt
              nix
              openssh
              iproute2
              git
              curl
              wrk
            ];
          };
      });

      # `nix flake check -L`: the package, the module evaluation against real NixOS, and
      # one VM test per scenario (they need KVM).
      checks = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          vmTests = import ./nixos-tests { inherit pkgs; };
        in
        lib.genAttrs (map (s: "vm-${s}") scenarios) (name: vmTests.${lib.removePrefix "vm-" name})
        // {
          package = self.packages.${system}.bento;
          module-eval = import ./nixos-tests/module-eval/nixos.nix { inherit nixpkgs pkgs; };
        }
      );
    };
}
