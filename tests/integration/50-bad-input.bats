#!/usr/bin/env bats
# Bad input never crashes ploopctl and never changes an image: one clear
# line naming the file and the problem, and a documented exit status.
# Runs every entry of tests/corpus/images.tsv and tests/corpus/dd/bad-*.xml.

load helpers

CORPUS=$BATS_TEST_DIRNAME/../corpus

# expect_one_line STATUS TEXT FILE CMD...: the command exits STATUS and
# prints exactly one line that names FILE and contains TEXT.
expect_one_line() {
	local want=$1 text=$2 file=$3
	shift 3
	run "$@"
	no_sanitizer_reports "$output"
	if [ "$status" -ne "$want" ] || [ "${#lines[@]}" -ne 1 ] ||
		[[ "$output" != *"$file"* ]] || [[ "$output" != *"$text"* ]]; then
		echo "cmd: $*" >&2
		echo "want exit $want, one line with '$file' and '$text'; got $status:" >&2
		echo "$output" >&2
		return 1
	fi
}

@test "every bad delta in the corpus: one line, documented exit, no change" {
	n=0
	while IFS=$'\t' read -r name action want text; do
		[[ -z "$name" || "$name" == \#* ]] && continue
		n=$((n + 1))
		D=$BATS_TEST_TMPDIR/$name
		run_ok ploopctl init -s 64M "$D"
		F=$D/root.hds
		rm "$F"
		make_qemu_image "$F"
		eval "$action"
		before=$(tree_sum "$D")

		echo "# $name" >&3
		expect_one_line "$want" "$text" "$F" ploopctl info "$D"
		expect_one_line "$want" "$text" "$F" ploopctl snapshot "$D"
		run ploopctl check "$D"
		no_sanitizer_reports "$output"
		[ "$status" -eq "$want" ] || { echo "check $name: $status $output" >&2; false; }
		[[ "$output" == *"$F: corruption: "*"$text"* ]] || { echo "check $name: $output" >&2; false; }
		if [ ! -d "$F" ]; then
			expect_one_line "$want" "$text" "$F" ploopctl info --json "$F"
			run ploopctl check --json "$F"
			[ "$status" -eq "$want" ]
			[ "$(json_get "$output" 'j["verdict"]')" = "corruption found" ]
		fi
		[ "$(tree_sum "$D")" = "$before" ] || { echo "$name: image changed" >&2; false; }
	done <"$CORPUS/images.tsv"
	[ "$n" -ge 30 ]
}

@test "every hostile descriptor in the corpus: one line naming it, exit 4, no change" {
	n=0
	for x in "$CORPUS"/dd/bad-*.xml; do
		n=$((n + 1))
		D=$BATS_TEST_TMPDIR/$(basename "$x" .xml)
		run_ok ploopctl init -s 64M "$D"
		cp "$x" "$D/DiskDescriptor.xml"
		before=$(tree_sum "$D")
		for cmd in info check snapshot snapshot-list; do
			expect_one_line 4 "" "$D/DiskDescriptor.xml" ploopctl "$cmd" "$D"
		done
		[ "$(tree_sum "$D")" = "$before" ] || { echo "$x: image changed" >&2; false; }
	done
	[ "$n" -ge 20 ]
}

@test "good descriptors in the corpus parse" {
	for x in "$CORPUS"/dd/good-*.xml; do
		D=$BATS_TEST_TMPDIR/$(basename "$x" .xml)
		mkdir "$D"
		cp "$x" "$D/DiskDescriptor.xml"
		run ploopctl snapshot-list "$D"
		[ "$status" -eq 0 ] || { echo "$x: $output" >&2; false; }
	done
}

@test "a descriptor naming a missing delta: exit 1 naming the file" {
	D=$BATS_TEST_TMPDIR/img
	run_ok ploopctl init -s 64M "$D"
	rm "$D/root.hds"
	expect_one_line 1 "No such file" "$D/root.hds" ploopctl info "$D"
	run -4 ploopctl check "$D"
}

@test "an oversized descriptor is refused without reading it all" {
	D=$BATS_TEST_TMPDIR/img
	run_ok ploopctl init -s 64M "$D"
	head -c $((2 * 1048576)) /dev/zero | tr '\0' ' ' >>"$D/DiskDescriptor.xml"
	expect_one_line 4 "" "$D/DiskDescriptor.xml" ploopctl info "$D"
}

# odd_file KIND PATH: put a file of KIND (fifo, dir, socket, chardev) at
# PATH
odd_file() {
	case $1 in
	fifo) mkfifo "$2" ;;
	dir) mkdir "$2" ;;
	socket) python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$2" ;;
	chardev) mknod "$2" c 1 3 ;;	# /dev/null's numbers
	esac
}

# No command waits on a FIFO (or anything else that is not a regular
# file) in place of a delta or of the descriptor: each refuses it at once
# with one line naming it, exit 4, and changes nothing.
@test "a FIFO, directory, socket or device in place of a delta or the descriptor: no hang, one line, exit 4" {
	local kind victim D F before cmd
	pf_dirs
	pf_ploopctl_abs
	mkdir -p "$M"
	for kind in fifo dir socket chardev; do
		for victim in top DiskDescriptor.xml; do
			D=$T/$kind-${victim%%.*}
			run_ok ploopctl init -s 64M "$D"
			run_ok ploopctl snapshot "$D"
			if [ "$victim" = top ]; then
				F=$(top_delta "$D")
			else
				F=$D/DiskDescriptor.xml
			fi
			rm "$F"
			odd_file "$kind" "$F"
			before=$(tree_sum "$D")
			echo "# $kind as $victim" >&3
			for cmd in info status snapshot snapshot-merge; do
				expect_one_line 4 "not a regular file" "$(basename "$F")" \
					timeout 20 "$PLOOPCTL" "$cmd" "$D"
			done
			# check reports it as a finding, then its verdict
			run timeout 20 "$PLOOPCTL" check "$D"
			[ "$status" -eq 4 ]
			[[ $output == *"$F"*"not a regular file"* ]]
			if [ "$victim" = DiskDescriptor.xml ]; then
				expect_one_line 4 "not a regular file" "$(basename "$F")" \
					timeout 20 "$PLOOPCTL" snapshot-list "$D"
			fi
			run --separate-stderr timeout 20 "$PLOOPFS" "$D" "$M"
			[ "$status" -eq 4 ]
			[[ $stderr == *"not a regular file"* ]]
			! pf_is_mounted "$M"
			run timeout 20 "$BATS_TEST_DIRNAME/../../scripts/ploop-rotate" --keep 1 "$D"
			[ "$status" -eq 4 ]
			rm -f "$D/.ploop-rotate.lock"	# its own, kept
			[ "$(tree_sum "$D")" = "$before" ]
		done
	done
}
