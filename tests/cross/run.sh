#!/bin/sh
# tests/cross/run.sh [--build-only] ARCH...: build mqttpx and tests/unit.c
# statically against musl + mbedTLS for each ARCH (mips mipsel armhf aarch64),
# run the unit tests under qemu-ARCH-static, then a black-box smoke test of
# the cross-built broker from the host (mosquitto_pub/sub, python3), and a
# TLS one of each broker linked with mbedTLS (a throwaway EC CA and server
# certificate from openssl). Needs the libraries from tests/cross/deps.sh.
# Outputs land in
# .cache/cross/ARCH/out/:
#
#   mqttpx-tls-2.28  mqttpx-tls-3.6  mqttpx-notls    the broker
#   unit-tls-2.28    unit-tls-3.6    unit-notls      the unit runner
#
# Env (all optional):
#   DEFS           -D flags for both (MQX_ ceilings, ...)
#   CFLAGS_EXTRA   more compiler flags (-Werror, -g, ...)
#   LDFLAGS_EXTRA  more linker flags
#   CROSS_MBEDTLS  mbedTLS branches for the TLS builds (default "2.28 3.6";
#                  each gets the TLS smoke test, the first one the plain and
#                  PROXY one too; the no-TLS build links its libmbedcrypto)
#   MQTTPX_SRC, UNIT_SRC   sources (default mqttpx.c, tests/unit.c)
#   UNIT_TIMEOUT   seconds per unit run under qemu (default 600)
#   TLS_TIMEOUT    seconds for each TLS client and wait (default 120: a
#                  handshake in qemu is slow)
set -eu
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

BUILD_ONLY=0
if [ "${1:-}" = --build-only ]; then
    BUILD_ONLY=1
    shift
fi
[ $# -gt 0 ] || die "usage: $0 [--build-only] ARCH... (of: $ALL_ARCHES)"
for a in "$@"; do arch_triplet "$a" >/dev/null || exit 2; done

DEFS=${DEFS:-}
CFLAGS_EXTRA=${CFLAGS_EXTRA:-}
LDFLAGS_EXTRA=${LDFLAGS_EXTRA:-}
CROSS_MBEDTLS=${CROSS_MBEDTLS:-2.28 3.6}
MQTTPX_SRC=${MQTTPX_SRC:-$ROOT/mqttpx.c}
UNIT_SRC=${UNIT_SRC:-$ROOT/tests/unit.c}
UNIT_TIMEOUT=${UNIT_TIMEOUT:-600}
TLS_TIMEOUT=${TLS_TIMEOUT:-120}
PY=$(command -v /usr/bin/python3 || command -v python3)
[ -f "$MQTTPX_SRC" ] || die "no $MQTTPX_SRC"
[ -f "$UNIT_SRC" ] || die "no $UNIT_SRC"

T0=$(date +%s)
n_pass=0
n_fail=0
n_skip=0
# show FILE...: print what exists of FILEs to stderr (failure context)
show()
{
    for f in "$@"; do
        [ -f "$f" ] && sed "s|^|  $(basename "$f"): |" "$f" >&2
    done
    return 0
}
# processes to end if we stop early (set -e, ^C)
KILL_PIDS=""
TMPS=""
cleanup()
{
    for p in $KILL_PIDS; do kill -KILL "$p" 2>/dev/null || true; done
    for d in $TMPS; do rm -rf "$d"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ok() { n_pass=$((n_pass + 1)); log "PASS $*"; }
bad() { n_fail=$((n_fail + 1)); log "FAIL $*"; }

# ---- build -------------------------------------------------------------
# compile ARCH OUT SRC TLS VER: the documented build line; TLS=0 defines
# MQX_TLS=0 and links only libmbedcrypto (hashes). Output to OUT.log.
compile()
{
    mbed=$XDIR/$1/mbedtls-$5
    [ -f "$XDIR/$1/.mbedtls-$5-done" ] ||
        die "no mbedtls $5 for $1: run tests/cross/deps.sh $1"
    if [ "$4" = 1 ]; then
        tls="" libs="-lmbedtls -lmbedx509 -lmbedcrypto"
    else
        tls="-DMQX_TLS=0" libs="-lmbedcrypto"
    fi
    cc=$(arch_cc "$1")
    lf=$2.log
    # shellcheck disable=SC2086 # CC, DEFS and the flag lists are word lists
    set -- $cc -std=c11 -Os $DEFS $tls $CFLAGS_EXTRA \
        -I"$mbed/include" "$3" -o "$2" -L"$mbed/lib" $libs -static \
        $LDFLAGS_EXTRA
    echo "$*" >"$lf"
    "$@" >>"$lf" 2>&1
}

# build_arch ARCH: every variant, two compilers at a time (JOBS)
build_arch()
{
    out=$XDIR/$1/out
    mkdir -p "$out"
    rm -f "$out"/mqttpx-* "$out"/unit-*
    first=${CROSS_MBEDTLS%% *}
    jobs=""
    for v in notls $CROSS_MBEDTLS; do
        if [ "$v" = notls ]; then on=0 mv=$first; else on=1 mv=$v; fi
        for what in mqttpx unit; do
            if [ $what = mqttpx ]; then src=$MQTTPX_SRC; else src=$UNIT_SRC; fi
            case $v in notls) o=$out/$what-notls ;; *) o=$out/$what-tls-$v ;; esac
            compile "$1" "$o" "$src" $on "$mv" &
            jobs="$jobs $!:$o"
            if [ "$(echo "$jobs" | wc -w)" -ge "$JOBS" ]; then
                reap_jobs "$1"
                jobs=""
            fi
        done
    done
    reap_jobs "$1"
}

# reap_jobs ARCH: wait for $jobs (pid:output pairs), report each
reap_jobs()
{
    for j in $jobs; do
        if wait "${j%%:*}"; then
            ok "$1 build $(basename "${j#*:}")"
            # warnings, if any, are worth seeing
            [ "$(wc -l <"${j#*:}.log")" -le 1 ] || sed 1d "${j#*:}.log" >&2
        else
            bad "$1 build $(basename "${j#*:}")"
            cat "${j#*:}.log" >&2 || true
        fi
    done
}

# ---- unit tests under qemu ---------------------------------------------
# unit_arch ARCH: run every unit binary that built; it ends with
# "N passed, N failed" and exits non-zero on failure.
unit_arch()
{
    q=$(arch_qemu "$1")
    for u in "$XDIR/$1/out"/unit-*; do
        case $u in *.log) continue ;; esac
        [ -x "$u" ] || continue
        tu=$(date +%s)
        if (cd "$ROOT" && timeout "$UNIT_TIMEOUT" "$q" "$u") \
            >"$u.run" 2>&1; then
            ok "$1 $(basename "$u"): $(tail -n 1 "$u.run") ($(($(date +%s) - tu)) s)"
        else
            bad "$1 $(basename "$u") (exit $?)"
            tail -n 40 "$u.run" >&2 || true
        fi
    done
}

# ---- black-box smoke test ----------------------------------------------
free_port()
{
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# wait_for FILE TEXT SECONDS [PID]: until FILE has TEXT; false on timeout
# or when PID has exited
wait_for()
{
    i=0
    while [ $i -lt $(($3 * 10)) ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then return 1; fi
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# PROXY v2 header (127.0.0.5:40000 -> 127.0.0.1:PORT) + CONNECT (3.1.1,
# clean session, empty client id); prints the reply, exits 0 on CONNACK
# 20 02 00 00. With "noheader", sends CONNECT alone and exits 0 when the
# broker closes without a CONNACK, as a PROXY listener must.
PROXY_PY='
import socket, struct, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
hdr = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12)
       + socket.inet_aton("127.0.0.5") + socket.inet_aton("127.0.0.1")
       + struct.pack("!HH", 40000, port))
connect = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 0])
end = time.time() + 10
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        break
    except ConnectionRefusedError:
        if time.time() > end:
            raise
        time.sleep(0.1)
s.sendall((hdr if mode == "header" else b"") + connect)
got = b""
try:
    while len(got) < 4:
        b = s.recv(4 - len(got))
        if not b:
            break
        got += b
except (ConnectionResetError, socket.timeout) as e:
    print(type(e).__name__)
print("reply:", got.hex(" ") or "(none, closed)")
if mode == "header":
    sys.exit(0 if got == bytes([0x20, 2, 0, 0]) else 1)
sys.exit(0 if not got.startswith(b"\x20") else 1)
'

# stop_broker WHAT PID LOG: SIGTERM; the broker must exit 0 within 10 s
stop_broker()
{
    kill -TERM "$2" 2>/dev/null || true
    i=0
    while kill -0 "$2" 2>/dev/null && [ $i -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$2" 2>/dev/null; then
        kill -KILL "$2" 2>/dev/null || true
        wait "$2" || true
        bad "$1: broker ignored SIGTERM for 10 s"
        show "$3"
    elif wait "$2"; then
        ok "$1: SIGTERM, exit 0"
    else
        bad "$1: exit $? after SIGTERM"
        show "$3"
    fi
}

# smoke ARCH BIN: start BIN under qemu on free 127.0.0.1 ports, pub/sub
# through it, optionally the PROXY v2 listener, then SIGTERM.
smoke()
{
    q=$(arch_qemu "$1")
    b=$2
    tmp=$(mktemp -d)
    TMPS="$TMPS $tmp"
    p1=$(free_port)
    p2=$(free_port)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$p1" >"$tmp/plain.conf"
    cp "$tmp/plain.conf" "$tmp/proxy.conf"
    printf 'listener %s 127.0.0.1\nenable_proxy_protocol 2\n' "$p2" >>"$tmp/proxy.conf"
    # the PROXY v2 part runs once the broker's config test accepts it
    proxy=0
    conf=$tmp/plain.conf
    if timeout 60 "$q" "$b" -t -c "$tmp/proxy.conf" >"$tmp/t.log" 2>&1; then
        proxy=1
        conf=$tmp/proxy.conf
    fi

    "$q" "$b" -c "$conf" -v 2>"$tmp/broker.log" &
    bpid=$!
    KILL_PIDS="$KILL_PIDS $bpid"
    if ! wait_for "$tmp/broker.log" "listening on" 30 $bpid; then
        bad "$1 smoke: no 'listening on' from $(basename "$b")"
        show "$tmp/broker.log"
        kill -KILL $bpid 2>/dev/null || true
        return 0
    fi

    # line-buffered, so its SUBACK line shows before it exits
    stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$p1" -t smoke/t -C 1 -W 20 -d \
        >"$tmp/sub.out" 2>&1 &
    spid=$!
    KILL_PIDS="$KILL_PIDS $spid"
    if wait_for "$tmp/sub.out" "received SUBACK" 20 $spid &&
        mosquitto_pub -h 127.0.0.1 -p "$p1" -t smoke/t -m hello \
            >"$tmp/pub.out" 2>&1 &&
        wait $spid && grep -qx hello "$tmp/sub.out"; then
        ok "$1 smoke: pub/sub through $(basename "$b")"
    else
        bad "$1 smoke: pub/sub through $(basename "$b")"
        kill $spid 2>/dev/null || true
        show "$tmp/sub.out" "$tmp/pub.out" "$tmp/broker.log"
    fi

    if [ $proxy = 1 ]; then
        if "$PY" -c "$PROXY_PY" "$p2" header >"$tmp/px.out" 2>&1; then
            ok "$1 smoke: PROXY v2 + CONNECT -> CONNACK 20 02 00 00"
        else
            bad "$1 smoke: PROXY v2 + CONNECT: $(tail -n 1 "$tmp/px.out")"
            show "$tmp/px.out" "$tmp/broker.log"
        fi
        if "$PY" -c "$PROXY_PY" "$p2" noheader >"$tmp/px.out" 2>&1; then
            ok "$1 smoke: PROXY listener refuses CONNECT without header"
        else
            bad "$1 smoke: PROXY listener without header: $(tail -n 1 "$tmp/px.out")"
            show "$tmp/px.out" "$tmp/broker.log"
        fi
        grep -q '127\.0\.0\.5' "$tmp/broker.log" ||
            log "note: $1 broker log does not name the PROXY source 127.0.0.5"
    else
        n_skip=$((n_skip + 1))
        log "SKIP $1 smoke: PROXY v2 (config test rejects enable_proxy_protocol: $(tail -n 1 "$tmp/t.log"))"
    fi

    stop_broker "$1 smoke" $bpid "$tmp/broker.log"
}

# ---- TLS smoke test ----------------------------------------------------
# make_certs: a throwaway EC (P-256) CA and a server certificate for
# 127.0.0.1 signed by it, once per run, in $CERTS (ca.crt, server.crt,
# server.key); false, with openssl's output shown, if that fails
CERTS=""
make_certs()
{
    [ -n "$CERTS" ] && return 0
    d=$(mktemp -d)
    TMPS="$TMPS $d"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" >"$d/server.ext"
    if (cd "$d" &&
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
            -nodes -keyout ca.key -out ca.crt -days 2 \
            -subj /CN=mqttpx-cross-ca &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout server.key -out server.csr -subj /CN=127.0.0.1 &&
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key \
            -CAcreateserial -days 2 -extfile server.ext -out server.crt &&
        openssl verify -CAfile ca.crt server.crt) >"$d/openssl.log" 2>&1; then
        CERTS=$d
        return 0
    fi
    show "$d/openssl.log"
    return 1
}

# smoke_tls ARCH BIN VER: BIN (linked with mbedTLS VER) under qemu with one
# TLS listener (certfile, keyfile; Mosquitto's semantics): plain MQTT on it
# gets no CONNACK, then pub/sub through it with mosquitto_pub/sub verifying
# the server against the CA, then SIGTERM. The broker accepts TLS 1.2 and
# up by default: with 3.x the subscriber insists on TLS 1.3 and the
# publisher on 1.2; 2.28 has no TLS 1.3, so both use 1.2.
smoke_tls()
{
    q=$(arch_qemu "$1")
    b=$2
    what="$1 TLS smoke ($(basename "$b"))"
    if ! make_certs; then
        bad "$what: openssl could not make the test certificates"
        return 0
    fi
    tmp=$(mktemp -d)
    TMPS="$TMPS $tmp"
    p=$(free_port)
    printf '%s\n' "listener $p 127.0.0.1" "certfile $CERTS/server.crt" \
        "keyfile $CERTS/server.key" "allow_anonymous true" >"$tmp/tls.conf"
    case $3 in
    2.*) vsub=tlsv1.2 ;;
    *) vsub=tlsv1.3 ;;
    esac
    vpub=tlsv1.2

    "$q" "$b" -c "$tmp/tls.conf" -v 2>"$tmp/broker.log" &
    bpid=$!
    KILL_PIDS="$KILL_PIDS $bpid"
    if ! wait_for "$tmp/broker.log" "listening on" 60 $bpid; then
        bad "$what: no 'listening on'"
        show "$tmp/tls.conf" "$tmp/broker.log"
        kill -KILL $bpid 2>/dev/null || true
        return 0
    fi

    # a plaintext CONNECT on the TLS port: no CONNACK (and the broker
    # lives on, which the pub/sub below shows)
    if "$PY" -c "$PROXY_PY" "$p" noheader >"$tmp/plain.out" 2>&1; then
        ok "$what: plain MQTT on the TLS listener gets no CONNACK"
    else
        bad "$what: plain MQTT on the TLS listener: $(tail -n 1 "$tmp/plain.out")"
        show "$tmp/plain.out" "$tmp/broker.log"
    fi

    stdbuf -oL mosquitto_sub --cafile "$CERTS/ca.crt" --tls-version $vsub \
        -h 127.0.0.1 -p "$p" -t smoke/tls -C 1 -W "$TLS_TIMEOUT" -d \
        >"$tmp/sub.out" 2>&1 &
    spid=$!
    KILL_PIDS="$KILL_PIDS $spid"
    if wait_for "$tmp/sub.out" "received SUBACK" "$TLS_TIMEOUT" $spid &&
        timeout "$TLS_TIMEOUT" mosquitto_pub --cafile "$CERTS/ca.crt" \
            --tls-version $vpub -h 127.0.0.1 -p "$p" -t smoke/tls \
            -m hello-tls >"$tmp/pub.out" 2>&1 &&
        wait $spid && grep -qx hello-tls "$tmp/sub.out"; then
        ok "$what: pub ($vpub) / sub ($vsub), server verified against the CA"
    else
        bad "$what: pub ($vpub) / sub ($vsub)"
        kill $spid 2>/dev/null || true
        show "$tmp/sub.out" "$tmp/pub.out" "$tmp/broker.log"
    fi

    stop_broker "$what" $bpid "$tmp/broker.log"
}

for a in "$@"; do
    arch_triplet "$a" >/dev/null
    [ -f "$XDIR/$a/.musl-done" ] || die "no musl for $a: run tests/cross/deps.sh $a"
    ta=$(date +%s)
    build_arch "$a"
    log "$a: built in $(($(date +%s) - ta)) s"
    [ $BUILD_ONLY = 1 ] && continue
    unit_arch "$a"
    bin=$XDIR/$a/out/mqttpx-tls-${CROSS_MBEDTLS%% *}
    if [ -x "$bin" ]; then
        smoke "$a" "$bin"
    else
        bad "$a smoke: $(basename "$bin") did not build"
    fi
    for v in $CROSS_MBEDTLS; do
        bin=$XDIR/$a/out/mqttpx-tls-$v
        if [ -x "$bin" ]; then
            smoke_tls "$a" "$bin" "$v"
        else
            bad "$a TLS smoke: $(basename "$bin") did not build"
        fi
    done
done

log "$* done in $(($(date +%s) - T0)) s"
if [ $n_skip -gt 0 ]; then
    echo "cross: $n_pass passed, $n_fail failed, $n_skip skipped"
else
    echo "cross: $n_pass passed, $n_fail failed"
fi
[ $n_fail = 0 ]
