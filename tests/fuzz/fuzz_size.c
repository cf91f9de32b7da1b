// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Fuzz target of the size parser of util.c (pf_parse_size), which reads
 * ploopctl's size options.
 *
 * The input is the option's text (a NUL ends it early).  Properties:
 * the result is 0, -EINVAL or -ERANGE; an accepted size is the number
 * times its unit, so a bare number is its own value; a size given in
 * bytes formats with pf_fmt_size() into a terminated string.
 */
#include "fuzz.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "util.h"

/* An accepted @s: its leading decimal number times its unit. */
static uint64_t expected(const char *s)
{
	static const char units[] = "kmgtp";
	const char *u;
	uint64_t n = 0;

	for (; *s >= '0' && *s <= '9'; s++)
		n = n * 10 + (uint64_t)(*s - '0');
	if (!*s)
		return n;
	u = strchr(units, *s | 0x20);
	fuzz_assert(u);
	return n << (10 * (u - units + 1));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s, num[32], shown[32];
	uint64_t v = 0, again = 0;
	int ret;

	s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	ret = pf_parse_size(s, &v);
	fuzz_assert(ret == 0 || ret == -EINVAL || ret == -ERANGE);
	if (!ret) {
		/* the value in bytes parses back to itself */
		snprintf(num, sizeof(num), "%" PRIu64, v);
		fuzz_assert(pf_parse_size(num, &again) == 0 && again == v);
		fuzz_assert(v == expected(s));
		pf_fmt_size(v, shown, sizeof(shown));
		fuzz_assert(memchr(shown, '\0', sizeof(shown)));
	}
	free(s);
	return 0;
}
