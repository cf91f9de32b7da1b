#!/bin/bash
# Run the unit tests (TAP binaries) and the bats integration suite against
# the build in BUILD_DIR, and close with one "N passed, N failed" line.
# usage: run-tests.sh [--unit-only|--integration-only] BUILD_DIR
set -u

mode=all
case "${1:-}" in
--unit-only) mode=unit; shift ;;
--integration-only) mode=integration; shift ;;
esac
B=${1:?usage: run-tests.sh [--unit-only|--integration-only] BUILD_DIR}
top=$(cd "$(dirname "$0")/.." && pwd)
B=$(cd "$top" && cd "$B" && pwd)

export PLOOPCTL="$B/ploopctl"
export PLOOPFS="$B/ploopfs"
export PF_CORPUS_DIR="$top/tests/corpus/dd"
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:die_after_fork=0}"

passed=0
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Count TAP "ok"/"not ok" lines of a run; echo the failures.
tally() {
	local p f
	p=$(grep -c '^ok ' "$log")
	f=$(grep -c '^not ok ' "$log")
	passed=$((passed + p))
	failed=$((failed + f))
	grep -A20 '^not ok ' "$log" | head -200
	return 0
}

if [ "$mode" != integration ]; then
	for t in "$B"/tests/test_*; do
		[ -x "$t" ] || continue
		name=$(basename "$t")
		(cd "$top" && timeout 600 "$t") >"$log" 2>&1
		rc=$?
		tally
		echo "unit $name: $(grep -c '^ok ' "$log") passed, $(grep -c '^not ok ' "$log") failed (exit $rc)"
		if [ $rc -ne 0 ] && ! grep -q '^not ok ' "$log"; then
			# crashed or sanitizer abort without a failing check
			tail -30 "$log"
			failed=$((failed + 1))
		fi
	done
fi

if [ "$mode" != unit ]; then
	if ! command -v bats >/dev/null; then
		echo "bats not installed: run 'make deps'" >&2
		failed=$((failed + 1))
	else
		(cd "$top" && timeout 3000 bats --tap tests/integration) >"$log" 2>&1
		rc=$?
		tally
		echo "integration: $(grep -c '^ok ' "$log") passed, $(grep -c '^not ok ' "$log") failed (exit $rc)"
		if [ $rc -ne 0 ] && ! grep -q '^not ok ' "$log"; then
			tail -30 "$log"
			failed=$((failed + 1))
		fi
	fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
