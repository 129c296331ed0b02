/* L2's GDT lies where L1's EPT maps nothing.  A VM entry does not read the GDT, but nestvmx's
 * execution engine (Unicorn) loads segment registers from it: L0 must not crash; the model
 * reports the access as the EPT violation it is (docs/security.md, known divergences). */
#include "l1.h"

#define L2_GDT (16ull << 20)  /* beyond what EPT12 maps */

static void l2_main(void) {
    vmcall(0);
    for (;;) __asm__ volatile("hlt");
}

int main(void) {
    if (l1_start()) return 1;
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 8);
    vmx_setup_vmcs(0, eptp, 0, l2_main, l2_stack + sizeof(l2_stack));
    for (int i = 0; i < 5; i++) ((u64 *)L2_GDT)[i] = vmx_gdt[i];
    vmw(GUEST_GDTR_BASE, L2_GDT);
    u64 r = vmx_run(1, &g), reason = 0, gpa = 0;
    vmread(VM_EXIT_REASON, &reason);
    vmread(GUEST_PHYSICAL_ADDRESS, &gpa);
    puts("L2 exit reason "); put_dec(reason); puts(" guest-physical "); put_hex(gpa); putc('\n');
    return r ? 3 : 0;
}
