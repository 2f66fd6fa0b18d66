/*
 * test_args.c - bad arguments to every function are reported with an error
 * code; nothing aborts, nothing starts.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

/* The documented initial values (first case: nothing changed them yet). */
static void test_defaults(void)
{
    TU_CHECK_EQ_INT(mproc_get_start_method(), MPROC_START_FORKSERVER);
    TU_CHECK_EQ_INT(mproc_get_fork_policy(), MPROC_FORK_WARN);
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), 0); /* started lazily, not at init */
    /* mproc_init again in the parent: returns 0 at once; NULLs allowed */
    TU_CHECK_OK(mproc_init(NULL, NULL));
    int argc = 1;
    char arg0[] = "x";
    char *argvv[] = {arg0, NULL};
    char **argv = argvv;
    TU_CHECK_OK(mproc_init(&argc, &argv));
    TU_CHECK_EQ_INT(argc, 1);
}

static void test_create_bad_args(void)
{
    mproc_process_t *p = NULL;
    int one = 1;
    TU_CHECK_EQ_INT(mproc_process_create(NULL, tu_entry_zero, NULL, 0, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_process_create(&p, NULL, NULL, 0, NULL), -EINVAL);
    TU_CHECK(p == NULL);
    TU_CHECK_EQ_INT(mproc_process_create(&p, tu_entry_zero, NULL, 4, NULL), -EINVAL);
    TU_CHECK(p == NULL);
    static const int bad_methods[] = {-1, 4, 99, INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof bad_methods / sizeof bad_methods[0]; i++) {
        tu_context("method=%d", bad_methods[i]);
        mproc_process_opts_t o = {NULL, (mproc_start_method_t)bad_methods[i], 0};
        p = NULL;
        int rc = mproc_process_create(&p, tu_entry_zero, &one, sizeof one, &o);
        if (rc == 0) {
            /* accepted at create? then start must refuse, with no child */
            int src = mproc_process_start(p);
            TU_CHECK_EQ_INT(src, -EINVAL);
            if (src == 0)
                mproc_process_join(p, TU_T_MS);
            mproc_process_free(p);
            tu_fail(__FILE__, __LINE__, "create accepted an invalid method %d", bad_methods[i]);
        } else {
            TU_CHECK_EQ_INT(rc, -EINVAL);
        }
    }
    tu_context(NULL);
    TU_CHECK_EQ_INT(tu_count_children(NULL, 0), 0);
}

static void test_null_process(void)
{
    int code = 0;
    TU_CHECK_EQ_INT(mproc_process_pass_fd(NULL, 1), -EINVAL);
    TU_CHECK_EQ_INT(mproc_process_start(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_process_join(NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_process_join(NULL, MPROC_FOREVER), -EINVAL);
    TU_CHECK_EQ_INT(mproc_process_is_alive(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_process_exitcode(NULL, &code), -EINVAL);
    TU_CHECK_EQ_INT(mproc_process_exitcode(NULL, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_process_signal(NULL, SIGTERM), -EINVAL);
    TU_CHECK_EQ_INT(mproc_process_terminate(NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_process_kill(NULL), -EINVAL);
    TU_CHECK(mproc_process_fd(NULL) < 0);
    TU_CHECK_EQ_INT(mproc_process_pid(NULL), 0);
    TU_CHECK(mproc_process_is_daemon(NULL) <= 0);
    (void)mproc_process_name(NULL);   /* no crash; value unspecified */
    (void)mproc_process_method(NULL); /* no crash; value unspecified */
    TU_CHECK_OK(mproc_process_free(NULL));
}

static void test_exitcode_null_out(void)
{
    mproc_process_opts_t o = {NULL, MPROC_START_FORK, 0};
    mproc_process_t *p = NULL;
    TU_REQUIRE_OK(mproc_process_create(&p, tu_entry_zero, NULL, 0, &o));
    TU_CHECK_EQ_INT(mproc_process_exitcode(p, NULL), -EINVAL);
    TU_CHECK_OK(mproc_process_start(p));
    TU_CHECK_OK(mproc_process_join(p, TU_T_MS));
    TU_CHECK_EQ_INT(mproc_process_exitcode(p, NULL), -EINVAL);
    int code = -1;
    TU_CHECK_OK(mproc_process_exitcode(p, &code));
    TU_CHECK_EQ_INT(code, 0);
    TU_CHECK_OK(mproc_process_free(p));
}

static void test_start_method_values(void)
{
    mproc_start_method_t before = mproc_get_start_method();
    static const int bad[] = {-1, 4, 99, 12345, INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tu_context("method=%d", bad[i]);
        TU_CHECK_EQ_INT(mproc_set_start_method((mproc_start_method_t)bad[i]), -EINVAL);
        TU_CHECK_EQ_INT(mproc_get_start_method(), before);
    }
    tu_context(NULL);
    TU_FOR_EACH_METHOD(m) {
        TU_CHECK_OK(mproc_set_start_method(m));
        TU_CHECK_EQ_INT(mproc_get_start_method(), m);
    }
    /* DEFAULT as the default is meaningless: refused, or taken to mean the
     * initial default; either way the getter names a concrete method */
    int rc = mproc_set_start_method(MPROC_START_DEFAULT);
    TU_CHECK(rc == 0 || rc == -EINVAL);
    mproc_start_method_t now = mproc_get_start_method();
    TU_CHECK(now == MPROC_START_FORK || now == MPROC_START_SPAWN || now == MPROC_START_FORKSERVER);
    TU_CHECK_OK(mproc_set_start_method(MPROC_START_FORKSERVER));
}

static void test_fork_policy_values(void)
{
    mproc_fork_policy_t before = mproc_get_fork_policy();
    static const int bad[] = {-1, 3, 99, INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tu_context("policy=%d", bad[i]);
        TU_CHECK_EQ_INT(mproc_set_fork_policy((mproc_fork_policy_t)bad[i]), -EINVAL);
        TU_CHECK_EQ_INT(mproc_get_fork_policy(), before);
    }
    tu_context(NULL);
    static const mproc_fork_policy_t good[] = {MPROC_FORK_ALLOW, MPROC_FORK_REFUSE,
                                               MPROC_FORK_WARN};
    for (int i = 0; i < 3; i++) {
        TU_CHECK_OK(mproc_set_fork_policy(good[i]));
        TU_CHECK_EQ_INT(mproc_get_fork_policy(), good[i]);
    }
}

static void test_pass_fd_bad(void)
{
    TU_FOR_EACH_METHOD(m) {
        mproc_process_opts_t o = {NULL, m, 0};
        mproc_process_t *p = NULL;
        TU_REQUIRE_OK(mproc_process_create(&p, tu_entry_zero, NULL, 0, &o));
        static const int bad_fds[] = {-1, -100, INT_MIN};
        for (size_t i = 0; i < sizeof bad_fds / sizeof bad_fds[0]; i++) {
            int rc = mproc_process_pass_fd(p, bad_fds[i]);
            if (rc != -EINVAL && rc != -EBADF)
                tu_fail(__FILE__, __LINE__, "pass_fd(%d): %d, want -EINVAL or -EBADF", bad_fds[i],
                        rc);
        }
        TU_CHECK_EQ_INT(mproc_process_pass_fd(p, INT_MAX), -EBADF);
        TU_CHECK_EQ_INT(mproc_process_pass_fd(p, 9999), -EBADF);
        /* the object is still usable after the refusals */
        TU_CHECK_OK(mproc_process_pass_fd(p, 2));
        TU_CHECK_OK(mproc_process_start(p));
        TU_CHECK_EQ_INT(tu_join_free(p), 0);
    }
}

static void test_bad_signal_and_timeout(void)
{
    TU_FOR_EACH_METHOD(m) {
        tu_blocked_t b;
        TU_REQUIRE_OK(tu_start_blocked(&b, m, NULL, 3));
        static const int bad_sigs[] = {12345, -1, -SIGTERM, NSIG, NSIG + 1, INT_MAX, INT_MIN};
        for (size_t i = 0; i < sizeof bad_sigs / sizeof bad_sigs[0]; i++) {
            int rc = mproc_process_signal(b.p, bad_sigs[i]);
            if (rc != -EINVAL)
                tu_fail(__FILE__, __LINE__, "signal(%d): %d, want -EINVAL", bad_sigs[i], rc);
        }
        static const int bad_timeouts[] = {-2, -100, INT_MIN};
        for (size_t i = 0; i < sizeof bad_timeouts / sizeof bad_timeouts[0]; i++) {
            int64_t t0 = tu_now_ms();
            int rc = mproc_process_join(b.p, bad_timeouts[i]);
            if (rc != -EINVAL)
                tu_fail(__FILE__, __LINE__, "join(timeout %d): %d, want -EINVAL", bad_timeouts[i],
                        rc);
            TU_CHECK(tu_now_ms() - t0 < 1000); /* refused, not waited on */
        }
        /* none of that disturbed the child */
        TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 1);
        TU_CHECK_EQ_INT(tu_release_join(&b), 3);
        /* bad arguments are still bad after the child was collected */
        TU_CHECK_EQ_INT(mproc_process_join(b.p, -2), -EINVAL);
        tu_blocked_cleanup(&b);
    }
}

static void test_forkserver_bad_args(void)
{
    TU_CHECK_EQ_INT(mproc_forkserver_start(tu_entry_zero, NULL, 1), -EINVAL);
    TU_CHECK_EQ_INT(mproc_forkserver_start(NULL, NULL, 16), -EINVAL);
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), 0);
    TU_CHECK_EQ_INT(tu_count_children(NULL, 0), 0);
    TU_CHECK_OK(mproc_forkserver_stop()); /* not running: 0 */
}

static void test_have_pidfd(void)
{
    int v = mproc_have_pidfd();
    TU_CHECK(v == 0 || v == 1);
    TU_CHECK_EQ_INT(mproc_have_pidfd(), v); /* stable */
}

static void test_log_and_strerror_robust(void)
{
    mproc_set_log(NULL, NULL);
    static int dummy;
    mproc_set_log(NULL, &dummy);
    TU_CHECK(mproc_strerror(-EINVAL) != NULL);
    TU_CHECK(mproc_version() != NULL);
}

/* "the library never aborts, exits or prints (unless a log hook was
 * installed)": bad calls and a normal life cycle, with fds 1 and 2 captured,
 * write nothing. */
static void test_library_prints_nothing(void)
{
    fflush(NULL);
    int saved1 = fcntl(1, F_DUPFD_CLOEXEC, 3), saved2 = fcntl(2, F_DUPFD_CLOEXEC, 3);
    int fds[2];
    TU_REQUIRE(saved1 >= 0 && saved2 >= 0);
    if (tu_pipe(fds) != 0) {
        close(saved1);
        close(saved2);
        return;
    }
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[1]);

    int rcs[16], k = 0;
    mproc_process_t *p = NULL;
    rcs[k++] = mproc_process_create(NULL, tu_entry_zero, NULL, 0, NULL);
    rcs[k++] = mproc_process_create(&p, NULL, NULL, 0, NULL);
    rcs[k++] = mproc_process_start(NULL);
    rcs[k++] = mproc_set_start_method((mproc_start_method_t)99);
    rcs[k++] = mproc_set_fork_policy((mproc_fork_policy_t)99);
    rcs[k++] = mproc_forkserver_start(NULL, NULL, 3);
    for (int mi = 0; mi < TU_NMETHODS; mi++) {
        mproc_process_opts_t o = {NULL, tu_methods[mi], 0};
        p = NULL;
        int rc = mproc_process_create(&p, tu_entry_zero, NULL, 0, &o);
        if (rc == 0) {
            mproc_process_join(p, 0);     /* not started */
            mproc_process_pass_fd(p, -3); /* invalid */
            rc = mproc_process_start(p);
            if (rc == 0) {
                mproc_process_signal(p, 12345);
                mproc_process_join(p, -5);
                mproc_process_join(p, TU_T_MS);
                mproc_process_signal(p, SIGTERM); /* collected: -ESRCH */
                mproc_process_start(p);           /* twice */
            }
            mproc_process_free(p);
        }
        rcs[k++] = rc;
    }
    int src = mproc_forkserver_stop(); /* the helper may hold the pipe */
    mproc_strerror(-99999);

    fflush(NULL);
    dup2(saved1, 1);
    dup2(saved2, 2);
    close(saved1);
    close(saved2);
    char buf[512];
    ssize_t n = tu_read_all(fds[0], buf, sizeof buf - 1, TU_T_MS);
    close(fds[0]);
    TU_CHECK_OK(src);
    TU_CHECK_EQ_INT(n, 0);
    if (n > 0) {
        buf[n] = '\0';
        fprintf(stderr, "    captured: \"%s\"\n", buf);
    }
    for (int i = 0; i < 6; i++)
        TU_CHECK(rcs[i] < 0);
    for (int i = 6; i < k; i++)
        TU_CHECK_OK(rcs[i]);
}

static const tu_case_t cases[] = {
    TU_CASE(test_defaults),
    TU_CASE(test_create_bad_args),
    TU_CASE(test_null_process),
    TU_CASE(test_exitcode_null_out),
    TU_CASE(test_start_method_values),
    TU_CASE(test_fork_policy_values),
    TU_CASE(test_pass_fd_bad),
    TU_CASE(test_bad_signal_and_timeout),
    TU_CASE(test_forkserver_bad_args),
    TU_CASE(test_have_pidfd),
    TU_CASE(test_log_and_strerror_robust),
    TU_CASE(test_library_prints_nothing),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
