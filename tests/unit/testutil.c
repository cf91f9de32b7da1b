// SPDX-License-Identifier: GPL-2.0-or-later
/* Image set-up shared by the unit tests (see testutil.h). */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "delta.h"
#include "descriptor.h"
#include "format.h"
#include "image.h"
#include "tap.h"
#include "util.h"

void tu_make_image(const char *dir, uint64_t size, uint32_t cluster)
{
	struct pf_why why = { "" };
	struct pf_header h;
	int fd;

	mkdir(dir, 0700);
	fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd < 0 || pf_header_init(&h, size, cluster, &why) ||
	    pf_image_create(fd, &h, &why)) {
		fprintf(stderr, "cannot create an image in %s: %s\n", dir,
			why.msg);
		abort();
	}
	close(fd);
}

void tu_snapshot(const char *dir)
{
	char guid[PF_GUID_LEN + 1];

	tu_snapshot_guid(dir, guid);
}

void tu_snapshot_guid(const char *dir, char *guid)
{
	struct pf_snap_prep prep = { "", NULL };
	struct pf_why why = { "" };
	struct pf_delta *top = NULL;
	struct pf_dd *dd = NULL;
	size_t *chain = NULL, n;
	int fd = open(dir, O_RDONLY | O_DIRECTORY);

	if (fd < 0 || pf_dd_load(fd, &dd, &why) ||
	    pf_dd_chain(dd, &chain, &n, &why) ||
	    pf_delta_open(fd, dd->images[chain[n - 1]].file, 0, NULL, &top, &why) ||
	    pf_image_snapshot(fd, dd, &top->hdr, NULL, &prep, &why)) {
		fprintf(stderr, "cannot snapshot %s: %s\n", dir, why.msg);
		abort();
	}
	memcpy(guid, prep.guid, PF_GUID_LEN + 1);
	free(prep.file);
	free(chain);
	pf_delta_close(top);
	pf_dd_free(dd);
	close(fd);
}

static void copy_file(int from_dir, int to_dir, const char *name)
{
	const size_t bufsz = 1 << 20;
	uint8_t *buf = malloc(bufsz);
	int in = openat(from_dir, name, O_RDONLY | O_NOFOLLOW);
	int out = openat(to_dir, name, O_WRONLY | O_CREAT | O_EXCL, 0600);
	struct stat st;
	off_t data, hole;

	if (!buf || in < 0 || out < 0 || fstat(in, &st) < 0)
		goto fail;
	/* the data extents only: preallocated tails and punched clusters
	 * stay holes, as on the original */
	for (data = 0;; data = hole) {
		data = lseek(in, data, SEEK_DATA);
		if (data < 0 && errno == ENXIO)
			break;
		hole = lseek(in, data, SEEK_HOLE);
		if (data < 0 || hole < 0)
			goto fail;
		while (data < hole) {
			size_t n = hole - data > (off_t)bufsz ?
					   bufsz : (size_t)(hole - data);

			if (pf_pread_full(in, buf, n, (uint64_t)data) ||
			    pf_pwrite_full(out, buf, n, (uint64_t)data))
				goto fail;
			data += (off_t)n;
		}
	}
	if (ftruncate(out, st.st_size) < 0)
		goto fail;
	free(buf);
	close(in);
	close(out);
	return;
fail:
	fprintf(stderr, "cannot copy %s: %s\n", name, strerror(errno));
	abort();
}

void tu_copy_dir(const char *from, const char *to)
{
	int fd_from, fd_to;
	struct dirent *e;
	DIR *d;

	if (mkdir(to, 0700) < 0) {
		fprintf(stderr, "cannot create %s: %s\n", to, strerror(errno));
		abort();
	}
	fd_from = open(from, O_RDONLY | O_DIRECTORY);
	fd_to = open(to, O_RDONLY | O_DIRECTORY);
	d = fd_from < 0 ? NULL : fdopendir(dup(fd_from));
	if (fd_to < 0 || !d) {
		fprintf(stderr, "cannot copy %s: %s\n", from, strerror(errno));
		abort();
	}
	while ((e = readdir(d))) {
		struct stat st;

		if (e->d_type == DT_REG ||
		    (e->d_type == DT_UNKNOWN &&
		     !fstatat(fd_from, e->d_name, &st, AT_SYMLINK_NOFOLLOW) &&
		     S_ISREG(st.st_mode)))
			copy_file(fd_from, fd_to, e->d_name);
	}
	closedir(d);
	close(fd_from);
	close(fd_to);
}

void tu_remove_dir(const char *dir)
{
	struct dirent *e;
	DIR *d = opendir(dir);

	if (!d)
		return;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			(void)unlinkat(dirfd(d), e->d_name, 0);
	closedir(d);
	(void)rmdir(dir);
}

uint8_t tu_pat(unsigned seed, uint64_t off)
{
	uint64_t x = (off + 1) * 0x9E3779B97F4A7C15ull ^
		     (seed * 0xBF58476D1CE4E5B9ull);

	x ^= x >> 29;
	return (uint8_t)(x ^ (x >> 17));
}

void tu_fill(uint8_t *buf, size_t len, unsigned seed, uint64_t off)
{
	size_t i;

	for (i = 0; i < len; i++)
		buf[i] = tu_pat(seed, off + i);
}

char *tu_new_image(const char *root, uint64_t size, uint32_t cluster)
{
	static int n;	/* the tests that use it are single-threaded here */
	char *dir;

	if (asprintf(&dir, "%s/img%d", root, n++) < 0)
		abort();
	tu_make_image(dir, size, cluster);
	return dir;
}

struct pf_stack *tu_open_stack(const struct pf_stack_opts *o, bool start,
			       int *err)
{
	struct pf_why why = { "" };
	struct pf_stack *s = NULL;
	int ret = pf_stack_open(o, &s, &why);

	if (err)
		*err = ret;
	if (ret) {
		tap_diag("open %s: %d %s", o->dir, ret, why.msg);
		return NULL;
	}
	if (start && pf_stack_start(s)) {
		tap_diag("start %s failed", o->dir);
		abort();
	}
	return s;
}

static void burst_done(void *arg, int err)
{
	struct tu_burst *b = arg;

	pthread_mutex_lock(&b->lock);
	if (err && !b->err)
		b->err = err;
	if (!--b->left)
		pthread_cond_signal(&b->cv);
	pthread_mutex_unlock(&b->lock);
}

void tu_burst_submit(struct tu_burst *b, struct pf_stack *s, unsigned n,
		     uint8_t *const *bufs, const size_t *lens,
		     const uint64_t *offs)
{
	unsigned i;

	pthread_mutex_init(&b->lock, NULL);
	pthread_cond_init(&b->cv, NULL);
	b->left = n;
	b->err = 0;
	pf_stack_batch(s, true);
	for (i = 0; i < n; i++)
		pf_stack_write(s, bufs[i], lens[i], offs[i], burst_done, b);
	pf_stack_batch(s, false);
}

int tu_burst_wait(struct tu_burst *b)
{
	pthread_mutex_lock(&b->lock);
	while (b->left)
		pthread_cond_wait(&b->cv, &b->lock);
	pthread_mutex_unlock(&b->lock);
	pthread_mutex_destroy(&b->lock);
	pthread_cond_destroy(&b->cv);
	return b->err;
}
