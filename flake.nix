{
  description = "Bento: pull-based deployment for fleets of NixOS machines";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        bento = pkgs.callPackage ./nix/package.nix { };
        default = bento;
      });

      nixosModules = {
        server = import ./nix/module-server.nix self;
        agent = import ./nix/module-agent.nix self;
      };

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt nix openssh iproute2 wrk ];
        };
      });
    };
}
