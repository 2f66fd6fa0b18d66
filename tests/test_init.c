/*
 * test_init.c - a spawned child (or forkserver helper) whose main() does not
 * call mproc_init: the parent's start reports MPROC_ENOINIT, and every mproc
 * call in that child fails with MPROC_ENOINIT (so it cannot start children
 * of its own by accident).
 *
 * The test sets TU_SKIP_INIT in its environment before starting a child;
 * the spawned child inherits it, and its main() then behaves like a program
 * that forgot mproc_init.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

/* What a child without mproc_init reports: the codes its mproc calls got. */
typedef struct {
    int create_rc;
    int start_rc;
    int fs_start_rc;
    int set_method_rc;
} noinit_report_t;

static int main_without_init(void)
{
    const char *fdstr = getenv("TU_REPORT_FD");
    if (!fdstr)
        return 0; /* e.g. a forkserver helper started with TU_SKIP_INIT set */
    int fd = atoi(fdstr);
    noinit_report_t r = {1, 1, 1, 1};
    mproc_process_opts_t o = {NULL, MPROC_START_FORK, 0};
    mproc_process_t *p = NULL;
    r.create_rc = mproc_process_create(&p, tu_entry_zero, NULL, 0, &o);
    if (r.create_rc == 0) {
        r.start_rc = mproc_process_start(p);
        if (r.start_rc == 0)
            mproc_process_join(p, TU_T_MS);
        mproc_process_free(p);
    }
    r.fs_start_rc = mproc_forkserver_start(NULL, NULL, 0);
    if (r.fs_start_rc == 0)
        mproc_forkserver_stop();
    r.set_method_rc = mproc_set_start_method(MPROC_START_SPAWN);
    tu_write_full(fd, &r, sizeof r);
    return 0;
}

static void test_spawn_child_without_init(void)
{
    int rp[2];
    TU_REQUIRE(tu_pipe(rp) == 0);
    char buf[32];
    snprintf(buf, sizeof buf, "%d", rp[1]);
    setenv("TU_SKIP_INIT", "1", 1);
    setenv("TU_REPORT_FD", buf, 1);
    mproc_process_t *p;
    int src = tu_start(&p, MPROC_START_SPAWN, tu_entry_zero, NULL, 0, &rp[1], 1);
    unsetenv("TU_SKIP_INIT");
    unsetenv("TU_REPORT_FD");
    close(rp[1]);
    TU_CHECK_EQ_INT(src, MPROC_ENOINIT); /* (tu_start checked that it has no pid) */
    if (src == 0)
        tu_join_free(p);
    noinit_report_t r;
    ssize_t n = tu_read_full(rp[0], &r, sizeof r, TU_T_MS);
    close(rp[0]);
    if (TU_CHECK_EQ_INT(n, (long long)sizeof r)) {
        TU_CHECK_EQ_INT(r.create_rc, MPROC_ENOINIT);
        if (r.create_rc == 0)
            TU_CHECK_EQ_INT(r.start_rc, MPROC_ENOINIT);
        TU_CHECK_EQ_INT(r.fs_start_rc, MPROC_ENOINIT);
        TU_CHECK_EQ_INT(r.set_method_rc, MPROC_ENOINIT);
    }
    /* and the parent is fine afterwards */
    TU_CHECK_EQ_INT(tu_run(MPROC_START_SPAWN, tu_entry_zero, NULL, 0), 0);
}

static void test_forkserver_helper_without_init(void)
{
    setenv("TU_SKIP_INIT", "1", 1);
    int rc = mproc_forkserver_start(NULL, NULL, 0);
    int64_t t0 = tu_now_ms();
    mproc_process_t *p;
    int src = tu_start(&p, MPROC_START_FORKSERVER, tu_entry_zero, NULL, 0, NULL, 0);
    int64_t dt = tu_now_ms() - t0;
    unsetenv("TU_SKIP_INIT");
    TU_CHECK(rc == MPROC_ENOINIT || rc == MPROC_ESERVER);
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), 0);
    TU_CHECK(src == MPROC_ENOINIT || src == MPROC_ESERVER);
    TU_CHECK(dt < 5000);
    if (src == 0)
        tu_join_free(p);
    /* with a main that does call mproc_init, the helper comes up */
    TU_CHECK_OK(mproc_forkserver_start(NULL, NULL, 0));
    TU_CHECK(mproc_forkserver_pid() > 0);
}

static const tu_case_t cases[] = {
    TU_CASE(test_spawn_child_without_init),
    TU_CASE(test_forkserver_helper_without_init),
    TU_END,
};

int main(int argc, char **argv)
{
    if (getenv("TU_SKIP_INIT"))
        return main_without_init();
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
