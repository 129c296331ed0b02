/* The L2 workloads (also run single-level, as an L1 program, by workload.c).
 * Build-time parameters: WORKLOAD (1 cpuid, 2 vmcall, 3 io, 4 msr, 5 pagetouch), ITERATIONS. */
#ifndef WORKLOADS_H
#define WORKLOADS_H
#include <nestvmx.h>

#ifndef WORKLOAD
#define WORKLOAD 1
#endif
#ifndef ITERATIONS
#define ITERATIONS 100
#endif

enum { W_CPUID = 1, W_VMCALL, W_IO, W_MSR, W_PAGETOUCH };
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
        }
    }
}
#endif
