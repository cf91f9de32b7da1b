/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * One open delta file: every operation on its contents, synchronous and
 * asynchronous, behind a table of functions, so that tests can put a
 * crash-simulating or fault-injecting file in place of the real one and
 * still drive the path production drives.  Every operation returns 0 or
 * -errno; short transfers are errors.
 *
 * Asynchronous reads and writes (->submit) go to the engine of io.h that
 * the file was opened with: whether they run in the caller, on the
 * caller's own io_uring engine or through libaio is decided there, never
 * by the user of the file.  The production backend (pf_file_posix) is a
 * plain file descriptor.
 */
#ifndef PF_FILE_H
#define PF_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"
#include "util.h"

struct pf_file;

struct pf_file_ops {
	int (*pread)(struct pf_file *f, void *buf, size_t len, uint64_t off);
	int (*pwrite)(struct pf_file *f, const void *buf, size_t len,
		      uint64_t off);
	/*
	 * Start a read or write of [off, off + len): @done runs exactly
	 * once with the byte count or -errno, before submit returns or on
	 * another thread (io.h).  @r is the caller's storage for the
	 * request until then.
	 */
	void (*submit)(struct pf_file *f, struct pf_aio_req *r, bool write,
		       void *buf, size_t len, uint64_t off,
		       pf_aio_done_fn done, void *arg);
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
	int fd;			/* the real file (fstat, fcntl, alignment) */
	struct pf_aio *aio;	/* where ->submit runs requests (NULL: in
				 * the caller) */
};

/* Wrap the open descriptor @fd (the file now owns it); its asynchronous
 * requests go to @aio.  Returns 0 or -ENOMEM (then @fd is closed). */
PF_MUST_CHECK int pf_file_posix(int fd, struct pf_aio *aio,
				struct pf_file **out);

/*
 * How a descriptor that the delta layer opened becomes a pf_file: tests
 * pass their own; NULL means pf_file_posix.  @name is the delta's file
 * name, @writable whether it was opened for writing; the wrapper owns
 * @fd from the call on, also on error.
 */
struct pf_file_factory {
	int (*wrap)(void *ctx, int fd, const char *name, bool writable,
		    struct pf_aio *aio, struct pf_file **out);
	void *ctx;
};

#endif /* PF_FILE_H */
