/* Callbacks Unicorn runs inside emu_start for the execution engine (engine.py), built once with the
   machine's gcc by native.py.  Each one saves a round trip through a Python hook:
   - nestvmx_count_insn counts instructions (~15 ns against ~500 ns), keeps the last two started
     and RFLAGS as the last started, and stops the emulation when the count reaches `limit` (the
     host timer; 0 = never);
   - nestvmx_shadow_vmx serves register-form VMREAD/VMWRITE of non-root operation from the shadow
     VMCS (SDM 26.10) when the processor model would; any other case, and any doubt, calls the
     engine back to stop the guest there, and LogicalProcessor.execute runs the instruction.  */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>

struct counter {
    uint64_t count, limit, last, previous, rflags;
    int (*stop)(void *);
    int (*reg_read)(void *uc, int id, void *value);
    int rflags_id;
};

/* `rflags` is RFLAGS as `last` starts: QEMU may change the flags of an instruction (RCL/RCR compute
   them before their memory access) and then unwind it on a fault without restoring them. */
void nestvmx_count_insn(void *uc, uint64_t address, uint32_t size, struct counter *c)
{
    (void)size;
    c->previous = c->last;
    c->last = address;
    c->reg_read(uc, c->rflags_id, &c->rflags);
    if (++c->count == c->limit)
        c->stop(uc);
}

enum { STATE_RIP, STATE_CS, STATE_SS, STATE_RFLAGS, N_STATE };
#define RFLAGS_ARITH 0x8D5u /* CF PF AF ZF SF OF: VMsucceed clears them (SDM 31.2) */
#define RFLAGS_VM (1u << 17)
#define UC_PROT_EXEC 4

struct shadow_path {
    int (*reg_read_batch)(void *uc, int *ids, void **values, int count);
    int (*reg_write)(void *uc, int id, const void *value);
    int (*vmem_read)(void *uc, uint64_t address, int prot, void *bytes, size_t size);
    int state_ids[N_STATE];
    int gpr_ids[16];
    /* Armed by the engine before each run from the processor model; fields None: nothing served. */
    PyObject *fields;                    /* the shadow VMCS: FULL encoding -> value */
    PyObject *access;                    /* encoding -> (FULL encoding, HIGH access, VMWRITE mask, read-only) */
    PyObject *events;                    /* the processor's hardware events */
    PyObject *vmread_event, *vmwrite_event;
    PyObject *stop;                      /* called (no arguments) where the Python path takes over */
    const uint8_t *vmread_bitmap, *vmwrite_bitmap; /* in host memory */
    uint64_t cs, ss;                     /* the run's selectors: its mode and CPL hold while these do */
    int op64, vmwrite_any_field;
};

static int count_event(PyObject *events, PyObject *key)
{
    PyObject *old = PyDict_GetItemWithError(events, key);
    if (!old && PyErr_Occurred())
        return -1;
    PyObject *new = PyLong_FromLongLong((old ? PyLong_AsLongLong(old) : 0) + 1);
    int rc = new ? PyDict_SetItem(events, key, new) : -1;
    Py_XDECREF(new);
    return rc;
}

/* The access as LogicalProcessor._vmread_instr/_vmwrite_instr do it on success; false, with no
   effect, where the instruction exits, faults, fails or is not a register-form VMREAD/VMWRITE. */
static bool serve(void *uc, struct shadow_path *p)
{
    uint64_t st[N_STATE] = {0}; /* selectors fill 2 bytes */
    void *st_ptrs[N_STATE] = {&st[0], &st[1], &st[2], &st[3]};
    if (!p->fields || !PyDict_Check(p->fields) || p->reg_read_batch(uc, p->state_ids, st_ptrs, N_STATE))
        return false;
    uint64_t rip = st[STATE_RIP], rflags = st[STATE_RFLAGS];
    if (st[STATE_CS] != p->cs || st[STATE_SS] != p->ss || rflags & RFLAGS_VM)
        return false;
    /* [REX] 0F 78 /r (VMREAD r/m64, r64) or [REX] 0F 79 /r (VMWRITE r64, r/m64), ModRM.mod = 3 */
    uint8_t code[4] = {0};
    int rex = 0;
    if (p->vmem_read(uc, rip, UC_PROT_EXEC, code, 3))
        return false;
    if (p->op64 && (code[0] & 0xF0) == 0x40) {
        rex = code[0];
        if (p->vmem_read(uc, rip + 3, UC_PROT_EXEC, &code[3], 1))
            return false;
    }
    const uint8_t *op = rex ? &code[1] : code;
    if (op[0] != 0x0F || (op[1] != 0x78 && op[1] != 0x79) || op[2] >> 6 != 3)
        return false;
    bool vmread = op[1] == 0x78;
    int reg = ((rex >> 2) & 1) << 3 | ((op[2] >> 3) & 7), rm = (rex & 1) << 3 | (op[2] & 7);
    uint64_t gpr[2] = {0, 0}, mask32 = p->op64 ? UINT64_MAX : 0xFFFFFFFFu;
    int gpr_ids[2] = {p->gpr_ids[reg], p->gpr_ids[rm]};
    void *gpr_ptrs[2] = {&gpr[0], &gpr[1]};
    if (p->reg_read_batch(uc, gpr_ids, gpr_ptrs, 2))
        return false;
    uint64_t encoding = gpr[0] & mask32;
    const uint8_t *bitmap = vmread ? p->vmread_bitmap : p->vmwrite_bitmap;
    if (encoding >> 15 || !bitmap || bitmap[encoding >> 3] >> (encoding & 7) & 1)
        return false; /* a VM exit (SDM 26.1.3) */
    PyObject *key = PyLong_FromUnsignedLongLong(encoding);
    PyObject *entry = key ? PyDict_GetItemWithError(p->access, key) : NULL;
    Py_XDECREF(key);
    if (!entry || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4)
        return false; /* unsupported component: VMfailValid */
    PyObject *full = PyTuple_GET_ITEM(entry, 0);
    int high = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 1));
    uint64_t keep = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(entry, 2));
    int read_only = PyObject_IsTrue(PyTuple_GET_ITEM(entry, 3));
    PyObject *old = PyDict_GetItemWithError(p->fields, full);
    uint64_t value = old ? PyLong_AsUnsignedLongLong(old) : 0;
    if (PyErr_Occurred() || high < 0 || read_only < 0)
        return false;
    if (vmread) {
        value = (high ? value >> 32 : value) & mask32;
        if (p->reg_write(uc, p->gpr_ids[rm], &value))
            return false;
    } else {
        if (read_only && !p->vmwrite_any_field)
            return false; /* VMfailValid(13) */
        uint64_t source = gpr[1] & mask32;
        value = high ? (value & 0xFFFFFFFFu) | (source & 0xFFFFFFFFu) << 32 : source & keep & mask32;
        PyObject *new = PyLong_FromUnsignedLongLong(value);
        int rc = new ? PyDict_SetItem(p->fields, full, new) : -1;
        Py_XDECREF(new);
        if (rc)
            return false;
    }
    if (count_event(p->events, vmread ? p->vmread_event : p->vmwrite_event))
        return false;
    rflags &= ~(uint64_t)RFLAGS_ARITH;
    rip += rex ? 4 : 3;
    p->reg_write(uc, p->state_ids[STATE_RFLAGS], &rflags);
    p->reg_write(uc, p->state_ids[STATE_RIP], &rip);
    return true;
}

bool nestvmx_shadow_vmx(void *uc, struct shadow_path *p)
{
    PyGILState_STATE gil = PyGILState_Ensure(); /* Unicorn runs with the GIL released */
    if (!serve(uc, p)) {
        PyErr_Clear();
        PyObject *result = PyObject_CallNoArgs(p->stop);
        if (!result)
            PyErr_WriteUnraisable(p->stop);
        Py_XDECREF(result);
    }
    PyGILState_Release(gil);
    return true;
}
