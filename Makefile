# mqttpx: see README.md. `make run` and `make test` are all a new user needs.
CC      ?= cc
TLS     ?= 1
DEV     ?= 1
PREFIX  ?= /usr/local
DESTDIR ?=
PY      ?= /usr/bin/python3

WARN = -std=c11 -Wall -Wextra -Wshadow -Wconversion -Wstrict-prototypes \
       -Wmissing-prototypes -Wcast-qual -Wwrite-strings -Wformat=2 \
       -Wundef -Wvla -Wframe-larger-than=4096 -fno-common
SAN  = -fsanitize=address,undefined -fno-sanitize-recover=all \
       -fno-omit-frame-pointer
CFLAGS ?= -O2 -g
ifeq ($(DEV),1)
WERROR = -Werror
endif
ifeq ($(TLS),1)
TLSLIBS = -lmbedtls -lmbedx509 -lmbedcrypto
else
DEFS   += -DMQX_TLS=0
TLSLIBS = -lmbedcrypto
endif

# Debian packages the tests need (make test installs them when root).
TEST_PKGS = gcc clang make libmbedtls-dev mosquitto mosquitto-clients \
            python3 python3-paho-mqtt python3-pytest python3-pytest-timeout \
            haproxy openssl \
            shellcheck clang-format cppcheck

all: mqttpx

mqttpx: mqttpx.c mqttpx.h
	$(CC) $(CFLAGS) $(WARN) $(WERROR) $(DEFS) -o $@ mqttpx.c $(LDFLAGS) $(TLSLIBS)

# the broker with sanitizers, for black-box runs
mqttpx-san: mqttpx.c mqttpx.h
	$(CC) -O1 -g $(WARN) $(WERROR) $(SAN) $(DEFS) -o $@ mqttpx.c $(TLSLIBS)

tests/unit: tests/unit.c mqttpx.c mqttpx.h
	$(CC) -O1 -g $(WARN) -Wno-missing-prototypes $(WERROR) $(SAN) $(DEFS) \
	    -o $@ tests/unit.c $(TLSLIBS)

# ---- mbedTLS 3.6 (OpenWrt's branch and config) on the host ------------------
# tests/cross/deps.sh host builds it static under $(CACHE)/host/ (x86_64,
# glibc; no version info, no debug, no static-RSA/DHE, TLS 1.3 on). Its
# headers come first (-I), ahead of Debian's 2.28 in /usr/include.
CACHE   = $(or $(MQX_CACHE),$(CURDIR)/.cache)
MBED36  = $(CACHE)/host/mbedtls-3.6
MBED36_LIBS = $(MBED36)/lib/libmbedtls.a $(MBED36)/lib/libmbedx509.a \
              $(MBED36)/lib/libmbedcrypto.a
MBED36_DEFS = $(filter-out -DMQX_TLS=0,$(DEFS)) -I$(MBED36)/include

# the stamp is rewritten whenever deps.sh rebuilds the library
$(CACHE)/host/.mbedtls-3.6-done:
	MQX_CACHE=$(CACHE) tests/cross/deps.sh host

mqttpx-mbed36: mqttpx.c mqttpx.h $(CACHE)/host/.mbedtls-3.6-done
	$(CC) $(CFLAGS) $(WARN) $(WERROR) $(MBED36_DEFS) -o $@ mqttpx.c \
	    $(LDFLAGS) $(MBED36_LIBS)

tests/unit-mbed36: tests/unit.c mqttpx.c mqttpx.h $(CACHE)/host/.mbedtls-3.6-done
	$(CC) -O1 -g $(WARN) -Wno-missing-prototypes $(WERROR) $(SAN) \
	    $(MBED36_DEFS) -o $@ tests/unit.c $(MBED36_LIBS)

# unit and TLS black-box tests against mbedTLS 3.6 (deps.sh first: a recipe
# or config change there rebuilds the library, and so the binaries)
tls36:
	MQX_CACHE=$(CACHE) tests/cross/deps.sh host
	$(MAKE) mqttpx-mbed36 tests/unit-mbed36
	./tests/unit-mbed36
	MQTTPX=$(CURDIR)/mqttpx-mbed36 MQTTPX_TLS13=1 \
	    $(PY) -m pytest -q tests/bb/test_tls.py tests/bb/test_build.py

# ---- PROXY vectors, fuzz targets, corpus replay ---------------------------
# The spec's test vectors (CI: a read-only shared/ beside the repository).
VECTORS   ?= ../shared/spec/proxy-vectors.json
FUZZ_TIME ?= 60

# tests/proxy_vectors.h and tests/corpus/proxy/ come from the JSON
tests/proxy_vectors.h: tests/gen_proxy_vectors.py $(wildcard $(VECTORS))
	@if [ -f $(VECTORS) ]; then $(PY) tests/gen_proxy_vectors.py $(VECTORS); \
	else echo "$(VECTORS) not found: keeping $@"; touch $@; fi

tests/unit-proxy: tests/unit_proxy.c tests/proxy_vectors.h mqttpx.c mqttpx.h
	$(CC) -O1 -g $(WARN) -Wno-missing-prototypes $(WERROR) $(SAN) $(DEFS) \
	    -o $@ tests/unit_proxy.c $(TLSLIBS)

unit-proxy: tests/unit-proxy
	./tests/unit-proxy

# libFuzzer targets (clang)
tests/fuzz_proxy.bin tests/fuzz_mqtt.bin tests/fuzz_cfg.bin tests/fuzz_auth.bin \
    tests/fuzz_store.bin tests/fuzz_journal.bin: tests/fuzz_%.bin: \
    tests/fuzz_%.c tests/store_harness.h mqttpx.c mqttpx.h
	clang -O1 -g $(WARN) -Wno-missing-prototypes $(WERROR) $(DEFS) \
	    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	    -o $@ $< $(TLSLIBS)

# the same targets behind a plain main() that replays files (gcc + SAN)
tests/fuzz_proxy_replay.bin tests/fuzz_mqtt_replay.bin \
    tests/fuzz_cfg_replay.bin tests/fuzz_auth_replay.bin \
    tests/fuzz_store_replay.bin tests/fuzz_journal_replay.bin: \
    tests/fuzz_%_replay.bin: tests/fuzz_replay.c \
    tests/fuzz_%.c tests/store_harness.h mqttpx.c mqttpx.h
	$(CC) -O1 -g $(WARN) -Wno-missing-prototypes $(WERROR) $(SAN) $(DEFS) \
	    -o $@ tests/fuzz_replay.c tests/fuzz_$*.c $(TLSLIBS)

fuzz-replay: tests/fuzz_proxy_replay.bin tests/fuzz_mqtt_replay.bin \
    tests/fuzz_cfg_replay.bin tests/fuzz_auth_replay.bin \
    tests/fuzz_store_replay.bin tests/fuzz_journal_replay.bin
	./tests/fuzz_proxy_replay.bin tests/corpus/proxy
	./tests/fuzz_mqtt_replay.bin tests/corpus/mqtt
	./tests/fuzz_cfg_replay.bin tests/corpus/cfg
	./tests/fuzz_auth_replay.bin tests/corpus/auth
	./tests/fuzz_store_replay.bin tests/corpus/store
	./tests/fuzz_journal_replay.bin tests/corpus/journal

# $(FUZZ_TIME) s per target; what it learns stays in .cache/fuzz/; a crasher
# is written to .cache/fuzz/crash-*: add it to tests/corpus/<target>/
fuzz: tests/fuzz_proxy.bin tests/fuzz_mqtt.bin tests/fuzz_cfg.bin \
    tests/fuzz_auth.bin tests/fuzz_store.bin tests/fuzz_journal.bin
	mkdir -p .cache/fuzz/proxy .cache/fuzz/mqtt .cache/fuzz/cfg \
	    .cache/fuzz/auth .cache/fuzz/store .cache/fuzz/journal
	./tests/fuzz_proxy.bin .cache/fuzz/proxy tests/corpus/proxy \
	    -max_total_time=$(FUZZ_TIME) -max_len=4200 \
	    -artifact_prefix=.cache/fuzz/crash-proxy-
	./tests/fuzz_mqtt.bin .cache/fuzz/mqtt tests/corpus/mqtt \
	    -max_total_time=$(FUZZ_TIME) -artifact_prefix=.cache/fuzz/crash-mqtt-
	./tests/fuzz_cfg.bin .cache/fuzz/cfg tests/corpus/cfg \
	    -max_total_time=$(FUZZ_TIME) -artifact_prefix=.cache/fuzz/crash-cfg-
	./tests/fuzz_auth.bin .cache/fuzz/auth tests/corpus/auth \
	    -max_total_time=$(FUZZ_TIME) -artifact_prefix=.cache/fuzz/crash-auth-
	./tests/fuzz_store.bin .cache/fuzz/store tests/corpus/store \
	    -max_total_time=$(FUZZ_TIME) -artifact_prefix=.cache/fuzz/crash-store-
	./tests/fuzz_journal.bin .cache/fuzz/journal tests/corpus/journal \
	    -max_total_time=$(FUZZ_TIME) \
	    -artifact_prefix=.cache/fuzz/crash-journal-

# side-by-side with Debian's mosquitto (tests/bench/README.md)
bench: mqttpx
	$(CC) -O2 -std=c11 -Wall -Wextra -o tests/bench/mqttpx-bench \
	    tests/bench/mqttpx-bench.c
	$(PY) tests/bench/run.py

run: mqttpx
	./mqttpx -c config.example

deps:
	@missing=$$(for p in $(TEST_PKGS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	    grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        echo "installing: $$missing"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	            apt-get install -y -qq $$missing >/dev/null; \
	    else \
	        echo "missing packages; run as root:"; \
	        echo "  apt-get install -y $$(echo $$missing)"; exit 1; \
	    fi; \
	fi

unit: tests/unit
	./tests/unit

tests/tools/mallocount.so: tests/tools/mallocount.c
	$(CC) -shared -fPIC -O1 -o $@ tests/tools/mallocount.c -ldl

bb: mqttpx tests/tools/mallocount.so
	$(PY) -m pytest -q tests/bb

test: deps
	$(MAKE) mqttpx
	$(MAKE) TLS=0 mqttpx-tls0-check
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) unit-proxy
	$(MAKE) fuzz-replay
	$(MAKE) bb
	$(MAKE) bb-san
	$(MAKE) tls36
	$(MAKE) openwrt-check
	$(MAKE) cross
	@echo "make test: all suites passed"

# big-endian mips, mipsel, armhf, aarch64: static musl + mbedTLS 2.28/3.6,
# unit tests under qemu-ARCH-static, a black-box smoke test of each broker
# (libraries cached under .cache/, or $$MQX_CACHE)
cross:
	tests/cross/deps.sh
	tests/cross/run.sh mips mipsel armhf aarch64

size:
	tests/cross/size.sh

openwrt-check:
	tests/openwrt-check.sh

# a TLS=0 build must compile cleanly too (it links only mbedcrypto)
mqttpx-tls0-check: mqttpx.c mqttpx.h
	$(CC) $(CFLAGS) $(WARN) $(WERROR) -DMQX_TLS=0 -o mqttpx-tls0 mqttpx.c -lmbedcrypto

install: mqttpx
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/etc/mqttpx
	install -m 0755 mqttpx $(DESTDIR)$(PREFIX)/sbin/mqttpx
	install -m 0644 config.example $(DESTDIR)$(PREFIX)/etc/mqttpx/mqttpx.conf.example

# black-box tests against the sanitizer build (ASan + UBSan), once
bb-san: mqttpx-san tests/tools/mallocount.so
	MQTTPX=$(CURDIR)/mqttpx-san ASAN_OPTIONS=detect_leaks=0 \
	    $(PY) -m pytest -q tests/bb --deselect tests/bb/test_memory.py

TIDY_CHECKS = -*,clang-analyzer-*,bugprone-*,-bugprone-easily-swappable-parameters,$\
              -bugprone-reserved-identifier,$\
              -clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling

lint:
	clang-format --dry-run -Werror mqttpx.c mqttpx.h tests/*.c tests/tools/*.c
	cppcheck --enable=warning,performance,portability --error-exitcode=1 -q \
	    mqttpx.c
	clang-tidy mqttpx.c --quiet --checks='$(TIDY_CHECKS)' \
	    --warnings-as-errors='*' -- -std=c11
	$(MAKE) CC=clang mqttpx-clang-check

mqttpx-clang-check: mqttpx.c mqttpx.h
	clang $(CFLAGS) $(WARN) -Werror -o mqttpx-clang mqttpx.c $(TLSLIBS)

fmt:
	clang-format -i mqttpx.c mqttpx.h tests/*.c

clean:
	rm -f mqttpx mqttpx-san mqttpx-tls0 mqttpx-clang mqttpx-mbed36 \
	    tests/unit tests/unit-proxy tests/unit-mbed36 tests/fuzz_*.bin

.PHONY: all run deps unit unit-proxy fuzz fuzz-replay bench bb bb-san lint \
        mqttpx-clang-check test install fmt clean mqttpx-tls0-check cross size \
        openwrt-check tls36
