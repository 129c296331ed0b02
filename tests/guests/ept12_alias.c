/* A hostile EPT12 that aliases its tables: every PML4 entry points to the same PDPT, every PDPT
 * entry to the same PD, and most PD entries to one page table whose 512 leaves all map one
 * page, `target` (some 10^10 leaves in all).  L0 must not walk it as a whole; L2 then touches
 * 1024 distinct pages, all aliases of `target`, and L1 checks what L2 wrote there. */
#include <vmx.h>

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs[4096] __attribute__((aligned(4096)));
static u64 ept_pml4[512] __attribute__((aligned(4096)));
static u64 ept_pdpt[512] __attribute__((aligned(4096)));
static u64 ept_pd[512] __attribute__((aligned(4096)));
static u64 ept_pt[512] __attribute__((aligned(4096)));
static volatile u64 target[512] __attribute__((aligned(4096)));
static u8 l2_stack[8192] __attribute__((aligned(16)));
static struct guest_regs g;

#define ALIASES (32ull << 20)  /* L2 guest-physical 32 MiB on: all aliases of target */
static void l2_main(void) {
    for (u64 k = 0; k < 1024; k++) *(volatile u64 *)(ALIASES + (k << 12) + 8 * (k % 512)) = k;
    vmcall(0);
    for (;;) __asm__ volatile("hlt");
}

int main(void) {
    u32 rev = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region = rev; *(u32 *)vmcs = rev;
    vmx_setup_descriptors();
    vmx_enable_cr();
    u64 pa = (u64)vmxon_region;
    if (vmxon(&pa)) return 1;
    pa = (u64)vmcs;
    if (vmclear(&pa) || vmptrld(&pa)) return 2;
    for (int i = 0; i < 512; i++) {
        ept_pml4[i] = (u64)ept_pdpt | 7;
        ept_pdpt[i] = (u64)ept_pd | 7;
        ept_pd[i] = i < 16 ? (u64)i << 21 | 1 << 7 | 6 << 3 | 7 : (u64)ept_pt | 7;  /* 0-32 MiB identity */
        ept_pt[i] = (u64)target | 6 << 3 | 7;
    }
    vmx_setup_vmcs(0, (u64)ept_pml4 | 3 << 3 | 6, 0, l2_main, l2_stack + sizeof(l2_stack));
    u64 r = vmx_run(1, &g), reason = 0;
    vmread(VM_EXIT_REASON, &reason);
    if (r || reason != EXIT_VMCALL) { puts("L2 did not end with VMCALL\n"); return 3; }
    for (u64 i = 0; i < 512; i++)
        if (target[i] != 512 + i) { puts("wrong value in target\n"); return 4; }
    puts("ok\n");
    return 0;
}
