#!/usr/bin/env bats
# Offline snapshots: ploop's naming and descriptor rules (ploop-format.md
# §2.3, §4.2), W6 ordering, locking.

load helpers

setup() {
	D=$BATS_TEST_TMPDIR/img
	TOP='{5fbaabe3-6958-40ff-92a7-860e329aab41}'
	NONE='{00000000-0000-0000-0000-000000000000}'
}

@test "snapshot: old top keeps its file and takes the snapshot GUID" {
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	g=$output
	[[ "$g" =~ ^\{[0-9a-f-]{36}\}$ ]]
	run_ok ploopctl snapshot-list --json "$D"
	[ "$(json_get "$output" 'j["top"]')" = "$TOP" ]
	[ "$(json_get "$output" 'len(j["snapshots"])')" = 2 ]
	[ "$(json_get "$output" '[s["file"] for s in j["snapshots"] if s["guid"]=="'"$g"'"][0]')" = root.hds ]
	[ "$(json_get "$output" '[s["parent"] for s in j["snapshots"] if s["guid"]=="'"$g"'"][0]')" = "$NONE" ]
	[ "$(json_get "$output" '[s["parent"] for s in j["snapshots"] if s["current"]][0]')" = "$g" ]
	newf=$(json_get "$output" '[s["file"] for s in j["snapshots"] if s["current"]][0]')
	[[ "$newf" =~ ^root\.hds\.\{[0-9a-f-]{36}\}$ ]]
	[ -f "$D/$newf" ]
	# same geometry, empty, one cluster long
	[ "$(peek "$D/$newf" 0 44)" = "$(peek "$D/root.hds" 0 44)" ]
	[ "$(stat -c %s "$D/$newf")" -eq 1048576 ]
}

@test "snapshot -u uses the given GUID; a used GUID is refused" {
	run_ok ploopctl init -s 64M "$D"
	g='{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}'
	run_ok ploopctl snapshot -u "$g" "$D"
	[ "$output" = "$g" ]
	before=$(tree_sum "$D")
	run -2 ploopctl snapshot -u "$g" "$D"
	[[ "$output" == *"already in use"* ]]
	run -2 ploopctl snapshot -u "$TOP" "$D"
	[ "$(tree_sum "$D")" = "$before" ]
}

@test "three snapshots make a chain of four deltas, base first" {
	run_ok ploopctl init -s 64M "$D"
	for i in 1 2 3; do run_ok ploopctl snapshot "$D"; done
	run_ok ploopctl info --json "$D"
	[ "$(json_get "$output" 'len(j["deltas"])')" = 4 ]
	[ "$(json_get "$output" 'j["deltas"][0]["file"].endswith("/root.hds")')" = True ]
	[ "$(json_get "$output" 'j["deltas"][3]["guid"]')" = "$TOP" ]
	run_ok ploopctl snapshot-list "$D"
	[ "$(grep -c ' \* ' <<<"$output")" = 1 ]
	image_ok "$D"
}

@test "qemu reads data through a chain made by ploopctl snapshot" {
	run_ok ploopctl init -s 64M "$D"
	run_ok qemu-io -f parallels -c 'write -P 0xaa 0 2M' "$D/root.hds"
	run_ok ploopctl snapshot "$D"
	run_ok ploopctl snapshot-list --json "$D"
	top=$D/$(json_get "$output" '[s["file"] for s in j["snapshots"] if s["current"]][0]')
	opts="driver=parallels,file.filename=$top,backing.driver=parallels,backing.file.filename=$D/root.hds"
	run_ok qemu-io -c 'write -P 0x55 512k 4k' --image-opts "$opts"
	run_ok qemu-io -r -c 'read -P 0xaa 0 512k' -c 'read -P 0x55 512k 4k' \
		-c 'read -P 0xaa 516k 1532k' --image-opts "$opts"
	[[ "$output" != *"Pattern verification failed"* ]]
	# the base was not written by the second step
	run_ok qemu-io -r -f parallels -c 'read -P 0xaa 512k 4k' "$D/root.hds"
	[[ "$output" != *"Pattern verification failed"* ]]
	run_ok ploopctl check "$D"
}

@test "snapshot refuses an image whose top is in use (exit 3), changes nothing" {
	run_ok ploopctl init -s 64M "$D"
	poke "$D/root.hds" 44 "$(le32 0x746F6E59)"
	before=$(tree_sum "$D")
	run -3 ploopctl snapshot "$D"
	[[ "$output" == *"root.hds: in-use flag is set"* ]]
	[ "$(tree_sum "$D")" = "$before" ]
}

@test "a locked image directory is busy (exit 5) for writers and check" {
	run_ok ploopctl init -s 64M "$D"
	exec {lockfd}<"$D"
	flock -x "$lockfd"
	before=$(tree_sum "$D")
	run -5 ploopctl snapshot "$D"
	[[ "$output" == *"busy"* ]]
	run -5 ploopctl check "$D"
	run -5 ploopctl check "$D/root.hds"
	# reading the descriptor is still allowed
	run_ok ploopctl snapshot-list "$D"
	exec {lockfd}<&-
	[ "$(tree_sum "$D")" = "$before" ]
	run_ok ploopctl snapshot "$D"
}

@test "snapshot-list shows ploop's columns with the current one starred" {
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	g=$output
	run_ok ploopctl snapshot-list "$D"
	[[ "${lines[0]}" == "PARENT_UUID"*"C UUID"*"FNAME" ]]
	[[ "$output" == *"$NONE   $g root.hds"* ]]
	[[ "$output" == *"$g * $TOP root.hds.{"* ]]
}

# W6: a new delta is written and synced (file and directory entry) before
# DiskDescriptor.xml names it; the descriptor is replaced by tmp + fsync +
# rename + directory fsync.  Checked on the system calls themselves.
@test "W6 ordering of init and snapshot, seen in strace" {
	command -v strace >/dev/null
	# LeakSanitizer cannot run under ptrace: off for the traced ploopctl
	# of an ASan build, the rest of ASan stays on
	local asan="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
	run_ok env ASAN_OPTIONS="$asan" strace -o "$BATS_TEST_TMPDIR/init.trace" \
		-e trace=openat,fsync,fdatasync,renameat,renameat2 "$PLOOPCTL" init -s 64M "$D"
	run_ok "$BATS_TEST_DIRNAME/w6_order.py" "$BATS_TEST_TMPDIR/init.trace"
	[[ "$output" == "W6 order ok: root.hds" ]]
	run_ok env ASAN_OPTIONS="$asan" strace -o "$BATS_TEST_TMPDIR/snap.trace" \
		-e trace=openat,fsync,fdatasync,renameat,renameat2 "$PLOOPCTL" snapshot "$D"
	run_ok "$BATS_TEST_DIRNAME/w6_order.py" "$BATS_TEST_TMPDIR/snap.trace"
	[[ "$output" == "W6 order ok: root.hds."* ]]
}

# names_short DIR: every delta of DIR's descriptor is root.hds or
# root.hds.{uuid}, never root.hds.{A}.{B}
names_short() {
	local f
	run_ok ploopctl snapshot-list --json "$1"
	for f in $(json_get "$output" '" ".join(s["file"] for s in j["snapshots"])'); do
		[[ "$f" == root.hds || "$f" =~ ^root\.hds\.\{[0-9a-f-]{36}\}$ ]] ||
			{ echo "delta name $f" >&2; return 1; }
	done
}

@test "20 offline snapshot + delete cycles: names stay short, the last delete leaves root.hds" {
	run_ok ploopctl init -s 64M "$D"
	run_ok qemu-io -f parallels -c 'write -P 0xaa 0 3M' "$D/root.hds"
	run_ok qemu-img convert -f parallels -O raw "$D/root.hds" "$BATS_TEST_TMPDIR/before.raw"
	want=$(sha256sum <"$BATS_TEST_TMPDIR/before.raw")
	for i in $(seq 1 20); do
		run_ok ploopctl snapshot "$D"
		g=$output
		if [ $((i % 4)) = 0 ]; then
			# a second snapshot, the older deleted: a down merge
			run_ok ploopctl snapshot "$D"
			run_ok ploopctl snapshot-delete "$D" "$g"
			run_ok ploopctl snapshot-list --json "$D"
			g=$(json_get "$output" '[s["guid"] for s in j["snapshots"] if not s["current"]][0]')
		fi
		names_short "$D"
		# the only snapshot into the top: an up merge out of the base
		run_ok ploopctl snapshot-delete "$D" "$g"
		names_short "$D"
		run_ok ploopctl snapshot-list --json "$D"
		[ "$(json_get "$output" 'len(j["snapshots"])')" = 1 ]
		[ "$(json_get "$output" 'j["snapshots"][0]["file"]')" = root.hds ]
	done
	# nothing else is left in the directory
	[ "$(find "$D" -mindepth 1 | sort | tr '\n' ' ')" = "$D/DiskDescriptor.xml $D/root.hds " ]
	run_ok ploopctl check "$D"
	run_ok qemu-img check -f parallels "$D/root.hds"
	run_ok qemu-img convert -f parallels -O raw "$D/root.hds" "$BATS_TEST_TMPDIR/after.raw"
	[ "$(sha256sum <"$BATS_TEST_TMPDIR/after.raw")" = "$want" ]
}
