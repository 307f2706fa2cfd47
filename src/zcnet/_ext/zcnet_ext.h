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

/* zcnet.errors.BufferLifetimeError, looked up once at module init (module.c). */
extern PyObject *zc_BufferLifetimeError;

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

int zc_buffer_init(PyObject *module);

/* rx.c: ChunkBase and the receive calls (TCP_ZEROCOPY_RECEIVE, copy-mode recv). */
int zc_rx_init(PyObject *module);

#endif
