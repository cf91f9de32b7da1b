/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fault-injecting delta files for tests: plain files, through the same
 * engine as production files (synchronous calls and ->submit alike),
 * that
 *   - fail the nth operation of one kind (a data write, a BAT or header
 *     write, any write, an fdatasync) with a chosen error, once: a
 *     synchronous call returns it, a submitted request is carried out
 *     and reported failed on its completion, as a device error is;
 *   - while @nospace is set, refuse space as a full host file system
 *     does: an allocation past the metadata, or a write past the end of
 *     the file, fails with ENOSPC.
 * Only files opened for writing get faults (lower deltas are only read),
 * and with @name set only the file of that name.
 */
#ifndef PF_IO_FAULT_H
#define PF_IO_FAULT_H

#include <stdatomic.h>
#include <stdint.h>

#include "file.h"

enum fault_kind {
	FAULT_DATA_WRITE,	/* writes at or past the first data cluster */
	FAULT_META_WRITE,	/* writes into the header and BAT clusters */
	FAULT_WRITE,		/* any write */
	FAULT_DATASYNC,
	FAULT_KINDS
};

struct fault_plan {
	enum fault_kind kind;
	unsigned nth;		/* fail the nth operation of @kind (1-based),
				 * counted from when it is set (0: none) */
	int err;		/* e.g. -EIO */
	uint64_t meta_bytes;	/* size of the header and BAT area */
	char name[256];		/* only this file ("": every writable one) */
	atomic_uint seen[FAULT_KINDS];
	atomic_uint fired;	/* 1 once the fault was injected */
	atomic_bool nospace;	/* refuse space (see above) */
	atomic_uint nospace_hits;
	struct pf_file_factory factory;	/* hand this to pf_stack_open */
};

void fault_plan_init(struct fault_plan *p, enum fault_kind kind, unsigned nth,
		     int err, uint64_t meta_bytes);

#endif /* PF_IO_FAULT_H */
