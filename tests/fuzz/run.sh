#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] - build and run the libFuzzer targets.
#
# Run from the repository root. Builds each tests/fuzz/fuzz_<target>.c with
# clang's libFuzzer under ASan+UBSan into build/fuzz/, runs it for SECONDS
# (default 10) on a scratch copy of tests/fuzz/corpus/<target>/ (the seeds in
# git stay as they are), and prints one line per target. Exits non-zero if a
# target fails to build, crashes, or trips a check; the input that did it is
# kept as build/fuzz/<target>-crash-* (replay: build/fuzz/fuzz_<target> FILE). When clang's fuzzer runtime is missing
# (Debian: apt-get install clang-14 libclang-rt-14-dev) it says so and exits 0.
#
# Environment: FUZZ_CC (default clang), FUZZ_TARGETS (default "startup proto query gframe pframe
# admin directory").
set -u

secs=${1:-10}
case $secs in
'' | *[!0-9]*)
	echo "usage: tests/fuzz/run.sh [SECONDS]" >&2
	exit 2
	;;
esac
cc=${FUZZ_CC:-clang}
targets=${FUZZ_TARGETS:-startup proto query gframe pframe admin directory}
out=build/fuzz
srcs="src/proto.c src/startup.c src/query.c src/gframe.c src/pframe.c src/admin.c src/directory.c
      src/pins.c"
libs="-lpg_query -lprotobuf-c -lxxhash"
cflags="-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Iinclude"

if [ ! -f tests/fuzz/run.sh ] || [ ! -d src ]; then
	echo "fuzz: run from the repository root" >&2
	exit 2
fi
mkdir -p "$out" || exit 1

# Can this compiler link a libFuzzer binary at all?
probe_dir=$(mktemp -d) || exit 1
trap 'rm -rf "$probe_dir"' EXIT
cat >"$probe_dir/probe.c" <<'EOF'
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }
EOF
if ! command -v "$cc" >/dev/null 2>&1; then
	echo "fuzz: skipped: $cc not found (Debian: apt-get install clang-14 libclang-rt-14-dev)"
	exit 0
fi
if ! "$cc" -fsanitize=fuzzer,address,undefined "$probe_dir/probe.c" -o "$probe_dir/probe" \
	>"$probe_dir/probe.log" 2>&1; then
	echo "fuzz: skipped: $cc cannot link -fsanitize=fuzzer ($(head -n 1 "$probe_dir/probe.log"));" \
		"Debian: apt-get install libclang-rt-14-dev"
	exit 0
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=0
for t in $targets; do
	bin=$out/fuzz_$t
	log=$out/fuzz_$t.log
	# shellcheck disable=SC2086 # word splitting of the flag lists is intended
	if ! "$cc" $cflags "tests/fuzz/fuzz_$t.c" $srcs -o "$bin" $libs >"$log" 2>&1; then
		echo "fuzz_$t: FAILED to build (see $log)"
		failed=1
		continue
	fi
	corpus=$(mktemp -d) || exit 1
	if [ -d "tests/fuzz/corpus/$t" ]; then
		cp -R "tests/fuzz/corpus/$t/." "$corpus/"
	fi
	# In a subshell that waits (no exec), so bash's "Aborted" notice goes to the log.
	(
		"$bin" -max_len=12000 -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
			-artifact_prefix="$out/$t-" "$corpus"
		exit $?
	) >>"$log" 2>&1
	rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	ncorpus=$(find "$corpus" -type f | wc -l)
	rm -rf "$corpus"
	if [ "$rc" -ne 0 ]; then
		artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
		echo "fuzz_$t: FAILED (exit $rc) after ${runs:-?} runs; input ${artifact:-?}; log $log"
		failed=1
	else
		echo "fuzz_$t: ok, ${runs:-?} runs in ${secs}s, corpus $ncorpus inputs"
	fi
done
exit "$failed"
