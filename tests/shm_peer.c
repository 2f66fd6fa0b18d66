/*
 * shm_peer.c - an unrelated process for test_sync's named-object case: it
 * is started with posix_spawn (not by mproc), given only a segment's name
 * on argv, opens the segment and every object in it by name, and works
 * with them concurrently with the test. Exit status 0 when every check
 * held; otherwise it prints the failed check and exits non-zero.
 *
 *     shm_peer NAME
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <unistd.h>

#include "mproc.h"

/* Mirrors tests/test_sync.c. */
#define PEER_LOCK_ITERS 100000
#define PEER_RLOCK_ITERS 20000
#define PEER_SEM_ITERS 20000
#define T_MS 10000

#define P_RC(expr, want)                                                                           \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != (want)) {                                                                       \
            fprintf(stderr, "shm_peer %s:%d: %s = %d (%s), want %d (%s)\n", __FILE__, __LINE__,    \
                    #expr, rc_, mproc_strerror(rc_), (int)(want), mproc_strerror(want));           \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)
#define P_REQ(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "shm_peer %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

static int run(const char *name)
{
    mproc_shm_t *shm = NULL;
    P_RC(mproc_shm_open(&shm, name), 0);
    mproc_lock_t *l = NULL;
    mproc_rlock_t *rl = NULL;
    mproc_semaphore_t *s = NULL;
    mproc_condition_t *cv = NULL;
    mproc_event_t *ev = NULL;
    mproc_barrier_t *b = NULL;
    void *cp = NULL;
    size_t count = 0;
    P_RC(mproc_lock_open(shm, "lock", &l), 0);
    P_RC(mproc_rlock_open(shm, "rlock", &rl), 0);
    P_RC(mproc_semaphore_open(shm, "sem", &s), 0);
    P_RC(mproc_condition_open(shm, "cond", &cv), 0);
    P_RC(mproc_event_open(shm, "event", &ev), 0);
    P_RC(mproc_barrier_open(shm, "barrier", &b), 0);
    P_RC(mproc_array_open(shm, "counters", MPROC_INT64, &cp, &count), 0);
    P_REQ(count == 4);
    volatile int64_t *c = cp;
    /* what the peer can see of the objects' state */
    P_RC((int)mproc_barrier_parties(b), 2);
    P_RC(mproc_semaphore_value(s), 1);
    P_RC(mproc_event_is_set(ev), 0);
    P_REQ(mproc_condition_lock(cv) != NULL);
    /* names of another type, unknown names */
    mproc_lock_t *wrong = NULL;
    P_RC(mproc_lock_open(shm, "sem", &wrong), MPROC_ETYPE);
    P_RC(mproc_lock_open(shm, "missing", &wrong), -ENOENT);
    mproc_shm_t *none = NULL;
    P_RC(mproc_shm_open(&none, "mproc-peer-no-such-segment"), -ENOENT);

    int idx = mproc_barrier_wait(b, T_MS);
    P_REQ(idx == 0 || idx == 1);
    for (int i = 0; i < PEER_LOCK_ITERS; i++) {
        P_RC(mproc_lock_acquire(l, T_MS), 0);
        c[0] = c[0] + 1;
        P_RC(mproc_lock_release(l), 0);
    }
    for (int i = 0; i < PEER_RLOCK_ITERS; i++) {
        P_RC(mproc_rlock_acquire(rl, T_MS), 0);
        P_RC(mproc_rlock_acquire(rl, 0), 0);
        c[1] = c[1] + 1;
        P_RC(mproc_rlock_release(rl), 0);
        P_RC(mproc_rlock_release(rl), 0);
    }
    for (int i = 0; i < PEER_SEM_ITERS; i++) {
        P_RC(mproc_semaphore_acquire(s, T_MS), 0);
        c[2] = c[2] + 1;
        P_RC(mproc_semaphore_release(s), 0);
    }
    idx = mproc_barrier_wait(b, T_MS);
    P_REQ(idx == 0 || idx == 1);
    P_REQ(c[0] == 2 * PEER_LOCK_ITERS);
    P_REQ(c[1] == 2 * PEER_RLOCK_ITERS);
    P_REQ(c[2] == 2 * PEER_SEM_ITERS);

    /* wait for the test's word on the condition, answer on the event */
    mproc_lock_t *cl = mproc_condition_lock(cv);
    P_RC(mproc_lock_acquire(cl, T_MS), 0);
    while (c[3] != 1)
        P_RC(mproc_condition_wait(cv, T_MS), 0);
    c[3] = 2;
    P_RC(mproc_lock_release(cl), 0);
    P_RC(mproc_event_set(ev), 0);
    P_RC(mproc_shm_close(shm), 0);
    return 0;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    if (argc != 2) {
        fprintf(stderr, "usage: shm_peer NAME\n");
        return 2;
    }
    int code = run(argv[1]);
    int rc = mproc_tracker_stop(T_MS);
    if (rc != 0) {
        fprintf(stderr, "shm_peer: mproc_tracker_stop: %d (%s)\n", rc, mproc_strerror(rc));
        if (code == 0)
            code = 3;
    }
    return code;
}
