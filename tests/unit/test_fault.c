// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Fault injection (W7): EIO on the k-th data write, BAT/header write, any
 * write or fdatasync of the top delta, for every k that a fixed workload
 * reaches.  The stack runs as in the daemon (started: libaio, writeback
 * thread, O_DIRECT where the host allows it), and the workload has writes
 * in flight together, so faults also come back on the completion thread.
 * After the fault the image must be in the sticky failed state: writes
 * and flushes fail with EIO, reads still serve the data, the in-use flag
 * stays set; a remount recovers the last committed state -- everything
 * flushed before the fault reads back, everything else holds its old or
 * its new value -- and no delta is corrupt.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "delta.h"
#include "format.h"
#include "image.h"
#include "io_fault.h"
#include "stack.h"
#include "tap.h"
#include "testutil.h"
#include "util.h"

#define MiB (1024ull * 1024)
#define SIZE (16 * MiB)
#define SECTOR 512

static char tmp_root[] = "/tmp/pf-test-fault.XXXXXX";
static int n_dirs;

static struct pf_stack *open_with(const char *dir,
				  const struct pf_file_factory *f, int *err)
{
	struct pf_stack_opts o = { .dir = dir, .commit_ms = 60000,
				   .factory = f };

	return tu_open_stack(&o, true, err);
}

static uint32_t in_use_of(const char *dir)
{
	char path[512];
	uint8_t b[4] = { 0 };
	int fd;

	snprintf(path, sizeof(path), "%s/" PF_BASE_NAME, dir);
	fd = open(path, O_RDONLY);
	if (fd < 0 || pread(fd, b, 4, 44) != 4)
		tap_diag("cannot read %s", path);
	if (fd >= 0)
		close(fd);
	return pf_le32_get(b);
}

static bool no_corruption(const char *dir, bool clean)
{
	struct pf_check_report r = { 0 };
	struct pf_why why = { "" };
	struct pf_delta *d = NULL;
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	bool ok = pf_delta_open(fd, PF_BASE_NAME, 0, NULL, &d, &why) == 0 &&
		  pf_check_delta(d, &r) == 0 && !r.count[PF_FIND_CORRUPT] &&
		  (!clean || !r.count[PF_FIND_UNCLEAN]);

	pf_delta_close(d);
	close(fd);
	return ok;
}

/* The workload: each cluster is written at most once between flushes,
 * so a sector may hold only its durable or its newest value. */
struct state {
	uint8_t *durable, *latest;
};

static int step_write(struct pf_stack *s, struct state *st, uint64_t off,
		      uint64_t len, unsigned seed)
{
	tu_fill(st->latest + off, len, seed, off);
	return pf_stack_pwrite(s, st->latest + off, len, off);
}

static int step_flush(struct pf_stack *s, struct state *st)
{
	int ret = pf_stack_flush(s);

	if (!ret)
		memcpy(st->durable, st->latest, SIZE);
	return ret;
}

static int step_discard(struct pf_stack *s, struct state *st, uint64_t off,
			uint64_t len)
{
	memset(st->latest + off, 0, len);
	return pf_stack_discard(s, off, len);
}

/* Writes in flight together: @n pieces of @len bytes every @stride from
 * @off, submitted as one batch (libaio), then waited for. */
static int step_burst(struct pf_stack *s, struct state *st, uint64_t off,
		      unsigned n, uint64_t len, uint64_t stride, unsigned seed)
{
	uint8_t *bufs[16];
	size_t lens[16];
	uint64_t offs[16];
	struct tu_burst b;
	unsigned i;

	if (n > 16)
		abort();
	for (i = 0; i < n; i++) {
		offs[i] = off + i * stride;
		lens[i] = len;
		bufs[i] = st->latest + offs[i];
		tu_fill(bufs[i], len, seed + i, offs[i]);
	}
	tu_burst_submit(&b, s, n, bufs, lens, offs);
	return tu_burst_wait(&b);
}

/* Runs the workload until the first error; returns that error or 0. */
static int workload(struct pf_stack *s, struct state *st)
{
	int ret;

	if ((ret = step_write(s, st, 2 * MiB, 4 * MiB, 2)) ||	/* 2,3 in place; 4,5 new */
	    (ret = step_flush(s, st)) ||
	    /* 16 in place in clusters 0-3, in flight together */
	    (ret = step_burst(s, st, 64 * 1024, 16, 4096, 256 * 1024, 20)) ||
	    (ret = step_write(s, st, 8 * MiB, 1 * MiB, 3)) ||
	    (ret = step_write(s, st, 4 * MiB + 4096, 8192, 4)) ||
	    (ret = step_write(s, st, 12 * MiB + 100 * SECTOR, 3 * SECTOR, 5)) ||
	    (ret = step_flush(s, st)) ||
	    (ret = step_discard(s, st, 5 * MiB, 1 * MiB)) ||
	    (ret = step_write(s, st, 10 * MiB, 1 * MiB, 6)) ||
	    (ret = step_flush(s, st)))
		return ret;
	return 0;
}

static bool recovered_legally(struct pf_stack *s, const struct state *st)
{
	uint8_t *buf = malloc(SIZE);
	bool ok = pf_stack_pread(s, buf, SIZE, 0) == 0;
	size_t i;

	for (i = 0; ok && i < SIZE; i += SECTOR)
		if (memcmp(buf + i, st->durable + i, SECTOR) &&
		    memcmp(buf + i, st->latest + i, SECTOR)) {
			tap_diag("sector %zu holds neither its durable nor its new value",
				 i / SECTOR);
			ok = false;
		}
	free(buf);
	return ok;
}

static const char *kind_name[] = { "data write", "BAT/header write",
				   "write", "fdatasync" };

/* One run with the fault at the @nth operation of @kind; false once the
 * workload no longer reaches it. */
static bool run(enum fault_kind kind, unsigned nth)
{
	struct state st = { calloc(1, SIZE), calloc(1, SIZE) };
	struct pf_why why = { "" };
	struct fault_plan plan;
	struct pf_stack_stat ss;
	struct pf_header h;
	struct pf_stack *s;
	char dir[300];
	uint8_t probe[4096];
	int err, ret;
	bool fired;

	snprintf(dir, sizeof(dir), "%s/i%d", tmp_root, n_dirs++);
	tu_make_image(dir, SIZE, 1 * MiB);
	if (pf_header_init(&h, SIZE, 1 * MiB, &why))
		abort();

	/* committed history: clusters 0-3 */
	s = open_with(dir, NULL, &err);
	if (!s || step_write(s, &st, 0, 4 * MiB, 1) || step_flush(s, &st) ||
	    pf_stack_close(s))
		abort();

	fault_plan_init(&plan, kind, nth, -EIO, pf_meta_bytes(&h));
	s = open_with(dir, &plan.factory, &err);
	if (!s) {
		/* the open's own header write or sync failed */
		check_msg(plan.fired && err == -EIO, "%s #%u: open fails with EIO",
			  kind_name[kind], nth);
		fired = plan.fired;
		goto recover;
	}
	ret = workload(s, &st);
	fired = plan.fired;
	if (!fired) {
		check_int(ret, ==, 0);
		ret = pf_stack_close(s);
		fired = plan.fired;	/* the close's commit or header */
		check_msg(ret == (fired ? -EIO : 0),
			  "%s #%u: close reports the fault (%d)",
			  kind_name[kind], nth, ret);
		if (fired)
			goto recover;
		goto out;
	}
	check_msg(ret == -EIO, "%s #%u: the workload sees EIO (%d)",
		  kind_name[kind], nth, ret);
	pf_stack_stat(s, &ss);
	check_msg(ss.failed, "%s #%u: failed state", kind_name[kind], nth);
	check_int(pf_stack_pwrite(s, probe, sizeof(probe), 0), ==, -EIO);
	check_int(pf_stack_flush(s), ==, -EIO);
	check_int(pf_stack_discard(s, 0, 1 * MiB), ==, -EIO);
	/* reads go on: cluster 0 was committed before and never rewritten */
	check_int(pf_stack_pread(s, probe, sizeof(probe), 0), ==, 0);
	check(!memcmp(probe, st.durable, sizeof(probe)));
	check_int(pf_stack_close(s), ==, -EIO);
	check_int(in_use_of(dir), ==, PF_INUSE_OPEN);

recover:
	check_msg(no_corruption(dir, false), "%s #%u: no corruption after the fault",
		  kind_name[kind], nth);
	s = open_with(dir, NULL, &err);
	check_msg(s != NULL, "%s #%u: remount recovers", kind_name[kind], nth);
	if (s) {
		check_msg(recovered_legally(s, &st),
			  "%s #%u: committed data intact after remount",
			  kind_name[kind], nth);
		check_int(pf_stack_close(s), ==, 0);
	}
	check_msg(no_corruption(dir, true), "%s #%u: clean after recovery",
		  kind_name[kind], nth);
out:
	free(st.durable);
	free(st.latest);
	return fired;
}

int main(void)
{
	char cmd[300];
	int k;

	if (!mkdtemp(tmp_root)) {
		perror("mkdtemp");
		return 1;
	}
	for (k = 0; k < FAULT_KINDS; k++) {
		unsigned nth, reached = 0;

		for (nth = 1; nth < 100 && run((enum fault_kind)k, nth); nth++)
			reached = nth;
		/* the workload must reach each kind at least twice */
		check_msg(reached >= 2, "%s: %u injection points", kind_name[k],
			  reached);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_root);
	if (system(cmd))
		tap_diag("cannot remove %s", tmp_root);
	return tap_done();
}
