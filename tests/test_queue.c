/*
 * test_queue.c - queues: round trips of every size, the error paths, wrap
 * and order, 4 producers x 4 consumers with every message delivered exactly
 * once, producers and consumers SIGKILLed at random points, joinable and
 * pollable queues, and queues reaching children under every start method.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mproc.h"
#include "synctest.h"
#include "testutil.h"

/* ------------------------------------------------------------------ helpers */

/* Messages carry (who, seq) and bytes derived from them, so a torn, mixed
 * or misplaced message is seen. */
typedef struct {
    uint32_t who, seq;
} msg_hdr_t;

static unsigned char pattern(uint32_t who, uint32_t seq, size_t i)
{
    return (unsigned char)(who * 131u + seq * 7u + i * 13u + 1u);
}

/* A message of len >= sizeof(msg_hdr_t) bytes. */
static void make_msg(unsigned char *buf, size_t len, uint32_t who, uint32_t seq)
{
    msg_hdr_t h = {who, seq};
    memcpy(buf, &h, sizeof h);
    for (size_t i = sizeof h; i < len; i++)
        buf[i] = pattern(who, seq, i);
}

/* 1 if buf is a well-formed message; its header in *h. */
static int check_msg(const unsigned char *buf, size_t len, msg_hdr_t *h)
{
    if (len < sizeof *h)
        return 0;
    memcpy(h, buf, sizeof *h);
    for (size_t i = sizeof *h; i < len; i++)
        if (buf[i] != pattern(h->who, h->seq, i))
            return 0;
    return 1;
}

/* A message that is not what any producer sent, on stderr. */
static void report_bad(const unsigned char *buf, size_t len)
{
    msg_hdr_t h = {0, 0};
    memcpy(&h, buf, len < sizeof h ? len : sizeof h);
    fprintf(stderr, "  child %d: bad message: len %zu who %u seq %u, bytes:", (int)getpid(), len,
            h.who, h.seq);
    for (size_t i = 0; i < len && i < 64; i++)
        fprintf(stderr, " %02x", buf[i]);
    fprintf(stderr, "\n");
}

/* Message length for (who, seq): varied, 8..max. */
static size_t len_for(uint32_t who, uint32_t seq, size_t max)
{
    return sizeof(msg_hdr_t) + (who * 17u + seq * 29u) % (max - sizeof(msg_hdr_t) + 1);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

static mproc_queue_t *new_queue(size_t cap, size_t max, unsigned flags, int spin_us)
{
    mproc_queue_opts_t o = {
        .capacity = cap, .max_message = max, .flags = flags, .spin_us = spin_us};
    mproc_queue_t *q = NULL;
    TU_CHECK_OK(mproc_queue_create(NULL, NULL, &o, &q));
    return q;
}

/* Start entry(arg) under method m with the queues handed over. */
static mproc_process_t *start_with(mproc_start_method_t m, mproc_entry_fn entry, const void *arg,
                                   size_t len, mproc_queue_t *const *qs, int nq)
{
    mproc_process_opts_t o = {.method = m};
    mproc_process_t *p = NULL;
    if (!TU_CHECK_OK(mproc_process_create(&p, entry, arg, len, &o)))
        return NULL;
    int rc = 0;
    for (int i = 0; i < nq && rc == 0; i++)
        rc = mproc_process_pass_queue(p, qs[i]);
    if (rc == 0)
        rc = mproc_process_start(p);
    if (!TU_CHECK_OK(rc)) {
        mproc_process_free(p);
        return NULL;
    }
    return p;
}

/* ------------------------------------------------------------- basics */

static void test_round_trip_sizes(void)
{
    /* 64 KiB messages need a ring of at least 64 KiB + 8: 256 KiB. */
    size_t max = 64u << 10;
    mproc_queue_t *q = new_queue(256u << 10, max, 0, 0);
    TU_REQUIRE(q);
    TU_CHECK_EQ_INT(mproc_queue_max_message(q), max);
    unsigned char *in = malloc(max), *out = malloc(max);
    TU_REQUIRE(in && out);
    size_t sizes[] = {0, 1, 7, 8, 9, 63, 64, 4096, max - 1, max};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        for (size_t j = 0; j < n; j++)
            in[j] = (unsigned char)(j * 31 + n);
        TU_CHECK_OK(mproc_queue_put(q, n ? in : NULL, n, 0));
        TU_CHECK_EQ_INT(mproc_queue_qsize(q), 1);
        size_t got = 12345;
        TU_CHECK_OK(mproc_queue_get(q, out, max, &got, 0));
        TU_CHECK_EQ_INT(got, n);
        TU_CHECK(memcmp(in, out, n) == 0);
        TU_CHECK_EQ_INT(mproc_queue_empty(q), 1);
    }
    /* A message bigger than a quarter of the ring is no special case: the
     * largest one fills an empty ring exactly. */
    mproc_queue_t *q2 = new_queue(4096, 4096 - 8, 0, 0);
    TU_REQUIRE(q2);
    memset(in, 0xab, 4088);
    TU_CHECK_OK(mproc_queue_put(q2, in, 4088, 0));
    TU_CHECK_EQ_INT(mproc_queue_full(q2), 1);
    TU_CHECK_EQ_INT(mproc_queue_put(q2, in, 0, 0), -ETIMEDOUT);
    size_t got;
    TU_CHECK_OK(mproc_queue_get(q2, out, 4088, &got, 0));
    TU_CHECK_EQ_INT(got, 4088);
    TU_CHECK(memcmp(in, out, 4088) == 0);
    free(in);
    free(out);
    mproc_queue_close(q2);
    mproc_queue_close(q);
}

static void test_bad_input(void)
{
    mproc_queue_t *q = NULL;
    mproc_queue_opts_t o = {0};
    TU_CHECK_EQ_INT(mproc_queue_create(NULL, NULL, NULL, NULL), -EINVAL);
    o.capacity = (size_t)2 << 30;
    TU_CHECK_EQ_INT(mproc_queue_create(NULL, NULL, &o, &q), -EINVAL);
    TU_CHECK(q == NULL);
    o = (mproc_queue_opts_t){.capacity = 4096, .max_message = 4096};
    TU_CHECK_EQ_INT(mproc_queue_create(NULL, NULL, &o, &q), -EINVAL); /* > capacity - 8 */
    o = (mproc_queue_opts_t){.flags = 0x80};
    TU_CHECK_EQ_INT(mproc_queue_create(NULL, NULL, &o, &q), -EINVAL);
    o = (mproc_queue_opts_t){.spin_us = -2};
    TU_CHECK_EQ_INT(mproc_queue_create(NULL, NULL, &o, &q), -EINVAL);
    TU_CHECK_EQ_INT(mproc_queue_create(NULL, "name", NULL, &q), -EINVAL); /* name needs a segment */
    TU_CHECK_EQ_INT(mproc_queue_open(NULL, "x", &q), -EINVAL);

    q = new_queue(0, 0, 0, 0);
    TU_REQUIRE(q);
    TU_CHECK_EQ_INT(mproc_queue_max_message(q), 16384); /* 64 KiB / 4 */
    char buf[64];
    size_t len = 99;
    TU_CHECK_EQ_INT(mproc_queue_put(NULL, buf, 1, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_queue_put(q, NULL, 1, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_queue_get(q, NULL, 1, &len, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_queue_get(q, buf, sizeof buf, NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_queue_task_done(q), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_queue_join(q, 0), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_queue_fd(q), MPROC_ETYPE);
    mproc_queue_ref_t ref;
    memset(&ref, 0, sizeof ref);
    mproc_queue_t *q2 = NULL;
    TU_CHECK_EQ_INT(mproc_queue_attach(&q2, &ref), -EINVAL);
    TU_CHECK_EQ_INT(mproc_queue_close(NULL), 0);
    mproc_queue_close(q);
}

static void test_message_size_errors(void)
{
    mproc_queue_t *q = new_queue(4096, 100, 0, 0);
    TU_REQUIRE(q);
    unsigned char big[200], out[200];
    memset(big, 7, sizeof big);
    /* Over the maximum: refused, nothing put. */
    TU_CHECK_EQ_INT(mproc_queue_put(q, big, 101, 0), -EMSGSIZE);
    TU_CHECK_EQ_INT(mproc_queue_qsize(q), 0);
    /* A buffer too small: -EMSGSIZE with the size, the message stays. */
    TU_CHECK_OK(mproc_queue_put(q, big, 100, 0));
    size_t len = 0;
    TU_CHECK_EQ_INT(mproc_queue_get(q, out, 99, &len, 0), -EMSGSIZE);
    TU_CHECK_EQ_INT(len, 100);
    TU_CHECK_EQ_INT(mproc_queue_qsize(q), 1);
    TU_CHECK_OK(mproc_queue_get(q, out, 100, &len, 0));
    TU_CHECK_EQ_INT(len, 100);
    TU_CHECK(memcmp(big, out, 100) == 0);
    mproc_queue_close(q);
}

static void test_timeouts_and_counts(void)
{
    mproc_queue_opts_t o = {.capacity = 4096, .max_count = 3, .spin_us = -1};
    mproc_queue_t *q = NULL;
    TU_REQUIRE_OK(mproc_queue_create(NULL, NULL, &o, &q));
    char buf[16];
    size_t len;
    TU_CHECK_EQ_INT(mproc_queue_get(q, buf, sizeof buf, &len, 0), -ETIMEDOUT);
    int64_t t0 = tu_now_ms();
    TU_CHECK_EQ_INT(mproc_queue_get(q, buf, sizeof buf, &len, 50), -ETIMEDOUT);
    int64_t dt = tu_now_ms() - t0;
    TU_CHECK(dt >= 50 && dt < 2000);
    for (int i = 0; i < 3; i++)
        TU_CHECK_OK(mproc_queue_put(q, "abc", 3, 0));
    /* max_count reached: full although bytes remain. */
    TU_CHECK_EQ_INT(mproc_queue_full(q), 1);
    TU_CHECK_EQ_INT(mproc_queue_qsize(q), 3);
    TU_CHECK_EQ_INT(mproc_queue_put(q, "abc", 3, 0), -ETIMEDOUT);
    t0 = tu_now_ms();
    TU_CHECK_EQ_INT(mproc_queue_put(q, "abc", 3, 30), -ETIMEDOUT);
    dt = tu_now_ms() - t0;
    TU_CHECK(dt >= 30 && dt < 2000);
    TU_CHECK_OK(mproc_queue_get(q, buf, sizeof buf, &len, 0));
    TU_CHECK_EQ_INT(mproc_queue_full(q), 0);
    TU_CHECK_OK(mproc_queue_put(q, "abc", 3, 0));
    mproc_queue_close(q);
}

/* Many laps of the ring with varied sizes: order and contents kept across
 * the wrap, in one process. */
static void test_wrap_order(void)
{
    size_t max = 1000;
    mproc_queue_t *q = new_queue(4096, max, 0, 0);
    TU_REQUIRE(q);
    unsigned char buf[1000], out[1000];
    uint32_t put = 0, got = 0;
    while (got < 20000) {
        /* Fill until full, then drain a random amount. */
        for (;;) {
            size_t n = len_for(1, put, max);
            make_msg(buf, n, 1, put);
            int rc = mproc_queue_put(q, buf, n, 0);
            if (rc == -ETIMEDOUT)
                break;
            TU_REQUIRE_OK(rc);
            put++;
        }
        uint32_t k = 1 + rnd(put - got);
        for (uint32_t i = 0; i < k; i++) {
            size_t n;
            TU_REQUIRE_OK(mproc_queue_get(q, out, sizeof out, &n, 0));
            msg_hdr_t h;
            TU_REQUIRE(check_msg(out, n, &h));
            TU_REQUIRE_EQ_INT(h.seq, got);
            TU_REQUIRE_EQ_INT(n, len_for(1, got, max));
            got++;
        }
    }
    mproc_queue_close(q);
}

/* A named queue in a shared segment, opened by name, freed. */
static void test_named_in_arena(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, 128u << 10));
    mproc_queue_t *q = NULL, *q2 = NULL;
    mproc_queue_opts_t o = {.capacity = 8192};
    TU_REQUIRE_OK(mproc_queue_create(shm, "jobs", &o, &q));
    TU_CHECK_EQ_INT(mproc_queue_create(shm, "jobs", &o, &q2), -EEXIST);
    TU_CHECK_OK(mproc_queue_open(shm, "jobs", &q2));
    TU_CHECK_OK(mproc_queue_put(q, "hello", 5, 0));
    char buf[16];
    size_t len;
    TU_CHECK_OK(mproc_queue_get(q2, buf, sizeof buf, &len, 0));
    TU_CHECK_EQ_INT(len, 5);
    TU_CHECK(memcmp(buf, "hello", 5) == 0);
    mproc_lock_t *lock;
    TU_CHECK_OK(mproc_lock_create(shm, "lk", &lock));
    mproc_queue_t *q3 = NULL;
    TU_CHECK_EQ_INT(mproc_queue_open(shm, "lk", &q3), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_queue_open(shm, "nope", &q3), -ENOENT);
    /* Too big for the arena. */
    o.capacity = 1u << 20;
    TU_CHECK_EQ_INT(mproc_queue_create(shm, NULL, &o, &q3), -ENOMEM);
    mproc_queue_close(q2);
    TU_CHECK_OK(mproc_queue_free(q));
    TU_CHECK_EQ_INT(mproc_queue_open(shm, "jobs", &q2), -ENOENT);
    mproc_shm_close(shm);
}

/* Scribbled-on shared memory is an error, never a wild copy. */
static void test_corrupt_ring(void)
{
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, 64u << 10));
    mproc_queue_t *q = NULL;
    mproc_queue_opts_t o = {.capacity = 4096};
    TU_REQUIRE_OK(mproc_queue_create(shm, "q", &o, &q));
    void *obj;
    TU_REQUIRE_OK(mproc_shm_find(shm, "q", MPROC_OBJ_QUEUE, &obj));
    /* The ring is the object's last `capacity` bytes. */
    unsigned char *ring = (unsigned char *)obj + mproc_shm_object_size(shm, obj) - 4096;
    char buf[64];
    size_t len;
    TU_REQUIRE_OK(mproc_queue_put(q, "abcdefgh", 8, 0));
    uint32_t bad[2] = {1000000, 1000000 ^ 0x12345678u};
    unsigned char saved[8];
    memcpy(saved, ring, 8);
    memcpy(ring, bad, 8); /* a record header that lies about its length */
    TU_CHECK_EQ_INT(mproc_queue_get(q, buf, sizeof buf, &len, 0), MPROC_EPROTO);
    /* A well-formed header whose length runs past the data put. */
    uint32_t words[2];
    memcpy(words, saved, 8);
    uint32_t magic = words[0] ^ words[1];
    uint32_t past[2] = {1000, 1000u ^ magic};
    memcpy(ring, past, 8);
    TU_CHECK_EQ_INT(mproc_queue_get(q, buf, sizeof buf, &len, 0), MPROC_EPROTO);
    memcpy(ring, saved, 8);
    TU_CHECK_OK(mproc_queue_get(q, buf, sizeof buf, &len, 0));
    TU_CHECK_EQ_INT(len, 8);
    mproc_queue_close(q);
    mproc_shm_close(shm);
}

/* ------------------------------------------------- many producers and consumers */

#define MPMC_P 4
#define MPMC_C 4
#define MPMC_N 250000
#define MPMC_MAX 64
#define SENTINEL 0xffffffffu

typedef struct {
    mproc_queue_t *q;
    _Atomic uint8_t *seen; /* [MPMC_P * MPMC_N] delivery counts */
    _Atomic uint64_t *sum; /* checksum of everything delivered */
    _Atomic uint32_t *bad;
    uint32_t who;
} mpmc_t;

static uint64_t mix(uint32_t who, uint32_t seq)
{
    uint64_t x = (uint64_t)who << 32 | seq;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static int mpmc_producer(const void *arg, size_t len)
{
    (void)len;
    const mpmc_t *a = arg;
    unsigned char buf[MPMC_MAX];
    for (uint32_t s = 0; s < MPMC_N; s++) {
        size_t n = len_for(a->who, s, MPMC_MAX);
        make_msg(buf, n, a->who, s);
        C_RC(mproc_queue_put(a->q, buf, n, TU_T_MS), 0);
    }
    return 0;
}

static int mpmc_consumer(const void *arg, size_t len)
{
    (void)len;
    const mpmc_t *a = arg;
    unsigned char buf[MPMC_MAX];
    uint64_t sum = 0;
    for (;;) {
        size_t n;
        C_RC(mproc_queue_get(a->q, buf, sizeof buf, &n, TU_T_MS), 0);
        msg_hdr_t h;
        int ok = check_msg(buf, n, &h);
        if (ok && n == sizeof h && h.who == SENTINEL)
            break;
        if (!ok || h.who >= MPMC_P || h.seq >= MPMC_N || n != len_for(h.who, h.seq, MPMC_MAX)) {
            atomic_fetch_add(a->bad, 1);
            continue;
        }
        atomic_fetch_add(&a->seen[h.who * MPMC_N + h.seq], 1);
        sum += mix(h.who, h.seq);
    }
    atomic_fetch_add(a->sum, sum);
    return 0;
}

static void test_mpmc_exactly_once(void)
{
    size_t seen_bytes = (size_t)MPMC_P * MPMC_N;
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, seen_bytes + 4096));
    void *mem;
    TU_REQUIRE_OK(mproc_shm_alloc(shm, seen_bytes + 64, NULL, &mem));
    mpmc_t a = {0};
    a.seen = (_Atomic uint8_t *)((char *)mem + 64);
    a.sum = mem;
    a.bad = (_Atomic uint32_t *)((char *)mem + 8);
    a.q = new_queue(64u << 10, MPMC_MAX, 0, 0);
    TU_REQUIRE(a.q);
    mproc_process_t *prod[MPMC_P] = {0}, *cons[MPMC_C] = {0};
    for (int i = 0; i < MPMC_C; i++)
        cons[i] = start_with(MPROC_START_FORK, mpmc_consumer, &a, sizeof a, NULL, 0);
    for (int i = 0; i < MPMC_P; i++) {
        a.who = (uint32_t)i;
        prod[i] = start_with(MPROC_START_FORK, mpmc_producer, &a, sizeof a, NULL, 0);
    }
    for (int i = 0; i < MPMC_P; i++)
        TU_CHECK_EQ_INT(join_free(prod[i]), 0);
    msg_hdr_t stop = {SENTINEL, 0};
    for (int i = 0; i < MPMC_C; i++)
        TU_CHECK_OK(mproc_queue_put(a.q, &stop, sizeof stop, TU_T_MS));
    for (int i = 0; i < MPMC_C; i++)
        TU_CHECK_EQ_INT(join_free(cons[i]), 0);

    uint64_t want = 0;
    size_t missing = 0, dup = 0;
    for (uint32_t w = 0; w < MPMC_P; w++)
        for (uint32_t s = 0; s < MPMC_N; s++) {
            want += mix(w, s);
            uint8_t c = atomic_load(&a.seen[w * MPMC_N + s]);
            missing += c == 0;
            dup += c > 1;
        }
    TU_CHECK_EQ_INT(missing, 0);
    TU_CHECK_EQ_INT(dup, 0);
    TU_CHECK_EQ_INT(atomic_load(a.bad), 0);
    TU_CHECK(atomic_load(a.sum) == want);
    TU_CHECK_EQ_INT(mproc_queue_empty(a.q), 1);
    mproc_queue_close(a.q);
    mproc_shm_close(shm);
}

/* ------------------------------------------------------------------ deaths */

/* Shared state of the kill tests. */
typedef struct {
    _Atomic uint32_t progress[2]; /* per party: messages handled so far */
    _Atomic uint32_t stop;
    _Atomic uint8_t seen[1u << 20]; /* consumer tests: seq -> times delivered */
} kill_shared_t;

typedef struct {
    mproc_queue_t *q;
    kill_shared_t *ks;
    uint32_t who;
} kill_arg_t;

/* Puts (who, 0), (who, 1), ... until stopped or killed. */
static int kill_producer(const void *arg, size_t len)
{
    (void)len;
    const kill_arg_t *a = arg;
    unsigned char buf[256];
    for (uint32_t s = 0; !atomic_load(&a->ks->stop); s++) {
        size_t n = len_for(a->who, s, sizeof buf);
        make_msg(buf, n, a->who, s);
        int rc;
        while ((rc = mproc_queue_put(a->q, buf, n, 100)) == -ETIMEDOUT)
            if (atomic_load(&a->ks->stop))
                return 0;
        C_RC(rc, 0);
        atomic_store(&a->ks->progress[a->who], s + 1);
    }
    return 0;
}

static mproc_process_t *start_fork(mproc_entry_fn fn, const kill_arg_t *a)
{
    return start_with(MPROC_START_FORK, fn, a, sizeof *a, NULL, 0);
}

/* Wait (bounded) until progress[who] >= n. */
static int wait_progress(kill_shared_t *ks, int who, uint32_t n)
{
    int64_t end = tu_now_ms() + TU_T_MS;
    while (atomic_load(&ks->progress[who]) < n) {
        if (tu_now_ms() > end)
            return 0;
        sched_yield();
    }
    return 1;
}

/*
 * Producer A is SIGKILLed at a random point, 60 times, while producer B
 * keeps putting and this process consumes. Every A stream received is
 * 0..k-1 whole and in order (a killed put is all or nothing), B's stream
 * is complete and in order, and B never stalls.
 */
static void test_kill_producers(void)
{
    kill_shared_t *ks = NULL;
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, sizeof *ks + 4096));
    TU_REQUIRE_OK(mproc_shm_alloc(shm, sizeof *ks, NULL, (void **)&ks));
    /* A small ring: producers often wait for room, holding the put lock. */
    kill_arg_t a = {.q = new_queue(4096, 256, 0, -1), .ks = ks, .who = 1};
    TU_REQUIRE(a.q);
    mproc_process_t *b = start_fork(kill_producer, &a);
    TU_REQUIRE(b);
    a.who = 0;
    uint32_t b_next = 0;
    unsigned char buf[256];
    int rounds = 60;
    for (int r = 0; r < rounds && !tu_failed; r++) {
        atomic_store(&ks->progress[0], 0);
        mproc_process_t *p = start_fork(kill_producer, &a);
        TU_REQUIRE(p);
        uint32_t a_next = 0, kill_at = 1 + rnd(300), b_mark = 0;
        int killed = 0;
        int64_t end = tu_now_ms() + TU_T_MS;
        /* Consume both streams; kill A once it has put kill_at messages
         * (a random moment in its put loop: mid-copy, waiting for room...).
         * B's message b_mark was put after A died, so every message of A's
         * is before it. */
        for (;;) {
            TU_REQUIRE(tu_now_ms() < end);
            if (!killed && atomic_load(&ks->progress[0]) >= kill_at) {
                TU_CHECK_OK(mproc_process_kill(p));
                TU_CHECK_EQ_INT(join_free(p), -SIGKILL);
                killed = 1;
                b_mark = atomic_load(&ks->progress[1]) + 1;
            }
            size_t n;
            int rc = mproc_queue_get(a.q, buf, sizeof buf, &n, 100);
            if (rc == -ETIMEDOUT)
                continue;
            TU_REQUIRE_OK(rc);
            msg_hdr_t h;
            TU_REQUIRE(check_msg(buf, n, &h));
            TU_REQUIRE_EQ_INT(n, len_for(h.who, h.seq, sizeof buf));
            if (h.who == 0) {
                TU_REQUIRE_EQ_INT(h.seq, a_next);
                a_next++;
            } else {
                TU_REQUIRE_EQ_INT(h.who, 1);
                TU_REQUIRE_EQ_INT(h.seq, b_next);
                b_next++;
            }
            if (killed && h.who == 1 && h.seq >= b_mark)
                break;
        }
        /* A put at most one message more than it reported. */
        uint32_t reported = atomic_load(&ks->progress[0]);
        TU_CHECK(a_next == reported || a_next == reported + 1);
    }
    /* B went on through all of it (b_mark, every round); stop it. */
    atomic_store(&ks->stop, 1);
    size_t n;
    int64_t end = tu_now_ms() + TU_T_MS;
    while (mproc_process_is_alive(b) == 1 && tu_now_ms() < end)
        if (mproc_queue_get(a.q, buf, sizeof buf, &n, 10) == 0) {
            msg_hdr_t h;
            TU_CHECK(check_msg(buf, n, &h) && h.who == 1 && h.seq == b_next);
            b_next++;
        }
    TU_CHECK_EQ_INT(join_free(b), 0);
    while (mproc_queue_get(a.q, buf, sizeof buf, &n, 0) == 0) {
        msg_hdr_t h;
        TU_CHECK(check_msg(buf, n, &h) && h.who == 1 && h.seq == b_next);
        b_next++;
    }
    TU_CHECK_EQ_INT(b_next, atomic_load(&ks->progress[1]));
    TU_CHECK(b_next > 0);
    mproc_queue_close(a.q);
    mproc_shm_close(shm);
}

/* Gets until stopped or killed, counting what it got in ks->seen. */
static int kill_consumer(const void *arg, size_t len)
{
    (void)len;
    const kill_arg_t *a = arg;
    unsigned char buf[256];
    for (;;) {
        size_t n;
        int rc = mproc_queue_get(a->q, buf, sizeof buf, &n, 100);
        if (rc == -ETIMEDOUT) {
            if (atomic_load(&a->ks->stop))
                return 0;
            continue;
        }
        C_RC(rc, 0);
        msg_hdr_t h;
        if (!check_msg(buf, n, &h) || h.seq >= (1u << 20)) {
            report_bad(buf, n);
            return 100;
        }
        atomic_fetch_add(&a->ks->seen[h.seq], 1);
        atomic_fetch_add(&a->ks->progress[a->who], 1);
    }
}

/*
 * Consumer A is SIGKILLed at a random point, 60 times, while consumer B
 * keeps getting and this process produces. No message is delivered twice;
 * each kill loses at most the one message A had in hand.
 */
static void test_kill_consumers(void)
{
    kill_shared_t *ks = NULL;
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, sizeof *ks + 4096));
    TU_REQUIRE_OK(mproc_shm_alloc(shm, sizeof *ks, NULL, (void **)&ks));
    kill_arg_t a = {.q = new_queue(4096, 256, 0, -1), .ks = ks, .who = 1};
    TU_REQUIRE(a.q);
    mproc_process_t *b = start_fork(kill_consumer, &a);
    TU_REQUIRE(b);
    a.who = 0;
    unsigned char buf[256];
    uint32_t seq = 0;
    int rounds = 60;
    for (int r = 0; r < rounds && !tu_failed; r++) {
        atomic_store(&ks->progress[0], 0);
        mproc_process_t *p = start_fork(kill_consumer, &a);
        TU_REQUIRE(p);
        uint32_t kill_at = 1 + rnd(300);
        int64_t end = tu_now_ms() + TU_T_MS;
        while (atomic_load(&ks->progress[0]) < kill_at) {
            size_t n = len_for(0, seq, sizeof buf);
            make_msg(buf, n, 0, seq);
            int rc = mproc_queue_put(a.q, buf, n, 100);
            if (rc == 0)
                seq++;
            else
                TU_REQUIRE_EQ_INT(rc, -ETIMEDOUT);
            TU_REQUIRE(tu_now_ms() < end);
        }
        TU_CHECK_OK(mproc_process_kill(p));
        TU_CHECK_EQ_INT(join_free(p), -SIGKILL);
    }
    /* B alone drains what is left, then stops. */
    int64_t end = tu_now_ms() + TU_T_MS;
    while (!mproc_queue_empty(a.q) && tu_now_ms() < end)
        sched_yield();
    TU_CHECK_EQ_INT(mproc_queue_empty(a.q), 1);
    atomic_store(&ks->stop, 1);
    TU_CHECK_EQ_INT(join_free(b), 0);
    uint32_t missing = 0, dup = 0;
    for (uint32_t s = 0; s < seq; s++) {
        uint8_t c = atomic_load(&ks->seen[s]);
        missing += c == 0;
        dup += c > 1;
    }
    TU_CHECK_EQ_INT(dup, 0);
    TU_CHECK((int)missing <= rounds);
    fprintf(stderr, "  %u messages, %d consumers killed, %u lost with them\n", seq, rounds,
            missing);
    mproc_queue_close(a.q);
    mproc_shm_close(shm);
}

/* A consumer killed while it sleeps on an empty queue (holding the consumers'
 * lock) and a producer killed while it sleeps on a full one: the others go
 * on at once. */
static int sleeping_getter(const void *arg, size_t len)
{
    (void)len;
    const kill_arg_t *a = arg;
    char buf[8];
    size_t n;
    atomic_store(&a->ks->progress[0], 1);
    return mproc_queue_get(a->q, buf, sizeof buf, &n, MPROC_FOREVER) == 0 ? 0 : 1;
}

static int sleeping_putter(const void *arg, size_t len)
{
    (void)len;
    const kill_arg_t *a = arg;
    atomic_store(&a->ks->progress[0], 1);
    return mproc_queue_put(a->q, "x", 1, MPROC_FOREVER) == 0 ? 0 : 1;
}

static void test_kill_sleepers(void)
{
    kill_shared_t *ks = NULL;
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, sizeof *ks + 4096));
    TU_REQUIRE_OK(mproc_shm_alloc(shm, sizeof *ks, NULL, (void **)&ks));
    kill_arg_t a = {.q = new_queue(4096, 100, 0, -1 /* never spin */), .ks = ks, .who = 0};
    TU_REQUIRE(a.q);
    char buf[128];
    size_t n;

    mproc_process_t *p = start_fork(sleeping_getter, &a);
    TU_REQUIRE(p);
    TU_CHECK(wait_progress(ks, 0, 1) && wait_sleeping(&p, 1));
    TU_CHECK_OK(mproc_process_kill(p));
    TU_CHECK_EQ_INT(join_free(p), -SIGKILL);
    TU_CHECK_OK(mproc_queue_put(a.q, "m", 1, 0));
    int64_t t0 = tu_now_ms();
    TU_CHECK_OK(mproc_queue_get(a.q, buf, sizeof buf, &n, 1000));
    TU_CHECK(tu_now_ms() - t0 < 500);

    /* Fill the ring, then a producer sleeps for room holding the put lock. */
    memset(buf, 1, sizeof buf);
    while (mproc_queue_put(a.q, buf, 100, 0) == 0)
        ;
    while (mproc_queue_put(a.q, buf, 1, 0) == 0)
        ;
    atomic_store(&ks->progress[0], 0);
    p = start_fork(sleeping_putter, &a);
    TU_REQUIRE(p);
    TU_CHECK(wait_progress(ks, 0, 1) && wait_sleeping(&p, 1));
    TU_CHECK_OK(mproc_process_kill(p));
    TU_CHECK_EQ_INT(join_free(p), -SIGKILL);
    TU_CHECK_OK(mproc_queue_get(a.q, buf, sizeof buf, &n, 0));
    t0 = tu_now_ms();
    TU_CHECK_OK(mproc_queue_put(a.q, buf, 100, 1000));
    TU_CHECK(tu_now_ms() - t0 < 500);
    mproc_queue_close(a.q);
    mproc_shm_close(shm);
}

/* ---------------------------------------------------------- joinable, pollable */

static int done_worker(const void *arg, size_t len)
{
    (void)len;
    mproc_queue_t *q = *(mproc_queue_t *const *)arg;
    char buf[16];
    size_t n;
    for (int i = 0; i < 100; i++) {
        C_RC(mproc_queue_get(q, buf, sizeof buf, &n, TU_T_MS), 0);
        C_RC(mproc_queue_task_done(q), 0);
    }
    return 0;
}

static void test_joinable(void)
{
    mproc_queue_t *q = new_queue(0, 0, MPROC_QUEUE_JOINABLE, 0);
    TU_REQUIRE(q);
    TU_CHECK_OK(mproc_queue_join(q, 0)); /* nothing put: done */
    TU_CHECK_EQ_INT(mproc_queue_task_done(q), -EOVERFLOW);
    TU_CHECK_OK(mproc_queue_put(q, "a", 1, 0));
    TU_CHECK_EQ_INT(mproc_queue_join(q, 20), -ETIMEDOUT);
    char buf[16];
    size_t n;
    TU_CHECK_OK(mproc_queue_get(q, buf, sizeof buf, &n, 0));
    TU_CHECK_EQ_INT(mproc_queue_join(q, 0), -ETIMEDOUT); /* got, not done */
    TU_CHECK_OK(mproc_queue_task_done(q));
    TU_CHECK_OK(mproc_queue_join(q, 0));
    TU_CHECK_EQ_INT(mproc_queue_task_done(q), -EOVERFLOW);

    /* A worker marks 100 tasks done; join returns when the last is. */
    mproc_process_t *p = start_with(MPROC_START_FORK, done_worker, &q, sizeof q, NULL, 0);
    TU_REQUIRE(p);
    for (int i = 0; i < 100; i++)
        TU_CHECK_OK(mproc_queue_put(q, "t", 1, TU_T_MS));
    TU_CHECK_OK(mproc_queue_join(q, TU_T_MS));
    TU_CHECK_EQ_INT(mproc_queue_qsize(q), 0);
    TU_CHECK_EQ_INT(join_free(p), 0);
    mproc_queue_close(q);
}

static int slow_putter(const void *arg, size_t len)
{
    (void)len;
    mproc_queue_t *q = *(mproc_queue_t *const *)arg;
    for (int i = 0; i < 50; i++)
        C_RC(mproc_queue_put(q, &i, sizeof i, TU_T_MS), 0);
    return 0;
}

static void test_pollable(void)
{
    mproc_queue_t *q = new_queue(0, 0, MPROC_QUEUE_POLLABLE, 0);
    TU_REQUIRE(q);
    int fd = mproc_queue_fd(q);
    TU_REQUIRE(fd >= 0);
    TU_CHECK_EQ_INT(tu_wait_readable(fd, 0), 0);
    TU_CHECK_OK(mproc_queue_put(q, "x", 1, 0));
    TU_CHECK_EQ_INT(tu_wait_readable(fd, 0), 1);
    char buf[16];
    size_t n;
    TU_CHECK_OK(mproc_queue_get(q, buf, sizeof buf, &n, 0));
    /* Still readable until a get finds the queue empty. */
    TU_CHECK_EQ_INT(mproc_queue_get(q, buf, sizeof buf, &n, 0), -ETIMEDOUT);
    TU_CHECK_EQ_INT(tu_wait_readable(fd, 0), 0);

    /* An event loop: poll, drain, repeat, while a child puts 50. */
    mproc_process_t *p = start_with(MPROC_START_FORK, slow_putter, &q, sizeof q, NULL, 0);
    TU_REQUIRE(p);
    int got = 0;
    int64_t end = tu_now_ms() + TU_T_MS;
    while (got < 50 && tu_now_ms() < end) {
        int r = tu_wait_readable(fd, 1000);
        TU_REQUIRE(r >= 0);
        if (r == 0)
            continue;
        while (mproc_queue_get(q, buf, sizeof buf, &n, 0) == 0) {
            int v;
            memcpy(&v, buf, sizeof v);
            TU_CHECK_EQ_INT(v, got);
            got++;
        }
    }
    TU_CHECK_EQ_INT(got, 50);
    TU_CHECK_EQ_INT(join_free(p), 0);
    TU_CHECK_EQ_INT(tu_wait_readable(fd, 0), 0);

    /* A ref whose fd is not the queue's eventfd is refused, and the fd
     * stays the caller's. */
    mproc_queue_ref_t ref;
    TU_CHECK_OK(mproc_queue_ref(q, &ref));
    int pp[2];
    TU_REQUIRE(tu_pipe(pp) == 0);
    TU_CHECK_OK(fcntl(pp[0], F_SETFL, O_NONBLOCK));
    ref.efd = pp[0];
    mproc_queue_t *q2 = NULL;
    TU_CHECK_EQ_INT(mproc_queue_attach(&q2, &ref), MPROC_ETYPE);
    TU_CHECK(tu_fd_is_open(pp[0]));
    tu_close(&pp[0]);
    tu_close(&pp[1]);
    mproc_queue_close(q);

    /* Opened by name, a pollable queue has no fd; a ref made from that
     * handle attaches without one; producers there still leave the fd
     * armed for those that have it. */
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, 128u << 10));
    mproc_queue_opts_t o = {.flags = MPROC_QUEUE_POLLABLE};
    mproc_queue_t *owner = NULL, *byname = NULL, *attached = NULL;
    TU_REQUIRE_OK(mproc_queue_create(shm, "pq", &o, &owner));
    TU_REQUIRE_OK(mproc_queue_open(shm, "pq", &byname));
    TU_CHECK_EQ_INT(mproc_queue_fd(byname), -ENOTSUP);
    TU_CHECK_OK(mproc_queue_ref(byname, &ref));
    TU_CHECK_EQ_INT(ref.efd, -1);
    TU_CHECK_OK(mproc_queue_attach(&attached, &ref));
    TU_CHECK_EQ_INT(mproc_queue_fd(attached), -ENOTSUP);
    TU_CHECK_OK(mproc_queue_put(byname, "a", 1, 0)); /* no fd to write */
    TU_CHECK_EQ_INT(tu_wait_readable(mproc_queue_fd(owner), 0), 0);
    TU_CHECK_OK(mproc_queue_put(owner, "b", 1, 0)); /* still armed: writes */
    TU_CHECK_EQ_INT(tu_wait_readable(mproc_queue_fd(owner), 0), 1);
    mproc_queue_close(attached);
    mproc_queue_close(byname);
    TU_CHECK_OK(mproc_queue_free(owner));
    mproc_shm_close(shm);
}

/* ------------------------------------------------------- children, every method */

typedef struct {
    mproc_queue_ref_t in, out;
} child_refs_t;

/* Sums 1000 ints from `in` (a pollable queue, waited on through its fd),
 * puts the sum on `out`. */
static int sum_child(const void *arg, size_t len)
{
    C_REQ(len == sizeof(child_refs_t));
    child_refs_t r;
    memcpy(&r, arg, sizeof r);
    mproc_queue_t *in = NULL, *out = NULL;
    C_RC(mproc_queue_attach(&in, &r.in), 0);
    C_RC(mproc_queue_attach(&out, &r.out), 0);
    int fd = mproc_queue_fd(in);
    C_REQ(fd >= 0);
    int64_t sum = 0;
    int got = 0;
    while (got < 1000) {
        struct pollfd pf = {fd, POLLIN, 0};
        int pr = poll(&pf, 1, TU_T_MS);
        C_REQ(pr == 1 || (pr < 0 && errno == EINTR));
        int v;
        size_t n;
        while (got < 1000 && mproc_queue_get(in, &v, sizeof v, &n, 0) == 0) {
            C_REQ(n == sizeof v);
            sum += v;
            got++;
        }
    }
    C_RC(mproc_queue_put(out, &sum, sizeof sum, TU_T_MS), 0);
    mproc_queue_close(in);
    mproc_queue_close(out);
    return 0;
}

static void queue_child(mproc_start_method_t m)
{
    mproc_queue_t *in = new_queue(0, 0, MPROC_QUEUE_POLLABLE, 0);
    /* The reply queue lives in a user segment's arena. */
    mproc_shm_t *shm = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&shm, 64u << 10));
    mproc_queue_t *out = NULL;
    mproc_queue_opts_t o = {.capacity = 4096};
    TU_REQUIRE_OK(mproc_queue_create(shm, NULL, &o, &out));
    TU_REQUIRE(in);
    child_refs_t r;
    TU_REQUIRE_OK(mproc_queue_ref(in, &r.in));
    TU_REQUIRE_OK(mproc_queue_ref(out, &r.out));
    mproc_queue_t *qs[2] = {in, out};
    mproc_process_t *p = start_with(m, sum_child, &r, sizeof r, qs, 2);
    TU_REQUIRE(p);
    int64_t want = 0;
    for (int i = 0; i < 1000; i++) {
        TU_CHECK_OK(mproc_queue_put(in, &i, sizeof i, TU_T_MS));
        want += i;
    }
    int64_t sum = 0;
    size_t n;
    TU_CHECK_OK(mproc_queue_get(out, &sum, sizeof sum, &n, TU_T_MS));
    TU_CHECK(sum == want);
    TU_CHECK_EQ_INT(join_free(p), 0);
    mproc_queue_close(in);
    TU_CHECK_OK(mproc_queue_free(out));
    mproc_shm_close(shm);
}
TU_DEFINE_METHOD_CASES(queue_child)

/* ------------------------------------------------------------------ main */

static const tu_case_t cases[] = {
    TU_CASE(test_round_trip_sizes),
    TU_CASE(test_bad_input),
    TU_CASE(test_message_size_errors),
    TU_CASE(test_timeouts_and_counts),
    TU_CASE(test_wrap_order),
    TU_CASE(test_named_in_arena),
    TU_CASE(test_corrupt_ring),
    TU_CASE(test_mpmc_exactly_once),
    TU_CASE(test_kill_producers),
    TU_CASE(test_kill_consumers),
    TU_CASE(test_kill_sleepers),
    TU_CASE(test_joinable),
    TU_CASE(test_pollable),
    TU_METHOD_CASES(queue_child),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    rng_state ^= (uint64_t)getpid() << 20 ^ (uint64_t)time(NULL);
    return tu_main(argc, argv, cases);
}
