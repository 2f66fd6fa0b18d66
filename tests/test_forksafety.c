/*
 * test_forksafety.c - the fork-safety section of mproc.h: the at-fork
 * registry (order, unregister, mproc forks too), the fork generation,
 * guards and mproc_once (P1, P5), mproc_close_fds_except, the stdio flush
 * before a raw fork (P13) and the child exit hooks (P6).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

/* ------------------------------------------------------------------ helpers */

/* The write end a raw fork child reports through (see fork_report). */
static int g_report_fd = -1;

/* In a raw fork child: write n bytes to g_report_fd. */
static int child_report(const void *data, size_t n)
{
    return tu_write_full(g_report_fd, data, n) == 0 ? 0 : 251;
}

/*
 * Raw-fork a child running fn(ctx) (tu_fork) that may report through
 * child_report; read all it reports (up to cap - 1 bytes, NUL-terminated)
 * and reap it. Returns the byte count (or a negative error, reported) and
 * the child's exit status in *status (TU_NO_CODE if none).
 */
static ssize_t fork_report(tu_child_fn fn, void *ctx, char *out, size_t cap, int *status)
{
    *status = TU_NO_CODE;
    out[0] = '\0';
    int fds[2];
    if (tu_pipe(fds) != 0)
        return -1;
    g_report_fd = fds[1];
    int pidfd = -1;
    pid_t pid = tu_fork(fn, ctx, &pidfd);
    g_report_fd = -1;
    close(fds[1]);
    if (pid < 0) {
        tu_fail(__FILE__, __LINE__, "tu_fork: %s", strerror((int)-pid));
        close(fds[0]);
        return pid;
    }
    ssize_t n = tu_read_all(fds[0], out, cap - 1, TU_T_MS);
    close(fds[0]);
    if (n < 0) {
        tu_fail(__FILE__, __LINE__, "reading the child's report: %s", strerror((int)-n));
        tu_kill_child(pid, pidfd);
        return n;
    }
    out[n] = '\0';
    int rc = tu_wait_child(pid, pidfd, TU_T_MS, status);
    if (rc != 0) {
        tu_fail(__FILE__, __LINE__, "waiting for the child: %s", strerror(-rc));
        if (rc == -ETIMEDOUT)
            tu_kill_child(pid, pidfd);
        *status = TU_NO_CODE;
    }
    return n;
}

static int count_occurrences(const char *hay, const char *needle)
{
    int n = 0;
    size_t len = strlen(needle);
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += len)
        n++;
    return n;
}

/* ------------------------------------------------------------------ 1. registry order */

static char g_prep[32], g_par[32], g_chi[32];

static void append(char *buf, const void *ctx)
{
    size_t n = strlen(buf);
    if (n + 1 < sizeof g_prep) {
        buf[n] = *(const char *)ctx;
        buf[n + 1] = '\0';
    }
}
static void cb_prepare(void *ctx)
{
    append(g_prep, ctx);
}
static void cb_parent(void *ctx)
{
    append(g_par, ctx);
}
static void cb_child(void *ctx)
{
    append(g_chi, ctx);
}

static void clear_seqs(void)
{
    g_prep[0] = g_par[0] = g_chi[0] = '\0';
}

/* The child reports "<child sequence>|<prepare sequence as it saw it>". */
static int child_report_seqs(void *ctx)
{
    (void)ctx;
    char buf[80];
    int n = snprintf(buf, sizeof buf, "%s|%s", g_chi, g_prep);
    return child_report(buf, (size_t)n);
}

static void test_registry_order(void)
{
    static const char A = 'A', B = 'B', C = 'C';
    mproc_atfork_t *ha = NULL, *hb = NULL, *hc = NULL;
    TU_CHECK_OK(mproc_atfork_register(cb_prepare, cb_parent, cb_child, (void *)&A, &ha));
    TU_CHECK_OK(mproc_atfork_register(cb_prepare, cb_parent, cb_child, (void *)&B, &hb));
    TU_CHECK_OK(mproc_atfork_register(cb_prepare, cb_parent, cb_child, (void *)&C, &hc));
    TU_CHECK(ha && hb && hc);

    if (ha && hb && hc) {
        char out[128];
        int st;
        clear_seqs();
        ssize_t n = fork_report(child_report_seqs, NULL, out, sizeof out, &st);
        TU_CHECK(n >= 0);
        TU_CHECK_EQ_INT(st, 0);
        TU_CHECK_EQ_STR(g_prep, "CBA");
        TU_CHECK_EQ_STR(g_par, "ABC");
        TU_CHECK_EQ_STR(g_chi, ""); /* the parent's copy: no child callback */
        TU_CHECK_EQ_STR(out, "ABC|CBA");

        /* B gone: it runs nowhere. */
        TU_CHECK_OK(mproc_atfork_unregister(hb));
        hb = NULL;
        clear_seqs();
        n = fork_report(child_report_seqs, NULL, out, sizeof out, &st);
        TU_CHECK(n >= 0);
        TU_CHECK_EQ_INT(st, 0);
        TU_CHECK_EQ_STR(g_prep, "CA");
        TU_CHECK_EQ_STR(g_par, "AC");
        TU_CHECK_EQ_STR(out, "AC|CA");
    }

    TU_CHECK_EQ_INT(mproc_atfork_unregister(NULL), 0);
    TU_CHECK_EQ_INT(mproc_atfork_register(cb_prepare, NULL, NULL, NULL, NULL), -EINVAL);

    TU_CHECK_OK(mproc_atfork_unregister(ha));
    TU_CHECK_OK(mproc_atfork_unregister(hb));
    TU_CHECK_OK(mproc_atfork_unregister(hc));

    /* Nothing registered any more: a fork runs no callback. */
    clear_seqs();
    char out[128];
    int st;
    TU_CHECK(fork_report(child_report_seqs, NULL, out, sizeof out, &st) >= 0);
    TU_CHECK_EQ_INT(st, 0);
    TU_CHECK_EQ_STR(g_prep, "");
    TU_CHECK_EQ_STR(g_par, "");
    TU_CHECK_EQ_STR(out, "|");
}

/* ------------------------------------------------------------------ 2. mproc fork */

static volatile int g_child_flag;
static int g_parent_calls;

static void flag_child(void *ctx)
{
    (void)ctx;
    g_child_flag = 1;
}
static void count_parent(void *ctx)
{
    (void)ctx;
    g_parent_calls++;
}

static int entry_report_flag(const void *arg, size_t len)
{
    unsigned char f = (unsigned char)g_child_flag;
    return tu_report(arg, len, &f, 1);
}

static void test_callbacks_on_mproc_fork(void)
{
    mproc_atfork_t *h = NULL;
    TU_REQUIRE_OK(mproc_atfork_register(NULL, count_parent, flag_child, NULL, &h));
    g_child_flag = 0;
    g_parent_calls = 0;

    mproc_process_t *p = NULL;
    int rfd = tu_start_reporter(&p, MPROC_START_FORK, entry_report_flag);
    if (rfd >= 0) {
        unsigned char f = 0xff;
        TU_CHECK_EQ_INT(tu_read_full(rfd, &f, 1, TU_T_MS), 1);
        close(rfd);
        TU_CHECK_EQ_INT(f, 1);
        TU_CHECK_EQ_INT(tu_join_free(p), 0);
    }
    TU_CHECK_EQ_INT(g_child_flag, 0); /* only the child's copy was set */
    TU_CHECK_EQ_INT(g_parent_calls, 1);
    TU_CHECK_OK(mproc_atfork_unregister(h));
}

/* ------------------------------------------------------------------ 3. generation */

static int child_generations(void *ctx)
{
    (void)ctx;
    uint64_t gens[2] = {mproc_fork_generation(), UINT64_MAX};
    int p[2];
    if (pipe(p) != 0)
        return 2;
    pid_t pid = fork();
    if (pid < 0)
        return 3;
    if (pid == 0) {
        uint64_t g2 = mproc_fork_generation();
        _exit(tu_write_full(p[1], &g2, sizeof g2) == 0 ? 0 : 1);
    }
    close(p[1]);
    ssize_t n = tu_read_full(p[0], &gens[1], sizeof gens[1], TU_T_MS);
    close(p[0]);
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return 4;
    if (n != (ssize_t)sizeof gens[1])
        return 5;
    return child_report(gens, sizeof gens);
}

static void test_generation(void)
{
    uint64_t g = mproc_fork_generation();
    uint64_t gens[2] = {0, 0};
    char out[64];
    int st;
    ssize_t n = fork_report(child_generations, NULL, out, sizeof out, &st);
    TU_CHECK_EQ_INT(st, 0);
    TU_REQUIRE_EQ_INT(n, (ssize_t)sizeof gens);
    memcpy(gens, out, sizeof gens);
    TU_CHECK_EQ_INT(gens[0], g + 1);
    TU_CHECK_EQ_INT(gens[1], g + 2);
    TU_CHECK_EQ_INT(mproc_fork_generation(), g); /* the parent's own is unchanged */
}

/* ------------------------------------------------------------------ 4. guards */

static mproc_guard_t g_guard = MPROC_GUARD_INIT;
static mproc_guard_t g_guard_fail = MPROC_GUARD_INIT;
static int g_rebuilds;

static int rebuild_count(void *ctx)
{
    (void)ctx;
    g_rebuilds++;
    return 0;
}

static int rebuild_eio(void *ctx)
{
    (void)ctx;
    g_rebuilds++;
    return -EIO;
}

static int grandchild_inherited(void *ctx)
{
    (void)ctx;
    return mproc_guard_inherited(&g_guard) == 1 ? 0 : 10;
}

static int child_guard(void *ctx)
{
    (void)ctx;
    g_rebuilds = 0;
    TU_CHECK_EQ_INT(mproc_guard_inherited(&g_guard), 1);
    TU_CHECK_EQ_INT(mproc_guard_ensure(&g_guard, rebuild_count, NULL), 1);
    TU_CHECK_EQ_INT(g_rebuilds, 1);
    TU_CHECK_EQ_INT(mproc_guard_inherited(&g_guard), 0);
    TU_CHECK_EQ_INT(mproc_guard_ensure(&g_guard, rebuild_count, NULL), 0);
    TU_CHECK_EQ_INT(g_rebuilds, 1);

    /* Claimed by this child now: its own child inherits it again. */
    int st = TU_NO_CODE;
    TU_CHECK_OK(tu_run_child(grandchild_inherited, NULL, TU_T_MS, &st));
    TU_CHECK_EQ_INT(st, 0);

    /* A failing rebuild: the error comes back and the guard stays unowned. */
    g_rebuilds = 0;
    TU_CHECK_EQ_INT(mproc_guard_inherited(&g_guard_fail), 1);
    TU_CHECK_EQ_INT(mproc_guard_ensure(&g_guard_fail, rebuild_eio, NULL), -EIO);
    TU_CHECK_EQ_INT(g_rebuilds, 1);
    TU_CHECK_EQ_INT(mproc_guard_inherited(&g_guard_fail), 1);
    TU_CHECK_EQ_INT(mproc_guard_ensure(&g_guard_fail, rebuild_eio, NULL), -EIO);
    TU_CHECK_EQ_INT(g_rebuilds, 2);
    TU_CHECK_EQ_INT(mproc_guard_ensure(&g_guard_fail, rebuild_count, NULL), 1);
    TU_CHECK_EQ_INT(g_rebuilds, 3);
    TU_CHECK_EQ_INT(mproc_guard_inherited(&g_guard_fail), 0);
    return 0;
}

static void test_guard(void)
{
    mproc_guard_t unclaimed = MPROC_GUARD_INIT;
    TU_CHECK_EQ_INT(mproc_guard_inherited(&unclaimed), 1); /* owned by no process */
    TU_CHECK_EQ_INT(mproc_guard_ensure(NULL, rebuild_count, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_guard_ensure(&unclaimed, NULL, NULL), -EINVAL);

    mproc_guard_claim(&g_guard);
    mproc_guard_claim(&g_guard_fail);
    TU_CHECK_EQ_INT(mproc_guard_inherited(&g_guard), 0);
    g_rebuilds = 0;
    TU_CHECK_EQ_INT(mproc_guard_ensure(&g_guard, rebuild_count, NULL), 0);
    TU_CHECK_EQ_INT(g_rebuilds, 0);

    int st = TU_NO_CODE;
    TU_CHECK_OK(tu_run_child(child_guard, NULL, TU_T_MS, &st));
    TU_CHECK_EQ_INT(st, 0);

    /* The child's claims changed nothing here. */
    TU_CHECK_EQ_INT(mproc_guard_inherited(&g_guard), 0);
    TU_CHECK_EQ_INT(mproc_guard_inherited(&g_guard_fail), 0);
}

/* ------------------------------------------------------------------ 5. racing threads */

#define RACERS 8

static mproc_guard_t g_race_guard = MPROC_GUARD_INIT;
static atomic_int g_race_rebuilds;
static atomic_int g_race_arrived;
static pthread_barrier_t g_race_barrier;

/* Counts, then holds the lock until every racer has reached ensure (or a
 * bound passes): the others are then certainly waiting for it. */
static int rebuild_slow(void *ctx)
{
    (void)ctx;
    atomic_fetch_add(&g_race_rebuilds, 1);
    int64_t deadline = tu_now_ms() + TU_T_MS;
    volatile unsigned long spin = 0;
    while (atomic_load(&g_race_arrived) < RACERS && tu_now_ms() < deadline)
        spin++;
    for (unsigned long i = 0; i < 100000; i++) /* and a little longer */
        spin++;
    return 0;
}

static void *racer(void *arg)
{
    int *result = arg;
    pthread_barrier_wait(&g_race_barrier);
    atomic_fetch_add(&g_race_arrived, 1);
    *result = mproc_guard_ensure(&g_race_guard, rebuild_slow, NULL);
    return NULL;
}

/* Exit status: 0, or 10 + the number of rebuilds, or 40 + ones returned. */
static int child_race(void *ctx)
{
    (void)ctx;
    if (!mproc_guard_inherited(&g_race_guard))
        return 2;
    if (pthread_barrier_init(&g_race_barrier, NULL, RACERS) != 0)
        return 3;
    pthread_t th[RACERS];
    int results[RACERS];
    int started = 0;
    for (; started < RACERS; started++) {
        results[started] = -1;
        if (pthread_create(&th[started], NULL, racer, &results[started]) != 0)
            break;
    }
    if (started != RACERS)
        _exit(4); /* the started ones wait at the barrier forever */
    for (int i = 0; i < RACERS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&g_race_barrier);
    int rebuilds = atomic_load(&g_race_rebuilds);
    if (rebuilds != 1)
        return 10 + rebuilds;
    int ones = 0;
    for (int i = 0; i < RACERS; i++) {
        if (results[i] == 1)
            ones++;
        else if (results[i] != 0)
            return 30;
    }
    if (ones != 1)
        return 40 + ones;
    return mproc_guard_inherited(&g_race_guard) ? 5 : 0;
}

static void test_guard_racing_threads(void)
{
    mproc_guard_claim(&g_race_guard);
    atomic_store(&g_race_rebuilds, 0);
    atomic_store(&g_race_arrived, 0);
    int st = TU_NO_CODE;
    TU_CHECK_OK(tu_run_child(child_race, NULL, TU_T_MS, &st));
    if (!TU_CHECK_EQ_INT(st, 0))
        fprintf(stderr, "    child status %d (10+n: n rebuilds; 40+n: n threads got 1)\n", st);
    TU_CHECK_EQ_INT(atomic_load(&g_race_rebuilds), 0); /* none in the parent */
}

/* ------------------------------------------------------------------ 6. mproc_once */

static mproc_once_t g_once = MPROC_ONCE_INIT;
static int g_once_runs;

static int once_init(void *ctx)
{
    (void)ctx;
    g_once_runs++;
    return 0;
}

/* Exit status: 0 if the first call in this child ran init again. */
static int child_once(void *ctx)
{
    (void)ctx;
    int before = g_once_runs;
    int r1 = mproc_once(&g_once, once_init, NULL);
    int r2 = mproc_once(&g_once, once_init, NULL);
    int r3 = mproc_once(&g_once, once_init, NULL);
    if (before != 1)
        return 2;
    if (r1 != 1 || r2 != 0 || r3 != 0)
        return 3;
    return g_once_runs == 2 ? 0 : 4;
}

/* Reports g_once_runs after three calls. */
static int entry_once(const void *arg, size_t len)
{
    for (int i = 0; i < 3; i++)
        mproc_once(&g_once, once_init, NULL);
    unsigned char n = (unsigned char)g_once_runs;
    return tu_report(arg, len, &n, 1);
}

static void test_once(void)
{
    TU_CHECK_EQ_INT(mproc_once(&g_once, once_init, NULL), 1);
    TU_CHECK_EQ_INT(mproc_once(&g_once, once_init, NULL), 0);
    TU_CHECK_EQ_INT(mproc_once(&g_once, once_init, NULL), 0);
    TU_CHECK_EQ_INT(g_once_runs, 1);

    int st = TU_NO_CODE;
    TU_CHECK_OK(tu_run_child(child_once, NULL, TU_T_MS, &st));
    TU_CHECK_EQ_INT(st, 0);
    TU_CHECK_EQ_INT(g_once_runs, 1);

    /* A fork child has the parent's 1 and runs init once more; spawn and
     * forkserver children are fresh images: once, from 0. */
    TU_FOR_EACH_METHOD(m) {
        mproc_process_t *p = NULL;
        int rfd = tu_start_reporter(&p, m, entry_once);
        if (rfd < 0)
            continue;
        unsigned char n = 0xff;
        TU_CHECK_EQ_INT(tu_read_full(rfd, &n, 1, TU_T_MS), 1);
        close(rfd);
        TU_CHECK_EQ_INT(n, m == MPROC_START_FORK ? 2 : 1);
        TU_CHECK_EQ_INT(tu_join_free(p), 0);
    }
    TU_CHECK_EQ_INT(mproc_once(&g_once, once_init, NULL), 0);
    TU_CHECK_EQ_INT(g_once_runs, 1);
}

/* ------------------------------------------------------------------ 7. close_fds_except */

static int child_close_fds(void *ctx)
{
    (void)ctx;
    int p1[2], p2[2];
    if (pipe(p1) != 0 || pipe(p2) != 0)
        return 2;
    int n1 = open("/dev/null", O_RDONLY);
    int n2 = open("/dev/null", O_WRONLY);
    if (n1 < 0 || n2 < 0)
        return 3;
    int std_open[3];
    for (int i = 0; i < 3; i++)
        std_open[i] = tu_fd_is_open(i);

    /* Bad arguments close nothing. */
    static int big[1025];
    for (int i = 0; i < 1025; i++)
        big[i] = i;
    int neg[2] = {p1[0], -1};
    TU_CHECK_EQ_INT(mproc_close_fds_except(big, 1025), -EINVAL);
    TU_CHECK_EQ_INT(mproc_close_fds_except(NULL, 1), -EINVAL);
    TU_CHECK_EQ_INT(mproc_close_fds_except(neg, 2), -EINVAL);
    TU_CHECK(tu_fd_is_open(p1[0]) && tu_fd_is_open(p1[1]) && tu_fd_is_open(p2[0]) &&
             tu_fd_is_open(p2[1]) && tu_fd_is_open(n1) && tu_fd_is_open(n2));

    int keep[2] = {n2, p1[0]}; /* unsorted on purpose */
    TU_CHECK_OK(mproc_close_fds_except(keep, 2));
    TU_CHECK_EQ_INT(keep[0], n2); /* the caller's array is not reordered */
    TU_CHECK_EQ_INT(keep[1], p1[0]);

    int want[5], nwant = 0;
    for (int i = 0; i < 3; i++)
        if (std_open[i])
            want[nwant++] = i;
    want[nwant++] = p1[0] < n2 ? p1[0] : n2;
    want[nwant++] = p1[0] < n2 ? n2 : p1[0];

    int fds[64];
    int n = tu_list_fds(fds, 64);
    TU_CHECK_EQ_INT(n, nwant);
    if (n == nwant)
        for (int i = 0; i < n; i++)
            TU_CHECK_EQ_INT(fds[i], want[i]);
    if (tu_failed) {
        fprintf(stderr, "    open fds after close_fds_except:");
        for (int i = 0; i < n && i < 64; i++)
            fprintf(stderr, " %d", fds[i]);
        fprintf(stderr, "\n");
    }
    return 0;
}

static void test_close_fds_except(void)
{
    int st = TU_NO_CODE;
    TU_CHECK_OK(tu_run_child(child_close_fds, NULL, TU_T_MS, &st));
    TU_CHECK_EQ_INT(st, 0);
}

/* ------------------------------------------------------------------ 8. stdio on raw fork */

static void test_stdio_raw_fork(void)
{
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

    const char *pmark = "<parent-raw-fork-text>";
    const char *cmark = "<child-raw-fork-text>";
    printf("%s", pmark); /* stays in the (fully buffered) stdout buffer */

    pid_t pid = fork(); /* raw: only the at-fork prepare handler flushes */
    if (pid == 0) {
        printf("%s", cmark);
        exit(0); /* flushes stdio: must not repeat the parent's text */
    }
    int st = TU_NO_CODE, wrc = -ECHILD;
    if (pid > 0) {
        wrc = tu_wait_child(pid, -1, TU_T_MS, &st);
        if (wrc == -ETIMEDOUT)
            tu_kill_child(pid, -1);
    }

    fflush(stdout);
    dup2(saved, 1);
    close(saved);

    char out[4096];
    ssize_t n = tu_read_all(fds[0], out, sizeof out - 1, TU_T_MS);
    close(fds[0]);
    TU_CHECK(pid > 0);
    TU_CHECK_OK(wrc);
    TU_CHECK_EQ_INT(st, 0);
    TU_REQUIRE(n >= 0);
    out[n] = '\0';
    TU_CHECK_EQ_INT(count_occurrences(out, pmark), 1);
    TU_CHECK_EQ_INT(count_occurrences(out, cmark), 1);
    if (tu_failed)
        fprintf(stderr, "    captured stdout: \"%s\"\n", out);
}

/* ------------------------------------------------------------------ 9. child exit hooks */

static int g_hook_fd = -1; /* in the child: the reporter pipe */
static atomic_int g_stop;
static pthread_t g_worker;

static void *worker(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_stop))
        sched_yield();
    return NULL;
}

static void hook_stop_join(void *ctx)
{
    (void)ctx;
    atomic_store(&g_stop, 1);
    if (pthread_join(g_worker, NULL) == 0)
        tu_write_full(g_hook_fd, "joined", 6);
}

static void hook_write_char(void *ctx)
{
    tu_write_full(g_hook_fd, ctx, 1);
}

static int entry_join_hook(const void *arg, size_t len)
{
    if (len != sizeof g_hook_fd || !arg)
        return 250;
    memcpy(&g_hook_fd, arg, sizeof g_hook_fd);
    atomic_store(&g_stop, 0);
    if (pthread_create(&g_worker, NULL, worker, NULL) != 0)
        return 3;
    if (mproc_on_child_exit(hook_stop_join, NULL) != 0)
        return 4;
    return 0;
}

static int entry_hook_order(const void *arg, size_t len)
{
    if (len != sizeof g_hook_fd || !arg)
        return 250;
    memcpy(&g_hook_fd, arg, sizeof g_hook_fd);
    if (mproc_on_child_exit(hook_write_char, (void *)"1") != 0)
        return 4;
    if (mproc_on_child_exit(hook_write_char, (void *)"2") != 0)
        return 5;
    return 0;
}

/* Registered in this (parent) process: a fork child must not inherit it
 * (it would write 'P' to the child's report pipe). */
static void parent_hook(void *ctx)
{
    (void)ctx;
    if (g_hook_fd >= 0)
        tu_write_full(g_hook_fd, "P", 1);
}

static void run_hook_child(mproc_start_method_t m, mproc_entry_fn fn, const char *want)
{
    mproc_process_t *p = NULL;
    int rfd = tu_start_reporter(&p, m, fn);
    if (rfd < 0)
        return;
    char out[64];
    ssize_t n = tu_read_all(rfd, out, sizeof out - 1, TU_T_MS);
    close(rfd);
    TU_CHECK(n >= 0);
    out[n < 0 ? 0 : n] = '\0';
    TU_CHECK_EQ_STR(out, want);
    TU_CHECK_EQ_INT(tu_join_free(p), 0);
}

static void child_exit_hooks(mproc_start_method_t m)
{
    static int parent_hook_registered;
    if (!parent_hook_registered) {
        TU_REQUIRE_OK(mproc_on_child_exit(parent_hook, NULL));
        parent_hook_registered = 1;
    }
    tu_context("method=%s join hook", tu_method_name(m));
    run_hook_child(m, entry_join_hook, "joined");
    tu_context("method=%s hook order", tu_method_name(m));
    run_hook_child(m, entry_hook_order, "21");
}
TU_DEFINE_METHOD_CASES(child_exit_hooks)

/* ------------------------------------------------------------------ main */

/* mproc's own per-process set-up runs again in every fork child; a long
 * chain of forks must not use up its table of at-fork hooks. Each of 12
 * generations uses a segment and a lock, then forks; the last starts a
 * forkserver and forks once more: that child must not see its parent's
 * helper (the forkserver's at-fork hook, first needed this deep, ran). */
static int fork_chain(void *vctx)
{
    int depth = *(int *)vctx;
    mproc_shm_t *s = NULL;
    mproc_lock_t *l = NULL;
    if (mproc_shm_create(&s, 4096) != 0 || mproc_lock_create(s, NULL, &l) != 0 ||
        mproc_lock_acquire(l, 1000) != 0 || mproc_lock_release(l) != 0)
        return 10;
    mproc_shm_close(s);
    if (depth > 0) {
        int next = depth - 1, st = -1;
        if (tu_run_child(fork_chain, &next, TU_T_MS, &st) != 0)
            return 11;
        return st;
    }
    if (mproc_forkserver_start(NULL, NULL, 0) != 0 || mproc_forkserver_pid() <= 0)
        return 12;
    pid_t c = fork();
    if (c == 0)
        _exit(mproc_forkserver_pid() == 0 ? 0 : 13);
    int st = -1;
    if (c < 0 || waitpid(c, &st, 0) != c)
        return 14;
    mproc_forkserver_stop();
    return WIFEXITED(st) ? WEXITSTATUS(st) : 15;
}

static void test_long_fork_chain(void)
{
    int depth = 12, st = -1;
    TU_CHECK_OK(tu_run_child(fork_chain, &depth, 4 * TU_T_MS, &st));
    TU_CHECK_EQ_INT(st, 0);
}

/* clang-format off */
static const tu_case_t cases[] = {
    TU_CASE(test_registry_order),
    TU_CASE(test_callbacks_on_mproc_fork),
    TU_CASE(test_generation),
    TU_CASE(test_guard),
    TU_CASE(test_guard_racing_threads),
    TU_CASE(test_once),
    TU_CASE(test_close_fds_except),
    TU_CASE(test_stdio_raw_fork),
    TU_CASE(test_long_fork_chain),
    TU_METHOD_CASES(child_exit_hooks),
    TU_END,
};
/* clang-format on */

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    /* Full buffering for the P13 stdio case (before any other stdio use). */
    setvbuf(stdout, NULL, _IOFBF, BUFSIZ);
    return tu_main(argc, argv, cases);
}
