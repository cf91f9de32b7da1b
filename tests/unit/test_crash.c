// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Crash simulation: seeded random scenarios of writes (sub-cluster and
 * whole-cluster, over snapshot data, and bursts of writes in flight
 * together, some with a flush called while they are), punches, flushes,
 * online snapshots and snapshot deletes against an image whose delta
 * files are crash-simulating (io_crash.h), cut by a power failure.  The
 * stack runs as the daemon runs it: started (libaio and its completion
 * thread, the writeback thread), O_DIRECT where the host allows it, and
 * the crash-simulating files take their asynchronous requests through
 * the production engine (pf_aio_submit).  The power goes
 *   - at a random mutating I/O operation (a countdown in the crash
 *     world): the random mode;
 *   - or exactly at the k-th pass of a named crash point, a boundary
 *     between two steps of the stack's update sequences (commit,
 *     allocation, copy-on-write, discard, snapshot switch, merge down and
 *     up, close, recovery at open; pf_stack_crash_points(), listed with
 *     what each proves in HACKING "Crash points"): the crash-point mode.
 *     The stack calls the hook of pf_stack_opts.crash_point after each
 *     step; when the point and the hit number match, the hook cuts the
 *     power.  The scenario's mix is steered towards the point (snapshots
 *     for snap.*, deletes with a read-only child for merge-down.*, ...);
 *     a run that passes the point fewer than k times is cut at its end
 *     and counted as not reached.
 * The image is then reopened as after a power cut and an oracle checks
 * every sector of the clusters the scenario touched:
 *   - it holds a value it may legally hold: the value the last completed
 *     flush made durable, or a value written after that flush (a punch
 *     writes zeros);
 *   - never garbage, never another sector's data, never lower-delta data
 *     that was overwritten before the last flush, never data a durable
 *     punch removed.
 * Every snapshot still in the stack must read, through its read-only
 * view, exactly what was durable when it was taken.  Then no delta may be
 * corrupt and the chain must stack (leaks are allowed), and the recovered
 * image must close cleanly.  Snapshots and deletes change no data, so the
 * oracle's rules stay; a snapshot and an up merge commit the top, so what
 * was written before them counts as flushed once they succeed (also
 * when they return after the cut: every I/O after it fails, so success
 * means what they needed was done before it, e.g. a flush cut at
 * commit.bat-synced).  A down merge the power cut interrupted leaves its
 * snapshot <Temporary/>; after recovery it is completed by deleting it
 * again and the oracle checks once more.
 *
 * The image at the power cut.  At the instant of the crash (inside
 * crash_now(), called by the countdown or by the hook in the thread that
 * finished the step) the world applies the kept part of every volatile
 * cache and calls photograph(), which copies the image directory (holes
 * kept) to <dir>.crash.  All checks run on a copy of that photograph,
 * never on the directory the stack was using.  So after the power cut
 * nothing more reaches the checked image: not delta I/O (which fails with
 * EIO from then on anyway), and not what the stack goes on to do with
 * real system calls -- the DiskDescriptor.xml tmp file and its rename, a
 * new delta (pf_delta_create), the unlink of a merged delta.  The hook
 * takes the photograph before it returns, so the stricken sequence cannot
 * reach its next system call first.  The other threads (libaio's
 * completion thread, the writeback thread, a merge's copy workers) do
 * delta I/O only, which blocks on the world's lock while the photograph
 * is taken and fails afterwards; when one of them cuts the power (the
 * countdown ends at a write's completion), the scenario's thread may be
 * between two real system calls, each durable when it returns: that is
 * a legal power-cut state too.  The stricken stack then runs on with
 * every I/O failing, is closed, and its directory is thrown away.
 * Parking the stricken thread and recovering the live directory beside
 * the still-open stack was the alternative: that stack holds the image's
 * exclusive flock (a second open gets -EBUSY), and whatever it did after
 * being released would land on the image under check; a copy needs no
 * lock games and cannot be touched.
 *
 * Second power cuts, during a recovery.  Crash points of the recovery at
 * open (open.*) are reached so: the random run is cut by the countdown
 * (or at its end, for open.leak-punched), the photograph is opened
 * through a second crash world, and the power goes at the named step of
 * that recovery.  A down merge cut at a merge-down.* point is completed
 * (complete_merges()) through a second crash world too, and cut at the
 * same point again.  The second photograph, <dir>.crash2, is the one
 * checked; recovery and completion change no data, so the oracle stays.
 *
 * Limitation: only delta contents are crash-simulated.  DiskDescriptor.xml
 * (tmp, fsync, rename, directory fsync) and new delta files are written
 * with real system calls: each such step is durable the moment it
 * returns, never torn, never lost, never reordered with the delta I/O
 * around it.  The crash points cut the power between those steps, but
 * not inside them; the order of their own system calls is covered by the
 * W6 tests.  Punch always works on the crash files, so discard's
 * zero-write fallback is not exercised.  Commits run
 * where the scenario asks for them (the periodic one is an hour away, to
 * keep runs repeatable), and in-place writes race a flush only in the
 * bursts: a cluster punched and reused before its unmapping commit is
 * durable (against W4) needs a write between a commit's steps, which
 * test_stack's test_w4_write_racing_commit makes at
 * commit.bat-page-written.  A replay is not always exact: libaio
 * completes a burst's writes in any order (and so the crash keeps a
 * different subset), and the k-th pass of a point that a merge's
 * parallel copy workers pass (cow.*, alloc.*) may be another cluster's.
 *
 *   test_crash [-n SCENARIOS] [-s FIRST_SEED] [-v]
 *	the random mode only
 *   test_crash -p POINT [-k HIT] [-n SCENARIOS] [-s FIRST_SEED] [-v]
 *	SCENARIOS seeds, each cut at the HIT-th pass of POINT (default:
 *	a hit number drawn from the seed); fails if none reaches it
 *   test_crash -p all [-n CRASHES] [-s FIRST_SEED] [-v]
 *	for every point, seeds from FIRST_SEED on until CRASHES of them
 *	were cut exactly there (default 3); a point never reached fails
 *   test_crash -l	list the crash points
 *   test_crash		(make check) 200 random scenarios, then -p all
 *
 * A failing scenario prints its seed, point and hit, and the command that
 * replays it; its directories stay in the printed temporary directory
 * (<dir>.crash is the image as the power cut left it).  The TAP output
 * has one line per scenario, one per crash point, and summary lines.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "delta.h"
#include "descriptor.h"
#include "format.h"
#include "image.h"
#include "io_crash.h"
#include "manifest.h"
#include "stack.h"
#include "tap.h"
#include "testutil.h"
#include "util.h"

#define SECTOR		512u
#define HOT_PAIRS	8		/* pairs of adjacent clusters in play */
#define N_HOT		(2 * HOT_PAIRS)
#define OPS		48
#define MAX_STRUCT	4		/* structural operations per scenario */
#define SWEEP_CRASHES	3		/* -p all: exact crashes per point */
#define SWEEP_TRIES	8		/* ... seeds tried per crash wanted */

static const char *prog;
static bool verbose;
static uint64_t n_structural, n_completed;	/* over all scenarios */
static char tmp_root[] = "/tmp/pf-test-crash.XXXXXX";
static const char *const *points;		/* pf_stack_crash_points() */
static size_t n_points;

/* Scenario random numbers (separate from the crash world's). */
static uint64_t rng_state;

static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1Dull;
}

static uint64_t rnd_below(uint64_t n)
{
	return n ? rnd() % n : 0;
}

/* Content of sector @sec written by write @id (0: zeros). */
static void sector_fill(uint8_t *b, uint32_t id, uint64_t sec)
{
	uint64_t x = (uint64_t)id * 0x9E3779B97F4A7C15ull ^ sec;
	size_t i;

	if (!id) {
		memset(b, 0, SECTOR);
		return;
	}
	pf_le64_put(b, id);
	pf_le64_put(b + 8, sec);
	for (i = 16; i < SECTOR; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		b[i] = (uint8_t)x;
	}
}

/* The write id a sector's content says it came from, or -1 (garbage). */
static int64_t sector_id(const uint8_t *b, uint64_t sec)
{
	static const uint8_t zero[SECTOR];
	uint8_t want[SECTOR];
	uint64_t id;

	if (!memcmp(b, zero, SECTOR))
		return 0;
	id = pf_le64_get(b);
	if (!id || id > UINT32_MAX || pf_le64_get(b + 8) != sec)
		return -1;
	sector_fill(want, (uint32_t)id, sec);
	return memcmp(b, want, SECTOR) ? -1 : (int64_t)id;
}

/* Per sector of the hot clusters: what it may legally hold. */
struct sector_state {
	uint32_t durable;	/* value made durable by the last flush */
	uint32_t *since;	/* values written after it (0: a punch) */
	uint32_t n, cap;
};

/* How a crash-point scenario is steered towards its point. */
enum struct_kind { STRUCT_ANY, STRUCT_SNAP, STRUCT_DOWN, STRUCT_UP };

struct steer {
	const char *prefix;	/* points it is for (first match wins) */
	unsigned hist_min;	/* snapshots taken before the run, at least */
	unsigned struct_pct;	/* chance of a structural op per op */
	enum struct_kind kind;
	unsigned punch_pct;	/* chance of an extra whole-cluster punch */
	unsigned flags;		/* F_* */
	unsigned kmax;		/* hit numbers drawn from 1..kmax */
};

#define F_CLOSE		1u	/* close cleanly at the end of the run */
#define F_REOPEN	2u	/* a point of the recovery at a second open */
#define F_LATE		4u	/* ... after a first cut at the run's end */
#define F_AGAIN		8u	/* cut at the point again while completing
				 * the delete the first cut interrupted */

/* A snapshot taken: what its read-only view must hold, exactly. */
struct shot_rec {
	char guid[PF_GUID_LEN + 1];
	uint32_t *want;		/* N_HOT * spc write ids */
};

#define MAX_SHOTS	16

struct scenario {
	char dir[256];
	char photo[300];		/* where the crash copies dir */
	const struct steer *steer;
	uint32_t cluster;
	uint64_t size;
	uint32_t spc;			/* sectors per cluster */
	uint32_t hot[N_HOT];		/* virtual cluster of slot k */
	struct sector_state *st;	/* N_HOT * spc */
	uint32_t next_id;
	unsigned structural;		/* snapshots and deletes done */
	unsigned seal_failed;		/* pf_stack_seal() failures (after a cut) */
	struct shot_rec shots[MAX_SHOTS];
	unsigned n_shots;
	char why[512];
};

static struct sector_state *state_of(struct scenario *sc, uint32_t slot,
				     uint32_t sec_in)
{
	return &sc->st[(size_t)slot * sc->spc + sec_in];
}

static uint64_t slot_sector(const struct scenario *sc, uint32_t slot,
			    uint32_t sec_in)
{
	return (uint64_t)sc->hot[slot] * sc->spc + sec_in;
}

static void note_written(struct sector_state *s, uint32_t id)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 4;
		s->since = realloc(s->since, s->cap * sizeof(*s->since));
		if (!s->since)
			abort();
	}
	s->since[s->n++] = id;
}

/* A flush completed: each sector's last value is now durable. */
static void note_flushed(struct scenario *sc)
{
	size_t i, n = (size_t)N_HOT * sc->spc;

	for (i = 0; i < n; i++)
		if (sc->st[i].n) {
			sc->st[i].durable = sc->st[i].since[sc->st[i].n - 1];
			sc->st[i].n = 0;
		}
}

/* Snapshot @guid was taken (and everything was flushed): its view holds
 * the durable values from now on, whatever happens to the top. */
static void note_snapshot(struct scenario *sc, const char *guid)
{
	size_t i, n = (size_t)N_HOT * sc->spc;
	struct shot_rec *r;

	if (sc->n_shots == MAX_SHOTS)
		return;
	r = &sc->shots[sc->n_shots++];
	snprintf(r->guid, sizeof(r->guid), "%s", guid);
	r->want = malloc(n * sizeof(*r->want));
	if (!r->want)
		abort();
	for (i = 0; i < n; i++)
		r->want[i] = sc->st[i].durable;
}

static bool legal(const struct sector_state *s, int64_t id)
{
	uint32_t i;

	if (id < 0)
		return false;
	if ((uint32_t)id == s->durable)
		return true;
	for (i = 0; i < s->n; i++)
		if (s->since[i] == (uint32_t)id)
			return true;
	return false;
}

/*
 * Write (or punch, @id 0) sectors [@sec0, @sec0 + @n) of slot @slot
 * (which may run into the slot after it: pairs are adjacent clusters).
 * Registers the values before the call: a write that fails because the
 * power went may have reached the disk in part.
 */
static int do_write(struct scenario *sc, struct pf_stack *s, uint32_t slot,
		    uint32_t sec0, uint32_t n, bool punch)
{
	uint32_t id = punch ? 0 : sc->next_id++;
	uint64_t first = slot_sector(sc, slot, sec0);
	uint8_t *buf = NULL;
	uint32_t i;
	int ret;

	for (i = 0; i < n; i++) {
		uint32_t k = slot + (sec0 + i) / sc->spc;

		note_written(state_of(sc, k, (sec0 + i) % sc->spc), id);
	}
	if (punch)
		return pf_stack_discard(s, first * SECTOR, (uint64_t)n * SECTOR);
	if (posix_memalign((void **)&buf, 4096, (size_t)n * SECTOR))
		abort();
	for (i = 0; i < n; i++)
		sector_fill(buf + (size_t)i * SECTOR, id, first + i);
	ret = pf_stack_pwrite(s, buf, (size_t)n * SECTOR, first * SECTOR);
	free(buf);
	return ret;
}

/* A flush called while writes were in flight: what was written before
 * them is durable now; the sectors' first @prior values since the last
 * flush are the ones before them. */
static void note_flushed_before(struct scenario *sc, const uint32_t *prior)
{
	size_t i, n = (size_t)N_HOT * sc->spc;

	for (i = 0; i < n; i++) {
		struct sector_state *st = &sc->st[i];

		if (!prior[i])
			continue;
		st->durable = st->since[prior[i] - 1];
		memmove(st->since, st->since + prior[i],
			(st->n - prior[i]) * sizeof(*st->since));
		st->n -= prior[i];
	}
}

#define BURST_MAX	8

/*
 * Writes in flight together: 2 to 8 pieces in disjoint parts of one
 * pair, submitted as a batch, so that in-place writes go through libaio
 * and complete on its thread in any order.  With @flush, a flush is
 * called while they are in flight: it must make every earlier write
 * durable, and may or may not take these along (W3 says nothing of
 * writes not yet answered).
 */
static int do_burst(struct scenario *sc, struct pf_stack *s, bool flush)
{
	struct tu_burst b;
	uint32_t slot = 2 * (uint32_t)rnd_below(HOT_PAIRS), part, i, j;
	uint32_t m = 2 + (uint32_t)rnd_below(BURST_MAX - 1);
	uint8_t *buf[BURST_MAX] = { NULL };
	uint32_t sec0[BURST_MAX], len[BURST_MAX], *prior = NULL;
	size_t lens[BURST_MAX];
	uint64_t offs[BURST_MAX];
	size_t n_sec = (size_t)N_HOT * sc->spc;
	int fret = 0, ret;

	if (flush) {
		prior = malloc(n_sec * sizeof(*prior));
		if (!prior)
			abort();
		for (i = 0; i < n_sec; i++)
			prior[i] = sc->st[i].n;
	}
	part = 2 * sc->spc / m;
	for (j = 0; j < m; j++) {
		uint32_t id = sc->next_id++;
		uint64_t first;

		sec0[j] = j * part + (uint32_t)rnd_below(part / 2);
		len[j] = 1 + (uint32_t)rnd_below(rnd_below(2) ? 8 : part / 2);
		first = slot_sector(sc, slot, sec0[j]);
		for (i = 0; i < len[j]; i++) {
			uint32_t k = slot + (sec0[j] + i) / sc->spc;

			note_written(state_of(sc, k, (sec0[j] + i) % sc->spc),
				     id);
		}
		if (posix_memalign((void **)&buf[j], 4096,
				   (size_t)len[j] * SECTOR))
			abort();
		for (i = 0; i < len[j]; i++)
			sector_fill(buf[j] + (size_t)i * SECTOR, id, first + i);
		lens[j] = (size_t)len[j] * SECTOR;
		offs[j] = first * SECTOR;
	}
	tu_burst_submit(&b, s, m, buf, lens, offs);
	if (flush) {
		fret = pf_stack_flush(s);
		if (!fret)
			note_flushed_before(sc, prior);
		free(prior);
	}
	ret = tu_burst_wait(&b);
	for (j = 0; j < m; j++)
		free(buf[j]);
	return ret ? ret : fret;
}

/*
 * Steering by point.  The random mode uses the first row's values (the
 * mix the countdown mode always had).  kmax follows how often a run
 * passes the point, so that most drawn hits are reached.
 */
static const struct steer steers[] = {
	/* prefix		hist struct kind    punch flags   kmax */
	{ "",			0,  4, STRUCT_ANY,   0, 0,		1 },
	{ "open.leak-punched",	0,  4, STRUCT_ANY,  20, F_REOPEN | F_LATE, 2 },
	{ "open.",		0,  4, STRUCT_ANY,   0, F_REOPEN,	1 },
	{ "alloc.file-grown",	0,  4, STRUCT_SNAP,  0, 0,		2 },
	{ "alloc.",		0,  4, STRUCT_ANY,   0, 0,		8 },
	{ "cow.",		1,  4, STRUCT_ANY,   0, 0,		4 },
	{ "discard.",		1,  4, STRUCT_ANY,  15, 0,		2 },
	{ "commit.freed-punched", 0, 4, STRUCT_ANY, 15, 0,		2 },
	{ "commit.",		0,  4, STRUCT_ANY,   0, 0,		6 },
	{ "snap.",		0, 10, STRUCT_SNAP,  0, 0,		2 },
	{ "merge-down.bat-page", 2, 10, STRUCT_DOWN, 0, F_AGAIN,	2 },
	{ "merge-down.",	2, 10, STRUCT_DOWN,  0, F_AGAIN,	1 },
	{ "merge-up.",		1, 10, STRUCT_UP,    0, 0,		1 },
	{ "close.",		0,  4, STRUCT_ANY,   0, F_CLOSE,	1 },
};

static const struct steer *steer_for(int point)
{
	size_t i;

	if (point < 0)
		return &steers[0];
	for (i = 1; i < sizeof(steers) / sizeof(steers[0]); i++)
		if (!strncmp(points[point], steers[i].prefix,
			     strlen(steers[i].prefix)))
			return &steers[i];
	return &steers[0];
}

static int point_index(const char *name)
{
	size_t i;

	for (i = 0; i < n_points; i++)
		if (points[i] == name || !strcmp(points[i], name))
			return (int)i;
	return -1;
}

/* The hit number a seed draws for a point (-k overrides it). */
static unsigned default_hit(uint64_t seed, int point)
{
	uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)point;

	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ull;
	x ^= x >> 29;
	return 1 + (unsigned)(x % steer_for(point)->kmax);
}

/* The crash-point hook's state for one scenario; any thread. */
struct point_run {
	pthread_mutex_t lock;
	struct crash_world *w;	/* cut its power at the target; NULL: no */
	int target;		/* point index; -1: none */
	unsigned k;		/* the hit to crash at */
	unsigned seen;		/* hits of the target so far */
	unsigned cuts;		/* times the power went at the target */
	uint64_t *hits;		/* per point, this scenario */
	const char *unknown;	/* a name not in the table */
};

static void crash_hook(void *ctx, const char *name)
{
	struct point_run *pr = ctx;
	int i = point_index(name);
	struct crash_world *w = NULL;

	pthread_mutex_lock(&pr->lock);
	if (i < 0)
		pr->unknown = name;
	else
		pr->hits[i]++;
	if (i >= 0 && i == pr->target && pr->w && ++pr->seen == pr->k) {
		pr->cuts++;
		w = pr->w;
		pr->w = NULL;
	}
	pthread_mutex_unlock(&pr->lock);
	/* the photograph is taken before this returns: the stricken
	 * sequence cannot go on to its next system call first */
	if (w)
		crash_now(w);
}

/* Aim the hook at world @w (NULL: only count). */
static void point_arm(struct point_run *pr, struct crash_world *w)
{
	pthread_mutex_lock(&pr->lock);
	pr->w = w;
	pr->seen = 0;
	pthread_mutex_unlock(&pr->lock);
}

/* The crash world's on_crash: the image as the power cut left it. */
static void photograph(void *ctx)
{
	struct scenario *sc = ctx;

	tu_copy_dir(sc->dir, sc->photo);
}

static bool crashed(struct crash_world *w)
{
	bool c;

	pthread_mutex_lock(&w->lock);
	c = w->crashed;
	pthread_mutex_unlock(&w->lock);
	return c;
}

/* A stack as the daemon runs it: started (libaio, the writeback thread),
 * O_DIRECT where the host allows it.  The periodic commit is an hour
 * away, so that commits come where the scenario asks for them and a
 * seed replays the same run. */
static struct pf_stack *open_stack(struct scenario *sc,
				   const struct pf_file_factory *f,
				   struct point_run *pr)
{
	/* no sealer thread: structural_op() seals, so that where the power
	 * goes stays a function of the seed */
	struct pf_stack_opts o = { .dir = sc->dir, .commit_ms = 3600 * 1000,
				   .factory = f, .no_sealer = true };
	struct pf_why why = { "" };
	struct pf_stack *s = NULL;
	int ret;

	if (pr) {
		o.crash_point = crash_hook;
		o.crash_point_ctx = pr;
	}
	ret = pf_stack_open(&o, &s, &why);
	if (ret) {
		snprintf(sc->why, sizeof(sc->why), "open: %s (%d)", why.msg,
			 ret);
		return NULL;
	}
	if (pf_stack_start(s))
		abort();
	return s;
}

/*
 * A snapshot or the delete of a snapshot: of a random one, or for
 * STRUCT_DOWN one whose child is read-only (a down merge), for STRUCT_UP
 * the top's parent (an up merge), a snapshot when there is none such.
 * Neither changes data; a snapshot and an up merge commit the top delta
 * first, so on success every write before them is durable.
 */
static int structural_op(struct scenario *sc, struct pf_stack *s,
			 enum struct_kind kind)
{
	struct pf_stack_level lv[16];
	struct pf_stack_merge_info info;
	struct pf_why why = { "" };
	char guid[PF_GUID_LEN + 1];
	size_t n = pf_stack_levels(s, lv, 16), victim;
	bool snap;
	int ret;

	sc->structural++;
	switch (kind) {
	case STRUCT_ANY:
		snap = rnd_below(2);
		break;
	case STRUCT_DOWN:
		snap = n < 3;
		break;
	case STRUCT_UP:
		snap = n < 2;
		break;
	default:
		snap = true;
	}
	if (snap) {
		if (n >= 8)
			return 0;
		ret = pf_stack_snapshot(s, NULL, guid, &why);
		if (!ret) {
			note_flushed(sc);
			note_snapshot(sc, guid);
			/* most snapshots sealed, as the sealer would: the
			 * deletes then drop and compose manifests (W9) */
			if (rnd_below(4) && pf_stack_seal(s, &why))
				sc->seal_failed++;	/* after the cut */
		}
		return ret;
	}
	if (n < 2 || n > 16)
		return 0;
	if (kind == STRUCT_DOWN)
		victim = rnd_below(n - 2);
	else if (kind == STRUCT_UP)
		victim = n - 2;
	else
		victim = rnd_below(n - 1);
	ret = pf_stack_delete_snapshot(s, lv[victim].guid, 0, &info, &why);
	if (!ret && !info.down)
		note_flushed(sc);
	return ret;
}

/* One random operation; returns the stack's result. */
static int random_op(struct scenario *sc, struct pf_stack *s)
{
	const struct steer *st = sc->steer;
	uint64_t r = rnd_below(100);
	uint32_t pair = (uint32_t)rnd_below(HOT_PAIRS), slot = 2 * pair;
	uint32_t sec0, n, spc = sc->spc, sp = st->struct_pct;
	int ret;

	if (st->punch_pct && rnd_below(100) < st->punch_pct)
		return do_write(sc, s, slot + (uint32_t)rnd_below(2), 0, spc,
				true);
	if (r < sp && sc->structural < MAX_STRUCT)
		return structural_op(sc, s, st->kind);
	if (r < sp + 11) {
		ret = pf_stack_flush(s);
		if (!ret)
			note_flushed(sc);
		return ret;
	}
	if (r < sp + 26)	/* a whole cluster */
		return do_write(sc, s, slot + (uint32_t)rnd_below(2), 0, spc,
				r < sp + 21 ? false : true);
	if (r < sp + 36)	/* several in flight, maybe with a flush */
		return do_burst(sc, s, r >= sp + 32);
	/* a piece, possibly across the pair's cluster boundary */
	sec0 = (uint32_t)rnd_below(2 * spc);
	n = 1 + (uint32_t)rnd_below(rnd_below(4) ? 16 : spc);
	if (sec0 + n > 2 * spc)
		n = 2 * spc - sec0;
	return do_write(sc, s, slot, sec0, n, r >= 85);
}

/* Snapshot @r's view must read exactly as when it was taken. */
static bool view_ok(struct scenario *sc, struct pf_stack *s,
		    const struct shot_rec *r, const char *when, uint8_t *buf)
{
	uint32_t k, i;

	for (k = 0; k < N_HOT; k++) {
		if (pf_stack_pread_view(s, r->guid, buf, sc->cluster,
					(uint64_t)sc->hot[k] * sc->cluster)) {
			snprintf(sc->why, sizeof(sc->why),
				 "%s: read of snapshot %s failed", when,
				 r->guid);
			return false;
		}
		for (i = 0; i < sc->spc; i++) {
			uint64_t sec = slot_sector(sc, k, i);
			int64_t id = sector_id(buf + (size_t)i * SECTOR, sec);
			uint32_t want = r->want[(size_t)k * sc->spc + i];

			if (id == want)
				continue;
			snprintf(sc->why, sizeof(sc->why),
				 "%s: snapshot %s, sector %" PRIu64 " (cluster %" PRIu32 ") holds %s %" PRId64 ", taken with %" PRIu32,
				 when, r->guid, sec, sc->hot[k],
				 id < 0 ? "garbage" : "value", id, want);
			return false;
		}
	}
	return true;
}

/* Every snapshot still in the stack (and not being deleted) must read
 * exactly as when it was taken: no crash, merge or completion of a merge
 * may change a view. */
static bool verify_views(struct scenario *sc, struct pf_stack *s,
			 const char *when, uint8_t *buf)
{
	struct pf_stack_level lv[16];
	size_t n = pf_stack_levels(s, lv, 16), l;
	unsigned j;

	for (l = 0; l + 1 < n && l < 16; l++)
		for (j = 0; j < sc->n_shots; j++)
			if (!lv[l].hidden &&
			    !strcmp(sc->shots[j].guid, lv[l].guid) &&
			    !view_ok(sc, s, &sc->shots[j], when, buf))
				return false;
	return true;
}

/* Verify every hot sector through a stack on the real files, and the
 * snapshot views. */
static bool verify(struct scenario *sc, struct pf_stack *s, const char *when)
{
	uint8_t *buf = malloc(sc->cluster);
	uint32_t k, i;
	bool ok = true;

	for (k = 0; k < N_HOT && ok; k++) {
		if (pf_stack_pread(s, buf, sc->cluster,
				   (uint64_t)sc->hot[k] * sc->cluster)) {
			snprintf(sc->why, sizeof(sc->why), "%s: read failed",
				 when);
			ok = false;
			break;
		}
		for (i = 0; i < sc->spc; i++) {
			uint64_t sec = slot_sector(sc, k, i);
			const struct sector_state *st = state_of(sc, k, i);
			int64_t id = sector_id(buf + (size_t)i * SECTOR, sec);

			if (!legal(st, id)) {
				snprintf(sc->why, sizeof(sc->why),
					 "%s: sector %" PRIu64 " (cluster %" PRIu32
					 ") holds %s %" PRId64
					 ", durable value %" PRIu32 ", %" PRIu32
					 " written since",
					 when, sec, sc->hot[k],
					 id < 0 ? "garbage" : "value", id,
					 st->durable, st->n);
				ok = false;
				break;
			}
		}
	}
	if (ok)
		ok = verify_views(sc, s, when, buf);
	free(buf);
	return ok;
}

struct first_bad {
	bool clean;
	char msg[300];
};

static void note_bad(void *ctx, const char *file, enum pf_finding kind,
		     const char *msg)
{
	struct first_bad *f = ctx;

	if (!f->msg[0] && (kind == PF_FIND_CORRUPT ||
			   (f->clean && kind == PF_FIND_UNCLEAN)))
		snprintf(f->msg, sizeof(f->msg), "%s: %s", file, msg);
}

/*
 * W9: every manifest in the directory is whole and describes its delta
 * as it is; the top delta has none.  A manifest left over a parent that
 * a down merge changed, or published before its content was durable,
 * fails here (clusters listed and not mapped, mapped and not listed, or
 * of other data).  Leftover tmp files are allowed (the next store or
 * drop removes them).
 */
static bool manifests_ok(struct scenario *sc, int fd, const struct pf_dd *dd,
			 struct pf_delta **d, const char *when)
{
	struct pf_sum_opts o = { .threads = 2 };
	size_t i;

	for (i = 0; i < dd->n_images; i++) {
		struct pf_manifest *m = NULL;
		struct pf_why why = { "" };
		uint64_t problems = 0;
		int ret = pf_manifest_load(fd, dd->images[i].file, d[i], &m,
					   &why);

		if (ret == -ENOENT)
			continue;
		if (!ret && !strcmp(dd->images[i].guid, dd->top_guid))
			snprintf(why.msg, sizeof(why.msg),
				 "the top delta has a manifest"), ret = -EINVAL;
		if (!ret)
			ret = pf_manifest_verify(d[i], m, &o, NULL, NULL,
						 &problems, &why);
		pf_manifest_free(m);
		if (!ret && problems)
			snprintf(why.msg, sizeof(why.msg),
				 "%" PRIu64 " clusters differ from the manifest",
				 problems), ret = -EUCLEAN;
		if (ret) {
			snprintf(sc->why, sizeof(sc->why), "%s: W9: %s: %s",
				 when, dd->images[i].file, why.msg);
			return false;
		}
	}
	return true;
}

/* As ploopctl check: no delta may be corrupt, the chain must stack (I6);
 * @clean: nor may any be unclean.  And the manifests hold (W9). */
static bool deltas_ok(struct scenario *sc, bool clean, const char *when)
{
	struct first_bad fb = { .clean = clean };
	struct pf_check_report r = { .emit = note_bad, .ctx = &fb };
	struct pf_delta **d = NULL, **chain_d = NULL;
	struct pf_why why = { "" };
	struct pf_dd *dd = NULL;
	size_t *chain = NULL, depth = 0, i;
	int fd = open(sc->dir, O_RDONLY | O_DIRECTORY);
	bool ok = fd >= 0 && pf_dd_load(fd, &dd, &why) == 0;

	if (ok) {
		d = calloc(dd->n_images, sizeof(*d));
		if (!d)
			abort();
	}
	for (i = 0; ok && i < dd->n_images; i++)
		ok = pf_delta_open(fd, dd->images[i].file, 0, NULL, &d[i], &why) ==
			     0 &&
		     pf_check_delta(d[i], &r) == 0;
	if (ok)
		ok = pf_dd_chain(dd, &chain, &depth, &why) == 0;
	if (ok) {
		chain_d = calloc(depth, sizeof(*chain_d));
		if (!chain_d)
			abort();
		for (i = 0; i < depth; i++)
			chain_d[i] = d[chain[i]];
		pf_check_stack(dd, chain_d, depth, &r);
	}
	if (!ok)
		snprintf(sc->why, sizeof(sc->why), "%s: check: %s", when,
			 why.msg);
	else if (!manifests_ok(sc, fd, dd, d, when))
		ok = false;
	else if (r.count[PF_FIND_CORRUPT] ||
		 (clean && r.count[PF_FIND_UNCLEAN])) {
		snprintf(sc->why, sizeof(sc->why),
			 "%s: check found %" PRIu64 " corruptions, %" PRIu64
			 " unclean (%s)",
			 when, r.count[PF_FIND_CORRUPT],
			 r.count[PF_FIND_UNCLEAN], fb.msg);
		ok = false;
	}
	for (i = 0; d && i < dd->n_images; i++)
		pf_delta_close(d[i]);
	free(d);
	free(chain_d);
	free(chain);
	pf_dd_free(dd);
	if (fd >= 0)
		close(fd);
	return ok;
}

/* Complete the snapshot deletes the power cut interrupted (shots left
 * <Temporary/>): deleting them again must work and change no data. */
static bool complete_merges(struct scenario *sc, struct pf_stack *s,
			    unsigned *done)
{
	struct pf_why why = { "" };
	struct pf_dd *dd = NULL;
	int fd = open(sc->dir, O_RDONLY | O_DIRECTORY);
	bool ok = fd >= 0 && pf_dd_load(fd, &dd, &why) == 0;
	size_t i;

	if (!ok)
		snprintf(sc->why, sizeof(sc->why), "descriptor: %s", why.msg);
	for (i = 0; ok && i < dd->n_shots; i++) {
		struct pf_stack_merge_info info;

		if (!dd->shots[i].temporary)
			continue;
		(*done)++;
		if (pf_stack_delete_snapshot(s, dd->shots[i].guid, 0, &info,
					     &why)) {
			snprintf(sc->why, sizeof(sc->why),
				 "completing the delete of %s: %s",
				 dd->shots[i].guid, why.msg);
			ok = false;
		}
	}
	pf_dd_free(dd);
	if (fd >= 0)
		close(fd);
	return ok;
}

struct outcome {
	bool mid;		/* the power went during the run */
	bool exact;		/* ... at the target point's k-th pass */
	uint64_t target_hits;	/* passes of the target point seen */
};

static uint64_t *total_hits;	/* per point, over all scenarios */

/* Cut the power of @w (photographing the image if that did not happen
 * yet), close the stricken stack, and put a copy of the photograph in
 * place of the directory it was using. */
static void power_cut(struct scenario *sc, struct crash_world *w,
		      struct point_run *pr, struct pf_stack *s)
{
	point_arm(pr, NULL);
	crash_now(w);
	if (s)
		pf_stack_close(s);	/* every I/O fails: changes nothing */
	crash_world_destroy(w);
	tu_remove_dir(sc->dir);
	tu_copy_dir(sc->photo, sc->dir);
}

/*
 * Runs scenario @seed, cut by the countdown (@point < 0) or at the @k-th
 * pass of crash point @point.  Returns 0 ok, 1 violation.
 */
static int run_scenario(uint64_t seed, int point, unsigned k,
			struct outcome *out)
{
	struct scenario sc = { .next_id = 1 };
	const struct steer *st = steer_for(point);
	struct point_run pr = { .target = point, .k = k };
	bool named = point >= 0 && !(st->flags & F_REOPEN), ok = true;
	bool late = !named && point >= 0 && (st->flags & F_LATE);
	char photo1[sizeof(sc.photo)] = "";
	char guid[PF_GUID_LEN + 1];
	struct crash_world w;
	struct pf_stack *s;
	uint32_t i, ops = 0;
	unsigned torn;
	long countdown;
	int snaps;

	memset(out, 0, sizeof(*out));
	pthread_mutex_init(&pr.lock, NULL);
	pr.hits = calloc(n_points, sizeof(*pr.hits));
	if (!pr.hits)
		abort();
	sc.steer = st;
	rng_state = seed * 0xD1B54A32D192ED03ull + 7;
	if (point < 0)
		snprintf(sc.dir, sizeof(sc.dir), "%s/s%" PRIu64, tmp_root,
			 seed);
	else
		snprintf(sc.dir, sizeof(sc.dir), "%s/p%d-s%" PRIu64, tmp_root,
			 point, seed);
	snprintf(sc.photo, sizeof(sc.photo), "%s.crash", sc.dir);
	sc.cluster = rnd_below(2) ? 64 * 1024 : 1024 * 1024;
	/* with 64 KiB clusters the BAT spans two 4 KiB pages */
	sc.size = sc.cluster == 65536 ? 1152ull * 65536 : 64ull << 20;
	sc.spc = sc.cluster / SECTOR;
	for (i = 0; i < HOT_PAIRS; i++) {
		uint32_t nclu = (uint32_t)(sc.size / sc.cluster), c;
		uint32_t j;
		bool dup;

		do {	/* distinct pairs spread over the disk */
			c = (uint32_t)rnd_below(nclu - 1);
			dup = false;
			for (j = 0; j < 2 * i; j++)
				if (sc.hot[j] == c || sc.hot[j] == c + 1 ||
				    sc.hot[j] + 1 == c)
					dup = true;
		} while (dup);
		sc.hot[2 * i] = c;
		sc.hot[2 * i + 1] = c + 1;
	}
	sc.st = calloc((size_t)N_HOT * sc.spc, sizeof(*sc.st));
	if (!sc.st)
		abort();
	tu_make_image(sc.dir, sc.size, sc.cluster);

	/* Earlier history: data in lower deltas, made durable. */
	snaps = (int)(st->hist_min + rnd_below(3 - st->hist_min));
	for (int h = 0; h < snaps; h++) {
		s = open_stack(&sc, NULL, NULL);
		if (!s)
			goto fail;
		for (i = 0; i < 6; i++)
			if (do_write(&sc, s, 2 * (uint32_t)rnd_below(HOT_PAIRS),
				     (uint32_t)rnd_below(2 * sc.spc - 64),
				     1 + (uint32_t)rnd_below(64), false))
				goto fail_close;
		if (pf_stack_flush(s))
			goto fail_close;
		note_flushed(&sc);
		if (pf_stack_close(s))
			goto fail;
		tu_snapshot_guid(sc.dir, guid);
		note_snapshot(&sc, guid);
	}

	/* The run the power cut interrupts. */
	countdown = 1 + (long)rnd_below(3 * OPS);
	torn = rnd_below(3) == 0 ? 0 : rnd_below(2) ? 512 : 4096;
	crash_world_init(&w, seed, named || late ? -1 : countdown, torn);
	w.on_crash = photograph;
	w.on_crash_ctx = &sc;
	point_arm(&pr, named ? &w : NULL);
	s = open_stack(&sc, &w.factory, &pr);
	/* the history, mostly sealed (it was taken offline) */
	if (s && rnd_below(4)) {
		struct pf_why sw = { "" };

		if (pf_stack_seal(s, &sw))
			sc.seal_failed++;
	}
	if (!s) {
		/* the power may go during the open itself */
		ok = crashed(&w);
		if (!ok)
			goto fail;
	}
	for (ops = 0; s && ops < OPS && !crashed(&w); ops++)
		random_op(&sc, s);
	if (s && (st->flags & F_CLOSE) && !crashed(&w)) {
		(void)pf_stack_close(s);	/* passes the close.* points */
		s = NULL;
	}
	out->mid = crashed(&w);
	n_structural += sc.structural;
	power_cut(&sc, &w, &pr, s);
	if (verbose)
		tap_diag("seed %" PRIu64 ": %u ops (%u structural), torn %u, crash after %" PRIu64
			 " I/O ops, %" PRIu64 " pieces kept, %" PRIu64 " lost",
			 seed, ops, sc.structural, torn, w.ops, w.kept, w.lost);

	out->exact = pr.cuts > 0;
	if (point >= 0 && ((st->flags & F_REOPEN) ||
			   ((st->flags & F_AGAIN) && pr.cuts))) {
		/* A second power cut, in the recovery of the first: at the
		 * point in the open, or in the completion of the delete the
		 * first cut interrupted. */
		memcpy(photo1, sc.photo, sizeof(photo1));
		snprintf(sc.photo, sizeof(sc.photo), "%s.crash2", sc.dir);
		torn = rnd_below(3) == 0 ? 0 : rnd_below(2) ? 512 : 4096;
		crash_world_init(&w, ~seed, -1, torn);
		w.on_crash = photograph;
		w.on_crash_ctx = &sc;
		point_arm(&pr, &w);
		s = open_stack(&sc, &w.factory, &pr);
		if (s && (st->flags & F_AGAIN)) {
			unsigned merged = 0;

			(void)complete_merges(&sc, s, &merged);
		}
		power_cut(&sc, &w, &pr, s);
		sc.why[0] = 0;
		if (st->flags & F_REOPEN)
			out->exact = pr.cuts > 0;
		if (verbose)
			tap_diag("seed %" PRIu64 ": recovery cut, torn %u, after %" PRIu64
				 " I/O ops, %" PRIu64 " pieces kept, %" PRIu64 " lost",
				 seed, torn, w.ops, w.kept, w.lost);
	}
	if (point >= 0) {
		out->target_hits = pr.hits[point];
		if (verbose)
			tap_diag("seed %" PRIu64 ": %s passed %" PRIu64 " times, %s",
				 seed, points[point], pr.hits[point],
				 pr.cuts == 2 ? "cut there twice" :
				 pr.cuts ? "cut there" : "not cut there");
	}
	if (pr.unknown) {
		snprintf(sc.why, sizeof(sc.why),
			 "the stack passed crash point %s, which is not in pf_stack_crash_points()",
			 pr.unknown);
		goto fail;
	}

	/* After the power cut */
	if (!deltas_ok(&sc, false, "after the crash"))
		goto fail;
	s = open_stack(&sc, NULL, NULL);	/* recovery (W8) */
	if (!s)
		goto fail;
	ok = verify(&sc, s, "after recovery");
	if (ok) {
		unsigned merged = 0;

		ok = complete_merges(&sc, s, &merged);
		n_completed += merged;
		if (ok && merged)
			ok = verify(&sc, s, "after completing a merge");
	}
	if (pf_stack_close(s) && ok) {
		snprintf(sc.why, sizeof(sc.why), "close after recovery failed");
		ok = false;
	}
	if (ok)
		ok = deltas_ok(&sc, true, "after a clean close");
	if (ok) {
		s = open_stack(&sc, NULL, NULL);
		ok = s && verify(&sc, s, "after reopening");
		if (s)
			pf_stack_close(s);
	}
	if (!ok)
		goto fail;
	goto out;

fail_close:
	pf_stack_close(s);
fail:
	ok = false;
out:
	if (!ok) {
		if (point < 0) {
			tap_diag("seed %" PRIu64 " failed: %s", seed, sc.why);
			tap_diag("replay: %s -s %" PRIu64 " -n 1 -v", prog, seed);
		} else {
			tap_diag("seed %" PRIu64 ", crash point %s, hit %u%s failed: %s",
				 seed, points[point], k,
				 out->exact ? "" : " (not reached: cut at the end)",
				 sc.why);
			tap_diag("replay: %s -p %s -k %u -s %" PRIu64 " -n 1 -v",
				 prog, points[point], k, seed);
		}
		tap_diag("image as the power cut left it: %s%s%s", photo1,
			 photo1[0] ? ", then " : "", sc.photo);
	}
	for (i = 0; i < n_points; i++)
		total_hits[i] += pr.hits[i];
	free(pr.hits);
	pthread_mutex_destroy(&pr.lock);
	for (i = 0; i < (uint32_t)N_HOT * sc.spc; i++)
		free(sc.st[i].since);
	free(sc.st);
	for (i = 0; i < sc.n_shots; i++)
		free(sc.shots[i].want);
	if (ok) {
		tu_remove_dir(sc.dir);
		tu_remove_dir(sc.photo);
		if (photo1[0])
			tu_remove_dir(photo1);
	}
	return ok ? 0 : 1;
}

static uint64_t violations;

/* The random mode: @n seeds from @first, cut by the countdown. */
static void run_random(uint64_t first, uint64_t n)
{
	uint64_t i, crashed_mid = 0, bad_before = violations;

	for (i = 0; i < n; i++) {
		struct outcome o;
		int bad = run_scenario(first + i, -1, 0, &o);

		crashed_mid += o.mid;
		violations += (uint64_t)bad;
		check_msg(!bad, "crash scenario seed %" PRIu64, first + i);
	}
	printf("# crash: %" PRIu64 " scenarios, %" PRIu64
	       " crashed mid-scenario, %" PRIu64 " violations\n",
	       n, crashed_mid, violations - bad_before);
}

/*
 * Scenarios cut at @point: seeds from @first, @n of them (@want 0), or
 * until @want were cut exactly there (at most SWEEP_TRIES * @want).  A
 * point no scenario reached fails.  Returns the scenarios run.
 */
static uint64_t run_point(int point, uint64_t first, uint64_t n,
			  uint64_t want, unsigned k_opt)
{
	uint64_t seed, exact = 0, tried = 0, bad_before = violations;
	uint64_t max = want ? want * SWEEP_TRIES : n;

	for (seed = first; tried < max && (!want || exact < want);
	     seed++, tried++) {
		unsigned k = k_opt ? k_opt : default_hit(seed, point);
		struct outcome o;
		int bad = run_scenario(seed, point, k, &o);

		exact += o.exact;
		violations += (uint64_t)bad;
		check_msg(!bad, "crash at %s, hit %u, seed %" PRIu64 "%s",
			  points[point], k, seed,
			  o.exact ? "" : " (not reached: cut at the end)");
	}
	printf("# crash point %s: %" PRIu64 " scenarios, %" PRIu64
	       " cut exactly there, %" PRIu64 " violations\n",
	       points[point], tried, exact, violations - bad_before);
	check_msg(exact > 0, "crash point %s reached", points[point]);
	if (!exact)
		tap_diag("crash point %s: no scenario passed it often enough; "
			 "try: %s -p %s -k 1 -s %" PRIu64 " -n 20 -v",
			 points[point], prog, points[point], first);
	else if (want && exact < want)
		tap_diag("crash point %s: only %" PRIu64 " of %" PRIu64
			 " wanted crashes in %" PRIu64 " seeds",
			 points[point], exact, want, tried);
	return tried;
}

static void run_sweep(uint64_t first, uint64_t want)
{
	uint64_t scenarios = 0, bad_before = violations;
	size_t i;

	for (i = 0; i < n_points; i++)
		scenarios += run_point((int)i, first, 0, want, 0);
	printf("# crash points: %zu points, %" PRIu64 " scenarios, %" PRIu64
	       " violations\n", n_points, scenarios, violations - bad_before);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: %s [-n scenarios] [-s seed] [-v]\n"
		"       %s -p point|all [-k hit] [-n scenarios] [-s seed] [-v]\n"
		"       %s -l\n",
		prog, prog, prog);
}

int main(int argc, char **argv)
{
	uint64_t first = 1, n = 200;
	const char *point = NULL;
	bool n_given = false, s_given = false;
	unsigned k = 0;
	size_t i;
	int c;

	prog = argv[0];
	points = pf_stack_crash_points(&n_points);
	while ((c = getopt(argc, argv, "k:ln:p:s:v")) != -1) {
		switch (c) {
		case 'k':
			k = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'l':
			for (i = 0; i < n_points; i++)
				printf("%s\n", points[i]);
			return 0;
		case 'n':
			n = strtoull(optarg, NULL, 10);
			n_given = true;
			break;
		case 'p':
			point = optarg;
			break;
		case 's':
			first = strtoull(optarg, NULL, 10);
			s_given = true;
			break;
		case 'v':
			verbose = true;
			break;
		default:
			usage();
			return 2;
		}
	}
	if (getenv("CRASH_SCENARIOS")) {
		n = strtoull(getenv("CRASH_SCENARIOS"), NULL, 10);
		n_given = true;
	}
	if (point && strcmp(point, "all") && point_index(point) < 0) {
		fprintf(stderr, "%s: no crash point %s (-l lists them)\n", prog,
			point);
		return 2;
	}
	total_hits = calloc(n_points, sizeof(*total_hits));
	if (!total_hits || !mkdtemp(tmp_root)) {
		perror("test_crash");
		return 1;
	}
	if (!point) {
		run_random(first, n);
		if (!n_given && !s_given)
			run_sweep(1, SWEEP_CRASHES);
	} else if (!strcmp(point, "all")) {
		run_sweep(first, n_given ? n : SWEEP_CRASHES);
	} else {
		run_point(point_index(point), first, n_given ? n : 20, 0, k);
	}
	printf("# %" PRIu64 " snapshots and snapshot deletes, %" PRIu64
	       " interrupted deletes completed after recovery\n",
	       n_structural, n_completed);
	if (verbose)
		for (i = 0; i < n_points; i++)
			tap_diag("%-30s passed %" PRIu64 " times", points[i],
				 total_hits[i]);
	if (!violations)
		tu_remove_dir(tmp_root);
	else
		tap_diag("failed scenarios kept in %s", tmp_root);
	free(total_hits);
	return tap_done();
}
