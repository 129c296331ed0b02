/* RDMSR of IA32_FEATURE_CONTROL and IA32_VMX_BASIC: what the platform offers for VMX. */
#include <nestvmx.h>

int main(void) {
    u64 fc = rdmsr(0x3a), basic = rdmsr(0x480);
    puts("IA32_FEATURE_CONTROL = "); put_hex(fc); putc('\n');
    puts("IA32_VMX_BASIC       = "); put_hex(basic); putc('\n');
    puts("VMCS revision id     = "); put_hex(basic & 0x7fffffff); putc('\n');
    return (fc & 5) == 5 ? 0 : 1;
}
