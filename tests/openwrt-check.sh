#!/bin/sh
# tests/openwrt-check.sh: checks openwrt/ without an OpenWrt SDK.
#  1. the procd init script parses (sh -n) and is shellcheck-clean
#  2. sourced with stub procd_* functions, start_service and reload_service
#     record the expected command line and parameters
#  3. the package Makefile, read with stub rules.mk/package.mk
#     (tests/openwrt-stub/), installs each variant's files with the right
#     modes, lists its conffiles, and passes TLS=0 only to the nossl build
# Prints "N passed, N failed"; exits non-zero on failure.
set -eu
# nested make calls must not inherit the parent make\'s flags (-w)
unset MAKEFLAGS MFLAGS MAKELEVEL
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PKG=$ROOT/openwrt/mqttpx
INIT=$PKG/files/mqttpx.init
STUB=$ROOT/tests/openwrt-stub
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM

n_pass=0
n_fail=0
n_skip=0
# check NAME CMD...: one assertion
check()
{
    name=$1
    shift
    if "$@" >"$TMP/check.out" 2>&1; then
        n_pass=$((n_pass + 1))
    else
        n_fail=$((n_fail + 1))
        echo "FAIL: $name" >&2
        sed 's/^/  | /' "$TMP/check.out" >&2
    fi
}
# has FILE LINE: FILE has exactly this line (shows FILE when it doesn't)
has()
{
    grep -Fxq -- "$2" "$1" || {
        echo "want line: $2"
        echo "in $1:"
        cat "$1"
        return 1
    }
}
# mode FILE OCTAL
mode()
{
    [ -f "$1" ] || { echo "missing $1"; return 1; }
    m=$(stat -c %a "$1")
    [ "$m" = "$2" ] || { echo "$1: mode $m, want $2"; return 1; }
}

# ---- 1. syntax and lint ------------------------------------------------
check "sh -n init script" sh -n "$INIT"
if ! command -v shellcheck >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck \
        >/dev/null 2>&1 || true
fi
if command -v shellcheck >/dev/null 2>&1; then
    # SC2034: START, STOP, USE_PROCD are read by /etc/rc.common
    check "shellcheck init script" shellcheck -s sh -e SC2034 "$INIT"
    check "shellcheck openwrt-check.sh" shellcheck -s sh "$0"
else
    n_skip=$((n_skip + 1))
    echo "SKIP: shellcheck not installed (apt-get install shellcheck)" >&2
fi

# ---- 2. mocked procd ---------------------------------------------------
# run_init FUNC CONF: source the init script in a subshell with procd and
# file-owner stubs that append to $TMP/calls, set CONF, call FUNC
run_init()
{
    : >"$TMP/calls"
    # shellcheck disable=SC2317 # the stubs are called by the sourced script
    (
        rec() { echo "$*" >>"$TMP/calls"; }
        procd_open_instance() { rec "open_instance $*"; }
        procd_close_instance() { rec "close_instance"; }
        procd_set_param() { rec "set_param $*"; }
        procd_append_param() { rec "append_param $*"; }
        procd_send_signal() { rec "send_signal $*"; }
        chgrp() { rec "chgrp $*"; }
        chown() { rec "chown $*"; }
        chmod() { rec "chmod $*"; }
        mkdir() { rec "mkdir $*"; }
        # shellcheck source=/dev/null # checked on its own above
        . "$INIT"
        rec "defaults START=$START USE_PROCD=$USE_PROCD CONF=$CONF PROG=$PROG"
        CONF=$2
        "$1"
    )
}

printf 'listener 1883\n' >"$TMP/plain.conf"
check "start_service runs" run_init start_service "$TMP/plain.conf"
C=$TMP/calls
check "init defaults" has "$C" \
    "defaults START=95 USE_PROCD=1 CONF=/etc/mqttpx.conf PROG=/usr/sbin/mqttpx"
check "command line" has "$C" "set_param command /usr/sbin/mqttpx -c $TMP/plain.conf"
check "file param" has "$C" "set_param file $TMP/plain.conf"
check "respawn" has "$C" "set_param respawn 3600 5 5"
check "stdout to logd" has "$C" "set_param stdout 1"
check "stderr to logd" has "$C" "set_param stderr 1"
check "reload_signal" has "$C" "set_param reload_signal HUP"
check "conf group" has "$C" "chgrp mqttpx $TMP/plain.conf"
check "conf mode" has "$C" "chmod 0640 $TMP/plain.conf"
check "one instance" test "$(grep -c '^open_instance' "$C")" = 1
check "instance closed last" test "$(tail -n 1 "$C")" = close_instance
check "no -d (procd wants foreground)" sh -c "! grep -q -- ' -d' '$C'"
check "no persistence dir made" sh -c "! grep -q '^mkdir' '$C'"

printf 'listener 1883\npersistence_location /var/lib/mqttpx/\n' >"$TMP/p.conf"
check "start_service with persistence" run_init start_service "$TMP/p.conf"
check "persistence dir made" has "$C" "mkdir -p /var/lib/mqttpx/"
check "persistence dir owner" has "$C" "chown mqttpx:mqttpx /var/lib/mqttpx/"

if run_init start_service "$TMP/none.conf" 2>/dev/null; then
    check "missing config refused" false
else
    check "missing config: no instance" sh -c "! grep -q instance '$C'"
fi

check "reload_service runs" run_init reload_service "$TMP/plain.conf"
check "reload sends HUP" has "$C" "send_signal mqttpx * HUP"

# ---- 3. package Makefile against stub includes -------------------------
B=$TMP/build
mkdir -p "$B"
printf '#!/bin/sh\n' >"$B/mqttpx"
if [ -f "$ROOT/config.example" ]; then
    cp "$ROOT/config.example" "$B/config.example"
else
    printf 'listener 1883\n#user nobody\n' >"$B/config.example"
fi
pkgmake()
{
    make -s -C "$PKG" TOPDIR="$STUB" INCLUDE_DIR="$STUB" PKG_BUILD_DIR="$B" "$@"
}
check "packages" sh -c "[ \"\$(make -s -C '$PKG' TOPDIR='$STUB' \
    INCLUDE_DIR='$STUB' packages)\" = 'mqttpx mqttpx-nossl' ]"
for p in mqttpx mqttpx-nossl; do
    d=$TMP/root-$p
    check "$p install" pkgmake "install-$p" DESTDIR="$d"
    check "$p /usr/sbin/mqttpx 0755" mode "$d/usr/sbin/mqttpx" 755
    check "$p /etc/init.d/mqttpx 0755" mode "$d/etc/init.d/mqttpx" 755
    check "$p /etc/mqttpx.conf 0600" mode "$d/etc/mqttpx.conf" 600
    check "$p init script is files/mqttpx.init" cmp "$INIT" "$d/etc/init.d/mqttpx"
    check "$p conf sets user mqttpx" has "$d/etc/mqttpx.conf" "user mqttpx"
    check "$p conf has one user line" \
        test "$(grep -c '^[[:space:]]*user[[:space:]]' "$d/etc/mqttpx.conf")" = 1
    check "$p no other files" test "$(cd "$d" && find . -type f | sort |
        tr '\n' ' ')" = "./etc/init.d/mqttpx ./etc/mqttpx.conf ./usr/sbin/mqttpx "
    pkgmake "conffiles-$p" >"$TMP/cf" 2>&1 || true
    check "$p conffiles" has "$TMP/cf" /etc/mqttpx.conf
    pkgmake "info-$p" >"$TMP/info" 2>&1 || true
    check "$p depends" has "$TMP/info" "DEPENDS=+libmbedtls"
    check "$p user" has "$TMP/info" "USERID=mqttpx=1883:mqttpx=1883"
done
check "mqttpx variant" sh -c "make -s -C '$PKG' TOPDIR='$STUB' \
    INCLUDE_DIR='$STUB' info-mqttpx | grep -Fxq VARIANT=ssl"
check "mqttpx-nossl variant" sh -c "make -s -C '$PKG' TOPDIR='$STUB' \
    INCLUDE_DIR='$STUB' info-mqttpx-nossl | grep -Fxq VARIANT=nossl"
check "mqttpx-nossl conflicts" sh -c "make -s -C '$PKG' TOPDIR='$STUB' \
    INCLUDE_DIR='$STUB' info-mqttpx-nossl | grep -Fxq CONFLICTS=mqttpx"

for v in ssl nossl; do
    pkgmake build-compile MAKE=echo BUILD_VARIANT=$v >"$TMP/cc-$v" 2>&1 || true
    check "$v compile line" has "$TMP/cc-$v" \
        "$(if [ $v = nossl ]; then tls=" TLS=0"; else tls=""; fi
        echo "-C $B CC=stub-target-gcc CFLAGS=-Os -pipe -I/stub/staging/usr/include LDFLAGS=-L/stub/staging/usr/lib DEV=0$tls mqttpx")"
done
check "no -Werror in package" sh -c "! grep -v '^[[:space:]]*#' '$PKG/Makefile' |
    grep -q Werror"

if [ $n_skip -gt 0 ]; then
    echo "openwrt-check: $n_pass passed, $n_fail failed, $n_skip skipped"
else
    echo "openwrt-check: $n_pass passed, $n_fail failed"
fi
[ $n_fail = 0 ]
