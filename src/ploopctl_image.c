// SPDX-License-Identifier: GPL-2.0-or-later
/* ploopctl init, info and check (see ploopctl_i.h). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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

#include "manifest.h"
#include "ploopctl_i.h"

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
	const char *size_s = NULL, *cluster_s = NULL;
	const struct cmd_opt opts[] = {
		{ "size", 's', OPT_ARG, &size_s },
		{ "cluster-size", 'c', OPT_ARG, &cluster_s },
	};
	uint64_t size = 0, cluster = PF_CLUSTER_DEFAULT;
	struct pf_why why = { "" };
	struct pf_header h;
	const char *dir;
	int ret, dirfd, rc = EXIT_FAIL;

	rc = parse_args(argc, argv, opts, PF_ARRAY_SIZE(opts), usage_init, 1, 1);
	if (rc >= 0)
		return rc;
	rc = EXIT_FAIL;
	if (!size_s) {
		usage_init(stderr);
		return EXIT_USAGE;
	}
	if (pf_parse_size(size_s, &size) < 0) {
		err_line(NULL, "invalid size '%s'", size_s);
		return EXIT_USAGE;
	}
	if (cluster_s && (pf_parse_size(cluster_s, &cluster) < 0 ||
			  cluster > UINT32_MAX)) {
		err_line(NULL, "invalid cluster size '%s'", cluster_s);
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

	rc = parse_json_args(argc, argv, usage_info, &json);
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

/*
 * W9: a sealed delta that the repair will change loses its manifest
 * first, durably (ploopctl verify seals it again).  Returns 0 or -errno.
 */
static int drop_manifest_first(struct image *im, const char *file,
			       struct pf_delta *d)
{
	struct pf_check_report pre = { 0 };
	int dirfd = im->is_dir ? im->dirfd : AT_FDCWD, ret;

	if (!pf_manifest_exists(dirfd, file))
		return 0;
	ret = pf_check_delta(d, &pre);
	if (ret < 0)
		return ret;
	if (!pre.count[PF_FIND_CORRUPT] && !pre.count[PF_FIND_UNCLEAN] &&
	    !pre.count[PF_FIND_LEAK])
		return 0;	/* nothing to repair */
	ret = pf_manifest_drop(dirfd, file, NULL);
	if (!ret)
		fprintf(stderr, "ploopctl: %s: its manifest is removed before the repair (ploopctl verify seals it again)\n",
			d->name);
	return ret;
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
		ret = drop_manifest_first(im, name ? name : im->arg, d);
		if (!ret)
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
	struct check_out co = { false, true };
	bool repair = false, force = false;
	const struct cmd_opt opts[] = {
		{ "json", 'j', OPT_FLAG, &co.json },
		{ "repair", 'r', OPT_FLAG, &repair },
		{ "force", 'f', OPT_FLAG, &force },
	};
	struct pf_check_report r = { .emit = print_finding, .ctx = &co };
	struct pf_delta **v = NULL;
	struct image im;
	size_t n = 0, i, j;
	unsigned fixes = 0;
	int rc, drc;
	const char *verdict;

	rc = parse_args(argc, argv, opts, PF_ARRAY_SIZE(opts), usage_check, 1, 1);
	if (rc >= 0)
		return rc;
	if (force && !repair) {
		usage_check(stderr);
		return EXIT_USAGE;
	}
	if (repair) {
		rc = refuse_if_read_only(argv[optind]);
		if (rc != EXIT_OK)
			return rc;
	}
	/* Shared lock: a mounted image is changing under us; exclusive
	 * to repair.  A read-only mount holds it shared: check reads. */
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

const struct command image_commands[] = {
	{ "init", cmd_init, "create an image directory with an empty disk" },
	{ "info", cmd_info, "show the deltas and header fields of an image" },
	{ "check", cmd_check, "check an image for corruption and leaks (read-only)" },
	{ NULL, NULL, NULL },
};
