// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Online snapshot (see stack_i.h): prepare (image.c, as offline), freeze,
 * commit the old top closed, replace the descriptor, switch the levels in
 * memory, thaw (CTL-3, W6); and what the structural commands share: one
 * at a time (CTL-5), the descriptor checked against the open stack, its
 * replacement with the policy of descriptor.h.
 */
#include "stack_i.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "image.h"
#include "log.h"

/* Structural commands: snapshot, snapshot delete (CTL-3, CTL-5, W5, W6) */

int structural_begin(struct pf_stack *s, struct pf_why *why)
{
	if (s->read_only)
		return pf_why_set(why, -EROFS, "the image is opened read-only");
	if (pthread_mutex_trylock(&s->struct_lock))
		return pf_why_set(why, -EBUSY,
				  "another snapshot, merge or verify is in progress");
	if (atomic_load(&s->failed)) {
		pthread_mutex_unlock(&s->struct_lock);
		return pf_why_set(why, -EIO,
				  "image is in the failed state after an I/O error (W7); remount it");
	}
	seal_hold(s);	/* the sealer reads the levels this may change */
	return 0;
}

/* The end of what structural_begin() began. */
void structural_end(struct pf_stack *s)
{
	seal_release(s);
	pthread_mutex_unlock(&s->struct_lock);
}

/*
 * The prepared descriptor replaces the old one: the commit point of a
 * structural change.  Returns 0, or the rename's -errno (nothing
 * changed, the tmp file is gone).  A failed directory sync after the
 * rename follows the policy of descriptor.h: the change stands (it is
 * what everybody reads now), the image goes to the failed state (W7),
 * and *durable is false so that the caller keeps the file the new
 * descriptor dropped and reports the failure.
 */
int structural_dd_switch(struct pf_stack *s, bool *durable)
{
	bool committed;
	int ret = pf_dd_commit_tmp(s->dirfd, &committed);

	*durable = !ret;
	if (ret && committed) {
		stack_set_failed(s, "directory sync after replacing " PF_DD_NAME, ret);
		return 0;
	}
	return ret;
}

/* The reason for a structural change that stands but is not durable. */
int structural_not_durable(struct pf_why *why, const char *what)
{
	return pf_why_set(why, -EIO,
			  "%s, but the directory sync after replacing " PF_DD_NAME
			  " failed: a power cut may undo it; the image is failed until remounted (W7)",
			  what);
}

/* The descriptor on disk, checked against the open stack. */
int structural_dd_current(struct pf_stack *s, struct pf_dd **out,
			  struct pf_why *why)
{
	const struct pf_dd_image *top;
	struct pf_dd *dd;
	int ret;

	ret = pf_dd_load(s->dirfd, &dd, why);
	if (ret)
		return ret;
	top = pf_dd_find_image(dd, PF_TOP_GUID);
	if (!top || strcmp(top->file, s->top->d->name)) {
		pf_dd_free(dd);
		return pf_why_set(why, -ESTALE, PF_DD_NAME
				  " no longer names the mounted top delta %s",
				  s->top->d->name);
	}
	*out = dd;
	return 0;
}

/*
 * Frozen, before the commit of a snapshot switch: clear the top's in-use
 * flag and trim its preallocated tail (@closed), or set the flag again
 * (the switch failed), for the next commit to make durable.  A power cut
 * after the descriptor rename then finds the former top closed: nothing
 * repairs a read-only delta left flagged in use (W8).
 */
static void top_mark_closed(struct pf_stack *s, bool closed)
{
	uint64_t head;

	pthread_mutex_lock(&s->bat_lock);
	s->top_hdr.in_use = closed ? PF_INUSE_CLOSED : PF_INUSE_OPEN;
	pf_header_encode(&s->top_hdr, s->top_meta);
	map_page_dirty(s, 0);
	pthread_mutex_unlock(&s->bat_lock);
	if (!closed)
		return;
	pthread_mutex_lock(&s->alloc_lock);
	head = s->alloc_head;
	pthread_mutex_unlock(&s->alloc_lock);
	if (pf_delta_trim(s->top->d, head))
		return;	/* a trailing leak at worst */
	pthread_mutex_lock(&s->alloc_lock);
	s->file_clusters = head;
	pthread_mutex_unlock(&s->alloc_lock);
}

int pf_stack_snapshot(struct pf_stack *s, const char *want_guid, char *guid_out,
		      struct pf_why *why)
{
	struct pf_delta_hook hook = CP_HOOK(
		s, [PF_DELTA_CREATED] = CP_SNAP_DELTA_CREATED);
	struct level nl = { 0 }, *nlv = NULL, *old_levels, *old_top;
	struct pf_snap_prep prep = { "", NULL };
	struct pf_header h;
	struct pf_dd *dd = NULL;
	uint64_t t0, stall;
	unsigned n;
	bool prepared = false, durable = true;
	int ret;

	ret = structural_begin(s, why);
	if (ret)
		return ret;
	n = s->n_levels;	/* stable: changes only under struct_lock */
	/* Prepare: everything that can fail happens before the freeze
	 * (CTL-3): the new top and the descriptor naming it, in its tmp
	 * file, as offline (image.c). */
	ret = structural_dd_current(s, &dd, why);
	if (ret)
		goto out;
	pthread_mutex_lock(&s->bat_lock);
	h = s->top_hdr;
	pthread_mutex_unlock(&s->bat_lock);
	ret = pf_image_snapshot_prepare(s->dirfd, dd, &h, want_guid,
					PF_INUSE_OPEN, &hook, &prep, why);
	if (ret)
		goto out;
	prepared = true;
	ret = pf_delta_open(s->dirfd, prep.file, PF_DELTA_WRITE, &s->io, &nl.d,
			    why);
	/* the I/O path reads s->align without locks: it stays */
	if (!ret && !s->no_direct)
		stack_use_direct(s, nl.d, s->align);
	/* BAT pages must never meet a full disk at commit */
	if (!ret && nl.d->f->ops->allocate)
		ret = nl.d->f->ops->allocate(nl.d->f, 0, pf_meta_bytes(&h));
	nlv = calloc(n + 2, sizeof(*nlv));
	if (!ret && !nlv)
		ret = -ENOMEM;
	if (ret) {
		struct pf_why w = *why;

		pf_why_fmt(why, "%s: cannot prepare: %s", prep.file,
			   w.msg[0] ? w.msg : strerror(-ret));
		goto out;
	}
	crash_point(s, CP_SNAP_DD_TMP);

	/* Freeze: drain, then commit the old top (its data and BAT are
	 * durable before the descriptor stops naming it as the top), closed
	 * in that same commit. */
	t0 = gate_freeze(s);
	top_mark_closed(s, true);
	ret = wb_commit_locked(s, true);
	if (!ret) {
		crash_point(s, CP_SNAP_COMMITTED);
		ret = structural_dd_switch(s, &durable);
	}
	if (!ret)
		crash_point(s, CP_SNAP_DD_RENAMED);
	if (ret) {
		/* still the top: in use again (a failed commit is W7) */
		top_mark_closed(s, false);
		if (!atomic_load(&s->failed))
			(void)wb_commit_locked(s, true);
		gate_thaw(s, t0);
		pf_why_fmt(why, "%s: %s", ret == -EIO ? "commit of the current top failed" :
			   "cannot replace " PF_DD_NAME, strerror(-ret));
		goto out;
	}

	/* Switch: memory only, nothing can fail. */
	memcpy(nlv, s->levels, n * sizeof(*nlv));
	old_top = &nlv[n - 1];
	snprintf(old_top->guid, sizeof(old_top->guid), "%s", prep.guid);
	snprintf(nl.guid, sizeof(nl.guid), "%s", PF_TOP_GUID);
	nlv[n] = nl;
	pthread_mutex_lock(&s->levels_lock);
	pthread_mutex_lock(&s->bat_lock);
	/* the former top as the freeze's commit left it: closed */
	pf_delta_set_state(old_top->d, &s->top_hdr);
	old_top->mapped = s->top_mapped;
	s->top_mapped = 0;
	s->top_meta = nl.d->meta;
	/* Only what differs: the geometry is the same (the new delta was
	 * created from this header) and is read without locks. */
	s->top_hdr.in_use = nl.d->hdr.in_use;
	s->top_hdr.flags = nl.d->hdr.flags;
	s->top_hdr.ext_sectors = nl.d->hdr.ext_sectors;
	memset(s->page_dirty, 0, s->meta_pages);
	s->n_dirty = 0;
	pthread_mutex_unlock(&s->bat_lock);
	pthread_mutex_lock(&s->alloc_lock);
	s->alloc_head = nl.d->hdr.hdr_clusters;
	s->file_clusters = nl.d->file_clusters > s->alloc_head ?
				   nl.d->file_clusters : s->alloc_head;
	s->n_free = 0;	/* holes of the old top stay holes */
	pthread_mutex_unlock(&s->alloc_lock);
	old_levels = s->levels;
	s->levels = nlv;
	s->cap_levels = n + 2;
	s->n_levels = n + 1;
	s->top = &nlv[n];
	pthread_mutex_unlock(&s->levels_lock);
	nlv = old_levels;	/* freed below */
	memset(&nl, 0, sizeof(nl));
	prepared = false;
	stall = gate_thaw(s, t0);

	snprintf(guid_out, PF_GUID_LEN + 1, "%s", prep.guid);
	if (!durable) {
		ret = structural_not_durable(why, "snapshot taken");
		goto out;
	}
	pf_log(PF_LOG_INFO, "%s: snapshot %s created, new top %s (I/O stalled %" PRIu64 " us)",
	       s->dir, prep.guid, prep.file, stall);
	stack_emit(s, "snapshot", "%s created; new top delta %s; I/O stalled %" PRIu64 " us",
		   prep.guid, prep.file, stall);
out:
	pf_delta_close(nl.d);
	if (prepared)
		pf_image_snapshot_abort(s->dirfd, &prep);
	free(nlv);
	free(prep.file);
	pf_dd_free(dd);
	structural_end(s);
	return ret;
}
