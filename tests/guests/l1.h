/* What the test L1s share: VMX regions, EPT tables and a stack for one L2, and l1_start(). */
#ifndef L1_H
#define L1_H
#include <vmx.h>

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs[4096] __attribute__((aligned(4096)));
static u64 ept_pml4[512] __attribute__((aligned(4096)));
static u64 ept_pdpt[512] __attribute__((aligned(4096)));
static u64 ept_pd[512] __attribute__((aligned(4096)));
static __attribute__((unused)) u8 l2_stack[8192] __attribute__((aligned(16)));
static struct guest_regs g;

/* The usual start of a hypervisor: its own GDT and TSS, the VMX fixed CR bits, VMXON, and `vmcs`
 * cleared and made current.  0, or the flags of the instruction that failed. */
static __attribute__((unused)) u64 l1_start(void) {
    u32 rev = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region = rev;
    *(u32 *)vmcs = rev;
    vmx_setup_descriptors();
    vmx_enable_cr();
    u64 pa = (u64)vmxon_region;
    u64 flags = vmxon(&pa);
    if (flags) return flags;
    pa = (u64)vmcs;
    return vmclear(&pa) | vmptrld(&pa);
}

/* VMCLEAR of `vmcs`, then VMXOFF: 0 or the flags of the failure. */
static __attribute__((unused)) u64 l1_stop(void) {
    u64 pa = (u64)vmcs;
    return vmclear(&pa) | vmxoff();
}

/* vmx_run() of `vmcs` with `g`: VMLAUNCH the first time, VMRESUME after. */
static __attribute__((unused)) u64 l2_run(void) {
    static int launched;
    u64 r = vmx_run(!launched, &g);
    launched = 1;
    return r;
}

/* An L2 in a 2 MiB sandbox, L1's 16-18 MiB, zeroed: its guest-physical 0-2 MiB by an EPT of one
 * 2 MiB page, its own page tables at 0x1000 (linear = guest-physical), a copy of L1's GDT at
 * 0x4000 and its stack below 0x1f0000; the VMCS set up for code at `rip` with `primary`. */
#define SANDBOX (16ull << 20)
static __attribute__((unused)) void l2_sandbox(u32 primary, u64 rip) {
    u64 *sandbox = (u64 *)SANDBOX;
    for (u64 i = 0; i < (2 << 20) / 8; i++) sandbox[i] = 0;
    sandbox[0x1000 / 8] = 0x2000 | 3;
    sandbox[0x2000 / 8] = 0x3000 | 3;
    sandbox[0x3000 / 8] = 0x83;
    for (int i = 0; i < 5; i++) sandbox[0x4000 / 8 + i] = vmx_gdt[i];
    ept_pml4[0] = (u64)ept_pdpt | 7;
    ept_pdpt[0] = (u64)ept_pd | 7;
    ept_pd[0] = SANDBOX | 1 << 7 | 6 << 3 | 7;
    vmx_setup_vmcs(primary, (u64)ept_pml4 | 3 << 3 | 6, 0, (void *)rip, (void *)0x1f0000);
    vmw(GUEST_CR3, 0x1000);
    vmw(GUEST_GDTR_BASE, 0x4000);
}
#endif
