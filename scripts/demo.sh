#!/usr/bin/env bash
# The demo: shows, step by step, what Bento can do on this machine today.
set -euo pipefail
cd "$(dirname "$0")/.."
bento=target/release/bento
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Bento builds on this machine; this demo shows the parts that exist so far."
"$bento" --version

step "A fleet signing key in Nix's own format (bento keygen)"
"$bento" keygen --name demo-fleet-1 --out "$work/keys"
ls -l "$work/keys"

step "Nix accepts the key: it signs a store path with it"
out=$(nix-build --no-out-link -E 'derivation { name = "bento-demo"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" "echo hello > $out"]; }' 2>/dev/null)
nix store sign -k "$work/keys/demo-fleet-1.secret" "$out"
nix path-info --sigs "$out"

step "Done. The fleet workflow (build, deploy, serve, agent, status) is being built; see README.md."
