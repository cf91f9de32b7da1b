// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Crash-simulating pf_file backend (see io_crash.h).
 *
 * Every operation on the list of an inode takes the world's lock, so the
 * model is sequentially consistent; a crash applies the kept pieces in
 * order (a later write to the same bytes wins if both are kept, an
 * earlier one survives alone if the later is lost -- what a volatile disk
 * cache that destaged the earlier write could do).  The scratch copy
 * always holds what reads must see: the real file with every operation
 * of the list applied.
 *
 * Ordering assumption, which the stack keeps by its range locks and
 * epochs: no punch or truncation of a range runs while a write to it is
 * in flight.  (A write reaches the scratch copy before it enters the
 * list; a punch in between would be in the copy after the write but in
 * the list before it.)
 */
#include "io_crash.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { OP_WRITE, OP_PUNCH, OP_TRUNC, OP_ALLOC };

struct cop {
	int kind;
	uint64_t off, len;	/* OP_TRUNC: off = new size */
	uint8_t *data;
};

struct crash_inode {
	dev_t dev;
	ino_t ino;
	unsigned refs;		/* crash files open on it */
	int real_fd;		/* the durable content */
	int copy_fd;		/* what reads see (O_TMPFILE) */
	struct cop *ops;	/* since the last datasync, in order */
	size_t n, cap;
};

struct crash_file {
	struct pf_file base;
	struct crash_world *w;
	struct crash_inode *in;
};

/* An asynchronous request on its way through the engine. */
struct crash_req {
	struct crash_file *cf;
	bool write;
	const void *buf;
	size_t len;
	uint64_t off;
	pf_aio_done_fn done;
	void *arg;
};

static uint64_t rnd(struct crash_world *w)
{
	/* xorshift64* */
	w->rng ^= w->rng >> 12;
	w->rng ^= w->rng << 25;
	w->rng ^= w->rng >> 27;
	return w->rng * 0x2545F4914F6CDD1Dull;
}

static int fd_apply(int fd, const struct cop *o, uint64_t off, uint64_t len)
{
	switch (o->kind) {
	case OP_WRITE:
		return pf_pwrite_full(fd, o->data + (off - o->off), len, off);
	case OP_PUNCH:
		return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				 (off_t)off, (off_t)len) < 0 ? -errno : 0;
	case OP_ALLOC:
		return fallocate(fd, 0, (off_t)off, (off_t)len) < 0 ? -errno : 0;
	default:
		return ftruncate(fd, (off_t)o->off) < 0 ? -errno : 0;
	}
}

static void list_clear(struct crash_inode *in)
{
	size_t i;

	for (i = 0; i < in->n; i++)
		free(in->ops[i].data);
	in->n = 0;
}

/* The power goes: keep a random subset of every list. */
static void crash_locked(struct crash_world *w)
{
	unsigned i;
	size_t j;

	if (w->crashed)
		return;
	w->crashed = true;
	for (i = 0; i < CRASH_MAX_FILES; i++) {
		struct crash_inode *in = w->inodes[i];

		if (!in)
			continue;
		for (j = 0; j < in->n; j++) {
			const struct cop *o = &in->ops[j];
			uint64_t piece = o->kind == OP_WRITE && w->torn ?
						 w->torn :
						 o->len ? o->len : 1;
			uint64_t p;

			if (o->kind != OP_WRITE) {
				if (rnd(w) & 1) {
					(void)fd_apply(in->real_fd, o, o->off,
						       o->len);
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
					(void)fd_apply(in->real_fd, o, p, l);
					w->kept++;
				} else {
					w->lost++;
				}
			}
		}
		list_clear(in);
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

static int list_add(struct crash_inode *in, int kind, uint64_t off,
		    uint64_t len, const void *data)
{
	struct cop *o;

	if (in->n == in->cap) {
		size_t cap = in->cap ? in->cap * 2 : 16;
		struct cop *v = realloc(in->ops, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		in->ops = v;
		in->cap = cap;
	}
	o = &in->ops[in->n];
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
	in->n++;
	return 0;
}

/* Read from the copy; past its end reads zeros (a grown file). */
static int copy_read(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *b = buf;
	ssize_t got;

	while (len) {
		got = pread(fd, b, len, (off_t)off);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (!got) {
			memset(b, 0, len);
			return 0;
		}
		b += got;
		len -= (size_t)got;
		off += (uint64_t)got;
	}
	return 0;
}

static int c_pread(struct pf_file *f, void *buf, size_t len, uint64_t off)
{
	struct crash_file *cf = (struct crash_file *)f;
	struct crash_world *w = cf->w;
	int ret;

	pthread_mutex_lock(&w->lock);
	ret = w->crashed ? -EIO : copy_read(cf->in->copy_fd, buf, len, off);
	pthread_mutex_unlock(&w->lock);
	return ret;
}

/* A mutating operation: on the copy, and into the list. */
static int mutate(struct pf_file *f, int kind, uint64_t off, uint64_t len,
		  const void *data)
{
	struct crash_file *cf = (struct crash_file *)f;
	struct crash_world *w = cf->w;
	struct cop o = { kind, off, len, (uint8_t *)data };
	int ret;

	pthread_mutex_lock(&w->lock);
	ret = tick(w) ? -EIO : fd_apply(cf->in->copy_fd, &o, off, len);
	if (!ret)
		ret = list_add(cf->in, kind, off, len, data);
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

static int c_allocate(struct pf_file *f, uint64_t off, uint64_t len)
{
	return mutate(f, OP_ALLOC, off, len, NULL);
}

static int c_datasync(struct pf_file *f)
{
	struct crash_file *cf = (struct crash_file *)f;
	struct crash_world *w = cf->w;
	struct crash_inode *in = cf->in;
	int ret = 0;
	size_t i;

	pthread_mutex_lock(&w->lock);
	if (tick(w)) {
		ret = -EIO;
	} else {
		for (i = 0; i < in->n && !ret; i++)
			ret = fd_apply(in->real_fd, &in->ops[i], in->ops[i].off,
				       in->ops[i].len);
		list_clear(in);
	}
	pthread_mutex_unlock(&w->lock);
	return ret;
}

/* An asynchronous request completed on the copy: a write enters the
 * list now; after the crash everything fails. */
static void c_done(void *arg, ssize_t res)
{
	struct crash_req *q = arg;
	struct crash_world *w = q->cf->w;

	pthread_mutex_lock(&w->lock);
	if (w->crashed) {
		res = -EIO;
	} else if (q->write && res == (ssize_t)q->len) {
		if (tick(w))
			res = -EIO;	/* lost with the rest */
		else if (list_add(q->cf->in, OP_WRITE, q->off, q->len,
				  q->buf))
			res = -ENOMEM;
	}
	pthread_mutex_unlock(&w->lock);
	q->done(q->arg, res);
	free(q);
}

static void c_submit(struct pf_file *f, struct pf_aio_req *r, bool write,
		     void *buf, size_t len, uint64_t off, pf_aio_done_fn done,
		     void *arg)
{
	struct crash_file *cf = (struct crash_file *)f;
	struct crash_req *q = malloc(sizeof(*q));
	bool crashed;

	if (!q) {
		done(arg, -ENOMEM);
		return;
	}
	*q = (struct crash_req){ cf, write, buf, len, off, done, arg };
	pthread_mutex_lock(&cf->w->lock);
	crashed = cf->w->crashed;
	pthread_mutex_unlock(&cf->w->lock);
	if (crashed) {
		c_done(q, -EIO);
		return;
	}
	pf_aio_submit(f->aio, r, cf->in->copy_fd, write, buf, len, off, c_done,
		      q);
}

static void inode_free(struct crash_inode *in)
{
	list_clear(in);
	free(in->ops);
	if (in->real_fd >= 0)
		close(in->real_fd);
	if (in->copy_fd >= 0)
		close(in->copy_fd);
	free(in);
}

static void c_close(struct pf_file *f)
{
	struct crash_file *cf = (struct crash_file *)f;
	struct crash_world *w = cf->w;
	struct crash_inode *in = cf->in;
	unsigned i;

	pthread_mutex_lock(&w->lock);
	/* closing is no sync: what the last file forgets is lost, as in a
	 * crash */
	if (--in->refs == 0) {
		for (i = 0; i < CRASH_MAX_FILES; i++)
			if (w->inodes[i] == in)
				w->inodes[i] = NULL;
		inode_free(in);
	}
	pthread_mutex_unlock(&w->lock);
	close(f->fd);
	free(cf);
}

static const struct pf_file_ops crash_ops = {
	.pread = c_pread,
	.pwrite = c_pwrite,
	.submit = c_submit,
	.datasync = c_datasync,
	.punch = c_punch,
	.truncate = c_truncate,
	.allocate = c_allocate,
	.close = c_close,
};

/* Copy the real file @from to the scratch copy @to, holes kept. */
static int copy_file(int from, int to)
{
	uint8_t buf[65536];
	struct stat st;
	off_t data = 0, hole;
	ssize_t n;

	if (fstat(from, &st) < 0 || ftruncate(to, st.st_size) < 0)
		return -errno;
	while ((data = lseek(from, data, SEEK_DATA)) >= 0) {
		hole = lseek(from, data, SEEK_HOLE);
		if (hole < 0)
			return -errno;
		while (data < hole) {
			size_t want = (size_t)(hole - data) < sizeof(buf) ?
					      (size_t)(hole - data) :
					      sizeof(buf);

			n = pread(from, buf, want, data);
			if (n <= 0)
				return n < 0 ? -errno : -EIO;
			if (pf_pwrite_full(to, buf, (size_t)n, (uint64_t)data))
				return -EIO;
			data += n;
		}
	}
	return errno == ENXIO ? 0 : -errno;
}

/* An unnamed scratch file in @dir. */
static int scratch_file(const char *dir)
{
	char path[300];
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR))
		return fd;
	snprintf(path, sizeof(path), "%s/pf-crash-copy.XXXXXX", dir);
	fd = mkstemp(path);
	if (fd >= 0)
		unlink(path);
	return fd;
}

/* The inode of @fd in @w, found or made; NULL on error. */
static struct crash_inode *inode_get(struct crash_world *w, int fd)
{
	struct crash_inode *in;
	struct stat st;
	char path[64];
	unsigned i, slot = CRASH_MAX_FILES;

	if (fstat(fd, &st) < 0)
		return NULL;
	for (i = 0; i < CRASH_MAX_FILES; i++) {
		in = w->inodes[i];
		if (in && in->dev == st.st_dev && in->ino == st.st_ino) {
			in->refs++;
			return in;
		}
		if (!in && slot == CRASH_MAX_FILES)
			slot = i;
	}
	if (slot == CRASH_MAX_FILES)
		return NULL;
	in = calloc(1, sizeof(*in));
	if (!in)
		return NULL;
	in->dev = st.st_dev;
	in->ino = st.st_ino;
	in->refs = 1;
	/* a description of its own: buffered, writable, whatever the
	 * stack does to the flags of @fd (O_DIRECT) */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	in->real_fd = open(path, O_RDWR | O_CLOEXEC);
	in->copy_fd = scratch_file(w->copy_dir);
	if (in->real_fd < 0 || in->copy_fd < 0 ||
	    copy_file(in->real_fd, in->copy_fd)) {
		inode_free(in);
		return NULL;
	}
	w->inodes[slot] = in;
	return in;
}

static int crash_wrap(void *ctx, int fd, const char *name, bool writable,
		      struct pf_aio *aio, struct pf_file **out)
{
	struct crash_world *w = ctx;
	struct crash_file *cf = calloc(1, sizeof(*cf));

	(void)name;
	(void)writable;
	if (!cf) {
		close(fd);
		return -ENOMEM;
	}
	pthread_mutex_lock(&w->lock);
	cf->in = inode_get(w, fd);
	pthread_mutex_unlock(&w->lock);
	if (!cf->in) {
		close(fd);
		free(cf);
		return -EMFILE;
	}
	cf->base.ops = &crash_ops;
	cf->base.fd = fd;
	cf->base.aio = aio;
	cf->w = w;
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
	w->copy_dir = "/tmp";
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
