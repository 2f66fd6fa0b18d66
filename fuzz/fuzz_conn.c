/*
 * fuzz_conn.c - the connection receiver (channel.c): whatever a peer
 * writes on a connection's socket, mproc_conn_recv_fds / recv_alloc must
 * return whole messages no longer than the maximum, or an error, and never
 * make up bytes or fds, allocate by a claimed length, block, or read out
 * of bounds. The input is written to a socketpair whose writer then
 * closes; the first byte picks how the receiver reads.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX 4096 /* the connection's maximum */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0; /* within one socket buffer: the write cannot block */
    uint8_t mode = data[0];
    data++;
    size--;
    mproc_conn_t *c, *peer;
    mproc_conn_opts_t o = {.max_message = MAX};
    if (mproc_pipe(&c, &peer, 1, &o) != 0)
        abort();
    if (size && write(mproc_conn_fd(peer), data, size) != (ssize_t)size)
        abort();
    mproc_conn_close(peer);

    size_t returned = 0;
    static unsigned char buf[MAX];
    for (int i = 0; i < 256; i++) {
        size_t len = 0, nfds = 0;
        int fds[4];
        int rc;
        /* mode picks, per call, the buffer size and the reader */
        unsigned kind = (mode >> (i % 4 * 2)) & 3;
        if (kind == 3) {
            void *p = NULL;
            rc = mproc_conn_recv_alloc(c, &p, &len, 0);
            if (rc == 0 && !p)
                abort(); /* never NULL on success */
            free(p);
        } else {
            size_t cap = kind == 0 ? MAX : kind == 1 ? 16 : 0;
            rc = mproc_conn_recv_fds(c, buf, cap, &len, fds, 4, &nfds, 0);
            if (rc == 0 && len > cap)
                abort();
        }
        if (nfds != 0)
            abort(); /* fds out of nowhere: the input carries none */
        if (rc == -EMSGSIZE)
            continue; /* too large for the buffer, or dropped */
        if (rc != 0)
            break;
        if (len > MAX)
            abort();
        returned += 8 + len;
        if (returned > size)
            abort(); /* a message made of bytes that were never sent */
    }
    mproc_conn_close(c);
    return 0;
}
