#!/usr/bin/env bash
# Convergence benchmark: time from `bento deploy` to every host `applied`, for N simulated
# hosts (default "10 50"), with instant updates and with plain polling (60 s ± 20 %).
# Prints p50/p99/max of per-host convergence after `bento deploy` returned, and the server's
# CPU time and peak memory; then where each host's time went, from its release written
# (deploy publishes each host as soon as it is built, so early hosts converge before the
# deploy returns): when serve showed releases (its log), the agent's attempt start and phase
# timings (its applied report), and when the report was stored.
# Asserts nothing. Needs root. Usage: scripts/bench-converge.sh [N...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/nix-env.sh
source scripts/lib/target.sh
BENTO=$BENTO_RELEASE_DIR/bento
export RUST_LOG=${RUST_LOG:-warn}
source scripts/lib/fleet.sh
sizes=("${@:-10 50}")
read -r -a sizes <<< "${sizes[*]}"
POLL=${POLL:-60}

run_one() {
  local n=$1 mode=$2
  FLEET_DIR=$(mktemp -d /tmp/bento-converge.XXXXXX)
  FLEET_HOSTS=() FLEET_PIDS=()
  FLEET_BRIDGE=brcv$$$n${mode:0:1}
  trap fleet_cleanup RETURN EXIT
  local hosts=()
  for i in $(seq "$n"); do hosts+=("h$i"); done
  fleet_init "${hosts[@]}"
  fleet_bridge
  local conf=$FLEET_DIR/repo/bento.toml i=0
  "$BENTO" deploy -c "$conf" >/dev/null
  # Every host starts on generation 1, already applied.
  for host in "${hosts[@]}"; do
    i=$((i + 1))
    fleet_host "$host" "$i" "$(sed -n 's/.*"store_path": "\(.*\)".*/\1/p' "$FLEET_DIR/state/publish/$host/release")"
  done
  RUST_LOG=warn,bento::server=info,bento::cache=info \
    "$BENTO" serve -c "$conf" --cache-listen "$FLEET_SUBNET.1:8080" --sftp-listen "$FLEET_SUBNET.1:2222" \
    --no-dashboard > "$FLEET_DIR/serve.out" 2>"$FLEET_DIR/serve.log" &
  local serve_pid=$!
  FLEET_PIDS+=("$serve_pid")
  for _ in $(seq 100); do grep -q '^Agents pin' "$FLEET_DIR/serve.out" 2>/dev/null && break; sleep 0.1; done
  local pinned fleet_public instant
  pinned=$(sed -n 's/^Agents pin the host key: server_host_key = "\(.*\)"$/\1/p' "$FLEET_DIR/serve.out")
  fleet_public=$(cat "$FLEET_DIR/state/keys/bento-demo-fleet.public")
  instant=true; [ "$mode" = polling ] && instant=false
  for host in "${hosts[@]}"; do
    fleet_agent_config "$host" "http://$FLEET_SUBNET.1:8080" "$FLEET_SUBNET.1:2222" "$pinned" "$fleet_public" \
      "poll_interval_secs = $POLL" "instant_updates = $instant" 'confirm_timeout_secs = 30'
    fleet_start_agent "$host"
  done
  # Let every agent make its first (idle) attempt and settle into waiting.
  sleep 3
  local cpu0 t0
  cpu0=$(awk '{print $14 + $15}' "/proc/$serve_pid/stat")
  for host in "${hosts[@]}"; do fleet_set "$host" 2 good; done
  t0=$(date +%s.%N)
  "$BENTO" deploy -c "$conf" >/dev/null
  local deployed pending
  deployed=$(date +%s.%N)
  declare -A done_at=()
  pending=$n
  local limit=$(( POLL * 3 + 60 ))
  while [ "$pending" -gt 0 ]; do
    for host in "${hosts[@]}"; do
      [ -n "${done_at[$host]:-}" ] && continue
      if ls "$FLEET_DIR/state/publish/$host/reports/" 2>/dev/null | grep -q -- '-g2-applied.json$'; then
        done_at[$host]=$(date +%s.%N)
        pending=$((pending - 1))
      fi
    done
    if awk -v a="$deployed" -v b="$(date +%s.%N)" -v l="$limit" 'BEGIN{exit !(b-a > l)}'; then
      echo "  $pending hosts did not converge within ${limit}s; h1's agent said:" >&2
      tail -n 5 "$FLEET_DIR/hosts/h1/agent.log" >&2
      break
    fi
    sleep 0.05
  done
  if [ -n "${VERBOSE:-}" ]; then tail -n 8 "$FLEET_DIR/hosts/h1/agent.log" | cut -c1-200 >&2; fi
  local cpu1 hz peak
  cpu1=$(awk '{print $14 + $15}' "/proc/$serve_pid/stat")
  hz=$(getconf CLK_TCK)
  peak=$(awk '/VmHWM/ {print $2}' "/proc/$serve_pid/status")
  for host in "${hosts[@]}"; do
    [ -n "${done_at[$host]:-}" ] && awk -v a="$deployed" -v b="${done_at[$host]}" 'BEGIN{printf "%.3f\n", b-a}'
  done | sort -n > "$FLEET_DIR/times"
  awk -v n="$n" -v mode="$mode" -v deploy="$(awk -v a="$t0" -v b="$deployed" 'BEGIN{printf "%.2f", b-a}')" \
      -v cpu="$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$hz" 'BEGIN{printf "%.2f", (b-a)/hz}')" -v peak="$peak" '
    { t[NR] = $1 }
    END {
      p50 = t[int((NR - 1) * 0.50) + 1]; p99 = t[int((NR - 1) * 0.99) + 1]
      printf "  N=%-3d %-8s converged %d/%d  p50 %6.2fs  p99 %6.2fs  max %6.2fs  (deploy %ss)  server CPU %ss  peak RSS %d MiB\n",
        n, mode, NR, n, p50, p99, t[NR], deploy, cpu, peak / 1024
    }' "$FLEET_DIR/times"
  stages "$t0" "$deployed" "${hosts[@]}"
}

# stages T0 DEPLOYED HOST...: where the time went, from the serve log and each host's
# applied report (its attempt's start, phase timings and end), as p50/p99 over hosts.
stages() {
  local t0=$1 deployed=$2; shift 2
  local ms0 host report
  ms0=$(awk -v t="$t0" 'BEGIN{printf "%.0f", t * 1000}')
  # When serve showed hosts new releases (and woke their agents), ms after deploy start.
  sed 's/\x1b\[[0-9;]*m//g' "$FLEET_DIR/serve.log" | grep 'hosts shown new releases' |
    while read -r stamp rest; do
      echo "$(( $(date -d "$stamp" +%s%3N) - ms0 )) $(grep -o "hosts=[0-9]*" <<< "$rest")"
    done | awk '$1 > 0 {printf "    shown at %.2fs after deploy start (%s)\n", $1 / 1000, $2}'
  for host in "$@"; do
    report=$(ls "$FLEET_DIR/state/publish/$host/reports/"*-g2-applied.json 2>/dev/null | head -1)
    [ -n "$report" ] || continue
    jq -r --arg pub "$(date -r "$FLEET_DIR/state/publish/$host/release" +%s%3N)" --arg ms0 "$ms0" \
      --arg seen "$(date -r "$report" +%s%3N)" '
      [(($pub | tonumber) - ($ms0 | tonumber)), (.started_ms - ($pub | tonumber)),
       (.timings.copy_ms // 0), (.timings.activate_ms // 0), (.timings.confirm_ms // 0),
       (.finished_ms - .started_ms - (.timings.copy_ms // 0) - (.timings.activate_ms // 0) - (.timings.confirm_ms // 0)),
       (($seen | tonumber) - .finished_ms), (($seen | tonumber) - ($pub | tonumber))] | @tsv' "$report"
  done > "$FLEET_DIR/stages"
  [ -s "$FLEET_DIR/stages" ] || return 0
  printf '    deploy returned %ss after it started; each host from its release written, p50/p99 over %d hosts:\n' \
    "$(awk -v a="$t0" -v b="$deployed" 'BEGIN{printf "%.2f", b-a}')" "$(wc -l < "$FLEET_DIR/stages")"
  local c=0 name
  for name in 'published (from deploy start)' 'published -> agent attempt' copy activate confirm \
      'rest of attempt' 'report stored' 'published -> report stored'; do
    c=$((c + 1))
    cut -f "$c" "$FLEET_DIR/stages" | sort -n | awk -v name="$name" '{ t[NR] = $1 }
      END { printf "      %-30s %6.2fs %6.2fs  max %6.2fs\n", name, t[int((NR - 1) * 0.5) + 1] / 1000,
            t[int((NR - 1) * 0.99) + 1] / 1000, t[NR] / 1000 }'
  done
}

fleet_log "Convergence: time from bento deploy to every host applied (poll interval ${POLL}s for polling)"
for n in "${sizes[@]}"; do
  for mode in ${MODES:-instant polling}; do
    run_one "$n" "$mode"
  done
done
