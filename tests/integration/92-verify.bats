#!/usr/bin/env bats
# Sealed snapshots and ploopctl verify: the manifest written at an
# offline snapshot and by the daemon's sealer, verify offline and online
# finding a flipped byte in each sealed delta and a truncated-then-
# extended delta, sealing what has no manifest, keeping a damaged one,
# kill -9 while sealing, manifests across snapshot-delete in both
# directions (W9), check --repair, and bad input.

load helpers

setup() {
	pf_dirs
	K=65536
}

teardown() {
	pf_teardown
}

# snap_with DIR VCLUSTER BYTE: write one 64 KiB cluster of BYTE at
# virtual cluster VCLUSTER into the top delta (qemu-io), then snapshot;
# prints the GUID
snap_with() {
	local top
	top=$(top_delta "$1")
	qemu-io -f parallels -c "write -q -P $3 $(($2 * K)) $K" "$top" >/dev/null || return 1
	ploopctl snapshot "$1"
}

# stack3 DIR: an image of 64K clusters with three sealed snapshots; the
# delta of snapshot k (1..3) maps virtual cluster 10+k only (and the
# first also 0-2)
stack3() {
	run_ok ploopctl init -s 64M -c 64K "$1"
	run_ok qemu-io -f parallels -c "write -q -P 0x11 0 $((3 * K))" "$1/root.hds"
	G1=$(snap_with "$1" 11 0x21)
	G2=$(snap_with "$1" 12 0x22)
	G3=$(snap_with "$1" 13 0x23)
}

# file_of DIR GUID: the delta file of GUID (descriptor)
file_of() {
	ploopctl snapshot-list --json "$1" |
		python3 -c 'import json,sys; j=json.load(sys.stdin); print([s["file"] for s in j["snapshots"] if s["guid"]==sys.argv[1]][0])' "$2"
}

# state_of JSON GUID: verify's state of a delta
state_of() {
	json_get "$1" '[d["state"] for d in j["deltas"] if d["guid"]=="'"$2"'"][0]'
}

@test "verify: an offline snapshot is sealed before it returns; verify passes and says what it did" {
	stack3 "$D"
	for g in "$G1" "$G2" "$G3"; do
		f=$(file_of "$D" "$g")
		[ -f "$D/$f.sum" ]
		[ "$(head -c 8 "$D/$f.sum")" = PLOOPSUM ]
	done
	run_ok ploopctl verify "$D"
	[[ "$output" == *"$G1 root.hds: ok (4 clusters)"* ]]
	[[ "$output" == *"live top: not verified (it changes)"* ]]
	[[ "$output" == *"verify: 3 ok, 0 sealed now, 0 mismatch"* ]]
	run_ok ploopctl verify --json "$D"
	[ "$(json_get "$output" 'j["ok"]')" = True ]
	[ "$(state_of "$output" "$G2")" = ok ]
	[ "$(state_of "$output" '{5fbaabe3-6958-40ff-92a7-860e329aab41}')" = top ]
	[ "$(json_get "$output" 'len(j["deltas"])')" = 4 ]
}

@test "verify: a flipped byte in each sealed delta is found, with its file and virtual cluster" {
	stack3 "$D"
	for k in 1 2 3; do
		g=$(eval echo "\$G$k")
		f=$D/$(file_of "$D" "$g")
		size=$(stat -c %s "$f")
		# the last cluster of the file holds virtual cluster 10+k
		orig=$(peek "$f" $((size - 100)) 1)
		poke "$f" $((size - 100)) "$(printf '%02x' $((0x$orig ^ 0x01)))"
		run -9 ploopctl verify "$D"
		[[ "$output" == *"$(basename "$f"): virtual cluster $((10 + k)) (disk bytes $(((10 + k) * K))-$(((11 + k) * K - 1))): data differs from the manifest"* ]]
		[[ "$output" == *"$g $(basename "$f"): MISMATCH (1 bad cluster of "* ]]
		run -9 ploopctl verify --json "$D"
		[ "$(state_of "$output" "$g")" = mismatch ]
		[ "$(json_get "$output" '[d["bad"][0]["cluster"] for d in j["deltas"] if d["state"]=="mismatch"][0]')" = $((10 + k)) ]
		[ "$(json_get "$output" 'j["ok"]')" = False ]
		# one at a time: the others are fine
		[ "$(json_get "$output" 'sum(d["state"]=="ok" for d in j["deltas"])')" = 2 ]
		poke "$f" $((size - 100)) "$orig"
		run_ok ploopctl verify "$D"
	done
}

@test "verify: a delta truncated and extended again is caught" {
	stack3 "$D"
	f=$D/root.hds
	size=$(stat -c %s "$f")
	truncate -s $((size - 2 * K)) "$f"
	truncate -s "$size" "$f"
	run -9 ploopctl verify "$D"
	[[ "$output" == *"root.hds: MISMATCH (2 bad clusters of 4)"* ]]
	[ "$(grep -c 'data differs from the manifest' <<<"$output")" = 2 ]
	# check, which reads metadata only, still finds nothing wrong
	run_ok ploopctl check "$D"
}

@test "verify: seals a read-only delta that has no manifest, and keeps a damaged one" {
	stack3 "$D"
	f=$(file_of "$D" "$G2")
	cp "$D/$f.sum" "$T/orig.sum"
	rm "$D/$f.sum"
	run_ok ploopctl verify "$D"
	[[ "$output" == *"$G2 $f: sealed now (1 clusters)"* ]]
	cmp "$D/$f.sum" "$T/orig.sum"
	run_ok ploopctl verify "$D"
	[[ "$output" == *"verify: 3 ok, 0 sealed now"* ]]
	# a byte of the manifest itself
	poke "$D/$f.sum" 140 ff
	cp "$D/$f.sum" "$T/damaged.sum"
	run -9 ploopctl verify "$D"
	[[ "$output" == *"$G2 $f: MANIFEST DAMAGED: $f.sum: the root digest does not match its contents"* ]]
	cmp "$D/$f.sum" "$T/damaged.sum"
	# a manifest that is not one, or too short to be
	head -c 300 /dev/zero >"$D/$f.sum"
	run -9 ploopctl verify "$D"
	[[ "$output" == *"MANIFEST DAMAGED: $f.sum: not a manifest"* ]]
	echo garbage >"$D/$f.sum"
	run -9 ploopctl verify "$D"
	[[ "$output" == *"MANIFEST DAMAGED: $f.sum: shorter than its header"* ]]
	ln -sf /etc/passwd "$D/$f.sum"
	run -9 ploopctl verify "$D"
	[[ "$output" == *"is a symbolic link"* ]]
}

@test "verify --algorithm seals with it; bad input gives one line and a documented status" {
	stack3 "$D"
	f=$(file_of "$D" "$G3")
	rm "$D/$f.sum"
	run_ok ploopctl verify -a blake2b512 "$D"
	[ "$(xxd -p -s 16 -l 10 "$D/$f.sum")" = "$(printf blake2b512 | xxd -p)" ]
	run_ok ploopctl verify "$D"
	before=$(tree_sum "$D")
	sums=$(cat "$D"/*.sum | sha256sum)
	run -2 ploopctl verify -a nosuch "$D"
	[ "${#lines[@]}" -eq 1 ]
	run -2 ploopctl verify "$D" extra
	run -2 ploopctl verify --threads 999 "$D"
	run -1 ploopctl verify "$T"
	[ "${#lines[@]}" -eq 1 ]
	run -1 ploopctl verify "$T/nonexistent"
	[ "${#lines[@]}" -eq 1 ]
	run -1 ploopctl verify "$D/root.hds"
	[ "$(tree_sum "$D")" = "$before" ]
	[ "$(cat "$D"/*.sum | sha256sum)" = "$sums" ]
}

@test "check --repair removes the manifest of a delta it repairs first (W9); verify seals it again" {
	stack3 "$D"
	# a leaked cluster at the end of the base
	truncate -s $(($(stat -c %s "$D/root.hds") + K)) "$D/root.hds"
	run -6 ploopctl check "$D"
	[ -f "$D/root.hds.sum" ]
	run -7 ploopctl check --repair "$D"
	[[ "$output" == *"its manifest is removed before the repair"* ]]
	[ ! -e "$D/root.hds.sum" ]
	run_ok ploopctl verify "$D"
	[[ "$output" == *"root.hds: sealed now"* ]]
}

@test "snapshot-delete keeps the manifests right both ways (W9): down merge composes, up merge drops" {
	stack3 "$D"
	f1=$(file_of "$D" "$G1")
	f3=$(file_of "$D" "$G3")
	# down: G2's child G3 is read-only; G2's file takes G3's clusters and GUID
	f2=$(file_of "$D" "$G2")
	run_ok ploopctl snapshot-delete "$D" "$G2"
	[ "$(file_of "$D" "$G3")" = "$f2" ]
	[ -f "$D/$f2.sum" ]
	[ ! -e "$D/$f3.sum" ]
	[ ! -e "$D/$f3" ]
	run_ok ploopctl verify "$D"
	[[ "$output" == *"$G3 $f2: ok (2 clusters)"* ]]
	# the composed manifest is byte for byte a fresh seal of the file
	cp "$D/$f2.sum" "$T/composed.sum"
	rm "$D/$f2.sum"
	run_ok ploopctl verify "$D"
	cmp "$D/$f2.sum" "$T/composed.sum"
	# up: G3's child is the top; G3's file and manifest go
	run_ok ploopctl snapshot-delete "$D" "$G3"
	[ ! -e "$D/$f2" ]
	[ ! -e "$D/$f2.sum" ]
	run_ok ploopctl verify "$D"
	[[ "$output" == *"$G1 $f1: ok (4 clusters)"* ]]
	# the base goes up into the top, which takes its name: no
	# manifest may come with the name
	run_ok ploopctl snapshot-delete "$D" "$G1"
	[ -f "$D/root.hds" ]
	[ ! -e "$D/root.hds.sum" ]
	[ -z "$(ls "$D" | grep '\.sum')" ]
	run_ok ploopctl verify "$D"
	image_ok "$D"
}

# seal_wait DIR: until the daemon reports nothing unsealed (60 s at most)
seal_wait() {
	local deadline=$((SECONDS + 60)) out
	while :; do
		out=$(ploopctl status --json "$1") || return 1
		[ "$(json_get "$out" 'j["unsealed"]')" = 0 ] && return 0
		if [ "$SECONDS" -ge "$deadline" ]; then
			echo "still unsealed after 60 s: $out" >&2
			return 1
		fi
		sleep 0.1
	done
}

@test "mounted: the daemon seals a snapshot in the background; verify runs online and finds a flipped byte" {
	run_ok ploopctl init -s 256M "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 20
	run_ok ploopctl snapshot "$D"
	g=$output
	seal_wait "$D"
	[ -f "$D/root.hds.sum" ]
	run_ok ploopctl status "$D"
	[[ "$output" == *"sealing:        done; 0 snapshot(s) unsealed"* ]]
	run_ok ploopctl verify "$D"
	[[ "$output" == *"$g root.hds: ok (20 clusters)"* ]]
	# writes go on meanwhile, to the top only
	write_random "$M/disk" 5 1
	run_ok ploopctl verify "$D"
	# a byte of the sealed delta changes under the daemon
	size=$(stat -c %s "$D/root.hds")
	orig=$(peek "$D/root.hds" $((size - 5000)) 1)
	poke "$D/root.hds" $((size - 5000)) "$(printf '%02x' $((0x$orig ^ 0x80)))"
	run -9 ploopctl verify --json "$D"
	[ "$(state_of "$output" "$g")" = mismatch ]
	[ "$(json_get "$output" '[d["problems"] for d in j["deltas"] if d["guid"]=="'"$g"'"][0]')" = 1 ]
	poke "$D/root.hds" $((size - 5000)) "$orig"
	run_ok ploopctl verify "$D"
	# an online delete composes the manifest as the offline one does
	run_ok ploopctl snapshot "$D"
	g2=$output
	seal_wait "$D"
	run_ok ploopctl snapshot-delete "$D" "$g"
	run_ok ploopctl verify --json "$D"
	[ "$(state_of "$output" "$g2")" = ok ]
	pf_umount "$M"
	run_ok ploopctl verify "$D"
	[[ "$output" == *"verify: 1 ok, 0 sealed now"* ]]
}

@test "sealing interrupted by kill -9 publishes nothing and resumes at the next mount" {
	run_ok ploopctl init -s 2G "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 1200
	run_ok ploopctl snapshot "$D"
	# stop the daemon while it is sealing, in the first half
	deadline=$((SECONDS + 60))
	while :; do
		out=$(ploopctl status --json "$D")
		done_b=$(json_get "$out" 'j["seal_done"]')
		total=$(json_get "$out" 'j["seal_total"]')
		if [ "$total" -gt 0 ] && [ "$done_b" -lt $((total / 2)) ]; then
			kill -STOP "$(pf_pid "$M")"
			break
		fi
		[ "$(json_get "$out" 'j["unsealed"]')" != 0 ] || {
			echo "sealing finished before it was seen running" >&2
			return 1
		}
		[ "$SECONDS" -lt "$deadline" ]
		sleep 0.02
	done
	kill -9 "$(pf_pid "$M")"
	pf_wait_exit "$M" 30 >/dev/null || true
	timeout 30 fusermount3 -u "$M"
	[ ! -e "$D/root.hds.sum" ]
	pf_mount "$D" "$M"
	seal_wait "$D"
	[ -f "$D/root.hds.sum" ]
	[ ! -e "$D/root.hds.sum.tmp" ]
	run_ok ploopctl verify "$D"
	[[ "$output" == *"root.hds: ok (1200 clusters)"* ]]
	pf_umount "$M"
}

@test "mounted read-only: verify reads the manifests and seals nothing" {
	stack3 "$D"
	f=$(file_of "$D" "$G2")
	rm "$D/$f.sum"
	pf_mount "$D" "$M" -o ro
	before=$(tree_sum "$D")
	sums=$(cat "$D"/*.sum | sha256sum)
	run_ok ploopctl verify --json "$D"
	[ "$(state_of "$output" "$G1")" = ok ]
	[ "$(state_of "$output" "$G2")" = unsealed ]
	[ "$(json_get "$output" 'j["ok"]')" = True ]
	run_ok ploopctl verify "$D"
	[[ "$output" == *"$G2 $f: unsealed: not verified: the mount is read-only"* ]]
	[ "$(tree_sum "$D")" = "$before" ]
	[ ! -e "$D/$f.sum" ] && [ ! -e "$D/$f.sum.tmp" ]
	[ "$(cat "$D"/*.sum | sha256sum)" = "$sums" ]
	pf_umount "$M"
}
