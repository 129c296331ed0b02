/* L2's MOV to CR0/CR4 that L0 emulates must fault as on hardware: clearing CR4.PAE in IA-32e mode,
 * clearing CR0.PG in 64-bit mode, and clearing a VMX fixed bit L1 does not own (CR0.NE, CR4.VMXE)
 * are #GP(0), which L1 intercepts through its exception bitmap; a fixed bit L1 owns exits to L1
 * as a CR access.  (TAP output.) */
#include "../l1.h"

#include "../tap.h"

extern char l2_pae[], l2_pae_mov[], l2_pg[], l2_pg_mov[], l2_ne[], l2_ne_mov[], l2_vmxe[], l2_vmxe_mov[];

__asm__(".text\n"
        "l2_pae: movq %cr4, %rax\n btrq $5, %rax\n l2_pae_mov: movq %rax, %cr4\n hlt\n"
        "l2_pg: movq %cr0, %rax\n btrq $31, %rax\n l2_pg_mov: movq %rax, %cr0\n hlt\n"
        "l2_ne: movq %cr0, %rax\n btrq $5, %rax\n l2_ne_mov: movq %rax, %cr0\n hlt\n"
        "l2_vmxe: movq %cr4, %rax\n btrq $13, %rax\n l2_vmxe_mov: movq %rax, %cr4\n hlt\n");

/* Runs L2 from `start`; true if it exits with #GP(0) at `at`. */
static int gp_at(void *start, void *at, int launch) {
    vmw(GUEST_RIP, (u64)start);
    u64 r = vmx_run(launch, &g), reason = 1, rip = 0, info = 0, code = 1;
    vmread(VM_EXIT_REASON, &reason); vmread(GUEST_RIP, &rip);
    vmread(VM_EXIT_INTR_INFO, &info); vmread(VM_EXIT_INTR_ERROR_CODE, &code);
    return r == 0 && reason == 0 && rip == (u64)at && info == 0x80000b0d && code == 0;
}

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(1u << 7, eptp, 0, l2_pae, l2_stack + sizeof(l2_stack));
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
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
