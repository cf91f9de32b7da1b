// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * FUSE over io_uring, beside a libfuse 3.14 session (see fuse_uring.h).
 *
 * An entry's life: REGISTER (or COMMIT_AND_FETCH) is pending in the
 * kernel until a request is put into the entry; its completion wakes the
 * queue thread, which dispatches the request; the answer is written into
 * the entry's header and payload and committed with COMMIT_AND_FETCH,
 * which also waits for the entry's next request.  Between the completion
 * and the commit the entry belongs to user space and nothing else touches
 * it; q->busy counts such entries.
 *
 * Locking: the submission queue of a ring is shared by its queue thread
 * and every thread that answers (aio completions, workers, libfuse
 * replies), under q->sq_lock.  The completion queue is read by the queue
 * thread alone.  Answers from other threads go in with the queue
 * thread's next wait, or at once while it is away (q->state,
 * submit_cmd).
 *
 * Data writes that a queue thread starts go on its own ring (io.h's
 * pf_aio_engine): their completions come back to the same loop, which
 * answers them and submits the commits with its next wait, so a write
 * wakes no other thread.  When the stack is about to make the thread
 * sleep (a range lock, a freeze), eng_drain() first completes the
 * thread's own writes; requests that arrive meanwhile wait in q->later.
 */
#include "fuse_uring.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <liburing.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <unistd.h>

#include "io.h"
#include "log.h"

/* The io_uring ABI of FUSE (include/uapi/linux/fuse.h, protocol 7.42);
 * Debian 12's kernel headers predate it. */
#define PF_FUSE_OVER_IO_URING	(1ULL << 41)
#define PF_URING_CMD_REGISTER	1u
#define PF_URING_CMD_COMMIT	2u	/* COMMIT_AND_FETCH */
#define PF_MIN_READ_BUFFER	8192u

struct pf_uring_ent_in_out {
	/* cppcheck-suppress unusedStructMember ; kernel ABI */
	uint64_t flags;
	uint64_t commit_id;	/* the request's unique, echoed in the commit */
	uint32_t payload_sz;	/* bytes of payload, in either direction */
	/* cppcheck-suppress unusedStructMember ; kernel ABI */
	uint32_t padding;
	/* cppcheck-suppress unusedStructMember ; kernel ABI */
	uint64_t reserved;
};

struct pf_uring_req_header {
	char in_out[128];	/* fuse_in_header, then fuse_out_header */
	char op_in[128];	/* the request's first argument */
	struct pf_uring_ent_in_out ent;
};

struct pf_uring_cmd_req {	/* in the SQE's 80-byte command area */
	/* cppcheck-suppress unusedStructMember ; kernel ABI */
	uint64_t flags;
	uint64_t commit_id;
	/* cppcheck-suppress unusedStructMember ; kernel ABI */
	uint16_t qid;
	/* cppcheck-suppress unusedStructMember ; kernel ABI */
	uint8_t padding[6];
};

#define SQE_CMD_OFF	offsetof(struct io_uring_sqe, cmd)
#define EFD_TAG		((uint64_t)1)	/* user_data of the stop read */
#define IO_TAG		((uint64_t)2)	/* or'ed into a data request's */
#define WAKE_TAG	((uint64_t)4)	/* user_data of the wake-up read */
#define SQ_PER_ENT	4u	/* SQ entries per ring entry (data I/O too) */
#define CQ_PER_ENT	32u	/* CQ entries per ring entry */
#define N_WORKERS	16u	/* as many as /dev/fuse's workers (PF_FE_THREADS) */

struct queue;

struct cqe_copy {
	uint64_t data;
	int32_t res;
};

struct ent {
	struct queue *q;
	struct pf_uring_req_header *hdr;
	void *payload;
	struct iovec iov[2];
	unsigned cmd;		/* last command submitted */
	uint64_t unique;	/* of the request being served */
	_Atomic uint64_t fwd;	/* unique while libfuse serves it, else 0 */
	/* Released by the thread that answers, acquired by the queue thread
	 * when the entry's next request arrives: the kernel orders the two,
	 * this makes the order visible to the memory model (and to TSan). */
	atomic_uint handed;
	struct ent *next;	/* in the worker queue */
};

/* What a queue thread is doing, for the threads that answer on its ring
 * (see submit_cmd) */
enum qstate {
	Q_AWAY,		/* not before long: answers go in at once */
	Q_LOOP,		/* in its loop: submits them with its next wait */
	Q_WAITING,	/* waiting on the ring: to be woken for them */
};

struct queue {
	struct pf_ring *r;
	unsigned qid;
	struct io_uring ring;
	bool ring_ok;
	pthread_mutex_t sq_lock;
	pthread_t tid;
	bool started;
	int efd;		/* wakes the thread to stop */
	uint64_t efd_val;	/* where the pending read of efd lands */
	int wfd;		/* wakes it to submit answers (Q_WAITING) */
	uint64_t wfd_val;	/* where the pending read of wfd lands */
	enum qstate state;	/* protected by sq_lock */
	bool woken;		/* wfd written since the wait began; sq_lock */
	bool wake_ok;		/* the wfd read works; sq_lock */
	struct ent *ents;
	atomic_uint busy;	/* entries in user space */
	/* Data I/O on this ring (pf_aio_engine): only the queue thread
	 * touches these. */
	struct pf_aio_engine engine;
	unsigned io_pending;	/* submitted, not completed */
	bool draining;
	bool drain_failed;	/* the ring refused: drains give up */
	/* completions taken off the CQ and not handled yet: those of one
	 * round (todo), those a drain put aside (later) */
	struct cqe_copy *todo, *later;
	unsigned n_later, cq_size;
};

struct pf_ring {
	struct fuse_session *se;
	int fd;
	struct pf_ring_data data;
	unsigned nq, depth;	/* queues (one per possible CPU), entries each */
	size_t payload_sz, hdr_sz;
	struct queue *qs;
	_Atomic uint64_t init_unique;	/* of FUSE_INIT, when it offered us */
	atomic_uint n_fwd;	/* requests with libfuse */
	atomic_int reg_err;	/* first registration error */
	atomic_uint queues_up;	/* threads that submitted their entries */
	atomic_ullong served;	/* requests that came over the rings */
	/* workers for requests that may block */
	pthread_mutex_t wlock;
	pthread_cond_t wcond;
	struct ent *whead, *wtail;
	bool wstop;
	pthread_t workers[N_WORKERS];
	unsigned n_workers;
	atomic_bool stopping;	/* pf_ring_stop(): new requests refused */
};

static struct pf_ring *the_ring;
static __thread struct queue *my_queue;	/* set in a queue thread */

/* Submitting */

static void prep_cmd(struct ent *e, struct io_uring_sqe *sqe, unsigned cmd)
{
	struct pf_uring_cmd_req req = { .qid = (uint16_t)e->q->qid };
	/* SQE128: the command area runs 80 bytes past sqe->cmd */
	unsigned char *cmd_area = (unsigned char *)sqe + SQE_CMD_OFF;

	memset(sqe, 0, sizeof(*sqe));
	memset(cmd_area + 64 - SQE_CMD_OFF, 0, 64);	/* the second half */
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->flags = IOSQE_FIXED_FILE;
	sqe->fd = 0;		/* the registered /dev/fuse */
	sqe->cmd_op = cmd;
	io_uring_sqe_set_data(sqe, e);
	if (cmd == PF_URING_CMD_REGISTER) {
		sqe->addr = (uint64_t)(uintptr_t)e->iov;
		sqe->len = 2;
	} else {
		req.commit_id = e->unique;
	}
	memcpy(cmd_area, &req, sizeof(req));
	e->cmd = cmd;
}

/* Hand the queued SQEs to the kernel's view of the ring (q->sq_lock
 * held); returns how many it has yet to consume.  io_uring_enter()
 * itself runs outside the lock: it may do a whole commit (copying the
 * answer, ending the client's request) and must not hold up the other
 * threads that answer on this queue. */
static unsigned publish_sq(struct io_uring *ring)
{
	struct io_uring_sq *sq = &ring->sq;

	if (sq->sqe_head != sq->sqe_tail) {
		sq->sqe_head = sq->sqe_tail;
		io_uring_smp_store_release(sq->ktail, sq->sqe_tail);
	}
	return sq->sqe_tail - io_uring_smp_load_acquire(sq->khead);
}

/* Submit @n SQEs and, with @wait, wait for a completion. */
static int enter(struct queue *q, unsigned n, bool wait)
{
	int ret;

	do
		ret = io_uring_enter((unsigned)q->ring.ring_fd, n, wait ? 1 : 0,
				     wait ? IORING_ENTER_GETEVENTS : 0, NULL);
	while (ret < 0 && (errno == EINTR || errno == EAGAIN) && !wait);
	return ret < 0 ? -errno : ret;
}

/* Queue @cmd for @e in the SQ (q->sq_lock held).  An SQE is always free:
 * the ring has one per entry plus the stop and wake-up reads. */
static void queue_cmd(struct ent *e, unsigned cmd)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&e->q->ring);

	if (!sqe) {
		/* cannot happen (see above); losing the entry beats crashing */
		pf_log(PF_LOG_ERR, "fuse ring %u: no free submission entry",
		       e->q->qid);
		return;
	}
	prep_cmd(e, sqe, cmd);
	/* the last touch of the entry before the kernel has it */
	atomic_fetch_add_explicit(&e->handed, 1, memory_order_release);
}

/*
 * Commit (or resubmit @cmd for) @e.  It goes in with the queue thread's
 * next wait, whoever answers: the kernel then hands the entry's next
 * request over in the queue thread, which takes it anyway, and not in
 * the thread that answered (the aio completion thread, for reads), which
 * it would interrupt.  A queue thread waiting on its ring is woken for
 * it (wfd).  One that may not get there soon (serving a request that
 * waits, asleep in the stack, stopped: Q_AWAY) does not hold answers up:
 * then they are submitted here.  A/B against submitting here always
 * (tests/bench/ab.sh, 4 rounds each): randread 4 KiB qd32 +4%, qd1
 * +10%, randwrite qd32 +5%, fsync'd +2%, sequential reads -1%.
 */
static void submit_cmd(struct ent *e, unsigned cmd)
{
	struct queue *q = e->q;
	bool wake = false;
	unsigned n = 0;
	int ret;

	pthread_mutex_lock(&q->sq_lock);
	queue_cmd(e, cmd);
	if (my_queue != q) {
		if (q->state == Q_AWAY || !q->wake_ok) {
			n = publish_sq(&q->ring);
		} else if (q->state == Q_WAITING && !q->woken) {
			wake = true;
			q->woken = true;
		}
	}
	pthread_mutex_unlock(&q->sq_lock);
	if (n) {
		ret = enter(q, n, false);
		if (ret < 0)
			pf_log(PF_LOG_ERR, "fuse ring %u: submit: %s", q->qid,
			       strerror(-ret));
	}
	if (wake) {
		uint64_t one = 1;

		if (write(q->wfd, &one, sizeof(one)) < 0)
			pf_log(PF_LOG_ERR, "fuse ring %u: wake: %s", q->qid,
			       strerror(errno));
	}
}

/*
 * The queue thread (q's own) submits what it and others queued, and
 * says where it goes next (@st, see submit_cmd): Q_WAITING waits for a
 * completion, cut short by others' answers, and is back in its loop
 * after it; Q_LOOP goes on at once; Q_AWAY leaves the loop for a while,
 * and answers from then on go in at once.
 */
static int flush_sq(struct queue *q, enum qstate st)
{
	bool wait = st == Q_WAITING;
	unsigned n;
	int ret;

	pthread_mutex_lock(&q->sq_lock);
	q->state = st;
	q->woken = false;
	n = publish_sq(&q->ring);
	pthread_mutex_unlock(&q->sq_lock);
	if (!n && !wait)
		return 0;
	ret = enter(q, n, wait);
	if (wait) {
		pthread_mutex_lock(&q->sq_lock);
		q->state = Q_LOOP;
		pthread_mutex_unlock(&q->sq_lock);
	}
	return ret;
}

/* Answer the request in @e: @err (0 or -errno) and @len payload bytes
 * already in e->payload. */
static void answer(struct ent *e, int err, size_t len)
{
	struct fuse_out_header *oh = (struct fuse_out_header *)e->hdr->in_out;
	struct queue *q = e->q;

	oh->len = (uint32_t)(sizeof(*oh) + len);
	oh->error = err;
	oh->unique = e->unique;
	e->hdr->ent.payload_sz = (uint32_t)len;
	atomic_fetch_sub(&q->busy, 1);
	submit_cmd(e, PF_URING_CMD_COMMIT);
}

/* Data requests */

static void read_done(void *arg, ssize_t res)
{
	if (res < 0)
		answer(arg, (int)res, 0);
	else
		answer(arg, 0, (size_t)res);
}

static void write_done(void *arg, ssize_t res)
{
	struct ent *e = arg;
	struct fuse_write_out *wo = e->payload;

	if (res < 0) {
		answer(e, (int)res, 0);
		return;
	}
	memset(wo, 0, sizeof(*wo));
	wo->size = (uint32_t)res;
	answer(e, 0, sizeof(*wo));
}

/* Requests that libfuse serves: rebuild the /dev/fuse layout (header,
 * first argument, the rest) and let it dispatch; the answer comes back
 * through hook_writev(), from this or any other thread. */
static void forward(struct ent *e, const struct fuse_in_header *in,
		    size_t payload)
{
	struct pf_ring *r = e->q->r;
	size_t arg0;
	struct fuse_buf fb = { 0 };
	char *buf;

	if (in->len < sizeof(*in) + payload ||
	    in->len - sizeof(*in) - payload > sizeof(e->hdr->op_in)) {
		answer(e, -EIO, 0);
		return;
	}
	arg0 = in->len - sizeof(*in) - payload;
	buf = malloc(in->len);
	if (!buf) {
		answer(e, -ENOMEM, 0);
		return;
	}
	memcpy(buf, in, sizeof(*in));
	memcpy(buf + sizeof(*in), e->hdr->op_in, arg0);
	memcpy(buf + sizeof(*in) + arg0, e->payload, payload);
	atomic_fetch_add(&r->n_fwd, 1);
	atomic_store(&e->fwd, in->unique);
	fb.mem = buf;
	fb.size = in->len;
	fuse_session_process_buf(r->se, &fb);
	free(buf);
}

/* Serve the request now in @e, in this thread. */
static void serve(struct ent *e)
{
	const struct fuse_in_header *in =
		(const struct fuse_in_header *)e->hdr->in_out;
	const struct pf_ring_data *d = &e->q->r->data;
	size_t payload = e->hdr->ent.payload_sz;
	size_t max = e->q->r->payload_sz;

	if (in->opcode == FUSE_READ && d->read) {
		const struct fuse_read_in *ri = (const void *)e->hdr->op_in;

		d->read(d->ctx, in->nodeid, e->payload,
			ri->size < max ? ri->size : max, ri->offset, read_done,
			e);
		return;
	}
	if (in->opcode == FUSE_WRITE && d->write) {
		const struct fuse_write_in *wi = (const void *)e->hdr->op_in;

		if (wi->size > payload) {
			answer(e, -EIO, 0);
			return;
		}
		d->write(d->ctx, in->nodeid, e->payload, wi->size, wi->offset,
			 (int)wi->flags, write_done, e);
		return;
	}
	forward(e, in, payload);
}

/* How long the request in @e may hold up the thread that serves it. */
enum wait { W_NO, W_BOUNDED, W_UNBOUNDED };

static enum wait may_wait(const struct ent *e)
{
	const struct fuse_in_header *in =
		(const struct fuse_in_header *)e->hdr->in_out;
	const struct fuse_write_in *wi = (const void *)e->hdr->op_in;
	const struct pf_ring_data *d = &e->q->r->data;

	switch (in->opcode) {
	case FUSE_FSYNC:
	case FUSE_FSYNCDIR:
	case FUSE_FALLOCATE:
	case FUSE_SETATTR:
		return W_BOUNDED;
	case FUSE_WRITE:
		if (d->write_waits &&
		    d->write_waits(d->ctx, in->nodeid, e->payload, wi->size,
				   wi->offset))
			return W_UNBOUNDED;
		return (wi->flags & (O_SYNC | O_DSYNC)) ? W_BOUNDED : W_NO;
	default:
		return W_NO;
	}
}

static void *worker_main(void *arg)
{
	struct pf_ring *r = arg;
	struct ent *e;

	pthread_mutex_lock(&r->wlock);
	for (;;) {
		while (!r->whead && !r->wstop)
			pthread_cond_wait(&r->wcond, &r->wlock);
		e = r->whead;
		if (!e)
			break;	/* stopping, queue drained */
		r->whead = e->next;
		if (!r->whead)
			r->wtail = NULL;
		pthread_mutex_unlock(&r->wlock);
		serve(e);
		pthread_mutex_lock(&r->wlock);
	}
	pthread_mutex_unlock(&r->wlock);
	return NULL;
}

/* A request arrived in @e; @more: completions still to handle. */
static void dispatch(struct ent *e, unsigned more)
{
	struct queue *q = e->q;
	struct pf_ring *r = q->r;
	enum wait w;
	unsigned busy;

	(void)atomic_load_explicit(&e->handed, memory_order_acquire);
	e->unique = e->hdr->ent.commit_id;
	busy = atomic_fetch_add(&q->busy, 1) + 1;
	if (atomic_load(&r->stopping)) {
		/* the daemon is stopping: as /dev/fuse's after the loop */
		answer(e, -ENOTCONN, 0);
		return;
	}
	atomic_fetch_add_explicit(&r->served, 1, memory_order_relaxed);
	/* A request that waits a bounded time (an fdatasync) saves a
	 * hand-off by running here when it is alone; with others in flight
	 * it must not hold them up.  One that may wait without bound (a
	 * write held for host space) never runs here: requests arriving
	 * after it would wait as long. */
	w = may_wait(e);
	if (r->n_workers &&
	    (w == W_UNBOUNDED || (w == W_BOUNDED && (busy > 1 || more)))) {
		e->next = NULL;
		pthread_mutex_lock(&r->wlock);
		if (r->wtail)
			r->wtail->next = e;
		else
			r->whead = e;
		r->wtail = e;
		pthread_cond_signal(&r->wcond);
		pthread_mutex_unlock(&r->wlock);
		return;
	}
	if (w != W_NO)
		(void)flush_sq(q, Q_AWAY);	/* before it waits */
	serve(e);
}

/* Queue threads */

/* The read of the eventfd that stops the thread (q->sq_lock held). */
static void arm_efd(struct queue *q)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);

	io_uring_prep_read(sqe, q->efd, &q->efd_val, sizeof(q->efd_val), 0);
	io_uring_sqe_set_data64(sqe, EFD_TAG);
}

/* The read of the eventfd that wakes it for answers (q->sq_lock held). */
static void arm_wfd(struct queue *q)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);

	io_uring_prep_read(sqe, q->wfd, &q->wfd_val, sizeof(q->wfd_val), 0);
	io_uring_sqe_set_data64(sqe, WAKE_TAG);
}

static void register_all(struct queue *q)
{
	unsigned i;
	int ret;

	pthread_mutex_lock(&q->sq_lock);
	for (i = 0; i < q->r->depth; i++)
		queue_cmd(&q->ents[i], PF_URING_CMD_REGISTER);
	arm_efd(q);
	arm_wfd(q);
	q->wake_ok = true;
	ret = io_uring_submit(&q->ring);
	pthread_mutex_unlock(&q->sq_lock);
	if (ret < 0) {
		pf_log(PF_LOG_ERR, "fuse ring %u: register: %s", q->qid,
		       strerror(-ret));
		atomic_store(&q->r->reg_err, ret);
	}
	atomic_fetch_add(&q->r->queues_up, 1);
}

/* A command of @e failed with @res. */
static void cmd_failed(struct ent *e, int res)
{
	struct pf_ring *r = e->q->r;
	int none = 0;

	if (res == -EAGAIN || res == -EINTR) {
		submit_cmd(e, e->cmd);	/* not ready yet: try again */
		return;
	}
	if (res == -ENOTCONN || res == -ECONNABORTED || res == -ECANCELED)
		return;		/* unmounted */
	if (atomic_compare_exchange_strong(&r->reg_err, &none, res))
		pf_log(PF_LOG_ERR, "fuse ring %u: %s: %s", e->q->qid,
		       e->cmd == PF_URING_CMD_REGISTER ? "register" : "commit",
		       strerror(-res));
}

/* Take up to @max completions off the CQ into @out. */
static unsigned take(struct queue *q, struct cqe_copy *out, unsigned max)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;

	io_uring_for_each_cqe(&q->ring, head, cqe)
	{
		if (n == max)
			break;
		out[n].data = cqe->user_data;
		out[n].res = cqe->res;
		n++;
	}
	io_uring_cq_advance(&q->ring, n);
	return n;
}

static bool is_io(const struct cqe_copy *c)
{
	return c->data != EFD_TAG && (c->data & IO_TAG);
}

static void io_complete(struct queue *q, const struct cqe_copy *c)
{
	q->io_pending--;
	pf_aio_engine_done((struct pf_aio_req *)(uintptr_t)(c->data & ~IO_TAG),
			   c->res);
}

/* Handle a completion other than data I/O; @more: how many follow it
 * in hand.  Returns true for the stop read. */
static bool handle(const struct cqe_copy *c, unsigned more)
{
	if (c->data == EFD_TAG)
		return true;
	if (c->data == WAKE_TAG) {
		struct queue *q = my_queue;

		pthread_mutex_lock(&q->sq_lock);
		if (c->res >= 0)
			arm_wfd(q);
		else
			q->wake_ok = false;	/* answers go in at once */
		pthread_mutex_unlock(&q->sq_lock);
		if (c->res < 0)
			pf_log(PF_LOG_ERR, "fuse ring %u: wake-up read: %s",
			       q->qid, strerror(-c->res));
		return false;
	}
	if (c->res < 0)
		cmd_failed((struct ent *)(uintptr_t)c->data, c->res);
	else
		dispatch((struct ent *)(uintptr_t)c->data, more);
	return false;
}

/* Data I/O on the queue's own ring (struct pf_aio_engine) */

static int eng_submit(void *ctx, struct pf_aio_req *r, bool write, int fd,
		      void *buf, size_t len, uint64_t off)
{
	struct queue *q = ctx;
	/* room kept for a commit of every entry and the two reads */
	const unsigned keep = q->r->depth + 2;
	struct io_uring_sqe *sqe;

	/* Reads stay with libaio: their answer carries the data, and the
	 * commit that copies it to the client is the bigger half of the
	 * work.  Done here it would all fall on this one thread; from the
	 * aio completion thread it runs beside it (with reads here too,
	 * 4 KiB reads at depth 32 measured 5-12% slower; the writes gained
	 * 25-48% either way). */
	if (!write)
		return -EOPNOTSUPP;
	pthread_mutex_lock(&q->sq_lock);
	if (io_uring_sq_space_left(&q->ring) <= keep) {
		unsigned n = publish_sq(&q->ring);

		pthread_mutex_unlock(&q->sq_lock);
		if (n)
			(void)enter(q, n, false);
		pthread_mutex_lock(&q->sq_lock);
	}
	if (io_uring_sq_space_left(&q->ring) <= keep) {
		pthread_mutex_unlock(&q->sq_lock);
		return -EBUSY;	/* libaio takes it */
	}
	sqe = io_uring_get_sqe(&q->ring);
	io_uring_prep_write(sqe, fd, buf, (unsigned)len, off);
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)r | IO_TAG);
	pthread_mutex_unlock(&q->sq_lock);
	q->io_pending++;
	return 0;
}

/* Complete this queue's data I/O before the thread sleeps elsewhere.
 * Requests that arrive meanwhile are put aside for the queue loop. */
static void eng_drain(void *ctx)
{
	struct queue *q = ctx;
	struct cqe_copy got[64];
	unsigned i, n;
	int ret;

	if (q->draining)
		return;
	q->draining = true;
	while (q->io_pending) {
		ret = flush_sq(q, io_uring_cq_ready(&q->ring) ? Q_AWAY :
								Q_WAITING);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN) {
			pf_log(PF_LOG_ERR, "fuse ring %u: drain: %s", q->qid,
			       strerror(-ret));
			q->drain_failed = true;
			break;
		}
		n = take(q, got, 64);
		for (i = 0; i < n; i++) {
			if (is_io(&got[i]))
				io_complete(q, &got[i]);
			else
				q->later[q->n_later++] = got[i];
		}
	}
	q->draining = false;
	/* the stack is about to put the thread to sleep */
	(void)flush_sq(q, Q_AWAY);
}

/* Nothing for a drain to do: no data I/O of this queue in flight and
 * the answers already go in at once (Q_AWAY), or a drain is running
 * (a completion it runs went to sleep) or cannot run. */
static bool eng_idle(void *ctx)
{
	const struct queue *q = ctx;

	return q->draining || q->drain_failed ||
	       (!q->io_pending && q->state == Q_AWAY);
}

static void *queue_main(void *arg)
{
	struct queue *q = arg;
	const unsigned cap = q->cq_size + q->r->depth + 2;
	unsigned i, k, n;
	bool stop = false, batch;
	int ret;

	my_queue = q;
	q->engine = (struct pf_aio_engine){ eng_submit, eng_drain, eng_idle,
					    q };
	pf_aio_use_engine(&q->engine);
	register_all(q);
	/* after the stop read, until this ring's data I/O is done */
	while (!stop || q->io_pending) {
		/* this thread's own answers and I/O go in with the wait */
		ret = flush_sq(q, !q->n_later && !io_uring_cq_ready(&q->ring) ?
					  Q_WAITING : Q_LOOP);
		if (ret == -EINTR || ret == -EAGAIN)
			continue;
		if (ret < 0) {
			pf_log(PF_LOG_ERR, "fuse ring %u: wait: %s", q->qid,
			       strerror(-ret));
			break;
		}
		/* what a drain put aside, then the CQ (a drain while these
		 * are handled only adds to q->later) */
		k = q->n_later;
		memcpy(q->todo, q->later, k * sizeof(*q->todo));
		q->n_later = 0;
		n = k + take(q, q->todo + k, cap - k);
		/* data I/O first: a drain below waits for all of it, and
		 * would wait forever for completions already taken here */
		for (i = k; i < n; i++) {
			if (is_io(&q->todo[i]))
				io_complete(q, &q->todo[i]);
			else
				q->todo[k++] = q->todo[i];
		}
		n = k;
		batch = n > 1 && q->r->data.batch;
		if (batch)
			q->r->data.batch(q->r->data.ctx, true);
		for (i = 0; i < n; i++)
			stop |= handle(&q->todo[i], n - i - 1);
		if (batch)
			q->r->data.batch(q->r->data.ctx, false);
	}
	/* answers queued in the last round; later ones go in at once */
	(void)flush_sq(q, Q_AWAY);
	pf_aio_use_engine(NULL);
	return NULL;
}

/* Setting up, at FUSE_INIT */

static void free_queues(struct pf_ring *r)
{
	unsigned i, k;

	for (i = 0; r->qs && i < r->nq; i++) {
		struct queue *q = &r->qs[i];

		if (q->ring_ok)
			io_uring_queue_exit(&q->ring);
		for (k = 0; q->ents && k < r->depth; k++) {
			if (q->ents[k].hdr)
				munmap(q->ents[k].hdr, r->hdr_sz);
			if (q->ents[k].payload)
				munmap(q->ents[k].payload, r->payload_sz);
		}
		free(q->ents);
		free(q->todo);
		free(q->later);
		if (q->efd >= 0)
			close(q->efd);
		if (q->wfd >= 0)
			close(q->wfd);
		pthread_mutex_destroy(&q->sq_lock);
	}
	free(r->qs);
	r->qs = NULL;
}

static void *map_buf(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* One ring and @depth entries per possible CPU (the kernel puts a
 * request on the queue of the CPU that issued it). */
static int setup_queues(struct pf_ring *r)
{
	struct io_uring_params p;
	unsigned i, k;
	int ret, ncpu;
	const unsigned depth = r->depth;

	ncpu = get_nprocs_conf();
	if (ncpu < 1 || !depth)
		return -ENODEV;
	r->nq = (unsigned)ncpu;
	r->hdr_sz = (sizeof(struct pf_uring_req_header) + 4095) & ~4095ul;
	r->qs = calloc(r->nq, sizeof(*r->qs));
	if (!r->qs)
		return -ENOMEM;
	for (i = 0; i < r->nq; i++) {
		r->qs[i].efd = -1;
		r->qs[i].wfd = -1;
		pthread_mutex_init(&r->qs[i].sq_lock, NULL);
	}
	for (i = 0; i < r->nq; i++) {
		struct queue *q = &r->qs[i];

		q->r = r;
		q->qid = i;
		q->efd = eventfd(0, EFD_CLOEXEC);
		q->wfd = eventfd(0, EFD_CLOEXEC);
		q->ents = calloc(depth, sizeof(*q->ents));
		q->cq_size = depth * CQ_PER_ENT;
		q->todo = calloc(q->cq_size + depth + 2, sizeof(*q->todo));
		/* a drain puts aside only requests and the two reads: one
		 * completion per entry at most (an entry in user space has
		 * no command pending), plus one for each read */
		q->later = calloc(depth + 2, sizeof(*q->later));
		if (q->efd < 0 || q->wfd < 0 || !q->ents || !q->todo ||
		    !q->later)
			return -ENOMEM;
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE;
		p.cq_entries = q->cq_size;
		ret = io_uring_queue_init_params(depth * SQ_PER_ENT, &q->ring,
						 &p);
		if (ret)
			return ret;
		q->ring_ok = true;
		ret = io_uring_register_files(&q->ring, &r->fd, 1);
		if (ret)
			return ret;
		for (k = 0; k < r->depth; k++) {
			struct ent *e = &q->ents[k];

			e->q = q;
			e->hdr = map_buf(r->hdr_sz);
			e->payload = map_buf(r->payload_sz);
			if (!e->hdr || !e->payload)
				return -ENOMEM;
			e->iov[0].iov_base = e->hdr;
			e->iov[0].iov_len = sizeof(*e->hdr);
			e->iov[1].iov_base = e->payload;
			e->iov[1].iov_len = r->payload_sz;
		}
	}
	return 0;
}

static void start_threads(struct pf_ring *r)
{
	unsigned i;
	int ret;

	for (i = 0; i < N_WORKERS; i++) {
		if (pthread_create(&r->workers[i], NULL, worker_main, r))
			break;
		r->n_workers++;
	}
	for (i = 0; i < r->nq; i++) {
		ret = pthread_create(&r->qs[i].tid, NULL, queue_main,
				     &r->qs[i]);
		if (ret) {
			/* the kernel waits for every queue: give up on
			 * the connection rather than hang it */
			pf_log(PF_LOG_ERR, "fuse ring %u: thread: %s", i,
			       strerror(ret));
			atomic_store(&r->reg_err, -ret);
			fuse_session_exit(r->se);
			continue;
		}
		r->qs[i].started = true;
	}
}

/* The answer to FUSE_INIT: ask for io_uring if the rings can be set up,
 * send it, then start the queues (the kernel takes registrations only
 * once it has the answer). */
static ssize_t init_reply(struct pf_ring *r, int fd, struct iovec *iov,
			  int count)
{
	struct fuse_out_header *oh = iov[0].iov_base;
	struct fuse_init_out *o;
	size_t pages;
	bool use = false;
	ssize_t n;
	int ret;

	atomic_store(&r->init_unique, 0);
	if (count >= 2 && !oh->error &&
	    iov[1].iov_len >= offsetof(struct fuse_init_out, flags2) +
				      sizeof(o->flags2)) {
		o = iov[1].iov_base;
		pages = (o->flags & FUSE_MAX_PAGES) ? o->max_pages : 32;
		r->payload_sz = pages * 4096;
		if (r->payload_sz < o->max_write)
			r->payload_sz = o->max_write;
		if (r->payload_sz < PF_MIN_READ_BUFFER)
			r->payload_sz = PF_MIN_READ_BUFFER;
		r->payload_sz = (r->payload_sz + 4095) & ~(size_t)4095;
		ret = setup_queues(r);
		if (ret) {
			pf_log(PF_LOG_WARNING,
			       "FUSE over io_uring not used: %s",
			       strerror(-ret));
			free_queues(r);
		} else {
			o->flags |= FUSE_INIT_EXT;
			o->flags2 |= (uint32_t)(PF_FUSE_OVER_IO_URING >> 32);
			use = true;
		}
	}
	n = writev(fd, iov, count);
	if (n < 0 || !use)
		return n;
	start_threads(r);
	return n;
}

/* libfuse's device hooks */

static ssize_t hook_read(int fd, void *buf, size_t len, void *userdata)
{
	struct pf_ring *r = the_ring;
	const struct fuse_in_header *in = buf;
	const struct fuse_init_in *ii = (const void *)(in + 1);
	ssize_t n;

	(void)userdata;
	n = read(fd, buf, len);
	if (!r || n < (ssize_t)(sizeof(*in) + sizeof(*ii)) ||
	    in->opcode != FUSE_INIT)
		return n;
	/* the kernel offers io_uring only with enable_uring=Y */
	if ((ii->flags & FUSE_INIT_EXT) &&
	    (((uint64_t)ii->flags2 << 32) & PF_FUSE_OVER_IO_URING))
		atomic_store(&r->init_unique, in->unique);
	return n;
}

/* The answer to a request that came over a ring: into its entry. */
static ssize_t fwd_reply(struct ent *e, const struct iovec *iov, int count)
{
	const struct fuse_out_header *oh = iov[0].iov_base;
	struct pf_ring *r = e->q->r;
	size_t len = 0, total = iov[0].iov_len;
	int i, err = oh->error;

	for (i = 1; i < count; i++) {
		total += iov[i].iov_len;
		if (len + iov[i].iov_len > r->payload_sz) {
			err = -EIO;
			len = 0;
			break;
		}
		memcpy((char *)e->payload + len, iov[i].iov_base,
		       iov[i].iov_len);
		len += iov[i].iov_len;
	}
	atomic_store(&e->fwd, 0);
	atomic_fetch_sub(&r->n_fwd, 1);
	answer(e, err, len);
	return (ssize_t)total;
}

static struct ent *fwd_find(struct pf_ring *r, uint64_t unique)
{
	unsigned i, k;

	for (i = 0; i < r->nq; i++)
		for (k = 0; k < r->depth; k++)
			if (atomic_load(&r->qs[i].ents[k].fwd) == unique)
				return &r->qs[i].ents[k];
	return NULL;
}

static ssize_t hook_writev(int fd, struct iovec *iov, int count,
			   void *userdata)
{
	struct pf_ring *r = the_ring;
	const struct fuse_out_header *oh = iov[0].iov_base;
	struct ent *e;

	(void)userdata;
	if (!r || count < 1 || iov[0].iov_len < sizeof(*oh) || !oh->unique)
		return writev(fd, iov, count);
	if (atomic_load(&r->n_fwd) && (e = fwd_find(r, oh->unique)))
		return fwd_reply(e, iov, count);
	if (oh->unique == atomic_load(&r->init_unique))
		return init_reply(r, fd, iov, count);
	return writev(fd, iov, count);
}

/* The interface */

int pf_ring_attach(struct fuse_session *se, const struct pf_ring_data *data,
		   unsigned depth, struct pf_ring **out)
{
	static const struct fuse_custom_io io = {
		.read = hook_read,
		.writev = hook_writev,
	};
	struct pf_ring *r;
	int ret;

	if (the_ring)
		return -EBUSY;
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->se = se;
	r->fd = fuse_session_fd(se);
	r->data = *data;
	r->depth = depth ? depth : PF_RING_DEPTH;
	pthread_mutex_init(&r->wlock, NULL);
	pthread_cond_init(&r->wcond, NULL);
	ret = fuse_session_custom_io(se, &io, r->fd);
	if (ret) {
		pthread_cond_destroy(&r->wcond);
		pthread_mutex_destroy(&r->wlock);
		free(r);
		return ret < 0 ? ret : -EINVAL;
	}
	the_ring = r;
	*out = r;
	return 0;
}

const char *pf_ring_transport(const struct pf_ring *r)
{
	unsigned up = r ? atomic_load(&r->queues_up) : 0;

	/* a queue thread is up only after the queues were set up: r->nq is
	 * safe to read once one of them said so */
	if (up && up == r->nq && !atomic_load(&r->reg_err))
		return "io_uring";
	return "dev";
}

unsigned long long pf_ring_served(const struct pf_ring *r)
{
	return r ? atomic_load(&r->served) : 0;
}

void pf_ring_stop(struct pf_ring *r)
{
	uint64_t one = 1;
	struct ent *e;
	unsigned i;

	if (!r || atomic_exchange(&r->stopping, true))
		return;
	/* New requests are answered ENOTCONN; the workers finish what
	 * they were handed (a held write gives up: the session has ended)
	 * while the queue threads still run, so that every answer reaches
	 * the kernel through a live ring. */
	pthread_mutex_lock(&r->wlock);
	r->wstop = true;
	pthread_cond_broadcast(&r->wcond);
	pthread_mutex_unlock(&r->wlock);
	for (i = 0; i < r->n_workers; i++)
		pthread_join(r->workers[i], NULL);
	for (i = 0; r->qs && i < r->nq; i++) {
		if (!r->qs[i].started)
			continue;
		if (write(r->qs[i].efd, &one, sizeof(one)) == sizeof(one))
			pthread_join(r->qs[i].tid, NULL);
		r->qs[i].started = false;
	}
	/* handed over while the workers were ending */
	while ((e = r->whead)) {
		r->whead = e->next;
		serve(e);
	}
	r->wtail = NULL;
}

void pf_ring_detach(struct pf_ring *r)
{
	if (!r)
		return;
	pf_ring_stop(r);
	the_ring = NULL;
	free_queues(r);	/* closing a ring cancels its pending commands */
	pthread_cond_destroy(&r->wcond);
	pthread_mutex_destroy(&r->wlock);
	free(r);
}
