// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * libaio backend of io.h.
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
	bool async;		/* false: run requests in the caller */
	sem_t slots;		/* free submission slots */
	pthread_t thread;
	bool started;
	atomic_bool stop;
	atomic_uint inflight;
};

int pf_aio_create(unsigned depth, struct pf_aio **out)
{
	struct pf_aio *a = calloc(1, sizeof(*a));
	int ret;

	if (!a)
		return -ENOMEM;
	/* depth 0, or no context from the kernel: synchronous */
	ret = depth ? io_setup((int)depth, &a->ctx) : -EINVAL;
	a->async = ret == 0;
	if (sem_init(&a->slots, 0, depth) < 0) {
		ret = -errno;
		if (a->async)
			io_destroy(a->ctx);
		free(a);
		return ret;
	}
	*out = a;
	return 0;
}

int pf_aio_is_async(const struct pf_aio *a)
{
	return a->async;
}

unsigned pf_aio_inflight(struct pf_aio *a)
{
	return atomic_load_explicit(&a->inflight, memory_order_relaxed);
}

static void *reaper(void *arg)
{
	struct pf_aio *a = arg;
	struct io_event ev[REAP_BATCH];
	/* The timeout only bounds how long stopping takes. */
	struct timespec tmo = { 0, 200 * 1000 * 1000 };
	int n, i;

	for (;;) {
		n = io_getevents(a->ctx, 1, REAP_BATCH, ev, &tmo);
		if (n == -EINTR)
			continue;
		if (n <= 0) {
			if (atomic_load(&a->stop) && !atomic_load(&a->inflight))
				break;
			continue;
		}
		for (i = 0; i < n; i++) {
			struct pf_aio_req *r = ev[i].data;
			ssize_t res = (ssize_t)(long)ev[i].res;
			/* pairs with the release in submit(): the kernel's
			 * ordering is invisible to ThreadSanitizer */
			void *cb_arg = __atomic_load_n(&r->arg, __ATOMIC_ACQUIRE);

			r->done(cb_arg, res);
			atomic_fetch_sub(&a->inflight, 1);
			sem_post(&a->slots);
		}
	}
	return NULL;
}

int pf_aio_start(struct pf_aio *a)
{
	int ret;

	if (!a->async)
		return 0;
	ret = pthread_create(&a->thread, NULL, reaper, a);
	if (ret)
		return -ret;
	a->started = true;
	return 0;
}

void pf_aio_destroy(struct pf_aio *a)
{
	if (!a)
		return;
	if (a->started) {
		atomic_store(&a->stop, true);
		pthread_join(a->thread, NULL);
	}
	if (a->async)
		io_destroy(a->ctx);
	sem_destroy(&a->slots);
	free(a);
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

void pf_aio_before_wait(void)
{
	const struct pf_aio_engine *e = thread_engine;

	if (e)
		e->drain(e->ctx);
}

static void submit(struct pf_aio *a, struct pf_aio_req *r, bool write, int fd,
		   void *buf, size_t len, uint64_t off, pf_aio_done_fn done,
		   void *arg)
{
	struct iocb *cb = (struct iocb *)r->iocb;
	struct iocb *cbs[1] = { cb };
	ssize_t n;
	int ret;

	r->done = done;
	/* last store before io_submit: publishes the request and all the
	 * caller wrote before it to the completion thread */
	__atomic_store_n(&r->arg, arg, __ATOMIC_RELEASE);
	if (!a->async || !a->started) {
		n = write ? pwrite(fd, buf, len, (off_t)off) :
			    pread(fd, buf, len, (off_t)off);
		done(arg, n < 0 ? -errno : n);
		return;
	}
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

void pf_aio_pread(struct pf_aio *a, struct pf_aio_req *r, int fd, void *buf,
		  size_t len, uint64_t off, pf_aio_done_fn done, void *arg)
{
	submit(a, r, false, fd, buf, len, off, done, arg);
}

void pf_aio_pwrite(struct pf_aio *a, struct pf_aio_req *r, int fd,
		   const void *buf, size_t len, uint64_t off,
		   pf_aio_done_fn done, void *arg)
{
	submit(a, r, true, fd, (void *)buf, len, off, done, arg);
}
