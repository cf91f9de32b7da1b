// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Image creation, offline snapshots and offline snapshot-switch (see
 * image.h).
 *
 * Crash safety (W6): every step before the descriptor rename leaves the
 * old descriptor naming only complete files, so a crash leaves at most
 * an unreferenced new delta behind; the rename is the commit point.  A
 * file that only the old descriptor names (the discarded top of a
 * switch) is unlinked after the commit, so a crash before it leaves that
 * file unreferenced, never a descriptor naming a missing file.
 */
#include "image.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "delta.h"

int pf_image_create(int dirfd, const struct pf_header *h, struct pf_why *why)
{
	struct pf_dd *dd = NULL;
	bool committed = false;
	int ret;

	if (faccessat(dirfd, PF_DD_NAME, F_OK, AT_SYMLINK_NOFOLLOW) == 0 ||
	    faccessat(dirfd, PF_BASE_NAME, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		return pf_why_set(why, -EEXIST,
				  "already holds an image (" PF_DD_NAME
				  " or " PF_BASE_NAME " exists)");
	/* W6: the delta is complete and durable before the descriptor
	 * that names it exists. */
	ret = pf_delta_create(dirfd, PF_BASE_NAME, h, why);
	if (ret) {
		struct pf_why w = *why;

		return pf_why_set(why, ret, PF_BASE_NAME ": %s", w.msg);
	}
	ret = pf_dd_new(h->size_sectors, h->cluster_sectors, h->heads,
			h->cylinders, PF_BASE_NAME, &dd);
	if (!ret)
		ret = pf_dd_replace(dirfd, dd, &committed);
	pf_dd_free(dd);
	if (ret) {
		/* a descriptor that made it into the directory names it */
		if (!committed)
			unlinkat(dirfd, PF_BASE_NAME, 0);
		return pf_why_set(why, ret, PF_DD_NAME ": cannot write: %s",
				  strerror(-ret));
	}
	return 0;
}

/* A fresh header for a new empty top with the geometry of @top. */
static struct pf_header new_top_header(const struct pf_header *top)
{
	struct pf_header h = *top;

	/* same geometry and version as the old top, empty, closed */
	h.in_use = PF_INUSE_CLOSED;
	h.flags = PF_FLAG_EMPTY;
	h.ext_sectors = 0;
	return h;
}

/* "<base_file>.{uuid}", as ploop names a new top: the uuid fresh and
 * independent of any snapshot GUID.  NULL if out of memory. */
static char *new_top_name(const char *base_file)
{
	char fguid[PF_GUID_LEN + 1];
	char *name;

	pf_guid_new(fguid);
	if (asprintf(&name, "%s.%s", base_file, fguid) < 0)
		return NULL;
	return name;
}

int pf_image_snapshot(int dirfd, struct pf_dd *dd, const struct pf_header *top,
		      const char *base_file, const char *snap_guid,
		      char **new_file, struct pf_why *why)
{
	struct pf_header h = new_top_header(top);
	bool committed = false;
	char *name;
	int ret;

	*new_file = NULL;
	name = new_top_name(base_file);
	if (!name)
		return -ENOMEM;
	/* W6: written and synced (file and directory entry) before the
	 * descriptor names it ... */
	ret = pf_delta_create(dirfd, name, &h, why);
	if (ret) {
		struct pf_why w = *why;

		pf_why_fmt(why, "%s: %s", name, w.msg);
		free(name);
		return ret;
	}
	/* ... and the descriptor is replaced atomically. */
	ret = pf_dd_add_snapshot(dd, snap_guid, name);
	if (!ret)
		ret = pf_dd_replace(dirfd, dd, &committed);
	if (ret) {
		pf_why_fmt(why, PF_DD_NAME ": cannot update: %s",
			   strerror(-ret));
		if (!committed)
			unlinkat(dirfd, name, 0);
		free(name);
		return ret;
	}
	*new_file = name;
	return 0;
}

/* The file of the base of @guid's chain, or NULL. */
static const char *chain_base_file(const struct pf_dd *dd, const char *guid)
{
	const struct pf_dd_image *img;
	const char *cur = guid, *parent;
	size_t steps;

	/* a validated descriptor has no cycle; the bound is for safety */
	for (steps = 0; steps <= dd->n_shots; steps++) {
		parent = pf_dd_parent(dd, cur);
		if (!parent)
			return NULL;
		if (!strcasecmp(parent, PF_NONE_GUID)) {
			img = pf_dd_find_image(dd, cur);
			return img ? img->file : NULL;
		}
		cur = parent;
	}
	return NULL;
}

int pf_image_switch(int dirfd, struct pf_dd *dd, const struct pf_header *top,
		    const char *guid, char **new_file, struct pf_why *why)
{
	struct pf_header h = new_top_header(top);
	const struct pf_dd_shot *s;
	char *name = NULL, *old_top = NULL;
	char target[PF_GUID_LEN + 1];
	bool committed = false;
	const char *base;
	int ret;

	*new_file = NULL;
	if (!pf_guid_valid(guid))
		return pf_why_set(why, -EINVAL, "invalid GUID");
	s = pf_dd_find_shot(dd, guid);
	if (!s)
		return pf_why_set(why, -ENOENT, "no snapshot %s in " PF_DD_NAME,
				  guid);
	memcpy(target, s->guid, sizeof(target));
	if (!strcasecmp(target, dd->top_guid))
		return pf_why_set(why, -EINVAL,
				  "%s is the current top, not a snapshot to switch to",
				  target);
	if (s->temporary)
		return pf_why_set(why, -EINVAL,
				  "cannot switch to snapshot %s: it is being deleted (temporary)",
				  target);
	base = chain_base_file(dd, target);
	if (!base)	/* not in a validated descriptor */
		return pf_why_set(why, -EINVAL,
				  "snapshot %s has no base in " PF_DD_NAME,
				  target);
	/* what pf_dd_switch refuses besides the GUID, said precisely */
	if (pf_dd_children(dd, dd->top_guid))
		return pf_why_set(why, -EINVAL,
				  "the top %s has a snapshot below it in " PF_DD_NAME,
				  dd->top_guid);
	if (strcasecmp(dd->top_guid, PF_TOP_GUID) != 0 &&
	    (pf_dd_find_shot(dd, PF_TOP_GUID) ||
	     pf_dd_find_image(dd, PF_TOP_GUID)))
		return pf_why_set(why, -EINVAL,
				  "snapshot " PF_TOP_GUID " is not the top: the new top cannot take that GUID");
	name = new_top_name(base);
	if (!name)
		return -ENOMEM;
	if (!pf_dd_file_name_valid(name)) {
		ret = pf_why_set(why, -EINVAL,
				 "the new delta's name would be longer than NAME_MAX (base file \"%.40s...\")",
				 base);
		free(name);
		return ret;
	}

	/* All checks first (pure, in memory): a refused switch creates no
	 * file.  From here @dd describes the new image. */
	ret = pf_dd_switch(dd, target, name, &old_top);
	if (ret) {
		pf_why_fmt(why, "cannot switch to snapshot %s: %s", target,
			   strerror(-ret));
		free(name);
		return ret;
	}

	/* W6: the new top is written and synced (file and directory entry)
	 * before the descriptor names it ... */
	ret = pf_delta_create(dirfd, name, &h, why);
	if (ret) {
		struct pf_why w = *why;

		pf_why_fmt(why, "%s: %s", name, w.msg);
		goto out_free;
	}
	/* ... and the descriptor is replaced atomically. */
	ret = pf_dd_replace(dirfd, dd, &committed);
	if (ret) {
		if (committed) {
			/* the new descriptor may or may not survive a crash:
			 * keep every file either one names */
			pf_why_fmt(why,
				   PF_DD_NAME " replaced, but syncing the directory failed: %s (%s kept)",
				   strerror(-ret), old_top);
		} else {
			pf_why_fmt(why, PF_DD_NAME ": cannot update: %s",
				   strerror(-ret));
			unlinkat(dirfd, name, 0);
		}
		goto out_free;
	}
	/*
	 * Committed: nothing names the old top any more.  If the unlink
	 * fails, or a crash undoes it, the file is only an unreferenced
	 * delta, like the leftover of an interrupted snapshot; so neither
	 * is an error, and the directory is not synced for it.
	 */
	unlinkat(dirfd, old_top, 0);
	*new_file = name;
	name = NULL;

out_free:
	free(old_top);
	free(name);
	return ret;
}
