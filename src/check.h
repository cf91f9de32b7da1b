/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Read-only consistency check of deltas and of a delta stack.  Findings
 * are classified so that callers can tell what is harmless from what is
 * not:
 *   CORRUPT  the image cannot be trusted as it is (bad BAT entry, two
 *            entries sharing a cluster, bad extension, stack mismatch);
 *   UNCLEAN  it was not closed cleanly (in-use flag set) and needs the
 *            recovery of rule W8 before use;
 *   LEAK     clusters the BAT does not reference: wasted space, no harm;
 *   NOTE     worth knowing, no action needed.
 */
#ifndef PF_CHECK_H
#define PF_CHECK_H

#include <stdint.h>

#include "delta.h"
#include "descriptor.h"

enum pf_finding {
	PF_FIND_CORRUPT,
	PF_FIND_UNCLEAN,
	PF_FIND_LEAK,
	PF_FIND_NOTE,
	PF_FIND_KINDS
};

typedef void (*pf_check_emit_fn)(void *ctx, const char *file,
				 enum pf_finding kind, const char *msg);

/* How many findings of one kind are reported per file; the rest are
 * only counted. */
#define PF_CHECK_MAX_REPORTS	20

struct pf_check_report {
	uint64_t count[PF_FIND_KINDS];	/* findings by kind */
	uint64_t leaked_clusters;	/* unreferenced data-area clusters */
	uint64_t tail_leaked_clusters;	/* of which after the last used one */
	uint64_t mapped;		/* non-zero BAT entries, all deltas */
	pf_check_emit_fn emit;		/* may be NULL */
	void *ctx;
};

/*
 * Check one open delta: in-use flag, flags, format extension, file size,
 * every BAT entry (inside the file, outside the header and BAT, not the
 * reserved value, v1 alignment, no two sharing a cluster) and leaks.
 * Returns 0, or -ENOMEM / -errno when the check itself could not run.
 */
PF_MUST_CHECK int pf_check_delta(struct pf_delta *d,
				 struct pf_check_report *r);

/*
 * Check that the deltas @chain (base first, @n of them) can be stacked
 * as descriptor @dd says: equal cluster sizes matching Blocksize, one
 * format version, no lower delta larger than the top, and a top delta
 * whose virtual size is the descriptor's Disk_size.
 */
void pf_check_stack(const struct pf_dd *dd, struct pf_delta *const *chain,
		    size_t n, struct pf_check_report *r);

/*
 * Repair delta @d, opened writable, in place; every change is reported as
 * a NOTE "repaired: ..." and counted in *@fixes.  In this order:
 *   1. BAT entries that break I2 (reserved value, misaligned, inside the
 *      header and BAT, past the end of the file) are dropped;
 *   2. of entries sharing a cluster (I3) the later ones are dropped, only
 *      with @force (the data cannot tell which is right); without it they
 *      are reported as CORRUPT and left;
 *   3. the BAT is written and synced;
 *   4. clusters past the last referenced one (and a partial tail) are
 *      truncated away, unless a format extension lives there;
 *   5. if nothing corrupt remains, a set in-use flag is cleared (synced).
 * Returns 0 or -errno (I/O failure: the image may be partly repaired, and
 * a later check says what is left).
 */
PF_MUST_CHECK int pf_repair_delta(struct pf_delta *d, bool force,
				  struct pf_check_report *r, unsigned *fixes);

/* Report a finding (used by callers for problems found outside these
 * functions, e.g. a delta that does not open). */
void pf_check_add(struct pf_check_report *r, const char *file,
		  enum pf_finding kind, const char *fmt, ...)
	PF_PRINTF(4, 5);

#endif /* PF_CHECK_H */
