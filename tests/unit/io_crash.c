// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Crash-simulating pf_file backend (see io_crash.h).
 *
 * Every operation takes the world's lock, so the model is sequentially
 * consistent; the cache of a file is an ordered list, and a crash applies
 * the kept pieces in order (a later write to the same bytes wins if both
 * are kept, an earlier one survives alone if the later is lost -- what a
 * volatile disk cache that destaged the earlier write could do).
 */
#include "io_crash.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { OP_WRITE, OP_PUNCH, OP_TRUNC };

struct cop {
	int kind;
	uint64_t off, len;	/* OP_TRUNC: off = new size */
	uint8_t *data;
};

struct crash_file {
	struct pf_file base;
	struct crash_world *w;
	struct cop *ops;
	size_t n, cap;
};

static uint64_t rnd(struct crash_world *w)
{
	/* xorshift64* */
	w->rng ^= w->rng >> 12;
	w->rng ^= w->rng << 25;
	w->rng ^= w->rng >> 27;
	return w->rng * 0x2545F4914F6CDD1Dull;
}

static int apply(struct crash_file *cf, const struct cop *o, uint64_t off,
		 uint64_t len)
{
	int fd = cf->base.fd;

	switch (o->kind) {
	case OP_WRITE:
		return pf_pwrite_full(fd, o->data + (off - o->off), len, off);
	case OP_PUNCH:
		return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				 (off_t)off, (off_t)len) < 0 ? -errno : 0;
	default:
		return ftruncate(fd, (off_t)o->off) < 0 ? -errno : 0;
	}
}

static void cache_clear(struct crash_file *cf)
{
	size_t i;

	for (i = 0; i < cf->n; i++)
		free(cf->ops[i].data);
	cf->n = 0;
}

/* The power goes: keep a random subset of every cache. */
static void crash_locked(struct crash_world *w)
{
	unsigned i;
	size_t j;

	if (w->crashed)
		return;
	w->crashed = true;
	for (i = 0; i < w->n_files; i++) {
		struct crash_file *cf = w->files[i];

		if (!cf)
			continue;
		for (j = 0; j < cf->n; j++) {
			const struct cop *o = &cf->ops[j];
			uint64_t piece = o->kind == OP_WRITE && w->torn ?
						 w->torn :
						 o->len ? o->len : 1;
			uint64_t p;

			if (o->kind != OP_WRITE) {
				if (rnd(w) & 1) {
					apply(cf, o, o->off, o->len);
					w->kept++;
				} else {
					w->lost++;
				}
				continue;
			}
			for (p = o->off; p < o->off + o->len; p += piece) {
				uint64_t l = o->off + o->len - p;

				if (l > piece)
					l = piece;
				if (rnd(w) & 1) {
					apply(cf, o, p, l);
					w->kept++;
				} else {
					w->lost++;
				}
			}
		}
		cache_clear(cf);
	}
	if (w->on_crash)
		w->on_crash(w->on_crash_ctx);
}

/* Count a mutating operation; true if the crash happens now (the
 * operation is lost with everything else unsynced). */
static bool tick(struct crash_world *w)
{
	w->ops++;
	if (w->countdown > 0 && --w->countdown == 0)
		crash_locked(w);
	return w->crashed;
}

static int cache_add(struct crash_file *cf, int kind, uint64_t off,
		     uint64_t len, const void *data)
{
	struct cop *o;

	if (cf->n == cf->cap) {
		size_t cap = cf->cap ? cf->cap * 2 : 16;
		struct cop *v = realloc(cf->ops, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		cf->ops = v;
		cf->cap = cap;
	}
	o = &cf->ops[cf->n];
	o->kind = kind;
	o->off = off;
	o->len = len;
	o->data = NULL;
	if (data) {
		o->data = malloc(len);
		if (!o->data)
			return -ENOMEM;
		memcpy(o->data, data, len);
	}
	cf->n++;
	return 0;
}

static int c_pread(struct pf_file *f, void *buf, size_t len, uint64_t off)
{
	struct crash_file *cf = (struct crash_file *)f;
	struct crash_world *w = cf->w;
	uint8_t *b = buf;
	ssize_t got;
	size_t i;

	pthread_mutex_lock(&w->lock);
	if (w->crashed) {
		pthread_mutex_unlock(&w->lock);
		return -EIO;
	}
	got = pread(f->fd, b, len, (off_t)off);
	if (got < 0)
		got = 0;
	memset(b + got, 0, len - (size_t)got);	/* past the real end */
	for (i = 0; i < cf->n; i++) {
		const struct cop *o = &cf->ops[i];
		uint64_t s = o->off, e = o->off + o->len;

		if (o->kind == OP_TRUNC) {
			s = o->off;
			e = UINT64_MAX;
		}
		if (s < off)
			s = off;
		if (e > off + len)
			e = off + len;
		if (s >= e)
			continue;
		if (o->kind == OP_WRITE)
			memcpy(b + (s - off), o->data + (s - o->off), e - s);
		else
			memset(b + (s - off), 0, e - s);
	}
	pthread_mutex_unlock(&w->lock);
	return 0;
}

static int mutate(struct pf_file *f, int kind, uint64_t off, uint64_t len,
		  const void *data)
{
	struct crash_file *cf = (struct crash_file *)f;
	struct crash_world *w = cf->w;
	int ret;

	pthread_mutex_lock(&w->lock);
	ret = tick(w) ? -EIO : cache_add(cf, kind, off, len, data);
	pthread_mutex_unlock(&w->lock);
	return ret;
}

static int c_pwrite(struct pf_file *f, const void *buf, size_t len,
		    uint64_t off)
{
	return mutate(f, OP_WRITE, off, len, buf);
}

static int c_punch(struct pf_file *f, uint64_t off, uint64_t len)
{
	return mutate(f, OP_PUNCH, off, len, NULL);
}

static int c_truncate(struct pf_file *f, uint64_t size)
{
	return mutate(f, OP_TRUNC, size, 0, NULL);
}

static int c_datasync(struct pf_file *f)
{
	struct crash_file *cf = (struct crash_file *)f;
	struct crash_world *w = cf->w;
	int ret = 0;
	size_t i;

	pthread_mutex_lock(&w->lock);
	if (tick(w)) {
		ret = -EIO;
	} else {
		for (i = 0; i < cf->n && !ret; i++)
			ret = apply(cf, &cf->ops[i], cf->ops[i].off,
				    cf->ops[i].len);
		cache_clear(cf);
	}
	pthread_mutex_unlock(&w->lock);
	return ret;
}

static void c_close(struct pf_file *f)
{
	struct crash_file *cf = (struct crash_file *)f;
	struct crash_world *w = cf->w;
	unsigned i;

	pthread_mutex_lock(&w->lock);
	/* closing is no sync: what is cached is lost as in a crash */
	for (i = 0; i < w->n_files; i++)
		if (w->files[i] == cf)
			w->files[i] = NULL;
	cache_clear(cf);
	pthread_mutex_unlock(&w->lock);
	close(f->fd);
	free(cf->ops);
	free(cf);
}

static const struct pf_file_ops crash_ops = {
	.pread = c_pread,
	.pwrite = c_pwrite,
	.datasync = c_datasync,
	.punch = c_punch,
	.truncate = c_truncate,
	.close = c_close,
};

static int crash_wrap(void *ctx, int fd, const char *name, bool writable,
		      struct pf_file **out)
{
	struct crash_world *w = ctx;
	struct crash_file *cf = calloc(1, sizeof(*cf));
	unsigned i;

	(void)name;
	(void)writable;
	if (!cf) {
		close(fd);
		return -ENOMEM;
	}
	cf->base.ops = &crash_ops;
	cf->base.fd = fd;
	cf->base.aio_ok = false;
	cf->w = w;
	pthread_mutex_lock(&w->lock);
	/* a slot of a closed file first: snapshots and merges open files
	 * while the world lives */
	for (i = 0; i < w->n_files && w->files[i]; i++)
		;
	if (i == CRASH_MAX_FILES) {
		pthread_mutex_unlock(&w->lock);
		close(fd);
		free(cf);
		return -EMFILE;
	}
	w->files[i] = cf;
	if (i == w->n_files)
		w->n_files++;
	pthread_mutex_unlock(&w->lock);
	*out = &cf->base;
	return 0;
}

void crash_world_init(struct crash_world *w, uint64_t seed, long countdown,
		      unsigned torn)
{
	memset(w, 0, sizeof(*w));
	pthread_mutex_init(&w->lock, NULL);
	w->rng = seed * 0x9E3779B97F4A7C15ull + 1;
	w->countdown = countdown;
	w->torn = torn;
	w->factory.wrap = crash_wrap;
	w->factory.ctx = w;
}

void crash_now(struct crash_world *w)
{
	pthread_mutex_lock(&w->lock);
	crash_locked(w);
	pthread_mutex_unlock(&w->lock);
}

void crash_world_destroy(struct crash_world *w)
{
	pthread_mutex_destroy(&w->lock);
}
