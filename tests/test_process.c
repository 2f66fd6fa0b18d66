/*
 * test_process.c - mproc_process_*: the life cycle of a child under each of
 * the three start methods, exit statuses, arguments, signals, joins and
 * timeouts, the state machine, stdio and atexit (P13), signal state.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

static int g_marker; /* set by the parent; only a fork child sees it */
static int g_atexit_fd = -1;

/* ------------------------------------------------------------------ entries */

static int entry_arg_empty(const void *arg, size_t len)
{
    if (len != 0)
        return 2;
    if (arg != NULL)
        return 3;
    return 0;
}

static int entry_arg_one(const void *arg, size_t len)
{
    if (len != 1)
        return 2;
    if (!arg)
        return 3;
    return *(const unsigned char *)arg == 0xA5 ? 0 : 4;
}

static unsigned char pattern_byte(size_t i)
{
    return (unsigned char)((i * 131u + (i >> 8) * 7u + 5u) & 0xff);
}

#define BIG_LEN ((size_t)1 << 20)

static int entry_arg_pattern(const void *arg, size_t len)
{
    if (!arg)
        return 3;
    const unsigned char *p = arg;
    for (size_t i = 0; i < len; i++)
        if (p[i] != pattern_byte(i))
            return 4;
    return (int)(len & 0x3f) + 10; /* proves len arrived: parent checks */
}

static int entry_raise_usr1(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    kill(getpid(), SIGUSR1);
    return 0; /* only reached if SIGUSR1 did not kill us */
}

typedef struct {
    pid_t pid;
    pid_t ppid;
    int marker;
} info_t;

/* A reporter (tu_start_reporter): reports pid, ppid and g_marker. */
static int entry_report_info(const void *arg, size_t len)
{
    info_t in = {getpid(), getppid(), g_marker};
    return tu_report(arg, len, &in, sizeof in);
}

/* A reporter: reports the contents of /proc/self/comm. */
static int entry_report_comm(const void *arg, size_t len)
{
    char buf[64];
    int cf = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
    if (cf < 0)
        return 252;
    ssize_t n = read(cf, buf, sizeof buf);
    close(cf);
    if (n <= 0)
        return 253;
    return tu_report(arg, len, buf, (size_t)n);
}

/* Prints a marker without a newline and returns: it reaches stdout only if
 * the child flushes stdio on its way out. */
static int entry_print(const void *arg, size_t len)
{
    (void)len;
    const char *mark = arg;
    printf("%s", mark);
    return 0;
}

static void atexit_handler(void)
{
    if (g_atexit_fd >= 0) {
        tu_write_full(g_atexit_fd, "ATEXIT", 6);
    }
}

static const int checked_signals[] = {
    SIGHUP,  SIGINT,  SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM,  SIGTERM,
    SIGCHLD, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG,  SIGWINCH, SIGIO,
};

/* Reports, as a bit mask in its exit status, what is not at the defaults:
 * 1 SIGUSR1 handled, 2 SIGPIPE ignored, 4 another signal not SIG_DFL,
 * 8 SIGUSR2 blocked, 16 another signal blocked, 32 query failed. */
static int entry_sigstate(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    int bad = 0;
    for (size_t i = 0; i < sizeof checked_signals / sizeof checked_signals[0]; i++) {
        int s = checked_signals[i];
        struct sigaction sa;
        if (sigaction(s, NULL, &sa) != 0) {
            bad |= 32;
            continue;
        }
        if ((sa.sa_flags & SA_SIGINFO) || sa.sa_handler != SIG_DFL) {
            if (s == SIGUSR1)
                bad |= 1;
            else if (s == SIGPIPE)
                bad |= 2;
            else
                bad |= 4;
        }
    }
    sigset_t cur;
    if (sigprocmask(SIG_BLOCK, NULL, &cur) != 0)
        return bad | 32;
    for (int s = 1; s < NSIG; s++) {
        if (sigismember(&cur, s) == 1)
            bad |= s == SIGUSR2 ? 8 : 16;
    }
    return bad;
}

/* ------------------------------------------------------------------ cases */

static void test_exit_codes(void)
{
    static const int codes[] = {0, 1, 7, 128, 255};
    TU_FOR_EACH_METHOD(m) {
        for (size_t ci = 0; ci < sizeof codes / sizeof codes[0]; ci++) {
            tu_context("method=%s code=%d", tu_method_name(m), codes[ci]);
            mproc_process_opts_t o = {.method = m};
            mproc_process_t *p = NULL;
            TU_REQUIRE_OK(
                mproc_process_create(&p, tu_entry_code, &codes[ci], sizeof codes[ci], &o));
            TU_CHECK_EQ_INT(mproc_process_method(p), m);
            TU_CHECK_EQ_INT(mproc_process_is_daemon(p), 0);
            TU_CHECK_EQ_INT(mproc_process_pid(p), 0);
            int rc = mproc_process_start(p);
            if (!TU_CHECK_OK(rc)) {
                mproc_process_free(p);
                continue;
            }
            TU_CHECK(mproc_process_pid(p) > 0);
            TU_CHECK_EQ_INT(tu_join_code(p), codes[ci]);
            TU_CHECK_EQ_INT(mproc_process_is_alive(p), 0);
            /* join again: still 0, same status */
            TU_CHECK_OK(mproc_process_join(p, 0));
            TU_CHECK_OK(mproc_process_join(p, MPROC_FOREVER));
            int code = -9999;
            TU_CHECK_OK(mproc_process_exitcode(p, &code));
            TU_CHECK_EQ_INT(code, codes[ci]);
            TU_CHECK(mproc_process_pid(p) > 0); /* pid stays known after exit */
            TU_CHECK_OK(mproc_process_free(p));
        }
    }
}

static void test_arguments(void)
{
    unsigned char *big = malloc(BIG_LEN);
    TU_REQUIRE(big != NULL);
    for (size_t i = 0; i < BIG_LEN; i++)
        big[i] = pattern_byte(i);
    unsigned char one = 0xA5;
    TU_FOR_EACH_METHOD(m) {
        tu_context("method=%s arg=NULL,0", tu_method_name(m));
        TU_CHECK_EQ_INT(tu_run(m, entry_arg_empty, NULL, 0), 0);
        tu_context("method=%s arg=nonNULL,0", tu_method_name(m));
        TU_CHECK_EQ_INT(tu_run(m, entry_arg_empty, "ignored", 0), 0);
        tu_context("method=%s arg=1 byte", tu_method_name(m));
        TU_CHECK_EQ_INT(tu_run(m, entry_arg_one, &one, 1), 0);
        tu_context("method=%s arg=1 MiB", tu_method_name(m));
        TU_CHECK_EQ_INT(tu_run(m, entry_arg_pattern, big, BIG_LEN), (int)(BIG_LEN & 0x3f) + 10);
        tu_context("method=%s arg=1 MiB+13", tu_method_name(m));
        unsigned char *odd = malloc(BIG_LEN + 13);
        for (size_t i = 0; i < BIG_LEN + 13; i++)
            odd[i] = pattern_byte(i);
        TU_CHECK_EQ_INT(tu_run(m, entry_arg_pattern, odd, BIG_LEN + 13),
                        (int)((BIG_LEN + 13) & 0x3f) + 10);
        free(odd);
    }
    free(big);
}

/* The arg bytes are copied at create: changing them before start does not
 * change what the child sees. */
static void test_arg_copied_at_create(void)
{
    TU_FOR_EACH_METHOD(m) {
        size_t len = 4096 + 3;
        unsigned char *buf = malloc(len);
        for (size_t i = 0; i < len; i++)
            buf[i] = pattern_byte(i);
        mproc_process_opts_t o = {.method = m};
        mproc_process_t *p = NULL;
        int rc = mproc_process_create(&p, entry_arg_pattern, buf, len, &o);
        memset(buf, 0xEE, len);
        free(buf);
        TU_REQUIRE_OK(rc);
        if (TU_CHECK_OK(mproc_process_start(p)))
            TU_CHECK_EQ_INT(tu_join_free(p), (int)(len & 0x3f) + 10);
        else
            TU_CHECK_OK(mproc_process_free(p));
    }
}

static void test_killed_by_own_signal(void)
{
    TU_FOR_EACH_METHOD(m) {
        TU_CHECK_EQ_INT(tu_run(m, entry_raise_usr1, NULL, 0), -SIGUSR1);
    }
}

static void test_terminate_kill_signal(void)
{
    TU_FOR_EACH_METHOD(m) {
        for (int which = 0; which < 3; which++) {
            static const char *names[] = {"terminate", "kill", "signal(SIGUSR2)"};
            static const int sigs[] = {SIGTERM, SIGKILL, SIGUSR2};
            tu_context("method=%s %s", tu_method_name(m), names[which]);
            tu_blocked_t b;
            int rc = tu_start_blocked(&b, m, NULL, 3);
            TU_REQUIRE_OK(rc);
            TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 1);
            if (which == 0)
                rc = mproc_process_terminate(b.p);
            else if (which == 1)
                rc = mproc_process_kill(b.p);
            else
                rc = mproc_process_signal(b.p, SIGUSR2);
            TU_CHECK_OK(rc);
            TU_CHECK_EQ_INT(tu_join_code(b.p), -sigs[which]);
            TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 0);
            /* once collected, nothing can be signalled (P11) */
            TU_CHECK_EQ_INT(mproc_process_signal(b.p, SIGUSR2), -ESRCH);
            TU_CHECK_EQ_INT(mproc_process_terminate(b.p), -ESRCH);
            TU_CHECK_EQ_INT(mproc_process_kill(b.p), -ESRCH);
            tu_blocked_cleanup(&b);
        }
    }
}

static void test_join_timeout_and_fd(void)
{
    TU_FOR_EACH_METHOD(m) {
        tu_blocked_t b;
        TU_REQUIRE_OK(tu_start_blocked(&b, m, NULL, 9));
        TU_CHECK_EQ_INT(mproc_process_pid(b.p), b.pid);
        int efd = mproc_process_fd(b.p);
        TU_CHECK(efd >= 0);
        if (efd >= 0)
            TU_CHECK_EQ_INT(tu_wait_readable(efd, 0), 0);

        TU_CHECK_EQ_INT(mproc_process_join(b.p, 0), -ETIMEDOUT);
        int64_t t0 = tu_now_ms();
        TU_CHECK_EQ_INT(mproc_process_join(b.p, 50), -ETIMEDOUT);
        int64_t dt = tu_now_ms() - t0;
        if (dt < 49 || dt > 5000)
            tu_fail(__FILE__, __LINE__, "join(50 ms) returned after %lld ms", (long long)dt);
        TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 1);
        int code = 12345;
        TU_CHECK_EQ_INT(mproc_process_exitcode(b.p, &code), -EBUSY);
        if (efd >= 0)
            TU_CHECK_EQ_INT(tu_wait_readable(efd, 20), 0); /* still running: not readable */
        TU_CHECK_EQ_INT(mproc_process_fd(b.p), efd);       /* the same fd all along */

        TU_CHECK_OK(tu_release(&b));
        if (efd >= 0) {
            TU_CHECK_EQ_INT(tu_wait_readable(efd, TU_T_MS), 1);
            TU_CHECK_OK(mproc_process_join(b.p, 0)); /* "call join (timeout 0) when it fires" */
        } else {
            TU_CHECK_OK(mproc_process_join(b.p, TU_T_MS));
        }
        code = -9999;
        TU_CHECK_OK(mproc_process_exitcode(b.p, &code));
        TU_CHECK_EQ_INT(code, 9);
        TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 0);
        /* "valid from start to free": still the same open fd after join */
        TU_CHECK_EQ_INT(mproc_process_fd(b.p), efd);
        if (efd >= 0)
            TU_CHECK(tu_fd_is_open(efd));
        tu_blocked_cleanup(&b);
    }
}

/* is_alive alone (no join) observes the exit and collects the status. */
static void test_is_alive_collects(void)
{
    TU_FOR_EACH_METHOD(m) {
        tu_blocked_t b;
        TU_REQUIRE_OK(tu_start_blocked(&b, m, NULL, 42));
        TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 1);
        int efd = mproc_process_fd(b.p);
        TU_CHECK_OK(tu_release(&b));
        if (efd >= 0)
            TU_CHECK_EQ_INT(tu_wait_readable(efd, TU_T_MS), 1);
        TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 0);
        int code = -9999;
        TU_CHECK_OK(mproc_process_exitcode(b.p, &code));
        TU_CHECK_EQ_INT(code, 42);
        /* free collects; no join needed once is_alive saw the exit */
        TU_CHECK_OK(mproc_process_free(b.p));
        b.p = NULL;
        tu_blocked_cleanup(&b);
    }
}

static volatile sig_atomic_t g_ticks;
static timer_t g_timer;

/* Counts ticks; after ~1 s of them it stops the timer, so that a join that
 * restarts its full timeout on every signal still returns (late). */
static void on_tick(int sig)
{
    (void)sig;
    if (++g_ticks >= 150) {
        struct itimerspec off = {{0, 0}, {0, 0}};
        timer_settime(g_timer, 0, &off, NULL);
    }
}

/* join's timeout is neither shortened nor restarted by signals. */
static void test_join_eintr_safe(void)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_tick; /* no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    TU_REQUIRE(sigaction(SIGUSR1, &sa, &old) == 0);
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGUSR1;
    if (timer_create(CLOCK_MONOTONIC, &sev, &g_timer) != 0) {
        tu_fail(__FILE__, __LINE__, "timer_create failed");
        sigaction(SIGUSR1, &old, NULL);
        return;
    }
    struct itimerspec its = {{0, 7 * 1000000}, {0, 7 * 1000000}}; /* every 7 ms */
    TU_FOR_EACH_METHOD(m) {
        tu_blocked_t b;
        if (!TU_CHECK_OK(tu_start_blocked(&b, m, NULL, 5)))
            continue;
        g_ticks = 0;
        timer_settime(g_timer, 0, &its, NULL);
        int64_t t0 = tu_now_ms();
        int rc = mproc_process_join(b.p, 300);
        int64_t dt = tu_now_ms() - t0;
        struct itimerspec off = {{0, 0}, {0, 0}};
        timer_settime(g_timer, 0, &off, NULL);
        TU_CHECK_EQ_INT(rc, -ETIMEDOUT);
        TU_CHECK(g_ticks >= 5); /* the signals did arrive during the wait */
        if (dt < 299 || dt > 900)
            tu_fail(__FILE__, __LINE__, "join(300 ms) under signals returned after %lld ms",
                    (long long)dt);
        /* and a join that should succeed does, signals or not */
        timer_settime(g_timer, 0, &its, NULL);
        TU_CHECK_OK(tu_release(&b));
        rc = mproc_process_join(b.p, TU_T_MS);
        timer_settime(g_timer, 0, &off, NULL);
        TU_CHECK_OK(rc);
        int code = -1;
        TU_CHECK_OK(mproc_process_exitcode(b.p, &code));
        TU_CHECK_EQ_INT(code, 5);
        tu_blocked_cleanup(&b);
    }
    timer_delete(g_timer);
    sigaction(SIGUSR1, &old, NULL);
}

/* Each method is what it says: fork sees the parent's globals, spawn and
 * forkserver do not; fork and spawn children are ours, forkserver children
 * the helper's. And the pid matches the child's own getpid(). */
static void test_pid_and_method_identity(void)
{
    g_marker = 0x5151;
    TU_FOR_EACH_METHOD(m) {
        mproc_process_t *p;
        int rfd = tu_start_reporter(&p, m, entry_report_info);
        if (rfd < 0)
            continue;
        info_t in = {0, 0, 0};
        TU_CHECK_EQ_INT(tu_read_full(rfd, &in, sizeof in, TU_T_MS), (long long)sizeof in);
        close(rfd);
        TU_CHECK(mproc_process_pid(p) > 0);
        TU_CHECK_EQ_INT(in.pid, mproc_process_pid(p));
        if (m == MPROC_START_FORK) {
            TU_CHECK_EQ_INT(in.marker, 0x5151);
            TU_CHECK_EQ_INT(in.ppid, getpid());
        } else if (m == MPROC_START_SPAWN) {
            TU_CHECK_EQ_INT(in.marker, 0);
            TU_CHECK_EQ_INT(in.ppid, getpid());
        } else {
            TU_CHECK_EQ_INT(in.marker, 0);
            TU_CHECK(in.ppid != getpid());
            TU_CHECK(mproc_forkserver_pid() > 0);
            TU_CHECK_EQ_INT(in.ppid, mproc_forkserver_pid());
        }
        TU_CHECK_EQ_INT(tu_join_code(p), 0);
        TU_CHECK(mproc_process_pid(p) == in.pid);
        TU_CHECK_OK(mproc_process_free(p));
    }
    g_marker = 0;
}

/* MPROC_START_DEFAULT follows mproc_set_start_method. */
static void test_default_method(void)
{
    TU_CHECK_EQ_INT(mproc_get_start_method(), MPROC_START_FORKSERVER);
    g_marker = 0x77;
    static const mproc_start_method_t defaults[] = {MPROC_START_SPAWN, MPROC_START_FORK,
                                                    MPROC_START_FORKSERVER};
    for (int i = 0; i < 3; i++) {
        mproc_start_method_t m = defaults[i];
        tu_context("default=%s", tu_method_name(m));
        TU_CHECK_OK(mproc_set_start_method(m));
        TU_CHECK_EQ_INT(mproc_get_start_method(), m);
        mproc_process_t *p;
        /* MPROC_START_DEFAULT: create gets opts NULL, every default */
        int rfd = tu_start_reporter(&p, MPROC_START_DEFAULT, entry_report_info);
        if (rfd < 0)
            continue;
        TU_CHECK_EQ_STR(mproc_process_name(p), "mproc-child");
        TU_CHECK_EQ_INT(mproc_process_is_daemon(p), 0);
        info_t in = {0, 0, -1};
        TU_CHECK_EQ_INT(tu_read_full(rfd, &in, sizeof in, TU_T_MS), (long long)sizeof in);
        close(rfd);
        TU_CHECK_EQ_INT(in.marker, m == MPROC_START_FORK ? 0x77 : 0);
        if (m == MPROC_START_FORKSERVER)
            TU_CHECK(in.ppid != getpid());
        else
            TU_CHECK_EQ_INT(in.ppid, getpid());
        TU_CHECK_EQ_INT(tu_join_free(p), 0);
    }
    TU_CHECK_OK(mproc_set_start_method(MPROC_START_FORKSERVER));
    g_marker = 0;
}

static int read_comm_of_child(mproc_start_method_t m, const char *name, char *out, size_t cap,
                              char *name_copy, size_t ncap)
{
    int fds[2];
    if (tu_pipe(fds) != 0)
        return -1;
    char namebuf[128];
    mproc_process_opts_t o = {.method = m};
    if (name) {
        snprintf(namebuf, sizeof namebuf, "%s", name);
        o.name = namebuf;
    }
    mproc_process_t *p = NULL;
    int rc = mproc_process_create(&p, entry_report_comm, &fds[1], sizeof fds[1], &o);
    /* the name is copied: scribbling over our buffer changes nothing */
    memset(namebuf, 'Z', sizeof namebuf - 1);
    namebuf[sizeof namebuf - 1] = '\0';
    if (rc == 0)
        rc = mproc_process_pass_fd(p, fds[1]);
    if (rc == 0)
        rc = mproc_process_start(p);
    close(fds[1]);
    ssize_t n = -1;
    if (TU_CHECK_OK(rc)) {
        n = tu_read_all(fds[0], out, cap - 1, TU_T_MS);
        TU_CHECK(n > 0);
        TU_CHECK_OK(mproc_process_join(p, TU_T_MS));
        const char *pn = mproc_process_name(p);
        snprintf(name_copy, ncap, "%s", pn ? pn : "(null)");
    }
    if (n < 0)
        n = 0;
    out[n] = '\0';
    char *nl = strchr(out, '\n');
    if (nl)
        *nl = '\0';
    mproc_process_free(p);
    close(fds[0]);
    return rc;
}

static void test_name(void)
{
    TU_FOR_EACH_METHOD(m) {
        char comm[64], name[128];
        tu_context("method=%s long name", tu_method_name(m));
        if (read_comm_of_child(m, "abcdefghijklmnopqrstuvwxyz", comm, sizeof comm, name,
                               sizeof name) == 0) {
            TU_CHECK_EQ_STR(comm, "abcdefghijklmno");
            TU_CHECK_EQ_STR(name, "abcdefghijklmnopqrstuvwxyz");
        }
        tu_context("method=%s short name", tu_method_name(m));
        if (read_comm_of_child(m, "w-1", comm, sizeof comm, name, sizeof name) == 0) {
            TU_CHECK_EQ_STR(comm, "w-1");
            TU_CHECK_EQ_STR(name, "w-1");
        }
        /* Unnamed: the object says "mproc-child"; the process shows its
         * program's name under every method, as a forked copy does. */
        tu_context("method=%s default name", tu_method_name(m));
        if (read_comm_of_child(m, NULL, comm, sizeof comm, name, sizeof name) == 0) {
            char own[64] = "";
            FILE *f = fopen("/proc/self/comm", "re");
            if (TU_CHECK(f != NULL)) {
                if (fgets(own, sizeof own, f))
                    own[strcspn(own, "\n")] = '\0';
                fclose(f);
            }
            TU_CHECK_EQ_STR(comm, own);
            TU_CHECK_EQ_STR(name, "mproc-child");
        }
    }
}

static void test_getters(void)
{
    TU_FOR_EACH_METHOD(m) {
        mproc_process_opts_t o = {"getter", m, 2};
        mproc_process_t *p = NULL;
        TU_REQUIRE_OK(mproc_process_create(&p, tu_entry_zero, NULL, 0, &o));
        TU_CHECK_EQ_STR(mproc_process_name(p), "getter");
        TU_CHECK_EQ_INT(mproc_process_method(p), m);
        TU_CHECK(mproc_process_is_daemon(p) != 0);
        TU_CHECK_EQ_INT(mproc_process_pid(p), 0);
        TU_CHECK_OK(mproc_process_free(p)); /* never started: free is fine */
    }
}

static void test_state_errors(void)
{
    TU_FOR_EACH_METHOD(m) {
        int code7 = 7;
        mproc_process_opts_t o = {.method = m};
        mproc_process_t *p = NULL;
        TU_REQUIRE_OK(mproc_process_create(&p, tu_entry_code, &code7, sizeof code7, &o));
        /* before start */
        TU_CHECK_EQ_INT(mproc_process_join(p, 0), MPROC_ESTATE);
        TU_CHECK_EQ_INT(mproc_process_join(p, 10), MPROC_ESTATE);
        int code = 12345;
        TU_CHECK_EQ_INT(mproc_process_exitcode(p, &code), MPROC_ESTATE);
        TU_CHECK(mproc_process_is_alive(p) != 1);
        TU_CHECK_EQ_INT(mproc_process_pid(p), 0);
        TU_CHECK(mproc_process_signal(p, SIGTERM) < 0);
        TU_CHECK(mproc_process_kill(p) < 0);
        /* start, start again */
        TU_CHECK_OK(mproc_process_start(p));
        TU_CHECK_EQ_INT(mproc_process_start(p), MPROC_ESTATE);
        TU_CHECK_OK(mproc_process_join(p, TU_T_MS));
        TU_CHECK_EQ_INT(mproc_process_start(p), MPROC_ESTATE);
        code = -1;
        TU_CHECK_OK(mproc_process_exitcode(p, &code));
        TU_CHECK_EQ_INT(code, 7); /* the failed starts did not disturb it */
        TU_CHECK_EQ_INT(mproc_process_pass_fd(p, 1), MPROC_ESTATE);
        TU_CHECK_OK(mproc_process_free(p));
    }
}

static void test_free_running_is_busy(void)
{
    TU_FOR_EACH_METHOD(m) {
        tu_blocked_t b;
        TU_REQUIRE_OK(tu_start_blocked(&b, m, NULL, 0));
        TU_CHECK_EQ_INT(mproc_process_free(b.p), -EBUSY);
        /* nothing was freed: the object still works */
        TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 1);
        TU_CHECK_EQ_INT(mproc_process_pid(b.p), b.pid);
        TU_CHECK_OK(mproc_process_kill(b.p));
        TU_CHECK_EQ_INT(tu_join_code(b.p), -SIGKILL);
        TU_CHECK_OK(mproc_process_free(b.p));
        b.p = NULL;
        tu_blocked_cleanup(&b);
    }
}

/* free of a child that exited but was never joined collects it (no zombie:
 * the leak checker verifies). */
static void test_free_exited_unjoined(void)
{
    TU_FOR_EACH_METHOD(m) {
        tu_blocked_t b;
        TU_REQUIRE_OK(tu_start_blocked(&b, m, NULL, 0));
        /* wait with the library's own fd: then it knows the child exited */
        int efd = mproc_process_fd(b.p);
        TU_CHECK(efd >= 0);
        TU_CHECK_OK(tu_release(&b));
        if (efd >= 0)
            TU_CHECK_EQ_INT(tu_wait_readable(efd, TU_T_MS), 1);
        if (TU_CHECK_OK(mproc_process_free(b.p)))
            b.p = NULL;
        tu_blocked_cleanup(&b);
    }
}

static mproc_process_t *g_shared_p;

static int raw_child_join(void *ctx)
{
    (void)ctx;
    int rc = mproc_process_join(g_shared_p, 0);
    TU_CHECK_EQ_INT(rc, -ECHILD);
    rc = mproc_process_join(g_shared_p, 100);
    TU_CHECK_EQ_INT(rc, -ECHILD);
    return 0;
}

static void test_join_from_other_process(void)
{
    TU_FOR_EACH_METHOD(m) {
        tu_blocked_t b;
        TU_REQUIRE_OK(tu_start_blocked(&b, m, NULL, 6));
        g_shared_p = b.p;
        int status = -1;
        TU_CHECK_OK(tu_run_child(raw_child_join, NULL, TU_T_MS, &status));
        TU_CHECK_EQ_INT(status, 0);
        /* the parent's object is undisturbed */
        TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 1);
        TU_CHECK_EQ_INT(tu_release_join(&b), 6);
        tu_blocked_cleanup(&b);
    }
    g_shared_p = NULL;
}

static int count_occurrences(const char *hay, const char *needle)
{
    int n = 0;
    size_t nl = strlen(needle);
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += nl)
        n++;
    return n;
}

/* Parent text buffered in stdout before the start reaches the output once
 * (P13); the child's own buffered text reaches it once too (the child
 * flushes stdio on its way out). */
static void stdio_capture(mproc_start_method_t m, int helper_first)
{
    tu_context("method=%s", tu_method_name(m));
    if (helper_first) /* the helper exists before stdout is redirected */
        TU_REQUIRE_OK(mproc_forkserver_start(NULL, NULL, 0));
    fflush(stdout);
    int saved = fcntl(1, F_DUPFD_CLOEXEC, 3);
    TU_REQUIRE(saved >= 0);
    int fds[2];
    if (tu_pipe(fds) != 0) {
        close(saved);
        return;
    }
    dup2(fds[1], 1);
    close(fds[1]);

    char pmark[64], cmark[64];
    snprintf(pmark, sizeof pmark, "<parent-text-%s>", tu_method_name(m));
    snprintf(cmark, sizeof cmark, "<child-text-%s>", tu_method_name(m));
    printf("%s", pmark); /* stays in the (fully buffered) stdout buffer */

    /* (a failure is reported on stderr; success prints nothing) */
    int code = tu_run(m, entry_print, cmark, strlen(cmark) + 1);
    /* the helper may hold our pipe as its stdout */
    int src = mproc_forkserver_stop();

    fflush(stdout);
    dup2(saved, 1);
    close(saved);

    char out[4096];
    ssize_t n = tu_read_all(fds[0], out, sizeof out - 1, TU_T_MS);
    close(fds[0]);
    TU_CHECK_OK(src);
    TU_CHECK_EQ_INT(code, 0);
    TU_REQUIRE(n >= 0);
    out[n] = '\0';
    TU_CHECK_EQ_INT(count_occurrences(out, pmark), 1);
    TU_CHECK_EQ_INT(count_occurrences(out, cmark), 1);
    if (tu_failed)
        fprintf(stderr, "    captured stdout: \"%s\"\n", out);
}

static void stdio_flushed_once(mproc_start_method_t m)
{
    stdio_capture(m, 0);
}
TU_DEFINE_METHOD_CASES(stdio_flushed_once)

/* The helper was started before stdout was redirected: the child must still
 * write where the caller's stdout goes at start time, as with fork/spawn. */
static void test_stdio_forkserver_uses_callers_stdout(void)
{
    stdio_capture(MPROC_START_FORKSERVER, 1);
}

static void test_atexit_not_run_in_fork_child(void)
{
    static int registered;
    if (!registered) {
        TU_REQUIRE(atexit(atexit_handler) == 0);
        registered = 1;
    }
    TU_FOR_EACH_METHOD(m) {
        int fds[2];
        TU_REQUIRE(tu_pipe(fds) == 0);
        g_atexit_fd = fds[1];
        TU_CHECK_EQ_INT(tu_run(m, tu_entry_zero, NULL, 0), 0);
        g_atexit_fd = -1;
        close(fds[1]);
        char buf[64];
        ssize_t n = tu_read_all(fds[0], buf, sizeof buf, TU_T_MS);
        close(fds[0]);
        TU_CHECK_EQ_INT(n, 0); /* EOF, and the handler wrote nothing */
    }
}

static void on_usr1(int sig)
{
    (void)sig;
}

static void test_child_signal_state(void)
{
    struct sigaction sa, old_usr1, old_pipe, old_hup;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    TU_REQUIRE(sigaction(SIGUSR1, &sa, &old_usr1) == 0);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, &old_pipe);
    sigaction(SIGHUP, &sa, &old_hup);
    sigset_t block, oldmask;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGWINCH);
    sigprocmask(SIG_BLOCK, &block, &oldmask);

    TU_FOR_EACH_METHOD(m) {
        int code = tu_run(m, entry_sigstate, NULL, 0);
        if (code != 0 && code != TU_NO_CODE) /* (TU_NO_CODE: tu_run reported why) */
            tu_fail(__FILE__, __LINE__,
                    "child signal state not default: mask %d (1 SIGUSR1 handled, 2 SIGPIPE "
                    "ignored, 4 other not SIG_DFL, 8 SIGUSR2 blocked, 16 other blocked)",
                    code);
    }

    sigprocmask(SIG_SETMASK, &oldmask, NULL);
    sigaction(SIGUSR1, &old_usr1, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
}

/* Several children at once, of mixed methods, joined in reverse order. */
static void test_many_at_once(void)
{
    enum { N = 12 };
    tu_blocked_t b[N];
    int started = 0;
    for (int i = 0; i < N; i++) {
        mproc_start_method_t m = tu_methods[i % TU_NMETHODS];
        tu_context("child %d method=%s", i, tu_method_name(m));
        if (!TU_CHECK_OK(tu_start_blocked(&b[i], m, NULL, 100 + i)))
            break;
        started++;
    }
    tu_context(NULL);
    for (int i = 0; i < started; i++)
        for (int j = i + 1; j < started; j++)
            TU_CHECK(b[i].pid != b[j].pid);
    for (int i = 0; i < started; i++)
        TU_CHECK_OK(tu_release(&b[i]));
    for (int i = started - 1; i >= 0; i--) {
        tu_context("child %d", i);
        TU_CHECK_EQ_INT(tu_join_code(b[i].p), 100 + i);
        tu_blocked_cleanup(&b[i]);
    }
}

/* An entry that lives in no loaded module cannot cross exec: spawn and
 * forkserver starts fail with MPROC_EENTRY and leave nothing running. */
static void test_entry_not_crossable(void)
{
    void *heap = calloc(1, 64); /* data on the heap: in no module, never called */
    TU_REQUIRE(heap != NULL);
    mproc_entry_fn fn;
    memcpy(&fn, &heap, sizeof fn);
    TU_FOR_EACH_METHOD(m) {
        if (m == MPROC_START_FORK)
            continue; /* would call it */
        mproc_process_t *p;
        int rc = tu_start(&p, m, fn, NULL, 0, NULL, 0);
        TU_CHECK_EQ_INT(rc, MPROC_EENTRY);
        if (rc == 0) { /* it started after all: do not leave it running */
            mproc_process_kill(p);
            tu_join_free(p);
        }
        TU_CHECK_EQ_INT(tu_count_real_children(), 0);
    }
    free(heap);
}

/* A 16 MiB argument under each method. */
static void test_large_argument(void)
{
    size_t len = (size_t)16 << 20;
    unsigned char *big = malloc(len);
    TU_REQUIRE(big != NULL);
    for (size_t i = 0; i < len; i++)
        big[i] = pattern_byte(i);
    TU_FOR_EACH_METHOD(m) {
        TU_CHECK_EQ_INT(tu_run(m, entry_arg_pattern, big, len), (int)(len & 0x3f) + 10);
    }
    free(big);
}

/* ------------------------------------------------------------------ a child without fds */

/* Close fds lo..hi (hi may be ~0U). */
static void close_fd_range(unsigned lo, unsigned hi)
{
    if (lo > hi)
        return;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, lo, hi, 0) == 0)
        return;
#endif
    struct rlimit rl;
    unsigned top = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < top)
        top = (unsigned)rl.rlim_cur;
    for (unsigned fd = lo; fd <= hi && fd < top; fd++)
        close((int)fd);
}

/* A reporter that writes "R", closes every fd above 2 (in fallback builds
 * its exit pipe among them) with the report pipe last, then runs on until
 * it is killed. */
static int entry_close_fds_and_wait(const void *arg, size_t len)
{
    int fd;
    if (len != sizeof fd || !arg)
        return 250;
    memcpy(&fd, arg, sizeof fd);
    if (tu_write_full(fd, "R", 1) != 0)
        return 251;
    close_fd_range(3, (unsigned)fd - 1);
    close_fd_range((unsigned)fd + 1, ~0U);
    close(fd);
    for (;;)
        pause();
}

/* Without pidfds a child is watched through its exit pipe; one that closes
 * it and runs on is still running: a join times out on time, is_alive says
 * 1, and it can be killed and collected. (With pidfds: trivially so.) */
static void closed_exit_pipe(mproc_start_method_t m)
{
    tu_context("method=%s pidfd=%d", tu_method_name(m), mproc_have_pidfd());
    mproc_process_t *p;
    int rfd = tu_start_reporter(&p, m, entry_close_fds_and_wait);
    if (rfd < 0)
        return;
    /* "R", then EOF: every fd above 2 is closed in the child */
    char buf[8];
    TU_CHECK_EQ_INT(tu_read_all(rfd, buf, sizeof buf, TU_T_MS), 1);
    close(rfd);
    TU_CHECK_EQ_INT(kill(mproc_process_pid(p), 0), 0);

    alarm(60); /* a join that blocks for good fails here, not at the case limit */
    int64_t t0 = tu_now_ms();
    int rc = mproc_process_join(p, 200);
    int64_t dt = tu_now_ms() - t0;
    TU_CHECK_EQ_INT(rc, -ETIMEDOUT);
    if (dt < 190 || dt >= 2000)
        tu_fail(__FILE__, __LINE__, "join(p, 200) took %lld ms", (long long)dt);
    t0 = tu_now_ms();
    TU_CHECK_EQ_INT(mproc_process_is_alive(p), 1);
    int code = TU_NO_CODE;
    TU_CHECK_EQ_INT(mproc_process_exitcode(p, &code), -EBUSY);
    dt = tu_now_ms() - t0;
    if (dt >= 2000)
        tu_fail(__FILE__, __LINE__, "is_alive + exitcode took %lld ms", (long long)dt);
    TU_CHECK_OK(mproc_process_kill(p));
    TU_CHECK_OK(mproc_process_join(p, TU_T_MS));
    code = TU_NO_CODE;
    TU_CHECK_OK(mproc_process_exitcode(p, &code));
    TU_CHECK_EQ_INT(code, -SIGKILL);
    TU_CHECK_EQ_INT(mproc_process_is_alive(p), 0);
    alarm((unsigned)tu_case_timeout_s);
    if (mproc_process_free(p) != 0) {
        tu_fail(__FILE__, __LINE__, "free failed");
        mproc_process_kill(p);
        mproc_process_join(p, TU_T_MS);
        mproc_process_free(p);
    }
}
TU_DEFINE_METHOD_CASES(closed_exit_pipe)

static const tu_case_t cases[] = {
    TU_CASE(test_default_method),
    TU_CASE(test_exit_codes),
    TU_CASE(test_arguments),
    TU_CASE(test_arg_copied_at_create),
    TU_CASE(test_killed_by_own_signal),
    TU_CASE(test_terminate_kill_signal),
    TU_CASE(test_join_timeout_and_fd),
    TU_CASE(test_is_alive_collects),
    TU_CASE(test_join_eintr_safe),
    TU_CASE(test_pid_and_method_identity),
    TU_CASE(test_name),
    TU_CASE(test_getters),
    TU_CASE(test_state_errors),
    TU_CASE(test_free_running_is_busy),
    TU_CASE(test_free_exited_unjoined),
    TU_CASE(test_join_from_other_process),
    TU_METHOD_CASES(stdio_flushed_once),
    TU_CASE(test_stdio_forkserver_uses_callers_stdout),
    TU_CASE(test_atexit_not_run_in_fork_child),
    TU_CASE(test_child_signal_state),
    TU_CASE(test_many_at_once),
    TU_CASE(test_entry_not_crossable),
    TU_CASE(test_large_argument),
    TU_METHOD_CASES(closed_exit_pipe),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    /* Full buffering for the P13 stdio cases (before any other stdio use). */
    setvbuf(stdout, NULL, _IOFBF, BUFSIZ);
    return tu_main(argc, argv, cases);
}
