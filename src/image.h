/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Whole-image operations on the files of an image directory that the
 * caller has opened and locked exclusively: create an image, take an
 * offline snapshot.  Both follow W6: a new delta is durable before the
 * descriptor names it, and the descriptor is replaced atomically.
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

#endif /* PF_IMAGE_H */
