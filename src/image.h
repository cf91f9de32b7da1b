/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Whole-image operations on the files of an image directory that the
 * caller has opened and locked exclusively: create an image, take an
 * offline snapshot, switch to a snapshot.  All follow W6: a new delta is
 * durable before the descriptor names it, the descriptor is replaced
 * atomically, and a file the old descriptor named is removed only after
 * that.
 */
#ifndef PF_IMAGE_H
#define PF_IMAGE_H

#include "delta.h"
#include "descriptor.h"
#include "format.h"
#include "util.h"

/*
 * Create root.hds with header @h (from pf_header_init) and a descriptor
 * naming it, in the directory @dirfd.  Returns 0; -EEXIST (the directory
 * already holds an image); other -errno.  @why names the file.
 */
PF_MUST_CHECK int pf_image_create(int dirfd, const struct pf_header *h,
				  struct pf_why *why);

/*
 * The name of a new top delta, as ploop names one: "<stem>.{uuid}", the
 * uuid fresh and independent of any snapshot GUID, the stem the file of
 * the base of the chain (@base_file) without the ".{uuid}" suffixes it
 * may have (a former top that became the base), so names stay short
 * however many snapshots come and go.  *@out is malloc'ed.
 * Returns: 0; -EINVAL (the name would be too long); -ENOMEM.
 */
PF_MUST_CHECK int pf_image_top_name(const char *base_file, char **out,
				    struct pf_why *why);

/* A snapshot prepared by pf_image_snapshot_prepare(). */
struct pf_snap_prep {
	char guid[PF_GUID_LEN + 1];	/* the snapshot: the old top's GUID */
	char *file;		/* the new top delta (malloc'ed) */
};

/*
 * Prepare a snapshot of the image in @dirfd whose descriptor is @dd and
 * whose top delta has header @top, offline and online alike:
 *   - the GUID: @want (checked: in a form pf_guid_canon() accepts,
 *     neither the top's nor the null GUID, used by no image or
 *     snapshot; stored canonical), or a fresh one;
 *   - the new top: named by pf_image_top_name(), created empty with the
 *     geometry of @top and in-use value @in_use (a daemon writes it at
 *     once: PF_INUSE_OPEN, as ploop does), synced with its directory
 *     entry (W6); @hook's PF_DELTA_CREATED step follows;
 *   - @dd edited so that the old top is snapshot p->guid and the new
 *     delta is the top, and written to DiskDescriptor.xml.tmp (synced).
 * Nothing names the new delta yet: pf_dd_commit_tmp() is the commit
 * point, pf_image_snapshot_abort() undoes the preparation.
 * Returns: 0; -EINVAL (@want malformed or reserved, name too long);
 * -EEXIST (@want in use); -EMLINK (PF_MAX_DELTAS deltas already);
 * -ENOMEM; other -errno.  On error no file is left, and @dd may
 * already describe the snapshot: discard it.
 */
PF_MUST_CHECK int pf_image_snapshot_prepare(int dirfd, struct pf_dd *dd,
					    const struct pf_header *top,
					    const char *want, uint32_t in_use,
					    const struct pf_delta_hook *hook,
					    struct pf_snap_prep *p,
					    struct pf_why *why);

/* A prepared snapshot that will not be committed: the tmp descriptor and
 * the new delta go.  Frees @p's file name. */
void pf_image_snapshot_abort(int dirfd, struct pf_snap_prep *p);

/*
 * Offline snapshot: pf_image_snapshot_prepare() with a closed new top,
 * then the descriptor committed (the policy of descriptor.h for a
 * failed directory sync: both files stay, the call fails).
 * Returns as prepare, or the commit's -errno.  p->file is the caller's
 * to free.
 */
PF_MUST_CHECK int pf_image_snapshot(int dirfd, struct pf_dd *dd,
				    const struct pf_header *top,
				    const char *want, struct pf_snap_prep *p,
				    struct pf_why *why);

/*
 * Offline snapshot-switch, as ploop does it (ploop-format.md 4.4): make
 * snapshot @guid (any form pf_guid_canon() accepts) of @dd the parent of
 * a new empty top and discard the
 * current top, whose header is @top.  The new delta
 * "<base file>.{uuid}" (the base of @guid's chain; the uuid fresh) gets
 * the geometry of @top, closed and empty; it is created and synced with
 * its directory entry first (W6), then the descriptor is replaced
 * atomically, and only then is the old top's file unlinked: its data,
 * whatever no snapshot holds, is gone.  The shots between @guid and the
 * old top stay, as a side branch.  *new_file (malloc'ed) receives the new
 * file's name.
 * On any error before the descriptor rename the directory is as before
 * (the new file is removed).  If the rename happened but the directory
 * sync failed, both the new and the old top file are kept and the error
 * is returned.  A failure to unlink the old top after the commit is not
 * an error (the file stays, named by nothing).  On error @dd may already
 * describe the switch: discard it.
 * Returns: 0; -ENOENT (no snapshot @guid); -EINVAL (@guid malformed, the
 * top, or temporary, or @dd cannot take the new top, see pf_dd_switch);
 * -ENOMEM; other -errno.  @why says what failed, naming the file.
 */
PF_MUST_CHECK int pf_image_switch(int dirfd, struct pf_dd *dd,
				  const struct pf_header *top,
				  const char *guid, char **new_file,
				  struct pf_why *why);

/*
 * Open deltas @chain (indices into dd->images, base first, @n of them)
 * of the image in @dirfd through @io: the last with @top_flags
 * (PF_DELTA_WRITE for a daemon), the others read-only.  With @check,
 * each is checked (pf_check_delta) and the whole as the stack @dd
 * describes (pf_check_stack): a corrupt one refuses the chain.  Unclean
 * deltas (in-use set) are not refused here.
 * Returns: 0 with *@out (malloc'ed, n deltas); -EUCLEAN (corrupt), or
 * pf_delta_open's error, with @why "<file>: <problem>", the file as the
 * descriptor names it; -ENOMEM.
 */
PF_MUST_CHECK int pf_image_open_chain(int dirfd, const struct pf_dd *dd,
				      const size_t *chain, size_t n,
				      int top_flags, bool check,
				      const struct pf_delta_io *io,
				      struct pf_delta ***out,
				      struct pf_why *why);

/* Close what pf_image_open_chain() opened; NULL is fine. */
void pf_image_close_chain(struct pf_delta **v, size_t n);

#endif /* PF_IMAGE_H */
