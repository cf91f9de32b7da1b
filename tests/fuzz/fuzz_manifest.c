// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Fuzz target of the manifest decoder (pf_manifest_parse over
 * pf_mf_header_decode): the input is a whole <delta>.sum file.
 *
 * Properties: an input that parses is exactly what the encoder writes
 * for the result (header, entries, root digest: nothing ignored, nothing
 * left over); its entries are in strictly ascending order within the
 * virtual clusters; its digest length is its algorithm's.  An input that
 * does not parse says why, with one of the documented errors.
 *
 * Mutations almost always break the root digest, which is checked last;
 * so each input is parsed a second time with its last md_len bytes
 * replaced by the right root for what precedes them, which lets the
 * fuzzer reach the checks of the entries.
 */
#include "fuzz.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "csum.h"
#include "manifest.h"

static void parse_one(const uint8_t *data, size_t size);

/* @data with its root digest made right, if its header names a known
 * algorithm of its digest length; else nothing. */
static void parse_fixed(const uint8_t *data, size_t size)
{
	struct pf_csum_alg *a = NULL;
	struct pf_csum *c = NULL;
	struct pf_mf_header h;
	uint8_t *copy;

	if (size < PF_MF_HDR_SIZE ||
	    pf_mf_header_decode(data, size, &h, NULL) ||
	    pf_csum_alg_get(h.alg, &a, NULL))
		return;
	copy = malloc(size);
	if (copy && pf_csum_alg_size(a) == h.md_len && !pf_csum_new(a, &c) &&
	    !pf_csum_buf(c, data, size - h.md_len, copy + size - h.md_len)) {
		memcpy(copy, data, size - h.md_len);
		parse_one(copy, size);
	}
	pf_csum_free(c);
	pf_csum_alg_free(a);
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	parse_one(data, size);
	parse_fixed(data, size);
	return 0;
}

static void parse_one(const uint8_t *data, size_t size)
{
	struct pf_manifest *m = NULL;
	struct pf_csum_alg *a = NULL;
	uint8_t hdr[PF_MF_HDR_SIZE];
	struct pf_why why;
	uint64_t i, body;
	int ret;

	memset(&why, 0, sizeof(why));
	ret = pf_manifest_parse(data, size, &m, &why);
	fuzz_assert(ret == 0 || ret == -EUCLEAN || ret == -ENOTSUP ||
		    ret == -ENOMEM);
	if (ret) {
		fuzz_assert(m == NULL);
		fuzz_assert(ret == -ENOMEM || why.msg[0] != '\0');
		return;
	}
	body = m->h.entries * pf_mf_entry_size(m->h.md_len);
	fuzz_assert(size == PF_MF_HDR_SIZE + body + m->h.md_len);
	fuzz_assert(size == pf_mf_file_size(&m->h));
	pf_mf_header_encode(&m->h, hdr);
	fuzz_assert(!memcmp(hdr, data, PF_MF_HDR_SIZE));
	fuzz_assert(!memcmp(m->ent, data + PF_MF_HDR_SIZE, body));
	fuzz_assert(!memcmp(m->root, data + PF_MF_HDR_SIZE + body,
			    m->h.md_len));
	fuzz_assert(m->h.entries <= m->h.bat_entries);
	for (i = 0; i < m->h.entries; i++) {
		uint32_t v = pf_mf_entry_vclu(m->ent + i * (4 + m->h.md_len));

		fuzz_assert(v < m->h.bat_entries);
		fuzz_assert(i == 0 ||
			    v > pf_mf_entry_vclu(m->ent +
						 (i - 1) * (4 + m->h.md_len)));
	}
	fuzz_assert(pf_csum_alg_get(m->h.alg, &a, NULL) == 0);
	fuzz_assert(pf_csum_alg_size(a) == m->h.md_len);
	pf_csum_alg_free(a);
	pf_manifest_free(m);
}
