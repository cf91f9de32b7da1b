#!/usr/bin/env bats
# Online snapshots of a mounted disk under load: rotation (snapshot +
# delete of the oldest) while fio verifies its data and ploopctl status
# is polled; ext4 over a loop device through rotations; two structural
# commands at once (one may be refused as busy, never both wrongly
# succeed); the read-only snapshot views in MNT/snapshots; a daemon that
# is stopped (SIGSTOP) does not keep ploopctl waiting (--timeout, exit 8).

load helpers

setup() {
	pf_dirs
	ROTATE=$BATS_TEST_DIRNAME/../../scripts/ploop-rotate
	pf_ploopctl_abs
	bg_pids=()
	stopped=
}

teardown() {
	local p
	# a daemon the test stopped cannot stop cleanly
	[ -z "$stopped" ] || kill -CONT "$stopped" 2>/dev/null || true
	# background helpers of the test first: they hold the disk open
	: >"$T/stop-poll"
	for p in "${bg_pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	pf_teardown
}

# qemu_chain_opts DIR: qemu --image-opts for the current chain, top first
qemu_chain_opts() {
	local out f pre="" opts=""
	local -a files
	out=$(ploopctl info "$1") || return 1
	mapfile -t files < <(awk '$1 == "file:" { print $2 }' <<<"$out")
	[ "${#files[@]}" -gt 0 ] || return 1
	for ((f = ${#files[@]} - 1; f >= 0; f--)); do
		opts+="${opts:+,}${pre}driver=parallels,${pre}file.filename=${files[f]}"
		pre+=backing.
	done
	echo "$opts"
}

# start_status_poll DIR OUT: call ploopctl status --json DIR every 10 ms
# in the background until $T/stop-poll exists (at most 600 s); then
# write to OUT the calls, failures (nonzero exit, invalid JSON, no answer
# within 10 s), the longest call in ms and how often it said frozen.
start_status_poll() {
	rm -f "$T/stop-poll"
	timeout 700 python3 - "$PLOOPCTL" "$1" "$T/stop-poll" "$2" <<'PY' 3>&- &
import json, os, subprocess, sys, time
ploopctl, d, stop, out = sys.argv[1:5]
n = fails = frozen = 0
worst = 0.0
errors = []
deadline = time.monotonic() + 600
while not os.path.exists(stop) and time.monotonic() < deadline:
    t0 = time.monotonic()
    why = None
    try:
        p = subprocess.run([ploopctl, "status", "--json", d],
                           capture_output=True, timeout=10)
        if p.returncode != 0:
            why = "exit %d: %s" % (p.returncode, p.stderr.decode(errors="replace").strip())
        else:
            try:
                j = json.loads(p.stdout)
                frozen += bool(j["frozen"])
                if j["mounted"] is not True or j["failed"] is not False or not j["deltas"]:
                    why = "unexpected state: %s" % p.stdout.decode()[:300]
            except (ValueError, KeyError, TypeError) as e:
                why = "invalid JSON (%s): %r" % (e, p.stdout[:300])
    except subprocess.TimeoutExpired:
        why = "no answer within 10 s"
    worst = max(worst, time.monotonic() - t0)
    n += 1
    if why:
        fails += 1
        if len(errors) < 10:
            errors.append(why)
    time.sleep(0.01)
with open(out + ".tmp", "w") as f:
    json.dump({"calls": n, "failures": fails, "max_ms": round(worst * 1000, 1),
               "frozen_seen": frozen, "errors": errors}, f)
os.rename(out + ".tmp", out)
PY
	poll_pid=$!
	bg_pids+=("$poll_pid")
}

# stop_status_poll: stop the poller and wait for its summary
stop_status_poll() {
	: >"$T/stop-poll"
	wait "$poll_pid"
}

# fio_ok JSON: every job of a fio JSON output ended without an error and
# read (and so verified) something
fio_ok() {
	python3 -c '
import json, sys
s = open(sys.argv[1]).read()
j = json.loads(s[s.index("\n{") + 1:] if not s.startswith("{") else s)
bad = 0
for jb in j["jobs"]:
    print("fio %s: error %d, read %d MiB, written %d MiB" % (jb["jobname"], jb["error"],
          jb["read"]["io_bytes"] >> 20, jb["write"]["io_bytes"] >> 20))
    if jb["error"] or not jb["read"]["io_bytes"] or not jb["write"]["io_bytes"]:
        bad = 1
sys.exit(bad)
' "$1"
}

@test "rotation under fio verify load: 30+ rounds, status always answers, image clean" {
	run_ok ploopctl init -s 1G "$D"
	pf_mount "$D" "$M"
	# eight jobs, each on its own 16 MiB region 128 MiB apart, so crc32c
	# verification is valid; verify_backlog verifies while writing
	timeout 300 fio --name=rot --filename="$M/disk" --ioengine=libaio --direct=1 \
		--numjobs=8 --iodepth=32 --rw=randrw --bs=4k --size=16M \
		--offset_increment=128M --verify=crc32c --verify_backlog=1024 \
		--verify_fatal=1 --verify_state_save=0 --time_based --runtime=30 \
		--output-format=json --output="$T/fio.json" >"$T/fio.out" 2>&1 3>&- &
	fio_pid=$!
	bg_pids+=("$fio_pid")
	start_status_poll "$D" "$T/poll.json"

	rounds=0 loaded=0 failed=0
	t0=$SECONDS
	while kill -0 "$fio_pid" 2>/dev/null || [ "$rounds" -lt 30 ]; do
		kill -0 "$fio_pid" 2>/dev/null && loaded=$((loaded + 1))
		rc=0
		timeout 60 "$ROTATE" --quiet --keep 2 --lock-timeout 5 "$D" >>"$T/rotate.out" 2>&1 || rc=$?
		rounds=$((rounds + 1))
		if [ "$rc" -ne 0 ]; then
			failed=$((failed + 1))
			echo "round $rounds: exit $rc" >>"$T/rotate.out"
		fi
		[ "$((SECONDS - t0))" -lt 240 ] || break
	done
	fio_rc=0
	wait "$fio_pid" || fio_rc=$?
	stop_status_poll
	poll=$(cat "$T/poll.json")
	echo "# rotation: $rounds rounds ($loaded under fio), $failed failed, $((SECONDS - t0)) s" >&3
	echo "# status --json: $(json_get "$poll" 'j["calls"]') calls, $(json_get "$poll" 'j["failures"]') failed, max latency $(json_get "$poll" 'j["max_ms"]') ms, frozen seen $(json_get "$poll" 'j["frozen_seen"]') times" >&3
	cat "$T/rotate.out"
	cat "$T/fio.out"
	echo "$poll"

	[ "$failed" -eq 0 ]
	[ "$rounds" -ge 30 ]
	[ "$fio_rc" -eq 0 ]
	fio_ok "$T/fio.json"
	! grep -Eiq 'bad magic|verify failed|crc32c.*(fail|mismatch)|verify: ' "$T/fio.out"
	[ "$(json_get "$poll" 'j["failures"]')" -eq 0 ]
	[ "$(json_get "$poll" 'j["calls"]')" -ge 100 ]
	# (d) status answers within a second, also while frozen or merging
	[ "$(json_get "$poll" 'int(j["max_ms"] < 1000)')" -eq 1 ]

	run_ok ploopctl status --json "$D"
	st=$output
	echo "# daemon: $(json_get "$st" 'j["freezes"]') freezes, longest stall $(json_get "$st" 'j["stall_max_us"]') us" >&3
	[ "$(json_get "$st" 'j["failed"]')" = False ]
	[ "$(json_get "$st" 'j["frozen"]')" = False ]
	[ "$(json_get "$st" 'len(j["deltas"])')" -eq 3 ]
	[ "$(n_snapshots "$D")" -eq 2 ]
	[ "$(timeout 10 ls "$M/snapshots" | wc -l)" -eq 2 ]
	# the daemon's events tell the same story: one snapshot per round, a
	# merge for each round after the first two, nothing failed or lost
	last=$(json_get "$st" 'j["last_event"]')
	run_ok timeout 60 "$PLOOPCTL" events --after 0 --count "$last" "$D"
	ev=$output
	[ "$(wc -l <<<"$ev")" -eq "$last" ]
	[ "$(awk '{ print $1 }' <<<"$ev")" = "$(seq 1 "$last")" ]
	[ "$(awk '$3 == "snapshot"' <<<"$ev" | wc -l)" -eq "$rounds" ]
	[ "$(awk '$3 == "merge-start"' <<<"$ev" | wc -l)" -eq $((rounds - 2)) ]
	[ "$(awk '$3 == "merge-done"' <<<"$ev" | wc -l)" -eq $((rounds - 2)) ]
	[ -z "$(awk '$3 ~ /failed|lost|enospc/' <<<"$ev")" ]

	# what the mount serves is what the files hold: the same after a
	# remount and for qemu reading the chain
	want=$(disk_sum "$M/disk")
	pf_umount "$M"
	image_ok "$D"
	[ "$(delta_files "$D" | wc -l)" -eq 3 ]
	run_ok timeout 300 qemu-img convert --image-opts "$(qemu_chain_opts "$D")" -O raw "$T/conv.raw"
	[ "$(disk_sum "$T/conv.raw")" = "$want" ]
	rm -f "$T/conv.raw"
}

@test "ext4 on a loop device through 10 rotations while copying: e2fsck clean, files verify" {
	F=$T/fs
	mkdir -p "$F" "$T/src"
	for i in 1 2 3 4 5 6; do
		head -c $((12 * MiB)) /dev/urandom >"$T/src/f$i"
	done
	(cd "$T/src" && sha256sum f*) >"$T/sums"
	run_ok ploopctl init -s 1G "$D"
	pf_mount "$D" "$M"
	dev=$(timeout 60 losetup --direct-io=on -f --show "$M/disk")
	[ "$(losetup -n -O DIO "$dev" | tr -d ' ')" = 1 ]
	run_ok timeout 120 mkfs.ext4 -q -F "$dev"
	timeout 60 mount "$dev" "$F"
	timeout 120 cp -r "$T/src" "$F/a"
	timeout 60 sync -f "$F"
	start_status_poll "$D" "$T/poll.json"
	# copies go on while the rotations run
	timeout 300 bash -c 'for i in 1 2 3 4; do cp -r "$1/src" "$2/b$i" && sync -f "$2" || exit 1; done' \
		_ "$T" "$F" 3>&- &
	cp_pid=$!
	bg_pids+=("$cp_pid")
	for r in $(seq 1 10); do
		run_ok timeout 60 "$ROTATE" --keep 2 "$D"
		echo "$output"
		sleep 0.2
	done
	wait "$cp_pid"
	stop_status_poll
	poll=$(cat "$T/poll.json")
	echo "# ext4 pass: status --json $(json_get "$poll" 'j["calls"]') calls, max latency $(json_get "$poll" 'j["max_ms"]') ms" >&3
	[ "$(json_get "$poll" 'j["failures"]')" -eq 0 ]
	[ "$(json_get "$poll" 'int(j["max_ms"] < 1000)')" -eq 1 ]
	[ "$(n_snapshots "$D")" -eq 2 ]
	for x in a b1 b2 b3 b4; do
		run_ok timeout 120 bash -c 'cd "$1" && sha256sum -c --quiet "$2"' _ "$F/$x" "$T/sums"
	done
	timeout 60 umount "$F"
	run_ok timeout 120 e2fsck -fn "$dev"
	loop_detach "$dev" "$M/disk"
	pf_umount "$M"
	image_ok "$D"

	# and from the files, after a remount
	pf_mount "$D" "$M"
	dev=$(timeout 60 losetup -r -f --show "$M/disk")
	timeout 60 mount -o ro "$dev" "$F"
	for x in a b4; do
		run_ok timeout 120 bash -c 'cd "$1" && sha256sum -c --quiet "$2"' _ "$F/$x" "$T/sums"
	done
	timeout 60 umount "$F"
	loop_detach "$dev" "$M/disk"
	pf_umount "$M"
}

# pair CMD1 -- CMD2: run two ploopctl commands at once; their exit
# statuses in rc[0] and rc[1], their output in $T/out0 and $T/out1
pair() {
	local -a a=()
	local p0 p1
	while [ "$1" != -- ]; do a+=("$1"); shift; done
	shift
	timeout 60 "$PLOOPCTL" "${a[@]}" >"$T/out0" 2>&1 3>&- &
	p0=$!
	timeout 60 "$PLOOPCTL" "$@" >"$T/out1" 2>&1 3>&- &
	p1=$!
	rc=(0 0)
	wait "$p0" || rc[0]=$?
	wait "$p1" || rc[1]=$?
}

# pair_ok WHAT: at most one of the pair failed, and only as busy (exit 5)
# with one line naming the image; counts the refusals in $busy
pair_ok() {
	local k
	if [ "${rc[0]}" -ne 0 ] && [ "${rc[1]}" -ne 0 ]; then
		echo "$1: both failed: ${rc[0]} $(cat "$T/out0") / ${rc[1]} $(cat "$T/out1")" >&2
		return 1
	fi
	for k in 0 1; do
		[ "${rc[k]}" -eq 0 ] && continue
		if [ "${rc[k]}" -ne 5 ] || [ "$(wc -l <"$T/out$k")" -ne 1 ] ||
			! grep -qF "$D" "$T/out$k"; then
			echo "$1: command $k failed other than busy: exit ${rc[k]}: $(cat "$T/out$k")" >&2
			return 1
		fi
		busy=$((busy + 1))
	done
}

# ok N: 1 if exit status N is 0, else 0
ok() {
	if [ "$1" -eq 0 ]; then echo 1; else echo 0; fi
}

# structural_pairs: 6 rounds of two snapshots, a snapshot and a delete
# of the oldest, and two deletes, all at once; the chain length follows
# the successes
structural_pairs() {
	local i k before after g
	local -a c
	busy=0
	for i in $(seq 1 6); do
		before=$(n_snapshots "$D")
		pair snapshot "$D" -- snapshot "$D"
		pair_ok "snapshot pair $i"
		after=$(n_snapshots "$D")
		[ "$after" -eq $((before + $(ok "${rc[0]}") + $(ok "${rc[1]}"))) ] ||
			{ echo "snapshot pair $i: $before -> $after with ${rc[*]}" >&2; return 1; }
		for k in 0 1; do
			[ "${rc[k]}" -eq 0 ] || continue
			g=$(cat "$T/out$k")
			chain "$D" | grep -qxF "$g" ||
				{ echo "snapshot pair $i: $g is not in the chain" >&2; return 1; }
		done

		# data in the top makes the merges copy something
		if pf_is_mounted "$M"; then
			write_random "$M/disk" $((i % 8)) 8
		fi
		mapfile -t c < <(chain "$D")
		before=${#c[@]}
		pair snapshot "$D" -- snapshot-delete "$D" "${c[0]}"
		pair_ok "snapshot/delete pair $i"
		after=$(n_snapshots "$D")
		[ "$after" -eq $((before + $(ok "${rc[0]}") - $(ok "${rc[1]}"))) ] ||
			{ echo "snapshot/delete pair $i: $before -> $after with ${rc[*]}" >&2; return 1; }
		if [ "${rc[1]}" -eq 0 ] && chain "$D" | grep -qxF "${c[0]}"; then
			echo "snapshot/delete pair $i: ${c[0]} deleted but still there" >&2
			return 1
		fi

		while [ "$(n_snapshots "$D")" -lt 3 ]; do
			run_ok ploopctl snapshot "$D"
		done
		mapfile -t c < <(chain "$D")
		before=${#c[@]}
		pair snapshot-delete "$D" "${c[0]}" -- snapshot-delete "$D" "${c[2]}"
		pair_ok "delete pair $i"
		after=$(n_snapshots "$D")
		[ "$after" -eq $((before - $(ok "${rc[0]}") - $(ok "${rc[1]}"))) ] ||
			{ echo "delete pair $i: $before -> $after with ${rc[*]}" >&2; return 1; }
	done
}

@test "two structural commands at once: at most one refused, as busy (5); the chain counts the successes" {
	run_ok ploopctl init -s 64M "$D"
	for i in 1 2 3; do run_ok ploopctl snapshot "$D"; done
	# unmounted: ploopctl's own lock on the image directory
	structural_pairs
	echo "# unmounted: $busy of 36 commands refused as busy" >&3
	image_ok "$D"

	pf_mount "$D" "$M"
	write_random "$M/disk" 0 64
	structural_pairs
	echo "# mounted: $busy of 36 commands refused as busy" >&3
	run_ok ploopctl status --json "$D"
	[ "$(json_get "$output" 'j["failed"]')" = False ]
	[ "$(json_get "$output" 'len(j["deltas"])')" -eq "$(($(n_snapshots "$D") + 1))" ]
	[ "$(timeout 10 ls "$M/snapshots" | wc -l)" -eq "$(n_snapshots "$D")" ]
	want=$(disk_sum "$M/disk")
	pf_umount "$M"
	image_ok "$D"
	pf_mount "$D" "$M"
	[ "$(disk_sum "$M/disk")" = "$want" ]
	pf_umount "$M"
}

@test "snapshot views: listed, disk-sized, frozen content, read-only, loop-mountable, gone after delete" {
	F=$T/fs
	mkdir -p "$F" "$T/fs2"
	run_ok ploopctl init -s 256M "$D"
	pf_mount "$D" "$M"
	[ -z "$(timeout 10 ls -A "$M/snapshots")" ]
	write_random "$M/disk" 0 40
	write_random "$M/disk" 200 16
	s1=$(disk_sum "$M/disk")
	run_ok ploopctl snapshot "$D"
	g1=$output
	v1=$M/snapshots/$(tr -d '{}' <<<"$g1")
	[ "$(timeout 10 ls "$M/snapshots")" = "$(tr -d '{}' <<<"$g1")" ]
	[ "$(timeout 10 stat -c %s "$v1")" -eq $((256 * MiB)) ]
	[ "$(timeout 10 stat -c %s "$M/disk")" -eq $((256 * MiB)) ]
	[ "$(disk_sum "$v1")" = "$s1" ]
	# the live disk changes, the view does not
	write_random "$M/disk" 10 20
	write_random "$M/disk" 250 6
	timeout 60 fallocate -p -o $((30 * MiB)) -l $((4 * MiB)) "$M/disk"
	[ "$(disk_sum "$M/disk")" != "$s1" ]
	[ "$(disk_sum "$v1")" = "$s1" ]
	# read-only: opening for writing fails with EROFS
	run ! timeout 10 dd if=/dev/zero of="$v1" bs=4k count=1 conv=notrunc status=none
	[[ "$output" == *"Read-only file system"* ]]
	run ! timeout 10 dd if=/dev/zero of="$v1" bs=4k count=1 conv=notrunc oflag=direct status=none
	[[ "$output" == *"Read-only file system"* ]]
	run_ok timeout 10 python3 -c '
import errno, os, sys
for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_TRUNC):
    try:
        os.close(os.open(sys.argv[1], flags))
        sys.exit("open with flags %#o succeeded" % flags)
    except OSError as e:
        assert e.errno == errno.EROFS, e
' "$v1"
	run ! timeout 10 truncate -s 1M "$v1"
	run ! timeout 10 touch "$M/snapshots/new"
	[ "$(disk_sum "$v1")" = "$s1" ]

	# ext4 made and filled before a snapshot; the snapshot is taken with
	# the file system mounted (crash-consistent: mount -o ro,noload)
	dev=$(timeout 60 losetup --direct-io=on -f --show "$M/disk")
	run_ok timeout 120 mkfs.ext4 -q -F "$dev"
	timeout 60 mount "$dev" "$F"
	for i in 1 2 3; do
		timeout 60 dd if=/dev/urandom of="$F/f$i" bs=1M count=8 status=none
	done
	(cd "$F" && sha256sum f1 f2 f3) >"$T/sums"
	timeout 60 sync -f "$F"
	run_ok ploopctl snapshot "$D"
	g2=$output
	v2=$M/snapshots/$(tr -d '{}' <<<"$g2")
	s2=$(disk_sum "$v2")
	# the live file system moves on
	rm "$F/f2"
	timeout 60 dd if=/dev/urandom of="$F/f1" bs=1M count=8 conv=notrunc status=none
	timeout 60 dd if=/dev/urandom of="$F/g" bs=1M count=16 status=none
	timeout 60 sync -f "$F"
	[ "$(disk_sum "$v2")" = "$s2" ]
	[ "$(timeout 10 ls "$M/snapshots" | sort)" = "$(printf '%s\n' "$g1" "$g2" | tr -d '{}' | sort)" ]

	rdev=$(timeout 60 losetup -r -f --show "$v2")
	[ "$(losetup -n -O RO "$rdev" | tr -d ' ')" = 1 ]
	run_ok timeout 60 mount -o ro,noload "$rdev" "$T/fs2"
	run_ok timeout 60 bash -c 'cd "$1" && sha256sum -c "$2"' _ "$T/fs2" "$T/sums"
	[ ! -e "$T/fs2/g" ]
	timeout 60 umount "$T/fs2"
	loop_detach "$rdev" "$v2"

	# deleting the older snapshot merges the newer one into its file:
	# the newer view still reads the same, the older one is gone.  Its
	# view is open: refused (busy), unless forced
	exec {vfd}<"$v1"
	run ploopctl snapshot-delete "$D" "$g1"
	[ "$status" -eq 5 ]
	[[ $output == *"its view is open"* ]]
	run_ok ploopctl snapshot-delete --force "$D" "$g1"
	echo "$output"
	# reads of a view still open after its snapshot is gone: ESTALE
	run timeout 10 python3 -c '
import errno, os, sys
try:
    os.pread(int(sys.argv[1]), 4096, 0)
except OSError as e:
    sys.exit(0 if e.errno == errno.ESTALE else "read: %s" % e)
sys.exit("a read of the deleted view succeeded")
' "$vfd"
	exec {vfd}<&-
	[ "$status" -eq 0 ] || { echo "$output" >&2; false; }
	[ "$(timeout 10 ls "$M/snapshots")" = "$(tr -d '{}' <<<"$g2")" ]
	[ ! -e "$v1" ]
	[ "$(disk_sum "$v2")" = "$s2" ]
	rdev=$(timeout 60 losetup -r -f --show "$v2")
	run_ok timeout 60 mount -o ro,noload "$rdev" "$T/fs2"
	run_ok timeout 60 bash -c 'cd "$1" && sha256sum -c "$2"' _ "$T/fs2" "$T/sums"
	timeout 60 umount "$T/fs2"
	loop_detach "$rdev" "$v2"

	run_ok ploopctl snapshot-delete "$D" "$g2"
	[ -z "$(timeout 10 ls -A "$M/snapshots")" ]
	[ ! -e "$v2" ]
	# the events of all this
	run_ok timeout 30 "$PLOOPCTL" events --after 0 --timeout 2 "$D"
	echo "$output"
	[ "$(awk '$3 == "snapshot"' <<<"$output" | wc -l)" -eq 2 ]
	[ "$(awk '$3 == "merge-done"' <<<"$output" | wc -l)" -eq 2 ]

	# the live file system is intact
	timeout 60 umount "$F"
	run_ok timeout 120 e2fsck -fn "$dev"
	loop_detach "$dev" "$M/disk"
	pf_umount "$M"
	image_ok "$D"
}

@test "snapshot views and the daemon take GUIDs as users copy them: no braces, any case" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 4
	s1=$(disk_sum "$M/disk")
	# online snapshot, the GUID upper case without braces: stored and
	# printed as ploop writes it
	run_ok ploopctl snapshot -u 0E24C2B0-9A0B-4C5E-8D2F-6F1F3E2A9B11 "$D"
	g='{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}'
	[ "$output" = "$g" ]
	name=$(timeout 10 ls "$M/snapshots")
	[ "$name" = 0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11 ]
	write_random "$M/disk" 0 4
	# the view under the listed name, in upper case, with braces
	for v in "$name" "${name^^}" "{$name}" "{${name^^}}"; do
		[ "$(disk_sum "$M/snapshots/$v")" = "$s1" ]
	done
	# but not under a name that is no GUID
	[ ! -e "$M/snapshots/{$name" ]
	[ ! -e "$M/snapshots/${name}0" ]
	# delete it by the view's name, through the daemon
	run_ok ploopctl snapshot-delete "$D" "$name"
	[[ "$output" == "deleted snapshot $g: "* ]]
	[ -z "$(timeout 10 ls -A "$M/snapshots")" ]
	[ ! -e "$M/snapshots/${name^^}" ]
	pf_umount "$M"
	image_ok "$D"
}

# timed_out_within MS_MIN MS_MAX: the last run (timed by t0, in ns) exited
# 8 within [MS_MIN, MS_MAX) ms, with one line saying that the daemon of
# $D did not answer within 1 s
timed_out_within() {
	local ms=$((($(date +%s%N) - t0) / 1000000))
	echo "# exit $status after $ms ms: $output" >&3
	if [ "$status" -ne 8 ] || [ "${#lines[@]}" -ne 1 ] ||
		[ "$output" != "ploopctl: $D: the ploopfs daemon did not answer within 1 s (is it stopped or hung?)" ] ||
		[ "$ms" -lt "$1" ] || [ "$ms" -ge "$2" ]; then
		echo "want exit 8 within [$1, $2) ms and the timeout line" >&2
		return 1
	fi
}

@test "a stopped daemon: ploopctl gives up after --timeout with exit 8, the daemon does not act on it later" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 8
	run_ok ploopctl snapshot "$D"
	g1=$output
	write_random "$M/disk" 4 8
	want=$(disk_sum "$M/disk")
	list=$(ploopctl snapshot-list --json "$D")
	stopped=$(pf_pid "$M")
	kill -STOP "$stopped"

	# the daemon is stopped: the kernel still queues connections and
	# requests, and nobody answers
	for cmd in "status" "status --json" "snapshot" "snapshot-delete" "snapshot-merge"; do
		read -ra args <<<"$cmd"
		args+=(--timeout 1 "$D")
		[ "${args[0]}" != snapshot-delete ] || args+=("$g1")
		t0=$(date +%s%N)
		run ploopctl "${args[@]}"
		timed_out_within 900 5000
	done
	# --timeout 0 waits as long as it takes
	timeout 120 "$PLOOPCTL" status --timeout 0 "$D" >"$T/status0.out" 2>&1 3>&- &
	waiter=$!
	sleep 2
	kill -0 "$waiter"
	# events: --timeout is how long to listen; a silent stream is no error
	t0=$(date +%s%N)
	run ploopctl events --timeout 1 "$D"
	ms=$((($(date +%s%N) - t0) / 1000000))
	[ "$status" -eq 0 ] && [ -z "$output" ] && [ "$ms" -ge 900 ] && [ "$ms" -lt 5000 ]

	kill -CONT "$stopped"
	stopped=
	wait "$waiter" || { cat "$T/status0.out"; false; }
	grep -q '^mounted: ' "$T/status0.out"
	run_ok ploopctl status --timeout 1 --json "$D"
	[ "$(json_get "$output" 'j["frozen"]')" = False ]
	[ "$(json_get "$output" 'len(j["deltas"])')" -eq 2 ]
	# the snapshot and the deletes whose clients gave up were not done
	[ "$(ploopctl snapshot-list --json "$D")" = "$list" ]
	[ "$(disk_sum "$M/disk")" = "$want" ]
	run_ok ploopctl snapshot-delete --timeout 1 "$D" "$g1"
	[ "$(n_snapshots "$D")" -eq 0 ]
	[ "$(disk_sum "$M/disk")" = "$want" ]
	pf_umount "$M"
	image_ok "$D"
}

@test "a daemon stopped in the middle of a merge: snapshot-delete exits 8; resumed, the daemon completes the merge" {
	run_ok ploopctl init -s 512M "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 256
	run_ok ploopctl snapshot "$D"
	g1=$output
	# the child of g1 holds 256 clusters: the merge down into g1 takes
	# a while, marked <Temporary/> in the descriptor while it runs
	write_random "$M/disk" 0 256
	run_ok ploopctl snapshot "$D"
	want=$(disk_sum "$M/disk")
	pid=$(pf_pid "$M")
	t0=$(date +%s%N)
	timeout 120 "$PLOOPCTL" snapshot-delete --timeout 1 "$D" "$g1" \
		>"$T/del.out" 2>&1 3>&- &
	del=$!
	until grep -q '<Temporary' "$D/DiskDescriptor.xml"; do
		if ! kill -0 "$del" 2>/dev/null; then
			echo "the delete ended before the daemon could be stopped: $(cat "$T/del.out")" >&2
			return 1
		fi
		sleep 0.005
	done
	kill -STOP "$pid"
	stopped=$pid
	rc=0
	wait "$del" || rc=$?
	ms=$((($(date +%s%N) - t0) / 1000000))
	echo "# snapshot-delete: exit $rc after $ms ms: $(cat "$T/del.out")" >&3
	[ "$rc" -eq 8 ]
	[ "$(cat "$T/del.out")" = "ploopctl: $D: the ploopfs daemon did not answer within 1 s (is it stopped or hung?)" ]
	[ "$ms" -lt 10000 ]

	kill -CONT "$pid"
	stopped=
	# the merge goes on without its client and completes
	deadline=$((SECONDS + 120))
	while grep -q '<Temporary' "$D/DiskDescriptor.xml"; do
		[ "$SECONDS" -lt "$deadline" ]
		sleep 0.05
	done
	[ "$(n_snapshots "$D")" -eq 1 ]
	! chain "$D" | grep -qxF "$g1"
	run_ok ploopctl status --timeout 1 "$D"
	[ "$(disk_sum "$M/disk")" = "$want" ]
	# a merge that goes on is no timeout, however long it takes (the
	# daemon sends keepalives): 256 clusters up into the top
	g2=$(chain "$D")
	t0=$(date +%s%N)
	run_ok ploopctl snapshot-delete --timeout 1 "$D" "$g2"
	echo "# merge up of 256 MiB under --timeout 1: $((($(date +%s%N) - t0) / 1000000)) ms" >&3
	[ "$(n_snapshots "$D")" -eq 0 ]
	[ "$(disk_sum "$M/disk")" = "$want" ]
	pf_umount "$M"
	image_ok "$D"
}

@test "12 online snapshot + delete cycles: names stay short, the last delete leaves root.hds, data intact" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 8
	for i in $(seq 1 12); do
		run_ok ploopctl snapshot "$D"
		g=$output
		write_random "$M/disk" $((i % 8)) 1
		if [ $((i % 4)) = 0 ]; then
			# a second snapshot, the older deleted: a down merge
			run_ok ploopctl snapshot "$D"
			run_ok ploopctl snapshot-delete "$D" "$g"
			run_ok ploopctl snapshot-list --json "$D"
			g=$(json_get "$output" '[s["guid"] for s in j["snapshots"] if not s["current"]][0]')
		fi
		# the only snapshot into the top: an up merge out of the base
		run_ok ploopctl snapshot-delete "$D" "$g"
		run_ok ploopctl snapshot-list --json "$D"
		[ "$(json_get "$output" 'len(j["snapshots"])')" = 1 ]
		[ "$(json_get "$output" 'j["snapshots"][0]["file"]')" = root.hds ]
		# the daemon names it so too
		run_ok ploopctl status --json "$D"
		[ "$(json_get "$output" 'j["deltas"][0]["file"]')" = root.hds ]
	done
	want=$(disk_sum "$M/disk")
	pf_umount "$M"
	[ "$(find "$D" -mindepth 1 | sort | tr '\n' ' ')" = "$D/DiskDescriptor.xml $D/root.hds " ]
	image_ok "$D"
	pf_mount "$D" "$M"
	[ "$(disk_sum "$M/disk")" = "$want" ]
}
