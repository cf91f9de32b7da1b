// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The control socket, client side: connect to an image's daemon and make
 * sure it is that image's (socket file, peer, hello), send a request and
 * read its reply within an idle limit, wait for a daemon that is closing
 * its image.  ploopctl's way to the daemon; transport only, as
 * control.c.
 */
#include "control.h"
#include "control_i.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CONNECT_RETRY_MS	10	/* retry of a full accept queue */

/*
 * Is the socket file of @dirfd one a daemon of this image could have
 * bound?  A symbolic link or anything else in its place is refused: it
 * may lead to the daemon of another image.
 */
static int sock_file_check(int dirfd, struct pf_why *why)
{
	struct stat st;

	if (fstatat(dirfd, PF_CTL_SOCK_NAME, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;	/* ENOENT: no daemon */
	if (S_ISLNK(st.st_mode))
		return pf_why_set(why, -ELOOP,
				  PF_CTL_SOCK_NAME " is a symbolic link, not the socket of this image's daemon (remove it)");
	if (!S_ISSOCK(st.st_mode))
		return pf_why_set(why, -ENOTSOCK,
				  PF_CTL_SOCK_NAME " is not a socket (remove it)");
	return 0;
}

/* The server's end of @s runs as root, as us or as the owner of the
 * image directory @dir: nobody else can serve our requests. */
static int peer_check(int s, const struct stat *dir, struct pf_why *why)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return pf_why_set(why, -errno, "cannot tell who serves " PF_CTL_SOCK_NAME ": %s",
				  strerror(errno));
	if (cred.uid != 0 && cred.uid != geteuid() && cred.uid != dir->st_uid)
		return pf_why_set(why, -EACCES,
				  PF_CTL_SOCK_NAME " is served by uid %u, neither root nor the image directory's owner",
				  (unsigned)cred.uid);
	return 0;
}

struct hello {
	uintmax_t dev, ino;
	bool seen;
};

/* "image <dev> <ino>", both plain decimal */
static int hello_line(void *ctx, const char *line)
{
	struct hello *h = ctx;
	const char *p = line + 6;
	char *end;

	if (strncmp(line, "image ", 6) != 0 || !isdigit((unsigned char)*p))
		return 0;
	errno = 0;
	h->dev = strtoumax(p, &end, 10);
	if (errno || *end != ' ' || !isdigit((unsigned char)end[1]))
		return 0;
	h->ino = strtoumax(end + 1, &end, 10);
	if (!errno && !*end)
		h->seen = true;
	return 0;
}

/* Ask the daemon on @s which image directory it serves; it must be
 * @dir's. */
static int hello(int s, int timeout_ms, const struct stat *dir,
		 struct pf_why *why)
{
	static const char *const argv[] = { PF_CTL_HELLO };
	struct hello h = { 0, 0, false };
	int ret;

	ret = pf_ctl_call(s, timeout_ms, 1, argv, hello_line, &h, why);
	if (ret)
		return ret;
	if (!h.seen)
		return pf_why_set(why, -EPROTO,
				  "the daemon on " PF_CTL_SOCK_NAME " did not say which image it serves");
	if (h.dev != (uintmax_t)dir->st_dev || h.ino != (uintmax_t)dir->st_ino)
		return pf_why_set(why, -EXDEV,
				  "the daemon on " PF_CTL_SOCK_NAME " serves another image directory (device %ju, inode %ju)",
				  h.dev, h.ino);
	return 0;
}

/*
 * A socket connected to @sa, waiting at most until @end while the
 * listener's queue is full, if @timeout_ms >= 0.  With a limit the
 * socket is non-blocking while it connects: a Unix socket whose accept
 * queue is full fails with EAGAIN instead of waiting, and there is
 * nothing to poll for but time.  Returns 0 with *@s, or -errno.
 */
static int open_connected(const struct sockaddr_un *sa, socklen_t len,
			  int timeout_ms, long end, int *s)
{
	int ret;

	*s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC |
			     (timeout_ms >= 0 ? SOCK_NONBLOCK : 0), 0);
	if (*s < 0)
		return -errno;
	ret = ctl_connect_retry(*s, sa, len, timeout_ms, end);
	if (!ret && timeout_ms >= 0 && fcntl(*s, F_SETFL, 0) < 0)
		ret = -errno;
	if (ret) {
		close(*s);
		*s = -1;
	}
	return ret;
}

int pf_ctl_connect(int dirfd, int timeout_ms, int *fd, struct pf_why *why)
{
	long end = timeout_ms >= 0 ? ctl_mono_ms() + timeout_ms : 0;
	struct sockaddr_un sa;
	socklen_t len;
	struct stat st;
	int s = -1, ret, ret2;

	*fd = -1;
	/* A bad @dirfd must not read as "no daemon" through /proc. */
	if (fstat(dirfd, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	ret = sock_file_check(dirfd, why);
	if (ret && ret != -ENOENT)
		return ret;
	if (!ret) {
		len = ctl_sock_addr(dirfd, &sa);
		ret = open_connected(&sa, len, timeout_ms, end, &s);
	}
	/* No live socket file: a read-only daemon listens on the abstract
	 * name of the directory, without one.  Anybody can bind such a
	 * name: the checks below are what make it ours. */
	if (ret == -ENOENT || ret == -ECONNREFUSED) {
		len = ctl_abstract_addr(&st, &sa);
		ret2 = open_connected(&sa, len, timeout_ms, end, &s);
		if (ret2 != -ENOENT && ret2 != -ECONNREFUSED)
			ret = ret2;
	}
	if (ret)
		return ret;
	ret = peer_check(s, &st, why);
	if (!ret)
		ret = hello(s, timeout_ms, &st, why);
	/* A daemon drops a connection it has not answered only as it
	 * stops (one queued while it was stopped, then closed with its
	 * socket): as good as closing. */
	if (ret == -ECONNRESET)
		ret = pf_why_set(why, -ESHUTDOWN, "the daemon is closing the image");
	if (ret) {
		close(s);
		return ret;
	}
	*fd = s;
	return 0;
}

/* Send all of @buf, waiting at most until @end (ctl_mono_ms(); @end < 0: no
 * limit) for room.  Returns 0, -ETIMEDOUT or -errno. */
static int send_all(int fd, const char *buf, size_t len, long end)
{
	long left;
	int ret;

	while ((ret = ctl_send_some(fd, &buf, &len, end < 0)) == -EAGAIN) {
		left = end - ctl_mono_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		ret = ctl_wait_fd(fd, POLLOUT, -1, (int)left);
		if (ret < 0 && ret != -ETIMEDOUT)
			return ret;
	}
	return ret;
}

/* "N s" or "N ms" */
static const char *fmt_ms(int ms, char *buf, size_t len)
{
	if (ms % 1000 == 0)
		snprintf(buf, len, "%d s", ms / 1000);
	else
		snprintf(buf, len, "%d ms", ms);
	return buf;
}

/* Encode the request into @req; returns its length or -errno. */
static int encode_request(char *req, size_t size, int argc,
			  const char *const *argv, struct pf_why *why)
{
	size_t n;
	int i;

	if (argc < 1 || !argv[0] || !argv[0][0])
		return pf_why_set(why, -EINVAL, "no command to send to the daemon");
	n = (size_t)snprintf(req, size, "%s %d", CTL_MAGIC, PF_CTL_VERSION);
	for (i = 0; i < argc; i++) {
		const unsigned char *p = (const unsigned char *)argv[i];

		if (!p || !*p)
			return pf_why_set(why, -EINVAL, "argument %d is empty: the control protocol cannot carry it",
					  i);
		if (n + 1 > size)
			return pf_why_set(why, -E2BIG, "request longer than the %d-byte limit of a control line",
					  PF_CTL_LINE_MAX);
		req[n++] = ' ';
		for (; *p; p++) {
			size_t need = ctl_needs_escape(*p) ? 3 : 1;

			/* room for the final '\n' too */
			if (n + need + 1 > size)
				return pf_why_set(why, -E2BIG, "request longer than the %d-byte limit of a control line",
						  PF_CTL_LINE_MAX);
			if (need == 3) {
				snprintf(req + n, 4, "%%%02X", *p);
				n += 3;
			} else {
				req[n++] = (char)*p;
			}
		}
	}
	if (n + 1 > size)
		return pf_why_set(why, -E2BIG, "request longer than the %d-byte limit of a control line",
				  PF_CTL_LINE_MAX);
	req[n++] = '\n';
	return (int)n;
}

/* Take the result of an end line.  Returns -errno (0) or -EPROTO. */
static int parse_end(const char *s, struct pf_why *why)
{
	char buf[64];
	int err = 0;

	if (*s < '0' || *s > '9')
		return pf_why_set(why, -EPROTO, "malformed end line from the daemon");
	for (; *s >= '0' && *s <= '9'; s++) {
		err = err * 10 + (*s - '0');
		if (err > ERRNO_MAX)
			return pf_why_set(why, -EPROTO, "malformed end line from the daemon: errno out of range");
	}
	if (*s && *s != ' ')
		return pf_why_set(why, -EPROTO, "malformed end line from the daemon");
	if (*s)
		s++;
	if (*s)
		pf_why_fmt(why, "%s", s);
	else if (err)
		pf_why_fmt(why, "%s", strerror_r(err, buf, sizeof(buf)));
	else
		pf_why_fmt(why, "%s", "");
	/* -ETIMEDOUT is the client's own limit, and -ECONNRESET a reply
	 * cut short, and only those */
	return err == ETIMEDOUT || err == ECONNRESET ? -EIO : -err;
}

int pf_ctl_call(int fd, int timeout_ms, int argc, const char *const *argv,
		int (*on_data)(void *ctx, const char *line), void *ctx,
		struct pf_why *why)
{
	char req[PF_CTL_LINE_MAX], shown[41], tbuf[32];
	struct line_buf *in;
	int ret, sent;
	size_t i;

	ret = encode_request(req, sizeof(req), argc, argv, why);
	if (ret < 0)
		return ret;
	/* A daemon that refuses us replies and closes before reading: a
	 * failed send still leaves its reply to read. */
	sent = send_all(fd, req, (size_t)ret,
			timeout_ms >= 0 ? ctl_mono_ms() + timeout_ms : -1);
	if (sent == -ETIMEDOUT) {
		shutdown(fd, SHUT_RDWR);
		return pf_why_set(why, -ETIMEDOUT, "the daemon did not take the request within %s",
				  fmt_ms(timeout_ms, tbuf, sizeof(tbuf)));
	}
	in = calloc(1, sizeof(*in));
	if (!in)
		return pf_why_set(why, -ENOMEM, "out of memory");
	for (;;) {
		char *line = NULL;

		ret = ctl_line_read(in, fd, -1, timeout_ms, &line);
		if (ret == -ETIMEDOUT) {
			/* Hung up, so that a daemon that resumes sees that
			 * nobody waits for the answer and does not start
			 * the command. */
			shutdown(fd, SHUT_RDWR);
			fmt_ms(timeout_ms, tbuf, sizeof(tbuf));
			ret = pf_why_set(why, -ETIMEDOUT, "the daemon did not answer within %s",
					 tbuf);
			break;
		}
		if (ret == -EMSGSIZE) {
			ret = pf_why_set(why, -EPROTO, "reply line from the daemon longer than %d bytes",
					 PF_CTL_LINE_MAX);
			break;
		}
		if (ret != 1 || !line) {
			/* no end line: the daemon's outcome is unknown */
			/* a request the daemon never took was not carried
			 * out: it has closed this connection, which it does
			 * only as it stops */
			if (sent < 0)
				ret = pf_why_set(why, -ESHUTDOWN, "the daemon closed the connection before taking the request: it is closing the image");
			else if (ret < 0)
				ret = pf_why_set(why, -ECONNRESET, "the connection to the daemon failed: %s",
						 strerror(-ret));
			else
				ret = pf_why_set(why, -ECONNRESET, "the daemon closed the connection before the end of its reply");
			break;
		}
		if (!strncmp(line, "data ", 5)) {
			if (!strcmp(line + 5, PF_CTL_KEEPALIVE))
				continue;
			ret = on_data ? on_data(ctx, line + 5) : 0;
			if (ret) {
				/* The stream goes on: only a hang-up ends
				 * it, which the daemon notices. */
				shutdown(fd, SHUT_RDWR);
				ret = ret < 0 ? ret : 0;
				break;
			}
			continue;
		}
		if (!strncmp(line, "end ", 4)) {
			ret = parse_end(line + 4, why);
			break;
		}
		for (i = 0; i < sizeof(shown) - 1 && line[i]; i++)
			shown[i] = ctl_printable(line[i]);
		shown[i] = '\0';
		ret = pf_why_set(why, -EPROTO, "malformed reply line from the daemon: \"%s\"",
				 shown);
		break;
	}
	free(in);
	return ret;
}

/* Closing daemons */

#define CLOSED_POLL_MS	10	/* a closing daemon is asked this often */

int pf_ctl_wait_closed(int dirfd, int timeout_ms)
{
	long end = timeout_ms >= 0 ? ctl_mono_ms() + timeout_ms : 0;
	bool seen = false;
	int fd = -1, ret;

	for (;;) {
		struct pf_why why = { "" };
		long left = timeout_ms >= 0 ? end - ctl_mono_ms() : -1;

		if (timeout_ms >= 0 && left <= 0)
			return seen ? -ETIMEDOUT : -ETIME;
		/* the connection's "hello" is answered "closing" (ESHUTDOWN)
		 * by a daemon that is closing its image */
		ret = pf_ctl_connect(dirfd, (int)left, &fd, &why);
		if (ret == -ETIMEDOUT)
			return seen ? -ETIMEDOUT : -ETIME;
		if (!ret)
			close(fd);
		if (ret != -ESHUTDOWN)
			return seen;	/* serving, gone, or not ours to tell */
		seen = true;
		(void)ctl_wait_fd(-1, 0, -1, CLOSED_POLL_MS);
	}
}

/*
 * Connect the socket @s to @sa, waiting until @end (ctl_mono_ms()) while the
 * listener's queue is full, if @timeout_ms >= 0.  Returns 0 or -errno
 * (-ETIMEDOUT at @end).
 */
int ctl_connect_retry(int s, const struct sockaddr_un *sa, socklen_t len,
			 int timeout_ms, long end)
{
	long left;

	for (;;) {
		if (!connect(s, (const struct sockaddr *)sa, len))
			return 0;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN || timeout_ms < 0)
			return -errno;
		left = end - ctl_mono_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		(void)ctl_wait_fd(-1, 0, -1, (int)(left < CONNECT_RETRY_MS ?
						left : CONNECT_RETRY_MS));
	}
}
