// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The FUSE transport's ceiling on this machine, for the benchmark report.
 *
 *   fuse_ceiling MOUNTPOINT SIZE_MB [BACKING_FILE]
 *
 * Serves one file, MOUNTPOINT/disk, through the same libfuse setup as
 * ploopfs (low-level API, direct I/O, clone_fd, PF_FE_THREADS workers,
 * and ploopfs's own connection setup, pf_fe_conn_setup()).  Without
 * BACKING_FILE every read answers zeros and every write is acknowledged
 * at once: what fio measures is the cost of the FUSE round trip alone.
 * With it, each request is a plain pread/pwrite (O_DIRECT) at the same
 * offset of BACKING_FILE and fsync is fdatasync: a pass-through with no
 * mapping, no metadata and no crash safety.  Neither is a product; both
 * bound what any FUSE daemon can reach here, so ploopfs's ratios can be
 * read against them.  Runs in the foreground; unmount (fusermount3 -u) to
 * stop it.
 */
#define FUSE_USE_VERSION 314

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuse_fe.h"

#define DISK_INO	2

static uint64_t disk_size;
static int backing = -1;
static char zeros[PF_FE_MAX_IO] __attribute__((aligned(4096)));

static void c_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	pf_fe_conn_setup(conn);
}

static void fill(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0600;
		st->st_nlink = 1;
		st->st_size = (off_t)disk_size;
	}
}

static void c_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, "disk")) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = DISK_INO;
	e.attr_timeout = e.entry_timeout = 3600;
	fill(DISK_INO, &e.attr);
	fuse_reply_entry(req, &e);
}

static void c_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	fill(ino, &st);
	fuse_reply_attr(req, &st, 3600);
}

static void c_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != DISK_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	fi->direct_io = 1;
	fuse_reply_open(req, fi);
}

static void c_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	void *buf;
	ssize_t n;

	(void)ino;
	(void)fi;
	if (size > PF_FE_MAX_IO)
		size = PF_FE_MAX_IO;
	if (backing < 0) {
		fuse_reply_buf(req, zeros, size);
		return;
	}
	if (posix_memalign(&buf, 4096, size)) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = pread(backing, buf, size, off);
	if (n < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

static void c_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in,
			off_t off, struct fuse_file_info *fi)
{
	size_t size = fuse_buf_size(in);
	struct fuse_bufvec dst = FUSE_BUFVEC_INIT(size);
	void *buf;
	ssize_t n;

	(void)ino;
	(void)fi;
	if (backing < 0) {
		fuse_reply_write(req, size);
		return;
	}
	/* the same aligned copy ploopfs makes */
	if (posix_memalign(&buf, 4096, size)) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	dst.buf[0].mem = buf;
	n = fuse_buf_copy(&dst, in, 0);
	if (n < 0)			/* a negative errno */
		fuse_reply_err(req, (int)-n);
	else if (n != (ssize_t)size)	/* short copy: nothing written */
		fuse_reply_err(req, EIO);
	else if ((n = pwrite(backing, buf, size, off)) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_write(req, (size_t)n);
	free(buf);
}

static void c_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		    struct fuse_file_info *fi)
{
	(void)ino;
	(void)datasync;
	(void)fi;
	fuse_reply_err(req, backing >= 0 && fdatasync(backing) ? errno : 0);
}

static void c_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static const struct fuse_lowlevel_ops ops = {
	.init = c_init,
	.lookup = c_lookup,
	.getattr = c_getattr,
	.open = c_open,
	.read = c_read,
	.write_buf = c_write_buf,
	.fsync = c_fsync,
	.flush = c_flush,
};

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *lc;
	struct fuse_session *se;
	int ret = 1;

	if (argc < 3 || argc > 4) {
		fprintf(stderr,
			"usage: %s MOUNTPOINT SIZE_MB [BACKING_FILE]\n",
			argv[0]);
		return 2;
	}
	disk_size = strtoull(argv[2], NULL, 10) << 20;
	if (argc == 4) {
		backing = open(argv[3], O_RDWR | O_DIRECT);
		if (backing < 0) {
			perror(argv[3]);
			return 1;
		}
	}
	if (fuse_opt_add_arg(&args, argv[0]) ||
	    fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, "fsname=fuse_ceiling,max_read=1048576"))
		return 1;
	se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (!se)
		goto out;
	if (fuse_set_signal_handlers(se) || fuse_session_mount(se, argv[1]))
		goto out_destroy;
	lc = fuse_loop_cfg_create();
	if (lc) {
		fuse_loop_cfg_set_clone_fd(lc, 1);
		fuse_loop_cfg_set_max_threads(lc, PF_FE_THREADS);
		ret = fuse_session_loop_mt(se, lc) ? 1 : 0;
		fuse_loop_cfg_destroy(lc);
	}
	fuse_session_unmount(se);
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
out:
	fuse_opt_free_args(&args);
	if (backing >= 0)
		close(backing);
	return ret;
}
