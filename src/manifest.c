// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Manifests of sealed deltas (manifest.h): build, publish, drop, load,
 * compose and verify.  The on-disk encoding is format.c's; the digests
 * are csum.c's, read by sum.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "csum.h"
#include "manifest.h"

#define TMP_SUFFIX	".tmp"

/* -errno of the call that just failed (never 0) */
static int neg_errno(void)
{
	return errno ? -errno : -EIO;
}

void pf_manifest_free(struct pf_manifest *m)
{
	if (!m)
		return;
	free(m->ent);
	free(m);
}

char *pf_manifest_name(const char *delta_file)
{
	char *s;

	return asprintf(&s, "%s" PF_MF_SUFFIX, delta_file) < 0 ? NULL : s;
}

static char *tmp_name(const char *delta_file)
{
	char *s;

	return asprintf(&s, "%s" PF_MF_SUFFIX TMP_SUFFIX, delta_file) < 0 ?
		       NULL :
		       s;
}

static void step(const struct pf_mf_hook *hook, enum pf_mf_step st)
{
	if (hook && hook->step)
		hook->step(hook->ctx, st);
}

static size_t ent_size(const struct pf_manifest *m)
{
	return (size_t)pf_mf_entry_size(m->h.md_len);
}

static const uint8_t *ent_md(const struct pf_manifest *m, uint64_t i)
{
	return m->ent + i * ent_size(m) + 4;
}

static uint32_t ent_vclu(const struct pf_manifest *m, uint64_t i)
{
	return pf_mf_entry_vclu(m->ent + i * ent_size(m));
}

/* The root digest: over the encoded header and entries. */
static int root_of(const struct pf_manifest *m, const struct pf_csum_alg *a,
		   uint8_t *root)
{
	uint8_t hdr[PF_MF_HDR_SIZE];
	struct pf_csum *c = NULL;
	int ret;

	pf_mf_header_encode(&m->h, hdr);
	ret = pf_csum_new(a, &c);
	if (!ret)
		ret = pf_csum_update(c, hdr, sizeof(hdr));
	if (!ret && m->h.entries)
		ret = pf_csum_update(c, m->ent, m->h.entries * ent_size(m));
	if (!ret)
		ret = pf_csum_final(c, root);
	pf_csum_free(c);
	return ret;
}

static struct pf_manifest *manifest_new(const struct pf_csum_alg *a,
					uint32_t cluster_bytes,
					uint32_t bat_entries, uint64_t cap,
					const char *guid, uint64_t file_bytes)
{
	struct pf_manifest *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	m->h.md_len = (uint32_t)pf_csum_alg_size(a);
	snprintf(m->h.alg, sizeof(m->h.alg), "%s", pf_csum_alg_name(a));
	m->h.cluster_bytes = cluster_bytes;
	m->h.bat_entries = bat_entries;
	snprintf(m->h.guid, sizeof(m->h.guid), "%s", guid ? guid : "");
	m->h.file_bytes = file_bytes;
	m->ent = malloc(cap ? cap * pf_mf_entry_size(m->h.md_len) : 1);
	if (!m->ent) {
		free(m);
		return NULL;
	}
	return m;
}

/* Building */

struct build_ctx {
	struct pf_manifest *m;
	const char *name;	/* the delta, for messages */
	uint64_t cap;
	struct pf_why *why;
};

static int build_each(void *ctx, uint32_t vclu, const uint8_t *md, int err)
{
	struct build_ctx *b = ctx;
	struct pf_manifest *m = b->m;

	if (err)
		return pf_why_set(b->why, err, "%s: cannot read virtual cluster %"
				  PRIu32 ": %s", b->name, vclu, strerror(-err));
	if (m->h.entries == b->cap)
		return pf_why_set(b->why, -EAGAIN,
				  "%s: the BAT changed while it was read", b->name);
	pf_mf_entry_encode(m->ent + m->h.entries * ent_size(m), vclu, md,
			   m->h.md_len);
	m->h.entries++;
	return 0;
}

int pf_manifest_build(struct pf_delta *d, const char *guid,
		      const struct pf_sum_opts *o, struct pf_manifest **out,
		      struct pf_why *why)
{
	struct build_ctx b = { .why = why, .name = d->name };
	struct stat st;
	int ret;

	*out = NULL;
	if (fstat(d->f->fd, &st) < 0)
		return pf_why_set(why, neg_errno(), "%s: %s", d->name,
				  strerror(errno));
	b.cap = pf_delta_mapped_count(d);
	b.m = manifest_new(o->alg, d->hdr.cluster_bytes, d->hdr.bat_entries,
			   b.cap, guid, (uint64_t)st.st_size);
	if (!b.m)
		return -ENOMEM;
	ret = pf_sum_clusters(d, o, build_each, &b, why);
	if (!ret)
		ret = root_of(b.m, o->alg, b.m->root);
	if (ret) {
		pf_manifest_free(b.m);
		return ret;
	}
	*out = b.m;
	return 0;
}

/* Publishing and dropping (W9) */

int pf_manifest_store(int dirfd, const char *delta_file,
		      const struct pf_manifest *m,
		      const struct pf_mf_hook *hook, struct pf_why *why)
{
	char *name = pf_manifest_name(delta_file), *tmp = tmp_name(delta_file);
	uint8_t hdr[PF_MF_HDR_SIZE];
	size_t body = (size_t)(m->h.entries * ent_size(m));
	int fd = -1, ret;

	if (!name || !tmp) {
		ret = -ENOMEM;
		goto out;
	}
	pf_mf_header_encode(&m->h, hdr);
	/* a tmp file a crash left is replaced, never followed */
	(void)unlinkat(dirfd, tmp, 0);
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
					O_CLOEXEC, 0644);
	if (fd < 0) {
		ret = pf_why_set(why, neg_errno(), "%s: cannot create: %s", tmp,
				 strerror(errno));
		goto out;
	}
	ret = pf_pwrite_full(fd, hdr, sizeof(hdr), 0);
	if (!ret && body)
		ret = pf_pwrite_full(fd, m->ent, body, sizeof(hdr));
	if (!ret)
		ret = pf_pwrite_full(fd, m->root, m->h.md_len,
				     sizeof(hdr) + body);
	if (!ret && fsync(fd) < 0)
		ret = neg_errno();
	close(fd);
	if (ret) {
		pf_why_fmt(why, "%s: cannot write: %s", tmp, strerror(-ret));
		unlinkat(dirfd, tmp, 0);
		goto out;
	}
	step(hook, PF_MF_TMP_SYNCED);
	if (renameat(dirfd, tmp, dirfd, name) < 0) {
		ret = pf_why_set(why, neg_errno(), "%s: cannot rename: %s", name,
				 strerror(errno));
		unlinkat(dirfd, tmp, 0);
		goto out;
	}
	step(hook, PF_MF_RENAMED);
	ret = pf_fsync_dir(dirfd);
	if (ret)
		pf_why_fmt(why, "%s: directory sync failed: %s", name,
			   strerror(-ret));
out:
	free(name);
	free(tmp);
	return ret;
}

int pf_manifest_drop(int dirfd, const char *delta_file,
		     const struct pf_mf_hook *hook)
{
	char *name = pf_manifest_name(delta_file), *tmp = tmp_name(delta_file);
	bool gone = false;
	int ret = 0;

	if (!name || !tmp) {
		ret = -ENOMEM;
		goto out;
	}
	if (!unlinkat(dirfd, name, 0))
		gone = true;
	else if (errno != ENOENT)
		ret = neg_errno();
	if (!unlinkat(dirfd, tmp, 0))
		gone = true;
	/* always: an earlier drop may have unlinked it and then failed to
	 * sync the directory */
	if (!ret)
		ret = pf_fsync_dir(dirfd);
	if (!ret && gone)
		step(hook, PF_MF_DROPPED);
out:
	free(name);
	free(tmp);
	return ret;
}

int pf_manifest_seal(int dirfd, struct pf_delta *d, const char *delta_file,
		     const char *guid, const struct pf_sum_opts *o,
		     const struct pf_mf_hook *hook, struct pf_why *why)
{
	struct pf_manifest *m = NULL;
	int ret = pf_manifest_build(d, guid, o, &m, why);

	/* W9: for content that is durable, whoever wrote it last */
	if (!ret && m && (ret = d->f->ops->datasync(d->f)))
		pf_why_fmt(why, "%s: cannot sync: %s", d->name, strerror(-ret));
	if (!ret && m)
		ret = pf_manifest_store(dirfd, delta_file, m, hook, why);
	pf_manifest_free(m);
	return ret;
}

bool pf_manifest_exists(int dirfd, const char *delta_file)
{
	char *name = pf_manifest_name(delta_file);
	struct stat st;
	bool ret;

	ret = name && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
	free(name);
	return ret;
}

/* Loading */

int pf_manifest_parse(const void *buf, size_t len, struct pf_manifest **out,
		      struct pf_why *why)
{
	const uint8_t *b = buf;
	struct pf_csum_alg *a = NULL;
	struct pf_manifest *m = NULL;
	uint8_t root[PF_MF_MD_MAX];
	struct pf_mf_header h;
	uint64_t i, body;
	int ret;

	*out = NULL;
	if (len < PF_MF_HDR_SIZE)
		return pf_why_set(why, -EUCLEAN, "shorter than its header");
	ret = pf_mf_header_decode(b, len, &h, why);
	if (ret)
		return ret;
	ret = pf_csum_alg_get(h.alg, &a, NULL);
	if (ret == -ENOMEM)
		return ret;
	if (ret || pf_csum_alg_size(a) != h.md_len) {
		ret = ret ? -ENOTSUP : -EUCLEAN;
		pf_why_fmt(why, "algorithm %s %s", h.alg,
			   ret == -ENOTSUP ? "is unknown to this OpenSSL" :
					     "has another digest length");
		goto out;
	}
	m = calloc(1, sizeof(*m));
	body = h.entries * pf_mf_entry_size(h.md_len);	/* < len */
	if (m)
		m->ent = malloc(body ? body : 1);
	if (!m || !m->ent) {
		ret = -ENOMEM;
		goto out;
	}
	m->h = h;
	memcpy(m->ent, b + PF_MF_HDR_SIZE, body);
	memcpy(m->root, b + PF_MF_HDR_SIZE + body, h.md_len);
	for (i = 0; i < h.entries; i++) {
		uint32_t v = ent_vclu(m, i);

		if (v >= h.bat_entries || (i && v <= ent_vclu(m, i - 1))) {
			ret = pf_why_set(why, -EUCLEAN,
					 "entry %" PRIu64 " (cluster %" PRIu32
					 ") out of order or range", i, v);
			goto out;
		}
	}
	ret = root_of(m, a, root);
	if (!ret && memcmp(root, m->root, h.md_len))
		ret = pf_why_set(why, -EUCLEAN,
				 "the root digest does not match its contents");
	if (!ret) {
		*out = m;
		m = NULL;
	}
out:
	pf_csum_alg_free(a);
	pf_manifest_free(m);
	return ret;
}

int pf_manifest_load(int dirfd, const char *delta_file,
		     const struct pf_delta *d, struct pf_manifest **out,
		     struct pf_why *why)
{
	char *name = pf_manifest_name(delta_file);
	uint8_t hdr[PF_MF_HDR_SIZE], *buf = NULL;
	struct pf_why pw = { "" };
	struct pf_mf_header h;
	struct stat st;
	int fd = -1, ret;

	*out = NULL;
	if (!name)
		return -ENOMEM;
	fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
					 O_CLOEXEC);
	if (fd < 0) {
		ret = errno == ELOOP ? -EUCLEAN : neg_errno();
		pf_why_fmt(why, "%s: %s", name,
			   errno == ELOOP ? "is a symbolic link" :
					    strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		ret = pf_why_set(why, -EUCLEAN, "%s: is not a regular file",
				 name);
		goto out;
	}
	/* the header says how long the file must be: nothing larger is
	 * read into memory */
	ret = (uint64_t)st.st_size < sizeof(hdr) ?
		      -EUCLEAN :
		      pf_pread_full(fd, hdr, sizeof(hdr), 0);
	if (!ret)
		ret = pf_mf_header_decode(hdr, (uint64_t)st.st_size, &h, &pw);
	else if (ret == -EUCLEAN)
		pf_why_fmt(&pw, "shorter than its header");
	if (!ret && d &&
	    (h.cluster_bytes != d->hdr.cluster_bytes ||
	     h.bat_entries != d->hdr.bat_entries))
		ret = pf_why_set(&pw, -EUCLEAN,
				 "of another geometry (%" PRIu32
				 " clusters of %" PRIu32 " bytes, the delta has %"
				 PRIu32 " of %" PRIu32 ")",
				 h.bat_entries, h.cluster_bytes,
				 d->hdr.bat_entries, d->hdr.cluster_bytes);
	if (!ret) {
		buf = malloc((size_t)st.st_size);
		ret = buf ? pf_pread_full(fd, buf, (size_t)st.st_size, 0) :
			    -ENOMEM;
		if (ret)
			pf_why_fmt(&pw, "cannot %s: %s",
				   buf ? "read" : "hold it in memory",
				   strerror(-ret));
	}
	if (!ret)
		ret = pf_manifest_parse(buf, (size_t)st.st_size, out, &pw);
	if (ret && pw.msg[0])
		pf_why_fmt(why, "%s: %s", name, pw.msg);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	free(name);
	return ret;
}

/* Composing (down merge) */

int pf_manifest_compose(const struct pf_manifest *lower,
			const struct pf_manifest *upper, const char *guid,
			uint64_t file_bytes, struct pf_manifest **out)
{
	struct pf_csum_alg *a = NULL;
	struct pf_manifest *m;
	uint64_t i = 0, k = 0;
	size_t es = ent_size(lower);
	int ret;

	*out = NULL;
	if (strcmp(lower->h.alg, upper->h.alg) ||
	    lower->h.md_len != upper->h.md_len ||
	    lower->h.cluster_bytes != upper->h.cluster_bytes ||
	    lower->h.bat_entries != upper->h.bat_entries)
		return -EINVAL;
	ret = pf_csum_alg_get(lower->h.alg, &a, NULL);
	if (ret)
		return ret == -ENOMEM ? ret : -EINVAL;
	m = manifest_new(a, lower->h.cluster_bytes, lower->h.bat_entries,
			 lower->h.entries + upper->h.entries, guid, file_bytes);
	if (!m) {
		pf_csum_alg_free(a);
		return -ENOMEM;
	}
	while (i < lower->h.entries || k < upper->h.entries) {
		uint32_t lv = i < lower->h.entries ? ent_vclu(lower, i) :
						     UINT32_MAX;
		uint32_t uv = k < upper->h.entries ? ent_vclu(upper, k) :
						     UINT32_MAX;
		const uint8_t *src;

		if (uv <= lv) {
			src = upper->ent + k++ * es;
			if (uv == lv)
				i++;	/* the upper one holds it now */
		} else {
			src = lower->ent + i++ * es;
		}
		memcpy(m->ent + m->h.entries++ * es, src, es);
	}
	ret = root_of(m, a, m->root);
	pf_csum_alg_free(a);
	if (ret) {
		pf_manifest_free(m);
		return ret;
	}
	*out = m;
	return 0;
}

/* Verifying */

const char *pf_mf_problem_name(enum pf_mf_problem p)
{
	switch (p) {
	case PF_MF_DIFFERS:
		return "data differs from the manifest";
	case PF_MF_UNREADABLE:
		return "cannot be read";
	case PF_MF_UNMAPPED:
		return "sealed, but no longer mapped";
	case PF_MF_UNLISTED:
		return "mapped since sealing";
	}
	return "?";
}

struct verify_ctx {
	const struct pf_manifest *m;
	uint64_t next;		/* next manifest entry */
	pf_mf_bad_fn bad;
	void *ctx;
	uint64_t problems;
};

static void report(struct verify_ctx *v, uint32_t vclu, enum pf_mf_problem p)
{
	v->problems++;
	if (v->bad)
		v->bad(v->ctx, vclu, p);
}

/* Entries listed before @vclu that the walk passed: not mapped now. */
static void skip_unmapped(struct verify_ctx *v, uint32_t vclu)
{
	while (v->next < v->m->h.entries && ent_vclu(v->m, v->next) < vclu)
		report(v, ent_vclu(v->m, v->next++), PF_MF_UNMAPPED);
}

static int verify_each(void *ctx, uint32_t vclu, const uint8_t *md, int err)
{
	struct verify_ctx *v = ctx;
	const struct pf_manifest *m = v->m;

	skip_unmapped(v, vclu);
	if (v->next >= m->h.entries || ent_vclu(m, v->next) != vclu) {
		report(v, vclu, PF_MF_UNLISTED);
		return 0;
	}
	if (err)
		report(v, vclu, PF_MF_UNREADABLE);
	else if (memcmp(md, ent_md(m, v->next), m->h.md_len))
		report(v, vclu, PF_MF_DIFFERS);
	v->next++;
	return 0;
}

int pf_manifest_verify(struct pf_delta *d, const struct pf_manifest *m,
		       const struct pf_sum_opts *o, pf_mf_bad_fn bad,
		       void *ctx, uint64_t *problems, struct pf_why *why)
{
	struct verify_ctx v = { .m = m, .bad = bad, .ctx = ctx };
	struct pf_sum_opts mo = *o;
	struct pf_csum_alg *a = NULL;
	int ret;

	*problems = 0;
	if (m->h.cluster_bytes != d->hdr.cluster_bytes ||
	    m->h.bat_entries != d->hdr.bat_entries)
		return pf_why_set(why, -EUCLEAN,
				  "the manifest is of another geometry (%" PRIu32
				  " clusters of %" PRIu32 " bytes)",
				  m->h.bat_entries, m->h.cluster_bytes);
	ret = pf_csum_alg_get(m->h.alg, &a, why);
	if (ret)
		return ret == -ENOMEM ? ret : -ENOTSUP;
	mo.alg = a;
	ret = pf_sum_clusters(d, &mo, verify_each, &v, why);
	if (!ret)
		skip_unmapped(&v, UINT32_MAX);
	pf_csum_alg_free(a);
	*problems = v.problems;
	return ret;
}

int pf_manifest_check(int dirfd, struct pf_delta *d, const char *file,
		      const char *guid, bool may_seal,
		      const struct pf_sum_opts *o,
		      pf_mf_bad_fn bad, void *ctx, enum pf_mf_state *state,
		      uint64_t *clusters, struct pf_why *why)
{
	struct pf_manifest *m = NULL;
	uint64_t problems = 0;
	int ret;

	*clusters = 0;
	ret = pf_manifest_load(dirfd, file, d, &m, why);
	if (!ret && !m)
		ret = -EIO;	/* cannot happen: load sets it on success */
	if (ret == -EUCLEAN || ret == -ENOTSUP) {
		*state = PF_MF_DAMAGED;
		return 0;
	}
	if (ret == -ENOENT && !may_seal) {
		*state = PF_MF_UNSEALED;
		return 0;
	}
	if (ret == -ENOENT) {
		why->msg[0] = '\0';
		ret = pf_manifest_seal(dirfd, d, file, guid, o, NULL, why);
		if (!ret) {
			*state = PF_MF_SEALED_NOW;
			*clusters = pf_delta_mapped_count(d);
		}
		return ret;
	}
	if (ret)
		return ret;
	ret = pf_manifest_verify(d, m, o, bad, ctx, &problems, why);
	if (ret == -EUCLEAN || ret == -ENOTSUP) {
		*state = PF_MF_DAMAGED;
		ret = 0;
	} else if (!ret) {
		*state = problems ? PF_MF_MISMATCH : PF_MF_OK;
		*clusters = pf_delta_mapped_count(d);
	}
	pf_manifest_free(m);
	return ret;
}
