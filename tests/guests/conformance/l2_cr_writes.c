/* L2's MOV to CR0/CR4 that L0 emulates must fault as on hardware: clearing CR4.PAE in IA-32e mode,
 * clearing CR0.PG in 64-bit mode, and clearing a VMX fixed bit L1 does not own (CR0.NE, CR4.VMXE)
 * are #GP(0), which L1 intercepts through its exception bitmap; a fixed bit L1 owns exits to L1
 * as a CR access.  (TAP output.) */
#include <vmx.h>

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs[4096] __attribute__((aligned(4096)));
static u64 ept_pml4[512] __attribute__((aligned(4096)));
static u64 ept_pdpt[512] __attribute__((aligned(4096)));
static u64 ept_pd[512] __attribute__((aligned(4096)));
static u8 l2_stack[8192] __attribute__((aligned(16)));
static struct guest_regs g;
static int failures, tests;
extern char l2_pae[], l2_pae_mov[], l2_pg[], l2_pg_mov[], l2_ne[], l2_ne_mov[], l2_vmxe[], l2_vmxe_mov[];

__asm__(".text\n"
        "l2_pae: movq %cr4, %rax\n btrq $5, %rax\n l2_pae_mov: movq %rax, %cr4\n hlt\n"
        "l2_pg: movq %cr0, %rax\n btrq $31, %rax\n l2_pg_mov: movq %rax, %cr0\n hlt\n"
        "l2_ne: movq %cr0, %rax\n btrq $5, %rax\n l2_ne_mov: movq %rax, %cr0\n hlt\n"
        "l2_vmxe: movq %cr4, %rax\n btrq $13, %rax\n l2_vmxe_mov: movq %rax, %cr4\n hlt\n");

static void ok(int cond, const char *what) {
    tests++;
    if (!cond) failures++;
    puts(cond ? "ok " : "not ok "); put_dec(tests); puts(" - "); puts(what); putc('\n');
}

/* Runs L2 from `start`; true if it exits with #GP(0) at `at`. */
static int gp_at(void *start, void *at, int launch) {
    vmw(GUEST_RIP, (u64)start);
    u64 r = vmx_run(launch, &g), reason = 1, rip = 0, info = 0, code = 1;
    vmread(VM_EXIT_REASON, &reason); vmread(GUEST_RIP, &rip);
    vmread(0x4404, &info); vmread(0x4406, &code);  /* VM_EXIT_INTR_INFO, VM_EXIT_INTR_ERROR_CODE */
    return r == 0 && reason == 0 && rip == (u64)at && info == 0x80000b0d && code == 0;
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
    vmx_setup_vmcs(1u << 7, (u64)ept_pml4 | 3 << 3 | 6, 0, l2_pae, l2_stack + sizeof(l2_stack));
    vmw(EXCEPTION_BITMAP, 1u << 13);
    ok(gp_at(l2_pae, l2_pae_mov, 1), "L2 clears CR4.PAE in IA-32e mode: #GP(0) to L1");
    ok(gp_at(l2_pg, l2_pg_mov, 0), "L2 clears CR0.PG in 64-bit mode: #GP(0) to L1");
    ok(gp_at(l2_ne, l2_ne_mov, 0), "L2 clears CR0.NE, a VMX fixed bit L1 does not own: #GP(0)");
    ok(gp_at(l2_vmxe, l2_vmxe_mov, 0), "L2 clears CR4.VMXE, a VMX fixed bit L1 does not own: #GP(0)");
    vmw(CR0_GUEST_HOST_MASK, 1u << 5);  /* L1 owns NE: L2's write exits to L1 */
    vmw(GUEST_RIP, (u64)l2_ne);
    u64 r = vmx_run(0, &g), reason = 0, rip = 0, qual = 1;
    vmread(VM_EXIT_REASON, &reason); vmread(GUEST_RIP, &rip); vmread(EXIT_QUALIFICATION, &qual);
    ok(r == 0 && reason == 28 && rip == (u64)l2_ne_mov && (qual & 0xf) == 0 && (qual >> 4 & 3) == 0,
       "L2 clears CR0.NE that L1 owns: CR-access exit to L1");
    pa = (u64)vmcs;
    ok(vmclear(&pa) == 0 && vmxoff() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
