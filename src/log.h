/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Daemon logging: syslog, or stderr when running in the foreground.
 * Messages are lower case, no full stop, the problem first, with path
 * and cause (HACKING).
 */
#ifndef PF_LOG_H
#define PF_LOG_H

#include <stdbool.h>

#include "util.h"

/* Send messages to stderr (true) or to syslog as @ident (false). */
void pf_log_init(const char *ident, bool to_stderr);

/* @prio is a syslog priority (LOG_ERR, LOG_WARNING, LOG_INFO, ...). */
void pf_log(int prio, const char *fmt, ...) PF_PRINTF(2, 3);

/* The syslog priorities, so that callers need not include <syslog.h>. */
enum {
	PF_LOG_ERR = 3,
	PF_LOG_WARNING = 4,
	PF_LOG_NOTICE = 5,
	PF_LOG_INFO = 6,
	PF_LOG_DEBUG = 7,
};

#endif /* PF_LOG_H */
