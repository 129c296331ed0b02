/* Privilege faults come before VM exits (SDM §26.1.1): L2 at CPL 3, with every exit these
 * instructions could cause turned on, gets #GP(0) (exception bitmap: an exit with vector 13) for
 * RDMSR, WRMSR, MOV to and from control registers, CLTS, LMSW, HLT and RDPMC (CR4.PCE = 0), and
 * for OUT to a port its TSS's I/O permission bitmap denies (IOPL 0); CPUID, VMCALL, VMREAD and OUT
 * to a permitted port exit.  At CPL 0 the same RDMSR exits, and so does LMSW, whose exit reports a
 * memory operand's linear address (SDM §28.2.1).  (TAP output.) */
#include "../l1.h"

#include "../tap.h"


extern char t_rdmsr[], t_wrmsr[], t_mov_to_cr0[], t_mov_from_cr3[], t_clts[], t_lmsw[], t_hlt[], t_rdpmc[],
    t_cpuid[], t_vmcall[], t_vmread[], t_out_permitted[], t_out_denied[], t_lmsw_memory[];
__asm__(".text\n"
        "t_rdmsr: rdmsr\n"
        "t_wrmsr: wrmsr\n"
        "t_mov_to_cr0: mov %rax, %cr0\n"
        "t_mov_from_cr3: mov %cr3, %rax\n"
        "t_clts: clts\n"
        "t_lmsw: lmsw %ax\n"
        "t_hlt: hlt\n"
        "t_rdpmc: rdpmc\n"
        "t_cpuid: cpuid\n"
        "t_vmcall: vmcall\n"
        "t_vmread: vmread %rax, %rbx\n"
        "t_out_permitted: outb %al, $0x80\n"
        "t_out_denied: outb %al, $0x81\n"
        "t_lmsw_memory: lmsw (%rbx)\n");

/* L2's own page tables (user pages: 0-16 MiB), GDT (user code and data, a TSS) and TSS with an I/O
 * permission bitmap that permits port 0x80 only. */
static u64 l2_pml4[512] __attribute__((aligned(4096)));
static u64 l2_pdpt[512] __attribute__((aligned(4096)));
static u64 l2_pd[512] __attribute__((aligned(4096)));
static u64 l2_gdt[8] __attribute__((aligned(16)));
static struct {
    u8 tss[104];
    u8 io_bitmap[8192 + 1];
} __attribute__((packed, aligned(16))) l2_tss;

static void set_cpl(int cpl) {
    u16 cs = cpl ? 0x1b : 0x08, data = cpl ? 0x23 : 0x10;
    u32 code_ar = cpl ? 0xa0fb : 0xa09b, data_ar = cpl ? 0xc0f3 : 0xc093;
    for (int i = 0; i < 6; i++) {  /* ES, CS, SS, DS, FS, GS */
        vmw(GUEST_ES_SELECTOR + 2 * i, i == 1 ? cs : data);
        vmw(GUEST_ES_AR_BYTES + 2 * i, i == 1 ? code_ar : data_ar);
    }
}

/* Run L2 from `code`: the exit's reason and, for an exception, its interruption information. */
static u64 run_from(char *code, u64 *intr_info) {
    vmw(GUEST_RIP, (u64)code);
    vmw(GUEST_RSP, (u64)l2_stack + sizeof(l2_stack));
    u64 r = l2_run();
    *intr_info = vmr(VM_EXIT_INTR_INFO);
    return r ? ~0ull : vmr(VM_EXIT_REASON);
}

static int gp(char *code) {
    u64 info, reason = run_from(code, &info);
    return reason == 0 && (info & 0x80000fff) == 0x80000b0d && vmr(VM_EXIT_INTR_ERROR_CODE) == 0 &&
           vmr(GUEST_RIP) == (u64)code;
}

static int exits(char *code, u64 expected) {
    u64 info, reason = run_from(code, &info);
    return reason == expected && vmr(GUEST_RIP) == (u64)code;
}

int main(void) {
    ok(l1_start() == 0, "VMXON, VMCLEAR and VMPTRLD");
    for (int i = 0; i < 8; i++) l2_pd[i] = (u64)i << 21 | 0x87;  /* present, writable, user, 2 MiB */
    l2_pdpt[0] = (u64)l2_pd | 7;
    l2_pml4[0] = (u64)l2_pdpt | 7;
    u64 tss = (u64)&l2_tss;
    l2_gdt[1] = 0x00af9b000000ffffull;
    l2_gdt[2] = 0x00cf93000000ffffull;
    l2_gdt[3] = 0x00affb000000ffffull;  /* user code, 64-bit */
    l2_gdt[4] = 0x00cff3000000ffffull;  /* user data */
    l2_gdt[5] = (sizeof(l2_tss) - 1) | (tss & 0xffffff) << 16 | 0x8bull << 40 | ((tss >> 24) & 0xff) << 56;
    l2_gdt[6] = tss >> 32;
    *(u16 *)&l2_tss.tss[0x66] = 104;  /* the I/O permission bitmap follows the TSS */
    for (unsigned i = 0; i < sizeof(l2_tss.io_bitmap); i++) l2_tss.io_bitmap[i] = 0xff;
    l2_tss.io_bitmap[0x80 / 8] &= ~1;  /* port 0x80 */

    u64 eptp = vmx_identity_ept(ept_pml4, ept_pdpt, ept_pd, 16);
    /* HLT, RDPMC, CR3-store and unconditional I/O exiting; no MSR bitmaps: every RDMSR/WRMSR exits. */
    vmx_setup_vmcs(1u << 7 | 1u << 11 | 1u << 16 | 1u << 24, eptp, 0, t_rdmsr, l2_stack + sizeof(l2_stack));
    vmw(GUEST_CR3, (u64)l2_pml4);
    vmw(GUEST_CR4, read_cr4() & ~(3ull << 20 | 1ull << 8));  /* no SMEP/SMAP; CR4.PCE = 0 */
    vmw(GUEST_GDTR_BASE, (u64)l2_gdt);
    vmw(GUEST_GDTR_LIMIT, sizeof(l2_gdt) - 1);
    vmw(GUEST_TR_SELECTOR, 0x28);
    vmw(GUEST_TR_BASE, tss);
    vmw(GUEST_TR_LIMIT, sizeof(l2_tss) - 1);
    vmw(EXCEPTION_BITMAP, 1u << 13);
    vmw(CR0_GUEST_HOST_MASK, ~0ull);  /* every CR0 bit L1's: any change exits */
    vmw(CR0_READ_SHADOW, vmr(GUEST_CR0) | 1u << 3);  /* TS set in the shadow: CLTS exits */
    g.rax = 0;  /* MOV to CR0 of 0 and LMSW of 0: different from the shadow */

    set_cpl(0);
    ok(exits(t_rdmsr, 31), "CPL 0: RDMSR exits (reason 31)");
    static u16 msw = 1;  /* PE: TS cleared against the shadow's */
    g.rbx = (u64)&msw;
    ok(exits(t_lmsw_memory, 28) && vmr(EXIT_QUALIFICATION) == (3u << 4 | 1u << 6 | 1u << 16) &&
           vmr(GUEST_LINEAR_ADDRESS) == (u64)&msw,
       "CPL 0: LMSW of a memory operand exits: type 3, memory operand, source data, its linear address");
    set_cpl(3);
    ok(gp(t_rdmsr), "CPL 3: RDMSR is #GP(0), not an exit");
    ok(gp(t_wrmsr), "CPL 3: WRMSR is #GP(0)");
    ok(gp(t_mov_to_cr0), "CPL 3: MOV to CR0 is #GP(0), although CR0 is intercepted");
    ok(gp(t_mov_from_cr3), "CPL 3: MOV from CR3 is #GP(0), although CR3-store exiting is on");
    ok(gp(t_clts), "CPL 3: CLTS is #GP(0), although it would exit");
    ok(gp(t_lmsw), "CPL 3: LMSW is #GP(0), although it would exit");
    ok(gp(t_hlt), "CPL 3: HLT is #GP(0), although HLT exiting is on");
    ok(gp(t_rdpmc), "CPL 3: RDPMC with CR4.PCE = 0 is #GP(0), although RDPMC exiting is on");
    ok(gp(t_out_denied), "CPL 3, IOPL 0: OUT to a port the TSS denies is #GP(0)");
    ok(exits(t_out_permitted, 30), "CPL 3, IOPL 0: OUT to a port the TSS permits exits (reason 30)");
    ok(exits(t_cpuid, 10), "CPL 3: CPUID exits (reason 10)");
    ok(exits(t_vmcall, 18), "CPL 3: VMCALL exits (reason 18)");
    ok(exits(t_vmread, 23), "CPL 3: VMREAD exits (reason 23)");
    ok(l1_stop() == 0, "VMCLEAR and VMXOFF");
    puts(failures ? "FAIL\n" : "PASS\n");
    puts("END\n");
    return failures;
}
