#!/usr/bin/env bash
# Static release binaries of postern-platform, postern-relay and postern-gateway for each target,
# copied to dist/<target>/ with a size report (dist/SIZES.md).
#   bash cross/build.sh                       # all three targets
#   bash cross/build.sh aarch64-unknown-linux-musl
# Run cross/setup.sh once first (it installs the cross compilers and Rust targets).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source "$root/cross/env.sh"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
bins=(postern-platform postern-relay postern-gateway)

mkdir -p dist
report=dist/SIZES.md
{
  echo "| target | postern-platform | postern-relay | postern-gateway |"
  echo "|---|---|---|---|"
} >"$report"
for target in "${targets[@]}"; do
  echo "==> $target"
  # RUSTFLAGS replaces cross/config.toml's per-target rustflags, so it repeats +crt-static.
  export RUSTFLAGS="-C target-feature=+crt-static -C force-unwind-tables=no"
  cargo --config cross/config.toml build --locked --release --target "$target" \
    --bin postern-platform --bin postern-relay
  cargo --config cross/config.toml build --locked --profile firmware --target "$target" \
    --bin postern-gateway
  mkdir -p "dist/$target"
  row="| $target |"
  for bin in "${bins[@]}"; do
    profile=release
    [ "$bin" != postern-gateway ] || profile=firmware
    cp "target/$target/$profile/$bin" "dist/$target/$bin"
    bytes=$(stat -c %s "dist/$target/$bin")
    row="$row $(awk -v b="$bytes" 'BEGIN { printf "%.2f MiB (%d)", b / 1048576, b }') |"
    if file "dist/$target/$bin" | grep -q 'dynamically linked'; then
      echo "error: dist/$target/$bin is dynamically linked; expected a static binary" >&2
      exit 1
    fi
  done
  echo "$row" >>"$report"
done
cat "$report"
