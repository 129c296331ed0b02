/* The processor model's VMCS accesses (processor.py), built once with the machine's gcc by
   native.py: VMREAD and VMWRITE of a run of fields, as L0 executes them back to back, cost a
   dictionary lookup each instead of a Python loop iteration.  The rules are processor.py's; this
   is its inner loop. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Outcome codes; processor.py maps them to VMfailValid numbers. */
enum { ACCESS_OK, ACCESS_UNSUPPORTED, ACCESS_READ_ONLY };

/* `access` maps an encoding to (FULL encoding, HIGH access, VMWRITE mask, read-only). */
static PyObject *lookup(PyObject *access, PyObject *encoding)
{
    PyObject *entry = PyDict_GetItemWithError(access, encoding);
    if (entry && (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4)) {
        PyErr_SetString(PyExc_TypeError, "a VMCS access entry is (full, high, mask, read_only)");
        return NULL;
    }
    return entry;
}

static uint64_t field_value(PyObject *fields, PyObject *full)
{
    PyObject *value = PyDict_GetItemWithError(fields, full);
    return value ? PyLong_AsUnsignedLongLongMask(value) : 0;
}

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
        PyObject *entry = lookup(access, PySequence_Fast_GET_ITEM(seq, i));
        if (!entry) {
            if (PyErr_Occurred())
                goto fail;
            outcome = ACCESS_UNSUPPORTED;
            break;
        }
        PyObject *stored = PyDict_GetItemWithError(fields, PyTuple_GET_ITEM(entry, 0)), *item;
        int high = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 1));
        if (high < 0 || PyErr_Occurred())
            goto fail;
        if (stored && !high && op64 && PyLong_CheckExact(stored)) {
            item = Py_NewRef(stored); /* the field's own value object */
        } else {
            uint64_t value = stored ? PyLong_AsUnsignedLongLongMask(stored) : 0;
            if (high)
                value >>= 32;
            item = PyErr_Occurred() ? NULL : PyLong_FromUnsignedLongLong(op64 ? value : value & 0xFFFFFFFFu);
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

/* vmcs_write(access, fields, writes, op64, any_field) -> (outcome, written): (encoding, value) pairs
   in turn, stopping at the first that fails. */
static PyObject *vmcs_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5 || !PyDict_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "vmcs_write(access: dict, fields: dict, writes, op64, any_field)");
        return NULL;
    }
    PyObject *access = args[0], *fields = args[1];
    int op64 = PyObject_IsTrue(args[3]), any_field = PyObject_IsTrue(args[4]), outcome = ACCESS_OK;
    Py_ssize_t written = 0;
    PyObject *it = PyObject_GetIter(args[2]), *pair;
    if (op64 < 0 || any_field < 0 || !it)
        goto fail;
    while ((pair = PyIter_Next(it))) {
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "a VMWRITE is an (encoding, value) pair");
            Py_DECREF(pair);
            goto fail;
        }
        PyObject *source = PyTuple_GET_ITEM(pair, 1), *entry = lookup(access, PyTuple_GET_ITEM(pair, 0));
        if (!entry) {
            Py_DECREF(pair);
            if (PyErr_Occurred())
                goto fail;
            outcome = ACCESS_UNSUPPORTED;
            break;
        }
        PyObject *full = PyTuple_GET_ITEM(entry, 0);
        int high = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 1)), read_only = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 3));
        uint64_t mask = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(entry, 2));
        uint64_t value = PyLong_AsUnsignedLongLongMask(source);
        if (high < 0 || read_only < 0 || PyErr_Occurred()) {
            Py_DECREF(pair);
            goto fail;
        }
        if (read_only && !any_field) {
            Py_DECREF(pair);
            outcome = ACCESS_READ_ONLY;
            break;
        }
        if (high)
            value = (field_value(fields, full) & 0xFFFFFFFFu) | (value & 0xFFFFFFFFu) << 32;
        else
            value &= op64 ? mask : mask & 0xFFFFFFFFu; /* outside 64-bit mode: 32-bit source */
        PyObject *item = NULL;
        if (!high && PyLong_CheckExact(source)) {
            uint64_t exact = PyLong_AsUnsignedLongLong(source); /* fails below 0 or beyond 64 bits */
            if (PyErr_Occurred())
                PyErr_Clear();
            else if (exact == value)
                item = Py_NewRef(source); /* kept whole: store the caller's object */
        }
        if (!item)
            item = PyLong_FromUnsignedLongLong(value);
        Py_DECREF(pair);
        if (!item || PyDict_SetItem(fields, full, item)) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
        written++;
    }
    if (PyErr_Occurred())
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
