# Bento's two entry points: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
NIX_SETTINGS = source scripts/nix-env.sh

.PHONY: setup test deny check-nixos demo fuzz bench

setup:
	@scripts/setup.sh

## Everything CI checks: formatting, lints, the dependency graph (cargo deny: licenses,
## duplicates, sources, and advisories when the RustSec database can be fetched; it says
## loudly when not), every test (unit, integration against real Nix), and the NixOS side as
## far as this machine allows (see check-nixos).
test: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	scripts/deny.sh
	$(NIX_SETTINGS) && cargo test --all-targets -- --test-threads=2
	scripts/check-nixos.sh

## The dependency graph alone (deny.toml).
deny:
	scripts/deny.sh

## The NixOS modules and the VM tests' nodes: every .nix file parses; with NIXPKGS_LIB set
## (a checkout of github:nix-community/nixpkgs.lib) the module evaluation table, the
## rendered configs through the real bento, the option reference of docs/nixos.md and the
## flake's outputs. The VM tests themselves need nixpkgs and KVM: `nix flake check -L`.
check-nixos:
	scripts/check-nixos.sh

## The demo: what Bento does, end to end, on this machine.
demo: setup
	cargo build --release
	$(NIX_SETTINGS) && scripts/demo.sh

## Fuzz every parser of untrusted input (fuzz/Cargo.toml lists them) for FUZZ_SECONDS each
## (default 60).
fuzz:
	scripts/fuzz.sh

## Benchmarks print figures; none of them asserts a time.
bench: setup
	cargo build --release
	$(NIX_SETTINGS) && scripts/bench-build.sh && scripts/bench-cache.sh && scripts/bench-sftp.sh && scripts/bench-converge.sh
