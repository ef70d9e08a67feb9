#!/usr/bin/env bash
# Benchmark of `bento build` against the two ways of building a fleet with plain Nix.
# Prints figures and ratios; asserts nothing.
#
# A flake of HOSTS fake NixOS hosts, each with a deliberately heavy evaluation, different
# per host so nothing is shared between hosts, and a trivial build. The evaluation:
#   EVAL=nested (default): foldl' over 3000 lists of EVAL_INNER numbers, each list garbage
#     once summed: CPU-bound with a bounded heap, like a module-system evaluation;
#   EVAL=flat: one foldl' over a list of EVAL_N numbers: a heap that only grows (~700 MB
#     per evaluation; one process evaluating all hosts keeps growing).
# Three ways to build all of them:
#   (a) a sequential loop, one `nix build` per host (what the original Bento does);
#   (b) one `nix build` with all installables (one process: evaluation is single-threaded);
#   (c) `bento build --jobs JOBS` (one evaluation process per host, JOBS at a time).
# Each variant gets its own salt, so nothing is cached from the previous one.
# Wall time and peak memory come from /usr/bin/time -v ("max RSS": the largest single
# process) and from sampling the whole process tree every 0.1 s ("peak tree": summed PSS,
# what the machine had to carry at once, e.g. two evaluations side by side). CPU time
# (user + sys) is printed too: it does not depend on how busy the machine is.
#
# Settings (environment): HOSTS=16 JOBS=2 EVAL=nested EVAL_INNER=4000 EVAL_N=6000000
# ROUNDS=1 (the best round of each variant is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/nix-env.sh

HOSTS=${HOSTS:-16}
JOBS=${JOBS:-2}
EVAL=${EVAL:-nested}
EVAL_INNER=${EVAL_INNER:-4000}
EVAL_N=${EVAL_N:-6000000}
ROUNDS=${ROUNDS:-1}

[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time missing; run scripts/setup.sh" >&2; exit 1; }
cargo build --release -q
source scripts/lib/target.sh
bento=$BENTO_RELEASE_DIR/bento

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
repo=$work/repo
mkdir -p "$repo"
system="$(uname -m)-linux"

hosts=()
for i in $(seq -w 1 "$HOSTS"); do hosts+=("h$i"); done

{
  echo '{'
  echo '  outputs = { self }: let'
  echo '    salt = import ./salt.nix;'
  if [ "$EVAL" = flat ]; then
    echo "    heavy = k: builtins.foldl' (a: b: a + b) 0 (builtins.genList (x: x * k) $EVAL_N);"
  else
    echo "    heavy = k: builtins.foldl' (acc: i: builtins.foldl' (a: b: a + b * k) acc (builtins.genList (x: x + i) $EVAL_INNER)) 0 (builtins.genList (x: x) 3000);"
  fi
  echo '    mk = host: k: derivation {'
  echo "      name = \"nixos-system-\${host}\"; system = \"$system\";"
  echo '      builder = "/bin/sh"; PATH = "/usr/bin:/bin";'
  echo '      inherit salt; sum = toString (heavy k);'
  echo '      args = [ "-c" "mkdir -p $out/bin; echo $sum > $out/nixos-version; echo $salt > $out/salt" ];'
  echo '    };'
  echo '  in {'
  k=1
  for h in "${hosts[@]}"; do
    k=$((k + 1))
    echo "    nixosConfigurations.$h.config.system.build.toplevel = mk \"$h\" $k;"
  done
  echo '  };'
  echo '}'
} > "$repo/flake.nix"

{
  echo '[fleet]'
  echo 'state_dir = "../state"'
  for idx in "${!hosts[@]}"; do
    # A distinct, well-formed ed25519 public key per host (32 key bytes = the host index).
    blob=$( (printf '\0\0\0\x0bssh-ed25519\0\0\0\x20'; head -c 32 /dev/zero | tr '\0' "\\$(printf '%03o' $((idx + 1)))") | base64 -w0)
    printf '\n[hosts.%s]\nssh_key = "ssh-ed25519 %s"\n' "${hosts[$idx]}" "$blob"
  done
} > "$repo/bento.toml"

echo '"init"' > "$repo/salt.nix"
git -C "$repo" init -q
git -C "$repo" add -A

# The summed PSS (KiB) of process $1 and all its descendants. PSS, not RSS: a forked
# builder shares its parent's pages, and RSS would count them twice.
tree_pss() {
  local total=0 pid pss
  for pid in $(ps -e -o pid=,ppid= | awk -v root="$1" '
      { parent[$1] = $2 }
      END { for (p in parent) { q = p; while (q != "" && q != 0 && q != root) q = parent[q]; if (q == root) print p } }'); do
    pss=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || true)
    total=$((total + ${pss:-0}))
  done
  echo "$total"
}

# Runs "$@" under /usr/bin/time -v while sampling the memory of its whole process tree.
# Sets: wall (s), cpu (user+sys s), maxrss (KiB, largest process), treemem (KiB, peak
# summed PSS of the tree).
measure() {
  local tfile=$work/time.txt sfile=$work/samples.txt
  : > "$sfile"
  /usr/bin/time -v -o "$tfile" "$@" > "$work/out.txt" 2> "$work/err.txt" &
  local pid=$! status=0
  while kill -0 "$pid" 2>/dev/null; do
    tree_pss "$pid" >> "$sfile"
    sleep 0.1
  done
  wait "$pid" || status=$?
  if [ "$status" != 0 ]; then
    echo "bench: command failed ($status): $*" >&2
    tail -20 "$work/err.txt" >&2
    exit 1
  fi
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s }' "$tfile")
  cpu=$(awk -F': ' '/User time|System time/ { s += $2 } END { print s }' "$tfile")
  maxrss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tfile")
  treemem=$(sort -n "$sfile" | tail -1)
}

salt() {
  echo "\"$1-$RANDOM$RANDOM\"" > "$repo/salt.nix"
  rm -rf "$work/state"
}

attr() { echo "$repo#nixosConfigurations.$1.config.system.build.toplevel"; }

cat > "$work/sequential.sh" <<EOF
set -e
for h in ${hosts[*]}; do nix build --no-link "$repo#nixosConfigurations.\$h.config.system.build.toplevel"; done
EOF

if [ "$EVAL" = flat ]; then what="foldl' over $EVAL_N numbers"; else what="foldl' over 3000 lists of $EVAL_INNER numbers"; fi
echo "bench: $HOSTS hosts, each evaluating a $what; $(nproc) cores; bento --jobs $JOBS"
echo "bench: single host evaluation:"
salt single
/usr/bin/time -f "  nix eval of one host: %e s, max RSS %M KiB" \
  nix eval --raw "$(attr "${hosts[0]}").drvPath" > /dev/null

run_a() {
  salt a
  measure bash "$work/sequential.sh"
}
run_b() {
  salt b
  measure nix build --no-link "${installables[@]}"
}
run_c() {
  salt c
  measure "$bento" build --jobs "$JOBS" -c "$repo/bento.toml"
  local built
  built=$(grep -c ' built ' "$work/out.txt" || true)
  [ "$built" = "$HOSTS" ] || { echo "bench: bento built $built of $HOSTS hosts" >&2; cat "$work/out.txt" >&2; exit 1; }
}
installables=()
for h in "${hosts[@]}"; do installables+=("$(attr "$h")"); done

# Keeps, per variant, the figures of its fastest round.
declare -A best_wall best_cpu best_rss best_mem
keep() {
  if [ -z "${best_wall[$1]:-}" ] || awk -v n="$wall" -v o="${best_wall[$1]}" 'BEGIN { exit !(n < o) }'; then
    best_wall[$1]=$wall best_cpu[$1]=$cpu best_rss[$1]=$maxrss best_mem[$1]=$treemem
  fi
  printf '  round %d %s: %.2f s wall, %.2f s cpu\n' "$round" "$1" "$wall" "$cpu"
}
# Rounds alternate the order (a b c, c b a, ...) so that a change in the machine's load
# does not favour one variant.
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="a b c"; else order="c b a"; fi
  for v in $order; do "run_$v"; keep "$v"; done
done

echo
echo "best of $ROUNDS round(s); load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-40s %9s %9s %15s %16s\n' "variant" "wall (s)" "cpu (s)" "max RSS (MiB)" "peak tree (MiB)"
row() { printf '%-40s %9.2f %9.2f %15d %16d\n' "$1" "${best_wall[$2]}" "${best_cpu[$2]}" $((best_rss[$2] / 1024)) $((best_mem[$2] / 1024)); }
row "(a) sequential nix build per host" a
row "(b) one nix build, $HOSTS installables" b
row "(c) bento build --jobs $JOBS" c
echo
awk -v a="${best_wall[a]}" -v b="${best_wall[b]}" -v c="${best_wall[c]}" 'BEGIN {
  printf "a/c = %.2f   (target >= 1.8 on 2 cores)\n", a / c
  printf "b/c = %.2f   (target >= 1.0: bento no slower than one nix build)\n", b / c
}'
