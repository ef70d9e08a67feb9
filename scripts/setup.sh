#!/usr/bin/env bash
# Installs what Bento's build, tests and demo need on a Debian 12 machine, when missing.
# Safe to run again: it only installs what is absent.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have nix || need+=(nix-bin)
have sftp || need+=(openssh-client)
have ssh-keygen || need+=(openssh-client)
have ip || need+=(iproute2)
have unshare || need+=(util-linux)
have git || need+=(git)
have wrk || need+=(wrk)
have nginx || need+=(nginx-light)
have cc || need+=(gcc)
have curl || need+=(curl)
[ -x /usr/bin/time ] || need+=(time)
have chromium || need+=(chromium)  # the dashboard test (headless)
have age || need+=(age)  # secrets: files sealed by the reference age tool (agenix's format) open in Bento, and back
# The systemd host in a box (tests/harness/systemd): a Debian root booted by systemd-nspawn.
{ have debootstrap || [ -x /usr/sbin/debootstrap ]; } || need+=(debootstrap)
have systemd-nspawn || need+=(systemd-container)
{ have nsenter && have flock; } || need+=(util-linux)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${need[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! have cargo; then
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

# cargo-deny checks licenses, advisories, duplicate versions and sources (scripts/deny.sh,
# deny.toml). It builds from source (several minutes), so only when missing: the binary
# stays in ~/.cargo/bin across runs.
if ! cargo deny --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deny (cargo install --locked, a few minutes, once)" >&2
  cargo install --locked cargo-deny
fi
