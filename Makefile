# tenant-router - plain GNU Makefile (no autotools).
#
#   make              build build/tenant-router
#   make test         install what is missing, build, run every test
#   make test SAN=1   the same under ASan + UBSan (objects in build/san)
#   make test-citus   tests/citus against real Citus clusters on loopback (skips without Citus)
#   make pgext        the tenant_guard PostgreSQL library, build/pgext/tenant_guard.so (PGXS)
#   make demo         two local PostgreSQL clusters and the router in front
#   make install      PREFIX=/usr/local DESTDIR=

PREFIX  ?= /usr/local
DESTDIR ?=
CC      ?= cc

PKGS    := libuv libpq libxxhash inih openssl
PURE    := proto startup ring pins route query auth gframe
IO      := log config health citus client client_local client_guard splice cancel main sdnotify tls

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
PKGLIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpg_query -lprotobuf-c
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

install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/doc/tenant-router
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/tenant-router
	install -m 0644 conf/tenant-router.ini conf/tenant-router.service README.md \
		$(DESTDIR)$(PREFIX)/share/doc/tenant-router/

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
