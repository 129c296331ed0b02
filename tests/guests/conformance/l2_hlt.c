/* HLT in L2 with HLT exiting: exit reason 12 at the HLT, with the instruction length counting its
 * prefixes (SDM §28.2.5: the length of the instruction, prefixes included).  (TAP output.) */
#include "../l1.h"

#include "../tap.h"

extern char l2_hlt[];

/* HLT; REX.W HLT; operand-size HLT; VMCALL. */
__asm__(".text\n"
        "l2_hlt: hlt\n .byte 0x48, 0xf4\n .byte 0x66, 0xf4\n vmcall\n"
        "1: hlt\n jmp 1b\n");

static void expect_hlt(int launch, u64 offset, u64 length, const char *what) {
    u64 r = vmx_run(launch, &g), reason = 0, len = 0, rip = 0;
    vmread(VM_EXIT_REASON, &reason); vmread(VM_EXIT_INSTRUCTION_LEN, &len); vmread(GUEST_RIP, &rip);
    ok(r == 0 && reason == 12 && len == length && rip == (u64)l2_hlt + offset, what);
    vmw(GUEST_RIP, rip + len);
}

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(1u << 7, eptp, 0, l2_hlt, l2_stack + sizeof(l2_stack));  /* HLT exiting */
    expect_hlt(1, 0, 1, "HLT exits with length 1");
    expect_hlt(0, 1, 2, "REX.W HLT exits with length 2");
    expect_hlt(0, 3, 2, "66 HLT exits with length 2");
    u64 r = vmx_run(0, &g), reason = 0;
    vmread(VM_EXIT_REASON, &reason);
    ok(r == 0 && reason == 18, "then the VMCALL");
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
