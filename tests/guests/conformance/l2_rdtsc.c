/* RDTSC in L2: with RDTSC exiting it exits to L1 (reason 16, length 2, RIP at RDTSC); without, it
 * runs in L2 and the counter moves forward.  (TAP output.) */
#include "../l1.h"

#include "../tap.h"

extern char l2_rdtsc[], l2_lock_rdtsc[];

/* Two RDTSCs; the second result minus the first ends in RAX, then VMCALL. */
__asm__(".text\n"
        "l2_rdtsc: rdtsc\n shlq $32, %rdx\n orq %rax, %rdx\n movq %rdx, %rbx\n"
        " rdtsc\n shlq $32, %rdx\n orq %rdx, %rax\n subq %rbx, %rax\n vmcall\n"
        "1: hlt\n jmp 1b\n"
        "l2_lock_rdtsc: .byte 0xf0, 0x0f, 0x31\n vmcall\n");  /* LOCK RDTSC: #UD (SDM Vol. 2A, LOCK) */

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    ok((rdmsr(0x48e) >> 32 | rdmsr(0x482) >> 32) & 1u << 12, "RDTSC exiting is allowed");
    vmx_setup_vmcs(1u << 7 | 1u << 12, eptp, 0, l2_rdtsc, l2_stack + sizeof(l2_stack));
    u64 r = vmx_run(1, &g), reason = 0, len = 0, rip = 0;
    vmread(VM_EXIT_REASON, &reason); vmread(VM_EXIT_INSTRUCTION_LEN, &len); vmread(GUEST_RIP, &rip);
    ok(r == 0 && reason == 16 && len == 2 && rip == (u64)l2_rdtsc, "RDTSC exiting: L2's RDTSC exits to L1");
    vmw(CPU_BASED_VM_EXEC_CONTROL, vmr(CPU_BASED_VM_EXEC_CONTROL) & ~(1u << 12));
    r = vmx_run(0, &g);
    vmread(VM_EXIT_REASON, &reason);
    ok(r == 0 && reason == 18 && (long long)g.rax > 0, "without it RDTSC runs in L2 and the counter moves forward");
    vmw(CPU_BASED_VM_EXEC_CONTROL, vmr(CPU_BASED_VM_EXEC_CONTROL) | 1u << 12);
    vmw(EXCEPTION_BITMAP, 1u << 6);
    vmw(GUEST_RIP, (u64)l2_lock_rdtsc);
    r = vmx_run(0, &g);
    vmread(VM_EXIT_REASON, &reason);
    u64 info = vmr(VM_EXIT_INTR_INFO);
    ok(r == 0 && reason == 0 && (info & 0x80000fff) == 0x80000306, "LOCK RDTSC in L2 is #UD, not an RDTSC exit");
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
