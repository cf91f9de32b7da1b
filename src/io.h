/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Asynchronous data I/O on delta files.  The production backend is
 * libaio (io_aio.c, the only file that includes <libaio.h>): requests are
 * submitted from any thread and their callbacks run on one completion
 * thread.  Where the kernel gives no aio context the same calls run
 * synchronously in the caller, with the callback called before they
 * return.
 *
 * Buffers, offsets and lengths must meet the O_DIRECT alignment of the
 * file when it was opened with O_DIRECT.
 */
#ifndef PF_IO_H
#define PF_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "util.h"

struct pf_aio;

/* Completion: @res is the byte count transferred or -errno. */
typedef void (*pf_aio_done_fn)(void *arg, ssize_t res);

/* Storage for one request, embedded by the caller (no allocation per
 * request); it must stay valid until the callback has run. */
struct pf_aio_req {
	_Alignas(8) unsigned char iocb[64];	/* struct iocb */
	pf_aio_done_fn done;
	void *arg;
	struct pf_aio *owner;	/* while an engine has it */
};

/* Create a context for up to @depth requests in flight.  Returns 0 or
 * -errno; with @depth 0, or if the kernel refuses an aio context, the
 * context works synchronously (pf_aio_is_async() says which).  An aio
 * context does not survive fork(): create it in the process that uses
 * it. */
PF_MUST_CHECK int pf_aio_create(unsigned depth, struct pf_aio **out);

/* Start the completion thread (after daemonizing). Returns 0 or -errno. */
PF_MUST_CHECK int pf_aio_start(struct pf_aio *a);

/* Wait for every request to complete, stop the thread, free. */
void pf_aio_destroy(struct pf_aio *a);

int pf_aio_is_async(const struct pf_aio *a);
/* Requests submitted and not yet completed (a racy snapshot). */
unsigned pf_aio_inflight(struct pf_aio *a);

/* Submit a read or write; waits for a free slot when @depth requests are
 * in flight.  The callback always runs exactly once, also on a submit
 * error (with -errno). */
void pf_aio_pread(struct pf_aio *a, struct pf_aio_req *r, int fd, void *buf,
		  size_t len, uint64_t off, pf_aio_done_fn done, void *arg);
void pf_aio_pwrite(struct pf_aio *a, struct pf_aio_req *r, int fd,
		   const void *buf, size_t len, uint64_t off,
		   pf_aio_done_fn done, void *arg);

/*
 * A thread's own engine.  A thread that runs an event loop of its own (a
 * FUSE io_uring queue thread) can take the data I/O it submits: then it
 * also reaps the completions, in that loop, and nothing else wakes up.
 * The requests count as in flight on their pf_aio like any other.
 *
 * The catch: such a thread must never sleep on something that waits for
 * its own requests (a range lock, a freeze).  Code that is about to sleep
 * calls pf_aio_before_wait(), which completes the thread's own requests
 * first (engine->drain).
 */
struct pf_aio_engine {
	/* Queue a request; 0, or -errno to let libaio take it instead. */
	int (*submit)(void *ctx, struct pf_aio_req *r, bool write, int fd,
		      void *buf, size_t len, uint64_t off);
	/* Complete every request this engine holds. */
	void (*drain)(void *ctx);
	void *ctx;
};

/* Use @e (NULL: none) for the requests this thread submits. */
void pf_aio_use_engine(const struct pf_aio_engine *e);

/* For an engine: request @r, which it took, completed with @res. */
void pf_aio_engine_done(struct pf_aio_req *r, ssize_t res);

/* About to sleep: complete this thread's own engine requests. */
void pf_aio_before_wait(void);

#endif /* PF_IO_H */
