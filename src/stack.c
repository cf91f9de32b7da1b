// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The delta stack engine (see stack.h).
 *
 * Map.  Every delta keeps its BAT in memory as on disk (raw little-endian
 * entries after the 64-byte header).  level_of[idx] is the highest level
 * whose BAT maps virtual cluster idx, or LEVEL_NONE.  Readers look both up
 * without locks: an allocation stores the top entry and then level_of
 * (release), a reader loads level_of and then the entry (acquire), so a
 * reader that sees the top level sees its entry.  A top entry read as 0
 * (an unmapping in progress) reads as zeros.
 *
 * Range locks.  Writes, allocations and discards lock byte ranges of one
 * virtual cluster: an in-place write locks the (alignment-rounded) range
 * it writes until its I/O completes; an allocation or discard locks the
 * whole cluster.  So a write to a cluster is never lost to a concurrent
 * copy-on-write of it, concurrent first writers allocate once, and a
 * read-modify-write of a partial block never undoes a neighbour's write.
 * Reads take no lock.
 *
 * Epochs.  Every read and write runs inside an epoch (two counters).  A
 * commit flips the epoch and waits for the old one to drain before it
 * frees clusters that were unmapped before the flip, so no I/O that
 * looked up the old mapping can touch a cluster after it is punched or
 * reused (the dm-thin discard race, seed 001).
 *
 * Crash safety: the commit (commit()) follows W1-W4:
 *   1. close the transaction: copy the dirty BAT pages and take the list
 *      of clusters unmapped in it (W2: later changes go to the next one);
 *   2. fdatasync the top delta: every cluster those pages point to is
 *      durable (W1) -- entries are only set after their data write
 *      completed;
 *   3. write the copied pages, fdatasync (W3);
 *   4. punch the unmapped clusters and make them reusable (W4).
 * Any failure of 2-4 puts the stack in the sticky failed state (W7).
 *
 * Threads: callers (FUSE workers) run lookups, submit I/O and do the
 * synchronous parts (copy-on-write, read-modify-write, discard); the aio
 * completion thread finishes reads and in-place writes; the writeback
 * thread commits periodically, and pf_stack_flush() runs the commit it
 * waits for in its caller's thread unless one is running (group commit
 * without a hand-off to another thread).
 *
 * Lock order: range lock, then alloc_lock or bat_lock (never both), then
 * wb_lock.  No lock but a range lock is held across I/O.
 */
#include "stack.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "delta.h"
#include "descriptor.h"
#include "file.h"
#include "format.h"
#include "image.h"
#include "io.h"
#include "log.h"

#define LEVEL_NONE	0xFFu
#define RLOCK_BUCKETS	256
#define AIO_DEPTH	1024
#define PREALLOC_BYTES	(64ull << 20)	/* grow the top file in steps */
_Static_assert(PREALLOC_BYTES >= PF_CLUSTER_MAX, "whole clusters");

/* A locked byte range [start, end) of virtual cluster idx. */
struct rlock {
	uint32_t idx;
	uint32_t start, end;
	struct rlock *next;
};

struct rbucket {
	pthread_mutex_t lock;
	pthread_cond_t released;
	struct rlock *head;	/* protected by lock */
};

struct level {
	struct pf_delta *d;	/* its file (all I/O), header and BAT */
	char guid[PF_GUID_LEN + 1];	/* its Image GUID in the descriptor */
	uint64_t mapped;	/* clusters mapped (lower levels: fixed) */
	bool hidden;		/* being merged away: no snapshot view */
};

struct pf_stack {
	int dirfd;		/* holds the exclusive image lock */
	char *dir;
	unsigned n_levels;	/* changes only frozen, under levels_lock */
	unsigned cap_levels;
	struct level *levels;	/* base first */
	pthread_mutex_t levels_lock;	/* status readers vs. a switch */
	struct level *top;
	const struct pf_header *hdr;	/* top's header geometry */
	uint64_t size_bytes;		/* geometry for unlocked readers */
	uint32_t cluster_bytes;
	uint8_t *level_of;	/* per virtual cluster; atomic access */
	size_t align;		/* I/O alignment of the top delta */
	struct pf_aio *aio;	/* the I/O engine of every delta's file */
	struct pf_delta_io io;	/* how deltas are opened */
	struct rbucket rb[RLOCK_BUCKETS];

	/* BAT of the top delta (top->d->meta), page aligned, whole pages;
	 * the header lives in its first 64 bytes.  Entries: atomic access;
	 * pages and the dirty set: protected by bat_lock. */
	uint8_t *top_meta;
	size_t meta_pages;
	pthread_mutex_t bat_lock;
	struct pf_header top_hdr;	/* in-memory header, under bat_lock */
	uint8_t *page_dirty;		/* under bat_lock */
	uint32_t *dirty_list;		/* under bat_lock */
	size_t n_dirty;			/* under bat_lock */
	uint32_t *pending_free;		/* unmapped this txn, under bat_lock */
	size_t n_pending, cap_pending;
	uint64_t top_mapped;		/* under bat_lock */

	/* Allocation in the top file, protected by alloc_lock. */
	pthread_mutex_t alloc_lock;
	uint64_t alloc_head;	/* first never-used cluster */
	uint64_t file_clusters;	/* current length of the top file */
	uint32_t *free_list;	/* punched, unreferenced clusters */
	size_t n_free, cap_free;

	/* Epochs (see the file comment). */
	atomic_uint epoch;
	atomic_uint epoch_count[2];
	atomic_bool epoch_waiting;
	pthread_mutex_t epoch_lock;
	pthread_cond_t epoch_drained;

	/* Writeback. */
	pthread_mutex_t commit_lock;	/* one commit at a time */
	pthread_mutex_t wb_lock;
	pthread_cond_t wb_kick;		/* stop */
	pthread_cond_t wb_done;		/* done advanced */
	uint64_t started, done;		/* commit sequence numbers */
	uint64_t want;			/* a flush waits for this commit */
	bool committing;		/* a thread runs commit started */
	bool wb_stop, wb_running;
	pthread_t wb_thread;
	unsigned commit_ms;
	bool no_direct;
	atomic_bool failed;		/* W7 */
	atomic_bool frozen;		/* the gate is closed (below) */
	atomic_uint_fast64_t commits, datasyncs;

	/* The gate: every request holds it while it runs; a freeze closes
	 * it and waits for the requests inside and the in-place writes in
	 * flight (see freeze()).  Held writes step out while they wait. */
	atomic_uint gate_active;
	atomic_uint writes_inflight;
	pthread_mutex_t gate_lock;
	pthread_cond_t gate_open;	/* frozen went false */
	pthread_cond_t gate_drained;	/* active or inflight may be 0 */
	pthread_mutex_t struct_lock;	/* one structural command */
	atomic_uint_fast64_t freezes, stall_last_us, stall_max_us;

	/* Writes held for lack of space on the host (CTL-8). */
	pthread_mutex_t space_lock;
	pthread_cond_t space_cv;	/* space may have been freed */
	atomic_uint held;
	atomic_uint_fast64_t enospc_events;
	unsigned enospc_timeout_s;
	bool (*stopping)(void *ctx);
	void *stopping_ctx;
	void (*event)(void *ctx, const char *type, const char *text);
	void *event_ctx;
	void (*crash_point)(void *ctx, const char *name);	/* tests */
	void *crash_point_ctx;
};

/*
 * Crash points: the boundaries between the steps of the update sequences
 * (open, allocation, copy-on-write, discard, commit, snapshot, merge down
 * and up, close), named for the test hook pf_stack_opts.crash_point.
 * One list; HACKING ("Crash points") says what a crash at each proves.
 */
#define CRASH_POINTS(X)							\
	X(CP_OPEN_LEAK_PUNCHED,		"open.leak-punched")		\
	X(CP_OPEN_TAIL_TRIMMED,		"open.tail-trimmed")		\
	X(CP_OPEN_INUSE_WRITTEN,	"open.in-use-written")		\
	X(CP_OPEN_INUSE_SYNCED,		"open.in-use-synced")		\
	X(CP_ALLOC_FILE_GROWN,		"alloc.file-grown")		\
	X(CP_ALLOC_DATA_WRITTEN,	"alloc.data-written")		\
	X(CP_COW_DATA_WRITTEN,		"cow.data-written")		\
	X(CP_ALLOC_MAPPED,		"alloc.mapped")			\
	X(CP_DISCARD_PUNCHED,		"discard.punched")		\
	X(CP_DISCARD_UNMAPPED,		"discard.unmapped")		\
	X(CP_DISCARD_SHADOWED,		"discard.shadowed")		\
	X(CP_COMMIT_DATA_SYNCED,	"commit.data-synced")		\
	X(CP_COMMIT_BAT_WRITTEN,	"commit.bat-page-written")	\
	X(CP_COMMIT_BAT_SYNCED,		"commit.bat-synced")		\
	X(CP_COMMIT_FREED_PUNCHED,	"commit.freed-punched")		\
	X(CP_SNAP_DELTA_CREATED,	"snap.delta-created")		\
	X(CP_SNAP_DD_TMP,		"snap.dd-tmp-written")		\
	X(CP_SNAP_COMMITTED,		"snap.old-top-committed")	\
	X(CP_SNAP_DD_RENAMED,		"snap.dd-renamed")		\
	X(CP_MD_MARKED,			"merge-down.marked-temporary")	\
	X(CP_MD_GROWN,			"merge-down.parent-grown")	\
	X(CP_MD_COPIED,			"merge-down.copied")		\
	X(CP_MD_COPY_SYNCED,		"merge-down.copy-synced")	\
	X(CP_MD_BAT_WRITTEN,		"merge-down.bat-page-written")	\
	X(CP_MD_BAT_SYNCED,		"merge-down.bat-synced")	\
	X(CP_MD_DD_TMP,			"merge-down.dd-tmp-written")	\
	X(CP_MD_DD_RENAMED,		"merge-down.dd-renamed")	\
	X(CP_MD_UNLINKED,		"merge-down.child-unlinked")	\
	X(CP_MU_COPIED,			"merge-up.copied")		\
	X(CP_MU_COMMITTED,		"merge-up.committed")		\
	X(CP_MU_DD_TMP,			"merge-up.dd-tmp-written")	\
	X(CP_MU_DD_RENAMED,		"merge-up.dd-renamed")		\
	X(CP_MU_UNLINKED,		"merge-up.parent-unlinked")	\
	X(CP_MU_BASE_LINKED,		"merge-up.base-name-linked")	\
	X(CP_MU_BASE_NAMED,		"merge-up.base-name-committed")	\
	X(CP_MU_OLD_NAME_UNLINKED,	"merge-up.old-name-unlinked")	\
	X(CP_CLOSE_COMMITTED,		"close.committed")		\
	X(CP_CLOSE_TRIMMED,		"close.tail-trimmed")		\
	X(CP_CLOSE_INUSE_WRITTEN,	"close.in-use-cleared")

#define CP_ENUM(id, name)	id,
#define CP_NAME(id, name)	name,
/* CP_NONE: a step that is no crash point in its sequence */
enum crash_point { CP_NONE, CRASH_POINTS(CP_ENUM) CP_COUNT };
static const char *const crash_point_names[] = { NULL, CRASH_POINTS(CP_NAME) };

const char *const *pf_stack_crash_points(size_t *n)
{
	*n = CP_COUNT - 1;
	return crash_point_names + 1;
}

/* Step @cp is done: a test may cut the power here. */
static inline void crash_point(struct pf_stack *s, enum crash_point cp)
{
	if (s->crash_point && cp != CP_NONE)
		s->crash_point(s->crash_point_ctx, crash_point_names[cp]);
}

/* Small helpers */

static inline uint8_t level_load(const struct pf_stack *s, uint32_t idx)
{
	return __atomic_load_n(&s->level_of[idx], __ATOMIC_ACQUIRE);
}

static inline void level_store(struct pf_stack *s, uint32_t idx, uint8_t l)
{
	__atomic_store_n(&s->level_of[idx], l, __ATOMIC_RELEASE);
}

/* File cluster that level @l maps @idx to, 0 if none. */
static inline uint32_t level_clu(const struct pf_stack *s, unsigned l,
				 uint32_t idx)
{
	return pf_delta_clu(s->levels[l].d, idx);
}

static uint64_t round_down(uint64_t v, uint64_t a)
{
	return v - v % a;
}

static uint64_t round_up(uint64_t v, uint64_t a)
{
	return round_down(v + a - 1, a);
}

static bool aligned(const struct pf_stack *s, const void *buf, uint64_t off,
		    uint64_t len)
{
	return !((uintptr_t)buf % s->align) && !(off % s->align) &&
	       !(len % s->align);
}

static void *alloc_aligned(const struct pf_stack *s, size_t len)
{
	void *p = NULL;

	if (posix_memalign(&p, s->align < 4096 ? 4096 : s->align, len))
		return NULL;
	return p;
}

static void PF_PRINTF(3, 4) emit(struct pf_stack *s, const char *type,
				  const char *fmt, ...)
{
	char text[256];
	va_list ap;

	if (!s->event)
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	s->event(s->event_ctx, type, text);
}

static void set_failed(struct pf_stack *s, const char *what, int err)
{
	if (!atomic_exchange(&s->failed, true)) {
		pf_log(PF_LOG_ERR,
		       "%s: %s failed: %s; image is now read-only until remounted (W7)",
		       s->dir, what, strerror(-err));
		emit(s, "failed", "%s failed: %s; writes fail until remounted",
		     what, strerror(-err));
	}
}

/* Epochs */

static unsigned epoch_enter(struct pf_stack *s)
{
	for (;;) {
		unsigned e = atomic_load(&s->epoch);

		atomic_fetch_add(&s->epoch_count[e], 1);
		if (atomic_load(&s->epoch) == e)
			return e;
		atomic_fetch_sub(&s->epoch_count[e], 1);	/* flipped */
	}
}

static void epoch_exit(struct pf_stack *s, unsigned e)
{
	if (atomic_fetch_sub(&s->epoch_count[e], 1) == 1 &&
	    atomic_load(&s->epoch_waiting)) {
		pthread_mutex_lock(&s->epoch_lock);
		pthread_cond_broadcast(&s->epoch_drained);
		pthread_mutex_unlock(&s->epoch_lock);
	}
}

/* Wait until every read and write that started before now completed. */
static void epoch_flip_and_drain(struct pf_stack *s)
{
	unsigned old;

	pthread_mutex_lock(&s->epoch_lock);
	old = atomic_load(&s->epoch);
	atomic_store(&s->epoch, old ^ 1);
	atomic_store(&s->epoch_waiting, true);
	while (atomic_load(&s->epoch_count[old]))
		pf_aio_wait(&s->epoch_drained, &s->epoch_lock, NULL);
	atomic_store(&s->epoch_waiting, false);
	pthread_mutex_unlock(&s->epoch_lock);
}

/* The gate and freezing (CTL-3, CTL-5) */

static void gate_wake(struct pf_stack *s)
{
	pthread_mutex_lock(&s->gate_lock);
	pthread_cond_broadcast(&s->gate_drained);
	pthread_mutex_unlock(&s->gate_lock);
}

static void gate_exit(struct pf_stack *s)
{
	if (atomic_fetch_sub(&s->gate_active, 1) == 1 &&
	    atomic_load(&s->frozen))
		gate_wake(s);
}

/* Enter the gate, waiting while the stack is frozen. */
static void gate_enter(struct pf_stack *s)
{
	for (;;) {
		atomic_fetch_add(&s->gate_active, 1);
		if (!atomic_load(&s->frozen))
			return;
		gate_exit(s);
		pthread_mutex_lock(&s->gate_lock);
		while (atomic_load(&s->frozen))
			pf_aio_wait(&s->gate_open, &s->gate_lock, NULL);
		pthread_mutex_unlock(&s->gate_lock);
	}
}

static void inflight_done(struct pf_stack *s)
{
	if (atomic_fetch_sub(&s->writes_inflight, 1) == 1 &&
	    atomic_load(&s->frozen))
		gate_wake(s);
}

/*
 * Freeze: no request runs and no write is in flight when this returns,
 * and no commit runs until thaw() (commit_lock is held).  Requests that
 * arrive meanwhile wait at the gate; held writes are outside it.  Only
 * one freeze at a time: callers hold struct_lock.
 */
static uint64_t freeze(struct pf_stack *s)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	pthread_mutex_lock(&s->gate_lock);
	atomic_store(&s->frozen, true);
	while (atomic_load(&s->gate_active) ||
	       atomic_load(&s->writes_inflight))
		pf_aio_wait(&s->gate_drained, &s->gate_lock, NULL);
	pthread_mutex_unlock(&s->gate_lock);
	pthread_mutex_lock(&s->commit_lock);
	return (uint64_t)t.tv_sec * 1000000 + (uint64_t)t.tv_nsec / 1000;
}

static uint64_t thaw(struct pf_stack *s, uint64_t since_us)
{
	struct timespec t;
	uint64_t now, stall, max;

	pthread_mutex_unlock(&s->commit_lock);
	pthread_mutex_lock(&s->gate_lock);
	atomic_store(&s->frozen, false);
	pthread_cond_broadcast(&s->gate_open);
	pthread_mutex_unlock(&s->gate_lock);
	clock_gettime(CLOCK_MONOTONIC, &t);
	now = (uint64_t)t.tv_sec * 1000000 + (uint64_t)t.tv_nsec / 1000;
	stall = now - since_us;
	atomic_fetch_add(&s->freezes, 1);
	atomic_store(&s->stall_last_us, stall);
	max = atomic_load(&s->stall_max_us);
	while (stall > max &&
	       !atomic_compare_exchange_weak(&s->stall_max_us, &max, stall))
		;
	return stall;
}

/* Range locks */

static struct rbucket *rbucket_of(struct pf_stack *s, uint32_t idx)
{
	return &s->rb[(idx * 2654435761u) % RLOCK_BUCKETS];
}

static bool rlock_conflicts(const struct rbucket *b, const struct rlock *r)
{
	const struct rlock *o;

	for (o = b->head; o; o = o->next)
		if (o->idx == r->idx && o->start < r->end && r->start < o->end)
			return true;
	return false;
}

static void rlock_acquire(struct pf_stack *s, struct rlock *r, uint32_t idx,
			  uint64_t start, uint64_t end)
{
	struct rbucket *b = rbucket_of(s, idx);

	r->idx = idx;
	r->start = (uint32_t)start;
	r->end = (uint32_t)end;
	pthread_mutex_lock(&b->lock);
	/* the holder may be this thread's own request (io.h) */
	while (rlock_conflicts(b, r))
		pf_aio_wait(&b->released, &b->lock, NULL);
	r->next = b->head;
	b->head = r;
	pthread_mutex_unlock(&b->lock);
}

static void rlock_release(struct pf_stack *s, struct rlock *r)
{
	struct rbucket *b = rbucket_of(s, r->idx);
	struct rlock **pp;

	pthread_mutex_lock(&b->lock);
	for (pp = &b->head; *pp; pp = &(*pp)->next)
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	pthread_cond_broadcast(&b->released);
	pthread_mutex_unlock(&b->lock);
}

/* BAT updates (top delta) */

static void page_mark_dirty(struct pf_stack *s, uint32_t page)
{
	if (!s->page_dirty[page]) {
		s->page_dirty[page] = 1;
		s->dirty_list[s->n_dirty++] = page;
	}
}

/* Map @idx to file cluster @clu in the top delta (0: unmap).  Called with
 * the cluster's whole range locked, after the data is written (W1 is kept
 * by the commit, which syncs data before it writes the page). */
static int top_set(struct pf_stack *s, uint32_t idx, uint32_t clu,
		   uint8_t new_level)
{
	int ret = 0;

	pthread_mutex_lock(&s->bat_lock);
	if (!clu && s->n_pending == s->cap_pending) {
		size_t cap = s->cap_pending ? s->cap_pending * 2 : 64;
		uint32_t *p = realloc(s->pending_free, cap * sizeof(*p));

		if (!p) {
			ret = -ENOMEM;
			goto out;
		}
		s->pending_free = p;
		s->cap_pending = cap;
	}
	if (clu) {
		s->top_mapped++;
		if (s->top_hdr.flags & PF_FLAG_EMPTY) {
			s->top_hdr.flags &= ~PF_FLAG_EMPTY;
			pf_header_encode(&s->top_hdr, s->top_meta);
			page_mark_dirty(s, 0);
		}
	} else {
		s->top_mapped--;
		/* W4: freed only after this transaction's commit */
		s->pending_free[s->n_pending++] =
			level_clu(s, s->n_levels - 1, idx);
	}
	pf_bat_store(&s->top_hdr, s->top_meta, idx, clu);
	level_store(s, idx, new_level);
	page_mark_dirty(s, pf_idx_to_page(idx));
out:
	pthread_mutex_unlock(&s->bat_lock);
	return ret;
}

/* Allocation of clusters in the top file */

static int punch(struct level *lv, uint64_t off, uint64_t len)
{
	return lv->d->f->ops->punch(lv->d->f, off, len);
}

static int free_push(struct pf_stack *s, uint32_t clu)
{
	if (s->n_free == s->cap_free) {
		size_t cap = s->cap_free ? s->cap_free * 2 : 64;
		uint32_t *p = realloc(s->free_list, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		s->free_list = p;
		s->cap_free = cap;
	}
	s->free_list[s->n_free++] = clu;
	return 0;
}

/* Give the top file's clusters [first, first + n) space (file.h
 * allocate), or just grow the file where the backend cannot. */
static int space_for(struct pf_stack *s, uint64_t first, uint64_t n)
{
	struct pf_file *f = s->top->d->f;
	uint64_t off = first << s->hdr->cluster_shift;
	uint64_t len = n << s->hdr->cluster_shift;
	int ret;

	if (!f->ops->allocate) {
		if (first + n <= s->file_clusters)
			return 0;
		return f->ops->truncate(f, off + len);
	}
	ret = f->ops->allocate(f, off, len);
	if (ret) {
		/* A failed fallocate may keep what it got (and grow the
		 * file): give it back, so a held write does not take the
		 * host's last free space nor leave a partial cluster. */
		if (first >= s->file_clusters)
			(void)f->ops->truncate(f, s->file_clusters
						       << s->hdr->cluster_shift);
		else
			(void)f->ops->punch(f, off, len);
	}
	return ret;
}

/*
 * A cluster of the top file that reads as zeros and nothing references:
 * a punched hole from the free list (W4), or the next one at the end,
 * growing the file in PREALLOC_BYTES steps.  Space is allocated here, so
 * a full host filesystem shows as -ENOSPC before any data is written.
 */
static int cluster_alloc(struct pf_stack *s, uint32_t *clu)
{
	const struct pf_header *h = s->hdr;
	uint64_t grow = 0, max = pf_max_file_clusters(h);
	int ret = 0;

	pthread_mutex_lock(&s->alloc_lock);
	if (s->n_free) {
		*clu = s->free_list[s->n_free - 1];
		ret = space_for(s, *clu, 1);
		if (!ret)
			s->n_free--;
		goto out;
	}
	if (s->alloc_head >= max) {
		ret = -ENOSPC;	/* the BAT cannot address more */
		goto out;
	}
	if (s->alloc_head >= s->file_clusters) {
		/* >= 1: clusters are at most PREALLOC_BYTES */
		grow = PREALLOC_BYTES >> h->cluster_shift;
		if (grow > max - s->file_clusters)
			grow = max - s->file_clusters;
		ret = space_for(s, s->file_clusters, grow);
		if (ret == -ENOSPC && grow > 1) {
			grow = 1;	/* room for one more, maybe */
			ret = space_for(s, s->file_clusters, grow);
		}
		if (ret)
			goto out;
		s->file_clusters += grow;
	}
	*clu = (uint32_t)s->alloc_head++;
out:
	pthread_mutex_unlock(&s->alloc_lock);
	if (!ret && grow)
		crash_point(s, CP_ALLOC_FILE_GROWN);
	return ret;
}

/* Synchronous data I/O in the caller's thread */

static int data_pread(struct level *lv, void *buf, size_t len, uint64_t off)
{
	return pf_delta_read(lv->d, buf, len, off);
}

/* A data write that fails for any reason but lack of space or memory
 * leaves the image in an unknown state: fail it (W7). */
static void data_write_failed(struct pf_stack *s, int err)
{
	if (err != -ENOSPC && err != -ENOMEM)
		set_failed(s, "data write", err);
}

static int data_pwrite(struct pf_stack *s, const void *buf, size_t len,
		       uint64_t off)
{
	struct pf_file *f = s->top->d->f;
	int ret = f->ops->pwrite(f, buf, len, off);

	if (ret)
		data_write_failed(s, ret);
	return ret;
}

/* Reads and writes for the completion path: the file's engine decides
 * where they run (io.h). */
static void data_submit(struct level *lv, bool write, struct pf_aio_req *r,
			void *buf, size_t len, uint64_t off,
			pf_aio_done_fn done, void *arg)
{
	struct pf_file *f = lv->d->f;

	f->ops->submit(f, r, write, buf, len, off, done, arg);
}

void pf_stack_batch(struct pf_stack *s, bool begin)
{
	pf_aio_batch(s->aio, begin);
}

/*
 * Write @len bytes at byte @in_off of the top cluster @clu, which the
 * caller has range-locked.  Unaligned pieces are read, patched and
 * written back.
 */
static int write_in_place(struct pf_stack *s, uint32_t clu, uint64_t in_off,
			  const void *src, size_t len)
{
	uint64_t base = pf_clu_to_off(s->hdr, clu);
	uint64_t a0, a1;
	uint8_t *tmp;
	int ret;

	if (aligned(s, src, in_off, len))
		return data_pwrite(s, src, len, base + in_off);
	a0 = round_down(in_off, s->align);
	a1 = round_up(in_off + len, s->align);
	tmp = alloc_aligned(s, a1 - a0);
	if (!tmp)
		return -ENOMEM;
	ret = data_pread(s->top, tmp, a1 - a0, base + a0);
	if (!ret) {
		memcpy(tmp + (in_off - a0), src, len);
		ret = data_pwrite(s, tmp, a1 - a0, base + a0);
	}
	free(tmp);
	return ret;
}

/*
 * First write to virtual cluster @idx in the top delta: allocate, copy
 * the rest of the cluster from the lower delta that maps it (or leave the
 * zeros of the fresh cluster), write, then map.  Locks the whole cluster,
 * so concurrent first writers allocate once and later ones write in
 * place.
 */
static int write_allocating(struct pf_stack *s, uint32_t idx, uint64_t in_off,
			    const void *src, size_t len)
{
	const uint32_t cs = s->hdr->cluster_bytes;
	uint8_t top = (uint8_t)(s->n_levels - 1), lower;
	uint32_t clu, lclu;
	struct rlock rl;
	uint8_t *cbuf = NULL;
	uint64_t a0, a1;
	int ret;

	rlock_acquire(s, &rl, idx, 0, cs);
	clu = level_clu(s, top, idx);
	if (clu) {	/* another writer allocated it meanwhile */
		ret = len ? write_in_place(s, clu, in_off, src, len) : 0;
		goto out;
	}
	ret = cluster_alloc(s, &clu);
	if (ret)
		goto out;
	lower = level_load(s, idx);
	if (lower != LEVEL_NONE && lower != top &&
	    (lclu = level_clu(s, lower, idx)) != 0) {
		/* copy-on-write of the whole cluster */
		cbuf = alloc_aligned(s, cs);
		ret = cbuf ? 0 : -ENOMEM;
		if (!ret)
			ret = data_pread(&s->levels[lower], cbuf, cs,
					 pf_clu_to_off(&s->levels[lower].d->hdr,
						       lclu));
		if (!ret) {
			if (len)
				memcpy(cbuf + in_off, src, len);
			ret = data_pwrite(s, cbuf, cs, pf_clu_to_off(s->hdr, clu));
			if (!ret)
				crash_point(s, CP_COW_DATA_WRITTEN);
		}
	} else if (aligned(s, src, in_off, len)) {
		/* the rest of a fresh cluster reads as zeros already */
		ret = data_pwrite(s, src, len, pf_clu_to_off(s->hdr, clu) + in_off);
		if (!ret)
			crash_point(s, CP_ALLOC_DATA_WRITTEN);
	} else {
		a0 = round_down(in_off, s->align);
		a1 = round_up(in_off + len, s->align);
		cbuf = alloc_aligned(s, a1 - a0);
		ret = cbuf ? 0 : -ENOMEM;
		if (!ret) {
			memset(cbuf, 0, a1 - a0);
			memcpy(cbuf + (in_off - a0), src, len);
			ret = data_pwrite(s, cbuf, a1 - a0,
					  pf_clu_to_off(s->hdr, clu) + a0);
			if (!ret)
				crash_point(s, CP_ALLOC_DATA_WRITTEN);
		}
	}
	if (ret) {
		/* Unreferenced: reusable once punched (reads zeros again),
		 * else a leak that the next open reclaims (W8). */
		if (ret != -ENOSPC)
			pf_log(PF_LOG_ERR, "%s: write of cluster %" PRIu32 " of the top delta failed: %s",
			       s->dir, clu, strerror(-ret));
		if (!atomic_load(&s->failed) &&
		    !punch(s->top, pf_clu_to_off(s->hdr, clu), cs)) {
			pthread_mutex_lock(&s->alloc_lock);
			(void)free_push(s, clu);
			pthread_mutex_unlock(&s->alloc_lock);
		}
		goto out;
	}
	ret = top_set(s, idx, clu, top);
	if (!ret)
		crash_point(s, CP_ALLOC_MAPPED);
out:
	free(cbuf);
	rlock_release(s, &rl);
	return ret;
}

/* Asynchronous reads and writes */

struct op;

struct seg {
	struct op *op;
	struct pf_aio_req aio;
	struct rlock rl;
	bool locked;
	size_t len;
};

struct op {
	struct pf_stack *s;
	pf_stack_done_fn done;
	void *arg;
	atomic_int pending;	/* segments in flight + the submitter */
	atomic_int err;
	unsigned epoch;
	bool gated;		/* holds the gate (every request but internal
				 * writes of a discard, which holds it) */
	struct seg segs[];
};

/* An unaligned read: the aligned range around it is read into @buf,
 * then @len bytes from @skip are copied out to @user. */
struct bounce {
	uint8_t *buf;
	void *user;
	size_t len, skip;
	pf_stack_done_fn done;
	void *arg;
};

static void op_error(struct op *op, int err)
{
	int zero = 0;

	atomic_compare_exchange_strong(&op->err, &zero, err);
}

static void op_put(struct op *op)
{
	struct pf_stack *s = op->s;
	bool gated = op->gated;

	if (atomic_fetch_sub(&op->pending, 1) != 1)
		return;
	epoch_exit(s, op->epoch);
	op->done(op->arg, atomic_load(&op->err));
	free(op);
	if (gated)
		gate_exit(s);
}

static struct op *op_new(struct pf_stack *s, size_t len, uint64_t off,
			 pf_stack_done_fn done, void *arg, bool gated,
			 size_t *n_segs)
{
	uint64_t first = off >> s->hdr->cluster_shift;
	uint64_t last = (off + len - 1) >> s->hdr->cluster_shift;
	struct op *op;

	*n_segs = (size_t)(last - first + 1);
	op = calloc(1, sizeof(*op) + *n_segs * sizeof(struct seg));
	if (!op)
		return NULL;
	op->s = s;
	op->done = done;
	op->arg = arg;
	atomic_init(&op->pending, 1);
	atomic_init(&op->err, 0);
	op->gated = gated;
	if (gated)
		gate_enter(s);
	op->epoch = epoch_enter(s);
	return op;
}

static void read_seg_done(void *arg, ssize_t res)
{
	struct seg *g = arg;

	if (res < 0)
		op_error(g->op, (int)res);
	else if ((size_t)res != g->len)
		op_error(g->op, -EIO);
	op_put(g->op);
}

static void bounce_done(void *arg, int err)
{
	struct bounce *b = arg;

	if (!err)
		memcpy(b->user, b->buf + b->skip, b->len);
	free(b->buf);
	b->done(b->arg, err);
	free(b);
}

/*
 * The piece of the request [@off, @off + @len) that starts @*pos bytes in
 * and ends at the next cluster boundary (or the request's end): its
 * virtual cluster and offset in it.  Advances @*pos; returns the length.
 */
static size_t seg_at(const struct pf_header *h, uint64_t off, size_t len,
		     size_t *pos, uint32_t *idx, uint64_t *in_off)
{
	uint64_t voff = off + *pos;
	size_t seg_len;

	*idx = (uint32_t)(voff >> h->cluster_shift);
	*in_off = voff & (h->cluster_bytes - 1);
	seg_len = (size_t)(h->cluster_bytes - *in_off);
	if (seg_len > len - *pos)
		seg_len = len - *pos;
	*pos += seg_len;
	return seg_len;
}

static bool range_ok(const struct pf_stack *s, size_t len, uint64_t off)
{
	return len && off < s->hdr->size_bytes &&
	       len <= s->hdr->size_bytes - off;
}

/* Level @view (a snapshot) or, at LEVEL_NONE, the whole stack: the level
 * that maps @idx in that view, LEVEL_NONE if none. */
static uint8_t view_level(const struct pf_stack *s, uint8_t view, uint32_t idx)
{
	int l;

	if (view == LEVEL_NONE)
		return level_load(s, idx);
	for (l = view; l >= 0; l--)
		if (level_clu(s, (unsigned)l, idx))
			return (uint8_t)l;
	return LEVEL_NONE;
}

/* The level of the snapshot view @guid, LEVEL_NONE if there is none
 * (any more).  Inside the gate: levels do not change. */
static uint8_t view_find(const struct pf_stack *s, const char *guid)
{
	unsigned l;

	for (l = 0; l + 1 < s->n_levels; l++)
		if (!strcmp(s->levels[l].guid, guid))
			return s->levels[l].hidden ? LEVEL_NONE : (uint8_t)l;
	return LEVEL_NONE;
}

static void stack_read(struct pf_stack *s, const char *guid, void *buf,
		       size_t len, uint64_t off, pf_stack_done_fn done,
		       void *arg)
{
	const struct pf_header *h = s->hdr;
	size_t n, i, pos = 0;
	uint8_t view = LEVEL_NONE;
	struct op *op;

	if (!range_ok(s, len, off)) {
		done(arg, len ? -EINVAL : 0);
		return;
	}
	if (!aligned(s, buf, off, len)) {
		/* Read the aligned range around it into a bounce buffer.
		 * The BAT covers whole clusters, so rounding up to the
		 * alignment (<= cluster) stays inside the last cluster. */
		uint64_t a0 = round_down(off, s->align);
		uint64_t a1 = round_up(off + len, s->align);
		struct bounce *b = malloc(sizeof(*b));
		uint8_t *bbuf = alloc_aligned(s, a1 - a0);

		if (!b || !bbuf) {
			free(b);
			free(bbuf);
			done(arg, -ENOMEM);
			return;
		}
		*b = (struct bounce){ bbuf, buf, len, off - a0, done, arg };
		/* a1 may pass the virtual size inside the last cluster:
		 * read it through the map directly, without range_ok. */
		len = a1 - a0;
		off = a0;
		buf = bbuf;
		done = bounce_done;
		arg = b;
	}
	op = op_new(s, len, off, done, arg, true, &n);
	if (!op) {
		done(arg, -ENOMEM);
		return;
	}
	if (guid) {
		view = view_find(s, guid);
		if (view == LEVEL_NONE) {
			op_error(op, -ESTALE);	/* merged away */
			n = 0;
		}
	}
	for (i = 0; i < n; i++) {
		uint32_t idx;
		uint64_t in_off;
		uint8_t *dst = (uint8_t *)buf + pos;
		size_t seg_len = seg_at(h, off, len, &pos, &idx, &in_off);
		uint8_t lvl = view_level(s, view, idx);
		uint32_t clu;

		clu = lvl == LEVEL_NONE ? 0 : level_clu(s, lvl, idx);
		if (!clu) {
			memset(dst, 0, seg_len);	/* a hole */
			continue;
		}
		op->segs[i].op = op;
		op->segs[i].len = seg_len;
		atomic_fetch_add(&op->pending, 1);
		data_submit(&s->levels[lvl], false, &op->segs[i].aio, dst,
			    seg_len,
			    pf_clu_to_off(&s->levels[lvl].d->hdr, clu) + in_off,
			    read_seg_done, &op->segs[i]);
	}
	op_put(op);
}

void pf_stack_read(struct pf_stack *s, void *buf, size_t len, uint64_t off,
		   pf_stack_done_fn done, void *arg)
{
	stack_read(s, NULL, buf, len, off, done, arg);
}

void pf_stack_read_view(struct pf_stack *s, const char *guid, void *buf,
			size_t len, uint64_t off, pf_stack_done_fn done,
			void *arg)
{
	stack_read(s, guid, buf, len, off, done, arg);
}

static void write_seg_done(void *arg, ssize_t res)
{
	struct seg *g = arg;

	if (res >= 0 && (size_t)res != g->len)
		res = -EIO;
	if (res < 0) {
		op_error(g->op, (int)res);
		data_write_failed(g->op->s, (int)res);
	}
	rlock_release(g->op->s, &g->rl);
	inflight_done(g->op->s);
	op_put(g->op);
}

/*
 * A write found no space on the host filesystem (CTL-8): hold it and
 * retry, raising an event for every occurrence.  While held it is out of
 * the gate and its epoch, holding no lock, so it blocks neither a freeze
 * nor a commit.  Returns 0 to retry, -EIO once the hold times out
 * (-o enospc_timeout) or the daemon stops.
 */
static int hold_for_space(struct pf_stack *s, struct op *op, uint64_t off,
			  size_t len, time_t *since)
{
	struct timespec now, until;
	unsigned n = atomic_fetch_add(&s->held, 1) + 1;
	int ret = 0;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!*since) {
		*since = now.tv_sec;
		if (n == 1)
			pf_log(PF_LOG_WARNING,
			       "%s: host filesystem is full; holding writes until space is freed",
			       s->dir);
	}
	if (s->enospc_timeout_s &&
	    now.tv_sec - *since >= (time_t)s->enospc_timeout_s) {
		ret = -EIO;
		goto out;
	}
	atomic_fetch_add(&s->enospc_events, 1);
	emit(s, "enospc",
	     "write of %zu bytes at %" PRIu64 " held: no space on the host filesystem (%u held)",
	     len, off, n);
	epoch_exit(s, op->epoch);
	if (op->gated)
		gate_exit(s);
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += 1;	/* retry at least every second */
	pthread_mutex_lock(&s->space_lock);
	(void)pf_aio_wait(&s->space_cv, &s->space_lock, &until);
	pthread_mutex_unlock(&s->space_lock);
	if (s->stopping && s->stopping(s->stopping_ctx))
		ret = -EIO;
	if (op->gated)
		gate_enter(s);
	op->epoch = epoch_enter(s);
out:
	atomic_fetch_sub(&s->held, 1);
	if (ret)
		emit(s, "enospc-failed",
		     "held write of %zu bytes at %" PRIu64 " failed after %lld s",
		     len, off, (long long)(now.tv_sec - *since));
	return ret;
}

/* Wake held writes: space may have been freed. */
static void space_freed(struct pf_stack *s)
{
	if (!atomic_load(&s->held))
		return;
	pthread_mutex_lock(&s->space_lock);
	pthread_cond_broadcast(&s->space_cv);
	pthread_mutex_unlock(&s->space_lock);
}

static void stack_write(struct pf_stack *s, const void *buf, size_t len,
			uint64_t off, bool gated, pf_stack_done_fn done,
			void *arg)
{
	const struct pf_header *h = s->hdr;
	size_t n, i, pos = 0;
	time_t held_since = 0;
	struct op *op;
	int ret;

	if (atomic_load(&s->failed)) {
		done(arg, -EIO);	/* W7 */
		return;
	}
	if (!range_ok(s, len, off)) {
		done(arg, len ? -EINVAL : 0);
		return;
	}
	op = op_new(s, len, off, done, arg, gated, &n);
	if (!op) {
		done(arg, -ENOMEM);
		return;
	}
	for (i = 0; i < n; i++) {
		uint32_t idx;
		uint64_t in_off;
		size_t seg_pos = pos;
		const uint8_t *src = (const uint8_t *)buf + pos;
		size_t seg_len = seg_at(h, off, len, &pos, &idx, &in_off);
		struct seg *g = &op->segs[i];
		uint8_t top;
		uint32_t clu;

retry:
		/* the top may change while a held write is out of the gate */
		top = (uint8_t)(s->n_levels - 1);
		g->op = op;
		g->len = seg_len;
		rlock_acquire(s, &g->rl, idx, round_down(in_off, s->align),
			      round_up(in_off + seg_len, s->align));
		clu = level_clu(s, top, idx);
		if (clu && aligned(s, src, in_off, seg_len)) {
			/* in place; the range stays locked until done */
			atomic_fetch_add(&op->pending, 1);
			atomic_fetch_add(&s->writes_inflight, 1);
			data_submit(s->top, true, &g->aio, (void *)src,
				    seg_len, pf_clu_to_off(h, clu) + in_off,
				    write_seg_done, g);
			continue;
		}
		if (clu) {
			ret = write_in_place(s, clu, in_off, src, seg_len);
			rlock_release(s, &g->rl);
		} else {
			rlock_release(s, &g->rl);
			ret = write_allocating(s, idx, in_off, src, seg_len);
		}
		/* held only outside any gate: a discard's own zeroing
		 * write fails instead of blocking a freeze */
		if (ret == -ENOSPC && gated && !atomic_load(&s->failed)) {
			ret = hold_for_space(s, op, off + seg_pos, seg_len,
					     &held_since);
			if (!ret)
				goto retry;
		}
		if (ret)
			op_error(op, ret);
	}
	if (held_since && !atomic_load(&op->err))
		emit(s, "enospc-resumed", "held write of %zu bytes at %" PRIu64
		     " went through", len, off);
	op_put(op);
}

void pf_stack_write(struct pf_stack *s, const void *buf, size_t len,
		    uint64_t off, pf_stack_done_fn done, void *arg)
{
	stack_write(s, buf, len, off, true, done, arg);
}

/* The test of stack_write()'s first branch, for every segment, inside
 * the gate (the levels do not change under it). */
bool pf_stack_write_waits(struct pf_stack *s, const void *buf, size_t len,
			  uint64_t off)
{
	const struct pf_header *h = s->hdr;
	size_t pos = 0, seg_len;
	uint64_t in_off;
	uint32_t idx;
	bool waits = false;
	unsigned top;

	if (atomic_load(&s->failed) || !len || !range_ok(s, len, off))
		return false;	/* answered at once */
	gate_enter(s);
	top = s->n_levels - 1u;
	while (!waits && pos < len) {
		const uint8_t *src = (const uint8_t *)buf + pos;

		seg_len = seg_at(h, off, len, &pos, &idx, &in_off);
		waits = !level_clu(s, top, idx) ||
			!aligned(s, src, in_off, seg_len);
	}
	gate_exit(s);
	return waits;
}

/* Synchronous wrappers */

struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	bool done;
	int err;
};

static void waiter_done(void *arg, int err)
{
	struct waiter *w = arg;

	pthread_mutex_lock(&w->lock);
	w->err = err;
	w->done = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->lock);
}

static int waiter_wait(struct waiter *w)
{
	pthread_mutex_lock(&w->lock);
	while (!w->done)
		pf_aio_wait(&w->cv, &w->lock, NULL);
	pthread_mutex_unlock(&w->lock);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cv);
	return w->err;
}

int pf_stack_pread(struct pf_stack *s, void *buf, size_t len, uint64_t off)
{
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
			    false, 0 };

	pf_stack_read(s, buf, len, off, waiter_done, &w);
	return waiter_wait(&w);
}

int pf_stack_pread_view(struct pf_stack *s, const char *guid, void *buf,
			size_t len, uint64_t off)
{
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
			    false, 0 };

	pf_stack_read_view(s, guid, buf, len, off, waiter_done, &w);
	return waiter_wait(&w);
}

static int stack_pwrite(struct pf_stack *s, const void *buf, size_t len,
			uint64_t off, bool gated)
{
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
			    false, 0 };

	stack_write(s, buf, len, off, gated, waiter_done, &w);
	return waiter_wait(&w);
}

int pf_stack_pwrite(struct pf_stack *s, const void *buf, size_t len,
		    uint64_t off)
{
	return stack_pwrite(s, buf, len, off, true);
}

/* Discard */

/* true if a delta below the top maps @idx */
static bool lower_maps(const struct pf_stack *s, uint32_t idx)
{
	unsigned l;

	for (l = 0; l + 1 < s->n_levels; l++)
		if (level_clu(s, l, idx))
			return true;
	return false;
}

static int discard_cluster(struct pf_stack *s, uint32_t idx)
{
	const uint32_t cs = s->hdr->cluster_bytes;
	uint8_t top = (uint8_t)(s->n_levels - 1);
	bool lower = lower_maps(s, idx);
	struct rlock rl;
	uint32_t clu;
	uint8_t *zeros;
	int ret = 0;

	rlock_acquire(s, &rl, idx, 0, cs);
	clu = level_clu(s, top, idx);
	if (clu && lower) {
		/* Keep the entry (clearing it would expose the snapshot's
		 * data, DIS-1); the punched cluster reads as zeros. */
		ret = punch(s->top, pf_clu_to_off(s->hdr, clu), cs);
		if (!ret) {
			crash_point(s, CP_DISCARD_PUNCHED);
			/* still mapped: keep later writes from -ENOSPC */
			(void)space_for(s, clu, 1);
		}
		if (ret == -EOPNOTSUPP) {
			zeros = alloc_aligned(s, cs);
			ret = zeros ? 0 : -ENOMEM;
			if (zeros) {
				memset(zeros, 0, cs);
				ret = data_pwrite(s, zeros, cs,
						  pf_clu_to_off(s->hdr, clu));
				free(zeros);
			}
		}
	} else if (clu) {
		/* Unmap; the cluster is punched and reused only after the
		 * commit that unmaps it is durable (W4). */
		ret = top_set(s, idx, 0, LEVEL_NONE);
		if (!ret)
			crash_point(s, CP_DISCARD_UNMAPPED);
	} else if (lower) {
		/* Shadow the snapshot's data with a zero cluster. */
		ret = cluster_alloc(s, &clu);
		if (!ret)
			ret = top_set(s, idx, clu, top);
		if (!ret)
			crash_point(s, CP_DISCARD_SHADOWED);
	}
	rlock_release(s, &rl);
	return ret;
}

int pf_stack_discard(struct pf_stack *s, uint64_t off, uint64_t len)
{
	const struct pf_header *h = s->hdr;
	uint64_t end, next, in_off, seg;
	uint8_t *zeros = NULL;
	int ret = 0;

	if (atomic_load(&s->failed))
		return -EIO;	/* W7 */
	if (!len)
		return 0;
	if (off >= h->size_bytes)
		return -EINVAL;
	gate_enter(s);
	end = len > h->size_bytes - off ? h->size_bytes : off + len;
	for (; off < end && !ret; off = next) {
		uint32_t idx = (uint32_t)(off >> h->cluster_shift);

		next = ((uint64_t)idx + 1) << h->cluster_shift;
		if (next > end)
			next = end;
		in_off = off & (h->cluster_bytes - 1);
		seg = next - off;
		if (seg == h->cluster_bytes ||
		    (in_off == 0 && next == h->size_bytes)) {
			/* a whole cluster (the last one may be partial in
			 * size but is whole as far as the disk goes) */
			ret = discard_cluster(s, idx);
			continue;
		}
		/* Partial: zero it, unless nothing maps it (reads zeros). */
		if (level_load(s, idx) == LEVEL_NONE)
			continue;
		if (!zeros) {
			zeros = alloc_aligned(s, h->cluster_bytes);
			if (!zeros) {
				ret = -ENOMEM;
				break;
			}
			memset(zeros, 0, h->cluster_bytes);
		}
		/* inside this call's hold of the gate */
		ret = stack_pwrite(s, zeros, (size_t)seg, off, false);
	}
	gate_exit(s);
	free(zeros);
	return ret;
}

/* Writeback */

static int datasync(struct pf_stack *s)
{
	atomic_fetch_add(&s->datasyncs, 1);
	return pf_delta_sync(s->top->d);
}

/* Crash points of the delta verbs' steps in one update sequence. */
struct cp_hook {
	struct pf_stack *s;
	enum crash_point at[PF_DELTA_STEPS];
};

static void cp_step(void *ctx, enum pf_delta_step step)
{
	const struct cp_hook *h = ctx;

	crash_point(h->s, h->at[step]);
}

#define CP_HOOK(s, ...)							\
	(struct pf_delta_hook){						\
		cp_step, &(struct cp_hook){ (s), { __VA_ARGS__ } } }

/* One commit, W1-W4 (see the file comment), with commit_lock held.
 * @force: sync data even when no BAT page is dirty (a flush). */
static int commit_locked(struct pf_stack *s, bool force)
{
	uint32_t *pages = NULL, *freeing = NULL;
	size_t n_pages, n_freeing, i;
	uint8_t *copy = NULL;
	int ret = 0;

	if (atomic_load(&s->failed)) {
		ret = -EIO;
		goto out;
	}
	/* 1. close the transaction (W2) */
	pthread_mutex_lock(&s->bat_lock);
	n_pages = s->n_dirty;
	n_freeing = s->n_pending;
	if (!force && !n_pages && !n_freeing) {
		pthread_mutex_unlock(&s->bat_lock);
		goto out;
	}
	if (n_pages) {
		pages = malloc(n_pages * sizeof(*pages));
		copy = alloc_aligned(s, n_pages * PF_BAT_PAGE_SIZE);
		if (!pages || !copy) {
			pthread_mutex_unlock(&s->bat_lock);
			ret = -ENOMEM;
			goto out;
		}
		for (i = 0; i < n_pages; i++) {
			pages[i] = s->dirty_list[i];
			s->page_dirty[pages[i]] = 0;
			memcpy(copy + i * PF_BAT_PAGE_SIZE,
			       s->top_meta + (size_t)pages[i] * PF_BAT_PAGE_SIZE,
			       PF_BAT_PAGE_SIZE);
		}
		s->n_dirty = 0;
	}
	freeing = s->pending_free;
	s->pending_free = NULL;
	s->n_pending = s->cap_pending = 0;
	pthread_mutex_unlock(&s->bat_lock);

	/* I/O that looked up a mapping this commit removes has finished. */
	if (n_freeing)
		epoch_flip_and_drain(s);

	/* 2. W1: the data every copied entry points to is durable */
	ret = datasync(s);
	if (ret) {
		set_failed(s, "data flush", ret);
		goto out;
	}
	crash_point(s, CP_COMMIT_DATA_SYNCED);
	/* 3. the BAT pages, then W3: durable before anyone is answered */
	if (n_pages) {
		struct pf_delta_hook hook = CP_HOOK(
			s, [PF_DELTA_PAGE_WRITTEN] = CP_COMMIT_BAT_WRITTEN);

		atomic_fetch_add(&s->datasyncs, 1);
		ret = pf_delta_write_bat(s->top->d, pages, copy, n_pages, &hook);
		if (ret) {
			set_failed(s, "BAT write", ret);
			goto out;
		}
		atomic_fetch_add(&s->commits, 1);
		crash_point(s, CP_COMMIT_BAT_SYNCED);
	}
	/* 4. W4: the unmapping is durable; the clusters may go */
	for (i = 0; i < n_freeing; i++) {
		uint32_t clu = freeing[i];

		if (punch(s->top, pf_clu_to_off(s->hdr, clu),
			  s->hdr->cluster_bytes))
			continue;	/* cannot make it read zeros: leak */
		crash_point(s, CP_COMMIT_FREED_PUNCHED);
		pthread_mutex_lock(&s->alloc_lock);
		if (free_push(s, clu))
			pf_log(PF_LOG_WARNING, "%s: out of memory, cluster %" PRIu32
			       " leaked until the next mount", s->dir, clu);
		pthread_mutex_unlock(&s->alloc_lock);
	}
	if (n_freeing)
		space_freed(s);
out:
	free(pages);
	free(copy);
	free(freeing);
	return ret;
}

static int commit(struct pf_stack *s, bool force)
{
	int ret;

	pthread_mutex_lock(&s->commit_lock);
	ret = commit_locked(s, force);
	pthread_mutex_unlock(&s->commit_lock);
	return ret;
}

/*
 * Runs the next commit in the calling thread, with wb_lock held on entry
 * and on return (dropped while committing); !s->committing on entry.  It
 * syncs data even with no BAT page dirty when a flush waits for it.
 */
static void run_commit(struct pf_stack *s)
{
	uint64_t seq = ++s->started;
	bool force = s->want >= seq;

	s->committing = true;
	pthread_mutex_unlock(&s->wb_lock);
	commit(s, force);	/* errors: sticky failed state */
	pthread_mutex_lock(&s->wb_lock);
	s->done = seq;
	s->committing = false;
	pthread_cond_broadcast(&s->wb_done);
}

/* The periodic commit of dirty BAT pages. */
static void *writeback(void *arg)
{
	struct pf_stack *s = arg;
	struct timespec deadline;

	pthread_mutex_lock(&s->wb_lock);
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &deadline);
		deadline.tv_sec += s->commit_ms / 1000;
		deadline.tv_nsec += (long)(s->commit_ms % 1000) * 1000000;
		if (deadline.tv_nsec >= 1000000000) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000000000;
		}
		while (!s->wb_stop &&
		       pthread_cond_timedwait(&s->wb_kick, &s->wb_lock,
					      &deadline) != ETIMEDOUT)
			;
		if (s->wb_stop)
			break;
		if (!s->committing)
			run_commit(s);
	}
	pthread_mutex_unlock(&s->wb_lock);
	return NULL;
}

/*
 * W3 for a client's fsync: it is answered only after a commit that
 * started after it was called has made the data and the BAT durable.
 * Group commit without a hand-off: the flush waits for such a commit.
 * When none is running the caller runs it itself; callers that arrive
 * meanwhile wait for the next one, which the first of them to find the
 * way clear runs for all.
 */
int pf_stack_flush(struct pf_stack *s)
{
	uint64_t target;

	if (atomic_load(&s->failed))
		return -EIO;
	pthread_mutex_lock(&s->wb_lock);
	if (!s->wb_running) {
		pthread_mutex_unlock(&s->wb_lock);
		return commit(s, true);
	}
	target = s->started + 1;
	if (s->want < target)
		s->want = target;
	while (s->done < target) {
		if (!s->committing)
			run_commit(s);
		else
			pf_aio_wait(&s->wb_done, &s->wb_lock, NULL);
	}
	pthread_mutex_unlock(&s->wb_lock);
	return atomic_load(&s->failed) ? -EIO : 0;
}

/* Opening: validation, recovery (W8), in-use flag */

/* W8: the allocation state of the top delta comes from its committed
 * BAT (pf_delta_recover): trailing clusters are leaks, trimmed;
 * unreferenced ones below the last used one are punched and free. */
static int recover_top(struct pf_stack *s)
{
	struct pf_delta_hook hook = CP_HOOK(
		s, [PF_DELTA_LEAK_PUNCHED] = CP_OPEN_LEAK_PUNCHED,
		[PF_DELTA_TAIL_TRIMMED] = CP_OPEN_TAIL_TRIMMED);
	struct pf_delta_recovery rec;
	int ret;

	ret = pf_delta_recover(s->top->d, &rec, &hook);
	if (ret)
		return ret;
	s->alloc_head = rec.head;
	s->file_clusters = rec.head;
	s->free_list = rec.free;
	s->n_free = s->cap_free = rec.n_free;
	s->top_mapped = rec.mapped;
	if (rec.leaked)
		pf_log(PF_LOG_NOTICE, "%s: %" PRIu64 " leaked clusters reclaimed",
		       s->dir, rec.leaked);
	return 0;
}

/* The I/O of @d bypasses the page cache from now on, where it can with
 * buffers aligned to @max_align. */
static void use_direct(struct pf_stack *s, struct pf_delta *d,
		       size_t max_align)
{
	int ret = pf_delta_direct(d, max_align);

	if (ret)
		pf_log(PF_LOG_WARNING,
		       "%s/%s: O_DIRECT refused (%s), using buffered I/O",
		       s->dir, d->name, strerror(-ret));
}

static int stack_load(struct pf_stack *s, const struct pf_stack_opts *o,
		      struct pf_why *why)
{
	struct pf_delta **v = NULL;
	struct pf_dd *dd = NULL;
	size_t *chain = NULL, depth = 0, i;
	int ret;

	ret = pf_dd_load(s->dirfd, &dd, why);
	if (ret == -ENOENT)
		pf_why_fmt(why, PF_DD_NAME " not found: not an image directory");
	if (!ret)
		ret = pf_dd_chain(dd, &chain, &depth, why);
	if (!ret)
		ret = pf_image_open_chain(s->dirfd, dd, chain, depth,
					  PF_DELTA_WRITE, true, &s->io, &v, why);
	if (ret == -EUCLEAN) {
		struct pf_why w = *why;

		pf_why_fmt(why, "%s (run ploopctl check)", w.msg);
	}
	if (ret)
		goto out;
	s->cap_levels = (unsigned)depth + 1;	/* room for a snapshot */
	s->levels = calloc(s->cap_levels, sizeof(*s->levels));
	if (!s->levels) {
		pf_image_close_chain(v, depth);
		ret = -ENOMEM;
		goto out;
	}
	for (i = 0; i < depth; i++) {
		struct level *lv = &s->levels[i];
		const struct pf_dd_shot *shot;

		lv->d = v[i];
		snprintf(lv->guid, sizeof(lv->guid), "%s",
			 dd->images[chain[i]].guid);
		shot = pf_dd_find_shot(dd, lv->guid);
		/* an interrupted snapshot-delete: no view of it */
		lv->hidden = shot && shot->temporary;
		lv->mapped = pf_delta_mapped_count(lv->d);
		if (!o->no_direct)
			use_direct(s, lv->d, PF_BAT_PAGE_SIZE);
		if (i + 1 < depth && lv->d->hdr.in_use == PF_INUSE_OPEN)
			pf_log(PF_LOG_WARNING,
			       "%s/%s: lower delta has its in-use flag set; opened read-only",
			       s->dir, lv->d->name);
	}
	free(v);	/* the deltas are the levels' now */
	s->n_levels = (unsigned)depth;
	s->top = &s->levels[depth - 1];
	s->hdr = &s->top->d->hdr;
out:
	free(chain);
	pf_dd_free(dd);
	return ret;
}

static int top_prepare(struct pf_stack *s)
{
	struct pf_delta *d = s->top->d;
	size_t bat_end = pf_idx_entry_off(d->hdr.bat_entries);
	size_t i;
	int ret;

	s->meta_pages = pf_div_round_up(bat_end, PF_BAT_PAGE_SIZE);
	s->page_dirty = calloc(s->meta_pages, 1);
	s->dirty_list = calloc(s->meta_pages, sizeof(*s->dirty_list));
	s->level_of = malloc(s->hdr->bat_entries);
	if (!s->page_dirty || !s->dirty_list || !s->level_of)
		return -ENOMEM;
	/* The delta's BAT buffer (whole aligned pages) is the one copy of
	 * the top BAT, 64 MiB at 16 TiB. */
	s->top_meta = d->meta;
	s->top_hdr = d->hdr;
	s->hdr = &s->top_hdr;

	memset(s->level_of, LEVEL_NONE, s->hdr->bat_entries);
	for (i = 0; i < s->n_levels; i++) {
		uint32_t idx, n = s->levels[i].d->hdr.bat_entries;

		for (idx = 0; idx < n && idx < s->hdr->bat_entries; idx++)
			if (level_clu(s, (unsigned)i, idx))
				s->level_of[idx] = (uint8_t)i;
	}

	if (d->hdr.in_use == PF_INUSE_OPEN)
		pf_log(PF_LOG_NOTICE,
		       "%s: image was not closed cleanly; recovering the committed state (W8)",
		       s->dir);
	if (d->hdr.in_use == PF_INUSE_CLOSED_V21 && d->hdr.ext_sectors)
		pf_log(PF_LOG_NOTICE,
		       "%s: dropping the format extension (dirty bitmap) of %s on read-write open",
		       s->dir, d->name);
	ret = recover_top(s);
	if (ret)
		return ret;
	/* BAT pages must never meet a full disk at commit */
	ret = space_for(s, 0, d->hdr.hdr_clusters);
	if (ret)
		return ret;

	/* In-use flag set and synced before the first write (W8, ploop). */
	s->top_hdr.in_use = PF_INUSE_OPEN;
	s->top_hdr.ext_sectors = 0;
	{
		struct pf_delta_hook hook = CP_HOOK(
			s, [PF_DELTA_HEADER_WRITTEN] = CP_OPEN_INUSE_WRITTEN);

		atomic_fetch_add(&s->datasyncs, 1);
		ret = pf_delta_write_header(d, &s->top_hdr, &hook);
	}
	if (!ret)
		crash_point(s, CP_OPEN_INUSE_SYNCED);
	return ret;
}

static void stack_free(struct pf_stack *s)
{
	unsigned i;

	if (!s)
		return;
	for (i = 0; i < s->n_levels; i++)
		pf_delta_close(s->levels[i].d);
	free(s->levels);
	free(s->page_dirty);
	free(s->dirty_list);
	free(s->pending_free);
	free(s->free_list);
	free(s->level_of);
	pf_aio_destroy(s->aio);
	if (s->dirfd >= 0)
		close(s->dirfd);	/* drops the image lock */
	free(s->dir);
	free(s);
}

int pf_stack_open(const struct pf_stack_opts *o, struct pf_stack **out,
		  struct pf_why *why)
{
	struct pf_stack *s;
	pthread_condattr_t ca;
	int ret, i;

	*out = NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->dirfd = -1;
	s->dir = strdup(o->dir);
	s->commit_ms = o->commit_ms ? o->commit_ms : 1000;
	s->io.factory = o->factory;
	s->enospc_timeout_s = o->enospc_timeout_s;
	s->no_direct = o->no_direct;
	s->stopping = o->stopping;
	s->stopping_ctx = o->stopping_ctx;
	s->event = o->event;
	s->event_ctx = o->event_ctx;
	s->crash_point = o->crash_point;
	s->crash_point_ctx = o->crash_point_ctx;
	pthread_mutex_init(&s->levels_lock, NULL);
	pthread_mutex_init(&s->gate_lock, NULL);
	pthread_cond_init(&s->gate_open, NULL);
	pthread_cond_init(&s->gate_drained, NULL);
	pthread_mutex_init(&s->struct_lock, NULL);
	pthread_mutex_init(&s->space_lock, NULL);
	pthread_mutex_init(&s->bat_lock, NULL);
	pthread_mutex_init(&s->alloc_lock, NULL);
	pthread_mutex_init(&s->epoch_lock, NULL);
	pthread_cond_init(&s->epoch_drained, NULL);
	pthread_mutex_init(&s->commit_lock, NULL);
	pthread_mutex_init(&s->wb_lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->wb_kick, &ca);
	pthread_cond_init(&s->space_cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&s->wb_done, NULL);
	for (i = 0; i < RLOCK_BUCKETS; i++) {
		pthread_mutex_init(&s->rb[i].lock, NULL);
		pthread_cond_init(&s->rb[i].released, NULL);
	}
	/* Synchronous until pf_stack_start() (an aio context does not
	 * survive the fork of daemonizing); every delta's file uses it. */
	if (!s->dir || pf_aio_create(&s->aio)) {
		ret = -ENOMEM;
		goto err;
	}
	s->io.aio = s->aio;
	s->dirfd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dirfd < 0) {
		ret = -errno;
		pf_why_fmt(why, "%s", strerror(-ret));
		goto err;
	}
	/* One writer per image: the daemon and the writing ploopctl
	 * commands all take this lock without waiting. */
	ret = pf_lock(s->dirfd, true);
	if (ret) {
		pf_why_fmt(why, ret == -EBUSY ?
				"image is busy (mounted by another ploopfs or used by ploopctl)" :
				"cannot lock: %s",
			   strerror(-ret));
		goto err;
	}
	ret = stack_load(s, o, why);
	if (ret)
		goto err;
	/* the alignment every delta's I/O needs, fixed from now on */
	for (i = 0; i < (int)s->n_levels; i++)
		if (s->levels[i].d->align > s->align)
			s->align = s->levels[i].d->align;
	s->size_bytes = s->hdr->size_bytes;
	s->cluster_bytes = s->hdr->cluster_bytes;
	ret = top_prepare(s);
	if (ret) {
		if (!why || !why->msg[0])
			pf_why_fmt(why, "%s: cannot prepare for writing: %s",
				   s->top->d->name, strerror(-ret));
		goto err;
	}
	*out = s;
	return 0;
err:
	stack_free(s);
	return ret;
}

int pf_stack_start(struct pf_stack *s)
{
	int ret;

	ret = pf_aio_start(s->aio, AIO_DEPTH);
	if (ret)
		return ret;
	if (!pf_aio_is_async(s->aio))
		pf_log(PF_LOG_WARNING,
		       "%s: no kernel aio context; I/O runs synchronously",
		       s->dir);
	ret = pthread_create(&s->wb_thread, NULL, writeback, s);
	if (ret)
		return -ret;
	pthread_mutex_lock(&s->wb_lock);
	s->wb_running = true;
	pthread_mutex_unlock(&s->wb_lock);
	return 0;
}

int pf_stack_close(struct pf_stack *s)
{
	uint64_t mapped;
	int ret = 0, r;

	pthread_mutex_lock(&s->wb_lock);
	s->wb_stop = s->wb_running;
	pthread_cond_signal(&s->wb_kick);
	pthread_mutex_unlock(&s->wb_lock);
	if (s->wb_stop)
		pthread_join(s->wb_thread, NULL);
	s->wb_running = false;
	pf_aio_stop(s->aio);	/* waits for everything in flight */

	if (atomic_load(&s->failed)) {
		ret = -EIO;	/* leave in-use set: recover at next open */
		goto out;
	}
	ret = commit(s, true);
	if (ret)
		goto out;
	crash_point(s, CP_CLOSE_COMMITTED);
	/* Trim the preallocated tail; clusters past alloc_head are unused. */
	if (s->file_clusters > s->alloc_head) {
		r = pf_delta_trim(s->top->d, s->alloc_head);
		if (!r)
			crash_point(s, CP_CLOSE_TRIMMED);
		if (r)
			pf_log(PF_LOG_WARNING,
			       "%s: cannot trim preallocated space: %s", s->dir,
			       strerror(-r));
	}
	/* Clean close: the committed BAT is durable; clear the flag. */
	pthread_mutex_lock(&s->bat_lock);
	mapped = s->top_mapped;
	s->top_hdr.in_use = PF_INUSE_CLOSED;
	s->top_hdr.ext_sectors = 0;
	if (mapped)
		s->top_hdr.flags &= ~PF_FLAG_EMPTY;
	pthread_mutex_unlock(&s->bat_lock);
	{
		struct pf_delta_hook hook = CP_HOOK(
			s, [PF_DELTA_HEADER_WRITTEN] = CP_CLOSE_INUSE_WRITTEN);

		atomic_fetch_add(&s->datasyncs, 1);
		r = pf_delta_write_header(s->top->d, &s->top_hdr, &hook);
	}
	if (r) {
		pf_log(PF_LOG_ERR, "%s: cannot clear the in-use flag: %s",
		       s->dir, strerror(-r));
		ret = r;
	}
out:
	stack_free(s);
	return ret;
}

uint64_t pf_stack_size(const struct pf_stack *s)
{
	return s->size_bytes;
}

void pf_stack_stat(struct pf_stack *s, struct pf_stack_stat *st)
{
	memset(st, 0, sizeof(*st));
	st->size_bytes = s->size_bytes;
	st->cluster_bytes = s->cluster_bytes;
	pthread_mutex_lock(&s->levels_lock);
	st->deltas = s->n_levels;
	pthread_mutex_unlock(&s->levels_lock);
	pthread_mutex_lock(&s->bat_lock);
	st->top_clusters = s->top_mapped;
	st->dirty_pages = s->n_dirty;
	pthread_mutex_unlock(&s->bat_lock);
	pthread_mutex_lock(&s->alloc_lock);
	st->file_clusters = s->file_clusters;
	st->free_clusters = s->n_free;
	pthread_mutex_unlock(&s->alloc_lock);
	st->commits = atomic_load(&s->commits);
	st->datasyncs = atomic_load(&s->datasyncs);
	st->failed = atomic_load(&s->failed);
	st->frozen = atomic_load(&s->frozen);
	st->held = atomic_load(&s->held);
	st->enospc_events = atomic_load(&s->enospc_events);
	st->freezes = atomic_load(&s->freezes);
	st->stall_last_us = atomic_load(&s->stall_last_us);
	st->stall_max_us = atomic_load(&s->stall_max_us);
}

/* Structural commands: snapshot, snapshot delete (CTL-3, CTL-5, W5, W6) */

static int lock_structure(struct pf_stack *s, struct pf_why *why)
{
	if (pthread_mutex_trylock(&s->struct_lock))
		return pf_why_set(why, -EBUSY,
				  "another snapshot or merge is in progress");
	if (atomic_load(&s->failed)) {
		pthread_mutex_unlock(&s->struct_lock);
		return pf_why_set(why, -EIO,
				  "image is in the failed state after an I/O error (W7); remount it");
	}
	return 0;
}

/*
 * The prepared descriptor replaces the old one: the commit point of a
 * structural change.  Returns 0, or the rename's -errno (nothing
 * changed, the tmp file is gone).  A failed directory sync after the
 * rename follows the policy of descriptor.h: the change stands (it is
 * what everybody reads now), the image goes to the failed state (W7),
 * and *durable is false so that the caller keeps the file the new
 * descriptor dropped and reports the failure.
 */
static int dd_switch(struct pf_stack *s, bool *durable)
{
	bool committed;
	int ret = pf_dd_commit_tmp(s->dirfd, &committed);

	*durable = !ret;
	if (ret && committed) {
		set_failed(s, "directory sync after replacing " PF_DD_NAME, ret);
		return 0;
	}
	return ret;
}

/* The reason for a structural change that stands but is not durable. */
static int not_durable(struct pf_why *why, const char *what)
{
	return pf_why_set(why, -EIO,
			  "%s, but the directory sync after replacing " PF_DD_NAME
			  " failed: a power cut may undo it; the image is failed until remounted (W7)",
			  what);
}

/* The descriptor on disk, checked against the open stack. */
static int dd_current(struct pf_stack *s, struct pf_dd **out,
		      struct pf_why *why)
{
	const struct pf_dd_image *top;
	struct pf_dd *dd;
	int ret;

	ret = pf_dd_load(s->dirfd, &dd, why);
	if (ret)
		return ret;
	top = pf_dd_find_image(dd, PF_TOP_GUID);
	if (!top || strcmp(top->file, s->top->d->name)) {
		pf_dd_free(dd);
		return pf_why_set(why, -ESTALE, PF_DD_NAME
				  " no longer names the mounted top delta %s",
				  s->top->d->name);
	}
	*out = dd;
	return 0;
}

/*
 * Frozen, before the commit of a snapshot switch: clear the top's in-use
 * flag and trim its preallocated tail (@closed), or set the flag again
 * (the switch failed), for the next commit to make durable.  A power cut
 * after the descriptor rename then finds the former top closed: nothing
 * repairs a read-only delta left flagged in use (W8).
 */
static void top_mark_closed(struct pf_stack *s, bool closed)
{
	uint64_t head;

	pthread_mutex_lock(&s->bat_lock);
	s->top_hdr.in_use = closed ? PF_INUSE_CLOSED : PF_INUSE_OPEN;
	pf_header_encode(&s->top_hdr, s->top_meta);
	page_mark_dirty(s, 0);
	pthread_mutex_unlock(&s->bat_lock);
	if (!closed)
		return;
	pthread_mutex_lock(&s->alloc_lock);
	head = s->alloc_head;
	pthread_mutex_unlock(&s->alloc_lock);
	if (pf_delta_trim(s->top->d, head))
		return;	/* a trailing leak at worst */
	pthread_mutex_lock(&s->alloc_lock);
	s->file_clusters = head;
	pthread_mutex_unlock(&s->alloc_lock);
}

int pf_stack_snapshot(struct pf_stack *s, const char *want_guid, char *guid_out,
		      struct pf_why *why)
{
	struct pf_delta_hook hook = CP_HOOK(
		s, [PF_DELTA_CREATED] = CP_SNAP_DELTA_CREATED);
	struct level nl = { 0 }, *nlv = NULL, *old_levels, *old_top;
	struct pf_snap_prep prep = { "", NULL };
	struct pf_header h;
	struct pf_dd *dd = NULL;
	uint64_t t0, stall;
	unsigned n;
	bool prepared = false, durable = true;
	int ret;

	ret = lock_structure(s, why);
	if (ret)
		return ret;
	n = s->n_levels;	/* stable: changes only under struct_lock */
	/* Prepare: everything that can fail happens before the freeze
	 * (CTL-3): the new top and the descriptor naming it, in its tmp
	 * file, as offline (image.c). */
	ret = dd_current(s, &dd, why);
	if (ret)
		goto out;
	pthread_mutex_lock(&s->bat_lock);
	h = s->top_hdr;
	pthread_mutex_unlock(&s->bat_lock);
	ret = pf_image_snapshot_prepare(s->dirfd, dd, &h, want_guid,
					PF_INUSE_OPEN, &hook, &prep, why);
	if (ret)
		goto out;
	prepared = true;
	ret = pf_delta_open(s->dirfd, prep.file, PF_DELTA_WRITE, &s->io, &nl.d,
			    why);
	/* the I/O path reads s->align without locks: it stays */
	if (!ret && !s->no_direct)
		use_direct(s, nl.d, s->align);
	/* BAT pages must never meet a full disk at commit */
	if (!ret && nl.d->f->ops->allocate)
		ret = nl.d->f->ops->allocate(nl.d->f, 0, pf_meta_bytes(&h));
	nlv = calloc(n + 2, sizeof(*nlv));
	if (!ret && !nlv)
		ret = -ENOMEM;
	if (ret) {
		struct pf_why w = *why;

		pf_why_fmt(why, "%s: cannot prepare: %s", prep.file,
			   w.msg[0] ? w.msg : strerror(-ret));
		goto out;
	}
	crash_point(s, CP_SNAP_DD_TMP);

	/* Freeze: drain, then commit the old top (its data and BAT are
	 * durable before the descriptor stops naming it as the top), closed
	 * in that same commit. */
	t0 = freeze(s);
	top_mark_closed(s, true);
	ret = commit_locked(s, true);
	if (!ret) {
		crash_point(s, CP_SNAP_COMMITTED);
		ret = dd_switch(s, &durable);
	}
	if (!ret)
		crash_point(s, CP_SNAP_DD_RENAMED);
	if (ret) {
		/* still the top: in use again (a failed commit is W7) */
		top_mark_closed(s, false);
		if (!atomic_load(&s->failed))
			(void)commit_locked(s, true);
		thaw(s, t0);
		pf_why_fmt(why, "%s: %s", ret == -EIO ? "commit of the current top failed" :
			   "cannot replace " PF_DD_NAME, strerror(-ret));
		goto out;
	}

	/* Switch: memory only, nothing can fail. */
	memcpy(nlv, s->levels, n * sizeof(*nlv));
	old_top = &nlv[n - 1];
	snprintf(old_top->guid, sizeof(old_top->guid), "%s", prep.guid);
	snprintf(nl.guid, sizeof(nl.guid), "%s", PF_TOP_GUID);
	nlv[n] = nl;
	pthread_mutex_lock(&s->levels_lock);
	pthread_mutex_lock(&s->bat_lock);
	/* the former top as the freeze's commit left it: closed */
	pf_delta_set_state(old_top->d, &s->top_hdr);
	old_top->mapped = s->top_mapped;
	s->top_mapped = 0;
	s->top_meta = nl.d->meta;
	/* Only what differs: the geometry is the same (the new delta was
	 * created from this header) and is read without locks. */
	s->top_hdr.in_use = nl.d->hdr.in_use;
	s->top_hdr.flags = nl.d->hdr.flags;
	s->top_hdr.ext_sectors = nl.d->hdr.ext_sectors;
	memset(s->page_dirty, 0, s->meta_pages);
	s->n_dirty = 0;
	pthread_mutex_unlock(&s->bat_lock);
	pthread_mutex_lock(&s->alloc_lock);
	s->alloc_head = nl.d->hdr.hdr_clusters;
	s->file_clusters = nl.d->file_clusters > s->alloc_head ?
				   nl.d->file_clusters : s->alloc_head;
	s->n_free = 0;	/* holes of the old top stay holes */
	pthread_mutex_unlock(&s->alloc_lock);
	old_levels = s->levels;
	s->levels = nlv;
	s->cap_levels = n + 2;
	s->n_levels = n + 1;
	s->top = &nlv[n];
	pthread_mutex_unlock(&s->levels_lock);
	nlv = old_levels;	/* freed below */
	memset(&nl, 0, sizeof(nl));
	prepared = false;
	stall = thaw(s, t0);

	snprintf(guid_out, PF_GUID_LEN + 1, "%s", prep.guid);
	if (!durable) {
		ret = not_durable(why, "snapshot taken");
		goto out;
	}
	pf_log(PF_LOG_INFO, "%s: snapshot %s created, new top %s (I/O stalled %" PRIu64 " us)",
	       s->dir, prep.guid, prep.file, stall);
	emit(s, "snapshot", "%s created; new top delta %s; I/O stalled %" PRIu64 " us",
	     prep.guid, prep.file, stall);
out:
	pf_delta_close(nl.d);
	if (prepared)
		pf_image_snapshot_abort(s->dirfd, &prep);
	free(nlv);
	free(prep.file);
	pf_dd_free(dd);
	pthread_mutex_unlock(&s->struct_lock);
	return ret;
}

/* Snapshot delete: the copy, in several threads (seed 002: several
 * copies in flight nearly double the throughput of one). */

#define MERGE_THREADS	4

struct merge {
	struct pf_stack *s;
	unsigned p, c;		/* parent (deleted snapshot), child */
	uint8_t *pdirty;	/* parent BAT pages changed (down merge) */
	atomic_uint_fast32_t next;	/* next virtual cluster to look at */
	atomic_uint_fast64_t head;	/* next free cluster of the parent */
	atomic_uint_fast64_t copied;	/* clusters copied */
	atomic_int err;
};

static void merge_error(struct merge *m, int err)
{
	int zero = 0;

	atomic_compare_exchange_strong(&m->err, &zero, err);
}

/* Child is the top: copy up every cluster of the parent that the top does
 * not map, through the copy-on-write path (ordinary top writes, W1-W4). */
static void *merge_up_worker(void *arg)
{
	struct merge *m = arg;
	struct pf_stack *s = m->s;
	uint32_t n = s->hdr->bat_entries, idx;
	int ret;

	while (!atomic_load(&m->err) &&
	       (idx = (uint32_t)atomic_fetch_add(&m->next, 1)) < n) {
		if (!level_clu(s, m->p, idx) || level_clu(s, m->c, idx))
			continue;
		gate_enter(s);
		ret = atomic_load(&s->failed) ? -EIO :
						write_allocating(s, idx, 0, NULL, 0);
		gate_exit(s);
		if (ret)
			merge_error(m, ret);
		else
			atomic_fetch_add(&m->copied, 1);
	}
	return NULL;
}

/* Child is read-only: copy every cluster it maps down into the parent,
 * over the parent's own copy or into a new cluster at its end.  Nobody
 * reads those parent clusters: the child shadows them, and the parent's
 * own view is hidden. */
static void *merge_down_worker(void *arg)
{
	struct merge *m = arg;
	struct pf_stack *s = m->s;
	struct level *pl = &s->levels[m->p], *cl = &s->levels[m->c];
	const struct pf_header *ph = &pl->d->hdr, *ch = &cl->d->hdr;
	struct pf_file *pw = pl->d->f;	/* writable since the freeze */
	uint32_t n = ch->bat_entries, idx, src, dst;
	uint8_t *buf = alloc_aligned(s, ph->cluster_bytes);
	int ret;

	if (!buf) {
		merge_error(m, -ENOMEM);
		return NULL;
	}
	while (!atomic_load(&m->err) &&
	       (idx = (uint32_t)atomic_fetch_add(&m->next, 1)) < n) {
		src = level_clu(s, m->c, idx);
		if (!src)
			continue;
		dst = level_clu(s, m->p, idx);
		if (!dst)
			dst = (uint32_t)atomic_fetch_add(&m->head, 1);
		ret = pf_delta_read(cl->d, buf, ph->cluster_bytes,
				    pf_clu_to_off(ch, src));
		if (!ret)
			ret = pw->ops->pwrite(pw, buf, ph->cluster_bytes,
					      pf_clu_to_off(ph, dst));
		if (ret) {
			merge_error(m, ret);
			break;
		}
		if (!level_clu(s, m->p, idx))
			pf_bat_store(ph, pl->d->meta, idx, dst);
		/* Written even when the entry was already set: an earlier
		 * attempt in this session may have set it in memory and
		 * failed before its page reached the disk. */
		__atomic_store_n(&m->pdirty[pf_idx_to_page(idx)], 1,
				 __ATOMIC_RELAXED);
		atomic_fetch_add(&m->copied, 1);
	}
	free(buf);
	return NULL;
}

static int merge_run(struct merge *m, void *(*fn)(void *))
{
	pthread_t t[MERGE_THREADS];
	unsigned i, started = 0;

	atomic_store(&m->next, 0);
	for (i = 0; i < MERGE_THREADS; i++)
		if (!pthread_create(&t[i], NULL, fn, m))
			started++;
		else
			break;
	if (!started)
		fn(m);
	for (i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	return atomic_load(&m->err);
}

/* Commit the parent's BAT pages that the copy changed, page 0 (with
 * header @h) always, through the delta's own commit (W1-W3). */
static int commit_parent(struct merge *m, const struct pf_header *h)
{
	struct pf_stack *s = m->s;
	struct pf_delta *pd = s->levels[m->p].d;
	struct pf_delta_hook hook = CP_HOOK(
		s, [PF_DELTA_PAGE_WRITTEN] = CP_MD_BAT_WRITTEN);
	size_t pages = pf_div_round_up(pf_idx_entry_off(h->bat_entries),
				       PF_BAT_PAGE_SIZE), n = 0, i;
	uint32_t *list = malloc(pages * sizeof(*list));
	uint8_t *copies = alloc_aligned(s, pages * PF_BAT_PAGE_SIZE);
	int ret = -ENOMEM;

	if (!list || !copies)
		goto out;
	/* readers look at the entries only, never at the header bytes */
	pf_header_encode(h, pd->meta);
	for (i = 0; i < pages; i++) {
		if (i && !m->pdirty[i])
			continue;
		memcpy(copies + n * PF_BAT_PAGE_SIZE,
		       pd->meta + i * PF_BAT_PAGE_SIZE, PF_BAT_PAGE_SIZE);
		list[n++] = (uint32_t)i;
	}
	ret = pf_delta_write_bat(pd, list, copies, n, &hook);
	if (!ret)
		pf_delta_set_state(pd, h);
out:
	free(list);
	free(copies);
	return ret;
}

/* Down merge: the parent's data and then its BAT are durable (W5: copy,
 * flush, commit the receiving BAT) before the descriptor changes. */
static int merge_down(struct merge *m, struct pf_why *why)
{
	struct pf_stack *s = m->s;
	struct level *pl = &s->levels[m->p], *cl = &s->levels[m->c];
	const struct pf_header *ph = &pl->d->hdr;
	struct pf_file *pw = pl->d->f;
	struct pf_header nh;
	uint64_t need = 0, head, pages;
	uint32_t idx;
	int ret;

	if (ph->bat_entries != cl->d->hdr.bat_entries ||
	    ph->cluster_bytes != cl->d->hdr.cluster_bytes)
		return pf_why_set(why, -EOPNOTSUPP,
				  "%s and %s differ in size or cluster size",
				  pl->d->name, cl->d->name);
	pages = pf_div_round_up(pf_idx_entry_off(ph->bat_entries),
				PF_BAT_PAGE_SIZE);
	m->pdirty = calloc(pages, 1);
	if (!m->pdirty)
		return -ENOMEM;
	for (idx = 0; idx < ph->bat_entries; idx++)
		if (!level_clu(s, m->p, idx) && level_clu(s, m->c, idx))
			need++;
	/* New clusters go after the last one mapped, in memory too: what
	 * an interrupted attempt left past it is a leak, overwritten now;
	 * what it mapped in this session but never committed stays its. */
	head = pf_delta_alloc_head(pl->d, UINT64_MAX);
	atomic_store(&m->head, head);
	if (need) {
		ret = pw->ops->allocate ?
			      pw->ops->allocate(pw, head << ph->cluster_shift,
						need << ph->cluster_shift) :
			      pw->ops->truncate(pw, (head + need)
							    << ph->cluster_shift);
		if (ret)
			return pf_why_set(why, ret, "%s: cannot allocate %" PRIu64
					  " clusters: %s", pl->d->name, need,
					  strerror(-ret));
		crash_point(s, CP_MD_GROWN);
	}
	ret = merge_run(m, merge_down_worker);
	if (ret)
		return pf_why_set(why, ret, "copy from %s into %s failed: %s",
				  cl->d->name, pl->d->name, strerror(-ret));
	crash_point(s, CP_MD_COPIED);
	ret = pf_delta_sync(pl->d);	/* W5: the copies, then ... */
	if (!ret) {
		crash_point(s, CP_MD_COPY_SYNCED);
		/* ... the BAT, page 0 with a closed header; it holds data
		 * if it mapped any or got any (an earlier failed attempt may
		 * have mapped everything already: need 0) */
		nh = *ph;
		nh.in_use = PF_INUSE_CLOSED;
		nh.ext_sectors = 0;
		if (need || head > ph->hdr_clusters || atomic_load(&m->copied))
			nh.flags &= ~PF_FLAG_EMPTY;
		ret = commit_parent(m, &nh);
	}
	if (ret)
		return pf_why_set(why, ret, "%s: cannot commit the merged clusters: %s",
				  pl->d->name, strerror(-ret));
	crash_point(s, CP_MD_BAT_SYNCED);
	return 0;
}

/* Level @l leaves the stack (frozen, levels_lock held); its struct is
 * copied to @gone. */
static void level_remove(struct pf_stack *s, unsigned l, struct level *gone)
{
	uint32_t idx, n = s->hdr->bat_entries;
	uint8_t v;

	for (idx = 0; idx < n; idx++) {
		v = level_load(s, idx);
		if (v != LEVEL_NONE && v >= l)
			level_store(s, idx, v == l ? (uint8_t)(l - 1) : v - 1);
	}
	*gone = s->levels[l];
	memmove(&s->levels[l], &s->levels[l + 1],
		(s->n_levels - l - 1) * sizeof(*s->levels));
	s->n_levels--;
	s->top = &s->levels[s->n_levels - 1];
}

/*
 * After an up merge out of the base: the top is the base now, and takes
 * the file name the base had (root.hds), as ploop's merges leave it.  The
 * file gets the name as a hard link first, durable before the descriptor
 * names it (W6); the descriptor is replaced; then the old name goes.  A
 * crash in between leaves an extra name of the same file, which the next
 * attempt finds and uses.  Where the file system has no hard links the
 * long name stays (nothing is lost).  Returns 0, or -EIO for a descriptor
 * that was replaced without its directory sync (descriptor.h: W7).
 */
static int take_base_name(struct pf_stack *s, const char *base_name,
			  struct pf_why *why)
{
	struct pf_delta *d = s->top->d;
	struct pf_dd *dd = NULL;
	struct stat a, b;
	bool committed = false;
	char *name, *old;
	int ret;

	name = strdup(base_name);
	if (!name)
		return 0;
	if (linkat(s->dirfd, d->name, s->dirfd, name, 0) < 0 &&
	    (errno != EEXIST || fstat(d->f->fd, &a) < 0 ||
	     fstatat(s->dirfd, name, &b, AT_SYMLINK_NOFOLLOW) < 0 ||
	     a.st_dev != b.st_dev || a.st_ino != b.st_ino)) {
		pf_log(PF_LOG_NOTICE, "%s: the top keeps the name %s: %s",
		       s->dir, d->name, strerror(errno));
		goto out;
	}
	if (pf_fsync_dir(s->dirfd))
		goto unlink_new;	/* not surely durable: not named */
	crash_point(s, CP_MU_BASE_LINKED);
	ret = dd_current(s, &dd, NULL);
	if (!ret)
		ret = pf_dd_set_file(dd, dd->top_guid, name);
	if (!ret)
		ret = pf_dd_replace(s->dirfd, dd, &committed);
	pf_dd_free(dd);
	if (ret && !committed)
		goto unlink_new;
	/* the descriptor names it now */
	pthread_mutex_lock(&s->levels_lock);
	old = d->name;
	d->name = name;
	pthread_mutex_unlock(&s->levels_lock);
	name = NULL;
	if (ret) {	/* both names stay */
		set_failed(s, "directory sync after replacing " PF_DD_NAME, ret);
		free(old);
		return not_durable(why, "snapshot deleted");
	}
	crash_point(s, CP_MU_BASE_NAMED);
	if (!unlinkat(s->dirfd, old, 0))
		crash_point(s, CP_MU_OLD_NAME_UNLINKED);
	free(old);
	return 0;
unlink_new:
	unlinkat(s->dirfd, name, 0);
out:
	free(name);
	return 0;
}

int pf_stack_delete_snapshot(struct pf_stack *s, const char *guid,
			     struct pf_stack_merge_info *info,
			     struct pf_why *why)
{
	struct merge m = { .s = s };
	struct level gone = { 0 };
	struct pf_dd *dd = NULL;
	struct timespec a, b;
	char *gone_file = NULL;
	unsigned p;
	uint64_t t0, stall;
	bool down, started = false, committed = false, durable = true;
	struct pf_file *ro_file = NULL;
	uint32_t idx;
	int ret;

	memset(info, 0, sizeof(*info));
	ret = lock_structure(s, why);
	if (ret)
		return ret;
	clock_gettime(CLOCK_MONOTONIC, &a);
	ret = dd_current(s, &dd, why);
	if (ret)
		goto out;
	for (p = 0; p + 1 < s->n_levels; p++)
		if (!strcmp(s->levels[p].guid, guid))
			break;
	if (!strcmp(guid, PF_TOP_GUID)) {
		ret = pf_why_set(why, -EINVAL, "%s is the top delta, not a snapshot",
				 guid);
		goto out;
	}
	if (p + 1 >= s->n_levels) {
		ret = pf_why_set(why, -ENOENT, "%s: no such snapshot in the image's current chain",
				 guid);
		goto out;
	}
	if (pf_dd_children(dd, guid) > 1) {
		ret = pf_why_set(why, -EMLINK,
				 "%s has more than one child snapshot: cannot merge",
				 guid);
		goto out;
	}
	m.p = p;
	m.c = p + 1;
	started = true;
	down = m.c + 1 < s->n_levels;
	info->down = down;
	emit(s, "merge-start", "deleting snapshot %s: merging %s %s %s", guid,
	     down ? s->levels[m.c].d->name : s->levels[p].d->name,
	     down ? "down into" : "up into",
	     down ? s->levels[p].d->name : s->levels[m.c].d->name);
	if (down) {
		/* The parent changes in place: mark it being deleted first,
		 * so a crash leaves a merge to complete, not a snapshot
		 * whose data is half its child's. */
		ret = pf_dd_set_temporary(dd, guid, true);
		if (!ret)
			ret = pf_dd_replace(s->dirfd, dd, &committed);
		if (ret && committed) {
			/* the mark may not survive: do not change the file */
			set_failed(s, "directory sync after replacing " PF_DD_NAME,
				   ret);
			ret = not_durable(why, "snapshot marked temporary");
			goto out;
		}
		if (ret) {
			pf_why_fmt(why, PF_DD_NAME ": cannot mark %s temporary: %s",
				   guid, strerror(-ret));
			goto out;
		}
		crash_point(s, CP_MD_MARKED);
		/* No view of the parent reads while it changes, and its file
		 * is opened for writing while nothing reads it at all. */
		t0 = freeze(s);
		if (!s->levels[p].d->writable)
			ret = pf_delta_reopen(s->levels[p].d, s->dirfd, true,
					      &ro_file);
		if (!ret) {
			pthread_mutex_lock(&s->levels_lock);
			s->levels[p].hidden = true;
			pthread_mutex_unlock(&s->levels_lock);
		}
		thaw(s, t0);
		if (ro_file)
			ro_file->ops->close(ro_file);
		if (ret)
			pf_why_fmt(why, "%s: cannot open for writing: %s",
				   s->levels[p].d->name, strerror(-ret));
		else
			ret = merge_down(&m, why);
	} else {
		ret = merge_run(&m, merge_up_worker);
		if (ret)
			pf_why_fmt(why, "copy from %s into the top failed: %s",
				   s->levels[p].d->name, strerror(-ret));
		if (!ret) {
			crash_point(s, CP_MU_COPIED);
			/* W5: the receiving BAT is durable first */
			ret = pf_stack_flush(s);
			if (ret)
				pf_why_fmt(why, "commit of the top failed: %s",
					   strerror(-ret));
			else
				crash_point(s, CP_MU_COMMITTED);
		}
	}
	if (ret)
		goto out;
	ret = pf_dd_delete_snapshot(dd, guid, down, &gone_file);
	if (!ret)
		ret = pf_dd_store_tmp(s->dirfd, dd);
	if (ret) {
		pf_why_fmt(why, PF_DD_NAME ": cannot prepare: %s", strerror(-ret));
		goto out;
	}
	crash_point(s, down ? CP_MD_DD_TMP : CP_MU_DD_TMP);

	t0 = freeze(s);
	if (!down)	/* every cluster of the parent now in the top? */
		for (idx = 0; idx < s->hdr->bat_entries; idx++)
			if (level_load(s, idx) == p) {
				ret = -EAGAIN;
				break;
			}
	if (!ret)
		ret = dd_switch(s, &durable);
	if (!ret)
		crash_point(s, down ? CP_MD_DD_RENAMED : CP_MU_DD_RENAMED);
	if (ret) {
		thaw(s, t0);
		pf_dd_drop_tmp(s->dirfd);
		pf_why_fmt(why, "cannot replace " PF_DD_NAME ": %s",
			   strerror(-ret));
		goto out;
	}
	pthread_mutex_lock(&s->levels_lock);
	if (down) {
		/* the parent's file now holds the child's view */
		struct level *pl = &s->levels[p];

		memcpy(pl->guid, s->levels[m.c].guid, sizeof(pl->guid));
		pl->hidden = s->levels[m.c].hidden;
		pl->mapped = 0;
		for (idx = 0; idx < pl->d->hdr.bat_entries; idx++)
			pl->mapped += level_clu(s, p, idx) != 0;
		level_remove(s, m.c, &gone);
	} else {
		level_remove(s, p, &gone);
	}
	pthread_mutex_unlock(&s->levels_lock);
	stall = thaw(s, t0);

	/* W5: the merged delta goes only after the descriptor dropped it */
	pf_delta_close(gone.d);
	if (!durable) {	/* the old descriptor may come back: keep it */
		ret = not_durable(why, "snapshot deleted");
		goto out;
	}
	if (unlinkat(s->dirfd, gone_file, 0) < 0) {
		pf_log(PF_LOG_WARNING, "%s/%s: cannot remove the merged delta: %s",
		       s->dir, gone_file, strerror(errno));
	} else {
		crash_point(s, down ? CP_MD_UNLINKED : CP_MU_UNLINKED);
		if (!down && p == 0)
			ret = take_base_name(s, gone_file, why);
		if (ret)
			goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	info->clusters = atomic_load(&m.copied);
	info->bytes = info->clusters * s->hdr->cluster_bytes;
	info->usec = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000 +
		     (uint64_t)((b.tv_nsec - a.tv_nsec) / 1000);
	info->stall_us = stall;
	emit(s, "merge-done", "snapshot %s deleted: %" PRIu64 " clusters copied in %" PRIu64
	     " ms; I/O stalled %" PRIu64 " us", guid, info->clusters,
	     info->usec / 1000, stall);
out:
	if (ret && started)
		emit(s, "merge-failed", "deleting snapshot %s failed: %s", guid,
		     why->msg);
	free(m.pdirty);
	free(gone_file);
	pf_dd_free(dd);
	pthread_mutex_unlock(&s->struct_lock);
	return ret;
}

/* Status of the levels, base first.  Blocks only for a switch's pointer
 * swap, never for a freeze (CTL-1). */
size_t pf_stack_levels(struct pf_stack *s, struct pf_stack_level *out,
		       size_t n)
{
	size_t i, count;

	pthread_mutex_lock(&s->levels_lock);
	count = s->n_levels;
	for (i = 0; i < count && i < n; i++) {
		const struct level *lv = &s->levels[i];

		snprintf(out[i].guid, sizeof(out[i].guid), "%s", lv->guid);
		snprintf(out[i].file, sizeof(out[i].file), "%s", lv->d->name);
		out[i].top = i + 1 == count;
		out[i].hidden = lv->hidden;
		if (out[i].top) {
			pthread_mutex_lock(&s->bat_lock);
			out[i].mapped = s->top_mapped;
			pthread_mutex_unlock(&s->bat_lock);
		} else {
			out[i].mapped = lv->mapped;
		}
	}
	pthread_mutex_unlock(&s->levels_lock);
	return count;
}
