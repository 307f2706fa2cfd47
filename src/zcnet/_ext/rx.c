/* The receive side of the compiled fast path (docs/ARCHITECTURE.md, 'Compiled fast path' and
 * 'Receive'; the pure-Python reference is zcnet.lowlevel.zerocopy_rx.ZerocopyCall).
 *
 * ChunkBase: a received chunk as a BufferBase (buffer.c), read-only, with the `mapped` flag and
 * the Chunk API (view, tobytes, release, with-block). zcnet.receiver.Chunk subclasses it.
 *
 * ZerocopyReceive: one connection's receive calls.
 *   receive(window, length, copybuf): one TCP_ZEROCOPY_RECEIVE (net/ipv4/tcp.c
 *     tcp_zerocopy_receive) mapping up to `length` bytes at the window, GIL released; returns
 *     the kernel's answer and, when pages were mapped, the chunk over them, counted in the
 *     window's PinGroup (the Receiver reuses a window only when that count is 0). The bytes
 *     copied into the copy buffer come back as a chunk over it, counted in the copy buffer's
 *     own PinGroup; the copy buffer is offered to the kernel only while that count is 0.
 *   recv_copy(buffer, nbytes): recv() into a reusable copy buffer, the chunk over the bytes
 *     received counted in the buffer's PinGroup.
 * `window` and `buffer` are zcnet.lowlevel.zerocopy_rx objects: `.memory` (the mmap or
 * bytearray) and `.group`.
 * Every decision (which window, copy or map, what to do with the answer) stays in Python. */
#include "zcnet_ext.h"

#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netinet/in.h>

#ifndef TCP_ZEROCOPY_RECEIVE
#define TCP_ZEROCOPY_RECEIVE 35 /* include/uapi/linux/tcp.h */
#endif

/* struct tcp_zerocopy_receive (include/uapi/linux/tcp.h), 64 bytes; our own name so that no
 * header version matters. The kernel reads min(optlen, sizeof) and zero-extends. */
struct zc_tcp_zerocopy_receive {
    uint64_t address;
    uint32_t length;
    uint32_t recv_skip_hint;
    uint32_t inq;
    int32_t err;
    uint64_t copybuf_address;
    int32_t copybuf_len;
    uint32_t flags;
    uint64_t msg_control;
    uint64_t msg_controllen;
    uint32_t msg_flags;
    uint32_t reserved;
};
_Static_assert(sizeof(struct zc_tcp_zerocopy_receive) == 64, "struct tcp_zerocopy_receive");

static PyObject *str_memory, *str_group, *end_method;

/* -- ChunkBase ----------------------------------------------------------------------------- */

typedef struct {
    zc_BufferBaseObject base;
    int mapped;
} zc_ChunkObject;

static PyTypeObject zc_ChunkBaseType;

static PyObject *
chunk_tp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"source", "mapped", NULL};
    PyObject *source;
    int mapped = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p:Chunk", kwlist, &source, &mapped))
        return NULL;
    PyObject *self = zc_buffer_new(type, source, 0, -1, 1, NULL);
    if (self != NULL)
        ((zc_ChunkObject *)self)->mapped = mapped;
    return self;
}

static PyObject *
chunk_lifetime_error(PyObject *self)
{
    PyErr_Format(zc_BufferLifetimeError, "%.100s used after release()", Py_TYPE(self)->tp_name);
    return NULL;
}

static PyObject *
chunk_get_view(PyObject *self, void *Py_UNUSED(closure))
{
    /* a new export each time (BufferLifetimeError once ended): caching it would make a cycle */
    return PyMemoryView_FromObject(self);
}

static PyObject *
chunk_get_mapped(zc_ChunkObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->mapped);
}

static PyObject *
chunk_tobytes(zc_ChunkObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->base.ended)
        return chunk_lifetime_error((PyObject *)self);
    return PyBytes_FromStringAndSize(self->base.ptr, self->base.len);
}

static PyObject *
chunk_release(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!((zc_BufferBaseObject *)self)->ended) {
        PyObject *r = PyObject_CallOneArg(end_method, self); /* BufferBase._end */
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *
chunk_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self);
}

static PyObject *
chunk_exit(PyObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    return chunk_release(self, NULL);
}

static int
chunk_bool(zc_ChunkObject *self)
{
    return self->base.len > 0;
}

static PyObject *
chunk_repr(zc_ChunkObject *self)
{
    return PyUnicode_FromFormat("<%s %zd bytes %s %s>", Py_TYPE(self)->tp_name, self->base.len,
                                self->mapped ? "mapped" : "copied",
                                self->base.ended ? "released" : "live");
}

static PyNumberMethods chunk_as_number = {
    .nb_bool = (inquiry)chunk_bool,
};

static PyMethodDef chunk_methods[] = {
    {"tobytes", (PyCFunction)chunk_tobytes, METH_NOARGS,
     "tobytes($self, /)\n--\n\nA copy of the bytes."},
    {"release", (PyCFunction)chunk_release, METH_NOARGS,
     "release($self, /)\n--\n\nNo new exports (idempotent); the memory is reused once every "
     "export made before is gone."},
    {"__enter__", (PyCFunction)chunk_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))chunk_exit, METH_FASTCALL, NULL},
    {NULL},
};

static PyGetSetDef chunk_getset[] = {
    {"view", (getter)chunk_get_view, NULL,
     "A read-only memoryview of the bytes (an export); BufferLifetimeError after release().",
     NULL},
    {"mapped", (getter)chunk_get_mapped, NULL, "The bytes are pages mapped from the socket.",
     NULL},
    {NULL},
};

static PyTypeObject zc_ChunkBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.ChunkBase",
    .tp_basicsize = sizeof(zc_ChunkObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "ChunkBase(source, mapped=False)\n--\n\nReceived bytes, read-only, as a buffer "
              "whose exports are counted (zcnet.receiver.Chunk).",
    .tp_repr = (reprfunc)chunk_repr,
    .tp_as_number = &chunk_as_number,
    .tp_methods = chunk_methods,
    .tp_getset = chunk_getset,
    .tp_new = chunk_tp_new,
};

/* -- ZerocopyReceive ----------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int fd;
    int copybuf_len;
    PyTypeObject *chunk_type;
    PyObject *copybuf;       /* bytearray for the unmappable tail */
    Py_buffer copybuf_view;  /* our export of it: its address cannot move */
    zc_PinGroupObject *copybuf_group; /* the chunks over copybuf not finalized */
} zc_ZerocopyReceiveObject;

static PyObject *
zcr_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "copybuf_len", "chunk_type", NULL};
    int fd, copybuf_len;
    PyObject *chunk_type;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiO:ZerocopyReceive", kwlist, &fd,
                                     &copybuf_len, &chunk_type))
        return NULL;
    long page = sysconf(_SC_PAGESIZE);
    if (copybuf_len < 0 || copybuf_len >= page) {
        PyErr_Format(PyExc_ValueError, "copybuf_len must be in [0, %ld), got %d", page,
                     copybuf_len);
        return NULL;
    }
    if (!PyType_Check(chunk_type)
        || !PyType_IsSubtype((PyTypeObject *)chunk_type, &zc_ChunkBaseType)) {
        PyErr_SetString(PyExc_TypeError, "chunk_type must be a subclass of ChunkBase");
        return NULL;
    }
    zc_ZerocopyReceiveObject *self = (zc_ZerocopyReceiveObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = fd;
    self->copybuf_len = copybuf_len;
    self->chunk_type = (PyTypeObject *)Py_NewRef(chunk_type);
    self->copybuf_group = (zc_PinGroupObject *)PyObject_CallNoArgs((PyObject *)&zc_PinGroupType);
    if (self->copybuf_group == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->copybuf = PyByteArray_FromStringAndSize(NULL, copybuf_len > 0 ? copybuf_len : 1);
    if (self->copybuf == NULL
        || PyObject_GetBuffer(self->copybuf, &self->copybuf_view, PyBUF_WRITABLE) < 0) {
        self->copybuf_view.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
zcr_dealloc(zc_ZerocopyReceiveObject *self)
{
    if (self->copybuf_view.obj != NULL)
        PyBuffer_Release(&self->copybuf_view);
    Py_XDECREF(self->copybuf);
    Py_XDECREF(self->copybuf_group);
    Py_XDECREF(self->chunk_type);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* `obj.memory` exported (writable if asked) and `obj.group` checked; 0, or -1 with an exception */
static int
get_region(PyObject *obj, Py_buffer *view, int flags, zc_PinGroupObject **group)
{
    PyObject *g = PyObject_GetAttr(obj, str_group);
    if (g == NULL)
        return -1;
    if (!PyObject_TypeCheck(g, &zc_PinGroupType)) {
        PyErr_Format(PyExc_TypeError, "%.100s.group must be a PinGroup, not %.100s",
                     Py_TYPE(obj)->tp_name, Py_TYPE(g)->tp_name);
        Py_DECREF(g);
        return -1;
    }
    PyObject *memory = PyObject_GetAttr(obj, str_memory);
    if (memory == NULL) {
        Py_DECREF(g);
        return -1;
    }
    int rc = PyObject_GetBuffer(memory, view, flags);
    Py_DECREF(memory); /* the export holds its own reference */
    if (rc < 0) {
        Py_DECREF(g);
        return -1;
    }
    *group = (zc_PinGroupObject *)g;
    return 0;
}

/* a chunk over the first `length` bytes of `source`, counted in `group` */
static PyObject *
make_chunk(zc_ZerocopyReceiveObject *self, PyObject *source, Py_ssize_t length, int mapped,
           zc_PinGroupObject *group)
{
    PyObject *chunk = zc_buffer_new(self->chunk_type, source, 0, length, 1, group);
    if (chunk != NULL)
        ((zc_ChunkObject *)chunk)->mapped = mapped;
    return chunk;
}

int
zc_rx_receive(PyObject *receive_call, PyObject *window, Py_ssize_t length, int copybuf,
              zc_RxAnswer *answer)
{
    zc_ZerocopyReceiveObject *self = (zc_ZerocopyReceiveObject *)receive_call;
    answer->chunk = answer->tail = NULL;
    Py_buffer win;
    zc_PinGroupObject *group;
    if (get_region(window, &win, PyBUF_SIMPLE, &group) < 0)
        return -1;
    int result = -1;
    if (length < 0 || length > win.len || length > (Py_ssize_t)UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "length %zd does not fit the window of %zd bytes",
                     length, win.len);
        goto done;
    }
    struct zc_tcp_zerocopy_receive zc = {
        .address = (uint64_t)(uintptr_t)win.buf,
        .length = (uint32_t)length,
        .copybuf_address = (uint64_t)(uintptr_t)self->copybuf_view.buf,
        /* never under a live chunk of the copy buffer: the kernel would overwrite its bytes */
        .copybuf_len = copybuf && self->copybuf_group->count == 0 ? self->copybuf_len : 0,
    };
    socklen_t zc_len = sizeof(zc);
    int rc, saved_errno;
    /* our export `win` keeps the window mapped while the GIL is released */
    Py_BEGIN_ALLOW_THREADS
    rc = getsockopt(self->fd, IPPROTO_TCP, TCP_ZEROCOPY_RECEIVE, &zc, &zc_len);
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    /* a kernel whose struct ends before copybuf_len (before 5.11) shortens zc_len and never
     * copies: our copybuf_len came back untouched */
    if (zc_len < offsetof(struct zc_tcp_zerocopy_receive, copybuf_len) + sizeof(int32_t))
        zc.copybuf_len = 0;
    if (zc.copybuf_len > self->copybuf_len) { /* cannot happen: the kernel copies at most that */
        PyErr_SetString(PyExc_SystemError, "TCP_ZEROCOPY_RECEIVE copied more than offered");
        goto done;
    }
    answer->chunk = zc.length > 0 ? make_chunk(self, win.obj, (Py_ssize_t)zc.length, 1, group)
                                  : Py_NewRef(Py_None);
    if (answer->chunk == NULL)
        goto done;
    answer->tail = zc.copybuf_len > 0 ? make_chunk(self, self->copybuf, zc.copybuf_len, 0,
                                                   self->copybuf_group)
                                      : Py_NewRef(Py_None);
    if (answer->tail == NULL) {
        Py_CLEAR(answer->chunk);
        goto done;
    }
    answer->length = zc.length;
    answer->skip = zc.recv_skip_hint;
    answer->inq = zc.inq;
    answer->err = zc.err;
    result = 0;
done:
    PyBuffer_Release(&win);
    Py_DECREF(group);
    return result;
}

static PyObject *
zcr_receive(zc_ZerocopyReceiveObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "receive(window, length, copybuf) takes 3 arguments");
        return NULL;
    }
    Py_ssize_t length = PyLong_AsSsize_t(args[1]);
    if (length == -1 && PyErr_Occurred())
        return NULL;
    int copybuf = PyObject_IsTrue(args[2]);
    if (copybuf < 0)
        return NULL;
    zc_RxAnswer a;
    if (zc_rx_receive((PyObject *)self, args[0], length, copybuf, &a) < 0)
        return NULL;
    return Py_BuildValue("(NINIIi)", a.chunk, a.length, a.tail, a.skip, a.inq, a.err);
}

PyObject *
zc_rx_recv_copy(PyObject *receive_call, PyObject *buffer, Py_ssize_t nbytes)
{
    zc_ZerocopyReceiveObject *self = (zc_ZerocopyReceiveObject *)receive_call;
    Py_buffer buf;
    zc_PinGroupObject *group;
    if (get_region(buffer, &buf, PyBUF_WRITABLE, &group) < 0)
        return NULL;
    PyObject *result = NULL;
    size_t n = nbytes < 0 ? 0 : (size_t)(nbytes < buf.len ? nbytes : buf.len);
    ssize_t got;
    int saved_errno;
    /* our export `buf` keeps the memory in place while the GIL is released */
    Py_BEGIN_ALLOW_THREADS
    got = recv(self->fd, buf.buf, n, MSG_DONTWAIT);
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    if (got < 0) {
        if (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK
            || (saved_errno == EINTR && PyErr_CheckSignals() == 0)) {
            result = Py_NewRef(Py_None);
        }
        else if (saved_errno != EINTR) {
            errno = saved_errno;
            PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    else {
        result = make_chunk(self, buf.obj, (Py_ssize_t)got, 0, group);
    }
    PyBuffer_Release(&buf);
    Py_DECREF(group);
    return result;
}

static PyObject *
zcr_recv_copy(zc_ZerocopyReceiveObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "recv_copy(buffer, nbytes) takes 2 arguments");
        return NULL;
    }
    Py_ssize_t nbytes = PyLong_AsSsize_t(args[1]);
    if (nbytes == -1 && PyErr_Occurred())
        return NULL;
    return zc_rx_recv_copy((PyObject *)self, args[0], nbytes);
}

static PyMethodDef zcr_methods[] = {
    {"receive", (PyCFunction)(void (*)(void))zcr_receive, METH_FASTCALL,
     "receive($self, window, length, copybuf, /)\n--\n\n"
     "One TCP_ZEROCOPY_RECEIVE into `window`: (mapped chunk or None, length, copied tail "
     "chunk or None, recv_skip_hint, inq, err). OSError on failure."},
    {"recv_copy", (PyCFunction)(void (*)(void))zcr_recv_copy, METH_FASTCALL,
     "recv_copy($self, buffer, nbytes, /)\n--\n\n"
     "recv() of up to `nbytes` into the copy buffer: the chunk (empty at EOF), or None if "
     "nothing is there (EAGAIN). OSError on failure."},
    {NULL},
};

static PyMemberDef zcr_members[] = {
    {"copybuf", Py_T_OBJECT_EX, offsetof(zc_ZerocopyReceiveObject, copybuf), Py_READONLY,
     "The copy buffer (bytearray) the kernel fills with the unmappable tail."},
    {"copybuf_group", Py_T_OBJECT_EX, offsetof(zc_ZerocopyReceiveObject, copybuf_group),
     Py_READONLY, "The PinGroup of the chunks over the copy buffer."},
    {NULL},
};

PyTypeObject zc_ZerocopyReceiveType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.ZerocopyReceive",
    .tp_basicsize = sizeof(zc_ZerocopyReceiveObject),
    .tp_dealloc = (destructor)zcr_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ZerocopyReceive(fd, copybuf_len, chunk_type)\n--\n\n"
              "One connection's TCP_ZEROCOPY_RECEIVE and copy-mode receive calls.",
    .tp_methods = zcr_methods,
    .tp_members = zcr_members,
    .tp_new = zcr_new,
};

int
zc_rx_init(PyObject *module)
{
    zc_ChunkBaseType.tp_base = &zc_BufferBaseType;
    if (PyType_Ready(&zc_ChunkBaseType) < 0 || PyType_Ready(&zc_ZerocopyReceiveType) < 0)
        return -1;
    static const zc_InternedName names[] = {{&str_memory, "memory"}, {&str_group, "group"}};
    if (zc_intern(names, sizeof(names) / sizeof(names[0])) < 0)
        return -1;
    end_method = PyObject_GetAttrString((PyObject *)&zc_BufferBaseType, "_end");
    if (end_method == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "ChunkBase", (PyObject *)&zc_ChunkBaseType) < 0
        || PyModule_AddObjectRef(module, "ZerocopyReceive",
                                 (PyObject *)&zc_ZerocopyReceiveType) < 0)
        return -1;
    return 0;
}
