/*
 * test_threads.c - P2: starting children from a multi-threaded parent.
 *
 * Another thread of the parent holds a mutex while a child is started. A
 * fork child inherits the mutex locked, with no thread left to unlock it;
 * spawn and forkserver children get a fresh, unlocked one. The fork policy
 * decides whether the fork start is refused, warned about, or allowed.
 * And a process object whose start is under way in one thread answers
 * other threads at once.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

/* ------------------------------------------------------------------ the holder thread */

typedef struct {
    pthread_t th;
    int locked_r, locked_w; /* thread -> test: "I hold it" */
    int go_r, go_w;         /* test -> thread: "let go" */
    int running;
} holder_t;

static void *holder_main(void *arg)
{
    holder_t *h = arg;
    pthread_mutex_lock(&g_mu);
    tu_write_full(h->locked_w, "L", 1);
    char c;
    tu_read_full(h->go_r, &c, 1, 60000);
    pthread_mutex_unlock(&g_mu);
    return NULL;
}

static int holder_start(holder_t *h)
{
    int a[2], b[2];
    if (tu_pipe(a) != 0)
        return -1;
    if (tu_pipe(b) != 0) {
        close(a[0]);
        close(a[1]);
        return -1;
    }
    h->locked_r = a[0];
    h->locked_w = a[1];
    h->go_r = b[0];
    h->go_w = b[1];
    h->running = 0;
    if (pthread_create(&h->th, NULL, holder_main, h) != 0) {
        tu_fail(__FILE__, __LINE__, "pthread_create failed");
        return -1;
    }
    h->running = 1;
    char c = 0;
    if (tu_read_full(h->locked_r, &c, 1, TU_T_MS) != 1) {
        tu_fail(__FILE__, __LINE__, "holder thread did not take the mutex");
        return -1;
    }
    return 0;
}

static void holder_stop(holder_t *h)
{
    if (h->running) {
        tu_write_full(h->go_w, "g", 1);
        pthread_join(h->th, NULL);
        h->running = 0;
    }
    tu_close(&h->locked_r);
    tu_close(&h->locked_w);
    tu_close(&h->go_r);
    tu_close(&h->go_w);
}

/* ------------------------------------------------------------------ log hook */

static atomic_int g_warns, g_others;
static char g_last_msg[256];
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;

static void log_hook(void *ctx, mproc_log_level_t level, const char *msg)
{
    atomic_int *calls = ctx;
    atomic_fetch_add(calls, 1);
    if (level == MPROC_LOG_WARN)
        atomic_fetch_add(&g_warns, 1);
    else
        atomic_fetch_add(&g_others, 1);
    pthread_mutex_lock(&g_log_mu);
    snprintf(g_last_msg, sizeof g_last_msg, "%s", msg ? msg : "(null)");
    pthread_mutex_unlock(&g_log_mu);
}

/* Install log_hook, counting its calls in *calls, with the counters at 0. */
static void log_install(atomic_int *calls)
{
    atomic_store(calls, 0);
    atomic_store(&g_warns, 0);
    atomic_store(&g_others, 0);
    mproc_set_log(log_hook, calls);
}

/* ------------------------------------------------------------------ entries */

/* 0: got the mutex (and released it); 3: timed out (it is held by a thread
 * that does not exist here); 4: another error. */
static int entry_take_mutex(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 2;
    int r = pthread_mutex_timedlock(&g_mu, &ts);
    if (r == 0) {
        pthread_mutex_unlock(&g_mu);
        return 0;
    }
    return r == ETIMEDOUT ? 3 : 4;
}

/* spawn and forkserver children are not affected: fresh, unlocked mutex */
static void exec_children_take_mutex(void)
{
    TU_FOR_EACH_METHOD(m) {
        if (m != MPROC_START_FORK)
            TU_CHECK_EQ_INT(tu_run(m, entry_take_mutex, NULL, 0), 0);
    }
}

/* ------------------------------------------------------------------ cases */

static void test_refuse_policy(void)
{
    atomic_int calls;
    log_install(&calls);
    TU_CHECK_OK(mproc_set_fork_policy(MPROC_FORK_REFUSE));
    TU_CHECK_EQ_INT(mproc_get_fork_policy(), MPROC_FORK_REFUSE);
    holder_t h;
    if (holder_start(&h) == 0) {
        int before = tu_count_real_children();
        mproc_process_t *p;
        int src = tu_start(&p, MPROC_START_FORK, entry_take_mutex, NULL, 0, NULL, 0);
        TU_CHECK_EQ_INT(src, MPROC_ETHREADS);
        if (src == 0)
            tu_join_free(p);
        TU_CHECK_EQ_INT(tu_count_real_children(), before);
        exec_children_take_mutex(); /* spawn and forkserver are not affected */
    }
    holder_stop(&h);
    mproc_set_log(NULL, NULL);
    TU_CHECK_OK(mproc_set_fork_policy(MPROC_FORK_WARN));
}

static void test_warn_policy(void)
{
    atomic_int calls;
    log_install(&calls);
    TU_CHECK_EQ_INT(mproc_get_fork_policy(), MPROC_FORK_WARN); /* the default */
    TU_CHECK_OK(mproc_set_fork_policy(MPROC_FORK_WARN));
    holder_t h;
    if (holder_start(&h) == 0) {
        /* the fork child starts, and shows the hazard: the mutex it
         * inherited is locked by a thread that does not exist in it */
        TU_CHECK_EQ_INT(tu_run(MPROC_START_FORK, entry_take_mutex, NULL, 0), 3);
        TU_CHECK(atomic_load(&g_warns) >= 1);
        pthread_mutex_lock(&g_log_mu);
        TU_CHECK(g_last_msg[0] != '\0');
        pthread_mutex_unlock(&g_log_mu);

        /* spawn/forkserver starts do not warn about threads */
        int warns = atomic_load(&g_warns);
        exec_children_take_mutex();
        TU_CHECK_EQ_INT(atomic_load(&g_warns), warns);
    }
    holder_stop(&h);
    mproc_set_log(NULL, NULL);

    /* with the hook uninstalled, a warned fork still works (and prints
     * nothing: not checkable here beyond "no crash") */
    TU_CHECK(atomic_load(&calls) >= 1);
}

static void test_allow_policy(void)
{
    atomic_int calls;
    log_install(&calls);
    TU_CHECK_OK(mproc_set_fork_policy(MPROC_FORK_ALLOW));
    TU_CHECK_EQ_INT(mproc_get_fork_policy(), MPROC_FORK_ALLOW);
    holder_t h;
    if (holder_start(&h) == 0) {
        TU_CHECK_EQ_INT(tu_run(MPROC_START_FORK, tu_entry_zero, NULL, 0), 0);
        TU_CHECK_EQ_INT(atomic_load(&g_warns), 0);
    }
    holder_stop(&h);
    mproc_set_log(NULL, NULL);
    TU_CHECK_OK(mproc_set_fork_policy(MPROC_FORK_WARN));
}

static int thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* A single-threaded parent is never refused, and not warned about. */
static void test_single_threaded_fork_not_refused(void)
{
    int nt = thread_count();
    if (nt != 1) {
        /* e.g. ThreadSanitizer's background thread: the premise is void */
        fprintf(stderr, "  (not applicable: this process has %d threads)\n", nt);
        return;
    }
    atomic_int calls;
    log_install(&calls);
    TU_CHECK_OK(mproc_set_fork_policy(MPROC_FORK_REFUSE));
    TU_CHECK_EQ_INT(tu_run(MPROC_START_FORK, entry_take_mutex, NULL, 0), 0);
    TU_CHECK_OK(mproc_set_fork_policy(MPROC_FORK_WARN));
    TU_CHECK_EQ_INT(tu_run(MPROC_START_FORK, tu_entry_zero, NULL, 0), 0);
    TU_CHECK_EQ_INT(atomic_load(&g_warns), 0);
    mproc_set_log(NULL, NULL);
}

/* Children started from several threads at once, each method: nothing
 * deadlocks, every child's status comes back to the thread that started it. */
typedef struct {
    int idx;
    int failures;
    pthread_t th;
} worker_t;

static void *starter_main(void *arg)
{
    worker_t *w = arg;
    for (int i = 0; i < 8; i++) {
        /* spawn and forkserver only: fork from a threaded parent is the
         * hazard this file is about */
        mproc_start_method_t m = (i + w->idx) % 2 ? MPROC_START_SPAWN : MPROC_START_FORKSERVER;
        int want = (w->idx * 16 + i) & 0xff;
        mproc_process_opts_t o = {NULL, m, 0};
        mproc_process_t *p = NULL;
        if (mproc_process_create(&p, tu_entry_code, &want, sizeof want, &o) != 0) {
            w->failures++;
            continue;
        }
        int rc = mproc_process_start(p);
        int code = -1;
        if (rc == 0 && mproc_process_join(p, TU_T_MS) == 0 &&
            mproc_process_exitcode(p, &code) == 0 && code == want) {
            /* ok */
        } else {
            fprintf(stderr, "starter %d #%d (%s): start %d code %d want %d\n", w->idx, i,
                    tu_method_name(m), rc, code, want);
            w->failures++;
            if (rc == 0) {
                mproc_process_kill(p);
                mproc_process_join(p, TU_T_MS);
            }
        }
        mproc_process_free(p);
    }
    return NULL;
}

static void test_concurrent_starts_from_threads(void)
{
    enum { N = 4 };
    worker_t w[N];
    for (int i = 0; i < N; i++) {
        w[i].idx = i;
        w[i].failures = 0;
        TU_REQUIRE(pthread_create(&w[i].th, NULL, starter_main, &w[i]) == 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(w[i].th, NULL);
        TU_CHECK_EQ_INT(w[i].failures, 0);
    }
}

/* ------------------------------------------------------------------ a start held open */

/*
 * TU_START_GATE=<dir> in the environment of a spawned copy of this program
 * (a spawn child, or the forkserver helper) holds it in main() before
 * mproc_init: it writes a byte to the FIFO <dir>/ready, then waits for a
 * byte (or EOF) on the FIFO <dir>/go. Until then the start that made it
 * cannot complete.
 */
#define GATE_ENV "TU_START_GATE"

static void start_gate(void)
{
    const char *dir = getenv(GATE_ENV);
    if (!dir)
        return;
    char path[512];
    snprintf(path, sizeof path, "%s/ready", dir);
    /* non-blocking opens: a test that went away must not strand us */
    int w = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    snprintf(path, sizeof path, "%s/go", dir);
    int g = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    unsetenv(GATE_ENV);
    if (g >= 0)
        fcntl(g, F_SETFL, 0);
    if (w >= 0) {
        tu_write_full(w, "r", 1);
        close(w);
    }
    if (g >= 0) {
        char c;
        while (read(g, &c, 1) < 0 && errno == EINTR) {
        }
        close(g);
    }
}

typedef struct {
    char dir[64];
    int ready_r; /* O_RDONLY | O_NONBLOCK */
    int go;      /* O_RDWR: keeps a writer, so the child's read waits */
} gate_t;

static int gate_open(gate_t *g)
{
    g->ready_r = g->go = -1;
    snprintf(g->dir, sizeof g->dir, "/tmp/mproc-gate-XXXXXX");
    if (!mkdtemp(g->dir)) {
        tu_fail(__FILE__, __LINE__, "mkdtemp: %s", strerror(errno));
        return -1;
    }
    char path[128];
    snprintf(path, sizeof path, "%s/ready", g->dir);
    if (mkfifo(path, 0600) == 0)
        g->ready_r = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    snprintf(path, sizeof path, "%s/go", g->dir);
    if (mkfifo(path, 0600) == 0)
        g->go = open(path, O_RDWR | O_CLOEXEC);
    if (g->ready_r < 0 || g->go < 0) {
        tu_fail(__FILE__, __LINE__, "gate fifos: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Let the held child through (idempotent). */
static void gate_release(gate_t *g)
{
    if (g->go >= 0)
        tu_write_full(g->go, "g", 1);
    tu_close(&g->go); /* and EOF, had the byte been missed */
}

static void gate_close(gate_t *g)
{
    gate_release(g);
    tu_close(&g->ready_r);
    char path[128];
    snprintf(path, sizeof path, "%s/ready", g->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/go", g->dir);
    unlink(path);
    rmdir(g->dir);
}

typedef struct {
    mproc_process_t *p;
    int rc;
    pthread_t th;
} starter_t;

static void *start_main(void *arg)
{
    starter_t *s = arg;
    s->rc = mproc_process_start(s->p);
    return NULL;
}

/* What another thread sees of p while its start is under way. */
typedef struct {
    mproc_process_t *p;
    int done_w;
    pid_t pid;
    int alive, sig0, kill, join, exitcode, fd, start, free_rc;
    mproc_start_method_t method;
    pthread_t th;
} observer_t;

static void *observe_main(void *arg)
{
    observer_t *o = arg;
    int code;
    o->pid = mproc_process_pid(o->p);
    o->alive = mproc_process_is_alive(o->p);
    o->sig0 = mproc_process_signal(o->p, 0);
    o->kill = mproc_process_kill(o->p);
    o->join = mproc_process_join(o->p, 0);
    o->exitcode = mproc_process_exitcode(o->p, &code);
    o->fd = mproc_process_fd(o->p);
    o->method = mproc_process_method(o->p);
    o->start = mproc_process_start(o->p);
    o->free_rc = mproc_process_free(o->p);
    tu_write_full(o->done_w, "d", 1);
    return NULL;
}

/* The start (spawn: the child; forkserver: the helper it starts on
 * demand) is held in main() at the gate while another thread uses p:
 * every call answers at once, as for a process not started yet, and the
 * start then completes normally. */
static void start_in_progress(mproc_start_method_t m)
{
    TU_REQUIRE_OK(mproc_forkserver_stop()); /* forkserver: started by this start */
    gate_t g;
    if (gate_open(&g) != 0) {
        gate_close(&g);
        return;
    }
    int want = 23;
    mproc_process_opts_t opts = {.method = m};
    starter_t s = {0};
    if (!TU_CHECK_OK(mproc_process_create(&s.p, tu_entry_code, &want, sizeof want, &opts))) {
        gate_close(&g);
        return;
    }
    int done[2] = {-1, -1};
    tu_pipe(done);
    setenv(GATE_ENV, g.dir, 1); /* before any thread: no getenv races it */
    int started = pthread_create(&s.th, NULL, start_main, &s) == 0;
    TU_CHECK(started);
    char c;
    /* The spawned program is at the gate: the start is under way. */
    int held = started && tu_read_full(g.ready_r, &c, 1, TU_T_MS) == 1;
    TU_CHECK(held);
    observer_t o = {.p = s.p, .done_w = done[1]};
    int observing = 0;
    if (held) {
        observing = pthread_create(&o.th, NULL, observe_main, &o) == 0;
        TU_CHECK(observing);
        /* None of its calls may wait for the start to finish. */
        if (observing && tu_read_full(done[0], &c, 1, 5000) != 1)
            tu_fail(__FILE__, __LINE__, "calls on p blocked while its start was under way");
    }
    gate_release(&g); /* the start may complete now */
    if (observing)
        pthread_join(o.th, NULL);
    if (started)
        pthread_join(s.th, NULL);
    unsetenv(GATE_ENV);
    gate_close(&g);
    tu_close(&done[0]);
    tu_close(&done[1]);

    if (observing) {
        TU_CHECK_EQ_INT(o.pid, 0);
        TU_CHECK_EQ_INT(o.alive, 0);
        TU_CHECK_EQ_INT(o.sig0, MPROC_ESTATE);
        TU_CHECK_EQ_INT(o.kill, MPROC_ESTATE);
        TU_CHECK_EQ_INT(o.join, MPROC_ESTATE);
        TU_CHECK_EQ_INT(o.exitcode, MPROC_ESTATE);
        TU_CHECK_EQ_INT(o.fd, MPROC_ESTATE);
        TU_CHECK_EQ_INT(o.method, m);
        TU_CHECK_EQ_INT(o.start, MPROC_ESTATE);
        TU_CHECK_EQ_INT(o.free_rc, -EBUSY);
    }
    if (observing && o.free_rc == 0)
        return; /* freed by the observer (after the start had finished): gone */
    if (started && TU_CHECK_OK(s.rc)) {
        TU_CHECK(mproc_process_pid(s.p) > 0);
        TU_CHECK_EQ_INT(mproc_process_method(s.p), m);
        TU_CHECK_EQ_INT(tu_join_free(s.p), want);
    } else {
        TU_CHECK_EQ_INT(mproc_process_pid(s.p), 0);
        TU_CHECK_OK(mproc_process_free(s.p));
    }
}

static void test_start_in_progress_spawn(void)
{
    start_in_progress(MPROC_START_SPAWN);
}

static void test_start_in_progress_forkserver(void)
{
    start_in_progress(MPROC_START_FORKSERVER);
}

static const tu_case_t cases[] = {
    TU_CASE(test_warn_policy),
    TU_CASE(test_refuse_policy),
    TU_CASE(test_allow_policy),
    TU_CASE(test_single_threaded_fork_not_refused),
    TU_CASE(test_concurrent_starts_from_threads),
    TU_CASE(test_start_in_progress_spawn),
    TU_CASE(test_start_in_progress_forkserver),
    TU_END,
};

int main(int argc, char **argv)
{
    start_gate(); /* a spawned copy held for test_start_in_progress_* */
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
