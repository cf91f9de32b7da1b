// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Crash simulation: seeded random scenarios of writes (sub-cluster and
 * whole-cluster, over snapshot data), punches and flushes against an
 * image whose delta files are crash-simulating (io_crash.h).  At a random
 * mutating I/O operation the power goes; the image is reopened as after
 * a power cut and an oracle checks every sector of the clusters the
 * scenario touched:
 *   - it holds a value it may legally hold: the value the last completed
 *     flush made durable, or a value written after that flush (a punch
 *     writes zeros);
 *   - never garbage, never another sector's data, never lower-delta data
 *     that was overwritten before the last flush, never data a durable
 *     punch removed.
 * Then no delta may be corrupt (leaks are allowed) and the recovered
 * image must close cleanly.
 *
 * The mix also takes online snapshots (pf_stack_snapshot) and deletes
 * snapshots (pf_stack_delete_snapshot, down and up merges).  They change
 * no data, so the oracle's rules stay; a snapshot and an up merge commit
 * the top, so what was written before them counts as flushed.  A down
 * merge the power cut interrupted leaves its snapshot <Temporary/>; after
 * recovery it is completed by deleting it again and the oracle checks
 * once more.  Limitation: only delta contents are crash-simulated.
 * DiskDescriptor.xml (tmp, fsync, rename, directory fsync) and new delta
 * files (pf_delta_create) are written with real system calls, outside
 * the crash world, so a power cut never loses or tears a descriptor
 * update or a new delta's header; those steps are covered by their own
 * W6 tests.
 *
 *   test_crash [-n SCENARIOS] [-s FIRST_SEED] [-v]
 *
 * A failing scenario prints its seed and the command that replays it.
 * The TAP output has one line per scenario plus a summary line
 * "crash: N scenarios, N crashed mid-scenario, N violations".
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
#include "stack.h"
#include "tap.h"
#include "testutil.h"
#include "util.h"

#define SECTOR		512u
#define HOT_PAIRS	8		/* pairs of adjacent clusters in play */
#define N_HOT		(2 * HOT_PAIRS)
#define OPS		48
#define MAX_STRUCT	4		/* structural operations per scenario */

static const char *prog;
static bool verbose;
static uint64_t n_structural, n_completed;	/* over all scenarios */
static char tmp_root[] = "/tmp/pf-test-crash.XXXXXX";

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

struct scenario {
	char dir[256];
	uint32_t cluster;
	uint64_t size;
	uint32_t spc;			/* sectors per cluster */
	uint32_t hot[N_HOT];		/* virtual cluster of slot k */
	struct sector_state *st;	/* N_HOT * spc */
	uint32_t next_id;
	unsigned structural;		/* snapshots and deletes done */
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

static struct pf_stack *open_stack(struct scenario *sc,
				   const struct pf_file_factory *f)
{
	struct pf_stack_opts o = { .dir = sc->dir, .no_direct = true,
				   .factory = f };
	struct pf_why why = { "" };
	struct pf_stack *s = NULL;
	int ret = pf_stack_open(&o, &s, &why);

	if (ret)
		snprintf(sc->why, sizeof(sc->why), "open: %s (%d)", why.msg,
			 ret);
	return ret ? NULL : s;
}

/*
 * A snapshot (@snap) or the delete of a random snapshot.  Neither changes
 * data; a snapshot and an up merge commit the top delta first, so on
 * success every write before them is durable.
 */
static int structural_op(struct scenario *sc, struct pf_stack *s, bool snap)
{
	struct pf_stack_level lv[16];
	struct pf_stack_merge_info info;
	struct pf_why why = { "" };
	char guid[PF_GUID_LEN + 1];
	size_t n = pf_stack_levels(s, lv, 16);
	int ret;

	sc->structural++;
	if (snap) {
		if (n >= 8)
			return 0;
		ret = pf_stack_snapshot(s, NULL, guid, &why);
		if (!ret)
			note_flushed(sc);
		return ret;
	}
	if (n < 2 || n > 16)
		return 0;
	ret = pf_stack_delete_snapshot(s, lv[rnd_below(n - 1)].guid, &info,
				       &why);
	if (!ret && !info.down)
		note_flushed(sc);
	return ret;
}

/* One random operation; returns the stack's result. */
static int random_op(struct scenario *sc, struct pf_stack *s)
{
	uint64_t r = rnd_below(100);
	uint32_t pair = (uint32_t)rnd_below(HOT_PAIRS), slot = 2 * pair;
	uint32_t sec0, n, spc = sc->spc;
	int ret;

	if (r < 4 && sc->structural < MAX_STRUCT)
		return structural_op(sc, s, rnd_below(2));
	if (r < 15) {
		ret = pf_stack_flush(s);
		if (!ret)
			note_flushed(sc);
		return ret;
	}
	if (r < 30)	/* a whole cluster */
		return do_write(sc, s, slot + (uint32_t)rnd_below(2), 0, spc,
				r < 25 ? false : true);
	/* a piece, possibly across the pair's cluster boundary */
	sec0 = (uint32_t)rnd_below(2 * spc);
	n = 1 + (uint32_t)rnd_below(rnd_below(4) ? 16 : spc);
	if (sec0 + n > 2 * spc)
		n = 2 * spc - sec0;
	return do_write(sc, s, slot, sec0, n, r >= 85);
}

/* Verify every hot sector through a stack on the real files. */
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
	free(buf);
	return ok;
}

/* No delta may be corrupt; @clean: nor unclean. */
static bool deltas_ok(struct scenario *sc, bool clean, const char *when)
{
	struct pf_check_report r = { 0 };
	struct pf_why why = { "" };
	struct pf_dd *dd = NULL;
	int fd = open(sc->dir, O_RDONLY | O_DIRECTORY);
	bool ok = fd >= 0 && pf_dd_load(fd, &dd, &why) == 0;
	size_t i;

	for (i = 0; ok && i < dd->n_images; i++) {
		struct pf_delta *d = NULL;

		ok = pf_delta_open(fd, dd->images[i].file, 0, &d, &why) == 0 &&
		     pf_check_delta(d, &r) == 0;
		pf_delta_close(d);
	}
	if (!ok)
		snprintf(sc->why, sizeof(sc->why), "%s: check: %s", when,
			 why.msg);
	else if (r.count[PF_FIND_CORRUPT] ||
		 (clean && r.count[PF_FIND_UNCLEAN])) {
		snprintf(sc->why, sizeof(sc->why),
			 "%s: check found %" PRIu64 " corruptions, %" PRIu64
			 " unclean",
			 when, r.count[PF_FIND_CORRUPT],
			 r.count[PF_FIND_UNCLEAN]);
		ok = false;
	}
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
		if (pf_stack_delete_snapshot(s, dd->shots[i].guid, &info,
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

/* Runs scenario @seed; returns 0 ok, 1 violation; *crashed: mid-run. */
static int run_scenario(uint64_t seed, bool *crashed)
{
	struct scenario sc = { .next_id = 1 };
	struct crash_world w;
	struct pf_stack *s;
	uint32_t k, ops = 0;
	bool ok = true;
	long countdown;
	int snaps;
	char cmd[400];

	rng_state = seed * 0xD1B54A32D192ED03ull + 7;
	snprintf(sc.dir, sizeof(sc.dir), "%s/s%" PRIu64, tmp_root, seed);
	sc.cluster = rnd_below(2) ? 64 * 1024 : 1024 * 1024;
	/* with 64 KiB clusters the BAT spans two 4 KiB pages */
	sc.size = sc.cluster == 65536 ? 1152ull * 65536 : 64ull << 20;
	sc.spc = sc.cluster / SECTOR;
	for (k = 0; k < HOT_PAIRS; k++) {
		uint32_t nclu = (uint32_t)(sc.size / sc.cluster), c;
		uint32_t j;
		bool dup;

		do {	/* distinct pairs spread over the disk */
			c = (uint32_t)rnd_below(nclu - 1);
			dup = false;
			for (j = 0; j < 2 * k; j++)
				if (sc.hot[j] == c || sc.hot[j] == c + 1 ||
				    sc.hot[j] + 1 == c)
					dup = true;
		} while (dup);
		sc.hot[2 * k] = c;
		sc.hot[2 * k + 1] = c + 1;
	}
	sc.st = calloc((size_t)N_HOT * sc.spc, sizeof(*sc.st));
	tu_make_image(sc.dir, sc.size, sc.cluster);

	/* Earlier history: data in lower deltas, made durable. */
	snaps = (int)rnd_below(3);
	for (int i = 0; i < snaps; i++) {
		s = open_stack(&sc, NULL);
		if (!s)
			goto fail;
		for (k = 0; k < 6; k++)
			if (do_write(&sc, s, 2 * (uint32_t)rnd_below(HOT_PAIRS),
				     (uint32_t)rnd_below(2 * sc.spc - 64),
				     1 + (uint32_t)rnd_below(64), false))
				goto fail_close;
		if (pf_stack_flush(s))
			goto fail_close;
		note_flushed(&sc);
		if (pf_stack_close(s))
			goto fail;
		tu_snapshot(sc.dir);
	}

	/* The run the power cut interrupts. */
	countdown = 1 + (long)rnd_below(3 * OPS);
	crash_world_init(&w, seed, countdown, rnd_below(3) == 0 ? 0 :
					      rnd_below(2) ? 512 : 4096);
	s = open_stack(&sc, &w.factory);
	if (!s) {
		/* the power may go during the open itself */
		ok = w.crashed;
		if (!ok)
			goto fail;
	}
	for (ops = 0; s && ops < OPS && !w.crashed; ops++)
		random_op(&sc, s);
	*crashed = w.crashed;
	n_structural += sc.structural;
	crash_now(&w);
	if (s)
		pf_stack_close(s);	/* every I/O fails: changes nothing */
	crash_world_destroy(&w);
	if (verbose)
		tap_diag("seed %" PRIu64 ": %u ops (%u structural), crash after %" PRIu64
			 " I/O ops, %" PRIu64 " pieces kept, %" PRIu64 " lost",
			 seed, ops, sc.structural, w.ops, w.kept, w.lost);

	/* After the power cut */
	if (!deltas_ok(&sc, false, "after the crash"))
		goto fail;
	s = open_stack(&sc, NULL);	/* recovery (W8) */
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
		s = open_stack(&sc, NULL);
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
		tap_diag("seed %" PRIu64 " failed: %s", seed, sc.why);
		tap_diag("replay: %s -s %" PRIu64 " -n 1 -v", prog, seed);
	}
	for (k = 0; k < (uint32_t)N_HOT * sc.spc; k++)
		free(sc.st[k].since);
	free(sc.st);
	if (ok) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", sc.dir);
		if (system(cmd))
			tap_diag("cannot remove %s", sc.dir);
	}
	return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
	uint64_t first = 1, n = 200, i, crashed_mid = 0, violations = 0;
	char cmd[300];
	int c;

	prog = argv[0];
	while ((c = getopt(argc, argv, "n:s:v")) != -1) {
		switch (c) {
		case 'n':
			n = strtoull(optarg, NULL, 10);
			break;
		case 's':
			first = strtoull(optarg, NULL, 10);
			break;
		case 'v':
			verbose = true;
			break;
		default:
			fprintf(stderr, "usage: %s [-n scenarios] [-s seed] [-v]\n",
				prog);
			return 2;
		}
	}
	if (getenv("CRASH_SCENARIOS"))
		n = strtoull(getenv("CRASH_SCENARIOS"), NULL, 10);
	if (!mkdtemp(tmp_root)) {
		perror("mkdtemp");
		return 1;
	}
	for (i = 0; i < n; i++) {
		bool mid = false;
		int bad = run_scenario(first + i, &mid);

		crashed_mid += mid;
		violations += (uint64_t)bad;
		check_msg(!bad, "crash scenario seed %" PRIu64, first + i);
	}
	printf("# crash: %" PRIu64 " scenarios, %" PRIu64
	       " crashed mid-scenario, %" PRIu64 " violations\n",
	       n, crashed_mid, violations);
	printf("# %" PRIu64 " snapshots and snapshot deletes, %" PRIu64
	       " interrupted deletes completed after recovery\n",
	       n_structural, n_completed);
	if (!violations) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_root);
		if (system(cmd))
			tap_diag("cannot remove %s", tmp_root);
	} else {
		tap_diag("failed scenarios kept in %s", tmp_root);
	}
	return tap_done();
}
