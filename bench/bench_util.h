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

/* The common start of a `<prog> <mode> <iterations>` program: mproc_init,
 * the log hook, and the entry of table (count structs of stride bytes,
 * each starting with its mode's name) named by argv[1]; the iteration
 * count from argv[2]. Prints the usage and exits on bad arguments. */
const void *bench_setup(int *argc, char ***argv, const char *prog, const void *table, size_t count,
                        size_t stride, long *iterations);

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

/* ---- child processes (bench_conn, bench_queue) -------------------------- */

#include <sys/types.h>

/*
 * Pin the calling process to the k-th CPU (modulo their number) of those
 * it could run on at its first call, which fork children inherit: a child
 * of a pinned parent still picks among all of them. The two sides of a
 * cross-process figure go to different CPUs, so every run measures the
 * same thing (see bench_sync.c).
 */
void bench_pin_cpu(int k);

/* Start entry(arg, len) in a daemon child by mproc_process
 * (MPROC_START_FORK): it dies with this process. Dies on failure. */
mproc_process_t *bench_start_child(mproc_entry_fn entry, const void *arg, size_t len);
/* Join and free a child from bench_start_child; dies (naming `what`) if it
 * did not exit with status 0. */
void bench_join_child(mproc_process_t *p, const char *what);

/* fork() a child that runs fn(arg) and _exit()s with its result, and is
 * killed if this process dies first (PR_SET_PDEATHSIG); dies on failure. */
pid_t bench_fork(int (*fn)(void *arg), void *arg);
/* waitpid() a child from bench_fork; dies (naming `what`) unless it exited
 * with status 0. */
void bench_wait(pid_t pid, const char *what);

/* Sort samples[0..n) and print "median_<unit>=%.3f p10_<unit>=%.3f
 * p90_<unit>=%.3f " with no newline: one part of a result line that
 * reports more than one quantity (end it with printf and bench_flush). */
void print_quantiles_part(const char *unit, double *samples, size_t n);
/* Flush stdout; dies if that fails. */
void bench_flush(void);

#endif /* MPROC_BENCH_UTIL_H */
