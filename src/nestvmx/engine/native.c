/* Callbacks Unicorn runs inside emu_start for the execution engine (engine.py), built once with the
   machine's gcc by native.py.  Each one saves a round trip through a Python hook:
   - nestvmx_count_insn counts instructions (~15 ns against ~500 ns), keeps the last two started
     and RFLAGS as the last started, stops the emulation when the count reaches `limit` (the
     host timer; 0 = never), and calls the engine at the instructions it must see first;
   - nestvmx_shadow_vmx serves register-form VMREAD/VMWRITE of non-root operation from the shadow
     VMCS (SDM 26.10) when the processor model would; any other case, and any doubt, calls the
     engine back to stop the guest there, and LogicalProcessor.execute runs the instruction.  */
#define PY_SSIZE_T_CLEAN
#include <string.h>
#include "vmcs_access.h" /* hw's: the access rules this hook shares with the processor model */

struct counter {
    uint64_t count, limit, last, previous, rflags;
    int (*stop)(void *);
    int (*reg_read)(void *uc, int id, void *value);
    int rflags_id;
    /* Instruction addresses where the engine stops the guest (sorted), and its callback. */
    const uint64_t *special;
    size_t n_special;
    PyObject *on_special; /* called with the address */
};

static bool is_special(const struct counter *c, uint64_t address)
{
    size_t low = 0, high = c->n_special;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        if (c->special[middle] < address)
            low = middle + 1;
        else
            high = middle;
    }
    return low < c->n_special && c->special[low] == address;
}

/* The first exception an engine callback raised inside emu_start, raised again by
   raise_callback_error() once emu_start has returned (as Unicorn's own Python hooks do). */
static PyObject *error_type, *error_value, *error_traceback;

/* fn() or fn(address) with the GIL (Unicorn runs with it released): the truth of the result, or
   -1 after an exception, which is kept and stops the emulation. */
static int call_engine(void *uc, int (*emu_stop)(void *), PyObject *fn, const uint64_t *address)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *arg = address ? PyLong_FromUnsignedLongLong(*address) : NULL;
    PyObject *result = address ? (arg ? PyObject_CallOneArg(fn, arg) : NULL) : PyObject_CallNoArgs(fn);
    int truth = result ? PyObject_IsTrue(result) : -1;
    Py_XDECREF(arg);
    Py_XDECREF(result);
    if (truth < 0) {
        if (error_type)
            PyErr_Clear();
        else
            PyErr_Fetch(&error_type, &error_value, &error_traceback);
        emu_stop(uc);
    }
    PyGILState_Release(gil);
    return truth;
}

/* `rflags` is RFLAGS as `last` starts: QEMU may change the flags of an instruction (RCL/RCR compute
   them before their memory access) and then unwind it on a fault without restoring them.  One code
   hook serves every special address: Unicorn checks each code hook's range at every instruction.
   The engine is called before the counting: an instruction it lets run again after its stop in
   front of it (on_special false) was counted and recorded at that stop. */
void nestvmx_count_insn(void *uc, uint64_t address, uint32_t size, struct counter *c)
{
    (void)size;
    if (c->n_special && is_special(c, address) && !call_engine(uc, c->stop, c->on_special, &address))
        return;
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
    int (*emu_stop)(void *uc);
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
    long long count = old ? PyLong_AsLongLong(old) : 0;
    PyObject *new = PyErr_Occurred() ? NULL : PyLong_FromLongLong(count + 1);
    int rc = new ? PyDict_SetItem(events, key, new) : -1;
    Py_XDECREF(new);
    return rc;
}

/* The access as LogicalProcessor.execute does it on success (the rules: vmcs_access.h); false where
   the instruction exits, faults, fails or is not a register-form VMREAD/VMWRITE, with no effect
   but, after an error, a VMCS field or register already written that execute() writes again. */
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
    struct vmcs_access a;
    int found = key ? vmcs_access_of(p->access, key, &a) : -1;
    Py_XDECREF(key);
    if (found <= 0 || (!vmread && a.read_only && !p->vmwrite_any_field))
        return false; /* VMfailValid(12) or (13) */
    uint64_t field = vmcs_field(p->fields, a.full), value;
    if (PyErr_Occurred())
        return false;
    if (vmread) {
        value = vmread_value(&a, field, p->op64);
        if (p->reg_write(uc, p->gpr_ids[rm], &value))
            return false;
    } else {
        PyObject *new = PyLong_FromUnsignedLongLong(vmwrite_value(&a, field, gpr[1] & mask32, p->op64));
        int rc = new ? PyDict_SetItem(p->fields, a.full, new) : -1;
        Py_XDECREF(new);
        if (rc)
            return false;
    }
    if (count_event(p->events, vmread ? p->vmread_event : p->vmwrite_event))
        return false;
    rflags &= ~(uint64_t)RFLAGS_ARITH;
    rip += rex ? 4 : 3;
    return !p->reg_write(uc, p->state_ids[STATE_RFLAGS], &rflags) && !p->reg_write(uc, p->state_ids[STATE_RIP], &rip);
}

bool nestvmx_shadow_vmx(void *uc, struct shadow_path *p)
{
    PyGILState_STATE gil = PyGILState_Ensure(); /* Unicorn runs with the GIL released */
    if (!serve(uc, p)) {
        PyErr_Clear();
        call_engine(uc, p->emu_stop, p->stop, NULL);
    }
    PyGILState_Release(gil);
    return true;
}

/* ---------------------------------------------------------------------------------------------
   Register transfer between the processor model's CpuState (hw/state.py) and Unicorn at each VM
   entry and exit (uc_state.py): one batch call each way, with the values Unicorn holds cached so
   that an entry writes only what changed.  The Python side gives the register ids. */

struct uc_mmr { uint16_t selector; uint64_t base; uint32_t limit, flags; }; /* uc_x86_mmr */
struct uc_msr { uint32_t rid; uint64_t value; };                          /* uc_x86_msr */

/* The slots: integer registers, then descriptor-table registers, then MSRs. */
enum { I_GPR = 0, I_RIP = 16, I_RFLAGS, I_CR0, I_CR3, I_CR4, I_DR7, I_SEL, I_FS_BASE = I_SEL + 6, I_GS_BASE, N_INTS };
enum { M_GDTR, M_IDTR, M_LDTR, M_TR, N_MMRS };
enum { S_EFER, S_SYSENTER_CS, S_SYSENTER_ESP, S_SYSENTER_EIP, N_MSRS };
enum { N_READS = N_INTS + N_MMRS + N_MSRS, MAX_WRITES = 64, N_PASSTHROUGH = 4 };
enum { SEG_FS = 4, SEG_GS = 5, SEG_LDTR = 6, SEG_TR = 7 };
#define AR_UNUSABLE (1u << 16)

struct register_file {
    void *uc;
    int (*read_batch)(void *uc, int *ids, void **values, int count);
    int (*write_batch)(void *uc, int *ids, void **values, int count);
    int int_ids[N_INTS], mmr_ids[N_MMRS], msr_id, cr2_id;
    uint32_t msr_indexes[N_MSRS], passthrough[N_PASSTHROUGH];
    PyObject *segment_type; /* hw.state.Segment */
    /* Unicorn's values as last read or written; `known` has a bit per slot (ints, mmrs, msrs). */
    uint64_t ints[N_INTS];
    struct uc_mmr mmrs[N_MMRS];
    struct uc_msr msrs[N_MSRS];
    uint64_t known;
};

static PyObject *S_gpr, *S_rip, *S_rflags, *S_cr0, *S_cr2, *S_cr3, *S_cr4, *S_dr7, *S_efer, *S_segs,
    *S_gdtr_base, *S_gdtr_limit, *S_idtr_base, *S_idtr_limit, *S_sysenter_cs, *S_sysenter_esp,
    *S_sysenter_eip, *S_msrs, *S_selector, *S_base, *S_limit, *S_ar;

static struct register_file *register_file(PyObject *address)
{
    void *p = PyLong_AsVoidPtr(address);
    if (!p && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "no register file at address 0");
    return p;
}

/* An integer attribute, wrapped to 64 bits as ctypes stores it; -1 with an exception on error. */
static int get_u64(PyObject *obj, PyObject *name, uint64_t *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v)
        return -1;
    *out = PyLong_AsUnsignedLongLongMask(v);
    Py_DECREF(v);
    return PyErr_Occurred() ? -1 : 0;
}

static int set_u64(PyObject *obj, PyObject *name, uint64_t value)
{
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    int rc = v ? PyObject_SetAttr(obj, name, v) : -1;
    Py_XDECREF(v);
    return rc;
}

/* Segment `index` of a CpuState's `segs` list (borrowed), or NULL with an exception. */
static PyObject *segment(PyObject *segs, int index)
{
    if (PyList_Check(segs) && PyList_GET_SIZE(segs) == 8)
        return PyList_GET_ITEM(segs, index);
    PyErr_SetString(PyExc_TypeError, "CpuState.segs must be a list of 8 segments");
    return NULL;
}

/* (selector, base, limit, ar) of segment `index`. */
static int get_segment(PyObject *segs, int index, uint64_t out[4])
{
    PyObject *seg = segment(segs, index);
    return !seg || get_u64(seg, S_selector, &out[0]) || get_u64(seg, S_base, &out[1])
        || get_u64(seg, S_limit, &out[2]) || get_u64(seg, S_ar, &out[3]) ? -1 : 0;
}

/* One attribute of segment `index`. */
static int get_segment_u64(PyObject *segs, int index, PyObject *name, uint64_t *out)
{
    PyObject *seg = segment(segs, index);
    return seg ? get_u64(seg, name, out) : -1;
}

/* CpuState.gpr, checked: a new reference, or NULL with an exception. */
static PyObject *get_gpr(PyObject *s)
{
    PyObject *gpr = PyObject_GetAttr(s, S_gpr);
    if (gpr && (!PyList_Check(gpr) || PyList_GET_SIZE(gpr) != 16)) {
        PyErr_SetString(PyExc_TypeError, "CpuState.gpr must be a list of 16 integers");
        Py_CLEAR(gpr);
    }
    return gpr;
}

struct writes {
    int n, ids[MAX_WRITES];
    void *ptrs[MAX_WRITES];
    uint64_t ints[MAX_WRITES];
    struct uc_mmr mmrs[MAX_WRITES];
    struct uc_msr msrs[MAX_WRITES];
};

static void add_int(struct writes *w, int id, uint64_t value)
{
    w->ints[w->n] = value;
    w->ptrs[w->n] = &w->ints[w->n];
    w->ids[w->n++] = id;
}

static void add_msr(struct writes *w, int msr_id, uint32_t index, uint64_t value)
{
    w->msrs[w->n] = (struct uc_msr){index, value};
    w->ptrs[w->n] = &w->msrs[w->n];
    w->ids[w->n++] = msr_id;
}

/* The writes of cached registers, skipped where Unicorn holds the value already. */
static void write_int(struct register_file *r, struct writes *w, int slot, uint64_t value)
{
    if (r->known >> slot & 1 && r->ints[slot] == value)
        return;
    r->ints[slot] = value;
    r->known |= 1ull << slot;
    add_int(w, r->int_ids[slot], value);
}

static void write_mmr(struct register_file *r, struct writes *w, int m, struct uc_mmr value)
{
    int bit = N_INTS + m;
    struct uc_mmr *k = &r->mmrs[m];
    if (r->known >> bit & 1 && k->selector == value.selector && k->base == value.base && k->limit == value.limit
        && k->flags == value.flags)
        return;
    *k = value;
    r->known |= 1ull << bit;
    w->mmrs[w->n] = value;
    w->ptrs[w->n] = &w->mmrs[w->n];
    w->ids[w->n++] = r->mmr_ids[m];
}

static void write_msr(struct register_file *r, struct writes *w, int m, uint64_t value)
{
    int bit = N_INTS + N_MMRS + m;
    if (r->known >> bit & 1 && r->msrs[m].value == value)
        return;
    r->msrs[m].value = value;
    r->known |= 1ull << bit;
    add_msr(w, r->msr_id, r->msr_indexes[m], value);
}

/* load_registers(register_file, state) -> Unicorn's status: make Unicorn's CPU `state` (VM entry).
   Order matters: Unicorn loads a segment's hidden part when its selector is written, under the
   CR0/CR3/CR4/EFER given before.  CR2 and the pass-through MSRs are always written.  On any
   failure nothing of the cache can be trusted: the next exit reads everything back. */
static PyObject *load_registers(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "load_registers(register_file, state)");
        return NULL;
    }
    struct register_file *r = register_file(args[0]);
    PyObject *s = args[1], *segs = NULL, *gpr = NULL, *msrs = NULL, *result = NULL;
    static struct writes w; /* the GIL serialises callers */
    uint64_t v[5], seg[4];
    w.n = 0;
    if (!r)
        return NULL;
    if (get_u64(s, S_gdtr_base, &v[0]) || get_u64(s, S_gdtr_limit, &v[1]) || get_u64(s, S_idtr_base, &v[2])
        || get_u64(s, S_idtr_limit, &v[3]))
        goto out;
    write_mmr(r, &w, M_GDTR, (struct uc_mmr){0, v[0], (uint32_t)v[1], 0});
    write_mmr(r, &w, M_IDTR, (struct uc_mmr){0, v[2], (uint32_t)v[3], 0});
    if (get_u64(s, S_cr4, &v[0]) || get_u64(s, S_efer, &v[1]) || get_u64(s, S_cr3, &v[2]) || get_u64(s, S_cr0, &v[3])
        || get_u64(s, S_cr2, &v[4]))
        goto out;
    write_int(r, &w, I_CR4, v[0]);
    write_msr(r, &w, S_EFER, v[1]);
    write_int(r, &w, I_CR3, v[2]);
    write_int(r, &w, I_CR0, v[3]);
    add_int(&w, r->cr2_id, v[4]); /* Unicorn's CR2 is not readable after emu_start (uc_state.py) */
    if (!(segs = PyObject_GetAttr(s, S_segs)))
        goto out;
    for (int i = 0; i < 6; i++) {
        if (get_segment_u64(segs, i, S_selector, &seg[0]))
            goto out;
        write_int(r, &w, I_SEL + i, seg[0]);
    }
    for (int i = SEG_LDTR; i <= SEG_TR; i++) {
        if (get_segment(segs, i, seg))
            goto out;
        uint32_t flags = (uint32_t)(seg[3] & 0xF0FF) << 8;
        write_mmr(r, &w, i == SEG_TR ? M_TR : M_LDTR, (struct uc_mmr){(uint16_t)seg[0], seg[1], (uint32_t)seg[2], flags});
    }
    if (get_segment_u64(segs, SEG_FS, S_base, &v[0]) || get_segment_u64(segs, SEG_GS, S_base, &v[1]))
        goto out;
    write_int(r, &w, I_FS_BASE, v[0]);
    write_int(r, &w, I_GS_BASE, v[1]);
    if (get_u64(s, S_sysenter_cs, &v[0]) || get_u64(s, S_sysenter_esp, &v[1]) || get_u64(s, S_sysenter_eip, &v[2])
        || get_u64(s, S_dr7, &v[3]))
        goto out;
    for (int i = 0; i < 3; i++)
        write_msr(r, &w, S_SYSENTER_CS + i, v[i]);
    write_int(r, &w, I_DR7, v[3]);
    if (!(msrs = PyObject_GetAttr(s, S_msrs)) || !PyDict_Check(msrs)) {
        if (msrs)
            PyErr_SetString(PyExc_TypeError, "CpuState.msrs must be a dict");
        goto out;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(msrs, &pos, &key, &value)) { /* the model's MSRs that Unicorn also implements */
        uint64_t index = PyLong_AsUnsignedLongLongMask(key);
        for (int i = 0; i < N_PASSTHROUGH && !PyErr_Occurred(); i++)
            if (r->passthrough[i] == index)
                add_msr(&w, r->msr_id, (uint32_t)index, PyLong_AsUnsignedLongLongMask(value));
        if (PyErr_Occurred())
            goto out;
    }
    if (!(gpr = get_gpr(s)))
        goto out;
    for (int i = 0; i < 16; i++) {
        uint64_t value = PyLong_AsUnsignedLongLongMask(PyList_GET_ITEM(gpr, i));
        if (PyErr_Occurred())
            goto out;
        write_int(r, &w, I_GPR + i, value);
    }
    if (get_u64(s, S_rflags, &v[0]) || get_u64(s, S_rip, &v[1]))
        goto out;
    write_int(r, &w, I_RFLAGS, v[0]);
    write_int(r, &w, I_RIP, v[1]);
    int status = r->write_batch(r->uc, w.ids, w.ptrs, w.n);
    if (status)
        r->known = 0; /* which of them Unicorn took is unknown */
    result = PyLong_FromLong(status);
out:
    if (!result)
        r->known = 0;
    Py_XDECREF(segs);
    Py_XDECREF(gpr);
    Py_XDECREF(msrs);
    return result;
}

static int replace_segment(struct register_file *r, PyObject *segs, int index, const uint64_t value[4])
{
    uint64_t old[4];
    if (get_segment(segs, index, old))
        return -1;
    if (!memcmp(old, value, sizeof old))
        return 0;
    PyObject *seg = PyObject_CallFunction(r->segment_type, "KKKK", (unsigned long long)value[0],
                                          (unsigned long long)value[1], (unsigned long long)value[2],
                                          (unsigned long long)value[3]);
    return seg ? PyList_SetItem(segs, index, seg) : -1;
}

/* save_registers(register_file, state, descriptor) -> Unicorn's status: copy Unicorn's CPU into
   `state` (VM exit).  A segment register whose selector changed gets descriptor(selector), the
   segment loaded from the GDT; the others keep the hidden part the processor already has. */
static PyObject *save_registers(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "save_registers(register_file, state, descriptor)");
        return NULL;
    }
    struct register_file *r = register_file(args[0]);
    PyObject *s = args[1], *descriptor = args[2], *segs = NULL, *gpr = NULL, *result = NULL;
    int ids[N_READS];
    void *ptrs[N_READS];
    if (!r)
        return NULL;
    for (int i = 0; i < N_INTS; i++)
        ids[i] = r->int_ids[i], ptrs[i] = &r->ints[i], r->ints[i] = 0; /* selectors fill 2 bytes */
    for (int i = 0; i < N_MMRS; i++)
        ids[N_INTS + i] = r->mmr_ids[i], ptrs[N_INTS + i] = &r->mmrs[i];
    for (int i = 0; i < N_MSRS; i++) {
        r->msrs[i].rid = r->msr_indexes[i];
        ids[N_INTS + N_MMRS + i] = r->msr_id, ptrs[N_INTS + N_MMRS + i] = &r->msrs[i];
    }
    int status = r->read_batch(r->uc, ids, ptrs, N_READS);
    r->known = status ? 0 : (1ull << N_READS) - 1;
    if (status)
        return PyLong_FromLong(status);
    const uint64_t *x = r->ints;
    if (!(gpr = get_gpr(s)))
        return NULL;
    for (int i = 0; i < 16; i++) {
        PyObject *value = PyLong_FromUnsignedLongLong(x[I_GPR + i]);
        if (!value || PyList_SetItem(gpr, i, value))
            goto out;
    }
    struct { PyObject *name; uint64_t value; } sets[] = {
        {S_rip, x[I_RIP]},
        {S_rflags, x[I_RFLAGS]},
        {S_cr0, x[I_CR0]},
        {S_cr3, x[I_CR3]},
        {S_cr4, x[I_CR4]},
        {S_dr7, x[I_DR7]},
        {S_efer, r->msrs[S_EFER].value},
        {S_sysenter_cs, r->msrs[S_SYSENTER_CS].value},
        {S_sysenter_esp, r->msrs[S_SYSENTER_ESP].value},
        {S_sysenter_eip, r->msrs[S_SYSENTER_EIP].value},
        {S_gdtr_base, r->mmrs[M_GDTR].base},
        {S_gdtr_limit, r->mmrs[M_GDTR].limit},
        {S_idtr_base, r->mmrs[M_IDTR].base},
        {S_idtr_limit, r->mmrs[M_IDTR].limit},
    };
    for (size_t i = 0; i < sizeof sets / sizeof *sets; i++)
        if (set_u64(s, sets[i].name, sets[i].value))
            goto out;
    if (!(segs = PyObject_GetAttr(s, S_segs)))
        goto out;
    for (int i = 0; i < 6; i++) {
        uint64_t old;
        if (get_segment_u64(segs, i, S_selector, &old))
            goto out;
        if (old == x[I_SEL + i])
            continue;
        PyObject *seg = PyObject_CallFunction(descriptor, "K", (unsigned long long)x[I_SEL + i]);
        if (!seg || PyList_SetItem(segs, i, seg))
            goto out;
    }
    if (set_u64(PyList_GET_ITEM(segs, SEG_FS), S_base, x[I_FS_BASE])
        || set_u64(PyList_GET_ITEM(segs, SEG_GS), S_base, x[I_GS_BASE]))
        goto out;
    for (int i = SEG_LDTR; i <= SEG_TR; i++) {
        const struct uc_mmr *m = &r->mmrs[i == SEG_TR ? M_TR : M_LDTR];
        uint64_t ar = (m->flags >> 8) & 0xF0FF;
        if (i == SEG_TR && ((ar & 0xF) == 1 || (ar & 0xF) == 9))
            ar |= 2; /* LTR marks the TSS busy; QEMU keeps the pre-LTR type in its segment cache */
        uint64_t value[4] = {m->selector, m->base, m->limit, ar & 0x80 ? ar : AR_UNUSABLE};
        if (replace_segment(r, segs, i, value))
            goto out;
    }
    result = PyLong_FromLong(0);
out:
    Py_XDECREF(segs);
    Py_XDECREF(gpr);
    return result;
}

/* raise_callback_error(): raise the exception an engine callback kept (call_engine), if any. */
static PyObject *raise_callback_error(PyObject *self, PyObject *unused)
{
    (void)self, (void)unused;
    if (!error_type)
        Py_RETURN_NONE;
    PyErr_Restore(error_type, error_value, error_traceback);
    error_type = error_value = error_traceback = NULL;
    return NULL;
}

static PyMethodDef methods[] = {
    {"raise_callback_error", raise_callback_error, METH_NOARGS, NULL},
    {"load_registers", (PyCFunction)(void (*)(void))load_registers, METH_FASTCALL, NULL},
    {"save_registers", (PyCFunction)(void (*)(void))save_registers, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "nestvmx_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit_nestvmx_native(void)
{
    struct { PyObject **slot; const char *name; } names[] = {
        {&S_gpr, "gpr"}, {&S_rip, "rip"}, {&S_rflags, "rflags"}, {&S_cr0, "cr0"}, {&S_cr2, "cr2"},
        {&S_cr3, "cr3"}, {&S_cr4, "cr4"}, {&S_dr7, "dr7"}, {&S_efer, "efer"}, {&S_segs, "segs"},
        {&S_gdtr_base, "gdtr_base"}, {&S_gdtr_limit, "gdtr_limit"}, {&S_idtr_base, "idtr_base"},
        {&S_idtr_limit, "idtr_limit"}, {&S_sysenter_cs, "sysenter_cs"}, {&S_sysenter_esp, "sysenter_esp"},
        {&S_sysenter_eip, "sysenter_eip"}, {&S_msrs, "msrs"}, {&S_selector, "selector"}, {&S_base, "base"},
        {&S_limit, "limit"}, {&S_ar, "ar"},
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!(*names[i].slot = PyUnicode_InternFromString(names[i].name)))
            return NULL;
    return PyModule_Create(&module);
}
