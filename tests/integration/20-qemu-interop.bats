#!/usr/bin/env bats
# Interop with qemu's parallels driver, the independent oracle:
# our images pass qemu-img check, qemu's images pass ours.

load helpers

setup() {
	D=$BATS_TEST_TMPDIR/img
}

# qemu_accepts DIR SIZE_BYTES CLUSTER: qemu-img check clean and the size
# agrees.  qemu 7.2's check counts the header clusters after the first as
# leaked while the image holds no data, even on images qemu-img create
# made itself (any size whose BAT needs more than one cluster).  There the
# oracle is qemu's verdict on its own image of the same geometry, and the
# same image must check clean once it holds data.
qemu_accepts() {
	local q=$BATS_TEST_TMPDIR/qemu-own.hds ours theirs
	run qemu-img check -f parallels "$1/root.hds"
	if [ "$status" -ne 0 ]; then
		ours=$output
		[ "$status" -eq 3 ]
		rm -f "$q"
		qemu-img create -q -f parallels -o cluster_size="$3" "$q" "$2"
		run -3 qemu-img check -f parallels "$q"
		theirs=$output
		[ "$ours" = "$theirs" ] || { echo "ours: $ours; qemu's: $theirs" >&2; false; }
		cp --sparse=always "$1/root.hds" "$BATS_TEST_TMPDIR/with-data.hds"
		run_ok qemu-io -f parallels -c "write -P 0x3c $(($2 - 512)) 512" "$BATS_TEST_TMPDIR/with-data.hds"
		run_ok qemu-img check -f parallels "$BATS_TEST_TMPDIR/with-data.hds"
	fi
	run_ok qemu-img info -f parallels --output=json "$1/root.hds"
	[ "$(json_get "$output" 'j["virtual-size"]')" = "$2" ]
}

@test "qemu accepts ploopctl init images: 1, 63, 64, 65 clusters x 64K/1M/4M" {
	for cs in 65536 1048576 4194304; do
		for n in 1 63 64 65; do
			rm -rf "$D"
			run_ok ploopctl init -s $((n * cs)) -c "$cs" "$D"
			qemu_accepts "$D" $((n * cs)) "$cs"
		done
	done
}

@test "qemu accepts 1 GiB, 16 TiB and non-cluster-multiple sizes" {
	for spec in "1G 1073741824 1M" "16T 17592186044416 1M" "16T 17592186044416 4M" \
		"1T 1099511627776 1M" "1536K 1572864 1M" "100M 104857600 64K" \
		"1000M 1048576000 4M" "3584 3584 64K"; do
		# shellcheck disable=SC2086
		set -- $spec
		rm -rf "$D"
		run_ok ploopctl init -s "$1" -c "$3" "$D"
		qemu_accepts "$D" "$2" "$3"
	done
}

@test "qemu-io writes into a ploopctl image; ploopctl check finds it clean" {
	run_ok ploopctl init -s 1G -c 64K "$D"
	run_ok qemu-io -f parallels -c 'write -P 0xab 0 4k' -c 'write -P 0xcd 65535k 70k' \
		-c 'write -P 0xef 1023M 1M' "$D/root.hds"
	run_ok ploopctl check "$D"
	[[ "$output" == *"clean"* ]]
	run_ok ploopctl info --json "$D"
	# 4k -> 1 cluster, 70k straddling a boundary -> 3 clusters, 1M -> 16
	[ "$(json_get "$output" 'j["deltas"][0]["allocated_clusters"]')" = 20 ]
	run_ok qemu-io -r -f parallels -c 'read -P 0xab 0 4k' -c 'read -P 0xcd 65535k 70k' \
		-c 'read -P 0xef 1023M 1M' "$D/root.hds"
	[[ "$output" != *"Pattern verification failed"* ]]
}

@test "qemu-io writes past 4 GiB into a 16 TiB image; check is clean" {
	run_ok ploopctl init -s 16T "$D"
	run_ok qemu-io -f parallels -c 'write -P 0x5a 5G 1M' -c 'write -P 0x5b 16383G 4k' "$D/root.hds"
	run_ok ploopctl check --json "$D"
	[ "$(json_get "$output" 'j["verdict"]')" = clean ]
	[ "$(json_get "$output" 'j["allocated_clusters"]')" = 2 ]
}

@test "ploopctl reads images made by qemu-img create" {
	for spec in "64M 65536 67108864" "1G 1M 1073741824" "1536K 1M 1572864" "10G 4M 10737418240"; do
		set -- $spec
		rm -f "$BATS_TEST_TMPDIR/q.hds"
		run_ok qemu-img create -q -f parallels -o cluster_size="$2" "$BATS_TEST_TMPDIR/q.hds" "$1"
		run_ok ploopctl info --json "$BATS_TEST_TMPDIR/q.hds"
		[ "$(json_get "$output" 'j["virtual_size"]')" = "$3" ]
		run_ok ploopctl check "$BATS_TEST_TMPDIR/q.hds"
	done
}

@test "ploopctl check agrees with qemu on a qemu-written image with data" {
	make_qemu_image "$BATS_TEST_TMPDIR/q.hds"
	run_ok ploopctl check --json "$BATS_TEST_TMPDIR/q.hds"
	[ "$(json_get "$output" 'j["allocated_clusters"]')" = 2 ]
	[ "$(json_get "$output" 'j["verdict"]')" = clean ]
}

@test "a v1 (WithoutFreeSpace) image written by qemu is read" {
	make_qemu_image "$BATS_TEST_TMPDIR/v2.hds"
	# convert to v1 by hand: signature and sector-unit BAT entries
	cp "$BATS_TEST_TMPDIR/v2.hds" "$BATS_TEST_TMPDIR/v1.hds"
	poke "$BATS_TEST_TMPDIR/v1.hds" 0 "$(printf WithoutFreeSpace | xxd -p)"
	poke "$BATS_TEST_TMPDIR/v1.hds" 64 "$(le32 2048)"
	poke "$BATS_TEST_TMPDIR/v1.hds" 84 "$(le32 4096)"
	run_ok qemu-io -r -f parallels -c 'read -P 0x55 5M 1M' "$BATS_TEST_TMPDIR/v1.hds"
	[[ "$output" != *"Pattern verification failed"* ]]
	run_ok ploopctl check --json "$BATS_TEST_TMPDIR/v1.hds"
	[ "$(json_get "$output" 'j["verdict"]')" = clean ]
	run_ok ploopctl info --json "$BATS_TEST_TMPDIR/v1.hds"
	[ "$(json_get "$output" 'j["deltas"][0]["format_version"]')" = 1 ]
}
