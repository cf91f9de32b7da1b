// SPDX-License-Identifier: GPL-2.0-or-later
/* ploopctl snapshot, snapshot-list, snapshot-switch, snapshot-delete
 * and snapshot-merge (see ploopctl_i.h). */
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
#include "csum.h"
#include "delta.h"
#include "descriptor.h"
#include "format.h"
#include "image.h"
#include "manifest.h"
#include "stack.h"
#include "util.h"

#include "ploopctl_i.h"

/*
 * GUID operand or option @arg in its canonical form into @out: users
 * copy GUIDs from snapshot-list, from ploop, or from a snapshot view's
 * name, which has no braces, in either case.  A usage error if it is not
 * one.
 */
static int guid_arg(const char *arg, char out[PF_GUID_LEN + 1])
{
	if (pf_guid_canon(arg, out)) {
		err_line(NULL, "invalid GUID '%s'", arg);
		return EXIT_USAGE;
	}
	return EXIT_OK;
}

/* snapshot */

static int snapshot_guid_line(void *ctx, const char *line)
{
	if (!strncmp(line, "guid ", 5))
		snprintf(ctx, PF_GUID_LEN + 1, "%s", line + 5);
	return 0;
}

/*
 * Online: the file systems on the disk are frozen here (unless
 * @no_freeze; ploopctl_freeze.c says why here and not in the daemon),
 * then the daemon prepares, freezes its I/O, switches and thaws (CTL-3),
 * and the file systems are thawed, before anything is printed.
 */
static int snapshot_online(int fd, const char *dir, const char *guid,
			   bool verbose)
{
	const char *cargv[] = { "snapshot", guid };
	char got[PF_GUID_LEN + 1] = "";
	struct pf_why why = { "" };
	int rc, ret;

	ret = daemon_call_raw(fd, guid[0] ? 2 : 1, cargv, snapshot_guid_line,
			      got, &why);
	close(fd);
	fs_thaw_all(verbose);
	rc = daemon_result(dir, ret, &why);
	if (rc == EXIT_OK)
		printf("%s\n", got);
	return rc;
}

static void usage_snapshot(FILE *out)
{
	fprintf(out, "usage: ploopctl snapshot [-u <guid>] [--no-freeze] [--no-seal] [-v] [--timeout <s>] <dir>\n"
		     "  -u, --guid <guid>   GUID for the snapshot (default: random)\n"
		     "  --no-freeze         do not freeze the file systems mounted from loop\n"
		     "                      devices of a mounted disk (default: frozen around\n"
		     "                      the switch, so that the snapshot is consistent)\n"
		     "  --no-seal           an image that is not mounted: return without\n"
		     "                      sealing the snapshot (reading all of it); ploopctl\n"
		     "                      verify, or the daemon once mounted, seals it\n"
		     "  -v, --verbose       a line on stderr per file system frozen and thawed\n"
		     "  -t, --timeout <s>   a mounted image's daemon must not be silent for <s>\n"
		     "                      seconds (default %d; 0: no limit)\n",
		CTL_TIMEOUT_DEFAULT);
}

/*
 * The old top of an offline snapshot is read-only from now on: seal it
 * (its manifest, manifest.h) before returning.  The snapshot stands
 * whatever happens here; a failure is a warning, and ploopctl verify
 * seals it later.
 */
static void seal_offline(struct image *im, struct pf_delta *d,
			 const char *guid)
{
	const struct pf_dd_image *img = pf_dd_find_image(im->dd, guid);
	struct pf_csum_alg *a = NULL;
	struct pf_why why = { "" };
	struct pf_sum_opts o = { 0 };
	int ret;

	ret = pf_csum_alg_get(PF_CSUM_DEFAULT, &a, &why);
	if (!ret && !img)
		ret = pf_why_set(&why, -ENOENT, "not in the descriptor");
	if (!ret) {
		o.alg = a;
		(void)pf_delta_direct(d, 4096);
		ret = pf_manifest_seal(im->dirfd, d, img->file, guid, &o, NULL,
				       &why);
	}
	if (ret)
		fprintf(stderr, "ploopctl: warning: %s: snapshot %s taken but not sealed: %s (ploopctl verify seals it)\n",
			im->dir, guid, why.msg[0] ? why.msg : strerror(-ret));
	pf_csum_alg_free(a);
}

static int cmd_snapshot(int argc, char **argv)
{
	const char *want = NULL;
	bool no_freeze = false, verbose = false, no_seal = false;
	const struct cmd_opt opts[] = {
		{ "guid", 'u', OPT_ARG, &want },
		{ "no-freeze", OPT_KEY_LONG, OPT_FLAG, &no_freeze },
		{ "no-seal", OPT_KEY_LONG + 1, OPT_FLAG, &no_seal },
		{ "verbose", 'v', OPT_FLAG, &verbose },
		OPT_TIMEOUT,
	};
	char guid[PF_GUID_LEN + 1] = "";
	struct pf_snap_prep prep = { "", NULL };
	struct pf_why why = { "" };
	struct pf_delta **v = NULL;
	struct image im;
	size_t n = 0;
	int rc, ret, fd;

	rc = parse_args(argc, argv, opts, PF_ARRAY_SIZE(opts), usage_snapshot,
			1, 1);
	if (rc >= 0)
		return rc;
	if (want && guid_arg(want, guid) != EXIT_OK)
		return EXIT_USAGE;
	rc = refuse_if_read_only(argv[optind]);
	if (rc != EXIT_OK)
		return rc;
	/*
	 * Frozen before the daemon is asked, connection included: freezing
	 * writes back the file systems' dirty data, which may take longer
	 * than the daemon waits for a request (PF_CTL_IDLE_MS).  An image
	 * that is not mounted has nothing to freeze.
	 */
	if (!no_freeze) {
		rc = fs_freeze_all(argv[optind], verbose);
		if (rc != EXIT_OK)
			return rc;
	}
	rc = daemon_of(argv[optind], &fd);
	if (rc == EXIT_OK && fd >= 0) {
		rc = snapshot_online(fd, argv[optind], guid, verbose);
		if (rc != EXIT_DAEMON_CLOSED)
			return rc;
		rc = EXIT_OK;
	}
	fs_thaw_all(verbose);
	if (rc != EXIT_OK)
		return rc;
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
	if (!no_seal)
		seal_offline(&im, v[n - 1], prep.guid);
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

	rc = parse_json_args(argc, argv, usage_snapshot_list, &json);
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
	struct pf_delta **v = NULL, **tv = NULL;
	char guid[PF_GUID_LEN + 1];
	struct pf_why why = { "" };
	const struct pf_dd_shot *s;
	const struct pf_dd_image *img;
	size_t n = 0, tn = 0, i, *chain = NULL;
	char *newname = NULL;
	struct image im;
	const char *g;
	int rc, ret;

	rc = parse_args(argc, argv, NULL, 0, usage_snapshot_switch, 2, 2);
	if (rc >= 0)
		return rc;
	if (guid_arg(argv[optind + 1], guid) != EXIT_OK)
		return EXIT_USAGE;
	rc = refuse_if_read_only(argv[optind]);
	if (rc != EXIT_OK)
		return rc;
	/* Exclusive lock: the top is discarded and the descriptor replaced,
	 * so a mounted image is busy. */
	/* As snapshot: an unclean image is recovered first, not guessed at. */
	rc = open_clean_chain(&im, argv[optind], &v, &n);
	if (rc != EXIT_OK)
		goto out;

	s = pf_dd_find_shot(im.dd, guid);
	if (!s) {
		err_line(im.dir, "no snapshot %s", guid);
		rc = EXIT_USAGE;
		goto out;
	}
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

/* snapshot-delete and snapshot-merge */


static void print_merge(const char *guid, const struct pf_stack_merge_info *mi)
{
	double s = (double)mi->usec / 1e6;

	printf("deleted snapshot %s: %" PRIu64 " clusters (%.1f MiB) merged %s in %.3f s (%.1f MiB/s), I/O stalled %" PRIu64 " us\n",
	       guid, mi->clusters, (double)mi->bytes / (1 << 20),
	       mi->down ? "into it from its child" : "up into the top", s,
	       s > 0 ? (double)mi->bytes / (1 << 20) / s : 0.0, mi->stall_us);
}

/*
 * The connection to the daemon was cut during the delete of @guid (the
 * daemon was killed, say): whether the delete ran, and how far, is in
 * the descriptor.  The snapshot gone: deleted (the rename of the
 * descriptor is its last step that counts, W5; the merged file is an
 * orphan at worst).  Marked temporary: interrupted, to be completed.
 * Untouched: failed.  Returns an exit status.
 */
static int delete_outcome(const char *dir, const char *guid,
			  const struct pf_why *cut)
{
	const struct pf_dd_shot *shot;
	struct pf_why why = { "" };
	struct pf_dd *dd = NULL;
	int dirfd, ret;

	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		err_line(dir, "%s; the delete of snapshot %s may or may not have run: %s",
			 cut->msg, guid, strerror(errno));
		return EXIT_FAIL;
	}
	ret = pf_dd_load(dirfd, &dd, &why);
	close(dirfd);
	if (ret) {
		err_line(dir, "%s; the delete of snapshot %s may or may not have run: " PF_DD_NAME ": %s",
			 cut->msg, guid, why.msg[0] ? why.msg : strerror(-ret));
		return EXIT_FAIL;
	}
	shot = pf_dd_find_shot(dd, guid);
	if (!shot) {
		printf("deleted snapshot %s (the daemon's report was lost: %s)\n",
		       guid, cut->msg);
		ret = EXIT_OK;
	} else if (shot->temporary) {
		err_line(dir, "the delete of snapshot %s was interrupted (%s): run ploopctl snapshot-delete --resume %s",
			 guid, cut->msg, dir);
		ret = EXIT_FAIL;
	} else {
		err_line(dir, "%s; snapshot %s was not deleted", cut->msg,
			 guid);
		ret = EXIT_FAIL;
	}
	pf_dd_free(dd);
	return ret;
}

/* Delete snapshot @guid of image @dir, through the daemon or on the
 * files; @force: even while its view is open. */
static int delete_snapshot(const char *dir, const char *guid, bool force)
{
	struct pf_stack_opts so = { .dir = dir };
	struct pf_stack_merge_info mi;
	const char *cargv[] = { "snapshot-delete", guid, "force" };
	struct pf_why why = { "" };
	struct pf_stack *s;
	struct kv kv = { NULL, 0 };
	int rc, fd, ret;

	rc = refuse_if_read_only(dir);
	if (rc != EXIT_OK)
		return rc;
	rc = daemon_of(dir, &fd);
	if (rc != EXIT_OK)
		return rc;
	if (fd >= 0) {
		ret = daemon_call_raw(fd, force ? 3 : 2, cargv, kv_add, &kv,
				      &why);
		close(fd);
		if (ret == -ECONNRESET)
			rc = delete_outcome(dir, guid, &why);
		else
			rc = daemon_result(dir, ret, &why);
		if (!ret) {
			memset(&mi, 0, sizeof(mi));
			mi.down = kv_u64(&kv, "down");
			mi.clusters = kv_u64(&kv, "clusters");
			mi.bytes = kv_u64(&kv, "bytes");
			mi.usec = kv_u64(&kv, "usec");
			mi.stall_us = kv_u64(&kv, "stall_us");
			print_merge(guid, &mi);
		}
		kv_free(&kv);
		if (rc != EXIT_DAEMON_CLOSED)
			return rc;
	}
	/* Not mounted: the same engine, run here (it takes the lock).  No
	 * view is open without a daemon: @force changes nothing. */
	ret = pf_stack_open(&so, &s, &why);
	if (ret) {
		err_line(dir, "%s", why.msg[0] ? why.msg : strerror(-ret));
		return ret == -EBUSY ? EXIT_BUSY : exit_for(ret);
	}
	ret = pf_stack_delete_snapshot(s, guid, PF_STACK_DELETE_FORCE, &mi,
				       &why);
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

/*
 * The snapshot of @dir whose delete was interrupted (marked temporary)
 * into @guid, "" if none.  Returns an exit status.
 */
static int interrupted_delete(const char *dir, char guid[PF_GUID_LEN + 1])
{
	struct image im;
	size_t i;
	int rc;

	guid[0] = '\0';
	/* the descriptor is read without a lock: the engine re-checks */
	rc = image_open(&im, dir, 0, false);
	if (rc == EXIT_OK)
		for (i = 0; i < im.dd->n_shots; i++)
			if (im.dd->shots[i].temporary) {
				snprintf(guid, PF_GUID_LEN + 1, "%s",
					 im.dd->shots[i].guid);
				break;
			}
	image_close(&im);
	return rc;
}

static void usage_snapshot_delete(FILE *out)
{
	fprintf(out, "usage: ploopctl snapshot-delete [--force] [--timeout <s>] <dir> <guid>\n"
		     "       ploopctl snapshot-delete --resume [--timeout <s>] <dir>\n"
		     "  --force         delete it even while its view (MNT/snapshots/<guid>)\n"
		     "                  is open: reads through the view then fail\n"
		     "  --resume        complete a delete that was interrupted (a snapshot\n"
		     "                  marked temporary); nothing to do is no error\n"
		     "  --timeout <s>   a mounted image's daemon must not be silent for <s>\n"
		     "                  seconds (default %d; 0: no limit); a merge that goes\n"
		     "                  on may take longer\n",
		CTL_TIMEOUT_DEFAULT);
}

static int cmd_snapshot_delete(int argc, char **argv)
{
	bool force = false, resume = false;
	const struct cmd_opt opts[] = {
		{ "force", OPT_KEY_LONG, OPT_FLAG, &force },
		{ "resume", OPT_KEY_LONG + 1, OPT_FLAG, &resume },
		OPT_TIMEOUT,
	};
	char guid[PF_GUID_LEN + 1];
	int rc = parse_args(argc, argv, opts, PF_ARRAY_SIZE(opts),
			    usage_snapshot_delete, 1, 2);

	if (rc >= 0)
		return rc;
	if (resume) {
		if (optind + 1 != argc || force) {
			usage_snapshot_delete(stderr);
			return EXIT_USAGE;
		}
		rc = interrupted_delete(argv[optind], guid);
		if (rc != EXIT_OK)
			return rc;
		if (!guid[0]) {
			printf("nothing to resume: no snapshot delete was interrupted\n");
			return EXIT_OK;
		}
		printf("completing the interrupted delete of snapshot %s\n",
		       guid);
		return delete_snapshot(argv[optind], guid, false);
	}
	if (optind + 2 != argc) {
		usage_snapshot_delete(stderr);
		return EXIT_USAGE;
	}
	if (guid_arg(argv[optind + 1], guid) != EXIT_OK)
		return EXIT_USAGE;
	return delete_snapshot(argv[optind], guid, force);
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
	char pguid[PF_GUID_LEN + 1] = "", given[PF_GUID_LEN + 1];
	const struct cmd_opt opts[] = { OPT_TIMEOUT };
	struct image im;
	size_t i;
	int rc;

	rc = parse_args(argc, argv, opts, 1, usage_snapshot_merge, 1, 2);
	if (rc >= 0)
		return rc;
	if (optind + 2 == argc) {
		if (guid_arg(argv[optind + 1], given) != EXIT_OK)
			return EXIT_USAGE;
		guid = given;
	}
	rc = refuse_if_read_only(argv[optind]);
	if (rc != EXIT_OK)
		return rc;
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
	return delete_snapshot(argv[optind], pguid, false);
}

const struct command snap_commands[] = {
	{ "snapshot", cmd_snapshot, "take a snapshot (new empty top delta)" },
	{ "snapshot-list", cmd_snapshot_list, "list the snapshots of an image" },
	{ "snapshot-delete", cmd_snapshot_delete, "delete a snapshot, merging its data into its child" },
	{ "snapshot-merge", cmd_snapshot_merge, "merge a delta into its parent (default: the top)" },
	{ "snapshot-switch", cmd_snapshot_switch, "discard the top and go on from a snapshot" },
	{ NULL, NULL, NULL },
};
