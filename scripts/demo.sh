#!/bin/bash
# The main job on a fresh machine: build, create a demo image directory,
# put data in it, take a snapshot, and show what ploopctl sees.
# usage: demo.sh [BUILD_DIR] [DEMO_DIR]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$top/build/release}
D=${2:-$(mktemp -d /tmp/ploopfs-demo.XXXXXX)/ct101}
ctl=$B/ploopctl

step() { printf '\n$ %s\n' "$*"; "$@"; }

step "$ctl" init -s 10G "$D"
# Until the ploopfs daemon lands, qemu-io writes data into the base delta.
step qemu-io -f parallels -c 'write -P 0xab 0 4M' -c 'write -P 0xcd 5G 1M' "$D/root.hds"
step "$ctl" snapshot "$D"
step "$ctl" snapshot-list "$D"
step "$ctl" info "$D"
step "$ctl" check "$D"
step qemu-img check -f parallels "$D/root.hds"
echo
echo "demo image: $D"
