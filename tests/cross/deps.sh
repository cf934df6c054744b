#!/bin/sh
# tests/cross/deps.sh [ARCH...|host]: cross toolchains, qemu-user and static
# libraries for `make cross` and `make size`, cached in .cache/ (git-ignored).
# `deps.sh host` prepares only the host mbedTLS 3.6 (for `make tls36`): no
# cross packages, no musl, no mbedtls 2.28.
#
#   packages  Debian's cross gcc for mips (big-endian), mipsel, armhf and
#             aarch64, qemu-user-static, dpkg-dev; installed when root, else
#             the apt-get line is printed and we exit 1
#   sources   musl (bookworm), mbedtls 2.28 (bookworm) and 3.6 (trixie) from
#             Debian's source packages via a deb-src entry we add
#   builds    per ARCH: .cache/cross/ARCH/musl, .../mbedtls-2.28, .../mbedtls-3.6
#             (static, -Os, built with that musl); plus .cache/host/mbedtls-3.6
#             (x86_64 glibc) for host TLS tests against OpenWrt's branch
#
# Every step writes a stamp holding what it was built from (for mbedtls 3.6
# that includes the config options below, so changing them rebuilds it); a
# step whose stamp matches is skipped, so a warm run takes about a second.
# Delete .cache/cross (or one ARCH) to force a rebuild. Env: JOBS (default 2).
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

# Bump when a build recipe below changes, so stale caches are rebuilt.
RECIPE=2
# Whatever the caller exports is for mqttpx, not for the libraries.
unset CFLAGS CPPFLAGS LDFLAGS MAKEFLAGS MFLAGS || true

# mbedTLS 3.6 as OpenWrt's libmbedtls has it: no version info (VERSION_C,
# and VERSION_FEATURES, which needs it), no debug, no static-RSA or
# finite-field DHE key exchange; TLS 1.3 on (it needs PSA crypto, the
# compatibility mode and the ephemeral key exchange modes, all on by
# default and checked after configuring). Part of the 3.6 stamps.
MBED36_SET="MBEDTLS_SSL_PROTO_TLS1_3"
MBED36_UNSET="MBEDTLS_VERSION_C MBEDTLS_VERSION_FEATURES MBEDTLS_DEBUG_C \
MBEDTLS_KEY_EXCHANGE_RSA_ENABLED MBEDTLS_KEY_EXCHANGE_DHE_RSA_ENABLED \
MBEDTLS_KEY_EXCHANGE_DHE_PSK_ENABLED"
MBED36_NEED="MBEDTLS_SSL_PROTO_TLS1_3 MBEDTLS_PSA_CRYPTO_C \
MBEDTLS_SSL_TLS1_3_COMPATIBILITY_MODE \
MBEDTLS_SSL_TLS1_3_KEY_EXCHANGE_MODE_EPHEMERAL_ENABLED \
MBEDTLS_SSL_TLS1_3_KEY_EXCHANGE_MODE_PSK_EPHEMERAL_ENABLED \
MBEDTLS_SSL_KEEP_PEER_CERTIFICATE MBEDTLS_ECDH_C MBEDTLS_ECDSA_C \
MBEDTLS_SSL_PROTO_TLS1_2 MBEDTLS_KEY_EXCHANGE_ECDHE_ECDSA_ENABLED \
MBEDTLS_KEY_EXCHANGE_ECDHE_RSA_ENABLED"
# mbed_key VER: what a build of mbedtls VER depends on besides its compiler
mbed_key()
{
    if [ "$1" = 3.6 ]; then
        # shellcheck disable=SC2086 # collapse the lists to one line
        echo "$RECIPE $(cat "$SRCDIR/.mbedtls-3.6-src") set:" $MBED36_SET \
            "unset:" $MBED36_UNSET
    else
        echo "$RECIPE $(cat "$SRCDIR/.mbedtls-$1-src")"
    fi
}

HOST_ONLY=0
if [ "$*" = host ]; then
    HOST_ONLY=1
    ARCHES=""
else
    ARCHES=${*:-$ALL_ARCHES}
fi
for a in $ARCHES; do arch_triplet "$a" >/dev/null || exit 2; done
T0=$(date +%s)

# ---- packages ----------------------------------------------------------
PKGS="gcc-mips-linux-gnu gcc-mipsel-linux-gnu gcc-arm-linux-gnueabihf \
gcc-aarch64-linux-gnu binutils-mips-linux-gnu binutils-mipsel-linux-gnu \
binutils-arm-linux-gnueabihf binutils-aarch64-linux-gnu qemu-user-static \
dpkg-dev gcc make python3 xz-utils patch mosquitto-clients \
debian-archive-keyring openssl"
# the host library needs only the tools to fetch and build its source
[ $HOST_ONLY = 1 ] && PKGS="dpkg-dev gcc make python3 xz-utils patch \
debian-archive-keyring"
missing=""
for p in $PKGS; do
    dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q 'ok installed' ||
        missing="$missing $p"
done
IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
apt_updated=0
if [ -n "$missing" ]; then
    if [ $IS_ROOT = 0 ]; then
        echo "cross: missing packages; as root run:" >&2
        echo "  apt-get update && apt-get install -y --no-install-recommends$missing" >&2
        exit 1
    fi
    log "installing:$missing"
    apt-get update -q >/dev/null
    apt_updated=1
    # shellcheck disable=SC2086 # word splitting wanted
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends $missing >/dev/null
fi

# ---- deb-src entry -----------------------------------------------------
SRCLIST=/etc/apt/sources.list.d/mqttpx-src.sources
# mirror_uri: the Debian mirror the machine's own sources already use
mirror_uri()
{
    u=""
    for f in /etc/apt/sources.list.d/*.sources; do
        if [ ! -f "$f" ] || [ "$f" = "$SRCLIST" ]; then continue; fi
        u=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' "$f" |
            grep -v -e security -e updates | head -n 1)
        [ -n "$u" ] && break
    done
    if [ -z "$u" ] && [ -f /etc/apt/sources.list ]; then
        u=$(awk '$1 == "deb" && $0 !~ /security/ {
                 for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {
                     print $i; exit } }' /etc/apt/sources.list)
    fi
    echo "${u:-http://deb.debian.org/debian}"
}
if [ ! -f "$SRCLIST" ]; then
    uri=$(mirror_uri)
    body="Types: deb-src
URIs: $uri
Suites: bookworm trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    if [ $IS_ROOT = 0 ]; then
        echo "cross: need a deb-src entry; as root write $SRCLIST:" >&2
        printf '%s\n' "$body" >&2
        echo "then run apt-get update" >&2
        exit 1
    fi
    log "adding $SRCLIST ($uri)"
    printf '%s\n' "$body" >"$SRCLIST"
    apt_updated=0
fi

# ---- source packages ---------------------------------------------------
# fetch_src NAME PKG/SUITE: download and unpack into $SRCDIR/NAME once;
# the stamp holds the .dsc name, the version the builds below record.
fetch_src()
{
    stamp=$SRCDIR/.$1-src
    if [ -f "$stamp" ] && [ -d "$SRCDIR/$1" ]; then return 0; fi
    # (not root: use the lists as they are; apt-get source needs no root)
    if [ $apt_updated = 0 ] && [ $IS_ROOT = 1 ]; then
        log "apt-get update"
        apt-get update -q >/dev/null
        apt_updated=1
    fi
    log "fetching source $2"
    rm -rf "${SRCDIR:?}/dl-$1" "${SRCDIR:?}/$1"
    mkdir -p "$SRCDIR/dl-$1"
    (cd "$SRCDIR/dl-$1" && apt-get source -q --download-only "$2" >/dev/null 2>&1) ||
        (cd "$SRCDIR/dl-$1" && apt-get source -q --download-only "$2") ||
        die "apt-get source $2 failed"
    dsc=$(ls "$SRCDIR/dl-$1"/*.dsc)
    # apt checked the .dsc against the signed Release file; dpkg-source's
    # own check of the uploader's signature only warns here (no keyring)
    dpkg-source -x "$dsc" "$SRCDIR/$1" >"$SRCDIR/dl-$1/x.log" 2>&1 || {
        cat "$SRCDIR/dl-$1/x.log" >&2
        die "dpkg-source -x $dsc failed"
    }
    rm -f "$SRCDIR"/*.orig.tar.* "$SRCDIR"/*.debian.tar.* "$SRCDIR"/*.diff.gz
    basename "$dsc" >"$stamp"
}
mkdir -p "$SRCDIR"
if [ $HOST_ONLY = 0 ]; then
    fetch_src musl musl/bookworm
    fetch_src mbedtls-2.28 mbedtls/bookworm
    case $(cat "$SRCDIR/.mbedtls-2.28-src") in mbedtls_2.28.*) ;;
    *) die "mbedtls/bookworm is $(cat "$SRCDIR/.mbedtls-2.28-src"), want 2.28" ;;
    esac
fi
fetch_src mbedtls-3.6 mbedtls/trixie
case $(cat "$SRCDIR/.mbedtls-3.6-src") in mbedtls_3.6.*) ;;
*) die "mbedtls/trixie is $(cat "$SRCDIR/.mbedtls-3.6-src"), want 3.6" ;;
esac

# ---- builds ------------------------------------------------------------
built=0
# fresh STAMP KEY: true (0) if STAMP is missing or was built from another KEY
fresh()
{
    [ -f "$1" ] && [ "$(cat "$1")" = "$2" ] && return 1
    return 0
}
# run_logged LOG CMD...: run quietly; on failure show the log's tail
run_logged()
{
    lf=$1
    shift
    if ! "$@" >>"$lf" 2>&1; then
        tail -n 40 "$lf" >&2
        die "failed (full log: $lf)"
    fi
}

# build_musl ARCH
build_musl()
{
    tri=$(arch_triplet "$1")
    dst=$XDIR/$1/musl
    b=$XDIR/$1/build/musl
    lf=$XDIR/$1/build/musl.log
    t=$(date +%s)
    log "building musl ($(cat "$SRCDIR/.musl-src")) for $1"
    rm -rf "$dst" "$b"
    mkdir -p "$b"
    : >"$lf"
    # out-of-tree; the gcc wrapper gives us lib/musl-gcc.specs
    run_logged "$lf" sh -c "cd '$b' && '$SRCDIR/musl/configure' \
        --prefix='$dst' --target=$tri --disable-shared --enable-wrapper=gcc \
        CROSS_COMPILE=$tri- CC=$tri-gcc"
    run_logged "$lf" make -C "$b" -j"$JOBS"
    run_logged "$lf" make -C "$b" install
    [ -f "$dst/lib/musl-gcc.specs" ] || die "no musl-gcc.specs in $dst/lib"
    rm -rf "$b"
    log "  musl for $1: $(($(date +%s) - t)) s"
    built=$((built + 1))
}

# mbed_config DIR VER: 2.28 gets Debian's own config (the `config.py set`
# lines of its debian/rules, as libmbedtls-dev ships it); 3.6 gets OpenWrt's
# libmbedtls choices (MBED36_SET, MBED36_UNSET above: version info and debug
# off, no static-RSA or finite-field DHE key exchange, TLS 1.3 on), then
# the result is checked against MBED36_NEED and MBED36_UNSET.
mbed_config()
{
    py=$(command -v /usr/bin/python3 || command -v python3)
    if [ "$2" = 2.28 ]; then
        sed -n 's/^[[:space:]]*scripts\/config.py set \([A-Z0-9_]*\)$/\1/p' \
            "$1/debian/rules" | while read -r o; do
            echo "config: set $o (as debian/rules)"
            (cd "$1" && "$py" scripts/config.py set "$o") || exit 1
        done
        return
    fi
    cf=$1/include/mbedtls/mbedtls_config.h
    for o in $MBED36_SET; do
        echo "config: set $o"
        "$py" "$1/scripts/config.py" -f "$cf" set "$o" || return 1
    done
    for o in $MBED36_UNSET; do
        echo "config: unset $o"
        "$py" "$1/scripts/config.py" -f "$cf" unset "$o" || return 1
    done
    # config.py get: exit 0 when the option is set
    for o in $MBED36_NEED; do
        "$py" "$1/scripts/config.py" -f "$cf" get "$o" >/dev/null ||
            { echo "config: $o is off, want it on"; return 1; }
    done
    for o in $MBED36_UNSET; do
        if "$py" "$1/scripts/config.py" -f "$cf" get "$o" >/dev/null; then
            echo "config: $o is on, want it off"
            return 1
        fi
    done
}

# build_mbed VER DEST BUILDDIR CC AR: static libs + headers into DEST
build_mbed()
{
    ver=$1 dst=$2 b=$3 cc=$4 ar=$5
    lf=$b.log
    rm -rf "$dst" "$b"
    mkdir -p "$(dirname "$b")"
    : >"$lf"
    cp -R "$SRCDIR/mbedtls-$ver" "$b"
    mbed_config "$b" "$ver" >>"$lf" 2>&1 || {
        tail -n 20 "$lf" >&2
        die "config.py failed"
    }
    run_logged "$lf" make -C "$b/library" -j"$JOBS" CC="$cc" AR="$ar" \
        CFLAGS="-Os" static
    mkdir -p "$dst/lib" "$dst/include"
    cp -R "$b/include/mbedtls" "$b/include/psa" "$dst/include/"
    cp "$b/library/libmbedtls.a" "$b/library/libmbedx509.a" \
        "$b/library/libmbedcrypto.a" "$dst/lib/"
    rm -rf "$b"
}

for a in $ARCHES; do
    tri=$(arch_triplet "$a")
    mkdir -p "$XDIR/$a/build"
    key="$RECIPE $(cat "$SRCDIR/.musl-src") $("$tri-gcc" -dumpfullversion)"
    if fresh "$XDIR/$a/.musl-done" "$key"; then
        build_musl "$a"
        echo "$key" >"$XDIR/$a/.musl-done"
    fi
    for v in $MBED_VERSIONS; do
        key="$(mbed_key "$v") $(cat "$XDIR/$a/.musl-done")"
        fresh "$XDIR/$a/.mbedtls-$v-done" "$key" || continue
        t=$(date +%s)
        log "building mbedtls $v ($(cat "$SRCDIR/.mbedtls-$v-src")) for $a"
        build_mbed "$v" "$XDIR/$a/mbedtls-$v" "$XDIR/$a/build/mbedtls-$v" \
            "$(arch_cc "$a")" "$tri-ar"
        echo "$key" >"$XDIR/$a/.mbedtls-$v-done"
        log "  mbedtls $v for $a: $(($(date +%s) - t)) s"
        built=$((built + 1))
    done
    rmdir "$XDIR/$a/build" 2>/dev/null || true
done

# host (x86_64, glibc) mbedTLS 3.6 with the OpenWrt-like config
HOST=$CACHE/host
key="$(mbed_key 3.6) $(gcc -dumpfullversion)"
if fresh "$HOST/.mbedtls-3.6-done" "$key"; then
    t=$(date +%s)
    log "building mbedtls 3.6 ($(cat "$SRCDIR/.mbedtls-3.6-src")) for host"
    mkdir -p "$HOST"
    build_mbed 3.6 "$HOST/mbedtls-3.6" "$HOST/build-mbedtls-3.6" gcc ar
    echo "$key" >"$HOST/.mbedtls-3.6-done"
    log "  mbedtls 3.6 for host: $(($(date +%s) - t)) s"
    built=$((built + 1))
fi

log "deps ready for:${ARCHES:+ $ARCHES} host ($built built, $(($(date +%s) - T0)) s)"
