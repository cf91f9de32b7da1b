/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * fsync(2) with a fault: the binaries that link wrap_fsync.o are built
 * with -Wl,--wrap=fsync (Makefile, WRAP_FSYNC_TESTS), so every fsync the
 * library makes comes here.  With wrap_fsync_dir_fail set to N > 0 the
 * N-th fsync of a directory from then on fails with EIO (the rename it
 * was meant to make durable has happened), once.
 */
#ifndef PF_WRAP_FSYNC_H
#define PF_WRAP_FSYNC_H

extern int wrap_fsync_dir_fail;	/* countdown; 0: no fault */
extern int wrap_fsync_dir_failed;	/* faults injected so far */

#endif /* PF_WRAP_FSYNC_H */
