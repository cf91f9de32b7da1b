// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Parallel digests of a disk's content (sum.h).
 *
 * The calling thread cuts the work into units (a chunk of the disk, or
 * one cluster of a delta) and queues them on a ring; worker threads take
 * units in order, read them and digest their blocks; the calling thread
 * takes the results back in the same order and feeds the outer digest.
 * Each unit owns a ring slot, its buffer and its digests, so nothing is
 * shared between workers but the queue.  A unit that is all hole never
 * reaches the ring: the calling thread accounts for it with zero
 * digests (block digest) or zero bytes (plain digest) once the units
 * before it are consumed.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sum.h"

/* bytes of a unit of the disk (and of the raw digest's reads) */
#define SUM_CHUNK	(4u * 1024 * 1024)
/* at most this much memory in unit buffers */
#define SUM_MEM		(256u * 1024 * 1024)
/* alignment of unit buffers, offsets and lengths of O_DIRECT reads */
#define SUM_ALIGN	4096u

enum sum_mode {
	SUM_BLK,	/* digest of each PF_BLK_BLOCK of a unit */
	SUM_RAW,	/* the bytes, for the caller to hash in order */
	SUM_CLU,	/* one digest over the unit: one cluster of one delta */
};

enum unit_state { U_FREE, U_QUEUED, U_DONE };

struct unit {
	uint64_t voff;		/* offset on the disk (SUM_CLU: in the file) */
	uint32_t len;		/* bytes */
	uint32_t vclu;		/* SUM_CLU: the virtual cluster */
	enum unit_state state;
	int err;
	struct pf_why why;
	uint8_t *buf;		/* chunk bytes, SUM_ALIGN aligned */
	uint8_t *mds;		/* digests of the blocks */
};

struct sum_job {
	enum sum_mode mode;
	const struct pf_sum_src *src;
	struct pf_delta *one;	/* SUM_CLU */
	const struct pf_sum_opts *o;
	size_t md_len;
	uint32_t chunk;		/* bytes of a unit */
	uint8_t zero_md[PF_CSUM_MAX];	/* of PF_BLK_BLOCK zeros */

	pthread_mutex_t mu;
	pthread_cond_t work;	/* a unit queued, or stop */
	pthread_cond_t done;	/* a unit done */
	struct unit *ring;
	unsigned nring;
	uint64_t queued;	/* units queued so far (next sequence) */
	uint64_t taken;		/* units taken by workers */
	uint64_t consumed;	/* units consumed in order */
	bool stop;
	pthread_t *th;
	unsigned nthreads;	/* workers wanted */
	unsigned started;	/* workers running */
	unsigned named;		/* workers that took their pf_csum */
	struct pf_csum **cs;	/* one per worker */
	struct pf_csum *mine;	/* the calling thread's */

	/* holes of the raw file: [hole_from, next_data) reads as zeros */
	uint64_t hole_from, next_data;
	bool no_seek;		/* the file does not tell holes */
};

static unsigned default_threads(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > 16 ? 16 : (unsigned)n;
}

/* Reading */

/* The topmost delta of the chain mapping virtual cluster @c: its index
 * and *@clu, or -1 if none does. */
static long chain_find(const struct pf_sum_src *s, uint32_t c, uint32_t *clu)
{
	size_t i;

	for (i = s->n; i-- > 0;) {
		*clu = pf_delta_clu(s->chain[i], c);
		if (*clu)
			return (long)i;
	}
	return -1;
}

static int read_delta(struct pf_delta *d, uint8_t *buf, size_t len,
		      uint64_t off, struct pf_why *why)
{
	size_t a = d->direct && d->align ? d->align : 1;
	size_t rl = (len + a - 1) / a * a;
	int ret = d->f->ops->pread(d->f, buf, rl, off);

	if (ret)
		return pf_why_set(why, ret, "%s: read of %zu bytes at %" PRIu64
				  " failed: %s", d->name, rl, off,
				  ret == -EIO ? "input/output error or end of file" :
						strerror(-ret));
	return 0;
}

/* Fill u->buf from the chain, merging runs of clusters that one delta
 * holds side by side into one read. */
static int fill_chain(struct sum_job *j, struct unit *u)
{
	const struct pf_sum_src *s = j->src;
	const struct pf_header *h = &s->chain[s->n - 1]->hdr;
	uint32_t cb = h->cluster_bytes, pos = 0;

	while (pos < u->len) {
		uint64_t v = u->voff + pos;
		uint32_t c = (uint32_t)(v >> h->cluster_shift), clu, first, next;
		uint32_t run = cb - (uint32_t)(v & (cb - 1));
		long di = chain_find(s, c, &clu);
		int ret;

		if (run > u->len - pos)
			run = u->len - pos;
		if (di < 0) {
			memset(u->buf + pos, 0, run);
			pos += run;
			continue;
		}
		/* extend over the clusters the same delta holds next */
		first = clu;
		while (pos + run < u->len && chain_find(s, c + 1, &next) == di &&
		       next == clu + 1) {
			uint32_t more = cb < u->len - pos - run ?
						cb : u->len - pos - run;
			run += more;
			c++;
			clu++;
		}
		ret = read_delta(s->chain[di], u->buf + pos, run,
				 ((uint64_t)first << h->cluster_shift) +
					 (v & (cb - 1)),
				 &u->why);
		if (ret)
			return ret;
		pos += run;
	}
	return 0;
}

/* Fill u->buf from the raw file: @len bytes, O_DIRECT requests rounded
 * up to SUM_ALIGN; the file ending early is an error. */
static int fill_file(struct sum_job *j, struct unit *u)
{
	size_t want = (u->len + SUM_ALIGN - 1) / SUM_ALIGN * SUM_ALIGN;
	size_t got = 0;

	while (got < u->len) {
		ssize_t r = pread(j->src->fd, u->buf + got, want - got,
				  (off_t)(u->voff + got));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return pf_why_set(&u->why, -errno,
					  "read at %" PRIu64 " failed: %s",
					  u->voff + got, strerror(errno));
		if (r == 0)
			return pf_why_set(&u->why, -EIO,
					  "ended at %" PRIu64
					  " while being read (it shrank)",
					  u->voff + got);
		got += (size_t)r;
	}
	return 0;
}

static int unit_run(struct sum_job *j, struct unit *u, struct pf_csum *cs)
{
	uint32_t pos;
	int ret;

	if (j->mode == SUM_CLU) {
		ret = read_delta(j->one, u->buf, u->len, u->voff, &u->why);
		if (!ret)
			ret = pf_csum_buf(cs, u->buf, u->len, u->mds);
		return ret;
	}
	ret = j->src->n ? fill_chain(j, u) : fill_file(j, u);
	if (ret || j->mode == SUM_RAW)
		return ret;
	for (pos = 0; pos < u->len; pos += PF_BLK_BLOCK) {
		uint32_t n = u->len - pos < PF_BLK_BLOCK ? u->len - pos :
							    PF_BLK_BLOCK;
		uint8_t *md = u->mds + (size_t)(pos / PF_BLK_BLOCK) * j->md_len;

		if (n == PF_BLK_BLOCK && pf_is_zero(u->buf + pos, n)) {
			memcpy(md, j->zero_md, j->md_len);
			continue;
		}
		ret = pf_csum_buf(cs, u->buf + pos, n, md);
		if (ret)
			return pf_why_set(&u->why, ret, "digest failed");
	}
	return 0;
}

static void *worker(void *p)
{
	struct sum_job *j = p;
	struct pf_csum *cs;

	pthread_mutex_lock(&j->mu);
	cs = j->cs[j->named++];
	for (;;) {
		struct unit *u;

		while (!j->stop && j->taken == j->queued)
			pthread_cond_wait(&j->work, &j->mu);
		if (j->stop)
			break;
		u = &j->ring[j->taken++ % j->nring];
		pthread_mutex_unlock(&j->mu);
		u->err = unit_run(j, u, cs);
		pthread_mutex_lock(&j->mu);
		u->state = U_DONE;
		pthread_cond_broadcast(&j->done);
	}
	pthread_mutex_unlock(&j->mu);
	return NULL;
}

/* Setting up and tearing down */

static void job_fini(struct sum_job *j)
{
	unsigned i;

	pthread_mutex_lock(&j->mu);
	j->stop = true;
	pthread_cond_broadcast(&j->work);
	pthread_mutex_unlock(&j->mu);
	for (i = 0; i < j->started; i++)
		pthread_join(j->th[i], NULL);
	for (i = 0; j->cs && i < j->nthreads; i++)
		pf_csum_free(j->cs[i]);
	for (i = 0; j->ring && i < j->nring; i++) {
		free(j->ring[i].buf);
		free(j->ring[i].mds);
	}
	pf_csum_free(j->mine);
	free(j->cs);
	free(j->ring);
	free(j->th);
	pthread_cond_destroy(&j->work);
	pthread_cond_destroy(&j->done);
	pthread_mutex_destroy(&j->mu);
}

static int job_init(struct sum_job *j, enum sum_mode mode,
		    const struct pf_sum_src *src, struct pf_delta *one,
		    const struct pf_sum_opts *o, uint32_t chunk)
{
	unsigned nth = o->threads ? o->threads : default_threads(), i;
	size_t nmd = mode == SUM_BLK ? chunk / PF_BLK_BLOCK + 1 : 1;
	int ret = -ENOMEM;

	memset(j, 0, sizeof(*j));
	pthread_mutex_init(&j->mu, NULL);
	pthread_cond_init(&j->work, NULL);
	pthread_cond_init(&j->done, NULL);
	j->mode = mode;
	j->src = src;
	j->one = one;
	j->o = o;
	j->chunk = chunk;
	j->md_len = pf_csum_alg_size(o->alg);
	if (nth > PF_SUM_THREADS_MAX)
		nth = PF_SUM_THREADS_MAX;
	/* at least one unit more than the workers, within SUM_MEM: fewer
	 * workers for large units (64 MiB clusters) */
	if ((uint64_t)(nth + 1) * chunk > SUM_MEM)
		nth = SUM_MEM / chunk > 2 ? (unsigned)(SUM_MEM / chunk) - 1 : 1;
	/* two units per worker, so that one waits while one is read, as
	 * memory allows */
	j->nring = 2 * nth;
	if ((uint64_t)j->nring * chunk > SUM_MEM)
		j->nring = (unsigned)(SUM_MEM / chunk);
	if (j->nring < nth + 1)
		j->nring = nth + 1;
	j->nthreads = nth;
	j->ring = calloc(j->nring, sizeof(*j->ring));
	j->cs = calloc(nth, sizeof(*j->cs));
	j->th = calloc(nth, sizeof(*j->th));
	if (!j->ring || !j->cs || !j->th)
		goto fail;
	for (i = 0; i < j->nring; i++) {
		if (posix_memalign((void **)&j->ring[i].buf, SUM_ALIGN, chunk))
			goto fail;
		j->ring[i].mds = malloc(nmd * j->md_len);
		if (!j->ring[i].mds)
			goto fail;
	}
	for (i = 0; i < nth; i++)
		if (pf_csum_new(o->alg, &j->cs[i]))
			goto fail;
	if (pf_csum_new(o->alg, &j->mine))
		goto fail;
	for (i = 0; i < nth; i++) {
		ret = -pthread_create(&j->th[i], NULL, worker, j);
		if (ret)
			goto fail;
		j->started++;
	}
	return 0;
fail:
	job_fini(j);
	return ret;
}

/* Driving the workers from the calling thread */

/* The oldest unit queued and not consumed, once done; NULL if none. */
static struct unit *oldest(struct sum_job *j)
{
	struct unit *u;

	if (j->consumed == j->queued)
		return NULL;
	u = &j->ring[j->consumed % j->nring];
	pthread_mutex_lock(&j->mu);
	while (u->state != U_DONE)
		pthread_cond_wait(&j->done, &j->mu);
	pthread_mutex_unlock(&j->mu);
	return u;
}

static void queue_unit(struct sum_job *j, struct unit *u)
{
	pthread_mutex_lock(&j->mu);
	u->state = U_QUEUED;
	j->queued++;
	pthread_cond_signal(&j->work);
	pthread_mutex_unlock(&j->mu);
}

/* What the calling thread does with a done unit, in order. */
typedef int (*take_fn)(struct sum_job *j, struct unit *u, void *ctx);

/* Consume the oldest unit: 0, 1 if none was queued, or the error of the
 * unit or of @take (@why set). */
static int consume_one(struct sum_job *j, take_fn take, void *ctx,
		       struct pf_why *why)
{
	struct unit *u = oldest(j);
	int ret;

	if (!u)
		return 1;
	ret = j->mode == SUM_CLU ? 0 : u->err;	/* SUM_CLU: per cluster */
	if (ret)
		pf_why_fmt(why, "%s", u->why.msg);
	else if ((ret = take(j, u, ctx)) && !why->msg[0])
		pf_why_fmt(why, "digest failed: %s", strerror(-ret));
	u->state = U_FREE;
	j->consumed++;
	return ret;
}

static int drain(struct sum_job *j, take_fn take, void *ctx,
		 struct pf_why *why)
{
	int ret;

	while (!(ret = consume_one(j, take, ctx, why)))
		;
	return ret == 1 ? 0 : ret;
}

/* A free ring slot, consuming the oldest unit if the ring is full. */
static int free_slot(struct sum_job *j, take_fn take, void *ctx,
		     struct unit **out, struct pf_why *why)
{
	int ret;

	if (j->queued - j->consumed == j->nring) {
		ret = consume_one(j, take, ctx, why);
		if (ret)
			return ret;
	}
	*out = &j->ring[j->queued % j->nring];
	(*out)->err = 0;
	(*out)->why.msg[0] = '\0';
	return 0;
}

/* true if no delta of the chain maps a byte of [off, off + len) */
static bool chain_hole(const struct sum_job *j, uint64_t off, uint64_t len)
{
	const struct pf_sum_src *s = j->src;
	const struct pf_header *h = &s->chain[s->n - 1]->hdr;
	uint64_t c = off >> h->cluster_shift;
	uint64_t end = pf_div_round_up(off + len, h->cluster_bytes);
	uint32_t clu;

	for (; c < end; c++)
		if (chain_find(s, (uint32_t)c, &clu) >= 0)
			return false;
	return true;
}

/* true if the raw file has only a hole in [off, off + len) */
static bool file_hole(struct sum_job *j, uint64_t off, uint64_t len)
{
	off_t d;

	if (j->no_seek)
		return false;
	if (off < j->hole_from || off >= j->next_data) {
		d = lseek(j->src->fd, (off_t)off, SEEK_DATA);
		if (d < 0 && errno == ENXIO) {
			/* no data from @off to the end of the file, or @off
			 * is past it: a file that shrank is read, and fails */
			struct stat st;

			if (fstat(j->src->fd, &st) < 0 ||
			    (uint64_t)st.st_size <= off)
				return false;
			d = st.st_size;
		} else if (d < 0) {
			j->no_seek = true;	/* EINVAL: not supported */
			return false;
		}
		j->hole_from = off;
		j->next_data = (uint64_t)d;
	}
	return j->next_data >= off + len;
}

static bool unit_hole(struct sum_job *j, uint64_t off, uint64_t len)
{
	return j->src->n ? chain_hole(j, off, len) : file_hole(j, off, len);
}

/* Walk the disk in units of j->chunk: holes through @hole (in order),
 * the rest through the ring and @take. */
static int walk_disk(struct sum_job *j, take_fn take,
		     int (*hole)(struct sum_job *j, uint64_t len, void *ctx),
		     void *ctx, struct pf_why *why)
{
	uint64_t size = j->src->size, off;
	int ret = 0;

	for (off = 0; off < size && !ret; off += j->chunk) {
		uint32_t len = size - off < j->chunk ? (uint32_t)(size - off) :
						       j->chunk;
		struct unit *u;

		if (j->o->cancel && j->o->cancel(j->o->ctx)) {
			ret = pf_why_set(why, -ECANCELED, "cancelled");
			break;
		}
		if (unit_hole(j, off, len)) {
			ret = drain(j, take, ctx, why);
			if (!ret)
				ret = hole(j, len, ctx);
		} else {
			ret = free_slot(j, take, ctx, &u, why);
			if (ret)
				break;
			u->voff = off;
			u->len = len;
			queue_unit(j, u);
		}
		if (j->o->progress)
			j->o->progress(j->o->ctx, off + len, size);
	}
	if (!ret)
		ret = drain(j, take, ctx, why);
	return ret;
}

static uint32_t disk_chunk(const struct pf_sum_src *s)
{
	uint32_t cb = s->n ? s->chain[s->n - 1]->hdr.cluster_bytes : 0;

	return cb > SUM_CHUNK ? cb : SUM_CHUNK;
}

static const uint8_t zeros[PF_BLK_BLOCK];

/* The block digest */

static int blk_take(struct sum_job *j, struct unit *u, void *ctx)
{
	struct pf_blk *b = ctx;
	uint32_t pos;
	int ret = 0;

	for (pos = 0; pos < u->len && !ret; pos += PF_BLK_BLOCK) {
		uint32_t n = u->len - pos < PF_BLK_BLOCK ? u->len - pos :
							    PF_BLK_BLOCK;

		ret = pf_blk_add(b, u->mds + (size_t)(pos / PF_BLK_BLOCK) *
						     j->md_len, n);
	}
	return ret;
}

static int blk_hole(struct sum_job *j, uint64_t len, void *ctx)
{
	struct pf_blk *b = ctx;
	uint8_t md[PF_CSUM_MAX];
	uint32_t rest = (uint32_t)(len % PF_BLK_BLOCK);
	int ret = pf_blk_add_zero(b, len / PF_BLK_BLOCK);

	if (!ret && rest) {
		ret = pf_csum_buf(j->mine, zeros, rest, md);
		if (!ret)
			ret = pf_blk_add(b, md, rest);
	}
	return ret;
}

int pf_sum_blk(const struct pf_sum_src *src, const struct pf_sum_opts *o,
	       uint8_t *md, struct pf_why *why)
{
	struct sum_job j;
	struct pf_blk b;
	int ret;

	ret = pf_blk_init(&b, o->alg);
	if (ret)
		return pf_why_set(why, ret, "cannot start the digest");
	ret = job_init(&j, SUM_BLK, src, NULL, o, disk_chunk(src));
	if (ret) {
		pf_blk_free(&b);
		return pf_why_set(why, ret, "cannot start the readers: %s",
				  strerror(-ret));
	}
	memcpy(j.zero_md, b.zero_md, j.md_len);
	ret = walk_disk(&j, blk_take, blk_hole, &b, why);
	job_fini(&j);
	if (!ret)
		ret = pf_blk_final(&b, md);
	pf_blk_free(&b);
	return ret;
}

/* The plain digest */

static int raw_take(struct sum_job *j, struct unit *u, void *ctx)
{
	(void)ctx;
	return pf_csum_update(j->mine, u->buf, u->len);
}

static int raw_hole(struct sum_job *j, uint64_t len, void *ctx)
{
	int ret = 0;

	(void)ctx;
	while (len && !ret) {
		uint32_t n = len < PF_BLK_BLOCK ? (uint32_t)len : PF_BLK_BLOCK;

		ret = pf_csum_update(j->mine, zeros, n);
		len -= n;
	}
	return ret;
}

int pf_sum_raw(const struct pf_sum_src *src, const struct pf_sum_opts *o,
	       uint8_t *md, struct pf_why *why)
{
	struct sum_job j;
	int ret;

	ret = job_init(&j, SUM_RAW, src, NULL, o, disk_chunk(src));
	if (ret)
		return pf_why_set(why, ret, "cannot start the readers: %s",
				  strerror(-ret));
	ret = pf_csum_reset(j.mine);
	if (!ret)
		ret = walk_disk(&j, raw_take, raw_hole, NULL, why);
	if (!ret)
		ret = pf_csum_final(j.mine, md);
	job_fini(&j);
	return ret;
}

/* Each cluster of one delta */

struct clu_ctx {
	pf_sum_each_fn each;
	void *ctx;
};

static int clu_take(struct sum_job *j, struct unit *u, void *ctx)
{
	struct clu_ctx *c = ctx;

	(void)j;
	return c->each(c->ctx, u->vclu, u->err ? NULL : u->mds, u->err);
}

int pf_sum_clusters(struct pf_delta *d, const struct pf_sum_opts *o,
		    pf_sum_each_fn each, void *ctx, struct pf_why *why)
{
	const struct pf_header *h = &d->hdr;
	struct clu_ctx c = { each, ctx };
	uint64_t total = pf_delta_mapped_count(d) * h->cluster_bytes, done = 0;
	struct sum_job j;
	uint32_t v;
	int ret;

	ret = job_init(&j, SUM_CLU, NULL, d, o, h->cluster_bytes);
	if (ret)
		return pf_why_set(why, ret, "cannot start the readers: %s",
				  strerror(-ret));
	for (v = 0; v < h->bat_entries && !ret; v++) {
		uint32_t clu = pf_delta_clu(d, v);
		struct unit *u;

		if (!clu)
			continue;
		if (o->cancel && o->cancel(o->ctx)) {
			ret = pf_why_set(why, -ECANCELED, "cancelled");
			break;
		}
		ret = free_slot(&j, clu_take, &c, &u, why);
		if (ret)
			break;
		u->voff = (uint64_t)clu << h->cluster_shift;
		u->len = h->cluster_bytes;
		u->vclu = v;
		queue_unit(&j, u);
		done += h->cluster_bytes;
		if (o->progress)
			o->progress(o->ctx, done, total);
	}
	if (!ret)
		ret = drain(&j, clu_take, &c, why);
	job_fini(&j);
	return ret;
}
