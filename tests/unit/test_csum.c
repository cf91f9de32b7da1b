// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Unit tests of src/csum.c (EVP digests, the block digest) against
 * published and independently computed vectors, and of src/sum.c (the
 * parallel reader) over a sparse raw file: every thread count and both
 * digests agree with a plain single pass over the same bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "csum.h"
#include "sum.h"
#include "tap.h"

static void hex_of(struct pf_csum *c, const void *buf, size_t len, char *out,
		   size_t md_len)
{
	uint8_t md[PF_CSUM_MAX];

	check(pf_csum_buf(c, buf, len, md) == 0);
	pf_csum_hex(md, md_len, out);
}

static void test_algorithms(void)
{
	struct pf_csum_alg *a = NULL;
	struct pf_csum *c = NULL;
	struct pf_why why = { "" };
	char hex[2 * PF_CSUM_MAX + 1];

	check(pf_csum_alg_get("sha256", &a, &why) == 0);
	check_str(pf_csum_alg_name(a), "sha256");
	check_int(pf_csum_alg_size(a), ==, 32);
	check(pf_csum_new(a, &c) == 0);
	hex_of(c, "abc", 3, hex, 32);
	check_str(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	/* update in pieces, then final, then again (final resets) */
	check(pf_csum_update(c, "a", 1) == 0);
	check(pf_csum_update(c, "bc", 2) == 0);
	{
		uint8_t md[PF_CSUM_MAX];

		check(pf_csum_final(c, md) == 0);
		pf_csum_hex(md, 32, hex);
		check_str(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	}
	pf_csum_free(c);
	pf_csum_alg_free(a);

	/* an alias in upper case gives the canonical name */
	check(pf_csum_alg_get("BLAKE2B512", &a, &why) == 0);
	check_str(pf_csum_alg_name(a), "blake2b512");
	check_int(pf_csum_alg_size(a), ==, 64);
	check(pf_csum_new(a, &c) == 0);
	hex_of(c, "abc", 3, hex, 64);
	check_str(hex, "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923");
	pf_csum_free(c);
	pf_csum_alg_free(a);

	check_int(pf_csum_alg_get("nosuch", &a, &why), ==, -ENOENT);
	check(a == NULL && strstr(why.msg, "nosuch"));
	check_int(pf_csum_alg_get("shake256", &a, &why), ==, -EINVAL);
	check(strstr(why.msg, "no fixed length") != NULL);
	check_int(pf_csum_alg_get("", &a, &why), ==, -EINVAL);
	check_int(pf_csum_alg_get("sha256sha256sha256sha256sha256sha256", &a,
				  &why), ==, -EINVAL);
}

static void test_is_zero(void)
{
	uint8_t b[4096] = { 0 };
	size_t i;

	check(pf_is_zero(b, 0));
	check(pf_is_zero(b, 1));
	check(pf_is_zero(b, sizeof(b)));
	for (i = 0; i < sizeof(b); i += 511) {
		b[i] = 1;
		check_msg(!pf_is_zero(b, sizeof(b)), "a 1 at %zu is seen", i);
		check(pf_is_zero(b, i));
		b[i] = 0;
	}
	b[sizeof(b) - 1] = 0x80;
	check(!pf_is_zero(b, sizeof(b)));
	check(pf_is_zero(b, sizeof(b) - 1));
}

static void test_blk(void)
{
	struct pf_csum_alg *a = NULL;
	struct pf_csum *c = NULL;
	struct pf_blk b;
	uint8_t md[PF_CSUM_MAX], part[PF_CSUM_MAX];
	char hex[2 * PF_CSUM_MAX + 1];
	static const char a100[100] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
				      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

	check(pf_csum_alg_get("sha256", &a, NULL) == 0);
	check(pf_csum_new(a, &c) == 0);
	/* the empty disk: H(le64(0)) */
	check(pf_blk_init(&b, a) == 0);
	check(pf_blk_final(&b, md) == 0);
	pf_csum_hex(md, 32, hex);
	check_str(hex, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc");
	pf_blk_free(&b);
	/* a block of zeros and a short block of 100 'a' (computed with
	 * Python's hashlib from the specification) */
	check(pf_blk_init(&b, a) == 0);
	check(pf_blk_add_zero(&b, 1) == 0);
	check(pf_csum_buf(c, a100, sizeof(a100), part) == 0);
	check(pf_blk_add(&b, part, sizeof(a100)) == 0);
	/* nothing may follow a short block */
	check_int(pf_blk_add(&b, part, sizeof(a100)), ==, -EINVAL);
	check_int(pf_blk_add_zero(&b, 1), ==, -EINVAL);
	check(pf_blk_final(&b, md) == 0);
	pf_csum_hex(md, 32, hex);
	check_str(hex, "c7f8055a57d4827bdf386a3b36ab5eb184a746f918da2559fb70db5b1c9d76fb");
	pf_blk_free(&b);
	/* zero blocks in one call or many: the same */
	{
		uint8_t m1[PF_CSUM_MAX], m2[PF_CSUM_MAX];
		int k;

		check(pf_blk_init(&b, a) == 0);
		check(pf_blk_add_zero(&b, 1000) == 0);
		check(pf_blk_final(&b, m1) == 0);
		pf_blk_free(&b);
		check(pf_blk_init(&b, a) == 0);
		for (k = 0; k < 1000; k++)
			check(pf_blk_add(&b, b.zero_md, PF_BLK_BLOCK) == 0);
		check(pf_blk_final(&b, m2) == 0);
		pf_blk_free(&b);
		check(memcmp(m1, m2, 32) == 0);
	}
	pf_csum_free(c);
	pf_csum_alg_free(a);
}

/* A sparse file: data, holes, a run of written zeros, an odd tail. */
static int make_file(char *path, uint64_t *size, uint8_t **all)
{
	static const struct { uint64_t off, len; int fill; } runs[] = {
		{ 0, 100000, 'r' },			/* from the start */
		{ 5u << 20, 3u << 20, 'r' },		/* past a hole */
		{ 9u << 20, 1u << 20, 0 },		/* written zeros */
		{ (13u << 20) + 4097, 70000, 'r' },	/* odd offset */
		{ (40u << 20) - 1000, 1000, 'r' },	/* the end */
	};
	uint64_t n = 40u << 20;
	uint8_t *buf = calloc(1, n);
	size_t i, k;
	int fd;

	fd = mkstemp(path);
	if (fd < 0 || !buf || ftruncate(fd, (off_t)n) < 0)
		return -1;
	srandom(7);
	for (i = 0; i < PF_ARRAY_SIZE(runs); i++) {
		for (k = 0; k < runs[i].len; k++)
			buf[runs[i].off + k] =
				runs[i].fill ? (uint8_t)random() : 0;
		if (pwrite(fd, buf + runs[i].off, runs[i].len,
			   (off_t)runs[i].off) != (ssize_t)runs[i].len)
			return -1;
	}
	*size = n;
	*all = buf;
	return fd;
}

static void test_sum_file(void)
{
	char path[] = "/tmp/test_csum.XXXXXX";
	struct pf_csum_alg *a = NULL;
	struct pf_csum *c = NULL;
	struct pf_why why = { "" };
	uint8_t *all = NULL, want_raw[PF_CSUM_MAX], want_blk[PF_CSUM_MAX];
	uint8_t md[PF_CSUM_MAX];
	struct pf_blk b;
	uint64_t size = 0, off;
	unsigned threads;
	int fd;

	fd = make_file(path, &size, &all);
	check(fd >= 0);
	if (fd < 0)
		return;
	check(pf_csum_alg_get("sha256", &a, NULL) == 0);
	check(pf_csum_new(a, &c) == 0);
	/* what the engine must give, by a plain pass over the bytes */
	check(pf_csum_buf(c, all, size, want_raw) == 0);
	check(pf_blk_init(&b, a) == 0);
	for (off = 0; off < size; off += PF_BLK_BLOCK) {
		uint32_t n = size - off < PF_BLK_BLOCK ? (uint32_t)(size - off) :
							 PF_BLK_BLOCK;

		check(pf_csum_buf(c, all + off, n, md) == 0);
		check(pf_blk_add(&b, md, n) == 0);
	}
	check(pf_blk_final(&b, want_blk) == 0);
	pf_blk_free(&b);

	for (threads = 1; threads <= 9; threads += 4) {
		struct pf_sum_opts o = { .alg = a, .threads = threads };
		struct pf_sum_src src = { .fd = fd, .size = size };

		check_int(pf_sum_blk(&src, &o, md, &why), ==, 0);
		check_msg(!memcmp(md, want_blk, 32), "block digest, %u threads",
			  threads);
		check_int(pf_sum_raw(&src, &o, md, &why), ==, 0);
		check_msg(!memcmp(md, want_raw, 32), "raw digest, %u threads",
			  threads);
	}
	/* a file shorter than it is said to be: an error naming the end */
	{
		struct pf_sum_opts o = { .alg = a, .threads = 2 };
		struct pf_sum_src src = { .fd = fd, .size = size + 8192 };

		check_int(pf_sum_blk(&src, &o, md, &why), ==, -EIO);
		check_msg(strstr(why.msg, "shrank") != NULL, "why: %s", why.msg);
	}
	close(fd);
	unlink(path);
	free(all);
	pf_csum_free(c);
	pf_csum_alg_free(a);
}

int main(void)
{
	test_algorithms();
	test_is_zero();
	test_blk();
	test_sum_file();
	return tap_done();
}
