/* Interrupt gates for test programs: idt_gate() writes a 64-bit interrupt gate into a table,
 * set_idt_gate() into this program's own IDT, which it loads. */
#ifndef IDT_GATE_H
#define IDT_GATE_H
#include <nestvmx.h>

static u64 idt[512] __attribute__((aligned(16)));

static __attribute__((unused)) void idt_gate(u64 *table, int vector, u16 selector, void *handler) {
    u64 h = (u64)handler;
    table[2 * vector] = (h & 0xffff) | (u64)selector << 16 | 0x8eull << 40 | (h >> 16 & 0xffff) << 48;
    table[2 * vector + 1] = h >> 32;
}

static __attribute__((unused)) void set_idt_gate(int vector, void *handler) {
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt_gate(idt, vector, cs, handler);
    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = {sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}
#endif
