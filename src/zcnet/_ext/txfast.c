/* The transmit fast path in C (docs/ARCHITECTURE.md, 'Compiled fast path' and 'Transmit').
 *
 * zcnet.sender's pure-Python Sender.send is the reference; this file runs its common case per
 * call without executing Python code, and hands every unusual case to that Python code:
 *
 * - TicketBase: the data of a zcnet.sender.Ticket (nbytes, done, zerocopy, copied, error,
 *   _sender, _view, _callbacks) and its _finish(copied); the Python Ticket subclasses it.
 * - TxCounters: the counters of zcnet._core.txpolicy.TxController (its C base), so the policy
 *   in Python and this file read and write the same integers, with no copy to keep in step.
 * - TxCore: one per Sender. send(buf) is the engine's first step done inline (SendOp.next/sent
 *   for a buffer that one call accepts whole): the threshold test, the ticket, the send(2) with
 *   the GIL released, record_single in the C tracker, the counters and the reap cadence. A
 *   Sender that is in use, unusable, a buffer that is not bytes/bytearray/a contiguous byte
 *   memoryview, a buffer above the one-call size: Sender.send in Python, before anything is
 *   done. A partial send or a send error: the Python engine continues (Sender._drive), as the
 *   Python fast path does. reap() drains the error queue (recvmsg MSG_ERRQUEUE), parses each
 *   sock_extended_err, applies zero-copy ranges to the tracker and finishes tickets; a copied
 *   completion goes through TxController.on_completion (the policy decides the fallback), an
 *   invalid range sets the engine's failure as SendEngine.apply does.
 *
 * The syscall and its recording in the tracker run with no Python code in between (the tracker
 * slot is reserved before the call), so a signal cannot desynchronise the counter: the residual
 * window of the Python implementation ('Transmit: interrupted sends') is closed here. */
#include "zcnet_ext.h"

#include <errno.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <sys/socket.h>

#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif
#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5
#endif
#ifndef SO_EE_CODE_ZEROCOPY_COPIED
#define SO_EE_CODE_ZEROCOPY_COPIED 1
#endif

/* zcnet._core.txpolicy.REAP_EVERY / REAP_SHIFT (tests/test_sender.py checks they agree) */
#define REAP_EVERY 64
#define REAP_SHIFT 17

static PyObject *s_release, *s_callback_failed, *s_drive, *s_drive_buf,
    *s_first_call_interrupted, *s_reap_failed, *s_finish, *s_failure, *s_pool;

/* -- TicketBase ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t nbytes;
    char done;
    char zerocopy;
    PyObject *copied;
    PyObject *error;
    PyObject *sender;
    PyObject *view;
    PyObject *callbacks;
    PyObject *lease; /* a pool lease flying with this ticket (BufferPool._begin_flights): landed
                      * by the pool's _end_flight when the ticket is done, before the callbacks */
    Py_buffer pin; /* the fast path's export of a bytes/bytearray (pin.obj NULL if none): what
                    * _view holds otherwise, without a memoryview object */
} zc_TicketObject;

static PyTypeObject TicketBaseType;

static int
ticket_traverse(zc_TicketObject *t, visitproc visit, void *arg)
{
    Py_VISIT(t->copied);
    Py_VISIT(t->error);
    Py_VISIT(t->sender);
    Py_VISIT(t->view);
    Py_VISIT(t->callbacks);
    Py_VISIT(t->lease);
    Py_VISIT(t->pin.obj);
    return 0;
}

static int
ticket_clear(zc_TicketObject *t)
{
    Py_CLEAR(t->copied);
    Py_CLEAR(t->error);
    Py_CLEAR(t->sender);
    Py_CLEAR(t->view);
    Py_CLEAR(t->callbacks);
    Py_CLEAR(t->lease);
    if (t->pin.obj != NULL)
        PyBuffer_Release(&t->pin);
    return 0;
}

static void
ticket_dealloc(zc_TicketObject *t)
{
    PyObject_GC_UnTrack(t);
    ticket_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

/* A done callback's result `r` (NULL: it raised) as Ticket._run treats it: an Exception is
 * logged (Ticket._callback_failed, naming `fn`) and the others still run; 0, or -1 when a
 * BaseException (or a failure to log) propagates. */
static int
done_callback_result(zc_TicketObject *t, PyObject *fn, PyObject *r)
{
    if (r == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
        PyObject *exc = zc_get_raised();
        r = PyObject_CallMethodObjArgs((PyObject *)t, s_callback_failed, fn, exc, NULL);
        Py_XDECREF(exc);
    }
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The lease flying with `t` goes back to its pool (BufferPool._end_flight, in C when it can:
 * zc_lease_land), the work of Lease._on_done without its frame or a callback list. */
static int
land_lease(zc_TicketObject *t)
{
    PyObject *lease = t->lease;
    t->lease = NULL;
    int rc = done_callback_result(t, lease, zc_lease_land(lease));
    Py_DECREF(lease);
    return rc;
}

/* Ticket._finish: done; copied; the view released; no sender; its lease landed; callbacks run
 * (as Ticket._run). */
static int
ticket_finish(zc_TicketObject *t, int copied)
{
    t->done = 1;
    Py_XSETREF(t->copied, t->zerocopy ? PyBool_FromLong(copied) : Py_NewRef(Py_None));
    if (t->pin.obj != NULL)
        PyBuffer_Release(&t->pin);
    PyObject *view = t->view;
    if (view != NULL && view != Py_None) {
        t->view = NULL;
        PyObject *r = PyObject_CallMethodNoArgs(view, s_release);
        Py_DECREF(view);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    Py_CLEAR(t->sender);
    if (t->lease != NULL && land_lease(t) < 0)
        return -1;
    PyObject *callbacks = t->callbacks;
    if (callbacks != NULL && callbacks != Py_None) {
        t->callbacks = NULL;
        PyObject *fast = PySequence_Fast(callbacks, "callbacks");
        Py_DECREF(callbacks);
        if (fast == NULL)
            return -1;
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
            PyObject *fn = PySequence_Fast_GET_ITEM(fast, i);
            if (done_callback_result(t, fn, PyObject_CallOneArg(fn, (PyObject *)t)) < 0) {
                Py_DECREF(fast);
                return -1;
            }
        }
        Py_DECREF(fast);
    }
    return 0;
}

int
zc_ticket_carry(PyObject *ticket, PyObject *lease)
{
    if (!PyObject_TypeCheck(ticket, &TicketBaseType))
        return 0;
    zc_TicketObject *t = (zc_TicketObject *)ticket;
    if (t->lease != NULL)
        return 0;
    if (t->done) /* reaped before the hand-over (a batch reaps as it goes): landed at once, as
                  * a done callback would run at once, without the callback's frames */
        return done_callback_result(t, lease, zc_lease_land(lease)) < 0 ? -1 : 1;
    t->lease = Py_NewRef(lease);
    return 1;
}

static PyObject *
ticket_finish_meth(zc_TicketObject *t, PyObject *copied)
{
    int c = PyObject_IsTrue(copied);
    if (c < 0 || ticket_finish(t, c) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Finish `token`: a ticket of `fast` (whose _finish is TicketBase's) in C, else its method. */
static int
finish_token(PyObject *token, int copied, PyTypeObject *fast)
{
    if (Py_TYPE(token) == fast)
        return ticket_finish((zc_TicketObject *)token, copied);
    PyObject *r = PyObject_CallMethodOneArg(token, s_finish, copied ? Py_True : Py_False);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static PyMethodDef ticket_methods[] = {
    {"_finish", (PyCFunction)ticket_finish_meth, METH_O,
     "The kernel released the ticket's buffer (copied: it copied some of it)."},
    {NULL},
};

static PyMemberDef ticket_members[] = {
    {"nbytes", Py_T_PYSSIZET, offsetof(zc_TicketObject, nbytes), 0, "Bytes sent."},
    {"done", T_BOOL, offsetof(zc_TicketObject, done), 0,
     "The kernel no longer references the buffer."},
    {"zerocopy", T_BOOL, offsetof(zc_TicketObject, zerocopy), 0,
     "At least one MSG_ZEROCOPY send call carried part of it."},
    {"copied", T_OBJECT, offsetof(zc_TicketObject, copied), 0,
     "The kernel copied some of it after all (None while pending or never zero-copy)."},
    {"error", T_OBJECT, offsetof(zc_TicketObject, error), 0,
     "Set when the connection failed before the ticket completed."},
    {"_sender", T_OBJECT, offsetof(zc_TicketObject, sender), 0, NULL},
    {"_view", T_OBJECT, offsetof(zc_TicketObject, view), 0, NULL},
    {"_callbacks", T_OBJECT, offsetof(zc_TicketObject, callbacks), 0, NULL},
    {"_lease", T_OBJECT, offsetof(zc_TicketObject, lease), 0, NULL},
    {NULL},
};

static PyTypeObject TicketBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.TicketBase",
    .tp_basicsize = sizeof(zc_TicketObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The data of a zcnet.sender.Ticket (its base class in the compiled implementation).",
    .tp_traverse = (traverseproc)ticket_traverse,
    .tp_clear = (inquiry)ticket_clear,
    .tp_dealloc = (destructor)ticket_dealloc,
    .tp_methods = ticket_methods,
    .tp_members = ticket_members,
    /* tp_new: object's (set at init), so object.__new__(Ticket) stays the cheap constructor */
};

/* -- TxCounters ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    long long threshold, bytes_zerocopy, bytes_copied, bytes_plain, bytes_pending,
        sends_zerocopy, sends_plain, completions, notifications, enobufs, enobufs_round,
        enobufs_copies, other_errors, copied_calls, reap_units, handed;
    char zerocopy;
} zc_TxCountersObject;

#define COUNTER(name, doc) \
    {#name, T_LONGLONG, offsetof(zc_TxCountersObject, name), 0, doc}

static PyMemberDef counters_members[] = {
    COUNTER(threshold, "Sends smaller than this are plain copies."),
    COUNTER(bytes_zerocopy, NULL),
    COUNTER(bytes_copied, NULL),
    COUNTER(bytes_plain, NULL),
    COUNTER(bytes_pending, NULL),
    COUNTER(sends_zerocopy, NULL),
    COUNTER(sends_plain, NULL),
    COUNTER(completions, NULL),
    COUNTER(notifications, NULL),
    COUNTER(enobufs, NULL),
    COUNTER(enobufs_round, NULL),
    COUNTER(enobufs_copies, NULL),
    COUNTER(other_errors, NULL),
    COUNTER(copied_calls, NULL),
    COUNTER(reap_units, NULL),
    COUNTER(handed, "Bytes handed to the kernel by sends of this socket's engine."),
    {"zerocopy", T_BOOL, offsetof(zc_TxCountersObject, zerocopy), 0,
     "MSG_ZEROCOPY may be used (False after the fallback to copy mode)."},
    {NULL},
};

static PyTypeObject TxCountersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.TxCounters",
    .tp_basicsize = sizeof(zc_TxCountersObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The counters of zcnet._core.txpolicy.TxController (its base class in the "
              "compiled implementation).",
    .tp_new = PyType_GenericNew,
    .tp_members = counters_members,
};

/* -- TxCore --------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int fd;
    Py_ssize_t single_max;      /* largest buffer the one-call path sends */
    char active;                /* Sender._active: a thread is inside a public method */
    char unusable;              /* Sender._unusable: closed, failed or shut down */
    PyObject *sender;
    PyObject *engine;
    zc_TxCountersObject *ctl;
    zc_TrackerObject *tracker;
    PyTypeObject *ticket_type;  /* zcnet.sender.Ticket */
    PyObject *py_send;          /* type(sender).send: the Python path */
    PyObject *py_send_batch;    /* type(sender).send_batch: the Python path of batch() */
    PyObject *ring;             /* the io_uring engine's zcnet._speedups.Ring, or NULL */
    char waitall;               /* a stream: the ring's sends finish in the kernel */
    PyTypeObject *lease_type;   /* zcnet.pool.Lease (a buffer), or NULL: send_batch takes it */
    PyObject *register_lease;   /* lease -> its slab's registered index or -1 (ring), or NULL */
} zc_TxCoreObject;

static int
core_traverse(zc_TxCoreObject *c, visitproc visit, void *arg)
{
    Py_VISIT(c->sender);
    Py_VISIT(c->engine);
    Py_VISIT(c->ctl);
    Py_VISIT(c->tracker);
    Py_VISIT(c->ticket_type);
    Py_VISIT(c->py_send);
    Py_VISIT(c->py_send_batch);
    Py_VISIT(c->ring);
    Py_VISIT(c->lease_type);
    Py_VISIT(c->register_lease);
    return 0;
}

static int
core_clear(zc_TxCoreObject *c)
{
    Py_CLEAR(c->sender);
    Py_CLEAR(c->engine);
    Py_CLEAR(c->ctl);
    Py_CLEAR(c->tracker);
    Py_CLEAR(c->ticket_type);
    Py_CLEAR(c->py_send);
    Py_CLEAR(c->py_send_batch);
    Py_CLEAR(c->ring);
    Py_CLEAR(c->lease_type);
    Py_CLEAR(c->register_lease);
    return 0;
}

static void
core_dealloc(zc_TxCoreObject *c)
{
    PyObject_GC_UnTrack(c);
    core_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *
core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sender", "fd", "single_max", "engine", "ticket_type", "ring",
                             "waitall", "lease_type", "register_lease", NULL};
    PyObject *sender, *engine, *ticket_type, *ring = Py_None, *lease_type = Py_None;
    PyObject *register_lease = Py_None;
    int fd, waitall = 0;
    Py_ssize_t single_max;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OinOO!|OpOO:TxCore", kwlist, &sender, &fd,
                                     &single_max, &engine, &PyType_Type, &ticket_type, &ring,
                                     &waitall, &lease_type, &register_lease))
        return NULL;
    if (lease_type != Py_None && !PyType_Check(lease_type)) {
        PyErr_SetString(PyExc_TypeError, "lease_type must be a type or None");
        return NULL;
    }
    if (ring != Py_None && !zc_ring_check(ring)) {
        PyErr_SetString(PyExc_TypeError, "ring must be a zcnet._speedups.Ring or None");
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)ticket_type, &TicketBaseType)) {
        PyErr_SetString(PyExc_TypeError, "ticket_type must be a subclass of TicketBase");
        return NULL;
    }
    /* reap() finishes its tickets in C: their _finish must be TicketBase's */
    PyObject *own = PyDict_GetItemWithError(TicketBaseType.tp_dict, s_finish);
    PyObject *got = PyObject_GetAttr(ticket_type, s_finish);
    Py_XDECREF(got);
    if (own == NULL || got != own) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "ticket_type must not override _finish");
        return NULL;
    }
    zc_TxCoreObject *c = (zc_TxCoreObject *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->fd = fd;
    c->single_max = single_max;
    c->ring = ring != Py_None ? Py_NewRef(ring) : NULL;
    c->waitall = (char)waitall;
    c->lease_type = lease_type != Py_None ? (PyTypeObject *)Py_NewRef(lease_type) : NULL;
    c->register_lease = register_lease != Py_None ? Py_NewRef(register_lease) : NULL;
    c->sender = Py_NewRef(sender);
    c->engine = Py_NewRef(engine);
    c->ticket_type = (PyTypeObject *)Py_NewRef(ticket_type);
    c->py_send = PyObject_GetAttrString((PyObject *)Py_TYPE(sender), "send");
    c->py_send_batch = PyObject_GetAttrString((PyObject *)Py_TYPE(sender), "send_batch");
    PyObject *ctl = PyObject_GetAttrString(engine, "ctl");
    PyObject *tracker = PyObject_GetAttrString(engine, "tracker");
    c->ctl = (zc_TxCountersObject *)ctl;
    c->tracker = (zc_TrackerObject *)tracker;
    if (c->py_send == NULL || c->py_send_batch == NULL || ctl == NULL || tracker == NULL) {
        Py_DECREF(c);
        return NULL;
    }
    if (!PyObject_TypeCheck(ctl, &TxCountersType)
        || !PyObject_TypeCheck(tracker, &zc_TrackerType)) {
        PyErr_SetString(PyExc_TypeError,
                        "TxCore needs an engine with the compiled tracker and counters");
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

/* Completions being applied by core_reap. */
typedef struct {
    zc_TxCoreObject *c;
    PyObject *invalid;     /* the first InvalidCompletionError */
    PyObject *pending_exc; /* an exception of a callback: raised once all is applied */
    Py_ssize_t finished;
} zc_Reaping;

/* One completion range (lo .. hi, copied or not): its tickets finished, the counters and the
 * policy told. 0, or -1 with an exception set that ends the reap (an impossible range is kept
 * in st->invalid instead, and the rest are still applied). */
static int
apply_range(zc_Reaping *st, long long lo, long long hi, int copied)
{
    zc_TxCoreObject *c = st->c;
    zc_TxCountersObject *ctl = c->ctl;
    zc_Released rel;
    if (zc_tracker_complete(c->tracker, lo, hi, copied, &rel) < 0) {
        if (!PyErr_ExceptionMatches(zc_InvalidCompletionError))
            return -1;
        PyObject *exc = zc_get_raised();
        if (st->invalid == NULL)
            st->invalid = exc;
        else
            Py_DECREF(exc);
        return 0;
    }
    if (!copied) { /* TxController.on_completion, not copied: counters only */
        ctl->notifications++;
        ctl->completions += rel.calls;
        ctl->bytes_pending -= rel.nbytes;
        ctl->bytes_zerocopy += rel.nbytes;
    } else { /* the policy decides the fallback */
        PyObject *res = PyObject_CallMethod((PyObject *)ctl, "on_completion", "LLO",
                                            rel.calls, rel.nbytes, Py_True);
        if (res == NULL) {
            zc_released_clear(&rel);
            return -1;
        }
        Py_DECREF(res);
    }
    for (Py_ssize_t i = 0; i < rel.ndone; i++) {
        if (finish_token(rel.done[i], rel.done_copied[i], c->ticket_type) < 0
            && st->pending_exc == NULL)
            st->pending_exc = zc_get_raised();
        PyErr_Clear();
    }
    st->finished += rel.ndone;
    zc_released_clear(&rel);
    return 0;
}

static int
ring_range(void *arg, long long lo, long long hi, int copied)
{
    return apply_range((zc_Reaping *)arg, lo, hi, copied);
}

/* The completions, read and applied: from the error queue, or on the io_uring engine from the
 * ring's notifications. 0 (counts set), or -1 with an exception set (an OSError of recvmsg,
 * the first InvalidCompletionError, or an exception of a done callback). */
static int
core_reap(zc_TxCoreObject *c, Py_ssize_t *messages_out, Py_ssize_t *finished_out)
{
    zc_TxCountersObject *ctl = c->ctl;
    Py_ssize_t messages = 0;
    zc_Reaping st = {c, NULL, NULL, 0};
    ctl->reap_units = 0;
    union {
        char buf[256]; /* as zcnet.lowlevel.errqueue: sock_extended_err + offender fit easily */
        struct cmsghdr align;
    } control;
    if (c->ring != NULL) {
        messages = zc_ring_drain(c->ring, ring_range, &st);
        if (messages < 0)
            goto fail;
    }
    while (c->ring == NULL) {
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof(control.buf);
        ssize_t r = recvmsg(c->fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        messages++;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
            if (!((cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR)
                  || (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
                continue;
            if (cm->cmsg_len < CMSG_LEN(sizeof(struct sock_extended_err)))
                continue;
            struct sock_extended_err ee;
            memcpy(&ee, CMSG_DATA(cm), sizeof(ee));
            if (ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY || ee.ee_errno != 0) {
                ctl->other_errors++; /* TxController.on_other_error */
                continue;
            }
            if (apply_range(&st, ee.ee_info, ee.ee_data,
                            (ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) != 0) < 0)
                goto fail;
        }
    }
    if (st.pending_exc != NULL) {
        Py_XDECREF(st.invalid);
        zc_set_raised(st.pending_exc);
        return -1;
    }
    if (st.invalid != NULL) { /* SendEngine.apply: the engine refuses further sends */
        PyObject *failure = PyObject_GetAttr(c->engine, s_failure);
        if (failure == NULL) {
            Py_DECREF(st.invalid);
            return -1;
        }
        int unset = failure == Py_None;
        Py_DECREF(failure);
        if (unset && PyObject_SetAttr(c->engine, s_failure, st.invalid) < 0) {
            Py_DECREF(st.invalid);
            return -1;
        }
        zc_set_raised(st.invalid);
        return -1;
    }
    *messages_out = messages;
    *finished_out = st.finished;
    return 0;
fail:
    if (st.pending_exc != NULL) {
        PyErr_Clear();
        zc_set_raised(st.pending_exc);
    }
    Py_XDECREF(st.invalid);
    return -1;
}

static PyObject *
core_reap_meth(zc_TxCoreObject *c, PyObject *unused)
{
    Py_ssize_t messages, finished;
    if (core_reap(c, &messages, &finished) < 0)
        return NULL;
    return Py_BuildValue("nn", messages, finished);
}

static PyObject *s_release_when_done, *s_begin_flights;

/* The registered-buffer index of `len` bytes at `ptr` on the ring (-1: none), registering the
 * slab of the lease `buf` first if it is one (register_lease: the first send of its slab):
 * 0, or -1 with an exception set. */
static int
fixed_index_of(zc_TxCoreObject *c, PyObject *buf, int is_lease, const void *ptr, size_t len,
               int *fixed)
{
    *fixed = zc_ring_fixed_index(c->ring, ptr, len);
    if (*fixed >= 0 || !is_lease || c->register_lease == NULL)
        return 0;
    PyObject *r = PyObject_CallOneArg(c->register_lease, buf);
    if (r == NULL)
        return -1;
    long index = PyLong_AsLong(r);
    Py_DECREF(r);
    if (index == -1 && PyErr_Occurred())
        return -1;
    if (index < 0) { /* refused, or the table is full: for good (SlabRegistry.index_of), so
                      * later leases of other slabs are not asked about again */
        Py_CLEAR(c->register_lease);
        return 0;
    }
    *fixed = zc_ring_fixed_index(c->ring, ptr, len);
    return 0;
}

/* Sender._send_lease's last step, also after a failed send: `lease` goes back to its pool when
 * `ticket` is done (Lease.release_when_done; in C when it can, zc_pool_begin_flight). Returns
 * `result` (stolen), or NULL with the hand-over's exception when only it raised (if the send
 * raised too, the send's exception goes on and the hand-over's is reported as unraisable). */
static PyObject *
lease_handed_over(zc_TxCoreObject *c, PyObject *lease, PyObject *ticket, PyObject *result)
{
    PyObject *raised = result == NULL ? zc_get_raised() : NULL;
    int done = zc_pool_begin_flight(lease, ticket, c->sender);
    if (done == 0) { /* another pool's lease, an account to move: the Python method */
        PyObject *r = PyObject_CallMethodOneArg(lease, s_release_when_done, ticket);
        done = r == NULL ? -1 : 1;
        Py_XDECREF(r);
    }
    if (done < 0) {
        if (raised != NULL)
            PyErr_WriteUnraisable(lease);
        else
            Py_CLEAR(result);
    }
    if (raised != NULL)
        zc_set_raised(raised);
    return result;
}

static PyObject *
python_path(zc_TxCoreObject *c, PyObject *buf)
{
    return PyObject_CallFunctionObjArgs(c->py_send, c->sender, buf, NULL);
}

/* One send(2) with the GIL released; EINTR retried after the signal handlers ran. Returns the
 * bytes sent, -1 with errno set (a send error, no exception), or -2 with the handler's
 * exception set. */
static Py_ssize_t
send_once(int fd, const void *ptr, Py_ssize_t len, int flags)
{
    for (;;) {
        ssize_t n;
        int err;
        Py_BEGIN_ALLOW_THREADS
        n = send(fd, ptr, (size_t)len, flags);
        err = errno;
        Py_END_ALLOW_THREADS
        if (n >= 0)
            return n;
        if (err != EINTR) {
            errno = err;
            return -1;
        }
        if (PyErr_CheckSignals() < 0)
            return -2;
    }
}

/* Not a memoryview, or one of one dimension of single bytes (slices of it are byte offsets, as
 * Sender._drive expects; the Python path casts other views first). */
static int
bytes_view(PyObject *buf)
{
    if (!PyMemoryView_Check(buf))
        return 1;
    Py_buffer *b = PyMemoryView_GET_BUFFER(buf);
    return b->ndim == 1 && b->itemsize == 1;
}

static PyObject *
new_ticket(zc_TxCoreObject *c, Py_ssize_t nbytes)
{
    zc_TicketObject *t = (zc_TicketObject *)c->ticket_type->tp_alloc(c->ticket_type, 0);
    if (t != NULL)
        t->nbytes = nbytes;
    return (PyObject *)t;
}

/* After the first call did not simply succeed: the Python engine goes on (Sender._drive or
 * _drive_buf with the call's error or partial count), or settles an interruption
 * (_first_call_interrupted with what the call took, then the exception goes on). `n` as
 * send_once or zc_ring_send1 returned it; -3 (the ring's exception): an OSError goes to the
 * engine as the call's error, anything else propagates. */
static PyObject *
continue_in_python(zc_TxCoreObject *c, PyObject *ticket, PyObject *mv, PyObject *buf,
                   Py_ssize_t n, Py_ssize_t took_bytes)
{
    if (n == -3 && !PyErr_ExceptionMatches(PyExc_OSError))
        return NULL;
    if (n == -2) {
        PyObject *exc = zc_get_raised();
        PyObject *size = PyLong_FromSsize_t(((zc_TicketObject *)ticket)->nbytes);
        PyObject *took = PyLong_FromSsize_t(took_bytes);
        PyObject *r = size == NULL || took == NULL ? NULL : PyObject_CallMethodObjArgs(
            c->sender, s_first_call_interrupted, ticket, size, exc, took, NULL);
        Py_XDECREF(took);
        Py_XDECREF(size);
        if (r == NULL) {
            Py_DECREF(exc);
            return NULL;
        }
        Py_DECREF(r);
        zc_set_raised(exc);
        return NULL;
    }
    PyObject *error = Py_None, *first = NULL, *r = NULL;
    if (n == -1 || n == -3) {
        if (n == -1)
            PyErr_SetFromErrno(PyExc_OSError);
        error = zc_get_raised();
        first = PyLong_FromLong(0);
    } else {
        Py_INCREF(error);
        first = PyLong_FromSsize_t(n);
    }
    if (first != NULL)
        r = PyObject_CallMethodObjArgs(c->sender, mv != NULL ? s_drive : s_drive_buf, ticket,
                                       mv != NULL ? mv : buf, error, first, NULL);
    Py_DECREF(error);
    Py_XDECREF(first);
    return r;
}

static PyObject *
core_send(zc_TxCoreObject *c, PyObject *buf)
{
    if (c->unusable || c->active) /* Python raises what it means */
        return python_path(c, buf);
    PyTypeObject *tb = Py_TYPE(buf);
    /* a pool lease is sent as its buffer, then handed over (Sender._send_lease); one in flight,
     * held back or released takes the Python path, which raises what it means */
    int is_lease = c->lease_type != NULL && tb == c->lease_type;
    if (tb != &PyBytes_Type && tb != &PyByteArray_Type && tb != &PyMemoryView_Type && !is_lease)
        return python_path(c, buf);
    if (is_lease && !zc_lease_is_leased(buf))
        return python_path(c, buf);
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE) < 0) { /* not contiguous, released... */
        PyErr_Clear();
        return python_path(c, buf);
    }
    if (!bytes_view(buf)) { /* Python sends it through a cast to bytes */
        PyBuffer_Release(&view);
        return python_path(c, buf);
    }
    zc_TxCountersObject *ctl = c->ctl;
    Py_ssize_t nbytes = view.len;
    PyObject *ticket = NULL, *mv = NULL, *result = NULL;
    int zc = ctl->zerocopy && nbytes >= ctl->threshold && nbytes;
    if (zc) {
        if (nbytes > c->single_max || zc_tracker_reserve(c->tracker, 1) < 0) {
            PyErr_Clear(); /* the engine's chunked send; an uncertain tail: Python decides */
            PyBuffer_Release(&view);
            return python_path(c, buf);
        }
        ticket = new_ticket(c, nbytes);
        if (ticket == NULL)
            goto out;
        zc_TicketObject *t = (zc_TicketObject *)ticket;
        t->zerocopy = 1;
        t->sender = Py_NewRef(c->sender);
        if (tb == &PyMemoryView_Type) {
            /* a view of its own, as the Python path (the caller may release theirs) */
            mv = PyMemoryView_FromObject(buf);
            if (mv == NULL)
                goto out;
            t->view = Py_NewRef(mv);
        } else { /* the ticket keeps our export until it is done */
            t->pin = view;
            view.obj = NULL;
        }
    }
    const void *ptr = zc && mv == NULL ? ((zc_TicketObject *)ticket)->pin.buf : view.buf;
    c->active = 1; /* (registering a lease's slab runs Python code) */
    int fixed = -1;
    if (zc && c->ring != NULL
        && fixed_index_of(c, buf, is_lease, ptr, (size_t)nbytes, &fixed) < 0) {
        c->active = 0;
        goto out; /* nothing sent: the lease stays the caller's */
    }
    Py_ssize_t n, took = 0; /* (EINTR from send(2): nothing was sent) */
    if (zc && c->ring != NULL) { /* the io_uring engine: one SEND_ZC */
        n = zc_ring_send1(c->ring, c->fd, ptr, (size_t)nbytes, fixed, c->waitall);
        if (n == -2)
            took = zc_ring_took(c->ring);
    } else {
        n = send_once(c->fd, ptr, nbytes, zc ? MSG_ZEROCOPY : 0);
    }
    if (zc && n == nbytes) /* at once: no Python code runs between the call and this */
        zc_tracker_record_reserved(c->tracker, ticket, nbytes);
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
        view.obj = NULL;
    }
    if (n != nbytes) {
        PyObject *raised = n < -1 ? zc_get_raised() : NULL; /* kept aside meanwhile */
        if (zc && mv == NULL) { /* the Python engine goes on with a memoryview, as its own */
            zc_TicketObject *t = (zc_TicketObject *)ticket;
            mv = PyMemoryView_FromObject(buf);
            if (mv == NULL) {
                Py_XDECREF(raised);
                goto inactive;
            }
            t->view = Py_NewRef(mv);
            PyBuffer_Release(&t->pin);
        }
        if (ticket == NULL) {
            ticket = new_ticket(c, nbytes);
            if (ticket == NULL) {
                Py_XDECREF(raised);
                goto inactive;
            }
            ((zc_TicketObject *)ticket)->done = 1;
        }
        if (raised != NULL)
            zc_set_raised(raised);
        result = continue_in_python(c, ticket, mv, buf, n, took);
        goto inactive;
    }
    ctl->handed += nbytes;
    if (zc) { /* TxController.on_zerocopy_sent and reap_due */
        ctl->sends_zerocopy++;
        ctl->bytes_pending += nbytes;
        ctl->enobufs_round = ctl->enobufs_copies = 0;
        ctl->reap_units += 1 + (nbytes >> REAP_SHIFT);
        if (ctl->reap_units >= REAP_EVERY) {
            Py_ssize_t messages, finished;
            if (core_reap(c, &messages, &finished) < 0) {
                PyObject *exc = zc_get_raised();
                PyObject *r = PyObject_CallMethodOneArg(c->sender, s_reap_failed, exc);
                Py_DECREF(exc);
                Py_XDECREF(r); /* it raises */
                goto inactive;
            }
        }
    } else {
        ctl->sends_plain++;
        ctl->bytes_plain += nbytes;
        ticket = new_ticket(c, nbytes);
        if (ticket == NULL)
            goto inactive;
        ((zc_TicketObject *)ticket)->done = 1;
    }
    result = Py_NewRef(ticket);
inactive:
    if (is_lease && ticket != NULL)
        result = lease_handed_over(c, buf, ticket, result);
    c->active = 0;
out:
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    Py_XDECREF(mv);
    Py_XDECREF(ticket);
    return result;
}

/* -- send_batch ----------------------------------------------------------------------------- */

#define BATCH_MAX 64 /* zcnet.sender.BATCH_MAX: datagrams per sendmmsg(2) */

static PyObject *s_batch_failed, *s_batch_unsent, *s_send_batch_udp;

/* Datagrams from `pos` on were not handed to the kernel: drop the fast path's pins (their tickets
 * are not done), let Sender._batch_unsent mark them, and re-raise `exc` (stolen). */
static PyObject *
batch_stopped(zc_TxCoreObject *c, PyObject *tickets, Py_ssize_t pos, PyObject *exc)
{
    for (Py_ssize_t i = pos; i < PyList_GET_SIZE(tickets); i++) {
        zc_TicketObject *t = (zc_TicketObject *)PyList_GET_ITEM(tickets, i);
        if (t->pin.obj != NULL)
            PyBuffer_Release(&t->pin);
    }
    PyObject *p = PyLong_FromSsize_t(pos);
    PyObject *r = p == NULL ? NULL : PyObject_CallMethodObjArgs(c->sender, s_batch_unsent,
                                                                tickets, p, exc, NULL);
    Py_XDECREF(p);
    if (r == NULL) {
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(r);
    zc_set_raised(exc);
    return NULL;
}

/* Datagrams pos .. pos+sent-1 went (sendmmsg or the ring), each having taken the next counter
 * value: recorded at once, with no Python code in between (sendmmsg.py), and counted
 * (TxController.on_zerocopy_batch). Returns their bytes. */
static long long
record_batch(zc_TxCoreObject *c, PyObject *tickets, const size_t *lens, Py_ssize_t pos, int sent)
{
    long long nb = 0;
    for (int j = 0; j < sent; j++) {
        zc_tracker_record_reserved(c->tracker, PyList_GET_ITEM(tickets, pos + j),
                                   (Py_ssize_t)lens[pos + j]);
        nb += (long long)lens[pos + j];
    }
    zc_TxCountersObject *ctl = c->ctl;
    ctl->handed += nb;
    ctl->sends_zerocopy += sent;
    ctl->bytes_pending += nb;
    return nb;
}

/* The leases among the first `upto` datagrams of a batch that was sent (or tried): each goes back
 * to its pool when its ticket is done (Lease.release_when_done, as Sender._send_batch_udp does in
 * its finally). All at once through the first lease's pool (BufferPool._begin_flights: one
 * account move, one lock; in C when it can, zc_pool_begin_flights); if that refuses (leases of
 * several pools, one lease twice), one at a time, so that each that can go does. An exception of
 * one is raised unless another is already on its way. */
static void
leases_in_flight(PyObject *seq, PyObject *tickets, const char *is_lease, Py_ssize_t upto,
                 PyObject *sender)
{
    PyObject *raised = zc_get_raised();
    PyObject *leases = PyList_New(0), *their = PyList_New(0), *r = NULL;
    if (leases != NULL && their != NULL) {
        for (Py_ssize_t i = 0; i < upto; i++) {
            if (is_lease[i] && (PyList_Append(leases, PySequence_Fast_GET_ITEM(seq, i)) < 0
                                || PyList_Append(their, PyList_GET_ITEM(tickets, i)) < 0))
                goto one_by_one;
        }
        if (PyList_GET_SIZE(leases) == 0) {
            r = Py_NewRef(Py_None);
            goto out;
        }
        int in_c = zc_pool_begin_flights(leases, their, sender);
        if (in_c > 0) {
            r = Py_NewRef(Py_None);
            goto out;
        }
        if (in_c < 0)
            goto one_by_one;
        PyObject *pool = PyObject_GetAttr(PyList_GET_ITEM(leases, 0), s_pool);
        if (pool != NULL) {
            r = PyObject_CallMethodObjArgs(pool, s_begin_flights, leases, their, NULL);
            Py_DECREF(pool);
        }
    }
one_by_one:
    if (r == NULL) {
        PyErr_Clear();
        for (Py_ssize_t i = 0; i < upto; i++) {
            if (!is_lease[i])
                continue;
            PyObject *one = PyObject_CallMethodOneArg(PySequence_Fast_GET_ITEM(seq, i),
                                                      s_release_when_done,
                                                      PyList_GET_ITEM(tickets, i));
            if (one != NULL)
                Py_DECREF(one);
            else if (raised == NULL)
                raised = zc_get_raised();
            else
                PyErr_WriteUnraisable(PySequence_Fast_GET_ITEM(seq, i));
        }
    }
out:
    Py_XDECREF(r);
    Py_XDECREF(leases);
    Py_XDECREF(their);
    if (raised != NULL)
        zc_set_raised(raised);
}

/* Sender._send_batch_udp's common case: every element a bytes/bytearray/contiguous memoryview
 * or a pool lease, at or above the threshold, while zero-copy is on. On the io_uring engine each
 * datagram in a registered buffer goes out as a fixed-buffer send (a lease's slab is
 * registered on first use, through register_lease). Returns the tickets, or None (nothing done)
 * for any other batch: the Python path sends it. */
static PyObject *
core_send_batch(zc_TxCoreObject *c, PyObject *bufs)
{
    zc_TxCountersObject *ctl = c->ctl;
    if (!ctl->zerocopy || c->tracker->uncertain_tail)
        Py_RETURN_NONE;
    PyObject *seq = PySequence_Fast(bufs, "send_batch needs a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    PyObject *tickets = PyList_New(k);
    size_t n1 = (size_t)(k ? k : 1);
    const char **ptrs = PyMem_Malloc(n1 * sizeof(char *));
    size_t *lens = PyMem_Malloc(n1 * sizeof(size_t));
    int *fixed = PyMem_Malloc(n1 * sizeof(int));
    char *is_lease = PyMem_Calloc(n1, 1);
    Py_ssize_t lease_upto = 0; /* leases before this position are handed over when done */
    PyObject *result = NULL;
    if (tickets == NULL || ptrs == NULL || lens == NULL || fixed == NULL || is_lease == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < k; i++) { /* everything checked before anything is sent */
        PyObject *buf = PySequence_Fast_GET_ITEM(seq, i);
        PyTypeObject *tb = Py_TYPE(buf);
        Py_buffer view;
        is_lease[i] = c->lease_type != NULL && tb == c->lease_type;
        if ((tb != &PyBytes_Type && tb != &PyByteArray_Type && tb != &PyMemoryView_Type
             && !is_lease[i])
            || PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            goto python;
        }
        if (view.len < ctl->threshold || view.len == 0 || !bytes_view(buf)) {
            PyBuffer_Release(&view);
            goto python;
        }
        zc_TicketObject *t = (zc_TicketObject *)new_ticket(c, view.len);
        if (t == NULL) {
            PyBuffer_Release(&view);
            goto out;
        }
        PyList_SET_ITEM(tickets, i, (PyObject *)t);
        t->zerocopy = 1;
        t->sender = Py_NewRef(c->sender);
        if (tb == &PyMemoryView_Type) { /* a view of its own, as the Python path */
            PyBuffer_Release(&view);
            PyObject *mv = PyMemoryView_FromObject(buf);
            if (mv == NULL)
                goto out;
            t->view = mv;
            ptrs[i] = PyMemoryView_GET_BUFFER(mv)->buf;
        } else {
            t->pin = view;
            ptrs[i] = view.buf;
        }
        lens[i] = (size_t)t->nbytes;
        fixed[i] = -1;
        if (c->ring != NULL
            && fixed_index_of(c, buf, is_lease[i], ptrs[i], lens[i], &fixed[i]) < 0)
            goto out;
    }
    lease_upto = k; /* from here on every lease is in flight, sent or not */
    Py_ssize_t pos = 0;
    while (pos < k) {
        if (!ctl->zerocopy) { /* copy mode since (a copied completion, ENOBUFS): Python */
            lease_upto = pos; /* (it hands the rest's leases over itself) */
            PyObject *rest = PySequence_GetSlice(seq, pos, k);
            PyObject *more = rest == NULL ? NULL : PyObject_CallMethodOneArg(
                c->sender, s_send_batch_udp, rest);
            Py_XDECREF(rest);
            if (more == NULL) {
                PyObject *exc = zc_get_raised();
                batch_stopped(c, tickets, pos, exc);
                goto out;
            }
            for (Py_ssize_t i = pos; i < k; i++) {
                zc_TicketObject *t = (zc_TicketObject *)PyList_GET_ITEM(tickets, i);
                if (t->pin.obj != NULL)
                    PyBuffer_Release(&t->pin);
            }
            int r = PyList_SetSlice(tickets, pos, k, more);
            Py_DECREF(more);
            if (r < 0)
                goto out;
            break;
        }
        struct mmsghdr msgs[BATCH_MAX];
        struct iovec iov[BATCH_MAX];
        Py_ssize_t most = c->ring != NULL ? zc_ring_batch_max(c->ring) : BATCH_MAX;
        unsigned int cnt = (unsigned int)(k - pos < most ? k - pos : most);
        /* room to record them, made right before the call (a reap may have used it) */
        if (zc_tracker_reserve(c->tracker, cnt) < 0) {
            batch_stopped(c, tickets, pos, zc_get_raised());
            goto out;
        }
        int sent, err = 0;
        PyObject *stopped = NULL; /* the ring's exception: the rest of the batch is not sent */
        if (c->ring != NULL) { /* the io_uring engine: one linked submission */
            Py_ssize_t got = zc_ring_send_linked(c->ring, c->fd, ptrs + pos, lens + pos,
                                                 fixed + pos, (Py_ssize_t)cnt);
            err = errno;
            sent = (int)got;
            if (got < -1) { /* the ones that went before it took counter values: record them */
                stopped = zc_get_raised();
                sent = got == -2 ? (int)zc_ring_took(c->ring) : 0;
            }
        } else {
            memset(msgs, 0, cnt * sizeof(struct mmsghdr));
            for (unsigned int j = 0; j < cnt; j++) {
                iov[j].iov_base = (void *)ptrs[pos + j];
                iov[j].iov_len = lens[pos + j];
                msgs[j].msg_hdr.msg_iov = &iov[j];
                msgs[j].msg_hdr.msg_iovlen = 1;
            }
            Py_BEGIN_ALLOW_THREADS
            sent = sendmmsg(c->fd, msgs, cnt, MSG_ZEROCOPY);
            err = errno;
            Py_END_ALLOW_THREADS
        }
        if (stopped != NULL) { /* the ones that went are recorded, the rest are unsent */
            record_batch(c, tickets, lens, pos, sent);
            pos += sent;
            batch_stopped(c, tickets, pos, stopped);
            goto out;
        }
        if (sent > 0) {
            long long nb = record_batch(c, tickets, lens, pos, sent);
            pos += sent;
            ctl->enobufs_round = ctl->enobufs_copies = 0;
            ctl->reap_units += sent + (nb >> REAP_SHIFT);
            if (ctl->reap_units >= REAP_EVERY) {
                Py_ssize_t messages, finished;
                if (core_reap(c, &messages, &finished) < 0) {
                    PyObject *exc = zc_get_raised();
                    PyObject *r = PyObject_CallMethodOneArg(c->sender, s_reap_failed, exc);
                    Py_DECREF(exc);
                    Py_XDECREF(r); /* it raises */
                    batch_stopped(c, tickets, pos, zc_get_raised());
                    goto out;
                }
            }
            continue;
        }
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                batch_stopped(c, tickets, pos, zc_get_raised());
                goto out;
            }
            continue;
        }
        /* the datagram at pos failed: the engine sends it alone (Sender._batch_failed) */
        zc_TicketObject *t = (zc_TicketObject *)PyList_GET_ITEM(tickets, pos);
        if (t->view == NULL) {
            PyObject *mv = PyMemoryView_FromObject(PySequence_Fast_GET_ITEM(seq, pos));
            if (mv == NULL) {
                batch_stopped(c, tickets, pos, zc_get_raised());
                goto out;
            }
            t->view = mv;
            PyBuffer_Release(&t->pin);
        }
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        PyObject *exc = zc_get_raised();
        PyObject *r = PyObject_CallMethodObjArgs(c->sender, s_batch_failed, (PyObject *)t,
                                                 t->view, exc, NULL);
        Py_DECREF(exc);
        if (r == NULL) {
            batch_stopped(c, tickets, pos, zc_get_raised());
            goto out;
        }
        Py_DECREF(r);
        pos++;
    }
    result = Py_NewRef(tickets);
    goto out;
python:
    result = Py_NewRef(Py_None);
out:
    if (lease_upto > 0)
        leases_in_flight(seq, tickets, is_lease, lease_upto, c->sender);
    if (result != NULL && PyErr_Occurred())
        Py_CLEAR(result); /* a lease's hand-over failed */
    PyMem_Free(ptrs);
    PyMem_Free(lens);
    PyMem_Free(fixed);
    PyMem_Free(is_lease);
    Py_XDECREF(tickets); /* unsent tickets release their pins as they go */
    Py_DECREF(seq);
    return result;
}

/* Sender.send_batch on UDP: the common case (core_send_batch) under the re-entrancy flag, without
 * a Python frame; anything else (closed, in use, a batch the fast path leaves) goes to the Python
 * method, which checks and raises as documented. */
static PyObject *
core_batch(zc_TxCoreObject *c, PyObject *bufs)
{
    if (!c->unusable && !c->active && !c->waitall) {
        c->active = 1;
        PyObject *r = core_send_batch(c, bufs);
        c->active = 0;
        if (r != Py_None)
            return r; /* the tickets, or NULL with the exception */
        Py_DECREF(r); /* nothing was done */
    }
    return PyObject_CallFunctionObjArgs(c->py_send_batch, c->sender, bufs, NULL);
}

static PyMemberDef core_members[] = {
    {"active", T_BOOL, offsetof(zc_TxCoreObject, active), 0,
     "Sender._active: a thread is inside a public method (ConcurrentUseError)."},
    {"unusable", T_BOOL, offsetof(zc_TxCoreObject, unusable), 0,
     "Sender._unusable: closed, failed or shut down."},
    {NULL},
};

static PyMethodDef core_methods[] = {
    {"send", (PyCFunction)core_send, METH_O,
     "send(buf)\n--\n\nSend all of buf (one datagram on UDP) and return its Ticket (the compiled "
     "fast path of zcnet.sender.Sender.send, which documents it)."},
    {"batch", (PyCFunction)core_batch, METH_O,
     "batch(bufs)\n--\n\nSender.send_batch on UDP (its compiled fast path; the Python method "
     "documents it and runs whatever this leaves)."},
    {"reap", (PyCFunction)core_reap_meth, METH_NOARGS,
     "Read the error queue and apply it: (messages read, tickets completed)."},
    {"send_batch", (PyCFunction)core_send_batch, METH_O,
     "send_batch(bufs)\n--\n\nThe common case of Sender._send_batch_udp (zero-copy datagrams "
     "of plain buffers): the tickets, or None when the Python path must send the batch."},
    {NULL},
};

static PyTypeObject TxCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.TxCore",
    .tp_basicsize = sizeof(zc_TxCoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "TxCore(sender, fd, single_max, engine, ticket_type)\n--\n\nThe compiled send "
              "fast path and completion reaping of one zcnet.sender.Sender.",
    .tp_new = core_new,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = core_methods,
    .tp_members = core_members,
};

int
zc_txfast_init(PyObject *module)
{
    static const zc_InternedName names[] = {
        {&s_release, "release"},
        {&s_callback_failed, "_callback_failed"},
        {&s_drive, "_drive"}, {&s_drive_buf, "_drive_buf"},
        {&s_first_call_interrupted, "_first_call_interrupted"},
        {&s_reap_failed, "_reap_failed"}, {&s_batch_failed, "_batch_failed"},
        {&s_batch_unsent, "_batch_unsent"}, {&s_send_batch_udp, "_send_batch_udp"},
        {&s_release_when_done, "release_when_done"},
        {&s_begin_flights, "_begin_flights"},
        {&s_pool, "_pool"},
        {&s_finish, "_finish"}, {&s_failure, "failure"},
    };
    if (zc_intern(names, sizeof(names) / sizeof(names[0])) < 0)
        return -1;
    TicketBaseType.tp_new = PyBaseObject_Type.tp_new;
    if (PyType_Ready(&TicketBaseType) < 0 || PyType_Ready(&TxCountersType) < 0
        || PyType_Ready(&TxCoreType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "TicketBase", (PyObject *)&TicketBaseType) < 0
        || PyModule_AddObjectRef(module, "TxCounters", (PyObject *)&TxCountersType) < 0
        || PyModule_AddObjectRef(module, "TxCore", (PyObject *)&TxCoreType) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "REAP_EVERY", REAP_EVERY) < 0
        || PyModule_AddIntConstant(module, "REAP_SHIFT", REAP_SHIFT) < 0 ? -1 : 0;
}
