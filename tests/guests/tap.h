/* TAP output for the test programs: "ok N - what" or "not ok N - what" per check. */
#ifndef TAP_H
#define TAP_H
#include <nestvmx.h>

static int failures, tests;

static void ok(int cond, const char *what) {
    tests++;
    if (!cond) failures++;
    puts(cond ? "ok " : "not ok "); put_dec(tests); puts(" - "); puts(what); putc('\n');
}
#endif
