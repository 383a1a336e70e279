#!/usr/bin/env bash
# postern's path benchmark, the full run: release binaries, 1 GiB transfers, 3 interleaved passes,
# 200 setups, 100 and 1000 held connections. Prints the tables and writes target/bench/path.json.
#   bash benches/run.sh
# Needs what .ci/run installs: openssh-client, openssh-server, openssl and stunnel4.
# POSTERN_BENCH_MIB and POSTERN_BENCH_PASSES shrink it for a quick look; POSTERN_BENCH_ONLY
# ("postern 50 ms,stock 50 ms") runs only the scenarios named, besides raw, and writes no JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
# 1000 held connections cost each process on the path two descriptors apiece.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 8192 ] ||
  echo "warning: only $(ulimit -n) file descriptors; the 1000-connection figures may fail" >&2
mkdir -p /run/sshd 2>/dev/null || true
exec cargo bench --locked --bench path
