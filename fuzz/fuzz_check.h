/* The fuzz harnesses' invariant check: on a broken one, says which (FUZZ_NAME, the condition,
 * where, the printf-style detail) and aborts, which libFuzzer reports as a crash. */
#ifndef FUZZ_CHECK_H
#define FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, ...)                                                                          \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "%s: invariant broken: %s (%s:%d): ", FUZZ_NAME, #cond, __FILE__,    \
                    __LINE__);                                                                   \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fputc('\n', stderr);                                                                 \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

#endif
