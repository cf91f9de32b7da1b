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
# to prove a command changed nothing.  Manifests of sealed snapshots
# (*.sum, *.sum.tmp) are left out: a mounted image's daemon writes them
# in the background at any moment; the tests of sealing look at them
# by name.
tree_sum() {
	(cd "$1" && find . -type f ! -name '*.sum' ! -name '*.sum.tmp' -print0 |
		sort -z | xargs -0 -r sha256sum; \
	 find . ! -name '*.sum' ! -name '*.sum.tmp' -printf '%p %s %m\n' |
		sort) | sha256sum
}

# delta_files DIR: the files of DIR named root.hds*, manifests left out
delta_files() {
	find "$1" -maxdepth 1 -name 'root.hds*' ! -name '*.sum' ! -name '*.sum.tmp' |
		sort
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

# ---------------------------------------------------------------------
# The ploopfs daemon.  pf_mount starts one in the foreground (-f) in the
# background of the test, one log per mount under $BATS_TEST_TMPDIR/pf-logs;
# its pid and, once it has exited, its exit status are kept in files
# under $BATS_TEST_TMPDIR/pf-state keyed by the mount point, so that the
# helpers also work from subshells.  Every test file that starts daemons
# calls pf_teardown from its teardown().

_pf_state() { echo "$BATS_TEST_TMPDIR/pf-state"; }
_pf_logs() { echo "$BATS_TEST_TMPDIR/pf-logs"; }

# The absolute path of a mount point without looking through it (a hung
# daemon would hang stat): only the parent is resolved
_pf_abs() {
	local parent
	parent=$(realpath -m -- "$(dirname -- "$1")")
	echo "${parent%/}/$(basename -- "$1")"
}

# The file-name key of a mount point: its absolute path, / -> _
_pf_key() {
	local k
	k=$(_pf_abs "$1")
	echo "${k//\//_}"
}

# pf_is_mounted MNT: something is mounted on MNT (read from
# /proc/self/mountinfo, without touching the file system)
pf_is_mounted() {
	local m
	m=$(_pf_abs "$1")
	awk -v m="$m" '{ t = $5; gsub(/\\040/, " ", t); if (t == m) f = 1 }
		END { exit !f }' /proc/self/mountinfo
}

# The disk name that ploopfs arguments select (the last -o name=), or disk
_pf_disk_name() {
	local name=disk next=0 a o
	local -a opts
	for a in "$@"; do
		if [ "$next" = 1 ]; then
			o=$a
			next=0
		elif [ "$a" = -o ]; then
			next=1
			continue
		elif [[ "$a" == -o?* ]]; then
			o=${a#-o}
		else
			continue
		fi
		IFS=, read -ra opts <<<"$o"
		for o in "${opts[@]}"; do
			[[ "$o" == name=* ]] && name=${o#name=}
		done
	done
	echo "$name"
}

# pf_logfile MNT: the log file of the latest daemon started on MNT
pf_logfile() {
	cat "$(_pf_state)/$(_pf_key "$1").log" 2>/dev/null
}

# pf_log MNT: what the latest daemon started on MNT logged
pf_log() {
	local log
	log=$(pf_logfile "$1") || return 1
	cat "$log"
}

# pf_pid MNT: the pid of the latest daemon started on MNT
pf_pid() {
	local f
	f="$(_pf_state)/$(_pf_key "$1").pid"
	[ -s "$f" ] || { echo "no ploopfs was started on $1" >&2; return 1; }
	cat "$f"
}

# Print the log of the daemon of MNT to stderr, headed by its name.
_pf_show_log() {
	local log
	log=$(pf_logfile "$1")
	echo "--- ploopfs log $log ---" >&2
	cat "$log" >&2 2>/dev/null || true
	echo "--- end of log ---" >&2
}

# pf_mount DIR MNT [ploopfs args...]: start ploopfs -f on DIR at MNT and
# wait (at most 20 s) until the disk file is there.  PF_MOUNT_OPTS (say
# "-o uring") is added to every mount's arguments; with PF_EXPECT_URING=1
# the mount must then be serving over io_uring.
pf_mount() {
	local dir=$1 mnt=$2 name key st logs log n pid deadline
	shift 2
	# shellcheck disable=SC2086 # PF_MOUNT_OPTS is a list of arguments
	set -- ${PF_MOUNT_OPTS:-} "$@"
	name=$(_pf_disk_name "$@")
	st=$(_pf_state)
	logs=$(_pf_logs)
	mkdir -p "$mnt" "$st" "$logs"
	key=$(_pf_key "$mnt")
	n=1
	while [ -e "$logs/$key.$n.log" ]; do n=$((n + 1)); done
	log="$logs/$key.$n.log"
	: >"$log"
	rm -f "$st/$key.pid" "$st/$key.status"
	echo "$log" >"$st/$key.log"
	realpath -m -- "$dir" >"$st/$key.dir"
	_pf_abs "$mnt" >"$st/$key.mnt"
	# The wrapper records the daemon's pid and, when it ends, its exit
	# status.  fd 3 is bats' own: a daemon holding it hangs bats.
	(
		"$PLOOPFS" -f "$@" "$dir" "$mnt" </dev/null >>"$log" 2>&1 &
		p=$!
		echo "$p" >"$st/$key.pid.new" && mv "$st/$key.pid.new" "$st/$key.pid"
		rc=0
		wait "$p" || rc=$?	# bats runs tests under set -e
		echo "$rc" >"$st/$key.status.new" && mv "$st/$key.status.new" "$st/$key.status"
	) </dev/null >>"$log" 2>&1 3>&- &
	deadline=$((SECONDS + 20))
	while :; do
		if [ -s "$st/$key.pid" ] && pf_is_mounted "$mnt" &&
			timeout 5 stat -- "$mnt/$name" >/dev/null 2>&1; then
			[ "${PF_EXPECT_URING:-0}" = 1 ] || return 0
			pf_transport "$dir" | grep -qx io_uring && return 0
			echo "ploopfs on $mnt does not serve over io_uring: $(pf_transport "$dir")" >&2
			return 1
		fi
		if [ -e "$st/$key.status" ]; then
			echo "ploopfs on $mnt exited with status $(cat "$st/$key.status") before the mount was ready" >&2
			_pf_show_log "$mnt"
			return 1
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			pid=$(cat "$st/$key.pid" 2>/dev/null)
			echo "ploopfs ${pid:+(pid $pid) }on $mnt: $mnt/$name did not appear within 20 s" >&2
			_pf_show_log "$mnt"
			return 1
		fi
		sleep 0.05
	done
}

# pf_transport DIR: "io_uring" or "dev", as the daemon of DIR reports it
pf_transport() {
	local out
	out=$(ploopctl status --json "$1") || return 1
	json_get "$out" 'j.get("fuse_transport", "none")'
}

# The fuse module's enable_uring parameter: pf_uring_set Y|N remembers
# the value it found (pf_uring_restore puts it back); fails if this
# kernel has no FUSE over io_uring.
PF_URING_PARAM=/sys/module/fuse/parameters/enable_uring
pf_uring_set() {
	[ -w "$PF_URING_PARAM" ] || return 1
	[ -e "$BATS_TEST_TMPDIR/uring.saved" ] ||
		cat "$PF_URING_PARAM" >"$BATS_TEST_TMPDIR/uring.saved"
	echo "$1" >"$PF_URING_PARAM"
}
pf_uring_restore() {
	if [ -e "$BATS_TEST_TMPDIR/uring.saved" ]; then
		cat "$BATS_TEST_TMPDIR/uring.saved" >"$PF_URING_PARAM"
		rm -f "$BATS_TEST_TMPDIR/uring.saved"
	fi
}

# pf_wait_exit MNT [SECONDS]: wait for the daemon of MNT to exit (default
# 60 s) and print its exit status.
pf_wait_exit() {
	local mnt=$1 t=${2:-60} pid st deadline
	pid=$(pf_pid "$mnt") || return 1
	st="$(_pf_state)/$(_pf_key "$mnt").status"
	if ! timeout "$t" tail --pid="$pid" -f /dev/null; then
		echo "ploopfs (pid $pid) on $mnt did not exit within $t s" >&2
		return 1
	fi
	# the wrapper writes the status right after the daemon is reaped
	deadline=$((SECONDS + 10))
	until [ -s "$st" ]; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			echo "no exit status recorded for ploopfs (pid $pid) on $mnt" >&2
			return 1
		fi
		sleep 0.05
	done
	cat "$st"
}

# pf_top_inuse DIR: the in-use state of the top delta of DIR as ploopctl
# info reports it ("closed" or "open")
pf_top_inuse() {
	local out
	out=$(timeout 60 "$PLOOPCTL" info --json "$1") || return 1
	python3 -c 'import json,sys; print(json.loads(sys.argv[1])["deltas"][-1]["in_use"])' "$out"
}

# pf_umount MNT: unmount, wait for the daemon, require exit status 0 and
# a closed image (in-use flag of the top delta cleared).
pf_umount() {
	local mnt=$1 status dir inuse
	if ! timeout 60 fusermount3 -u "$mnt"; then
		echo "fusermount3 -u $mnt failed" >&2
		_pf_show_log "$mnt"
		return 1
	fi
	if ! status=$(pf_wait_exit "$mnt" 60); then
		_pf_show_log "$mnt"
		return 1
	fi
	if [ "$status" != 0 ]; then
		echo "ploopfs on $mnt exited with status $status" >&2
		_pf_show_log "$mnt"
		return 1
	fi
	dir=$(cat "$(_pf_state)/$(_pf_key "$mnt").dir")
	inuse=$(pf_top_inuse "$dir") || return 1
	if [ "$inuse" != closed ]; then
		echo "after unmount the top delta of $dir is still $inuse" >&2
		_pf_show_log "$mnt"
		return 1
	fi
}

# pf_kill9 MNT: SIGKILL the daemon of MNT, wait for it, clear the dead
# mount.
pf_kill9() {
	local mnt=$1 pid
	pid=$(pf_pid "$mnt") || return 1
	kill -9 "$pid" || return 1
	pf_wait_exit "$mnt" 30 >/dev/null || return 1
	timeout 30 fusermount3 -u "$mnt" 2>/dev/null ||
		timeout 30 fusermount3 -uz "$mnt" || return 1
}

# Mount points below $BATS_TEST_TMPDIR, deepest first, as "FSTYPE TARGET"
_pf_mounts_below() {
	local top
	top=$(realpath -m -- "$BATS_TEST_TMPDIR")
	awk -v top="$top/" '{
		for (i = 7; $i != "-"; i++) ;
		t = $5; gsub(/\\040/, " ", t);
		if (index(t "/", top) == 1) print length(t), $(i + 1), t
	}' /proc/self/mountinfo | sort -rn | cut -d' ' -f2-
}

# Pids of ploopfs processes whose command line names a path below
# $BATS_TEST_TMPDIR (daemons of this test, also those mount(8) started)
_pf_daemons_below() {
	local top p cmd
	top=$(realpath -m -- "$BATS_TEST_TMPDIR")
	for p in /proc/[0-9]*; do
		cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
		case $cmd in
		*ploopfs\ *"$top/"*) echo "${p#/proc/}" ;;
		esac
	done
}

# teardown() of every test file that starts daemons: unmount what the
# test left mounted below $BATS_TEST_TMPDIR, detach its loop devices,
# stop its daemons; fail on sanitizer reports in the daemon logs and show
# the logs when the test failed.
pf_teardown() {
	local rc=0 top fstype target dev back f pid st key deadline log
	top=$(realpath -m -- "$BATS_TEST_TMPDIR")
	st=$(_pf_state)

	# 1. what is mounted on top of the disks (ext4 on a loop device)
	while read -r fstype target; do
		[ -n "$target" ] || continue
		case $fstype in fuse | fuse.*) continue ;; esac
		timeout 60 umount "$target" 2>/dev/null ||
			timeout 60 umount -l "$target" || true
	done < <(_pf_mounts_below)

	# 2. loop devices backed by files below the test directory
	while read -r dev back; do
		case $back in
		"$top"/*) timeout 60 losetup -d "$dev" || true ;;
		esac
	done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null)

	# 3. the daemons pf_mount started and their mounts
	for f in "$st"/*.pid; do
		[ -e "$f" ] || continue
		key=$(basename "$f" .pid)
		[ -e "$st/$key.status" ] && continue	# already exited
		pid=$(cat "$f")
		target=$(cat "$st/$key.mnt")
		if pf_is_mounted "$target" &&
			timeout 30 fusermount3 -u "$target" 2>/dev/null &&
			timeout 30 tail --pid="$pid" -f /dev/null; then
			continue
		fi
		echo "teardown: ploopfs (pid $pid) on $target did not exit; killing it" >&2
		kill -9 "$pid" 2>/dev/null || true
		timeout 10 tail --pid="$pid" -f /dev/null || true
	done

	# 4. FUSE mounts still there (dead daemons, mount(8) mounts)
	while read -r fstype target; do
		[ -n "$target" ] || continue
		timeout 30 fusermount3 -u "$target" 2>/dev/null ||
			timeout 30 fusermount3 -uz "$target" || true
	done < <(_pf_mounts_below)

	# 5. daemons not started by pf_mount (mount -t fuse...)
	deadline=$((SECONDS + 10))
	while [ -n "$(_pf_daemons_below)" ] && [ "$SECONDS" -lt "$deadline" ]; do
		sleep 0.1
	done
	for pid in $(_pf_daemons_below); do
		echo "teardown: killing leftover ploopfs (pid $pid)" >&2
		kill -9 "$pid" 2>/dev/null || true
	done

	# 6. sanitizer reports fail the test
	for log in "$(_pf_logs)"/*; do
		[ -f "$log" ] || continue
		if grep -qE 'AddressSanitizer|LeakSanitizer|ThreadSanitizer|runtime error:' "$log"; then
			echo "teardown: sanitizer report in $log" >&2
			rc=1
		fi
	done

	if [ "$rc" -ne 0 ] || [ -z "${BATS_TEST_COMPLETED:-}" ]; then
		for log in "$(_pf_logs)"/*; do
			[ -f "$log" ] || continue
			echo "--- $log ---" >&2
			cat "$log" >&2
		done
	fi
	return "$rc"
}

# chain DIR: the snapshots of the current chain, oldest first, one GUID a
# line (the top delta is not a snapshot); from the text of snapshot-list
# (PARENT_UUID C UUID FNAME, C = * for the top), following parent links
chain() {
	local out
	out=$(ploopctl snapshot-list "$1") || return 1
	awk 'NR > 1 {
		if ($2 == "*") { top = $3; par[$3] = $1 } else par[$2] = $1
	}
	END {
		g = par[top]
		while (g != "{00000000-0000-0000-0000-000000000000}" && n < 1000) {
			if (!(g in par)) { print "broken chain at " g; exit 1 }
			out[n++] = g
			g = par[g]
		}
		for (i = n - 1; i >= 0; i--) print out[i]
	}' <<<"$out"
}

# n_snapshots DIR: how many snapshots the current chain holds
n_snapshots() {
	local c
	c=$(chain "$1") || return 1
	if [ -z "$c" ]; then echo 0; else wc -l <<<"$c"; fi
}

# pf_dirs: the names every test that mounts uses: D the image directory,
# M the mount point, T the test's scratch directory, MiB.
# shellcheck disable=SC2034 # the tests use them
pf_dirs() {
	D=$BATS_TEST_TMPDIR/img
	M=$BATS_TEST_TMPDIR/mnt
	T=$BATS_TEST_TMPDIR
	MiB=$((1 << 20))
}

# pf_ploopctl_abs: PLOOPCTL as an absolute path, exported, for scripts
# (ploop-rotate) and helpers that run it from elsewhere.
pf_ploopctl_abs() {
	PLOOPCTL=$(realpath "$PLOOPCTL")
	export PLOOPCTL
}

# write_random FILE OFF_MIB LEN_MIB: random data into a disk (or a file),
# O_DIRECT, synced
write_random() {
	timeout 60 dd if=/dev/urandom of="$1" bs=1M seek="$2" count="$3" \
		oflag=direct conv=notrunc,fsync status=none
}

# disk_sum FILE [OFF_MIB LEN_MIB]: sha256 of a disk, or of a range of it
# read with O_DIRECT
disk_sum() {
	if [ $# -eq 3 ]; then
		timeout 120 dd if="$1" bs=1M skip="$2" count="$3" iflag=direct \
			status=none | sha256sum | cut -d' ' -f1
	else
		timeout 120 sha256sum <"$1" | cut -d' ' -f1
	fi
}

# deltas DIR: the delta files of the chain, base first, one a line
deltas() {
	local out
	out=$(ploopctl info "$1") || return 1
	awk '$1 == "file:" { print $2 }' <<<"$out"
}

# top_delta DIR: path of the top delta file
top_delta() {
	deltas "$1" | tail -n 1
}

# loop_detach DEV FILE: detach and wait until FILE has no loop device
loop_detach() {
	local deadline=$((SECONDS + 30))
	timeout 60 losetup -d "$1"
	while [ -n "$(losetup -n -j "$2")" ]; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			echo "loop device $1 still attached to $2" >&2
			return 1
		fi
		sleep 0.05
	done
}

# image_ok DIR: ploopctl check clean, qemu-img check of every delta
image_ok() {
	local f
	run_ok ploopctl check "$1"
	for f in $(delta_files "$1"); do
		run_ok timeout 120 qemu-img check -f parallels "$f"
	done
}

# mark_temporary DIR GUID: what an interrupted delete leaves: the shot
# GUID marked <Temporary/> in DiskDescriptor.xml (unmounted image)
mark_temporary() {
	python3 - "$1/DiskDescriptor.xml" "$2" <<'PY'
import sys
path, guid = sys.argv[1:]
s = open(path).read()
i = s.index("<GUID>%s</GUID>" % guid, s.index("<Snapshots>"))
j = s.index("</Shot>", i)
open(path, "w").write(s[:j] + "  <Temporary/>\n    " + s[j:])
PY
}
