// SPDX-License-Identifier: GPL-2.0-or-later
/* TAP output for the unit tests; see tap.h. */
#include "tap.h"

#include <stdarg.h>
#include <stdio.h>

static int n_run, n_failed;

void tap_result(int ok, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	n_run++;
	if (!ok)
		n_failed++;
	printf("%sok %d - ", ok ? "" : "not ", n_run);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf(" [%s:%d]\n", file, line);
}

void tap_diag(const char *fmt, ...)
{
	va_list ap;

	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

int tap_done(void)
{
	printf("1..%d\n", n_run);
	printf("# %d passed, %d failed\n", n_run - n_failed, n_failed);
	fflush(stdout);
	return n_failed || !n_run ? 1 : 0;
}
