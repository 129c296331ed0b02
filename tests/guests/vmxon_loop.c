/* VMXON 10,000 times (after the first, each fails with error 15 or VMfailInvalid and must
 * allocate nothing), then VMXOFF/VMXON 10,000 times; ends in VMX operation. */
#include <vmx.h>

static u8 vmxon_region[4096] __attribute__((aligned(4096)));

int main(void) {
    *(u32 *)vmxon_region = (u32)rdmsr(0x480) & 0x7fffffff;
    vmx_enable_cr();
    u64 pa = (u64)vmxon_region;
    if (vmxon(&pa)) return 1;
    for (int i = 0; i < 10000; i++) if (vmxon(&pa) != VMX_CF) return 2;  /* no current VMCS: VMfailInvalid */
    for (int i = 0; i < 10000; i++) if (vmxoff() || vmxon(&pa)) return 3;
    puts("done\n");
    return 0;
}
