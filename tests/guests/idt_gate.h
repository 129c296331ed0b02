/* One IDT for a test program: set_idt_gate() installs a 64-bit interrupt gate and loads IDTR. */
#ifndef IDT_GATE_H
#define IDT_GATE_H
#include <nestvmx.h>

static u64 idt[512] __attribute__((aligned(16)));

static void set_idt_gate(int vector, void *handler) {
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    u64 h = (u64)handler;
    idt[2 * vector] = (h & 0xffff) | (u64)cs << 16 | 0x8eull << 40 | (h >> 16 & 0xffff) << 48;
    idt[2 * vector + 1] = h >> 32;
    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = {sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}
#endif
