#!/usr/bin/env bash
# WAN benchmark: how long a host far from the server takes to get a closure, by method, at
# RTT 0 / 20 / 100 ms. The host is a network + mount namespace behind the emulated link
# (examples/wan_link.rs = tests/link/mod.rs: a delaying, pacing TCP relay; this kernel has
# no netem), with an empty /nix and Nix cache for every run, and /run a fresh tmpfs as on
# NixOS (the agent stages small deliveries there). The server side is real:
# closures built by Nix from a flake of fake NixOS systems, published by `bento deploy`,
# served by `bento serve`.
#
# Closures: 300 small paths (~2 MB) and one path of 200 MiB (incompressible).
# Methods:
#   (1) the agent before the transfer: `nix copy --from` with the options it then had
#       (src/agent/system.rs copy_command, incl. narinfo-cache-positive-ttl 0)
#   (2) plain `nix copy --from http://...` (same trust options, no cache TTLs)
#   (3) the agent's substitution fallback (for caches that are not `bento serve`):
#       `bento agent copy` with `copy_method = "substitute"`, i.e. `nix-store --realise TOP`
#       with only that substituter, max-jobs 16, http-connections 25, require-sigs with the
#       fleet key (src/agent/substitute.rs)
#   (4) the floor: one GET of the closure (its narinfos and compressed NARs concatenated,
#       served statically by nginx) with curl
#   (5) bento whole-closure transfer: `bento agent copy` (the agent's copy step alone: one
#       delivery over 4 connections into a staging file:// cache, in /run for a small one,
#       nix copy from it batch by batch, a large entry piped into nix copy as it arrives)
#   (6) a whole `bento agent --once` applying the release: SSH (through the link too),
#       release, transfer, switch-to-configuration, fresh-session confirmation, report
#   (7) the store's floor: no network at all, `nix copy --from file://` of the same closure
#       (the cache's narinfos and NARs, put on the host's disk beforehand) with the agent's
#       trust options: what Nix's import alone costs on this disk, in the same run
# Per cell: median of BENCH_REPS runs (default 3; BENCH_QUICK=1 makes it 1), the HTTP
# requests of the median run (from `bento serve`'s /metrics counters, or nginx's access
# log for (4)) and the TCP connections it opened (counted by the link, which sees them all).
# Asserts nothing. Needs root.
#
#   BENCH_RTTS        RTTs in ms (default "0 20 100")
#   BENCH_RATE_MBIT   bandwidth cap of the link each way (default 0: none)
#   BENCH_METHODS     which methods (default "agent plain subst floor bento once import")
#   BENCH_NO_BUILD=1  use the existing release build
#   BENCH_SHOW_LOG=1  print what each client command printed
#   BENCH_SMALL_PATHS, BENCH_BIG_MIB  closure sizes (default 300, 200)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/nix-env.sh

[ "$(id -u)" = 0 ] || { echo "bench-wan: needs root (network and mount namespaces)" >&2; exit 1; }
for tool in ip unshare nix nix-store curl nginx git ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "bench-wan: $tool is missing; run scripts/setup.sh" >&2; exit 1; }
done

read -r -a RTTS <<< "${BENCH_RTTS:-0 20 100}"
read -r -a METHODS <<< "${BENCH_METHODS:-agent plain subst floor bento once import}"
REPS=${BENCH_REPS:-3}
[ -n "${BENCH_QUICK:-}" ] && REPS=1
RATE=${BENCH_RATE_MBIT:-0}
SMALL_PATHS=${BENCH_SMALL_PATHS:-300}
BIG_MIB=${BENCH_BIG_MIB:-200}

source scripts/lib/target.sh
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --quiet --bin bento --example wan_link
BENTO=$BENTO_RELEASE_DIR/bento
LINK=$BENTO_RELEASE_DIR/examples/wan_link
for bin in "$BENTO" "$LINK"; do
  [ -x "$bin" ] || { echo "bench-wan: $bin is missing (cargo build --release --bin bento --example wan_link)" >&2; exit 1; }
done

export RUST_LOG=${RUST_LOG:-warn}
FLEET_DIR=$(mktemp -d /tmp/bento-wan.XXXXXX)
FLEET_BRIDGE=brwan$$ # fleet.sh's; never made here, deleted harmlessly
source scripts/lib/fleet.sh
work=$FLEET_DIR
NS=bwan$$
VETH=vwan$$
link_pid=""
cleanup() {
  set +e # every step, whatever the one before did
  [ -n "$link_pid" ] && kill "$link_pid" 2>/dev/null
  [ -f "$work/nginx/nginx.pid" ] && kill "$(cat "$work/nginx/nginx.pid")" 2>/dev/null
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  ip link del "$VETH" 2>/dev/null
  fleet_cleanup
}
trap cleanup EXIT
source scripts/lib/bench.sh
load() { cut -d' ' -f1-3 /proc/loadavg; }

# ---------------------------------------------------------------- the fleet: two fake systems
say "building and publishing: wan-small ($SMALL_PATHS paths), wan-big (1 path of $BIG_MIB MiB)"
fleet_init wan-small wan-big
cat > "$work/repo/flake.nix" <<NIX
{
  outputs = { self }: let
    mk = name: script: derivation {
      inherit name; system = "x86_64-linux";
      builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ];
    };
    # ~6.8 kB of text each: ~2 MB for the closure.
    leaf = i: mk "wan-leaf-\${toString i}" "head -c 5000 /dev/urandom | base64 > \$out";
    system = host: body: mk "nixos-system-\${host}-1" ''
      mkdir -p \$out/bin
      printf '#!/bin/sh\necho "\$0 \$1" >> /run/activations\nln -sfn %s /run/current-system\n' "\$out" > \$out/bin/switch-to-configuration
      chmod +x \$out/bin/switch-to-configuration
      echo 1 > \$out/nixos-version
      \${body}
    '';
  in {
    nixosConfigurations.wan-small.config.system.build.toplevel =
      system "wan-small" "echo \${toString (builtins.genList leaf $((SMALL_PATHS - 1)))} > \$out/leaves";
    nixosConfigurations.wan-big.config.system.build.toplevel =
      system "wan-big" "head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom > \$out/blob";
  };
}
NIX
git -C "$work/repo" add -A
conf=$work/repo/bento.toml
"$BENTO" deploy -c "$conf" >"$work/deploy.log" 2>&1 || { cat "$work/deploy.log" >&2; exit 1; }
top_of() { sed -n 's/.*"store_path": "\(.*\)".*/\1/p' "$work/state/publish/$1/release"; }
declare -A TOP=([small]=$(top_of wan-small) [big]=$(top_of wan-big)) PATHS=() NAR_MB=()
for c in small big; do
  PATHS[$c]=$(nix-store -qR "${TOP[$c]}" | wc -l)
  NAR_MB[$c]=$(nix path-info -S "${TOP[$c]}" | awk '{printf "%.1f", $2 / 1e6}')
  echo "$c: ${TOP[$c]}: ${PATHS[$c]} paths, ${NAR_MB[$c]} MB of NAR"
done
PUB=$(cat "$work/state/keys/bento-demo-fleet.public")
# The agent configuration of (5) names an SFTP server it never reaches; its key is a real one.
ssh-keygen -q -t ed25519 -N '' -C wan -f "$work/dummy_host_key"
DUMMY_HOST_KEY=$(cut -d' ' -f1-2 "$work/dummy_host_key.pub")

# ---------------------------------------------------------------- bento serve
P_CACHE=$(free_port)
P_SFTP=$(free_port)
"$BENTO" serve -c "$conf" --cache-listen "127.0.0.1:$P_CACHE" --sftp-listen "127.0.0.1:$P_SFTP" \
  --no-dashboard >"$work/serve.log" 2>&1 &
serve_pid=$!
FLEET_PIDS+=("$serve_pid")
metric() { curl -sf "http://127.0.0.1:$P_CACHE/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
want=$(( SMALL_PATHS + 1 ))
until [ "$(metric bento_cache_paths 2>/dev/null)" = "$want" ] && [ "$(metric bento_cache_paths_compressed)" = "$want" ]; do
  kill -0 "$serve_pid" 2>/dev/null || { echo "bench-wan: bento serve exited:" >&2; cat "$work/serve.log" >&2; exit 1; }
  sleep 0.2
done
PINNED=$(cut -d' ' -f1-2 "$work/state/ssh/host_ed25519_key.pub")
# Requests the cache answered, /metrics itself left out.
cache_requests() {
  { curl -sf "http://127.0.0.1:$P_CACHE/metrics" || true; } |
    awk '/^bento_cache_requests_total/ && !/endpoint="metrics"/ {s += $2} END {print s + 0}'
}

# ---------------------------------------------------------------- the floor: one static file per closure
mkdir -p "$work/static" "$work/nginx/tmp"
for c in small big; do
  # The same files, as a file:// cache on this disk, for the store's floor (7).
  local_cache=$work/local-$c
  mkdir -p "$local_cache/nar"
  printf 'StoreDir: /nix/store\n' > "$local_cache/nix-cache-info"
  for p in $(nix-store -qR "${TOP[$c]}"); do
    hash=$(basename "$p" | cut -c1-32)
    info=$(curl -sf "http://127.0.0.1:$P_CACHE/$hash.narinfo")
    url=$(sed -n 's/^URL: //p' <<< "$info")
    printf '%s\n' "$info" | tee "$local_cache/$hash.narinfo"
    curl -sf "http://127.0.0.1:$P_CACHE/$url" | tee "$local_cache/$url"
  done > "$work/static/$c.closure"
done
declare -A FLOOR_SIZE=([small]=$(stat -c %s "$work/static/small.closure") [big]=$(stat -c %s "$work/static/big.closure"))
P_STATIC=$(free_port)
cat > "$work/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log $work/nginx/access.log;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  default_type application/octet-stream;
  client_body_temp_path $work/nginx/tmp; proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp; uwsgi_temp_path $work/nginx/tmp; scgi_temp_path $work/nginx/tmp;
  server { listen 127.0.0.1:$P_STATIC; root $work/static; }
}
EOF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx"
until curl -sf -o /dev/null "http://127.0.0.1:$P_STATIC/small.closure"; do sleep 0.1; done
static_requests() { wc -l < "$work/nginx/access.log"; }

# ---------------------------------------------------------------- the client's network
used=$(ip -o -4 addr show)
SUB=""
for s in $(seq 200 249); do
  grep -q " 10\.77\.$s\." <<< "$used" || { SUB=10.77.$s; break; }
done
[ -n "$SUB" ] || { echo "bench-wan: no free 10.77.200-249.0/24 subnet" >&2; exit 1; }
fleet_netns "$NS" "$VETH" "$SUB.2"
ip addr add "$SUB.1/24" dev "$VETH"
CACHE_URL=http://$SUB.1:$P_CACHE
STATIC_URL=http://$SUB.1:$P_STATIC

# Runs inside the client: binds an empty /nix, initialises the store, times "$@", then
# checks the result. Prints "STATUS MILLISECONDS GOT" (GOT: paths of CHECK now valid in
# the client's store, or the size of the file CHECK).
cat > "$work/client.sh" <<'SH'
#!/usr/bin/env bash
run=$1 check=$2
shift 2
mount --bind "$run/nix" /nix || exit 1
# The agent's files_dir, staging of small deliveries, activations, current-system: a
# tmpfs, as NixOS's /run is.
mount -t tmpfs -o mode=0755,size=1g bench-run /run || exit 1
export XDG_CACHE_HOME=$run/cache
nix store ping >/dev/null 2>&1 || { echo "1 0 0"; exit 0; }
start=$(date +%s%N)
"$@" >"$run/out.log" 2>&1
rc=$?
end=$(date +%s%N)
case $check in
  /nix/store/*) got=$(nix-store -qR "$check" 2>/dev/null | wc -l) ;;
  *) got=$(stat -c %s "$check" 2>/dev/null || echo 0) ;;
esac
echo "$rc $(( (end - start) / 1000000 )) $got"
SH
chmod +x "$work/client.sh"

# ---------------------------------------------------------------- the methods
# copy_config RUN_DIR LINE: the configuration of `bento agent copy` (its SFTP server is never
# reached; its key is a real one), with LINE added.
copy_config() {
  cat > "$1/agent.toml" <<EOF
host = "wan-client"
server = "$SUB.1:1"
server_host_key = "$DUMMY_HOST_KEY"
ssh_key = "/nonexistent"
cache_url = "$CACHE_URL"
fleet_public_key = "$PUB"
state_dir = "$1/agent-state"
$2
EOF
}

# method_cmd METHOD CLOSURE RUN_DIR: sets CMD to what the client runs (empty: not available).
method_cmd() {
  local top=${TOP[$2]}
  case $1 in
    agent) # the agent before issue 15: src/agent/system.rs copy_command as it was then
      CMD=(nix --extra-experimental-features "nix-command flakes" copy --from "$CACHE_URL"
        --option require-sigs true --option trusted-public-keys "$PUB" --option substituters ""
        --option narinfo-cache-negative-ttl 0 --option narinfo-cache-positive-ttl 0 "$top") ;;
    plain)
      CMD=(nix copy --from "$CACHE_URL" --option require-sigs true
        --option trusted-public-keys "$PUB" "$top") ;;
    subst) # the agent's copy step forced to substitution (`bento agent copy`)
      copy_config "$3" 'copy_method = "substitute"'
      CMD=("$BENTO" agent copy --config "$3/agent.toml" "$top") ;;
    floor)
      CMD=(curl -sS --fail -o "$3/closure" "$STATIC_URL/$2.closure") ;;
    bento) # the agent's copy step alone (`bento agent copy`): the whole-closure transfer
      copy_config "$3" 'copy_method = "transfer"'
      CMD=("$BENTO" agent copy --config "$3/agent.toml" "$top") ;;
    once) # a whole agent run: SSH, release, transfer, activation, confirmation, report
      cat > "$3/agent.toml" <<EOF
host = "wan-$2"
server = "$SUB.1:$P_SFTP"
server_host_key = "$PINNED"
ssh_key = "$work/keys/wan-$2"
cache_url = "$CACHE_URL"
fleet_public_key = "$PUB"
state_dir = "$3/agent-state"
EOF
      CMD=("$BENTO" agent --once --config "$3/agent.toml") ;;
    import) # no network: Nix's import of the closure from a file:// cache on this disk
      CMD=(nix copy --from "file://$work/local-$2" --option require-sigs true
        --option trusted-public-keys "$PUB" "$top") ;;
  esac
}
declare -A LABEL=(
  [agent]="(1) the agent before (issue 15) (\`nix copy\`, \`narinfo-cache-positive-ttl 0\`)"
  [plain]="(2) plain \`nix copy --from\`"
  [subst]="(3) the agent's substitution (\`bento agent copy\`, \`copy_method = \"substitute\"\`: \`nix-store --realise\`, max-jobs 16, http-connections 25)"
  [floor]="(4) one GET of the whole closure (floor reference)"
  [bento]="(5) bento whole-closure transfer (\`bento agent copy\`: a delivery over 4 connections)"
  [once]="(6) a whole \`bento agent --once\` applying the release (SSH, release, transfer, switch, fresh-session confirmation, report)"
  [import]="(7) the store's floor: Nix's import alone, no network (\`nix copy --from file://\` on the host's disk)"
)

# measure METHOD CLOSURE RTT REP: one run; appends "SECONDS REQUESTS CONNECTIONS" to R.
declare -A R=()
measure() {
  local method=$1 c=$2 rtt=$3 rep=$4 run check req0 con0 req1 con1 out
  run=$(mktemp -d "$work/run.XXXXXX")
  mkdir -p "$run/nix" "$run/cache" "$run/run"
  method_cmd "$method" "$c" "$run"
  if [ ${#CMD[@]} -eq 0 ]; then rm -rf "$run"; return; fi
  check=${TOP[$c]}
  [ "$method" = floor ] && check=$run/closure
  if [ "$method" = floor ]; then req0=$(static_requests); else req0=$(cache_requests); fi
  con0=$(grep -c ' opened ' "$LINK_LOG" || true)
  out=$(ip netns exec "$NS" unshare -m --propagation private "$work/client.sh" "$run" "$check" "${CMD[@]}")
  if [ "$method" = floor ]; then req1=$(static_requests); else req1=$(cache_requests); fi
  con1=$(grep -c ' opened ' "$LINK_LOG" || true)
  local rc ms got expect=${PATHS[$c]}
  read -r rc ms got <<< "$out"
  [ "$method" = floor ] && expect=${FLOOR_SIZE[$c]}
  if [ "$rc" != 0 ] || [ "$got" != "$expect" ]; then
    echo "  $method $c rtt $rtt rep $rep FAILED (status $rc, got $got of $expect):" >&2
    tail -n 5 "$run/out.log" >&2
    R[$method|$c|$rtt]+="fail 0 0;"
  else
    local secs
    secs=$(awk -v ms="$ms" 'BEGIN {printf "%.3f", ms / 1000}')
    printf '  %-6s %-5s rtt %3s ms  rep %d  %8.3f s  %5d requests  %3d connections\n' \
      "$method" "$c" "$rtt" "$rep" "$secs" $((req1 - req0)) $((con1 - con0)) >&2
    R[$method|$c|$rtt]+="$secs $((req1 - req0)) $((con1 - con0));"
  fi
  [ -n "${BENCH_SHOW_LOG:-}" ] && sed 's/^/    | /' "$run/out.log" >&2
  rm -rf "$run"
}

# ---------------------------------------------------------------- the runs
echo "load average before: $(load) (2 cores; other work on the machine skews figures)"
for rtt in "${RTTS[@]}"; do
  say "RTT $rtt ms"
  rate_args=()
  [ "$RATE" != 0 ] && rate_args=(--rate-mbit "$RATE")
  LINK_LOG=$work/link-$rtt.log # one per link: a new one cannot be mistaken for the last one
  rm -f "$LINK_LOG"
  "$LINK" --rtt-ms "$rtt" "${rate_args[@]}" --forward "$SUB.1:$P_CACHE=127.0.0.1:$P_CACHE" \
    --forward "$SUB.1:$P_STATIC=127.0.0.1:$P_STATIC" \
    --forward "$SUB.1:$P_SFTP=127.0.0.1:$P_SFTP" >"$LINK_LOG" 2>&1 &
  link_pid=$!
  until grep -q '^ready' "$LINK_LOG" 2>/dev/null; do
    kill -0 "$link_pid" 2>/dev/null || { cat "$LINK_LOG" >&2; exit 1; }
    sleep 0.05
  done
  sed -n 's/^link: /  link: /p' "$LINK_LOG" >&2
  # The RTT the link gives: a new connection and its first request (2 RTT: the handshake is
  # charged to the first bytes), then a request on the kept connection (1 RTT).
  read -r first kept <<< "$(ip netns exec "$NS" curl -sf -o /dev/null -o /dev/null \
    -w '%{time_starttransfer} ' "$CACHE_URL/nix-cache-info" "$CACHE_URL/nix-cache-info")"
  printf '  link check: TCP connect + first request %.1f ms (asked %d), request on the kept connection %.1f ms (asked %d)\n' \
    "$(awk -v t="$first" 'BEGIN {print t * 1000}')" $((2 * rtt)) \
    "$(awk -v t="$kept" 'BEGIN {print t * 1000}')" "$rtt" >&2
  echo "  load average: $(load)" >&2
  for rep in $(seq "$REPS"); do
    for c in small big; do
      for method in "${METHODS[@]}"; do measure "$method" "$c" "$rtt" "$rep"; done
    done
  done
  kill "$link_pid" 2>/dev/null; wait "$link_pid" 2>/dev/null || true
  link_pid=""
done
echo "load average after: $(load)"

# ---------------------------------------------------------------- the table
# cell METHOD CLOSURE: "t0 / t20 / t100 s, N requests, M connections" from the median runs.
cell() {
  local method=$1 c=$2 times=() reqs=() cons=() rtt med
  for rtt in "${RTTS[@]}"; do
    med=$(tr ';' '\n' <<< "${R[$method|$c|$rtt]:-}" | awk 'NF == 3' | sort -g |
      awk '{l[NR] = $0} END {if (NR) print l[int((NR + 1) / 2)]}')
    if [ -z "$med" ]; then times+=("—"); continue; fi
    read -r t q n <<< "$med"
    if [ "$t" = fail ]; then times+=("failed"); continue; fi
    times+=("$(awk -v t="$t" 'BEGIN {if (t < 10) printf "%.2f", t; else if (t < 100) printf "%.1f", t; else printf "%.0f", t}')")
    reqs+=("$q"); cons+=("$n")
  done
  local IFS=/
  local out
  out=$(sed 's|/| / |g' <<< "${times[*]}")
  [ ${#reqs[@]} -eq 0 ] && { echo "not available"; return; }
  local uq uc
  uq=$(printf '%s\n' "${reqs[@]}" | sort -u | paste -sd/ -)
  uc=$(printf '%s\n' "${cons[@]}" | sort -u | paste -sd/ -)
  [ "$(printf '%s\n' "${reqs[@]}" | sort -u | wc -l)" -gt 1 ] && uq=$(printf '%s\n' "${reqs[@]}" | paste -sd/ -)
  [ "$(printf '%s\n' "${cons[@]}" | sort -u | wc -l)" -gt 1 ] && uc=$(printf '%s\n' "${cons[@]}" | paste -sd/ -)
  local cw=connections
  [ "$uc" = 1 ] && cw=connection
  echo "$out s, $uq requests, $uc $cw"
}
small_mb=$(awk -v s="${FLOOR_SIZE[small]}" 'BEGIN {printf "%.1f", s / 1e6}')
echo
echo "Median of $REPS; requests: bento serve's /metrics (nginx's access log for the floor);"
echo "connections: opened through the link. Link: $(sed -n 's/^link: rtt [0-9.]* ms, //p' "$LINK_LOG")."
echo "Floor files: small $small_mb MB, big $(awk -v s="${FLOOR_SIZE[big]}" 'BEGIN {printf "%.1f", s / 1048576}') MiB (narinfos + compressed NARs)."
echo
rtts=$(IFS=/; echo "${RTTS[*]}" | sed 's|/| / |g')
echo "| method | $SMALL_PATHS small paths (${NAR_MB[small]} MB) at RTT $rtts ms | 1 path of $BIG_MIB MiB at $rtts ms |"
echo "|---|---|---|"
for method in "${METHODS[@]}"; do
  echo "| ${LABEL[$method]} | $(cell "$method" small) | $(cell "$method" big) |"
done
