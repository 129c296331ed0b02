/* Hello world: print a line on the console port and exit with status 0. */
#include <nestvmx.h>

int main(void) {
    puts("Hello from L1!\n");
    return 0;
}
