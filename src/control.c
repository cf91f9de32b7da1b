// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The control socket, server side, and what the client shares with it
 * (see control.h for the protocol; control_client.c for the client).  Transport only: commands are the daemon's, passed in as a
 * table, and this module includes nothing above util.h.
 *
 * Threads.  pf_ctl_start() starts one accept thread.  It checks each
 * peer (SO_PEERCRED) and the connection limit itself, answering a refused
 * peer at once and closing, and starts one thread per admitted
 * connection, which reads its requests and runs their handlers.  Finished
 * connection threads are joined by the accept thread at its next accept
 * and by pf_ctl_stop().  While a handler of a keepalive command runs, a
 * ticker thread of its own sends the keepalive lines; the connection
 * thread joins it before the end line.  All of them run with every
 * signal blocked.
 *
 * Stopping.  pf_ctl_stop() sets stopping and writes one byte into the
 * wake pipe that is never read: every poll() of the server includes the
 * pipe's read end, so whatever waits -- accept, a request read, a send to
 * a client that does not read -- wakes and sees it.  Handlers that wait
 * for something else poll pf_ctl_stopping() or pf_ctl_cancelled().
 *
 * Sends are non-blocking with MSG_NOSIGNAL: a client that has gone is
 * -EPIPE, never SIGPIPE; one that does not read is waited for with
 * poll() until the server stops.
 *
 * Crash safety: a daemon that dies leaves its socket file; connecting to
 * it is refused, which is how pf_ctl_start() tells it from a live one.
 * Two daemons never race for it: the daemon holds the image lock first.
 *
 * Locking: pf_ctl.conns_lock protects the connection list and each
 * connection's finished flag.  A leaf, never held across a send, a
 * handler or a stop predicate.  ctl_conn.send_lock, a
 * leaf, is held across the send of one line to its connection, so that a
 * handler's lines and its ticker's keepalives never interleave; the
 * ticker's own lock is never held together with it.
 */
#include "control.h"
#include "control_i.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define STOP_POLL_MS	100	/* the accept thread checks for a stop this often */
#define STOP_GRACE_MS	1000	/* a stopping server waits this long for a
				   client to take a line */

/* Time */

long ctl_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Lines */

int ctl_wait_fd(int fd, short events, int wake_fd, int timeout_ms)
{
	struct pollfd p[2] = {
		{ .fd = fd, .events = events },
		{ .fd = wake_fd, .events = POLLIN },
	};
	int n;

	do {
		n = poll(p, 2, timeout_ms);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (p[1].revents)
		return -ESHUTDOWN;
	return n ? 0 : -ETIMEDOUT;
}

int ctl_line_read(struct line_buf *b, int fd, int wake_fd, int idle_ms,
		     char **line)
{
	long end = idle_ms >= 0 ? ctl_mono_ms() + idle_ms : 0;
	size_t scanned;

	if (b->used) {
		memmove(b->buf, b->buf + b->used, b->len - b->used);
		b->len -= b->used;
		b->used = 0;
	}
	scanned = 0;
	for (;;) {
		char *nl = memchr(b->buf + scanned, '\n', b->len - scanned);
		ssize_t n;
		int ret;

		if (nl) {
			*nl = '\0';
			b->used = (size_t)(nl - b->buf) + 1;
			*line = b->buf;
			return 1;
		}
		scanned = b->len;
		if (b->len == sizeof(b->buf))
			return -EMSGSIZE;
		if (wake_fd >= 0 || idle_ms >= 0) {
			long left = idle_ms >= 0 ? end - ctl_mono_ms() : -1;

			if (idle_ms >= 0 && left <= 0)
				return -ETIMEDOUT;
			ret = ctl_wait_fd(fd, POLLIN, wake_fd, (int)left);
			if (ret < 0)
				return ret;
		}
		n = recv(fd, b->buf + b->len, sizeof(b->buf) - b->len,
			 wake_fd >= 0 || idle_ms >= 0 ? MSG_DONTWAIT : 0);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN ||
			    errno == EWOULDBLOCK)
				continue;
			return -errno;
		}
		if (n == 0)
			return 0;
		b->len += (size_t)n;
	}
}

bool ctl_needs_escape(unsigned char ch)
{
	return ch <= 0x20 || ch == 0x7f || ch == '%';
}

static int hex_val(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Decode the %XX escapes of @s in place.  Returns 0 or -EINVAL (bad
 * escape, or %00). */
static int pct_decode(char *s)
{
	char *w = s;

	for (; *s; s++) {
		int hi, lo;

		if (*s != '%') {
			*w++ = *s;
			continue;
		}
		hi = hex_val(s[1]);
		lo = hi < 0 ? -1 : hex_val(s[2]);
		if (lo < 0 || (hi | lo) == 0)
			return -EINVAL;
		*w++ = (char)(hi << 4 | lo);
		s += 2;
	}
	*w = '\0';
	return 0;
}

/* Server */

struct ctl_conn {
	struct pf_ctl *ctl;
	struct ctl_conn *next;		/* protected by ctl->conns_lock */
	bool finished;			/* protected by ctl->conns_lock */
	pthread_t thread;
	int fd;				/* non-blocking */
	/* one line at a time goes out: the handler's or its ticker's */
	pthread_mutex_t send_lock;
	struct line_buf in;
};

struct pf_ctl_reply {
	struct ctl_conn *conn;
	atomic_bool gone;		/* a send failed: no more goes out */
};

struct pf_ctl {
	const struct pf_ctl_cmd *cmds;
	void *ctx;
	int dirfd;			/* our duplicate of the image directory */
	int lfd;			/* listening socket, non-blocking */
	dev_t sock_dev;			/* the socket file we bound */
	ino_t sock_ino;
	bool abstract;			/* bound to ctl_abstract_addr(): no file */
	uid_t euid;
	dev_t dir_dev;			/* the image directory, for "hello" */
	ino_t dir_ino;
	atomic_int idle_ms;		/* a request must come within this */
	pf_ctl_gone_fn gone;		/* atomic access: may be NULL */
	atomic_uint streams;		/* stream handlers running */
	int wake[2];			/* connections: written by drain or stop */
	int wake_accept[2];		/* the accept thread: by pf_ctl_stop() */
	atomic_bool stopping;		/* handlers stop (drain or stop) */
	atomic_bool draining;		/* new connections hear "closing" */
	pthread_t accept_thread;
	pthread_mutex_t conns_lock;
	pthread_cond_t conn_finished;	/* with conns_lock */
	struct ctl_conn *conns;		/* protected by conns_lock */
};

/* at the end of the file: the abstract socket of read-only daemons */
static int bind_abstract(struct pf_ctl *c, const char *dir,
			 struct pf_why *why);

int ctl_send_some(int fd, const char **buf, size_t *len, bool block)
{
	while (*len) {
		ssize_t n = send(fd, *buf, *len,
				 MSG_NOSIGNAL | (block ? 0 : MSG_DONTWAIT));

		if (n >= 0) {
			*buf += n;
			*len -= (size_t)n;
		} else if (errno == EWOULDBLOCK) {
			return -EAGAIN;
		} else if (errno != EINTR) {
			return -errno;
		}
	}
	return 0;
}

/*
 * Send all of @buf to the client of @cn.  A client that does not read is
 * waited for; once the server stops, for STOP_GRACE_MS more at most, so
 * that a reading client still gets its end line.
 * Returns: 0; -EPIPE (client gone, or not reading while the server
 * stops); other -errno.
 */
static int conn_send(struct ctl_conn *cn, const char *buf, size_t len)
{
	struct pf_ctl *c = cn->ctl;
	long grace_end = -1;	/* ms, ctl_mono_ms(); -1: not stopping */
	long left;
	int ret;

	while ((ret = ctl_send_some(cn->fd, &buf, &len, false)) == -EAGAIN) {
		if (!atomic_load(&c->stopping)) {
			ret = ctl_wait_fd(cn->fd, POLLOUT, c->wake[0], -1);
			if (ret < 0 && ret != -ESHUTDOWN)
				return ret;
			continue;
		}
		/* The wake pipe stays readable now: wait on the socket
		 * alone, for a bounded time. */
		if (grace_end < 0)
			grace_end = ctl_mono_ms() + STOP_GRACE_MS;
		left = grace_end - ctl_mono_ms();
		ret = left > 0 ? ctl_wait_fd(cn->fd, POLLOUT, -1, (int)left) :
				 -ETIMEDOUT;
		if (ret == -ETIMEDOUT)
			return -EPIPE;
		if (ret < 0)
			return ret;
	}
	return ret == -ECONNRESET ? -EPIPE : ret;
}

char ctl_printable(char ch)
{
	unsigned char u = (unsigned char)ch;

	return (u < 0x20 && ch != '\t') || u == 0x7f ? '?' : ch;
}

/* Send @head followed by @text as one line, cut to fit.  Returns 0 or
 * -EPIPE (nothing more can be sent to this client). */
static int reply_line(struct pf_ctl_reply *r, const char *head,
		      const char *text)
{
	char line[PF_CTL_LINE_MAX];
	size_t hlen = strlen(head), n, i;
	int ret = 0;

	if (atomic_load(&r->gone))
		return -EPIPE;
	memcpy(line, head, hlen);
	n = hlen;
	for (i = 0; text[i] && n < sizeof(line) - 1; i++)
		line[n++] = ctl_printable(text[i]);
	if (text[i])
		n = pf_utf8_cut(line, n, hlen, text[i]);
	line[n++] = '\n';
	/* Held across the send: a keepalive must not cut a line in two. */
	pthread_mutex_lock(&r->conn->send_lock);
	if (atomic_load(&r->gone) || conn_send(r->conn, line, n) < 0) {
		atomic_store(&r->gone, true);
		ret = -EPIPE;
	}
	pthread_mutex_unlock(&r->conn->send_lock);
	return ret;
}

int pf_ctl_data(struct pf_ctl_reply *r, const char *fmt, ...)
{
	char text[PF_CTL_LINE_MAX];
	va_list ap;

	if (atomic_load(&r->gone))
		return -EPIPE;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	return reply_line(r, "data ", text);
}

static int reply_end(struct pf_ctl_reply *r, int err, const char *fmt, ...)
	PF_PRINTF(3, 4);

static int reply_end(struct pf_ctl_reply *r, int err, const char *fmt, ...)
{
	char head[32], text[PF_CTL_LINE_MAX], ebuf[64];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (err && !text[0])
		snprintf(text, sizeof(text), "%s",
			 strerror_r(err, ebuf, sizeof(ebuf)));
	snprintf(head, sizeof(head), "end %d ", err);
	return reply_line(r, head, text);
}

bool pf_ctl_stopping(const struct pf_ctl_reply *r)
{
	return atomic_load(&r->conn->ctl->stopping);
}

bool pf_ctl_cancelled(void *reply)
{
	struct pf_ctl_reply *r = reply;
	struct pollfd p = { .fd = r->conn->fd, .events = POLLRDHUP };

	if (atomic_load(&r->gone) || pf_ctl_stopping(r))
		return true;
	return poll(&p, 1, 0) > 0 &&
	       (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static const struct pf_ctl_cmd *find_cmd(const struct pf_ctl *c,
					 const char *name)
{
	const struct pf_ctl_cmd *cmd;

	for (cmd = c->cmds; cmd && cmd->name; cmd++)
		if (!strcmp(cmd->name, name))
			return cmd;
	return NULL;
}

/* Is @s a decimal number equal to @want? */
static bool is_number(const char *s, unsigned want)
{
	unsigned v = 0;

	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		if (v > want)
			continue;	/* too large already; keep checking */
		v = v * 10 + (unsigned)(*s - '0');
	}
	return v == want;
}

static bool all_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

/* Has the client closed the connection (both directions)?  A client that
 * only shut down its sending side still reads the reply. */
static bool peer_closed(const struct ctl_conn *cn)
{
	struct pollfd p = { .fd = cn->fd, .events = 0 };

	return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR));
}

/* The keepalive thread of one request (see control.h, Keepalives). */
struct ticker {
	struct pf_ctl_reply *r;
	pthread_mutex_t lock;
	pthread_cond_t done_cond;	/* done turned true */
	bool done;			/* protected by lock */
	pthread_t thread;
};

static void *ticker_main(void *arg)
{
	struct ticker *t = arg;
	struct timespec at;

	pthread_mutex_lock(&t->lock);
	clock_gettime(CLOCK_MONOTONIC, &at);
	while (!t->done) {
		struct timespec now;

		pf_ts_add_ms(&at, PF_CTL_KEEPALIVE_MS);
		do {
			pthread_cond_timedwait(&t->done_cond, &t->lock, &at);
			clock_gettime(CLOCK_MONOTONIC, &now);
		} while (!t->done && pf_ts_before(&now, &at));
		if (t->done)
			break;
		pthread_mutex_unlock(&t->lock);
		/* A client that has gone makes every later line fail. */
		(void)reply_line(t->r, "data ", PF_CTL_KEEPALIVE);
		pthread_mutex_lock(&t->lock);
		at = now;
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

/* Start the keepalive thread of the request answered through @r.
 * Returns 0 or -errno. */
static int ticker_start(struct ticker *t, struct pf_ctl_reply *r)
{
	pthread_condattr_t ca;
	int ret;

	t->r = r;
	t->done = false;
	ret = -pthread_mutex_init(&t->lock, NULL);
	if (ret)
		return ret;
	ret = -pthread_condattr_init(&ca);
	if (ret)
		goto err_mutex;
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	ret = -pthread_cond_init(&t->done_cond, &ca);
	pthread_condattr_destroy(&ca);
	if (ret)
		goto err_mutex;
	/* our thread has every signal blocked: so has the new one */
	ret = -pthread_create(&t->thread, NULL, ticker_main, t);
	if (ret)
		goto err_cond;
	return 0;

err_cond:
	pthread_cond_destroy(&t->done_cond);
err_mutex:
	pthread_mutex_destroy(&t->lock);
	return ret;
}

/* Stop and join the keepalive thread; no keepalive follows. */
static void ticker_stop(struct ticker *t)
{
	pthread_mutex_lock(&t->lock);
	t->done = true;
	pthread_mutex_unlock(&t->lock);
	pthread_cond_signal(&t->done_cond);
	pthread_join(t->thread, NULL);
	pthread_cond_destroy(&t->done_cond);
	pthread_mutex_destroy(&t->lock);
}

int pf_ctl_parse_request(char *line, char ***fields, size_t *n,
			 struct pf_why *why)
{
	size_t ntok = 1, i;
	char **tok, *p;
	int ret;

	*fields = NULL;
	*n = 0;
	for (p = line; *p; p++) {
		unsigned char u = (unsigned char)*p;

		if (u < 0x20 || u == 0x7f)
			return pf_why_set(why, -EINVAL, "malformed request: control character 0x%02x",
					  u);
		ntok += *p == ' ';
	}
	tok = calloc(ntok + 1, sizeof(*tok));
	if (!tok)
		return pf_why_set(why, -ENOMEM, "out of memory for the request");
	for (i = 0, p = line; i < ntok; i++) {
		tok[i] = strsep(&p, " ");
		if (!*tok[i]) {
			ret = pf_why_set(why, -EINVAL, "malformed request: empty field %zu",
					 i + 1);
			goto err;
		}
	}
	if (strcmp(tok[0], CTL_MAGIC)) {
		ret = pf_why_set(why, -EINVAL, "malformed request: it does not start with \"%s\"",
				 CTL_MAGIC);
		goto err;
	}
	if (ntok < 2 || !all_digits(tok[1])) {
		ret = pf_why_set(why, -EINVAL, "malformed request: no protocol version");
		goto err;
	}
	if (!is_number(tok[1], PF_CTL_VERSION)) {
		ret = pf_why_set(why, -EPROTO, "unsupported control protocol version %.20s (daemon speaks %d)",
				 tok[1], PF_CTL_VERSION);
		goto err;
	}
	if (ntok < 3) {
		ret = pf_why_set(why, -EINVAL, "malformed request: no command");
		goto err;
	}
	for (i = 2; i < ntok; i++) {
		if (pct_decode(tok[i]) < 0) {
			ret = pf_why_set(why, -EINVAL, "malformed request: bad %% escape in argument %zu",
					 i - 2);
			goto err;
		}
	}
	*fields = tok;
	*n = ntok;
	return 0;

err:
	free(tok);
	return ret;
}

/* Answer the request @line (decoded here, in place). */
static void serve_request(struct ctl_conn *cn, char *line,
			  struct pf_ctl_reply *r)
{
	struct pf_ctl *c = cn->ctl;
	const struct pf_ctl_cmd *cmd;
	struct pf_why why = { "" };
	struct ticker ticker;
	size_t ntok;
	char **tok;
	int ret;

	ret = pf_ctl_parse_request(line, &tok, &ntok, &why);
	if (ret) {
		reply_end(r, -ret, "%s", why.msg);
		return;
	}
	/* built in: which image directory this daemon serves, so that a
	 * client can tell it reached the daemon of its own image */
	if (!strcmp(tok[2], PF_CTL_HELLO) && ntok == 3) {
		pf_ctl_gone_fn gone = __atomic_load_n(&c->gone,
						      __ATOMIC_ACQUIRE);

		/* unmounted while it was stopped, say: closing, though
		 * the daemon may not have noticed yet */
		if (gone && gone(c->ctx)) {
			reply_end(r, ESHUTDOWN, "the daemon is closing the image");
			goto out;
		}
		if (!pf_ctl_data(r, "image %ju %ju", (uintmax_t)c->dir_dev,
				 (uintmax_t)c->dir_ino))
			reply_end(r, 0, "%s", "");
		goto out;
	}
	cmd = find_cmd(c, tok[2]);
	if (!cmd) {
		reply_end(r, EOPNOTSUPP, "unknown command %.64s", tok[2]);
		goto out;
	}
	/* A client that gave up waiting (a daemon that was stopped and
	 * resumed) has closed the connection: its command is not run. */
	if (peer_closed(cn)) {
		atomic_store(&r->gone, true);
		goto out;
	}
	/* Followers of a stream stay for as long as they like: they may
	 * take only part of the connections, the rest is for commands. */
	if (cmd->stream &&
	    atomic_fetch_add(&c->streams, 1) >= PF_CTL_STREAM_MAX) {
		atomic_fetch_sub(&c->streams, 1);
		reply_end(r, EBUSY, "too many followers of a stream (%d)",
			  PF_CTL_STREAM_MAX);
		goto out;
	}
	if (cmd->keepalive) {
		ret = ticker_start(&ticker, r);
		if (ret) {
			reply_end(r, -ret, "cannot start the keepalive thread of the command: %s",
				  strerror(-ret));
			goto out;
		}
	}
	ret = cmd->fn(c->ctx, (int)(ntok - 2), tok + 2, r, &why);
	if (cmd->keepalive)
		ticker_stop(&ticker);
	if (cmd->stream)
		atomic_fetch_sub(&c->streams, 1);
	if (ret > 0)
		ret = 0;	/* handlers return 0 or -errno */
	if (ret < -ERRNO_MAX)
		ret = -EIO;
	reply_end(r, -ret, "%s", why.msg);
out:
	free(tok);
}

/* The answer of a draining server (ESHUTDOWN): the daemon is closing
 * the image, its lock is about to be free (pf_ctl_drain()). */
#define CLOSING_END	"end 108 the daemon is closing the image\n"
_Static_assert(ESHUTDOWN == 108, "CLOSING_END carries ESHUTDOWN");

static void *conn_main(void *arg)
{
	struct ctl_conn *cn = arg;
	struct pf_ctl *c = cn->ctl;
	bool stopped = true;	/* the loop ended because we stop */
	ssize_t n;

	while (!atomic_load(&c->stopping)) {
		struct pf_ctl_reply r = { .conn = cn };
		char *line = NULL;
		int ret;

		atomic_init(&r.gone, false);
		ret = ctl_line_read(&cn->in, cn->fd, c->wake[0],
				atomic_load(&c->idle_ms), &line);

		if (ret == -ETIMEDOUT) {
			/* idle, or a request that never ends: the slot is
			 * for clients that talk */
			reply_end(&r, ETIMEDOUT, "no complete request within %d ms",
				  atomic_load(&c->idle_ms));
			stopped = false;
			break;
		}

		if (ret == -EMSGSIZE) {
			/* The framing is lost: answer and hang up. */
			reply_end(&r, EINVAL, "malformed request: line longer than %d bytes",
				  PF_CTL_LINE_MAX);
			stopped = false;
			break;
		}
		if (ret <= 0 || !line) {
			stopped = ret == -ESHUTDOWN;
			break;
		}
		serve_request(cn, line, &r);
		if (atomic_load(&r.gone)) {
			stopped = false;
			break;
		}
	}
	/* A request that came while the server began draining, not read
	 * yet, is answered like the connections that come later: the
	 * client waits for the image instead of seeing a dropped
	 * connection. */
	if (stopped && atomic_load(&c->draining)) {
		n = send(cn->fd, CLOSING_END, strlen(CLOSING_END),
			 MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)n;
	}
	close(cn->fd);
	pthread_mutex_lock(&c->conns_lock);
	cn->finished = true;
	pthread_cond_broadcast(&c->conn_finished);
	pthread_mutex_unlock(&c->conns_lock);
	return NULL;
}

/* Answer a connection that is not served with one end line, close it. */
static void refuse(int fd, const char *end_line)
{
	ssize_t n;

	/* A fresh socket has room for one line; if not, the peer gets EOF. */
	n = send(fd, end_line, strlen(end_line), MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)n;
	close(fd);
}

/* Join and free finished connection threads; with @all, every one (the
 * accept thread has stopped). */
static void reap(struct pf_ctl *c, bool all)
{
	struct ctl_conn *done = NULL, **pp, *cn;

	pthread_mutex_lock(&c->conns_lock);
	for (pp = &c->conns; (cn = *pp);) {
		if (all || cn->finished) {
			*pp = cn->next;
			cn->next = done;
			done = cn;
		} else {
			pp = &cn->next;
		}
	}
	pthread_mutex_unlock(&c->conns_lock);
	while ((cn = done)) {
		done = cn->next;
		pthread_join(cn->thread, NULL);
		pthread_mutex_destroy(&cn->send_lock);
		free(cn);
	}
}

static unsigned count_open_locked(struct pf_ctl *c)
{
	struct ctl_conn *cn;
	unsigned n = 0;

	for (cn = c->conns; cn; cn = cn->next)
		n += !cn->finished;
	return n;
}

static unsigned count_open(struct pf_ctl *c)
{
	unsigned n;

	pthread_mutex_lock(&c->conns_lock);
	n = count_open_locked(c);
	pthread_mutex_unlock(&c->conns_lock);
	return n;
}

void pf_ctl_set_gone(struct pf_ctl *c, pf_ctl_gone_fn gone)
{
	__atomic_store_n(&c->gone, gone, __ATOMIC_RELEASE);
}

void pf_ctl_set_idle(struct pf_ctl *c, int idle_ms)
{
	atomic_store(&c->idle_ms, idle_ms);
}

unsigned pf_ctl_connections(struct pf_ctl *c)
{
	return count_open(c);
}

static void admit(struct pf_ctl *c, int fd)
{
	struct ctl_conn *cn;
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
	    (cred.uid != 0 && cred.uid != c->euid)) {
		refuse(fd, "end 13 permission denied\n");
		return;
	}
	if (atomic_load(&c->draining)) {
		refuse(fd, CLOSING_END);
		return;
	}
	/* Only this thread adds connections: the count cannot grow
	 * between here and the insertion below. */
	if (count_open(c) >= PF_CTL_CONN_MAX) {
		refuse(fd, "end 16 too many control connections\n");
		return;
	}
	cn = calloc(1, sizeof(*cn));
	if (!cn) {
		refuse(fd, "end 12 out of memory for the connection\n");
		return;
	}
	if (pthread_mutex_init(&cn->send_lock, NULL)) {
		free(cn);
		refuse(fd, "end 12 out of memory for the connection\n");
		return;
	}
	cn->ctl = c;
	cn->fd = fd;
	/* Listed before it runs, so that pf_ctl_connections() counts it
	 * while its handler runs.  cn->thread is read only by this thread
	 * (reap) and after it has been joined (pf_ctl_stop). */
	pthread_mutex_lock(&c->conns_lock);
	cn->next = c->conns;
	c->conns = cn;
	pthread_mutex_unlock(&c->conns_lock);
	if (pthread_create(&cn->thread, NULL, conn_main, cn)) {
		pthread_mutex_lock(&c->conns_lock);
		c->conns = cn->next;	/* still first: only we add */
		pthread_cond_broadcast(&c->conn_finished);
		pthread_mutex_unlock(&c->conns_lock);
		pthread_mutex_destroy(&cn->send_lock);
		free(cn);
		refuse(fd, "end 11 cannot start a thread for the connection\n");
	}
}

static void *accept_main(void *arg)
{
	struct pf_ctl *c = arg;

	for (;;) {
		int fd, ret = ctl_wait_fd(c->lfd, POLLIN, c->wake_accept[0], -1);

		if (ret == -ESHUTDOWN)
			break;
		fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0) {
			/* Out of descriptors or memory: the connection
			 * stays queued; retry without spinning. */
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM)
				(void)ctl_wait_fd(-1, 0, c->wake_accept[0],
					      STOP_POLL_MS);
			continue;
		}
		reap(c, false);
		admit(c, fd);
	}
	return NULL;
}

/* The socket's address through /proc, short whatever the directory. */
socklen_t ctl_sock_addr(int dirfd, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d/%s",
		 dirfd, PF_CTL_SOCK_NAME);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
			   strlen(sa->sun_path) + 1);
}

/* Remove a socket file left by a daemon that died; refuse to replace a
 * live one or anything that is not a socket. */
static int remove_stale(struct pf_ctl *c, const char *dir,
			struct pf_why *why)
{
	struct sockaddr_un sa;
	socklen_t len = ctl_sock_addr(c->dirfd, &sa);
	struct stat st;
	int fd, ret, err;

	if (fstatat(c->dirfd, PF_CTL_SOCK_NAME, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno == ENOENT)
			return 0;
		return pf_why_set(why, -errno, "cannot stat the control socket %s/%s: %s",
				  dir, PF_CTL_SOCK_NAME, strerror(errno));
	}
	if (!S_ISSOCK(st.st_mode))
		return pf_why_set(why, -EEXIST, "%s/%s exists and is not a socket",
				  dir, PF_CTL_SOCK_NAME);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return pf_why_set(why, -errno, "cannot create a socket: %s",
				  strerror(errno));
	ret = connect(fd, (struct sockaddr *)&sa, len);
	err = errno;
	close(fd);
	/* EAGAIN: the backlog of a live daemon is full. */
	if (ret == 0 || err == EAGAIN)
		return pf_why_set(why, -EADDRINUSE, "a daemon already serves %s (its control socket accepts connections)",
				  dir);
	if (err == ENOENT)
		return 0;	/* gone meanwhile */
	if (err != ECONNREFUSED)
		return pf_why_set(why, -err, "cannot connect to the control socket %s/%s: %s",
				  dir, PF_CTL_SOCK_NAME, strerror(err));
	/* Refused: nobody listens, its daemon died. */
	if (unlinkat(c->dirfd, PF_CTL_SOCK_NAME, 0) < 0 && errno != ENOENT)
		return pf_why_set(why, -errno, "cannot remove the stale control socket %s/%s: %s",
				  dir, PF_CTL_SOCK_NAME, strerror(errno));
	return 0;
}

/* Unlink the socket file if it is still the one we bound. */
static void unlink_own(struct pf_ctl *c)
{
	struct stat st;

	if (c->abstract)
		return;
	if (fstatat(c->dirfd, PF_CTL_SOCK_NAME, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    st.st_dev == c->sock_dev && st.st_ino == c->sock_ino)
		unlinkat(c->dirfd, PF_CTL_SOCK_NAME, 0);
}

/* Bind and listen on the socket file, owner-only.  Returns 0 or -errno
 * with @why; on failure nothing is left behind. */
static int bind_socket(struct pf_ctl *c, const char *dir, struct pf_why *why)
{
	struct sockaddr_un sa;
	socklen_t len = ctl_sock_addr(c->dirfd, &sa);
	struct stat st;
	mode_t old_mask;
	int ret, err;

	c->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (c->lfd < 0)
		return pf_why_set(why, -errno, "cannot create a socket: %s",
				  strerror(errno));
	/* The file is created by bind() with the umask applied: owner-only
	 * from the start, no window in which others could connect. */
	old_mask = umask(077);
	ret = bind(c->lfd, (struct sockaddr *)&sa, len);
	err = errno;
	umask(old_mask);
	if (ret < 0) {
		if (err == EADDRINUSE)
			return pf_why_set(why, -EADDRINUSE, "another daemon created the control socket of %s at the same time",
					  dir);
		return pf_why_set(why, -err, "cannot create the control socket %s/%s: %s",
				  dir, PF_CTL_SOCK_NAME, strerror(err));
	}
	if (fchmodat(c->dirfd, PF_CTL_SOCK_NAME, 0600, 0) < 0) {
		ret = pf_why_set(why, -errno, "cannot chmod the control socket %s/%s: %s",
				 dir, PF_CTL_SOCK_NAME, strerror(errno));
		goto err_unlink;
	}
	if (fstatat(c->dirfd, PF_CTL_SOCK_NAME, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		ret = pf_why_set(why, -errno, "cannot stat the control socket %s/%s: %s",
				 dir, PF_CTL_SOCK_NAME, strerror(errno));
		goto err_unlink;
	}
	c->sock_dev = st.st_dev;
	c->sock_ino = st.st_ino;
	if (listen(c->lfd, SOMAXCONN) < 0) {
		ret = pf_why_set(why, -errno, "cannot listen on the control socket %s/%s: %s",
				 dir, PF_CTL_SOCK_NAME, strerror(errno));
		goto err_unlink;
	}
	return 0;

err_unlink:
	unlinkat(c->dirfd, PF_CTL_SOCK_NAME, 0);
	return ret;
}

/* pf_ctl_start() and pf_ctl_start_abstract() */
static int ctl_start(int dirfd, const char *dir_for_messages, bool abstract,
		     const struct pf_ctl_cmd *cmds, void *ctx,
		     struct pf_ctl **out, struct pf_why *why)
{
	const char *dir = dir_for_messages ? dir_for_messages : ".";
	sigset_t all, old;
	struct pf_ctl *c;
	struct stat st;
	int ret;

	if (fstat(dirfd, &st) < 0)
		return pf_why_set(why, -errno, "cannot stat the image directory: %s",
				  strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return pf_why_set(why, -ENOTDIR, "the image directory is not a directory");
	c = calloc(1, sizeof(*c));
	if (!c)
		return pf_why_set(why, -ENOMEM, "out of memory");
	c->cmds = cmds;
	c->ctx = ctx;
	c->euid = geteuid();
	c->dir_dev = st.st_dev;
	c->dir_ino = st.st_ino;
	atomic_init(&c->idle_ms, PF_CTL_IDLE_MS);
	atomic_init(&c->streams, 0);
	c->lfd = -1;
	c->wake[0] = c->wake[1] = -1;
	c->wake_accept[0] = c->wake_accept[1] = -1;
	atomic_init(&c->stopping, false);
	atomic_init(&c->draining, false);
	c->dirfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
	if (c->dirfd < 0) {
		ret = pf_why_set(why, -errno, "cannot duplicate the directory descriptor: %s",
				 strerror(errno));
		goto err_free;
	}
	if (pipe2(c->wake, O_CLOEXEC | O_NONBLOCK) < 0 ||
	    pipe2(c->wake_accept, O_CLOEXEC | O_NONBLOCK) < 0) {
		ret = pf_why_set(why, -errno, "cannot create a pipe: %s",
				 strerror(errno));
		goto err_free;
	}
	if (abstract) {
		ret = bind_abstract(c, dir, why);
	} else {
		ret = remove_stale(c, dir, why);
		if (!ret)
			ret = bind_socket(c, dir, why);
	}
	if (ret < 0)
		goto err_free;
	ret = -pthread_mutex_init(&c->conns_lock, NULL);
	if (!ret) {
		ret = -pthread_cond_init(&c->conn_finished, NULL);
		if (ret < 0)
			pthread_mutex_destroy(&c->conns_lock);
	}
	if (ret < 0) {
		pf_why_fmt(why, "cannot initialise a mutex");
		goto err_unlink;
	}
	/* Our threads inherit a full mask: signals go to the daemon's. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = -pthread_create(&c->accept_thread, NULL, accept_main, c);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret < 0) {
		pf_why_fmt(why, "cannot start the control thread: %s",
			   strerror(-ret));
		goto err_mutex;
	}
	*out = c;
	return 0;

err_mutex:
	pthread_cond_destroy(&c->conn_finished);
	pthread_mutex_destroy(&c->conns_lock);
err_unlink:
	unlink_own(c);
err_free:
	if (c->lfd >= 0)
		close(c->lfd);
	if (c->wake[0] >= 0)
		close(c->wake[0]);
	if (c->wake[1] >= 0)
		close(c->wake[1]);
	if (c->wake_accept[0] >= 0)
		close(c->wake_accept[0]);
	if (c->wake_accept[1] >= 0)
		close(c->wake_accept[1]);
	if (c->dirfd >= 0)
		close(c->dirfd);
	free(c);
	return ret;
}

int pf_ctl_start(int dirfd, const char *dir_for_messages,
		 const struct pf_ctl_cmd *cmds, void *ctx, struct pf_ctl **out,
		 struct pf_why *why)
{
	return ctl_start(dirfd, dir_for_messages, false, cmds, ctx, out, why);
}

int pf_ctl_start_abstract(int dirfd, const char *dir_for_messages,
			  const struct pf_ctl_cmd *cmds, void *ctx,
			  struct pf_ctl **out, struct pf_why *why)
{
	return ctl_start(dirfd, dir_for_messages, true, cmds, ctx, out, why);
}

static void wake_up(int fd)
{
	ssize_t n;

	do {
		n = write(fd, "", 1);
	} while (n < 0 && errno == EINTR);
}

void pf_ctl_drain(struct pf_ctl *c)
{
	if (!c || atomic_exchange(&c->draining, true))
		return;
	/* draining first: a connection admitted after this point is one
	 * the accept thread saw before, and its thread finds stopping set
	 * before it reads a request */
	atomic_store(&c->stopping, true);
	wake_up(c->wake[1]);
	/* Wait for the handlers, not join: the accept thread owns the
	 * joins, and may be starting a connection's thread right now. */
	pthread_mutex_lock(&c->conns_lock);
	while (count_open_locked(c))
		pthread_cond_wait(&c->conn_finished, &c->conns_lock);
	pthread_mutex_unlock(&c->conns_lock);
}

void pf_ctl_stop(struct pf_ctl *c)
{
	if (!c)
		return;
	atomic_store(&c->draining, true);
	atomic_store(&c->stopping, true);
	wake_up(c->wake[1]);
	wake_up(c->wake_accept[1]);
	pthread_join(c->accept_thread, NULL);
	unlink_own(c);
	close(c->lfd);
	reap(c, true);
	pthread_cond_destroy(&c->conn_finished);
	pthread_mutex_destroy(&c->conns_lock);
	close(c->wake[0]);
	close(c->wake[1]);
	close(c->wake_accept[0]);
	close(c->wake_accept[1]);
	close(c->dirfd);
	free(c);
}

/* Abstract sockets (read-only daemons) */

/*
 * The abstract name of the control socket of the directory @st:
 * "\0" PF_CTL_ABSTRACT_PFX "<st_dev hex>:<st_ino hex>", without a
 * trailing NUL (the length is the name's).
 */
socklen_t ctl_abstract_addr(const struct stat *st, struct sockaddr_un *sa)
{
	int n;

	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	n = snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1,
		     PF_CTL_ABSTRACT_PFX "%jx:%jx", (uintmax_t)st->st_dev,
		     (uintmax_t)st->st_ino);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
			   (size_t)n);
}

/* Bind and listen on the abstract name of the image directory: nothing
 * is created in it.  Who may connect is the accept thread's check
 * (SO_PEERCRED), as for the file.  Returns 0 or -errno with @why. */
static int bind_abstract(struct pf_ctl *c, const char *dir,
			 struct pf_why *why)
{
	struct sockaddr_un sa;
	struct stat st;
	socklen_t len;

	if (fstat(c->dirfd, &st) < 0)
		return pf_why_set(why, -errno, "cannot stat the image directory: %s",
				  strerror(errno));
	len = ctl_abstract_addr(&st, &sa);
	c->abstract = true;
	c->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (c->lfd < 0)
		return pf_why_set(why, -errno, "cannot create a socket: %s",
				  strerror(errno));
	if (bind(c->lfd, (struct sockaddr *)&sa, len) < 0) {
		if (errno == EADDRINUSE)
			return pf_why_set(why, -EADDRINUSE, "a daemon already serves %s (its control socket is bound)",
					  dir);
		return pf_why_set(why, -errno, "cannot bind the control socket of %s: %s",
				  dir, strerror(errno));
	}
	if (listen(c->lfd, SOMAXCONN) < 0)
		return pf_why_set(why, -errno, "cannot listen on the control socket of %s: %s",
				  dir, strerror(errno));
	return 0;
}
