/*
 * bench_guard - the cost of a guard check's fast path, per call.
 *
 *   bench_guard <mode> <iterations>
 *
 * A guard check (mproc_guard_inherited, or mproc_guard_ensure on its fast
 * path) sits in front of every call a fork-safe client makes, so it must
 * cost next to nothing. Modes:
 *
 *   mproc-inherited  mproc_guard_inherited() on a guard this process claimed
 *   mproc-ensure     mproc_guard_ensure() on a claimed guard: the fast path,
 *                    the rebuild callback never runs
 *   raw-getpid       syscall(SYS_getpid) compared with a saved pid: what a
 *                    naive pid check costs (the raw syscall, because glibc
 *                    no longer caches getpid)
 *
 * <iterations> calls in all, in 100 batches (fewer when iterations < 100),
 * after one untimed warm-up batch. Each batch is timed with
 * clock_gettime(CLOCK_MONOTONIC) around it; a sample is the batch's time
 * divided by its calls. The loop's own overhead (an increment, a compare,
 * an add) is included, as it is on the Python side. Every result is added
 * into an accumulator that is stored to a volatile at the end of each
 * batch, so the calls cannot be dropped; they are calls into libmproc (or
 * system calls), which the compiler cannot hoist out of the loop. The
 * accumulator is a local, not the volatile itself: a volatile
 * read-modify-write per call would chain every iteration through memory
 * and add a store-forwarding delay to what is measured.
 *
 * The program prints one line, in nanoseconds per call:
 *
 *   median_ns=<float> p10_ns=<float> p90_ns=<float> n=<iterations>
 *
 * Any error is printed to stderr and ends the program with status 1.
 */
#define _DEFAULT_SOURCE /* syscall() */

#include "bench_util.h"
#include "mproc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* Timed batches, at most: each sample is one batch's per-call time. */
#define MAX_BATCHES 100

/* Where each batch's accumulated results go: the calls must have an effect. */
static volatile unsigned long sink;

/* ------------------------------------------------------------------------ */
/* The modes: each runs `calls` checks and returns the sum of their results  */
/* ------------------------------------------------------------------------ */

static mproc_guard_t guard = MPROC_GUARD_INIT;
static pid_t saved_pid;
static unsigned long rebuilds; /* must stay 0: the fast path never rebuilds */

static int rebuild(void *ctx)
{
    (void)ctx;
    rebuilds++;
    return 0;
}

static unsigned long mproc_inherited_batch(long calls)
{
    unsigned long acc = 0;

    for (long i = 0; i < calls; i++)
        acc += (unsigned long)mproc_guard_inherited(&guard);
    return acc;
}

static unsigned long mproc_ensure_batch(long calls)
{
    unsigned long acc = 0;

    for (long i = 0; i < calls; i++)
        acc += (unsigned long)mproc_guard_ensure(&guard, rebuild, NULL);
    return acc;
}

static unsigned long raw_getpid_batch(long calls)
{
    unsigned long acc = 0;

    for (long i = 0; i < calls; i++)
        acc += (pid_t)syscall(SYS_getpid) != saved_pid;
    return acc;
}

typedef struct {
    const char *name;
    unsigned long (*batch)(long calls); /* the number of checks that failed */
} check_mode_t;

static const check_mode_t modes[] = {
    {"mproc-inherited", mproc_inherited_batch},
    {"mproc-ensure", mproc_ensure_batch},
    {"raw-getpid", raw_getpid_batch},
};

static const check_mode_t *find_mode(const char *name)
{
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        if (strcmp(modes[i].name, name) == 0)
            return &modes[i];
    }
    return NULL;
}

static _Noreturn void usage(void)
{
    usage_names("<mode> <iterations>", "modes", modes, sizeof modes / sizeof modes[0],
                sizeof modes[0]);
}

int main(int argc, char **argv)
{
    const check_mode_t *mode;
    double samples[MAX_BATCHES];
    long iterations, nbatch;
    unsigned long failed = 0;
    int rc;

    bench_prog = "bench_guard";
    rc = mproc_init(&argc, &argv);
    if (rc < 0)
        die_mproc("mproc_init", rc);
    mproc_set_log(log_to_stderr, NULL);

    if (argc > 0 && argv[0] != NULL)
        bench_prog = argv[0];
    if (argc != 3)
        usage();
    mode = find_mode(argv[1]);
    if (mode == NULL)
        usage();
    iterations = parse_positive("iterations", argv[2], 1000000000L);

    mproc_guard_claim(&guard);
    saved_pid = getpid();
    if (mproc_guard_inherited(&guard))
        die("mproc_guard_claim", "the guard is not this process's after claiming it");

    nbatch = iterations < MAX_BATCHES ? iterations : MAX_BATCHES;

    /* Warm-up: caches, lazy binding, the CPU's clock. */
    failed += mode->batch(iterations / nbatch);

    /* The first iterations % nbatch batches make one call more. */
    for (long b = 0; b < nbatch; b++) {
        long calls = iterations / nbatch + (b < iterations % nbatch);
        double t0 = now_ns();
        unsigned long acc = mode->batch(calls);
        double t1 = now_ns();

        sink = acc;
        failed += acc;
        samples[b] = (t1 - t0) / (double)calls;
    }

    /* Every check ran in the process that claimed the guard: all pass. */
    if (failed != 0 || rebuilds != 0) {
        char why[96];
        snprintf(why, sizeof why, "%lu checks said inherited, %lu rebuilds", failed, rebuilds);
        die(mode->name, why);
    }

    print_quantiles("ns", samples, (size_t)nbatch, iterations);
    return 0;
}
