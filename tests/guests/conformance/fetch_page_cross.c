/* An instruction that crosses into a not-present page faults on its own fetch, after the
 * instructions before it ran (SDM Vol. 3A §6.5, §6.15 #PF): L2 runs five INC RCX up to the last
 * byte of its only 2 MiB page, where a 3-byte VMCALL starts.  The #PF exits to L1 (exception
 * bitmap) with RIP at the VMCALL, CR2 (the exit qualification) at the next page and RCX = 5.
 * The error code is not compared: its I/D flag depends on EFER.NXE, which the platforms set
 * differently.  (TAP output.) */
#include "../l1.h"

#include "../tap.h"

#define END (2ull << 20)
#define INC_RCX 5

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 start = END - 3 * INC_RCX - 1;
    l2_sandbox(0, start);
    u8 *code = (u8 *)(SANDBOX + start);
    for (int i = 0; i < INC_RCX; i++) code[3 * i] = 0x48, code[3 * i + 1] = 0xff, code[3 * i + 2] = 0xc1;
    code[3 * INC_RCX] = 0x0f;  /* VMCALL (0f 01 c1), its last two bytes on the next page */
    vmw(EXCEPTION_BITMAP, 1u << 14);
    g.rcx = 0;
    u64 r = l2_run();
    ok(r == 0 && vmr(VM_EXIT_REASON) == 0 && (vmr(VM_EXIT_INTR_INFO) & 0x80000fff) == 0x80000b0e, "#PF exits");
    ok(vmr(GUEST_RIP) == END - 1, "RIP at the instruction that crosses the page");
    ok(vmr(EXIT_QUALIFICATION) == END, "CR2 at the start of the next page");
    ok(g.rcx == INC_RCX, "the instructions before it ran");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
