#!/bin/sh
# tests/cross/size.sh [ARCH...]: build the static musl brokers (run.sh
# --build-only, after deps.sh) and print their stripped sizes in bytes:
# without TLS, and with TLS against mbedTLS 2.28 (Debian) and 3.6 (OpenWrt).
# Env as for run.sh (DEFS, CFLAGS_EXTRA, ...). For `make size`.
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

ARCHES=${*:-$ALL_ARCHES}
# shellcheck disable=SC2086 # word lists
"$ROOT/tests/cross/deps.sh" $ARCHES
# shellcheck disable=SC2086
CROSS_MBEDTLS="2.28 3.6" "$ROOT/tests/cross/run.sh" --build-only $ARCHES \
    >"$XDIR/size-build.log" 2>&1 || {
    cat "$XDIR/size-build.log" >&2
    die "build failed"
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# stripped ARCH FILE: size in bytes of a stripped copy
stripped()
{
    "$(arch_triplet "$1")-strip" -o "$tmp/s" "$2"
    wc -c <"$tmp/s" | tr -d ' '
}

printf '%-8s %10s %12s %12s\n' arch no-TLS TLS-2.28 TLS-3.6
for a in $ARCHES; do
    o=$XDIR/$a/out
    printf '%-8s %10s %12s %12s\n' "$a" "$(stripped "$a" "$o/mqttpx-notls")" \
        "$(stripped "$a" "$o/mqttpx-tls-2.28")" \
        "$(stripped "$a" "$o/mqttpx-tls-3.6")"
done
echo "(static, musl, -Os, stripped; bytes)"
