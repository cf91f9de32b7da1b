/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * One delta file, and every durable step taken on one: open and validate
 * its header, load its BAT, create a new empty delta, write the header,
 * write BAT pages, trim the tail, recover after an unclean stop (W8).
 * Whoever changes a delta on disk does it through these verbs, so each
 * step has one implementation and one statement of its ordering.
 *
 * A delta owns one pf_file (file.h) through which all its I/O goes, data
 * and metadata alike.  File names are always resolved relative to the
 * image directory (openat), never followed through a symbolic link, and
 * only regular files are opened.
 */
#ifndef PF_DELTA_H
#define PF_DELTA_H

#include <stdbool.h>
#include <stdint.h>

#include "file.h"
#include "format.h"
#include "util.h"

/* How pf_delta_open turns the descriptor it opened into a pf_file. */
struct pf_delta_io {
	const struct pf_file_factory *factory;	/* NULL: pf_file_posix */
	struct pf_aio *aio;	/* engine of ->submit; NULL: in the caller */
};

struct pf_delta {
	struct pf_file *f;	/* all I/O on the file */
	char *name;		/* as given, for messages */
	bool writable;
	bool direct;		/* I/O bypasses the page cache (O_DIRECT) */
	size_t align;		/* alignment of buffers, offsets, lengths */
	struct pf_header hdr;	/* as read, or as last written */
	uint8_t *meta;		/* file bytes [0, pf_idx_entry_off(bat_entries)),
				 * in whole 4 KiB-aligned pages, zero-padded:
				 * the BAT that every user of the delta shares */
	uint64_t file_bytes;	/* size at open, or after pf_delta_trim */
	uint64_t file_clusters;	/* whole clusters in it */
	struct pf_delta_io io;	/* for pf_delta_reopen */
};

#define PF_DELTA_WRITE	0x1	/* open read-write */

/*
 * Open delta @name in directory @dirfd (AT_FDCWD for a path), read and
 * validate the header and load the BAT, through a pf_file made by @io
 * (NULL: plain, synchronous).  BAT entries are not validated here (see
 * pf_check_delta).  The file is opened non-blocking, so that a FIFO or a
 * device in its place is refused at once instead of hanging the caller.
 * Returns: 0; -ENOENT and other open errors; -EINVAL (not a regular file,
 * a symbolic link, bad header, file shorter than its header and BAT);
 * -EFBIG; -ENOMEM.  @why names the problem (without the file name).
 */
PF_MUST_CHECK int pf_delta_open(int dirfd, const char *name, int flags,
				const struct pf_delta_io *io,
				struct pf_delta **out, struct pf_why *why);

void pf_delta_close(struct pf_delta *d);

/*
 * From now on do the I/O of @d with O_DIRECT, where the host file system
 * allows it and its alignment is at most a BAT page and @max_align
 * (d->direct says whether it took; d->align is set if so).  Returns 0,
 * or the errno of the refusal (then the I/O stays buffered).
 * Context: no I/O on @d in flight.
 */
int pf_delta_direct(struct pf_delta *d, size_t max_align);

/*
 * Open @d's file again, for writing (@writable) or reading, as the same
 * file (-ESTALE if the name now points elsewhere), with the same
 * O_DIRECT setting and pf_file factory, and make it @d's file.  *@old is
 * the file it replaced, for the caller to close once nothing uses it.
 * Returns 0 or -errno (nothing changed).
 */
PF_MUST_CHECK int pf_delta_reopen(struct pf_delta *d, int dirfd,
				  bool writable, struct pf_file **old);

/*
 * Create delta @name in @dirfd (it must not exist) with header @h and an
 * empty BAT; the file is exactly h->hdr_clusters clusters long.  The file
 * and the directory entry are synced before returning (W6: a new delta is
 * durable before any descriptor names it).  On failure nothing is left.
 * Returns 0 or -errno.
 */
PF_MUST_CHECK int pf_delta_create(int dirfd, const char *name,
				  const struct pf_header *h,
				  struct pf_why *why);

/* Raw BAT entry @idx (idx < hdr.bat_entries). */
static inline uint32_t pf_delta_bat_raw(const struct pf_delta *d, uint32_t idx)
{
	return pf_bat_raw_get(d->meta, idx);
}

/* File cluster that entry @idx maps, 0 if none or beyond the BAT; safe
 * against concurrent pf_bat_store() on d->meta. */
static inline uint32_t pf_delta_clu(const struct pf_delta *d, uint32_t idx)
{
	return idx < d->hdr.bat_entries ? pf_bat_load(&d->hdr, d->meta, idx) :
					  0;
}

/*
 * Take the fields of @h that change over a delta's life (in-use flag,
 * flags, extension offset) into d->hdr; the geometry stays.  Readers of
 * the geometry (pf_delta_clu) may run meanwhile: they touch other fields.
 */
static inline void pf_delta_set_state(struct pf_delta *d,
				      const struct pf_header *h)
{
	d->hdr.in_use = h->in_use;
	d->hdr.flags = h->flags;
	d->hdr.ext_sectors = h->ext_sectors;
}

/* Number of BAT entries that are non-zero. */
uint64_t pf_delta_mapped_count(const struct pf_delta *d);

/*
 * The allocation head: one past the highest file cluster that an entry
 * of d->meta maps, among entries that decode to a cluster below @limit
 * (pf_bat_decode), or hdr.hdr_clusters if none does.  Clusters from
 * there on hold nothing the BAT reaches (W8).
 */
uint64_t pf_delta_alloc_head(const struct pf_delta *d, uint64_t limit);

/* The durable steps */

/*
 * Steps inside the verbs, for crash-simulation tests: @step is called
 * after each, in the calling thread, and may cut the power there (the
 * stack maps them to its named crash points).  NULL: no hook.
 */
enum pf_delta_step {
	PF_DELTA_CREATED,		/* a new delta exists, synced (W6) */
	PF_DELTA_HEADER_WRITTEN,	/* page 0 written, not synced */
	PF_DELTA_PAGE_WRITTEN,		/* one BAT page written */
	PF_DELTA_LEAK_PUNCHED,		/* one leaked cluster punched */
	PF_DELTA_TAIL_TRIMMED,		/* the tail truncated, not synced */
	PF_DELTA_STEPS
};

struct pf_delta_hook {
	void (*step)(void *ctx, enum pf_delta_step step);
	void *ctx;
};

/* Plain I/O through the delta's file (check, copies). */
PF_MUST_CHECK int pf_delta_read(struct pf_delta *d, void *buf, size_t len,
				uint64_t off);
PF_MUST_CHECK int pf_delta_sync(struct pf_delta *d);

/*
 * Write header @h (its in-use value is what the caller wants on disk):
 * encoded into d->meta, page 0 is written with the BAT entries it holds
 * and datasynced; then d->hdr takes its state (pf_delta_set_state; the
 * geometry of @h must be d's).  The caller guarantees that page 0
 * of d->meta maps only clusters whose data is durable (W1).
 * Returns 0 or -errno (the header on disk is then unknown).
 * Context: no BAT write of @d runs at the same time.
 */
PF_MUST_CHECK int pf_delta_write_header(struct pf_delta *d,
					const struct pf_header *h,
					const struct pf_delta_hook *hook);

/*
 * Commit BAT pages (W1-W3 for one delta): write the @n pages whose
 * indices are @pages (page 0 holds the header) from @copies (n whole
 * pages, one after the other, aligned to d->align), then datasync.  The
 * caller has made the data they point to durable first (W1) and took
 * the copies from a closed transaction (W2).
 * Returns 0 or -errno (which pages reached the disk is then unknown).
 */
PF_MUST_CHECK int pf_delta_write_bat(struct pf_delta *d,
				     const uint32_t *pages,
				     const uint8_t *copies, size_t n,
				     const struct pf_delta_hook *hook);

/* Make the file @clusters clusters long (a preallocated or leaked tail
 * goes); not synced.  Returns 0 or -errno. */
PF_MUST_CHECK int pf_delta_trim(struct pf_delta *d, uint64_t clusters);

/* What pf_delta_recover found. */
struct pf_delta_recovery {
	uint64_t head;		/* allocation head (pf_delta_alloc_head) */
	uint32_t *free;		/* punched leaks below it: reusable (malloc) */
	size_t n_free;
	uint64_t leaked;	/* unreferenced clusters found */
	uint64_t mapped;	/* entries mapping a cluster */
};

/*
 * W8 for a delta about to be written (the top): its committed BAT is the
 * truth.  Clusters below the allocation head that no entry maps are
 * punched (W4: a reused cluster reads as zeros) and listed as free; the
 * file is trimmed to the head (trailing clusters are leaks, never data),
 * unsynced: the caller syncs with the header it writes next.
 * On a delta opened read-only nothing is written: @out gets the same
 * head, mapped and leaked counts, and no free clusters (the leaks stay
 * where they are, for a later read-write open to reclaim).
 * Returns 0 or -errno (*@out is then empty).
 */
PF_MUST_CHECK int pf_delta_recover(struct pf_delta *d,
				   struct pf_delta_recovery *out,
				   const struct pf_delta_hook *hook);

/* Image directory locking */

/*
 * Lock the image directory (or, for a bare delta, the file) @fd:
 * exclusive for commands that write, shared for ones that must see a
 * quiescent image.  Never waits.  Returns 0 or -EBUSY (somebody, e.g. a
 * running ploopfs, holds a conflicting lock).
 */
PF_MUST_CHECK int pf_lock(int fd, bool exclusive);

#endif /* PF_DELTA_H */
