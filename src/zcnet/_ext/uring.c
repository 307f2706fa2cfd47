/* uring.c: the io_uring send engine's ring (docs/ARCHITECTURE.md, 'Transmit: the io_uring
 * engine'): IORING_OP_SEND_ZC sends with their results and notifications, and buffers
 * registered once, through the raw system calls (io_uring_setup(2), io_uring_enter(2),
 * io_uring_register(2)) and the kernel's UAPI header <linux/io_uring.h>; no liburing.
 *
 * The ring gives the engine what MSG_ZEROCOPY gives it, so that the rest of the send logic
 * (zcnet._core.sendop, the CompletionTracker) stays one: a send that took bytes takes the next
 * value of a 32-bit counter, as the kernel's sk_zckey does for a MSG_ZEROCOPY call
 * (net/core/skbuff.c msg_zerocopy_realloc), and zc_ring_drain turns notification CQEs into the
 * same (lo, hi, copied) ranges of values the error queue carries, for TxCore's reap. A send's user_data is a
 * 64-bit sequence number of the ring; a table maps it to the value it took until its
 * notification arrived (io_uring/notif.c, io_uring/net.c io_send_zc). */
#include "zcnet_ext.h"

#if defined(__linux__) && defined(__has_include)
#if __has_include(<linux/io_uring.h>)
#define ZC_HAVE_URING 1
#endif
#endif

#ifdef ZC_HAVE_URING
#include <errno.h>
#include <linux/io_uring.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* constants newer than some distributions' headers (include/uapi/linux/io_uring.h) */
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif
#ifndef IORING_RECVSEND_FIXED_BUF
#define IORING_RECVSEND_FIXED_BUF (1U << 2)
#endif
#ifndef IORING_CQE_F_NOTIF
#define IORING_CQE_F_NOTIF (1U << 3)
#endif
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#define __NR_io_uring_enter 426
#define __NR_io_uring_register 427
#endif

#define CANCEL_TAG (1ULL << 63) /* user_data of our cancel requests */
#define NO_VALUE (-1LL)

/* A send of the ring, from submission until its result and (if promised) its notification. */
enum {
    SLOT_RESULT = 1,       /* the result CQE was read */
    SLOT_MORE = 2,         /* ... and promised a notification */
    SLOT_NOTIF = 4,        /* the notification CQE was read */
    SLOT_NOTIF_COPIED = 8, /* ... and said the kernel copied */
    SLOT_CONSUMED = 16,    /* the submitter has taken the result */
};
typedef struct {
    long long value; /* the counter value it took, or NO_VALUE */
    int res;         /* the result CQE's res */
    unsigned char state;
    unsigned char used;
    unsigned char fixed; /* from a registered buffer */
} Slot;

typedef struct {
    PyObject_HEAD
    int fd;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, *sq_flags;
    unsigned sq_entries;
    struct io_uring_sqe *sqes;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map;
    size_t sq_map_len, cq_map_len, sqes_len;
    unsigned long long next_seq; /* user_data of the next send */
    unsigned long long base;     /* the oldest sequence number still in the table */
    Slot *slots;                 /* slots[seq & (cap - 1)] for base <= seq < next_seq */
    Py_ssize_t cap;
    unsigned long long counter;  /* the next counter value (u32 once masked) */
    long long *ready_value;      /* notifications read, not yet reaped: value, copied */
    unsigned char *ready_copied;
    Py_ssize_t nready, capready;
    Py_ssize_t awaiting;         /* sends whose notification has not arrived */
    int broken;                  /* a system call failed in a way that left the ring unknown */
    long long took;              /* bytes taken by the last send ended by an exception, or -1 */
    unsigned long long *reg_addr; /* the registered buffers: address and length by index */
    unsigned long long *reg_len;
    unsigned reg_count;          /* indexes 0 .. reg_count-1 may be set (reg_len 0: unset) */
    unsigned reg_cap;            /* the table's size */
    unsigned reg_hit;            /* the index found last */
    unsigned *reg_sorted;        /* the set indexes (reg_len != 0), by address: binary search */
    unsigned reg_nsorted;
    unsigned long long sends_fixed; /* sends from a registered buffer that took bytes */
} RingObject;

static PyTypeObject RingType;

/* PyLong_AsInt of Python 3.13, for 3.11 and 3.12 */
static int
as_int(PyObject *o)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < INT_MIN || v > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "integer out of range");
        return -1;
    }
    return (int)v;
}

static int
sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int
sys_enter(int fd, unsigned submit, unsigned wait, unsigned flags, void *arg, size_t argsz)
{
    return (int)syscall(__NR_io_uring_enter, fd, submit, wait, flags, arg, argsz);
}

static int
sys_register(int fd, unsigned op, void *arg, unsigned nr)
{
    return (int)syscall(__NR_io_uring_register, fd, op, arg, nr);
}

/* -- the table of sends ------------------------------------------------------------------ */

static Slot *
slot_of(RingObject *r, unsigned long long seq)
{
    if (seq < r->base || seq >= r->next_seq)
        return NULL;
    return &r->slots[seq & (unsigned long long)(r->cap - 1)];
}

/* Room for one more sequence number: 0, or -1 (out of memory; no exception set, no GIL). */
static int
table_grow(RingObject *r)
{
    if ((Py_ssize_t)(r->next_seq - r->base) < r->cap)
        return 0;
    Py_ssize_t cap = r->cap * 2;
    Slot *slots = PyMem_RawCalloc((size_t)cap, sizeof(Slot));
    if (slots == NULL)
        return -1;
    for (unsigned long long s = r->base; s < r->next_seq; s++)
        slots[s & (unsigned long long)(cap - 1)] = r->slots[s & (unsigned long long)(r->cap - 1)];
    PyMem_RawFree(r->slots);
    r->slots = slots;
    r->cap = cap;
    return 0;
}

static void
table_trim(RingObject *r)
{
    while (r->base < r->next_seq && !r->slots[r->base & (unsigned long long)(r->cap - 1)].used)
        r->base++;
}

/* A notification for a send that took `value`: queue it for reap (no GIL). */
static int
ready_push(RingObject *r, long long value, int copied)
{
    if (r->nready == r->capready) {
        Py_ssize_t cap = r->capready ? r->capready * 2 : 64;
        long long *v = PyMem_RawRealloc(r->ready_value, (size_t)cap * sizeof(long long));
        if (v == NULL)
            return -1;
        r->ready_value = v;
        unsigned char *c = PyMem_RawRealloc(r->ready_copied, (size_t)cap);
        if (c == NULL)
            return -1;
        r->ready_copied = c;
        r->capready = cap;
    }
    r->ready_value[r->nready] = value;
    r->ready_copied[r->nready] = (unsigned char)copied;
    r->nready++;
    return 0;
}

/* The slot is finished when its result is in and its notification, if promised, too. */
static int
slot_settle(RingObject *r, Slot *s)
{
    if (!(s->state & SLOT_RESULT) || !(s->state & SLOT_CONSUMED))
        return 0;
    if ((s->state & SLOT_MORE) && !(s->state & SLOT_NOTIF))
        return 0;
    int rc = 0;
    if (s->state & SLOT_MORE) {
        r->awaiting--;
        if (s->value != NO_VALUE)
            rc = ready_push(r, s->value, (s->state & SLOT_NOTIF_COPIED) != 0);
    }
    s->used = 0;
    table_trim(r);
    return rc;
}

/* Read every CQE (no GIL needed): results into their slots, notifications to the ready list.
 * 0, or -1 when memory ran out (the ring is then broken). */
static int
drain_cq(RingObject *r)
{
    unsigned head = *r->cq_head;
    unsigned tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    int rc = 0;
    while (head != tail) {
        struct io_uring_cqe *cqe = &r->cqes[head & *r->cq_mask];
        head++;
        if (cqe->user_data & CANCEL_TAG)
            continue;
        Slot *s = slot_of(r, cqe->user_data);
        if (s == NULL || !s->used)
            continue;
        if (cqe->flags & IORING_CQE_F_NOTIF) {
            s->state |= SLOT_NOTIF;
            if ((unsigned)cqe->res & IORING_NOTIF_USAGE_ZC_COPIED)
                s->state |= SLOT_NOTIF_COPIED;
        } else {
            s->state |= SLOT_RESULT;
            s->res = cqe->res;
            if (cqe->flags & IORING_CQE_F_MORE)
                s->state |= SLOT_MORE;
            else
                r->awaiting--;
        }
        if (slot_settle(r, s) < 0)
            rc = -1;
    }
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    if (rc < 0)
        r->broken = 1;
    return rc;
}

/* -- submission ------------------------------------------------------------------------ */

static unsigned
sq_space(RingObject *r)
{
    unsigned head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    return r->sq_entries - (*r->sq_tail - head);
}

/* Queue one SEND_ZC (not yet submitted): its sequence number, or -1 (no memory; no GIL). */
static long long
queue_send(RingObject *r, int sockfd, const char *ptr, size_t len, int fixed_index, int waitall,
           int link)
{
    if (table_grow(r) < 0)
        return -1;
    unsigned tail = *r->sq_tail;
    unsigned idx = tail & *r->sq_mask;
    struct io_uring_sqe *sqe = &r->sqes[idx];
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_SEND_ZC;
    sqe->fd = sockfd;
    sqe->addr = (unsigned long long)(uintptr_t)ptr;
    sqe->len = (unsigned)len;
    /* MSG_WAITALL: a stream send is retried by the kernel until all of it went (io_net_retry) */
    sqe->msg_flags = waitall ? MSG_WAITALL : 0;
    sqe->ioprio = IORING_SEND_ZC_REPORT_USAGE;
    if (fixed_index >= 0) {
        sqe->ioprio |= IORING_RECVSEND_FIXED_BUF;
        sqe->buf_index = (unsigned short)fixed_index;
    }
    if (link)
        sqe->flags |= IOSQE_IO_LINK;
    unsigned long long seq = r->next_seq++;
    sqe->user_data = seq;
    Slot *s = &r->slots[seq & (unsigned long long)(r->cap - 1)];
    s->value = NO_VALUE;
    s->res = 0;
    s->state = 0;
    s->used = 1;
    s->fixed = fixed_index >= 0;
    r->awaiting++;
    r->sq_array[idx] = idx;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    return (long long)seq;
}

static void
queue_cancel(RingObject *r, unsigned long long seq)
{
    unsigned tail = *r->sq_tail;
    unsigned idx = tail & *r->sq_mask;
    struct io_uring_sqe *sqe = &r->sqes[idx];
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = -1;
    sqe->addr = seq;
    sqe->user_data = CANCEL_TAG | seq;
    r->sq_array[idx] = idx;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
}

static int
results_in(RingObject *r, unsigned long long first, unsigned long long last)
{
    for (unsigned long long s = first; s < last; s++) {
        Slot *slot = slot_of(r, s);
        if (slot != NULL && slot->used && !(slot->state & SLOT_RESULT))
            return 0;
    }
    return 1;
}

/* Cancel sends first .. last-1 that have no result yet and read their results (a cancelled
 * send reports what it took, io_uring/net.c io_sendrecv_fail), so that the caller knows exactly
 * what reached the kernel. A send that an io-wq worker is running answers the cancel with
 * -EALREADY and may go on waiting for room (it re-arms poll, io_uring/io_uring.c
 * io_wq_submit_work), so the cancel is repeated every 20 ms, for at most 2 s; then the ring is
 * broken (what they took is unknown). Signals are left pending meanwhile. Call with the GIL. */
static void
cancel_until_results(RingObject *r, unsigned long long first, unsigned long long last)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += 2;
    Py_BEGIN_ALLOW_THREADS
    while (!results_in(r, first, last)) {
        for (unsigned long long s = first; s < last; s++) {
            Slot *slot = slot_of(r, s);
            if (slot != NULL && slot->used && !(slot->state & SLOT_RESULT) && sq_space(r) > 0)
                queue_cancel(r, s);
        }
        struct __kernel_timespec pause = {.tv_sec = 0, .tv_nsec = 20 * 1000 * 1000};
        struct io_uring_getevents_arg ga;
        memset(&ga, 0, sizeof(ga));
        ga.ts = (unsigned long long)(uintptr_t)&pause;
        ga.sigmask_sz = _NSIG / 8;
        unsigned submit = *r->sq_tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
        int rc = sys_enter(r->fd, submit, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &ga,
                           sizeof(ga));
        int enter_err = rc < 0 ? errno : 0;
        drain_cq(r);
        if (rc < 0 && enter_err != EINTR && enter_err != EAGAIN && enter_err != EBUSY
            && enter_err != ETIME)
            break;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > deadline.tv_sec
            || (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec))
            break;
    }
    Py_END_ALLOW_THREADS
    if (!results_in(r, first, last))
        r->broken = 1;
}

/* Submit what is queued, without waiting, and read the CQ: 0, or -1 with OSError set (the ring
 * is then broken). */
static int
submit_queued(RingObject *r)
{
    unsigned queued = *r->sq_tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    int rc, err = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = sys_enter(r->fd, queued, 0, 0, NULL, 0);
    if (rc < 0)
        err = errno;
    if (drain_cq(r) < 0 && rc >= 0) {
        rc = -1;
        err = ENOMEM;
    }
    Py_END_ALLOW_THREADS
    if (rc < 0 && err != EAGAIN && err != EBUSY && err != EINTR) {
        r->broken = 1;
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

/* Submit what is queued and wait until sends first .. last-1 have their results.
 * 0; or -1 with an exception set: a signal handler raised (`interrupted` set to 1; the sends
 * were cancelled and their results read before returning), or a system call failed. */
static int
submit_and_wait(RingObject *r, unsigned long long first, unsigned long long last,
                int *interrupted)
{
    *interrupted = 0;
    /* The wait is cut into 250 ms slices and Python's signal flag is looked at after each:
     * io_uring_enter(2) returns the number it submitted, not EINTR, when a signal ends a wait
     * that also submitted, and the signal may be handled on another thread meanwhile (CPython
     * then only sets the flag), so EINTR alone would miss it. */
    struct __kernel_timespec slice = {.tv_sec = 0, .tv_nsec = 250 * 1000 * 1000};
    struct io_uring_getevents_arg ga;
    memset(&ga, 0, sizeof(ga));
    ga.ts = (unsigned long long)(uintptr_t)&slice;
    ga.sigmask_sz = _NSIG / 8;
    /* First a plain submit: a send the kernel can issue at once posts its result during the
     * submit (io_uring/io_uring.c io_submit_flush_completions), so no wait is needed. */
    if (*r->sq_tail != __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE)) {
        if (submit_queued(r) < 0)
            return -1;
        if (results_in(r, first, last))
            return 0;
    }
    for (;;) {
        unsigned submit = *r->sq_tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
        int rc, err = 0;
        Py_BEGIN_ALLOW_THREADS
        rc = sys_enter(r->fd, submit, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &ga,
                       sizeof(ga));
        if (rc < 0)
            err = errno;
        if (drain_cq(r) < 0 && rc >= 0) {
            rc = -1;
            err = ENOMEM;
        }
        Py_END_ALLOW_THREADS
        if (rc < 0 && err != EAGAIN && err != EBUSY && err != EINTR && err != ETIME) {
            r->broken = 1;
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (results_in(r, first, last))
            return 0;
        if (PyErr_CheckSignals() == 0)
            continue;
        /* A signal handler raised: the sends without a result are cancelled, and their
         * results read, before the exception propagates */
        *interrupted = 1;
        PyObject *exc = zc_get_raised();
        cancel_until_results(r, first, last);
        zc_set_raised(exc);
        return -1;
    }
}

/* -- the Python type ------------------------------------------------------------------- */

static void
ring_unmap(RingObject *r)
{
    if (r->sqes != NULL && r->sqes != MAP_FAILED)
        munmap(r->sqes, r->sqes_len);
    if (r->cq_map != NULL && r->cq_map != MAP_FAILED && r->cq_map != r->sq_map)
        munmap(r->cq_map, r->cq_map_len);
    if (r->sq_map != NULL && r->sq_map != MAP_FAILED)
        munmap(r->sq_map, r->sq_map_len);
    r->sqes = NULL;
    r->cq_map = r->sq_map = NULL;
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
}

static int
ring_init(RingObject *r, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"entries", NULL};
    unsigned entries = 64;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|I", kwlist, &entries))
        return -1;
    if (r->fd >= 0 || r->slots != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Ring.__init__ called twice");
        return -1;
    }
    /* COOP_TASKRUN (5.19): completions that need task work (a notification, freed in softirq)
     * wait for our next io_uring_enter instead of interrupting the thread, which cost about a
     * microsecond per send; TASKRUN_FLAG says in sq_flags when such work is pending (reap
     * then enters). Older kernels refuse the flags: without them. An event loop sleeping in
     * epoll_wait for the ring's eventfd still gets its completions: the task work's
     * notification (TWA_SIGNAL_NO_IPI, kernel/task_work.c) wakes a sleeping task and only skips
     * the interrupt of a running one, which runs it at its next system call. */
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_CLAMP | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    int fd = sys_setup(entries, &p);
    if (fd < 0 && errno == EINVAL) {
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_CLAMP;
        fd = sys_setup(entries, &p);
    }
    if (fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    r->fd = fd;
    r->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_map_len > r->sq_map_len)
            r->sq_map_len = r->cq_map_len;
        r->cq_map_len = r->sq_map_len;
    }
    r->sq_map = mmap(NULL, r->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED)
        goto fail;
    if (p.features & IORING_FEAT_SINGLE_MMAP)
        r->cq_map = r->sq_map;
    else {
        r->cq_map = mmap(NULL, r->cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                         fd, IORING_OFF_CQ_RING);
        if (r->cq_map == MAP_FAILED)
            goto fail;
    }
    r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        goto fail;
    char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_flags = (unsigned *)(sq + p.sq_off.flags);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->sq_entries = p.sq_entries;
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);

    /* Is SEND_ZC there (Linux 6.0)? IORING_REGISTER_PROBE lists the opcodes (5.6). */
    size_t probe_len = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = PyMem_Calloc(1, probe_len);
    if (probe == NULL) {
        PyErr_NoMemory();
        ring_unmap(r);
        return -1;
    }
    int supported = 0;
    if (sys_register(fd, IORING_REGISTER_PROBE, probe, 256) == 0)
        supported = probe->last_op >= IORING_OP_SEND_ZC
                    && (probe->ops[IORING_OP_SEND_ZC].flags & IO_URING_OP_SUPPORTED);
    PyMem_Free(probe);
    if (!supported) {
        ring_unmap(r);
        PyErr_SetString(PyExc_OSError, "this kernel's io_uring has no IORING_OP_SEND_ZC "
                                       "(Linux 6.0)");
        return -1;
    }
    r->cap = 64;
    r->slots = PyMem_RawCalloc((size_t)r->cap, sizeof(Slot));
    if (r->slots == NULL) {
        PyErr_NoMemory();
        ring_unmap(r);
        return -1;
    }
    r->took = -1;
    return 0;
fail:
    PyErr_SetFromErrno(PyExc_OSError);
    ring_unmap(r);
    return -1;
}

static PyObject *
ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    RingObject *r = (RingObject *)type->tp_alloc(type, 0);
    if (r != NULL)
        r->fd = -1;
    return (PyObject *)r;
}

static void
ring_dealloc(RingObject *r)
{
    ring_unmap(r);
    PyMem_RawFree(r->slots);
    PyMem_RawFree(r->ready_value);
    PyMem_RawFree(r->ready_copied);
    PyMem_RawFree(r->reg_addr);
    PyMem_RawFree(r->reg_len);
    PyMem_RawFree(r->reg_sorted);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int
ring_check(RingObject *r)
{
    if (r->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "the ring is closed");
        return -1;
    }
    if (r->broken) {
        PyErr_SetString(PyExc_OSError, "the ring lost track of its sends (a system call failed)");
        return -1;
    }
    return 0;
}


/* The submitter takes the result of send `seq` (in submission order): a send that queued
 * bytes takes the next counter value, as a MSG_ZEROCOPY call does. Returns its res. */
static int
consume(RingObject *r, unsigned long long seq)
{
    Slot *s = slot_of(r, seq);
    if (s == NULL || !s->used || !(s->state & SLOT_RESULT))
        return -ECANCELED; /* not seen (the ring is broken): nothing known to be taken */
    int res = s->res;
    s->state |= SLOT_CONSUMED;
    if (res > 0) {
        s->value = (long long)(r->counter++ & 0xffffffffULL);
        r->sends_fixed += s->fixed;
    }
    if (slot_settle(r, s) < 0)
        r->broken = 1;
    return res;
}

/* The errno of a failed SEND_ZC result. ENOMEM is the locked-memory charge of its pages
 * (io_uring/notif.h io_notif_account_mem: charged to RLIMIT_MEMLOCK until the notification,
 * without CAP_IPC_LOCK):
 * the same back-pressure as MSG_ZEROCOPY's ENOBUFS (net/core/skbuff.c mm_account_pinned_pages),
 * so it is reported as ENOBUFS and handled as such. */
static int
send_errno(int res)
{
    return res == -ENOMEM ? ENOBUFS : -res;
}

static PyObject *
oserror(int err)
{
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* Submit a cancel left queued by an interruption, so that a send has room. */
static int
make_room(RingObject *r, unsigned need)
{
    if (sq_space(r) >= need)
        return 0;
    int intr;
    return submit_and_wait(r, r->next_seq, r->next_seq, &intr);
}

/* -- the C interface (zcnet_ext.h), used by the methods below and by TxCore (txfast.c) -- */

int
zc_ring_check(PyObject *o)
{
    return PyObject_TypeCheck(o, &RingType);
}

Py_ssize_t
zc_ring_took(PyObject *ring)
{
    return (Py_ssize_t)((RingObject *)ring)->took;
}

Py_ssize_t
zc_ring_batch_max(PyObject *ring)
{
    RingObject *r = (RingObject *)ring;
    Py_ssize_t n = (Py_ssize_t)r->sq_entries - 1; /* one entry left for a cancel */
    return n < ZC_RING_BATCH_MAX ? n : ZC_RING_BATCH_MAX;
}

int
zc_ring_fixed_index(PyObject *ring, const void *ptr, size_t len)
{
    RingObject *r = (RingObject *)ring;
    unsigned long long a = (unsigned long long)(uintptr_t)ptr;
    unsigned i = r->reg_hit;
    if (i < r->reg_count && a >= r->reg_addr[i] && a + len <= r->reg_addr[i] + r->reg_len[i])
        return (int)i;
    /* The last buffer starting at or below `a`: the only one that can hold the range, as the
     * registered buffers (pool slabs, separate mappings) do not overlap. (Were they to, a range
     * could be missed here and go out unregistered, still intact.) */
    unsigned lo = 0, hi = r->reg_nsorted;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (r->reg_addr[r->reg_sorted[mid]] <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    i = r->reg_sorted[lo - 1];
    if (a + len > r->reg_addr[i] + r->reg_len[i])
        return -1;
    r->reg_hit = i;
    return (int)i;
}

Py_ssize_t
zc_ring_send1(PyObject *ring, int fd, const void *ptr, size_t len, int fixed, int waitall)
{
    RingObject *r = (RingObject *)ring;
    if (ring_check(r) < 0)
        return -3;
    r->took = -1;
    if (len > 0x7fffffffU) {
        PyErr_SetString(PyExc_ValueError, "a send of more than 2 GiB - 1 bytes");
        return -3;
    }
    if (make_room(r, 1) < 0)
        return -3;
    long long seq = queue_send(r, fd, ptr, len, fixed, waitall, 0);
    if (seq < 0) {
        PyErr_NoMemory();
        return -3;
    }
    int interrupted;
    int rc = submit_and_wait(r, (unsigned long long)seq, (unsigned long long)seq + 1,
                             &interrupted);
    if (rc < 0 && !interrupted)
        return -3;
    int res = consume(r, (unsigned long long)seq);
    if (interrupted) {
        r->took = res > 0 ? res : 0;
        return -2; /* the handler's exception is set */
    }
    if (res < 0) {
        errno = send_errno(res);
        return -1;
    }
    return res;
}

Py_ssize_t
zc_ring_send_linked(PyObject *ring, int fd, const char *const *ptrs, const size_t *lens,
                    const int *fixed, Py_ssize_t n)
{
    RingObject *r = (RingObject *)ring;
    if (ring_check(r) < 0)
        return -3;
    r->took = -1;
    if (n < 1 || n > zc_ring_batch_max(ring)) {
        PyErr_SetString(PyExc_ValueError, "send_many: 1 .. batch_max sends per call");
        return -3;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        if (lens[k] > 0x7fffffffU) {
            PyErr_SetString(PyExc_ValueError, "a send of more than 2 GiB - 1 bytes");
            return -3;
        }
    }
    if (make_room(r, (unsigned)n + 1) < 0)
        return -3;
    unsigned long long first = r->next_seq;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (queue_send(r, fd, ptrs[k], lens[k], fixed != NULL ? fixed[k] : -1, 0,
                       k + 1 < n) < 0) { /* nothing submitted yet: take them back */
            *r->sq_tail -= (unsigned)k;
            for (unsigned long long q = first; q < r->next_seq; q++) {
                r->slots[q & (unsigned long long)(r->cap - 1)].used = 0;
                r->awaiting--;
            }
            r->next_seq = first;
            table_trim(r);
            PyErr_NoMemory();
            return -3;
        }
    }
    int interrupted;
    int rc = submit_and_wait(r, first, first + (unsigned long long)n, &interrupted);
    if (rc < 0 && !interrupted)
        return -3;
    /* in order, each one that went takes the next counter value; a failure cancels the rest of
     * the chain (they report -ECANCELED) */
    Py_ssize_t sent = 0;
    int first_error = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        int res = consume(r, first + (unsigned long long)k);
        if (res > 0 && !first_error)
            sent++;
        else if (!first_error)
            first_error = res < 0 ? send_errno(res) : EIO;
    }
    if (interrupted) {
        r->took = sent;
        return -2;
    }
    if (sent == 0) {
        errno = first_error;
        return -1;
    }
    return sent;
}

/* Read the CQ: 0, or -1 with MemoryError set. Completions the CQ had no room for wait in the
 * kernel's overflow list, and with COOP_TASKRUN notifications wait for task work: an enter first
 * runs them where sq_flags says so. */
static int
refresh(RingObject *r)
{
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
    if (__atomic_load_n(r->sq_flags, __ATOMIC_ACQUIRE)
        & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN))
        sys_enter(r->fd, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0);
    rc = drain_cq(r);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        PyErr_NoMemory();
    return rc;
}

Py_ssize_t
zc_ring_drain(PyObject *ring, zc_ring_range_fn fn, void *arg)
{
    RingObject *r = (RingObject *)ring;
    if (ring_check(r) < 0 || refresh(r) < 0)
        return -1;
    Py_ssize_t i = 0, ranges = 0;
    while (i < r->nready) {
        long long lo = r->ready_value[i], hi = lo;
        int copied = r->ready_copied[i];
        Py_ssize_t j = i + 1;
        while (j < r->nready && r->ready_copied[j] == copied
               && r->ready_value[j] == ((hi + 1) & 0xffffffffLL)) {
            hi = r->ready_value[j];
            j++;
        }
        if (fn(arg, lo, hi, copied) < 0) { /* keep what was not handed out */
            memmove(r->ready_value, r->ready_value + i,
                    (size_t)(r->nready - i) * sizeof(long long));
            memmove(r->ready_copied, r->ready_copied + i, (size_t)(r->nready - i));
            r->nready -= i;
            return -1;
        }
        ranges++;
        i = j;
    }
    r->nready = 0;
    return ranges;
}

/* -- methods ----------------------------------------------------------------------------- */

PyDoc_STRVAR(ring_send_doc,
"send(fd, buffer, fixed_index, waitall) -> int\n\n"
"One SEND_ZC of `buffer` on socket `fd`, from registered buffer `fixed_index` (or -1), waiting\n"
"for its result: the bytes it took (then it took the next counter value), or OSError. If a\n"
"signal handler raises meanwhile, the send is cancelled and its result read, `took` says\n"
"how many bytes it took, and the exception propagates.");

/* The arguments (fd, buffer, fixed_index, waitall) of send and start_send: 0 with `view` held
 * (release it), or -1 with an exception set. */
static int
send_args(const char *usage, PyObject *const *args, Py_ssize_t nargs, int *sockfd,
          Py_buffer *view, int *fixed, int *waitall)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    *sockfd = as_int(args[0]);
    *fixed = as_int(args[2]);
    *waitall = PyObject_IsTrue(args[3]);
    if ((*sockfd == -1 || *fixed == -1 || *waitall < 0) && PyErr_Occurred())
        return -1;
    return PyObject_GetBuffer(args[1], view, PyBUF_SIMPLE);
}

static PyObject *
ring_send(RingObject *r, PyObject *const *args, Py_ssize_t nargs)
{
    int sockfd, fixed, waitall;
    Py_buffer view;
    if (send_args("send(fd, buffer, fixed_index, waitall)", args, nargs, &sockfd, &view, &fixed,
                  &waitall) < 0)
        return NULL;
    Py_ssize_t n = zc_ring_send1((PyObject *)r, sockfd, view.buf, (size_t)view.len, fixed,
                                 waitall);
    PyBuffer_Release(&view);
    if (n == -1)
        return oserror(errno);
    if (n < 0)
        return NULL;
    return PyLong_FromSsize_t(n);
}

PyDoc_STRVAR(ring_send_many_doc,
"send_many(fd, buffers, fixed_indexes, start, stop) -> int\n\n"
"SEND_ZC of buffers[start:stop] on socket `fd` (a datagram socket), linked so that they go in\n"
"order and a failure stops the rest, in one submission (at most `batch_max` of them): the\n"
"number sent, each of which took the next counter value; OSError if the first failed. If a\n"
"signal handler raises meanwhile, the sends are cancelled, `took` is how many went, and the\n"
"exception propagates. fixed_indexes: None, or a registered buffer index (or -1) per buffer.");

static PyObject *
ring_send_many(RingObject *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "send_many(fd, buffers, fixed_indexes, start, stop)");
        return NULL;
    }
    if (ring_check(r) < 0)
        return NULL;
    int sockfd = as_int(args[0]);
    Py_ssize_t start = PyLong_AsSsize_t(args[3]), stop = PyLong_AsSsize_t(args[4]);
    if ((sockfd == -1 || start == -1 || stop == -1) && PyErr_Occurred())
        return NULL;
    if (!PyList_CheckExact(args[1]) || (args[2] != Py_None && !PyList_CheckExact(args[2]))) {
        PyErr_SetString(PyExc_TypeError, "buffers and fixed_indexes must be lists");
        return NULL;
    }
    PyObject *bufs = args[1], *fixed = args[2];
    Py_ssize_t total = PyList_GET_SIZE(bufs);
    if (start < 0 || stop > total || start >= stop
        || (fixed != Py_None && PyList_GET_SIZE(fixed) != total)) {
        PyErr_SetString(PyExc_ValueError, "send_many: bad range");
        return NULL;
    }
    Py_ssize_t n = stop - start, most = zc_ring_batch_max((PyObject *)r);
    if (n > most)
        n = most;
    Py_buffer views[ZC_RING_BATCH_MAX];
    const char *ptrs[ZC_RING_BATCH_MAX];
    size_t lens[ZC_RING_BATCH_MAX];
    int indexes[ZC_RING_BATCH_MAX];
    Py_ssize_t got = 0;
    for (; got < n; got++) {
        indexes[got] = -1;
        if (fixed != Py_None) {
            indexes[got] = as_int(PyList_GET_ITEM(fixed, start + got));
            if (indexes[got] == -1 && PyErr_Occurred())
                break;
        }
        if (PyObject_GetBuffer(PyList_GET_ITEM(bufs, start + got), &views[got],
                               PyBUF_SIMPLE) < 0)
            break;
        ptrs[got] = views[got].buf;
        lens[got] = (size_t)views[got].len;
    }
    Py_ssize_t sent = -3;
    if (got == n)
        sent = zc_ring_send_linked((PyObject *)r, sockfd, ptrs, lens, indexes, n);
    for (Py_ssize_t k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    if (sent == -1)
        return oserror(errno);
    if (sent < 0)
        return NULL;
    return PyLong_FromSsize_t(sent);
}

PyDoc_STRVAR(ring_wait_doc,
"wait(timeout) -> None\n\n"
"Sleep until a completion arrives or `timeout` seconds passed, at most 250 ms (then a signal\n"
"handler's exception propagates); None: 250 ms. Callers loop until their deadline.");

static PyObject *
ring_wait(RingObject *r, PyObject *arg)
{
    if (ring_check(r) < 0)
        return NULL;
    /* at most 250 ms, then Python's signal flag is looked at (see submit_and_wait) */
    double t = 0.25;
    if (arg != Py_None) {
        t = PyFloat_AsDouble(arg);
        if (t == -1.0 && PyErr_Occurred())
            return NULL;
        if (!(t >= 0))
            t = 0;
        if (t > 0.25)
            t = 0.25;
    }
    struct __kernel_timespec ts;
    ts.tv_sec = (long long)t;
    ts.tv_nsec = (long long)((t - (double)ts.tv_sec) * 1e9);
    struct io_uring_getevents_arg ga;
    memset(&ga, 0, sizeof(ga));
    ga.ts = (unsigned long long)(uintptr_t)&ts;
    ga.sigmask_sz = _NSIG / 8;
    if (r->nready > 0 || *r->cq_head != __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE))
        Py_RETURN_NONE;
    int rc, err = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = sys_enter(r->fd, 0, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &ga, sizeof(ga));
    if (rc < 0)
        err = errno;
    Py_END_ALLOW_THREADS
    if (PyErr_CheckSignals() < 0)
        return NULL;
    if (rc < 0 && err != EINTR && err != ETIME && err != EAGAIN && err != EBUSY)
        return oserror(err);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(ring_register_table_doc,
"register_table(n) -> None\n\nA sparse table of `n` registered buffers (IORING_REGISTER_BUFFERS2).");

static PyObject *
ring_register_table(RingObject *r, PyObject *arg)
{
    if (ring_check(r) < 0)
        return NULL;
    unsigned n = (unsigned)PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    struct io_uring_rsrc_register reg;
    memset(&reg, 0, sizeof(reg));
    reg.nr = n;
    reg.flags = IORING_RSRC_REGISTER_SPARSE;
    if (r->reg_cap != 0) {
        PyErr_SetString(PyExc_ValueError, "the ring already has a buffer table");
        return NULL;
    }
    unsigned long long *addr = PyMem_RawCalloc(n ? n : 1, sizeof(unsigned long long));
    unsigned long long *len = PyMem_RawCalloc(n ? n : 1, sizeof(unsigned long long));
    unsigned *sorted = PyMem_RawCalloc(n ? n : 1, sizeof(unsigned));
    if (addr == NULL || len == NULL || sorted == NULL) {
        PyMem_RawFree(addr);
        PyMem_RawFree(len);
        PyMem_RawFree(sorted);
        return PyErr_NoMemory();
    }
    if (sys_register(r->fd, IORING_REGISTER_BUFFERS2, &reg, sizeof(reg)) < 0) {
        PyMem_RawFree(addr);
        PyMem_RawFree(len);
        PyMem_RawFree(sorted);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    r->reg_addr = addr;
    r->reg_len = len;
    r->reg_sorted = sorted;
    r->reg_cap = n;
    Py_RETURN_NONE;
}

/* Set table entry `index` (length 0: unset), keeping reg_sorted, the set entries by address. */
static void
reg_set(RingObject *r, unsigned index, unsigned long long address, unsigned long long length)
{
    unsigned *s = r->reg_sorted, n = r->reg_nsorted, k;
    if (r->reg_len[index] != 0) { /* set before: out of the order first */
        for (k = 0; s[k] != index; k++)
            ;
        memmove(s + k, s + k + 1, (n - k - 1) * sizeof(*s));
        n--;
    }
    r->reg_addr[index] = address;
    r->reg_len[index] = length;
    if (length != 0) { /* in after the entries starting at or below `address` */
        for (k = n; k > 0 && r->reg_addr[s[k - 1]] > address; k--)
            s[k] = s[k - 1];
        s[k] = index;
        n++;
    }
    r->reg_nsorted = n;
}

PyDoc_STRVAR(ring_register_buffer_doc,
"register_buffer(index, address, length) -> None\n\n"
"Register `length` bytes at `address` as buffer `index` of the table: the kernel pins them\n"
"once (charged to RLIMIT_MEMLOCK unless CAP_IPC_LOCK). OSError if refused.");

static PyObject *
ring_register_buffer(RingObject *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "register_buffer(index, address, length)");
        return NULL;
    }
    if (ring_check(r) < 0)
        return NULL;
    unsigned index = (unsigned)PyLong_AsUnsignedLong(args[0]);
    unsigned long long address = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long length = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (index >= r->reg_cap) {
        PyErr_SetString(PyExc_ValueError, "register_buffer: index outside the table");
        return NULL;
    }
    struct iovec iov = {(void *)(uintptr_t)address, (size_t)length};
    struct io_uring_rsrc_update2 up;
    memset(&up, 0, sizeof(up));
    up.offset = index;
    up.data = (unsigned long long)(uintptr_t)&iov;
    up.nr = 1;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sys_register(r->fd, IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof(up));
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    reg_set(r, index, address, length);
    if (index >= r->reg_count)
        r->reg_count = index + 1;
    Py_RETURN_NONE;
}


/* -- sends an event loop drives: submitted without waiting, their results read later ------ */

PyDoc_STRVAR(ring_start_send_doc,
"start_send(fd, buffer, fixed_index, waitall) -> int\n\n"
"Submit one SEND_ZC of `buffer` on socket `fd` (from registered buffer `fixed_index`; -1: the\n"
"registered buffer that holds it, if any) without waiting for it; returns its sequence number\n"
"for result() and cancel(). The caller keeps `buffer`'s memory alive and unchanged until the\n"
"send's notification.");

static PyObject *
ring_start_send(RingObject *r, PyObject *const *args, Py_ssize_t nargs)
{
    int sockfd, fixed, waitall;
    Py_buffer view;
    if (ring_check(r) < 0
        || send_args("start_send(fd, buffer, fixed_index, waitall)", args, nargs, &sockfd, &view,
                     &fixed, &waitall) < 0)
        return NULL;
    void *ptr = view.buf;
    size_t len = (size_t)view.len;
    PyBuffer_Release(&view);
    if (len > 0x7fffffffU) {
        PyErr_SetString(PyExc_ValueError, "a send of more than 2 GiB - 1 bytes");
        return NULL;
    }
    if (make_room(r, 1) < 0)
        return NULL;
    if (fixed < 0) /* a view of registered memory goes out registered too */
        fixed = zc_ring_fixed_index((PyObject *)r, ptr, len);
    long long seq = queue_send(r, sockfd, ptr, len, fixed, waitall, 0);
    if (seq < 0)
        return PyErr_NoMemory();
    if (submit_queued(r) < 0) /* no wait for the result: result() reads it */
        return NULL;
    return PyLong_FromLongLong(seq);
}

static int
seq_arg(RingObject *r, PyObject *arg, unsigned long long *seq)
{
    *seq = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return -1;
    Slot *s = slot_of(r, *seq);
    if (s == NULL || !s->used || (s->state & SLOT_CONSUMED)) {
        PyErr_SetString(PyExc_ValueError, "not a send of this ring whose result is unread");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(ring_result_doc,
"result(seq) -> int | None\n\n"
"The result of send `seq` (from start_send): None while it has none; else the bytes it took\n"
"(then it took the next counter value), or OSError. Read results in submission order.");

static PyObject *
ring_result(RingObject *r, PyObject *arg)
{
    unsigned long long seq;
    if (ring_check(r) < 0 || seq_arg(r, arg, &seq) < 0)
        return NULL;
    if (!(slot_of(r, seq)->state & SLOT_RESULT)) {
        if (refresh(r) < 0)
            return NULL;
        if (!(slot_of(r, seq)->state & SLOT_RESULT))
            Py_RETURN_NONE;
    }
    int res = consume(r, seq);
    if (res < 0)
        return oserror(send_errno(res));
    return PyLong_FromLong(res);
}

PyDoc_STRVAR(ring_cancel_doc,
"cancel(seq) -> int\n\n"
"Cancel send `seq` (from start_send) if it has no result yet, wait for its result (blocking,\n"
"normally at once; at most about 2 s) and return what it took: bytes, 0 if nothing.");

static PyObject *
ring_cancel(RingObject *r, PyObject *arg)
{
    unsigned long long seq;
    if (ring_check(r) < 0 || seq_arg(r, arg, &seq) < 0)
        return NULL;
    if (refresh(r) < 0)
        return NULL;
    cancel_until_results(r, seq, seq + 1);
    if (!(slot_of(r, seq)->state & SLOT_RESULT)) {
        PyErr_SetString(PyExc_OSError, "the cancelled send never reported its result: what it "
                                       "took is unknown");
        return NULL;
    }
    int res = consume(r, seq);
    return PyLong_FromLong(res > 0 ? res : 0);
}

static int
append_range(void *arg, long long lo, long long hi, int copied)
{
    PyObject *t = Py_BuildValue("(LLO)", lo, hi, copied ? Py_True : Py_False);
    if (t == NULL)
        return -1;
    int rc = PyList_Append((PyObject *)arg, t);
    Py_DECREF(t);
    return rc;
}

PyDoc_STRVAR(ring_completions_doc,
"completions() -> list[tuple[int, int, bool]]\n\n"
"The notifications read so far, without waiting, as merged (lo, hi, copied) ranges of counter\n"
"values: what the error queue gives a MSG_ZEROCOPY socket.");

static PyObject *
ring_completions(RingObject *r, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    if (zc_ring_drain((PyObject *)r, append_range, out) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

PyDoc_STRVAR(ring_register_eventfd_doc,
"register_eventfd(fd) -> None\n\nSignal every completion on eventfd `fd`.");

static PyObject *
ring_register_eventfd(RingObject *r, PyObject *arg)
{
    if (ring_check(r) < 0)
        return NULL;
    int efd = as_int(arg);
    if (efd == -1 && PyErr_Occurred())
        return NULL;
    if (sys_register(r->fd, IORING_REGISTER_EVENTFD, &efd, 1) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *
ring_close(RingObject *r, PyObject *unused)
{
    ring_unmap(r);
    Py_RETURN_NONE;
}

static PyObject *
ring_get_fd(RingObject *r, void *c)
{
    return PyLong_FromLong(r->fd);
}

static PyObject *
ring_get_took(RingObject *r, void *c)
{
    if (r->took < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(r->took);
}

static PyObject *
ring_get_awaiting(RingObject *r, void *c)
{
    return PyLong_FromSsize_t(r->awaiting);
}

static PyObject *
ring_get_counter(RingObject *r, void *c)
{
    return PyLong_FromUnsignedLongLong(r->counter & 0xffffffffULL);
}

static PyObject *
ring_get_sends_registered(RingObject *r, void *c)
{
    return PyLong_FromUnsignedLongLong(r->sends_fixed);
}

static PyObject *
ring_get_batch_max(RingObject *r, void *c)
{
    return PyLong_FromSsize_t(zc_ring_batch_max((PyObject *)r));
}

static PyGetSetDef ring_getset[] = {
    {"fd", (getter)ring_get_fd, NULL, "The ring's file descriptor (-1 once closed).", NULL},
    {"took", (getter)ring_get_took, NULL,
     "What the last send ended by an exception took (bytes; datagrams for send_many), or None.",
     NULL},
    {"awaiting", (getter)ring_get_awaiting, NULL, "Sends whose notification has not arrived.",
     NULL},
    {"counter", (getter)ring_get_counter, NULL, "The counter value the next send takes.", NULL},
    {"batch_max", (getter)ring_get_batch_max, NULL, "Most sends one send_many submits.", NULL},
    {"sends_registered", (getter)ring_get_sends_registered, NULL,
     "Sends from a registered buffer that took bytes.", NULL},
    {NULL},
};

static PyMethodDef ring_methods[] = {
    {"send", (PyCFunction)(void (*)(void))ring_send, METH_FASTCALL, ring_send_doc},
    {"send_many", (PyCFunction)(void (*)(void))ring_send_many, METH_FASTCALL,
     ring_send_many_doc},
    {"wait", (PyCFunction)ring_wait, METH_O, ring_wait_doc},
    {"register_table", (PyCFunction)ring_register_table, METH_O, ring_register_table_doc},
    {"register_buffer", (PyCFunction)(void (*)(void))ring_register_buffer, METH_FASTCALL,
     ring_register_buffer_doc},
    {"register_eventfd", (PyCFunction)ring_register_eventfd, METH_O, ring_register_eventfd_doc},
    {"start_send", (PyCFunction)(void (*)(void))ring_start_send, METH_FASTCALL,
     ring_start_send_doc},
    {"result", (PyCFunction)ring_result, METH_O, ring_result_doc},
    {"cancel", (PyCFunction)ring_cancel, METH_O, ring_cancel_doc},
    {"completions", (PyCFunction)ring_completions, METH_NOARGS, ring_completions_doc},
    {"close", (PyCFunction)ring_close, METH_NOARGS, "Close the ring (idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ring(entries=64): an io_uring instance for SEND_ZC sends "
              "(uring.c).",
    .tp_new = ring_new,
    .tp_init = (initproc)ring_init,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_methods = ring_methods,
    .tp_getset = ring_getset,
};

int
zc_uring_init(PyObject *module)
{
    if (PyType_Ready(&RingType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Ring", (PyObject *)&RingType);
}

#else /* no <linux/io_uring.h>: the engine is unavailable (zcnet.lowlevel.uring says why) */

int
zc_uring_init(PyObject *module)
{
    return 0;
}

/* no ring ever exists: TxCore never calls the others */
int
zc_ring_check(PyObject *o)
{
    return 0;
}

Py_ssize_t
zc_ring_took(PyObject *ring)
{
    return -1;
}

Py_ssize_t
zc_ring_batch_max(PyObject *ring)
{
    return 0;
}

int
zc_ring_fixed_index(PyObject *ring, const void *ptr, size_t len)
{
    return -1;
}

Py_ssize_t
zc_ring_send1(PyObject *ring, int fd, const void *ptr, size_t len, int fixed, int waitall)
{
    PyErr_SetString(PyExc_SystemError, "no io_uring in this build");
    return -3;
}

Py_ssize_t
zc_ring_send_linked(PyObject *ring, int fd, const char *const *ptrs, const size_t *lens,
                    const int *fixed, Py_ssize_t n)
{
    PyErr_SetString(PyExc_SystemError, "no io_uring in this build");
    return -3;
}

Py_ssize_t
zc_ring_drain(PyObject *ring, zc_ring_range_fn fn, void *arg)
{
    PyErr_SetString(PyExc_SystemError, "no io_uring in this build");
    return -1;
}

#endif
