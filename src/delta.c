// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * One delta file on disk (see delta.h).
 *
 * Opening reads the 64-byte header, validates it with format.c, checks
 * that the file is long enough to hold the header and BAT it declares
 * (before allocating anything sized by the header, so a hostile header
 * cannot make us allocate more than the file holds), then loads the BAT.
 *
 * Crash safety: pf_delta_create() makes the new file durable, and its
 * directory entry too, before returning (W6).
 */
#include "delta.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

int pf_lock(int fd, bool exclusive)
{
	if (flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) < 0)
		return errno == EWOULDBLOCK ? -EBUSY : -errno;
	return 0;
}

void pf_delta_close(struct pf_delta *d)
{
	if (!d)
		return;
	if (d->fd >= 0)
		close(d->fd);
	free(d->meta);
	free(d->name);
	free(d);
}

int pf_delta_open(int dirfd, const char *name, int flags,
		  struct pf_delta **out, struct pf_why *why)
{
	uint8_t raw[PF_HEADER_SIZE];
	struct pf_delta *d;
	struct stat st;
	uint64_t bat_end, meta_len;
	int ret;

	*out = NULL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->fd = -1;
	d->writable = flags & PF_DELTA_WRITE;
	d->name = strdup(name);
	if (!d->name) {
		ret = -ENOMEM;
		goto err;
	}
	d->fd = openat(dirfd, name,
		       (d->writable ? O_RDWR : O_RDONLY) | O_CLOEXEC |
			       O_NOFOLLOW);
	if (d->fd < 0) {
		ret = -errno;
		if (ret == -ELOOP)
			ret = pf_why_set(why, -EINVAL,
					 "is a symbolic link (refused)");
		else
			pf_why_fmt(why, "cannot open: %s", strerror(-ret));
		goto err;
	}
	if (fstat(d->fd, &st) < 0) {
		ret = -errno;
		pf_why_fmt(why, "cannot stat: %s", strerror(-ret));
		goto err;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = pf_why_set(why, -EINVAL, "is not a regular file");
		goto err;
	}
	d->file_bytes = (uint64_t)st.st_size;
	if (d->file_bytes < PF_HEADER_SIZE) {
		ret = pf_why_set(why, -EINVAL,
				 "file of %" PRIu64
				 " bytes is shorter than the 64-byte header",
				 d->file_bytes);
		goto err;
	}
	ret = pf_pread_full(d->fd, raw, sizeof(raw), 0);
	if (ret < 0) {
		pf_why_fmt(why, "cannot read header: %s", strerror(-ret));
		goto err;
	}
	ret = pf_header_decode(raw, &d->hdr, why);
	if (ret < 0)
		goto err;

	bat_end = pf_idx_entry_off(d->hdr.bat_entries);
	if (d->file_bytes < bat_end) {
		ret = pf_why_set(why, -EINVAL,
				 "file of %" PRIu64
				 " bytes is shorter than its header and BAT (%" PRIu64
				 " bytes)",
				 d->file_bytes, bat_end);
		goto err;
	}
	d->file_clusters = d->file_bytes >> d->hdr.cluster_shift;
	/* Whole, page-aligned BAT pages: the writer adopts this buffer as
	 * the one it writes pages from (no second copy); the tail of the
	 * last page is zero, like the padding on disk. */
	meta_len = pf_div_round_up(bat_end, PF_BAT_PAGE_SIZE) * PF_BAT_PAGE_SIZE;
	if (posix_memalign((void **)&d->meta, PF_BAT_PAGE_SIZE, meta_len)) {
		d->meta = NULL;
		ret = -ENOMEM;
		goto err;
	}
	memset(d->meta + bat_end, 0, meta_len - bat_end);
	ret = pf_pread_full(d->fd, d->meta, bat_end, 0);
	if (ret < 0) {
		pf_why_fmt(why, "cannot read BAT: %s", strerror(-ret));
		goto err;
	}
	*out = d;
	return 0;
err:
	pf_delta_close(d);
	return ret;
}

uint64_t pf_delta_mapped_count(const struct pf_delta *d)
{
	uint64_t n = 0;
	uint32_t i;

	for (i = 0; i < d->hdr.bat_entries; i++)
		n += pf_delta_bat_raw(d, i) != 0;
	return n;
}

int pf_delta_create(int dirfd, const char *name, const struct pf_header *h,
		    struct pf_why *why)
{
	uint8_t raw[PF_HEADER_SIZE];
	int fd, ret;

	fd = openat(dirfd, name,
		    O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		ret = -errno;
		return pf_why_set(why, ret, "cannot create: %s",
				  strerror(-ret));
	}
	pf_header_encode(h, raw);
	ret = pf_pwrite_full(fd, raw, sizeof(raw), 0);
	if (ret < 0) {
		pf_why_fmt(why, "cannot write header: %s", strerror(-ret));
		goto err_unlink;
	}
	/* The BAT and its padding read as zeros: every entry unmapped. */
	if (ftruncate(fd, (off_t)pf_meta_bytes(h)) < 0) {
		ret = -errno;
		pf_why_fmt(why, "cannot size: %s", strerror(-ret));
		goto err_unlink;
	}
	/* W6: the delta is durable before anything names it. */
	if (fsync(fd) < 0) {
		ret = -errno;
		pf_why_fmt(why, "cannot sync: %s", strerror(-ret));
		goto err_unlink;
	}
	ret = pf_fsync_dir(dirfd);
	if (ret < 0) {
		pf_why_fmt(why, "cannot sync directory: %s",
			   strerror(-ret));
		goto err_unlink;
	}
	if (close(fd) < 0) {
		fd = -1;
		ret = -errno;
		pf_why_fmt(why, "cannot close: %s", strerror(-ret));
		goto err_unlink;
	}
	return 0;
err_unlink:
	if (fd >= 0)
		close(fd);
	unlinkat(dirfd, name, 0);
	return ret;
}
