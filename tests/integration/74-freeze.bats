#!/usr/bin/env bats
# ploopctl snapshot of a mounted disk freezes the file systems mounted
# from its loop devices (FIFREEZE) around the switch and thaws them
# (FITHAW) on every path: the snapshot of a live ext4 mounts read-only
# without journal recovery and holds what was written before it, without
# a sync; --no-freeze skips it; a file system frozen already fails the
# snapshot (exit 5); errors of the daemon and SIGTERM thaw.

load helpers

setup() {
	pf_dirs
	ROTATE=$BATS_TEST_DIRNAME/../../scripts/ploop-rotate
	pf_ploopctl_abs
	FS=$T/fs
	stopped=
}

teardown() {
	[ -z "$stopped" ] || kill -CONT "$stopped" 2>/dev/null || true
	# a test that failed with a file system frozen must not hang the
	# unmounts of pf_teardown
	[ -z "${FS:-}" ] || timeout 10 fsfreeze -u "$FS" 2>/dev/null || true
	pf_teardown
}

# live_fs: an image mounted at $M, its disk on loop device $dev (direct
# I/O), ext4 on it mounted at $FS
live_fs() {
	run_ok ploopctl init -s 512M "$D"
	pf_mount "$D" "$M"
	dev=$(timeout 60 losetup --direct-io=on -f --show "$M/disk")
	run_ok timeout 120 mkfs.ext4 -q -F "$dev"
	mkdir -p "$FS"
	run_ok timeout 60 mount "$dev" "$FS"
}

# writable DIR: a file can be created in DIR within 10 s (not frozen)
writable() {
	timeout 10 touch "$1/.writable" && rm -f "$1/.writable"
}

# view_dev GUID: a read-only loop device of the snapshot view, in $rdev
view_dev() {
	local v=$M/snapshots/${1//[\{\}]/}
	rdev=$(timeout 60 losetup -r -f --show "$v")
}

@test "snapshot of a live ext4: the view mounts read-only without recovery and holds the unsynced file" {
	live_fs
	# 50 MiB written and not synced: in the page cache and the journal
	timeout 60 dd if=/dev/urandom of="$FS/big" bs=1M count=50 status=none
	want=$(sha256sum <"$FS/big")
	run_ok ploopctl snapshot -v "$D"
	echo "$output"
	# one frozen and one thawed line on stderr, then the GUID on stdout
	[ "${lines[0]}" = "ploopctl: $FS: frozen" ]
	[ "${lines[1]}" = "ploopctl: $FS: thawed" ]
	g=${lines[2]}
	[[ "$g" =~ ^\{[0-9a-f-]{36}\}$ ]]
	[ "${#lines[@]}" -eq 3 ]
	writable "$FS"
	view_dev "$g"
	run timeout 60 dumpe2fs -h "$rdev"
	[[ "$output" != *needs_recovery* ]]
	mkdir -p "$T/view"
	# no noload: a journal needing recovery would refuse a read-only
	# device
	run_ok timeout 60 mount -o ro "$rdev" "$T/view"
	[ "$(sha256sum <"$T/view/big")" = "$want" ]
	run_ok timeout 60 umount "$T/view"
	loop_detach "$rdev" "$M/snapshots/${g//[\{\}]/}"
	# the live file system goes on
	timeout 60 dd if=/dev/urandom of="$FS/more" bs=1M count=4 conv=fsync status=none
}

@test "--no-freeze: not frozen, the view's journal needs recovery; ploop-rotate passes it on" {
	live_fs
	timeout 60 dd if=/dev/urandom of="$FS/big" bs=1M count=8 status=none
	run_ok ploopctl snapshot -v --no-freeze "$D"
	echo "$output"
	[ "${#lines[@]}" -eq 1 ]
	[[ "$output" != *frozen* ]]
	g=${lines[0]}
	view_dev "$g"
	run timeout 60 dumpe2fs -h "$rdev"
	[[ "$output" == *needs_recovery* ]]
	loop_detach "$rdev" "$M/snapshots/${g//[\{\}]/}"

	# ploop-rotate: frozen by default, not with --no-freeze
	run_ok timeout 300 "$ROTATE" --no-freeze --keep 5 "$D"
	g=$(sed -n 's/.*: created snapshot \({.*}\)$/\1/p' <<<"$output")
	view_dev "$g"
	run timeout 60 dumpe2fs -h "$rdev"
	[[ "$output" == *needs_recovery* ]]
	loop_detach "$rdev" "$M/snapshots/${g//[\{\}]/}"
	run_ok timeout 300 "$ROTATE" --keep 5 "$D"
	g=$(sed -n 's/.*: created snapshot \({.*}\)$/\1/p' <<<"$output")
	view_dev "$g"
	run timeout 60 dumpe2fs -h "$rdev"
	[[ "$output" != *needs_recovery* ]]
	loop_detach "$rdev" "$M/snapshots/${g//[\{\}]/}"
	run_ok timeout 300 "$ROTATE" --help
	[[ "$output" == *--no-freeze* ]]
}

@test "a partition of the loop device is frozen too; a file system without the disk is not" {
	run_ok ploopctl init -s 256M "$D"
	pf_mount "$D" "$M"
	# an MBR with one Linux partition from sector 2048 to the end
	poke "$M/disk" 446 "0000000083000000$(le32 2048)$(le32 $((256 * 2048 - 2048)))"
	poke "$M/disk" 510 55aa
	dev=$(timeout 60 losetup --direct-io=on -P -f --show "$M/disk")
	# partx: where the scan at attach did not add it
	[ -b "${dev}p1" ] || timeout 30 partx -a "$dev" || true
	deadline=$((SECONDS + 10))
	until [ -b "${dev}p1" ]; do
		[ "$SECONDS" -lt "$deadline" ] || { echo "no ${dev}p1" >&2; return 1; }
		sleep 0.1
	done
	run_ok timeout 120 mkfs.ext4 -q -F "${dev}p1"
	mkdir -p "$FS"
	run_ok timeout 60 mount "${dev}p1" "$FS"
	# an unrelated ext4 on a loop device of a plain file: left alone
	truncate -s 64M "$T/other.img"
	run_ok timeout 60 mkfs.ext4 -q -F "$T/other.img"
	mkdir -p "$T/other"
	run_ok timeout 60 mount -o loop "$T/other.img" "$T/other"
	run_ok ploopctl snapshot -v "$D"
	echo "$output"
	[ "${lines[0]}" = "ploopctl: $FS: frozen" ]
	[ "${lines[1]}" = "ploopctl: $FS: thawed" ]
	[ "${#lines[@]}" -eq 3 ]
	writable "$FS"
	writable "$T/other"
	run_ok timeout 60 umount "$T/other"
}

@test "thawed when the daemon refuses the snapshot, and after SIGTERM while frozen" {
	live_fs
	run_ok ploopctl snapshot "$D"
	g=$output
	c=$(chain "$D")
	# the GUID is taken: the daemon refuses (usage error, exit 2)
	run -2 ploopctl snapshot -v -u "$g" "$D"
	echo "$output"
	[ "${lines[0]}" = "ploopctl: $FS: frozen" ]
	[ "${lines[1]}" = "ploopctl: $FS: thawed" ]
	[[ "${lines[2]}" == "ploopctl: $D: "* ]]
	[ "${#lines[@]}" -eq 3 ]
	writable "$FS"
	[ "$(chain "$D")" = "$c" ]

	# SIGTERM while frozen: the handler thaws, then ploopctl dies of
	# it.  ploopctl is held between its freeze and its request by its
	# stderr, a full pipe that its "frozen" line cannot go into (the
	# interrupted line is lost).
	timeout 60 python3 - "$PLOOPCTL" "$D" >"$T/sig.out" 3>&- <<'PY'
import fcntl, os, signal, subprocess, sys, time
r, w = os.pipe()
fl = fcntl.fcntl(w, fcntl.F_GETFL)
fcntl.fcntl(w, fcntl.F_SETFL, fl | os.O_NONBLOCK)
try:
    while True:
        os.write(w, b"x" * 4096)
except BlockingIOError:
    pass
try:
    while True:
        os.write(w, b"x")
except BlockingIOError:
    pass
fcntl.fcntl(w, fcntl.F_SETFL, fl)
p = subprocess.Popen([sys.argv[1], "snapshot", "-v", sys.argv[2]],
                     stderr=w, stdout=subprocess.DEVNULL)
deadline = time.time() + 20
while "pipe" not in open("/proc/%d/wchan" % p.pid).read():
    if time.time() > deadline or p.poll() is not None:
        sys.exit("ploopctl did not block on its stderr")
    time.sleep(0.05)
p.send_signal(signal.SIGTERM)
rc = p.wait(20)
os.close(w)
err = b""
while True:
    b = os.read(r, 65536)
    if not b:
        break
    err += b
print(rc)
print(err.replace(b"x", b"").decode())
PY
	cat "$T/sig.out"
	[ "$(head -n 1 "$T/sig.out")" = -15 ]
	writable "$FS"
	# the request was never sent
	[ "$(chain "$D")" = "$c" ]
}

@test "a file system frozen already: exit 5, one line, no snapshot, left as it was" {
	live_fs
	c=$(chain "$D")
	timeout 10 fsfreeze -f "$FS"
	run -5 ploopctl snapshot "$D"
	echo "$output"
	[ "$output" = "ploopctl: $FS: the file system is already frozen (fsfreeze, or another snapshot): not taking the snapshot" ]
	[ "$(chain "$D")" = "$c" ]
	# still frozen by its owner: ploopctl thawed only its own
	run -5 ploopctl snapshot "$D"
	timeout 10 fsfreeze -u "$FS"
	writable "$FS"
	run_ok ploopctl snapshot "$D"
}
