/*
 * test_daemon.c - what happens to children when their parent goes away.
 *
 * A raw-forked intermediate process plays the parent: it starts an mproc
 * child and then is SIGKILLed, or exits normally. Daemon children die with
 * their parent however it exits; non-daemon children are joined by the
 * parent's normal exit. The test process is a child subreaper, so orphans
 * come back to it and can be observed and reaped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

#define T_MS 10000

typedef struct {
    char kind; /* 'M' from the intermediate, 'C' from the child, 'D' child done */
    pid_t pid;
    pid_t helper;
} msg_t;

/* ------------------------------------------------------------------ entries */

typedef struct {
    int rep_w;
    int rel_r; /* -1: block forever */
    int code;
} child_arg_t;

static int entry_child(const void *arg, size_t len)
{
    child_arg_t a;
    if (len != sizeof a)
        return 250;
    memcpy(&a, arg, sizeof a);
    msg_t m = {'C', getpid(), 0};
    if (tu_write_full(a.rep_w, &m, sizeof m) != 0)
        return 251;
    if (a.rel_r < 0) {
        for (;;)
            pause();
    }
    char c;
    ssize_t n;
    do
        n = read(a.rel_r, &c, 1);
    while (n < 0 && errno == EINTR);
    m.kind = 'D';
    tu_write_full(a.rep_w, &m, sizeof m);
    return n == 1 ? a.code : 252;
}

/* ------------------------------------------------------------------ intermediates */

typedef struct {
    mproc_start_method_t m;
    int daemon;
    int rep_w; /* to the test */
    int rel_r; /* for the child, -1: child blocks forever */
    int go_r;  /* the intermediate waits for a byte here before leaving, -1: no */
    int how;   /* 0: block forever (to be killed), 1: exit(0) */
    int close_fds[4];
} mid_ctx_t;

static int intermediate(void *vctx)
{
    mid_ctx_t *c = vctx;
    for (int i = 0; i < 4; i++)
        if (c->close_fds[i] >= 0)
            close(c->close_fds[i]);
    child_arg_t a = {c->rep_w, c->rel_r, 17};
    mproc_process_opts_t o = {"mp-kid", c->m, c->daemon};
    mproc_process_t *p = NULL;
    int rc = mproc_process_create(&p, entry_child, &a, sizeof a, &o);
    if (rc == 0)
        rc = mproc_process_pass_fd(p, c->rep_w);
    if (rc == 0 && c->rel_r >= 0)
        rc = mproc_process_pass_fd(p, c->rel_r);
    if (rc == 0)
        rc = mproc_process_start(p);
    if (rc != 0) {
        fprintf(stderr, "intermediate: start failed: %d (%s)\n", rc, mproc_strerror(rc));
        return 10;
    }
    msg_t m = {'M', mproc_process_pid(p), mproc_forkserver_pid()};
    tu_write_full(c->rep_w, &m, sizeof m);
    if (c->go_r >= 0) {
        char ch;
        if (tu_read_full(c->go_r, &ch, 1, T_MS) != 1)
            return 11;
    }
    if (c->how == 0) {
        for (;;)
            pause();
    }
    /* a normal exit with the process object still alive: the library's exit
     * path deals with the child */
    exit(0);
}

/* ------------------------------------------------------------------ helpers */

/* Read the intermediate's 'M' and the child's 'C' messages, in any order. */
static int read_hello(int rep_r, msg_t *mid, msg_t *child)
{
    mid->kind = child->kind = 0;
    for (int i = 0; i < 2; i++) {
        msg_t m;
        ssize_t n = tu_read_full(rep_r, &m, sizeof m, T_MS);
        if (n != (ssize_t)sizeof m) {
            tu_fail(__FILE__, __LINE__, "no hello message #%d (%zd)", i, n);
            return -1;
        }
        if (m.kind == 'M')
            *mid = m;
        else if (m.kind == 'C')
            *child = m;
    }
    if (mid->kind != 'M' || child->kind != 'C') {
        tu_fail(__FILE__, __LINE__, "bad hello messages");
        return -1;
    }
    if (!TU_CHECK_EQ_INT(mid->pid, child->pid))
        return -1;
    return 0;
}

/* Wait for a process (not necessarily our child) to die, then reap it if it
 * ended up as our zombie. */
static int wait_gone(int pidfd, pid_t pid, int timeout_ms)
{
    int r = tu_wait_readable(pidfd, timeout_ms);
    if (r != 1)
        return -1;
    tu_try_reap(pid, NULL);
    return 0;
}

/* ------------------------------------------------------------------ cases */

static void daemon_parent_killed(mproc_start_method_t m)
{
    tu_context("method=%s", tu_method_name(m));
    int rep[2];
    TU_REQUIRE(tu_pipe(rep) == 0);
    mid_ctx_t c = {m, 1, rep[1], -1, -1, 0, {rep[0], -1, -1, -1}};
    int ipidfd = -1;
    pid_t ipid = tu_fork(intermediate, &c, &ipidfd);
    close(rep[1]);
    TU_REQUIRE(ipid > 0);
    msg_t mid, child;
    if (read_hello(rep[0], &mid, &child) != 0) {
        tu_kill_child(ipid, ipidfd);
        close(rep[0]);
        return;
    }
    int cfd = tu_pidfd_open(child.pid);
    TU_CHECK(cfd >= 0);
    int hfd = -1;
    if (m == MPROC_START_FORKSERVER) {
        TU_CHECK(mid.helper > 0);
        if (mid.helper > 0) {
            hfd = tu_pidfd_open(mid.helper);
            TU_CHECK(hfd >= 0);
        }
    }

    TU_CHECK_EQ_INT(kill(ipid, SIGKILL), 0);
    int status = 0;
    TU_CHECK_OK(tu_wait_child(ipid, ipidfd, T_MS, &status));
    TU_CHECK_EQ_INT(status, -SIGKILL);

    if (cfd >= 0) {
        int64_t t0 = tu_now_ms();
        int r = tu_wait_readable(cfd, T_MS);
        if (r != 1) {
            tu_fail(__FILE__, __LINE__,
                    "daemon child %d still alive %lld ms after its parent "
                    "was SIGKILLed",
                    (int)child.pid, (long long)(tu_now_ms() - t0));
            kill(child.pid, SIGKILL); /* fail fast from here on */
            tu_wait_readable(cfd, T_MS);
        }
    }
    if (hfd >= 0) {
        /* the helper lost its only client: it must go too */
        if (wait_gone(hfd, mid.helper, T_MS) != 0) {
            tu_fail(__FILE__, __LINE__,
                    "forkserver helper %d still alive after its owner was "
                    "SIGKILLed",
                    (int)mid.helper);
            kill(mid.helper, SIGKILL);
            wait_gone(hfd, mid.helper, T_MS);
        }
        close(hfd);
    }
    if (cfd >= 0) {
        tu_try_reap(child.pid, NULL);
        close(cfd);
    }
    /* nothing more arrives, and the pipe is closed by everyone */
    char buf[64];
    TU_CHECK_EQ_INT(tu_read_all(rep[0], buf, sizeof buf, T_MS), 0);
    close(rep[0]);
}

static void test_daemon_dies_with_killed_parent_fork(void)
{
    daemon_parent_killed(MPROC_START_FORK);
}

static void test_daemon_dies_with_killed_parent_spawn(void)
{
    daemon_parent_killed(MPROC_START_SPAWN);
}

static void test_daemon_dies_with_killed_parent_forkserver(void)
{
    daemon_parent_killed(MPROC_START_FORKSERVER);
}

static void nondaemon_joined_at_exit(mproc_start_method_t m, int how)
{
    tu_context("method=%s", tu_method_name(m));
    int rep[2], rel[2], go[2];
    TU_REQUIRE(tu_pipe(rep) == 0);
    TU_REQUIRE(tu_pipe(rel) == 0);
    TU_REQUIRE(tu_pipe(go) == 0);
    mid_ctx_t c = {m, 0, rep[1], rel[0], go[0], how, {rep[0], rel[1], go[1], -1}};
    int ipidfd = -1;
    pid_t ipid = tu_fork(intermediate, &c, &ipidfd);
    close(rep[1]);
    close(rel[0]);
    close(go[0]);
    TU_REQUIRE(ipid > 0);
    msg_t mid, child;
    if (read_hello(rep[0], &mid, &child) != 0) {
        tu_kill_child(ipid, ipidfd);
        close(rep[0]);
        close(rel[1]);
        close(go[1]);
        return;
    }
    int cfd = tu_pidfd_open(child.pid);
    TU_CHECK(cfd >= 0);
    /* let the intermediate exit: it must wait for its non-daemon child */
    TU_CHECK_OK(tu_write_full(go[1], "g", 1));
    close(go[1]);
    TU_CHECK_EQ_INT(tu_wait_readable(ipidfd, 300), 0);
    if (cfd >= 0)
        TU_CHECK_EQ_INT(tu_wait_readable(cfd, 0), 0); /* the child is untouched */
    char st = 0;
    TU_CHECK_EQ_INT(tu_proc_stat(ipid, NULL, &st), 0);
    TU_CHECK(st != 'Z');

    /* release the child: now the intermediate completes its exit */
    TU_CHECK_OK(tu_write_full(rel[1], "r", 1));
    close(rel[1]);
    msg_t done;
    TU_CHECK_EQ_INT(tu_read_full(rep[0], &done, sizeof done, T_MS), (long long)sizeof done);
    TU_CHECK_EQ_INT(done.kind, 'D');
    int status = -1;
    TU_CHECK_OK(tu_wait_child(ipid, ipidfd, T_MS, &status));
    TU_CHECK_EQ_INT(status, 0);
    if (cfd >= 0) {
        TU_CHECK_EQ_INT(tu_wait_readable(cfd, T_MS), 1);
        tu_try_reap(child.pid, NULL);
        close(cfd);
    }
    char buf[64];
    TU_CHECK_EQ_INT(tu_read_all(rep[0], buf, sizeof buf, T_MS), 0);
    close(rep[0]);
}

static void test_nondaemon_joined_at_exit_fork(void)
{
    nondaemon_joined_at_exit(MPROC_START_FORK, 1);
}

static void test_nondaemon_joined_at_exit_spawn(void)
{
    nondaemon_joined_at_exit(MPROC_START_SPAWN, 1);
}

static void test_nondaemon_joined_at_exit_forkserver(void)
{
    nondaemon_joined_at_exit(MPROC_START_FORKSERVER, 1);
}

static void daemon_killed_at_exit(mproc_start_method_t m)
{
    tu_context("method=%s", tu_method_name(m));
    int rep[2], go[2];
    TU_REQUIRE(tu_pipe(rep) == 0);
    TU_REQUIRE(tu_pipe(go) == 0);
    mid_ctx_t c = {m, 1, rep[1], -1, go[0], 1, {rep[0], go[1], -1, -1}};
    int ipidfd = -1;
    pid_t ipid = tu_fork(intermediate, &c, &ipidfd);
    close(rep[1]);
    close(go[0]);
    TU_REQUIRE(ipid > 0);
    msg_t mid, child;
    if (read_hello(rep[0], &mid, &child) != 0) {
        tu_kill_child(ipid, ipidfd);
        close(rep[0]);
        close(go[1]);
        return;
    }
    int cfd = tu_pidfd_open(child.pid);
    TU_CHECK(cfd >= 0);
    TU_CHECK_OK(tu_write_full(go[1], "g", 1));
    close(go[1]);
    /* the parent does not wait for a daemon child: it exits promptly */
    int status = -1;
    TU_CHECK_OK(tu_wait_child(ipid, ipidfd, T_MS, &status));
    TU_CHECK_EQ_INT(status, 0);
    if (cfd >= 0) {
        if (wait_gone(cfd, child.pid, T_MS) != 0) {
            tu_fail(__FILE__, __LINE__, "daemon child %d survived its parent's exit(0)",
                    (int)child.pid);
            kill(child.pid, SIGKILL);
            wait_gone(cfd, child.pid, T_MS);
        }
        close(cfd);
    }
    char buf[64];
    TU_CHECK_EQ_INT(tu_read_all(rep[0], buf, sizeof buf, T_MS), 0);
    close(rep[0]);
}

static void test_daemon_killed_at_exit_fork(void)
{
    daemon_killed_at_exit(MPROC_START_FORK);
}

static void test_daemon_killed_at_exit_spawn(void)
{
    daemon_killed_at_exit(MPROC_START_SPAWN);
}

static void test_daemon_killed_at_exit_forkserver(void)
{
    daemon_killed_at_exit(MPROC_START_FORKSERVER);
}

/* In the parent itself: a daemon child is still an ordinary child while
 * the parent lives (join, exit code). */
static void test_daemon_child_joinable(void)
{
    for (int mi = 0; mi < TU_NMETHODS; mi++) {
        mproc_start_method_t m = tu_methods[mi];
        tu_context("method=%s", tu_method_name(m));
        mproc_process_opts_t o = {"d", m, 1};
        tu_blocked_t b;
        TU_REQUIRE_OK(tu_start_blocked(&b, m, &o, 33));
        TU_CHECK(mproc_process_is_daemon(b.p) != 0);
        TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 1);
        TU_CHECK_OK(tu_release(&b));
        TU_CHECK_OK(mproc_process_join(b.p, T_MS));
        int code = -1;
        TU_CHECK_OK(mproc_process_exitcode(b.p, &code));
        TU_CHECK_EQ_INT(code, 33);
        tu_blocked_cleanup(&b);
    }
}

static const tu_case_t cases[] = {
    TU_CASE(test_daemon_dies_with_killed_parent_fork),
    TU_CASE(test_daemon_dies_with_killed_parent_spawn),
    TU_CASE(test_daemon_dies_with_killed_parent_forkserver),
    TU_CASE(test_nondaemon_joined_at_exit_fork),
    TU_CASE(test_nondaemon_joined_at_exit_spawn),
    TU_CASE(test_nondaemon_joined_at_exit_forkserver),
    TU_CASE(test_daemon_killed_at_exit_fork),
    TU_CASE(test_daemon_killed_at_exit_spawn),
    TU_CASE(test_daemon_killed_at_exit_forkserver),
    TU_CASE(test_daemon_child_joinable),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
