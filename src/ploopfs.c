// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ploopfs: serve the delta stack of a ploop image directory as one flat
 * file through FUSE (ploopfs(8)).
 *
 *   ploopfs [-f] [-o opts] IMAGE_DIR MOUNTPOINT
 *
 * Order of start-up: open and lock the image (errors reach the terminal),
 * mount, daemonize, then start the I/O and writeback threads (fork does
 * not carry threads).  On unmount or SIGTERM/SIGINT the loop ends, the
 * stack is closed (everything committed, in-use flag cleared) and only
 * then is the session unmounted and destroyed, so late replies never go
 * to a closed descriptor.
 */
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "csum.h"
#include "control.h"
#include "events.h"
#include "fuse_fe.h"
#include "log.h"
#include "mounts.h"
#include "serve.h"
#include "stack.h"

#define EVENTS_KEPT	4096	/* events a slow reader may fall behind */
#define CLOSED_WAIT_S	30	/* for a daemon still closing the image */

struct config {
	char *image_dir;
	char *name;
	char *commit;		/* seconds, may be fractional */
	char *threads;
	char *enospc_timeout;
	int max_threads;	/* libfuse's, refused: threads= is ours */
	int no_direct;
	int uring;
	int ro;
	char *seal;		/* digest of the manifests, or "off" */
};

#define OPT(t, p) { t, offsetof(struct config, p), 1 }
/* "ro" is ours and libfuse's (the kernel mounts read-only): seen, kept.
 * (FUSE_OPT_KEY_KEEP would keep it without calling opt_proc.) */
#define KEY_RO	1

static const struct fuse_opt cfg_opts[] = {
	OPT("name=%s", name),
	OPT("commit=%s", commit),
	OPT("threads=%s", threads),
	OPT("enospc_timeout=%s", enospc_timeout),
	OPT("max_threads=", max_threads),
	OPT("no_direct", no_direct),
	OPT("uring", uring),
	OPT("seal=%s", seal),
	FUSE_OPT_KEY("ro", KEY_RO),
	FUSE_OPT_END
};

static int opt_proc(void *data, const char *arg, int key,
		    struct fuse_args *outargs)
{
	struct config *c = data;

	(void)outargs;
	if (key == FUSE_OPT_KEY_NONOPT && !c->image_dir) {
		c->image_dir = strdup(arg);
		return 0;	/* consumed: the mountpoint stays for libfuse */
	}
	if (key == KEY_RO)
		c->ro = 1;
	return 1;	/* kept for libfuse */
}

static int parse_commit_ms(const char *s, unsigned *ms)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || *end || v <= 0 || v > 3600)
		return -EINVAL;
	*ms = (unsigned)(v * 1000 + 0.5);
	if (!*ms)
		*ms = 1;
	return 0;
}

/* A decimal in [@min, @max]: no sign, no blanks, no suffix. */
static int parse_uint(const char *s, unsigned min, unsigned max,
		      unsigned *out)
{
	unsigned long v;
	char *end;

	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

#define THREADS_MAX	1024u
#define ENOSPC_TIMEOUT_MAX	(7u * 24 * 3600)

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ploopfs [-f] [-d] [-o <opts>] <image-dir> <mountpoint>\n"
		"\n"
		"  -f                 stay in the foreground, log to stderr\n"
		"  -d                 FUSE debug output (implies -f)\n"
		"  -h, --help         this text\n"
		"  -V, --version      the version\n"
		"\n"
		"ploopfs options (-o):\n"
		"  name=<name>        file name of the disk in the mount (default \"%s\")\n"
		"  commit=<seconds>   interval of periodic BAT commits (default 1)\n"
		"  threads=<n>        most FUSE worker threads, 1 to %u (default %u)\n"
		"  enospc_timeout=<s> fail writes held for lack of host space after\n"
		"                     <s> seconds (default 0: hold until space is freed)\n"
		"  no_direct          do not use O_DIRECT on the delta files\n"
		"  uring              take requests over io_uring when the kernel offers\n"
		"                     it (fuse module parameter enable_uring=Y)\n"
		"  ro                 read-only: nothing in the image directory changes\n"
		"  seal=<digest>|off  digest of the manifests of snapshots, sealed in\n"
		"                     the background (default sha256); off: sealed\n"
		"                     only by ploopctl verify\n"
		"  allow_other        let other users see the mount (the disk stays\n"
		"                     the mounting user's: permissions are enforced)\n"
		"\n"
		"FUSE mount options (-o):\n",
		PF_FE_DEFAULT_NAME, THREADS_MAX, PF_FE_THREADS);
}

/* Our options (cfg) into @so and @fe_threads; prints the one line. */
static int check_options(const struct config *cfg, struct pf_stack_opts *so,
			 unsigned *fe_threads)
{
	*fe_threads = PF_FE_THREADS;
	if (cfg->max_threads) {
		fprintf(stderr, "ploopfs: -o max_threads is not ours: use -o threads=<n>\n");
		return -EINVAL;
	}
	if (cfg->commit && parse_commit_ms(cfg->commit, &so->commit_ms) < 0) {
		fprintf(stderr, "ploopfs: invalid commit interval '%s' (seconds, more than 0, at most 3600)\n",
			cfg->commit);
		return -EINVAL;
	}
	if (cfg->threads &&
	    parse_uint(cfg->threads, 1, THREADS_MAX, fe_threads) < 0) {
		fprintf(stderr, "ploopfs: invalid threads '%s' (1 to %u)\n",
			cfg->threads, THREADS_MAX);
		return -EINVAL;
	}
	if (cfg->enospc_timeout &&
	    parse_uint(cfg->enospc_timeout, 0, ENOSPC_TIMEOUT_MAX,
		       &so->enospc_timeout_s) < 0) {
		fprintf(stderr, "ploopfs: invalid enospc_timeout '%s' (seconds, 0 to %u; 0: hold until space is freed)\n",
			cfg->enospc_timeout, ENOSPC_TIMEOUT_MAX);
		return -EINVAL;
	}
	if (cfg->seal && !strcmp(cfg->seal, "off")) {
		so->no_sealer = true;
	} else if (cfg->seal) {
		struct pf_csum_alg *a = NULL;
		struct pf_why why = { "" };

		if (pf_csum_alg_get(cfg->seal, &a, &why)) {
			fprintf(stderr, "ploopfs: invalid seal '%s': %s\n",
				cfg->seal, why.msg);
			return -EINVAL;
		}
		pf_csum_alg_free(a);
		so->seal_algorithm = cfg->seal;
	}
	if (cfg->name && (!*cfg->name || strchr(cfg->name, '/') ||
			  !strcmp(cfg->name, ".") || !strcmp(cfg->name, ".."))) {
		fprintf(stderr, "ploopfs: invalid disk name '%s'\n", cfg->name);
		return -EINVAL;
	}
	if (cfg->name && !strcmp(cfg->name, PF_FE_SNAP_DIR)) {
		fprintf(stderr, "ploopfs: invalid disk name '%s': the snapshot views have it\n",
			cfg->name);
		return -EINVAL;
	}
	return 0;
}

/*
 * Background start.  The parent stays until the daemon serves or fails,
 * so that `ploopfs DIR MNT` exits 0 only once the disk is there, and a
 * failure after the fork reaches the terminal with the daemon's exit
 * status.  Until then the daemon logs to stderr (still the parent's);
 * once it serves it reports on the pipe, detaches from the terminal and
 * logs to syslog.  A daemon that dies closes the pipe: the parent reads
 * EOF and exits with its status.
 */
static int ready_fd = -1;

static void daemonize(void)
{
	int p[2], st, fd;
	ssize_t n;
	char c;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0 || (pid = fork()) < 0) {
		fprintf(stderr, "ploopfs: cannot start the daemon: %s\n",
			strerror(errno));
		exit(EXIT_FAIL);
	}
	if (pid) {
		close(p[1]);
		do {
			n = read(p[0], &c, 1);
		} while (n < 0 && errno == EINTR);
		if (n == 1)
			_exit(EXIT_OK);
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		_exit(WIFEXITED(st) && WEXITSTATUS(st) ? WEXITSTATUS(st) :
							 EXIT_FAIL);
	}
	close(p[0]);
	ready_fd = p[1];
	if (setsid() < 0 || chdir("/") < 0)
		fprintf(stderr, "ploopfs: cannot detach: %s\n", strerror(errno));
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		(void)dup2(fd, STDIN_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
}

/* The daemon serves: release the waiting parent, leave the terminal. */
static void daemon_ready(void)
{
	int fd;

	if (ready_fd < 0)
		return;
	pf_log_init("ploopfs", false);
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		(void)dup2(fd, STDOUT_FILENO);
		(void)dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
	if (write(ready_fd, "", 1) != 1)
		pf_log(PF_LOG_WARNING, "cannot release the starting process: %s",
		       strerror(errno));
	close(ready_fd);
	ready_fd = -1;
}

/* The mount's source, "ploopfs:" + the image directory's absolute
 * path (ploopctl finds a mount by it, mounts.h), escaped for libfuse's
 * option list. */
static int mount_source(const char *dir, char **out)
{
	char *abs = realpath(dir, NULL), *o;
	const char *p;

	*out = NULL;
	if (!abs)
		return -errno;
	o = malloc(strlen(PF_MOUNT_SOURCE_PFX) + 2 * strlen(abs) + 1);
	if (!o) {
		free(abs);
		return -ENOMEM;
	}
	*out = o;
	o = stpcpy(o, PF_MOUNT_SOURCE_PFX);
	for (p = abs; *p; p++) {
		if (*p == ',' || *p == '\\')
			*o++ = '\\';
		*o++ = *p;
	}
	*o = '\0';
	free(abs);
	return 0;
}

/* Whether another daemon serves the image directory @dirfd: its control
 * socket accepts a connection.  One that is closing the image is waited
 * for, as for the lock. */
static bool ro_daemon_serves(int dirfd)
{
	int fd;

	if (pf_ctl_wait_closed(dirfd, CLOSED_WAIT_S * 1000) < 0)
		return true;	/* still there after the wait */
	if (pf_ctl_connect(dirfd, CLOSED_WAIT_S * 1000, &fd, NULL))
		return false;
	close(fd);
	return true;
}

/* Held writes give up once the session is ending (unmount, signal).
 * The loop resets the session's exited flag when it returns, and with
 * -o uring requests are still being finished after that: loop_ended
 * keeps the answer. */
struct ending {
	struct fuse_session *se;
	atomic_bool loop_ended;
};

static bool session_ending(void *ctx)
{
	struct ending *e = ctx;

	return atomic_load(&e->loop_ended) ||
	       (e->se && fuse_session_exited(e->se));
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct config cfg = { 0 };
	struct fuse_cmdline_opts fo;
	struct pf_stack_opts so = { 0 };
	struct fuse_loop_config *lc = NULL;
	struct fuse_session *se = NULL;
	struct ending ending = { NULL, false };
	struct pf_stack *stack = NULL;
	struct pf_why why = { "" };
	struct pf_events *events = NULL;
	struct pf_ctl *ctl = NULL;
	struct pf_serve serve;
	struct pf_fe fe;
	struct pf_ring_data ring_data;
	struct pf_ring *ring = NULL;
	char *fsopt = NULL, *disk_path = NULL, *source = NULL;
	int rc = EXIT_FAIL, ret, dirfd = -1;
	unsigned fe_threads;
	bool fe_ready = false;

	memset(&fo, 0, sizeof(fo));
	if (fuse_opt_parse(&args, &cfg, cfg_opts, opt_proc) < 0 ||
	    fuse_parse_cmdline(&args, &fo) != 0) {
		rc = EXIT_USAGE;
		goto out;
	}
	if (fo.show_help) {
		usage(stdout);
		fuse_lowlevel_help();
		rc = EXIT_OK;
		goto out;
	}
	if (fo.show_version) {
		printf("ploopfs %s\n", PLOOPFS_VERSION);
		fuse_lowlevel_version();
		rc = EXIT_OK;
		goto out;
	}
	if (!cfg.image_dir || !fo.mountpoint) {
		usage(stderr);
		rc = EXIT_USAGE;
		goto out;
	}
	if (check_options(&cfg, &so, &fe_threads) < 0) {
		rc = EXIT_USAGE;
		goto out;
	}
	pf_log_init("ploopfs", true);

	if (pf_events_new(EVENTS_KEPT, &events)) {
		fprintf(stderr, "ploopfs: out of memory\n");
		goto out;
	}
	so.dir = cfg.image_dir;
	so.no_direct = cfg.no_direct;
	so.read_only = cfg.ro;
	so.stopping = session_ending;
	so.stopping_ctx = &ending;
	so.event = pf_serve_event;
	so.event_ctx = events;
	/* before daemonizing, which leaves the working directory */
	dirfd = open(cfg.image_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		fprintf(stderr, "ploopfs: %s: %s\n", cfg.image_dir,
			strerror(errno));
		goto out;
	}
	ret = pf_stack_open(&so, &stack, &why);
	/* a daemon of this image that was unmounted and is closing it:
	 * a remount waits for it */
	if (ret == -EBUSY &&
	    pf_ctl_wait_closed(dirfd, CLOSED_WAIT_S * 1000) == 1) {
		why.msg[0] = '\0';
		ret = pf_stack_open(&so, &stack, &why);
	}
	/* read-only, the lock is shared: one daemon per image all the same
	 * (one control socket name), so a second read-only mount is busy */
	if (!ret && cfg.ro && ro_daemon_serves(dirfd)) {
		pf_stack_close(stack);
		stack = NULL;
		ret = -EBUSY;
		pf_why_fmt(&why, "image is busy (mounted read-only by another ploopfs)");
	}
	if (ret) {
		fprintf(stderr, "ploopfs: %s: %s\n", cfg.image_dir,
			why.msg[0] ? why.msg : strerror(-ret));
		rc = ret == -EBUSY ? EXIT_BUSY :
		     ret == -EUCLEAN || ret == -EINVAL || ret == -EFBIG ?
				     EXIT_CORRUPT :
				     EXIT_FAIL;
		goto out;
	}
	pf_fe_init(&fe);
	fe_ready = true;
	fe.stack = stack;
	fe.name = cfg.name ? cfg.name : PF_FE_DEFAULT_NAME;
	fe.read_only = cfg.ro;
	fe.mounted = time(NULL);

	/* default_permissions: the kernel checks the modes above (0600,
	 * the daemon's user), so that -o allow_other lets other users see
	 * the mount, not read or write the disk */
	if (mount_source(cfg.image_dir, &source) < 0 ||
	    asprintf(&fsopt, "-ofsname=%s,subtype=ploopfs,default_permissions,max_read=%u",
		     source, PF_FE_MAX_IO) < 0 ||
	    fuse_opt_add_arg(&args, fsopt) < 0) {
		fsopt = NULL;
		goto out_close;
	}
	se = fuse_session_new(&args, pf_fe_ops(), sizeof(struct fuse_lowlevel_ops),
			      &fe);
	ending.se = se;
	if (!se)
		goto out_close;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_close;
	if (fuse_session_mount(se, fo.mountpoint) != 0)
		goto out_signals;
	if (!fo.foreground)
		daemonize();
	/* FUSE over io_uring if asked for and offered (fuse_uring.h) */
	if (cfg.uring) {
		pf_fe_ring_data(&fe, &ring_data);
		ret = pf_ring_attach(se, &ring_data, 0, &ring);
		if (ret)
			pf_log(PF_LOG_WARNING,
			       "%s: FUSE over io_uring not used: %s",
			       cfg.image_dir, strerror(-ret));
	}

	ret = pf_stack_start(stack);
	if (ret) {
		pf_log(PF_LOG_ERR, "%s: cannot start threads: %s",
		       cfg.image_dir, strerror(-ret));
		goto out_unmount;
	}
	/* The control socket: status, events, online snapshots. */
	if (asprintf(&disk_path, "%s/%s", fo.mountpoint, fe.name) < 0) {
		disk_path = NULL;
		pf_log(PF_LOG_ERR, "%s: cannot set up the control socket",
		       cfg.image_dir);
		goto out_unmount;
	}
	serve.stack = stack;
	serve.events = events;
	serve.disk_path = disk_path;
	serve.mount_point = fo.mountpoint;
	serve.ring = ring;
	serve.read_only = cfg.ro;
	/* read-only: no socket file, the directory must not change */
	if (cfg.ro)
		ret = pf_ctl_start_abstract(dirfd, cfg.image_dir,
					    pf_serve_cmds(), &serve, &ctl, &why);
	else
		ret = pf_ctl_start(dirfd, cfg.image_dir, pf_serve_cmds(),
				   &serve, &ctl, &why);
	if (ret) {
		pf_log(PF_LOG_ERR, "%s: control socket: %s", cfg.image_dir,
		       why.msg[0] ? why.msg : strerror(-ret));
		goto out_unmount;
	}
	/* unmounted while the daemon was stopped: hello says closing */
	pf_ctl_set_gone(ctl, pf_serve_gone);
	pf_events_emit(events, "mount", "serving on %s", disk_path);
	daemon_ready();
	pf_log(PF_LOG_INFO, "%s: serving on %s/%s", cfg.image_dir,
	       fo.mountpoint, fe.name);
	lc = fuse_loop_cfg_create();
	if (!lc)
		goto out_unmount;
	fuse_loop_cfg_set_clone_fd(lc, 1);
	fuse_loop_cfg_set_max_threads(lc, fe_threads);
	ret = fuse_session_loop_mt(se, lc);
	atomic_store(&ending.loop_ended, true);
	/* libfuse's signal handler leaves the signal number as the loop's
	 * result: SIGTERM, SIGINT and SIGHUP are requests to stop cleanly */
	if (ret < 0)
		ret = -ret;
	rc = ret == 0 || ret == SIGTERM || ret == SIGINT || ret == SIGHUP ?
		     EXIT_OK :
		     EXIT_FAIL;

out_unmount:
	/* no request may reach the stack while it closes */
	pf_ring_stop(ring);
	/* control commands use the stack: they finish first; the socket
	 * stays, answering "closing", so that ploopctl waits for the lock
	 * (unmount means closed) */
	pf_ctl_drain(ctl);
	/* close first: it waits for replies still in flight */
	ret = pf_stack_close(stack);
	stack = NULL;
	pf_ctl_stop(ctl);
	ctl = NULL;
	if (ret) {
		pf_log(PF_LOG_ERR, "%s: image not closed cleanly: %s",
		       cfg.image_dir, strerror(-ret));
		rc = EXIT_FAIL;
	} else {
		pf_log(PF_LOG_INFO, cfg.ro ? "%s: closed (read-only: nothing written)" :
					     "%s: closed cleanly",
		       cfg.image_dir);
	}
	/* every reply is out: the rings can go */
	pf_ring_detach(ring);
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_close:
	if (stack && pf_stack_close(stack))
		rc = EXIT_FAIL;
	if (se)
		fuse_session_destroy(se);
out:
	if (lc)
		fuse_loop_cfg_destroy(lc);
	if (fe_ready)
		pf_fe_destroy(&fe);
	pf_events_free(events);
	if (dirfd >= 0)
		close(dirfd);
	free(disk_path);
	free(fsopt);
	free(source);
	free(fo.mountpoint);
	free(cfg.image_dir);
	free(cfg.name);
	free(cfg.commit);
	free(cfg.threads);
	free(cfg.enospc_timeout);
	free(cfg.seal);
	fuse_opt_free_args(&args);
	return rc;
}
