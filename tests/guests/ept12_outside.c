/* L1's EPT maps an L2 page to an address past L1's RAM; L2 then writes to it.  L0 has no memory
 * to back it (KVM would hand such an access to the VMM as MMIO): the run must end with a clear
 * message and L0's own memory untouched. */
#include "l1.h"

extern char l2_touch[];

__asm__(".text\n"
        "l2_touch: movq $0x2000000, %rax\n movq $0x5a, (%rax)\n"
        "1: hlt\n jmp 1b\n");

int main(void) {
    u32 rev = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region = rev; *(u32 *)vmcs = rev;
    vmx_setup_descriptors();
    vmx_enable_cr();
    u64 pa = (u64)vmxon_region;
    if (vmxon(&pa)) return 1;
    pa = (u64)vmcs;
    if (vmclear(&pa) || vmptrld(&pa)) return 2;
    ept_pd[16] = (1ull << 35) | 1 << 7 | 6 << 3 | 7;  /* L2's 32 MiB -> past L1's RAM */
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(0, eptp, 0, l2_touch, l2_stack + sizeof(l2_stack));
    u64 r = vmx_run(1, &g), reason = 0;
    vmread(VM_EXIT_REASON, &reason);
    puts("L2 exited to L1 with reason "); put_dec(reason); putc('\n');
    return r ? 3 : 4;
}
