/* The receive fast path in C (docs/ARCHITECTURE.md, 'Compiled fast path' and 'Receive').
 *
 * zcnet.receiver's pure-Python Receiver.recv is the reference; RxCore.recv, installed as a
 * Receiver's `recv`, runs its two common cases without executing Python code: pages mapped
 * into a free window and nothing else, and a copy into the first copy buffer (below). It reads
 * and writes the Receiver's own attributes (and those of its RxDecider and RxLedger), so the
 * state stays in one place, and it hands every other case to the Python code:
 *
 * - before anything is done (then Receiver._recv_python runs the whole receive): arguments
 *   other than a positive int and a timeout of None or 0, a closed receiver, bytes or an error
 *   pending from an earlier call, EOF seen, a backoff after a transient mapping failure, no
 *   free window, SO_RCVLOWAT to change, a socket not readable (poll reports only POLLERR, or nothing while the epoll sleep of a
 *   bidirectional socket is in use), a receive call replaced (tests inject faults through
 *   `_call`); with timeout 0 and nothing to read, TimeoutExpired is raised here, as
 *   Receiver._wait does;
 * - after the TCP_ZEROCOPY_RECEIVE call: a failed call (Receiver._zerocopy_failed), an answer
 *   with a copied tail, a recv_skip_hint, a socket error or nothing mapped
 *   (Receiver._zerocopy_done). When those return None (the Python loop's `continue`), the
 *   receive goes on in Receiver._recv_python.
 *
 * Copies (copy mode, a request below one page or min_map_bytes) take the same route when
 * SO_RCVLOWAT is off and the first copy buffer is free and big enough: Receiver._recv_copy's
 * recv into it, the readiness wait and second try, and its bookkeeping, here; any other copy
 * (a buffer to grow or make, all held, rcvlowat set) is Python's.
 *
 * Decisions stay in Python: the C code counts a mapped-only call the way RxDecider.observe
 * does and calls RxDecider._judge when a run of probe_calls calls is complete. */
#include "zcnet_ext.h"

#include <errno.h>
#include <poll.h>

#ifndef POLLRDHUP
#define POLLRDHUP 0x2000
#endif

static PyObject *s_closed, *s_pending, *s_pending_skip, *s_eof, *s_pending_error, *s_call,
    *s_decider, *s_ledger, *s_windows, *s_next, *s_inq, *s_sleep, *s_lowat, *s_copybuf_ok,
    *s_group, *s_mode, *s_zerocopy, *s_force_zerocopy, *s_backoff_left, *s_retry_pending,
    *s_min_map_bytes, *s_backoff_next, *s_probes, *s_mapped, *s_seen, *s_probe_calls,
    *s_calls, *s_bytes_mapped, *s_judge, *s_zerocopy_failed,
    *s_recv_python, *s_timeout, *s_copy_failed, *s_copybufs, *s_bufs, *s_size, *s_max_size,
    *s_bytes_copied, *s_copy_reasons, *s_copy_mode, *s_small_request;

typedef struct {
    PyObject_HEAD
    PyObject *receiver; /* the zcnet.receiver.Receiver this core serves */
    int fd;
    Py_ssize_t window_bytes, rcvlowat, page_size; /* its RecvPolicy (frozen) and page size */
} zc_RxCoreObject;

/* -- attribute helpers (each returns -1 with an exception set on failure) ------------------ */

static int
attr_ssize(PyObject *obj, PyObject *name, Py_ssize_t *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* 1 if obj.name is true, 0 if false */
static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* 1 if obj.name is None, 0 if not */
static int
attr_none(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int r = v == Py_None;
    Py_DECREF(v);
    return r;
}

static int
set_ssize(PyObject *obj, PyObject *name, Py_ssize_t value)
{
    PyObject *v = PyLong_FromSsize_t(value);
    if (v == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return r;
}

static int
add_ssize(PyObject *obj, PyObject *name, Py_ssize_t delta)
{
    Py_ssize_t v;
    if (attr_ssize(obj, name, &v) < 0)
        return -1;
    return set_ssize(obj, name, v + delta);
}

/* -- RxCore -------------------------------------------------------------------------------- */

static PyObject *
rxcore_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"receiver", "fd", "window_bytes", "rcvlowat", "page_size", NULL};
    PyObject *receiver;
    int fd;
    Py_ssize_t window_bytes, rcvlowat, page_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oinnn:RxCore", kwlist, &receiver, &fd,
                                     &window_bytes, &rcvlowat, &page_size))
        return NULL;
    if (page_size <= 0 || (page_size & (page_size - 1)) || window_bytes <= 0 || rcvlowat < 0) {
        PyErr_SetString(PyExc_ValueError, "RxCore: page_size must be a power of two, "
                        "window_bytes > 0 and rcvlowat >= 0");
        return NULL;
    }
    zc_RxCoreObject *self = (zc_RxCoreObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->receiver = Py_NewRef(receiver);
    self->fd = fd;
    self->window_bytes = window_bytes;
    self->rcvlowat = rcvlowat;
    self->page_size = page_size;
    return (PyObject *)self;
}

static int
rxcore_traverse(zc_RxCoreObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->receiver);
    return 0;
}

static int
rxcore_clear(zc_RxCoreObject *self)
{
    Py_CLEAR(self->receiver);
    return 0;
}

static void
rxcore_dealloc(zc_RxCoreObject *self)
{
    PyObject_GC_UnTrack(self);
    rxcore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The whole receive in Python, with the caller's arguments. */
static PyObject *
recv_python(zc_RxCoreObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *method = PyObject_GetAttr(self->receiver, s_recv_python);
    if (method == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(method, args, nargsf, kwnames);
    Py_DECREF(method);
    return r;
}

/* A free window of `windows` from `_next` on (a new reference; _next moved past it), NULL
 * with no exception if there is none, NULL with an exception on failure. */
static PyObject *
free_window(PyObject *receiver, PyObject *windows)
{
    Py_ssize_t n = PyList_GET_SIZE(windows), next;
    if (n == 0)
        return NULL;
    if (attr_ssize(receiver, s_next, &next) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t idx = (next + i) % n;
        PyObject *window = PyList_GET_ITEM(windows, idx);
        PyObject *group = PyObject_GetAttr(window, s_group);
        if (group == NULL)
            return NULL;
        int free = PyObject_TypeCheck(group, &zc_PinGroupType)
                   && ((zc_PinGroupObject *)group)->count == 0;
        Py_DECREF(group);
        if (free) {
            if (set_ssize(receiver, s_next, (idx + 1) % n) < 0)
                return NULL;
            return Py_NewRef(window);
        }
    }
    return NULL;
}

/* Whether the socket is readable (data, EOF or hang-up) now or, if `block`, after sleeping in
 * poll(2) without the GIL: 1 yes, 2 nothing to report (only without `block`), 0 something
 * else for the Python code to look at (POLLERR alone, POLLNVAL, a poll failure), -1 with an
 * exception (a signal handler raised). */
static int
readable(int fd, int block)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
        int rc, saved_errno;
        Py_BEGIN_ALLOW_THREADS
        rc = poll(&p, 1, block ? -1 : 0);
        saved_errno = errno;
        Py_END_ALLOW_THREADS
        if (rc == 0)
            return 2;
        if (rc > 0)
            return (p.revents & (POLLIN | POLLRDHUP | POLLHUP)) != 0;
        if (saved_errno != EINTR)
            return 0; /* the Python path reports it */
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

/* The bookkeeping of a call that mapped `length` bytes and nothing else: Receiver's
 * _zerocopy_done, RxLedger.mapped and RxDecider.observe(length, 0) for that case. */
static int
count_mapped(PyObject *receiver, PyObject *decider, PyObject *ledger, unsigned int length,
             unsigned int inq)
{
    if (add_ssize(ledger, s_calls, 1) < 0
        || PyObject_SetAttr(receiver, s_copybuf_ok, inq == 0 ? Py_True : Py_False) < 0
        || set_ssize(receiver, s_inq, (Py_ssize_t)inq) < 0
        || set_ssize(decider, s_backoff_next, 1) < 0)
        return -1;
    int forced = attr_true(decider, s_force_zerocopy);
    if (forced < 0)
        return -1;
    if (!forced) { /* probing: the mode was "zerocopy" before the call and nothing changed it */
        Py_ssize_t probes, probe_calls;
        if (add_ssize(decider, s_mapped, length) < 0 || add_ssize(decider, s_seen, length) < 0
            || attr_ssize(decider, s_probes, &probes) < 0
            || set_ssize(decider, s_probes, probes + 1) < 0
            || attr_ssize(decider, s_probe_calls, &probe_calls) < 0)
            return -1;
        if (probes + 1 >= probe_calls) {
            PyObject *r = PyObject_CallMethodNoArgs(decider, s_judge);
            if (r == NULL)
                return -1;
            Py_DECREF(r);
        }
    }
    return add_ssize(ledger, s_bytes_mapped, length);
}

/* OSError `exc` of a failed call, as the Python code handles it: Receiver._zerocopy_failed
 * (map_len > 0) or Receiver._copy_failed (which raises). Steals `exc`. */
static PyObject *
call_failed(PyObject *rx, PyObject *exc, Py_ssize_t map_len)
{
    PyObject *r;
    if (map_len > 0) {
        PyObject *n = PyLong_FromSsize_t(map_len);
        r = n == NULL ? NULL : PyObject_CallMethodObjArgs(rx, s_zerocopy_failed, exc, n, NULL);
        Py_XDECREF(n);
    }
    else
        r = PyObject_CallMethodObjArgs(rx, s_copy_failed, exc, NULL);
    Py_DECREF(exc);
    return r;
}

/* The pending OSError (taken), or NULL if the pending exception is something else (it stays
 * set). */
static PyObject *
take_oserror(void)
{
    return PyErr_ExceptionMatches(PyExc_OSError) ? zc_get_raised() : NULL;
}

/* Receiver._recv_copy into the first copy buffer, when it is free and big enough, and the
 * wait before a second try (rcvlowat 0: a copy is tried before the readiness check). Returns
 * the chunk, NULL with an exception, or Py_None (a new reference) for the Python path. */
static PyObject *
recv_copy(zc_RxCoreObject *self, PyObject *call, Py_ssize_t max_bytes, PyObject *reason,
          int block)
{
    PyObject *rx = self->receiver, *copybufs, *bufs = NULL, *group = NULL, *chunk = NULL;
    copybufs = PyObject_GetAttr(rx, s_copybufs);
    if (copybufs == NULL || (bufs = PyObject_GetAttr(copybufs, s_bufs)) == NULL)
        goto done;
    if (!PyList_CheckExact(bufs) || PyList_GET_SIZE(bufs) == 0) {
        chunk = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *buf = PyList_GET_ITEM(bufs, 0);
    Py_ssize_t size, max_size;
    if ((group = PyObject_GetAttr(buf, s_group)) == NULL || attr_ssize(buf, s_size, &size) < 0
        || attr_ssize(copybufs, s_max_size, &max_size) < 0)
        goto done;
    if (!PyObject_TypeCheck(group, &zc_PinGroupType) || ((zc_PinGroupObject *)group)->count
        || (size < max_bytes && size < max_size)) {
        chunk = Py_NewRef(Py_None); /* CopyBuffers.get looks further, grows or makes one */
        goto done;
    }
    Py_INCREF(buf);
    if (set_ssize(rx, s_inq, 0) < 0) {
        Py_DECREF(buf);
        goto done;
    }
    int recv_failed = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        chunk = zc_rx_recv_copy(call, buf, max_bytes);
        recv_failed = chunk == NULL;
        if (chunk != Py_None || attempt)
            break;
        Py_CLEAR(chunk);
        int no_sleeper = attr_none(rx, s_sleep);
        int r = no_sleeper < 0 ? -1 : readable(self->fd, block && no_sleeper);
        if (r == 2 && !block)
            PyErr_SetString(zc_TimeoutExpired, "no data before the timeout");
        if (r != 1) {
            chunk = r == 0 ? Py_NewRef(Py_None) : NULL;
            break;
        }
    }
    Py_DECREF(buf);
    if (chunk == NULL) {
        PyObject *exc = recv_failed ? take_oserror() : NULL;
        if (exc != NULL)
            chunk = call_failed(rx, exc, 0);
        goto done;
    }
    if (chunk == Py_None)
        goto done;
    /* Receiver._recv_copy's bookkeeping: EOF, or RxLedger.copied(n, reason) */
    Py_ssize_t n = ((zc_BufferBaseObject *)chunk)->len;
    int rc;
    if (n == 0)
        rc = PyObject_SetAttr(rx, s_eof, Py_True);
    else {
        PyObject *ledger = PyObject_GetAttr(rx, s_ledger), *reasons = NULL;
        rc = -1;
        if (ledger != NULL && add_ssize(ledger, s_bytes_copied, n) == 0
            && (reasons = PyObject_GetAttr(ledger, s_copy_reasons)) != NULL
            && PyDict_CheckExact(reasons)) {
            PyObject *old = PyDict_GetItemWithError(reasons, reason);
            Py_ssize_t before = old == NULL ? 0 : PyLong_AsSsize_t(old);
            PyObject *now = PyErr_Occurred() ? NULL : PyLong_FromSsize_t(before + n);
            rc = now == NULL ? -1 : PyDict_SetItem(reasons, reason, now);
            Py_XDECREF(now);
        }
        else if (reasons != NULL)
            PyErr_SetString(PyExc_TypeError, "RxLedger.copy_reasons must be a dict");
        Py_XDECREF(reasons);
        Py_XDECREF(ledger);
    }
    if (rc < 0)
        Py_CLEAR(chunk);
done:
    Py_XDECREF(group);
    Py_XDECREF(bufs);
    Py_XDECREF(copybufs);
    return chunk;
}

static PyObject *
rxcore_recv(zc_RxCoreObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *timeout = Py_None;
    if (nargs < 1 || nargs + nkw > 2)
        goto python;
    if (nargs + nkw == 2) {
        if (nkw == 1 && PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), s_timeout) != 0) {
            if (PyErr_Occurred())
                return NULL;
            goto python;
        }
        timeout = args[1];
    }
    if (!PyLong_CheckExact(args[0]))
        goto python;
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[0]);
    if (max_bytes <= 0) {
        PyErr_Clear(); /* an overflow: the Python path says what is wrong */
        goto python;
    }
    int block;
    if (timeout == Py_None)
        block = 1;
    else if ((PyLong_CheckExact(timeout) && PyLong_AsLong(timeout) == 0 && !PyErr_Occurred())
             || (PyFloat_CheckExact(timeout) && PyFloat_AS_DOUBLE(timeout) == 0.0))
        block = 0;
    else {
        PyErr_Clear();
        goto python;
    }

    PyObject *rx = self->receiver;
    PyObject *call = NULL, *decider = NULL, *ledger = NULL, *windows = NULL, *window = NULL;
    PyObject *mode = NULL, *result = NULL, *copy_reason = NULL;
    int r;
    /* the state the Python loop checks first */
    if ((r = attr_true(rx, s_closed)) != 0 || (r = attr_none(rx, s_pending)) != 1
        || (r = attr_true(rx, s_pending_skip)) != 0 || (r = attr_true(rx, s_eof)) != 0
        || (r = attr_none(rx, s_pending_error)) != 1)
        goto python_or_error;
    call = PyObject_GetAttr(rx, s_call);
    if (call == NULL)
        goto error;
    if (!Py_IS_TYPE(call, &zc_ZerocopyReceiveType))
        goto python_after;
    /* RxDecider.request: copy mode or a request below one page or min_map_bytes is a copy;
     * a backoff changes the decider's state: Python does it */
    decider = PyObject_GetAttr(rx, s_decider);
    if (decider == NULL || (mode = PyObject_GetAttr(decider, s_mode)) == NULL)
        goto error;
    r = PyUnicode_Compare(mode, s_zerocopy);
    if (r == -1 && PyErr_Occurred())
        goto error;
    Py_ssize_t map_len = (max_bytes < self->window_bytes ? max_bytes : self->window_bytes)
                         & ~(self->page_size - 1);
    if (r != 0)
        copy_reason = s_copy_mode;
    else {
        Py_ssize_t min_map, backoff_left;
        if (attr_ssize(decider, s_min_map_bytes, &min_map) < 0
            || attr_ssize(decider, s_backoff_left, &backoff_left) < 0)
            goto error;
        if (map_len == 0 || map_len < min_map)
            copy_reason = s_small_request;
        else if (backoff_left)
            goto python_after;
        else if ((r = attr_true(decider, s_retry_pending)) != 0)
            goto python_or_error;
    }
    if (copy_reason != NULL) {
        if (self->rcvlowat) /* the wait before the copy sets SO_RCVLOWAT: Python */
            goto python_after;
        result = recv_copy(self, call, max_bytes, copy_reason, block);
        if (result == Py_None) {
            Py_CLEAR(result);
            goto python_after;
        }
        goto done;
    }
    /* a free window (none: Python maps a new one or copies) */
    windows = PyObject_GetAttr(rx, s_windows);
    if (windows == NULL)
        goto error;
    if (!PyList_CheckExact(windows))
        goto python_after;
    window = free_window(rx, windows);
    if (window == NULL) {
        if (PyErr_Occurred())
            goto error;
        goto python_after;
    }
    /* readiness, unless the last call said enough is queued (Receiver._wait) */
    Py_ssize_t inq, need = self->rcvlowat < map_len ? self->rcvlowat : map_len;
    if (need < 1)
        need = 1;
    if (attr_ssize(rx, s_inq, &inq) < 0)
        goto error;
    if (inq < need) {
        if (self->rcvlowat) {
            Py_ssize_t lowat;
            if (attr_ssize(rx, s_lowat, &lowat) < 0)
                goto error;
            if (lowat != need) /* Receiver._set_lowat */
                goto python_after;
        }
        int no_sleeper = attr_none(rx, s_sleep); /* the epoll sleep is Python's */
        if (no_sleeper < 0)
            goto error;
        r = readable(self->fd, block && no_sleeper);
        if (r == 2 && !block) { /* what Receiver._wait raises for timeout 0 */
            PyErr_SetString(zc_TimeoutExpired, "no data before the timeout");
            goto error;
        }
        if (r != 1)
            goto python_or_error;
    }
    int copybuf_ok = attr_true(rx, s_copybuf_ok);
    if (copybuf_ok < 0)
        goto error;
    zc_RxAnswer a;
    if (zc_rx_receive(call, window, map_len, copybuf_ok, &a) < 0) {
        PyObject *exc = take_oserror();
        if (exc == NULL)
            goto error;
        result = call_failed(rx, exc, map_len);
    }
    else if (a.chunk == Py_None || a.tail != Py_None || a.skip || a.err) {
        result = PyObject_CallMethod(rx, "_zerocopy_done", "NINIIi", a.chunk, a.length,
                                     a.tail, a.skip, a.inq, a.err);
    }
    else {
        Py_DECREF(a.tail);
        ledger = PyObject_GetAttr(rx, s_ledger);
        if (ledger == NULL || count_mapped(rx, decider, ledger, a.length, a.inq) < 0) {
            Py_DECREF(a.chunk);
            goto error;
        }
        result = a.chunk;
    }
    if (result == Py_None) { /* the Python loop goes on */
        Py_CLEAR(result);
        goto python_after;
    }
    goto done;

python_or_error:
    if (r < 0)
        goto error;
python_after:
    result = recv_python(self, args, nargsf, kwnames);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(call);
    Py_XDECREF(decider);
    Py_XDECREF(ledger);
    Py_XDECREF(windows);
    Py_XDECREF(window);
    Py_XDECREF(mode);
    return result;
python:
    return recv_python(self, args, nargsf, kwnames);
}

static PyMethodDef rxcore_methods[] = {
    {"recv", (PyCFunction)(void (*)(void))rxcore_recv, METH_FASTCALL | METH_KEYWORDS,
     "recv($self, max_bytes, timeout=None)\n--\n\n"
     "Receiver.recv: the mapped-pages case here, every other case in Receiver._recv_python."},
    {NULL},
};

static PyTypeObject zc_RxCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.RxCore",
    .tp_basicsize = sizeof(zc_RxCoreObject),
    .tp_dealloc = (destructor)rxcore_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RxCore(receiver, fd, window_bytes, rcvlowat, page_size)\n--\n\n"
              "The compiled receive fast path of one zcnet.receiver.Receiver.",
    .tp_traverse = (traverseproc)rxcore_traverse,
    .tp_clear = (inquiry)rxcore_clear,
    .tp_methods = rxcore_methods,
    .tp_new = rxcore_new,
};

int
zc_rxfast_init(PyObject *module)
{
    if (PyType_Ready(&zc_RxCoreType) < 0)
        return -1;
    static const zc_InternedName names[] = {
        {&s_closed, "_closed"}, {&s_pending, "_pending"}, {&s_pending_skip, "_pending_skip"},
        {&s_eof, "_eof"}, {&s_pending_error, "_pending_error"}, {&s_call, "_call"},
        {&s_decider, "_decider"}, {&s_ledger, "_ledger"}, {&s_windows, "_windows"},
        {&s_next, "_next"}, {&s_inq, "_inq"}, {&s_sleep, "_sleep"}, {&s_lowat, "_lowat"},
        {&s_copybuf_ok, "_copybuf_ok"}, {&s_group, "group"}, {&s_mode, "mode"},
        {&s_zerocopy, "zerocopy"}, {&s_force_zerocopy, "force_zerocopy"},
        {&s_backoff_left, "_backoff_left"}, {&s_retry_pending, "_retry_pending"},
        {&s_min_map_bytes, "min_map_bytes"}, {&s_backoff_next, "_backoff_next"},
        {&s_probes, "_probes"}, {&s_mapped, "_mapped"}, {&s_seen, "_seen"},
        {&s_probe_calls, "probe_calls"}, {&s_calls, "calls"}, {&s_bytes_mapped, "bytes_mapped"},
        {&s_judge, "_judge"}, {&s_zerocopy_failed, "_zerocopy_failed"},
        {&s_recv_python, "_recv_python"},
        {&s_timeout, "timeout"}, {&s_copy_failed, "_copy_failed"}, {&s_copybufs, "_copybufs"},
        {&s_bufs, "_bufs"}, {&s_size, "size"}, {&s_max_size, "max_size"},
        {&s_bytes_copied, "bytes_copied"}, {&s_copy_reasons, "copy_reasons"},
        {&s_copy_mode, "copy_mode"}, {&s_small_request, "small_request"},
    };
    if (zc_intern(names, sizeof(names) / sizeof(names[0])) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "RxCore", (PyObject *)&zc_RxCoreType);
}
