/* Port I/O: bytes to the console port, a read from a port no device answers (all ones), and
 * the exit status through port 0xF4. */
#include <nestvmx.h>

int main(void) {
    u8 v = inb(0x80);
    puts("inb(0x80) = "); put_hex(v); putc('\n');
    return v == 0xff ? 7 : 1;
}
