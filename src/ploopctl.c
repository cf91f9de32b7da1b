// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ploopctl: image management (ploopctl(8)).
 *
 * Every command takes an image directory (DiskDescriptor.xml plus its
 * deltas); info and check also take a single delta file.  Commands that
 * only read never open a file for writing.  Commands that write take an
 * exclusive lock on the image directory, so they fail with "busy" (exit 5)
 * while a ploopfs daemon or another ploopctl holds it; on an image
 * mounted read-only (ploopfs -o ro) they say so, with the same status.
 *
 * Errors are one line on stderr, "ploopctl: <file>: <problem>", and a
 * documented exit status (enum pf_exit in cli.h, man page EXIT STATUS).
 *
 * On a mounted image some commands go to the daemon over its control
 * socket.  The daemon must answer within --timeout seconds (an idle
 * limit: the commands that may run for minutes send keepalives, see
 * control.h), else the command fails with EXIT_TIMEOUT: a daemon that is
 * stopped or hung never leaves ploopctl, or a script around it, waiting.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "cli.h"
#include "control.h"
#include "delta.h"
#include "descriptor.h"
#include "format.h"
#include "image.h"
#include "mounts.h"
#include "stack.h"
#include "util.h"

#include "ploopctl_i.h"


static const char *prog = "ploopctl";
unsigned ctl_timeout = CTL_TIMEOUT_DEFAULT;

void PF_PRINTF(2, 3) err_line(const char *file, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	if (file)
		fprintf(stderr, "%s: ", file);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* Exit status for an error returned while reading an image. */
int exit_for(int err)
{
	switch (err) {
	case -EINVAL:
	case -EUCLEAN:
	case -EFBIG:
		return EXIT_CORRUPT;
	case -EBUSY:
		return EXIT_BUSY;
	default:
		return EXIT_FAIL;
	}
}

/* JSON output */

void json_str(FILE *out, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	fputc('"', out);
	for (; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(out, "\\%c", *p);
		else if (*p < 0x20)
			fprintf(out, "\\u%04x", *p);
		else
			fputc(*p, out);
	}
	fputc('"', out);
}

const char *in_use_name(uint32_t v)
{
	switch (v) {
	case PF_INUSE_CLOSED:
		return "closed";
	case PF_INUSE_OPEN:
		return "in-use";
	default:
		return "closed-v2.1";
	}
}

static int ctl_timeout_ms(void)
{
	return ctl_timeout ? (int)(ctl_timeout * 1000) : -1;
}

/* Print that the daemon of @dir still closes the image after the time
 * allowed; EXIT_TIMEOUT. */
static int daemon_still_closing(const char *dir)
{
	err_line(dir, "the ploopfs daemon is still closing the image after %u s",
		 ctl_timeout);
	return EXIT_TIMEOUT;
}

/* Print that the daemon of @dir did not answer in time; EXIT_TIMEOUT. */
static int daemon_timed_out(const char *dir)
{
	err_line(dir, "the ploopfs daemon did not answer within %u s (is it stopped or hung?)",
		 ctl_timeout);
	return EXIT_TIMEOUT;
}

/* The daemon of @dir answered that it is closing the image: wait for
 * it.  EXIT_DAEMON_CLOSED (the caller works on the files now), or an
 * exit status printed. */
static int daemon_closed(const char *dir)
{
	int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), ret;

	if (dirfd < 0) {
		err_line(dir, "%s", strerror(errno));
		return EXIT_FAIL;
	}
	ret = pf_ctl_wait_closed(dirfd, ctl_timeout_ms());
	close(dirfd);
	if (ret == -ETIMEDOUT)
		return daemon_still_closing(dir);
	if (ret == -ETIME)
		return daemon_timed_out(dir);
	return EXIT_DAEMON_CLOSED;
}


int mount_lookup(const char *path, bool by_source, bool print,
		 struct pf_mount_ent **v, size_t *n,
		 const struct pf_mount_ent **e)
{
	char *abs = realpath(path, NULL);
	int ret;

	*v = NULL;
	*n = 0;
	*e = NULL;
	if (!abs) {
		ret = -errno;
		if (print)
			err_line(path, "%s", strerror(-ret));
		return ret;
	}
	ret = pf_mounts_read(v, n);
	if (ret) {
		if (print)
			err_line(path, "cannot read the mount table: %s",
				 strerror(-ret));
	} else {
		*e = pf_mounts_find(*v, *n, abs, by_source);
	}
	free(abs);
	return ret;
}

/*
 * A ploopfs mount of image directory @dir is in our mount table: its
 * daemon serves it (or was killed), it is not closing.  Only a daemon
 * whose mount is gone can be closing the image, so only then is it
 * asked (pf_ctl_wait_closed()), and a stopped daemon that still serves
 * does not hold up the commands that read the files.
 */
static bool mounted_here(const char *dir)
{
	const struct pf_mount_ent *e;
	struct pf_mount_ent *v;
	size_t n;
	bool found;

	found = !mount_lookup(dir, true, false, &v, &n, &e) && e;
	pf_mounts_free(v, n);
	return found;
}

/*
 * A command that would change image @dir refuses while a read-only
 * ploopfs mount of it is in our mount table (ploopfs -o ro promises that
 * nothing in the directory changes): prints the one line and returns
 * EXIT_BUSY, else EXIT_OK.  The daemon refuses such commands too
 * (EROFS, daemon_call()), for a mount that another namespace sees.
 */
int refuse_if_read_only(const char *dir)
{
	const struct pf_mount_ent *e;
	struct pf_mount_ent *v;
	size_t n;
	bool ro;

	ro = !mount_lookup(dir, true, false, &v, &n, &e) && e && e->read_only;
	pf_mounts_free(v, n);
	if (!ro)
		return EXIT_OK;
	err_line(dir, "the image is mounted read-only");
	return EXIT_BUSY;
}

/* Opening images */


char *path_join(const char *dir, const char *name)
{
	char *p;

	if (asprintf(&p, "%s/%s", dir, name) < 0)
		return NULL;
	return p;
}

void image_close(struct image *im)
{
	if (im->dirfd >= 0)
		close(im->dirfd);
	pf_dd_free(im->dd);
	free(im->chain);
	free(im->dir);
	im->dirfd = -1;
	im->dd = NULL;
	im->chain = NULL;
	im->dir = NULL;
}

/*
 * Resolve @arg: a directory loads its descriptor and active chain; a
 * regular file is a single delta.  @lock: 0 none, 1 shared, 2 exclusive.
 * Prints the error; returns an exit code.
 */
int image_open(struct image *im, const char *arg, int lock,
		      bool file_ok)
{
	struct pf_why why = { "" };
	struct stat st;
	char *tmp;
	int ret;

	memset(im, 0, sizeof(*im));
	im->arg = arg;
	im->dirfd = -1;
	if (stat(arg, &st) < 0) {
		err_line(arg, "%s", strerror(errno));
		return EXIT_FAIL;
	}
	im->is_dir = S_ISDIR(st.st_mode);
	if (!im->is_dir && !(file_ok && S_ISREG(st.st_mode))) {
		err_line(arg, file_ok ? "not an image directory or delta file" :
					"not an image directory");
		return EXIT_FAIL;
	}
	if (im->is_dir) {
		im->dir = strdup(arg);
	} else {
		tmp = strdup(arg);
		im->dir = tmp ? strdup(dirname(tmp)) : NULL;
		free(tmp);
	}
	if (!im->dir) {
		err_line(arg, "out of memory");
		return EXIT_FAIL;
	}
	im->dirfd = open(im->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (im->dirfd < 0) {
		err_line(im->dir, "%s", strerror(errno));
		return EXIT_FAIL;
	}
	if (!lock) {
		/* no lock, but not the half-closed state of a daemon that
		 * was unmounted: wait for it to finish */
		ret = mounted_here(im->dir) ?
			      0 :
			      pf_ctl_wait_closed(im->dirfd, ctl_timeout_ms());
		if (ret == -ETIMEDOUT)
			return daemon_still_closing(im->dir);
		if (ret == -ETIME)
			return daemon_timed_out(im->dir);
	} else {
		ret = pf_lock(im->dirfd, lock == 2);
		if (ret == -EBUSY) {
			/* unmounted, its daemon still closing: wait */
			ret = mounted_here(im->dir) ?
				      0 :
				      pf_ctl_wait_closed(im->dirfd,
							 ctl_timeout_ms());
			if (ret == -ETIMEDOUT)
				return daemon_still_closing(im->dir);
			if (ret == -ETIME)
				return daemon_timed_out(im->dir);
			ret = ret == 1 ? pf_lock(im->dirfd, lock == 2) : -EBUSY;
		}
		if (ret == -EBUSY) {
			err_line(im->dir,
				 "image is busy (mounted by ploopfs or used by another command)");
			return EXIT_BUSY;
		}
		if (ret < 0) {
			err_line(im->dir, "cannot lock: %s", strerror(-ret));
			return EXIT_FAIL;
		}
	}
	if (!im->is_dir)
		return EXIT_OK;

	ret = pf_dd_load(im->dirfd, &im->dd, &why);
	if (ret < 0) {
		tmp = path_join(im->dir, PF_DD_NAME);
		if (ret == -ENOENT)
			err_line(tmp, "no such file: not an image directory");
		else
			err_line(tmp, "%s", why.msg[0] ? why.msg : strerror(-ret));
		free(tmp);
		return exit_for(ret);
	}
	ret = pf_dd_chain(im->dd, &im->chain, &im->depth, &why);
	if (ret < 0) {
		tmp = path_join(im->dir, PF_DD_NAME);
		err_line(tmp, "%s", why.msg[0] ? why.msg : strerror(-ret));
		free(tmp);
		return exit_for(ret);
	}
	return EXIT_OK;
}

/* Open delta file @name of @im; on error print it and return NULL with
 * *rc set.  The delta's name becomes its displayed path. */
static struct pf_delta *delta_open(struct image *im, const char *name,
				   int flags, int *rc)
{
	struct pf_why why = { "" };
	struct pf_delta *d;
	char *path;
	int ret;

	path = im->is_dir ? path_join(im->dir, name) : strdup(im->arg);
	if (!path) {
		*rc = EXIT_FAIL;
		err_line(name, "out of memory");
		return NULL;
	}
	ret = pf_delta_open(im->is_dir ? im->dirfd : AT_FDCWD,
			    im->is_dir ? name : im->arg, flags, NULL, &d, &why);
	if (ret < 0) {
		err_line(path, "%s", why.msg[0] ? why.msg : strerror(-ret));
		free(path);
		*rc = exit_for(ret);
		return NULL;
	}
	free(d->name);
	d->name = path;
	return d;
}

void deltas_close(struct pf_delta **v, size_t n)
{
	pf_image_close_chain(v, n);
}

/* The first corruption a check finds. */
struct first_problem {
	char file[PATH_MAX];
	char msg[512];
	bool corrupt;
};

static void keep_first_corrupt(void *ctx, const char *file,
			       enum pf_finding kind, const char *msg)
{
	struct first_problem *fp = ctx;

	if (kind != PF_FIND_CORRUPT || fp->corrupt)
		return;
	fp->corrupt = true;
	snprintf(fp->file, sizeof(fp->file), "%s", file);
	snprintf(fp->msg, sizeof(fp->msg), "%s", msg);
}

/* The one delta of a file image, checked with @check. */
static int file_open(struct image *im, bool check, struct pf_delta ***out)
{
	struct first_problem fp = { "", "", false };
	struct pf_check_report r = { .emit = keep_first_corrupt, .ctx = &fp };
	struct pf_delta **v = calloc(1, sizeof(*v));
	int rc = EXIT_OK;

	if (!v) {
		err_line(im->arg, "out of memory");
		return EXIT_FAIL;
	}
	v[0] = delta_open(im, im->arg, 0, &rc);
	if (v[0] && check && pf_check_delta(v[0], &r) < 0) {
		err_line(v[0]->name, "out of memory");
		rc = EXIT_FAIL;
	} else if (fp.corrupt) {
		err_line(fp.file, "%s (run ploopctl check for all problems)",
			 fp.msg);
		rc = EXIT_CORRUPT;
	}
	if (rc != EXIT_OK) {
		deltas_close(v, 1);
		return rc;
	}
	*out = v;
	return EXIT_OK;
}

/*
 * Open the active chain of a directory image (or the one delta of a file
 * image), base first, read-only; with @check, refuse a corrupt one (the
 * first problem printed).  The deltas' names become their displayed
 * paths.  Returns an exit code.
 */
int chain_open(struct image *im, bool check, struct pf_delta ***out,
		      size_t *n)
{
	struct pf_why why = { "" };
	struct pf_delta **v;
	size_t i;
	int ret;

	if (!im->is_dir) {
		*n = 1;
		return file_open(im, check, out);
	}
	ret = pf_image_open_chain(im->dirfd, im->dd, im->chain, im->depth, 0,
				  check, NULL, &v, &why);
	if (ret) {
		/* why: "<file>: <problem>" */
		if (ret == -EUCLEAN)
			err_line(NULL, "%s/%s (run ploopctl check for all problems)",
				 im->dir, why.msg);
		else
			err_line(NULL, "%s/%s", im->dir,
				 why.msg[0] ? why.msg : strerror(-ret));
		return exit_for(ret);
	}
	for (i = 0; i < im->depth; i++) {
		char *path = path_join(im->dir, v[i]->name);

		if (path) {
			free(v[i]->name);
			v[i]->name = path;
		}
	}
	*out = v;
	*n = im->depth;
	return EXIT_OK;
}

/* Parse the seconds of a --timeout option into *@out (0: no limit).
 * Prints the error; returns 0 or -1. */
/* One line about the options of command @cmd: "ploopctl <cmd>: ..." */
static void PF_PRINTF(2, 3) opt_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "ploopctl %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int parse_timeout(const char *cmd, const char *arg, unsigned *out)
{
	unsigned long v;
	char *end;

	errno = 0;
	v = strtoul(arg, &end, 10);
	if (!*arg || *end || *arg == '-' || errno || v > CTL_TIMEOUT_MAX) {
		opt_error(cmd, "invalid timeout '%s': whole seconds from 0 to %d",
			  arg, CTL_TIMEOUT_MAX);
		return -1;
	}
	*out = (unsigned)v;
	return 0;
}

int parse_json_args(int argc, char **argv, void (*usage_fn)(FILE *),
		    bool *json)
{
	const struct cmd_opt opts[] = { { "json", 'j', OPT_FLAG, json } };

	return parse_args(argc, argv, opts, 1, usage_fn, 1, 1);
}

#define OPT_KEY_TIMEOUT	0xfff	/* --timeout, long only, where not listed */

/*
 * Parse the options of @argv by @opts (@n of them), then want between
 * @min_ops and @max_ops operands.  Returns -1 to go on (the operands
 * from argv[optind]) or an exit status, the usage printed (to stdout for
 * --help).
 */
int parse_args(int argc, char **argv, const struct cmd_opt *opts,
		      size_t n, void (*usage_fn)(FILE *), int min_ops,
		      int max_ops)
{
	struct option lo[CMD_OPTS_MAX + 3] = { { NULL, 0, NULL, 0 } };
	char so[3 * CMD_OPTS_MAX + 2] = "", *p = so;
	bool own_timeout = false;
	size_t i, k;
	int c;

	assert(n <= CMD_OPTS_MAX);
	for (i = 0; i < n; i++) {
		lo[i] = (struct option){ opts[i].name,
					 opts[i].kind == OPT_FLAG ?
						 no_argument :
						 required_argument,
					 NULL, opts[i].key };
		if (opts[i].key >= OPT_KEY_LONG)
			continue;	/* long only */
		*p++ = (char)opts[i].key;
		if (opts[i].kind != OPT_FLAG)
			*p++ = ':';
	}
	for (i = 0; i < n; i++)
		own_timeout |= opts[i].dst == &ctl_timeout;
	k = n;
	lo[k++] = (struct option){ "help", no_argument, NULL, 'h' };
	/* every command waits at most --timeout for a daemon closing the
	 * image (unmounted): those without it in their table take it too */
	if (!own_timeout)
		lo[k++] = (struct option){ "timeout", required_argument, NULL,
					   OPT_KEY_TIMEOUT };
	*p++ = 'h';
	*p = 0;
	opterr = 0;	/* getopt's messages would start with the command */
	while ((c = getopt_long(argc, argv, so, lo, NULL)) != -1) {
		if (c == OPT_KEY_TIMEOUT) {
			if (parse_timeout(argv[0], optarg, &ctl_timeout))
				return EXIT_USAGE;
			continue;
		}
		if (c == '?') {
			const char *bad = argv[optind - 1];

			if (optopt && strncmp(bad, "--", 2) != 0)
				opt_error(argv[0], "%s option '-%c' (see ploopctl %s --help)",
					  strchr(so, optopt) ?
						  "missing the argument of" :
						  "unknown",
					  optopt, argv[0]);
			else if (optopt && strchr(bad, '='))
				opt_error(argv[0], "option '%.*s' takes no argument (see ploopctl %s --help)",
					  (int)(strchr(bad, '=') - bad), bad,
					  argv[0]);
			else
				opt_error(argv[0], "%s option '%s' (see ploopctl %s --help)",
					  optopt ? "missing the argument of" :
						   "unknown",
					  bad, argv[0]);
			return EXIT_USAGE;
		}
		for (i = 0; i < n && opts[i].key != c; i++)
			;
		if (c == 'h' || i == n) {
			usage_fn(c == 'h' ? stdout : stderr);
			return c == 'h' ? EXIT_OK : EXIT_USAGE;
		}
		switch (opts[i].kind) {
		case OPT_FLAG:
			*(bool *)opts[i].dst = true;
			break;
		case OPT_ARG:
			*(const char **)opts[i].dst = optarg;
			break;
		case OPT_SECONDS:
			if (parse_timeout(argv[0], optarg, opts[i].dst))
				return EXIT_USAGE;
			break;
		}
	}
	if (argc - optind < min_ops || argc - optind > max_ops) {
		usage_fn(stderr);
		return EXIT_USAGE;
	}
	return -1;
}


/*
 * For the offline commands that replace the top: lock @arg exclusively,
 * open and validate its chain, and refuse an image whose in-use flag is
 * set (it is recovered first, not guessed at).  Returns an exit status.
 */
int open_clean_chain(struct image *im, const char *arg,
			    struct pf_delta ***v, size_t *n)
{
	size_t i;
	int rc;

	rc = image_open(im, arg, 2, false);
	if (rc == EXIT_OK)
		rc = chain_open(im, true, v, n);
	for (i = 0; rc == EXIT_OK && i < *n; i++)
		if ((*v)[i]->hdr.in_use == PF_INUSE_OPEN) {
			err_line((*v)[i]->name,
				 "in-use flag is set: the image was not closed cleanly (run ploopctl check)");
			rc = EXIT_UNCLEAN;
		}
	return rc;
}

/* Talking to the daemon */

/*
 * The daemon serving image directory @dir, if it is mounted.  Returns
 * EXIT_OK with *@fd connected, or -1 when no daemon serves it (work on
 * the files); else an exit status (error printed).
 */
int daemon_of(const char *dir, int *fd)
{
	struct pf_why why = { "" };
	int dirfd, ret;

	*fd = -1;
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		err_line(dir, "%s", strerror(errno));
		return EXIT_FAIL;
	}
	/* a daemon closing the image (unmounted) is waited for: the
	 * command then works on the files */
	ret = mounted_here(dir) ? 0 : pf_ctl_wait_closed(dirfd, ctl_timeout_ms());
	if (ret == -ETIMEDOUT || ret == -ETIME) {
		close(dirfd);
		return ret == -ETIME ? daemon_timed_out(dir) :
				       daemon_still_closing(dir);
	}
	ret = ret == 1 ? -ENOENT :
	      pf_ctl_connect(dirfd, ctl_timeout_ms(), fd, &why);
	close(dirfd);
	if (ret == -ENOENT || ret == -ECONNREFUSED) {
		*fd = -1;
		return EXIT_OK;
	}
	if (ret == -ETIMEDOUT)
		return daemon_timed_out(dir);
	/* began closing the image since it was asked above: wait, then
	 * work on the files */
	if (ret == -ESHUTDOWN) {
		ret = daemon_closed(dir);
		return ret == EXIT_DAEMON_CLOSED ? EXIT_OK : ret;
	}
	if (ret) {
		err_line(dir, "cannot reach the ploopfs daemon: %s",
			 why.msg[0] ? why.msg : strerror(-ret));
		return EXIT_FAIL;
	}
	return EXIT_OK;
}

/* Exit status of a structural command that failed with @err, the same
 * whether the daemon or ploopctl ran it. */
int exit_for_struct(int err)
{
	switch (err) {
	case -EINVAL:
	case -EEXIST:
		return EXIT_USAGE;
	case -EFBIG:
		return EXIT_FAIL;
	default:
		return exit_for(err);
	}
}


int kv_add(void *ctx, const char *line)
{
	struct kv *kv = ctx;
	char **p = realloc(kv->lines, (kv->n + 1) * sizeof(*p));

	if (!p)
		return -ENOMEM;
	kv->lines = p;
	p[kv->n] = strdup(line);
	if (!p[kv->n])
		return -ENOMEM;
	kv->n++;
	return 0;
}

void kv_free(struct kv *kv)
{
	size_t i;

	for (i = 0; i < kv->n; i++)
		free(kv->lines[i]);
	free(kv->lines);
}

/* The value of @key (the rest of its line), NULL if none. */
const char *kv_get(const struct kv *kv, const char *key)
{
	size_t i, len = strlen(key);

	for (i = 0; i < kv->n; i++)
		if (!strncmp(kv->lines[i], key, len) && kv->lines[i][len] == ' ')
			return kv->lines[i] + len + 1;
	return NULL;
}

uint64_t kv_u64(const struct kv *kv, const char *key)
{
	const char *v = kv_get(kv, key);

	return v ? strtoull(v, NULL, 10) : 0;
}

int daemon_call_raw(int fd, int argc, const char *const *argv,
		    int (*on_data)(void *ctx, const char *line), void *ctx,
		    struct pf_why *why)
{
	return pf_ctl_call(fd, ctl_timeout_ms(), argc, argv, on_data, ctx, why);
}

int daemon_result(const char *dir, int ret, const struct pf_why *why)
{
	if (!ret)
		return EXIT_OK;
	/* began closing the image since daemon_of(): nothing was done */
	if (ret == -ESHUTDOWN)
		return daemon_closed(dir);
	if (ret == -ETIMEDOUT)
		return daemon_timed_out(dir);
	err_line(dir, "%s", why->msg[0] ? why->msg : strerror(-ret));
	/* a read-only mount refused a change: busy, as a locked image */
	if (ret == -EROFS)
		return EXIT_BUSY;
	return exit_for_struct(ret);
}

/* Run @argv on the daemon at @fd (closed here); errors printed against
 * @dir.  Returns an exit status. */
int daemon_call(int fd, const char *dir, int argc,
		       const char *const *argv,
		       int (*on_data)(void *ctx, const char *line), void *ctx)
{
	struct pf_why why = { "" };
	int ret;

	ret = daemon_call_raw(fd, argc, argv, on_data, ctx, &why);
	close(fd);
	return daemon_result(dir, ret, &why);
}

/* main */

/* every command, in the order --help lists them */
static const struct command *const tables[] = {
	image_commands, snap_commands, status_commands, mount_commands,
	sum_commands,
};

static void usage(FILE *out)
{
	const struct command *c;
	size_t t;

	fprintf(out, "usage: ploopctl <command> [<options>] <args>\n\ncommands:\n");
	for (t = 0; t < PF_ARRAY_SIZE(tables); t++)
		for (c = tables[t]; c->name; c++)
			fprintf(out, "  %-15s %s\n", c->name, c->summary);
	fprintf(out, "\nEvery command takes --timeout <s>: how long to wait for a daemon that\n"
		     "is closing the image (unmounted) or must answer (default %d; 0: no\n"
		     "limit).\n"
		     "'ploopctl <command> --help' shows a command's options; "
		     "see ploopctl(8).\n",
		CTL_TIMEOUT_DEFAULT);
}

int main(int argc, char **argv)
{
	const struct command *c;
	size_t t;

	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
	    !strcmp(argv[1], "help")) {
		usage(stdout);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "-V") || !strcmp(argv[1], "--version")) {
		printf("ploopctl %s\n", PLOOPFS_VERSION);
		return EXIT_OK;
	}
	for (t = 0; t < PF_ARRAY_SIZE(tables); t++)
		for (c = tables[t]; c->name; c++) {
			int rc;

			if (strcmp(argv[1], c->name) != 0)
				continue;
			rc = c->fn(argc - 1, argv + 1);
			if (fflush(stdout) != 0 && rc == EXIT_OK) {
				err_line(NULL, "cannot write output: %s",
					 strerror(errno));
				rc = EXIT_FAIL;
			}
			return rc;
		}
	err_line(NULL, "unknown command '%s'", argv[1]);
	usage(stderr);
	return EXIT_USAGE;
}
