#!/bin/sh
# Install every Debian package that building, testing and benchmarking
# ploopfs needs.  Idempotent; run as root (apt-get).
set -eu

PKGS="
build-essential pkg-config
libfuse3-dev fuse3 libaio-dev liburing-dev libssl-dev libxml2-dev uuid-dev
bats bats-assert bats-support
qemu-utils qemu-system-common qemu-block-extra
fio e2fsprogs util-linux xxd python3
cppcheck clang-tidy shellcheck groff-base man-db
"
# make fuzz: clang and its libFuzzer runtime (make check needs neither)
PKGS="$PKGS clang libclang-rt-dev"
# benchmarks (tests/bench): fdatasync counts, the PNG chart
PKGS="$PKGS strace python3-matplotlib"

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
		grep -q 'install ok installed'; then
		missing="$missing $p"
	fi
done
if [ -z "$missing" ]; then
	echo "deps: all packages present"
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "deps: missing packages:$missing (run as root to install)" >&2
	exit 1
fi
echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
