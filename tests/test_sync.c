/*
 * test_sync.c - the process-shared synchronisation objects (P8): lock,
 * rlock, semaphore, condition, event, barrier. Exact counts under
 * contention from several processes, the documented error codes, timeouts
 * measured on the monotonic clock, wake-ups across processes under every
 * start method, named objects reached from an unrelated executable
 * (tests/shm_peer.c), and bad input.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mproc.h"
#include "synctest.h"
#include "testutil.h"

extern char **environ;

/* ------------------------------------------------------------------ exact counts */

enum { K_LOCK, K_RLOCK, K_SEM, K_BSEM };

static mproc_obj_type_t kind_type(int kind)
{
    switch (kind) {
    case K_LOCK:
        return MPROC_OBJ_LOCK;
    case K_RLOCK:
        return MPROC_OBJ_RLOCK;
    default:
        return MPROC_OBJ_SEMAPHORE;
    }
}

static int kind_acquire(int kind, void *o)
{
    switch (kind) {
    case K_LOCK:
        return mproc_lock_acquire(o, TU_T_MS);
    case K_RLOCK:
        return mproc_rlock_acquire(o, TU_T_MS);
    default:
        return mproc_semaphore_acquire(o, TU_T_MS);
    }
}

static int kind_release(int kind, void *o)
{
    switch (kind) {
    case K_LOCK:
        return mproc_lock_release(o);
    case K_RLOCK:
        return mproc_rlock_release(o);
    default:
        return mproc_semaphore_release(o);
    }
}

typedef struct {
    int kind, idx;
    int64_t n;
    void *obj;
    volatile int64_t *counter;
    int rc;
} count_job_t;

static int count_loop(count_job_t *j)
{
    for (int64_t i = 0; i < j->n; i++) {
        /* rlock: odd workers take it twice on every other increment */
        int twice = j->kind == K_RLOCK && (j->idx & 1) && (i & 1);
        C_RC(kind_acquire(j->kind, j->obj), 0);
        if (twice)
            C_RC(kind_acquire(j->kind, j->obj), 0);
        int64_t v = *j->counter; /* plain read-modify-write: races lose counts */
        *j->counter = v + 1;
        if (twice)
            C_RC(kind_release(j->kind, j->obj), 0);
        C_RC(kind_release(j->kind, j->obj), 0);
    }
    return 0;
}

static void *count_thread(void *p)
{
    count_job_t *j = p;
    j->rc = count_loop(j);
    return NULL;
}

/* off[0] the object, off[1] the counter, off[2] the start event; a.nthr
 * threads (1: this one) of a.n increments each. */
static int entry_count(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    void *obj, *cp;
    mproc_event_t *go;
    C_RC(c_at(shm, a.off[0], kind_type(a.kind), &obj), 0);
    C_RC(c_at(shm, a.off[1], MPROC_OBJ_BYTES, &cp), 0);
    C_RC(c_at(shm, a.off[2], MPROC_OBJ_EVENT, &go), 0);
    C_RC(mproc_event_wait(go, TU_T_MS), 0);
    count_job_t j[4];
    pthread_t th[4];
    int nthr = a.nthr < 1 ? 1 : a.nthr > 4 ? 4 : a.nthr;
    for (int t = 0; t < nthr; t++)
        j[t] = (count_job_t){a.kind, a.idx * 4 + t, a.n, obj, cp, 0};
    for (int t = 1; t < nthr; t++)
        C_RC(pthread_create(&th[t], NULL, count_thread, &j[t]), 0);
    int rc = count_loop(&j[0]);
    for (int t = 1; t < nthr; t++) {
        pthread_join(th[t], NULL);
        if (rc == 0)
            rc = j[t].rc;
    }
    C_RC(rc, 0);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

#define COUNT_PROCS 4
#define COUNT_ITERS 100000

/* COUNT_PROCS workers (nthr threads in each of COUNT_PROCS / nthr
 * processes) x COUNT_ITERS increments. */
static void run_count_thr(int kind, mproc_start_method_t m, int nthr)
{
    tu_context("method=%s kind=%d threads=%d", tu_method_name(m), kind, nthr);
    int nproc = COUNT_PROCS / nthr;
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    void *obj = NULL, *cp = NULL;
    mproc_event_t *go = NULL;
    int rc;
    switch (kind) {
    case K_LOCK:
        rc = mproc_lock_create(shm, NULL, (mproc_lock_t **)&obj);
        break;
    case K_RLOCK:
        rc = mproc_rlock_create(shm, NULL, (mproc_rlock_t **)&obj);
        break;
    case K_SEM:
        rc = mproc_semaphore_create(shm, NULL, 1, 0, (mproc_semaphore_t **)&obj);
        break;
    default:
        rc = mproc_semaphore_create(shm, NULL, 1, 1, (mproc_semaphore_t **)&obj);
        break;
    }
    TU_CHECK_OK(rc);
    TU_CHECK_OK(mproc_shm_alloc(shm, sizeof(int64_t), NULL, &cp));
    TU_CHECK_OK(mproc_event_create(shm, NULL, &go));
    if (tu_failed) {
        mproc_shm_close(shm);
        return;
    }
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, obj, &a.off[0]);
    off_of(shm, cp, &a.off[1]);
    off_of(shm, go, &a.off[2]);
    a.kind = kind;
    a.n = COUNT_ITERS;
    a.nthr = nthr;
    mproc_process_t *p[COUNT_PROCS] = {0};
    for (int i = 0; i < nproc; i++) {
        a.idx = i;
        p[i] = start_child(m, entry_count, &a, shm);
    }
    int64_t t0 = now_ns();
    TU_CHECK_OK(mproc_event_set(go)); /* all started: they contend from here */
    int started = 0;
    for (int i = 0; i < nproc; i++) {
        if (p[i])
            started++;
        TU_CHECK_EQ_INT(join_free(p[i]), 0);
    }
    int64_t t1 = now_ns();
    if (getenv("TU_VERBOSE"))
        fprintf(stderr, "  count kind=%d method=%s: %.1f ms\n", kind, tu_method_name(m),
                (double)(t1 - t0) / 1e6);
    TU_CHECK_EQ_INT(started, nproc);
    TU_CHECK_EQ_INT(*(volatile int64_t *)cp, (int64_t)COUNT_PROCS * COUNT_ITERS);
    /* the object is free again */
    if (kind == K_LOCK) {
        TU_CHECK_OK(mproc_lock_acquire(obj, 0));
        TU_CHECK_OK(mproc_lock_release(obj));
    } else if (kind == K_RLOCK) {
        TU_CHECK_OK(mproc_rlock_acquire(obj, 0));
        TU_CHECK_OK(mproc_rlock_release(obj));
    } else {
        TU_CHECK_EQ_INT(mproc_semaphore_value(obj), 1);
    }
    TU_CHECK_OK(mproc_shm_close(shm));
}

static void run_count(int kind, mproc_start_method_t m)
{
    run_count_thr(kind, m, 1);
}

static void count_lock(mproc_start_method_t m)
{
    run_count(K_LOCK, m);
}
TU_DEFINE_METHOD_CASES(count_lock)

static void test_count_rlock_forkserver(void)
{
    run_count(K_RLOCK, MPROC_START_FORKSERVER);
}

/* 2 processes x 2 threads: owners are threads, not processes */
static void test_count_lock_threads_fork(void)
{
    run_count_thr(K_LOCK, MPROC_START_FORK, 2);
}

static void test_count_rlock_threads_spawn(void)
{
    run_count_thr(K_RLOCK, MPROC_START_SPAWN, 2);
}

static void test_count_semaphore_fork(void)
{
    run_count(K_SEM, MPROC_START_FORK);
}

static void test_count_bounded_semaphore_spawn(void)
{
    run_count(K_BSEM, MPROC_START_SPAWN);
}

/* ------------------------------------------------------------------ lock */

typedef struct {
    void *obj;
    int rc_release;
    int rc_acquire;
    int rc_timed;
    int64_t timed_ns;
    int rc_extra;
} thr_t;

static void *thr_lock_other(void *p)
{
    thr_t *t = p;
    t->rc_release = mproc_lock_release(t->obj);
    t->rc_acquire = mproc_lock_acquire(t->obj, 0);
    int64_t t0 = now_ns();
    t->rc_timed = mproc_lock_acquire(t->obj, 30);
    t->timed_ns = now_ns() - t0;
    return NULL;
}

static void test_lock_owner_errors(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    if (l) {
        TU_CHECK_EQ_INT(mproc_lock_release(l), -EPERM); /* nobody holds it */
        TU_CHECK_OK(mproc_lock_acquire(l, 0));
        TU_CHECK_EQ_INT(mproc_lock_acquire(l, 0), -EDEADLK);
        TU_CHECK_EQ_INT(mproc_lock_acquire(l, 50), -EDEADLK);
        TU_CHECK_EQ_INT(mproc_lock_acquire(l, MPROC_FOREVER), -EDEADLK);
        /* another thread: not the owner */
        thr_t t = {.obj = l};
        pthread_t th;
        TU_CHECK_EQ_INT(pthread_create(&th, NULL, thr_lock_other, &t), 0);
        pthread_join(th, NULL);
        TU_CHECK_EQ_INT(t.rc_release, -EPERM);
        TU_CHECK_EQ_INT(t.rc_acquire, -ETIMEDOUT);
        TU_CHECK_EQ_INT(t.rc_timed, -ETIMEDOUT);
        TU_CHECK(t.timed_ns >= 30 * 1000000LL);
        /* still ours after all that */
        TU_CHECK_EQ_INT(mproc_lock_acquire(l, 0), -EDEADLK);
        TU_CHECK_OK(mproc_lock_release(l));
        TU_CHECK_EQ_INT(mproc_lock_release(l), -EPERM);
        TU_CHECK_OK(mproc_lock_acquire(l, MPROC_FOREVER));
        TU_CHECK_OK(mproc_lock_release(l));
    }
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* off[0] lock, off[1] event "child tried", off[2] event "child holds",
 * off[3] event "parent done". */
static int entry_lock_cross(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_lock_t *l;
    mproc_event_t *tried, *holds, *done;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_LOCK, &l), 0);
    C_RC(c_at(shm, a.off[1], MPROC_OBJ_EVENT, &tried), 0);
    C_RC(c_at(shm, a.off[2], MPROC_OBJ_EVENT, &holds), 0);
    C_RC(c_at(shm, a.off[3], MPROC_OBJ_EVENT, &done), 0);
    /* the parent holds it */
    C_RC(mproc_lock_release(l), -EPERM);
    C_RC(mproc_lock_acquire(l, 0), -ETIMEDOUT);
    int64_t t0 = now_ns();
    C_RC(mproc_lock_acquire(l, 50), -ETIMEDOUT);
    int64_t el = now_ns() - t0;
    C_REQ(el >= 50 * 1000000LL);
    C_REQ(el < 5000 * 1000000LL);
    C_RC(mproc_event_set(tried), 0);
    C_RC(mproc_lock_acquire(l, TU_T_MS), 0); /* the parent releases it */
    C_RC(mproc_event_set(holds), 0);
    C_RC(mproc_event_wait(done, TU_T_MS), 0);
    C_RC(mproc_lock_release(l), 0);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

static void lock_cross_process(mproc_start_method_t m)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    mproc_event_t *ev[3] = {0};
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    for (int i = 0; i < 3; i++)
        TU_CHECK_OK(mproc_event_create(shm, NULL, &ev[i]));
    if (tu_failed) {
        mproc_shm_close(shm);
        return;
    }
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, l, &a.off[0]);
    for (int i = 0; i < 3; i++)
        off_of(shm, ev[i], &a.off[1 + i]);
    TU_CHECK_OK(mproc_lock_acquire(l, 0));
    mproc_process_t *p = start_child(m, entry_lock_cross, &a, shm);
    if (p) {
        TU_CHECK_OK(mproc_event_wait(ev[0], TU_T_MS));
        TU_CHECK_OK(mproc_lock_release(l));
        TU_CHECK_OK(mproc_event_wait(ev[1], TU_T_MS));
        /* now the child holds it */
        TU_CHECK_EQ_INT(mproc_lock_acquire(l, 0), -ETIMEDOUT);
        int64_t t0 = now_ns();
        TU_CHECK_EQ_INT(mproc_lock_acquire(l, 50), -ETIMEDOUT);
        int64_t el = now_ns() - t0;
        TU_CHECK(el >= 50 * 1000000LL);
        TU_CHECK(el < 5000 * 1000000LL);
        TU_CHECK_EQ_INT(mproc_lock_release(l), -EPERM);
        TU_CHECK_OK(mproc_event_set(ev[2]));
        TU_CHECK_OK(mproc_lock_acquire(l, TU_T_MS)); /* the child lets go */
        TU_CHECK_OK(mproc_lock_release(l));
    } else {
        mproc_lock_release(l);
    }
    TU_CHECK_EQ_INT(join_free(p), 0);
    TU_CHECK_OK(mproc_shm_close(shm));
}
TU_DEFINE_METHOD_CASES(lock_cross_process)

/* ------------------------------------------------------------------ rlock */

static void *thr_rlock_other(void *p)
{
    thr_t *t = p;
    t->rc_release = mproc_rlock_release(t->obj);
    t->rc_acquire = mproc_rlock_acquire(t->obj, 0);
    return NULL;
}

/* off[0] rlock. Protocol on the pipes: for each byte from the parent the
 * child polls the rlock and answers 'b' (busy) or 'f' (got it, released);
 * 'w' makes it wait for it (TU_T_MS) and answer 'g'. */
static int entry_rlock_probe(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_rlock_t *l;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_RLOCK, &l), 0);
    C_RC(mproc_rlock_release(l), -EPERM); /* held by the parent */
    for (;;) {
        char c;
        ssize_t n = tu_read_full(a.fd_r, &c, 1, TU_T_MS);
        if (n == 0)
            break;
        C_REQ(n == 1);
        if (c == 'p') {
            int rc = mproc_rlock_acquire(l, 0);
            C_REQ(rc == 0 || rc == -ETIMEDOUT);
            if (rc == 0)
                C_RC(mproc_rlock_release(l), 0);
            C_RC(tu_write_full(a.fd_w, rc == 0 ? "f" : "b", 1), 0);
        } else {
            C_RC(mproc_rlock_acquire(l, TU_T_MS), 0);
            C_RC(mproc_rlock_acquire(l, 0), 0);
            C_RC(mproc_rlock_release(l), 0);
            C_RC(mproc_rlock_release(l), 0);
            C_RC(tu_write_full(a.fd_w, "g", 1), 0);
        }
    }
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

static char probe(int wfd, int rfd, char cmd)
{
    char c = '?';
    if (!TU_CHECK_OK(tu_write_full(wfd, &cmd, 1)))
        return '?';
    TU_CHECK_EQ_INT(tu_read_full(rfd, &c, 1, TU_T_MS), 1);
    return c;
}

static void test_rlock(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_rlock_t *l = NULL;
    TU_CHECK_OK(mproc_rlock_create(shm, NULL, &l));
    if (!l) {
        mproc_shm_close(shm);
        return;
    }
    /* recursion depth */
    enum { DEPTH = 50 };
    for (int i = 0; i < DEPTH; i++)
        TU_CHECK_OK(mproc_rlock_acquire(l, 0));
    /* another thread: not the owner, cannot take it */
    thr_t t = {.obj = l};
    pthread_t th;
    TU_CHECK_EQ_INT(pthread_create(&th, NULL, thr_rlock_other, &t), 0);
    pthread_join(th, NULL);
    TU_CHECK_EQ_INT(t.rc_release, -EPERM);
    TU_CHECK_EQ_INT(t.rc_acquire, -ETIMEDOUT);
    for (int i = 0; i < DEPTH; i++)
        TU_CHECK_OK(mproc_rlock_release(l));
    TU_CHECK_EQ_INT(mproc_rlock_release(l), -EPERM);

    /* another process is kept out until the last release */
    int down[2], up[2];
    TU_REQUIRE(tu_pipe(down) == 0);
    if (tu_pipe(up) != 0) {
        close(down[0]);
        close(down[1]);
        return;
    }
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, l, &a.off[0]);
    a.fd_r = down[0];
    a.fd_w = up[1];
    for (int i = 0; i < 3; i++)
        TU_CHECK_OK(mproc_rlock_acquire(l, 0));
    mproc_process_t *p = start_child(MPROC_START_FORKSERVER, entry_rlock_probe, &a, shm);
    close(down[0]);
    close(up[1]);
    if (p) {
        TU_CHECK_EQ_INT(probe(down[1], up[0], 'p'), 'b');
        TU_CHECK_OK(mproc_rlock_release(l));
        TU_CHECK_EQ_INT(probe(down[1], up[0], 'p'), 'b');
        TU_CHECK_OK(mproc_rlock_release(l));
        TU_CHECK_EQ_INT(probe(down[1], up[0], 'p'), 'b');
        TU_CHECK_OK(mproc_rlock_release(l));
        TU_CHECK_EQ_INT(probe(down[1], up[0], 'p'), 'f');
        /* and the other way round: the parent waits for the child */
        TU_CHECK_OK(mproc_rlock_acquire(l, 0));
        TU_CHECK_OK(tu_write_full(down[1], "w", 1));
        TU_CHECK_OK(mproc_rlock_release(l));
        char c = 0;
        TU_CHECK_EQ_INT(tu_read_full(up[0], &c, 1, TU_T_MS), 1);
        TU_CHECK_EQ_INT(c, 'g');
    } else {
        for (int i = 0; i < 3; i++)
            mproc_rlock_release(l);
    }
    close(down[1]); /* EOF ends the child */
    TU_CHECK_EQ_INT(join_free(p), 0);
    close(up[0]);
    TU_CHECK_OK(mproc_rlock_acquire(l, 0));
    TU_CHECK_OK(mproc_rlock_release(l));
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ semaphore */

/* off[0] semaphore: acquire (TU_T_MS) a.n units. */
static int entry_sem_take(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_semaphore_t *s;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_SEMAPHORE, &s), 0);
    if (a.fd_w >= 0)
        C_RC(tu_write_full(a.fd_w, "r", 1), 0);
    for (int64_t i = 0; i < a.n; i++)
        C_RC(mproc_semaphore_acquire(s, TU_T_MS), 0);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

static void test_semaphore(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_semaphore_t *s = NULL, *b = NULL;
    TU_CHECK_OK(mproc_semaphore_create(shm, NULL, 2, 0, &s));
    TU_CHECK_OK(mproc_semaphore_create(shm, NULL, 1, 2, &b));
    if (!s || !b) {
        mproc_shm_close(shm);
        return;
    }
    TU_CHECK_EQ_INT(mproc_semaphore_value(s), 2);
    TU_CHECK_OK(mproc_semaphore_acquire(s, 0));
    TU_CHECK_EQ_INT(mproc_semaphore_value(s), 1);
    TU_CHECK_OK(mproc_semaphore_acquire(s, TU_T_MS));
    TU_CHECK_EQ_INT(mproc_semaphore_value(s), 0);
    TU_CHECK_EQ_INT(mproc_semaphore_acquire(s, 0), -ETIMEDOUT);
    int64_t t0 = now_ns();
    TU_CHECK_EQ_INT(mproc_semaphore_acquire(s, 50), -ETIMEDOUT);
    int64_t el = now_ns() - t0;
    TU_CHECK(el >= 50 * 1000000LL);
    TU_CHECK(el < 5000 * 1000000LL);
    TU_CHECK_EQ_INT(mproc_semaphore_value(s), 0);
    /* unbounded: no owner, anyone releases, past the initial value */
    for (int i = 0; i < 5; i++)
        TU_CHECK_OK(mproc_semaphore_release(s));
    TU_CHECK_EQ_INT(mproc_semaphore_value(s), 5);

    /* bounded (1, max 2) */
    TU_CHECK_EQ_INT(mproc_semaphore_value(b), 1);
    TU_CHECK_OK(mproc_semaphore_release(b));
    TU_CHECK_EQ_INT(mproc_semaphore_value(b), 2);
    TU_CHECK_EQ_INT(mproc_semaphore_release(b), -EOVERFLOW);
    TU_CHECK_EQ_INT(mproc_semaphore_value(b), 2);
    TU_CHECK_EQ_INT(mproc_semaphore_release(b), -EOVERFLOW);
    TU_CHECK_EQ_INT(mproc_semaphore_value(b), 2);
    TU_CHECK_OK(mproc_semaphore_acquire(b, 0));
    TU_CHECK_OK(mproc_semaphore_acquire(b, 0));
    TU_CHECK_EQ_INT(mproc_semaphore_acquire(b, 0), -ETIMEDOUT);
    TU_CHECK_EQ_INT(mproc_semaphore_value(b), 0);

    /* a process blocked on 0 is woken by each release */
    int up[2];
    TU_REQUIRE(tu_pipe(up) == 0);
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, b, &a.off[0]);
    a.n = 2;
    a.fd_w = up[1];
    mproc_process_t *p = start_child(MPROC_START_FORK, entry_sem_take, &a, shm);
    close(up[1]);
    char c;
    TU_CHECK_EQ_INT(tu_read_full(up[0], &c, 1, TU_T_MS), 1);
    TU_CHECK_OK(mproc_semaphore_release(b));
    TU_CHECK_OK(mproc_semaphore_release(b));
    TU_CHECK_EQ_INT(join_free(p), 0);
    TU_CHECK_EQ_INT(mproc_semaphore_value(b), 0);
    close(up[0]);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ condition */

typedef struct {
    int64_t tokens;  /* notify(n) tests: units waiters consume */
    int64_t go;      /* notify_all tests: the flag waiters wait for */
    int64_t woken;   /* waiters done */
    int64_t waiting; /* waiters that reached wait */
    int64_t wakeups; /* returns from wait */
} cstate_t;

/* off[0] condition, off[1] cstate. kind 0: consume a token; 1: wait for go.
 * Writes a byte on fd_w while holding the lock, just before its first wait. */
static int entry_cond_waiter(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_condition_t *cv;
    void *sp;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_CONDITION, &cv), 0);
    C_RC(c_at(shm, a.off[1], MPROC_OBJ_BYTES, &sp), 0);
    volatile cstate_t *st = sp;
    mproc_lock_t *l = mproc_condition_lock(cv);
    C_REQ(l != NULL);
    C_RC(mproc_lock_acquire(l, TU_T_MS), 0);
    st->waiting++;
    C_RC(tu_write_full(a.fd_w, "r", 1), 0);
    if (a.kind == 0) {
        while (st->tokens == 0) {
            C_RC(mproc_condition_wait(cv, TU_T_MS), 0);
            st->wakeups++;
        }
        st->tokens--;
    } else {
        while (!st->go) /* no timeout: the join's bound catches a lost wake-up */
            C_RC(mproc_condition_wait(cv, MPROC_FOREVER), 0);
    }
    st->woken++;
    C_RC(mproc_lock_release(l), 0);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

#define NWAITERS 3

/* Start NWAITERS waiters of `kind` and return once all are inside wait
 * (they write while holding the lock; the lock is free again only once
 * each has released it in wait). */
static int start_waiters(mproc_start_method_t m, mproc_shm_t *shm, mproc_condition_t *cv, void *st,
                         int kind, mproc_process_t **p, int n)
{
    int up[2];
    if (tu_pipe(up) != 0)
        return 0;
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, cv, &a.off[0]);
    off_of(shm, st, &a.off[1]);
    a.kind = kind;
    a.fd_w = up[1];
    int ok = 1;
    for (int i = 0; i < n; i++) {
        p[i] = start_child(m, entry_cond_waiter, &a, shm);
        ok &= p[i] != NULL;
    }
    close(up[1]);
    char buf[16];
    if (ok)
        ok = TU_CHECK_EQ_INT(tu_read_full(up[0], buf, (size_t)n, TU_T_MS), n);
    close(up[0]);
    mproc_lock_t *l = mproc_condition_lock(cv);
    if (ok && TU_CHECK_OK(mproc_lock_acquire(l, TU_T_MS))) {
        TU_CHECK_EQ_INT(((cstate_t *)st)->waiting, n);
        TU_CHECK_OK(mproc_lock_release(l));
    }
    return ok;
}

static void test_condition_notify_one(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_condition_t *cv = NULL;
    void *sp = NULL;
    TU_CHECK_OK(mproc_condition_create(shm, NULL, NULL, &cv)); /* its own lock */
    TU_CHECK_OK(mproc_shm_alloc(shm, sizeof(cstate_t), NULL, &sp));
    if (tu_failed) {
        mproc_shm_close(shm);
        return;
    }
    volatile cstate_t *st = sp;
    mproc_lock_t *l = mproc_condition_lock(cv);
    TU_CHECK(l != NULL);
    mproc_process_t *p[NWAITERS] = {0};
    if (start_waiters(MPROC_START_FORK, shm, cv, sp, 0, p, NWAITERS)) {
        /* All asleep in the kernel: nothing but a notify wakes them, so
         * notify(n) wakes exactly n (no spurious wake-up source is left). */
        TU_CHECK(wait_sleeping(p, NWAITERS));
        /* one token, notify(1): one waiter leaves, the others stay */
        TU_CHECK_OK(mproc_lock_acquire(l, TU_T_MS));
        st->tokens = 1;
        TU_CHECK_OK(mproc_condition_notify(cv, 1));
        TU_CHECK_OK(mproc_lock_release(l));
        int i = wait_any_exit(p, NWAITERS, TU_T_MS);
        TU_CHECK(i >= 0);
        if (i >= 0) {
            TU_CHECK_EQ_INT(join_free(p[i]), 0);
            p[i] = NULL;
        }
        TU_CHECK(wait_sleeping(p, NWAITERS)); /* the others are back asleep */
        TU_CHECK_OK(mproc_lock_acquire(l, TU_T_MS));
        TU_CHECK_EQ_INT(st->woken, 1);
        TU_CHECK_EQ_INT(st->tokens, 0);
        TU_CHECK_EQ_INT(st->wakeups, 1); /* notify(1) woke one */
        /* two tokens, notify(2): both remaining waiters leave */
        st->tokens = 2;
        TU_CHECK_OK(mproc_condition_notify(cv, 2));
        TU_CHECK_OK(mproc_lock_release(l));
    }
    for (int i = 0; i < NWAITERS; i++)
        if (p[i])
            TU_CHECK_EQ_INT(join_free(p[i]), 0);
    TU_CHECK_EQ_INT(st->woken, NWAITERS);
    TU_CHECK_EQ_INT(st->tokens, 0);
    TU_CHECK_EQ_INT(st->wakeups, NWAITERS); /* and notify(2) two */
    TU_CHECK_OK(mproc_shm_close(shm));
}

static void condition_notify_all(mproc_start_method_t m)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    mproc_condition_t *cv = NULL;
    void *sp = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    TU_CHECK_OK(mproc_condition_create(shm, NULL, l, &cv)); /* a given lock */
    TU_CHECK_OK(mproc_shm_alloc(shm, sizeof(cstate_t), NULL, &sp));
    if (tu_failed) {
        mproc_shm_close(shm);
        return;
    }
    TU_CHECK(mproc_condition_lock(cv) == l);
    volatile cstate_t *st = sp;
    mproc_process_t *p[NWAITERS] = {0};
    if (start_waiters(m, shm, cv, sp, 1, p, NWAITERS)) {
        TU_CHECK_OK(mproc_lock_acquire(l, TU_T_MS));
        st->go = 1;
        TU_CHECK_OK(mproc_condition_notify_all(cv));
        TU_CHECK_OK(mproc_lock_release(l));
    }
    for (int i = 0; i < NWAITERS; i++)
        TU_CHECK_EQ_INT(join_free(p[i]), 0);
    TU_CHECK_EQ_INT(st->woken, NWAITERS);
    TU_CHECK_OK(mproc_shm_close(shm));
}
TU_DEFINE_METHOD_CASES(condition_notify_all)

static void *thr_cond_other(void *p)
{
    thr_t *t = p;
    t->rc_release = mproc_condition_notify(t->obj, 1);  /* not the holder */
    t->rc_acquire = mproc_condition_notify_all(t->obj); /* not the holder */
    t->rc_timed = mproc_condition_wait(t->obj, 10);     /* not the holder */
    t->rc_extra = mproc_lock_acquire(mproc_condition_lock(t->obj), 0);
    return NULL;
}

static void test_condition_timeout_and_perm(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_condition_t *cv = NULL;
    TU_CHECK_OK(mproc_condition_create(shm, NULL, NULL, &cv));
    if (!cv) {
        mproc_shm_close(shm);
        return;
    }
    mproc_lock_t *l = mproc_condition_lock(cv);
    TU_CHECK(l != NULL);
    /* without the lock */
    TU_CHECK_EQ_INT(mproc_condition_notify(cv, 1), -EPERM);
    TU_CHECK_EQ_INT(mproc_condition_notify_all(cv), -EPERM);
    TU_CHECK_EQ_INT(mproc_condition_wait(cv, 0), -EPERM);
    TU_CHECK_EQ_INT(mproc_condition_wait(cv, 10), -EPERM);
    /* with it: notify with nobody waiting is fine */
    TU_CHECK_OK(mproc_lock_acquire(l, 0));
    TU_CHECK_OK(mproc_condition_notify(cv, 1));
    TU_CHECK_OK(mproc_condition_notify(cv, 5));
    TU_CHECK_OK(mproc_condition_notify_all(cv));
    TU_CHECK_EQ_INT(mproc_condition_notify(cv, 0), -EINVAL);
    /* another thread of this process is not the holder */
    thr_t t = {.obj = cv};
    pthread_t th;
    TU_CHECK_EQ_INT(pthread_create(&th, NULL, thr_cond_other, &t), 0);
    pthread_join(th, NULL);
    TU_CHECK_EQ_INT(t.rc_release, -EPERM);
    TU_CHECK_EQ_INT(t.rc_acquire, -EPERM);
    TU_CHECK_EQ_INT(t.rc_timed, -EPERM);
    TU_CHECK_EQ_INT(t.rc_extra, -ETIMEDOUT);
    /* timed wait: -ETIMEDOUT after at least that long, lock held again */
    int64_t t0 = now_ns();
    TU_CHECK_EQ_INT(mproc_condition_wait(cv, 50), -ETIMEDOUT);
    int64_t el = now_ns() - t0;
    TU_CHECK(el >= 50 * 1000000LL);
    TU_CHECK(el < 5000 * 1000000LL);
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, 0), -EDEADLK);
    TU_CHECK_EQ_INT(mproc_condition_wait(cv, 0), -ETIMEDOUT);
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, 0), -EDEADLK);
    memset(&t, 0, sizeof t);
    t.obj = cv;
    TU_CHECK_EQ_INT(pthread_create(&th, NULL, thr_cond_other, &t), 0);
    pthread_join(th, NULL);
    TU_CHECK_EQ_INT(t.rc_extra, -ETIMEDOUT); /* still held by this thread */
    TU_CHECK_OK(mproc_lock_release(l));
    TU_CHECK_EQ_INT(mproc_lock_release(l), -EPERM);

    /* a condition over a given lock uses that one */
    mproc_lock_t *l2 = NULL;
    mproc_condition_t *cv2 = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, "given", &l2));
    TU_CHECK_OK(mproc_condition_create(shm, "cv2", l2, &cv2));
    if (cv2) {
        TU_CHECK(mproc_condition_lock(cv2) == l2);
        TU_CHECK(mproc_condition_lock(cv2) != l);
        TU_CHECK_OK(mproc_lock_acquire(l, 0));
        TU_CHECK_EQ_INT(mproc_condition_notify(cv2, 1), -EPERM); /* wrong lock held */
        TU_CHECK_OK(mproc_lock_release(l));
        TU_CHECK_OK(mproc_lock_acquire(l2, 0));
        TU_CHECK_OK(mproc_condition_notify(cv2, 1));
        TU_CHECK_EQ_INT(mproc_condition_wait(cv2, 1), -ETIMEDOUT);
        TU_CHECK_EQ_INT(mproc_lock_acquire(l2, 0), -EDEADLK);
        TU_CHECK_OK(mproc_lock_release(l2));
        /* opened by name: the same condition, the same lock */
        mproc_condition_t *cv3 = NULL;
        TU_CHECK_OK(mproc_condition_open(shm, "cv2", &cv3));
        if (cv3)
            TU_CHECK(mproc_condition_lock(cv3) == l2);
    }
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* A bounded buffer: two conditions over one given lock ("not full", "not
 * empty"), producers and consumers in different processes, notify(1) on
 * every put and get. A lost wake-up shows as a wait that times out. */
#define BB_CAP 4
#define BB_ITEMS 10000 /* per producer */

typedef struct {
    int64_t buf[BB_CAP];
    int64_t head, tail; /* head - tail items */
    int64_t sum, got;
} bbuf_t;

/* off[0] not-full, off[1] not-empty, off[2] bbuf. kind 0 produces idx*BB_ITEMS+1
 * .. (idx+1)*BB_ITEMS, kind 1 consumes BB_ITEMS items. */
static int entry_bbuf(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_condition_t *not_full, *not_empty;
    void *sp;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_CONDITION, &not_full), 0);
    C_RC(c_at(shm, a.off[1], MPROC_OBJ_CONDITION, &not_empty), 0);
    C_RC(c_at(shm, a.off[2], MPROC_OBJ_BYTES, &sp), 0);
    C_REQ(mproc_condition_lock(not_full) == mproc_condition_lock(not_empty));
    mproc_lock_t *l = mproc_condition_lock(not_full);
    volatile bbuf_t *bb = sp;
    for (int64_t i = 0; i < BB_ITEMS; i++) {
        C_RC(mproc_lock_acquire(l, TU_T_MS), 0);
        if (a.kind == 0) {
            while (bb->head - bb->tail == BB_CAP)
                C_RC(mproc_condition_wait(not_full, TU_T_MS), 0);
            bb->buf[bb->head % BB_CAP] = (int64_t)a.idx * BB_ITEMS + i + 1;
            bb->head++;
            C_RC(mproc_condition_notify(not_empty, 1), 0);
        } else {
            while (bb->head == bb->tail)
                C_RC(mproc_condition_wait(not_empty, TU_T_MS), 0);
            bb->sum += bb->buf[bb->tail % BB_CAP];
            bb->got++;
            bb->tail++;
            C_RC(mproc_condition_notify(not_full, 1), 0);
        }
        C_RC(mproc_lock_release(l), 0);
    }
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

static void test_condition_bounded_buffer(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    mproc_condition_t *nf = NULL, *ne = NULL;
    void *sp = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    TU_CHECK_OK(mproc_condition_create(shm, NULL, l, &nf));
    TU_CHECK_OK(mproc_condition_create(shm, NULL, l, &ne));
    TU_CHECK_OK(mproc_shm_alloc(shm, sizeof(bbuf_t), NULL, &sp));
    if (tu_failed) {
        mproc_shm_close(shm);
        return;
    }
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, nf, &a.off[0]);
    off_of(shm, ne, &a.off[1]);
    off_of(shm, sp, &a.off[2]);
    enum { NP = 2, NC = 2 };
    mproc_process_t *p[NP + NC];
    int64_t t0 = now_ns();
    for (int i = 0; i < NP + NC; i++) {
        a.kind = i < NP ? 0 : 1;
        a.idx = i < NP ? i : 0;
        p[i] = start_child(i == 1 ? MPROC_START_FORKSERVER : MPROC_START_FORK, entry_bbuf, &a, shm);
    }
    for (int i = 0; i < NP + NC; i++)
        TU_CHECK_EQ_INT(join_free(p[i]), 0);
    if (getenv("TU_VERBOSE"))
        fprintf(stderr, "  bounded buffer: %d items in %.1f ms\n", NP * BB_ITEMS,
                (double)(now_ns() - t0) / 1e6);
    bbuf_t *bb = sp;
    int64_t n = (int64_t)NP * BB_ITEMS;
    TU_CHECK_EQ_INT(bb->got, n);
    TU_CHECK_EQ_INT(bb->sum, n * (n + 1) / 2);
    TU_CHECK_EQ_INT(bb->head, n);
    TU_CHECK_EQ_INT(bb->tail, n);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ event */

/* off[0] event: says ready, then waits for it. kind 1: the event may be
 * cleared again by the time the wait returns. */
static int entry_event_waiter(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_event_t *ev;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_EVENT, &ev), 0);
    C_RC(tu_write_full(a.fd_w, "r", 1), 0);
    C_RC(mproc_event_wait(ev, TU_T_MS), 0);
    if (a.kind == 0)
        C_RC(mproc_event_is_set(ev), 1);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

static void test_event(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_event_t *ev = NULL;
    TU_CHECK_OK(mproc_event_create(shm, NULL, &ev));
    if (!ev) {
        mproc_shm_close(shm);
        return;
    }
    TU_CHECK_EQ_INT(mproc_event_is_set(ev), 0);
    TU_CHECK_EQ_INT(mproc_event_wait(ev, 0), -ETIMEDOUT);
    int64_t t0 = now_ns();
    TU_CHECK_EQ_INT(mproc_event_wait(ev, 50), -ETIMEDOUT);
    int64_t el = now_ns() - t0;
    TU_CHECK(el >= 50 * 1000000LL);
    TU_CHECK(el < 5000 * 1000000LL);
    TU_CHECK_OK(mproc_event_set(ev));
    TU_CHECK_EQ_INT(mproc_event_is_set(ev), 1);
    TU_CHECK_OK(mproc_event_set(ev)); /* idempotent */
    TU_CHECK_EQ_INT(mproc_event_is_set(ev), 1);
    TU_CHECK_OK(mproc_event_wait(ev, 0));
    t0 = now_ns();
    TU_CHECK_OK(mproc_event_wait(ev, TU_T_MS));
    TU_CHECK_OK(mproc_event_wait(ev, MPROC_FOREVER));
    TU_CHECK(now_ns() - t0 < 1000 * 1000000LL); /* at once */
    TU_CHECK_OK(mproc_event_clear(ev));
    TU_CHECK_EQ_INT(mproc_event_is_set(ev), 0);
    TU_CHECK_OK(mproc_event_clear(ev));
    TU_CHECK_EQ_INT(mproc_event_wait(ev, 0), -ETIMEDOUT);

    /* set wakes every waiting process */
    int up[2];
    TU_REQUIRE(tu_pipe(up) == 0);
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, ev, &a.off[0]);
    a.fd_w = up[1];
    enum { N = 4 };
    mproc_process_t *p[N] = {0};
    int ok = 1;
    for (int i = 0; i < N; i++) {
        p[i] = start_child(i & 1 ? MPROC_START_FORKSERVER : MPROC_START_FORK, entry_event_waiter,
                           &a, shm);
        ok &= p[i] != NULL;
    }
    close(up[1]);
    char buf[N];
    if (ok)
        TU_CHECK_EQ_INT(tu_read_full(up[0], buf, N, TU_T_MS), N);
    close(up[0]);
    TU_CHECK_EQ_INT(mproc_event_is_set(ev), 0);
    TU_CHECK_OK(mproc_event_set(ev));
    for (int i = 0; i < N; i++)
        TU_CHECK_EQ_INT(join_free(p[i]), 0);
    TU_CHECK_EQ_INT(mproc_event_is_set(ev), 1);

    /* A set wakes those waiting at the time even if a clear follows before
     * they run (Python's Event.wait returns True then too). */
    TU_CHECK_OK(mproc_event_clear(ev));
    TU_REQUIRE(tu_pipe(up) == 0);
    a.fd_w = up[1];
    a.kind = 1;
    ok = 1;
    for (int i = 0; i < 2; i++) {
        p[i] = start_child(i ? MPROC_START_SPAWN : MPROC_START_FORK, entry_event_waiter, &a, shm);
        ok &= p[i] != NULL;
    }
    close(up[1]);
    if (ok)
        TU_CHECK_EQ_INT(tu_read_full(up[0], buf, 2, TU_T_MS), 2);
    close(up[0]);
    if (ok)
        TU_CHECK(wait_sleeping(p, 2)); /* inside the futex wait */
    TU_CHECK_OK(mproc_event_set(ev));
    TU_CHECK_OK(mproc_event_clear(ev));
    for (int i = 0; i < 2; i++)
        TU_CHECK_EQ_INT(join_free(p[i]), 0);
    TU_CHECK_EQ_INT(mproc_event_is_set(ev), 0);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ barrier */

#define BROUNDS 100 /* more generations than a 64-bit history */

/* off[0] barrier, off[1] int seen[BROUNDS][parties]. a.n rounds. */
static int entry_barrier_rounds(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_barrier_t *b;
    void *sp;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_BARRIER, &b), 0);
    C_RC(c_at(shm, a.off[1], MPROC_OBJ_BYTES, &sp), 0);
    int *seen = sp;
    unsigned parties = mproc_barrier_parties(b);
    for (int64_t r = 0; r < a.n; r++) {
        int idx = mproc_barrier_wait(b, TU_T_MS);
        C_REQ(idx >= 0 && (unsigned)idx < parties);
        __atomic_add_fetch(&seen[r * parties + (unsigned)idx], 1, __ATOMIC_SEQ_CST);
    }
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

/* off[0] barrier: one wait (TU_T_MS; kind 1: MPROC_FOREVER), the result
 * reported on fd_w. */
static int entry_barrier_once(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_barrier_t *b;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_BARRIER, &b), 0);
    int rc = mproc_barrier_wait(b, a.kind == 1 ? MPROC_FOREVER : TU_T_MS);
    C_RC(tu_write_full(a.fd_w, &rc, sizeof rc), 0);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

static void test_barrier_rounds(void)
{
    enum { N = 3 };
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_barrier_t *b = NULL;
    void *sp = NULL;
    TU_CHECK_OK(mproc_barrier_create(shm, NULL, N, &b));
    TU_CHECK_OK(mproc_shm_alloc(shm, sizeof(int) * BROUNDS * N, NULL, &sp));
    if (tu_failed) {
        mproc_shm_close(shm);
        return;
    }
    TU_CHECK_EQ_INT(mproc_barrier_parties(b), N);
    TU_CHECK_EQ_INT(mproc_barrier_n_waiting(b), 0);
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 0);
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, b, &a.off[0]);
    off_of(shm, sp, &a.off[1]);
    a.n = BROUNDS;
    static const mproc_start_method_t ms[N] = {MPROC_START_FORK, MPROC_START_SPAWN,
                                               MPROC_START_FORKSERVER};
    mproc_process_t *p[N];
    for (int i = 0; i < N; i++)
        p[i] = start_child(ms[i], entry_barrier_rounds, &a, shm);
    for (int i = 0; i < N; i++)
        TU_CHECK_EQ_INT(join_free(p[i]), 0);
    int *seen = sp;
    for (int r = 0; r < BROUNDS; r++)
        for (int i = 0; i < N; i++) {
            tu_context("round %d index %d", r, i);
            TU_CHECK_EQ_INT(seen[r * N + i], 1); /* a permutation of 0..N-1 */
        }
    tu_context(NULL);
    TU_CHECK_EQ_INT(mproc_barrier_n_waiting(b), 0);
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 0);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* Start n entry_barrier_once children on b reporting to *rfd; returns once
 * all of them wait at b. */
static int start_barrier_waiters(mproc_shm_t *shm, mproc_barrier_t *b, mproc_process_t **p, int n,
                                 int *rfd, int forever)
{
    int up[2];
    *rfd = -1;
    if (tu_pipe(up) != 0)
        return 0;
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, b, &a.off[0]);
    a.fd_w = up[1];
    a.kind = forever;
    int ok = 1;
    for (int i = 0; i < n; i++) {
        p[i] = start_child(MPROC_START_FORK, entry_barrier_once, &a, shm);
        ok &= p[i] != NULL;
    }
    close(up[1]);
    *rfd = up[0];
    return ok && TU_CHECK(wait_n_waiting(b, (unsigned)n));
}

/* Read n results from rfd, each must be want; join the children. */
static void collect_barrier(int rfd, mproc_process_t **p, int n, int want)
{
    for (int i = 0; i < n; i++) {
        int rc = 0;
        if (TU_CHECK_EQ_INT(tu_read_full(rfd, &rc, sizeof rc, TU_T_MS), sizeof rc))
            TU_CHECK_EQ_INT(rc, want);
    }
    for (int i = 0; i < n; i++)
        TU_CHECK_EQ_INT(join_free(p[i]), 0);
    close(rfd);
}

static void test_barrier_timeout(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_barrier_t *b = NULL;
    TU_CHECK_OK(mproc_barrier_create(shm, NULL, 4, &b));
    if (!b) {
        mproc_shm_close(shm);
        return;
    }
    mproc_process_t *p[3] = {0};
    int rfd;
    if (start_barrier_waiters(shm, b, p, 2, &rfd, 0)) {
        TU_CHECK_EQ_INT(mproc_barrier_n_waiting(b), 2);
        int64_t t0 = now_ns();
        TU_CHECK_EQ_INT(mproc_barrier_wait(b, 50), -ETIMEDOUT); /* the 4th never comes */
        TU_CHECK(now_ns() - t0 >= 50 * 1000000LL);
    }
    collect_barrier(rfd, p, 2, MPROC_EBROKEN);
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 1);
    /* broken until reset, at once */
    TU_CHECK_EQ_INT(mproc_barrier_wait(b, 0), MPROC_EBROKEN);
    int64_t t0 = now_ns();
    TU_CHECK_EQ_INT(mproc_barrier_wait(b, TU_T_MS), MPROC_EBROKEN);
    TU_CHECK(now_ns() - t0 < 1000 * 1000000LL);
    TU_CHECK_EQ_INT(mproc_barrier_n_waiting(b), 0);
    TU_CHECK_OK(mproc_barrier_reset(b));
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 0);
    /* usable again: three children and this process */
    if (start_barrier_waiters(shm, b, p, 3, &rfd, 0)) {
        int idx = mproc_barrier_wait(b, TU_T_MS);
        TU_CHECK_EQ_INT(idx, 3); /* the others were already waiting */
        int seen[4] = {0};
        for (int i = 0; i < 3; i++) {
            int rc = -1;
            if (TU_CHECK_EQ_INT(tu_read_full(rfd, &rc, sizeof rc, TU_T_MS), sizeof rc))
                if (TU_CHECK(rc >= 0 && rc < 3))
                    seen[rc]++;
        }
        TU_CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
        for (int i = 0; i < 3; i++)
            TU_CHECK_EQ_INT(join_free(p[i]), 0);
        close(rfd);
    } else {
        mproc_barrier_abort(b);
        collect_barrier(rfd, p, 3, MPROC_EBROKEN);
    }
    TU_CHECK_OK(mproc_shm_close(shm));
}

static void test_barrier_abort_and_reset(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_barrier_t *b = NULL;
    TU_CHECK_OK(mproc_barrier_create(shm, NULL, 3, &b));
    if (!b) {
        mproc_shm_close(shm);
        return;
    }
    mproc_process_t *p[2] = {0};
    int rfd;
    /* abort: the waiters (without a timeout) break out */
    start_barrier_waiters(shm, b, p, 2, &rfd, 1);
    TU_CHECK_OK(mproc_barrier_abort(b));
    collect_barrier(rfd, p, 2, MPROC_EBROKEN);
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 1);
    TU_CHECK_EQ_INT(mproc_barrier_wait(b, 0), MPROC_EBROKEN);
    TU_CHECK_OK(mproc_barrier_reset(b));
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 0);
    /* reset with waiters: they get MPROC_EBROKEN, the barrier is usable */
    start_barrier_waiters(shm, b, p, 2, &rfd, 0);
    TU_CHECK_OK(mproc_barrier_reset(b));
    collect_barrier(rfd, p, 2, MPROC_EBROKEN);
    TU_CHECK_EQ_INT(mproc_barrier_n_waiting(b), 0);
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 0);
    /* a full round after that */
    if (start_barrier_waiters(shm, b, p, 2, &rfd, 0)) {
        TU_CHECK_EQ_INT(mproc_barrier_wait(b, TU_T_MS), 2);
        int rc[2] = {-1, -1};
        for (int i = 0; i < 2; i++)
            TU_CHECK_EQ_INT(tu_read_full(rfd, &rc[i], sizeof rc[i], TU_T_MS), sizeof rc[i]);
        TU_CHECK((rc[0] == 0 && rc[1] == 1) || (rc[0] == 1 && rc[1] == 0));
        for (int i = 0; i < 2; i++)
            TU_CHECK_EQ_INT(join_free(p[i]), 0);
        close(rfd);
    } else {
        mproc_barrier_abort(b);
        collect_barrier(rfd, p, 2, MPROC_EBROKEN);
    }
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 0);
    TU_CHECK_EQ_INT(mproc_barrier_n_waiting(b), 0);
    TU_CHECK_EQ_INT(mproc_barrier_parties(b), 3);
    /* a poll that is not the last breaks it */
    mproc_barrier_t *two = NULL;
    TU_CHECK_OK(mproc_barrier_create(shm, NULL, 2, &two));
    if (two) {
        TU_CHECK_EQ_INT(mproc_barrier_wait(two, 0), -ETIMEDOUT);
        TU_CHECK_EQ_INT(mproc_barrier_is_broken(two), 1);
        TU_CHECK_EQ_INT(mproc_barrier_n_waiting(two), 0);
        TU_CHECK_EQ_INT(mproc_barrier_wait(two, 0), MPROC_EBROKEN);
        TU_CHECK_OK(mproc_barrier_reset(two));
        TU_CHECK_EQ_INT(mproc_barrier_is_broken(two), 0);
    }
    /* a one-party barrier never waits */
    mproc_barrier_t *one = NULL;
    TU_CHECK_OK(mproc_barrier_create(shm, NULL, 1, &one));
    if (one) {
        TU_CHECK_EQ_INT(mproc_barrier_wait(one, 0), 0);
        TU_CHECK_EQ_INT(mproc_barrier_wait(one, 0), 0);
    }
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ signals */

/* Waits are EINTR-safe: a signal handled during a wait neither ends it
 * early nor makes it start over. */
static volatile sig_atomic_t g_sigs;
static volatile int g_stop_signaller;

static void on_usr1(int sig)
{
    (void)sig;
    g_sigs++;
}

static void *signaller(void *p)
{
    pthread_t target = *(pthread_t *)p;
    while (!__atomic_load_n(&g_stop_signaller, __ATOMIC_ACQUIRE)) {
        pthread_kill(target, SIGUSR1);
        struct timespec ts = {0, 2 * 1000000}; /* a signal every ~2 ms: load, not sync */
        nanosleep(&ts, NULL);
    }
    return NULL;
}

typedef struct {
    mproc_lock_t *l;
    mproc_event_t *held, *release;
    int rc;
} lock_holder_t;

static void *hold_until_event(void *p)
{
    lock_holder_t *h = p;
    h->rc = mproc_lock_acquire(h->l, TU_T_MS);
    mproc_event_set(h->held);
    mproc_event_wait(h->release, TU_T_MS);
    if (h->rc == 0)
        h->rc = mproc_lock_release(h->l);
    return NULL;
}

#define SIG_WAIT_MS 60

static void check_timed(const char *what, int rc, int want, int64_t t0, sig_atomic_t sigs0)
{
    int64_t el = now_ns() - t0;
    tu_context("%s", what);
    TU_CHECK_EQ_INT(rc, want);
    TU_CHECK(el >= SIG_WAIT_MS * 1000000LL);
    TU_CHECK(el < 5000 * 1000000LL);
    TU_CHECK(g_sigs > sigs0); /* signals did arrive during the wait */
    tu_context(NULL);
}

typedef struct {
    pthread_t sig;
    struct sigaction old;
} sigstorm_t;

static void sigstorm_start(sigstorm_t *st)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, &st->old);
    g_sigs = 0;
    g_stop_signaller = 0;
    static pthread_t self;
    self = pthread_self();
    TU_CHECK_EQ_INT(pthread_create(&st->sig, NULL, signaller, &self), 0);
}

static void sigstorm_stop(sigstorm_t *st)
{
    __atomic_store_n(&g_stop_signaller, 1, __ATOMIC_RELEASE);
    pthread_join(st->sig, NULL);
    sigaction(SIGUSR1, &st->old, NULL);
}

static void test_waits_survive_signals(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    mproc_semaphore_t *s = NULL;
    mproc_event_t *ev = NULL, *held = NULL, *rel = NULL;
    mproc_barrier_t *b = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    TU_CHECK_OK(mproc_semaphore_create(shm, NULL, 0, 0, &s));
    TU_CHECK_OK(mproc_event_create(shm, NULL, &ev));
    TU_CHECK_OK(mproc_event_create(shm, NULL, &held));
    TU_CHECK_OK(mproc_event_create(shm, NULL, &rel));
    TU_CHECK_OK(mproc_barrier_create(shm, NULL, 2, &b));
    if (tu_failed) {
        mproc_shm_close(shm);
        return;
    }
    lock_holder_t h = {.l = l, .held = held, .release = rel};
    pthread_t holder;
    TU_CHECK_EQ_INT(pthread_create(&holder, NULL, hold_until_event, &h), 0);
    TU_CHECK_OK(mproc_event_wait(held, TU_T_MS));
    sigstorm_t st;
    sigstorm_start(&st);

    sig_atomic_t n0 = g_sigs;
    int64_t t0 = now_ns();
    int rc = mproc_lock_acquire(l, SIG_WAIT_MS);
    check_timed("lock", rc, -ETIMEDOUT, t0, n0);
    n0 = g_sigs;
    t0 = now_ns();
    rc = mproc_semaphore_acquire(s, SIG_WAIT_MS);
    check_timed("semaphore", rc, -ETIMEDOUT, t0, n0);
    n0 = g_sigs;
    t0 = now_ns();
    rc = mproc_event_wait(ev, SIG_WAIT_MS);
    check_timed("event", rc, -ETIMEDOUT, t0, n0);
    n0 = g_sigs;
    t0 = now_ns();
    rc = mproc_barrier_wait(b, SIG_WAIT_MS);
    check_timed("barrier", rc, -ETIMEDOUT, t0, n0);

    sigstorm_stop(&st);
    TU_CHECK_OK(mproc_event_set(rel));
    pthread_join(holder, NULL);
    TU_CHECK_OK(h.rc);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* The same for a condition wait: with nobody notifying, a signal is not a
 * wake-up (a predicate loop with a timeout would never time out under a
 * stream of signals otherwise: each wait would start over). */
static void test_condition_wait_survives_signals(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_condition_t *cv = NULL;
    TU_CHECK_OK(mproc_condition_create(shm, NULL, NULL, &cv));
    if (!cv) {
        mproc_shm_close(shm);
        return;
    }
    mproc_lock_t *cl = mproc_condition_lock(cv);
    TU_CHECK_OK(mproc_lock_acquire(cl, TU_T_MS));
    sigstorm_t st;
    sigstorm_start(&st);
    sig_atomic_t n0 = g_sigs;
    int64_t t0 = now_ns();
    int rc = mproc_condition_wait(cv, SIG_WAIT_MS);
    check_timed("condition", rc, -ETIMEDOUT, t0, n0);
    sigstorm_stop(&st);
    TU_CHECK_EQ_INT(mproc_lock_acquire(cl, 0), -EDEADLK); /* held again */
    TU_CHECK_OK(mproc_lock_release(cl));
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ named, unrelated process */

#ifndef MPROC_SHM_PEER
#define MPROC_SHM_PEER "tests/shm_peer"
#endif

/* Mirrors tests/shm_peer.c. */
#define PEER_LOCK_ITERS 100000
#define PEER_RLOCK_ITERS 20000
#define PEER_SEM_ITERS 20000

static void test_named_unrelated_process(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create_named(&shm, SEG_SIZE, NULL));
    const char *name = mproc_shm_name(shm);
    TU_CHECK(name != NULL);
    if (!name) {
        mproc_shm_close(shm);
        return;
    }
    TU_CHECK(strlen(name) > 0 && strlen(name) <= MPROC_NAME_MAX);
    char nbuf[MPROC_NAME_MAX + 1];
    snprintf(nbuf, sizeof nbuf, "%s", name); /* name lives as long as shm */
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/mproc-%s", name);
    struct stat sb;
    if (TU_CHECK(stat(path, &sb) == 0))
        TU_CHECK_EQ_INT(sb.st_mode & 0777, 0600);
    TU_CHECK(mproc_shm_size(shm) >= SEG_SIZE);

    mproc_lock_t *l = NULL;
    mproc_rlock_t *rl = NULL;
    mproc_semaphore_t *s = NULL;
    mproc_condition_t *cv = NULL;
    mproc_event_t *ev = NULL;
    mproc_barrier_t *b = NULL;
    int64_t *c = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, "lock", &l));
    TU_CHECK_OK(mproc_rlock_create(shm, "rlock", &rl));
    TU_CHECK_OK(mproc_semaphore_create(shm, "sem", 1, 1, &s));
    TU_CHECK_OK(mproc_condition_create(shm, "cond", NULL, &cv));
    TU_CHECK_OK(mproc_event_create(shm, "event", &ev));
    TU_CHECK_OK(mproc_barrier_create(shm, "barrier", 2, &b));
    TU_CHECK_OK(mproc_array_create(shm, "counters", MPROC_INT64, 4, (void **)&c));
    if (tu_failed) {
        mproc_shm_unlink(shm);
        mproc_shm_close(shm);
        mproc_tracker_stop(TU_T_MS);
        return;
    }

    char *argv[] = {(char *)MPROC_SHM_PEER, nbuf, NULL};
    pid_t pid = -1;
    int pidfd = -1;
    int rc = posix_spawn(&pid, MPROC_SHM_PEER, NULL, NULL, argv, environ);
    TU_CHECK_EQ_INT(rc, 0);
    if (rc == 0) {
        pidfd = tu_pidfd_open(pid);
        TU_CHECK(pidfd >= 0);
        /* start together, then contend */
        int idx = mproc_barrier_wait(b, TU_T_MS);
        TU_CHECK(idx == 0 || idx == 1);
        for (int i = 0; i < PEER_LOCK_ITERS; i++) {
            if (mproc_lock_acquire(l, TU_T_MS) != 0) {
                TU_CHECK(0);
                break;
            }
            volatile int64_t *v = &c[0];
            *v = *v + 1;
            mproc_lock_release(l);
        }
        for (int i = 0; i < PEER_RLOCK_ITERS; i++) {
            if (mproc_rlock_acquire(rl, TU_T_MS) != 0 || mproc_rlock_acquire(rl, 0) != 0) {
                TU_CHECK(0);
                break;
            }
            volatile int64_t *v = &c[1];
            *v = *v + 1;
            mproc_rlock_release(rl);
            mproc_rlock_release(rl);
        }
        for (int i = 0; i < PEER_SEM_ITERS; i++) {
            if (mproc_semaphore_acquire(s, TU_T_MS) != 0) {
                TU_CHECK(0);
                break;
            }
            volatile int64_t *v = &c[2];
            *v = *v + 1;
            mproc_semaphore_release(s);
        }
        idx = mproc_barrier_wait(b, TU_T_MS);
        TU_CHECK(idx == 0 || idx == 1);
        TU_CHECK_EQ_INT(c[0], 2 * PEER_LOCK_ITERS);
        TU_CHECK_EQ_INT(c[1], 2 * PEER_RLOCK_ITERS);
        TU_CHECK_EQ_INT(c[2], 2 * PEER_SEM_ITERS);
        TU_CHECK_EQ_INT(mproc_semaphore_value(s), 1);
        /* the peer waits on the condition for c[3]; it answers with the event */
        mproc_lock_t *cl = mproc_condition_lock(cv);
        TU_CHECK_OK(mproc_lock_acquire(cl, TU_T_MS));
        c[3] = 1;
        TU_CHECK_OK(mproc_condition_notify_all(cv));
        TU_CHECK_OK(mproc_lock_release(cl));
        TU_CHECK_OK(mproc_event_wait(ev, TU_T_MS));
        TU_CHECK_EQ_INT(c[3], 2); /* the peer's last word */
    }
    /* Unlink and close before joining the peer: its tracker (it opened the
     * segment) lets go only once nobody uses the segment any more, and
     * the peer waits for its tracker with mproc_tracker_stop. */
    TU_CHECK_OK(mproc_shm_unlink(shm));
    TU_CHECK(stat(path, &sb) != 0 && errno == ENOENT);
    TU_CHECK_EQ_INT(mproc_shm_unlink(shm), -ENOENT);
    mproc_shm_t *again = NULL;
    TU_CHECK_EQ_INT(mproc_shm_open(&again, nbuf), -ENOENT);
    TU_CHECK_OK(mproc_shm_close(shm));
    if (pidfd >= 0) {
        int status = TU_NO_CODE;
        rc = tu_wait_child(pid, pidfd, TU_T_MS, &status);
        TU_CHECK_OK(rc);
        if (rc != 0)
            tu_kill_child(pid, pidfd);
        TU_CHECK_EQ_INT(status, 0);
    }
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
}

/* ------------------------------------------------------------------ bad input */

static void test_bad_input(void)
{
    mproc_shm_t *shm = NULL, *other = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    if (!TU_CHECK_OK(mproc_shm_create(&other, SEG_SIZE))) {
        mproc_shm_close(shm);
        return;
    }
    mproc_lock_t *l = NULL;
    mproc_rlock_t *rl = NULL;
    mproc_semaphore_t *s = NULL;
    mproc_condition_t *cv = NULL;
    mproc_event_t *ev = NULL;
    mproc_barrier_t *b = NULL;
    void *arr = NULL;

    /* NULL segment / NULL out */
    TU_CHECK_EQ_INT(mproc_lock_create(NULL, NULL, &l), -EINVAL);
    TU_CHECK_EQ_INT(mproc_lock_create(shm, NULL, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_rlock_create(NULL, NULL, &rl), -EINVAL);
    TU_CHECK_EQ_INT(mproc_rlock_create(shm, NULL, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_semaphore_create(NULL, NULL, 1, 0, &s), -EINVAL);
    TU_CHECK_EQ_INT(mproc_semaphore_create(shm, NULL, 1, 0, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_condition_create(NULL, NULL, NULL, &cv), -EINVAL);
    TU_CHECK_EQ_INT(mproc_condition_create(shm, NULL, NULL, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_event_create(NULL, NULL, &ev), -EINVAL);
    TU_CHECK_EQ_INT(mproc_event_create(shm, NULL, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_barrier_create(NULL, NULL, 2, &b), -EINVAL);
    TU_CHECK_EQ_INT(mproc_barrier_create(shm, NULL, 2, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_lock_open(NULL, "x", &l), -EINVAL);
    TU_CHECK_EQ_INT(mproc_lock_open(shm, NULL, &l), -EINVAL);
    TU_CHECK_EQ_INT(mproc_rlock_open(shm, NULL, &rl), -EINVAL);
    TU_CHECK_EQ_INT(mproc_semaphore_open(shm, NULL, &s), -EINVAL);
    TU_CHECK_EQ_INT(mproc_condition_open(shm, NULL, &cv), -EINVAL);
    TU_CHECK_EQ_INT(mproc_event_open(shm, NULL, &ev), -EINVAL);
    TU_CHECK_EQ_INT(mproc_barrier_open(shm, NULL, &b), -EINVAL);
    TU_CHECK_EQ_INT(mproc_lock_acquire(NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_lock_release(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_lock_consistent(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_rlock_acquire(NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_rlock_release(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_rlock_consistent(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_semaphore_acquire(NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_semaphore_release(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_semaphore_value(NULL), -EINVAL);
    TU_CHECK(mproc_condition_lock(NULL) == NULL);
    TU_CHECK_EQ_INT(mproc_condition_wait(NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_condition_notify(NULL, 1), -EINVAL);
    TU_CHECK_EQ_INT(mproc_condition_notify_all(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_event_set(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_event_clear(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_event_is_set(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_event_wait(NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_barrier_wait(NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_barrier_abort(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_barrier_reset(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_create(NULL, 4096), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_open(NULL, "x"), -EINVAL);
    mproc_shm_t *x = NULL;
    TU_CHECK_EQ_INT(mproc_shm_open(&x, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_create(&x, 0), -EINVAL);
    TU_CHECK_OK(mproc_shm_close(NULL));

    /* names */
    char longname[MPROC_NAME_MAX + 2];
    memset(longname, 'n', sizeof longname);
    longname[MPROC_NAME_MAX + 1] = '\0'; /* MPROC_NAME_MAX + 1 bytes */
    TU_CHECK_EQ_INT(mproc_lock_create(shm, longname, &l), -EINVAL);
    TU_CHECK_EQ_INT(mproc_event_create(shm, longname, &ev), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_create_named(&x, 4096, longname), -EINVAL);
    TU_CHECK_EQ_INT(mproc_lock_open(shm, longname, &l), -EINVAL);
    longname[MPROC_NAME_MAX] = '\0'; /* exactly MPROC_NAME_MAX: fine */
    TU_CHECK_OK(mproc_lock_create(shm, longname, &l));
    mproc_lock_t *l2 = NULL;
    TU_CHECK_OK(mproc_lock_open(shm, longname, &l2));
    TU_CHECK(l2 == l);
    static const char *const bad[] = {"a/b", "/x", "", ".hidden", "sp ace", "x\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tu_context("name '%s'", bad[i]);
        TU_CHECK_EQ_INT(mproc_lock_create(shm, bad[i], &l2), -EINVAL);
        TU_CHECK_EQ_INT(mproc_semaphore_create(shm, bad[i], 1, 0, &s), -EINVAL);
        TU_CHECK_EQ_INT(mproc_barrier_create(shm, bad[i], 2, &b), -EINVAL);
        TU_CHECK_EQ_INT(mproc_shm_create_named(&x, 4096, bad[i]), -EINVAL);
    }
    tu_context(NULL);
    TU_CHECK_EQ_INT(mproc_lock_create(shm, longname, &l2), -EEXIST);

    /* unknown names */
    TU_CHECK_EQ_INT(mproc_lock_open(shm, "nope", &l2), -ENOENT);
    TU_CHECK_EQ_INT(mproc_rlock_open(shm, "nope", &rl), -ENOENT);
    TU_CHECK_EQ_INT(mproc_semaphore_open(shm, "nope", &s), -ENOENT);
    TU_CHECK_EQ_INT(mproc_condition_open(shm, "nope", &cv), -ENOENT);
    TU_CHECK_EQ_INT(mproc_event_open(shm, "nope", &ev), -ENOENT);
    TU_CHECK_EQ_INT(mproc_barrier_open(shm, "nope", &b), -ENOENT);
    size_t cnt = 0;
    TU_CHECK_EQ_INT(mproc_array_open(shm, "nope", MPROC_INT32, &arr, &cnt), -ENOENT);
    TU_CHECK_EQ_INT(mproc_shm_open(&x, "mproc-test-no-such-segment"), -ENOENT);

    /* wrong types */
    TU_CHECK_OK(mproc_semaphore_create(shm, "sem", 1, 0, &s));
    TU_CHECK_OK(mproc_event_create(shm, "ev", &ev));
    TU_CHECK_OK(mproc_array_create(shm, "arr", MPROC_INT32, 3, &arr));
    TU_CHECK_EQ_INT(mproc_lock_open(shm, "sem", &l2), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_rlock_open(shm, longname, &rl), MPROC_ETYPE); /* a lock */
    TU_CHECK_EQ_INT(mproc_semaphore_open(shm, "ev", &s), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_condition_open(shm, "sem", &cv), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_event_open(shm, "arr", &ev), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_barrier_open(shm, "ev", &b), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_array_open(shm, "ev", MPROC_INT32, &arr, &cnt), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_array_open(shm, "arr", MPROC_INT64, &arr, &cnt), MPROC_ETYPE);
    TU_CHECK_OK(mproc_array_open(shm, "arr", MPROC_INT32, &arr, &cnt));
    TU_CHECK_EQ_INT(cnt, 3);
    /* (a failed open may have written *out: look the objects up again) */
    TU_CHECK_OK(mproc_event_open(shm, "ev", &ev));
    TU_CHECK(ev != NULL);
    void *any = NULL;
    TU_CHECK_OK(mproc_shm_find(shm, "sem", MPROC_OBJ_ANY, &any));
    TU_CHECK_EQ_INT(mproc_shm_find(shm, "sem", MPROC_OBJ_LOCK, &any), MPROC_ETYPE);
    uint64_t off = 0;
    TU_CHECK_OK(mproc_shm_offset(shm, ev, &off));
    TU_CHECK_EQ_INT(mproc_shm_at(shm, off, MPROC_OBJ_BARRIER, &any), MPROC_ETYPE);
    TU_CHECK_OK(mproc_shm_at(shm, off, MPROC_OBJ_EVENT, &any));
    TU_CHECK(any == ev);
    TU_CHECK_EQ_INT(mproc_shm_at(shm, off + 8, MPROC_OBJ_ANY, &any), -EINVAL);

    /* values */
    TU_CHECK_EQ_INT(mproc_barrier_create(shm, NULL, 0, &b), -EINVAL);
    TU_CHECK_EQ_INT(mproc_semaphore_create(shm, NULL, 3, 2, &s), -EINVAL);
    TU_CHECK_EQ_INT(mproc_semaphore_create(shm, NULL, (unsigned)INT32_MAX + 1u, 0, &s), -EINVAL);
    TU_CHECK_OK(mproc_semaphore_create(shm, NULL, 2, 2, &s));
    TU_CHECK_EQ_INT(mproc_semaphore_release(s), -EOVERFLOW);
    TU_CHECK_OK(mproc_semaphore_create(shm, NULL, INT32_MAX, 0, &s));
    TU_CHECK_EQ_INT(mproc_semaphore_release(s), -EOVERFLOW); /* unbounded: INT32_MAX */
    TU_CHECK_EQ_INT(mproc_semaphore_value(s), INT32_MAX);

    /* a condition over a lock of another segment */
    mproc_lock_t *foreign = NULL;
    TU_CHECK_OK(mproc_lock_create(other, NULL, &foreign));
    TU_CHECK_EQ_INT(mproc_condition_create(shm, NULL, foreign, &cv), -EINVAL);
    TU_CHECK_OK(mproc_condition_create(other, NULL, foreign, &cv));
    TU_CHECK_EQ_INT(mproc_condition_notify(cv, 1), -EPERM); /* not held */
    /* a "lock" that is not one */
    TU_CHECK_EQ_INT(mproc_condition_create(shm, NULL, (mproc_lock_t *)ev, &cv), -EINVAL);

    TU_CHECK_OK(mproc_shm_close(other));
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ main */

static const tu_case_t cases[] = {
    TU_METHOD_CASES(count_lock),
    TU_CASE(test_count_rlock_forkserver),
    TU_CASE(test_count_lock_threads_fork),
    TU_CASE(test_count_rlock_threads_spawn),
    TU_CASE(test_count_semaphore_fork),
    TU_CASE(test_count_bounded_semaphore_spawn),
    TU_CASE(test_lock_owner_errors),
    TU_METHOD_CASES(lock_cross_process),
    TU_CASE(test_rlock),
    TU_CASE(test_semaphore),
    TU_CASE(test_condition_notify_one),
    TU_METHOD_CASES(condition_notify_all),
    TU_CASE(test_condition_timeout_and_perm),
    TU_CASE(test_condition_bounded_buffer),
    TU_CASE(test_event),
    TU_CASE(test_barrier_rounds),
    TU_CASE(test_barrier_timeout),
    TU_CASE(test_barrier_abort_and_reset),
    TU_CASE(test_waits_survive_signals),
    TU_CASE(test_condition_wait_survives_signals),
    TU_CASE(test_named_unrelated_process),
    TU_CASE(test_bad_input),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
