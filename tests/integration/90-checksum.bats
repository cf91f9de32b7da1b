#!/usr/bin/env bats
# ploopctl checksum: the block digest (ploop-image(5), CONTENT DIGESTS)
# against a reference written from the specification (blkhash_ref.py),
# --raw against sha256sum, independence from the layout (deltas, cluster
# size, raw file), holes against written zeros, odd sizes, mounted images
# and views, and bad input.

load helpers

setup() {
	pf_dirs
	REF=$BATS_TEST_DIRNAME/blkhash_ref.py
}

teardown() {
	pf_teardown
}

# put SRC OFF IMGFILE RAW: write all of file SRC at byte OFF into the
# delta IMGFILE (qemu-io) and into the raw file RAW (dd)
put() {
	local len
	len=$(stat -c %s "$1")
	run_ok qemu-io -f parallels -c "write -q -s $1 $2 $len" "$3"
	dd if="$1" of="$4" bs=64K oflag=seek_bytes seek="$2" conv=notrunc \
		status=none
}

# sum_of ARGS...: the digest ploopctl checksum ARGS prints
sum_of() {
	local out
	out=$(ploopctl checksum "$@") || return 1
	echo "${out%% *}"
}

# ref_of FILE [ALG]: the reference block digest of a raw file
ref_of() {
	local out
	out=$(python3 "$REF" ${2:+-a "$2"} "$1") || return 1
	echo "${out%% *}"
}

# stack CLUSTER DIR RAW DELTAS: an image of 100 MiB with DELTAS deltas
# (1 or 3) and the raw file of the same content: data that crosses
# cluster and block edges, rewritten in later deltas (in whole 4 MiB
# clusters: qemu-io sees one delta alone and would fill the rest of a
# cluster it allocates with zeros, not with the lower deltas' data)
stack() {
	local c=$1 d=$2 raw=$3 n=$4
	run_ok ploopctl init -s 100M -c "$c" "$d"
	truncate -s 100M "$raw"
	put "$T/a" 12345 "$d/root.hds" "$raw"
	put "$T/b" $((70 * MiB - 4096)) "$d/root.hds" "$raw"
	if [ "$n" -gt 1 ]; then
		run_ok ploopctl snapshot "$d"
	fi
	put "$T/c" $((4 * MiB)) "$(top_delta "$d")" "$raw"
	if [ "$n" -gt 1 ]; then
		run_ok ploopctl snapshot "$d"
	fi
	put "$T/c" $((96 * MiB)) "$(top_delta "$d")" "$raw"
}

sources() {
	head -c $((3 * MiB + 777)) /dev/urandom >"$T/a"
	head -c $((2 * MiB)) /dev/urandom >"$T/b"
	head -c $((4 * MiB)) /dev/urandom >"$T/c"
}

@test "checksum: the reference block digest; --raw is sha256sum of the raw disk" {
	sources
	stack 1M "$D" "$T/raw" 1
	want=$(ref_of "$T/raw")
	[ "$(sum_of "$D")" = "$want" ]
	[ "$(sum_of --file "$T/raw")" = "$want" ]
	raw=$(sha256sum <"$T/raw" | cut -d' ' -f1)
	[ "$(sum_of --raw "$D")" = "$raw" ]
	[ "$(sum_of --raw --file "$T/raw")" = "$raw" ]
	# the digest of a changed disk changes
	run_ok qemu-io -f parallels -c 'write -q -P 0x5a 50M 512' "$D/root.hds"
	[ "$(sum_of "$D")" != "$want" ]
	# prints "<digest>  <operand>", as sha256sum
	run_ok ploopctl checksum --file "$T/raw"
	[ "$output" = "$want  $T/raw" ]
}

@test "checksum: the same content gives the same digest in 1 or 3 deltas, any cluster size, or a raw file" {
	sources
	stack 1M "$T/one" "$T/raw" 1
	want=$(ref_of "$T/raw")
	rawsum=$(sha256sum <"$T/raw" | cut -d' ' -f1)
	for c in 64K 1M 4M; do
		for n in 1 3; do
			rm -rf "$T/i" "$T/r"
			stack "$c" "$T/i" "$T/r" "$n"
			cmp "$T/r" "$T/raw"
			run_ok ploopctl info --json "$T/i"
			[ "$(json_get "$output" 'len(j["deltas"])')" = "$n" ]
			[ "$(sum_of "$T/i")" = "$want" ] || {
				echo "cluster $c, $n deltas: block digest differs" >&2
				return 1
			}
			[ "$(sum_of --raw --threads 3 "$T/i")" = "$rawsum" ]
		done
	done
	[ "$(sum_of --file "$T/raw")" = "$want" ]
}

@test "checksum: zeros written explicitly digest as holes; a hole costs no reading" {
	run_ok ploopctl init -s 64M -c 64K "$T/holes"
	run_ok ploopctl init -s 64M -c 64K "$T/zeros"
	run_ok qemu-io -f parallels -c 'write -q -P 0 0 8M' -c 'write -q -P 0 40M 3M' "$T/zeros/root.hds"
	run_ok ploopctl info --json "$T/zeros"
	[ "$(json_get "$output" 'j["deltas"][0]["allocated_clusters"]')" -gt 0 ]
	truncate -s 64M "$T/zero.raw"
	want=$(ref_of "$T/zero.raw")
	[ "$(sum_of "$T/holes")" = "$want" ]
	[ "$(sum_of "$T/zeros")" = "$want" ]
	[ "$(sum_of --file "$T/zero.raw")" = "$want" ]
	[ "$(sum_of --raw "$T/holes")" = "$(sha256sum <"$T/zero.raw" | cut -d' ' -f1)" ]
}

@test "checksum: a size that is no multiple of the block or the cluster" {
	size=$((100 * MiB + 3 * 512))
	run_ok ploopctl init -s "$size" "$D"
	truncate -s "$size" "$T/raw"
	head -c $((MiB + 1000)) /dev/urandom >"$T/a"
	put "$T/a" $((size - MiB - 1000)) "$D/root.hds" "$T/raw"
	[ "$(sum_of "$D")" = "$(ref_of "$T/raw")" ]
	[ "$(sum_of --raw "$D")" = "$(sha256sum <"$T/raw" | cut -d' ' -f1)" ]
	run_ok ploopctl checksum --json "$D"
	[ "$(json_get "$output" 'j["size"]')" = "$size" ]
	[ "$(json_get "$output" 'j["kind"]')" = block ]
	[ "$(json_get "$output" 'j["block_size"]')" = 65536 ]
	[ "$(json_get "$output" 'j["algorithm"]')" = sha256 ]
	[ "$(json_get "$output" 'j["snapshot"]')" = None ]
}

@test "checksum --algorithm: blake2b512 and sha512 match the reference; a bad name is a usage error" {
	sources
	stack 1M "$D" "$T/raw" 1
	for a in blake2b512 sha512 SHA512; do
		lower=$(tr 'A-Z' 'a-z' <<<"$a")
		[ "$(sum_of -a "$a" "$D")" = "$(ref_of "$T/raw" "$lower")" ]
		[ "$(sum_of --raw --algorithm "$a" "$D")" = "$(openssl dgst -"$lower" -r "$T/raw" | cut -d' ' -f1)" ]
	done
	run_ok ploopctl checksum --json -a blake2b512 "$D"
	[ "$(json_get "$output" 'j["algorithm"]')" = blake2b512 ]
	[ "$(json_get "$output" 'len(j["digest"])')" = 128 ]
	before=$(tree_sum "$D")
	run -2 ploopctl checksum -a nosuch "$D"
	[ "${#lines[@]}" -eq 1 ]
	[[ "$output" == *"no digest named 'nosuch'"* ]]
	run -2 ploopctl checksum -a shake128 "$D"
	[[ "$output" == *"no fixed length"* ]]
	run -2 ploopctl checksum -a "$(printf 'x%.0s' {1..200})" "$D"
	[ "${#lines[@]}" -eq 1 ]
	[ "$(tree_sum "$D")" = "$before" ]
}

@test "checksum: bad GUIDs, operands and files give one line and a documented status" {
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	before=$(tree_sum "$D")
	run -2 ploopctl checksum --snapshot not-a-guid "$D"
	[ "${#lines[@]}" -eq 1 ]
	[[ "$output" == *"not a GUID"* ]]
	run -1 ploopctl checksum --snapshot '{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}' "$D"
	[ "${#lines[@]}" -eq 1 ]
	[[ "$output" == *"no snapshot {0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}"* ]]
	run -1 ploopctl checksum --snapshot '{5fbaabe3-6958-40ff-92a7-860e329aab41}' "$D"
	[[ "$output" == *"is the top delta, not a snapshot"* ]]
	run -2 ploopctl checksum
	run -2 ploopctl checksum --file "$D/root.hds" "$D"
	run -2 ploopctl checksum --threads 0 "$D"
	[[ "$output" == *"--threads takes 1 to"* ]]
	run -2 ploopctl checksum --snapshot '{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}' --file "$D/root.hds"
	mkfifo "$T/fifo"
	run -4 timeout 10 "$PLOOPCTL" checksum --file "$T/fifo"
	[[ "$output" == *"$T/fifo: is not a regular file or block device"* ]]
	run -1 ploopctl checksum --file "$T/nonexistent"
	[ "${#lines[@]}" -eq 1 ]
	run -1 ploopctl checksum "$T"
	[ "${#lines[@]}" -eq 1 ]
	[ "$(tree_sum "$D")" = "$before" ]
}

@test "checksum of a mounted disk and of its snapshot views, and the same after unmount" {
	run_ok ploopctl init -s 256M "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 3 5
	write_random "$M/disk" 200 2
	run_ok ploopctl snapshot "$D"
	g=$output
	snap_blk=$(sum_of --snapshot "$g" "$D")
	snap_raw=$(sum_of --raw --snapshot "$g" "$D")
	[ "$snap_raw" = "$(disk_sum "$M/snapshots/${g:1:36}")" ]
	[ "$snap_blk" = "$(ref_of "$M/snapshots/${g:1:36}")" ]
	write_random "$M/disk" 100 4
	# the snapshot keeps its digest while the disk changes
	[ "$(sum_of --snapshot "$g" "$D")" = "$snap_blk" ]
	disk_blk=$(sum_of "$D")
	[ "$disk_blk" != "$snap_blk" ]
	[ "$(sum_of --raw "$D")" = "$(disk_sum "$M/disk")" ]
	[ "$disk_blk" = "$(ref_of "$M/disk")" ]
	# the view the reader held open is closed again: delete works
	run_ok ploopctl snapshot-delete "$D" "$g"
	run_ok ploopctl snapshot "$D"
	g2=$output
	pf_umount "$M"
	[ "$(sum_of "$D")" = "$disk_blk" ]
	[ "$(sum_of --snapshot "$g2" "$D")" = "$disk_blk" ]
}

@test "checksum: 64 GiB with 8 MiB allocated is read in well under a second, mounted or not" {
	run_ok ploopctl init -s 64G "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 30000 8
	run_ok ploopctl checksum "$D"
	online=${output%% *}
	pf_umount "$M"
	start=$(date +%s%N)
	run_ok ploopctl checksum "$D"
	ms=$((($(date +%s%N) - start) / 1000000))
	[ "${output%% *}" = "$online" ]
	echo "offline: $ms ms" >&2
	# generous for slow CI machines and sanitizers: it reads 8 MiB
	[ "$ms" -lt 5000 ]
}
