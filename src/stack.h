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

#include "util.h"

struct pf_stack;

struct pf_file_factory;

struct pf_stack_opts {
	const char *dir;	/* image directory */
	unsigned commit_ms;	/* periodic commit interval; 0 = 1000 */
	bool no_direct;		/* do not use O_DIRECT on the deltas */
	/* how delta files are accessed; NULL: plain descriptors (tests
	 * pass crash-simulating or fault-injecting files) */
	const struct pf_file_factory *factory;
};

/* Completion of a read or write: @err is 0 or -errno. */
typedef void (*pf_stack_done_fn)(void *arg, int err);

/* Lifecycle */

/*
 * Lock and open the image of @o->dir: load the descriptor and deltas,
 * validate them (a corrupt image is refused with -EUCLEAN), recover an
 * image that was not closed cleanly (W8: committed state, leaked clusters
 * reclaimed), then set the in-use flag of the top delta and sync it.
 * Starts no thread.
 * Returns: 0; -EBUSY (locked by another daemon or command); -EUCLEAN;
 * -EINVAL (bad descriptor or header); other -errno.  @why says what.
 */
PF_MUST_CHECK int pf_stack_open(const struct pf_stack_opts *o,
				struct pf_stack **out, struct pf_why *why);

/* Start the I/O completion and writeback threads (after daemonizing).
 * Until then every call runs synchronously in its caller. */
PF_MUST_CHECK int pf_stack_start(struct pf_stack *s);

/*
 * Wait for every request in flight, stop the threads, commit, trim the
 * preallocated tail, clear the in-use flag and sync, close.  Returns 0,
 * or -EIO if the image was in the failed state (W7) or the final commit
 * failed; the stack is freed either way.
 */
int pf_stack_close(struct pf_stack *s);

/* Data path */

/* Virtual size in bytes. */
uint64_t pf_stack_size(const struct pf_stack *s);

/* Preferred alignment of buffers, offsets and lengths (bytes). */
size_t pf_stack_align(const struct pf_stack *s);

/*
 * Read or write @len bytes at virtual offset @off; the range must lie
 * inside the disk.  @done runs exactly once, possibly before these
 * return, possibly on the completion thread.  Any alignment works;
 * pf_stack_align() alignment of buffer, offset and length is fastest.
 * Writes answer before their BAT entry is durable (W3: like a disk with
 * a volatile cache); pf_stack_flush() makes them durable.
 */
void pf_stack_read(struct pf_stack *s, void *buf, size_t len, uint64_t off,
		   pf_stack_done_fn done, void *arg);
void pf_stack_write(struct pf_stack *s, const void *buf, size_t len,
		    uint64_t off, pf_stack_done_fn done, void *arg);

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
 * 0 or -errno.
 */
PF_MUST_CHECK int pf_stack_discard(struct pf_stack *s, uint64_t off,
				   uint64_t len);

/*
 * W3 barrier: returns once a commit that began after the call has made
 * every write answered before the call durable, with its BAT entries.
 * Concurrent callers share commits (group commit).  Returns 0 or -EIO
 * (failed state, W7).
 */
PF_MUST_CHECK int pf_stack_flush(struct pf_stack *s);

/* Status */

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
};

void pf_stack_stat(struct pf_stack *s, struct pf_stack_stat *st);

#endif /* PF_STACK_H */
