/*
 * testutil.h - the tiny test framework every mproc test program uses.
 *
 * A test program is a table of cases and a main():
 *
 *     static void test_something(void) { TU_CHECK_EQ_INT(1 + 1, 2); }
 *
 *     static const tu_case_t cases[] = {
 *         TU_CASE(test_something),
 *         TU_END
 *     };
 *
 *     int main(int argc, char **argv)
 *     {
 *         mproc_init(&argc, &argv);   // first: spawned children take over here
 *         return tu_main(argc, argv, cases);
 *     }
 *
 * `./test_x` runs every case, `./test_x NAME...` only the named ones.
 *
 * Where it may (root), the program first moves into a mount namespace with a
 * private tmpfs on /dev/shm, so that programs run in parallel by CTest do not
 * see each other's segments (TU_PRIVATE_SHM=0: keep the global one).
 *
 * Every case runs inside the leak checker: before it, the open fds and the
 * /dev/shm entries are recorded (and this process is made a child
 * subreaper, once, so orphaned descendants come back to it); after it,
 * mproc_forkserver_stop() is called and the case fails if a child process
 * (running or zombie), a new fd or a new /dev/shm entry is left. Leftover
 * children are killed and reaped, leftover /dev/shm entries unlinked, so the
 * next case starts clean. A per-case watchdog (SIGALRM) turns a hang into a
 * named failure.
 *
 * TU_CHECK* report (file:line, expression, values), mark the case failed and
 * go on; TU_REQUIRE* do the same and then return from the (void) function.
 * Inside a child made with tu_fork() the checks work too: a failed check
 * makes the child exit with status 1 when its function returns 0.
 */
#ifndef MPROC_TESTUTIL_H
#define MPROC_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mproc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- cases */

typedef void (*tu_case_fn)(void);

typedef struct {
    const char *name;
    tu_case_fn fn;
} tu_case_t;

#define TU_CASE(fn)                                                                                \
    {                                                                                              \
#fn, fn                                                                                    \
    }
#define TU_END                                                                                     \
    {                                                                                              \
        NULL, NULL                                                                                 \
    }

/* Runs the cases (those named in argv[1..] if any); 0 if all passed. */
int tu_main(int argc, char **argv, const tu_case_t *cases);

/* Seconds a single case may take before the watchdog fails it (default 100,
 * environment variable TU_CASE_TIMEOUT overrides). */
extern int tu_case_timeout_s;

/* ---------------------------------------------------------------- checks */

/* Non-zero once a check failed in the current case. */
extern volatile int tu_failed;

/* Extra context printed with every failure ("method=fork"); cleared at the
 * start of each case. printf-style; NULL or "" clears it. */
void tu_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Report a failure (what TU_CHECK does); printf-style message. */
void tu_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

int tu_check_bool(const char *file, int line, const char *expr, int ok);
int tu_check_int(const char *file, int line, const char *ea, const char *eb, long long a,
                 long long b, int want_equal);
int tu_check_str(const char *file, int line, const char *ea, const char *eb, const char *a,
                 const char *b);
int tu_check_ok(const char *file, int line, const char *expr, long long rc);

#define TU_CHECK(cond) tu_check_bool(__FILE__, __LINE__, #cond, !!(cond))
#define TU_CHECK_EQ_INT(a, b)                                                                      \
    tu_check_int(__FILE__, __LINE__, #a, #b, (long long)(a), (long long)(b), 1)
#define TU_CHECK_NE_INT(a, b)                                                                      \
    tu_check_int(__FILE__, __LINE__, #a, #b, (long long)(a), (long long)(b), 0)
#define TU_CHECK_EQ_STR(a, b) tu_check_str(__FILE__, __LINE__, #a, #b, (a), (b))
/* rc == 0; on failure prints rc and mproc_strerror(rc). */
#define TU_CHECK_OK(rc) tu_check_ok(__FILE__, __LINE__, #rc, (long long)(rc))

#define TU_REQUIRE(cond)                                                                           \
    do {                                                                                           \
        if (!TU_CHECK(cond))                                                                       \
            return;                                                                                \
    } while (0)
#define TU_REQUIRE_EQ_INT(a, b)                                                                    \
    do {                                                                                           \
        if (!TU_CHECK_EQ_INT(a, b))                                                                \
            return;                                                                                \
    } while (0)
#define TU_REQUIRE_OK(rc)                                                                          \
    do {                                                                                           \
        if (!TU_CHECK_OK(rc))                                                                      \
            return;                                                                                \
    } while (0)

/* ---------------------------------------------------------------- methods */

#define TU_NMETHODS 3
extern const mproc_start_method_t tu_methods[TU_NMETHODS];
const char *tu_method_name(mproc_start_method_t m);

/*
 * TU_FOR_EACH_METHOD(m) { ... } runs the body once per start method (fork,
 * spawn, forkserver) with `mproc_start_method_t m`, and the failure context
 * set to "method=<name>" (the body may tu_context() something longer). It is
 * one plain for loop: break and continue work as usual.
 */
#define TU_FOR_EACH_METHOD(m)                                                                      \
    for (mproc_start_method_t m = tu_next_method(MPROC_START_DEFAULT); m != MPROC_START_DEFAULT;   \
         m = tu_next_method(m))

/* The method after prev in tu_methods (the first after MPROC_START_DEFAULT),
 * with the context set to it; MPROC_START_DEFAULT, context cleared, after
 * the last. */
mproc_start_method_t tu_next_method(mproc_start_method_t prev);

/*
 * One case per start method, each calling fn(method):
 *
 *     static void daemon_killed_at_exit(mproc_start_method_t m) { ... }
 *     TU_DEFINE_METHOD_CASES(daemon_killed_at_exit)
 *
 * defines test_daemon_killed_at_exit_fork, _spawn and _forkserver, and
 * TU_METHOD_CASES(daemon_killed_at_exit) lists them in the case table.
 */
#define TU_DEFINE_METHOD_CASES(fn)                                                                 \
    static void test_##fn##_fork(void)                                                             \
    {                                                                                              \
        fn(MPROC_START_FORK);                                                                      \
    }                                                                                              \
    static void test_##fn##_spawn(void)                                                            \
    {                                                                                              \
        fn(MPROC_START_SPAWN);                                                                     \
    }                                                                                              \
    static void test_##fn##_forkserver(void)                                                       \
    {                                                                                              \
        fn(MPROC_START_FORKSERVER);                                                                \
    }
#define TU_METHOD_CASES(fn)                                                                        \
    TU_CASE(test_##fn##_fork), TU_CASE(test_##fn##_spawn), TU_CASE(test_##fn##_forkserver)

/* ---------------------------------------------------------------- time, fds */

/* Bound on anything that should be quick: a join, a child's report (10 s). */
#define TU_T_MS 10000

/* Monotonic milliseconds. */
int64_t tu_now_ms(void);

/* 1 once fd polls readable (POLLIN or POLLHUP/POLLERR), 0 after timeout_ms
 * (-1: forever), negative errno on error. EINTR-safe, monotonic deadline. */
int tu_wait_readable(int fd, int timeout_ms);

/* Read exactly len bytes within timeout_ms. Returns len, or fewer at EOF,
 * or -ETIMEDOUT / negative errno. */
ssize_t tu_read_full(int fd, void *buf, size_t len, int timeout_ms);

/* Read until EOF (or cap bytes) within timeout_ms. Returns the count, or
 * -ETIMEDOUT / negative errno. */
ssize_t tu_read_all(int fd, void *buf, size_t cap, int timeout_ms);

/* Write all of buf (EINTR-safe). 0 or negative errno. Async-signal-safe. */
int tu_write_full(int fd, const void *buf, size_t len);

/* pipe2(O_CLOEXEC); fails the case (returns -1) on error. */
int tu_pipe(int fds[2]);

/* close(*fd) if >= 0, then *fd = -1. */
void tu_close(int *fd);

/* 1 if fd is open in this process. */
int tu_fd_is_open(int fd);

/* Number of open fds in this process (not counting the one used to count). */
int tu_count_fds(void);

/* The open fds of this process (not the one used to list them): up to cap
 * of them in fds, ascending. Returns how many are open (may exceed cap), or
 * negative errno. */
int tu_list_fds(int *fds, int cap);

/* What fd points at (readlink of /proc/self/fd/N); "" if unknown. */
void tu_fd_target(int fd, char *buf, size_t cap);

/* ---------------------------------------------------------------- processes */

/* Number of processes whose parent is this process (running or zombie);
 * with list/cap, their pids too. */
int tu_count_children(pid_t *list, int cap);

/* tu_count_children(), not counting the forkserver helper. */
int tu_count_real_children(void);

/* Parent pid and state letter of pid from /proc/PID/stat; -1 if gone. */
int tu_proc_stat(pid_t pid, pid_t *ppid, char *state);

/* pidfd_open(2); negative errno on failure. */
int tu_pidfd_open(pid_t pid);

/*
 * A raw fork() (no mproc involved): the child calls fn(ctx) and leaves with
 * _exit(ret & 0xff) (1 if ret is 0 but a TU check failed in it). stdio is
 * flushed before the fork. Returns the pid (and a pidfd in *pidfd if not
 * NULL) or negative errno.
 */
typedef int (*tu_child_fn)(void *ctx);
pid_t tu_fork(tu_child_fn fn, void *ctx, int *pidfd);

/*
 * Wait up to timeout_ms for our child pid to exit and reap it. pidfd may be
 * -1 (one is opened); it is closed when the child was reaped. *status gets
 * the exit code (>= 0) or minus the signal number. Returns 0, -ETIMEDOUT
 * (child left running, pidfd left open) or negative errno.
 */
int tu_wait_child(pid_t pid, int pidfd, int timeout_ms, int *status);

/* SIGKILL and reap our child (closes pidfd if >= 0). */
void tu_kill_child(pid_t pid, int pidfd);

/* tu_fork + tu_wait_child; a child still running after timeout_ms is
 * killed and reaped and -ETIMEDOUT returned. */
int tu_run_child(tu_child_fn fn, void *ctx, int timeout_ms, int *status);

/* Reap pid if it is a zombie child of ours (WNOHANG). 1 reaped, 0 not (yet),
 * -ECHILD if it is not our child. */
int tu_try_reap(pid_t pid, int *status);

/* ---------------------------------------------------------------- mproc children */

/* What the helpers below return when they could not get an exit code (after
 * reporting why): never an exit status (0..255) or minus a signal number. */
#define TU_NO_CODE (-9999)

/* Entries: returns 0; returns its argument, an int (250 if len is wrong). */
int tu_entry_zero(const void *arg, size_t len);
int tu_entry_code(const void *arg, size_t len);

/*
 * create + pass_fd(fds[0..nfds)) + start. opts are {.method = m}, or NULL
 * (every default) when m is MPROC_START_DEFAULT. Returns 0 with *p running,
 * or the first error with *p NULL. A failed create or pass_fd is reported;
 * a failed start is the caller's to check (it is checked that no pid was
 * assigned), and the process is freed.
 */
int tu_start(mproc_process_t **p, mproc_start_method_t m, mproc_entry_fn fn, const void *arg,
             size_t len, const int *fds, int nfds);

/* join (TU_T_MS) + exitcode, both checked: the exit code, or TU_NO_CODE. */
int tu_join_code(mproc_process_t *p);

/* tu_join_code, then free (checked); a child still running after the join
 * is killed first. Returns the exit code, or TU_NO_CODE. */
int tu_join_free(mproc_process_t *p);

/* tu_start (its failure reported) + tu_join_free: runs fn(arg, len) in a
 * child of method m and returns its exit code, or TU_NO_CODE. */
int tu_run(mproc_start_method_t m, mproc_entry_fn fn, const void *arg, size_t len);

/* tu_run, with fds[0..nfds) passed; also checks they are still open in the
 * caller afterwards. */
int tu_run_with_fds(mproc_start_method_t m, mproc_entry_fn fn, const void *arg, size_t len,
                    const int *fds, int nfds);

/*
 * A child that reports through a pipe: tu_start_reporter starts fn with the
 * write end of a fresh pipe as its argument (an int, passed with pass_fd),
 * closes that end here and returns the read end (to close), or -1 after
 * reporting the failure (*p NULL). In the child, tu_report writes n bytes
 * of data to that pipe and returns the exit status to return: 0, 250 (bad
 * arg) or 251 (write failed).
 */
int tu_start_reporter(mproc_process_t **p, mproc_start_method_t m, mproc_entry_fn fn);
int tu_report(const void *arg, size_t len, const void *data, size_t n);

/* ---------------------------------------------------------------- a blocked child */

/*
 * A child (any start method) that writes its getpid() to a pipe once it is
 * running its entry, then waits for one byte on another pipe and returns
 * `code` (202 if that pipe hit EOF instead). Both pipes reach it through
 * mproc_process_pass_fd.
 */
typedef struct {
    mproc_process_t *p;
    int ready_r;   /* parent's end: the child's pid arrives here */
    int release_w; /* parent's end: one byte releases the child */
    pid_t pid;     /* pid the child reported */
} tu_blocked_t;

/* The entry behind tu_start_blocked (usable directly with tu_blocked_arg). */
int tu_entry_block(const void *arg, size_t len);

/* Create and start it; opts may be NULL (its method is overridden by m).
 * Returns 0 once the child reported its pid (TU_T_MS limit), else an error code
 * with everything cleaned up and b->p == NULL. */
int tu_start_blocked(tu_blocked_t *b, mproc_start_method_t m, const mproc_process_opts_t *opts,
                     int code);

/* Write the release byte. 0 or negative errno. */
int tu_release(tu_blocked_t *b);

/* tu_release (checked) + tu_join_code(b->p): the exit code, or TU_NO_CODE.
 * b still needs tu_blocked_cleanup. */
int tu_release_join(tu_blocked_t *b);

/* Kill the child if still running, join it (TU_T_MS), free it, close the pipes. */
void tu_blocked_cleanup(tu_blocked_t *b);

/* Sanitizer builds (memory figures are meaningless there). */
int tu_under_sanitizer(void);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_TESTUTIL_H */
