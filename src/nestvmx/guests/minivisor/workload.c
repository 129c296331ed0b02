/* An L2 workload run directly as the L1 program (the single-level configuration of bench). */
#include "workloads.h"

int main(void) {
    run_workload();
    return 0;
}
