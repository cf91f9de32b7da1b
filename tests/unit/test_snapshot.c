// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Unit tests of the online structural operations of the stack engine
 * (src/stack.c): pf_stack_snapshot, pf_stack_read_view and
 * pf_stack_delete_snapshot (down and up merges), on real image
 * directories, against an in-memory reference of the disk and of every
 * snapshot view:
 *   - snapshot with and without the I/O threads: data before and after,
 *     the lower delta unchanged byte for byte, the descriptor chain, the
 *     old top's in-use flag, check and qemu-img check, reopen; explicit,
 *     duplicate and invalid GUIDs;
 *   - snapshot views while the live disk is overwritten, -ESTALE for
 *     unknown and deleted snapshots;
 *   - snapshot delete, down and up, in chains of four deltas built
 *     online and offline, with clusters mapped in the parent only, the
 *     child only, both and neither, partial writes and discards;
 *   - concurrency: writers with a per-thread model while snapshots are
 *     taken and deleted, status readers, racing structural commands;
 *   - an interrupted down merge (a failed write into the parent) that is
 *     completed by running the delete again, in the same session and
 *     after a remount, also into an empty parent; a merge that only
 *     overwrites the parent's clusters (CIF_Empty must not come back);
 *   - writes held for lack of space (CTL-8): events, release, timeout,
 *     stop, a snapshot taken while a write is held, and one while a
 *     partial discard finds no space.
 * Deltas are checked with pf_check_delta (no corruption; after a close
 * no in-use flag, no leak, no CIF_Empty on a delta with data) and with
 * qemu-img check -f parallels when it is installed.
 * Every wait is bounded: a test that does not finish in WAIT_S seconds
 * fails and the binary bails out instead of hanging.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "delta.h"
#include "descriptor.h"
#include "file.h"
#include "format.h"
#include "io_fault.h"
#include "stack.h"
#include "tap.h"
#include "testutil.h"
#include "wrap_fsync.h"
#include "util.h"

#define KiB (1024ull)
#define MiB (1024ull * KiB)
#define CLU (64 * KiB)		/* the smallest cluster: fast tests */
#define WAIT_S 30		/* bound of every wait */
#define MAX_LEVELS 64

static char tmp_root[] = "/tmp/pf-test-snapshot.XXXXXX";
static bool have_qemu;

/* Helpers: patterns, time, bounded waits */

struct rng {
	uint64_t s;
};

static uint64_t rnd(struct rng *r)
{
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 0x2545F4914F6CDD1Dull;
}

static uint64_t rnd_below(struct rng *r, uint64_t n)
{
	return n ? rnd(r) % n : 0;
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
	struct timespec t = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&t, NULL);
}

/* A hung engine cannot be closed or joined: give up on the binary. */
static void bail(const char *what)
{
	check_msg(0, "%s did not finish within %d s", what, WAIT_S);
	printf("Bail out! %s hangs\n", what);
	tap_done();
	fflush(stdout);
	_exit(1);
}

/* Poll @flag until true or WAIT_S seconds pass. */
static bool wait_flag(atomic_bool *flag)
{
	double end = now_s() + WAIT_S;

	while (!atomic_load(flag))
		if (now_s() > end)
			return false;
		else
			sleep_ms(1);
	return true;
}

/* A call run in its own thread so that the caller's wait is bounded. */
struct call {
	pthread_t th;
	int (*fn)(void *arg);
	void *arg;
	int ret;
	atomic_bool done;
};

static void *call_main(void *arg)
{
	struct call *c = arg;

	c->ret = c->fn(c->arg);
	atomic_store(&c->done, true);
	return NULL;
}

static void call_start(struct call *c, int (*fn)(void *), void *arg)
{
	c->fn = fn;
	c->arg = arg;
	c->ret = -1;
	atomic_init(&c->done, false);
	if (pthread_create(&c->th, NULL, call_main, c))
		abort();
}

/* Wait (bounded) for the call and return its result. */
static int call_join(struct call *c, const char *what)
{
	if (!wait_flag(&c->done))
		bail(what);
	pthread_join(c->th, NULL);
	return c->ret;
}

/* Files and directories */

static void path_of(char *out, size_t n, const char *dir, const char *name)
{
	snprintf(out, n, "%s/%s", dir, name);
}

static bool file_exists(const char *dir, const char *name)
{
	char p[600];
	struct stat st;

	path_of(p, sizeof(p), dir, name);
	return stat(p, &st) == 0;
}

/* FNV-1a of the whole file; 0 if it cannot be read. */
static uint64_t file_hash(const char *dir, const char *name)
{
	static uint8_t buf[1 << 16];
	uint64_t h = 0xcbf29ce484222325ull;
	char p[600];
	ssize_t n, i;
	int fd;

	path_of(p, sizeof(p), dir, name);
	fd = open(p, O_RDONLY);
	if (fd < 0)
		return 0;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		for (i = 0; i < n; i++)
			h = (h ^ buf[i]) * 0x100000001b3ull;
	close(fd);
	return n < 0 ? 0 : h;
}

static uint32_t file_u32(const char *dir, const char *name, uint64_t off)
{
	char p[600];
	uint8_t b[4] = { 0 };
	int fd;

	path_of(p, sizeof(p), dir, name);
	fd = open(p, O_RDONLY);
	if (fd < 0 || pread(fd, b, 4, (off_t)off) != 4)
		tap_diag("cannot read %s", p);
	if (fd >= 0)
		close(fd);
	return pf_le32_get(b);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names and contents of every file of @dir, as one hash. */
static uint64_t dir_hash(const char *dir, unsigned *n_files)
{
	char *names[256];
	unsigned n = 0, i;
	uint64_t h = 0;
	struct dirent *e;
	DIR *d = opendir(dir);

	if (!d)
		return 0;
	while ((e = readdir(d)) && n < 256)
		if (e->d_name[0] != '.')
			names[n++] = strdup(e->d_name);
	closedir(d);
	qsort(names, n, sizeof(*names), cmp_str);
	for (i = 0; i < n; i++) {
		const char *c;

		for (c = names[i]; *c; c++)
			h = (h ^ (uint8_t)*c) * 0x100000001b3ull;
		h = h * 31 + file_hash(dir, names[i]);
		free(names[i]);
	}
	*n_files = n;
	return h;
}

/* Descriptor helpers */

static struct pf_dd *dd_of(const char *dir)
{
	struct pf_why why = { "" };
	struct pf_dd *dd = NULL;
	int fd = open(dir, O_RDONLY | O_DIRECTORY);

	if (fd < 0 || pf_dd_load(fd, &dd, &why)) {
		tap_diag("%s: cannot load the descriptor: %s", dir, why.msg);
		dd = NULL;
	}
	if (fd >= 0)
		close(fd);
	return dd;
}

/* Length of the active chain of the descriptor, 0 on error. */
static size_t dd_chain_len(const char *dir)
{
	struct pf_why why = { "" };
	struct pf_dd *dd = dd_of(dir);
	size_t *chain = NULL, n = 0;

	if (dd && pf_dd_chain(dd, &chain, &n, &why))
		n = 0;
	free(chain);
	pf_dd_free(dd);
	return n;
}

/* true if the descriptor's text contains @guid anywhere. */
static bool dd_mentions(const char *dir, const char *guid)
{
	char p[600], *text;
	bool found;
	FILE *f;
	long len;

	path_of(p, sizeof(p), dir, PF_DD_NAME);
	f = fopen(p, "r");
	if (!f)
		return false;
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	rewind(f);
	text = calloc(1, (size_t)len + 1);
	if (fread(text, 1, (size_t)len, f) != (size_t)len)
		text[0] = 0;
	fclose(f);
	found = strstr(text, guid) != NULL;
	free(text);
	return found;
}

/* 1 if shot @guid is <Temporary/>, 0 if not, -1 if there is none. */
static int dd_temporary(const char *dir, const char *guid)
{
	struct pf_dd *dd = dd_of(dir);
	const struct pf_dd_shot *shot = dd ? pf_dd_find_shot(dd, guid) : NULL;
	int ret = shot ? shot->temporary : -1;

	pf_dd_free(dd);
	return ret;
}

/* File of image @guid in the descriptor, "" if none. */
static void dd_file_of(const char *dir, const char *guid, char *out, size_t n)
{
	struct pf_dd *dd = dd_of(dir);
	const struct pf_dd_image *im = dd ? pf_dd_find_image(dd, guid) : NULL;

	snprintf(out, n, "%s", im ? im->file : "");
	pf_dd_free(dd);
}

/* Checks of the delta files */

/* pf_check_delta of @name: no corruption; @clean: nor unclean, and
 * unless @leaks_ok no leaked cluster. */
static bool delta_ok_leaks(const char *dir, const char *name, bool clean,
			   bool leaks_ok)
{
	struct pf_check_report r = { 0 };
	struct pf_why why = { "" };
	struct pf_delta *d = NULL;
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	bool ok;

	ok = fd >= 0 && pf_delta_open(fd, name, 0, NULL, &d, &why) == 0 &&
	     pf_check_delta(d, &r) == 0;
	if (!ok)
		tap_diag("%s/%s: cannot check: %s", dir, name, why.msg);
	else if (clean && (d->hdr.flags & PF_FLAG_EMPTY) &&
		 pf_delta_mapped_count(d)) {
		/* CIF_Empty is cleared at the first allocation */
		tap_diag("%s/%s: flag CIF_Empty set on a delta with %" PRIu64
			 " mapped clusters", dir, name, pf_delta_mapped_count(d));
		ok = false;
	}
	else if (r.count[PF_FIND_CORRUPT] ||
		 (clean && (r.count[PF_FIND_UNCLEAN] ||
			    (!leaks_ok && r.count[PF_FIND_LEAK])))) {
		tap_diag("%s/%s: %" PRIu64 " corrupt, %" PRIu64 " unclean, %" PRIu64
			 " leak findings", dir, name, r.count[PF_FIND_CORRUPT],
			 r.count[PF_FIND_UNCLEAN], r.count[PF_FIND_LEAK]);
		ok = false;
	}
	pf_delta_close(d);
	if (fd >= 0)
		close(fd);
	return ok;
}

static bool delta_ok(const char *dir, const char *name, bool clean)
{
	return delta_ok_leaks(dir, name, clean, false);
}

/* Every delta of the descriptor's chain passes delta_ok_leaks(). */
static void check_chain_leaks(const char *dir, bool clean, bool leaks_ok,
			      const char *when)
{
	struct pf_why why = { "" };
	struct pf_dd *dd = dd_of(dir);
	size_t *chain = NULL, n = 0, i;

	if (!dd || pf_dd_chain(dd, &chain, &n, &why)) {
		check_msg(0, "%s: descriptor chain loads", when);
		pf_dd_free(dd);
		return;
	}
	for (i = 0; i < n; i++)
		check_msg(delta_ok_leaks(dir, dd->images[chain[i]].file, clean,
					 leaks_ok),
			  "%s: %s passes check%s", when,
			  dd->images[chain[i]].file, clean ? " cleanly" : "");
	free(chain);
	pf_dd_free(dd);
}

static void check_chain_deltas(const char *dir, bool clean, const char *when)
{
	check_chain_leaks(dir, clean, false, when);
}

/* qemu-img check -f parallels on every delta of the chain (closed). */
static void qemu_check_chain(const char *dir, const char *when)
{
	struct pf_why why = { "" };
	struct pf_dd *dd;
	size_t *chain = NULL, n = 0, i;

	if (!have_qemu) {
		check_msg(1, "%s: qemu-img check # skip qemu-img not installed",
			  when);
		return;
	}
	dd = dd_of(dir);
	if (!dd || pf_dd_chain(dd, &chain, &n, &why)) {
		check_msg(0, "%s: descriptor chain loads", when);
		pf_dd_free(dd);
		return;
	}
	for (i = 0; i < n; i++) {
		char cmd[1200];
		int st;

		snprintf(cmd, sizeof(cmd),
			 "qemu-img check -f parallels '%s/%s' >/dev/null 2>&1",
			 dir, dd->images[chain[i]].file);
		st = system(cmd);
		check_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
			  "%s: qemu-img check %s exits 0 (status %d)", when,
			  dd->images[chain[i]].file,
			  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	}
	free(chain);
	pf_dd_free(dd);
}

/* Opening, events and reading */

struct events {
	pthread_mutex_t lock;
	unsigned enospc, resumed, enospc_failed, snapshot, merge_done,
		merge_failed, failed;
	unsigned last_held;	/* "(N held)" of the last enospc event */
};

static void on_event(void *ctx, const char *type, const char *text)
{
	struct events *ev = ctx;
	const char *h;

	pthread_mutex_lock(&ev->lock);
	if (!strcmp(type, "enospc")) {
		ev->enospc++;
		h = strrchr(text, '(');
		if (h)
			ev->last_held = (unsigned)strtoul(h + 1, NULL, 10);
	} else if (!strcmp(type, "enospc-resumed")) {
		ev->resumed++;
	} else if (!strcmp(type, "enospc-failed")) {
		ev->enospc_failed++;
	} else if (!strcmp(type, "snapshot")) {
		ev->snapshot++;
	} else if (!strcmp(type, "merge-done")) {
		ev->merge_done++;
	} else if (!strcmp(type, "merge-failed")) {
		ev->merge_failed++;
	} else if (!strcmp(type, "failed")) {
		ev->failed++;
	}
	pthread_mutex_unlock(&ev->lock);
}

static unsigned ev_get(struct events *ev, const unsigned *field)
{
	unsigned v;

	pthread_mutex_lock(&ev->lock);
	v = *field;
	pthread_mutex_unlock(&ev->lock);
	return v;
}

struct open_args {
	const struct pf_file_factory *factory;
	struct events *ev;
	unsigned commit_ms;
	unsigned enospc_timeout_s;
	bool (*stopping)(void *ctx);
	void *stopping_ctx;
};

static struct pf_stack *open_stack(const char *dir, bool start,
				   const struct open_args *a)
{
	/* no sealer thread: the tests count and hash the directory's files,
	 * which a background manifest would change at any moment (sealing:
	 * test_manifest, test_crash, 92-verify.bats) */
	struct pf_stack_opts o = { .dir = dir, .commit_ms = 60000,
				   .no_sealer = true };

	if (a) {
		o.factory = a->factory;
		if (a->commit_ms)
			o.commit_ms = a->commit_ms;
		o.enospc_timeout_s = a->enospc_timeout_s;
		o.stopping = a->stopping;
		o.stopping_ctx = a->stopping_ctx;
		if (a->ev) {
			o.event = on_event;
			o.event_ctx = a->ev;
		}
	}
	return tu_open_stack(&o, start, NULL);
}

/* The whole disk (@guid NULL) or snapshot view equals @ref; on a
 * mismatch the first differing offset is reported. */
static bool view_equals(struct pf_stack *s, const char *guid,
			const uint8_t *ref, uint64_t size)
{
	const size_t chunk = 4 * MiB;
	uint8_t *buf = malloc(chunk);
	uint64_t off;
	bool ok = true;
	int ret;

	for (off = 0; off < size && ok; off += chunk) {
		size_t n = size - off < chunk ? (size_t)(size - off) : chunk, i;

		ret = guid ? pf_stack_pread_view(s, guid, buf, n, off) :
			     pf_stack_pread(s, buf, n, off);
		if (ret) {
			tap_diag("read of %zu bytes at %" PRIu64 " failed: %d",
				 n, off, ret);
			ok = false;
		} else if (memcmp(buf, ref + off, n)) {
			for (i = 0; i < n && buf[i] == ref[off + i]; i++)
				;
			tap_diag("%s differs at byte %" PRIu64 " (cluster %" PRIu64
				 ")", guid ? guid : "disk", off + i,
				 (uint64_t)((off + i) / CLU));
			ok = false;
		}
	}
	free(buf);
	return ok;
}

static bool disk_equals(struct pf_stack *s, const uint8_t *ref, uint64_t size)
{
	return view_equals(s, NULL, ref, size);
}

static size_t levels_of(struct pf_stack *s, struct pf_stack_level *lv)
{
	size_t n = pf_stack_levels(s, lv, MAX_LEVELS);

	if (n > MAX_LEVELS)
		abort();
	return n;
}

/*
 * 1. Online snapshot
 */

static void test_snapshot_basic(bool start)
{
	const uint64_t size = 16 * MiB;
	uint8_t *ref = calloc(1, size), *at_snap = malloc(size);
	char *dir = tu_new_image(tmp_root, size, CLU);
	char g1[PF_GUID_LEN + 1] = "", g2[PF_GUID_LEN + 1] = "";
	const char *want = "{0123abcd-4567-89ab-cdef-0123456789ab}";
	struct pf_stack_level lv[MAX_LEVELS];
	struct pf_stack_stat st;
	struct events ev = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct open_args oa = { .ev = &ev };
	struct pf_why why = { "" };
	struct pf_stack *s = open_stack(dir, start, &oa);
	uint64_t h_base, h_dir, h_dir2;
	unsigned nf, nf2;
	size_t n;

	tap_diag("snapshot on an open stack (%s)", start ? "threads" : "synchronous");
	if (!s) {
		check(0);
		free(ref);
		free(at_snap);
		free(dir);
		return;
	}
	/* clusters 0-3 whole, a partial piece of 10, one straddling 20/21 */
	tu_fill(ref, 4 * CLU, 1, 0);
	tu_fill(ref + 10 * CLU + 1000, 3000, 2, 0);
	tu_fill(ref + 21 * CLU - 700, 1400, 3, 0);
	check_int(pf_stack_pwrite(s, ref, 4 * CLU, 0), ==, 0);
	check_int(pf_stack_pwrite(s, ref + 10 * CLU + 1000, 3000,
				  10 * CLU + 1000), ==, 0);
	check_int(pf_stack_pwrite(s, ref + 21 * CLU - 700, 1400,
				  21 * CLU - 700), ==, 0);
	memcpy(at_snap, ref, size);

	check_int(pf_stack_snapshot(s, NULL, g1, &why), ==, 0);
	check(pf_guid_valid(g1));
	check_int(ev_get(&ev, &ev.snapshot), ==, 1);
	pf_stack_stat(s, &st);
	check_int(st.deltas, ==, 2);
	check_int(st.top_clusters, ==, 0);
	check_int(st.freezes, ==, 1);
	check(!st.frozen);
	n = levels_of(s, lv);
	check_int(n, ==, 2);
	check_str(lv[0].guid, g1);
	check_str(lv[0].file, PF_BASE_NAME);
	check_int(lv[0].mapped, ==, 7);
	check(!lv[0].top && !lv[0].hidden);
	check_str(lv[1].guid, PF_TOP_GUID);
	check(lv[1].top);
	check_int(lv[1].mapped, ==, 0);
	/* the descriptor: one more delta, the new top under TOPDELTA */
	check_int(dd_chain_len(dir), ==, 2);
	check(dd_mentions(dir, g1));
	check_int(dd_temporary(dir, g1), ==, 0);
	{
		char f[256];

		dd_file_of(dir, PF_TOP_GUID, f, sizeof(f));
		check_str(f, lv[1].file);
		dd_file_of(dir, g1, f, sizeof(f));
		check_str(f, PF_BASE_NAME);
	}
	/* the old top is closed and consistent; the new top is in use */
	check_int(file_u32(dir, PF_BASE_NAME, 44), ==, PF_INUSE_CLOSED);
	check_int(file_u32(dir, lv[1].file, 44), ==, PF_INUSE_OPEN);
	check_msg(delta_ok(dir, PF_BASE_NAME, true), "old top passes check cleanly");
	check(disk_equals(s, ref, size));
	check(view_equals(s, g1, at_snap, size));
	h_base = file_hash(dir, PF_BASE_NAME);

	/* writes after it go to the new top only */
	tu_fill(ref + 1 * CLU + 512, 4096, 4, 0);		/* over base data */
	tu_fill(ref + 2 * CLU, CLU, 5, 0);			/* whole cluster */
	tu_fill(ref + 10 * CLU + 3500, 1000, 6, 0);	/* partial over partial */
	tu_fill(ref + 30 * CLU + 7, 77, 7, 0);		/* fresh, partial */
	check_int(pf_stack_pwrite(s, ref + 1 * CLU + 512, 4096, 1 * CLU + 512),
		  ==, 0);
	check_int(pf_stack_pwrite(s, ref + 2 * CLU, CLU, 2 * CLU), ==, 0);
	check_int(pf_stack_pwrite(s, ref + 10 * CLU + 3500, 1000,
				  10 * CLU + 3500), ==, 0);
	check_int(pf_stack_pwrite(s, ref + 30 * CLU + 7, 77, 30 * CLU + 7), ==,
		  0);
	memset(ref + 3 * CLU, 0, CLU);
	check_int(pf_stack_discard(s, 3 * CLU, CLU), ==, 0);
	check_int(pf_stack_flush(s), ==, 0);
	check(disk_equals(s, ref, size));
	check(view_equals(s, g1, at_snap, size));
	check_u64(file_hash(dir, PF_BASE_NAME), ==, h_base);
	pf_stack_stat(s, &st);
	check_int(st.top_clusters, ==, 5);

	/* explicit GUID, given as users copy it (upper case, no braces):
	 * stored as ploop writes it; then the same again in the canonical
	 * form, and bad ones: nothing changes */
	check_int(pf_stack_snapshot(s, "0123ABCD-4567-89AB-CDEF-0123456789AB",
				    g2, &why), ==, 0);
	check_str(g2, want);
	check_int(dd_chain_len(dir), ==, 3);
	h_dir = dir_hash(dir, &nf);
	check_int(nf, ==, 4);	/* descriptor and three deltas */
	why.msg[0] = 0;
	check_int(pf_stack_snapshot(s, want, g2, &why), ==, -EEXIST);
	check_msg(strstr(why.msg, "already in use") != NULL, "why: %s", why.msg);
	check_int(pf_stack_snapshot(s, g1, g2, &why), ==, -EEXIST);
	check_int(pf_stack_snapshot(s, PF_TOP_GUID, g2, &why), ==, -EINVAL);
	check_int(pf_stack_snapshot(s, "{not-a-guid}", g2, &why), ==, -EINVAL);
	check_int(pf_stack_snapshot(s, "{0123abcd-4567-89ab-cdef-0123456789ab",
				    g2, &why), ==, -EINVAL);
	h_dir2 = dir_hash(dir, &nf2);
	check_int(nf2, ==, nf);
	check_msg(h_dir2 == h_dir,
		  "refused snapshots leave every file byte-identical");
	pf_stack_stat(s, &st);
	check_int(st.deltas, ==, 3);
	check_int(st.freezes, ==, 2);
	check_str(g2, want);
	check(disk_equals(s, ref, size));

	check_int(pf_stack_close(s), ==, 0);
	check_chain_deltas(dir, true, "after close");
	qemu_check_chain(dir, "after close");
	check_u64(file_hash(dir, PF_BASE_NAME), ==, h_base);

	s = open_stack(dir, start, NULL);
	check(s != NULL);
	if (s) {
		check(disk_equals(s, ref, size));
		check(view_equals(s, g1, at_snap, size));
		check(view_equals(s, want, ref, size));
		check_int(pf_stack_close(s), ==, 0);
	}
	/* a read-only delta is never written by a plain open and close */
	check_u64(file_hash(dir, PF_BASE_NAME), ==, h_base);
	free(ref);
	free(at_snap);
	free(dir);
}

/*
 * 2. Snapshot views
 */

static void test_views(void)
{
	const uint64_t size = 8 * MiB;
	uint8_t *a = calloc(1, size), *b, *live, *buf = malloc(3 * CLU);
	char *dir = tu_new_image(tmp_root, size, CLU);
	char g1[PF_GUID_LEN + 1], g2[PF_GUID_LEN + 1], up[PF_GUID_LEN + 1];
	struct pf_stack_merge_info info;
	struct pf_why why = { "" };
	struct pf_stack *s = open_stack(dir, true, NULL);
	uint64_t off;

	tap_diag("snapshot views");
	if (!s) {
		check(0);
		free(a);
		free(buf);
		free(dir);
		return;
	}
	tu_fill(a, 40 * CLU, 11, 0);
	check_int(pf_stack_pwrite(s, a, 40 * CLU, 0), ==, 0);
	check_int(pf_stack_snapshot(s, NULL, g1, &why), ==, 0);
	/* overwrite half of it, partly unaligned */
	b = malloc(size);
	memcpy(b, a, size);
	tu_fill(b + 5 * CLU + 123, 17 * CLU, 12, 0);
	check_int(pf_stack_pwrite(s, b + 5 * CLU + 123, 17 * CLU, 5 * CLU + 123),
		  ==, 0);
	check_int(pf_stack_snapshot(s, NULL, g2, &why), ==, 0);
	live = malloc(size);
	memcpy(live, b, size);
	/* the live disk is overwritten everywhere, also past the old data */
	for (off = 0; off < 60 * CLU; off += 3 * CLU) {
		tu_fill(live + off + 100, 2 * CLU, (unsigned)(13 + off / CLU), 0);
		check_int(pf_stack_pwrite(s, live + off + 100, 2 * CLU, off + 100),
			  ==, 0);
		/* while it is: the views hold still */
		check_int(pf_stack_pread_view(s, g1, buf, 3 * CLU, off), ==, 0);
		check(!memcmp(buf, a + off, 3 * CLU));
		check_int(pf_stack_pread_view(s, g2, buf, CLU, off), ==, 0);
		check(!memcmp(buf, b + off, CLU));
	}
	check(disk_equals(s, live, size));
	check(view_equals(s, g1, a, size));
	check(view_equals(s, g2, b, size));
	/* unaligned view reads (bounce buffer) */
	check_int(pf_stack_pread_view(s, g1, buf + 1, 1000, 5 * CLU - 333),
		  ==, 0);
	check(!memcmp(buf + 1, a + 5 * CLU - 333, 1000));
	check_int(pf_stack_pread_view(s, g2, buf + 3, 7, 5 * CLU + 120), ==, 0);
	check(!memcmp(buf + 3, b + 5 * CLU + 120, 7));
	/* unknown snapshots, the top, the range */
	check_int(pf_stack_pread_view(s,
				      "{11111111-2222-3333-4444-555555555555}",
				      buf, 4096, 0), ==, -ESTALE);
	check_int(pf_stack_pread_view(s, PF_TOP_GUID, buf, 4096, 0), ==,
		  -ESTALE);
	check_int(pf_stack_pread_view(s, g1, buf, 4096, size), ==, -EINVAL);

	/* a bad GUID is refused before anything is looked at */
	why.msg[0] = 0;
	check_int(pf_stack_delete_snapshot(s, "0e24c2b0", 0, &info, &why), ==,
		  -EINVAL);
	check_msg(strstr(why.msg, "invalid GUID") != NULL, "why: %s", why.msg);
	/* deleted snapshots have no view; the others keep theirs; g1 named
	 * as a view's name in upper case (no braces) */
	for (off = 0; off < PF_GUID_LEN - 2; off++)
		up[off] = (char)toupper((unsigned char)g1[off + 1]);
	up[PF_GUID_LEN - 2] = '\0';
	/* a view in use (two handles, opened by the view's name): the
	 * delete is refused and changes nothing, until both are closed */
	check_int(pf_stack_view_open(s, up), ==, 0);
	check_int(pf_stack_view_open(s, g1), ==, 0);
	check_int(pf_stack_view_open(s, PF_TOP_GUID), ==, -ENOENT);
	check_int(pf_stack_view_open(s, "{11111111-2222-3333-4444-555555555555}"),
		  ==, -ENOENT);
	why.msg[0] = 0;
	check_int(pf_stack_delete_snapshot(s, g1, 0, &info, &why), ==, -EBUSY);
	check_msg(strstr(why.msg, "is in use: its view is open") != NULL,
		  "why: %s", why.msg);
	check(view_equals(s, g1, a, size));
	pf_stack_view_close(s, g1);
	check_int(pf_stack_delete_snapshot(s, up, 0, &info, &why), ==, -EBUSY);
	check(view_equals(s, g1, a, size));
	check_int(pf_stack_view_open(s, g1), ==, 0);	/* opens again */
	pf_stack_view_close(s, g1);
	pf_stack_view_close(s, up);
	check_int(pf_stack_delete_snapshot(s, up, 0, &info, &why), ==, 0);
	/* deleted: no view to open */
	check_int(pf_stack_view_open(s, g1), ==, -ENOENT);
	check(info.down);
	check_int(pf_stack_pread_view(s, g1, buf, 4096, 0), ==, -ESTALE);
	check(view_equals(s, g2, b, size));
	check(disk_equals(s, live, size));
	/* forced: deleted while its view is open; its reads fail then */
	check_int(pf_stack_view_open(s, g2), ==, 0);
	check_int(pf_stack_delete_snapshot(s, g2, PF_STACK_DELETE_FORCE, &info,
					   &why), ==, 0);
	pf_stack_view_close(s, g2);
	check(!info.down);
	check_int(pf_stack_pread_view(s, g2, buf, 4096, 0), ==, -ESTALE);
	check(disk_equals(s, live, size));
	/* a deleted snapshot is gone: deleting it again is refused */
	check_int(pf_stack_delete_snapshot(s, g2, 0, &info, &why), ==, -ENOENT);
	check_int(pf_stack_delete_snapshot(s, PF_TOP_GUID, 0, &info, &why), ==,
		  -EINVAL);
	check_int(pf_stack_close(s), ==, 0);
	check_int(dd_chain_len(dir), ==, 1);
	check_chain_deltas(dir, true, "views: after close");
	qemu_check_chain(dir, "views: after close");
	free(a);
	free(b);
	free(live);
	free(buf);
	free(dir);
}

/*
 * 3. Snapshot delete, down and up, against a model
 */

#define FX_LEVELS 4	/* base, s1, s2, top */

struct fixture {
	char *dir;
	uint64_t size;
	uint32_t n_clu;
	uint8_t *ref;				/* the live disk */
	uint8_t *view[FX_LEVELS];		/* content of snapshot l */
	char guid[FX_LEVELS][PF_GUID_LEN + 1];	/* level l's GUID */
	char file[FX_LEVELS][256];
	bool *mapped[FX_LEVELS];	/* level l maps the cluster */
	unsigned n;			/* levels left */
};

/* Data of level @l: about a third of the hot clusters whole, a third
 * partial (unaligned too), the rest untouched; the top also discards. */
static int write_level(struct pf_stack *s, struct fixture *fx, unsigned l,
		       struct rng *r)
{
	uint32_t step = fx->n_clu / 96, k;
	uint8_t *buf = malloc(CLU);
	int ret = 0;

	for (k = 0; k < 96 && !ret; k++) {
		/* hot clusters: spread, the last one, both sides of the
		 * first BAT page boundary (index 1008) when there is one */
		uint32_t idx = k * step + (uint32_t)(k % 3);
		uint64_t choice = rnd_below(r, 3), in, len;

		if (k == 95)
			idx = fx->n_clu - 1;
		if (fx->n_clu > 1010 && k == 94)
			idx = 1007;
		if (fx->n_clu > 1010 && k == 93)
			idx = 1008;
		if (choice == 0)
			continue;
		in = choice == 1 ? 0 : rnd_below(r, CLU - 1);
		len = choice == 1 ? CLU : 1 + rnd_below(r, CLU - in);
		tu_fill(buf, (size_t)len, 100 * l + k, 0);
		memcpy(fx->ref + (uint64_t)idx * CLU + in, buf, (size_t)len);
		ret = pf_stack_pwrite(s, buf, (size_t)len,
				      (uint64_t)idx * CLU + in);
		fx->mapped[l][idx] = true;
	}
	if (l == FX_LEVELS - 1) {
		/* whole-cluster discards of data only lower levels hold:
		 * the top maps a zero cluster over them (DIS-1) */
		for (k = 0; k < 96 && !ret; k += 7) {
			uint32_t idx = k * step + (uint32_t)(k % 3), m;
			bool lower = false;

			for (m = 0; m < l; m++)
				lower |= fx->mapped[m][idx];
			if (!lower || fx->mapped[l][idx])
				continue;
			memset(fx->ref + (uint64_t)idx * CLU, 0, CLU);
			ret = pf_stack_discard(s, (uint64_t)idx * CLU, CLU);
			fx->mapped[l][idx] = true;
		}
	}
	free(buf);
	return ret;
}

/* A chain of four deltas; @online: snapshots by pf_stack_snapshot on the
 * open stack @start-ed or not, else offline (tu_snapshot) between
 * sessions.  Returns the open stack. */
static struct pf_stack *fixture_build(struct fixture *fx, uint32_t n_clu,
				      bool online, bool start, uint64_t seed)
{
	struct rng r = { seed * 0x9E3779B97F4A7C15ull + 1 };
	struct pf_stack_level lv[MAX_LEVELS];
	struct pf_why why = { "" };
	struct pf_stack *s;
	unsigned l;

	memset(fx, 0, sizeof(*fx));
	fx->n_clu = n_clu;
	fx->size = (uint64_t)n_clu * CLU;
	fx->dir = tu_new_image(tmp_root, fx->size, CLU);
	fx->ref = calloc(1, fx->size);
	fx->n = FX_LEVELS;
	for (l = 0; l < FX_LEVELS; l++)
		fx->mapped[l] = calloc(n_clu, sizeof(bool));
	s = open_stack(fx->dir, start, NULL);
	for (l = 0; s && l < FX_LEVELS; l++) {
		if (write_level(s, fx, l, &r)) {
			tap_diag("writing level %u failed", l);
			pf_stack_close(s);
			return NULL;
		}
		if (l + 1 == FX_LEVELS)
			break;
		fx->view[l] = malloc(fx->size);
		memcpy(fx->view[l], fx->ref, fx->size);
		if (online) {
			if (pf_stack_snapshot(s, NULL, fx->guid[l], &why)) {
				tap_diag("snapshot: %s", why.msg);
				pf_stack_close(s);
				return NULL;
			}
			continue;
		}
		if (pf_stack_close(s))
			return NULL;
		tu_snapshot(fx->dir);
		s = open_stack(fx->dir, start, NULL);
	}
	if (!s)
		return NULL;
	if (levels_of(s, lv) != FX_LEVELS) {
		pf_stack_close(s);
		return NULL;
	}
	for (l = 0; l < FX_LEVELS; l++) {
		memcpy(fx->guid[l], lv[l].guid, sizeof(fx->guid[l]));
		memcpy(fx->file[l], lv[l].file, sizeof(fx->file[l]));
	}
	return s;
}

static void fixture_free(struct fixture *fx)
{
	unsigned l;

	for (l = 0; l < FX_LEVELS; l++) {
		free(fx->view[l]);
		free(fx->mapped[l]);
	}
	free(fx->ref);
	free(fx->dir);
}

/* The four kinds of clusters for merging level @p into @p + 1. */
static void check_categories(const struct fixture *fx, unsigned p)
{
	unsigned cat[4] = { 0 };
	uint32_t idx;

	for (idx = 0; idx < fx->n_clu; idx++)
		cat[fx->mapped[p][idx] * 2 + fx->mapped[p + 1][idx]]++;
	check_msg(cat[1] && cat[2] && cat[3] && cat[0],
		  "clusters in the child only (%u), parent only (%u), "
		  "both (%u), neither (%u)",
		  cat[1], cat[2], cat[3], cat[0]);
}

/* Everything the model says, through the open stack. */
static void verify_all(struct pf_stack *s, struct fixture *fx,
		       const char *when)
{
	struct pf_stack_level lv[MAX_LEVELS];
	size_t n = levels_of(s, lv);
	unsigned l;

	check_msg(disk_equals(s, fx->ref, fx->size), "%s: disk content", when);
	check_int(n, ==, fx->n);
	for (l = 0; l + 1 < fx->n && l < n; l++) {
		check_str(lv[l].guid, fx->guid[l]);
		check_str(lv[l].file, fx->file[l]);
		check(!lv[l].hidden);
		check_msg(view_equals(s, fx->guid[l], fx->view[l], fx->size),
			  "%s: view of %s", when, fx->guid[l]);
	}
}

/* Delete the snapshot at level @p and check everything. */
static struct pf_stack *fixture_delete(struct pf_stack *s, struct fixture *fx,
				       unsigned p, bool start)
{
	struct pf_stack_merge_info info;
	struct pf_stack_stat st;
	struct pf_why why = { "" };
	char guid[PF_GUID_LEN + 1], gone[256], when[128];
	uint8_t probe[512];
	bool down = p + 2 < fx->n;
	uint64_t expect = 0;
	uint32_t idx;
	unsigned l;
	int ret;

	snprintf(guid, sizeof(guid), "%s", fx->guid[p]);
	snprintf(when, sizeof(when), "delete level %u of %u (%s)", p, fx->n,
		 down ? "down" : "up");
	tap_diag("%s", when);
	check_categories(fx, p);
	for (idx = 0; idx < fx->n_clu; idx++)
		expect += down ? fx->mapped[p + 1][idx] :
				 fx->mapped[p][idx] && !fx->mapped[p + 1][idx];
	ret = pf_stack_delete_snapshot(s, guid, 0, &info, &why);
	check_msg(ret == 0, "%s: %d %s", when, ret, why.msg);
	check_int(info.down, ==, down);
	check_u64(info.clusters, ==, expect);
	check_u64(info.bytes, ==, expect * CLU);

	/* the model: the child takes the parent's place */
	if (down) {
		snprintf(gone, sizeof(gone), "%s", fx->file[p + 1]);
		memcpy(fx->file[p + 1], fx->file[p], sizeof(fx->file[p]));
		for (idx = 0; idx < fx->n_clu; idx++)
			fx->mapped[p + 1][idx] |= fx->mapped[p][idx];
	} else {
		snprintf(gone, sizeof(gone), "%s", fx->file[p]);
		for (idx = 0; idx < fx->n_clu; idx++)
			fx->mapped[p + 1][idx] |= fx->mapped[p][idx];
		if (p == 0) {
			/* the top became the base: it takes the base's
			 * name (as ploop's merges leave it), its long
			 * name goes */
			snprintf(gone, sizeof(gone), "%s", fx->file[1]);
			memcpy(fx->file[1], fx->file[0], sizeof(fx->file[0]));
			check_msg(file_exists(fx->dir, fx->file[1]),
				  "%s: the top is %s now", when, fx->file[1]);
		}
	}
	free(fx->view[p]);
	free(fx->mapped[p]);
	for (l = p; l + 1 < fx->n; l++) {
		fx->view[l] = fx->view[l + 1];
		fx->mapped[l] = fx->mapped[l + 1];
		memcpy(fx->guid[l], fx->guid[l + 1], sizeof(fx->guid[l]));
		memcpy(fx->file[l], fx->file[l + 1], sizeof(fx->file[l]));
	}
	fx->view[fx->n - 1] = NULL;
	fx->mapped[fx->n - 1] = NULL;
	fx->n--;

	verify_all(s, fx, when);
	pf_stack_stat(s, &st);
	check_int(st.deltas, ==, fx->n);
	check_msg(!file_exists(fx->dir, gone), "%s: %s removed", when, gone);
	check_int(dd_chain_len(fx->dir), ==, fx->n);
	check_msg(!dd_mentions(fx->dir, guid), "%s: descriptor forgot %s", when,
		  guid);
	check_int(pf_stack_pread_view(s, guid, probe, sizeof(probe), 0), ==,
		  -ESTALE);
	check_chain_deltas(fx->dir, false, when);

	check_int(pf_stack_close(s), ==, 0);
	check_chain_deltas(fx->dir, true, when);
	qemu_check_chain(fx->dir, when);
	s = open_stack(fx->dir, start, NULL);
	check(s != NULL);
	if (s)
		verify_all(s, fx, "after reopen");
	return s;
}

static void test_delete(uint32_t n_clu, bool online, bool start,
			const unsigned *order, unsigned n_order, uint64_t seed)
{
	struct fixture fx;
	struct pf_stack *s;
	unsigned i;

	tap_diag("snapshot delete: %u clusters, %s chain, %s, seed %" PRIu64,
		 n_clu, online ? "online" : "offline",
		 start ? "threads" : "synchronous", seed);
	s = fixture_build(&fx, n_clu, online, start, seed);
	check(s != NULL);
	if (!s) {
		fixture_free(&fx);
		return;
	}
	verify_all(s, &fx, "built");
	for (i = 0; s && i < n_order; i++)
		s = fixture_delete(s, &fx, order[i], start);
	if (s)
		check_int(pf_stack_close(s), ==, 0);
	fixture_free(&fx);
}

/*
 * 4. Concurrency
 */

#define WRITERS 4

struct cwriter {
	struct pf_stack *s;
	uint8_t *ref;		/* the whole model; this writer owns a slice */
	uint64_t base, len;
	unsigned id;
	atomic_bool *stop;
	uint64_t ops, errors;
	char first_error[200];
};

static void writer_error(struct cwriter *w, const char *what, int err,
			 uint64_t off)
{
	if (!w->errors++)
		snprintf(w->first_error, sizeof(w->first_error),
			 "%s: %d at %" PRIu64, what, err, off);
}

static void *cwriter_main(void *arg)
{
	struct cwriter *w = arg;
	struct rng r = { 0x1234567ull * (w->id + 1) };
	uint8_t *buf = malloc(4 * CLU + 64), *got = malloc(4 * CLU + 64);
	int ret;

	while (!atomic_load(w->stop) || w->ops < 50) {
		uint64_t kind = rnd_below(&r, 20), len, off;
		size_t shift = rnd_below(&r, 4) ? 0 : 1 + rnd_below(&r, 63);

		if (rnd_below(&r, 2)) {		/* whole, aligned */
			len = CLU * (1 + rnd_below(&r, 3));
			off = CLU * rnd_below(&r, w->len / CLU - 3);
		} else {			/* any piece */
			len = 1 + rnd_below(&r, 2 * CLU);
			off = rnd_below(&r, w->len - len);
		}
		off += w->base;
		if (kind == 0) {
			ret = pf_stack_discard(w->s, off, len);
			if (ret)
				writer_error(w, "discard", ret, off);
			memset(w->ref + off, 0, (size_t)len);
		} else {
			tu_fill(buf + shift, (size_t)len,
			     (unsigned)(w->id * 1000003 + w->ops), off);
			ret = pf_stack_pwrite(w->s, buf + shift, (size_t)len, off);
			if (ret)
				writer_error(w, "write", ret, off);
			memcpy(w->ref + off, buf + shift, (size_t)len);
		}
		/* read back a range around it */
		off = off > w->base + 3000 ? off - 3000 : w->base;
		len = len + 6000 > 4 * CLU ? 4 * CLU : len + 6000;
		if (off + len > w->base + w->len)
			len = w->base + w->len - off;
		ret = pf_stack_pread(w->s, got + shift, (size_t)len, off);
		if (ret)
			writer_error(w, "read", ret, off);
		else if (memcmp(got + shift, w->ref + off, (size_t)len))
			writer_error(w, "read back differs", 0, off);
		w->ops++;
		if (w->ops % 16 == 0 && pf_stack_flush(w->s))
			writer_error(w, "flush", -EIO, off);
	}
	free(buf);
	free(got);
	return NULL;
}

struct statusr {
	struct pf_stack *s;
	atomic_bool *stop;
	uint64_t rounds;
	bool bad;
};

/* Status readers during freezes and switches (CTL-1). */
static void *status_main(void *arg)
{
	struct statusr *sr = arg;
	struct pf_stack_level lv[MAX_LEVELS];
	struct pf_stack_stat st;
	size_t n, i;

	while (!atomic_load(sr->stop)) {
		/* levels alone too: no ordering through the stat atomics */
		if (sr->rounds % 2)
			pf_stack_stat(sr->s, &st);
		else
			st.deltas = 1;
		n = levels_of(sr->s, lv);
		if (n < 1 || st.deltas < 1 || !lv[n - 1].top ||
		    strcmp(lv[n - 1].guid, PF_TOP_GUID))
			sr->bad = true;
		for (i = 0; i + 1 < n; i++)
			if (lv[i].top)
				sr->bad = true;
		sr->rounds++;
		sleep_ms(1);
	}
	return NULL;
}

static void test_concurrent_snapshots_and_deletes(void)
{
	const uint64_t size = 32 * MiB;
	uint8_t *ref = calloc(1, size);
	char *dir = tu_new_image(tmp_root, size, CLU);
	struct open_args oa = { .commit_ms = 20 };
	struct pf_stack *s = open_stack(dir, true, &oa);
	struct pf_stack_level lv[MAX_LEVELS];
	struct cwriter w[WRITERS];
	pthread_t th[WRITERS], sth;
	struct statusr sr;
	atomic_bool stop;
	struct pf_stack_merge_info info;
	struct pf_stack_stat st;
	struct pf_why why = { "" };
	char g[PF_GUID_LEN + 1];
	unsigned i, round, downs = 0, ups = 0, fails = 0;
	int ret;

	tap_diag("4 writers while snapshots are taken and deleted");
	if (!s) {
		check(0);
		free(ref);
		free(dir);
		return;
	}
	atomic_init(&stop, false);
	for (i = 0; i < WRITERS; i++) {
		w[i] = (struct cwriter){ .s = s, .ref = ref,
					 .base = i * (size / WRITERS),
					 .len = size / WRITERS, .id = i,
					 .stop = &stop };
		pthread_create(&th[i], NULL, cwriter_main, &w[i]);
	}
	sr = (struct statusr){ .s = s, .stop = &stop };
	pthread_create(&sth, NULL, status_main, &sr);
	for (round = 0; round < 20; round++) {
		size_t n;

		ret = pf_stack_snapshot(s, NULL, g, &why);
		if (ret) {
			tap_diag("round %u: snapshot: %d %s", round, ret, why.msg);
			fails++;
		}
		sleep_ms(5);
		n = levels_of(s, lv);
		/* keep two snapshots: the oldest goes down into the base;
		 * every fourth round the newest goes up into the top */
		if (n > 3) {
			ret = pf_stack_delete_snapshot(s, lv[0].guid, 0, &info, &why);
			if (ret) {
				tap_diag("round %u: delete oldest: %d %s", round,
					 ret, why.msg);
				fails++;
			} else {
				downs += info.down;
				ups += !info.down;
			}
		}
		if (round % 4 == 3) {
			n = levels_of(s, lv);
			ret = pf_stack_delete_snapshot(s, lv[n - 2].guid, 0, &info,
						       &why);
			if (ret) {
				tap_diag("round %u: delete newest: %d %s", round,
					 ret, why.msg);
				fails++;
			} else {
				downs += info.down;
				ups += !info.down;
			}
		}
	}
	atomic_store(&stop, true);
	for (i = 0; i < WRITERS; i++) {
		pthread_join(th[i], NULL);
		check_msg(!w[i].errors, "writer %u: %" PRIu64 " ops, %" PRIu64
			  " errors (%s)", i, w[i].ops, w[i].errors,
			  w[i].first_error);
	}
	pthread_join(sth, NULL);
	check_msg(!sr.bad, "status: %" PRIu64 " consistent readings", sr.rounds);
	check_int(fails, ==, 0);
	check_msg(downs >= 10 && ups >= 4, "%u down and %u up merges", downs, ups);
	pf_stack_stat(s, &st);
	check_u64(st.freezes, >=, 20 + downs + ups);
	check(!st.failed);
	check(disk_equals(s, ref, size));
	check_chain_deltas(dir, false, "concurrent: open");
	check_int(pf_stack_close(s), ==, 0);
	check_chain_deltas(dir, true, "concurrent: after close");
	qemu_check_chain(dir, "concurrent: after close");
	{
		unsigned nf;

		/* no delta file left behind: the descriptor and the chain */
		dir_hash(dir, &nf);
		check_int(nf, ==, 1 + dd_chain_len(dir));
	}
	s = open_stack(dir, false, NULL);
	check(s && disk_equals(s, ref, size));
	if (s)
		check_int(pf_stack_close(s), ==, 0);
	free(ref);
	free(dir);
}

struct structural {
	struct pf_stack *s;
	pthread_barrier_t *go;
	const char *del_guid;	/* NULL: take a snapshot */
	char guid[PF_GUID_LEN + 1];
};

static int structural_fn(void *arg)
{
	struct structural *x = arg;
	struct pf_stack_merge_info info;
	struct pf_why why = { "" };

	pthread_barrier_wait(x->go);
	if (x->del_guid)
		return pf_stack_delete_snapshot(x->s, x->del_guid, 0, &info, &why);
	return pf_stack_snapshot(x->s, NULL, x->guid, &why);
}

/* Two structural commands at once: one may get -EBUSY (CTL-5), or both
 * run one after the other; never a broken stack. */
static void test_racing_structural(void)
{
	const uint64_t size = 8 * MiB;
	uint8_t *ref = calloc(1, size);
	char *dir = tu_new_image(tmp_root, size, CLU);
	struct pf_stack *s = open_stack(dir, true, NULL);
	struct pf_stack_level lv[MAX_LEVELS];
	struct cwriter w;
	pthread_t wth;
	atomic_bool stop;
	pthread_barrier_t go;
	unsigned it, ok = 0, busy = 0, other = 0, both = 0;
	size_t expect = 1;

	tap_diag("racing snapshot/snapshot and snapshot/delete");
	if (!s) {
		check(0);
		free(ref);
		free(dir);
		return;
	}
	atomic_init(&stop, false);
	w = (struct cwriter){ .s = s, .ref = ref, .base = 0, .len = size,
			      .id = 9, .stop = &stop };
	pthread_create(&wth, NULL, cwriter_main, &w);
	pthread_barrier_init(&go, NULL, 2);
	for (it = 0; it < 30; it++) {
		struct structural x[2] = { { .s = s, .go = &go },
					   { .s = s, .go = &go } };
		struct call c[2];
		unsigned k, good = 0;

		if (it % 2 && levels_of(s, lv) > 2)	/* snapshot vs delete */
			x[1].del_guid = lv[0].guid;
		for (k = 0; k < 2; k++)
			call_start(&c[k], structural_fn, &x[k]);
		for (k = 0; k < 2; k++) {
			int ret = call_join(&c[k], "racing structural command");

			if (!ret)
				good++;
			else if (ret == -EBUSY)
				busy++;
			else
				other++;
			if (!ret && x[k].del_guid)
				expect--;
			else if (!ret)
				expect++;
		}
		ok += good;
		both += good == 2;
		check_msg(good >= 1, "iteration %u: at least one succeeds", it);
		check_int(levels_of(s, lv), ==, expect);
	}
	atomic_store(&stop, true);
	pthread_join(wth, NULL);
	pthread_barrier_destroy(&go);
	tap_diag("%u succeeded, %u busy, %u both in one iteration", ok, busy,
		 both);
	check_int(other, ==, 0);
	check_msg(!w.errors, "writer: %" PRIu64 " ops, %s", w.ops, w.first_error);
	check_int(dd_chain_len(dir), ==, expect);
	check(disk_equals(s, ref, size));
	check_int(pf_stack_close(s), ==, 0);
	check_chain_deltas(dir, true, "racing: after close");
	s = open_stack(dir, false, NULL);
	check(s && disk_equals(s, ref, size));
	if (s)
		check_int(pf_stack_close(s), ==, 0);
	free(ref);
	free(dir);
}

/*
 * 5. An interrupted down merge is completed by running it again
 */

static void test_interrupted_down_merge(unsigned nth, bool same_session)
{
	const uint32_t n_clu = 1100;	/* two BAT pages */
	const uint64_t size = (uint64_t)n_clu * CLU;
	uint8_t *ref = calloc(1, size), *v1, *buf = malloc(CLU);
	char *dir = tu_new_image(tmp_root, size, CLU);
	char gp[PF_GUID_LEN + 1], gc[PF_GUID_LEN + 1], why_copy[512];
	struct pf_stack_level lv[MAX_LEVELS];
	struct pf_stack_merge_info info;
	struct events ev = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct pf_why why = { "" };
	struct pf_header h;
	struct fault_plan tw;
	struct open_args oa = { .factory = &tw.factory, .ev = &ev };
	struct pf_stack *s;
	uint32_t idx;
	uint64_t copies = 0;
	int ret;

	tap_diag("down merge interrupted at parent write #%u, retried %s", nth,
		 same_session ? "in the same session" : "after a remount");
	if (pf_header_init(&h, size, CLU, &why))
		abort();
	fault_plan_init(&tw, FAULT_WRITE, 0, -EIO, pf_meta_bytes(&h));
	snprintf(tw.name, sizeof(tw.name), "%s", PF_BASE_NAME);

	/* base: every 6th cluster; child: every 4th (two thirds new to the
	 * base), partial ones among them, on both BAT pages */
	s = open_stack(dir, true, &oa);
	if (!s) {
		check(0);
		free(ref);
		free(buf);
		free(dir);
		return;
	}
	for (idx = 0; idx < n_clu; idx += 6) {
		tu_fill(buf, CLU, 1, idx);
		memcpy(ref + (uint64_t)idx * CLU, buf, CLU);
		check_int(pf_stack_pwrite(s, buf, CLU, (uint64_t)idx * CLU), ==, 0);
	}
	check_int(pf_stack_snapshot(s, NULL, gp, &why), ==, 0);
	for (idx = 0; idx < n_clu; idx += 4) {
		uint64_t in = idx % 16 == 0 ? 1000 : 0;
		size_t len = idx % 16 == 0 ? 3333 : CLU;

		tu_fill(buf, len, 2, idx);
		memcpy(ref + (uint64_t)idx * CLU + in, buf, len);
		check_int(pf_stack_pwrite(s, buf, len, (uint64_t)idx * CLU + in),
			  ==, 0);
		copies++;
	}
	check_int(pf_stack_snapshot(s, NULL, gc, &why), ==, 0);
	v1 = malloc(size);
	memcpy(v1, ref, size);
	tu_fill(buf, CLU, 3, 0);	/* the top over both */
	memcpy(ref + 6 * CLU, buf, CLU);
	check_int(pf_stack_pwrite(s, buf, CLU, 6 * CLU), ==, 0);
	check_int(levels_of(s, lv), ==, 3);
	check_str(lv[0].file, PF_BASE_NAME);

	/* copies, then two BAT pages: nth in 1 .. copies + 2.  Armed
	 * now: only the parent opened for writing by the merge is hit (the
	 * top of the first session was root.hds too). */
	check_u64(copies, ==, 275);
	tw.nth = nth;
	ret = pf_stack_delete_snapshot(s, gp, 0, &info, &why);
	snprintf(why_copy, sizeof(why_copy), "%s", why.msg);
	check_msg(atomic_load(&tw.fired), "fault #%u injected", nth);
	check_msg(ret == -EIO, "delete fails with EIO (%d: %s)", ret, why_copy);
	check_msg(strstr(why_copy, nth <= copies ? "copy from" :
						  "cannot commit") != NULL,
		  "why: %s", why_copy);
	check_int(ev_get(&ev, &ev.merge_failed), ==, 1);
	/* marked for completion; no view while half merged; data intact */
	check_int(dd_temporary(dir, gp), ==, 1);
	check_int(dd_chain_len(dir), ==, 3);
	check_int(levels_of(s, lv), ==, 3);
	check(lv[0].hidden);
	check_int(pf_stack_pread_view(s, gp, buf, 4096, 0), ==, -ESTALE);
	check(disk_equals(s, ref, size));
	check(view_equals(s, gc, v1, size));
	/* the stack goes on */
	tu_fill(buf, 5000, 4, 0);
	memcpy(ref + 9 * CLU + 10, buf, 5000);
	check_int(pf_stack_pwrite(s, buf, 5000, 9 * CLU + 10), ==, 0);
	check(disk_equals(s, ref, size));

	if (!same_session) {
		check_int(pf_stack_close(s), ==, 0);
		check_msg(delta_ok(dir, PF_BASE_NAME, false),
			  "half-merged parent: leaks at most");
		check_int(dd_temporary(dir, gp), ==, 1);
		s = open_stack(dir, true, NULL);
		check(s != NULL);
		if (!s)
			goto out;
		check_int(levels_of(s, lv), ==, 3);
		check(lv[0].hidden);
		check_int(pf_stack_pread_view(s, gp, buf, 4096, 0), ==,
			  -ESTALE);
		check(disk_equals(s, ref, size));
	}
	why.msg[0] = 0;
	ret = pf_stack_delete_snapshot(s, gp, 0, &info, &why);
	check_msg(ret == 0, "delete completes: %d %s", ret, why.msg);
	check(info.down);
	check_u64(info.clusters, ==, copies);
	check_int(levels_of(s, lv), ==, 2);
	check_str(lv[0].guid, gc);
	check_str(lv[0].file, PF_BASE_NAME);
	check(!lv[0].hidden);
	check(disk_equals(s, ref, size));
	check(view_equals(s, gc, v1, size));
	check_msg(!dd_mentions(dir, gp), "descriptor forgot the parent");
	check_int(dd_temporary(dir, gc), ==, 0);
	check_int(pf_stack_close(s), ==, 0);
	/* A retry in the same session starts after the clusters the failed
	 * attempt mapped in memory: the one whose copy failed is leaked. */
	check_chain_leaks(dir, true, same_session && nth <= copies,
			  "completed merge");
	qemu_check_chain(dir, "completed merge");
	s = open_stack(dir, false, NULL);
	check(s != NULL);
	if (s) {
		check(disk_equals(s, ref, size));
		check(view_equals(s, gc, v1, size));
		check_int(pf_stack_close(s), ==, 0);
	}
out:
	free(v1);
	free(ref);
	free(buf);
	free(dir);
}

/* The same with a parent that held no data (CIF_Empty): the retry in
 * the same session finds every entry already set in memory, and must
 * still clear the flag it writes to the disk. */
static void test_interrupted_empty_parent(void)
{
	const uint64_t size = 16 * MiB;
	uint8_t *ref = calloc(1, size), *buf = malloc(CLU);
	char *dir = tu_new_image(tmp_root, size, CLU);
	char gp[PF_GUID_LEN + 1], gc[PF_GUID_LEN + 1];
	struct pf_stack_merge_info info;
	struct pf_why why = { "" };
	struct pf_header h;
	struct fault_plan tw;
	struct open_args oa = { .factory = &tw.factory };
	struct pf_stack *s;
	uint32_t idx;
	int ret;

	tap_diag("down merge into an empty parent, interrupted at its BAT write");
	if (pf_header_init(&h, size, CLU, &why))
		abort();
	fault_plan_init(&tw, FAULT_WRITE, 0, -EIO, pf_meta_bytes(&h));
	snprintf(tw.name, sizeof(tw.name), "%s", PF_BASE_NAME);
	s = open_stack(dir, true, &oa);
	if (!s) {
		check(0);
		free(ref);
		free(buf);
		free(dir);
		return;
	}
	check_int(pf_stack_snapshot(s, NULL, gp, &why), ==, 0);
	check_int(file_u32(dir, PF_BASE_NAME, 52) & PF_FLAG_EMPTY, ==,
		  PF_FLAG_EMPTY);
	for (idx = 0; idx < 10; idx++) {
		tu_fill(buf, CLU, 5, idx);
		memcpy(ref + (uint64_t)idx * 3 * CLU, buf, CLU);
		check_int(pf_stack_pwrite(s, buf, CLU, (uint64_t)idx * 3 * CLU),
			  ==, 0);
	}
	check_int(pf_stack_snapshot(s, NULL, gc, &why), ==, 0);
	tw.nth = 11;	/* ten copies, then BAT page 0 */
	ret = pf_stack_delete_snapshot(s, gp, 0, &info, &why);
	check_msg(ret == -EIO && atomic_load(&tw.fired),
		  "BAT write of the merge fails: %d %s", ret, why.msg);
	ret = pf_stack_delete_snapshot(s, gp, 0, &info, &why);
	check_msg(ret == 0, "retry: %d %s", ret, why.msg);
	check(disk_equals(s, ref, size));
	check_int(pf_stack_close(s), ==, 0);
	check_int(file_u32(dir, PF_BASE_NAME, 52) & PF_FLAG_EMPTY, ==, 0);
	check_chain_deltas(dir, true, "empty parent");
	s = open_stack(dir, false, NULL);
	check(s && disk_equals(s, ref, size));
	if (s)
		check_int(pf_stack_close(s), ==, 0);
	free(ref);
	free(buf);
	free(dir);
}

/* A down merge whose child only overwrites clusters the parent has
 * (nothing new for the parent), into a parent that was the top when
 * the image was fresh: its header must not come back with CIF_Empty. */
static void test_down_merge_overwrite_only(void)
{
	const uint64_t size = 8 * MiB;
	uint8_t *ref = calloc(1, size), *v2 = malloc(size);
	char *dir = tu_new_image(tmp_root, size, CLU);
	char g1[PF_GUID_LEN + 1], g2[PF_GUID_LEN + 1];
	struct pf_stack_merge_info info;
	struct pf_why why = { "" };
	struct pf_stack *s = open_stack(dir, false, NULL);

	tap_diag("down merge of a child that only overwrites its parent");
	if (!s) {
		check(0);
		free(ref);
		free(v2);
		free(dir);
		return;
	}
	tu_fill(ref, 4 * CLU, 91, 0);
	check_int(pf_stack_pwrite(s, ref, 4 * CLU, 0), ==, 0);
	check_int(pf_stack_snapshot(s, NULL, g1, &why), ==, 0);
	tu_fill(ref + CLU, 2 * CLU, 92, 0);
	check_int(pf_stack_pwrite(s, ref + CLU, 2 * CLU, CLU), ==, 0);
	check_int(pf_stack_snapshot(s, NULL, g2, &why), ==, 0);
	memcpy(v2, ref, size);
	check_int(pf_stack_delete_snapshot(s, g1, 0, &info, &why), ==, 0);
	check(info.down);
	check_u64(info.clusters, ==, 2);
	check(disk_equals(s, ref, size));
	check(view_equals(s, g2, v2, size));
	check_int(pf_stack_close(s), ==, 0);
	check_int(file_u32(dir, PF_BASE_NAME, 52) & PF_FLAG_EMPTY, ==, 0);
	check_chain_deltas(dir, true, "overwrite-only merge");
	qemu_check_chain(dir, "overwrite-only merge");
	s = open_stack(dir, false, NULL);
	check(s && disk_equals(s, ref, size));
	if (s)
		check_int(pf_stack_close(s), ==, 0);
	free(ref);
	free(v2);
	free(dir);
}

/*
 * 6. Writes held for lack of space (CTL-8)
 */

struct held_write {
	struct pf_stack *s;
	const uint8_t *buf;
	size_t len;
	uint64_t off;
};

static int held_write_fn(void *arg)
{
	struct held_write *h = arg;

	return pf_stack_pwrite(h->s, h->buf, h->len, h->off);
}

/* Bounded poll until pf_stack_stat says @held writes are held. */
static bool wait_held(struct pf_stack *s, unsigned held)
{
	struct pf_stack_stat st;
	double end = now_s() + WAIT_S;

	for (;;) {
		pf_stack_stat(s, &st);
		if (st.held == held)
			return true;
		if (now_s() > end)
			return false;
		sleep_ms(2);
	}
}

static bool wait_enospc_events(struct events *ev, unsigned n)
{
	double end = now_s() + WAIT_S;

	while (ev_get(ev, &ev->enospc) < n)
		if (now_s() > end)
			return false;
		else
			sleep_ms(2);
	return true;
}

static int snapshot_fn(void *arg)
{
	struct pf_stack *s = arg;
	struct pf_why why = { "" };
	char g[PF_GUID_LEN + 1];

	return pf_stack_snapshot(s, NULL, g, &why);
}

static int flush_fn(void *arg)
{
	return pf_stack_flush(arg);
}

static void test_enospc_hold_and_release(void)
{
	const uint64_t size = 16 * MiB;
	uint8_t *data = malloc(CLU), *got = malloc(CLU);
	char *dir = tu_new_image(tmp_root, size, CLU);
	struct events ev = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct pf_why why = { "" };
	struct pf_header h;
	struct fault_plan tw;
	struct open_args oa = { .factory = &tw.factory, .ev = &ev };
	struct pf_stack_stat st, st2;
	struct held_write hw;
	struct call c, f;
	struct pf_stack *s;
	unsigned e1;

	tap_diag("ENOSPC: a write is held until space is freed");
	if (pf_header_init(&h, size, CLU, &why))
		abort();
	fault_plan_init(&tw, FAULT_WRITE, 0, -EIO, pf_meta_bytes(&h));
	s = open_stack(dir, true, &oa);
	if (!s) {
		check(0);
		free(data);
		free(got);
		free(dir);
		return;
	}
	atomic_store(&tw.nospace, true);
	tu_fill(data, CLU, 61, 0);
	hw = (struct held_write){ s, data, CLU, 5 * CLU };
	call_start(&c, held_write_fn, &hw);
	check_msg(wait_held(s, 1), "the write is held");
	check_msg(wait_enospc_events(&ev, 1), "an enospc event");
	pf_stack_stat(s, &st);
	e1 = ev_get(&ev, &ev.enospc);
	check_msg(wait_enospc_events(&ev, e1 + 1), "enospc events go on (retries)");
	e1 = ev_get(&ev, &ev.enospc);
	pf_stack_stat(s, &st2);	/* counted before the event is sent */
	check_u64(st2.enospc_events, >, st.enospc_events);
	check_u64(st2.enospc_events, >=, e1);
	check_int(ev_get(&ev, &ev.last_held), ==, 1);
	check(!atomic_load(&c.done));
	check(!st2.failed);
	/* reads and flushes are not held with it */
	check_int(pf_stack_pread(s, got, CLU, 0), ==, 0);
	call_start(&f, flush_fn, s);
	check_int(call_join(&f, "flush while a write is held"), ==, 0);
	check(!atomic_load(&c.done));

	atomic_store(&tw.nospace, false);
	check_int(call_join(&c, "held write after space was freed"), ==, 0);
	check_int(ev_get(&ev, &ev.resumed), ==, 1);
	check_int(ev_get(&ev, &ev.enospc_failed), ==, 0);
	pf_stack_stat(s, &st);
	check_int(st.held, ==, 0);
	check_int(pf_stack_pread(s, got, CLU, 5 * CLU), ==, 0);
	check(!memcmp(got, data, CLU));
	check_int(pf_stack_close(s), ==, 0);
	s = open_stack(dir, false, NULL);
	check(s != NULL);
	if (s) {
		check_int(pf_stack_pread(s, got, CLU, 5 * CLU), ==, 0);
		check(!memcmp(got, data, CLU));
		check_int(pf_stack_close(s), ==, 0);
	}
	check_chain_deltas(dir, true, "enospc: after close");
	free(data);
	free(got);
	free(dir);
}

static bool stop_flag(void *ctx)
{
	return atomic_load((atomic_bool *)ctx);
}

static void test_enospc_timeout_and_stop(void)
{
	const uint64_t size = 16 * MiB;
	uint8_t *data = malloc(CLU), *got = malloc(CLU), *zero = calloc(1, CLU);
	char *dir = tu_new_image(tmp_root, size, CLU);
	struct events ev = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct pf_why why = { "" };
	struct pf_header h;
	struct fault_plan tw;
	atomic_bool stopping;
	struct open_args oa = { .factory = &tw.factory, .ev = &ev,
				.enospc_timeout_s = 1, .stopping = stop_flag,
				.stopping_ctx = &stopping };
	struct pf_stack_stat st;
	struct held_write hw;
	struct call c;
	struct pf_stack *s;
	double t0;

	tap_diag("ENOSPC: a held write times out, or fails when stopping");
	atomic_init(&stopping, false);
	if (pf_header_init(&h, size, CLU, &why))
		abort();
	fault_plan_init(&tw, FAULT_WRITE, 0, -EIO, pf_meta_bytes(&h));
	s = open_stack(dir, true, &oa);
	if (!s) {
		check(0);
		free(data);
		free(got);
		free(zero);
		free(dir);
		return;
	}
	atomic_store(&tw.nospace, true);
	tu_fill(data, CLU, 71, 0);
	hw = (struct held_write){ s, data, CLU, 2 * CLU };
	t0 = now_s();
	call_start(&c, held_write_fn, &hw);
	check_int(call_join(&c, "held write with enospc_timeout_s 1"), ==, -EIO);
	check_msg(now_s() - t0 >= 0.9, "held for about the timeout (%.2f s)",
		  now_s() - t0);
	check_int(ev_get(&ev, &ev.enospc_failed), ==, 1);
	check_u64(ev_get(&ev, &ev.enospc), >=, 1);
	pf_stack_stat(s, &st);
	check_int(st.held, ==, 0);
	check(!st.failed);	/* lack of space is no I/O error (W7) */
	/* nothing of it was written */
	check_int(pf_stack_pread(s, got, CLU, 2 * CLU), ==, 0);
	check(!memcmp(got, zero, CLU));

	/* stopping ends a hold early too; timeout or stop: -EIO */
	atomic_store(&stopping, true);
	call_start(&c, held_write_fn, &hw);
	check_int(call_join(&c, "held write while stopping"), ==, -EIO);
	check_int(ev_get(&ev, &ev.enospc_failed), ==, 2);
	atomic_store(&stopping, false);

	/* space again: writes work */
	atomic_store(&tw.nospace, false);
	check_int(pf_stack_pwrite(s, data, CLU, 2 * CLU), ==, 0);
	check_int(pf_stack_pread(s, got, CLU, 2 * CLU), ==, 0);
	check(!memcmp(got, data, CLU));
	check_int(pf_stack_close(s), ==, 0);
	check_chain_deltas(dir, true, "enospc timeout: after close");
	free(data);
	free(got);
	free(zero);
	free(dir);
}

static void test_enospc_snapshot_while_held(void)
{
	const uint64_t size = 16 * MiB;
	uint8_t *ref = calloc(1, size), *data = malloc(CLU);
	char *dir = tu_new_image(tmp_root, size, CLU);
	struct events ev = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct pf_stack_level lv[MAX_LEVELS];
	struct pf_why why = { "" };
	struct pf_header h;
	struct fault_plan tw;
	struct open_args oa = { .factory = &tw.factory, .ev = &ev };
	struct pf_stack_stat st;
	struct held_write hw;
	struct call c, sn;
	struct pf_stack *s;
	uint64_t h_old;

	tap_diag("ENOSPC: a snapshot while a write is held");
	if (pf_header_init(&h, size, CLU, &why))
		abort();
	fault_plan_init(&tw, FAULT_WRITE, 0, -EIO, pf_meta_bytes(&h));
	/* data in the top, its file trimmed to it: the next cluster needs
	 * new space */
	s = open_stack(dir, true, NULL);
	if (!s) {
		check(0);
		free(ref);
		free(data);
		free(dir);
		return;
	}
	tu_fill(ref, 3 * CLU, 81, 0);
	check_int(pf_stack_pwrite(s, ref, 3 * CLU, 0), ==, 0);
	check_int(pf_stack_close(s), ==, 0);
	s = open_stack(dir, true, &oa);
	if (!s) {
		check(0);
		return;
	}
	atomic_store(&tw.nospace, true);
	tu_fill(data, CLU, 82, 0);
	memcpy(ref + 7 * CLU, data, CLU);
	hw = (struct held_write){ s, data, CLU, 7 * CLU };
	call_start(&c, held_write_fn, &hw);
	check_msg(wait_held(s, 1), "the write is held");

	call_start(&sn, snapshot_fn, s);
	check_int(call_join(&sn, "snapshot while a write is held"), ==, 0);
	check_int(ev_get(&ev, &ev.snapshot), ==, 1);
	check_int(levels_of(s, lv), ==, 2);
	check_int(lv[0].mapped, ==, 3);
	check_int(lv[1].mapped, ==, 0);
	h_old = file_hash(dir, PF_BASE_NAME);
	/* still no space: the write is held against the new top now */
	check_msg(wait_held(s, 1), "still held after the snapshot");
	check(!atomic_load(&c.done));

	atomic_store(&tw.nospace, false);
	check_int(call_join(&c, "held write after the snapshot"), ==, 0);
	pf_stack_stat(s, &st);
	check_int(st.held, ==, 0);
	check_int(levels_of(s, lv), ==, 2);
	check_int(lv[0].mapped, ==, 3);
	check_int(lv[1].mapped, ==, 1);		/* it went into the new top */
	check(disk_equals(s, ref, size));
	check_int(pf_stack_flush(s), ==, 0);
	check_u64(file_hash(dir, PF_BASE_NAME), ==, h_old);
	check_int(pf_stack_close(s), ==, 0);
	check_chain_deltas(dir, true, "enospc snapshot: after close");
	qemu_check_chain(dir, "enospc snapshot: after close");
	s = open_stack(dir, false, NULL);
	check(s && disk_equals(s, ref, size));
	if (s)
		check_int(pf_stack_close(s), ==, 0);
	free(ref);
	free(data);
	free(dir);
}

struct held_discard {
	struct pf_stack *s;
	uint64_t off, len;
};

static int held_discard_fn(void *arg)
{
	struct held_discard *h = arg;

	return pf_stack_discard(h->s, h->off, h->len);
}

/* A partial discard over snapshot data writes zeros into a new cluster
 * of the top.  Without space it may be held like a write or fail with
 * ENOSPC (and change nothing); either way it never blocks a freeze. */
static void test_enospc_snapshot_while_discard(void)
{
	const uint64_t size = 16 * MiB;
	uint8_t *ref = calloc(1, size);
	char *dir = tu_new_image(tmp_root, size, CLU);
	struct pf_why why = { "" };
	struct pf_stack_stat st;
	struct pf_header h;
	struct fault_plan tw;
	struct open_args oa = { .factory = &tw.factory };
	struct held_discard hd;
	struct call c, sn;
	struct pf_stack *s;
	double end;
	int ret;

	tap_diag("ENOSPC: a snapshot while a partial discard finds no space");
	if (pf_header_init(&h, size, CLU, &why))
		abort();
	fault_plan_init(&tw, FAULT_WRITE, 0, -EIO, pf_meta_bytes(&h));
	s = open_stack(dir, true, NULL);
	if (!s) {
		check(0);
		free(ref);
		free(dir);
		return;
	}
	tu_fill(ref, 3 * CLU, 83, 0);
	check_int(pf_stack_pwrite(s, ref, 3 * CLU, 0), ==, 0);
	check_int(pf_stack_close(s), ==, 0);
	tu_snapshot(dir);	/* the data is in a lower delta now */
	s = open_stack(dir, true, &oa);
	if (!s) {
		check(0);
		return;
	}
	atomic_store(&tw.nospace, true);
	hd = (struct held_discard){ s, CLU + 100, 1000 };
	call_start(&c, held_discard_fn, &hd);
	end = now_s() + WAIT_S;	/* held, or already failed */
	do {
		pf_stack_stat(s, &st);
		sleep_ms(2);
	} while (!st.held && !atomic_load(&c.done) && now_s() < end);
	call_start(&sn, snapshot_fn, s);
	check_int(call_join(&sn, "snapshot while a discard finds no space"), ==,
		  0);
	atomic_store(&tw.nospace, false);
	ret = call_join(&c, "discard without space");
	check_msg(ret == 0 || ret == -ENOSPC, "discard: held or ENOSPC (%d)",
		  ret);
	check_msg(atomic_load(&tw.nospace_hits) > 0, "the backend refused space");
	if (ret == -ENOSPC) {
		/* nothing changed; with space it works */
		check(disk_equals(s, ref, size));
		check_int(pf_stack_discard(s, CLU + 100, 1000), ==, 0);
	}
	memset(ref + CLU + 100, 0, 1000);
	check(disk_equals(s, ref, size));
	check_int(pf_stack_close(s), ==, 0);
	check_chain_deltas(dir, true, "discard without space: after close");
	free(ref);
	free(dir);
}

/*
 * 7. A directory sync that fails after the descriptor rename (the policy
 * of descriptor.h): the change stands, the call fails, the image goes to
 * the failed state (W7), and the file the new descriptor dropped stays.
 */
static void test_descriptor_not_durable(void)
{
	const uint64_t size = 4 * MiB;
	uint8_t *buf = malloc(CLU);
	char *dir = tu_new_image(tmp_root, size, CLU);
	char g1[PF_GUID_LEN + 1] = "", f[256], path[512];
	struct pf_stack_stat st;
	struct pf_stack_merge_info mi;
	struct pf_why why = { "" };
	struct pf_stack *s = open_stack(dir, true, NULL);

	tap_diag("descriptor replaced, directory sync failed");
	if (!s || !buf) {
		check(0);
		goto out;
	}
	tu_fill(buf, CLU, 7, 0);
	check_int(pf_stack_pwrite(s, buf, CLU, 0), ==, 0);
	/* the new delta's directory sync is the first, the descriptor's
	 * the second */
	wrap_fsync_dir_fail = 2;
	wrap_fsync_dir_failed = 0;
	check_int(pf_stack_snapshot(s, NULL, g1, &why), ==, -EIO);
	check_int(wrap_fsync_dir_failed, ==, 1);
	check_msg(strstr(why.msg, "snapshot taken") &&
		  strstr(why.msg, "W7"), "why: %s", why.msg);
	pf_stack_stat(s, &st);
	check(st.failed);
	check_int(st.deltas, ==, 2);	/* the switch stands */
	check_int(dd_chain_len(dir), ==, 2);
	check_int(pf_stack_pwrite(s, buf, CLU, CLU), ==, -EIO);
	check_int(pf_stack_flush(s), ==, -EIO);
	check_int(pf_stack_pread(s, buf, CLU, 0), ==, 0);	/* reads go on */
	check_int(pf_stack_close(s), ==, -EIO);

	/* an up merge (the only snapshot into the top): the descriptor's
	 * directory sync is the only one; the merged file stays */
	s = open_stack(dir, true, NULL);
	if (!s) {
		check(0);
		goto out;
	}
	dd_file_of(dir, g1, f, sizeof(f));
	wrap_fsync_dir_fail = 1;
	memset(&why, 0, sizeof(why));
	check_int(pf_stack_delete_snapshot(s, g1, 0, &mi, &why), ==, -EIO);
	check_int(wrap_fsync_dir_failed, ==, 2);
	check_msg(strstr(why.msg, "snapshot deleted") != NULL, "why: %s",
		  why.msg);
	check_int(dd_chain_len(dir), ==, 1);
	snprintf(path, sizeof(path), "%s/%s", dir, f);
	check_msg(access(path, F_OK) == 0, "%s kept", f);
	pf_stack_stat(s, &st);
	check(st.failed);
	check_int(st.deltas, ==, 1);
	check_int(pf_stack_pread(s, buf, CLU, 0), ==, 0);
	check_int(pf_stack_close(s), ==, -EIO);
out:
	wrap_fsync_dir_fail = 0;
	free(buf);
	free(dir);
}

int main(void)
{
	/* base, s1, s2, top: which level to delete, in turn */
	static const unsigned down_base[] = { 0, 0, 0 };	/* down, down, up */
	static const unsigned down_mid[] = { 1, 1, 0 };	/* down, up, up */
	static const unsigned up_first[] = { 2, 0, 0 };	/* up, down, up */
	static const struct {
		unsigned nth;
		bool same;	/* retry in the same session */
	} faults[] = {
		{ 1, false }, { 140, true }, { 275, true }, { 276, false },
		{ 276, true }, { 277, true },
	};
	char cmd[600];
	size_t i;

	alarm(1800);	/* the last resort against a hang */
	if (!mkdtemp(tmp_root)) {
		perror("mkdtemp");
		return 1;
	}
	have_qemu = system("qemu-img --version >/dev/null 2>&1") == 0;

	test_snapshot_basic(false);
	test_snapshot_basic(true);
	test_views();
	test_delete(1100, true, true, down_base, 3, 1);
	test_delete(320, true, false, down_mid, 3, 2);
	test_delete(320, true, true, up_first, 3, 3);
	test_delete(1100, false, false, down_mid, 3, 4);
	test_delete(320, false, true, down_base, 3, 5);
	test_delete(320, false, false, up_first, 3, 6);
	test_concurrent_snapshots_and_deletes();
	test_racing_structural();
	/* 275 cluster copies into the parent, then BAT pages 0 and 1 */
	for (i = 0; i < PF_ARRAY_SIZE(faults); i++)
		test_interrupted_down_merge(faults[i].nth, faults[i].same);
	test_interrupted_empty_parent();
	test_down_merge_overwrite_only();
	test_enospc_hold_and_release();
	test_enospc_timeout_and_stop();
	test_enospc_snapshot_while_held();
	test_enospc_snapshot_while_discard();
	test_descriptor_not_durable();

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_root);
	if (system(cmd) != 0)
		tap_diag("cannot remove %s", tmp_root);
	return tap_done();
}
