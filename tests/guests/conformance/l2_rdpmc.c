/* RDPMC in L2 with "RDPMC exiting": exit reason 15 with instruction length 2, RIP at the RDPMC
 * (SDM §26.1.3), even for an ECX that selects no counter (the exit comes first).  (TAP output.) */
#include "../l1.h"

#include "../tap.h"

extern char l2_rdpmc[];
__asm__(".text\n l2_rdpmc: rdpmc\n vmcall\n 1: hlt\n jmp 1b\n");

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    int true_ctls = (rdmsr(0x480) >> 55) & 1;
    ok((rdmsr(true_ctls ? 0x48e : 0x482) >> 32) & (1u << 11), "RDPMC exiting may be 1");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(1u << 11, eptp, 0, l2_rdpmc, l2_stack + sizeof(l2_stack));
    g.rcx = 0x12345678;  /* no such counter: the exit comes first */
    u64 r = vmx_run(1, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 15 && vmr(VM_EXIT_INSTRUCTION_LEN) == 2 && vmr(GUEST_RIP) == (u64)l2_rdpmc,
       "RDPMC: exit reason 15, length 2, RIP at the instruction");
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
