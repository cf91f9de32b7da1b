// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The delta stack engine (see stack.h; its rooms, threads and locks are
 * described in stack_i.h).  This file: opening (validation, recovery by
 * W8, the in-use flag), closing, the read and write paths with
 * copy-on-write and the unaligned edges, discard, status, and the
 * helpers the other rooms share.
 */
#include "stack_i.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "image.h"
#include "log.h"
#include "manifest.h"

const char *const crash_point_names[] = { NULL, CRASH_POINTS(CP_NAME) };

const char *const *pf_stack_crash_points(size_t *n)
{
	*n = CP_COUNT - 1;
	return crash_point_names + 1;
}

void *stack_alloc_aligned(const struct pf_stack *s, size_t len)
{
	void *p = NULL;

	if (posix_memalign(&p, s->align < 4096 ? 4096 : s->align, len))
		return NULL;
	return p;
}

void PF_PRINTF(3, 4) stack_emit(struct pf_stack *s, const char *type,
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

void stack_set_failed(struct pf_stack *s, const char *what, int err)
{
	if (!atomic_exchange(&s->failed, true)) {
		pf_log(PF_LOG_ERR,
		       "%s: %s failed: %s; image is now read-only until remounted (W7)",
		       s->dir, what, strerror(-err));
		stack_emit(s, "failed", "%s failed: %s; writes fail until remounted",
			   what, strerror(-err));
	}
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
		stack_set_failed(s, "data write", err);
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
	tmp = stack_alloc_aligned(s, a1 - a0);
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
int stack_write_allocating(struct pf_stack *s, uint32_t idx, uint64_t in_off,
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
	ret = map_cluster_alloc(s, &clu);
	if (ret)
		goto out;
	lower = level_load(s, idx);
	if (lower != LEVEL_NONE && lower != top &&
	    (lclu = level_clu(s, lower, idx)) != 0) {
		/* copy-on-write of the whole cluster */
		cbuf = stack_alloc_aligned(s, cs);
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
		cbuf = stack_alloc_aligned(s, a1 - a0);
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
		    !map_punch(s->top, pf_clu_to_off(s->hdr, clu), cs)) {
			pthread_mutex_lock(&s->alloc_lock);
			(void)map_free_push(s, clu);
			pthread_mutex_unlock(&s->alloc_lock);
		}
		goto out;
	}
	ret = map_top_set(s, idx, clu, top);
	if (!ret)
		crash_point(s, CP_ALLOC_MAPPED);
out:
	free(cbuf);
	rlock_release(s, &rl);
	return ret;
}

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
		uint8_t *bbuf = stack_alloc_aligned(s, a1 - a0);

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
		view = map_view_find(s, guid);
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
		uint8_t lvl = map_view_level(s, view, idx);
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

/* BAT entries a seek looks at inside the gate at a time: a freeze waits
 * for one window at most, not for a scan of the whole disk */
#define SEEK_WINDOW	65536u

int pf_stack_seek(struct pf_stack *s, const char *guid, uint64_t off,
		  bool data, uint64_t *out)
{
	const struct pf_header *h = s->hdr;
	uint32_t idx = (uint32_t)(off >> h->cluster_shift), end;
	unsigned e;
	int ret = 1;	/* not found yet */

	if (off >= h->size_bytes)
		return -ENXIO;
	*out = h->size_bytes;
	while (ret == 1 && idx < h->bat_entries) {
		uint8_t view = LEVEL_NONE;

		end = h->bat_entries - idx > SEEK_WINDOW ? idx + SEEK_WINDOW :
							   h->bat_entries;
		gate_enter(s);
		e = epoch_enter(s);
		/* the view's level may move between windows (a delete) */
		if (guid && (view = map_view_find(s, guid)) == LEVEL_NONE)
			ret = -ESTALE;
		for (; ret == 1 && idx < end; idx++)
			if ((map_view_level(s, view, idx) != LEVEL_NONE) == data) {
				uint64_t at = (uint64_t)idx << h->cluster_shift;

				*out = at > off ? at : off;
				ret = 0;
			}
		epoch_exit(s, e);
		gate_exit(s);
	}
	if (ret == 1)	/* no data to the end; a hole at the end */
		ret = data ? -ENXIO : 0;
	return ret;
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
	gate_inflight_done(g->op->s);
	op_put(g->op);
}

static void stack_write(struct pf_stack *s, const void *buf, size_t len,
			uint64_t off, bool gated, pf_stack_done_fn done,
			void *arg)
{
	const struct pf_header *h = s->hdr;
	size_t n, i, pos = 0;
	uint64_t held_since = 0;	/* us, while held */
	struct op *op;
	int ret;

	if (s->read_only) {
		done(arg, -EROFS);
		return;
	}
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
			ret = stack_write_allocating(s, idx, in_off, src,
						     seg_len);
		}
		/* held only outside any gate: a discard's own zeroing
		 * write fails instead of blocking a freeze */
		if (ret == -ENOSPC && gated && !atomic_load(&s->failed)) {
			ret = space_hold(s, op, off + seg_pos, seg_len,
					 &held_since);
			if (!ret)
				goto retry;
		}
		if (ret)
			op_error(op, ret);
	}
	if (held_since && !atomic_load(&op->err))
		stack_emit(s, "enospc-resumed", "held write of %zu bytes at %" PRIu64
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

	if (s->read_only || atomic_load(&s->failed) || !len ||
	    !range_ok(s, len, off))
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

static int discard_cluster(struct pf_stack *s, uint32_t idx)
{
	const uint32_t cs = s->hdr->cluster_bytes;
	uint8_t top = (uint8_t)(s->n_levels - 1);
	bool lower = map_lower_maps(s, idx);
	struct rlock rl;
	uint32_t clu;
	uint8_t *zeros;
	int ret = 0;

	rlock_acquire(s, &rl, idx, 0, cs);
	clu = level_clu(s, top, idx);
	if (clu && lower) {
		/* Keep the entry (clearing it would expose the snapshot's
		 * data, DIS-1); the punched cluster reads as zeros. */
		ret = map_punch(s->top, pf_clu_to_off(s->hdr, clu), cs);
		if (!ret) {
			crash_point(s, CP_DISCARD_PUNCHED);
			/* still mapped: keep later writes from -ENOSPC */
			(void)map_space_for(s, clu, 1);
		}
		if (ret == -EOPNOTSUPP) {
			zeros = stack_alloc_aligned(s, cs);
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
		ret = map_top_set(s, idx, 0, LEVEL_NONE);
		if (!ret)
			crash_point(s, CP_DISCARD_UNMAPPED);
	} else if (lower) {
		/* Shadow the snapshot's data with a zero cluster. */
		ret = map_cluster_alloc(s, &clu);
		if (!ret)
			ret = map_top_set(s, idx, clu, top);
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

	if (s->read_only)
		return -EROFS;
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
			zeros = stack_alloc_aligned(s, h->cluster_bytes);
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

void stack_cp_step(void *ctx, enum pf_delta_step step)
{
	const struct cp_hook *h = ctx;

	crash_point(h->s, h->at[step]);
}

/* Opening: validation, recovery (W8), in-use flag */

/* W8: the allocation state of the top delta comes from its committed
 * BAT (pf_delta_recover): trailing clusters are leaks, trimmed;
 * unreferenced ones below the last used one are punched and free.  A
 * read-only top is recovered in memory only: the same head, nothing
 * punched or trimmed (the next read-write open does that). */
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
	if (rec.leaked && s->read_only)
		pf_log(PF_LOG_NOTICE, "%s: %" PRIu64 " leaked clusters left for a read-write mount to reclaim",
		       s->dir, rec.leaked);
	else if (rec.leaked)
		pf_log(PF_LOG_NOTICE, "%s: %" PRIu64 " leaked clusters reclaimed",
		       s->dir, rec.leaked);
	return 0;
}

/* The I/O of @d bypasses the page cache from now on, where it can with
 * buffers aligned to @max_align. */
void stack_use_direct(struct pf_stack *s, struct pf_delta *d,
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
					  s->read_only ? 0 : PF_DELTA_WRITE,
					  true, &s->io, &v, why);
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
			stack_use_direct(s, lv->d, PF_BAT_PAGE_SIZE);
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
		       s->read_only ?
			       "%s: image was not closed cleanly; serving the committed state read-only, recovered in memory (W8)" :
			       "%s: image was not closed cleanly; recovering the committed state (W8)",
		       s->dir);
	if (s->read_only)
		return recover_top(s);	/* in memory; no flag, no space */
	if (d->hdr.in_use == PF_INUSE_CLOSED_V21 && d->hdr.ext_sectors)
		pf_log(PF_LOG_NOTICE,
		       "%s: dropping the format extension (dirty bitmap) of %s on read-write open",
		       s->dir, d->name);
	ret = recover_top(s);
	if (ret)
		return ret;
	/* BAT pages must never meet a full disk at commit */
	ret = map_space_for(s, 0, d->hdr.hdr_clusters);
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

/*
 * The sealer's algorithm, and which read-only levels have a manifest.
 * The top is written to, so a manifest of its file (a crash in a
 * merge's renames, an older tool) cannot be right: it goes (W9).
 */
static int seal_setup(struct pf_stack *s, const char *alg,
		      struct pf_why *why)
{
	unsigned l;
	int ret;

	ret = pf_csum_alg_get(alg ? alg : PF_CSUM_DEFAULT, &s->seal_alg, why);
	if (ret)
		return ret;
	for (l = 0; l + 1 < s->n_levels; l++)
		s->levels[l].sealed =
			pf_manifest_exists(s->dirfd, s->levels[l].d->name);
	if (s->read_only)
		return 0;
	ret = pf_manifest_drop(s->dirfd, s->top->d->name, NULL);
	if (ret)
		pf_why_fmt(why, "%s: cannot remove the manifest of the top delta: %s",
			   s->top->d->name, strerror(-ret));
	return ret;
}

static void stack_free(struct pf_stack *s)
{
	unsigned i;

	if (!s)
		return;
	pf_csum_alg_free(s->seal_alg);
	for (i = 0; i < s->n_levels; i++)
		pf_delta_close(s->levels[i].d);
	free(s->levels);
	free(s->holds);
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
	s->read_only = o->read_only;
	s->stopping = o->stopping;
	s->stopping_ctx = o->stopping_ctx;
	s->event = o->event;
	s->event_ctx = o->event_ctx;
	s->crash_point = o->crash_point;
	s->crash_point_ctx = o->crash_point_ctx;
	{
		pthread_mutex_t *const locks[] = {
			&s->struct_lock, &s->commit_lock, &s->levels_lock,
			&s->alloc_lock, &s->bat_lock, &s->epoch_lock,
			&s->gate_lock, &s->space_lock, &s->wb_lock,
			&s->seal_lock, &s->seal_mu,
		};
		pthread_cond_t *const conds[] = {
			&s->gate_open, &s->gate_drained, &s->epoch_drained,
			&s->wb_done, &s->seal_kick,
		};
		size_t k;

		for (k = 0; k < PF_ARRAY_SIZE(locks); k++)
			pthread_mutex_init(locks[k], NULL);
		for (k = 0; k < PF_ARRAY_SIZE(conds); k++)
			pthread_cond_init(conds[k], NULL);
	}
	/* the timed waits measure monotonic time */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->wb_kick, &ca);
	pthread_cond_init(&s->space_cv, &ca);
	pthread_condattr_destroy(&ca);
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
	 * commands all take this lock without waiting.  Read-only: shared,
	 * as ploopctl check takes it -- the image does not change while we
	 * serve it, and every writer finds it busy. */
	ret = pf_lock(s->dirfd, !s->read_only);
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
	s->no_sealer = o->no_sealer;
	ret = seal_setup(s, o->seal_algorithm, why);
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
	stack_check_state(s, "open");
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
	if (s->read_only) {
		stack_check_state(s, "start");
		return 0;	/* nothing to commit, ever */
	}
	ret = pthread_create(&s->wb_thread, NULL, wb_main, s);
	if (ret)
		return -ret;
	pthread_mutex_lock(&s->wb_lock);
	s->wb_running = true;
	pthread_mutex_unlock(&s->wb_lock);
	ret = seal_start(s);
	if (ret)
		return ret;
	stack_check_state(s, "start");
	return 0;
}

int pf_stack_close(struct pf_stack *s)
{
	uint64_t mapped;
	int ret = 0, r;

	seal_stop(s);	/* the next start resumes it */
	pthread_mutex_lock(&s->wb_lock);
	s->wb_stop = s->wb_running;
	pthread_cond_signal(&s->wb_kick);
	pthread_mutex_unlock(&s->wb_lock);
	if (s->wb_stop)
		pthread_join(s->wb_thread, NULL);
	s->wb_running = false;
	pf_aio_stop(s->aio);	/* waits for everything in flight */
	stack_check_state(s, "close");

	if (s->read_only)
		goto out;	/* nothing was written: nothing to close */
	if (atomic_load(&s->failed)) {
		ret = -EIO;	/* leave in-use set: recover at next open */
		goto out;
	}
	ret = wb_commit(s, true);
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
	st->read_only = s->read_only;
	st->frozen = atomic_load(&s->frozen);
	st->held = atomic_load(&s->held);
	st->enospc_events = atomic_load(&s->enospc_events);
	st->freezes = atomic_load(&s->freezes);
	st->stall_last_us = atomic_load(&s->stall_last_us);
	st->stall_max_us = atomic_load(&s->stall_max_us);
	pthread_mutex_lock(&s->levels_lock);
	for (unsigned l = 0; l + 1 < s->n_levels; l++)
		st->unsealed += !s->levels[l].sealed && !s->levels[l].hidden &&
				!s->levels[l].deleting;
	pthread_mutex_unlock(&s->levels_lock);
	st->seal_total = atomic_load(&s->seal_total);
	st->seal_done = st->seal_total ? atomic_load(&s->seal_done) : 0;
}

/* Status of the levels, base first.  Blocks only for a switch's pointer
 * swap, never for a gate_freeze (CTL-1). */
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
		/* a delete has begun: no view from now on */
		out[i].hidden = lv->hidden || lv->deleting;
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

int pf_stack_levels_all(struct pf_stack *s, struct pf_stack_level **out,
			size_t *n)
{
	struct pf_stack_level *lv = NULL, *p;
	size_t want = 8, got;

	for (;;) {	/* a snapshot may add one meanwhile */
		p = realloc(lv, want * sizeof(*lv));
		if (!p) {
			free(lv);
			return -ENOMEM;
		}
		lv = p;
		got = pf_stack_levels(s, lv, want);
		if (got <= want)
			break;
		want = got;
	}
	*out = lv;
	*n = got;
	return 0;
}

#ifdef PF_DEBUG
/* A fatal inconsistency: say which, where, and stop. */
#define STATE_CHECK(cond, where)						\
	do {								\
		if (!(cond)) {						\
			pf_log(PF_LOG_ERR, "%s: stack state: %s fails at %s",	\
			       s->dir, #cond, (where));			\
			abort();					\
		}							\
	} while (0)

void stack_check_state(struct pf_stack *s, const char *where)
{
	bool quiet = atomic_load(&s->frozen) || !s->wb_running;
	const struct level *top;
	uint64_t head;
	uint32_t idx, n_entries;
	size_t i, dirty = 0;
	unsigned l;

	pthread_mutex_lock(&s->levels_lock);
	STATE_CHECK(s->n_levels >= 1 && s->n_levels <= s->cap_levels, where);
	STATE_CHECK(s->n_levels <= PF_MAX_DELTAS, where);
	top = &s->levels[s->n_levels - 1];
	STATE_CHECK(s->top == top, where);
	STATE_CHECK(s->hdr == &s->top_hdr, where);
	STATE_CHECK(s->top_meta == top->d->meta, where);
	STATE_CHECK(top->d->writable == !s->read_only, where);
	n_entries = s->hdr->bat_entries;
	for (l = 0; l < s->n_levels; l++) {
		const struct pf_delta *d = s->levels[l].d;

		STATE_CHECK(d && d->f && d->meta, where);
		STATE_CHECK(d->hdr.cluster_bytes == s->cluster_bytes, where);
		STATE_CHECK(d->hdr.bat_entries <= n_entries, where);
		STATE_CHECK(d->align <= s->align, where);
	}
	STATE_CHECK(!top->hidden, where);
	pthread_mutex_unlock(&s->levels_lock);

	pthread_mutex_lock(&s->bat_lock);
	STATE_CHECK(s->n_dirty <= s->meta_pages, where);
	for (i = 0; i < s->meta_pages; i++)
		dirty += s->page_dirty[i] != 0;
	STATE_CHECK(dirty == s->n_dirty, where);
	for (i = 0; i < s->n_dirty; i++)
		STATE_CHECK(s->dirty_list[i] < s->meta_pages &&
				    s->page_dirty[s->dirty_list[i]],
			    where);
	STATE_CHECK(s->n_pending <= s->cap_pending, where);
	STATE_CHECK(s->top_mapped <= n_entries, where);
	pthread_mutex_unlock(&s->bat_lock);

	pthread_mutex_lock(&s->alloc_lock);
	head = s->alloc_head;
	STATE_CHECK(s->alloc_head >= s->hdr->hdr_clusters, where);
	STATE_CHECK(s->alloc_head <= s->file_clusters, where);
	STATE_CHECK(s->file_clusters <= pf_max_file_clusters(s->hdr), where);
	STATE_CHECK(s->n_free <= s->cap_free, where);
	for (i = 0; i < s->n_free; i++)
		STATE_CHECK(s->free_list[i] >= s->hdr->hdr_clusters &&
				    s->free_list[i] < s->alloc_head,
			    where);
	pthread_mutex_unlock(&s->alloc_lock);

	if (atomic_load(&s->frozen))
		STATE_CHECK(!atomic_load(&s->gate_active) &&
				    !atomic_load(&s->writes_inflight),
			    where);
	if (!quiet)
		return;
	/* Nothing changes the map now: level_of is the highest level that
	 * maps each cluster, and every top entry lies below the head. */
	for (idx = 0; idx < n_entries; idx++) {
		uint8_t lv = level_load(s, idx);
		uint32_t clu = level_clu(s, s->n_levels - 1, idx);

		if (lv == LEVEL_NONE) {
			for (l = 0; l < s->n_levels; l++)
				STATE_CHECK(!level_clu(s, l, idx), where);
			continue;
		}
		STATE_CHECK(lv < s->n_levels && level_clu(s, lv, idx), where);
		for (l = lv + 1u; l < s->n_levels; l++)
			STATE_CHECK(!level_clu(s, l, idx), where);
		STATE_CHECK(!clu || clu < head, where);
	}
}
#endif
