#!/bin/bash
# Benchmarks of ploopfs (`make bench`): one run of the same fio jobs against
#   raw           a plain file on the host file system (the limit)
#   fuse-null     tests/fuse_ceiling: a FUSE server with ploopfs's setup
#                 that answers zeros and acks writes (the FUSE round trip)
#   fuse-pass     tests/fuse_ceiling over a raw file: one synchronous
#                 O_DIRECT pread/pwrite per request, no mapping
#   fuse-pass-uring  the same served over FUSE over io_uring
#   ploopfs       the disk file of a ploopfs mount of a fresh image
#   ploopfs-uring the same mounted with -o uring (FUSE over io_uring)
#   loop-ploopfs  a loop device (direct I/O) over that file
#   loop-raw      a loop device (direct I/O) over the raw file
#   qsd           qemu-storage-daemon's FUSE export of a fresh parallels image
# all in one work directory, plus mount time and daemon RSS for large
# images and fdatasync calls per client fsync.  Prints a table, writes
# JSON and a PNG chart (tests/bench/report.py).  See tests/bench/README.
#
# usage: run.sh BUILD_DIR        (root: FUSE mounts, loop devices, strace)
# env:   BENCH_RUNTIME  seconds per timed job (5)
#        BENCH_ROUNDS   rounds of the main jobs over all targets (3): each
#                       round takes the targets in a different order, and
#                       the report gives each figure's median, so one bad
#                       minute of the host disk does not make a ratio
#        BENCH_SIZE_MB  size of the file or disk under test (1024)
#        BENCH_DIR      where the work directory goes (/var/tmp); all
#                       targets live on this one file system
#        BENCH_TARGETS  subset of the targets, for debugging (all; the
#                       -uring ones only if the kernel's fuse module has
#                       the enable_uring parameter, which the run sets to
#                       Y for them and puts back afterwards)
#        BENCH_EXTRA    0: skip mount time, RSS and fsync counts (1)
#        BENCH_FSYNC_N  fsync'd writes per fdatasync count (256)
#        BENCH_WAIT_IDLE  seconds to wait for running test suites (600)
#        BENCH_SNAP     0: skip the snapshot benchmarks (1): snapshot
#                       rotation stall and merge throughput
#        BENCH_ROT_RUNTIME  seconds of each rotation fio run (30)
#        BENCH_ROT_SIZE_MB  disk size of the rotation runs (BENCH_SIZE_MB)
#        BENCH_ROT_KEEP     snapshots kept by the rotation (2)
#        BENCH_MERGE_MB     MiB merged by snapshot-delete and copied by cp (512)
#
# Not a test: no figure is judged.  The exit status is non-zero when a
# target or a measurement could not be taken.
set -uo pipefail
export LC_ALL=C

top=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
B=$(cd "$1" && pwd) || exit 2
PLOOPFS=$B/ploopfs
PLOOPCTL=$B/ploopctl
FCEIL=$B/tests/fuse_ceiling		# the fuse-null, fuse-pass(-uring) server

RT=${BENCH_RUNTIME:-5}
ROUNDS=${BENCH_ROUNDS:-3}
SIZE=${BENCH_SIZE_MB:-1024}
BASE=${BENCH_DIR:-/var/tmp}
# FUSE over io_uring: the fuse module's parameter (Linux 6.14 and later)
URING_PARAM=/sys/module/fuse/parameters/enable_uring
if [ -e "$URING_PARAM" ]; then
	ALL_TARGETS="raw fuse-null fuse-pass fuse-pass-uring ploopfs ploopfs-uring loop-ploopfs loop-raw qsd"
else
	ALL_TARGETS="raw fuse-null fuse-pass ploopfs loop-ploopfs loop-raw qsd"
fi
TARGETS=${BENCH_TARGETS:-$ALL_TARGETS}
[ "$TARGETS" = none ] && TARGETS=""	# only the extras and snapshots
EXTRA=${BENCH_EXTRA:-1}
FSYNC_N=${BENCH_FSYNC_N:-256}
WAIT_IDLE=${BENCH_WAIT_IDLE:-600}
SNAP=${BENCH_SNAP:-1}
ROT_RT=${BENCH_ROT_RUNTIME:-30}
ROT_MB=${BENCH_ROT_SIZE_MB:-$SIZE}
ROT_KEEP=${BENCH_ROT_KEEP:-2}
MERGE_MB=${BENCH_MERGE_MB:-512}
OUT=$(dirname "$B")/bench		# timestamped results: build/bench/
LATEST=$top/tests/bench/results		# latest.json, latest.png

FIO_LIMIT=$((RT + 600))		# any single fio run
ENOSPC_S=30			# -o enospc_timeout of the daemons
DAEMON_LIMIT=$((RT * 120 + 1800))	# a daemon outlives no whole run
CMD_LIMIT=120			# ploopctl, qemu-img, losetup, fusermount3

for v in RT ROUNDS SIZE FSYNC_N WAIT_IDLE SNAP ROT_RT ROT_MB ROT_KEEP MERGE_MB; do
	case ${!v} in
	'' | *[!0-9]*) echo "bench: $v must be a whole number" >&2; exit 2 ;;
	esac
done
if [ "$RT" -lt 1 ] || [ "$ROUNDS" -lt 1 ] || [ "$SIZE" -lt 64 ] ||
	[ "$FSYNC_N" -lt 1 ]; then
	echo "bench: BENCH_RUNTIME >= 1, BENCH_ROUNDS >= 1, BENCH_SIZE_MB >= 64, BENCH_FSYNC_N >= 1" >&2
	exit 2
fi
if [ "$ROT_RT" -lt 1 ] || [ "$ROT_MB" -lt 64 ] || [ "$ROT_KEEP" -lt 1 ] ||
	[ "$MERGE_MB" -lt 1 ]; then
	echo "bench: BENCH_ROT_RUNTIME >= 1, BENCH_ROT_SIZE_MB >= 64, BENCH_ROT_KEEP >= 1, BENCH_MERGE_MB >= 1" >&2
	exit 2
fi

W=""
RES=""
FAILED=()		# "target: reason" for every measurement not taken
LOOPS=()		# loop devices we attached
THIN_LOOP=""		# the loop device under the 1 TiB image
TPIDS=()		# timeout(1) wrappers of our daemons
PF_TPID="" PF_PID="" PF_MNT="" PF_DIR="" MOUNT_US=0
Q_TPID="" Q_PID=""
FC_TPID=""		# timeout(1) wrapper of fuse_ceiling
FC_LOGOFF=0		# where its lines start in fuse_ceiling.log
URING_ORIG=""		# enable_uring as found, put back by uring_restore
URING_SEEN=" "		# -uring targets seen on io_uring (" t1 t2 ")
URING_SKIP=""		# why the current -uring target is skipped
RING_REQS=0		# requests over io_uring of the current target
ROT_PID=""		# the snapshot rotation loop
SKIPPED=0		# a measurement skipped for lack of space
LOOP="" TFILE=""
FIO_LINE=""

log() { printf 'bench: %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; FAILED+=("$*"); }
now_us() { echo "${EPOCHREALTIME/./}"; }
record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$RES"; }	# kind key target value

# ---------------------------------------------------------------- cleanup

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
	local d m t i
	trap '' INT TERM
	[ -n "$ROT_PID" ] && kill "$ROT_PID" 2>/dev/null
	# loop devices over FUSE disk files first; the one under the thin
	# ext4 (bench_mount) only once that is unmounted, below
	for d in "${LOOPS[@]}"; do
		[ "$d" = "$THIN_LOOP" ] && continue
		timeout 30 losetup -d "$d" 2>/dev/null
	done
	if [ -n "$W" ]; then
		# every FUSE mount we made is under $W (ploopfs dirs, qsd file,
		# fuse_ceiling); the thin ext4 at $W/thin/mnt is not one of them
		while read -r m; do
			timeout 30 fusermount3 -u "$m" 2>/dev/null ||
				timeout 30 umount -l "$m" 2>/dev/null
		done < <(findmnt -rn -o TARGET | grep -F "$W/" |
			grep -vxF "$W/thin/mnt" | sort -r)
	fi
	for t in "${TPIDS[@]}"; do
		kill -0 "$t" 2>/dev/null && kill -TERM "$t" 2>/dev/null
	done
	for t in "${TPIDS[@]}"; do
		for ((i = 0; i < 300; i++)); do
			kill -0 "$t" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$t" 2>/dev/null && kill -KILL "$t" 2>/dev/null
		wait "$t" 2>/dev/null
	done
	# the thin ext4 of the 1 TiB image: its daemon is gone now
	if [ -n "$W" ] && findmnt -rn -M "$W/thin/mnt" >/dev/null; then
		for ((i = 0; i < 50; i++)); do
			timeout 30 umount "$W/thin/mnt" 2>/dev/null && break
			sleep 0.1
		done
		findmnt -rn -M "$W/thin/mnt" >/dev/null &&
			timeout 30 umount -l "$W/thin/mnt" 2>/dev/null
	fi
	# a busy device would be detached when its last user lets go
	[ -n "$THIN_LOOP" ] && timeout 30 losetup -d "$THIN_LOOP" 2>/dev/null
	uring_restore	# no daemon of ours uses the rings any more
	if [ -n "$W" ] && [ -d "$W" ]; then
		if findmnt -rn -o TARGET | grep -qF "$W/"; then
			log "left $W in place: something is still mounted there"
		else
			rm -rf "$W"
		fi
	fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- helpers

# Run fio with the common options; FIO_LINE gets the terse (v3) line.
# Terse fields: 5 error, 6 read KiB, 7 read KiB/s, 8 read IOPS,
# 9 read ms, 47 write KiB, 48 write KiB/s, 49 write IOPS, 50 write ms.
# usage: run_fio NAME FILE RW BS IODEPTH [fio options]
run_fio() {
	local out rc
	out=$(timeout --foreground -k 10 "$FIO_LIMIT" fio --thread \
		--output-format=terse --terse-version=3 --ioengine=libaio \
		--direct=1 --group_reporting --name="$1" --filename="$2" \
		--rw="$3" --bs="$4" --iodepth="$5" "${@:6}" 2>>"$W/fio.err")
	rc=$?
	FIO_LINE=$(printf '%s\n' "$out" | grep '^3;' | tail -n 1)
	if [ $rc -ne 0 ] || [ -z "$FIO_LINE" ] || [ "$(fld 5)" != 0 ]; then
		log "fio $1 on $2: exit $rc, error field '$(fld 5)'"
		tail -n 5 "$W/fio.err" >&2
		return 1
	fi
}
fld() { cut -d';' -f"$1" <<<"$FIO_LINE"; }
# KiB/s -> MiB/s, and a plain number with one decimal
mibs() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
num() { awk -v k="$1" 'BEGIN { printf "%.1f", k }'; }

# Timed job: TIMED_FIO NAME FILE RW BS QD [options]; sets FIO_LINE.
timed_fio() {
	run_fio "$@" --size="${SIZE}M" --time_based --runtime="$RT"
}

# One untimed sequential write over the whole file: real data everywhere.
fill() {
	run_fio fill "$1" write 1M 8 --size="${SIZE}M" "${@:2}"
}

# Wait until no test suite (bats, unit tests) runs: they would skew the
# figures and the benchmarks would slow them down (and the integration
# tests switch enable_uring).  bats's test processes are named bash.
wait_quiet() {
	local t0=$SECONDS said=0
	while pgrep '^bats' >/dev/null || pgrep -f 'bats-core/bats' >/dev/null ||
		pgrep '^test_' >/dev/null; do
		if [ $said -eq 0 ]; then
			log "test suites are running; waiting (at most ${WAIT_IDLE}s)"
			said=1
		fi
		if [ $((SECONDS - t0)) -ge "$WAIT_IDLE" ]; then
			log "still running after ${WAIT_IDLE}s: measuring anyway"
			record meta warning all "measured while test suites ran"
			return 0
		fi
		sleep 2
	done
}

# ---------------------------------------------------------------- ploopfs

# pf_mount DIR MNT [OPTIONS]: start ploopfs in the foreground (-f) in the
# background, so that we know its pid; OPTIONS go to ploopfs (-o uring).
# MOUNT_US is the time from the start to the first successful lookup of
# MNT/disk.  The poll uses bash builtins only (EPOCHREALTIME, test -e): no
# fork blurs the figure.  A daemon that hangs is ended by its own timeout.
pf_mount() {
	local t0 deadline
	PF_DIR=$1 PF_MNT=$2
	mkdir -p "$PF_MNT"
	t0=${EPOCHREALTIME/./}
	# A full host file system fails the writes after ENOSPC_S seconds
	# instead of holding them (ploopfs(8), OUT OF SPACE): the run fails
	# instead of hanging with the host full.
	timeout -k 10 "$DAEMON_LIMIT" "$PLOOPFS" -f \
		-o enospc_timeout="$ENOSPC_S" "${@:3}" "$PF_DIR" "$PF_MNT" \
		2>>"$W/ploopfs.log" &
	PF_TPID=$!
	TPIDS+=("$PF_TPID")
	deadline=$((SECONDS + 60))
	until [ -e "$PF_MNT/disk" ]; do
		if ! kill -0 "$PF_TPID" 2>/dev/null; then
			wait "$PF_TPID"
			log "ploopfs $PF_DIR exited ($?) before serving:"
			tail -n 5 "$W/ploopfs.log" >&2
			PF_TPID=""
			return 1
		fi
		if [ $SECONDS -ge $deadline ]; then
			log "ploopfs $PF_DIR: $PF_MNT/disk not there after 60 s"
			return 1
		fi
		sleep 0.001
	done
	MOUNT_US=$((${EPOCHREALTIME/./} - t0))
	PF_PID=$(pgrep -P "$PF_TPID" | head -n 1)
	[ -n "$PF_PID" ] || { log "ploopfs: no daemon pid"; return 1; }
}

# Clean stop: unmount, wait for the daemon to exit and for the image lock
# to go (ploopctl check stops answering "busy", exit status 5); the
# daemon's exit status and the check's verdict are recorded if not clean.
pf_umount() {
	local i rc
	[ -n "$PF_TPID" ] || return 0
	for ((i = 0; i < 50; i++)); do
		timeout "$CMD_LIMIT" fusermount3 -u "$PF_MNT" 2>/dev/null && break
		findmnt -rn -M "$PF_MNT" >/dev/null || break
		sleep 0.1	# the loop device may still hold the file
	done
	for ((i = 0; i < 1200; i++)); do
		kill -0 "$PF_TPID" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$PF_TPID" 2>/dev/null; then
		log "ploopfs $PF_DIR did not stop within 60 s"
		return 1
	fi
	wait "$PF_TPID"
	rc=$?
	PF_TPID="" PF_PID=""
	if [ $rc -ne 0 ]; then
		log "ploopfs $PF_DIR exited with status $rc"
		record problem "ploopfs exit status $rc" "$PF_DIR" 1
	fi
	for ((i = 0; i < 600; i++)); do
		rc=0
		timeout "$CMD_LIMIT" "$PLOOPCTL" check "$PF_DIR" >"$W/check.out" 2>&1 ||
			rc=$?
		[ $rc -ne 5 ] && break
		sleep 0.05
	done
	if [ $rc -ne 0 ]; then
		log "ploopctl check $PF_DIR after a clean stop: status $rc"
		cat "$W/check.out" >&2
		record problem "check status $rc after clean stop" "$PF_DIR" 1
	fi
	[ $rc -ne 5 ]
}

pf_init() {	# pf_init DIR SIZE [ploopctl init options]
	rm -rf "$1"
	timeout "$CMD_LIMIT" "$PLOOPCTL" init -s "$2" "${@:3}" "$1" >/dev/null
}

pf_snapshot() {
	timeout "$CMD_LIMIT" "$PLOOPCTL" snapshot "$1" >/dev/null
}

# "allocated_clusters cluster_size" of the top delta of an image
pf_top_alloc() {
	timeout "$CMD_LIMIT" "$PLOOPCTL" info --json "$1" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)["deltas"][-1]
print(d["allocated_clusters"], d["cluster_size"])'
}

vmrss() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
vmhwm() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$1/status"; }

# ---------------------------------------------------------------- loop, qsd

loop_attach() {
	LOOP=$(timeout "$CMD_LIMIT" losetup -f --show --direct-io=on "$1") ||
		return 1
	LOOPS+=("$LOOP")
	TFILE=$LOOP
}

loop_detach() {
	local i d rest=()
	[ -n "$LOOP" ] || return 0
	timeout "$CMD_LIMIT" losetup -d "$LOOP" || return 1
	for d in "${LOOPS[@]}"; do
		[ "$d" = "$LOOP" ] || rest+=("$d")
	done
	LOOPS=("${rest[@]}")
	for ((i = 0; i < 100; i++)); do	# detach completes asynchronously
		[ -z "$(losetup -n -O BACK-FILE "$LOOP" 2>/dev/null)" ] && break
		sleep 0.05
	done
	LOOP=""
}

qsd_start() {	# a fresh parallels image in $W/q, exported at $W/q/export
	local i
	rm -rf "$W/q"
	mkdir -p "$W/q"
	timeout "$CMD_LIMIT" qemu-img create -q -f parallels "$W/q/root.hds" \
		"${SIZE}M" || return 1
	: >"$W/q/export"
	timeout -k 10 "$DAEMON_LIMIT" qemu-storage-daemon \
		--blockdev "driver=file,node-name=f0,filename=$W/q/root.hds,cache.direct=on,aio=native" \
		--blockdev driver=parallels,node-name=p0,file=f0 \
		--export "type=fuse,id=e0,node-name=p0,mountpoint=$W/q/export,writable=on" \
		>>"$W/qsd.log" 2>&1 &
	Q_TPID=$!
	TPIDS+=("$Q_TPID")
	for ((i = 0; i < 600; i++)); do
		findmnt -rn -M "$W/q/export" >/dev/null && break
		if ! kill -0 "$Q_TPID" 2>/dev/null; then
			log "qemu-storage-daemon exited:"
			tail -n 5 "$W/qsd.log" >&2
			Q_TPID=""
			return 1
		fi
		sleep 0.05
	done
	Q_PID=$(pgrep -P "$Q_TPID" | head -n 1)
	findmnt -rn -M "$W/q/export" >/dev/null || {
		log "qemu-storage-daemon: no export after 30 s"
		return 1
	}
	TFILE=$W/q/export
}

qsd_stop() {
	local i
	[ -n "$Q_TPID" ] || return 0
	[ -n "$Q_PID" ] && kill -TERM "$Q_PID" 2>/dev/null
	for ((i = 0; i < 600; i++)); do
		kill -0 "$Q_TPID" 2>/dev/null || break
		sleep 0.05
	done
	kill -0 "$Q_TPID" 2>/dev/null && kill -KILL "$Q_TPID" 2>/dev/null
	wait "$Q_TPID" 2>/dev/null
	Q_TPID="" Q_PID=""
	if findmnt -rn -M "$W/q/export" >/dev/null; then
		timeout "$CMD_LIMIT" fusermount3 -u "$W/q/export" || return 1
	fi
}

# ---------------------------------------------------------------- FUSE ceilings

# fc_start TARGET [BACKING]: tests/fuse_ceiling serving $W/fcmnt/disk
# (SIZE MiB): zeros and acknowledged writes without BACKING (fuse-null), a
# synchronous O_DIRECT pread/pwrite of BACKING per request with it
# (fuse-pass); for a TARGET ending in -uring over FUSE over io_uring
# (FUSE_CEILING_URING=1), checked with the transport it reports.  It runs
# in the foreground: started in the background under timeout, like
# ploopfs, and stopped by unmounting.
fc_start() {
	local deadline m=$W/fcmnt t=$1 u=0 tr=""
	shift
	[ "${t%-uring}" != "$t" ] && u=1
	mkdir -p "$m"
	FC_LOGOFF=$(stat -c %s "$W/fuse_ceiling.log" 2>/dev/null || echo 0)
	FUSE_CEILING_URING=$u timeout -k 10 "$DAEMON_LIMIT" "$FCEIL" "$m" \
		"$SIZE" "$@" 2>>"$W/fuse_ceiling.log" &
	FC_TPID=$!
	TPIDS+=("$FC_TPID")
	deadline=$((SECONDS + 60))
	until [ -e "$m/disk" ]; do
		if ! kill -0 "$FC_TPID" 2>/dev/null; then
			wait "$FC_TPID"
			log "fuse_ceiling exited ($?) before serving:"
			tail -n 5 "$W/fuse_ceiling.log" >&2
			FC_TPID=""
			return 1
		fi
		if [ $SECONDS -ge $deadline ]; then
			log "fuse_ceiling: $m/disk not there after 60 s"
			return 1
		fi
		sleep 0.01
	done
	TFILE=$m/disk
	[ $u = 1 ] || return 0
	# it says which transport serves once its rings are up (or in 10 s)
	deadline=$((SECONDS + 20))
	while [ -z "$tr" ] && [ $SECONDS -lt $deadline ]; do
		tr=$(fc_log | sed -n 's/^fuse_ceiling: transport //p' | tail -n 1)
		[ -n "$tr" ] || sleep 0.05
	done
	uring_verdict "$t" "$tr" "fuse_ceiling with FUSE_CEILING_URING=1"
}

# this fuse_ceiling's lines in the log
fc_log() { tail -c +$((FC_LOGOFF + 1)) "$W/fuse_ceiling.log" 2>/dev/null; }

fc_stop() {
	local i rc n m=$W/fcmnt
	[ -n "$FC_TPID" ] || return 0
	for ((i = 0; i < 50; i++)); do
		timeout "$CMD_LIMIT" fusermount3 -u "$m" 2>/dev/null && break
		findmnt -rn -M "$m" >/dev/null || break
		sleep 0.1
	done
	for ((i = 0; i < 600; i++)); do
		kill -0 "$FC_TPID" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$FC_TPID" 2>/dev/null; then
		log "fuse_ceiling did not stop within 30 s"
		return 1
	fi
	wait "$FC_TPID"
	rc=$?
	FC_TPID=""
	# its last words over io_uring: "fuse_ceiling: N requests over io_uring"
	n=$(fc_log | sed -n 's/^fuse_ceiling: \([0-9]*\) requests over io_uring$/\1/p' |
		tail -n 1)
	[ -n "$n" ] && RING_REQS=$((RING_REQS + n))
	[ $rc -eq 0 ] || { log "fuse_ceiling exited with status $rc"; return 1; }
}

# ---------------------------------------------------------------- io_uring

# uring_enable: the fuse module's enable_uring=Y for a -uring target; the
# value it had is kept for uring_restore (cleanup restores it too, also on
# failure or Ctrl-C).  Fails, with URING_SKIP saying why, if this kernel
# has no FUSE over io_uring or the parameter cannot be set.
uring_enable() {
	local v
	if [ ! -e "$URING_PARAM" ]; then
		URING_SKIP="this kernel has no FUSE over io_uring (no $URING_PARAM)"
		return 1
	fi
	if ! v=$(cat "$URING_PARAM"); then
		URING_SKIP="cannot read $URING_PARAM"
		return 1
	fi
	[ -n "$URING_ORIG" ] || URING_ORIG=$v
	[ "$v" = Y ] || echo Y >"$URING_PARAM" 2>/dev/null
	if [ "$(cat "$URING_PARAM")" != Y ]; then
		URING_SKIP="cannot set $URING_PARAM to Y"
		return 1
	fi
}

# uring_restore: enable_uring as uring_enable found it
uring_restore() {
	[ -n "$URING_ORIG" ] || return 0
	if [ "$(cat "$URING_PARAM" 2>/dev/null)" != "$URING_ORIG" ] &&
		! echo "$URING_ORIG" >"$URING_PARAM"; then
		log "cannot put $URING_PARAM back to $URING_ORIG"
		return 1
	fi
	URING_ORIG=""
}

# uring_verdict TARGET TRANSPORT WHAT: whether TARGET's server (WHAT) runs
# over io_uring.  If not, the first time the target is skipped (the
# kernel does not offer it: URING_SKIP says so); once it has been seen
# on io_uring in this run, falling back to /dev/fuse is a failure.
uring_verdict() {
	if [ "$2" = io_uring ]; then
		case $URING_SEEN in *" $1 "*) ;; *) URING_SEEN="$URING_SEEN$1 " ;; esac
		return 0
	fi
	case $URING_SEEN in
	*" $1 "*)
		log "$1: $3 now served over ${2:-an unknown transport}, not io_uring" ;;
	*)
		if [ -n "$2" ]; then
			URING_SKIP="$3 served over $2, not io_uring"
		else
			URING_SKIP="$3 did not say which transport serves it"
		fi
		URING_SKIP="$URING_SKIP (enable_uring $(cat "$URING_PARAM" 2>/dev/null))" ;;
	esac
	return 1
}

# pf_uring_check: the ploopfs just mounted (-o uring) serves over io_uring
# (ploopctl status --json: fuse_transport), once its rings are up
pf_uring_check() {
	local i tr=""
	for ((i = 0; i < 100; i++)); do
		tr=$(pf_status_get "$PF_DIR" fuse_transport 2>/dev/null)
		[ "$tr" = io_uring ] && break
		sleep 0.1
	done
	uring_verdict ploopfs-uring "$tr" "ploopfs -o uring"
}

# pf_ring_count: add the requests the running ploopfs took from its rings
# to RING_REQS
pf_ring_count() {
	local n
	[ -n "$PF_TPID" ] || return 0
	n=$(pf_status_get "$PF_DIR" fuse_ring_requests 2>/dev/null)
	case $n in
	'' | *[!0-9]*) ;;
	*) RING_REQS=$((RING_REQS + n)) ;;
	esac
}

# target_skip T: a -uring target that cannot run here (URING_SKIP): said,
# kept in the results, not a failure of the run
target_skip() {
	log "$1: skipped: $URING_SKIP"
	record skipped "$URING_SKIP" "$1" 1
	SKIPPED=1	# not a complete run: latest.json stays
}

# ---------------------------------------------------------------- targets

# target_up T: a fresh (empty, sparse) file or disk of SIZE MiB for T in
# TFILE; target_down T removes it again.
target_up() {
	case $1 in
	raw | loop-raw)
		rm -f "$W/raw.img"
		truncate -s "${SIZE}M" "$W/raw.img" || return 1
		TFILE=$W/raw.img
		[ "$1" = raw ] || loop_attach "$W/raw.img"
		;;
	ploopfs | loop-ploopfs)
		pf_init "$W/pimg" "${SIZE}M" || return 1
		pf_mount "$W/pimg" "$W/pmnt" || return 1
		TFILE=$W/pmnt/disk
		[ "$1" = ploopfs ] || loop_attach "$W/pmnt/disk"
		;;
	ploopfs-uring)
		pf_init "$W/pimg" "${SIZE}M" || return 1
		pf_mount "$W/pimg" "$W/pmnt" -o uring || return 1
		TFILE=$W/pmnt/disk
		pf_uring_check
		;;
	fuse-null) fc_start "$1" ;;
	fuse-pass | fuse-pass-uring)
		rm -f "$W/raw.img"
		truncate -s "${SIZE}M" "$W/raw.img" || return 1
		fc_start "$1" "$W/raw.img"
		;;
	qsd) qsd_start ;;
	*) log "unknown target $1"; return 1 ;;
	esac
}

target_down() {
	case $1 in
	raw) rm -f "$W/raw.img" ;;
	loop-raw) loop_detach && rm -f "$W/raw.img" ;;
	ploopfs) pf_umount && rm -rf "$W/pimg" ;;
	ploopfs-uring) pf_ring_count; pf_umount && rm -rf "$W/pimg" ;;
	loop-ploopfs) loop_detach && pf_umount && rm -rf "$W/pimg" ;;
	qsd) qsd_stop && rm -rf "$W/q" ;;
	fuse-null) fc_stop ;;
	fuse-pass | fuse-pass-uring) fc_stop && rm -f "$W/raw.img" ;;
	esac
}

# seqwrite_1M_qd8 allocates: every pass goes into a fresh file or image.
# A time-based job would wrap around after one pass (about a second at
# 1 GiB) and measure overwrites for the rest of the run, so the job runs
# whole fresh passes until BENCH_RUNTIME seconds have gone by and reports
# the bytes of all passes over fio's time of all passes.
bench_seqwrite() {
	local t=$1 kib=0 ms=0 passes=0 t0=$SECONDS left
	while :; do
		left=$((RT - (SECONDS - t0)))
		[ $left -ge 1 ] || left=1
		target_up "$t" || return 1
		run_fio seqwrite_1M_qd8 "$TFILE" write 1M 8 --size="${SIZE}M" \
			--runtime="$left" || return 1
		kib=$((kib + $(fld 47)))
		ms=$((ms + $(fld 50)))
		passes=$((passes + 1))
		target_down "$t" || return 1
		if [ $((SECONDS - t0)) -ge "$RT" ] || [ $passes -ge 1000 ]; then
			break
		fi
	done
	[ $ms -gt 0 ] || { log "seqwrite: no time measured"; return 1; }
	record job seqwrite_1M_qd8 "$t" \
		"$(awk -v k=$kib -v m=$ms 'BEGIN { printf "%.1f", k / 1024 / (m / 1000) }')"
	record detail seqwrite_passes "$t" "$passes"
}

bench_target() {
	local t=$1
	log "== $t"
	RING_REQS=0
	bench_seqwrite "$t" || return 1
	target_up "$t" || return 1
	fill "$TFILE" || return 1
	timed_fio seqread_1M_qd8 "$TFILE" read 1M 8 || return 1
	record job seqread_1M_qd8 "$t" "$(mibs "$(fld 7)")"
	timed_fio randread_4k_qd32 "$TFILE" randread 4k 32 || return 1
	record job randread_4k_qd32 "$t" "$(num "$(fld 8)")"
	timed_fio randread_4k_qd1 "$TFILE" randread 4k 1 || return 1
	record job randread_4k_qd1 "$t" "$(num "$(fld 8)")"
	timed_fio randwrite_4k_qd32 "$TFILE" randwrite 4k 32 || return 1
	record job randwrite_4k_qd32 "$t" "$(num "$(fld 49)")"
	timed_fio randwrite_4k_qd1_fsync "$TFILE" randwrite 4k 1 --fsync=1 ||
		return 1
	record job randwrite_4k_qd1_fsync "$t" "$(num "$(fld 49)")"
	target_down "$t" || return 1
	# requests that came over the rings, all mounts of the target
	case $t in
	*-uring) record detail ring_requests "$t" "$RING_REQS" ;;
	esac
}

# Copy-on-write: fill the disk, snapshot it (offline), then random 4 KiB
# writes: the first write into each cluster copies it up from the
# snapshot.  Copied bytes = the top delta's allocated clusters times the
# cluster size after the run, over the bytes fio wrote.
bench_cow() {
	local d=$W/cow m=$W/cowmnt wkib alloc cs
	log "== ploopfs: cow_randwrite_4k_qd32"
	pf_init "$d" "${SIZE}M" || return 1
	pf_mount "$d" "$m" || return 1
	fill "$m/disk" || return 1
	pf_umount || return 1
	pf_snapshot "$d" || return 1
	pf_mount "$d" "$m" || return 1
	timed_fio cow_randwrite_4k_qd32 "$m/disk" randwrite 4k 32 || return 1
	record job cow_randwrite_4k_qd32 ploopfs "$(mibs "$(fld 48)")"
	wkib=$(fld 47)
	pf_umount || return 1
	read -r alloc cs < <(pf_top_alloc "$d") || return 1
	[ -n "$cs" ] || return 1
	record detail cow_bytes_written ploopfs $((wkib * 1024))
	record detail cow_clusters_copied ploopfs "$alloc"
	record detail cow_bytes_copied ploopfs $((alloc * cs))
	record detail cow_copied_per_written ploopfs \
		"$(awk -v a="$alloc" -v c="$cs" -v w="$wkib" \
			'BEGIN { printf "%.3f", a * c / (w * 1024) }')"
	rm -rf "$d"
}

# Random reads over a disk whose data is spread over three deltas: all of
# it in the base, every third cluster (from 1) in the middle delta, every
# third cluster (from 2) in the top delta.
bench_3deltas() {
	local d=$W/d3 m=$W/d3mnt cs n
	log "== ploopfs: randread_4k_qd32_3deltas"
	pf_init "$d" "${SIZE}M" || return 1
	read -r _ cs < <(pf_top_alloc "$d") || return 1
	[ -n "$cs" ] || return 1
	pf_mount "$d" "$m" || return 1
	fill "$m/disk" || return 1
	pf_umount && pf_snapshot "$d" && pf_mount "$d" "$m" || return 1
	# fio's size counts from the offset (past the end fio would try to
	# re-create the file); with a skip ("write:<skip>") fio wraps around
	# until it has done "size" bytes of I/O, so number_ios ends the pass.
	n=$((SIZE * 1048576 / cs))
	run_fio level1 "$m/disk" "write:$((2 * cs))" "$cs" 8 \
		--offset="$cs" --size=$((SIZE * 1048576 - cs)) \
		--number_ios=$(((n + 1) / 3)) || return 1
	pf_umount && pf_snapshot "$d" && pf_mount "$d" "$m" || return 1
	run_fio level2 "$m/disk" "write:$((2 * cs))" "$cs" 8 \
		--offset=$((2 * cs)) --size=$((SIZE * 1048576 - 2 * cs)) \
		--number_ios=$((n / 3)) || return 1
	timed_fio randread_4k_qd32_3deltas "$m/disk" randread 4k 32 || return 1
	record job randread_4k_qd32_3deltas ploopfs "$(num "$(fld 8)")"
	pf_umount || return 1
	rm -rf "$d"
}

# ---------------------------------------------------------------- extras

# Mount time and RSS of an image: three mounts, each timed from the start
# of ploopfs to the first successful lookup of the disk file (the median
# is reported); RSS right after the third mount and after 4096 random
# 4 KiB reads.
measure_mount() {
	local label=$1 d=$2 m=$W/mmnt i times=()
	for i in 1 2 3; do
		pf_mount "$d" "$m" || return 1
		times+=("$MOUNT_US")
		if [ $i -eq 3 ]; then
			record extra mount_rss_kib "$label" "$(vmrss "$PF_PID")"
			run_fio rss "$m/disk" randread 4k 8 --number_ios=4096 \
				--runtime=60 --size=100% || return 1
			record extra reads_rss_kib "$label" "$(vmrss "$PF_PID")"
			record extra reads_hwm_kib "$label" "$(vmhwm "$PF_PID")"
		fi
		pf_umount || return 1
	done
	record extra mount_ms "$label" "$(printf '%s\n' "${times[@]}" | sort -n |
		awk 'NR == 2 { printf "%.1f", $1 / 1e3 }')"
	record extra mount_ms_all "$label" "$(printf '%s\n' "${times[@]}" |
		awk '{ printf "%s%.1f", (NR > 1 ? " " : ""), $1 / 1e3 }')"
}

bench_mount() {
	local d=$W/big t0 alloc cs
	log "== mount time and RSS: 16 TiB sparse"
	t0=$(now_us)
	pf_init "$d" 16T || return 1
	record extra init_ms 16TiB_sparse "$((($(now_us) - t0) / 1000))"
	measure_mount 16TiB_sparse "$d" || return 1
	rm -rf "$d"

	# 10% of the clusters of a 1 TiB disk: one 4 KiB write at the start
	# of every 10th cluster through the mount (fio's "write:<skip>"
	# strides 10 clusters per write; number_ios stops it after one
	# pass).  It goes through the daemon's own allocation path instead
	# of forging a BAT.  The daemon gives every new cluster its space
	# (fallocate), about 100 GiB here, so the image lives on an ext4
	# made on a sparse file: fallocate there reserves extents without
	# writing them, and the host spends only what is written (4 KiB per
	# cluster, the BAT and the file system's metadata), under 1 GiB.
	log "== mount time and RSS: 1 TiB, 10% allocated"
	local n10 need_mb free_mb thin=$W/thin
	cs=1048576	# ploopctl init's default cluster
	n10=$(((1048576 * 1048576 / cs + 9) / 10))	# clusters written
	need_mb=$((n10 * cs / 1048576 + 8192))
	free_mb=$(df -Pk "$W" | awk 'NR == 2 { print int($4 / 1024) }')
	if [ "$free_mb" -lt 4096 ]; then
		log "1 TiB, 10% allocated: needs 4096 MiB free in $W, has $free_mb: skipped"
		record problem "mount time and RSS of 1TiB_10pct not measured: needs 4096 MiB free on the bench file system, had $free_mb" all 1
		SKIPPED=1	# not a complete run: latest.json stays
		return 0
	fi
	mkdir -p "$thin/mnt" || return 1
	truncate -s "${need_mb}M" "$thin/fs.img" || return 1
	if ! timeout "$CMD_LIMIT" mkfs.ext4 -q -F -N 65536 \
		-E lazy_itable_init=1,lazy_journal_init=1,nodiscard \
		"$thin/fs.img" >"$W/mkfs.out" 2>&1; then
		log "mkfs.ext4 on $thin/fs.img failed:"
		cat "$W/mkfs.out" >&2
		return 1
	fi
	loop_attach "$thin/fs.img" || return 1
	# from here on the device belongs to the thin mount: cleanup detaches
	# it only after unmounting, and no loop_detach of LOOP touches it
	THIN_LOOP=$LOOP LOOP=""
	timeout "$CMD_LIMIT" mount -t ext4 "$THIN_LOOP" "$thin/mnt" || return 1
	d=$thin/mnt/big
	pf_init "$d" 1T || return 1
	read -r _ cs < <(pf_top_alloc "$d") || return 1
	[ -n "$cs" ] || return 1
	n10=$(((1048576 * 1048576 / cs + 9) / 10))
	pf_mount "$d" "$W/mmnt" || return 1
	t0=$(now_us)
	run_fio alloc10 "$W/mmnt/disk" "write:$((10 * cs - 4096))" 4k 32 \
		--size=100% --number_ios="$n10" || return 1
	pf_umount || return 1
	record extra prep_ms 1TiB_10pct "$((($(now_us) - t0) / 1000))"
	read -r alloc _ < <(pf_top_alloc "$d") || return 1
	record extra allocated_clusters 1TiB_10pct "$alloc"
	measure_mount 1TiB_10pct "$d" || return 1
	record extra host_mib 1TiB_10pct \
		"$(du -m "$thin/fs.img" | cut -f1)"
	rm -rf "$d"
	thin_down
}

# Unmount the thin ext4 of bench_mount (its daemon must be stopped),
# detach its loop device and remove it.
thin_down() {
	local i thin=$W/thin
	if findmnt -rn -M "$thin/mnt" >/dev/null; then
		for ((i = 0; i < 50; i++)); do
			timeout "$CMD_LIMIT" umount "$thin/mnt" 2>/dev/null && break
			sleep 0.1
		done
		if findmnt -rn -M "$thin/mnt" >/dev/null; then
			log "cannot unmount $thin/mnt (left to the cleanup)"
			return 1
		fi
	fi
	if [ -n "$THIN_LOOP" ]; then
		LOOP=$THIN_LOOP
		loop_detach || return 1
		THIN_LOOP=""
	fi
	rm -rf "$thin"
}

# fdatasync calls of the daemon (all threads, strace -f -p) while fio makes
# FSYNC_N writes of 4 KiB, each followed by fsync, one per cluster: first
# into fresh clusters (allocating: the BAT changes), then the same writes
# again (the clusters are mapped: data only).
count_syncs() {	# count_syncs LABEL CLUSTER_SIZE
	local label=$1 cs=$2 st=$W/strace.$1 i stpid spid n rc
	timeout -k 5 $((RT + 600)) strace -f -e trace=fdatasync,fsync \
		-o "$st" -p "$PF_PID" 2>"$st.err" &
	stpid=$!
	for ((i = 0; i < 200; i++)); do	# until it has attached
		grep -q attached "$st.err" 2>/dev/null && break
		sleep 0.05
	done
	sleep 0.3
	spid=$(pgrep -P "$stpid" | head -n 1)
	run_fio "fsync_$label" "$W/smnt/disk" "write:$((cs - 4096))" 4k 1 \
		--fsync=1 --number_ios="$FSYNC_N" --size=100% --runtime=600
	rc=$?
	sleep 0.3
	[ -n "$spid" ] && kill -INT "$spid" 2>/dev/null
	wait "$stpid"
	[ $rc -eq 0 ] || return 1
	grep -q attached "$st.err" || { log "strace did not attach"; return 1; }
	n=$(grep -c 'fdatasync(' "$st")
	record extra fdatasync "$label" "$n"
	record extra fsync_calls "$label" "$(grep -c ' fsync(' "$st")"
	record extra client_fsyncs "$label" "$FSYNC_N"
	record extra fdatasync_per_fsync "$label" \
		"$(awk -v n="$n" -v f="$FSYNC_N" 'BEGIN { printf "%.2f", n / f }')"
}

bench_fsync() {
	local d=$W/simg cs
	log "== fdatasync per client fsync"
	pf_init "$d" "${SIZE}M" || return 1
	read -r _ cs < <(pf_top_alloc "$d") || return 1
	[ -n "$cs" ] || return 1
	if [ "$FSYNC_N" -gt $((SIZE * 1048576 / cs)) ]; then
		FSYNC_N=$((SIZE * 1048576 / cs))	# one write per cluster
		log "fsync'd writes: $FSYNC_N (the disk has no more clusters)"
	fi
	pf_mount "$d" "$W/smnt" || return 1
	count_syncs new_clusters "$cs" || return 1
	count_syncs allocated_clusters "$cs" || return 1
	pf_umount || return 1
	rm -rf "$d"
}

# ---------------------------------------------------------------- snapshots

# "level0_guid count" of an image's snapshots (every level but the top),
# from ploopctl status: the oldest first
pf_snaps() {
	timeout "$CMD_LIMIT" "$PLOOPCTL" status --json "$1" | "$PY" -c '
import json, sys
s = [d["guid"] for d in json.load(sys.stdin)["deltas"] if not d["top"]]
print(s[0] if s else "-", len(s))'
}

# A field of ploopctl status --json of an image
pf_status_get() {
	timeout "$CMD_LIMIT" "$PLOOPCTL" status --json "$1" | "$PY" -c '
import json, sys
print(json.load(sys.stdin)[sys.argv[1]])' "$2"
}

# rotate_loop DIR STOPFILE LOG: until STOPFILE exists, once a second (or
# as soon as the last round is done, when a round takes longer) take a
# snapshot of the mounted image and delete the oldest snapshots beyond
# ROT_KEEP.  One line per command in LOG: "snapshot US OUTPUT" or
# "delete US OUTPUT", US the command's wall time; "error ..." on failure.
rotate_loop() {
	local d=$1 stop=$2 rlog=$3 next now t0 out oldest n
	next=$(($(now_us) + 1000000))
	while [ ! -e "$stop" ]; do
		now=$(now_us)
		if [ "$now" -lt "$next" ]; then
			sleep "$(awk -v u=$((next - now)) 'BEGIN { printf "%.3f", u / 1e6 }')"
			continue
		fi
		next=$((next + 1000000))
		[ "$next" -gt "$now" ] || next=$((now + 1000000))
		t0=$(now_us)
		if out=$(timeout "$CMD_LIMIT" "$PLOOPCTL" snapshot "$d" 2>&1); then
			echo "snapshot $(($(now_us) - t0)) $out" >>"$rlog"
		else
			echo "error snapshot: $out" >>"$rlog"
		fi
		while read -r oldest n < <(pf_snaps "$d") &&
			[ "${n:-0}" -gt "$ROT_KEEP" ] && [ ! -e "$stop" ]; do
			t0=$(now_us)
			if out=$(timeout "$CMD_LIMIT" "$PLOOPCTL" snapshot-delete \
				"$d" "$oldest" 2>&1); then
				echo "delete $(($(now_us) - t0)) $out" >>"$rlog"
			else
				echo "error delete: $out" >>"$rlog"
				break
			fi
		done
	done
}

# The rotation fio run: random 4 KiB writes at queue depth 32 and random
# 4 KiB reads at queue depth 8 over the whole disk, two jobs reported
# separately, JSON with latency percentiles, and latency logs holding the
# largest completion latency of every 100 ms.  usage: rot_fio FILE NAME
rot_fio() {
	timeout --foreground -k 10 "$FIO_LIMIT" fio --thread --ioengine=libaio \
		--direct=1 --filename="$1" --size="${ROT_MB}M" --time_based \
		--runtime="$ROT_RT" --percentile_list=50:99:99.9:99.99 \
		--log_avg_msec=100 --log_max_value=1 --write_lat_log="$W/$2" \
		--output-format=json --output="$W/$2.json" \
		--name=randwrite --rw=randwrite --bs=4k --iodepth=32 \
		--name=randread --rw=randread --bs=4k --iodepth=8 \
		2>>"$W/fio.err"
}

# Records of one rotation fio run: IOPS and completion latency (us) of
# the writes and reads.  usage: rot_record NAME PHASE
rot_record() {
	local k v
	"$PY" - "$W/$1.json" >"$W/$1.rec" <<'PY' || return 1
import json, sys
j = json.load(open(sys.argv[1]))
for job in j["jobs"]:
    if job.get("error"):
        sys.exit(f"fio job {job['jobname']}: error {job['error']}")
    d = job["write" if job["jobname"] == "randwrite" else "read"]
    p = d["clat_ns"].get("percentile", {})
    k = "rot_" + ("write" if job["jobname"] == "randwrite" else "read")
    print(f"{k}_iops {d['iops']:.0f}")
    for name, key in (("p50", "50.000000"), ("p99", "99.000000"),
                      ("p999", "99.900000"), ("p9999", "99.990000")):
        print(f"{k}_{name}_us {p.get(key, 0) / 1000:.0f}")
    print(f"{k}_max_us {d['clat_ns']['max'] / 1000:.0f}")
PY
	while read -r k v; do
		record snap "$k" "$2" "$v"
	done <"$W/$1.rec"
}

# Snapshot stall as clients see it: the rotation fio run on a disk whose
# every cluster holds data, first without snapshots (baseline), then
# while rotate_loop takes a snapshot every second and deletes the oldest
# (ROT_KEEP kept).  Each new top makes the first write into every cluster
# copy it up (1 MiB), and each delete merges a snapshot of about the
# whole disk: the figures are what a client sees of both, next to the
# daemon's own freeze stall (stall_max_us of ploopctl status).
bench_rotate() {
	local d=$W/rot m=$W/rotmnt stop=$W/rot.stop rlog=$W/rot.log fpid
	log "== ploopfs: snapshot rotation (${ROT_RT} s, ${ROT_MB} MiB)"
	pf_init "$d" "${ROT_MB}M" || return 1
	pf_mount "$d" "$m" || return 1
	run_fio fill "$m/disk" write 1M 8 --size="${ROT_MB}M" || return 1
	rot_fio "$m/disk" rot_base || { log "rotation baseline: fio failed"; return 1; }
	rot_record rot_base baseline || return 1
	record snap rot_daemon_stall_max_us baseline \
		"$(pf_status_get "$d" stall_max_us)"
	record snap rot_daemon_freezes baseline "$(pf_status_get "$d" freezes)"

	rm -f "$stop"
	: >"$rlog"
	rot_fio "$m/disk" rot_rot &
	fpid=$!
	rotate_loop "$d" "$stop" "$rlog" &
	ROT_PID=$!
	wait "$fpid"
	local frc=$?
	touch "$stop"
	wait "$ROT_PID"
	ROT_PID=""
	[ "$frc" -eq 0 ] || { log "rotation: fio failed"; return 1; }
	rot_record rot_rot rotating || return 1
	record snap rot_daemon_stall_max_us rotating \
		"$(pf_status_get "$d" stall_max_us)"
	record snap rot_daemon_freezes rotating "$(pf_status_get "$d" freezes)"
	if grep -q '^error' "$rlog"; then
		log "rotation: commands failed:"
		grep '^error' "$rlog" | head -n 5 >&2
		record problem "rotation: $(grep -c '^error' "$rlog") snapshot or delete commands failed" ploopfs 1
	fi
	"$PY" - "$rlog" <<'PY' | while read -r k v; do record snap "$k" rotating "$v"; done
import re, sys
snap, dele, dstall, drate = [], [], [], []
for line in open(sys.argv[1]):
    kind, rest = line.split(" ", 1)
    if kind == "snapshot":
        snap.append(int(rest.split()[0]))
    elif kind == "delete":
        us, text = rest.split(" ", 1)
        dele.append(int(us))
        m = re.search(r"\(([\d.]+) MiB/s\), I/O stalled (\d+) us", text)
        if m:
            drate.append(float(m.group(1)))
            dstall.append(int(m.group(2)))
def out(k, v):
    print(k, v)
out("rot_snapshots", len(snap))
out("rot_deletes", len(dele))
if snap:
    out("rot_snapshot_ms_mean", f"{sum(snap) / len(snap) / 1000:.0f}")
    out("rot_snapshot_ms_max", f"{max(snap) / 1000:.0f}")
if dele:
    out("rot_delete_ms_mean", f"{sum(dele) / len(dele) / 1000:.0f}")
    out("rot_delete_ms_max", f"{max(dele) / 1000:.0f}")
if dstall:
    out("rot_delete_stall_max_us", max(dstall))
if drate:
    out("rot_delete_mibs_mean", f"{sum(drate) / len(drate):.1f}")
PY
	# latency logs (largest latency of every 100 ms) next to the results
	for f in "$W"/rot_base_clat.*.log "$W"/rot_rot_clat.*.log "$rlog"; do
		[ -e "$f" ] && cp "$f" "$OUT/bench-$stamp.$(basename "$f")"
	done
	pf_umount || return 1
	rm -rf "$d"
}

# merge_once MODE: MERGE_MB MiB of new data written after snapshot S1,
# then snapshot S2 makes it a snapshot's delta, and `ploopctl
# snapshot-delete S1` merges it down into S1's file: unmounted (offline)
# or through the daemon of a mounted, idle disk (online).  Records the
# wall time of the command and its own figures.
merge_once() {
	local mode=$1 d=$W/merge m=$W/mergemnt s1 out t0 us
	pf_init "$d" "$((MERGE_MB + 64))M" || return 1
	s1=$(timeout "$CMD_LIMIT" "$PLOOPCTL" snapshot "$d") || return 1
	pf_mount "$d" "$m" || return 1
	run_fio data "$m/disk" write 1M 8 --size="${MERGE_MB}M" || return 1
	pf_snapshot "$d" || return 1		# online: the daemon takes it
	[ "$mode" = online ] || { pf_umount || return 1; }
	t0=$(now_us)
	out=$(timeout "$CMD_LIMIT" "$PLOOPCTL" snapshot-delete "$d" "$s1" 2>&1) || {
		log "snapshot-delete ($mode): $out"
		return 1
	}
	us=$(($(now_us) - t0))
	log "$mode: $out"
	[ "$mode" = online ] && { pf_umount || return 1; }
	record snap merge_s "$mode" "$(awk -v u="$us" 'BEGIN { printf "%.3f", u / 1e6 }')"
	record snap merge_mibs "$mode" \
		"$(awk -v u="$us" -v n="$MERGE_MB" 'BEGIN { printf "%.1f", n / (u / 1e6) }')"
	record snap merge_tool_mibs "$mode" \
		"$(sed -n 's/.*(\([0-9.]*\) MiB\/s).*/\1/p' <<<"$out")"
	record snap merge_stall_us "$mode" \
		"$(sed -n 's/.*I\/O stalled \([0-9]*\) us.*/\1/p' <<<"$out")"
	rm -rf "$d"
}

# Merge throughput next to cp: snapshot-delete offline and online, and
# cp + fsync of a file of the same size on the same file system (its
# source written with O_DIRECT, so read from the disk as the merge
# reads its delta).
bench_merge() {
	local t0 us
	log "== ploopfs: merge of ${MERGE_MB} MiB (snapshot-delete) vs cp"
	record snap merge_mb all "$MERGE_MB"
	merge_once offline || return 1
	merge_once online || return 1
	run_fio src "$W/cp.src" write 1M 8 --size="${MERGE_MB}M" || return 1
	t0=$(now_us)
	timeout "$CMD_LIMIT" cp "$W/cp.src" "$W/cp.dst" &&
		timeout "$CMD_LIMIT" sync "$W/cp.dst" || return 1
	us=$(($(now_us) - t0))
	record snap merge_s cp "$(awk -v u="$us" 'BEGIN { printf "%.3f", u / 1e6 }')"
	record snap merge_mibs cp \
		"$(awk -v u="$us" -v n="$MERGE_MB" 'BEGIN { printf "%.1f", n / (u / 1e6) }')"
	rm -f "$W/cp.src" "$W/cp.dst"
}

# ---------------------------------------------------------------- main

[ "$(id -u)" -eq 0 ] || { log "run as root (FUSE mounts, loop devices)"; exit 1; }
missing=""
for c in fio qemu-img qemu-storage-daemon losetup strace fusermount3 \
	findmnt timeout pgrep; do
	command -v "$c" >/dev/null || missing="$missing $c"
done
[ -x "$PLOOPFS" ] && [ -x "$PLOOPCTL" ] || missing="$missing $B/ploopfs,ploopctl"
case " $TARGETS " in
*" fuse-null "* | *" fuse-pass "* | *" fuse-pass-uring "*)
	[ -x "$FCEIL" ] || missing="$missing $FCEIL" ;;
esac
if [ "$EXTRA" = 1 ]; then	# the thin ext4 of the 1 TiB image
	for c in mkfs.ext4 mount umount; do
		command -v "$c" >/dev/null || missing="$missing $c"
	done
fi
# Debian's python3 (a pyenv or venv python3 first on the PATH may lack
# matplotlib)
PY=""
for p in ${BENCH_PYTHON:-} /usr/bin/python3 python3; do
	if command -v "$p" >/dev/null && "$p" -c 'import matplotlib' 2>/dev/null; then
		PY=$p
		break
	fi
done
[ -n "$PY" ] || missing="$missing python3-matplotlib"
if [ -n "$missing" ]; then
	log "missing:$missing (make deps; make bench)"
	exit 1
fi

mkdir -p "$BASE" "$OUT" "$LATEST" || exit 1
avail=$(df -Pk "$BASE" | awk 'NR == 2 { print int($4 / 1024) }')
need=$((SIZE * 3))
# rotation: the base, ROT_KEEP snapshots and the top, each up to the disk
if [ "$SNAP" = 1 ]; then
	[ $((ROT_MB * (ROT_KEEP + 2))) -gt $need ] && need=$((ROT_MB * (ROT_KEEP + 2)))
	[ $((MERGE_MB * 3)) -gt $need ] && need=$((MERGE_MB * 3))
fi
need=$((need + 2048))
if [ "$avail" -lt $need ]; then
	log "$BASE has ${avail} MiB free; need $need"
	exit 1
fi
W=$(mktemp -d "$BASE/ploopfs-bench.XXXXXX") || exit 1
RES=$W/results.tsv
: >"$RES"
stamp=$(date +%Y%m%d-%H%M%S)

record meta timestamp all "$(date -Iseconds)"
record meta runtime_s all "$RT"
record meta rounds all "$ROUNDS"
record meta size_mb all "$SIZE"
record meta work_fs all "$(stat -f -c %T "$W") on $(df -P "$W" | awk 'NR == 2 { print $1 }')"
record meta kernel all "$(uname -r)"
record meta cpus all "$(nproc)"
record meta fio all "$(fio --version)"
record meta qemu all "$(qemu-storage-daemon --version | head -n 1)"
record meta ploopfs_commit all "$(git -C "$top" describe --always --dirty 2>/dev/null || echo unknown)"
record meta targets all "$TARGETS"
if [ -e "$URING_PARAM" ]; then
	record meta fuse_over_io_uring all "available (enable_uring $(cat "$URING_PARAM"))"
else
	record meta fuse_over_io_uring all "not in this kernel"
fi
record meta fsync_n all "$FSYNC_N"
if [ "$SNAP" = 1 ]; then
	record meta rot_runtime_s all "$ROT_RT"
	record meta rot_size_mb all "$ROT_MB"
	record meta rot_keep all "$ROT_KEEP"
	record meta merge_mb all "$MERGE_MB"
fi

log "work dir $W, ${SIZE} MiB, ${RT} s per job, targets: $TARGETS"
t_start=$SECONDS
# Rounds: the host disk's speed drifts by minutes (raw randread qd32 has
# measured anything from 18k to 67k IOPS on one day), so a single pass,
# raw first, makes a ratio of two different minutes.  Each round takes
# the targets in a new order (rotated by one); the report gives each
# figure's median over the rounds and the per-round ratios beside it.
read -r -a tlist <<<"$TARGETS"
declare -A SKIP_T=()	# targets skipped for good (no FUSE over io_uring)
for ((round = 1; round <= ROUNDS; round++)); do
	order=()
	for ((i = 0; i < ${#tlist[@]}; i++)); do
		order+=("${tlist[(i + round - 1) % ${#tlist[@]}]}")
	done
	record round "$round" all "${order[*]}"
	log "round $round of $ROUNDS: ${order[*]}"
	for t in "${order[@]}"; do
		[ -z "${SKIP_T[$t]:-}" ] || continue
		wait_quiet
		URING_SKIP=""
		if [ "${t%-uring}" != "$t" ] && ! uring_enable; then
			target_skip "$t"
			SKIP_T[$t]=1
		elif ! bench_target "$t"; then
			if [ -n "$URING_SKIP" ]; then
				target_skip "$t"
				SKIP_T[$t]=1
			else
				fail "$t: main jobs (round $round)"
			fi
			target_down "$t" 2>/dev/null
		fi
		uring_restore	# only a -uring target changed it
		if [ "$t" = ploopfs ] && [ "$round" = 1 ]; then
			wait_quiet
			bench_cow || { fail "ploopfs: cow_randwrite_4k_qd32"; pf_umount; }
			bench_3deltas || { fail "ploopfs: randread_4k_qd32_3deltas"; pf_umount; }
		fi
	done
done
if [ "$EXTRA" = 1 ]; then
	wait_quiet
	bench_mount || { fail "ploopfs: mount time and RSS"; pf_umount; thin_down; }
	bench_fsync || { fail "ploopfs: fdatasync per fsync"; pf_umount; }
fi
if [ "$SNAP" = 1 ]; then
	wait_quiet
	bench_rotate || { fail "ploopfs: snapshot rotation"; pf_umount; }
	wait_quiet
	bench_merge || { fail "ploopfs: merge throughput"; pf_umount; }
fi
record meta duration_s all $((SECONDS - t_start))
for f in "${FAILED[@]}"; do
	record failed "$f" all 1
done
if [ -s "$W/ploopfs.log" ] &&
	grep -viE 'serving on|closed cleanly|snapshot \{[^}]*\} created, new top' \
		"$W/ploopfs.log" >"$W/ploopfs.odd"; then
	log "ploopfs logged:"
	sort "$W/ploopfs.odd" | uniq -c | sort -rn | head -n 20 >&2
	while read -r line; do
		record problem "ploopfs log: $line" all 1
	done < <(sort -u "$W/ploopfs.odd" | head -n 20)
fi

cp "$RES" "$OUT/bench-$stamp.tsv"
"$PY" "$top/tests/bench/report.py" "$RES" "$OUT/bench-$stamp.json" \
	"$OUT/bench-$stamp.png"
rc=$?
log "results: $OUT/bench-$stamp.{json,png}"
# only a complete run at the default settings replaces the latest results
if [ $rc -eq 0 ] && [ ${#FAILED[@]} -eq 0 ] && [ "$EXTRA" = 1 ] &&
	[ "$SKIPPED" = 0 ] &&
	[ "$SNAP" = 1 ] && [ "$ROT_RT" = 30 ] && [ "$ROT_MB" = 1024 ] &&
	[ "$ROT_KEEP" = 2 ] && [ "$MERGE_MB" = 512 ] &&
	[ "$TARGETS" = "$ALL_TARGETS" ] && [ "$RT" = 5 ] && [ "$ROUNDS" = 3 ] && [ "$SIZE" = 1024 ]; then
	cp "$OUT/bench-$stamp.json" "$LATEST/latest.json"
	cp "$OUT/bench-$stamp.png" "$LATEST/latest.png"
	log "copied to $LATEST/latest.{json,png}"
fi
if [ ${#FAILED[@]} -gt 0 ]; then
	log "NOT MEASURED:"
	printf '  %s\n' "${FAILED[@]}" >&2
	exit 1
fi
exit $rc
