#!/usr/bin/env bash
# The demo: a server and three simulated NixOS hosts on this machine, each host with its own
# network namespace and its own Nix store, running the real `bento agent`. Shows build →
# deploy → serve → agents converge, then one host's broken configuration rolled back by the
# host itself. Cleans up after itself. Needs root (namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/target.sh
BENTO=$BENTO_RELEASE_DIR/bento
export RUST_LOG=${RUST_LOG:-warn}
source scripts/lib/fleet.sh

if [ "$(id -u)" != 0 ]; then
  echo "demo: simulated hosts need network and mount namespaces: run as root" >&2
  exit 1
fi
FLEET_DIR=$(mktemp -d /tmp/bento-demo.XXXXXX)
trap fleet_cleanup EXIT
started=$(date +%s)

fleet_log "A configuration repository with three hosts (fake NixOS systems, no nixpkgs needed)"
fleet_init web1 web2 db1
sed -n '1,9p' "$FLEET_DIR/repo/bento.toml"
echo "  ... (one [hosts.NAME] table per host, each with its own SSH key)"
conf=$FLEET_DIR/repo/bento.toml

fleet_log "bento build: every host evaluated and built in parallel"
"$BENTO" build -c "$conf"

fleet_log "Three simulated hosts, each running an older system of its own"
fleet_bridge
i=0
for host in "${FLEET_HOSTS[@]}"; do
  i=$((i + 1))
  expr_file=$FLEET_DIR/$host-0.nix
  fleet_system "$host" 0 good > "$expr_file"
  initial=$(nix-build --no-out-link "$expr_file" 2>/dev/null)
  fleet_host "$host" "$i" "$initial"
  echo "  $host: namespace $(cat "$FLEET_DIR/hosts/$host/netns"), address $FLEET_SUBNET.$((10 + i)), runs $(basename "$initial")"
done

fleet_log "bento deploy: a signed release per host (host, generation, store path)"
"$BENTO" deploy -c "$conf" --no-build

fleet_log "bento serve: binary cache and per-host SFTP on $FLEET_SUBNET.1"
"$BENTO" serve -c "$conf" --cache-listen "$FLEET_SUBNET.1:8080" --sftp-listen "$FLEET_SUBNET.1:2222" \
  --dashboard-listen 127.0.0.1:0 > "$FLEET_DIR/serve.out" 2> "$FLEET_DIR/serve.log" &
FLEET_PIDS+=($!)
for _ in $(seq 100); do grep -q '^Agents pin' "$FLEET_DIR/serve.out" 2>/dev/null && break; sleep 0.1; done
cat "$FLEET_DIR/serve.out"
pinned=$(sed -n 's/^Agents pin the host key: server_host_key = "\(.*\)"$/\1/p' "$FLEET_DIR/serve.out")
fleet_public=$(cat "$FLEET_DIR/state/keys/bento-demo-fleet.public")

fleet_log "bento agent on each host: pull, verify, copy, activate, confirm"
for host in "${FLEET_HOSTS[@]}"; do
  fleet_agent_config "$host" "http://$FLEET_SUBNET.1:8080" "$FLEET_SUBNET.1:2222" "$pinned" "$fleet_public" \
    'poll_interval_secs = 10' 'confirm_timeout_secs = 10' 'confirm_retry_secs = 1'
  fleet_start_agent "$host"
done

release_path() { sed -n 's/.*"store_path": "\(.*\)".*/\1/p' "$FLEET_DIR/state/publish/$1/release"; }
wait_converged() {
  for _ in $(seq 300); do
    local done=1
    for host in "${FLEET_HOSTS[@]}"; do
      [ "$(fleet_running "$host")" = "$(release_path "$host")" ] || done=0
    done
    [ $done = 1 ] && return 0
    sleep 0.2
  done
  return 1
}
show_status() {
  if "$BENTO" status --help >/dev/null 2>&1; then
    "$BENTO" status -c "$conf" || true
  else
    printf '  %-6s %-12s %s\n' HOST OUTCOME RUNNING
    for host in "${FLEET_HOSTS[@]}"; do
      last=$(ls "$FLEET_DIR/state/publish/$host/reports/" 2>/dev/null | grep -v -e deploying -e unconfirmed | tail -n1)
      outcome=$(echo "$last" | sed 's/^[0-9]*-g[0-9]*-\(.*\)\.json$/\1/')
      printf '  %-6s %-12s %s\n' "$host" "${outcome:--}" "$(basename "$(fleet_running "$host")")"
    done
  fi
}

t0=$(date +%s.%N)
wait_converged || { echo "demo: hosts did not converge; agent logs in $FLEET_DIR/hosts/*/agent.log" >&2; exit 1; }
echo "  converged in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
sleep 1
show_status

fleet_log "web2 gets a configuration that takes its network down"
fleet_set web2 2 break-network
"$BENTO" deploy -c "$conf" web2
echo "  web2 activates it, cannot reach the server with a fresh session, and rolls back by itself"
before=$(ls "$FLEET_DIR/state/publish/web2/reports/" | grep -c rolled-back || true)
for _ in $(seq 300); do
  n=$(ls "$FLEET_DIR/state/publish/web2/reports/" | grep -c rolled-back || true)
  [ "$n" -gt "$before" ] && break
  sleep 0.2
done
report=$(ls -d "$FLEET_DIR"/state/publish/web2/reports/*rolled-back.json | tail -n1)
sed -n 's/^  "reason": "\(.*\)",$/  reason: \1/p' "$report"
echo "  web2 runs $(basename "$(fleet_running web2)") again; its activations:"
sed 's|^/nix/store/[a-z0-9]*-|    |' "$FLEET_DIR/hosts/web2/run/activations"
show_status

fleet_log "Done in $(( $(date +%s) - started )) s; cleaning up namespaces, processes and files"
