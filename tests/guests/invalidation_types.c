/* INVEPT/INVVPID type checks where Bochs 2.7 departs from the SDM, so this program is not among
 * the conformance programs that must also pass on Bochs: in 64-bit mode the type is the whole
 * register (Bochs uses its low 32 bits), and an unsupported type fails before the descriptor is
 * read (Bochs reads it first and faults).  SDM Vol. 3C INVEPT/INVVPID "Operation"; KVM's
 * handle_invept/handle_invvpid do the same.  (TAP output.) */
#include "l1.h"

#include "tap.h"

static int fail_valid(u64 flags, u64 error) { return flags == VMX_ZF && vmr(VM_INSTRUCTION_ERROR) == error; }

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16), flags;
    struct { u64 a, b; } desc = {eptp, 0};
    u64 type = 0x100000002ull;  /* all-context in the low half */
    __asm__ volatile("invept %1, %2; pushfq; popq %0" : "=r"(flags) : "m"(desc), "r"(type) : "cc", "memory");
    ok(fail_valid(flags & VMX_FLAGS, 28), "INVEPT type 0x100000002: VMfailValid(28)");
    type = 7;
    __asm__ volatile("invvpid (%1), %2; pushfq; popq %0" : "=r"(flags) : "r"(0x40000000000ull), "r"(type) : "cc", "memory");
    ok(fail_valid(flags & VMX_FLAGS, 28), "INVVPID type 7 with an unmapped descriptor: VMfailValid(28), no #PF");
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
