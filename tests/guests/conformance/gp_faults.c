/* #GP(0) that changes nothing: MOV to CR4 setting a bit whose feature CPUID does not report, or a
 * reserved bit, and MOV to CR0 setting a bit of 63:32 (SDM Vol. 2B MOV CR; Vol. 3A §2.5); LTR of a
 * null selector (Vol. 2A LTR); LGDT and LIDT of a non-canonical base in 64-bit mode (as Intel
 * processors, Bochs and KVM's emulator, em_lgdt_lidt, do); MOV to DS of a selector past the GDT's
 * limit or into a null LDT, #GP with the selector as error code (Vol. 2B MOV).  CR4 bits whose features are reported
 * are left alone (setting them has effects).  (TAP output.) */
#include <nestvmx.h>

#include "../idt_gate.h"
#include "../tap.h"

static volatile u64 gp_count, gp_error;
extern char gp_handler[];

/* #GP: record the error code, skip the 3-byte instruction that faulted (MOV to CR, LTR AX,
 * LGDT/LIDT (%rax), MOV to DS with an operand-size prefix). */
__asm__(".text\n gp_handler: popq gp_error(%rip)\n addq $3, (%rsp)\n incq gp_count(%rip)\n iretq\n");

enum instruction { MOV_CR0, MOV_CR4, LTR, LGDT, LIDT, MOV_DS };

struct table_register { u16 limit; u64 base; } __attribute__((packed));

/* Whether the instruction with this source raised #GP with this error code. */
static int faults_with(enum instruction which, u64 value, u64 error_code) {
    u64 before = gp_count;
    if (which == MOV_CR0)
        __asm__ volatile("mov %0, %%cr0" : : "a"(value) : "memory");  /* 0f 22 c0: 3 bytes */
    else if (which == MOV_CR4)
        __asm__ volatile("mov %0, %%cr4" : : "a"(value) : "memory");  /* 0f 22 e0 */
    else if (which == LTR)
        __asm__ volatile("ltr %w0" : : "a"(value) : "memory");  /* 0f 00 d8 */
    else if (which == LGDT)
        __asm__ volatile("lgdt (%0)" : : "a"(value) : "memory");  /* 0f 01 10 */
    else if (which == LIDT)
        __asm__ volatile("lidt (%0)" : : "a"(value) : "memory");  /* 0f 01 18 */
    else
        __asm__ volatile(".byte 0x66, 0x8e, 0xd8" : : "a"(value) : "memory");  /* mov %ax, %ds: 3 bytes */
    return gp_count == before + 1 && gp_error == error_code;
}

static int faults(enum instruction which, u64 value) { return faults_with(which, value, 0); }

int main(void) {
    set_idt_gate(13, gp_handler);
    struct table_register idtr;
    __asm__ volatile("sidt %0" : "=m"(idtr));

    u32 max_leaf, ecx1, ebx7 = 0, ecx7 = 0, unused;
    cpuid(0, 0, &max_leaf, &unused, &unused, &unused);
    cpuid(1, 0, &unused, &unused, &ecx1, &unused);
    if (max_leaf >= 7) cpuid(7, 0, &unused, &ebx7, &ecx7, &unused);
    /* CR4 bit, and whether CPUID reports its feature (reserved bits: never). */
    struct { int bit; int supported; const char *name; } bits[] = {
        {11, ecx7 >> 2 & 1, "UMIP"},  {12, ecx7 >> 16 & 1, "LA57"},     {15, 0, "reserved bit 15"},
        {16, ebx7 & 1, "FSGSBASE"},   {17, ecx1 >> 17 & 1, "PCIDE"},    {18, ecx1 >> 26 & 1, "OSXSAVE"},
        {20, ebx7 >> 7 & 1, "SMEP"},  {21, ebx7 >> 20 & 1, "SMAP"},     {22, ecx7 >> 3 & 1, "PKE"},
        {28, 0, "reserved bit 28"},   {32, 0, "reserved bit 32"},       {63, 0, "reserved bit 63"},
    };
    u64 cr4 = read_cr4();
    int bad = 0;
    for (unsigned i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
        if (bits[i].supported) continue;
        if (!faults(MOV_CR4, cr4 | 1ull << bits[i].bit) || read_cr4() != cr4) {
            bad++;
            puts("# CR4 bit without #GP(0): "); puts(bits[i].name); putc('\n');
        }
    }
    ok(bad == 0, "MOV to CR4 of an unsupported or reserved bit: #GP(0), CR4 unchanged");
    u64 cr0 = read_cr0();
    ok(faults(MOV_CR0, cr0 | 1ull << 32) && read_cr0() == cr0, "MOV to CR0 with bit 32 set: #GP(0), CR0 unchanged");
    ok(faults(MOV_CR4, cr4) == 0 && read_cr4() == cr4, "MOV to CR4 of its own value: no fault");
    u16 tr;
    __asm__ volatile("str %0" : "=r"(tr));
    ok(faults(LTR, 0) && faults(LTR, 3), "LTR of a null selector (RPL 0 or 3): #GP(0)");
    u16 tr_after;
    __asm__ volatile("str %0" : "=r"(tr_after));
    ok(tr_after == tr, "TR unchanged");
    struct table_register gdtr, after, noncanonical = {0xfff, 0x0000800000000000ull};
    __asm__ volatile("sgdt %0" : "=m"(gdtr));
    ok(faults(LGDT, (u64)&noncanonical), "LGDT of a non-canonical base: #GP(0)");
    __asm__ volatile("sgdt %0" : "=m"(after));
    ok(after.base == gdtr.base && after.limit == gdtr.limit, "GDTR unchanged");
    ok(faults(LIDT, (u64)&noncanonical), "LIDT of a non-canonical base: #GP(0)");
    __asm__ volatile("sidt %0" : "=m"(after));
    ok(after.base == idtr.base && after.limit == idtr.limit, "IDTR unchanged");
    ok(!faults(LGDT, (u64)&gdtr), "LGDT of a canonical base: no fault");
    u16 ds;
    __asm__ volatile("mov %%ds, %0" : "=r"(ds));
    ok(faults_with(MOV_DS, (gdtr.limit + 1) | 3, gdtr.limit + 1), "MOV to DS past the GDT's limit: #GP(selector)");
    ok(faults_with(MOV_DS, 0xc70f, 0xc70c), "MOV to DS of an LDT selector, LDTR null: #GP(selector)");
    __asm__ volatile("mov %0, %%ds" : : "r"(ds));
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
