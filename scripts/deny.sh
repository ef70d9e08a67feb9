#!/usr/bin/env bash
# cargo deny over the dependency graph, with deny.toml: licenses, bans (duplicate versions,
# wildcards), sources, and advisories when the RustSec database can be had.
#
# The advisory database is a git repository (not on the crate registry). When it cannot be
# fetched (a machine that reaches only package registries), the other checks still run and
# fail the build as usual, and this script says loudly that advisories were NOT checked, or
# checked only against an older local copy, with its date. It never pretends otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
  echo "deny: cargo-deny is missing; run scripts/setup.sh (cargo install --locked cargo-deny)" >&2
  exit 1
fi

fetch_log=$(mktemp)
trap 'rm -f "$fetch_log"' EXIT
db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
checks=(licenses bans sources)

if timeout 120 cargo deny fetch db >"$fetch_log" 2>&1; then
  checks+=(advisories)
  advisories="checked against the RustSec database fetched now"
else
  # A copy cloned by an earlier run that could fetch (a failed clone leaves no .git).
  local_db=$(find "$db_root" -mindepth 2 -maxdepth 2 -name .git -printf '%h\n' 2>/dev/null | head -n 1 || true)
  if [ -n "$local_db" ]; then
    checks+=(advisories)
    when=$(git -C "$local_db" log -1 --format=%cs 2>/dev/null || date -r "$local_db" +%F)
    advisories="checked against an OLD local copy of the RustSec database ($when): it could not be fetched now"
  else
    advisories="NOT CHECKED: the RustSec advisory database cannot be fetched from this machine and no local copy exists"
  fi
fi

status=0
cargo deny --log-level warn --offline --locked check "${checks[@]}" || status=$?

echo
echo "deny: ${checks[*]}: $([ $status = 0 ] && echo ok || echo FAILED)"
if [[ "$advisories" == NOT* || "$advisories" == *OLD* ]]; then
  echo "################################################################################"
  echo "deny: ADVISORIES $advisories."
  why=$(grep -m1 "fatal:" "$fetch_log" || grep -m1 -i "error" "$fetch_log" || true)
  echo "deny: fetch error: ${why:0:200}"
  echo "################################################################################"
else
  echo "deny: advisories $advisories."
fi
exit $status
