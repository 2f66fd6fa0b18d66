/*
 * test_stress.c - many start/join/free cycles per start method leave no fd,
 * no zombie and no memory growth behind.
 *
 * Counts: fork 10000, forkserver 1000, spawn 200, times MPROC_STRESS_SCALE
 * (a float, default 1; default 0.2 in sanitizer builds, where memory
 * figures are not checked either).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

#define RSS_SLACK_KB 2048

static double stress_scale(void)
{
    const char *s = getenv("MPROC_STRESS_SCALE");
    if (s && *s) {
        double v = strtod(s, NULL);
        if (v > 0)
            return v;
    }
    return tu_under_sanitizer() ? 0.2 : 1.0;
}

static long vmrss_kb(void)
{
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[8192];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    const char *p = strstr(buf, "VmRSS:");
    return p ? strtol(p + 6, NULL, 10) : -1;
}

/* One start/join/free cycle, checked (the failure names the cycle). */
static int cycle(mproc_start_method_t m, int i, const char *what)
{
    int want = i & 0x7f;
    if (TU_CHECK_EQ_INT(tu_run(m, tu_entry_code, &want, sizeof want), want))
        return 0;
    tu_fail(__FILE__, __LINE__, "in %s cycle %d", what, i);
    return -1;
}

/* Counts: fork 10000, forkserver 1000, spawn 200 (times stress_scale()). */
static void stress(mproc_start_method_t m)
{
    int base = m == MPROC_START_FORK ? 10000 : m == MPROC_START_FORKSERVER ? 1000 : 200;
    int n = (int)(base * stress_scale());
    if (n < 10)
        n = 10;
    int warm = n / 10 < 20 ? 20 : (n / 10 > 200 ? 200 : n / 10);
    tu_context("method=%s n=%d", tu_method_name(m), n);
    for (int i = 0; i < warm; i++)
        if (cycle(m, i, "warm-up") != 0)
            return;
    int fds0 = tu_count_fds();
    long rss0 = vmrss_kb();
    int64_t t0 = tu_now_ms();
    for (int i = 0; i < n; i++) {
        if (cycle(m, i, "measured") != 0)
            return;
        if ((i + 1) % 1000 == 0) {
            int kids = tu_count_real_children();
            if (kids != 0) {
                tu_fail(__FILE__, __LINE__, "after %d cycles: %d children (zombies?) left", i + 1,
                        kids);
                return;
            }
        }
    }
    int64_t dt = tu_now_ms() - t0;
    int fds1 = tu_count_fds();
    long rss1 = vmrss_kb();
    TU_CHECK_EQ_INT(fds1, fds0);
    TU_CHECK_EQ_INT(tu_count_real_children(), 0);
    if (!tu_under_sanitizer()) {
        if (rss0 < 0 || rss1 < 0)
            tu_fail(__FILE__, __LINE__, "cannot read VmRSS");
        else if (rss1 - rss0 >= RSS_SLACK_KB)
            tu_fail(__FILE__, __LINE__, "VmRSS grew by %ld kB over %d cycles (%ld -> %ld kB)",
                    rss1 - rss0, n, rss0, rss1);
    }
    fprintf(stderr, "  %s: %d cycles in %lld ms (%.3f ms each), VmRSS %ld -> %ld kB\n",
            tu_method_name(m), n, (long long)dt, n ? (double)dt / n : 0.0, rss0, rss1);
}

TU_DEFINE_METHOD_CASES(stress)

/* Abandoned children: started, killed, freed without an explicit join. */
static void test_stress_kill_free(void)
{
    int n = (int)(300 * stress_scale());
    if (n < 10)
        n = 10;
    int fds0 = tu_count_fds();
    for (int i = 0; i < n; i++) {
        mproc_start_method_t m = tu_methods[i % TU_NMETHODS];
        tu_context("method=%s i=%d", tu_method_name(m), i);
        tu_blocked_t b;
        if (!TU_CHECK_OK(tu_start_blocked(&b, m, NULL, 0)))
            return;
        TU_CHECK_OK(mproc_process_kill(b.p));
        TU_CHECK_OK(mproc_process_join(b.p, TU_T_MS));
        tu_blocked_cleanup(&b);
        if (tu_failed)
            return;
    }
    tu_context(NULL);
    TU_CHECK_OK(mproc_forkserver_stop());
    TU_CHECK_EQ_INT(tu_count_fds(), fds0);
    TU_CHECK_EQ_INT(tu_count_real_children(), 0);
}

static const tu_case_t cases[] = {
    TU_METHOD_CASES(stress),
    TU_CASE(test_stress_kill_free),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
