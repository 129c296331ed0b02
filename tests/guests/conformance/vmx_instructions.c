/* Conformance: VMXON/VMXOFF, VMCLEAR/VMPTRLD/VMPTRST, VMREAD/VMWRITE (register and memory
 * operands, widths, HIGH accesses, errors), launch-state errors, an invalid control field, and
 * CPUID/VMCALL/I/O round trips through an L2 with exit reason, qualification, instruction length
 * and GUEST_RIP checked.  Prints TAP lines; relies only on the architecture and ports 0xE9/0xF4. */
#include <vmx.h>

#include "../tap.h"

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs_a[4096] __attribute__((aligned(4096)));
static u8 vmcs_b[4096] __attribute__((aligned(4096)));
static u8 bad_rev[4096] __attribute__((aligned(4096)));
static u64 ept_pml4[512] __attribute__((aligned(4096)));
static u64 ept_pdpt[512] __attribute__((aligned(4096)));
static u64 ept_pd[512] __attribute__((aligned(4096)));
static u8 l2_stack[8192] __attribute__((aligned(16)));
static struct guest_regs g;
extern char l2_cpuid[], l2_vmcall[], l2_out[];

static u64 err(void) { u64 e = 0; vmread(VM_INSTRUCTION_ERROR, &e); return e; }
static int fail_valid(u64 flags, u64 error) { return flags == VMX_ZF && err() == error; }

/* L2: three exits at known addresses, then it is never resumed. */
__asm__(".text\n"
        "l2_cpuid: xorl %eax, %eax\n cpuid\n"
        "l2_vmcall: vmcall\n"
        "l2_out: outb %al, $0x80\n"
        "1: hlt\n jmp 1b\n");

int main(void) {
    u64 basic = rdmsr(0x480), misc = rdmsr(0x485);
    u32 rev = (u32)basic & 0x7fffffff;
    *(u32 *)vmxon_region = rev; *(u32 *)vmcs_a = rev; *(u32 *)vmcs_b = rev; *(u32 *)bad_rev = rev ^ 1;
    u64 pa, v;

    vmx_enable_cr();
    vmx_setup_descriptors();
    pa = (u64)bad_rev;
    ok(vmxon(&pa) == VMX_CF, "VMXON with a wrong revision id: VMfailInvalid");
    pa = (u64)vmxon_region + 8;
    ok(vmxon(&pa) == VMX_CF, "VMXON with an unaligned pointer: VMfailInvalid");
    pa = (u64)vmxon_region;
    ok(vmxon(&pa) == 0, "VMXON");
    ok(vmxon(&pa) == VMX_CF, "VMXON in VMX root operation without a current VMCS: VMfailInvalid");
    v = 0;
    ok(vmptrst(&v) == 0 && v == ~0ull, "VMPTRST without a current VMCS stores all ones");
    ok(vmread(GUEST_RIP, &v) == VMX_CF, "VMREAD without a current VMCS: VMfailInvalid");
    pa = (u64)vmxon_region;
    ok(vmptrld(&pa) == VMX_CF, "VMPTRLD of the VMXON pointer without a current VMCS: VMfailInvalid");

    pa = (u64)vmcs_a;
    ok(vmclear(&pa) == 0 && vmptrld(&pa) == 0, "VMCLEAR and VMPTRLD");
    v = 0;
    ok(vmptrst(&v) == 0 && v == (u64)vmcs_a, "VMPTRST returns the current VMCS");
    pa = (u64)vmxon_region;
    ok(fail_valid(vmxon(&pa), 15), "VMXON in VMX root operation: VMfailValid(15)");
    pa = (u64)bad_rev;
    ok(fail_valid(vmptrld(&pa), 11), "VMPTRLD with a wrong revision id: VMfailValid(11)");
    pa = (u64)vmcs_b + 0x10;
    ok(fail_valid(vmptrld(&pa), 9), "VMPTRLD with an unaligned pointer: VMfailValid(9)");
    pa = (u64)vmxon_region;
    ok(fail_valid(vmptrld(&pa), 10), "VMPTRLD of the VMXON pointer: VMfailValid(10)");
    pa = (u64)vmcs_b + 0x10;
    ok(fail_valid(vmclear(&pa), 2), "VMCLEAR with an unaligned pointer: VMfailValid(2)");
    pa = (u64)vmxon_region;
    ok(fail_valid(vmclear(&pa), 3), "VMCLEAR of the VMXON pointer: VMfailValid(3)");

    ok(vmwrite(GUEST_RIP, 0x123456789abcull) == 0 && vmread(GUEST_RIP, &v) == 0 && v == 0x123456789abcull,
       "VMWRITE/VMREAD of a natural-width field");
    ok(vmwrite(GUEST_ES_SELECTOR, 0x12345) == 0 && vmread(GUEST_ES_SELECTOR, &v) == 0 && v == 0x2345,
       "a 16-bit field keeps the low 16 bits");
    ok(vmwrite(GUEST_ES_LIMIT, 0x1122334455ull) == 0 && vmread(GUEST_ES_LIMIT, &v) == 0 && v == 0x22334455,
       "a 32-bit field keeps the low 32 bits");
    vmwrite(VMCS_LINK_POINTER, 0x1111111122222222ull);
    ok(vmwrite(VMCS_LINK_POINTER + 1, 0x33333333) == 0 && vmread(VMCS_LINK_POINTER, &v) == 0
       && v == 0x3333333322222222ull, "VMWRITE of the HIGH half of a 64-bit field");
    ok(vmread(VMCS_LINK_POINTER + 1, &v) == 0 && v == 0x33333333, "VMREAD of the HIGH half of a 64-bit field");
    vmwrite(VMCS_LINK_POINTER, ~0ull);
    u64 mem = 0;
    u64 flags;
    __asm__ volatile("vmread %2, %0; pushfq; popq %1" : "=m"(mem), "=r"(flags) : "r"((u64)GUEST_RIP) : "cc");
    ok((flags & VMX_FLAGS) == 0 && mem == 0x123456789abcull, "VMREAD to a memory operand");
    mem = 0xfeedull;
    __asm__ volatile("vmwrite %1, %2; pushfq; popq %0" : "=r"(flags) : "m"(mem), "r"((u64)GUEST_RSP) : "cc");
    ok((flags & VMX_FLAGS) == 0 && vmread(GUEST_RSP, &v) == 0 && v == 0xfeed, "VMWRITE from a memory operand");
    ok(fail_valid(vmread(0x4401, &v), 12), "VMREAD of a HIGH access to a 32-bit field: VMfailValid(12)");
    ok(fail_valid(vmwrite(0x1ull << 32 | GUEST_RIP, 0), 12), "VMWRITE with encoding bits 63:32 set: VMfailValid(12)");
    u64 wr = vmwrite(VM_EXIT_REASON, 0x1234);
    ok(misc & (1 << 29) ? wr == 0 : fail_valid(wr, 13), "VMWRITE of a read-only field follows IA32_VMX_MISC[29]");
    vmwrite(0x4401, 0);  /* error 12 */
    ok(vmwrite(GUEST_RIP, 1) == 0 && err() == 12, "a successful VMWRITE leaves the VM-instruction error alone");
    ok(fail_valid(vmresume(), 5), "VMRESUME of a clear VMCS: VMfailValid(5)");

    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(1u << 24, eptp, 0, l2_cpuid, l2_stack + sizeof(l2_stack));
    u64 pin = 0;
    vmread(PIN_BASED_VM_EXEC_CONTROL, &pin);
    vmwrite(PIN_BASED_VM_EXEC_CONTROL, 0);  /* clears the must-be-one bits 1, 2 and 4 */
    u64 r = vmx_run(1, &g);
    ok(r >> 63 && fail_valid(r & VMX_FLAGS, 7), "VMLAUNCH with an invalid control field: VMfailValid(7)");
    vmwrite(PIN_BASED_VM_EXEC_CONTROL, pin);

    u64 reason, len, qual, rip;
    r = vmx_run(1, &g);
    vmread(VM_EXIT_REASON, &reason); vmread(VM_EXIT_INSTRUCTION_LEN, &len); vmread(GUEST_RIP, &rip);
    ok(r == 0 && reason == 10 && len == 2 && rip == (u64)l2_cpuid + 2, "L2 CPUID: exit reason 10, length 2, RIP");
    ok(g.rax == 0, "L2's registers reach L1 at the exit");
    vmwrite(GUEST_RIP, rip + len);
    r = vmx_run(0, &g);
    vmread(VM_EXIT_REASON, &reason); vmread(VM_EXIT_INSTRUCTION_LEN, &len); vmread(GUEST_RIP, &rip);
    ok(r == 0 && reason == 18 && len == 3 && rip == (u64)l2_vmcall, "L2 VMCALL: exit reason 18, length 3, RIP");
    vmwrite(GUEST_RIP, rip + len);
    g.rax = 0x5a;
    r = vmx_run(0, &g);
    vmread(VM_EXIT_REASON, &reason); vmread(VM_EXIT_INSTRUCTION_LEN, &len); vmread(GUEST_RIP, &rip);
    vmread(EXIT_QUALIFICATION, &qual);
    ok(r == 0 && reason == 30 && len == 2 && rip == (u64)l2_out && qual == (0x80u << 16 | 1 << 6),
       "L2 OUT imm8: exit reason 30, qualification (port 0x80, immediate, 1 byte), length 2");
    ok(fail_valid(vmlaunch(), 4), "VMLAUNCH of a launched VMCS: VMfailValid(4)");
    u64 ept_caps = rdmsr(0x48c);
    struct { u64 a, b; } desc = {eptp, 0};
    u64 type = 3;  /* no such INVEPT type */
    __asm__ volatile("invept %1, %2; pushfq; popq %0" : "=r"(flags) : "m"(desc), "r"(type) : "cc", "memory");
    ok(fail_valid(flags & VMX_FLAGS, 28), "INVEPT with an unsupported type: VMfailValid(28)");
    type = 1;
    __asm__ volatile("invept %1, %2; pushfq; popq %0" : "=r"(flags) : "m"(desc), "r"(type) : "cc", "memory");
    ok(!(ept_caps >> 25 & 1) || (flags & VMX_FLAGS) == 0, "INVEPT single-context of a valid EPTP");
    desc.a = 0; type = 0;  /* individual address, VPID 0 */
    __asm__ volatile("invvpid %1, %2; pushfq; popq %0" : "=r"(flags) : "m"(desc), "r"(type) : "cc", "memory");
    ok(!(ept_caps >> 40 & 1) || fail_valid(flags & VMX_FLAGS, 28), "INVVPID of VPID 0: VMfailValid(28)");
    pa = (u64)vmcs_a;
    ok(vmclear(&pa) == 0 && vmptrld(&pa) == 0 && fail_valid(vmresume(), 5), "VMCLEAR makes the launch state clear");
    ok(vmclear(&pa) == 0 && vmxoff() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
