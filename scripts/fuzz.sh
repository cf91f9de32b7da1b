#!/bin/bash
# Run libFuzzer targets built by `make fuzz`, one after the other, each for
# SECONDS.  New inputs go to a scratch corpus under FUZZ_DIR/corpus/<target>
# (the committed tests/corpus/fuzz/<target> only seeds it); with MERGE=1
# those that add coverage are merged into the committed corpus afterwards.
# Crashes are kept under FUZZ_DIR/artifacts/<target>/.  Prints one summary
# line per target and fails if any target found something.
# usage: fuzz.sh FUZZ_DIR SECONDS MERGE TARGET...
set -u
dir=${1:?usage: fuzz.sh FUZZ_DIR SECONDS MERGE TARGET...}
secs=${2:?seconds}
merge=${3:?merge 0 or 1}
shift 3
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
fail=0
summary=()

for t in "$@"; do
	bin=$dir/fuzz_$t
	seeds=tests/corpus/fuzz/$t
	work=$dir/corpus/$t
	art=$dir/artifacts/$t
	log=$dir/fuzz_$t.log
	mkdir -p "$work" "$art" "$seeds"
	echo "fuzz: $t for $secs s (log $log)"
	# -timeout: an input that runs 5 s is a hang; -rss_limit_mb bounds
	# the memory a hostile input may make us take
	nice -n 19 "$bin" -max_total_time="$secs" -timeout=5 \
		-rss_limit_mb=1024 -print_final_stats=1 \
		-artifact_prefix="$art/" "$work" "$seeds" >"$log" 2>&1
	rc=$?
	last=$(grep -E '^#[0-9]+' "$log" | tail -1)
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
	summary+=("$t: rc $rc, ${execs:-?} execs, ${rate:-?}/s; ${last:-no status line}")
	if [ "$rc" -ne 0 ]; then
		grep -E 'ERROR|SUMMARY|fuzz property|Test unit written' "$log" | head -10
		fail=1
	fi
	if [ "$merge" = 1 ] && [ "$rc" -eq 0 ]; then
		nice -n 19 "$bin" -merge=1 -timeout=5 -rss_limit_mb=1024 \
			"$seeds" "$work" >"$log.merge" 2>&1 ||
			{ echo "fuzz: merge of $t failed (log $log.merge)"; fail=1; }
	fi
done
printf '%s\n' "${summary[@]}"
exit $fail
