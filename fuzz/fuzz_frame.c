/*
 * fuzz_frame.c - the frame reader (request.c): whatever a peer writes on a
 * request socket (a length, then a payload), mproc__frame_recv must return
 * whole frames no longer than its limit, or an error, and never allocate by
 * a length it was not given room for, block, or read out of bounds. The
 * input is written to a socketpair whose writer then closes.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define LIMIT 4096 /* what this reader accepts per frame */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0; /* within one socket buffer: the write cannot block */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    if (size && write(sv[1], data, size) != (ssize_t)size)
        abort();
    close(sv[1]);
    size_t consumed = 0;
    for (int i = 0; i < 64; i++) {
        void *buf = NULL;
        size_t len = 0, nfds = 0;
        int fds[4];
        int rc = mproc__frame_recv(sv[0], LIMIT, &buf, &len, fds, 4, &nfds, 0);
        if (rc != 0 && rc != -EMFILE) {
            free(buf);
            break;
        }
        if (len > LIMIT || nfds != 0)
            abort(); /* over the limit, or fds out of nowhere */
        consumed += 4 + len;
        if (consumed > size)
            abort(); /* a frame made of bytes that were never sent */
        free(buf);
    }
    close(sv[0]);
    return 0;
}
