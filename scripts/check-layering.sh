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
only_in 'openssl/' src/csum.c
only_in 'syslog\.h' src/log.c

# layer of each module; a module may include only its layer or lower
declare -A layer=([util]=0 [log]=0 [format]=1 [descriptor]=1 [io_aio]=2
	[io]=2 [file]=2 [delta]=3 [image]=3 [map]=3 [stack]=4 [writeback]=5 [check]=3
	[fuse_fe]=6 [fuse_uring]=6 [control]=5 [serve]=6)
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
for f in src/control.c src/control.h; do
	[ -e "$f" ] || continue
	while read -r inc; do
		case $inc in
		util | log | control) ;;
		*) echo "layering: $f includes $inc.h (control is transport only: util.h and log.h)"; fail=1 ;;
		esac
	done < <(sed -n 's/^#include "\([a-z_]*\)\.h"/\1/p' "$f")
done
[ $fail -eq 0 ] && echo "layering: ok"
exit $fail
