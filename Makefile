# tenant-router - plain GNU Makefile (no autotools).
#
#   make              build build/tenant-router
#   make test         install what is missing, build, run every test
#   make test SAN=1   the same under ASan + UBSan (objects in build/san)
#   make test-citus   tests/citus against real Citus clusters on loopback (skips without Citus)
#   make pgext        the tenant_guard PostgreSQL library, build/pgext/tenant_guard.so (PGXS)
#   make demo         two local PostgreSQL clusters and the router in front
#   make install      PREFIX=/usr/local DESTDIR= (SYSCONFDIR=/etc MANDIR UNITDIR DOCDIR)

PREFIX  ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
MANDIR  ?= $(PREFIX)/share/man
DOCDIR  ?= $(PREFIX)/share/doc/tenant-router
# systemd reads units from /usr/local/lib/systemd/system as well as /etc/systemd/system.
UNITDIR ?= $(PREFIX)/lib/systemd/system
CC      ?= cc

PKGS    := libuv libpq libxxhash inih openssl
PURE    := proto startup ring pins directory route query auth gframe pframe federation stats admin \
           roster
IO      := log config health citus conn server pool session link client client_local client_guard \
           splice cancel main sdnotify dirsync dircli \
           tls http metrics peer console

ifeq ($(SAN),1)
BUILD   := build/san
OPT     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
SANLD   := -fsanitize=address,undefined
else
BUILD   := build
OPT     := -O2 -g
SANLD   :=
HARDEN  := -D_FORTIFY_SOURCE=2 -fstack-protector-strong
endif

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wold-style-definition -Wpointer-arith -Wcast-align -Wformat=2 -Wundef -Wvla \
           -Wimplicit-fallthrough -Wnull-dereference -Wdeclaration-after-statement \
           -Wno-unused-parameter
PKGCF   := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# http-parser (libhttp-parser-dev) ships no pkg-config file.
PKGLIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpg_query -lprotobuf-c -lhttp_parser
CFLAGS  ?=
ALLCF   := -std=c11 -D_GNU_SOURCE $(OPT) $(HARDEN) -fPIE $(WARN) -Iinclude $(PKGCF) -MMD -MP $(CFLAGS)
LDFLAGS ?=
ALLLD   := -pie -Wl,-z,relro,-z,now $(SANLD) $(LDFLAGS)

BIN       := $(BUILD)/tenant-router
PURE_OBJ  := $(PURE:%=$(BUILD)/obj/%.o)
IO_OBJ    := $(IO:%=$(BUILD)/obj/%.o)
UNITS     := $(patsubst tests/unit/%.c,%,$(wildcard tests/unit/test_*.c))
UNIT_BINS := $(UNITS:%=$(BUILD)/tests/%)

.PHONY: all deps test unit integration fuzz demo install clean lint format format-check check-headers bench \
	pgext test-citus

all: $(BIN)

$(BUILD)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALLCF) -c $< -o $@

# The status page is a file of its own (easy to edit and view), compiled in as a C string.
$(BUILD)/gen/status_html.h: src/status.html
	@mkdir -p $(dir $@)
	{ echo '/* generated from src/status.html by the Makefile; do not edit */'; \
	  echo 'static const char status_html[] ='; \
	  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $<; \
	  echo ';'; } > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/metrics.o: $(BUILD)/gen/status_html.h
$(BUILD)/obj/metrics.o: ALLCF += -I$(BUILD)/gen

$(BIN): $(PURE_OBJ) $(IO_OBJ)
	$(CC) $^ -o $@ $(ALLLD) $(PKGLIBS) -lm

$(BUILD)/tests/test_%: tests/unit/test_%.c $(PURE_OBJ) $(BUILD)/obj/config.o $(BUILD)/obj/log.o \
		$(BUILD)/obj/tls.o
	@mkdir -p $(dir $@)
	$(CC) $(ALLCF) $(shell pkg-config --cflags cmocka) $^ -o $@ $(ALLLD) $(PKGLIBS) \
		$(shell pkg-config --libs cmocka) -lm

# The server library is PostgreSQL's code, not ours: PGXS compiles it with the server's own
# flags (plus -Werror, see src/pgext/Makefile), never with SAN (it runs inside postgres). A VPATH
# build keeps src/pgext clean; with_llvm=no skips the JIT bitcode only `make install` would use.
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config

pgext:
	@mkdir -p build/pgext
	@$(MAKE) --no-print-directory -C build/pgext -f $(CURDIR)/src/pgext/Makefile \
		PG_CONFIG=$(PG_CONFIG) with_llvm=no

# Installs the Debian packages that are missing (sudo only when not root).
deps:
	@.ci/install-deps

unit: $(UNIT_BINS)

test: deps
	@$(MAKE) --no-print-directory all unit pgext SAN=$(SAN)
	@SAN=$(SAN) BUILD=$(BUILD) tests/run.sh

# Not part of `make test`: needs Citus installed for PostgreSQL 15 (README, "Citus"); skips
# with the reason where it is not. Two clusters of four servers each, a few minutes.
test-citus: deps
	@$(MAKE) --no-print-directory all SAN=$(SAN)
	@TR_BIN=$(BUILD)/tenant-router SAN=$(SAN) $(or $(PYTHON),/usr/bin/python3) -m pytest -q \
		tests/citus -p no:cacheprovider -rs

fuzz:
	@tests/fuzz/run.sh $(FUZZ_SECONDS)

demo: deps
	@$(MAKE) --no-print-directory all
	@tests/demo/demo.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@tests/bench/run.sh

# Layout (README, Operations, "Install"): the binary, man pages tenant-router(8) and
# tenant-router.ini(5), the unit both as tenant-router.service and as the template
# tenant-router@.service (two instances make a rolling restart), the README and an example INI;
# the example is also copied to $(SYSCONFDIR)/tenant-router/ unless a configuration is there
# already (an upgrade never overwrites it). The unit's /usr/local paths follow PREFIX.
install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSCONFDIR)/tenant-router
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/tenant-router
	install -m 0644 conf/tenant-router.8 $(DESTDIR)$(MANDIR)/man8/tenant-router.8
	install -m 0644 conf/tenant-router.ini.5 $(DESTDIR)$(MANDIR)/man5/tenant-router.ini.5
	sed 's#/usr/local/#$(PREFIX)/#g' conf/tenant-router.service > $(DESTDIR)$(UNITDIR)/tenant-router.service
	sed 's#/usr/local/#$(PREFIX)/#g' conf/tenant-router.service > $(DESTDIR)$(UNITDIR)/tenant-router@.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/tenant-router.service $(DESTDIR)$(UNITDIR)/tenant-router@.service
	install -m 0644 conf/tenant-router.ini conf/tenant-router.service README.md $(DESTDIR)$(DOCDIR)/
	test -e $(DESTDIR)$(SYSCONFDIR)/tenant-router/tenant-router.ini || \
		install -m 0644 conf/tenant-router.ini $(DESTDIR)$(SYSCONFDIR)/tenant-router/tenant-router.ini

# Pure modules must never see libuv or libpq.
lint:
	@! grep -nE '#include <(uv|libpq-fe)\.h>' $(PURE:%=src/%.c) $(PURE:%=include/%.h) \
		|| { echo "lint: a pure module includes uv.h or libpq-fe.h"; exit 1; }
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
		--inline-suppr -Iinclude src

check-headers:
	@for h in include/*.h; do \
		echo "#include \"$$(basename $$h)\"" | $(CC) -std=c11 -D_GNU_SOURCE $(WARN) -Iinclude \
			$(PKGCF) -x c -fsyntax-only - || exit 1; done; echo "headers ok"

format:
	clang-format -i src/*.c include/*.h tests/unit/*.c tests/fuzz/*.c

format-check:
	clang-format --dry-run --Werror src/*.c include/*.h tests/unit/*.c tests/fuzz/*.c

clean:
	rm -rf build

-include $(wildcard $(BUILD)/obj/*.d)
