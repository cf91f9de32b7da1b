// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Unit tests of mounts.c: mountinfo lines (escapes, optional fields),
 * sysfs dev numbers, which loop backing files are a ploopfs mount's disk
 * (spaces, " (deleted)", the snapshot views), and the loop devices and
 * partitions found in a fake /sys/block laid out in a temporary directory.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mounts.h"
#include "tap.h"

static void test_parse_line(void)
{
	struct pf_mount_ent e;

	check_int(pf_mounts_parse_line(
			  "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n",
			  &e), ==, 0);
	check_str(e.dir, "/mnt2");
	check_str(e.fstype, "ext3");
	check_str(e.source, "/dev/root");
	check_int(e.major, ==, 98);
	check_int(e.minor, ==, 0);
	pf_mount_ent_clear(&e);

	/* no optional field; a space and a backslash escaped; a partition
	 * of a loop device (block major 259) */
	check_int(pf_mounts_parse_line(
			  "112 29 259:3 / /srv/ct\\040root\\134x rw,relatime shared:60 - ext4 /dev/loop7p1 rw\n",
			  &e), ==, 0);
	check_str(e.dir, "/srv/ct root\\x");
	check_int(e.major, ==, 259);
	check_int(e.minor, ==, 3);
	check_str(e.source, "/dev/loop7p1");
	pf_mount_ent_clear(&e);

	check_int(pf_mounts_parse_line(
			  "90 29 0:52 / /mnt/a\\040b rw,nosuid - fuse.ploopfs ploopfs:/srv/ct\\040101 rw\n",
			  &e), ==, 0);
	check_str(e.fstype, PF_MOUNT_FSTYPE);
	check_str(e.source, "ploopfs:/srv/ct 101");
	pf_mount_ent_clear(&e);

	check_int(pf_mounts_parse_line("36 35 98 /mnt1 /mnt2 rw - ext3 x rw", &e),
		  ==, -EINVAL);
	pf_mount_ent_clear(&e);
	check_int(pf_mounts_parse_line("36 35 98:0 /mnt1 /mnt2 rw ext3 x rw", &e),
		  ==, -EINVAL);
	pf_mount_ent_clear(&e);
	check_int(pf_mounts_parse_line("", &e), ==, -EINVAL);
	pf_mount_ent_clear(&e);
}

static void test_find_dev(void)
{
	struct pf_mount_ent v[3] = {
		{ .major = 7, .minor = 0 },
		{ .major = 259, .minor = 1 },
		{ .major = 7, .minor = 0 },
	};

	check_int(pf_mounts_find_dev(v, 3, 0, 7, 0), ==, 0);
	check_int(pf_mounts_find_dev(v, 3, 1, 7, 0), ==, 2);
	check_int(pf_mounts_find_dev(v, 3, 3, 7, 0), ==, 3);
	check_int(pf_mounts_find_dev(v, 3, 0, 259, 1), ==, 1);
	check_int(pf_mounts_find_dev(v, 3, 0, 7, 1), ==, 3);
	check_int(pf_mounts_find_dev(v, 0, 0, 7, 0), ==, 0);
}

static void test_devno(void)
{
	struct pf_devno d = { 0, 0 };

	check_int(pf_mounts_parse_devno("7:0\n", 4, &d), ==, 0);
	check_int(d.major, ==, 7);
	check_int(d.minor, ==, 0);
	check_int(pf_mounts_parse_devno("259:12", 6, &d), ==, 0);
	check_int(d.major, ==, 259);
	check_int(d.minor, ==, 12);
	/* only the first @len bytes count */
	check_int(pf_mounts_parse_devno("7:1\nrubbish", 4, &d), ==, 0);
	check_int(d.minor, ==, 1);
	check_int(pf_mounts_parse_devno("", 0, &d), ==, -EINVAL);
	check_int(pf_mounts_parse_devno("7\n", 2, &d), ==, -EINVAL);
	check_int(pf_mounts_parse_devno(":0\n", 3, &d), ==, -EINVAL);
	check_int(pf_mounts_parse_devno("7:\n", 3, &d), ==, -EINVAL);
	check_int(pf_mounts_parse_devno("7:-1\n", 5, &d), ==, -EINVAL);
	check_int(pf_mounts_parse_devno("7:0 \n", 5, &d), ==, -EINVAL);
	check_int(pf_mounts_parse_devno("-7:0\n", 5, &d), ==, -EINVAL);
	check_int(pf_mounts_parse_devno("4294967296:0", 12, &d), ==, -EINVAL);
}

#define IN(text, mnt) pf_mounts_backing_in(text, strlen(text), mnt)

static void test_backing(void)
{
	check(IN("/mnt/ct/disk\n", "/mnt/ct"));
	check(IN("/mnt/ct/disk", "/mnt/ct"));
	check(IN("/mnt/ct/my disk.img\n", "/mnt/ct"));
	check(IN("/mnt/a b/disk\n", "/mnt/a b"));
	/* not the disk: a view, the views' directory, elsewhere, deleted */
	check(!IN("/mnt/ct/snapshots/0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11\n",
		  "/mnt/ct"));
	check(!IN("/mnt/ct/snapshots\n", "/mnt/ct"));
	check(!IN("/mnt/ct/disk (deleted)\n", "/mnt/ct"));
	check(!IN("/mnt/ctx/disk\n", "/mnt/ct"));
	check(!IN("/mnt/c/disk\n", "/mnt/ct"));
	check(!IN("/mnt/ct\n", "/mnt/ct"));
	check(!IN("/mnt/ct/\n", "/mnt/ct"));
	check(!IN("/mnt/ct//disk\n", "/mnt/ct"));
	check(!IN("", "/mnt/ct"));
	check(!IN("/mnt/a/disk\n", "/mnt/a b"));
}

static char root[64];

static void put(const char *rel, const char *text)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	f = fopen(path, "w");
	if (!f || fputs(text, f) < 0 || fclose(f)) {
		tap_diag("cannot write %s", path);
		exit(1);
	}
}

static void dir(const char *rel)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	if (mkdir(path, 0755)) {
		tap_diag("cannot create %s", path);
		exit(1);
	}
}

static bool has(const struct pf_devno *v, size_t n, unsigned major,
		unsigned minor)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (v[i].major == major && v[i].minor == minor)
			return true;
	return false;
}

static void test_loop_devs(void)
{
	struct pf_devno *v = NULL;
	char cmd[128];
	size_t n = 99;

	snprintf(root, sizeof(root), "/tmp/test_mounts.XXXXXX");
	if (!mkdtemp(root)) {
		tap_diag("mkdtemp failed");
		exit(1);
	}
	/* loop0: our disk, with two partitions and a non-partition entry */
	dir("loop0");
	dir("loop0/loop");
	put("loop0/loop/backing_file", "/mnt/a b/disk\n");
	put("loop0/dev", "7:0\n");
	dir("loop0/loop0p1");
	put("loop0/loop0p1/dev", "259:0\n");
	dir("loop0/loop0p2");
	put("loop0/loop0p2/dev", "259:1\n");
	dir("loop0/loop0px");
	put("loop0/loop0px/dev", "259:9\n");
	dir("loop0/queue");
	/* loop1: the same path, deleted; loop2: a snapshot view; loop3:
	 * unbound; loop4: another disk name in the same mount (-o name=);
	 * sda: not a loop device */
	dir("loop1");
	dir("loop1/loop");
	put("loop1/loop/backing_file", "/mnt/a b/disk (deleted)\n");
	put("loop1/dev", "7:1\n");
	dir("loop2");
	dir("loop2/loop");
	put("loop2/loop/backing_file",
	    "/mnt/a b/snapshots/0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11\n");
	put("loop2/dev", "7:2\n");
	dir("loop3");
	put("loop3/dev", "7:3\n");
	dir("loop4");
	dir("loop4/loop");
	put("loop4/loop/backing_file", "/mnt/a b/ct101.img\n");
	put("loop4/dev", "7:4\n");
	dir("sda");
	put("sda/dev", "8:0\n");

	check_int(pf_mounts_loop_devs(root, "/mnt/a b", &v, &n), ==, 0);
	check_int(n, ==, 4);
	check(has(v, n, 7, 0));
	check(has(v, n, 259, 0));
	check(has(v, n, 259, 1));
	check(has(v, n, 7, 4));
	check(!has(v, n, 259, 9));
	check(!has(v, n, 7, 1));
	check(!has(v, n, 7, 2));
	free(v);

	check_int(pf_mounts_loop_devs(root, "/mnt/other", &v, &n), ==, 0);
	check_int(n, ==, 0);
	free(v);
	snprintf(cmd, sizeof(cmd), "%s/none", root);
	check_int(pf_mounts_loop_devs(cmd, "/mnt/a b", &v, &n), ==, -ENOENT);
	check(v == NULL);

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (system(cmd))
		tap_diag("cannot remove %s", root);
}

int main(void)
{
	test_parse_line();
	test_find_dev();
	test_devno();
	test_backing();
	test_loop_devs();
	return tap_done();
}
