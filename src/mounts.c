// SPDX-License-Identifier: GPL-2.0-or-later
/* The mount table (see mounts.h). */
#include "mounts.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
static int parse_line(const char *line, struct pf_mount_ent *e)
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

static void ent_free(struct pf_mount_ent *e)
{
	free(e->dir);
	free(e->fstype);
	free(e->source);
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
		if (parse_line(line, &v[len])) {
			ent_free(&v[len]);	/* a line we cannot read */
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
		ent_free(&v[i]);
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
