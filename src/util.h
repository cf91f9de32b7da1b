/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Layer 0 helpers: full-length I/O, overflow-checked arithmetic,
 * little-endian access, size parsing, and the "why" buffer that carries
 * one human-readable reason from where an error is found to where it is
 * reported.
 */
#ifndef PF_UTIL_H
#define PF_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#define PF_MUST_CHECK	__attribute__((warn_unused_result))
#define PF_PRINTF(a, b)	__attribute__((format(printf, a, b)))
#define PF_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* One reason, written by whoever detects a problem. */
struct pf_why {
	char msg[256];
};

/* Write a reason into @why (may be NULL). */
void pf_why_fmt(struct pf_why *why, const char *fmt, ...) PF_PRINTF(2, 3);

/* Set @why and evaluate to @err, so callers can write
 * "return pf_why_set(why, -EINVAL, "...", ...);".  A macro so that the
 * error code is visible where it is returned (to readers and to static
 * analysis alike). */
#define pf_why_set(why, err, ...) (pf_why_fmt((why), __VA_ARGS__), (err))

/* Full-length I/O: loops on EINTR and short transfers; a premature end of
 * file is -EIO.  Returns 0 or -errno. */
PF_MUST_CHECK int pf_pread_full(int fd, void *buf, size_t len, uint64_t off);
PF_MUST_CHECK int pf_pwrite_full(int fd, const void *buf, size_t len,
				 uint64_t off);

/* fsync the directory that holds entries being created or renamed. */
PF_MUST_CHECK int pf_fsync_dir(int dirfd);

/* Little-endian access to unaligned buffers. */
static inline uint32_t pf_le32_get(const void *p)
{
	const uint8_t *b = p;

	return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
	       (uint32_t)b[3] << 24;
}

static inline uint64_t pf_le64_get(const void *p)
{
	const uint8_t *b = p;

	return (uint64_t)pf_le32_get(b) | (uint64_t)pf_le32_get(b + 4) << 32;
}

static inline void pf_le32_put(void *p, uint32_t v)
{
	uint8_t *b = p;

	b[0] = (uint8_t)v;
	b[1] = (uint8_t)(v >> 8);
	b[2] = (uint8_t)(v >> 16);
	b[3] = (uint8_t)(v >> 24);
}

static inline void pf_le64_put(void *p, uint64_t v)
{
	pf_le32_put(p, (uint32_t)v);
	pf_le32_put((uint8_t *)p + 4, (uint32_t)(v >> 32));
}

static inline bool pf_is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

static inline uint64_t pf_div_round_up(uint64_t n, uint64_t d)
{
	return n / d + (n % d != 0);
}

/*
 * Parse a size: a decimal number with an optional K, M, G, T or P suffix
 * (powers of 1024, case-insensitive, optional trailing "B" or "iB").
 * A bare number is bytes.  Returns 0, -EINVAL or -ERANGE.
 */
PF_MUST_CHECK int pf_parse_size(const char *s, uint64_t *out);

/* Format @bytes as "1.5 GiB" into @buf. */
const char *pf_fmt_size(uint64_t bytes, char *buf, size_t len);

/*
 * The length to keep of @s[0..@n) when a text is cut there, before the
 * byte @next: an incomplete UTF-8 sequence at the end is dropped, but
 * never below @floor.
 */
static inline size_t pf_utf8_cut(const char *s, size_t n, size_t floor,
				 char next)
{
	if (((unsigned char)next & 0xc0) != 0x80)
		return n;	/* cut at a character boundary */
	while (n > floor && ((unsigned char)s[n - 1] & 0xc0) == 0x80)
		n--;
	if (n > floor && ((unsigned char)s[n - 1] & 0xc0) == 0xc0)
		n--;
	return n;
}

/* Advance @ts by @ms (>= 0) milliseconds, normalised. */
static inline void pf_ts_add_ms(struct timespec *ts, long ms)
{
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

/* Is @a earlier than @b? */
static inline bool pf_ts_before(const struct timespec *a,
				const struct timespec *b)
{
	return a->tv_sec < b->tv_sec ||
	       (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

#endif /* PF_UTIL_H */
