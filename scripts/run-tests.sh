#!/bin/bash
# Run the unit tests (TAP binaries) and the bats integration suite against
# the build in BUILD_DIR, and close with one "N passed, N failed" line.
# The integration run is followed by the daemon's own tests once more over
# FUSE over io_uring: 60-daemon and 80-enospc, or with --uring-only every
# file that mounts (make check-uring).
# usage: run-tests.sh [--unit-only|--integration-only|--uring-only] BUILD_DIR
set -u

mode=all
uring_files="60-daemon 80-enospc"
case "${1:-}" in
--unit-only) mode=unit; shift ;;
--integration-only) mode=integration; shift ;;
--uring-only)
	mode=uring
	uring_files="30-snapshot 32-switch 60-daemon 70-rotate 72-online 80-enospc"
	shift
	;;
esac
B=${1:?usage: run-tests.sh [--unit-only|--integration-only|--uring-only] BUILD_DIR}
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
uring_param=/sys/module/fuse/parameters/enable_uring
uring_saved=""
restore_uring() {
	[ -z "$uring_saved" ] || echo "$uring_saved" >"$uring_param"
	uring_saved=""
}
trap 'rm -f "$log"; restore_uring' EXIT

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

# tally_run NAME RC: tally the run in $log that exited with RC, print its
# line; a run that failed without a failing check (a crash, a sanitizer
# abort, a timeout) counts as one failure.
tally_run() {
	tally
	echo "$1: $(grep -c '^ok ' "$log") passed, $(grep -c '^not ok ' "$log") failed (exit $2)"
	if [ "$2" -ne 0 ] && ! grep -q '^not ok ' "$log"; then
		tail -30 "$log"
		failed=$((failed + 1))
	fi
}

if [ "$mode" = all ] || [ "$mode" = unit ]; then
	for t in "$B"/tests/test_*; do
		[ -x "$t" ] || continue
		name=$(basename "$t")
		(cd "$top" && timeout 600 "$t") >"$log" 2>&1
		tally_run "unit $name" $?
	done
fi

if [ "$mode" != unit ]; then
	if ! command -v bats >/dev/null; then
		echo "bats not installed: run 'make deps'" >&2
		failed=$((failed + 1))
	else
		if [ "$mode" != uring ]; then
			(cd "$top" && timeout 3000 bats --tap --timing tests/integration) >"$log" 2>&1
			rc=$?
			# kept, with each test's time, for the suite's budget
			cp "$log" "$B/integration.tap"
			tally_run integration $rc
		fi
		# The daemon's tests again, every mount over FUSE over
		# io_uring (HACKING, Tests); the parameter is put back after.
		if [ -w "$uring_param" ]; then
			files=()
			for f in $uring_files; do
				files+=("tests/integration/$f.bats")
			done
			uring_saved=$(cat "$uring_param")
			echo Y >"$uring_param"
			(cd "$top" && PF_MOUNT_OPTS="-o uring" PF_EXPECT_URING=1 \
				timeout 3000 bats --tap --timing "${files[@]}") >"$log" 2>&1
			rc=$?
			restore_uring
			tally_run "integration over io_uring ($uring_files)" $rc
		else
			echo "integration over io_uring: skipped (no $uring_param: this kernel has no FUSE over io_uring)"
		fi
	fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
