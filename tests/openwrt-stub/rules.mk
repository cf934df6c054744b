# Stub of OpenWrt's include/rules.mk for tests/openwrt-check.sh: just the
# names openwrt/mqttpx/Makefile uses, with OpenWrt's values.
INSTALL_DIR:=install -d -m0755
INSTALL_BIN:=install -m0755
INSTALL_DATA:=install -m0644
INSTALL_CONF:=install -m0600
SED:=sed -i -e
CP:=cp -fpR
TARGET_CC:=stub-target-gcc
TARGET_CFLAGS:=-Os -pipe
TARGET_CPPFLAGS:=-I/stub/staging/usr/include
TARGET_LDFLAGS:=-L/stub/staging/usr/lib
BUILD_DIR?=/stub/build_dir
