/*
 * synctest.h - what test_sync.c and test_robust.c share: the argument every
 * child gets (a segment reference, object offsets, pipes), starting a child
 * with the segment handed over, attaching in the child, and checks usable
 * inside a child (which report on stderr and exit non-zero).
 */
#ifndef MPROC_SYNCTEST_H
#define MPROC_SYNCTEST_H

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

#define SEG_SIZE (256u * 1024u)
#define NOFF 10

/* ------------------------------------------------------------------ helpers */

/* What every child here is given: the segment, object offsets, pipes. */
typedef struct {
    mproc_shm_ref_t ref;
    uint64_t off[NOFF];
    int64_t n;
    int kind;
    int idx;
    int nthr; /* threads, where a child runs several */
    int fd_w; /* child -> parent pipe (write end), or -1 */
    int fd_r; /* parent -> child pipe (read end), or -1 */
} carg_t;

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* In a child: report and return a non-zero exit status. */
#define C_REQ(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  child %d %s:%d: check failed: %s\n", (int)getpid(), __FILE__,       \
                    __LINE__, #cond);                                                              \
            return 100;                                                                            \
        }                                                                                          \
    } while (0)
#define C_RC(expr, want)                                                                           \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != (want)) {                                                                       \
            fprintf(stderr, "  child %d %s:%d: %s = %d (%s), want %d (%s)\n", (int)getpid(),       \
                    __FILE__, __LINE__, #expr, rc_, mproc_strerror(rc_), (int)(want),              \
                    mproc_strerror(want));                                                         \
            return 101;                                                                            \
        }                                                                                          \
    } while (0)

static inline void carg_init(carg_t *a, mproc_shm_t *shm)
{
    memset(a, 0, sizeof *a);
    a->fd_w = a->fd_r = -1;
    TU_CHECK_OK(mproc_shm_ref(shm, &a->ref));
}

static inline void off_of(mproc_shm_t *shm, const void *obj, uint64_t *off)
{
    TU_CHECK_OK(mproc_shm_offset(shm, obj, off));
}

/* create + pass_shm + pass the pipes + start; NULL (reported) on failure. */
static inline mproc_process_t *start_child(mproc_start_method_t m, mproc_entry_fn fn,
                                           const carg_t *a, mproc_shm_t *shm)
{
    mproc_process_opts_t o = {.method = m};
    mproc_process_t *p = NULL;
    if (!TU_CHECK_OK(mproc_process_create(&p, fn, a, sizeof *a, &o)))
        return NULL;
    int rc = mproc_process_pass_shm(p, shm);
    if (rc == 0 && a->fd_w >= 0)
        rc = mproc_process_pass_fd(p, a->fd_w);
    if (rc == 0 && a->fd_r >= 0)
        rc = mproc_process_pass_fd(p, a->fd_r);
    if (rc == 0)
        rc = mproc_process_start(p);
    if (!TU_CHECK_OK(rc)) {
        mproc_process_free(p);
        return NULL;
    }
    return p;
}

/* Join (TU_T_MS) and free; kill first if it is still running. Exit code or
 * TU_NO_CODE. NULL gives TU_NO_CODE. */
static inline int join_free(mproc_process_t *p)
{
    if (!p)
        return TU_NO_CODE;
    return tu_join_free(p);
}

/* In a child: the arg and the segment. */
static inline int c_attach(const void *arg, size_t len, carg_t *a, mproc_shm_t **shm)
{
    if (len != sizeof *a || !arg)
        return -EINVAL;
    memcpy(a, arg, sizeof *a);
    return mproc_shm_attach(shm, &a->ref);
}

static inline int c_at(mproc_shm_t *shm, uint64_t off, mproc_obj_type_t t, void *out)
{
    return mproc_shm_at(shm, off, t, (void **)out);
}

/* Wait (polling a snapshot, bounded) until n parties wait at b. */
static inline int wait_n_waiting(mproc_barrier_t *b, unsigned n)
{
    int64_t end = tu_now_ms() + TU_T_MS;
    while (mproc_barrier_n_waiting(b) != n) {
        if (tu_now_ms() > end)
            return 0;
        sched_yield();
    }
    return 1;
}

/* Index in procs[0..n) of a child that has exited within timeout_ms (NULL
 * entries skipped), or -1. */
static inline int wait_any_exit(mproc_process_t **procs, int n, int timeout_ms)
{
    struct pollfd pf[16];
    int map[16], k = 0;
    for (int i = 0; i < n && k < 16; i++) {
        if (!procs[i])
            continue;
        pf[k].fd = mproc_process_fd(procs[i]);
        pf[k].events = POLLIN;
        map[k++] = i;
    }
    int64_t end = tu_now_ms() + timeout_ms;
    for (;;) {
        int left = (int)(end - tu_now_ms());
        if (left < 0)
            return -1;
        int r = poll(pf, (nfds_t)k, left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        for (int j = 0; j < k; j++)
            if (pf[j].revents)
                return map[j];
    }
}

/* Wait (bounded) until every child in p[0..n) (NULL skipped) sleeps in
 * the kernel (state S): for a waiter, inside the condition's futex wait. */
static inline int wait_sleeping(mproc_process_t **p, int n)
{
    int64_t end = tu_now_ms() + TU_T_MS;
    for (int i = 0; i < n; i++) {
        if (!p[i])
            continue;
        for (;;) {
            pid_t ppid;
            char state = '?';
            if (tu_proc_stat(mproc_process_pid(p[i]), &ppid, &state) == 0 && state == 'S')
                break;
            if (tu_now_ms() > end)
                return 0;
            sched_yield();
        }
    }
    return 1;
}

#endif
