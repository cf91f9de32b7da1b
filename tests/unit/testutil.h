/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the unit tests share: image set-up (abort() on any failure),
 * data patterns, opening a stack, writes in flight together. */
#ifndef PF_TESTUTIL_H
#define PF_TESTUTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stack.h"

/* Byte @off of the deterministic pattern @seed, and @len bytes of it
 * from @off into @buf. */
uint8_t tu_pat(unsigned seed, uint64_t off);
void tu_fill(uint8_t *buf, size_t len, unsigned seed, uint64_t off);

/* A fresh image of @size bytes in a new directory below @root
 * (<root>/imgN); the name is malloc'ed. */
char *tu_new_image(const char *root, uint64_t size, uint32_t cluster);

/* pf_stack_open(@o), then pf_stack_start() if @start (a failed start
 * aborts).  NULL if the open failed, with the reason in a TAP comment
 * and the error in *@err (may be NULL). */
struct pf_stack *tu_open_stack(const struct pf_stack_opts *o, bool start,
			       int *err);

/* Writes in flight together: submitted as one batch (pf_stack_batch),
 * so that in-place ones go through libaio, then waited for. */
struct tu_burst {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	unsigned left;
	int err;	/* the first error */
};

/* Submit @n writes, @bufs[i] of @lens[i] bytes at @offs[i]. */
void tu_burst_submit(struct tu_burst *b, struct pf_stack *s, unsigned n,
		     uint8_t *const *bufs, const size_t *lens,
		     const uint64_t *offs);
/* Wait for every write of the burst; 0 or its first error. */
int tu_burst_wait(struct tu_burst *b);

/* mkdir @dir and create an empty image of @size bytes in it. */
void tu_make_image(const char *dir, uint64_t size, uint32_t cluster);

/* Offline snapshot of the image in @dir, as ploopctl snapshot does. */
void tu_snapshot(const char *dir);

/* The same; @guid (PF_GUID_LEN + 1 bytes) gets the snapshot's GUID. */
void tu_snapshot_guid(const char *dir, char *guid);

/* mkdir @to and copy the regular files of the flat directory @from into
 * it, holes kept as holes.  Only system calls: safe in any thread. */
void tu_copy_dir(const char *from, const char *to);

/* Remove the flat directory @dir and its files, if it exists. */
void tu_remove_dir(const char *dir);

#endif /* PF_TESTUTIL_H */
