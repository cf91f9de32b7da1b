// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Read-only consistency check (see check.h).  Nothing here writes to a
 * file; repair belongs to a separate pass.
 *
 * The invariants checked are the INVARIANTS section of ploop-image(5):
 *   I1 the header decodes (done by pf_delta_open);
 *   I2 every non-zero BAT entry is not 0xffffffff, is cluster aligned (v1),
 *      points at or after the first data cluster and before the end of
 *      the file (and before a format extension);
 *   I3 no two BAT entries point at the same cluster;
 *   I4 the file is a whole number of clusters (a partial tail is a leak
 *      left by an interrupted extension, ploop1_image.h rule 2);
 *   I5 the in-use flag is clear (W8: otherwise recover before use);
 *   I6 the deltas of a stack agree on cluster size and version, no lower
 *      delta is larger than the top, and the top has the descriptor's size.
 * Clusters of the data area that no entry references are leaks (W8).
 */
#include "check.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void vreport(struct pf_check_report *r, const char *file,
		    enum pf_finding kind, const char *fmt, va_list ap)
{
	char msg[512];

	r->count[kind]++;
	if (!r->emit)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	r->emit(r->ctx, file, kind, msg);
}

void pf_check_add(struct pf_check_report *r, const char *file,
		  enum pf_finding kind, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(r, file, kind, fmt, ap);
	va_end(ap);
}

/* Per-file state: limits how many findings of a kind are printed. */
struct file_ctx {
	struct pf_check_report *r;
	const char *file;
	uint64_t seen[PF_FIND_KINDS];
};

static void PF_PRINTF(3, 4)
	finding(struct file_ctx *f, enum pf_finding kind, const char *fmt, ...)
{
	va_list ap;

	if (++f->seen[kind] > PF_CHECK_MAX_REPORTS) {
		f->r->count[kind]++;	/* counted, not printed */
		return;
	}
	va_start(ap, fmt);
	vreport(f->r, f->file, kind, fmt, ap);
	va_end(ap);
}

static void summarize_suppressed(struct file_ctx *f)
{
	int k;

	for (k = 0; k < PF_FIND_KINDS; k++)
		if (f->seen[k] > PF_CHECK_MAX_REPORTS && f->r->emit) {
			char msg[128];

			snprintf(msg, sizeof(msg),
				 "... and %" PRIu64 " more like these",
				 f->seen[k] - PF_CHECK_MAX_REPORTS);
			f->r->emit(f->r->ctx, f->file, (enum pf_finding)k, msg);
		}
}

/*
 * Validate the format extension named by a V21 header.  Returns the
 * first cluster that belongs to it (the data area ends there), or
 * d->file_clusters when there is none or it is unusable.
 */
static uint64_t check_extension(struct pf_delta *d, struct file_ctx *f)
{
	const struct pf_header *h = &d->hdr;
	uint64_t off, clu;
	uint8_t magic[8];
	int ret;

	if (h->in_use != PF_INUSE_CLOSED_V21) {
		if (h->ext_sectors)
			finding(f, PF_FIND_NOTE,
				"stale format extension offset %" PRIu64
				" ignored (in-use flag is not v2.1)",
				h->ext_sectors);
		return d->file_clusters;
	}
	if (!h->ext_sectors) {
		finding(f, PF_FIND_NOTE,
			"in-use flag says v2.1 but no format extension offset is set");
		return d->file_clusters;
	}
	off = h->ext_sectors << PF_SECTOR_SHIFT;
	if (off % h->cluster_bytes) {
		finding(f, PF_FIND_CORRUPT,
			"format extension at sector %" PRIu64
			" is not cluster aligned",
			h->ext_sectors);
		return d->file_clusters;
	}
	clu = off >> h->cluster_shift;
	if (clu < h->hdr_clusters || clu >= d->file_clusters) {
		finding(f, PF_FIND_CORRUPT,
			"format extension at cluster %" PRIu64
			" is outside the data area",
			clu);
		return d->file_clusters;
	}
	ret = pf_delta_read(d, magic, sizeof(magic), off);
	if (ret < 0 || !pf_ext_magic_ok(magic)) {
		finding(f, PF_FIND_CORRUPT,
			"format extension at cluster %" PRIu64
			" has no extension magic",
			clu);
		return d->file_clusters;
	}
	return clu;
}

/* Find the first BAT index below @limit mapping file cluster @clu. */
static uint32_t first_owner(const struct pf_delta *d, uint32_t clu,
			    uint32_t limit)
{
	uint32_t i, c;

	for (i = 0; i < limit; i++)
		if (pf_bat_decode(&d->hdr, i, pf_delta_bat_raw(d, i),
				  d->file_clusters, &c, NULL) == 0 &&
		    c == clu)
			return i;
	return limit;
}

int pf_check_delta(struct pf_delta *d, struct pf_check_report *r)
{
	const struct pf_header *h = &d->hdr;
	struct file_ctx f = { .r = r, .file = d->name };
	uint64_t data_end, used = 0, virt_clusters, tail;
	uint64_t *bitmap;
	uint32_t idx, clu, min_hdr;
	struct pf_why why;

	if (h->in_use == PF_INUSE_OPEN)
		finding(&f, PF_FIND_UNCLEAN,
			"in-use flag is set: the image was not closed cleanly");
	if (h->flags & PF_FLAG_FMT_CONVERT)
		finding(&f, PF_FIND_UNCLEAN,
			"a format version conversion was interrupted");
	min_hdr = pf_hdr_clusters(h->bat_entries, h->cluster_bytes);
	if (h->hdr_clusters != min_hdr)
		finding(&f, PF_FIND_NOTE,
			"data starts at cluster %" PRIu32
			" although the BAT needs only %" PRIu32
			" (ploop's kernel driver refuses this)",
			h->hdr_clusters, min_hdr);
	if (d->file_bytes % h->cluster_bytes)
		finding(&f, PF_FIND_LEAK,
			"file ends with a partial cluster of %" PRIu64 " bytes",
			d->file_bytes % h->cluster_bytes);
	if (d->file_clusters < h->hdr_clusters) {
		finding(&f, PF_FIND_CORRUPT,
			"file of %" PRIu64
			" bytes is shorter than its header and BAT clusters (%" PRIu32
			")",
			d->file_bytes, h->hdr_clusters);
		summarize_suppressed(&f);
		return 0;
	}

	data_end = check_extension(d, &f);
	/* One bit per file cluster; only the bits of mapped entries are
	 * touched, so a hostile sparse file costs address space only. */
	bitmap = calloc(pf_div_round_up(data_end, 64), sizeof(*bitmap));
	if (!bitmap)
		return -ENOMEM;

	virt_clusters = pf_div_round_up(h->size_sectors, h->cluster_sectors);
	for (idx = 0; idx < h->bat_entries; idx++) {
		uint32_t raw = pf_delta_bat_raw(d, idx);

		if (!raw)
			continue;
		r->mapped++;
		if (pf_bat_decode(h, idx, raw, d->file_clusters, &clu,
				  &why) < 0) {
			finding(&f, PF_FIND_CORRUPT, "%s", why.msg);
			continue;
		}
		if (clu >= data_end) {
			finding(&f, PF_FIND_CORRUPT,
				"BAT entry %" PRIu32 " points to cluster %" PRIu32
				" inside the format extension",
				idx, clu);
			continue;
		}
		if (idx >= virt_clusters)
			finding(&f, PF_FIND_NOTE,
				"BAT entry %" PRIu32
				" maps data beyond the virtual size",
				idx);
		if (bitmap[clu / 64] & (1ull << (clu % 64))) {
			/* Naming the first owner costs a scan: only for the
			 * findings that are printed. */
			uint32_t owner =
				f.seen[PF_FIND_CORRUPT] < PF_CHECK_MAX_REPORTS ?
					first_owner(d, clu, idx) :
					0;

			finding(&f, PF_FIND_CORRUPT,
				"BAT entries %" PRIu32 " and %" PRIu32
				" both point to cluster %" PRIu32,
				owner, idx, clu);
			continue;
		}
		bitmap[clu / 64] |= 1ull << (clu % 64);
		used++;
	}
	free(bitmap);

	/* the entries counted in @used are those below data_end */
	tail = data_end - pf_delta_alloc_head(d, data_end);
	r->leaked_clusters += data_end - h->hdr_clusters - used;
	r->tail_leaked_clusters += tail;
	if (data_end - h->hdr_clusters > used)
		finding(&f, PF_FIND_LEAK,
			"%" PRIu64 " clusters are not referenced by the BAT (%" PRIu64
			" of them at the end of the file)",
			data_end - h->hdr_clusters - used, tail);
	summarize_suppressed(&f);
	return 0;
}

void pf_check_stack(const struct pf_dd *dd, struct pf_delta *const *chain,
		    size_t n, struct pf_check_report *r)
{
	const struct pf_delta *top = chain[n - 1];
	size_t i;

	if (top->hdr.size_sectors != dd->disk_size_sectors)
		pf_check_add(r, top->name, PF_FIND_CORRUPT,
			     "top delta has %" PRIu64
			     " sectors but " PF_DD_NAME " says %" PRIu64,
			     top->hdr.size_sectors, dd->disk_size_sectors);
	for (i = 0; i < n; i++) {
		const struct pf_header *h = &chain[i]->hdr;

		if (h->cluster_sectors != dd->blocksize)
			pf_check_add(r, chain[i]->name, PF_FIND_CORRUPT,
				     "cluster size of %" PRIu32
				     " sectors differs from Blocksize %" PRIu32
				     " in " PF_DD_NAME,
				     h->cluster_sectors, dd->blocksize);
		if (h->version != top->hdr.version)
			pf_check_add(r, chain[i]->name, PF_FIND_CORRUPT,
				     "format v%d delta in a stack whose top is v%d",
				     h->version, top->hdr.version);
		if (i + 1 < n && h->size_sectors > chain[i + 1]->hdr.size_sectors)
			pf_check_add(r, chain[i]->name, PF_FIND_CORRUPT,
				     "delta is larger (%" PRIu64
				     " sectors) than the delta above it (%" PRIu64 ")",
				     h->size_sectors,
				     chain[i + 1]->hdr.size_sectors);
	}
}

/* Repair */

static void PF_PRINTF(3, 4)
	repaired(struct file_ctx *f, unsigned *fixes, const char *fmt, ...)
{
	char msg[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	(*fixes)++;
	finding(f, PF_FIND_NOTE, "repaired: %s", msg);
}

/* Write every BAT page of @d from d->meta (page 0 with the header as it
 * is on disk) and sync. */
static int write_all_bat(struct pf_delta *d)
{
	size_t n = pf_div_round_up(pf_idx_entry_off(d->hdr.bat_entries),
				   PF_BAT_PAGE_SIZE), i;
	uint32_t *pages = malloc(n * sizeof(*pages));
	int ret;

	if (!pages)
		return -ENOMEM;
	for (i = 0; i < n; i++)
		pages[i] = (uint32_t)i;
	/* d->meta is whole, aligned pages: the copies as they stand */
	ret = pf_delta_write_bat(d, pages, d->meta, n, NULL);
	free(pages);
	return ret;
}

int pf_repair_delta(struct pf_delta *d, bool force, struct pf_check_report *r,
		    unsigned *fixes)
{
	struct pf_header *h = &d->hdr;
	struct file_ctx f = { .r = r, .file = d->name };
	uint64_t *bitmap, keep;
	uint32_t idx, clu, raw;
	bool bat_changed = false, corrupt = false;
	struct pf_why why;
	int ret = 0;

	*fixes = 0;
	if (d->file_clusters < h->hdr_clusters) {
		finding(&f, PF_FIND_CORRUPT,
			"file is shorter than its header and BAT clusters (not repairable)");
		summarize_suppressed(&f);
		return 0;
	}
	bitmap = calloc(pf_div_round_up(d->file_clusters, 64), sizeof(*bitmap));
	if (!bitmap)
		return -ENOMEM;
	for (idx = 0; idx < h->bat_entries; idx++) {
		raw = pf_delta_bat_raw(d, idx);
		if (!raw)
			continue;
		if (pf_bat_decode(h, idx, raw, d->file_clusters, &clu, &why)) {
			pf_bat_raw_set(d->meta, idx, 0);
			bat_changed = true;
			repaired(&f, fixes, "dropped: %s", why.msg);
			continue;
		}
		if (bitmap[clu / 64] & (1ull << (clu % 64))) {
			uint32_t owner = first_owner(d, clu, idx);

			if (!force) {
				finding(&f, PF_FIND_CORRUPT,
					"BAT entries %" PRIu32 " and %" PRIu32
					" both point to cluster %" PRIu32
					" (left as is: repair with --force drops the later one)",
					owner, idx, clu);
				corrupt = true;
				continue;
			}
			pf_bat_raw_set(d->meta, idx, 0);
			bat_changed = true;
			repaired(&f, fixes,
				 "dropped BAT entry %" PRIu32
				 ", which shared cluster %" PRIu32
				 " with entry %" PRIu32,
				 idx, clu, owner);
			continue;
		}
		bitmap[clu / 64] |= 1ull << (clu % 64);
	}
	free(bitmap);

	if (bat_changed) {
		ret = write_all_bat(d);
		if (ret)
			return ret;
	}

	keep = pf_delta_alloc_head(d, d->file_clusters);
	if (h->in_use != PF_INUSE_CLOSED_V21 && d->file_bytes > pf_clu_to_off(h, (uint32_t)keep)) {
		uint64_t gone = d->file_bytes - pf_clu_to_off(h, (uint32_t)keep);

		ret = pf_delta_trim(d, keep);
		if (!ret)
			ret = pf_delta_sync(d);
		if (ret)
			return ret;
		repaired(&f, fixes,
			 "truncated %" PRIu64 " bytes of leaked clusters at the end",
			 gone);
	}

	if (h->in_use == PF_INUSE_OPEN && !corrupt) {
		struct pf_header closed = *h;

		closed.in_use = PF_INUSE_CLOSED;
		closed.ext_sectors = 0;
		ret = pf_delta_write_header(d, &closed, NULL);
		if (ret)
			return ret;
		repaired(&f, fixes, "cleared the in-use flag");
	}
	summarize_suppressed(&f);
	return 0;
}
