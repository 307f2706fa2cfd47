/* Buffers whose exports are counted exactly (docs/ARCHITECTURE.md, 'Lifetime invariants').
 *
 * A BufferBase is a window onto memory owned by another object (an mmap of a receive window, a
 * pool slab, a bytearray). It holds one export of that owner for as long as it lives, so the
 * owner cannot be closed or resized under it, and it exports itself through the buffer protocol
 * (bytes(x), memoryview(x), hashlib, numpy.frombuffer(x), sock.sendall(x)), counting every
 * export in `exports`. CPython calls bf_releasebuffer exactly once per export (Objects/abstract.c
 * PyBuffer_Release), so the count is exact, slices and views of views included: a memoryview
 * of x holds one export of x until it and every view derived from it are gone.
 *
 * Ending a BufferBase (`_end`) refuses new exports (BufferLifetimeError); once the last export
 * is gone it is finalized: it drops its export of the owner and leaves its PinGroup. A PinGroup
 * counts the members not yet finalized, so "may this memory be reused?" is one integer test
 * (a receive window with count 0 has no chunk and no view left: reusing it cannot SIGBUS).
 * `_end_if_unexported` ends only when no export is alive (a pool lease refused back while in
 * use). Everything runs with the GIL held; no other lock is needed. */
#include "zcnet_ext.h"

/* -- PinGroup ------------------------------------------------------------------------------ */

static PyObject *
pingroup_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":PinGroup", kwlist))
        return NULL;
    zc_PinGroupObject *self = (zc_PinGroupObject *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->count = 0;
    return (PyObject *)self;
}

static PyMemberDef pingroup_members[] = {
    {"count", Py_T_PYSSIZET, offsetof(zc_PinGroupObject, count), Py_READONLY,
     "Members not yet finalized (alive, or ended with exports still alive)."},
    {NULL},
};

PyTypeObject zc_PinGroupType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.PinGroup",
    .tp_basicsize = sizeof(zc_PinGroupObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PinGroup()\n--\n\nCounts the BufferBase objects over one piece of memory that "
              "are not finalized.",
    .tp_new = pingroup_new,
    .tp_members = pingroup_members,
};

/* -- BufferBase ---------------------------------------------------------------------------- */

void
zc_buffer_finalize(zc_BufferBaseObject *self)
{
    if (self->source.obj != NULL)
        PyBuffer_Release(&self->source);
    self->ptr = NULL;
    if (self->group != NULL) {
        self->group->count--;
        Py_CLEAR(self->group);
    }
}

PyObject *
zc_buffer_new(PyTypeObject *type, PyObject *source, Py_ssize_t offset, Py_ssize_t length,
              int readonly, zc_PinGroupObject *group)
{
    zc_BufferBaseObject *self = (zc_BufferBaseObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(source, &self->source,
                           readonly ? PyBUF_SIMPLE : PyBUF_WRITABLE) < 0) {
        self->source.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    if (length < 0)
        length = self->source.len - offset;
    if (offset < 0 || length < 0 || offset + length > self->source.len) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd and length %zd do not fit in a buffer of %zd bytes",
                     offset, length, self->source.len);
        Py_DECREF(self);
        return NULL;
    }
    self->ptr = (char *)self->source.buf + offset;
    self->len = length;
    self->readonly = readonly;
    if (group != NULL) {
        Py_INCREF(group);
        self->group = group;
        group->count++;
    }
    return (PyObject *)self;
}

static PyObject *
buffer_tp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"source", "offset", "length", "readonly", "group", NULL};
    PyObject *source;
    Py_ssize_t offset = 0, length = -1;
    int readonly = 0;
    PyObject *group = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|nn$pO:BufferBase", kwlist, &source,
                                     &offset, &length, &readonly, &group))
        return NULL;
    if (group != Py_None && !PyObject_TypeCheck(group, &zc_PinGroupType)) {
        PyErr_Format(PyExc_TypeError, "group must be a PinGroup or None, not %.100s",
                     Py_TYPE(group)->tp_name);
        return NULL;
    }
    return zc_buffer_new(type, source, offset, length, readonly,
                         group == Py_None ? NULL : (zc_PinGroupObject *)group);
}

static void
buffer_dealloc(zc_BufferBaseObject *self)
{
    /* no export can be alive: each one holds a reference to us */
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    zc_buffer_finalize(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
buffer_getbuffer(zc_BufferBaseObject *self, Py_buffer *view, int flags)
{
    if (self->ended) {
        PyErr_Format(zc_BufferLifetimeError, "%.100s used after release()",
                     Py_TYPE(self)->tp_name);
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->ptr, self->len, self->readonly,
                          flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void
buffer_releasebuffer(zc_BufferBaseObject *self, Py_buffer *view)
{
    (void)view;
    if (--self->exports == 0 && self->ended)
        zc_buffer_finalize(self);
}

static PyBufferProcs buffer_as_buffer = {
    .bf_getbuffer = (getbufferproc)buffer_getbuffer,
    .bf_releasebuffer = (releasebufferproc)buffer_releasebuffer,
};

static Py_ssize_t
buffer_length(zc_BufferBaseObject *self)
{
    return self->len;
}

static PySequenceMethods buffer_as_sequence = {
    .sq_length = (lenfunc)buffer_length,
};

static PyObject *
buffer_end(zc_BufferBaseObject *self, PyObject *Py_UNUSED(ignored))
{
    self->ended = 1;
    if (self->exports == 0) {
        zc_buffer_finalize(self);
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *
buffer_end_if_unexported(zc_BufferBaseObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->exports != 0)
        Py_RETURN_FALSE;
    self->ended = 1;
    zc_buffer_finalize(self);
    Py_RETURN_TRUE;
}

static PyObject *
buffer_get_ended(zc_BufferBaseObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->ended);
}

static PyObject *
buffer_get_finalized(zc_BufferBaseObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->ended && self->exports == 0);
}

static PyObject *
buffer_get_address(zc_BufferBaseObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromVoidPtr(self->ptr);
}

static PyMethodDef buffer_methods[] = {
    {"_end", (PyCFunction)buffer_end, METH_NOARGS,
     "_end($self, /)\n--\n\nRefuse new exports; finalize once none is alive. True if finalized "
     "now."},
    {"_end_if_unexported", (PyCFunction)buffer_end_if_unexported, METH_NOARGS,
     "_end_if_unexported($self, /)\n--\n\nEnd and finalize now if no export is alive (True); "
     "otherwise change nothing (False)."},
    {NULL},
};

static PyMemberDef buffer_members[] = {
    {"exports", Py_T_PYSSIZET, offsetof(zc_BufferBaseObject, exports), Py_READONLY,
     "Buffer-protocol exports of this object alive now."},
    {"nbytes", Py_T_PYSSIZET, offsetof(zc_BufferBaseObject, len), Py_READONLY,
     "Length in bytes."},
    {NULL},
};

static PyGetSetDef buffer_getset[] = {
    {"_ended", (getter)buffer_get_ended, NULL, "No new exports are given.", NULL},
    {"_finalized", (getter)buffer_get_finalized, NULL,
     "Ended and no export alive: the memory is no longer referenced.", NULL},
    {"_address", (getter)buffer_get_address, NULL, "Address of the first byte.", NULL},
    {NULL},
};

PyTypeObject zc_BufferBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.BufferBase",
    .tp_basicsize = sizeof(zc_BufferBaseObject),
    .tp_dealloc = (destructor)buffer_dealloc,
    .tp_as_sequence = &buffer_as_sequence,
    .tp_as_buffer = &buffer_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "BufferBase(source, offset=0, length=-1, *, readonly=False, group=None)\n--\n\n"
              "Bytes of `source` exported through the buffer protocol with an exact export "
              "count.",
    .tp_weaklistoffset = offsetof(zc_BufferBaseObject, weakreflist),
    .tp_methods = buffer_methods,
    .tp_members = buffer_members,
    .tp_getset = buffer_getset,
    .tp_new = buffer_tp_new,
};

int
zc_buffer_init(PyObject *module)
{
    if (PyType_Ready(&zc_PinGroupType) < 0 || PyType_Ready(&zc_BufferBaseType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "PinGroup", (PyObject *)&zc_PinGroupType) < 0
        || PyModule_AddObjectRef(module, "BufferBase", (PyObject *)&zc_BufferBaseType) < 0)
        return -1;
    return 0;
}
