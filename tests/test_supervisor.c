/*
 * test_supervisor.c - `mproc run` as a real master over real workers
 * (tests/sup_worker.c): restarts into the same slot, the LISTEN_FDS
 * contract, TERM then KILL, crash loops, restart policies, exit status 3,
 * the watchdog, outsiders on the notify socket, TTIN/TTOU, a HUP reload
 * with --ready, and a master SIGKILLed leaving no worker behind.
 *
 * Workers report on a FIFO the test polls; the master's stderr comes back
 * on a pipe. Every wait is bounded.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

#ifndef MPROC_CLI
#error "MPROC_CLI: path of the mproc tool"
#endif
#ifndef SUP_WORKER
#error "SUP_WORKER: path of tests/sup_worker"
#endif
#ifndef SUP_PREFORK
#error "SUP_PREFORK: path of tests/sup_prefork"
#endif

typedef struct {
    pid_t pid;
    int pidfd;
    int err;  /* master's stderr (read end) */
    int fifo; /* worker reports (held O_RDWR: never EOF) */
    char dir[64], fifo_path[96];
    char log[16384]; /* everything the master said */
    size_t loglen;
    char rbuf[4096]; /* report bytes not yet a line */
    size_t rlen;
} master_t;

typedef struct {
    int id, pid, listen_fds, pid_ok, listening, cloexec, workers, nfds;
    char names[64], notify[128];
} report_t;

typedef struct {
    const char *const *argv;
    const char *path; /* NULL: the mproc tool */
} exec_arg_t;

static int exec_master(void *arg)
{
    const exec_arg_t *a = arg;
    execv(a->path ? a->path : MPROC_CLI, (char *const *)a->argv);
    return 126;
}

/* Run path with argv as a master whose stderr is m->err (m set up). */
static int master_exec(master_t *m, const char *path, const char *const *argv)
{
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0)
        return -errno;
    exec_arg_t a = {argv, path};
    /* The child's stderr is the pipe: set it up around the fork. */
    int saved = dup(2);
    dup2(ep[1], 2);
    m->pid = tu_fork(exec_master, &a, &m->pidfd);
    dup2(saved, 2);
    close(saved);
    close(ep[1]);
    m->err = ep[0];
    fcntl(m->err, F_SETFL, O_NONBLOCK);
    return m->pid > 0 ? 0 : (int)m->pid;
}

static int master_dir(master_t *m)
{
    memset(m, 0, sizeof *m);
    m->pidfd = m->err = m->fifo = -1;
    snprintf(m->dir, sizeof m->dir, "/tmp/mproc-sup-test-XXXXXX");
    if (!mkdtemp(m->dir))
        return -errno;
    snprintf(m->fifo_path, sizeof m->fifo_path, "%s/reports", m->dir);
    if (mkfifo(m->fifo_path, 0600) < 0)
        return -errno;
    m->fifo = open(m->fifo_path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    return m->fifo < 0 ? -errno : 0;
}

/* Start `mproc run OPTS... -- sup_worker FIFO MODE` (the tool at path,
 * NULL: the one built). */
static int master_start_at(master_t *m, const char *path, const char *const *opts, const char *mode)
{
    int rc = master_dir(m);
    if (rc < 0)
        return rc;
    const char *argv[32];
    int n = 0;
    argv[n++] = "mproc";
    argv[n++] = "run";
    for (int i = 0; opts[i]; i++)
        argv[n++] = opts[i];
    argv[n++] = "--";
    argv[n++] = SUP_WORKER;
    argv[n++] = m->fifo_path;
    argv[n++] = mode;
    argv[n] = NULL;
    return master_exec(m, path, argv);
}

static int master_start(master_t *m, const char *const *opts, const char *mode)
{
    return master_start_at(m, NULL, opts, mode);
}

static void drain_log(master_t *m)
{
    for (;;) {
        ssize_t k = read(m->err, m->log + m->loglen, sizeof m->log - 1 - m->loglen);
        if (k <= 0)
            break;
        m->loglen += (size_t)k;
    }
    m->log[m->loglen] = '\0';
}

/* Wait up to timeout_ms for the master's log to contain text. */
static int log_has(master_t *m, const char *text, int timeout_ms)
{
    int64_t end = tu_now_ms() + timeout_ms;
    for (;;) {
        drain_log(m);
        if (strstr(m->log, text))
            return 1;
        int left = (int)(end - tu_now_ms());
        if (left <= 0)
            return 0;
        struct pollfd p = {m->err, POLLIN, 0};
        poll(&p, 1, left);
        if (p.revents & POLLHUP) {
            drain_log(m);
            return strstr(m->log, text) != NULL;
        }
    }
}

static int log_count(master_t *m, const char *text)
{
    drain_log(m);
    int n = 0;
    for (const char *at = m->log; (at = strstr(at, text)); at += strlen(text))
        n++;
    return n;
}

/* Wait until the log holds text at least n times. */
static int log_count_reaches(master_t *m, const char *text, int n, int timeout_ms)
{
    int64_t end = tu_now_ms() + timeout_ms;
    while (log_count(m, text) < n) {
        int left = (int)(end - tu_now_ms());
        if (left <= 0)
            return 0;
        struct pollfd p = {m->err, POLLIN, 0};
        poll(&p, 1, left);
        if (p.revents & POLLHUP)
            return log_count(m, text) >= n;
    }
    return 1;
}

/* The port of the first "listening on 127.0.0.1:PORT" in the log. */
static int log_port(master_t *m)
{
    if (!log_has(m, "listening on 127.0.0.1:", TU_T_MS))
        return -1;
    return atoi(strstr(m->log, "listening on 127.0.0.1:") + strlen("listening on 127.0.0.1:"));
}

/* The next worker report within timeout_ms: 1, or 0 on timeout. */
static int next_report(master_t *m, report_t *r, int timeout_ms)
{
    int64_t end = tu_now_ms() + timeout_ms;
    for (;;) {
        char *nl = memchr(m->rbuf, '\n', m->rlen);
        if (nl) {
            *nl = '\0';
            memset(r, 0, sizeof *r);
            char id[16];
            int ok = sscanf(m->rbuf, "start %15s %d %d %d %d %d %63s %127s %d %d", id, &r->pid,
                            &r->listen_fds, &r->pid_ok, &r->listening, &r->cloexec, r->names,
                            r->notify, &r->workers, &r->nfds) == 10;
            r->id = atoi(id);
            size_t used = (size_t)(nl - m->rbuf) + 1;
            memmove(m->rbuf, m->rbuf + used, m->rlen - used);
            m->rlen -= used;
            if (ok)
                return 1;
            continue;
        }
        ssize_t k = read(m->fifo, m->rbuf + m->rlen, sizeof m->rbuf - m->rlen);
        if (k > 0) {
            m->rlen += (size_t)k;
            continue;
        }
        int left = (int)(end - tu_now_ms());
        if (left <= 0)
            return 0;
        struct pollfd p = {m->fifo, POLLIN, 0};
        poll(&p, 1, left);
    }
}

/* Wait for the master to exit: its exit code, or TU_NO_CODE. */
static int master_wait(master_t *m, int timeout_ms)
{
    int status = TU_NO_CODE;
    if (tu_wait_child(m->pid, m->pidfd, timeout_ms, &status) < 0)
        return TU_NO_CODE;
    m->pidfd = -1;
    m->pid = 0;
    drain_log(m);
    return status;
}

static void master_end(master_t *m)
{
    if (m->pid > 0) {
        kill(m->pid, SIGTERM);
        if (master_wait(m, TU_T_MS) == TU_NO_CODE && m->pid > 0)
            tu_kill_child(m->pid, m->pidfd);
    }
    tu_close(&m->err);
    tu_close(&m->fifo);
    unlink(m->fifo_path);
    rmdir(m->dir);
}

/* SIGTERM: the master must exit 0. */
static void master_stop_ok(master_t *m)
{
    TU_CHECK_OK(kill(m->pid, SIGTERM));
    TU_CHECK_EQ_INT(master_wait(m, TU_T_MS), 0);
    master_end(m);
}

/* 1 once pid has exited (a worker: through a pidfd). A worker orphaned
 * by its master's death comes back to this process (a subreaper): it is
 * reaped here. */
static int gone_within(pid_t pid, int timeout_ms)
{
    int fd = tu_pidfd_open(pid);
    if (fd < 0)
        return fd == -ESRCH;
    int r = tu_wait_readable(fd, timeout_ms);
    close(fd);
    int status;
    if (r == 1)
        tu_try_reap(pid, &status);
    return r == 1;
}

/* ------------------------------------------------------------------ cases */

static void test_restart_same_slot_and_listen_fds(void)
{
    master_t m;
    const char *opts[] = {"-w", "2", "--bind", "127.0.0.1:0", "--graceful-timeout", "2", NULL};
    /* An fd the master inherits (not close-on-exec) must not reach workers. */
    int stray = open("/dev/null", O_RDONLY);
    TU_REQUIRE_OK(master_start(&m, opts, "wait"));
    close(stray);
    report_t r[2], again;
    TU_REQUIRE(next_report(&m, &r[0], TU_T_MS) && next_report(&m, &r[1], TU_T_MS));
    TU_CHECK(r[0].id != r[1].id && r[0].id >= 0 && r[0].id <= 1 && r[1].id >= 0 && r[1].id <= 1);
    for (int i = 0; i < 2; i++) {
        /* systemd's contract: fds from 3, the count, our own pid, names */
        TU_CHECK_EQ_INT(r[i].listen_fds, 1);
        TU_CHECK_EQ_INT(r[i].pid_ok, 1);
        TU_CHECK_EQ_INT(r[i].listening, 1);
        TU_CHECK_EQ_INT(r[i].cloexec, 0);
        TU_CHECK_EQ_STR(r[i].names, "bind0");
        TU_CHECK_EQ_INT(r[i].workers, 2);
        TU_CHECK_EQ_INT(r[i].nfds, 4); /* stdio and the socket, nothing else */
        TU_CHECK(strcmp(r[i].notify, "-") != 0);
    }
    /* Kill worker 0: its replacement comes back as worker 0. */
    int victim = r[0].id == 0 ? 0 : 1;
    TU_CHECK_OK(kill(r[victim].pid, SIGKILL));
    TU_REQUIRE(next_report(&m, &again, TU_T_MS));
    TU_CHECK_EQ_INT(again.id, 0);
    TU_CHECK(again.pid != r[victim].pid);
    TU_CHECK(log_has(&m, "killed by signal 9", TU_T_MS));
    /* TERM: graceful stop, exit 0, no worker left. */
    TU_CHECK_OK(kill(m.pid, SIGTERM));
    TU_CHECK_EQ_INT(master_wait(&m, TU_T_MS), 0);
    TU_CHECK(gone_within(again.pid, TU_T_MS));
    TU_CHECK(gone_within(r[1 - victim].pid, TU_T_MS));
    master_end(&m);
}

static void test_term_then_kill(void)
{
    master_t m;
    const char *opts[] = {"-w", "1", "--graceful-timeout", "0.3", NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "ignore-term"));
    report_t r;
    TU_REQUIRE(next_report(&m, &r, TU_T_MS));
    int64_t t0 = tu_now_ms();
    TU_CHECK_OK(kill(m.pid, SIGTERM));
    TU_CHECK_EQ_INT(master_wait(&m, TU_T_MS), 0);
    int64_t dt = tu_now_ms() - t0;
    TU_CHECK(dt >= 250 && dt < 3000); /* bounded by the graceful timeout */
    TU_CHECK(strstr(m.log, "graceful timeout: SIGKILL") != NULL);
    TU_CHECK(gone_within(r.pid, TU_T_MS));
    master_end(&m);
}

static void test_crash_loop(void)
{
    master_t m;
    const char *opts[] = {"-w", "2", "--max-restarts", "3", "--restart-window", "10", NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "fail"));
    TU_CHECK_EQ_INT(master_wait(&m, TU_T_MS), 1);
    TU_CHECK(strstr(m.log, "crash loop") != NULL);
    master_end(&m);
}

static void test_restart_policies(void)
{
    /* never: two workers exit 0, nobody restarts them, the master ends. */
    master_t m;
    const char *never[] = {"-w", "2", "--restart", "never", NULL};
    TU_REQUIRE_OK(master_start(&m, never, "fail"));
    report_t r;
    TU_CHECK(next_report(&m, &r, TU_T_MS) && next_report(&m, &r, TU_T_MS));
    TU_CHECK_EQ_INT(master_wait(&m, TU_T_MS), 0);
    TU_CHECK(!next_report(&m, &r, 0));
    TU_CHECK(strstr(m.log, "not restarted (--restart never)") != NULL);
    master_end(&m);

    /* on-failure: a clean exit is not restarted... */
    const char *onf[] = {"-w", "1", "--restart", "on-failure", NULL};
    TU_REQUIRE_OK(master_start(&m, onf, "ok"));
    TU_CHECK(next_report(&m, &r, TU_T_MS));
    TU_CHECK_EQ_INT(master_wait(&m, TU_T_MS), 0);
    TU_CHECK(!next_report(&m, &r, 0));
    master_end(&m);
    /* ... a failure is. */
    const char *onf2[] = {
        "-w", "1", "--restart", "on-failure", "--max-restarts", "2", "--restart-window",
        "10", NULL};
    TU_REQUIRE_OK(master_start(&m, onf2, "fail"));
    TU_CHECK_EQ_INT(master_wait(&m, TU_T_MS), 1);
    int starts = 0;
    while (next_report(&m, &r, 0))
        starts++;
    TU_CHECK_EQ_INT(starts, 3); /* the first run and two restarts */
    master_end(&m);
}

static void test_exit3_not_restarted(void)
{
    master_t m;
    const char *opts[] = {"-w", "2", NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "exit3"));
    TU_CHECK_EQ_INT(master_wait(&m, TU_T_MS), 0);
    TU_CHECK(strstr(m.log, "exited with status 3: not restarted") != NULL);
    report_t r;
    int starts = 0;
    while (next_report(&m, &r, 0))
        starts++;
    TU_CHECK_EQ_INT(starts, 2);
    master_end(&m);
}

static void test_master_killed(void)
{
    master_t m;
    const char *opts[] = {"-w", "2", NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "ignore-term"));
    report_t r[2];
    TU_REQUIRE(next_report(&m, &r[0], TU_T_MS) && next_report(&m, &r[1], TU_T_MS));
    TU_CHECK_OK(kill(m.pid, SIGKILL));
    TU_CHECK_EQ_INT(master_wait(&m, TU_T_MS), -SIGKILL);
    /* Even workers that ignore SIGTERM die with their master. */
    TU_CHECK(gone_within(r[0].pid, TU_T_MS));
    TU_CHECK(gone_within(r[1].pid, TU_T_MS));
    master_end(&m);
    /* It could not remove its notify directory; the next master does (or
     * one a parallel test started: the check is that it is gone). */
    struct stat st;
    const char *opts2[] = {"-w", "1", NULL};
    report_t r2;
    TU_REQUIRE_OK(master_start(&m, opts2, "wait"));
    TU_REQUIRE(next_report(&m, &r2, TU_T_MS));
    TU_CHECK(lstat(r[0].notify, &st) < 0 && errno == ENOENT);
    char dir[128];
    snprintf(dir, sizeof dir, "%s", r[0].notify);
    *strrchr(dir, '/') = '\0';
    TU_CHECK(rmdir(dir) < 0 && errno == ENOENT);
    TU_CHECK_OK(lstat(r2.notify, &st)); /* its own is there */
    master_stop_ok(&m);
}

/* Send msg to the notify socket from this process (not a worker). */
static void send_notify(const char *path, const char *msg)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        TU_CHECK(!"notify path too long");
        close(fd);
        return;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    TU_CHECK(sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&sa, sizeof sa) ==
             (ssize_t)strlen(msg));
    close(fd);
}

/* --timeout: a silent worker is killed and replaced, even while an
 * outsider sends WATCHDOG=1 for it; a worker that beats is left alone. */
static void test_watchdog_and_outsiders(void)
{
    master_t m;
    const char *opts[] = {"-w", "1", "--timeout", "0.4", NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "silent"));
    report_t r, again;
    TU_REQUIRE(next_report(&m, &r, TU_T_MS));
    int64_t t0 = tu_now_ms();
    /* Keep-alives from a process that is not the worker: ignored. */
    for (int i = 0; i < 10; i++)
        send_notify(r.notify, "WATCHDOG=1\nMPROC_RECYCLE=1");
    TU_REQUIRE(next_report(&m, &again, TU_T_MS));
    int64_t dt = tu_now_ms() - t0;
    TU_CHECK_EQ_INT(again.id, 0);
    TU_CHECK(dt >= 300 && dt < 3000);
    TU_CHECK(log_has(&m, "(--timeout): SIGKILL", TU_T_MS));
    TU_CHECK(gone_within(r.pid, TU_T_MS));
    master_end(&m);

    TU_REQUIRE_OK(master_start(&m, opts, "beat"));
    TU_REQUIRE(next_report(&m, &r, TU_T_MS));
    TU_CHECK(log_has(&m, "ready", TU_T_MS));
    /* Three timeouts long: it must still be the same worker. */
    TU_CHECK(!next_report(&m, &again, 1200));
    TU_CHECK(strstr(m.log, "--timeout") == NULL);
    master_end(&m);
}

static void test_ttin_ttou(void)
{
    master_t m;
    const char *opts[] = {"-w", "1", "--graceful-timeout", "2", NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "wait"));
    report_t r, added;
    TU_REQUIRE(next_report(&m, &r, TU_T_MS));
    TU_CHECK_OK(kill(m.pid, SIGTTIN));
    TU_REQUIRE(next_report(&m, &added, TU_T_MS));
    TU_CHECK_EQ_INT(added.id, 1);
    TU_CHECK_EQ_INT(added.workers, 2);
    TU_CHECK_OK(kill(m.pid, SIGTTOU));
    TU_CHECK(log_has(&m, "removing worker 1", TU_T_MS));
    TU_CHECK(gone_within(added.pid, TU_T_MS));
    TU_CHECK(!gone_within(r.pid, 0));
    master_end(&m);
}

/* MPROC_RECYCLE=1: a successor in the same slot, ready before the
 * worker that asked is stopped. */
static void test_recycle(void)
{
    master_t m;
    const char *opts[] = {"-w", "1", "--ready", "--graceful-timeout", "2", NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "recycle"));
    report_t first, next;
    TU_REQUIRE(next_report(&m, &first, TU_T_MS));
    TU_REQUIRE(next_report(&m, &next, TU_T_MS));
    TU_CHECK_EQ_INT(next.id, first.id);
    TU_CHECK(gone_within(first.pid, TU_T_MS));
    TU_CHECK(!gone_within(next.pid, 0));
    char asks[64], ready[64], stop[96];
    snprintf(asks, sizeof asks, "pid %d asks to be replaced", first.pid);
    snprintf(ready, sizeof ready, "pid %d ready", next.pid);
    snprintf(stop, sizeof stop, "pid %d stopping (its successor is ready)", first.pid);
    /* The master signals, then logs: the worker may be gone first. */
    TU_CHECK(log_has(&m, stop, TU_T_MS));
    const char *a = strstr(m.log, asks), *b = strstr(m.log, ready), *c = strstr(m.log, stop);
    TU_CHECK(a && b && c && a < b && b < c);
    char marker[128];
    snprintf(marker, sizeof marker, "%s.recycled", m.fifo_path);
    unlink(marker);
    master_end(&m);
}

/* HUP with --ready: the new generation is up before the old one stops. */
static void test_reload_ready(void)
{
    master_t m;
    const char *opts[] = {"-w", "2", "--ready", "--graceful-timeout", "2", NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "ready"));
    report_t old[2], neu[2];
    TU_REQUIRE(next_report(&m, &old[0], TU_T_MS) && next_report(&m, &old[1], TU_T_MS));
    /* The old generation up first: a reload of a generation still
     * starting is another case (it replaces it). */
    char line[96];
    for (int i = 0; i < 2; i++) {
        snprintf(line, sizeof line, "pid %d ready", old[i].pid);
        TU_CHECK(log_has(&m, line, TU_T_MS));
    }
    TU_CHECK_OK(kill(m.pid, SIGHUP));
    TU_REQUIRE(next_report(&m, &neu[0], TU_T_MS) && next_report(&m, &neu[1], TU_T_MS));
    /* Each old worker was told to stop only after its successor was ready. */
    for (int i = 0; i < 2; i++) {
        char ready[64], stop[96];
        snprintf(ready, sizeof ready, "pid %d ready", neu[i].pid);
        int oldpid = old[0].id == neu[i].id ? old[0].pid : old[1].pid;
        snprintf(stop, sizeof stop, "pid %d stopping (its successor is ready)", oldpid);
        TU_CHECK(log_has(&m, ready, TU_T_MS) && log_has(&m, stop, TU_T_MS));
        const char *a = strstr(m.log, ready), *b = strstr(m.log, stop);
        if (!TU_CHECK(a && b && a < b))
            fprintf(stderr, "  master's log:\n%s", m.log);
        TU_CHECK(gone_within(oldpid, TU_T_MS));
    }
    master_end(&m);
}

/* A reload whose new generation crash-loops (a bad deploy): the old
 * workers stay in charge and the master goes on; once fixed, a reload
 * works. */
static void test_reload_crash_loop(void)
{
    master_t m;
    const char *opts[] = {"-w", "2", "--ready", "--max-restarts", "3", "--graceful-timeout",
                          "5",  NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "ready-unless-broken"));
    report_t old[2], r;
    TU_REQUIRE(next_report(&m, &old[0], TU_T_MS) && next_report(&m, &old[1], TU_T_MS));
    TU_REQUIRE(log_count_reaches(&m, " ready\n", 2, TU_T_MS));
    char broken[128];
    snprintf(broken, sizeof broken, "%s.broken", m.fifo_path);
    int fd = open(broken, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    TU_REQUIRE(fd >= 0);
    close(fd);
    TU_CHECK_OK(kill(m.pid, SIGHUP));
    TU_CHECK(log_has(&m, "crash loop in the new generation", TU_T_MS));
    TU_CHECK(strstr(m.log, "stopping everything") == NULL);
    for (int i = 0; i < 2; i++) {
        char stays[64];
        snprintf(stays, sizeof stays, "pid %d stays", old[i].pid);
        TU_CHECK(log_has(&m, stays, TU_T_MS));
        TU_CHECK_OK(kill(old[i].pid, 0));
    }
    while (next_report(&m, &r, 0)) /* the failed starts' reports */
        ;
    /* Fixed: the next reload replaces both. */
    TU_CHECK_OK(unlink(broken));
    TU_CHECK_OK(kill(m.pid, SIGHUP));
    for (int i = 0; i < 2; i++) {
        char stop[96];
        snprintf(stop, sizeof stop, "pid %d stopping (its successor is ready)", old[i].pid);
        TU_CHECK(log_has(&m, stop, TU_T_MS));
        TU_CHECK(gone_within(old[i].pid, TU_T_MS));
    }
    master_stop_ok(&m);
}

static void test_bad_usage(void)
{
    const char *bad[][8] = {
        {"mproc", "run", NULL},
        {"mproc", "run", "-w", "zero", "--", "true"},
        {"mproc", "run", "--restart", "sometimes", "--", "true"},
        {"mproc", "run", "--bogus", "1", "--", "true"},
        {"mproc", "run", "--pidfile", "-w", "2", "--", "true"},
        {"mproc", "run", "--bind", "--", "true"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        exec_arg_t a = {bad[i], NULL};
        int status = TU_NO_CODE;
        int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
        int saved = dup(2);
        dup2(devnull, 2);
        int rc = tu_run_child(exec_master, &a, TU_T_MS, &status);
        dup2(saved, 2);
        close(saved);
        close(devnull);
        TU_CHECK_OK(rc);
        TU_CHECK_EQ_INT(status, 2);
    }
    /* A second instance on a taken port: exit 1, the first one's pidfile
     * untouched. */
    master_t a, b;
    char pidfile[160], port_bind[64], buf[32] = "";
    snprintf(pidfile, sizeof pidfile, "/tmp/mproc-sup-test-%d.pid", (int)getpid());
    const char *oa[] = {"-w", "1", "--bind", "127.0.0.1:0", "--pidfile", pidfile, NULL};
    TU_REQUIRE_OK(master_start(&a, oa, "wait"));
    TU_REQUIRE(log_port(&a) > 0);
    snprintf(port_bind, sizeof port_bind, "127.0.0.1:%d", log_port(&a));
    const char *ob[] = {"-w", "1", "--bind", port_bind, "--pidfile", pidfile, NULL};
    TU_REQUIRE_OK(master_start(&b, ob, "wait"));
    TU_CHECK_EQ_INT(master_wait(&b, TU_T_MS), 1);
    int fd = open(pidfile, O_RDONLY | O_CLOEXEC);
    TU_CHECK(fd >= 0 && read(fd, buf, sizeof buf - 1) > 0 && atoi(buf) == a.pid);
    if (fd >= 0)
        close(fd);
    master_end(&b);
    master_stop_ok(&a);
    TU_CHECK(access(pidfile, F_OK) < 0); /* removed by its writer */
    /* A bind that cannot work: a clear failure, exit 1. */
    master_t m;
    const char *opts[] = {"-w", "1", "--bind", "999.1.1.1:80", NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "wait"));
    TU_CHECK_EQ_INT(master_wait(&m, TU_T_MS), 1);
    TU_CHECK(strstr(m.log, "cannot listen on 999.1.1.1:80") != NULL);
    master_end(&m);
}

/* ------------------------------------------------------------------ prefork */

/* The library's prefork mode: the preload makes a segment with a lock and
 * a counter before any worker exists; each worker (forked, no exec)
 * inherits it, adds under the lock, says READY=1 and leaves with status 3
 * (do not restart); the master returns once every slot is empty. */
typedef struct {
    mproc_shm_t *shm;
    mproc_lock_t *lock;
    int64_t *count; /* [0] additions, [1] worker inits */
    int nfds_seen;
} prefork_t;

static int pf_preload(void *ctx)
{
    prefork_t *pf = ctx;
    int rc = mproc_shm_create(&pf->shm, 64 * 1024);
    if (rc == 0)
        rc = mproc_lock_create(pf->shm, NULL, &pf->lock);
    if (rc == 0)
        rc = mproc_array_create(pf->shm, NULL, MPROC_INT64, 2, (void **)&pf->count);
    return rc;
}

static int pf_init(void *ctx, int id)
{
    prefork_t *pf = ctx;
    (void)id;
    if (mproc_lock_acquire(pf->lock, TU_T_MS) != 0)
        return 10;
    pf->count[1]++;
    mproc_lock_release(pf->lock);
    return 0;
}

static int pf_worker(void *ctx, int id, const int *fds, int nfds)
{
    prefork_t *pf = ctx;
    (void)id;
    int acc = 0;
    socklen_t len = sizeof acc;
    if (nfds != 1 || fds[0] != 3 || getsockopt(3, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0 ||
        !acc)
        return 11;
    for (int i = 0; i < 1000; i++) {
        if (mproc_lock_acquire(pf->lock, TU_T_MS) != 0)
            return 12;
        pf->count[0]++;
        mproc_lock_release(pf->lock);
    }
    if (mproc_notify("READY=1") != 0)
        return 13;
    return MPROC_EXIT_NO_RESTART;
}

static void test_prefork_library(void)
{
    prefork_t pf = {0};
    const char *binds[] = {"127.0.0.1:0"};
    mproc_supervisor_opts_t o = {.workers = 4,
                                 .binds = binds,
                                 .nbinds = 1,
                                 .preload = pf_preload,
                                 .worker_init = pf_init,
                                 .worker = pf_worker,
                                 .ctx = &pf};
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC), saved = dup(2);
    dup2(devnull, 2); /* the master's log */
    int rc = mproc_supervise(&o);
    dup2(saved, 2);
    close(saved);
    close(devnull);
    TU_CHECK_EQ_INT(rc, 0);
    TU_REQUIRE(pf.count);
    TU_CHECK_EQ_INT(pf.count[0], 4000);
    TU_CHECK_EQ_INT(pf.count[1], 4);
    mproc_shm_close(pf.shm);
    /* Both or neither of argv and worker: refused. */
    char *argv[] = {"true", NULL};
    o.argv = argv;
    TU_CHECK_EQ_INT(mproc_supervise(&o), -EINVAL);
    o.argv = NULL;
    o.worker = NULL;
    TU_CHECK_EQ_INT(mproc_supervise(&o), -EINVAL);
    /* mproc_notify outside a supervisor does nothing. */
    char *old = getenv("NOTIFY_SOCKET") ? strdup(getenv("NOTIFY_SOCKET")) : NULL;
    unsetenv("NOTIFY_SOCKET");
    TU_CHECK_EQ_INT(mproc_notify("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "/nonexistent/notify", 1);
    TU_CHECK(mproc_notify("READY=1") < 0);
    unsetenv("NOTIFY_SOCKET");
    if (old) {
        setenv("NOTIFY_SOCKET", old, 1);
        free(old);
    }
}

/* A supervisor above (systemd, Type=notify): the master tells it READY=1
 * (with MAINPID) once every worker is ready, feeds its watchdog, says
 * STOPPING=1; its workers get the master's socket and no watchdog of
 * the master's. */

/* The next datagram on fd within timeout_ms, in buf: its length, or -1. */
static ssize_t next_datagram(int fd, char *buf, size_t cap, int timeout_ms)
{
    if (tu_wait_readable(fd, timeout_ms) != 1)
        return -1;
    ssize_t n = recv(fd, buf, cap - 1, MSG_DONTWAIT);
    buf[n > 0 ? n : 0] = '\0';
    return n;
}

static void test_notify_upward(void)
{
    master_t m;
    TU_REQUIRE_OK(master_dir(&m)); /* a private directory for "systemd's" socket */
    char path[96];
    snprintf(path, sizeof path, "%s/systemd-notify", m.dir);
    int up = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    TU_REQUIRE(up >= 0 && bind(up, (struct sockaddr *)&sa, sizeof sa) == 0);
    setenv("NOTIFY_SOCKET", path, 1);
    setenv("WATCHDOG_USEC", "200000", 1); /* 200 ms: fed every 100 ms */
    const char *argv[] = {"mproc", "run",      "-w",        "2",     "--ready",
                          "--",    SUP_WORKER, m.fifo_path, "ready", NULL};
    int rc = master_exec(&m, NULL, argv);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    TU_REQUIRE_OK(rc);
    report_t r[2];
    TU_REQUIRE(next_report(&m, &r[0], TU_T_MS) && next_report(&m, &r[1], TU_T_MS));
    char buf[256], want[64];
    snprintf(want, sizeof want, "READY=1\nMAINPID=%d\n", (int)m.pid);
    int watchdogs = 0, ready = 0;
    int64_t end = tu_now_ms() + TU_T_MS;
    while (!(ready && watchdogs >= 2) && tu_now_ms() < end) {
        if (next_datagram(up, buf, sizeof buf, TU_T_MS) < 0)
            break;
        if (strcmp(buf, "WATCHDOG=1") == 0)
            watchdogs++;
        if (strncmp(buf, want, strlen(want)) == 0) {
            ready = 1; /* only once both workers were */
            TU_CHECK_EQ_INT(log_count(&m, " ready\n"), 2);
        }
    }
    TU_CHECK(ready);
    TU_CHECK(watchdogs >= 2);
    for (int i = 0; i < 2; i++) {
        TU_CHECK(strcmp(r[i].notify, path) != 0); /* the master's socket, not systemd's */
        char env[64], envbuf[8192] = "";
        snprintf(env, sizeof env, "/proc/%d/environ", r[i].pid);
        int fd = open(env, O_RDONLY | O_CLOEXEC);
        ssize_t k = fd >= 0 ? read(fd, envbuf, sizeof envbuf - 1) : -1;
        if (fd >= 0)
            close(fd);
        TU_CHECK(k > 0);
        for (ssize_t j = 0; j < k; j++)
            if (!envbuf[j])
                envbuf[j] = '\n';
        TU_CHECK(strstr(envbuf, "WATCHDOG_USEC=") == NULL);
    }
    TU_CHECK_OK(kill(m.pid, SIGTERM));
    int stopping = 0;
    while (!stopping && next_datagram(up, buf, sizeof buf, TU_T_MS) >= 0)
        stopping = strcmp(buf, "STOPPING=1") == 0;
    TU_CHECK(stopping);
    TU_CHECK_EQ_INT(master_wait(&m, TU_T_MS), 0);
    close(up);
    unlink(path);
    master_end(&m);
}

/* ------------------------------------------------------------------ upgrade */

static int count_fds_of(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Children of pid that are zombies (nobody collected them). */
static int zombies_of(pid_t pid)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t k = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (k < 0)
        return -1;
    buf[k] = '\0';
    int n = 0;
    for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
        char state = 0;
        if (tu_proc_stat(atoi(tok), NULL, &state) == 0 && state == 'Z')
            n++;
    }
    return n;
}

/* A connection to 127.0.0.1:port: its fd, or -errno. */
static int connect_local(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

/* Connect to 127.0.0.1:port and read the answer to EOF: 0, or -errno. */
static int ask(int port, char *out, size_t cap)
{
    int fd = connect_local(port);
    out[0] = '\0';
    if (fd < 0)
        return fd;
    int rc = 0;
    size_t len = 0;
    while (rc == 0) {
        if (tu_wait_readable(fd, TU_T_MS) != 1) {
            rc = -ETIMEDOUT;
            break;
        }
        ssize_t k = read(fd, out + len, cap - 1 - len);
        if (k < 0)
            rc = -errno;
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    close(fd);
    out[len] = '\0';
    return rc;
}

/* USR2 under `mproc run`: the same master pid re-executes itself, keeps
 * the socket (same port) and the notify socket, starts a new generation
 * and stops each old worker once its successor is ready; twice in a row,
 * with no fd left behind. */
static void test_upgrade_command(void)
{
    master_t m;
    const char *opts[] = {"-w", "2",      "--ready",     "--graceful-timeout",
                          "5",  "--bind", "127.0.0.1:0", NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "ready"));
    report_t old[2];
    TU_REQUIRE(next_report(&m, &old[0], TU_T_MS) && next_report(&m, &old[1], TU_T_MS));
    int port = log_port(&m);
    TU_REQUIRE(port > 0);
    TU_REQUIRE(log_count_reaches(&m, " ready\n", 2, TU_T_MS));
    int fds_before = count_fds_of(m.pid);
    for (int round = 1; round <= 2; round++) {
        TU_CHECK_OK(kill(m.pid, SIGUSR2));
        report_t neu[2];
        TU_REQUIRE(next_report(&m, &neu[0], TU_T_MS) && next_report(&m, &neu[1], TU_T_MS));
        char line[128];
        snprintf(line, sizeof line, "mproc[%d]: master pid %d: re-executed, taking over 2 workers",
                 (int)m.pid, (int)m.pid);
        TU_CHECK(log_count_reaches(&m, line, round, TU_T_MS));
        TU_CHECK(log_count(&m, "kept from the previous image") == round);
        for (int i = 0; i < 2; i++) {
            TU_CHECK_EQ_STR(neu[i].notify, old[0].notify); /* the same socket */
            TU_CHECK_EQ_INT(neu[i].listen_fds, 1);
            TU_CHECK_EQ_INT(neu[i].listening, 1);
            /* Each old worker stops only after its successor is ready. */
            int oldpid = old[0].id == neu[i].id ? old[0].pid : old[1].pid;
            char ready[64], stop[96];
            snprintf(ready, sizeof ready, "pid %d ready", neu[i].pid);
            snprintf(stop, sizeof stop, "pid %d stopping (its successor is ready)", oldpid);
            TU_CHECK(log_has(&m, ready, TU_T_MS) && log_has(&m, stop, TU_T_MS));
            const char *a = strstr(m.log, ready), *b = strstr(m.log, stop);
            if (!TU_CHECK(a && b && a < b))
                fprintf(stderr, "  master's log:\n%s", m.log);
            TU_CHECK(gone_within(oldpid, TU_T_MS));
            snprintf(stop, sizeof stop, "pid %d exited", oldpid); /* and collected */
            TU_CHECK(log_has(&m, stop, TU_T_MS));
        }
        TU_CHECK(neu[0].id != neu[1].id);
        old[0] = neu[0];
        old[1] = neu[1];
        /* The same listening socket: still the same port. */
        int fd = connect_local(port);
        TU_CHECK(fd >= 0);
        if (fd >= 0)
            close(fd);
    }
    TU_CHECK_EQ_INT(count_fds_of(m.pid), fds_before);
    TU_CHECK_EQ_INT(zombies_of(m.pid), 0);
    master_stop_ok(&m);
}

/* An executable that cannot be run any more: the master says so and goes
 * on, workers untouched; HUP and TERM still work. */
static void test_upgrade_exec_fails(void)
{
    master_t m;
    TU_REQUIRE_OK(master_dir(&m));
    char copy[128];
    snprintf(copy, sizeof copy, "%s/mproc-copy", m.dir);
    int in = open(MPROC_CLI, O_RDONLY | O_CLOEXEC),
        out = open(copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0700);
    TU_REQUIRE(in >= 0 && out >= 0);
    char buf[65536];
    for (ssize_t k; (k = read(in, buf, sizeof buf)) > 0;)
        TU_REQUIRE_OK(tu_write_full(out, buf, (size_t)k));
    close(in);
    close(out);
    const char *argv[] = {"mproc", "run", "-w", "1", "--", SUP_WORKER, m.fifo_path, "wait", NULL};
    TU_REQUIRE_OK(master_exec(&m, copy, argv));
    report_t r, r2;
    TU_REQUIRE(next_report(&m, &r, TU_T_MS));
    TU_CHECK_OK(unlink(copy));
    TU_CHECK_OK(kill(m.pid, SIGUSR2));
    TU_CHECK(log_has(&m, "carrying on", TU_T_MS));
    TU_CHECK(log_has(&m, "cannot re-execute", 0));
    TU_CHECK_OK(kill(r.pid, 0)); /* untouched */
    TU_CHECK_OK(kill(m.pid, SIGHUP));
    TU_CHECK(next_report(&m, &r2, TU_T_MS) && r2.pid != r.pid);
    TU_CHECK(gone_within(r.pid, TU_T_MS));
    master_stop_ok(&m);
}

/* sup_prefork's version file: its first line is the "application". */
static int write_version(const char *vfile, const char *text)
{
    FILE *f = fopen(vfile, "we");
    if (!f)
        return -errno;
    int ok = fprintf(f, "%s\n", text) > 0;
    return fclose(f) == 0 && ok ? 0 : -EIO;
}

/* m's directory, with a version file (path in vfile) holding text. */
static int prefork_dir(master_t *m, char *vfile, size_t cap, const char *text)
{
    int rc = master_dir(m);
    if (rc < 0)
        return rc;
    snprintf(vfile, cap, "%s/version", m->dir);
    return write_version(vfile, text);
}

/* Ask until every one of `want` consecutive answers is version v (and
 * none failed on the way): 1, or 0 on timeout or a failed request. */
static int answers_become(int port, const char *v, int want, int *failed)
{
    int64_t end = tu_now_ms() + TU_T_MS;
    int streak = 0;
    while (streak < want && tu_now_ms() < end) {
        char ans[128];
        if (ask(port, ans, sizeof ans) != 0 || !strchr(ans, '\n')) {
            (*failed)++;
            streak = 0;
            continue;
        }
        streak = strncmp(ans, v, strlen(v)) == 0 && ans[strlen(v)] == ' ' ? streak + 1 : 0;
    }
    return streak >= want;
}

/* The library's case, the reason USR2 exists: the master preloaded the
 * application, so only a new image loads new code. Requests go on
 * throughout and none fails; a new image whose preload fails leaves the
 * old workers serving; the old image's resource tracker is collected. */
static void test_upgrade_library(void)
{
    master_t m;
    char vfile[128];
    TU_REQUIRE_OK(prefork_dir(&m, vfile, sizeof vfile, "v1"));
    const char *argv[] = {"sup_prefork", vfile, "2", NULL};
    TU_REQUIRE_OK(master_exec(&m, SUP_PREFORK, argv));
    TU_CHECK(log_has(&m, "sup_prefork upgraded=0", TU_T_MS));
    int port = log_port(&m);
    TU_REQUIRE(port > 0);
    TU_REQUIRE(log_count_reaches(&m, " ready\n", 2, TU_T_MS));
    int failed = 0;
    TU_CHECK(answers_become(port, "v1", 5, &failed));
    /* A new version; one whose preload fails; one whose new address
     * cannot be bound (listed first: the socket kept must survive it);
     * then a good one again, on the same port. */
    const char *versions[] = {"v2", "fail", "v3\n192.0.2.1:1", "v4"};
    for (int i = 0; i < 4; i++) {
        TU_REQUIRE_OK(write_version(vfile, versions[i]));
        TU_CHECK_OK(kill(m.pid, SIGUSR2));
        TU_CHECK(log_count_reaches(&m, "sup_prefork upgraded=1", i + 1, TU_T_MS));
        if (i == 1 || i == 2) {
            TU_CHECK(log_count_reaches(&m, "the upgrade cannot start workers", i, TU_T_MS));
            TU_CHECK(answers_become(port, "v2", 10, &failed)); /* the old ones serve */
            TU_CHECK_OK(kill(m.pid, 0));
            continue;
        }
        TU_CHECK(answers_become(port, versions[i], 20, &failed));
    }
    TU_CHECK(log_has(&m, "cannot listen on 192.0.2.1:1", 0));
    TU_CHECK(strstr(m.log, "no longer listening") == NULL);
    TU_CHECK_EQ_INT(failed, 0);
    /* The old image's tracker ends with the last old worker: collected. */
    int64_t end = tu_now_ms() + TU_T_MS;
    while (zombies_of(m.pid) != 0 && tu_now_ms() < end)
        tu_wait_readable(m.err, 20); /* the log moves when workers exit */
    TU_CHECK_EQ_INT(zombies_of(m.pid), 0);
    unlink(vfile);
    master_stop_ok(&m);
}

/* Without opts.upgrade, USR2 changes nothing. */
static void test_upgrade_not_enabled(void)
{
    master_t m;
    char vfile[128];
    TU_REQUIRE_OK(prefork_dir(&m, vfile, sizeof vfile, "v1"));
    const char *argv[] = {"sup_prefork", vfile, "1", "no-upgrade", NULL};
    TU_REQUIRE_OK(master_exec(&m, SUP_PREFORK, argv));
    int port = log_port(&m), failed = 0;
    TU_REQUIRE(port > 0);
    TU_REQUIRE(log_count_reaches(&m, " ready\n", 1, TU_T_MS));
    TU_CHECK_OK(kill(m.pid, SIGUSR2));
    TU_CHECK(log_has(&m, "SIGUSR2: ignored", TU_T_MS));
    TU_CHECK(answers_become(port, "v1", 3, &failed));
    TU_CHECK_EQ_INT(failed, 0);
    TU_CHECK_EQ_INT(log_count(&m, "sup_prefork upgraded="), 1);
    unlink(vfile);
    master_stop_ok(&m);
}

/* Workers added by TTIN beyond the new image's count: their slots exist
 * (no out-of-bounds), and they are retired once it runs its own. */
static void test_upgrade_after_ttin(void)
{
    master_t m;
    const char *opts[] = {"-w", "1", "--graceful-timeout", "5", NULL};
    TU_REQUIRE_OK(master_start(&m, opts, "wait"));
    report_t r[4], neu;
    TU_REQUIRE(next_report(&m, &r[0], TU_T_MS));
    for (int i = 1; i < 4; i++) {
        TU_CHECK_OK(kill(m.pid, SIGTTIN));
        TU_REQUIRE(next_report(&m, &r[i], TU_T_MS));
    }
    TU_CHECK_OK(kill(m.pid, SIGUSR2));
    TU_REQUIRE(next_report(&m, &neu, TU_T_MS));
    TU_CHECK_EQ_INT(neu.id, 0);
    TU_CHECK(log_count_reaches(&m, "not in the new image's worker count", 3, TU_T_MS));
    for (int i = 0; i < 4; i++)
        TU_CHECK(gone_within(r[i].pid, TU_T_MS));
    TU_CHECK(!next_report(&m, &neu, 100)); /* nothing else started */
    master_stop_ok(&m);
}

/* A handover that is not whole (no "end" line): refused, nothing adopted. */
static void test_upgrade_bad_handover(void)
{
    master_t m;
    TU_REQUIRE_OK(master_dir(&m));
    char path[128];
    snprintf(path, sizeof path, "%s/handover", m.dir);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600); /* inherited: not CLOEXEC */
    TU_REQUIRE(fd >= 0);
    const char *text = "mproc-upgrade 1\nmask 0\nchld 0\npipe 0\nnotify 0 /tmp/x\n";
    TU_REQUIRE_OK(tu_write_full(fd, text, strlen(text)));
    unlink(path);
    char v[16];
    snprintf(v, sizeof v, "%d", fd);
    setenv("MPROC_UPGRADE_FD", v, 1);
    const char *argv[] = {"sup_prefork", "/nonexistent", "1", NULL};
    int rc = master_exec(&m, SUP_PREFORK, argv);
    unsetenv("MPROC_UPGRADE_FD");
    close(fd);
    TU_REQUIRE_OK(rc);
    TU_CHECK_EQ_INT(master_wait(&m, TU_T_MS), 1);
    TU_CHECK(strstr(m.log, "handover is unusable") != NULL);
    TU_CHECK(strstr(m.log, "sup_prefork upgraded=1") != NULL);
    master_end(&m);
}

static const tu_case_t cases[] = {
    TU_CASE(test_restart_same_slot_and_listen_fds),
    TU_CASE(test_term_then_kill),
    TU_CASE(test_crash_loop),
    TU_CASE(test_restart_policies),
    TU_CASE(test_exit3_not_restarted),
    TU_CASE(test_master_killed),
    TU_CASE(test_watchdog_and_outsiders),
    TU_CASE(test_ttin_ttou),
    TU_CASE(test_reload_ready),
    TU_CASE(test_recycle),
    TU_CASE(test_reload_crash_loop),
    TU_CASE(test_bad_usage),
    TU_CASE(test_notify_upward),
    TU_CASE(test_prefork_library),
    TU_CASE(test_upgrade_command),
    TU_CASE(test_upgrade_exec_fails),
    TU_CASE(test_upgrade_library),
    TU_CASE(test_upgrade_bad_handover),
    TU_CASE(test_upgrade_not_enabled),
    TU_CASE(test_upgrade_after_ttin),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
