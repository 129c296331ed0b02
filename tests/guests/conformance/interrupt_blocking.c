/* Blocking by MOV SS and by STI (SDM Table 25-3): VMLAUNCH right after a MOV to SS fails with
 * VMfailValid(26) (SDM VMLAUNCH/VMRESUME, §26.1); an L2 exit right after a MOV to SS, or after an
 * STI that set IF, records the blocking in the guest interruptibility state, which lasts one
 * instruction; an STI with IF already set blocks nothing.  (TAP output.) */
#include "../l1.h"

#include "../tap.h"

extern char l2_code[], l2_cpuid1[], l2_cpuid2[], l2_sti[], l2_cpuid3[], l2_cpuid4[];

__asm__(".text\n"
        "l2_code: mov %ss, %ax\n mov %ax, %ss\n l2_cpuid1: cpuid\n nop\n l2_cpuid2: cpuid\n vmcall\n"
        "l2_sti: sti\n l2_cpuid3: cpuid\n sti\n l2_cpuid4: cpuid\n vmcall\n"
        "1: hlt\n jmp 1b\n");

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(0, eptp, 0, l2_code, l2_stack + sizeof(l2_stack));
    u64 flags, error = 0;
    __asm__ volatile("mov %%ss, %%ax; mov %%ax, %%ss; vmlaunch; pushfq; popq %0" : "=r"(flags) : : "rax", "cc", "memory");
    vmread(VM_INSTRUCTION_ERROR, &error);
    ok((flags & VMX_FLAGS) == VMX_ZF && error == 26, "VMLAUNCH right after MOV SS: VMfailValid(26)");
    u64 r = vmx_run(1, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 10 && vmr(GUEST_RIP) == (u64)l2_cpuid1 && vmr(GUEST_INTERRUPTIBILITY_INFO) == 2,
       "CPUID right after MOV SS in L2: exit with blocking by MOV SS");
    vmw(GUEST_RIP, (u64)l2_cpuid1 + 2);
    r = vmx_run(0, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 10 && vmr(GUEST_RIP) == (u64)l2_cpuid2 && vmr(GUEST_INTERRUPTIBILITY_INFO) == 0,
       "the blocking entered with lasts one instruction: the next CPUID exit has none");
    vmw(GUEST_RIP, (u64)l2_cpuid2 + 2);
    r = vmx_run(0, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 18, "then the VMCALL");
    vmw(GUEST_RIP, (u64)l2_sti);
    vmw(GUEST_RFLAGS, 2);  /* IF = 0 */
    r = vmx_run(0, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 10 && vmr(GUEST_RIP) == (u64)l2_cpuid3 && vmr(GUEST_INTERRUPTIBILITY_INFO) == 1,
       "CPUID right after an STI that set IF: exit with blocking by STI");
    vmw(GUEST_RIP, (u64)l2_cpuid3 + 2);
    vmw(GUEST_INTERRUPTIBILITY_INFO, 0);
    r = vmx_run(0, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 10 && vmr(GUEST_RIP) == (u64)l2_cpuid4 && vmr(GUEST_INTERRUPTIBILITY_INFO) == 0,
       "after an STI with IF already set: no blocking");
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
