/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fault-injecting delta files for tests: plain files that fail the k-th
 * operation of one kind (a data write, a BAT or header write, an
 * fdatasync) with a chosen error, once.
 */
#ifndef PF_IO_FAULT_H
#define PF_IO_FAULT_H

#include <stdint.h>

#include "file.h"

enum fault_kind {
	FAULT_DATA_WRITE,	/* writes at or past the first data cluster */
	FAULT_META_WRITE,	/* writes into the header and BAT clusters */
	FAULT_DATASYNC,
	FAULT_KINDS
};

struct fault_plan {
	enum fault_kind kind;
	unsigned nth;		/* fail the nth operation of @kind (1-based) */
	int err;		/* e.g. -EIO */
	uint64_t meta_bytes;	/* size of the header and BAT area */
	unsigned seen[FAULT_KINDS];
	unsigned fired;		/* 1 once the fault was injected */
	struct pf_file_factory factory;	/* hand this to pf_stack_open */
};

void fault_plan_init(struct fault_plan *p, enum fault_kind kind, unsigned nth,
		     int err, uint64_t meta_bytes);

#endif /* PF_IO_FAULT_H */
