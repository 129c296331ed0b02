/* Exceptions and software interrupts of L2 (SDM §26.2, §28.2.2-§28.2.4, §6.15): which ones the
 * exception bitmap takes (INT1 and INT3 yes, INT n never), the interruption type and
 * instruction length they report, exceptions during event delivery with the IDT-vectoring
 * information of the event they interrupted, a double fault that exits directly (no
 * IDT-vectoring information), a triple fault, and events L1 injects whose delivery faults or
 * needs memory L2 has not touched yet.  (TAP output.) */
#include "../l1.h"

#include "../idt_gate.h"
#include "../tap.h"

#define VALID (1u << 31)
#define ERROR_CODE (1u << 11)
#define IDT ((u64 *)0x800000)  /* 8 MiB: memory L2 has not touched before the last test */

extern char l2_int1[], l2_int3[], l2_int_3[], l2_int_13[], l2_ud2[], l2_nop[], l2_handler[], l2_step[], l2_stepped[],
    l2_fpu[];

__asm__(".text\n"
        "l2_int1: .byte 0xf1\n vmcall\n"
        "l2_int3: int3\n vmcall\n"
        "l2_int_3: .byte 0xcd, 0x03\n vmcall\n"     /* INT 3 in its two-byte form: a software interrupt */
        "l2_int_13: .byte 0xcd, 0x0d\n vmcall\n"
        "l2_ud2: ud2\n vmcall\n"
        "l2_nop: nop\n vmcall\n"
        "l2_handler: vmcall\n 1: hlt\n jmp 1b\n"
        "l2_step: pushfq\n orq $0x100, (%rsp)\n popfq\n l2_stepped: nop\n nop\n vmcall\n"  /* TF: a trap after one */
        "l2_fpu: fninit\n vmcall\n");

struct exit { u64 reason, info, error, vectoring, vectoring_error, len, rip; };

static struct exit run(char *rip, u32 bitmap, u32 idt_limit, u32 inject, u32 inject_len) {
    struct exit e;
    vmw(GUEST_RIP, (u64)rip);
    vmw(GUEST_RSP, (u64)(l2_stack + sizeof(l2_stack)));
    vmw(GUEST_RFLAGS, 2);
    vmw(EXCEPTION_BITMAP, bitmap);
    vmw(GUEST_IDTR_BASE, (u64)IDT);
    vmw(GUEST_IDTR_LIMIT, idt_limit);
    vmw(VM_ENTRY_INTR_INFO_FIELD, inject);
    vmw(VM_ENTRY_INSTRUCTION_LEN, inject_len);
    u64 r = l2_run();
    e.reason = r ? ~0ull : vmr(VM_EXIT_REASON);
    e.info = vmr(VM_EXIT_INTR_INFO); e.error = vmr(VM_EXIT_INTR_ERROR_CODE);
    e.vectoring = vmr(IDT_VECTORING_INFO_FIELD); e.vectoring_error = vmr(IDT_VECTORING_ERROR_CODE);
    e.len = vmr(VM_EXIT_INSTRUCTION_LEN); e.rip = vmr(GUEST_RIP);
    return e;
}


int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(0, eptp, 0, l2_nop, l2_stack + sizeof(l2_stack));
    struct exit e;

    e = run(l2_int1, 1u << 1, 0, 0, 0);
    ok(e.reason == 0 && e.info == (VALID | 5 << 8 | 1) && e.len == 1 && e.rip == (u64)l2_int1 && !(e.vectoring & VALID),
       "INT1: #DB exit, privileged software exception, length 1, RIP at INT1");
    e = run(l2_int3, 1u << 3, 0, 0, 0);
    ok(e.reason == 0 && e.info == (VALID | 6 << 8 | 3) && e.len == 1 && e.rip == (u64)l2_int3,
       "INT3: #BP exit, software exception, length 1, RIP at INT3");
    e = run(l2_int_3, 1u << 3 | 1u << 13, 0, 0, 0);
    ok(e.reason == 0 && e.info == (VALID | ERROR_CODE | 3 << 8 | 13) && e.error == 3 * 8 + 2 &&
           e.vectoring == (VALID | 4 << 8 | 3) && e.len == 2 && e.rip == (u64)l2_int_3,
       "INT 3 (CD 03) is not taken by the bitmap: its delivery's #GP(0x1a) exits, vectoring a software interrupt");
    e = run(l2_int_13, 1u << 13, 0, 0, 0);
    ok(e.reason == 0 && e.info == (VALID | ERROR_CODE | 3 << 8 | 13) && e.error == 13 * 8 + 2 &&
           e.vectoring == (VALID | 4 << 8 | 13) && e.vectoring_error == 0 && e.len == 2 && e.rip == (u64)l2_int_13,
       "INT 13 (CD 0D): #GP(0x6a) during its delivery, not a #GP exception");
    e = run(l2_ud2, 1u << 13, 0, 0, 0);
    ok(e.reason == 0 && e.info == (VALID | ERROR_CODE | 3 << 8 | 13) && e.error == 6 * 8 + 2 + 1 &&
           e.vectoring == (VALID | 3 << 8 | 6) && e.rip == (u64)l2_ud2,
       "UD2 without IDT: #GP(0x33, EXT) during delivery of #UD exits with #UD as IDT-vectoring information");
    e = run(l2_ud2, 1u << 8, 0, 0, 0);
    ok(e.reason == 0 && e.info == (VALID | ERROR_CODE | 3 << 8 | 8) && e.error == 0 && !(e.vectoring & VALID) &&
           e.rip == (u64)l2_ud2,
       "UD2 without IDT, only #DF intercepted: #UD, #GP, #GP then #DF, which exits with no IDT-vectoring information");
    e = run(l2_ud2, 0, 0, 0, 0);
    ok(e.reason == 2 && !(e.vectoring & VALID), "UD2 without IDT, nothing intercepted: triple fault");
    e = run(l2_nop, 1u << 13, 0, VALID | 3 << 8 | 6, 0);
    ok(e.reason == 0 && e.info == (VALID | ERROR_CODE | 3 << 8 | 13) && e.error == 6 * 8 + 2 + 1 &&
           e.vectoring == (VALID | 3 << 8 | 6) && e.rip == (u64)l2_nop,
       "injected #UD without IDT: #GP exit vectoring the injected event, RIP unchanged");
    e = run(l2_nop, 1u << 13, 0, VALID | 4 << 8 | 0x21, 2);
    ok(e.reason == 0 && e.info == (VALID | ERROR_CODE | 3 << 8 | 13) && e.error == 0x21 * 8 + 2 &&
           e.vectoring == (VALID | 4 << 8 | 0x21) && e.len == 2 && e.rip == (u64)l2_nop,
       "injected INT 0x21 without IDT: #GP(0x10a), the VM-entry instruction length reported");
    e = run(l2_step, 1u << 1, 0, 0, 0);
    ok(e.reason == 0 && e.info == (VALID | 3 << 8 | 1) && vmr(EXIT_QUALIFICATION) == 1 << 14 && e.rip == (u64)l2_stepped + 1,
       "single step: #DB exit after the instruction, a hardware exception, qualification BS");
    vmw(GUEST_CR0, vmr(GUEST_CR0) | 1 << 3);
    e = run(l2_fpu, 1u << 7, 0, 0, 0);
    ok(e.reason == 0 && e.info == (VALID | 3 << 8 | 7) && e.rip == (u64)l2_fpu, "FNINIT with CR0.TS: #NM exit");
    vmw(GUEST_CR0, vmr(GUEST_CR0) & ~(1ull << 3));
    idt_gate(IDT, 6, vmr(GUEST_CS_SELECTOR), l2_handler);
    e = run(l2_nop, 0, 0xfff, VALID | 3 << 8 | 6, 0);
    ok(e.reason == 18 && e.rip == (u64)l2_handler, "injected #UD through an IDT in memory L2 never touched: its handler runs");
    idt_gate(IDT, 1, vmr(GUEST_CS_SELECTOR), l2_handler);
    e = run(l2_int1, 0, 0xfff, 0, 0);
    ok(e.reason == 18 && e.rip == (u64)l2_handler && *(u64 *)(l2_stack + sizeof(l2_stack) - 40) == (u64)l2_int1 + 1,
       "INT1 not intercepted: delivered through the IDT, the return address past it");
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
