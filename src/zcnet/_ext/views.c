/* Is a pool lease's memory still used? Answered exactly (docs/ARCHITECTURE.md, 'Lifetime
 * invariants' 3 and 'Compiled fast path').
 *
 * A compiled Lease is a BufferBase over its block of a slab, and it keeps one memoryview of
 * itself, `lease.view`, which does not count against release. Three counters together see every
 * user of the memory (Objects/memoryobject.c; the structs are in CPython's memoryobject.h, the
 * same in 3.11, 3.12 and 3.13):
 *
 * - the lease's own exports (BufferBase.exports): memoryview(lease), numpy.frombuffer(lease),
 *   PickleBuffer(lease)...; the view's managed buffer holds one of them while it lives;
 * - the view's managed buffer `mbuf->exports`: the memoryviews registered on it that are not
 *   released, i.e. the view itself and every slice, cast, memoryview(view), and the memoryview
 *   that numpy.frombuffer(view) and ctypes' from_buffer(view) keep (mbuf_add_view);
 * - the view's own `exports`: Py_buffer exports taken from the view object (PickleBuffer(view),
 *   a C consumer that holds a view's buffer).
 *
 * The memory is unused when the lease's exports are exactly the one held by its view's managed
 * buffer, that buffer has exactly one live memoryview (the view) and the view exports nothing;
 * or, when there is no live view, when the lease has no export at all. Everything runs under
 * the GIL, so the check and the release are one step. */
#include "zcnet_ext.h"

static PyObject *str_release = NULL;

int
zc_end_lease(PyObject *buf, PyObject *view)
{
    if (!PyObject_TypeCheck(buf, &zc_BufferBaseType)) {
        PyErr_Format(PyExc_TypeError, "end_lease() needs a BufferBase, not %.100s",
                     Py_TYPE(buf)->tp_name);
        return -1;
    }
    zc_BufferBaseObject *b = (zc_BufferBaseObject *)buf;
    if (b->ended) {
        PyErr_Format(zc_BufferLifetimeError, "%.100s already ended", Py_TYPE(buf)->tp_name);
        return -1;
    }
    Py_ssize_t own = 0; /* exports of `buf` that belong to its live view */
    if (view != Py_None) {
        if (!PyMemoryView_Check(view)) {
            PyErr_Format(PyExc_TypeError, "end_lease() needs a memoryview or None, not %.100s",
                         Py_TYPE(view)->tp_name);
            return -1;
        }
        PyMemoryViewObject *mv = (PyMemoryViewObject *)view;
        if (!(mv->flags & _Py_MEMORYVIEW_RELEASED)) {
            if (mv->mbuf->master.obj != buf) {
                PyErr_SetString(PyExc_ValueError, "end_lease(): the view is not a view of the "
                                                  "buffer");
                return -1;
            }
            if (mv->exports != 0 || mv->mbuf->exports != 1)
                return 0;
            own = 1;
        }
    }
    if (b->exports != own)
        return 0;
    if (own) {
        /* cannot fail: nothing is exported from the view. Its managed buffer then has no view
         * left and releases its export of `buf` (mbuf_release). */
        PyObject *r = PyObject_CallMethodNoArgs(view, str_release);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    if (b->exports != 0)
        return 0;
    /* no export left: refuses new ones from now on and lets go of the slab */
    b->ended = 1;
    zc_buffer_finalize(b);
    return 1;
}

static PyObject *
views_end_lease(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "end_lease() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    int ended = zc_end_lease(args[0], args[1]);
    return ended < 0 ? NULL : PyBool_FromLong(ended);
}

static PyObject *
views_new_buffer(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "new_buffer() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyType_Check(args[0])
        || !PyType_IsSubtype((PyTypeObject *)args[0], &zc_BufferBaseType)) {
        PyErr_SetString(PyExc_TypeError, "new_buffer() needs a subclass of BufferBase");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[2]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t length = PyLong_AsSsize_t(args[3]);
    if (length == -1 && PyErr_Occurred())
        return NULL;
    return zc_buffer_new((PyTypeObject *)args[0], args[1], offset, length, 0, NULL);
}

static PyMethodDef views_functions[] = {
    {"new_buffer", (PyCFunction)(void (*)(void))views_new_buffer, METH_FASTCALL,
     "new_buffer(cls, source, offset, length, /)\n--\n\n"
     "A new writable `cls` (a BufferBase subclass) over `length` bytes of `source` at `offset`, "
     "without running `cls.__init__` (a pool creates a lease per acquire)."},
    {"end_lease", (PyCFunction)(void (*)(void))views_end_lease, METH_FASTCALL,
     "end_lease(buf, view, /)\n--\n\n"
     "End `buf` (a BufferBase) and release `view` (its own memoryview, or None) if nothing else "
     "uses its memory: no other export of `buf`, no other live memoryview on the view's managed "
     "buffer and no export of the view. True if ended; False, with nothing changed, otherwise."},
    {NULL},
};

int
zc_views_init(PyObject *module)
{
    static const zc_InternedName names[] = {
        {&str_release, "release"},
    };
    if (zc_intern(names, sizeof(names) / sizeof(names[0])) < 0)
        return -1;
    return PyModule_AddFunctions(module, views_functions);
}
