#!/usr/bin/env bats
# ploopctl init and info: the layout ploop-format.md §1 and §2 describe.

load helpers

setup() {
	D=$BATS_TEST_TMPDIR/img
}

@test "init creates the directory, DiskDescriptor.xml and root.hds" {
	run_ok ploopctl init -s 10G "$D"
	[ -f "$D/DiskDescriptor.xml" ]
	[ -f "$D/root.hds" ]
	[ ! -e "$D/DiskDescriptor.xml.tmp" ]
	# ploop-format.md §2.2: the header of a 10 GiB image
	[ "$(head -c 16 "$D/root.hds")" = "WithouFreSpacExt" ]
	[ "$(peek "$D/root.hds" 16 48)" = "$(le32 2)$(le32 16)$(le32 40960)$(le32 2048)$(le32 10240)$(le64 20971520)$(le32 0)$(le32 2048)$(le32 1)$(le64 0)" ]
	[ "$(stat -c %s "$D/root.hds")" -eq 1048576 ]
	grep -q '<Disk_size>20971520</Disk_size>' "$D/DiskDescriptor.xml"
	grep -q '<Blocksize>2048</Blocksize>' "$D/DiskDescriptor.xml"
	grep -q '<TopGUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</TopGUID>' "$D/DiskDescriptor.xml"
	grep -q '<File>root.hds</File>' "$D/DiskDescriptor.xml"
}

@test "init refuses a directory that already holds an image" {
	run_ok ploopctl init -s 1G "$D"
	before=$(tree_sum "$D")
	run -1 ploopctl init -s 2G "$D"
	[[ "$output" == *"already holds an image"* ]]
	[ "$(tree_sum "$D")" = "$before" ]
}

@test "init into an existing empty directory works" {
	mkdir "$D"
	run_ok ploopctl init -s 64M "$D"
	[ -f "$D/root.hds" ]
}

@test "info shows size, cluster size and deltas; --json agrees" {
	run_ok ploopctl init -s 1G -c 4M "$D"
	run_ok ploopctl info "$D"
	[[ "$output" == *"virtual size:       1 GiB (1073741824 bytes"* ]]
	[[ "$output" == *"cluster size:       4 MiB (8192 sectors)"* ]]
	[[ "$output" == *"level 0 (top): {5fbaabe3-6958-40ff-92a7-860e329aab41}"* ]]
	run_ok ploopctl info --json "$D"
	[ "$(json_get "$output" 'j["virtual_size"]')" = 1073741824 ]
	[ "$(json_get "$output" 'j["cluster_size"]')" = 4194304 ]
	[ "$(json_get "$output" 'len(j["deltas"])')" = 1 ]
	[ "$(json_get "$output" 'j["deltas"][0]["bat_entries"]')" = 256 ]
	[ "$(json_get "$output" 'j["deltas"][0]["in_use"]')" = closed ]
	[ "$(json_get "$output" 'j["deltas"][0]["allocated_clusters"]')" = 0 ]
}

@test "info on a delta file shows its header fields" {
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl info --json "$D/root.hds"
	[ "$(json_get "$output" 'j["kind"]')" = delta ]
	[ "$(json_get "$output" 'j["deltas"][0]["cylinders"]')" = 256 ]
	[ "$(json_get "$output" 'j["deltas"][0]["flags"]')" = 1 ]
}

@test "16 TiB sparse image: header clusters, BAT beyond 2^32 bytes of data" {
	run_ok ploopctl init -s 16T "$D"
	run_ok ploopctl info --json "$D"
	[ "$(json_get "$output" 'j["virtual_size"]')" = 17592186044416 ]
	[ "$(json_get "$output" 'j["deltas"][0]["header_clusters"]')" = 65 ]
	# the file is 65 MiB long but sparse
	[ "$(stat -c %s "$D/root.hds")" -eq $((65 * 1048576)) ]
	[ "$(du -k "$D/root.hds" | cut -f1)" -lt 1024 ]
	run_ok ploopctl check "$D"
}

@test "a size that is not a cluster multiple keeps its exact size" {
	run_ok ploopctl init -s 1536K "$D"
	run_ok ploopctl info --json "$D"
	[ "$(json_get "$output" 'j["virtual_size"]')" = 1572864 ]
	[ "$(json_get "$output" 'j["deltas"][0]["bat_entries"]')" = 2 ]
}

@test "info never writes: image bytes unchanged" {
	run_ok ploopctl init -s 64M "$D"
	before=$(tree_sum "$D")
	run_ok ploopctl info "$D"
	run_ok ploopctl info --json "$D/root.hds"
	run_ok ploopctl check "$D"
	run_ok ploopctl snapshot-list "$D"
	[ "$(tree_sum "$D")" = "$before" ]
}
