/* L2's GDT lies where L1's EPT maps nothing.  A VM entry does not read the GDT, but nestvmx's
 * execution engine (Unicorn) loads segment registers from it: L0 must not crash; the model
 * reports the access as the EPT violation it is (docs/security.md, known divergences). */
#include <vmx.h>

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs[4096] __attribute__((aligned(4096)));
static u64 ept_pml4[512] __attribute__((aligned(4096)));
static u64 ept_pdpt[512] __attribute__((aligned(4096)));
static u64 ept_pd[512] __attribute__((aligned(4096)));
static u8 l2_stack[8192] __attribute__((aligned(16)));
static struct guest_regs g;
#define L2_GDT (16ull << 20)  /* beyond what EPT12 maps */

static void l2_main(void) {
    vmcall(0);
    for (;;) __asm__ volatile("hlt");
}

int main(void) {
    u32 rev = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region = rev; *(u32 *)vmcs = rev;
    vmx_setup_descriptors();
    vmx_enable_cr();
    u64 pa = (u64)vmxon_region;
    if (vmxon(&pa)) return 1;
    pa = (u64)vmcs;
    if (vmclear(&pa) || vmptrld(&pa)) return 2;
    for (u64 i = 0; i < 8; i++) ept_pd[i] = (i << 21) | 1 << 7 | 6 << 3 | 7;  /* L2: 0-16 MiB only */
    ept_pml4[0] = (u64)ept_pdpt | 7; ept_pdpt[0] = (u64)ept_pd | 7;
    vmx_setup_vmcs(0, (u64)ept_pml4 | 3 << 3 | 6, 0, l2_main, l2_stack + sizeof(l2_stack));
    for (int i = 0; i < 5; i++) ((u64 *)L2_GDT)[i] = vmx_gdt[i];
    vmw(GUEST_GDTR_BASE, L2_GDT);
    u64 r = vmx_run(1, &g), reason = 0, gpa = 0;
    vmread(VM_EXIT_REASON, &reason);
    vmread(GUEST_PHYSICAL_ADDRESS, &gpa);
    puts("L2 exit reason "); put_dec(reason); puts(" guest-physical "); put_hex(gpa); putc('\n');
    return r ? 3 : 0;
}
