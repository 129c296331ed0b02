/* A VM-exit MSR-load area that cannot be loaded (IA32_FS_BASE is not allowed there, SDM §28.6):
 * L2's first exit is a VMX abort (indicator 4 in the VMCS region) and L1 shuts down. */
#include "l1.h"

static u64 load_area[2] __attribute__((aligned(16))) = {0xc0000100, 0};
extern char l2_vmcall[];

__asm__(".text\n l2_vmcall: vmcall\n 1: hlt\n jmp 1b\n");

int main(void) {
    if (l1_start()) return 1;
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(0, eptp, 0, l2_vmcall, l2_stack + sizeof(l2_stack));
    vmw(0x2008, (u64)load_area);  /* VM_EXIT_MSR_LOAD_ADDR */
    vmw(0x4010, 1);               /* VM_EXIT_MSR_LOAD_COUNT */
    vmx_run(1, &g);
    puts("L1 ran on after a VMX abort\n");
    return 3;
}
