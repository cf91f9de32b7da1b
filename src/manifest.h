/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The manifest of a sealed delta (ploop-image(5), MANIFESTS): the digest
 * of each cluster its BAT maps, by virtual cluster, and a root digest
 * over the file, in "<delta file>.sum" beside the delta.  A delta is
 * sealed when it becomes read-only (a snapshot); verify re-reads it and
 * compares.  This module is the one home of the manifest's durable
 * steps, under rule W9:
 *   - a delta's manifest is removed, and the removal made durable,
 *     before the delta's content changes or its file name is given up
 *     (pf_manifest_drop);
 *   - a manifest is published only for a read-only delta whose content
 *     is durable, by write to "<file>.sum.tmp", fsync, rename and
 *     directory fsync (pf_manifest_store), so it is whole or absent.
 */
#ifndef PF_MANIFEST_H
#define PF_MANIFEST_H

#include <stdbool.h>
#include <stdint.h>

#include "delta.h"
#include "format.h"
#include "sum.h"
#include "util.h"

#define PF_MF_SUFFIX	".sum"

struct pf_manifest {
	struct pf_mf_header h;
	uint8_t *ent;		/* h.entries entries, encoded as on disk */
	uint8_t root[PF_MF_MD_MAX];
};

void pf_manifest_free(struct pf_manifest *m);

/* "<delta_file>.sum", malloc'ed (NULL: out of memory). */
char *pf_manifest_name(const char *delta_file);

/*
 * Digest every cluster delta @d maps (o->alg, o->threads; o->cancel
 * stops it) into a new manifest for the delta @guid.  A cluster that
 * cannot be read fails it.  Returns 0 or -errno (@why).
 */
PF_MUST_CHECK int pf_manifest_build(struct pf_delta *d, const char *guid,
				    const struct pf_sum_opts *o,
				    struct pf_manifest **out,
				    struct pf_why *why);

/* Steps of pf_manifest_store() and pf_manifest_drop(), for crash tests
 * (@step after each, as the delta's hooks). */
enum pf_mf_step {
	PF_MF_TMP_SYNCED,	/* <file>.sum.tmp written and synced */
	PF_MF_RENAMED,		/* renamed over <file>.sum, dir not synced */
	PF_MF_DROPPED,		/* removed, directory synced */
};
struct pf_mf_hook {
	void (*step)(void *ctx, enum pf_mf_step step);
	void *ctx;
};

/*
 * Publish @m as the manifest of @delta_file in @dirfd (W9).  Returns 0
 * or -errno (nothing published: the tmp file is gone; -EIO after the
 * rename means the directory sync failed and the manifest may or may
 * not survive a crash).
 */
PF_MUST_CHECK int pf_manifest_store(int dirfd, const char *delta_file,
				    const struct pf_manifest *m,
				    const struct pf_mf_hook *hook,
				    struct pf_why *why);

/*
 * Remove the manifest of @delta_file (and a leftover tmp), durably (W9);
 * nothing to remove is success.  Returns 0 or -errno.
 */
PF_MUST_CHECK int pf_manifest_drop(int dirfd, const char *delta_file,
				   const struct pf_mf_hook *hook);

/*
 * Seal read-only delta @d, file @delta_file in @dirfd, GUID @guid:
 * pf_manifest_build() then pf_manifest_store().  Returns 0 or -errno.
 */
PF_MUST_CHECK int pf_manifest_seal(int dirfd, struct pf_delta *d,
				   const char *delta_file, const char *guid,
				   const struct pf_sum_opts *o,
				   const struct pf_mf_hook *hook,
				   struct pf_why *why);

/* true if @delta_file has a manifest file (not checked) */
bool pf_manifest_exists(int dirfd, const char *delta_file);

/*
 * Read and validate the manifest of @delta_file: header, entries in
 * ascending order within the BAT, root digest.  With @d (the delta, may
 * be NULL) a manifest of another cluster size or number of virtual
 * clusters is refused from its header, before its body is read: a
 * damaged header cannot make it read gigabytes.
 * Returns: 0; -ENOENT (none); -EUCLEAN (damaged, or of another
 * geometry: @why says how); -ENOTSUP (its algorithm is unknown to this
 * OpenSSL); other -errno.
 */
PF_MUST_CHECK int pf_manifest_load(int dirfd, const char *delta_file,
				   const struct pf_delta *d,
				   struct pf_manifest **out,
				   struct pf_why *why);

/*
 * Validate and decode the manifest file's bytes @buf (@len of them), as
 * pf_manifest_load() does.  Returns 0, -EUCLEAN, -ENOTSUP or -ENOMEM.
 */
PF_MUST_CHECK int pf_manifest_parse(const void *buf, size_t len,
				    struct pf_manifest **out,
				    struct pf_why *why);

/*
 * The manifest of a delta that holds @upper's clusters over @lower's
 * (a down merge: the child's clusters copied into the parent's file),
 * for delta @guid, file size @file_bytes.  Both must have the same
 * algorithm and geometry.  Returns 0, -EINVAL (they differ), -ENOMEM.
 */
PF_MUST_CHECK int pf_manifest_compose(const struct pf_manifest *lower,
				      const struct pf_manifest *upper,
				      const char *guid, uint64_t file_bytes,
				      struct pf_manifest **out);

/* What verify finds wrong with one cluster. */
enum pf_mf_problem {
	PF_MF_DIFFERS,		/* its data differs from the manifest */
	PF_MF_UNREADABLE,	/* listed and mapped, but cannot be read */
	PF_MF_UNMAPPED,		/* listed, not mapped by the BAT now */
	PF_MF_UNLISTED,		/* mapped, not listed: mapped since */
};
const char *pf_mf_problem_name(enum pf_mf_problem p);

typedef void (*pf_mf_bad_fn)(void *ctx, uint32_t vclu, enum pf_mf_problem p);

/*
 * Re-read delta @d and compare it with its manifest @m (m's own
 * algorithm; o->threads, o->progress, o->cancel): each cluster that does
 * not match goes to @bad; *@problems counts them.  Returns 0 (compared,
 * whatever was found); -EUCLEAN (@m is of another geometry); -ENOTSUP;
 * -ECANCELED; -ENOMEM.
 */
PF_MUST_CHECK int pf_manifest_verify(struct pf_delta *d,
				     const struct pf_manifest *m,
				     const struct pf_sum_opts *o,
				     pf_mf_bad_fn bad, void *ctx,
				     uint64_t *problems, struct pf_why *why);

/* What pf_manifest_check() did with a delta. */
enum pf_mf_state {
	PF_MF_OK,		/* sealed, and the data matches */
	PF_MF_SEALED_NOW,	/* had no manifest: sealed it */
	PF_MF_MISMATCH,		/* sealed, and the data does not match */
	PF_MF_DAMAGED,		/* the manifest itself is unreadable */
	PF_MF_UNSEALED,		/* had no manifest, and !may_seal */
};

/*
 * Verify read-only delta @d (file @file relative to @dirfd, GUID @guid)
 * against its manifest, or seal it if it has none (with o->alg) and
 * @may_seal.
 * *@state says which; *@clusters how many clusters were read.  A
 * damaged manifest is reported, never replaced.  Returns 0 or -errno
 * (could not do it: @why).
 */
PF_MUST_CHECK int pf_manifest_check(int dirfd, struct pf_delta *d,
				    const char *file, const char *guid,
				    bool may_seal,
				    const struct pf_sum_opts *o,
				    pf_mf_bad_fn bad, void *ctx,
				    enum pf_mf_state *state,
				    uint64_t *clusters, struct pf_why *why);

#endif /* PF_MANIFEST_H */
