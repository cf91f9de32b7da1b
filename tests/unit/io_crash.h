/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Crash-simulating delta files for tests (the idea of SQLite's test6.c):
 * each file is its durable content (the real file) plus a volatile cache
 * of the writes, punches, allocations and truncations since its last
 * datasync, which reads see.  The cache is kept per inode, as the page
 * cache is: every pf_file open on the same file shares it.  It has two
 * parts: a scratch copy of the file (an O_TMPFILE) that reads and writes
 * go to, and the list of the operations, in the order they completed,
 * with the data of the writes.  A datasync applies the list to the real
 * file.  At the crash point a random subset of every list reaches the
 * real file (writes optionally torn into 512-byte or 4 KiB pieces, each
 * kept or lost on its own) and the rest is dropped; from then on every
 * operation fails with EIO, as if the power went.  The files can then be
 * reopened as after a power cut.
 *
 * Asynchronous requests (->submit) go to the scratch copy through the
 * same engine as production files (pf_aio_submit: in the caller, or
 * libaio once the stack is started), so the crash tests drive the
 * production I/O path.  A write enters the list when it completes, never
 * before: a datasync that overtakes a write in flight does not make it
 * durable, as on a real disk.
 *
 * The power goes when the countdown of mutating operations runs out, or
 * when a test calls crash_now() (test_crash does it from the stack's
 * crash-point hook).  At that instant, with the world's lock held, the
 * world calls on_crash: test_crash copies the image directory there, so
 * that what the stack does afterwards with real system calls
 * (DiskDescriptor.xml, new deltas, unlink) cannot reach the image it
 * checks either.
 */
#ifndef PF_IO_CRASH_H
#define PF_IO_CRASH_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "file.h"

#define CRASH_MAX_FILES	16

struct crash_inode;

struct crash_world {
	pthread_mutex_t lock;
	uint64_t rng;
	long countdown;		/* mutating operations until the crash; <0 never */
	unsigned torn;		/* 0, 512 or 4096: granularity of torn writes */
	bool crashed;
	struct crash_inode *inodes[CRASH_MAX_FILES];	/* files open */
	const char *copy_dir;	/* where the scratch copies go (/tmp) */
	uint64_t ops;		/* mutating operations seen */
	uint64_t kept, lost;	/* cached pieces applied / dropped at the crash */
	/* called once at the crash, after the kept pieces reached the real
	 * files, with the lock held and from the thread that crashed: it may
	 * read the real files but must not use the world's files */
	void (*on_crash)(void *ctx);
	void *on_crash_ctx;
	struct pf_file_factory factory;	/* hand this to pf_stack_open */
};

void crash_world_init(struct crash_world *w, uint64_t seed, long countdown,
		      unsigned torn);
/* Crash now (if not yet crashed); any thread. */
void crash_now(struct crash_world *w);
void crash_world_destroy(struct crash_world *w);

#endif /* PF_IO_CRASH_H */
