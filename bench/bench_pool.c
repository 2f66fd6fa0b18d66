/*
 * bench_pool - the worker pool: throughput of a trivial task through
 * mproc_pool_map at several chunk sizes, and how a CPU-bound task scales
 * from one worker to two.
 *
 *   bench_pool <mode> <iterations>
 *
 * Every pool here is made with mproc_pool_create(), start method
 * MPROC_START_FORK, before anything is timed; only the map calls are timed
 * (CLOCK_MONOTONIC around mproc_pool_map). One untimed warm-up map (it
 * faults in the arena and the workers' pages), then several timed maps in
 * the same pool; a sample is one map's items per second. Every result is
 * checked after each map (outside the timed region), or the program fails.
 * The pool is closed, joined and freed at the end: no worker outlives the
 * program.
 *
 * Throughput modes: a map of <iterations> int64 items, x -> x + 1 (8 bytes
 * in, 8 bytes out), by a pool of the default size (workers 0: one per CPU
 * this process may run on), MAP_ROUNDS timed maps.
 *
 *   mproc-map-1      chunk 1: one task message per item
 *   mproc-map-100    chunk 100
 *   mproc-map-auto   chunk 0: automatic, count / (4 * workers) rounded up
 *                    (12,500 for 100,000 items on 2 workers, the chunk
 *                    size Python's Pool.map picks by default)
 *   raw-split        the floor: no dispatch at all. As many fork()ed
 *                    workers as CPUs, started before anything is timed,
 *                    sleep on a futex; a round bumps a generation word
 *                    and FUTEX_WAKEs them, worker k computes
 *                    out[i] = in[i] + 1 over its k-th contiguous share of
 *                    arrays in MAP_SHARED memory, and the last one to
 *                    finish wakes the parent (a futex countdown). That is
 *                    the arithmetic, one wake-up of the workers and one
 *                    barrier: what any pool has to pay for the whole map,
 *                    whatever its chunk size. mproc's map also copies the
 *                    items into its arena and the results out of it; this
 *                    floor does not (it is the least the map can cost).
 *
 * CPU-bound modes: <iterations> tasks of about 1 ms of arithmetic each (a
 * loop on a volatile accumulator; its length is calibrated at start: the
 * fastest of several timed runs of the task in this process, so noise
 * cannot make the task shorter than 1 ms), chunk 1, CPU_ROUNDS timed maps
 * after a warm-up map of a tenth of the tasks. The output line also has
 * task_us, the median time of one task run directly in this process.
 *
 *   mproc-cpu-1      a pool of 1 worker
 *   mproc-cpu-2      a pool of 2 workers
 *
 * Output: one line, "median_per_s=... p10_per_s=... p90_per_s=...
 * [task_us=...] n=<iterations>". Any error is printed to stderr and ends
 * the program with status 1.
 */
#define _GNU_SOURCE /* syscall(), MAP_ANONYMOUS */

#include "bench_util.h"
#include "mproc.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#define MAP_ROUNDS 20
#define CPU_ROUNDS 5
#define MAX_WORKERS 64
#define TASK_TARGET_US 1000.0 /* a CPU-bound task's length */
#define CALIBRATION_RUNS 15

/* ------------------------------------------------------------------------ */
/* The task functions                                                       */
/* ------------------------------------------------------------------------ */

/* x -> x + 1 on an int64. */
static int incr_task(const void *arg, size_t len, void *out, size_t cap, size_t *out_len)
{
    int64_t x;
    if (len != sizeof x || cap < sizeof x)
        return -EINVAL;
    memcpy(&x, arg, sizeof x);
    x++;
    memcpy(out, &x, sizeof x);
    *out_len = sizeof x;
    return 0;
}

/* Loop length of the CPU-bound task: set by calibrate() before the pool is
 * made, so the fork()ed workers inherit it. */
static long spin_iters = 100000;

static uint64_t spin(uint64_t seed, long iters)
{
    volatile uint64_t acc = seed;
    for (long i = 0; i < iters; i++)
        acc = acc * 6364136223846793005u + (uint64_t)i;
    return acc;
}

/* About 1 ms of arithmetic on the int64 seed; the result is the
 * accumulator (checked against the same computation in the parent). */
static int spin_task(const void *arg, size_t len, void *out, size_t cap, size_t *out_len)
{
    uint64_t x;
    if (len != sizeof x || cap < sizeof x)
        return -EINVAL;
    memcpy(&x, arg, sizeof x);
    x = spin(x, spin_iters);
    memcpy(out, &x, sizeof x);
    *out_len = sizeof x;
    return 0;
}

/* One direct run of spin_task, in microseconds. */
static double time_task(uint64_t seed)
{
    uint64_t out;
    size_t len;
    double t0 = now_us();
    spin_task(&seed, sizeof seed, &out, sizeof out, &len);
    return now_us() - t0;
}

/* Set spin_iters so that the fastest run of the task takes TASK_TARGET_US;
 * return the median time of a task run directly afterwards. */
static double calibrate(void)
{
    double t[CALIBRATION_RUNS], best = 0;

    spin_iters = 100000;
    for (int round = 0; round < 2; round++) { /* the second corrects the first */
        best = 0;
        for (int i = 0; i < CALIBRATION_RUNS; i++) {
            double us = time_task((uint64_t)i);
            if (i == 0 || us < best)
                best = us;
        }
        if (best <= 0)
            die("calibrate", "the task took no time");
        spin_iters = (long)((double)spin_iters * TASK_TARGET_US / best);
        if (spin_iters < 1)
            spin_iters = 1;
    }
    for (int i = 0; i < CALIBRATION_RUNS; i++)
        t[i] = time_task((uint64_t)i);
    qsort(t, CALIBRATION_RUNS, sizeof t[0], cmp_double);
    return quantile(t, CALIBRATION_RUNS, 0.5);
}

/* ------------------------------------------------------------------------ */
/* mproc's pool                                                             */
/* ------------------------------------------------------------------------ */

static mproc_pool_t *make_pool(int workers)
{
    mproc_pool_opts_t opts;
    mproc_pool_t *pool;

    memset(&opts, 0, sizeof opts);
    opts.workers = workers;
    opts.method = MPROC_START_FORK;
    int rc = mproc_pool_create(&pool, &opts);
    if (rc < 0)
        die_mproc("mproc_pool_create", rc);
    return pool;
}

static void end_pool(mproc_pool_t *pool)
{
    int rc = mproc_pool_close(pool);
    if (rc < 0)
        die_mproc("mproc_pool_close", rc);
    rc = mproc_pool_join(pool, 10000);
    if (rc < 0)
        die_mproc("mproc_pool_join", rc);
    rc = mproc_pool_free(pool);
    if (rc < 0)
        die_mproc("mproc_pool_free", rc);
}

/* One map of count items; its items per second. No status array (st NULL,
 * as a caller that only wants the results): if an item failed, the map is
 * run again untimed with one, to say which. */
static double timed_map(mproc_pool_t *pool, mproc_task_fn fn, const int64_t *in, int64_t *out,
                        size_t count, size_t chunk)
{
    memset(out, 0xff, count * sizeof *out);
    double t0 = now_ns();
    int rc = mproc_pool_map(pool, fn, in, sizeof *in, out, sizeof *out, count, chunk, NULL,
                            MPROC_FOREVER);
    double t1 = now_ns();
    if (rc == MPROC_ETASK) {
        mproc_task_status_t *st = calloc(count, sizeof *st);
        if (st && mproc_pool_map(pool, fn, in, sizeof *in, out, sizeof *out, count, chunk, st,
                                 MPROC_FOREVER) == MPROC_ETASK)
            for (size_t i = 0; i < count; i++)
                if (st[i].rc != 0) {
                    char why[96];
                    snprintf(why, sizeof why, "item %zu failed: %s (status %d)", i,
                             mproc_strerror(st[i].rc), st[i].status);
                    die("mproc_pool_map", why);
                }
    }
    if (rc < 0)
        die_mproc("mproc_pool_map", rc);
    return (double)count * 1e9 / (t1 - t0);
}

static void check_incr(const char *name, const int64_t *in, const int64_t *out, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (out[i] != in[i] + 1) {
            char why[96];
            snprintf(why, sizeof why, "item %zu: %" PRId64 " -> %" PRId64, i, in[i], out[i]);
            die(name, why);
        }
}

static void run_mproc_map(const char *name, size_t chunk, long iterations)
{
    size_t count = (size_t)iterations;
    int64_t *in = malloc(count * sizeof *in), *out = malloc(count * sizeof *out);
    double samples[MAP_ROUNDS];

    if (!in || !out)
        die_errno("malloc");
    for (size_t i = 0; i < count; i++)
        in[i] = (int64_t)i * 7 - 3;
    mproc_pool_t *pool = make_pool(0);

    timed_map(pool, incr_task, in, out, count, chunk);
    check_incr(name, in, out, count);
    for (int r = 0; r < MAP_ROUNDS; r++) {
        samples[r] = timed_map(pool, incr_task, in, out, count, chunk);
        check_incr(name, in, out, count);
    }

    end_pool(pool);
    free(in);
    free(out);
    print_quantiles("per_s", samples, MAP_ROUNDS, iterations);
}

static void run_mproc_cpu(const char *name, int workers, long iterations)
{
    size_t count = (size_t)iterations, warm = count / 10 + 1;
    int64_t *in = malloc(count * sizeof *in), *out = malloc(count * sizeof *out);
    uint64_t *want = malloc(count * sizeof *want);
    double samples[CPU_ROUNDS];

    if (!in || !out || !want)
        die_errno("malloc");
    double task_us = calibrate();
    for (size_t i = 0; i < count; i++) {
        in[i] = (int64_t)i;
        want[i] = spin((uint64_t)i, spin_iters);
    }
    mproc_pool_t *pool = make_pool(workers);

    timed_map(pool, spin_task, in, out, warm < count ? warm : count, 1);
    for (int r = 0; r < CPU_ROUNDS; r++) {
        samples[r] = timed_map(pool, spin_task, in, out, count, 1);
        for (size_t i = 0; i < count; i++)
            if ((uint64_t)out[i] != want[i])
                die(name, "a task's result is wrong");
    }

    end_pool(pool);
    free(in);
    free(out);
    free(want);
    print_quantiles_part("per_s", samples, CPU_ROUNDS);
    printf("task_us=%.1f n=%ld\n", task_us, iterations);
    bench_flush();
}

/* ------------------------------------------------------------------------ */
/* The raw floor: a static split, no dispatch                               */
/* ------------------------------------------------------------------------ */

typedef struct {
    _Alignas(64) _Atomic uint32_t gen;  /* futex: bumped to start a round; */
    _Alignas(64) _Atomic uint32_t left; /* workers still computing */
    _Alignas(64) _Atomic uint32_t done; /* futex: rounds finished */
    _Alignas(64) _Atomic uint32_t stop; /* set with a last gen bump */
    size_t count;
    int nworkers;
} split_ctl_t;

static split_ctl_t *sctl;
static const int64_t *split_in;
static int64_t *split_out;

static long futex(_Atomic uint32_t *addr, int op, uint32_t val)
{
    /* Not FUTEX_PRIVATE_FLAG: the word is shared between processes. */
    return syscall(SYS_futex, (uint32_t *)addr, op, val, NULL, NULL, 0);
}

static void *map_shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die_errno("mmap");
    return p;
}

static int split_worker(void *arg)
{
    int k = (int)(intptr_t)arg;
    uint32_t seen = 0;
    size_t per = sctl->count / (size_t)sctl->nworkers, extra = sctl->count % (size_t)sctl->nworkers;
    size_t lo = (size_t)k * per + ((size_t)k < extra ? (size_t)k : extra);
    size_t hi = lo + per + ((size_t)k < extra);

    for (;;) {
        uint32_t g;
        while ((g = atomic_load(&sctl->gen)) == seen)
            futex(&sctl->gen, FUTEX_WAIT, seen);
        seen = g;
        if (atomic_load(&sctl->stop))
            return 0;
        for (size_t i = lo; i < hi; i++)
            split_out[i] = split_in[i] + 1;
        if (atomic_fetch_sub(&sctl->left, 1) == 1) { /* the last one */
            atomic_fetch_add(&sctl->done, 1);
            futex(&sctl->done, FUTEX_WAKE, 1);
        }
    }
}

/* One round; its items per second. */
static double split_round(void)
{
    uint32_t done = atomic_load(&sctl->done);

    memset(split_out, 0xff, sctl->count * sizeof *split_out);
    atomic_store(&sctl->left, (uint32_t)sctl->nworkers);
    double t0 = now_ns();
    atomic_fetch_add(&sctl->gen, 1);
    futex(&sctl->gen, FUTEX_WAKE, INT_MAX);
    while (atomic_load(&sctl->done) == done)
        futex(&sctl->done, FUTEX_WAIT, done);
    double t1 = now_ns();
    return (double)sctl->count * 1e9 / (t1 - t0);
}

static int online_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set) < MAX_WORKERS ? CPU_COUNT(&set) : MAX_WORKERS;
    return 1;
}

static void run_raw_split(const char *name, long iterations)
{
    size_t count = (size_t)iterations;
    pid_t pid[MAX_WORKERS];
    double samples[MAP_ROUNDS];

    sctl = map_shared(sizeof *sctl);
    int64_t *in = map_shared(count * sizeof *in);
    split_out = map_shared(count * sizeof *split_out);
    split_in = in;
    for (size_t i = 0; i < count; i++)
        in[i] = (int64_t)i * 7 - 3;
    sctl->count = count;
    sctl->nworkers = online_cpus();
    for (int k = 0; k < sctl->nworkers; k++)
        pid[k] = bench_fork(split_worker, (void *)(intptr_t)k);

    split_round();
    check_incr(name, in, split_out, count);
    for (int r = 0; r < MAP_ROUNDS; r++) {
        samples[r] = split_round();
        check_incr(name, in, split_out, count);
    }

    atomic_store(&sctl->stop, 1);
    atomic_fetch_add(&sctl->gen, 1);
    futex(&sctl->gen, FUTEX_WAKE, INT_MAX);
    for (int k = 0; k < sctl->nworkers; k++)
        bench_wait(pid[k], name);
    munmap(split_out, count * sizeof *split_out);
    munmap(in, count * sizeof *in);
    munmap(sctl, sizeof *sctl);
    print_quantiles("per_s", samples, MAP_ROUNDS, iterations);
}

/* ------------------------------------------------------------------------ */
/* Modes                                                                    */
/* ------------------------------------------------------------------------ */

typedef enum { MPROC_MAP, RAW_SPLIT, MPROC_CPU } shape_t;

typedef struct {
    const char *name;
    shape_t shape;
    size_t chunk; /* MPROC_MAP: 0 automatic */
    int workers;  /* MPROC_CPU */
} pool_mode_t;

static const pool_mode_t modes[] = {
    {"mproc-map-1", MPROC_MAP, 1, 0},    {"mproc-map-100", MPROC_MAP, 100, 0},
    {"mproc-map-auto", MPROC_MAP, 0, 0}, {"raw-split", RAW_SPLIT, 0, 0},
    {"mproc-cpu-1", MPROC_CPU, 0, 1},    {"mproc-cpu-2", MPROC_CPU, 0, 2},
};

int main(int argc, char **argv)
{
    long iterations;
    const pool_mode_t *mode =
        bench_setup(&argc, &argv, "bench_pool", modes, sizeof modes / sizeof modes[0],
                    sizeof modes[0], &iterations);

    switch (mode->shape) {
    case MPROC_MAP:
        run_mproc_map(mode->name, mode->chunk, iterations);
        break;
    case RAW_SPLIT:
        run_raw_split(mode->name, iterations);
        break;
    case MPROC_CPU:
        run_mproc_cpu(mode->name, mode->workers, iterations);
        break;
    }
    return 0;
}
