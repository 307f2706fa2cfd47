/* Pool leases in C (docs/ARCHITECTURE.md, 'Compiled fast path'): a lease's fields and state
 * (LeaseBase), its claim (the right to give it back, taken exactly once: claim_lease), a pool's
 * book of the leases in flight (FlightBook), a thread's free lists (ThreadCache) and a
 * BufferPool's acquire and landing in their common cases (PoolCore). The pure-Python reference
 * is zcnet/pool.py (Lease, _py_claim, _ThreadCache, BufferPool.acquire and _end_flight) and
 * zcnet/_core/flight.py (FlightBook); one test suite runs on both.
 *
 * Each function runs with the GIL held and calls no Python code between the first field it reads
 * and the last it writes (a repr for an error message only after everything is restored), so it
 * is one step for every other thread; the reference takes the pool's lock instead. */
#include "zcnet_ext.h"

/* zcnet._core.flight's lease states */
enum { LEASED = 0, IN_FLIGHT = 1, RELEASED = 2, HELD = 3, MARKED = -1 /* check()'s own */ };
/* zcnet.pool.MIN_CLASS: size class k holds MIN_CLASS << k bytes */
#define MIN_CLASS 4096

typedef struct zc_LeaseObject {
    zc_BufferBaseObject base;
    PyObject *pool, *block, *owner, *reaper, *view;
    PyObject *core; /* the pool's PoolCore (NULL: landed by the pool's Python _end_flight) */
    /* in a compiled FlightBook: the ticket it flies with, the reapers entry of its `reaper` key
     * (counted there), and its neighbours in the book's list of leases in flight (the book
     * holds a reference to each lease listed) */
    PyObject *ticket, *entry;
    struct zc_LeaseObject *prev, *next;
    Py_ssize_t size;
    int state;
    int cls;
    char claimed;
} zc_LeaseObject;

static PyTypeObject LeaseBaseType;
static PyObject *s_slab, *s_mm, *s_start, *s_cls, *s_check_mine, *s_add_done_callback,
    *s_on_done;

#define AS_LEASE(o) ((zc_LeaseObject *)(o))
#define IS_LEASE(o) is_lease(o)

/* The LeaseBase subclass seen last (a strong reference): leases are instances of a Python
 * subclass (zcnet.pool.Lease), for which PyObject_TypeCheck walks the MRO at every call; an
 * exact-type comparison first makes the common case one load. */
static PyTypeObject *lease_type_seen;

static int
is_lease(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    if (t == lease_type_seen || t == &LeaseBaseType)
        return 1;
    if (!PyType_IsSubtype(t, &LeaseBaseType))
        return 0;
    PyTypeObject *old = lease_type_seen;
    lease_type_seen = (PyTypeObject *)Py_NewRef(t);
    Py_XDECREF(old);
    return 1;
}

/* -- LeaseBase ---------------------------------------------------------------------------- */

static int
lease_traverse(zc_LeaseObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->pool);
    Py_VISIT(self->block);
    Py_VISIT(self->owner);
    Py_VISIT(self->reaper);
    Py_VISIT(self->view);
    Py_VISIT(self->core);
    Py_VISIT(self->ticket);
    Py_VISIT(self->entry);
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
    Py_CLEAR(self->core);
    Py_CLEAR(self->ticket);
    Py_CLEAR(self->entry);
    return 0; /* (prev and next are the book's: it unlinks them) */
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

/* A leased `type` over `size` bytes of `block` (block.slab.mm at block.start, size class
 * block.cls), owned by the thread cache `owner`, landed through `core` (may be NULL), without
 * __init__: a new reference, or NULL with an exception set. */
/* Where a zcnet.pool._Block keeps its slab, start and size class and a _Slab its mmap: the
 * offsets of their __slots__ members (read once, from the classes' member descriptors), so a
 * lease is made without an attribute lookup per field; any other block is read by getattr. */
typedef struct {
    PyTypeObject *block_type, *slab_type; /* NULL: not known, getattr */
    Py_ssize_t slab, start, cls, mm;
} BlockLayout;

static int
slot_offset(PyTypeObject *type, PyObject *name, Py_ssize_t *offset)
{
    PyObject *d = PyObject_GetAttr((PyObject *)type, name);
    if (d == NULL)
        return -1;
    int ok = Py_TYPE(d) == &PyMemberDescr_Type
             && ((PyMemberDescrObject *)d)->d_member->type == Py_T_OBJECT_EX;
    if (ok)
        *offset = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    if (!ok)
        PyErr_Format(PyExc_TypeError, "%.100s.%U is not a __slots__ member", type->tp_name, name);
    return ok ? 0 : -1;
}

/* A slot's value (a borrowed reference), or NULL with AttributeError if it is unset. */
static PyObject *
slot_get(PyObject *obj, Py_ssize_t offset, PyObject *name)
{
    PyObject *v = *(PyObject **)((char *)obj + offset);
    if (v == NULL)
        PyErr_SetObject(PyExc_AttributeError, name);
    return v;
}

/* The block's mmap (new reference), its start in it and its size class: 0, or -1 with an
 * exception set. */
static int
block_fields(const BlockLayout *layout, PyObject *block, PyObject **mm, Py_ssize_t *start,
             long *cls)
{
    PyObject *slab, *st, *k;
    int own = layout == NULL || layout->block_type == NULL || Py_TYPE(block) != layout->block_type;
    if (own) {
        slab = PyObject_GetAttr(block, s_slab);
        *mm = slab == NULL ? NULL : PyObject_GetAttr(slab, s_mm);
        st = *mm == NULL ? NULL : PyObject_GetAttr(block, s_start);
        k = st == NULL ? NULL : PyObject_GetAttr(block, s_cls);
        Py_XDECREF(slab);
    } else {
        slab = slot_get(block, layout->slab, s_slab);
        if (slab != NULL && Py_TYPE(slab) != layout->slab_type) {
            PyErr_SetString(PyExc_TypeError, "a pool block whose slab is not a _Slab");
            slab = NULL;
        }
        *mm = slab == NULL ? NULL : Py_XNewRef(slot_get(slab, layout->mm, s_mm));
        st = *mm == NULL ? NULL : Py_XNewRef(slot_get(block, layout->start, s_start));
        k = st == NULL ? NULL : Py_XNewRef(slot_get(block, layout->cls, s_cls));
    }
    int rc = -1;
    if (k != NULL) {
        *start = PyLong_AsSsize_t(st);
        *cls = PyLong_AsLong(k);
        rc = PyErr_Occurred() ? -1 : 0;
    }
    Py_XDECREF(st);
    Py_XDECREF(k);
    if (rc < 0)
        Py_CLEAR(*mm);
    return rc;
}

static PyObject *
make_lease(PyTypeObject *type, PyObject *pool, PyObject *block, Py_ssize_t size, PyObject *owner,
           PyObject *core, const BlockLayout *layout)
{
    PyObject *mm = NULL;
    Py_ssize_t offset;
    long k;
    if (block_fields(layout, block, &mm, &offset, &k) < 0)
        return NULL;
    PyObject *lease = zc_buffer_new(type, mm, offset, size, 0, NULL);
    Py_DECREF(mm);
    if (lease != NULL) {
        zc_LeaseObject *l = AS_LEASE(lease);
        l->pool = Py_NewRef(pool);
        l->block = Py_NewRef(block);
        l->owner = Py_NewRef(owner);
        l->core = Py_XNewRef(core);
        l->size = size;
        l->state = LEASED;
        l->cls = (int)k;
    }
    return lease;
}

/* new_lease(cls, pool, block, size, owner, core=None): make_lease for Python. */
static PyObject *
lease_new_lease(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 && nargs != 6) {
        PyErr_Format(PyExc_TypeError, "new_lease() takes 5 or 6 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *type = args[0];
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &LeaseBaseType)) {
        PyErr_SetString(PyExc_TypeError, "new_lease() needs a subclass of LeaseBase");
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[3]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    return make_lease((PyTypeObject *)type, args[1], args[2], size, args[4],
                      nargs == 6 && args[5] != Py_None ? args[5] : NULL, NULL);
}

/* Take the right to give `obj` (a lease) back and end it: 1; 0 if its memory is still used
 * (nothing changed, no exception); -1 with BufferLifetimeError (not simply leased unless
 * `from_flight`, or claimed before) or another exception, nothing changed. */
static int
claim(PyObject *obj, int from_flight)
{
    zc_LeaseObject *l = AS_LEASE(obj);
    if (l->state != LEASED && !from_flight) {
        if (l->state == IN_FLIGHT) {
            PyErr_Format(zc_BufferLifetimeError, "%R is in flight; it returns to the pool when "
                         "its ticket is done", obj);
            return -1;
        }
        if (l->state == HELD) {
            PyErr_Format(zc_BufferLifetimeError, "%R was handed to release_when_done; it returns "
                         "to the pool by itself once the export of its memory is gone", obj);
            return -1;
        }
    }
    if (l->claimed) {
        PyErr_Format(zc_BufferLifetimeError, "%R was released twice", obj);
        return -1;
    }
    int ended = zc_end_lease(obj, l->view == NULL ? Py_None : l->view);
    if (ended == 1) {
        l->claimed = 1;
        l->state = RELEASED;
    }
    return ended;
}

/* claim(), with BufferLifetimeError for memory still in use: 0, or -1 with an exception set. */
static int
claim_or_raise(PyObject *obj, int from_flight)
{
    int ended = claim(obj, from_flight);
    if (ended == 0)
        PyErr_Format(zc_BufferLifetimeError, "%R is still in use: a memoryview, array or other "
                     "object made from it or its view is alive; release or drop it first", obj);
    return ended == 1 ? 0 : -1;
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
    if (claim_or_raise(obj, from_flight) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* -- FlightBook ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t in_flight;
    /* the leases in flight, in take-off order, each with its ticket (the reference's `flying`
     * dict, made on demand): a list through the leases themselves, so a take-off and a landing
     * change pointers, not a dict; the book holds a reference to each */
    zc_LeaseObject *first, *last;
    PyObject *reapers; /* dict: (thread, id(Sender)) -> [Sender, leases in flight] */
} zc_FlightBookObject;

static void
book_link(zc_FlightBookObject *b, zc_LeaseObject *l, PyObject *ticket)
{
    if (l->ticket != NULL) { /* listed already: its ticket is replaced, as in the reference's
                              * dict (the pool's check() refuses such a lease before) */
        Py_SETREF(l->ticket, Py_NewRef(ticket));
        return;
    }
    Py_INCREF(l);
    l->ticket = Py_NewRef(ticket);
    l->prev = b->last;
    l->next = NULL;
    if (b->last != NULL)
        b->last->next = l;
    else
        b->first = l;
    b->last = l;
}

/* Unlink `l` (listed): the book's reference to it and its ticket go to the caller. */
static void
book_unlink(zc_FlightBookObject *b, zc_LeaseObject *l)
{
    if (l->prev != NULL)
        l->prev->next = l->next;
    else
        b->first = l->next;
    if (l->next != NULL)
        l->next->prev = l->prev;
    else
        b->last = l->prev;
    l->prev = l->next = NULL;
}

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
    b->reapers = PyDict_New();
    if (b->reapers == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    return (PyObject *)b;
}

static int
book_traverse(zc_FlightBookObject *b, visitproc visit, void *arg)
{
    for (zc_LeaseObject *l = b->first; l != NULL; l = l->next)
        Py_VISIT((PyObject *)l);
    Py_VISIT(b->reapers);
    return 0;
}

static int
book_clear(zc_FlightBookObject *b)
{
    while (b->first != NULL) {
        zc_LeaseObject *l = b->first;
        book_unlink(b, l);
        PyObject *ticket = l->ticket;
        l->ticket = NULL;
        Py_XDECREF(ticket);
        Py_DECREF(l);
    }
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

/* check(pool, leases) of the `n` leases `items` (the caller holds them): their capacity, or -1
 * with an exception set, nothing changed. */
static long long
book_check_items(PyObject *pool, PyObject *const *items, Py_ssize_t n)
{
    Py_ssize_t i;
    for (i = 0; i < n; i++) { /* whose lease: the pool's own message */
        if (!IS_LEASE(items[i]) || AS_LEASE(items[i])->pool != pool) {
            PyObject *r = PyObject_CallMethodOneArg(pool, s_check_mine, items[i]);
            if (r == NULL)
                return -1;
            Py_DECREF(r);
            if (!IS_LEASE(items[i])) { /* _check_mine accepted something we cannot fly */
                PyErr_Format(PyExc_TypeError, "%.100s is not a lease", Py_TYPE(items[i])->tp_name);
                return -1;
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
    if (twice)
        PyErr_SetString(zc_BufferLifetimeError, "the same lease twice in one batch");
    else if (bad != NULL)
        PyErr_Format(zc_BufferLifetimeError, "%R cannot go in flight: it is not simply leased",
                     bad);
    return twice || bad != NULL ? -1 : capacity;
}

static PyObject *
book_check(zc_FlightBookObject *b, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "check() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[1], "leases must be a sequence");
    if (seq == NULL)
        return NULL;
    long long capacity = book_check_items(args[0], PySequence_Fast_ITEMS(seq),
                                          PySequence_Fast_GET_SIZE(seq));
    Py_DECREF(seq);
    (void)b; /* the same for every book */
    return capacity < 0 ? NULL : PyLong_FromLongLong(capacity);
}

/* take_off of the `n` leases `ls` with their tickets `ts` (the caller holds them all): 0, or
 * -1 with an exception set (nothing changed if the reapers entry could not be made; a ticket's
 * exception after every lease went in flight). */
static int
book_take_off_items(zc_FlightBookObject *b, PyObject *const *ls, PyObject *const *ts,
                    Py_ssize_t n, PyObject *key, PyObject *sender)
{
    PyObject *entry = NULL;
    int rc = -1;
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
        book_link(b, l, ts[i]);
        Py_XSETREF(l->reaper, key == Py_None ? NULL : Py_NewRef(key));
        Py_XSETREF(l->entry, Py_XNewRef(entry));
        l->state = IN_FLIGHT;
        b->in_flight++;
    }
    /* Python code from here on: each ticket is told, the first exception raised at the end */
    PyObject *raised = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        int carried = zc_ticket_carry(ts[i], ls[i]);
        if (carried > 0)
            continue;
        if (carried < 0) {
            if (raised == NULL)
                raised = zc_get_raised();
            else
                PyErr_WriteUnraisable(ls[i]);
            continue;
        }
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
        rc = 0;
out:
    Py_XDECREF(entry);
    return rc;
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
    PyObject *leases = PySequence_Fast(args[0], "leases must be a sequence");
    PyObject *tickets = leases == NULL ? NULL : PySequence_Fast(args[1],
                                                                 "tickets must be a sequence");
    PyObject *r = NULL;
    if (tickets == NULL)
        goto out;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(leases);
    if (PySequence_Fast_GET_SIZE(tickets) != n) {
        PyErr_Format(PyExc_ValueError, "%zd leases for %zd tickets", n,
                     PySequence_Fast_GET_SIZE(tickets));
        goto out;
    }
    if (book_take_off_items(b, PySequence_Fast_ITEMS(leases), PySequence_Fast_ITEMS(tickets), n,
                            args[2], args[3]) == 0)
        r = Py_NewRef(Py_None);
out:
    Py_XDECREF(leases);
    Py_XDECREF(tickets);
    return r;
}

/* The flight of the lease `obj` is over: 0, or -1 with an exception set (BufferLifetimeError if
 * it was not in flight, nothing changed). */
static int
book_land_one(zc_FlightBookObject *b, PyObject *obj)
{
    zc_LeaseObject *l = AS_LEASE(obj);
    if (l->state != IN_FLIGHT) {
        PyErr_Format(zc_BufferLifetimeError, "%R: completion for a lease not in flight", obj);
        return -1;
    }
    b->in_flight--;
    PyObject *ticket = l->ticket, *key = l->reaper, *entry = l->entry;
    if (ticket != NULL) { /* listed (a lease put in flight by this book) */
        book_unlink(b, l);
        l->ticket = NULL;
    }
    l->reaper = l->entry = NULL;
    Py_ssize_t left = 0;
    if (key != NULL) {
        left = entry == NULL ? -1 : entry_add(entry, -1);
        if (left == 0) { /* the last of its key: the entry leaves the dict */
            PyObject *listed = PyDict_GetItemWithError(b->reapers, key);
            if (listed == entry ? PyDict_DelItem(b->reapers, key) < 0 : PyErr_Occurred() != NULL)
                left = -1;
        }
    }
    Py_XDECREF(entry);
    Py_XDECREF(key);
    Py_XDECREF(ticket);
    if (ticket != NULL)
        Py_DECREF(obj); /* the book's reference (the caller holds one) */
    if (left < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "no reapers entry for a lease in flight");
        return -1;
    }
    return 0;
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
    if (book_land_one(b, obj) < 0)
        return NULL;
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
    {"reapers", T_OBJECT, offsetof(zc_FlightBookObject, reapers), Py_READONLY,
     "dict: (thread, id(Sender)) -> [Sender, leases in flight] (copy before iterating)."},
    {NULL},
};

static PyObject *
book_flying(zc_FlightBookObject *b, void *Py_UNUSED(closure))
{
    PyObject *d = PyDict_New();
    for (zc_LeaseObject *l = b->first; d != NULL && l != NULL; l = l->next)
        if (PyDict_SetItem(d, (PyObject *)l, l->ticket != NULL ? l->ticket : Py_None) < 0)
            Py_CLEAR(d);
    return d;
}

static PyGetSetDef book_getset[] = {
    {"flying", (getter)book_flying, NULL,
     "A new dict: each lease in flight -> its ticket, in take-off order.", NULL},
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
    .tp_getset = book_getset,
    .tp_new = book_new,
};

/* -- ThreadCache ---------------------------------------------------------------------------- */

/* zcnet.pool._ThreadCache in C: one thread's free lists (Python lists, one per size class, which
 * the pool's Python code reads and writes too), its deferred-return queue (a deque) and its
 * counters, with the thread's identity so that the C return path knows its owner. */
typedef struct {
    PyObject_HEAD
    PyObject *free, *deferred, *token_ref, *name;
    unsigned long ident; /* the owner thread (PyThread_get_thread_ident at creation) */
    Py_ssize_t acquires, releases, cross_releases, drained;
} zc_ThreadCacheObject;

static PyTypeObject ThreadCacheType;
static PyObject *deque_type; /* collections.deque */

static PyObject *
cache_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"nclasses", "token", "name", NULL};
    Py_ssize_t n;
    PyObject *token, *name;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nOU:ThreadCache", kwlist, &n, &token, &name))
        return NULL;
    if (n < 0)
        return PyErr_Format(PyExc_ValueError, "nclasses must be >= 0, not %zd", n);
    zc_ThreadCacheObject *c = (zc_ThreadCacheObject *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->name = Py_NewRef(name);
    c->ident = PyThread_get_thread_ident();
    c->free = PyList_New(n);
    if (c->free != NULL)
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *fl = PyList_New(0);
            if (fl == NULL) {
                Py_DECREF(c);
                return NULL;
            }
            PyList_SET_ITEM(c->free, i, fl);
        }
    if (c->free == NULL || (c->deferred = PyObject_CallNoArgs(deque_type)) == NULL
        || (c->token_ref = PyWeakref_NewRef(token, NULL)) == NULL) {
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

static int
cache_traverse(zc_ThreadCacheObject *c, visitproc visit, void *arg)
{
    Py_VISIT(c->free);
    Py_VISIT(c->deferred);
    Py_VISIT(c->token_ref);
    Py_VISIT(c->name);
    return 0;
}

static int
cache_clear(zc_ThreadCacheObject *c)
{
    Py_CLEAR(c->free);
    Py_CLEAR(c->deferred);
    Py_CLEAR(c->token_ref);
    Py_CLEAR(c->name);
    return 0;
}

static void
cache_dealloc(zc_ThreadCacheObject *c)
{
    PyObject_GC_UnTrack(c);
    cache_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* Whether the owner thread lives (its token, kept only in its threading.local, is alive). */
static int
cache_is_alive(zc_ThreadCacheObject *c)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *token;
    int r = PyWeakref_GetRef(c->token_ref, &token);
    if (r < 0) {
        PyErr_Clear();
        return 0;
    }
    Py_XDECREF(token);
    return r;
#else
    return PyWeakref_GetObject(c->token_ref) != Py_None;
#endif
}

static PyObject *
cache_alive(zc_ThreadCacheObject *c, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(cache_is_alive(c));
}

static PyMethodDef cache_methods[] = {
    {"alive", (PyCFunction)cache_alive, METH_NOARGS,
     "alive($self, /)\n--\n\nWhether the owner thread still runs."},
    {NULL},
};

static PyMemberDef cache_members[] = {
    {"free", T_OBJECT, offsetof(zc_ThreadCacheObject, free), Py_READONLY,
     "Per size class, the list of free blocks."},
    {"deferred", T_OBJECT, offsetof(zc_ThreadCacheObject, deferred), Py_READONLY,
     "Blocks other threads returned (a deque), taken back by the owner in bulk."},
    {"token_ref", T_OBJECT, offsetof(zc_ThreadCacheObject, token_ref), Py_READONLY, NULL},
    {"name", T_OBJECT, offsetof(zc_ThreadCacheObject, name), Py_READONLY, "The thread's name."},
    {"ident", T_ULONG, offsetof(zc_ThreadCacheObject, ident), Py_READONLY,
     "The owner thread's identifier."},
    {"acquires", Py_T_PYSSIZET, offsetof(zc_ThreadCacheObject, acquires), 0, NULL},
    {"releases", Py_T_PYSSIZET, offsetof(zc_ThreadCacheObject, releases), 0, NULL},
    {"cross_releases", Py_T_PYSSIZET, offsetof(zc_ThreadCacheObject, cross_releases), 0, NULL},
    {"drained", Py_T_PYSSIZET, offsetof(zc_ThreadCacheObject, drained), 0, NULL},
    {NULL},
};

static PyTypeObject ThreadCacheType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.ThreadCache",
    .tp_basicsize = sizeof(zc_ThreadCacheObject),
    .tp_dealloc = (destructor)cache_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "ThreadCache(nclasses, token, name)\n--\n\nzcnet.pool._ThreadCache in C: one "
              "thread's free lists, deferred returns and counters.",
    .tp_traverse = (traverseproc)cache_traverse,
    .tp_clear = (inquiry)cache_clear,
    .tp_methods = cache_methods,
    .tp_members = cache_members,
    .tp_new = cache_new,
};

/* -- PoolCore -------------------------------------------------------------------------------- */

/* A BufferPool's common cases in C (docs/ARCHITECTURE.md, 'Compiled fast path'): acquire from
 * this thread's free list, and a lease's landing back onto its owner's free list. Everything
 * else (a closed pool, a timeout, an empty list, deferred returns to take back, waiters, an
 * account to move, a lease still exported, another thread's lease) goes to the pool's Python
 * methods, which decide, before anything is changed. */
typedef struct {
    PyObject_HEAD
    PyObject *pool_ref; /* a weak reference: the pool owns its core (its acquire is the core's),
                         * and a pool dropped without close() is freed at once, as before */
    PyObject *lease_type, *local, *book, *account, *waiters, *cap;
    PyObject *fallback, *release_fallback; /* BufferPool.acquire and .release, the functions */
    /* the pool's lock and its shared free lists (a list per size class), for a spill in C; NULL:
     * BufferPool._spill */
    PyObject *lock, *shared;
    Py_ssize_t max_size;
    /* the ThreadCache the last fast acquire found in `local`, and its thread: the next acquire
     * of that thread skips the threading.local lookup while the cache's owner lives (a thread's
     * cache is never replaced while it lives: BufferPool._cache) */
    PyObject *last_cache;
    unsigned long last_ident;
    BlockLayout layout; /* where the pool's blocks keep their fields (block_type NULL: getattr) */
    char closed;        /* BufferPool.close() ran: every acquire goes to the Python method */
} zc_PoolCoreObject;

/* The core's pool (a new reference), or NULL with ReferenceError once it is gone. */
static PyObject *
core_pool(zc_PoolCoreObject *c)
{
    PyObject *pool = NULL;
    if (c->pool_ref != NULL) {
#if PY_VERSION_HEX >= 0x030D0000
        if (PyWeakref_GetRef(c->pool_ref, &pool) < 0)
            return NULL;
#else
        pool = PyWeakref_GetObject(c->pool_ref);
        pool = pool == Py_None ? NULL : Py_NewRef(pool);
#endif
    }
    if (pool == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_ReferenceError, "the BufferPool of this acquire is gone");
    return pool;
}

static PyTypeObject PoolCoreType;
static PyObject *core_return(zc_PoolCoreObject *c, PyObject *obj);
static PyObject *s_cache, *s_end_flight, *s_hold_back, *s_return, *s_spill, *s_acquire,
    *s_release;

static PyObject *
core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pool", "lease_type", "local", "book", "account", "waiters", "cap",
                             "max_size", "fallback", "release_fallback", "block_type",
                             "slab_type", "lock", "shared", NULL};
    PyObject *pool, *lease_type, *local, *book, *account, *waiters, *cap, *fallback, *rfallback;
    PyObject *lock = NULL, *shared = NULL;
    PyTypeObject *block_type = NULL, *slab_type = NULL;
    Py_ssize_t max_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO!O!nOO|$O!O!OO!:PoolCore", kwlist, &pool,
                                     &lease_type, &local, &book, &account, &PySet_Type, &waiters,
                                     &PyList_Type, &cap, &max_size, &fallback, &rfallback,
                                     &PyType_Type, &block_type, &PyType_Type, &slab_type,
                                     &lock, &PyList_Type, &shared))
        return NULL;
    if ((lock == NULL) != (shared == NULL))
        return PyErr_Format(PyExc_TypeError, "lock and shared go together");
    if (shared != NULL) {
        if (PyList_GET_SIZE(shared) != PyList_GET_SIZE(cap))
            return PyErr_Format(PyExc_ValueError, "shared needs a list per size class of cap");
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(shared); i++)
            if (!PyList_CheckExact(PyList_GET_ITEM(shared, i)))
                return PyErr_Format(PyExc_TypeError, "shared must be a list of lists");
    }
    BlockLayout layout = {NULL, NULL, 0, 0, 0, 0};
    if ((block_type == NULL) != (slab_type == NULL))
        return PyErr_Format(PyExc_TypeError, "block_type and slab_type go together");
    if (block_type != NULL) {
        if (slot_offset(block_type, s_slab, &layout.slab) < 0
            || slot_offset(block_type, s_start, &layout.start) < 0
            || slot_offset(block_type, s_cls, &layout.cls) < 0
            || slot_offset(slab_type, s_mm, &layout.mm) < 0)
            return NULL;
        layout.block_type = block_type;
        layout.slab_type = slab_type;
    }
    if (!PyType_Check(lease_type)
        || !PyType_IsSubtype((PyTypeObject *)lease_type, &LeaseBaseType))
        return PyErr_Format(PyExc_TypeError, "lease_type must be a subclass of LeaseBase");
    if (!PyObject_TypeCheck(book, &FlightBookType))
        return PyErr_Format(PyExc_TypeError, "book must be a FlightBook");
    zc_PoolCoreObject *c = (zc_PoolCoreObject *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    if ((c->pool_ref = PyWeakref_NewRef(pool, NULL)) == NULL) {
        Py_DECREF(c);
        return NULL;
    }
    c->lease_type = Py_NewRef(lease_type);
    c->local = Py_NewRef(local);
    c->book = Py_NewRef(book);
    c->account = Py_NewRef(account);
    c->waiters = Py_NewRef(waiters);
    c->cap = Py_NewRef(cap);
    c->fallback = Py_NewRef(fallback);
    c->release_fallback = Py_NewRef(rfallback);
    c->lock = Py_XNewRef(lock);
    c->shared = Py_XNewRef(shared);
    c->max_size = max_size;
    c->layout = layout;
    Py_XINCREF(block_type);
    Py_XINCREF(slab_type);
    return (PyObject *)c;
}

static int
core_traverse(zc_PoolCoreObject *c, visitproc visit, void *arg)
{
    Py_VISIT(c->pool_ref);
    Py_VISIT(c->lease_type);
    Py_VISIT(c->local);
    Py_VISIT(c->book);
    Py_VISIT(c->account);
    Py_VISIT(c->waiters);
    Py_VISIT(c->cap);
    Py_VISIT(c->fallback);
    Py_VISIT(c->release_fallback);
    Py_VISIT(c->lock);
    Py_VISIT(c->shared);
    Py_VISIT(c->last_cache);
    Py_VISIT(c->layout.block_type);
    Py_VISIT(c->layout.slab_type);
    return 0;
}

static int
core_clear(zc_PoolCoreObject *c)
{
    Py_CLEAR(c->pool_ref);
    Py_CLEAR(c->lease_type);
    Py_CLEAR(c->local);
    Py_CLEAR(c->book);
    Py_CLEAR(c->account);
    Py_CLEAR(c->waiters);
    Py_CLEAR(c->cap);
    Py_CLEAR(c->fallback);
    Py_CLEAR(c->release_fallback);
    Py_CLEAR(c->lock);
    Py_CLEAR(c->shared);
    Py_CLEAR(c->last_cache);
    Py_CLEAR(c->layout.block_type);
    Py_CLEAR(c->layout.slab_type);
    return 0;
}

static void
core_dealloc(zc_PoolCoreObject *c)
{
    PyObject_GC_UnTrack(c);
    core_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* The lease of `size` bytes from this thread's free list, or NULL with no exception when the
 * Python acquire must decide (or NULL with an exception set). */
static PyObject *
core_acquire_fast(zc_PoolCoreObject *c, PyObject *pool, PyObject *size_obj)
{
    if (!PyLong_CheckExact(size_obj))
        return NULL;
    Py_ssize_t size = PyLong_AsSsize_t(size_obj);
    if (size == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return NULL;
    }
    if (size < 0 || size > c->max_size)
        return NULL; /* the Python acquire raises */
    /* zcnet.pool._PoolBase._class_index: class k holds MIN_CLASS << k bytes */
    int cls = size <= MIN_CLASS ? 0 : 64 - __builtin_clzll((unsigned long long)(size - 1)) - 12;
    if (c->closed)
        return NULL;
    unsigned long ident = PyThread_get_thread_ident();
    PyObject *obj; /* this thread's ThreadCache */
    if (c->last_cache != NULL && c->last_ident == ident
        && cache_is_alive((zc_ThreadCacheObject *)c->last_cache)) {
        obj = Py_NewRef(c->last_cache);
    } else {
        obj = PyObject_GetAttr(c->local, s_cache);
        if (obj == NULL) {
            PyErr_Clear();
            return NULL;
        }
        if (Py_TYPE(obj) == &ThreadCacheType) {
            Py_XSETREF(c->last_cache, Py_NewRef(obj));
            c->last_ident = ident;
        }
    }
    zc_ThreadCacheObject *cache = (zc_ThreadCacheObject *)obj;
    PyObject *lease = NULL;
    if (Py_TYPE(obj) == &ThreadCacheType && cls < PyList_GET_SIZE(cache->free)
        && PyObject_Length(cache->deferred) == 0) {
        PyObject *fl = PyList_GET_ITEM(cache->free, cls);
        Py_ssize_t n = PyList_GET_SIZE(fl);
        if (n > 0) {
            PyObject *block = Py_NewRef(PyList_GET_ITEM(fl, n - 1));
            if (PyList_SetSlice(fl, n - 1, n, NULL) == 0) {
                lease = make_lease((PyTypeObject *)c->lease_type, pool, block, size, obj,
                                   (PyObject *)c, &c->layout);
                if (lease != NULL)
                    cache->acquires++;
                else if (PyList_Append(fl, block) < 0) /* not lost: back where it was */
                    PyErr_WriteUnraisable(block);
            }
            Py_DECREF(block);
        }
    }
    PyErr_Clear(); /* a failure here leaves the decision to the Python acquire */
    Py_DECREF(obj);
    return lease;
}

/* acquire(size, timeout=None): BufferPool.acquire, its common case in C. */
static PyObject *
core_acquire(zc_PoolCoreObject *c, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *pool = core_pool(c);
    if (pool == NULL)
        return NULL;
    PyObject *r = NULL;
    if (nkw == 0 && (nargs == 1 || (nargs == 2 && args[1] == Py_None)))
        r = core_acquire_fast(c, pool, args[0]);
    if (r == NULL && !PyErr_Occurred()) { /* BufferPool.acquire(pool, *args, **kwargs) */
        PyObject *small[8], **stack = small;
        if (nargs + nkw + 1 > 8 && (stack = PyMem_Malloc((size_t)(nargs + nkw + 1)
                                                         * sizeof(PyObject *))) == NULL) {
            Py_DECREF(pool);
            return PyErr_NoMemory();
        }
        stack[0] = pool;
        for (Py_ssize_t i = 0; i < nargs + nkw; i++)
            stack[i + 1] = args[i];
        r = PyObject_Vectorcall(c->fallback, stack, (size_t)(nargs + 1), kwnames);
        if (stack != small)
            PyMem_Free(stack);
    }
    Py_DECREF(pool);
    return r;
}

/* release(lease): BufferPool.release, its common case in C. */
static PyObject *
core_release(zc_PoolCoreObject *c, PyObject *obj)
{
    if (!IS_LEASE(obj) || AS_LEASE(obj)->core != (PyObject *)c) { /* the Python one decides */
        PyObject *pool = core_pool(c);
        if (pool == NULL)
            return NULL;
        PyObject *r = PyObject_CallFunctionObjArgs(c->release_fallback, pool, obj, NULL);
        Py_DECREF(pool);
        return r;
    }
    if (claim_or_raise(obj, 0) < 0)
        return NULL;
    return core_return(c, obj);
}

static PyMemberDef core_members[] = {
    {"closed", T_BOOL, offsetof(zc_PoolCoreObject, closed), 0,
     "Set by BufferPool.close(): acquire goes to the Python method, which refuses."},
    {NULL},
};

static PyMethodDef core_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))core_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire($self, size, timeout=None)\n--\n\nBufferPool.acquire (its common case in C)."},
    {"release", (PyCFunction)core_release, METH_O,
     "release($self, lease, /)\n--\n\nBufferPool.release (its common case in C)."},
    {NULL},
};

static PyTypeObject PoolCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.PoolCore",
    .tp_basicsize = sizeof(zc_PoolCoreObject),
    .tp_dealloc = (destructor)core_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "PoolCore(pool, lease_type, local, book, account, waiters, cap, max_size, "
              "fallback, release_fallback, *, block_type=None, slab_type=None)\n--\n\n"
              "A BufferPool's acquire, release and landing, their common cases in C (block_type "
              "and slab_type: the __slots__ classes of its blocks and slabs, read without "
              "getattr).",
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_members = core_members,
    .tp_new = core_new,
};

/* BufferPool._spill of the free list `fl` of size class `cls` (capacity `cap`), in C: the blocks
 * past half the capacity go to the pool's shared list, both steps under the pool's lock, taken
 * without blocking. 1 done; 0 not done, nothing changed (no lock and lists given, the pool
 * closed, or the lock busy: the Python method waits for it); -1 with an exception. No Python
 * code runs while the lock is held: the blocks only move between lists that hold them. */
static int
core_spill(zc_PoolCoreObject *c, PyObject *fl, int cls, Py_ssize_t cap)
{
    if (c->lock == NULL || c->closed || cls >= PyList_GET_SIZE(c->shared))
        return 0;
    PyObject *got = PyObject_CallMethodOneArg(c->lock, s_acquire, Py_False);
    if (got == NULL)
        return -1;
    int locked = PyObject_IsTrue(got);
    Py_DECREF(got);
    if (locked <= 0)
        return locked;
    Py_ssize_t keep = cap / 2, n = PyList_GET_SIZE(fl);
    PyObject *shared = PyList_GET_ITEM(c->shared, cls);
    PyObject *tail = PyList_GetSlice(fl, keep, n);
    int rc = tail == NULL ? -1 : PyList_SetSlice(shared, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, tail);
    if (rc == 0)
        rc = PyList_SetSlice(fl, keep, n, NULL);
    Py_XDECREF(tail);
    PyObject *exc = rc < 0 ? zc_get_raised() : NULL;
    PyObject *r = PyObject_CallMethodNoArgs(c->lock, s_release);
    if (exc != NULL) {
        Py_XDECREF(r);
        zc_set_raised(exc);
        return -1;
    }
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 1;
}

/* BufferPool._return of the claimed lease `obj`: onto its owner's free list in C when the owner
 * is this thread and nobody waits, else the Python method (a new reference to None, or NULL). */
static PyObject *
core_return(zc_PoolCoreObject *c, PyObject *obj)
{
    zc_LeaseObject *l = AS_LEASE(obj);
    zc_ThreadCacheObject *owner = (zc_ThreadCacheObject *)l->owner;
    if (Py_TYPE(owner) != &ThreadCacheType || owner->ident != PyThread_get_thread_ident()
        || PySet_GET_SIZE(c->waiters) != 0 || l->cls >= PyList_GET_SIZE(owner->free)
        || l->cls >= PyList_GET_SIZE(c->cap) || !cache_is_alive(owner))
        return PyObject_CallMethodOneArg(l->pool, s_return, obj); /* BufferPool._return */
    /* BufferPool._return, the owner's own thread with nobody waiting */
    PyObject *fl = PyList_GET_ITEM(owner->free, l->cls);
    if (PyList_Append(fl, l->block) < 0)
        return NULL;
    owner->releases++;
    Py_ssize_t cap = PyLong_AsSsize_t(PyList_GET_ITEM(c->cap, l->cls));
    if (cap == -1 && PyErr_Occurred())
        return NULL;
    if (PyList_GET_SIZE(fl) > cap) {
        int spilt = core_spill(c, fl, l->cls, cap);
        if (spilt != 0)
            return spilt < 0 ? NULL : Py_NewRef(Py_None);
        PyObject *k = PyLong_FromLong(l->cls);
        PyObject *r = k == NULL ? NULL : PyObject_CallMethodObjArgs(l->pool, s_spill, fl, k, NULL);
        Py_XDECREF(k);
        return r;
    }
    Py_RETURN_NONE;
}

PyObject *
zc_lease_land(PyObject *obj)
{
    zc_LeaseObject *l = AS_LEASE(obj);
    zc_PoolCoreObject *c = IS_LEASE(obj) ? (zc_PoolCoreObject *)l->core : NULL;
    if (c == NULL || c->account != Py_None) { /* BufferPool._end_flight */
        PyObject *pool = IS_LEASE(obj) ? Py_XNewRef(l->pool) : PyObject_GetAttrString(obj,
                                                                                      "_pool");
        if (pool == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "a lease without a pool");
            return NULL;
        }
        PyObject *r = PyObject_CallMethodOneArg(pool, s_end_flight, obj);
        Py_DECREF(pool);
        return r;
    }
    /* _end_flight: the book, then the claim (or held back), then the return */
    if (book_land_one((zc_FlightBookObject *)c->book, obj) < 0)
        return NULL;
    int ended = claim(obj, 1);
    if (ended < 0)
        return NULL;
    if (!ended)
        return PyObject_CallMethodOneArg(l->pool, s_hold_back, obj);
    return core_return(c, obj);
}

int
zc_lease_is_leased(PyObject *obj)
{
    return IS_LEASE(obj) && AS_LEASE(obj)->state == LEASED && !AS_LEASE(obj)->claimed;
}

/* The reapers key (thread, id(sender)) made last, reused while the thread and the Sender are
 * the same: it holds two integers only, and the book's dict then finds its entry by identity. */
static PyObject *key_made;
static unsigned long key_thread;
static const void *key_sender;

/* The key a waiting acquire of this thread reaps `sender` under (a new reference), or NULL. */
static PyObject *
reaper_key(PyObject *sender)
{
    unsigned long ident = PyThread_get_thread_ident();
    if (key_made != NULL && key_thread == ident && key_sender == (const void *)sender)
        return Py_NewRef(key_made);
    PyObject *thread = PyLong_FromUnsignedLong(ident);
    PyObject *id = thread == NULL ? NULL : PyLong_FromVoidPtr(sender);
    PyObject *key = id == NULL ? NULL : PyTuple_Pack(2, thread, id);
    Py_XDECREF(thread);
    Py_XDECREF(id);
    if (key != NULL) {
        Py_XSETREF(key_made, Py_NewRef(key));
        key_thread = ident;
        key_sender = sender;
    }
    return key;
}

/* zc_pool_begin_flights of the `n` leases `ls` and tickets `ts` (the caller holds them). */
static int
begin_flights_items(PyObject *const *ls, PyObject *const *ts, Py_ssize_t n, PyObject *sender)
{
    if (n == 0 || !IS_LEASE(ls[0]))
        return 0;
    PyObject *core = AS_LEASE(ls[0])->core;
    if (core == NULL || Py_TYPE(core) != &PoolCoreType)
        return 0;
    zc_PoolCoreObject *c = (zc_PoolCoreObject *)core;
    if (c->account != Py_None) /* an account to move: the pool's Python _begin_flights */
        return 0;
    for (Py_ssize_t i = 1; i < n; i++)
        if (!IS_LEASE(ls[i]) || AS_LEASE(ls[i])->core != core)
            return 0;
    PyObject *pool = core_pool(c);
    if (pool == NULL) {
        PyErr_Clear();
        return 0;
    }
    /* _begin_flights: every lease checked (nothing changes if one cannot go; no account to
     * move the capacity in), then in flight under the key a waiting acquire of this thread
     * reaps for: (thread, id(sender)) */
    long long capacity = book_check_items(pool, ls, n);
    Py_DECREF(pool);
    if (capacity < 0)
        return -1;
    PyObject *key = reaper_key(sender);
    if (key == NULL)
        return -1;
    int rc = book_take_off_items((zc_FlightBookObject *)c->book, ls, ts, n, key, sender);
    Py_DECREF(key);
    return rc < 0 ? -1 : 1;
}

int
zc_pool_begin_flights(PyObject *leases, PyObject *tickets, PyObject *sender)
{
    return begin_flights_items(PySequence_Fast_ITEMS(leases), PySequence_Fast_ITEMS(tickets),
                               PyList_GET_SIZE(leases), sender);
}

int
zc_pool_begin_flight(PyObject *lease, PyObject *ticket, PyObject *sender)
{
    return begin_flights_items(&lease, &ticket, 1, sender);
}

static PyMethodDef lease_functions[] = {
    {"new_lease", (PyCFunction)(void (*)(void))lease_new_lease, METH_FASTCALL,
     "new_lease(cls, pool, block, size, owner, core=None, /)\n--\n\n"
     "A new leased `cls` (a LeaseBase subclass) over `size` bytes of `block`, owned by the "
     "thread cache `owner`, landed through the PoolCore `core`, without __init__."},
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
        {&s_on_done, "_on_done"}, {&s_cache, "cache"},
        {&s_end_flight, "_end_flight"}, {&s_hold_back, "_hold_back"}, {&s_return, "_return"},
        {&s_spill, "_spill"}, {&s_acquire, "acquire"}, {&s_release, "release"},
    };
    if (zc_intern(names, sizeof(names) / sizeof(names[0])) < 0)
        return -1;
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL)
        return -1;
    deque_type = PyObject_GetAttrString(collections, "deque");
    Py_DECREF(collections);
    if (deque_type == NULL)
        return -1;
    LeaseBaseType.tp_base = &zc_BufferBaseType;
    if (PyType_Ready(&LeaseBaseType) < 0 || PyType_Ready(&FlightBookType) < 0
        || PyType_Ready(&ThreadCacheType) < 0 || PyType_Ready(&PoolCoreType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "LeaseBase", (PyObject *)&LeaseBaseType) < 0
        || PyModule_AddObjectRef(module, "FlightBook", (PyObject *)&FlightBookType) < 0
        || PyModule_AddObjectRef(module, "ThreadCache", (PyObject *)&ThreadCacheType) < 0
        || PyModule_AddObjectRef(module, "PoolCore", (PyObject *)&PoolCoreType) < 0)
        return -1;
    return PyModule_AddFunctions(module, lease_functions);
}
