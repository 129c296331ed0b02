/* Pointers L1 hands over that point past its RAM (but below MAXPHYADDR): the processor reads
 * such memory as all ones, so I/O and MSR bitmaps there make every access exit to L1, and the
 * VMXON and VMCS pointers there fail.  (TAP output; the run must also leave L0 intact.) */
#include "../l1.h"

#include "../tap.h"

extern char l2_io[], l2_rdmsr[];

#define BEYOND_RAM (1ull << 35)

/* L2: an OUT to a port and an RDMSR, each expected to exit to L1. */
__asm__(".text\n"
        "l2_io: outb %al, $0x70\n"
        "l2_rdmsr: movl $0x10, %ecx\n rdmsr\n"
        "1: hlt\n jmp 1b\n");

int main(void) {
    u32 rev = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)vmxon_region = rev; *(u32 *)vmcs = rev;
    vmx_setup_descriptors();
    vmx_enable_cr();
    u64 pa = BEYOND_RAM;
    ok(vmxon(&pa) == VMX_CF, "VMXON with a pointer past RAM: VMfailInvalid");
    pa = (u64)vmxon_region;
    ok(vmxon(&pa) == 0, "VMXON");
    pa = BEYOND_RAM;
    ok(vmptrld(&pa) == VMX_CF, "VMPTRLD past RAM (no current VMCS): VMfailInvalid");
    pa = (u64)vmcs;
    ok(vmclear(&pa) == 0 && vmptrld(&pa) == 0, "VMCLEAR and VMPTRLD");

    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    vmx_setup_vmcs(1u << 25 | 1u << 28, eptp, BEYOND_RAM, l2_io, l2_stack + sizeof(l2_stack));
    vmwrite(IO_BITMAP_A, BEYOND_RAM);
    vmwrite(IO_BITMAP_B, BEYOND_RAM + 0x1000);

    u64 reason = 0, len = 0, rip = 0, qual = 0;
    u64 r = vmx_run(1, &g);
    vmread(VM_EXIT_REASON, &reason); vmread(VM_EXIT_INSTRUCTION_LEN, &len); vmread(GUEST_RIP, &rip);
    vmread(EXIT_QUALIFICATION, &qual);
    ok(r == 0 && reason == 30 && rip == (u64)l2_io && qual == (0x70u << 16 | 1 << 6),
       "I/O bitmaps past RAM read as all ones: L2's OUT exits to L1");
    vmwrite(GUEST_RIP, rip + len);
    r = vmx_run(0, &g);
    vmread(VM_EXIT_REASON, &reason); vmread(GUEST_RIP, &rip);
    ok(r == 0 && reason == 31 && rip == (u64)l2_rdmsr + 5, "an MSR bitmap past RAM reads as all ones: RDMSR exits");
    pa = (u64)vmcs;
    ok(vmclear(&pa) == 0 && vmxoff() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures ? 1 : 0;
}
