/* A hostile EPT12 that aliases its tables: every PML4 entry points to the same PDPT, every PDPT
 * entry to the same PD, and most PD entries to one page table whose 512 leaves all map one
 * page, `target` (some 10^10 leaves in all).  L0 must not walk it as a whole; L2 then touches
 * 1024 distinct pages, all aliases of `target`, and L1 checks what L2 wrote there. */
#include "l1.h"

static u64 ept_pt[512] __attribute__((aligned(4096)));
static volatile u64 target[512] __attribute__((aligned(4096)));

#define ALIASES (32ull << 20)  /* L2 guest-physical 32 MiB on: all aliases of target */
static void l2_main(void) {
    for (u64 k = 0; k < 1024; k++) *(volatile u64 *)(ALIASES + (k << 12) + 8 * (k % 512)) = k;
    vmcall(0);
    for (;;) __asm__ volatile("hlt");
}

int main(void) {
    if (l1_start()) return 1;
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
