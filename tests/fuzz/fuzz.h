/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What the fuzz targets of tests/fuzz share.  Each fuzz_<target>.c
 * defines LLVMFuzzerTestOneInput(); clang's libFuzzer drives it in
 * `make fuzz`, and replay.c feeds it every file of the target's corpus
 * in `make check` (build/<variant>/tests/test_fuzz_<target>).
 */
#ifndef PF_FUZZ_H
#define PF_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property that must hold for every input: say which and abort, which
 * both libFuzzer and the replay count as a crash. */
#define fuzz_assert(expr)                                                  \
	do {                                                               \
		if (!(expr)) {                                             \
			fprintf(stderr, "%s:%d: fuzz property failed: %s\n", \
				__FILE__, __LINE__, #expr);                \
			abort();                                           \
		}                                                          \
	} while (0)

#endif /* PF_FUZZ_H */
