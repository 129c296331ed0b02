/* A VM-exit MSR-load area that cannot be loaded (IA32_FS_BASE is not allowed there, SDM §28.6):
 * L2's first exit is a VMX abort (indicator 4 in the VMCS region) and L1 shuts down. */
#include <vmx.h>

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs[4096] __attribute__((aligned(4096)));
static u64 ept_pml4[512] __attribute__((aligned(4096)));
static u64 ept_pdpt[512] __attribute__((aligned(4096)));
static u64 ept_pd[512] __attribute__((aligned(4096)));
static u8 l2_stack[8192] __attribute__((aligned(16)));
static u64 load_area[2] __attribute__((aligned(16))) = {0xc0000100, 0};
static struct guest_regs g;
extern char l2_vmcall[];

__asm__(".text\n l2_vmcall: vmcall\n 1: hlt\n jmp 1b\n");

int main(void) {
    u32 rev = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region = rev; *(u32 *)vmcs = rev;
    vmx_setup_descriptors();
    vmx_enable_cr();
    u64 pa = (u64)vmxon_region;
    if (vmxon(&pa)) return 1;
    pa = (u64)vmcs;
    if (vmclear(&pa) || vmptrld(&pa)) return 2;
    for (u64 i = 0; i < 16; i++) ept_pd[i] = (i << 21) | 1 << 7 | 6 << 3 | 7;
    ept_pml4[0] = (u64)ept_pdpt | 7; ept_pdpt[0] = (u64)ept_pd | 7;
    vmx_setup_vmcs(0, (u64)ept_pml4 | 3 << 3 | 6, 0, l2_vmcall, l2_stack + sizeof(l2_stack));
    vmw(0x2008, (u64)load_area);  /* VM_EXIT_MSR_LOAD_ADDR */
    vmw(0x4010, 1);               /* VM_EXIT_MSR_LOAD_COUNT */
    vmx_run(1, &g);
    puts("L1 ran on after a VMX abort\n");
    return 3;
}
