/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What the command lines of ploopctl and ploopfs share: the version they
 * print and the exit statuses they document (ploopctl(8) and ploopfs(8),
 * EXIT STATUS).  A header of the mains only; no library code uses it.
 */
#ifndef PF_CLI_H
#define PF_CLI_H

#ifndef PLOOPFS_VERSION
#define PLOOPFS_VERSION "0.1"
#endif

enum pf_exit {
	EXIT_OK = 0,
	EXIT_FAIL = 1,		/* operation failed (I/O, missing file, ...) */
	EXIT_USAGE = 2,		/* bad command line */
	EXIT_UNCLEAN = 3,	/* image not closed cleanly (in-use flag) */
	EXIT_CORRUPT = 4,	/* image or descriptor invalid or corrupt */
	EXIT_BUSY = 5,		/* locked by ploopfs or another command, or
				 * mounted read-only and the command writes */
	EXIT_LEAKS = 6,		/* check: leaked clusters only */
	EXIT_REPAIRED = 7,	/* check --repair: repaired, now consistent */
	EXIT_TIMEOUT = 8,	/* the ploopfs daemon did not answer in time */
	EXIT_MISMATCH = 9,	/* verify: a sealed delta does not match its
				 * manifest, or the manifest is damaged */
};

#endif /* PF_CLI_H */
