# shellcheck shell=sh disable=SC2034 # variables used by the sourcing scripts
# tests/cross/common.sh: shared by deps.sh, run.sh and size.sh (sourced).
# Maps our target names to Debian's cross triplets and qemu-user binaries,
# and fixes where .cache/ lives (the repo root, whatever the caller's cwd).

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${MQX_CACHE:-$ROOT/.cache}
XDIR=$CACHE/cross
SRCDIR=$XDIR/src
ALL_ARCHES="mips mipsel armhf aarch64"
# mbedTLS branches we build: 2.28 (Debian bookworm), 3.6 (OpenWrt, trixie)
MBED_VERSIONS="2.28 3.6"
JOBS=${JOBS:-2}

# arch_triplet ARCH: Debian cross-compiler prefix without the trailing '-'
arch_triplet()
{
    case $1 in
    mips) echo mips-linux-gnu ;;
    mipsel) echo mipsel-linux-gnu ;;
    armhf) echo arm-linux-gnueabihf ;;
    aarch64) echo aarch64-linux-gnu ;;
    *) echo "unknown arch '$1' (want one of: $ALL_ARCHES)" >&2; return 1 ;;
    esac
}

# arch_qemu ARCH: the qemu-user binary that runs its static executables
arch_qemu()
{
    case $1 in
    mips) echo qemu-mips-static ;;
    mipsel) echo qemu-mipsel-static ;;
    armhf) echo qemu-arm-static ;;
    aarch64) echo qemu-aarch64-static ;;
    *) echo "unknown arch '$1'" >&2; return 1 ;;
    esac
}

# arch_cc ARCH: the cross gcc wrapped to compile and link against our musl
arch_cc()
{
    echo "$(arch_triplet "$1")-gcc -specs $XDIR/$1/musl/lib/musl-gcc.specs"
}

log() { printf '%s\n' "cross: $*" >&2; }
die() { printf '%s\n' "cross: error: $*" >&2; exit 1; }
