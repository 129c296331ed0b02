/* The L2 workloads (also run single-level, as an L1 program, by workload.c).
 * Build-time parameters: WORKLOAD (1 cpuid, 2 vmcall, 3 io, 4 msr, 5 pagetouch, 6 mix), ITERATIONS.
 *
 * mix: a macro workload.  Exit reasons in the shares of a Linux guest booting under an L1 KVM with
 * EPT (nicolashanout/linux README, CMPE 283; see shared/reference/perf-numbers.md §5.4), restricted
 * to the reasons modelled here and renormalised: I/O 41 %, CPUID 41 %, EPT violation 11 %, WRMSR
 * 7 %; between two exits MIX_WORK guest instructions, so that L0 takes 2.28 % of the cycles of the
 * single-level run under the turtles2010 costs, as kernbench does in Turtles §4.2 (Fig. 5). */
#ifndef WORKLOADS_H
#define WORKLOADS_H
#include <nestvmx.h>

#ifndef WORKLOAD
#define WORKLOAD 1
#endif
#ifndef ITERATIONS
#define ITERATIONS 100
#endif

enum { W_CPUID = 1, W_VMCALL, W_IO, W_MSR, W_PAGETOUCH, W_MIX };
#define MIX_WORK 17800  /* loop iterations of ~6 instructions: ~107,000 instructions between exits */
#define FRESH_BASE (32ull << 20)  /* guest-physical 32-48 MiB: mapped on demand (pagetouch) */
#define FRESH_SIZE (16ull << 20)

static void run_workload(void) {
    u32 a, b, c, d;
    for (u64 i = 0; i < ITERATIONS; i++) {
        switch (WORKLOAD) {
        case W_CPUID: cpuid(0, 0, &a, &b, &c, &d); break;
        case W_VMCALL: vmcall(0); break;
        case W_IO: outb(0x80, (u8)i); break;
        case W_MSR: wrmsr(0xc0000102, i); if (rdmsr(0xc0000102) != i) vmcall(2); break;
        case W_PAGETOUCH: *(volatile u64 *)(FRESH_BASE + (i % (FRESH_SIZE >> 12)) * 4096) = i; break;
        case W_MIX: {
            for (volatile u64 w = 0; w < MIX_WORK; w = w + 1) {}
            u64 slot = (i * 37) % 100;  /* a fixed, well-spread order of the 100 slots */
            if (slot < 41) outb(0x80, (u8)i);
            else if (slot < 82) cpuid(0, 0, &a, &b, &c, &d);
            else if (slot < 93) *(volatile u64 *)(FRESH_BASE + (i % (FRESH_SIZE >> 12)) * 4096) = i;
            else wrmsr(0xc0000102, i);
            break;
        }
        }
    }
}
#endif
