/*
 * fuzz_queue.c - a queue's ring (queue.c) as another process may have left
 * it: arbitrary head and tail words and ring bytes. get must return whole
 * messages no longer than the queue's maximum, or MPROC_EPROTO, and never
 * copy out of bounds or wait; put must not write past the ring. The input
 * is head, tail, the consumers' and the producers' last looks at them
 * (8 bytes each), then the ring's contents.
 */
#include "internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define CAP 4096u
#define MAX 1024u

static mproc_shm_t *shm;
static mproc_queue_t *q;
static struct mproc__queue_shared *s;

static void setup(void)
{
    mproc_queue_opts_t o = {.capacity = CAP, .max_message = MAX, .spin_us = -1};
    void *obj;
    if (mproc_shm_create(&shm, 64u << 10) < 0 || mproc_queue_create(shm, "q", &o, &q) < 0 ||
        mproc_shm_find(shm, "q", MPROC_OBJ_QUEUE, &obj) < 0)
        abort();
    s = obj;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!s)
        setup();
    uint64_t words[4] = {0, 0, 0, 0};
    memcpy(words, data, size < sizeof words ? size : sizeof words);
    size_t skip = size < sizeof words ? size : sizeof words;
    memset(s->ring, 0, CAP);
    memcpy(s->ring, data + skip, size - skip > CAP ? CAP : size - skip);
    atomic_store(&s->head, words[0]);
    atomic_store(&s->tail, words[1]);
    atomic_store(&s->head_seen, words[2]);
    atomic_store(&s->tail_seen, words[3]);

    unsigned char buf[MAX + 1];
    size_t total = 0;
    for (int i = 0; i < 64; i++) {
        size_t len = 0;
        int rc = mproc_queue_get(q, buf, sizeof buf - 1, &len, 0);
        if (rc == -EMSGSIZE)
            abort(); /* a buffer of the maximum always fits */
        if (rc < 0)
            break;
        if (len > MAX)
            abort();
        total += 8 + ((len + 7) & ~(size_t)7);
        if (total > CAP)
            abort(); /* more taken out than a ring holds */
    }
    (void)mproc_queue_qsize(q);
    (void)mproc_queue_full(q);
    (void)mproc_queue_empty(q);
    memset(buf, 0x5a, sizeof buf);
    for (int i = 0; i < 4; i++)
        if (mproc_queue_put(q, buf, (size_t)(i * 333) % (MAX + 1), 0) < 0)
            break;
    return 0;
}
