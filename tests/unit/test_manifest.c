// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Unit tests of src/manifest.c on a real delta (written through the
 * stack, then made read-only by an offline snapshot):
 *   - build, store and load give back the same manifest, byte for byte
 *     on disk what the parser accepts, and it verifies clean;
 *   - verify reports each kind of problem at its virtual cluster: data
 *     that differs, a cluster listed but no longer mapped, one mapped
 *     but not listed, one that cannot be read (the file cut short);
 *   - compose puts the upper manifest's entries over the lower's and
 *     refuses manifests of another algorithm or geometry;
 *   - the parser refuses damaged files with -EUCLEAN (and a reason);
 *   - drop removes the manifest and a leftover tmp file, and succeeds
 *     when there is none.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "csum.h"
#include "delta.h"
#include "format.h"
#include "manifest.h"
#include "stack.h"
#include "tap.h"
#include "testutil.h"
#include "util.h"

#define KiB (1024ull)
#define CLU (64 * KiB)

static char root_dir[] = "/tmp/test_manifest.XXXXXX";

/* Virtual clusters the base delta maps. */
static const uint32_t mapped[] = { 0, 3, 4, 9 };

/* An image whose base maps mapped[] (then a snapshot, so the base is
 * read-only); returns its directory. */
static char *make_image(void)
{
	struct pf_stack_opts o = { .no_sealer = true };
	uint8_t *buf = malloc(CLU);
	struct pf_stack *s;
	char *dir = tu_new_image(root_dir, 16 * CLU, CLU);
	size_t i;

	o.dir = dir;
	s = tu_open_stack(&o, false, NULL);
	check(s != NULL && buf != NULL);
	for (i = 0; s && i < PF_ARRAY_SIZE(mapped); i++) {
		tu_fill(buf, CLU, 7, (uint64_t)mapped[i] * CLU);
		check(pf_stack_pwrite(s, buf, CLU, (uint64_t)mapped[i] * CLU) == 0);
	}
	check(s && pf_stack_close(s) == 0);
	tu_snapshot(dir);
	free(buf);
	return dir;
}

static struct pf_delta *open_base(int dirfd)
{
	struct pf_delta *d = NULL;
	struct pf_why why = { "" };

	check_int(pf_delta_open(dirfd, "root.hds", 0, NULL, &d, &why), ==, 0);
	return d;
}

struct seen {
	uint32_t vclu[8];
	enum pf_mf_problem p[8];
	unsigned n;
};

static void note(void *ctx, uint32_t vclu, enum pf_mf_problem p)
{
	struct seen *s = ctx;

	if (s->n < 8) {
		s->vclu[s->n] = vclu;
		s->p[s->n] = p;
	}
	s->n++;
}

static size_t esz(const struct pf_manifest *m)
{
	return 4 + m->h.md_len;
}

static void test_roundtrip_and_verify(int dirfd, struct pf_csum_alg *a)
{
	struct pf_sum_opts o = { .alg = a, .threads = 2 };
	struct pf_manifest *m = NULL, *l = NULL;
	struct pf_why why = { "" };
	struct pf_delta *d = open_base(dirfd);
	struct seen seen = { .n = 0 };
	uint64_t problems = 99;
	size_t i;

	if (!d)
		return;
	check_int(pf_manifest_build(d, "{g}", &o, &m, &why), ==, 0);
	if (!m)
		return;
	check_u64(m->h.entries, ==, PF_ARRAY_SIZE(mapped));
	for (i = 0; i < PF_ARRAY_SIZE(mapped); i++)
		check_int(pf_mf_entry_vclu(m->ent + i * esz(m)), ==, mapped[i]);
	check_str(m->h.alg, "sha256");
	check_str(m->h.guid, "{g}");
	check_int(pf_manifest_store(dirfd, "root.hds", m, NULL, &why), ==, 0);
	check(pf_manifest_exists(dirfd, "root.hds"));
	check_int(pf_manifest_load(dirfd, "root.hds", d, &l, &why), ==, 0);
	check(l && !memcmp(&l->h, &m->h, sizeof(m->h)) &&
	      !memcmp(l->ent, m->ent, m->h.entries * esz(m)) &&
	      !memcmp(l->root, m->root, m->h.md_len));
	check_int(pf_manifest_verify(d, l, &o, note, &seen, &problems, &why),
		  ==, 0);
	check_u64(problems, ==, 0);
	check_int(seen.n, ==, 0);

	/* one of each problem: cluster 0's digest differs, cluster 3 is
	 * not listed, cluster 5 is listed but not mapped (0, 4, 5, 9) */
	memcpy(l->ent + esz(l), m->ent + 2 * esz(m), esz(m));	/* 4 */
	pf_mf_entry_encode(l->ent + 2 * esz(l), 5, m->root, l->h.md_len);
	memcpy(l->ent + 3 * esz(l), m->ent + 3 * esz(m), esz(m));	/* 9 */
	l->ent[4] ^= 1;
	check_int(pf_manifest_verify(d, l, &o, note, &seen, &problems, &why),
		  ==, 0);
	check_u64(problems, ==, 3);
	check_int(seen.n, ==, 3);
	check(seen.vclu[0] == 0 && seen.p[0] == PF_MF_DIFFERS);
	check(seen.vclu[1] == 3 && seen.p[1] == PF_MF_UNLISTED);
	check(seen.vclu[2] == 5 && seen.p[2] == PF_MF_UNMAPPED);

	/* the file cut short: the last cluster cannot be read */
	{
		struct stat st;
		struct seen s2 = { .n = 0 };
		int wfd = openat(dirfd, "root.hds", O_WRONLY);

		check(wfd >= 0 && fstat(wfd, &st) == 0);
		check(ftruncate(wfd, st.st_size - 1) == 0);
		check_int(pf_manifest_verify(d, m, &o, note, &s2, &problems,
					     &why), ==, 0);
		check_u64(problems, ==, 1);
		check(s2.vclu[0] == 9 && s2.p[0] == PF_MF_UNREADABLE);
		check(ftruncate(wfd, st.st_size) == 0);
		close(wfd);
	}
	/* another geometry */
	l->h.cluster_bytes *= 2;
	check_int(pf_manifest_verify(d, l, &o, NULL, NULL, &problems, &why),
		  ==, -EUCLEAN);
	pf_manifest_free(l);
	pf_manifest_free(m);
	pf_delta_close(d);
}

/* A manifest in memory: @n entries (vclu, digest byte). */
static struct pf_manifest *synth(const char *alg, size_t md_len,
				 const uint32_t *v, const uint8_t *fill,
				 size_t n)
{
	struct pf_manifest *m = calloc(1, sizeof(*m));
	uint8_t md[PF_CSUM_MAX];
	size_t i;

	m->h.md_len = (uint32_t)md_len;
	snprintf(m->h.alg, sizeof(m->h.alg), "%s", alg);
	m->h.cluster_bytes = CLU;
	m->h.bat_entries = 16;
	m->ent = malloc(n * (4 + md_len) + 1);
	for (i = 0; i < n; i++) {
		memset(md, fill[i], md_len);
		pf_mf_entry_encode(m->ent + i * (4 + md_len), v[i], md,
				   (uint32_t)md_len);
	}
	m->h.entries = n;
	return m;
}

static void test_compose(void)
{
	static const uint32_t lv[] = { 1, 3, 7 }, uv[] = { 0, 3, 9 };
	static const uint8_t lf[] = { 0x11, 0x33, 0x77 },
			     uf[] = { 0xa0, 0xa3, 0xa9 };
	static const uint32_t want_v[] = { 0, 1, 3, 7, 9 };
	static const uint8_t want_f[] = { 0xa0, 0x11, 0xa3, 0x77, 0xa9 };
	struct pf_manifest *lo = synth("sha256", 32, lv, lf, 3);
	struct pf_manifest *up = synth("sha256", 32, uv, uf, 3);
	struct pf_manifest *m = NULL, *other;
	size_t i;

	check_int(pf_manifest_compose(lo, up, "{c}", 12345, &m), ==, 0);
	check(m && m->h.entries == 5);
	for (i = 0; m && i < 5; i++) {
		check_int(pf_mf_entry_vclu(m->ent + i * 36), ==, want_v[i]);
		check_int(m->ent[i * 36 + 4], ==, want_f[i]);
	}
	check(m && !strcmp(m->h.guid, "{c}") && m->h.file_bytes == 12345);
	pf_manifest_free(m);
	other = synth("sha512", 64, uv, uf, 3);
	check_int(pf_manifest_compose(lo, other, "{c}", 1, &m), ==, -EINVAL);
	pf_manifest_free(other);
	up->h.bat_entries = 32;
	check_int(pf_manifest_compose(lo, up, "{c}", 1, &m), ==, -EINVAL);
	pf_manifest_free(lo);
	pf_manifest_free(up);
}

static int write_file(int dirfd, const char *name, const void *buf, size_t n)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int ret = fd < 0 ? -1 : pf_pwrite_full(fd, buf, n, 0);

	if (fd >= 0)
		close(fd);
	return ret;
}

static void test_parse_rejects(int dirfd)
{
	struct pf_manifest *m = NULL;
	struct pf_why why = { "" };
	uint8_t *buf;
	int fd;
	off_t n;

	/* the stored manifest of test_roundtrip_and_verify */
	fd = openat(dirfd, "root.hds.sum", O_RDONLY);
	n = fd < 0 ? 0 : lseek(fd, 0, SEEK_END);
	check(n == PF_MF_HDR_SIZE + 4 * 36 + 32);
	buf = malloc((size_t)n);
	check(buf && pf_pread_full(fd, buf, (size_t)n, 0) == 0);
	close(fd);
	check_int(pf_manifest_parse(buf, (size_t)n, &m, &why), ==, 0);
	pf_manifest_free(m);

	check_int(pf_manifest_parse(buf, (size_t)n - 1, &m, &why), ==, -EUCLEAN);
	check(m == NULL && strstr(why.msg, "announces") != NULL);
	check_int(pf_manifest_parse(buf, 100, &m, &why), ==, -EUCLEAN);
	buf[0] ^= 1;
	check_int(pf_manifest_parse(buf, (size_t)n, &m, &why), ==, -EUCLEAN);
	check(strstr(why.msg, "magic") != NULL);
	buf[0] ^= 1;
	buf[8] = 2;	/* version */
	check_int(pf_manifest_parse(buf, (size_t)n, &m, &why), ==, -EUCLEAN);
	buf[8] = 1;
	buf[120] = 1;	/* reserved */
	check_int(pf_manifest_parse(buf, (size_t)n, &m, &why), ==, -EUCLEAN);
	buf[120] = 0;
	memcpy(buf + 16, "sha512", 6);	/* another length */
	check_int(pf_manifest_parse(buf, (size_t)n, &m, &why), ==, -EUCLEAN);
	memcpy(buf + 16, "nosuch", 6);
	check_int(pf_manifest_parse(buf, (size_t)n, &m, &why), ==, -ENOTSUP);
	memcpy(buf + 16, "sha256", 6);
	/* entries swapped: out of order before the root is looked at */
	{
		uint8_t tmp[36];

		memcpy(tmp, buf + PF_MF_HDR_SIZE, 36);
		memcpy(buf + PF_MF_HDR_SIZE, buf + PF_MF_HDR_SIZE + 36, 36);
		memcpy(buf + PF_MF_HDR_SIZE + 36, tmp, 36);
		check_int(pf_manifest_parse(buf, (size_t)n, &m, &why), ==,
			  -EUCLEAN);
		check(strstr(why.msg, "out of order") != NULL);
		memcpy(tmp, buf + PF_MF_HDR_SIZE, 36);
		memcpy(buf + PF_MF_HDR_SIZE, buf + PF_MF_HDR_SIZE + 36, 36);
		memcpy(buf + PF_MF_HDR_SIZE + 36, tmp, 36);
	}
	buf[PF_MF_HDR_SIZE + 10] ^= 0x40;	/* a digest: the root catches it */
	check_int(pf_manifest_parse(buf, (size_t)n, &m, &why), ==, -EUCLEAN);
	check(strstr(why.msg, "root digest") != NULL);
	/* and load says which file */
	check(write_file(dirfd, "x.sum", buf, (size_t)n) == 0);
	check_int(pf_manifest_load(dirfd, "x", NULL, &m, &why), ==, -EUCLEAN);
	check(strstr(why.msg, "x.sum: the root digest") != NULL);
	check_int(pf_manifest_load(dirfd, "nothing", NULL, &m, &why), ==,
		  -ENOENT);
	check(symlinkat("root.hds.sum", dirfd, "y.sum") == 0);
	check_int(pf_manifest_load(dirfd, "y", NULL, &m, &why), ==, -EUCLEAN);
	check(strstr(why.msg, "symbolic link") != NULL);
	/* a header that announces 2^29 - 1 entries (a 19 GB file, sparse):
	 * refused for the delta's geometry before anything is read */
	{
		struct pf_delta *d = open_base(dirfd);
		int fd2;

		pf_le32_put(buf + 52, PF_MAX_BAT_ENTRIES);
		pf_le64_put(buf + 56, PF_MAX_BAT_ENTRIES);
		fd2 = openat(dirfd, "big.sum", O_WRONLY | O_CREAT | O_TRUNC,
			     0644);
		check(fd2 >= 0 && pf_pwrite_full(fd2, buf, PF_MF_HDR_SIZE, 0) == 0);
		check(ftruncate(fd2, PF_MF_HDR_SIZE +
					(off_t)PF_MAX_BAT_ENTRIES * 36 + 32) == 0);
		close(fd2);
		check_int(pf_manifest_load(dirfd, "big", d, &m, &why), ==,
			  -EUCLEAN);
		check_msg(strstr(why.msg, "big.sum: of another geometry") != NULL,
			  "why: %s", why.msg);
		unlinkat(dirfd, "big.sum", 0);
		pf_delta_close(d);
	}
	free(buf);
}

static void test_drop(int dirfd)
{
	check(write_file(dirfd, "z.sum.tmp", "x", 1) == 0);
	check_int(pf_manifest_drop(dirfd, "z", NULL), ==, 0);
	check(faccessat(dirfd, "z.sum.tmp", F_OK, 0) < 0 && errno == ENOENT);
	check_int(pf_manifest_drop(dirfd, "z", NULL), ==, 0);
	check(pf_manifest_exists(dirfd, "root.hds"));
	check_int(pf_manifest_drop(dirfd, "root.hds", NULL), ==, 0);
	check(!pf_manifest_exists(dirfd, "root.hds"));
}

/*
 * The stack keeps count of what is sealed: a down merge into a sealed
 * snapshot whose child is not sealed leaves the merged delta unsealed,
 * counted so, and pf_stack_seal() then seals it; the composed manifest
 * when both are sealed verifies.
 */
static void test_stack_sealing(void)
{
	struct pf_stack_opts o = { .no_sealer = true };
	struct pf_stack_merge_info mi;
	struct pf_stack_stat st;
	struct pf_why why = { "" };
	char g1[PF_GUID_LEN + 1], g2[PF_GUID_LEN + 1];
	uint8_t *buf = malloc(CLU);
	char *dir = tu_new_image(root_dir, 16 * CLU, CLU);
	struct pf_stack *s;
	int dirfd;

	o.dir = dir;
	s = tu_open_stack(&o, true, NULL);
	dirfd = open(dir, O_RDONLY | O_DIRECTORY);
	check(s && buf && dirfd >= 0);
	if (!s || !buf || dirfd < 0)
		return;
	tu_fill(buf, CLU, 3, 0);
	check(pf_stack_pwrite(s, buf, CLU, 0) == 0);
	check(pf_stack_snapshot(s, NULL, g1, &why) == 0);
	check_int(pf_stack_seal(s, &why), ==, 0);
	check(pf_manifest_exists(dirfd, "root.hds"));
	tu_fill(buf, CLU, 4, CLU);
	check(pf_stack_pwrite(s, buf, CLU, CLU) == 0);
	check(pf_stack_snapshot(s, NULL, g2, &why) == 0);
	pf_stack_stat(s, &st);
	check_int(st.unsealed, ==, 1);
	/* g1's child g2 is read-only: a down merge into root.hds */
	check_int(pf_stack_delete_snapshot(s, g1, 0, &mi, &why), ==, 0);
	check(mi.down);
	check(!pf_manifest_exists(dirfd, "root.hds"));
	pf_stack_stat(s, &st);
	check_int(st.unsealed, ==, 1);
	check_int(pf_stack_seal(s, &why), ==, 0);
	check(pf_manifest_exists(dirfd, "root.hds"));
	pf_stack_stat(s, &st);
	check_int(st.unsealed, ==, 0);
	check_int(pf_stack_close(s), ==, 0);
	close(dirfd);
	tu_remove_dir(dir);
	free(dir);
	free(buf);
}

int main(void)
{
	struct pf_csum_alg *a = NULL;
	char *dir;
	int dirfd;

	if (!mkdtemp(root_dir))
		return 1;
	dir = make_image();
	dirfd = open(dir, O_RDONLY | O_DIRECTORY);
	check(dirfd >= 0);
	check(pf_csum_alg_get("sha256", &a, NULL) == 0);
	test_roundtrip_and_verify(dirfd, a);
	test_compose();
	test_parse_rejects(dirfd);
	test_drop(dirfd);
	test_stack_sealing();
	pf_csum_alg_free(a);
	close(dirfd);
	tu_remove_dir(dir);
	rmdir(root_dir);
	free(dir);
	return tap_done();
}
