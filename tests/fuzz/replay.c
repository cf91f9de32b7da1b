// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Regression replay of a fuzz target's corpus: the main of
 * build/<variant>/tests/test_fuzz_<target>, linked with the target's
 * fuzz_<target>.c instead of libFuzzer.  Every file of the directories
 * and every file named on the command line (default: the target's
 * committed corpus, tests/corpus/fuzz/<target>, from the top of the
 * tree) is fed once to LLVMFuzzerTestOneInput() and counted as one TAP
 * result.  A failed property aborts, as a sanitizer report does: the
 * run then ends without its plan, which scripts/run-tests.sh counts as
 * a failure.
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "tap.h"

#ifndef FUZZ_TARGET
#error "FUZZ_TARGET (the target's name) must be defined"
#endif

#define REPLAY_MAX	(1u << 20)	/* the largest corpus file replayed */

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void replay_file(const char *path)
{
	uint8_t *buf;
	size_t len;
	FILE *f;

	f = fopen(path, "rb");
	if (!f) {
		check_msg(0, "%s: %s", path, strerror(errno));
		return;
	}
	/* one byte more than allowed, to tell a file that is too large */
	buf = malloc(REPLAY_MAX + 1);
	if (!buf) {
		fclose(f);
		check_msg(0, "%s: out of memory", path);
		return;
	}
	len = fread(buf, 1, REPLAY_MAX + 1, f);
	if (ferror(f) || len > REPLAY_MAX) {
		check_msg(0, "%s: unreadable or larger than %u bytes", path,
			  REPLAY_MAX);
	} else {
		/* a copy of exactly @len bytes: ASan sees any overread */
		uint8_t *in = malloc(len ? len : 1);

		if (in) {
			memcpy(in, buf, len);
			fflush(stdout);
			LLVMFuzzerTestOneInput(in, len);
			free(in);
		}
		check_msg(in != NULL, "%s", path);
	}
	free(buf);
	fclose(f);
}

static void replay_dir(const char *dir)
{
	char **names = NULL, path[4096];
	size_t n = 0, cap = 0, i;
	struct dirent *de;
	DIR *d;

	d = opendir(dir);
	if (!d) {
		check_msg(0, "%s: %s", dir, strerror(errno));
		return;
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (n == cap) {
			char **grown;

			cap = cap ? 2 * cap : 64;
			grown = realloc(names, cap * sizeof(*names));
			if (!grown)
				break;
			names = grown;
		}
		names[n] = strdup(de->d_name);
		if (names[n])
			n++;
	}
	closedir(d);
	/* the same order on every file system */
	if (n)
		qsort(names, n, sizeof(*names), cmp_names);
	if (!n)
		check_msg(0, "%s: no corpus files", dir);
	for (i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		replay_file(path);
		free(names[i]);
	}
	free(names);
}

int main(int argc, char **argv)
{
	const char *def = "tests/corpus/fuzz/" FUZZ_TARGET;
	struct stat st;
	int i;

	tap_diag("replay of the corpus of fuzz target %s", FUZZ_TARGET);
	if (argc < 2)
		replay_dir(def);
	for (i = 1; i < argc; i++) {
		if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode))
			replay_dir(argv[i]);
		else
			replay_file(argv[i]);
	}
	return tap_done();
}
