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
 * thread commits periodically and on pf_stack_flush().
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
	struct pf_delta *d;	/* header, BAT (d->meta), metadata fd */
	struct pf_file *f;	/* data I/O, O_DIRECT when possible */
	const uint8_t *meta;	/* BAT as on disk (top: s->top_meta) */
};

struct pf_stack {
	int dirfd;		/* holds the exclusive image lock */
	char *dir;
	unsigned n_levels;
	struct level *levels;	/* base first */
	struct level *top;
	const struct pf_header *hdr;	/* top's header geometry */
	uint8_t *level_of;	/* per virtual cluster; atomic access */
	size_t align;		/* O_DIRECT alignment of the data fds */
	struct pf_aio *aio;
	struct pf_file_factory factory;
	struct rbucket rb[RLOCK_BUCKETS];

	/* BAT of the top delta, page aligned, whole pages; the header
	 * lives in its first 64 bytes.  Entries: atomic access; pages and
	 * the dirty set: protected by bat_lock. */
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
	pthread_cond_t wb_kick;		/* want > started, or stop */
	pthread_cond_t wb_done;		/* done advanced */
	uint64_t started, done, want;	/* commit sequence numbers */
	bool wb_stop, wb_running;
	pthread_t wb_thread;
	unsigned commit_ms;
	atomic_bool failed;		/* W7 */
	atomic_uint_fast64_t commits, datasyncs;
};

/* Small helpers */

static inline uint32_t entry_load(const uint8_t *meta, uint32_t idx)
{
	const uint32_t *p = (const uint32_t *)(meta + pf_idx_entry_off(idx));

	return le32toh(__atomic_load_n(p, __ATOMIC_ACQUIRE));
}

static inline void entry_store(uint8_t *meta, uint32_t idx, uint32_t raw)
{
	uint32_t *p = (uint32_t *)(meta + pf_idx_entry_off(idx));

	__atomic_store_n(p, htole32(raw), __ATOMIC_RELEASE);
}

static inline uint8_t level_load(const struct pf_stack *s, uint32_t idx)
{
	return __atomic_load_n(&s->level_of[idx], __ATOMIC_ACQUIRE);
}

static inline void level_store(struct pf_stack *s, uint32_t idx, uint8_t l)
{
	__atomic_store_n(&s->level_of[idx], l, __ATOMIC_RELEASE);
}

/* File cluster that level @l maps @idx to, 0 if none. */
static uint32_t level_clu(const struct pf_stack *s, unsigned l, uint32_t idx)
{
	const struct level *lv = &s->levels[l];
	uint32_t raw;

	if (idx >= lv->d->hdr.bat_entries)
		return 0;
	raw = entry_load(lv->meta, idx);
	if (lv->d->hdr.version == 1)
		return raw / lv->d->hdr.cluster_sectors;
	return raw;
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

static void set_failed(struct pf_stack *s, const char *what, int err)
{
	if (!atomic_exchange(&s->failed, true))
		pf_log(PF_LOG_ERR,
		       "%s: %s failed: %s; image is now read-only until remounted (W7)",
		       s->dir, what, strerror(-err));
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
		pthread_cond_wait(&s->epoch_drained, &s->epoch_lock);
	atomic_store(&s->epoch_waiting, false);
	pthread_mutex_unlock(&s->epoch_lock);
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
	while (rlock_conflicts(b, r))
		pthread_cond_wait(&b->released, &b->lock);
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
	entry_store(s->top_meta, idx, clu ? pf_bat_encode(&s->top_hdr, clu) : 0);
	level_store(s, idx, new_level);
	page_mark_dirty(s, pf_idx_to_page(idx));
out:
	pthread_mutex_unlock(&s->bat_lock);
	return ret;
}

/* Allocation of clusters in the top file */

static int punch(struct level *lv, uint64_t off, uint64_t len)
{
	return lv->f->ops->punch(lv->f, off, len);
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

/*
 * A cluster of the top file that reads as zeros and nothing references:
 * a punched hole from the free list (W4), or the next one at the end,
 * growing the file (sparse) in PREALLOC_BYTES steps.
 */
static int cluster_alloc(struct pf_stack *s, uint32_t *clu)
{
	const struct pf_header *h = s->hdr;
	uint64_t grow, max = pf_max_file_clusters(h);
	int ret = 0;

	pthread_mutex_lock(&s->alloc_lock);
	if (s->n_free) {
		*clu = s->free_list[--s->n_free];
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
		ret = s->top->f->ops->truncate(s->top->f,
					       (s->file_clusters + grow)
						       << h->cluster_shift);
		if (ret)
			goto out;
		s->file_clusters += grow;
	}
	*clu = (uint32_t)s->alloc_head++;
out:
	pthread_mutex_unlock(&s->alloc_lock);
	return ret;
}

/* Synchronous data I/O in the caller's thread */

static int data_pread(struct level *lv, void *buf, size_t len, uint64_t off)
{
	return lv->f->ops->pread(lv->f, buf, len, off);
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
	int ret = s->top->f->ops->pwrite(s->top->f, buf, len, off);

	if (ret)
		data_write_failed(s, ret);
	return ret;
}

/* BAT pages and the header: the caller decides what a failure means. */
static int meta_pwrite(struct pf_stack *s, const void *buf, size_t len,
		       uint64_t off)
{
	return s->top->f->ops->pwrite(s->top->f, buf, len, off);
}

/* Reads and writes for the completion path: through libaio where the
 * file allows it, else synchronously with the callback run here. */
static void data_submit(struct pf_stack *s, struct level *lv, bool write,
			struct pf_aio_req *r, void *buf, size_t len,
			uint64_t off, pf_aio_done_fn done, void *arg)
{
	int ret;

	if (lv->f->aio_ok) {
		if (write)
			pf_aio_pwrite(s->aio, r, lv->f->fd, buf, len, off, done,
				      arg);
		else
			pf_aio_pread(s->aio, r, lv->f->fd, buf, len, off, done,
				     arg);
		return;
	}
	ret = write ? lv->f->ops->pwrite(lv->f, buf, len, off) :
		      lv->f->ops->pread(lv->f, buf, len, off);
	done(arg, ret ? ret : (ssize_t)len);
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
		ret = write_in_place(s, clu, in_off, src, len);
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
			memcpy(cbuf + in_off, src, len);
			ret = data_pwrite(s, cbuf, cs, pf_clu_to_off(s->hdr, clu));
		}
	} else if (aligned(s, src, in_off, len)) {
		/* the rest of a fresh cluster reads as zeros already */
		ret = data_pwrite(s, src, len, pf_clu_to_off(s->hdr, clu) + in_off);
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
		}
	}
	if (ret) {
		/* The cluster stays unreferenced: a leak that the next open
		 * reclaims (W8); never reuse a half-written one. */
		pf_log(PF_LOG_ERR, "%s: write of cluster %" PRIu32 " failed: %s",
		       s->top->d->name, clu, strerror(-ret));
		goto out;
	}
	ret = top_set(s, idx, clu, top);
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
	if (atomic_fetch_sub(&op->pending, 1) != 1)
		return;
	epoch_exit(op->s, op->epoch);
	op->done(op->arg, atomic_load(&op->err));
	free(op);
}

static struct op *op_new(struct pf_stack *s, size_t len, uint64_t off,
			 pf_stack_done_fn done, void *arg, size_t *n_segs)
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

void pf_stack_read(struct pf_stack *s, void *buf, size_t len, uint64_t off,
		   pf_stack_done_fn done, void *arg)
{
	const struct pf_header *h = s->hdr;
	size_t n, i, pos = 0;
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
	op = op_new(s, len, off, done, arg, &n);
	if (!op) {
		done(arg, -ENOMEM);
		return;
	}
	for (i = 0; i < n; i++) {
		uint32_t idx;
		uint64_t in_off;
		uint8_t *dst = (uint8_t *)buf + pos;
		size_t seg_len = seg_at(h, off, len, &pos, &idx, &in_off);
		uint8_t lvl = level_load(s, idx);
		uint32_t clu;

		clu = lvl == LEVEL_NONE ? 0 : level_clu(s, lvl, idx);
		if (!clu) {
			memset(dst, 0, seg_len);	/* a hole */
			continue;
		}
		op->segs[i].op = op;
		op->segs[i].len = seg_len;
		atomic_fetch_add(&op->pending, 1);
		data_submit(s, &s->levels[lvl], false, &op->segs[i].aio, dst,
			    seg_len,
			    pf_clu_to_off(&s->levels[lvl].d->hdr, clu) + in_off,
			    read_seg_done, &op->segs[i]);
	}
	op_put(op);
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
	op_put(g->op);
}

void pf_stack_write(struct pf_stack *s, const void *buf, size_t len,
		    uint64_t off, pf_stack_done_fn done, void *arg)
{
	const struct pf_header *h = s->hdr;
	uint8_t top = (uint8_t)(s->n_levels - 1);
	size_t n, i, pos = 0;
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
	op = op_new(s, len, off, done, arg, &n);
	if (!op) {
		done(arg, -ENOMEM);
		return;
	}
	for (i = 0; i < n; i++) {
		uint32_t idx;
		uint64_t in_off;
		const uint8_t *src = (const uint8_t *)buf + pos;
		size_t seg_len = seg_at(h, off, len, &pos, &idx, &in_off);
		struct seg *g = &op->segs[i];
		uint32_t clu;

		g->op = op;
		g->len = seg_len;
		rlock_acquire(s, &g->rl, idx, round_down(in_off, s->align),
			      round_up(in_off + seg_len, s->align));
		clu = level_clu(s, top, idx);
		if (clu && aligned(s, src, in_off, seg_len)) {
			/* in place; the range stays locked until done */
			atomic_fetch_add(&op->pending, 1);
			data_submit(s, s->top, true, &g->aio, (void *)src,
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
		if (ret)
			op_error(op, ret);
	}
	op_put(op);
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
		pthread_cond_wait(&w->cv, &w->lock);
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

int pf_stack_pwrite(struct pf_stack *s, const void *buf, size_t len,
		    uint64_t off)
{
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
			    false, 0 };

	pf_stack_write(s, buf, len, off, waiter_done, &w);
	return waiter_wait(&w);
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
	} else if (lower) {
		/* Shadow the snapshot's data with a zero cluster. */
		ret = cluster_alloc(s, &clu);
		if (!ret)
			ret = top_set(s, idx, clu, top);
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
			if (!zeros)
				return -ENOMEM;
			memset(zeros, 0, h->cluster_bytes);
		}
		ret = pf_stack_pwrite(s, zeros, (size_t)seg, off);
	}
	free(zeros);
	return ret;
}

/* Writeback */

static int datasync(struct pf_stack *s)
{
	atomic_fetch_add(&s->datasyncs, 1);
	return s->top->f->ops->datasync(s->top->f);
}

/* One commit, W1-W4 (see the file comment).  @force: sync data even when
 * no BAT page is dirty (a flush). */
static int commit(struct pf_stack *s, bool force)
{
	uint32_t *pages = NULL, *freeing = NULL;
	size_t n_pages, n_freeing, i;
	uint8_t *copy = NULL;
	int ret = 0;

	pthread_mutex_lock(&s->commit_lock);
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
	/* 3. the BAT pages, then W3: durable before anyone is answered */
	for (i = 0; i < n_pages; i++) {
		ret = meta_pwrite(s, copy + i * PF_BAT_PAGE_SIZE,
				  PF_BAT_PAGE_SIZE,
				  (uint64_t)pages[i] * PF_BAT_PAGE_SIZE);
		if (ret) {
			set_failed(s, "BAT write", ret);
			goto out;
		}
	}
	if (n_pages) {
		ret = datasync(s);
		if (ret) {
			set_failed(s, "BAT flush", ret);
			goto out;
		}
		atomic_fetch_add(&s->commits, 1);
	}
	/* 4. W4: the unmapping is durable; the clusters may go */
	for (i = 0; i < n_freeing; i++) {
		uint32_t clu = freeing[i];

		if (punch(s->top, pf_clu_to_off(s->hdr, clu),
			  s->hdr->cluster_bytes))
			continue;	/* cannot make it read zeros: leak */
		pthread_mutex_lock(&s->alloc_lock);
		if (free_push(s, clu))
			pf_log(PF_LOG_WARNING, "%s: out of memory, cluster %" PRIu32
			       " leaked until the next mount", s->dir, clu);
		pthread_mutex_unlock(&s->alloc_lock);
	}
out:
	pthread_mutex_unlock(&s->commit_lock);
	free(pages);
	free(copy);
	free(freeing);
	return ret;
}

static void *writeback(void *arg)
{
	struct pf_stack *s = arg;
	struct timespec deadline;
	uint64_t seq;
	bool requested;

	pthread_mutex_lock(&s->wb_lock);
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &deadline);
		deadline.tv_sec += s->commit_ms / 1000;
		deadline.tv_nsec += (long)(s->commit_ms % 1000) * 1000000;
		if (deadline.tv_nsec >= 1000000000) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000000000;
		}
		while (!s->wb_stop && s->want <= s->started &&
		       pthread_cond_timedwait(&s->wb_kick, &s->wb_lock,
					      &deadline) != ETIMEDOUT)
			;
		if (s->wb_stop)
			break;
		requested = s->want > s->started;
		seq = ++s->started;
		pthread_mutex_unlock(&s->wb_lock);

		commit(s, requested);	/* errors: sticky failed state */

		pthread_mutex_lock(&s->wb_lock);
		s->done = seq;
		pthread_cond_broadcast(&s->wb_done);
	}
	pthread_mutex_unlock(&s->wb_lock);
	return NULL;
}

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
	/* group commit: the next commit to start began after this call */
	target = s->started + 1;
	if (s->want < target)
		s->want = target;
	pthread_cond_signal(&s->wb_kick);
	while (s->done < target)
		pthread_cond_wait(&s->wb_done, &s->wb_lock);
	pthread_mutex_unlock(&s->wb_lock);
	return atomic_load(&s->failed) ? -EIO : 0;
}

/* Opening: validation, recovery (W8), in-use flag */

/* Reopen delta @name for data I/O with O_DIRECT, checking that it is the
 * same file; fall back to buffered I/O where O_DIRECT is refused. */
static int open_data_fd(struct pf_stack *s, struct level *lv, bool write,
			bool no_direct)
{
	struct stat a, b;
	int flags = (write ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW;
	int fd = -1;

	if (!no_direct)
		fd = openat(s->dirfd, lv->d->name, flags | O_DIRECT);
	if (fd < 0 && !no_direct)
		pf_log(PF_LOG_WARNING,
		       "%s/%s: O_DIRECT refused (%s), using buffered I/O",
		       s->dir, lv->d->name, strerror(errno));
	if (fd < 0)
		fd = openat(s->dirfd, lv->d->name, flags);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &a) < 0 || fstat(lv->d->fd, &b) < 0 ||
	    a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
		close(fd);
		return -ESTALE;	/* replaced under us */
	}
	if (s->factory.wrap)
		return s->factory.wrap(s->factory.ctx, fd, lv->d->name, write,
				       &lv->f);
	return pf_file_posix(fd, &lv->f);
}

/* O_DIRECT alignment of @fd: statx's dio alignment, else 4096. */
static size_t dio_align(int fd)
{
	struct statx stx;
	int fl = fcntl(fd, F_GETFL);
	size_t a;

	if (fl >= 0 && !(fl & O_DIRECT))
		return 512;	/* buffered: any is fine, keep sectors */
	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
	    (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
		a = stx.stx_dio_offset_align;
		if (stx.stx_dio_mem_align > a)
			a = stx.stx_dio_mem_align;
		return a < 512 ? 512 : a;
	}
	return 4096;
}

struct first_finding {
	char msg[512];
	bool corrupt, unclean;
};

static void note_finding(void *ctx, const char *file, enum pf_finding kind,
			 const char *msg)
{
	struct first_finding *f = ctx;

	if (kind == PF_FIND_CORRUPT && !f->corrupt) {
		f->corrupt = true;
		snprintf(f->msg, sizeof(f->msg), "%s: %s", file, msg);
	}
	if (kind == PF_FIND_UNCLEAN)
		f->unclean = true;
}

/* W8: rebuild allocation state of the top delta from its committed BAT:
 * clusters past the last referenced one are leaks (trimmed), unreferenced
 * ones before it are punched and become free. */
static int recover_top(struct pf_stack *s)
{
	const struct pf_header *h = s->hdr;
	struct level *top = s->top;
	uint64_t *used, max_used = 0, leaked = 0;
	uint64_t n = top->d->file_clusters;
	uint32_t idx, clu;
	int ret = 0;

	used = calloc(pf_div_round_up(n, 64), sizeof(*used));
	if (!used)
		return -ENOMEM;
	for (idx = 0; idx < h->bat_entries; idx++) {
		clu = level_clu(s, s->n_levels - 1, idx);
		if (!clu)
			continue;
		used[clu / 64] |= 1ull << (clu % 64);
		if (clu > max_used)
			max_used = clu;
		s->top_mapped++;
	}
	s->alloc_head = max_used ? max_used + 1 : h->hdr_clusters;
	for (clu = h->hdr_clusters; clu < s->alloc_head; clu++) {
		if (used[clu / 64] & (1ull << (clu % 64)))
			continue;
		leaked++;
		/* W4: a reused cluster reads as zeros */
		if (punch(top, pf_clu_to_off(h, clu), h->cluster_bytes) ||
		    free_push(s, clu))
			continue;	/* stays a leak */
	}
	free(used);
	if (n > s->alloc_head || top->d->file_bytes % h->cluster_bytes) {
		leaked += n > s->alloc_head ? n - s->alloc_head : 0;
		ret = top->f->ops->truncate(top->f,
					    pf_clu_to_off(h, (uint32_t)s->alloc_head));
	}
	s->file_clusters = s->alloc_head;
	if (leaked)
		pf_log(PF_LOG_NOTICE, "%s: %" PRIu64 " leaked clusters reclaimed",
		       s->dir, leaked);
	return ret;
}

static int stack_load(struct pf_stack *s, const struct pf_stack_opts *o,
		      struct pf_why *why)
{
	struct first_finding ff = { "", false, false };
	struct pf_check_report r = { .emit = note_finding, .ctx = &ff };
	struct pf_delta **chain_d = NULL;
	struct pf_dd *dd = NULL;
	size_t *chain = NULL, depth = 0, i;
	int ret;

	ret = pf_dd_load(s->dirfd, &dd, why);
	if (ret == -ENOENT)
		pf_why_fmt(why, PF_DD_NAME " not found: not an image directory");
	if (ret)
		goto out;
	ret = pf_dd_chain(dd, &chain, &depth, why);
	if (ret)
		goto out;
	s->levels = calloc(depth, sizeof(*s->levels));
	chain_d = calloc(depth, sizeof(*chain_d));
	if (!s->levels || !chain_d) {
		ret = -ENOMEM;
		goto out;
	}
	for (i = 0; i < depth; i++) {
		struct pf_why w = { "" };
		const char *name = dd->images[chain[i]].file;
		bool is_top = i + 1 == depth;

		ret = pf_delta_open(s->dirfd, name, is_top ? PF_DELTA_WRITE : 0,
				    &s->levels[i].d, &w);
		s->n_levels = (unsigned)i + (ret == 0);
		if (ret) {
			pf_why_fmt(why, "%s: %s", name, w.msg);
			goto out;
		}
		chain_d[i] = s->levels[i].d;
		s->levels[i].meta = s->levels[i].d->meta;
		ret = pf_check_delta(s->levels[i].d, &r);
		if (ret)
			goto out;
	}
	s->top = &s->levels[depth - 1];
	s->hdr = &s->top->d->hdr;
	pf_check_stack(dd, chain_d, depth, &r);
	if (ff.corrupt) {
		ret = pf_why_set(why, -EUCLEAN, "%s (run ploopctl check)", ff.msg);
		goto out;
	}
	for (i = 0; i < depth; i++) {
		ret = open_data_fd(s, &s->levels[i], i + 1 == depth,
				   o->no_direct);
		if (ret) {
			pf_why_fmt(why, "%s: cannot open for I/O: %s",
				   s->levels[i].d->name, strerror(-ret));
			goto out;
		}
		if (i + 1 < depth &&
		    s->levels[i].d->hdr.in_use == PF_INUSE_OPEN)
			pf_log(PF_LOG_WARNING,
			       "%s/%s: lower delta has its in-use flag set; opened read-only",
			       s->dir, s->levels[i].d->name);
	}
out:
	free(chain_d);
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
	/* Adopt the delta's BAT buffer (whole aligned pages): one copy of
	 * the top BAT, 64 MiB at 16 TiB. */
	s->top_meta = d->meta;
	d->meta = NULL;
	s->top->meta = s->top_meta;
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

	/* In-use flag set and synced before the first write (W8, ploop). */
	s->top_hdr.in_use = PF_INUSE_OPEN;
	s->top_hdr.ext_sectors = 0;
	pf_header_encode(&s->top_hdr, s->top_meta);
	ret = meta_pwrite(s, s->top_meta, PF_BAT_PAGE_SIZE, 0);
	if (!ret)
		ret = datasync(s);
	return ret;
}

static void stack_free(struct pf_stack *s)
{
	unsigned i;

	if (!s)
		return;
	for (i = 0; i < s->n_levels; i++) {
		if (s->levels[i].f)
			s->levels[i].f->ops->close(s->levels[i].f);
		pf_delta_close(s->levels[i].d);
	}
	free(s->levels);
	free(s->top_meta);
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
	if (o->factory)
		s->factory = *o->factory;
	pthread_mutex_init(&s->bat_lock, NULL);
	pthread_mutex_init(&s->alloc_lock, NULL);
	pthread_mutex_init(&s->epoch_lock, NULL);
	pthread_cond_init(&s->epoch_drained, NULL);
	pthread_mutex_init(&s->commit_lock, NULL);
	pthread_mutex_init(&s->wb_lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->wb_kick, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&s->wb_done, NULL);
	for (i = 0; i < RLOCK_BUCKETS; i++) {
		pthread_mutex_init(&s->rb[i].lock, NULL);
		pthread_cond_init(&s->rb[i].released, NULL);
	}
	if (!s->dir) {
		ret = -ENOMEM;
		goto err;
	}
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
	s->align = dio_align(s->top->f->fd);
	ret = top_prepare(s);
	if (ret) {
		if (!why || !why->msg[0])
			pf_why_fmt(why, "%s: cannot prepare for writing: %s",
				   s->top->d->name, strerror(-ret));
		goto err;
	}
	/* Synchronous until pf_stack_start() replaces it: an aio context
	 * does not survive the fork of daemonizing. */
	ret = pf_aio_create(0, &s->aio);
	if (ret) {
		pf_why_fmt(why, "cannot create an I/O context: %s",
			   strerror(-ret));
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
	struct pf_aio *a;
	int ret;

	ret = pf_aio_create(AIO_DEPTH, &a);
	if (ret)
		return ret;
	pf_aio_destroy(s->aio);	/* the synchronous one, idle */
	s->aio = a;
	if (!pf_aio_is_async(s->aio))
		pf_log(PF_LOG_WARNING,
		       "%s: no kernel aio context; I/O runs synchronously",
		       s->dir);
	ret = pf_aio_start(s->aio);
	if (ret)
		return ret;
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
	pf_aio_destroy(s->aio);	/* waits for everything in flight */
	s->aio = NULL;

	if (atomic_load(&s->failed)) {
		ret = -EIO;	/* leave in-use set: recover at next open */
		goto out;
	}
	ret = commit(s, true);
	if (ret)
		goto out;
	/* Trim the preallocated tail; clusters past alloc_head are unused. */
	if (s->file_clusters > s->alloc_head) {
		r = s->top->f->ops->truncate(
			s->top->f, pf_clu_to_off(s->hdr, (uint32_t)s->alloc_head));
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
	pf_header_encode(&s->top_hdr, s->top_meta);
	pthread_mutex_unlock(&s->bat_lock);
	r = meta_pwrite(s, s->top_meta, PF_BAT_PAGE_SIZE, 0);
	if (!r)
		r = datasync(s);
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
	return s->hdr->size_bytes;
}

size_t pf_stack_align(const struct pf_stack *s)
{
	return s->align;
}

void pf_stack_stat(struct pf_stack *s, struct pf_stack_stat *st)
{
	memset(st, 0, sizeof(*st));
	st->size_bytes = s->hdr->size_bytes;
	st->cluster_bytes = s->hdr->cluster_bytes;
	st->deltas = s->n_levels;
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
}
