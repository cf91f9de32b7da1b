/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The delta stack of an image directory served as one flat disk: reads
 * resolve top to base through a merged map, writes go to the top delta
 * (allocating, with copy-on-write from lower deltas), and a writeback
 * thread commits BAT pages by rules W1-W4.  This is the engine behind the
 * FUSE front end; it knows nothing of FUSE.
 */
#ifndef PF_STACK_H
#define PF_STACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "descriptor.h"
#include "util.h"

struct pf_stack;

struct pf_file_factory;

struct pf_stack_opts {
	const char *dir;	/* image directory */
	unsigned commit_ms;	/* periodic commit interval; 0 = 1000 */
	bool no_direct;		/* do not use O_DIRECT on the deltas */
	/* open every delta read-only, take the image lock shared, write
	 * nothing (ploopfs -o ro); writes and structural commands fail
	 * with -EROFS */
	bool read_only;
	/* how delta files are accessed; NULL: plain descriptors (tests
	 * pass crash-simulating or fault-injecting files) */
	const struct pf_file_factory *factory;
	/* a write held for lack of host space fails with EIO after this
	 * many seconds; 0: held until space is freed (CTL-8) */
	unsigned enospc_timeout_s;
	/* polled by held writes: true once the daemon is stopping */
	bool (*stopping)(void *ctx);
	void *stopping_ctx;
	/* events (held writes, failed state, snapshots, merges); called
	 * from any thread, must not block */
	void (*event)(void *ctx, const char *type, const char *text);
	void *event_ctx;
	/* crash-simulation tests: called at every named step boundary of
	 * the update sequences (pf_stack_crash_points()), in the thread
	 * that finished the step, possibly with engine locks held: must
	 * not call into the stack.  NULL: no cost. */
	void (*crash_point)(void *ctx, const char *name);
	void *crash_point_ctx;
	/* digest of the manifests of sealed snapshots (manifest.h): any
	 * name OpenSSL knows; NULL: sha256 */
	const char *seal_algorithm;
	/* no sealer thread: snapshots are sealed by pf_stack_seal() or
	 * ploopctl verify only (tests, and ploopfs -o noseal) */
	bool no_sealer;
};

/* The names of all crash points (pf_stack_opts.crash_point), *@n of them.
 * HACKING ("Crash points") says what a crash at each one proves. */
const char *const *pf_stack_crash_points(size_t *n);

/* Completion of a read or write: @err is 0 or -errno. */
typedef void (*pf_stack_done_fn)(void *arg, int err);

/* Lifecycle */

/*
 * Lock and open the image of @o->dir: load the descriptor and deltas,
 * validate them (a corrupt image is refused with -EUCLEAN), recover an
 * image that was not closed cleanly (W8: committed state, leaked clusters
 * reclaimed), then set the in-use flag of the top delta and sync it.
 * With @o->read_only the lock is shared, every delta is opened O_RDONLY
 * and the recovery is done in memory only: nothing in the image
 * directory changes, from open to close.
 * Starts no thread.
 * Returns: 0; -EBUSY (locked by another daemon or command); -EUCLEAN;
 * -EINVAL (bad descriptor or header); other -errno.  @why says what.
 */
PF_MUST_CHECK int pf_stack_open(const struct pf_stack_opts *o,
				struct pf_stack **out, struct pf_why *why);

/* Start the I/O completion and writeback threads (after daemonizing;
 * a read-only stack has no writeback thread).  Until then every call
 * runs synchronously in its caller. */
PF_MUST_CHECK int pf_stack_start(struct pf_stack *s);

/*
 * Wait for every request in flight, stop the threads, commit, trim the
 * preallocated tail, clear the in-use flag and sync, close (read-only:
 * only the waiting and the closing).  Returns 0, or -EIO if the image
 * was in the failed state (W7) or the final commit failed; the stack is
 * freed either way.
 */
int pf_stack_close(struct pf_stack *s);

/* Data path */

/* Virtual size in bytes. */
uint64_t pf_stack_size(const struct pf_stack *s);

/*
 * Read or write @len bytes at virtual offset @off; the range must lie
 * inside the disk.  @done runs exactly once, possibly before these
 * return, possibly on the completion thread.  Any alignment works;
 * buffers, offsets and lengths aligned to 4 KiB are fastest.
 * Writes answer before their BAT entry is durable (W3: like a disk with
 * a volatile cache); pf_stack_flush() makes them durable.  On a
 * read-only stack writes fail with -EROFS.
 */
void pf_stack_read(struct pf_stack *s, void *buf, size_t len, uint64_t off,
		   pf_stack_done_fn done, void *arg);
void pf_stack_write(struct pf_stack *s, const void *buf, size_t len,
		    uint64_t off, pf_stack_done_fn done, void *arg);

/*
 * Whether a write of @len bytes of @buf at @off would hold up the calling
 * thread: it allocates clusters, copies a lower delta's data up, patches
 * an unaligned edge or may wait for host space (CTL-8).  Writes into
 * clusters the top already has, aligned, are submitted and return at
 * once.  A hint: the answer may be stale by the time the write runs.
 */
bool pf_stack_write_waits(struct pf_stack *s, const void *buf, size_t len,
			  uint64_t off);

/*
 * A request that is alone is done in the calling thread (no hand-off to
 * the completion thread).  A caller about to submit several requests
 * from one thread brackets them with these, so that each goes to libaio
 * instead of waiting for the one before it.  Calls nest.
 */
void pf_stack_batch(struct pf_stack *s, bool begin);

/* The same, waiting for completion.  Return 0 or -errno. */
PF_MUST_CHECK int pf_stack_pread(struct pf_stack *s, void *buf, size_t len,
				 uint64_t off);
PF_MUST_CHECK int pf_stack_pwrite(struct pf_stack *s, const void *buf,
				  size_t len, uint64_t off);

/*
 * Make [@off, @off + @len) read as zeros (fallocate PUNCH_HOLE and
 * ZERO_RANGE), also where a lower delta holds data.  Whole clusters of
 * the top delta that no lower delta maps are unmapped and their space
 * returned (W4: after the unmapping commit is durable).  Blocks; returns
 * 0 or -errno (-EROFS on a read-only stack).
 */
PF_MUST_CHECK int pf_stack_discard(struct pf_stack *s, uint64_t off,
				   uint64_t len);

/*
 * W3 barrier: returns once a commit that began after the call has made
 * every write answered before the call durable, with its BAT entries.
 * Concurrent callers share commits (group commit).  Returns 0 or -EIO
 * (failed state, W7).  A read-only stack has nothing to flush: 0.
 */
PF_MUST_CHECK int pf_stack_flush(struct pf_stack *s);

/*
 * Read from the read-only view of snapshot @guid: the disk as it was
 * when the snapshot was taken.  Fails with -ESTALE once that snapshot is
 * no longer in the stack (deleted, or being deleted).
 */
void pf_stack_read_view(struct pf_stack *s, const char *guid, void *buf,
			size_t len, uint64_t off, pf_stack_done_fn done,
			void *arg);
/* The same, waiting for completion.  Returns 0 or -errno. */
PF_MUST_CHECK int pf_stack_pread_view(struct pf_stack *s, const char *guid,
				      void *buf, size_t len, uint64_t off);

/*
 * lseek(2)'s SEEK_DATA (@data) or SEEK_HOLE on the disk (@guid NULL) or
 * on the view of snapshot @guid: into *@out the first offset from @off
 * on that some delta maps (data) or none maps (hole; the size if the
 * disk is mapped to its end), at cluster granularity.  A concurrent
 * write may map a hole meanwhile: the answer is as of the call.
 * Returns: 0; -ENXIO (@off at or past the end, or no data from @off on);
 * -ESTALE (no such view any more).
 */
PF_MUST_CHECK int pf_stack_seek(struct pf_stack *s, const char *guid,
				uint64_t off, bool data, uint64_t *out);

/*
 * A handle of the view of snapshot @guid is opened (the FUSE open of
 * MNT/snapshots/<guid>) or closed (its release): while any is open, the
 * snapshot is in use and a delete refuses it (-EBUSY) unless forced.
 * Fails with -ENOENT when the snapshot has no view (any more: deleted,
 * being deleted, or the top), -ENOMEM.  Every successful open is closed
 * once.
 */
PF_MUST_CHECK int pf_stack_view_open(struct pf_stack *s, const char *guid);
void pf_stack_view_close(struct pf_stack *s, const char *guid);

/* Structural commands.  One at a time (a second gets -EBUSY, CTL-5); they
 * run in the caller's thread while I/O goes on, and stop I/O only for a
 * short freeze (CTL-3).  A read-only stack refuses them with -EROFS. */

/*
 * Online snapshot: the current top becomes read-only snapshot @guid
 * (NULL: a fresh one; any form pf_guid_canon() accepts) and a new empty
 * top delta takes its place.
 * Prepare (new delta created and synced, W6; new descriptor written to
 * its tmp file), freeze (drain, commit the old top), switch (descriptor
 * renamed; nothing after that can fail), thaw.  Any failure before the
 * rename leaves the stack and the files as they were.  @guid_out gets
 * the snapshot's GUID.  Returns 0 or -errno; @why says what.
 */
PF_MUST_CHECK int pf_stack_snapshot(struct pf_stack *s, const char *guid,
				    char *guid_out, struct pf_why *why);

struct pf_stack_merge_info {
	bool down;		/* child merged into the deleted snapshot's
				 * file (else the snapshot's clusters were
				 * copied up into the top) */
	uint64_t clusters;	/* clusters copied */
	uint64_t bytes;
	uint64_t usec;		/* whole operation */
	uint64_t stall_us;	/* I/O stall of the final switch */
};

/* pf_stack_delete_snapshot() flags */
#define PF_STACK_DELETE_FORCE	0x1u	/* even while its view is open */

/*
 * Delete snapshot @guid (any form pf_guid_canon() accepts; -EINVAL for
 * another) by merging its only child into it (W5).  A snapshot whose
 * view has open handles (pf_stack_view_open()) is in use: -EBUSY, unless
 * @flags has PF_STACK_DELETE_FORCE; once a delete has begun, the view
 * opens no more, and reads of handles open on a forced delete fail
 * (-ESTALE) from when the snapshot leaves the view.  A
 * read-only child is copied down into the snapshot's file, which then
 * takes the child's GUID (the snapshot is marked <Temporary/> first, so
 * an interrupted delete is completed by running it again); when the
 * child is the top, the snapshot's clusters the top lacks are copied up
 * into it.  The descriptor changes last, then the unused file goes.
 */
PF_MUST_CHECK int pf_stack_delete_snapshot(struct pf_stack *s,
					   const char *guid, unsigned flags,
					   struct pf_stack_merge_info *info,
					   struct pf_why *why);

/* Status */

struct pf_stack_level {
	char guid[PF_GUID_LEN + 1];
	char file[256];
	uint64_t mapped;	/* clusters mapped in this delta */
	bool top;
	bool hidden;		/* being deleted: no snapshot view */
};

/* Fill up to @n levels, base first; returns how many there are. */
size_t pf_stack_levels(struct pf_stack *s, struct pf_stack_level *out,
		       size_t n);

/* All levels, base first, in *@out (malloc'ed), *@n of them.  Returns 0
 * or -ENOMEM. */
PF_MUST_CHECK int pf_stack_levels_all(struct pf_stack *s,
				      struct pf_stack_level **out, size_t *n);

struct pf_stack_stat {
	uint64_t size_bytes;
	uint32_t cluster_bytes;
	unsigned deltas;
	uint64_t top_clusters;		/* mapped in the top delta */
	uint64_t file_clusters;		/* length of the top file */
	uint64_t free_clusters;		/* reusable holes in the top file */
	uint64_t dirty_pages;		/* BAT pages awaiting commit */
	uint64_t commits;		/* commits that wrote BAT pages */
	uint64_t datasyncs;		/* fdatasync calls on the top delta */
	bool failed;			/* W7 sticky failed state */
	bool read_only;			/* pf_stack_opts.read_only */
	bool frozen;			/* I/O stopped for a switch */
	unsigned held;			/* writes held for lack of space */
	uint64_t enospc_events;		/* times a write found no space */
	uint64_t freezes;		/* switches so far */
	uint64_t stall_last_us, stall_max_us;	/* their I/O stalls */
	unsigned unsealed;		/* read-only levels without manifest */
	uint64_t seal_done, seal_total;	/* bytes of the level being sealed
					 * or verified (0, 0: none) */
};

void pf_stack_stat(struct pf_stack *s, struct pf_stack_stat *st);

/*
 * Seal now, in the caller, every read-only level that has no manifest
 * (what the sealer thread does in the background).  Returns 0, -EROFS,
 * or the failure (@why).
 */
PF_MUST_CHECK int pf_stack_seal(struct pf_stack *s, struct pf_why *why);

/* One level as pf_stack_verify() found it. */
struct pf_stack_verified {
	const char *guid, *file;
	/* ok, sealed (had none: sealed now), mismatch, damaged (the
	 * manifest), unsealed (none, read-only mount), top (not verified),
	 * deleting (not verified), failed */
	const char *state;
	uint64_t clusters;	/* read */
	const char *note;	/* why, or NULL */
};

struct pf_stack_verify_cb {
	/* each level, base first, before it is read; nonzero stops */
	int (*level)(void *ctx, const char *guid, const char *file);
	/* each cluster that does not match, before its level's delta() */
	void (*bad)(void *ctx, const char *guid, uint32_t vclu,
		    const char *problem);
	/* each level, base first; nonzero stops the verify */
	int (*delta)(void *ctx, const struct pf_stack_verified *r);
	/* asked between clusters: true stops the verify (-ECANCELED); may
	 * be NULL */
	bool (*cancel)(void *ctx);
	void *ctx;
};

/*
 * Verify every read-only level against its manifest, sealing those that
 * have none (not on a read-only mount), while I/O goes on; a structural
 * command: one at a time with snapshots and deletes.  Progress is in
 * pf_stack_stat's seal_done/seal_total.  Returns 0, -EBUSY, or delta()'s
 * return; what was found goes to @cb.
 */
PF_MUST_CHECK int pf_stack_verify(struct pf_stack *s,
				  const struct pf_stack_verify_cb *cb,
				  struct pf_why *why);

#endif /* PF_STACK_H */
