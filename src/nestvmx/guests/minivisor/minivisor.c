/* minivisor: a small L1 hypervisor.  On each vCPU it enters VMX operation, builds an EPT and a
 * VMCS for one 64-bit L2 guest that runs a built-in workload, handles the L2's exits the way a
 * hypervisor does (CPUID emulation, port I/O, VMCALL, MSR access, HLT, EPT violations); after
 * the workload vCPU 0 waits for the others, prints a summary and exits through port 0xF4.
 *
 * Build-time parameters: WORKLOAD (1 cpuid, 2 vmcall, 3 io, 4 msr, 5 pagetouch), ITERATIONS,
 * VCPUS, and the footprint tables (FP_*) of the L1 whose VMCS traffic it reproduces. */
#include <vmx.h>

#include "workloads.h"
#include "footprint.h"  /* generated: the FP_* tables of the chosen footprint */

#ifndef VCPUS
#define VCPUS 1
#endif

/* Everything one vCPU's hypervisor instance owns; page-sized members first (alignment). */
struct percpu {
    u8 vmxon_region[4096];
    u8 vmcs[4096];
    u8 msr_bitmap[4096];
    u64 ept_pml4[512], ept_pdpt[512], ept_pd[512];
    u64 ept_pt[8][512];  /* 4 KiB pages of the fresh region */
    u8 l2_stack[16384];
    struct guest_regs g;
    u64 exits[64], total, kernel_gs_base;
    u16 read_field[32];  /* the fields read on this exit, by the footprint */
    u64 read_value[32];
    int nread;
} __attribute__((aligned(4096)));
static struct percpu cpus[VCPUS];
static volatile u32 finished;  /* vCPUs other than 0 that are done */


/* ---------------------------------------------------------------- L2 workloads */

static void l2_main(void) {
    run_workload();
    vmcall(1);  /* done */
    for (;;) __asm__ volatile("hlt");
}

/* ---------------------------------------------------------------- set-up */

static void build_ept(struct percpu *c) {
    c->ept_pml4[0] = (u64)c->ept_pdpt | 7;
    c->ept_pdpt[0] = (u64)c->ept_pd | 7;
    for (u64 i = 0; i < 16; i++) c->ept_pd[i] = (i << 21) | 1 << 7 | 6 << 3 | 7;  /* 0-32 MiB, 2 MiB pages */
    for (u64 i = 0; i < 8; i++) c->ept_pd[16 + i] = (u64)c->ept_pt[i] | 7;        /* 32-48 MiB, empty tables */
}

/* ---------------------------------------------------------------- exit handling */

/* The footprint (the FP_* tables of footprint.h, generated from nestvmx.guests.footprints)
 * decides which fields are read on each exit and written before the next entry. */
static void fp_read(struct percpu *c, u16 field) {
    u64 v = 0;
    vmread(field, &v);  /* a field L0 does not offer fails; the access happened all the same */
    c->read_field[c->nread] = field; c->read_value[c->nread++] = v;
}

static int was_read(struct percpu *c, u16 field, u64 *value) {
    for (int i = 0; i < c->nread; i++) if (c->read_field[i] == field) { *value = c->read_value[i]; return 1; }
    return 0;
}

static u64 cached(struct percpu *c, u16 field) {
    u64 v;
    if (!was_read(c, field, &v)) die("the footprint does not read field", field);
    return v;
}

/* Handles one exit; returns 1 when the workload is done.  *next_rip is where L2 continues. */
static int handle_exit(struct percpu *c, u64 reason, u64 *next_rip) {
    struct guest_regs *g = &c->g;
    *next_rip = 0;
    switch (reason) {
    case EXIT_CPUID: {
        u32 leaf = (u32)g->rax;
        g->rax = leaf == 0 ? 0xd : 0; g->rbx = 0x756e6547; g->rcx = 0x6c65746e; g->rdx = 0x49656e69;
        break;
    }
    case EXIT_VMCALL:
        if (g->rax == 1) return 1;
        if (g->rax == 2) die("L2 read back a wrong MSR value", g->rcx);
        g->rax = 0;
        break;
    case EXIT_IO:
        if (cached(c, EXIT_QUALIFICATION) & 8) g->rax |= 0xff;  /* IN: no device */
        break;
    case EXIT_RDMSR:
        g->rax = (u32)c->kernel_gs_base; g->rdx = c->kernel_gs_base >> 32;
        break;
    case EXIT_WRMSR:
        c->kernel_gs_base = (g->rdx << 32) | (u32)g->rax;
        break;
    case EXIT_HLT:
        break;
    case EXIT_EPT_VIOLATION: {
        u64 gpa = cached(c, GUEST_PHYSICAL_ADDRESS);
        if (gpa < FRESH_BASE || gpa >= FRESH_BASE + FRESH_SIZE) die("EPT violation outside the fresh region", gpa);
        u64 page = (gpa - FRESH_BASE) >> 12;
        c->ept_pt[page / 512][page % 512] = (gpa & ~0xfffull) | 6 << 3 | 7;  /* map it, identity */
        return 0;  /* the access is retried */
    }
    default:
        die("unexpected VM exit, reason", reason);
    }
    *next_rip = cached(c, GUEST_RIP) + cached(c, VM_EXIT_INSTRUCTION_LEN);
    return 0;
}

static void footprint_writes(struct percpu *c, u64 reason, u64 next_rip) {
    for (int i = 0; i < fp_nwrites[reason]; i++) {
        u16 field = fp_writes[reason][i];
        u64 value;
        if (field == GUEST_RIP) value = next_rip;
        else if (!was_read(c, field, &value)) value = vmx_last_written(field);
        vmwrite(field, value);  /* rewrites what the field holds; a field L0 does not offer fails */
    }
}

static const char *const names[64] = {[EXIT_CPUID] = "CPUID", [EXIT_HLT] = "HLT", [EXIT_VMCALL] = "VMCALL",
    [EXIT_IO] = "IO_INSTRUCTION", [EXIT_RDMSR] = "RDMSR", [EXIT_WRMSR] = "WRMSR", [EXIT_EPT_VIOLATION] = "EPT_VIOLATION"};

static void print_exits(const u64 *exits) {
    for (int i = 0; i < 64; i++) {
        if (exits[i]) { puts("  "); puts(names[i] ? names[i] : "other"); puts(": "); put_dec(exits[i]); putc('\n'); }
    }
}

int main(void) {
    int cpu = VCPUS > 1 ? vmx_apic_id() : 0;
    if (cpu >= VCPUS) die("more vCPUs than minivisor was built for, APIC ID", cpu);
    struct percpu *c = &cpus[cpu];
    vmx_enable_cr();
    vmx_setup_descriptors_cpu(cpu);
    if ((rdmsr(0x3a) & 5) != 5) die("VMX disabled by IA32_FEATURE_CONTROL", rdmsr(0x3a));
    u32 revision = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)c->vmxon_region = revision;
    *(u32 *)c->vmcs = revision;
    u64 pa = (u64)c->vmxon_region;
    must(vmxon(&pa), "VMXON failed");
    pa = (u64)c->vmcs;
    must(vmclear(&pa), "VMCLEAR failed");
    must(vmptrld(&pa), "VMPTRLD failed");
    build_ept(c);
    c->msr_bitmap[0x400 + (0x102 >> 3)] |= 1 << (0x102 & 7);  /* read of 0xc0000102 exits */
    c->msr_bitmap[0xc00 + (0x102 >> 3)] |= 1 << (0x102 & 7);  /* write of 0xc0000102 exits */
    u32 primary = 1u << 7 | 1u << 24;                         /* HLT exiting, unconditional I/O */
    if (WORKLOAD == W_MSR || WORKLOAD == W_MIX) primary |= 1u << 28;  /* MSR bitmaps */
    vmx_setup_vmcs(primary, (u64)c->ept_pml4 | 3 << 3 | 6, (u64)c->msr_bitmap, l2_main,
                   c->l2_stack + sizeof(c->l2_stack) - 8);

    for (int launched = 0;; launched = 1) {
        u64 r = vmx_run(!launched, &c->g);
        if (r) must(r & 0xff, launched ? "VMRESUME failed" : "VMLAUNCH failed");
        c->nread = 0;
        for (int i = 0; i < FP_NCOMMON; i++) fp_read(c, fp_common[i]);
        u64 reason = cached(c, VM_EXIT_REASON);
        if (reason & (1u << 31)) die("VM entry failed, exit reason", reason);
        reason &= 0x3f;
        for (int i = 0; i < fp_nreads[reason]; i++) fp_read(c, fp_reads[reason][i]);
        c->exits[reason]++;
        c->total++;
        u64 next_rip;
        if (handle_exit(c, reason, &next_rip)) break;
        footprint_writes(c, reason, next_rip);
        for (int i = 0; i < FP_NMSRS; i++) (void)rdmsr(fp_msrs[i]);
    }
    must(vmclear(&pa), "VMCLEAR failed");
    must(vmxoff(), "VMXOFF failed");
    if (cpu != 0) {  /* done: vCPU 0 reports */
        __atomic_add_fetch(&finished, 1, __ATOMIC_SEQ_CST);
        for (;;) __asm__ volatile("hlt");
    }
    while (finished != VCPUS - 1) __asm__ volatile("pause");
    u64 total = 0, exits[64] = {0};
    for (int i = 0; i < VCPUS; i++) {
        total += cpus[i].total;
        for (int r = 0; r < 64; r++) exits[r] += cpus[i].exits[r];
    }
    puts("minivisor: workload done, ");
    if (VCPUS > 1) { put_dec(VCPUS); puts(" vCPUs x "); }
    put_dec(ITERATIONS); puts(" iterations, "); put_dec(total); puts(" L2 exits\n");
    print_exits(exits);
    return 0;
}
