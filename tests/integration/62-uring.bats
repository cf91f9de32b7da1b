#!/usr/bin/env bats
# FUSE over io_uring (ploopfs -o uring): what the transport must get
# right beyond what the rest of the suite checks through it (make check
# runs 60-daemon and 72-online over io_uring as well, scripts/run-tests.sh):
# when it is used and when not, data read back across transports, the
# requests that go through libfuse or block (fsync, O_SYNC, punch, the
# namespace), snapshot views, a crash under load, and a clean stop.
# These tests switch the fuse module's enable_uring parameter and put
# back what they found.

load helpers

setup() {
	pf_dirs
	[ -e "$PF_URING_PARAM" ] ||
		skip "this kernel has no FUSE over io_uring ($PF_URING_PARAM)"
	run_ok ploopctl init -s 256M "$D"
}

teardown() {
	pf_teardown
	pf_uring_restore
}

# ring_requests DIR: requests the daemon of DIR has taken from its rings
ring_requests() {
	local out
	out=$(ploopctl status --json "$1") || return 1
	json_get "$out" 'j["fuse_ring_requests"]'
}

# ring_load N FIO_ARGS...: fio on $M/disk in the background (fio_pid),
# 30 s at most; returns once the rings have carried N requests
ring_load() {
	local n=$1 i
	shift
	timeout 120 fio --name=load --filename="$M/disk" --ioengine=libaio \
		--direct=1 --time_based --runtime=30 "$@" >/dev/null 2>&1 3>&- &
	fio_pid=$!
	for ((i = 0; i < 200; i++)); do
		[ "$(ring_requests "$D")" -gt "$n" ] && return 0
		sleep 0.1
	done
	echo "fewer than $n requests over the rings in 20 s" >&2
	return 1
}

# ring_load_end: wait for that fio (it fails once the daemon is gone)
ring_load_end() {
	timeout 60 tail --pid="$fio_pid" -f /dev/null
	wait "$fio_pid" || true
}

@test "io_uring is used only when asked for (-o uring) and offered (enable_uring=Y)" {
	pf_uring_set Y
	pf_mount "$D" "$M" -o uring
	[ "$(pf_transport "$D")" = io_uring ]
	run_ok ploopctl status "$D"
	[[ "$output" == *"transport:      FUSE over io_uring"* ]]
	pf_umount "$M"

	pf_mount "$D" "$M"
	[ "$(pf_transport "$D")" = dev ]
	pf_umount "$M"

	pf_uring_set N
	pf_mount "$D" "$M" -o uring
	[ "$(pf_transport "$D")" = dev ]
	[ "$(ring_requests "$D")" = 0 ]
	# and it serves all the same
	run_ok dd if=/dev/urandom of="$T/pat" bs=64K count=16 status=none
	run_ok dd if="$T/pat" of="$M/disk" bs=64K oflag=direct conv=notrunc status=none
	run_ok cmp -n $((1 << 20)) "$T/pat" "$M/disk"
	pf_umount "$M"
}

@test "fio crc32c verify over io_uring, read back through /dev/fuse and by qemu-img" {
	pf_uring_set Y
	pf_mount "$D" "$M" -o uring
	before=$(ring_requests "$D")
	run_ok timeout 300 fio --name=v4k --filename="$M/disk" --rw=randwrite \
		--bs=4k --iodepth=32 --ioengine=libaio --direct=1 --size=64M \
		--verify=crc32c --verify_fatal=1 --do_verify=1 \
		--verify_state_save=0
	run_ok timeout 300 fio --name=v1m --filename="$M/disk" --rw=randwrite \
		--bs=1M --iodepth=8 --ioengine=libaio --direct=1 --offset=64M \
		--size=128M --verify=crc32c --verify_fatal=1 --do_verify=1 \
		--verify_state_save=0
	after=$(ring_requests "$D")
	# 64M/4k + 128M/1M writes, each read back: all came over the rings
	[ $((after - before)) -ge $((2 * (16384 + 128))) ]
	run_ok dd if="$M/disk" of="$T/via-uring" bs=1M iflag=direct status=none
	pf_umount "$M"

	pf_mount "$D" "$M"
	[ "$(pf_transport "$D")" = dev ]
	run_ok cmp "$T/via-uring" "$M/disk"
	pf_umount "$M"
	run_ok qemu-img convert -f parallels -O raw "$D/root.hds" "$T/conv"
	run_ok cmp "$T/via-uring" "$T/conv"
	run_ok ploopctl check "$D"
}

@test "over io_uring: fsync'd writers, O_SYNC writes, punch and the fixed namespace" {
	pf_uring_set Y
	pf_mount "$D" "$M" -o uring
	# four writers, an fsync after every write: fsyncs go to the workers
	# while other requests are in flight, and must all be answered
	run_ok timeout 300 fio --name=fs --filename="$M/disk" --rw=randwrite \
		--bs=4k --iodepth=4 --numjobs=4 --ioengine=libaio --direct=1 \
		--size=16M --offset_increment=16M --fsync=1 --verify=crc32c \
		--verify_fatal=1 --do_verify=1 --verify_state_save=0 \
		--group_reporting
	# O_SYNC: durable before the answer (W3), straight through the ring
	run_ok dd if=/dev/urandom of="$T/sync" bs=64K count=8 status=none
	run_ok dd if="$T/sync" of="$M/disk" bs=64K seek=2048 oflag=direct,sync \
		conv=notrunc status=none
	run_ok cmp -i 0:$((2048 * 65536)) -n $((8 * 65536)) "$T/sync" "$M/disk"
	# punch: a request libfuse serves, answered from the ring entry
	run_ok fallocate -p -o $((2048 * 65536)) -l 65536 "$M/disk"
	run_ok cmp -i $((2048 * 65536)) -n 65536 "$M/disk" /dev/zero
	run_ok cmp -i 65536:$((2049 * 65536)) -n $((7 * 65536)) "$T/sync" "$M/disk"
	# lookups, creates and renames are libfuse's too
	run ! touch "$M/new"
	[[ "$output" == *"Read-only file system"* ]]
	run ! mv "$M/disk" "$M/other"
	[ -f "$M/disk" ]
	[ "$(pf_transport "$D")" = io_uring ]
	pf_umount "$M"
	run_ok ploopctl check "$D"
}

@test "over io_uring: snapshot views read what the disk held; views vanish on delete" {
	pf_uring_set Y
	pf_mount "$D" "$M" -o uring
	run_ok dd if=/dev/urandom of="$T/old" bs=1M count=4 status=none
	run_ok dd if="$T/old" of="$M/disk" bs=1M oflag=direct conv=notrunc status=none
	run_ok ploopctl snapshot "$D"
	guid=$(tr -d '{}' <<<"$output")
	[[ "$guid" =~ ^[0-9a-f-]{36}$ ]]
	run_ok dd if=/dev/zero of="$M/disk" bs=1M count=4 oflag=direct conv=notrunc status=none
	run_ok cmp -n $((4 << 20)) "$T/old" "$M/snapshots/$guid"
	run_ok cmp -n $((4 << 20)) /dev/zero "$M/disk"
	run_ok ploopctl snapshot-delete "$D" "{$guid}"
	[ ! -e "$M/snapshots/$guid" ]
	run_ok cmp -n $((4 << 20)) /dev/zero "$M/disk"
	pf_umount "$M"
	run_ok ploopctl check "$D"
}

@test "kill -9 under io_uring write load: not corrupt; fsync'd data survives the remount" {
	pf_uring_set Y
	pf_mount "$D" "$M" -o uring
	head -c $((8 << 20)) /dev/urandom >"$T/p1"
	run_ok timeout 60 dd if="$T/p1" of="$M/disk" bs=1M oflag=direct \
		conv=fsync,notrunc status=none
	# kill once the rings are carrying the load
	ring_load 5000 --rw=randwrite --bs=4k --iodepth=32 --offset=64M \
		--size=128M
	pf_kill9 "$M"
	ring_load_end
	run ploopctl check "$D"
	echo "$output"
	[ "$status" -eq 3 ] || [ "$status" -eq 6 ]	# unclean, never corrupt
	pf_mount "$D" "$M" -o uring
	[ "$(pf_transport "$D")" = io_uring ]
	run_ok timeout 60 dd if="$M/disk" of="$T/p1.back" bs=1M count=8 \
		iflag=direct status=none
	run_ok cmp "$T/p1" "$T/p1.back"
	pf_umount "$M"
	run_ok ploopctl check "$D"
}

@test "SIGTERM with io_uring requests in flight: exit 0, image closed cleanly" {
	pf_uring_set Y
	pf_mount "$D" "$M" -o uring
	ring_load 500 --rw=randrw --bs=64k --iodepth=16 --size=64M
	kill -s TERM "$(pf_pid "$M")"
	st=$(pf_wait_exit "$M" 60)
	ring_load_end
	pf_log "$M" | grep -q "closed cleanly"
	[ "$(peek "$D/root.hds" 44 4)" = 00000000 ]
	run ! pf_is_mounted "$M"
	run_ok ploopctl check "$D"
	[ "$st" -eq 0 ]
}
