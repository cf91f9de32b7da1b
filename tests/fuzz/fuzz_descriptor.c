// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Fuzz target of the DiskDescriptor.xml parser (pf_dd_parse), through the
 * public interface of descriptor.h only.
 *
 * The input is a descriptor.  Properties: pf_dd_parse() returns 0,
 * -EINVAL with a reason, or -ENOMEM; a descriptor it accepts holds the
 * invariants descriptor.c states, survives pf_dd_format() and parses
 * again to an equal struct pf_dd; its chain (pf_dd_chain) runs from a
 * base to the top.
 */
#include "fuzz.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "descriptor.h"

static bool dd_equal(const struct pf_dd *a, const struct pf_dd *b)
{
	size_t i;

	if (a->parallels_root != b->parallels_root ||
	    a->disk_size_sectors != b->disk_size_sectors ||
	    a->cylinders != b->cylinders || a->heads != b->heads ||
	    a->sectors != b->sectors || a->blocksize != b->blocksize ||
	    strcmp(a->top_guid, b->top_guid) != 0 ||
	    a->n_images != b->n_images || a->n_shots != b->n_shots)
		return false;
	for (i = 0; i < a->n_images; i++)
		if (strcmp(a->images[i].guid, b->images[i].guid) != 0 ||
		    strcmp(a->images[i].file, b->images[i].file) != 0)
			return false;
	for (i = 0; i < a->n_shots; i++)
		if (strcmp(a->shots[i].guid, b->shots[i].guid) != 0 ||
		    strcmp(a->shots[i].parent, b->shots[i].parent) != 0 ||
		    a->shots[i].temporary != b->shots[i].temporary)
			return false;
	return true;
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
	ret = pf_dd_parse((const char *)data, size, &dd, &why);
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
		fuzz_assert(dd_equal(dd, again));
	}
	free(text);
	pf_dd_free(again);
	pf_dd_free(dd);
	return 0;
}
