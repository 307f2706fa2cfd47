/* zcnet._speedups.MmapChurn: a thread that maps and unmaps an anonymous region in a tight loop,
 * without the GIL (or, as the experiment's control, makes a system call that takes no lock of
 * the address space, getppid, in the same kind of loop). Bench-only (zcnet bench rpc --mmap-churn, docs/bench.md): every mmap and
 * munmap takes the process's mmap_lock for write (mm/mmap.c do_mmap under mmap_write_lock,
 * mm/vma.c do_vmi_munmap), which is what a garbage collector, a JIT or an allocator returning
 * memory does to the other threads of a server. A Python thread could not do this: it would
 * hold the GIL between its system calls and stall the server's Python code, not its page-table
 * lookups. The thread measures its own CPU (CLOCK_THREAD_CPUTIME_ID), so the experiment can
 * take it out of the server's CPU per request. */
#include "zcnet_ext.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    size_t size;                /* bytes mapped per iteration */
    int touch;                  /* write one byte per page before unmapping */
    int control;                /* getppid instead of mmap + munmap */
    pthread_t thread;
    int running;                /* a thread was started and not joined yet */
    atomic_int stop;
    atomic_llong iterations;    /* completed mmap + munmap pairs */
    int error;                  /* errno of a failed mmap/munmap (the thread then ends) */
    double cpu;                 /* the thread's CPU seconds, written when it ends */
} ChurnObject;

static double
thread_cpu(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *
churn_loop(void *arg)
{
    ChurnObject *self = arg;
    double cpu0 = thread_cpu();
    long page = 4096;
    while (!atomic_load_explicit(&self->stop, memory_order_relaxed)) {
        if (self->control) {
            /* two system calls per iteration, as mmap + munmap, none touching mmap_lock */
            (void)syscall(SYS_getppid);
            (void)syscall(SYS_getppid);
            atomic_fetch_add_explicit(&self->iterations, 1, memory_order_relaxed);
            continue;
        }
        char *p = mmap(NULL, self->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        if (p == MAP_FAILED) {
            self->error = errno;
            break;
        }
        if (self->touch)
            for (size_t off = 0; off < self->size; off += (size_t)page)
                p[off] = 1;
        if (munmap(p, self->size) != 0) {
            self->error = errno;
            break;
        }
        atomic_fetch_add_explicit(&self->iterations, 1, memory_order_relaxed);
    }
    self->cpu = thread_cpu() - cpu0;
    return NULL;
}

static int
churn_init(ChurnObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", "touch", "control", NULL};
    Py_ssize_t size = 1 << 20;
    int touch = 0, control = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n$pp:MmapChurn", kwlist, &size, &touch,
                                     &control))
        return -1;
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "size must be positive");
        return -1;
    }
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the churn thread is running");
        return -1;
    }
    self->size = (size_t)size;
    self->touch = touch;
    self->control = control;
    return 0;
}

static PyObject *
churn_start(ChurnObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the churn thread is already running");
        return NULL;
    }
    atomic_store(&self->stop, 0);
    atomic_store(&self->iterations, 0);
    self->error = 0;
    self->cpu = 0.0;
    int rc = pthread_create(&self->thread, NULL, churn_loop, self);
    if (rc != 0) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->running = 1;
    Py_RETURN_NONE;
}

static void
churn_join(ChurnObject *self)
{
    atomic_store(&self->stop, 1);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    self->running = 0;
}

static PyObject *
churn_stop(ChurnObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the churn thread is not running");
        return NULL;
    }
    churn_join(self);
    if (self->error) {
        errno = self->error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(Ld)", (long long)atomic_load(&self->iterations), self->cpu);
}

static PyObject *
churn_get_iterations(ChurnObject *self, void *closure)
{
    return PyLong_FromLongLong(atomic_load(&self->iterations));
}

static PyObject *
churn_get_running(ChurnObject *self, void *closure)
{
    return PyBool_FromLong(self->running);
}

static void
churn_dealloc(ChurnObject *self)
{
    if (self->running)
        churn_join(self); /* never leave a thread reading freed memory */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef churn_methods[] = {
    {"start", (PyCFunction)churn_start, METH_NOARGS,
     "Start the thread (mmap + munmap of `size` anonymous bytes, in a loop, without the GIL)."},
    {"stop", (PyCFunction)churn_stop, METH_NOARGS,
     "Stop and join the thread: (iterations, the thread's CPU seconds); OSError if a call "
     "failed."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef churn_getset[] = {
    {"iterations", (getter)churn_get_iterations, NULL, "mmap + munmap pairs so far", NULL},
    {"running", (getter)churn_get_running, NULL, "whether the thread runs", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ChurnType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcnet._speedups.MmapChurn",
    .tp_basicsize = sizeof(ChurnObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "MmapChurn(size=1 MiB, *, touch=False, control=False): a C thread that takes the "
              "mmap lock for write in a loop (control: two getppid calls per iteration "
              "instead; bench only).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)churn_init,
    .tp_dealloc = (destructor)churn_dealloc,
    .tp_methods = churn_methods,
    .tp_getset = churn_getset,
};

int
zc_churn_init(PyObject *module)
{
    if (PyType_Ready(&ChurnType) < 0)
        return -1;
    Py_INCREF(&ChurnType);
    if (PyModule_AddObject(module, "MmapChurn", (PyObject *)&ChurnType) < 0) {
        Py_DECREF(&ChurnType);
        return -1;
    }
    return 0;
}
