/*
 * platform.h - the thin OS facade. Everything kernel-specific (pidfd,
 * close_range, /proc) lives behind these functions, each with a POSIX
 * fallback. Building with MPROC_NO_FASTPATHS forces the fallbacks, so the
 * whole suite can prove them.
 *
 * All functions return >= 0 on success and a negative errno on failure;
 * none of them allocates unless it says so.
 */
#ifndef MPROC_PLATFORM_H
#define MPROC_PLATFORM_H

#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Milliseconds on the monotonic clock. */
int64_t mproc__now_ms(void);

/*
 * Deadline arithmetic for timeouts in ms: a deadline of -1 means forever.
 * mproc__remaining_ms() turns a deadline back into a poll() timeout.
 */
int64_t mproc__deadline(int timeout_ms);
int mproc__remaining_ms(int64_t deadline);

/* poll() one fd, EINTR-safe with the deadline kept: 1 ready, 0 timed out. */
int mproc__poll1(int fd, short events, int timeout_ms, short *revents);

/* Full reads and writes, EINTR-safe. read_full returns bytes read (short
 * only at EOF), write_full 0. Writes on sockets never raise SIGPIPE. */
ssize_t mproc__read_full(int fd, void *buf, size_t len);
int mproc__write_full(int fd, const void *buf, size_t len);

/* Set or clear FD_CLOEXEC. */
int mproc__set_cloexec(int fd, int on);

/* Whether pidfds work here (probed once). */
int mproc__have_pidfd(void);
/* pidfd_open(2); -ENOSYS where the kernel or the build has no pidfds. */
int mproc__pidfd_open(pid_t pid);
/* pidfd_send_signal(2). */
int mproc__pidfd_signal(int pidfd, int sig);
/*
 * Collect an exited child without blocking: through its pidfd when pidfd is
 * >= 0, else by pid. Returns 1 and the Python-style exit code (status, or
 * -signal) once collected, 0 if it is still running.
 */
int mproc__reap(pid_t pid, int pidfd, int block, int *exitcode);

/* Threads in this process, or a negative errno when it cannot be told. */
int mproc__thread_count(void);

/*
 * Close every fd >= 3 that is not in keep[0..n) (keep need not be sorted;
 * it is sorted in place). close_range on the gaps where the kernel has it,
 * otherwise a walk bounded by the fd table. Safe after fork in a
 * single-threaded child.
 */
int mproc__close_fds_except(int *keep, size_t n);

/* Child side of every start method: all signals to SIG_DFL, none blocked.
 * reset_signals_in resets only those in *which (a process that knows which
 * of its signals are not at their default saves ~60 syscalls per child). */
void mproc__reset_signals(void);
void mproc__reset_signals_in(const sigset_t *which);
/* The signals whose action is not SIG_DFL now (SIGKILL, SIGSTOP aside). */
void mproc__nondefault_signals(sigset_t *out);

/* This program's short name (argv[0] without its directory). */
const char *mproc__program_name(void);

/* Path that re-executes this very program (spawn). */
const char *mproc__self_exe(void);

/* ---- shared-memory waits (Linux futexes; process-shared, never private) */

/* A deadline in ns on the monotonic clock (-1: forever). */
int64_t mproc__deadline_ns(int timeout_ms);
/* Sleep while *addr == val, until woken or the deadline (from
 * mproc__deadline_ns; -1 forever) passes. 0: woken, value changed or
 * interrupted (callers re-check their condition); -ETIMEDOUT. */
int mproc__futex_wait(const uint32_t *addr, uint32_t val, int64_t deadline_ns);
/* Wake up to n sleepers on addr. */
void mproc__futex_wake(const uint32_t *addr, int n);

/* The calling thread's id, cached per thread (reset in fork children):
 * the owner of a lock, checked on every release. */
extern _Thread_local pid_t mproc__tid_cache __attribute__((tls_model("initial-exec")));
pid_t mproc__tid_slow(void);
static inline pid_t mproc__tid(void)
{
    pid_t t = mproc__tid_cache;
    return __builtin_expect(t != 0, 1) ? t : mproc__tid_slow();
}
void mproc__tid_reset_after_fork(void);

/* Fill buf with unpredictable bytes (getrandom, else /dev/urandom). */
int mproc__random_bytes(void *buf, size_t len);

#endif
