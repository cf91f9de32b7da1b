/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FUSE front end: a directory holding one regular file, the live disk of
 * a pf_stack.  fuse_fe.c and ploopfs.c are the only files that include
 * the libfuse headers.
 */
#ifndef PF_FUSE_FE_H
#define PF_FUSE_FE_H

#include <pthread.h>
#include <time.h>

#include "fuse_uring.h"
#include "mounts.h"
#include "stack.h"

#define PF_FE_DEFAULT_NAME	"disk"
#define PF_FE_MAX_IO		(1024u * 1024)	/* max_read / max_write */
#define PF_FE_MAX_BACKGROUND	256u	/* async requests the kernel may queue */
#define PF_FE_THREADS		16u	/* FUSE worker threads by default */
#define PF_FE_SNAP_DIR		PF_MOUNT_SNAP_DIR	/* read-only snapshot views */

struct pf_fe_view;

struct pf_fe {
	struct pf_stack *stack;
	const char *name;	/* file name of the disk in the mount */
	bool read_only;
	time_t mounted;		/* shown as the file times */
	/* inode numbers handed out to snapshot views, never reused */
	pthread_mutex_t views_lock;
	struct pf_fe_view *views;
	size_t n_views, cap_views;
};

/* Set up and tear down @fe around a session (stack, name, read_only and
 * mounted are the caller's to fill in). */
void pf_fe_init(struct pf_fe *fe);
void pf_fe_destroy(struct pf_fe *fe);

/* The data path for the io_uring transport, with @fe as its context. */
void pf_fe_ring_data(struct pf_fe *fe, struct pf_ring_data *d);

struct fuse_lowlevel_ops;
struct fuse_conn_info;

/* The low-level operations; the userdata of the session is a pf_fe. */
const struct fuse_lowlevel_ops *pf_fe_ops(void);

/* What ploopfs asks of a FUSE connection at init: direct I/O with many
 * requests in flight, no page cache, no splice (the benchmark's FUSE
 * ceilings use it too, so that they measure the same transport). */
void pf_fe_conn_setup(struct fuse_conn_info *conn);

#endif /* PF_FUSE_FE_H */
