/* SMP: every vCPU enters VMX operation with its own VMXON region and VMCS and loops VMWRITE /
 * VMREAD on it (a shadowed field, GUEST_RIP, and one KVM never shadows, VIRTUAL_PROCESSOR_ID).
 * Each vCPU also reports its platform contract: APIC IDs from CPUID.1 and CPUID.0BH, and its
 * stack (vCPU i's RSP lies i * 0x4000 below vCPU 0's).  vCPU 0 waits until all are done, all
 * still in VMX operation, and prints one line per vCPU. */
#include <vmx.h>

#define MAX 32
#define ROUNDS 40
static u8 vmxon_region[MAX][4096] __attribute__((aligned(4096)));
static u8 vmcs[MAX][4096] __attribute__((aligned(4096)));
static u64 rsp_at_main[MAX], apic1[MAX], apic_b[MAX], count_b[MAX], good[MAX];
static volatile u32 done;

int main(void) {
    u64 rsp;
    __asm__ volatile("mov %%rsp, %0" : "=r"(rsp));
    u32 a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    int cpu = b >> 24;
    rsp_at_main[cpu] = rsp;
    apic1[cpu] = cpu;
    cpuid(0xb, 0, &a, &b, &c, &d);
    apic_b[cpu] = d;
    cpuid(0xb, 1, &a, &b, &c, &d);
    count_b[cpu] = b & 0xffff;
    int n = (int)count_b[cpu];

    vmx_enable_cr();
    u32 revision = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region[cpu] = revision;
    *(u32 *)vmcs[cpu] = revision;
    u64 pa = (u64)vmxon_region[cpu];
    must(vmxon(&pa), "VMXON failed");
    pa = (u64)vmcs[cpu];
    must(vmclear(&pa), "VMCLEAR failed");
    must(vmptrld(&pa), "VMPTRLD failed");
    u64 ok = 0, v;
    for (u64 k = 0; k < ROUNDS; k++) {
        u64 rip = (u64)cpu << 32 | k, vpid = (u64)cpu << 8 | k;
        must(vmwrite(GUEST_RIP, rip), "VMWRITE failed");
        must(vmwrite(VIRTUAL_PROCESSOR_ID, vpid), "VMWRITE failed");
        ok += vmread(GUEST_RIP, &v) == 0 && v == rip;
        ok += vmread(VIRTUAL_PROCESSOR_ID, &v) == 0 && v == vpid;
    }
    u64 current = 0;
    vmptrst(&current);
    good[cpu] = ok == 2 * ROUNDS && current == (u64)vmcs[cpu];
    __atomic_add_fetch(&done, 1, __ATOMIC_SEQ_CST);
    if (cpu != 0)
        for (;;) __asm__ volatile("hlt");  /* halted, still in VMX operation */
    while (done != (u32)n) __asm__ volatile("pause");
    int bad = 0;
    for (int i = 0; i < n; i++) {
        int fine = good[i] && apic1[i] == (u64)i && apic_b[i] == (u64)i && count_b[i] == (u64)n &&
                   rsp_at_main[0] - rsp_at_main[i] == (u64)i * 0x4000;
        puts(fine ? "ok " : "not ok "); put_dec(i); puts(" - vCPU "); put_dec(i); puts(" VMREAD/VMWRITE on its own VMCS\n");
        bad += !fine;
    }
    return bad;
}
