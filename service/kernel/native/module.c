/* The extension module service.kernel._native: the salt, reseed() and the method tables of
 * scoring.c, tables.c, resp.c, hashing.c, rerank.c, reorder.c and sequence.c. Imported only
 * through service/kernel/__init__.py. */
#include "kernel.h"

uint64_t kernel_salt;

void kernel_reseed_salt(void) {
    uint64_t fresh = 0;
    if (getentropy(&fresh, sizeof fresh) != 0 || fresh == 0)
        fresh = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid() ^
                (uint64_t)(uintptr_t)&fresh;
    kernel_salt = fresh;
}

PyDoc_STRVAR(reseed_doc,
"reseed(): a new salt for the tables' slot hashing. Only before any table is filled: a forked\n"
"process calls it first, so that it does not share its parent's salt.");

static PyObject *reseed(PyObject *self, PyObject *unused) {
    kernel_reseed_salt();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"reseed", reseed, METH_NOARGS, reseed_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native",
    "The compiled kernel (service/kernel/__init__.py is its facade).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    kernel_reseed_salt();
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddFunctions(m, kernel_scoring_methods) < 0 ||
              PyModule_AddFunctions(m, kernel_table_methods) < 0 ||
              PyModule_AddFunctions(m, kernel_resp_methods) < 0 ||
              PyModule_AddFunctions(m, kernel_hash_methods) < 0 ||
              PyModule_AddFunctions(m, kernel_rerank_methods) < 0 ||
              PyModule_AddFunctions(m, kernel_reorder_methods) < 0 ||
              PyModule_AddFunctions(m, kernel_sequence_methods) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
