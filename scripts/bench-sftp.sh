#!/usr/bin/env bash
# Benchmark of the SFTP server: polls/s and server CPU per poll on one core, memory per
# idle session, time from a new release to a waiting agent being told. Prints figures,
# asserts nothing. Extra arguments go to the benchmark (see `--help`), e.g. --clients 50.
#
# The server runs in its own process on a single-threaded runtime pinned to CPU 0; the
# clients run in this process pinned to the other CPUs, so the server's figures are its own.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example bench_sftp
source scripts/lib/target.sh
bin=$BENTO_RELEASE_DIR/examples/bench_sftp
cpus=$(nproc)
if command -v taskset >/dev/null && [ "$cpus" -ge 2 ]; then
  exec taskset -c "1-$((cpus - 1))" "$bin" --server-cpu 0 "$@"
else
  echo "bench-sftp: fewer than 2 CPUs or no taskset; server and clients share CPUs" >&2
  exec "$bin" "$@"
fi
