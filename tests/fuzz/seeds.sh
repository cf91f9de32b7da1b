#!/bin/bash
# Make the seed inputs of the fuzz targets into OUT/<target>/: delta
# headers from the damaged images of tests/corpus/images.tsv and from
# images that ploopctl init and snapshot make, the descriptors of
# tests/corpus/dd and of those images, and a few hand-written lines for
# the control protocol, the events and sizes.  The committed corpus is
# these seeds minimised with libFuzzer's -merge=1 (tests/fuzz/CAMPAIGN.md);
# run again only to rebuild it.
# usage: seeds.sh PLOOPCTL OUT
set -eu
ploopctl=$(realpath "${1:?usage: seeds.sh PLOOPCTL OUT}")
out=$(realpath -m "${2:?usage: seeds.sh PLOOPCTL OUT}")
top=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"/{header,descriptor,ctl_request,ctl_reply,event,size,manifest}

# the helpers of the bats suite that the rows of images.tsv use
le32() { printf '%08x' "$1" | sed 's/\(..\)\(..\)\(..\)\(..\)/\4\3\2\1/'; }
le64() {
	local h
	h=$(printf '%016x' "$1")
	echo "$(le32 "0x${h:8:8}")$(le32 "0x${h:0:8}")"
}
poke() {
	printf '%s' "$3" | xxd -r -p | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
make_qemu_image() {
	qemu-img create -q -f parallels "$1" 64M
	qemu-io -f parallels -c 'write -P 0x11 0 1M' -c 'write -P 0x55 5M 1M' "$1" >/dev/null
}
# a header seed: the first page of the delta (header and BAT entries)
head_seed() {
	head -c 4096 "$1" >"$out/header/$2.bin"
}

while IFS=$'\t' read -r name action _; do
	[[ -z "$name" || "$name" == \#* ]] && continue
	case $name in symlink | directory) continue ;; esac
	F=$tmp/$name.hds
	make_qemu_image "$F"
	(cd "$tmp" && eval "$action") 2>/dev/null || true
	[ -f "$F" ] && head_seed "$F" "tsv-$name"
done <"$top/tests/corpus/images.tsv"

F=$tmp/good.hds
make_qemu_image "$F"
head_seed "$F" qemu-64m
# the same image as v1 (sector offsets in the BAT)
poke "$F" 0 "$(printf WithoutFreeSpace | xxd -p)"
poke "$F" 64 "$(le32 2048)"
poke "$F" $((64 + 4 * 5)) "$(le32 4096)"
head_seed "$F" qemu-64m-v1

for spec in 64M:64K 64M:1M 100M:64M 1T:1M 3G:256K; do
	d=$tmp/init-${spec/:/-}
	"$ploopctl" init -s "${spec%:*}" -c "${spec#*:}" "$d" >/dev/null
	head_seed "$d/root.hds" "init-${spec/:/-}"
	cp "$d/DiskDescriptor.xml" "$out/descriptor/init-${spec/:/-}.xml"
done
d=$tmp/init-64M-1M
"$ploopctl" snapshot "$d" >/dev/null
"$ploopctl" snapshot "$d" >/dev/null
cp "$d/DiskDescriptor.xml" "$out/descriptor/snapshot-2.xml"
for x in "$top"/tests/corpus/dd/*.xml; do
	cp "$x" "$out/descriptor/dd-$(basename "$x")"
done

printf '%s' 'ploopfs-ctl 1 status' >"$out/ctl_request/status"
printf '%s' 'ploopfs-ctl 1 events 0' >"$out/ctl_request/events"
printf '%s' 'ploopfs-ctl 1 snapshot-delete %7B0e24c2b0-0000-4000-8000-000000000001%7D' \
	>"$out/ctl_request/delete"
printf '%s' 'ploopfs-ctl 1 snapshot a%20b%25c%09%7f%C3%A9' >"$out/ctl_request/escapes"
printf '%s' 'ploopfs-ctl 001 x %00' >"$out/ctl_request/bad-nul"
printf '%s' 'ploopfs-ctl 2 status' >"$out/ctl_request/version-2"
printf '%s' 'ploopfs-ctl  1' >"$out/ctl_request/empty-field"

printf '\000data mounted /dev/x\ndata keepalive\ndata delta 0 {g} 3 1 0 root.hds\nend 0 \n' \
	>"$out/ctl_reply/status"
printf '\002data a\ndata b\ndata c\nend 0 \n' >"$out/ctl_reply/stop-after-2"
printf '\011data 1 2 snapshot x\nend 0 \n' >"$out/ctl_reply/cancel-after-1"
printf '\000end 22 malformed request: no command\n' >"$out/ctl_reply/end-einval"
printf '\000end 110 \n' >"$out/ctl_reply/end-etimedout"
printf '\000end 4096 too large\n' >"$out/ctl_reply/end-range"
printf '\000data partial' >"$out/ctl_reply/eof"
printf '\000hello\n' >"$out/ctl_reply/malformed"

printf '%s' '1 1764688800000 mount serving on /dev/fuse' >"$out/event/mount"
printf '%s' '7 1764688800123 lost seq 7 to 9 lost (3 events)' >"$out/event/lost"
printf '%s' '18446744073709551615 0 enospc ' >"$out/event/max-seq"
printf '%s' '2 3 snapshot' >"$out/event/no-text"

for s in 0 512 64K 1M 1MiB 10GB 3g 1T 1P 1pib 18446744073709551615 \
	18446744073709551616 16384P 17179869183G x1 1X 1KBB; do
	printf '%s' "$s" >"$out/size/$s"
done

# manifests of sealed snapshots: empty, one cluster, a few; sha256 and
# blake2b512 (verify seals with --algorithm)
M=$tmp/sealed
"$ploopctl" init -s 64M -c 64K "$M" >/dev/null
"$ploopctl" snapshot "$M" >/dev/null
cp "$M/root.hds.sum" "$out/manifest/empty-sha256"
top=$("$ploopctl" info "$M" | awk '$1 == "file:" { f = $2 } END { print f }')
qemu-io -f parallels -c 'write -P 0x5a 64k 64k' -c 'write -P 0x11 1M 192k' "$top" >/dev/null
"$ploopctl" snapshot "$M" >/dev/null
cp "$top.sum" "$out/manifest/four-sha256"
rm "$top.sum"
"$ploopctl" verify -a blake2b512 "$M" >/dev/null
cp "$top.sum" "$out/manifest/four-blake2b512"
