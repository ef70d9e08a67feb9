# Helpers the benchmark scripts share (sourced, not run).

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
