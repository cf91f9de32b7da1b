// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The events ring (see events.h): the daemon emits from any thread,
 * followers on the control socket wait for what comes after the last
 * event they saw.
 *
 * Locking: pf_events.lock protects the ring, the sequence counter and the
 * totals; a leaf, never held across a stop predicate.  Waiters sleep on
 * pf_events.emitted with a timeout, so that a stop predicate is polled at
 * least every STOP_POLL_MS.
 */
#include "events.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STOP_POLL_MS	100	/* pf_events_wait() checks @stop this often */

struct pf_events {
	pthread_mutex_t lock;
	pthread_cond_t emitted;		/* last grew; waiters > 0 */
	size_t cap;			/* events kept */
	uint64_t last;			/* protected by lock; seq of the newest */
	unsigned waiters;		/* protected by lock */
	size_t n_types;			/* protected by lock */
	/* protected by lock; once full, the last slot counts "other" */
	struct pf_event_count counts[PF_EVENT_TYPES_MAX];
	/* protected by lock; event seq is at ring[(seq - 1) % cap] */
	struct pf_event ring[];
};

int pf_events_new(size_t capacity, struct pf_events **out)
{
	pthread_condattr_t ca;
	struct pf_events *ev;

	if (!capacity ||
	    capacity > (SIZE_MAX - sizeof(*ev)) / sizeof(struct pf_event))
		return -EINVAL;
	ev = calloc(1, sizeof(*ev) + capacity * sizeof(struct pf_event));
	if (!ev)
		return -ENOMEM;
	ev->cap = capacity;
	if (pthread_mutex_init(&ev->lock, NULL)) {
		free(ev);
		return -ENOMEM;
	}
	if (pthread_condattr_init(&ca)) {
		pthread_mutex_destroy(&ev->lock);
		free(ev);
		return -ENOMEM;
	}
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (pthread_cond_init(&ev->emitted, &ca)) {
		pthread_condattr_destroy(&ca);
		pthread_mutex_destroy(&ev->lock);
		free(ev);
		return -ENOMEM;
	}
	pthread_condattr_destroy(&ca);
	*out = ev;
	return 0;
}

void pf_events_free(struct pf_events *ev)
{
	if (!ev)
		return;
	pthread_cond_destroy(&ev->emitted);
	pthread_mutex_destroy(&ev->lock);
	free(ev);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Count one event of @type.  Context: ev->lock held. */
static void count_type(struct pf_events *ev, const char *type)
{
	size_t i;

	for (i = 0; i < ev->n_types; i++) {
		if (!strcmp(ev->counts[i].type, type)) {
			ev->counts[i].count++;
			return;
		}
	}
	if (i == PF_EVENT_TYPES_MAX) {
		ev->counts[i - 1].count++;	/* "other" */
		return;
	}
	if (i == PF_EVENT_TYPES_MAX - 1)
		type = "other";
	snprintf(ev->counts[i].type, sizeof(ev->counts[i].type), "%s", type);
	ev->counts[i].count = 1;
	ev->n_types++;
}

uint64_t pf_events_emit(struct pf_events *ev, const char *type,
			const char *fmt, ...)
{
	struct pf_event e;
	bool wake;
	va_list ap;
	size_t i;
	int n;

	/* Everything but the copy into the ring happens unlocked. */
	for (i = 0; type && type[i] && i < sizeof(e.type) - 1; i++) {
		unsigned char u = (unsigned char)type[i];

		e.type[i] = u <= 0x20 || u == 0x7f ? '_' : type[i];
	}
	e.type[i] = '\0';
	if (!i)
		snprintf(e.type, sizeof(e.type), "unknown");
	va_start(ap, fmt);
	n = vsnprintf(e.text, sizeof(e.text), fmt, ap);
	va_end(ap);
	if (n < 0) {
		snprintf(e.text, sizeof(e.text), "(event text could not be formatted)");
	} else if ((size_t)n >= sizeof(e.text)) {
		size_t len = pf_utf8_cut(e.text, sizeof(e.text) - 4, 0,
				      e.text[sizeof(e.text) - 4]);

		memcpy(e.text + len, "...", 4);
	}
	for (i = 0; e.text[i]; i++) {
		unsigned char u = (unsigned char)e.text[i];

		if (u < 0x20 || u == 0x7f)
			e.text[i] = ' ';
	}

	pthread_mutex_lock(&ev->lock);
	e.seq = ++ev->last;
	e.time_ms = now_ms();
	ev->ring[(e.seq - 1) % ev->cap] = e;
	count_type(ev, e.type);
	wake = ev->waiters > 0;
	pthread_mutex_unlock(&ev->lock);
	/* Waiters registered under the lock and wait on it atomically:
	 * a broadcast after unlocking reaches them. */
	if (wake)
		pthread_cond_broadcast(&ev->emitted);
	return e.seq;
}

/* The first event after @after.  Context: ev->lock held, ev->last >
 * @after. */
static void take_event(struct pf_events *ev, uint64_t after,
		       struct pf_event *out)
{
	uint64_t oldest = ev->last > ev->cap ? ev->last - ev->cap + 1 : 1;
	uint64_t lost;

	if (after + 1 >= oldest) {
		*out = ev->ring[after % ev->cap];
		return;
	}
	lost = oldest - 1 - after;
	memset(out, 0, sizeof(*out));
	out->seq = after + 1;
	out->time_ms = now_ms();
	snprintf(out->type, sizeof(out->type), "%s", PF_EVENT_LOST);
	snprintf(out->text, sizeof(out->text),
		 "seq %" PRIu64 " to %" PRIu64 " lost (%" PRIu64 " event%s)",
		 after + 1, oldest - 1, lost, lost == 1 ? "" : "s");
}

int pf_events_wait(struct pf_events *ev, uint64_t after,
		   struct pf_event *out, int timeout_ms,
		   bool (*stop)(void *ctx), void *ctx)
{
	struct timespec deadline, now, wake;
	int ret = 0;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	if (timeout_ms > 0)
		pf_ts_add_ms(&deadline, timeout_ms);
	pthread_mutex_lock(&ev->lock);
	for (;;) {
		if (ev->last > after) {
			take_event(ev, after, out);
			ret = 1;
			break;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (timeout_ms >= 0 && !pf_ts_before(&now, &deadline))
			break;
		if (stop) {
			bool stopped;

			pthread_mutex_unlock(&ev->lock);
			stopped = stop(ctx);
			pthread_mutex_lock(&ev->lock);
			if (stopped)
				break;
			if (ev->last > after)
				continue;
		}
		wake = now;
		pf_ts_add_ms(&wake, STOP_POLL_MS);
		if (timeout_ms >= 0 && pf_ts_before(&deadline, &wake))
			wake = deadline;
		ev->waiters++;
		pthread_cond_timedwait(&ev->emitted, &ev->lock, &wake);
		ev->waiters--;
	}
	pthread_mutex_unlock(&ev->lock);
	return ret;
}

uint64_t pf_events_last(struct pf_events *ev)
{
	uint64_t last;

	pthread_mutex_lock(&ev->lock);
	last = ev->last;
	pthread_mutex_unlock(&ev->lock);
	return last;
}

size_t pf_events_counts(struct pf_events *ev, struct pf_event_count *out,
			size_t n)
{
	size_t n_types;

	pthread_mutex_lock(&ev->lock);
	n_types = ev->n_types;
	memcpy(out, ev->counts,
	       (n < n_types ? n : n_types) * sizeof(*out));
	pthread_mutex_unlock(&ev->lock);
	return n_types;
}

int pf_event_format(const struct pf_event *e, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%" PRIu64 " %" PRIu64 " %s %s", e->seq,
			 e->time_ms, e->type, e->text);

	if (n < 0)
		return -EINVAL;
	return (size_t)n >= len ? -ENOSPC : 0;
}

/* Parse a decimal uint64_t at *@p and advance *@p past it.  Returns 0
 * or -EINVAL (no digits, or too large). */
static int parse_u64(const char **p, uint64_t *out)
{
	const char *s = *p;
	uint64_t v = 0;

	if (*s < '0' || *s > '9')
		return -EINVAL;
	for (; *s >= '0' && *s <= '9'; s++) {
		unsigned d = (unsigned)(*s - '0');

		if (v > (UINT64_MAX - d) / 10)
			return -EINVAL;
		v = v * 10 + d;
	}
	*p = s;
	*out = v;
	return 0;
}

/* The same, followed by a space. */
static int parse_u64_sp(const char **p, uint64_t *out)
{
	const char *s = *p;

	if (parse_u64(&s, out) < 0 || *s != ' ')
		return -EINVAL;
	*p = s + 1;
	return 0;
}

uint64_t pf_event_next_after(const struct pf_event *e)
{
	const char *p = e->text;
	uint64_t first, last;

	/* the text take_event() writes: "seq <first> to <last> lost ..." */
	if (strcmp(e->type, PF_EVENT_LOST) || strncmp(p, "seq ", 4))
		return e->seq;
	p += 4;
	if (parse_u64(&p, &first) < 0 || strncmp(p, " to ", 4))
		return e->seq;
	p += 4;
	if (parse_u64_sp(&p, &last) < 0 || first != e->seq || last < first)
		return e->seq;
	return last;
}

static bool is_print(char ch)
{
	unsigned char u = (unsigned char)ch;

	return u >= 0x20 && u != 0x7f;
}

int pf_event_parse(const char *line, struct pf_event *e)
{
	const char *p = line;
	size_t n, i;

	memset(e, 0, sizeof(*e));
	if (parse_u64_sp(&p, &e->seq) < 0 || !e->seq ||
	    parse_u64_sp(&p, &e->time_ms) < 0)
		return -EINVAL;
	n = strcspn(p, " ");
	if (!n || n >= sizeof(e->type))
		return -EINVAL;
	memcpy(e->type, p, n);
	p += n;
	if (*p == ' ')
		p++;
	n = strlen(p);
	if (n >= sizeof(e->text))
		return -EINVAL;
	memcpy(e->text, p, n);
	for (i = 0; e->type[i]; i++)
		if (!is_print(e->type[i]))
			return -EINVAL;
	for (i = 0; e->text[i]; i++)
		if (!is_print(e->text[i]))
			return -EINVAL;
	return 0;
}
