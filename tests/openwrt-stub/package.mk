# Stub of OpenWrt's include/package.mk for tests/openwrt-check.sh.
# BuildPackage evaluates Package/NAME like OpenWrt does and defines, per
# package:
#   info-NAME       prints VARIANT, DEPENDS, CONFLICTS, USERID, TITLE
#   conffiles-NAME  prints Package/NAME/conffiles
#   install-NAME    runs Package/NAME/install into $(DESTDIR); as in
#                   OpenWrt's package-ipkg.mk it is expanded by the call,
#                   then by eval, then as a recipe
# and build-compile runs Build/Compile (set MAKE=echo to see it).
PKG_BUILD_DIR?=$(BUILD_DIR)/$(PKG_NAME)-$(PKG_VERSION)
STUB_FIELDS:=SECTION CATEGORY TITLE URL DEPENDS USERID VARIANT CONFLICTS \
	DEFAULT_VARIANT PROVIDES
STUB_PACKAGES:=

define BuildPackage
$(foreach v,$(STUB_FIELDS),$(eval $(v):=))$(eval $(Package/$(1)))
STUB_PACKAGES+=$(1)
info-$(1):
	@echo 'VARIANT=$(VARIANT)'
	@echo 'DEPENDS=$(DEPENDS)'
	@echo 'CONFLICTS=$(CONFLICTS)'
	@echo 'USERID=$(USERID)'
	@echo 'TITLE=$(TITLE)'
conffiles-$(1):
	@printf '%s\n' $(strip $(Package/$(1)/conffiles))
install-$(1):
	@test -n "$$(DESTDIR)"
	$(call Package/$(1)/install,$$(DESTDIR))
endef

build-compile:
	$(Build/Compile)

packages:
	@echo $(STUB_PACKAGES)
