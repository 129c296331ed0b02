/* A deliberate #GP before any IDT is loaded: a non-canonical memory access.  The run ends as a
 * guest crash, reported with the vector and RIP. */
#include <nestvmx.h>

int main(void) {
    puts("about to fault\n");
    volatile u64 *bad = (volatile u64 *)0x8000000000000000ull;
    return (int)*bad;
}
