/* Freestanding support for nestvmx guests: console, exit, CPUID/MSR and the VMX instructions.
 * Only the architecture and the platform ports are used, so programs also run on hardware. */
#ifndef NESTVMX_H
#define NESTVMX_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define CONSOLE_PORT 0xe9
#define EXIT_PORT 0xf4

static inline void outb(u16 port, u8 value) { __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline void putc(char c) { outb(CONSOLE_PORT, (u8)c); }
static inline void puts(const char *s) { while (*s) putc(*s++); }
static inline void put_hex(u64 v) {
    puts("0x");
    for (int i = 60; i >= 0; i -= 4) putc("0123456789abcdef"[(v >> i) & 0xf]);
}
static inline void put_dec(u64 v) {
    char buf[21]; int n = 0;
    do { buf[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) putc(buf[--n]);
}
static inline __attribute__((noreturn)) void exit(int status) {
    outb(EXIT_PORT, (u8)status);
    for (;;) __asm__ volatile("hlt");
}

static inline void cpuid(u32 leaf, u32 subleaf, u32 *a, u32 *b, u32 *c, u32 *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(subleaf));
}
static inline u64 rdmsr(u32 index) {
    u32 lo, hi; __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(index)); return (u64)hi << 32 | lo;
}
static inline void wrmsr(u32 index, u64 v) {
    __asm__ volatile("wrmsr" : : "c"(index), "a"((u32)v), "d"((u32)(v >> 32)));
}
static inline u64 read_cr0(void) { u64 v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline u64 read_cr4(void) { u64 v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline void write_cr4(u64 v) { __asm__ volatile("mov %0, %%cr4" : : "r"(v)); }

/* VMX instructions return RFLAGS' arithmetic flags: 0 = VMsucceed, CF = VMfailInvalid,
 * ZF = VMfailValid (then VM_INSTRUCTION_ERROR, encoding 0x4400, holds the error number). */
#define VMX_CF 0x1
#define VMX_ZF 0x40
#define VMX_FLAGS 0x8d5
static inline u64 vmx_flags(void) { u64 f; __asm__ volatile("pushfq; popq %0" : "=r"(f)); return f & VMX_FLAGS; }
#define VMX_OP1(insn, ptr) ({ u64 _f; __asm__ volatile(insn " %1; pushfq; popq %0" : "=r"(_f) : "m"(ptr) : "cc", "memory"); _f & VMX_FLAGS; })
static inline u64 vmxon(u64 *pa) { return VMX_OP1("vmxon", *pa); }
static inline u64 vmclear(u64 *pa) { return VMX_OP1("vmclear", *pa); }
static inline u64 vmptrld(u64 *pa) { return VMX_OP1("vmptrld", *pa); }
static inline u64 vmptrst(u64 *pa) {
    u64 f; __asm__ volatile("vmptrst %1; pushfq; popq %0" : "=r"(f), "=m"(*pa) : : "cc"); return f & VMX_FLAGS;
}
static inline u64 vmxoff(void) { u64 f; __asm__ volatile("vmxoff; pushfq; popq %0" : "=r"(f) : : "cc"); return f & VMX_FLAGS; }
static inline u64 vmread(u64 field, u64 *value) {
    u64 f; __asm__ volatile("vmread %2, %1; pushfq; popq %0" : "=r"(f), "=r"(*value) : "r"(field) : "cc");
    return f & VMX_FLAGS;
}
static inline u64 vmwrite(u64 field, u64 value) {
    u64 f; __asm__ volatile("vmwrite %2, %1; pushfq; popq %0" : "=r"(f) : "r"(field), "rm"(value) : "cc");
    return f & VMX_FLAGS;
}
/* VMLAUNCH/VMRESUME that fail return here with the flags; for entries that succeed use vmx_run (vmx.h). */
static inline u64 vmlaunch(void) { u64 f; __asm__ volatile("vmlaunch; pushfq; popq %0" : "=r"(f) : : "cc", "memory"); return f & VMX_FLAGS; }
static inline u64 vmresume(void) { u64 f; __asm__ volatile("vmresume; pushfq; popq %0" : "=r"(f) : : "cc", "memory"); return f & VMX_FLAGS; }
static inline u64 vmcall(u64 rax) { __asm__ volatile("vmcall" : "+a"(rax) : : "memory"); return rax; }

#endif
