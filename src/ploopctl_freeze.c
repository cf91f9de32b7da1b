// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ploopctl snapshot of a mounted disk: freeze the file systems mounted
 * from it (FIFREEZE) around the daemon's switch, thaw them (FITHAW)
 * after, so that a snapshot of a live ext4 or xfs is consistent (journal
 * clean, every write before the snapshot in it), not just crash-
 * consistent.  See ploopctl_i.h.
 *
 * Where the freeze lives.  Here, in the caller, never in the daemon: the
 * frozen file system's writeback goes through the daemon (loop device ->
 * disk file -> FUSE -> ploopfs), and FIFREEZE syncs the file system
 * before it returns; a daemon that froze it from one of its own threads
 * could wait on writes that only its own, blocked, threads can serve.
 * While a file system is frozen, neither the daemon nor this process
 * needs anything from it: the daemon's files are in the image directory,
 * and nothing is printed here until everything is thawed (stdout or
 * stderr could be a file on the frozen file system), but for the lines
 * of --verbose, which the user asked for.
 *
 * Which file systems: the loop devices whose backing file is the disk of
 * the image's ploopfs mount, with their partitions (mounts.h), and for
 * each the mount whose st_dev it is (a file system mounted twice, or
 * bind-mounted, is frozen once).
 *
 * Thawed on every path: errors, and SIGINT, SIGTERM, SIGHUP and SIGQUIT,
 * whose handler thaws and then dies of the signal as before.  The
 * handler only makes system calls (ioctl, sigaction, raise), which are
 * async-signal-safe.  SIGKILL cannot be caught: a ploopctl killed so
 * leaves the file systems frozen (fsfreeze -u thaws them).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "cli.h"
#include "mounts.h"
#include "util.h"

#include "ploopctl_i.h"

#define FREEZE_MAX	64	/* file systems of one disk */

static const int freeze_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };

/* The file systems frozen now, for the signal handler too: an entry is
 * complete before n_frozen counts it (signals blocked meanwhile). */
static int frozen_fd[FREEZE_MAX];
static char *frozen_name[FREEZE_MAX];
static volatile sig_atomic_t n_frozen;
static struct sigaction old_act[PF_ARRAY_SIZE(freeze_signals)];
static bool handlers_set;

/* Lines to print once thawed (warnings) */
static char *deferred[FREEZE_MAX];
static size_t n_deferred;

static void thaw_on_signal(int sig)
{
	sig_atomic_t i;

	for (i = 0; i < n_frozen; i++)
		ioctl(frozen_fd[i], FITHAW, 0);
	n_frozen = 0;
	/* SA_RESETHAND put the default back: die of @sig once we return */
	raise(sig);
}

static void block_signals(bool block, sigset_t *old)
{
	sigset_t set;
	size_t i;

	sigemptyset(&set);
	for (i = 0; i < PF_ARRAY_SIZE(freeze_signals); i++)
		sigaddset(&set, freeze_signals[i]);
	sigprocmask(block ? SIG_BLOCK : SIG_SETMASK, block ? &set : old,
		    block ? old : NULL);
}

static void PF_PRINTF(1, 2) defer(const char *fmt, ...)
{
	va_list ap;
	char *line;
	int ret;

	if (n_deferred == FREEZE_MAX)
		return;
	va_start(ap, fmt);
	ret = vasprintf(&line, fmt, ap);
	va_end(ap);
	if (ret >= 0)
		deferred[n_deferred++] = line;
}

void fs_thaw_all(bool verbose)
{
	sigset_t old;
	size_t i;
	int n;

	block_signals(true, &old);
	n = n_frozen;
	n_frozen = 0;
	for (i = 0; i < (size_t)n; i++) {
		if (ioctl(frozen_fd[i], FITHAW, 0) < 0)
			defer("%s: cannot thaw: %s (fsfreeze -u thaws it)",
			      frozen_name[i] ? frozen_name[i] : "?",
			      strerror(errno));
		else if (verbose)
			defer("%s: thawed",
			      frozen_name[i] ? frozen_name[i] : "?");
		close(frozen_fd[i]);
		free(frozen_name[i]);
	}
	if (handlers_set) {
		for (i = 0; i < PF_ARRAY_SIZE(freeze_signals); i++)
			sigaction(freeze_signals[i], &old_act[i], NULL);
		handlers_set = false;
	}
	block_signals(false, &old);
	for (i = 0; i < n_deferred; i++) {
		err_line(NULL, "%s", deferred[i]);
		free(deferred[i]);
	}
	n_deferred = 0;
}

/* Freeze the file system of device @dev, mounted somewhere in @v.
 * Returns an exit status; EXIT_OK also for one not mounted or that
 * cannot be frozen (a warning deferred). */
static int freeze_dev(const struct pf_mount_ent *v, size_t n,
		      const struct pf_devno *dev)
{
	dev_t want = makedev(dev->major, dev->minor);
	struct stat st;
	size_t k;
	int fd, i;

	for (i = 0; i < n_frozen; i++)
		if (!fstat(frozen_fd[i], &st) && st.st_dev == want)
			return EXIT_OK;	/* a partition listed twice */
	for (k = pf_mounts_find_dev(v, n, 0, dev->major, dev->minor); k < n;
	     k = pf_mounts_find_dev(v, n, k + 1, dev->major, dev->minor)) {
		fd = open(v[k].dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		/* a mount point mounted over shows another file system */
		if (fd < 0)
			continue;
		if (fstat(fd, &st) < 0 || st.st_dev != want) {
			close(fd);
			continue;
		}
		if (n_frozen == FREEZE_MAX) {
			close(fd);
			defer("%s: more than %d file systems to freeze",
			      v[k].dir, FREEZE_MAX);
			return EXIT_FAIL;
		}
		if (ioctl(fd, FIFREEZE, 0) < 0) {
			int err = errno;

			close(fd);
			if (err == EOPNOTSUPP) {
				defer("%s: warning: the file system cannot be frozen (%s): the snapshot is only crash-consistent",
				      v[k].dir, strerror(err));
				return EXIT_OK;
			}
			if (err == EBUSY) {
				defer("%s: the file system is already frozen (fsfreeze, or another snapshot): not taking the snapshot",
				      v[k].dir);
				return EXIT_BUSY;
			}
			defer("%s: cannot freeze the file system: %s",
			      v[k].dir, strerror(err));
			return EXIT_FAIL;
		}
		frozen_fd[n_frozen] = fd;
		frozen_name[n_frozen] = strdup(v[k].dir);
		n_frozen++;
		return EXIT_OK;
	}
	return EXIT_OK;	/* not mounted */
}

int fs_freeze_all(const char *dir, bool verbose)
{
	struct pf_mount_ent *v = NULL;
	const struct pf_mount_ent *pm;
	struct pf_devno *devs = NULL;
	struct sigaction sa;
	size_t n = 0, nd = 0, i;
	sigset_t old;
	int ret, rc = EXIT_OK;

	if (mount_lookup(dir, true, true, &v, &n, &pm)) {
		pf_mounts_free(v, n);
		return EXIT_FAIL;
	}
	/* a daemon that answers without a mount in our namespace: its
	 * loop devices are not ours to find */
	if (pm) {
		ret = pf_mounts_loop_devs("/sys/block", pm->dir, &devs, &nd);
		if (ret) {
			err_line("/sys/block", "cannot list the loop devices: %s (--no-freeze skips the freeze)",
				 strerror(-ret));
			rc = EXIT_FAIL;
		}
	}
	if (rc == EXIT_OK && nd) {
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = thaw_on_signal;
		sa.sa_flags = SA_RESETHAND;
		sigemptyset(&sa.sa_mask);
		/* A signal between a freeze and its entry would leave it
		 * frozen: blocked while they are made. */
		block_signals(true, &old);
		for (i = 0; i < PF_ARRAY_SIZE(freeze_signals); i++)
			sigaction(freeze_signals[i], &sa, &old_act[i]);
		handlers_set = true;
		for (i = 0; rc == EXIT_OK && i < nd; i++)
			rc = freeze_dev(v, n, &devs[i]);
		block_signals(false, &old);
		/* asked for: the user's stderr is not on them */
		for (i = 0; rc == EXIT_OK && verbose && i < (size_t)n_frozen;
		     i++)
			err_line(frozen_name[i] ? frozen_name[i] : "?",
				 "frozen");
	}
	free(devs);
	pf_mounts_free(v, n);
	if (rc != EXIT_OK)
		fs_thaw_all(verbose);	/* prints the error too */
	return rc;
}
