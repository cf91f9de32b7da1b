# Shared helpers of the bats integration suite.  Load with "load helpers".
# shellcheck shell=bash
# status, output and lines are set by bats' run.
# shellcheck disable=SC2154

bats_require_minimum_version 1.5.0

: "${PLOOPCTL:=$BATS_TEST_DIRNAME/../../build/release/ploopctl}"
: "${PLOOPFS:=$BATS_TEST_DIRNAME/../../build/release/ploopfs}"

# Fail when a sanitizer reported anything in the given output.
no_sanitizer_reports() {
	if grep -qE 'AddressSanitizer|LeakSanitizer|ThreadSanitizer|runtime error:' <<<"$1"; then
		echo "sanitizer report:" >&2
		echo "$1" >&2
		return 1
	fi
}

# ploopctl under a timeout, so a hang fails the test instead of the suite.
ploopctl() {
	timeout 300 "$PLOOPCTL" "$@"
}

# Little-endian hex of a 32- or 64-bit number: le32 N, le64 N
le32() { printf '%08x' "$1" | sed 's/\(..\)\(..\)\(..\)\(..\)/\4\3\2\1/'; }
le64() {
	local h
	h=$(printf '%016x' "$1")
	echo "$(le32 "0x${h:8:8}")$(le32 "0x${h:0:8}")"
}

# poke FILE OFFSET HEX: overwrite bytes in place
poke() {
	printf '%s' "$3" | xxd -r -p | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# peek FILE OFFSET LEN: hex of the bytes
peek() {
	xxd -p -s "$2" -l "$3" "$1" | tr -d '\n'
}

# A fingerprint of every file below a directory (names, sizes, contents),
# to prove a command changed nothing.
tree_sum() {
	(cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum; \
	 find . -printf '%p %s %m\n' | sort) | sha256sum
}

# json_get JSON EXPR: evaluate a python expression on the parsed JSON "j"
json_get() {
	python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"
}

# run_ok CMD...: run and require exit 0 with no sanitizer reports
run_ok() {
	run "$@"
	if [ "$status" -ne 0 ]; then
		echo "command failed ($status): $*" >&2
		echo "$output" >&2
		return 1
	fi
	no_sanitizer_reports "$output"
}

# An image written by qemu-io: 64 MiB, 1 MiB clusters, data 0x11 in
# cluster 0 and 0x55 in cluster 5 (BAT[0]=1, BAT[5]=2, file 3 MiB).
make_qemu_image() {
	qemu-img create -q -f parallels "$1" 64M
	qemu-io -f parallels -c 'write -P 0x11 0 1M' -c 'write -P 0x55 5M 1M' "$1" >/dev/null
}
