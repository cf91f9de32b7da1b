/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * DiskDescriptor.xml: the list of deltas of an image directory and the
 * snapshot tree that links them (ploop-image(5), "DESCRIPTOR").
 * libxml2 is used only in descriptor.c; libuuid only for pf_guid_new().
 */
#ifndef PF_DESCRIPTOR_H
#define PF_DESCRIPTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define PF_DD_NAME	"DiskDescriptor.xml"
#define PF_DD_TMP_NAME	"DiskDescriptor.xml.tmp"
/* ploop keeps the active top delta under this constant GUID. */
#define PF_TOP_GUID	"{5fbaabe3-6958-40ff-92a7-860e329aab41}"
#define PF_NONE_GUID	"{00000000-0000-0000-0000-000000000000}"
#define PF_GUID_LEN	38		/* "{" + 36 + "}" */
#define PF_BASE_NAME	"root.hds"
#define PF_MAX_DELTAS	253		/* dm-ploop's limit of levels */
#define PF_DD_MAX_BYTES	(1u << 20)	/* refuse larger descriptors */
/*
 * Mode of a new descriptor (less the umask), as ploop creates it; a
 * rewrite keeps the mode of the file it replaces (pf_dd_store_tmp).  The
 * descriptor holds no secret (an encryption <KeyId> names a key, it is
 * not one), so 0600 would only differ from ploop; whoever wants it
 * private chmods it once and every rewrite keeps that.
 */
#define PF_DD_MODE	0644

struct pf_dd_image {
	char guid[PF_GUID_LEN + 1];
	char *file;		/* a plain name inside the image directory */
	/* private to descriptor.c: 1 + the index of this image's <Image>
	 * among those of the parsed document; 0 for one added since */
	unsigned xml_pos;
};

struct pf_dd_shot {
	char guid[PF_GUID_LEN + 1];
	char parent[PF_GUID_LEN + 1];	/* PF_NONE_GUID for the base */
	bool temporary;			/* <Temporary/> present */
	unsigned xml_pos;		/* as in struct pf_dd_image, <Shot> */
};

/* The parsed document, private to descriptor.c. */
struct pf_dd_xml;

struct pf_dd {
	bool parallels_root;	/* root element was <Parallels_disk_image> */
	uint64_t disk_size_sectors;
	uint32_t cylinders;
	uint32_t heads;
	uint32_t sectors;
	uint32_t blocksize;	/* cluster size in sectors */
	char top_guid[PF_GUID_LEN + 1];
	size_t n_images;
	struct pf_dd_image *images;	/* in document order */
	size_t n_shots;
	struct pf_dd_shot *shots;	/* in document order */
	/* what pf_dd_parse() read, kept so that every element and
	 * attribute it does not model is written back; NULL for pf_dd_new() */
	struct pf_dd_xml *xml;
};

/* Parsing and writing */

/*
 * Parse and validate a descriptor held in memory.  Accepts both root
 * element names.  Elements and attributes that are not modelled here
 * (ploop's <Max_delta_size>, <Encryption><KeyId>, <Preallocated>,
 * <Volume>, a <Description> in a <Shot>, anything newer) are not
 * checked, and are kept, with the comments, to be written back by
 * pf_dd_format().  Rejects: malformed XML,
 * missing or non-numeric required elements, sizes whose byte count
 * overflows 64 bits, a Blocksize that is not a valid cluster size, not
 * exactly one <Storage>, an <Image> without GUID or File, a File that is
 * absolute, contains '/', is "." or "..", or is empty, Type other than
 * Compressed, malformed or duplicate GUIDs, more than PF_MAX_DELTAS
 * images, a Shot without a matching Image, a TopGUID naming no Shot or a
 * temporary one, and a chain from TopGUID that has a cycle or names an
 * unknown parent.  When there is no <Snapshots> and exactly one image,
 * that image is the top.
 * Returns: 0; -EINVAL (@why says what is wrong); -ENOMEM.
 */
PF_MUST_CHECK int pf_dd_parse(const char *buf, size_t len, struct pf_dd **out,
			      struct pf_why *why);

/* Read and parse DiskDescriptor.xml of the directory @dirfd.
 * Returns: 0; -ENOENT; -EFBIG (larger than PF_DD_MAX_BYTES); -EINVAL;
 * other -errno from the read. */
PF_MUST_CHECK int pf_dd_load(int dirfd, struct pf_dd **out,
			     struct pf_why *why);

/*
 * Serialize in ploop's layout (one element a line, 2-space indent).  A
 * descriptor built by pf_dd_new() is written from its fields alone (root
 * <Virtuozzo_disk_image>, as ploop init writes it).  One read by
 * pf_dd_parse() is written as it was read, with the fields set in their
 * elements: <Disk_size>, <Cylinders>, <Heads>, <Sectors>, <End>,
 * <Blocksize>, <TopGUID>, and per image and shot <GUID>, <File>,
 * <ParentGUID> and the temporary mark; an image or shot that an edit
 * added gets a new element next to its siblings, and one that an edit
 * removed loses its element, with everything inside it.  Everything else
 * (elements and attributes not modelled, comments, the XML declaration,
 * the root element's name) stays where it was.
 * *buf is malloc'ed.  Returns: 0; -ENOMEM; -EFBIG (the text would be
 * larger than PF_DD_MAX_BYTES, which pf_dd_load() refuses).
 */
PF_MUST_CHECK int pf_dd_format(const struct pf_dd *dd, char **buf,
			       size_t *len);

/*
 * Replacing the descriptor: the one home of rule W6's last step.  The
 * new text goes to DiskDescriptor.xml.tmp (created afresh, never through a
 * symbolic link, with the mode of the DiskDescriptor.xml it replaces, or
 * PF_DD_MODE less the umask for the first), which is fsynced, renamed over
 * DiskDescriptor.xml (the commit point), and the directory is fsynced so
 * that the rename is durable.
 *
 * The policy for a failed directory fsync after the rename (the one
 * outcome that is neither "nothing changed" nor "done"): the call
 * returns the fsync's -errno with *committed true.  The new descriptor
 * is the one every reader sees, but a power cut may bring back the old
 * one.  Callers then
 *   - keep every file that either descriptor names (never unlink the
 *     file the new one dropped), and take no further step whose safety
 *     depends on the new descriptor being durable;
 *   - report the error: an offline command fails (exit status 1), and
 *     the daemon treats it as a failed metadata write and goes to the
 *     sticky failed state (W7), since writes it acknowledged under the
 *     new descriptor could vanish with it.
 * A fsync of a directory is never retried (W7: never retry a failed
 * fsync and trust it).
 */

/*
 * Replace DiskDescriptor.xml in @dirfd by @dd (pf_dd_store_tmp, then
 * pf_dd_commit_tmp).
 * Returns: 0 (in place and durable); -errno with *committed false
 * (nothing changed; no tmp file is left); -errno with *committed true
 * (in place, not known to be durable: see the policy above).
 */
PF_MUST_CHECK int pf_dd_replace(int dirfd, const struct pf_dd *dd,
				bool *committed);

/*
 * First half of pf_dd_replace(), for callers that prepare the new
 * descriptor before a step that must be short (a freeze) and commit it
 * inside: write @dd to DiskDescriptor.xml.tmp and fsync it.
 * DiskDescriptor.xml is not touched.  On error the tmp file is removed.
 * Returns 0; -ENOMEM; other -errno from open, write, fsync or close.
 */
PF_MUST_CHECK int pf_dd_store_tmp(int dirfd, const struct pf_dd *dd);

/*
 * Second half: rename DiskDescriptor.xml.tmp over DiskDescriptor.xml,
 * then fsync the directory.  Nothing in it can block for long or needs
 * memory.
 * Returns: 0; -errno of renameat with *committed false (nothing changed;
 * the tmp file is removed); -errno of the directory fsync with
 * *committed true (see the policy above).
 */
PF_MUST_CHECK int pf_dd_commit_tmp(int dirfd, bool *committed);

/* Remove DiskDescriptor.xml.tmp of @dirfd, if any (a prepared change
 * that will not be committed); errors are ignored. */
void pf_dd_drop_tmp(int dirfd);

void pf_dd_free(struct pf_dd *dd);

/* True if @a and @b model the same image: geometry, top, images and
 * shots in order (what the document keeps besides is not compared). */
bool pf_dd_equal(const struct pf_dd *a, const struct pf_dd *b);

/*
 * Building and editing.  The edits change the fields of @dd; what
 * pf_dd_parse() kept besides them is written back by pf_dd_format() in
 * place: an image or shot keeps its element, and whatever that element
 * holds, for as long as it stays in @dd, even when its GUID or file
 * changes.  Elements inside an <Image> or <Shot> that an edit removes
 * (pf_dd_delete_snapshot, pf_dd_switch) go with it: they described that
 * delta, not the one that takes over its file.
 * Here and in the lookups below a GUID argument may be in any form
 * pf_guid_canon() accepts; "malformed" means one it refuses.
 */

/* A descriptor for a single base delta @file with the TOPDELTA GUID. */
PF_MUST_CHECK int pf_dd_new(uint64_t size_sectors, uint32_t blocksize,
			    uint32_t heads, uint32_t cylinders,
			    const char *file, struct pf_dd **out);

/*
 * Offline snapshot, as ploop does it: the current top keeps its file but
 * takes the new GUID @snap_guid; a new image @new_file becomes the top
 * under PF_TOP_GUID with @snap_guid as parent.  Returns 0, -ENOMEM,
 * -E2BIG (PF_MAX_DELTAS reached) or -EINVAL (@snap_guid malformed or in use).
 */
PF_MUST_CHECK int pf_dd_add_snapshot(struct pf_dd *dd, const char *snap_guid,
				     const char *new_file);

/*
 * Set (@on) or clear the <Temporary/> mark of shot @guid.  ploop marks a
 * snapshot that is being deleted so that an interrupted merge can be
 * completed later.  Returns: 0; -EINVAL (@guid malformed, or @on for the
 * shot named by TopGUID: the top is never temporary); -ENOENT (no shot
 * @guid).  On error @dd is unchanged.
 */
PF_MUST_CHECK int pf_dd_set_temporary(struct pf_dd *dd, const char *guid,
				      bool on);

/*
 * Name the file of image @guid @file (the same file under a new name: a
 * hard link made first).  Returns: 0; -EINVAL (@guid malformed, @file not
 * a valid name or another image's); -ENOENT (no image @guid); -ENOMEM.
 * On error @dd is unchanged.
 */
PF_MUST_CHECK int pf_dd_set_file(struct pf_dd *dd, const char *guid,
				 const char *file);

/*
 * Delete snapshot @guid, which is not the top (ploop-format.md 4.3).
 * If it has one child C, C is merged into it: C's shot takes @guid's
 * parent and @guid's image and shot are removed.  With @child_takes_file
 * C's image is re-pointed to @guid's file (the data was merged down into
 * @guid's file: ploop's offline merge) and *gone_file is C's old file;
 * otherwise C keeps its file (@guid's data was copied up into C) and
 * *gone_file is @guid's file.  If it has no child (a leaf on a side
 * branch), its image and shot are removed and *gone_file is its file,
 * as ploop's snapshot-delete does.  *gone_file (malloc'ed) is for the
 * caller to unlink only after the new descriptor is committed (W5, W6).
 * Returns: 0; -EINVAL (@guid malformed, or the top); -ENOENT (no shot
 * @guid); -EMLINK (@guid has more than one child: a branch point, refused).
 * On error @dd is unchanged and *gone_file is NULL.
 */
PF_MUST_CHECK int pf_dd_delete_snapshot(struct pf_dd *dd, const char *guid,
					bool child_takes_file,
					char **gone_file);

/*
 * Switch to snapshot @guid, as ploop's snapshot-switch (ploop-format.md
 * 4.4): the old top's image and shot are removed and a new top @new_file
 * under PF_TOP_GUID, with @guid as parent, is added at the end.  The
 * shots between @guid and the old top stay, as a side branch.
 * *old_top_file (malloc'ed) is the old top's file, for the caller to
 * unlink only after the new descriptor is committed (W6); whatever it
 * held that no snapshot holds is discarded.
 * Returns: 0; -ENOENT (no shot @guid); -EINVAL (@guid malformed, the
 * top, or temporary: a snapshot being deleted; @new_file not a valid
 * name or already used by an image, the old top included; a shot has
 * the old top as parent; a shot other than the old top holds
 * PF_TOP_GUID); -ENOMEM.  On error @dd is unchanged and *old_top_file
 * is NULL.
 */
PF_MUST_CHECK int pf_dd_switch(struct pf_dd *dd, const char *guid,
			       const char *new_file, char **old_top_file);

/* Lookup */

/* Number of shots whose parent is @guid (0 for NULL or an unknown GUID). */
size_t pf_dd_children(const struct pf_dd *dd, const char *guid);

/* The parent GUID of shot @guid (PF_NONE_GUID for a base), or NULL if
 * there is no such shot.  Points into @dd. */
const char *pf_dd_parent(const struct pf_dd *dd, const char *guid);

/*
 * The active chain from the base to the top: *out is a malloc'ed array of
 * indices into dd->images, *n its length.  Only the shots from TopGUID
 * down are visited: images on other branches (left by snapshot-switch)
 * are valid and simply not in the chain.  Returns 0, -ENOMEM or -EINVAL.
 */
PF_MUST_CHECK int pf_dd_chain(const struct pf_dd *dd, size_t **out, size_t *n,
			      struct pf_why *why);

/* The same from shot @guid (canonical form) down to the base: the disk
 * as snapshot @guid holds it.  Returns as pf_dd_chain(), or -ENOENT (no
 * shot @guid). */
PF_MUST_CHECK int pf_dd_chain_of(const struct pf_dd *dd, const char *guid,
				 size_t **out, size_t *n, struct pf_why *why);

const struct pf_dd_image *pf_dd_find_image(const struct pf_dd *dd,
					   const char *guid);
const struct pf_dd_shot *pf_dd_find_shot(const struct pf_dd *dd,
					 const char *guid);

/* GUIDs: "{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}", lower-case hex. */

/* A fresh random GUID into @out (PF_GUID_LEN + 1 bytes). */
void pf_guid_new(char *out);
/* true if @s has the GUID form (hex digits of either case), with braces:
 * the only form a descriptor may hold. */
bool pf_guid_valid(const char *s);

/*
 * A GUID as users give it, into its one canonical form: @in with or
 * without the braces (both or neither), hex digits of either case, as
 * copied from a descriptor, from ploop's output or from a snapshot
 * view's name (which has no braces); @out is lower case with braces, as
 * ploop writes it.  Every GUID taken from a user or a client goes
 * through here, and GUIDs are compared in this form.
 * Returns: 0; -EINVAL (@in is NULL or not of that form; @out is "").
 */
PF_MUST_CHECK int pf_guid_canon(const char *in, char out[PF_GUID_LEN + 1]);

/* true if @name is acceptable as a delta file name (see pf_dd_parse). */
bool pf_dd_file_name_valid(const char *name);

#endif /* PF_DESCRIPTOR_H */
