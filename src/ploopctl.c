// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ploopctl: image management (ploopctl(8)).
 *
 * Every command takes an image directory (DiskDescriptor.xml plus its
 * deltas); info and check also take a single delta file.  Commands that
 * only read never open a file for writing.  Commands that write take an
 * exclusive lock on the image directory, so they fail with "busy" (exit 5)
 * while a ploopfs daemon or another ploopctl holds it.
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
#include "stack.h"
#include "util.h"

/* Seconds the daemon may stay silent (--timeout); 0: no limit. */
#define CTL_TIMEOUT_DEFAULT	30
#define CTL_TIMEOUT_MAX		86400
static unsigned ctl_timeout = CTL_TIMEOUT_DEFAULT;

static const char *prog = "ploopctl";

static void PF_PRINTF(2, 3) err_line(const char *file, const char *fmt, ...)
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
static int exit_for(int err)
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

static void json_str(FILE *out, const char *s)
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

static const char *in_use_name(uint32_t v)
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

/* Opening images */

/* An image as named on the command line: a directory or one delta. */
struct image {
	const char *arg;	/* as given */
	char *dir;		/* the image directory (or the file's) */
	int dirfd;
	bool is_dir;
	struct pf_dd *dd;	/* directory form only */
	size_t *chain;		/* indices into dd->images, base first */
	size_t depth;
};

static char *path_join(const char *dir, const char *name)
{
	char *p;

	if (asprintf(&p, "%s/%s", dir, name) < 0)
		return NULL;
	return p;
}

static void image_close(struct image *im)
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
static int image_open(struct image *im, const char *arg, int lock,
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
	if (lock) {
		ret = pf_lock(im->dirfd, lock == 2);
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

static void deltas_close(struct pf_delta **v, size_t n)
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
static int chain_open(struct image *im, bool check, struct pf_delta ***out,
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
static int parse_timeout(const char *arg, unsigned *out)
{
	unsigned long v;
	char *end;

	errno = 0;
	v = strtoul(arg, &end, 10);
	if (!*arg || *end || *arg == '-' || errno || v > CTL_TIMEOUT_MAX) {
		err_line(NULL, "invalid timeout '%s': whole seconds from 0 to %d",
			 arg, CTL_TIMEOUT_MAX);
		return -1;
	}
	*out = (unsigned)v;
	return 0;
}

static const struct option json_timeout_opts[] = {
	{ "json", no_argument, NULL, 'j' },
	{ "timeout", required_argument, NULL, 't' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/* --timeout as the control module takes it: ms, -1 for no limit */
static int ctl_timeout_ms(void)
{
	return ctl_timeout ? (int)(ctl_timeout * 1000) : -1;
}

/* Print that the daemon of @dir did not answer in time; EXIT_TIMEOUT. */
static int daemon_timed_out(const char *dir)
{
	err_line(dir, "the ploopfs daemon did not answer within %u s (is it stopped or hung?)",
		 ctl_timeout);
	return EXIT_TIMEOUT;
}

/*
 * Options of the commands that take only [--json] and one operand.
 * Returns -1 to go on (operand at argv[optind]) or an exit status.
 */
static int parse_json_only(int argc, char **argv, void (*usage_fn)(FILE *),
			   bool *json)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	*json = false;
	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			*json = true;
			break;
		case 'h':
			usage_fn(stdout);
			return EXIT_OK;
		default:
			usage_fn(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind + 1 != argc) {
		usage_fn(stderr);
		return EXIT_USAGE;
	}
	return -1;
}

/* init */

static void usage_init(FILE *out)
{
	fprintf(out,
		"usage: ploopctl init -s <size> [-c <cluster-size>] <dir>\n"
		"  -s, --size <size>           virtual size (bytes, or K/M/G/T suffix)\n"
		"  -c, --cluster-size <size>   cluster size, a power of two from 64K to 64M\n"
		"                              (default 1M)\n");
}

static int cmd_init(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "cluster-size", required_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t size = 0, cluster = PF_CLUSTER_DEFAULT;
	struct pf_why why = { "" };
	struct pf_header h;
	const char *dir;
	int c, ret, dirfd, rc = EXIT_FAIL;
	bool have_size = false;

	while ((c = getopt_long(argc, argv, "s:c:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (pf_parse_size(optarg, &size) < 0) {
				err_line(NULL, "invalid size '%s'", optarg);
				return EXIT_USAGE;
			}
			have_size = true;
			break;
		case 'c':
			if (pf_parse_size(optarg, &cluster) < 0 ||
			    cluster > UINT32_MAX) {
				err_line(NULL, "invalid cluster size '%s'",
					 optarg);
				return EXIT_USAGE;
			}
			break;
		case 'h':
			usage_init(stdout);
			return EXIT_OK;
		default:
			usage_init(stderr);
			return EXIT_USAGE;
		}
	}
	if (!have_size || optind + 1 != argc) {
		usage_init(stderr);
		return EXIT_USAGE;
	}
	dir = argv[optind];
	ret = pf_header_init(&h, size, (uint32_t)cluster, &why);
	if (ret < 0) {
		err_line(dir, "%s", why.msg);
		return EXIT_USAGE;
	}
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		err_line(dir, "cannot create directory: %s", strerror(errno));
		return EXIT_FAIL;
	}
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		err_line(dir, "%s", strerror(errno));
		return EXIT_FAIL;
	}
	ret = pf_lock(dirfd, true);
	if (ret < 0) {
		err_line(dir, ret == -EBUSY ? "image is busy" : "cannot lock: %s",
			 strerror(-ret));
		rc = exit_for(ret);
		goto out;
	}
	ret = pf_image_create(dirfd, &h, &why);
	if (ret) {
		err_line(dir, "%s", why.msg);
		goto out;
	}
	rc = EXIT_OK;
out:
	close(dirfd);
	return rc;
}

/* info */

static void usage_info(FILE *out)
{
	fprintf(out, "usage: ploopctl info [--json] (<dir> | <delta-file>)\n");
}

static void info_delta_json(FILE *out, const struct pf_delta *d,
			    const char *guid, size_t level, bool top)
{
	const struct pf_header *h = &d->hdr;

	fprintf(out, "{\"level\":%zu,\"file\":", level);
	json_str(out, d->name);
	if (guid) {
		fprintf(out, ",\"guid\":");
		json_str(out, guid);
	}
	fprintf(out,
		",\"top\":%s,\"format_version\":%d,\"heads\":%" PRIu32
		",\"cylinders\":%" PRIu32 ",\"cluster_sectors\":%" PRIu32
		",\"cluster_size\":%" PRIu32 ",\"bat_entries\":%" PRIu32
		",\"size_sectors\":%" PRIu64 ",\"virtual_size\":%" PRIu64
		",\"in_use\":\"%s\",\"first_block_sectors\":%" PRIu32
		",\"header_clusters\":%" PRIu32 ",\"flags\":%" PRIu32
		",\"ext_sectors\":%" PRIu64 ",\"file_size\":%" PRIu64
		",\"allocated_clusters\":%" PRIu64 "}",
		top ? "true" : "false", h->version, h->heads, h->cylinders,
		h->cluster_sectors, h->cluster_bytes, h->bat_entries,
		h->size_sectors, h->size_bytes, in_use_name(h->in_use),
		h->first_block_sectors, h->hdr_clusters, h->flags,
		h->ext_sectors, d->file_bytes, pf_delta_mapped_count(d));
}

static void info_delta_text(FILE *out, const struct pf_delta *d)
{
	const struct pf_header *h = &d->hdr;
	char b1[32], b2[32];

	fprintf(out, "file:               %s\n", d->name);
	fprintf(out, "format:             ploop v%d (%s)\n", h->version,
		h->version == 2 ? PF_SIG_V2 : PF_SIG_V1);
	fprintf(out, "virtual size:       %s (%" PRIu64 " bytes, %" PRIu64
		     " sectors)\n",
		pf_fmt_size(h->size_bytes, b1, sizeof(b1)), h->size_bytes,
		h->size_sectors);
	fprintf(out, "cluster size:       %s (%" PRIu32 " sectors)\n",
		pf_fmt_size(h->cluster_bytes, b2, sizeof(b2)),
		h->cluster_sectors);
	fprintf(out, "bat entries:        %" PRIu32 "\n", h->bat_entries);
	fprintf(out, "first data offset:  %" PRIu32 " sectors (%" PRIu32
		     " header clusters)\n",
		h->first_block_sectors, h->hdr_clusters);
	fprintf(out, "geometry:           %" PRIu32 " heads, %" PRIu32
		     " cylinders\n",
		h->heads, h->cylinders);
	fprintf(out, "in-use flag:        %s (0x%08" PRIx32 ")\n",
		in_use_name(h->in_use), h->in_use);
	fprintf(out, "flags:              0x%" PRIx32 "%s\n", h->flags,
		h->flags & PF_FLAG_EMPTY ? " (empty)" : "");
	fprintf(out, "extension offset:   %" PRIu64 " sectors\n",
		h->ext_sectors);
	fprintf(out, "file size:          %s (%" PRIu64 " bytes)\n",
		pf_fmt_size(d->file_bytes, b1, sizeof(b1)), d->file_bytes);
	fprintf(out, "allocated clusters: %" PRIu64 "\n",
		pf_delta_mapped_count(d));
}

static int cmd_info(int argc, char **argv)
{
	struct pf_delta **v = NULL;
	struct image im;
	bool json = false;
	size_t n = 0, i;
	int rc;

	rc = parse_json_only(argc, argv, usage_info, &json);
	if (rc >= 0)
		return rc;
	rc = image_open(&im, argv[optind], 0, true);
	if (rc == EXIT_OK)
		rc = chain_open(&im, true, &v, &n);
	if (rc != EXIT_OK)
		goto out;

	if (json) {
		const struct pf_header *top = &v[n - 1]->hdr;

		printf("{\"path\":");
		json_str(stdout, im.arg);
		printf(",\"kind\":\"%s\",\"virtual_size\":%" PRIu64
		       ",\"cluster_size\":%" PRIu32 ",\"deltas\":[",
		       im.is_dir ? "directory" : "delta", top->size_bytes,
		       top->cluster_bytes);
		for (i = 0; i < n; i++) {
			if (i)
				putchar(',');
			info_delta_json(stdout, v[i],
					im.is_dir ?
						im.dd->images[im.chain[i]].guid :
						NULL,
					i, i + 1 == n);
		}
		printf("]}\n");
	} else {
		if (im.is_dir)
			printf("image directory:    %s\ndeltas:             %zu (base first)\n\n",
			       im.arg, n);
		for (i = 0; i < n; i++) {
			if (im.is_dir)
				printf("level %zu%s: %s\n", i,
				       i + 1 == n ? " (top)" : "",
				       im.dd->images[im.chain[i]].guid);
			info_delta_text(stdout, v[i]);
			if (i + 1 < n)
				putchar('\n');
		}
	}
out:
	deltas_close(v, n);
	image_close(&im);
	return rc;
}

/* check */

static void usage_check(FILE *out)
{
	fprintf(out,
		"usage: ploopctl check [--json] [--repair [--force]] (<dir> | <delta-file>)\n"
		"  --json      machine-readable output\n"
		"  --repair    fix what can be fixed without guessing: drop BAT entries\n"
		"              outside the file or inside the header, truncate leaked\n"
		"              clusters at the end, clear a stale in-use flag\n"
		"  --force     with --repair: also drop the later of BAT entries that\n"
		"              share a cluster\n");
}

static const char *kind_name[PF_FIND_KINDS] = {
	[PF_FIND_CORRUPT] = "corruption",
	[PF_FIND_UNCLEAN] = "unclean",
	[PF_FIND_LEAK] = "leak",
	[PF_FIND_NOTE] = "note",
};

struct check_out {
	bool json;
	bool first;
};

static void print_finding(void *ctx, const char *file, enum pf_finding kind,
			  const char *msg)
{
	struct check_out *co = ctx;

	if (!co->json) {
		printf("%s: %s: %s\n", file, kind_name[kind], msg);
		return;
	}
	printf("%s{\"file\":", co->first ? "" : ",");
	json_str(stdout, file);
	printf(",\"kind\":\"%s\",\"message\":", kind_name[kind]);
	json_str(stdout, msg);
	putchar('}');
	co->first = false;
}

/*
 * The repair pass of check --repair: every delta opened writable and
 * repaired in place, its fixes printed as findings.  The check pass that
 * follows reports what is left.  Returns an exit code.
 */
/* The repair pass prints only its fixes; what is left is the check
 * pass's to report. */
static void print_fix(void *ctx, const char *file, enum pf_finding kind,
		      const char *msg)
{
	if (kind == PF_FIND_NOTE)
		print_finding(ctx, file, kind, msg);
}

static int repair_all(struct image *im, size_t n, bool force,
		      struct check_out *co, unsigned *fixes)
{
	struct pf_check_report rr = { .emit = print_fix, .ctx = co };
	size_t i;

	for (i = 0; i < n; i++) {
		const char *name = im->is_dir ? im->dd->images[i].file : NULL;
		struct pf_why why = { "" };
		struct pf_delta *d = NULL;
		unsigned f = 0;
		char *path;
		int ret;

		path = im->is_dir ? path_join(im->dir, name) : strdup(im->arg);
		ret = pf_delta_open(im->is_dir ? im->dirfd : AT_FDCWD,
				    im->is_dir ? name : im->arg, PF_DELTA_WRITE, NULL,
				    &d, &why);
		if (ret < 0) {	/* the check pass reports it */
			free(path);
			continue;
		}
		free(d->name);
		d->name = path;
		ret = pf_repair_delta(d, force, &rr, &f);
		*fixes += f;
		if (ret < 0) {
			err_line(d->name, "repair failed: %s", strerror(-ret));
			pf_delta_close(d);
			return EXIT_FAIL;
		}
		pf_delta_close(d);
	}
	return EXIT_OK;
}

static int cmd_check(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "repair", no_argument, NULL, 'r' },
		{ "force", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct check_out co = { false, true };
	struct pf_check_report r = { .emit = print_finding, .ctx = &co };
	struct pf_delta **v = NULL;
	struct image im;
	size_t n = 0, i, j;
	bool repair = false, force = false;
	unsigned fixes = 0;
	int c, rc, drc;
	const char *verdict;

	while ((c = getopt_long(argc, argv, "jrfh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			co.json = true;
			break;
		case 'r':
			repair = true;
			break;
		case 'f':
			force = true;
			break;
		case 'h':
			usage_check(stdout);
			return EXIT_OK;
		default:
			usage_check(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind + 1 != argc || (force && !repair)) {
		usage_check(stderr);
		return EXIT_USAGE;
	}
	/* Shared lock: a mounted image is changing under us; exclusive
	 * to repair. */
	rc = image_open(&im, argv[optind], repair ? 2 : 1, true);
	if (rc != EXIT_OK) {
		image_close(&im);
		return rc;
	}
	/* Every image of the descriptor, not only the active chain:
	 * snapshots on other branches are data too. */
	n = im.is_dir ? im.dd->n_images : 1;
	v = calloc(n, sizeof(*v));
	if (!v) {
		err_line(im.arg, "out of memory");
		image_close(&im);
		return EXIT_FAIL;
	}
	if (co.json)
		printf("{\"findings\":[");
	if (repair) {
		rc = repair_all(&im, n, force, &co, &fixes);
		if (rc != EXIT_OK)
			goto out;
	}
	for (i = 0; i < n; i++) {
		const char *name = im.is_dir ? im.dd->images[i].file : NULL;
		struct pf_why why = { "" };
		char *path;
		int ret;

		path = im.is_dir ? path_join(im.dir, name) : strdup(im.arg);
		ret = pf_delta_open(im.is_dir ? im.dirfd : AT_FDCWD,
				    im.is_dir ? name : im.arg, 0, NULL, &v[i], &why);
		if (ret < 0) {
			/* A delta that is missing or unreadable is as bad
			 * for the image as one that is damaged. */
			pf_check_add(&r, path ? path : name, PF_FIND_CORRUPT,
				     "%s", why.msg[0] ? why.msg : strerror(-ret));
			free(path);
			continue;
		}
		free(v[i]->name);
		v[i]->name = path;
		if (pf_check_delta(v[i], &r) < 0) {
			err_line(path, "out of memory");
			rc = EXIT_FAIL;
			goto out;
		}
	}
	if (im.is_dir) {
		struct pf_delta **chain = calloc(im.depth, sizeof(*chain));
		bool all = chain != NULL;

		for (j = 0; all && j < im.depth; j++) {
			chain[j] = v[im.chain[j]];
			all = chain[j] != NULL;
		}
		if (all)
			pf_check_stack(im.dd, chain, im.depth, &r);
		free(chain);
	}

	if (r.count[PF_FIND_CORRUPT]) {
		drc = EXIT_CORRUPT;
		verdict = fixes ? "corruption remains after repair" :
				  "corruption found";
	} else if (fixes) {
		drc = EXIT_REPAIRED;
		verdict = "repaired";
	} else if (r.count[PF_FIND_UNCLEAN]) {
		drc = EXIT_UNCLEAN;
		verdict = "not closed cleanly";
	} else if (r.count[PF_FIND_LEAK]) {
		drc = EXIT_LEAKS;
		verdict = "leaked clusters only (no harm to data)";
	} else {
		drc = EXIT_OK;
		verdict = "clean";
	}
	rc = drc;
	if (co.json) {
		printf("],\"corruptions\":%" PRIu64 ",\"unclean\":%" PRIu64
		       ",\"leaks\":%" PRIu64 ",\"notes\":%" PRIu64
		       ",\"leaked_clusters\":%" PRIu64
		       ",\"allocated_clusters\":%" PRIu64
		       ",\"deltas\":%zu,\"repairs\":%u,\"verdict\":\"%s\"}\n",
		       r.count[PF_FIND_CORRUPT], r.count[PF_FIND_UNCLEAN],
		       r.count[PF_FIND_LEAK], r.count[PF_FIND_NOTE],
		       r.leaked_clusters, r.mapped, n, fixes, verdict);
	} else {
		printf("%s: %zu delta%s, %" PRIu64 " allocated clusters, %" PRIu64
		       " leaked, %" PRIu64 " corruptions: %s\n",
		       im.arg, n, n == 1 ? "" : "s", r.mapped,
		       r.leaked_clusters, r.count[PF_FIND_CORRUPT], verdict);
	}
out:
	deltas_close(v, n);
	image_close(&im);
	return rc;
}

/*
 * For the offline commands that replace the top: lock @arg exclusively,
 * open and validate its chain, and refuse an image whose in-use flag is
 * set (it is recovered first, not guessed at).  Returns an exit status.
 */
static int open_clean_chain(struct image *im, const char *arg,
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

/* snapshot */

static int snapshot_guid_line(void *ctx, const char *line)
{
	if (!strncmp(line, "guid ", 5))
		snprintf(ctx, PF_GUID_LEN + 1, "%s", line + 5);
	return 0;
}

static int daemon_of(const char *dir, int *fd);
static int daemon_call(int fd, const char *dir, int argc,
		       const char *const *argv,
		       int (*on_data)(void *ctx, const char *line), void *ctx);

/* Online: the daemon prepares, freezes, switches and thaws (CTL-3). */
static int snapshot_online(int fd, const char *dir, const char *guid)
{
	const char *cargv[] = { "snapshot", guid };
	char got[PF_GUID_LEN + 1] = "";
	int rc;

	rc = daemon_call(fd, dir, guid[0] ? 2 : 1, cargv, snapshot_guid_line,
			 got);
	if (rc == EXIT_OK)
		printf("%s\n", got);
	return rc;
}

static void usage_snapshot(FILE *out)
{
	fprintf(out, "usage: ploopctl snapshot [-u <guid>] [--timeout <s>] <dir>\n"
		     "  -u, --guid <guid>   GUID for the snapshot (default: random)\n"
		     "  -t, --timeout <s>   a mounted image's daemon must not be silent for <s>\n"
		     "                      seconds (default %d; 0: no limit)\n",
		CTL_TIMEOUT_DEFAULT);
}

static int cmd_snapshot(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "guid", required_argument, NULL, 'u' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char guid[PF_GUID_LEN + 1] = "";
	struct pf_snap_prep prep = { "", NULL };
	struct pf_why why = { "" };
	struct pf_delta **v = NULL;
	struct image im;
	size_t n = 0;
	int c, rc, ret, fd;

	while ((c = getopt_long(argc, argv, "u:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'u':
			if (!pf_guid_valid(optarg)) {
				err_line(NULL, "invalid GUID '%s'", optarg);
				return EXIT_USAGE;
			}
			snprintf(guid, sizeof(guid), "%s", optarg);
			break;
		case 't':
			if (parse_timeout(optarg, &ctl_timeout))
				return EXIT_USAGE;
			break;
		case 'h':
			usage_snapshot(stdout);
			return EXIT_OK;
		default:
			usage_snapshot(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind + 1 != argc) {
		usage_snapshot(stderr);
		return EXIT_USAGE;
	}
	rc = daemon_of(argv[optind], &fd);
	if (rc != EXIT_OK)
		return rc;
	if (fd >= 0)
		return snapshot_online(fd, argv[optind], guid);
	rc = open_clean_chain(&im, argv[optind], &v, &n);
	if (rc != EXIT_OK)
		goto out;
	/* the same preparation as the daemon's (image.c) */
	ret = pf_image_snapshot(im.dirfd, im.dd, &v[n - 1]->hdr,
				guid[0] ? guid : NULL, &prep, &why);
	if (ret) {
		err_line(guid[0] && (ret == -EEXIST || ret == -EINVAL) ? NULL :
									 im.dir,
			 "%s", why.msg);
		rc = guid[0] && (ret == -EEXIST || ret == -EINVAL) ?
			     EXIT_USAGE :
			     EXIT_FAIL;
		goto out;
	}
	printf("%s\n", prep.guid);
out:
	free(prep.file);
	deltas_close(v, n);
	image_close(&im);
	return rc;
}

/* snapshot-list */

static void usage_snapshot_list(FILE *out)
{
	fprintf(out, "usage: ploopctl snapshot-list [--json] <dir>\n");
}

static int cmd_snapshot_list(int argc, char **argv)
{
	struct image im;
	bool json = false;
	size_t i;
	int rc;

	rc = parse_json_only(argc, argv, usage_snapshot_list, &json);
	if (rc >= 0)
		return rc;
	rc = image_open(&im, argv[optind], 0, false);
	if (rc != EXIT_OK) {
		image_close(&im);
		return rc;
	}
	if (json) {
		printf("{\"top\":");
		json_str(stdout, im.dd->top_guid);
		printf(",\"snapshots\":[");
	} else {
		printf("%-38s C %-38s %s\n", "PARENT_UUID", "UUID", "FNAME");
	}
	for (i = 0; i < im.dd->n_shots; i++) {
		const struct pf_dd_shot *s = &im.dd->shots[i];
		const struct pf_dd_image *img = pf_dd_find_image(im.dd, s->guid);
		bool cur = !strcmp(s->guid, im.dd->top_guid);

		if (json) {
			printf("%s{\"guid\":", i ? "," : "");
			json_str(stdout, s->guid);
			printf(",\"parent\":");
			json_str(stdout, s->parent);
			printf(",\"file\":");
			json_str(stdout, img ? img->file : "");
			printf(",\"current\":%s,\"temporary\":%s}",
			       cur ? "true" : "false",
			       s->temporary ? "true" : "false");
		} else {
			printf("%-38s %c %-38s %s%s\n", s->parent,
			       cur ? '*' : ' ', s->guid, img ? img->file : "",
			       s->temporary ? " (temporary)" : "");
		}
	}
	if (json)
		printf("]}\n");
	image_close(&im);
	return EXIT_OK;
}

/* snapshot-switch */

static void usage_snapshot_switch(FILE *out)
{
	fprintf(out,
		"usage: ploopctl snapshot-switch <dir> <guid>\n"
		"  make snapshot <guid> the parent of a new empty top delta; the current\n"
		"  top, with every change since its snapshot, is discarded\n");
}

static int cmd_snapshot_switch(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct pf_delta **v = NULL, **tv = NULL;
	char guid[PF_GUID_LEN + 1];
	struct pf_why why = { "" };
	const struct pf_dd_shot *s;
	const struct pf_dd_image *img;
	size_t n = 0, tn = 0, i, *chain = NULL;
	char *newname = NULL;
	struct image im;
	const char *g;
	int c, rc, ret;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			usage_snapshot_switch(stdout);
			return EXIT_OK;
		default:
			usage_snapshot_switch(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind + 2 != argc) {
		usage_snapshot_switch(stderr);
		return EXIT_USAGE;
	}
	if (!pf_guid_valid(argv[optind + 1])) {
		err_line(NULL, "invalid GUID '%s'", argv[optind + 1]);
		return EXIT_USAGE;
	}
	/* Exclusive lock: the top is discarded and the descriptor replaced,
	 * so a mounted image is busy. */
	/* As snapshot: an unclean image is recovered first, not guessed at. */
	rc = open_clean_chain(&im, argv[optind], &v, &n);
	if (rc != EXIT_OK)
		goto out;

	s = pf_dd_find_shot(im.dd, argv[optind + 1]);
	if (!s) {
		err_line(im.dir, "no snapshot %s", argv[optind + 1]);
		rc = EXIT_USAGE;
		goto out;
	}
	/* the stored (lower-case) form; @s moves when the descriptor is
	 * edited */
	memcpy(guid, s->guid, sizeof(guid));
	if (!strcmp(guid, im.dd->top_guid)) {
		err_line(im.dir, "%s is the current top, not a snapshot to switch to",
			 guid);
		rc = EXIT_USAGE;
		goto out;
	}
	if (s->temporary) {
		err_line(im.dir,
			 "cannot switch to snapshot %s: it is being deleted (temporary)",
			 guid);
		rc = EXIT_USAGE;
		goto out;
	}

	/*
	 * The stack after the switch is @guid's chain, which may lie on
	 * another branch, under a top with the current top's header: check
	 * it as one before anything changes.
	 */
	for (g = guid; g && strcmp(g, PF_NONE_GUID) != 0 &&
		       tn < im.dd->n_shots;
	     g = pf_dd_parent(im.dd, g))
		tn++;
	chain = calloc(tn + 1, sizeof(*chain));
	if (!chain) {
		err_line(im.arg, "out of memory");
		rc = EXIT_FAIL;
		goto out;
	}
	for (i = tn, g = guid; i > 0; i--, g = pf_dd_parent(im.dd, g)) {
		img = pf_dd_find_image(im.dd, g);
		if (!img) {	/* not in a validated descriptor */
			err_line(im.dir, "snapshot %s has no image", g ? g : "");
			rc = EXIT_CORRUPT;
			goto out;
		}
		chain[i - 1] = (size_t)(img - im.dd->images);
	}
	chain[tn] = im.chain[im.depth - 1];	/* the current top */
	ret = pf_image_open_chain(im.dirfd, im.dd, chain, tn + 1, 0, true, NULL,
				  &tv, &why);
	if (ret) {
		err_line(NULL, "%s/%s%s", im.dir, why.msg,
			 ret == -EUCLEAN ? " (run ploopctl check for all problems)" :
					   "");
		rc = exit_for(ret);
		goto out;
	}
	for (i = 0; i < tn; i++)
		if (tv[i]->hdr.in_use == PF_INUSE_OPEN) {
			err_line(NULL,
				 "%s/%s: in-use flag is set: the image was not closed cleanly (run ploopctl check)",
				 im.dir, tv[i]->name);
			rc = EXIT_UNCLEAN;
			goto out;
		}

	ret = pf_image_switch(im.dirfd, im.dd, &v[n - 1]->hdr, guid, &newname,
			      &why);
	if (ret) {
		err_line(im.dir, "%s", why.msg);
		rc = EXIT_FAIL;
		goto out;
	}
	printf("switched to snapshot %s; the previous top is discarded\n",
	       guid);
out:
	free(newname);
	free(chain);
	deltas_close(tv, tn + 1);
	deltas_close(v, n);
	image_close(&im);
	return rc;
}

/* Talking to the daemon */

/*
 * The daemon serving image directory @dir, if it is mounted.  Returns
 * EXIT_OK with *@fd connected, or -1 when no daemon serves it (work on
 * the files); else an exit status (error printed).
 */
static int daemon_of(const char *dir, int *fd)
{
	int dirfd, ret;

	*fd = -1;
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		err_line(dir, "%s", strerror(errno));
		return EXIT_FAIL;
	}
	ret = pf_ctl_connect(dirfd, ctl_timeout_ms(), fd);
	close(dirfd);
	if (ret == -ENOENT || ret == -ECONNREFUSED) {
		*fd = -1;
		return EXIT_OK;
	}
	if (ret == -ETIMEDOUT)
		return daemon_timed_out(dir);
	if (ret) {
		err_line(dir, "cannot reach the ploopfs daemon: %s",
			 strerror(-ret));
		return EXIT_FAIL;
	}
	return EXIT_OK;
}

/* Exit status of a structural command that failed with @err, the same
 * whether the daemon or ploopctl ran it. */
static int exit_for_struct(int err)
{
	switch (err) {
	case -EBUSY:
		return EXIT_BUSY;
	case -EINVAL:
	case -EEXIST:
		return EXIT_USAGE;
	case -EUCLEAN:
		return EXIT_CORRUPT;
	default:
		return EXIT_FAIL;
	}
}

/* Collected "key value" data lines of a reply. */
struct kv {
	char **lines;
	size_t n;
};

static int kv_add(void *ctx, const char *line)
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

static void kv_free(struct kv *kv)
{
	size_t i;

	for (i = 0; i < kv->n; i++)
		free(kv->lines[i]);
	free(kv->lines);
}

/* The value of @key (the rest of its line), NULL if none. */
static const char *kv_get(const struct kv *kv, const char *key)
{
	size_t i, len = strlen(key);

	for (i = 0; i < kv->n; i++)
		if (!strncmp(kv->lines[i], key, len) && kv->lines[i][len] == ' ')
			return kv->lines[i] + len + 1;
	return NULL;
}

static uint64_t kv_u64(const struct kv *kv, const char *key)
{
	const char *v = kv_get(kv, key);

	return v ? strtoull(v, NULL, 10) : 0;
}

/* Run @argv on the daemon at @fd (closed here); errors printed against
 * @dir.  Returns an exit status. */
static int daemon_call(int fd, const char *dir, int argc,
		       const char *const *argv,
		       int (*on_data)(void *ctx, const char *line), void *ctx)
{
	struct pf_why why = { "" };
	int ret;

	ret = pf_ctl_call(fd, ctl_timeout_ms(), argc, argv, on_data, ctx, &why);
	close(fd);
	if (!ret)
		return EXIT_OK;
	if (ret == -ETIMEDOUT)
		return daemon_timed_out(dir);
	err_line(dir, "%s", why.msg[0] ? why.msg : strerror(-ret));
	return exit_for_struct(ret);
}

/* status */

struct status {
	bool mounted;
	const char *disk;	/* the file in the mount */
	const char *transport;	/* "io_uring" or "dev" */
	uint64_t ring_requests;	/* requests that came over io_uring */
	uint64_t size, cluster;
	size_t n;
	struct pf_stack_level *lv;
	bool failed, frozen, unclean;
	uint64_t held, enospc, dirty, freezes, stall_last, stall_max,
		last_event;
};

static void usage_status(FILE *out)
{
	fprintf(out,
		"usage: ploopctl status [--json] [--timeout <s>] <dir>\n"
		"  --json          machine-readable output\n"
		"  --timeout <s>   a mounted image's daemon must answer within <s> seconds\n"
		"                  (default %d; 0: wait without limit)\n",
		CTL_TIMEOUT_DEFAULT);
}

static void print_status(const char *dir, const struct status *st, bool json)
{
	size_t i;

	if (json) {
		printf("{\"image\":");
		json_str(stdout, dir);
		printf(",\"mounted\":%s,\"disk\":", st->mounted ? "true" : "false");
		if (st->disk)
			json_str(stdout, st->disk);
		else
			printf("null");
		printf(",\"size\":%" PRIu64 ",\"cluster\":%" PRIu64
		       ",\"failed\":%s,\"frozen\":%s,\"unclean\":%s"
		       ",\"held_writes\":%" PRIu64 ",\"enospc_events\":%" PRIu64
		       ",\"dirty_pages\":%" PRIu64 ",\"freezes\":%" PRIu64
		       ",\"stall_last_us\":%" PRIu64 ",\"stall_max_us\":%" PRIu64
		       ",\"last_event\":%" PRIu64,
		       st->size, st->cluster, st->failed ? "true" : "false",
		       st->frozen ? "true" : "false",
		       st->unclean ? "true" : "false", st->held, st->enospc,
		       st->dirty, st->freezes, st->stall_last, st->stall_max,
		       st->last_event);
		if (st->transport) {
			printf(",\"fuse_transport\":");
			json_str(stdout, st->transport);
			printf(",\"fuse_ring_requests\":%" PRIu64,
			       st->ring_requests);
		}
		printf(",\"deltas\":[");
		for (i = 0; i < st->n; i++) {
			printf("%s{\"guid\":", i ? "," : "");
			json_str(stdout, st->lv[i].guid);
			printf(",\"file\":");
			json_str(stdout, st->lv[i].file);
			printf(",\"clusters\":%" PRIu64 ",\"top\":%s,\"deleting\":%s}",
			       st->lv[i].mapped, st->lv[i].top ? "true" : "false",
			       st->lv[i].hidden ? "true" : "false");
		}
		printf("]}\n");
		return;
	}
	printf("image:          %s\n", dir);
	printf("mounted:        %s\n", st->mounted ? st->disk : "no");
	printf("size:           %" PRIu64 " bytes\n", st->size);
	printf("cluster:        %" PRIu64 " bytes\n", st->cluster);
	printf("state:          %s\n",
	       st->failed ? "FAILED: I/O error, writes refused until remounted (W7)" :
	       st->frozen ? "frozen for a snapshot or merge" :
	       st->unclean ? "not closed cleanly (in-use flag set)" : "ok");
	printf("held writes:    %" PRIu64 " (out-of-space events: %" PRIu64 ")\n",
	       st->held, st->enospc);
	printf("dirty BAT pages: %" PRIu64 "\n", st->dirty);
	if (st->mounted)
		printf("freezes:        %" PRIu64 " (last stall %" PRIu64
		       " us, longest %" PRIu64 " us)\n",
		       st->freezes, st->stall_last, st->stall_max);
	if (st->transport)
		printf("transport:      %s\n",
		       strcmp(st->transport, "io_uring") ? "/dev/fuse" :
							   "FUSE over io_uring");
	printf("deltas:         %zu (base first)\n", st->n);
	for (i = 0; i < st->n; i++)
		printf("  %-38s %10" PRIu64 " clusters  %s%s%s\n",
		       st->lv[i].guid, st->lv[i].mapped, st->lv[i].file,
		       st->lv[i].top ? "  (top)" : "",
		       st->lv[i].hidden ? "  (being deleted)" : "");
}

/* A decimal number followed by a space at *@p; *@p moves past both.
 * Returns 0 or -1. */
static int next_u64(const char **p, uint64_t *v)
{
	unsigned long long x;
	char *end;

	if (**p < '0' || **p > '9')
		return -1;
	errno = 0;
	x = strtoull(*p, &end, 10);
	if (errno || *end != ' ')
		return -1;
	*v = x;
	*p = end + 1;
	return 0;
}

/* Parse the daemon's "delta <i> <guid> <mapped> <top> <deleting> <file>"
 * status line into @l.  Returns 0 or -1 (malformed). */
static int parse_delta_line(const char *line, struct pf_stack_level *l)
{
	const char *p = line + strlen("delta ");
	uint64_t idx, top, hidden;
	size_t n;

	if (next_u64(&p, &idx))
		return -1;
	n = strcspn(p, " ");
	if (!n || n >= sizeof(l->guid) || p[n] != ' ')
		return -1;
	memcpy(l->guid, p, n);
	l->guid[n] = '\0';
	p += n + 1;
	if (next_u64(&p, &l->mapped) || next_u64(&p, &top) || top > 1 ||
	    next_u64(&p, &hidden) || hidden > 1 || !*p)
		return -1;
	snprintf(l->file, sizeof(l->file), "%s", p);
	l->top = top;
	l->hidden = hidden;
	return 0;
}

static int status_online(int fd, const char *dir, struct status *st)
{
	static const char *const argv[] = { "status" };
	struct kv kv = { NULL, 0 };
	size_t i;
	int rc;

	rc = daemon_call(fd, dir, 1, argv, kv_add, &kv);
	if (rc != EXIT_OK)
		goto out;
	st->mounted = true;
	st->disk = kv_get(&kv, "mounted");
	st->disk = st->disk ? strdup(st->disk) : NULL;
	st->transport = kv_get(&kv, "fuse_transport");
	st->transport = st->transport ? strdup(st->transport) : NULL;
	st->ring_requests = kv_u64(&kv, "fuse_ring_requests");
	st->size = kv_u64(&kv, "size");
	st->cluster = kv_u64(&kv, "cluster");
	st->failed = kv_u64(&kv, "failed");
	st->frozen = kv_u64(&kv, "frozen");
	st->held = kv_u64(&kv, "held_writes");
	st->enospc = kv_u64(&kv, "enospc_events");
	st->dirty = kv_u64(&kv, "dirty_pages");
	st->freezes = kv_u64(&kv, "freezes");
	st->stall_last = kv_u64(&kv, "stall_last_us");
	st->stall_max = kv_u64(&kv, "stall_max_us");
	st->last_event = kv_u64(&kv, "last_event");
	st->lv = calloc(kv.n, sizeof(*st->lv));
	if (!st->lv) {
		rc = EXIT_FAIL;
		goto out;
	}
	for (i = 0; i < kv.n; i++) {
		if (strncmp(kv.lines[i], "delta ", 6))
			continue;
		if (parse_delta_line(kv.lines[i], &st->lv[st->n])) {
			err_line(dir, "malformed status from the daemon: %s",
				 kv.lines[i]);
			rc = EXIT_FAIL;
			goto out;
		}
		st->n++;
	}
out:
	kv_free(&kv);
	return rc;
}

static int status_offline(struct image *im, struct status *st)
{
	struct pf_delta **v = NULL;
	size_t n = 0, i;
	int rc;

	rc = chain_open(im, false, &v, &n);
	if (rc != EXIT_OK)
		return rc;
	st->lv = calloc(n, sizeof(*st->lv));
	if (!st->lv) {
		deltas_close(v, n);
		return EXIT_FAIL;
	}
	for (i = 0; i < n; i++) {
		const struct pf_dd_image *img = &im->dd->images[im->chain[i]];
		const struct pf_dd_shot *shot = pf_dd_find_shot(im->dd, img->guid);

		snprintf(st->lv[i].guid, sizeof(st->lv[i].guid), "%s", img->guid);
		snprintf(st->lv[i].file, sizeof(st->lv[i].file), "%s", img->file);
		st->lv[i].mapped = pf_delta_mapped_count(v[i]);
		st->lv[i].top = i + 1 == n;
		st->lv[i].hidden = shot && shot->temporary;
		if (v[i]->hdr.in_use == PF_INUSE_OPEN && i + 1 == n)
			st->unclean = true;
	}
	st->n = n;
	st->size = v[n - 1]->hdr.size_bytes;
	st->cluster = v[n - 1]->hdr.cluster_bytes;
	deltas_close(v, n);
	return EXIT_OK;
}

static int cmd_status(int argc, char **argv)
{
	struct status st;
	struct image im;
	bool json = false;
	int c, rc, fd;

	while ((c = getopt_long(argc, argv, "jt:h", json_timeout_opts,
				NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 't':
			if (parse_timeout(optarg, &ctl_timeout))
				return EXIT_USAGE;
			break;
		case 'h':
			usage_status(stdout);
			return EXIT_OK;
		default:
			usage_status(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind + 1 != argc) {
		usage_status(stderr);
		return EXIT_USAGE;
	}
	memset(&st, 0, sizeof(st));
	rc = daemon_of(argv[optind], &fd);
	if (rc == EXIT_OK && fd >= 0) {
		rc = status_online(fd, argv[optind], &st);
	} else if (rc == EXIT_OK) {
		/* no lock: status answers while another command runs */
		rc = image_open(&im, argv[optind], 0, false);
		if (rc == EXIT_OK)
			rc = status_offline(&im, &st);
		image_close(&im);
	}
	if (rc == EXIT_OK)
		print_status(argv[optind], &st, json);
	free(st.lv);
	free((char *)st.disk);
	free((char *)st.transport);
	return rc;
}

/* events */

static void usage_events(FILE *out)
{
	fprintf(out,
		"usage: ploopctl events [--after <seq>] [--count <n>] [--timeout <s>] <dir>\n"
		"  --after <seq>    start after this sequence number (default: new events only)\n"
		"  --count <n>      stop after <n> events\n"
		"  --timeout <s>    stop after <s> seconds (default 0: no limit)\n");
}

struct events_out {
	uint64_t left;	/* 0: no limit */
};

static int print_event(void *ctx, const char *line)
{
	struct events_out *eo = ctx;

	printf("%s\n", line);
	if (fflush(stdout))
		return -EPIPE;
	if (eo->left && !--eo->left)
		return 1;	/* enough */
	return 0;
}

static void events_timeout(int sig)
{
	(void)sig;
	_exit(EXIT_OK);	/* output is flushed line by line */
}

static int cmd_events(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "after", required_argument, NULL, 'a' },
		{ "count", required_argument, NULL, 'n' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cargv[2] = { "events", NULL };
	struct events_out eo = { 0 };
	unsigned timeout = 0;
	char *end;
	int c, rc, fd;

	while ((c = getopt_long(argc, argv, "a:n:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			strtoull(optarg, &end, 10);
			if (!*optarg || *end) {
				err_line(NULL, "invalid sequence number '%s'", optarg);
				return EXIT_USAGE;
			}
			cargv[1] = optarg;
			break;
		case 'n':
			eo.left = strtoull(optarg, &end, 10);
			if (!*optarg || *end || !eo.left) {
				err_line(NULL, "invalid count '%s'", optarg);
				return EXIT_USAGE;
			}
			break;
		case 't':
			if (parse_timeout(optarg, &timeout))
				return EXIT_USAGE;
			break;
		case 'h':
			usage_events(stdout);
			return EXIT_OK;
		default:
			usage_events(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind + 1 != argc) {
		usage_events(stderr);
		return EXIT_USAGE;
	}
	/*
	 * A stream is silent while nothing happens: the daemon's silence
	 * is no error here.  --timeout is how long to listen, the whole
	 * command included, and its end is a success.
	 */
	ctl_timeout = 0;
	if (timeout) {
		signal(SIGALRM, events_timeout);
		alarm(timeout);
	}
	rc = daemon_of(argv[optind], &fd);
	if (rc != EXIT_OK)
		return rc;
	if (fd < 0) {
		err_line(argv[optind], "not mounted: events come from the ploopfs daemon");
		return EXIT_FAIL;
	}
	return daemon_call(fd, argv[optind], cargv[1] ? 2 : 1, cargv,
			   print_event, &eo);
}

/* snapshot-delete and snapshot-merge */

static const struct option timeout_opts[] = {
	{ "timeout", required_argument, NULL, 't' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static void print_merge(const char *guid, const struct pf_stack_merge_info *mi)
{
	double s = (double)mi->usec / 1e6;

	printf("deleted snapshot %s: %" PRIu64 " clusters (%.1f MiB) merged %s in %.3f s (%.1f MiB/s), I/O stalled %" PRIu64 " us\n",
	       guid, mi->clusters, (double)mi->bytes / (1 << 20),
	       mi->down ? "into it from its child" : "up into the top", s,
	       s > 0 ? (double)mi->bytes / (1 << 20) / s : 0.0, mi->stall_us);
}

/* Delete snapshot @guid of image @dir, through the daemon or on the files. */
static int delete_snapshot(const char *dir, const char *guid)
{
	struct pf_stack_opts so = { .dir = dir };
	struct pf_stack_merge_info mi;
	const char *cargv[] = { "snapshot-delete", guid };
	struct pf_why why = { "" };
	struct pf_stack *s;
	struct kv kv = { NULL, 0 };
	int rc, fd, ret;

	rc = daemon_of(dir, &fd);
	if (rc != EXIT_OK)
		return rc;
	if (fd >= 0) {
		rc = daemon_call(fd, dir, 2, cargv, kv_add, &kv);
		if (rc == EXIT_OK) {
			memset(&mi, 0, sizeof(mi));
			mi.down = kv_u64(&kv, "down");
			mi.clusters = kv_u64(&kv, "clusters");
			mi.bytes = kv_u64(&kv, "bytes");
			mi.usec = kv_u64(&kv, "usec");
			mi.stall_us = kv_u64(&kv, "stall_us");
			print_merge(guid, &mi);
		}
		kv_free(&kv);
		return rc;
	}
	/* Not mounted: the same engine, run here (it takes the lock). */
	ret = pf_stack_open(&so, &s, &why);
	if (ret) {
		err_line(dir, "%s", why.msg[0] ? why.msg : strerror(-ret));
		return ret == -EBUSY ? EXIT_BUSY : exit_for(ret);
	}
	ret = pf_stack_delete_snapshot(s, guid, &mi, &why);
	if (pf_stack_close(s) && !ret) {
		ret = -EIO;
		pf_why_fmt(&why, "cannot close the image cleanly");
	}
	if (ret) {
		err_line(dir, "%s", why.msg[0] ? why.msg : strerror(-ret));
		return exit_for_struct(ret);
	}
	print_merge(guid, &mi);
	return EXIT_OK;
}

static void usage_snapshot_delete(FILE *out)
{
	fprintf(out, "usage: ploopctl snapshot-delete [--timeout <s>] <dir> <guid>\n"
		     "  --timeout <s>   a mounted image's daemon must not be silent for <s>\n"
		     "                  seconds (default %d; 0: no limit); a merge that goes\n"
		     "                  on may take longer\n",
		CTL_TIMEOUT_DEFAULT);
}

/* Options of snapshot-delete and snapshot-merge: --timeout only.
 * Returns -1 to go on, or an exit status. */
static int parse_timeout_only(int argc, char **argv, void (*usage_fn)(FILE *))
{
	int c;

	while ((c = getopt_long(argc, argv, "t:h", timeout_opts, NULL)) != -1) {
		switch (c) {
		case 't':
			if (parse_timeout(optarg, &ctl_timeout))
				return EXIT_USAGE;
			break;
		case 'h':
			usage_fn(stdout);
			return EXIT_OK;
		default:
			usage_fn(stderr);
			return EXIT_USAGE;
		}
	}
	return -1;
}

static int cmd_snapshot_delete(int argc, char **argv)
{
	int rc = parse_timeout_only(argc, argv, usage_snapshot_delete);

	if (rc >= 0)
		return rc;
	if (optind + 2 != argc) {
		usage_snapshot_delete(stderr);
		return EXIT_USAGE;
	}
	if (!pf_guid_valid(argv[optind + 1])) {
		err_line(NULL, "invalid GUID '%s'", argv[optind + 1]);
		return EXIT_USAGE;
	}
	return delete_snapshot(argv[optind], argv[optind + 1]);
}

static void usage_snapshot_merge(FILE *out)
{
	fprintf(out, "usage: ploopctl snapshot-merge [--timeout <s>] <dir> [<guid>]\n"
		     "  merge delta <guid> (default: the top) into its parent; the parent's\n"
		     "  snapshot GUID goes.  Without <guid>, a snapshot delete that was\n"
		     "  interrupted is completed first.\n"
		     "  --timeout <s>   as for snapshot-delete (default %d)\n",
		CTL_TIMEOUT_DEFAULT);
}

static int cmd_snapshot_merge(int argc, char **argv)
{
	const char *guid = PF_TOP_GUID, *parent = NULL;
	char pguid[PF_GUID_LEN + 1] = "";
	struct image im;
	size_t i;
	int rc;

	rc = parse_timeout_only(argc, argv, usage_snapshot_merge);
	if (rc >= 0)
		return rc;
	if (optind + 1 != argc && optind + 2 != argc) {
		usage_snapshot_merge(stderr);
		return EXIT_USAGE;
	}
	if (optind + 2 == argc) {
		guid = argv[optind + 1];
		if (!pf_guid_valid(guid)) {
			err_line(NULL, "invalid GUID '%s'", guid);
			return EXIT_USAGE;
		}
	}
	/* the descriptor is read without a lock: the engine re-checks */
	rc = image_open(&im, argv[optind], 0, false);
	if (rc != EXIT_OK) {
		image_close(&im);
		return rc;
	}
	if (optind + 1 == argc)
		for (i = 0; i < im.dd->n_shots; i++)
			if (im.dd->shots[i].temporary) {
				snprintf(pguid, sizeof(pguid), "%s",
					 im.dd->shots[i].guid);
				printf("completing the interrupted delete of snapshot %s\n",
				       pguid);
				break;
			}
	if (!pguid[0]) {
		parent = pf_dd_parent(im.dd, guid);
		if (!pf_dd_find_shot(im.dd, guid)) {
			err_line(argv[optind], "%s: no such delta", guid);
			rc = EXIT_FAIL;
		} else if (!parent || !strcmp(parent, PF_NONE_GUID)) {
			err_line(argv[optind], "%s is the base delta: it has no parent to merge into",
				 guid);
			rc = EXIT_USAGE;
		} else {
			snprintf(pguid, sizeof(pguid), "%s", parent);
		}
	}
	image_close(&im);
	if (rc != EXIT_OK)
		return rc;
	return delete_snapshot(argv[optind], pguid);
}

/* main */

static const struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
} commands[] = {
	{ "init", cmd_init, "create an image directory with an empty disk" },
	{ "info", cmd_info, "show the deltas and header fields of an image" },
	{ "check", cmd_check, "check an image for corruption and leaks (read-only)" },
	{ "snapshot", cmd_snapshot, "take a snapshot (new empty top delta)" },
	{ "snapshot-list", cmd_snapshot_list, "list the snapshots of an image" },
	{ "snapshot-delete", cmd_snapshot_delete, "delete a snapshot, merging its data into its child" },
	{ "snapshot-merge", cmd_snapshot_merge, "merge a delta into its parent (default: the top)" },
	{ "status", cmd_status, "state of an image, mounted or not" },
	{ "events", cmd_events, "stream the daemon's events (out of space, snapshots, errors)" },
	{ "snapshot-switch", cmd_snapshot_switch, "discard the top and go on from a snapshot" },
};

static void usage(FILE *out)
{
	size_t i;

	fprintf(out, "usage: ploopctl <command> [<options>] <args>\n\ncommands:\n");
	for (i = 0; i < PF_ARRAY_SIZE(commands); i++)
		fprintf(out, "  %-15s %s\n", commands[i].name,
			commands[i].summary);
	fprintf(out, "\n'ploopctl <command> --help' shows a command's options; "
		     "see ploopctl(8).\n");
}

int main(int argc, char **argv)
{
	size_t i;

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
	for (i = 0; i < PF_ARRAY_SIZE(commands); i++)
		if (!strcmp(argv[1], commands[i].name)) {
			int rc = commands[i].fn(argc - 1, argv + 1);

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
