# Sourced by cross/build.sh and cross/test.sh: which C compiler builds the vendored C code
# (OpenSSL, libssh2, SQLite, ring) for each target. cc-rs would otherwise pick Debian's glibc
# cross gcc for aarch64 musl, whose headers make OpenSSL and SQLite call fopen64, lstat64, ...,
# which musl >= 1.2.4 (the one Rust links) does not have.
cross_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$cross_root/bin:$PATH"
export CC_x86_64_unknown_linux_musl=musl-gcc
export CC_aarch64_unknown_linux_musl=aarch64-linux-musl-gcc
export AR_aarch64_unknown_linux_musl=aarch64-linux-musl-ar
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
export AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar
# Shipped binaries are sized for firmware: C code built for size (OpenSSL's AES-GCM and ChaCha20
# are assembly either way) and without unwind tables, which nothing uses with panic = "abort".
size_cflags="-Os -fno-asynchronous-unwind-tables -fno-unwind-tables"
export CFLAGS_x86_64_unknown_linux_musl="$size_cflags"
export CFLAGS_aarch64_unknown_linux_musl="$size_cflags"
export CFLAGS_armv7_unknown_linux_gnueabihf="$size_cflags"
