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
    int go_r;  /* a byte here makes the intermediate exit(0); -1: it blocks until killed */
    int close_fds[3];
} mid_ctx_t;

static int intermediate(void *vctx)
{
    mid_ctx_t *c = vctx;
    for (int i = 0; i < 3; i++)
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
    if (c->go_r < 0) {
        for (;;)
            pause();
    }
    char ch;
    if (tu_read_full(c->go_r, &ch, 1, TU_T_MS) != 1)
        return 11;
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
        ssize_t n = tu_read_full(rep_r, &m, sizeof m, TU_T_MS);
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

/* The scene: the test, a raw-forked intermediate, its mproc child. */
enum {
    DAEMON = 1,       /* the child is a daemon */
    CHILD_WAITS = 2,  /* the child exits when released (else it blocks forever) */
    PARENT_EXITS = 4, /* the intermediate exit(0)s when let go (else it blocks) */
};

typedef struct {
    pid_t ipid; /* the intermediate */
    int ipidfd;
    int rep_r;        /* the messages of both */
    int rel_w;        /* CHILD_WAITS: releases the child */
    int go_w;         /* PARENT_EXITS: lets the intermediate go */
    msg_t mid, child; /* their hello messages */
    int cfd;          /* pidfd of the child, or -1 */
} scene_t;

/* Set the scene up (flags: DAEMON | CHILD_WAITS | PARENT_EXITS) and read the
 * hellos. 0, or -1 with everything cleaned up. */
static int scene_start(scene_t *s, mproc_start_method_t m, int flags)
{
    tu_context("method=%s", tu_method_name(m));
    int rep[2], rel[2] = {-1, -1}, go[2] = {-1, -1};
    if (tu_pipe(rep) != 0)
        return -1;
    if (((flags & CHILD_WAITS) && tu_pipe(rel) != 0) ||
        ((flags & PARENT_EXITS) && tu_pipe(go) != 0)) {
        int *all[] = {&rep[0], &rep[1], &rel[0], &rel[1], &go[0], &go[1]};
        for (int i = 0; i < 6; i++)
            tu_close(all[i]);
        return -1;
    }
    mid_ctx_t c = {m, !!(flags & DAEMON), rep[1], rel[0], go[0], {rep[0], rel[1], go[1]}};
    s->ipidfd = -1;
    s->ipid = tu_fork(intermediate, &c, &s->ipidfd);
    close(rep[1]);
    tu_close(&rel[0]);
    tu_close(&go[0]);
    s->rep_r = rep[0];
    s->rel_w = rel[1];
    s->go_w = go[1];
    s->cfd = -1;
    if (!TU_CHECK(s->ipid > 0) || read_hello(s->rep_r, &s->mid, &s->child) != 0) {
        tu_kill_child(s->ipid, s->ipidfd);
        tu_close(&s->rep_r);
        tu_close(&s->rel_w);
        tu_close(&s->go_w);
        return -1;
    }
    s->cfd = tu_pidfd_open(s->child.pid);
    TU_CHECK(s->cfd >= 0);
    return 0;
}

/* Write one byte to *fd (rel_w or go_w) and close it. */
static void send_byte(int *fd)
{
    TU_CHECK_OK(tu_write_full(*fd, "x", 1));
    tu_close(fd);
}

/* Wait for pidfd's process (not necessarily our child) to die, and reap it
 * if it ended up as our zombie; if it does not, fail ("<what> <pid> still
 * alive N ms after <after>") and SIGKILL it. */
static void expect_gone(int pidfd, pid_t pid, const char *what, const char *after)
{
    if (pidfd < 0)
        return;
    int64_t t0 = tu_now_ms();
    if (tu_wait_readable(pidfd, TU_T_MS) != 1) {
        tu_fail(__FILE__, __LINE__, "%s %d still alive %lld ms after %s", what, (int)pid,
                (long long)(tu_now_ms() - t0), after);
        kill(pid, SIGKILL); /* fail fast from here on */
        tu_wait_readable(pidfd, TU_T_MS);
    }
    tu_try_reap(pid, NULL);
}

/* Reap the child if it is our zombie; nothing more arrives on the report
 * pipe, which everyone closed; close our ends. */
static void scene_end(scene_t *s)
{
    if (s->cfd >= 0) {
        tu_try_reap(s->child.pid, NULL);
        tu_close(&s->cfd);
    }
    char buf[64];
    TU_CHECK_EQ_INT(tu_read_all(s->rep_r, buf, sizeof buf, TU_T_MS), 0);
    tu_close(&s->rep_r);
    tu_close(&s->rel_w);
    tu_close(&s->go_w);
}

/* ------------------------------------------------------------------ cases */

static void daemon_dies_with_killed_parent(mproc_start_method_t m)
{
    scene_t s;
    if (scene_start(&s, m, DAEMON) != 0)
        return;
    int hfd = -1;
    if (m == MPROC_START_FORKSERVER) {
        TU_CHECK(s.mid.helper > 0);
        if (s.mid.helper > 0) {
            hfd = tu_pidfd_open(s.mid.helper);
            TU_CHECK(hfd >= 0);
        }
    }

    TU_CHECK_EQ_INT(kill(s.ipid, SIGKILL), 0);
    int status = 0;
    TU_CHECK_OK(tu_wait_child(s.ipid, s.ipidfd, TU_T_MS, &status));
    TU_CHECK_EQ_INT(status, -SIGKILL);

    expect_gone(s.cfd, s.child.pid, "daemon child", "its parent was SIGKILLed");
    /* the helper lost its only client: it must go too */
    expect_gone(hfd, s.mid.helper, "forkserver helper", "its owner was SIGKILLed");
    tu_close(&hfd);
    scene_end(&s);
}
TU_DEFINE_METHOD_CASES(daemon_dies_with_killed_parent)

static void nondaemon_joined_at_exit(mproc_start_method_t m)
{
    scene_t s;
    if (scene_start(&s, m, CHILD_WAITS | PARENT_EXITS) != 0)
        return;
    /* let the intermediate exit: it must wait for its non-daemon child */
    send_byte(&s.go_w);
    TU_CHECK_EQ_INT(tu_wait_readable(s.ipidfd, 300), 0);
    if (s.cfd >= 0)
        TU_CHECK_EQ_INT(tu_wait_readable(s.cfd, 0), 0); /* the child is untouched */
    char st = 0;
    TU_CHECK_EQ_INT(tu_proc_stat(s.ipid, NULL, &st), 0);
    TU_CHECK(st != 'Z');

    /* release the child: now the intermediate completes its exit */
    send_byte(&s.rel_w);
    msg_t done;
    TU_CHECK_EQ_INT(tu_read_full(s.rep_r, &done, sizeof done, TU_T_MS), (long long)sizeof done);
    TU_CHECK_EQ_INT(done.kind, 'D');
    int status = -1;
    TU_CHECK_OK(tu_wait_child(s.ipid, s.ipidfd, TU_T_MS, &status));
    TU_CHECK_EQ_INT(status, 0);
    if (s.cfd >= 0)
        TU_CHECK_EQ_INT(tu_wait_readable(s.cfd, TU_T_MS), 1);
    scene_end(&s);
}
TU_DEFINE_METHOD_CASES(nondaemon_joined_at_exit)

static void daemon_killed_at_exit(mproc_start_method_t m)
{
    scene_t s;
    if (scene_start(&s, m, DAEMON | PARENT_EXITS) != 0)
        return;
    send_byte(&s.go_w);
    /* the parent does not wait for a daemon child: it exits promptly */
    int status = -1;
    TU_CHECK_OK(tu_wait_child(s.ipid, s.ipidfd, TU_T_MS, &status));
    TU_CHECK_EQ_INT(status, 0);
    expect_gone(s.cfd, s.child.pid, "daemon child", "its parent's exit(0)");
    scene_end(&s);
}
TU_DEFINE_METHOD_CASES(daemon_killed_at_exit)

/* In the parent itself: a daemon child is still an ordinary child while
 * the parent lives (join, exit code). */
static void test_daemon_child_joinable(void)
{
    TU_FOR_EACH_METHOD(m) {
        mproc_process_opts_t o = {"d", m, 1};
        tu_blocked_t b;
        TU_REQUIRE_OK(tu_start_blocked(&b, m, &o, 33));
        TU_CHECK(mproc_process_is_daemon(b.p) != 0);
        TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 1);
        TU_CHECK_EQ_INT(tu_release_join(&b), 33);
        tu_blocked_cleanup(&b);
    }
}

static const tu_case_t cases[] = {
    TU_METHOD_CASES(daemon_dies_with_killed_parent),
    TU_METHOD_CASES(nondaemon_joined_at_exit),
    TU_METHOD_CASES(daemon_killed_at_exit),
    TU_CASE(test_daemon_child_joinable),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
