/* INS/OUTS exits of L2 (SDM §28.2.1, §28.2.5, Table 28-8): the qualification (size, direction,
 * string, REP, port), the VM-exit instruction information (address size, segment register) and
 * the guest-linear address of the memory operand (segment base + SI/ESI/RSI or DI/EDI/RDI at the
 * instruction's address size).  The segment field is undefined for INS (always ES).  (TAP output.) */
#include "../l1.h"

#include "../tap.h"

extern char l2_outsb[], l2_outs_fs32[], l2_insw[], l2_rep_insd32[];

/* RSI = 0x1_0000_0020, RDI = 0x1_0000_0040, DX = 0x80. */
__asm__(".text\n"
        "l2_outsb: outsb\n"
        "l2_outs_fs32: .byte 0x64, 0x67, 0x6e\n"  /* outsb fs:[esi] */
        "l2_insw: insw\n"
        "l2_rep_insd32: .byte 0xf3, 0x67, 0x6d\n" /* rep insd [edi] */
        "vmcall\n 1: hlt\n jmp 1b\n");

static void expect(char *rip, u64 len, u64 qualification, u64 info, u64 info_mask, u64 linear, const char *what) {
    vmw(GUEST_RIP, (u64)rip);
    g.rsi = 0x100000020ull; g.rdi = 0x100000040ull; g.rdx = 0x80; g.rcx = 1;
    u64 r = l2_run();
    ok(r == 0 && vmr(VM_EXIT_REASON) == 30 && vmr(VM_EXIT_INSTRUCTION_LEN) == len &&
           vmr(EXIT_QUALIFICATION) == qualification && (vmr(VMX_INSTRUCTION_INFO) & info_mask) == info &&
           vmr(GUEST_LINEAR_ADDRESS) == linear,
       what);
}

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(1u << 24, eptp, 0, l2_outsb, l2_stack + sizeof(l2_stack));  /* unconditional I/O exiting */
    vmw(GUEST_FS_BASE, 0x5000);
    expect(l2_outsb, 1, 0x80u << 16 | 1 << 4, 2 << 7 | 3 << 15, 0x38380, 0x100000020ull, "OUTSB: 64-bit address, DS, RSI");
    expect(l2_outs_fs32, 3, 0x80u << 16 | 1 << 4, 1 << 7 | 4 << 15, 0x38380, 0x5020,
           "FS: 67 OUTSB: 32-bit address, FS, FS base + ESI");
    expect(l2_insw, 2, 0x80u << 16 | 1 << 4 | 1 << 3 | 1, 2 << 7, 0x380, 0x100000040ull, "INSW: 64-bit address, RDI");
    expect(l2_rep_insd32, 3, 0x80u << 16 | 1 << 5 | 1 << 4 | 1 << 3 | 3, 1 << 7, 0x380, 0x40, "REP 67 INSD: 32-bit address, EDI");
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
