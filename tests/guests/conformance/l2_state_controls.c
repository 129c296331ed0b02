/* What the VM-entry and VM-exit controls do with L2's MSR and debug state: the entry MSR-load
 * area loads into L2 (SDM §27.4), "load debug controls" = 0 keeps L1's DR7 for L2 (§27.3.2.1),
 * the exit saves PAT, EFER and DR7 into the VMCS only under "save IA32_PAT", "save IA32_EFER"
 * and "save debug controls" (§28.3.1), without "load IA32_PAT" / "load IA32_EFER" L1 keeps
 * L2's PAT and EFER but LMA/LME (§28.5.1), and CR0.CD is loaded neither from the guest CR0 at
 * entry (§27.3.2.1) nor from the host CR0 at exit.  (TAP output.) */
#include "../l1.h"

#include "../tap.h"

enum { MSR_PAT = 0x277, MSR_EFER = 0xc0000080, MSR_SYSENTER_CS = 0x174 };
enum { EXIT_SAVE_DEBUG = 1u << 2, EXIT_SAVE_PAT = 1u << 18, EXIT_SAVE_EFER = 1u << 20, EXIT_LOAD_EFER = 1u << 21 };
#define L1_PAT 0x0007040600070406ull
#define L2_PAT 0x0606060606060606ull
#define L1_DR7 0x402ull  /* G0, with DR0 = 0: a breakpoint nobody reaches */

static u8 msr_bitmap[4096] __attribute__((aligned(4096)));  /* all zero: no MSR access exits */
static u64 load_area[1][2] __attribute__((aligned(16)));
extern char l2_code[];

/* L2: PAT := all WB, EFER.SCE := 0, then RBX = IA32_SYSENTER_CS and RSI = DR7, VMCALL. */
__asm__(".text\n"
        "l2_code: mov $0x277, %ecx\n mov $0x06060606, %eax\n mov %eax, %edx\n wrmsr\n"
        " mov $0xc0000080, %ecx\n rdmsr\n and $~1, %eax\n wrmsr\n"
        " mov $0x174, %ecx\n rdmsr\n mov %rax, %rbx\n mov %dr7, %rsi\n vmcall\n"
        "1: hlt\n jmp 1b\n");

static void set_dr7(u64 value) { __asm__ volatile("xor %%eax, %%eax; mov %%rax, %%dr0; mov %0, %%dr7" : : "r"(value) : "rax"); }

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(1u << 28, eptp, (u64)msr_bitmap, l2_code, l2_stack + sizeof(l2_stack));  /* MSR bitmaps */
    u64 efer = rdmsr(MSR_EFER);
    wrmsr(MSR_EFER, efer | 1);  /* SCE, which L2 clears */
    vmw(GUEST_IA32_EFER, efer | 1);
    wrmsr(MSR_PAT, L1_PAT);
    vmw(GUEST_IA32_PAT, L1_PAT);
    vmw(GUEST_SYSENTER_CS, 0x11);
    load_area[0][0] = MSR_SYSENTER_CS; load_area[0][1] = 0x77;
    vmw(VM_ENTRY_MSR_LOAD_ADDR, (u64)load_area);
    vmw(VM_ENTRY_MSR_LOAD_COUNT, 1);
    u64 exit_ctls = vmr(VM_EXIT_CONTROLS) & ~(u64)(EXIT_SAVE_DEBUG | EXIT_SAVE_PAT | EXIT_SAVE_EFER | EXIT_LOAD_EFER);
    vmw(VM_EXIT_CONTROLS, exit_ctls);
    vmw(VM_ENTRY_CONTROLS, vmr(VM_ENTRY_CONTROLS) & ~4ull);  /* no "load debug controls" */
    vmw(GUEST_DR7, 0x400);

    vmw(GUEST_CR0, vmr(GUEST_CR0) | 1ull << 30);  /* ignored: L2 keeps L1's CD = 0 */
    vmw(HOST_CR0, vmr(HOST_CR0) | 1ull << 30);    /* ignored too: the exit keeps L2's CD = 0 */
    set_dr7(L1_DR7);
    u64 r = vmx_run(1, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 18, "L2 runs to its VMCALL");
    ok(g.rbx == 0x77, "the VM-entry MSR-load area is loaded into L2 (IA32_SYSENTER_CS)");
    ok(g.rsi == L1_DR7, "without \"load debug controls\" L2 runs with L1's DR7");
    ok(vmr(GUEST_IA32_PAT) == L1_PAT && vmr(GUEST_IA32_EFER) == (efer | 1) && vmr(GUEST_DR7) == 0x400,
       "without the save controls the exit leaves vmcs12's PAT, EFER and DR7 alone");
    ok(rdmsr(MSR_PAT) == L2_PAT, "without \"load IA32_PAT\" L1 has L2's PAT after the exit");
    ok((rdmsr(MSR_EFER) & 1) == 0, "without \"load IA32_EFER\" L1 has L2's EFER.SCE after the exit");
    u64 dr7;
    __asm__ volatile("mov %%dr7, %0" : "=r"(dr7));
    ok(dr7 == 0x400, "DR7 is 0x400 after the exit");
    ok(!(vmr(GUEST_CR0) & 1ull << 30) && !(read_cr0() & 1ull << 30),
       "CR0.CD of the guest field is not loaded at entry, nor that of the host field at exit");

    wrmsr(MSR_EFER, efer | 1);
    wrmsr(MSR_PAT, L1_PAT);
    vmw(VM_EXIT_CONTROLS, exit_ctls | EXIT_SAVE_DEBUG | EXIT_SAVE_PAT | EXIT_SAVE_EFER);
    vmw(GUEST_RIP, (u64)l2_code);
    set_dr7(L1_DR7);
    r = vmx_run(0, &g);
    ok(r == 0 && vmr(VM_EXIT_REASON) == 18 && vmr(GUEST_IA32_PAT) == L2_PAT && (vmr(GUEST_IA32_EFER) & 1) == 0 &&
           vmr(GUEST_DR7) == L1_DR7,
       "with the save controls the exit stores L2's PAT, EFER and DR7 in vmcs12");
    wrmsr(MSR_EFER, efer);
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
