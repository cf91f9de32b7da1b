// SPDX-License-Identifier: GPL-2.0-or-later
/* A directory fsync that fails on request (see wrap_fsync.h). */
#include "wrap_fsync.h"

#include <errno.h>
#include <sys/stat.h>

int wrap_fsync_dir_fail;
int wrap_fsync_dir_failed;

int __real_fsync(int fd);
int __wrap_fsync(int fd);

int __wrap_fsync(int fd)
{
	struct stat st;

	if (wrap_fsync_dir_fail > 0 && fstat(fd, &st) == 0 &&
	    S_ISDIR(st.st_mode) && --wrap_fsync_dir_fail == 0) {
		wrap_fsync_dir_failed++;
		errno = EIO;
		return -1;
	}
	return __real_fsync(fd);
}
