// SPDX-License-Identifier: GPL-2.0-or-later
/* The mount table (see mounts.h). */
#include "mounts.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Undo the kernel's octal escapes (\040 for a space, \134 for '\'). */
static char *unescape(const char *s, size_t len)
{
	char *out = malloc(len + 1), *o = out;
	size_t i;

	if (!out)
		return NULL;
	for (i = 0; i < len; i++) {
		if (s[i] == '\\' && i + 3 < len && s[i + 1] >= '0' &&
		    s[i + 1] <= '3' && s[i + 2] >= '0' && s[i + 2] <= '7' &&
		    s[i + 3] >= '0' && s[i + 3] <= '7') {
			*o++ = (char)((s[i + 1] - '0') << 6 |
				      (s[i + 2] - '0') << 3 | (s[i + 3] - '0'));
			i += 3;
		} else {
			*o++ = s[i];
		}
	}
	*o = '\0';
	return out;
}

/* Field @k (0-based, space separated) of @line: start and length. */
static bool field(const char *line, unsigned k, const char **f, size_t *len)
{
	const char *p = line;

	while (k--) {
		p = strchr(p, ' ');
		if (!p)
			return false;
		p++;
	}
	*f = p;
	*len = strcspn(p, " \n");
	return true;
}

/*
 * "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
 *  id parent maj:min root point options [optional...] - type source sopts
 */
int pf_mounts_parse_line(const char *line, struct pf_mount_ent *e)
{
	const char *f, *sep;
	size_t len;

	char *end;

	memset(e, 0, sizeof(*e));
	if (!field(line, 2, &f, &len))
		return -EINVAL;
	e->major = (unsigned)strtoul(f, &end, 10);
	if (end == f || *end != ':')
		return -EINVAL;
	f = end + 1;
	e->minor = (unsigned)strtoul(f, &end, 10);
	if (end == f || *end != ' ' || !field(line, 4, &f, &len))
		return -EINVAL;
	e->dir = unescape(f, len);
	sep = strstr(line, " - ");
	if (!e->dir || !sep || !field(sep + 3, 0, &f, &len))
		return -EINVAL;
	e->fstype = unescape(f, len);
	if (!e->fstype || !field(sep + 3, 1, &f, &len))
		return -EINVAL;
	e->source = unescape(f, len);
	if (!e->source)
		return -ENOMEM;
	/* the file system's own options, first "ro" or "rw": a read-only
	 * bind of a read-write mount does not count */
	if (field(sep + 3, 2, &f, &len))
		e->read_only = len >= 2 && !strncmp(f, "ro", 2) &&
			       (len == 2 || f[2] == ',');
	return 0;
}

void pf_mount_ent_clear(struct pf_mount_ent *e)
{
	free(e->dir);
	free(e->fstype);
	free(e->source);
	e->dir = e->fstype = e->source = NULL;
}

int pf_mounts_read(struct pf_mount_ent **out, size_t *n)
{
	struct pf_mount_ent *v = NULL, *p;
	size_t cap = 0, len = 0;
	char *line = NULL;
	FILE *f;
	int ret = 0;

	*out = NULL;
	*n = 0;
	f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		p = realloc(v, (len + 1) * sizeof(*v));
		if (!p) {
			ret = -ENOMEM;
			break;
		}
		v = p;
		if (pf_mounts_parse_line(line, &v[len])) {
			pf_mount_ent_clear(&v[len]);	/* a line we cannot read */
			continue;
		}
		len++;
	}
	free(line);
	fclose(f);
	if (ret) {
		pf_mounts_free(v, len);
		return ret;
	}
	*out = v;
	*n = len;
	return 0;
}

void pf_mounts_free(struct pf_mount_ent *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		pf_mount_ent_clear(&v[i]);
	free(v);
}

const struct pf_mount_ent *pf_mounts_find(const struct pf_mount_ent *v,
					  size_t n, const char *dir,
					  bool by_source)
{
	const size_t pfx = strlen(PF_MOUNT_SOURCE_PFX);
	size_t i = n;

	while (i--) {
		const struct pf_mount_ent *e = &v[i];

		if (strcmp(e->fstype, PF_MOUNT_FSTYPE))
			continue;
		if (by_source ? !strncmp(e->source, PF_MOUNT_SOURCE_PFX, pfx) &&
					!strcmp(e->source + pfx, dir) :
				!strcmp(e->dir, dir))
			return e;
	}
	return NULL;
}

size_t pf_mounts_find_dev(const struct pf_mount_ent *v, size_t n,
			  size_t from, unsigned major, unsigned minor)
{
	size_t i;

	for (i = from; i < n; i++)
		if (v[i].major == major && v[i].minor == minor)
			return i;
	return n;
}

int pf_mounts_parse_devno(const char *text, size_t len, struct pf_devno *out)
{
	char buf[32], *end, *p;
	unsigned long v;

	if (!len || len >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, text, len);
	buf[len] = '\0';
	if (buf[len - 1] == '\n')
		buf[--len] = '\0';
	p = buf;
	if (*p < '0' || *p > '9')
		return -EINVAL;
	errno = 0;
	v = strtoul(p, &end, 10);
	if (errno || *end != ':' || v > UINT32_MAX)
		return -EINVAL;
	out->major = (unsigned)v;
	p = end + 1;
	if (*p < '0' || *p > '9')
		return -EINVAL;
	v = strtoul(p, &end, 10);
	if (errno || *end || v > UINT32_MAX)
		return -EINVAL;
	out->minor = (unsigned)v;
	return 0;
}

#define DELETED_SFX	" (deleted)"

bool pf_mounts_backing_in(const char *text, size_t len, const char *mnt)
{
	size_t mlen = strlen(mnt), sfx = strlen(DELETED_SFX);
	const char *name;
	size_t nlen;

	if (len && text[len - 1] == '\n')
		len--;
	/* "/" as a mount point would make "//disk": not ours anyway */
	if (len <= mlen + 1 || memcmp(text, mnt, mlen) || text[mlen] != '/')
		return false;
	if (len >= sfx && !memcmp(text + len - sfx, DELETED_SFX, sfx))
		return false;
	name = text + mlen + 1;
	nlen = len - mlen - 1;
	if (memchr(name, '/', nlen) || memchr(name, '\0', nlen))
		return false;
	return !(nlen == strlen(PF_MOUNT_SNAP_DIR) &&
		 !memcmp(name, PF_MOUNT_SNAP_DIR, nlen));
}

/* Read the small file @path below @dirfd into @buf: its length, -errno. */
static ssize_t read_small(int dirfd, const char *path, char *buf, size_t size)
{
	int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
	ssize_t got;

	if (fd < 0)
		return -errno;
	got = read(fd, buf, size);
	if (got < 0)
		got = -errno;
	close(fd);
	return got;
}

/* Append the device of sysfs directory @name (below @dirfd) to *@v. */
static int add_dev(int dirfd, const char *name, struct pf_devno **v,
		   size_t *n)
{
	struct pf_devno d, *p;
	char path[512], buf[32];
	ssize_t got;

	snprintf(path, sizeof(path), "%s/dev", name);
	got = read_small(dirfd, path, buf, sizeof(buf));
	if (got <= 0 || pf_mounts_parse_devno(buf, (size_t)got, &d))
		return 0;	/* gone meanwhile, or not a device */
	p = realloc(*v, (*n + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	*v = p;
	p[(*n)++] = d;
	return 0;
}

/* The partitions of loop device @name: subdirectories named @name + "p"
 * + digits that have a dev file. */
static int add_parts(int dirfd, const char *name, struct pf_devno **v,
		     size_t *n)
{
	size_t len = strlen(name);
	struct dirent *de;
	char path[512];
	DIR *d;
	int fd, ret = 0;

	fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return 0;
	}
	while (!ret && (de = readdir(d))) {
		if (strncmp(de->d_name, name, len) || de->d_name[len] != 'p' ||
		    !de->d_name[len + 1] ||
		    strspn(de->d_name + len + 1, "0123456789") !=
			    strlen(de->d_name + len + 1))
			continue;
		snprintf(path, sizeof(path), "%s/%s", name, de->d_name);
		ret = add_dev(dirfd, path, v, n);
	}
	closedir(d);
	return ret;
}

int pf_mounts_loop_devs(const char *sys_block, const char *mnt,
			struct pf_devno **out, size_t *n)
{
	struct pf_devno *v = NULL;
	char path[512], buf[4096] = "";
	struct dirent *de;
	size_t len = 0;
	ssize_t got;
	int dirfd, ret = 0;
	DIR *d;

	*out = NULL;
	*n = 0;
	dirfd = open(sys_block, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0)
		return -errno;
	d = fdopendir(dirfd);
	if (!d) {
		ret = -errno;
		close(dirfd);
		return ret;
	}
	while (!ret && (de = readdir(d))) {
		if (strncmp(de->d_name, "loop", 4))
			continue;
		snprintf(path, sizeof(path), "%s/loop/backing_file", de->d_name);
		got = read_small(dirfd, path, buf, sizeof(buf));
		/* no backing file: unbound, or not a loop device */
		if (got <= 0 || (size_t)got == sizeof(buf) ||
		    !pf_mounts_backing_in(buf, (size_t)got, mnt))
			continue;
		ret = add_dev(dirfd, de->d_name, &v, &len);
		if (!ret)
			ret = add_parts(dirfd, de->d_name, &v, &len);
	}
	closedir(d);
	if (ret) {
		free(v);
		return ret;
	}
	*out = v;
	*n = len;
	return 0;
}
