/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Pure encode/decode/validate of the ploop delta header and BAT entries.
 * No file descriptors, no allocation: callers pass buffers.
 */
#ifndef PF_FORMAT_H
#define PF_FORMAT_H

#include <stdbool.h>
#include <stdint.h>

#include "ploopfs/format.h"
#include "util.h"

/* Decoded header plus the geometry derived from it. */
struct pf_header {
	int      version;		/* 1 ("WithoutFreeSpace") or 2 */
	uint32_t heads;
	uint32_t cylinders;
	uint32_t cluster_sectors;
	uint32_t bat_entries;		/* virtual size in clusters */
	uint64_t size_sectors;		/* virtual size in sectors */
	uint32_t in_use;		/* PF_INUSE_* */
	uint32_t first_block_sectors;
	uint32_t flags;
	uint64_t ext_sectors;

	/* derived by pf_header_decode() / pf_header_init() */
	uint32_t cluster_bytes;
	unsigned cluster_shift;
	uint32_t hdr_clusters;		/* clusters before the first data one */
	uint64_t size_bytes;		/* virtual size in bytes */
};

/* Validation of untrusted bytes */

/*
 * Decode and validate the 64-byte header at @buf.
 * Returns: 0; -EINVAL (not a ploop header or a field is malformed, @why
 * names the field); -EFBIG (geometry beyond what we can address).
 */
PF_MUST_CHECK int pf_header_decode(const void *buf, struct pf_header *h,
				   struct pf_why *why);

/* Encode @h (as decoded or initialised) into the 64 bytes at @buf. */
void pf_header_encode(const struct pf_header *h, void *buf);

/*
 * Fill @h for a new, empty v2 delta of @size_bytes virtual bytes with
 * clusters of @cluster_bytes.  @size_bytes must be a positive multiple of
 * 512; the BAT covers it rounded up to whole clusters.
 * Returns: 0; -EINVAL (bad size or cluster size); -EFBIG (too large).
 */
PF_MUST_CHECK int pf_header_init(struct pf_header *h, uint64_t size_bytes,
				 uint32_t cluster_bytes, struct pf_why *why);

/* ploop's CHS geometry for a disk of @size_sectors (ConvertToCHS). */
void pf_chs(uint64_t size_sectors, uint32_t *heads, uint32_t *cylinders);

/* true if @cluster_bytes is a cluster size we create and accept */
bool pf_cluster_size_valid(uint64_t cluster_bytes);

/* Geometry */

/* Clusters taken by header + BAT, rounded up; 0 on overflow. */
uint32_t pf_hdr_clusters(uint32_t bat_entries, uint32_t cluster_bytes);

static inline uint64_t pf_clu_to_off(const struct pf_header *h, uint32_t clu)
{
	return (uint64_t)clu << h->cluster_shift;	/* widen first */
}

/* Virtual cluster (BAT index) that holds virtual byte @off. */
static inline uint64_t pf_off_to_idx(const struct pf_header *h, uint64_t off)
{
	return off >> h->cluster_shift;
}

/* File offset of BAT entry @idx. */
static inline uint64_t pf_idx_entry_off(uint32_t idx)
{
	return PF_HEADER_SIZE + (uint64_t)idx * PF_BAT_ENTRY_SIZE;
}

/* BAT page (PF_BAT_PAGE_SIZE bytes from file offset 0) holding @idx. */
static inline uint32_t pf_idx_to_page(uint32_t idx)
{
	return (uint32_t)(pf_idx_entry_off(idx) / PF_BAT_PAGE_SIZE);
}

/* Bytes of the metadata area (header + BAT + padding). */
static inline uint64_t pf_meta_bytes(const struct pf_header *h)
{
	return pf_clu_to_off(h, h->hdr_clusters);
}

/* Highest file cluster count the BAT encoding of @h can address. */
uint64_t pf_max_file_clusters(const struct pf_header *h);

/* BAT entries */

/* Raw little-endian BAT entry @idx of a metadata buffer starting at file
 * offset 0 (header included). */
uint32_t pf_bat_raw_get(const void *meta, uint32_t idx);
void pf_bat_raw_set(void *meta, uint32_t idx, uint32_t raw);

/*
 * Entry @idx of a BAT that threads share, as file cluster (0: unmapped):
 * loaded with acquire, stored with release ordering (meta is the buffer
 * of the file's first bytes, header included, 4-byte aligned).  No
 * validation: for BATs that pf_check_delta accepted, and clusters the
 * encoding of @h can hold.
 */
uint32_t pf_bat_load(const struct pf_header *h, const void *meta,
		     uint32_t idx);
void pf_bat_store(const struct pf_header *h, void *meta, uint32_t idx,
		  uint32_t clu);

/* true if the 8 bytes at @buf are the magic of a format extension */
bool pf_ext_magic_ok(const void *buf);

/* Encode file cluster @clu as a BAT entry of @h's version. */
uint32_t pf_bat_encode(const struct pf_header *h, uint32_t clu);

/*
 * Validate raw entry @raw of BAT index @idx in a file of @file_clusters
 * whole clusters and decode it to a file cluster (*clu = 0: unmapped).
 * Returns: 0; -EUCLEAN (@why says which rule the entry breaks).
 */
PF_MUST_CHECK int pf_bat_decode(const struct pf_header *h, uint32_t idx,
				uint32_t raw, uint64_t file_clusters,
				uint32_t *clu, struct pf_why *why);

/* Manifests of sealed deltas (ploop-image(5), MANIFESTS) */

#define PF_MF_MAGIC		"PLOOPSUM"	/* 8 bytes, no NUL */
#define PF_MF_VERSION		1u
#define PF_MF_HDR_SIZE		128u
#define PF_MF_NAME_BYTES	32u	/* algorithm name field, NUL-padded */
#define PF_MF_GUID_BYTES	40u	/* GUID field, NUL-padded */
#define PF_MF_MD_MAX		64u	/* longest digest */

/* The header of a manifest, decoded. */
struct pf_mf_header {
	uint32_t md_len;		/* bytes of each digest */
	char alg[PF_MF_NAME_BYTES];	/* NUL-terminated */
	uint32_t cluster_bytes;
	uint32_t bat_entries;		/* virtual clusters of the delta */
	uint64_t entries;		/* clusters listed */
	char guid[PF_MF_GUID_BYTES];	/* of the delta when sealed */
	uint64_t file_bytes;		/* of the delta file when sealed */
};

/* Bytes of one entry (le32 virtual cluster, digest) and of the whole
 * file (header, entries, root digest). */
static inline uint64_t pf_mf_entry_size(uint32_t md_len)
{
	return 4 + (uint64_t)md_len;
}

uint64_t pf_mf_file_size(const struct pf_mf_header *h);

/* Encode @h into the PF_MF_HDR_SIZE bytes at @buf (fields as validated
 * by the caller: names NUL-terminated within their fields). */
void pf_mf_header_encode(const struct pf_mf_header *h, void *buf);

/*
 * Decode and validate the header at @buf of a manifest file of
 * @file_len bytes: magic, version, field limits, and a length that is
 * exactly what the header announces.
 * Returns: 0; -EUCLEAN (@why names the field).
 */
PF_MUST_CHECK int pf_mf_header_decode(const void *buf, uint64_t file_len,
				      struct pf_mf_header *h,
				      struct pf_why *why);

/* Entry encoding: virtual cluster @vclu and its digest. */
void pf_mf_entry_encode(void *buf, uint32_t vclu, const uint8_t *md,
			uint32_t md_len);
uint32_t pf_mf_entry_vclu(const void *buf);

#endif /* PF_FORMAT_H */
