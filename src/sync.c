/*
 * sync.c - lock, rlock, semaphore, condition, event and barrier, all in
 * shared memory and process-shared.
 *
 * lock and rlock are glibc's robust process-shared mutexes: the kernel's
 * robust-futex list (owned by glibc, one per thread) is what marks a lock
 * whose holder died, and only glibc can safely put entries on it.
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

/* ---- lock and rlock: a robust futex on glibc's robust list ------------------ */

/*
 * The kernel keeps one robust-futex list per thread and, when the thread
 * dies, marks every futex on it whose owner field is that thread's id with
 * FUTEX_OWNER_DIED and wakes a waiter. glibc registers that list for every
 * thread and links its robust mutexes into it. mproc's lock links itself
 * into the same list, in the same doubly-linked format (pointers aim at the
 * `next` field; the kernel only follows those), with the futex word at the
 * same offset from the link as glibc's: so glibc's own robust mutexes and
 * ours can be held together in any order. That costs about half of
 * pthread_mutex_lock's robust path, which handles every mutex kind.
 *
 * The list head is found without a syscall: locking a private robust
 * pthread mutex makes glibc point its prev link at the head.
 *
 * word: owner tid | FUTEX_WAITERS (someone sleeps) | FUTEX_OWNER_DIED, or
 * LOCK_DEAD once the lock is not recoverable: an owner field no thread can
 * have, so the uncontended compare-and-swap from 0 fails on it by itself.
 * state: consistent, or inconsistent (taken after an owner died, not
 * repaired yet); read and written by the holder only.
 */
enum { LOCK_OK = 0, LOCK_INCONSISTENT = 1 };
#define LOCK_DEAD ((uint32_t)FUTEX_TID_MASK) /* above any pid_max */

struct mproc_lock {
    _Atomic uint32_t word; /* the futex word, offset 0                   */
    uint32_t count;        /* rlock: recursion depth                      */
    uint32_t state;        /* LOCK_*, the holder's                        */
    uint32_t recursive;
    uint32_t spare[2];
    void *prev, *next; /* robust list links, as pthread_mutex_t's     */
};

struct mproc_rlock {
    struct mproc_lock l;
};

/* The kernel finds the word at link + futex_offset; glibc set that offset
 * for pthread_mutex_t, whose layout ours copies. */
#define LOCK_FUTEX_OFFSET                                                                          \
    ((long)offsetof(struct mproc_lock, word) - (long)offsetof(struct mproc_lock, next))
_Static_assert(offsetof(pthread_mutex_t, __data.__lock) == offsetof(struct mproc_lock, word),
               "word where glibc's lock word is");
_Static_assert(offsetof(pthread_mutex_t, __data.__list.__next) == offsetof(struct mproc_lock, next),
               "links where glibc's links are");

struct robust_head {
    void *list;
    long futex_offset;
    void *list_op_pending;
};

/* This thread's robust list head; NULL if it has none (a thread glibc did
 * not create), in which case locks work but are not robust. */
static _Thread_local struct robust_head *tls_head __attribute__((tls_model("initial-exec")));
static _Thread_local int tls_head_known __attribute__((tls_model("initial-exec")));

static struct robust_head *robust_head(void)
{
    if (__builtin_expect(tls_head_known, 1))
        return tls_head;
    pthread_mutex_t m;
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&m, &a);
    pthread_mutexattr_destroy(&a);
    struct robust_head *h = NULL;
    if (pthread_mutex_lock(&m) == 0) {
        h = (struct robust_head *)m.__data.__list.__prev;
        pthread_mutex_unlock(&m);
    }
    pthread_mutex_destroy(&m);
    if (h && h->futex_offset != LOCK_FUTEX_OFFSET)
        h = NULL; /* not the layout we know: no robustness rather than harm */
    tls_head = h;
    tls_head_known = 1;
    return h;
}

/* Links point at the `next` field of a node; a node's prev sits just
 * before it (for the head too: glibc keeps robust_prev there). */
#define LINK_NODE_PREV(link) ((void **)((uintptr_t)(link) & ~(uintptr_t)1) - 1)
#define LINK_NEXT(link) ((void **)((uintptr_t)(link) & ~(uintptr_t)1))

static void enqueue(struct robust_head *h, struct mproc_lock *l)
{
    void *first = h->list;
    *LINK_NODE_PREV(first) = &l->next;
    l->next = first;
    l->prev = &h->list;
    atomic_signal_fence(memory_order_seq_cst); /* linked before published */
    h->list = &l->next;
}

static void dequeue(struct mproc_lock *l)
{
    *LINK_NODE_PREV(l->next) = l->prev;
    *LINK_NEXT(l->prev) = l->next;
    atomic_signal_fence(memory_order_seq_cst);
}

static void pending(struct robust_head *h, struct mproc_lock *l)
{
    if (h) {
        h->list_op_pending = l ? (void *)&l->next : NULL;
        atomic_signal_fence(memory_order_seq_cst);
    }
}

/*
 * How long a contended acquire spins (pause loops) before it sleeps. The
 * policy is measured, not guessed: with 2 processes on 2 CPUs hammering
 * one lock (bench/bench_sync.c), every spin length tried (100 to 3000)
 * gave ~58 ns per operation against ~39 ns for none. Spinning readers keep
 * pulling the lock's cache line from the holder, while a sleeper leaves
 * the holder to run many critical sections undisturbed. So: no spinning.
 */
#define LOCK_SPINS 0

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int lock_init(void *obj, void *ctx)
{
    struct mproc_lock *l = obj;
    l->recursive = ctx != NULL;
    return 0;
}

static int lock_take(struct mproc_lock *l, int64_t deadline)
{
    pid_t tid = mproc__tid();
    struct robust_head *h = robust_head();
    pending(h, NULL); /* the fast path may have set it */
    uint32_t w = atomic_load_explicit(&l->word, memory_order_relaxed);
    if ((w & FUTEX_TID_MASK) == (uint32_t)tid) {
        if (!l->recursive)
            return -EDEADLK;
        if (l->count == UINT32_MAX)
            return -EOVERFLOW;
        l->count++;
        return 0;
    }
    uint32_t waiters = 0; /* once we slept, others may sleep too */
    int spins = LOCK_SPINS;
    pending(h, l);
    for (;;) {
        if ((w & FUTEX_TID_MASK) == LOCK_DEAD) {
            pending(h, NULL);
            return -ENOTRECOVERABLE;
        }
        if ((w & FUTEX_TID_MASK) == 0) {
            uint32_t nw = (uint32_t)tid | (w & FUTEX_WAITERS) | waiters;
            if (atomic_compare_exchange_weak_explicit(&l->word, &w, nw, memory_order_acquire,
                                                      memory_order_relaxed)) {
                if (h)
                    enqueue(h, l);
                pending(h, NULL);
                l->count = 1;
                if (w & FUTEX_OWNER_DIED) {
                    l->state = LOCK_INCONSISTENT;
                    return -EOWNERDEAD;
                }
                return 0;
            }
            continue;
        }
        if (deadline == 0) {
            pending(h, NULL);
            return -ETIMEDOUT;
        }
        if (spins > 0) {
            spins--;
            cpu_relax();
            w = atomic_load_explicit(&l->word, memory_order_relaxed);
            continue;
        }
        if (!(w & FUTEX_WAITERS) && !atomic_compare_exchange_weak(&l->word, &w, w | FUTEX_WAITERS))
            continue;
        waiters = FUTEX_WAITERS;
        if (mproc__futex_wait((const uint32_t *)&l->word, w | FUTEX_WAITERS, deadline) ==
            -ETIMEDOUT) {
            w = atomic_load(&l->word);
            if ((w & FUTEX_TID_MASK) == 0)
                continue; /* freed just now: one last try */
            pending(h, NULL);
            return -ETIMEDOUT;
        }
        w = atomic_load_explicit(&l->word, memory_order_relaxed);
    }
}

static int lock_give(struct mproc_lock *l)
{
    pid_t tid = mproc__tid();
    uint32_t w = atomic_load_explicit(&l->word, memory_order_relaxed);
    if ((w & FUTEX_TID_MASK) != (uint32_t)tid)
        return -EPERM;
    if (l->recursive && l->count > 1) {
        l->count--;
        return 0;
    }
    /* Released without being repaired: nobody may have it again. */
    uint32_t next = l->state == LOCK_INCONSISTENT ? LOCK_DEAD : 0;
    l->count = 0;
    struct robust_head *h = robust_head();
    pending(h, l);
    if (h)
        dequeue(l);
    w = atomic_exchange_explicit(&l->word, next, memory_order_release);
    if (next == LOCK_DEAD)
        mproc__futex_wake((const uint32_t *)&l->word, INT_MAX);
    else if (w & FUTEX_WAITERS)
        mproc__futex_wake((const uint32_t *)&l->word, 1);
    pending(h, NULL);
    return 0;
}

static int lock_consistent(struct mproc_lock *l)
{
    uint32_t w = atomic_load_explicit(&l->word, memory_order_relaxed);
    if ((w & FUTEX_TID_MASK) != (uint32_t)mproc__tid() || l->state != LOCK_INCONSISTENT)
        return -EINVAL;
    l->state = LOCK_OK;
    return 0;
}

static int lock_held(const struct mproc_lock *l)
{
    uint32_t w = atomic_load_explicit(&((struct mproc_lock *)l)->word, memory_order_relaxed);
    return (w & FUTEX_TID_MASK) == (uint32_t)mproc__tid();
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

/* The uncontended paths, inline: one CAS to take, one exchange to give,
 * the list links in between. Anything unusual (contention, recursion, a
 * lock to repair or not recoverable) goes to lock_take/give. The depth
 * count is an rlock's only: `recursive` is a constant at each call. */
static inline int lock_take_fast(struct mproc_lock *l, int recursive)
{
    struct robust_head *h = tls_head;
    pid_t tid = mproc__tid_cache;
    if (__builtin_expect(!h || !tid, 0))
        return 1;
    uint32_t w = 0;
    pending(h, l);
    if (!atomic_compare_exchange_strong_explicit(&l->word, &w, (uint32_t)tid, memory_order_acquire,
                                                 memory_order_relaxed))
        return 1;
    enqueue(h, l);
    pending(h, NULL);
    if (recursive)
        l->count = 1;
    return 0;
}

static inline int lock_give_fast(struct mproc_lock *l, int recursive)
{
    struct robust_head *h = tls_head;
    pid_t tid = mproc__tid_cache;
    uint32_t w = atomic_load_explicit(&l->word, memory_order_relaxed);
    if (__builtin_expect(!h || !tid || w != (uint32_t)tid || l->state != LOCK_OK ||
                             (recursive && l->count > 1),
                         0))
        return 1;
    if (recursive)
        l->count = 0;
    pending(h, l);
    dequeue(l);
    w = atomic_exchange_explicit(&l->word, 0, memory_order_release);
    if (__builtin_expect(w & FUTEX_WAITERS, 0))
        mproc__futex_wake((const uint32_t *)&l->word, 1);
    pending(h, NULL);
    return 0;
}

int mproc_lock_acquire(mproc_lock_t *lock, int timeout_ms)
{
    if (!lock)
        return -EINVAL;
    int rc = lock_take_fast(lock, 0);
    return rc <= 0 ? rc : lock_take(lock, deadline_of(timeout_ms));
}

int mproc_lock_release(mproc_lock_t *lock)
{
    if (!lock)
        return -EINVAL;
    int rc = lock_give_fast(lock, 0);
    return rc <= 0 ? rc : lock_give(lock);
}

int mproc_lock_consistent(mproc_lock_t *lock)
{
    return lock ? lock_consistent(lock) : -EINVAL;
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

int mproc_rlock_acquire(mproc_rlock_t *lock, int timeout_ms)
{
    if (!lock)
        return -EINVAL;
    int rc = lock_take_fast(&lock->l, 1);
    return rc <= 0 ? rc : lock_take(&lock->l, deadline_of(timeout_ms));
}

int mproc_rlock_release(mproc_rlock_t *lock)
{
    if (!lock)
        return -EINVAL;
    int rc = lock_give_fast(&lock->l, 1);
    return rc <= 0 ? rc : lock_give(&lock->l);
}

int mproc_rlock_consistent(mproc_rlock_t *lock)
{
    return lock ? lock_consistent(&lock->l) : -EINVAL;
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
    if (!lock_held(lock))
        return -EPERM;
    int64_t deadline = deadline_of(timeout_ms);
    uint32_t seq = atomic_load(&c->seq);
    c->waiters++;
    lock_give(lock);
    /* A notify between the unlock and the sleep changed seq: no sleep.
     * Every notify changes seq, so an unchanged one after a return means
     * a signal interrupted the sleep: sleep on, to the same deadline. */
    int rc;
    do
        rc = mproc__futex_wait((const uint32_t *)&c->seq, seq, deadline);
    while (rc == 0 && atomic_load(&c->seq) == seq);
    int lrc = lock_take(lock, -1);
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
    if (!lock_held(cond_lock(c)))
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

struct mproc_event {
    _Atomic uint32_t flag; /* the futex word */
    _Atomic uint32_t waiters;
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
    if (atomic_exchange(&ev->flag, 1) == 0 && atomic_load(&ev->waiters) > 0)
        mproc__futex_wake((const uint32_t *)&ev->flag, INT_MAX);
    return 0;
}

int mproc_event_clear(mproc_event_t *ev)
{
    if (!ev)
        return -EINVAL;
    atomic_store(&ev->flag, 0);
    return 0;
}

int mproc_event_is_set(const mproc_event_t *ev)
{
    return ev ? (int)atomic_load(&((mproc_event_t *)ev)->flag) : -EINVAL;
}

int mproc_event_wait(mproc_event_t *ev, int timeout_ms)
{
    if (!ev)
        return -EINVAL;
    if (atomic_load(&ev->flag))
        return 0;
    if (timeout_ms == 0)
        return -ETIMEDOUT;
    int64_t deadline = deadline_of(timeout_ms);
    atomic_fetch_add(&ev->waiters, 1);
    int rc = 0;
    while (!atomic_load(&ev->flag) && rc == 0)
        rc = mproc__futex_wait((const uint32_t *)&ev->flag, 0, deadline);
    atomic_fetch_sub(&ev->waiters, 1);
    return atomic_load(&ev->flag) ? 0 : -ETIMEDOUT;
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
    int rc = lock_take(&b->lock, deadline);
    if (rc == -EOWNERDEAD) {
        b->broken = 1;
        if (atomic_load(&b->count) > 0)
            end_generation(b, 1);
        lock_consistent(&b->lock);
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
        lock_give(&b->lock);
        return MPROC_EBROKEN;
    }
    uint32_t index = atomic_fetch_add(&b->count, 1);
    if (index + 1 == b->parties) {
        end_generation(b, 0);
        lock_give(&b->lock);
        return (int)index;
    }
    uint32_t g = atomic_load(&b->gen);
    lock_give(&b->lock);

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
                lock_give(&b->lock);
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
    lock_give(&b->lock);
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
    lock_give(&b->lock);
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
