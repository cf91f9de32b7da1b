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
 *
 * With FUSE_CEILING_URING=1 in the environment the same server also
 * attaches ploopfs's FUSE over io_uring transport (fuse_uring.h; the
 * kernel must offer it: fuse module parameter enable_uring=Y).  READ and
 * WRITE then come over the rings and are served in place, in the ring's
 * payload buffer: zeros (memset) and acknowledged writes without
 * BACKING_FILE, one synchronous O_DIRECT pread/pwrite at the same offset
 * with it.  Everything else still goes through the libfuse operations
 * below.  It prints "fuse_ceiling: transport io_uring" (or "... dev")
 * on stderr once the rings are up (or after 10 s without them), and
 * "fuse_ceiling: N requests over io_uring" when it stops.
 */

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuse_fe.h"
#include "fuse_uring.h"
#include "log.h"

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

/* The io_uring transport's data path: in place, in the ring's buffer. */

static void r_read(void *ctx, uint64_t ino, void *buf, size_t size,
		   uint64_t off, pf_ring_done_fn done, void *arg)
{
	ssize_t n;

	(void)ctx;
	(void)ino;
	if (backing < 0) {
		memset(buf, 0, size);
		done(arg, (ssize_t)size);
		return;
	}
	n = pread(backing, buf, size, (off_t)off);
	done(arg, n < 0 ? -errno : n);
}

static void r_write(void *ctx, uint64_t ino, const void *buf, size_t size,
		    uint64_t off, int open_flags, pf_ring_done_fn done,
		    void *arg)
{
	ssize_t n;

	(void)ctx;
	(void)ino;
	(void)open_flags;
	if (backing < 0) {
		done(arg, (ssize_t)size);
		return;
	}
	n = pwrite(backing, buf, size, (off_t)off);
	done(arg, n < 0 ? -errno : n);
}

static const struct pf_ring_data ring_data = {
	.read = r_read,
	.write = r_write,
};

static struct pf_ring *ring;
static atomic_bool watch_stop;

/* Say on stderr which transport serves, once the rings are up or after
 * 10 s without them (run.sh waits for the line). */
static void *watch_transport(void *arg)
{
	unsigned i;

	(void)arg;
	for (i = 0; i < 1000 && !atomic_load(&watch_stop); i++) {
		if (!strcmp(pf_ring_transport(ring), "io_uring"))
			break;
		usleep(10000);
	}
	fprintf(stderr, "fuse_ceiling: transport %s\n",
		pf_ring_transport(ring));
	return NULL;
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
	const char *env = getenv("FUSE_CEILING_URING");
	bool use_ring = env && !strcmp(env, "1");
	pthread_t watcher;
	bool watching = false;
	int ret = 1, err;

	if (argc < 3 || argc > 4) {
		fprintf(stderr,
			"usage: [FUSE_CEILING_URING=1] %s MOUNTPOINT SIZE_MB "
			"[BACKING_FILE]\n",
			argv[0]);
		return 2;
	}
	pf_log_init("fuse_ceiling", true);	/* the transport's messages */
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
	if (use_ring) {
		err = pf_ring_attach(se, &ring_data, 0, &ring);
		if (err) {
			fprintf(stderr, "fuse_ceiling: io_uring transport: %s\n",
				strerror(-err));
			goto out_unmount;
		}
		watching = !pthread_create(&watcher, NULL, watch_transport,
					   NULL);
	}
	lc = fuse_loop_cfg_create();
	if (lc) {
		fuse_loop_cfg_set_clone_fd(lc, 1);
		fuse_loop_cfg_set_max_threads(lc, PF_FE_THREADS);
		ret = fuse_session_loop_mt(se, lc) ? 1 : 0;
		fuse_loop_cfg_destroy(lc);
	}
	if (watching) {
		atomic_store(&watch_stop, true);
		pthread_join(watcher, NULL);
	}
	if (ring) {
		/* every request is answered: the data path is synchronous */
		fprintf(stderr, "fuse_ceiling: %llu requests over io_uring\n",
			pf_ring_served(ring));
		pf_ring_detach(ring);
	}
out_unmount:
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
