/* Exceptions after the program has its own IDT, GDT and TSS: each is delivered through the IDT
 * as on hardware (vector, error code, CR2, IST stack, trap vs. fault RIP), then IRETQ returns. */
#include <nestvmx.h>

struct trap_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rdi, rsi, rbp, rbx, rdx, rcx, rax;
    u64 vector, error_code, rip, cs, rflags, rsp, ss;
};

struct idt_entry { u16 off0, sel; u8 ist, type; u16 off1; u32 off2, zero; } __attribute__((packed));
struct tss { u32 r0; u64 rsp[3]; u64 r1; u64 ist[7]; u64 r2; u16 r3, iomap; } __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));
static u64 gdt[6] __attribute__((aligned(8)));
static struct tss tss __attribute__((aligned(16)));
static u8 ist_stack[4096] __attribute__((aligned(16)));
static volatile u64 last_vector, last_error, last_rip, last_rsp, count;
static volatile u64 skip;  /* bytes to skip after a fault */
static volatile u64 df_resume;  /* where a #DF handler returns to: the saved RIP of a #DF is undefined */

void handle_trap(struct trap_frame *f) {
    last_vector = f->vector; last_error = f->error_code; last_rip = f->rip; last_rsp = (u64)f; count++;
    f->rip = f->vector == 8 ? df_resume : f->rip + skip;
}

extern char trap_stub_0[], trap_stub_3[], trap_stub_6[], trap_stub_8[], trap_stub_11[], trap_stub_13[], trap_stub_14[],
    trap_stub_32[];

static void set_gate(int v, void *handler, int ist, int type) {
    u64 a = (u64)handler;
    idt[v] = (struct idt_entry){(u16)a, 0x08, (u8)ist, (u8)(0x80 | type), (u16)(a >> 16), (u32)(a >> 32), 0};
}

static int failures, tests;
static void check(int ok, const char *what) {
    tests++;
    if (!ok) failures++;
    puts(ok ? "ok " : "not ok "); put_dec(tests); puts(" - "); puts(what); putc('\n');
}

int main(void) {
    /* Own GDT with a TSS (IST1), loaded with LGDT, a far return to reload CS, and LTR. */
    gdt[1] = 0x00af9b000000ffffull; gdt[2] = 0x00cf93000000ffffull;
    u64 t = (u64)&tss;
    gdt[4] = (sizeof(tss) - 1) | (t & 0xffffff) << 16 | 0x89ull << 40 | ((t >> 24) & 0xff) << 56;
    gdt[5] = t >> 32;
    tss.ist[0] = (u64)(ist_stack + sizeof(ist_stack));
    struct { u16 limit; u64 base; } __attribute__((packed)) gdtr = {sizeof(gdt) - 1, (u64)gdt}, idtr = {sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lgdt %0" : : "m"(gdtr));
    __asm__ volatile("pushq $0x08; leaq 1f(%%rip), %%rax; pushq %%rax; lretq; 1:" : : : "rax", "memory");
    __asm__ volatile("movw $0x10, %%ax; movw %%ax, %%ds; movw %%ax, %%ss" : : : "rax");
    __asm__ volatile("ltr %w0" : : "r"(0x20));
    set_gate(0, trap_stub_0, 0, 0xe); set_gate(3, trap_stub_3, 0, 0xf); set_gate(6, trap_stub_6, 0, 0xe);
    set_gate(8, trap_stub_8, 1, 0xe); set_gate(13, trap_stub_13, 0, 0xe); set_gate(14, trap_stub_14, 1, 0xe);
    set_gate(11, trap_stub_11, 0, 0xe); set_gate(32, trap_stub_32, 0, 0xe);
    __asm__ volatile("lidt %0" : : "m"(idtr));

    u64 rip;
    skip = 2;
    __asm__ volatile("leaq 0(%%rip), %0; ud2" : "=r"(rip));
    check(count == 1 && last_vector == 6 && last_rip == rip, "#UD from UD2 is a fault at the instruction");

    skip = 0;
    __asm__ volatile("leaq 0(%%rip), %0; int3" : "=r"(rip));
    check(count == 2 && last_vector == 3 && last_rip == rip + 1, "#BP from INT3 is a trap after it");

    skip = 10;
    __asm__ volatile("leaq 0(%%rip), %0; movabsq 0x8000000000000000, %%rax" : "=r"(rip) : : "rax");
    check(count == 3 && last_vector == 13 && last_error == 0 && last_rip == rip, "#GP(0) for a non-canonical address");

    skip = 3;
    u64 unmapped = 0x40000000000ull;  /* no PML4 entry */
    __asm__ volatile("movq %%rax, (%%rdx)" : : "d"(unmapped), "a"(1) : "memory");  /* 3 bytes */
    u64 cr2; __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    check(count == 4 && last_vector == 14 && cr2 == unmapped && last_error == 2, "#PF: CR2 and error code (write, not present)");
    u64 ist_top = (u64)(ist_stack + sizeof(ist_stack));
    check(last_rsp < ist_top && last_rsp > ist_top - 512, "#PF handler ran on the IST1 stack");

    skip = 0;
    __asm__ volatile("int $32");
    check(count == 5 && last_vector == 32, "INT 32 through an interrupt gate");

    volatile u32 zero = 0, q = 7;
    skip = 2;
    __asm__ volatile("xor %%edx, %%edx; divl %1" : "+a"(q) : "c"(zero) : "rdx");  /* DIV ECX: 2 bytes */
    check(count == 6 && last_vector == 0, "#DE from DIV by zero");

    skip = 3;
    u64 flags;
    __asm__ volatile("vmxoff; pushfq; popq %0" : "=r"(flags));
    check(count == 7 && last_vector == 6, "VMXOFF outside VMX operation raises #UD");

    /* Faults while delivering an exception (SDM §6.15, Table 6-5): a benign one then a contributory
     * one delivers the second; two contributory ones make a double fault. */
    idt[6].type &= ~0x80;  /* #UD's gate not present */
    skip = 2;
    __asm__ volatile("leaq 0(%%rip), %0; ud2" : "=r"(rip));
    check(count == 8 && last_vector == 11 && last_error == 6 * 8 + 2 + 1 && last_rip == rip,
          "#UD whose gate is not present: #NP(0x33, EXT) at the UD2");
    idt[6].type |= 0x80;
    idt[13].type &= ~0x80;  /* #GP's gate not present */
    skip = 10;  /* past the MOVABS */
    __asm__ volatile("leaq 1f(%%rip), %%rax; movq %%rax, df_resume(%%rip); movabsq 0x8000000000000000, %%rax; 1:"
                     : : : "rax", "memory");
    check(count == 9 && last_vector == 8 && last_error == 0, "#GP whose gate is not present: #NP, then a double fault");
    idt[13].type |= 0x80;

    puts(failures ? "FAIL\n" : "PASS\n");
    return failures;
}
