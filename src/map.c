// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The merged map of the stack (see stack_i.h): BAT updates of the top
 * delta and its dirty pages, the lookups of the snapshot views, and the
 * allocation of clusters in the top file (free list, preallocation).
 */
#include "stack_i.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "log.h"

/* BAT updates (top delta) */

void map_page_dirty(struct pf_stack *s, uint32_t page)
{
	if (!s->page_dirty[page]) {
		s->page_dirty[page] = 1;
		s->dirty_list[s->n_dirty++] = page;
	}
}

/* Map @idx to file cluster @clu in the top delta (0: unmap).  Called with
 * the cluster's whole range locked, after the data is written (W1 is kept
 * by the commit, which syncs data before it writes the page). */
int map_top_set(struct pf_stack *s, uint32_t idx, uint32_t clu,
		uint8_t new_level)
{
	int ret = 0;

	pthread_mutex_lock(&s->bat_lock);
	if (!clu && s->n_pending == s->cap_pending) {
		size_t cap = s->cap_pending ? s->cap_pending * 2 : 64;
		uint32_t *p = realloc(s->pending_free, cap * sizeof(*p));

		if (!p) {
			ret = -ENOMEM;
			goto out;
		}
		s->pending_free = p;
		s->cap_pending = cap;
	}
	if (clu) {
		s->top_mapped++;
		if (s->top_hdr.flags & PF_FLAG_EMPTY) {
			s->top_hdr.flags &= ~PF_FLAG_EMPTY;
			pf_header_encode(&s->top_hdr, s->top_meta);
			map_page_dirty(s, 0);
		}
	} else {
		s->top_mapped--;
		/* W4: freed only after this transaction's commit */
		s->pending_free[s->n_pending++] =
			level_clu(s, s->n_levels - 1, idx);
	}
	pf_bat_store(&s->top_hdr, s->top_meta, idx, clu);
	level_store(s, idx, new_level);
	map_page_dirty(s, pf_idx_to_page(idx));
out:
	pthread_mutex_unlock(&s->bat_lock);
	return ret;
}

/* Allocation of clusters in the top file */

int map_punch(struct level *lv, uint64_t off, uint64_t len)
{
	return lv->d->f->ops->punch(lv->d->f, off, len);
}

int map_free_push(struct pf_stack *s, uint32_t clu)
{
	if (s->n_free == s->cap_free) {
		size_t cap = s->cap_free ? s->cap_free * 2 : 64;
		uint32_t *p = realloc(s->free_list, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		s->free_list = p;
		s->cap_free = cap;
	}
	s->free_list[s->n_free++] = clu;
	return 0;
}

/* Give the top file's clusters [first, first + n) space (file.h
 * allocate), or just grow the file where the backend cannot. */
int map_space_for(struct pf_stack *s, uint64_t first, uint64_t n)
{
	struct pf_file *f = s->top->d->f;
	uint64_t off = first << s->hdr->cluster_shift;
	uint64_t len = n << s->hdr->cluster_shift;
	int ret;

	if (!f->ops->allocate) {
		if (first + n <= s->file_clusters)
			return 0;
		return f->ops->truncate(f, off + len);
	}
	ret = f->ops->allocate(f, off, len);
	if (ret) {
		/* A failed fallocate may keep what it got (and grow the
		 * file): give it back, so a held write does not take the
		 * host's last free space nor leave a partial cluster. */
		if (first >= s->file_clusters)
			(void)f->ops->truncate(f, s->file_clusters
						       << s->hdr->cluster_shift);
		else
			(void)f->ops->punch(f, off, len);
	}
	return ret;
}

/*
 * A cluster of the top file that reads as zeros and nothing references:
 * a punched hole from the free list (W4), or the next one at the end,
 * growing the file in PREALLOC_BYTES steps.  Space is allocated here, so
 * a full host filesystem shows as -ENOSPC before any data is written.
 */
int map_cluster_alloc(struct pf_stack *s, uint32_t *clu)
{
	const struct pf_header *h = s->hdr;
	uint64_t grow = 0, max = pf_max_file_clusters(h);
	int ret = 0;

	pthread_mutex_lock(&s->alloc_lock);
	if (s->n_free) {
		*clu = s->free_list[s->n_free - 1];
		ret = map_space_for(s, *clu, 1);
		if (!ret)
			s->n_free--;
		goto out;
	}
	if (s->alloc_head >= max) {
		ret = -ENOSPC;	/* the BAT cannot address more */
		goto out;
	}
	if (s->alloc_head >= s->file_clusters) {
		/* >= 1: clusters are at most PREALLOC_BYTES */
		grow = PREALLOC_BYTES >> h->cluster_shift;
		if (grow > max - s->file_clusters)
			grow = max - s->file_clusters;
		ret = map_space_for(s, s->file_clusters, grow);
		if (ret == -ENOSPC && grow > 1) {
			grow = 1;	/* room for one more, maybe */
			ret = map_space_for(s, s->file_clusters, grow);
		}
		if (ret)
			goto out;
		s->file_clusters += grow;
	}
	*clu = (uint32_t)s->alloc_head++;
out:
	pthread_mutex_unlock(&s->alloc_lock);
	if (!ret && grow)
		crash_point(s, CP_ALLOC_FILE_GROWN);
	return ret;
}

/* Level @view (a snapshot) or, at LEVEL_NONE, the whole stack: the level
 * that maps @idx in that view, LEVEL_NONE if none. */
uint8_t map_view_level(const struct pf_stack *s, uint8_t view, uint32_t idx)
{
	int l;

	if (view == LEVEL_NONE)
		return level_load(s, idx);
	for (l = view; l >= 0; l--)
		if (level_clu(s, (unsigned)l, idx))
			return (uint8_t)l;
	return LEVEL_NONE;
}

/* The level of the snapshot view @guid, LEVEL_NONE if there is none
 * (any more).  Inside the gate: levels do not change. */
uint8_t map_view_find(const struct pf_stack *s, const char *guid)
{
	unsigned l;

	for (l = 0; l + 1 < s->n_levels; l++)
		if (!strcmp(s->levels[l].guid, guid))
			return s->levels[l].hidden ? LEVEL_NONE : (uint8_t)l;
	return LEVEL_NONE;
}

unsigned map_view_opens(const struct pf_stack *s, const char *guid)
{
	size_t i;

	for (i = 0; i < s->n_holds; i++)
		if (!strcmp(s->holds[i].guid, guid))
			return s->holds[i].opens;
	return 0;
}

int pf_stack_view_open(struct pf_stack *s, const char *guid)
{
	char canon[PF_GUID_LEN + 1];
	struct view_hold *h;
	unsigned l;
	size_t i;
	int ret = -ENOENT;

	if (pf_guid_canon(guid, canon))
		return -ENOENT;
	pthread_mutex_lock(&s->levels_lock);
	for (l = 0; l + 1 < s->n_levels; l++)
		if (!strcmp(s->levels[l].guid, canon))
			break;
	if (l + 1 >= s->n_levels || s->levels[l].hidden ||
	    s->levels[l].deleting)
		goto out;
	for (i = 0; i < s->n_holds; i++)
		if (!strcmp(s->holds[i].guid, canon))
			break;
	if (i == s->n_holds) {
		if (s->n_holds == s->cap_holds) {
			size_t cap = s->cap_holds ? 2 * s->cap_holds : 8;

			h = realloc(s->holds, cap * sizeof(*h));
			if (!h) {
				ret = -ENOMEM;
				goto out;
			}
			s->holds = h;
			s->cap_holds = cap;
		}
		memcpy(s->holds[i].guid, canon, sizeof(canon));
		s->holds[i].opens = 0;
		s->n_holds++;
	}
	s->holds[i].opens++;
	ret = 0;
out:
	pthread_mutex_unlock(&s->levels_lock);
	return ret;
}

void pf_stack_view_close(struct pf_stack *s, const char *guid)
{
	char canon[PF_GUID_LEN + 1];
	size_t i;

	if (pf_guid_canon(guid, canon))
		return;
	pthread_mutex_lock(&s->levels_lock);
	for (i = 0; i < s->n_holds; i++)
		if (!strcmp(s->holds[i].guid, canon)) {
			if (!--s->holds[i].opens)
				s->holds[i] = s->holds[--s->n_holds];
			break;
		}
	pthread_mutex_unlock(&s->levels_lock);
}

/* Discard */

/* true if a delta below the top maps @idx */
bool map_lower_maps(const struct pf_stack *s, uint32_t idx)
{
	unsigned l;

	for (l = 0; l + 1 < s->n_levels; l++)
		if (level_clu(s, l, idx))
			return true;
	return false;
}
