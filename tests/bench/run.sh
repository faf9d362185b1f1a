#!/usr/bin/env bash
# tests/bench/run.sh - tenant-router vs PgBouncer vs direct, on loopback (issue #5).
#
#   tests/bench/run.sh          the full run (`make bench`): about 15 minutes on 2 CPUs
#   BENCH_QUICK=1 tests/bench/run.sh    1 round, 2 s runs, fewer workloads (a few minutes)
#
# Starts two PostgreSQL 15 servers (fsync off), PgBouncer (session mode) and build/tenant-router on
# 127.0.0.1, runs every workload against direct, pgbouncer and router in interleaved rounds, and
# writes results.md (Markdown tables + met / not met per target), results.tsv, raw.tsv and
# results.png to build/bench/ (or $BENCH_RESULTS_DIR). See tests/bench/README.md.
#
# Installs pgbouncer and gnuplot-nox when missing (sudo only when not root). Exit status: 0, or 1
# when a run failed (marked FAIL in the output), 2 on a setup problem.
#
# Environment: BENCH_ROUNDS (2), BENCH_SECONDS (5), BENCH_QUICK (0), BENCH_RESULTS_DIR
# (build/bench), BENCH_ONLY (comma list of: select,churn,copy,idle,big,route,reload,tls,guard),
# BENCH_GUARD_ROUNDS (4),
# BENCH_COPY_MB (200), BENCH_IDLE_SESSIONS (2000), BENCH_BIG_SESSIONS (10000, 0 skips),
# BENCH_PINS (10000000), BENCH_SCALE (10), BENCH_SAMPLING (0.1), BENCH_ROUTER_LOG_LEVEL (info),
# BENCH_KEEP (0: remove the temp dir), TR_BIN (build/tenant-router), PGBIN.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
PY=/usr/bin/python3
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PGBIN

say() { printf 'bench: %s\n' "$*"; }
die() {
	printf 'bench: error: %s\n' "$*" >&2
	exit 2
}

# --- packages: pgbouncer and gnuplot-nox (the rest comes from .ci/install-deps / make deps) -----
PKGS=(pgbouncer gnuplot-nox)
missing=()
for p in "${PKGS[@]}"; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	[[ $st == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
	say "installing ${missing[*]}"
	SUDO=()
	if ((EUID != 0)); then
		command -v sudo >/dev/null || die "not root and no sudo: apt-get install ${missing[*]}"
		if [[ -t 0 ]]; then SUDO=(sudo); else SUDO=(sudo -n); fi
	fi
	"${SUDO[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >/dev/null
fi
for tool in pgbench psql pgbouncer gnuplot cc "$PGBIN/initdb" "$PGBIN/pg_ctl"; do
	command -v "$tool" >/dev/null || die "$tool not found (run make deps, or .ci/install-deps)"
done
if ! { [[ -x $PY ]] && "$PY" -c 'import psycopg' 2>/dev/null; }; then
	die "$PY with psycopg is needed (Debian package python3-psycopg)"
fi

# --- binaries ------------------------------------------------------------------------------------
OUT=${BENCH_RESULTS_DIR:-build/bench}
[[ $OUT == /* ]] || OUT=$ROOT/$OUT
mkdir -p "$OUT"
TR_BIN=${TR_BIN:-build/tenant-router}
[[ $TR_BIN == /* ]] || TR_BIN=$ROOT/$TR_BIN
[[ -x $TR_BIN ]] || die "$TR_BIN not built (make)"
# Benchmark a private copy: a rebuild in the tree during the run must not swap the binary.
cp "$TR_BIN" "$OUT/tenant-router"
export TR_BIN=$OUT/tenant-router

say "building $OUT/route_bench"
# shellcheck disable=SC2046 # pkg-config output is meant to split
cc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Iinclude \
	$(pkg-config --cflags libxxhash 2>/dev/null) tests/bench/route_bench.c src/ring.c src/pins.c \
	src/route.c src/directory.c $(pkg-config --libs libxxhash 2>/dev/null || echo -lxxhash) \
	-o "$OUT/route_bench"
export ROUTE_BENCH_BIN=$OUT/route_bench
export BENCH_RESULTS_DIR=$OUT

# --- limits: 2 descriptors per routed session, and the idle-session steps hold thousands ----------
hard=$(ulimit -Hn)
if ! ulimit -n 65536 2>/dev/null; then
	ulimit -n "$hard"
	say "open-file limit: 65536 not allowed here (hard limit $hard); using $hard"
fi

exec "$PY" tests/bench/bench.py
