/*
 * test_tracker.c - the resource tracker (P7) and mproc_clean(): a named
 * segment whose creators all died (SIGKILL included) is unlinked; one still
 * used by a live process, of this tree or not, is not (and goes once its
 * last user is gone); a creator that unlinks leaves nothing; the tracker's
 * pid, start and stop; it ignores SIGTERM, SIGINT and SIGHUP, also right
 * after it started; opens racing a reclaim; mproc_clean() after a tree was
 * killed with its tracker; a live creator's closed segment is not the
 * tracker's to unlink.
 *
 * Waiting for the tracker's asynchronous unlink polls the file with a
 * deadline of a few seconds; everything else waits on pipes, joins and
 * pidfds. Where a child started a tracker of its own (it is not this
 * process's), its exit is awaited through a pidfd opened while the child
 * still held it, and it is reaped if it was reparented to us (the test
 * program is a child subreaper).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/socket.h>
#include <sched.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

#define GONE_MS 5000 /* bound on the tracker's unlink after a death */

/* ------------------------------------------------------------------ helpers */

static void seg_path(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "/dev/shm/mproc-%s", name);
}

static int seg_exists(const char *name)
{
    char p[256];
    struct stat st;
    seg_path(name, p, sizeof p);
    return lstat(p, &st) == 0;
}

/* 1 if some process holds a flock on it, 0 if not, -1 if it is gone. */
static int seg_in_use(const char *name)
{
    char p[256];
    seg_path(name, p, sizeof p);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int busy = flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    close(fd);
    return busy;
}

/* Poll (1 ms steps) until the segment is gone; 1 if it went within ms. */
static int wait_gone(const char *name, int ms)
{
    int64_t end = tu_now_ms() + ms;
    for (;;) {
        if (!seg_exists(name))
            return 1;
        if (tu_now_ms() >= end)
            return 0;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* Process state letter, or 0 if it is gone. */
static char proc_state(pid_t pid)
{
    pid_t pp;
    char st = 0;
    if (tu_proc_stat(pid, &pp, &st) != 0)
        return 0;
    return st;
}

/* ------------------------------------------------------------------ creators */

enum { MODE_BLOCK = 0, MODE_UNLINK = 1, MODE_KEEP = 2 };

typedef struct {
    int report_w;
    int block_r;
    int close_a; /* the parent's ends, closed by a fork child */
    int close_b;
    int is_fork;
    int mode;
    int witness;                   /* also create a second segment */
    char name[MPROC_NAME_MAX + 1]; /* "" : generate one */
} carg_t;

typedef struct {
    int32_t rc;
    int32_t pid;
    int32_t tracker;
    char name[MPROC_NAME_MAX + 1];
    char wname[MPROC_NAME_MAX + 1]; /* the witness, if any */
} crep_t;

/* Creates a named segment (and, with witness, a second one: registered
 * after the first, nobody else ever opens it, so its unlink shows that the
 * creator's death was processed), reports, blocks; MODE_UNLINK: on release,
 * unlinks and closes it and lets go of the tracker. */
static int entry_creator(const void *arg, size_t len)
{
    carg_t a;
    if (len != sizeof a || !arg)
        return 200;
    memcpy(&a, arg, sizeof a);
    if (a.is_fork) {
        close(a.close_a);
        close(a.close_b);
    }
    mproc_shm_t *s = NULL;
    crep_t rep;
    memset(&rep, 0, sizeof rep);
    rep.rc = mproc_shm_create_named(&s, 4096, a.name[0] ? a.name : NULL);
    rep.pid = getpid();
    rep.tracker = mproc_tracker_pid();
    if (rep.rc == 0) {
        snprintf(rep.name, sizeof rep.name, "%s", mproc_shm_name(s));
        int *v = NULL;
        if (mproc_array_create(s, "v", MPROC_INT32, 1, (void **)&v) == 0)
            *v = 4242;
    }
    if (rep.rc == 0 && a.mode == MODE_KEEP)
        rep.rc = mproc_shm_keep(s);
    mproc_shm_t *w = NULL;
    if (rep.rc == 0 && a.witness) {
        rep.rc = mproc_shm_create_named(&w, 4096, NULL);
        if (rep.rc == 0)
            snprintf(rep.wname, sizeof rep.wname, "%s", mproc_shm_name(w));
    }
    if (tu_write_full(a.report_w, &rep, sizeof rep) != 0)
        return 201;
    close(a.report_w);
    if (rep.rc != 0)
        return 202;
    char c;
    ssize_t n;
    do
        n = read(a.block_r, &c, 1);
    while (n < 0 && errno == EINTR);
    if (a.mode != MODE_UNLINK)
        return 203;
    if (mproc_shm_unlink(s) != 0)
        return 204;
    if (mproc_shm_close(s) != 0)
        return 205;
    if (mproc_tracker_stop(TU_T_MS) != 0)
        return 206;
    return 0;
}

typedef struct {
    mproc_process_t *p;
    int report_r;
    int block_w;
    crep_t rep;
    int tpidfd; /* a tracker that is not ours: pidfd, else -1 */
} creator_t;

/* Start a creator and wait for its report. 0 or an error (reported). */
static int creator_start_w(creator_t *c, mproc_start_method_t m, int mode, const char *name,
                           int witness)
{
    memset(c, 0, sizeof *c);
    c->report_r = c->block_w = c->tpidfd = -1;
    int rp[2], bp[2];
    if (tu_pipe(rp) != 0)
        return -EMFILE;
    if (tu_pipe(bp) != 0) {
        close(rp[0]);
        close(rp[1]);
        return -EMFILE;
    }
    carg_t a;
    memset(&a, 0, sizeof a);
    a.report_w = rp[1];
    a.block_r = bp[0];
    a.close_a = rp[0];
    a.close_b = bp[1];
    a.is_fork = m == MPROC_START_FORK;
    a.mode = mode;
    a.witness = witness;
    if (name)
        snprintf(a.name, sizeof a.name, "%s", name);
    mproc_process_opts_t o = {.method = m};
    int rc = mproc_process_create(&c->p, entry_creator, &a, sizeof a, &o);
    if (rc == 0)
        rc = mproc_process_pass_fd(c->p, rp[1]);
    if (rc == 0)
        rc = mproc_process_pass_fd(c->p, bp[0]);
    if (rc == 0)
        rc = mproc_process_start(c->p);
    close(rp[1]);
    close(bp[0]);
    c->report_r = rp[0];
    c->block_w = bp[1];
    if (!TU_CHECK_OK(rc))
        goto fail;
    ssize_t n = tu_read_full(c->report_r, &c->rep, sizeof c->rep, TU_T_MS);
    if (!TU_CHECK_EQ_INT(n, (long long)sizeof c->rep)) {
        rc = -EPROTO;
        goto fail;
    }
    if (!TU_CHECK_OK(c->rep.rc)) {
        rc = c->rep.rc;
        goto fail;
    }
    TU_CHECK(c->rep.tracker > 0); /* a named segment has a tracker */
    if (c->rep.tracker > 0 && c->rep.tracker != mproc_tracker_pid()) {
        c->tpidfd = tu_pidfd_open(c->rep.tracker);
        TU_CHECK(c->tpidfd >= 0);
    }
    return 0;
fail:
    if (c->p) {
        mproc_process_kill(c->p);
        mproc_process_join(c->p, TU_T_MS);
        mproc_process_free(c->p);
        c->p = NULL;
    }
    tu_close(&c->report_r);
    tu_close(&c->block_w);
    return rc ? rc : -EPROTO;
}

/* Join a creator that was sent SIGKILL. */
static void creator_join_killed(creator_t *c)
{
    if (!c->p)
        return;
    TU_CHECK_EQ_INT(tu_join_code(c->p), -SIGKILL);
    TU_CHECK_OK(mproc_process_free(c->p));
    c->p = NULL;
    tu_close(&c->report_r);
    tu_close(&c->block_w);
}

static int creator_start(creator_t *c, mproc_start_method_t m, int mode, const char *name)
{
    return creator_start_w(c, m, mode, name, 0);
}

/* SIGKILL the creator and join it. */
static void creator_kill(creator_t *c)
{
    if (!c->p)
        return;
    TU_CHECK_OK(mproc_process_kill(c->p));
    creator_join_killed(c);
}

/* Release a MODE_UNLINK creator and join it: exit 0 expected. */
static void creator_release(creator_t *c)
{
    tu_close(&c->block_w);
    TU_CHECK_EQ_INT(tu_join_free(c->p), 0);
    c->p = NULL;
    tu_close(&c->report_r);
}

/* A tracker of the creator's own (not ours): it must exit once the creator
 * is gone (nobody holds its line) and what it tracked is unused; reap it if
 * it came to us. */
static void creator_await_tracker(creator_t *c)
{
    if (c->tpidfd < 0)
        return;
    int r = tu_wait_readable(c->tpidfd, TU_T_MS);
    if (!TU_CHECK_EQ_INT(r, 1))
        tu_fail(__FILE__, __LINE__, "the creator's tracker %d did not exit", (int)c->rep.tracker);
    tu_close(&c->tpidfd);
    if (r == 1)
        tu_try_reap(c->rep.tracker, NULL);
}

static void creator_cleanup(creator_t *c)
{
    if (c->p) {
        mproc_process_kill(c->p);
        mproc_process_join(c->p, TU_T_MS);
        mproc_process_free(c->p);
        c->p = NULL;
    }
    tu_close(&c->report_r);
    tu_close(&c->block_w);
    if (c->tpidfd >= 0) {
        if (tu_wait_readable(c->tpidfd, TU_T_MS) == 1)
            tu_try_reap(c->rep.tracker, NULL);
        tu_close(&c->tpidfd);
    }
    char p[256];
    if (c->rep.name[0] && seg_exists(c->rep.name)) {
        seg_path(c->rep.name, p, sizeof p);
        unlink(p);
    }
    if (c->rep.wname[0] && seg_exists(c->rep.wname)) {
        seg_path(c->rep.wname, p, sizeof p);
        unlink(p);
    }
}

/* ------------------------------------------------------------------ cases */

/* (1) A creator is SIGKILLed: its segment is unlinked within a few seconds. */
static void test_unlinked_after_sigkill(void)
{
    TU_FOR_EACH_METHOD(m) {
        creator_t c;
        if (creator_start(&c, m, MODE_BLOCK, NULL) != 0)
            continue;
        TU_CHECK(seg_exists(c.rep.name));
        TU_CHECK_EQ_INT(seg_in_use(c.rep.name), 1);
        int64_t t0 = tu_now_ms();
        creator_kill(&c);
        int gone = wait_gone(c.rep.name, GONE_MS);
        TU_CHECK(gone);
        if (gone)
            printf("  %s: unlinked %lld ms after the kill\n", tu_method_name(m),
                   (long long)(tu_now_ms() - t0));
        creator_await_tracker(&c);
        creator_cleanup(&c);
    }
}

/* The same, many times over, with creators that have a tracker of their
 * own (spawn, or fork from a parent without one): the tracker learns of
 * the death by EOF on its line as well as by the pidfd, whichever first.
 * The tracker exits once the creator is gone; the segment goes then, or
 * (if the EOF came before the dying creator's own lock was released, so
 * that it still looked in use) a little later, by the copy of the tracker
 * that re-checks it. */
static void test_unlinked_after_sigkill_repeated(void)
{
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS)); /* fork creators: a tracker of their own */
    int late = 0, rounds = 0;
    for (int i = 0; i < 20; i++) {
        mproc_start_method_t m = i % 2 ? MPROC_START_SPAWN : MPROC_START_FORK;
        tu_context("round %d method=%s", i, tu_method_name(m));
        creator_t c;
        if (creator_start(&c, m, MODE_BLOCK, NULL) != 0)
            break;
        rounds++;
        TU_CHECK(c.tpidfd >= 0);
        creator_kill(&c);
        creator_await_tracker(&c);
        if (seg_exists(c.rep.name)) {
            late++;
            TU_CHECK(wait_gone(c.rep.name, GONE_MS));
        }
        creator_cleanup(&c);
    }
    tu_context(NULL);
    printf("  %d of %d segments went after their tracker had exited\n", late, rounds);
}

/* Several creators of one tree, two per start method, killed at once: all
 * share this process's tracker (fork children inherit its line, spawn and
 * forkserver children are handed it), every segment goes, and the tracker
 * lives on. */
static void test_unlinked_after_sigkill_many(void)
{
    TU_REQUIRE_OK(mproc_tracker_start());
    pid_t tpid = mproc_tracker_pid();
    TU_REQUIRE(tpid > 0);
    enum { N = 2 * TU_NMETHODS };
    creator_t c[N];
    int n = 0;
    for (; n < N; n++) {
        tu_context("creator %d, method=%s", n, tu_method_name(tu_methods[n % TU_NMETHODS]));
        if (creator_start(&c[n], tu_methods[n % TU_NMETHODS], MODE_BLOCK, NULL) != 0)
            break;
        TU_CHECK_EQ_INT(c[n].rep.tracker, tpid); /* one tracker for the tree */
    }
    tu_context(NULL);
    for (int i = 0; i < n; i++)
        TU_CHECK_OK(mproc_process_kill(c[i].p));
    for (int i = 0; i < n; i++)
        creator_join_killed(&c[i]);
    for (int i = 0; i < n; i++)
        TU_CHECK(wait_gone(c[i].rep.name, GONE_MS));
    TU_CHECK_EQ_INT(mproc_tracker_pid(), tpid);
    TU_CHECK(proc_state(tpid) != 0 && proc_state(tpid) != 'Z');
    for (int i = 0; i < n; i++)
        creator_cleanup(&c[i]);
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
}

/* (1b) The parent opened the segment before its creator was killed: the
 * creator's tracker leaves it alone while the parent uses it, and unlinks
 * it once the parent closes it (it retries in-use segments of dead
 * creators). Opening does not start a tracker here. Proof that the
 * creator's death was processed before the check: its witness segment
 * (registered after the first, used by nobody else) was unlinked. */
static void test_kept_while_parent_uses_it(void)
{
    TU_FOR_EACH_METHOD(m) {
        creator_t a;
        if (creator_start_w(&a, m, MODE_BLOCK, NULL, 1) != 0)
            continue;
        mproc_shm_t *h = NULL;
        if (!TU_CHECK_OK(mproc_shm_open(&h, a.rep.name))) {
            creator_cleanup(&a);
            continue;
        }
        TU_CHECK_EQ_INT(mproc_tracker_pid(), 0); /* the creator's tracker owns it */
        int *v = NULL;
        TU_CHECK_OK(mproc_array_open(h, "v", MPROC_INT32, (void **)&v, NULL));
        creator_kill(&a);
        TU_CHECK(wait_gone(a.rep.wname, GONE_MS));
        TU_CHECK(seg_exists(a.rep.name));
        TU_CHECK_EQ_INT(seg_in_use(a.rep.name), 1);
        if (v) {
            TU_CHECK_EQ_INT(*v, 4242);
            *v = 1;
        }
        /* still reachable by name */
        mproc_shm_t *h2 = NULL;
        if (TU_CHECK_OK(mproc_shm_open(&h2, a.rep.name)))
            mproc_shm_close(h2);
        TU_CHECK_OK(mproc_shm_close(h));
        TU_CHECK(wait_gone(a.rep.name, GONE_MS)); /* reclaimed: nobody uses it now */
        creator_await_tracker(&a);                /* and the creator's tracker is done */
        creator_cleanup(&a);
    }
}

/* (2) A creator that unlinks its segment itself: nothing left, exit 0; and
 * the tracker does not touch this process's own segment of the same name
 * made afterwards. */
/* mproc_shm_keep: the creator dies, its death is processed (the witness
 * goes), the kept segment stays; unlinking it is ours. */
static void test_keep(void)
{
    TU_FOR_EACH_METHOD(m) {
        creator_t c;
        if (creator_start_w(&c, m, MODE_KEEP, NULL, 1) != 0)
            continue;
        creator_kill(&c);
        TU_CHECK(wait_gone(c.rep.wname, GONE_MS));
        creator_await_tracker(&c);
        TU_CHECK(seg_exists(c.rep.name));
        mproc_shm_t *s = NULL;
        TU_CHECK_OK(mproc_shm_open(&s, c.rep.name));
        TU_CHECK_OK(mproc_shm_unlink(s));
        mproc_shm_close(s);
        creator_cleanup(&c);
    }
    mproc_shm_t *anon = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&anon, 4096));
    TU_CHECK_EQ_INT(mproc_shm_keep(anon), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_keep(NULL), -EINVAL);
    mproc_shm_close(anon);
}

static void test_creator_unlinks(void)
{
    TU_FOR_EACH_METHOD(m) {
        creator_t c;
        if (creator_start(&c, m, MODE_UNLINK, "t-unl-self") != 0)
            continue;
        TU_CHECK_EQ_STR(c.rep.name, "t-unl-self");
        TU_CHECK(seg_exists("t-unl-self"));
        creator_release(&c);
        TU_CHECK(!seg_exists("t-unl-self"));
        creator_await_tracker(&c);
        /* the name is free; ours is left alone by whatever tracker knew the old one */
        mproc_shm_t *s = NULL;
        if (TU_CHECK_OK(mproc_shm_create_named(&s, 4096, "t-unl-self"))) {
            TU_CHECK(seg_exists("t-unl-self"));
            TU_CHECK_OK(mproc_shm_unlink(s));
            TU_CHECK_OK(mproc_shm_close(s));
        }
        creator_cleanup(&c);
    }
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
}

static int same_exe(pid_t pid)
{
    char a[512] = "", b[512] = "", p[64];
    snprintf(p, sizeof p, "/proc/%d/exe", (int)pid);
    ssize_t na = readlink(p, a, sizeof a - 1);
    ssize_t nb = readlink("/proc/self/exe", b, sizeof b - 1);
    if (na <= 0 || nb <= 0)
        return 0;
    a[na] = b[nb] = '\0';
    return strcmp(a, b) == 0;
}

/* (3) pid, start, stop. */
static void test_pid_and_stop(void)
{
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS)); /* none, or a leftover: 0 */
    TU_CHECK_EQ_INT(mproc_tracker_pid(), 0);
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS)); /* none: 0 */

    /* anonymous segments need no tracker */
    mproc_shm_t *anon = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&anon, 4096));
    TU_CHECK_EQ_INT(mproc_tracker_pid(), 0);
    TU_CHECK_OK(mproc_shm_close(anon));

    /* the first named segment starts it */
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create_named(&s, 4096, "t-pid"));
    pid_t pid = mproc_tracker_pid();
    TU_CHECK(pid > 0);
    TU_CHECK(pid != getpid());
    TU_CHECK_EQ_INT(kill(pid, 0), 0);
    char st = proc_state(pid);
    TU_CHECK(st != 0 && st != 'Z');
    TU_CHECK(same_exe(pid)); /* a spawn of this executable */
    mproc_shm_t *s2 = NULL;
    TU_CHECK_OK(mproc_shm_create_named(&s2, 4096, NULL));
    TU_CHECK_EQ_INT(mproc_tracker_pid(), pid); /* one tracker */

    /* s: closed, not unlinked; s2: still open during the stop. The stop
     * returns once the sweep is done: s is reclaimed, s2 (in use) is left
     * to a copy of the tracker, which re-checks it until it is unused. */
    TU_CHECK_OK(mproc_shm_close(s));
    TU_CHECK(seg_exists("t-pid"));
    char s2name[MPROC_NAME_MAX + 1] = "";
    if (s2)
        snprintf(s2name, sizeof s2name, "%s", mproc_shm_name(s2));
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
    TU_CHECK_EQ_INT(mproc_tracker_pid(), 0);
    errno = 0;
    TU_CHECK_EQ_INT(kill(pid, 0), -1); /* exited and collected */
    TU_CHECK_EQ_INT(errno, ESRCH);
    TU_CHECK(!seg_exists("t-pid")); /* unused: swept */
    if (s2) {
        TU_CHECK(seg_exists(s2name)); /* in use: left alone */
        /* the copy: re-parented to us (a child subreaper) */
        pid_t kids[64], copy = 0;
        int n = tu_count_children(kids, 64), ncopies = 0;
        for (int i = 0; i < n && i < 64; i++) {
            char p[64], comm[32] = "";
            snprintf(p, sizeof p, "/proc/%d/comm", (int)kids[i]);
            FILE *f = fopen(p, "r");
            if (f) {
                if (fgets(comm, sizeof comm, f))
                    comm[strcspn(comm, "\n")] = '\0';
                fclose(f);
            }
            if (strcmp(comm, "mproc-tracker") == 0) {
                copy = kids[i];
                ncopies++;
            }
        }
        TU_CHECK_EQ_INT(ncopies, 1);
        int cfd = copy > 0 ? tu_pidfd_open(copy) : -1;
        if (cfd >= 0)
            TU_CHECK_EQ_INT(tu_wait_readable(cfd, 0), 0); /* still at work */
        TU_CHECK_OK(mproc_shm_close(s2));                 /* not unlinked: now unused */
        if (cfd >= 0) {
            /* it reclaims s2 and leaves */
            TU_CHECK_EQ_INT(tu_wait_readable(cfd, TU_T_MS), 1);
            close(cfd);
            tu_try_reap(copy, NULL);
        }
        TU_CHECK(!seg_exists(s2name));
    }
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));

    /* started explicitly; a new one after a stop */
    TU_CHECK_OK(mproc_tracker_start());
    pid_t pid2 = mproc_tracker_pid();
    TU_CHECK(pid2 > 0);
    TU_CHECK(pid2 != pid);
    TU_CHECK(proc_state(pid2) != 0 && proc_state(pid2) != 'Z');
    s = NULL;
    TU_CHECK_OK(mproc_shm_create_named(&s, 4096, "t-pid2"));
    TU_CHECK_EQ_INT(mproc_tracker_pid(), pid2);
    if (s)
        TU_CHECK_OK(mproc_shm_close(s));
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
    TU_CHECK(!seg_exists("t-pid2"));
    errno = 0;
    TU_CHECK(kill(pid2, 0) == -1 && errno == ESRCH);
}

/* A fork child of ours (sharing our tracker) creates a segment and is
 * SIGKILLed: the segment goes, through the tracker tpid. */
static void cleaned_by(pid_t tpid)
{
    creator_t c;
    if (creator_start(&c, MPROC_START_FORK, MODE_BLOCK, NULL) != 0)
        return;
    TU_CHECK_EQ_INT(c.rep.tracker, tpid); /* not a new tracker */
    creator_kill(&c);
    TU_CHECK(wait_gone(c.rep.name, GONE_MS));
    creator_await_tracker(&c);
    creator_cleanup(&c);
}

static void check_tracker_alive(pid_t tpid)
{
    TU_CHECK_EQ_INT(mproc_tracker_pid(), tpid);
    char st = proc_state(tpid);
    TU_CHECK(st != 0 && st != 'Z');
}

/* (4) SIGTERM, SIGINT and SIGHUP do not stop a running tracker: it still
 * cleans up after a killed creator afterwards, as the same process. The
 * tracker is first shown to be running (it handled a registration and a
 * death); the registration after the signals makes it run again, so the
 * signals were delivered to it before it handled that. */
static void test_ignores_signals(void)
{
    TU_REQUIRE_OK(mproc_tracker_start());
    pid_t tpid = mproc_tracker_pid();
    TU_REQUIRE(tpid > 0);
    cleaned_by(tpid); /* it is up and serving */
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        tu_context("signal %d", sigs[i]);
        TU_CHECK_OK(kill(tpid, sigs[i]));
        cleaned_by(tpid);
        check_tracker_alive(tpid);
    }
    tu_context(NULL);
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
    errno = 0;
    TU_CHECK(kill(tpid, 0) == -1 && errno == ESRCH);
}

/* The same, with the signals sent as soon as mproc_tracker_start returned
 * (a Ctrl-C or a TERM to the process group right after the program made
 * its first named segment): the tracker must not die of them either. */
static void test_ignores_signals_at_start(void)
{
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        tu_context("signal %d", sigs[i]);
        TU_REQUIRE_OK(mproc_tracker_start());
        pid_t tpid = mproc_tracker_pid();
        TU_REQUIRE(tpid > 0);
        TU_CHECK_OK(kill(tpid, sigs[i]));
        cleaned_by(tpid);
        check_tracker_alive(tpid);
        TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
    }
}

/* ------------------------------------------------------------------ an unrelated process */

/* The outsider is this program exec'd afresh (no tie to this tree): it
 * opens NAME, reports, and waits for EOF on fd OUT_BLOCK_FD. */
#define OUT_ENV "MPROC_TEST_TRACKER_OUTSIDER"
#define OUT_REPORT_FD 100
#define OUT_BLOCK_FD 101

static int outsider_main(const char *name)
{
    crep_t rep;
    memset(&rep, 0, sizeof rep);
    mproc_shm_t *s = NULL;
    rep.rc = mproc_shm_open(&s, name);
    rep.pid = getpid();
    rep.tracker = mproc_tracker_pid();
    snprintf(rep.name, sizeof rep.name, "%s", name);
    if (rep.rc == 0) {
        int *v = NULL;
        if (mproc_array_open(s, "v", MPROC_INT32, (void **)&v, NULL) != 0 || *v != 4242)
            rep.rc = -EPROTO;
    }
    if (tu_write_full(OUT_REPORT_FD, &rep, sizeof rep) != 0)
        return 1;
    close(OUT_REPORT_FD);
    char c;
    ssize_t n;
    do
        n = read(OUT_BLOCK_FD, &c, 1);
    while (n < 0 && errno == EINTR);
    if (mproc_shm_close(s) != 0)
        return 2;
    /* nothing it tracks is in use any more: its tracker sweeps and exits */
    if (mproc_tracker_stop(TU_T_MS) != 0)
        return 3;
    return 0;
}

typedef struct {
    int report_w, block_r;
    const char *name;
} out_ctx;

static int exec_outsider(void *vctx)
{
    out_ctx *c = vctx;
    if (dup2(c->report_w, OUT_REPORT_FD) < 0 || dup2(c->block_r, OUT_BLOCK_FD) < 0)
        return 120;
    setenv(OUT_ENV, c->name, 1);
    char *argv[] = {"test_tracker_outsider", NULL};
    execv("/proc/self/exe", argv);
    return 121;
}

/* (5) A process outside the tree keeps a segment alive after all its
 * creators died; when it dies too, the segment goes. */
static void test_unrelated_user_keeps_it(void)
{
    TU_REQUIRE_OK(mproc_tracker_start()); /* fork creators share ours */
    TU_FOR_EACH_METHOD(m) {
        creator_t c;
        if (creator_start_w(&c, m, MODE_BLOCK, NULL, 1) != 0)
            continue;
        int rp[2], bp[2];
        if (tu_pipe(rp) != 0 || tu_pipe(bp) != 0) {
            creator_cleanup(&c);
            break;
        }
        out_ctx oc = {rp[1], bp[0], c.rep.name};
        int opidfd = -1;
        pid_t opid = tu_fork(exec_outsider, &oc, &opidfd);
        close(rp[1]);
        close(bp[0]);
        crep_t orep;
        memset(&orep, 0, sizeof orep);
        ssize_t n = opid > 0 ? tu_read_full(rp[0], &orep, sizeof orep, TU_T_MS) : -1;
        close(rp[0]);
        if (TU_CHECK_EQ_INT(n, (long long)sizeof orep) && TU_CHECK_OK(orep.rc)) {
            TU_CHECK_EQ_INT(orep.pid, opid);
            /* opening does not start a tracker: the creator's keeps it */
            TU_CHECK_EQ_INT(orep.tracker, 0);
        }
        /* the creator dies; its witness going shows that was processed */
        creator_kill(&c);
        TU_CHECK(wait_gone(c.rep.wname, GONE_MS));
        TU_CHECK(seg_exists(c.rep.name));
        TU_CHECK_EQ_INT(seg_in_use(c.rep.name), 1);
        /* the outsider dies as well (SIGKILL): now nobody uses it */
        if (opid > 0) {
            tu_kill_child(opid, opidfd);
            TU_CHECK(wait_gone(c.rep.name, GONE_MS));
        }
        close(bp[1]);
        /* nothing is left for the creator's tracker: it exits */
        creator_await_tracker(&c);
        creator_cleanup(&c);
    }
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
}

/* The same outsider, this time ending normally: it unlinks nothing
 * itself; the dead creator's tracker, which kept the segment while the
 * outsider used it, reclaims it once the outsider is gone. */
static void test_unrelated_user_exits(void)
{
    creator_t c;
    TU_REQUIRE(creator_start(&c, MPROC_START_SPAWN, MODE_BLOCK, NULL) == 0);
    int rp[2], bp[2];
    TU_REQUIRE(tu_pipe(rp) == 0);
    TU_REQUIRE(tu_pipe(bp) == 0);
    out_ctx oc = {rp[1], bp[0], c.rep.name};
    int opidfd = -1;
    pid_t opid = tu_fork(exec_outsider, &oc, &opidfd);
    close(rp[1]);
    close(bp[0]);
    crep_t orep;
    memset(&orep, 0, sizeof orep);
    ssize_t n = opid > 0 ? tu_read_full(rp[0], &orep, sizeof orep, TU_T_MS) : -1;
    close(rp[0]);
    TU_CHECK_EQ_INT(n, (long long)sizeof orep);
    TU_CHECK_OK(orep.rc);
    creator_kill(&c);
    close(bp[1]); /* the outsider closes and exits */
    if (opid > 0) {
        int st = -1;
        TU_CHECK_OK(tu_wait_child(opid, opidfd, TU_T_MS, &st));
        TU_CHECK_EQ_INT(st, 0);
    }
    TU_CHECK(wait_gone(c.rep.name, GONE_MS));
    creator_await_tracker(&c);
    creator_cleanup(&c);
}

/* Opening a name while the tracker reclaims it (its creator just died):
 * either the open fails with -ENOENT, or it succeeds and the segment is
 * then whole, still linked, and stays so while it is open. */
static void test_open_races_reclaim(void)
{
    TU_REQUIRE_OK(mproc_tracker_start());
    int opened = 0, enoent = 0;
    for (int round = 0; round < 20; round++) {
        tu_context("round %d", round);
        creator_t c;
        if (creator_start(&c, MPROC_START_FORK, MODE_BLOCK, NULL) != 0)
            break;
        TU_CHECK_OK(mproc_process_kill(c.p));
        /* Reaped at once, as a real parent would: without pidfds the
         * tracker polls kill(pid, 0), which a zombie still passes. */
        creator_join_killed(&c);
        /* open until it fails or works once (reopening it again and again
         * would keep it in use, and so alive, for ever) */
        for (;;) {
            mproc_shm_t *h = NULL;
            int rc = mproc_shm_open(&h, c.rep.name);
            if (rc == -ENOENT) {
                enoent++;
                break;
            }
            if (!TU_CHECK_OK(rc))
                break;
            opened++;
            TU_CHECK(seg_exists(c.rep.name));
            int *v = NULL;
            TU_CHECK_OK(mproc_array_open(h, "v", MPROC_INT32, (void **)&v, NULL));
            if (v)
                TU_CHECK_EQ_INT(*v, 4242);
            TU_CHECK(seg_exists(c.rep.name));
            TU_CHECK_OK(mproc_shm_close(h));
            /* its creator is dead and now nobody uses it: it goes */
            TU_CHECK(wait_gone(c.rep.name, GONE_MS));
            break;
        }
        creator_cleanup(&c);
    }
    tu_context(NULL);
    printf("  opens that won the race: %d, lost (-ENOENT): %d\n", opened, enoent);
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
}

/* The creator is alive and has closed its handle without unlinking (the
 * name is meant to outlive its mappings, as a file's does). A child opens
 * it by name, closes it and exits: the segment's creator has not died, so
 * it is not the tracker's to unlink ("unlinks each one whose users have all
 * died without unlinking it"). The child's own segment W, unused by anyone
 * else, is reclaimed: that shows its exit was processed. */
typedef struct {
    char name[MPROC_NAME_MAX + 1];
    char wname[MPROC_NAME_MAX + 1];
} visit_t;

static int entry_visit(const void *arg, size_t len)
{
    if (len != sizeof(visit_t) || !arg)
        return 200;
    const visit_t *vt = arg;
    mproc_shm_t *s = NULL, *w = NULL;
    if (mproc_shm_open(&s, vt->name) != 0)
        return 201;
    if (mproc_shm_close(s) != 0)
        return 202;
    if (mproc_shm_create_named(&w, 4096, vt->wname) != 0)
        return 203;
    if (mproc_shm_close(w) != 0)
        return 204;
    return 0;
}

static void test_live_creators_closed_segment_kept(void)
{
    TU_FOR_EACH_METHOD(m) {
        mproc_shm_t *s = NULL;
        TU_REQUIRE_OK(mproc_shm_create_named(&s, 4096, "t-keep"));
        TU_CHECK_OK(mproc_shm_close(s)); /* kept: not unlinked */
        visit_t vt;
        memset(&vt, 0, sizeof vt);
        snprintf(vt.name, sizeof vt.name, "t-keep");
        snprintf(vt.wname, sizeof vt.wname, "t-keep-w");
        TU_CHECK_EQ_INT(tu_run(m, entry_visit, &vt, sizeof vt), 0);
        TU_CHECK(wait_gone("t-keep-w", GONE_MS));
        TU_CHECK(seg_exists("t-keep"));
        s = NULL;
        if (TU_CHECK_OK(mproc_shm_open(&s, "t-keep"))) {
            TU_CHECK_OK(mproc_shm_unlink(s));
            TU_CHECK_OK(mproc_shm_close(s));
        }
        TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
    }
}

/* A raw fork() child (not made by mproc) shares this process's tracker
 * too: killed, its segment goes. */
typedef struct {
    int report_w;
    int block_r;
} rawc_t;

static int raw_creator(void *vctx)
{
    rawc_t *c = vctx;
    crep_t rep;
    memset(&rep, 0, sizeof rep);
    mproc_shm_t *s = NULL;
    rep.rc = mproc_shm_create_named(&s, 4096, NULL);
    rep.pid = getpid();
    rep.tracker = mproc_tracker_pid();
    if (rep.rc == 0)
        snprintf(rep.name, sizeof rep.name, "%s", mproc_shm_name(s));
    tu_write_full(c->report_w, &rep, sizeof rep);
    char ch;
    while (read(c->block_r, &ch, 1) < 0 && errno == EINTR) {
    }
    return 5;
}

static void test_raw_fork_child_tracked(void)
{
    TU_REQUIRE_OK(mproc_tracker_start());
    int rp[2], bp[2];
    TU_REQUIRE(tu_pipe(rp) == 0);
    TU_REQUIRE(tu_pipe(bp) == 0);
    rawc_t c = {rp[1], bp[0]};
    int pidfd = -1;
    pid_t pid = tu_fork(raw_creator, &c, &pidfd);
    close(rp[1]);
    close(bp[0]);
    crep_t rep;
    memset(&rep, 0, sizeof rep);
    TU_CHECK_EQ_INT(tu_read_full(rp[0], &rep, sizeof rep, TU_T_MS), (long long)sizeof rep);
    close(rp[0]);
    TU_CHECK_OK(rep.rc);
    TU_CHECK_EQ_INT(rep.tracker, mproc_tracker_pid());
    if (pid > 0)
        tu_kill_child(pid, pidfd);
    close(bp[1]);
    if (rep.rc == 0) {
        TU_CHECK(wait_gone(rep.name, GONE_MS));
        if (seg_exists(rep.name)) {
            char p[256];
            seg_path(rep.name, p, sizeof p);
            unlink(p);
        }
    }
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
}

/* Code that forks by hand and closes every fd (mproc_close_fds_except),
 * then reuses the tracker line's fd number for a socket of its own: the
 * next named segment must not write into that socket; the child starts a
 * tracker of its own instead. */
static int stale_line_child(void *vctx)
{
    (void)vctx;
    if (mproc_close_fds_except(NULL, 0) != 0)
        return 10;
    /* Take the lowest free numbers, the line's among them. */
    enum { NPAIRS = 16 };
    int sv[NPAIRS][2];
    for (int i = 0; i < NPAIRS; i++)
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv[i]) < 0)
            return 11;
    mproc_shm_t *s = NULL;
    if (mproc_shm_create_named(&s, 4096, NULL) != 0)
        return 12;
    int leaked = 0;
    for (int i = 0; i < NPAIRS; i++)
        for (int j = 0; j < 2; j++) {
            char buf[512];
            leaked |= recv(sv[i][j], buf, sizeof buf, MSG_DONTWAIT) >= 0;
        }
    pid_t t = mproc_tracker_pid();
    mproc_shm_unlink(s);
    mproc_shm_close(s);
    if (mproc_tracker_stop(TU_T_MS) != 0)
        return 13;
    if (leaked)
        return 14; /* a tracker message landed in our own socket */
    return t > 0 ? 0 : 15;
}

static void test_stale_line_after_close_fds(void)
{
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create_named(&s, 4096, NULL)); /* starts our tracker */
    TU_CHECK(mproc_tracker_pid() > 0);
    int st = -1;
    TU_CHECK_OK(tu_run_child(stale_line_child, NULL, TU_T_MS, &st));
    TU_CHECK_EQ_INT(st, 0);
    TU_CHECK_OK(mproc_shm_unlink(s));
    TU_CHECK_OK(mproc_shm_close(s));
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
}

/* The tracker may outlive the program: it must not hold the program's
 * stdio (a `$(prog)` or a log pipe would stay open). */
static void test_tracker_stdio_is_devnull(void)
{
    TU_REQUIRE_OK(mproc_tracker_start());
    pid_t t = mproc_tracker_pid();
    TU_REQUIRE(t > 0);
    for (int fd = 0; fd <= 2; fd++) {
        char link[64], target[256] = "";
        snprintf(link, sizeof link, "/proc/%d/fd/%d", (int)t, fd);
        /* the tracker sets this up before main would run: wait (bounded) */
        int64_t end = tu_now_ms() + TU_T_MS;
        ssize_t n;
        while ((n = readlink(link, target, sizeof target - 1)) < 0 ||
               (target[n] = '\0', strcmp(target, "/dev/null") != 0)) {
            if (tu_now_ms() > end)
                break;
            sched_yield();
        }
        tu_context("fd %d", fd);
        TU_CHECK(strcmp(target, "/dev/null") == 0);
    }
    tu_context(NULL);
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
}

/* A stop that times out (a fork child still holds the line), then a new
 * tracker: the old one, once its last holder is gone, is still collected
 * by this process (the leak checker fails the case on a zombie). */
static int hold_line_child(void *vctx)
{
    int *p = vctx; /* the pipe: wait for EOF on p[0] */
    close(p[1]);
    char c;
    while (read(p[0], &c, 1) < 0 && errno == EINTR) {
    }
    return 0;
}

static void test_stop_timeout_then_restart(void)
{
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create_named(&s, 4096, NULL));
    pid_t first = mproc_tracker_pid();
    TU_REQUIRE(first > 0);
    int bp[2];
    TU_REQUIRE(tu_pipe(bp) == 0);
    int pidfd = -1;
    pid_t child = tu_fork(hold_line_child, bp, &pidfd); /* inherits the line */
    close(bp[0]);
    TU_CHECK_EQ_INT(mproc_tracker_stop(50), -ETIMEDOUT); /* the child holds it */
    mproc_shm_t *s2 = NULL;
    TU_CHECK_OK(mproc_shm_create_named(&s2, 4096, NULL)); /* a new tracker */
    TU_CHECK(mproc_tracker_pid() > 0 && mproc_tracker_pid() != first);
    close(bp[1]); /* the child leaves: the first tracker's line closes */
    if (child > 0) {
        int st = -1;
        TU_CHECK_OK(tu_wait_child(child, pidfd, TU_T_MS, &st));
    }
    int fd = tu_pidfd_open(first);
    if (fd >= 0) {
        TU_CHECK_EQ_INT(tu_wait_readable(fd, TU_T_MS), 1); /* it exits */
        close(fd);
    }
    TU_CHECK_OK(mproc_shm_unlink(s));
    TU_CHECK_OK(mproc_shm_close(s));
    TU_CHECK_OK(mproc_shm_unlink(s2));
    TU_CHECK_OK(mproc_shm_close(s2));
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));           /* collects both */
    TU_CHECK_EQ_INT(tu_try_reap(first, NULL), -ECHILD); /* already collected */
}

/* mproc_clean(), the library side of `mproc clean`: a segment whose
 * creator and tracker were both SIGKILLed (the tracker first) is found,
 * reported once through fn, kept by a dry run and unlinked by a real one;
 * a segment in use is never reported; bad flags are refused. */
typedef struct {
    int n;
    char paths[8][300];
} clean_seen_t;

static void on_clean(void *ctx, const char *path)
{
    clean_seen_t *c = ctx;
    if (c->n < 8)
        snprintf(c->paths[c->n], sizeof c->paths[0], "%s", path);
    c->n++;
}

static void test_clean_api(void)
{
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS)); /* the creator gets a tracker of its own */
    mproc_shm_t *mine = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&mine, 4096)); /* anonymous: not in /dev/shm */
    clean_seen_t seen;
    memset(&seen, 0, sizeof seen);
    TU_CHECK_EQ_INT(mproc_clean(MPROC_CLEAN_DRY_RUN, on_clean, &seen), 0);
    TU_CHECK_EQ_INT(seen.n, 0);
    TU_CHECK_EQ_INT(mproc_clean(0x100, on_clean, &seen), -EINVAL);

    creator_t c;
    if (creator_start(&c, MPROC_START_SPAWN, MODE_BLOCK, NULL) != 0) {
        mproc_shm_close(mine);
        return;
    }
    /* in use by its creator: not abandoned */
    memset(&seen, 0, sizeof seen);
    TU_CHECK_EQ_INT(mproc_clean(MPROC_CLEAN_DRY_RUN, on_clean, &seen), 0);
    TU_CHECK_EQ_INT(seen.n, 0);
    TU_CHECK_EQ_INT(mproc_clean(0, on_clean, &seen), 0);
    TU_CHECK(seg_exists(c.rep.name));

    /* kill the tracker, then the creator: nobody is left to clean */
    TU_REQUIRE(c.tpidfd >= 0);
    TU_CHECK_OK(kill(c.rep.tracker, SIGKILL));
    TU_CHECK_EQ_INT(tu_wait_readable(c.tpidfd, TU_T_MS), 1);
    creator_kill(&c); /* the tracker, its child, is reaped with it (re-parented here) */
    tu_try_reap(c.rep.tracker, NULL);
    tu_close(&c.tpidfd);
    TU_CHECK(seg_exists(c.rep.name));

    char want[300];
    seg_path(c.rep.name, want, sizeof want);
    memset(&seen, 0, sizeof seen);
    TU_CHECK_EQ_INT(mproc_clean(MPROC_CLEAN_DRY_RUN, on_clean, &seen), 1);
    TU_CHECK_EQ_INT(seen.n, 1);
    TU_CHECK_EQ_STR(seen.paths[0], want);
    TU_CHECK(seg_exists(c.rep.name)); /* a dry run removes nothing */
    TU_CHECK_EQ_INT(mproc_clean(MPROC_CLEAN_DRY_RUN, NULL, NULL), 1);

    memset(&seen, 0, sizeof seen);
    TU_CHECK_EQ_INT(mproc_clean(0, on_clean, &seen), 1);
    TU_CHECK_EQ_INT(seen.n, 1);
    TU_CHECK_EQ_STR(seen.paths[0], want);
    TU_CHECK(!seg_exists(c.rep.name));
    TU_CHECK_EQ_INT(mproc_clean(0, NULL, NULL), 0); /* nothing left */
    creator_cleanup(&c);
    TU_CHECK_OK(mproc_shm_close(mine));
}

/* ------------------------------------------------------------------ main */

static const tu_case_t cases[] = {
    TU_CASE(test_pid_and_stop),
    TU_CASE(test_unlinked_after_sigkill),
    TU_CASE(test_unlinked_after_sigkill_repeated),
    TU_CASE(test_unlinked_after_sigkill_many),
    TU_CASE(test_kept_while_parent_uses_it),
    TU_CASE(test_creator_unlinks),
    TU_CASE(test_keep),
    TU_CASE(test_ignores_signals),
    TU_CASE(test_ignores_signals_at_start),
    TU_CASE(test_unrelated_user_keeps_it),
    TU_CASE(test_unrelated_user_exits),
    TU_CASE(test_open_races_reclaim),
    TU_CASE(test_raw_fork_child_tracked),
    TU_CASE(test_stale_line_after_close_fds),
    TU_CASE(test_tracker_stdio_is_devnull),
    TU_CASE(test_stop_timeout_then_restart),
    TU_CASE(test_clean_api),
    TU_CASE(test_live_creators_closed_segment_kept),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    const char *outsider = getenv(OUT_ENV);
    if (outsider) {
        char name[MPROC_NAME_MAX + 1];
        snprintf(name, sizeof name, "%s", outsider);
        unsetenv(OUT_ENV);
        return outsider_main(name);
    }
    return tu_main(argc, argv, cases);
}
