#!/bin/bash
# A/B comparison of two ploopfs daemons (two builds, or one build with
# two settings) on one fio job, proof against the host disk's drift.
#
# Each round runs  raw, X, raw, Y, raw  (X and Y swap every round, so
# neither always goes first) and gives each daemon's figure over the mean
# of the raw runs either side of it, with the daemon's CPU time per I/O.
# Whichever mount runs second in a round has measured better, and the
# disk's speed moves by a factor of two within minutes, so single runs
# in a fixed order (as in the first A/B runs of 2026-11-21) mislead;
# compare the means over an even number of rounds.
#
# usage: ab.sh PLOOPCTL JOB ROUNDS SPEC_A SPEC_B
#   JOB   rr32 | rw32 | rr1 | fs1 | sr   (4 KiB random read/write at
#         depth 32, random read at depth 1, fsync'd write, 1 MiB
#         sequential read at depth 8; fio, libaio, direct I/O, 5 s)
#   SPEC  label,ploopfs-binary[,mount options[,VAR=value ...]]
#         e.g. "old,/tmp/ploopfs.old"  "uring,build/release/ploopfs,-o uring"
# env:    AB_DIR (/var/tmp), AB_RUNTIME (5), AB_SIZE_MB (1024)
# Run as root on a quiet machine; -o uring needs the fuse module's
# enable_uring=Y.  Not a test: it prints figures and judges none.
set -uo pipefail
export LC_ALL=C

[ $# -eq 5 ] || { sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
CTL=$1 JOB=$2 ROUNDS=$3 SPEC_A=$4 SPEC_B=$5
RT=${AB_RUNTIME:-5}
SIZE=${AB_SIZE_MB:-1024}
case $JOB in
rr32) JOBARGS=(--rw=randread --bs=4k --iodepth=32) ;;
rw32) JOBARGS=(--rw=randwrite --bs=4k --iodepth=32) ;;
rr1) JOBARGS=(--rw=randread --bs=4k --iodepth=1) ;;
fs1) JOBARGS=(--rw=randwrite --bs=4k --iodepth=1 --fsync=1) ;;
sr) JOBARGS=(--rw=read --bs=1M --iodepth=8) ;;
*) echo "ab: unknown job $JOB" >&2; exit 2 ;;
esac
case $ROUNDS in '' | *[!0-9]* | 0) echo "ab: ROUNDS must be a positive number" >&2; exit 2 ;; esac
command -v fio >/dev/null || { echo "ab: fio not found (make deps)" >&2; exit 2; }
[ -x "$CTL" ] || { echo "ab: $CTL: not an executable" >&2; exit 2; }

W=$(mktemp -d "${AB_DIR:-/var/tmp}/ploopfs-ab.XXXXXX") || exit 1
PID=""
cleanup() {
	mountpoint -q "$W/mnt" 2>/dev/null && fusermount3 -u "$W/mnt"
	[ -n "$PID" ] && kill "$PID" 2>/dev/null
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# fio's IOPS (read or write) of JOB on FILE
run_job() {
	fio --thread --output-format=terse --terse-version=3 --ioengine=libaio \
		--direct=1 --name=ab --filename="$1" "${JOBARGS[@]}" \
		--size="${SIZE}M" --time_based --runtime="$RT" 2>/dev/null |
		awk -F';' '/^3;/ { print ($8 > 0 ? $8 : $49); found = 1 }
			END { exit !found }'
}

# FIG over the mean of the raw runs R0 and R1
ratio() { awk -v v="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.3f", v * 2 / (a + b) }'; }
add() { awk -v a="$1" -v b="$2" 'BEGIN { print a + b }'; }

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# mount SPEC, run the job, unmount: prints "IOPS us-of-daemon-CPU-per-I/O"
run_spec() {
	local bin opts rest envs=() optv=() iops t0 t1 i
	IFS=, read -r _ bin opts rest <<<"$1,"
	[ -n "${rest%,}" ] && read -r -a envs <<<"${rest%,}"
	read -r -a optv <<<"$opts"
	env "${envs[@]}" "$bin" "$W/img" "$W/mnt" "${optv[@]}" || return 1
	for ((i = 0; i < 100; i++)); do
		[ -e "$W/mnt/disk" ] && break
		sleep 0.05
	done
	PID=$(pgrep -f -n " $W/img $W/mnt") || return 1
	t0=$(cpu_ticks "$PID")
	iops=$(run_job "$W/mnt/disk") || return 1
	t1=$(cpu_ticks "$PID")
	fusermount3 -u "$W/mnt" || return 1
	while kill -0 "$PID" 2>/dev/null; do sleep 0.05; done
	PID=""
	awk -v i="$iops" -v c=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v rt="$RT" \
		'BEGIN { printf "%d %.1f\n", i, c / hz * 1e6 / (i * rt) }'
}

"$CTL" init -s "${SIZE}M" "$W/img" >/dev/null || exit 1
mkdir "$W/mnt"
truncate -s "${SIZE}M" "$W/raw" || exit 1
fio --name=fill --filename="$W/raw" --rw=write --bs=1M --direct=1 \
	--ioengine=libaio --iodepth=8 --size="${SIZE}M" >/dev/null || exit 1
# the image gets real data everywhere too, through the first spec
IFS=, read -r _ bin opts _ <<<"$SPEC_A,"
read -r -a optv <<<"$opts"
"$bin" "$W/img" "$W/mnt" "${optv[@]}" || exit 1
fio --name=fill --filename="$W/mnt/disk" --rw=write --bs=1M --direct=1 \
	--ioengine=libaio --iodepth=8 --size="${SIZE}M" >/dev/null || exit 1
fusermount3 -u "$W/mnt" || exit 1
while pgrep -f " $W/img $W/mnt" >/dev/null; do sleep 0.05; done

la=${SPEC_A%%,*} lb=${SPEC_B%%,*}
echo "ab: $JOB, $ROUNDS rounds of raw, X, raw, Y, raw ($RT s each)"
sum_a=0 sum_b=0
for ((r = 1; r <= ROUNDS; r++)); do
	if ((r % 2)); then x=$SPEC_A y=$SPEC_B; else x=$SPEC_B y=$SPEC_A; fi
	if ! { r0=$(run_job "$W/raw") && xr=$(run_spec "$x") &&
		r1=$(run_job "$W/raw") && yr=$(run_spec "$y") &&
		r2=$(run_job "$W/raw"); }; then
		echo "ab: round $r failed" >&2
		exit 1
	fi
	read -r xv xc <<<"$xr"
	read -r yv yc <<<"$yr"
	fx=$(ratio "$xv" "$r0" "$r1")
	fy=$(ratio "$yv" "$r1" "$r2")
	printf 'round %d: raw %s %s %s | %s %s IOPS, %s of raw, %s us CPU/IO | %s %s IOPS, %s of raw, %s us CPU/IO\n' \
		"$r" "$r0" "$r1" "$r2" "${x%%,*}" "$xv" "$fx" "$xc" \
		"${y%%,*}" "$yv" "$fy" "$yc"
	if [ "$x" = "$SPEC_A" ]; then
		sum_a=$(add "$sum_a" "$fx") sum_b=$(add "$sum_b" "$fy")
	else
		sum_a=$(add "$sum_a" "$fy") sum_b=$(add "$sum_b" "$fx")
	fi
done
awk -v a="$sum_a" -v b="$sum_b" -v n="$ROUNDS" -v la="$la" -v lb="$lb" 'BEGIN {
	printf "mean ratio to raw: %s %.3f, %s %.3f (%s/%s %.2f)\n",
		la, a / n, lb, b / n, lb, la, (a > 0 ? b / a : 0) }'
