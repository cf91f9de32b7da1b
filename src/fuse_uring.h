/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FUSE over io_uring (Linux 6.14 and later, fuse module parameter
 * enable_uring=Y): requests arrive as completions on one io_uring per
 * CPU, and an answer goes back in the same submission that fetches the
 * next request, instead of one read(2) and one writev(2) of /dev/fuse per
 * request.  libfuse 3.14 knows nothing of it, so this transport sits
 * beside the libfuse session:
 *
 *  - It installs libfuse's custom I/O hooks on the session's device.
 *    They pass every read and write through, except that the answer to
 *    FUSE_INIT also asks for io_uring when the kernel offers it and the
 *    rings could be set up (otherwise nothing changes: /dev/fuse serves
 *    every request, as before).
 *  - One thread per CPU queue registers its ring entries (a header area
 *    and a payload buffer of max_write bytes, 4096-aligned) and waits for
 *    requests.  READ and WRITE go straight to the file system's data
 *    callbacks, which read into and write from the payload buffer with
 *    no copy; every other request is handed to libfuse's dispatcher, and
 *    its answer, caught by the write hook, is copied into the entry.
 *  - An answer is committed from whichever thread produced it (the queue
 *    thread batches its own commits into its next wait).  Writes that
 *    would hold up the thread (allocation, copy-on-write, a wait for host
 *    space that has no bound) always run on a pool of worker threads;
 *    fsync, fallocate and O_SYNC writes run there when other requests of
 *    the queue are in flight.  A queue thread never waits long, so one
 *    request cannot hold up the others of its CPU.
 *
 * FORGET, INTERRUPT and requests sent before the rings are ready still
 * come through /dev/fuse and libfuse's own loop, which keeps running.
 * Interrupts of ring requests are not acted on (none of ploopfs's
 * requests waits for anything a signal could cut short).
 *
 * One transport per process: libfuse's hooks carry no context of their
 * own.
 */
#ifndef PF_FUSE_URING_H
#define PF_FUSE_URING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct fuse_session;

/* Called once per request with the bytes done or -errno, from any
 * thread. */
typedef void (*pf_ring_done_fn)(void *arg, ssize_t res);

/* The data path the transport calls directly. */
struct pf_ring_data {
	void *ctx;
	/* Read up to @size bytes at @off of inode @ino into @buf (short
	 * only at the end of the file). */
	void (*read)(void *ctx, uint64_t ino, void *buf, size_t size,
		     uint64_t off, pf_ring_done_fn done, void *arg);
	/* Write @size bytes of @buf at @off of inode @ino; @open_flags are
	 * those of the open file (O_SYNC, O_DSYNC...). */
	void (*write)(void *ctx, uint64_t ino, const void *buf, size_t size,
		      uint64_t off, int open_flags, pf_ring_done_fn done,
		      void *arg);
	/* Optional: whether that write would hold up the calling thread
	 * (allocation, copy-on-write, waiting for space): such writes run
	 * on a worker thread, never on a queue thread. */
	bool (*write_waits)(void *ctx, uint64_t ino, const void *buf,
			    size_t size, uint64_t off);
	/* Optional: the transport is about to serve several requests from
	 * one thread (@begin), or is done with them: the file system should
	 * not do one request's I/O in place while others wait. */
	void (*batch)(void *ctx, bool begin);
};

#define PF_RING_DEPTH	64u	/* ring entries (requests in flight) per CPU */

struct pf_ring;

/* Install the hooks on @se, after fuse_session_mount() and before its
 * loop starts; @data must outlive the transport.  Returns 0 or -errno
 * (-EBUSY if the process has a transport already). */
int pf_ring_attach(struct fuse_session *se, const struct pf_ring_data *data,
		   unsigned depth, struct pf_ring **out);

/* Whether requests now travel over io_uring: "io_uring" once every
 * queue has registered, else "dev" (also when @r is NULL). */
const char *pf_ring_transport(const struct pf_ring *r);

/* Requests that have come over the rings so far. */
unsigned long long pf_ring_served(const struct pf_ring *r);

/* Once the session loop has ended: take no more requests from the rings
 * (the queue threads and workers end; requests that arrive from now on
 * wait in the kernel, as they would on /dev/fuse, until the unmount).
 * Requests in flight can still be answered. */
void pf_ring_stop(struct pf_ring *r);

/* After every request in flight has been answered (the stack is
 * closed): stop if not stopped yet and free everything.  The hooks stay
 * installed and pass everything through. */
void pf_ring_detach(struct pf_ring *r);

#endif /* PF_FUSE_URING_H */
