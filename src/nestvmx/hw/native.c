/* The processor model's VMCS accesses (processor.py), built once with the machine's gcc by
   native.py: VMREAD and VMWRITE of a run of fields, as L0 executes them back to back, cost a
   dictionary lookup each instead of a Python loop iteration.  The access rules are
   vmcs_access.h's; processor.py keeps the checks around them and the VMfail numbers. */
#define PY_SSIZE_T_CLEAN
#include "vmcs_access.h"

/* Outcome codes; processor.py maps them to VMfailValid numbers. */
enum { ACCESS_OK, ACCESS_UNSUPPORTED, ACCESS_READ_ONLY };

/* vmcs_read(access, fields, encodings, op64) -> (outcome, values): the values read before the first
   encoding that fails, or all of them. */
static PyObject *vmcs_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 || !PyDict_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "vmcs_read(access: dict, fields: dict, encodings, op64)");
        return NULL;
    }
    PyObject *access = args[0], *fields = args[1];
    int op64 = PyObject_IsTrue(args[3]), outcome = ACCESS_OK;
    PyObject *seq = PySequence_Fast(args[2], "encodings must be iterable"), *values = NULL;
    if (op64 < 0 || !seq || !(values = PyList_New(0)))
        goto fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        struct vmcs_access a;
        int found = vmcs_access_of(access, PySequence_Fast_GET_ITEM(seq, i), &a);
        if (found <= 0) {
            if (found < 0)
                goto fail;
            outcome = ACCESS_UNSUPPORTED;
            break;
        }
        PyObject *stored = PyDict_GetItemWithError(fields, a.full), *item;
        if (stored && !a.high && op64 && PyLong_CheckExact(stored))
            item = Py_NewRef(stored); /* the field's own value object */
        else {
            uint64_t value = vmread_value(&a, stored ? PyLong_AsUnsignedLongLongMask(stored) : 0, op64);
            item = PyErr_Occurred() ? NULL : PyLong_FromUnsignedLongLong(value);
        }
        if (!item || PyList_Append(values, item)) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    Py_DECREF(seq);
    return Py_BuildValue("(iN)", outcome, values);
fail:
    Py_XDECREF(seq);
    Py_XDECREF(values);
    return NULL;
}

/* One VMWRITE of `source` into `fields`: 1 done, 0 refused (`outcome` set), -1 with an exception.
   A value the field keeps whole is stored as the caller's object. */
static int write_one(PyObject *access, PyObject *fields, PyObject *encoding, PyObject *source, int op64,
                     int any_field, int *outcome)
{
    struct vmcs_access a;
    int found = vmcs_access_of(access, encoding, &a);
    if (found <= 0) {
        *outcome = ACCESS_UNSUPPORTED;
        return found;
    }
    if (a.read_only && !any_field) {
        *outcome = ACCESS_READ_ONLY;
        return 0;
    }
    uint64_t old = a.high ? vmcs_field(fields, a.full) : 0;
    uint64_t value = vmwrite_value(&a, old, PyLong_AsUnsignedLongLongMask(source), op64);
    if (PyErr_Occurred())
        return -1;
    PyObject *item = NULL;
    if (!a.high && PyLong_CheckExact(source)) {
        uint64_t exact = PyLong_AsUnsignedLongLong(source); /* fails below 0 or beyond 64 bits */
        if (PyErr_Occurred())
            PyErr_Clear();
        else if (exact == value)
            item = Py_NewRef(source);
    }
    if (!item && !(item = PyLong_FromUnsignedLongLong(value)))
        return -1;
    int rc = PyDict_SetItem(fields, a.full, item);
    Py_DECREF(item);
    return rc ? -1 : 1;
}

/* vmcs_write(access, fields, writes, op64, any_field) -> (outcome, written): (encoding, value) pairs
   in turn, stopping at the first that fails. */
static PyObject *vmcs_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5 || !PyDict_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "vmcs_write(access: dict, fields: dict, writes, op64, any_field)");
        return NULL;
    }
    int op64 = PyObject_IsTrue(args[3]), any_field = PyObject_IsTrue(args[4]), outcome = ACCESS_OK, done = 1;
    Py_ssize_t written = 0;
    PyObject *it = PyObject_GetIter(args[2]), *pair;
    if (op64 < 0 || any_field < 0 || !it)
        goto fail;
    while (done > 0 && (pair = PyIter_Next(it))) {
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "a VMWRITE is an (encoding, value) pair");
            done = -1;
        } else
            done = write_one(args[0], args[1], PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1), op64, any_field,
                             &outcome);
        Py_DECREF(pair);
        written += done > 0;
    }
    if (done < 0 || PyErr_Occurred())
        goto fail;
    Py_DECREF(it);
    return Py_BuildValue("(in)", outcome, written);
fail:
    Py_XDECREF(it);
    return NULL;
}

static PyMethodDef methods[] = {
    {"vmcs_read", (PyCFunction)(void (*)(void))vmcs_read, METH_FASTCALL, NULL},
    {"vmcs_write", (PyCFunction)(void (*)(void))vmcs_write, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "nestvmx_hw_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit_nestvmx_hw_native(void)
{
    return PyModule_Create(&module);
}
