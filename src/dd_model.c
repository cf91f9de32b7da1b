// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The descriptor's model: the struct pf_dd that descriptor.c reads from
 * and writes to DiskDescriptor.xml, without XML.  Lookups by GUID, the
 * active chain, the cross-checks every parsed descriptor passes, and the
 * edits of snapshot, delete, merge and switch.
 *
 * Invariants: those of a struct pf_dd (descriptor.c).  Every edit here
 * keeps them, and an edit that fails leaves @dd as it was: edits check
 * everything and allocate what they need before they change anything.
 * The edits never touch the document a parsed descriptor keeps; they
 * rename, remove and append images and shots, and pf_dd_format() puts
 * the document in step (xml_pos).
 */
#include "descriptor.h"
#include "descriptor_i.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "format.h"

/* Helpers for messages */

/*
 * Copy @s into @buf for quoting in a one-line reason: non-printable bytes
 * become '?' so a hostile value cannot break the line, and long values are
 * cut with "..." so the reason still fits in struct pf_why.
 */
const char *dd_show(const char *s, char *buf, size_t len)
{
	size_t i, n = strlen(s);

	for (i = 0; i < n && i + 1 < len; i++) {
		unsigned char c = (unsigned char)s[i];

		buf[i] = (c < 0x20 || c == 0x7f) ? '?' : s[i];
	}
	buf[i] = '\0';
	if (i < n && len > 4)
		memcpy(buf + len - 4, "...", 4);
	return buf;
}


/* Lookup */

/*
 * The index of the entry of GUID @guid among the @n entries of @size
 * bytes at @first, each holding its canonical GUID at the offset of
 * @first's.  Lookups take a GUID in any form pf_guid_canon() accepts; the
 * stored ones are canonical (see the invariants).
 */
static ssize_t guid_index(const char *first, size_t n, size_t size,
			  const char *guid)
{
	char g[PF_GUID_LEN + 1];
	size_t i;

	if (pf_guid_canon(guid, g))
		return -1;
	for (i = 0; i < n; i++)
		if (!strcmp(first + i * size, g))
			return (ssize_t)i;
	return -1;
}

ssize_t dd_image_index(const struct pf_dd *dd, const char *guid)
{
	return dd->n_images ? guid_index(dd->images[0].guid, dd->n_images,
					 sizeof(dd->images[0]), guid) : -1;
}

ssize_t dd_shot_index(const struct pf_dd *dd, const char *guid)
{
	return dd->n_shots ? guid_index(dd->shots[0].guid, dd->n_shots,
					sizeof(dd->shots[0]), guid) : -1;
}

const struct pf_dd_image *pf_dd_find_image(const struct pf_dd *dd,
					   const char *guid)
{
	ssize_t i = dd && guid ? dd_image_index(dd, guid) : -1;

	return i < 0 ? NULL : &dd->images[i];
}

const struct pf_dd_shot *pf_dd_find_shot(const struct pf_dd *dd,
					 const char *guid)
{
	ssize_t i = dd && guid ? dd_shot_index(dd, guid) : -1;

	return i < 0 ? NULL : &dd->shots[i];
}

size_t pf_dd_children(const struct pf_dd *dd, const char *guid)
{
	char g[PF_GUID_LEN + 1];
	size_t i, n = 0;

	if (!dd || pf_guid_canon(guid, g))
		return 0;
	for (i = 0; i < dd->n_shots; i++)
		if (!strcmp(dd->shots[i].parent, g))
			n++;
	return n;
}

const char *pf_dd_parent(const struct pf_dd *dd, const char *guid)
{
	const struct pf_dd_shot *s = pf_dd_find_shot(dd, guid);

	return s ? s->parent : NULL;
}

int pf_dd_chain(const struct pf_dd *dd, size_t **out, size_t *n,
		struct pf_why *why)
{
	return pf_dd_chain_of(dd, dd->top_guid, out, n, why);
}

int pf_dd_chain_of(const struct pf_dd *dd, const char *guid, size_t **out,
		   size_t *n, struct pf_why *why)
{
	bool top = !strcasecmp(guid, dd->top_guid);
	bool *seen = NULL;
	size_t *chain, len = 0, i;
	ssize_t cur, img;
	int ret;

	*out = NULL;
	*n = 0;
	if (dd->n_shots == 0) {
		/* no <Snapshots>: a lone image is its own chain */
		if (dd->n_images != 1)
			return pf_why_set(why, -EINVAL,
					  "no <Snapshots> and %zu images: cannot tell the top",
					  dd->n_images);
		chain = malloc(sizeof(*chain));
		if (!chain)
			return -ENOMEM;
		chain[0] = 0;
		*out = chain;
		*n = 1;
		return 0;
	}

	cur = dd_shot_index(dd, guid);
	if (cur < 0 && top)
		return pf_why_set(why, -EINVAL, "<TopGUID> %s names no shot",
				  guid);
	if (cur < 0)
		return pf_why_set(why, -ENOENT, "no snapshot %s", guid);
	chain = malloc(dd->n_shots * sizeof(*chain));
	seen = calloc(dd->n_shots, sizeof(*seen));
	if (!chain || !seen) {
		ret = -ENOMEM;
		goto err_free;
	}

	for (;;) {
		const struct pf_dd_shot *s = &dd->shots[cur];

		if (seen[cur]) {
			ret = pf_why_set(why, -EINVAL,
					 "snapshot chain from %s has a cycle at %s",
					 top ? "TopGUID" : guid, s->guid);
			goto err_free;
		}
		seen[cur] = true;
		img = dd_image_index(dd, s->guid);
		if (img < 0) {
			ret = pf_why_set(why, -EINVAL,
					 "<Shot> %s has no <Image> with that GUID",
					 s->guid);
			goto err_free;
		}
		/* collected top first; reversed below */
		chain[len++] = (size_t)img;
		if (!strcasecmp(s->parent, PF_NONE_GUID))
			break;
		cur = dd_shot_index(dd, s->parent);
		if (cur < 0) {
			ret = pf_why_set(why, -EINVAL,
					 "<ParentGUID> %s of shot %s names no shot",
					 s->parent, s->guid);
			goto err_free;
		}
	}

	for (i = 0; i < len / 2; i++) {
		size_t t = chain[i];

		chain[i] = chain[len - 1 - i];
		chain[len - 1 - i] = t;
	}
	free(seen);
	*out = chain;
	*n = len;
	return 0;

err_free:
	free(seen);
	free(chain);
	return ret;
}

/* Cross-checks */

int dd_check_images(const struct pf_dd *dd, struct pf_why *why)
{
	char buf[SHOW_MAX];
	size_t i, j;

	for (i = 0; i < dd->n_images; i++) {
		assert(dd->images[i].file);	/* set for every parsed image */
		for (j = 0; j < i; j++) {
			if (!strcmp(dd->images[i].guid, dd->images[j].guid))
				return pf_why_set(why, -EINVAL,
						  "<GUID> %s is used by two images",
						  dd->images[i].guid);
			/* two deltas in one file would corrupt each other */
			if (!strcmp(dd->images[i].file, dd->images[j].file))
				return pf_why_set(why, -EINVAL,
						  "<File> \"%s\" is used by two images",
						  dd_show(dd->images[i].file, buf,
						       sizeof(buf)));
		}
	}
	return 0;
}

/* A shot that cannot reach PF_NONE_GUID, even off the active chain. */
static int check_cycles(const struct pf_dd *dd, struct pf_why *why)
{
	size_t *mark, i;
	ssize_t cur;
	int ret = 0;

	if (dd->n_shots == 0)
		return 0;
	mark = calloc(dd->n_shots, sizeof(*mark));
	if (!mark)
		return -ENOMEM;
	for (i = 0; i < dd->n_shots && !ret; i++) {
		cur = (ssize_t)i;
		while (strcmp(dd->shots[cur].parent, PF_NONE_GUID) != 0) {
			if (mark[cur] == i + 1) {
				ret = pf_why_set(why, -EINVAL,
						 "snapshot chain from shot %s has a cycle at %s",
						 dd->shots[i].guid,
						 dd->shots[cur].guid);
				break;
			}
			mark[cur] = i + 1;
			/* dd_check_shots() made sure every parent exists */
			cur = dd_shot_index(dd, dd->shots[cur].parent);
		}
	}
	free(mark);
	return ret;
}

int dd_check_shots(const struct pf_dd *dd, struct pf_why *why)
{
	const struct pf_dd_shot *s, *top;
	size_t *chain, n, i, j;
	int ret;

	for (i = 0; i < dd->n_shots; i++) {
		s = &dd->shots[i];
		for (j = 0; j < i; j++)
			if (!strcmp(s->guid, dd->shots[j].guid))
				return pf_why_set(why, -EINVAL,
						  "<GUID> %s is used by two shots",
						  s->guid);
		if (dd_image_index(dd, s->guid) < 0)
			return pf_why_set(why, -EINVAL,
					  "<Shot> %s has no <Image> with that GUID",
					  s->guid);
	}
	/* unique GUIDs, every shot matched: equal counts make a 1:1 map */
	if (dd->n_shots != dd->n_images) {
		for (i = 0; i < dd->n_images; i++)
			if (dd_shot_index(dd, dd->images[i].guid) < 0)
				return pf_why_set(why, -EINVAL,
						  "<Image> %s has no <Shot>",
						  dd->images[i].guid);
		return pf_why_set(why, -EINVAL,
				  "<Snapshots> has %zu shots for %zu images",
				  dd->n_shots, dd->n_images);
	}

	for (i = 0; i < dd->n_shots; i++) {
		s = &dd->shots[i];
		if (!strcmp(s->parent, s->guid))
			return pf_why_set(why, -EINVAL,
					  "<ParentGUID> of shot %s is the shot itself",
					  s->guid);
		if (strcmp(s->parent, PF_NONE_GUID) != 0 &&
		    dd_shot_index(dd, s->parent) < 0)
			return pf_why_set(why, -EINVAL,
					  "<ParentGUID> %s of shot %s names no shot",
					  s->parent, s->guid);
	}

	top = pf_dd_find_shot(dd, dd->top_guid);
	if (!top)
		return pf_why_set(why, -EINVAL, "<TopGUID> %s names no shot",
				  dd->top_guid);
	/* a temporary shot is a merge in progress, never a writable top */
	if (top->temporary)
		return pf_why_set(why, -EINVAL,
				  "<TopGUID> %s names a temporary shot",
				  dd->top_guid);

	ret = pf_dd_chain(dd, &chain, &n, why);
	if (ret)
		return ret;
	free(chain);
	return check_cycles(dd, why);
}


bool pf_dd_equal(const struct pf_dd *a, const struct pf_dd *b)
{
	size_t i;

	if (a->parallels_root != b->parallels_root ||
	    a->disk_size_sectors != b->disk_size_sectors ||
	    a->cylinders != b->cylinders || a->heads != b->heads ||
	    a->sectors != b->sectors || a->blocksize != b->blocksize ||
	    strcmp(a->top_guid, b->top_guid) != 0 ||
	    a->n_images != b->n_images || a->n_shots != b->n_shots)
		return false;
	for (i = 0; i < a->n_images; i++)
		if (strcmp(a->images[i].guid, b->images[i].guid) != 0 ||
		    strcmp(a->images[i].file, b->images[i].file) != 0)
			return false;
	for (i = 0; i < a->n_shots; i++)
		if (strcmp(a->shots[i].guid, b->shots[i].guid) != 0 ||
		    strcmp(a->shots[i].parent, b->shots[i].parent) != 0 ||
		    a->shots[i].temporary != b->shots[i].temporary)
			return false;
	return true;
}

/* Building and editing */

int pf_dd_new(uint64_t size_sectors, uint32_t blocksize, uint32_t heads,
	      uint32_t cylinders, const char *file, struct pf_dd **out)
{
	uint64_t track;
	struct pf_dd *dd;

	*out = NULL;
	if (size_sectors == 0 || size_sectors > UINT64_MAX >> PF_SECTOR_SHIFT ||
	    !pf_cluster_size_valid((uint64_t)blocksize << PF_SECTOR_SHIFT) ||
	    heads == 0 || cylinders == 0 || !pf_dd_file_name_valid(file))
		return -EINVAL;

	dd = calloc(1, sizeof(*dd));
	if (!dd)
		return -ENOMEM;
	dd->images = calloc(1, sizeof(*dd->images));
	dd->shots = calloc(1, sizeof(*dd->shots));
	if (!dd->images || !dd->shots)
		goto err_free;
	dd->images[0].file = strdup(file);
	if (!dd->images[0].file)
		goto err_free;
	dd->n_images = 1;
	dd->n_shots = 1;

	dd->disk_size_sectors = size_sectors;
	dd->blocksize = blocksize;
	dd->heads = heads;
	dd->cylinders = cylinders;
	/* as ploop: whole sectors per track, the product may fall short */
	track = (uint64_t)heads * cylinders;
	dd->sectors = size_sectors / track > UINT32_MAX ?
		      UINT32_MAX : (uint32_t)(size_sectors / track);

	memcpy(dd->top_guid, PF_TOP_GUID, sizeof(dd->top_guid));
	memcpy(dd->images[0].guid, PF_TOP_GUID, sizeof(dd->images[0].guid));
	memcpy(dd->shots[0].guid, PF_TOP_GUID, sizeof(dd->shots[0].guid));
	memcpy(dd->shots[0].parent, PF_NONE_GUID, sizeof(dd->shots[0].parent));
	*out = dd;
	return 0;

err_free:
	pf_dd_free(dd);
	return -ENOMEM;
}

int pf_dd_add_snapshot(struct pf_dd *dd, const char *snap_guid,
		       const char *new_file)
{
	struct pf_dd_image *images;
	struct pf_dd_shot *shots;
	char guid[PF_GUID_LEN + 1];
	ssize_t top_img, top_shot;
	size_t i;
	char *file;

	if (pf_guid_canon(snap_guid, guid) || !pf_dd_file_name_valid(new_file))
		return -EINVAL;
	if (!strcmp(guid, PF_NONE_GUID) || !strcmp(guid, PF_TOP_GUID) ||
	    dd_image_index(dd, guid) >= 0 || dd_shot_index(dd, guid) >= 0)
		return -EINVAL;
	for (i = 0; i < dd->n_images; i++)
		if (!strcmp(dd->images[i].file, new_file))
			return -EINVAL;
	top_img = dd_image_index(dd, dd->top_guid);
	top_shot = dd_shot_index(dd, dd->top_guid);
	if (top_img < 0 || top_shot < 0)
		return -EINVAL;
	/*
	 * Old-format descriptors keep the top under another GUID; if some
	 * other delta held PF_TOP_GUID the new top could not take it.
	 */
	if (strcasecmp(dd->top_guid, PF_TOP_GUID) != 0 &&
	    (dd_image_index(dd, PF_TOP_GUID) >= 0 ||
	     dd_shot_index(dd, PF_TOP_GUID) >= 0))
		return -EINVAL;
	if (dd->n_images >= PF_MAX_DELTAS)
		return -E2BIG;

	/* allocate everything first so a failure leaves @dd unchanged */
	file = strdup(new_file);
	if (!file)
		return -ENOMEM;
	images = realloc(dd->images, (dd->n_images + 1) * sizeof(*images));
	if (!images)
		goto err_file;
	dd->images = images;
	shots = realloc(dd->shots, (dd->n_shots + 1) * sizeof(*shots));
	if (!shots)
		goto err_file;
	dd->shots = shots;

	/* children of the old top follow it to its new GUID */
	for (i = 0; i < dd->n_shots; i++)
		if (!strcasecmp(shots[i].parent, dd->top_guid))
			memcpy(shots[i].parent, guid, sizeof(guid));
	memcpy(images[top_img].guid, guid, sizeof(guid));
	memcpy(shots[top_shot].guid, guid, sizeof(guid));

	memcpy(images[dd->n_images].guid, PF_TOP_GUID, sizeof(guid));
	images[dd->n_images].file = file;
	images[dd->n_images].xml_pos = 0;
	dd->n_images++;
	memcpy(shots[dd->n_shots].guid, PF_TOP_GUID, sizeof(guid));
	memcpy(shots[dd->n_shots].parent, guid, sizeof(guid));
	shots[dd->n_shots].temporary = false;
	shots[dd->n_shots].xml_pos = 0;
	dd->n_shots++;
	memcpy(dd->top_guid, PF_TOP_GUID, sizeof(dd->top_guid));
	return 0;

err_file:
	free(file);
	return -ENOMEM;
}

/* Drop entry @i of dd->images or dd->shots, keeping document order.  The
 * arrays keep their size; the caller owns the file name of a dropped
 * image. */
static void remove_image(struct pf_dd *dd, size_t i)
{
	memmove(&dd->images[i], &dd->images[i + 1],
		(dd->n_images - i - 1) * sizeof(*dd->images));
	dd->n_images--;
}

static void remove_shot(struct pf_dd *dd, size_t i)
{
	memmove(&dd->shots[i], &dd->shots[i + 1],
		(dd->n_shots - i - 1) * sizeof(*dd->shots));
	dd->n_shots--;
}

int pf_dd_set_temporary(struct pf_dd *dd, const char *guid, bool on)
{
	char g[PF_GUID_LEN + 1];
	ssize_t i;

	if (pf_guid_canon(guid, g))
		return -EINVAL;
	i = dd_shot_index(dd, guid);
	if (i < 0)
		return -ENOENT;
	/* a temporary shot is a merge in progress, never a writable top */
	if (on && !strcasecmp(dd->shots[i].guid, dd->top_guid))
		return -EINVAL;
	dd->shots[i].temporary = on;
	return 0;
}

int pf_dd_set_file(struct pf_dd *dd, const char *guid, const char *file)
{
	char g[PF_GUID_LEN + 1];
	ssize_t i = dd_image_index(dd, guid);
	size_t j;
	char *copy;

	if (pf_guid_canon(guid, g) || !pf_dd_file_name_valid(file))
		return -EINVAL;
	if (i < 0)
		return -ENOENT;
	for (j = 0; j < dd->n_images; j++)
		if ((ssize_t)j != i && !strcmp(dd->images[j].file, file))
			return -EINVAL;
	copy = strdup(file);
	if (!copy)
		return -ENOMEM;
	free(dd->images[i].file);
	dd->images[i].file = copy;
	return 0;
}

int pf_dd_delete_snapshot(struct pf_dd *dd, const char *guid,
			  bool child_takes_file, char **gone_file)
{
	ssize_t img, shot, child_img = -1;
	size_t i, kids = 0, child_shot = 0;
	char g[PF_GUID_LEN + 1];
	char *file;

	*gone_file = NULL;
	if (pf_guid_canon(guid, g))
		return -EINVAL;
	shot = dd_shot_index(dd, guid);
	img = dd_image_index(dd, guid);
	if (shot < 0 || img < 0)
		return -ENOENT;
	if (!strcasecmp(dd->shots[shot].guid, dd->top_guid))
		return -EINVAL;
	for (i = 0; i < dd->n_shots; i++) {
		if (!strcasecmp(dd->shots[i].parent, dd->shots[shot].guid)) {
			kids++;
			child_shot = i;
		}
	}
	/* a branch point: which child would take its data? ploop defers
	 * this case; we refuse it */
	if (kids > 1)
		return -EMLINK;
	if (kids == 1) {
		child_img = dd_image_index(dd, dd->shots[child_shot].guid);
		if (child_img < 0)	/* not in a validated descriptor */
			return -EINVAL;
	}

	/* Nothing is allocated: file names change owners and the arrays
	 * only shrink, so nothing below can fail half way. */
	file = dd->images[img].file;
	if (kids == 1) {
		memcpy(dd->shots[child_shot].parent, dd->shots[shot].parent,
		       sizeof(dd->shots[child_shot].parent));
		if (child_takes_file) {
			*gone_file = dd->images[child_img].file;
			dd->images[child_img].file = file;
		} else {
			*gone_file = file;
		}
	} else {
		*gone_file = file;
	}
	remove_image(dd, (size_t)img);
	remove_shot(dd, (size_t)shot);
	return 0;
}

int pf_dd_switch(struct pf_dd *dd, const char *guid, const char *new_file,
		 char **old_top_file)
{
	char parent[PF_GUID_LEN + 1];
	ssize_t shot, top_img, top_shot;
	size_t i;
	char *file;

	*old_top_file = NULL;
	if (pf_guid_canon(guid, parent))
		return -EINVAL;
	shot = dd_shot_index(dd, guid);
	if (shot < 0)
		return -ENOENT;
	memcpy(parent, dd->shots[shot].guid, sizeof(parent));
	/* ploop: "Nothing to do" for the top; a temporary shot is being
	 * deleted and may be gone after the next merge */
	if (!strcasecmp(parent, dd->top_guid) || dd->shots[shot].temporary)
		return -EINVAL;
	top_img = dd_image_index(dd, dd->top_guid);
	top_shot = dd_shot_index(dd, dd->top_guid);
	if (top_img < 0 || top_shot < 0)
		return -EINVAL;
	if (!pf_dd_file_name_valid(new_file))
		return -EINVAL;
	/* the old top's file included: the caller unlinks that one */
	for (i = 0; i < dd->n_images; i++)
		if (!strcmp(dd->images[i].file, new_file))
			return -EINVAL;
	/* a shot below the top would lose its parent */
	if (pf_dd_children(dd, dd->top_guid))
		return -EINVAL;
	/* old format: another delta may hold the GUID the new top takes */
	for (i = 0; i < dd->n_shots; i++)
		if (i != (size_t)top_shot &&
		    !strcasecmp(dd->shots[i].guid, PF_TOP_GUID))
			return -EINVAL;
	for (i = 0; i < dd->n_images; i++)
		if (i != (size_t)top_img &&
		    !strcasecmp(dd->images[i].guid, PF_TOP_GUID))
			return -EINVAL;

	/* the only allocation, before anything changes */
	file = strdup(new_file);
	if (!file)
		return -ENOMEM;

	*old_top_file = dd->images[top_img].file;
	remove_image(dd, (size_t)top_img);
	remove_shot(dd, (size_t)top_shot);
	/* the slots just freed take the new top, last as ploop adds it */
	memcpy(dd->images[dd->n_images].guid, PF_TOP_GUID,
	       sizeof(dd->images[dd->n_images].guid));
	dd->images[dd->n_images].file = file;
	dd->images[dd->n_images].xml_pos = 0;	/* a new <Image> */
	dd->n_images++;
	memcpy(dd->shots[dd->n_shots].guid, PF_TOP_GUID,
	       sizeof(dd->shots[dd->n_shots].guid));
	memcpy(dd->shots[dd->n_shots].parent, parent,
	       sizeof(dd->shots[dd->n_shots].parent));
	dd->shots[dd->n_shots].temporary = false;
	dd->shots[dd->n_shots].xml_pos = 0;
	dd->n_shots++;
	memcpy(dd->top_guid, PF_TOP_GUID, sizeof(dd->top_guid));
	return 0;
}
