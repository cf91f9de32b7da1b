#!/bin/bash
# The checksum benchmark (make bench-checksum; make bench runs it too):
# ploopctl checksum against sha256sum of a raw file of the same data,
# measured in the same run, and the time of a large sparse disk.
#
#   sha256sum          sha256sum of the raw file (one core: the target)
#   file, 1 thread     ploopctl checksum --threads 1 --file RAW
#   image, 1 thread    ploopctl checksum --threads 1 of an image holding
#                      the same data (1 MiB clusters)
#   image, N threads   the same with one thread per CPU
#   image --raw        the plain sha256 of the disk (one hashing thread)
# Each is run with the page cache dropped first (cold: sha256sum reads
# through the cache with readahead, ploopctl with O_DIRECT) and again
# warm (the data still cached where the reader uses the cache); the
# figure is the best of BENCH_SUM_ROUNDS rounds (default 3).  Then a
# 64 GiB image with 8 MiB written, digested unmounted and mounted.
#
# usage: tests/bench/checksum.sh BUILD_DIR   (as root; BENCH_DIR,
#        BENCH_SUM_MB (default 2048), BENCH_SUM_ROUNDS)
set -euo pipefail
B=$(realpath "${1:?usage: checksum.sh BUILD_DIR}")
PLOOPCTL=$B/ploopctl
PLOOPFS=$B/ploopfs
MB=${BENCH_SUM_MB:-2048}
ROUNDS=${BENCH_SUM_ROUNDS:-3}
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/ploopfs-sum.XXXXXX")
MNT=$W/mnt
cleanup() {
	mountpoint -q "$MNT" 2>/dev/null && fusermount3 -u "$MNT"
	rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$MNT"
cpus=$(nproc)

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# secs CMD...: wall seconds of one run (stdout to /dev/null)
secs() {
	local a b
	a=$(date +%s.%N)
	"$@" >/dev/null
	b=$(date +%s.%N)
	awk -v a="$a" -v b="$b" 'BEGIN { printf "%.6f\n", b - a }'
}

# best COLD|WARM CMD...: the shortest of ROUNDS runs
best() {
	local mode=$1 t b=
	shift
	for _ in $(seq "$ROUNDS"); do
		[ "$mode" = cold ] && drop
		t=$(secs "$@")
		if [ -z "$b" ] || awk -v t="$t" -v b="$b" 'BEGIN { exit !(t < b) }'; then
			b=$t
		fi
	done
	echo "$b"
}

echo "checksum benchmark: $MB MiB of random data, $cpus CPUs, in $W" >&2
head -c $((MB << 20)) /dev/urandom >"$W/raw"
"$PLOOPCTL" init -s "${MB}M" "$W/img" >/dev/null
qemu-img convert -n -f raw -O parallels "$W/raw" "$W/img/root.hds"

# the digests agree before anything is timed
want=$(python3 "$(dirname "$0")/../integration/blkhash_ref.py" "$W/raw" | cut -d' ' -f1)
got=$("$PLOOPCTL" checksum "$W/img" | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "checksum: digests differ: $got vs $want" >&2; exit 1; }
[ "$("$PLOOPCTL" checksum --raw "$W/img" | cut -d' ' -f1)" = \
  "$(sha256sum <"$W/raw" | cut -d' ' -f1)" ] || { echo "checksum --raw differs" >&2; exit 1; }

printf '%-26s %10s %10s %8s %8s\n' "reader" "cold MB/s" "warm MB/s" "cold x" "warm x"
ref_c='' ref_w=''
row() {
	local name=$1 c w
	shift
	c=$(best cold "$@")
	w=$(best warm "$@")
	c=$(awk -v m="$MB" -v t="$c" 'BEGIN { print m * 1.048576 / t }')
	w=$(awk -v m="$MB" -v t="$w" 'BEGIN { print m * 1.048576 / t }')
	[ -n "$ref_c" ] || { ref_c=$c; ref_w=$w; }
	awk -v n="$name" -v c="$c" -v w="$w" -v rc="$ref_c" -v rw="$ref_w" \
		'BEGIN { printf "%-26s %10.0f %10.0f %8.2f %8.2f\n", n, c, w, c / rc, w / rw }'
}
row "sha256sum raw" sha256sum "$W/raw"
row "checksum --file, 1 thread" "$PLOOPCTL" checksum --threads 1 --file "$W/raw"
row "checksum image, 1 thread" "$PLOOPCTL" checksum --threads 1 "$W/img"
row "checksum image, $cpus threads" "$PLOOPCTL" checksum --threads "$cpus" "$W/img"
row "checksum --raw image" "$PLOOPCTL" checksum --raw "$W/img"
row "checksum --file, $cpus threads" "$PLOOPCTL" checksum --threads "$cpus" --file "$W/raw"

rm -f "$W/raw"
"$PLOOPCTL" init -s 64G "$W/big" >/dev/null
"$PLOOPFS" "$W/big" "$MNT"
dd if=/dev/urandom of="$MNT/disk" bs=1M seek=30000 count=8 oflag=direct \
	conv=notrunc status=none
t_on=$(best warm "$PLOOPCTL" checksum "$W/big")
fusermount3 -u "$MNT"
for _ in $(seq 50); do "$PLOOPCTL" status "$W/big" >/dev/null 2>&1 && break; sleep 0.1; done
t_off=$(best cold "$PLOOPCTL" checksum "$W/big")
printf '64 GiB disk, 8 MiB allocated: %.3f s unmounted (cold), %.3f s mounted\n' \
	"$t_off" "$t_on"
