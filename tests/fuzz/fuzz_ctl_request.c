// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Fuzz target of the daemon's control request parser
 * (pf_ctl_parse_request, control.c).
 *
 * The input is one request line as the server's line reader hands it
 * over: at most PF_CTL_LINE_MAX - 1 bytes, '\n' stripped (a NUL ends it
 * early, as it does for the server).  Properties: the result is 0,
 * -EINVAL or -EPROTO with a reason; an accepted request has at least
 * magic, version and command, all non-empty and NULL-terminated; escaping
 * the decoded fields again as control.h says (%XX for bytes <= 0x20,
 * 0x7f and '%') gives a line that parses to the same fields.
 */
#include "fuzz.h"

#include <errno.h>
#include <string.h>

#include "control.h"

static bool needs_escape(unsigned char ch)
{
	return ch <= 0x20 || ch == 0x7f || ch == '%';
}

/* Encode @fields[0..@n) as a request line into @out (room for 3 bytes per
 * input byte); returns its length. */
static size_t encode(char *const *fields, size_t n, char *out)
{
	size_t len = 0, i;
	const char *p;

	for (i = 0; i < n; i++) {
		if (i)
			out[len++] = ' ';
		for (p = fields[i]; *p; p++) {
			unsigned char u = (unsigned char)*p;

			if (i >= 2 && needs_escape(u))
				len += (size_t)sprintf(out + len, "%%%02x", u);
			else
				out[len++] = *p;
		}
	}
	out[len] = '\0';
	return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char **fields = NULL, **again = NULL, *line, *enc;
	struct pf_why why;
	size_t n = 0, m = 0, i;
	int ret;

	if (size >= PF_CTL_LINE_MAX)
		return 0;
	line = malloc(size + 1);
	enc = malloc(3 * size + 1);
	if (!line || !enc)
		goto out;
	memcpy(line, data, size);
	line[size] = '\0';

	memset(&why, 0, sizeof(why));
	ret = pf_ctl_parse_request(line, &fields, &n, &why);
	fuzz_assert(ret == 0 || ret == -EINVAL || ret == -EPROTO);
	if (ret) {
		fuzz_assert(!fields && why.msg[0] != '\0');
		goto out;
	}
	fuzz_assert(n >= 3 && fields[n] == NULL);
	fuzz_assert(!strcmp(fields[0], "ploopfs-ctl"));
	for (i = 0; i < n; i++)
		fuzz_assert(fields[i] && fields[i][0] != '\0');

	encode(fields, n, enc);
	fuzz_assert(pf_ctl_parse_request(enc, &again, &m, &why) == 0);
	fuzz_assert(m == n);
	for (i = 0; i < n; i++)
		fuzz_assert(!strcmp(fields[i], again[i]));
out:
	free(again);
	free(fields);
	free(enc);
	free(line);
	return 0;
}
