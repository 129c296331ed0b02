/* A fault leaves RFLAGS as they were before the faulting instruction (SDM Vol. 3A §6.5): RCR of a
 * memory operand, which computes new flags from CF, faults on its operand with CF = 1 (left by a
 * compare, which QEMU evaluates lazily: the case it got wrong).  In L1 the
 * #PF handler sees CF = 1 in the RFLAGS image pushed; in L2 the EPT violation exit saves CF = 1 in
 * GUEST_RFLAGS, and once L1 maps the page the RCR rotates that CF in.  (TAP output.) */
#include "../l1.h"

#include "../idt_gate.h"
#include "../tap.h"

static volatile u64 pf_count, pf_rflags;
extern char pf_handler[], l2_rcr[], l2_rcr_insn[];

/* #PF: pop the error code, record the RFLAGS image, skip the 3-byte RCR. */
__asm__(".text\n pf_handler: addq $8, %rsp\n movq 16(%rsp), %rax\n movq %rax, pf_rflags(%rip)\n"
        " addq $3, (%rsp)\n incq pf_count(%rip)\n iretq\n");

/* L2: CF = 1 from a compare (QEMU keeps such flags lazily), RCR of the qword at RBX, VMCALL. */
__asm__(".text\n l2_rcr: xorl %ecx, %ecx\n cmpl $0x1000, %ecx\n l2_rcr_insn: rcrq $1, (%rbx)\n vmcall\n");

#define OUTSIDE_EPT (24ull << 20) /* mapped by L1's paging, not by the 16 MiB of L1's EPT */

int main(void) {
    set_idt_gate(14, pf_handler);

    u64 unmapped = 0x0000400000000000ull; /* canonical, no PML4 entry */
    __asm__ volatile("xorl %%ecx, %%ecx\n cmpl $0x1000, %%ecx\n rcrq $1, (%0)" : : "a"(unmapped) : "rcx", "memory", "cc");
    ok(pf_count == 1 && (pf_rflags & 1), "L1: #PF of RCR's operand pushes RFLAGS with CF = 1, as before it");

    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 8);  /* 16 MiB */
    vmx_setup_vmcs(0, eptp, 0, l2_rcr, l2_stack + sizeof(l2_stack));
    g.rbx = OUTSIDE_EPT;
    u64 r = vmx_run(1, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 48 && vmr(GUEST_RIP) == (u64)l2_rcr_insn && (vmr(GUEST_RFLAGS) & 1),
       "L2: EPT violation of RCR's operand saves RIP at the RCR and RFLAGS with CF = 1");
    ept_pd[OUTSIDE_EPT >> 21] = OUTSIDE_EPT | 1 << 7 | 6 << 3 | 7;  /* map it (2 MiB, write-back) */
    *(volatile u64 *)OUTSIDE_EPT = 0;
    u64 invept_desc[2] = {eptp, 0};
    __asm__ volatile("invept %0, %1" : : "m"(invept_desc), "r"(1ull) : "memory", "cc");
    r = vmx_run(0, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 18 && *(volatile u64 *)OUTSIDE_EPT == 1ull << 63,
       "L2: the RCR run again rotates CF = 1 into bit 63");
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
