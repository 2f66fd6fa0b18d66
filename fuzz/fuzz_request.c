/*
 * fuzz_request.c - the child-start request decoder (request.c): what a
 * spawned child reads from its parent and the forkserver helper reads from
 * its clients. Any bytes must give a request whose every pointer and length
 * stays inside the buffer, or MPROC_EPROTO; a decoded request must encode
 * back to bytes that decode to the same request.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static void check_inside(const void *p, size_t n, const uint8_t *buf, size_t len)
{
    if (!p || n == 0)
        return;
    const uint8_t *q = p;
    if (q < buf || q + n > buf + len || q + n < q)
        abort(); /* a pointer the decoder let out of the buffer */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mproc__request_t r;
    if (mproc__request_decode(data, size, &r) != 0)
        return 0;
    check_inside(r.arg, (size_t)r.arglen, data, size);
    if (r.name)
        check_inside(r.name, strlen(r.name) + 1, data, size);
    /* (an absent path decodes as a static "": not in the buffer, and fine) */
    if ((r.flags & MPROC__F_HAS_ENTRY) && *r.entry.path)
        check_inside(r.entry.path, strlen(r.entry.path) + 1, data, size);
    if (r.nfds > MPROC__MAX_FDS || r.entry.build_id_len > MPROC__MAX_BUILD_ID)
        abort();

    void *again = NULL;
    size_t len = 0;
    if (mproc__request_encode(&r, &again, &len) != 0)
        return 0;
    mproc__request_t r2;
    if (mproc__request_decode(again, len, &r2) != 0 || r2.type != r.type || r2.flags != r.flags ||
        r2.nfds != r.nfds || r2.arglen != r.arglen ||
        memcmp(r2.fds, r.fds, r.nfds * sizeof r.fds[0]) != 0 ||
        (r.arglen && memcmp(r2.arg, r.arg, (size_t)r.arglen) != 0))
        abort(); /* encode and decode disagree */
    free(again);
    return 0;
}
