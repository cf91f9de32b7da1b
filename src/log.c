// SPDX-License-Identifier: GPL-2.0-or-later
/* Daemon logging (see log.h); the only file that includes <syslog.h>. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

_Static_assert(PF_LOG_ERR == LOG_ERR && PF_LOG_WARNING == LOG_WARNING &&
		       PF_LOG_NOTICE == LOG_NOTICE && PF_LOG_INFO == LOG_INFO &&
		       PF_LOG_DEBUG == LOG_DEBUG,
	       "log priorities match syslog's");

static bool log_stderr = true;
static const char *log_ident = "ploopfs";

void pf_log_init(const char *ident, bool to_stderr)
{
	log_ident = ident;
	log_stderr = to_stderr;
	if (!to_stderr)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void pf_log(int prio, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (log_stderr)
		fprintf(stderr, "%s: %s\n", log_ident, msg);
	else
		syslog(prio, "%s", msg);
}
