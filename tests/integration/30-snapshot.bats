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

@test "12 offline snapshot + delete cycles: names stay short, the last delete leaves root.hds" {
	run_ok ploopctl init -s 64M "$D"
	run_ok qemu-io -f parallels -c 'write -P 0xaa 0 3M' "$D/root.hds"
	run_ok qemu-img convert -f parallels -O raw "$D/root.hds" "$BATS_TEST_TMPDIR/before.raw"
	want=$(sha256sum <"$BATS_TEST_TMPDIR/before.raw")
	for i in $(seq 1 12); do
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

# What ploop writes and ploopfs does not model must survive every rewrite
# of the descriptor (ploop-image(5), DESCRIPTOR, Writing): an encrypted
# image without its <KeyId> cannot be opened by ploop.
KEYID=c0ffee00-1234-4321-abcd-0123456789ab

# dd_extras DIR: add to DIR's descriptor (made by init) ploop's optional
# elements, an unknown element with attributes at the top level, and
# unknown elements inside the base's <Image> and <Shot>
dd_extras() {
	python3 - "$1/DiskDescriptor.xml" "$KEYID" <<'PY'
import sys
p, key = sys.argv[1], sys.argv[2]
s = open(p).read()
def put(old, new):
    global s
    assert s.count(old) == 1, old
    s = s.replace(old, new)
put("    <Cylinders>", "    <Max_delta_size>41943040</Max_delta_size>\n    <Cylinders>")
put("    <Padding>0</Padding>\n", "    <Padding>0</Padding>\n    <Encryption>\n"
    "      <KeyId>" + key + "</KeyId>\n    </Encryption>\n")
put("</Blocksize>\n", "</Blocksize>\n      <Preallocated>0</Preallocated>\n")
put("<File>root.hds</File>\n", "<File>root.hds</File>\n        <Note kind=\"base\">keep me</Note>\n")
put("</ParentGUID>\n", "</ParentGUID>\n      <Description>the base</Description>\n")
put("</Virtuozzo_disk_image>", "  <Vendor_data id=\"7\" flags=\"a&amp;b\">\n"
    "    <Blob>x</Blob>\n  </Vendor_data>\n</Virtuozzo_disk_image>")
open(p, "w").write(s)
PY
}

# xq DIR XPATH: the string value of XPATH in DIR's descriptor
xq() {
	xmllint --xpath "string($2)" "$1/DiskDescriptor.xml"
}

# extras_kept DIR BASE_GUID: dd_extras' elements are all there, in place
extras_kept() {
	local b="//Storage/Image[GUID='$2']" s="//Snapshots/Shot[GUID='$2']"
	[ "$(xq "$1" /Virtuozzo_disk_image/Disk_Parameters/Encryption/KeyId)" = "$KEYID" ] &&
	[ "$(xq "$1" /Virtuozzo_disk_image/Disk_Parameters/Max_delta_size)" = 41943040 ] &&
	[ "$(xq "$1" /Virtuozzo_disk_image/StorageData/Storage/Preallocated)" = 0 ] &&
	[ "$(xq "$1" /Virtuozzo_disk_image/Vendor_data/@id)" = 7 ] &&
	[ "$(xq "$1" /Virtuozzo_disk_image/Vendor_data/@flags)" = "a&b" ] &&
	[ "$(xq "$1" /Virtuozzo_disk_image/Vendor_data/Blob)" = x ] &&
	[ "$(xq "$1" "$b/File")" = root.hds ] &&
	[ "$(xq "$1" "$b/Note[@kind='base']")" = "keep me" ] &&
	[ "$(xq "$1" "$s/Description")" = "the base" ] &&
	# in their places: after Disk_size, after Padding, after Blocksize,
	# after the base's File and ParentGUID, last under the root
	[ "$(xq "$1" "name(//Disk_size/following-sibling::*[1])")" = Max_delta_size ] &&
	[ "$(xq "$1" "name(//Padding/following-sibling::*[1])")" = Encryption ] &&
	[ "$(xq "$1" "name(//Blocksize/following-sibling::*[1])")" = Preallocated ] &&
	[ "$(xq "$1" "name($b/File/following-sibling::*[1])")" = Note ] &&
	[ "$(xq "$1" "name($s/ParentGUID/following-sibling::*[1])")" = Description ] &&
	[ "$(xq "$1" "name(/Virtuozzo_disk_image/*[last()])")" = Vendor_data ] ||
		{ echo "after $3:" >&2; cat "$1/DiskDescriptor.xml" >&2; return 1; }
}

@test "every descriptor rewrite keeps ploop's Encryption, Preallocated, Max_delta_size and unknown elements" {
	GA='{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}'
	GB='{1b2c3d4e-5f60-4172-8394-a5b6c7d8e9f0}'
	GC='{2c3d4e5f-6071-4283-94a5-b6c7d8e9f0a1}'
	GD='{3d4e5f60-7182-4394-a5b6-c7d8e9f0a1b2}'
	run_ok ploopctl init -s 64M "$D"
	dd_extras "$D"
	run_ok ploopctl info "$D"
	# the base keeps its file and its elements under the snapshot's GUID
	run_ok ploopctl snapshot -u "$GA" "$D"
	extras_kept "$D" "$GA" snapshot
	run_ok ploopctl snapshot -u "$GB" "$D"
	extras_kept "$D" "$GA" "second snapshot"
	run_ok ploopctl snapshot-switch "$D" "$GA"
	extras_kept "$D" "$GA" snapshot-switch
	# GB stays, on a side branch
	run_ok ploopctl snapshot -u "$GC" "$D"
	run_ok ploopctl snapshot-merge "$D"
	extras_kept "$D" "$GA" snapshot-merge
	[ "$(xq "$D" "count(//Shot[GUID='$GC'])")" = 0 ]
	run_ok ploopctl snapshot -u "$GD" "$D"
	run_ok ploopctl snapshot-delete "$D" "$GD"
	extras_kept "$D" "$GA" snapshot-delete
	[ "$(xq "$D" "count(//Image)")" = 3 ]
	[ "$(xq "$D" "count(//Shot)")" = 3 ]
	image_ok "$D"
}

@test "descriptor mode: init writes ploop's 0644, every rewrite keeps what it finds" {
	umask 022
	run_ok ploopctl init -s 64M "$D"
	[ "$(stat -c %a "$D/DiskDescriptor.xml")" = 644 ]
	[ "$(stat -c %a "$D/root.hds")" = 600 ]
	chmod 640 "$D/DiskDescriptor.xml"
	run_ok ploopctl snapshot "$D"
	g=$output
	[ "$(stat -c %a "$D/DiskDescriptor.xml")" = 640 ]
	chmod 604 "$D/DiskDescriptor.xml"
	run_ok ploopctl snapshot-delete "$D" "$g"
	[ "$(stat -c %a "$D/DiskDescriptor.xml")" = 604 ]
	[ ! -e "$D/DiskDescriptor.xml.tmp" ]
}

# GUIDs as users copy them: from snapshot-list, from ploop, from a
# snapshot view's name (no braces), in either case; printed as ploop
# writes them, lower case with braces
@test "GUIDs with or without braces, in any case, are taken and printed canonical" {
	GA='{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}'
	GB='{1b2c3d4e-5f60-4172-8394-a5b6c7d8e9f0}'
	GC='{2c3d4e5f-6071-4283-94a5-b6c7d8e9f0a1}'
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot -u 0E24C2B0-9A0B-4C5E-8D2F-6F1F3E2A9B11 "$D"
	[ "$output" = "$GA" ]
	run_ok ploopctl snapshot -u '{1B2C3D4E-5F60-4172-8394-A5B6C7D8E9F0}' "$D"
	[ "$output" = "$GB" ]
	run_ok ploopctl snapshot -u 2c3d4e5f-6071-4283-94a5-b6c7d8e9f0a1 "$D"
	[ "$output" = "$GC" ]
	grep -q "<GUID>$GA</GUID>" "$D/DiskDescriptor.xml"
	# the same GUID in another form is the same GUID
	run -2 ploopctl snapshot -u 0e24C2B0-9a0b-4c5e-8d2f-6f1f3e2a9b11 "$D"
	[[ "$output" == *"GUID $GA is already in use"* ]]
	# malformed: refused before anything is opened, exit 2, one line
	before=$(tree_sum "$D")
	for bad in '{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11' \
		'0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}' \
		0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b1 \
		0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b1x \
		'{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b111}'; do
		for cmd in snapshot-delete snapshot-merge snapshot-switch; do
			run -2 ploopctl "$cmd" "$D" "$bad"
			[ "$output" = "ploopctl: invalid GUID '$bad'" ]
		done
		run -2 ploopctl snapshot -u "$bad" "$D"
		[ "$output" = "ploopctl: invalid GUID '$bad'" ]
	done
	[ "$(tree_sum "$D")" = "$before" ]
	# delete GB named as its view would be: upper case, no braces
	run_ok ploopctl snapshot-delete "$D" 1B2C3D4E-5F60-4172-8394-A5B6C7D8E9F0
	[[ "$output" == "deleted snapshot $GB: "* ]]
	# merge GC into its parent GA, upper case with braces: GA goes
	run_ok ploopctl snapshot-merge "$D" '{2C3D4E5F-6071-4283-94A5-B6C7D8E9F0A1}'
	[[ "$output" == "deleted snapshot $GA: "* ]]
	run_ok ploopctl snapshot-list --json "$D"
	[ "$(json_get "$output" '" ".join(s["guid"] for s in j["snapshots"])')" = "$GC $TOP" ]
	# a snapshot that is not there is named canonical
	run -1 ploopctl snapshot-merge "$D" 0E24C2B0-9A0B-4C5E-8D2F-6F1F3E2A9B11
	[ "$output" = "ploopctl: $D: $GA: no such delta" ]
	image_ok "$D"
}
