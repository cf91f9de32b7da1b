/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What the files of ploopctl share (private to them):
 *   ploopctl.c         main, the command table, opening images, option
 *                      parsing, talking to the daemon, exit statuses
 *   ploopctl_image.c   init, info, check (and --repair)
 *   ploopctl_snap.c    snapshot, snapshot-list, -switch, -delete, -merge
 *   ploopctl_status.c  status, events
 *   ploopctl_mount.c   mount, umount
 *   ploopctl_sum.c     checksum, verify
 *   ploopctl_freeze.c  freezing the file systems on a mounted disk
 *                      around an online snapshot
 * Every function that prints an error prints one line (err_line) and
 * returns an exit status of enum pf_exit (cli.h).
 */
#ifndef PF_PLOOPCTL_I_H
#define PF_PLOOPCTL_I_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "delta.h"
#include "descriptor.h"
#include "mounts.h"
#include "util.h"

/* Seconds the daemon may stay silent (--timeout); 0: no limit. */
#define CTL_TIMEOUT_DEFAULT	30
#define CTL_TIMEOUT_MAX		86400
/* --timeout, set by the command line (ploopctl.c) */
extern unsigned ctl_timeout;

/* An image as named on the command line: a directory or one delta. */
struct image {
	const char *arg;	/* as given */
	char *dir;		/* the image directory (or the file's) */
	int dirfd;
	bool is_dir;
	struct pf_dd *dd;	/* directory form only */
	size_t *chain;		/* indices into dd->images, base first */
	size_t depth;
};

/*
 * The options of a command, for parse_args(): --name (and -key, a
 * letter) sets *dst.  -h/--help is every command's.
 */
enum opt_kind {
	OPT_FLAG,	/* bool *dst = true */
	OPT_ARG,	/* const char **dst = the argument */
	OPT_SECONDS,	/* unsigned *dst = whole seconds (parse_timeout) */
};

struct cmd_opt {
	const char *name;
	int key;
	enum opt_kind kind;
	void *dst;
};

#define CMD_OPTS_MAX	8
/* keys from here on are long options only (no letter) */
#define OPT_KEY_LONG	0x100

/* --timeout, into ctl_timeout */
#define OPT_TIMEOUT	{ "timeout", 't', OPT_SECONDS, &ctl_timeout }

/* Collected "key value" data lines of a reply. */
struct kv {
	char **lines;
	size_t n;
};

/* ploopctl.c */

/* parse_args() for the commands that take [--json] and one operand. */
int parse_json_args(int argc, char **argv, void (*usage_fn)(FILE *),
		    bool *json);
void PF_PRINTF(2, 3) err_line(const char *file, const char *fmt, ...);
int exit_for(int err);
void json_str(FILE *out, const char *s);
const char *in_use_name(uint32_t v);
char *path_join(const char *dir, const char *name);
void image_close(struct image *im);
int image_open(struct image *im, const char *arg, int lock,
		      bool file_ok);
void deltas_close(struct pf_delta **v, size_t n);
int chain_open(struct image *im, bool check, struct pf_delta ***out,
		      size_t *n);
int parse_args(int argc, char **argv, const struct cmd_opt *opts,
		      size_t n, void (*usage_fn)(FILE *), int min_ops,
		      int max_ops);
int open_clean_chain(struct image *im, const char *arg,
			    struct pf_delta ***v, size_t *n);
/*
 * The mount table (*@v, *@n: pf_mounts_free() them, also on error) and in
 * it the ploopfs mount (*@e, or NULL) of @path: an image directory with
 * @by_source, else a mount point (pf_mounts_find()).  With @print, an
 * error is printed.  Returns 0 or -errno (@path does not resolve, the
 * table cannot be read).
 */
int mount_lookup(const char *path, bool by_source, bool print,
		 struct pf_mount_ent **v, size_t *n,
		 const struct pf_mount_ent **e);
int daemon_of(const char *dir, int *fd);
int refuse_if_read_only(const char *dir);
int exit_for_struct(int err);
int kv_add(void *ctx, const char *line);
void kv_free(struct kv *kv);
const char *kv_get(const struct kv *kv, const char *key);
uint64_t kv_u64(const struct kv *kv, const char *key);
/* daemon_call(): the daemon began closing the image before it ran the
 * command (nothing done) and has closed it now: work on the files. */
#define EXIT_DAEMON_CLOSED	(-2)
/* daemon_call() in two halves, for a caller that must do something
 * between the reply and any output (ploopctl snapshot thaws file
 * systems): the call on @fd (left open), printing nothing; then the exit
 * status of its result @ret, the error printed against @dir. */
int daemon_call_raw(int fd, int argc, const char *const *argv,
		    int (*on_data)(void *ctx, const char *line), void *ctx,
		    struct pf_why *why);
int daemon_result(const char *dir, int ret, const struct pf_why *why);
int daemon_call(int fd, const char *dir, int argc,
		       const char *const *argv,
		       int (*on_data)(void *ctx, const char *line), void *ctx);

/* ploopctl_freeze.c */

/*
 * Freeze (FIFREEZE) every file system mounted from a loop device (or
 * one of its partitions) backed by the disk of image directory @dir's
 * ploopfs mount; with @verbose, a line on stderr for each.  One that
 * cannot be frozen (EOPNOTSUPP) is a warning printed by fs_thaw_all().
 * Until fs_thaw_all(), SIGINT, SIGTERM, SIGHUP and SIGQUIT thaw them and
 * then end the process as they would have.  Returns an exit status: on
 * failure everything is thawed and the error printed (EXIT_BUSY: one is
 * frozen already).
 */
int fs_freeze_all(const char *dir, bool verbose);

/* Thaw what fs_freeze_all() froze, restore the signal handlers, then
 * print the warnings held back while frozen.  Idempotent. */
void fs_thaw_all(bool verbose);

/* A command: its name, its main (argv[0] is the name) returning an exit
 * status, and its line in --help. */
struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
};

/* The commands of each file, each table ended by a NULL name. */
extern const struct command image_commands[];	/* ploopctl_image.c */
extern const struct command snap_commands[];	/* ploopctl_snap.c */
extern const struct command status_commands[];	/* ploopctl_status.c */
extern const struct command mount_commands[];	/* ploopctl_mount.c */
extern const struct command sum_commands[];	/* ploopctl_sum.c */

#endif /* PF_PLOOPCTL_I_H */
