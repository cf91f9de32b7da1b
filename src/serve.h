/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The commands the daemon serves on its control socket (control.h): the
 * glue between the control protocol and the stack.  Every command runs
 * in its connection's thread, never in a FUSE worker (CTL-2).
 *
 * Commands of protocol 1 and their data lines (ploopctl(8) shows them):
 *   status                      "<key> <value>" lines (fuse_transport
 *                               "io_uring" or "dev", fuse_ring_requests
 *                               <n> among them); per delta
 *                               "delta <i> <guid> <mapped> <top> <hidden> <file>"
 *   events [<after>]            streams event lines after sequence <after>
 *                               (default: from the next one emitted)
 *   snapshot [<guid>]           "guid <GUID>", "stall_us <n>"
 *   snapshot-delete <guid> [force]
 *                               "down <0|1>", "clusters <n>", "bytes <n>",
 *                               "usec <n>", "stall_us <n>"; EBUSY while
 *                               the snapshot's view is open, unless
 *                               "force"
 * status has "read_only <0|1>"; a read-only daemon refuses snapshot and
 * snapshot-delete with EROFS ("the image is mounted read-only").
 * Once the mount is gone, status, snapshot and snapshot-delete fail with
 * ESHUTDOWN ("the daemon is closing the image"), as every request does
 * while the daemon closes (pf_ctl_drain()).
 * snapshot and snapshot-delete may run for minutes (a merge copies data):
 * they are keepalive commands, "keepalive" lines go out while they run
 * (control.h, Keepalives).
 */
#ifndef PF_SERVE_H
#define PF_SERVE_H

#include "control.h"
#include "events.h"
#include "fuse_uring.h"
#include "stack.h"

struct pf_serve {
	struct pf_stack *stack;
	struct pf_events *events;
	const char *disk_path;	/* the disk file in the mount, for status */
	const char *mount_point;	/* absolute; NULL: not checked */
	const struct pf_ring *ring;	/* FUSE over io_uring, or NULL */
	bool read_only;		/* ploopfs -o ro: structural commands refused */
};

/* The command table; the handlers' context is a struct pf_serve. */
const struct pf_ctl_cmd *pf_serve_cmds(void);

/* The daemon's mount is gone (a struct pf_serve as @ctx): for
 * pf_ctl_set_gone(). */
bool pf_serve_gone(void *ctx);

/* Stack event callback (pf_stack_opts.event) with ctx a struct pf_events. */
void pf_serve_event(void *ctx, const char *type, const char *text);

#endif /* PF_SERVE_H */
