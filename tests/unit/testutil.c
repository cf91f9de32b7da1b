// SPDX-License-Identifier: GPL-2.0-or-later
/* Image set-up shared by the unit tests (see testutil.h). */
#include "testutil.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "delta.h"
#include "descriptor.h"
#include "format.h"
#include "image.h"

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
	struct pf_why why = { "" };
	struct pf_delta *top = NULL;
	struct pf_dd *dd = NULL;
	char guid[PF_GUID_LEN + 1], *name = NULL;
	size_t *chain = NULL, n;
	int fd = open(dir, O_RDONLY | O_DIRECTORY);

	pf_guid_new(guid);
	if (fd < 0 || pf_dd_load(fd, &dd, &why) ||
	    pf_dd_chain(dd, &chain, &n, &why) ||
	    pf_delta_open(fd, dd->images[chain[n - 1]].file, 0, &top, &why) ||
	    pf_image_snapshot(fd, dd, &top->hdr, dd->images[chain[0]].file,
			      guid, &name, &why)) {
		fprintf(stderr, "cannot snapshot %s: %s\n", dir, why.msg);
		abort();
	}
	free(name);
	free(chain);
	pf_delta_close(top);
	pf_dd_free(dd);
	close(fd);
}
