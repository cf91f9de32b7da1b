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
 * Offline snapshot of the image whose descriptor is @dd (its active
 * chain's base file is @base_file, its top delta's header @top): create
 * the empty delta "<base_file>.{uuid}" with the geometry of @top, then
 * rename the top's GUID to @snap_guid and make the new delta the top in
 * @dd and on disk.  *new_file (malloc'ed) receives the new file's name.
 * On failure the directory is as before.  Returns 0 or -errno.
 */
PF_MUST_CHECK int pf_image_snapshot(int dirfd, struct pf_dd *dd,
				    const struct pf_header *top,
				    const char *base_file,
				    const char *snap_guid, char **new_file,
				    struct pf_why *why);

/*
 * Offline snapshot-switch, as ploop does it (ploop-format.md 4.4): make
 * snapshot @guid of @dd the parent of a new empty top and discard the
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

#endif /* PF_IMAGE_H */
