/*
 * test_forkserver.c - the forkserver helper: explicit start with a preload,
 * state errors, pid, P12 (nothing bound), death of the helper, stop, a
 * forked copy of a process that has a helper, a caller that drops its
 * credentials, a caller at its fd limit, and a helper too slow (stopped) to
 * report a status.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

static int g_preloaded; /* set by the preload, in the helper only */
static int g_preload_calls;

/* ------------------------------------------------------------------ entries */

static int preload(const void *arg, size_t len)
{
    int v;
    if (len != sizeof v || !arg)
        return 1;
    memcpy(&v, arg, sizeof v);
    g_preloaded = v;
    g_preload_calls++;
    return 0;
}

/* A reporter (tu_start_reporter): reports g_preloaded, g_preload_calls
 * and its parent's pid. */
static int entry_report_preload(const void *arg, size_t len)
{
    int v[3] = {g_preloaded, g_preload_calls, (int)getppid()};
    return tu_report(arg, len, v, sizeof v);
}

/* ------------------------------------------------------------------ helpers */

/* Start a child with method m that reports {g_preloaded, calls, ppid}. */
/* Start a child with method m that reports {g_preloaded, calls, ppid}; 0 if
 * it started. */
static int report_preload(mproc_start_method_t m, int out[3])
{
    mproc_process_t *p;
    int rfd = tu_start_reporter(&p, m, entry_report_preload);
    if (rfd < 0)
        return -1;
    TU_CHECK_EQ_INT(tu_read_full(rfd, out, 3 * sizeof(int), TU_T_MS), (long long)(3 * sizeof(int)));
    close(rfd);
    TU_CHECK_EQ_INT(tu_join_free(p), 0);
    return 0;
}

/* A child that returns 0, started, joined and freed: its exit code. */
static int run_zero(mproc_start_method_t m)
{
    return tu_run(m, tu_entry_zero, NULL, 0);
}

/* A forkserver child whose helper went away was reparented to us (we are a
 * child subreaper). Its join may complete as soon as its exit pipe closes,
 * a moment before it is a zombie: wait until it is one, then reap it unless
 * the library already did. */
static void reap_orphan(pid_t pid)
{
    int pfd = tu_pidfd_open(pid);
    if (pfd < 0)
        return; /* gone (reaped) already */
    TU_CHECK_EQ_INT(tu_wait_readable(pfd, TU_T_MS), 1);
    close(pfd);
    int r = tu_try_reap(pid, NULL);
    if (getenv("TU_VERBOSE"))
        fprintf(stderr, "  orphan %d: %s\n", (int)pid,
                r == 1 ? "reaped by the test" : "already reaped");
}

/* ------------------------------------------------------------------ cases */

static void test_preload_and_state(void)
{
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), 0);
    int v = 0x5eed;
    TU_REQUIRE_OK(mproc_forkserver_start(preload, &v, sizeof v));
    pid_t hp = mproc_forkserver_pid();
    TU_CHECK(hp > 0);
    /* the helper is our child, a spawn (same executable) */
    pid_t ppid = 0;
    TU_CHECK_EQ_INT(tu_proc_stat(hp, &ppid, NULL), 0);
    TU_CHECK_EQ_INT(ppid, getpid());
    char a[256] = "", b[256] = "", path[64];
    snprintf(path, sizeof path, "/proc/%d/exe", (int)hp);
    ssize_t na = readlink(path, a, sizeof a - 1);
    ssize_t nb = readlink("/proc/self/exe", b, sizeof b - 1);
    if (na > 0 && nb > 0) {
        a[na] = b[nb] = '\0';
        TU_CHECK_EQ_STR(a, b);
    }
    /* start again: already running */
    TU_CHECK_EQ_INT(mproc_forkserver_start(preload, &v, sizeof v), MPROC_ESTATE);
    TU_CHECK_EQ_INT(mproc_forkserver_start(NULL, NULL, 0), MPROC_ESTATE);
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), hp);

    /* the preload ran once, in the helper: forkserver children see it, the
     * parent and spawn children do not */
    int out[3] = {-1, -1, -1};
    for (int i = 0; i < 3; i++) { /* several children: preload is not re-run */
        tu_context("forkserver child %d", i);
        if (report_preload(MPROC_START_FORKSERVER, out) == 0) {
            TU_CHECK_EQ_INT(out[0], 0x5eed);
            TU_CHECK_EQ_INT(out[1], 1);
            TU_CHECK_EQ_INT(out[2], hp);
        }
    }
    tu_context("spawn child");
    if (report_preload(MPROC_START_SPAWN, out) == 0) {
        TU_CHECK_EQ_INT(out[0], 0);
        TU_CHECK_EQ_INT(out[1], 0);
    }
    tu_context(NULL);
    TU_CHECK_EQ_INT(g_preloaded, 0);
    TU_CHECK_EQ_INT(g_preload_calls, 0);
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), hp); /* the same helper served them all */

    /* stop: pid 0, and the helper is gone (reaped: the leak checker
     * verifies); stop again is a no-op */
    int hfd = tu_pidfd_open(hp);
    TU_CHECK_OK(mproc_forkserver_stop());
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), 0);
    if (hfd >= 0) {
        TU_CHECK_EQ_INT(tu_wait_readable(hfd, 0), 1);
        close(hfd);
    }
    TU_CHECK_EQ_INT(tu_proc_stat(hp, NULL, NULL), -1); /* not even a zombie */
    TU_CHECK_OK(mproc_forkserver_stop());
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), 0);

    /* a later forkserver start brings up a new helper; whether it runs the
     * remembered preload again is not specified, but if it does, once */
    tu_context("after restart");
    if (report_preload(MPROC_START_FORKSERVER, out) == 0) {
        TU_CHECK(out[0] == 0 || out[0] == 0x5eed);
        TU_CHECK_EQ_INT(out[1], out[0] ? 1 : 0);
        TU_CHECK(mproc_forkserver_pid() > 0);
        TU_CHECK(mproc_forkserver_pid() != hp);
        TU_CHECK_EQ_INT(out[2], mproc_forkserver_pid());
    }
}

static void test_lazy_start(void)
{
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), 0);
    TU_CHECK_EQ_INT(run_zero(MPROC_START_FORKSERVER), 0);
    pid_t hp = mproc_forkserver_pid();
    TU_CHECK(hp > 0);
    TU_CHECK_EQ_INT(run_zero(MPROC_START_FORKSERVER), 0);
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), hp);
    /* explicit start while the lazily started one runs */
    TU_CHECK_EQ_INT(mproc_forkserver_start(NULL, NULL, 0), MPROC_ESTATE);
    /* other methods do not need or touch it */
    TU_CHECK_OK(mproc_forkserver_stop());
    TU_CHECK_EQ_INT(run_zero(MPROC_START_FORK), 0);
    TU_CHECK_EQ_INT(run_zero(MPROC_START_SPAWN), 0);
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), 0);
}

/* P12: the helper listens on nothing: none of its sockets has a name. */
static void test_no_bound_socket(void)
{
    TU_REQUIRE_OK(mproc_forkserver_start(NULL, NULL, 0));
    pid_t hp = mproc_forkserver_pid();
    TU_REQUIRE(hp > 0);
    unsigned long inodes[64];
    int ni = 0;
    char dpath[64];
    snprintf(dpath, sizeof dpath, "/proc/%d/fd", (int)hp);
    DIR *d = opendir(dpath);
    TU_REQUIRE(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL && ni < 64) {
        if (e->d_name[0] == '.')
            continue;
        char lp[400], tgt[128];
        snprintf(lp, sizeof lp, "%s/%s", dpath, e->d_name);
        ssize_t n = readlink(lp, tgt, sizeof tgt - 1);
        if (n <= 0)
            continue;
        tgt[n] = '\0';
        unsigned long ino;
        if (sscanf(tgt, "socket:[%lu]", &ino) == 1)
            inodes[ni++] = ino;
    }
    closedir(d);
    TU_CHECK(ni >= 1); /* it talks to us over a socket(pair) */
    FILE *f = fopen("/proc/net/unix", "re");
    TU_REQUIRE(f != NULL);
    char line[512];
    int matched = 0;
    while (fgets(line, sizeof line, f)) {
        /* Num RefCount Protocol Flags Type St Inode [Path] */
        char num[32];
        unsigned rc, proto, flags, type, st;
        unsigned long ino;
        char pathbuf[300] = "";
        int k = sscanf(line, "%31s %x %x %x %x %x %lu %299s", num, &rc, &proto, &flags, &type, &st,
                       &ino, pathbuf);
        if (k < 7)
            continue;
        for (int i = 0; i < ni; i++) {
            if (inodes[i] != ino)
                continue;
            matched++;
            if (k == 8 && pathbuf[0])
                tu_fail(__FILE__, __LINE__, "helper socket inode %lu is bound to '%s'", ino,
                        pathbuf);
            if (flags & 0x10000) /* __SO_ACCEPTCON: listening */
                tu_fail(__FILE__, __LINE__, "helper socket inode %lu is listening", ino);
        }
    }
    fclose(f);
    TU_CHECK(matched >= 1);
}

static void test_helper_killed_while_child_runs(void)
{
    TU_REQUIRE_OK(mproc_forkserver_start(NULL, NULL, 0));
    pid_t hp = mproc_forkserver_pid();
    TU_REQUIRE(hp > 0);
    tu_blocked_t b;
    TU_REQUIRE_OK(tu_start_blocked(&b, MPROC_START_FORKSERVER, NULL, 7));
    pid_t ppid = 0;
    TU_CHECK_EQ_INT(tu_proc_stat(b.pid, &ppid, NULL), 0);
    TU_CHECK_EQ_INT(ppid, hp);

    int hfd = tu_pidfd_open(hp);
    TU_REQUIRE(hfd >= 0);
    TU_CHECK_EQ_INT(kill(hp, SIGKILL), 0);
    TU_CHECK_EQ_INT(tu_wait_readable(hfd, TU_T_MS), 1);
    close(hfd);

    /* the orphan keeps running */
    TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 1);
    TU_CHECK_EQ_INT(kill(b.pid, 0), 0);

    /* the next forkserver start restarts the helper or says ESERVER; no hang */
    alarm(60);
    mproc_process_t *p;
    int rc = tu_start(&p, MPROC_START_FORKSERVER, tu_entry_zero, NULL, 0, NULL, 0);
    if (rc == 0) {
        TU_CHECK(mproc_forkserver_pid() > 0);
        TU_CHECK(mproc_forkserver_pid() != hp);
        TU_CHECK_EQ_INT(tu_join_free(p), 0);
    } else {
        TU_CHECK_EQ_INT(rc, MPROC_ESERVER);
        /* and the one after that, at the latest, works again */
        TU_CHECK_EQ_INT(run_zero(MPROC_START_FORKSERVER), 0);
    }

    /* release the orphan: its join completes, with the real status or
     * MPROC_ESTATUS */
    TU_CHECK_OK(tu_release(&b));
    TU_CHECK_OK(mproc_process_join(b.p, TU_T_MS));
    int code = -1;
    rc = mproc_process_exitcode(b.p, &code);
    if (!(rc == MPROC_ESTATUS || (rc == 0 && (code == 7 || code == MPROC_ESTATUS))))
        tu_fail(__FILE__, __LINE__, "orphan exitcode: rc %d code %d; want 7 or MPROC_ESTATUS", rc,
                code);
    TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 0);
    alarm((unsigned)tu_case_timeout_s);
    /* As a child subreaper we inherited the orphan; the library may or may
     * not have reaped it (in an ordinary process init does). */
    reap_orphan(b.pid);
    tu_blocked_cleanup(&b);
}

/* "Stop the helper (children keep running)." */
static void test_stop_keeps_children(void)
{
    tu_blocked_t b;
    TU_REQUIRE_OK(tu_start_blocked(&b, MPROC_START_FORKSERVER, NULL, 8));
    TU_CHECK(mproc_forkserver_pid() > 0);
    TU_CHECK_OK(mproc_forkserver_stop());
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), 0);
    TU_CHECK_EQ_INT(kill(b.pid, 0), 0);
    TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 1);
    TU_CHECK_OK(tu_release(&b));
    TU_CHECK_OK(mproc_process_join(b.p, TU_T_MS));
    int code = -1;
    int rc = mproc_process_exitcode(b.p, &code);
    if (!(rc == MPROC_ESTATUS || (rc == 0 && (code == 8 || code == MPROC_ESTATUS))))
        tu_fail(__FILE__, __LINE__, "exitcode after stop: rc %d code %d; want 8 or MPROC_ESTATUS",
                rc, code);
    reap_orphan(b.pid);
    tu_blocked_cleanup(&b);
}

/* "Daemon children die with it." */
static void test_daemon_children_die_with_helper(void)
{
    TU_REQUIRE_OK(mproc_forkserver_start(NULL, NULL, 0));
    pid_t hp = mproc_forkserver_pid();
    mproc_process_opts_t o = {"fs-daemon", MPROC_START_FORKSERVER, 1};
    tu_blocked_t b;
    TU_REQUIRE_OK(tu_start_blocked(&b, MPROC_START_FORKSERVER, &o, 0));
    int cfd = tu_pidfd_open(b.pid);
    TU_CHECK(cfd >= 0);
    TU_CHECK_EQ_INT(kill(hp, SIGKILL), 0);
    if (cfd >= 0) {
        if (tu_wait_readable(cfd, TU_T_MS) != 1)
            tu_fail(__FILE__, __LINE__, "daemon child survived its forkserver");
        close(cfd);
    }
    TU_CHECK_OK(mproc_process_join(b.p, TU_T_MS));
    int code = -1;
    int rc = mproc_process_exitcode(b.p, &code);
    if (!(rc == MPROC_ESTATUS || (rc == 0 && (code == -SIGKILL || code == MPROC_ESTATUS))))
        tu_fail(__FILE__, __LINE__, "daemon exitcode: rc %d code %d; want -SIGKILL or ESTATUS", rc,
                code);
    reap_orphan(b.pid);
    tu_blocked_cleanup(&b);
}

/* A raw fork of a process that has a helper must not share the parent's
 * helper connection: its forkserver children are its own. */
static pid_t g_parent_helper;

static int forked_copy(void *ctx)
{
    (void)ctx;
    mproc_process_opts_t o = {NULL, MPROC_START_FORKSERVER, 0};
    for (int i = 0; i < 3; i++) {
        tu_blocked_t b;
        int rc = tu_start_blocked(&b, MPROC_START_FORKSERVER, &o, 4);
        if (!TU_CHECK_OK(rc))
            return 2;
        pid_t ppid = 0;
        tu_proc_stat(b.pid, &ppid, NULL);
        TU_CHECK(ppid != g_parent_helper);
        TU_CHECK(mproc_forkserver_pid() != g_parent_helper);
        TU_CHECK_EQ_INT(tu_release_join(&b), 4);
        tu_blocked_cleanup(&b);
    }
    TU_CHECK_OK(mproc_forkserver_stop());
    return 0;
}

static void test_forked_copy_gets_own_helper(void)
{
    TU_REQUIRE_OK(mproc_forkserver_start(NULL, NULL, 0));
    g_parent_helper = mproc_forkserver_pid();
    TU_REQUIRE(g_parent_helper > 0);
    int status = -1;
    TU_CHECK_OK(tu_run_child(forked_copy, NULL, 30000, &status));
    TU_CHECK_EQ_INT(status, 0);
    /* the parent's helper still serves the parent */
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), g_parent_helper);
    TU_CHECK_EQ_INT(kill(g_parent_helper, 0), 0);
    TU_CHECK_EQ_INT(run_zero(MPROC_START_FORKSERVER), 0);
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), g_parent_helper);
}

static void test_start_args(void)
{
    /* len > 0 with a NULL arg is refused and starts nothing */
    TU_CHECK_EQ_INT(mproc_forkserver_start(preload, NULL, 4), -EINVAL);
    TU_CHECK_EQ_INT(mproc_forkserver_start(NULL, NULL, 4), -EINVAL);
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), 0);
    TU_CHECK_EQ_INT(tu_count_children(NULL, 0), 0);
    /* no preload at all */
    TU_CHECK_OK(mproc_forkserver_start(NULL, NULL, 0));
    TU_CHECK(mproc_forkserver_pid() > 0);
    TU_CHECK_OK(mproc_forkserver_stop());
}

/* ------------------------------------------------------------------ credentials */

#define NOBODY 65534

/* A reporter: reports its effective uid and gid and its parent's pid. */
static int entry_report_creds(const void *arg, size_t len)
{
    int v[3] = {(int)geteuid(), (int)getegid(), (int)getppid()};
    return tu_report(arg, len, v, sizeof v);
}

/* In a raw-forked copy (the test process keeps root): start a helper as
 * root, drop to nobody, then start a forkserver child. */
static int drop_creds_child(void *ctx)
{
    (void)ctx;
    if (!TU_CHECK_OK(mproc_forkserver_start(NULL, NULL, 0)))
        return 2;
    pid_t root_helper = mproc_forkserver_pid();
    TU_CHECK(root_helper > 0);
    /* the whole identity: no root group left behind either */
    if (!TU_CHECK_EQ_INT(setgroups(0, NULL), 0) ||
        !TU_CHECK_EQ_INT(setresgid(NOBODY, NOBODY, NOBODY), 0) ||
        !TU_CHECK_EQ_INT(setresuid(NOBODY, NOBODY, NOBODY), 0)) {
        mproc_forkserver_stop();
        return 3;
    }
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), root_helper); /* nothing happens until a call */

    mproc_process_t *p;
    int rfd = tu_start_reporter(&p, MPROC_START_FORKSERVER, entry_report_creds);
    if (rfd >= 0) {
        int v[3] = {-1, -1, -1};
        TU_CHECK_EQ_INT(tu_read_full(rfd, v, sizeof v, TU_T_MS), (long long)sizeof v);
        close(rfd);
        TU_CHECK_EQ_INT(tu_join_free(p), 0);
        /* the child has the caller's new identity, not the one it gave up */
        TU_CHECK_EQ_INT(v[0], NOBODY);
        TU_CHECK_EQ_INT(v[1], NOBODY);
        /* because a new helper forked it: the root one is gone (reaped) */
        pid_t helper = mproc_forkserver_pid();
        TU_CHECK(helper > 0);
        TU_CHECK(helper != root_helper);
        TU_CHECK_EQ_INT(v[2], helper);
        TU_CHECK_EQ_INT(tu_proc_stat(root_helper, NULL, NULL), -1);
        /* and it keeps serving: no restart while the identity holds */
        TU_CHECK_EQ_INT(tu_run(MPROC_START_FORKSERVER, tu_entry_zero, NULL, 0), 0);
        TU_CHECK_EQ_INT(mproc_forkserver_pid(), helper);
    }
    /* leave nothing behind: this copy's helper is its own to stop */
    TU_CHECK_OK(mproc_forkserver_stop());
    TU_CHECK_EQ_INT(tu_count_children(NULL, 0), 0);
    return 0;
}

/* A caller that drops root must not have children forked with root's
 * credentials by the helper it started while it was root. */
static void test_credential_change_restarts_helper(void)
{
    if (geteuid() != 0) {
        fprintf(stderr, "  (skipped: needs root to change credentials)\n");
        return;
    }
    int status = -1;
    TU_CHECK_OK(tu_run_child(drop_creds_child, NULL, 60000, &status));
    TU_CHECK_EQ_INT(status, 0);
    TU_CHECK_EQ_INT(geteuid(), 0); /* the test process itself kept root */
}

/* ------------------------------------------------------------------ fd limit */

/* A reporter that writes "RAN" as soon as its entry runs. */
static int entry_ran(const void *arg, size_t len)
{
    return tu_report(arg, len, "RAN", 3);
}

/* Our child processes (orphans come back to us as a subreaper) are all
 * exiting or gone: wait for each and reap it; one still running after
 * TU_T_MS is a failure (killed). */
static void reap_all_children(void)
{
    pid_t kids[64];
    int n = tu_count_children(kids, 64);
    for (int i = 0; i < n && i < 64; i++) {
        int st = 0;
        int rc = tu_wait_child(kids[i], -1, TU_T_MS, &st);
        if (rc == -ETIMEDOUT) {
            tu_fail(__FILE__, __LINE__, "child %d still running", (int)kids[i]);
            tu_kill_child(kids[i], -1);
        }
    }
}

/* In a raw-forked copy (lowering RLIMIT_NOFILE must not disturb the
 * harness): a forkserver start whose reply (2 fds) cannot be received. */
static int fd_limit_child(void *ctx)
{
    (void)ctx;
    /* Whatever our helper leaves when it stops comes back to us. */
    TU_CHECK_EQ_INT(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
    if (!TU_CHECK_OK(mproc_forkserver_start(NULL, NULL, 0)))
        return 2;
    pid_t helper = mproc_forkserver_pid();
    TU_CHECK(helper > 0);

    /* Everything the start needs is made before the limit comes down. */
    int pp[2];
    if (tu_pipe(pp) != 0)
        return 3;
    mproc_process_opts_t o = {.method = MPROC_START_FORKSERVER};
    mproc_process_t *p = NULL;
    if (!TU_CHECK_OK(mproc_process_create(&p, entry_ran, &pp[1], sizeof pp[1], &o)) ||
        !TU_CHECK_OK(mproc_process_pass_fd(p, pp[1])))
        return 4;
    int fds[256];
    int nopen = tu_list_fds(fds, 256);
    if (!TU_CHECK(nopen > 0 && nopen <= 256))
        return 5;
    struct rlimit old, low;
    TU_CHECK_EQ_INT(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    low.rlim_cur = (rlim_t)fds[nopen - 1] + 1; /* the highest open fd + 1 */

    /* At the limit: the holes below it filled too, no fd can be opened. */
    int fillers[256];
    int nfill = 0, fill_errno = 0;
    int set_rc = setrlimit(RLIMIT_NOFILE, &low);
    while (set_rc == 0 && nfill < 256) {
        int fd = fcntl(2, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) {
            fill_errno = errno;
            break;
        }
        fillers[nfill++] = fd;
    }
    int start_rc = set_rc == 0 ? mproc_process_start(p) : 0;
    pid_t helper_after = mproc_forkserver_pid();
    /* Limit restored before anything else. */
    for (int i = 0; i < nfill; i++)
        close(fillers[i]);
    TU_CHECK_EQ_INT(setrlimit(RLIMIT_NOFILE, &old), 0);
    TU_CHECK_EQ_INT(set_rc, 0);
    TU_CHECK_EQ_INT(fill_errno, EMFILE);

    TU_CHECK_EQ_INT(start_rc, -EMFILE);
    TU_CHECK_EQ_INT(mproc_process_pid(p), 0);
    TU_CHECK_EQ_INT(mproc_process_is_alive(p), 0);
    /* the helper survived: the same one, still running */
    TU_CHECK_EQ_INT(helper_after, helper);
    TU_CHECK_EQ_INT(kill(helper, 0), 0);
    TU_CHECK_OK(mproc_process_free(p));

    /* The child the helper forked for that start is gone: the helper let it
     * run once its reply was sent, and the client, unable to take the
     * reply's fds, had it killed at once. It may have begun its entry (so
     * "RAN" may have arrived) but it must not outlive the failed start: its
     * copy of the pipe closes. */
    close(pp[1]);
    char buf[16];
    ssize_t n = tu_read_all(pp[0], buf, sizeof buf, TU_T_MS);
    if (n != 0 && !(n == 3 && memcmp(buf, "RAN", 3) == 0))
        tu_fail(__FILE__, __LINE__,
                "the child of the failed start: read %zd (want EOF, after at most \"RAN\")", n);
    close(pp[0]);

    /* With the limit back, the same helper serves the next start. */
    mproc_process_t *q;
    int rfd = tu_start_reporter(&q, MPROC_START_FORKSERVER, entry_ran);
    if (rfd >= 0) {
        TU_CHECK_EQ_INT(tu_read_all(rfd, buf, sizeof buf, TU_T_MS), 3);
        close(rfd);
        TU_CHECK_EQ_INT(tu_join_free(q), 0);
    }
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), helper);

    TU_CHECK_OK(mproc_forkserver_stop());
    reap_all_children();
    return 0;
}

static void test_reply_fds_at_fd_limit(void)
{
    int status = -1;
    TU_CHECK_OK(tu_run_child(fd_limit_child, NULL, 60000, &status));
    TU_CHECK_EQ_INT(status, 0);
}

/* ------------------------------------------------------------------ slow helper */

/* The child has exited, but its helper is stopped and cannot report the
 * status: the child is not finished yet for the caller, and its status is
 * not lost; once the helper runs again, the real code arrives. */
static void test_slow_helper_status_not_lost(void)
{
    TU_REQUIRE_OK(mproc_forkserver_start(NULL, NULL, 0));
    pid_t helper = mproc_forkserver_pid();
    TU_REQUIRE(helper > 0);
    tu_blocked_t b;
    TU_REQUIRE_OK(tu_start_blocked(&b, MPROC_START_FORKSERVER, NULL, 9));
    int lfd = mproc_process_fd(b.p);
    TU_CHECK(lfd >= 0);

    /* Stop the helper, and know it is stopped (it is our child). */
    TU_CHECK_EQ_INT(kill(helper, SIGSTOP), 0);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int wrc;
    while ((wrc = waitid(P_PID, (id_t)helper, &si, WSTOPPED)) < 0 && errno == EINTR) {
    }
    TU_CHECK_EQ_INT(wrc, 0);
    TU_CHECK_EQ_INT(si.si_code, CLD_STOPPED);

    /* Release the child and wait until its life fd says it exited. */
    TU_CHECK_OK(tu_release(&b));
    if (lfd >= 0)
        TU_CHECK_EQ_INT(tu_wait_readable(lfd, TU_T_MS), 1);
    for (int i = 0; i < 2; i++) {
        tu_context("round %d, helper stopped", i);
        int64_t t0 = tu_now_ms();
        int alive = mproc_process_is_alive(b.p);
        int64_t dt = tu_now_ms() - t0;
        TU_CHECK(alive == 1 || alive == 0);
        if (dt >= 2000)
            tu_fail(__FILE__, __LINE__, "is_alive took %lld ms", (long long)dt);
        int code = TU_NO_CODE;
        int rc = mproc_process_exitcode(b.p, &code);
        TU_CHECK_NE_INT(rc, MPROC_ESTATUS);
        if (rc == 0)
            TU_CHECK_NE_INT(code, MPROC_ESTATUS);
        if (alive == 1)
            TU_CHECK_EQ_INT(rc, -EBUSY);
        t0 = tu_now_ms();
        rc = mproc_process_join(b.p, 200);
        dt = tu_now_ms() - t0;
        TU_CHECK(rc == -ETIMEDOUT || rc == 0);
        if (dt >= 2000)
            tu_fail(__FILE__, __LINE__, "join(200) took %lld ms", (long long)dt);
    }
    tu_context(NULL);

    TU_CHECK_EQ_INT(kill(helper, SIGCONT), 0);
    TU_CHECK_OK(mproc_process_join(b.p, TU_T_MS));
    int code = TU_NO_CODE;
    TU_CHECK_OK(mproc_process_exitcode(b.p, &code));
    TU_CHECK_EQ_INT(code, 9);
    TU_CHECK_EQ_INT(mproc_process_is_alive(b.p), 0);
    TU_CHECK_EQ_INT(mproc_forkserver_pid(), helper);
    tu_blocked_cleanup(&b);
}

static const tu_case_t cases[] = {
    TU_CASE(test_preload_and_state),
    TU_CASE(test_lazy_start),
    TU_CASE(test_no_bound_socket),
    TU_CASE(test_helper_killed_while_child_runs),
    TU_CASE(test_stop_keeps_children),
    TU_CASE(test_daemon_children_die_with_helper),
    TU_CASE(test_forked_copy_gets_own_helper),
    TU_CASE(test_start_args),
    TU_CASE(test_credential_change_restarts_helper),
    TU_CASE(test_reply_fds_at_fd_limit),
    TU_CASE(test_slow_helper_status_not_lost),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
