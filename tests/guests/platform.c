/* The L1 platform contract: long mode with paging, CPL 0, interrupts off, RSP, CR4.VMXE clear
 * but settable, IA32_FEATURE_CONTROL locked with VMX enabled, CPUID advertising VMX, the VMX
 * capability MSRs, MSR reads and writes L0 emulates, and a write to a locked MSR (#GP). */
#include <nestvmx.h>

static int failures, tests;
static void check(int ok, const char *what) {
    tests++;
    if (!ok) failures++;
    puts(ok ? "ok " : "not ok "); put_dec(tests); puts(" - "); puts(what); putc('\n');
}

int main(void) {
    u64 cr0 = read_cr0(), cr4 = read_cr4(), rflags, rsp;
    __asm__ volatile("pushfq; popq %0; movq %%rsp, %1" : "=r"(rflags), "=r"(rsp));
    check((cr0 & 0x80000001) == 0x80000001, "CR0.PE and CR0.PG set");
    check((cr4 & 0x20) && !(cr4 & 0x2000), "CR4.PAE set, CR4.VMXE clear");
    check(!(rflags & 0x200), "interrupts off");
    check(rsp < 0x100000 && rsp > 0xf0000, "stack below 1 MiB");
    check((rdmsr(0xc0000080) & 0x500) == 0x500, "EFER.LME and LMA");
    write_cr4(cr4 | 0x2000);
    check(read_cr4() & 0x2000, "CR4.VMXE can be set and reads back");
    write_cr4(cr4);
    check(!(read_cr4() & 0x2000), "CR4.VMXE can be cleared again");
    check((rdmsr(0x3a) & 5) == 5, "IA32_FEATURE_CONTROL locked, VMX outside SMX enabled");
    u32 a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    check(c & (1 << 5), "CPUID.1:ECX.VMX");
    u64 basic = rdmsr(0x480);
    check((basic >> 32 & 0x1fff) == 4096 && (basic & 0x7fffffff) != 0, "IA32_VMX_BASIC: size and revision");
    wrmsr(0xc0000102, 0x1234567890ull);
    check(rdmsr(0xc0000102) == 0x1234567890ull, "IA32_KERNEL_GS_BASE write and read back");
    puts(failures ? "FAIL\n" : "PASS\n");
    if (failures) return failures;
    wrmsr(0x3a, 0);  /* locked: #GP, and without an IDT the run ends as a crash */
    return 99;
}
