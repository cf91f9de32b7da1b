/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The mount table of this process's namespace (/proc/self/mountinfo):
 * which ploopfs mounts exist, where, serving which image directory.
 * ploopctl uses it to tell a live mount from one whose daemon has gone,
 * and to find a mount from its image directory and back.
 */
#ifndef PF_MOUNTS_H
#define PF_MOUNTS_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

/* The file system type of our mounts, and the prefix of their source
 * ("ploopfs:" + the image directory's absolute path). */
#define PF_MOUNT_FSTYPE		"fuse.ploopfs"
#define PF_MOUNT_SOURCE_PFX	"ploopfs:"

struct pf_mount_ent {
	char *dir;		/* mount point, unescaped */
	char *fstype;
	char *source;		/* unescaped */
	unsigned major, minor;	/* st_dev of the mounted file system */
	bool read_only;		/* super options "ro" (ploopfs -o ro) */
};

/*
 * Read /proc/self/mountinfo into a newly allocated array, in its order
 * (a later entry on the same point is mounted over an earlier one).
 * Returns 0 or -errno.
 */
PF_MUST_CHECK int pf_mounts_read(struct pf_mount_ent **out, size_t *n);

void pf_mounts_free(struct pf_mount_ent *v, size_t n);

/*
 * The last ploopfs mount whose mount point is @dir (absolute, as the
 * kernel shows it) or, with @by_source, whose source names the image
 * directory @dir.  NULL if none.  Points into @v.
 */
const struct pf_mount_ent *pf_mounts_find(const struct pf_mount_ent *v,
					  size_t n, const char *dir,
					  bool by_source);

#endif /* PF_MOUNTS_H */
