/* RDTSC in L2: with RDTSC exiting it exits to L1 (reason 16, length 2, RIP at RDTSC); without, it
 * runs in L2 and the counter moves forward.  (TAP output.) */
#include <vmx.h>

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs[4096] __attribute__((aligned(4096)));
static u64 ept_pml4[512] __attribute__((aligned(4096)));
static u64 ept_pdpt[512] __attribute__((aligned(4096)));
static u64 ept_pd[512] __attribute__((aligned(4096)));
static u8 l2_stack[8192] __attribute__((aligned(16)));
static struct guest_regs g;
static int failures, tests;
extern char l2_rdtsc[];

/* Two RDTSCs; the second result minus the first ends in RAX, then VMCALL. */
__asm__(".text\n"
        "l2_rdtsc: rdtsc\n shlq $32, %rdx\n orq %rax, %rdx\n movq %rdx, %rbx\n"
        " rdtsc\n shlq $32, %rdx\n orq %rdx, %rax\n subq %rbx, %rax\n vmcall\n"
        "1: hlt\n jmp 1b\n");

static void ok(int cond, const char *what) {
    tests++;
    if (!cond) failures++;
    puts(cond ? "ok " : "not ok "); put_dec(tests); puts(" - "); puts(what); putc('\n');
}

int main(void) {
    u32 rev = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region = rev; *(u32 *)vmcs = rev;
    vmx_setup_descriptors();
    vmx_enable_cr();
    u64 pa = (u64)vmxon_region;
    ok(vmxon(&pa) == 0, "VMXON");
    pa = (u64)vmcs;
    ok(vmclear(&pa) == 0 && vmptrld(&pa) == 0, "VMCLEAR and VMPTRLD");
    for (u64 i = 0; i < 16; i++) ept_pd[i] = (i << 21) | 1 << 7 | 6 << 3 | 7;
    ept_pml4[0] = (u64)ept_pdpt | 7; ept_pdpt[0] = (u64)ept_pd | 7;
    ok((rdmsr(0x48e) >> 32 | rdmsr(0x482) >> 32) & 1u << 12, "RDTSC exiting is allowed");
    vmx_setup_vmcs(1u << 7 | 1u << 12, (u64)ept_pml4 | 3 << 3 | 6, 0, l2_rdtsc, l2_stack + sizeof(l2_stack));
    u64 r = vmx_run(1, &g), reason = 0, len = 0, rip = 0;
    vmread(VM_EXIT_REASON, &reason); vmread(VM_EXIT_INSTRUCTION_LEN, &len); vmread(GUEST_RIP, &rip);
    ok(r == 0 && reason == 16 && len == 2 && rip == (u64)l2_rdtsc, "RDTSC exiting: L2's RDTSC exits to L1");
    vmw(CPU_BASED_VM_EXEC_CONTROL, vmr(CPU_BASED_VM_EXEC_CONTROL) & ~(1u << 12));
    r = vmx_run(0, &g);
    vmread(VM_EXIT_REASON, &reason);
    ok(r == 0 && reason == 18 && (long long)g.rax > 0, "without it RDTSC runs in L2 and the counter moves forward");
    pa = (u64)vmcs;
    ok(vmclear(&pa) == 0 && vmxoff() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
