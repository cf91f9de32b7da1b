// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Sealing and verifying the read-only levels of a running stack (see
 * stack_i.h and manifest.h).
 *
 * A snapshot's old top is read-only from the moment it is taken; the
 * sealer thread then writes its manifest in the background, at the
 * lowest best-effort I/O priority and the lowest CPU priority, with one
 * reader, so that the disk's own I/O goes first.  It also seals, at start, the read-only
 * levels a crash or an older ploopfs left without a manifest (a clean
 * stop does not wait for it: the next start resumes it).
 *
 * Structural commands (snapshot, delete, verify) change or read the
 * levels the sealer reads, so they exclude it: structural_begin() raises
 * seal_holdoff, which makes the sealer's current pass stop at its next
 * cluster (o->cancel), and takes seal_lock, which the sealer holds for a
 * pass; structural_end() lets it go and kicks it.  A pass that was
 * stopped leaves nothing (the manifest is published whole or not at
 * all, W9) and runs again from the start of that level.
 */
#include "stack_i.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "manifest.h"

/* ioprio_set(2), not wrapped by glibc: best effort, lowest level (the
 * idle class could starve the sealer, and with it a snapshot's freeze
 * that waits for its current read) */
#define IOPRIO_CLASS_BE		2
#define IOPRIO_BE_LOWEST	7
#define IOPRIO_CLASS_SHIFT	13
#define IOPRIO_WHO_PROCESS	1

static bool seal_cancelled(void *ctx)
{
	struct pf_stack *s = ctx;

	return atomic_load(&s->seal_holdoff) > 0;
}

static void seal_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct pf_stack *s = ctx;

	atomic_store(&s->seal_done, done);
	atomic_store(&s->seal_total, total);
}

/* Seal level @l.  seal_lock held, so no structural command runs. */
static int seal_level(struct pf_stack *s, unsigned l, unsigned threads,
		      struct pf_why *why)
{
	struct level *lv = &s->levels[l];
	struct pf_sum_opts o = {
		.alg = s->seal_alg, .threads = threads,
		.progress = seal_progress, .cancel = seal_cancelled, .ctx = s,
	};
	char guid[PF_GUID_LEN + 1];
	uint64_t n = pf_delta_mapped_count(lv->d);
	int ret;

	memcpy(guid, lv->guid, sizeof(guid));
	atomic_store(&s->seal_done, 0);
	atomic_store(&s->seal_total, n * s->cluster_bytes);
	ret = pf_manifest_seal(s->dirfd, lv->d, lv->d->name, guid, &o, NULL,
			       why);
	atomic_store(&s->seal_total, 0);
	if (ret)
		return ret;
	pthread_mutex_lock(&s->levels_lock);
	lv->sealed = true;
	pthread_mutex_unlock(&s->levels_lock);
	stack_emit(s, "sealed", "snapshot %s sealed: %" PRIu64 " clusters of %s",
		   guid, n, lv->d->name);
	return 0;
}

/*
 * Seal every read-only level that has no manifest (seal_lock held); one
 * that fails does not keep the others unsealed.  Nothing is sealed in
 * the failed state (W7): a snapshot whose descriptor may not be durable
 * may yet turn out not to be one.  Returns 0 or the first error.
 */
static int seal_all(struct pf_stack *s, unsigned threads, struct pf_why *why)
{
	struct pf_why w = { "" };
	unsigned l;
	int ret, first = 0;

	if (atomic_load(&s->failed))
		return pf_why_set(why, -EIO, "the image is in the failed state (W7)");
	for (l = 0; l + 1 < s->n_levels; l++) {
		struct level *lv = &s->levels[l];

		if (lv->sealed || lv->hidden || lv->deleting)
			continue;
		ret = seal_level(s, l, threads, &w);
		if (ret == -ECANCELED)
			return ret;
		if (ret && !first) {
			first = ret;
			pf_why_fmt(why, "%s", w.msg);
		}
	}
	return first;
}

int pf_stack_seal(struct pf_stack *s, struct pf_why *why)
{
	int ret;

	if (s->read_only)
		return pf_why_set(why, -EROFS, "the image is opened read-only");
	pthread_mutex_lock(&s->seal_lock);
	ret = seal_all(s, 0, why);
	pthread_mutex_unlock(&s->seal_lock);
	return ret;
}

static void *sealer_main(void *arg)
{
	struct pf_stack *s = arg;
	struct pf_why why = { "" };
	bool again = false;
	int ret;

	/* last in line for the CPU and the disk (both per thread, and
	 * inherited by the readers it starts) */
	(void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
	(void)syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0,
		      IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT | IOPRIO_BE_LOWEST);
	pthread_mutex_lock(&s->seal_mu);
	for (;;) {
		while (!s->seal_stop && !s->seal_pending)
			pthread_cond_wait(&s->seal_kick, &s->seal_mu);
		if (s->seal_stop)
			break;
		s->seal_pending = false;
		pthread_mutex_unlock(&s->seal_mu);

		pthread_mutex_lock(&s->seal_lock);
		why.msg[0] = '\0';
		ret = seal_cancelled(s) ? -ECANCELED : seal_all(s, 1, &why);
		pthread_mutex_unlock(&s->seal_lock);
		if (ret == -ECANCELED)
			again = true;	/* a structural command: kicked after */
		else if (ret)
			stack_emit(s, "seal-failed", "sealing failed: %s",
				   why.msg[0] ? why.msg : strerror(-ret));

		pthread_mutex_lock(&s->seal_mu);
		if (again) {
			again = false;
			if (!s->seal_stop && !atomic_load(&s->seal_holdoff))
				s->seal_pending = true;
		}
	}
	pthread_mutex_unlock(&s->seal_mu);
	return NULL;
}

void seal_kick(struct pf_stack *s)
{
	pthread_mutex_lock(&s->seal_mu);
	s->seal_pending = true;
	pthread_cond_signal(&s->seal_kick);
	pthread_mutex_unlock(&s->seal_mu);
}

int seal_start(struct pf_stack *s)
{
	int ret;

	if (s->read_only || s->no_sealer)
		return 0;
	ret = pthread_create(&s->seal_thread, NULL, sealer_main, s);
	if (ret)
		return -ret;
	s->seal_running = true;
	seal_kick(s);
	return 0;
}

void seal_stop(struct pf_stack *s)
{
	if (!s->seal_running)
		return;
	atomic_fetch_add(&s->seal_holdoff, 1);	/* stop the current pass */
	pthread_mutex_lock(&s->seal_mu);
	s->seal_stop = true;
	pthread_cond_signal(&s->seal_kick);
	pthread_mutex_unlock(&s->seal_mu);
	pthread_join(s->seal_thread, NULL);
	s->seal_running = false;
	atomic_fetch_sub(&s->seal_holdoff, 1);
}

void seal_hold(struct pf_stack *s)
{
	atomic_fetch_add(&s->seal_holdoff, 1);
	pthread_mutex_lock(&s->seal_lock);
}

void seal_release(struct pf_stack *s)
{
	pthread_mutex_unlock(&s->seal_lock);
	atomic_fetch_sub(&s->seal_holdoff, 1);
	if (s->seal_running)
		seal_kick(s);
}

/* Verify */

struct vctx {
	const struct pf_stack_verify_cb *cb;
	const char *guid;
};

static void verify_bad(void *ctx, uint32_t vclu, enum pf_mf_problem p)
{
	struct vctx *v = ctx;

	v->cb->bad(v->cb->ctx, v->guid, vclu, pf_mf_problem_name(p));
}

/* Progress and cancel of a verify's reads: the stack's progress
 * counters, and its client's cancel (it went away, the daemon stops). */
struct vprog {
	struct pf_stack *s;
	const struct pf_stack_verify_cb *cb;
};

static void verify_progress(void *ctx, uint64_t done, uint64_t total)
{
	const struct vprog *pc = ctx;

	seal_progress(pc->s, done, total);
}

static bool verify_cancelled_pc(void *ctx)
{
	const struct vprog *pc = ctx;

	return pc->cb->cancel && pc->cb->cancel(pc->cb->ctx);
}

int pf_stack_verify(struct pf_stack *s, const struct pf_stack_verify_cb *cb,
		    struct pf_why *why)
{
	struct vprog pc = { s, cb };
	const struct pf_sum_opts o = {
		.alg = s->seal_alg, .progress = verify_progress,
		.cancel = verify_cancelled_pc, .ctx = &pc,
	};
	unsigned l;
	int ret = 0;

	if (pthread_mutex_trylock(&s->struct_lock))
		return pf_why_set(why, -EBUSY,
				  "another snapshot, merge or verify is in progress");
	seal_hold(s);
	for (l = 0; l < s->n_levels; l++) {
		struct level *lv = &s->levels[l];
		struct pf_stack_verified r = { .guid = lv->guid,
					       .file = lv->d->name };
		struct vctx v = { cb, lv->guid };
		struct pf_why w = { "" };
		enum pf_mf_state st;

		ret = cb->level(cb->ctx, lv->guid, lv->d->name);
		if (ret)
			break;
		if (l + 1 == s->n_levels) {
			r.state = "top";
		} else if (lv->hidden || lv->deleting) {
			r.state = "deleting";
		} else {
			atomic_store(&s->seal_done, 0);
			atomic_store(&s->seal_total,
				     pf_delta_mapped_count(lv->d) *
					     s->cluster_bytes);
			ret = pf_manifest_check(s->dirfd, lv->d, lv->d->name,
						lv->guid, !s->read_only, &o,
						verify_bad, &v, &st,
						&r.clusters, &w);
			atomic_store(&s->seal_total, 0);
			if (ret) {
				r.state = "failed";
				r.note = w.msg;
			} else {
				static const char *const names[] = {
					[PF_MF_OK] = "ok",
					[PF_MF_SEALED_NOW] = "sealed",
					[PF_MF_MISMATCH] = "mismatch",
					[PF_MF_DAMAGED] = "damaged",
					[PF_MF_UNSEALED] = "unsealed",
				};

				r.state = names[st];
				if (st == PF_MF_DAMAGED)
					r.note = w.msg;
				if (st == PF_MF_UNSEALED)
					r.note = "the mount is read-only";
				if (st == PF_MF_SEALED_NOW) {
					pthread_mutex_lock(&s->levels_lock);
					lv->sealed = true;
					pthread_mutex_unlock(&s->levels_lock);
				}
			}
		}
		ret = cb->delta(cb->ctx, &r);
		if (ret)
			break;
	}
	seal_release(s);
	pthread_mutex_unlock(&s->struct_lock);
	return ret;
}
