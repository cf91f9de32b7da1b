/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Message digests, through OpenSSL's EVP interface (the only file that
 * uses OpenSSL is csum.c), and the block digest of a disk:
 *
 *   blk = H( H(block 0) || H(block 1) || ... || H(block N-1) || le64(len) )
 *
 * over the disk's bytes cut into blocks of PF_BLK_BLOCK bytes, the last
 * one as long as what is left (ploop-image(5), CONTENT DIGESTS).  A
 * block of zeros has a digest computed once, so a hole costs no
 * reading and no hashing.  This is the construction of blkhash 0.10 and
 * later (blksum's default --block-size).
 *
 * A pf_csum is one running digest: one thread at a time.  Algorithms
 * are looked up once and shared by every thread.
 */
#ifndef PF_CSUM_H
#define PF_CSUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* bytes of the largest digest of any algorithm (EVP_MAX_MD_SIZE) */
#define PF_CSUM_MAX	64
/* longest algorithm name we keep (EVP names are shorter) */
#define PF_CSUM_NAME_MAX 31
/* the default algorithm */
#define PF_CSUM_DEFAULT	"sha256"
/* the block of the block digest */
#define PF_BLK_BLOCK	(64u * 1024)

struct pf_csum_alg;
struct pf_csum;

/*
 * The digest algorithm OpenSSL calls @name (any name or alias EVP
 * knows: "sha256", "SHA2-256", "blake2b512", ...).
 * Returns: 0 with *@out; -ENOENT (no such digest); -EINVAL (an
 * extendable-output function such as shake128: no fixed length, or a
 * name longer than PF_CSUM_NAME_MAX); -ENOMEM.  @why says which.
 * Free with pf_csum_alg_free().
 */
PF_MUST_CHECK int pf_csum_alg_get(const char *name,
				  struct pf_csum_alg **out,
				  struct pf_why *why);
void pf_csum_alg_free(struct pf_csum_alg *a);
/* Digest length in bytes (at most PF_CSUM_MAX). */
size_t pf_csum_alg_size(const struct pf_csum_alg *a);
/* The canonical lower-case name ("sha256", "blake2b512"). */
const char *pf_csum_alg_name(const struct pf_csum_alg *a);

/* A running digest of @a.  Returns 0 or -ENOMEM. */
PF_MUST_CHECK int pf_csum_new(const struct pf_csum_alg *a,
			      struct pf_csum **out);
void pf_csum_free(struct pf_csum *c);
/* Start over (a new message).  Returns 0 or -EIO. */
PF_MUST_CHECK int pf_csum_reset(struct pf_csum *c);
PF_MUST_CHECK int pf_csum_update(struct pf_csum *c, const void *buf,
				 size_t len);
/* The digest into @md (pf_csum_alg_size bytes); then reset for the next
 * message.  Returns 0 or -EIO. */
PF_MUST_CHECK int pf_csum_final(struct pf_csum *c, uint8_t *md);
/* One whole message: reset, update, final.  Returns 0 or -EIO. */
PF_MUST_CHECK int pf_csum_buf(struct pf_csum *c, const void *buf,
			      size_t len, uint8_t *md);

/* Lower-case hex of @len bytes into @out (2 * len + 1 bytes). */
void pf_csum_hex(const uint8_t *md, size_t len, char *out);

/* true if all @len bytes at @buf are zero */
bool pf_is_zero(const void *buf, size_t len);

/* The outer digest of the block digest, fed in the disk's order. */
struct pf_blk {
	struct pf_csum *outer;
	size_t md_len;
	uint64_t len;		/* bytes of the disk so far */
	bool short_seen;	/* a short (last) block was added */
	uint8_t zero_md[PF_CSUM_MAX];	/* digest of a block of zeros */
};

/* Returns 0, -ENOMEM or -EIO. */
PF_MUST_CHECK int pf_blk_init(struct pf_blk *b, const struct pf_csum_alg *a);
void pf_blk_free(struct pf_blk *b);
/*
 * The digest @md of the next block, @len bytes of the disk (PF_BLK_BLOCK,
 * or fewer for the last block).  Returns 0; -EIO; -EINVAL (a block after
 * a short one).
 */
PF_MUST_CHECK int pf_blk_add(struct pf_blk *b, const uint8_t *md,
			     uint32_t len);
/* @count whole blocks of zeros.  Returns as pf_blk_add(). */
PF_MUST_CHECK int pf_blk_add_zero(struct pf_blk *b, uint64_t count);
/* The block digest into @md.  Returns 0 or -EIO. */
PF_MUST_CHECK int pf_blk_final(struct pf_blk *b, uint8_t *md);

#endif /* PF_CSUM_H */
