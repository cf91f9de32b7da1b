// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The stack's gates (see stack_i.h): epochs, the gate and freezing
 * (CTL-3, CTL-5), range locks, and writes held for lack of host space
 * (CTL-8).  Every wait here goes through pf_aio_wait(): a thread with an
 * io_uring engine completes its own requests before it sleeps.
 */
#include "stack_i.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* Epochs */

unsigned epoch_enter(struct pf_stack *s)
{
	for (;;) {
		unsigned e = atomic_load(&s->epoch);

		atomic_fetch_add(&s->epoch_count[e], 1);
		if (atomic_load(&s->epoch) == e)
			return e;
		atomic_fetch_sub(&s->epoch_count[e], 1);	/* flipped */
	}
}

void epoch_exit(struct pf_stack *s, unsigned e)
{
	if (atomic_fetch_sub(&s->epoch_count[e], 1) == 1 &&
	    atomic_load(&s->epoch_waiting)) {
		pthread_mutex_lock(&s->epoch_lock);
		pthread_cond_broadcast(&s->epoch_drained);
		pthread_mutex_unlock(&s->epoch_lock);
	}
}

/* Wait until every read and write that started before now completed. */
void epoch_flip_and_drain(struct pf_stack *s)
{
	unsigned old;

	pthread_mutex_lock(&s->epoch_lock);
	old = atomic_load(&s->epoch);
	atomic_store(&s->epoch, old ^ 1);
	atomic_store(&s->epoch_waiting, true);
	while (atomic_load(&s->epoch_count[old]))
		pf_aio_wait(&s->epoch_drained, &s->epoch_lock, NULL);
	atomic_store(&s->epoch_waiting, false);
	pthread_mutex_unlock(&s->epoch_lock);
}

/* The gate and freezing (CTL-3, CTL-5) */

static void gate_wake(struct pf_stack *s)
{
	pthread_mutex_lock(&s->gate_lock);
	pthread_cond_broadcast(&s->gate_drained);
	pthread_mutex_unlock(&s->gate_lock);
}

/* One fewer of @count (requests in the gate, writes in flight): the
 * last wakes a freeze that waits for them. */
static void gate_drop(struct pf_stack *s, atomic_uint *count)
{
	if (atomic_fetch_sub(count, 1) == 1 && atomic_load(&s->frozen))
		gate_wake(s);
}

void gate_exit(struct pf_stack *s)
{
	gate_drop(s, &s->gate_active);
}

/* Enter the gate, waiting while the stack is frozen. */
void gate_enter(struct pf_stack *s)
{
	for (;;) {
		atomic_fetch_add(&s->gate_active, 1);
		if (!atomic_load(&s->frozen))
			return;
		gate_exit(s);
		pthread_mutex_lock(&s->gate_lock);
		while (atomic_load(&s->frozen))
			pf_aio_wait(&s->gate_open, &s->gate_lock, NULL);
		pthread_mutex_unlock(&s->gate_lock);
	}
}

void gate_inflight_done(struct pf_stack *s)
{
	gate_drop(s, &s->writes_inflight);
}

/* Microseconds on CLOCK_MONOTONIC. */
static uint64_t mono_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000 + (uint64_t)t.tv_nsec / 1000;
}

/*
 * Freeze: no request runs and no write is in flight when this returns,
 * and no commit runs until gate_thaw() (commit_lock is held).  Requests that
 * arrive meanwhile wait at the gate; held writes are outside it.  Only
 * one freeze at a time: callers hold struct_lock.
 */
uint64_t gate_freeze(struct pf_stack *s)
{
	uint64_t since = mono_us();

	pthread_mutex_lock(&s->gate_lock);
	atomic_store(&s->frozen, true);
	while (atomic_load(&s->gate_active) ||
	       atomic_load(&s->writes_inflight))
		pf_aio_wait(&s->gate_drained, &s->gate_lock, NULL);
	pthread_mutex_unlock(&s->gate_lock);
	pthread_mutex_lock(&s->commit_lock);
	stack_check_state(s, "freeze");
	return since;
}

uint64_t gate_thaw(struct pf_stack *s, uint64_t since_us)
{
	uint64_t stall, max;

	stack_check_state(s, "thaw");	/* a switch happens frozen */
	pthread_mutex_unlock(&s->commit_lock);
	pthread_mutex_lock(&s->gate_lock);
	atomic_store(&s->frozen, false);
	pthread_cond_broadcast(&s->gate_open);
	pthread_mutex_unlock(&s->gate_lock);
	stall = mono_us() - since_us;
	atomic_fetch_add(&s->freezes, 1);
	atomic_store(&s->stall_last_us, stall);
	max = atomic_load(&s->stall_max_us);
	while (stall > max &&
	       !atomic_compare_exchange_weak(&s->stall_max_us, &max, stall))
		;
	return stall;
}

/* Range locks */

static struct rbucket *rbucket_of(struct pf_stack *s, uint32_t idx)
{
	return &s->rb[(idx * 2654435761u) % RLOCK_BUCKETS];
}

static bool rlock_conflicts(const struct rbucket *b, const struct rlock *r)
{
	const struct rlock *o;

	for (o = b->head; o; o = o->next)
		if (o->idx == r->idx && o->start < r->end && r->start < o->end)
			return true;
	return false;
}

void rlock_acquire(struct pf_stack *s, struct rlock *r, uint32_t idx,
		   uint64_t start, uint64_t end)
{
	struct rbucket *b = rbucket_of(s, idx);

	r->idx = idx;
	r->start = (uint32_t)start;
	r->end = (uint32_t)end;
	pthread_mutex_lock(&b->lock);
	/* the holder may be this thread's own request (io.h) */
	while (rlock_conflicts(b, r))
		pf_aio_wait(&b->released, &b->lock, NULL);
	r->next = b->head;
	b->head = r;
	pthread_mutex_unlock(&b->lock);
}

void rlock_release(struct pf_stack *s, struct rlock *r)
{
	struct rbucket *b = rbucket_of(s, r->idx);
	struct rlock **pp;

	pthread_mutex_lock(&b->lock);
	for (pp = &b->head; *pp; pp = &(*pp)->next)
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	pthread_cond_broadcast(&b->released);
	pthread_mutex_unlock(&b->lock);
}

/*
 * A write found no space on the host filesystem (CTL-8): hold it and
 * retry, raising an event for every occurrence.  While held it is out of
 * the gate and its epoch, holding no lock, so it blocks neither a freeze
 * nor a commit.  Returns 0 to retry, -EIO once the hold times out
 * (-o enospc_timeout) or the daemon stops.
 */
int space_hold(struct pf_stack *s, struct op *op, uint64_t off,
	       size_t len, uint64_t *since_us)
{
	struct timespec until;
	unsigned n = atomic_fetch_add(&s->held, 1) + 1;
	uint64_t now = mono_us(), wake;
	int ret = 0;

	if (!*since_us) {
		*since_us = now;
		if (n == 1)
			pf_log(PF_LOG_WARNING,
			       "%s: host filesystem is full; holding writes until space is freed",
			       s->dir);
	}
	/* Measured in microseconds: whole seconds would fail a write held
	 * at x.999 s at x+2.0 s, a second early. */
	if (s->enospc_timeout_s &&
	    now - *since_us >= (uint64_t)s->enospc_timeout_s * 1000000) {
		ret = -EIO;
		goto out;
	}
	atomic_fetch_add(&s->enospc_events, 1);
	stack_emit(s, "enospc",
		   "write of %zu bytes at %" PRIu64 " held: no space on the host filesystem (%u held)",
		   len, off, n);
	epoch_exit(s, op->epoch);
	if (op->gated)
		gate_exit(s);
	/* retry at least every second, and when the hold times out */
	wake = now + 1000000;
	if (s->enospc_timeout_s &&
	    *since_us + (uint64_t)s->enospc_timeout_s * 1000000 < wake)
		wake = *since_us + (uint64_t)s->enospc_timeout_s * 1000000;
	until.tv_sec = (time_t)(wake / 1000000);
	until.tv_nsec = (long)(wake % 1000000) * 1000;
	pthread_mutex_lock(&s->space_lock);
	(void)pf_aio_wait(&s->space_cv, &s->space_lock, &until);
	pthread_mutex_unlock(&s->space_lock);
	if (s->stopping && s->stopping(s->stopping_ctx))
		ret = -EIO;
	if (op->gated)
		gate_enter(s);
	op->epoch = epoch_enter(s);
out:
	atomic_fetch_sub(&s->held, 1);
	if (ret)
		stack_emit(s, "enospc-failed",
			   "held write of %zu bytes at %" PRIu64 " failed after %.1f s",
			   len, off, (double)(mono_us() - *since_us) / 1e6);
	return ret;
}

/* Wake held writes: space may have been freed. */
void space_freed(struct pf_stack *s)
{
	if (!atomic_load(&s->held))
		return;
	pthread_mutex_lock(&s->space_lock);
	pthread_cond_broadcast(&s->space_cv);
	pthread_mutex_unlock(&s->space_lock);
}
