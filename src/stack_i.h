/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The delta stack engine, private to its files (stack.h is the
 * interface):
 *   stack.c      open, recovery, close; the read and write paths,
 *                copy-on-write, discard; status
 *   map.c        the merged map: the top's BAT and its dirty pages,
 *                the lookups of snapshot views, allocation in the top
 *   gate.c       epochs, the gate and freezes, range locks, writes held
 *                for lack of host space
 *   writeback.c  the commit (W1-W4), the writeback thread, flush (W3)
 *   snapshot.c   online snapshot; what structural commands share
 *   merge.c      snapshot delete: merge down and up (W5)
 *
 * Map.  Every delta keeps its BAT in memory as on disk (its delta's
 * meta).  level_of[idx] is the highest level whose BAT maps virtual
 * cluster idx, or LEVEL_NONE.  Readers look both up without locks: an
 * allocation stores the top entry and then level_of (release), a reader
 * loads level_of and then the entry (acquire), so a reader that sees the
 * top level sees its entry.  A top entry read as 0 (an unmapping in
 * progress) reads as zeros.
 *
 * Range locks.  Writes, allocations and discards lock byte ranges of one
 * virtual cluster: an in-place write locks the (alignment-rounded) range
 * it writes until its I/O completes; an allocation or discard locks the
 * whole cluster.  So a write to a cluster is never lost to a concurrent
 * copy-on-write of it, concurrent first writers allocate once, and a
 * read-modify-write of a partial block never undoes a neighbour's write.
 * Reads take no lock.
 *
 * Epochs.  Every read and write runs inside an epoch (two counters).  A
 * commit flips the epoch and waits for the old one to drain before it
 * frees clusters that were unmapped before the flip, so no I/O that
 * looked up the old mapping can touch a cluster after it is punched or
 * reused (the race dm-thin's discard had: a write that looked up a block
 * before its discard landed in it after its reuse).
 *
 * The gate.  Every request holds it while it runs; a freeze closes it
 * and waits until no request is inside and no in-place write is in
 * flight.  Structural changes of the levels happen only frozen.
 *
 * Crash safety: the commit (wb_commit_locked) follows W1-W4:
 *   1. close the transaction: copy the dirty BAT pages and take the list
 *      of clusters unmapped in it (W2: later changes go to the next one);
 *   2. fdatasync the top delta: every cluster those pages point to is
 *      durable (W1) -- entries are only set after their data write
 *      completed;
 *   3. write the copied pages, fdatasync (W3; pf_delta_write_bat);
 *   4. punch the unmapped clusters and make them reusable (W4).
 * Any failure of 2-4 puts the stack in the sticky failed state (W7).
 * The durable steps on one delta are the verbs of delta.h; the named
 * crash points (CRASH_POINTS) fall between them.
 *
 * Threads:
 *   - FUSE workers (/dev/fuse) and io_uring queue threads (fuse_uring.c)
 *     run requests: lookups, submitting I/O, and the synchronous parts
 *     (copy-on-write, read-modify-write, discard, a flush's commit); a
 *     queue thread completes its own writes in its loop (io.h engine),
 *     so it must never sleep without pf_aio_wait();
 *   - the aio completion thread (io_aio.c) finishes reads and in-place
 *     writes: callbacks that release range locks, the gate, epochs;
 *   - the writeback thread (wb_main) commits every commit_ms (a
 *     read-only stack, which never writes, starts none); a flush
 *     runs the commit it waits for in its own thread unless one runs
 *     (group commit without a hand-off);
 *   - control threads (control.c, serve.c) read status at any time and
 *     run snapshot and snapshot delete in the caller's thread;
 *   - a delete's copy workers (MERGE_THREADS, merge.c) while it runs;
 *   - tests' crash-point hooks run in whichever thread finished a step.
 *
 * Locks, outermost first; a thread holding one takes only locks below it:
 *   struct_lock    one structural command (snapshot, delete).  Held
 *                  across I/O: the whole command.
 *   commit_lock    one commit at a time; a freeze holds it until thaw.
 *                  Held across I/O: the commit's syncs, BAT writes and
 *                  punches, and in a freeze the descriptor's rename.
 *   levels_lock    the levels array and a level's name, hidden and
 *                  deleting flags, against status readers; the open
 *                  handles of the views; taken by a switch (frozen).
 *   range locks    (a cluster's byte range, rlock_acquire) never nested
 *                  with the three above.  Held across I/O: an in-place
 *                  write until it completes; an allocation, copy-on-
 *                  write or discard of the cluster.
 *   alloc_lock     the top file's allocation state.  Held across I/O:
 *                  the fallocate or truncate that gives a cluster space
 *                  (map_space_for).  Never with bat_lock.
 *   bat_lock       the top's header, dirty pages, pending frees, mapped
 *                  count.  Never across I/O.
 *   epoch_lock, gate_lock, space_lock, wb_lock, the range-lock bucket
 *                  locks: leaves, never across I/O (wb_lock is dropped
 *                  while a commit runs).
 * The engine's own locks (io_aio.c, fuse_uring.c) come below all these:
 * callbacks that take them run with no stack lock held.
 */
#ifndef PF_STACK_I_H
#define PF_STACK_I_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "csum.h"
#include "delta.h"
#include "descriptor.h"
#include "file.h"
#include "format.h"
#include "io.h"
#include "stack.h"
#include "util.h"

#define LEVEL_NONE	0xFFu
#define RLOCK_BUCKETS	256
#define AIO_DEPTH	1024
#define PREALLOC_BYTES	(64ull << 20)	/* grow the top file in steps */

_Static_assert(PREALLOC_BYTES >= PF_CLUSTER_MAX, "whole clusters");

/* A locked byte range [start, end) of virtual cluster idx. */
struct rlock {
	uint32_t idx;
	uint32_t start, end;
	struct rlock *next;
};

struct rbucket {
	pthread_mutex_t lock;
	pthread_cond_t released;
	struct rlock *head;	/* protected by lock */
};

struct level {
	struct pf_delta *d;	/* its file (all I/O), header and BAT */
	char guid[PF_GUID_LEN + 1];	/* its Image GUID in the descriptor */
	uint64_t mapped;	/* clusters mapped (lower levels: fixed) */
	bool hidden;		/* being merged away: no snapshot view */
	bool sealed;		/* has a manifest (levels_lock) */
	bool deleting;		/* a delete has begun: its view opens no
				 * more (protected by levels_lock) */
};

/* Open handles of one snapshot view (pf_stack_view_open()) */
struct view_hold {
	char guid[PF_GUID_LEN + 1];
	unsigned opens;
};

struct pf_stack {
	int dirfd;		/* holds the exclusive image lock */
	char *dir;
	unsigned n_levels;	/* changes only frozen, under levels_lock */
	unsigned cap_levels;
	struct level *levels;	/* base first */
	pthread_mutex_t levels_lock;	/* status readers vs. a switch */
	/* views with open handles, protected by levels_lock */
	struct view_hold *holds;
	size_t n_holds, cap_holds;
	struct level *top;
	const struct pf_header *hdr;	/* top's header geometry */
	uint64_t size_bytes;		/* geometry for unlocked readers */
	uint32_t cluster_bytes;
	uint8_t *level_of;	/* per virtual cluster; atomic access */
	size_t align;		/* I/O alignment of the top delta */
	struct pf_aio *aio;	/* the I/O engine of every delta's file */
	struct pf_delta_io io;	/* how deltas are opened */
	struct rbucket rb[RLOCK_BUCKETS];

	/* BAT of the top delta (top->d->meta), page aligned, whole pages;
	 * the header lives in its first 64 bytes.  Entries: atomic access;
	 * pages and the dirty set: protected by bat_lock. */
	uint8_t *top_meta;
	size_t meta_pages;
	pthread_mutex_t bat_lock;
	struct pf_header top_hdr;	/* in-memory header, under bat_lock */
	uint8_t *page_dirty;		/* under bat_lock */
	uint32_t *dirty_list;		/* under bat_lock */
	size_t n_dirty;			/* under bat_lock */
	uint32_t *pending_free;		/* unmapped this txn, under bat_lock */
	size_t n_pending, cap_pending;
	uint64_t top_mapped;		/* under bat_lock */

	/* Allocation in the top file, protected by alloc_lock. */
	pthread_mutex_t alloc_lock;
	uint64_t alloc_head;	/* first never-used cluster */
	uint64_t file_clusters;	/* current length of the top file */
	uint32_t *free_list;	/* punched, unreferenced clusters */
	size_t n_free, cap_free;

	/* Epochs (see the file comment). */
	atomic_uint epoch;
	atomic_uint epoch_count[2];
	atomic_bool epoch_waiting;
	pthread_mutex_t epoch_lock;
	pthread_cond_t epoch_drained;

	/* Writeback. */
	pthread_mutex_t commit_lock;	/* one commit at a time */
	pthread_mutex_t wb_lock;
	pthread_cond_t wb_kick;		/* stop */
	pthread_cond_t wb_done;		/* done advanced */
	uint64_t started, done;		/* commit sequence numbers */
	uint64_t want;			/* a flush waits for this commit */
	bool committing;		/* a thread runs commit started */
	bool wb_stop, wb_running;
	pthread_t wb_thread;
	unsigned commit_ms;
	bool no_direct;
	bool read_only;			/* writes nothing (pf_stack_opts) */
	atomic_bool failed;		/* W7 */
	atomic_bool frozen;		/* the gate is closed (below) */
	atomic_uint_fast64_t commits, datasyncs;

	/* The gate: every request holds it while it runs; a freeze closes
	 * it and waits for the requests inside and the in-place writes in
	 * flight (see gate_freeze()).  Held writes step out while they wait. */
	atomic_uint gate_active;
	atomic_uint writes_inflight;
	pthread_mutex_t gate_lock;
	pthread_cond_t gate_open;	/* frozen went false */
	pthread_cond_t gate_drained;	/* active or inflight may be 0 */
	pthread_mutex_t struct_lock;	/* one structural command */
	atomic_uint_fast64_t freezes, stall_last_us, stall_max_us;

	/* Writes held for lack of space on the host (CTL-8). */
	pthread_mutex_t space_lock;
	pthread_cond_t space_cv;	/* space may have been freed */
	atomic_uint held;
	atomic_uint_fast64_t enospc_events;
	unsigned enospc_timeout_s;
	bool (*stopping)(void *ctx);
	void *stopping_ctx;
	void (*event)(void *ctx, const char *type, const char *text);
	void *event_ctx;
	void (*crash_point)(void *ctx, const char *name);	/* tests */
	void *crash_point_ctx;

	/* The sealer (seal.c). */
	struct pf_csum_alg *seal_alg;
	bool no_sealer;			/* pf_stack_opts.no_sealer */
	pthread_mutex_t seal_lock;	/* held by a sealing pass and by
					 * structural commands */
	atomic_uint seal_holdoff;	/* structural commands waiting */
	pthread_mutex_t seal_mu;	/* the fields below */
	pthread_cond_t seal_kick;
	bool seal_pending, seal_stop, seal_running;
	pthread_t seal_thread;
	atomic_uint_fast64_t seal_done, seal_total;
};

/*
 * Crash points: the boundaries between the steps of the update sequences
 * (open, allocation, copy-on-write, discard, commit, snapshot, merge down
 * and up, close), named for the test hook pf_stack_opts.crash_point.
 * One list; HACKING ("Crash points") says what a crash at each proves.
 */
#define CRASH_POINTS(X)							\
	X(CP_OPEN_LEAK_PUNCHED,		"open.leak-punched")		\
	X(CP_OPEN_TAIL_TRIMMED,		"open.tail-trimmed")		\
	X(CP_OPEN_INUSE_WRITTEN,	"open.in-use-written")		\
	X(CP_OPEN_INUSE_SYNCED,		"open.in-use-synced")		\
	X(CP_ALLOC_FILE_GROWN,		"alloc.file-grown")		\
	X(CP_ALLOC_DATA_WRITTEN,	"alloc.data-written")		\
	X(CP_COW_DATA_WRITTEN,		"cow.data-written")		\
	X(CP_ALLOC_MAPPED,		"alloc.mapped")			\
	X(CP_DISCARD_PUNCHED,		"discard.punched")		\
	X(CP_DISCARD_UNMAPPED,		"discard.unmapped")		\
	X(CP_DISCARD_SHADOWED,		"discard.shadowed")		\
	X(CP_COMMIT_DATA_SYNCED,	"commit.data-synced")		\
	X(CP_COMMIT_BAT_WRITTEN,	"commit.bat-page-written")	\
	X(CP_COMMIT_BAT_SYNCED,		"commit.bat-synced")		\
	X(CP_COMMIT_FREED_PUNCHED,	"commit.freed-punched")		\
	X(CP_SNAP_DELTA_CREATED,	"snap.delta-created")		\
	X(CP_SNAP_DD_TMP,		"snap.dd-tmp-written")		\
	X(CP_SNAP_COMMITTED,		"snap.old-top-committed")	\
	X(CP_SNAP_DD_RENAMED,		"snap.dd-renamed")		\
	X(CP_MD_SUM_DROPPED,		"merge-down.manifest-dropped")	\
	X(CP_MD_MARKED,			"merge-down.marked-temporary")	\
	X(CP_MD_GROWN,			"merge-down.parent-grown")	\
	X(CP_MD_COPIED,			"merge-down.copied")		\
	X(CP_MD_COPY_SYNCED,		"merge-down.copy-synced")	\
	X(CP_MD_BAT_WRITTEN,		"merge-down.bat-page-written")	\
	X(CP_MD_BAT_SYNCED,		"merge-down.bat-synced")	\
	X(CP_MD_DD_TMP,			"merge-down.dd-tmp-written")	\
	X(CP_MD_DD_RENAMED,		"merge-down.dd-renamed")	\
	X(CP_MD_SUM_TMP,		"merge-down.manifest-tmp-synced") \
	X(CP_MD_SUM_STORED,		"merge-down.manifest-renamed")	\
	X(CP_MD_GONE_SUM_DROPPED,	"merge-down.child-manifest-dropped") \
	X(CP_MD_UNLINKED,		"merge-down.child-unlinked")	\
	X(CP_MU_COPIED,			"merge-up.copied")		\
	X(CP_MU_COMMITTED,		"merge-up.committed")		\
	X(CP_MU_DD_TMP,			"merge-up.dd-tmp-written")	\
	X(CP_MU_DD_RENAMED,		"merge-up.dd-renamed")		\
	X(CP_MU_GONE_SUM_DROPPED,	"merge-up.parent-manifest-dropped") \
	X(CP_MU_UNLINKED,		"merge-up.parent-unlinked")	\
	X(CP_MU_BASE_LINKED,		"merge-up.base-name-linked")	\
	X(CP_MU_BASE_NAMED,		"merge-up.base-name-committed")	\
	X(CP_MU_OLD_NAME_UNLINKED,	"merge-up.old-name-unlinked")	\
	X(CP_CLOSE_COMMITTED,		"close.committed")		\
	X(CP_CLOSE_TRIMMED,		"close.tail-trimmed")		\
	X(CP_CLOSE_INUSE_WRITTEN,	"close.in-use-cleared")

#define CP_ENUM(id, name)	id,
#define CP_NAME(id, name)	name,
/* CP_NONE: a step that is no crash point in its sequence */
enum crash_point { CP_NONE, CRASH_POINTS(CP_ENUM) CP_COUNT };
/* indexed by enum crash_point (stack.c) */
extern const char *const crash_point_names[];

/* Step @cp is done: a test may cut the power here. */
static inline void crash_point(struct pf_stack *s, enum crash_point cp)
{
	if (s->crash_point && cp != CP_NONE)
		s->crash_point(s->crash_point_ctx, crash_point_names[cp]);
}

/* Small helpers */

static inline uint8_t level_load(const struct pf_stack *s, uint32_t idx)
{
	return __atomic_load_n(&s->level_of[idx], __ATOMIC_ACQUIRE);
}

static inline void level_store(struct pf_stack *s, uint32_t idx, uint8_t l)
{
	__atomic_store_n(&s->level_of[idx], l, __ATOMIC_RELEASE);
}

/* File cluster that level @l maps @idx to, 0 if none. */
static inline uint32_t level_clu(const struct pf_stack *s, unsigned l,
				 uint32_t idx)
{
	return pf_delta_clu(s->levels[l].d, idx);
}

static inline uint64_t round_down(uint64_t v, uint64_t a)
{
	return v - v % a;
}

static inline uint64_t round_up(uint64_t v, uint64_t a)
{
	return round_down(v + a - 1, a);
}

static inline bool aligned(const struct pf_stack *s, const void *buf,
			   uint64_t off, uint64_t len)
{
	return !((uintptr_t)buf % s->align) && !(off % s->align) &&
	       !(len % s->align);
}

/* A read or write of the stack, in pieces of one cluster each. */

struct op;

struct seg {
	struct op *op;
	struct pf_aio_req aio;
	struct rlock rl;
	bool locked;
	size_t len;
};

struct op {
	struct pf_stack *s;
	pf_stack_done_fn done;
	void *arg;
	atomic_int pending;	/* segments in flight + the submitter */
	atomic_int err;
	unsigned epoch;
	bool gated;		/* holds the gate (every request but internal
				 * writes of a discard, which holds it) */
	struct seg segs[];
};

/* Crash points of the delta verbs' steps in one update sequence. */
struct cp_hook {
	struct pf_stack *s;
	enum crash_point at[PF_DELTA_STEPS];
};

#define CP_HOOK(s, ...)							\
	(struct pf_delta_hook){						\
		stack_cp_step, &(struct cp_hook){ (s), { __VA_ARGS__ } } }

/* stack.c: helpers of every room, the I/O path, open and close */
void *stack_alloc_aligned(const struct pf_stack *s, size_t len);
void PF_PRINTF(3, 4) stack_emit(struct pf_stack *s, const char *type,
				const char *fmt, ...);
void stack_set_failed(struct pf_stack *s, const char *what, int err);
int stack_write_allocating(struct pf_stack *s, uint32_t idx, uint64_t in_off,
			   const void *src, size_t len);
void stack_cp_step(void *ctx, enum pf_delta_step step);
void stack_use_direct(struct pf_stack *s, struct pf_delta *d,
		      size_t max_align);

/* gate.c: epochs, the gate and freezing, range locks, space holds */
unsigned epoch_enter(struct pf_stack *s);
void epoch_exit(struct pf_stack *s, unsigned e);
void epoch_flip_and_drain(struct pf_stack *s);
void gate_exit(struct pf_stack *s);
void gate_enter(struct pf_stack *s);
void gate_inflight_done(struct pf_stack *s);
uint64_t gate_freeze(struct pf_stack *s);
uint64_t gate_thaw(struct pf_stack *s, uint64_t since_us);
void rlock_acquire(struct pf_stack *s, struct rlock *r, uint32_t idx,
		   uint64_t start, uint64_t end);
void rlock_release(struct pf_stack *s, struct rlock *r);
int space_hold(struct pf_stack *s, struct op *op, uint64_t off,
	       size_t len, uint64_t *since_us);
void space_freed(struct pf_stack *s);

/* map.c: the top's BAT, the views, allocation in the top file */
void map_page_dirty(struct pf_stack *s, uint32_t page);
int map_top_set(struct pf_stack *s, uint32_t idx, uint32_t clu,
		uint8_t new_level);
int map_punch(struct level *lv, uint64_t off, uint64_t len);
int map_free_push(struct pf_stack *s, uint32_t clu);
int map_space_for(struct pf_stack *s, uint64_t first, uint64_t n);
int map_cluster_alloc(struct pf_stack *s, uint32_t *clu);
uint8_t map_view_level(const struct pf_stack *s, uint8_t view, uint32_t idx);
uint8_t map_view_find(const struct pf_stack *s, const char *guid);
/* Open handles of the view of @guid.  Locking: levels_lock held. */
unsigned map_view_opens(const struct pf_stack *s, const char *guid);
bool map_lower_maps(const struct pf_stack *s, uint32_t idx);

/* writeback.c: commits (W1-W4), the writeback thread */
int wb_datasync(struct pf_stack *s);
int wb_commit_locked(struct pf_stack *s, bool force);
int wb_commit(struct pf_stack *s, bool force);
void *wb_main(void *arg);

/* snapshot.c: what the structural commands share */
int structural_begin(struct pf_stack *s, struct pf_why *why);
void structural_end(struct pf_stack *s);

/* seal.c */
int seal_start(struct pf_stack *s);
void seal_stop(struct pf_stack *s);
void seal_kick(struct pf_stack *s);
void seal_hold(struct pf_stack *s);
void seal_release(struct pf_stack *s);
int structural_dd_switch(struct pf_stack *s, bool *durable);
int structural_not_durable(struct pf_why *why, const char *what);
int structural_dd_current(struct pf_stack *s, struct pf_dd **out,
			  struct pf_why *why);

/*
 * Debug builds (PF_DEBUG): check that the fields of @s agree with each
 * other and with the state the stack is in (the idea of SQLite's
 * assert_pager_state()); called at the transitions (open, start, freeze,
 * thaw, a switch of the levels, close).  @where names the caller.
 * Production builds compile it away.
 */
#ifdef PF_DEBUG
void stack_check_state(struct pf_stack *s, const char *where);
#else
static inline void stack_check_state(struct pf_stack *s, const char *where)
{
	(void)s;
	(void)where;
}
#endif

#endif /* PF_STACK_I_H */
