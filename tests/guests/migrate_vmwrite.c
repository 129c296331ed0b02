/* The lost-VMWRITE check for migration: a VMWRITE of a shadowed field (no exit with shadowing),
 * then a CPUID exit (L0 copies nothing on it: the snapshot point), then a VMREAD of the field on
 * whatever processor the VM continues on.  Exit status 0 only if the value survived. */
#include <vmx.h>

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs[4096] __attribute__((aligned(4096)));

int main(void) {
    u32 rev = (u32)rdmsr(0x480) & 0x7fffffff, a, b, c, d;
    *(u32 *)vmxon_region = rev; *(u32 *)vmcs = rev;
    vmx_enable_cr();
    u64 pa = (u64)vmxon_region, v = 0;
    if (vmxon(&pa)) return 1;
    pa = (u64)vmcs;
    if (vmclear(&pa) || vmptrld(&pa)) return 2;
    if (vmwrite(GUEST_RIP, 0x5a5a1000)) return 3;
    cpuid(0, 0, &a, &b, &c, &d);  /* the snapshot is taken after this exit */
    if (vmread(GUEST_RIP, &v)) return 4;
    puts("GUEST_RIP "); put_hex(v); putc('\n');
    return v == 0x5a5a1000 ? 0 : 5;
}
