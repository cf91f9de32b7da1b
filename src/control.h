/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The daemon's control socket.  Generic transport
 * only: this module knows neither the stack nor FUSE; the daemon passes a
 * table of commands and ploopctl calls them.
 *
 * Socket.  A SOCK_STREAM Unix socket named PF_CTL_SOCK_NAME in the image
 * directory, mode 0600, reached through /proc/self/fd/<dirfd>/ so that
 * image paths longer than sun_path work.  Only root and the daemon's
 * effective uid are served (SO_PEERCRED).  A daemon that must not create
 * a file in the image directory (ploopfs -o ro) listens instead on a
 * Linux abstract socket named for the directory's st_dev and st_ino
 * (pf_ctl_start_abstract()), which clients try when the directory has
 * no live socket file; the client then requires the listener to be root
 * or its own uid, since anybody may bind an abstract name.
 *
 * Protocol version 1 (PF_CTL_VERSION).  Lines of at most PF_CTL_LINE_MAX
 * bytes including the '\n'.  A connection carries any number of requests,
 * one at a time:
 *
 *   request:  ploopfs-ctl 1 <cmd> [<arg> ...]
 *   response: data <text>          zero or more
 *             end <errno> <message>  exactly one, last
 *
 * Fields are separated by single spaces.  In a request, bytes <= 0x20,
 * 0x7f and '%' are sent as %XX (upper- or lower-case hex); %00 and empty
 * fields are malformed.  <errno> is 0 for success or a positive errno
 * number; <message> may be empty.  A streaming command sends data lines
 * until the client hangs up or the daemon stops (it then sends "end 0 "
 * if it can).  A request whose client has closed the connection before
 * its command starts is not carried out.
 *
 * Keepalives.  While the handler of a command marked keepalive (one that
 * may run for minutes, such as a merge) runs, the server sends the data
 * line "data keepalive" (PF_CTL_KEEPALIVE) every PF_CTL_KEEPALIVE_MS.
 * pf_ctl_call() swallows them.  So a client can bound the silence
 * between two lines of any reply that is not a stream, however long the
 * command: a daemon that is stopped (SIGSTOP) or whose control threads
 * are stuck falls silent, one that works does not.  A handler of such a
 * command that is itself stuck is not detected (the keepalives come from
 * a thread of their own).  Clients older than keepalives take the line
 * as one more data line of the reply, which they ignore.
 *
 * Built in: "hello" is answered "data image <dev> <ino>" (the st_dev and
 * st_ino of the image directory the daemon serves) and "end 0 ", so that a
 * client knows it reached its own image's daemon (pf_ctl_connect).
 *
 * Limits.  A connection must bring a whole request line within
 * PF_CTL_IDLE_MS of the previous reply (or of connecting): an idle or
 * half-sent connection is answered "end 110 no complete request within N
 * ms" and closed.  Handlers of stream commands (events) run at most
 * PF_CTL_STREAM_MAX at once; one more is answered "end 16 too many
 * followers of a stream (N)", so followers never take the connections
 * commands need.
 *
 * Replies to bad requests: a version other than 1 gets
 * "end 71 unsupported control protocol version N (daemon speaks 1)", an
 * unknown command "end 95 unknown command <cmd>", a malformed request
 * "end 22 <what is wrong>", a peer of another uid "end 13 permission
 * denied" and one connection beyond PF_CTL_CONN_MAX "end 16 too many
 * control connections" (both then closed).
 *
 * Events travel over the socket as data lines; the ring they come from
 * is events.h's.
 *
 * Lock order: pf_ctl.conns_lock is a leaf.  No
 * lock is held across a send, a handler, or a stop predicate, but for a
 * connection's send lock (a leaf too), which keeps the lines of a handler
 * and of its keepalives whole and is held across a send to that
 * connection only.
 */
#ifndef PF_CONTROL_H
#define PF_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define PF_CTL_SOCK_NAME	".ploopfs.sock"
/* abstract name: "\0" PF_CTL_ABSTRACT_PFX "<st_dev hex>:<st_ino hex>" */
#define PF_CTL_ABSTRACT_PFX	"ploopfs-ctl/"
#define PF_CTL_VERSION		1
#define PF_CTL_LINE_MAX		4096	/* bytes per line, '\n' included */
#define PF_CTL_CONN_MAX		64	/* connections served at once */
#define PF_CTL_KEEPALIVE	"keepalive"	/* a keepalive line's text */
#define PF_CTL_KEEPALIVE_MS	250	/* keepalive interval */
#define PF_CTL_IDLE_MS		10000	/* a request must come within this */
#define PF_CTL_STREAM_MAX	(PF_CTL_CONN_MAX / 2)	/* stream followers */
#define PF_CTL_HELLO		"hello"	/* built-in: the image served */

/* Server side */

struct pf_ctl;
struct pf_ctl_reply;

/*
 * A command.  @argv[0] is the command name, @argv[@argc] is NULL; the
 * strings are decoded and may be modified, and live until the handler
 * returns.  Send output with pf_ctl_data().  Return 0 or -errno; the
 * server then sends "end <-ret> <why->msg>" (strerror when @why is left
 * empty).
 * Context: the connection's own thread, one per connection; several
 * handlers may run at once.  A handler must not depend on the daemon's
 * data-path workers (FUSE threads) to make progress.
 */
typedef int (*pf_ctl_handler)(void *ctx, int argc, char **argv,
			      struct pf_ctl_reply *r, struct pf_why *why);

struct pf_ctl_cmd {
	const char *name;	/* NULL ends the table */
	pf_ctl_handler fn;
	/* may run long: keepalive lines go out while it runs (a command
	 * whose data lines are a stream must not set it) */
	bool keepalive;
	/* its data lines are a stream a client follows for as long as it
	 * likes: at most PF_CTL_STREAM_MAX run at once */
	bool stream;
};

/*
 * Create the control socket of the image directory @dirfd (an open
 * directory; it is duplicated) and start serving @cmds with @ctx.  A
 * socket file left by a daemon that died (connect refused) is replaced.
 * @dir_for_messages names the directory in @why.  The umask is 077 while
 * the socket is bound (process-wide: call before threads create files).
 * Returns: 0; -EADDRINUSE (a daemon accepts connections on the socket);
 * -EEXIST (PF_CTL_SOCK_NAME exists and is not a socket); -ENOTDIR; other
 * -errno.  @why says what.
 * Context: starts the accept thread; every thread it starts has all
 * signals blocked.
 */
PF_MUST_CHECK int pf_ctl_start(int dirfd, const char *dir_for_messages,
			       const struct pf_ctl_cmd *cmds, void *ctx,
			       struct pf_ctl **out, struct pf_why *why);

/*
 * pf_ctl_start() without a socket file: the socket is bound to the
 * abstract name of the image directory @dirfd (PF_CTL_ABSTRACT_PFX), so
 * that nothing in the directory changes (a read-only daemon).  The name
 * goes with the socket when the daemon closes it or dies.
 * Returns: 0; -EADDRINUSE (the name is bound: another daemon serves the
 * image); other -errno.  @why says what.
 * Context: as pf_ctl_start().
 */
PF_MUST_CHECK int pf_ctl_start_abstract(int dirfd,
					const char *dir_for_messages,
					const struct pf_ctl_cmd *cmds,
					void *ctx, struct pf_ctl **out,
					struct pf_why *why);

/*
 * The daemon is closing its image: stop the handlers as pf_ctl_stop()
 * does and wait for them, but keep the socket: every connection from now
 * on is answered "end 108" (ESHUTDOWN, "the daemon is closing the
 * image") until pf_ctl_stop().  So a client can tell a daemon whose
 * image is about to be free from one that serves it, and wait for the
 * image lock instead of answering busy.  @c may be NULL; idempotent.
 */
void pf_ctl_drain(struct pf_ctl *c);

/*
 * Client: while the daemon of the image directory @dirfd answers that it
 * is closing the image (ESHUTDOWN: unmounted, pf_ctl_drain()), wait for
 * it to finish, at most @timeout_ms (-1: no limit).  For a caller that
 * found the image lock taken.
 * Returns: 1 (a closing daemon was seen and has finished: take the lock
 * again), 0 (no daemon is closing the image: it is busy), -ETIMEDOUT
 * (still closing at the limit), -ETIME (a daemon that did not answer
 * within the limit: stopped or hung, closing or not).
 */
PF_MUST_CHECK int pf_ctl_wait_closed(int dirfd, int timeout_ms);

/*
 * Stop accepting, remove the socket file (if it is still ours), wake
 * waiting and streaming handlers (pf_ctl_stopping() turns true, blocked
 * sends give up), wait for every connection thread to finish, free.
 * Returns once the handlers running have returned.  @c may be NULL.
 */
void pf_ctl_stop(struct pf_ctl *c);

/*
 * Split the request line @line (no '\n') into its fields, in place, and
 * decode the %XX escapes of the command and its arguments.  *@fields
 * (malloc'ed, NULL after the last; free it) holds the CTL magic, the
 * version, the command, then the arguments; *@n counts them (>= 3).
 * The server's one request parser, non-static as the entry point for
 * tests and fuzzing (tests/fuzz/fuzz_ctl_request.c).
 * Returns: 0; -EINVAL (malformed: @why says how); -EPROTO (a version
 * other than PF_CTL_VERSION); -ENOMEM.  On error *@fields is NULL.
 */
PF_MUST_CHECK int pf_ctl_parse_request(char *line, char ***fields, size_t *n,
				       struct pf_why *why);

/*
 * @gone(ctx) (NULL: none) tells whether what the daemon serves is gone
 * (its mount removed) although the daemon has not noticed yet: "hello"
 * is then answered as by a draining server (ESHUTDOWN), so that a client
 * waits for the image instead of taking the daemon for a serving one.
 * Context: called in connection threads, with no lock held.
 */
typedef bool (*pf_ctl_gone_fn)(void *ctx);
void pf_ctl_set_gone(struct pf_ctl *c, pf_ctl_gone_fn gone);

/* Change the idle limit of the connections (PF_CTL_IDLE_MS by default;
 * -1: none) for their next request.  For tests. */
void pf_ctl_set_idle(struct pf_ctl *c, int idle_ms);

/* Connections open now (served or waiting for a request). */
unsigned pf_ctl_connections(struct pf_ctl *c);

/*
 * Send one "data" line: printf-style @fmt, truncated to fit a line;
 * control characters other than tab become '?'.  Waits while the client
 * does not read, until the server stops.
 * Returns: 0; -EPIPE (the client has gone, or the server is stopping and
 * the client does not read; a streaming handler returns then).
 */
int pf_ctl_data(struct pf_ctl_reply *r, const char *fmt, ...) PF_PRINTF(2, 3);

/* True once pf_ctl_stop() has been called. */
bool pf_ctl_stopping(const struct pf_ctl_reply *r);

/*
 * True once the server is stopping or the client of @reply (a struct
 * pf_ctl_reply *) has hung up or failed.  Does not block.  Its type fits
 * the @stop predicate of pf_events_wait(), so a streaming handler can
 * wait for events with pf_events_wait(ev, seq, &e, -1, pf_ctl_cancelled, r).
 */
bool pf_ctl_cancelled(void *reply);

/* Client side */

/*
 * Connect to the daemon serving the image directory @dirfd, waiting at
 * most @timeout_ms (-1: no limit) while its queue of connections not yet
 * accepted is full, and make sure it is that image's daemon: the socket
 * file is a socket (not a symbolic link to another image's), the server
 * runs as root, as us or as the directory's owner, and it answers
 * "hello" with this directory's device and inode, within @timeout_ms
 * (an idle limit, as pf_ctl_call()'s).  A daemon that is stopped lets the
 * connection be made but does not answer: -ETIMEDOUT.  When the
 * directory has no live socket file, the abstract name of a read-only
 * daemon is tried (pf_ctl_start_abstract()), with the same checks.
 * Returns: 0 and *@fd (close it when done); -ENOENT or -ECONNREFUSED (no
 * daemon serves the image: work on the files); -ESHUTDOWN (the daemon is
 * closing the image); -ELOOP (the socket file is a symbolic link);
 * -ENOTSOCK (it is not a socket); -EACCES (served by another user);
 * -EXDEV (the daemon serves another image directory); -ETIMEDOUT
 * (@timeout_ms passed); -EBADF, -ENOTDIR; other -errno.  @why says what
 * where the reason is not the errno's own.
 */
PF_MUST_CHECK int pf_ctl_connect(int dirfd, int timeout_ms, int *fd,
				 struct pf_why *why);

/*
 * Send the request @argv[0..@argc-1] (command, then arguments) on @fd
 * and read the reply.  The text of each data line goes to @on_data
 * (NULL: ignored), keepalive lines excepted; when it returns nonzero the
 * reading stops, the connection is shut down (close @fd then) and that
 * value is returned if negative, else 0.  With @timeout_ms >= 0 the
 * daemon must send something within @timeout_ms of the request and of
 * each line before (an idle limit: a command that sends keepalives may
 * take as long as it needs); on expiry the connection is shut down, so
 * that a daemon that resumes does not start the command (close @fd
 * then).  @timeout_ms -1 waits without limit, which is what a stream
 * needs: its silence is normal.
 * Returns: the daemon's result, 0 or -errno, with @why set to its message
 * (strerror when it sent none; a daemon's ETIMEDOUT or ECONNRESET comes
 * back as -EIO, so that -ETIMEDOUT is always the client's own limit and
 * -ECONNRESET a reply cut short); -ETIMEDOUT (the daemon was silent for
 * @timeout_ms); -EINVAL (no command, or an empty argument); -E2BIG
 * (request longer than a line); -ESHUTDOWN (the daemon is closing the
 * image, or closed the connection before it took the request: nothing
 * was done); -ECONNRESET (the connection failed or the daemon closed it
 * before the end of its reply, say killed: whether the command ran is
 * unknown); -EPROTO
 * (malformed reply).  @why says which.
 */
PF_MUST_CHECK int pf_ctl_call(int fd, int timeout_ms, int argc,
			      const char *const *argv,
			      int (*on_data)(void *ctx, const char *line),
			      void *ctx, struct pf_why *why);

#endif /* PF_CONTROL_H */
