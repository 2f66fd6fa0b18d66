/*
 * bench_util.c - helpers shared by the benchmark programs (bench_util.h).
 */
#define _GNU_SOURCE /* sched_setaffinity */

#include "bench_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *bench_prog = "bench";

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

_Noreturn void die(const char *what, const char *why)
{
    fprintf(stderr, "%s: %s: %s\n", bench_prog, what, why);
    exit(1);
}

_Noreturn void die_errno(const char *what)
{
    die(what, strerror(errno));
}

_Noreturn void die_mproc(const char *what, int code)
{
    die(what, mproc_strerror(code));
}

void log_to_stderr(void *ctx, mproc_log_level_t level, const char *msg)
{
    (void)ctx;
    (void)level;
    fprintf(stderr, "%s: mproc: %s\n", bench_prog, msg);
}

/* ------------------------------------------------------------------------ */
/* Measuring                                                                */
/* ------------------------------------------------------------------------ */

static void monotonic(struct timespec *ts)
{
    if (clock_gettime(CLOCK_MONOTONIC, ts) < 0)
        die_errno("clock_gettime");
}

double now_us(void)
{
    struct timespec ts;

    monotonic(&ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

double now_ns(void)
{
    struct timespec ts;

    monotonic(&ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double quantile(const double *sorted, size_t n, double q)
{
    double pos = q * (double)(n - 1);
    size_t lo = (size_t)pos;
    double frac = pos - (double)lo;

    if (lo + 1 >= n)
        return sorted[n - 1];
    return sorted[lo] + frac * (sorted[lo + 1] - sorted[lo]);
}

void print_quantiles(const char *unit, double *samples, size_t n, long iterations)
{
    qsort(samples, n, sizeof *samples, cmp_double);
    printf("median_%s=%.3f p10_%s=%.3f p90_%s=%.3f n=%ld\n", unit, quantile(samples, n, 0.5), unit,
           quantile(samples, n, 0.1), unit, quantile(samples, n, 0.9), iterations);
    if (fflush(stdout) != 0)
        die_errno("stdout");
}

/* ------------------------------------------------------------------------ */
/* Arguments                                                                */
/* ------------------------------------------------------------------------ */

long parse_positive(const char *what, const char *s, long max)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v <= 0 || v > max) {
        char why[64];
        snprintf(why, sizeof why, "'%s' is not an integer in 1..%ld", s, max);
        die(what, why);
    }
    return v;
}

_Noreturn void usage_names(const char *synopsis, const char *label, const void *table, size_t count,
                           size_t stride)
{
    const char *p = table;

    fprintf(stderr, "usage: %s %s\n%s:", bench_prog, synopsis, label);
    for (size_t i = 0; i < count; i++)
        fprintf(stderr, " %s", *(const char *const *)(const void *)(p + i * stride));
    fputc('\n', stderr);
    exit(1);
}

const void *bench_setup(int *argc, char ***argv, const char *prog, const void *table, size_t count,
                        size_t stride, long *iterations)
{
    bench_prog = prog;
    int rc = mproc_init(argc, argv);
    if (rc < 0)
        die_mproc("mproc_init", rc);
    mproc_set_log(log_to_stderr, NULL);
    if (*argc > 0 && (*argv)[0] != NULL)
        bench_prog = (*argv)[0];
    const char *p = table;
    const void *mode = NULL;
    if (*argc == 3)
        for (size_t i = 0; i < count && !mode; i++)
            if (strcmp(*(const char *const *)(const void *)(p + i * stride), (*argv)[1]) == 0)
                mode = p + i * stride;
    if (mode == NULL)
        usage_names("<mode> <iterations>", "modes", table, count, stride);
    *iterations = parse_positive("iterations", (*argv)[2], 1000000000L);
    return mode;
}

/* ------------------------------------------------------------------------ */
/* Child processes                                                          */
/* ------------------------------------------------------------------------ */

/* The CPUs this program may use, as they were at the first bench_pin_cpu
 * (inherited by fork children): a child of a pinned parent must not take
 * its parent's one CPU for all it may use. */
static cpu_set_t pin_allowed;
static int pin_allowed_known;

void bench_pin_cpu(int k)
{
    cpu_set_t one;
    int n = 0, want;

    if (!pin_allowed_known) {
        if (sched_getaffinity(0, sizeof pin_allowed, &pin_allowed) < 0)
            die_errno("sched_getaffinity");
        pin_allowed_known = 1;
    }
    want = k % CPU_COUNT(&pin_allowed);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &pin_allowed))
            continue;
        if (n++ == want) {
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            if (sched_setaffinity(0, sizeof one, &one) < 0)
                die_errno("sched_setaffinity");
            return;
        }
    }
}

mproc_process_t *bench_start_child(mproc_entry_fn entry, const void *arg, size_t len)
{
    mproc_process_t *p = NULL;
    /* A daemon: killed with the parent however it dies (a parent killed
     * by run.py's timeout leaves no child behind). */
    mproc_process_opts_t opts = {.name = "bench-child", .method = MPROC_START_FORK, .daemon = 1};
    int rc = mproc_process_create(&p, entry, arg, len, &opts);

    if (rc == 0)
        rc = mproc_process_start(p);
    if (rc < 0)
        die_mproc("starting a child", rc);
    return p;
}

void bench_join_child(mproc_process_t *p, const char *what)
{
    int code = -1;
    int rc = mproc_process_join(p, MPROC_FOREVER);

    if (rc == 0)
        rc = mproc_process_exitcode(p, &code);
    if (rc < 0)
        die_mproc("joining a child", rc);
    if (code != 0) {
        char why[64];
        snprintf(why, sizeof why, "a child failed (exit code %d)", code);
        die(what, why);
    }
    mproc_process_free(p);
}

pid_t bench_fork(int (*fn)(void *arg), void *arg)
{
    pid_t parent = getpid(), pid;

    if (fflush(NULL) != 0)
        die_errno("fflush");
    pid = fork();
    if (pid < 0)
        die_errno("fork");
    if (pid == 0) {
        /* Die with the parent, however it dies (as mproc's daemons do). */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(1);
        _exit(fn(arg));
    }
    return pid;
}

void bench_wait(pid_t pid, const char *what)
{
    int status;

    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            die_errno("waitpid");
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return;
    char why[64];
    if (WIFSIGNALED(status))
        snprintf(why, sizeof why, "child killed by signal %d", WTERMSIG(status));
    else
        snprintf(why, sizeof why, "child failed (wait status 0x%x)", (unsigned)status);
    die(what, why);
}

void print_quantiles_part(const char *unit, double *samples, size_t n)
{
    qsort(samples, n, sizeof *samples, cmp_double);
    printf("median_%s=%.3f p10_%s=%.3f p90_%s=%.3f ", unit, quantile(samples, n, 0.5), unit,
           quantile(samples, n, 0.1), unit, quantile(samples, n, 0.9));
}

void bench_flush(void)
{
    if (fflush(stdout) != 0)
        die_errno("stdout");
}
