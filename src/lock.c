/*
 * lock.c - the robust lock: mproc_lock_t and mproc_rlock_t, and the locks
 * mproc keeps for itself (each arena's, a condition's own, a barrier's).
 * Creating one in an arena is sync.c's business; this file only locks.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <linux/futex.h>

/* 0 polls: one look, no sleep. */
static inline int64_t deadline_of(int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    return timeout_ms == 0 ? 0 : mproc__deadline_ns(timeout_ms);
}

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
#define LOCK_DEAD ((uint32_t)FUTEX_TID_MASK) /* above any pid_max */

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

/* This thread's robust list head (NULL if it has none: a thread glibc did
 * not create, whose locks work but are not robust) and id, together: the
 * uncontended paths read both with one TLS address computation. Zeroed in
 * a fork child, whose thread has another id. */
static _Thread_local struct {
    struct robust_head *head;
    pid_t tid;
    int known;
} self __attribute__((tls_model("initial-exec")));

static void self_after_fork(void)
{
    self.head = NULL;
    self.tid = 0;
    self.known = 0;
}

static int self_setup(void *ctx)
{
    (void)ctx;
    return mproc__atfork_child(self_after_fork);
}

static mproc_once_t self_once = MPROC_ONCE_INIT;

static struct robust_head *robust_head(void)
{
    if (__builtin_expect(self.known, 1))
        return self.head;
    /* Without the at-fork reset, a fork child would take locks under its
     * parent's id: then nothing is cached, and every call looks again. */
    int resettable = mproc_once(&self_once, self_setup, NULL) == 0;
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
    if (!resettable)
        return h;
    self.head = h;
    self.tid = mproc__tid();
    self.known = 1;
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

int mproc__lock_take(struct mproc_lock *l, int64_t deadline)
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
                    l->state = MPROC__LOCK_INCONSISTENT;
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

int mproc__lock_give(struct mproc_lock *l)
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
    uint32_t next = l->state == MPROC__LOCK_INCONSISTENT ? LOCK_DEAD : 0;
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

int mproc__lock_consistent(struct mproc_lock *l)
{
    uint32_t w = atomic_load_explicit(&l->word, memory_order_relaxed);
    if ((w & FUTEX_TID_MASK) != (uint32_t)mproc__tid() || l->state != MPROC__LOCK_INCONSISTENT)
        return -EINVAL;
    l->state = MPROC__LOCK_OK;
    return 0;
}

int mproc__lock_held(const struct mproc_lock *l)
{
    uint32_t w = atomic_load_explicit(&((struct mproc_lock *)l)->word, memory_order_relaxed);
    return (w & FUTEX_TID_MASK) == (uint32_t)mproc__tid();
}

/* The uncontended paths, inline: one CAS to take, one exchange to give,
 * the list links in between. Anything unusual (contention, recursion, a
 * lock to repair or not recoverable) goes to lock_take/give. The depth
 * count is an rlock's only: `recursive` is a constant at each call. */
static inline int lock_take_fast(struct mproc_lock *l, int recursive)
{
    struct robust_head *h = self.head;
    pid_t tid = self.tid;
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
    struct robust_head *h = self.head;
    pid_t tid = self.tid;
    uint32_t w = atomic_load_explicit(&l->word, memory_order_relaxed);
    if (__builtin_expect(!h || !tid || w != (uint32_t)tid || l->state != MPROC__LOCK_OK ||
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
    return rc <= 0 ? rc : mproc__lock_take(lock, deadline_of(timeout_ms));
}

int mproc_lock_release(mproc_lock_t *lock)
{
    if (!lock)
        return -EINVAL;
    int rc = lock_give_fast(lock, 0);
    return rc <= 0 ? rc : mproc__lock_give(lock);
}

int mproc_lock_consistent(mproc_lock_t *lock)
{
    return lock ? mproc__lock_consistent(lock) : -EINVAL;
}

int mproc_rlock_acquire(mproc_rlock_t *lock, int timeout_ms)
{
    if (!lock)
        return -EINVAL;
    int rc = lock_take_fast(&lock->l, 1);
    return rc <= 0 ? rc : mproc__lock_take(&lock->l, deadline_of(timeout_ms));
}

int mproc_rlock_release(mproc_rlock_t *lock)
{
    if (!lock)
        return -EINVAL;
    int rc = lock_give_fast(&lock->l, 1);
    return rc <= 0 ? rc : mproc__lock_give(&lock->l);
}

int mproc_rlock_consistent(mproc_rlock_t *lock)
{
    return lock ? mproc__lock_consistent(&lock->l) : -EINVAL;
}
