/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The daemon's events ring.  A ring of the last N events, each with a
 * sequence number (1, 2, ...) that never repeats, and per-type totals.
 * A reader passes the last sequence number it saw; events it missed
 * because the ring wrapped come back as one synthetic "lost" event naming
 * exactly which, so nothing is lost silently.  On the wire (the control
 * socket's "events" command) an event is one line,
 * "<seq> <time_ms> <type> <text>" (pf_event_format, pf_event_parse).
 *
 * Lock order: pf_events.lock is a leaf, never held across a stop
 * predicate.
 */
#ifndef PF_EVENTS_H
#define PF_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define PF_EVENT_TYPE_MAX	32	/* bytes of a type, NUL included */
#define PF_EVENT_TEXT_MAX	256	/* bytes of a text, NUL included */
#define PF_EVENT_TYPES_MAX	64	/* distinct types counted by name */
/* Longest pf_event_format() line, NUL included. */
#define PF_EVENT_LINE_MAX	(20 + 1 + 20 + 1 + PF_EVENT_TYPE_MAX + \
				 PF_EVENT_TEXT_MAX)
/* Type of the synthetic event for events overwritten before being read. */
#define PF_EVENT_LOST		"lost"

struct pf_events;

struct pf_event {
	uint64_t seq;			/* 1, 2, ...; never repeats */
	uint64_t time_ms;		/* CLOCK_REALTIME, milliseconds */
	char type[PF_EVENT_TYPE_MAX];	/* one word: no space or control */
	char text[PF_EVENT_TEXT_MAX];	/* no control characters */
};

struct pf_event_count {
	char type[PF_EVENT_TYPE_MAX];
	uint64_t count;			/* events of the type since start */
};

/* A ring keeping the last @capacity (>= 1) events.
 * Returns: 0; -EINVAL (capacity 0 or too large); -ENOMEM. */
PF_MUST_CHECK int pf_events_new(size_t capacity, struct pf_events **out);

/* Free; no thread may be using @ev.  @ev may be NULL. */
void pf_events_free(struct pf_events *ev);

/*
 * Record an event of @type (one word, truncated to 31 bytes; spaces and
 * control characters become '_') with a printf-style text (truncated
 * with "..."; control characters become ' ').  Never fails and never
 * waits for readers: every call takes a sequence number and counts,
 * whatever its text.  Types beyond PF_EVENT_TYPES_MAX distinct ones are
 * counted together as "other".
 * Returns: the sequence number given to the event.
 * Locking: takes pf_events.lock for a copy of the event.
 */
uint64_t pf_events_emit(struct pf_events *ev, const char *type,
			const char *fmt, ...) PF_PRINTF(3, 4);

/*
 * Get the first event with a sequence number above @after, waiting up to
 * @timeout_ms (-1: no limit) for one to be emitted, unless @stop(@ctx)
 * (may be NULL) turns true; it is checked at least every 100 ms.  If
 * events after @after have been overwritten, *@out is a synthetic event
 * of type PF_EVENT_LOST: its seq is the first one missed, its text says
 * how many were lost and the last one, and pf_event_next_after() gives
 * the @after to continue with.
 * Returns: 1 (*@out filled); 0 (timeout, or @stop).
 * Context: any thread; @stop is called without locks held.
 */
int pf_events_wait(struct pf_events *ev, uint64_t after,
		   struct pf_event *out, int timeout_ms,
		   bool (*stop)(void *ctx), void *ctx);

/* The last sequence number given, 0 if none yet. */
uint64_t pf_events_last(struct pf_events *ev);

/* Fill up to @n per-type totals, in the order the types first occurred.
 * Returns: the number of types (may exceed @n). */
size_t pf_events_counts(struct pf_events *ev, struct pf_event_count *out,
			size_t n);

/*
 * The @after with which a reader that got @e continues: @e->seq, or for
 * a PF_EVENT_LOST event the last sequence number it covers.
 */
uint64_t pf_event_next_after(const struct pf_event *e);

/* Format @e as "<seq> <time_ms> <type> <text>" into @buf.
 * Returns: 0; -ENOSPC (@len too small; PF_EVENT_LINE_MAX always fits). */
PF_MUST_CHECK int pf_event_format(const struct pf_event *e, char *buf,
				  size_t len);

/* Parse a line made by pf_event_format() (no '\n').
 * Returns: 0; -EINVAL (malformed, or a field too long). */
PF_MUST_CHECK int pf_event_parse(const char *line, struct pf_event *e);

#endif /* PF_EVENTS_H */
