/*
 * demo.c - what `make demo` runs: mproc's start methods and the fork
 * pitfalls it removes (P2, P3, P4, P7, P8, P9, P11, P13), each shown in a
 * few lines of output, a queue that outlives a consumer killed inside a
 * get, and `mproc run` serving examples/http_prefork.c (a worker killed and
 * replaced, a reload, a graceful stop).
 *
 * Every child reports back through a pipe handed over with
 * mproc_process_pass_fd, and the parent checks what it reads: the demo exits
 * 0 only if every step behaved as documented. Every wait is bounded (join
 * with a timeout, kill on timeout), so it always finishes by itself.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <mproc.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define JOIN_MS 2000   /* no step should come near this */
#define REPORT_MS 2000 /* how long to wait for a child's report */
#define BUDGET_S 50    /* the whole demo, whatever goes wrong */
#define MAX_FDS 16

/* Set by the parent after startup: a forked child sees it, a fresh image
 * (spawn, forkserver) has the initial 0. */
static int g_configured;

/* Held by a parent thread while children start (P2). */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static pid_t g_parent;
static int g_failures;

/* What a child is told (copied into it by mproc_process_create). */
typedef struct {
    int report_fd; /* write end of the report pipe, same number in the child */
    int method;
} job_t;

/* What a child reports: small enough for one atomic pipe write. */
typedef struct {
    int pid;
    int configured;
    int lock_rc; /* pthread_mutex_timedlock's result, for P2 */
    int nfds;
    int fds[MAX_FDS];
} report_t;

static int report_rd = -1, report_wr = -1;

static const char *method_name(int m)
{
    switch (m) {
    case MPROC_START_FORK:
        return "fork";
    case MPROC_START_SPAWN:
        return "spawn";
    case MPROC_START_FORKSERVER:
        return "forkserver";
    default:
        return "default";
    }
}

static void expect(int ok, const char *what)
{
    printf("     %s %s\n", ok ? "ok:" : "UNEXPECTED:", what);
    if (!ok)
        g_failures++;
}

/* The open fds of this process, from /proc/self/fd. */
static int list_fds(int *fds, int max)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || fd == dirfd(d))
            continue;
        if (n < max)
            fds[n] = fd;
        n++;
    }
    closedir(d);
    /* readdir order is the kernel's; sort for reading. */
    for (int i = 1; i < n && i < max; i++)
        for (int j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
            int t = fds[j];
            fds[j] = fds[j - 1];
            fds[j - 1] = t;
        }
    return n;
}

static void format_fds(char *buf, size_t size, const int *fds, int n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && i < MAX_FDS && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%d", i ? " " : "", fds[i]);
    if (n > MAX_FDS && used < size)
        snprintf(buf + used, size - used, " ...");
}

static int has_fd(const report_t *r, int fd)
{
    for (int i = 0; i < r->nfds && i < MAX_FDS; i++)
        if (r->fds[i] == fd)
            return 1;
    return 0;
}

/* ---- child entries ---------------------------------------------------- */

/* The job a child was given, checked for size before it is read. */
static job_t job_of(const void *arg, size_t len)
{
    job_t job = {.report_fd = -1};
    if (arg && len == sizeof job)
        memcpy(&job, arg, sizeof job);
    return job;
}

static void send_report(const void *arg, size_t len, report_t *r)
{
    job_t job = job_of(arg, len);
    r->pid = (int)getpid();
    r->configured = g_configured;
    /* One write of less than PIPE_BUF bytes: never interleaved. */
    if (write(job.report_fd, r, sizeof *r) != (ssize_t)sizeof *r)
        _exit(99);
}

/* Step 1: say who we are and what we inherited. */
static int show_inheritance(const void *arg, size_t len)
{
    report_t r = {0};
    r.nfds = list_fds(r.fds, MAX_FDS);
    char fds[128];
    format_fds(fds, sizeof fds, r.fds, r.nfds);
    printf("   %-10s child pid %-7d g_configured=%-3d open fds: %s\n",
           method_name(job_of(arg, len).method), (int)getpid(), g_configured, fds);
    send_report(arg, len, &r);
    return 0;
}

/* Step 2: exit with a chosen status, or wait to be killed. */
static int exit_with_3(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return 3;
}

static int wait_to_be_killed(const void *arg, size_t len)
{
    report_t r = {0};
    send_report(arg, len, &r); /* "I am running" */
    sleep(60);                 /* bounded even if nobody kills us */
    return 1;
}

/* Step 3: take the lock a parent thread holds. Bounded: a plain lock()
 * would hang forever in the forked child. */
static int take_lock(const void *arg, size_t len)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 300 * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    report_t r = {0};
    r.lock_rc = pthread_mutex_timedlock(&g_lock, &until);
    if (r.lock_rc == 0)
        pthread_mutex_unlock(&g_lock);
    send_report(arg, len, &r);
    return 0;
}

/* Step 4: do nothing; whatever the child prints comes from inherited
 * buffers or from atexit handlers that are not its own. */
static int do_nothing(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return 0;
}

/* ---- parent side -------------------------------------------------------- */

/* Create and start a child that gets the report pipe; NULL and *rc on error. */
static mproc_process_t *start_child(mproc_entry_fn fn, int method, int daemon, int *rc)
{
    job_t job = {.report_fd = report_wr, .method = method};
    char name[32];
    snprintf(name, sizeof name, "demo-%s", method_name(method));
    mproc_process_opts_t opts = {
        .name = name, .method = (mproc_start_method_t)method, .daemon = daemon};
    mproc_process_t *p = NULL;
    *rc = mproc_process_create(&p, fn, &job, sizeof job, &opts);
    if (*rc == 0)
        *rc = mproc_process_pass_fd(p, report_wr);
    if (*rc == 0)
        *rc = mproc_process_start(p);
    if (*rc < 0) {
        mproc_process_free(p);
        return NULL;
    }
    return p;
}

/* Join within JOIN_MS (kill on timeout), store the exit code and free p.
 * Returns 0 or the error code of join/exitcode. */
static int finish(mproc_process_t *p, int *code)
{
    int pid = (int)mproc_process_pid(p);
    int rc = mproc_process_join(p, JOIN_MS);
    if (rc == -ETIMEDOUT) {
        printf("     (child %d still running after %d ms: killed)\n", pid, JOIN_MS);
        mproc_process_kill(p);
        rc = mproc_process_join(p, JOIN_MS);
    }
    if (rc == 0)
        rc = mproc_process_exitcode(p, code);
    if (mproc_process_free(p) < 0)
        printf("     (child %d could not be freed: still running)\n", pid);
    return rc;
}

static int read_report(report_t *r)
{
    struct pollfd pfd = {.fd = report_rd, .events = POLLIN};
    int n = poll(&pfd, 1, REPORT_MS);
    if (n <= 0)
        return -1;
    return read(report_rd, r, sizeof *r) == (ssize_t)sizeof *r ? 0 : -1;
}

static void step_start_methods(void)
{
    int fds[MAX_FDS];
    int n = list_fds(fds, MAX_FDS);
    char list[128];
    format_fds(list, sizeof list, fds, n);
    printf("\n1. Three start methods. The parent set g_configured=42 after startup.\n"
           "   parent     pid %-13d open fds: %s (report pipe: read %d, write %d)\n",
           (int)getpid(), list, report_rd, report_wr);
    fflush(stdout);

    for (int m = MPROC_START_FORK; m <= MPROC_START_FORKSERVER; m++) {
        int rc, code = -1;
        mproc_process_t *p = start_child(show_inheritance, m, 0, &rc);
        if (!p) {
            printf("   %-10s start failed: %s\n", method_name(m), mproc_strerror(rc));
            g_failures++;
            continue;
        }
        report_t r;
        int got = read_report(&r);
        rc = finish(p, &code);
        if (got < 0) {
            expect(0, "the child sent its report");
            continue;
        }
        if (m == MPROC_START_FORK) {
            expect(r.configured == 42 && has_fd(&r, report_rd),
                   "a copy of the parent: its globals and all its fds (the pipe's read end too)");
        } else {
            /* A fresh image: stdio and the fd handed over, nothing else
             * (without pidfds, one more: the child's own exit pipe). */
            int extra = 0;
            for (int i = 0; i < r.nfds && i < MAX_FDS; i++)
                if (r.fds[i] > 2 && r.fds[i] != report_wr)
                    extra++;
            int allowed = mproc_have_pidfd() ? 0 : 1;
            expect(r.configured == 0 && has_fd(&r, report_wr) && r.nfds <= MAX_FDS &&
                       extra <= allowed,
                   allowed ? "a fresh image: initial globals, fds 0 1 2, the passed pipe and\n"
                             "         its own exit pipe (no pidfds here)"
                           : "a fresh image: initial globals, only fds 0 1 2 and the passed pipe");
        }
        if (rc < 0 || code != 0)
            expect(0, "the child exited with status 0");
    }
}

static void step_exit_codes(void)
{
    printf("\n2. Exit codes (as Python's exitcode: status, or minus the signal).\n");
    int rc, code = -1;
    mproc_process_t *p = start_child(exit_with_3, MPROC_START_DEFAULT, 0, &rc);
    if (p)
        rc = finish(p, &code);
    printf("   child returned 3 from its entry: exitcode %d\n", rc < 0 ? rc : code);
    expect(rc == 0 && code == 3, "exitcode 3");

    /* A daemon: if this demo died now, the child would die with it. */
    p = start_child(wait_to_be_killed, MPROC_START_DEFAULT, 1, &rc);
    report_t r;
    if (p && read_report(&r) == 0) {
        rc = mproc_process_join(p, 100);
        printf("   join(100 ms) on a child that sleeps 60 s: %s\n",
               rc == -ETIMEDOUT ? "-ETIMEDOUT" : mproc_strerror(rc));
        expect(rc == -ETIMEDOUT, "-ETIMEDOUT, the child still runs");
        mproc_process_kill(p);
        rc = finish(p, &code);
        printf("   mproc_process_kill (SIGKILL): exitcode %d\n", rc < 0 ? rc : code);
        expect(rc == 0 && code == -SIGKILL, "exitcode -9");
    } else {
        printf("   start failed: %s\n", mproc_strerror(rc));
        g_failures++;
        if (p)
            finish(p, &code);
    }
}

/* The thread that holds g_lock while the main thread starts children. */
static sem_t lock_held, lock_release;

static void *hold_lock(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&g_lock);
    sem_post(&lock_held);
    while (sem_wait(&lock_release) < 0 && errno == EINTR)
        ;
    pthread_mutex_unlock(&g_lock);
    return NULL;
}

static void print_log(void *ctx, mproc_log_level_t level, const char *msg)
{
    (void)ctx;
    printf("     [mproc log, level %d] %s\n", (int)level, msg);
}

static void step_threads(void)
{
    printf("\n3. P2: a parent thread holds a mutex while children start.\n");
    pthread_t t;
    sem_init(&lock_held, 0, 0);
    sem_init(&lock_release, 0, 0);
    if (pthread_create(&t, NULL, hold_lock, NULL) != 0) {
        expect(0, "pthread_create");
        return;
    }
    while (sem_wait(&lock_held) < 0 && errno == EINTR)
        ;

    int rc, code;
    report_t r;
    mproc_set_fork_policy(MPROC_FORK_REFUSE);
    mproc_process_t *p = start_child(take_lock, MPROC_START_FORK, 0, &rc);
    printf("   fork, policy REFUSE: start -> %s\n", p ? "0" : mproc_strerror(rc));
    expect(!p && rc == MPROC_ETHREADS, "refused with MPROC_ETHREADS, nothing started");
    if (p)
        finish(p, &code);

    /* The default policy, WARN: the start goes ahead and the log hook hears
     * about it. The child inherits the lock, locked, without its owner. */
    mproc_set_fork_policy(MPROC_FORK_WARN);
    mproc_set_log(print_log, NULL);
    p = start_child(take_lock, MPROC_START_FORK, 0, &rc);
    mproc_set_log(NULL, NULL);
    if (p && read_report(&r) == 0) {
        printf("   fork, policy WARN: child %d tried the lock for 300 ms: %s\n", r.pid,
               r.lock_rc == 0           ? "got it"
               : r.lock_rc == ETIMEDOUT ? "still locked (ETIMEDOUT)"
                                        : strerror(r.lock_rc));
        expect(r.lock_rc == ETIMEDOUT,
               "the lock is held by a thread that does not exist in the child: a plain\n"
               "         pthread_mutex_lock would hang forever");
    } else {
        expect(0, "fork child started and reported");
    }
    if (p)
        finish(p, &code);

    p = start_child(take_lock, MPROC_START_FORKSERVER, 0, &rc);
    if (p && read_report(&r) == 0) {
        printf("   forkserver: child %d tried the lock: %s\n", r.pid,
               r.lock_rc == 0 ? "got it" : strerror(r.lock_rc));
        expect(r.lock_rc == 0, "a clean single-threaded image: the lock is free");
    } else {
        printf("   forkserver: start -> %s\n", mproc_strerror(rc));
        expect(0, "forkserver child started and reported");
    }
    if (p)
        finish(p, &code);

    sem_post(&lock_release);
    pthread_join(t, NULL);
    sem_destroy(&lock_held);
    sem_destroy(&lock_release);
}

#define P13_TEXT "<text buffered before the fork>"
#define ATEXIT_TEXT "<the parent's atexit handler ran in a child>"

static void parent_atexit(void)
{
    /* Silent in the parent; a child that left through exit() would run it. */
    if (getpid() != g_parent)
        printf(ATEXIT_TEXT);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *s = hay; (s = strstr(s, needle)) != NULL; s += strlen(needle))
        n++;
    return n;
}

static void step_stdio(void)
{
    printf("\n4. P13: stdout holds unflushed text when a child is forked.\n");
    fflush(stdout);
    /* Point stdout at a memory file for this step, to count what lands. */
    int mem = memfd_create("mproc-demo", MFD_CLOEXEC);
    int saved = fcntl(1, F_DUPFD_CLOEXEC, 3);
    if (mem < 0 || saved < 0 || dup2(mem, 1) < 0) {
        expect(0, "redirect stdout");
        return;
    }
    printf(P13_TEXT); /* no newline: it stays in stdout's buffer */
    int rc, code = -1;
    mproc_process_t *p = start_child(do_nothing, MPROC_START_FORK, 0, &rc);
    if (p)
        rc = finish(p, &code);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);

    char buf[1024] = {0};
    ssize_t got = pread(mem, buf, sizeof buf - 1, 0);
    close(mem);
    (void)got;
    int texts = count(buf, P13_TEXT), handlers = count(buf, ATEXIT_TEXT);
    printf("   fork child exited (%s); in stdout: the buffered text %d time(s), the\n"
           "   parent's atexit handler output %d time(s)\n",
           rc < 0 ? mproc_strerror(rc) : "status 0", texts, handlers);
    expect(texts == 1, "mproc flushed stdio before fork: written once, not twice");
    expect(handlers == 0, "the child left through _exit: the parent's atexit handlers did not run");
}

/* The pidfd this process holds for pid, found through /proc, or -1. */
static int find_pidfd(pid_t pid)
{
    int fds[256];
    int n = list_fds(fds, 256);
    for (int i = 0; i < n && i < 256; i++) {
        char path[64], target[64], line[128];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fds[i]);
        ssize_t len = readlink(path, target, sizeof target - 1);
        if (len < 0)
            continue;
        target[len] = '\0';
        if (strcmp(target, "anon_inode:[pidfd]") != 0)
            continue;
        snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fds[i]);
        FILE *f = fopen(path, "re");
        int match = 0;
        while (f && fgets(line, sizeof line, f))
            if (strncmp(line, "Pid:", 4) == 0 && atoi(line + 4) == (int)pid)
                match = 1;
        if (f)
            fclose(f);
        if (match)
            return fds[i];
    }
    return -1;
}

static void step_pidfd(void)
{
    printf("\n5. P11: signals never reach a process that merely reuses a child's pid.\n");
    int rc, code = -1;
    mproc_process_t *p = start_child(wait_to_be_killed, MPROC_START_DEFAULT, 1, &rc);
    report_t r;
    if (!p || read_report(&r) != 0) {
        printf("   start failed: %s\n", mproc_strerror(rc));
        g_failures++;
        if (p)
            finish(p, &code);
        return;
    }
    pid_t pid = mproc_process_pid(p);
    int pidfd = find_pidfd(pid);
    if (mproc_have_pidfd()) {
        printf("   child %d: this process holds pidfd %d for it; signals go through it\n", (int)pid,
               pidfd);
        expect(pidfd >= 0, "a pidfd for the child is open in this process");
    } else {
        printf("   child %d: no pidfds here (old kernel or portable build): signals go\n"
               "   by pid, and only while the child is not yet collected\n",
               (int)pid);
    }
    rc = mproc_process_signal(p, SIGTERM);
    expect(rc == 0, "mproc_process_signal(SIGTERM) delivered");
    rc = mproc_process_join(p, JOIN_MS);
    if (rc == 0)
        rc = mproc_process_exitcode(p, &code);
    printf("   joined: exitcode %d\n", rc < 0 ? rc : code);
    expect(rc == 0 && code == -SIGTERM, "exitcode -15");
    /* The pid may now belong to anybody: mproc will not signal it. */
    rc = mproc_process_signal(p, SIGKILL);
    printf("   signal after join: %s\n", mproc_strerror(rc));
    expect(rc == -ESRCH, "-ESRCH: a collected child is never signalled (its pid may be reused)");
    finish(p, &code);
}

/* ---- steps 6 and 7: robust locks (P8, P9) and the tracker (P7) ----------- */

#define COUNTER_WORKERS 4
#define COUNTER_LOOPS 20000
#define VICTIM_AT 1000 /* the victim is killed holding the lock here */

/* What a counter worker is told: the segment, and whether to be the victim. */
typedef struct {
    mproc_shm_ref_t shm;
    int report_fd;
    int victim;
} counter_job_t;

/* Step 6: add to a pair of counters that must stay equal (a, b) under the
 * lock. The victim stops half-way through an update, holding the lock, and
 * says so; the parent SIGKILLs it. */
static int count_under_lock(const void *arg, size_t len)
{
    counter_job_t job;
    if (len != sizeof job)
        return 2;
    memcpy(&job, arg, sizeof job);
    mproc_shm_t *shm;
    mproc_lock_t *lock;
    int64_t *pair, *recoveries;
    if (mproc_shm_attach(&shm, &job.shm) < 0 || mproc_lock_open(shm, "lock", &lock) < 0 ||
        mproc_array_open(shm, "pair", MPROC_INT64, (void **)&pair, NULL) < 0 ||
        mproc_array_open(shm, "recoveries", MPROC_INT64, (void **)&recoveries, NULL) < 0)
        return 3;
    for (int i = 0; i < COUNTER_LOOPS; i++) {
        int rc = mproc_lock_acquire(lock, 10000);
        if (rc == -EOWNERDEAD) {
            /* The holder died mid-update: undo its half (a ran ahead). */
            pair[0] = pair[1];
            recoveries[0]++;
            mproc_lock_consistent(lock);
        } else if (rc < 0) {
            return 4;
        }
        pair[0]++;
        if (job.victim && i == VICTIM_AT) {
            char c = 'h'; /* "holding the lock, invariant broken" */
            if (write(job.report_fd, &c, 1) != 1)
                return 5;
            sleep(60); /* bounded even if nobody kills us */
            return 6;
        }
        pair[1]++;
        mproc_lock_release(lock);
    }
    mproc_shm_close(shm);
    return 0;
}

static void step_robust_lock(void)
{
    printf("\n6. A lock whose holder is SIGKILLed (P8, P9). %d workers (forkserver) add to a\n"
           "   pair of counters that must stay equal, %d times each, under one lock in a\n"
           "   named segment; one of them is killed holding the lock, half-way through.\n",
           COUNTER_WORKERS, COUNTER_LOOPS);
    fflush(stdout);
    mproc_shm_t *shm = NULL;
    mproc_lock_t *lock;
    int64_t *pair, *recoveries;
    int rc = mproc_shm_create_named(&shm, 64 * 1024, NULL);
    if (rc == 0)
        rc = mproc_lock_create(shm, "lock", &lock);
    if (rc == 0)
        rc = mproc_array_create(shm, "pair", MPROC_INT64, 2, (void **)&pair);
    if (rc == 0)
        rc = mproc_array_create(shm, "recoveries", MPROC_INT64, 1, (void **)&recoveries);
    int pfd[2] = {-1, -1};
    if (rc == 0 && pipe2(pfd, O_CLOEXEC) < 0)
        rc = -errno;
    if (rc < 0) {
        printf("   setup failed: %s\n", mproc_strerror(rc));
        g_failures++;
        mproc_shm_close(shm);
        return;
    }
    printf("   segment /dev/shm/mproc-%s (0600)\n", mproc_shm_name(shm));

    mproc_process_t *w[COUNTER_WORKERS] = {0};
    for (int i = 0; i < COUNTER_WORKERS; i++) {
        counter_job_t job = {.report_fd = pfd[1], .victim = i == 0};
        mproc_shm_ref(shm, &job.shm);
        mproc_process_opts_t opts = {.name = i == 0 ? "demo-victim" : "demo-counter"};
        rc = mproc_process_create(&w[i], count_under_lock, &job, sizeof job, &opts);
        if (rc == 0)
            rc = mproc_process_pass_shm(w[i], shm);
        if (rc == 0)
            rc = mproc_process_pass_fd(w[i], pfd[1]);
        if (rc == 0)
            rc = mproc_process_start(w[i]);
        if (rc < 0) {
            printf("   worker %d did not start: %s\n", i, mproc_strerror(rc));
            g_failures++;
        }
    }
    struct pollfd p = {.fd = pfd[0], .events = POLLIN};
    char c = 0;
    int holding = poll(&p, 1, REPORT_MS) == 1 && read(pfd[0], &c, 1) == 1 && c == 'h';
    expect(holding, "the victim reports it holds the lock with the counters unequal");
    mproc_process_kill(w[0]);
    int codes[COUNTER_WORKERS];
    for (int i = 0; i < COUNTER_WORKERS; i++) {
        codes[i] = -1;
        if (w[i])
            finish(w[i], &codes[i]);
    }
    printf("   victim exit code %d (SIGKILL), the others: %d %d %d\n", codes[0], codes[1], codes[2],
           codes[3]);
    expect(codes[0] == -SIGKILL && codes[1] == 0 && codes[2] == 0 && codes[3] == 0,
           "the victim died by SIGKILL, the other workers finished");
    int64_t want = (int64_t)(COUNTER_WORKERS - 1) * COUNTER_LOOPS + VICTIM_AT;
    printf("   a = %lld, b = %lld (expected %lld), recoveries with EOWNERDEAD: %lld\n",
           (long long)pair[0], (long long)pair[1], (long long)want, (long long)recoveries[0]);
    expect(pair[0] == want && pair[1] == want && recoveries[0] == 1,
           "the next acquirer got EOWNERDEAD, repaired the pair, and no update was lost");
    close(pfd[0]);
    close(pfd[1]);
    mproc_shm_unlink(shm);
    mproc_shm_close(shm);
}

/* Step 7: create a named segment, say its name, wait to be killed. */
static int create_and_wait(const void *arg, size_t len)
{
    int fd;
    if (len != sizeof fd)
        return 2;
    memcpy(&fd, arg, sizeof fd);
    mproc_shm_t *shm;
    if (mproc_shm_create_named(&shm, 4096, NULL) < 0)
        return 3;
    char name[MPROC_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s", mproc_shm_name(shm));
    if (write(fd, name, sizeof name) != (ssize_t)sizeof name)
        return 4;
    sleep(60); /* bounded even if nobody kills us */
    return 5;
}

struct clean_seen {
    const char *path;
    int found;
};

static void note_clean(void *ctx, const char *path)
{
    struct clean_seen *seen = ctx;
    if (strcmp(path, seen->path) == 0)
        seen->found = 1;
}

static void step_tracker(void)
{
    printf("\n7. Shared memory of a SIGKILLed process (P7). A spawned child creates a named\n"
           "   segment and is killed before it can unlink it.\n");
    fflush(stdout);
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        g_failures++;
        return;
    }
    mproc_process_t *p = NULL;
    mproc_process_opts_t opts = {.name = "demo-creator", .method = MPROC_START_SPAWN};
    int rc = mproc_process_create(&p, create_and_wait, &pfd[1], sizeof pfd[1], &opts);
    if (rc == 0)
        rc = mproc_process_pass_fd(p, pfd[1]);
    if (rc == 0)
        rc = mproc_process_start(p);
    char name[MPROC_NAME_MAX + 1] = "";
    struct pollfd pl = {.fd = pfd[0], .events = POLLIN};
    if (rc == 0 && poll(&pl, 1, REPORT_MS) == 1 &&
        read(pfd[0], name, sizeof name) == (ssize_t)sizeof name)
        name[MPROC_NAME_MAX] = '\0';
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/mproc-%s", name);
    int existed = name[0] && access(path, F_OK) == 0;
    printf("   child created %s: %s\n", path, existed ? "present" : "missing");
    expect(existed, "the child's segment exists while it runs");
    int code = -1;
    if (p) {
        mproc_process_kill(p);
        finish(p, &code);
    }
    /* The tracker hears of the death through a pidfd: wait (bounded) for
     * the unlink it does asynchronously. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double ms = 0;
    while (access(path, F_OK) == 0 && ms < 2000) {
        struct timespec tick = {0, 1000000};
        nanosleep(&tick, NULL);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    }
    int gone = access(path, F_OK) != 0;
    printf("   killed (exit code %d); %s %s by the child's resource tracker after %.1f ms\n", code,
           path, gone ? "unlinked" : "still there", ms);
    expect(existed && gone, "the tracker unlinked the dead child's segment");
    /* Other programs' leftovers may exist on this machine: only ours counts. */
    struct clean_seen seen = {path, 0};
    int left = mproc_clean(MPROC_CLEAN_DRY_RUN, note_clean, &seen);
    printf("   `mproc clean --dry-run` lists %d abandoned segment(s), ours %s\n",
           left < 0 ? 0 : left, seen.found ? "among them" : "not among them");
    expect(!seen.found, "nothing of ours is left for mproc clean");
    close(pfd[0]);
    close(pfd[1]);
}

/* The safety net behind the per-step timeouts: never outstay a minute. */
/* ---- step 8: a queue consumer killed inside get ---------------------------- */

#define QUEUE_MSGS 200000

typedef struct {
    mproc_queue_ref_t q;
    int report_fd;
} queue_job_t;

/* The victim: says it is about to wait, then waits in get on the empty
 * queue, holding the consumers' side of it, until it is killed. */
static int get_and_be_killed(const void *arg, size_t len)
{
    queue_job_t job;
    if (len != sizeof job)
        return 2;
    memcpy(&job, arg, sizeof job);
    mproc_queue_t *q;
    if (mproc_queue_attach(&q, &job.q) < 0)
        return 3;
    char c = 'w', buf[8];
    size_t n;
    if (write(job.report_fd, &c, 1) != 1)
        return 4;
    mproc_queue_get(q, buf, sizeof buf, &n, 60000); /* killed long before */
    return 5;
}

/* The survivor: sums every message until a 0, reports count and sum. */
static int sum_messages(const void *arg, size_t len)
{
    queue_job_t job;
    if (len != sizeof job)
        return 2;
    memcpy(&job, arg, sizeof job);
    mproc_queue_t *q;
    if (mproc_queue_attach(&q, &job.q) < 0)
        return 3;
    int64_t got[2] = {0, 0}; /* count, sum */
    for (;;) {
        int32_t v;
        size_t n;
        if (mproc_queue_get(q, &v, sizeof v, &n, 10000) < 0 || n != sizeof v)
            return 4;
        if (v == 0)
            break;
        got[0]++;
        got[1] += v;
    }
    mproc_queue_close(q);
    return write(job.report_fd, got, sizeof got) == sizeof got ? 0 : 6;
}

/* 1 once pid sleeps in the kernel (state S in /proc), 0 after 2 s. */
static int wait_asleep(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    for (int i = 0; i < 2000; i++) {
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = '\0';
        const char *close_paren = strrchr(buf, ')');
        if (close_paren && close_paren[1] == ' ' && close_paren[2] == 'S')
            return 1;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    return 0;
}

static void step_queue(void)
{
    printf("\n8. A queue consumer SIGKILLed inside get. In Python, a consumer killed while it\n"
           "   holds a Queue's read lock blocks every other consumer for good. Here one\n"
           "   consumer is killed while it waits in get; another then takes %d messages.\n",
           QUEUE_MSGS);
    fflush(stdout);
    mproc_queue_t *q = NULL;
    int pfd[2] = {-1, -1};
    int rc = mproc_queue_create(NULL, NULL, NULL, &q);
    if (rc == 0 && pipe2(pfd, O_CLOEXEC) < 0)
        rc = -errno;
    if (rc < 0) {
        printf("   setup failed: %s\n", mproc_strerror(rc));
        g_failures++;
        mproc_queue_close(q);
        return;
    }
    queue_job_t job = {.report_fd = pfd[1]};
    mproc_queue_ref(q, &job.q);
    mproc_process_t *w[2] = {NULL, NULL};
    mproc_entry_fn fns[2] = {get_and_be_killed, sum_messages};
    const char *names[2] = {"demo-victim", "demo-consumer"};
    char c = 0;
    struct pollfd p = {.fd = pfd[0], .events = POLLIN};
    for (int i = 0; i < 2 && rc == 0; i++) {
        mproc_process_opts_t opts = {.name = names[i]};
        rc = mproc_process_create(&w[i], fns[i], &job, sizeof job, &opts);
        if (rc == 0)
            rc = mproc_process_pass_queue(w[i], q);
        if (rc == 0)
            rc = mproc_process_pass_fd(w[i], pfd[1]);
        if (rc == 0)
            rc = mproc_process_start(w[i]);
        if (rc == 0 && i == 0) {
            /* The victim first: it must be the one waiting inside get. */
            int waiting = poll(&p, 1, REPORT_MS) == 1 && read(pfd[0], &c, 1) == 1 && c == 'w' &&
                          wait_asleep(mproc_process_pid(w[0]));
            expect(waiting, "the victim waits inside get on the empty queue");
        }
    }
    if (rc < 0) {
        printf("   a consumer did not start: %s\n", mproc_strerror(rc));
        g_failures++;
    }
    int code = -1;
    if (w[0]) {
        mproc_process_kill(w[0]);
        finish(w[0], &code);
    }
    printf("   the victim, killed inside get: exit code %d\n", code);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int64_t want = 0;
    for (int32_t v = 1; v <= QUEUE_MSGS && rc == 0; v++) {
        rc = mproc_queue_put(q, &v, sizeof v, JOIN_MS);
        want += v;
    }
    int32_t stop = 0;
    if (rc == 0)
        rc = mproc_queue_put(q, &stop, sizeof stop, JOIN_MS);
    int64_t got[2] = {0, 0};
    int reported = rc == 0 && poll(&p, 1, REPORT_MS) == 1 &&
                   read(pfd[0], got, sizeof got) == (ssize_t)sizeof got;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    int code2 = -1;
    if (w[1])
        finish(w[1], &code2);
    printf("   the other consumer got %lld messages (sum %lld, expected %lld) in %.0f ms\n",
           (long long)got[0], (long long)got[1], (long long)want, ms);
    expect(code == -SIGKILL && reported && code2 == 0 && got[0] == QUEUE_MSGS && got[1] == want,
           "the victim died by SIGKILL, the other consumer got every message once");
    close(pfd[0]);
    close(pfd[1]);
    mproc_queue_close(q);
}

/* ---- step 9: mproc run serving the prefork HTTP example --------------------- */

static int64_t now_ms_demo(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct {
    pid_t pid;
    int log_fd;      /* the master's stderr (read end) */
    char log[32768]; /* what it said so far */
    size_t len;
} run_t;

/* A program next to this one, or under ../tools: its path in buf. */
static int sibling(char *buf, size_t cap, const char *rel)
{
    char self[512];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash)
        return -1;
    *slash = '\0';
    snprintf(buf, cap, "%s/%s", self, rel);
    return access(buf, X_OK);
}

/* Read what the master said, waiting up to ms for text to appear `count`
 * times; 1 if it did. */
static int run_wait_for(run_t *r, const char *text, int count, int ms)
{
    int64_t end = now_ms_demo() + ms;
    for (;;) {
        int seen = 0;
        for (const char *p = r->log; (p = strstr(p, text)); p++)
            seen++;
        if (seen >= count)
            return 1;
        int left = (int)(end - now_ms_demo());
        if (left <= 0 || r->len >= sizeof r->log - 1)
            return 0;
        struct pollfd p = {.fd = r->log_fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0)
            continue;
        ssize_t k = read(r->log_fd, r->log + r->len, sizeof r->log - 1 - r->len);
        if (k <= 0)
            return 0;
        r->len += (size_t)k;
        r->log[r->len] = '\0';
    }
}

/* One GET / on a new connection: the body in buf (empty on failure). */
static void http_get(int port, char *buf, size_t cap)
{
    buf[0] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (fd >= 0)
            close(fd);
        return;
    }
    const char req[] = "GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n";
    char resp[2048];
    size_t got = 0;
    if (write(fd, req, sizeof req - 1) == (ssize_t)sizeof req - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        while (got < sizeof resp - 1 && poll(&p, 1, REPORT_MS) == 1) {
            ssize_t k = read(fd, resp + got, sizeof resp - 1 - got);
            if (k <= 0)
                break;
            got += (size_t)k;
        }
    }
    close(fd);
    resp[got] = '\0';
    const char *body = strstr(resp, "\r\n\r\n");
    if (strncmp(resp, "HTTP/1.1 200", 12) == 0 && body)
        snprintf(buf, cap, "%s", body + 4);
    size_t l = strlen(buf);
    if (l && buf[l - 1] == '\n')
        buf[l - 1] = '\0';
}

static int body_worker(const char *body, int *pid)
{
    int w = -1;
    *pid = 0;
    if (sscanf(body, "hello from worker %d pid %d", &w, pid) != 2)
        return -1;
    return w;
}

static void step_run(void)
{
    printf("\n9. `mproc run -w 4 --bind 127.0.0.1:0 --ready` serving examples/http_prefork.c:\n"
           "   shared listening socket (LISTEN_FDS), READY=1 over NOTIFY_SOCKET, a request\n"
           "   counter shared by the workers under an mproc lock.\n");
    fflush(stdout);
    char cli[600], http[600], ctr[64];
    if (sibling(cli, sizeof cli, "../tools/mproc") < 0 ||
        sibling(http, sizeof http, "http_prefork") < 0) {
        printf("   mproc or http_prefork not built next to the demo\n");
        g_failures++;
        return;
    }
    snprintf(ctr, sizeof ctr, "demo-counter-%d", (int)getpid());
    char *mk[] = {http, "--make-counter", ctr, NULL};
    pid_t mkpid;
    int st = -1;
    if (posix_spawn(&mkpid, http, NULL, NULL, mk, environ) != 0 || waitpid(mkpid, &st, 0) < 0 ||
        st != 0) {
        printf("   could not make the counter segment\n");
        g_failures++;
        return;
    }
    run_t r = {0};
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0) {
        g_failures++;
        return;
    }
    r.log_fd = ep[0];
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, ep[1], 2);
    char env_ctr[128];
    snprintf(env_ctr, sizeof env_ctr, "HTTP_COUNTER_SHM=%s", ctr);
    char *env[] = {env_ctr, "PATH=/usr/bin:/bin", NULL};
    char *argv[] = {cli, "run", "-w", "4", "--bind", "127.0.0.1:0", "--ready", "--graceful-timeout",
                    "5", "--",  http, NULL};
    int rc = posix_spawn(&r.pid, cli, &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    close(ep[1]);
    int port = 0;
    if (rc == 0 && run_wait_for(&r, " ready\n", 4, REPORT_MS)) {
        const char *l = strstr(r.log, "listening on 127.0.0.1:");
        if (l)
            port = atoi(l + strlen("listening on 127.0.0.1:"));
    }
    expect(port > 0, "the master bound a port and 4 workers sent READY=1");
    if (port > 0) {
        /* Connections go to whichever worker accepts first: ask until two
         * different workers have answered (bounded). */
        int seen[4] = {0}, distinct = 0, some_pid = 0, asked = 0;
        char body[256];
        while (asked < 400 && (asked < 12 || distinct < 2)) {
            http_get(port, body, sizeof body);
            int pid, w = body_worker(body, &pid);
            if (asked++ < 3)
                printf("   GET / -> \"%s\"\n", body);
            if (w >= 0 && w < 4 && !seen[w]++) {
                distinct++;
                some_pid = pid;
            }
        }
        printf("   %d requests answered by %d different workers\n", asked, distinct);
        expect(distinct >= 2, "requests were answered by different workers");

        /* A worker SIGKILLed: replaced at once, in the same slot. */
        int64_t t0 = now_ms_demo();
        kill(some_pid, SIGKILL);
        int back = run_wait_for(&r, " ready\n", 5, REPORT_MS);
        printf("   worker pid %d SIGKILLed: its replacement was ready %lld ms later\n", some_pid,
               (long long)(now_ms_demo() - t0));
        http_get(port, body, sizeof body);
        expect(back && body[0], "the killed worker was replaced and requests go on");

        /* HUP: a new generation, ready before the old one stops. */
        kill(r.pid, SIGHUP);
        int reloaded = run_wait_for(&r, "stopping (its successor is ready)", 4, REPORT_MS);
        http_get(port, body, sizeof body);
        printf("   HUP: 4 new workers ready, then the 4 old ones stopped; GET / -> \"%s\"\n", body);
        expect(reloaded && body[0], "the reload replaced every worker without a gap");

        /* USR2: the master re-executes itself in place and hands over. */
        t0 = now_ms_demo();
        kill(r.pid, SIGUSR2);
        int upgraded = run_wait_for(&r, "re-executed, taking over", 1, REPORT_MS) &&
                       run_wait_for(&r, "stopping (its successor is ready)", 8, REPORT_MS);
        long long took = (long long)(now_ms_demo() - t0);
        http_get(port, body, sizeof body);
        printf("   USR2: the master (still pid %d) re-executed its binary, kept the socket and\n"
               "   the old workers, started 4 new ones and stopped the old (%lld ms);\n"
               "   GET / -> \"%s\"\n",
               (int)r.pid, took, body);
        expect(upgraded && body[0], "the upgrade in place replaced every worker without a gap");
    }
    /* Graceful stop. */
    if (rc == 0) {
        kill(r.pid, SIGTERM);
        int stopped = run_wait_for(&r, "master exits with status 0", 1, 10000);
        st = -1;
        waitpid(r.pid, &st, 0);
        printf("   TERM: workers stopped gracefully, master exit status %d\n",
               WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        expect(stopped && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the master stopped cleanly");
    }
    close(r.log_fd);
    char *rm[] = {http, "--remove-counter", ctr, NULL};
    if (posix_spawn(&mkpid, http, NULL, NULL, rm, environ) == 0)
        waitpid(mkpid, &st, 0);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "\ndemo: gave up: a step hung past the time budget\n";
    ssize_t n = write(2, msg, sizeof msg - 1);
    (void)n;
    _exit(1); /* daemon children die with us (PR_SET_PDEATHSIG) */
}

int main(int argc, char **argv)
{
    /* First thing: a spawned child (and the forkserver helper) takes over
     * here and never returns. */
    int rc = mproc_init(&argc, &argv);
    if (rc < 0) {
        fprintf(stderr, "mproc_init: %s\n", mproc_strerror(rc));
        return 1;
    }
    /* Make sure fds 0-2 are open, so the pipe below is not taken for stdio. */
    int null_fd;
    while ((null_fd = open("/dev/null", O_RDWR)) >= 0 && null_fd <= 2)
        ; /* kept: it is stdio now (no O_CLOEXEC: children need it) */
    if (null_fd > 2)
        close(null_fd);
    /* Start the forkserver helper now, while this process is small and has
     * no threads (it would be started on first use otherwise). */
    rc = mproc_forkserver_start(NULL, NULL, 0);
    if (rc < 0)
        fprintf(stderr, "mproc_forkserver_start: %s\n", mproc_strerror(rc));

    /* Line buffering keeps the parent's and the children's lines in order
     * when stdout is a pipe. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_parent = getpid();
    atexit(parent_atexit);
    signal(SIGALRM, on_alarm);
    alarm(BUDGET_S);
    g_configured = 42;

    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        perror("pipe2");
        return 1;
    }
    report_rd = pfd[0];
    report_wr = pfd[1];

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    printf("mproc %s demo: parent pid %d, default start method %s, forkserver pid %d\n",
           mproc_version(), (int)getpid(), method_name(mproc_get_start_method()),
           (int)mproc_forkserver_pid());

    step_start_methods();
    step_exit_codes();
    step_threads();
    step_stdio();
    step_pidfd();
    step_robust_lock();
    step_tracker();
    step_queue();
    step_run();

    mproc_forkserver_stop();
    mproc_tracker_stop(JOIN_MS);
    close(report_rd);
    close(report_wr);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    if (g_failures) {
        printf("\ndemo: %d unexpected result(s) (%.0f ms)\n", g_failures, ms);
        return 1;
    }
    printf("\ndemo: everything as documented (%.0f ms)\n", ms);
    return 0;
}
