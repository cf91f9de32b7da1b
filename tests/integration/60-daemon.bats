#!/usr/bin/env bats
# The ploopfs daemon: the disk file it serves, data through the mount
# (ext4 on a loop device, fio, unaligned I/O), snapshot stacks, punch and
# zero-range, crash recovery after SIGKILL, locking, signals, mount(8).
# qemu-img and qemu-io are the oracle for the images it leaves behind.

load helpers

setup() {
	pf_dirs
}

teardown() {
	pf_teardown
}

# fill FILE BYTE LEN: LEN bytes of BYTE
fill() {
	python3 -c 'import sys; sys.stdout.buffer.write(bytes([int(sys.argv[1], 0)]) * int(sys.argv[2]))' "$2" "$3" >"$1"
}

# expect_bytes FILE OFF:LEN:BYTE...: each range of FILE holds only BYTE.
# OFF and LEN are bytes or take a K or M suffix (3.5M); reads with pread.
expect_bytes() {
	timeout 120 python3 - "$@" <<'PY'
import os, sys

def num(s):
    units = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
    if s[-1] in units:
        return int(float(s[:-1]) * units[s[-1]])
    return int(s, 0)

fd = os.open(sys.argv[1], os.O_RDONLY)
bad = 0
for spec in sys.argv[2:]:
    off, ln, b = spec.split(':')
    off, ln, b = num(off), num(ln), int(b, 0)
    pos = off
    while pos < off + ln:
        n = min(1 << 20, off + ln - pos)
        buf = os.pread(fd, n, pos)
        if len(buf) != n:
            print(f"{spec}: short read at {pos}: {len(buf)} of {n}", file=sys.stderr)
            bad = 1
            break
        if buf != bytes([b]) * n:
            i = next(i for i in range(n) if buf[i] != b)
            print(f"{spec}: at offset {pos + i}: expected {b:#04x}, got {buf[i]:#04x}", file=sys.stderr)
            bad = 1
            break
        pos += n
sys.exit(bad)
PY
}

# scatter FILE SEED OFF:LEN...: write seeded random bytes with pwrite
scatter() {
	timeout 120 python3 - "$@" <<'PY'
import os, random, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
rnd = random.Random(int(sys.argv[2]))
for spec in sys.argv[3:]:
    off, ln = (int(x, 0) for x in spec.split(':'))
    data = rnd.randbytes(ln)
    n = os.pwrite(fd, data, off)
    assert n == ln, f"{spec}: short write {n}"
os.close(fd)
PY
}

# top_allocated DIR: allocated clusters of the top delta
top_allocated() {
	local out
	out=$(ploopctl info --json "$1") || return 1
	json_get "$out" 'j["deltas"][-1]["allocated_clusters"]'
}

# wait_closed DIR: wait (30 s at most) until no daemon holds the image
# lock, i.e. ploopctl check stops saying busy (exit 5)
wait_closed() {
	local deadline=$((SECONDS + 30)) rc
	while :; do
		rc=0
		timeout 60 "$PLOOPCTL" check "$1" >/dev/null 2>&1 || rc=$?
		[ "$rc" -ne 5 ] && return 0
		if [ "$SECONDS" -ge "$deadline" ]; then
			echo "$1 still busy after 30 s" >&2
			return 1
		fi
		sleep 0.05
	done
}

# fio_verify NAME BS SIZE_MIB: random writes of BS over SIZE_MIB of the
# disk at depth 32, O_DIRECT, crc32c verified: no error, every byte
# written and read back
fio_verify() {
	run timeout 120 fio --name="$1" --bs="$2" --size="${3}M" \
		--filename="$M/disk" --direct=1 --ioengine=libaio --iodepth=32 \
		--rw=randwrite --verify=crc32c --do_verify=1 --verify_fatal=1 \
		--verify_state_save=0 --output-format=json --output="$T/$1.json"
	echo "$output"
	[ "$status" -eq 0 ]
	[[ "$output" != *verify* ]]
	j=$(cat "$T/$1.json")
	[ "$(json_get "$j" 'j["jobs"][0]["error"]')" = 0 ]
	[ "$(json_get "$j" 'j["jobs"][0]["write"]["io_bytes"]')" = $(($3 * MiB)) ]
	# the verify pass read everything back
	[ "$(json_get "$j" 'j["jobs"][0]["read"]["io_bytes"]')" = $(($3 * MiB)) ]
}

# qemu_expect FILE-OR-OPTS... -c 'read -P ...': qemu-io reads and checks
qemu_expect() {
	run_ok qemu-io -r "$@"
	if [[ "$output" == *"Pattern verification failed"* ]]; then
		echo "$output" >&2
		return 1
	fi
}

@test "mount: one regular file of the virtual size; in-use flag set while mounted" {
	run_ok ploopctl init -s 100M "$D"
	pf_mount "$D" "$M"
	run_ok timeout 10 ls -A "$M"
	# the disk, and the (empty) directory of snapshot views
	[ "$output" = "$(printf 'disk\nsnapshots')" ]
	run_ok timeout 10 ls -A "$M/snapshots"
	[ -z "$output" ]
	[ "$(timeout 10 stat -c %F "$M/disk")" = "regular file" ]
	[ "$(timeout 10 stat -c %s "$M/disk")" -eq $((100 * MiB)) ]
	[ "$(peek "$D/root.hds" 44 4)" = 596e6f74 ]
	pf_umount "$M"
	[ "$(peek "$D/root.hds" 44 4)" = 00000000 ]
	run ! pf_is_mounted "$M"
	run_ok ploopctl check "$D"
	# -o name= names the file
	pf_mount "$D" "$M" -o name=vda
	run_ok timeout 10 ls -A "$M"
	[ "$output" = "$(printf 'snapshots\nvda')" ]
	[ "$(timeout 10 stat -c %s "$M/vda")" -eq $((100 * MiB)) ]
	pf_umount "$M"
	run_ok ploopctl check "$D"
}

@test "the kernel lets 256 asynchronous requests through, not its default 12" {
	# Asynchronous direct I/O travels as FUSE background requests; the
	# kernel holds back all but max_background of them (default 12), so
	# a queue depth of 32 would reach the daemon as 12.
	run_ok ploopctl init -s 100M "$D"
	pf_mount "$D" "$M"
	c=/sys/fs/fuse/connections
	mountpoint -q "$c" || mount -t fusectl fusectl "$c"
	dev=$(mountpoint -d "$M")
	[ -n "$dev" ]
	echo "connection ${dev#*:}: $(cat "$c/${dev#*:}/max_background")"
	[ "$(cat "$c/${dev#*:}/max_background")" -eq 256 ]
	[ "$(cat "$c/${dev#*:}/congestion_threshold")" -eq 192 ]
	pf_umount "$M"
}

@test "ext4 on a direct-I/O loop device over the disk keeps its files across a remount" {
	F=$T/fs
	mkdir -p "$F"
	run_ok ploopctl init -s 512M "$D"
	pf_mount "$D" "$M"
	dev=$(timeout 60 losetup --direct-io=on -f --show "$M/disk")
	[ "$(losetup -n -O DIO "$dev" | tr -d ' ')" = 1 ]
	run_ok timeout 120 mkfs.ext4 -q -F "$dev"
	timeout 60 mount "$dev" "$F"
	for i in 1 2 3; do
		timeout 60 dd if=/dev/urandom of="$F/f$i" bs=1M count=20 status=none
	done
	(cd "$F" && sha256sum f1 f2 f3) >"$T/sums"
	timeout 60 umount "$F"
	loop_detach "$dev" "$M/disk"
	pf_umount "$M"

	pf_mount "$D" "$M"
	dev=$(timeout 60 losetup --direct-io=on -f --show "$M/disk")
	run_ok timeout 120 e2fsck -fn "$dev"
	timeout 60 mount -o ro "$dev" "$F"
	run_ok timeout 60 bash -c 'cd "$1" && sha256sum -c "$2"' _ "$F" "$T/sums"
	timeout 60 umount "$F"
	loop_detach "$dev" "$M/disk"
	pf_umount "$M"
	run_ok qemu-img check -f parallels "$D/root.hds"
	run_ok ploopctl check "$D"
}

@test "two offline snapshots: each level's data shows through, lower deltas never change" {
	run_ok ploopctl init -s 64M "$D"
	run_ok qemu-io -f parallels -c 'write -P 0xa1 0 3M' "$D/root.hds"
	run_ok ploopctl snapshot "$D"
	base_sum=$(sha256sum <"$D/root.hds")
	top1=$(top_delta "$D")
	[ "$top1" != "$D/root.hds" ]

	pf_mount "$D" "$M"
	fill "$T/b" 0xb2 $((2 * MiB))
	timeout 60 dd if="$T/b" of="$M/disk" bs=1M seek=2 oflag=direct conv=notrunc status=none
	expect_bytes "$M/disk" 0:2M:0xa1 2M:2M:0xb2 4M:60M:0
	pf_umount "$M"
	[ "$(sha256sum <"$D/root.hds")" = "$base_sum" ]

	run_ok ploopctl snapshot "$D"
	top1_sum=$(sha256sum <"$top1")
	top2=$(top_delta "$D")
	[ "$top2" != "$top1" ]
	pf_mount "$D" "$M"
	fill "$T/c" 0xc3 $((3 * MiB / 2))
	timeout 60 dd if="$T/c" of="$M/disk" bs=512K seek=7 oflag=direct conv=notrunc status=none
	expect_bytes "$M/disk" 0:2M:0xa1 2M:1.5M:0xb2 3.5M:1.5M:0xc3 5M:59M:0
	pf_umount "$M"

	[ "$(sha256sum <"$D/root.hds")" = "$base_sum" ]
	[ "$(sha256sum <"$top1")" = "$top1_sum" ]
	# the top holds only what was written last: clusters 3 (copy-on-write) and 4
	[ "$(top_allocated "$D")" -eq 2 ]
	image_ok "$D"
	pf_mount "$D" "$M"
	expect_bytes "$M/disk" 0:2M:0xa1 2M:1.5M:0xb2 3.5M:1.5M:0xc3 5M:59M:0
	pf_umount "$M"
}

@test "fio with crc32c verify: 4k random writes and 1M random writes, O_DIRECT libaio" {
	run_ok ploopctl init -s 1G "$D"
	pf_mount "$D" "$M"
	fio_verify rand4k 4k 256
	fio_verify rand1m 1M 512
	pf_umount "$M"
	run_ok ploopctl check "$D"
	[ "$(top_allocated "$D")" -eq 512 ]
}

@test "16 concurrent writers to one cluster of a lower delta: one copy-on-write, no lost sector" {
	run_ok ploopctl init -s 64M "$D"
	run_ok qemu-io -f parallels -c 'write -P 0x55 5M 1M' "$D/root.hds"
	run_ok ploopctl snapshot "$D"
	base_sum=$(sha256sum <"$D/root.hds")
	pf_mount "$D" "$M"
	# distinct 4 KiB sectors of cluster 5: eight neighbours, eight spread
	local -a sec=(0 1 2 3 4 5 6 7 40 81 122 163 204 245 254 255)
	for i in $(seq 0 15); do
		fill "$T/s$i" $((0x60 + i)) 4096
	done
	local -a pids=()
	for i in $(seq 0 15); do
		timeout 60 dd if="$T/s$i" of="$M/disk" bs=4k seek=$((5 * 256 + sec[i])) count=1 \
			oflag=direct conv=notrunc status=none 3>&- &
		pids+=($!)
	done
	for i in $(seq 0 15); do
		wait "${pids[i]}" || { echo "writer $i failed" >&2; return 1; }
	done
	python3 - "$T/want" "${sec[@]}" <<'PY'
import sys
buf = bytearray(b'\x55' * (1 << 20))
for i, s in enumerate(int(x) for x in sys.argv[2:]):
    buf[s * 4096:(s + 1) * 4096] = bytes([0x60 + i]) * 4096
open(sys.argv[1], 'wb').write(buf)
PY
	timeout 60 dd if="$M/disk" of="$T/got" bs=1M skip=5 count=1 iflag=direct status=none
	cmp "$T/want" "$T/got"
	expect_bytes "$M/disk" 0:5M:0 6M:58M:0
	pf_umount "$M"
	[ "$(top_allocated "$D")" -eq 1 ]
	[ "$(sha256sum <"$D/root.hds")" = "$base_sum" ]
	run_ok ploopctl check "$D"
	top=$(top_delta "$D")
	run_ok qemu-img check -f parallels "$top"
}

@test "punch over snapshot data reads zeros, also after a remount" {
	run_ok ploopctl init -s 64M "$D"
	run_ok qemu-io -f parallels -c 'write -P 0xd4 0 4M' "$D/root.hds"
	run_ok ploopctl snapshot "$D"
	base_sum=$(sha256sum <"$D/root.hds")
	local -a want=(0:100K:0xd4 100K:8K:0 108K:916K:0xd4 1M:2M:0 3M:1M:0xd4 4M:60M:0)
	pf_mount "$D" "$M"
	timeout 60 fallocate -p -o 1M -l 2M "$M/disk"
	timeout 60 fallocate -p -o 100K -l 8K "$M/disk"
	expect_bytes "$M/disk" "${want[@]}"
	[ "$(timeout 10 stat -c %s "$M/disk")" -eq $((64 * MiB)) ]
	pf_umount "$M"
	pf_mount "$D" "$M"
	expect_bytes "$M/disk" "${want[@]}"
	pf_umount "$M"
	[ "$(sha256sum <"$D/root.hds")" = "$base_sum" ]
	image_ok "$D"
}

@test "punch in the top delta returns the space once the unmapping commit is durable" {
	run_ok ploopctl init -s 128M "$D"
	pf_mount "$D" "$M"
	timeout 60 dd if=/dev/urandom of="$M/disk" bs=1M count=64 oflag=direct conv=notrunc status=none
	timeout 60 sync "$M/disk"
	before=$(du -k "$D/root.hds" | cut -f1)
	[ "$before" -ge $((64 * 1024)) ]
	timeout 60 fallocate -p -o 0 -l 64M "$M/disk"
	# W4: freed clusters are punched only after the commit that unmapped
	# them is durable; the first fsync makes it durable, the second runs
	# after the punches of the first.
	timeout 60 sync "$M/disk"
	timeout 60 sync "$M/disk"
	after=$(du -k "$D/root.hds" | cut -f1)
	echo "du -k root.hds: $before before the punch, $after after"
	[ $((before - after)) -ge $((60 * 1024)) ]
	expect_bytes "$M/disk" 0:128M:0
	pf_umount "$M"
	# The holes the punch left inside the file are clusters no BAT entry
	# references: check may call them leaks (exit 6), never corruption.
	run ploopctl check "$D"
	echo "$output"
	[ "$status" -eq 0 ] || [ "$status" -eq 6 ]
	run qemu-img check -f parallels "$D/root.hds"
	echo "$output"
	[ "$status" -eq 0 ] || [ "$status" -eq 3 ]
	pf_mount "$D" "$M"
	expect_bytes "$M/disk" 0:128M:0
	pf_umount "$M"
}

@test "ZERO_RANGE makes a range read zeros over both deltas, also after a remount" {
	run_ok ploopctl init -s 64M "$D"
	run_ok qemu-io -f parallels -c 'write -P 0xe1 0 2M' "$D/root.hds"
	run_ok ploopctl snapshot "$D"
	pf_mount "$D" "$M"
	fill "$T/e" 0xe2 $((2 * MiB))
	timeout 60 dd if="$T/e" of="$M/disk" bs=1M seek=2 oflag=direct conv=notrunc status=none
	timeout 60 fallocate -z -o 1536K -l 1M "$M/disk"
	# an unaligned one inside a top cluster
	timeout 60 fallocate -z -o $((3 * MiB + 123)) -l 1000 "$M/disk"
	local -a want=(0:1536K:0xe1 1536K:1M:0 2560K:$((3 * MiB + 123 - 2560 * 1024)):0xe2
		$((3 * MiB + 123)):1000:0 $((3 * MiB + 1123)):$((MiB - 1123)):0xe2 4M:60M:0)
	expect_bytes "$M/disk" "${want[@]}"
	[ "$(timeout 10 stat -c %s "$M/disk")" -eq $((64 * MiB)) ]
	pf_umount "$M"
	pf_mount "$D" "$M"
	expect_bytes "$M/disk" "${want[@]}"
	pf_umount "$M"
	image_ok "$D"
}

@test "qemu-img convert of the unmounted image equals what the mount served" {
	run_ok ploopctl init -s 256M "$D"
	run_ok qemu-io -f parallels -c 'write -P 0x31 10M 2M' "$D/root.hds"
	pf_mount "$D" "$M"
	scatter "$M/disk" 1 0:4096 $((MiB - 512)):1024 $((17 * MiB)):$((3 * MiB)) \
		$((11 * MiB + 7)):70000 $((100 * MiB + 4096)):65536 \
		$((128 * MiB + 12345)):777 $((255 * MiB)):$((MiB)) $((200 * MiB - 3)):6
	timeout 60 fallocate -p -o $((17 * MiB + 4096)) -l 8192 "$M/disk"
	timeout 120 dd if="$M/disk" of="$T/through" bs=1M iflag=direct status=none
	pf_umount "$M"
	[ "$(stat -c %s "$T/through")" -eq $((256 * MiB)) ]
	run_ok timeout 120 qemu-img convert -f parallels -O raw "$D/root.hds" "$T/conv.raw"
	cmp "$T/through" "$T/conv.raw"
	run_ok qemu-img check -f parallels "$D/root.hds"
}

@test "qemu-img convert of a snapshot stack equals what the mount served" {
	run_ok ploopctl init -s 256M "$D"
	run_ok qemu-io -f parallels -c 'write -P 0x41 0 8M' -c 'write -P 0x42 100M 3M' \
		-c 'write -P 0x43 255M 1M' "$D/root.hds"
	run_ok ploopctl snapshot "$D"
	top=$(top_delta "$D")
	pf_mount "$D" "$M"
	scatter "$M/disk" 2 4096:100 $((3 * MiB - 10)):20 $((101 * MiB + 999)):300000 \
		$((50 * MiB)):$((2 * MiB)) $((256 * MiB - 1)):1
	# punch over lower data: zeros must win over the base in qemu too
	timeout 60 fallocate -p -o $((5 * MiB)) -l $((2 * MiB)) "$M/disk"
	timeout 60 fallocate -p -o $((255 * MiB + 4096)) -l 4096 "$M/disk"
	timeout 120 dd if="$M/disk" of="$T/through" bs=1M iflag=direct status=none
	pf_umount "$M"
	opts="driver=parallels,file.filename=$top,backing.driver=parallels,backing.file.filename=$D/root.hds"
	run_ok timeout 120 qemu-img convert --image-opts "$opts" -O raw "$T/conv.raw"
	cmp "$T/through" "$T/conv.raw"
	image_ok "$D"
}

@test "kill -9 under write load: check says unclean, never corrupt; remount recovers" {
	run_ok ploopctl init -s 256M "$D"
	pf_mount "$D" "$M"
	head -c $((8 * MiB)) /dev/urandom >"$T/p1"
	timeout 60 dd if="$T/p1" of="$M/disk" bs=1M oflag=direct conv=fsync,notrunc status=none
	timeout 300 fio --name=load --filename="$M/disk" --direct=1 --ioengine=libaio \
		--iodepth=32 --rw=randwrite --bs=4k --offset=64M --size=192M \
		--time_based --runtime=30 >"$T/fio.out" 2>&1 3>&- &
	fio_pid=$!
	# load is on once the daemon reports clusters beyond P1's 8 (st_blocks
	# counts the top's clusters); then a second more of it
	deadline=$((SECONDS + 20))
	until [ "$(timeout 10 stat -c %b "$M/disk")" -gt $((16 * 2048)) ]; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			cat "$T/fio.out"
			echo "no write load seen in 20 s" >&2
			return 1
		fi
		sleep 0.1
	done
	sleep 1
	pf_kill9 "$M"
	timeout 60 tail --pid="$fio_pid" -f /dev/null
	wait "$fio_pid" || true	# fio fails once the daemon is gone
	[ "$(peek "$D/root.hds" 44 4)" = 596e6f74 ]
	run ploopctl check "$D"
	echo "$output"
	[ "$status" -eq 3 ] || [ "$status" -eq 6 ]
	# qemu counts the set in-use flag and the unreferenced tail as errors;
	# any other error is corruption
	run qemu-img check -f parallels "$D/root.hds"
	echo "$output"
	errs=$(grep ERROR <<<"$output" | grep -v -e 'ERROR image was not closed correctly' \
		-e 'ERROR space leaked at the end of the image' || true)
	[ -z "$errs" ]

	pf_mount "$D" "$M"
	pf_log "$M" | grep -q "not closed cleanly"
	timeout 60 dd if="$M/disk" of="$T/p1.back" bs=1M count=8 iflag=direct status=none
	cmp "$T/p1" "$T/p1.back"
	pf_umount "$M"
	run_ok ploopctl check "$D"
	run_ok qemu-img check -f parallels "$D/root.hds"
}

@test "a second ploopfs and offline-only commands are refused while mounted (exit 5)" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	mkdir -p "$T/mnt2"
	run -5 timeout 20 "$PLOOPFS" -f "$D" "$T/mnt2"
	[[ "$output" == *busy* ]]
	no_sanitizer_reports "$output"
	run ! pf_is_mounted "$T/mnt2"
	# snapshot goes to the daemon now (72-online); switch and repair
	# work on unmounted images only
	run -5 ploopctl snapshot-switch "$D" "{5fbaabe3-6958-40ff-92a7-860e329aab41}"
	[[ "$output" == *busy* ]]
	run -5 ploopctl check --repair "$D"
	[[ "$output" == *busy* ]]
	run_ok ploopctl snapshot-list --json "$D"
	[ "$(json_get "$output" 'len(j["snapshots"])')" = 1 ]
	# the first daemon still serves
	fill "$T/k" 0x4b $((MiB))
	timeout 60 dd if="$T/k" of="$M/disk" bs=1M oflag=direct conv=notrunc status=none
	expect_bytes "$M/disk" 0:1M:0x4b
	pf_umount "$M"
	run_ok ploopctl check "$D"
	qemu_expect -f parallels -c 'read -P 0x4b 0 1M' "$D/root.hds"
}

@test "SIGTERM stops the daemon cleanly: exit status 0, image closed, mount gone" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	fill "$T/x" 0x5a $((MiB))
	timeout 60 dd if="$T/x" of="$M/disk" bs=1M seek=3 oflag=direct conv=notrunc status=none
	kill -s TERM "$(pf_pid "$M")"
	st=$(pf_wait_exit "$M" 60)
	pf_log "$M"
	echo "exit status after SIGTERM: $st"
	pf_log "$M" | grep -q "closed cleanly"
	[ "$(peek "$D/root.hds" 44 4)" = 00000000 ]
	run ! pf_is_mounted "$M"
	run_ok ploopctl check "$D"
	qemu_expect -f parallels -c 'read -P 0x5a 3M 1M' -c 'read -P 0 0 3M' "$D/root.hds"
	[ "$st" -eq 0 ]
}

@test "the disk size is fixed: truncate fails, writes past the end fail with ENOSPC" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	run ! timeout 20 truncate -s 1M "$M/disk"
	run ! timeout 20 truncate -s 128M "$M/disk"
	[ "$(timeout 10 stat -c %s "$M/disk")" -eq $((64 * MiB)) ]
	run timeout 20 dd if=/dev/zero of="$M/disk" bs=4k seek=$((64 * 256)) count=1 \
		oflag=direct conv=notrunc status=none
	echo "$output"
	[ "$status" -ne 0 ]
	[[ "$output" == *"No space left on device"* ]]
	run timeout 20 dd if=/dev/zero of="$M/disk" bs=4k seek=$((1024 * 256)) count=1 \
		conv=notrunc status=none
	[ "$status" -ne 0 ]
	[[ "$output" == *"No space left on device"* ]]
	# a write across the end stops at the end; the next one gets ENOSPC
	run_ok timeout 20 python3 -c '
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
size = os.fstat(fd).st_size
n = os.pwrite(fd, b"abcd", size - 2)
assert n == 2, f"write across the end wrote {n}"
try:
    os.pwrite(fd, b"x", size)
    sys.exit("write at the end succeeded")
except OSError as e:
    assert e.errno == errno.ENOSPC, e
' "$M/disk"
	[ "$(timeout 10 stat -c %s "$M/disk")" -eq $((64 * MiB)) ]
	run_ok timeout 20 python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
assert os.pread(fd, 8, 64 * 2**20 - 4) == b"\0\0ab", "tail"
assert os.pread(fd, 8, 64 * 2**20) == b"", "past the end"
' "$M/disk"
	pf_umount "$M"
	run_ok ploopctl info --json "$D"
	[ "$(json_get "$output" 'j["virtual_size"]')" -eq $((64 * MiB)) ]
	run_ok ploopctl check "$D"
}

# expect_erofs CMD...: CMD fails with "Read-only file system" (EROFS), not
# with "Function not implemented" (ENOSYS)
expect_erofs() {
	run timeout 20 "$@"
	if [ "$status" -eq 0 ] || [[ "$output" != *"Read-only file system"* ]] ||
		[[ "$output" == *"not implemented"* ]]; then
		echo "want EROFS from: $*; got $status: $output" >&2
		return 1
	fi
}

@test "the namespace is fixed: create, remove, rename and link fail with EROFS; the disk is unchanged" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	scatter "$M/disk" 7 0:$MiB $((5 * MiB + 3)):4096
	run_ok ploopctl snapshot "$D"
	view=$(tr -d '{}' <<<"$output")
	sum=$(timeout 60 sha256sum <"$M/disk")
	listing=$(timeout 10 ls -A "$M")
	[ "$listing" = "$(printf 'disk\nsnapshots')" ]
	[ "$(timeout 10 ls -A "$M/snapshots")" = "$view" ]

	expect_erofs touch "$M/x"
	expect_erofs mkdir "$M/d"
	expect_erofs mknod "$M/p" p
	expect_erofs rm "$M/disk"
	expect_erofs rm -f "$M/disk"
	expect_erofs mv "$M/disk" "$M/y"
	expect_erofs mv "$M/disk" "$M/snapshots/y"
	expect_erofs ln -s disk "$M/l"
	expect_erofs ln "$M/disk" "$M/h"
	expect_erofs rmdir "$M/snapshots"
	expect_erofs mv "$M/snapshots" "$M/s"
	expect_erofs touch "$M/snapshots/x"
	expect_erofs mkdir "$M/snapshots/d"
	expect_erofs rm "$M/snapshots/$view"
	expect_erofs mv "$M/snapshots/$view" "$M/snapshots/v"
	expect_erofs ln -s "$view" "$M/snapshots/l"
	# the same from open(2) and rename(2) directly
	run_ok timeout 20 python3 -c '
import errno, os, sys
m = sys.argv[1]
for f, args in ((os.open, (m + "/x", os.O_CREAT | os.O_WRONLY, 0o600)),
                (os.open, (m + "/x", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)),
                (os.rename, (m + "/disk", m + "/y")),
                (os.unlink, (m + "/disk",))):
    try:
        f(*args)
        sys.exit(f"{f.__name__}{args} succeeded")
    except OSError as e:
        assert e.errno == errno.EROFS, f"{f.__name__}{args}: {e}"
# extended attributes are not supported, and say so
try:
    os.setxattr(m + "/disk", "user.x", b"1")
    sys.exit("setxattr succeeded")
except OSError as e:
    assert e.errno == errno.EOPNOTSUPP, f"setxattr: {e}"
' "$M"
	# names that do not exist or already do keep their usual answers
	run ! timeout 20 rm "$M/nothere"
	[[ "$output" == *"No such file or directory"* ]]
	run ! timeout 20 mkdir "$M/disk"
	[[ "$output" == *"File exists"* ]]

	# nothing changed, and the disk works as before
	[ "$(timeout 10 ls -A "$M")" = "$listing" ]
	[ "$(timeout 10 ls -A "$M/snapshots")" = "$view" ]
	[ "$(timeout 60 sha256sum <"$M/disk")" = "$sum" ]
	[ "$(timeout 10 stat -c %s "$M/disk")" -eq $((64 * MiB)) ]
	run_ok timeout 10 touch "$M/disk"
	scatter "$M/disk" 8 $((9 * MiB)):8192
	expect_bytes "$M/disk" 20M:1M:0
	pf_umount "$M"
	run_ok ploopctl check "$D"
	[ "$(delta_files "$D" | wc -l)" -eq 2 ]
}

@test "unaligned pwrite/pread through the mount match a plain sparse file" {
	run_ok ploopctl init -s 16M "$D"
	run_ok qemu-io -f parallels -c 'write -P 0x77 2M 1M' "$D/root.hds"
	run_ok ploopctl snapshot "$D"
	truncate -s 16M "$T/ref"
	fill "$T/l" 0x77 $((MiB))
	dd if="$T/l" of="$T/ref" bs=1M seek=2 conv=notrunc status=none
	pf_mount "$D" "$M"
	run_ok timeout 120 python3 - "$M/disk" "$T/ref" <<'PY'
import os, random, sys
disk = os.open(sys.argv[1], os.O_RDWR)
ref = os.open(sys.argv[2], os.O_RDWR)
size = os.fstat(ref).st_size
assert os.fstat(disk).st_size == size
rnd = random.Random(60)
ops = [(4093, 7), (1048570, 5000), (0, 1), (size - 1, 1),
       (2 * 2**20 - 3, 10), (3 * 2**20 - 100, 4196), (2 * 2**20 + 4097, 511),
       (5 * 2**20 + 1, 2 * 2**20 + 5)]
for _ in range(300):
    off = rnd.randrange(size)
    ops.append((off, rnd.randint(1, min(300000, size - off))))

def compare(off, ln, what):
    a, b = os.pread(disk, ln, off), os.pread(ref, ln, off)
    if a != b:
        i = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        sys.exit(f"{what}: differs at offset {off + i} (read {len(a)} of {ln})")

for n, (off, ln) in enumerate(ops):
    data = rnd.randbytes(ln)
    w = os.pwrite(disk, data, off)
    assert w == ln, f"short write {w} of {ln} at {off}"
    os.pwrite(ref, data, off)
    compare(off, ln, f"write {n} readback")
    r = rnd.randrange(size)
    compare(r, rnd.randint(1, min(70000, size - r)), f"random read after write {n}")
for off in range(0, size, 2**20):
    compare(off, 2**20, "full compare")
PY
	pf_umount "$M"
	pf_mount "$D" "$M"
	timeout 120 cmp "$M/disk" "$T/ref"
	pf_umount "$M"
	image_ok "$D"
}

# Daemons started by mount(8) daemonize, and their stderr is lost: send
# sanitizer reports to files in the log directory pf_teardown scans.
sanitizer_logs() {
	local logs
	logs=$(_pf_logs)
	mkdir -p "$logs"
	export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$logs/mount-asan"
	export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}log_path=$logs/mount-ubsan"
	export TSAN_OPTIONS="${TSAN_OPTIONS:+$TSAN_OPTIONS:}log_path=$logs/mount-tsan"
}

# mount(8) starts FUSE file systems through /sbin/mount.fuse (mount.fuse3,
# Debian package fuse3), which runs the program named by the subtype
# (-t fuse.ploopfs) or by the source (PROGRAM#SOURCE with -t fuse) with
# /bin/sh -c.  mount(8) drops PATH from the helper's environment, so with
# -t fuse.ploopfs the program must be in the shell's default PATH
# (/usr/local/sbin:/usr/local/bin:/usr/sbin:...), where `make install`
# puts it; putting build/release on PATH is not enough.  mount.fuse3 run
# directly keeps PATH.  The daemon these start is not ours: the image is
# closed once its lock is released.

@test "mount -t fuse PLOOPFS#DIR (fstab style) and umount" {
	run_ok ploopctl init -s 64M "$D"
	mkdir -p "$M"
	sanitizer_logs
	run_ok timeout 30 mount -t fuse "$PLOOPFS#$D" "$M"
	[ "$(findmnt -n -o FSTYPE "$M")" = fuse.ploopfs ]
	[ "$(timeout 10 stat -c %s "$M/disk")" -eq $((64 * MiB)) ]
	[ "$(peek "$D/root.hds" 44 4)" = 596e6f74 ]
	fill "$T/o" 0x6f $((MiB))
	timeout 60 dd if="$T/o" of="$M/disk" bs=1M seek=1 oflag=direct conv=notrunc status=none
	expect_bytes "$M/disk" 0:1M:0 1M:1M:0x6f
	timeout 30 umount "$M"
	wait_closed "$D"
	run ! pf_is_mounted "$M"
	[ "$(peek "$D/root.hds" 44 4)" = 00000000 ]
	run_ok ploopctl check "$D"
	qemu_expect -f parallels -c 'read -P 0x6f 1M 1M' -c 'read -P 0 0 1M' "$D/root.hds"
}

@test "mount -t fuse.ploopfs with ploopfs in the default PATH (private mount namespace)" {
	[ -d /usr/local/sbin ]
	run_ok ploopctl init -s 64M "$D"
	mkdir -p "$M"
	sanitizer_logs
	fill "$T/o" 0x70 $((MiB))
	# a tmpfs over /usr/local/sbin holding a ploopfs link, seen only in
	# the namespace; the mount lives there too
	run_ok timeout 120 unshare -m --propagation private bash -ec '
		PLOOPFS=$(realpath "$1") D=$2 M=$3 src=$4
		mount -t tmpfs pf-test /usr/local/sbin
		ln -s "$PLOOPFS" /usr/local/sbin/ploopfs
		timeout 30 mount -t fuse.ploopfs "$D" "$M"
		findmnt -n -o FSTYPE "$M"
		timeout 10 stat -c "size %s" "$M/disk"
		timeout 60 dd if="$src" of="$M/disk" bs=1M seek=2 oflag=direct conv=notrunc status=none
		timeout 30 umount "$M"
	' _ "$PLOOPFS" "$D" "$M" "$T/o"
	echo "$output"
	[ "${lines[0]}" = fuse.ploopfs ]
	[ "${lines[1]}" = "size $((64 * MiB))" ]
	wait_closed "$D"
	[ "$(peek "$D/root.hds" 44 4)" = 00000000 ]
	run_ok ploopctl check "$D"
	qemu_expect -f parallels -c 'read -P 0x70 2M 1M' -c 'read -P 0 0 2M' "$D/root.hds"
}

@test "mount.fuse3 DIR MNT -t ploopfs with ploopfs on PATH, and umount" {
	run_ok ploopctl init -s 64M "$D"
	mkdir -p "$M" "$T/bin"
	sanitizer_logs
	ln -s "$(realpath "$PLOOPFS")" "$T/bin/ploopfs"
	PATH="$T/bin:$PATH" run_ok timeout 30 mount.fuse3 "$D" "$M" -t ploopfs
	[ "$(findmnt -n -o FSTYPE "$M")" = fuse.ploopfs ]
	[ "$(timeout 10 stat -c %s "$M/disk")" -eq $((64 * MiB)) ]
	[ "$(peek "$D/root.hds" 44 4)" = 596e6f74 ]
	fill "$T/o" 0x71 $((MiB))
	timeout 60 dd if="$T/o" of="$M/disk" bs=1M seek=3 oflag=direct conv=notrunc status=none
	timeout 30 umount "$M"
	wait_closed "$D"
	run ! pf_is_mounted "$M"
	[ "$(peek "$D/root.hds" 44 4)" = 00000000 ]
	run_ok ploopctl check "$D"
	qemu_expect -f parallels -c 'read -P 0x71 3M 1M' -c 'read -P 0 0 3M' "$D/root.hds"
}
