/* A hostile/broken L1: VMX pointers outside its memory get the architectural outcomes
 * (memory there reads as all ones, as on a PC bus), and VMLAUNCH with a bad host state fails. */
#include <vmx.h>

#include "../tap.h"

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs[4096] __attribute__((aligned(4096)));

int main(void) {
    u32 rev = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region = rev; *(u32 *)vmcs = rev;
    vmx_enable_cr();
    u64 outside = 1ull << 33, pa = outside, e = 0;  /* 8 GiB: beyond this VM's memory */
    ok(vmxon(&pa) == VMX_CF, "VMXON of a region outside memory: VMfailInvalid");
    pa = (u64)vmxon_region;
    ok(vmxon(&pa) == 0, "VMXON");
    pa = (u64)vmcs;
    ok(vmclear(&pa) == 0 && vmptrld(&pa) == 0, "VMCLEAR and VMPTRLD of a good VMCS");
    pa = outside;
    ok(vmptrld(&pa) == VMX_ZF && vmread(VM_INSTRUCTION_ERROR, &e) == 0 && e == 11,
       "VMPTRLD outside memory: VMfailValid(11) (reads all ones)");
    ok(vmclear(&pa) == 0, "VMCLEAR outside memory succeeds");
    pa = 1ull << 52;
    ok(vmptrld(&pa) == VMX_ZF && vmread(VM_INSTRUCTION_ERROR, &e) == 0 && e == 9,
       "VMPTRLD beyond the physical-address width: VMfailValid(9)");
    pa = (u64)vmcs;
    ok(vmptrld(&pa) == 0, "the good VMCS is current again");
    vmwrite(HOST_CR0, 0);  /* PE, NE and PG are fixed to 1 */
    ok(vmlaunch() == VMX_ZF && vmread(VM_INSTRUCTION_ERROR, &e) == 0 && (e == 7 || e == 8),
       "VMLAUNCH with invalid controls/host state: VMfailValid(7 or 8)");
    puts(failures ? "FAIL\n" : "PASS\nEND\n");
    return failures;
}
