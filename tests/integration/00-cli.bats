#!/usr/bin/env bats
# Command line: usage errors, help, exit codes of ploopctl(8).

load helpers

@test "no arguments is a usage error (exit 2)" {
	run -2 ploopctl
	[[ "$output" == *"usage: ploopctl"* ]]
}

@test "--help lists every command and exits 0" {
	run_ok ploopctl --help
	for c in init info check snapshot snapshot-list; do
		[[ "$output" == *"$c"* ]]
	done
}

@test "unknown command is a usage error naming it" {
	run -2 ploopctl frobnicate
	[[ "$output" == *"unknown command 'frobnicate'"* ]]
}

@test "every command answers --help with exit 0" {
	for c in init info check snapshot snapshot-list; do
		run_ok ploopctl "$c" --help
		[[ "$output" == *"usage: ploopctl $c"* ]]
	done
}

@test "unknown option and missing operands are usage errors" {
	run -2 ploopctl info --bogus x
	run -2 ploopctl info
	run -2 ploopctl check a b
	run -2 ploopctl init "$BATS_TEST_TMPDIR/x"
	run -2 ploopctl snapshot -u not-a-guid "$BATS_TEST_TMPDIR"
}

@test "init rejects bad sizes and cluster sizes with exit 2" {
	run -2 ploopctl init -s 10Q "$BATS_TEST_TMPDIR/a"
	run -2 ploopctl init -s 0 "$BATS_TEST_TMPDIR/a"
	run -2 ploopctl init -s 1000 "$BATS_TEST_TMPDIR/a"
	[[ "$output" == *"multiple of 512"* ]]
	run -2 ploopctl init -s 1G -c 3M "$BATS_TEST_TMPDIR/a"
	[[ "$output" == *"power of two"* ]]
	run -2 ploopctl init -s 1G -c 32K "$BATS_TEST_TMPDIR/a"
	run -2 ploopctl init -s 1G -c 128M "$BATS_TEST_TMPDIR/a"
	run -2 ploopctl init -s 64P -c 64K "$BATS_TEST_TMPDIR/a"
	[[ "$output" == *"more than the BAT can hold"* ]]
	[ ! -e "$BATS_TEST_TMPDIR/a" ]
}

@test "a missing image is exit 1 with the path in the message" {
	run -1 ploopctl info "$BATS_TEST_TMPDIR/nope"
	[[ "$output" == *"$BATS_TEST_TMPDIR/nope"* ]]
	run -1 ploopctl info "$BATS_TEST_TMPDIR"
	[[ "$output" == *"DiskDescriptor.xml: no such file"* ]]
}

@test "--version prints the version" {
	run_ok ploopctl --version
	[[ "$output" == "ploopctl "* ]]
}
