/* zcnet._speedups module initialisation: looks up the exception classes it raises and lets each
 * part register its types (see zcnet_ext.h); the helpers every part uses. */
#include "zcnet_ext.h"

PyObject *zc_BufferLifetimeError = NULL;
PyObject *zc_TimeoutExpired = NULL;
PyObject *zc_InvalidCompletionError = NULL;

PyObject *
zc_get_raised(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL)
        return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_DECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

void
zc_set_raised(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

int
zc_intern(const zc_InternedName *names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    return 0;
}

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "zcnet._speedups",
    .m_doc = "zcnet's compiled per-operation work (the pure-Python modules are the reference).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *errors = PyImport_ImportModule("zcnet.errors");
    if (errors == NULL)
        return NULL;
    zc_BufferLifetimeError = PyObject_GetAttrString(errors, "BufferLifetimeError");
    zc_TimeoutExpired = PyObject_GetAttrString(errors, "TimeoutExpired");
    zc_InvalidCompletionError = PyObject_GetAttrString(errors, "InvalidCompletionError");
    Py_DECREF(errors);
    if (zc_BufferLifetimeError == NULL || zc_TimeoutExpired == NULL
        || zc_InvalidCompletionError == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL)
        return NULL;
    if (zc_buffer_init(m) < 0 || zc_views_init(m) < 0 || zc_rx_init(m) < 0
        || zc_tracker_init(m) < 0 || zc_txfast_init(m) < 0
        || zc_rxfast_init(m) < 0 || zc_uring_init(m) < 0 || zc_lease_init(m) < 0
        || zc_churn_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
