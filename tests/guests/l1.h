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
#endif
