/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Image set-up shared by the unit tests; abort() on any failure. */
#ifndef PF_TESTUTIL_H
#define PF_TESTUTIL_H

#include <stdint.h>

/* mkdir @dir and create an empty image of @size bytes in it. */
void tu_make_image(const char *dir, uint64_t size, uint32_t cluster);

/* Offline snapshot of the image in @dir, as ploopctl snapshot does. */
void tu_snapshot(const char *dir);

#endif /* PF_TESTUTIL_H */
