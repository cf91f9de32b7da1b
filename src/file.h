/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * One open delta file as the stack sees it: the operations that touch its
 * contents, behind a table of functions so that tests can put a
 * crash-simulating or fault-injecting file in place of the real one.
 * Every operation returns 0 or -errno; short transfers are errors.
 *
 * The production backend (pf_file_posix) is a plain file descriptor,
 * O_DIRECT where the host allows it; its reads and writes may also be
 * submitted through io.h (libaio) on ->fd, which only files with
 * ->aio_ok set allow.
 */
#ifndef PF_FILE_H
#define PF_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct pf_file;

struct pf_file_ops {
	int (*pread)(struct pf_file *f, void *buf, size_t len, uint64_t off);
	int (*pwrite)(struct pf_file *f, const void *buf, size_t len,
		      uint64_t off);
	int (*datasync)(struct pf_file *f);
	/* make [off, off + len) read as zeros and free its space */
	int (*punch)(struct pf_file *f, uint64_t off, uint64_t len);
	int (*truncate)(struct pf_file *f, uint64_t size);
	/* give [off, off + len) real space (growing the file if needed),
	 * reading as zeros where nothing was written: -ENOSPC here, not
	 * at a later data write.  Optional (NULL: space comes on write). */
	int (*allocate)(struct pf_file *f, uint64_t off, uint64_t len);
	void (*close)(struct pf_file *f);	/* closes fd too */
};

struct pf_file {
	const struct pf_file_ops *ops;
	int fd;			/* the real file (alignment, fstat) */
	bool aio_ok;		/* reads/writes may go through io.h on fd */
};

/* Wrap the open descriptor @fd (the file now owns it).  Returns 0 or
 * -ENOMEM (then @fd is closed). */
PF_MUST_CHECK int pf_file_posix(int fd, struct pf_file **out);

/*
 * How the stack turns a descriptor it opened into a pf_file: tests pass
 * their own; NULL means pf_file_posix.  @name is the delta's file name,
 * @writable whether it is the top delta.
 */
struct pf_file_factory {
	int (*wrap)(void *ctx, int fd, const char *name, bool writable,
		    struct pf_file **out);
	void *ctx;
};

#endif /* PF_FILE_H */
