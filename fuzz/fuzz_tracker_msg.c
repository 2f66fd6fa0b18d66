/*
 * fuzz_tracker_msg.c - the tracker's message check (tracker.c): a message
 * it accepts names a file under the mproc- prefix with a terminated name
 * of allowed characters only, whatever bytes a process of the tree sent.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!mproc__tracker_msg_ok(data, size))
        return 0;
    /* Accepted: the name field (after magic, op, dev, ino) must be a
     * terminated "mproc-..." of [A-Za-z0-9._-] inside the message. */
    const char *file = (const char *)data + 24;
    size_t max = size - 24;
    size_t n = strnlen(file, max);
    if (n == max || strncmp(file, MPROC__SHM_PREFIX, strlen(MPROC__SHM_PREFIX)) != 0)
        abort();
    for (size_t i = 0; i < n; i++) {
        char c = file[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            abort();
    }
    return 0;
}
