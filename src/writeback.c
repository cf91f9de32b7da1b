// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Writeback of the stack (see stack_i.h): the commit of the top delta's
 * BAT by rules W1-W4, the periodic writeback thread, and the group
 * commit of pf_stack_flush (W3).
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

/* Writeback */

int wb_datasync(struct pf_stack *s)
{
	atomic_fetch_add(&s->datasyncs, 1);
	return pf_delta_sync(s->top->d);
}

/* One commit, W1-W4 (see the file comment), with commit_lock held.
 * @force: sync data even when no BAT page is dirty (a flush). */
int wb_commit_locked(struct pf_stack *s, bool force)
{
	uint32_t *pages = NULL, *freeing = NULL;
	size_t n_pages, n_freeing, i;
	uint8_t *copy = NULL;
	int ret = 0;

	if (atomic_load(&s->failed)) {
		ret = -EIO;
		goto out;
	}
	/* 1. close the transaction (W2) */
	pthread_mutex_lock(&s->bat_lock);
	n_pages = s->n_dirty;
	n_freeing = s->n_pending;
	if (!force && !n_pages && !n_freeing) {
		pthread_mutex_unlock(&s->bat_lock);
		goto out;
	}
	if (n_pages) {
		pages = malloc(n_pages * sizeof(*pages));
		copy = stack_alloc_aligned(s, n_pages * PF_BAT_PAGE_SIZE);
		if (!pages || !copy) {
			pthread_mutex_unlock(&s->bat_lock);
			ret = -ENOMEM;
			goto out;
		}
		for (i = 0; i < n_pages; i++) {
			pages[i] = s->dirty_list[i];
			s->page_dirty[pages[i]] = 0;
			memcpy(copy + i * PF_BAT_PAGE_SIZE,
			       s->top_meta + (size_t)pages[i] * PF_BAT_PAGE_SIZE,
			       PF_BAT_PAGE_SIZE);
		}
		s->n_dirty = 0;
	}
	freeing = s->pending_free;
	s->pending_free = NULL;
	s->n_pending = s->cap_pending = 0;
	pthread_mutex_unlock(&s->bat_lock);

	/* I/O that looked up a mapping this commit removes has finished. */
	if (n_freeing)
		epoch_flip_and_drain(s);

	/* 2. W1: the data every copied entry points to is durable */
	ret = wb_datasync(s);
	if (ret) {
		stack_set_failed(s, "data flush", ret);
		goto out;
	}
	crash_point(s, CP_COMMIT_DATA_SYNCED);
	/* 3. the BAT pages, then W3: durable before anyone is answered */
	if (n_pages) {
		struct pf_delta_hook hook = CP_HOOK(
			s, [PF_DELTA_PAGE_WRITTEN] = CP_COMMIT_BAT_WRITTEN);

		atomic_fetch_add(&s->datasyncs, 1);
		ret = pf_delta_write_bat(s->top->d, pages, copy, n_pages,
					 &hook);
		if (ret) {
			stack_set_failed(s, "BAT write", ret);
			goto out;
		}
		atomic_fetch_add(&s->commits, 1);
		crash_point(s, CP_COMMIT_BAT_SYNCED);
	}
	/* 4. W4: the unmapping is durable; the clusters may go */
	for (i = 0; i < n_freeing; i++) {
		uint32_t clu = freeing[i];

		if (map_punch(s->top, pf_clu_to_off(s->hdr, clu),
			      s->hdr->cluster_bytes))
			continue;	/* cannot make it read zeros: leak */
		crash_point(s, CP_COMMIT_FREED_PUNCHED);
		pthread_mutex_lock(&s->alloc_lock);
		if (map_free_push(s, clu))
			pf_log(PF_LOG_WARNING, "%s: out of memory, cluster %" PRIu32
			       " leaked until the next mount", s->dir, clu);
		pthread_mutex_unlock(&s->alloc_lock);
	}
	if (n_freeing)
		space_freed(s);
out:
	free(pages);
	free(copy);
	free(freeing);
	return ret;
}

int wb_commit(struct pf_stack *s, bool force)
{
	int ret;

	pthread_mutex_lock(&s->commit_lock);
	ret = wb_commit_locked(s, force);
	pthread_mutex_unlock(&s->commit_lock);
	return ret;
}

/*
 * Runs the next commit in the calling thread, with wb_lock held on entry
 * and on return (dropped while committing); !s->committing on entry.  It
 * syncs data even with no BAT page dirty when a flush waits for it.
 */
static void run_commit(struct pf_stack *s)
{
	uint64_t seq = ++s->started;
	bool force = s->want >= seq;

	s->committing = true;
	pthread_mutex_unlock(&s->wb_lock);
	wb_commit(s, force);	/* errors: sticky failed state */
	pthread_mutex_lock(&s->wb_lock);
	s->done = seq;
	s->committing = false;
	pthread_cond_broadcast(&s->wb_done);
}

/* The periodic commit of dirty BAT pages. */
void *wb_main(void *arg)
{
	struct pf_stack *s = arg;
	struct timespec deadline;

	pthread_mutex_lock(&s->wb_lock);
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &deadline);
		deadline.tv_sec += s->commit_ms / 1000;
		deadline.tv_nsec += (long)(s->commit_ms % 1000) * 1000000;
		if (deadline.tv_nsec >= 1000000000) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000000000;
		}
		while (!s->wb_stop &&
		       pthread_cond_timedwait(&s->wb_kick, &s->wb_lock,
					      &deadline) != ETIMEDOUT)
			;
		if (s->wb_stop)
			break;
		if (!s->committing)
			run_commit(s);
	}
	pthread_mutex_unlock(&s->wb_lock);
	return NULL;
}

/*
 * W3 for a client's fsync: it is answered only after a commit that
 * started after it was called has made the data and the BAT durable.
 * Group commit without a hand-off: the flush waits for such a commit.
 * When none is running the caller runs it itself; callers that arrive
 * meanwhile wait for the next one, which the first of them to find the
 * way clear runs for all.
 */
int pf_stack_flush(struct pf_stack *s)
{
	uint64_t target;

	if (s->read_only)
		return 0;	/* nothing written, nothing to make durable */
	if (atomic_load(&s->failed))
		return -EIO;
	pthread_mutex_lock(&s->wb_lock);
	if (!s->wb_running) {
		pthread_mutex_unlock(&s->wb_lock);
		return wb_commit(s, true);
	}
	target = s->started + 1;
	if (s->want < target)
		s->want = target;
	while (s->done < target) {
		if (!s->committing)
			run_commit(s);
		else
			pf_aio_wait(&s->wb_done, &s->wb_lock, NULL);
	}
	pthread_mutex_unlock(&s->wb_lock);
	return atomic_load(&s->failed) ? -EIO : 0;
}
