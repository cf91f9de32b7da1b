# ploopfs: one non-recursive Makefile.  `make help` lists the targets.
#
# Variants build into build/$(VARIANT): release (default), asan, tsan.
#   make                 build ploopctl (and ploopfs once it exists)
#   make check           unit + integration tests of the release build
#   make check-asan      the same under AddressSanitizer + UBSan
#   make check-tsan      the same under ThreadSanitizer
#   make fuzz            libFuzzer over every parser (clang, build/fuzz)

.DEFAULT_GOAL := all

VARIANT  ?= release
PREFIX   ?= /usr/local
DESTDIR  ?=
BINDIR   ?= $(PREFIX)/bin
SBINDIR  ?= $(PREFIX)/sbin
MANDIR   ?= $(PREFIX)/share/man

CC       ?= gcc
B        := build/$(VARIANT)

PKGS     := libxml-2.0 uuid fuse3 liburing libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

# one libfuse API level for every file that includes libfuse (3.14: the
# custom I/O hooks of fuse_uring.c)
FUSE_API := -DFUSE_USE_VERSION=314
CPPFLAGS += -Iinclude -Isrc -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 $(FUSE_API) \
	    $(PKG_CFLAGS)
WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
	    -Wmissing-prototypes -Wpointer-arith -Wwrite-strings -Wformat=2 \
	    -Wvla -Wimplicit-fallthrough -Wundef
CFLAGS   += -std=gnu11 $(WARN) -g -MMD -MP
LDLIBS   += $(PKG_LIBS) -laio -lpthread

ifeq ($(VARIANT),release)
CFLAGS   += -O2 -D_FORTIFY_SOURCE=2
else ifeq ($(VARIANT),asan)
# PF_DEBUG: the state checks of the stack (stack_check_state)
CFLAGS   += -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
	    -fno-sanitize-recover=undefined -DPF_DEBUG
LDFLAGS  += -fsanitize=address,undefined
else ifeq ($(VARIANT),tsan)
CFLAGS   += -O1 -fsanitize=thread -DPF_DEBUG
LDFLAGS  += -fsanitize=thread
else
$(error unknown VARIANT '$(VARIANT)': release, asan or tsan)
endif

# `make` alone builds the programs: the test rules below come before all
.DEFAULT_GOAL := all

ifeq ($(V),1)
Q :=
else
Q := @
endif

MAINS     := src/ploopctl.c src/ploopfs.c
# the other files of ploopctl (ploopctl_i.h): linked into it alone
CTL_SRCS  := $(wildcard src/ploopctl_*.c)
CTL_OBJS  := $(CTL_SRCS:src/%.c=$(B)/src/%.o)
LIB_SRCS  := $(filter-out $(MAINS) $(CTL_SRCS),$(wildcard src/*.c))
LIB_OBJS  := $(LIB_SRCS:src/%.c=$(B)/src/%.o)
LIB       := $(B)/libploopfs.a
PROGS     := $(B)/ploopctl $(B)/ploopfs

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(B)/tests/%)
# test support linked into every unit test: TAP, test I/O backends
TSUP_SRCS := $(filter-out tests/unit/test_%.c tests/unit/wrap_%.c,\
		$(wildcard tests/unit/*.c))
TAP_OBJ   := $(TSUP_SRCS:tests/unit/%.c=$(B)/tests/%.o)
# tests that make a directory fsync fail (tests/unit/wrap_fsync.h)
WRAP_FSYNC_TESTS := $(B)/tests/test_descriptor $(B)/tests/test_snapshot
$(WRAP_FSYNC_TESTS): $(B)/tests/wrap_fsync.o
$(WRAP_FSYNC_TESTS): LDFLAGS += -Wl,--wrap=fsync

# Fuzz targets (tests/fuzz/fuzz_<target>.c).  `make check` replays each
# target's corpus, tests/corpus/fuzz/<target>, with the variant's own
# compiler: test_fuzz_<target> is the target linked to replay.c.
FUZZ_SRCS    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_TARGETS := $(FUZZ_SRCS:tests/fuzz/fuzz_%.c=%)
FUZZ_REPLAY  := $(FUZZ_TARGETS:%=$(B)/tests/test_fuzz_%)

.SECONDARY:

.PHONY: demo all deps check check-unit check-integration check-uring \
	check-asan check-tsan fuzz \
	lint man-lint install uninstall clean help bench bench-checksum crash-soak

all: $(PROGS)

help:
	@echo "targets:"
	@echo "  all                build ploopctl and ploopfs into build/\$$VARIANT (default release)"
	@echo "  demo               install deps, build, create, mount and use a demo disk"
	@echo "  deps               apt-get install everything build, tests and benchmarks need"
	@echo "  check              layering check, unit tests and bats integration tests"
	@echo "  check-unit         unit tests only"
	@echo "  check-integration  bats integration tests only"
	@echo "  check-uring        every bats file that mounts, again over FUSE over io_uring"
	@echo "  check-asan         'check' built with AddressSanitizer + UBSan"
	@echo "  check-tsan         'check' built with ThreadSanitizer"
	@echo "  lint               cppcheck, clang-tidy, shellcheck, man page lint"
	@echo "  install            install programs and man pages (PREFIX, DESTDIR)"
	@echo "  uninstall          remove what install put there (same PREFIX, DESTDIR)"
	@echo "  bench-checksum     ploopctl checksum against sha256sum (BENCH_SUM_MB)"
	@echo "  crash-soak         CRASH_SCENARIOS=N random power-cut scenarios (default 10000),\n                     one process per CPU on disjoint seed ranges"
	@echo "                     from CRASH_SEED (default 1); CRASH_POINT=name cuts each"
	@echo "                     exactly at that crash point (test_crash -l lists them),"
	@echo "                     CRASH_POINT=all gives N exact cuts at every point"
	@echo "  fuzz               build the fuzz targets with clang's libFuzzer into build/fuzz"
	@echo "                     and run each for FUZZ_SECONDS (default 60); FUZZ=name runs"
	@echo "                     only that target, FUZZ_MERGE=1 merges inputs that add"
	@echo "                     coverage into tests/corpus/fuzz/<target>"
	@echo "  bench              benchmarks (tests/bench)"
	@echo "  clean              remove build/"

deps:
	scripts/deps.sh

demo: deps
	$(MAKE) all
	scripts/demo.sh $(B)

$(B)/src/%.o: src/%.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(B)/tests/%.o: tests/unit/%.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(CC) $(CPPFLAGS) -Itests/unit $(CFLAGS) -c -o $@ $<

$(LIB): $(LIB_OBJS)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(B)/ploopctl: $(B)/src/ploopctl.o $(CTL_OBJS) $(LIB)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/ploopfs: $(B)/src/ploopfs.o $(LIB)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/test_%: $(B)/tests/test_%.o $(TAP_OBJ) $(LIB)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/fuzz/%.o: tests/fuzz/%.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(CC) $(CPPFLAGS) -Itests/unit $(CFLAGS) -c -o $@ $<

# replay.c once per target, for the default corpus directory it names
$(FUZZ_TARGETS:%=$(B)/tests/fuzz/replay_%.o): $(B)/tests/fuzz/replay_%.o: \
		tests/fuzz/replay.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(CC) $(CPPFLAGS) -Itests/unit $(CFLAGS) -DFUZZ_TARGET='"$*"' \
		-c -o $@ $<

$(FUZZ_REPLAY): $(B)/tests/test_fuzz_%: $(B)/tests/fuzz/fuzz_%.o \
		$(B)/tests/fuzz/replay_%.o $(B)/tests/tap.o $(LIB)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

check: all $(UNIT_BINS) $(FUZZ_REPLAY)
	scripts/check-layering.sh
	scripts/run-tests.sh $(B)

check-unit: $(UNIT_BINS) $(FUZZ_REPLAY)
	scripts/run-tests.sh --unit-only $(B)

check-integration: all
	scripts/run-tests.sh --integration-only $(B)

check-uring: all
	scripts/run-tests.sh --uring-only $(B)

check-asan:
	$(MAKE) VARIANT=asan check

check-tsan:
	$(MAKE) VARIANT=tsan check

lint:
	scripts/lint.sh

man-lint:
	scripts/lint.sh --man-only

CRASH_SCENARIOS ?= 10000
CRASH_SEED      ?= 1
CRASH_POINT     ?=
# one test_crash per CPU on disjoint seed ranges (100000: about 65 min
# on an idle 2-CPU machine)
crash-soak: $(B)/tests/test_crash
	@echo "crash-soak: $(CRASH_SCENARIOS) scenarios from seed $(CRASH_SEED)$(if $(CRASH_POINT), at crash point $(CRASH_POINT))"
	@scripts/crash-soak.sh $(B)/tests/test_crash $(CRASH_SCENARIOS) \
		$(CRASH_SEED) $(CRASH_POINT)

# libFuzzer builds, with clang only (make deps installs it); not a VARIANT:
# every object of build/fuzz has the fuzzer's coverage instrumentation.
FUZZ_CC      ?= clang
FUZZ_B       := build/fuzz
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := -std=gnu11 $(WARN) -g -O1 -fno-omit-frame-pointer -MMD -MP \
		$(FUZZ_SAN)
# the modules that hold the parsers (and what they need)
FUZZ_MODULES := util log format descriptor control csum manifest sum delta file io_aio
FUZZ_LIB     := $(FUZZ_B)/libploopfs.a
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_B)/fuzz_%)
FUZZ_SECONDS ?= 60
FUZZ_MERGE   ?= 0
FUZZ         ?= $(FUZZ_TARGETS)

$(FUZZ_B)/src/%.o: src/%.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link \
		-c -o $@ $<

$(FUZZ_LIB): $(FUZZ_MODULES:%=$(FUZZ_B)/src/%.o)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(FUZZ_BINS): $(FUZZ_B)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB)
	@echo "  CCLD    $@"
	$(Q)$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) -fsanitize=fuzzer \
		-MF $@.d -MT $@ -o $@ $< $(FUZZ_LIB) $(LDLIBS)

fuzz: $(FUZZ:%=$(FUZZ_B)/fuzz_%)
	scripts/fuzz.sh $(FUZZ_B) $(FUZZ_SECONDS) $(FUZZ_MERGE) $(FUZZ)

# the FUSE ceilings of the benchmarks (fuse-null, fuse-pass; not a test)
$(B)/tests/fuse_ceiling: tests/bench/fuse_ceiling.c $(LIB)
	@mkdir -p $(dir $@)
	@echo "  CCLD    $@"
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -MF $@.d -MT $@ $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

bench: all $(B)/tests/fuse_ceiling
	tests/bench/run.sh $(B)
	tests/bench/checksum.sh $(B)

# ploopctl checksum against sha256sum, and a sparse 64 GiB disk
bench-checksum: all
	tests/bench/checksum.sh $(B)

install: all
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 0755 $(PROGS) $(DESTDIR)$(SBINDIR)/
	install -m 0755 scripts/ploop-rotate $(DESTDIR)$(SBINDIR)/ploop-rotate
	install -m 0644 man/*.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 man/*.8 $(DESTDIR)$(MANDIR)/man8/

# what install put there, and nothing else
uninstall:
	rm -f $(PROGS:$(B)/%=$(DESTDIR)$(SBINDIR)/%) \
	      $(DESTDIR)$(SBINDIR)/ploop-rotate \
	      $(patsubst man/%,$(DESTDIR)$(MANDIR)/man5/%,$(wildcard man/*.5)) \
	      $(patsubst man/%,$(DESTDIR)$(MANDIR)/man8/%,$(wildcard man/*.8))

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
