#!/usr/bin/env bash
# Checks the units with `systemd-analyze verify` (any warning fails) and prints each unit's
# exposure score from `systemd-analyze security --offline`.
#   bash systemd/verify.sh [directory holding the built postern-* binaries]
# verify insists that ExecStart= names an existing executable, so the units are checked from a
# temporary copy whose /usr/bin/ paths point at the directory given (default target/debug).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bins="$(cd "${1:-$here/../target/debug}" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for unit in "$here"/*.service; do
  name="$(basename "$unit")"
  sed "s#^ExecStart=/usr/bin/#ExecStart=$bins/#" "$unit" >"$tmp/$name"
  [ -x "$bins/${name%.service}" ] || { echo "error: $bins/${name%.service} not built" >&2; exit 1; }
done
out="$(cd "$tmp" && systemd-analyze verify --man=no ./*.service 2>&1)" || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
  echo "$out" >&2
  echo "error: systemd-analyze verify warned about the units above" >&2
  exit 1
fi
# The check must be able to fail: a unit with an unknown key has to be reported.
cp "$tmp/postern-gateway.service" "$tmp/broken.service"
echo "NoSuchSetting=yes" >>"$tmp/broken.service"
if [ -z "$(cd "$tmp" && systemd-analyze verify --man=no ./broken.service 2>&1)" ]; then
  echo "error: systemd-analyze verify did not report an unknown key; the check above proves nothing" >&2
  exit 1
fi
rm "$tmp/broken.service"
for unit in "$tmp"/*.service; do
  score="$(systemd-analyze security --offline=true "$unit" 2>/dev/null | tail -1)" || score="(security --offline unavailable)"
  echo "$(basename "$unit"): verified; $score"
done
