#!/usr/bin/env bats
# A full host file system.  Writes that cannot get space are held and
# retried, not failed: status and events while they are held, completion
# once space is freed (twice in one mount, events without gaps),
# -o enospc_timeout, and that a held write blocks neither an online
# snapshot nor the daemon's stop.  The image directory lives on a small
# ext4 (a loop device over a file) that a filler file fills up.
#
# The last three tests are regressions of bugs found here: a timed-out
# hold reported as resumed, and failed fallocates keeping the space they
# got (a partial cluster at close, the host's last space taken).

load helpers

setup() {
	T=$BATS_TEST_TMPDIR
	H=$T/host		# the small ext4 holding the image directory
	D=$H/img
	M=$T/mnt
	MiB=$((1 << 20))
	BG=()			# background jobs we started (writers, readers)
}

teardown() {
	enospc_teardown
	pf_teardown
}

# Before pf_teardown: free the host so that held writes go through, end
# our background jobs, and stop the daemon before the ext4 under its
# image is unmounted (pf_teardown unmounts file systems first).
enospc_teardown() {
	local p
	if [ -d "$H" ]; then
		rm -f "$H"/filler* "$H"/spare
	fi
	for p in "${BG[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${BG[@]}"; do
		timeout 30 tail --pid="$p" -f /dev/null || true
	done
	if pf_is_mounted "$M"; then
		timeout 30 fusermount3 -u "$M" 2>/dev/null ||
			timeout 30 fusermount3 -uz "$M" || true
	fi
	if [ -s "$(_pf_state)/$(_pf_key "$M").pid" ]; then
		pf_wait_exit "$M" 30 >/dev/null || true
	fi
	return 0
}

# host_up SIZE_MIB: a fresh ext4 without reserved blocks on a loop device
# over $T/host.img, mounted at $H (pf_teardown unmounts and detaches it)
host_up() {
	local dev
	truncate -s "${1}M" "$T/host.img"
	mkfs.ext4 -q -F -m 0 "$T/host.img"
	dev=$(timeout 60 losetup -f --show "$T/host.img")
	mkdir -p "$H"
	timeout 60 mount "$dev" "$H"
}

# host_free: bytes the host file system has free (f_bavail)
# (after a journal commit: ext4 returns the blocks of a truncate to the
# free count only when its transaction commits)
host_free() {
	sync -f "$H"
	stat -f -c '%a %S' "$H" | awk '{ printf "%d\n", $1 * $2 }'
}

# fill_host NAME [KEEP]: a file NAME on $H taking all the free space but
# KEEP bytes (default 64 KiB: room for the filler's own extent blocks);
# fails unless less than one cluster (1 MiB) is left free
fill_host() {
	local keep=${2:-65536} free
	free=$(host_free)
	if [ "$free" -gt "$keep" ]; then
		timeout 60 fallocate -l $((free - keep)) "$H/$1" || true
	fi
	free=$(host_free)
	if [ "$free" -ge "$MiB" ]; then
		echo "fill_host: $free bytes still free on $H" >&2
		return 1
	fi
}

status_json() {
	timeout 30 "$PLOOPCTL" status --json "$D"
}

# st_get EXPR: a field of ploopctl status --json ("j" is the object)
st_get() {
	local st
	st=$(status_json) || return 1
	json_get "$st" "$1"
}

# prealloc_room: clusters the top delta file already has beyond those in
# use: writes there need no new space.  A 256 MiB disk has one header
# cluster (its 256 BAT entries fit in it).
prealloc_room() {
	local st file used size room
	st=$(status_json) || return 1
	file=$(json_get "$st" 'j["deltas"][-1]["file"]')
	used=$(json_get "$st" 'j["deltas"][-1]["clusters"]')
	size=$(stat -c %s "$D/$file")
	room=$((size / MiB - 1 - used))
	echo $((room > 0 ? room : 0))
}

# start_writer SRC OFF_MIB NAME: copy SRC to the disk at OFF_MIB MiB with
# O_DIRECT (1 MiB writes) and fsync, in the background; its pid goes to
# WPID, its stderr to $T/NAME.err.  fd 3 is bats' own: closed.
start_writer() {
	timeout 300 dd if="$1" of="$M/disk" bs=1M seek="$2" oflag=direct \
		conv=notrunc,fsync status=none 2>"$T/$3.err" 3>&- &
	WPID=$!
	BG+=("$WPID")
}

# job_wait PID SECONDS: wait at most SECONDS for our background job PID;
# its exit status goes to JOB_RC (not a command substitution: only this
# shell can wait for its children)
job_wait() {
	JOB_RC=0
	if ! timeout "$2" tail --pid="$1" -f /dev/null; then
		echo "background job $1 still running after $2 s" >&2
		return 1
	fi
	wait "$1" || JOB_RC=$?
}

# wait_held N SECONDS: until status shows at least N held writes
wait_held() {
	local deadline=$((SECONDS + $2)) st
	while :; do
		st=$(status_json) || return 1
		[ "$(json_get "$st" 'j["held_writes"]')" -ge "$1" ] && return 0
		if [ "$SECONDS" -ge "$deadline" ]; then
			echo "fewer than $1 held writes after $2 s: $st" >&2
			return 1
		fi
		sleep 0.1
	done
}

# events_after SEQ: the events after SEQ that the daemon has now, without
# waiting for more
events_after() {
	local last
	last=$(st_get 'j["last_event"]') || return 1
	[ "$last" -gt "$1" ] || return 0
	timeout 30 "$PLOOPCTL" events --after "$1" --count $((last - $1)) "$D"
}

# wait_event SEQ TYPE SECONDS: wait for an event of TYPE after SEQ; print it
wait_event() {
	local after=$1 deadline=$(($3 + SECONDS)) out line
	while :; do
		out=$(events_after "$after") || return 1
		line=$(awk -v t="$2" '$3 == t { print; exit }' <<<"$out")
		if [ -n "$line" ]; then
			echo "$line"
			return 0
		fi
		[ -n "$out" ] && after=$(tail -n 1 <<<"$out" | cut -d' ' -f1)
		if [ "$SECONDS" -ge "$deadline" ]; then
			echo "no $2 event after $1 within $3 s" >&2
			return 1
		fi
		sleep 0.1
	done
}

@test "full host: writes are held, not failed, and go through once space is freed (two cycles)" {
	host_up 96
	run_ok ploopctl init -s 256M "$D"
	pf_mount "$D" "$M"
	# a reader started at the beginning sees every event, in order
	timeout 600 "$PLOOPCTL" events --after 0 "$D" >"$T/events.log" \
		2>"$T/events.err" 3>&- &
	ev=$!
	BG+=("$ev")
	local -a cyc_before cyc_after
	off=0
	for cycle in 1 2; do
		cyc_before[cycle]=$(st_get 'j["last_event"]')
		enospc0=$(st_get 'j["enospc_events"]')
		# more new data than the top delta has room for
		n=$(($(prealloc_room) + 8))
		head -c $((n * MiB)) /dev/urandom >"$T/src$cycle"
		fill_host "filler$cycle"
		start_writer "$T/src$cycle" "$off" "w$cycle"
		wait_held 1 60
		line=$(timeout 30 "$PLOOPCTL" events --after "${cyc_before[cycle]}" --count 1 "$D")
		echo "cycle $cycle: $line"
		[ "$(cut -d' ' -f3 <<<"$line")" = enospc ]
		# held, not failed: the writer is still waiting a retry later
		sleep 1.5
		kill -0 "$WPID"
		st=$(status_json)
		echo "$st"
		[ "$(json_get "$st" 'j["held_writes"]')" -ge 1 ]
		[ "$(json_get "$st" 'j["enospc_events"]')" -gt "$enospc0" ]
		[ "$(json_get "$st" 'j["failed"]')" = False ]
		# free the host: the writer completes
		rm "$H/filler$cycle"
		job_wait "$WPID" 60
		if [ "$JOB_RC" -ne 0 ]; then
			cat "$T/w$cycle.err"
			echo "cycle $cycle: writer exited with status $JOB_RC" >&2
			return 1
		fi
		[ "$(st_get 'j["held_writes"]')" -eq 0 ]
		[ "$(disk_sum "$M/disk" "$off" "$n")" = "$(disk_sum "$T/src$cycle")" ]
		wait_event "${cyc_before[cycle]}" enospc-resumed 10
		cyc_after[cycle]=$(st_get 'j["last_event"]')
		off=$((off + n + 16))
	done
	last=${cyc_after[2]}
	pf_umount "$M"
	# the daemon's stop ends the stream: the reader exits by itself
	job_wait "$ev" 30
	[ "$JOB_RC" -eq 0 ]
	cat "$T/events.err"
	run_ok python3 - "$T/events.log" "$last" "${cyc_before[1]}" "${cyc_after[1]}" \
		"${cyc_before[2]}" "${cyc_after[2]}" <<'PY'
import sys
path, last = sys.argv[1], int(sys.argv[2])
cycles = [(int(sys.argv[3]), int(sys.argv[4])), (int(sys.argv[5]), int(sys.argv[6]))]
ev = []
for line in open(path):
    seq, ms, typ = line.split(" ", 3)[:3]
    ev.append((int(seq), int(ms), typ))
seqs = [e[0] for e in ev]
assert seqs, "the reader saw no events"
assert "lost" not in [e[2] for e in ev], "events were lost"
assert seqs == list(range(1, len(seqs) + 1)), f"gaps or disorder: {seqs}"
assert seqs[-1] >= last, f"reader stopped at {seqs[-1]}, daemon had {last}"
assert ev[0][2] == "mount", ev[0]
prev = 0
for k, (lo, hi) in enumerate(cycles, 1):
    mine = [e for e in ev if lo < e[0] <= hi]
    enospc = [e[0] for e in mine if e[2] == "enospc"]
    resumed = [e[0] for e in mine if e[2] == "enospc-resumed"]
    assert enospc, f"cycle {k}: no enospc event in ({lo}, {hi}]"
    assert resumed and min(resumed) > min(enospc), f"cycle {k}: no enospc-resumed after enospc"
    assert min(enospc) > prev, f"cycle {k}: enospc {min(enospc)} not after {prev}"
    assert not [e for e in mine if e[2] in ("enospc-failed", "failed")], mine
    prev = max(enospc)
    print(f"cycle {k}: enospc events {enospc[0]}..{enospc[-1]} ({len(enospc)}), resumed {resumed}")
print(f"{len(seqs)} events, 1..{seqs[-1]}, no gaps")
PY
	echo "$output"
	# A retry's partial fallocate can leave a partial cluster at the
	# end of the top delta: a leak at most.
	run ploopctl check "$D"
	echo "$output"
	[ "$status" -eq 0 ] || [ "$status" -eq 6 ]
	pf_mount "$D" "$M"
	[ "$(disk_sum "$M/disk" 0 "$(($(stat -c %s "$T/src1") / MiB))")" = "$(disk_sum "$T/src1")" ]
	pf_umount "$M"
}

@test "-o enospc_timeout=2: a held write fails with EIO after about 2 s; reads go on; writes work once space is freed" {
	host_up 96
	run_ok ploopctl init -s 256M "$D"
	pf_mount "$D" "$M" -o enospc_timeout=2
	head -c $((4 * MiB)) /dev/urandom >"$T/a"
	timeout 60 dd if="$T/a" of="$M/disk" bs=1M oflag=direct conv=notrunc,fsync status=none
	n=$(($(prealloc_room) + 4))
	head -c $((n * MiB)) /dev/urandom >"$T/b"
	fill_host filler
	before=$(st_get 'j["last_event"]')
	start_writer "$T/b" 16 w
	job_wait "$WPID" 60
	cat "$T/w.err"
	[ "$JOB_RC" -ne 0 ]
	grep -q 'Input/output error' "$T/w.err"
	events=$(events_after "$before")
	echo "$events"
	# from the first hold to the failure: about 2 s
	run_ok python3 - <<PY
ev = [l.split(" ", 3) for l in """$events""".splitlines()]
held = [int(e[1]) for e in ev if e[2] == "enospc"]
failed = [int(e[1]) for e in ev if e[2] == "enospc-failed"]
assert held and failed, "no enospc or no enospc-failed event"
dt = failed[0] - held[0]
print(f"held at {held[0]}, failed {dt} ms later")
assert 1500 <= dt <= 4500, f"failed after {dt} ms"
PY
	echo "$output"
	st=$(status_json)
	echo "$st"
	[ "$(json_get "$st" 'j["held_writes"]')" -eq 0 ]
	[ "$(json_get "$st" 'j["failed"]')" = False ]
	# reads go on, still with the host full
	[ "$(disk_sum "$M/disk" 0 4)" = "$(disk_sum "$T/a")" ]
	# and once space is freed, writes that allocate work again
	rm "$H/filler"
	head -c $((4 * MiB)) /dev/urandom >"$T/c"
	timeout 60 dd if="$T/c" of="$M/disk" bs=1M seek=200 oflag=direct conv=notrunc,fsync status=none
	[ "$(disk_sum "$M/disk" 200 4)" = "$(disk_sum "$T/c")" ]
	[ "$(disk_sum "$M/disk" 0 4)" = "$(disk_sum "$T/a")" ]
	pf_umount "$M"
	# what the failed retries allocated past the last cluster in use is
	# a leak at most
	run ploopctl check "$D"
	echo "$output"
	[ "$status" -eq 0 ] || [ "$status" -eq 6 ]
}

@test "a held write blocks neither an online snapshot nor the daemon's stop" {
	host_up 96
	run_ok ploopctl init -s 256M "$D"
	pf_mount "$D" "$M"
	head -c $((2 * MiB)) /dev/urandom >"$T/a"
	timeout 60 dd if="$T/a" of="$M/disk" bs=1M oflag=direct conv=notrunc,fsync status=none
	n=$(($(prealloc_room) + 4))
	head -c $((n * MiB)) /dev/urandom >"$T/b"
	# 2 MiB kept back for the snapshot: its new delta's header cluster
	# (allocated up front) and the descriptor; what is left then is
	# less than the cluster the held write needs
	timeout 60 fallocate -l 2M "$H/spare"
	fill_host filler
	start_writer "$T/b" 8 w
	wait_held 1 60
	# A retry takes whatever space it can get, so the
	# spare is freed right after one: the next comes a second later.
	last=$(st_get 'j["last_event"]')
	timeout 30 "$PLOOPCTL" events --after "$last" --count 1 "$D"
	rm "$H/spare"
	timeout 30 sync -f "$H"
	t0=${EPOCHREALTIME/./}
	run_ok ploopctl snapshot "$D"
	ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
	guid=$output
	echo "snapshot $guid took $ms ms while a write was held"
	[ "$ms" -lt 10000 ]
	# the write is still held (in the new top now), not failed
	kill -0 "$WPID"
	st=$(status_json)
	echo "$st"
	[ "$(json_get "$st" 'j["held_writes"]')" -ge 1 ]
	[ "$(json_get "$st" 'j["freezes"]')" -ge 1 ]
	[ "$(json_get "$st" 'len(j["deltas"])')" -eq 2 ]
	[ "$(json_get "$st" 'j["failed"]')" = False ]
	# the snapshot's view holds what was written before it
	view="$M/snapshots/${guid:1:36}"
	[ -f "$view" ]
	[ "$(disk_sum "$view" 0 2)" = "$(disk_sum "$T/a")" ]

	# Stop while the write is held.  The writer keeps the disk open, so
	# an unmount is refused (busy), at once; the daemon goes on.
	run timeout 20 fusermount3 -u "$M"
	echo "$output"
	[ "$status" -ne 0 ]
	[ "$status" -ne 124 ]
	[[ "$output" == *busy* ]]
	[ "$(st_get 'j["held_writes"]')" -ge 1 ]
	# SIGTERM: the held write fails, the daemon stops cleanly and the
	# mount goes
	t0=$SECONDS
	kill -TERM "$(pf_pid "$M")"
	st=$(pf_wait_exit "$M" 20)
	echo "daemon exit status $st after $((SECONDS - t0)) s"
	[ "$st" -eq 0 ]
	job_wait "$WPID" 20
	cat "$T/w.err"
	[ "$JOB_RC" -ne 0 ]
	grep -q 'Input/output error' "$T/w.err"
	run ! pf_is_mounted "$M"
	pf_log "$M" | grep -q "closed cleanly"
	[ "$(pf_top_inuse "$D")" = closed ]
	rm "$H/filler"
	# a partial cluster left by a retry is a leak at most
	run ploopctl check "$D"
	echo "$output"
	[ "$status" -eq 0 ] || [ "$status" -eq 6 ]
	run_ok ploopctl snapshot-list --json "$D"
	[ "$(json_get "$output" 'len(j["snapshots"])')" -eq 2 ]
	pf_mount "$D" "$M"
	[ "$(disk_sum "$M/disk" 0 2)" = "$(disk_sum "$T/a")" ]
	pf_umount "$M"
}

# A write held until -o enospc_timeout fails it: used by the regression tests.
timed_out_hold() {
	host_up 96
	run_ok ploopctl init -s 256M "$D"
	pf_mount "$D" "$M" -o enospc_timeout=1
	fill_host filler
	before=$(st_get 'j["last_event"]')
	head -c "$MiB" /dev/urandom >"$T/b"
	start_writer "$T/b" 0 w
	job_wait "$WPID" 60
	[ "$JOB_RC" -ne 0 ]
	wait_event "$before" enospc-failed 10
}

@test "a held write that timed out is not reported as resumed" {
	timed_out_hold
	sleep 0.5
	events=$(events_after "$before")
	echo "$events"
	run ! grep -q ' enospc-resumed ' <<<"$events"
}

@test "a clean stop after a held write timed out leaves no partial cluster" {
	timed_out_hold
	pf_umount "$M"
	top=$(json_get "$(ploopctl info --json "$D")" 'j["deltas"][-1]["file"]')
	ls -l "$D"
	[ $(($(stat -c %s "$top") % MiB)) -eq 0 ]
	run_ok ploopctl check "$D"
}

@test "a held write does not take free space it cannot use" {
	host_up 96
	run_ok ploopctl init -s 256M "$D"
	pf_mount "$D" "$M"
	# half a cluster stays free: too little for the write, which must
	# leave it to others
	fill_host filler $((MiB / 2))
	free0=$(host_free)
	head -c "$MiB" /dev/urandom >"$T/b"
	start_writer "$T/b" 0 w
	wait_held 1 60
	last=$(st_get 'j["last_event"]')
	wait_event "$last" enospc 10	# a retry
	free1=$(host_free)
	top=$(st_get 'j["deltas"][-1]["file"]')
	ls -l "$D"
	echo "free before the hold $free0, during it $free1"
	[ "$free1" -ge $((free0 - 65536)) ]
	[ $(($(stat -c %s "$D/$top") % MiB)) -eq 0 ]
}
