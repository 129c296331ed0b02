/* Code written after it ran must run as written (SDM Vol. 3A §11.6, self- and cross-modifying
 * code): L1 rewrites L2's code between two entries, and a VMREAD with a memory operand rewrites
 * an immediate in L1's own code.  (TAP output.) */
#include "../l1.h"

#include "../tap.h"

extern char l2_code[], l2_imm[], l1_code[], l1_imm[];

/* L2: RAX = an immediate, VMCALL.  L1: a function returning an immediate. */
__asm__(".text\n"
        "l2_code: .byte 0xb8\n l2_imm: .long 1\n vmcall\n"
        "1: hlt\n jmp 1b\n"
        ".balign 4096\n"  /* a page of its own: only the VMREAD writes it */
        "l1_code: .byte 0x48, 0xb8\n l1_imm: .quad 7\n ret\n"
        ".balign 4096\n");

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(1u << 7, eptp, 0, l2_code, l2_stack + sizeof(l2_stack));
    u64 r = vmx_run(1, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 18 && (u32)g.rax == 1, "L2 runs its code: RAX = 1");
    *(volatile u32 *)l2_imm = 2;
    vmw(GUEST_RIP, (u64)l2_code);
    r = vmx_run(0, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 18 && (u32)g.rax == 2, "L2 runs the code L1 rewrote: RAX = 2");
    *(volatile u32 *)l2_imm = 3;
    vmw(GUEST_RIP, (u64)l2_code);
    r = vmx_run(0, &g);
    ok(r == 0 && (u32)g.rax == 3, "and again after another rewrite: RAX = 3");

    u64 (*f)(void) = (u64(*)(void))l1_code;
    ok(f() == 7, "L1's function returns its immediate, 7");
    vmw(GUEST_RSP, 0x1234);
    u64 flags;  /* VMREAD straight to memory (a C helper would store through a register) */
    __asm__ volatile("vmreadq %[field], %[dst]\n pushfq\n popq %[flags]"
                     : [dst] "=m"(*(u64 *)l1_imm), [flags] "=r"(flags)
                     : [field] "r"((u64)GUEST_RSP)
                     : "cc", "memory");
    flags &= 0x8d5;
    ok(flags == 0 && f() == 0x1234, "after a VMREAD into its immediate it returns 0x1234");
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
