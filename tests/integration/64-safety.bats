#!/usr/bin/env bats
# Safe by default: unmount means closed, a background start that fails
# says so, options are checked, allow_other keeps the disk the owner's.

load helpers

setup() {
	pf_dirs
	run_ok ploopctl init -s 64M "$D"
	mkdir -p "$M"
}

teardown() {
	pf_teardown
}

# bg_mount [OPTS...]: ploopfs in the background, as users start it
bg_mount() {
	timeout 60 "$PLOOPFS" "$@" "$D" "$M"
}

# stopped_unmount: mount, write, stop the daemon, unmount: the mount is
# gone but the daemon has not closed the image yet; it resumes in a
# second (any delay shows the same: whoever comes now must wait)
stopped_unmount() {
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 8
	pid=$(pf_pid "$M")
	kill -STOP "$pid"
	timeout 60 fusermount3 -u "$M"
	(sleep 1; kill -CONT "$pid") 3>&- &
}

@test "after fusermount3 -u returns, check waits for the daemon to close" {
	stopped_unmount
	run_ok ploopctl check "$D"
	[ "$(pf_top_inuse "$D")" = closed ]
	[ "$(pf_wait_exit "$M" 60)" = 0 ]
}

@test "after fusermount3 -u returns, snapshot and info wait for the daemon to close" {
	stopped_unmount
	run_ok ploopctl snapshot "$D"
	[ "$(pf_wait_exit "$M" 60)" = 0 ]
	run_ok ploopctl check "$D"
	stopped_unmount
	run_ok ploopctl info --json "$D"
	top=$(json_get "$output" 'j["deltas"][-1]["in_use"]')
	[ "$top" = closed ]
}

@test "a remount right after the unmount waits for the closing daemon" {
	stopped_unmount
	run timeout 60 "$PLOOPFS" "$D" "$M"
	echo "$output"
	[ "$status" -eq 0 ]
	[ -f "$M/disk" ]
	timeout 60 fusermount3 -u "$M"
}

@test "a daemon closing for longer than --timeout is reported, exit 8" {
	pf_mount "$D" "$M"
	pid=$(pf_pid "$M")
	kill -STOP "$pid"
	timeout 60 fusermount3 -u "$M"
	run ploopctl check --timeout 1 "$D"
	kill -CONT "$pid"
	echo "$output"
	[ "$status" -eq 8 ]
	[[ $output == *"did not answer"* || $output == *"still closing"* ]]
	[ "$(pf_wait_exit "$M" 60)" = 0 ]
}

@test "unmount then check, remount and snapshot at once, three rounds" {
	for i in 1 2 3; do
		bg_mount
		write_random "$M/disk" $((i * 4)) 4
		timeout 60 fusermount3 -u "$M"
		run_ok ploopctl check "$D"
		[ "$(pf_top_inuse "$D")" = closed ]
		bg_mount
		timeout 60 fusermount3 -u "$M"
		run_ok ploopctl snapshot "$D"
	done
	run_ok ploopctl check "$D"
}

@test "a failed start in the background exits non-zero with the reason on stderr" {
	: >"$D/.ploopfs.sock"	# stale, and not a socket
	run --separate-stderr timeout 60 "$PLOOPFS" "$D" "$M"
	echo "status $status stderr: $stderr"
	[ "$status" -ne 0 ]
	[[ $stderr == *".ploopfs.sock exists and is not a socket"* ]]
	! pf_is_mounted "$M"
	[ "$(pf_top_inuse "$D")" = closed ]
}

@test "a background start that works exits 0 and says nothing" {
	run --separate-stderr timeout 60 "$PLOOPFS" "$D" "$M"
	[ "$status" -eq 0 ]
	[ -z "$stderr" ]
	[ -f "$M/disk" ]
	timeout 60 fusermount3 -u "$M"
}

@test "bad option values are refused with one line and exit 2" {
	for o in threads=0 threads=-1 threads=1x enospc_timeout=-1 \
		enospc_timeout=9999999999 name=snapshots max_threads=4 \
		commit=0; do
		run --separate-stderr timeout 60 "$PLOOPFS" -o "$o" "$D" "$M"
		echo "$o: status $status: $stderr"
		[ "$status" -eq 2 ]
		[ "$(wc -l <<<"$stderr")" -eq 1 ]
		[[ $stderr == ploopfs:* ]]
	done
	! pf_is_mounted "$M"
}

@test "--help lists threads= and not libfuse's max_threads" {
	run timeout 60 "$PLOOPFS" --help
	[ "$status" -eq 0 ]
	[[ $output == *"threads=<n>"* ]]
	[[ $output != *max_threads* ]]
}

# others_can_reach DIR: let other users traverse down to DIR (bats makes
# its directories 0700)
others_can_reach() {
	local d
	d=$(realpath "$1")
	while [ "$d" != / ]; do
		chmod o+x "$d"
		d=$(dirname "$d")
	done
}

@test "allow_other lets other users see the mount, not read or write the disk" {
	others_can_reach "$M"
	pf_mount "$D" "$M" -o allow_other
	write_random "$M/disk" 0 1
	run_ok ploopctl snapshot "$D"
	view=$(ls "$M/snapshots")
	[ -n "$view" ]
	# another user sees the mount ...
	run setpriv --reuid=65534 --regid=65534 --clear-groups ls "$M"
	[ "$status" -eq 0 ]
	[[ $output == *disk* ]]
	# ... but cannot read or write the disk, nor read a view
	run setpriv --reuid=65534 --regid=65534 --clear-groups \
		dd if="$M/disk" of=/dev/null bs=4k count=1
	[ "$status" -ne 0 ]
	[[ $output == *"Permission denied"* ]]
	run setpriv --reuid=65534 --regid=65534 --clear-groups \
		dd if=/dev/zero of="$M/disk" bs=4k count=1 conv=notrunc
	[ "$status" -ne 0 ]
	[[ $output == *"Permission denied"* ]]
	run setpriv --reuid=65534 --regid=65534 --clear-groups \
		dd if="$M/snapshots/$view" of=/dev/null bs=4k count=1
	[ "$status" -ne 0 ]
	[[ $output == *"Permission denied"* ]]
	# the owner still can
	dd if="$M/snapshots/$view" of=/dev/null bs=4k count=1 status=none
	pf_umount "$M"
}

@test "status names a mount whose daemon was killed as stale" {
	pf_mount "$D" "$M"
	kill -9 "$(pf_pid "$M")"
	pf_wait_exit "$M" 30 >/dev/null
	run_ok ploopctl status "$D"
	[[ $output == *"stale mount on $(realpath "$M") (its daemon is gone): run fusermount3 -u"* ]]
	run_ok ploopctl status --json "$D"
	[ "$(json_get "$output" 'j["stale_mount"]')" = "$(realpath "$M")" ]
	timeout 30 fusermount3 -u "$M"
	run_ok ploopctl status --json "$D"
	[ "$(json_get "$output" 'j["stale_mount"]')" = None ]
}

# Item: ploopctl talks to the right daemon.  Image A, not mounted, with a
# .ploopfs.sock leading to the daemon of image B (a symbolic link, then a
# hard link): every command refuses it, and neither image changes.
@test "a .ploopfs.sock leading to another image's daemon is refused" {
	local B=$T/imgb MB=$T/mntb before_a before_b
	run_ok ploopctl init -s 64M "$B"
	mkdir -p "$MB"
	pf_mount "$B" "$MB"
	before_a=$(tree_sum "$D")
	before_b=$(ploopctl snapshot-list "$B")

	ln -s "$B/.ploopfs.sock" "$D/.ploopfs.sock"
	for cmd in snapshot status; do
		run --separate-stderr ploopctl "$cmd" "$D"
		echo "$cmd: $status: $stderr"
		[ "$status" -eq 1 ]
		[ "$(wc -l <<<"$stderr")" -eq 1 ]
		[[ $stderr == *"$D: cannot reach the ploopfs daemon: .ploopfs.sock is a symbolic link, not the socket of this image's daemon (remove it)" ]]
	done
	rm "$D/.ploopfs.sock"

	ln "$B/.ploopfs.sock" "$D/.ploopfs.sock"
	run --separate-stderr ploopctl snapshot "$D"
	[ "$status" -eq 1 ]
	[[ $stderr == *"$D: cannot reach the ploopfs daemon: the daemon on .ploopfs.sock serves another image directory (device "* ]]
	rm "$D/.ploopfs.sock"

	[ "$(ploopctl snapshot-list "$B")" = "$before_b" ]
	[ "$(tree_sum "$D")" = "$before_a" ]
	# its own socket still works
	run_ok ploopctl snapshot "$B"
	pf_umount "$MB"
}

# ctl_daemon_pid: the daemon that ploopctl mount started on $D $M
ctl_daemon_pid() {
	pgrep -n -f -- "ploopfs.* $D $M\$"
}

# ploopctl mount / umount: when umount returns, the daemon has exited and
# the image is closed: check, a remount and qemu-img need no wait.
@test "ploopctl umount returns with the image closed; check and remount need no wait" {
	local i pid
	for i in 1 2 3 4 5; do
		run_ok ploopctl mount "$D" "$M"
		pf_is_mounted "$M"
		[ -f "$M/disk" ]
		pid=$(ctl_daemon_pid)
		write_random "$M/disk" $((i * 3)) 4
		if [ $((i % 2)) -eq 0 ]; then
			run_ok ploopctl umount "$D"	# by image directory
		else
			run_ok ploopctl umount "$M"	# by mount point
		fi
		[ -z "$output" ]
		! kill -0 "$pid" 2>/dev/null
		! pf_is_mounted "$M"
		flock -n "$D" true
		run_ok ploopctl check "$D"
		[ "$(pf_top_inuse "$D")" = closed ]
	done
	run_ok qemu-img check -f parallels "$D/root.hds"
}

@test "ploopctl umount of a disk in use: exit 5, one line, still mounted" {
	local dev
	run_ok ploopctl mount -o threads=4 "$D" "$M"
	dev=$(losetup -f --show "$M/disk")
	run --separate-stderr ploopctl umount "$M"
	loop_detach "$dev" "$M/disk"
	[ "$status" -eq 5 ]
	[ "$(wc -l <<<"$stderr")" -eq 1 ]
	[[ $stderr == *"the disk is in use"* ]]
	pf_is_mounted "$M"
	run_ok ploopctl umount "$M"
	! pf_is_mounted "$M"
}

@test "ploopctl umount waits at most --timeout for a daemon that does not close" {
	local pid
	run_ok ploopctl mount "$D" "$M"
	pid=$(ctl_daemon_pid)
	kill -STOP "$pid"
	run --separate-stderr ploopctl umount --timeout 1 "$M"
	kill -CONT "$pid"
	[ "$status" -eq 8 ]
	[[ $stderr == *"did not close the image within 1 s"* ]]
	timeout 30 tail --pid="$pid" -f /dev/null
	run_ok ploopctl check "$D"
}

@test "ploopctl umount of a mount whose daemon was killed: unmounted, exit 3 for the unclean image" {
	local pid
	run_ok ploopctl mount "$D" "$M"
	write_random "$M/disk" 0 4
	pid=$(ctl_daemon_pid)
	kill -9 "$pid"
	timeout 30 tail --pid="$pid" -f /dev/null
	run --separate-stderr ploopctl umount "$M"
	[ "$status" -eq 3 ]
	[[ $stderr == *"in-use flag is set"* ]]
	! pf_is_mounted "$M"
}

@test "ploopctl mount and umount: bad input, one line and a documented status" {
	run --separate-stderr ploopctl umount "$T/nothing"
	[ "$status" -eq 1 ]
	[ "$(wc -l <<<"$stderr")" -eq 1 ]
	run --separate-stderr ploopctl umount "$D"
	[ "$status" -eq 1 ]
	[[ $stderr == *"no ploopfs mount of or on it" ]]
	run ploopctl mount "$D"
	[ "$status" -eq 2 ]
	run ploopctl umount
	[ "$status" -eq 2 ]
	run --separate-stderr ploopctl mount "$T/nothing" "$M"
	[ "$status" -eq 1 ]
	[ "$(wc -l <<<"$stderr")" -eq 1 ]
	run --separate-stderr ploopctl mount -o threads=0 "$D" "$M"
	[ "$status" -eq 2 ]
	! pf_is_mounted "$M"
	run_ok ploopctl mount "$D" "$M"
	run --separate-stderr ploopctl mount "$D" "$M"
	[ "$status" -eq 5 ]
	run_ok ploopctl umount "$M"
}

# As ploopfs(8) says: the disk is served with direct I/O, so the kernel
# does not map it (ENODEV); a loop device over it can be mapped.
@test "mmap of the disk fails with ENODEV as documented; a loop device over it maps" {
	local dev
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 1
	run python3 -c 'import mmap,os,sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    mmap.mmap(fd, 4096)
except OSError as e:
    print(e.errno); sys.exit(0)
sys.exit(1)' "$M/disk"
	[ "$status" -eq 0 ]
	[ "$output" = 19 ]	# ENODEV
	grep -q 'ENODEV' "$BATS_TEST_DIRNAME/../../man/ploopfs.8"
	dev=$(losetup -f --show --direct-io=on "$M/disk")
	run python3 -c 'import mmap,os,sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 4096, prot=mmap.PROT_READ)
f = open(sys.argv[2], "rb")
sys.exit(0 if m[:4096] == f.read(4096) else 1)' "$dev" "$M/disk"
	loop_detach "$dev" "$M/disk"
	[ "$status" -eq 0 ]
	pf_umount "$M"
}
