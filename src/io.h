/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The asynchronous I/O engine under the file interface (file.h): where a
 * read or write that a pf_file submits actually runs.  Three ways, chosen
 * here and nowhere above:
 *   - on the submitting thread's own engine (an io_uring queue thread,
 *     pf_aio_use_engine), for the requests it takes;
 *   - through libaio (io_aio.c, the only file that includes <libaio.h>),
 *     with the callbacks run on one completion thread, once the engine
 *     is started and other requests are in flight or the caller submits
 *     a batch;
 *   - in the calling thread, with the callback run before the submit
 *     returns: before pf_aio_start(), where the kernel gives no aio
 *     context, and for a request that is alone (queue depth 1: a thread
 *     hand-off would cost more than it saves).
 *
 * Buffers, offsets and lengths must meet the O_DIRECT alignment of the
 * file when it was opened with O_DIRECT.
 */
#ifndef PF_IO_H
#define PF_IO_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

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

/* Create an engine that runs every request in its caller until
 * pf_aio_start().  Returns 0 or -ENOMEM. */
PF_MUST_CHECK int pf_aio_create(struct pf_aio **out);

/*
 * Go asynchronous: an aio context for up to @depth requests in flight
 * and the completion thread (after daemonizing: neither survives a
 * fork).  If the kernel refuses an aio context the engine stays
 * synchronous (pf_aio_is_async() says which) and this still returns 0.
 * Returns 0 or -errno (no thread).  Context: no request in flight.
 */
PF_MUST_CHECK int pf_aio_start(struct pf_aio *a, unsigned depth);

/* Wait for every request in flight to complete and stop the thread:
 * synchronous again, as before pf_aio_start().  NULL is fine. */
void pf_aio_stop(struct pf_aio *a);

/* pf_aio_stop(), then free.  NULL is fine. */
void pf_aio_destroy(struct pf_aio *a);

bool pf_aio_is_async(const struct pf_aio *a);
/* Requests submitted and not yet completed (a racy snapshot). */
unsigned pf_aio_inflight(struct pf_aio *a);

/*
 * Read or write @len bytes of @fd at @off, by the rule at the top of
 * this file (@a NULL: always in the calling thread).  @done runs exactly
 * once, also on a submit error (with -errno); a transfer shorter than
 * @len is reported as it is, except in the calling thread, where it is
 * retried and a premature end of file is -EIO.  Waits for a free slot
 * when @depth requests are in flight.
 */
void pf_aio_submit(struct pf_aio *a, struct pf_aio_req *r, int fd,
		   bool write, void *buf, size_t len, uint64_t off,
		   pf_aio_done_fn done, void *arg);

/*
 * A caller about to submit several requests from one thread brackets
 * them with these, so that each goes to libaio instead of running in
 * place, one after the other.  Calls nest.  @a may be NULL.
 */
void pf_aio_batch(struct pf_aio *a, bool begin);

/*
 * A thread's own engine.  A thread that runs an event loop of its own (a
 * FUSE io_uring queue thread) can take the data I/O it submits: then it
 * also reaps the completions, in that loop, and nothing else wakes up.
 * The requests count as in flight on their pf_aio like any other.
 *
 * The catch: such a thread must never sleep on something that waits for
 * its own requests (a range lock, a freeze).  Every sleep goes through
 * pf_aio_wait(), which first completes the thread's own requests.
 */
struct pf_aio_engine {
	/* Queue a request; 0, or -errno to let libaio take it instead. */
	int (*submit)(void *ctx, struct pf_aio_req *r, bool write, int fd,
		      void *buf, size_t len, uint64_t off);
	/* Complete every request this engine holds, and hand over what
	 * the thread's loop would submit with its next wait: the thread
	 * is about to sleep elsewhere. */
	void (*drain)(void *ctx);
	/* true if drain() would have nothing to do */
	bool (*idle)(void *ctx);
	void *ctx;
};

/* Use @e (NULL: none) for the requests this thread submits. */
void pf_aio_use_engine(const struct pf_aio_engine *e);

/* For an engine: request @r, which it took, completed with @res. */
void pf_aio_engine_done(struct pf_aio_req *r, ssize_t res);

/*
 * The one way code under a request sleeps (a range lock, the gate, an
 * epoch, a flush, a held write): pthread_cond_wait(@cv, @m), or
 * pthread_cond_timedwait() with @until (CLOCK_MONOTONIC or the clock of
 * @cv), unless the calling thread's own engine still holds requests or
 * answers: then @m is dropped while they are completed, and the call
 * returns 0 without sleeping, for the caller to test its condition
 * again.  Use it in a loop: while (!cond) pf_aio_wait(cv, m, NULL);
 * Returns 0, or ETIMEDOUT from the timed wait.
 */
int pf_aio_wait(pthread_cond_t *cv, pthread_mutex_t *m,
		const struct timespec *until);

#endif /* PF_IO_H */
