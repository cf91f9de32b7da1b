/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What the two files of the descriptor module share: descriptor.c (the
 * XML: parse, format, store) and dd_model.c (struct pf_dd without XML:
 * lookups, cross-checks, edits).  Private to those two files.
 */
#ifndef PF_DESCRIPTOR_I_H
#define PF_DESCRIPTOR_I_H

#include <stddef.h>
#include <sys/types.h>

#include "descriptor.h"

#define SHOW_MAX	64	/* bytes of a hostile value quoted in @why */

/*
 * Copy @s into @buf for quoting in a one-line reason: non-printable bytes
 * become '?' and long values are cut with "...".  Returns @buf.
 */
const char *dd_show(const char *s, char *buf, size_t len);

/* The index of the image (shot) of GUID @guid, in any form that
 * pf_guid_canon() takes, or -1. */
ssize_t dd_image_index(const struct pf_dd *dd, const char *guid);
ssize_t dd_shot_index(const struct pf_dd *dd, const char *guid);

/*
 * The cross-checks of a parsed descriptor: images unique by GUID and
 * file (dd_check_images, before the shots are read), then shots matched
 * 1:1 with images, parents that exist, a top that is not temporary, and
 * no cycle (dd_check_shots).
 * Returns: 0; -EINVAL (with the reason in @why); -ENOMEM.
 */
PF_MUST_CHECK int dd_check_images(const struct pf_dd *dd, struct pf_why *why);
PF_MUST_CHECK int dd_check_shots(const struct pf_dd *dd, struct pf_why *why);

#endif /* PF_DESCRIPTOR_I_H */
