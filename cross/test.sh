#!/usr/bin/env bash
# The test suite built for ARM and run under qemu-user (no docker): library, binaries and every
# integration test, with the emulated programs started through binfmt_misc.
#   bash cross/test.sh                                # aarch64 musl, then armv7
#   bash cross/test.sh armv7-unknown-linux-gnueabihf  # one target
# Run cross/setup.sh (as root) once first. POSTERN_EMULATED tells the tests they run under
# emulation: tests whose work is sized for native speed shrink it, and say so.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source "$root/cross/env.sh"
export POSTERN_EMULATED=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
for target in "${targets[@]}"; do
  printf '\n==> tests under qemu: %s (%ss)\n' "$target" "$SECONDS"
  cargo --config cross/config.toml test --locked --profile emulated --target "$target" \
    --lib --bins --tests
done
printf '\n==> emulated tests done (%ss)\n' "$SECONDS"
