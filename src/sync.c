/*
 * sync.c - lock, rlock, semaphore, condition, event and barrier, all in
 * shared memory and process-shared.
 *
 * lock and rlock are made here and locked by lock.c: robust futexes on the
 * robust-futex list glibc keeps per thread, so the kernel marks a dead
 * holder's locks and the next acquirer learns of the death (EOWNERDEAD).
 *
 * The others are futex words with no owner state a death could corrupt:
 * a waiter that dies is simply gone from the kernel's wait queue. Waiter
 * counts only decide whether a wake-up syscall is needed; a dead waiter
 * leaves one too high, which costs a spare wake-up, never a missed one.
 * Wake-ups pair a seq_cst store of the value with a seq_cst load of the
 * waiter count (and the reverse in the waiter), so either the waiter sees
 * the new value or the waker sees the waiter.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <linux/futex.h>

/* 0 polls: the futex wait and the mutex try once. */
static inline int64_t deadline_of(int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    return timeout_ms == 0 ? 0 : mproc__deadline_ns(timeout_ms);
}

/* ---- lock and rlock: the objects (the lock itself is lock.c) ---------------- */

static int lock_init(void *obj, void *ctx)
{
    struct mproc_lock *l = obj;
    l->recursive = ctx != NULL;
    return 0;
}

static int create_obj(mproc_shm_t *shm, const char *name, mproc_obj_type_t type, size_t size,
                      int (*init)(void *, void *), void *ctx, void **out)
{
    return mproc__shm_new(shm, name, type, 0, size, init, ctx, out);
}

int mproc_lock_create(mproc_shm_t *shm, const char *name, mproc_lock_t **out)
{
    return create_obj(shm, name, MPROC_OBJ_LOCK, sizeof(mproc_lock_t), lock_init, NULL,
                      (void **)out);
}

int mproc_lock_open(mproc_shm_t *shm, const char *name, mproc_lock_t **out)
{
    return mproc_shm_find(shm, name, MPROC_OBJ_LOCK, (void **)out);
}

int mproc_rlock_create(mproc_shm_t *shm, const char *name, mproc_rlock_t **out)
{
    return create_obj(shm, name, MPROC_OBJ_RLOCK, sizeof(mproc_rlock_t), lock_init, (void *)1,
                      (void **)out);
}

int mproc_rlock_open(mproc_shm_t *shm, const char *name, mproc_rlock_t **out)
{
    return mproc_shm_find(shm, name, MPROC_OBJ_RLOCK, (void **)out);
}

/* ---- semaphore ------------------------------------------------------------- */

struct mproc_semaphore {
    _Atomic uint32_t value; /* the futex word */
    _Atomic uint32_t waiters;
    uint32_t max; /* 0: unbounded */
};

typedef struct {
    unsigned value, max;
} sem_init_t;

static int init_sem(void *obj, void *ctx)
{
    mproc_semaphore_t *s = obj;
    const sem_init_t *in = ctx;
    atomic_init(&s->value, in->value);
    s->max = in->max;
    return 0;
}

int mproc_semaphore_create(mproc_shm_t *shm, const char *name, unsigned value, unsigned max,
                           mproc_semaphore_t **out)
{
    if (value > INT32_MAX || max > INT32_MAX || (max && value > max)) {
        if (out)
            *out = NULL;
        return -EINVAL;
    }
    sem_init_t in = {value, max};
    return create_obj(shm, name, MPROC_OBJ_SEMAPHORE, sizeof(mproc_semaphore_t), init_sem, &in,
                      (void **)out);
}

int mproc_semaphore_open(mproc_shm_t *shm, const char *name, mproc_semaphore_t **out)
{
    return mproc_shm_find(shm, name, MPROC_OBJ_SEMAPHORE, (void **)out);
}

static int sem_try(mproc_semaphore_t *s)
{
    uint32_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    while (v > 0)
        if (atomic_compare_exchange_weak(&s->value, &v, v - 1))
            return 1;
    return 0;
}

int mproc_semaphore_acquire(mproc_semaphore_t *s, int timeout_ms)
{
    if (!s)
        return -EINVAL;
    if (sem_try(s))
        return 0;
    if (timeout_ms == 0)
        return -ETIMEDOUT;
    int64_t deadline = deadline_of(timeout_ms);
    atomic_fetch_add(&s->waiters, 1);
    int rc = 0;
    for (;;) {
        if (sem_try(s)) {
            rc = 0;
            break;
        }
        if (rc == -ETIMEDOUT)
            break;
        rc = mproc__futex_wait((const uint32_t *)&s->value, 0, deadline);
    }
    atomic_fetch_sub(&s->waiters, 1);
    return rc;
}

int mproc_semaphore_release(mproc_semaphore_t *s)
{
    if (!s)
        return -EINVAL;
    uint32_t limit = s->max ? s->max : INT32_MAX;
    uint32_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    do {
        if (v >= limit)
            return -EOVERFLOW;
    } while (!atomic_compare_exchange_weak(&s->value, &v, v + 1));
    if (atomic_load(&s->waiters) > 0)
        mproc__futex_wake((const uint32_t *)&s->value, 1);
    return 0;
}

int mproc_semaphore_value(const mproc_semaphore_t *s)
{
    return s ? (int)atomic_load(&((mproc_semaphore_t *)s)->value) : -EINVAL;
}

/* ---- condition -------------------------------------------------------------- */

struct mproc_condition {
    _Atomic uint32_t seq; /* bumped by every notify: the futex word      */
    uint32_t waiters;     /* changed under the lock only                 */
    int64_t lock_rel;     /* the lock, relative to this object: the same
                             in every mapping                            */
    mproc_lock_t own;     /* the lock when none was given                */
};

static mproc_lock_t *cond_lock(mproc_condition_t *c)
{
    return (mproc_lock_t *)((unsigned char *)c + c->lock_rel);
}

typedef struct {
    mproc_shm_t *shm;
    mproc_lock_t *lock;
} cond_init_t;

static int init_cond(void *obj, void *ctx)
{
    mproc_condition_t *c = obj;
    const cond_init_t *in = ctx;
    if (!in->lock) {
        c->lock_rel = (int64_t)offsetof(mproc_condition_t, own);
        return 0;
    }
    c->lock_rel = (int64_t)((unsigned char *)in->lock - (unsigned char *)c);
    return 0;
}

int mproc_condition_create(mproc_shm_t *shm, const char *name, mproc_lock_t *lock,
                           mproc_condition_t **out)
{
    if (lock && mproc_shm_object_size(shm, lock) != sizeof(mproc_lock_t)) {
        if (out)
            *out = NULL;
        return -EINVAL; /* not a lock of this segment */
    }
    if (lock) {
        uint64_t off;
        void *check;
        int rc = mproc_shm_offset(shm, lock, &off);
        if (rc == 0)
            rc = mproc_shm_at(shm, off, MPROC_OBJ_LOCK, &check);
        if (rc < 0) {
            if (out)
                *out = NULL;
            return -EINVAL;
        }
    }
    cond_init_t in = {shm, lock};
    return create_obj(shm, name, MPROC_OBJ_CONDITION, sizeof(mproc_condition_t), init_cond, &in,
                      (void **)out);
}

int mproc_condition_open(mproc_shm_t *shm, const char *name, mproc_condition_t **out)
{
    return mproc_shm_find(shm, name, MPROC_OBJ_CONDITION, (void **)out);
}

mproc_lock_t *mproc_condition_lock(mproc_condition_t *c)
{
    return c ? cond_lock(c) : NULL;
}

int mproc_condition_wait(mproc_condition_t *c, int timeout_ms)
{
    if (!c)
        return -EINVAL;
    mproc_lock_t *lock = cond_lock(c);
    if (!mproc__lock_held(lock))
        return -EPERM;
    int64_t deadline = deadline_of(timeout_ms);
    uint32_t seq = atomic_load(&c->seq);
    c->waiters++;
    mproc__lock_give(lock);
    /* A notify between the unlock and the sleep changed seq: no sleep.
     * Every notify changes seq, so an unchanged one after a return means
     * a signal interrupted the sleep: sleep on, to the same deadline. */
    int rc;
    do
        rc = mproc__futex_wait((const uint32_t *)&c->seq, seq, deadline);
    while (rc == 0 && atomic_load(&c->seq) == seq);
    int lrc = mproc__lock_take(lock, -1);
    if (lrc < 0 && lrc != -EOWNERDEAD)
        return lrc; /* -ENOTRECOVERABLE: the lock is not held */
    if (c->waiters > 0)
        c->waiters--;
    if (lrc == -EOWNERDEAD)
        return lrc;
    if (rc == -ETIMEDOUT && atomic_load(&c->seq) == seq)
        return -ETIMEDOUT;
    return 0;
}

int mproc_condition_notify(mproc_condition_t *c, int n)
{
    if (!c || n < 1)
        return -EINVAL;
    if (!mproc__lock_held(cond_lock(c)))
        return -EPERM;
    atomic_fetch_add(&c->seq, 1);
    if (c->waiters > 0)
        mproc__futex_wake((const uint32_t *)&c->seq, n);
    return 0;
}

int mproc_condition_notify_all(mproc_condition_t *c)
{
    return mproc_condition_notify(c, INT_MAX);
}

/* ---- event ------------------------------------------------------------------ */

/*
 * One futex word: bit 0 set/clear, bit 1 "someone sleeps", the rest a count
 * of sets. A waiter returns when the flag is set or the count moved: a set
 * wakes everyone waiting at the time even if a clear follows before they
 * run (as Python's Event.wait, which then returns True). A dead sleeper
 * leaves bit 1 behind: one spare wake-up at the next set.
 */
#define EV_SET 1u
#define EV_SLEEPERS 2u
#define EV_COUNT_ONE 4u

struct mproc_event {
    _Atomic uint32_t word;
};

int mproc_event_create(mproc_shm_t *shm, const char *name, mproc_event_t **out)
{
    return create_obj(shm, name, MPROC_OBJ_EVENT, sizeof(mproc_event_t), NULL, NULL, (void **)out);
}

int mproc_event_open(mproc_shm_t *shm, const char *name, mproc_event_t **out)
{
    return mproc_shm_find(shm, name, MPROC_OBJ_EVENT, (void **)out);
}

int mproc_event_set(mproc_event_t *ev)
{
    if (!ev)
        return -EINVAL;
    uint32_t w = atomic_load(&ev->word), nw;
    do {
        if (w & EV_SET) {
            /* Already set: still publish what the caller wrote before, as
             * a set that changed the word would (waiters load with acquire). */
            atomic_fetch_or_explicit(&ev->word, 0, memory_order_release);
            return 0;
        }
        nw = ((w & ~(EV_SET | EV_SLEEPERS)) + EV_COUNT_ONE) | EV_SET;
    } while (!atomic_compare_exchange_weak(&ev->word, &w, nw));
    if (w & EV_SLEEPERS)
        mproc__futex_wake((const uint32_t *)&ev->word, INT_MAX);
    return 0;
}

int mproc_event_clear(mproc_event_t *ev)
{
    if (!ev)
        return -EINVAL;
    atomic_fetch_and(&ev->word, ~EV_SET);
    return 0;
}

int mproc_event_is_set(const mproc_event_t *ev)
{
    return ev ? (int)(atomic_load(&((mproc_event_t *)ev)->word) & EV_SET) : -EINVAL;
}

int mproc_event_wait(mproc_event_t *ev, int timeout_ms)
{
    if (!ev)
        return -EINVAL;
    uint32_t w = atomic_load(&ev->word);
    if (w & EV_SET)
        return 0;
    if (timeout_ms == 0)
        return -ETIMEDOUT;
    int64_t deadline = deadline_of(timeout_ms);
    uint32_t count = w & ~(EV_SET | EV_SLEEPERS);
    for (;;) {
        if ((w & EV_SET) || (w & ~(EV_SET | EV_SLEEPERS)) != count)
            return 0; /* set, or set (and maybe cleared) since we came */
        if (!(w & EV_SLEEPERS) && !atomic_compare_exchange_weak(&ev->word, &w, w | EV_SLEEPERS))
            continue;
        if (mproc__futex_wait((const uint32_t *)&ev->word, w | EV_SLEEPERS, deadline) ==
            -ETIMEDOUT) {
            w = atomic_load(&ev->word);
            return (w & EV_SET) || (w & ~(EV_SET | EV_SLEEPERS)) != count ? 0 : -ETIMEDOUT;
        }
        w = atomic_load(&ev->word);
    }
}

/* ---- barrier ---------------------------------------------------------------- */

/*
 * Arrivals are counted under a robust lock; a generation ends (all arrived,
 * broken, reset) by recording its outcome, then bumping gen, the futex word
 * waiters sleep on. A waiter that wakes later reads its generation's outcome
 * in a 64-bit history: n parties cannot run 64 generations ahead of one of
 * them.
 */
struct mproc_barrier {
    mproc_lock_t lock;
    _Atomic uint32_t gen; /* the futex word */
    uint32_t parties;
    _Atomic uint32_t count;       /* arrived in this generation */
    _Atomic uint32_t broken;      /* until reset                */
    _Atomic uint64_t broken_gens; /* bit g%64: generation g ended broken */
};

static int init_barrier(void *obj, void *ctx)
{
    mproc_barrier_t *b = obj;
    b->parties = *(const unsigned *)ctx;
    return 0;
}

int mproc_barrier_create(mproc_shm_t *shm, const char *name, unsigned parties,
                         mproc_barrier_t **out)
{
    if (parties == 0 || parties > INT32_MAX) {
        if (out)
            *out = NULL;
        return -EINVAL;
    }
    return create_obj(shm, name, MPROC_OBJ_BARRIER, sizeof(mproc_barrier_t), init_barrier, &parties,
                      (void **)out);
}

int mproc_barrier_open(mproc_shm_t *shm, const char *name, mproc_barrier_t **out)
{
    return mproc_shm_find(shm, name, MPROC_OBJ_BARRIER, (void **)out);
}

/* Under the lock: end the current generation. */
static void end_generation(mproc_barrier_t *b, int broken)
{
    uint32_t g = atomic_load(&b->gen);
    uint64_t bit = 1ull << (g % 64);
    if (broken)
        atomic_fetch_or(&b->broken_gens, bit);
    else
        atomic_fetch_and(&b->broken_gens, ~bit);
    atomic_store(&b->count, 0);
    atomic_store(&b->gen, g + 1);
    mproc__futex_wake((const uint32_t *)&b->gen, INT_MAX);
}

/* The barrier's lock; a party that died holding it breaks the barrier. */
static int barrier_lock(mproc_barrier_t *b, int64_t deadline)
{
    int rc = mproc__lock_take(&b->lock, deadline);
    if (rc == -EOWNERDEAD) {
        b->broken = 1;
        if (atomic_load(&b->count) > 0)
            end_generation(b, 1);
        mproc__lock_consistent(&b->lock);
        rc = 0;
    }
    return rc;
}

int mproc_barrier_wait(mproc_barrier_t *b, int timeout_ms)
{
    if (!b)
        return -EINVAL;
    int64_t deadline = mproc__deadline_ns(timeout_ms);
    /* The internal lock is held for a few instructions at a time (a dead
     * holder is EOWNERDEAD at once): the timeout is for the other parties. */
    int rc = barrier_lock(b, -1);
    if (rc < 0)
        return rc;
    if (b->broken) {
        mproc__lock_give(&b->lock);
        return MPROC_EBROKEN;
    }
    uint32_t index = atomic_fetch_add(&b->count, 1);
    if (index + 1 == b->parties) {
        end_generation(b, 0);
        mproc__lock_give(&b->lock);
        return (int)index;
    }
    uint32_t g = atomic_load(&b->gen);
    mproc__lock_give(&b->lock);

    while (atomic_load(&b->gen) == g) {
        rc = timeout_ms == 0 ? -ETIMEDOUT
                             : mproc__futex_wait((const uint32_t *)&b->gen, g, deadline);
        if (rc == -ETIMEDOUT && atomic_load(&b->gen) == g) {
            /* Our time is up: break it for everyone, unless the generation
             * ended while we took the lock. */
            if (barrier_lock(b, -1) == 0) {
                int mine = atomic_load(&b->gen) == g;
                if (mine) {
                    b->broken = 1;
                    end_generation(b, 1);
                }
                mproc__lock_give(&b->lock);
                if (mine)
                    return -ETIMEDOUT;
            }
            break;
        }
    }
    uint64_t bits = atomic_load(&b->broken_gens);
    return bits & (1ull << (g % 64)) ? MPROC_EBROKEN : (int)index;
}

int mproc_barrier_abort(mproc_barrier_t *b)
{
    if (!b)
        return -EINVAL;
    int rc = barrier_lock(b, -1);
    if (rc < 0)
        return rc;
    b->broken = 1;
    if (atomic_load(&b->count) > 0)
        end_generation(b, 1);
    mproc__lock_give(&b->lock);
    return 0;
}

int mproc_barrier_reset(mproc_barrier_t *b)
{
    if (!b)
        return -EINVAL;
    int rc = barrier_lock(b, -1);
    if (rc < 0)
        return rc;
    if (atomic_load(&b->count) > 0)
        end_generation(b, 1);
    b->broken = 0;
    mproc__lock_give(&b->lock);
    return 0;
}

int mproc_barrier_is_broken(mproc_barrier_t *b)
{
    if (!b)
        return -EINVAL;
    return atomic_load(&b->broken) ? 1 : 0;
}

unsigned mproc_barrier_parties(const mproc_barrier_t *b)
{
    return b ? b->parties : 0;
}

unsigned mproc_barrier_n_waiting(const mproc_barrier_t *b)
{
    return b ? atomic_load(&((mproc_barrier_t *)b)->count) : 0;
}
