/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A small TAP producer for the unit tests.  Every check prints
 * "ok N - ..." or "not ok N - ..." with file:line; tap_done() prints the
 * plan and a plain "N passed, N failed" line and returns the exit status.
 */
#ifndef PF_TAP_H
#define PF_TAP_H

#include <inttypes.h>
#include <stdint.h>

void tap_result(int ok, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int tap_done(void);

#define check(expr) \
	tap_result(!!(expr), __FILE__, __LINE__, "%s", #expr)

#define check_msg(expr, ...) \
	tap_result(!!(expr), __FILE__, __LINE__, __VA_ARGS__)

#define check_int(a, op, b)                                                \
	do {                                                               \
		long long a_ = (long long)(a), b_ = (long long)(b);        \
		tap_result(a_ op b_, __FILE__, __LINE__,                   \
			   "%s %s %s (%lld vs %lld)", #a, #op, #b, a_, b_);  \
	} while (0)

#define check_u64(a, op, b)                                                \
	do {                                                               \
		uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);           \
		tap_result(a_ op b_, __FILE__, __LINE__,                   \
			   "%s %s %s (%" PRIu64 " vs %" PRIu64 ")", #a, #op, \
			   #b, a_, b_);                                    \
	} while (0)

#define check_str(a, b)                                                    \
	do {                                                               \
		const char *a_ = (a), *b_ = (b);                           \
		tap_result(a_ && b_ && !strcmp(a_, b_), __FILE__, __LINE__, \
			   "%s == %s (\"%s\" vs \"%s\")", #a, #b,          \
			   a_ ? a_ : "(null)", b_ ? b_ : "(null)");        \
	} while (0)

#endif /* PF_TAP_H */
