// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Fuzz target of the DiskDescriptor.xml parser (pf_dd_parse), through the
 * public interface of descriptor.h only.
 *
 * The input is a descriptor.  Properties: pf_dd_parse() returns 0,
 * -EINVAL with a reason, or -ENOMEM, and prints nothing (library code
 * never prints: the reason goes to the caller); a descriptor it accepts
 * holds the
 * invariants descriptor.c states, survives pf_dd_format() and parses
 * again to an equal struct pf_dd; its chain (pf_dd_chain) runs from a
 * base to the top.
 *
 * stderr is taken into a memfd around the parse to see that it stays
 * silent; FUZZ_STDERR=1 in the environment leaves it alone, for reading
 * a sanitizer report of a crash inside the parser.
 */
#include "fuzz.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "descriptor.h"

static int capture_fd = -1;	/* -2: not capturing */
static int saved_fd = -1;

/* Send stderr into the capture file until capture_end(). */
static void capture_begin(void)
{
	if (capture_fd == -1) {
		const char *e = getenv("FUZZ_STDERR");

		capture_fd = e && *e == '1' ? -2 :
			memfd_create("fuzz-stderr", MFD_CLOEXEC);
		if (capture_fd < 0)
			capture_fd = -2;
	}
	if (capture_fd < 0)
		return;
	fflush(stderr);
	saved_fd = dup(STDERR_FILENO);
	if (saved_fd < 0 || dup2(capture_fd, STDERR_FILENO) < 0)
		abort();
}

/* Put stderr back, copy out what was written to it; returns its size. */
static off_t capture_end(void)
{
	char buf[4096];
	struct stat st;
	ssize_t n;

	if (capture_fd < 0)
		return 0;
	fflush(stderr);
	if (dup2(saved_fd, STDERR_FILENO) < 0 || fstat(capture_fd, &st) < 0)
		abort();
	close(saved_fd);
	if (st.st_size) {
		lseek(capture_fd, 0, SEEK_SET);
		while ((n = read(capture_fd, buf, sizeof(buf))) > 0)
			if (write(STDERR_FILENO, buf, (size_t)n) < 0)
				break;
		if (ftruncate(capture_fd, 0) < 0)
			abort();
	}
	lseek(capture_fd, 0, SEEK_SET);
	return st.st_size;
}

static void check_invariants(const struct pf_dd *dd)
{
	const struct pf_dd_shot *top;
	size_t i, *chain = NULL, n = 0;
	struct pf_why why;

	fuzz_assert(dd->disk_size_sectors > 0 &&
		    dd->disk_size_sectors <= UINT64_MAX / 512);
	fuzz_assert(dd->n_images >= 1 && dd->n_images <= PF_MAX_DELTAS);
	fuzz_assert(dd->n_shots == dd->n_images);
	for (i = 0; i < dd->n_images; i++) {
		fuzz_assert(pf_guid_valid(dd->images[i].guid));
		fuzz_assert(pf_dd_file_name_valid(dd->images[i].file));
		fuzz_assert(pf_dd_find_shot(dd, dd->images[i].guid));
	}
	top = pf_dd_find_shot(dd, dd->top_guid);
	fuzz_assert(top && !top->temporary);
	fuzz_assert(pf_dd_chain(dd, &chain, &n, &why) == 0);
	fuzz_assert(n >= 1 && n <= dd->n_images);
	fuzz_assert(!strcmp(dd->images[chain[n - 1]].guid, dd->top_guid));
	fuzz_assert(!strcmp(pf_dd_parent(dd, dd->images[chain[0]].guid),
			    PF_NONE_GUID));
	free(chain);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pf_dd *dd = NULL, *again = NULL;
	struct pf_why why;
	char *text = NULL;
	size_t len = 0;
	int ret;

	memset(&why, 0, sizeof(why));
	capture_begin();
	ret = pf_dd_parse((const char *)data, size, &dd, &why);
	fuzz_assert(capture_end() == 0);	/* printed nothing */
	fuzz_assert(ret == 0 || ret == -EINVAL || ret == -ENOMEM);
	if (ret) {
		fuzz_assert(!dd);
		fuzz_assert(ret == -ENOMEM || why.msg[0] != '\0');
		return 0;
	}
	check_invariants(dd);

	ret = pf_dd_format(dd, &text, &len);
	fuzz_assert(ret == 0 || ret == -ENOMEM);
	if (!ret) {
		fuzz_assert(strlen(text) == len);
		memset(&why, 0, sizeof(why));
		ret = pf_dd_parse(text, len, &again, &why);
		if (ret)
			fprintf(stderr, "formatted descriptor refused: %s\n%s",
				why.msg, text);
		fuzz_assert(ret == 0);
		fuzz_assert(pf_dd_equal(dd, again));
	}
	free(text);
	pf_dd_free(again);
	pf_dd_free(dd);
	return 0;
}
