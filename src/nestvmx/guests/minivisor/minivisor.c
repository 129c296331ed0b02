/* minivisor: a small L1 hypervisor.  It enters VMX operation, builds an EPT and a VMCS for one
 * 64-bit L2 guest that runs a built-in workload, handles the L2's exits the way a hypervisor
 * does (CPUID emulation, port I/O, VMCALL, MSR access, HLT, EPT violations), and after the
 * workload prints a summary and exits through port 0xF4.
 *
 * Build-time parameters: WORKLOAD (1 cpuid, 2 vmcall, 3 io, 4 msr, 5 pagetouch), ITERATIONS. */
#include <nestvmx.h>

#ifndef WORKLOAD
#define WORKLOAD 1
#endif
#ifndef ITERATIONS
#define ITERATIONS 100
#endif

enum { W_CPUID = 1, W_VMCALL, W_IO, W_MSR, W_PAGETOUCH };

/* VMCS field encodings (SDM Appendix B) */
enum {
    VIRTUAL_PROCESSOR_ID = 0x0000, GUEST_ES_SELECTOR = 0x0800, GUEST_CS_SELECTOR = 0x0802,
    GUEST_SS_SELECTOR = 0x0804, GUEST_DS_SELECTOR = 0x0806, GUEST_FS_SELECTOR = 0x0808,
    GUEST_GS_SELECTOR = 0x080a, GUEST_LDTR_SELECTOR = 0x080c, GUEST_TR_SELECTOR = 0x080e,
    HOST_ES_SELECTOR = 0x0c00, HOST_CS_SELECTOR = 0x0c02, HOST_SS_SELECTOR = 0x0c04,
    HOST_DS_SELECTOR = 0x0c06, HOST_FS_SELECTOR = 0x0c08, HOST_GS_SELECTOR = 0x0c0a,
    HOST_TR_SELECTOR = 0x0c0c, MSR_BITMAP = 0x2004, EPT_POINTER = 0x201a, GUEST_PHYSICAL_ADDRESS = 0x2400,
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
};
enum { EXIT_CPUID = 10, EXIT_HLT = 12, EXIT_VMCALL = 18, EXIT_IO = 30, EXIT_RDMSR = 31, EXIT_WRMSR = 32,
       EXIT_EPT_VIOLATION = 48 };

struct guest_regs { u64 rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15; };
u64 vmx_run(int launch, struct guest_regs *g);
extern char vmx_exit_point[];

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs[4096] __attribute__((aligned(4096)));
static u8 msr_bitmap[4096] __attribute__((aligned(4096)));
static u64 ept_pml4[512] __attribute__((aligned(4096)));
static u64 ept_pdpt[512] __attribute__((aligned(4096)));
static u64 ept_pd[512] __attribute__((aligned(4096)));
static u64 ept_pt[8][512] __attribute__((aligned(4096)));  /* 4 KiB pages of the fresh region */
static u8 l2_stack[16384] __attribute__((aligned(16)));
static struct guest_regs g;
static u64 exits[64], kernel_gs_base;

#define FRESH_BASE (32ull << 20)  /* guest-physical 32-48 MiB: mapped on demand (pagetouch) */
#define FRESH_SIZE (16ull << 20)

static void die(const char *what, u64 value) {
    puts("minivisor: "); puts(what); puts(" "); put_hex(value); putc('\n');
    exit(2);
}

static void must(u64 flags, const char *what) {
    if (flags) {
        u64 err = 0;
        vmread(VM_INSTRUCTION_ERROR, &err);
        die(what, flags << 32 | err);
    }
}

static u64 vmr(u64 field) { u64 v = 0; must(vmread(field, &v), "VMREAD failed"); return v; }
static void vmw(u64 field, u64 value) { must(vmwrite(field, value), "VMWRITE failed"); }

/* Allowed settings of a control from its capability MSR: must-be-one bits set, others as wanted. */
static u32 adjust(u32 msr, u32 wanted) { u64 cap = rdmsr(msr); return (u32)((wanted | (u32)cap) & (cap >> 32)); }

/* ---------------------------------------------------------------- L2 workloads */

static void l2_main(void) {
    u32 a, b, c, d;
    for (u64 i = 0; i < ITERATIONS; i++) {
        switch (WORKLOAD) {
        case W_CPUID: cpuid(0, 0, &a, &b, &c, &d); break;
        case W_VMCALL: vmcall(0); break;
        case W_IO: outb(0x80, (u8)i); break;
        case W_MSR: wrmsr(0xc0000102, i); if (rdmsr(0xc0000102) != i) vmcall(2); break;
        case W_PAGETOUCH: *(volatile u64 *)(FRESH_BASE + (i % (FRESH_SIZE >> 12)) * 4096) = i; break;
        }
    }
    vmcall(1);  /* done */
    for (;;) __asm__ volatile("hlt");
}

/* ---------------------------------------------------------------- set-up */

static void build_ept(void) {
    ept_pml4[0] = (u64)ept_pdpt | 7;
    ept_pdpt[0] = (u64)ept_pd | 7;
    for (u64 i = 0; i < 16; i++) ept_pd[i] = (i << 21) | 1 << 7 | 6 << 3 | 7;  /* 0-32 MiB, 2 MiB pages */
    for (u64 i = 0; i < 8; i++) ept_pd[16 + i] = (u64)ept_pt[i] | 7;        /* 32-48 MiB, empty tables */
}

static void setup_vmcs(void) {
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
    u32 primary = 1u << 7 | 1u << 24 | 1u << 31;  /* HLT exiting, unconditional I/O, secondary controls */
    if (WORKLOAD == W_MSR) primary |= 1u << 28;   /* MSR bitmaps */
    vmw(CPU_BASED_VM_EXEC_CONTROL, adjust(true_ctls ? 0x48e : 0x482, primary));
    vmw(SECONDARY_VM_EXEC_CONTROL, adjust(0x48b, 1u << 1 | 1u << 5));  /* EPT, VPID */
    vmw(VM_EXIT_CONTROLS, adjust(true_ctls ? 0x48f : 0x483, 1u << 9 | 1u << 20 | 1u << 21));
    vmw(VM_ENTRY_CONTROLS, adjust(true_ctls ? 0x490 : 0x484, 1u << 9 | 1u << 15));
    vmw(VIRTUAL_PROCESSOR_ID, 1);
    vmw(EPT_POINTER, (u64)ept_pml4 | 3 << 3 | 6);
    vmw(EXCEPTION_BITMAP, 0);
    vmw(MSR_BITMAP, (u64)msr_bitmap);
    msr_bitmap[0x400 + (0x102 >> 3)] |= 1 << (0x102 & 7);          /* read of 0xc0000102 exits */
    msr_bitmap[0xc00 + (0x102 >> 3)] |= 1 << (0x102 & 7);          /* write of 0xc0000102 exits */
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

    /* L2: the same flat 64-bit segments, page tables and GDT as L1; EPT identity for 0-32 MiB. */
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
    vmw(GUEST_RSP, (u64)(l2_stack + sizeof(l2_stack) - 8));
    vmw(GUEST_RIP, (u64)l2_main);
    vmw(GUEST_RFLAGS, 0x2);
    vmw(GUEST_INTERRUPTIBILITY_INFO, 0);
    vmw(GUEST_ACTIVITY_STATE, 0);
}

/* ---------------------------------------------------------------- exit handling */

static void skip_instruction(void) { vmw(GUEST_RIP, vmr(GUEST_RIP) + vmr(VM_EXIT_INSTRUCTION_LEN)); }

static int handle_exit(u64 reason) {
    switch (reason) {
    case EXIT_CPUID: {
        u32 leaf = (u32)g.rax;
        g.rax = leaf == 0 ? 0xd : 0; g.rbx = 0x756e6547; g.rcx = 0x6c65746e; g.rdx = 0x49656e69;
        skip_instruction();
        return 0;
    }
    case EXIT_VMCALL:
        if (g.rax == 1) return 1;
        if (g.rax == 2) die("L2 read back a wrong MSR value", g.rcx);
        g.rax = 0;
        skip_instruction();
        return 0;
    case EXIT_IO: {
        u64 q = vmr(EXIT_QUALIFICATION);
        if (q & 8) g.rax |= 0xff;  /* IN: no device */
        skip_instruction();
        return 0;
    }
    case EXIT_RDMSR:
        g.rax = (u32)kernel_gs_base; g.rdx = kernel_gs_base >> 32;
        skip_instruction();
        return 0;
    case EXIT_WRMSR:
        kernel_gs_base = (g.rdx << 32) | (u32)g.rax;
        skip_instruction();
        return 0;
    case EXIT_HLT:
        skip_instruction();
        return 0;
    case EXIT_EPT_VIOLATION: {
        u64 gpa = vmr(GUEST_PHYSICAL_ADDRESS);
        if (gpa < FRESH_BASE || gpa >= FRESH_BASE + FRESH_SIZE) die("EPT violation outside the fresh region", gpa);
        u64 page = (gpa - FRESH_BASE) >> 12;
        ept_pt[page / 512][page % 512] = (gpa & ~0xfffull) | 6 << 3 | 7;  /* map it, identity */
        return 0;  /* the access is retried */
    }
    default:
        die("unexpected VM exit, reason", reason);
    }
    return 1;
}

static const char *const names[64] = {[EXIT_CPUID] = "CPUID", [EXIT_HLT] = "HLT", [EXIT_VMCALL] = "VMCALL",
    [EXIT_IO] = "IO_INSTRUCTION", [EXIT_RDMSR] = "RDMSR", [EXIT_WRMSR] = "WRMSR", [EXIT_EPT_VIOLATION] = "EPT_VIOLATION"};

int main(void) {
    write_cr4(read_cr4() | 0x2000);
    if ((rdmsr(0x3a) & 5) != 5) die("VMX disabled by IA32_FEATURE_CONTROL", rdmsr(0x3a));
    u32 revision = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region = revision;
    *(u32 *)vmcs = revision;
    u64 pa = (u64)vmxon_region;
    must(vmxon(&pa), "VMXON failed");
    pa = (u64)vmcs;
    must(vmclear(&pa), "VMCLEAR failed");
    must(vmptrld(&pa), "VMPTRLD failed");
    build_ept();
    setup_vmcs();

    u64 total = 0;
    for (int launched = 0;; launched = 1) {
        u64 r = vmx_run(!launched, &g);
        if (r) must(r & 0xff, launched ? "VMRESUME failed" : "VMLAUNCH failed");
        u64 reason = vmr(VM_EXIT_REASON);
        if (reason & (1u << 31)) die("VM entry failed, exit reason", reason);
        reason &= 0xffff;
        exits[reason < 64 ? reason : 63]++;
        total++;
        if (handle_exit(reason)) break;
    }
    puts("minivisor: workload done, "); put_dec(ITERATIONS); puts(" iterations, "); put_dec(total);
    puts(" L2 exits\n");
    for (int i = 0; i < 64; i++) {
        if (exits[i]) { puts("  "); puts(names[i] ? names[i] : "other"); puts(": "); put_dec(exits[i]); putc('\n'); }
    }
    must(vmclear(&pa), "VMCLEAR failed");
    must(vmxoff(), "VMXOFF failed");
    return 0;
}
