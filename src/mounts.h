/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The mount table of this process's namespace (/proc/self/mountinfo):
 * which ploopfs mounts exist, where, serving which image directory.
 * ploopctl uses it to tell a live mount from one whose daemon has gone,
 * and to find a mount from its image directory and back.
 *
 * And the loop devices of /sys/block backed by the disk file of a
 * ploopfs mount, with their partitions, so that ploopctl snapshot can
 * find the file systems mounted from them (by st_dev, field 3 of
 * mountinfo) and freeze them.  The parsers are pure, for the unit test;
 * the sysfs root is a parameter, so a test can lay out a fake one.
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
/* The directory of snapshot views in a mount's root (fuse_fe.h) */
#define PF_MOUNT_SNAP_DIR	"snapshots"

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

/*
 * Parse one line of /proc/self/mountinfo (the kernel's octal escapes
 * undone) into @e; free it with pf_mount_ent_clear().
 * Returns: 0; -EINVAL (not a mountinfo line); -ENOMEM.
 */
PF_MUST_CHECK int pf_mounts_parse_line(const char *line,
				       struct pf_mount_ent *e);

/* Free the strings of @e (which may be partly filled). */
void pf_mount_ent_clear(struct pf_mount_ent *e);

/*
 * The first entry of @v from index @from on whose device is
 * @major:@minor: its index, or @n if none.
 */
size_t pf_mounts_find_dev(const struct pf_mount_ent *v, size_t n,
			  size_t from, unsigned major, unsigned minor);

/* A block device number. */
struct pf_devno {
	unsigned major, minor;
};

/*
 * Parse the text of a sysfs "dev" file ("7:0\n", @len bytes).
 * Returns: 0; -EINVAL.
 */
PF_MUST_CHECK int pf_mounts_parse_devno(const char *text, size_t len,
					struct pf_devno *out);

/*
 * Whether the text of a loop device's backing_file (@len bytes, as the
 * kernel shows it: the path and a '\n') names a file directly inside
 * the mount point @mnt (absolute, as mountinfo shows it) other than its
 * "snapshots" directory: the disk of a ploopfs mount, whatever its
 * -o name=, since nothing else can be in a mount's root.  A file that
 * was deleted shows as "<path> (deleted)" and is no disk of a live mount
 * (nothing in a ploopfs mount can be deleted): false.  Paths may hold
 * spaces; the kernel does not escape them here.
 */
bool pf_mounts_backing_in(const char *text, size_t len, const char *mnt);

/*
 * The block devices under @sys_block (normally "/sys/block") that are
 * loop devices whose backing file is the disk of the ploopfs mount at
 * @mnt (pf_mounts_backing_in()), and the partitions of each (loopNpM),
 * into *@out (malloc'ed; free it), *@n of them.  A loop device without
 * a backing file (unbound) is none.
 * Returns: 0; -ENOMEM; the -errno of opening @sys_block.
 */
PF_MUST_CHECK int pf_mounts_loop_devs(const char *sys_block, const char *mnt,
				      struct pf_devno **out, size_t *n);

#endif /* PF_MOUNTS_H */
