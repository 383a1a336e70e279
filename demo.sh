#!/usr/bin/env bash
# postern on one machine, no external services: a platform with its state in a temporary
# directory, one relay, one gateway, a small HTTP target behind the gateway, and `connect`
# giving you a local port that reaches the target through platform → relay → gateway.
#   bash demo.sh           run it and keep it up until Ctrl-C
#   bash demo.sh --check   run it, fetch once through the full path, and exit (used by CI)
set -euo pipefail
cd "$(dirname "$0")"
check=${1:-}

cargo build --quiet --bins --example demo_target
bin=target/debug
dir=$(mktemp -d /tmp/postern-demo.XXXXXX)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
export RUST_LOG=${RUST_LOG:-warn}

# Waits until $1 has a line matching $2 and prints that line.
wait_for() {
  for _ in $(seq 1 300); do
    if grep -q "$2" "$1" 2>/dev/null; then grep -m1 "$2" "$1"; return; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:" >&2; cat "$1" "${1%.out}.log" >&2 2>/dev/null || true; exit 1
}

platform="$bin/postern-platform --state $dir/platform --key-file $dir/sealing.key"
$platform init >/dev/null 2>&1
$platform org create demo >/dev/null
$platform identity create --role relay --name relay1 >"$dir/relay.token" 2>/dev/null
$platform identity create --role gateway --org demo --name edge1 >"$dir/gateway.token" 2>/dev/null
$platform identity create --role operator --org demo --name you >"$dir/operator.token" 2>/dev/null

$platform serve --listen 127.0.0.1:0 >"$dir/platform.out" 2>"$dir/platform.log" &
url=$(wait_for "$dir/platform.out" "https://" | grep -o 'https://[0-9.:]*')

$bin/postern-relay run --state "$dir/relay" --platform "$url" --token-file "$dir/relay.token" \
  --ssh-listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --hostname 127.0.0.1 >"$dir/relay.out" 2>"$dir/relay.log" &
wait_for "$dir/relay.out" "ready" >/dev/null

$bin/examples/demo_target >"$dir/target.out" &
target=$(wait_for "$dir/target.out" "listening" | awk '{print $NF}')

$bin/postern-gateway run --state "$dir/gateway" --platform "$url" --token-file "$dir/gateway.token" \
  --health-listen 127.0.0.1:0 >"$dir/gateway.out" 2>"$dir/gateway.log" &
wait_for "$dir/gateway.out" "ready" >/dev/null

$bin/postern-platform connect --platform "$url" --token-file "$dir/operator.token" \
  --gateway edge1 --target "$target" --listen 127.0.0.1:0 >"$dir/connect.out" 2>"$dir/connect.log" &
port=$(wait_for "$dir/connect.out" "listening on" | sed -E 's/.*listening on [0-9.]+:([0-9]+).*/\1/')

fetch() {
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf 'GET / HTTP/1.0\r\nHost: demo\r\n\r\n' >&3
  cat <&3
  exec 3<&-
}
reply=$(fetch)
case "$reply" in
  *"hello from behind the gateway"*) ;;
  *) echo "the demo target did not answer through the path:" >&2; echo "$reply" >&2
     cat "$dir"/*.log >&2; exit 1 ;;
esac

cat <<TEXT
postern demo is up (state in $dir):
  platform API   $url
  relay          relay1 (instance relay)
  gateway        edge1 of org demo, tunnelled to relay1
  target         $target (reachable only from the gateway's side)
  connect        127.0.0.1:$port  →  platform → relay1 → edge1 → $target

Reach the target through the full path:
  curl http://127.0.0.1:$port/

It answered:
$(printf '%s\n' "$reply" | tail -n 1)
TEXT
if [ "$check" = "--check" ]; then exit 0; fi
echo "Ctrl-C stops everything."
wait
