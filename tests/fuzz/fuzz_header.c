// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Fuzz target of the delta header and BAT decoders of format.c
 * (pf_header_decode, pf_bat_decode, pf_ext_magic_ok).
 *
 * The input is the first bytes of a delta file: the 64-byte header, then
 * BAT entries from offset 64 (as many whole entries as the input holds,
 * at most the header's bat_entries).  Each entry is decoded twice: for a
 * file that ends right after the entries given (hdr_clusters + their
 * count clusters: a dense image) and for the largest file the encoding
 * can address.
 *
 * Properties: a header that decodes holds the invariants format.c
 * states, encodes to exactly the input's 64 bytes, and decodes again to
 * the same struct; pf_header_init() of its size and cluster size gives a
 * header that decodes to itself.  A BAT entry that decodes encodes back
 * to the raw value, and survives pf_bat_store/pf_bat_load.
 */
#include "fuzz.h"

#include <errno.h>
#include <string.h>

#include "format.h"

static void check_invariants(const struct pf_header *h)
{
	fuzz_assert(pf_cluster_size_valid(h->cluster_bytes));
	fuzz_assert(h->cluster_bytes == h->cluster_sectors * PF_SECTOR_SIZE);
	fuzz_assert(1u << h->cluster_shift == h->cluster_bytes);
	fuzz_assert(h->bat_entries >= 1 &&
		    h->bat_entries <= PF_MAX_BAT_ENTRIES);
	fuzz_assert(h->size_sectors > 0 &&
		    h->size_sectors <=
			    (uint64_t)h->bat_entries * h->cluster_sectors);
	fuzz_assert(h->size_bytes == h->size_sectors * PF_SECTOR_SIZE);
	fuzz_assert((uint64_t)h->hdr_clusters * h->cluster_sectors ==
		    h->first_block_sectors);
	fuzz_assert(pf_hdr_clusters(h->bat_entries, h->cluster_bytes) != 0);
	fuzz_assert(h->hdr_clusters >=
		    pf_hdr_clusters(h->bat_entries, h->cluster_bytes));
	fuzz_assert(h->hdr_clusters < pf_max_file_clusters(h));
	/* every byte offset derived from these fits in 63 bits */
	fuzz_assert(pf_meta_bytes(h) < (1ull << 63));
	fuzz_assert(pf_max_file_clusters(h) <=
		    (UINT64_MAX >> 1) >> h->cluster_shift);
	fuzz_assert(h->size_bytes < (1ull << 63));
}

static void check_round_trip(const struct pf_header *h, const uint8_t *raw)
{
	uint8_t enc[PF_HEADER_SIZE];
	struct pf_header again;
	struct pf_why why;

	pf_header_encode(h, enc);
	if (raw)
		fuzz_assert(!memcmp(enc, raw, PF_HEADER_SIZE));
	fuzz_assert(pf_header_decode(enc, &again, &why) == 0);
	/* pf_header_decode() zeroes the struct first: padding compares */
	fuzz_assert(!memcmp(&again, h, sizeof(again)));
}

static void check_init(const struct pf_header *h)
{
	struct pf_header init;
	struct pf_why why;

	fuzz_assert(pf_header_init(&init, h->size_bytes, h->cluster_bytes,
				   &why) == 0);
	check_invariants(&init);
	fuzz_assert(init.bat_entries <= h->bat_entries);
	check_round_trip(&init, NULL);
}

static void check_entry(const struct pf_header *h, uint32_t idx, uint32_t raw,
			uint64_t file_clusters)
{
	/* a BAT of one page, 4-byte aligned, holding entry @idx */
	static uint32_t meta[PF_BAT_PAGE_SIZE / sizeof(uint32_t)];
	uint32_t clu, slot = idx % (PF_BAT_PAGE_SIZE / PF_BAT_ENTRY_SIZE - 16);
	struct pf_why why;
	int ret;

	ret = pf_bat_decode(h, idx, raw, file_clusters, &clu, &why);
	fuzz_assert(ret == 0 || ret == -EUCLEAN);
	if (ret) {
		fuzz_assert(why.msg[0] != '\0');
		fuzz_assert(clu == 0);
		return;
	}
	if (raw == 0) {
		fuzz_assert(clu == 0);
		return;
	}
	fuzz_assert(clu >= h->hdr_clusters && clu < file_clusters);
	fuzz_assert(pf_bat_encode(h, clu) == raw);
	pf_bat_store(h, meta, slot, clu);
	fuzz_assert(pf_bat_raw_get(meta, slot) == raw);
	fuzz_assert(pf_bat_load(h, meta, slot) == clu);
	pf_bat_store(h, meta, slot, 0);
	fuzz_assert(pf_bat_load(h, meta, slot) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pf_header h;
	struct pf_why why;
	uint64_t ext_off, dense;
	uint32_t n, i;
	int ret;

	if (size < PF_HEADER_SIZE)
		return 0;
	memset(&why, 0, sizeof(why));
	ret = pf_header_decode(data, &h, &why);
	fuzz_assert(ret == 0 || ret == -EINVAL || ret == -EFBIG);
	if (ret) {
		fuzz_assert(why.msg[0] != '\0');
		return 0;
	}
	check_invariants(&h);
	check_round_trip(&h, data);
	check_init(&h);

	ext_off = h.ext_sectors * PF_SECTOR_SIZE;
	if (h.ext_sectors && ext_off <= size - 8)
		(void)pf_ext_magic_ok(data + ext_off);

	n = (uint32_t)((size - PF_HEADER_SIZE) / PF_BAT_ENTRY_SIZE);
	if (n > h.bat_entries)
		n = h.bat_entries;
	dense = (uint64_t)h.hdr_clusters + n;
	for (i = 0; i < n; i++) {
		uint32_t raw = pf_bat_raw_get(data, i);

		check_entry(&h, i, raw, dense);
		check_entry(&h, i, raw, pf_max_file_clusters(&h));
	}
	return 0;
}
