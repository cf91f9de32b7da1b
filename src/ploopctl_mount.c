// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ploopctl mount and umount: start an image's daemon, and stop it so
 * that the image is closed when the command returns.
 *
 * fusermount3 -u (or umount) returns once the mount is gone, but the
 * daemon then still commits, clears the in-use flag and closes the
 * image; a script that goes on at once (check, a remount, qemu-img)
 * finds it busy or flagged in use.  umount waits for the daemon to exit:
 * the daemon holds the image directory's lock (pf_lock) until it does,
 * so the lock taken is the proof, and the in-use flag, read under it,
 * says whether the close was clean.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "mounts.h"
#include "ploopctl_i.h"

#define LOCK_POLL_MS	10	/* the closing daemon's lock is tried this often */

/* mount */

static void usage_mount(FILE *out)
{
	fprintf(out,
		"usage: ploopctl mount [-o <options>] <dir> <mountpoint>\n"
		"  serve the disk of image directory <dir> as <mountpoint>/disk: runs\n"
		"  ploopfs(8) with the same options and returns once the disk is served\n"
		"  -o <options>   ploopfs options, comma-separated (ro, name=, threads=,\n"
		"                 allow_other, ...; see ploopfs(8))\n");
}

/* The ploopfs next to this ploopctl (a build directory, or the sbin it
 * was installed to), else the one on the PATH.  Returns a static. */
static const char *ploopfs_path(void)
{
	static char path[PATH_MAX];
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n > 0) {
		self[n] = '\0';
		slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			if (snprintf(path, sizeof(path), "%s/ploopfs", self) <
				    (int)sizeof(path) &&
			    access(path, X_OK) == 0)
				return path;
		}
	}
	return "ploopfs";
}

static int cmd_mount(int argc, char **argv)
{
	const char *opts_arg = NULL, *prog = ploopfs_path();
	const struct cmd_opt opts[] = {
		{ "options", 'o', OPT_ARG, &opts_arg },
	};
	char *args[6];
	int rc, st, i = 0;
	pid_t pid;

	rc = parse_args(argc, argv, opts, PF_ARRAY_SIZE(opts), usage_mount, 2,
			2);
	if (rc >= 0)
		return rc;
	args[i++] = (char *)prog;
	if (opts_arg) {
		args[i++] = (char *)"-o";
		args[i++] = (char *)opts_arg;
	}
	args[i++] = argv[optind];
	args[i++] = argv[optind + 1];
	args[i] = NULL;
	/* ploopfs itself waits until the disk is served or start-up has
	 * failed, and says why on stderr: its status is ours */
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		err_line(argv[optind], "cannot start ploopfs: %s",
			 strerror(errno));
		return EXIT_FAIL;
	}
	if (pid == 0) {
		execvp(prog, args);
		err_line(argv[optind], "cannot run %s: %s", prog,
			 strerror(errno));
		_exit(EXIT_FAIL);
	}
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR) {
			err_line(argv[optind], "cannot wait for ploopfs: %s",
				 strerror(errno));
			return EXIT_FAIL;
		}
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	err_line(argv[optind], "ploopfs was killed by signal %d",
		 WTERMSIG(st));
	return EXIT_FAIL;
}

/* umount */

static void usage_umount(FILE *out)
{
	fprintf(out,
		"usage: ploopctl umount [--timeout <s>] <dir>|<mountpoint>\n"
		"  unmount the disk of image directory <dir> (or the ploopfs mount on\n"
		"  <mountpoint>) and return once its daemon has closed the image\n"
		"  --timeout <s>   wait at most <s> seconds for the daemon to close the\n"
		"                  image (default %d; 0: no limit)\n",
		CTL_TIMEOUT_DEFAULT);
}

static long mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * The ploopfs mount @arg names, as a mount point or as the image
 * directory it serves: *@mnt and *@dir (malloc'ed).  Prints the error;
 * returns an exit status.
 */
static int find_mount(const char *arg, char **mnt, char **dir)
{
	const struct pf_mount_ent *e;
	struct pf_mount_ent *v;
	size_t n;
	int rc = EXIT_OK;

	*mnt = *dir = NULL;
	if (mount_lookup(arg, false, true, &v, &n, &e)) {
		pf_mounts_free(v, n);
		return EXIT_FAIL;
	}
	if (!e) {	/* not a mount point: an image directory? */
		pf_mounts_free(v, n);
		if (mount_lookup(arg, true, true, &v, &n, &e)) {
			pf_mounts_free(v, n);
			return EXIT_FAIL;
		}
	}
	if (!e) {
		err_line(arg, "no ploopfs mount of or on it");
		rc = EXIT_FAIL;
	} else if (strncmp(e->source, PF_MOUNT_SOURCE_PFX,
			   strlen(PF_MOUNT_SOURCE_PFX)) != 0) {
		err_line(e->dir, "the mount does not name its image directory (source \"%s\")",
			 e->source);
		rc = EXIT_FAIL;
	} else {
		*mnt = strdup(e->dir);
		*dir = strdup(e->source + strlen(PF_MOUNT_SOURCE_PFX));
		if (!*mnt || !*dir) {
			err_line(arg, "out of memory");
			rc = EXIT_FAIL;
		}
	}
	pf_mounts_free(v, n);
	return rc;
}

/* Unmount @mnt: umount2() as root, fusermount3 -u otherwise.  Prints the
 * error; returns an exit status. */
static int unmount(const char *mnt)
{
	int st;
	pid_t pid;

	if (geteuid() == 0) {
		if (umount2(mnt, UMOUNT_NOFOLLOW) == 0)
			return EXIT_OK;
		if (errno == EBUSY) {
			err_line(mnt, "the disk is in use (a loop device, a mounted file system or an open file): not unmounted");
			return EXIT_BUSY;
		}
		err_line(mnt, "cannot unmount: %s", strerror(errno));
		return EXIT_FAIL;
	}
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		err_line(mnt, "cannot start fusermount3: %s", strerror(errno));
		return EXIT_FAIL;
	}
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", "-u", "--", mnt,
		       (char *)NULL);
		err_line(mnt, "cannot run fusermount3: %s", strerror(errno));
		_exit(EXIT_FAIL);
	}
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return EXIT_FAIL;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return EXIT_OK;
	/* fusermount3 said why on stderr; it fails on a busy disk too */
	err_line(mnt, "fusermount3 -u failed: not unmounted");
	return EXIT_BUSY;
}

/*
 * Wait until the daemon that served @dirfd has exited: its lock on the
 * directory is free.  Returns an exit status (printed against @dir).
 */
static int wait_daemon_gone(int dirfd, const char *dir)
{
	long end = mono_ms() + (long)ctl_timeout * 1000;
	struct timespec nap = { 0, LOCK_POLL_MS * 1000000L };
	int ret;

	for (;;) {
		ret = pf_lock(dirfd, false);
		if (!ret) {
			(void)flock(dirfd, LOCK_UN);
			return EXIT_OK;
		}
		if (ret != -EBUSY) {
			err_line(dir, "cannot lock: %s", strerror(-ret));
			return EXIT_FAIL;
		}
		if (ctl_timeout && mono_ms() >= end) {
			err_line(dir, "unmounted, but the ploopfs daemon did not close the image within %u s",
				 ctl_timeout);
			return EXIT_TIMEOUT;
		}
		nanosleep(&nap, NULL);
	}
}

static int cmd_umount(int argc, char **argv)
{
	const struct cmd_opt opts[] = { OPT_TIMEOUT };
	struct pf_delta **v = NULL;
	char *mnt = NULL, *dir = NULL;
	struct image im;
	size_t n = 0, i;
	int rc, dirfd = -1;

	rc = parse_args(argc, argv, opts, PF_ARRAY_SIZE(opts), usage_umount,
			1, 1);
	if (rc >= 0)
		return rc;
	rc = find_mount(argv[optind], &mnt, &dir);
	if (rc != EXIT_OK)
		goto out;
	/* opened first: the lock is then the lock of the directory that
	 * was served, whatever its path does meanwhile */
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		err_line(dir, "%s", strerror(errno));
		rc = EXIT_FAIL;
		goto out;
	}
	rc = unmount(mnt);
	if (rc == EXIT_OK)
		rc = wait_daemon_gone(dirfd, dir);
	if (rc != EXIT_OK)
		goto out;
	/* closed cleanly?  (A daemon that was killed leaves it set.) */
	rc = image_open(&im, dir, 1, false);
	if (rc == EXIT_OK)
		rc = chain_open(&im, false, &v, &n);
	for (i = 0; rc == EXIT_OK && i < n; i++)
		if (v[i]->hdr.in_use == PF_INUSE_OPEN) {
			err_line(v[i]->name,
				 "unmounted, but the in-use flag is set: the daemon did not close the image cleanly (run ploopctl check)");
			rc = EXIT_UNCLEAN;
		}
	deltas_close(v, n);
	image_close(&im);
out:
	if (dirfd >= 0)
		close(dirfd);
	free(mnt);
	free(dir);
	return rc;
}

const struct command mount_commands[] = {
	{ "mount", cmd_mount, "serve an image's disk with ploopfs (returns once served)" },
	{ "umount", cmd_umount, "unmount a disk; returns once its image is closed" },
	{ NULL, NULL, NULL },
};
