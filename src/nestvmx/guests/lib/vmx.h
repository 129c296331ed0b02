/* Helpers for guest hypervisors: VMCS field encodings, checked VMREAD/VMWRITE, control
 * adjustment from the capability MSRs, a VMCS for a simple 64-bit L2, and vmx_run()
 * (lib/vmx_entry.S), which enters the guest and returns at its next VM exit. */
#ifndef NESTVMX_VMX_H
#define NESTVMX_VMX_H
#include <nestvmx.h>

/* VMCS field encodings (SDM Appendix B) */
enum {
    VIRTUAL_PROCESSOR_ID = 0x0000, GUEST_ES_SELECTOR = 0x0800, GUEST_CS_SELECTOR = 0x0802,
    GUEST_SS_SELECTOR = 0x0804, GUEST_DS_SELECTOR = 0x0806, GUEST_FS_SELECTOR = 0x0808,
    GUEST_GS_SELECTOR = 0x080a, GUEST_LDTR_SELECTOR = 0x080c, GUEST_TR_SELECTOR = 0x080e,
    HOST_ES_SELECTOR = 0x0c00, HOST_CS_SELECTOR = 0x0c02, HOST_SS_SELECTOR = 0x0c04,
    HOST_DS_SELECTOR = 0x0c06, HOST_FS_SELECTOR = 0x0c08, HOST_GS_SELECTOR = 0x0c0a,
    HOST_TR_SELECTOR = 0x0c0c, IO_BITMAP_A = 0x2000, IO_BITMAP_B = 0x2002, MSR_BITMAP = 0x2004, EPT_POINTER = 0x201a, GUEST_PHYSICAL_ADDRESS = 0x2400,
    VMCS_LINK_POINTER = 0x2800, GUEST_IA32_PAT = 0x2804, GUEST_IA32_EFER = 0x2806, HOST_IA32_PAT = 0x2c00,
    HOST_IA32_EFER = 0x2c02, PIN_BASED_VM_EXEC_CONTROL = 0x4000, CPU_BASED_VM_EXEC_CONTROL = 0x4002,
    EXCEPTION_BITMAP = 0x4004, VM_EXIT_CONTROLS = 0x400c, VM_ENTRY_CONTROLS = 0x4012,
    SECONDARY_VM_EXEC_CONTROL = 0x401e, VM_INSTRUCTION_ERROR = 0x4400, VM_EXIT_REASON = 0x4402,
    VM_EXIT_INSTRUCTION_LEN = 0x440c, GUEST_ES_LIMIT = 0x4800, GUEST_ES_AR_BYTES = 0x4814,
    GUEST_INTERRUPTIBILITY_INFO = 0x4824, GUEST_ACTIVITY_STATE = 0x4826, GUEST_SYSENTER_CS = 0x482a,
    HOST_IA32_SYSENTER_CS = 0x4c00, CR0_GUEST_HOST_MASK = 0x6000, CR4_GUEST_HOST_MASK = 0x6002,
    CR0_READ_SHADOW = 0x6004, CR4_READ_SHADOW = 0x6006, EXIT_QUALIFICATION = 0x6400, GUEST_CR0 = 0x6800,
    GUEST_CR3 = 0x6802, GUEST_CR4 = 0x6804, GUEST_ES_BASE = 0x6806, GUEST_GDTR_BASE = 0x6816,
    GUEST_IDTR_BASE = 0x6818, GUEST_DR7 = 0x681a, GUEST_RSP = 0x681c, GUEST_RIP = 0x681e,
    GUEST_RFLAGS = 0x6820, HOST_CR0 = 0x6c00, HOST_CR3 = 0x6c02, HOST_CR4 = 0x6c04, HOST_FS_BASE = 0x6c06,
    HOST_GS_BASE = 0x6c08, HOST_TR_BASE = 0x6c0a, HOST_GDTR_BASE = 0x6c0c, HOST_IDTR_BASE = 0x6c0e,
    HOST_RIP = 0x6c16, GUEST_GDTR_LIMIT = 0x4810, GUEST_IDTR_LIMIT = 0x4812,
    VM_EXIT_INTR_INFO = 0x4404, VM_EXIT_INTR_ERROR_CODE = 0x4406, IDT_VECTORING_INFO_FIELD = 0x4408,
    IDT_VECTORING_ERROR_CODE = 0x440a, VMX_INSTRUCTION_INFO = 0x440e, VM_ENTRY_INTR_INFO_FIELD = 0x4016,
    VM_ENTRY_EXCEPTION_ERROR_CODE = 0x4018, VM_ENTRY_INSTRUCTION_LEN = 0x401a, VM_ENTRY_MSR_LOAD_ADDR = 0x200a,
    VM_ENTRY_MSR_LOAD_COUNT = 0x4014, GUEST_LINEAR_ADDRESS = 0x640a, GUEST_FS_BASE = 0x680e,
    GUEST_TR_LIMIT = 0x480e, GUEST_TR_BASE = 0x6814,
};
enum { EXIT_CPUID = 10, EXIT_HLT = 12, EXIT_VMCALL = 18, EXIT_IO = 30, EXIT_RDMSR = 31, EXIT_WRMSR = 32,
       EXIT_EPT_VIOLATION = 48 };

struct guest_regs { u64 rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15; };
u64 vmx_run(int launch, struct guest_regs *g);
extern char vmx_exit_point[];


static void die(const char *what, u64 value) {
    puts("vmx: "); puts(what); puts(" "); put_hex(value); putc('\n');
    exit(2);
}

static void must(u64 flags, const char *what) {
    if (flags) {
        u64 err = 0;
        vmread(VM_INSTRUCTION_ERROR, &err);
        die(what, flags << 32 | err);
    }
}

static __attribute__((unused)) u64 vmr(u64 field) { u64 v = 0; must(vmread(field, &v), "VMREAD failed"); return v; }

/* Per-CPU data: each CPU loads its own TSS, at selector 0x18 + 16 * cpu of the GDT below, so
 * STR (which does not exit) tells a CPU which one it is.  Keep in step with lib/vmx_entry.S. */
#define VMX_MAX_CPUS 32
static inline int vmx_this_cpu(void) {
    u16 tr;
    __asm__ volatile("str %0" : "=r"(tr));
    int cpu = (tr - 0x18) >> 4;
    return cpu >= 0 && cpu < VMX_MAX_CPUS ? cpu : 0;
}

/* The values written with vmw(), so that a hypervisor can write a field again unchanged. */
static struct { u64 field, value; } vmx_written[VMX_MAX_CPUS][160];
static int vmx_nwritten[VMX_MAX_CPUS];
static void vmw(u64 field, u64 value) {
    must(vmwrite(field, value), "VMWRITE failed");
    int c = vmx_this_cpu();
    for (int i = 0; i < vmx_nwritten[c]; i++)
        if (vmx_written[c][i].field == field) { vmx_written[c][i].value = value; return; }
    if (vmx_nwritten[c] < 160) { vmx_written[c][vmx_nwritten[c]].field = field; vmx_written[c][vmx_nwritten[c]++].value = value; }
}
static __attribute__((unused)) u64 vmx_last_written(u64 field) {
    int c = vmx_this_cpu();
    for (int i = 0; i < vmx_nwritten[c]; i++) if (vmx_written[c][i].field == field) return vmx_written[c][i].value;
    return 0;
}

/* A GDT of our own (code 0x08, data 0x10, then one TSS per CPU from 0x18), loaded with LTR: VM
 * entry needs a usable host TR, and vmx_setup_vmcs gives L2 these selectors. */
static u64 vmx_gdt[3 + 2 * VMX_MAX_CPUS] __attribute__((aligned(16)));
static u8 vmx_tss[VMX_MAX_CPUS][104] __attribute__((aligned(16)));
static inline void vmx_setup_descriptors_cpu(int cpu) {
    u64 t = (u64)vmx_tss[cpu];
    vmx_gdt[1] = 0x00af9b000000ffffull;
    vmx_gdt[2] = 0x00cf93000000ffffull;
    vmx_gdt[3 + 2 * cpu] = (sizeof(vmx_tss[0]) - 1) | (t & 0xffffff) << 16 | 0x89ull << 40 | ((t >> 24) & 0xff) << 56;
    vmx_gdt[4 + 2 * cpu] = t >> 32;
    struct { u16 limit; u64 base; } __attribute__((packed)) gdtr = {sizeof(vmx_gdt) - 1, (u64)vmx_gdt};
    __asm__ volatile("lgdt %0" : : "m"(gdtr));
    __asm__ volatile("pushq $0x08; leaq 1f(%%rip), %%rax; pushq %%rax; lretq; 1:" : : : "rax", "memory");
    __asm__ volatile("movw $0x10, %%ax; movw %%ax, %%ds; movw %%ax, %%es; movw %%ax, %%ss; ltr %w0"
                     : : "r"(0x18 + 16 * cpu) : "rax", "memory");
}
static inline void vmx_setup_descriptors(void) { vmx_setup_descriptors_cpu(0); }

/* The initial APIC ID (CPUID.1:EBX[31:24]): on this platform, the vCPU's index. */
static inline int vmx_apic_id(void) { u32 a, b, c, d; cpuid(1, 0, &a, &b, &c, &d); return b >> 24; }

/* Make CR0 and CR4 satisfy IA32_VMX_CR0/CR4_FIXED0/1 (CR4.VMXE included), as VMXON requires. */
static inline void vmx_enable_cr(void) {
    u64 cr0 = (read_cr0() | rdmsr(0x486)) & rdmsr(0x487);
    __asm__ volatile("mov %0, %%cr0" : : "r"(cr0));
    write_cr4((read_cr4() | rdmsr(0x488) | 0x2000) & rdmsr(0x489));
}

/* An EPT mapping guest-physical 0 to n x 2 MiB onto the same addresses (read/write/execute,
 * write-back); returns its EPT pointer (4-level walk, write-back paging structures). */
static __attribute__((unused)) u64 vmx_identity_ept(u64 *pml4, u64 *pdpt, u64 *pd, int n) {
    for (int i = 0; i < n; i++) pd[i] = (u64)i << 21 | 1 << 7 | 6 << 3 | 7;
    pml4[0] = (u64)pdpt | 7;
    pdpt[0] = (u64)pd | 7;
    return (u64)pml4 | 3 << 3 | 6;
}

/* Allowed settings of a control from its capability MSR: must-be-one bits set, others as wanted. */
static u32 adjust(u32 msr, u32 wanted) { u64 cap = rdmsr(msr); return (u32)((wanted | (u32)cap) & (cap >> 32)); }

/* A VMCS for a 64-bit L2 that shares L1's segments, GDT and page tables; VM exits return from
 * vmx_run().  `primary` are the wanted primary controls (secondary ones: EPT and VPID). */
static void vmx_setup_vmcs(u32 primary, u64 eptp, u64 msr_bitmap, void *rip, void *rsp) {
    u64 cr0 = read_cr0(), cr3, cr4 = read_cr4();
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    struct { u16 limit; u64 base; } __attribute__((packed)) gdtr, idtr;
    __asm__ volatile("sgdt %0; sidt %1" : "=m"(gdtr), "=m"(idtr));
    u16 cs, ss, ds, es, fs, gs, tr;
    __asm__ volatile("mov %%cs, %0; mov %%ss, %1; mov %%ds, %2; mov %%es, %3; mov %%fs, %4; mov %%gs, %5; str %6"
                     : "=r"(cs), "=r"(ss), "=r"(ds), "=r"(es), "=r"(fs), "=r"(gs), "=r"(tr));
    u64 *gdt = (u64 *)gdtr.base;
    u64 tr_base = ((gdt[tr >> 3] >> 16) & 0xffffff) | ((gdt[tr >> 3] >> 32) & 0xff000000) | gdt[(tr >> 3) + 1] << 32;

    int true_ctls = (rdmsr(0x480) >> 55) & 1;
    vmw(PIN_BASED_VM_EXEC_CONTROL, adjust(true_ctls ? 0x48d : 0x481, 0));
    vmw(CPU_BASED_VM_EXEC_CONTROL, adjust(true_ctls ? 0x48e : 0x482, primary | 1u << 31));
    vmw(SECONDARY_VM_EXEC_CONTROL, adjust(0x48b, 1u << 1 | 1u << 5));  /* EPT, VPID */
    vmw(VM_EXIT_CONTROLS, adjust(true_ctls ? 0x48f : 0x483, 1u << 9 | 1u << 20 | 1u << 21));
    vmw(VM_ENTRY_CONTROLS, adjust(true_ctls ? 0x490 : 0x484, 1u << 9 | 1u << 15));
    vmw(VIRTUAL_PROCESSOR_ID, 1);
    vmw(EPT_POINTER, eptp);
    vmw(EXCEPTION_BITMAP, 0);
    vmw(MSR_BITMAP, msr_bitmap);
    vmw(VMCS_LINK_POINTER, ~0ull);
    vmw(CR0_GUEST_HOST_MASK, 0);
    vmw(CR4_GUEST_HOST_MASK, 0);

    vmw(HOST_CR0, cr0); vmw(HOST_CR3, cr3); vmw(HOST_CR4, cr4);
    vmw(HOST_CS_SELECTOR, cs); vmw(HOST_SS_SELECTOR, ss); vmw(HOST_DS_SELECTOR, ds); vmw(HOST_ES_SELECTOR, es);
    vmw(HOST_FS_SELECTOR, fs); vmw(HOST_GS_SELECTOR, gs); vmw(HOST_TR_SELECTOR, tr);
    vmw(HOST_FS_BASE, rdmsr(0xc0000100)); vmw(HOST_GS_BASE, rdmsr(0xc0000101)); vmw(HOST_TR_BASE, tr_base);
    vmw(HOST_GDTR_BASE, gdtr.base); vmw(HOST_IDTR_BASE, idtr.base);
    vmw(HOST_IA32_EFER, rdmsr(0xc0000080));
    vmw(HOST_RIP, (u64)vmx_exit_point);

    /* L2: the same flat 64-bit segments, page tables and GDT as L1. */
    static const u16 selectors[8] = {0x10, 0x08, 0x10, 0x10, 0x10, 0x10, 0, 0x18};
    static const u32 rights[8] = {0xc093, 0xa09b, 0xc093, 0xc093, 0xc093, 0xc093, 0x10000, 0x8b};
    for (int i = 0; i < 8; i++) {
        vmw(GUEST_ES_SELECTOR + 2 * i, selectors[i]);
        vmw(GUEST_ES_BASE + 2 * i, i == 7 ? tr_base : 0);
        vmw(GUEST_ES_LIMIT + 2 * i, i == 7 ? 0x67 : i == 6 ? 0 : 0xffffffff);
        vmw(GUEST_ES_AR_BYTES + 2 * i, rights[i]);
    }
    vmw(GUEST_CR0, cr0); vmw(GUEST_CR3, cr3); vmw(GUEST_CR4, cr4);
    vmw(CR0_READ_SHADOW, cr0); vmw(CR4_READ_SHADOW, cr4);
    vmw(GUEST_GDTR_BASE, gdtr.base); vmw(GUEST_GDTR_LIMIT, gdtr.limit);
    vmw(GUEST_IDTR_BASE, 0); vmw(GUEST_IDTR_LIMIT, 0);
    vmw(GUEST_DR7, 0x400);
    vmw(GUEST_IA32_EFER, rdmsr(0xc0000080));
    vmw(GUEST_RSP, (u64)rsp);
    vmw(GUEST_RIP, (u64)rip);
    vmw(GUEST_RFLAGS, 0x2);
    vmw(GUEST_INTERRUPTIBILITY_INFO, 0);
    vmw(GUEST_ACTIVITY_STATE, 0);
}

#endif
