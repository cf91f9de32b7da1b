#!/usr/bin/env bats
# ploopfs -o ro: nothing in the image directory changes (no byte, no
# mtime or ctime, no socket file, no in-use flag, no recovery written),
# also on an image that was not closed cleanly and on read-only media;
# ploopctl status and events still reach the daemon; every command that
# would write is refused with exit 5; writes through the mount fail.

load helpers

setup() {
	pf_dirs
}

teardown() {
	pf_teardown
}

# dir_state DIR: every entry of DIR, the directory itself included, with
# its size, mtime and ctime (ns), and a fingerprint of the contents
dir_state() {
	(cd "$1" && find . -printf '%p %s %T@ %C@\n' | sort)
	tree_sum "$1"
}

# ro_umount MNT: unmount a read-only mount and require exit status 0
# (pf_umount also wants the in-use flag clear, which a read-only mount
# of an unclean image rightly leaves as it found it)
ro_umount() {
	local status
	timeout 60 fusermount3 -u "$1"
	status=$(pf_wait_exit "$1" 60)
	[ "$status" = 0 ] || { pf_log "$1" >&2; return 1; }
}

# fds_read_only MNT DIR: every descriptor of the daemon of MNT that names
# a file below DIR is open O_RDONLY
fds_read_only() {
	local pid fd target flags n=0
	pid=$(pf_pid "$1")
	for fd in /proc/"$pid"/fd/*; do
		target=$(readlink "$fd") || continue
		case $target in "$2"/*) ;; *) continue ;; esac
		flags=$(awk '$1 == "flags:" { print $2 }' "/proc/$pid/fdinfo/${fd##*/}")
		if [ $((8#$flags & 3)) -ne 0 ]; then
			echo "daemon fd ${fd##*/} -> $target has flags $flags" >&2
			return 1
		fi
		n=$((n + 1))
	done
	[ "$n" -gt 0 ]	# the deltas are open
}

# image_with_data: an image in $D with 8 MiB of random data at 0 written
# through a read-write mount; $T/data holds it
image_with_data() {
	run_ok ploopctl init -s 64M "$D"
	head -c $((8 * MiB)) /dev/urandom >"$T/data"
	pf_mount "$D" "$M"
	timeout 60 dd if="$T/data" of="$M/disk" bs=1M oflag=direct conv=fsync,notrunc status=none
	pf_umount "$M"
}

# read_back: the first 8 MiB of the disk in $M equal $T/data
read_back() {
	timeout 60 dd if="$M/disk" of="$T/back" bs=1M count=8 iflag=direct status=none
	cmp "$T/data" "$T/back"
}

@test "ro of a clean image: deltas O_RDONLY, no socket file, no byte or time changes" {
	image_with_data
	before=$(dir_state "$D")
	sleep 0.05	# a write now would show in the times
	pf_mount "$D" "$M" -o ro
	fds_read_only "$M" "$(realpath "$D")"
	[ ! -e "$D/.ploopfs.sock" ]
	read_back
	[ "$(dir_state "$D")" = "$before" ]
	ro_umount "$M"
	[ "$(dir_state "$D")" = "$before" ]
	run_ok ploopctl check "$D"
}

@test "ro: ploopctl status and events reach the daemon without a socket file" {
	image_with_data
	pf_mount "$D" "$M" -o ro
	run_ok ploopctl status "$D"
	grep -q "^mounted: .*/disk (read-only)$" <<<"$output"
	run_ok ploopctl status --json "$D"
	[ "$(json_get "$output" 'j["mounted"]')" = True ]
	[ "$(json_get "$output" 'j["read_only"]')" = True ]
	run_ok ploopctl events --after 0 --count 1 "$D"
	grep -q " mount serving on " <<<"$output"
	[ ! -e "$D/.ploopfs.sock" ]
	ro_umount "$M"
	# gone with the daemon: no daemon answers any more
	run_ok ploopctl status --json "$D"
	[ "$(json_get "$output" 'j["mounted"]')" = False ]
}

@test "ro of an unclean image recovers in memory only; a later rw mount recovers on disk" {
	image_with_data
	# not closed cleanly, with a leaked tail of 3 clusters
	poke "$D/root.hds" 44 "$(le32 0x746F6E59)"
	truncate -s +3M "$D/root.hds"
	before=$(dir_state "$D")
	sleep 0.05
	pf_mount "$D" "$M" -o ro
	pf_log "$M" | grep -q "not closed cleanly"
	read_back
	ro_umount "$M"
	[ "$(dir_state "$D")" = "$before" ]
	[ "$(peek "$D/root.hds" 44 4)" = 596e6f74 ]
	run -3 ploopctl check "$D"
	grep -q "3 leaked" <<<"$output"
	# the real recovery is still to come
	pf_mount "$D" "$M"
	pf_log "$M" | grep -q "3 leaked clusters reclaimed"
	read_back
	pf_umount "$M"
	image_ok "$D"
}

@test "ro after kill -9 of a rw daemon reads what it had fsync'd and writes nothing" {
	run_ok ploopctl init -s 64M "$D"
	head -c $((8 * MiB)) /dev/urandom >"$T/data"
	pf_mount "$D" "$M"
	timeout 60 dd if="$T/data" of="$M/disk" bs=1M oflag=direct conv=fsync,notrunc status=none
	pf_kill9 "$M"
	[ "$(peek "$D/root.hds" 44 4)" = 596e6f74 ]
	rm -f "$D/.ploopfs.sock"	# the dead daemon's; unlinking changes the directory
	before=$(dir_state "$D")
	sleep 0.05
	pf_mount "$D" "$M" -o ro
	read_back
	run_ok ploopctl status "$D"	# the stale socket file is not in the way
	ro_umount "$M"
	[ "$(dir_state "$D")" = "$before" ]
	pf_mount "$D" "$M"
	read_back
	pf_umount "$M"
	image_ok "$D"
}

@test "ro after kill -9 with the dead daemon's socket file left in place" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	pf_kill9 "$M"
	[ -S "$D/.ploopfs.sock" ]
	before=$(dir_state "$D")
	pf_mount "$D" "$M" -o ro
	run_ok ploopctl status --json "$D"
	[ "$(json_get "$output" 'j["read_only"]')" = True ]
	ro_umount "$M"
	[ "$(dir_state "$D")" = "$before" ]
}

@test "ro on read-only media: mounts, reads the data written before" {
	image_with_data
	sum=$(sha256sum <"$T/data" | cut -d' ' -f1)
	mkdir "$T/media"
	mount --bind "$D" "$T/media"
	mount -o remount,bind,ro "$T/media"
	run touch "$T/media/x"
	[ "$status" -ne 0 ]	# EROFS: really read-only
	before=$(dir_state "$T/media")
	# read-write it cannot be served
	mkdir -p "$T/mnt2"
	run -1 timeout 60 "$PLOOPFS" -f "$T/media" "$T/mnt2"
	grep -q "Read-only file system" <<<"$output"
	pf_mount "$T/media" "$M" -o ro
	[ "$(disk_sum "$M/disk" 0 8)" = "$sum" ]
	run_ok ploopctl status "$T/media"
	ro_umount "$M"
	[ "$(dir_state "$T/media")" = "$before" ]
}

@test "ro: writes through the mount fail, open(O_RDWR) of the disk fails" {
	image_with_data
	before=$(dir_state "$D")
	pf_mount "$D" "$M" -o ro
	run timeout 60 dd if=/dev/zero of="$M/disk" bs=1M count=1 conv=notrunc status=none
	[ "$status" -ne 0 ]
	grep -qE "Read-only file system|Operation not permitted|Permission denied" <<<"$output"
	run timeout 60 python3 -c 'import os, sys; os.open(sys.argv[1], os.O_RDWR)' "$M/disk"
	[ "$status" -ne 0 ]
	grep -qE "EROFS|EPERM|EACCES|Read-only|not permitted|Permission denied" <<<"$output"
	run timeout 60 fallocate -p -o 0 -l 1M "$M/disk"
	[ "$status" -ne 0 ]
	run timeout 60 truncate -s 1M "$M/disk"
	[ "$status" -ne 0 ]
	read_back
	ro_umount "$M"
	[ "$(dir_state "$D")" = "$before" ]
}

# refused CMD...: run a ploopctl command, require exit 5 and the one line
refused() {
	run -5 ploopctl "$@"
	[ "${#lines[@]}" -eq 1 ]
	[[ "${lines[0]}" == "ploopctl: "*": the image is mounted read-only" ]]
}

@test "ro: every write command is refused with exit 5 and one line" {
	image_with_data
	run_ok ploopctl snapshot "$D"
	snap=${lines[0]}
	before=$(dir_state "$D")
	pf_mount "$D" "$M" -o ro
	refused snapshot "$D"
	refused snapshot-delete "$D" "$snap"
	refused snapshot-merge "$D"
	refused snapshot-merge "$D" "$(ploopctl snapshot-list --json "$D" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["top"])')"
	refused snapshot-switch "$D" "$snap"
	refused check --repair "$D"
	# the commands that only read run
	run_ok ploopctl check "$D"
	run_ok ploopctl info "$D"
	run_ok ploopctl snapshot-list "$D"
	# a second daemon, read-write or read-only, is busy
	mkdir -p "$T/mnt2"
	run -5 timeout 60 "$PLOOPFS" -f "$D" "$T/mnt2"
	run -5 timeout 60 "$PLOOPFS" -f -o ro "$D" "$T/mnt2"
	grep -q "busy" <<<"$output"
	ro_umount "$M"
	[ "$(dir_state "$D")" = "$before" ]
}

# refused_unseen CMD...: as refused, with ploopctl in a mount namespace
# of its own without the mount: it finds the daemon only through its
# control socket, and the daemon refuses
refused_unseen() {
	run -5 timeout 60 unshare -m --propagation private \
		sh -c 'umount -l "$1" && shift && exec "$@"' sh "$M" \
		"$PLOOPCTL" "$@"
	[ "${#lines[@]}" -eq 1 ]
	[[ "${lines[0]}" == "ploopctl: "*": the image is mounted read-only" ]]
}

@test "ro: the daemon refuses snapshot and delete itself (EROFS) for a client that does not see the mount" {
	image_with_data
	run_ok ploopctl snapshot "$D"
	snap=${lines[0]}
	before=$(dir_state "$D")
	pf_mount "$D" "$M" -o ro
	refused_unseen snapshot "$D"
	refused_unseen snapshot-delete "$D" "$snap"
	ro_umount "$M"
	[ "$(dir_state "$D")" = "$before" ]
}
