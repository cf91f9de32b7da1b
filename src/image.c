// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Image creation and offline snapshots (see image.h).
 *
 * Crash safety (W6): every step before the descriptor rename leaves the
 * old descriptor naming only complete files, so a crash leaves at most
 * an unreferenced new delta behind; the rename is the commit point.
 */
#include "image.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "delta.h"

int pf_image_create(int dirfd, const struct pf_header *h, struct pf_why *why)
{
	struct pf_dd *dd = NULL;
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
		ret = pf_dd_store(dirfd, dd);
	pf_dd_free(dd);
	if (ret) {
		unlinkat(dirfd, PF_BASE_NAME, 0);
		return pf_why_set(why, ret, PF_DD_NAME ": cannot write: %s",
				  strerror(-ret));
	}
	return 0;
}

int pf_image_snapshot(int dirfd, struct pf_dd *dd, const struct pf_header *top,
		      const char *base_file, const char *snap_guid,
		      char **new_file, struct pf_why *why)
{
	char fguid[PF_GUID_LEN + 1];
	struct pf_header h = *top;
	char *name;
	int ret;

	*new_file = NULL;
	/* ploop names a new top "<base file>.{uuid}", the uuid fresh and
	 * independent of the snapshot GUID. */
	pf_guid_new(fguid);
	if (asprintf(&name, "%s.%s", base_file, fguid) < 0)
		return -ENOMEM;
	/* same geometry and version as the old top, empty, closed */
	h.in_use = PF_INUSE_CLOSED;
	h.flags = PF_FLAG_EMPTY;
	h.ext_sectors = 0;
	/* W6: written and synced (file and directory entry) before the
	 * descriptor names it ... */
	ret = pf_delta_create(dirfd, name, &h, why);
	if (ret) {
		struct pf_why w = *why;

		pf_why_fmt(why, "%s: %s", name, w.msg);
		free(name);
		return ret;
	}
	/* ... and the descriptor is replaced atomically. */
	ret = pf_dd_add_snapshot(dd, snap_guid, name);
	if (!ret)
		ret = pf_dd_store(dirfd, dd);
	if (ret) {
		pf_why_fmt(why, PF_DD_NAME ": cannot update: %s",
			   strerror(-ret));
		unlinkat(dirfd, name, 0);
		free(name);
		return ret;
	}
	*new_file = name;
	return 0;
}
