#!/usr/bin/env bash
# Runs every test of tenant-router and ends with one line: "N passed, N failed[, N skipped]".
#
#   SAN=0|1 BUILD=build|build/san tests/run.sh      (make test calls it so, from the repo root)
#
# 1. unit tests: every $BUILD/tests/test_* binary (cmocka; exit code = number of failures)
# 2. tests/fuzz/run.sh, if present and executable (one test: pass/fail by exit code), and the
#    demo's smoke check (tests/demo/demo.sh --smoke: one test)
# 3. the integration suite: pytest on tests/integration against $BUILD/tenant-router
# Exits non-zero if anything failed or if no test ran at all.

set -u

cd "$(dirname "$0")/.." || exit 2
SAN=${SAN:-0}
if [ -z "${BUILD:-}" ]; then
	if [ "$SAN" = 1 ]; then BUILD=build/san; else BUILD=build; fi
fi
PY=${PYTHON:-/usr/bin/python3}

passed=0
failed=0
skipped=0

if [ "$SAN" = 1 ]; then
	export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
	export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi

# --- 1. unit tests ---------------------------------------------------------------------------
for t in "$BUILD"/tests/test_*; do
	[ -f "$t" ] && [ -x "$t" ] || continue
	echo "== unit: $t"
	out=$("$t" 2>&1)
	rc=$?
	printf '%s\n' "$out"
	p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9][0-9]*\) test.*/\1/p' | tail -1)
	f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9][0-9]*\) test.*/\1/p' | tail -1)
	p=${p:-0}
	f=${f:-0}
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		# Crashed or aborted (e.g. a sanitizer report) before cmocka printed its summary.
		echo "!! $t exited $rc without a failure summary"
		f=1
	fi
	if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
		echo "!! $t ran no tests"
		f=1
	fi
	passed=$((passed + p))
	failed=$((failed + f))
done

# --- 2. fuzz smoke pass ----------------------------------------------------------------------
if [ -x tests/fuzz/run.sh ]; then
	echo "== fuzz: tests/fuzz/run.sh"
	if tests/fuzz/run.sh; then
		passed=$((passed + 1))
	else
		echo "!! tests/fuzz/run.sh failed"
		failed=$((failed + 1))
	fi
fi

# --- 2b. the demo, end to end (what `make demo` does, checked and stopped) ----------------------
echo "== demo: tests/demo/demo.sh --smoke"
if TR_BIN="$BUILD/tenant-router" ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 timeout 300 tests/demo/demo.sh --smoke; then
	passed=$((passed + 1))
else
	echo "!! tests/demo/demo.sh --smoke failed"
	failed=$((failed + 1))
fi

# --- 3. integration --------------------------------------------------------------------------
echo "== integration: TR_BIN=$BUILD/tenant-router"
log=$(mktemp /tmp/tr-pytest.XXXXXX)
TR_BIN="$BUILD/tenant-router" SAN="$SAN" "$PY" -m pytest -q tests/integration \
	-p no:cacheprovider 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# pytest's last line, e.g. "3 failed, 40 passed, 1 skipped, 2 errors in 61.2s".
summary=$(grep -E '^=*[ ]*[0-9]+ (passed|failed|error|errors|skipped|xfailed|xpassed|deselected)' "$log" | tail -1)
count() {
	printf '%s\n' "$summary" | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' | head -1
}
ip=$(count passed)
ifl=$(count failed)
ie=$(count 'errors?')
is=$(count skipped)
ip=${ip:-0}
ifl=${ifl:-0}
ie=${ie:-0}
is=${is:-0}
if [ "$rc" -ne 0 ] && [ "$((ifl + ie))" -eq 0 ]; then
	# Collection error, interpreter crash, no tests collected, interrupted run...
	echo "!! pytest exited $rc"
	ifl=1
fi
rm -f "$log"
passed=$((passed + ip))
failed=$((failed + ifl + ie))
skipped=$((skipped + is))

line="$passed passed, $failed failed"
if [ "$skipped" -gt 0 ]; then line="$line, $skipped skipped"; fi
echo "$line"
if [ "$failed" -gt 0 ] || [ "$passed" -eq 0 ]; then
	exit 1
fi
exit 0
