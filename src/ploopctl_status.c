// SPDX-License-Identifier: GPL-2.0-or-later
/* ploopctl status and events (see ploopctl_i.h). */
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

#include "mounts.h"

#include "ploopctl_i.h"

/* status */

struct status {
	bool mounted;
	const char *disk;	/* the file in the mount */
	char *stale;		/* a mount of the image without a daemon */
	const char *transport;	/* "io_uring" or "dev" */
	uint64_t ring_requests;	/* requests that came over io_uring */
	uint64_t size, cluster;
	size_t n;
	struct pf_stack_level *lv;
	bool failed, frozen, unclean;
	bool read_only;		/* mounted with ploopfs -o ro */
	uint64_t held, enospc, dirty, freezes, stall_last, stall_max,
		last_event;
	/* sealing (mounted): snapshots without a manifest yet, and the
	 * bytes of the one being sealed or verified */
	uint64_t unsealed, seal_done, seal_total;
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
		printf(",\"mounted\":%s,\"read_only\":%s,\"disk\":",
		       st->mounted ? "true" : "false",
		       st->read_only ? "true" : "false");
		if (st->disk)
			json_str(stdout, st->disk);
		else
			printf("null");
		printf(",\"stale_mount\":");
		if (st->stale)
			json_str(stdout, st->stale);
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
		if (st->mounted)
			printf(",\"unsealed\":%" PRIu64 ",\"seal_done\":%" PRIu64
			       ",\"seal_total\":%" PRIu64,
			       st->unsealed, st->seal_done, st->seal_total);
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
	if (st->stale)
		printf("mounted:        stale mount on %s (its daemon is gone): run fusermount3 -u %s\n",
		       st->stale, st->stale);
	else
		printf("mounted:        %s%s\n", st->mounted ? st->disk : "no",
		       st->read_only ? " (read-only)" : "");
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
	if (st->mounted && st->seal_total)
		printf("sealing:        %" PRIu64 "%% of %" PRIu64
		       " bytes; %" PRIu64 " snapshot(s) unsealed\n",
		       st->seal_done * 100 / st->seal_total, st->seal_total,
		       st->unsealed);
	else if (st->mounted)
		printf("sealing:        %s%" PRIu64 " snapshot(s) unsealed\n",
		       st->unsealed ? "waiting; " : "done; ", st->unsealed);
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
	{
		const struct {
			const char *key;
			uint64_t *dst;
		} nums[] = {
			{ "fuse_ring_requests", &st->ring_requests },
			{ "size", &st->size },
			{ "cluster", &st->cluster },
			{ "held_writes", &st->held },
			{ "enospc_events", &st->enospc },
			{ "dirty_pages", &st->dirty },
			{ "freezes", &st->freezes },
			{ "stall_last_us", &st->stall_last },
			{ "stall_max_us", &st->stall_max },
			{ "last_event", &st->last_event },
			{ "unsealed", &st->unsealed },
			{ "seal_done", &st->seal_done },
			{ "seal_total", &st->seal_total },
		};

		for (i = 0; i < PF_ARRAY_SIZE(nums); i++)
			*nums[i].dst = kv_u64(&kv, nums[i].key);
	}
	st->failed = kv_u64(&kv, "failed");
	st->frozen = kv_u64(&kv, "frozen");
	st->read_only = kv_u64(&kv, "read_only");
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

/* The mount point of a ploopfs mount of @dir that no daemon serves (a
 * killed daemon leaves it: reads fail with ENOTCONN), or NULL. */
static char *stale_mount(const char *dir)
{
	const struct pf_mount_ent *e;
	struct pf_mount_ent *v;
	char *out = NULL;
	size_t n;

	if (!mount_lookup(dir, true, false, &v, &n, &e) && e)
		out = strdup(e->dir);
	pf_mounts_free(v, n);
	return out;
}

static int cmd_status(int argc, char **argv)
{
	struct status st;
	struct image im;
	bool json = false;
	const struct cmd_opt opts[] = {
		{ "json", 'j', OPT_FLAG, &json },
		OPT_TIMEOUT,
	};
	int rc, fd;

	rc = parse_args(argc, argv, opts, PF_ARRAY_SIZE(opts), usage_status, 1,
			1);
	if (rc >= 0)
		return rc;
	memset(&st, 0, sizeof(st));
	rc = daemon_of(argv[optind], &fd);
	if (rc == EXIT_OK && fd >= 0) {
		rc = status_online(fd, argv[optind], &st);
		if (rc == EXIT_DAEMON_CLOSED) {
			free(st.lv);
			memset(&st, 0, sizeof(st));
			fd = -1;
			rc = EXIT_OK;
		}
	}
	if (rc == EXIT_OK && fd < 0) {
		/* no lock: status answers while another command runs */
		rc = image_open(&im, argv[optind], 0, false);
		if (rc == EXIT_OK)
			rc = status_offline(&im, &st);
		image_close(&im);
		if (rc == EXIT_OK)
			st.stale = stale_mount(argv[optind]);
	}
	if (rc == EXIT_OK)
		print_status(argv[optind], &st, json);
	free(st.lv);
	free((char *)st.disk);
	free((char *)st.transport);
	free(st.stale);
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
	const char *cargv[2] = { "events", NULL }, *count = NULL;
	struct events_out eo = { 0 };
	unsigned timeout = 0;
	const struct cmd_opt opts[] = {
		{ "after", 'a', OPT_ARG, &cargv[1] },
		{ "count", 'n', OPT_ARG, &count },
		{ "timeout", 't', OPT_SECONDS, &timeout },
	};
	char *end;
	int rc, fd;

	rc = parse_args(argc, argv, opts, PF_ARRAY_SIZE(opts), usage_events, 1,
			1);
	if (rc >= 0)
		return rc;
	if (cargv[1] && (strtoull(cargv[1], &end, 10), !*cargv[1] || *end)) {
		err_line(NULL, "invalid sequence number '%s'", cargv[1]);
		return EXIT_USAGE;
	}
	if (count && ((eo.left = strtoull(count, &end, 10)), !*count || *end ||
		      !eo.left)) {
		err_line(NULL, "invalid count '%s'", count);
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
	rc = daemon_call(fd, argv[optind], cargv[1] ? 2 : 1, cargv,
			 print_event, &eo);
	if (rc == EXIT_DAEMON_CLOSED) {
		err_line(argv[optind], "not mounted: the daemon has closed the image");
		rc = EXIT_FAIL;
	}
	return rc;
}

const struct command status_commands[] = {
	{ "status", cmd_status, "state of an image, mounted or not" },
	{ "events", cmd_events, "stream the daemon's events (out of space, snapshots, errors)" },
	{ NULL, NULL, NULL },
};
