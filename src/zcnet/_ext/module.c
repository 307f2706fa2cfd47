/* zcnet._speedups module initialisation: looks up the exception classes it raises and lets each
 * part register its types (see zcnet_ext.h). */
#include "zcnet_ext.h"

PyObject *zc_BufferLifetimeError = NULL;
PyObject *zc_TimeoutExpired = NULL;

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
    Py_DECREF(errors);
    if (zc_BufferLifetimeError == NULL || zc_TimeoutExpired == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL)
        return NULL;
    if (zc_buffer_init(m) < 0 || zc_views_init(m) < 0 || zc_rx_init(m) < 0
        || zc_tracker_init(m) < 0 || zc_txfast_init(m) < 0
        || zc_rxfast_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
