// SPDX-License-Identifier: GPL-2.0-or-later
/* Fault-injecting pf_file backend (see io_fault.h): wraps the posix one. */
#include "io_fault.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

struct fault_file {
	struct pf_file base;
	struct pf_file *real;
	struct fault_plan *plan;
};

/* true if this operation of @kind is the one to fail */
static bool fire(struct fault_plan *p, enum fault_kind kind)
{
	bool now = __atomic_add_fetch(&p->seen[kind], 1, __ATOMIC_SEQ_CST) ==
			   p->nth &&
		   kind == p->kind;

	if (now)
		__atomic_store_n(&p->fired, 1, __ATOMIC_SEQ_CST);
	return now;
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
	enum fault_kind k = off < ff->plan->meta_bytes ? FAULT_META_WRITE :
							FAULT_DATA_WRITE;

	if (fire(ff->plan, k))
		return ff->plan->err;
	return ff->real->ops->pwrite(ff->real, buf, len, off);
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

static void f_close(struct pf_file *f)
{
	struct fault_file *ff = (struct fault_file *)f;

	ff->real->ops->close(ff->real);
	free(ff);
}

static const struct pf_file_ops fault_ops = {
	.pread = f_pread,
	.pwrite = f_pwrite,
	.datasync = f_datasync,
	.punch = f_punch,
	.truncate = f_truncate,
	.close = f_close,
};

static int fault_wrap(void *ctx, int fd, const char *name, bool writable,
		      struct pf_file **out)
{
	struct fault_file *ff;
	int ret;

	(void)name;
	if (!writable)	/* lower deltas are only read */
		return pf_file_posix(fd, out);
	ff = calloc(1, sizeof(*ff));
	if (!ff) {
		close(fd);
		return -ENOMEM;
	}
	ret = pf_file_posix(fd, &ff->real);
	if (ret) {
		free(ff);
		return ret;
	}
	ff->base.ops = &fault_ops;
	ff->base.fd = fd;
	ff->base.aio_ok = false;
	ff->plan = ctx;
	*out = &ff->base;
	return 0;
}

void fault_plan_init(struct fault_plan *p, enum fault_kind kind, unsigned nth,
		     int err, uint64_t meta_bytes)
{
	*p = (struct fault_plan){ .kind = kind, .nth = nth, .err = err,
				  .meta_bytes = meta_bytes };
	p->factory.wrap = fault_wrap;
	p->factory.ctx = p;
}
