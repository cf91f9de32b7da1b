// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ploopctl checksum and verify: content digests of a disk, of a
 * snapshot or of a raw file (sum.h), and the manifests of sealed deltas
 * (manifest.h).
 *
 * An image that is not mounted is read from its deltas, under the
 * directory's shared lock, so no offline command changes it meanwhile.
 * A mounted one is read through its daemon: the disk file, or the view
 * of the snapshot, whose open handle keeps the snapshot from being
 * deleted under the reader; SEEK_DATA skips what no delta holds.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "cli.h"
#include "csum.h"
#include "image.h"
#include "manifest.h"
#include "ploopctl_i.h"
#include "sum.h"

/* Progress on stderr */

struct progress {
	bool on;
	const char *what;
	struct timespec last;
	bool shown;
};

/* The progress line on the terminal, cleared before a line goes to
 * stdout (which may be the same terminal). */
static struct progress *shown_progress;

static void progress_cb(void *ctx, uint64_t done, uint64_t total)
{
	struct progress *p = ctx;
	struct timespec now;
	char a[32], b[32];

	if (!p->on)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (done < total && p->shown &&
	    (now.tv_sec - p->last.tv_sec) * 1000 +
			    (now.tv_nsec - p->last.tv_nsec) / 1000000 < 250)
		return;
	p->last = now;
	p->shown = true;
	shown_progress = p;
	fprintf(stderr, "\r%s: %3u%% (%s of %s)   ", p->what,
		total ? (unsigned)(done * 100 / total) : 100,
		pf_fmt_size(done, a, sizeof(a)), pf_fmt_size(total, b, sizeof(b)));
	fflush(stderr);
}

static void progress_clear(void)
{
	struct progress *p = shown_progress;

	if (p && p->shown) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
		p->shown = false;
	}
}

static void progress_end(struct progress *p)
{
	if (p->on && p->shown)
		fputc('\n', stderr);
	p->shown = false;
	if (shown_progress == p)
		shown_progress = NULL;
}

/* Options shared by checksum and verify */

/* --threads: 1 to PF_SUM_THREADS_MAX.  Prints the error; 0 or -1. */
static int parse_threads(const char *cmd, const char *s, unsigned *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = s ? strtoul(s, &end, 10) : 0;
	if (!s)
		return 0;
	if (errno || end == s || *end || v < 1 || v > PF_SUM_THREADS_MAX) {
		fprintf(stderr, "ploopctl %s: --threads takes 1 to %d, not '%s'\n",
			cmd, PF_SUM_THREADS_MAX, s);
		return -1;
	}
	*out = (unsigned)v;
	return 0;
}

/* The algorithm named @name.  Prints the error; an exit status. */
static int get_alg(const char *cmd, const char *name, struct pf_csum_alg **a)
{
	struct pf_why why = { "" };
	int ret = pf_csum_alg_get(name ? name : PF_CSUM_DEFAULT, a, &why);

	if (ret == -ENOMEM) {
		err_line(NULL, "out of memory");
		return EXIT_FAIL;
	}
	if (ret) {
		fprintf(stderr, "ploopctl %s: --algorithm: %s\n", cmd, why.msg);
		return EXIT_USAGE;
	}
	return EXIT_OK;
}

/* checksum */

static void usage_checksum(FILE *out)
{
	fprintf(out,
		"usage: ploopctl checksum [<options>] <dir> | --file <raw-file>\n"
		"  the block digest of the disk's content (sparse-aware; the same\n"
		"  whatever the deltas and cluster size, and for a raw copy)\n"
		"  --snapshot <guid>   of snapshot <guid> instead of the disk\n"
		"  --raw               the plain digest of every byte, as sha256sum\n"
		"                      of the raw disk gives\n"
		"  --algorithm <name>  any digest OpenSSL knows (default sha256)\n"
		"  --file <raw-file>   a raw image file or block device\n"
		"  --threads <n>       readers and hashers (default: one per CPU)\n"
		"  --progress          progress on stderr (the default on a terminal)\n"
		"  --json              machine-readable output\n");
}

struct sum_req {
	const char *snapshot, *alg_name, *file, *threads;
	bool raw, progress, json;
};

/* Open @path for reading, as a regular file or block device, O_DIRECT
 * where it takes it; its size into *@size.  Prints the error. */
static int open_raw(const char *path, int *fd_out, uint64_t *size)
{
	struct stat st;
	int fd, fl;

	*fd_out = -1;
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		err_line(path, "%s", strerror(errno));
		return EXIT_FAIL;
	}
	if (fstat(fd, &st) < 0) {
		err_line(path, "%s", strerror(errno));
		close(fd);
		return EXIT_FAIL;
	}
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, size) < 0) {
			err_line(path, "cannot get the size: %s", strerror(errno));
			close(fd);
			return EXIT_FAIL;
		}
	} else if (S_ISREG(st.st_mode)) {
		*size = (uint64_t)st.st_size;
	} else {
		err_line(path, "is not a regular file or block device");
		close(fd);
		return EXIT_CORRUPT;
	}
	fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && fcntl(fd, F_SETFL, (fl & ~O_NONBLOCK) | O_DIRECT) < 0)
		(void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	*fd_out = fd;
	return EXIT_OK;
}

static void print_sum(const struct sum_req *q, const struct pf_csum_alg *a,
		      const uint8_t *md, const char *what, const char *guid,
		      uint64_t size)
{
	char hex[2 * PF_CSUM_MAX + 1];

	pf_csum_hex(md, pf_csum_alg_size(a), hex);
	if (!q->json) {
		printf("%s  %s\n", hex, what);
		return;
	}
	printf("{\"path\":");
	json_str(stdout, what);
	printf(",\"snapshot\":");
	if (guid)
		json_str(stdout, guid);
	else
		printf("null");
	printf(",\"algorithm\":");
	json_str(stdout, pf_csum_alg_name(a));
	printf(",\"kind\":\"%s\"", q->raw ? "raw" : "block");
	if (!q->raw)
		printf(",\"block_size\":%u", PF_BLK_BLOCK);
	printf(",\"size\":%" PRIu64 ",\"digest\":\"%s\"}\n", size, hex);
}

static int run_sum(const struct sum_req *q, const struct pf_sum_src *src,
		   const struct pf_sum_opts *o, const char *name, uint8_t *md)
{
	struct pf_why why = { "" };
	struct progress p = { .what = "checksum" };
	struct pf_sum_opts ro = *o;
	int ret;

	p.on = q->progress || isatty(STDERR_FILENO);
	ro.progress = progress_cb;
	ro.ctx = &p;
	ret = q->raw ? pf_sum_raw(src, &ro, md, &why) :
		       pf_sum_blk(src, &ro, md, &why);
	progress_end(&p);
	if (ret) {
		err_line(name, "%s", why.msg[0] ? why.msg : strerror(-ret));
		return EXIT_FAIL;
	}
	return EXIT_OK;
}

/* The raw file @path (--file, or the disk or a view of a mount). */
static int sum_file(const struct sum_req *q, const struct pf_sum_opts *o,
		    const char *path, const char *what, const char *guid)
{
	uint8_t md[PF_CSUM_MAX];
	struct pf_sum_src src = { .fd = -1 };
	int rc;

	rc = open_raw(path, &src.fd, &src.size);
	if (rc == EXIT_OK)
		rc = run_sum(q, &src, o, path, md);
	if (rc == EXIT_OK)
		print_sum(q, o->alg, md, what, guid, src.size);
	if (src.fd >= 0)
		close(src.fd);
	return rc;
}

/* A mounted image: through the daemon's disk file or snapshot view. */
static int sum_mounted(const struct sum_req *q, const struct pf_sum_opts *o,
		       const char *dir, int fd, const char *guid)
{
	const char *argv[] = { "status" };
	struct kv kv = { 0 };
	const char *disk;
	char *path = NULL, *tmp = NULL;
	int rc;

	rc = daemon_call(fd, dir, 1, argv, kv_add, &kv);
	if (rc != EXIT_OK)
		goto out;
	disk = kv_get(&kv, "mounted");
	if (!disk) {
		err_line(dir, "the daemon did not say where the disk is");
		rc = EXIT_FAIL;
		goto out;
	}
	if (!guid) {
		rc = sum_file(q, o, disk, dir, NULL);
		goto out;
	}
	tmp = strdup(disk);
	if (!tmp || asprintf(&path, "%s/snapshots/%.36s", dirname(tmp),
			     guid + 1) < 0) {
		path = NULL;
		err_line(NULL, "out of memory");
		rc = EXIT_FAIL;
		goto out;
	}
	if (access(path, F_OK) < 0 && errno == ENOENT) {
		err_line(dir, "no snapshot %s in the mounted image (the top and a snapshot being deleted have no view)",
			 guid);
		rc = EXIT_FAIL;
		goto out;
	}
	rc = sum_file(q, o, path, dir, guid);
out:
	free(path);
	free(tmp);
	kv_free(&kv);
	return rc;
}

/* An image that is not mounted: its deltas. */
static int sum_offline(const struct sum_req *q, const struct pf_sum_opts *o,
		       const char *arg, const char *guid)
{
	struct pf_why why = { "" };
	struct pf_delta **v = NULL;
	uint8_t md[PF_CSUM_MAX];
	struct image im;
	size_t n = 0, i;
	int rc, ret;

	rc = image_open(&im, arg, 1, true);
	if (rc != EXIT_OK)
		goto out;
	if (guid) {
		if (!im.is_dir) {
			err_line(arg, "--snapshot needs an image directory");
			rc = EXIT_USAGE;
			goto out;
		}
		if (!strcmp(guid, im.dd->top_guid)) {
			err_line(arg, "%s is the top delta, not a snapshot", guid);
			rc = EXIT_FAIL;
			goto out;
		}
		free(im.chain);
		im.chain = NULL;
		ret = pf_dd_chain_of(im.dd, guid, &im.chain, &im.depth, &why);
		if (ret) {
			err_line(arg, "%s", why.msg);
			rc = ret == -ENOENT ? EXIT_FAIL : EXIT_CORRUPT;
			goto out;
		}
	}
	rc = chain_open(&im, true, &v, &n);
	if (rc != EXIT_OK)
		goto out;
	for (i = 0; i < n; i++)
		(void)pf_delta_direct(v[i], 4096);
	{
		struct pf_sum_src src = { .chain = v, .n = n, .fd = -1,
					  .size = v[n - 1]->hdr.size_bytes };

		rc = run_sum(q, &src, o, arg, md);
		if (rc == EXIT_OK)
			print_sum(q, o->alg, md, arg, guid, src.size);
	}
out:
	deltas_close(v, n);
	image_close(&im);
	return rc;
}

static int cmd_checksum(int argc, char **argv)
{
	struct sum_req q = { 0 };
	const struct cmd_opt opts[] = {
		{ "snapshot", 's', OPT_ARG, &q.snapshot },
		{ "raw", 'r', OPT_FLAG, &q.raw },
		{ "algorithm", 'a', OPT_ARG, &q.alg_name },
		{ "file", 'f', OPT_ARG, &q.file },
		{ "threads", OPT_KEY_LONG + 1, OPT_ARG, &q.threads },
		{ "progress", OPT_KEY_LONG + 2, OPT_FLAG, &q.progress },
		{ "json", 'j', OPT_FLAG, &q.json },
	};
	struct pf_sum_opts o = { 0 };
	struct pf_csum_alg *alg = NULL;
	char guid[PF_GUID_LEN + 1] = "";
	struct pf_mount_ent *mv = NULL;
	const struct pf_mount_ent *me = NULL;
	size_t mn = 0;
	int rc, fd = -1;

	rc = parse_args(argc, argv, opts, PF_ARRAY_SIZE(opts), usage_checksum,
			0, 1);
	if (rc >= 0)
		return rc;
	if ((q.file != NULL) == (optind < argc)) {
		fprintf(stderr, "ploopctl checksum: give either an image directory or --file <raw-file> (see ploopctl checksum --help)\n");
		return EXIT_USAGE;
	}
	if (q.file && q.snapshot) {
		fprintf(stderr, "ploopctl checksum: --snapshot is for an image directory, not --file\n");
		return EXIT_USAGE;
	}
	if (q.snapshot && pf_guid_canon(q.snapshot, guid)) {
		fprintf(stderr, "ploopctl checksum: --snapshot: '%.64s' is not a GUID\n",
			q.snapshot);
		return EXIT_USAGE;
	}
	if (parse_threads("checksum", q.threads, &o.threads))
		return EXIT_USAGE;
	rc = get_alg("checksum", q.alg_name, &alg);
	if (rc != EXIT_OK)
		return rc;
	o.alg = alg;
	if (q.file) {
		rc = sum_file(&q, &o, q.file, q.file, NULL);
		goto out;
	}
	/* mounted: through the daemon; else the files */
	if (mount_lookup(argv[optind], true, false, &mv, &mn, &me) == 0 && me) {
		rc = daemon_of(argv[optind], &fd);
		if (rc != EXIT_OK)
			goto out;
	}
	/* sum_mounted's call closes fd; a daemon that began closing the
	 * image before it answered has closed it: read the files */
	if (fd >= 0)
		rc = sum_mounted(&q, &o, argv[optind], fd, guid[0] ? guid : NULL);
	if (fd < 0 || rc == EXIT_DAEMON_CLOSED)
		rc = sum_offline(&q, &o, argv[optind], guid[0] ? guid : NULL);
out:
	pf_mounts_free(mv, mn);
	pf_csum_alg_free(alg);
	return rc;
}

/* verify */

static void usage_verify(FILE *out)
{
	fprintf(out,
		"usage: ploopctl verify [<options>] <dir>\n"
		"  re-read every sealed (read-only) delta and compare it with its\n"
		"  manifest; a read-only delta without one is sealed now\n"
		"  --algorithm <name>  digest for deltas sealed now (default sha256)\n"
		"  --threads <n>       readers and hashers (default: one per CPU)\n"
		"  --progress          progress on stderr (the default on a terminal)\n"
		"  --json              machine-readable output\n");
}

/* How many bad clusters of one delta are listed (all are counted). */
#define VERIFY_LIST_MAX	100

/* One delta's result, as verify prints it (offline, or from the
 * daemon's lines). */
struct vdelta {
	const char *guid, *file;
	const char *state;	/* ok sealed mismatch damaged corrupt top
				 * deleting failed unsealed */
	uint64_t clusters, problems;
	const char *note;	/* why, for damaged, corrupt, failed */
};

struct vout {
	bool json;
	unsigned n;		/* deltas printed */
	unsigned bad_listed;	/* of the current delta */
	uint32_t cluster_bytes;
	const char *file;	/* of the current delta */
	const char *dir;	/* for vout_begin() */
	bool begun;		/* vout_begin() printed */
	unsigned count[9];
	bool in_delta;		/* JSON: a delta object is open */
};

static const char *const vstates[] = { "ok",	     "sealed",	 "mismatch",
				       "damaged",    "corrupt",	 "top",
				       "deleting",   "failed",	 "unsealed" };

/* The index of @st in vstates; an unknown one (a newer daemon's) counts
 * as failed. */
static unsigned vstate_idx(const char *st)
{
	unsigned i;

	for (i = 0; i < PF_ARRAY_SIZE(vstates); i++)
		if (!strcmp(st, vstates[i]))
			return i;
	return 7;
}

static void vout_begin(struct vout *o, const char *dir)
{
	if (o->begun)
		return;
	o->begun = true;
	if (o->json) {
		printf("{\"path\":");
		json_str(stdout, dir);
		printf(",\"deltas\":[");
	}
}

/* The problems of a delta come before its summary line (they are found
 * first): text prints them as they come, JSON collects them into the
 * delta's object, opened at the first. */
static void vout_bad(struct vout *o, uint32_t vclu, const char *problem)
{
	uint64_t off = (uint64_t)vclu * o->cluster_bytes;

	if (o->bad_listed++ >= VERIFY_LIST_MAX)
		return;
	progress_clear();
	if (o->json) {
		printf("%s{\"cluster\":%" PRIu32 ",\"offset\":%" PRIu64
		       ",\"problem\":",
		       o->bad_listed > 1 ? "," : "", vclu, off);
		json_str(stdout, problem);
		putchar('}');
	} else {
		printf("%s: virtual cluster %" PRIu32 " (disk bytes %" PRIu64
		       "-%" PRIu64 "): %s\n",
		       o->file, vclu, off, off + o->cluster_bytes - 1, problem);
	}
}

static void vout_bad_open(struct vout *o)
{
	vout_begin(o, o->dir);
	if (o->json && !o->in_delta) {
		printf("%s{\"bad\":[", o->n ? "," : "");
		o->in_delta = true;
	}
}

static void vout_delta(struct vout *o, const struct vdelta *d)
{
	vout_begin(o, o->dir);
	o->count[vstate_idx(d->state)]++;
	progress_clear();
	if (o->json) {
		if (!o->in_delta)
			printf("%s{\"bad\":[", o->n ? "," : "");
		printf("],\"guid\":");
		json_str(stdout, d->guid);
		printf(",\"file\":");
		json_str(stdout, d->file);
		printf(",\"state\":");
		json_str(stdout, d->state);
		printf(",\"clusters\":%" PRIu64 ",\"problems\":%" PRIu64
		       ",\"note\":",
		       d->clusters, d->problems);
		if (d->note)
			json_str(stdout, d->note);
		else
			printf("null");
		putchar('}');
	} else {
		static const char *const says[] = {
			"ok", "sealed now", "MISMATCH", "MANIFEST DAMAGED",
			"DELTA CORRUPT", "live top: not verified (it changes)",
			"being deleted: not verified", "FAILED",
			"unsealed: not verified"
		};

		printf("%s %s: %s", d->guid, d->file,
		       says[vstate_idx(d->state)]);
		if (!strcmp(d->state, "ok") || !strcmp(d->state, "sealed"))
			printf(" (%" PRIu64 " clusters)", d->clusters);
		if (!strcmp(d->state, "mismatch"))
			printf(" (%" PRIu64 " bad cluster%s of %" PRIu64 "%s)",
			       d->problems, d->problems == 1 ? "" : "s",
			       d->clusters,
			       d->problems > VERIFY_LIST_MAX ?
				       ", the first 100 listed" : "");
		if (d->note)
			printf(": %s", d->note);
		putchar('\n');
	}
	o->n++;
	o->bad_listed = 0;
	o->in_delta = false;
}

/* The exit status of what was printed. */
static int vout_end(struct vout *o)
{
	unsigned *c = o->count;
	bool bad = c[vstate_idx("mismatch")] || c[vstate_idx("damaged")] ||
		   c[vstate_idx("corrupt")];

	if (o->json)
		printf("],\"ok\":%s}\n",
		       bad || c[vstate_idx("failed")] ? "false" : "true");
	else
		printf("verify: %u ok, %u sealed now, %u mismatch, %u damaged or corrupt, %u failed, %u not verified\n",
		       c[0], c[1], c[2], c[3] + c[4], c[7], c[5] + c[6] + c[8]);
	return bad ? EXIT_MISMATCH : c[vstate_idx("failed")] ? EXIT_FAIL :
							      EXIT_OK;
}

struct vone {
	struct vout *o;
};

static void offline_bad(void *ctx, uint32_t vclu, enum pf_mf_problem p)
{
	struct vone *v = ctx;

	vout_bad_open(v->o);
	vout_bad(v->o, vclu, pf_mf_problem_name(p));
}

static void first_corrupt(void *ctx, const char *file, enum pf_finding kind,
			  const char *msg)
{
	char *first = ctx;

	(void)file;
	if (kind == PF_FIND_CORRUPT && !first[0])
		snprintf(first, 200, "%s", msg);
}

/* Verify (or seal) delta @idx of the image offline. */
static void verify_one(struct image *im, size_t idx, const struct pf_sum_opts *o,
		       struct vout *out)
{
	const struct pf_dd_image *img = &im->dd->images[idx];
	const struct pf_dd_shot *shot = pf_dd_find_shot(im->dd, img->guid);
	struct vdelta r = { .guid = img->guid, .file = img->file };
	struct pf_why why = { "" };
	struct pf_delta **v = NULL;
	char first[200] = "";
	struct pf_check_report cr = { .emit = first_corrupt, .ctx = first };
	struct vone one = { .o = out };
	enum pf_mf_state st;
	int ret;

	if (!strcmp(img->guid, im->dd->top_guid)) {
		r.state = "top";
		vout_delta(out, &r);
		return;
	}
	if (shot && shot->temporary) {
		r.state = "deleting";
		r.note = "ploopctl snapshot-delete --resume finishes the delete";
		vout_delta(out, &r);
		return;
	}
	ret = pf_image_open_chain(im->dirfd, im->dd, &idx, 1, 0, false, NULL,
				  &v, &why);
	if (!ret && pf_check_delta(v[0], &cr) < 0)
		ret = pf_why_set(&why, -ENOMEM, "out of memory");
	if (ret) {
		r.state = "failed";
		r.note = why.msg;
		vout_delta(out, &r);
		return;
	}
	if (first[0]) {
		r.state = "corrupt";
		r.note = first;
		vout_delta(out, &r);
		pf_image_close_chain(v, 1);
		return;
	}
	(void)pf_delta_direct(v[0], 4096);
	out->cluster_bytes = v[0]->hdr.cluster_bytes;
	out->file = img->file;
	ret = pf_manifest_check(im->dirfd, v[0], img->file, img->guid, true, o,
				offline_bad, &one, &st, &r.clusters, &why);
	pf_image_close_chain(v, 1);
	if (ret) {
		r.state = "failed";
		r.note = why.msg;
	} else {
		static const char *const names[] = {
			[PF_MF_OK] = "ok", [PF_MF_SEALED_NOW] = "sealed",
			[PF_MF_MISMATCH] = "mismatch",
			[PF_MF_DAMAGED] = "damaged",
			[PF_MF_UNSEALED] = "unsealed",
		};

		r.state = names[st];
		r.problems = out->bad_listed;
		if (st == PF_MF_DAMAGED)
			r.note = why.msg;
	}
	vout_delta(out, &r);
}

static int verify_offline(const char *dir, const struct pf_sum_opts *o, bool json)
{
	struct vout out = { .json = json, .dir = dir };
	struct image im;
	size_t i;
	int rc;

	/* exclusive: verify may seal (write manifests) */
	rc = image_open(&im, dir, 2, false);
	if (rc != EXIT_OK) {
		image_close(&im);
		return rc;
	}
	vout_begin(&out, dir);
	for (i = 0; i < im.dd->n_images; i++)
		verify_one(&im, i, o, &out);
	rc = vout_end(&out);
	image_close(&im);
	return rc;
}

/* The daemon's verify lines (serve.c), into the same output. */
struct vonline {
	struct vout *o;
	char guid[PF_GUID_LEN + 1];
	char file[256];
	char note[256];
	uint64_t problems;
};

/* The next space-separated word of *@p into @out (@size bytes): false
 * if there is none or it does not fit.  *@p moves past it and the
 * spaces after it. */
static bool word(const char **p, char *out, size_t size)
{
	size_t n = strcspn(*p, " ");

	if (!n || n >= size)
		return false;
	memcpy(out, *p, n);
	out[n] = '\0';
	*p += n;
	*p += strspn(*p, " ");
	return true;
}

/* The next word as a decimal number of at most @max. */
static bool number(const char **p, uint64_t max, uint64_t *out)
{
	char w[24], *end;

	if (!word(p, w, sizeof(w)) || w[0] < '0' || w[0] > '9')
		return false;
	errno = 0;
	*out = strtoull(w, &end, 10);
	return !errno && !*end && *out <= max;
}

static int verify_line(void *ctx, const char *line)
{
	struct vonline *v = ctx;
	struct vdelta d = { 0 };
	char key[16], guid[PF_GUID_LEN + 1], state[16];
	const char *p = line;
	uint64_t n;

	/* lines a newer daemon adds, or malformed ones, are skipped */
	if (!word(&p, key, sizeof(key)))
		return 0;
	if (!strcmp(key, "cluster") && number(&p, UINT32_MAX, &n)) {
		v->o->cluster_bytes = (uint32_t)n;
	} else if (!strcmp(key, "level") && word(&p, v->guid, sizeof(v->guid))) {
		snprintf(v->file, sizeof(v->file), "%s", p);
		v->o->file = v->file;
		v->note[0] = '\0';
		v->problems = 0;
	} else if (!strcmp(key, "bad") && word(&p, guid, sizeof(guid)) &&
		   number(&p, UINT32_MAX, &n)) {
		v->problems++;
		vout_bad_open(v->o);
		vout_bad(v->o, (uint32_t)n, p);
	} else if (!strcmp(key, "note") && word(&p, guid, sizeof(guid))) {
		snprintf(v->note, sizeof(v->note), "%s", p);
	} else if (!strcmp(key, "verified") && word(&p, guid, sizeof(guid)) &&
		   word(&p, state, sizeof(state)) &&
		   number(&p, UINT64_MAX, &n)) {
		d.guid = guid;
		d.file = p;
		d.state = state;
		d.clusters = n;
		d.problems = v->problems;
		d.note = v->note[0] ? v->note : NULL;
		vout_delta(v->o, &d);
		v->note[0] = '\0';
		v->problems = 0;
	}
	return 0;
}

static int verify_online(const char *dir, int fd, bool json)
{
	const char *argv[] = { "verify" };
	struct vout out = { .json = json, .dir = dir };
	struct vonline v = { .o = &out };
	int rc;

	rc = daemon_call(fd, dir, 1, argv, verify_line, &v);
	if (rc == EXIT_DAEMON_CLOSED && !out.begun)
		return rc;	/* nothing printed: the caller reads the files */
	if (rc != EXIT_OK) {
		if (json && out.begun)	/* a document that parses */
			printf("%s],\"ok\":false}\n", out.in_delta ? "]}" : "");
		return rc == EXIT_DAEMON_CLOSED ? EXIT_FAIL : rc;
	}
	vout_begin(&out, dir);
	return vout_end(&out);
}

static int cmd_verify(int argc, char **argv)
{
	const char *alg_name = NULL, *threads = NULL;
	bool json = false, progress = false;
	const struct cmd_opt opts[] = {
		{ "algorithm", 'a', OPT_ARG, &alg_name },
		{ "threads", OPT_KEY_LONG + 1, OPT_ARG, &threads },
		{ "progress", OPT_KEY_LONG + 2, OPT_FLAG, &progress },
		{ "json", 'j', OPT_FLAG, &json },
	};
	struct progress p = { .what = "verify" };
	struct pf_sum_opts o = { 0 };
	struct pf_csum_alg *alg = NULL;
	int rc, fd = -1;

	rc = parse_args(argc, argv, opts, PF_ARRAY_SIZE(opts), usage_verify,
			1, 1);
	if (rc >= 0)
		return rc;
	if (parse_threads("verify", threads, &o.threads))
		return EXIT_USAGE;
	rc = get_alg("verify", alg_name, &alg);
	if (rc != EXIT_OK)
		return rc;
	o.alg = alg;
	p.on = progress || isatty(STDERR_FILENO);
	o.progress = progress_cb;
	o.ctx = &p;
	/* mounted: the daemon verifies (and seals with its algorithm) */
	rc = daemon_of(argv[optind], &fd);
	if (rc == EXIT_OK && fd >= 0) {
		rc = verify_online(argv[optind], fd, json);	/* closes fd */
		if (rc != EXIT_DAEMON_CLOSED)
			goto out;
	}
	if (rc == EXIT_OK || rc == EXIT_DAEMON_CLOSED)
		rc = verify_offline(argv[optind], &o, json);
out:
	progress_end(&p);
	pf_csum_alg_free(alg);
	return rc;
}

const struct command sum_commands[] = {
	{ "checksum", cmd_checksum,
	  "digest of the disk's content, of a snapshot or of a raw file" },
	{ "verify", cmd_verify,
	  "re-read the sealed snapshots and compare them with their manifests" },
	{ NULL, NULL, NULL },
};
