// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Fuzz target of the client's control reply parser: the reading loop of
 * pf_ctl_call() (control.c) with its line framing, data and keepalive
 * lines and the end line, through the public call over a socketpair.
 *
 * The input's first byte says when the data callback stops the call
 * (bits 0-2: after that many data lines, 0 never; bit 3: stop with
 * -ECANCELED rather than 1); the rest is the daemon's reply, followed by
 * the end of the connection.  Properties: the call returns 0 or an
 * -errno no larger than 4095 and never waits for more; every data line
 * handed over is shorter than PF_CTL_LINE_MAX and holds no '\n', and
 * none after the callback stopped the call, which then returns the
 * callback's -errno or 0; a failure has a reason; and the request it
 * sent parses on the daemon's side (pf_ctl_parse_request) to the
 * arguments given.
 */
#include "fuzz.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "control.h"

#define REPLY_MAX	(32 * 1024)	/* fits an empty socket's buffer */

struct sink {
	unsigned lines;
	unsigned stop_after;
	int stop_with;
	bool stopped;		/* on_data returned stop_with */
};

static int on_data(void *ctx, const char *line)
{
	struct sink *k = ctx;

	fuzz_assert(strlen(line) < PF_CTL_LINE_MAX && !strchr(line, '\n'));
	fuzz_assert(!k->stopped);	/* no line after a stop */
	k->lines++;
	k->stopped = k->lines == k->stop_after;
	return k->stopped ? k->stop_with : 0;
}

/* The request the client sent must be what it was asked to send. */
static void check_request(int fd, int argc, const char *const *argv)
{
	char buf[PF_CTL_LINE_MAX + 1], **fields = NULL, *nl;
	struct pf_why why;
	ssize_t got;
	size_t n = 0;
	int i;

	got = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
	fuzz_assert(got > 0);
	buf[got] = '\0';
	nl = strchr(buf, '\n');
	fuzz_assert(nl && nl[1] == '\0');
	*nl = '\0';
	fuzz_assert(pf_ctl_parse_request(buf, &fields, &n, &why) == 0);
	fuzz_assert(n == (size_t)argc + 2);
	for (i = 0; i < argc; i++)
		fuzz_assert(!strcmp(fields[i + 2], argv[i]));
	free(fields);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const argv[] = { "snapshot", "a b%c\t", "\xc3\xa9" };
	struct sink k = { 0, 0, 0, false };
	struct pf_why why;
	int sv[2], ret;

	if (size < 1 || size > REPLY_MAX)
		return 0;
	k.stop_after = data[0] & 7;
	k.stop_with = data[0] & 8 ? -ECANCELED : 1;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return 0;
	if (size > 1 && send(sv[1], data + 1, size - 1, MSG_NOSIGNAL) !=
				(ssize_t)(size - 1))
		goto out;
	shutdown(sv[1], SHUT_WR);

	memset(&why, 0, sizeof(why));
	ret = pf_ctl_call(sv[0], -1, 3, argv, on_data, &k, &why);
	fuzz_assert(ret <= 0 && ret >= -4095);
	fuzz_assert(ret != -ETIMEDOUT);
	/* a daemon may send "end 125" too: only k.stopped says who stopped */
	if (k.stopped)
		fuzz_assert(ret == (k.stop_with < 0 ? k.stop_with : 0));
	else if (ret)
		fuzz_assert(why.msg[0] != '\0');
	check_request(sv[1], 3, argv);
out:
	close(sv[0]);
	close(sv[1]);
	return 0;
}
