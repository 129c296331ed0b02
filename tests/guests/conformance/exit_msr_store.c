/* The VM-exit MSR-store area: at L2's exit the processor stores L2's MSR values there (SDM §28.4).
 * (TAP output.) */
#include "../l1.h"

#include "../tap.h"

static u64 store_area[2][2] __attribute__((aligned(16)));
extern char l2_vmcall[];

__asm__(".text\n l2_vmcall: vmcall\n 1: hlt\n jmp 1b\n");

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(0, eptp, 0, l2_vmcall, l2_stack + sizeof(l2_stack));
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
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
