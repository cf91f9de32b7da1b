#!/bin/bash
# Static analysis: cppcheck and clang-tidy on src/, shellcheck on the
# scripts and bats helpers, groff/man warnings on the man pages.
# usage: lint.sh [--man-only]
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
fail=0

lint_man() {
	local p out
	for p in man/*.[158]; do
		[ -e "$p" ] || continue
		out=$(groff -t -man -ww -z "$p" 2>&1)
		out+=$(MANWIDTH=80 man -l "$p" 2>&1 >/dev/null)
		if [ -n "$out" ]; then
			echo "man: $p:"
			echo "$out"
			fail=1
		fi
	done
}

if [ "${1:-}" = --man-only ]; then
	lint_man
	exit $fail
fi

read -ra pkgflags <<<"$(pkg-config --cflags libxml-2.0 uuid fuse3)"
cflags=(-Iinclude -Isrc -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -DFUSE_USE_VERSION=314
	"${pkgflags[@]}")

echo "lint: cppcheck"
cppcheck --quiet --enable=warning,style,performance,portability \
	--inline-suppr --error-exitcode=1 --std=c11 \
	--suppress=missingIncludeSystem --suppress=variableScope "${cflags[@]}" src/ tests/unit/ || fail=1
# the fuzz targets; replay.c wants the name the Makefile gives it
cppcheck --quiet --enable=warning,style,performance,portability \
	--inline-suppr --error-exitcode=1 --std=c11 \
	--suppress=missingIncludeSystem --suppress=variableScope "${cflags[@]}" \
	-DFUZZ_TARGET='"lint"' tests/fuzz/ || fail=1

echo "lint: clang-tidy"
clang-tidy --quiet src/*.c -- "${cflags[@]}" -std=gnu11 2>/dev/null |
	grep -E 'warning:|error:' && fail=1

echo "lint: shellcheck"
shellcheck -x scripts/*.sh scripts/ploop-rotate tests/bench/*.sh tests/fuzz/*.sh .ci/run || fail=1
shellcheck -s bash tests/integration/helpers.bash || fail=1

echo "lint: man pages"
lint_man

[ $fail -eq 0 ] && echo "lint: clean"
exit $fail
