/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Image set-up shared by the unit tests; abort() on any failure. */
#ifndef PF_TESTUTIL_H
#define PF_TESTUTIL_H

#include <stdint.h>

/* mkdir @dir and create an empty image of @size bytes in it. */
void tu_make_image(const char *dir, uint64_t size, uint32_t cluster);

/* Offline snapshot of the image in @dir, as ploopctl snapshot does. */
void tu_snapshot(const char *dir);

/* The same; @guid (PF_GUID_LEN + 1 bytes) gets the snapshot's GUID. */
void tu_snapshot_guid(const char *dir, char *guid);

/* mkdir @to and copy the regular files of the flat directory @from into
 * it, holes kept as holes.  Only system calls: safe in any thread. */
void tu_copy_dir(const char *from, const char *to);

/* Remove the flat directory @dir and its files, if it exists. */
void tu_remove_dir(const char *dir);

#endif /* PF_TESTUTIL_H */
