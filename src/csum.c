// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Message digests through OpenSSL EVP, and the block digest (csum.h).
 * OpenSSL's conventions (1 for success, NULL for failure, its error
 * queue) end here: callers see 0 or -errno.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/objects.h>

#include "csum.h"

struct pf_csum_alg {
	EVP_MD *md;		/* fetched once: no implicit fetch per init */
	size_t size;
	char name[PF_CSUM_NAME_MAX + 1];
};

struct pf_csum {
	const struct pf_csum_alg *alg;
	EVP_MD_CTX *ctx;
	bool started;		/* ctx initialised for the current message */
};

int pf_csum_alg_get(const char *name, struct pf_csum_alg **out,
		    struct pf_why *why)
{
	struct pf_csum_alg *a;
	const char *ln;
	size_t i;
	int sz;

	*out = NULL;
	if (!name[0] || strlen(name) > PF_CSUM_NAME_MAX)
		return pf_why_set(why, -EINVAL, "digest name '%.40s' is %s",
				  name, name[0] ? "too long" : "empty");
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->md = EVP_MD_fetch(NULL, name, NULL);
	if (!a->md) {
		free(a);
		return pf_why_set(why, -ENOENT,
				  "no digest named '%s' (openssl list -digest-algorithms)",
				  name);
	}
	sz = EVP_MD_get_size(a->md);
	if ((EVP_MD_get_flags(a->md) & EVP_MD_FLAG_XOF) || sz <= 0 ||
	    sz > PF_CSUM_MAX) {
		pf_csum_alg_free(a);
		return pf_why_set(why, -EINVAL,
				  "digest '%s' has no fixed length (an extendable-output function)",
				  name);
	}
	a->size = (size_t)sz;
	/* the long name of the object is the familiar lower-case one
	 * ("sha256", "blake2b512"); else the name as given */
	ln = OBJ_nid2ln(EVP_MD_get_type(a->md));
	if (!ln || strlen(ln) > PF_CSUM_NAME_MAX)
		ln = name;
	for (i = 0; ln[i]; i++)
		a->name[i] = (char)tolower((unsigned char)ln[i]);
	*out = a;
	return 0;
}

void pf_csum_alg_free(struct pf_csum_alg *a)
{
	if (!a)
		return;
	EVP_MD_free(a->md);
	free(a);
}

size_t pf_csum_alg_size(const struct pf_csum_alg *a)
{
	return a->size;
}

const char *pf_csum_alg_name(const struct pf_csum_alg *a)
{
	return a->name;
}

int pf_csum_new(const struct pf_csum_alg *a, struct pf_csum **out)
{
	struct pf_csum *c = calloc(1, sizeof(*c));

	*out = NULL;
	if (!c)
		return -ENOMEM;
	c->ctx = EVP_MD_CTX_new();
	if (!c->ctx) {
		free(c);
		return -ENOMEM;
	}
	c->alg = a;
	*out = c;
	return 0;
}

void pf_csum_free(struct pf_csum *c)
{
	if (!c)
		return;
	EVP_MD_CTX_free(c->ctx);
	free(c);
}

int pf_csum_reset(struct pf_csum *c)
{
	c->started = EVP_DigestInit_ex2(c->ctx, c->alg->md, NULL) == 1;
	return c->started ? 0 : -EIO;
}

int pf_csum_update(struct pf_csum *c, const void *buf, size_t len)
{
	if (!c->started && pf_csum_reset(c))
		return -EIO;
	return EVP_DigestUpdate(c->ctx, buf, len) == 1 ? 0 : -EIO;
}

int pf_csum_final(struct pf_csum *c, uint8_t *md)
{
	unsigned int n = 0;
	int ok;

	if (!c->started && pf_csum_reset(c))
		return -EIO;
	ok = EVP_DigestFinal_ex(c->ctx, md, &n) == 1 && n == c->alg->size;
	c->started = false;
	return ok ? 0 : -EIO;
}

int pf_csum_buf(struct pf_csum *c, const void *buf, size_t len, uint8_t *md)
{
	int ret = pf_csum_reset(c);

	if (!ret)
		ret = pf_csum_update(c, buf, len);
	if (!ret)
		ret = pf_csum_final(c, md);
	return ret;
}

void pf_csum_hex(const uint8_t *md, size_t len, char *out)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < len; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[2 * len] = '\0';
}

bool pf_is_zero(const void *buf, size_t len)
{
	const unsigned char *p = buf;

	/* the first 16 bytes compared one by one, then the rest against
	 * itself shifted by 16: memcmp's speed, no zero buffer */
	if (len <= 16) {
		while (len--)
			if (*p++)
				return false;
		return true;
	}
	for (size_t i = 0; i < 16; i++)
		if (p[i])
			return false;
	return memcmp(p, p + 16, len - 16) == 0;
}

/* The block digest */

int pf_blk_init(struct pf_blk *b, const struct pf_csum_alg *a)
{
	void *zeros;
	int ret;

	memset(b, 0, sizeof(*b));
	b->md_len = pf_csum_alg_size(a);
	ret = pf_csum_new(a, &b->outer);
	if (ret)
		return ret;
	zeros = calloc(1, PF_BLK_BLOCK);
	if (!zeros) {
		pf_blk_free(b);
		return -ENOMEM;
	}
	ret = pf_csum_buf(b->outer, zeros, PF_BLK_BLOCK, b->zero_md);
	free(zeros);
	if (!ret)
		ret = pf_csum_reset(b->outer);
	if (ret)
		pf_blk_free(b);
	return ret;
}

void pf_blk_free(struct pf_blk *b)
{
	pf_csum_free(b->outer);
	b->outer = NULL;
}

int pf_blk_add(struct pf_blk *b, const uint8_t *md, uint32_t len)
{
	if (b->short_seen || len == 0 || len > PF_BLK_BLOCK)
		return -EINVAL;
	if (len < PF_BLK_BLOCK)
		b->short_seen = true;
	b->len += len;
	return pf_csum_update(b->outer, md, b->md_len);
}

int pf_blk_add_zero(struct pf_blk *b, uint64_t count)
{
	/* feed the outer digest in batches of zero digests */
	uint8_t batch[64 * PF_CSUM_MAX];
	size_t per = sizeof(batch) / b->md_len, i;
	int ret;

	if (b->short_seen && count)
		return -EINVAL;
	for (i = 0; i < per; i++)
		memcpy(batch + i * b->md_len, b->zero_md, b->md_len);
	while (count) {
		size_t n = count < per ? (size_t)count : per;

		ret = pf_csum_update(b->outer, batch, n * b->md_len);
		if (ret)
			return ret;
		count -= n;
		b->len += (uint64_t)n * PF_BLK_BLOCK;
	}
	return 0;
}

int pf_blk_final(struct pf_blk *b, uint8_t *md)
{
	uint8_t le[8];
	int ret;

	pf_le64_put(le, b->len);
	ret = pf_csum_update(b->outer, le, sizeof(le));
	return ret ? ret : pf_csum_final(b->outer, md);
}
