#!/usr/bin/env bash
# Benchmark of Bento's binary cache against nginx serving a static `nix copy --to file://`
# cache of the same closures (the floor for narinfo lookups), and against
# BENCH_REFERENCE_URL (e.g. harmonia serving the same store) when it is set.
# Prints figures and ratios; asserts nothing. Everything listens on 127.0.0.1 only.
#
#   BENCH_BIG_MB      size of the big closure (default 500)
#   BENCH_SECONDS     duration of each wrk run (default 10)
#   BENCH_REPS        repetitions of each measurement, alternating servers; the median is
#                     reported (default 3: this machine's neighbours make single runs noisy)
#   BENCH_REFERENCE_URL  another cache serving the same store paths (optional)
#   BENCH_BENTO       another `bento` binary to measure (e.g. an older commit's release
#                     build); releases are still written by this tree's publish_release
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/nix-env.sh
export NIX_CONFIG="$NIX_CONFIG"$'\nnarinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0'

BIG_MB=${BENCH_BIG_MB:-500}
SECS=${BENCH_SECONDS:-10}
REPS=${BENCH_REPS:-3}
for tool in wrk nginx curl nix; do
  command -v "$tool" >/dev/null || { echo "bench-cache: $tool is missing; run scripts/setup.sh" >&2; exit 1; }
done
cargo build --release --quiet --bin bento --example publish_release
source scripts/lib/target.sh
bento=${BENCH_BENTO:-$BENTO_RELEASE_DIR/bento}
publish=$BENTO_RELEASE_DIR/examples/publish_release

source scripts/lib/bench.sh
bench_scratch bento-bench

# ---------------------------------------------------------------- closures
say "building closures: 200 small paths, and ${BIG_MB} MB in 5 paths (half random, half text)"
salt=$(date +%s%N)
mk='let mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ]; }; in'
small=$(nix-build --no-out-link -E "$mk let leaf = i: mk \"bench-leaf-$salt-\${toString i}\" \"seq 1 \${toString (100 + i * 20)} > \$out\"; in mk \"bench-small-$salt\" \"mkdir \$out; echo \${toString (builtins.genList leaf 199)} > \$out/refs\"" 2>/dev/null)
part=$((BIG_MB * 1024 * 1024 / 5))
big=$(nix-build --no-out-link -E "$mk let blob = i: mk \"bench-blob-$salt-\${toString i}\" \"(head -c $((part / 2)) /dev/urandom; seq 1 100000000 | head -c $((part / 2))) > \$out\"; in mk \"bench-big-$salt\" \"mkdir \$out; echo \${toString (builtins.genList blob 5)} > \$out/refs\"" 2>/dev/null)
mapfile -t small_paths < <(nix-store -qR "$small")
mapfile -t big_paths < <(nix-store -qR "$big")
echo "small closure: ${#small_paths[@]} paths; big closure: ${#big_paths[@]} paths, $(nix path-info -S "$big" | awk '{printf "%.0f MB", $2/1e6}')"

# ---------------------------------------------------------------- key, releases
"$bento" keygen --name bench-fleet-1 --out "$work/keys" >/dev/null 2>&1
key=$work/keys/bench-fleet-1.secret
pub=$(cat "$work/keys/bench-fleet-1.public")
state=$work/state
"$publish" "$state" "$key" bench-small 1 "$small"
"$publish" "$state" "$key" bench-big 1 "$big"

# ---------------------------------------------------------------- static caches + nginx
say "static caches (nix copy --to file://, signed with the same key) and nginx"
nix copy --to "file://$work/static-plain?compression=none&secret-key=$key" "$small" "$big" 2>/dev/null
nix copy --to "file://$work/static-zstd?compression=zstd&secret-key=$key" "$small" "$big" 2>/dev/null
nginx_plain_port=$(free_port); nginx_zstd_port=$(free_port); bento_port=$(free_port)
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<EOF
user root;
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  open_file_cache max=10000 inactive=60s;
  types { text/x-nix-narinfo narinfo; }
  default_type application/octet-stream;
  client_body_temp_path $work/nginx/tmp; proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp; uwsgi_temp_path $work/nginx/tmp; scgi_temp_path $work/nginx/tmp;
  server { listen 127.0.0.1:$nginx_plain_port; root $work/static-plain; }
  server { listen 127.0.0.1:$nginx_zstd_port; root $work/static-zstd; }
}
EOF
mkdir -p "$work/nginx/tmp"
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -g 'daemon off;' &
nginx_pid=$!
pids+=("$nginx_pid")

# ---------------------------------------------------------------- bento serve
say "bento serve (release build)"
for h in bench-small bench-big; do ssh-keygen -q -t ed25519 -N '' -f "$work/$h.ssh"; done
echo "{ outputs = _: { }; }" > "$work/flake.nix"
cat > "$work/bento.toml" <<TOML
[fleet]
state_dir = "$state"
signing_key = "$key"

[hosts.bench-small]
ssh_key = "$(cat "$work/bench-small.ssh.pub")"

[hosts.bench-big]
ssh_key = "$(cat "$work/bench-big.ssh.pub")"
TOML
RUST_LOG=warn "$bento" serve --config "$work/bento.toml" --cache-listen "127.0.0.1:$bento_port" --sftp-listen 127.0.0.1:0 --no-dashboard >/dev/null &
bento_pid=$!
pids+=("$bento_pid")
t0=$(date +%s.%N)
until curl -sf "http://127.0.0.1:$bento_port/$(basename "$big" | cut -c1-32).narinfo" | grep -q 'Compression: zstd'; do
  kill -0 "$bento_pid" 2>/dev/null || { echo "bench-cache: bento serve exited (see its error above)" >&2; exit 1; }
  sleep 0.2
done
echo "bento ready (closures signed, ${BIG_MB} MB compressed) in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
until curl -sf "http://127.0.0.1:$nginx_plain_port/nix-cache-info" >/dev/null; do sleep 0.1; done
BENTO=http://127.0.0.1:$bento_port
NGINX=http://127.0.0.1:$nginx_plain_port
NGINX_ZSTD=http://127.0.0.1:$nginx_zstd_port

# ---------------------------------------------------------------- wrk helpers
all_paths=("${small_paths[@]}" "${big_paths[@]}")
for p in "${all_paths[@]}"; do echo "/$(basename "$p" | cut -c1-32).narinfo"; done > "$work/hits.txt"
for i in $(seq 1 500); do printf '/%032d.narinfo\n' "$i"; done > "$work/misses.txt"
cat > "$work/rotate.lua" <<'EOF'
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
EOF
wrk_rps() { awk '/^Requests\/sec:/ {print $2}'; }
wrk_mbps() { awk '/^Transfer\/sec:/ { v=$2; u=substr(v, length(v)-1); n=v+0;
  if (u=="GB") n*=1024; else if (u=="KB") n/=1024; else if (u ~ /B$/ && u !~ /[KMG]B/) n/=1048576; printf "%.0f", n }'; }
wrk_lat() { awk '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {print p50 " / " p99}'; }
wrk_errors() { awk '/Socket errors|Non-2xx/ {print}' | tr '\n' ' '; }
cpu_ticks() { # utime + stime of a process and its threads
  awk '{print $14 + $15}' "/proc/$1/stat"
}
nginx_ticks() { # the workers of our nginx
  local t=0
  for p in $(pgrep -P "$nginx_pid"); do t=$((t + $(cpu_ticks "$p"))); done
  echo "$t"
}
hz=$(getconf CLK_TCK)

run_wrk() { # url paths-file conns -> full wrk output
  WRK_PATHS=$2 wrk -t1 -c"$3" -d"${SECS}s" --latency -s "$work/rotate.lua" "$1" 2>&1
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END { if (NR == 0) print "n/a"; else print a[int((NR + 1) / 2)] }'; }
declare -A R A
add() { A[$1]="${A[$1]:-} $2"; } # collect one sample
measure_narinfo() { # name url ticks-fn
  local name=$1 url=$2 ticks_fn=$3 out before after reqs
  before=$($ticks_fn)
  out=$(run_wrk "$url" "$work/hits.txt" 16)
  after=$($ticks_fn)
  add "$name.hits" "$(wrk_rps <<<"$out")"
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  add "$name.cpu_us" "$(awk -v a="$before" -v b="$after" -v n="$reqs" -v hz="$hz" 'BEGIN { if (n > 0) printf "%.1f", (b - a) * 1e6 / hz / n }')"
  R[$name.hits_err]="${R[$name.hits_err]:-}$(wrk_errors <<<"$out")"
  out=$(run_wrk "$url" "$work/misses.txt" 16)
  add "$name.miss" "$(wrk_rps <<<"$out")"
  out=$(run_wrk "$url" "$work/hits.txt" 1)
  R[$name.lat]=$(wrk_lat <<<"$out")
  add "$name.rps1" "$(wrk_rps <<<"$out")"
}
finish() { for k in "${!A[@]}"; do R[$k]=$(median <<<"${A[$k]}"); done; }

say "narinfo: hits/s and 404s/s (wrk -t1 -c16 -d${SECS}s, rotating over ${#all_paths[@]} narinfos / 500 misses), latency at -c1"
for _ in $(seq "$REPS"); do
  measure_narinfo bento "$BENTO" "cpu_ticks $bento_pid"
  measure_narinfo nginx "$NGINX" nginx_ticks
  if [ -n "${BENCH_REFERENCE_URL:-}" ]; then measure_narinfo ref "$BENCH_REFERENCE_URL" "echo 0"; fi
done

# ---------------------------------------------------------------- NAR throughput
blob=$(printf '%s\n' "${big_paths[@]}" | grep bench-blob | head -1)
blob_hash=$(basename "$blob" | cut -c1-32)
field() { curl -sf "$1/$blob_hash.narinfo" | awk -v f="$2: " 'index($0, f) == 1 { print substr($0, length(f) + 1) }'; }
nar_hash=$(field "$BENTO" NarHash | sed 's/^sha256://')
bento_plain="/nar/$nar_hash.nar"
bento_zst="/$(field "$BENTO" URL)"
nginx_plain="/$(field "$NGINX" URL)"
nginx_zst="/$(field "$NGINX_ZSTD" URL)"
say "NAR throughput of one $((part / 1048576)) MB path (wrk -t1 -c4 -d${SECS}s)"
echo "$bento_plain" > "$work/bp.txt"; echo "$bento_zst" > "$work/bz.txt"
echo "$nginx_plain" > "$work/np.txt"; echo "$nginx_zst" > "$work/nz.txt"
nar_run() { WRK_PATHS=$2 wrk -t1 -c4 -d"${SECS}s" -s "$work/rotate.lua" "$1" 2>&1; }
[ -n "${BENCH_REFERENCE_URL:-}" ] && echo "/$(field "$BENCH_REFERENCE_URL" URL)" > "$work/rp.txt"
for _ in $(seq "$REPS"); do
  add bento.plain "$(nar_run "$BENTO" "$work/bp.txt" | wrk_mbps)"
  add nginx.plain "$(nar_run "$NGINX" "$work/np.txt" | wrk_mbps)"
  add bento.zst "$(nar_run "$BENTO" "$work/bz.txt" | wrk_mbps)"
  add nginx.zst "$(nar_run "$NGINX_ZSTD" "$work/nz.txt" | wrk_mbps)"
  if [ -n "${BENCH_REFERENCE_URL:-}" ]; then add ref.nar "$(nar_run "$BENCH_REFERENCE_URL" "$work/rp.txt" | wrk_mbps)"; fi
done

# ---------------------------------------------------------------- nix copy
say "nix copy wall time into a fresh store (require-sigs, only the fleet key trusted)"
copy_time() { # from path -> seconds
  local dest
  dest=$(mktemp -d "$work/dest.XXXXXX")
  local t0 t1
  t0=$(date +%s.%N)
  XDG_CACHE_HOME=$dest/xdg nix copy --from "$1" --to "local?root=$dest/root" \
    --option require-sigs true --option trusted-public-keys "$pub" --option substituters '' "$2" >/dev/null 2>&1 \
    || { echo "FAILED"; rm -rf "$dest"; return; }
  t1=$(date +%s.%N)
  rm -rf "$dest"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}
for c in small big; do
  p=$small; [ $c = big ] && p=$big
  for _ in $(seq "$REPS"); do
    add "copy.$c.bento" "$(copy_time "$BENTO" "$p")"
    add "copy.$c.file" "$(copy_time "file://$work/static-zstd" "$p")"
    add "copy.$c.nginx" "$(copy_time "$NGINX_ZSTD" "$p")"
    if [ -n "${BENCH_REFERENCE_URL:-}" ]; then add "copy.$c.ref" "$(copy_time "$BENCH_REFERENCE_URL" "$p")"; fi
  done
done
finish

# ---------------------------------------------------------------- report
say "results: median of $REPS alternating runs (2 cores shared by wrk, the servers and nix)"
printf '%-34s %14s %14s %10s %s\n' "figure" "bento" "nginx" "ratio" "target"
row() { printf '%-34s %14s %14s %10s %s\n' "$1" "$2" "$3" "$(ratio "$4" "$5")" "$6"; }
row "narinfo hits/s (-c16)"        "${R[bento.hits]}" "${R[nginx.hits]}" "${R[bento.hits]}" "${R[nginx.hits]}" ">= 0.90"
row "narinfo 404s/s (-c16)"        "${R[bento.miss]}" "${R[nginx.miss]}" "${R[bento.miss]}" "${R[nginx.miss]}" ""
row "narinfo req/s (-c1)"          "${R[bento.rps1]}" "${R[nginx.rps1]}" "${R[bento.rps1]}" "${R[nginx.rps1]}" ""
printf '%-34s %14s %14s\n' "latency p50 / p99 (-c1)" "${R[bento.lat]}" "${R[nginx.lat]}"
row "server CPU us per narinfo"    "${R[bento.cpu_us]}" "${R[nginx.cpu_us]}" "${R[bento.cpu_us]}" "${R[nginx.cpu_us]}" "(lower is better)"
row "NAR MB/s plain"               "${R[bento.plain]}" "${R[nginx.plain]}" "${R[bento.plain]}" "${R[nginx.plain]}" ">= 0.90"
row "NAR MB/s zstd"                "${R[bento.zst]}" "${R[nginx.zst]}" "${R[bento.zst]}" "${R[nginx.zst]}" ">= 0.90"
printf '%-34s %14s %14s %10s %s\n' "nix copy, s (vs file:// zstd)" "bento" "file://" "ratio" "target"
for c in small big; do
  label="nix copy $c"; [ $c = small ] && label="nix copy 200 small paths" || label="nix copy ${BIG_MB} MB"
  row "$label" "${R[copy.$c.bento]}" "${R[copy.$c.file]}" "${R[copy.$c.bento]}" "${R[copy.$c.file]}" "<= 1.05"
  printf '%-34s %14s %14s\n' "  (same from nginx zstd)" "" "${R[copy.$c.nginx]}"
done
[ -n "${R[bento.hits_err]}${R[nginx.hits_err]}" ] && echo "wrk errors: bento: ${R[bento.hits_err]} nginx: ${R[nginx.hits_err]}"
if [ -n "${BENCH_REFERENCE_URL:-}" ]; then
  say "reference $BENCH_REFERENCE_URL"
  printf '%-34s %14s %14s %10s\n' "figure" "bento" "reference" "ratio"
  row "narinfo hits/s (-c16)" "${R[bento.hits]}" "${R[ref.hits]}" "${R[bento.hits]}" "${R[ref.hits]}" ""
  row "narinfo 404s/s (-c16)" "${R[bento.miss]}" "${R[ref.miss]}" "${R[bento.miss]}" "${R[ref.miss]}" ""
  printf '%-34s %14s %14s\n' "latency p50 / p99 (-c1)" "${R[bento.lat]}" "${R[ref.lat]}"
  row "NAR MB/s (its own format)" "${R[bento.zst]}" "${R[ref.nar]}" "${R[bento.zst]}" "${R[ref.nar]}" ""
  for c in small big; do
    row "nix copy $c, s" "${R[copy.$c.bento]}" "${R[copy.$c.ref]}" "${R[copy.$c.bento]}" "${R[copy.$c.ref]}" ""
  done
fi
