#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input (the crate in fuzz/): each target runs for
# FUZZ_SECONDS (default 60). FUZZ_TARGETS picks targets (default: every target of
# fuzz/Cargo.toml). A target uses the dictionary fuzz/<target>.dict, or the one its entry in
# DICTS names, when there is one.
# Installs cargo-fuzz when missing; uses the nightly toolchain if there is one, else
# RUSTC_BOOTSTRAP=1 on the stable one. Exits non-zero if any target found a crash, and
# says where the crashing input is.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
declare -A DICTS=([release_parse]=json_records [report_parse]=json_records [files_manifest]=json_records)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  echo "fuzz: no nightly toolchain; using RUSTC_BOOTSTRAP=1 on $(rustc --version)" >&2
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
read -r -a targets <<<"${FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^bento-fuzz$' | tr '\n' ' ')}"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus"
  extra=()
  dict=fuzz/${DICTS[$t]:-$t}.dict
  if [ -f "$dict" ]; then extra+=(-dict="$dict"); fi
  echo "==> fuzzing $t for ${seconds}s" >&2
  # The first corpus directory collects new inputs; fuzz/seeds/<target> are the committed
  # seeds (real Nix and Bento output).
  mkdir -p "fuzz/seeds/$t"
  if "${fuzz[@]}" run "$t" "$corpus" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 "${extra[@]}" \
      2>&1 | tee "$logs/$t.log" | grep -E '^(#[0-9]+ +(INITED|DONE)|Done|SUMMARY|==[0-9]+==|thread)' >&2 \
      && [ "${PIPESTATUS[0]}" = 0 ]; then
    outcome="no crash"
  else
    outcome="CRASH (see fuzz/artifacts/$t/)"
    failed+=("$t")
    tail -40 "$logs/$t.log" >&2
  fi
  runs=$(grep -Eo 'stat::number_of_executed_units: [0-9]+' "$logs/$t.log" | grep -Eo '[0-9]+$' || echo "?")
  secs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$logs/$t.log" | grep -Eo '[0-9]+ second' | grep -Eo '[0-9]+' || echo "?")
  cov=$(grep -Eo 'cov: [0-9]+' "$logs/$t.log" | tail -1 | grep -Eo '[0-9]+' || echo "?")
  summary+=("$(printf '%-14s %12s execs in %4ss, coverage %5s edges, corpus %5s files: %s' \
    "$t" "$runs" "$secs" "$cov" "$(find "$corpus" -type f | wc -l)" "$outcome")")
done

echo
echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; reproduce with: cargo +nightly fuzz run <target> <artifact>" >&2
  exit 1
fi
