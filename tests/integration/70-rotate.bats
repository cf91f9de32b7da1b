#!/usr/bin/env bats
# scripts/ploop-rotate: keep the N newest snapshots of an image, mounted
# or not; --dry-run changes nothing; one rotation per image at a time
# (flock, exit 5 after --lock-timeout); one error line naming the image
# and ploopctl's exit status passed through (also 8, a daemon that does
# not answer within --timeout); an interrupted delete (a shot marked
# <Temporary/>) is completed first.

load helpers

setup() {
	pf_dirs
	ROTATE=$BATS_TEST_DIRNAME/../../scripts/ploop-rotate
	pf_ploopctl_abs	# the script runs the ploopctl under test
	stopped=
}

teardown() {
	# a daemon the test stopped cannot stop cleanly
	[ -z "$stopped" ] || kill -CONT "$stopped" 2>/dev/null || true
	pf_teardown
}

# ploop-rotate under a timeout, like ploopctl
rotate() {
	timeout 300 "$ROTATE" "$@"
}

# created OUTPUT: the GUIDs a rotation's log says it created
created() {
	sed -n 's/.*: created snapshot \({.*}\)$/\1/p' <<<"$1"
}

# qemu_write DIR BYTE OFF LEN: qemu-io writes a pattern into the top delta
# of an unmounted image
qemu_write() {
	local top
	top=$(top_delta "$1") || return 1
	run_ok timeout 60 qemu-io -f parallels -c "write -P $2 $3 $4" "$top"
}

# chain_sum DIR: sha256 of the disk as qemu reads the unmounted chain
# (qemu-img convert of the parallels deltas, top first, as backing files)
chain_sum() {
	local f pre="" opts=""
	local -a files
	mapfile -t files < <(deltas "$1")
	[ "${#files[@]}" -gt 0 ] || return 1
	for ((f = ${#files[@]} - 1; f >= 0; f--)); do
		opts+="${opts:+,}${pre}driver=parallels,${pre}file.filename=${files[f]}"
		pre+=backing.
	done
	rm -f "$T/chain.raw"
	timeout 120 qemu-img convert --image-opts "$opts" -O raw "$T/chain.raw" || return 1
	sha256sum <"$T/chain.raw" | cut -d' ' -f1
	rm -f "$T/chain.raw"
}

# expect_one_error STATUS TEXT: the last run exited STATUS with exactly one
# line that names the image argument and holds TEXT
expect_one_error() {
	if [ "$status" -ne "$1" ] || [ "${#lines[@]}" -ne 1 ] ||
		[[ "$output" != *"$2"* ]]; then
		echo "want exit $1 and one line with '$2'; got $status:" >&2
		echo "$output" >&2
		return 1
	fi
}

# hold_lock FILE SECONDS: hold an exclusive flock on FILE for SECONDS in a
# background process; returns once the lock is held, its pid in $holder
hold_lock() {
	rm -f "$T/held"
	timeout 120 python3 -c '
import fcntl, sys, time
f = open(sys.argv[1], "a")
fcntl.flock(f, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
time.sleep(float(sys.argv[3]))
' "$1" "$T/held" "$2" 3>&- &
	holder=$!
	local deadline=$((SECONDS + 20))
	until [ -e "$T/held" ]; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			echo "the lock holder did not take $1 within 20 s" >&2
			return 1
		fi
		sleep 0.05
	done
}

@test "ploop-rotate --help and usage errors (exit 2)" {
	run_ok rotate --help
	[[ "$output" == *"usage: ploop-rotate"* ]]
	[[ "$output" == *--keep* ]] && [[ "$output" == *--dry-run* ]]
	[[ "$output" == *--lock-timeout* ]] && [[ "$output" == *--quiet* ]]
	run_ok ploopctl init -s 64M "$D"
	before=$(tree_sum "$D")
	run -2 rotate
	run -2 rotate --keep 0 "$D"
	[[ "$output" == *"invalid --keep '0'"* ]]
	run -2 rotate --keep x "$D"
	run -2 rotate --keep
	run -2 rotate --lock-timeout -1 "$D"
	run -2 rotate --timeout 1.5 "$D"
	[[ "$output" == *"invalid --timeout '1.5'"* ]]
	run -2 rotate --timeout
	run -2 rotate --bogus "$D"
	run -2 rotate "$D" "$D"
	[ "$(tree_sum "$D")" = "$before" ]
}

@test "keep N on an unmounted image: the N newest stay, the disk reads the same" {
	run_ok ploopctl init -s 64M "$D"
	local -a made=()
	for i in 1 2 3 4 5; do
		# new data in the top, some over older levels' clusters
		qemu_write "$D" $((0x10 + i)) $((i * 3))M 4M
		want=$(chain_sum "$D")
		run_ok rotate --keep 2 "$D"
		echo "$output"
		made+=("$(created "$output")")
		[ "$(n_snapshots "$D")" -eq "$((i < 2 ? i : 2))" ]
		# the survivors are the newest ones, oldest first
		[ "$(chain "$D")" = "$(printf '%s\n' "${made[@]}" | tail -n 2)" ]
		# one log line per action: a create and the deletes
		[ "${#lines[@]}" -eq $((i > 2 ? 2 : 1)) ]
		[[ "${lines[0]}" == "$D: created snapshot {"* ]]
		if [ "$i" -gt 2 ]; then
			[ "${lines[1]}" = "$D: deleted snapshot ${made[i - 3]}" ]
		fi
		[ "$(chain_sum "$D")" = "$want" ]
	done
	# --keep 1 collapses to one snapshot; --quiet prints nothing
	run_ok rotate --quiet --keep 1 "$D"
	[ -z "$output" ]
	[ "$(n_snapshots "$D")" -eq 1 ]
	# the merged deltas are gone: base, one snapshot's child (the top)
	[ "$(delta_files "$D" | wc -l)" -eq 2 ]
	[ "$(chain_sum "$D")" = "$want" ]
	image_ok "$D"
	# ploopfs serves the same
	pf_mount "$D" "$M"
	[ "$(disk_sum "$M/disk")" = "$want" ]
	pf_umount "$M"
}

@test "keep N on a mounted image: the N newest stay, snapshot files follow, the disk reads the same" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	local -a made=()
	for i in 1 2 3 4 5; do
		write_random "$M/disk" $((i * 5)) 6
		want=$(disk_sum "$M/disk")
		run_ok rotate --keep 2 "$D"
		echo "$output"
		made+=("$(created "$output")")
		[ "$(n_snapshots "$D")" -eq "$((i < 2 ? i : 2))" ]
		[ "$(chain "$D")" = "$(printf '%s\n' "${made[@]}" | tail -n 2)" ]
		[ "$(disk_sum "$M/disk")" = "$want" ]
		# MNT/snapshots holds exactly the chain's snapshots
		[ "$(timeout 10 ls "$M/snapshots" | sort)" = \
			"$(chain "$D" | tr -d '{}' | sort)" ]
	done
	run_ok ploopctl status --json "$D"
	[ "$(json_get "$output" 'len(j["deltas"])')" -eq 3 ]
	[ "$(json_get "$output" 'j["mounted"]')" = True ]
	pf_umount "$M"
	image_ok "$D"
	pf_mount "$D" "$M"
	[ "$(disk_sum "$M/disk")" = "$want" ]
	pf_umount "$M"
}

@test "--dry-run says what it would do and changes no byte, mounted or not" {
	run_ok ploopctl init -s 64M "$D"
	run_ok rotate --quiet --keep 10 "$D"
	run_ok rotate --quiet --keep 10 "$D"
	run_ok rotate --quiet --keep 10 "$D"
	mapfile -t c < <(chain "$D")
	[ "${#c[@]}" -eq 3 ]
	before=$(tree_sum "$D")
	run_ok rotate --dry-run --keep 2 "$D"
	echo "$output"
	[ "${#lines[@]}" -eq 3 ]
	[ "${lines[0]}" = "$D: would create snapshot" ]
	[ "${lines[1]}" = "$D: would delete snapshot ${c[0]}" ]
	[ "${lines[2]}" = "$D: would delete snapshot ${c[1]}" ]
	[ "$(tree_sum "$D")" = "$before" ]
	run_ok rotate --dry-run --keep 5 "$D"
	[ "$output" = "$D: would create snapshot" ]
	[ "$(tree_sum "$D")" = "$before" ]
	# with no lock file yet, a dry run does not create one
	rm "$D/.ploop-rotate.lock"
	before=$(tree_sum "$D")
	run_ok rotate -n --keep 1 "$D"
	[ "${#lines[@]}" -eq 4 ]
	[ "$(tree_sum "$D")" = "$before" ]
	[ ! -e "$D/.ploop-rotate.lock" ]

	pf_mount "$D" "$M"
	write_random "$M/disk" 1 2
	sum=$(disk_sum "$M/disk")
	list=$(ploopctl snapshot-list --json "$D")
	before=$(tree_sum "$D")
	run_ok rotate --dry-run --keep 1 "$D"
	[ "${#lines[@]}" -eq 4 ]
	[ "${lines[3]}" = "$D: would delete snapshot ${c[2]}" ]
	[ "$(tree_sum "$D")" = "$before" ]
	[ "$(ploopctl snapshot-list --json "$D")" = "$list" ]
	[ "$(disk_sum "$M/disk")" = "$sum" ]
	[ "$(timeout 10 ls "$M/snapshots" | wc -l)" -eq 3 ]
	pf_umount "$M"
	image_ok "$D"
}

@test "the lock is held by another process: exit 5 after --lock-timeout, nothing changed" {
	run_ok ploopctl init -s 64M "$D"
	run_ok rotate --quiet "$D"
	hold_lock "$D/.ploop-rotate.lock" 60
	before=$(tree_sum "$D")
	t0=$(date +%s%N)
	run -5 rotate --lock-timeout 2 "$D"
	ms=$((($(date +%s%N) - t0) / 1000000))
	echo "# gave up after $ms ms (--lock-timeout 2)" >&3
	expect_one_error 5 "$D"
	[[ "$output" == *".ploop-rotate.lock"* ]]
	[ "$ms" -ge 1900 ] && [ "$ms" -lt 6000 ]
	# --lock-timeout 0: at once
	t0=$(date +%s%N)
	run -5 rotate --lock-timeout 0 "$D"
	ms=$((($(date +%s%N) - t0) / 1000000))
	expect_one_error 5 "$D"
	[ "$ms" -lt 2000 ]
	# a dry run waits for the lock as well
	run -5 rotate --dry-run --lock-timeout 1 "$D"
	expect_one_error 5 "$D"
	[ "$(tree_sum "$D")" = "$before" ]
	[ "$(n_snapshots "$D")" -eq 1 ]
	kill "$holder"
	wait "$holder" || true

	# a rotation that waits gets the lock once the holder lets go
	hold_lock "$D/.ploop-rotate.lock" 2
	run_ok rotate --lock-timeout 30 "$D"
	wait "$holder" || true
	[ "$(n_snapshots "$D")" -eq 2 ]

	# two rotations at once: the second waits for the first
	timeout 120 "$ROTATE" --keep 2 "$D" >"$T/r1.out" 2>&1 3>&- &
	p1=$!
	timeout 120 "$ROTATE" --keep 2 "$D" >"$T/r2.out" 2>&1 3>&- &
	p2=$!
	wait "$p1" || { cat "$T/r1.out"; false; }
	wait "$p2" || { cat "$T/r2.out"; false; }
	[ "$(cat "$T/r1.out" "$T/r2.out" | grep -c ': created snapshot')" -eq 2 ]
	[ "$(cat "$T/r1.out" "$T/r2.out" | grep -c ': deleted snapshot')" -eq 2 ]
	[ "$(n_snapshots "$D")" -eq 2 ]

	# the same while mounted
	pf_mount "$D" "$M"
	hold_lock "$D/.ploop-rotate.lock" 60
	run -5 rotate --lock-timeout 1 "$D"
	expect_one_error 5 "$D"
	[ "$(n_snapshots "$D")" -eq 2 ]
	kill "$holder"
	wait "$holder" || true
	run_ok rotate --lock-timeout 1 "$D"
	[ "$(n_snapshots "$D")" -eq 3 ]
	pf_umount "$M"
	image_ok "$D"
}

@test "bad directories and failing ploopctl: one line naming the image, ploopctl's exit status" {
	run ! rotate "$T/nonexistent"
	expect_one_error 1 "$T/nonexistent"
	: >"$T/plainfile"
	run ! rotate "$T/plainfile"
	expect_one_error 1 "$T/plainfile"
	mkdir "$T/empty"
	run ! rotate "$T/empty"
	expect_one_error 1 "$T/empty"
	[ -z "$(ls -A "$T/empty")" ]
	# a descriptor that is not XML: ploopctl says corrupt (4)
	mkdir "$T/garbage"
	echo 'not xml <' >"$T/garbage/DiskDescriptor.xml"
	run ! rotate "$T/garbage"
	expect_one_error 4 "$T/garbage"
	# a descriptor naming a missing delta: ploopctl fails (1)
	run_ok ploopctl init -s 64M "$T/nodelta"
	rm "$T/nodelta/root.hds"
	run ! rotate "$T/nodelta"
	echo "$output"
	[ "$status" -ne 0 ] && [ "${#lines[@]}" -eq 1 ] && [[ "$output" == *"$T/nodelta"* ]]
	# the in-use flag is set (not closed cleanly): ploopctl says 3
	run_ok ploopctl init -s 64M "$D"
	poke "$D/root.hds" 44 596e6f74
	before=$(tree_sum "$D")
	run ! rotate "$D"
	expect_one_error 3 "$D"
	[[ "$output" == *"not closed cleanly"* ]]
	# only the lock file was added
	rm "$D/.ploop-rotate.lock"
	[ "$(tree_sum "$D")" = "$before" ]
	# the oldest snapshot has two children (a side branch left by
	# snapshot-switch): the snapshot is taken, its delete fails (1)
	run_ok ploopctl init -s 64M "$T/branch"
	run_ok ploopctl snapshot "$T/branch"
	g1=$output
	run_ok ploopctl snapshot "$T/branch"
	run_ok ploopctl snapshot-switch "$T/branch" "$g1"
	run --separate-stderr rotate --keep 1 "$T/branch"
	echo "$output"; echo "$stderr"
	[ "$status" -eq 1 ]
	[ "${#lines[@]}" -eq 1 ] && [[ "${lines[0]}" == "$T/branch: created snapshot {"* ]]
	[ "${#stderr_lines[@]}" -eq 1 ]
	[[ "$stderr" == "ploop-rotate: $T/branch: "*"more than one child"* ]]
	# an image that is busy (a daemon starting, another command): 5
	poke "$D/root.hds" 44 00000000
	run_ok rotate --quiet "$D"
	timeout 60 flock -x "$D" sleep 3 3>&- &
	sleep 0.5
	run ! rotate "$D"
	expect_one_error 5 "$D"
	[[ "$output" == *busy* ]]
	wait
}

@test "an interrupted delete (shot marked Temporary) is completed first, unmounted and mounted" {
	run_ok ploopctl init -s 64M "$D"
	for i in 1 2 3; do
		qemu_write "$D" $((0x20 + i)) $((i * 2))M 3M
		run_ok rotate --quiet --keep 5 "$D"
	done
	want=$(chain_sum "$D")
	mapfile -t c < <(chain "$D")
	[ "${#c[@]}" -eq 3 ]
	mark_temporary "$D" "${c[0]}"
	run_ok ploopctl snapshot-list --json "$D"
	[ "$(json_get "$output" '[s["guid"] for s in j["snapshots"] if s["temporary"]]')" = "['${c[0]}']" ]
	# a dry run says so and changes nothing
	before=$(tree_sum "$D")
	run_ok rotate --dry-run --keep 1 "$D"
	echo "$output"
	[ "${lines[0]}" = "$D: would complete the interrupted delete of snapshot ${c[0]}" ]
	[ "${lines[1]}" = "$D: would create snapshot" ]
	[ "${lines[2]}" = "$D: would delete snapshot ${c[1]}" ]
	[ "${lines[3]}" = "$D: would delete snapshot ${c[2]}" ]
	[ "${#lines[@]}" -eq 4 ]
	[ "$(tree_sum "$D")" = "$before" ]

	run_ok rotate --keep 5 "$D"
	echo "$output"
	[ "${lines[0]}" = "$D: completed the interrupted delete of snapshot ${c[0]}" ]
	[[ "${lines[1]}" == "$D: created snapshot {"* ]]
	[ "${#lines[@]}" -eq 2 ]
	run_ok ploopctl snapshot-list --json "$D"
	[ "$(json_get "$output" 'sum(s["temporary"] for s in j["snapshots"])')" -eq 0 ]
	mapfile -t c2 < <(chain "$D")
	[ "${#c2[@]}" -eq 3 ]
	[ "${c2[0]}" = "${c[1]}" ] && [ "${c2[1]}" = "${c[2]}" ]
	image_ok "$D"
	[ "$(chain_sum "$D")" = "$want" ]

	# mounted: the daemon opens the image with the shot being deleted,
	# and the rotation completes it through the daemon
	mark_temporary "$D" "${c2[1]}"
	pf_mount "$D" "$M"
	[ "$(disk_sum "$M/disk")" = "$want" ]
	run_ok rotate --keep 2 "$D"
	echo "$output"
	[ "${lines[0]}" = "$D: completed the interrupted delete of snapshot ${c2[1]}" ]
	[[ "${lines[1]}" == "$D: created snapshot {"* ]]
	[ "${lines[2]}" = "$D: deleted snapshot ${c2[0]}" ]
	[ "${#lines[@]}" -eq 3 ]
	[ "$(n_snapshots "$D")" -eq 2 ]
	run_ok ploopctl snapshot-list --json "$D"
	[ "$(json_get "$output" 'sum(s["temporary"] for s in j["snapshots"])')" -eq 0 ]
	[ "$(disk_sum "$M/disk")" = "$want" ]
	[ "$(timeout 10 ls "$M/snapshots" | sort)" = "$(chain "$D" | tr -d '{}' | sort)" ]
	pf_umount "$M"
	image_ok "$D"
	[ "$(chain_sum "$D")" = "$want" ]
}

# interrupt_delete DIR MNT N: delete the Nth oldest snapshot (0 = the
# oldest) through the daemon and kill -9 the daemon once the descriptor
# marks the snapshot temporary, in the middle of its merge; the snapshot's
# GUID in $interrupted
interrupt_delete() {
	local del
	local -a c
	mapfile -t c < <(chain "$1")
	interrupted=${c[$3]}
	timeout 60 "$PLOOPCTL" snapshot-delete "$1" "$interrupted" >"$T/del.out" 2>&1 3>&- &
	del=$!
	until grep -q '<Temporary' "$1/DiskDescriptor.xml"; do
		if ! kill -0 "$del" 2>/dev/null; then
			echo "the delete ended before it could be interrupted: $(cat "$T/del.out")" >&2
			return 1
		fi
		sleep 0.005
	done
	pf_kill9 "$2"
	wait "$del" || true
	run_ok ploopctl snapshot-list --json "$1"
	if [ "$(json_get "$output" '[s["guid"] for s in j["snapshots"] if s["temporary"]]')" != "['$interrupted']" ]; then
		echo "after kill -9 the delete of $interrupted is not pending: $output" >&2
		return 1
	fi
}

@test "a delete interrupted by kill -9 of the daemon is completed by the next rotation" {
	run_ok ploopctl init -s 256M "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 128
	run_ok ploopctl snapshot "$D"
	# the child of the base holds 128 clusters: a merge down takes a while
	write_random "$M/disk" 0 128
	run_ok ploopctl snapshot "$D"
	write_random "$M/disk" 200 8
	want=$(disk_sum "$M/disk")
	interrupt_delete "$D" "$M" 0
	run ploopctl check "$D"
	echo "$output"
	[ "$status" -eq 3 ]

	# unmounted: the rotation completes the delete first
	run_ok rotate --keep 7 "$D"
	echo "$output"
	[ "${lines[0]}" = "$D: completed the interrupted delete of snapshot $interrupted" ]
	[[ "${lines[1]}" == "$D: created snapshot {"* ]]
	[ "${#lines[@]}" -eq 2 ]
	[ "$(n_snapshots "$D")" -eq 2 ]
	! chain "$D" | grep -qxF "$interrupted"
	image_ok "$D"
	[ "$(chain_sum "$D")" = "$want" ]

	# mounted: the daemon recovers the image with the delete pending and
	# the rotation completes it through the daemon
	pf_mount "$D" "$M"
	write_random "$M/disk" 64 128
	run_ok ploopctl snapshot "$D"
	want=$(disk_sum "$M/disk")
	interrupt_delete "$D" "$M" 1
	pf_mount "$D" "$M"
	[ "$(disk_sum "$M/disk")" = "$want" ]
	run_ok rotate --keep 7 "$D"
	echo "$output"
	[ "${lines[0]}" = "$D: completed the interrupted delete of snapshot $interrupted" ]
	[ "${#lines[@]}" -eq 2 ]
	[ "$(n_snapshots "$D")" -eq 3 ]
	[ "$(disk_sum "$M/disk")" = "$want" ]
	[ "$(timeout 10 ls "$M/snapshots" | sort)" = "$(chain "$D" | tr -d '{}' | sort)" ]
	pf_umount "$M"
	image_ok "$D"
	[ "$(chain_sum "$D")" = "$want" ]
}

@test "a stopped daemon: exit 8 after --timeout, one line naming the image; nothing changed, the next rotation works" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 4
	run_ok rotate --quiet --keep 2 "$D"
	c=$(chain "$D")
	want=$(disk_sum "$M/disk")
	stopped=$(pf_pid "$M")
	kill -STOP "$stopped"
	t0=$(date +%s%N)
	run rotate --timeout 1 --keep 1 "$D"
	ms=$((($(date +%s%N) - t0) / 1000000))
	echo "# gave up after $ms ms: $output" >&3
	expect_one_error 8 "$D"
	[[ "$output" == "ploop-rotate: $D: ploopctl snapshot failed (exit 8): "*"did not answer within 1 s"* ]]
	[ "$ms" -ge 900 ] && [ "$ms" -lt 6000 ]
	kill -CONT "$stopped"
	stopped=
	# the snapshot whose client gave up was not taken
	[ "$(chain "$D")" = "$c" ]
	[ "$(disk_sum "$M/disk")" = "$want" ]
	# the lock went with the failed rotation
	run_ok rotate --timeout 1 --keep 1 --lock-timeout 0 "$D"
	echo "$output"
	[ "${#lines[@]}" -eq 2 ]
	[ "${lines[1]}" = "$D: deleted snapshot $c" ]
	[ "$(n_snapshots "$D")" -eq 1 ]
	[ "$(disk_sum "$M/disk")" = "$want" ]
	pf_umount "$M"
	image_ok "$D"
}
