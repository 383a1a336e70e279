#!/usr/bin/env bash
# One-time set-up of a Debian (bookworm) x86_64 machine for cross/build.sh and cross/test.sh:
# Debian's cross compilers and musl for aarch64 and armv7, qemu-user, the Rust targets, and (when
# run as root) binfmt registration so emulated tests can start the emulated binaries.
# Safe to run again; it installs only what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
  musl-tools musl-dev:arm64 musl-dev:armhf qemu-user-static file)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "cross/setup.sh: installing ${missing[*]}"
  $sudo dpkg --add-architecture arm64
  $sudo dpkg --add-architecture armhf
  # A mirror in mid-sync can fail one index; the install below says whether anything is missing.
  $sudo apt-get update -qq || $sudo apt-get update -qq || true
  # libc6-dev-*-cross must be named with --no-install-recommends, or armv7 links miss Scrt1.o.
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf

# Tests start the built programs as child processes: the kernel must hand ARM executables to
# qemu. Outside systemd-as-PID-1 nothing registers them, so do it here.
if [ "$(id -u)" = 0 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] ||
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
  for arch in aarch64 arm; do
    [ -e "/proc/sys/fs/binfmt_misc/qemu-$arch" ] ||
      /lib/systemd/systemd-binfmt "/usr/lib/binfmt.d/qemu-$arch.conf" || true
  done
fi
for arch in aarch64 arm; do
  if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$arch" ]; then
    echo "cross/setup.sh: warning: qemu-$arch is not registered with binfmt_misc; emulated" \
      "tests that start the programs will fail (run this script as root)" >&2
  fi
done
echo "cross/setup.sh: ready"
