/* zcnet._speedups: the compiled per-operation work of zcnet (docs/ARCHITECTURE.md, 'Compiled
 * fast path'). One extension module built from the .c files of this directory; each file owns
 * one responsibility and registers its types and functions through its zc_*_init function. */
#ifndef ZCNET_EXT_H
#define ZCNET_EXT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* PyMemberDef names of Python 3.12+, for 3.11 */
#ifndef Py_T_PYSSIZET
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_T_INT T_INT
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
#endif

/* zcnet.errors.BufferLifetimeError, TimeoutExpired and InvalidCompletionError, looked up once
 * at module init (module.c). */
extern PyObject *zc_BufferLifetimeError;
extern PyObject *zc_TimeoutExpired;
extern PyObject *zc_InvalidCompletionError;

/* module.c: PyErr_GetRaisedException/PyErr_SetRaisedException of Python 3.12+, for 3.11 too
 * (zc_get_raised: the pending exception, normalized with its traceback, or NULL; zc_set_raised
 * steals the reference). */
PyObject *zc_get_raised(void);
void zc_set_raised(PyObject *exc);

/* module.c: intern each `text` into `*slot` (the attribute and method names a part uses):
 * 0, or -1 with an exception set. */
typedef struct {
    PyObject **slot;
    const char *text;
} zc_InternedName;
int zc_intern(const zc_InternedName *names, size_t count);

/* buffer.c: buffers with exact export counts. */
typedef struct {
    PyObject_HEAD
    Py_ssize_t count; /* live members: BufferBase objects not yet finalized */
} zc_PinGroupObject;

typedef struct {
    PyObject_HEAD
    Py_buffer source;        /* our export of the memory's owner; source.obj NULL once finalized */
    char *ptr;
    Py_ssize_t len;
    int readonly;
    int ended;               /* no new exports are given */
    Py_ssize_t exports;      /* Py_buffer exports of this object alive */
    zc_PinGroupObject *group; /* NULL, or the group this object counts in until finalized */
    PyObject *weakreflist;
} zc_BufferBaseObject;

extern PyTypeObject zc_PinGroupType;
extern PyTypeObject zc_BufferBaseType;

/* A new instance of `type` (zc_BufferBaseType or a subclass) over `length` bytes of `source` at
 * `offset`; counted in `group` (may be NULL). New reference, or NULL with an exception set. */
PyObject *zc_buffer_new(PyTypeObject *type, PyObject *source, Py_ssize_t offset,
                        Py_ssize_t length, int readonly, zc_PinGroupObject *group);

/* Drop the object's export of its memory's owner and leave its group (once no export is alive). */
void zc_buffer_finalize(zc_BufferBaseObject *self);

int zc_buffer_init(PyObject *module);

/* views.c: whether a pool lease's memory is still used (end_lease). */
int zc_views_init(PyObject *module);
/* End the lease `buf` (a BufferBase) and release `view` (its own memoryview, or Py_None) if
 * nothing else uses its memory: 1; 0 with nothing changed if something does; -1 with an
 * exception set. */
int zc_end_lease(PyObject *buf, PyObject *view);
/* lease.c: LeaseBase, claim_lease, FlightBook (a pool's leases in flight), ThreadCache and
 * PoolCore (a BufferPool's common cases). */
int zc_lease_init(PyObject *module);
/* The ticket of the lease `lease` is done: BufferPool._end_flight, in C when it can (a new
 * reference to None, or NULL with an exception set). */
PyObject *zc_lease_land(PyObject *lease);
/* BufferPool._begin_flights(leases, tickets) of a batch `sender` sent (lists of equal length),
 * in C when every lease is landed by one PoolCore with no account to move: 1 done; 0 not this
 * case, nothing changed (the Python method decides); -1 with the exception _begin_flights
 * raises (nothing changed when its check refused). */
int zc_pool_begin_flights(PyObject *leases, PyObject *tickets, PyObject *sender);
/* zc_pool_begin_flights of one lease and its ticket (Sender.send of a lease). */
int zc_pool_begin_flight(PyObject *lease, PyObject *ticket, PyObject *sender);
/* Whether `obj` is a compiled lease that is simply leased (not in flight, held back or
 * released): one Sender.send may take it in C. */
int zc_lease_is_leased(PyObject *obj);
/* tracker.c: the zero-copy completion counter (zcnet._core.tracker.CompletionTracker in C). */
typedef struct {
    PyObject *token;   /* NULL once completed */
    Py_ssize_t nbytes;
    PyObject *state;   /* NULL: a single-call token; else its zc_TokenState */
} zc_TrackerSlot;

typedef struct {
    PyObject_HEAD
    long long start;          /* u32: the counter value of sequence number 0 */
    long long n;              /* sequence numbers handed out */
    long long *starts, *ends; /* outstanding sequence numbers: [starts[k], ends[k]), sorted */
    Py_ssize_t nint, capint;
    zc_TrackerSlot *slots;    /* slots[i] is sequence number base + i, for base <= seq < n */
    long long base;
    Py_ssize_t cap;
    Py_ssize_t outstanding;   /* slots with a token */
    PyObject *tokens;         /* dict: multi-call token -> zc_TokenState, not finished */
    Py_ssize_t singles;       /* single-call tokens outstanding */
    char uncertain_tail;
} zc_TrackerObject;

/* What one completion released: finished tokens (owned references) and their copied flags. */
typedef struct {
    long long calls, nbytes;
    PyObject **done;
    char *done_copied;
    Py_ssize_t ndone, cap;
} zc_Released;

extern PyTypeObject zc_TrackerType;
/* record_single for a fresh token: 0, or -1 with an exception set (uncertain tail, memory). */
/* Room for k more single calls, checked before a send so that recording it cannot fail: 0, or -1
 * with an exception set (uncertain tail, memory). Then zc_tracker_record_reserved, k times at
 * most, makes no call and cannot fail. */
int zc_tracker_reserve(zc_TrackerObject *t, Py_ssize_t k);
void zc_tracker_record_reserved(zc_TrackerObject *t, PyObject *token, Py_ssize_t nbytes);
int zc_tracker_record_single(zc_TrackerObject *t, PyObject *token, Py_ssize_t nbytes);
/* Apply [lo, hi]: 0 (rel filled; release with zc_released_clear), -1 with an exception set
 * (InvalidCompletionError before any change, or MemoryError). */
int zc_tracker_complete(zc_TrackerObject *t, long long lo, long long hi, int copied,
                        zc_Released *rel);
void zc_released_clear(zc_Released *rel);
int zc_tracker_init(PyObject *module);

/* txfast.c: the send fast path (Ticket base, the policy's counters, the per-Sender send core). */
int zc_txfast_init(PyObject *module);
/* `ticket` carries `lease` and lands it when done (BufferPool._end_flight): 1 if it is a
 * compiled ticket carrying no lease yet (landed at once if it is already done); 0, with nothing
 * changed, otherwise; -1 with an exception set if landing at once raised what a done callback's
 * BaseException would propagate. */
int zc_ticket_carry(PyObject *ticket, PyObject *lease);
/* rx.c: ChunkBase and the receive calls (TCP_ZEROCOPY_RECEIVE, copy-mode recv). */
int zc_rx_init(PyObject *module);
extern PyTypeObject zc_ZerocopyReceiveType;
/* One TCP_ZEROCOPY_RECEIVE's answer: the chunk over the mapped pages and the chunk over the
 * copied tail (new references, each Py_None when empty) and the kernel's other fields. */
typedef struct {
    PyObject *chunk, *tail;
    unsigned int length, skip, inq;
    int err;
} zc_RxAnswer;
/* ZerocopyReceive.receive in C (`receive_call` a ZerocopyReceive): 0 with `answer` filled, or
 * -1 with an exception set (OSError from the call) and nothing in `answer`. */
int zc_rx_receive(PyObject *receive_call, PyObject *window, Py_ssize_t length, int copybuf,
                  zc_RxAnswer *answer);
/* ZerocopyReceive.recv_copy in C: the chunk (empty at EOF), Py_None when nothing is there
 * (EAGAIN), or NULL with an exception set (OSError from recv). */
PyObject *zc_rx_recv_copy(PyObject *receive_call, PyObject *buffer, Py_ssize_t nbytes);
/* rxfast.c: the Receiver.recv fast path. */
int zc_rxfast_init(PyObject *module);
/* uring.c: the io_uring send ring (absent where <linux/io_uring.h> is). */
int zc_uring_init(PyObject *module);

/* uring.c's ring for TxCore (txfast.c): zcnet._speedups.Ring, the io_uring send engine.
 * zc_ring_send1 sends one buffer (fixed: a registered buffer index or -1; waitall: a stream,
 * whose send the kernel finishes); zc_ring_send_linked up to zc_ring_batch_max datagrams as one
 * linked submission. Both return what went (bytes; datagrams), each positive send having taken
 * the next counter value; -1 with errno set (the send, or the first datagram, failed; nothing
 * taken); -2 with a signal handler's exception set (zc_ring_took: what went before the
 * cancel); -3 with another exception set (the ring is closed or broken, no memory).
 * zc_ring_drain hands the notifications read so far to fn as merged (lo, hi, copied) ranges of
 * counter values: their number, or -1 with an exception (fn's: the rest are kept). */
#define ZC_RING_BATCH_MAX 63
typedef int (*zc_ring_range_fn)(void *arg, long long lo, long long hi, int copied);
int zc_ring_check(PyObject *o);
Py_ssize_t zc_ring_took(PyObject *ring);
Py_ssize_t zc_ring_batch_max(PyObject *ring);
/* the registered buffer holding ptr .. ptr+len, or -1 (O(log n) in the registered buffers) */
int zc_ring_fixed_index(PyObject *ring, const void *ptr, size_t len);
Py_ssize_t zc_ring_send1(PyObject *ring, int fd, const void *ptr, size_t len, int fixed,
                         int waitall);
Py_ssize_t zc_ring_send_linked(PyObject *ring, int fd, const char *const *ptrs,
                               const size_t *lens, const int *fixed, Py_ssize_t n);
Py_ssize_t zc_ring_drain(PyObject *ring, zc_ring_range_fn fn, void *arg);

/* churn.c: MmapChurn, a thread taking the mmap lock for write in a loop (bench only). */
int zc_churn_init(PyObject *module);

#endif
