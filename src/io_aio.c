// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The I/O engine of io.h: the choice between the calling thread, its own
 * engine and libaio, and the libaio backend.
 *
 * Threads: any thread submits; one completion thread reaps events with
 * io_getevents() and runs the callbacks, which must not block for long
 * (they reply to FUSE and release locks).  A thread with an engine of
 * its own (pf_aio_use_engine) submits and completes through it instead.
 *
 * Flow control: a counting semaphore holds the number of free slots, so
 * io_submit() never sees a full ring; the completion thread posts it
 * after each callback.
 */
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <libaio.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(struct iocb) <= sizeof(((struct pf_aio_req *)0)->iocb),
	       "struct iocb fits in pf_aio_req");

#define REAP_BATCH	128

struct pf_aio {
	io_context_t ctx;
	unsigned depth;		/* of ctx */
	bool async;		/* an aio context and its thread run */
	bool sem_ok;		/* slots initialised */
	sem_t slots;		/* free submission slots */
	pthread_t thread;
	atomic_bool stop;
	atomic_uint inflight;	/* libaio and engine requests */
	atomic_uint in_place;	/* requests running in their caller */
	atomic_uint batching;	/* callers submitting a batch */
};

int pf_aio_create(struct pf_aio **out)
{
	struct pf_aio *a = calloc(1, sizeof(*a));

	if (!a)
		return -ENOMEM;
	*out = a;
	return 0;
}

bool pf_aio_is_async(const struct pf_aio *a)
{
	return a && a->async;
}

unsigned pf_aio_inflight(struct pf_aio *a)
{
	return a ? atomic_load_explicit(&a->inflight, memory_order_relaxed) :
		   0;
}

static void *reaper(void *arg)
{
	struct pf_aio *a = arg;
	struct io_event ev[REAP_BATCH];
	/* A backstop: pf_aio_stop() wakes the thread at once. */
	struct timespec tmo = { 5, 0 };
	int n, i;

	while (!atomic_load(&a->stop) || atomic_load(&a->inflight)) {
		n = io_getevents(a->ctx, 1, REAP_BATCH, ev, &tmo);
		for (i = 0; i < n; i++) {
			struct pf_aio_req *r = ev[i].data;
			ssize_t res = (ssize_t)(long)ev[i].res;
			void *cb_arg;

			if (!r)
				continue;	/* the wake-up of stopping */
			/* pairs with the release in pf_aio_submit(): the
			 * kernel's ordering is invisible to ThreadSanitizer */
			cb_arg = __atomic_load_n(&r->arg, __ATOMIC_ACQUIRE);
			r->done(cb_arg, res);
			atomic_fetch_sub(&a->inflight, 1);
			sem_post(&a->slots);
		}
	}
	return NULL;
}

/*
 * io_destroy() waits for an RCU grace period (30-40 ms here), which a
 * process that starts stack after stack (the test suites) would pay at
 * every stop.  One drained context is kept for the next start of the
 * same depth.  A wake-up event it may still hold is skipped like any.
 */
static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;
static io_context_t spare_ctx;
static unsigned spare_depth;

static int ctx_get(unsigned depth, io_context_t *ctx)
{
	pthread_mutex_lock(&spare_lock);
	if (spare_ctx && spare_depth == depth) {
		*ctx = spare_ctx;
		spare_ctx = 0;
		pthread_mutex_unlock(&spare_lock);
		return 0;
	}
	pthread_mutex_unlock(&spare_lock);
	*ctx = 0;
	return io_setup((int)depth, ctx);
}

static void ctx_put(unsigned depth, io_context_t ctx)
{
	pthread_mutex_lock(&spare_lock);
	if (!spare_ctx) {
		spare_ctx = ctx;
		spare_depth = depth;
		ctx = 0;
	}
	pthread_mutex_unlock(&spare_lock);
	if (ctx)
		io_destroy(ctx);
}

int pf_aio_start(struct pf_aio *a, unsigned depth)
{
	int ret;

	if (a->sem_ok)
		sem_destroy(&a->slots);
	if (sem_init(&a->slots, 0, depth) < 0)
		return -errno;
	a->sem_ok = true;
	/* one more than the slots: room for the wake-up of stopping */
	a->depth = depth + 1;
	if (ctx_get(a->depth, &a->ctx) < 0)
		return 0;	/* no kernel aio: stay synchronous */
	ret = pthread_create(&a->thread, NULL, reaper, a);
	if (ret) {
		ctx_put(a->depth, a->ctx);
		return -ret;
	}
	a->async = true;
	return 0;
}

/* An event for the completion thread to wake up to: a read of a byte
 * that is already in a pipe completes at once. */
static void wake_reaper(struct pf_aio *a)
{
	static char byte;	/* the kernel reads into it */
	struct iocb cb, *cbs[1] = { &cb };
	int p[2];

	if (pipe2(p, O_CLOEXEC) < 0)
		return;	/* the backstop timeout wakes it */
	if (write(p[1], &byte, 1) == 1) {
		io_prep_pread(&cb, p[0], &byte, 1, 0);
		cb.data = NULL;
		(void)io_submit(a->ctx, 1, cbs);
	}
	close(p[0]);
	close(p[1]);
}

void pf_aio_stop(struct pf_aio *a)
{
	if (!a || !a->async)
		return;
	/* the completion thread leaves once nothing is in flight */
	atomic_store(&a->stop, true);
	wake_reaper(a);
	pthread_join(a->thread, NULL);
	ctx_put(a->depth, a->ctx);	/* drained */
	a->async = false;
	atomic_store(&a->stop, false);
}

void pf_aio_destroy(struct pf_aio *a)
{
	if (!a)
		return;
	pf_aio_stop(a);
	if (a->sem_ok)
		sem_destroy(&a->slots);
	free(a);
}

void pf_aio_batch(struct pf_aio *a, bool begin)
{
	if (!a)
		return;
	if (begin)
		atomic_fetch_add_explicit(&a->batching, 1, memory_order_relaxed);
	else
		atomic_fetch_sub_explicit(&a->batching, 1, memory_order_relaxed);
}

static __thread const struct pf_aio_engine *thread_engine;

void pf_aio_use_engine(const struct pf_aio_engine *e)
{
	thread_engine = e;
}

void pf_aio_engine_done(struct pf_aio_req *r, ssize_t res)
{
	struct pf_aio *a = r->owner;

	r->owner = NULL;
	r->done(r->arg, res);
	atomic_fetch_sub(&a->inflight, 1);
}

int pf_aio_wait(pthread_cond_t *cv, pthread_mutex_t *m,
		const struct timespec *until)
{
	const struct pf_aio_engine *e = thread_engine;

	if (e && !e->idle(e->ctx)) {
		/* its completions may need @m (a range lock, the gate) */
		pthread_mutex_unlock(m);
		e->drain(e->ctx);
		pthread_mutex_lock(m);
		return 0;	/* the caller tests its condition again */
	}
	return until ? pthread_cond_timedwait(cv, m, until) :
		       pthread_cond_wait(cv, m);
}

/* Alone, or no aio: in the caller, the callback run here. */
static void run_in_place(struct pf_aio *a, int fd, bool write, void *buf,
			 size_t len, uint64_t off, pf_aio_done_fn done,
			 void *arg)
{
	int ret;

	if (a)
		atomic_fetch_add_explicit(&a->in_place, 1, memory_order_relaxed);
	ret = write ? pf_pwrite_full(fd, buf, len, off) :
		      pf_pread_full(fd, buf, len, off);
	if (a)
		atomic_fetch_sub_explicit(&a->in_place, 1, memory_order_relaxed);
	done(arg, ret ? ret : (ssize_t)len);
}

/*
 * A request that is alone is faster done in the calling thread than
 * handed to the completion thread, which would have to wake up for it;
 * once requests overlap, libaio keeps many in flight from a few threads.
 * A caller with several requests in hand says so (pf_aio_batch), since
 * for it "alone" is only true of the first.
 */
static bool goes_async(struct pf_aio *a)
{
	return a && a->async &&
	       (atomic_load_explicit(&a->in_place, memory_order_relaxed) ||
		atomic_load_explicit(&a->batching, memory_order_relaxed) ||
		atomic_load_explicit(&a->inflight, memory_order_relaxed));
}

void pf_aio_submit(struct pf_aio *a, struct pf_aio_req *r, int fd,
		   bool write, void *buf, size_t len, uint64_t off,
		   pf_aio_done_fn done, void *arg)
{
	struct iocb *cb = (struct iocb *)r->iocb;
	struct iocb *cbs[1] = { cb };
	int ret;

	if (!goes_async(a)) {
		run_in_place(a, fd, write, buf, len, off, done, arg);
		return;
	}
	r->done = done;
	/* last store before io_submit: publishes the request and all the
	 * caller wrote before it to the completion thread */
	__atomic_store_n(&r->arg, arg, __ATOMIC_RELEASE);
	if (thread_engine) {
		r->owner = a;
		atomic_fetch_add(&a->inflight, 1);
		if (!thread_engine->submit(thread_engine->ctx, r, write, fd,
					   buf, len, off))
			return;
		r->owner = NULL;
		atomic_fetch_sub(&a->inflight, 1);
	}
	if (write)
		io_prep_pwrite(cb, fd, buf, len, (long long)off);
	else
		io_prep_pread(cb, fd, buf, len, (long long)off);
	cb->data = r;
	while (sem_wait(&a->slots) < 0)
		;	/* EINTR */
	atomic_fetch_add(&a->inflight, 1);
	do {
		ret = io_submit(a->ctx, 1, cbs);
	} while (ret == -EAGAIN || ret == -EINTR);
	if (ret != 1) {
		atomic_fetch_sub(&a->inflight, 1);
		sem_post(&a->slots);
		done(arg, ret < 0 ? ret : -EIO);
	}
}
