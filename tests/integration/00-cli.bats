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
	for c in init info check snapshot snapshot-list snapshot-switch \
		snapshot-delete snapshot-merge status events; do
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

@test "--timeout takes whole seconds (0: no limit); anything else is a usage error" {
	local g='{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}'
	for c in status snapshot snapshot-delete snapshot-merge events; do
		run_ok ploopctl "$c" --help
		[[ "$output" == *"--timeout <s>"* ]]
	done
	for t in x 1.5 -1 86401 ""; do
		run -2 ploopctl status --timeout "$t" "$BATS_TEST_TMPDIR"
		[[ "$output" == *"invalid timeout '$t'"* ]]
		run -2 ploopctl snapshot --timeout "$t" "$BATS_TEST_TMPDIR"
		run -2 ploopctl snapshot-delete --timeout "$t" "$BATS_TEST_TMPDIR" "$g"
		run -2 ploopctl snapshot-merge --timeout "$t" "$BATS_TEST_TMPDIR"
		run -2 ploopctl events --timeout "$t" "$BATS_TEST_TMPDIR"
	done
	# an image that is not mounted does not need the daemon
	run_ok ploopctl init -s 64M "$BATS_TEST_TMPDIR/img"
	run_ok ploopctl status --timeout 0 "$BATS_TEST_TMPDIR/img"
	run_ok ploopctl status -t 1 --json "$BATS_TEST_TMPDIR/img"
	run_ok ploopctl snapshot -t 1 "$BATS_TEST_TMPDIR/img"
	run_ok ploopctl snapshot-merge --timeout 1 "$BATS_TEST_TMPDIR/img"
	# events needs a daemon, with or without a limit
	run -1 ploopctl events --timeout 0 "$BATS_TEST_TMPDIR/img"
	[[ "$output" == *"not mounted"* ]]
}

@test "a missing image directory: one error line from the commands that may go to the daemon" {
	local nope=$BATS_TEST_TMPDIR/nope g='{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}'
	for args in "status $nope" "snapshot $nope" "snapshot-delete $nope $g" \
		"snapshot-merge $nope" "events $nope"; do
		read -ra a <<<"$args"
		run -1 ploopctl "${a[@]}"
		[ "${#lines[@]}" -eq 1 ]
		[[ "$output" == "ploopctl: $nope: "* ]]
	done
}

@test "option values are checked: one line, exit 2, and too many operands are refused" {
	d=$BATS_TEST_TMPDIR/none
	run -2 ploopctl snapshot -u not-a-guid "$d"
	[ "$output" = "ploopctl: invalid GUID 'not-a-guid'" ]
	run -2 ploopctl events -n 0 "$d"
	[ "$output" = "ploopctl: invalid count '0'" ]
	run -2 ploopctl events -a 12x "$d"
	[ "$output" = "ploopctl: invalid sequence number '12x'" ]
	run -2 ploopctl check --force "$d"
	[[ "${lines[0]}" == "usage: ploopctl check "* ]]
	for c in info check snapshot snapshot-list status events snapshot-delete; do
		run -2 ploopctl "$c" "$d" "$d" "$d"
		[[ "$output" == *"usage: ploopctl $c "* ]] || { echo "$c: $output" >&2; false; }
	done
	run -2 ploopctl snapshot-merge "$d" a b
	run -2 ploopctl snapshot-switch "$d"
	run -2 ploopctl init -c 64K "$d"
	[[ "${lines[0]}" == "usage: ploopctl init "* ]]
}

@test "make uninstall removes everything make install put there" {
	local root b
	root=$(realpath "$BATS_TEST_DIRNAME/../..")
	b=$(basename "$(dirname "$(realpath "$PLOOPCTL")")")
	# -o all: the programs under test, not a rebuild
	run_ok make -s -C "$root" VARIANT="$b" -o all install DESTDIR="$BATS_TEST_TMPDIR/root"
	[ -x "$BATS_TEST_TMPDIR/root/usr/local/sbin/ploopctl" ]
	[ -f "$BATS_TEST_TMPDIR/root/usr/local/share/man/man8/ploopfs.8" ]
	run_ok make -s -C "$root" VARIANT="$b" uninstall DESTDIR="$BATS_TEST_TMPDIR/root"
	run find "$BATS_TEST_TMPDIR/root" -type f
	[ -z "$output" ]
}

@test "every command takes --timeout, and refuses a bad value (exit 2)" {
	run_ok ploopctl init -s 16M "$BATS_TEST_TMPDIR/img"
	for c in info check snapshot-list status; do
		run_ok ploopctl "$c" --timeout 5 "$BATS_TEST_TMPDIR/img"
		run -2 ploopctl "$c" --timeout -1 "$BATS_TEST_TMPDIR/img"
		[[ $output == *"invalid timeout '-1'"* ]]
		run -2 ploopctl "$c" --timeout x "$BATS_TEST_TMPDIR/img"
	done
	run_ok ploopctl --help
	[[ $output == *"Every command takes --timeout"* ]]
}

@test "option errors: one line that starts with 'ploopctl <command>:', exit 2" {
	local c
	for c in init info check snapshot snapshot-list snapshot-switch \
		snapshot-delete snapshot-merge status events mount umount; do
		run --separate-stderr ploopctl "$c" --bogus x
		[ "$status" -eq 2 ]
		[ "$(wc -l <<<"$stderr")" -eq 1 ]
		[[ $stderr == "ploopctl $c: unknown option '--bogus' (see ploopctl $c --help)" ]]
		run --separate-stderr ploopctl "$c" --timeout
		[ "$status" -eq 2 ]
		[[ $stderr == "ploopctl $c: missing the argument of option '--timeout'"* ]]
		run --separate-stderr ploopctl "$c" --timeout x y
		[ "$status" -eq 2 ]
		[[ $stderr == "ploopctl $c: invalid timeout 'x'"* ]]
	done
	run --separate-stderr ploopctl info --json=1 x
	[ "$status" -eq 2 ]
	[[ $stderr == "ploopctl info: option '--json' takes no argument"* ]]
}
