#!/usr/bin/env bats
# Offline snapshot-switch, as ploop does it (ploop-format.md §4.4): the
# current top is discarded and a new empty top continues from the chosen
# snapshot; the snapshots above it stay as a side branch.  The disk is
# read through a ploopfs mount and, independently, with qemu-io.

load helpers

setup() {
	pf_dirs
	TOP='{5fbaabe3-6958-40ff-92a7-860e329aab41}'
}

teardown() {
	pf_teardown
}

# write_through DIR BYTE OFF_MIB LEN_MIB: mount DIR, write LEN_MIB MiB of
# BYTE at OFF_MIB MiB of the disk (O_DIRECT), unmount
write_through() {
	python3 -c 'import sys; sys.stdout.buffer.write(bytes([int(sys.argv[1], 0)]) * (int(sys.argv[2]) << 20))' \
		"$2" "$4" >"$T/fill"
	pf_mount "$1" "$M"
	timeout 60 dd if="$T/fill" of="$M/disk" bs=1M seek="$3" oflag=direct conv=notrunc status=none
	pf_umount "$M"
}

# expect_disk DIR OFF:LEN:BYTE...: mount DIR and check that each range
# (in MiB) of the disk holds only BYTE, then unmount
expect_disk() {
	local dir=$1
	shift
	pf_mount "$dir" "$M"
	timeout 120 python3 - "$M/disk" "$@" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
bad = 0
for spec in sys.argv[2:]:
    off, ln, b = spec.split(':')
    off, ln, b = int(off) << 20, int(ln) << 20, int(b, 0)
    buf = os.pread(fd, ln, off)
    if buf != bytes([b]) * ln:
        i = next((i for i in range(len(buf)) if buf[i] != b), len(buf))
        print(f"{spec}: at byte {off + i}: expected {b:#04x}", file=sys.stderr)
        bad = 1
sys.exit(bad)
PY
	local rc=$?
	pf_umount "$M"
	return "$rc"
}

# file_of DIR GUID: the file of snapshot GUID, from snapshot-list --json
file_of() {
	local out
	out=$(ploopctl snapshot-list --json "$1") || return 1
	json_get "$out" '[s["file"] for s in j["snapshots"] if s["guid"]=="'"$2"'"][0]'
}

# parent_of DIR GUID
parent_of() {
	local out
	out=$(ploopctl snapshot-list --json "$1") || return 1
	json_get "$out" '[s["parent"] for s in j["snapshots"] if s["guid"]=="'"$2"'"][0]'
}

# An image with two snapshots and data at every level:
#   A (root.hds): 0xa1 in MiB 0-1
#   B:            0xb2 in MiB 1-2
#   top:          0xc3 in MiB 2-3
make_two_snapshots() {
	run_ok ploopctl init -s 64M "$D"
	write_through "$D" 0xa1 0 2
	run_ok ploopctl snapshot "$D"
	A=$output
	write_through "$D" 0xb2 1 2
	run_ok ploopctl snapshot "$D"
	B=$output
	write_through "$D" 0xc3 2 2
	expect_disk "$D" 0:1:0xa1 1:1:0xb2 2:2:0xc3 4:60:0
}

@test "snapshot-switch: back to a snapshot, then over to the side branch left behind" {
	make_two_snapshots
	old_top=$(file_of "$D" "$TOP")
	[ -f "$D/$old_top" ]

	run_ok ploopctl snapshot-switch "$D" "$A"
	[ "$output" = "switched to snapshot $A; the previous top is discarded" ]
	[ ! -e "$D/$old_top" ]
	[ ! -e "$D/DiskDescriptor.xml.tmp" ]
	new_top=$(file_of "$D" "$TOP")
	[[ "$new_top" =~ ^root\.hds\.\{[0-9a-f-]{36}\}$ ]]
	[ "$new_top" != "$old_top" ]
	# empty, closed, one cluster long, the geometry of the old top
	[ "$(stat -c %s "$D/$new_top")" -eq "$MiB" ]
	[ "$(peek "$D/$new_top" 0 44)" = "$(peek "$D/root.hds" 0 44)" ]
	[ "$(peek "$D/$new_top" 44 4)" = 00000000 ]
	[ "$(parent_of "$D" "$TOP")" = "$A" ]
	# B stays, off the active chain, with its data
	[ "$(parent_of "$D" "$B")" = "$A" ]
	run_ok ploopctl info --json "$D"
	[ "$(json_get "$output" 'len(j["deltas"])')" = 2 ]
	run_ok ploopctl snapshot-list --json "$D"
	[ "$(json_get "$output" 'len(j["snapshots"])')" = 3 ]
	run_ok ploopctl check "$D"
	[[ "$output" == *": 3 deltas, "*": clean" ]]
	for f in $(delta_files "$D"); do
		run_ok qemu-img check -f parallels "$f"
	done
	# the disk is A's: through the mount, and as qemu reads the chain
	expect_disk "$D" 0:2:0xa1 2:62:0
	opts="driver=parallels,file.filename=$D/$new_top,backing.driver=parallels,backing.file.filename=$D/root.hds"
	run_ok qemu-io -r -c 'read -P 0xa1 0 2M' -c 'read -P 0 2M 62M' --image-opts "$opts"
	[[ "$output" != *"Pattern verification failed"* ]]

	# new writes go to the new top only
	base_sum=$(sha256sum <"$D/root.hds")
	b_file=$(file_of "$D" "$B")
	b_sum=$(sha256sum <"$D/$b_file")
	write_through "$D" 0xd4 3 1
	expect_disk "$D" 0:2:0xa1 2:1:0 3:1:0xd4 4:60:0
	[ "$(sha256sum <"$D/root.hds")" = "$base_sum" ]
	[ "$(sha256sum <"$D/$b_file")" = "$b_sum" ]

	# over to B on the side branch: the 0xd4 top is discarded
	old_top=$(file_of "$D" "$TOP")
	run_ok ploopctl snapshot-switch "$D" "$B"
	[ ! -e "$D/$old_top" ]
	[ "$(parent_of "$D" "$TOP")" = "$B" ]
	expect_disk "$D" 0:1:0xa1 1:2:0xb2 3:61:0
	run_ok ploopctl info --json "$D"
	[ "$(json_get "$output" 'len(j["deltas"])')" = 3 ]
	image_ok "$D"
	[ "$(find "$D" -mindepth 1 ! -name '*.sum' | wc -l)" -eq 4 ]
	[ "$(sha256sum <"$D/root.hds")" = "$base_sum" ]
	[ "$(sha256sum <"$D/$b_file")" = "$b_sum" ]
}

@test "snapshot-switch to the top's parent discards what was written since the snapshot" {
	run_ok ploopctl init -s 64M "$D"
	write_through "$D" 0x5a 0 1
	run_ok ploopctl snapshot "$D"
	g=$output
	write_through "$D" 0x6b 0 3
	expect_disk "$D" 0:3:0x6b
	run_ok ploopctl snapshot-switch "$D" "${g^^}"	# either case
	[ "$output" = "switched to snapshot $g; the previous top is discarded" ]
	expect_disk "$D" 0:1:0x5a 1:63:0
	run_ok ploopctl snapshot-list --json "$D"
	[ "$(json_get "$output" 'len(j["snapshots"])')" = 2 ]
	run_ok ploopctl check "$D"
	# and a snapshot on top of the switched image works as usual
	run_ok ploopctl snapshot "$D"
	run_ok ploopctl check "$D"
	expect_disk "$D" 0:1:0x5a 1:63:0
}

@test "snapshot-switch takes a GUID without braces, as a snapshot view is named, in any case" {
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	a=$output
	run_ok ploopctl snapshot "$D"
	b=$output
	bare=$(tr -d '{}' <<<"$a")
	run_ok ploopctl snapshot-switch "$D" "${bare^^}"
	[ "$output" = "switched to snapshot $a; the previous top is discarded" ]
	[ "$(parent_of "$D" "$TOP")" = "$a" ]
	# over to the side branch left behind, lower case without braces
	run_ok ploopctl snapshot-switch "$D" "$(tr -d '{}' <<<"$b")"
	[ "$output" = "switched to snapshot $b; the previous top is discarded" ]
	[ "$(parent_of "$D" "$TOP")" = "$b" ]
	# braces on one side only are no GUID
	run -2 ploopctl snapshot-switch "$D" "{$bare"
	[ "$output" = "ploopctl: invalid GUID '{$bare'" ]
	run_ok ploopctl check "$D"
}

@test "snapshot-switch on a mounted image is busy (exit 5) and changes nothing" {
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	g=$output
	pf_mount "$D" "$M"
	dd_sum=$(sha256sum <"$D/DiskDescriptor.xml")
	files=$(ls "$D")
	run -5 ploopctl snapshot-switch "$D" "$g"
	[[ "$output" == *"busy"* ]]
	[ "${#lines[@]}" -eq 1 ]
	no_sanitizer_reports "$output"
	[ "$(sha256sum <"$D/DiskDescriptor.xml")" = "$dd_sum" ]
	[ "$(ls "$D")" = "$files" ]
	pf_umount "$M"

	# any holder of the lock, and the tree does not change by a byte
	exec {lockfd}<"$D"
	flock -x "$lockfd"
	before=$(tree_sum "$D")
	run -5 ploopctl snapshot-switch "$D" "$g"
	[ "$(tree_sum "$D")" = "$before" ]
	exec {lockfd}<&-
	run_ok ploopctl snapshot-switch "$D" "$g"
}

@test "snapshot-switch refuses a bad GUID: one line, exit 2, no byte changed" {
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	a=$output
	run_ok ploopctl snapshot "$D"
	b=$output
	before=$(tree_sum "$D")

	run -2 ploopctl snapshot-switch "$D" '{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}'
	[ "$output" = "ploopctl: $D: no snapshot {0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}" ]
	run -2 ploopctl snapshot-switch "$D" "$TOP"
	[ "$output" = "ploopctl: $D: $TOP is the current top, not a snapshot to switch to" ]
	run -2 ploopctl snapshot-switch "$D" '{00000000-0000-0000-0000-000000000000}'
	[ "${#lines[@]}" -eq 1 ]
	[[ "$output" == *"no snapshot"* ]]
	run -2 ploopctl snapshot-switch "$D" 'not-a-guid'
	[ "$output" = "ploopctl: invalid GUID 'not-a-guid'" ]
	run -2 ploopctl snapshot-switch "$D"
	[[ "$output" == usage:* ]]
	run -2 ploopctl snapshot-switch "$D" "$a" extra
	run -2 ploopctl snapshot-switch --bogus "$D" "$a"
	run_ok ploopctl snapshot-switch --help
	[[ "$output" == "usage: ploopctl snapshot-switch <dir> <guid>"* ]]
	run -1 ploopctl snapshot-switch "$T/nowhere" "$a"
	[ "$(tree_sum "$D")" = "$before" ]

	# a temporary snapshot is being deleted: it cannot be switched to
	python3 - "$D/DiskDescriptor.xml" "$a" <<'PY'
import sys
p, g = sys.argv[1], sys.argv[2]
s = open(p).read()
key = '<GUID>%s</GUID>\n      <ParentGUID>' % g
i = s.index(key)
j = s.index('</ParentGUID>\n', i) + len('</ParentGUID>\n')
s = s[:j] + '      <Temporary/>\n' + s[j:]
open(p, 'w').write(s)
PY
	run_ok ploopctl snapshot-list "$D"
	[[ "$output" == *"(temporary)"* ]]
	before=$(tree_sum "$D")
	run -2 ploopctl snapshot-switch "$D" "$a"
	[ "$output" = "ploopctl: $D: cannot switch to snapshot $a: it is being deleted (temporary)" ]
	[ "$(tree_sum "$D")" = "$before" ]
	# the others still can be
	run_ok ploopctl snapshot-switch "$D" "$b"
}

@test "snapshot-switch refuses an unclean image (exit 3), changes nothing" {
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	g=$output
	top=$(file_of "$D" "$TOP")
	poke "$D/$top" 44 "$(le32 0x746F6E59)"
	before=$(tree_sum "$D")
	run -3 ploopctl snapshot-switch "$D" "$g"
	[ "$output" = "ploopctl: $D/$top: in-use flag is set: the image was not closed cleanly (run ploopctl check)" ]
	[ "$(tree_sum "$D")" = "$before" ]
}

@test "snapshot-switch to a side branch checks that branch first" {
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	a=$output
	write_through "$D" 0x11 0 1
	run_ok ploopctl snapshot "$D"
	b=$output
	run_ok ploopctl snapshot-switch "$D" "$a"
	bf=$D/$(file_of "$D" "$b")

	# a BAT entry past the end of B's file: corrupt (4), nothing changes
	cp "$bf" "$T/b.good"
	poke "$bf" 64 "$(le32 50)"
	before=$(tree_sum "$D")
	run -4 ploopctl snapshot-switch "$D" "$b"
	[ "${#lines[@]}" -eq 1 ]
	[[ "$output" == "ploopctl: $bf: "* ]]
	[ "$(tree_sum "$D")" = "$before" ]
	# an in-use flag on it: unclean (3)
	cp "$T/b.good" "$bf"
	poke "$bf" 44 "$(le32 0x746F6E59)"
	before=$(tree_sum "$D")
	run -3 ploopctl snapshot-switch "$D" "$b"
	[[ "$output" == "ploopctl: $bf: in-use flag is set"* ]]
	[ "$(tree_sum "$D")" = "$before" ]
	# missing: 1
	rm "$bf"
	before=$(tree_sum "$D")
	run -1 ploopctl snapshot-switch "$D" "$b"
	[[ "$output" == "ploopctl: $bf: "*"No such file"* ]]
	[ "$(tree_sum "$D")" = "$before" ]
	cp "$T/b.good" "$bf"
	run_ok ploopctl snapshot-switch "$D" "$b"
	expect_disk "$D" 0:1:0x11 1:63:0
}

@test "every hostile descriptor: snapshot-switch exits 4 naming it, no change" {
	n=0
	for x in "$BATS_TEST_DIRNAME"/../corpus/dd/bad-*.xml; do
		n=$((n + 1))
		d=$T/$(basename "$x" .xml)
		run_ok ploopctl init -s 64M "$d"
		cp "$x" "$d/DiskDescriptor.xml"
		before=$(tree_sum "$d")
		run -4 ploopctl snapshot-switch "$d" '{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}'
		[ "${#lines[@]}" -eq 1 ] || { echo "$x: $output" >&2; false; }
		[[ "$output" == *"$d/DiskDescriptor.xml"* ]]
		no_sanitizer_reports "$output"
		[ "$(tree_sum "$d")" = "$before" ] || { echo "$x: image changed" >&2; false; }
	done
	[ "$n" -ge 20 ]
}

# W6: the new top is written and synced (file and directory entry) before
# DiskDescriptor.xml names it; the descriptor is replaced by tmp + fsync +
# rename + directory fsync; the old top is unlinked only after the rename.
@test "W6 ordering of snapshot-switch, seen in strace" {
	command -v strace >/dev/null
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	g=$output
	old_top=$(file_of "$D" "$TOP")
	# LeakSanitizer cannot run under ptrace: off for an ASan build
	run_ok env ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
		strace -o "$T/switch.trace" \
		-e trace=openat,fsync,fdatasync,renameat,renameat2,unlink,unlinkat \
		"$PLOOPCTL" snapshot-switch "$D" "$g"
	run_ok "$BATS_TEST_DIRNAME/w6_order.py" "$T/switch.trace"
	[[ "$output" == "W6 order ok: root.hds."* ]]
	rename=$(grep -n 'renameat.*"DiskDescriptor.xml.tmp"' "$T/switch.trace" | cut -d: -f1)
	unlink=$(grep -nF "unlinkat(" "$T/switch.trace" | grep -F "\"$old_top\"" | cut -d: -f1)
	[ -n "$rename" ] && [ -n "$unlink" ]
	[ "$unlink" -gt "$rename" ]
	[ ! -e "$D/$old_top" ]
}
