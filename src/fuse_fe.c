// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * FUSE low-level operations (see fuse_fe.h).
 *
 * Inode 1 is the mount's root directory, inode 2 the disk, inode 3 the
 * directory "snapshots" holding one read-only file per snapshot, named by
 * its GUID without braces (found by lookup under any form of it that
 * pf_guid_canon() accepts; inodes from 16 up, handed out as views are
 * first seen and never reused).  A view's open handles are counted in
 * the stack (open to release), so that a delete refuses a snapshot whose
 * view is in use, say by a backup through losetup -r.  A view reads the disk as it was when the
 * snapshot was taken; once the snapshot is deleted it is gone from the
 * directory and reads of open handles fail with ESTALE.  Files are
 * opened with direct_io, so every read and write reaches us and no page
 * cache sits between the client and the deltas.  Reads and writes (one
 * core, read_io and write_io, for libfuse's requests and for
 * the io_uring transport's, fuse_uring.h) are
 * answered from the stack's completion callback (often on the aio
 * completion thread); fsync, fallocate and O_SYNC/O_DSYNC writes block
 * the worker thread that received them.  Errors become fuse_reply_err()
 * here and nowhere else.
 *
 * The namespace is fixed: nothing can be created, removed, renamed or
 * linked, in the root or in "snapshots", and every such request fails
 * with EROFS, as on a read-only file system, rather than with ENOSYS
 * from libfuse.  Extended attributes are left unimplemented: the kernel
 * turns that ENOSYS into EOPNOTSUPP once and stops asking.
 */
#include "fuse_fe.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "descriptor.h"

#define DISK_INO	2
#define SNAPDIR_INO	3
#define VIEW_INO0	16
#define ATTR_TIMEOUT	1.0

struct pf_fe_view {
	fuse_ino_t ino;
	char guid[PF_GUID_LEN + 1];
};

static struct pf_fe *fe_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

void pf_fe_init(struct pf_fe *fe)
{
	pthread_mutex_init(&fe->views_lock, NULL);
	fe->views = NULL;
	fe->n_views = fe->cap_views = 0;
}

void pf_fe_destroy(struct pf_fe *fe)
{
	free(fe->views);
	pthread_mutex_destroy(&fe->views_lock);
}

/* Snapshot views */

/* The inode of the view of @guid, given out the first time; 0 when out
 * of memory. */
static fuse_ino_t view_ino(struct pf_fe *fe, const char *guid)
{
	fuse_ino_t ino = 0;
	size_t i;

	pthread_mutex_lock(&fe->views_lock);
	for (i = 0; i < fe->n_views; i++)
		if (!strcmp(fe->views[i].guid, guid)) {
			ino = fe->views[i].ino;
			goto out;
		}
	if (fe->n_views == fe->cap_views) {
		size_t cap = fe->cap_views ? fe->cap_views * 2 : 16;
		struct pf_fe_view *v = realloc(fe->views, cap * sizeof(*v));

		if (!v)
			goto out;
		fe->views = v;
		fe->cap_views = cap;
	}
	ino = VIEW_INO0 + fe->n_views;
	fe->views[fe->n_views].ino = ino;
	snprintf(fe->views[fe->n_views].guid, sizeof(fe->views[0].guid), "%s",
		 guid);
	fe->n_views++;
out:
	pthread_mutex_unlock(&fe->views_lock);
	return ino;
}

/* The GUID of view inode @ino into @guid; false if it is not one. */
static bool view_guid(struct pf_fe *fe, fuse_ino_t ino, char *guid)
{
	bool found = false;

	pthread_mutex_lock(&fe->views_lock);
	if (ino >= VIEW_INO0 && ino - VIEW_INO0 < fe->n_views) {
		memcpy(guid, fe->views[ino - VIEW_INO0].guid, PF_GUID_LEN + 1);
		found = true;
	}
	pthread_mutex_unlock(&fe->views_lock);
	return found;
}

/* The snapshots that have a view now (every level but the top and those
 * being deleted), base first.  Returns the count, -errno. */
static ssize_t views_now(struct pf_fe *fe, struct pf_stack_level **out)
{
	struct pf_stack_level *lv = NULL;
	size_t got, i, k;

	if (pf_stack_levels_all(fe->stack, &lv, &got))
		return -ENOMEM;
	for (i = k = 0; i < got; i++)
		if (!lv[i].top && !lv[i].hidden)
			lv[k++] = lv[i];
	*out = lv;
	return (ssize_t)k;
}

/* Name of a view: the GUID without its braces. */
static void view_name(const char *guid, char *name)
{
	memcpy(name, guid + 1, PF_GUID_LEN - 2);
	name[PF_GUID_LEN - 2] = 0;
}

/* The level of snapshot @guid if it has a view now (@lv may be NULL). */
static int view_level(struct pf_fe *fe, const char *guid,
		      struct pf_stack_level *out)
{
	struct pf_stack_level *lv;
	ssize_t n, i;

	n = views_now(fe, &lv);
	if (n < 0)
		return (int)n;
	for (i = 0; i < n; i++)
		if (!strcmp(lv[i].guid, guid)) {
			if (out)
				*out = lv[i];
			free(lv);
			return 0;
		}
	free(lv);
	return -ENOENT;
}

/* Attributes of @ino; -ENOENT if it does not exist (any more). */
static int fill_attr(struct pf_fe *fe, fuse_ino_t ino, struct stat *st)
{
	struct pf_stack_stat ss;
	struct pf_stack_level lv;
	char guid[PF_GUID_LEN + 1];
	int ret;

	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_blksize = 4096;
	st->st_atime = st->st_mtime = st->st_ctime = fe->mounted;
	if (ino == FUSE_ROOT_ID || ino == SNAPDIR_INO) {
		st->st_mode = S_IFDIR | (ino == FUSE_ROOT_ID ? 0755 : 0555);
		st->st_nlink = ino == FUSE_ROOT_ID ? 3 : 2;
		return 0;
	}
	pf_stack_stat(fe->stack, &ss);
	st->st_nlink = 1;
	st->st_size = (off_t)ss.size_bytes;
	if (ino == DISK_INO) {
		st->st_mode = S_IFREG | (fe->read_only ? 0400 : 0600);
		st->st_blocks =
			(blkcnt_t)(ss.top_clusters * (ss.cluster_bytes / 512));
		return 0;
	}
	if (!view_guid(fe, ino, guid))
		return -ENOENT;
	ret = view_level(fe, guid, &lv);
	if (ret)
		return ret;
	/* the disk's owner only, as the disk (-o default_permissions) */
	st->st_mode = S_IFREG | 0400;
	st->st_blocks = (blkcnt_t)(lv.mapped * (ss.cluster_bytes / 512));
	return 0;
}

static bool is_view(fuse_ino_t ino)
{
	return ino >= VIEW_INO0;
}

void pf_fe_conn_setup(struct fuse_conn_info *conn)
{
	/* several direct I/O requests of one file in flight at once */
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	/* no page cache, no splice: data goes straight to the deltas */
	conn->want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_READ |
			FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE |
			FUSE_CAP_AUTO_INVAL_DATA);
	conn->max_write = PF_FE_MAX_IO;
	conn->max_read = PF_FE_MAX_IO;
	conn->max_readahead = 0;
	/* Asynchronous direct I/O travels as background requests, of which
	 * the kernel lets only max_background (12 by default) be in flight:
	 * without this a queue depth of 32 reaches the daemon as 12. */
	conn->max_background = PF_FE_MAX_BACKGROUND;
	conn->congestion_threshold = PF_FE_MAX_BACKGROUND * 3 / 4;
}

static void fe_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	pf_fe_conn_setup(conn);
}

static void fe_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct pf_fe *fe = fe_of(req);
	struct fuse_entry_param e;
	char guid[PF_GUID_LEN + 1];
	int ret;

	memset(&e, 0, sizeof(e));
	if (parent == FUSE_ROOT_ID && !strcmp(name, fe->name)) {
		e.ino = DISK_INO;
	} else if (parent == FUSE_ROOT_ID && !strcmp(name, PF_FE_SNAP_DIR)) {
		e.ino = SNAPDIR_INO;
	} else if (parent == SNAPDIR_INO && !pf_guid_canon(name, guid)) {
		/* the listed name, and the GUID as users copy it from
		 * elsewhere: any case, with braces or without */
		ret = view_level(fe, guid, NULL);
		if (ret) {
			fuse_reply_err(req, -ret);
			return;
		}
		e.ino = view_ino(fe, guid);
		if (!e.ino) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
	} else {
		fuse_reply_err(req, ENOENT);
		return;
	}
	/* views come and go with snapshots: no caching of their entries */
	e.attr_timeout = is_view(e.ino) ? 0 : ATTR_TIMEOUT;
	e.entry_timeout = e.ino == DISK_INO ? ATTR_TIMEOUT : 0;
	ret = fill_attr(fe, e.ino, &e.attr);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_entry(req, &e);
}

static void fe_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct stat st;
	int ret;

	(void)fi;
	ret = fill_attr(fe_of(req), ino, &st);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, is_view(ino) ? 0 : ATTR_TIMEOUT);
}

static void fe_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	struct pf_fe *fe = fe_of(req);
	struct stat st;

	(void)fi;
	if (is_view(ino)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (ino != DISK_INO) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (fill_attr(fe, ino, &st)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	/* The disk has a fixed size (O_TRUNC included) and fixed
	 * ownership; time updates are accepted and forgotten. */
	if ((to_set & FUSE_SET_ATTR_SIZE) && attr->st_size != st.st_size) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID |
		      FUSE_SET_ATTR_GID)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void fe_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct pf_fe *fe = fe_of(req);
	struct stat st;

	if (ino == FUSE_ROOT_ID || ino == SNAPDIR_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (is_view(ino)) {
		char guid[PF_GUID_LEN + 1];
		int ret;

		if (fill_attr(fe, ino, &st) || !view_guid(fe, ino, guid)) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		if ((fi->flags & O_ACCMODE) != O_RDONLY ||
		    (fi->flags & O_TRUNC)) {
			fuse_reply_err(req, EROFS);	/* snapshots are read-only */
			return;
		}
		/* in use until released: a delete refuses it (stack.h) */
		ret = pf_stack_view_open(fe->stack, guid);
		if (ret) {
			fuse_reply_err(req, -ret);
			return;
		}
		fi->fh = 1;	/* counted: fe_release uncounts it */
	} else if (fe->read_only && (fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	fi->direct_io = 1;
	fi->keep_cache = 0;
	fuse_reply_open(req, fi);
}

/* Reads and writes: one core for both transports (libfuse's requests
 * here, io_uring's straight from its ring buffers, fuse_uring.c) */

struct fe_io {
	pf_ring_done_fn done;
	void *arg;
	size_t len;
	bool owned;		/* allocated by fe_io_new(), freed at the end */
};

/* Answer @io with @res (bytes or -errno). */
static void fe_io_finish(struct fe_io *io, ssize_t res)
{
	pf_ring_done_fn done = io->done;
	void *arg = io->arg;

	if (io->owned)
		free(io);
	done(arg, res);
}

static void fe_io_done(void *p, int err)
{
	struct fe_io *io = p;

	fe_io_finish(io, err ? err : (ssize_t)io->len);
}

/* For the io_uring transport, which has no room of its own for it (a
 * libfuse request carries its fe_io in its struct fe_req). */
static struct fe_io *fe_io_new(pf_ring_done_fn done, void *arg)
{
	struct fe_io *io = malloc(sizeof(*io));

	if (!io) {
		done(arg, -ENOMEM);
		return NULL;
	}
	*io = (struct fe_io){ done, arg, 0, true };
	return io;
}

/* Read up to @size bytes at @off of @ino into @buf (4096-aligned). */
static void read_io(struct pf_fe *fe, uint64_t ino, void *buf, size_t size,
		    uint64_t off, struct fe_io *io)
{
	uint64_t disk = pf_stack_size(fe->stack);
	char guid[PF_GUID_LEN + 1];

	if (is_view(ino) && !view_guid(fe, ino, guid)) {
		fe_io_finish(io, -ESTALE);
		return;
	}
	if (ino != DISK_INO && !is_view(ino)) {
		fe_io_finish(io, -EISDIR);
		return;
	}
	if (off >= disk || !size) {
		fe_io_finish(io, 0);	/* end of file */
		return;
	}
	if (size > disk - off)
		size = (size_t)(disk - off);
	io->len = size;
	if (is_view(ino))
		pf_stack_read_view(fe->stack, guid, buf, size, off, fe_io_done,
				   io);
	else
		pf_stack_read(fe->stack, buf, size, off, fe_io_done, io);
}

/* The part of a write of @size bytes at @off of @ino that goes to the
 * disk: its length, 0 for nothing to do, or -errno for a refused one. */
static ssize_t write_extent(struct pf_fe *fe, uint64_t ino, size_t size,
			    uint64_t off)
{
	uint64_t disk = pf_stack_size(fe->stack);

	if (ino != DISK_INO)
		return -EROFS;
	if (!size)
		return 0;
	if (off >= disk)
		return -ENOSPC;
	/* a write that runs past the end stops there, like a block device */
	if (size > disk - off)
		size = (size_t)(disk - off);
	return (ssize_t)size;
}

/* Write @size bytes of @buf (4096-aligned) at @off of @ino. */
static void write_io(struct pf_fe *fe, uint64_t ino, const void *buf,
		     size_t size, uint64_t off, int open_flags,
		     struct fe_io *io)
{
	ssize_t n = write_extent(fe, ino, size, off);
	int ret;

	if (n <= 0) {
		fe_io_finish(io, n);
		return;
	}
	io->len = (size_t)n;
	if (open_flags & (O_SYNC | O_DSYNC)) {
		/* durable before the answer: data, then a commit (W3) */
		ret = pf_stack_pwrite(fe->stack, buf, io->len, off);
		if (!ret)
			ret = pf_stack_flush(fe->stack);
		fe_io_done(io, ret);
		return;
	}
	pf_stack_write(fe->stack, buf, io->len, off, fe_io_done, io);
}

static void fe_read_start(void *ctx, uint64_t ino, void *buf, size_t size,
			  uint64_t off, pf_ring_done_fn done, void *arg)
{
	struct fe_io *io = fe_io_new(done, arg);

	if (io)
		read_io(ctx, ino, buf, size, off, io);
}

static void fe_write_start(void *ctx, uint64_t ino, const void *buf,
			   size_t size, uint64_t off, int open_flags,
			   pf_ring_done_fn done, void *arg)
{
	struct fe_io *io = fe_io_new(done, arg);

	if (io)
		write_io(ctx, ino, buf, size, off, open_flags, io);
}

static bool fe_write_waits(void *ctx, uint64_t ino, const void *buf,
			   size_t size, uint64_t off)
{
	struct pf_fe *fe = ctx;
	ssize_t n = write_extent(fe, ino, size, off);

	/* a refused or empty write is answered at once */
	return n > 0 && pf_stack_write_waits(fe->stack, buf, (size_t)n, off);
}

static void fe_batch(void *ctx, bool begin)
{
	struct pf_fe *fe = ctx;

	pf_stack_batch(fe->stack, begin);
}

void pf_fe_ring_data(struct pf_fe *fe, struct pf_ring_data *d)
{
	d->ctx = fe;
	d->read = fe_read_start;
	d->write = fe_write_start;
	d->write_waits = fe_write_waits;
	d->batch = fe_batch;
}

/* A libfuse request, its aligned buffer and its read or write */
struct fe_req {
	fuse_req_t req;
	void *buf;
	struct fe_io io;
};

static struct fe_req *fe_req_new(fuse_req_t req, size_t size,
				 pf_ring_done_fn done)
{
	struct fe_req *r = malloc(sizeof(*r));

	if (!r || posix_memalign(&r->buf, 4096, size ? size : 4096)) {
		free(r);
		fuse_reply_err(req, ENOMEM);
		return NULL;
	}
	r->req = req;
	r->io = (struct fe_io){ done, r, 0, false };
	return r;
}

static void fe_req_free(struct fe_req *r)
{
	free(r->buf);
	free(r);
}

static void read_done(void *arg, ssize_t res)
{
	struct fe_req *r = arg;

	if (res < 0)
		fuse_reply_err(r->req, (int)-res);
	else
		fuse_reply_buf(r->req, r->buf, (size_t)res);
	fe_req_free(r);
}

static void fe_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fe_req *r;

	(void)fi;
	if (off < 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	r = fe_req_new(req, size, read_done);
	if (r)
		read_io(fe_of(req), ino, r->buf, size, (uint64_t)off, &r->io);
}

static void write_done(void *arg, ssize_t res)
{
	struct fe_req *r = arg;

	if (res < 0)
		fuse_reply_err(r->req, (int)-res);
	else
		fuse_reply_write(r->req, (size_t)res);
	fe_req_free(r);
}

static void fe_write_buf(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_bufvec *in, off_t off,
			 struct fuse_file_info *fi)
{
	size_t size = fuse_buf_size(in);
	struct fuse_bufvec dst = FUSE_BUFVEC_INIT(size);
	ssize_t copied;
	struct fe_req *r;

	if (off < 0) {
		fuse_reply_err(req, ENOSPC);
		return;
	}
	r = fe_req_new(req, size, write_done);
	if (!r)
		return;
	/* our own aligned copy: the request buffer is reused once we
	 * return, and O_DIRECT wants alignment */
	dst.buf[0].mem = r->buf;
	copied = fuse_buf_copy(&dst, in, 0);
	if (copied < 0 || (size_t)copied != size) {
		fuse_reply_err(req, copied < 0 ? (int)-copied : EIO);
		fe_req_free(r);
		return;
	}
	write_io(fe_of(req), ino, r->buf, size, (uint64_t)off, fi->flags,
		 &r->io);
}

static void fe_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		     struct fuse_file_info *fi)
{
	(void)datasync;
	(void)fi;
	if (ino != DISK_INO) {
		fuse_reply_err(req, 0);	/* nothing to write back */
		return;
	}
	fuse_reply_err(req, -pf_stack_flush(fe_of(req)->stack));
}

static void fe_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct pf_fe *fe = fe_of(req);
	char guid[PF_GUID_LEN + 1];

	if (is_view(ino) && fi->fh == 1 && view_guid(fe, ino, guid))
		pf_stack_view_close(fe->stack, guid);
	fuse_reply_err(req, 0);
}

static void fe_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);	/* close(2) is not fsync(2) */
}

static void fe_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
			 off_t len, struct fuse_file_info *fi)
{
	struct pf_fe *fe = fe_of(req);

	(void)fi;
	if (ino != DISK_INO) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (off < 0 || len <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	/* PUNCH_HOLE (with KEEP_SIZE, as the kernel requires) and
	 * ZERO_RANGE make the range read as zeros; the size never changes.
	 * Plain preallocation cannot be promised, so it is refused. */
	if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) ||
	    mode == FALLOC_FL_ZERO_RANGE ||
	    mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) {
		if ((uint64_t)off >= pf_stack_size(fe->stack)) {
			fuse_reply_err(req, 0);
			return;
		}
		fuse_reply_err(req, -pf_stack_discard(fe->stack, (uint64_t)off,
						      (uint64_t)len));
		return;
	}
	fuse_reply_err(req, EOPNOTSUPP);
}

/* The namespace: fixed (see the top of the file) */

static void fe_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)fi;
	fuse_reply_err(req, EROFS);
}

static void fe_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode, dev_t rdev)
{
	(void)parent;
	(void)name;
	(void)mode;
	(void)rdev;
	fuse_reply_err(req, EROFS);
}

static void fe_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode)
{
	(void)parent;
	(void)name;
	(void)mode;
	fuse_reply_err(req, EROFS);
}

/* unlink and rmdir */
static void fe_remove(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent;
	(void)name;
	fuse_reply_err(req, EROFS);
}

static void fe_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		       const char *name)
{
	(void)link;
	(void)parent;
	(void)name;
	fuse_reply_err(req, EROFS);
}

static void fe_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		    const char *newname)
{
	(void)ino;
	(void)newparent;
	(void)newname;
	fuse_reply_err(req, EROFS);
}

static void fe_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	(void)parent;
	(void)name;
	(void)newparent;
	(void)newname;
	(void)flags;
	fuse_reply_err(req, EROFS);
}

/* The directory */

static void fe_opendir(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	if (ino != FUSE_ROOT_ID && ino != SNAPDIR_INO) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	fuse_reply_open(req, fi);
}

/* Add entry @i (@name, @ino) at offset i + 1; false once @buf is full. */
static bool add_entry(fuse_req_t req, char *buf, size_t size, size_t *pos,
		      const char *name, fuse_ino_t ino, bool dir, off_t i)
{
	struct stat st;
	size_t n;

	memset(&st, 0, sizeof(st));
	st.st_ino = ino;
	st.st_mode = dir ? S_IFDIR : S_IFREG;
	n = fuse_add_direntry(req, buf + *pos, size - *pos, name, &st, i + 1);
	if (n > size - *pos)
		return false;
	*pos += n;
	return true;
}

static void fe_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct pf_fe *fe = fe_of(req);
	const char *names[] = { ".", "..", fe->name, PF_FE_SNAP_DIR };
	const fuse_ino_t inos[] = { FUSE_ROOT_ID, FUSE_ROOT_ID, DISK_INO,
				    SNAPDIR_INO };
	struct pf_stack_level *lv;
	char buf[4096], name[PF_GUID_LEN];
	size_t pos = 0;
	ssize_t n;
	off_t i;

	(void)fi;
	if (ino != FUSE_ROOT_ID && ino != SNAPDIR_INO) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (size > sizeof(buf))
		size = sizeof(buf);
	if (ino == FUSE_ROOT_ID) {
		for (i = off; i < 4; i++)
			if (!add_entry(req, buf, size, &pos, names[i], inos[i],
				       i != 2, i))
				break;
		fuse_reply_buf(req, buf, pos);
		return;
	}
	n = views_now(fe, &lv);
	if (n < 0) {
		fuse_reply_err(req, (int)-n);
		return;
	}
	for (i = off; i < n + 2; i++) {
		fuse_ino_t vino = i < 2 ? (i ? FUSE_ROOT_ID : SNAPDIR_INO) : 0;

		if (i >= 2) {
			view_name(lv[i - 2].guid, name);
			vino = view_ino(fe, lv[i - 2].guid);
		}
		if (!vino ||
		    !add_entry(req, buf, size, &pos, i < 2 ? names[i] : name,
			       vino, i < 2, i))
			break;
	}
	free(lv);
	fuse_reply_buf(req, buf, pos);
}

/* SEEK_DATA and SEEK_HOLE (the kernel answers the others itself), so
 * that readers of the disk or a view (cp --sparse, ploopctl checksum)
 * skip what no delta holds. */
static void fe_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	struct pf_fe *fe = fe_of(req);
	char guid[PF_GUID_LEN + 1];
	uint64_t at;
	int ret;

	(void)fi;
	if ((whence != SEEK_DATA && whence != SEEK_HOLE) || off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (ino != DISK_INO && !view_guid(fe, ino, guid)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	ret = pf_stack_seek(fe->stack, ino == DISK_INO ? NULL : guid,
			    (uint64_t)off, whence == SEEK_DATA, &at);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_lseek(req, (off_t)at);
}

static void fe_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct pf_stack_stat ss;
	struct statvfs sv;

	(void)ino;
	pf_stack_stat(fe_of(req)->stack, &ss);
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = ss.cluster_bytes;
	sv.f_frsize = ss.cluster_bytes;
	sv.f_blocks = pf_div_round_up(ss.size_bytes, ss.cluster_bytes);
	sv.f_bfree = sv.f_blocks > ss.top_clusters ?
			     sv.f_blocks - ss.top_clusters :
			     0;
	sv.f_bavail = sv.f_bfree;
	sv.f_files = 1;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops ops = {
	.init = fe_init,
	.lookup = fe_lookup,
	.getattr = fe_getattr,
	.setattr = fe_setattr,
	.open = fe_open,
	.read = fe_read,
	.write_buf = fe_write_buf,
	.flush = fe_flush,
	.release = fe_release,
	.fsync = fe_fsync,
	.fallocate = fe_fallocate,
	.opendir = fe_opendir,
	.readdir = fe_readdir,
	.statfs = fe_statfs,
	.lseek = fe_lseek,
	.create = fe_create,
	.mknod = fe_mknod,
	.mkdir = fe_mkdir,
	.unlink = fe_remove,
	.rmdir = fe_remove,
	.symlink = fe_symlink,
	.link = fe_link,
	.rename = fe_rename,
};

const struct fuse_lowlevel_ops *pf_fe_ops(void)
{
	return &ops;
}
