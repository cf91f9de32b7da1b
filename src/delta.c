// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * One delta file on disk, and the durable steps on it (see delta.h).
 *
 * Opening reads the 64-byte header, validates it with format.c, checks
 * that the file is long enough to hold the header and BAT it declares
 * (before allocating anything sized by the header, so a hostile header
 * cannot make us allocate more than the file holds), then loads the BAT.
 * The header and BAT are read buffered; a user that wants O_DIRECT turns
 * it on afterwards (pf_delta_direct), on the same descriptor.
 *
 * Crash safety, step by step:
 *   - pf_delta_create() makes the new file durable, and its directory
 *     entry too, before returning (W6);
 *   - pf_delta_write_header() writes page 0 and syncs: the header and
 *     the entries of page 0 change together, never torn apart by a
 *     crash below 4 KiB (dm-ploop writes BAT pages the same way);
 *   - pf_delta_write_bat() writes pages whose data the caller made
 *     durable (W1) and then syncs (W3); it never syncs data itself, so
 *     the order of the two syncs stays visible in the caller;
 *   - pf_delta_recover() and pf_delta_trim() only drop what the
 *     committed BAT does not reach (W8), unsynced: a lost trim or punch
 *     leaves a leak, never a hole under data.  On a delta opened
 *     read-only, pf_delta_recover() computes the same state and writes
 *     nothing (a read-only mount, ploopfs -o ro).
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

static void step(const struct pf_delta_hook *hook, enum pf_delta_step st)
{
	if (hook && hook->step)
		hook->step(hook->ctx, st);
}

void pf_delta_close(struct pf_delta *d)
{
	if (!d)
		return;
	if (d->f)
		d->f->ops->close(d->f);
	free(d->meta);
	free(d->name);
	free(d);
}

/*
 * Open @name for the delta @d: no symbolic link, nothing but a regular
 * file (opened non-blocking, so a FIFO cannot hang us, then made
 * blocking again), wrapped by the factory.  @same: the descriptor must
 * name the same file as this one.  Returns 0 or -errno with @why set.
 */
static int open_file(struct pf_delta *d, int dirfd, const char *name,
		     bool writable, const struct stat *same,
		     struct pf_file **out, struct pf_why *why)
{
	const struct pf_file_factory *fac = d->io.factory;
	struct stat st;
	int fd, fl, ret;

	*out = NULL;
	/* a directory, socket or device fails the open in its own words
	 * (EISDIR, ENXIO, ...): say what it is first; the fstat below
	 * catches one that was put there since */
	if (!fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) &&
	    !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
		ret = pf_why_set(why, -EINVAL, "is not a regular file");
		goto out;
	}
	fd = openat(dirfd, name,
		    (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW |
			    O_NONBLOCK);
	if (fd < 0) {
		ret = -errno;
		if (ret == -ELOOP)
			ret = pf_why_set(why, -EINVAL,
					 "is a symbolic link (refused)");
		else
			pf_why_fmt(why, "cannot open: %s", strerror(-ret));
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		pf_why_fmt(why, "cannot stat: %s", strerror(-ret));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = pf_why_set(why, -EINVAL, "is not a regular file");
		goto out_close;
	}
	if (same && (st.st_dev != same->st_dev || st.st_ino != same->st_ino)) {
		ret = pf_why_set(why, -ESTALE, "was replaced by another file");
		goto out_close;
	}
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, (fl & ~O_NONBLOCK) |
						 (d->direct ? O_DIRECT : 0)) < 0) {
		ret = -errno;
		pf_why_fmt(why, "cannot set the file flags: %s", strerror(-ret));
		goto out_close;
	}
	/* the wrapper owns the descriptor from here on */
	ret = fac && fac->wrap ? fac->wrap(fac->ctx, fd, name, writable,
					   d->io.aio, out) :
				 pf_file_posix(fd, d->io.aio, out);
	if (ret)
		pf_why_fmt(why, "cannot open: %s", strerror(-ret));
	goto out;
out_close:
	close(fd);
out:
	/* an errno of 0, or a wrapper that gave no file, is no success */
	if (!ret && !*out)
		ret = -EIO;
	return ret;
}

int pf_delta_open(int dirfd, const char *name, int flags,
		  const struct pf_delta_io *io, struct pf_delta **out,
		  struct pf_why *why)
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
	d->writable = flags & PF_DELTA_WRITE;
	d->align = PF_SECTOR_SIZE;
	if (io)
		d->io = *io;
	d->name = strdup(name);
	if (!d->name) {
		ret = -ENOMEM;
		goto err;
	}
	ret = open_file(d, dirfd, name, d->writable, NULL, &d->f, why);
	if (ret)
		goto err;
	if (fstat(d->f->fd, &st) < 0) {
		ret = -errno;
		pf_why_fmt(why, "cannot stat: %s", strerror(-ret));
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
	ret = d->f->ops->pread(d->f, raw, sizeof(raw), 0);
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
	/* Whole, page-aligned BAT pages: the buffer that BAT pages are
	 * written from and that readers share (no second copy); the tail
	 * of the last page is zero, like the padding on disk. */
	meta_len = pf_div_round_up(bat_end, PF_BAT_PAGE_SIZE) * PF_BAT_PAGE_SIZE;
	if (posix_memalign((void **)&d->meta, PF_BAT_PAGE_SIZE, meta_len)) {
		d->meta = NULL;
		ret = -ENOMEM;
		goto err;
	}
	memset(d->meta + bat_end, 0, meta_len - bat_end);
	ret = d->f->ops->pread(d->f, d->meta, bat_end, 0);
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

/* O_DIRECT alignment of @fd: statx's dio alignment, else 4096. */
static size_t dio_align(int fd)
{
	struct statx stx;
	size_t a;

	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
	    (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
		a = stx.stx_dio_offset_align;
		if (stx.stx_dio_mem_align > a)
			a = stx.stx_dio_mem_align;
		return a < PF_SECTOR_SIZE ? PF_SECTOR_SIZE : a;
	}
	return 4096;
}

int pf_delta_direct(struct pf_delta *d, size_t max_align)
{
	int fd = d->f->fd, fl = fcntl(fd, F_GETFL);
	size_t a;

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_DIRECT) < 0)
		return -errno;
	a = dio_align(fd);
	if (a > max_align || a > PF_BAT_PAGE_SIZE) {
		/* BAT pages could not be written one at a time, or the
		 * caller's buffers are not aligned for it */
		(void)fcntl(fd, F_SETFL, fl);
		return -EINVAL;
	}
	d->direct = true;
	d->align = a;
	return 0;
}

int pf_delta_reopen(struct pf_delta *d, int dirfd, bool writable,
		    struct pf_file **old)
{
	struct pf_file *nf = NULL;
	struct stat st;
	int ret;

	*old = NULL;
	if (fstat(d->f->fd, &st) < 0)
		return -errno;
	ret = open_file(d, dirfd, d->name, writable, &st, &nf, NULL);
	if (ret)
		return ret;
	*old = d->f;
	d->f = nf;
	d->writable = writable;
	return 0;
}

uint64_t pf_delta_mapped_count(const struct pf_delta *d)
{
	uint64_t n = 0;
	uint32_t i;

	for (i = 0; i < d->hdr.bat_entries; i++)
		n += pf_delta_bat_raw(d, i) != 0;
	return n;
}

/*
 * One pass over the BAT: the allocation head over the entries that
 * decode to a cluster below @limit, how many map one, and (if @used) a
 * bit per file cluster they map.
 */
static uint64_t scan(const struct pf_delta *d, uint64_t limit, uint64_t *used,
		     uint64_t *mapped)
{
	const struct pf_header *h = &d->hdr;
	uint64_t max = 0;
	uint32_t idx, clu;

	*mapped = 0;
	for (idx = 0; idx < h->bat_entries; idx++) {
		if (pf_bat_decode(h, idx, pf_delta_bat_raw(d, idx), limit, &clu,
				  NULL) || !clu)
			continue;
		(*mapped)++;
		if (used)
			used[clu / 64] |= 1ull << (clu % 64);
		if (clu > max)
			max = clu;
	}
	return max ? max + 1 : h->hdr_clusters;
}

uint64_t pf_delta_alloc_head(const struct pf_delta *d, uint64_t limit)
{
	uint64_t mapped;

	return scan(d, limit, NULL, &mapped);
}

int pf_delta_read(struct pf_delta *d, void *buf, size_t len, uint64_t off)
{
	return d->f->ops->pread(d->f, buf, len, off);
}

int pf_delta_sync(struct pf_delta *d)
{
	return d->f->ops->datasync(d->f);
}

/* A page-aligned buffer of @len bytes for I/O on @d. */
static void *io_buf(const struct pf_delta *d, size_t len)
{
	void *p = NULL;

	if (posix_memalign(&p, d->align > PF_BAT_PAGE_SIZE ? d->align :
							      PF_BAT_PAGE_SIZE,
			   len))
		return NULL;
	return p;
}

int pf_delta_write_header(struct pf_delta *d, const struct pf_header *h,
			  const struct pf_delta_hook *hook)
{
	uint8_t *page = io_buf(d, PF_BAT_PAGE_SIZE);
	int ret;

	if (!page)
		return -ENOMEM;
	pf_header_encode(h, d->meta);
	memcpy(page, d->meta, PF_BAT_PAGE_SIZE);
	ret = d->f->ops->pwrite(d->f, page, PF_BAT_PAGE_SIZE, 0);
	free(page);
	if (ret)
		return ret;
	step(hook, PF_DELTA_HEADER_WRITTEN);
	ret = d->f->ops->datasync(d->f);
	if (!ret)
		pf_delta_set_state(d, h);
	return ret;
}

int pf_delta_write_bat(struct pf_delta *d, const uint32_t *pages,
		       const uint8_t *copies, size_t n,
		       const struct pf_delta_hook *hook)
{
	size_t i;
	int ret;

	for (i = 0; i < n; i++) {
		ret = d->f->ops->pwrite(d->f, copies + i * PF_BAT_PAGE_SIZE,
					PF_BAT_PAGE_SIZE,
					(uint64_t)pages[i] * PF_BAT_PAGE_SIZE);
		if (ret)
			return ret;
		step(hook, PF_DELTA_PAGE_WRITTEN);
	}
	return d->f->ops->datasync(d->f);	/* W3 */
}

int pf_delta_trim(struct pf_delta *d, uint64_t clusters)
{
	uint64_t bytes = clusters << d->hdr.cluster_shift;
	int ret = d->f->ops->truncate(d->f, bytes);

	if (!ret) {
		d->file_bytes = bytes;
		d->file_clusters = clusters;
	}
	return ret;
}

int pf_delta_recover(struct pf_delta *d, struct pf_delta_recovery *out,
		     const struct pf_delta_hook *hook)
{
	const struct pf_header *h = &d->hdr;
	uint64_t n = d->file_clusters, clu, *used;
	int ret = 0;

	memset(out, 0, sizeof(*out));
	used = calloc(pf_div_round_up(n, 64) + 1, sizeof(*used));
	if (!used)
		return -ENOMEM;
	out->head = scan(d, n, used, &out->mapped);
	out->free = malloc((out->head - h->hdr_clusters) * sizeof(*out->free) +
			   1);
	if (!out->free) {
		free(used);
		return -ENOMEM;
	}
	for (clu = h->hdr_clusters; clu < out->head; clu++) {
		if (used[clu / 64] & (1ull << (clu % 64)))
			continue;
		out->leaked++;
		/* read-only: counted, left where it is */
		if (!d->writable)
			continue;
		/* W4: a reused cluster reads as zeros */
		if (d->f->ops->punch(d->f, pf_clu_to_off(h, (uint32_t)clu),
				     h->cluster_bytes))
			continue;	/* stays a leak */
		out->free[out->n_free++] = (uint32_t)clu;
		step(hook, PF_DELTA_LEAK_PUNCHED);
	}
	free(used);
	if (n > out->head || d->file_bytes % h->cluster_bytes) {
		out->leaked += n > out->head ? n - out->head : 0;
		if (d->writable) {
			ret = pf_delta_trim(d, out->head);
			if (!ret)
				step(hook, PF_DELTA_TAIL_TRIMMED);
		}
	}
	if (ret) {
		free(out->free);
		memset(out, 0, sizeof(*out));
	}
	return ret;
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
