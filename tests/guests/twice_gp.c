/* Two faults in a row before any IDT exists are still reported as the first #GP (not #DF). */
#include <nestvmx.h>
int main(void) {
    puts("go\n");
    return (int)*(volatile u64 *)0x8000000000000008ull;
}
