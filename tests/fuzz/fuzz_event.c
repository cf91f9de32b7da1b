// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Fuzz target of the events line parser of control.c (pf_event_parse),
 * with the round trip through pf_event_format().
 *
 * The input is one line (no '\n'; a NUL ends it early, as it would a C
 * string).  Properties: an accepted line gives a type and a text of
 * printable bytes, a non-zero seq, formats into PF_EVENT_LINE_MAX, and
 * parses again to the same event; pf_event_next_after() never goes
 * back.
 */
#include "fuzz.h"

#include <errno.h>
#include <string.h>

#include "events.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char line[PF_EVENT_LINE_MAX];
	struct pf_event e, again;
	char *s;
	int ret;

	s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	ret = pf_event_parse(s, &e);
	free(s);
	fuzz_assert(ret == 0 || ret == -EINVAL);
	if (ret)
		return 0;
	fuzz_assert(e.seq != 0);
	fuzz_assert(e.type[0] != '\0' && !strchr(e.type, ' '));
	fuzz_assert(memchr(e.type, '\0', sizeof(e.type)));
	fuzz_assert(memchr(e.text, '\0', sizeof(e.text)));
	fuzz_assert(pf_event_next_after(&e) >= e.seq);

	fuzz_assert(pf_event_format(&e, line, sizeof(line)) == 0);
	fuzz_assert(pf_event_parse(line, &again) == 0);
	fuzz_assert(!memcmp(&e, &again, sizeof(e)));
	return 0;
}
