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
