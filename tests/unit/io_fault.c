// SPDX-License-Identifier: GPL-2.0-or-later
/* Fault-injecting pf_file backend (see io_fault.h): wraps the posix one. */
#include "io_fault.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct fault_file {
	struct pf_file base;
	struct pf_file *real;
	struct fault_plan *plan;
};

/* A submitted request whose completion reports the fault. */
struct fault_req {
	pf_aio_done_fn done;
	void *arg;
	int err;
};

/* Count an operation of @kind (and a write as FAULT_WRITE too) once the
 * plan is armed (nth set); true if it is the one to fail. */
static bool fire(struct fault_plan *p, enum fault_kind kind)
{
	bool now;

	if (!p->nth)
		return false;
	now = atomic_fetch_add(&p->seen[kind], 1) + 1 == p->nth &&
		   kind == p->kind;

	if (kind != FAULT_DATASYNC && !now)
		now = atomic_fetch_add(&p->seen[FAULT_WRITE], 1) + 1 == p->nth &&
		      p->kind == FAULT_WRITE;
	if (now)
		atomic_store(&p->fired, 1);
	return now;
}

static enum fault_kind write_kind(const struct fault_file *ff, uint64_t off)
{
	return off < ff->plan->meta_bytes ? FAULT_META_WRITE : FAULT_DATA_WRITE;
}

/* A write past the end of the file while there is "no space". */
static bool no_space_for(struct fault_file *ff, uint64_t off, uint64_t len)
{
	struct stat st;

	if (!atomic_load(&ff->plan->nospace) || fstat(ff->base.fd, &st) ||
	    off + len <= (uint64_t)st.st_size)
		return false;
	atomic_fetch_add(&ff->plan->nospace_hits, 1);
	return true;
}

static int f_pread(struct pf_file *f, void *buf, size_t len, uint64_t off)
{
	struct fault_file *ff = (struct fault_file *)f;

	return ff->real->ops->pread(ff->real, buf, len, off);
}

static int f_pwrite(struct pf_file *f, const void *buf, size_t len,
		    uint64_t off)
{
	struct fault_file *ff = (struct fault_file *)f;

	if (fire(ff->plan, write_kind(ff, off)))
		return ff->plan->err;
	if (no_space_for(ff, off, len))
		return -ENOSPC;
	return ff->real->ops->pwrite(ff->real, buf, len, off);
}

static void fault_done(void *arg, ssize_t res)
{
	struct fault_req *q = arg;

	q->done(q->arg, q->err ? q->err : res);
	free(q);
}

static void f_submit(struct pf_file *f, struct pf_aio_req *r, bool write,
		     void *buf, size_t len, uint64_t off, pf_aio_done_fn done,
		     void *arg)
{
	struct fault_file *ff = (struct fault_file *)f;
	struct fault_req *q;
	int err = 0;

	if (write && fire(ff->plan, write_kind(ff, off)))
		err = ff->plan->err;
	else if (write && no_space_for(ff, off, len))
		err = -ENOSPC;
	if (!err) {
		ff->real->ops->submit(ff->real, r, write, buf, len, off, done,
				      arg);
		return;
	}
	q = malloc(sizeof(*q));
	if (!q) {
		done(arg, -ENOMEM);
		return;
	}
	*q = (struct fault_req){ done, arg, err };
	/* carried out, and reported failed where a device error is */
	ff->real->ops->submit(ff->real, r, write, buf, len, off, fault_done, q);
}

static int f_datasync(struct pf_file *f)
{
	struct fault_file *ff = (struct fault_file *)f;

	if (fire(ff->plan, FAULT_DATASYNC))
		return ff->plan->err;
	return ff->real->ops->datasync(ff->real);
}

static int f_punch(struct pf_file *f, uint64_t off, uint64_t len)
{
	struct fault_file *ff = (struct fault_file *)f;

	return ff->real->ops->punch(ff->real, off, len);
}

static int f_truncate(struct pf_file *f, uint64_t size)
{
	struct fault_file *ff = (struct fault_file *)f;

	return ff->real->ops->truncate(ff->real, size);
}

static int f_allocate(struct pf_file *f, uint64_t off, uint64_t len)
{
	struct fault_file *ff = (struct fault_file *)f;

	if (atomic_load(&ff->plan->nospace) && off + len > ff->plan->meta_bytes) {
		atomic_fetch_add(&ff->plan->nospace_hits, 1);
		return -ENOSPC;
	}
	return ff->real->ops->allocate(ff->real, off, len);
}

static void f_close(struct pf_file *f)
{
	struct fault_file *ff = (struct fault_file *)f;

	ff->real->ops->close(ff->real);
	free(ff);
}

static const struct pf_file_ops fault_ops = {
	.pread = f_pread,
	.pwrite = f_pwrite,
	.submit = f_submit,
	.datasync = f_datasync,
	.punch = f_punch,
	.truncate = f_truncate,
	.allocate = f_allocate,
	.close = f_close,
};

static int fault_wrap(void *ctx, int fd, const char *name, bool writable,
		      struct pf_aio *aio, struct pf_file **out)
{
	struct fault_plan *p = ctx;
	struct fault_file *ff;
	int ret;

	/* lower deltas are only read; a named plan spares the others */
	if (!writable || (p->name[0] && strcmp(name, p->name)))
		return pf_file_posix(fd, aio, out);
	ff = calloc(1, sizeof(*ff));
	if (!ff) {
		close(fd);
		return -ENOMEM;
	}
	ret = pf_file_posix(fd, aio, &ff->real);
	if (ret) {
		free(ff);
		return ret;
	}
	ff->base.ops = &fault_ops;
	ff->base.fd = fd;
	ff->base.aio = aio;
	ff->plan = p;
	*out = &ff->base;
	return 0;
}

void fault_plan_init(struct fault_plan *p, enum fault_kind kind, unsigned nth,
		     int err, uint64_t meta_bytes)
{
	memset(p, 0, sizeof(*p));
	p->kind = kind;
	p->nth = nth;
	p->err = err;
	p->meta_bytes = meta_bytes;
	p->factory.wrap = fault_wrap;
	p->factory.ctx = p;
}
