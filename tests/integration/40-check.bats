#!/usr/bin/env bats
# ploopctl check: tells clean, leaks, unclean and corrupt apart, read-only.

load helpers

setup() {
	Q=$BATS_TEST_TMPDIR/q.hds
	make_qemu_image "$Q"
}

teardown() {
	pf_teardown
}

@test "clean image: exit 0" {
	run_ok ploopctl check "$Q"
	[[ "$output" == *"2 allocated clusters, 0 leaked, 0 corruptions: clean"* ]]
}

@test "leaked tail clusters: exit 6, counted, qemu agrees" {
	truncate -s 5M "$Q"
	run -6 ploopctl check --json "$Q"
	[ "$(json_get "$output" 'j["leaked_clusters"]')" = 2 ]
	[ "$(json_get "$output" 'j["verdict"]')" = "leaked clusters only (no harm to data)" ]
	run -3 qemu-img check -f parallels "$Q"
}

@test "partial cluster at the end is a leak, not corruption" {
	truncate -s $((3 * 1048576 + 100)) "$Q"
	run -6 ploopctl check "$Q"
	[[ "$output" == *"partial cluster of 100 bytes"* ]]
}

@test "unreferenced cluster in the middle is a leak" {
	poke "$Q" 64 "$(le32 0)"	# drop BAT[0] -> cluster 1 unreferenced
	run -6 ploopctl check "$Q"
	[[ "$output" == *"1 clusters are not referenced by the BAT (0 of them at the end"* ]]
}

@test "in-use flag: exit 3 (not closed cleanly)" {
	poke "$Q" 44 "$(le32 0x746F6E59)"
	run -3 ploopctl check "$Q"
	[[ "$output" == *"in-use flag is set"* ]]
}

@test "corruption wins over leaks and in-use: exit 4 with every finding" {
	poke "$Q" 44 "$(le32 0x746F6E59)"
	poke "$Q" $((64 + 4 * 7)) "$(le32 50)"
	poke "$Q" $((64 + 4 * 9)) "$(le32 1)"
	truncate -s 4M "$Q"
	before=$(sha256sum <"$Q")
	run -4 ploopctl check "$Q"
	[[ "$output" == *"BAT entry 7 points to cluster 50 beyond the end of the file (4 clusters)"* ]]
	[[ "$output" == *"BAT entries 0 and 9 both point to cluster 1"* ]]
	[[ "$output" == *"in-use flag is set"* ]]
	[[ "$output" == *"corruption found"* ]]
	[ "$(sha256sum <"$Q")" = "$before" ]
}

@test "thousands of bad entries are summarised, not flooded" {
	run_ok qemu-img create -q -f parallels "$Q" 10G
	# BAT entries 0..9999 all point past the end
	python3 -c 'import struct,sys; sys.stdout.buffer.write(struct.pack("<10000I", *([77]*10000)))' |
		dd of="$Q" bs=1 seek=64 conv=notrunc status=none
	run -4 ploopctl check "$Q"
	[ "${#lines[@]}" -lt 30 ]
	[[ "$output" == *"and 9980 more like these"* ]]
}

@test "a V21 extension with a bad magic is corruption; a valid one is not a leak" {
	cp "$Q" "$BATS_TEST_TMPDIR/e.hds"
	E=$BATS_TEST_TMPDIR/e.hds
	truncate -s 4M "$E"
	poke "$E" 44 "$(le32 0x312e3276)"
	poke "$E" 56 "$(le64 $((3 * 2048)))"
	run -4 ploopctl check "$E"
	[[ "$output" == *"has no extension magic"* ]]
	poke "$E" $((3 * 1048576)) "87eadc23ef4c23ab"
	run_ok ploopctl check "$E"
}

@test "directory check covers every delta of the descriptor" {
	D=$BATS_TEST_TMPDIR/img
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	poke "$D/root.hds" $((64 + 4 * 3)) "$(le32 9)"
	run -4 ploopctl check "$D"
	[[ "$output" == *"$D/root.hds: corruption: BAT entry 3 points to cluster 9"* ]]
}

@test "stack mismatch: deltas of different cluster sizes are corruption" {
	D=$BATS_TEST_TMPDIR/img
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	rm "$D/root.hds"
	qemu-img create -q -f parallels -o cluster_size=64K "$D/root.hds" 64M
	run -4 ploopctl check "$D"
	[[ "$output" == *"differs from Blocksize 2048"* ]]
	run -4 ploopctl info "$D"
}

# check --repair (exit 7: repaired; 4: corruption remains)

@test "repair: leaked tail clusters are truncated; qemu agrees" {
	truncate -s 5M "$Q"
	run -7 ploopctl check --repair "$Q"
	[[ "$output" == *"repaired: truncated 2097152 bytes of leaked clusters"* ]]
	[ "$(stat -c %s "$Q")" -eq $((3 * 1048576)) ]
	run_ok ploopctl check "$Q"
	run_ok qemu-img check -f parallels "$Q"
	run_ok qemu-io -r -f parallels -c 'read -P 0x55 5M 1M' "$Q"
	[[ "$output" != *"Pattern verification failed"* ]]
}

@test "repair: a stale in-use flag is cleared after the image verifies" {
	poke "$Q" 44 "$(le32 0x746F6E59)"
	run -7 ploopctl check --repair "$Q"
	[[ "$output" == *"repaired: cleared the in-use flag"* ]]
	[ "$(peek "$Q" 44 4)" = 00000000 ]
	run_ok ploopctl check "$Q"
	run_ok qemu-img check -f parallels "$Q"
}

@test "repair: BAT entries outside the file or in the header are dropped, each reported" {
	poke "$Q" $((64 + 4 * 7)) "$(le32 50)"
	poke "$Q" $((64 + 4 * 8)) ffffffff
	run -7 ploopctl check --json --repair "$Q"
	[ "$(json_get "$output" 'j["repairs"]')" = 2 ]
	[ "$(json_get "$output" 'j["verdict"]')" = repaired ]
	[[ "$output" == *"dropped: BAT entry 7 points to cluster 50 beyond the end"* ]]
	[[ "$output" == *"dropped: BAT entry 8 holds the reserved value"* ]]
	[ "$(peek "$Q" $((64 + 4 * 7)) 8)" = 0000000000000000 ]
	run_ok ploopctl check "$Q"
	run_ok qemu-img check -f parallels "$Q"
	run_ok qemu-io -r -f parallels -c 'read -P 0x11 0 1M' -c 'read -P 0x55 5M 1M' "$Q"
	[[ "$output" != *"Pattern verification failed"* ]]
}

@test "repair: shared clusters are left without --force, dropped with it" {
	poke "$Q" 44 "$(le32 0x746F6E59)"
	poke "$Q" $((64 + 4 * 9)) "$(le32 1)"
	before=$(sha256sum <"$Q")
	run -4 ploopctl check --repair "$Q"
	[[ "$output" == *"BAT entries 0 and 9 both point to cluster 1"* ]]
	[[ "$output" == *"corruption"* ]]
	[ "$(sha256sum <"$Q")" = "$before" ]	# in-use flag kept too
	run -7 ploopctl check --repair --force "$Q"
	[[ "$output" == *"repaired: dropped BAT entry 9, which shared cluster 1 with entry 0"* ]]
	[[ "$output" == *"repaired: cleared the in-use flag"* ]]
	run_ok ploopctl check "$Q"
	run_ok qemu-io -r -f parallels -c 'read -P 0x11 0 1M' "$Q"
	[[ "$output" != *"Pattern verification failed"* ]]
}

@test "repair: a damaged header is not guessed at; a clean image is left alone" {
	cp "$Q" "$BATS_TEST_TMPDIR/clean.hds"
	before=$(sha256sum <"$BATS_TEST_TMPDIR/clean.hds")
	run_ok ploopctl check --repair "$BATS_TEST_TMPDIR/clean.hds"
	[ "$(sha256sum <"$BATS_TEST_TMPDIR/clean.hds")" = "$before" ]
	poke "$Q" 28 "$(le32 7)"
	before=$(sha256sum <"$Q")
	run -4 ploopctl check --repair "$Q"
	[ "$(sha256sum <"$Q")" = "$before" ]
	run -2 ploopctl check --force "$Q"
}

@test "repair of a directory image, and of a crashed one after kill -9" {
	D=$BATS_TEST_TMPDIR/img
	M=$BATS_TEST_TMPDIR/mnt
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	timeout 60 dd if=/dev/urandom of="$M/disk" bs=1M count=4 oflag=direct conv=fsync,notrunc status=none
	run -5 ploopctl check --repair "$D"	# mounted: busy
	pf_kill9 "$M"
	run -3 ploopctl check "$D"
	run -7 ploopctl check --repair "$D"
	run_ok ploopctl check "$D"
	run_ok qemu-img check -f parallels "$D/root.hds"
}
