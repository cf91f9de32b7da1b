/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * On-disk format of one ploop delta file (ploop-image(5)).
 *
 * Every integer on disk is little-endian.  Only src/format.c converts
 * between the on-disk structures below and the decoded native ones;
 * everybody else works with struct pf_header.
 *
 *   offset 0      64                     first_data_off             EOF
 *   | header 64 B | BAT: bat_entries x u32 | zero pad | data clusters ... |
 *   |<-------- hdr_clusters whole clusters ------------>|
 *
 * A BAT entry is a file cluster index counted from the start of the file
 * (v2, "WithouFreSpacExt") or a file offset in sectors (v1,
 * "WithoutFreeSpace").  0 means "not in this delta".
 */
#ifndef PLOOPFS_FORMAT_H
#define PLOOPFS_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define PF_SECTOR_SIZE		512u
#define PF_SECTOR_SHIFT		9
#define PF_HEADER_SIZE		64u
#define PF_BAT_PAGE_SIZE	4096u	/* unit of BAT writes, as dm-ploop */
#define PF_BAT_ENTRY_SIZE	4u

#define PF_SIG_V1		"WithoutFreeSpace"
#define PF_SIG_V2		"WithouFreSpacExt"
#define PF_SIG_LEN		16

#define PF_IMAGE_TYPE		2u	/* m_Type, PRL_IMAGE_COMPRESSED */

/* m_DiskInUse values */
#define PF_INUSE_CLOSED		0x00000000u	/* closed cleanly */
#define PF_INUSE_OPEN		0x746F6E59u	/* "Ynot": open read-write */
#define PF_INUSE_CLOSED_V21	0x312e3276u	/* "v2.1": closed, extension valid */

/* m_Flags bits */
#define PF_FLAG_EMPTY		0x1u	/* CIF_Empty: no data written yet */
#define PF_FLAG_FMT_CONVERT	0x2u	/* CIF_FmtVersionConvert */
#define PF_FLAG_INVALID		0xFFFFFFFFu

/* Cluster sizes we create and accept: powers of two in this range. */
#define PF_CLUSTER_MIN		(64u * 1024)
#define PF_CLUSTER_MAX		(64u * 1024 * 1024)
#define PF_CLUSTER_DEFAULT	(1024u * 1024)

/*
 * Capacity limits.  The BAT holds u32 file cluster indices and its length
 * is itself a u32; like qemu we also cap the BAT at INT_MAX bytes so that
 * no size computed from it can overflow a signed 32-bit quantity.
 */
#define PF_MAX_BAT_ENTRIES	0x1FFFFFFFu
/* 0xFFFFFFFF is reserved (the kernels' in-memory "unmapped" marker). */
#define PF_BAT_RESERVED		0xFFFFFFFFu
#define PF_MAX_FILE_CLUSTERS	0xFFFFFFFFu	/* indices 0 .. 0xFFFFFFFE */

/* First 8 bytes (little-endian u64) of a format extension cluster. */
#define PF_EXT_MAGIC		0xAB234CEF23DCEA87ull

/* The 64-byte header, exactly as on disk (ploop's struct ploop_pvd_header). */
struct pf_disk_header {
	char     sig[PF_SIG_LEN];	/* PF_SIG_V1 or PF_SIG_V2, no NUL */
	uint32_t type;			/* m_Type, must be 2 */
	uint32_t heads;			/* CHS geometry, informational */
	uint32_t cylinders;
	uint32_t cluster_sectors;	/* m_Sectors: cluster size in sectors */
	uint32_t bat_entries;		/* m_Size: virtual size in clusters */
	uint64_t size_sectors;		/* m_SizeInSectors_v2 (v1: u32 + u32 0) */
	uint32_t in_use;		/* m_DiskInUse, PF_INUSE_* */
	uint32_t first_block_sectors;	/* m_FirstBlockOffset, in sectors */
	uint32_t flags;			/* m_Flags, PF_FLAG_* */
	uint64_t ext_sectors;		/* m_FormatExtensionOffset, in sectors */
} __attribute__((packed));

_Static_assert(sizeof(struct pf_disk_header) == PF_HEADER_SIZE,
	       "header is 64 bytes");
_Static_assert(offsetof(struct pf_disk_header, type) == 16, "m_Type @16");
_Static_assert(offsetof(struct pf_disk_header, heads) == 20, "m_Heads @20");
_Static_assert(offsetof(struct pf_disk_header, cylinders) == 24,
	       "m_Cylinders @24");
_Static_assert(offsetof(struct pf_disk_header, cluster_sectors) == 28,
	       "m_Sectors @28");
_Static_assert(offsetof(struct pf_disk_header, bat_entries) == 32,
	       "m_Size @32");
_Static_assert(offsetof(struct pf_disk_header, size_sectors) == 36,
	       "m_SizeInSectors @36");
_Static_assert(offsetof(struct pf_disk_header, in_use) == 44,
	       "m_DiskInUse @44");
_Static_assert(offsetof(struct pf_disk_header, first_block_sectors) == 48,
	       "m_FirstBlockOffset @48");
_Static_assert(offsetof(struct pf_disk_header, flags) == 52, "m_Flags @52");
_Static_assert(offsetof(struct pf_disk_header, ext_sectors) == 56,
	       "m_FormatExtensionOffset @56");

#endif /* PLOOPFS_FORMAT_H */
