/* Known VMX accesses for the shadow-VMCS counters: with shadowing, the 5 VMWRITEs of GUEST_RIP
 * and the 3 VMREADs of EXIT_QUALIFICATION are served by the processor; the 2 VMREADs of
 * VM_INSTRUCTION_ERROR (never shadowed) and the VMWRITE of EPT_POINTER exit.  Also checks that
 * L1 sees the same values either way. */
#include <vmx.h>

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs[4096] __attribute__((aligned(4096)));

int main(void) {
    u32 rev = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region = rev; *(u32 *)vmcs = rev;
    vmx_enable_cr();
    u64 pa = (u64)vmxon_region, v = 0, sum = 0;
    if (vmxon(&pa)) return 1;
    pa = (u64)vmcs;
    if (vmclear(&pa) || vmptrld(&pa)) return 2;
    for (u64 i = 1; i <= 5; i++) if (vmwrite(GUEST_RIP, 0x1000 * i)) return 3;
    if (vmwrite(EPT_POINTER, 0x5e)) return 4;
    for (int i = 0; i < 3; i++) { if (vmread(EXIT_QUALIFICATION, &v)) return 5; sum += v; }
    for (int i = 0; i < 2; i++) { if (vmread(VM_INSTRUCTION_ERROR, &v)) return 6; sum += v; }
    if (vmread(GUEST_RIP, &v) || v != 0x5000) return 7;
    if (vmclear(&pa)) return 8;  /* writes vmcs12 back: GUEST_RIP must be there */
    puts("GUEST_RIP in memory after VMCLEAR: "); put_hex(v); putc('\n');
    if (vmxoff()) return 9;
    return 0;
}
