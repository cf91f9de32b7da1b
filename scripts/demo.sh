#!/bin/bash
# The main job on a fresh machine: create a disk image, serve it with
# ploopfs, put an ext4 file system on it through a loop device, write and
# verify a file, unmount, and show what ploopctl and qemu-img see: the
# snapshot sealed and verified, its digest equal to that of a raw copy.
# usage: demo.sh [BUILD_DIR] [WORK_DIR]   (root: FUSE mounts, loop devices)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$top/build/release}
W=${2:-$(mktemp -d /tmp/ploopfs-demo.XXXXXX)}
D=$W/ct101 M=$W/mnt F=$W/fs
dev=""

cleanup() {
	mountpoint -q "$F" && umount "$F"
	[ -n "$dev" ] && losetup -d "$dev" 2>/dev/null
	mountpoint -q "$M" && fusermount3 -u "$M"
	return 0
}
trap cleanup EXIT

step() { printf '\n$ %s\n' "$*"; "$@"; }

mkdir -p "$M" "$F"
step "$B/ploopctl" init -s 4G "$D"
step "$B/ploopctl" mount "$D" "$M"
step ls -l "$M"
dev=$(losetup -f --show --direct-io=on "$M/disk")
echo "loop device: $dev"
step mkfs.ext4 -q "$dev"
step mount "$dev" "$F"
step dd if=/dev/urandom of="$F/data.bin" bs=1M count=64 status=none
(cd "$F" && sha256sum data.bin) >"$W/data.sha256"
step umount "$F"
step losetup -d "$dev"
dev=""
step "$B/ploopctl" umount "$M"
step "$B/ploopctl" check "$D"
step "$B/ploopctl" snapshot "$D"
step "$B/ploopctl" mount "$D" "$M"
dev=$(losetup -f --show --direct-io=on "$M/disk")
step mount "$dev" "$F"
(cd "$F" && step sha256sum -c "$W/data.sha256")
step df -h "$F"
step umount "$F"
step losetup -d "$dev"
dev=""
step "$B/ploopctl" umount "$M"
step "$B/ploopctl" snapshot-list "$D"
step "$B/ploopctl" verify "$D"
g=$("$B/ploopctl" snapshot-list --json "$D" |
	python3 -c 'import json,sys; print([s["guid"] for s in json.load(sys.stdin)["snapshots"] if not s["current"]][0])')
step "$B/ploopctl" checksum --snapshot "$g" "$D"
step qemu-img convert -f parallels -O raw "$D/root.hds" "$W/snapshot.raw"
step "$B/ploopctl" checksum --file "$W/snapshot.raw"
rm -f "$W/snapshot.raw"
step "$B/ploopctl" info "$D"
step "$B/ploopctl" check "$D"
step qemu-img check -f parallels "$D/root.hds"
echo
echo "demo image: $D"
