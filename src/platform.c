/*
 * platform.c - the OS facade: pidfd, close_range and /proc fast paths with
 * POSIX fallbacks. See platform.h.
 */
#include "platform.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__) && !defined(MPROC_NO_FASTPATHS)
#define HAVE_PIDFD 1
#define HAVE_CLOSE_RANGE 1
#define HAVE_PROC 1
#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#endif

int64_t mproc__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mproc__deadline(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : mproc__now_ms() + timeout_ms;
}

int mproc__remaining_ms(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - mproc__now_ms();
    if (left <= 0)
        return 0;
    return left > INT_MAX ? INT_MAX : (int)left;
}

int mproc__poll1(int fd, short events, int timeout_ms, short *revents)
{
    int64_t deadline = mproc__deadline(timeout_ms);
    struct pollfd pfd = {.fd = fd, .events = events};
    for (;;) {
        int n = poll(&pfd, 1, mproc__remaining_ms(deadline));
        if (n > 0) {
            if (revents)
                *revents = pfd.revents;
            return 1;
        }
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

ssize_t mproc__read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (char *)buf + got, len - got);
        if (n > 0)
            got += (size_t)n;
        else if (n == 0)
            break;
        else if (errno != EINTR)
            return -errno;
    }
    return (ssize_t)got;
}

int mproc__write_full(int fd, const void *buf, size_t len)
{
    size_t put = 0;
    while (put < len) {
        /* send() with MSG_NOSIGNAL on sockets: a dead peer is -EPIPE, not a
         * SIGPIPE that kills the caller. Plain write() for pipes. */
        ssize_t n = send(fd, (const char *)buf + put, len - put, MSG_NOSIGNAL);
        if (n < 0 && errno == ENOTSOCK)
            n = write(fd, (const char *)buf + put, len - put);
        if (n >= 0)
            put += (size_t)n;
        else if (errno != EINTR)
            return -errno;
    }
    return 0;
}

int mproc__set_cloexec(int fd, int on)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0)
        return -errno;
    int want = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
    if (want != flags && fcntl(fd, F_SETFD, want) < 0)
        return -errno;
    return 0;
}

int mproc__pidfd_open(pid_t pid)
{
#ifdef HAVE_PIDFD
    /* pidfd_open returns a close-on-exec fd by definition. */
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : (int)fd;
#else
    (void)pid;
    return -ENOSYS;
#endif
}

int mproc__have_pidfd(void)
{
    static int known; /* 0 unknown, 1 yes, 2 no; a benign race: same answer */
    int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (!k) {
        /* pidfd_open came in 5.3, waitid(P_PIDFD) in 5.4: probe both. On
         * our own pid the wait must fail with ECHILD, not EINVAL. */
        k = 2;
        int fd = mproc__pidfd_open(getpid());
        if (fd >= 0) {
#ifdef HAVE_PIDFD
            siginfo_t si;
            if (waitid((idtype_t)P_PIDFD, (id_t)fd, &si, WEXITED | WNOHANG) < 0 && errno == ECHILD)
                k = 1;
#endif
            close(fd);
        }
        __atomic_store_n(&known, k, __ATOMIC_RELAXED);
    }
    return k == 1;
}

int mproc__pidfd_signal(int pidfd, int sig)
{
#ifdef HAVE_PIDFD
    if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0)
        return -errno;
    return 0;
#else
    (void)pidfd;
    (void)sig;
    return -ENOSYS;
#endif
}

static int exitcode_of(const siginfo_t *si)
{
    if (si->si_code == CLD_EXITED)
        return si->si_status;
    return -si->si_status; /* CLD_KILLED, CLD_DUMPED */
}

int mproc__reap(pid_t pid, int pidfd, int block, int *exitcode)
{
    siginfo_t si;
    int options = WEXITED | (block ? 0 : WNOHANG);
    for (;;) {
        memset(&si, 0, sizeof si);
        int rc;
#ifdef HAVE_PIDFD
        if (pidfd >= 0)
            rc = waitid((idtype_t)P_PIDFD, (id_t)pidfd, &si, options);
        else
#endif
            rc = waitid(P_PID, (id_t)pid, &si, options);
        if (rc == 0)
            break;
        if (errno != EINTR)
            return -errno;
    }
    (void)pidfd;
    if (si.si_pid == 0)
        return 0; /* WNOHANG and still running */
    *exitcode = exitcode_of(&si);
    return 1;
}

int mproc__thread_count(void)
{
#ifdef HAVE_PROC
    /* procfs gives /proc/self/task one link per thread plus two: one stat
     * instead of parsing /proc/self/status on every fork. */
    struct stat st;
    if (stat("/proc/self/task", &st) == 0 && st.st_nlink > 2)
        return (int)st.st_nlink - 2;
#endif
    FILE *f = fopen("/proc/self/status", "re");
    if (!f)
        return -ENOSYS;
    char line[256];
    int threads = -ENOSYS;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "Threads:", 8) == 0) {
            threads = atoi(line + 8);
            break;
        }
    }
    fclose(f);
    return threads;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int in_sorted(const int *keep, size_t n, int fd)
{
    return bsearch(&fd, keep, n, sizeof *keep, cmp_int) != NULL;
}

#ifdef HAVE_CLOSE_RANGE
static int close_range_gap(unsigned lo, unsigned hi)
{
    if (lo > hi)
        return 0;
    if (syscall(SYS_close_range, lo, hi, 0) < 0)
        return -errno;
    return 0;
}
#endif

/* Walk the fd table: /proc/self/fd where it exists, else every number up to
 * the fd limit (capped: a limit of millions would take seconds). */
static int close_fds_walk(const int *keep, size_t n)
{
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        int dfd = dirfd(d);
        int *victims = NULL;
        size_t nv = 0, cap = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9')
                continue;
            int fd = atoi(e->d_name);
            if (fd < 3 || fd == dfd || in_sorted(keep, n, fd))
                continue;
            if (nv == cap) {
                cap = cap ? cap * 2 : 64;
                int *nvict = realloc(victims, cap * sizeof *victims);
                if (!nvict)
                    break;
                victims = nvict;
            }
            victims[nv++] = fd;
        }
        closedir(d);
        for (size_t i = 0; i < nv; i++)
            close(victims[i]);
        free(victims);
        return 0;
    }
    struct rlimit rl;
    long max = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        max = (long)rl.rlim_cur;
    if (max > 65536)
        max = 65536;
    for (int fd = 3; fd < max; fd++)
        if (!in_sorted(keep, n, fd))
            close(fd);
    return 0;
}

int mproc__close_fds_except(int *keep, size_t n)
{
    qsort(keep, n, sizeof *keep, cmp_int);
#ifdef HAVE_CLOSE_RANGE
    unsigned lo = 3;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (keep[i] < 3)
            continue;
        if ((unsigned)keep[i] > lo)
            rc = close_range_gap(lo, (unsigned)keep[i] - 1);
        lo = (unsigned)keep[i] + 1;
    }
    if (rc == 0)
        rc = close_range_gap(lo, ~0U);
    if (rc == 0)
        return 0;
        /* -ENOSYS on an old kernel: fall through to the walk. */
#endif
    return close_fds_walk(keep, n);
}

void mproc__reset_signals_in(const sigset_t *which)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP || (which && !sigismember(which, sig)))
            continue;
        sigaction(sig, &sa, NULL); /* EINVAL for the libc-reserved ones */
    }
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
}

void mproc__reset_signals(void)
{
    mproc__reset_signals_in(NULL);
}

void mproc__nondefault_signals(sigset_t *out)
{
    sigemptyset(out);
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction old;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &old) < 0)
            continue;
        if (old.sa_handler != SIG_DFL)
            sigaddset(out, sig);
    }
}

const char *mproc__program_name(void)
{
#ifdef __GLIBC__
    return program_invocation_short_name;
#else
    return getprogname(); /* the BSDs and macOS */
#endif
}

const char *mproc__self_exe(void)
{
    return "/proc/self/exe";
}

/* ---- futexes, thread ids, randomness --------------------------------------- */

#include <linux/futex.h>

int64_t mproc__deadline_ns(int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + (int64_t)timeout_ms * 1000000;
}

int mproc__futex_wait(const uint32_t *addr, uint32_t val, int64_t deadline_ns)
{
    struct timespec ts, *tsp = NULL;
    if (deadline_ns >= 0) {
        ts.tv_sec = (time_t)(deadline_ns / 1000000000);
        ts.tv_nsec = (long)(deadline_ns % 1000000000);
        tsp = &ts;
    }
    /* WAIT_BITSET takes an absolute CLOCK_MONOTONIC time: a retry after
     * EINTR keeps the caller's deadline exactly. */
    long rc = syscall(SYS_futex, addr, FUTEX_WAIT_BITSET, val, tsp, NULL, FUTEX_BITSET_MATCH_ANY);
    if (rc < 0 && errno == ETIMEDOUT)
        return -ETIMEDOUT;
    return 0; /* woken, EAGAIN (value changed) or EINTR */
}

void mproc__futex_wake(const uint32_t *addr, int n)
{
    syscall(SYS_futex, addr, FUTEX_WAKE, n, NULL, NULL, 0);
}

_Thread_local pid_t mproc__tid_cache __attribute__((tls_model("initial-exec")));

pid_t mproc__tid_slow(void)
{
    return mproc__tid_cache = (pid_t)syscall(SYS_gettid);
}

/* The forking thread is the only one in the child, with a new id. */
void mproc__tid_reset_after_fork(void)
{
    mproc__tid_cache = 0;
}

int mproc__random_bytes(void *buf, size_t len)
{
    unsigned char *p = buf;
    size_t got = 0;
#ifdef SYS_getrandom
    while (got < len) {
        long n = syscall(SYS_getrandom, p + got, len - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        got += (size_t)n;
    }
    if (got == len)
        return 0;
#endif
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = mproc__read_full(fd, p + got, len - got);
    close(fd);
    return n == (ssize_t)(len - got) ? 0 : -EIO;
}
