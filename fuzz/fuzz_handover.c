/*
 * fuzz_handover.c - the handover a re-executed supervisor reads (upgrade.c):
 * any bytes are refused or parsed into records whose every number is in
 * range; what parses writes back and parses again to the same records.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void same(const mproc__handover_t *a, const mproc__handover_t *b)
{
    if (a->sigmask != b->sigmask || a->chld_ign != b->chld_ign || a->pipe_ign != b->pipe_ign ||
        a->notify_fd != b->notify_fd || strcmp(a->notify_dir, b->notify_dir) != 0 ||
        a->nsockets != b->nsockets || a->nworkers != b->nworkers || a->nreap != b->nreap)
        abort();
    for (size_t i = 0; i < a->nsockets; i++)
        if (a->sockets[i].fd != b->sockets[i].fd || a->sockets[i].ino != b->sockets[i].ino ||
            strcmp(a->sockets[i].spec, b->sockets[i].spec) != 0)
            abort();
    if (a->nworkers && memcmp(a->workers, b->workers, a->nworkers * sizeof *a->workers) != 0)
        abort();
    if (memcmp(a->reap, b->reap, a->nreap * sizeof *a->reap) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mproc__handover_t *h = NULL;
    if (mproc__handover_parse((const char *)data, size, &h) != 0)
        return 0;
    if (h->notify_fd < 0 || h->nsockets > MPROC__ARRAY_LEN(h->sockets) ||
        h->nreap > MPROC__ARRAY_LEN(h->reap))
        abort();
    for (size_t i = 0; i < h->nworkers; i++) {
        const mproc__handover_worker_t *w = &h->workers[i];
        if (w->slot < 0 || w->pid <= 0 || w->life_fd < 0 || (w->ready | w->current) > 1 ||
            w->kill_left_ms < -1)
            abort();
    }
    for (size_t i = 0; i < h->nsockets; i++)
        if (!h->sockets[i].spec[0])
            abort();
    int fd = -1;
    if (mproc__handover_write(h, &fd) == 0) {
        char buf[1 << 17];
        ssize_t n = read(fd, buf, sizeof buf);
        close(fd);
        mproc__handover_t *again = NULL;
        if (n < 0 || (size_t)n == sizeof buf)
            goto out; /* too large to check here */
        if (mproc__handover_parse(buf, (size_t)n, &again) != 0)
            abort();
        same(h, again);
        mproc__handover_free(again);
    }
out:
    mproc__handover_free(h);
    return 0;
}
