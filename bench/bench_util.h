/*
 * bench_util.h - helpers shared by the benchmark programs: errors, the
 * monotonic clock, quantiles, argument parsing and the result line.
 */
#ifndef MPROC_BENCH_UTIL_H
#define MPROC_BENCH_UTIL_H

#include "mproc.h"

#include <stddef.h>

/* The program's name in messages: set by each main (argv[0] once known). */
extern const char *bench_prog;

/* Print "<prog>: <what>: <why>" to stderr and exit with status 1. */
_Noreturn void die(const char *what, const char *why);
/* die() with strerror(errno) as the reason. */
_Noreturn void die_errno(const char *what);
/* die() with mproc_strerror(code) as the reason. */
_Noreturn void die_mproc(const char *what, int code);

/* An mproc log sink: "<prog>: mproc: <msg>" on stderr. */
void log_to_stderr(void *ctx, mproc_log_level_t level, const char *msg);

/* CLOCK_MONOTONIC, in microseconds and in nanoseconds; dies on failure. */
double now_us(void);
double now_ns(void);

/* A qsort comparator for doubles, ascending. */
int cmp_double(const void *a, const void *b);

/* The q-quantile of sorted[0..n), interpolated linearly between ranks. */
double quantile(const double *sorted, size_t n, double q);

/* s as a long in 1..max; dies naming `what` otherwise. */
long parse_positive(const char *what, const char *s, long max);

/*
 * Print "usage: <prog> <synopsis>\n<label>:" and the name of each of the
 * count entries of table (each stride bytes long, starting with a
 * `const char *name` member), then exit with status 1.
 */
_Noreturn void usage_names(const char *synopsis, const char *label, const void *table, size_t count,
                           size_t stride);

/*
 * Sort samples[0..n) and print the result line
 * "median_<unit>=%.3f p10_<unit>=%.3f p90_<unit>=%.3f n=<iterations>",
 * then flush stdout (dies if that fails).
 */
void print_quantiles(const char *unit, double *samples, size_t n, long iterations);

#endif /* MPROC_BENCH_UTIL_H */
