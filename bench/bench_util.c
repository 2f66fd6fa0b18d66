/*
 * bench_util.c - helpers shared by the benchmark programs (bench_util.h).
 */
#define _POSIX_C_SOURCE 200809L

#include "bench_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
