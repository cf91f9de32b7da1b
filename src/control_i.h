/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What the two files of the control module share: control.c (the server,
 * and the line, escape and address helpers) and control_client.c (the
 * client).  Private to them.
 */
#ifndef PF_CONTROL_I_H
#define PF_CONTROL_I_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "control.h"

#define CTL_MAGIC	"ploopfs-ctl"
#define ERRNO_MAX	4095	/* largest errno an end line may carry */

/* Input of one connection: bytes received, and the line handed out last. */
struct line_buf {
	size_t len;			/* bytes in buf */
	size_t used;			/* length of the last line, '\n' included */
	char buf[PF_CTL_LINE_MAX];
};

/* CLOCK_MONOTONIC in milliseconds. */
long ctl_mono_ms(void);

/*
 * Wait until @fd (may be -1) has @events or @wake_fd (may be -1) is
 * readable, at most @timeout_ms (-1: no limit).
 * Returns: 0 (ready); -ESHUTDOWN (@wake_fd); -ETIMEDOUT; other -errno.
 */
int ctl_wait_fd(int fd, short events, int wake_fd, int timeout_ms);

/*
 * Read the next '\n'-terminated line of @fd into @b; *@line is it without
 * the '\n', valid until the next call.  With @wake_fd >= 0 the socket is
 * non-blocking and the wait ends when @wake_fd turns readable.  With
 * @idle_ms >= 0, the line must be complete within @idle_ms of the call.
 * Returns: 1 (a line); 0 (end of file); -EMSGSIZE (line longer than
 * PF_CTL_LINE_MAX); -ESHUTDOWN (woken); -ETIMEDOUT; other -errno.
 */
int ctl_line_read(struct line_buf *b, int fd, int wake_fd, int idle_ms,
		  char **line);

/*
 * Send what of *@buf the socket takes (without waiting, unless @block),
 * advancing *@buf and *@len.  Returns 0 (all sent), -EAGAIN (the socket
 * is full: wait for POLLOUT) or -errno.
 */
int ctl_send_some(int fd, const char **buf, size_t *len, bool block);

/* @ch as shown in a message: control characters become '?'. */
char ctl_printable(char ch);

/* Is @ch sent as %XX in a request field? */
bool ctl_needs_escape(unsigned char ch);

/* The address of the socket file of image directory @dirfd, through
 * /proc/self/fd so that long paths work.  Returns its length. */
socklen_t ctl_sock_addr(int dirfd, struct sockaddr_un *sa);

/*
 * The abstract name of the control socket of the directory @st, where a
 * read-only daemon listens: "\0" PF_CTL_ABSTRACT_PFX "<st_dev hex>:<st_ino
 * hex>", without a trailing NUL.  Returns its length.
 */
socklen_t ctl_abstract_addr(const struct stat *st, struct sockaddr_un *sa);

/*
 * Connect the socket @s to @sa, waiting until @end (ctl_mono_ms()) while
 * the listener's queue is full, if @timeout_ms >= 0.  Returns 0 or -errno
 * (-ETIMEDOUT at @end).
 */
int ctl_connect_retry(int s, const struct sockaddr_un *sa, socklen_t len,
		      int timeout_ms, long end);

#endif /* PF_CONTROL_I_H */
