// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Unit tests of src/format.c and the arithmetic helpers of src/util.c:
 * header layout against bytes dumped from real images, ploop's geometry
 * table, every validation rule with a violating buffer, BAT entry
 * decoding, BAT page arithmetic and capacity limits (ARI-3, ARI-4, ARI-6).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "tap.h"
#include "util.h"

#define KiB (1024ull)
#define MiB (1024ull * KiB)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)

/* The header of `qemu-img create -f parallels x.hds 64M` (ploop-format.md
 * §1.4), with flags = CIF_Empty as ploop writes it. */
static const uint8_t hdr_64m[64] = {
	0x57, 0x69, 0x74, 0x68, 0x6f, 0x75, 0x46, 0x72, 0x65, 0x53, 0x70,
	0x61, 0x63, 0x45, 0x78, 0x74, 0x02, 0x00, 0x00, 0x00, 0x10, 0x00,
	0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x40,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x01, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};

static void test_encode_matches_dump(void)
{
	struct pf_header h, d;
	uint8_t buf[64];

	check_int(pf_header_init(&h, 64 * MiB, 1 * MiB, NULL), ==, 0);
	pf_header_encode(&h, buf);
	check(memcmp(buf, hdr_64m, 64) == 0);
	check_int(pf_header_decode(hdr_64m, &d, NULL), ==, 0);
	check_int(d.version, ==, 2);
	check_int(d.bat_entries, ==, 64);
	check_int(d.hdr_clusters, ==, 1);
	check_u64(d.size_bytes, ==, 64 * MiB);
	check_int(d.flags, ==, PF_FLAG_EMPTY);
	check_int(d.in_use, ==, PF_INUSE_CLOSED);
}

/* ploop-format.md §1.6 table: size -> heads, cylinders, m_Size, L */
static void test_geometry_table(void)
{
	static const struct {
		uint64_t size;
		uint32_t heads, cyl, entries, hdr;
	} t[] = {
		{ 64 * MiB, 16, 256, 64, 1 },
		{ 1 * GiB, 16, 2080, 1024, 1 },
		{ 10 * GiB, 16, 40960, 10240, 1 },
		{ 16 * GiB, 16, 65536, 16384, 1 },
		{ 1 * TiB, 16, 4194304, 1048576, 5 },
	};
	size_t i;

	for (i = 0; i < PF_ARRAY_SIZE(t); i++) {
		struct pf_header h;

		check_int(pf_header_init(&h, t[i].size, 1 * MiB, NULL), ==, 0);
		check_int(h.heads, ==, t[i].heads);
		check_int(h.cylinders, ==, t[i].cyl);
		check_int(h.bat_entries, ==, t[i].entries);
		check_int(h.hdr_clusters, ==, t[i].hdr);
		check_int(h.first_block_sectors, ==, t[i].hdr * 2048);
	}
}

static void test_chs_pure_lba(void)
{
	uint32_t heads, cyl;

	pf_chs(16777217, &heads, &cyl);	/* odd: no sectors-per-track fits */
	check_int(heads, ==, 1);
	check_int(cyl, ==, 16777217);
	pf_chs(1ull << 40, &heads, &cyl);	/* cylinders clamp to u32 */
	check_int(heads, ==, 16);
	check_u64(cyl, ==, (1ull << 40) / 32 / 16);
}

static void test_round_trip(void)
{
	static const uint64_t sizes[] = { 512, 1536 * KiB, 1 * GiB,
					  16 * TiB, 65 * MiB + 512 };
	static const uint32_t clusters[] = { 64 * KiB, 1 * MiB, 4 * MiB,
					     64 * MiB };
	size_t i, j;

	for (i = 0; i < PF_ARRAY_SIZE(sizes); i++)
		for (j = 0; j < PF_ARRAY_SIZE(clusters); j++) {
			struct pf_header h, d;
			uint8_t buf[64];

			if (pf_header_init(&h, sizes[i], clusters[j], NULL)) {
				check_msg(0, "init %llu/%u",
					  (unsigned long long)sizes[i],
					  clusters[j]);
				continue;
			}
			pf_header_encode(&h, buf);
			check_int(pf_header_decode(buf, &d, NULL), ==, 0);
			check(memcmp(&h, &d, sizeof(h)) == 0);
			check_u64(d.size_bytes, ==, sizes[i]);
			check_u64(d.bat_entries, ==,
				  pf_div_round_up(sizes[i], clusters[j]));
		}
}

/* 1, 63, 64 and 65 clusters with 64 KiB clusters (ARI-6) */
static void test_small_sizes(void)
{
	static const uint32_t n[] = { 1, 63, 64, 65 };
	size_t i;

	for (i = 0; i < PF_ARRAY_SIZE(n); i++) {
		struct pf_header h;

		check_int(pf_header_init(&h, n[i] * 64 * KiB, 64 * KiB, NULL),
			  ==, 0);
		check_int(h.bat_entries, ==, n[i]);
		check_int(h.hdr_clusters, ==, 1);
		check_int(h.cluster_shift, ==, 16);
		check_u64(pf_meta_bytes(&h), ==, 64 * KiB);
	}
}

/* 16 TiB sparse: offsets beyond 2^32 bytes computed in 64 bits (ARI-3) */
static void test_large_offsets(void)
{
	struct pf_header h;

	check_int(pf_header_init(&h, 16 * TiB, 1 * MiB, NULL), ==, 0);
	check_int(h.bat_entries, ==, 16 * 1024 * 1024);
	/* 64 + 4 * 2^24 bytes need 65 clusters of 1 MiB */
	check_int(h.hdr_clusters, ==, 65);
	check_u64(pf_clu_to_off(&h, 5000), ==, 5000 * MiB);
	check_u64(pf_clu_to_off(&h, 0xFFFFFFFEu), ==, 0xFFFFFFFEull * MiB);
	check_u64(pf_off_to_idx(&h, 16 * TiB - 1), ==, 16 * 1024 * 1024 - 1);
	check_u64(pf_idx_entry_off(16 * 1024 * 1024 - 1), ==,
		  64 + 4ull * (16 * 1024 * 1024 - 1));
}

/* ARI-4: capacity just below and just above the limit */
static void test_capacity_limits(void)
{
	struct pf_header h;
	struct pf_why why = { "" };

	check_int(pf_header_init(&h, (uint64_t)PF_MAX_BAT_ENTRIES * 64 * KiB,
				 64 * KiB, NULL),
		  ==, 0);
	check_int(pf_header_init(&h,
				 ((uint64_t)PF_MAX_BAT_ENTRIES + 1) * 64 * KiB,
				 64 * KiB, &why),
		  ==, -EFBIG);
	check(why.msg[0] != 0);
	check_int(pf_header_init(&h, UINT64_MAX - 511, 64 * MiB, NULL), ==,
		  -EFBIG);
	check_int(pf_header_init(&h, 0, 1 * MiB, NULL), ==, -EINVAL);
	check_int(pf_header_init(&h, 1000, 1 * MiB, NULL), ==, -EINVAL);
}

static void test_cluster_sizes(void)
{
	struct pf_header h;

	check(pf_cluster_size_valid(64 * KiB));
	check(pf_cluster_size_valid(1 * MiB));
	check(pf_cluster_size_valid(4 * MiB));
	check(pf_cluster_size_valid(64 * MiB));
	check(!pf_cluster_size_valid(32 * KiB));
	check(!pf_cluster_size_valid(128 * MiB));
	check(!pf_cluster_size_valid(3 * MiB));
	check(!pf_cluster_size_valid(0));
	check_int(pf_header_init(&h, 1 * GiB, 3 * MiB, NULL), ==, -EINVAL);
}

/* Feed one mutated header and expect @err with a reason. */
static void expect_bad(const char *what, size_t off, const void *val,
		       size_t len, int err)
{
	uint8_t buf[64];
	struct pf_header h;
	struct pf_why why = { "" };
	int ret;

	memcpy(buf, hdr_64m, sizeof(buf));
	memcpy(buf + off, val, len);
	ret = pf_header_decode(buf, &h, &why);
	check_msg(ret == err && why.msg[0], "%s: %d (%s)", what, ret,
		  why.msg);
}

static void test_bad_headers(void)
{
	uint32_t v32;
	uint64_t v64;

	expect_bad("signature", 0, "WithoutFreeSpacX", 16, -EINVAL);
	v32 = 3;
	expect_bad("m_Type", 16, &v32, 4, -EINVAL);
	v32 = 7;
	expect_bad("cluster 7 sectors", 28, &v32, 4, -EINVAL);
	v32 = 64;
	expect_bad("cluster 32 KiB", 28, &v32, 4, -EINVAL);
	v32 = 0;
	expect_bad("cluster 0", 28, &v32, 4, -EINVAL);
	v32 = 0;
	expect_bad("bat 0", 32, &v32, 4, -EINVAL);
	v32 = 0x20000000;
	expect_bad("bat huge", 32, &v32, 4, -EFBIG);
	v64 = 0;
	expect_bad("size 0", 36, &v64, 8, -EINVAL);
	v64 = 64 * 2048 + 1;
	expect_bad("size beyond BAT", 36, &v64, 8, -EINVAL);
	v32 = 0x12345678;
	expect_bad("in_use", 44, &v32, 4, -EINVAL);
	v32 = 0;
	expect_bad("data_off 0", 48, &v32, 4, -EINVAL);
	v32 = 1;
	expect_bad("data_off 1 sector", 48, &v32, 4, -EINVAL);
	v32 = 0xFFFFFFFF;
	expect_bad("flags invalid", 52, &v32, 4, -EINVAL);
	v64 = UINT64_MAX;
	expect_bad("ext_off", 56, &v64, 8, -EINVAL);
}

static void test_data_off_overlapping_bat(void)
{
	struct pf_header h;
	struct pf_why why = { "" };
	uint8_t buf[64];

	/* 1 TiB needs 5 header clusters; claim 1 */
	check_int(pf_header_init(&h, 1 * TiB, 1 * MiB, NULL), ==, 0);
	h.first_block_sectors = 2048;
	pf_header_encode(&h, buf);
	check_int(pf_header_decode(buf, &h, &why), ==, -EINVAL);
	check(strstr(why.msg, "overlaps the BAT") != NULL);
}

static void test_v1(void)
{
	struct pf_header h;
	struct pf_why why = { "" };
	uint8_t buf[64];
	uint32_t clu;

	memcpy(buf, hdr_64m, sizeof(buf));
	memcpy(buf, PF_SIG_V1, PF_SIG_LEN);
	check_int(pf_header_decode(buf, &h, NULL), ==, 0);
	check_int(h.version, ==, 1);
	/* v1 entries are sector offsets */
	check_int(pf_bat_encode(&h, 3), ==, 3 * 2048);
	check_int(pf_bat_decode(&h, 0, 0x1800, 4, &clu, NULL), ==, 0);
	check_int(clu, ==, 3);
	check_int(pf_bat_decode(&h, 0, 0x1801, 4, &clu, &why), ==, -EUCLEAN);
	check_u64(pf_max_file_clusters(&h), ==, (1ull << 32) / 2048);
	/* the upper size word of v1 must be zero */
	buf[40] = 1;
	check_int(pf_header_decode(buf, &h, NULL), ==, -EINVAL);
}

static void test_bat_decode(void)
{
	struct pf_header h;
	struct pf_why why = { "" };
	uint32_t clu = 99;

	check_int(pf_header_decode(hdr_64m, &h, NULL), ==, 0);
	check_int(pf_bat_decode(&h, 0, 0, 3, &clu, NULL), ==, 0);
	check_int(clu, ==, 0);
	check_int(pf_bat_decode(&h, 1, 1, 3, &clu, NULL), ==, 0);
	check_int(clu, ==, 1);
	check_int(pf_bat_decode(&h, 1, 2, 3, &clu, NULL), ==, 0);
	check_int(pf_bat_decode(&h, 1, 3, 3, &clu, &why), ==, -EUCLEAN);
	check(strstr(why.msg, "beyond the end") != NULL);
	h.hdr_clusters = 2;
	check_int(pf_bat_decode(&h, 1, 1, 3, &clu, &why), ==, -EUCLEAN);
	check(strstr(why.msg, "inside the header") != NULL);
	check_int(pf_bat_decode(&h, 1, PF_BAT_RESERVED, UINT64_MAX, &clu,
				&why),
		  ==, -EUCLEAN);
}

static void test_bat_pages(void)
{
	uint8_t meta[8192] = { 0 };

	/* page 0: header + entries 0..1007; page p: p*1024-16 .. +1023 */
	check_int(pf_idx_to_page(0), ==, 0);
	check_int(pf_idx_to_page(1007), ==, 0);
	check_int(pf_idx_to_page(1008), ==, 1);
	check_int(pf_idx_to_page(2031), ==, 1);
	check_int(pf_idx_to_page(2032), ==, 2);
	check_int(pf_idx_to_page(0x1FFFFFFEu), ==,
		  (64 + 4ull * 0x1FFFFFFE) / 4096);
	pf_bat_raw_set(meta, 1008, 0xA1B2C3D4u);
	check_int(meta[4096], ==, 0xD4);
	check_int(meta[4099], ==, 0xA1);
	check_u64(pf_bat_raw_get(meta, 1008), ==, 0xA1B2C3D4u);
}

static void test_parse_size(void)
{
	uint64_t v;

	check_int(pf_parse_size("10G", &v), ==, 0);
	check_u64(v, ==, 10 * GiB);
	check_int(pf_parse_size("4KiB", &v), ==, 0);
	check_u64(v, ==, 4096);
	check_int(pf_parse_size("16t", &v), ==, 0);
	check_u64(v, ==, 16 * TiB);
	check_int(pf_parse_size("512", &v), ==, 0);
	check_u64(v, ==, 512);
	check_int(pf_parse_size("1MB", &v), ==, 0);
	check_u64(v, ==, MiB);
	check_int(pf_parse_size("", &v), ==, -EINVAL);
	check_int(pf_parse_size("-1", &v), ==, -EINVAL);
	check_int(pf_parse_size("1Q", &v), ==, -EINVAL);
	check_int(pf_parse_size("1Mx", &v), ==, -EINVAL);
	check_int(pf_parse_size("20000000P", &v), ==, -ERANGE);
	check_int(pf_parse_size("99999999999999999999", &v), ==, -ERANGE);
}

int main(void)
{
	test_encode_matches_dump();
	test_geometry_table();
	test_chs_pure_lba();
	test_round_trip();
	test_small_sizes();
	test_large_offsets();
	test_capacity_limits();
	test_cluster_sizes();
	test_bad_headers();
	test_data_off_overlapping_bat();
	test_v1();
	test_bat_decode();
	test_bat_pages();
	test_parse_size();
	return tap_done();
}
