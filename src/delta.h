/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * One delta file: open and validate its header, load its BAT, create a
 * new empty delta, update the header.  File names are always resolved
 * relative to the image directory (openat), never followed through a
 * symbolic link.
 */
#ifndef PF_DELTA_H
#define PF_DELTA_H

#include <stdbool.h>
#include <stdint.h>

#include "format.h"
#include "util.h"

struct pf_delta {
	int fd;
	char *name;		/* as given, for messages */
	bool writable;
	struct pf_header hdr;
	uint8_t *meta;		/* file bytes [0, pf_idx_entry_off(bat_entries)),
				 * in whole 4 KiB-aligned pages, zero-padded */
	uint64_t file_bytes;	/* size at open */
	uint64_t file_clusters;	/* whole clusters in the file at open */
};

#define PF_DELTA_WRITE	0x1	/* open read-write */

/*
 * Open delta @name in directory @dirfd (AT_FDCWD for a path), read and
 * validate the header and load the BAT.  BAT entries are not validated
 * here (see pf_check_delta and pf_delta_bat_lookup).
 * Returns: 0; -ENOENT and other open errors; -EINVAL (not a regular file,
 * bad header, file shorter than its header and BAT); -EFBIG; -ENOMEM.
 * @why names the problem (without the file name).
 */
PF_MUST_CHECK int pf_delta_open(int dirfd, const char *name, int flags,
				struct pf_delta **out, struct pf_why *why);

void pf_delta_close(struct pf_delta *d);

/*
 * Create delta @name in @dirfd (it must not exist) with header @h and an
 * empty BAT; the file is exactly h->hdr_clusters clusters long.  The file
 * and the directory entry are synced before returning (W6: a new delta is
 * durable before any descriptor names it).  On failure nothing is left.
 * Returns 0 or -errno.
 */
PF_MUST_CHECK int pf_delta_create(int dirfd, const char *name,
				  const struct pf_header *h,
				  struct pf_why *why);

/* Raw BAT entry @idx (idx < hdr.bat_entries). */
static inline uint32_t pf_delta_bat_raw(const struct pf_delta *d, uint32_t idx)
{
	return pf_bat_raw_get(d->meta, idx);
}

/* Number of BAT entries that are non-zero. */
uint64_t pf_delta_mapped_count(const struct pf_delta *d);

/* Image directory locking */

/*
 * Lock the image directory (or, for a bare delta, the file) @fd:
 * exclusive for commands that write, shared for ones that must see a
 * quiescent image.  Never waits.  Returns 0 or -EBUSY (somebody, e.g. a
 * running ploopfs, holds a conflicting lock).
 */
PF_MUST_CHECK int pf_lock(int fd, bool exclusive);

#endif /* PF_DELTA_H */
