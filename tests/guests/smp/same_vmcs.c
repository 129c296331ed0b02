/* SMP: two vCPUs make the same VMCS current without a VMCLEAR in between (SDM §25.11.1: "a VMCS
 * that is made active on more than one logical processor may become corrupted").  The outcome
 * nestvmx gives, as KVM does: each vCPU works on its own copy while the VMCS is current on it,
 * VMPTRLD reads the region as it is in memory, and each VMCLEAR writes that vCPU's copy back, so
 * the region holds the copy of the last VMCLEAR, whole. */
#include <vmx.h>

static u8 vmxon_region[2][4096] __attribute__((aligned(4096)));
static u8 shared_vmcs[4096] __attribute__((aligned(4096)));
static volatile u32 step;
static u64 seen[8];

static void wait_for(u32 s) { while (step != s) __asm__ volatile("pause"); }

static u64 read_rip(void) { u64 v = 0; must(vmread(GUEST_RIP, &v), "VMREAD failed"); return v; }

int main(void) {
    int cpu = vmx_apic_id();
    vmx_enable_cr();
    u32 revision = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region[cpu] = revision;
    u64 pa = (u64)vmxon_region[cpu];
    must(vmxon(&pa), "VMXON failed");
    u64 x = (u64)shared_vmcs;
    if (cpu == 0) {
        *(u32 *)shared_vmcs = revision;
        must(vmclear(&x), "VMCLEAR failed");
        must(vmptrld(&x), "VMPTRLD failed");
        must(vmwrite(GUEST_RIP, 0xa0), "VMWRITE failed");
        step = 1;
        wait_for(2);
        seen[2] = read_rip();             /* its own copy: 0xa0 */
        must(vmclear(&x), "VMCLEAR failed");
        step = 3;
        wait_for(4);
        must(vmptrld(&x), "VMPTRLD failed");
        seen[4] = read_rip();             /* the last VMCLEAR's copy: 0xb0 */
    } else {
        wait_for(1);
        must(vmptrld(&x), "VMPTRLD failed");  /* still current on vCPU 0 */
        seen[0] = read_rip();             /* the region in memory: 0 */
        must(vmwrite(GUEST_RIP, 0xb0), "VMWRITE failed");
        seen[1] = read_rip();             /* its own copy: 0xb0 */
        step = 2;
        wait_for(3);
        must(vmclear(&x), "VMCLEAR failed");
        step = 4;
        for (;;) __asm__ volatile("hlt");
    }
    static const u64 expect[5] = {0, 0xb0, 0xa0, 0, 0xb0};
    static const char *const what[5] = {"vCPU 1 reads the region as in memory", "vCPU 1 reads its own VMWRITE",
        "vCPU 0 keeps its own copy", "", "the region holds the last VMCLEAR's copy"};
    int bad = 0;
    for (int i = 0; i < 5; i++) {
        if (i == 3) continue;
        puts(seen[i] == expect[i] ? "ok - " : "not ok - "); puts(what[i]); puts(": "); put_hex(seen[i]); putc('\n');
        bad += seen[i] != expect[i];
    }
    return bad;
}
