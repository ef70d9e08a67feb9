# Helpers the benchmark scripts share (sourced, not run).

# bench_scratch PREFIX: sets $work to a new directory /tmp/PREFIX.XXXXXX and $pids to an
# empty list; on exit, every process in $pids is killed and $work removed.
bench_scratch() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# ratio A B: A / B with two decimals, or n/a when B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# A section title, on stderr.
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

# A loopback port nobody answers on now.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
