#!/bin/bash
# make crash-soak: N power-cut scenarios from SEED (or N exact cuts at
# crash point POINT), split over one test_crash process per CPU on
# disjoint seed ranges; prints each process's failures and summary.
# usage: crash-soak.sh TEST_CRASH N SEED [POINT]
set -u
bin=${1:?usage: crash-soak.sh TEST_CRASH N SEED [POINT]}
n=${2:?scenarios}
seed=${3:?seed}
point=${4:-}
jobs=$(nproc)
[ "$n" -lt "$jobs" ] && jobs=$n
[ "$jobs" -ge 1 ] || jobs=1
per=$(( (n + jobs - 1) / jobs ))
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pids=()
for ((j = 0; j < jobs; j++)); do
	s=$((seed + j * per))
	c=$per
	[ $((j * per + c)) -gt "$n" ] && c=$((n - j * per))
	[ "$c" -gt 0 ] || break
	# (test_crash takes CRASH_SCENARIOS from the environment over -n)
	(env -u CRASH_SCENARIOS "$bin" ${point:+-p "$point"} -n "$c" -s "$s" 2>/dev/null |
		grep -v '^ok ' >"$tmp/$j.out"; echo "${PIPESTATUS[0]}" >"$tmp/$j.rc") &
	pids+=($!)
	echo "crash-soak: job $j: $c scenarios from seed $s"
done
wait "${pids[@]}"
fail=0
for ((j = 0; j < ${#pids[@]}; j++)); do
	echo "--- job $j (exit $(cat "$tmp/$j.rc"))"
	cat "$tmp/$j.out"
	[ "$(cat "$tmp/$j.rc")" = 0 ] || fail=1
done
exit $fail
