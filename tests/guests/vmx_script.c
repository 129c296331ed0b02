/* Interprets a script of VMX instructions placed in memory at 8 MiB by the test (u64 count, then
 * {op, a, b} triples) and prints every result, so that runs can be compared. */
#include <vmx.h>

static u8 regions[4][4096] __attribute__((aligned(4096)));
static const u64 fields[] = {GUEST_RIP, GUEST_RSP, GUEST_CR0, GUEST_RFLAGS, EXIT_QUALIFICATION, VM_EXIT_REASON,
                             VM_INSTRUCTION_ERROR, CPU_BASED_VM_EXEC_CONTROL, PIN_BASED_VM_EXEC_CONTROL,
                             EXCEPTION_BITMAP, GUEST_PHYSICAL_ADDRESS, GUEST_PHYSICAL_ADDRESS + 1, VMCS_LINK_POINTER,
                             VMCS_LINK_POINTER + 1, GUEST_ES_SELECTOR, HOST_FS_SELECTOR, HOST_FS_BASE, EPT_POINTER,
                             0x4401, 0x7ffe, 0xffffffffull, 0x4816 /* GUEST_CS_AR_BYTES */, VM_EXIT_INSTRUCTION_LEN, HOST_RIP};

static u64 pointer(u64 a) {
    switch (a % 6) {
    case 0: return (u64)regions[0];
    case 1: return (u64)regions[1];
    case 2: return (u64)regions[2];          /* wrong revision id */
    case 3: return (u64)regions[0] + 8;      /* unaligned */
    case 4: return 1ull << 33;               /* outside memory */
    default: return (u64)regions[3];         /* the VMXON region */
    }
}

int main(void) {
    u32 rev = (u32)rdmsr(0x480) & 0x7fffffff;
    *(u32 *)regions[0] = rev; *(u32 *)regions[1] = rev; *(u32 *)regions[2] = rev ^ 2; *(u32 *)regions[3] = rev;
    vmx_enable_cr();
    const u64 *script = (const u64 *)0x800000;
    u64 n = script[0] > 200 ? 200 : script[0];
    for (u64 i = 0; i < n; i++) {
        u64 op = script[1 + 3 * i] % 9, a = script[2 + 3 * i], b = script[3 + 3 * i], f = 0, v = 0, pa;
        u64 field = fields[a % (sizeof(fields) / sizeof(fields[0]))];
        switch (op) {
        case 0: pa = a % 6 == 5 ? (u64)regions[3] : pointer(a); f = vmxon(&pa); break;
        case 1: f = vmxoff(); break;
        case 2: pa = pointer(a); f = vmclear(&pa); break;
        case 3: pa = pointer(a); f = vmptrld(&pa); break;
        case 4: f = vmptrst(&v); break;
        case 5: f = vmread(field, &v); break;
        case 6: f = vmwrite(field, b); break;
        case 7: f = vmlaunch(); break;
        default: f = vmresume(); break;
        }
        u64 err = 0;
        if (f == VMX_ZF) vmread(VM_INSTRUCTION_ERROR, &err);
        put_dec(i); puts(": op "); put_dec(op); puts(" flags "); put_hex(f); puts(" value "); put_hex(v);
        puts(" error "); put_dec(err); putc('\n');
    }
    puts("END\n");
    return 0;
}
