// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Snapshot delete (see stack_i.h): the snapshot's only child is merged
 * into it (W5).  A read-only child is copied down into the snapshot's
 * file, which then takes the child's GUID; when the child is the top,
 * the snapshot's clusters the top lacks are copied up into it by
 * copy-on-write.  The copy runs in several threads, since several copies
 * in flight nearly double the throughput of one (dm-clone's hydration
 * measured the same).  The descriptor changes last, then the unused file
 * goes; a top that took the base's place takes its name too.
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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "manifest.h"

/* Snapshot delete: the copy, in several threads (several
 * copies in flight nearly double the throughput of one). */

#define MERGE_THREADS	4

struct merge {
	struct pf_stack *s;
	unsigned p, c;		/* parent (deleted snapshot), child */
	uint8_t *pdirty;	/* parent BAT pages changed (down merge) */
	atomic_uint_fast32_t next;	/* next virtual cluster to look at */
	atomic_uint_fast64_t head;	/* next free cluster of the parent */
	atomic_uint_fast64_t copied;	/* clusters copied */
	atomic_int err;
};

static void merge_error(struct merge *m, int err)
{
	int zero = 0;

	atomic_compare_exchange_strong(&m->err, &zero, err);
}

/* Child is the top: copy up every cluster of the parent that the top does
 * not map, through the copy-on-write path (ordinary top writes, W1-W4). */
static void *merge_up_worker(void *arg)
{
	struct merge *m = arg;
	struct pf_stack *s = m->s;
	uint32_t n = s->hdr->bat_entries, idx;
	int ret;

	while (!atomic_load(&m->err) &&
	       (idx = (uint32_t)atomic_fetch_add(&m->next, 1)) < n) {
		if (!level_clu(s, m->p, idx) || level_clu(s, m->c, idx))
			continue;
		gate_enter(s);
		ret = atomic_load(&s->failed) ?
			      -EIO :
			      stack_write_allocating(s, idx, 0, NULL, 0);
		gate_exit(s);
		if (ret)
			merge_error(m, ret);
		else
			atomic_fetch_add(&m->copied, 1);
	}
	return NULL;
}

/* Child is read-only: copy every cluster it maps down into the parent,
 * over the parent's own copy or into a new cluster at its end.  Nobody
 * reads those parent clusters: the child shadows them, and the parent's
 * own view is hidden. */
static void *merge_down_worker(void *arg)
{
	struct merge *m = arg;
	struct pf_stack *s = m->s;
	struct level *pl = &s->levels[m->p], *cl = &s->levels[m->c];
	const struct pf_header *ph = &pl->d->hdr, *ch = &cl->d->hdr;
	struct pf_file *pw = pl->d->f;	/* writable since the freeze */
	uint32_t n = ch->bat_entries, idx, src, dst;
	uint8_t *buf = stack_alloc_aligned(s, ph->cluster_bytes);
	int ret;

	if (!buf) {
		merge_error(m, -ENOMEM);
		return NULL;
	}
	while (!atomic_load(&m->err) &&
	       (idx = (uint32_t)atomic_fetch_add(&m->next, 1)) < n) {
		src = level_clu(s, m->c, idx);
		if (!src)
			continue;
		dst = level_clu(s, m->p, idx);
		if (!dst)
			dst = (uint32_t)atomic_fetch_add(&m->head, 1);
		ret = pf_delta_read(cl->d, buf, ph->cluster_bytes,
				    pf_clu_to_off(ch, src));
		if (!ret)
			ret = pw->ops->pwrite(pw, buf, ph->cluster_bytes,
					      pf_clu_to_off(ph, dst));
		if (ret) {
			merge_error(m, ret);
			break;
		}
		if (!level_clu(s, m->p, idx))
			pf_bat_store(ph, pl->d->meta, idx, dst);
		/* Written even when the entry was already set: an earlier
		 * attempt in this session may have set it in memory and
		 * failed before its page reached the disk. */
		__atomic_store_n(&m->pdirty[pf_idx_to_page(idx)], 1,
				 __ATOMIC_RELAXED);
		atomic_fetch_add(&m->copied, 1);
	}
	free(buf);
	return NULL;
}

static int merge_run(struct merge *m, void *(*fn)(void *))
{
	pthread_t t[MERGE_THREADS];
	unsigned i, started = 0;

	atomic_store(&m->next, 0);
	for (i = 0; i < MERGE_THREADS; i++)
		if (!pthread_create(&t[i], NULL, fn, m))
			started++;
		else
			break;
	if (!started)
		fn(m);
	for (i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	return atomic_load(&m->err);
}

/* Commit the parent's BAT pages that the copy changed, page 0 (with
 * header @h) always, through the delta's own wb_commit (W1-W3). */
static int commit_parent(struct merge *m, const struct pf_header *h)
{
	struct pf_stack *s = m->s;
	struct pf_delta *pd = s->levels[m->p].d;
	struct pf_delta_hook hook = CP_HOOK(
		s, [PF_DELTA_PAGE_WRITTEN] = CP_MD_BAT_WRITTEN);
	size_t pages = pf_div_round_up(pf_idx_entry_off(h->bat_entries),
				       PF_BAT_PAGE_SIZE), n = 0, i;
	uint32_t *list = malloc(pages * sizeof(*list));
	uint8_t *copies = stack_alloc_aligned(s, pages * PF_BAT_PAGE_SIZE);
	int ret = -ENOMEM;

	if (!list || !copies)
		goto out;
	/* readers look at the entries only, never at the header bytes */
	pf_header_encode(h, pd->meta);
	for (i = 0; i < pages; i++) {
		if (i && !m->pdirty[i])
			continue;
		memcpy(copies + n * PF_BAT_PAGE_SIZE,
		       pd->meta + i * PF_BAT_PAGE_SIZE, PF_BAT_PAGE_SIZE);
		list[n++] = (uint32_t)i;
	}
	ret = pf_delta_write_bat(pd, list, copies, n, &hook);
	if (!ret)
		pf_delta_set_state(pd, h);
out:
	free(list);
	free(copies);
	return ret;
}

/* Down merge: the parent's data and then its BAT are durable (W5: copy,
 * flush, commit the receiving BAT) before the descriptor changes. */
static int merge_down(struct merge *m, struct pf_why *why)
{
	struct pf_stack *s = m->s;
	struct level *pl = &s->levels[m->p], *cl = &s->levels[m->c];
	const struct pf_header *ph = &pl->d->hdr;
	struct pf_file *pw = pl->d->f;
	struct pf_header nh;
	uint64_t need = 0, head, pages;
	uint32_t idx;
	int ret;

	if (ph->bat_entries != cl->d->hdr.bat_entries ||
	    ph->cluster_bytes != cl->d->hdr.cluster_bytes)
		return pf_why_set(why, -EOPNOTSUPP,
				  "%s and %s differ in size or cluster size",
				  pl->d->name, cl->d->name);
	pages = pf_div_round_up(pf_idx_entry_off(ph->bat_entries),
				PF_BAT_PAGE_SIZE);
	m->pdirty = calloc(pages, 1);
	if (!m->pdirty)
		return -ENOMEM;
	for (idx = 0; idx < ph->bat_entries; idx++)
		if (!level_clu(s, m->p, idx) && level_clu(s, m->c, idx))
			need++;
	/* New clusters go after the last one mapped, in memory too: what
	 * an interrupted attempt left past it is a leak, overwritten now;
	 * what it mapped in this session but never committed stays its. */
	head = pf_delta_alloc_head(pl->d, UINT64_MAX);
	atomic_store(&m->head, head);
	if (need) {
		uint64_t off = head << ph->cluster_shift;
		uint64_t len = need << ph->cluster_shift;

		ret = pw->ops->allocate ? pw->ops->allocate(pw, off, len) :
					  pw->ops->truncate(pw, off + len);
		if (ret)
			return pf_why_set(why, ret, "%s: cannot allocate %" PRIu64
					  " clusters: %s", pl->d->name, need,
					  strerror(-ret));
		crash_point(s, CP_MD_GROWN);
	}
	ret = merge_run(m, merge_down_worker);
	if (ret)
		return pf_why_set(why, ret, "copy from %s into %s failed: %s",
				  cl->d->name, pl->d->name, strerror(-ret));
	crash_point(s, CP_MD_COPIED);
	ret = pf_delta_sync(pl->d);	/* W5: the copies, then ... */
	if (!ret) {
		crash_point(s, CP_MD_COPY_SYNCED);
		/* ... the BAT, page 0 with a closed header; it holds data
		 * if it mapped any or got any (an earlier failed attempt may
		 * have mapped everything already: need 0) */
		nh = *ph;
		nh.in_use = PF_INUSE_CLOSED;
		nh.ext_sectors = 0;
		if (need || head > ph->hdr_clusters || atomic_load(&m->copied))
			nh.flags &= ~PF_FLAG_EMPTY;
		ret = commit_parent(m, &nh);
	}
	if (ret)
		return pf_why_set(why, ret, "%s: cannot commit the merged clusters: %s",
				  pl->d->name, strerror(-ret));
	crash_point(s, CP_MD_BAT_SYNCED);
	return 0;
}

/* Level @l leaves the stack (frozen, levels_lock held); its struct is
 * copied to @gone. */
static void level_remove(struct pf_stack *s, unsigned l, struct level *gone)
{
	uint32_t idx, n = s->hdr->bat_entries;
	uint8_t v;

	for (idx = 0; idx < n; idx++) {
		v = level_load(s, idx);
		if (v != LEVEL_NONE && v >= l)
			level_store(s, idx, v == l ? (uint8_t)(l - 1) : v - 1);
	}
	*gone = s->levels[l];
	memmove(&s->levels[l], &s->levels[l + 1],
		(s->n_levels - l - 1) * sizeof(*s->levels));
	s->n_levels--;
	s->top = &s->levels[s->n_levels - 1];
}

/*
 * After an up merge out of the base: the top is the base now, and takes
 * the file name the base had (root.hds), as ploop's merges leave it.  The
 * file gets the name as a hard link first, durable before the descriptor
 * names it (W6); the descriptor is replaced; then the old name goes.  A
 * crash in between leaves an extra name of the same file, which the next
 * attempt finds and uses.  Where the file system has no hard links the
 * long name stays (nothing is lost).  Returns 0, or -EIO for a descriptor
 * that was replaced without its directory sync (descriptor.h: W7).
 */
static int take_base_name(struct pf_stack *s, const char *base_name,
			  struct pf_why *why)
{
	struct pf_delta *d = s->top->d;
	struct pf_dd *dd = NULL;
	struct stat a, b;
	bool committed = false;
	char *name, *old;
	int ret;

	name = strdup(base_name);
	if (!name)
		return 0;
	if (linkat(s->dirfd, d->name, s->dirfd, name, 0) < 0 &&
	    (errno != EEXIST || fstat(d->f->fd, &a) < 0 ||
	     fstatat(s->dirfd, name, &b, AT_SYMLINK_NOFOLLOW) < 0 ||
	     a.st_dev != b.st_dev || a.st_ino != b.st_ino)) {
		pf_log(PF_LOG_NOTICE, "%s: the top keeps the name %s: %s",
		       s->dir, d->name, strerror(errno));
		goto out;
	}
	if (pf_fsync_dir(s->dirfd))
		goto unlink_new;	/* not surely durable: not named */
	crash_point(s, CP_MU_BASE_LINKED);
	ret = structural_dd_current(s, &dd, NULL);
	if (!ret)
		ret = pf_dd_set_file(dd, dd->top_guid, name);
	if (!ret)
		ret = pf_dd_replace(s->dirfd, dd, &committed);
	pf_dd_free(dd);
	if (ret && !committed)
		goto unlink_new;
	/* the descriptor names it now */
	pthread_mutex_lock(&s->levels_lock);
	old = d->name;
	d->name = name;
	pthread_mutex_unlock(&s->levels_lock);
	name = NULL;
	if (ret) {	/* both names stay */
		stack_set_failed(s, "directory sync after replacing " PF_DD_NAME, ret);
		free(old);
		return structural_not_durable(why, "snapshot deleted");
	}
	crash_point(s, CP_MU_BASE_NAMED);
	if (!unlinkat(s->dirfd, old, 0))
		crash_point(s, CP_MU_OLD_NAME_UNLINKED);
	free(old);
	return 0;
unlink_new:
	unlinkat(s->dirfd, name, 0);
out:
	free(name);
	return 0;
}

/* Manifest steps (W9) as crash points. */
struct mf_points {
	struct pf_stack *s;
	enum crash_point tmp, renamed, dropped;
};

static void mf_step(void *ctx, enum pf_mf_step st)
{
	struct mf_points *c = ctx;

	crash_point(c->s, st == PF_MF_TMP_SYNCED ? c->tmp :
			  st == PF_MF_RENAMED	 ? c->renamed :
						   c->dropped);
}

/* The manifest of level @l's delta, or NULL (none, damaged,
 * unreadable). */
static struct pf_manifest *manifest_of(struct pf_stack *s, unsigned l)
{
	struct pf_manifest *m = NULL;

	if (pf_manifest_load(s->dirfd, s->levels[l].d->name, s->levels[l].d,
			     &m, NULL))
		return NULL;
	return m;
}

/*
 * After a down merge, durable and named by the descriptor: the parent's
 * file holds the child's clusters over its own, so its manifest is the
 * child's entries over the parent's (W9: published only now, for
 * content that is durable).  Without both manifests it stays unsealed
 * until the sealer (seal.c) or verify seals it.  Returns true if sealed.
 */
static bool merged_manifest(struct pf_stack *s, struct level *pl,
			    struct pf_manifest *pm, struct pf_manifest *cm)
{
	struct mf_points pts = { s, CP_MD_SUM_TMP, CP_MD_SUM_STORED, CP_NONE };
	struct pf_mf_hook hook = { mf_step, &pts };
	struct pf_manifest *m = NULL;
	struct pf_why why = { "" };
	struct stat st;
	int ret;

	if (!pm || !cm)
		return false;
	ret = fstat(pl->d->f->fd, &st) < 0 ? -errno : 0;
	if (!ret)
		ret = pf_manifest_compose(pm, cm, pl->guid,
					  (uint64_t)st.st_size, &m);
	if (!ret)
		ret = pf_manifest_store(s->dirfd, pl->d->name, m, &hook, &why);
	if (ret)
		pf_log(PF_LOG_NOTICE, "%s/%s: merged delta left unsealed: %s",
		       s->dir, pl->d->name, why.msg[0] ? why.msg : strerror(-ret));
	pf_manifest_free(m);
	return !ret;
}

/*
 * The delete of level @p (snapshot @guid) begins: refuse it while the
 * view has open handles (unless @force), and let the view open no more,
 * in one step under levels_lock, so that no open slips in between.
 */
static int delete_claim(struct pf_stack *s, unsigned p, const char *guid,
			bool force, struct pf_why *why)
{
	int ret = 0;

	pthread_mutex_lock(&s->levels_lock);
	if (!force && map_view_opens(s, guid))
		ret = pf_why_set(why, -EBUSY,
				 "snapshot %s is in use: its view is open; --force deletes it anyway",
				 guid);
	else
		s->levels[p].deleting = true;
	pthread_mutex_unlock(&s->levels_lock);
	return ret;
}

/* A delete of @guid that failed: its view opens again (if it has one). */
static void delete_unclaim(struct pf_stack *s, const char *guid)
{
	unsigned l;

	pthread_mutex_lock(&s->levels_lock);
	for (l = 0; l < s->n_levels; l++)
		if (!strcmp(s->levels[l].guid, guid))
			s->levels[l].deleting = false;
	pthread_mutex_unlock(&s->levels_lock);
}

int pf_stack_delete_snapshot(struct pf_stack *s, const char *guid,
			     unsigned flags, struct pf_stack_merge_info *info,
			     struct pf_why *why)
{
	struct merge m = { .s = s };
	struct level gone = { 0 };
	char canon[PF_GUID_LEN + 1];
	struct pf_dd *dd = NULL;
	struct timespec a, b;
	char *gone_file = NULL;
	unsigned p;
	uint64_t t0, stall;
	bool down, started = false, committed = false, durable = true;
	bool claimed = false;
	struct pf_file *ro_file = NULL;
	struct pf_manifest *pm = NULL, *cm = NULL;
	uint32_t idx;
	int ret;

	memset(info, 0, sizeof(*info));
	/* any form a user copies; compared and reported canonical */
	if (pf_guid_canon(guid, canon))
		return pf_why_set(why, -EINVAL, "invalid GUID '%.64s'", guid);
	guid = canon;
	ret = structural_begin(s, why);
	if (ret)
		return ret;
	clock_gettime(CLOCK_MONOTONIC, &a);
	ret = structural_dd_current(s, &dd, why);
	if (ret)
		goto out;
	for (p = 0; p + 1 < s->n_levels; p++)
		if (!strcmp(s->levels[p].guid, guid))
			break;
	if (!strcmp(guid, PF_TOP_GUID)) {
		ret = pf_why_set(why, -EINVAL, "%s is the top delta, not a snapshot",
				 guid);
		goto out;
	}
	if (p + 1 >= s->n_levels) {
		ret = pf_why_set(why, -ENOENT, "%s: no such snapshot in the image's current chain",
				 guid);
		goto out;
	}
	if (pf_dd_children(dd, guid) > 1) {
		ret = pf_why_set(why, -EMLINK,
				 "%s has more than one child snapshot: cannot merge",
				 guid);
		goto out;
	}
	ret = delete_claim(s, p, guid, flags & PF_STACK_DELETE_FORCE, why);
	if (ret)
		goto out;
	claimed = true;
	m.p = p;
	m.c = p + 1;
	started = true;
	down = m.c + 1 < s->n_levels;
	info->down = down;
	stack_emit(s, "merge-start", "deleting snapshot %s: merging %s %s %s", guid,
		   down ? s->levels[m.c].d->name : s->levels[p].d->name,
		   down ? "down into" : "up into",
		   down ? s->levels[p].d->name : s->levels[m.c].d->name);
	if (down) {
		struct mf_points pts = { s, CP_NONE, CP_NONE,
					 CP_MD_SUM_DROPPED };
		struct pf_mf_hook hook = { mf_step, &pts };

		/* W9: the parent's manifest goes, durably, before its file
		 * changes; both are kept in memory to seal the result. */
		pm = manifest_of(s, p);
		cm = manifest_of(s, m.c);
		ret = pf_manifest_drop(s->dirfd, s->levels[p].d->name, &hook);
		if (ret) {
			pf_why_fmt(why, "%s: cannot remove its manifest: %s",
				   s->levels[p].d->name, strerror(-ret));
			goto out;
		}
		pthread_mutex_lock(&s->levels_lock);
		s->levels[p].sealed = false;
		pthread_mutex_unlock(&s->levels_lock);
		/* The parent changes in place: mark it being deleted first,
		 * so a crash leaves a merge to complete, not a snapshot
		 * whose data is half its child's. */
		ret = pf_dd_set_temporary(dd, guid, true);
		if (!ret)
			ret = pf_dd_replace(s->dirfd, dd, &committed);
		if (ret && committed) {
			/* the mark may not survive: do not change the file */
			stack_set_failed(s, "directory sync after replacing " PF_DD_NAME,
					 ret);
			ret = structural_not_durable(why, "snapshot marked temporary");
			goto out;
		}
		if (ret) {
			pf_why_fmt(why, PF_DD_NAME ": cannot mark %s temporary: %s",
				   guid, strerror(-ret));
			goto out;
		}
		crash_point(s, CP_MD_MARKED);
		/* No view of the parent reads while it changes, and its file
		 * is opened for writing while nothing reads it at all. */
		t0 = gate_freeze(s);
		if (!s->levels[p].d->writable)
			ret = pf_delta_reopen(s->levels[p].d, s->dirfd, true,
					      &ro_file);
		if (!ret) {
			pthread_mutex_lock(&s->levels_lock);
			s->levels[p].hidden = true;
			pthread_mutex_unlock(&s->levels_lock);
		}
		gate_thaw(s, t0);
		if (ro_file)
			ro_file->ops->close(ro_file);
		if (ret)
			pf_why_fmt(why, "%s: cannot open for writing: %s",
				   s->levels[p].d->name, strerror(-ret));
		else
			ret = merge_down(&m, why);
	} else {
		ret = merge_run(&m, merge_up_worker);
		if (ret)
			pf_why_fmt(why, "copy from %s into the top failed: %s",
				   s->levels[p].d->name, strerror(-ret));
		if (!ret) {
			crash_point(s, CP_MU_COPIED);
			/* W5: the receiving BAT is durable first */
			ret = pf_stack_flush(s);
			if (ret)
				pf_why_fmt(why, "commit of the top failed: %s",
					   strerror(-ret));
			else
				crash_point(s, CP_MU_COMMITTED);
		}
	}
	if (ret)
		goto out;
	ret = pf_dd_delete_snapshot(dd, guid, down, &gone_file);
	if (!ret)
		ret = pf_dd_store_tmp(s->dirfd, dd);
	if (ret) {
		pf_why_fmt(why, PF_DD_NAME ": cannot prepare: %s", strerror(-ret));
		goto out;
	}
	crash_point(s, down ? CP_MD_DD_TMP : CP_MU_DD_TMP);

	t0 = gate_freeze(s);
	if (!down)	/* every cluster of the parent now in the top? */
		for (idx = 0; idx < s->hdr->bat_entries; idx++)
			if (level_load(s, idx) == p) {
				ret = -EAGAIN;
				break;
			}
	if (!ret)
		ret = structural_dd_switch(s, &durable);
	if (!ret)
		crash_point(s, down ? CP_MD_DD_RENAMED : CP_MU_DD_RENAMED);
	if (ret) {
		gate_thaw(s, t0);
		pf_dd_drop_tmp(s->dirfd);
		pf_why_fmt(why, "cannot replace " PF_DD_NAME ": %s",
			   strerror(-ret));
		goto out;
	}
	pthread_mutex_lock(&s->levels_lock);
	if (down) {
		/* the parent's file now holds the child's view */
		struct level *pl = &s->levels[p];

		memcpy(pl->guid, s->levels[m.c].guid, sizeof(pl->guid));
		pl->hidden = s->levels[m.c].hidden;
		pl->deleting = s->levels[m.c].deleting;
		pl->mapped = 0;
		for (idx = 0; idx < pl->d->hdr.bat_entries; idx++)
			pl->mapped += level_clu(s, p, idx) != 0;
		level_remove(s, m.c, &gone);
	} else {
		level_remove(s, p, &gone);
	}
	pthread_mutex_unlock(&s->levels_lock);
	stall = gate_thaw(s, t0);

	/* W5: the merged delta goes only after the descriptor dropped it */
	pf_delta_close(gone.d);
	if (!durable) {	/* the old descriptor may come back: keep it */
		ret = structural_not_durable(why, "snapshot deleted");
		goto out;
	}
	if (down) {
		bool sealed = merged_manifest(s, &s->levels[p], pm, cm);

		pthread_mutex_lock(&s->levels_lock);
		s->levels[p].sealed = sealed;
		pthread_mutex_unlock(&s->levels_lock);
	}
	/* W9: the manifest of the file that goes is dropped first: its
	 * name may be taken by another delta (take_base_name) */
	{
		struct mf_points pts = { s, CP_NONE, CP_NONE,
					 down ? CP_MD_GONE_SUM_DROPPED :
						CP_MU_GONE_SUM_DROPPED };
		struct pf_mf_hook hook = { mf_step, &pts };

		int err = pf_manifest_drop(s->dirfd, gone_file, &hook);

		if (err) {
			pf_log(PF_LOG_WARNING, "%s/%s: cannot remove the manifest of the merged delta: %s; the delta stays",
			       s->dir, gone_file, strerror(-err));
			goto done;
		}
	}
	if (unlinkat(s->dirfd, gone_file, 0) < 0) {
		pf_log(PF_LOG_WARNING, "%s/%s: cannot remove the merged delta: %s",
		       s->dir, gone_file, strerror(errno));
	} else {
		crash_point(s, down ? CP_MD_UNLINKED : CP_MU_UNLINKED);
		if (!down && p == 0)
			ret = take_base_name(s, gone_file, why);
		if (ret)
			goto out;
	}
done:
	clock_gettime(CLOCK_MONOTONIC, &b);
	info->clusters = atomic_load(&m.copied);
	info->bytes = info->clusters * s->hdr->cluster_bytes;
	info->usec = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000 +
		     (uint64_t)((b.tv_nsec - a.tv_nsec) / 1000);
	info->stall_us = stall;
	stack_emit(s, "merge-done", "snapshot %s deleted: %" PRIu64 " clusters copied in %" PRIu64
		   " ms; I/O stalled %" PRIu64 " us", guid, info->clusters,
		   info->usec / 1000, stall);
out:
	if (ret && claimed)
		delete_unclaim(s, guid);
	if (ret && started)
		stack_emit(s, "merge-failed", "deleting snapshot %s failed: %s", guid,
			   why->msg);
	free(m.pdirty);
	free(gone_file);
	pf_manifest_free(pm);
	pf_manifest_free(cm);
	pf_dd_free(dd);
	structural_end(s);
	return ret;
}
