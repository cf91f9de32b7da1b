// SPDX-License-Identifier: GPL-2.0-or-later
/* The plain file-descriptor backend of file.h. */
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

static int posix_pread(struct pf_file *f, void *buf, size_t len, uint64_t off)
{
	return pf_pread_full(f->fd, buf, len, off);
}

static int posix_pwrite(struct pf_file *f, const void *buf, size_t len,
			uint64_t off)
{
	return pf_pwrite_full(f->fd, buf, len, off);
}

static void posix_submit(struct pf_file *f, struct pf_aio_req *r, bool write,
			 void *buf, size_t len, uint64_t off,
			 pf_aio_done_fn done, void *arg)
{
	pf_aio_submit(f->aio, r, f->fd, write, buf, len, off, done, arg);
}

static int posix_datasync(struct pf_file *f)
{
	return fdatasync(f->fd) < 0 ? -errno : 0;
}

static int posix_punch(struct pf_file *f, uint64_t off, uint64_t len)
{
	if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)off, (off_t)len) < 0)
		return -errno;
	return 0;
}

static int posix_truncate(struct pf_file *f, uint64_t size)
{
	return ftruncate(f->fd, (off_t)size) < 0 ? -errno : 0;
}

static int posix_allocate(struct pf_file *f, uint64_t off, uint64_t len)
{
	if (fallocate(f->fd, 0, (off_t)off, (off_t)len) < 0)
		return errno == EOPNOTSUPP ? 0 : -errno;	/* space on write */
	return 0;
}

static void posix_close(struct pf_file *f)
{
	close(f->fd);
	free(f);
}

static const struct pf_file_ops posix_ops = {
	.pread = posix_pread,
	.pwrite = posix_pwrite,
	.submit = posix_submit,
	.datasync = posix_datasync,
	.punch = posix_punch,
	.truncate = posix_truncate,
	.allocate = posix_allocate,
	.close = posix_close,
};

int pf_file_posix(int fd, struct pf_aio *aio, struct pf_file **out)
{
	struct pf_file *f = malloc(sizeof(*f));

	if (!f) {
		close(fd);
		return -ENOMEM;
	}
	f->ops = &posix_ops;
	f->fd = fd;
	f->aio = aio;
	*out = f;
	return 0;
}
