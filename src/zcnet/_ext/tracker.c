/* The zero-copy completion tracker in C: zcnet._core.tracker.CompletionTracker, same API and
 * semantics (that module's docstring is the theory of operation; it stays the reference).
 *
 * The kernel's u32 counter is unwrapped into sequence numbers; outstanding ones are a sorted
 * array of disjoint half-open intervals (a notification costs O(log intervals + completed)), and
 * each sequence number's (token, nbytes, state) sits in a slot array indexed by seq - base, where
 * base trails the oldest outstanding call (compacted as completions advance). Multi-call tokens
 * keep a small state object (remaining calls, sealed, copied) in a dict, as in Python.
 *
 * record_single makes no Python call and cannot fail once it passed its checks (the slot array
 * is grown first), so the send fast path (txfast.c) records a successful syscall with no Python
 * code in between (docs/ARCHITECTURE.md, 'Transmit: interrupted sends'). */
#include "zcnet_ext.h"

#define MASK 0xFFFFFFFFLL
#define HALF 0x80000000LL

static PyObject *completion_class = NULL; /* zcnet._core.tracker.Completion, looked up lazily */

/* -- token state ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t remaining;
    char sealed;
    char copied;
} zc_TokenState;

static PyTypeObject TokenStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups._TokenState",
    .tp_basicsize = sizeof(zc_TokenState),
    .tp_flags = Py_TPFLAGS_DEFAULT,
};

/* -- storage -------------------------------------------------------------------------------- */

/* Room for k more slots (sequence numbers n .. n + k - 1). */
static int
slots_reserve(zc_TrackerObject *t, Py_ssize_t k)
{
    Py_ssize_t used = (Py_ssize_t)(t->n - t->base);
    if (used + k <= t->cap)
        return 0;
    long long oldest = t->nint ? t->starts[0] : t->n;
    Py_ssize_t drop = (Py_ssize_t)(oldest - t->base);
    if (drop > 0 && drop >= used / 2 && used - drop + k <= t->cap) {
        /* every slot before `oldest` is empty: move the live ones down */
        memmove(t->slots, t->slots + drop, (size_t)(used - drop) * sizeof(zc_TrackerSlot));
        t->base = oldest;
        return 0;
    }
    Py_ssize_t cap = t->cap ? 2 * t->cap : 64;
    while (cap < used + k)
        cap *= 2;
    zc_TrackerSlot *s = PyMem_Realloc(t->slots, (size_t)cap * sizeof(zc_TrackerSlot));
    if (s == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->slots = s;
    t->cap = cap;
    return 0;
}

/* Room for `extra` more intervals. */
static int
intervals_reserve(zc_TrackerObject *t, Py_ssize_t extra)
{
    if (t->nint + extra <= t->capint)
        return 0;
    Py_ssize_t cap = t->capint ? 2 * t->capint : 8;
    while (cap < t->nint + extra)
        cap *= 2;
    long long *s = PyMem_Realloc(t->starts, (size_t)cap * sizeof(long long));
    if (s == NULL)
        return PyErr_NoMemory(), -1;
    t->starts = s;
    long long *e = PyMem_Realloc(t->ends, (size_t)cap * sizeof(long long));
    if (e == NULL)
        return PyErr_NoMemory(), -1;
    t->ends = e;
    t->capint = cap;
    return 0;
}

/* Append `k` sequence numbers to the intervals (room reserved). */
static void
intervals_append(zc_TrackerObject *t, long long seq, long long k)
{
    if (t->nint && t->ends[t->nint - 1] == seq) {
        t->ends[t->nint - 1] = seq + k;
    } else {
        t->starts[t->nint] = seq;
        t->ends[t->nint] = seq + k;
        t->nint++;
    }
}

static int
refuse_after_uncertain(void)
{
    PyErr_SetString(PyExc_ValueError, "no send call may be recorded after an uncertain one");
    return -1;
}

/* Record one call of `token` (state NULL: a single-call token); takes new references. */
static long long
record(zc_TrackerObject *t, PyObject *token, Py_ssize_t nbytes, PyObject *state)
{
    long long seq = t->n;
    zc_TrackerSlot *slot = &t->slots[seq - t->base];
    Py_INCREF(token);
    slot->token = token;
    slot->nbytes = nbytes;
    Py_XINCREF(state);
    slot->state = state;
    t->n = seq + 1;
    intervals_append(t, seq, 1);
    t->outstanding++;
    return (t->start + seq) & MASK;
}

int
zc_tracker_reserve(zc_TrackerObject *t, Py_ssize_t k)
{
    if (t->uncertain_tail)
        return refuse_after_uncertain();
    return slots_reserve(t, k) < 0 || intervals_reserve(t, 1) < 0 ? -1 : 0;
}

void
zc_tracker_record_reserved(zc_TrackerObject *t, PyObject *token, Py_ssize_t nbytes)
{
    record(t, token, nbytes, NULL);
    t->singles++;
}

int
zc_tracker_record_single(zc_TrackerObject *t, PyObject *token, Py_ssize_t nbytes)
{
    if (t->uncertain_tail)
        return refuse_after_uncertain();
    if (slots_reserve(t, 1) < 0 || intervals_reserve(t, 1) < 0)
        return -1;
    record(t, token, nbytes, NULL);
    t->singles++;
    return 0;
}

/* -- completion ----------------------------------------------------------------------------- */

void
zc_released_clear(zc_Released *rel)
{
    for (Py_ssize_t i = 0; i < rel->ndone; i++)
        Py_DECREF(rel->done[i]);
    PyMem_Free(rel->done);
    PyMem_Free(rel->done_copied);
    memset(rel, 0, sizeof(*rel));
}

/* Map [lo, hi] to inclusive sequence numbers, or raise InvalidCompletionError. */
static int
resolve(zc_TrackerObject *t, long long lo, long long hi, long long *seq_lo, long long *seq_hi)
{
    if (lo < 0 || lo > MASK || hi < 0 || hi > MASK) {
        PyErr_Format(zc_InvalidCompletionError,
                     "completion range [%lld, %lld] is not made of u32 values", lo, hi);
        return -1;
    }
    long long width = ((hi - lo) & MASK) + 1;
    if (width > HALF) {
        PyErr_Format(zc_InvalidCompletionError,
                     "completion range [%lld, %lld] is %lld values wide (more than 2**31)",
                     lo, hi, width);
        return -1;
    }
    long long n = t->n;
    if (n == 0) {
        PyErr_Format(zc_InvalidCompletionError,
                     "completion range [%lld, %lld] but no zero-copy send was made", lo, hi);
        return -1;
    }
    long long last = (t->start + n - 1) & MASK;
    long long back_hi = (last - hi) & MASK;
    if (back_hi + width > (n < HALF ? n : HALF)) {
        PyErr_Format(zc_InvalidCompletionError,
                     "completion range [%lld, %lld] reaches beyond the %lld zero-copy sends made "
                     "(values %lld .. %lld)", lo, hi, n, t->start, last);
        return -1;
    }
    *seq_hi = n - 1 - back_hi;
    *seq_lo = *seq_hi - width + 1;
    return 0;
}

static int
released_add(zc_Released *rel, PyObject *token, int copied)
{
    if (rel->ndone == rel->cap) {
        Py_ssize_t cap = rel->cap ? 2 * rel->cap : 16;
        PyObject **d = PyMem_Realloc(rel->done, (size_t)cap * sizeof(PyObject *));
        if (d == NULL)
            return PyErr_NoMemory(), -1;
        rel->done = d;
        char *c = PyMem_Realloc(rel->done_copied, (size_t)cap);
        if (c == NULL)
            return PyErr_NoMemory(), -1;
        rel->done_copied = c;
        rel->cap = cap;
    }
    rel->done[rel->ndone] = token; /* the slot's reference moves here */
    rel->done_copied[rel->ndone++] = (char)copied;
    return 0;
}

int
zc_tracker_complete(zc_TrackerObject *t, long long lo, long long hi, int copied,
                    zc_Released *rel)
{
    memset(rel, 0, sizeof(*rel));
    long long seq_lo, seq_hi;
    if (resolve(t, lo, hi, &seq_lo, &seq_hi) < 0)
        return -1;
    /* first interval ending after seq_lo (bisect_right on ends) */
    Py_ssize_t a0 = 0, b0 = t->nint;
    while (a0 < b0) {
        Py_ssize_t mid = (a0 + b0) / 2;
        if (t->ends[mid] <= seq_lo)
            a0 = mid + 1;
        else
            b0 = mid;
    }
    Py_ssize_t k0 = a0, k1 = k0;
    long long ns[2], ne[2];
    int m = 0;
    /* the splice below may add one interval (one split in two) */
    if (intervals_reserve(t, 1) < 0)
        return -1;
    while (k1 < t->nint && t->starts[k1] <= seq_hi) {
        long long s = t->starts[k1], e = t->ends[k1];
        long long a = s > seq_lo ? s : seq_lo, b = e < seq_hi + 1 ? e : seq_hi + 1;
        if (s < a) {
            ns[m] = s; ne[m] = a; m++;
        }
        if (b < e) {
            ns[m] = b; ne[m] = e; m++;
        }
        rel->calls += b - a;
        for (long long seq = a; seq < b; seq++) {
            zc_TrackerSlot *slot = &t->slots[seq - t->base];
            PyObject *token = slot->token;
            zc_TokenState *state = (zc_TokenState *)slot->state;
            slot->token = NULL;
            slot->state = NULL;
            t->outstanding--;
            rel->nbytes += slot->nbytes;
            if (state == NULL) {
                t->singles--;
                if (released_add(rel, token, copied) < 0)
                    Py_DECREF(token); /* MemoryError: the token is lost, the count stays right */
                continue;
            }
            state->remaining--;
            if (copied)
                state->copied = 1;
            if (!state->remaining && state->sealed) {
                if (PyDict_DelItem(t->tokens, token) < 0)
                    PyErr_Clear(); /* not possible: the token is a key until finished */
                if (released_add(rel, token, state->copied) < 0)
                    Py_DECREF(token);
            } else {
                Py_DECREF(token);
            }
            Py_DECREF(state);
        }
        k1++;
    }
    if (k1 > k0) {
        Py_ssize_t tail = t->nint - k1;
        memmove(t->starts + k0 + m, t->starts + k1, (size_t)tail * sizeof(long long));
        memmove(t->ends + k0 + m, t->ends + k1, (size_t)tail * sizeof(long long));
        for (int i = 0; i < m; i++) {
            t->starts[k0 + i] = ns[i];
            t->ends[k0 + i] = ne[i];
        }
        t->nint = k0 + m + tail;
    }
    if (PyErr_Occurred()) {
        zc_released_clear(rel);
        return -1;
    }
    return 0;
}

/* -- the Python type ------------------------------------------------------------------------ */

static PyObject *
tracker_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"start", NULL};
    long long start = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|L:CompletionTracker", kwlist, &start))
        return NULL;
    if (start < 0 || start > MASK) {
        PyErr_Format(PyExc_ValueError, "start must be a u32, got %lld", start);
        return NULL;
    }
    zc_TrackerObject *t = (zc_TrackerObject *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    t->start = start;
    t->tokens = PyDict_New();
    if (t->tokens == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    return (PyObject *)t;
}

static int
tracker_traverse(zc_TrackerObject *t, visitproc visit, void *arg)
{
    Py_VISIT(t->tokens);
    Py_ssize_t used = (Py_ssize_t)(t->n - t->base);
    for (Py_ssize_t i = 0; i < used && t->slots != NULL; i++) {
        Py_VISIT(t->slots[i].token);
        Py_VISIT(t->slots[i].state);
    }
    return 0;
}

static int
tracker_clear(zc_TrackerObject *t)
{
    Py_CLEAR(t->tokens);
    Py_ssize_t used = (Py_ssize_t)(t->n - t->base);
    for (Py_ssize_t i = 0; i < used && t->slots != NULL; i++) {
        Py_CLEAR(t->slots[i].token);
        Py_CLEAR(t->slots[i].state);
    }
    return 0;
}

static void
tracker_dealloc(zc_TrackerObject *t)
{
    PyObject_GC_UnTrack(t);
    tracker_clear(t);
    PyMem_Free(t->slots);
    PyMem_Free(t->starts);
    PyMem_Free(t->ends);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *
tracker_record_send(zc_TrackerObject *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "record_send(token, nbytes)");
        return NULL;
    }
    Py_ssize_t nbytes = PyLong_AsSsize_t(args[1]);
    if (nbytes == -1 && PyErr_Occurred())
        return NULL;
    if (t->uncertain_tail)
        return refuse_after_uncertain(), NULL;
    PyObject *token = args[0];
    PyObject *state = PyDict_GetItemWithError(t->tokens, token); /* borrowed */
    if (state == NULL) {
        if (PyErr_Occurred())
            return NULL;
        state = (PyObject *)PyObject_New(zc_TokenState, &TokenStateType);
        if (state == NULL)
            return NULL;
        ((zc_TokenState *)state)->remaining = 0;
        ((zc_TokenState *)state)->sealed = 0;
        ((zc_TokenState *)state)->copied = 0;
        int r = PyDict_SetItem(t->tokens, token, state);
        Py_DECREF(state);
        if (r < 0)
            return NULL;
    } else if (((zc_TokenState *)state)->sealed) {
        PyErr_SetString(PyExc_ValueError, "record_send() on a sealed token");
        return NULL;
    }
    if (slots_reserve(t, 1) < 0 || intervals_reserve(t, 1) < 0)
        return NULL;
    ((zc_TokenState *)state)->remaining++;
    return PyLong_FromLongLong(record(t, token, nbytes, state));
}

static PyObject *
tracker_record_uncertain(zc_TrackerObject *t, PyObject *token)
{
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return NULL;
    PyObject *args[2] = {token, zero};
    PyObject *value = tracker_record_send(t, args, 2);
    Py_DECREF(zero);
    if (value != NULL)
        t->uncertain_tail = 1;
    return value;
}

static PyObject *
tracker_record_single(zc_TrackerObject *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "record_single(token, nbytes)");
        return NULL;
    }
    Py_ssize_t nbytes = PyLong_AsSsize_t(args[1]);
    if (nbytes == -1 && PyErr_Occurred())
        return NULL;
    long long seq = t->n;
    if (zc_tracker_record_single(t, args[0], nbytes) < 0)
        return NULL;
    return PyLong_FromLongLong((t->start + seq) & MASK);
}

static PyObject *
tracker_record_batch(zc_TrackerObject *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "record_batch(tokens, sizes)");
        return NULL;
    }
    if (t->uncertain_tail)
        return refuse_after_uncertain(), NULL;
    PyObject *toks = PySequence_Fast(args[0], "tokens must be a sequence");
    if (toks == NULL)
        return NULL;
    PyObject *sizes = PySequence_Fast(args[1], "sizes must be a sequence");
    if (sizes == NULL) {
        Py_DECREF(toks);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(toks);
    Py_ssize_t *nb = NULL;
    if (k != PySequence_Fast_GET_SIZE(sizes)) {
        PyErr_Format(PyExc_ValueError, "%zd tokens but %zd sizes", k,
                     PySequence_Fast_GET_SIZE(sizes));
        goto done;
    }
    nb = PyMem_Malloc((size_t)(k ? k : 1) * sizeof(Py_ssize_t));
    if (nb == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        nb[i] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(sizes, i));
        if (nb[i] == -1 && PyErr_Occurred())
            goto done;
    }
    long long first = (t->start + t->n) & MASK;
    for (Py_ssize_t i = 0; i < k; i++) /* cannot fail after the first one was recorded */
        if (zc_tracker_record_single(t, PySequence_Fast_GET_ITEM(toks, i), nb[i]) < 0)
            goto done;
    result = PyLong_FromLongLong(first);
done:
    PyMem_Free(nb);
    Py_DECREF(toks);
    Py_DECREF(sizes);
    return result;
}

static PyObject *
tracker_seal(zc_TrackerObject *t, PyObject *token)
{
    PyObject *state = PyDict_GetItemWithError(t->tokens, token);
    if (state == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_FALSE;
    }
    zc_TokenState *st = (zc_TokenState *)state;
    st->sealed = 1;
    if (st->remaining)
        Py_RETURN_NONE;
    int copied = st->copied;
    if (PyDict_DelItem(t->tokens, token) < 0)
        return NULL;
    return PyBool_FromLong(copied);
}

static int
u32_arg(PyObject *o, long long *v)
{
    int overflow;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (*v == -1 && PyErr_Occurred())
        return -1;
    if (overflow)
        *v = -1; /* out of range: resolve() refuses it */
    return 0;
}

static PyObject *
tracker_complete(zc_TrackerObject *t, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"lo", "hi", "copied", NULL};
    PyObject *olo, *ohi;
    int copied;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOp:complete", kwlist, &olo, &ohi, &copied))
        return NULL;
    long long lo, hi;
    if (u32_arg(olo, &lo) < 0 || u32_arg(ohi, &hi) < 0)
        return NULL;
    if (completion_class == NULL) {
        PyObject *mod = PyImport_ImportModule("zcnet._core.tracker");
        if (mod == NULL)
            return NULL;
        completion_class = PyObject_GetAttrString(mod, "Completion");
        Py_DECREF(mod);
        if (completion_class == NULL)
            return NULL;
    }
    zc_Released rel;
    if (zc_tracker_complete(t, lo, hi, copied, &rel) < 0)
        return NULL;
    PyObject *result = NULL;
    PyObject *done = PyTuple_New(rel.ndone);
    PyObject *flags = PyTuple_New(rel.ndone);
    if (done != NULL && flags != NULL) {
        for (Py_ssize_t i = 0; i < rel.ndone; i++) {
            PyTuple_SET_ITEM(done, i, Py_NewRef(rel.done[i]));
            PyTuple_SET_ITEM(flags, i, PyBool_FromLong(rel.done_copied[i]));
        }
        result = PyObject_CallFunction(completion_class, "LLOOO", rel.calls, rel.nbytes,
                                       copied ? Py_True : Py_False, done, flags);
    }
    Py_XDECREF(done);
    Py_XDECREF(flags);
    zc_released_clear(&rel);
    return result;
}

static PyObject *
tracker_tokens(zc_TrackerObject *t, PyObject *unused)
{
    PyObject *seen = PyDict_New();
    if (seen == NULL)
        return NULL;
    Py_ssize_t used = (Py_ssize_t)(t->n - t->base);
    for (Py_ssize_t i = 0; i < used; i++) {
        PyObject *token = t->slots[i].token;
        if (token != NULL && PyDict_SetDefault(seen, token, Py_None) == NULL)
            goto fail;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(t->tokens, &pos, &key, &value))
        if (PyDict_SetDefault(seen, key, Py_None) == NULL)
            goto fail;
    PyObject *list = PySequence_List(seen);
    Py_DECREF(seen);
    if (list == NULL)
        return NULL;
    PyObject *it = PyObject_GetIter(list);
    Py_DECREF(list);
    return it;
fail:
    Py_DECREF(seen);
    return NULL;
}

static PyObject *
tracker_is_outstanding(zc_TrackerObject *t, PyObject *arg)
{
    long long value = PyLong_AsLongLong(arg);
    if (value == -1 && PyErr_Occurred())
        return NULL;
    if (t->n == 0)
        Py_RETURN_FALSE;
    long long back = (((t->start + t->n - 1) & MASK) - value) & MASK;
    if (back >= (t->n < HALF ? t->n : HALF))
        Py_RETURN_FALSE;
    long long seq = t->n - 1 - back;
    if (seq < t->base)
        Py_RETURN_FALSE;
    return PyBool_FromLong(t->slots[seq - t->base].token != NULL);
}

static PyObject *
tracker_get_next_value(zc_TrackerObject *t, void *c)
{
    return PyLong_FromLongLong((t->start + t->n) & MASK);
}

static PyObject *
tracker_get_pending_tokens(zc_TrackerObject *t, void *c)
{
    return PyLong_FromSsize_t(PyDict_GET_SIZE(t->tokens) + t->singles);
}

static PyObject *
tracker_get_n(zc_TrackerObject *t, void *c)
{
    return PyLong_FromLongLong(t->n);
}

/* `_n` is writable for tests (the bookkeeping of many sends without making them), only while
 * nothing is outstanding. */
static int
tracker_set_n(zc_TrackerObject *t, PyObject *v, void *c)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _n");
        return -1;
    }
    long long n = PyLong_AsLongLong(v);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (t->outstanding || n < t->n) {
        PyErr_SetString(PyExc_ValueError, "_n may only grow while nothing is outstanding");
        return -1;
    }
    t->n = t->base = n;
    return 0;
}

static PyMethodDef tracker_methods[] = {
    {"record_send", (PyCFunction)(void (*)(void))tracker_record_send, METH_FASTCALL,
     "Record one successful zero-copy send call of nbytes for token; returns its value."},
    {"record_uncertain", (PyCFunction)tracker_record_uncertain, METH_O,
     "Record a call of token that may or may not have taken a counter value."},
    {"record_single", (PyCFunction)(void (*)(void))tracker_record_single, METH_FASTCALL,
     "Record a successful call that is the whole of token (recorded and sealed at once)."},
    {"record_batch", (PyCFunction)(void (*)(void))tracker_record_batch, METH_FASTCALL,
     "Record len(tokens) successful calls, each the whole of its own new token."},
    {"seal", (PyCFunction)tracker_seal, METH_O,
     "Declare that token makes no more send calls."},
    {"complete", (PyCFunction)(void (*)(void))tracker_complete, METH_VARARGS | METH_KEYWORDS,
     "Apply the notification for the inclusive, possibly wrapping counter range [lo, hi]."},
    {"tokens", (PyCFunction)tracker_tokens, METH_NOARGS, "The unfinished tokens."},
    {"is_outstanding", (PyCFunction)tracker_is_outstanding, METH_O,
     "Whether the call that took counter value is still outstanding."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, "See PEP 585."},
    {NULL},
};

static PyGetSetDef tracker_getset[] = {
    {"next_value", (getter)tracker_get_next_value, NULL,
     "The counter value the next record_send returns.", NULL},
    {"sent", (getter)tracker_get_n, NULL, "Successful zero-copy send calls recorded so far.",
     NULL},
    {"_n", (getter)tracker_get_n, (setter)tracker_set_n, "Sequence numbers handed out.", NULL},
    {"pending_tokens", (getter)tracker_get_pending_tokens, NULL,
     "Tokens not yet finished (open, or sealed with calls outstanding).", NULL},
    {NULL},
};

static PyMemberDef tracker_members[] = {
    {"outstanding", Py_T_PYSSIZET, offsetof(zc_TrackerObject, outstanding), Py_READONLY,
     "Send calls not yet completed."},
    {"uncertain_tail", T_BOOL, offsetof(zc_TrackerObject, uncertain_tail), 0,
     "The last value may or may not have been taken (see record_uncertain)."},
    {NULL},
};

PyTypeObject zc_TrackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.CompletionTracker",
    .tp_basicsize = sizeof(zc_TrackerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "CompletionTracker(start=0)\n--\n\nMaps the kernel's wrapping zero-copy counter to "
              "tokens (zcnet._core.tracker.CompletionTracker in C).",
    .tp_new = tracker_new,
    .tp_traverse = (traverseproc)tracker_traverse,
    .tp_clear = (inquiry)tracker_clear,
    .tp_dealloc = (destructor)tracker_dealloc,
    .tp_methods = tracker_methods,
    .tp_getset = tracker_getset,
    .tp_members = tracker_members,
};

int
zc_tracker_init(PyObject *module)
{
    if (PyType_Ready(&TokenStateType) < 0 || PyType_Ready(&zc_TrackerType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "CompletionTracker", (PyObject *)&zc_TrackerType);
}
