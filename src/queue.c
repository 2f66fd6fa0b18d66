/*
 * queue.c - queues of byte messages in shared memory: many producers, many
 * consumers, bounded, robust to the death of any of them.
 *
 * Layout. A queue is one arena object: a small header, the producers' side
 * and the consumers' side on cache lines of their own, then a byte ring.
 * Each message is an 8-byte record header (length, and the length xor a
 * magic, so a torn or foreign record is seen) and its bytes, padded to 8.
 * The ring's capacity is a power of two and a multiple of 8, so a record
 * header never straddles the end; the bytes may wrap and are copied in two
 * pieces. There are no slots: every size up to the maximum takes this path.
 *
 * Two robust locks. Producers take turns under put_lock, consumers under
 * get_lock; between the two, the ring is single-producer single-consumer,
 * so a producer and a consumer only meet on the ring's head and tail.
 * head and tail are 64-bit words, (message count << 32) | byte position,
 * each written by one side with a single release store: a message and its
 * count become visible together, in one step, or not at all. That is what
 * makes a death harmless:
 *  - a producer killed inside put has published the whole message (the
 *    store happened) or nothing (it did not);
 *  - a consumer killed inside get has taken the message (the store
 *    happened: it is gone with the consumer) or left it at the head.
 * The lock then reports EOWNERDEAD to the next holder, which has nothing to
 * repair but a wake-up the dead one may have owed (below).
 *
 * Cache lines. Each side keeps its lock, its word and its last look at the
 * other side's word on one line, so that a put reads the consumers' line
 * (a cache miss) only when its old view of the tail shows no room, and a
 * get reads the producers' line only when its old view of the head shows
 * no message. The views only lag (head and tail only grow), so what they
 * show is there. The wait flags, read on every message but written only by
 * sleepers, sit on lines of their own.
 *
 * Waiting. A consumer that finds the ring empty keeps get_lock (so the
 * other consumers queue on the lock, and exactly one consumer waits for
 * data), spins for spin_us, then announces itself in data_wait and sleeps
 * on it. A producer publishes with a sequentially consistent store and
 * then looks at data_wait: either the consumer sees the new head when it re-checks
 * after announcing, or the producer sees the announcement and wakes it
 * (Dekker's pattern; a flag word, not a count, so a waiter that dies leaves
 * at most one spare wake-up). Producers wait for room the same way on
 * space_wait. A party that dies between its store and the wake-up it owes
 * is covered twice: the next holder of its lock wakes the other side, and
 * sleepers re-check every WAIT_SLICE_MS anyway.
 *
 * Pollable queues add an eventfd, written by the producer that fills an
 * empty queue someone armed: a consumer that finds the queue empty clears
 * the eventfd and sets the armed bit in data_wait before it re-checks.
 *
 * Nothing read from the segment is trusted: the geometry is copied into
 * the handle when it is opened and checked there, and positions and record
 * headers are bounds-checked on every use (MPROC_EPROTO when they are not
 * sane), so a corrupt segment costs an error, never a wild copy.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define QUEUE_MAGIC 0x31657571u  /* "que1" */
#define RECORD_MAGIC 0x6d657373u /* xored with the length in a record header */
#define REF_MAGIC 0x71726566u    /* "qref" */

#define CAPACITY_DEFAULT (64u << 10)
#define CAPACITY_MIN (4u << 10)
#define CAPACITY_MAX (1u << 30)
#define RECORD_HDR 8u

/*
 * The default spin before sleeping, in microseconds. A cross-CPU wake-up
 * costs ~25-30 us one way on the VMs this was measured on, so a peer that
 * answers within that is better waited for on the CPU; longer, the sleep
 * is cheaper. bench/bench_queue.c measures both (docs/queue.md has the
 * figures).
 */
#define SPIN_US_DEFAULT 50
/* Sleepers re-check this often, in case a party died owing a wake-up. */
#define WAIT_SLICE_MS 100
/* How long a call with timeout 0 waits for a lock whose holder is copying. */
#define BUSY_WAIT_MS 1000

/* data_wait bits. */
#define WAIT_SLEEPER 1u /* a consumer sleeps on the futex  */
#define WAIT_ARMED 2u   /* the eventfd is to be written    */

#define USER_FLAGS (MPROC_QUEUE_JOINABLE | MPROC_QUEUE_POLLABLE)
#define OWN_SEGMENT 0x100u /* in the shared flags: the segment is the queue's */

struct mproc_queue {
    struct mproc__queue_shared *s;
    mproc_shm_t *shm;
    int own_shm; /* close shm with the handle                 */
    int own_seg; /* shm is the queue's own segment            */
    int efd;     /* pollable: the eventfd, else -1           */
    /* Geometry, copied and checked at open: never re-read from the segment. */
    uint32_t cap, mask, max_message, max_count, flags;
    int spin_us;
};

/* ---- small helpers ---------------------------------------------------------- */

static inline uint32_t pos_of(uint64_t w)
{
    return (uint32_t)w;
}

static inline uint32_t count_of(uint64_t w)
{
    return (uint32_t)(w >> 32);
}

static inline uint64_t word_of(uint32_t count, uint32_t pos)
{
    return (uint64_t)count << 32 | pos;
}

static inline uint32_t record_size(uint32_t len)
{
    return RECORD_HDR + ((len + 7u) & ~7u);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* timeout_ms -> a deadline in ns: -1 forever, 0 do not wait. */
static int64_t deadline_of(int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    return timeout_ms == 0 ? 0 : mproc__deadline_ns(timeout_ms);
}

static int expired(int64_t deadline)
{
    return deadline == 0 || (deadline > 0 && now_ns() >= deadline);
}

/* A futex sleep no longer than WAIT_SLICE_MS: 0 woken or slice over (the
 * caller re-checks), -ETIMEDOUT when the deadline itself passed. */
static int sleep_on(_Atomic uint32_t *word, uint32_t val, int64_t deadline)
{
    int64_t slice = now_ns() + (int64_t)WAIT_SLICE_MS * 1000000;
    int64_t until = deadline < 0 || deadline > slice ? slice : deadline;
    int rc = mproc__futex_wait((const uint32_t *)word, val, until);
    if (rc == -ETIMEDOUT && until != deadline)
        return 0;
    return rc;
}

/* Wake whoever announced itself on *word. The caller's store that made
 * the waiter's condition true was seq_cst, and so is this load: either
 * the waiter's re-check saw the store or this load sees the waiter. */
static void wake_flag(_Atomic uint32_t *word)
{
    if (atomic_load(word) == 0)
        return;
    if (atomic_exchange(word, 0) != 0)
        mproc__futex_wake((const uint32_t *)word, INT_MAX);
}

/* The consumers' side of a publish: sleepers, and the eventfd if armed. */
static void wake_consumers(mproc_queue_t *q)
{
    _Atomic uint32_t *w = &q->s->data_wait;
    if (atomic_load(w) == 0)
        return;
    uint32_t old = atomic_exchange(w, 0);
    if (old & WAIT_SLEEPER)
        mproc__futex_wake((const uint32_t *)w, INT_MAX);
    if ((old & WAIT_ARMED) && q->efd < 0) {
        /* A handle opened by name has no eventfd: leave the fd armed for
         * the next producer that has it (docs/queue.md). */
        atomic_fetch_or(w, WAIT_ARMED);
    } else if (old & WAIT_ARMED) {
        uint64_t one = 1;
        ssize_t n;
        do
            n = write(q->efd, &one, sizeof one);
        while (n < 0 && errno == EINTR);
        /* EAGAIN: the counter is full, i.e. already readable. */
    }
}

/*
 * Take a queue lock before the deadline. A dead holder left nothing to
 * repair (see the top of the file), only a wake-up it may have owed.
 *
 * With timeout 0, a busy lock is waited for (up to BUSY_WAIT_MS) when the
 * call would find work behind it (ready says so): the holder is then in
 * the middle of a copy, not waiting, and answering "empty" while messages
 * sit in the queue would leave an event loop that drains until -ETIMEDOUT
 * with messages nobody polls for.
 */
static int take(mproc_queue_t *q, struct mproc_lock *l, int64_t deadline,
                int (*ready)(mproc_queue_t *))
{
    int rc = mproc_lock_acquire(l, 0);
    if (rc == -ETIMEDOUT && deadline == 0 && ready(q))
        deadline = mproc__deadline_ns(BUSY_WAIT_MS);
    if (rc == -ETIMEDOUT && deadline != 0)
        rc = mproc__lock_take(l, deadline);
    if (rc == -EOWNERDEAD) {
        mproc__lock_consistent(l);
        if (l == &q->s->put_lock)
            wake_consumers(q);
        else
            wake_flag(&q->s->space_wait);
        rc = 0;
    }
    return rc;
}

static void give(struct mproc_lock *l)
{
    mproc_lock_release(l);
}

/* Spin for up to spin_us while *w == seen; 1 if it changed. */
static int spin_while(const _Atomic uint64_t *w, uint64_t seen, int spin_us)
{
    if (spin_us <= 0)
        return 0;
    int64_t until = now_ns() + (int64_t)spin_us * 1000;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (atomic_load_explicit(w, memory_order_relaxed) != seen)
                return 1;
            cpu_relax();
        }
        if (now_ns() >= until)
            return 0;
    }
}

/* Copy len bytes in and out of the ring at pos, wrapping. */
static void ring_write(mproc_queue_t *q, uint32_t pos, const void *src, size_t len)
{
    uint32_t at = pos & q->mask;
    size_t first = q->cap - at < len ? q->cap - at : len;
    memcpy(q->s->ring + at, src, first);
    if (len > first)
        memcpy(q->s->ring, (const unsigned char *)src + first, len - first);
}

static void ring_read(const mproc_queue_t *q, uint32_t pos, void *dst, size_t len)
{
    uint32_t at = pos & q->mask;
    size_t first = q->cap - at < len ? q->cap - at : len;
    memcpy(dst, q->s->ring + at, first);
    if (len > first)
        memcpy((unsigned char *)dst + first, q->s->ring, len - first);
}

/* Snapshots for take(): would a put find room (for a small message), a
 * get find a message? */
static int has_room(mproc_queue_t *q)
{
    return mproc_queue_full(q) == 0;
}

static int has_data(mproc_queue_t *q)
{
    return mproc_queue_empty(q) == 0;
}

/* ---- creating, opening, handing over ------------------------------------- */

typedef struct {
    uint32_t capacity, max_message, max_count, flags;
    int32_t spin_us;
} geometry_t;

static int geometry_from(const mproc_queue_opts_t *opts, geometry_t *g)
{
    mproc_queue_opts_t o = {0};
    if (opts)
        o = *opts;
    if (o.flags & ~USER_FLAGS)
        return -EINVAL;
    size_t cap = o.capacity ? o.capacity : CAPACITY_DEFAULT;
    if (cap > CAPACITY_MAX)
        return -EINVAL;
    if (cap < CAPACITY_MIN)
        cap = CAPACITY_MIN;
    size_t pow2 = CAPACITY_MIN;
    while (pow2 < cap)
        pow2 <<= 1;
    size_t max = o.max_message ? o.max_message : pow2 / 4;
    if (max > pow2 - RECORD_HDR)
        return -EINVAL;
    if (o.spin_us < -1 || o.spin_us > 1000000)
        return -EINVAL; /* -1 never, 0 the default, up to a second */
    g->capacity = (uint32_t)pow2;
    g->max_message = (uint32_t)max;
    g->max_count = o.max_count;
    g->flags = o.flags;
    g->spin_us = o.spin_us == 0 ? SPIN_US_DEFAULT : o.spin_us < 0 ? 0 : o.spin_us;
    return 0;
}

static int init_shared(void *obj, void *ctx)
{
    struct mproc__queue_shared *s = obj;
    const geometry_t *g = ctx;
    s->capacity = g->capacity;
    s->max_message = g->max_message;
    s->max_count = g->max_count;
    s->flags = g->flags;
    s->spin_us = g->spin_us;
    /* A pollable queue starts armed: the first message makes the fd
     * readable for a consumer that polls before it ever called get. */
    atomic_init(&s->data_wait, (g->flags & MPROC_QUEUE_POLLABLE) ? WAIT_ARMED : 0);
    s->magic = QUEUE_MAGIC; /* the arena publishes the object after this */
    return 0;
}

/* Check the shared header of an object of obj_size bytes; fill the handle. */
static int adopt(mproc_queue_t *q, struct mproc__queue_shared *s, size_t obj_size)
{
    if (obj_size < sizeof *s || s->magic != QUEUE_MAGIC)
        return MPROC_ETYPE;
    uint32_t cap = s->capacity;
    if (cap < CAPACITY_MIN || cap > CAPACITY_MAX || (cap & (cap - 1)) ||
        obj_size - sizeof *s < cap || s->max_message > cap - RECORD_HDR ||
        (s->flags & ~(USER_FLAGS | OWN_SEGMENT)) || s->spin_us < 0 || s->spin_us > 1000000)
        return MPROC_ETYPE;
    q->s = s;
    q->cap = cap;
    q->mask = cap - 1;
    q->max_message = s->max_message;
    q->max_count = s->max_count;
    q->flags = s->flags & USER_FLAGS;
    q->own_seg = (s->flags & OWN_SEGMENT) != 0;
    q->spin_us = s->spin_us;
    return 0;
}

static mproc_queue_t *new_handle(void)
{
    mproc_queue_t *q = calloc(1, sizeof *q);
    if (q)
        q->efd = -1;
    return q;
}

static void drop_handle(mproc_queue_t *q)
{
    if (q->efd >= 0)
        close(q->efd);
    if (q->own_shm)
        mproc_shm_close(q->shm);
    free(q);
}

int mproc_queue_create(mproc_shm_t *shm, const char *name, const mproc_queue_opts_t *opts,
                       mproc_queue_t **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    geometry_t g;
    int rc = geometry_from(opts, &g);
    if (rc < 0)
        return rc;
    if (!shm && name)
        return -EINVAL;
    mproc_queue_t *q = new_handle();
    if (!q)
        return -ENOMEM;
    size_t size = sizeof(struct mproc__queue_shared) + g.capacity;
    if (!shm) {
        rc = mproc_shm_create(&q->shm, size + MPROC_SHM_OBJECT_OVERHEAD);
        if (rc < 0) {
            free(q);
            return rc;
        }
        q->own_shm = 1;
        g.flags |= OWN_SEGMENT;
    } else {
        q->shm = shm;
    }
    if (g.flags & MPROC_QUEUE_POLLABLE) {
        q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (q->efd < 0) {
            rc = -errno;
            drop_handle(q);
            return rc;
        }
    }
    void *obj;
    rc = mproc__shm_new(q->shm, name, MPROC_OBJ_QUEUE, 0, size, init_shared, &g, &obj);
    if (rc == 0)
        rc = adopt(q, obj, size);
    if (rc < 0) {
        drop_handle(q);
        return rc;
    }
    *out = q;
    return 0;
}

int mproc_queue_open(mproc_shm_t *shm, const char *name, mproc_queue_t **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!shm || !name)
        return -EINVAL;
    void *obj;
    int rc = mproc_shm_find(shm, name, MPROC_OBJ_QUEUE, &obj);
    if (rc < 0)
        return rc;
    mproc_queue_t *q = new_handle();
    if (!q)
        return -ENOMEM;
    q->shm = shm;
    rc = adopt(q, obj, mproc_shm_object_size(shm, obj));
    if (rc < 0) {
        drop_handle(q);
        return rc;
    }
    *out = q;
    return 0;
}

int mproc_queue_ref(const mproc_queue_t *q, mproc_queue_ref_t *ref)
{
    if (!q || !ref)
        return -EINVAL;
    memset(ref, 0, sizeof *ref);
    int rc = mproc_shm_ref(q->shm, &ref->shm);
    if (rc == 0)
        rc = mproc_shm_offset(q->shm, q->s, &ref->offset);
    if (rc < 0)
        return rc;
    ref->efd = q->efd;
    ref->magic = REF_MAGIC;
    return 0;
}

int mproc_process_pass_queue(mproc_process_t *p, const mproc_queue_t *q)
{
    if (!q)
        return -EINVAL;
    int rc = mproc_process_pass_shm(p, q->shm);
    if (rc == 0 && q->efd >= 0)
        rc = mproc_process_pass_fd(p, q->efd);
    return rc;
}

/* fd is open, non-blocking, and an eventfd where /proc can tell: an
 * attach must not adopt (and later close) some unrelated fd. */
static int check_eventfd(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -EBADF; /* not passed */
    if (!(fl & O_NONBLOCK))
        return MPROC_ETYPE;
    char path[64], target[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n < 0)
        return 0; /* no /proc: the flags are all we can check */
    target[n] = '\0';
    return strcmp(target, "anon_inode:[eventfd]") == 0 ? 0 : MPROC_ETYPE;
}

int mproc_queue_attach(mproc_queue_t **out, const mproc_queue_ref_t *ref)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!ref || ref->magic != REF_MAGIC)
        return -EINVAL;
    mproc_queue_t *q = new_handle();
    if (!q)
        return -ENOMEM;
    int rc = mproc_shm_attach(&q->shm, &ref->shm);
    if (rc < 0) {
        free(q);
        return rc;
    }
    q->own_shm = 1;
    void *obj;
    rc = mproc_shm_at(q->shm, ref->offset, MPROC_OBJ_QUEUE, &obj);
    if (rc == 0)
        rc = adopt(q, obj, mproc_shm_object_size(q->shm, obj));
    if (rc == 0 && (q->flags & MPROC_QUEUE_POLLABLE) && ref->efd >= 0) {
        /* The eventfd becomes this handle's, as the segment's fd does. (A
         * ref made from a handle that was opened by name has none.) */
        rc = check_eventfd(ref->efd);
        if (rc == 0 && (rc = mproc__set_cloexec(ref->efd, 1)) == 0)
            q->efd = ref->efd;
    }
    if (rc < 0) {
        drop_handle(q);
        return rc;
    }
    *out = q;
    return 0;
}

int mproc_queue_close(mproc_queue_t *q)
{
    if (!q)
        return 0;
    drop_handle(q);
    return 0;
}

int mproc_queue_free(mproc_queue_t *q)
{
    if (!q)
        return 0;
    int rc = q->own_seg ? 0 : mproc_shm_free(q->shm, q->s);
    drop_handle(q);
    return rc;
}

/* ---- put and get ------------------------------------------------------------ */

/* Bytes and messages in the ring given head and tail; -1 if not sane. */
static int64_t used_bytes(const mproc_queue_t *q, uint64_t h, uint64_t t)
{
    uint32_t used = pos_of(h) - pos_of(t);
    if (used > q->cap || (used & 7u))
        return -1;
    return used;
}

int mproc_queue_put(mproc_queue_t *q, const void *msg, size_t len, int timeout_ms)
{
    if (!q || (!msg && len))
        return -EINVAL;
    if (len > q->max_message)
        return -EMSGSIZE;
    struct mproc__queue_shared *s = q->s;
    uint32_t need = record_size((uint32_t)len);
    int64_t deadline = deadline_of(timeout_ms);
    int rc = take(q, &s->put_lock, deadline, has_room);
    if (rc < 0)
        return rc;
    uint64_t h = atomic_load_explicit(&s->head, memory_order_relaxed);
    /* The tail as last seen: it only grows, so room it shows is there. The
     * real one (a cache miss: consumers write it) is read only when the
     * old view shows no room. */
    uint64_t t = atomic_load_explicit(&s->tail_seen, memory_order_relaxed);
    for (;;) {
        int64_t used = used_bytes(q, h, t);
        if (used >= 0 && (uint64_t)used + need <= q->cap &&
            (!q->max_count || count_of(h) - count_of(t) < q->max_count))
            break;
        uint64_t now = atomic_load_explicit(&s->tail, memory_order_acquire);
        if (now != t) {
            t = now;
            atomic_store_explicit(&s->tail_seen, t, memory_order_relaxed);
            continue;
        }
        if (used < 0) {
            rc = MPROC_EPROTO;
            break;
        }
        if (expired(deadline)) {
            rc = -ETIMEDOUT;
            break;
        }
        /* Wait for room: spin, then announce and re-check, then sleep.
         * When the sleep times out, one last look, then expired() says so. */
        if (spin_while(&s->tail, t, q->spin_us))
            continue;
        atomic_store(&s->space_wait, 1);
        if (atomic_load(&s->tail) != t)
            continue;
        sleep_on(&s->space_wait, 1, deadline);
    }
    if (rc < 0) {
        give(&s->put_lock);
        return rc;
    }
    uint32_t pos = pos_of(h);
    uint32_t rec[2] = {(uint32_t)len, (uint32_t)len ^ RECORD_MAGIC};
    ring_write(q, pos, rec, sizeof rec);
    if (len)
        ring_write(q, pos + RECORD_HDR, msg, len);
    atomic_store(&s->head, word_of(count_of(h) + 1, pos + need));
    wake_consumers(q);
    give(&s->put_lock);
    return 0;
}

/* The queue looked empty: a pollable queue's eventfd is cleared and armed
 * before the caller looks again, so a producer that fills it from now on
 * makes it readable. */
static void arm_fd(mproc_queue_t *q)
{
    uint64_t v;
    ssize_t n;
    do
        n = read(q->efd, &v, sizeof v);
    while (n < 0 && errno == EINTR);
    atomic_fetch_or(&q->s->data_wait, WAIT_ARMED);
}

int mproc_queue_get(mproc_queue_t *q, void *buf, size_t cap, size_t *len, int timeout_ms)
{
    if (!q || !len || (!buf && cap))
        return -EINVAL;
    *len = 0;
    struct mproc__queue_shared *s = q->s;
    int64_t deadline = deadline_of(timeout_ms);
    int rc = take(q, &s->get_lock, deadline, has_data);
    if (rc < 0)
        return rc;
    uint64_t t = atomic_load_explicit(&s->tail, memory_order_relaxed);
    /* The head as last seen (by any consumer, under this lock): messages
     * it shows are there. The real one is read only when it shows none. */
    uint64_t h = atomic_load_explicit(&s->head_seen, memory_order_relaxed);
    int armed = 0;
    for (;;) {
        if (pos_of(h) != pos_of(t))
            break;
        uint64_t now = atomic_load_explicit(&s->head, memory_order_acquire);
        if (now != h) {
            h = now;
            atomic_store_explicit(&s->head_seen, h, memory_order_relaxed);
            continue;
        }
        if (q->efd >= 0 && !armed) {
            arm_fd(q);
            armed = 1;
            continue;
        }
        if (expired(deadline)) {
            rc = -ETIMEDOUT;
            break;
        }
        if (spin_while(&s->head, h, q->spin_us))
            continue;
        uint32_t w = atomic_fetch_or(&s->data_wait, WAIT_SLEEPER) | WAIT_SLEEPER;
        if (atomic_load(&s->head) != h)
            continue;
        sleep_on(&s->data_wait, w, deadline);
    }
    uint32_t rec[2] = {0, 0};
    int64_t used = rc == 0 ? used_bytes(q, h, t) : 0;
    if (rc == 0) {
        ring_read(q, pos_of(t), rec, sizeof rec);
        /* Everything about the record is checked before it is believed. */
        if (used < 0 || (rec[0] ^ RECORD_MAGIC) != rec[1] || rec[0] > q->max_message ||
            record_size(rec[0]) > (uint64_t)used)
            rc = MPROC_EPROTO;
        else if (rec[0] > cap) {
            *len = rec[0];
            rc = -EMSGSIZE;
        }
    }
    if (rc < 0) {
        give(&s->get_lock);
        return rc;
    }
    if (rec[0])
        ring_read(q, pos_of(t) + RECORD_HDR, buf, rec[0]);
    atomic_store(&s->tail, word_of(count_of(t) + 1, pos_of(t) + record_size(rec[0])));
    wake_flag(&s->space_wait);
    give(&s->get_lock);
    *len = rec[0];
    return 0;
}

/* ---- snapshots -------------------------------------------------------------- */

size_t mproc_queue_qsize(const mproc_queue_t *q)
{
    if (!q)
        return 0;
    uint64_t t = atomic_load(&q->s->tail);
    uint64_t h = atomic_load(&q->s->head);
    uint32_t n = count_of(h) - count_of(t);
    return n > q->cap / RECORD_HDR ? 0 : n; /* a torn pair of snapshots */
}

int mproc_queue_empty(const mproc_queue_t *q)
{
    if (!q)
        return -EINVAL;
    return pos_of(atomic_load(&q->s->head)) == pos_of(atomic_load(&q->s->tail));
}

int mproc_queue_full(const mproc_queue_t *q)
{
    if (!q)
        return -EINVAL;
    uint64_t t = atomic_load(&q->s->tail);
    uint64_t h = atomic_load(&q->s->head);
    int64_t used = used_bytes(q, h, t);
    if (used < 0)
        return 1;
    return (uint64_t)used + RECORD_HDR > q->cap ||
           (q->max_count && count_of(h) - count_of(t) >= q->max_count);
}

size_t mproc_queue_max_message(const mproc_queue_t *q)
{
    return q ? q->max_message : 0;
}

int mproc_queue_fd(const mproc_queue_t *q)
{
    if (!q)
        return -EINVAL;
    if (!(q->flags & MPROC_QUEUE_POLLABLE))
        return MPROC_ETYPE;
    return q->efd >= 0 ? q->efd : -ENOTSUP;
}

/* ---- joinable --------------------------------------------------------------- */

int mproc_queue_task_done(mproc_queue_t *q)
{
    if (!q)
        return -EINVAL;
    if (!(q->flags & MPROC_QUEUE_JOINABLE))
        return MPROC_ETYPE;
    struct mproc__queue_shared *s = q->s;
    uint32_t d = atomic_load(&s->done);
    do {
        if (d == count_of(atomic_load(&s->head)))
            return -EOVERFLOW; /* more than were put */
    } while (!atomic_compare_exchange_weak(&s->done, &d, d + 1));
    wake_flag(&s->join_wait);
    return 0;
}

int mproc_queue_join(mproc_queue_t *q, int timeout_ms)
{
    if (!q)
        return -EINVAL;
    if (!(q->flags & MPROC_QUEUE_JOINABLE))
        return MPROC_ETYPE;
    struct mproc__queue_shared *s = q->s;
    int64_t deadline = deadline_of(timeout_ms);
    for (;;) {
        if (atomic_load(&s->done) == count_of(atomic_load(&s->head)))
            return 0;
        if (expired(deadline))
            return -ETIMEDOUT;
        atomic_store(&s->join_wait, 1);
        if (atomic_load(&s->done) == count_of(atomic_load(&s->head)))
            return 0;
        if (sleep_on(&s->join_wait, 1, deadline) == -ETIMEDOUT && expired(deadline))
            return -ETIMEDOUT;
    }
}
