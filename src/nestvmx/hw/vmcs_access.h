/* The rules of one VMREAD or VMWRITE on the processor model's VMCS (SDM 31 VMREAD/VMWRITE), for
   hw/native.c (L0's accesses, processor.py) and the engine's shadow hook (engine/native.c, L1's
   shadowed accesses).  `access` is CpuModel.vmcs_access: encoding -> (FULL encoding, HIGH access,
   the bits a VMWRITE keeps, read-only field); a VMCS is a dict FULL encoding -> value. */
#ifndef NESTVMX_VMCS_ACCESS_H
#define NESTVMX_VMCS_ACCESS_H
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>

struct vmcs_access {
    PyObject *full; /* borrowed from the access table */
    bool high, read_only;
    uint64_t mask;
};

/* 1 with `a` filled, 0 for an encoding the VMCS lacks (VMfailValid 12), -1 with an exception. */
static int vmcs_access_of(PyObject *access, PyObject *encoding, struct vmcs_access *a)
{
    PyObject *entry = PyDict_GetItemWithError(access, encoding);
    if (!entry)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4) {
        PyErr_SetString(PyExc_TypeError, "a VMCS access entry is (full, high, mask, read_only)");
        return -1;
    }
    int high = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 1)), read_only = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 3));
    a->full = PyTuple_GET_ITEM(entry, 0);
    a->high = high > 0, a->read_only = read_only > 0;
    a->mask = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(entry, 2));
    return high < 0 || read_only < 0 || PyErr_Occurred() ? -1 : 1;
}

/* The field's value as a VMCS holds it (0 where it holds none); an exception may be set. */
static uint64_t vmcs_field(PyObject *vmcs, PyObject *full)
{
    PyObject *value = PyDict_GetItemWithError(vmcs, full);
    return value ? PyLong_AsUnsignedLongLongMask(value) : 0;
}

/* What VMREAD returns: the upper half for a HIGH access; 32 bits outside 64-bit mode. */
static inline uint64_t vmread_value(const struct vmcs_access *a, uint64_t field, bool op64)
{
    uint64_t value = a->high ? field >> 32 : field;
    return op64 ? value : value & 0xFFFFFFFFu;
}

/* What VMWRITE stores: a HIGH access replaces the upper half; else the source (32 bits outside
   64-bit mode, the upper half of the field then cleared) masked to what the field keeps. */
static inline uint64_t vmwrite_value(const struct vmcs_access *a, uint64_t field, uint64_t source, bool op64)
{
    if (a->high)
        return (field & 0xFFFFFFFFu) | (source & 0xFFFFFFFFu) << 32;
    return source & a->mask & (op64 ? UINT64_MAX : 0xFFFFFFFFu);
}

#endif
