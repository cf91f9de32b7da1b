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

#include "check.h"
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
static struct pf_header new_top_header(const struct pf_header *top,
				       uint32_t in_use)
{
	struct pf_header h = *top;

	/* same geometry and version as the old top, empty */
	h.in_use = in_use;
	h.flags = PF_FLAG_EMPTY;
	h.ext_sectors = 0;
	return h;
}

/* Length of @name without the ".{uuid}" suffixes new tops get. */
static size_t name_stem(const char *name)
{
	size_t len = strlen(name);
	char guid[PF_GUID_LEN + 1];

	while (len > PF_GUID_LEN + 1 && name[len - PF_GUID_LEN - 1] == '.') {
		memcpy(guid, name + len - PF_GUID_LEN, PF_GUID_LEN);
		guid[PF_GUID_LEN] = 0;
		if (!pf_guid_valid(guid))
			break;
		len -= PF_GUID_LEN + 1;
	}
	return len;
}

int pf_image_top_name(const char *base_file, char **out, struct pf_why *why)
{
	char fguid[PF_GUID_LEN + 1];
	size_t stem = name_stem(base_file);

	*out = NULL;
	pf_guid_new(fguid);
	if (asprintf(out, "%.*s.%s", (int)stem, base_file, fguid) < 0) {
		*out = NULL;
		return -ENOMEM;
	}
	if (!pf_dd_file_name_valid(*out)) {
		free(*out);
		*out = NULL;
		return pf_why_set(why, -EINVAL,
				  "the new delta's name would be longer than NAME_MAX (base file \"%.40s...\")",
				  base_file);
	}
	return 0;
}

/* The file of the base of the active chain of @dd, or NULL. */
static const char *active_base_file(const struct pf_dd *dd)
{
	size_t *chain = NULL, n = 0;
	const char *file = NULL;

	if (!pf_dd_chain(dd, &chain, &n, NULL) && n)
		file = dd->images[chain[0]].file;
	free(chain);
	return file;
}

/* The GUID for a new snapshot: @want, checked and made canonical, or a
 * fresh one. */
static int snapshot_guid(const struct pf_dd *dd, const char *want, char *out,
			 struct pf_why *why)
{
	if (!want) {
		pf_guid_new(out);
		return 0;
	}
	if (pf_guid_canon(want, out) || !strcmp(out, PF_TOP_GUID) ||
	    !strcmp(out, PF_NONE_GUID))
		return pf_why_set(why, -EINVAL, "%s: not a valid snapshot GUID",
				  want);
	if (pf_dd_find_image(dd, out) || pf_dd_find_shot(dd, out))
		return pf_why_set(why, -EEXIST, "GUID %s is already in use", out);
	return 0;
}

int pf_image_snapshot_prepare(int dirfd, struct pf_dd *dd,
			      const struct pf_header *top, const char *want,
			      uint32_t in_use, const struct pf_delta_hook *hook,
			      struct pf_snap_prep *p, struct pf_why *why)
{
	struct pf_header h = new_top_header(top, in_use);
	const char *base = active_base_file(dd);
	int ret;

	memset(p, 0, sizeof(*p));
	if (dd->n_images >= PF_MAX_DELTAS)
		return pf_why_set(why, -EMLINK, "too many deltas (%zu, at most %d)",
				  dd->n_images, PF_MAX_DELTAS);
	if (!base)	/* not in a validated descriptor */
		return pf_why_set(why, -EINVAL, PF_DD_NAME " has no active chain");
	ret = snapshot_guid(dd, want, p->guid, why);
	if (!ret)
		ret = pf_image_top_name(base, &p->file, why);
	if (ret)
		return ret;
	/* W6: written and synced (file and directory entry) before any
	 * descriptor names it ... */
	ret = pf_delta_create(dirfd, p->file, &h, why);
	if (ret) {
		struct pf_why w = *why;

		pf_why_fmt(why, "%s: %s", p->file, w.msg);
		goto err_name;
	}
	if (hook && hook->step)
		hook->step(hook->ctx, PF_DELTA_CREATED);
	/* ... then the descriptor that names it, in its tmp file */
	ret = pf_dd_add_snapshot(dd, p->guid, p->file);
	if (ret) {
		pf_why_fmt(why, PF_DD_NAME ": cannot add the snapshot: %s",
			   strerror(-ret));
		goto err_file;
	}
	ret = pf_dd_store_tmp(dirfd, dd);
	if (ret) {
		pf_why_fmt(why, PF_DD_NAME ": cannot prepare: %s",
			   strerror(-ret));
		goto err_file;
	}
	return 0;
err_file:
	unlinkat(dirfd, p->file, 0);
err_name:
	free(p->file);
	p->file = NULL;
	return ret;
}

void pf_image_snapshot_abort(int dirfd, struct pf_snap_prep *p)
{
	pf_dd_drop_tmp(dirfd);
	if (p->file)
		unlinkat(dirfd, p->file, 0);
	free(p->file);
	p->file = NULL;
}

int pf_image_snapshot(int dirfd, struct pf_dd *dd, const struct pf_header *top,
		      const char *want, struct pf_snap_prep *p,
		      struct pf_why *why)
{
	bool committed;
	int ret;

	ret = pf_image_snapshot_prepare(dirfd, dd, top, want, PF_INUSE_CLOSED,
					NULL, p, why);
	if (ret)
		return ret;
	ret = pf_dd_commit_tmp(dirfd, &committed);
	if (!ret)
		return 0;
	if (committed)	/* descriptor.h: keep every file either names */
		return pf_why_set(why, ret,
				  PF_DD_NAME " replaced, but syncing the directory failed: %s (snapshot %s may be lost in a crash)",
				  strerror(-ret), p->guid);
	pf_why_fmt(why, PF_DD_NAME ": cannot update: %s", strerror(-ret));
	pf_image_snapshot_abort(dirfd, p);
	return ret;
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
	struct pf_header h = new_top_header(top, PF_INUSE_CLOSED);
	const struct pf_dd_shot *s;
	char *name = NULL, *old_top = NULL;
	char target[PF_GUID_LEN + 1];
	bool committed = false;
	const char *base;
	int ret;

	*new_file = NULL;
	if (pf_guid_canon(guid, target))
		return pf_why_set(why, -EINVAL, "invalid GUID");
	s = pf_dd_find_shot(dd, target);
	if (!s)
		return pf_why_set(why, -ENOENT, "no snapshot %s in " PF_DD_NAME,
				  target);
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
	ret = pf_image_top_name(base, &name, why);
	if (ret)
		return ret;

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

/* The first corruption a check reports: "<file>: <problem>". */
struct first_corrupt {
	bool found;
	char msg[sizeof(((struct pf_why *)0)->msg)];
};

static void note_corrupt(void *ctx, const char *file, enum pf_finding kind,
			 const char *msg)
{
	struct first_corrupt *fc = ctx;

	if (kind != PF_FIND_CORRUPT || fc->found)
		return;
	fc->found = true;
	snprintf(fc->msg, sizeof(fc->msg), "%s: %s", file, msg);
}

void pf_image_close_chain(struct pf_delta **v, size_t n)
{
	size_t i;

	if (!v)
		return;
	for (i = 0; i < n; i++)
		pf_delta_close(v[i]);
	free(v);
}

int pf_image_open_chain(int dirfd, const struct pf_dd *dd, const size_t *chain,
			size_t n, int top_flags, bool check,
			const struct pf_delta_io *io, struct pf_delta ***out,
			struct pf_why *why)
{
	struct first_corrupt fc = { false, "" };
	struct pf_check_report r = { .emit = note_corrupt, .ctx = &fc };
	struct pf_delta **v = calloc(n ? n : 1, sizeof(*v));
	size_t i;
	int ret = 0;

	*out = NULL;
	if (!v)
		return -ENOMEM;
	for (i = 0; i < n && !ret; i++) {
		const char *name = dd->images[chain[i]].file;
		struct pf_why w = { "" };

		ret = pf_delta_open(dirfd, name, i + 1 == n ? top_flags : 0, io,
				    &v[i], &w);
		if (ret)
			pf_why_fmt(why, "%s: %s", name,
				   w.msg[0] ? w.msg : strerror(-ret));
	}
	/* the stack first: a delta of the wrong size or cluster size is
	 * the problem to name, not the entries that follow from it */
	if (!ret && check && n)
		pf_check_stack(dd, v, n, &r);
	for (i = 0; !ret && check && i < n && !fc.found; i++)
		ret = pf_check_delta(v[i], &r);
	if (!ret && fc.found)
		ret = pf_why_set(why, -EUCLEAN, "%s", fc.msg);
	if (ret) {
		pf_image_close_chain(v, n);
		return ret;
	}
	*out = v;
	return 0;
}
