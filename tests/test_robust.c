/*
 * test_robust.c - sync objects when processes die (P9): a lock holder
 * SIGKILLed at random points a thousand times (EOWNERDEAD, repair,
 * consistent), ENOTRECOVERABLE, a thread that exits holding a lock, an
 * rlock with a dead owner, dying condition waiters and notifiers, barrier
 * parties that die before or while waiting, and the unit a dead semaphore
 * holder takes with it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mproc.h"
#include "synctest.h"
#include "testutil.h"

/* ------------------------------------------------------------------ exact counts */

/* Kill (SIGKILL), join, check it died of it, free. */
static void kill_join(mproc_process_t *p)
{
    if (!p)
        return;
    TU_CHECK_OK(mproc_process_kill(p));
    int code = tu_join_code(p);
    TU_CHECK_EQ_INT(code, -SIGKILL);
    if (code == TU_NO_CODE) {
        mproc_process_kill(p);
        mproc_process_join(p, TU_T_MS);
    }
    TU_CHECK_OK(mproc_process_free(p));
}

static uint64_t rng_state;

static uint32_t rnd(uint32_t n)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return n ? (uint32_t)((x >> 11) % n) : 0;
}

static void seed(void)
{
    const char *e = getenv("TU_SEED");
    rng_state = e ? strtoull(e, NULL, 0) : (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);
    if (rng_state == 0)
        rng_state = 88172645463325252ULL;
}

/* ------------------------------------------------------------------ lock holder killed, many times
 */

typedef struct {
    int64_t a, b;     /* invariant a == b, broken inside the lock */
    int64_t progress; /* critical sections completed */
    int64_t child_err;
    int64_t spin;
    int64_t target; /* progress at which the child sets the event */
} rstate_t;

/* off[0] lock, off[1] rstate, off[2] event: set once progress reaches
 * target. Loops until killed. */
static int entry_holder(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_lock_t *l;
    void *sp;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_LOCK, &l), 0);
    C_RC(c_at(shm, a.off[1], MPROC_OBJ_BYTES, &sp), 0);
    mproc_event_t *reached;
    C_RC(c_at(shm, a.off[2], MPROC_OBJ_EVENT, &reached), 0);
    rstate_t *st = sp;
    volatile int64_t *pa = &st->a, *pb = &st->b;
    int64_t spin = st->spin, target = st->target;
    int told = 0;
    for (;;) {
        int rc = mproc_lock_acquire(l, TU_T_MS);
        if (rc != 0) {
            __atomic_store_n(&st->child_err, rc, __ATOMIC_SEQ_CST);
            return 1;
        }
        /* where this child says it got there varies with the round: in
         * the middle of the update, holding the lock after it, or after
         * the release; it goes on running after that */
        int tell = !told && __atomic_load_n(&st->progress, __ATOMIC_ACQUIRE) + 1 >= target;
        *pa = *pa + 1; /* half an update ... */
        if (tell && target % 3 == 0)
            told = mproc_event_set(reached) == 0;
        for (volatile int64_t k = 0; k < spin; k++) {
        }
        *pb = *pb + 1; /* ... and the other half */
        __atomic_add_fetch(&st->progress, 1, __ATOMIC_RELEASE);
        if (tell && target % 3 == 1)
            told = mproc_event_set(reached) == 0;
        rc = mproc_lock_release(l);
        if (rc != 0) {
            __atomic_store_n(&st->child_err, rc, __ATOMIC_SEQ_CST);
            return 1;
        }
        if (tell && !told)
            told = mproc_event_set(reached) == 0;
    }
}

static void kill_holder_rounds(mproc_start_method_t m)
{
    int rounds = m == MPROC_START_FORK ? 1000 : 20;
    seed();
    uint64_t seed0 = rng_state;
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    mproc_event_t *reached = NULL;
    void *sp = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    TU_CHECK_OK(mproc_event_create(shm, NULL, &reached));
    TU_CHECK_OK(mproc_shm_alloc(shm, sizeof(rstate_t), NULL, &sp));
    if (tu_failed) {
        mproc_shm_close(shm);
        return;
    }
    rstate_t *st = sp;
    volatile int64_t *pa = &st->a, *pb = &st->b;
    st->spin = 200;
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, l, &a.off[0]);
    off_of(shm, sp, &a.off[1]);
    off_of(shm, reached, &a.off[2]);
    int owner_dead = 0, torn = 0, done = 0;
    int64_t t0 = now_ns();
    for (int r = 0; r < rounds; r++) {
        tu_context("method=%s round=%d seed=%llu (TU_SEED)", tu_method_name(m), r,
                   (unsigned long long)seed0);
        int64_t before = __atomic_load_n(&st->progress, __ATOMIC_ACQUIRE);
        int64_t target = before + 1 + rnd(40);
        st->target = target;
        TU_CHECK_OK(mproc_event_clear(reached));
        mproc_process_t *p = start_child(m, entry_holder, &a, shm);
        if (!p)
            break;
        /* it runs a random number of critical sections and tells us; it
         * goes on while we wake up and spin a random bit more: the kill
         * lands anywhere in its loop */
        int late = mproc_event_wait(reached, TU_T_MS) != 0;
        switch (rnd(3)) {
        case 0:
            break; /* at once */
        case 1:
            for (volatile uint32_t k = rnd(2000); k > 0; k--) {
            }
            break;
        default:
            for (uint32_t k = rnd(3) + 1; k > 0; k--)
                sched_yield(); /* let it run on, if it shares our CPU */
        }
        kill_join(p);
        TU_CHECK(!late);
        TU_CHECK_EQ_INT(st->child_err, 0);
        int rc = mproc_lock_acquire(l, TU_T_MS);
        if (rc == -EOWNERDEAD) {
            owner_dead++;
            if (*pa != *pb) {
                torn++;
                TU_CHECK_EQ_INT(*pa, *pb + 1); /* died between the halves */
                *pb = *pa;                     /* repair */
            }
            TU_CHECK_OK(mproc_lock_consistent(l));
        } else if (!TU_CHECK_OK(rc)) {
            break;
        }
        TU_CHECK_EQ_INT(*pa, *pb);
        TU_CHECK(*pa >= target);
        TU_CHECK_OK(mproc_lock_release(l));
        done++;
        if (tu_failed)
            break;
    }
    int64_t el = now_ns() - t0;
    tu_context("method=%s seed=%llu", tu_method_name(m), (unsigned long long)seed0);
    if (getenv("TU_VERBOSE"))
        fprintf(stderr, "  %s: %d rounds in %.0f ms, EOWNERDEAD %d, torn %d\n", tu_method_name(m),
                done, (double)el / 1e6, owner_dead, torn);
    TU_CHECK_EQ_INT(done, rounds);
    TU_CHECK(owner_dead > 0);
    if (m == MPROC_START_FORK)
        TU_CHECK(torn > 0); /* a thousand kills land inside the half update */
    /* the lock is healthy afterwards */
    TU_CHECK_OK(mproc_lock_acquire(l, 0));
    TU_CHECK_OK(mproc_lock_release(l));
    TU_CHECK_OK(mproc_shm_close(shm));
}
TU_DEFINE_METHOD_CASES(kill_holder_rounds)

/* ------------------------------------------------------------------ unrecoverable */

/* off[0] lock: take it and exit holding it (kind 0), or expect kind as the
 * result of acquire (TU_T_MS) (and then release if 0 / EOWNERDEAD). */
static int entry_lock_do(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_lock_t *l;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_LOCK, &l), 0);
    if (a.kind == 0) {
        C_RC(mproc_lock_acquire(l, TU_T_MS), 0);
        return 0; /* exits holding it */
    }
    int64_t t0 = now_ns();
    C_RC(mproc_lock_acquire(l, TU_T_MS), a.kind);
    C_REQ(now_ns() - t0 < 2000 * 1000000LL); /* not a timeout */
    C_RC(mproc_lock_release(l), -EPERM);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

typedef struct {
    mproc_rlock_t *l;
    int rc;
} rlock_thread_t;

static void *thr_rlock_twice_exit(void *p)
{
    rlock_thread_t *t = p;
    t->rc = mproc_rlock_acquire(t->l, 0);
    if (t->rc == 0)
        t->rc = mproc_rlock_acquire(t->l, 0);
    return NULL; /* exits holding it, twice */
}

static void test_not_recoverable(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    if (!l) {
        mproc_shm_close(shm);
        return;
    }
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, l, &a.off[0]);
    a.kind = 0;
    TU_CHECK_EQ_INT(join_free(start_child(MPROC_START_FORK, entry_lock_do, &a, shm)), 0);
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, TU_T_MS), -EOWNERDEAD);
    TU_CHECK_OK(mproc_lock_release(l)); /* without consistent */
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, 0), -ENOTRECOVERABLE);
    int64_t t0 = now_ns();
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, TU_T_MS), -ENOTRECOVERABLE);
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, MPROC_FOREVER), -ENOTRECOVERABLE);
    TU_CHECK(now_ns() - t0 < 2000 * 1000000LL);
    TU_CHECK_EQ_INT(mproc_lock_release(l), -EPERM);
    /* and from other processes */
    a.kind = -ENOTRECOVERABLE;
    TU_CHECK_EQ_INT(join_free(start_child(MPROC_START_SPAWN, entry_lock_do, &a, shm)), 0);
    TU_CHECK_EQ_INT(join_free(start_child(MPROC_START_FORK, entry_lock_do, &a, shm)), 0);
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, 0), -ENOTRECOVERABLE);

    /* an rlock released unrepaired (its depth included) is unusable too */
    mproc_rlock_t *rl = NULL;
    TU_CHECK_OK(mproc_rlock_create(shm, NULL, &rl));
    if (rl) {
        rlock_thread_t t = {.l = rl};
        pthread_t th;
        TU_CHECK_EQ_INT(pthread_create(&th, NULL, thr_rlock_twice_exit, &t), 0);
        pthread_join(th, NULL);
        TU_CHECK_OK(t.rc);
        TU_CHECK_EQ_INT(mproc_rlock_acquire(rl, TU_T_MS), -EOWNERDEAD);
        TU_CHECK_OK(mproc_rlock_acquire(rl, 0)); /* depth 2 */
        TU_CHECK_OK(mproc_rlock_release(rl));
        TU_CHECK_OK(mproc_rlock_release(rl)); /* the last one, unrepaired */
        TU_CHECK_EQ_INT(mproc_rlock_acquire(rl, 0), -ENOTRECOVERABLE);
        TU_CHECK_EQ_INT(mproc_rlock_acquire(rl, TU_T_MS), -ENOTRECOVERABLE);
        TU_CHECK_EQ_INT(mproc_rlock_release(rl), -EPERM);
    }

    /* the same story, repaired this time: a later process finds it fine */
    mproc_lock_t *l2 = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l2));
    if (l2) {
        off_of(shm, l2, &a.off[0]);
        a.kind = 0;
        TU_CHECK_EQ_INT(join_free(start_child(MPROC_START_FORKSERVER, entry_lock_do, &a, shm)), 0);
        TU_CHECK_EQ_INT(mproc_lock_acquire(l2, TU_T_MS), -EOWNERDEAD);
        TU_CHECK_OK(mproc_lock_consistent(l2));
        TU_CHECK_OK(mproc_lock_release(l2));
        TU_CHECK_OK(mproc_lock_acquire(l2, 0));
        TU_CHECK_OK(mproc_lock_release(l2));
    }
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ threads */

typedef struct {
    void *obj;
    int rc;
    int rc2;
} thr_t;

static void *thr_take_lock(void *p)
{
    thr_t *t = p;
    t->rc = mproc_lock_acquire(t->obj, 0);
    return NULL; /* exits holding it */
}

static void *thr_take_rlock(void *p)
{
    thr_t *t = p;
    t->rc = mproc_rlock_acquire(t->obj, 0);
    t->rc2 = mproc_rlock_acquire(t->obj, 0);
    return NULL;
}

static void *thr_try_rlock(void *p)
{
    thr_t *t = p;
    t->rc = mproc_rlock_acquire(t->obj, 0);
    if (t->rc == 0)
        t->rc2 = mproc_rlock_release(t->obj);
    return NULL;
}

static void test_thread_exits_holding(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    mproc_rlock_t *rl = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    TU_CHECK_OK(mproc_rlock_create(shm, NULL, &rl));
    if (tu_failed) {
        mproc_shm_close(shm);
        return;
    }
    thr_t t = {.obj = l};
    pthread_t th;
    TU_REQUIRE(pthread_create(&th, NULL, thr_take_lock, &t) == 0);
    pthread_join(th, NULL);
    TU_CHECK_OK(t.rc);
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, TU_T_MS), -EOWNERDEAD);
    TU_CHECK_OK(mproc_lock_consistent(l));
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, 0), -EDEADLK); /* ours now */
    TU_CHECK_OK(mproc_lock_release(l));
    TU_CHECK_OK(mproc_lock_acquire(l, 0));
    TU_CHECK_OK(mproc_lock_release(l));

    t = (thr_t){.obj = rl};
    TU_REQUIRE(pthread_create(&th, NULL, thr_take_rlock, &t) == 0);
    pthread_join(th, NULL);
    TU_CHECK_OK(t.rc);
    TU_CHECK_OK(t.rc2);
    TU_CHECK_EQ_INT(mproc_rlock_acquire(rl, TU_T_MS), -EOWNERDEAD);
    TU_CHECK_OK(mproc_rlock_consistent(rl));
    TU_CHECK_OK(mproc_rlock_release(rl));
    TU_CHECK_EQ_INT(mproc_rlock_release(rl), -EPERM); /* the dead one's depth is gone */
    t = (thr_t){.obj = rl};
    TU_REQUIRE(pthread_create(&th, NULL, thr_try_rlock, &t) == 0);
    pthread_join(th, NULL);
    TU_CHECK_OK(t.rc);
    TU_CHECK_OK(t.rc2);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* off[0] lock: take it, say so on fd_w, block on fd_r (until killed). */
static int entry_lock_hold_block(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_lock_t *l;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_LOCK, &l), 0);
    C_RC(mproc_lock_acquire(l, TU_T_MS), 0);
    C_RC(tu_write_full(a.fd_w, "h", 1), 0);
    char c;
    tu_read_full(a.fd_r, &c, 1, TU_T_MS); /* killed while here */
    return 7;
}

/* ------------------------------------------------------------------ rlock, dead owner process */

/* off[0] rlock: take it a.n times, say so on fd_w, block on fd_r. */
static int entry_rlock_hold(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_rlock_t *l;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_RLOCK, &l), 0);
    for (int64_t i = 0; i < a.n; i++)
        C_RC(mproc_rlock_acquire(l, TU_T_MS), 0);
    C_RC(tu_write_full(a.fd_w, "h", 1), 0);
    char c;
    tu_read_full(a.fd_r, &c, 1, TU_T_MS); /* killed while here */
    return 7;
}

static void rlock_dead_owner(mproc_start_method_t m)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_rlock_t *l = NULL;
    TU_CHECK_OK(mproc_rlock_create(shm, NULL, &l));
    int up[2], down[2];
    if (!l || tu_pipe(up) != 0) {
        mproc_shm_close(shm);
        return;
    }
    if (tu_pipe(down) != 0) {
        close(up[0]);
        close(up[1]);
        mproc_shm_close(shm);
        return;
    }
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, l, &a.off[0]);
    a.n = 3;
    a.fd_w = up[1];
    a.fd_r = down[0];
    mproc_process_t *p = start_child(m, entry_rlock_hold, &a, shm);
    close(up[1]);
    close(down[0]);
    char c;
    if (p && TU_CHECK_EQ_INT(tu_read_full(up[0], &c, 1, TU_T_MS), 1)) {
        TU_CHECK_EQ_INT(mproc_rlock_acquire(l, 0), -ETIMEDOUT);
        kill_join(p);
        TU_CHECK_EQ_INT(mproc_rlock_acquire(l, TU_T_MS), -EOWNERDEAD);
        TU_CHECK_OK(mproc_rlock_consistent(l));
        TU_CHECK_OK(mproc_rlock_acquire(l, 0)); /* recursion on top */
        TU_CHECK_OK(mproc_rlock_release(l));
        TU_CHECK_OK(mproc_rlock_release(l));
        TU_CHECK_EQ_INT(mproc_rlock_release(l), -EPERM);
        thr_t t = {.obj = l};
        pthread_t th;
        if (TU_CHECK(pthread_create(&th, NULL, thr_try_rlock, &t) == 0)) {
            pthread_join(th, NULL);
            TU_CHECK_OK(t.rc);
            TU_CHECK_OK(t.rc2);
        }
    } else if (p) {
        kill_join(p);
    }
    close(up[0]);
    close(down[1]);
    TU_CHECK_OK(mproc_shm_close(shm));
}
TU_DEFINE_METHOD_CASES(rlock_dead_owner)

/* ------------------------------------------------------------------ condition */

typedef struct {
    int64_t tokens;
    int64_t go;
    int64_t woken;
    int64_t waiting;
    int64_t pred;
} cstate_t;

/* off[0] condition, off[1] cstate. Leaves on a token (consumed) or on go.
 * Writes a byte on fd_w while holding the lock, just before waiting. */
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
    while (st->tokens == 0 && !st->go)
        C_RC(mproc_condition_wait(cv, TU_T_MS), 0);
    if (!st->go)
        st->tokens--;
    st->woken++;
    C_RC(mproc_lock_release(l), 0);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

#define NCW 5

static void test_condition_waiter_killed(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_condition_t *cv = NULL;
    void *sp = NULL;
    TU_CHECK_OK(mproc_condition_create(shm, NULL, NULL, &cv));
    TU_CHECK_OK(mproc_shm_alloc(shm, sizeof(cstate_t), NULL, &sp));
    int up[2];
    if (tu_failed || tu_pipe(up) != 0) {
        mproc_shm_close(shm);
        return;
    }
    volatile cstate_t *st = sp;
    mproc_lock_t *l = mproc_condition_lock(cv);
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, cv, &a.off[0]);
    off_of(shm, sp, &a.off[1]);
    a.fd_w = up[1];
    mproc_process_t *p[NCW] = {0};
    int ok = 1;
    for (int i = 0; i < NCW; i++) {
        p[i] = start_child(i == 2 ? MPROC_START_FORKSERVER : MPROC_START_FORK, entry_cond_waiter,
                           &a, shm);
        ok &= p[i] != NULL;
    }
    close(up[1]);
    char buf[NCW];
    if (ok)
        ok = TU_CHECK_EQ_INT(tu_read_full(up[0], buf, NCW, TU_T_MS), NCW);
    close(up[0]);
    if (ok) {
        /* all of them are inside wait once the lock is free */
        TU_CHECK_OK(mproc_lock_acquire(l, TU_T_MS));
        TU_CHECK_EQ_INT(st->waiting, NCW);
        TU_CHECK_OK(mproc_lock_release(l));
        /* one waiter dies in wait */
        kill_join(p[0]);
        p[0] = NULL;
        TU_CHECK_OK(mproc_lock_acquire(l, TU_T_MS)); /* not EOWNERDEAD: it did not hold it */
        st->tokens = 1;
        TU_CHECK_OK(mproc_condition_notify(cv, 1)); /* must reach a live one */
        TU_CHECK_OK(mproc_lock_release(l));
        int i = wait_any_exit(p, NCW, TU_T_MS);
        TU_CHECK(i > 0);
        if (i > 0) {
            TU_CHECK_EQ_INT(join_free(p[i]), 0);
            p[i] = NULL;
        }
        /* another dies; notify_all reaches the rest */
        for (int k = 1; k < NCW; k++)
            if (p[k]) {
                kill_join(p[k]);
                p[k] = NULL;
                break;
            }
        TU_CHECK_OK(mproc_lock_acquire(l, TU_T_MS));
        TU_CHECK_EQ_INT(st->woken, 1);
        TU_CHECK_EQ_INT(st->tokens, 0);
        st->go = 1;
        TU_CHECK_OK(mproc_condition_notify_all(cv));
        TU_CHECK_OK(mproc_lock_release(l));
    }
    for (int i = 0; i < NCW; i++)
        if (p[i])
            TU_CHECK_EQ_INT(join_free(p[i]), 0);
    TU_CHECK_EQ_INT(st->woken, NCW - 2);
    /* lock and condition still work */
    TU_CHECK_OK(mproc_lock_acquire(l, 0));
    TU_CHECK_OK(mproc_condition_notify(cv, 1));
    TU_CHECK_EQ_INT(mproc_condition_wait(cv, 10), -ETIMEDOUT);
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, 0), -EDEADLK);
    TU_CHECK_OK(mproc_lock_release(l));
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* off[0] condition, off[1] cstate: take the lock, set pred, notify_all,
 * say so on fd_w and block holding the lock (until killed). */
static int entry_cond_notifier(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_condition_t *cv;
    void *sp;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_CONDITION, &cv), 0);
    C_RC(c_at(shm, a.off[1], MPROC_OBJ_BYTES, &sp), 0);
    volatile cstate_t *st = sp;
    C_RC(mproc_lock_acquire(mproc_condition_lock(cv), TU_T_MS), 0);
    st->pred++;
    C_RC(mproc_condition_notify_all(cv), 0);
    C_RC(tu_write_full(a.fd_w, "n", 1), 0);
    char c;
    tu_read_full(a.fd_r, &c, 1, TU_T_MS); /* killed while here */
    return 7;
}

/* off[0] condition, off[1] cstate: waits for pred, expects its wait to
 * end with EOWNERDEAD (the notifier died holding the lock), repairs. */
static int entry_cond_orphan(const void *arg, size_t len)
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
    C_RC(mproc_lock_acquire(l, TU_T_MS), 0);
    C_RC(tu_write_full(a.fd_w, "w", 1), 0);
    int rc = 0;
    while (st->pred == 0 && rc == 0)
        rc = mproc_condition_wait(cv, TU_T_MS);
    C_RC(rc, -EOWNERDEAD);
    C_REQ(st->pred == 1);
    C_RC(mproc_lock_consistent(l), 0);
    st->woken++;
    C_RC(mproc_lock_release(l), 0);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

static void condition_notifier_killed(mproc_start_method_t m)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    mproc_condition_t *cv = NULL;
    void *sp = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    TU_CHECK_OK(mproc_condition_create(shm, NULL, l, &cv));
    TU_CHECK_OK(mproc_shm_alloc(shm, sizeof(cstate_t), NULL, &sp));
    int up[2], down[2];
    if (tu_failed || tu_pipe(up) != 0) {
        mproc_shm_close(shm);
        return;
    }
    if (tu_pipe(down) != 0) {
        close(up[0]);
        close(up[1]);
        mproc_shm_close(shm);
        return;
    }
    volatile cstate_t *st = sp;
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, cv, &a.off[0]);
    off_of(shm, sp, &a.off[1]);
    a.fd_w = up[1];
    a.fd_r = down[0];
    char c;
    /* a waiter is in wait when the notifier dies holding the lock */
    mproc_process_t *w = start_child(m, entry_cond_orphan, &a, shm);
    int ok = w && TU_CHECK_EQ_INT(tu_read_full(up[0], &c, 1, TU_T_MS), 1);
    if (ok) {
        TU_CHECK_OK(mproc_lock_acquire(l, TU_T_MS)); /* the waiter is in wait */
        TU_CHECK_OK(mproc_lock_release(l));
    }
    mproc_process_t *n = ok ? start_child(m, entry_cond_notifier, &a, shm) : NULL;
    if (n && TU_CHECK_EQ_INT(tu_read_full(up[0], &c, 1, TU_T_MS), 1))
        TU_CHECK_EQ_INT(c, 'n');
    kill_join(n);
    TU_CHECK_EQ_INT(join_free(w), 0);
    TU_CHECK_EQ_INT(st->woken, 1);
    TU_CHECK_OK(mproc_lock_acquire(l, 0)); /* the waiter repaired it */
    TU_CHECK_OK(mproc_lock_release(l));

    /* no waiter: the next acquirer gets EOWNERDEAD */
    n = start_child(m, entry_cond_notifier, &a, shm);
    if (n && TU_CHECK_EQ_INT(tu_read_full(up[0], &c, 1, TU_T_MS), 1))
        TU_CHECK_EQ_INT(c, 'n');
    kill_join(n);
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, TU_T_MS), -EOWNERDEAD);
    TU_CHECK_EQ_INT(st->pred, 2);
    TU_CHECK_OK(mproc_lock_consistent(l));
    TU_CHECK_EQ_INT(mproc_condition_wait(cv, 10), -ETIMEDOUT);
    TU_CHECK_EQ_INT(mproc_lock_acquire(l, 0), -EDEADLK);
    TU_CHECK_OK(mproc_lock_release(l));
    close(up[1]);
    close(down[0]);
    close(up[0]);
    close(down[1]);
    TU_CHECK_OK(mproc_shm_close(shm));
}
TU_DEFINE_METHOD_CASES(condition_notifier_killed)

/* ------------------------------------------------------------------ barrier */

/* off[0] barrier: one wait (TU_T_MS), the result reported on fd_w. */
static int entry_barrier_once(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_barrier_t *b;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_BARRIER, &b), 0);
    int rc = mproc_barrier_wait(b, TU_T_MS);
    C_RC(tu_write_full(a.fd_w, &rc, sizeof rc), 0);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

/* A party that dies before it arrives. */
static int entry_die(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    raise(SIGKILL);
    return 7;
}

static int read_rc(int fd)
{
    int rc = 12345;
    if (!TU_CHECK_EQ_INT(tu_read_full(fd, &rc, sizeof rc, TU_T_MS), sizeof rc))
        return 12345;
    return rc;
}

static void test_barrier_party_dies(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_barrier_t *b = NULL;
    TU_CHECK_OK(mproc_barrier_create(shm, NULL, 3, &b));
    int up[2];
    if (!b || tu_pipe(up) != 0) {
        mproc_shm_close(shm);
        return;
    }
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, b, &a.off[0]);
    a.fd_w = up[1];
    mproc_process_t *w, *d;

    /* 1. the dead party is seen through the others' timeouts */
    w = start_child(MPROC_START_FORK, entry_barrier_once, &a, shm);
    d = start_child(MPROC_START_FORK, entry_die, &a, shm);
    TU_CHECK_EQ_INT(join_free(d), -SIGKILL);
    TU_CHECK(wait_n_waiting(b, 1));
    int64_t t0 = now_ns();
    TU_CHECK_EQ_INT(mproc_barrier_wait(b, 100), -ETIMEDOUT);
    TU_CHECK(now_ns() - t0 >= 100 * 1000000LL);
    TU_CHECK_EQ_INT(read_rc(up[0]), MPROC_EBROKEN);
    TU_CHECK_EQ_INT(join_free(w), 0);
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 1);
    TU_CHECK_EQ_INT(mproc_barrier_wait(b, TU_T_MS), MPROC_EBROKEN);

    /* 2. whoever joined the dead party aborts: the waiters break out */
    TU_CHECK_OK(mproc_barrier_reset(b));
    w = start_child(MPROC_START_SPAWN, entry_barrier_once, &a, shm);
    d = start_child(MPROC_START_FORK, entry_die, &a, shm);
    TU_CHECK(wait_n_waiting(b, 1));
    TU_CHECK_EQ_INT(join_free(d), -SIGKILL);
    TU_CHECK_OK(mproc_barrier_abort(b));
    TU_CHECK_EQ_INT(read_rc(up[0]), MPROC_EBROKEN);
    TU_CHECK_EQ_INT(join_free(w), 0);
    TU_CHECK_EQ_INT(mproc_barrier_wait(b, 0), MPROC_EBROKEN);

    /* 3. reset: it works again */
    TU_CHECK_OK(mproc_barrier_reset(b));
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 0);
    mproc_process_t *w2[2];
    w2[0] = start_child(MPROC_START_FORK, entry_barrier_once, &a, shm);
    w2[1] = start_child(MPROC_START_FORKSERVER, entry_barrier_once, &a, shm);
    TU_CHECK(wait_n_waiting(b, 2));
    TU_CHECK_EQ_INT(mproc_barrier_wait(b, TU_T_MS), 2);
    int r0 = read_rc(up[0]), r1 = read_rc(up[0]);
    TU_CHECK((r0 == 0 && r1 == 1) || (r0 == 1 && r1 == 0));
    TU_CHECK_EQ_INT(join_free(w2[0]), 0);
    TU_CHECK_EQ_INT(join_free(w2[1]), 0);

    /* 4. a party that dies while waiting counts as arrived */
    mproc_process_t *k = start_child(MPROC_START_FORK, entry_barrier_once, &a, shm);
    TU_CHECK(wait_n_waiting(b, 1));
    kill_join(k);
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 0);
    w = start_child(MPROC_START_FORK, entry_barrier_once, &a, shm);
    TU_CHECK(wait_n_waiting(b, 2));
    TU_CHECK_EQ_INT(mproc_barrier_wait(b, TU_T_MS), 2);
    TU_CHECK_EQ_INT(read_rc(up[0]), 1);
    TU_CHECK_EQ_INT(join_free(w), 0);
    TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 0);
    TU_CHECK_EQ_INT(mproc_barrier_n_waiting(b), 0);

    close(up[0]);
    close(up[1]);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* Parties killed at random points of their barrier loop (inside the
 * barrier's bookkeeping some of the time): after a reset the barrier works
 * again, every time. off[0] barrier, off[1] rstate (progress, target,
 * child_err), off[2] event: set once progress reaches target. */
static int entry_barrier_loop(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_barrier_t *b;
    void *sp;
    mproc_event_t *reached;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_BARRIER, &b), 0);
    C_RC(c_at(shm, a.off[1], MPROC_OBJ_BYTES, &sp), 0);
    C_RC(c_at(shm, a.off[2], MPROC_OBJ_EVENT, &reached), 0);
    rstate_t *st = sp;
    for (;;) {
        int rc = mproc_barrier_wait(b, TU_T_MS);
        if (rc == MPROC_EBROKEN) { /* the other one died in its bookkeeping */
            char c;
            tu_read_full(a.fd_r, &c, 1, TU_T_MS); /* wait to be killed */
            return 0;
        }
        if (rc < 0 || rc > 1) {
            __atomic_store_n(&st->child_err, rc < 0 ? rc : 1000 + rc, __ATOMIC_SEQ_CST);
            return 1;
        }
        int64_t done = __atomic_add_fetch(&st->progress, 1, __ATOMIC_SEQ_CST);
        if (done == st->target)
            mproc_event_set(reached);
    }
}

static void test_barrier_parties_killed_randomly(void)
{
    seed();
    uint64_t seed0 = rng_state;
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_barrier_t *b = NULL;
    mproc_event_t *reached = NULL;
    void *sp = NULL;
    TU_CHECK_OK(mproc_barrier_create(shm, NULL, 2, &b));
    TU_CHECK_OK(mproc_event_create(shm, NULL, &reached));
    TU_CHECK_OK(mproc_shm_alloc(shm, sizeof(rstate_t), NULL, &sp));
    int up[2], down[2];
    if (tu_failed || tu_pipe(up) != 0) {
        mproc_shm_close(shm);
        return;
    }
    if (tu_pipe(down) != 0) {
        close(up[0]);
        close(up[1]);
        mproc_shm_close(shm);
        return;
    }
    rstate_t *st = sp;
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, b, &a.off[0]);
    off_of(shm, sp, &a.off[1]);
    off_of(shm, reached, &a.off[2]);
    a.fd_r = down[0];
    carg_t once = a;
    once.fd_r = -1;
    once.fd_w = up[1];
    int rounds = 200, broken_seen = 0;
    for (int r = 0; r < rounds && !tu_failed; r++) {
        tu_context("round=%d seed=%llu (TU_SEED)", r, (unsigned long long)seed0);
        TU_CHECK_OK(mproc_barrier_reset(b));
        TU_CHECK_EQ_INT(mproc_barrier_is_broken(b), 0);
        TU_CHECK_EQ_INT(mproc_barrier_n_waiting(b), 0);
        TU_CHECK_OK(mproc_event_clear(reached));
        st->target = __atomic_load_n(&st->progress, __ATOMIC_SEQ_CST) + 1 + rnd(30);
        mproc_process_t *p[2];
        p[0] = start_child(MPROC_START_FORK, entry_barrier_loop, &a, shm);
        p[1] = start_child(MPROC_START_FORK, entry_barrier_loop, &a, shm);
        if (!p[0] || !p[1]) {
            kill_join(p[0]);
            kill_join(p[1]);
            break;
        }
        TU_CHECK_OK(mproc_event_wait(reached, TU_T_MS));
        for (volatile uint32_t k = rnd(3000); k > 0; k--) {
        }
        int first = (int)rnd(2);
        kill_join(p[first]);
        if (rnd(2))
            sched_yield(); /* the survivor may go on into its next wait */
        kill_join(p[1 - first]);
        TU_CHECK_EQ_INT(st->child_err, 0);
        broken_seen += mproc_barrier_is_broken(b) == 1;
        /* whatever state they left it in: reset, and a round works */
        TU_CHECK_OK(mproc_barrier_reset(b));
        mproc_process_t *w[2];
        w[0] = start_child(MPROC_START_FORK, entry_barrier_once, &once, shm);
        w[1] = start_child(MPROC_START_FORK, entry_barrier_once, &once, shm);
        int r0 = read_rc(up[0]), r1 = read_rc(up[0]);
        TU_CHECK((r0 == 0 && r1 == 1) || (r0 == 1 && r1 == 0));
        TU_CHECK_EQ_INT(join_free(w[0]), 0);
        TU_CHECK_EQ_INT(join_free(w[1]), 0);
    }
    if (getenv("TU_VERBOSE"))
        fprintf(stderr, "  barrier kills: %d rounds, broken after the kills %d\n", rounds,
                broken_seen);
    close(up[0]);
    close(up[1]);
    close(down[0]);
    close(down[1]);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ semaphore */

/* off[0] semaphore: take one unit, say so on fd_w, block on fd_r. */
static int entry_sem_hold(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_semaphore_t *s;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_SEMAPHORE, &s), 0);
    C_RC(mproc_semaphore_acquire(s, TU_T_MS), 0);
    C_RC(tu_write_full(a.fd_w, "h", 1), 0);
    char c;
    tu_read_full(a.fd_r, &c, 1, TU_T_MS); /* killed while here */
    return 7;
}

/* off[0] semaphore: acquire (TU_T_MS) once. */
static int entry_sem_take(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_semaphore_t *s;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_SEMAPHORE, &s), 0);
    C_RC(mproc_semaphore_acquire(s, TU_T_MS), 0);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

static void test_semaphore_holder_dies(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_semaphore_t *s = NULL, *bs = NULL;
    TU_CHECK_OK(mproc_semaphore_create(shm, NULL, 2, 0, &s));
    TU_CHECK_OK(mproc_semaphore_create(shm, NULL, 1, 1, &bs));
    int up[2], down[2];
    if (tu_failed || tu_pipe(up) != 0) {
        mproc_shm_close(shm);
        return;
    }
    if (tu_pipe(down) != 0) {
        close(up[0]);
        close(up[1]);
        mproc_shm_close(shm);
        return;
    }
    carg_t a;
    carg_init(&a, shm);
    a.fd_w = up[1];
    a.fd_r = down[0];
    char c;

    /* unbounded, 2 units: the dead holder's unit is lost, the other is not */
    off_of(shm, s, &a.off[0]);
    mproc_process_t *p = start_child(MPROC_START_FORK, entry_sem_hold, &a, shm);
    if (p)
        TU_CHECK_EQ_INT(tu_read_full(up[0], &c, 1, TU_T_MS), 1);
    kill_join(p);
    TU_CHECK_EQ_INT(mproc_semaphore_value(s), 1);
    TU_CHECK_OK(mproc_semaphore_acquire(s, 0)); /* not blocked beyond the lost unit */
    TU_CHECK_EQ_INT(mproc_semaphore_value(s), 0);
    TU_CHECK_EQ_INT(mproc_semaphore_acquire(s, 0), -ETIMEDOUT);
    TU_CHECK_OK(mproc_semaphore_release(s));
    TU_CHECK_EQ_INT(join_free(start_child(MPROC_START_SPAWN, entry_sem_take, &a, shm)), 0);
    TU_CHECK_EQ_INT(mproc_semaphore_value(s), 0);

    /* bounded (1, 1): whoever watched it die may give the unit back */
    off_of(shm, bs, &a.off[0]);
    p = start_child(MPROC_START_FORKSERVER, entry_sem_hold, &a, shm);
    if (p)
        TU_CHECK_EQ_INT(tu_read_full(up[0], &c, 1, TU_T_MS), 1);
    kill_join(p);
    TU_CHECK_EQ_INT(mproc_semaphore_value(bs), 0);
    TU_CHECK_EQ_INT(mproc_semaphore_acquire(bs, 0), -ETIMEDOUT);
    TU_CHECK_OK(mproc_semaphore_release(bs));
    TU_CHECK_EQ_INT(mproc_semaphore_value(bs), 1);
    TU_CHECK_EQ_INT(mproc_semaphore_release(bs), -EOVERFLOW);
    TU_CHECK_EQ_INT(join_free(start_child(MPROC_START_FORK, entry_sem_take, &a, shm)), 0);
    TU_CHECK_EQ_INT(mproc_semaphore_value(bs), 0);

    close(up[0]);
    close(up[1]);
    close(down[0]);
    close(down[1]);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ several held at once */

/*
 * mproc's locks share each thread's robust list with glibc's robust
 * mutexes. A holder of several (mproc locks, an rlock taken twice, a glibc
 * robust process-shared mutex), which released one from the middle of its
 * list and holds one more in a second thread, dies: every lock it held
 * reports EOWNERDEAD, the one it released is simply free.
 */
typedef struct {
    mproc_lock_t *l1, *l2, *l3, *l4;
    mproc_rlock_t *r;
    pthread_mutex_t *g;
} many_t;

static int many_from(mproc_shm_t *shm, const carg_t *a, many_t *m)
{
    int rc = c_at(shm, a->off[0], MPROC_OBJ_LOCK, &m->l1);
    if (!rc)
        rc = c_at(shm, a->off[1], MPROC_OBJ_LOCK, &m->l2);
    if (!rc)
        rc = c_at(shm, a->off[2], MPROC_OBJ_LOCK, &m->l3);
    if (!rc)
        rc = c_at(shm, a->off[3], MPROC_OBJ_LOCK, &m->l4);
    if (!rc)
        rc = c_at(shm, a->off[4], MPROC_OBJ_RLOCK, &m->r);
    if (!rc)
        rc = c_at(shm, a->off[5], MPROC_OBJ_BYTES, &m->g);
    return rc;
}

typedef struct {
    mproc_lock_t *l;
    int fd_w, fd_r;
    int rc;
} holder_thr_t;

static void *thr_hold_and_block(void *p)
{
    holder_thr_t *t = p;
    t->rc = mproc_lock_acquire(t->l, TU_T_MS);
    tu_write_full(t->fd_w, t->rc == 0 ? "t" : "T", 1);
    char c;
    tu_read_full(t->fd_r, &c, 1, TU_T_MS); /* killed while here */
    return NULL;
}

static int entry_hold_many(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    many_t m;
    C_RC(many_from(shm, &a, &m), 0);
    C_RC(mproc_lock_acquire(m.l1, TU_T_MS), 0);
    C_RC(pthread_mutex_lock(m.g), 0);
    C_RC(mproc_lock_acquire(m.l2, TU_T_MS), 0);
    C_RC(mproc_rlock_acquire(m.r, TU_T_MS), 0);
    C_RC(mproc_lock_acquire(m.l3, TU_T_MS), 0);
    C_RC(mproc_rlock_acquire(m.r, TU_T_MS), 0);
    C_RC(mproc_lock_release(m.l2), 0); /* from the middle of the list */
    static holder_thr_t t;
    t = (holder_thr_t){.l = m.l4, .fd_w = a.fd_w, .fd_r = a.fd_r};
    pthread_t th;
    C_RC(pthread_create(&th, NULL, thr_hold_and_block, &t), 0);
    C_RC(tu_write_full(a.fd_w, "h", 1), 0);
    char c;
    tu_read_full(a.fd_r, &c, 1, TU_T_MS); /* killed while here */
    return 7;
}

static int create_glibc_robust(mproc_shm_t *shm, pthread_mutex_t **out)
{
    void *p = NULL;
    int rc = mproc_shm_alloc(shm, sizeof(pthread_mutex_t), NULL, &p);
    if (rc)
        return rc;
    pthread_mutexattr_t at;
    pthread_mutexattr_init(&at);
    pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
    rc = -pthread_mutex_init(p, &at);
    pthread_mutexattr_destroy(&at);
    *out = p;
    return rc;
}

static int make_many(mproc_shm_t *shm, many_t *m, carg_t *a)
{
    memset(m, 0, sizeof *m);
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &m->l1));
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &m->l2));
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &m->l3));
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &m->l4));
    TU_CHECK_OK(mproc_rlock_create(shm, NULL, &m->r));
    TU_CHECK_OK(create_glibc_robust(shm, &m->g));
    if (tu_failed)
        return 0;
    carg_init(a, shm);
    off_of(shm, m->l1, &a->off[0]);
    off_of(shm, m->l2, &a->off[1]);
    off_of(shm, m->l3, &a->off[2]);
    off_of(shm, m->l4, &a->off[3]);
    off_of(shm, m->r, &a->off[4]);
    off_of(shm, m->g, &a->off[5]);
    return 1;
}

static void expect_dead_lock(mproc_lock_t *l)
{
    if (TU_CHECK_EQ_INT(mproc_lock_acquire(l, 2000), -EOWNERDEAD)) {
        TU_CHECK_OK(mproc_lock_consistent(l));
        TU_CHECK_OK(mproc_lock_release(l));
    }
}

static void expect_free_lock(mproc_lock_t *l)
{
    if (TU_CHECK_OK(mproc_lock_acquire(l, 0)))
        TU_CHECK_OK(mproc_lock_release(l));
}

static void several_held_die(mproc_start_method_t m)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    many_t mm;
    carg_t a;
    int up[2], down[2];
    if (!make_many(shm, &mm, &a) || tu_pipe(up) != 0) {
        mproc_shm_close(shm);
        return;
    }
    if (tu_pipe(down) != 0) {
        close(up[0]);
        close(up[1]);
        mproc_shm_close(shm);
        return;
    }
    a.fd_w = up[1];
    a.fd_r = down[0];
    mproc_process_t *p = start_child(m, entry_hold_many, &a, shm);
    char got[2] = {0};
    if (p && TU_CHECK_EQ_INT(tu_read_full(up[0], got, 2, TU_T_MS), 2)) {
        TU_CHECK(memchr(got, 'h', 2) && memchr(got, 't', 2));
        TU_CHECK_EQ_INT(mproc_lock_acquire(mm.l1, 0), -ETIMEDOUT);
        TU_CHECK_EQ_INT(mproc_lock_acquire(mm.l4, 0), -ETIMEDOUT);
    }
    kill_join(p);
    expect_dead_lock(mm.l1);
    expect_free_lock(mm.l2);
    expect_dead_lock(mm.l3);
    expect_dead_lock(mm.l4); /* held by the child's second thread */
    if (TU_CHECK_EQ_INT(mproc_rlock_acquire(mm.r, 2000), -EOWNERDEAD)) {
        TU_CHECK_OK(mproc_rlock_consistent(mm.r));
        TU_CHECK_OK(mproc_rlock_release(mm.r));
        TU_CHECK_EQ_INT(mproc_rlock_release(mm.r), -EPERM);
    }
    if (TU_CHECK_EQ_INT(pthread_mutex_lock(mm.g), EOWNERDEAD)) {
        TU_CHECK_EQ_INT(pthread_mutex_consistent(mm.g), 0);
        TU_CHECK_EQ_INT(pthread_mutex_unlock(mm.g), 0);
    }
    close(up[0]);
    close(up[1]);
    close(down[0]);
    close(down[1]);
    pthread_mutex_destroy(mm.g);
    TU_CHECK_OK(mproc_shm_close(shm));
}
TU_DEFINE_METHOD_CASES(several_held_die)

/* A thread takes five, releases two in an order that is not the reverse of
 * taking them (mproc's and glibc's interleaved), exits holding three. */
static void *thr_mixed_orders(void *p)
{
    many_t *m = p;
    intptr_t bad = 0;
    bad |= mproc_lock_acquire(m->l1, 0) != 0;
    bad |= pthread_mutex_lock(m->g) != 0;
    bad |= mproc_lock_acquire(m->l2, 0) != 0;
    bad |= mproc_rlock_acquire(m->r, 0) != 0;
    bad |= mproc_lock_acquire(m->l3, 0) != 0;
    bad |= mproc_lock_release(m->l2) != 0;
    bad |= pthread_mutex_unlock(m->g) != 0;
    bad |= mproc_lock_acquire(m->l4, 0) != 0;
    bad |= mproc_lock_release(m->l1) != 0;
    bad |= mproc_lock_acquire(m->l1, 0) != 0; /* taken again: first in the list */
    return (void *)bad;                       /* exits holding l1, r, l3, l4 */
}

static void test_mixed_release_orders(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    many_t mm;
    carg_t a;
    if (!make_many(shm, &mm, &a)) {
        mproc_shm_close(shm);
        return;
    }
    /* the same in this thread first, all released, in a scrambled order */
    for (int round = 0; round < 3; round++) {
        TU_CHECK_OK(mproc_lock_acquire(mm.l3, 0));
        TU_CHECK_EQ_INT(pthread_mutex_lock(mm.g), 0);
        TU_CHECK_OK(mproc_lock_acquire(mm.l1, 0));
        TU_CHECK_OK(mproc_rlock_acquire(mm.r, 0));
        TU_CHECK_OK(mproc_lock_acquire(mm.l2, 0));
        TU_CHECK_OK(mproc_lock_release(mm.l1));
        TU_CHECK_OK(mproc_lock_release(mm.l3));
        TU_CHECK_EQ_INT(pthread_mutex_unlock(mm.g), 0);
        TU_CHECK_OK(mproc_lock_release(mm.l2));
        TU_CHECK_OK(mproc_rlock_release(mm.r));
    }
    pthread_t th;
    void *ret = (void *)1;
    TU_REQUIRE(pthread_create(&th, NULL, thr_mixed_orders, &mm) == 0);
    pthread_join(th, &ret);
    TU_CHECK(ret == NULL);
    expect_dead_lock(mm.l1);
    expect_free_lock(mm.l2);
    expect_dead_lock(mm.l3);
    expect_dead_lock(mm.l4);
    if (TU_CHECK_EQ_INT(mproc_rlock_acquire(mm.r, 2000), -EOWNERDEAD)) {
        TU_CHECK_OK(mproc_rlock_consistent(mm.r));
        TU_CHECK_OK(mproc_rlock_release(mm.r));
    }
    TU_CHECK_EQ_INT(pthread_mutex_trylock(mm.g), 0); /* released: not owner-dead */
    TU_CHECK_EQ_INT(pthread_mutex_unlock(mm.g), 0);
    /* consistent is only for a holder that got EOWNERDEAD */
    TU_CHECK(mproc_lock_consistent(mm.l1) < 0);
    TU_CHECK_OK(mproc_lock_acquire(mm.l1, 0));
    TU_CHECK(mproc_lock_consistent(mm.l1) < 0);
    TU_CHECK_OK(mproc_lock_release(mm.l1));
    pthread_mutex_destroy(mm.g);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ a raw fork() child */

static mproc_lock_t *g_rawfork_lock;
static int g_rawfork_timeout = TU_T_MS;

static int rawfork_take_and_exit(void *ctx)
{
    (void)ctx;
    /* a raw fork child: mproc did not make it, its at-fork handler ran */
    int rc = mproc_lock_acquire(g_rawfork_lock, g_rawfork_timeout);
    return rc == 0 ? 0 : rc == -ETIMEDOUT ? 9 : 10;
}

static void test_raw_fork_holder(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    if (!l) {
        mproc_shm_close(shm);
        return;
    }
    /* warm this thread's caches (tid, robust list) before forking */
    TU_CHECK_OK(mproc_lock_acquire(l, 0));
    TU_CHECK_OK(mproc_lock_release(l));
    g_rawfork_lock = l;
    for (int i = 0; i < 3; i++) {
        int status = TU_NO_CODE;
        TU_CHECK_OK(tu_run_child(rawfork_take_and_exit, NULL, TU_T_MS, &status));
        TU_CHECK_EQ_INT(status, 0);
        TU_CHECK_EQ_INT(mproc_lock_acquire(l, 2000), -EOWNERDEAD);
        TU_CHECK_OK(mproc_lock_consistent(l));
        TU_CHECK_OK(mproc_lock_release(l));
    }
    /* forked while this process holds it: the child does not own it */
    TU_CHECK_OK(mproc_lock_acquire(l, 0));
    g_rawfork_timeout = 50;
    int status = TU_NO_CODE;
    TU_CHECK_OK(tu_run_child(rawfork_take_and_exit, NULL, TU_T_MS, &status));
    TU_CHECK_EQ_INT(status, 9); /* timed out: the lock is ours */
    g_rawfork_timeout = TU_T_MS;
    TU_CHECK_OK(mproc_lock_release(l));
    TU_CHECK_OK(mproc_lock_acquire(l, 0)); /* and not owner-dead */
    TU_CHECK_OK(mproc_lock_release(l));
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ waiters killed */

/* off[0] lock: say so on fd_w, then acquire (TU_T_MS), release, exit 0;
 * exit 3 on EOWNERDEAD, 4 on another error. */
static int entry_lock_waiter(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    mproc_lock_t *l;
    C_RC(c_at(shm, a.off[0], MPROC_OBJ_LOCK, &l), 0);
    C_RC(tu_write_full(a.fd_w, "w", 1), 0);
    int rc = mproc_lock_acquire(l, TU_T_MS);
    if (rc == -EOWNERDEAD)
        return 3;
    if (rc != 0)
        return 4;
    C_RC(mproc_lock_release(l), 0);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

/* Processes blocked in acquire die; the holder's release still reaches a
 * live one, which gets the lock cleanly (a waiter held nothing). */
static void test_lock_waiters_killed(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    int up[2];
    if (!l || tu_pipe(up) != 0) {
        mproc_shm_close(shm);
        return;
    }
    carg_t a;
    carg_init(&a, shm);
    off_of(shm, l, &a.off[0]);
    a.fd_w = up[1];
    enum { N = 4 };
    for (int round = 0; round < 3; round++) {
        tu_context("round %d", round);
        TU_CHECK_OK(mproc_lock_acquire(l, 0));
        mproc_process_t *p[N];
        int ok = 1;
        for (int i = 0; i < N; i++) {
            p[i] = start_child(MPROC_START_FORK, entry_lock_waiter, &a, shm);
            ok &= p[i] != NULL;
        }
        char buf[N];
        if (ok)
            TU_CHECK_EQ_INT(tu_read_full(up[0], buf, N, TU_T_MS), N);
        /* all but the last die, most likely inside the futex wait */
        for (int i = 0; i < N - 1; i++) {
            kill_join(p[i]);
            p[i] = NULL;
        }
        TU_CHECK_OK(mproc_lock_release(l));
        TU_CHECK_EQ_INT(join_free(p[N - 1]), 0);
        TU_CHECK_OK(mproc_lock_acquire(l, 0)); /* free, not owner-dead */
        TU_CHECK_OK(mproc_lock_release(l));
    }
    close(up[0]);
    close(up[1]);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ asleep when the holder dies */

/* off[0] lock (kind 0) or rlock (kind 1): say so on fd_w, then acquire
 * (TU_T_MS): exit 0 on EOWNERDEAD within 5 s (and repair, release), 2 if it
 * got the lock cleanly, 3 on a timeout, 4 on another error. */
static int entry_wait_for_dead(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    void *o;
    C_RC(c_at(shm, a.off[0], a.kind == 0 ? MPROC_OBJ_LOCK : MPROC_OBJ_RLOCK, &o), 0);
    C_RC(tu_write_full(a.fd_w, "w", 1), 0);
    int64_t t0 = now_ns();
    int rc = a.kind == 0 ? mproc_lock_acquire(o, TU_T_MS) : mproc_rlock_acquire(o, TU_T_MS);
    if (rc == -ETIMEDOUT)
        return 3;
    if (rc == 0)
        return 2;
    if (rc != -EOWNERDEAD)
        return 4;
    C_REQ(now_ns() - t0 < 5000 * 1000000LL);
    if (a.kind == 0) {
        C_RC(mproc_lock_consistent(o), 0);
        C_RC(mproc_lock_release(o), 0);
    } else {
        C_RC(mproc_rlock_consistent(o), 0);
        C_RC(mproc_rlock_release(o), 0);
    }
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

/* The kernel wakes a sleeping waiter when the holder dies: the waiter
 * returns EOWNERDEAD at once, not at its timeout. */
static void test_sleeping_waiter_sees_death(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_lock_t *l = NULL;
    mproc_rlock_t *rl = NULL;
    TU_CHECK_OK(mproc_lock_create(shm, NULL, &l));
    TU_CHECK_OK(mproc_rlock_create(shm, NULL, &rl));
    int up[2], down[2];
    if (tu_failed || tu_pipe(up) != 0) {
        mproc_shm_close(shm);
        return;
    }
    if (tu_pipe(down) != 0) {
        close(up[0]);
        close(up[1]);
        mproc_shm_close(shm);
        return;
    }
    for (int kind = 0; kind < 2; kind++) {
        mproc_start_method_t wm = kind == 0 ? MPROC_START_FORK : MPROC_START_SPAWN;
        tu_context("%s, waiter %s", kind == 0 ? "lock" : "rlock", tu_method_name(wm));
        carg_t a;
        carg_init(&a, shm);
        off_of(shm, kind == 0 ? (void *)l : (void *)rl, &a.off[0]);
        a.fd_w = up[1];
        a.fd_r = down[0];
        a.n = 2;
        a.kind = kind;
        char c;
        mproc_process_t *h = NULL, *w = NULL;
        if (kind == 0)
            h = start_child(MPROC_START_FORK, entry_lock_hold_block, &a, shm);
        else
            h = start_child(MPROC_START_FORKSERVER, entry_rlock_hold, &a, shm);
        if (h && TU_CHECK_EQ_INT(tu_read_full(up[0], &c, 1, TU_T_MS), 1)) {
            w = start_child(wm, entry_wait_for_dead, &a, shm);
            if (w && TU_CHECK_EQ_INT(tu_read_full(up[0], &c, 1, TU_T_MS), 1))
                TU_CHECK(wait_sleeping(&w, 1)); /* asleep on the futex */
        }
        kill_join(h);
        TU_CHECK_EQ_INT(join_free(w), 0);
        if (kind == 0) {
            TU_CHECK_OK(mproc_lock_acquire(l, 0)); /* repaired by the waiter */
            TU_CHECK_OK(mproc_lock_release(l));
        } else {
            TU_CHECK_OK(mproc_rlock_acquire(rl, 0));
            TU_CHECK_OK(mproc_rlock_release(rl));
        }
    }
    close(up[0]);
    close(up[1]);
    close(down[0]);
    close(down[1]);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ dead event, semaphore waiters
 */

/* off[0] event (kind 0) or semaphore (kind 1): say so on fd_w, wait for it
 * (TU_T_MS), exit 0. */
static int entry_ev_sem_waiter(const void *arg, size_t len)
{
    carg_t a;
    mproc_shm_t *shm = NULL;
    C_RC(c_attach(arg, len, &a, &shm), 0);
    void *o;
    C_RC(c_at(shm, a.off[0], a.kind == 0 ? MPROC_OBJ_EVENT : MPROC_OBJ_SEMAPHORE, &o), 0);
    C_RC(tu_write_full(a.fd_w, "w", 1), 0);
    if (a.kind == 0)
        C_RC(mproc_event_wait(o, TU_T_MS), 0);
    else
        C_RC(mproc_semaphore_acquire(o, TU_T_MS), 0);
    C_RC(mproc_shm_close(shm), 0);
    return 0;
}

/* Waiters killed while they wait leave nothing that blocks the rest. */
static void test_event_semaphore_waiters_killed(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, SEG_SIZE));
    mproc_event_t *ev = NULL;
    mproc_semaphore_t *s = NULL;
    TU_CHECK_OK(mproc_event_create(shm, NULL, &ev));
    TU_CHECK_OK(mproc_semaphore_create(shm, NULL, 0, 0, &s));
    int up[2];
    if (tu_failed || tu_pipe(up) != 0) {
        mproc_shm_close(shm);
        return;
    }
    carg_t a;
    carg_init(&a, shm);
    a.fd_w = up[1];
    enum { N = 4 };
    for (int kind = 0; kind < 2; kind++) {
        tu_context("%s", kind == 0 ? "event" : "semaphore");
        off_of(shm, kind == 0 ? (void *)ev : (void *)s, &a.off[0]);
        a.kind = kind;
        mproc_process_t *p[N];
        int ok = 1;
        for (int i = 0; i < N; i++) {
            p[i] = start_child(MPROC_START_FORK, entry_ev_sem_waiter, &a, shm);
            ok &= p[i] != NULL;
        }
        char buf[N];
        if (ok)
            TU_CHECK_EQ_INT(tu_read_full(up[0], buf, N, TU_T_MS), N);
        kill_join(p[0]);
        kill_join(p[1]);
        if (kind == 0) {
            TU_CHECK_OK(mproc_event_set(ev));
        } else {
            TU_CHECK_OK(mproc_semaphore_release(s)); /* one unit each */
            TU_CHECK_OK(mproc_semaphore_release(s));
        }
        TU_CHECK_EQ_INT(join_free(p[2]), 0);
        TU_CHECK_EQ_INT(join_free(p[3]), 0);
    }
    TU_CHECK_EQ_INT(mproc_semaphore_value(s), 0); /* the dead took none */
    TU_CHECK_OK(mproc_semaphore_release(s));
    TU_CHECK_OK(mproc_semaphore_acquire(s, 0));
    TU_CHECK_EQ_INT(mproc_event_is_set(ev), 1);
    close(up[0]);
    close(up[1]);
    TU_CHECK_OK(mproc_shm_close(shm));
}

/* ------------------------------------------------------------------ main */

static const tu_case_t cases[] = {
    TU_METHOD_CASES(kill_holder_rounds),
    TU_CASE(test_thread_exits_holding),
    TU_METHOD_CASES(rlock_dead_owner),
    TU_CASE(test_condition_waiter_killed),
    TU_METHOD_CASES(condition_notifier_killed),
    TU_CASE(test_barrier_party_dies),
    TU_CASE(test_barrier_parties_killed_randomly),
    TU_CASE(test_semaphore_holder_dies),
    TU_METHOD_CASES(several_held_die),
    TU_CASE(test_mixed_release_orders),
    TU_CASE(test_raw_fork_holder),
    TU_CASE(test_lock_waiters_killed),
    TU_CASE(test_event_semaphore_waiters_killed),
    TU_CASE(test_sleeping_waiter_sees_death),
    TU_CASE(test_not_recoverable),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
