/*
 * bench_queue - queues: throughput of 64-byte messages with 1 producer and
 * 1 consumer and with 2 and 2, the round trip through two queues, and how
 * long a sleeping consumer takes to wake for a message.
 *
 *   bench_queue <mode> <iterations>
 *
 * Every process here is a fork child: mproc's are mproc_processes
 * (MPROC_START_FORK) that use the queue handle they inherited, the raw
 * floors' are plain fork()s. Every put and get waits with MPROC_FOREVER.
 * The mproc queues are made with mproc_queue_create(NULL, NULL, &opts, &q):
 * an anonymous segment of their own, the default capacity (64 KiB of ring,
 * about 900 messages of 64 bytes: each takes 72 bytes of it).
 *
 * Throughput modes: <iterations> 64-byte messages in all, split evenly
 * among the producers; each producer then puts one sentinel (a 64-byte
 * message marked as such), and each consumer stops at the first sentinel it
 * gets (as many sentinels as consumers, and the last one is behind every
 * message, so everything is consumed). Producer i is pinned to CPU i and
 * consumer i to CPU i + 1 (modulo the CPUs): 1->1 puts the two on two
 * CPUs, 2->2 one producer and one consumer on each of 2 CPUs. The
 * processes wait on a start flag; a round runs from the moment the parent
 * raises it to the last consumer's end. One untimed warm-up round (a tenth
 * of the messages), then 5 timed rounds with fresh processes; a sample is a
 * round's messages per second. Every consumer checks that each producer's
 * messages come in order (1->1: exactly in sequence), and the counts must
 * add up, or the program fails.
 *
 *   mproc-1-1, mproc-2-2   mproc_queue_put / mproc_queue_get, default spin
 *   raw-spsc-1-1           the floor: a single-producer single-consumer
 *                          ring of 1024 fixed 64-byte slots (64 KiB) in
 *                          MAP_SHARED|MAP_ANONYMOUS memory; a side that
 *                          finds the ring empty (full) spins up to
 *                          RAW_SPIN_US, then marks itself sleeping and
 *                          FUTEX_WAITs on the other side's index; a side
 *                          wakes the other only when it is marked sleeping
 *
 * Ping-pong modes: two queues, one each way; the parent puts a 64-byte
 * message on the first and gets the answer from the second, a forked child
 * gets from the first and puts it on the second. Parent and child are
 * pinned to two different CPUs. <iterations> round trips in 20 timed
 * batches after an untimed warm-up batch; a sample is a batch's time per
 * round trip in microseconds.
 *
 *   mproc-pingpong         mproc queues, the default spin (spin_us 0:
 *                          50 µs, docs/queue.md)
 *   mproc-pingpong-nospin  mproc queues, spin_us -1: every wait sleeps
 *   raw-spsc-pingpong      two of the raw SPSC rings (spin, then futex)
 *
 * Wake-up modes ("consumer sleeping"): a forked consumer, pinned to one
 * CPU, waits for messages; the parent, pinned to another, waits until the
 * consumer is done with the last message, sleeps 2 ms (so the consumer has
 * been idle long enough to be asleep, past any spin), then reads
 * CLOCK_MONOTONIC and puts a 64-byte message carrying that time.
 * The consumer reads the clock as its get returns; a sample is the
 * difference in microseconds. <iterations> messages after 5 untimed ones.
 *
 *   mproc-wake       an mproc queue, default spin
 *   raw-futex-wake   the floor: the time is written to shared memory, a
 *                    futex word incremented and FUTEX_WAKEd; the consumer
 *                    FUTEX_WAITs on the word (no spin)
 *
 * Output: one line,
 *
 *   median_per_s=... p10_per_s=... p90_per_s=... n=<iterations>   (throughput)
 *   median_us=... p10_us=... p90_us=... n=<iterations>            (ping-pong, wake)
 *
 * Any error is printed to stderr and ends the program with status 1.
 */
#define _GNU_SOURCE /* syscall(), MAP_ANONYMOUS */

#include "bench_util.h"
#include "mproc.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MSG_SIZE 64
#define MAX_PARTIES 4 /* producers + consumers */
#define ROUNDS 5
#define PINGPONG_BATCHES 20
#define WAKE_WARMUP 5
#define WAKE_GAP_NS 2000000L /* 2 ms between two messages */

/* How long a raw ring side spins on an empty (full) ring before it sleeps:
 * longer than a cross-CPU wake-up here (~25-30 µs one way), so that a peer
 * that is busy answers a spinner, and a peer that is idle costs one wake. */
#define RAW_SPIN_US 50
#define RING_SLOTS 1024 /* a power of two */

/* ------------------------------------------------------------------------ */
/* Futexes and the raw SPSC ring                                            */
/* ------------------------------------------------------------------------ */

static long futex(_Atomic uint32_t *addr, int op, uint32_t val)
{
    /* Not FUTEX_PRIVATE_FLAG: the word is shared between processes. */
    return syscall(SYS_futex, (uint32_t *)addr, op, val, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Spin up to spin_ns while *w == old; 1 if it changed, 0 if time ran out. */
static int spin_while_equal(_Atomic uint32_t *w, uint32_t old, double spin_ns)
{
    double deadline = now_ns() + spin_ns;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (atomic_load_explicit(w, memory_order_acquire) != old)
                return 1;
            cpu_relax();
        }
        if (now_ns() >= deadline)
            return 0;
    }
}

/*
 * A single-producer single-consumer ring of fixed 64-byte slots. tail
 * (written by the producer) and head (by the consumer) are free-running
 * 32-bit counters and the futex words the other side sleeps on; a side
 * sets its *_sleeping flag before the last look and the FUTEX_WAIT, and the
 * other side, after moving its index (a sequentially consistent store),
 * wakes it only if the flag is set: one of the two always sees the other.
 */
typedef struct {
    _Alignas(64) _Atomic uint32_t tail;
    _Alignas(64) _Atomic uint32_t cons_sleeping;
    _Alignas(64) _Atomic uint32_t head;
    _Alignas(64) _Atomic uint32_t prod_sleeping;
    _Alignas(64) unsigned char slot[RING_SLOTS][MSG_SIZE];
} ring_t;

/* Each side's private view: the other side's index as last read. */
typedef struct {
    ring_t *r;
    uint32_t cached; /* producer: head; consumer: tail */
} ring_end_t;

static void ring_put(ring_end_t *e, const void *msg)
{
    ring_t *r = e->r;
    uint32_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);

    while (t - e->cached == RING_SLOTS) {
        e->cached = atomic_load_explicit(&r->head, memory_order_acquire);
        if (t - e->cached != RING_SLOTS)
            break;
        if (spin_while_equal(&r->head, e->cached, RAW_SPIN_US * 1e3))
            continue;
        atomic_store(&r->prod_sleeping, 1);
        uint32_t h = atomic_load(&r->head);
        if (h == e->cached)
            futex(&r->head, FUTEX_WAIT, h);
        atomic_store_explicit(&r->prod_sleeping, 0, memory_order_relaxed);
    }
    memcpy(r->slot[t & (RING_SLOTS - 1)], msg, MSG_SIZE);
    atomic_store(&r->tail, t + 1);
    if (atomic_load(&r->cons_sleeping))
        futex(&r->tail, FUTEX_WAKE, 1);
}

static void ring_get(ring_end_t *e, void *buf)
{
    ring_t *r = e->r;
    uint32_t h = atomic_load_explicit(&r->head, memory_order_relaxed);

    while (e->cached == h) {
        e->cached = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (e->cached != h)
            break;
        if (spin_while_equal(&r->tail, h, RAW_SPIN_US * 1e3))
            continue;
        atomic_store(&r->cons_sleeping, 1);
        if (atomic_load(&r->tail) == h)
            futex(&r->tail, FUTEX_WAIT, h);
        atomic_store_explicit(&r->cons_sleeping, 0, memory_order_relaxed);
    }
    memcpy(buf, r->slot[h & (RING_SLOTS - 1)], MSG_SIZE);
    atomic_store(&r->head, h + 1);
    if (atomic_load(&r->prod_sleeping))
        futex(&r->head, FUTEX_WAKE, 1);
}

static void *map_shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die_errno("mmap");
    return p;
}

/* ------------------------------------------------------------------------ */
/* State shared through fork                                                */
/* ------------------------------------------------------------------------ */

/* The control block, in MAP_SHARED memory. */
typedef struct {
    _Alignas(64) _Atomic uint32_t ready;
    _Alignas(64) _Atomic uint32_t go; /* a futex word: 0, then 1 */
    _Alignas(64) _Atomic uint64_t received;
    _Atomic uint32_t bad;
    int64_t end_ns[MAX_PARTIES];
    /* raw-futex-wake */
    _Alignas(64) _Atomic uint32_t wake_seq; /* a futex word */
    _Atomic int64_t wake_t;
    _Alignas(64) _Atomic uint32_t wake_done; /* messages handled */
} ctl_t;

typedef struct {
    uint32_t producer;
    uint32_t sentinel;
    uint64_t seq;
    int64_t t_ns; /* wake-up modes: when it was put */
    unsigned char pad[MSG_SIZE - 24];
} msg_t;

_Static_assert(sizeof(msg_t) == MSG_SIZE, "a message is 64 bytes");

static ctl_t *ctl;
static mproc_queue_t *q1, *q2; /* mproc: throughput/wake use q1 */
static ring_t *ring1, *ring2;  /* raw rings */
static double *wake_lat;       /* wake-up modes: samples, MAP_SHARED */

static int is_mproc;
static int nprod = 1, ncons = 1;
static long per_producer[MAX_PARTIES];
static long child_total; /* ping-pong and wake: messages the child handles */

static void make_mproc_queue(mproc_queue_t **q, int spin_us)
{
    mproc_queue_opts_t opts = {.capacity = 0, .max_message = 0, .spin_us = spin_us};
    int rc = mproc_queue_create(NULL, NULL, &opts, q);
    if (rc < 0)
        die_mproc("mproc_queue_create", rc);
}

static void close_mproc_queue(mproc_queue_t **q)
{
    if (*q) {
        int rc = mproc_queue_close(*q);
        if (rc < 0)
            die_mproc("mproc_queue_close", rc);
        *q = NULL;
    }
}

/* Put / get one 64-byte message on queue 1 or 2 of this mode; 0 or 1. */
static int put_msg(int which, const msg_t *m)
{
    if (is_mproc)
        return mproc_queue_put(which == 1 ? q1 : q2, m, sizeof *m, MPROC_FOREVER) != 0;
    static ring_end_t p1, p2; /* this process's producer ends of ring 1, 2 */
    ring_end_t *e = which == 1 ? &p1 : &p2;
    e->r = which == 1 ? ring1 : ring2;
    ring_put(e, m);
    return 0;
}

static int get_msg(int which, msg_t *m)
{
    if (is_mproc) {
        size_t len;
        int rc = mproc_queue_get(which == 1 ? q1 : q2, m, sizeof *m, &len, MPROC_FOREVER);
        return rc != 0 || len != sizeof *m;
    }
    static ring_end_t c1, c2; /* its consumer ends */
    ring_end_t *e = which == 1 ? &c1 : &c2;
    e->r = which == 1 ? ring1 : ring2;
    ring_get(e, m);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Throughput                                                               */
/* ------------------------------------------------------------------------ */

/* A child's wait for the start flag. */
static void wait_for_go(void)
{
    atomic_fetch_add(&ctl->ready, 1);
    while (atomic_load(&ctl->go) == 0)
        futex(&ctl->go, FUTEX_WAIT, 0);
}

static int producer(int idx)
{
    msg_t m;

    memset(&m, 0, sizeof m);
    m.producer = (uint32_t)idx;
    bench_pin_cpu(idx);
    wait_for_go();
    for (long i = 0; i < per_producer[idx]; i++) {
        m.seq = (uint64_t)i;
        if (put_msg(1, &m))
            return 1;
    }
    m.sentinel = 1;
    return put_msg(1, &m);
}

static int consumer(int idx)
{
    uint64_t next[MAX_PARTIES] = {0}; /* the lowest seq still possible */
    uint64_t got = 0;
    msg_t m;

    bench_pin_cpu(idx + 1);
    wait_for_go();
    for (;;) {
        if (get_msg(1, &m))
            return 1;
        if (m.producer >= (uint32_t)nprod)
            return 2;
        if (m.sentinel)
            break;
        /* In order per producer; with one consumer, without gaps too. */
        if (m.seq < next[m.producer] || (ncons == 1 && m.seq != next[m.producer]))
            return 3;
        next[m.producer] = m.seq + 1;
        got++;
    }
    ctl->end_ns[idx] = (int64_t)now_ns();
    atomic_fetch_add(&ctl->received, got);
    return 0;
}

/* Party k: producers 0..nprod-1, then consumers. */
static int party(int k)
{
    return k < nprod ? producer(k) : consumer(k - nprod);
}

static int mproc_party(const void *arg, size_t len)
{
    int k = 0;
    if (len == sizeof k)
        memcpy(&k, arg, sizeof k);
    return party(k);
}

static int raw_party(void *arg)
{
    return party((int)(intptr_t)arg);
}

/* One round of `total` messages; its messages per second. */
static double throughput_round(const char *name, long total)
{
    mproc_process_t *mp[MAX_PARTIES];
    pid_t pid[MAX_PARTIES];
    int nparty = nprod + ncons;
    struct timespec nap = {0, 100000};

    for (int i = 0; i < nprod; i++)
        per_producer[i] = total / nprod + (i < total % nprod);
    atomic_store(&ctl->ready, 0);
    atomic_store(&ctl->go, 0);
    atomic_store(&ctl->received, 0);
    if (!is_mproc)
        memset(ring1, 0, sizeof *ring1); /* fresh children: fresh ends */

    for (int k = 0; k < nparty; k++) {
        if (is_mproc)
            mp[k] = bench_start_child(mproc_party, &k, sizeof k);
        else
            pid[k] = bench_fork(raw_party, (void *)(intptr_t)k);
    }
    while (atomic_load(&ctl->ready) < (uint32_t)nparty)
        nanosleep(&nap, NULL);
    double t0 = now_ns();
    atomic_store(&ctl->go, 1);
    futex(&ctl->go, FUTEX_WAKE, INT_MAX);
    for (int k = 0; k < nparty; k++) {
        if (is_mproc)
            bench_join_child(mp[k], name);
        else
            bench_wait(pid[k], name);
    }

    uint64_t received = atomic_load(&ctl->received);
    if (received != (uint64_t)total) {
        char why[96];
        snprintf(why, sizeof why, "the consumers got %llu messages, %ld were put",
                 (unsigned long long)received, total);
        die(name, why);
    }
    int64_t end = 0;
    for (int i = 0; i < ncons; i++)
        if (ctl->end_ns[i] > end)
            end = ctl->end_ns[i];
    return (double)total * 1e9 / ((double)end - t0);
}

static void run_throughput(const char *name, int parties, long iterations)
{
    double samples[ROUNDS];

    nprod = ncons = parties;
    if (is_mproc)
        make_mproc_queue(&q1, 0);
    else
        ring1 = map_shared(sizeof *ring1);

    throughput_round(name, iterations / 10 + 1);
    for (int r = 0; r < ROUNDS; r++)
        samples[r] = throughput_round(name, iterations);

    close_mproc_queue(&q1);
    if (ring1)
        munmap(ring1, sizeof *ring1);
    print_quantiles("per_s", samples, ROUNDS, iterations);
}

/* ------------------------------------------------------------------------ */
/* Ping-pong                                                                */
/* ------------------------------------------------------------------------ */

static int pong(void)
{
    msg_t m;

    bench_pin_cpu(1);
    for (long i = 0; i < child_total; i++)
        if (get_msg(1, &m) || put_msg(2, &m))
            return 1;
    return 0;
}

static int mproc_pong(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return pong();
}

static int raw_pong(void *arg)
{
    (void)arg;
    return pong();
}

static int ping(long n)
{
    msg_t m;

    memset(&m, 0, sizeof m);
    for (long i = 0; i < n; i++) {
        m.seq = (uint64_t)i;
        if (put_msg(1, &m) || get_msg(2, &m) || m.seq != (uint64_t)i)
            return 1;
    }
    return 0;
}

static void run_pingpong(const char *name, int spin_us, long iterations)
{
    double samples[PINGPONG_BATCHES];
    long nbatch = iterations < PINGPONG_BATCHES ? iterations : PINGPONG_BATCHES;
    long warm = iterations / nbatch;
    mproc_process_t *child = NULL;
    pid_t pid = -1;

    if (is_mproc) {
        make_mproc_queue(&q1, spin_us);
        make_mproc_queue(&q2, spin_us);
    } else {
        ring1 = map_shared(sizeof *ring1);
        ring2 = map_shared(sizeof *ring2);
    }
    child_total = warm + iterations;
    bench_pin_cpu(0);
    if (is_mproc)
        child = bench_start_child(mproc_pong, NULL, 0);
    else
        pid = bench_fork(raw_pong, NULL);

    if (ping(warm))
        die(name, "a put or get failed");
    for (long b = 0; b < nbatch; b++) {
        long n = iterations / nbatch + (b < iterations % nbatch);
        double t0 = now_us();
        if (ping(n))
            die(name, "a put or get failed");
        samples[b] = (now_us() - t0) / (double)n;
    }

    if (is_mproc)
        bench_join_child(child, name);
    else
        bench_wait(pid, name);
    close_mproc_queue(&q1);
    close_mproc_queue(&q2);
    if (ring1) {
        munmap(ring1, sizeof *ring1);
        munmap(ring2, sizeof *ring2);
    }
    print_quantiles("us", samples, (size_t)nbatch, iterations);
}

/* ------------------------------------------------------------------------ */
/* Wake-up of a sleeping consumer                                           */
/* ------------------------------------------------------------------------ */

static int wake_consumer(void)
{
    bench_pin_cpu(1);
    for (long i = 0; i < child_total; i++) {
        int64_t t_put;
        if (is_mproc) {
            msg_t m;
            if (get_msg(1, &m) || m.seq != (uint64_t)i)
                return 1;
            t_put = m.t_ns;
        } else {
            while (atomic_load(&ctl->wake_seq) == (uint32_t)i)
                futex(&ctl->wake_seq, FUTEX_WAIT, (uint32_t)i);
            if (atomic_load(&ctl->wake_seq) != (uint32_t)i + 1)
                return 1;
            t_put = atomic_load(&ctl->wake_t);
        }
        wake_lat[i] = (now_ns() - (double)t_put) / 1e3;
        atomic_store(&ctl->wake_done, (uint32_t)i + 1);
    }
    return 0;
}

static int mproc_wake_consumer(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return wake_consumer();
}

static int raw_wake_consumer(void *arg)
{
    (void)arg;
    return wake_consumer();
}

static void run_wake(const char *name, long iterations)
{
    struct timespec gap = {0, WAKE_GAP_NS}, nap = {0, 100000};
    mproc_process_t *child = NULL;
    pid_t pid = -1;
    msg_t m;

    child_total = WAKE_WARMUP + iterations;
    wake_lat = map_shared((size_t)child_total * sizeof *wake_lat);
    if (is_mproc)
        make_mproc_queue(&q1, 0);
    bench_pin_cpu(0);
    if (is_mproc)
        child = bench_start_child(mproc_wake_consumer, NULL, 0);
    else
        pid = bench_fork(raw_wake_consumer, NULL);

    memset(&m, 0, sizeof m);
    for (long i = 0; i < child_total; i++) {
        /* The consumer is done with the last message: now it idles. */
        while (atomic_load(&ctl->wake_done) != (uint32_t)i)
            nanosleep(&nap, NULL);
        while (nanosleep(&gap, &gap) < 0 && errno == EINTR)
            ;
        gap.tv_nsec = WAKE_GAP_NS;
        if (is_mproc) {
            m.seq = (uint64_t)i;
            m.t_ns = (int64_t)now_ns();
            if (put_msg(1, &m))
                die(name, "a put failed");
        } else {
            atomic_store(&ctl->wake_t, (int64_t)now_ns());
            atomic_store(&ctl->wake_seq, (uint32_t)i + 1);
            futex(&ctl->wake_seq, FUTEX_WAKE, 1);
        }
    }

    if (is_mproc)
        bench_join_child(child, name);
    else
        bench_wait(pid, name);
    close_mproc_queue(&q1);
    print_quantiles("us", wake_lat + WAKE_WARMUP, (size_t)iterations, iterations);
    munmap(wake_lat, (size_t)child_total * sizeof *wake_lat);
}

/* ------------------------------------------------------------------------ */
/* Modes                                                                    */
/* ------------------------------------------------------------------------ */

typedef enum { THROUGHPUT, PINGPONG, WAKE } shape_t;

typedef struct {
    const char *name;
    int is_mproc;
    shape_t shape;
    int parties; /* THROUGHPUT: producers (= consumers) */
    int spin_us; /* mproc: the queues' spin_us (0: default, -1: none) */
} queue_mode_t;

static const queue_mode_t modes[] = {
    {"mproc-1-1", 1, THROUGHPUT, 1, 0},
    {"mproc-2-2", 1, THROUGHPUT, 2, 0},
    {"raw-spsc-1-1", 0, THROUGHPUT, 1, 0},
    {"mproc-pingpong", 1, PINGPONG, 0, 0},
    {"mproc-pingpong-nospin", 1, PINGPONG, 0, -1},
    {"raw-spsc-pingpong", 0, PINGPONG, 0, 0},
    {"mproc-wake", 1, WAKE, 0, 0},
    {"raw-futex-wake", 0, WAKE, 0, 0},
};

int main(int argc, char **argv)
{
    long iterations;
    const queue_mode_t *mode =
        bench_setup(&argc, &argv, "bench_queue", modes, sizeof modes / sizeof modes[0],
                    sizeof modes[0], &iterations);

    is_mproc = mode->is_mproc;
    ctl = map_shared(sizeof *ctl);
    switch (mode->shape) {
    case THROUGHPUT:
        run_throughput(mode->name, mode->parties, iterations);
        break;
    case PINGPONG:
        run_pingpong(mode->name, mode->spin_us, iterations);
        break;
    case WAKE:
        run_wake(mode->name, iterations);
        break;
    }
    munmap(ctl, sizeof *ctl);
    return 0;
}
