// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Encode, decode and validate the ploop delta header and BAT entries
 * (ploop-image(5)).  This file is the only place that converts between
 * on-disk little-endian bytes and native values; every on-disk value is
 * validated here before anybody uses it, with overflow-checked arithmetic.
 *
 * Invariants of a decoded struct pf_header (what pf_header_decode
 * guarantees and pf_header_init establishes):
 *   - cluster_bytes is a power of two in [PF_CLUSTER_MIN, PF_CLUSTER_MAX];
 *   - 1 <= bat_entries <= PF_MAX_BAT_ENTRIES;
 *   - 0 < size_sectors <= bat_entries * cluster_sectors;
 *   - first_block_sectors == k * cluster_sectors with
 *     k >= pf_hdr_clusters(bat_entries, cluster_bytes), and hdr_clusters = k;
 *   - every byte offset derived from these fits in 63 bits.
 */
#include "format.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>

bool pf_cluster_size_valid(uint64_t cluster_bytes)
{
	return pf_is_pow2(cluster_bytes) && cluster_bytes >= PF_CLUSTER_MIN &&
	       cluster_bytes <= PF_CLUSTER_MAX;
}

uint32_t pf_hdr_clusters(uint32_t bat_entries, uint32_t cluster_bytes)
{
	uint64_t bytes = pf_idx_entry_off(bat_entries);
	uint64_t n = pf_div_round_up(bytes, cluster_bytes);

	return n > UINT32_MAX ? 0 : (uint32_t)n;
}

static unsigned log2_u32(uint32_t v)
{
	return (unsigned)__builtin_ctz(v);
}

uint64_t pf_max_file_clusters(const struct pf_header *h)
{
	if (h->version == 1)	/* entries are sector offsets */
		return ((uint64_t)UINT32_MAX + 1) / h->cluster_sectors;
	return PF_MAX_FILE_CLUSTERS;	/* index 0xFFFFFFFF is reserved */
}

void pf_chs(uint64_t n, uint32_t *heads, uint32_t *cylinders)
{
	static const uint32_t spt[] = { 63, 32, 16, 8 };
	static const uint32_t hds[] = { 16, 8, 4, 2 };
	uint64_t s = 0, hd = 0, cyl;
	size_t i;

	if (n > 1032192 && n < 16777216) {
		*heads = 16;
		*cylinders = (uint32_t)(n / (16 * 63));
		return;
	}
	for (i = 0; i < PF_ARRAY_SIZE(spt) && !s; i++)
		if (n % spt[i] == 0)
			s = spt[i];
	for (i = 0; s && i < PF_ARRAY_SIZE(hds) && !hd; i++)
		if ((n / s) % hds[i] == 0)
			hd = hds[i];
	if (!s || !hd) {	/* "pure LBA" */
		hd = 1;
		cyl = n;
	} else {
		cyl = n / s / hd;
	}
	/* Nothing reads these fields for I/O; clamp what does not fit. */
	*heads = (uint32_t)hd;
	*cylinders = cyl > UINT32_MAX ? UINT32_MAX : (uint32_t)cyl;
}

/* Validate the geometry fields of @h and fill the derived ones. */
static int geometry_derive(struct pf_header *h, struct pf_why *why)
{
	uint64_t cluster_bytes = (uint64_t)h->cluster_sectors * PF_SECTOR_SIZE;
	uint64_t max_sectors;
	uint32_t min_hdr;

	if (!pf_cluster_size_valid(cluster_bytes))
		return pf_why_set(why, -EINVAL,
				  "cluster size of %" PRIu32
				  " sectors is not a power of two between 64 KiB and 64 MiB",
				  h->cluster_sectors);
	h->cluster_bytes = (uint32_t)cluster_bytes;
	h->cluster_shift = log2_u32(h->cluster_bytes);

	if (h->bat_entries == 0)
		return pf_why_set(why, -EINVAL, "BAT has no entries (m_Size is 0)");
	if (h->bat_entries > PF_MAX_BAT_ENTRIES)
		return pf_why_set(why, -EFBIG,
				  "BAT of %" PRIu32 " entries exceeds the limit of %u",
				  h->bat_entries, PF_MAX_BAT_ENTRIES);

	/* bat_entries < 2^29 and cluster_sectors <= 2^17: no overflow */
	max_sectors = (uint64_t)h->bat_entries * h->cluster_sectors;
	if (h->size_sectors == 0)
		return pf_why_set(why, -EINVAL, "virtual size is 0 sectors");
	if (h->size_sectors > max_sectors)
		return pf_why_set(why, -EINVAL,
				  "virtual size of %" PRIu64
				  " sectors exceeds the %" PRIu32 " clusters of the BAT",
				  h->size_sectors, h->bat_entries);
	h->size_bytes = h->size_sectors << PF_SECTOR_SHIFT;

	min_hdr = pf_hdr_clusters(h->bat_entries, h->cluster_bytes);
	if (h->first_block_sectors == 0 ||
	    h->first_block_sectors % h->cluster_sectors)
		return pf_why_set(why, -EINVAL,
				  "first data offset of %" PRIu32
				  " sectors is not a non-zero multiple of the cluster size",
				  h->first_block_sectors);
	h->hdr_clusters = h->first_block_sectors / h->cluster_sectors;
	if (h->hdr_clusters < min_hdr)
		return pf_why_set(why, -EINVAL,
				  "first data offset of %" PRIu32
				  " sectors overlaps the BAT (needs %" PRIu32 " clusters)",
				  h->first_block_sectors, min_hdr);
	if (h->hdr_clusters >= pf_max_file_clusters(h))
		return pf_why_set(why, -EFBIG,
				  "first data offset of %" PRIu32
				  " sectors leaves no addressable data cluster",
				  h->first_block_sectors);
	return 0;
}

int pf_header_decode(const void *buf, struct pf_header *h, struct pf_why *why)
{
	const uint8_t *b = buf;
	uint32_t type;

	memset(h, 0, sizeof(*h));
	if (!memcmp(b, PF_SIG_V2, PF_SIG_LEN))
		h->version = 2;
	else if (!memcmp(b, PF_SIG_V1, PF_SIG_LEN))
		h->version = 1;
	else
		return pf_why_set(why, -EINVAL,
				  "no ploop signature (not a ploop image)");

	type = pf_le32_get(b + offsetof(struct pf_disk_header, type));
	if (type != PF_IMAGE_TYPE)
		return pf_why_set(why, -EINVAL,
				  "header version (m_Type) is %" PRIu32 ", expected 2",
				  type);
	h->heads = pf_le32_get(b + offsetof(struct pf_disk_header, heads));
	h->cylinders =
		pf_le32_get(b + offsetof(struct pf_disk_header, cylinders));
	h->cluster_sectors =
		pf_le32_get(b + offsetof(struct pf_disk_header, cluster_sectors));
	h->bat_entries =
		pf_le32_get(b + offsetof(struct pf_disk_header, bat_entries));
	h->size_sectors =
		pf_le64_get(b + offsetof(struct pf_disk_header, size_sectors));
	h->in_use = pf_le32_get(b + offsetof(struct pf_disk_header, in_use));
	h->first_block_sectors = pf_le32_get(
		b + offsetof(struct pf_disk_header, first_block_sectors));
	h->flags = pf_le32_get(b + offsetof(struct pf_disk_header, flags));
	h->ext_sectors =
		pf_le64_get(b + offsetof(struct pf_disk_header, ext_sectors));

	if (h->version == 1 && h->size_sectors > UINT32_MAX)
		return pf_why_set(why, -EINVAL,
				  "v1 header has a non-zero high size word");
	if (h->in_use != PF_INUSE_CLOSED && h->in_use != PF_INUSE_OPEN &&
	    h->in_use != PF_INUSE_CLOSED_V21)
		return pf_why_set(why, -EINVAL,
				  "unknown in-use flag value 0x%08" PRIx32,
				  h->in_use);
	if (h->flags == PF_FLAG_INVALID)
		return pf_why_set(why, -EINVAL, "flags field is 0xffffffff (invalid)");
	if (h->ext_sectors > (UINT64_MAX >> PF_SECTOR_SHIFT))
		return pf_why_set(why, -EINVAL,
				  "format extension offset %" PRIu64 " is out of range",
				  h->ext_sectors);
	return geometry_derive(h, why);
}

void pf_header_encode(const struct pf_header *h, void *buf)
{
	uint8_t *b = buf;

	memset(b, 0, PF_HEADER_SIZE);
	memcpy(b, h->version == 1 ? PF_SIG_V1 : PF_SIG_V2, PF_SIG_LEN);
	pf_le32_put(b + offsetof(struct pf_disk_header, type), PF_IMAGE_TYPE);
	pf_le32_put(b + offsetof(struct pf_disk_header, heads), h->heads);
	pf_le32_put(b + offsetof(struct pf_disk_header, cylinders),
		    h->cylinders);
	pf_le32_put(b + offsetof(struct pf_disk_header, cluster_sectors),
		    h->cluster_sectors);
	pf_le32_put(b + offsetof(struct pf_disk_header, bat_entries),
		    h->bat_entries);
	pf_le64_put(b + offsetof(struct pf_disk_header, size_sectors),
		    h->size_sectors);
	pf_le32_put(b + offsetof(struct pf_disk_header, in_use), h->in_use);
	pf_le32_put(b + offsetof(struct pf_disk_header, first_block_sectors),
		    h->first_block_sectors);
	pf_le32_put(b + offsetof(struct pf_disk_header, flags), h->flags);
	pf_le64_put(b + offsetof(struct pf_disk_header, ext_sectors),
		    h->ext_sectors);
}

int pf_header_init(struct pf_header *h, uint64_t size_bytes,
		   uint32_t cluster_bytes, struct pf_why *why)
{
	uint64_t entries;
	uint32_t hdr;

	memset(h, 0, sizeof(*h));
	if (!pf_cluster_size_valid(cluster_bytes))
		return pf_why_set(why, -EINVAL,
				  "cluster size %" PRIu32
				  " is not a power of two between 64 KiB and 64 MiB",
				  cluster_bytes);
	if (size_bytes == 0 || size_bytes % PF_SECTOR_SIZE)
		return pf_why_set(why, -EINVAL,
				  "size %" PRIu64
				  " is not a positive multiple of 512 bytes",
				  size_bytes);
	entries = pf_div_round_up(size_bytes, cluster_bytes);
	if (entries > PF_MAX_BAT_ENTRIES)
		return pf_why_set(why, -EFBIG,
				  "size %" PRIu64 " needs %" PRIu64
				  " clusters, more than the BAT can hold (%u)",
				  size_bytes, entries, PF_MAX_BAT_ENTRIES);
	hdr = pf_hdr_clusters((uint32_t)entries, cluster_bytes);

	h->version = 2;
	h->cluster_sectors = cluster_bytes / PF_SECTOR_SIZE;
	h->bat_entries = (uint32_t)entries;
	h->size_sectors = size_bytes / PF_SECTOR_SIZE;
	h->in_use = PF_INUSE_CLOSED;
	h->first_block_sectors = hdr * h->cluster_sectors;
	h->flags = PF_FLAG_EMPTY;
	h->ext_sectors = 0;
	pf_chs(h->size_sectors, &h->heads, &h->cylinders);
	return geometry_derive(h, why);
}

uint32_t pf_bat_raw_get(const void *meta, uint32_t idx)
{
	return pf_le32_get((const uint8_t *)meta + pf_idx_entry_off(idx));
}

void pf_bat_raw_set(void *meta, uint32_t idx, uint32_t raw)
{
	pf_le32_put((uint8_t *)meta + pf_idx_entry_off(idx), raw);
}

/*
 * The entries of a BAT that threads share (the stack's map): a 32-bit
 * atomic access to the aligned entry, then the byte order.  The release
 * of a store pairs with the acquire of a load, so a reader that sees an
 * entry also sees the data written before it was set.
 */
uint32_t pf_bat_load(const struct pf_header *h, const void *meta, uint32_t idx)
{
	const uint32_t *p = (const uint32_t *)((const uint8_t *)meta +
					       pf_idx_entry_off(idx));
	uint32_t raw = le32toh(__atomic_load_n(p, __ATOMIC_ACQUIRE));

	return h->version == 1 ? raw / h->cluster_sectors : raw;
}

void pf_bat_store(const struct pf_header *h, void *meta, uint32_t idx,
		  uint32_t clu)
{
	uint32_t *p = (uint32_t *)((uint8_t *)meta + pf_idx_entry_off(idx));

	__atomic_store_n(p, htole32(clu ? pf_bat_encode(h, clu) : 0),
			 __ATOMIC_RELEASE);
}

bool pf_ext_magic_ok(const void *buf)
{
	return pf_le64_get(buf) == PF_EXT_MAGIC;
}

uint32_t pf_bat_encode(const struct pf_header *h, uint32_t clu)
{
	if (h->version == 1)
		return clu * h->cluster_sectors;	/* caller checked range */
	return clu;
}

int pf_bat_decode(const struct pf_header *h, uint32_t idx, uint32_t raw,
		  uint64_t file_clusters, uint32_t *clu, struct pf_why *why)
{
	uint32_t c;

	*clu = 0;
	if (raw == 0)
		return 0;
	if (raw == PF_BAT_RESERVED)
		return pf_why_set(why, -EUCLEAN,
				  "BAT entry %" PRIu32 " holds the reserved value 0xffffffff",
				  idx);
	if (h->version == 1) {
		if (raw % h->cluster_sectors)
			return pf_why_set(why, -EUCLEAN,
					  "BAT entry %" PRIu32 " (sector %" PRIu32
					  ") is not cluster aligned",
					  idx, raw);
		c = raw / h->cluster_sectors;
	} else {
		c = raw;
	}
	if (c < h->hdr_clusters)
		return pf_why_set(why, -EUCLEAN,
				  "BAT entry %" PRIu32 " points to cluster %" PRIu32
				  " inside the header and BAT",
				  idx, c);
	if (c >= file_clusters)
		return pf_why_set(why, -EUCLEAN,
				  "BAT entry %" PRIu32 " points to cluster %" PRIu32
				  " beyond the end of the file (%" PRIu64 " clusters)",
				  idx, c, file_clusters);
	*clu = c;
	return 0;
}

/* Manifests */

uint64_t pf_mf_file_size(const struct pf_mf_header *h)
{
	return PF_MF_HDR_SIZE + h->entries * pf_mf_entry_size(h->md_len) +
	       h->md_len;
}

void pf_mf_header_encode(const struct pf_mf_header *h, void *buf)
{
	uint8_t *b = buf;

	memset(b, 0, PF_MF_HDR_SIZE);
	memcpy(b, PF_MF_MAGIC, 8);
	pf_le32_put(b + 8, PF_MF_VERSION);
	pf_le32_put(b + 12, h->md_len);
	memcpy(b + 16, h->alg, strnlen(h->alg, PF_MF_NAME_BYTES - 1));
	pf_le32_put(b + 48, h->cluster_bytes);
	pf_le32_put(b + 52, h->bat_entries);
	pf_le64_put(b + 56, h->entries);
	memcpy(b + 64, h->guid, strnlen(h->guid, PF_MF_GUID_BYTES - 1));
	pf_le64_put(b + 104, h->file_bytes);
}

/* A NUL-terminated field of printable ASCII, empty or not. */
static bool text_field_ok(const uint8_t *f, size_t len, bool may_be_empty)
{
	size_t i;

	for (i = 0; i < len && f[i]; i++)
		if (f[i] < 0x21 || f[i] > 0x7e)
			return false;
	if (i == len || (!may_be_empty && i == 0))
		return false;
	for (; i < len; i++)	/* padding */
		if (f[i])
			return false;
	return true;
}

int pf_mf_header_decode(const void *buf, uint64_t file_len,
			struct pf_mf_header *h, struct pf_why *why)
{
	const uint8_t *b = buf;
	uint64_t max_entries;
	size_t i;

	memset(h, 0, sizeof(*h));
	if (file_len < PF_MF_HDR_SIZE || memcmp(b, PF_MF_MAGIC, 8))
		return pf_why_set(why, -EUCLEAN, "not a manifest (no %s magic)",
				  PF_MF_MAGIC);
	if (pf_le32_get(b + 8) != PF_MF_VERSION)
		return pf_why_set(why, -EUCLEAN, "manifest version %" PRIu32
				  " (this ploopctl reads %u)",
				  pf_le32_get(b + 8), PF_MF_VERSION);
	h->md_len = pf_le32_get(b + 12);
	if (h->md_len < 1 || h->md_len > PF_MF_MD_MAX)
		return pf_why_set(why, -EUCLEAN, "digest length %" PRIu32
				  " out of range", h->md_len);
	if (!text_field_ok(b + 16, PF_MF_NAME_BYTES, false))
		return pf_why_set(why, -EUCLEAN, "bad algorithm name field");
	memcpy(h->alg, b + 16, PF_MF_NAME_BYTES);
	h->cluster_bytes = pf_le32_get(b + 48);
	if (!pf_cluster_size_valid(h->cluster_bytes))
		return pf_why_set(why, -EUCLEAN, "cluster size %" PRIu32
				  " out of range", h->cluster_bytes);
	h->bat_entries = pf_le32_get(b + 52);
	if (h->bat_entries < 1 || h->bat_entries > PF_MAX_BAT_ENTRIES)
		return pf_why_set(why, -EUCLEAN, "%" PRIu32
				  " virtual clusters out of range",
				  h->bat_entries);
	h->entries = pf_le64_get(b + 56);
	if (h->entries > h->bat_entries)
		return pf_why_set(why, -EUCLEAN, "%" PRIu64
				  " entries for %" PRIu32 " virtual clusters",
				  h->entries, h->bat_entries);
	if (!text_field_ok(b + 64, PF_MF_GUID_BYTES, true))
		return pf_why_set(why, -EUCLEAN, "bad GUID field");
	memcpy(h->guid, b + 64, PF_MF_GUID_BYTES);
	h->file_bytes = pf_le64_get(b + 104);
	for (i = 112; i < PF_MF_HDR_SIZE; i++)
		if (b[i])
			return pf_why_set(why, -EUCLEAN,
					  "reserved header bytes are not zero");
	/* entries <= 2^29 and md_len <= 64: no overflow */
	max_entries = pf_mf_file_size(h);
	if (file_len != max_entries)
		return pf_why_set(why, -EUCLEAN, "%" PRIu64
				  " bytes, the header announces %" PRIu64,
				  file_len, max_entries);
	return 0;
}

void pf_mf_entry_encode(void *buf, uint32_t vclu, const uint8_t *md,
			uint32_t md_len)
{
	pf_le32_put(buf, vclu);
	memcpy((uint8_t *)buf + 4, md, md_len);
}

uint32_t pf_mf_entry_vclu(const void *buf)
{
	return pf_le32_get(buf);
}
