/* CPUID in a loop: each one is a VM exit to L0.  Prints the vendor and whether VMX is offered. */
#include <nestvmx.h>

int main(void) {
    u32 a, b, c, d, sum = 0;
    char vendor[13];
    cpuid(0, 0, &a, &b, &c, &d);
    *(u32 *)&vendor[0] = b; *(u32 *)&vendor[4] = d; *(u32 *)&vendor[8] = c; vendor[12] = 0;
    puts("vendor: "); puts(vendor); putc('\n');
    cpuid(1, 0, &a, &b, &c, &d);
    puts((c >> 5) & 1 ? "VMX: yes\n" : "VMX: no\n");
    for (int i = 0; i < 1000; i++) {
        cpuid(0, 0, &a, &b, &c, &d);
        sum += a;
    }
    puts("max basic leaf x1000: "); put_dec(sum); putc('\n');
    return 0;
}
