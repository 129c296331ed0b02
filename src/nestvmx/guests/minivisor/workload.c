/* An L2 workload run directly as the L1 program (the single-level configuration of bench), on
 * every vCPU; vCPU 0 ends the run once the others are done. */
#include "workloads.h"

#ifndef VCPUS
#define VCPUS 1
#endif
static volatile u32 finished;  /* vCPUs other than 0 that are done */

int main(void) {
    run_workload();
    if (VCPUS > 1) {
        u32 a, b, c, d;
        cpuid(1, 0, &a, &b, &c, &d);
        if (b >> 24) {
            __atomic_add_fetch(&finished, 1, __ATOMIC_SEQ_CST);
            for (;;) __asm__ volatile("hlt");
        }
        while (finished != VCPUS - 1) __asm__ volatile("pause");
    }
    return 0;
}
