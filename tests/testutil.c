/*
 * testutil.c - see testutil.h.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

volatile int tu_failed;
int tu_case_timeout_s = 100;

const mproc_start_method_t tu_methods[TU_NMETHODS] = {
    MPROC_START_FORK,
    MPROC_START_SPAWN,
    MPROC_START_FORKSERVER,
};

static const char *tu_case_name = "?";
static char tu_ctx[256];
static pid_t tu_main_pid;

/* ------------------------------------------------------------------ checks */

const char *tu_method_name(mproc_start_method_t m)
{
    switch (m) {
    case MPROC_START_DEFAULT:
        return "default";
    case MPROC_START_FORK:
        return "fork";
    case MPROC_START_SPAWN:
        return "spawn";
    case MPROC_START_FORKSERVER:
        return "forkserver";
    }
    return "invalid";
}

mproc_start_method_t tu_next_method(mproc_start_method_t prev)
{
    int i = 0; /* the index after prev's */
    if (prev != MPROC_START_DEFAULT) {
        while (i < TU_NMETHODS && tu_methods[i] != prev)
            i++;
        i++;
    }
    if (i >= TU_NMETHODS) {
        tu_context(NULL);
        return MPROC_START_DEFAULT;
    }
    tu_context("method=%s", tu_method_name(tu_methods[i]));
    return tu_methods[i];
}

void tu_context(const char *fmt, ...)
{
    if (!fmt) {
        tu_ctx[0] = '\0';
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tu_ctx, sizeof tu_ctx, fmt, ap);
    va_end(ap);
}

void tu_fail(const char *file, int line, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fflush(stdout);
    if (getpid() == tu_main_pid)
        fprintf(stderr, "%s:%d: [%s%s%s] %s\n", file, line, tu_case_name, tu_ctx[0] ? " " : "",
                tu_ctx, msg);
    else
        fprintf(stderr, "%s:%d: [%s%s%s, child pid %d] %s\n", file, line, tu_case_name,
                tu_ctx[0] ? " " : "", tu_ctx, (int)getpid(), msg);
    fflush(stderr);
    tu_failed = 1;
}

int tu_check_bool(const char *file, int line, const char *expr, int ok)
{
    if (!ok)
        tu_fail(file, line, "check failed: %s", expr);
    return ok;
}

int tu_check_int(const char *file, int line, const char *ea, const char *eb, long long a,
                 long long b, int want_equal)
{
    if ((a == b) == !!want_equal)
        return 1;
    tu_fail(file, line, "check failed: %s %s %s (%lld vs %lld)", ea, want_equal ? "==" : "!=", eb,
            a, b);
    return 0;
}

int tu_check_str(const char *file, int line, const char *ea, const char *eb, const char *a,
                 const char *b)
{
    if (a && b && strcmp(a, b) == 0)
        return 1;
    tu_fail(file, line, "check failed: %s == %s (\"%s\" vs \"%s\")", ea, eb, a ? a : "(null)",
            b ? b : "(null)");
    return 0;
}

int tu_check_ok(const char *file, int line, const char *expr, long long rc)
{
    if (rc == 0)
        return 1;
    const char *msg = (rc >= INT_MIN && rc <= INT_MAX) ? mproc_strerror((int)rc) : "?";
    tu_fail(file, line, "check failed: %s == 0 (got %lld: %s)", expr, rc, msg ? msg : "(null)");
    return 0;
}

/* ------------------------------------------------------------------ time, io */

int64_t tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining_ms(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - tu_now_ms();
    if (left < 0)
        left = 0;
    if (left > INT_MAX)
        left = INT_MAX;
    return (int)left;
}

int tu_wait_readable(int fd, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : tu_now_ms() + timeout_ms;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int n = poll(&pfd, 1, remaining_ms(deadline));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return 0;
        if (pfd.revents & POLLNVAL)
            return -EBADF;
        return 1;
    }
}

ssize_t tu_read_full(int fd, void *buf, size_t len, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : tu_now_ms() + timeout_ms;
    size_t got = 0;
    while (got < len) {
        int r = tu_wait_readable(fd, remaining_ms(deadline));
        if (r < 0)
            return r;
        if (r == 0)
            return -ETIMEDOUT;
        ssize_t n = read(fd, (char *)buf + got, len - got);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

ssize_t tu_read_all(int fd, void *buf, size_t cap, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : tu_now_ms() + timeout_ms;
    size_t got = 0;
    for (;;) {
        int r = tu_wait_readable(fd, remaining_ms(deadline));
        if (r < 0)
            return r;
        if (r == 0)
            return -ETIMEDOUT;
        char scratch[4096];
        char *dst = got < cap ? (char *)buf + got : scratch;
        size_t room = got < cap ? cap - got : sizeof scratch;
        ssize_t n = read(fd, dst, room);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        if (n == 0)
            return (ssize_t)(got < cap ? got : cap);
        got += (size_t)n;
    }
}

int tu_write_full(int fd, const void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, (const char *)buf + done, len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        done += (size_t)n;
    }
    return 0;
}

int tu_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) != 0) {
        tu_fail(__FILE__, __LINE__, "pipe2: %s", strerror(errno));
        fds[0] = fds[1] = -1;
        return -1;
    }
    return 0;
}

void tu_close(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

int tu_fd_is_open(int fd)
{
    return fd >= 0 && fcntl(fd, F_GETFD) != -1;
}

int tu_count_fds(void)
{
    return tu_list_fds(NULL, 0);
}

int tu_list_fds(int *fds, int cap)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -errno;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        int fd = atoi(e->d_name);
        if (fd == dirfd(d))
            continue;
        if (n < cap) { /* insert in order */
            int i = n;
            for (; i > 0 && fds[i - 1] > fd; i--)
                fds[i] = fds[i - 1];
            fds[i] = fd;
        }
        n++;
    }
    closedir(d);
    return n;
}

void tu_fd_target(int fd, char *buf, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, buf, cap - 1);
    buf[n < 0 ? 0 : n] = '\0';
}

/* ------------------------------------------------------------------ processes */

int tu_proc_stat(pid_t pid, pid_t *ppid, char *state)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *rp = strrchr(buf, ')');
    if (!rp)
        return -1;
    char st = 0;
    int pp = 0;
    if (sscanf(rp + 1, " %c %d", &st, &pp) != 2)
        return -1;
    if (ppid)
        *ppid = pp;
    if (state)
        *state = st;
    return 0;
}

static void proc_comm(pid_t pid, char *out, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    out[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, out, cap - 1);
    close(fd);
    if (n < 0)
        n = 0;
    out[n] = '\0';
    char *nl = strchr(out, '\n');
    if (nl)
        *nl = '\0';
}

int tu_count_children(pid_t *list, int cap)
{
    DIR *d = opendir("/proc");
    if (!d)
        return -errno;
    pid_t me = getpid();
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        pid_t pid = (pid_t)atoi(e->d_name);
        pid_t ppid;
        if (tu_proc_stat(pid, &ppid, NULL) != 0 || ppid != me)
            continue;
        if (list && n < cap)
            list[n] = pid;
        n++;
    }
    closedir(d);
    return n;
}

int tu_count_real_children(void)
{
    pid_t kids[256];
    int n = tu_count_children(kids, 256);
    pid_t helper = mproc_forkserver_pid(), tracker = mproc_tracker_pid();
    int real = n;
    for (int i = 0; i < n && i < 256; i++)
        if (kids[i] == helper || (tracker > 0 && kids[i] == tracker))
            real--;
    return real;
}

int tu_pidfd_open(pid_t pid)
{
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : fd;
}

static int decode_siginfo(const siginfo_t *si)
{
    if (si->si_code == CLD_EXITED)
        return si->si_status;
    return -si->si_status;
}

pid_t tu_fork(tu_child_fn fn, void *ctx, int *pidfd)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        tu_failed = 0;
        int r = fn(ctx);
        if (r == 0 && tu_failed)
            r = 1;
        fflush(NULL);
        _exit(r & 0xff);
    }
    if (pidfd) {
        *pidfd = tu_pidfd_open(pid);
        if (*pidfd < 0)
            tu_fail(__FILE__, __LINE__, "pidfd_open(%d): %s", (int)pid, strerror(-*pidfd));
    }
    return pid;
}

int tu_wait_child(pid_t pid, int pidfd, int timeout_ms, int *status)
{
    int own = 0;
    if (pidfd < 0) {
        pidfd = tu_pidfd_open(pid);
        if (pidfd < 0)
            return pidfd;
        own = 1;
    }
    int r = tu_wait_readable(pidfd, timeout_ms);
    if (r <= 0) {
        if (own)
            close(pidfd);
        return r == 0 ? -ETIMEDOUT : r;
    }
    siginfo_t si;
    memset(&si, 0, sizeof si);
    while (waitid(P_PID, (id_t)pid, &si, WEXITED) != 0) {
        if (errno != EINTR) {
            int err = -errno;
            if (own)
                close(pidfd);
            return err;
        }
    }
    close(pidfd);
    if (status)
        *status = decode_siginfo(&si);
    return 0;
}

void tu_kill_child(pid_t pid, int pidfd)
{
    if (pid <= 0)
        return;
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    if (pidfd >= 0)
        close(pidfd);
}

int tu_run_child(tu_child_fn fn, void *ctx, int timeout_ms, int *status)
{
    int pidfd = -1;
    pid_t pid = tu_fork(fn, ctx, &pidfd);
    if (pid < 0)
        return (int)pid;
    int r = tu_wait_child(pid, pidfd, timeout_ms, status);
    if (r == -ETIMEDOUT)
        tu_kill_child(pid, pidfd);
    return r;
}

int tu_try_reap(pid_t pid, int *status)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    for (;;) {
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG) == 0)
            break;
        if (errno != EINTR)
            return -errno;
    }
    if (si.si_pid == 0)
        return 0;
    if (status)
        *status = decode_siginfo(&si);
    return 1;
}

int tu_under_sanitizer(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return 1;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
    return 1;
#else
    return 0;
#endif
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------ mproc children */

int tu_entry_zero(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return 0;
}

int tu_entry_code(const void *arg, size_t len)
{
    int code;
    if (len != sizeof code || !arg)
        return 250;
    memcpy(&code, arg, sizeof code);
    return code;
}

/* tu_start with any opts. */
static int start_opts(mproc_process_t **out, const mproc_process_opts_t *opts, mproc_entry_fn fn,
                      const void *arg, size_t len, const int *fds, int nfds)
{
    *out = NULL;
    mproc_process_t *p = NULL;
    int rc = mproc_process_create(&p, fn, arg, len, opts);
    if (rc != 0) {
        tu_fail(__FILE__, __LINE__, "create: %d (%s)", rc, mproc_strerror(rc));
        return rc;
    }
    for (int i = 0; i < nfds && rc == 0; i++) {
        rc = mproc_process_pass_fd(p, fds[i]);
        if (rc != 0)
            tu_fail(__FILE__, __LINE__, "pass_fd(%d) (#%d): %d (%s)", fds[i], i, rc,
                    mproc_strerror(rc));
    }
    if (rc == 0)
        rc = mproc_process_start(p);
    if (rc != 0) {
        TU_CHECK_EQ_INT(mproc_process_pid(p), 0); /* nothing was started */
        TU_CHECK_OK(mproc_process_free(p));
        return rc;
    }
    *out = p;
    return 0;
}

int tu_start(mproc_process_t **p, mproc_start_method_t m, mproc_entry_fn fn, const void *arg,
             size_t len, const int *fds, int nfds)
{
    mproc_process_opts_t o = {.method = m};
    return start_opts(p, m == MPROC_START_DEFAULT ? NULL : &o, fn, arg, len, fds, nfds);
}

int tu_join_code(mproc_process_t *p)
{
    int code = TU_NO_CODE;
    if (!TU_CHECK_OK(mproc_process_join(p, TU_T_MS)))
        return TU_NO_CODE;
    if (!TU_CHECK_OK(mproc_process_exitcode(p, &code)))
        return TU_NO_CODE;
    return code;
}

int tu_join_free(mproc_process_t *p)
{
    int code = tu_join_code(p);
    if (code == TU_NO_CODE) { /* do not leave it running */
        mproc_process_kill(p);
        mproc_process_join(p, TU_T_MS);
    }
    TU_CHECK_OK(mproc_process_free(p));
    return code;
}

int tu_run_with_fds(mproc_start_method_t m, mproc_entry_fn fn, const void *arg, size_t len,
                    const int *fds, int nfds)
{
    mproc_process_t *p;
    int code = TU_NO_CODE;
    if (TU_CHECK_OK(tu_start(&p, m, fn, arg, len, fds, nfds)))
        code = tu_join_free(p);
    for (int i = 0; i < nfds; i++) /* the caller's fds are still its own */
        if (!tu_fd_is_open(fds[i]))
            tu_fail(__FILE__, __LINE__, "passed fd %d was closed in the parent", fds[i]);
    return code;
}

int tu_run(mproc_start_method_t m, mproc_entry_fn fn, const void *arg, size_t len)
{
    return tu_run_with_fds(m, fn, arg, len, NULL, 0);
}

int tu_start_reporter(mproc_process_t **p, mproc_start_method_t m, mproc_entry_fn fn)
{
    *p = NULL;
    int fds[2];
    if (tu_pipe(fds) != 0)
        return -1;
    int rc = tu_start(p, m, fn, &fds[1], sizeof fds[1], &fds[1], 1);
    close(fds[1]);
    if (!TU_CHECK_OK(rc)) {
        close(fds[0]);
        return -1;
    }
    return fds[0];
}

int tu_report(const void *arg, size_t len, const void *data, size_t n)
{
    int fd;
    if (len != sizeof fd || !arg)
        return 250;
    memcpy(&fd, arg, sizeof fd);
    return tu_write_full(fd, data, n) == 0 ? 0 : 251;
}

/* ------------------------------------------------------------------ a blocked child */

typedef struct {
    int ready_w;
    int release_r;
    int close_a; /* the parent's ends: a fork child inherits them, closes them */
    int close_b;
    int is_fork;
    int code;
} tu_block_arg;

int tu_entry_block(const void *arg, size_t len)
{
    tu_block_arg a;
    if (len != sizeof a || !arg)
        return 200;
    memcpy(&a, arg, sizeof a);
    if (a.is_fork) {
        close(a.close_a);
        close(a.close_b);
    }
    pid_t me = getpid();
    if (tu_write_full(a.ready_w, &me, sizeof me) != 0)
        return 201;
    close(a.ready_w);
    char c;
    ssize_t n;
    do
        n = read(a.release_r, &c, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1)
        return 202;
    return a.code;
}

int tu_start_blocked(tu_blocked_t *b, mproc_start_method_t m, const mproc_process_opts_t *opts,
                     int code)
{
    b->p = NULL;
    b->ready_r = b->release_w = -1;
    b->pid = 0;
    int rp[2], lp[2];
    if (tu_pipe(rp) != 0)
        return -EMFILE;
    if (tu_pipe(lp) != 0) {
        close(rp[0]);
        close(rp[1]);
        return -EMFILE;
    }
    tu_block_arg a = {
        .ready_w = rp[1],
        .release_r = lp[0],
        .close_a = rp[0],
        .close_b = lp[1],
        .is_fork = m == MPROC_START_FORK,
        .code = code,
    };
    mproc_process_opts_t o = {0};
    if (opts)
        o = *opts;
    o.method = m;
    int pass[2] = {rp[1], lp[0]};
    int rc = start_opts(&b->p, &o, tu_entry_block, &a, sizeof a, pass, 2);
    close(rp[1]);
    close(lp[0]);
    b->ready_r = rp[0];
    b->release_w = lp[1];
    if (rc != 0) {
        tu_close(&b->ready_r);
        tu_close(&b->release_w);
        return rc;
    }
    pid_t pid = 0;
    ssize_t n = tu_read_full(b->ready_r, &pid, sizeof pid, TU_T_MS);
    if (n != (ssize_t)sizeof pid) {
        tu_fail(__FILE__, __LINE__, "blocked child (%s) did not report its pid: %zd",
                tu_method_name(m), n);
        tu_blocked_cleanup(b);
        return -ETIMEDOUT;
    }
    b->pid = pid;
    return 0;
}

int tu_release(tu_blocked_t *b)
{
    return tu_write_full(b->release_w, "x", 1);
}

int tu_release_join(tu_blocked_t *b)
{
    TU_CHECK_OK(tu_release(b));
    return tu_join_code(b->p);
}

void tu_blocked_cleanup(tu_blocked_t *b)
{
    if (b->p) {
        if (mproc_process_is_alive(b->p) == 1)
            mproc_process_kill(b->p);
        int rc = mproc_process_join(b->p, TU_T_MS);
        if (rc != 0)
            tu_fail(__FILE__, __LINE__, "cleanup: join: %d (%s)", rc, mproc_strerror(rc));
        rc = mproc_process_free(b->p);
        if (rc != 0)
            tu_fail(__FILE__, __LINE__, "cleanup: free: %d (%s)", rc, mproc_strerror(rc));
        b->p = NULL;
    }
    tu_close(&b->ready_r);
    tu_close(&b->release_w);
}

/* ------------------------------------------------------------------ leak checker */

typedef struct {
    int fd;
    char target[256];
} fd_entry;

typedef struct {
    fd_entry *fds;
    int nfds;
    char (*shm)[256];
    int nshm;
} snapshot;

static void snapshot_free(snapshot *s)
{
    free(s->fds);
    free(s->shm);
    memset(s, 0, sizeof *s);
}

static void snapshot_take(snapshot *s)
{
    memset(s, 0, sizeof *s);
    int *fds = NULL, cap = 64, n;
    do {
        cap *= 2;
        fds = realloc(fds, (size_t)cap * sizeof *fds);
        n = tu_list_fds(fds, cap);
    } while (n > cap);
    s->nfds = n < 0 ? 0 : n;
    s->fds = calloc((size_t)s->nfds + 1, sizeof *s->fds);
    for (int i = 0; i < s->nfds; i++) {
        s->fds[i].fd = fds[i];
        tu_fd_target(fds[i], s->fds[i].target, sizeof s->fds[i].target);
    }
    free(fds);
    int scap = 16;
    s->shm = calloc((size_t)scap, sizeof *s->shm);
    DIR *d = opendir("/dev/shm");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            if (s->nshm == scap) {
                scap *= 2;
                s->shm = realloc(s->shm, (size_t)scap * sizeof *s->shm);
            }
            snprintf(s->shm[s->nshm++], sizeof s->shm[0], "%s", e->d_name);
        }
        closedir(d);
    }
}

static int snapshot_has_fd(const snapshot *s, int fd, const char *target)
{
    for (int i = 0; i < s->nfds; i++)
        if (s->fds[i].fd == fd)
            return strcmp(s->fds[i].target, target) == 0;
    return 0;
}

static int snapshot_has_shm(const snapshot *s, const char *name)
{
    for (int i = 0; i < s->nshm; i++)
        if (strcmp(s->shm[i], name) == 0)
            return 1;
    return 0;
}

/* A resource tracker whose starter was a child that died (SIGKILLed
 * creators are what the tracker is for) is re-parented here: it is not a
 * leak as long as it does its job and leaves, which it does once no process
 * holds its line. Wait for that (bounded) and collect it. */
static void collect_orphaned_trackers(void)
{
    pid_t kids[256];
    int n = tu_count_children(kids, 256);
    for (int i = 0; i < n && i < 256; i++) {
        char comm[64];
        proc_comm(kids[i], comm, sizeof comm);
        if (strcmp(comm, "mproc-tracker") != 0 || kids[i] == mproc_tracker_pid())
            continue;
        int fd = tu_pidfd_open(kids[i]);
        if (fd >= 0) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            while (poll(&p, 1, 5000) < 0 && errno == EINTR) {
            }
            close(fd);
        }
        /* Collected if it left; one still running is reported as a leak. */
        waitpid(kids[i], NULL, WNOHANG);
    }
}

static int check_children(void)
{
    collect_orphaned_trackers();
    int leaks = 0;
    for (int round = 0; round < 50; round++) {
        pid_t kids[256];
        int n = tu_count_children(kids, 256);
        if (n <= 0)
            break;
        if (n > 256)
            n = 256;
        for (int i = 0; i < n; i++) {
            char comm[64], state = '?';
            pid_t ppid;
            proc_comm(kids[i], comm, sizeof comm);
            tu_proc_stat(kids[i], &ppid, &state);
            tu_fail(__FILE__, __LINE__, "leak: child process pid %d comm '%s' state %c left behind",
                    (int)kids[i], comm, state);
            leaks++;
            kill(kids[i], SIGKILL);
        }
        for (int i = 0; i < n; i++)
            while (waitpid(kids[i], NULL, 0) < 0 && errno == EINTR) {
            }
    }
    return leaks;
}

static int check_fds(const snapshot *before)
{
    snapshot now;
    snapshot_take(&now);
    int leaks = 0;
    for (int i = 0; i < now.nfds; i++) {
        if (snapshot_has_fd(before, now.fds[i].fd, now.fds[i].target))
            continue;
        tu_fail(__FILE__, __LINE__, "leak: fd %d -> '%s' left open", now.fds[i].fd,
                now.fds[i].target);
        leaks++;
    }
    for (int i = 0; i < now.nshm; i++) {
        if (snapshot_has_shm(before, now.shm[i]))
            continue;
        tu_fail(__FILE__, __LINE__, "leak: /dev/shm/%s left behind (unlinked now)", now.shm[i]);
        char path[300];
        snprintf(path, sizeof path, "/dev/shm/%s", now.shm[i]);
        unlink(path);
        leaks++;
    }
    snapshot_free(&now);
    return leaks;
}

/* ------------------------------------------------------------------ main */

static void on_watchdog(int sig)
{
    (void)sig;
    static const char a[] = "\nTIMEOUT: test case '";
    static const char b[] = "' exceeded its time limit (watchdog)\n";
    tu_write_full(2, a, sizeof a - 1);
    tu_write_full(2, tu_case_name, strlen(tu_case_name));
    tu_write_full(2, b, sizeof b - 1);
    tu_write_full(1, "FAIL (timeout)\n", 15);
    _exit(3);
}

/*
 * CTest runs test programs in parallel, and /dev/shm is global: one program's
 * leak check would blame (and unlink) another's segments. Where we may (root,
 * single-threaded at this point), give this program and its descendants a
 * private tmpfs on /dev/shm in a mount namespace of their own; it also keeps
 * a crashed test from littering the machine. TU_PRIVATE_SHM=0 disables it;
 * on failure (no privilege, a sanitizer's thread) the global one is used.
 */
static void tu_private_shm(void)
{
    const char *e = getenv("TU_PRIVATE_SHM");
    if (e && strcmp(e, "0") == 0)
        return;
    if (unshare(CLONE_NEWNS) != 0)
        return;
    /* no propagation back to the host's mounts before mounting anything */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        return;
    if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0)
        return;
    if (getenv("TU_VERBOSE"))
        fprintf(stderr, "(private /dev/shm)\n");
}

static int selected(int argc, char **argv, const char *name)
{
    if (argc <= 1)
        return 1;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

int tu_main(int argc, char **argv, const tu_case_t *cases)
{
    tu_main_pid = getpid();
    const char *t = getenv("TU_CASE_TIMEOUT");
    if (t && atoi(t) > 0)
        tu_case_timeout_s = atoi(t);

    for (int i = 1; i < argc; i++) {
        int found = 0;
        for (const tu_case_t *c = cases; c->name; c++)
            if (strcmp(c->name, argv[i]) == 0)
                found = 1;
        if (!found) {
            fprintf(stderr, "unknown test case '%s'; cases are:\n", argv[i]);
            for (const tu_case_t *c = cases; c->name; c++)
                fprintf(stderr, "  %s\n", c->name);
            return 2;
        }
    }

    tu_private_shm();
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
        fprintf(stderr, "prctl(PR_SET_CHILD_SUBREAPER): %s\n", strerror(errno));
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_watchdog;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);

    /* Anything left from before the first case (there should be nothing). */
    check_children();

    int failed = 0, ran = 0;
    for (const tu_case_t *c = cases; c->name; c++) {
        if (!selected(argc, argv, c->name))
            continue;
        tu_case_name = c->name;
        tu_ctx[0] = '\0';
        tu_failed = 0;
        snapshot before;
        snapshot_take(&before);
        int64_t t0 = tu_now_ms();
        alarm((unsigned)tu_case_timeout_s);
        c->fn();
        alarm(0);
        int64_t t1 = tu_now_ms();
        tu_ctx[0] = '\0';
        int rc = mproc_forkserver_stop();
        if (rc != 0)
            tu_fail(__FILE__, __LINE__, "mproc_forkserver_stop() after the case: %d (%s)", rc,
                    mproc_strerror(rc));
        if (mproc_forkserver_pid() != 0)
            tu_fail(__FILE__, __LINE__,
                    "mproc_forkserver_pid() is %d after mproc_forkserver_stop()",
                    (int)mproc_forkserver_pid());
        /* The tracker sweeps what the case left and exits: a leftover
         * segment it could not reclaim is still reported below. */
        rc = mproc_tracker_stop(10000);
        if (rc != 0)
            tu_fail(__FILE__, __LINE__, "mproc_tracker_stop() after the case: %d (%s)", rc,
                    mproc_strerror(rc));
        check_children();
        check_fds(&before);
        snapshot_free(&before);
        ran++;
        if (tu_failed) {
            failed++;
            printf("FAIL %s (%lld ms)\n", c->name, (long long)(t1 - t0));
        } else {
            printf("ok %s (%lld ms)\n", c->name, (long long)(t1 - t0));
        }
        fflush(stdout);
    }
    tu_case_name = "(none)";
    printf("%d/%d passed\n", ran - failed, ran);
    fflush(stdout);
    return failed ? 1 : 0;
}
