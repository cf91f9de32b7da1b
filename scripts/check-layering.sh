#!/bin/bash
# Enforce the layering of HACKING: each third-party API is included by one
# file only, and lower layers never include higher ones.
set -u
cd "$(dirname "$0")/.." || exit 1
fail=0

# only_in HEADER_REGEX FILE...: the header may be included only there
only_in() {
	local re=$1 f
	shift
	while read -r f; do
		case " $* " in
		*" $f "*) ;;
		*) echo "layering: $f includes <$re> (allowed only in $*)"; fail=1 ;;
		esac
	done < <(grep -lE "#include <($re)" src/*.c src/*.h 2>/dev/null)
}

only_in 'libxml/' src/descriptor.c
only_in 'uuid/' src/descriptor.c
only_in 'libaio\.h' src/io_aio.c
only_in 'fuse' src/fuse_fe.c src/fuse_uring.c src/ploopfs.c
only_in 'liburing' src/fuse_uring.c
# checksums: OpenSSL lives in csum.c alone
only_in 'openssl/' src/csum.c
only_in 'syslog\.h' src/log.c

# layer of each module; a module may include only its layer or lower.
# The stack is one module in several files over the private stack_i.h.
declare -A layer=([util]=0 [log]=0 [cli]=0 [mounts]=0 [format]=1 [csum]=1 [descriptor]=1 [descriptor_i]=1 [dd_model]=1
	[io_aio]=2 [io]=2 [file]=2 [delta]=3 [image]=3 [check]=3 [sum]=3 [manifest]=3
	[stack]=4 [stack_i]=4 [map]=4 [gate]=4 [writeback]=4 [snapshot]=4
	[merge]=4 [seal]=4 [control]=5 [control_i]=5 [control_client]=5 [events]=5 [serve]=6 [fuse_fe]=6 [fuse_uring]=6
	[ploopctl]=7 [ploopctl_i]=7 [ploopctl_image]=7 [ploopctl_snap]=7 [ploopctl_freeze]=7
	[ploopctl_status]=7 [ploopctl_mount]=7 [ploopctl_sum]=7 [ploopfs]=7)
# every file of src/ has a layer: a new one is placed here first
for f in src/*.c src/*.h; do
	m=$(basename "${f%.*}")
	if [ -z "${layer[$m]:-}" ]; then
		echo "layering: $f has no layer in scripts/check-layering.sh"
		fail=1
	fi
done
# stack_i.h is private to the files of the stack
for f in src/*.c src/*.h; do
	m=$(basename "${f%.*}")
	[ "${layer[$m]:-}" = 4 ] && continue
	if grep -q '^#include "stack_i\.h"' "$f"; then
		echo "layering: $f includes stack_i.h (private to the stack's files)"
		fail=1
	fi
done
# on-disk byte order is converted in format.c and util.c only (and in
# csum.c, the length that ends the block digest)
if grep -nE '\b(le|be)(16|32|64)toh\b|\bhto(le|be)(16|32|64)\b|\bbswap_|\bpf_le(32|64)_(get|put)\b' \
	src/*.c | grep -vE '^src/(format|util|csum)\.c:'; then
	echo "layering: byte order converted outside format.c, util.c and csum.c"
	fail=1
fi
for f in src/*.c src/*.h; do
	m=$(basename "${f%.*}")
	[ -n "${layer[$m]:-}" ] || continue
	while read -r inc; do
		[ -n "${layer[$inc]:-}" ] || continue
		if [ "${layer[$inc]}" -gt "${layer[$m]}" ]; then
			echo "layering: $f (layer ${layer[$m]}) includes $inc.h (layer ${layer[$inc]})"
			fail=1
		fi
	done < <(sed -n 's/^#include "\([a-z_]*\)\.h"/\1/p' "$f")
done
# control is generic transport: of our modules it uses util and log only
for f in src/control.c src/control.h src/control_i.h src/control_client.c src/events.c src/events.h; do
	[ -e "$f" ] || continue
	while read -r inc; do
		case $inc in
		util | log | control | control_i | events) ;;
		*) echo "layering: $f includes $inc.h (control is transport only: util.h and log.h)"; fail=1 ;;
		esac
	done < <(sed -n 's/^#include "\([a-z_]*\)\.h"/\1/p' "$f")
done
[ $fail -eq 0 ] && echo "layering: ok"
exit $fail
