/* The VM-exit MSR-store area: at L2's exit the processor stores L2's MSR values there (SDM §28.4).
 * (TAP output.) */
#include <vmx.h>

static u8 vmxon_region[4096] __attribute__((aligned(4096)));
static u8 vmcs[4096] __attribute__((aligned(4096)));
static u64 ept_pml4[512] __attribute__((aligned(4096)));
static u64 ept_pdpt[512] __attribute__((aligned(4096)));
static u64 ept_pd[512] __attribute__((aligned(4096)));
static u8 l2_stack[8192] __attribute__((aligned(16)));
static u64 store_area[2][2] __attribute__((aligned(16)));
static struct guest_regs g;
static int failures, tests;
extern char l2_vmcall[];

__asm__(".text\n l2_vmcall: vmcall\n 1: hlt\n jmp 1b\n");

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
    vmx_setup_vmcs(0, (u64)ept_pml4 | 3 << 3 | 6, 0, l2_vmcall, l2_stack + sizeof(l2_stack));
    vmw(GUEST_SYSENTER_CS, 0x1234);
    vmw(0x6824, 0xabcd000);  /* GUEST_SYSENTER_ESP */
    store_area[0][0] = 0x174; store_area[0][1] = 0x5a5a;  /* IA32_SYSENTER_CS */
    store_area[1][0] = 0x175; store_area[1][1] = 0x5a5a;  /* IA32_SYSENTER_ESP */
    vmw(0x2006, (u64)store_area);  /* VM_EXIT_MSR_STORE_ADDR */
    vmw(0x400e, 2);                /* VM_EXIT_MSR_STORE_COUNT */
    u64 r = vmx_run(1, &g), reason = 0;
    vmread(VM_EXIT_REASON, &reason);
    ok(r == 0 && reason == 18, "L2 exits with VMCALL");
    ok(store_area[0][1] == 0x1234, "IA32_SYSENTER_CS of L2 stored at the exit");
    ok(store_area[1][1] == 0xabcd000, "IA32_SYSENTER_ESP of L2 stored at the exit");
    pa = (u64)vmcs;
    ok(vmclear(&pa) == 0 && vmxoff() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
