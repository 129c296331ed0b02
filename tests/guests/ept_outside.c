/* Map a guest-linear page onto guest-physical memory beyond the VM's RAM and read it: L0's EPT
 * does not map it, so the access is an EPT violation that L0 reports. */
#include <nestvmx.h>

int main(void) {
    volatile u64 *pd = (volatile u64 *)0x3000;  /* the platform's first page directory */
    pd[511] = 0x3fe00000ull | 0x83;               /* 2 MiB page at 1 GiB - 2 MiB */
    puts("touching 0x3fe00000\n");
    return (int)*(volatile u64 *)0x3fe00010ull;
}
