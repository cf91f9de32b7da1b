// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Unit tests of src/control.c: the control socket in temporary image
 * directories (argument encoding, error replies, unknown commands,
 * protocol versions, malformed requests, socket mode, long directory
 * paths, stale and live sockets, concurrent clients, the connection
 * limit, streams that the client ends early or that pf_ctl_stop() ends,
 * clients that vanish mid-request, the client's idle limit and the
 * keepalives that lift it, a stopped server, peers of another uid) and
 * the events ring (order, concurrent producers with a consumer that
 * accounts for every sequence number, overflow into "lost" events,
 * per-type totals, timeouts, stop predicates, the wire format).
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "control.h"
#include "events.h"
#include "tap.h"
#include "util.h"

#define WAIT_MS	10000	/* limit for things that must happen */

static char tmp_root[] = "/tmp/pf-test-control.XXXXXX";
static int n_dirs;

/* A new empty directory under tmp_root; returns an O_DIRECTORY fd. */
static int new_dir(char *path, size_t len)
{
	int fd;

	snprintf(path, len, "%s/d%d", tmp_root, n_dirs++);
	if (mkdir(path, 0700) < 0)
		abort();
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		abort();
	return fd;
}

/* @s with control characters as \xNN, for TAP lines (one of 4 buffers). */
static const char *vis(const char *s)
{
	static _Thread_local char bufs[4][600];
	static _Thread_local int next;
	char *b = bufs[next++ % 4];
	size_t n = 0;

	for (; *s && n + 5 < sizeof(bufs[0]); s++) {
		unsigned char u = (unsigned char)*s;

		if (u < 0x20 || u == 0x7f)
			n += (size_t)sprintf(b + n, "\\x%02x", u);
		else
			b[n++] = *s;
	}
	b[n] = '\0';
	return b;
}

/* check_str for strings that may hold control characters */
#define check_vis(a, b)                                                    \
	do {                                                               \
		const char *va_ = (a), *vb_ = (b);                         \
		check_msg(!strcmp(va_, vb_), "%s == %s (\"%s\" vs \"%s\")", \
			  #a, #b, vis(va_), vis(vb_));                     \
	} while (0)

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Wait up to WAIT_MS for pf_ctl_connections() to be @n. */
static bool wait_conns(struct pf_ctl *c, unsigned n)
{
	uint64_t end = mono_ms() + WAIT_MS;

	while (pf_ctl_connections(c) != n) {
		if (mono_ms() > end)
			return false;
		sleep_ms(1);
	}
	return true;
}

/* Handlers */

static pthread_mutex_t rec_lock = PTHREAD_MUTEX_INITIALIZER;
static char rec_args[8][256];		/* protected by rec_lock */
static int rec_argc;			/* protected by rec_lock */

static int h_echo(void *ctx, int argc, char **argv, struct pf_ctl_reply *r,
		  struct pf_why *why)
{
	int i;

	(void)ctx;
	(void)why;
	pthread_mutex_lock(&rec_lock);
	rec_argc = argc;
	for (i = 0; i < argc && i < 8; i++)
		snprintf(rec_args[i], sizeof(rec_args[i]), "%s", argv[i]);
	pthread_mutex_unlock(&rec_lock);
	for (i = 1; i < argc; i++)
		if (pf_ctl_data(r, "%s", argv[i]))
			return -EPIPE;
	return 0;
}

static int h_fail(void *ctx, int argc, char **argv, struct pf_ctl_reply *r,
		  struct pf_why *why)
{
	(void)ctx;
	if (pf_ctl_data(r, "partial"))
		return -EPIPE;
	return pf_why_set(why, -ENOSPC, "no space left for %s",
			  argc > 1 ? argv[1] : "nothing");
}

static int h_fail_quiet(void *ctx, int argc, char **argv,
			struct pf_ctl_reply *r, struct pf_why *why)
{
	(void)ctx;
	(void)argc;
	(void)argv;
	(void)r;
	(void)why;
	return -EBUSY;
}

/* Everyone waits here until gate_target handlers are inside. */
static atomic_int gate_in;
static int gate_target;

static int h_gate(void *ctx, int argc, char **argv, struct pf_ctl_reply *r,
		  struct pf_why *why)
{
	uint64_t end = mono_ms() + WAIT_MS;

	(void)ctx;
	(void)argc;
	(void)argv;
	atomic_fetch_add(&gate_in, 1);
	while (atomic_load(&gate_in) < gate_target) {
		if (mono_ms() > end)
			return pf_why_set(why, -ETIMEDOUT, "gate not reached");
		sleep_ms(1);
	}
	return pf_ctl_data(r, "through");
}

/* A fast stream: numbers until the client or the server stops it. */
static atomic_int count_ended;		/* streams that returned */
static atomic_int count_last_ret;

static int h_count(void *ctx, int argc, char **argv, struct pf_ctl_reply *r,
		   struct pf_why *why)
{
	int i = 0, ret = 0;

	(void)ctx;
	(void)argc;
	(void)argv;
	(void)why;
	while (!pf_ctl_stopping(r)) {
		ret = pf_ctl_data(r, "%d", i++);
		if (ret)
			break;
	}
	atomic_store(&count_last_ret, ret);
	atomic_fetch_add(&count_ended, 1);
	return 0;
}

/* A stream that ignores pf_ctl_stopping(): only a failed send ends it. */
static atomic_int flood_ret;

static int h_flood(void *ctx, int argc, char **argv, struct pf_ctl_reply *r,
		   struct pf_why *why)
{
	int i = 0, ret;

	(void)ctx;
	(void)argc;
	(void)argv;
	(void)why;
	do {
		ret = pf_ctl_data(r, "%d", i++);
	} while (!ret);
	atomic_store(&flood_ret, ret);
	return 0;
}

/* An event stream, as the daemon's events command. */
static struct pf_events *srv_events;

static int h_events(void *ctx, int argc, char **argv, struct pf_ctl_reply *r,
		    struct pf_why *why)
{
	char line[PF_EVENT_LINE_MAX];
	struct pf_event e;
	uint64_t after = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;

	(void)ctx;
	(void)why;
	while (pf_events_wait(srv_events, after, &e, -1, pf_ctl_cancelled,
			      r) == 1) {
		if (pf_event_format(&e, line, sizeof(line)) ||
		    pf_ctl_data(r, "%s", line))
			break;
		after = pf_event_next_after(&e);
	}
	return 0;
}

/* Wait (at most WAIT_MS) until the client of @r hangs up. */
static void wait_cancelled(struct pf_ctl_reply *r)
{
	uint64_t end = mono_ms() + WAIT_MS;

	while (!pf_ctl_cancelled(r) && mono_ms() < end)
		sleep_ms(1);
}

/* Waits until its client hangs up, then tries to answer. */
static atomic_int block_entered, block_cancelled, block_data_ret;

static int h_block(void *ctx, int argc, char **argv, struct pf_ctl_reply *r,
		   struct pf_why *why)
{
	(void)ctx;
	(void)argc;
	(void)argv;
	(void)why;
	atomic_store(&block_entered, 1);
	wait_cancelled(r);
	atomic_store(&block_cancelled, pf_ctl_cancelled(r));
	atomic_store(&block_data_ret, pf_ctl_data(r, "too late"));
	atomic_store(&block_entered, 2);
	return 0;
}

/* A stream that follows until its client hangs up; counts followers. */
static atomic_int followers;

static int h_follow(void *ctx, int argc, char **argv, struct pf_ctl_reply *r,
		    struct pf_why *why)
{
	(void)ctx;
	(void)argc;
	(void)argv;
	(void)why;
	atomic_fetch_add(&followers, 1);
	wait_cancelled(r);
	atomic_fetch_sub(&followers, 1);
	return 0;
}

/* Sleeps argv[1] ms, then answers "done"; registered as "sleep" and, as
 * a keepalive command, as "slow". */
static int h_sleep(void *ctx, int argc, char **argv, struct pf_ctl_reply *r,
		   struct pf_why *why)
{
	(void)ctx;
	(void)why;
	sleep_ms(argc > 1 ? atol(argv[1]) : 0);
	return pf_ctl_data(r, "done");
}

/* Counts its runs; "marks" tells the count without running "mark". */
static atomic_int mark_runs;

static int h_mark(void *ctx, int argc, char **argv, struct pf_ctl_reply *r,
		  struct pf_why *why)
{
	(void)ctx;
	(void)argc;
	(void)why;
	if (!strcmp(argv[0], "mark"))
		atomic_fetch_add(&mark_runs, 1);
	return pf_ctl_data(r, "%d", atomic_load(&mark_runs));
}

/* A command that itself fails with ETIMEDOUT. */
static int h_etimedout(void *ctx, int argc, char **argv,
		       struct pf_ctl_reply *r, struct pf_why *why)
{
	(void)ctx;
	(void)argc;
	(void)argv;
	(void)r;
	return pf_why_set(why, -ETIMEDOUT, "the handler's own wait timed out");
}

static const struct pf_ctl_cmd cmds[] = {
	{ .name = "echo", .fn = h_echo },
	{ .name = "fail", .fn = h_fail },
	{ .name = "fail-quiet", .fn = h_fail_quiet },
	{ .name = "gate", .fn = h_gate },
	{ .name = "count", .fn = h_count },
	{ .name = "flood", .fn = h_flood },
	{ .name = "events", .fn = h_events },
	{ .name = "block", .fn = h_block },
	{ .name = "follow", .fn = h_follow, .stream = true },
	{ .name = "sleep", .fn = h_sleep },
	{ .name = "slow", .fn = h_sleep, .keepalive = true },
	{ .name = "mark", .fn = h_mark },
	{ .name = "marks", .fn = h_mark },
	{ .name = "etimedout", .fn = h_etimedout },
	{ .name = NULL },
};

/* Client helpers */

struct lines {
	int n;
	int stop_after;		/* on_data stops after this many lines, */
	int stop_ret;		/* returning this (0: 1) */
	char line[16][256];
};

static int collect(void *ctx, const char *line)
{
	struct lines *l = ctx;

	if (l->n < 16)
		snprintf(l->line[l->n], sizeof(l->line[0]), "%s", line);
	l->n++;
	if (l->stop_after && l->n >= l->stop_after)
		return l->stop_ret ? l->stop_ret : 1;
	return 0;
}

/* Connect and make one call. */
static int call(int dirfd, int argc, const char *const *argv,
		struct lines *l, struct pf_why *why)
{
	int fd, ret = pf_ctl_connect(dirfd, -1, &fd, why);

	if (ret < 0)
		return ret;
	ret = pf_ctl_call(fd, -1, argc, argv, l ? collect : NULL, l, why);
	close(fd);
	return ret;
}

static void raw_send(int fd, const char *s)
{
	if (send(fd, s, strlen(s), MSG_NOSIGNAL) != (ssize_t)strlen(s))
		tap_diag("raw send failed: %s", strerror(errno));
}

/* Read one line, '\n' included, into @buf; "" at end of file. */
static const char *raw_line(int fd, char *buf, size_t len)
{
	size_t n = 0;

	while (n + 1 < len) {
		ssize_t k = read(fd, buf + n, 1);

		if (k <= 0)
			break;
		if (buf[n++] == '\n')
			break;
	}
	buf[n] = '\0';
	return buf;
}

static struct pf_ctl *start(int dirfd, const char *dir)
{
	struct pf_why why = { "" };
	struct pf_ctl *c = NULL;
	int ret = pf_ctl_start(dirfd, dir, cmds, NULL, &c, &why);

	check_msg(ret == 0, "pf_ctl_start %s: %d %s", dir, ret, why.msg);
	if (ret)
		abort();
	return c;
}

struct stopper {
	struct pf_ctl *c;
};

static void *stop_main(void *arg)
{
	struct stopper *s = arg;

	pf_ctl_stop(s->c);
	return NULL;
}

/* pf_ctl_stop() must return within WAIT_MS; a hang ends the test run. */
static void stop_promptly(struct pf_ctl *c)
{
	struct stopper s = { c };
	struct timespec deadline;
	pthread_t th;
	int ret;

	if (pthread_create(&th, NULL, stop_main, &s))
		abort();
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += WAIT_MS / 1000;
	ret = pthread_timedjoin_np(th, NULL, &deadline);
	check_msg(ret == 0, "pf_ctl_stop returned (%s)", strerror(ret));
	if (ret) {
		printf("Bail out! pf_ctl_stop hangs\n");
		exit(1);
	}
}

/* Tests: control socket */

static void test_echo(void)
{
	const char *argv[] = { "echo", "a b", "x\ny", "100%", "tab\there",
			       "\x7f", "\xc3\xbcn\xc3\xaf", "%41" };
	struct pf_why why = { "" };
	struct lines l = { 0 };
	char dir[256], buf[256];
	struct pf_ctl *c;
	int dirfd, fd, i;

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	check_int(call(dirfd, 8, argv, &l, &why), ==, 0);
	check_str(why.msg, "");
	pthread_mutex_lock(&rec_lock);
	check_int(rec_argc, ==, 8);
	for (i = 0; i < 8; i++)
		check_vis(rec_args[i], argv[i]);
	pthread_mutex_unlock(&rec_lock);
	/* data lines carry no control characters but tab */
	check_int(l.n, ==, 7);
	check_str(l.line[0], "a b");
	check_str(l.line[1], "x?y");
	check_str(l.line[2], "100%");
	check_str(l.line[3], "tab\there");
	check_str(l.line[4], "?");
	check_str(l.line[5], "\xc3\xbcn\xc3\xaf");
	check_str(l.line[6], "%41");

	/* several requests on one connection; the daemon decodes any case */
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
	raw_send(fd, "ploopfs-ctl 1 echo a%20b %0a%25 %4a%4A\n");
	check_vis(raw_line(fd, buf, sizeof(buf)), "data a b\n");
	check_vis(raw_line(fd, buf, sizeof(buf)), "data ?%\n");
	check_vis(raw_line(fd, buf, sizeof(buf)), "data JJ\n");
	check_vis(raw_line(fd, buf, sizeof(buf)), "end 0 \n");
	pthread_mutex_lock(&rec_lock);
	check_vis(rec_args[2], "\n%");
	pthread_mutex_unlock(&rec_lock);
	memset(&l, 0, sizeof(l));
	check_int(pf_ctl_call(fd, -1, 2, argv, collect, &l, &why), ==, 0);
	check_int(l.n, ==, 1);
	check_str(l.line[0], "a b");
	memset(&l, 0, sizeof(l));
	check_int(pf_ctl_call(fd, -1, 1, argv, collect, &l, &why), ==, 0);
	check_int(l.n, ==, 0);
	close(fd);

	/* what the client cannot send */
	{
		const char *empty[] = { "echo", "" };
		static char big[PF_CTL_LINE_MAX];
		const char *large[] = { "echo", big };

		check_int(call(dirfd, 2, empty, NULL, &why), ==, -EINVAL);
		check_str(why.msg, "argument 1 is empty: the control protocol cannot carry it");
		check_int(call(dirfd, 0, argv, NULL, &why), ==, -EINVAL);
		memset(big, 'x', sizeof(big) - 1);
		check_int(call(dirfd, 2, large, NULL, &why), ==, -E2BIG);
		/* the longest request that fits: 4095 bytes and '\n' */
		big[PF_CTL_LINE_MAX - 1 - strlen("ploopfs-ctl 1 echo ")] = '\0';
		memset(&l, 0, sizeof(l));
		check_int(call(dirfd, 2, large, &l, &why), ==, 0);
		check_int(l.n, ==, 1);
		pthread_mutex_lock(&rec_lock);
		check_int(strlen(rec_args[1]), ==, sizeof(rec_args[1]) - 1);
		pthread_mutex_unlock(&rec_lock);
	}
	pf_ctl_stop(c);
	close(dirfd);
}

/* A draining server (the daemon closing its image) answers every new
 * request "closing" and keeps its socket until pf_ctl_stop(). */
static void test_drain(void)
{
	const char *argv[] = { "echo", "x" };
	struct pf_why why = { "" };
	struct pf_ctl *c;
	struct stat st;
	char dir[256], buf[256];
	int dirfd, fd;

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	/* serving: nothing to wait for */
	check_int(pf_ctl_wait_closed(dirfd, WAIT_MS), ==, 0);
	check_int(call(dirfd, 2, argv, NULL, &why), ==, 0);
	/* a connection open before the drain hears "closing" too, not a
	 * hang-up, whether its request was read or not */
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
	raw_send(fd, "ploopfs-ctl 1 echo y\n");	/* served: admitted */
	check_vis(raw_line(fd, buf, sizeof(buf)), "data y\n");
	check_vis(raw_line(fd, buf, sizeof(buf)), "end 0 \n");
	pf_ctl_drain(c);
	raw_send(fd, "ploopfs-ctl 1 echo x\n");
	check_vis(raw_line(fd, buf, sizeof(buf)),
		  "end 108 the daemon is closing the image\n");
	close(fd);
	pf_ctl_drain(c);	/* idempotent */
	check_int(call(dirfd, 2, argv, NULL, &why), ==, -ESHUTDOWN);
	check_str(why.msg, "the daemon is closing the image");
	check_int(fstatat(dirfd, PF_CTL_SOCK_NAME, &st, 0), ==, 0);
	/* closing all along: the wait gives up at its limit */
	check_int(pf_ctl_wait_closed(dirfd, 50), ==, -ETIMEDOUT);
	stop_promptly(c);
	/* gone: no daemon is closing the image */
	check_int(pf_ctl_wait_closed(dirfd, WAIT_MS), ==, 0);
	close(dirfd);
}

static void test_errors(void)
{
	const char *fail[] = { "fail", "disk" };
	const char *quiet[] = { "fail-quiet" };
	const char *nope[] = { "nope", "x" };
	struct pf_why why = { "" };
	struct lines l = { 0 };
	struct pf_ctl *c;
	char dir[256];
	int dirfd;

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	check_int(call(dirfd, 2, fail, &l, &why), ==, -ENOSPC);
	check_str(why.msg, "no space left for disk");
	check_int(l.n, ==, 1);
	check_str(l.line[0], "partial");
	check_int(call(dirfd, 1, quiet, NULL, &why), ==, -EBUSY);
	check_str(why.msg, strerror(EBUSY));
	check_int(call(dirfd, 2, nope, NULL, &why), ==, -EOPNOTSUPP);
	check_str(why.msg, "unknown command nope");
	pf_ctl_stop(c);
	close(dirfd);
}

static void test_bad_requests(void)
{
	static const struct {
		const char *req, *reply;
	} t[] = {
		{ "ploopfs-ctl 2 x\n",
		  "end 71 unsupported control protocol version 2 (daemon speaks 1)\n" },
		{ "ploopfs-ctl 10 echo\n",
		  "end 71 unsupported control protocol version 10 (daemon speaks 1)\n" },
		{ "ploopfs-ctl 01 echo\n", "end 0 \n" },
		{ "ploopfs-ctl 1 nope%20x\n", "end 95 unknown command nope x\n" },
		{ "hello\n",
		  "end 22 malformed request: it does not start with \"ploopfs-ctl\"\n" },
		{ "\n", "end 22 malformed request: empty field 1\n" },
		{ "ploopfs-ctl\n", "end 22 malformed request: no protocol version\n" },
		{ "ploopfs-ctl v1 echo\n",
		  "end 22 malformed request: no protocol version\n" },
		{ "ploopfs-ctl 1\n", "end 22 malformed request: no command\n" },
		{ "ploopfs-ctl 1 echo  a\n",
		  "end 22 malformed request: empty field 4\n" },
		{ "ploopfs-ctl 1 echo a \n",
		  "end 22 malformed request: empty field 5\n" },
		{ "ploopfs-ctl 1 echo %zz\n",
		  "end 22 malformed request: bad % escape in argument 1\n" },
		{ "ploopfs-ctl 1 echo a %4\n",
		  "end 22 malformed request: bad % escape in argument 2\n" },
		{ "ploopfs-ctl 1 echo %00\n",
		  "end 22 malformed request: bad % escape in argument 1\n" },
		{ "ploopfs-ctl 1 echo a\tb\n",
		  "end 22 malformed request: control character 0x09\n" },
		{ "ploopfs-ctl 1 echo a\r\n",
		  "end 22 malformed request: control character 0x0d\n" },
	};
	char dir[256], buf[512];
	struct pf_ctl *c;
	int dirfd, fd;
	size_t i;

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	/* all on one connection: a bad request does not end it */
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
	for (i = 0; i < PF_ARRAY_SIZE(t); i++) {
		raw_send(fd, t[i].req);
		check_vis(raw_line(fd, buf, sizeof(buf)), t[i].reply);
	}
	close(fd);

	/* a line too long loses the framing: answered, then closed */
	{
		static char big[PF_CTL_LINE_MAX + 100];

		memset(big, 'a', sizeof(big) - 1);
		check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
		raw_send(fd, big);
		check_vis(raw_line(fd, buf, sizeof(buf)),
			  "end 22 malformed request: line longer than 4096 bytes\n");
		check_vis(raw_line(fd, buf, sizeof(buf)), "");
		close(fd);
	}
	check(wait_conns(c, 0));
	pf_ctl_stop(c);
	close(dirfd);
}

/* Replies the client must refuse, from a fake daemon (a socketpair). */
static void test_bad_replies(void)
{
	static const struct {
		const char *reply;
		int ret;
		const char *why;
	} t[] = {
		{ "data x\n", -ECONNRESET,
		  "the daemon closed the connection before the end of its reply" },
		{ "", -ECONNRESET,
		  "the daemon closed the connection before the end of its reply" },
		{ "data x\nend 5", -ECONNRESET,
		  "the daemon closed the connection before the end of its reply" },
		{ "hello\n", -EPROTO,
		  "malformed reply line from the daemon: \"hello\"" },
		{ "end x\n", -EPROTO, "malformed end line from the daemon" },
		{ "end 5x\n", -EPROTO, "malformed end line from the daemon" },
		{ "end 99999 x\n", -EPROTO,
		  "malformed end line from the daemon: errno out of range" },
		{ "end 5\n", -EIO, NULL },
		{ "end 104 reset\n", -EIO, "reset" },
		{ "end 0\n", 0, "" },
		{ "end 2 gone away\n", -ENOENT, "gone away" },
	};
	const char *argv[] = { "x" };
	struct pf_why why;
	size_t i;
	int sv[2];

	for (i = 0; i < PF_ARRAY_SIZE(t); i++) {
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
			abort();
		raw_send(sv[1], t[i].reply);
		shutdown(sv[1], SHUT_WR);
		check_int(pf_ctl_call(sv[0], -1, 1, argv, NULL, NULL, &why), ==,
			  t[i].ret);
		check_str(why.msg, t[i].why ? t[i].why : strerror(EIO));
		close(sv[0]);
		close(sv[1]);
	}

	/* a daemon that refuses us answers and closes before reading: the
	 * send fails, the answer is still read */
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		abort();
	raw_send(sv[1], "end 13 permission denied\n");
	close(sv[1]);
	check_int(pf_ctl_call(sv[0], -1, 1, argv, NULL, NULL, &why), ==,
		  -EACCES);
	check_str(why.msg, "permission denied");
	close(sv[0]);
	/* one that closes without a word */
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		abort();
	close(sv[1]);
	check_int(pf_ctl_call(sv[0], -1, 1, argv, NULL, NULL, &why), ==, -ESHUTDOWN);
	check_str(why.msg, "the daemon closed the connection before taking the request: it is closing the image");
	close(sv[0]);

	/* a reply line longer than the limit */
	{
		static char big[PF_CTL_LINE_MAX + 10];

		memset(big, 'd', sizeof(big) - 1);
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
			abort();
		raw_send(sv[1], big);
		shutdown(sv[1], SHUT_WR);
		check_int(pf_ctl_call(sv[0], -1, 1, argv, NULL, NULL, &why), ==,
			  -EPROTO);
		check_str(why.msg, "reply line from the daemon longer than 4096 bytes");
		close(sv[0]);
		close(sv[1]);
	}
}

static void test_socket_file(void)
{
	const char *argv[] = { "echo", "x" };
	struct pf_why why = { "" };
	struct pf_ctl *c, *c2 = NULL;
	char dir[256];
	struct stat st;
	mode_t old;
	int dirfd, fd, fd2;

	dirfd = new_dir(dir, sizeof(dir));
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, -ENOENT);
	old = umask(022);
	c = start(dirfd, dir);
	check_int(umask(old), ==, 022);	/* restored */
	check_int(fstatat(dirfd, PF_CTL_SOCK_NAME, &st, AT_SYMLINK_NOFOLLOW), ==, 0);
	check(S_ISSOCK(st.st_mode));
	check_int(st.st_mode & 07777, ==, 0600);

	/* a second daemon on the same directory */
	check_int(pf_ctl_start(dirfd, dir, cmds, NULL, &c2, &why), ==,
		  -EADDRINUSE);
	check_msg(strstr(why.msg, "a daemon already serves") != NULL, "%s",
		  why.msg);
	check_int(call(dirfd, 2, argv, NULL, &why), ==, 0);

	/* stopping removes the socket file */
	pf_ctl_stop(c);
	check_int(fstatat(dirfd, PF_CTL_SOCK_NAME, &st, AT_SYMLINK_NOFOLLOW), ==, -1);
	check_int(errno, ==, ENOENT);
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, -ENOENT);

	/* not a directory, not a descriptor */
	fd = openat(dirfd, "file", O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	check_int(pf_ctl_connect(fd, -1, &fd2, NULL), ==, -ENOTDIR);
	check_int(pf_ctl_start(fd, "file", cmds, NULL, &c2, &why), ==, -ENOTDIR);
	close(fd);
	check_int(pf_ctl_connect(-1, -1, &fd2, NULL), ==, -EBADF);

	/* a file of the socket's name that is not a socket is left alone */
	fd = openat(dirfd, PF_CTL_SOCK_NAME, O_CREAT | O_WRONLY | O_CLOEXEC,
		    0600);
	close(fd);
	check_int(pf_ctl_start(dirfd, dir, cmds, NULL, &c2, &why), ==, -EEXIST);
	check_msg(strstr(why.msg, "exists and is not a socket") != NULL, "%s",
		  why.msg);
	check_int(fstatat(dirfd, PF_CTL_SOCK_NAME, &st, AT_SYMLINK_NOFOLLOW), ==, 0);
	check(S_ISREG(st.st_mode));
	close(dirfd);
}

static void test_stale_socket(void)
{
	const char *argv[] = { "echo", "x" };
	struct pf_why why = { "" };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct pf_ctl *c;
	char dir[256];
	int dirfd, fd;

	/* what a daemon that died leaves: a socket nobody listens on */
	dirfd = new_dir(dir, sizeof(dir));
	snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s",
		 dirfd, PF_CTL_SOCK_NAME);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	check_int(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
	close(fd);
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, -ECONNREFUSED);

	c = start(dirfd, dir);
	check_int(call(dirfd, 2, argv, NULL, &why), ==, 0);
	pf_ctl_stop(c);
	close(dirfd);
}

/* The abstract socket of a read-only daemon: nothing in the directory,
 * found by pf_ctl_connect() (also past a dead daemon's socket file), one
 * daemon per name, and a listener of another user is not talked to. */
static void test_abstract_socket(void)
{
	const char *argv[] = { "echo", "ro" };
	struct pf_why why = { "" };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st0, st1;
	struct pf_ctl *c, *c2 = NULL;
	struct lines l = { 0 };
	char dir[256], b;
	int dirfd, fd, p[2];
	socklen_t len;
	pid_t pid;

	dirfd = new_dir(dir, sizeof(dir));
	check_int(fstat(dirfd, &st0), ==, 0);
	check_int(pf_ctl_start_abstract(dirfd, dir, cmds, NULL, &c, &why), ==,
		  0);
	check_int(fstatat(dirfd, PF_CTL_SOCK_NAME, &st1, AT_SYMLINK_NOFOLLOW),
		  ==, -1);
	check_int(call(dirfd, 2, argv, &l, &why), ==, 0);
	check_int(l.n, ==, 1);
	check_str(l.line[0], "ro");
	check_int(pf_ctl_start_abstract(dirfd, dir, cmds, NULL, &c2, &why), ==,
		  -EADDRINUSE);
	check_msg(strstr(why.msg, "a daemon already serves") != NULL, "%s",
		  why.msg);
	check_int(fstat(dirfd, &st1), ==, 0);
	check(st1.st_mtim.tv_sec == st0.st_mtim.tv_sec &&
	      st1.st_mtim.tv_nsec == st0.st_mtim.tv_nsec &&
	      st1.st_ctim.tv_nsec == st0.st_ctim.tv_nsec);

	/* a socket file a killed read-write daemon left is passed over */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s",
		 dirfd, PF_CTL_SOCK_NAME);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	check_int(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
	close(fd);
	check_int(call(dirfd, 2, argv, NULL, &why), ==, 0);
	pf_ctl_stop(c);
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, -ECONNREFUSED);
	check_int(unlinkat(dirfd, PF_CTL_SOCK_NAME, 0), ==, 0);
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, -ENOENT);

	/* somebody else's listener on the name: refused by the client */
	if (geteuid() != 0) {
		tap_diag("not root: the other user's listener is not tried");
		close(dirfd);
		return;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	check_int(fstat(dirfd, &st0), ==, 0);
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
			  (size_t)snprintf(sa.sun_path + 1,
					   sizeof(sa.sun_path) - 1,
					   PF_CTL_ABSTRACT_PFX "%jx:%jx",
					   (uintmax_t)st0.st_dev,
					   (uintmax_t)st0.st_ino));
	if (pipe(p))
		abort();
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (setresuid(65534, 65534, 65534) ||
		    bind(fd, (struct sockaddr *)&sa, len) || listen(fd, 4) ||
		    write(p[1], "x", 1) != 1)
			_exit(1);
		pause();	/* until the parent kills it */
		_exit(0);
	}
	close(p[1]);
	check_int(read(p[0], &b, 1), ==, 1);
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, -EACCES);
	close(p[0]);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(dirfd);
}

static void test_long_path(void)
{
	const char *argv[] = { "echo", "deep" };
	struct pf_why why = { "" };
	struct lines l = { 0 };
	char dir[512];
	struct pf_ctl *c;
	struct stat st;
	int dirfd, i;

	dirfd = new_dir(dir, sizeof(dir));
	close(dirfd);
	for (i = 0; i < 4; i++) {
		size_t n = strlen(dir);

		snprintf(dir + n, sizeof(dir) - n, "/%s",
			 "0123456789012345678901234567890123456789");
		check_int(mkdir(dir, 0700), ==, 0);
	}
	check_msg(strlen(dir) > sizeof(((struct sockaddr_un *)0)->sun_path),
		  "path of %zu bytes", strlen(dir));
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	c = start(dirfd, dir);
	check_int(fstatat(dirfd, PF_CTL_SOCK_NAME, &st, AT_SYMLINK_NOFOLLOW), ==, 0);
	check_int(call(dirfd, 2, argv, &l, &why), ==, 0);
	check_int(l.n, ==, 1);
	check_str(l.line[0], "deep");
	pf_ctl_stop(c);
	check_int(fstatat(dirfd, PF_CTL_SOCK_NAME, &st, AT_SYMLINK_NOFOLLOW), ==, -1);
	close(dirfd);
}

struct client {
	int dirfd;
	int ret_gate, ret_echo;
	struct lines l;
	char id[32];
};

static void *client_main(void *arg)
{
	struct client *cl = arg;
	const char *gate[] = { "gate" };
	const char *echo[] = { "echo", cl->id };
	struct pf_why why;
	int fd;

	cl->ret_gate = pf_ctl_connect(cl->dirfd, -1, &fd, NULL);
	if (cl->ret_gate)
		return NULL;
	cl->ret_gate = pf_ctl_call(fd, -1, 1, gate, NULL, NULL, &why);
	cl->ret_echo = pf_ctl_call(fd, -1, 2, echo, collect, &cl->l, &why);
	close(fd);
	return NULL;
}

/* 16 clients whose handlers all run at once (the gate proves it). */
static void test_concurrent(void)
{
	enum { N = 16 };
	struct client cl[N];
	pthread_t th[N];
	struct pf_ctl *c;
	char dir[256];
	int dirfd, i;

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	atomic_store(&gate_in, 0);
	gate_target = N;
	for (i = 0; i < N; i++) {
		memset(&cl[i], 0, sizeof(cl[i]));
		cl[i].dirfd = dirfd;
		snprintf(cl[i].id, sizeof(cl[i].id), "client %d", i);
		if (pthread_create(&th[i], NULL, client_main, &cl[i]))
			abort();
	}
	for (i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		check_int(cl[i].ret_gate, ==, 0);
		check_int(cl[i].ret_echo, ==, 0);
		check_int(cl[i].l.n, ==, 1);
		check_str(cl[i].l.line[0], cl[i].id);
	}
	check(wait_conns(c, 0));
	pf_ctl_stop(c);
	close(dirfd);
}

static void test_conn_limit(void)
{
	const char *argv[] = { "echo", "x" };
	struct pf_why why = { "" };
	int fds[PF_CTL_CONN_MAX], fd, dirfd, i;
	struct pf_ctl *c;
	char dir[256];

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	for (i = 0; i < PF_CTL_CONN_MAX; i++)
		check_int(pf_ctl_connect(dirfd, -1, &fds[i], NULL), ==, 0);
	check(wait_conns(c, PF_CTL_CONN_MAX));
	check_int(call(dirfd, 2, argv, NULL, &why), ==, -EBUSY);
	check_str(why.msg, "too many control connections");
	close(fds[0]);
	check(wait_conns(c, PF_CTL_CONN_MAX - 1));
	check_int(call(dirfd, 2, argv, NULL, &why), ==, 0);
	/* the open ones still work */
	check_int(pf_ctl_call(fds[1], -1, 2, argv, NULL, NULL, &why), ==, 0);
	check(wait_conns(c, PF_CTL_CONN_MAX - 1));
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
	check_int(pf_ctl_call(fd, -1, 2, argv, NULL, NULL, &why), ==, 0);
	close(fd);
	/* stop with every connection open and idle */
	stop_promptly(c);
	for (i = 1; i < PF_CTL_CONN_MAX; i++)
		close(fds[i]);
	close(dirfd);
}

/* The client stops reading a stream: the handler gets -EPIPE and ends,
 * the connection thread finishes, the server goes on. */
static void test_stream_ended_by_client(void)
{
	const char *count[] = { "count" };
	const char *echo[] = { "echo", "still here" };
	struct pf_why why = { "" };
	struct lines l = { 0 };
	struct pf_ctl *c;
	char dir[256];
	int dirfd, fd;

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	atomic_store(&count_ended, 0);

	/* after 1000 lines, ending the call with 0 */
	l.stop_after = 1000;
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
	check_int(pf_ctl_call(fd, -1, 1, count, collect, &l, &why), ==, 0);
	check_int(l.n, ==, 1000);
	check_str(l.line[15], "15");
	close(fd);
	check(wait_conns(c, 0));
	check_int(atomic_load(&count_ended), ==, 1);
	check_int(atomic_load(&count_last_ret), ==, -EPIPE);

	/* at once, with an error of the callback's own */
	memset(&l, 0, sizeof(l));
	l.stop_after = 1;
	l.stop_ret = -ECANCELED;
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
	check_int(pf_ctl_call(fd, -1, 1, count, collect, &l, &why), ==,
		  -ECANCELED);
	/* the connection is shut down: later calls fail, not hang */
	check_int(pf_ctl_call(fd, -1, 2, echo, NULL, NULL, &why), ==, -ESHUTDOWN);
	close(fd);
	check(wait_conns(c, 0));
	check_int(atomic_load(&count_ended), ==, 2);

	memset(&l, 0, sizeof(l));
	check_int(call(dirfd, 2, echo, &l, &why), ==, 0);
	check_str(l.line[0], "still here");
	pf_ctl_stop(c);
	close(dirfd);
}

struct streamer {
	int dirfd;
	const char *cmd;
	atomic_int lines;
	atomic_int hold;		/* on_data waits while nonzero */
	int ret;
	struct pf_why why;
};

static int stream_data(void *ctx, const char *line)
{
	struct streamer *s = ctx;
	uint64_t end = mono_ms() + WAIT_MS;

	(void)line;
	atomic_fetch_add(&s->lines, 1);
	while (atomic_load(&s->hold) && mono_ms() < end)
		sleep_ms(1);
	return 0;
}

static void *streamer_main(void *arg)
{
	struct streamer *s = arg;
	const char *argv[] = { s->cmd };
	int fd;

	s->ret = pf_ctl_connect(s->dirfd, -1, &fd, NULL);
	if (s->ret)
		return NULL;
	s->ret = pf_ctl_call(fd, -1, 1, argv, stream_data, s, &s->why);
	close(fd);
	return NULL;
}

static bool wait_lines(struct streamer *s, int n)
{
	uint64_t end = mono_ms() + WAIT_MS;

	while (atomic_load(&s->lines) < n) {
		if (mono_ms() > end)
			return false;
		sleep_ms(1);
	}
	return true;
}

/* pf_ctl_stop() with streams open: an idle event stream, a stream whose
 * client reads, and one whose client does not read at all and whose
 * handler does not look at pf_ctl_stopping(). */
static void test_stop_during_streams(void)
{
	struct streamer idle = { .cmd = "events" };
	struct streamer fast = { .cmd = "count" };
	struct streamer stuck = { .cmd = "flood" };
	pthread_t t_idle, t_fast, t_stuck;
	struct pf_ctl *c;
	char dir[256];
	int dirfd;

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	if (pf_events_new(16, &srv_events))
		abort();
	idle.dirfd = fast.dirfd = stuck.dirfd = dirfd;
	atomic_store(&stuck.hold, 1);
	atomic_store(&count_ended, 0);
	if (pthread_create(&t_idle, NULL, streamer_main, &idle) ||
	    pthread_create(&t_fast, NULL, streamer_main, &fast) ||
	    pthread_create(&t_stuck, NULL, streamer_main, &stuck))
		abort();
	pf_events_emit(srv_events, "test", "first");
	check(wait_lines(&idle, 1));
	check(wait_lines(&fast, 100));
	check(wait_lines(&stuck, 1));
	check_int(pf_ctl_connections(c), ==, 3);

	stop_promptly(c);
	/* the idle and the reading stream got their end line */
	pthread_join(t_idle, NULL);
	check_int(idle.ret, ==, 0);
	check_int(atomic_load(&idle.lines), ==, 1);
	pthread_join(t_fast, NULL);
	check_int(fast.ret, ==, 0);
	/* the stuck one fills its socket: sends fail after the grace time,
	 * and it could not be sent its end */
	check_int(atomic_load(&flood_ret), ==, -EPIPE);
	atomic_store(&stuck.hold, 0);
	pthread_join(t_stuck, NULL);
	check_int(stuck.ret, ==, -ECONNRESET);
	check_str(stuck.why.msg, "the daemon closed the connection before the end of its reply");
	check_int(atomic_load(&count_ended), ==, 1);
	pf_events_free(srv_events);
	srv_events = NULL;
	close(dirfd);
}

/* An event stream over the socket: lines parse back to the events. */
static void test_event_stream(void)
{
	const char *argv[] = { "events", "2" };
	struct pf_why why = { "" };
	struct lines l = { 0 };
	char dir[256], buf[512];
	struct pf_event e;
	struct pf_ctl *c;
	int dirfd, fd;

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	if (pf_events_new(4, &srv_events))
		abort();
	pf_events_emit(srv_events, "a", "one");
	pf_events_emit(srv_events, "b", "two words");
	/* seq 3..8: the ring keeps 5..8 */
	pf_events_emit(srv_events, "c", "x");
	pf_events_emit(srv_events, "c", "x");
	pf_events_emit(srv_events, "c", "x");
	pf_events_emit(srv_events, "c", "x");
	pf_events_emit(srv_events, "c", "x");
	pf_events_emit(srv_events, "d", "last");
	l.stop_after = 5;
	check_int(call(dirfd, 2, argv, &l, &why), ==, 0);
	check_int(pf_event_parse(l.line[0], &e), ==, 0);
	check_u64(e.seq, ==, 3);
	check_str(e.type, "lost");
	check_str(e.text, "seq 3 to 4 lost (2 events)");
	check_u64(pf_event_next_after(&e), ==, 4);
	check_int(pf_event_parse(l.line[1], &e), ==, 0);
	check_u64(e.seq, ==, 5);
	check_str(e.type, "c");
	check_int(pf_event_parse(l.line[4], &e), ==, 0);
	check_u64(e.seq, ==, 8);
	check_str(e.type, "d");
	check_str(e.text, "last");
	check(wait_conns(c, 0));

	/* a client that hangs up on an idle stream ends its handler */
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
	raw_send(fd, "ploopfs-ctl 1 events 8\n");
	pf_events_emit(srv_events, "e", "streamed");
	raw_line(fd, buf, sizeof(buf));
	check_msg(!strncmp(buf, "data 9 ", 7), "%s", vis(buf));
	check_int(pf_ctl_connections(c), ==, 1);
	close(fd);
	check(wait_conns(c, 0));

	pf_ctl_stop(c);
	pf_events_free(srv_events);
	srv_events = NULL;
	close(dirfd);
}

static void test_disconnect_mid_request(void)
{
	const char *echo[] = { "echo", "x" };
	struct pf_why why = { "" };
	uint64_t end;
	struct pf_ctl *c;
	char dir[256];
	int dirfd, fd;

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);

	/* half a request line */
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
	raw_send(fd, "ploopfs-ctl 1 ec");
	close(fd);
	check(wait_conns(c, 0));

	/* gone while its handler runs: the handler sees it, the answer
	 * fails quietly */
	atomic_store(&block_entered, 0);
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
	raw_send(fd, "ploopfs-ctl 1 block\n");
	end = mono_ms() + WAIT_MS;
	while (!atomic_load(&block_entered) && mono_ms() < end)
		sleep_ms(1);
	check_int(atomic_load(&block_entered), ==, 1);
	close(fd);
	check(wait_conns(c, 0));
	check_int(atomic_load(&block_entered), ==, 2);
	check_int(atomic_load(&block_cancelled), ==, 1);
	check_int(atomic_load(&block_data_ret), ==, -EPIPE);

	/* with requests queued behind it */
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
	raw_send(fd, "ploopfs-ctl 1 echo a\nploopfs-ctl 1 echo b\nploopfs-ctl 1 ec");
	close(fd);
	check(wait_conns(c, 0));

	check_int(call(dirfd, 2, echo, NULL, &why), ==, 0);
	pf_ctl_stop(c);
	close(dirfd);
}

/* Connect and make one call with an idle limit of @ms. */
static int call_ms(int dirfd, int ms, int argc, const char *const *argv,
		   struct lines *l, struct pf_why *why)
{
	int fd, ret = pf_ctl_connect(dirfd, ms, &fd, why);

	if (ret < 0)
		return ret;
	ret = pf_ctl_call(fd, ms, argc, argv, l ? collect : NULL, l, why);
	close(fd);
	return ret;
}

/*
 * The client's idle limit: a silent command times out, one that sends
 * keepalives may take longer than the limit, keepalives are on the wire
 * but not handed to on_data, and a daemon's own ETIMEDOUT is not taken
 * for the client's.
 */
static void test_client_timeouts(void)
{
	const char *slow[] = { "slow", "1500" };
	const char *sleep_[] = { "sleep", "1500" };
	const char *etimedout[] = { "etimedout" };
	struct pf_why why = { "" };
	struct lines l = { 0 };
	char dir[256], buf[256];
	struct pf_ctl *c;
	int dirfd, fd, keepalives = 0;
	uint64_t t0, ms;

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);

	t0 = mono_ms();
	check_int(call_ms(dirfd, 500, 2, slow, &l, &why), ==, 0);
	ms = mono_ms() - t0;
	check_msg(ms >= 1500, "slow took %" PRIu64 " ms", ms);
	check_int(l.n, ==, 1);
	check_str(l.line[0], "done");

	t0 = mono_ms();
	check_int(call_ms(dirfd, 400, 2, sleep_, NULL, &why), ==, -ETIMEDOUT);
	ms = mono_ms() - t0;
	check_msg(ms >= 400 && ms < 400 + 2000,
		  "timed out after %" PRIu64 " ms", ms);
	check_str(why.msg, "the daemon did not answer within 400 ms");

	/* the wire: keepalive lines while the handler runs, then its own */
	check_int(pf_ctl_connect(dirfd, -1, &fd, NULL), ==, 0);
	raw_send(fd, "ploopfs-ctl 1 slow 800\n");
	while (!strcmp(raw_line(fd, buf, sizeof(buf)), "data keepalive\n"))
		keepalives++;
	check_msg(keepalives >= 1, "%d keepalive lines in 800 ms", keepalives);
	check_vis(buf, "data done\n");
	check_vis(raw_line(fd, buf, sizeof(buf)), "end 0 \n");
	close(fd);

	check_int(call_ms(dirfd, 1000, 1, etimedout, NULL, &why), ==, -EIO);
	check_str(why.msg, "the handler's own wait timed out");

	check(wait_conns(c, 0));
	pf_ctl_stop(c);
	close(dirfd);
}

/*
 * A daemon that is stopped (SIGSTOP; a server in a child process): the
 * connection is queued by the kernel, the call times out, and once the
 * daemon resumes it does not run the request of the client that gave
 * up.  A full accept queue makes the connect time out.
 */
static void test_stopped_server(void)
{
	const char *mark[] = { "mark" }, *marks[] = { "marks" };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct pf_why why = { "" };
	struct lines l = { 0 };
	char dir[256], ready;
	int dirfd, fd, lfd, pipefd[2], st, i, raw[8], n_raw = 0;
	uint64_t t0, ms;
	pid_t pid;

	dirfd = new_dir(dir, sizeof(dir));
	if (pipe(pipefd) < 0)
		abort();
	pid = fork();
	if (pid < 0)
		abort();
	if (pid == 0) {
		struct pf_ctl *c = NULL;

		close(pipefd[0]);
		if (pf_ctl_start(dirfd, dir, cmds, NULL, &c, &why))
			_exit(1);
		if (write(pipefd[1], "r", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(pipefd[1]);
	check_int(read(pipefd[0], &ready, 1), ==, 1);
	close(pipefd[0]);

	check_int(kill(pid, SIGSTOP), ==, 0);
	check_int(waitpid(pid, &st, WUNTRACED), ==, pid);
	check(WIFSTOPPED(st));
	/* pf_ctl_connect() asks the daemon who it is: no answer */
	t0 = mono_ms();
	check_int(pf_ctl_connect(dirfd, 300, &fd, &why), ==, -ETIMEDOUT);
	ms = mono_ms() - t0;
	check_msg(ms >= 300 && ms < 300 + 2000,
		  "timed out after %" PRIu64 " ms", ms);
	check_str(why.msg, "the daemon did not answer within 300 ms");
	/* a request on a connection the kernel queued for it */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s",
		 dirfd, PF_CTL_SOCK_NAME);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	check_int(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
	t0 = mono_ms();
	check_int(pf_ctl_call(fd, 300, 1, mark, NULL, NULL, &why), ==,
		  -ETIMEDOUT);
	ms = mono_ms() - t0;
	check_msg(ms >= 300 && ms < 300 + 2000,
		  "timed out after %" PRIu64 " ms", ms);
	check_str(why.msg, "the daemon did not answer within 300 ms");
	close(fd);
	check_int(kill(pid, SIGCONT), ==, 0);
	check_int(call_ms(dirfd, 5000, 1, marks, &l, &why), ==, 0);
	check_int(l.n, ==, 1);
	/* the request left behind never ran */
	check_str(l.line[0], "0");
	memset(&l, 0, sizeof(l));
	check_int(call_ms(dirfd, 5000, 1, mark, &l, &why), ==, 0);
	check_str(l.line[0], "1");
	kill(pid, SIGKILL);
	check_int(waitpid(pid, &st, 0), ==, pid);
	close(dirfd);

	/* nobody accepts and the queue is full */
	dirfd = new_dir(dir, sizeof(dir));
	snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s",
		 dirfd, PF_CTL_SOCK_NAME);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	check_int(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
	check_int(listen(lfd, 0), ==, 0);
	for (i = 0; i < 8; i++) {
		raw[n_raw] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC |
					     SOCK_NONBLOCK, 0);
		if (connect(raw[n_raw], (struct sockaddr *)&sa, sizeof(sa))) {
			check_int(errno, ==, EAGAIN);
			close(raw[n_raw]);
			break;
		}
		n_raw++;
	}
	check_msg(i < 8, "the accept queue is full after %d connections",
		  n_raw);
	t0 = mono_ms();
	check_int(pf_ctl_connect(dirfd, 200, &fd, NULL), ==, -ETIMEDOUT);
	ms = mono_ms() - t0;
	check_msg(ms >= 200 && ms < 200 + 2000,
		  "timed out after %" PRIu64 " ms", ms);
	for (i = 0; i < n_raw; i++)
		close(raw[i]);
	close(lfd);
	close(dirfd);
}

/* A raw connection to the socket of @dirfd, without pf_ctl_connect(). */
static int raw_connect(int dirfd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s",
		 dirfd, PF_CTL_SOCK_NAME);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		tap_diag("raw connect failed: %s", strerror(errno));
		abort();
	}
	return fd;
}

/*
 * The client talks to its own image's daemon only: a symbolic link or a
 * file in place of the socket is refused, and so is a socket that leads
 * to the daemon of another directory (a hard link); "hello" names the
 * directory served.
 */
static void test_identity(void)
{
	const char *argv[] = { "echo", "x" };
	struct pf_why why = { "" };
	char dir_a[256], dir_b[256], path[600], buf[256], want[128];
	struct pf_ctl *c;
	struct stat st;
	int a, b, fd;

	a = new_dir(dir_a, sizeof(dir_a));
	b = new_dir(dir_b, sizeof(dir_b));
	c = start(a, dir_a);
	check_int(call(a, 2, argv, NULL, &why), ==, 0);

	fd = raw_connect(a);
	check_int(fstat(a, &st), ==, 0);
	snprintf(want, sizeof(want), "data image %ju %ju\n",
		 (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
	raw_send(fd, "ploopfs-ctl 1 hello\n");
	check_vis(raw_line(fd, buf, sizeof(buf)), want);
	check_vis(raw_line(fd, buf, sizeof(buf)), "end 0 \n");
	close(fd);

	snprintf(path, sizeof(path), "%s/%s", dir_a, PF_CTL_SOCK_NAME);
	check_int(symlinkat(path, b, PF_CTL_SOCK_NAME), ==, 0);
	why.msg[0] = '\0';
	check_int(pf_ctl_connect(b, -1, &fd, &why), ==, -ELOOP);
	check_str(why.msg, ".ploopfs.sock is a symbolic link, not the socket of this image's daemon (remove it)");
	check_int(call(b, 2, argv, NULL, &why), ==, -ELOOP);
	check_int(pf_ctl_wait_closed(b, WAIT_MS), ==, 0);
	check_int(unlinkat(b, PF_CTL_SOCK_NAME, 0), ==, 0);

	check_int(linkat(a, PF_CTL_SOCK_NAME, b, PF_CTL_SOCK_NAME, 0), ==, 0);
	why.msg[0] = '\0';
	check_int(pf_ctl_connect(b, -1, &fd, &why), ==, -EXDEV);
	check_msg(strstr(why.msg, "serves another image directory") != NULL,
		  "why: %s", why.msg);
	check_int(unlinkat(b, PF_CTL_SOCK_NAME, 0), ==, 0);

	fd = openat(b, PF_CTL_SOCK_NAME, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	check(fd >= 0);
	close(fd);
	why.msg[0] = '\0';
	check_int(pf_ctl_connect(b, -1, &fd, &why), ==, -ENOTSOCK);
	check_str(why.msg, ".ploopfs.sock is not a socket (remove it)");
	check_int(unlinkat(b, PF_CTL_SOCK_NAME, 0), ==, 0);

	/* the server still serves its own */
	check_int(call(a, 2, argv, NULL, &why), ==, 0);
	stop_promptly(c);
	close(a);
	close(b);
}

/* A server of another uid, neither root nor the directory's owner, is
 * not trusted with our requests (needs root to be another uid). */
static void test_server_uid(void)
{
	struct pf_why why = { "" };
	char dir[256], ready;
	int dirfd, fd, pipefd[2], st;
	pid_t pid;

	if (geteuid() != 0) {
		tap_diag("skip server uid test: not root");
		return;
	}
	dirfd = new_dir(dir, sizeof(dir));
	check_int(fchmod(dirfd, 0777), ==, 0);
	if (pipe(pipefd) < 0)
		abort();
	pid = fork();
	if (pid == 0) {
		struct pf_ctl *c = NULL;

		close(pipefd[0]);
		if (setgroups(0, NULL) || setgid(65534) || setuid(65534) ||
		    pf_ctl_start(dirfd, dir, cmds, NULL, &c, &why))
			_exit(1);
		if (write(pipefd[1], "r", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(pipefd[1]);
	check_int(read(pipefd[0], &ready, 1), ==, 1);
	close(pipefd[0]);
	why.msg[0] = '\0';
	check_int(pf_ctl_connect(dirfd, 2000, &fd, &why), ==, -EACCES);
	check_str(why.msg, ".ploopfs.sock is served by uid 65534, neither root nor the image directory's owner");
	kill(pid, SIGKILL);
	check_int(waitpid(pid, &st, 0), ==, pid);
	close(dirfd);
}

/* A connection that brings no whole request within the idle limit is
 * answered and closed, whether silent or trickling. */
static void test_idle_limit(void)
{
	const char *argv[] = { "echo", "x" };
	struct pf_why why = { "" };
	char dir[256], buf[256];
	struct pf_ctl *c;
	int dirfd, fd;

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	pf_ctl_set_idle(c, 200);

	fd = raw_connect(dirfd);
	check_vis(raw_line(fd, buf, sizeof(buf)),
		  "end 110 no complete request within 200 ms\n");
	check_vis(raw_line(fd, buf, sizeof(buf)), "");	/* closed */
	close(fd);

	fd = raw_connect(dirfd);
	raw_send(fd, "ploopfs-ctl 1 ec");
	check_vis(raw_line(fd, buf, sizeof(buf)),
		  "end 110 no complete request within 200 ms\n");
	close(fd);

	/* one that talks is served, several requests in a row */
	check_int(pf_ctl_connect(dirfd, -1, &fd, &why), ==, 0);
	check_int(pf_ctl_call(fd, -1, 2, argv, NULL, NULL, &why), ==, 0);
	check_int(pf_ctl_call(fd, -1, 2, argv, NULL, NULL, &why), ==, 0);
	close(fd);
	check(wait_conns(c, 0));
	stop_promptly(c);
	close(dirfd);
}

/* Followers of streams take at most PF_CTL_STREAM_MAX connections: one
 * more is refused, and commands are still served. */
static void test_stream_limit(void)
{
	const char *argv[] = { "echo", "x" };
	struct pf_why why = { "" };
	int fds[PF_CTL_STREAM_MAX], fd, dirfd, i;
	uint64_t end;
	struct pf_ctl *c;
	char dir[256], buf[256];

	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	for (i = 0; i < PF_CTL_STREAM_MAX; i++) {
		fds[i] = raw_connect(dirfd);
		raw_send(fds[i], "ploopfs-ctl 1 follow\n");
	}
	end = mono_ms() + WAIT_MS;
	while (atomic_load(&followers) < PF_CTL_STREAM_MAX && mono_ms() < end)
		sleep_ms(1);
	check_int(atomic_load(&followers), ==, PF_CTL_STREAM_MAX);
	fd = raw_connect(dirfd);
	raw_send(fd, "ploopfs-ctl 1 follow\n");
	snprintf(dir, sizeof(dir), "end 16 too many followers of a stream (%d)\n",
		 PF_CTL_STREAM_MAX);
	check_vis(raw_line(fd, buf, sizeof(buf)), dir);
	/* the refused connection stays usable for a command */
	raw_send(fd, "ploopfs-ctl 1 echo y\n");
	check_vis(raw_line(fd, buf, sizeof(buf)), "data y\n");
	check_vis(raw_line(fd, buf, sizeof(buf)), "end 0 \n");
	close(fd);
	for (i = 0; i < 4; i++)
		check_int(call(dirfd, 2, argv, NULL, &why), ==, 0);
	/* a follower that leaves makes room for another */
	close(fds[0]);
	end = mono_ms() + WAIT_MS;
	while (atomic_load(&followers) >= PF_CTL_STREAM_MAX && mono_ms() < end)
		sleep_ms(1);
	fds[0] = raw_connect(dirfd);
	raw_send(fds[0], "ploopfs-ctl 1 follow\n");
	end = mono_ms() + WAIT_MS;
	while (atomic_load(&followers) < PF_CTL_STREAM_MAX && mono_ms() < end)
		sleep_ms(1);
	check_int(atomic_load(&followers), ==, PF_CTL_STREAM_MAX);
	for (i = 0; i < PF_CTL_STREAM_MAX; i++)
		close(fds[i]);
	stop_promptly(c);
	close(dirfd);
}

/* A peer of another uid is refused (needs root to be another uid). */
static void test_peer_uid(void)
{
	struct pf_ctl *c;
	char dir[256];
	int dirfd, status;
	pid_t pid;

	if (geteuid() != 0) {
		tap_diag("skip peer uid test: not root");
		return;
	}
	dirfd = new_dir(dir, sizeof(dir));
	c = start(dirfd, dir);
	/* open the way for nobody, so that only SO_PEERCRED stops it */
	check_int(fchmod(dirfd, 0711), ==, 0);
	check_int(fchmodat(dirfd, PF_CTL_SOCK_NAME, 0666, 0), ==, 0);
	pid = fork();
	if (pid == 0) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		const char *want = "end 13 permission denied\n";
		char buf[128];
		int fd;

		strcpy(sa.sun_path, PF_CTL_SOCK_NAME);
		if (fchdir(dirfd) || setgroups(0, NULL) || setgid(65534) ||
		    setuid(65534))
			_exit(2);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
			_exit(3);
		(void)send(fd, "ploopfs-ctl 1 echo x\n", 21, MSG_NOSIGNAL);
		raw_line(fd, buf, sizeof(buf));
		if (strcmp(buf, want))
			_exit(4);
		raw_line(fd, buf, sizeof(buf));
		_exit(buf[0] ? 5 : 0);	/* then closed */
	}
	check_int(waitpid(pid, &status, 0), ==, pid);
	check_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "refused peer: status 0x%x", status);
	check(wait_conns(c, 0));
	pf_ctl_stop(c);
	close(dirfd);
}

/* Tests: events */

static void test_events_basic(void)
{
	struct pf_event_count cnt[4];
	struct pf_events *ev;
	struct pf_event e;
	uint64_t t0 = (uint64_t)time(NULL) * 1000;

	check_int(pf_events_new(0, &ev), ==, -EINVAL);
	check_int(pf_events_new(SIZE_MAX / 2, &ev), ==, -EINVAL);
	check_int(pf_events_new(8, &ev), ==, 0);
	check_u64(pf_events_last(ev), ==, 0);
	check_int(pf_events_wait(ev, 0, &e, 0, NULL, NULL), ==, 0);
	check_int(pf_events_wait(ev, 0, &e, 20, NULL, NULL), ==, 0);
	check_u64(pf_events_emit(ev, "snapshot", "made %s", "{guid}"), ==, 1);
	check_u64(pf_events_emit(ev, "enospc", "write at %d", 4096), ==, 2);
	check_u64(pf_events_emit(ev, "snapshot", "again"), ==, 3);
	check_u64(pf_events_last(ev), ==, 3);

	check_int(pf_events_wait(ev, 0, &e, 0, NULL, NULL), ==, 1);
	check_u64(e.seq, ==, 1);
	check_str(e.type, "snapshot");
	check_str(e.text, "made {guid}");
	check_u64(e.time_ms, >=, t0);
	check_u64(e.time_ms, <=, t0 + 60000);
	check_int(pf_events_wait(ev, 1, &e, -1, NULL, NULL), ==, 1);
	check_u64(e.seq, ==, 2);
	check_str(e.type, "enospc");
	check_str(e.text, "write at 4096");
	check_u64(pf_event_next_after(&e), ==, 2);
	check_int(pf_events_wait(ev, 2, &e, 0, NULL, NULL), ==, 1);
	check_u64(e.seq, ==, 3);
	check_int(pf_events_wait(ev, 3, &e, 10, NULL, NULL), ==, 0);
	/* a reader ahead (a previous daemon's numbers) waits */
	check_int(pf_events_wait(ev, 100, &e, 0, NULL, NULL), ==, 0);

	check_int(pf_events_counts(ev, cnt, 4), ==, 2);
	check_str(cnt[0].type, "snapshot");
	check_u64(cnt[0].count, ==, 2);
	check_str(cnt[1].type, "enospc");
	check_u64(cnt[1].count, ==, 1);
	memset(cnt, 0, sizeof(cnt));
	check_int(pf_events_counts(ev, cnt, 1), ==, 2);
	check_str(cnt[1].type, "");
	pf_events_free(ev);
	pf_events_free(NULL);
}

static void test_events_sanitize(void)
{
	struct pf_event_count cnt[PF_EVENT_TYPES_MAX];
	char text[600], type[64];
	struct pf_events *ev;
	struct pf_event e;
	size_t n;
	int i;

	check_int(pf_events_new(2, &ev), ==, 0);
	pf_events_emit(ev, "two words\n", "line\none\ttab\x7f");
	check_int(pf_events_wait(ev, 0, &e, 0, NULL, NULL), ==, 1);
	check_str(e.type, "two_words_");
	check_vis(e.text, "line one tab ");
	pf_events_emit(ev, "", "%s", "");
	check_int(pf_events_wait(ev, 1, &e, 0, NULL, NULL), ==, 1);
	check_str(e.type, "unknown");
	check_str(e.text, "");
	pf_events_emit(ev, NULL, "x");
	check_int(pf_events_wait(ev, 2, &e, 0, NULL, NULL), ==, 1);
	check_str(e.type, "unknown");

	/* too long: cut with "...", never inside a UTF-8 character */
	memset(type, 't', sizeof(type) - 1);
	type[sizeof(type) - 1] = '\0';
	text[0] = 'a';	/* so that the cut falls inside an é */
	for (i = 1; i + 2 < (int)sizeof(text); i += 2)
		memcpy(text + i, "\xc3\xa9", 2);
	text[i] = '\0';
	check_u64(pf_events_emit(ev, type, "%s", text), ==, 4);
	check_int(pf_events_wait(ev, 3, &e, 0, NULL, NULL), ==, 1);
	check_int(strlen(e.type), ==, PF_EVENT_TYPE_MAX - 1);
	n = strlen(e.text);
	check_int(n, ==, PF_EVENT_TEXT_MAX - 2);	/* a, 125 é, "..." */
	check_str(e.text + n - 3, "...");
	check_int(memcmp(e.text, text, n - 3), ==, 0);
	pf_events_free(ev);

	/* more types than the table: the rest count as "other" */
	check_int(pf_events_new(1, &ev), ==, 0);
	for (i = 0; i < PF_EVENT_TYPES_MAX + 10; i++) {
		snprintf(type, sizeof(type), "t%d", i);
		pf_events_emit(ev, type, "x");
		pf_events_emit(ev, type, "y");
	}
	check_int(pf_events_counts(ev, cnt, PF_EVENT_TYPES_MAX), ==,
		  PF_EVENT_TYPES_MAX);
	check_str(cnt[0].type, "t0");
	check_u64(cnt[0].count, ==, 2);
	check_str(cnt[PF_EVENT_TYPES_MAX - 2].type, "t62");
	check_str(cnt[PF_EVENT_TYPES_MAX - 1].type, "other");
	check_u64(cnt[PF_EVENT_TYPES_MAX - 1].count, ==, 2 * 11);
	check_u64(pf_events_last(ev), ==, 2 * (PF_EVENT_TYPES_MAX + 10));
	pf_events_free(ev);
}

static void test_events_overflow(void)
{
	struct pf_events *ev;
	struct pf_event e;
	int i;

	check_int(pf_events_new(4, &ev), ==, 0);
	for (i = 1; i <= 10; i++)
		check_u64(pf_events_emit(ev, "n", "%d", i), ==, i);
	/* the ring holds 7..10 */
	check_int(pf_events_wait(ev, 0, &e, 0, NULL, NULL), ==, 1);
	check_u64(e.seq, ==, 1);
	check_str(e.type, PF_EVENT_LOST);
	check_str(e.text, "seq 1 to 6 lost (6 events)");
	check_u64(pf_event_next_after(&e), ==, 6);
	check_int(pf_events_wait(ev, 5, &e, 0, NULL, NULL), ==, 1);
	check_str(e.text, "seq 6 to 6 lost (1 event)");
	check_u64(e.seq, ==, 6);
	check_u64(pf_event_next_after(&e), ==, 6);
	check_int(pf_events_wait(ev, 6, &e, 0, NULL, NULL), ==, 1);
	check_u64(e.seq, ==, 7);
	check_str(e.type, "n");
	check_str(e.text, "7");
	check_int(pf_events_wait(ev, 9, &e, 0, NULL, NULL), ==, 1);
	check_str(e.text, "10");
	/* a producer's "lost" is an ordinary event */
	pf_events_emit(ev, PF_EVENT_LOST, "not a range");
	check_int(pf_events_wait(ev, 10, &e, 0, NULL, NULL), ==, 1);
	check_u64(pf_event_next_after(&e), ==, 11);
	pf_events_free(ev);
}

#define PRODUCERS	4
#define PER_PRODUCER	10000
#define TOTAL		(PRODUCERS * PER_PRODUCER)

struct producer {
	struct pf_events *ev;
	int id;
	pthread_barrier_t *go;
};

static void *producer_main(void *arg)
{
	struct producer *p = arg;
	char type[8];
	int k;

	snprintf(type, sizeof(type), "p%d", p->id);
	pthread_barrier_wait(p->go);
	for (k = 0; k < PER_PRODUCER; k++)
		pf_events_emit(p->ev, type, "%d", k);
	return NULL;
}

struct consumer {
	struct pf_events *ev;
	uint8_t *seen;			/* [TOTAL + 1] */
	uint64_t real, lost, lost_events, errors, timeouts;
	int next_k[PRODUCERS];
	pthread_barrier_t *go;
};

static void *consumer_main(void *arg)
{
	struct consumer *c = arg;
	uint64_t after = 0, s, to;
	struct pf_event e;

	pthread_barrier_wait(c->go);
	while (after < TOTAL) {
		if (pf_events_wait(c->ev, after, &e, WAIT_MS, NULL, NULL) != 1) {
			c->timeouts++;
			break;
		}
		if (e.seq != after + 1)
			c->errors++;
		to = pf_event_next_after(&e);
		if (!strcmp(e.type, PF_EVENT_LOST)) {
			c->lost++;
			c->lost_events += to - e.seq + 1;
		} else {
			int id = e.type[1] - '0';
			int k = (int)strtol(e.text, NULL, 10);

			c->real++;
			/* one producer's events come in its order */
			if (e.type[0] != 'p' || id < 0 || id >= PRODUCERS ||
			    k < c->next_k[id])
				c->errors++;
			else
				c->next_k[id] = k + 1;
		}
		for (s = e.seq; s <= to && s <= TOTAL; s++)
			c->seen[s]++;
		after = to;
	}
	return NULL;
}

/* Producers race a consumer; every seq 1..TOTAL is accounted for exactly
 * once, as a real event or inside a "lost" range. */
static void events_race(size_t capacity)
{
	struct producer p[PRODUCERS];
	struct consumer c = { 0 };
	struct pf_event_count cnt[PRODUCERS + 1];
	pthread_t pt[PRODUCERS], ct;
	pthread_barrier_t go;
	uint64_t once = 0, s;
	int i;

	check_int(pf_events_new(capacity, &c.ev), ==, 0);
	c.seen = calloc(TOTAL + 1, 1);
	c.go = &go;
	pthread_barrier_init(&go, NULL, PRODUCERS + 1);
	if (pthread_create(&ct, NULL, consumer_main, &c))
		abort();
	for (i = 0; i < PRODUCERS; i++) {
		p[i] = (struct producer){ c.ev, i, &go };
		if (pthread_create(&pt[i], NULL, producer_main, &p[i]))
			abort();
	}
	for (i = 0; i < PRODUCERS; i++)
		pthread_join(pt[i], NULL);
	pthread_join(ct, NULL);
	pthread_barrier_destroy(&go);

	for (s = 1; s <= TOTAL; s++)
		once += c.seen[s] == 1;
	check_u64(once, ==, TOTAL);
	check_u64(c.errors, ==, 0);
	check_u64(c.timeouts, ==, 0);
	check_u64(c.real + c.lost_events, ==, TOTAL);
	check_u64(pf_events_last(c.ev), ==, TOTAL);
	tap_diag("ring of %zu: %" PRIu64 " events read, %" PRIu64 " lost in %" PRIu64 " gaps",
		 capacity, c.real, c.lost_events, c.lost);
	if (capacity >= TOTAL)
		check_u64(c.lost, ==, 0);
	check_int(pf_events_counts(c.ev, cnt, PRODUCERS + 1), ==, PRODUCERS);
	for (i = 0; i < PRODUCERS; i++)
		check_u64(cnt[i].count, ==, PER_PRODUCER);
	free(c.seen);
	pf_events_free(c.ev);
}

static void test_events_race(void)
{
	events_race(64);
	events_race(TOTAL);
}

static atomic_int stop_calls;
static atomic_bool stop_flag;

static bool stop_after_3(void *ctx)
{
	(void)ctx;
	return atomic_fetch_add(&stop_calls, 1) + 1 >= 3;
}

static bool stop_on_flag(void *ctx)
{
	(void)ctx;
	return atomic_load(&stop_flag);
}

struct waiter {
	struct pf_events *ev;
	uint64_t after;
	int ret;
	struct pf_event e;
};

static void *waiter_main(void *arg)
{
	struct waiter *w = arg;

	w->ret = pf_events_wait(w->ev, w->after, &w->e, -1, stop_on_flag,
				NULL);
	return NULL;
}

static void test_events_wait(void)
{
	struct waiter w = { 0 };
	struct pf_events *ev;
	struct pf_event e;
	pthread_t th;

	check_int(pf_events_new(4, &ev), ==, 0);
	/* the predicate ends a wait without limit */
	atomic_store(&stop_calls, 0);
	check_int(pf_events_wait(ev, 0, &e, -1, stop_after_3, NULL), ==, 0);
	check_int(atomic_load(&stop_calls), ==, 3);
	/* an event available wins over the predicate */
	pf_events_emit(ev, "x", "y");
	check_int(pf_events_wait(ev, 0, &e, -1, stop_after_3, NULL), ==, 1);

	/* a waiter is woken by an event ... */
	atomic_store(&stop_flag, false);
	w.ev = ev;
	w.after = 1;
	if (pthread_create(&th, NULL, waiter_main, &w))
		abort();
	pf_events_emit(ev, "wake", "up");
	pthread_join(th, NULL);
	check_int(w.ret, ==, 1);
	check_u64(w.e.seq, ==, 2);
	check_str(w.e.type, "wake");

	/* ... and by its predicate, set from another thread */
	w.after = 2;
	if (pthread_create(&th, NULL, waiter_main, &w))
		abort();
	atomic_store(&stop_flag, true);
	pthread_join(th, NULL);
	check_int(w.ret, ==, 0);
	pf_events_free(ev);
}

static void test_event_wire(void)
{
	struct pf_event e = { .seq = 42, .time_ms = 1700000000123ull,
			      .type = "snapshot", .text = "made {x} in 3 ms" };
	struct pf_event p;
	char line[PF_EVENT_LINE_MAX];
	size_t i;

	check_int(pf_event_format(&e, line, sizeof(line)), ==, 0);
	check_str(line, "42 1700000000123 snapshot made {x} in 3 ms");
	check_int(pf_event_parse(line, &p), ==, 0);
	check_u64(p.seq, ==, 42);
	check_u64(p.time_ms, ==, 1700000000123ull);
	check_str(p.type, "snapshot");
	check_str(p.text, "made {x} in 3 ms");
	check_int(pf_event_format(&e, line, 10), ==, -ENOSPC);

	/* the longest event fits PF_EVENT_LINE_MAX */
	e.seq = UINT64_MAX;
	e.time_ms = UINT64_MAX;
	memset(e.type, 't', sizeof(e.type) - 1);
	memset(e.text, 'x', sizeof(e.text) - 1);
	check_int(pf_event_format(&e, line, sizeof(line)), ==, 0);
	check_int(pf_event_parse(line, &p), ==, 0);
	check_int(memcmp(&e, &p, sizeof(e)), ==, 0);

	/* empty text, with and without the trailing space */
	check_int(pf_event_parse("5 6 t", &p), ==, 0);
	check_str(p.text, "");
	check_int(pf_event_parse("5 6 t ", &p), ==, 0);
	check_str(p.type, "t");
	check_str(p.text, "");

	{
		static const char *const bad[] = {
			"", "0 1 t x", "1", "1 2", "1 2 ", "x 2 t", "1 x t",
			"-1 2 t", "1  2 t", "18446744073709551616 2 t",
			"1 18446744073709551616 t",
			"1 2 tttttttttttttttttttttttttttttttt x",
			"1 2 t a\tb", "1 2 t a\nb", "1 2 t\x7f",
		};

		for (i = 0; i < PF_ARRAY_SIZE(bad); i++)
			check_msg(pf_event_parse(bad[i], &p) == -EINVAL,
				  "parse refuses \"%s\"", vis(bad[i]));
	}
	/* a text one byte too long */
	{
		char big[PF_EVENT_TEXT_MAX + 16];

		memset(big, 'x', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		memcpy(big, "1 2 t ", 6);
		big[6 + PF_EVENT_TEXT_MAX - 1] = '\0';
		check_int(pf_event_parse(big, &p), ==, 0);
		big[6 + PF_EVENT_TEXT_MAX - 1] = 'x';
		big[6 + PF_EVENT_TEXT_MAX] = '\0';
		check_int(pf_event_parse(big, &p), ==, -EINVAL);
	}
}

static void rm_tree(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_root);
	if (system(cmd))
		tap_diag("cannot remove %s", tmp_root);
}

int main(void)
{
	if (!mkdtemp(tmp_root))
		abort();
	test_echo();
	test_errors();
	test_drain();
	test_bad_requests();
	test_bad_replies();
	test_socket_file();
	test_stale_socket();
	test_abstract_socket();
	test_long_path();
	test_concurrent();
	test_conn_limit();
	test_stream_ended_by_client();
	test_stop_during_streams();
	test_event_stream();
	test_disconnect_mid_request();
	test_client_timeouts();
	test_stopped_server();
	test_peer_uid();
	test_identity();
	test_server_uid();
	test_idle_limit();
	test_stream_limit();
	test_events_basic();
	test_events_sanitize();
	test_events_overflow();
	test_events_race();
	test_events_wait();
	test_event_wire();
	rm_tree();
	return tap_done();
}
