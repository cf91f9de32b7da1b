// SPDX-License-Identifier: GPL-2.0-or-later
/* The daemon's control commands (see serve.h). */
#include "serve.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "mounts.h"

void pf_serve_event(void *ctx, const char *type, const char *text)
{
	pf_events_emit(ctx, type, "%s", text);
}

/* Parse a decimal sequence number. */
static int parse_u64(const char *s, uint64_t *v)
{
	char *end;

	if (!*s || *s == '-')
		return -EINVAL;
	errno = 0;
	*v = strtoull(s, &end, 10);
	return errno || *end ? -EINVAL : 0;
}

/*
 * Once the mount is gone (unmounted, the FUSE loop about to end), the
 * daemon is closing the image: answer as a draining control socket does
 * (ESHUTDOWN, pf_ctl_drain()), so that a client waits for the image lock
 * instead of acting on a disk that is going away.  A table we cannot
 * read tells nothing: serve.
 */
static int check_mounted(const struct pf_serve *sv, struct pf_why *why)
{
	struct pf_mount_ent *v;
	size_t n;
	bool gone;

	if (!sv->mount_point || pf_mounts_read(&v, &n))
		return 0;
	gone = !pf_mounts_find(v, n, sv->mount_point, false);
	pf_mounts_free(v, n);
	return gone ? pf_why_set(why, -ESHUTDOWN,
				 "the daemon is closing the image (unmounted)") :
		      0;
}

bool pf_serve_gone(void *ctx)
{
	return check_mounted(ctx, NULL) == -ESHUTDOWN;
}

/* Structural commands change the image: not once the mount is gone
 * (check_mounted), and a read-only mount refuses them here, before the
 * stack would (-EROFS either way). */
static int check_structural(const struct pf_serve *sv, struct pf_why *why)
{
	int ret = check_mounted(sv, why);

	if (!ret && sv->read_only)
		ret = pf_why_set(why, -EROFS, "the image is mounted read-only");
	return ret;
}

static int cmd_status(void *ctx, int argc, char **argv,
		      struct pf_ctl_reply *r, struct pf_why *why)
{
	struct pf_serve *sv = ctx;
	struct pf_stack_level *lv = NULL;
	struct pf_stack_stat st;
	size_t n = 0, i;
	int ret;

	(void)argv;
	if (argc != 1)
		return pf_why_set(why, -EINVAL, "usage: status");
	ret = check_mounted(sv, why);
	if (ret)
		return ret;
	/* Everything here answers while I/O is frozen (CTL-1). */
	if (pf_stack_levels_all(sv->stack, &lv, &n))
		return -ENOMEM;
	pf_stack_stat(sv->stack, &st);
	{
		const struct {
			const char *key;
			uint64_t v;
		} nums[] = {
			{ "size", st.size_bytes },
			{ "cluster", st.cluster_bytes },
			{ "dirty_pages", st.dirty_pages },
			{ "file_clusters", st.file_clusters },
			{ "free_clusters", st.free_clusters },
			{ "failed", st.failed },
			{ "read_only", st.read_only },
			{ "frozen", st.frozen },
			{ "held_writes", st.held },
			{ "enospc_events", st.enospc_events },
			{ "commits", st.commits },
			{ "fuse_ring_requests", pf_ring_served(sv->ring) },
			{ "datasyncs", st.datasyncs },
			{ "freezes", st.freezes },
			{ "stall_last_us", st.stall_last_us },
			{ "stall_max_us", st.stall_max_us },
			{ "last_event", pf_events_last(sv->events) },
			{ "unsealed", st.unsealed },
			{ "seal_done", st.seal_done },
			{ "seal_total", st.seal_total },
		};

		ret = pf_ctl_data(r, "mounted %s", sv->disk_path);
		if (!ret)
			ret = pf_ctl_data(r, "fuse_transport %s",
					  pf_ring_transport(sv->ring));
		for (i = 0; !ret && i < n; i++)
			ret = pf_ctl_data(r, "delta %zu %s %" PRIu64 " %d %d %s",
					  i, lv[i].guid, lv[i].mapped,
					  lv[i].top, lv[i].hidden, lv[i].file);
		for (i = 0; !ret && i < PF_ARRAY_SIZE(nums); i++)
			ret = pf_ctl_data(r, "%s %" PRIu64, nums[i].key,
					  nums[i].v);
	}
	free(lv);
	return ret;
}

static int cmd_events(void *ctx, int argc, char **argv,
		      struct pf_ctl_reply *r, struct pf_why *why)
{
	struct pf_serve *sv = ctx;
	char line[PF_EVENT_LINE_MAX];
	struct pf_event e;
	uint64_t after;

	if (argc > 2)
		return pf_why_set(why, -EINVAL, "usage: events [<after>]");
	if (argc == 2) {
		if (parse_u64(argv[1], &after))
			return pf_why_set(why, -EINVAL,
					  "%s: not a sequence number", argv[1]);
	} else {
		after = pf_events_last(sv->events);
	}
	while (pf_events_wait(sv->events, after, &e, -1, pf_ctl_cancelled, r) == 1) {
		if (pf_event_format(&e, line, sizeof(line)) ||
		    pf_ctl_data(r, "%s", line))
			break;
		after = pf_event_next_after(&e);
	}
	return 0;
}

static int cmd_snapshot(void *ctx, int argc, char **argv,
			struct pf_ctl_reply *r, struct pf_why *why)
{
	struct pf_serve *sv = ctx;
	char guid[PF_GUID_LEN + 1];
	struct pf_stack_stat st;
	int ret;

	if (argc > 2)
		return pf_why_set(why, -EINVAL, "usage: snapshot [<guid>]");
	ret = check_structural(sv, why);
	if (ret)
		return ret;
	ret = pf_stack_snapshot(sv->stack, argc == 2 ? argv[1] : NULL, guid, why);
	if (ret)
		return ret;
	pf_stack_stat(sv->stack, &st);
	if (!pf_ctl_data(r, "guid %s", guid))
		(void)pf_ctl_data(r, "stall_us %" PRIu64, st.stall_last_us);
	return 0;	/* done even if the client left */
}

static int cmd_snapshot_delete(void *ctx, int argc, char **argv,
			       struct pf_ctl_reply *r, struct pf_why *why)
{
	struct pf_serve *sv = ctx;
	struct pf_stack_merge_info mi;
	unsigned flags = 0;
	int ret;

	if (argc == 3 && !strcmp(argv[2], "force"))
		flags |= PF_STACK_DELETE_FORCE;
	else if (argc != 2)
		return pf_why_set(why, -EINVAL, "usage: snapshot-delete <guid> [force]");
	ret = check_structural(sv, why);
	if (ret)
		return ret;
	ret = pf_stack_delete_snapshot(sv->stack, argv[1], flags, &mi, why);
	if (ret)
		return ret;
	if (!pf_ctl_data(r, "down %d", mi.down) &&
	    !pf_ctl_data(r, "clusters %" PRIu64, mi.clusters) &&
	    !pf_ctl_data(r, "bytes %" PRIu64, mi.bytes) &&
	    !pf_ctl_data(r, "usec %" PRIu64, mi.usec))
		(void)pf_ctl_data(r, "stall_us %" PRIu64, mi.stall_us);
	return 0;
}

/* verify: data lines "cluster <bytes>", then for each level "level
 * <guid> <file>", "bad <guid> <vclu> <problem>" for each cluster that
 * does not match, "note <guid> <text>" and "verified <guid> <state>
 * <clusters>" (pf_stack_verified). */
struct verify_out {
	struct pf_ctl_reply *r;
	int err;	/* the client went away */
};

static void verify_bad(void *ctx, const char *guid, uint32_t vclu,
		       const char *problem)
{
	struct verify_out *v = ctx;

	if (!v->err)
		v->err = pf_ctl_data(v->r, "bad %s %" PRIu32 " %s", guid, vclu,
				     problem);
}

static int verify_delta(void *ctx, const struct pf_stack_verified *d)
{
	struct verify_out *v = ctx;

	if (!v->err && d->note)
		v->err = pf_ctl_data(v->r, "note %s %s", d->guid, d->note);
	if (!v->err)
		v->err = pf_ctl_data(v->r, "verified %s %s %" PRIu64 " %s",
				     d->guid, d->state, d->clusters, d->file);
	return v->err;
}

/* the client went away (a failed send, a hang-up) or the daemon stops */
static bool verify_cancel(void *ctx)
{
	struct verify_out *v = ctx;

	return v->err || pf_ctl_cancelled(v->r) || pf_ctl_stopping(v->r);
}

static int verify_level(void *ctx, const char *guid, const char *file)
{
	struct verify_out *v = ctx;

	if (!v->err)
		v->err = pf_ctl_data(v->r, "level %s %s", guid, file);
	return v->err;
}

static int cmd_verify(void *ctx, int argc, char **argv,
		      struct pf_ctl_reply *r, struct pf_why *why)
{
	struct pf_serve *sv = ctx;
	struct verify_out v = { .r = r };
	const struct pf_stack_verify_cb cb = {
		.level = verify_level, .bad = verify_bad,
		.delta = verify_delta, .cancel = verify_cancel, .ctx = &v,
	};
	struct pf_stack_stat st;
	int ret;

	(void)argv;
	if (argc != 1)
		return pf_why_set(why, -EINVAL, "usage: verify");
	ret = check_mounted(sv, why);
	if (ret)
		return ret;
	pf_stack_stat(sv->stack, &st);
	ret = pf_ctl_data(r, "cluster %" PRIu32, st.cluster_bytes);
	if (ret)
		return ret;
	return pf_stack_verify(sv->stack, &cb, why);
}

static const struct pf_ctl_cmd cmds[] = {
	{ .name = "status", .fn = cmd_status },
	{ .name = "events", .fn = cmd_events, .stream = true },
	{ .name = "snapshot", .fn = cmd_snapshot, .keepalive = true },
	{ .name = "snapshot-delete", .fn = cmd_snapshot_delete, .keepalive = true },
	{ .name = "verify", .fn = cmd_verify, .keepalive = true },
	{ .name = NULL },
};

const struct pf_ctl_cmd *pf_serve_cmds(void)
{
	return cmds;
}
