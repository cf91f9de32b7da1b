/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Crash-simulating delta files for tests (the idea of SQLite's test6.c):
 * each file is its durable content (the real file) plus a volatile cache
 * of the writes, punches and truncations since its last datasync, which
 * reads see.  At the crash point a random subset of every file's cached
 * operations reaches the real file (writes optionally torn into 512-byte
 * or 4 KiB pieces, each kept or lost on its own) and the rest is dropped;
 * from then on every operation fails with EIO, as if the power went.
 * The files can then be reopened as after a power cut.
 */
#ifndef PF_IO_CRASH_H
#define PF_IO_CRASH_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "file.h"

#define CRASH_MAX_FILES	16

struct crash_file;

struct crash_world {
	pthread_mutex_t lock;
	uint64_t rng;
	long countdown;		/* mutating operations until the crash; <0 never */
	unsigned torn;		/* 0, 512 or 4096: granularity of torn writes */
	bool crashed;
	struct crash_file *files[CRASH_MAX_FILES];
	unsigned n_files;
	uint64_t ops;		/* mutating operations seen */
	uint64_t kept, lost;	/* cached pieces applied / dropped at the crash */
	struct pf_file_factory factory;	/* hand this to pf_stack_open */
};

void crash_world_init(struct crash_world *w, uint64_t seed, long countdown,
		      unsigned torn);
/* Crash now (if not yet crashed). */
void crash_now(struct crash_world *w);
void crash_world_destroy(struct crash_world *w);

#endif /* PF_IO_CRASH_H */
