/* Pool leases in C (docs/ARCHITECTURE.md, 'Compiled fast path'): a lease's fields and state
 * (LeaseBase), its claim (the right to give it back, taken exactly once: claim_lease) and a
 * pool's book of the leases in flight (FlightBook). The pure-Python reference is zcnet/pool.py
 * (Lease, _py_claim) and zcnet/_core/flight.py (FlightBook); one test suite runs on both.
 *
 * Each function runs with the GIL held and calls no Python code between the first field it reads
 * and the last it writes (a repr for an error message only after everything is restored), so it
 * is one step for every other thread; the reference takes the pool's lock instead. */
#include "zcnet_ext.h"

/* zcnet._core.flight's lease states */
enum { LEASED = 0, IN_FLIGHT = 1, RELEASED = 2, HELD = 3, MARKED = -1 /* check()'s own */ };
/* zcnet.pool.MIN_CLASS: size class k holds MIN_CLASS << k bytes */
#define MIN_CLASS 4096

typedef struct {
    zc_BufferBaseObject base;
    PyObject *pool, *block, *owner, *reaper, *view;
    Py_ssize_t size;
    int state;
    int cls;
    char claimed;
} zc_LeaseObject;

static PyTypeObject LeaseBaseType;
static PyObject *s_slab, *s_mm, *s_start, *s_cls, *s_check_mine, *s_add_done_callback,
    *s_on_done;

#define AS_LEASE(o) ((zc_LeaseObject *)(o))
#define IS_LEASE(o) PyObject_TypeCheck((o), &LeaseBaseType)

/* -- LeaseBase ---------------------------------------------------------------------------- */

static int
lease_traverse(zc_LeaseObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->pool);
    Py_VISIT(self->block);
    Py_VISIT(self->owner);
    Py_VISIT(self->reaper);
    Py_VISIT(self->view);
    return 0;
}

static int
lease_clear(zc_LeaseObject *self)
{
    Py_CLEAR(self->pool);
    Py_CLEAR(self->block);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->reaper);
    Py_CLEAR(self->view);
    return 0;
}

static void
lease_dealloc(zc_LeaseObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->base.weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    lease_clear(self);
    zc_BufferBaseType.tp_dealloc((PyObject *)self); /* finalizes; frees with our tp_free */
}

static PyMemberDef lease_members[] = {
    {"_pool", T_OBJECT, offsetof(zc_LeaseObject, pool), Py_READONLY, NULL},
    {"_block", T_OBJECT, offsetof(zc_LeaseObject, block), Py_READONLY, NULL},
    {"_owner", T_OBJECT, offsetof(zc_LeaseObject, owner), Py_READONLY, NULL},
    {"_reaper", T_OBJECT, offsetof(zc_LeaseObject, reaper), 0, NULL},
    {"_view", T_OBJECT, offsetof(zc_LeaseObject, view), 0, NULL},
    {"_size", Py_T_PYSSIZET, offsetof(zc_LeaseObject, size), Py_READONLY, NULL},
    {"_state", Py_T_INT, offsetof(zc_LeaseObject, state), 0, NULL},
    {NULL},
};

static PyTypeObject LeaseBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.LeaseBase",
    .tp_basicsize = sizeof(zc_LeaseObject),
    .tp_dealloc = (destructor)lease_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The data of a zcnet.pool.Lease (its base class in the compiled implementation): "
              "a BufferBase over its block with the lease's pool, block, owner, state and claim.",
    .tp_traverse = (traverseproc)lease_traverse,
    .tp_clear = (inquiry)lease_clear,
    .tp_members = lease_members,
    .tp_free = PyObject_GC_Del,
    /* tp_new: none; new_lease makes them */
};

/* new_lease(cls, pool, block, size, owner): a leased `cls` over `size` bytes of the block
 * (block.slab.mm at block.start, size class block.cls), without __init__. */
static PyObject *
lease_new_lease(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "new_lease() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *type = args[0], *block = args[2];
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &LeaseBaseType)) {
        PyErr_SetString(PyExc_TypeError, "new_lease() needs a subclass of LeaseBase");
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[3]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    PyObject *slab = PyObject_GetAttr(block, s_slab);
    PyObject *mm = slab == NULL ? NULL : PyObject_GetAttr(slab, s_mm);
    PyObject *start = mm == NULL ? NULL : PyObject_GetAttr(block, s_start);
    PyObject *cls = start == NULL ? NULL : PyObject_GetAttr(block, s_cls);
    PyObject *lease = NULL;
    if (cls != NULL) {
        Py_ssize_t offset = PyLong_AsSsize_t(start);
        long k = PyLong_AsLong(cls);
        if (!PyErr_Occurred())
            lease = zc_buffer_new((PyTypeObject *)type, mm, offset, size, 0, NULL);
        if (lease != NULL) {
            zc_LeaseObject *l = AS_LEASE(lease);
            l->pool = Py_NewRef(args[1]);
            l->block = Py_NewRef(block);
            l->owner = Py_NewRef(args[4]);
            l->size = size;
            l->state = LEASED;
            l->cls = (int)k;
        }
    }
    Py_XDECREF(slab);
    Py_XDECREF(mm);
    Py_XDECREF(start);
    Py_XDECREF(cls);
    return lease;
}

/* claim_lease(lease, from_flight=False): take the right to give `lease` back and end it, or
 * raise BufferLifetimeError with nothing changed (zcnet.pool._py_claim). */
static PyObject *
lease_claim(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "claim_lease() takes 1 or 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *obj = args[0];
    int from_flight = 0;
    if (nargs == 2 && (from_flight = PyObject_IsTrue(args[1])) < 0)
        return NULL;
    if (!IS_LEASE(obj)) {
        PyErr_Format(PyExc_TypeError, "claim_lease() needs a lease, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    zc_LeaseObject *l = AS_LEASE(obj);
    if (l->state != LEASED && !from_flight) {
        if (l->state == IN_FLIGHT)
            return PyErr_Format(zc_BufferLifetimeError, "%R is in flight; it returns to the pool "
                                "when its ticket is done", obj);
        if (l->state == HELD)
            return PyErr_Format(zc_BufferLifetimeError, "%R was handed to release_when_done; it "
                                "returns to the pool by itself once the export of its memory is "
                                "gone", obj);
    }
    if (l->claimed)
        return PyErr_Format(zc_BufferLifetimeError, "%R was released twice", obj);
    int ended = zc_end_lease(obj, l->view == NULL ? Py_None : l->view);
    if (ended < 0)
        return NULL;
    if (!ended)
        return PyErr_Format(zc_BufferLifetimeError, "%R is still in use: a memoryview, array or "
                            "other object made from it or its view is alive; release or drop it "
                            "first", obj);
    l->claimed = 1;
    l->state = RELEASED;
    Py_RETURN_NONE;
}

/* -- FlightBook ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t in_flight;
    PyObject *flying;  /* dict: lease in flight -> its ticket */
    PyObject *reapers; /* dict: (thread, id(Sender)) -> [Sender, leases in flight] */
} zc_FlightBookObject;

static PyObject *
book_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *lock = NULL; /* the reference's; the compiled book needs none */
    static char *kwlist[] = {"lock", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:FlightBook", kwlist, &lock))
        return NULL;
    zc_FlightBookObject *b = (zc_FlightBookObject *)type->tp_alloc(type, 0);
    if (b == NULL)
        return NULL;
    b->flying = PyDict_New();
    b->reapers = PyDict_New();
    if (b->flying == NULL || b->reapers == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    return (PyObject *)b;
}

static int
book_traverse(zc_FlightBookObject *b, visitproc visit, void *arg)
{
    Py_VISIT(b->flying);
    Py_VISIT(b->reapers);
    return 0;
}

static int
book_clear(zc_FlightBookObject *b)
{
    Py_CLEAR(b->flying);
    Py_CLEAR(b->reapers);
    return 0;
}

static void
book_dealloc(zc_FlightBookObject *b)
{
    PyObject_GC_UnTrack(b);
    book_clear(b);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

/* Add `delta` to the count of a reapers entry ([Sender, count]): the new count, or -1 with an
 * exception set. */
static Py_ssize_t
entry_add(PyObject *entry, Py_ssize_t delta)
{
    if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 2) {
        PyErr_SetString(PyExc_TypeError, "a reapers entry must be a list [Sender, count]");
        return -1;
    }
    PyObject *old = PyList_GET_ITEM(entry, 1);
    Py_ssize_t n = PyLong_AsSsize_t(old);
    if (n == -1 && PyErr_Occurred())
        return -1;
    PyObject *v = PyLong_FromSsize_t(n + delta);
    if (v == NULL)
        return -1;
    PyList_SET_ITEM(entry, 1, v);
    Py_DECREF(old);
    return n + delta;
}

static PyObject *
book_check(zc_FlightBookObject *b, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "check() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *pool = args[0];
    PyObject *seq = PySequence_Fast(args[1], "leases must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (i = 0; i < n; i++) { /* whose lease: the pool's own message */
        if (!IS_LEASE(items[i]) || AS_LEASE(items[i])->pool != pool) {
            PyObject *r = PyObject_CallMethodOneArg(pool, s_check_mine, items[i]);
            if (r == NULL) {
                Py_DECREF(seq);
                return NULL;
            }
            Py_DECREF(r);
            if (!IS_LEASE(items[i])) { /* _check_mine accepted something we cannot fly */
                Py_DECREF(seq);
                return PyErr_Format(PyExc_TypeError, "%.100s is not a lease",
                                    Py_TYPE(items[i])->tp_name);
            }
        }
    }
    /* no Python code from here until the marks are undone */
    long long capacity = 0;
    PyObject *bad = NULL;
    int twice = 0;
    for (i = 0; i < n; i++) {
        zc_LeaseObject *l = AS_LEASE(items[i]);
        if (l->state != LEASED) {
            bad = items[i];
            twice = l->state == MARKED;
            break;
        }
        l->state = MARKED;
        capacity += (long long)MIN_CLASS << l->cls;
    }
    for (Py_ssize_t j = 0; j < i; j++)
        AS_LEASE(items[j])->state = LEASED;
    PyObject *r = NULL;
    if (twice)
        PyErr_SetString(zc_BufferLifetimeError, "the same lease twice in one batch");
    else if (bad != NULL)
        PyErr_Format(zc_BufferLifetimeError, "%R cannot go in flight: it is not simply leased",
                     bad);
    else
        r = PyLong_FromLongLong(capacity);
    Py_DECREF(seq);
    (void)b; /* the same for every book */
    return r;
}

/* take_off(leases, tickets, key, sender): the checked `leases` go in flight, each with its
 * ticket: counted, listed, and under `key` (None, or the (thread, id(sender)) a waiting acquire
 * reaps) for `sender`. A compiled ticket carries its lease and lands it when done; any other
 * gets lease._on_done as a done callback (which may run at once: the book is complete by then). */
static PyObject *
book_take_off(zc_FlightBookObject *b, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "take_off() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *key = args[2], *sender = args[3];
    PyObject *leases = PySequence_Fast(args[0], "leases must be a sequence");
    PyObject *tickets = leases == NULL ? NULL : PySequence_Fast(args[1],
                                                                 "tickets must be a sequence");
    PyObject *entry = NULL, *r = NULL;
    if (tickets == NULL)
        goto out;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(leases);
    if (PySequence_Fast_GET_SIZE(tickets) != n) {
        PyErr_Format(PyExc_ValueError, "%zd leases for %zd tickets", n,
                     PySequence_Fast_GET_SIZE(tickets));
        goto out;
    }
    PyObject **ls = PySequence_Fast_ITEMS(leases), **ts = PySequence_Fast_ITEMS(tickets);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!IS_LEASE(ls[i])) {
            PyErr_Format(PyExc_TypeError, "take_off() needs leases, not %.100s",
                         Py_TYPE(ls[i])->tp_name);
            goto out;
        }
    if (key != Py_None && n > 0) { /* the one step that can fail (memory): before any change */
        entry = PyDict_GetItemWithError(b->reapers, key);
        if (entry != NULL)
            Py_INCREF(entry);
        else if (PyErr_Occurred()
                 || (entry = Py_BuildValue("[On]", sender, (Py_ssize_t)0)) == NULL
                 || PyDict_SetItem(b->reapers, key, entry) < 0)
            goto out;
        if (entry_add(entry, n) < 0)
            goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        zc_LeaseObject *l = AS_LEASE(ls[i]);
        if (PyDict_SetItem(b->flying, ls[i], ts[i]) < 0)
            PyErr_Clear(); /* memory: unlisted, still counted and landed */
        Py_XSETREF(l->reaper, key == Py_None ? NULL : Py_NewRef(key));
        l->state = IN_FLIGHT;
        b->in_flight++;
    }
    /* Python code from here on: each ticket is told, the first exception raised at the end */
    PyObject *raised = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (zc_ticket_carry(ts[i], ls[i]))
            continue;
        PyObject *cb = PyObject_GetAttr(ls[i], s_on_done);
        PyObject *res = cb == NULL ? NULL
                                   : PyObject_CallMethodOneArg(ts[i], s_add_done_callback, cb);
        Py_XDECREF(cb);
        if (res != NULL)
            Py_DECREF(res);
        else if (raised == NULL)
            raised = zc_get_raised();
        else
            PyErr_WriteUnraisable(ls[i]);
    }
    if (raised != NULL)
        zc_set_raised(raised);
    else
        r = Py_NewRef(Py_None);
out:
    Py_XDECREF(entry);
    Py_XDECREF(leases);
    Py_XDECREF(tickets);
    return r;
}

/* land(lease): `lease`'s flight is over (its ticket is done): no longer counted, listed or
 * reaped for; its state stays "in flight" until the pool claims it back (or holds it back).
 * BufferLifetimeError if it was not in flight. */
static PyObject *
book_land(zc_FlightBookObject *b, PyObject *obj)
{
    if (!IS_LEASE(obj)) {
        PyErr_Format(PyExc_TypeError, "land() needs a lease, not %.100s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    zc_LeaseObject *l = AS_LEASE(obj);
    if (l->state != IN_FLIGHT)
        return PyErr_Format(zc_BufferLifetimeError, "%R: completion for a lease not in flight",
                            obj);
    b->in_flight--;
    if (PyDict_DelItem(b->flying, obj) < 0)
        PyErr_Clear(); /* unlisted (memory at take-off) */
    PyObject *key = l->reaper;
    l->reaper = NULL;
    if (key != NULL) {
        PyObject *entry = PyDict_GetItemWithError(b->reapers, key);
        Py_ssize_t left = entry == NULL ? -1 : entry_add(entry, -1);
        if (left == 0 && PyDict_DelItem(b->reapers, key) < 0)
            left = -1;
        Py_DECREF(key);
        if (left < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_KeyError, "no reapers entry for a lease in flight");
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef book_methods[] = {
    {"check", (PyCFunction)(void (*)(void))book_check, METH_FASTCALL,
     "check($self, pool, leases, /)\n--\n\n"
     "The bytes of the size classes of `leases`, each a lease of `pool` that is simply leased "
     "and there once; else PoolError or BufferLifetimeError, with nothing changed."},
    {"take_off", (PyCFunction)(void (*)(void))book_take_off, METH_FASTCALL,
     "take_off($self, leases, tickets, key, sender, /)\n--\n\n"
     "The checked `leases` go in flight, each until its ticket is done."},
    {"land", (PyCFunction)book_land, METH_O,
     "land($self, lease, /)\n--\n\nThe flight of `lease` is over (its ticket is done)."},
    {NULL},
};

static PyMemberDef book_members[] = {
    {"in_flight", Py_T_PYSSIZET, offsetof(zc_FlightBookObject, in_flight), Py_READONLY,
     "Leases in flight."},
    {"flying", T_OBJECT, offsetof(zc_FlightBookObject, flying), Py_READONLY,
     "dict: each lease in flight -> its ticket (read it with the GIL: copy before iterating)."},
    {"reapers", T_OBJECT, offsetof(zc_FlightBookObject, reapers), Py_READONLY,
     "dict: (thread, id(Sender)) -> [Sender, leases in flight] (copy before iterating)."},
    {NULL},
};

static PyTypeObject FlightBookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.FlightBook",
    .tp_basicsize = sizeof(zc_FlightBookObject),
    .tp_dealloc = (destructor)book_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "FlightBook(lock=None)\n--\n\nzcnet._core.flight.FlightBook in C: a pool's leases "
              "in flight (the lock is the reference's; this one runs under the GIL).",
    .tp_traverse = (traverseproc)book_traverse,
    .tp_clear = (inquiry)book_clear,
    .tp_methods = book_methods,
    .tp_members = book_members,
    .tp_new = book_new,
};

static PyMethodDef lease_functions[] = {
    {"new_lease", (PyCFunction)(void (*)(void))lease_new_lease, METH_FASTCALL,
     "new_lease(cls, pool, block, size, owner, /)\n--\n\n"
     "A new leased `cls` (a LeaseBase subclass) over `size` bytes of `block`, without "
     "__init__."},
    {"claim_lease", (PyCFunction)(void (*)(void))lease_claim, METH_FASTCALL,
     "claim_lease(lease, from_flight=False, /)\n--\n\n"
     "Take the right to give `lease` back and end it (zcnet.pool._py_claim)."},
    {NULL},
};

int
zc_lease_init(PyObject *module)
{
    static const zc_InternedName names[] = {
        {&s_slab, "slab"}, {&s_mm, "mm"}, {&s_start, "start"}, {&s_cls, "cls"},
        {&s_check_mine, "_check_mine"}, {&s_add_done_callback, "add_done_callback"},
        {&s_on_done, "_on_done"},
    };
    if (zc_intern(names, sizeof(names) / sizeof(names[0])) < 0)
        return -1;
    LeaseBaseType.tp_base = &zc_BufferBaseType;
    if (PyType_Ready(&LeaseBaseType) < 0 || PyType_Ready(&FlightBookType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "LeaseBase", (PyObject *)&LeaseBaseType) < 0
        || PyModule_AddObjectRef(module, "FlightBook", (PyObject *)&FlightBookType) < 0)
        return -1;
    return PyModule_AddFunctions(module, lease_functions);
}
