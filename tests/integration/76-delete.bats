#!/usr/bin/env bats
# snapshot-delete of a snapshot whose view is open is refused (exit 5,
# one line) unless --force, also through ploop-rotate; --resume completes
# an interrupted delete, offline and online, and does nothing when none
# was interrupted; a daemon killed during a delete: ploopctl reports what
# the descriptor says.

load helpers

setup() {
	pf_dirs
	ROTATE=$BATS_TEST_DIRNAME/../../scripts/ploop-rotate
	pf_ploopctl_abs
}

teardown() {
	pf_teardown
}

# view GUID: the path of the snapshot's view
view() {
	local g=${1//[\{\}]/}
	echo "$M/snapshots/$g"
}

# temporaries DIR: the snapshots marked temporary, as a Python list
temporaries() {
	local out
	out=$(ploopctl snapshot-list --json "$1") || return 1
	json_get "$out" '[s["guid"] for s in j["snapshots"] if s["temporary"]]'
}

@test "a snapshot whose view is open is not deleted: exit 5, one line; --force deletes it; the rotation stops" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 8
	run_ok ploopctl snapshot "$D"
	g1=$output
	write_random "$M/disk" 4 8
	run_ok ploopctl snapshot "$D"
	g2=$output
	write_random "$M/disk" 8 8
	want1=$(disk_sum "$(view "$g1")")
	c=$(chain "$D")

	# a backup reads g1 through a read-only loop device
	rdev=$(timeout 60 losetup -r -f --show "$(view "$g1")")
	run -5 ploopctl snapshot-delete "$D" "$g1"
	[ "$output" = "ploopctl: $D: snapshot $g1 is in use: its view is open; --force deletes it anyway" ]
	[ "$(chain "$D")" = "$c" ]
	[ "$(disk_sum "$rdev")" = "$want1" ]
	# snapshot-merge of its child refuses it the same way
	run -5 ploopctl snapshot-merge "$D" "$g2"
	[ "$(chain "$D")" = "$c" ]
	# ploop-rotate: a busy view stops the rotation, exit 5, not forced
	run -5 timeout 300 "$ROTATE" --quiet --keep 1 "$D"
	echo "$output"
	[ "${#lines[@]}" -eq 1 ]
	[[ "$output" == "ploop-rotate: $D: ploopctl snapshot-delete failed (exit 5): "*"is in use: its view is open"* ]]
	[ "$(chain "$D" | head -n 2)" = "$c" ]
	loop_detach "$rdev" "$(view "$g1")"
	# closed: deleted (merged down, its child takes its file)
	run_ok ploopctl snapshot-delete "$D" "$g1"
	run ! grep -qxF "$g1" <<<"$(chain "$D")"

	# --force: deleted while open (merged up into the top); the view's
	# reads fail from then on
	want=$(disk_sum "$M/disk")
	rdev=$(timeout 60 losetup -r -f --show "$(view "$g2")")
	run -5 ploopctl snapshot-delete "$D" "$g2"
	run_ok ploopctl snapshot-delete --force "$D" "$g2"
	[[ "$output" == "deleted snapshot $g2: "* ]]
	run ! grep -qxF "$g2" <<<"$(chain "$D")"
	run ! timeout 60 dd if="$rdev" of=/dev/null bs=1M count=1 iflag=direct status=none
	loop_detach "$rdev" "$(view "$g2")"
	[ "$(disk_sum "$M/disk")" = "$want" ]
	pf_umount "$M"
	image_ok "$D"
}

@test "--resume with no interrupted delete changes nothing, unmounted and mounted" {
	run_ok ploopctl init -s 64M "$D"
	run_ok ploopctl snapshot "$D"
	run_ok ploopctl snapshot "$D"
	before=$(tree_sum "$D")
	run_ok ploopctl snapshot-delete --resume "$D"
	[ "$output" = "nothing to resume: no snapshot delete was interrupted" ]
	[ "$(tree_sum "$D")" = "$before" ]
	pf_mount "$D" "$M"
	c=$(chain "$D")
	run_ok ploopctl snapshot-delete --resume "$D"
	[ "$output" = "nothing to resume: no snapshot delete was interrupted" ]
	[ "$(chain "$D")" = "$c" ]
	pf_umount "$M"
	[ "$(tree_sum "$D")" = "$before" ]
	# usage: --resume takes the directory only, and no --force
	run -2 ploopctl snapshot-delete --resume "$D" "$(chain "$D" | head -n 1)"
	run -2 ploopctl snapshot-delete --resume --force "$D"
	run -2 ploopctl snapshot-delete "$D"
	run_ok ploopctl snapshot-delete --help
	[[ "$output" == *--resume* ]] && [[ "$output" == *--force* ]]
	[ "$(tree_sum "$D")" = "$before" ]
}

@test "--resume completes an interrupted delete, unmounted and mounted" {
	run_ok ploopctl init -s 64M "$D"
	pf_mount "$D" "$M"
	for i in 1 2 3; do
		write_random "$M/disk" $((i * 4)) 8
		run_ok ploopctl snapshot "$D"
	done
	want=$(disk_sum "$M/disk")
	pf_umount "$M"
	mapfile -t c < <(chain "$D")
	[ "${#c[@]}" -eq 3 ]

	mark_temporary "$D" "${c[0]}"
	run_ok ploopctl snapshot-delete --resume "$D"
	echo "$output"
	[ "${lines[0]}" = "completing the interrupted delete of snapshot ${c[0]}" ]
	[[ "${lines[1]}" == "deleted snapshot ${c[0]}: "* ]]
	[ "$(temporaries "$D")" = "[]" ]
	[ "$(chain "$D")" = "$(printf '%s\n' "${c[1]}" "${c[2]}")" ]
	image_ok "$D"

	mark_temporary "$D" "${c[1]}"
	pf_mount "$D" "$M"
	[ "$(disk_sum "$M/disk")" = "$want" ]
	run_ok ploopctl snapshot-delete --resume "$D"
	echo "$output"
	[ "${lines[0]}" = "completing the interrupted delete of snapshot ${c[1]}" ]
	[[ "${lines[1]}" == "deleted snapshot ${c[1]}: "* ]]
	[ "$(temporaries "$D")" = "[]" ]
	[ "$(chain "$D")" = "${c[2]}" ]
	[ "$(disk_sum "$M/disk")" = "$want" ]
	run_ok ploopctl snapshot-delete --resume "$D"
	[ "$output" = "nothing to resume: no snapshot delete was interrupted" ]
	pf_umount "$M"
	image_ok "$D"
}

# killed_delete GUID WHEN: delete GUID through the daemon of $D and kill
# -9 the daemon: WHEN "marked" once the descriptor marks it temporary,
# else after WHEN seconds; ploopctl's status and output in $kst, $kout
killed_delete() {
	local del
	timeout 120 "$PLOOPCTL" snapshot-delete "$D" "$1" >"$T/del.out" 2>&1 3>&- &
	del=$!
	if [ "$2" = marked ]; then
		until grep -q '<Temporary' "$D/DiskDescriptor.xml"; do
			if ! kill -0 "$del" 2>/dev/null; then
				echo "the delete ended before it could be interrupted: $(cat "$T/del.out")" >&2
				return 1
			fi
			sleep 0.005
		done
	else
		sleep "$2"
	fi
	pf_kill9 "$M"
	kst=0
	wait "$del" || kst=$?
	kout=$(cat "$T/del.out")
	echo "ploopctl exit $kst: $kout"
}

# outcome_matches GUID: ploopctl's report ($kst, $kout) of the killed
# delete of GUID says what the descriptor says
outcome_matches() {
	local out shot
	out=$(ploopctl snapshot-list --json "$D") || return 1
	shot=$(json_get "$out" '[s["temporary"] for s in j["snapshots"] if s["guid"] == "'"$1"'"]')
	case $shot in
	"[]")	# gone: deleted
		[ "$kst" -eq 0 ] && [[ "$kout" == "deleted snapshot $1 "* ]] ;;
	"[True]")
		[ "$kst" -eq 1 ] &&
			[ "$kout" = "ploopctl: $D: the delete of snapshot $1 was interrupted (the daemon closed the connection before the end of its reply): run ploopctl snapshot-delete --resume $D" ] ;;
	"[False]")
		[ "$kst" -eq 1 ] &&
			[ "$kout" = "ploopctl: $D: the daemon closed the connection before the end of its reply; snapshot $1 was not deleted" ] ;;
	*) return 1 ;;
	esac
}

@test "kill -9 of the daemon during a long delete: ploopctl reports what the descriptor says; --resume completes it" {
	run_ok ploopctl init -s 1G "$D"
	pf_mount "$D" "$M"
	write_random "$M/disk" 0 300
	run_ok ploopctl snapshot "$D"
	g1=$output
	# the child of g1 holds 300 clusters: merging it down takes a while
	write_random "$M/disk" 300 300
	run_ok ploopctl snapshot "$D"
	g2=$output
	write_random "$M/disk" 600 8
	want=$(disk_sum "$M/disk")

	killed_delete "$g1" marked
	[ "$(temporaries "$D")" = "['$g1']" ]
	outcome_matches "$g1"
	[ "$kst" -eq 1 ]
	# (with the log lines of the recovery of the killed daemon's image)
	run_ok ploopctl snapshot-delete --resume "$D"
	echo "$output"
	grep -qxF "completing the interrupted delete of snapshot $g1" <<<"$output"
	grep -q "^deleted snapshot $g1: " <<<"$output"
	[ "$(temporaries "$D")" = "[]" ]
	[ "$(chain "$D")" = "$g2" ]
	image_ok "$D"

	# an up merge (no temporary mark) killed at some point: deleted or
	# untouched, and said so
	pf_mount "$D" "$M"
	[ "$(disk_sum "$M/disk")" = "$want" ]
	write_random "$M/disk" 0 300
	killed_delete "$g2" 0.3
	outcome_matches "$g2"
	run_ok ploopctl snapshot-delete --resume "$D"
	[ "$output" = "nothing to resume: no snapshot delete was interrupted" ]
	run ploopctl check "$D"
	[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || [ "$status" -eq 6 ]
}
