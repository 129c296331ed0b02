/* Runs random L2 code: the test places (u64 length, bytes) at 8 MiB.  L2 lives in a 2 MiB
 * sandbox (L1's 16-18 MiB, L2 guest-physical 0-2 MiB by L1's EPT): its own page tables, GDT and
 * stack, and the code at 0x10000 followed by VMCALL.  Every exception exits to L1, RDTSC too.
 * L1 handles up to 24 exits: an instruction that exits is skipped and L2 resumes; any other exit,
 * or VMCALL, ends the run.  It prints each exit reason and, at the end, a hash of everything the
 * exits reported, so that runs can be compared. */
#include "l1.h"

#define CODE 0x10000ull
#define BLOB 0x800000ull

static int skipped(u64 reason) {
    switch (reason) {
    case 10: case 11: case 12: case 13: case 14: case 15: case 16:  /* CPUID GETSEC HLT INVD INVLPG RDPMC RDTSC */
    case 19: case 20: case 21: case 22: case 23: case 24: case 25: case 26: case 27:  /* VMX instructions */
    case 28: case 30: case 31: case 32: case 36: case 39: case 40:  /* CR, I/O, MSRs, MWAIT, MONITOR, PAUSE */
    case 46: case 47: case 50: case 53: case 54: case 55:  /* descriptor tables, INVEPT, INVVPID, WBINVD, XSETBV */
        return 1;
    default:
        return 0;
    }
}

int main(void) {
    must(l1_start(), "VMXON, VMCLEAR or VMPTRLD failed");
    l2_sandbox(1u << 7 | 1u << 12 | 1u << 24, CODE);  /* HLT, RDTSC exiting; unconditional I/O exiting */
    u64 n = *(u64 *)BLOB > 4096 ? 4096 : *(u64 *)BLOB;
    u8 *code = (u8 *)(SANDBOX + CODE);
    for (u64 i = 0; i < n; i++) code[i] = ((u8 *)(BLOB + 8))[i];
    code[n] = 0x0f; code[n + 1] = 0x01; code[n + 2] = 0xc1;  /* vmcall */
    vmw(EXCEPTION_BITMAP, 0xffffffff);
    u64 hash = 0;
    for (int i = 0; i < 24; i++) {
        u64 r = vmx_run(i == 0, &g);
        if (r) { puts("entry failed "); put_hex(r); putc('\n'); break; }
        u64 reason = vmr(VM_EXIT_REASON), rip = vmr(GUEST_RIP), len = vmr(VM_EXIT_INSTRUCTION_LEN);
        u64 exit_info[] = {reason, rip, len, vmr(EXIT_QUALIFICATION), vmr(VM_EXIT_INTR_INFO), vmr(VM_EXIT_INTR_ERROR_CODE), g.rax, g.rcx};
        for (int k = 0; k < 8; k++) hash = (hash ^ exit_info[k]) * 0x100000001b3ull;  /* FNV-1a style */
        put_dec(reason & 0xffff); putc(reason >> 31 ? '!' : ' ');
        if (reason == 18 || !skipped(reason & 0xffff)) break;
        vmw(GUEST_RIP, rip + len);
    }
    puts("\nhash "); put_hex(hash); puts("\nEND\n");
    return 0;
}
