# The bento binary. Tests are not run in the build: they need root, namespaces and a
# writable Nix store (`make test` runs them).
{ lib, rustPlatform, pkg-config, openssl ? null }:

rustPlatform.buildRustPackage {
  pname = "bento";
  version = (lib.importTOML ../Cargo.toml).package.version;
  src = lib.cleanSourceWith {
    src = ../.;
    filter = path: type:
      let base = baseNameOf path; in
      !(builtins.elem base [ "target" "fuzz" ".ci" ]);
  };
  cargoLock.lockFile = ../Cargo.lock;
  doCheck = false;
  meta = {
    description = "Pull-based deployment for fleets of NixOS machines";
    mainProgram = "bento";
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
  };
}
