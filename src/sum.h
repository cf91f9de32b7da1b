/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Digests of a disk's content, read in parallel: the block digest
 * (csum.h) and the plain digest of every byte, of a chain of deltas (the
 * disk or a snapshot, base first) or of a raw file; and the digest of
 * each allocated cluster of one delta (its manifest, manifest.h).
 *
 * Worker threads read chunks with large requests (O_DIRECT where the
 * file allows it) and digest their blocks; the calling thread takes the
 * results in the disk's order.  Unallocated ranges are neither read nor
 * hashed: a chunk no delta maps (or, in a raw file, a hole that
 * SEEK_DATA skips) costs its zero digests only.
 */
#ifndef PF_SUM_H
#define PF_SUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "csum.h"
#include "delta.h"
#include "util.h"

/* most worker threads */
#define PF_SUM_THREADS_MAX	64

struct pf_sum_opts {
	const struct pf_csum_alg *alg;
	unsigned threads;	/* 0: one per online CPU (at most 16) */
	/* called in the calling thread as the work advances: @done of
	 * @total bytes (may be NULL) */
	void (*progress)(void *ctx, uint64_t done, uint64_t total);
	/* asked in the calling thread before each unit: true stops the
	 * work with -ECANCELED (may be NULL) */
	bool (*cancel)(void *ctx);
	void *ctx;
};

/* What to digest: @n deltas (base first; a read through them finds the
 * topmost that maps a cluster), or, with n == 0, the file @fd. */
struct pf_sum_src {
	struct pf_delta *const *chain;
	size_t n;
	int fd;
	uint64_t size;		/* bytes of the disk (or of the file) */
};

/*
 * The block digest of @src into @md (pf_csum_alg_size bytes).
 * Returns 0 or -errno (a read failed or came short: @why names the file
 * and offset).
 */
PF_MUST_CHECK int pf_sum_blk(const struct pf_sum_src *src,
			     const struct pf_sum_opts *o, uint8_t *md,
			     struct pf_why *why);

/* The digest of all of @src's bytes, as sha256sum of the raw disk
 * would give.  Returns as pf_sum_blk(). */
PF_MUST_CHECK int pf_sum_raw(const struct pf_sum_src *src,
			     const struct pf_sum_opts *o, uint8_t *md,
			     struct pf_why *why);

/*
 * The digest of each cluster that delta @d's BAT maps, by itself (not
 * through a chain): @each(@ctx, virtual cluster, digest, 0) in ascending
 * virtual order; a cluster that cannot be read (an entry past the end
 * of the file reads short) comes as (@ctx, virtual cluster, NULL,
 * -errno).  @each's non-zero return stops the walk and is returned.
 */
typedef int (*pf_sum_each_fn)(void *ctx, uint32_t vclu, const uint8_t *md,
			      int err);
PF_MUST_CHECK int pf_sum_clusters(struct pf_delta *d,
				  const struct pf_sum_opts *o,
				  pf_sum_each_fn each, void *ctx,
				  struct pf_why *why);

#endif /* PF_SUM_H */
