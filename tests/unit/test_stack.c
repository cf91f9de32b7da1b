// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Unit tests of the stack engine (src/stack.c) on real image directories
 * in a temporary directory: reads and writes at every alignment against
 * an in-memory reference, copy-on-write from snapshots, concurrent first
 * writers of one cluster, discard semantics and the W4 reuse rule, the
 * number of fdatasync calls per flush, the in-use flag, busy images,
 * corrupt images, recovery after a process dies without closing, and a
 * read-only stack that writes nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "delta.h"
#include "descriptor.h"
#include "format.h"
#include "image.h"
#include "io.h"
#include "stack.h"
#include "stack_i.h"
#include "tap.h"
#include "testutil.h"
#include "util.h"

#define KiB (1024ull)
#define MiB (1024ull * KiB)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)

static char tmp_root[] = "/tmp/pf-test-stack.XXXXXX";

static struct pf_stack *open_stack(const char *dir, bool start)
{
	struct pf_stack_opts o = { .dir = dir, .commit_ms = 60000 };

	return tu_open_stack(&o, start, NULL);
}

static uint32_t file_u32(const char *dir, const char *name, uint64_t off)
{
	char path[512];
	uint8_t b[4] = { 0 };
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY);
	if (fd < 0 || pread(fd, b, 4, (off_t)off) != 4)
		tap_diag("cannot read %s", path);
	if (fd >= 0)
		close(fd);
	return pf_le32_get(b);
}

/* Verify the whole disk against @ref. */
static bool disk_equals(struct pf_stack *s, const uint8_t *ref, uint64_t size)
{
	const size_t chunk = 4 * MiB;
	uint8_t *buf = malloc(chunk);
	uint64_t off;
	bool ok = true;

	for (off = 0; off < size && ok; off += chunk) {
		size_t n = size - off < chunk ? (size_t)(size - off) : chunk;

		ok = pf_stack_pread(s, buf, n, off) == 0 &&
		     !memcmp(buf, ref + off, n);
	}
	free(buf);
	return ok;
}

/* Reopen the image (synchronously: no threads) and compare it all. */
static void reopen_and_verify(const char *dir, const uint8_t *ref,
			      uint64_t size)
{
	struct pf_stack *s = open_stack(dir, false);

	check_msg(s && disk_equals(s, ref, size), "%s reads back after reopen",
		  dir);
	if (s)
		check_int(pf_stack_close(s), ==, 0);
}

static void test_read_write_alignments(void)
{
	const uint64_t size = 64 * MiB;
	static const struct {
		uint64_t off;
		size_t len;
	} w[] = {
		{ 0, 4096 },			/* aligned, first cluster */
		{ 4093, 7 },			/* unaligned, tiny */
		{ 1 * MiB - 10, 5000 },		/* straddles a cluster */
		{ 5 * MiB, 1 * MiB },		/* a whole cluster */
		{ 7 * MiB + 512, 3 * MiB },	/* several, unaligned end */
		{ 63 * MiB + 100, 1 * MiB - 100 },	/* up to the end */
		{ 4093, 4 },			/* rewrite in place, unaligned */
		{ 5 * MiB + 8192, 4096 },	/* rewrite in place, aligned */
	};
	uint8_t *ref = calloc(1, size), *buf;
	char *dir = tu_new_image(tmp_root, size, 1 * MiB);
	struct pf_stack *s = open_stack(dir, true);
	size_t i;

	check(s != NULL);
	if (!s) {
		free(ref);
		free(dir);
		return;
	}
	check_int(file_u32(dir, PF_BASE_NAME, 44), ==, PF_INUSE_OPEN);
	for (i = 0; i < PF_ARRAY_SIZE(w); i++) {
		buf = malloc(w[i].len);
		tu_fill(buf, w[i].len, (unsigned)i + 1, w[i].off);
		memcpy(ref + w[i].off, buf, w[i].len);
		check_int(pf_stack_pwrite(s, buf, w[i].len, w[i].off), ==, 0);
		free(buf);
	}
	check(disk_equals(s, ref, size));
	/* unaligned reads, straddling clusters */
	buf = malloc(6000);
	check_int(pf_stack_pread(s, buf, 6000, 1 * MiB - 3001), ==, 0);
	check(!memcmp(buf, ref + 1 * MiB - 3001, 6000));
	free(buf);
	/* out of range */
	check_int(pf_stack_pread(s, ref, 1, size), ==, -EINVAL);
	check_int(pf_stack_pwrite(s, ref, 2, size - 1), ==, -EINVAL);
	check_int(pf_stack_close(s), ==, 0);
	check_int(file_u32(dir, PF_BASE_NAME, 44), ==, PF_INUSE_CLOSED);
	/* CIF_Empty cleared once data exists */
	check_int(file_u32(dir, PF_BASE_NAME, 52) & PF_FLAG_EMPTY, ==, 0);

	reopen_and_verify(dir, ref, size);
	free(ref);
	free(dir);
}

static void test_cow_from_snapshot(void)
{
	const uint64_t size = 16 * MiB;
	uint8_t *ref = calloc(1, size), base_before[64];
	char *dir = tu_new_image(tmp_root, size, 1 * MiB), path[512];
	struct pf_stack_stat st;
	struct pf_stack *s = open_stack(dir, true);
	int fd;

	tu_fill(ref + 2 * MiB, 2 * MiB, 7, 2 * MiB);
	check_int(pf_stack_pwrite(s, ref + 2 * MiB, 2 * MiB, 2 * MiB), ==, 0);
	check_int(pf_stack_close(s), ==, 0);
	tu_snapshot(dir);
	snprintf(path, sizeof(path), "%s/%s", dir, PF_BASE_NAME);
	fd = open(path, O_RDONLY);
	check_int(pread(fd, base_before, 64, 2 * MiB), ==, 64);

	s = open_stack(dir, true);
	check(s != NULL);
	if (!s)
		return;
	/* 4 KiB in the middle of cluster 2, 100 bytes in cluster 3 */
	tu_fill(ref + 2 * MiB + 4096, 4096, 8, 0);
	check_int(pf_stack_pwrite(s, ref + 2 * MiB + 4096, 4096, 2 * MiB + 4096),
		  ==, 0);
	tu_fill(ref + 3 * MiB + 77, 100, 9, 0);
	check_int(pf_stack_pwrite(s, ref + 3 * MiB + 77, 100, 3 * MiB + 77), ==,
		  0);
	check(disk_equals(s, ref, size));
	pf_stack_stat(s, &st);
	check_int(st.deltas, ==, 2);
	check_int(st.top_clusters, ==, 2);
	check_int(pf_stack_close(s), ==, 0);

	/* the lower delta was not written (W5) */
	{
		uint8_t after[64];

		check_int(pread(fd, after, 64, 2 * MiB), ==, 64);
		check(!memcmp(after, base_before, 64));
		check_int(file_u32(dir, PF_BASE_NAME, 44), ==, PF_INUSE_CLOSED);
	}
	close(fd);
	reopen_and_verify(dir, ref, size);
	free(ref);
	free(dir);
}

/* pf_stack_write_waits: in place only where the top has the cluster and
 * the write is aligned. */
static void test_write_waits(void)
{
	const uint64_t size = 16 * MiB;
	char *dir = tu_new_image(tmp_root, size, 1 * MiB);
	struct pf_stack *s = open_stack(dir, false);
	uint8_t *buf = NULL;

	check(s != NULL);
	if (!s || posix_memalign((void **)&buf, 4096, 2 * 4096))
		return;
	tu_fill(buf, 2 * 4096, 11, 0);
	check(pf_stack_write_waits(s, buf, 4096, 0));	/* allocates */
	check_int(pf_stack_pwrite(s, buf, 4096, 0), ==, 0);
	check(!pf_stack_write_waits(s, buf, 4096, 0));
	check(!pf_stack_write_waits(s, buf, 4096, 512 * KiB));
	check(pf_stack_write_waits(s, buf + 1, 4096, 0));	/* buffer */
	check(pf_stack_write_waits(s, buf, 4096, 1));		/* offset */
	check(pf_stack_write_waits(s, buf, 100, 0));		/* length */
	/* the second half lands in cluster 1, not allocated */
	check(pf_stack_write_waits(s, buf, 2 * 4096, 1 * MiB - 4096));
	/* refused at once: no wait */
	check(!pf_stack_write_waits(s, buf, 4096, size));
	check_int(pf_stack_close(s), ==, 0);
	/* after a snapshot the cluster lives below: copy-on-write */
	tu_snapshot(dir);
	s = open_stack(dir, false);
	check(s != NULL);
	if (s) {
		check(pf_stack_write_waits(s, buf, 4096, 0));
		check_int(pf_stack_pwrite(s, buf, 4096, 0), ==, 0);
		check(!pf_stack_write_waits(s, buf, 4096, 0));
		check_int(pf_stack_close(s), ==, 0);
	}
	free(buf);
	free(dir);
}

struct writer {
	struct pf_stack *s;
	pthread_barrier_t *go;
	uint64_t off;
	unsigned seed;
	int ret;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint8_t buf[4096];

	tu_fill(buf, sizeof(buf), w->seed, w->off);
	pthread_barrier_wait(w->go);
	w->ret = pf_stack_pwrite(w->s, buf, sizeof(buf), w->off);
	return NULL;
}

/* Many first writers of one cluster that lives in a lower delta:
 * one allocation, nobody's data lost. */
static void test_concurrent_first_writers(void)
{
	enum { N = 16 };
	const uint64_t size = 16 * MiB, c5 = 5 * MiB;
	uint8_t *ref = calloc(1, size);
	char *dir = tu_new_image(tmp_root, size, 1 * MiB);
	struct writer w[N];
	pthread_t th[N];
	pthread_barrier_t go;
	struct pf_stack_stat st;
	struct pf_stack *s = open_stack(dir, true);
	int i;

	tu_fill(ref + c5, 1 * MiB, 3, c5);
	check_int(pf_stack_pwrite(s, ref + c5, 1 * MiB, c5), ==, 0);
	check_int(pf_stack_close(s), ==, 0);
	tu_snapshot(dir);
	s = open_stack(dir, true);
	if (!s) {
		check(0);
		return;
	}
	pthread_barrier_init(&go, NULL, N);
	for (i = 0; i < N; i++) {
		w[i] = (struct writer){ s, &go, c5 + (uint64_t)i * 8192 + 4096,
					(unsigned)(100 + i), -1 };
		tu_fill(ref + w[i].off, 4096, w[i].seed, w[i].off);
		pthread_create(&th[i], NULL, writer_main, &w[i]);
	}
	for (i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		check_int(w[i].ret, ==, 0);
	}
	pthread_barrier_destroy(&go);
	pf_stack_stat(s, &st);
	check_int(st.top_clusters, ==, 1);
	check(disk_equals(s, ref, size));
	check_int(pf_stack_close(s), ==, 0);
	reopen_and_verify(dir, ref, size);
	free(ref);
	free(dir);
}

/* BAT entry of @idx in the top (only) delta, from the file. */
static uint32_t bat_of(const char *dir, uint32_t idx)
{
	return file_u32(dir, PF_BASE_NAME, pf_idx_entry_off(idx));
}

static void test_discard_single_delta_and_w4(void)
{
	const uint64_t size = 32 * MiB;
	uint8_t *ref = calloc(1, size);
	char *dir = tu_new_image(tmp_root, size, 1 * MiB);
	struct pf_stack *s = open_stack(dir, true);
	struct pf_stack_stat st;
	uint32_t clu3, clu4;

	tu_fill(ref, size, 11, 0);
	check_int(pf_stack_pwrite(s, ref + 3 * MiB, 2 * MiB, 3 * MiB), ==, 0);
	check_int(pf_stack_flush(s), ==, 0);
	check_int(pf_stack_close(s), ==, 0);
	clu3 = bat_of(dir, 3);
	clu4 = bat_of(dir, 4);
	check_int(clu3, !=, 0);
	check_int(clu4, !=, 0);
	memset(ref, 0, size);
	tu_fill(ref + 4 * MiB, 1 * MiB, 11, 4 * MiB);

	s = open_stack(dir, true);
	/* W4: unmapped but not committed: must not be reused yet */
	check_int(pf_stack_discard(s, 3 * MiB, 1 * MiB), ==, 0);
	tu_fill(ref + 9 * MiB, 1 * MiB, 12, 9 * MiB);
	check_int(pf_stack_pwrite(s, ref + 9 * MiB, 1 * MiB, 9 * MiB), ==, 0);
	pf_stack_stat(s, &st);
	check_int(st.top_clusters, ==, 2);
	check_int(st.free_clusters, ==, 0);
	check(disk_equals(s, ref, size));
	/* after the commit the cluster is free, and reused */
	check_int(pf_stack_flush(s), ==, 0);
	pf_stack_stat(s, &st);
	check_int(st.free_clusters, ==, 1);
	tu_fill(ref + 12 * MiB, 4096, 13, 12 * MiB);
	check_int(pf_stack_pwrite(s, ref + 12 * MiB, 4096, 12 * MiB), ==, 0);
	check(disk_equals(s, ref, size));
	/* partial discard zeroes exactly its range */
	memset(ref + 4 * MiB + 1000, 0, 5000);
	check_int(pf_stack_discard(s, 4 * MiB + 1000, 5000), ==, 0);
	check(disk_equals(s, ref, size));
	check_int(pf_stack_close(s), ==, 0);
	check_int(bat_of(dir, 3), ==, 0);
	check_int(bat_of(dir, 9), !=, clu3);	/* not reused before commit */
	check_int(bat_of(dir, 12), ==, clu3);	/* reused after it */
	check_int(bat_of(dir, 4), ==, clu4);
	reopen_and_verify(dir, ref, size);
	free(ref);
	free(dir);
}

/* DIS-1: punching over snapshot data reads zeros, never the old data. */
static void test_discard_over_snapshot(void)
{
	const uint64_t size = 16 * MiB;
	uint8_t *ref = calloc(1, size);
	char *dir = tu_new_image(tmp_root, size, 1 * MiB);
	struct pf_stack *s = open_stack(dir, true);
	struct pf_stack_stat st;

	tu_fill(ref, 4 * MiB, 21, 0);
	check_int(pf_stack_pwrite(s, ref, 4 * MiB, 0), ==, 0);
	check_int(pf_stack_close(s), ==, 0);
	tu_snapshot(dir);
	s = open_stack(dir, true);
	/* cluster 1: only in the lower delta; cluster 2: also in the top */
	tu_fill(ref + 2 * MiB, 4096, 22, 0);
	check_int(pf_stack_pwrite(s, ref + 2 * MiB, 4096, 2 * MiB), ==, 0);
	check_int(pf_stack_discard(s, 1 * MiB, 2 * MiB), ==, 0);
	memset(ref + 1 * MiB, 0, 2 * MiB);
	check(disk_equals(s, ref, size));
	check_int(pf_stack_flush(s), ==, 0);
	pf_stack_stat(s, &st);
	check_int(st.top_clusters, ==, 2);	/* both shadow the snapshot */
	check_int(pf_stack_close(s), ==, 0);
	reopen_and_verify(dir, ref, size);
	free(ref);
	free(dir);
}

/* Group commit cost: two fdatasyncs when BAT pages are dirty, one when
 * not (W1 then W3). */
static void test_flush_datasyncs(void)
{
	char *dir = tu_new_image(tmp_root, 16 * MiB, 1 * MiB);
	struct pf_stack *s = open_stack(dir, true);
	struct pf_stack_stat a, b;
	uint8_t buf[4096];

	tu_fill(buf, sizeof(buf), 31, 0);
	check_int(pf_stack_pwrite(s, buf, sizeof(buf), 0), ==, 0);
	pf_stack_stat(s, &a);
	check_int(a.dirty_pages, ==, 1);
	check_int(pf_stack_flush(s), ==, 0);
	pf_stack_stat(s, &b);
	check_u64(b.datasyncs - a.datasyncs, ==, 2);
	check_int(b.dirty_pages, ==, 0);
	check_u64(b.commits - a.commits, ==, 1);
	check_int(pf_stack_pwrite(s, buf, sizeof(buf), 8192), ==, 0);
	check_int(pf_stack_flush(s), ==, 0);
	pf_stack_stat(s, &a);
	check_u64(a.datasyncs - b.datasyncs, ==, 1);
	check_int(pf_stack_close(s), ==, 0);
	free(dir);
}

/*
 * W3 under group commit: threads each write a fresh cluster and
 * flush.  When a flush returns, the BAT entry of its cluster must be on
 * disk (read behind the stack's back), whichever thread ran the commit
 * that covered it.  A flush answered by a commit that began before its
 * write, or by a commit that skipped the data sync, fails here.
 */
#define FLUSHERS	6
#define FLUSH_ROUNDS	40

struct flusher {
	struct pf_stack *s;
	const char *path;
	unsigned id;
	unsigned bad;
};

static void *flusher_main(void *arg)
{
	struct flusher *f = arg;
	uint8_t buf[4096], b[4];
	unsigned r;
	int fd = open(f->path, O_RDONLY);

	if (fd < 0) {
		f->bad++;
		return NULL;
	}
	for (r = 0; r < FLUSH_ROUNDS; r++) {
		uint32_t idx = r * FLUSHERS + f->id;

		tu_fill(buf, sizeof(buf), idx, 0);
		if (pf_stack_pwrite(f->s, buf, sizeof(buf), (uint64_t)idx * MiB) ||
		    pf_stack_flush(f->s) ||
		    pread(fd, b, 4, (off_t)pf_idx_entry_off(idx)) != 4 ||
		    !pf_le32_get(b))
			f->bad++;
	}
	close(fd);
	return NULL;
}

static void test_concurrent_flushes(void)
{
	char *dir = tu_new_image(tmp_root, FLUSHERS * FLUSH_ROUNDS * MiB, 1 * MiB);
	struct pf_stack *s = open_stack(dir, true);
	struct flusher f[FLUSHERS];
	pthread_t t[FLUSHERS];
	struct pf_stack_stat st;
	char path[512];
	unsigned i, bad = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, PF_BASE_NAME);
	for (i = 0; i < FLUSHERS; i++) {
		f[i] = (struct flusher){ .s = s, .path = path, .id = i };
		check_int(pthread_create(&t[i], NULL, flusher_main, &f[i]), ==, 0);
	}
	for (i = 0; i < FLUSHERS; i++) {
		pthread_join(t[i], NULL);
		bad += f[i].bad;
	}
	check_msg(bad == 0, "every flush found its BAT entry on disk (%u not)",
		  bad);
	pf_stack_stat(s, &st);
	check_int(st.dirty_pages, ==, 0);
	/* at most two data syncs per flush; fewer when commits are shared */
	check_u64(st.datasyncs, <=, 2ull * FLUSHERS * FLUSH_ROUNDS);
	check_int(pf_stack_close(s), ==, 0);
	free(dir);
}

/*
 * W4 against a write racing the commit: a cluster unmapped by a discard
 * must not be handed to a new write until the BAT page that unmaps it is
 * durable.  The crash point after the BAT page write (before its
 * fdatasync) lets another thread allocate right then; it must get a
 * fresh cluster, else a power cut at that moment would leave the old
 * mapping pointing at the new write's data.
 */
struct w4_race {
	struct pf_stack *s;
	const uint8_t *data;
	sem_t go, done;
	bool armed;
	int ret;
};

static void w4_hook(void *ctx, const char *name)
{
	struct w4_race *r = ctx;

	if (!r->armed || strcmp(name, "commit.bat-page-written"))
		return;
	r->armed = false;
	sem_post(&r->go);	/* the writer runs while the commit waits */
	while (sem_wait(&r->done))
		;
}

static void *w4_writer(void *arg)
{
	struct w4_race *r = arg;

	while (sem_wait(&r->go))
		;
	r->ret = pf_stack_pwrite(r->s, r->data, 1 * MiB, 9 * MiB);
	sem_post(&r->done);
	return NULL;
}

static void test_w4_write_racing_commit(void)
{
	const uint64_t size = 32 * MiB;
	uint8_t *ref = calloc(1, size);
	char *dir = tu_new_image(tmp_root, size, 1 * MiB);
	struct pf_stack *s = open_stack(dir, true);
	struct w4_race r = { .ret = -1 };
	struct pf_stack_opts o = { .dir = dir, .commit_ms = 60000,
				   .crash_point = w4_hook,
				   .crash_point_ctx = &r };
	struct pf_why why = { "" };
	pthread_t t;
	uint32_t clu3;

	tu_fill(ref + 3 * MiB, 1 * MiB, 21, 3 * MiB);
	check_int(pf_stack_pwrite(s, ref + 3 * MiB, 1 * MiB, 3 * MiB), ==, 0);
	check_int(pf_stack_close(s), ==, 0);
	clu3 = bat_of(dir, 3);
	check_int(clu3, !=, 0);

	check_int(pf_stack_open(&o, &s, &why), ==, 0);
	check_int(pf_stack_start(s), ==, 0);
	sem_init(&r.go, 0, 0);
	sem_init(&r.done, 0, 0);
	r.s = s;
	memset(ref + 3 * MiB, 0, 1 * MiB);
	tu_fill(ref + 9 * MiB, 1 * MiB, 22, 9 * MiB);
	r.data = ref + 9 * MiB;
	check_int(pthread_create(&t, NULL, w4_writer, &r), ==, 0);
	check_int(pf_stack_discard(s, 3 * MiB, 1 * MiB), ==, 0);
	r.armed = true;
	check_int(pf_stack_flush(s), ==, 0);	/* the writer runs inside */
	pthread_join(t, NULL);
	check_int(r.ret, ==, 0);
	check(!r.armed);
	check(disk_equals(s, ref, size));
	check_int(pf_stack_close(s), ==, 0);
	check_int(bat_of(dir, 3), ==, 0);
	check_int(bat_of(dir, 9), !=, 0);
	check_msg(bat_of(dir, 9) != clu3,
		  "the unmapped cluster is not reused before the unmapping is durable");
	sem_destroy(&r.go);
	sem_destroy(&r.done);
	reopen_and_verify(dir, ref, size);
	free(ref);
	free(dir);
}

static void test_busy_and_corrupt(void)
{
	char *dir = tu_new_image(tmp_root, 16 * MiB, 1 * MiB), path[512];
	struct pf_stack_opts o = { .dir = dir };
	struct pf_why why = { "" };
	struct pf_stack *s = open_stack(dir, true), *s2 = NULL;
	uint8_t b[4];
	int fd;

	check_int(pf_stack_open(&o, &s2, &why), ==, -EBUSY);
	check(strstr(why.msg, "busy") != NULL);
	check_int(pf_stack_close(s), ==, 0);

	/* a BAT entry past the end of the file */
	snprintf(path, sizeof(path), "%s/%s", dir, PF_BASE_NAME);
	fd = open(path, O_WRONLY);
	pf_le32_put(b, 99);
	check_int(pwrite(fd, b, 4, (off_t)pf_idx_entry_off(3)), ==, 4);
	close(fd);
	why.msg[0] = 0;
	check_int(pf_stack_open(&o, &s2, &why), ==, -EUCLEAN);
	check(strstr(why.msg, "beyond the end") != NULL);
	/* refused without a change: in-use flag still clear */
	check_int(file_u32(dir, PF_BASE_NAME, 44), ==, PF_INUSE_CLOSED);
	free(dir);
}

/* A process that dies without closing (kill -9): flushed data survives,
 * the rest is either there or not, never garbage; the next open
 * recovers (W8) and leaves a clean image. */
static void test_recovery_after_process_death(void)
{
	const uint64_t size = 32 * MiB;
	char *dir = tu_new_image(tmp_root, size, 1 * MiB);
	uint8_t *a = malloc(4 * MiB), *b = malloc(1 * MiB), *got;
	struct pf_check_report r = { 0 };
	struct pf_delta *d = NULL;
	struct pf_why why = { "" };
	struct pf_stack *s;
	pid_t pid;
	int status, fd;
	size_t i;
	bool legal = true;

	tu_fill(a, 4 * MiB, 41, 0);
	tu_fill(b, 1 * MiB, 42, 10 * MiB);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		s = open_stack(dir, true);
		if (!s || pf_stack_pwrite(s, a, 4 * MiB, 0) ||
		    pf_stack_flush(s) || pf_stack_pwrite(s, b, 1 * MiB, 10 * MiB))
			_exit(1);
		_exit(0);	/* no close: the in-use flag stays set */
	}
	waitpid(pid, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	check_int(file_u32(dir, PF_BASE_NAME, 44), ==, PF_INUSE_OPEN);

	s = open_stack(dir, true);
	check(s != NULL);
	if (!s)
		return;
	got = malloc(4 * MiB);
	check_int(pf_stack_pread(s, got, 4 * MiB, 0), ==, 0);
	check(!memcmp(got, a, 4 * MiB));
	check_int(pf_stack_pread(s, got, 1 * MiB, 10 * MiB), ==, 0);
	for (i = 0; i < 1 * MiB; i += 512) {
		static const uint8_t z[512];

		if (memcmp(got + i, b + i, 512) && memcmp(got + i, z, 512))
			legal = false;
	}
	check_msg(legal, "unflushed sectors hold their new value or zeros");
	check_int(pf_stack_close(s), ==, 0);

	fd = open(dir, O_RDONLY | O_DIRECTORY);
	check_int(pf_delta_open(fd, PF_BASE_NAME, 0, NULL, &d, &why), ==, 0);
	if (d) {
		check_int(pf_check_delta(d, &r), ==, 0);
		check_int(r.count[PF_FIND_CORRUPT], ==, 0);
		check_int(r.count[PF_FIND_UNCLEAN], ==, 0);
		check_int(r.count[PF_FIND_LEAK], ==, 0);
		pf_delta_close(d);
	}
	close(fd);
	free(a);
	free(b);
	free(got);
	free(dir);
}

/* The whole of file @name of @dir, and its size and times, into @out
 * (malloc'ed; *@len bytes). */
static void file_state(const char *dir, const char *name, uint8_t **out,
		       size_t *len, struct stat *st)
{
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY);
	*out = NULL;
	*len = 0;
	if (fd < 0 || fstat(fd, st) < 0) {
		tap_diag("cannot stat %s", path);
	} else {
		*len = (size_t)st->st_size;
		*out = malloc(*len + 1);
		if (!*out || pread(fd, *out, *len, 0) != (ssize_t)*len)
			tap_diag("cannot read %s", path);
	}
	if (fd >= 0)
		close(fd);
}

/* A read-only stack (ploopfs -o ro) of an image that was not closed
 * cleanly: serves the committed data, recovered in memory; refuses
 * writes, discards and structural commands with EROFS; holds the lock
 * shared; and leaves the delta file as it found it, bytes and times,
 * for the next read-write open to recover. */
static void test_read_only(void)
{
	const uint64_t size = 32 * MiB;
	char *dir = tu_new_image(tmp_root, size, 1 * MiB);
	struct pf_stack_opts o = { .dir = dir, .read_only = true };
	struct pf_stack_opts rw = { .dir = dir };
	uint8_t *a = malloc(4 * MiB), *got = malloc(4 * MiB);
	uint8_t *before = NULL, *after = NULL;
	size_t n_before, n_after;
	struct stat st0, st1;
	struct pf_stack_merge_info mi;
	struct pf_stack_stat ss;
	struct pf_why why = { "" };
	char guid[PF_GUID_LEN + 1];
	struct pf_stack *s, *s2 = NULL;
	pid_t pid;
	int status, fd;

	tu_fill(a, 4 * MiB, 61, 0);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		s = open_stack(dir, true);
		if (!s || pf_stack_pwrite(s, a, 4 * MiB, 0) || pf_stack_flush(s))
			_exit(1);
		_exit(0);	/* no close: in use, preallocated tail */
	}
	waitpid(pid, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	check_int(file_u32(dir, PF_BASE_NAME, 44), ==, PF_INUSE_OPEN);
	file_state(dir, PF_BASE_NAME, &before, &n_before, &st0);

	s = tu_open_stack(&o, true, NULL);
	check(s != NULL);
	if (!s)
		goto out;
	check(!s->top->d->writable);
	check_int(pf_stack_pread(s, got, 4 * MiB, 0), ==, 0);
	check(!memcmp(got, a, 4 * MiB));
	check_int(pf_stack_pwrite(s, a, 4096, 0), ==, -EROFS);
	check_int(pf_stack_discard(s, 0, 1 * MiB), ==, -EROFS);
	check_int(pf_stack_flush(s), ==, 0);
	check_int(pf_stack_snapshot(s, NULL, guid, &why), ==, -EROFS);
	check(strstr(why.msg, "read-only") != NULL);
	check_int(pf_stack_delete_snapshot(s, PF_TOP_GUID, 0, &mi, &why), ==,
		  -EROFS);
	pf_stack_stat(s, &ss);
	check(ss.read_only);
	check_u64(ss.file_clusters, ==, 5);	/* header + 4: the recovered head */
	check_u64(ss.top_clusters, ==, 4);
	check_u64(ss.datasyncs, ==, 0);
	/* shared: readers may lock it too, writers are busy */
	fd = open(dir, O_RDONLY | O_DIRECTORY);
	check_int(pf_lock(fd, false), ==, 0);
	close(fd);
	check_int(pf_stack_open(&rw, &s2, &why), ==, -EBUSY);
	check_int(pf_stack_close(s), ==, 0);

	file_state(dir, PF_BASE_NAME, &after, &n_after, &st1);
	check_u64(n_after, ==, n_before);
	check(before && after && n_after == n_before &&
	      !memcmp(before, after, n_before));
	check(st1.st_mtim.tv_sec == st0.st_mtim.tv_sec &&
	      st1.st_mtim.tv_nsec == st0.st_mtim.tv_nsec);
	check(st1.st_ctim.tv_sec == st0.st_ctim.tv_sec &&
	      st1.st_ctim.tv_nsec == st0.st_ctim.tv_nsec);

	/* the real recovery is left to a read-write open */
	s = open_stack(dir, true);
	check(s != NULL);
	if (s) {
		pf_stack_stat(s, &ss);
		check_u64(ss.file_clusters, ==, 5);
		check_int(pf_stack_close(s), ==, 0);
	}
	check_int(file_u32(dir, PF_BASE_NAME, 44), ==, PF_INUSE_CLOSED);
out:
	free(before);
	free(after);
	free(a);
	free(got);
	free(dir);
}

/* Sizes that are not a cluster multiple, tiny images, 16 TiB. */
static void test_odd_sizes(void)
{
	static const struct {
		uint64_t size;
		uint32_t cluster;
	} t[] = {
		{ 1536 * KiB, 1 * MiB },	/* 1.5 clusters */
		{ 64 * KiB, 64 * KiB },		/* 1 cluster */
		{ 65 * 64 * KiB, 64 * KiB },	/* 65 clusters */
		{ 16 * TiB, 1 * MiB },
	};
	size_t i;

	for (i = 0; i < PF_ARRAY_SIZE(t); i++) {
		char *dir = tu_new_image(tmp_root, t[i].size, t[i].cluster);
		struct pf_stack *s = open_stack(dir, true);
		uint8_t w[8192], r[8192];
		uint64_t offs[3] = { 0, t[i].size / 2 - 100,
				     t[i].size - sizeof(w) };
		size_t j;

		check(s != NULL);
		if (!s)
			continue;
		for (j = 0; j < 3; j++) {
			tu_fill(w, sizeof(w), (unsigned)(50 + j), offs[j]);
			check_int(pf_stack_pwrite(s, w, sizeof(w), offs[j]), ==, 0);
		}
		check_int(pf_stack_close(s), ==, 0);
		s = open_stack(dir, true);
		for (j = 0; s && j < 3; j++) {
			tu_fill(w, sizeof(w), (unsigned)(50 + j), offs[j]);
			check_int(pf_stack_pread(s, r, sizeof(r), offs[j]), ==, 0);
			check_msg(!memcmp(w, r, sizeof(w)), "size %llu offset %llu",
				  (unsigned long long)t[i].size,
				  (unsigned long long)offs[j]);
		}
		/* the last, possibly partial, cluster discards whole */
		if (s) {
			check_int(pf_stack_discard(s, t[i].size - sizeof(w),
						   sizeof(w)), ==, 0);
			check_int(pf_stack_pread(s, r, sizeof(r),
						 t[i].size - sizeof(r)), ==, 0);
			memset(w, 0, sizeof(w));
			check(!memcmp(w, r, sizeof(r)));
			check_int(pf_stack_close(s), ==, 0);
		}
		free(dir);
	}
}


/*
 * A thread with its own I/O engine (io.h; a FUSE io_uring queue thread)
 * completes its requests only when it gets back to its loop, or when the
 * stack is about to make it sleep (pf_aio_wait).  Here the engine
 * completes nothing on its own: a stack that put the thread to sleep on
 * a range lock or a freeze held by the thread's own request would hang,
 * and the alarm fails the test.
 */
struct lazy_io {
	struct pf_aio_req *r;
	bool write;
	int fd;
	void *buf;
	size_t len;
	uint64_t off;
};

struct lazy_engine {
	struct lazy_io q[16];
	unsigned n, drains, taken;
};

static int lazy_submit(void *ctx, struct pf_aio_req *r, bool write, int fd,
		       void *buf, size_t len, uint64_t off)
{
	struct lazy_engine *e = ctx;

	if (e->n == 16)
		return -EBUSY;
	e->q[e->n++] = (struct lazy_io){ r, write, fd, buf, len, off };
	e->taken++;
	return 0;
}

static void lazy_drain(void *ctx)
{
	struct lazy_engine *e = ctx;
	unsigned i, n = e->n;

	e->drains++;
	e->n = 0;
	for (i = 0; i < n; i++) {
		struct lazy_io *io = &e->q[i];
		ssize_t res = io->write ? pwrite(io->fd, io->buf, io->len,
						 (off_t)io->off) :
					  pread(io->fd, io->buf, io->len,
						(off_t)io->off);

		pf_aio_engine_done(io->r, res < 0 ? -errno : res);
	}
}

static bool lazy_idle(void *ctx)
{
	const struct lazy_engine *e = ctx;

	return !e->n;
}

static void hang_alarm(int sig)
{
	static const char msg[] =
		"\nnot ok - the engine's thread waited on its own request\n";

	(void)sig;
	if (write(1, msg, sizeof(msg) - 1) < 0)
		_exit(2);
	_exit(1);
}

struct done_rec {
	int calls, err;
};

static void done_note(void *arg, int err)
{
	struct done_rec *d = arg;

	d->calls++;
	d->err = err;
}

struct snap_thread {
	struct pf_stack *s;
	int ret;
};

static void *snap_main(void *arg)
{
	struct snap_thread *t = arg;
	char guid[PF_GUID_LEN + 1];
	struct pf_why why = { "" };

	t->ret = pf_stack_snapshot(t->s, NULL, guid, &why);
	return NULL;
}

static void test_engine_never_waits_on_itself(void)
{
	const uint64_t size = 4 * MiB;
	char *dir = tu_new_image(tmp_root, size, 1 * MiB);
	struct pf_stack *s = open_stack(dir, true);
	struct lazy_engine le = { .n = 0 };
	const struct pf_aio_engine eng = { lazy_submit, lazy_drain, lazy_idle,
					   &le };
	uint8_t *a = aligned_alloc(4096, 4096), *b = aligned_alloc(4096, 4096);
	uint8_t *back = aligned_alloc(4096, 4096);
	struct done_rec d1 = { 0, 0 }, d2 = { 0, 0 }, d3 = { 0, 0 };
	struct snap_thread st = { s, -1 };
	struct pf_stack_stat stat;
	pthread_t t;

	tu_fill(a, 4096, 1, 0);
	tu_fill(b, 4096, 2, 0);
	/* allocate the cluster first: only in-place writes are async */
	check_int(pf_stack_pwrite(s, a, 4096, 8192), ==, 0);
	signal(SIGALRM, hang_alarm);
	alarm(20);
	pf_aio_use_engine(&eng);
	pf_stack_batch(s, true);	/* never the synchronous shortcut */

	/* 1: a write to the block the engine still holds a write to */
	pf_stack_write(s, a, 4096, 8192, done_note, &d1);
	check_msg(le.n == 1 && d1.calls == 0, "the engine holds the write");
	pf_stack_write(s, b, 4096, 8192, done_note, &d2);
	check_msg(d1.calls == 1 && d1.err == 0,
		  "the overlapping write completed the held one first");
	check_msg(le.drains >= 1 && le.n == 1 && d2.calls == 0,
		  "then went to the engine itself");

	/* 2: a write arriving while a snapshot waits for the held one */
	check_int(pthread_create(&t, NULL, snap_main, &st), ==, 0);
	do {
		sched_yield();
		pf_stack_stat(s, &stat);
	} while (!stat.frozen);
	pf_stack_write(s, a, 4096, 0, done_note, &d3);
	pthread_join(t, NULL);
	check_int(st.ret, ==, 0);
	check_msg(d2.calls == 1 && d2.err == 0,
		  "the freeze got the held write completed");
	lazy_drain(&le);
	check_msg(d3.calls == 1 && d3.err == 0,
		  "the write that met the freeze went on after it");

	pf_stack_batch(s, false);
	pf_aio_use_engine(NULL);
	alarm(0);
	/* the third was the new top's first write there: a synchronous
	 * copy-up, not the engine's */
	check_msg(le.taken == 2, "the engine took the two in-place writes (%u)",
		  le.taken);
	check_int(pf_stack_pread(s, back, 4096, 8192), ==, 0);
	check_msg(!memcmp(back, b, 4096), "the later write won");
	check_int(pf_stack_pread(s, back, 4096, 0), ==, 0);
	check_msg(!memcmp(back, a, 4096), "the write after the freeze landed");
	check_int(pf_stack_close(s), ==, 0);
	free(a);
	free(b);
	free(back);
	free(dir);
}

/*
 * The state checker of debug builds (stack_check_state): a stack whose
 * fields disagree is stopped at the next transition.  In a child, one
 * field is broken at a time; the child must die of SIGABRT.
 */
#ifdef PF_DEBUG
static void break_head(struct pf_stack *s)
{
	s->alloc_head = 0;	/* below the header clusters */
}

static void break_dirty(struct pf_stack *s)
{
	s->n_dirty = 1;		/* a dirty page the bitmap does not have */
}

static void break_map(struct pf_stack *s)
{
	level_store(s, 3, 0);	/* level 0 does not map cluster 3 */
}

static void test_state_checker(void)
{
	static void (*const breaks[])(struct pf_stack *) = {
		break_head, break_dirty, break_map
	};
	char *dir = tu_new_image(tmp_root, 8 * MiB, 1 * MiB);
	size_t i;

	for (i = 0; i < PF_ARRAY_SIZE(breaks); i++) {
		pid_t pid = fork();
		int st = 0;

		if (pid == 0) {
			struct pf_stack *s = open_stack(dir, false);

			if (!s)
				_exit(2);
			stack_check_state(s, "test, intact");
			breaks[i](s);
			stack_check_state(s, "test, broken");
			_exit(0);	/* not caught */
		}
		check(pid > 0 && waitpid(pid, &st, 0) == pid);
		check_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT,
			  "break %zu: the checker stops the stack (status %#x)",
			  i, st);
	}
	free(dir);
}
#endif

int main(void)
{
	char cmd[600];

	if (!mkdtemp(tmp_root)) {
		perror("mkdtemp");
		return 1;
	}
	test_read_write_alignments();
	test_cow_from_snapshot();
	test_write_waits();
	test_concurrent_first_writers();
	test_discard_single_delta_and_w4();
	test_discard_over_snapshot();
	test_flush_datasyncs();
	test_concurrent_flushes();
	test_w4_write_racing_commit();
	test_busy_and_corrupt();
	test_recovery_after_process_death();
	test_read_only();
	test_odd_sizes();
	test_engine_never_waits_on_itself();
#ifdef PF_DEBUG
	test_state_checker();
#endif
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_root);
	if (system(cmd) != 0)
		tap_diag("cannot remove %s", tmp_root);
	return tap_done();
}
