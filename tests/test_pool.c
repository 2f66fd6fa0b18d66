/*
 * test_pool.c - the worker pool: results correct and in order, task
 * errors, workers that die in every way (the killed task fails, or runs
 * again, and nothing else is disturbed), 100 rounds of a worker killed
 * inside a 10,000-task map, initializers, max tasks per child,
 * back-pressure, apply_async with callbacks, terminate, every start
 * method, bad input.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

/* ------------------------------------------------------------------ tasks */

enum { ACT_OK, ACT_KILL, ACT_SEGV, ACT_ABORT, ACT_EXIT7, ACT_KILL_ONCE, ACT_FAIL, ACT_BLOCK };

/* An item: a value, what to do with it, and a marker file for KILL_ONCE. */
typedef struct {
    int64_t v;
    int32_t act;
    char marker[80];
} item_t;

static int g_inited;   /* init calls in this process */
static int64_t g_salt; /* what init was given */

static void no_core(void)
{
    struct rlimit rl = {0, 0};
    setrlimit(RLIMIT_CORE, &rl);
}

static int item_task(const void *arg, size_t len, void *out, size_t cap, size_t *out_len)
{
    item_t it;
    if (len != sizeof it || cap < sizeof(int64_t))
        return -EINVAL;
    memcpy(&it, arg, sizeof it);
    switch (it.act) {
    case ACT_KILL:
        raise(SIGKILL);
        break;
    case ACT_SEGV:
        no_core();
        raise(SIGSEGV); /* what a wild pointer would do, without UB */
        break;
    case ACT_ABORT:
        no_core();
        abort();
    case ACT_EXIT7:
        _exit(7);
    case ACT_KILL_ONCE: {
        int fd = open(it.marker, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        if (fd >= 0) {
            close(fd);
            raise(SIGKILL); /* the first run dies; a retry finds the marker */
        }
        break;
    }
    case ACT_FAIL:
        return -EDOM;
    case ACT_BLOCK:
        for (;;)
            pause();
    }
    int64_t r = it.v + 1;
    memcpy(out, &r, sizeof r);
    *out_len = sizeof r;
    return 0;
}

static int inc_task(const void *arg, size_t len, void *out, size_t cap, size_t *out_len)
{
    int64_t v;
    if (len != sizeof v || cap < sizeof v)
        return -EINVAL;
    memcpy(&v, arg, sizeof v);
    v++;
    memcpy(out, &v, sizeof v);
    *out_len = sizeof v;
    return 0;
}

/* What a worker is: its pid, how many inits it ran, the salt it got. */
typedef struct {
    int32_t pid, inited;
    int64_t salt;
} who_t;

static int who_task(const void *arg, size_t len, void *out, size_t cap, size_t *out_len)
{
    (void)arg;
    (void)len;
    who_t w = {(int32_t)getpid(), g_inited, g_salt};
    if (cap < sizeof w)
        return -EMSGSIZE;
    memcpy(out, &w, sizeof w);
    *out_len = sizeof w;
    return 0;
}

static int big_result_task(const void *arg, size_t len, void *out, size_t cap, size_t *out_len)
{
    (void)arg;
    (void)len;
    (void)out;
    *out_len = cap + 1; /* claims more than it was given */
    return 0;
}

/* Init: remember the salt, count the call, and count it in the segment
 * whose name is after the salt (so the test sees every init). */
static int init_worker(const void *arg, size_t len)
{
    if (len < sizeof(int64_t) + 1)
        return 1;
    memcpy(&g_salt, arg, sizeof g_salt);
    g_inited++;
    mproc_shm_t *shm;
    if (mproc_shm_open(&shm, (const char *)arg + sizeof g_salt) < 0)
        return 1;
    void *counter;
    if (mproc_shm_find(shm, "inits", MPROC_OBJ_BYTES, &counter) < 0)
        return 1;
    atomic_fetch_add((_Atomic int *)counter, 1);
    mproc_shm_close(shm);
    return 0;
}

static int init_refuses(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return 1;
}

/* ------------------------------------------------------------------ helpers */

static mproc_pool_t *new_pool(int workers, mproc_start_method_t m, unsigned retries)
{
    mproc_pool_opts_t o = {.workers = workers, .method = m, .retries = retries};
    mproc_pool_t *p = NULL;
    TU_CHECK_OK(mproc_pool_create(&p, &o));
    return p;
}

static void end_pool(mproc_pool_t *p)
{
    if (!p)
        return;
    TU_CHECK_OK(mproc_pool_close(p));
    TU_CHECK_OK(mproc_pool_join(p, TU_T_MS));
    TU_CHECK_OK(mproc_pool_free(p));
}

static item_t *items_new(size_t n)
{
    item_t *it = calloc(n, sizeof *it);
    for (size_t i = 0; i < n; i++)
        it[i].v = (int64_t)i * 3;
    return it;
}

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

/* A marker path in a fresh private directory (removed by the caller). */
static void marker_dir(char *dir, size_t cap)
{
    snprintf(dir, cap, "/tmp/mproc-pool-test-XXXXXX");
    if (!mkdtemp(dir))
        dir[0] = '\0';
}

/* ------------------------------------------------------------------ results */

static void map_in_order(mproc_start_method_t m)
{
    mproc_pool_t *p = new_pool(2, m, 0);
    TU_REQUIRE(p);
    size_t n = 10007;
    int64_t *in = malloc(n * sizeof *in), *out = malloc(n * sizeof *out);
    TU_REQUIRE(in && out);
    for (size_t i = 0; i < n; i++)
        in[i] = (int64_t)i * 7 - 5;
    size_t chunks[] = {0, 1, 3, 100, 20000};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        tu_context("chunk=%zu", chunks[c]);
        memset(out, 0, n * sizeof *out);
        TU_CHECK_OK(mproc_pool_map(p, inc_task, in, sizeof *in, out, sizeof *out, n, chunks[c],
                                   NULL, TU_T_MS));
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += out[i] != in[i] + 1;
        TU_CHECK_EQ_INT(bad, 0);
    }
    tu_context(NULL);
    /* apply, and an empty map */
    int64_t v = 41, r = 0;
    size_t len = 0;
    TU_CHECK_OK(mproc_pool_apply(p, inc_task, &v, sizeof v, &r, sizeof r, &len, NULL, TU_T_MS));
    TU_CHECK_EQ_INT(len, sizeof r);
    TU_CHECK_EQ_INT(r, 42);
    TU_CHECK_OK(mproc_pool_map(p, inc_task, in, sizeof *in, out, sizeof *out, 0, 0, NULL, 0));
    free(in);
    free(out);
    end_pool(p);
}
TU_DEFINE_METHOD_CASES(map_in_order)

static void test_task_errors(void)
{
    mproc_pool_t *p = new_pool(2, MPROC_START_FORK, 0);
    TU_REQUIRE(p);
    size_t n = 100;
    item_t *it = items_new(n);
    int64_t out[100];
    mproc_task_status_t st[100];
    for (size_t i = 0; i < n; i += 3)
        it[i].act = ACT_FAIL;
    TU_CHECK_EQ_INT(
        mproc_pool_map(p, item_task, it, sizeof *it, out, sizeof *out, n, 7, st, TU_T_MS),
        MPROC_ETASK);
    for (size_t i = 0; i < n; i++) {
        tu_context("item %zu", i);
        if (i % 3 == 0) {
            TU_CHECK_EQ_INT(st[i].rc, -EDOM);
            TU_CHECK_EQ_INT(out[i], 0); /* a failed item's result is zeroed */
        } else {
            TU_CHECK_EQ_INT(st[i].rc, 0);
            TU_CHECK_EQ_INT(out[i], it[i].v + 1);
        }
    }
    tu_context(NULL);
    /* No worker died for that. */
    TU_CHECK_EQ_INT(mproc_pool_workers_started(p), 2);
    /* A result larger than the room given is the task's error. */
    char buf[16];
    size_t len;
    TU_CHECK_EQ_INT(
        mproc_pool_apply(p, big_result_task, NULL, 0, buf, sizeof buf, &len, NULL, TU_T_MS),
        -EMSGSIZE);
    free(it);
    end_pool(p);
}

/* ------------------------------------------------------------------ deaths */

/* Items 1, 3, 5, 7 kill their worker four ways; each fails with the way
 * it died, and every other item is right. Under every method. */
static void deaths(mproc_start_method_t m)
{
    mproc_pool_t *p = new_pool(2, m, 0);
    TU_REQUIRE(p);
    size_t n = 12;
    item_t *it = items_new(n);
    it[1].act = ACT_SEGV;
    it[3].act = ACT_ABORT;
    it[5].act = ACT_EXIT7;
    it[7].act = ACT_KILL;
    int64_t out[12];
    mproc_task_status_t st[12];
    int64_t t0 = tu_now_ms();
    TU_CHECK_EQ_INT(
        mproc_pool_map(p, item_task, it, sizeof *it, out, sizeof *out, n, 1, st, TU_T_MS),
        MPROC_ETASK);
    TU_CHECK(tu_now_ms() - t0 < 5000);
    for (size_t i = 0; i < n; i++) {
        tu_context("item %zu", i);
        if (i == 1 || i == 3 || i == 5 || i == 7) {
            TU_CHECK_EQ_INT(st[i].rc, MPROC_EWORKER);
        } else {
            TU_CHECK_EQ_INT(st[i].rc, 0);
            TU_CHECK_EQ_INT(out[i], it[i].v + 1);
        }
    }
    tu_context(NULL);
    /* ASan turns a SIGSEGV into exit status 1. */
    TU_CHECK(st[1].status == -SIGSEGV || (tu_under_sanitizer() && st[1].status > 0));
    TU_CHECK_EQ_INT(st[3].status, -SIGABRT);
    TU_CHECK_EQ_INT(st[5].status, 7);
    TU_CHECK_EQ_INT(st[7].status, -SIGKILL);
    TU_CHECK_EQ_INT(mproc_pool_workers_started(p), 6); /* 2 + 4 replacements */
    /* The pool goes on as if nothing happened. */
    for (size_t i = 0; i < n; i++)
        it[i].act = ACT_OK;
    TU_CHECK_OK(
        mproc_pool_map(p, item_task, it, sizeof *it, out, sizeof *out, n, 0, NULL, TU_T_MS));
    free(it);
    end_pool(p);
}
TU_DEFINE_METHOD_CASES(deaths)

/*
 * 100 rounds: in a 10,000-task map, the task at a random index kills its
 * worker. The map returns within a bound, exactly that task failed with
 * MPROC_EWORKER / -SIGKILL, every other result is right, and the pool has
 * replaced the worker. Half the rounds with retries = 1 and a task that
 * dies only on its first run: then nothing fails at all.
 */
static void test_kill_rounds(void)
{
    char dir[64];
    marker_dir(dir, sizeof dir);
    TU_REQUIRE(dir[0]);
    size_t n = 10000;
    item_t *it = items_new(n);
    int64_t *out = malloc(n * sizeof *out);
    mproc_task_status_t *st = malloc(n * sizeof *st);
    TU_REQUIRE(it && out && st);
    for (int retries = 0; retries <= 1 && !tu_failed; retries++) {
        mproc_pool_t *p = new_pool(2, MPROC_START_FORK, (unsigned)retries);
        TU_REQUIRE(p);
        size_t chunks[] = {0, 1, 7, 333};
        for (int round = 0; round < 50 && !tu_failed; round++) {
            uint32_t k = rnd((uint32_t)n);
            size_t chunk = chunks[round % 4];
            tu_context("retries=%d round=%d k=%u chunk=%zu", retries, round, k, chunk);
            it[k].act = retries ? ACT_KILL_ONCE : ACT_KILL;
            snprintf(it[k].marker, sizeof it[k].marker, "%s/m%d", dir, round);
            unsigned before = mproc_pool_workers_started(p);
            int64_t t0 = tu_now_ms();
            int rc = mproc_pool_map(p, item_task, it, sizeof *it, out, sizeof *out, n, chunk, st,
                                    TU_T_MS);
            TU_CHECK(tu_now_ms() - t0 < 5000);
            TU_CHECK_EQ_INT(rc, retries ? 0 : MPROC_ETASK);
            size_t bad = 0;
            for (size_t i = 0; i < n; i++) {
                if (i == k && !retries)
                    bad += st[i].rc != MPROC_EWORKER || st[i].status != -SIGKILL;
                else
                    bad += st[i].rc != 0 || out[i] != it[i].v + 1;
            }
            TU_CHECK_EQ_INT(bad, 0);
            TU_CHECK_EQ_INT(mproc_pool_workers_started(p), before + 1);
            it[k].act = ACT_OK;
            unlink(it[k].marker);
        }
        tu_context(NULL);
        end_pool(p);
    }
    rmdir(dir);
    free(it);
    free(out);
    free(st);
}

/* Workers killed from outside at random moments (by pid, as an operator
 * or the OOM killer would): every item is right or failed with the kill,
 * at most one per kill. */
typedef struct {
    _Atomic int32_t pids[4];
    _Atomic uint64_t done;
} watch_t;

static watch_t *g_watch; /* shared with fork workers */

static int watched_task(const void *arg, size_t len, void *out, size_t cap, size_t *out_len)
{
    int64_t v;
    if (len != sizeof v || cap < sizeof v)
        return -EINVAL;
    memcpy(&v, arg, sizeof v);
    int slot = (int)(atomic_fetch_add(&g_watch->done, 1) % 4);
    atomic_store(&g_watch->pids[slot], (int32_t)getpid());
    for (volatile int i = 0; i < 2000; i++)
        ;
    v++;
    memcpy(out, &v, sizeof v);
    *out_len = sizeof v;
    return 0;
}

/* The killer: a process of its own (a thread would make every worker
 * replacement a fork of a threaded process), killing one worker of its
 * parent once `at` tasks ran; exit status 1 if it killed one. */
typedef struct {
    uint64_t at;
    pid_t parent;
} killer_t;

static int killer(void *arg)
{
    killer_t *k = arg;
    int64_t end = tu_now_ms() + TU_T_MS;
    while (atomic_load(&g_watch->done) < k->at && tu_now_ms() < end)
        sched_yield();
    pid_t pid = atomic_load(&g_watch->pids[rnd(4)]), ppid = 0;
    char state;
    /* Only a worker of the test's: a pid recorded earlier may be gone. */
    if (pid > 0 && tu_proc_stat(pid, &ppid, &state) == 0 && ppid == k->parent && state != 'Z' &&
        kill(pid, SIGKILL) == 0)
        return 1;
    return 0;
}

static void test_kill_from_outside(void)
{
    g_watch =
        mmap(NULL, sizeof *g_watch, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    TU_REQUIRE(g_watch != MAP_FAILED);
    mproc_pool_t *p = new_pool(2, MPROC_START_FORK, 0);
    TU_REQUIRE(p);
    size_t n = 20000;
    int64_t *in = malloc(n * sizeof *in), *out = malloc(n * sizeof *out);
    mproc_task_status_t *st = malloc(n * sizeof *st);
    TU_REQUIRE(in && out && st);
    for (size_t i = 0; i < n; i++)
        in[i] = (int64_t)i;
    int total_kills = 0, total_failed = 0;
    for (int round = 0; round < 20 && !tu_failed; round++) {
        atomic_store(&g_watch->done, 0);
        for (int i = 0; i < 4; i++)
            atomic_store(&g_watch->pids[i], 0);
        killer_t k = {.at = 1 + rnd((uint32_t)n / 2), .parent = getpid()};
        int kfd = -1;
        pid_t kpid = tu_fork(killer, &k, &kfd);
        TU_REQUIRE(kpid > 0);
        int rc = mproc_pool_map(p, watched_task, in, sizeof *in, out, sizeof *out, n, round % 3, st,
                                TU_T_MS);
        int kills = 0;
        TU_CHECK_OK(tu_wait_child(kpid, kfd, TU_T_MS, &kills));
        TU_CHECK(rc == 0 || rc == MPROC_ETASK);
        int failed = 0;
        for (size_t i = 0; i < n; i++) {
            if (st[i].rc == MPROC_EWORKER && st[i].status == -SIGKILL)
                failed++;
            else
                TU_CHECK(st[i].rc == 0 && out[i] == in[i] + 1);
        }
        TU_CHECK(failed <= kills);
        total_kills += kills;
        total_failed += failed;
    }
    fprintf(stderr, "  %d workers killed from outside, %d tasks failed with them\n", total_kills,
            total_failed);
    TU_CHECK(total_kills > 0);
    end_pool(p);
    munmap(g_watch, sizeof *g_watch);
    free(in);
    free(out);
    free(st);
}

/* ------------------------------------------------------------------ workers */

/* init runs once in every worker, replacements included; max tasks per
 * child replaces workers. */
static void init_and_max_tasks(mproc_start_method_t m)
{
    mproc_shm_t *seg = NULL;
    TU_REQUIRE_OK(mproc_shm_create_named(&seg, 4096, NULL));
    _Atomic int *inits;
    TU_REQUIRE_OK(mproc_shm_alloc(seg, sizeof *inits, "inits", (void **)&inits));
    char arg[sizeof(int64_t) + MPROC_NAME_MAX + 1];
    int64_t salt = 777;
    memcpy(arg, &salt, sizeof salt);
    snprintf(arg + sizeof salt, sizeof arg - sizeof salt, "%s", mproc_shm_name(seg));
    mproc_pool_opts_t o = {.workers = 2,
                           .method = m,
                           .init = init_worker,
                           .init_arg = arg,
                           .init_len = sizeof salt + strlen(arg + sizeof salt) + 1,
                           .max_tasks_per_child = 5};
    mproc_pool_t *p = NULL;
    TU_REQUIRE_OK(mproc_pool_create(&p, &o));
    size_t n = 60;
    who_t out[60];
    char dummy[60];
    TU_CHECK_OK(mproc_pool_map(p, who_task, dummy, 1, out, sizeof *out, n, 1, NULL, TU_T_MS));
    int pids = 0;
    for (size_t i = 0; i < n; i++) {
        TU_CHECK_EQ_INT(out[i].inited, 1);
        TU_CHECK_EQ_INT(out[i].salt, 777);
        int seen = 0;
        for (size_t j = 0; j < i; j++)
            seen |= out[j].pid == out[i].pid;
        pids += !seen;
    }
    /* 60 one-item tasks, 5 per worker: at least 12 workers served them. */
    TU_CHECK(pids >= 12);
    TU_CHECK_OK(mproc_pool_close(p));
    TU_CHECK_OK(mproc_pool_join(p, TU_T_MS));
    /* Every worker ever started ran init exactly once. */
    TU_CHECK_EQ_INT(atomic_load(inits), (int)mproc_pool_workers_started(p));
    TU_CHECK((int)mproc_pool_workers_started(p) >= pids);
    mproc_pool_free(p);
    mproc_shm_unlink(seg);
    mproc_shm_close(seg);
}
TU_DEFINE_METHOD_CASES(init_and_max_tasks)

/* An init that always fails: the pool gives up instead of spinning, and
 * the work fails with MPROC_EWORKER. */
static void test_init_refuses(void)
{
    mproc_pool_opts_t o = {.workers = 2, .method = MPROC_START_FORK, .init = init_refuses};
    mproc_pool_t *p = NULL;
    TU_REQUIRE_OK(mproc_pool_create(&p, &o));
    int64_t in[4] = {1, 2, 3, 4}, out[4];
    mproc_task_status_t st[4];
    int64_t t0 = tu_now_ms();
    TU_CHECK_EQ_INT(mproc_pool_map(p, inc_task, in, 8, out, 8, 4, 1, st, TU_T_MS), MPROC_ETASK);
    TU_CHECK(tu_now_ms() - t0 < 5000);
    for (int i = 0; i < 4; i++)
        TU_CHECK_EQ_INT(st[i].rc, MPROC_EWORKER);
    /* Again, without a timeout: it fails as fast, it does not wait. */
    t0 = tu_now_ms();
    TU_CHECK_EQ_INT(mproc_pool_map(p, inc_task, in, 8, out, 8, 4, 1, st, MPROC_FOREVER),
                    MPROC_ETASK);
    TU_CHECK(tu_now_ms() - t0 < 5000);
    TU_CHECK_OK(mproc_pool_terminate(p));
    TU_CHECK_OK(mproc_pool_join(p, TU_T_MS));
    mproc_pool_free(p);
}

/* Regressions from a review. */

/* Ranges spread over every worker, not the first one's window first. */
static void test_spread(void)
{
    mproc_pool_t *p = new_pool(4, MPROC_START_FORK, 0);
    TU_REQUIRE(p);
    who_t out[8];
    char dummy[8];
    TU_CHECK_OK(mproc_pool_map(p, who_task, dummy, 1, out, sizeof *out, 8, 1, NULL, TU_T_MS));
    int pids = 0;
    for (int i = 0; i < 8; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++)
            seen |= out[j].pid == out[i].pid;
        pids += !seen;
    }
    TU_CHECK_EQ_INT(pids, 4);
    end_pool(p);
}

/* One worker, the first ten tasks each kill it: exactly those ten fail
 * with -SIGKILL, the other ten succeed (no crash-loop false alarm). */
static void test_many_deaths_one_worker(void)
{
    mproc_pool_t *p = new_pool(1, MPROC_START_FORK, 0);
    TU_REQUIRE(p);
    size_t n = 20;
    item_t *it = items_new(n);
    for (size_t i = 0; i < 10; i++)
        it[i].act = ACT_KILL;
    int64_t out[20];
    mproc_task_status_t st[20];
    TU_CHECK_EQ_INT(
        mproc_pool_map(p, item_task, it, sizeof *it, out, sizeof *out, n, 1, st, TU_T_MS),
        MPROC_ETASK);
    for (size_t i = 0; i < n; i++) {
        tu_context("item %zu", i);
        if (i < 10) {
            TU_CHECK_EQ_INT(st[i].rc, MPROC_EWORKER);
            TU_CHECK_EQ_INT(st[i].status, -SIGKILL);
        } else {
            TU_CHECK_EQ_INT(st[i].rc, 0);
            TU_CHECK_EQ_INT(out[i], it[i].v + 1);
        }
    }
    tu_context(NULL);
    free(it);
    end_pool(p);
}

/* A map far larger than the arena, with a chunk larger than a window. */
static void test_map_larger_than_arena(void)
{
    mproc_pool_opts_t o = {.workers = 2, .method = MPROC_START_FORK, .arena = 1 << 20};
    mproc_pool_t *p = NULL;
    TU_REQUIRE_OK(mproc_pool_create(&p, &o));
    size_t n = 300000;
    int64_t *in = malloc(n * sizeof *in), *out = malloc(n * sizeof *out);
    TU_REQUIRE(in && out);
    for (size_t i = 0; i < n; i++)
        in[i] = (int64_t)i;
    size_t chunks[] = {0, 200000};
    for (int c = 0; c < 2; c++) {
        TU_CHECK_OK(mproc_pool_map(p, inc_task, in, sizeof *in, out, sizeof *out, n, chunks[c],
                                   NULL, TU_T_MS));
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += out[i] != in[i] + 1;
        TU_CHECK_EQ_INT(bad, 0);
    }
    free(in);
    free(out);
    end_pool(p);
}

/* A stream and a task outliving their pool can still be freed. */
static void test_free_after_pool(void)
{
    mproc_pool_t *p = new_pool(1, MPROC_START_FORK, 0);
    TU_REQUIRE(p);
    mproc_imap_t *s = NULL;
    mproc_task_t *t = NULL;
    int64_t v = 1;
    TU_REQUIRE_OK(mproc_pool_imap(p, inc_task, 0, &s));
    TU_CHECK_OK(mproc_imap_put(s, &v, sizeof v, TU_T_MS));
    TU_CHECK_OK(mproc_pool_apply_async(p, inc_task, &v, sizeof v, NULL, NULL, &t, TU_T_MS));
    TU_CHECK_OK(mproc_pool_free(p));
    TU_CHECK_OK(mproc_imap_free(s));
    TU_CHECK_OK(mproc_task_free(t));
}

/* ------------------------------------------------------------------ async */

typedef struct {
    int calls;
    int64_t sum;
} cb_state_t;

static void on_done(void *ctx, mproc_task_t *t)
{
    cb_state_t *s = ctx;
    const void *buf;
    size_t len;
    if (mproc_task_result(t, &buf, &len, NULL) == 0 && len == sizeof(int64_t)) {
        int64_t v;
        memcpy(&v, buf, sizeof v);
        s->sum += v;
    }
    s->calls++;
    mproc_task_free(t); /* allowed inside the callback */
}

static void test_apply_async(void)
{
    /* A small arena: 300 submissions cannot all be in flight at once, so
     * submitting waits (back-pressure) while results are collected. */
    mproc_pool_opts_t o = {
        .workers = 2, .method = MPROC_START_FORK, .arena = 256 * 1024, .max_result = 8192};
    mproc_pool_t *p = NULL;
    TU_REQUIRE_OK(mproc_pool_create(&p, &o));
    cb_state_t s = {0, 0};
    int64_t want = 0;
    for (int64_t i = 0; i < 300; i++) {
        mproc_task_t *t;
        TU_REQUIRE_OK(mproc_pool_apply_async(p, inc_task, &i, sizeof i, on_done, &s, &t, TU_T_MS));
        want += i + 1;
    }
    int64_t end = tu_now_ms() + TU_T_MS;
    while (s.calls < 300 && tu_now_ms() < end)
        TU_CHECK(mproc_pool_poll(p, 100) >= 0);
    TU_CHECK_EQ_INT(s.calls, 300);
    TU_CHECK(s.sum == want);

    /* wait / ready / result on a handle */
    int64_t v = 9;
    mproc_task_t *t;
    TU_REQUIRE_OK(mproc_pool_apply_async(p, inc_task, &v, sizeof v, NULL, NULL, &t, TU_T_MS));
    TU_CHECK_OK(mproc_task_wait(t, TU_T_MS));
    TU_CHECK_EQ_INT(mproc_task_ready(t), 1);
    const void *buf;
    size_t len;
    mproc_task_status_t st;
    TU_CHECK_OK(mproc_task_result(t, &buf, &len, &st));
    TU_CHECK_EQ_INT(len, sizeof v);
    memcpy(&v, buf, sizeof v);
    TU_CHECK_EQ_INT(v, 10);
    TU_CHECK_OK(mproc_task_free(t));
    /* An argument that cannot fit the arena. */
    void *huge = calloc(1, 300 * 1024);
    TU_CHECK_EQ_INT(mproc_pool_apply_async(p, inc_task, huge, 300 * 1024, NULL, NULL, &t, TU_T_MS),
                    -E2BIG);
    free(huge);
    end_pool(p);
}

/* terminate with tasks running and queued: each ends with -ECANCELED. */
static void test_terminate(void)
{
    mproc_pool_t *p = new_pool(2, MPROC_START_FORK, 0);
    TU_REQUIRE(p);
    mproc_task_t *t[10];
    item_t it = {0};
    it.act = ACT_BLOCK;
    for (int i = 0; i < 10; i++)
        TU_REQUIRE_OK(mproc_pool_apply_async(p, item_task, &it, sizeof it, NULL, NULL, &t[i], 0));
    TU_CHECK_EQ_INT(mproc_task_wait(t[0], 50), -ETIMEDOUT);
    int64_t t0 = tu_now_ms();
    TU_CHECK_OK(mproc_pool_terminate(p));
    TU_CHECK_OK(mproc_pool_join(p, TU_T_MS));
    TU_CHECK(tu_now_ms() - t0 < 2000);
    for (int i = 0; i < 10; i++) {
        TU_CHECK_EQ_INT(mproc_task_ready(t[i]), 1);
        mproc_task_status_t st;
        TU_CHECK_EQ_INT(mproc_task_result(t[i], NULL, NULL, &st), -ECANCELED);
        mproc_task_free(t[i]);
    }
    mproc_task_t *x;
    TU_CHECK_EQ_INT(mproc_pool_apply_async(p, inc_task, &it, 8, NULL, NULL, &x, 0), MPROC_ESTATE);
    TU_CHECK_OK(mproc_pool_free(p));

    /* Mid-map, as a stream: 30 items, some done, two running for ever,
     * the rest queued; terminate; every item is accounted for once. */
    p = new_pool(2, MPROC_START_FORK, 0);
    TU_REQUIRE(p);
    mproc_imap_t *s = NULL;
    TU_REQUIRE_OK(mproc_pool_imap(p, item_task, 1, &s));
    for (int i = 0; i < 30; i++) {
        item_t y = {.v = i, .act = i >= 10 ? ACT_BLOCK : ACT_OK};
        TU_REQUIRE_OK(mproc_imap_put(s, &y, sizeof y, TU_T_MS));
    }
    int64_t r;
    size_t len;
    uint64_t idx;
    for (int i = 0; i < 10; i++) {
        TU_CHECK_OK(mproc_imap_next(s, &r, sizeof r, &len, &idx, NULL, TU_T_MS));
        TU_CHECK_EQ_INT(idx, i);
    }
    TU_CHECK_EQ_INT(mproc_imap_next(s, &r, sizeof r, &len, &idx, NULL, 50), -ETIMEDOUT);
    TU_CHECK_OK(mproc_pool_terminate(p));
    for (int i = 10; i < 30; i++) {
        TU_CHECK_EQ_INT(mproc_imap_next(s, &r, sizeof r, &len, &idx, NULL, 0), -ECANCELED);
        TU_CHECK_EQ_INT(idx, i);
    }
    TU_CHECK_EQ_INT(mproc_imap_next(s, &r, sizeof r, &len, &idx, NULL, 0), -ENODATA);
    TU_CHECK_OK(mproc_imap_free(s));
    TU_CHECK_OK(mproc_pool_join(p, TU_T_MS));
    TU_CHECK_OK(mproc_pool_free(p));
}

/* ------------------------------------------------------------------ imap */

/* Items take uneven time (so they end out of order); one kills its
 * worker. Ordered: results come back in put order; unordered: each index
 * exactly once. Items are put and taken interleaved, as a stream. */
static int uneven_task(const void *arg, size_t len, void *out, size_t cap, size_t *out_len)
{
    item_t it;
    if (len != sizeof it || cap < sizeof(int64_t))
        return -EINVAL;
    memcpy(&it, arg, sizeof it);
    for (volatile int64_t i = 0; i < (it.v % 7) * 3000; i++)
        ;
    return item_task(arg, len, out, cap, out_len);
}

static void imap_stream(mproc_start_method_t m)
{
    mproc_pool_t *p = new_pool(2, m, 0);
    TU_REQUIRE(p);
    for (int ordered = 1; ordered >= 0 && !tu_failed; ordered--) {
        tu_context("ordered=%d", ordered);
        mproc_imap_t *it = NULL;
        TU_REQUIRE_OK(mproc_pool_imap(p, uneven_task, ordered, &it));
        size_t n = 3000, taken = 0, killed_at = 1234, full = 0;
        uint8_t *seen = calloc(n, 1);
        TU_REQUIRE(seen);
        uint64_t expect = 0;
        int64_t end = tu_now_ms() + TU_T_MS;
        for (size_t put = 0; taken < n && tu_now_ms() < end;) {
            if (put < n) {
                item_t x = {.v = (int64_t)put, .act = put == killed_at ? ACT_KILL : ACT_OK};
                int rc = mproc_imap_put(it, &x, sizeof x, TU_T_MS);
                if (rc == 0 && ++put % 5)
                    continue; /* take one result for every five put */
                /* -ENOBUFS: the arena holds results not taken yet */
                TU_REQUIRE(rc == 0 || rc == -ENOBUFS);
                full += rc == -ENOBUFS;
            }
            int64_t r;
            size_t len;
            uint64_t idx = 99999;
            mproc_task_status_t st;
            int rc = mproc_imap_next(it, &r, sizeof r, &len, &idx, &st, TU_T_MS);
            TU_REQUIRE(idx < n);
            if (ordered)
                TU_CHECK_EQ_INT(idx, expect++);
            TU_CHECK_EQ_INT(seen[idx], 0);
            seen[idx] = 1;
            if (idx == killed_at) {
                TU_CHECK_EQ_INT(rc, MPROC_EWORKER);
                TU_CHECK_EQ_INT(st.status, -SIGKILL);
            } else {
                TU_CHECK_OK(rc);
                TU_CHECK_EQ_INT(r, (int64_t)idx + 1);
            }
            taken++;
        }
        TU_CHECK_EQ_INT(taken, n);
        (void)full;
        int64_t r;
        size_t len;
        TU_CHECK_EQ_INT(mproc_imap_next(it, &r, sizeof r, &len, NULL, NULL, 0), -ENODATA);
        /* A buffer too small: the result waits for a larger one. */
        item_t x = {.v = 5};
        TU_CHECK_OK(mproc_imap_put(it, &x, sizeof x, TU_T_MS));
        char small[2];
        TU_CHECK_EQ_INT(mproc_imap_next(it, small, sizeof small, &len, NULL, NULL, TU_T_MS),
                        -EMSGSIZE);
        TU_CHECK_EQ_INT(len, sizeof r);
        TU_CHECK_OK(mproc_imap_next(it, &r, sizeof r, &len, NULL, NULL, TU_T_MS));
        TU_CHECK_EQ_INT(r, 6);
        /* Freed with items in flight: they end on their own. */
        TU_CHECK_OK(mproc_imap_put(it, &x, sizeof x, TU_T_MS));
        TU_CHECK_OK(mproc_imap_free(it));
        free(seen);
    }
    tu_context(NULL);
    end_pool(p);
}
TU_DEFINE_METHOD_CASES(imap_stream)

/* ------------------------------------------------------------------ bad input */

static void test_bad_input(void)
{
    mproc_pool_t *p = NULL;
    mproc_pool_opts_t o = {.workers = -1};
    TU_CHECK_EQ_INT(mproc_pool_create(NULL, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_pool_create(&p, &o), -EINVAL);
    o = (mproc_pool_opts_t){.init_len = 4};
    TU_CHECK_EQ_INT(mproc_pool_create(&p, &o), -EINVAL);
    TU_CHECK(p == NULL);
    p = new_pool(1, MPROC_START_FORK, 0);
    TU_REQUIRE(p);
    int64_t v = 1, out = 0;
    size_t len;
    mproc_task_t *t;
    TU_CHECK_EQ_INT(mproc_pool_map(NULL, inc_task, &v, 8, &out, 8, 1, 0, NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_pool_map(p, NULL, &v, 8, &out, 8, 1, 0, NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_pool_map(p, inc_task, NULL, 8, &out, 8, 1, 0, NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_pool_apply_async(p, inc_task, &v, 8, NULL, NULL, NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_pool_apply_async(p, inc_task, NULL, 8, NULL, NULL, &t, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_pool_apply(p, inc_task, &v, 8, &out, 8, NULL, NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_pool_join(p, 0), MPROC_ESTATE); /* not closed */
    TU_CHECK_EQ_INT(mproc_task_wait(NULL, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_task_free(NULL), 0);
    TU_CHECK_OK(mproc_pool_apply(p, inc_task, &v, 8, &out, 8, &len, NULL, TU_T_MS));
    TU_CHECK_EQ_INT(out, 2);
    /* A result that does not fit the caller's buffer. */
    char small[4];
    TU_CHECK_EQ_INT(mproc_pool_apply(p, inc_task, &v, 8, small, sizeof small, &len, NULL, TU_T_MS),
                    -EMSGSIZE);
    TU_CHECK_EQ_INT(len, 8);
    TU_CHECK_OK(mproc_pool_close(p));
    TU_CHECK_EQ_INT(mproc_pool_close(p), MPROC_ESTATE);
    TU_CHECK_EQ_INT(mproc_pool_map(p, inc_task, &v, 8, &out, 8, 1, 0, NULL, 0), MPROC_ESTATE);
    TU_CHECK_OK(mproc_pool_join(p, TU_T_MS));
    TU_CHECK_OK(mproc_pool_free(p));
    TU_CHECK_EQ_INT(mproc_pool_free(NULL), 0);
}

/* ------------------------------------------------------------------ main */

static const tu_case_t cases[] = {
    TU_METHOD_CASES(map_in_order),
    TU_CASE(test_task_errors),
    TU_METHOD_CASES(deaths),
    TU_CASE(test_kill_rounds),
    TU_CASE(test_kill_from_outside),
    TU_METHOD_CASES(init_and_max_tasks),
    TU_CASE(test_init_refuses),
    TU_CASE(test_spread),
    TU_CASE(test_many_deaths_one_worker),
    TU_CASE(test_map_larger_than_arena),
    TU_CASE(test_free_after_pool),
    TU_CASE(test_apply_async),
    TU_METHOD_CASES(imap_stream),
    TU_CASE(test_terminate),
    TU_CASE(test_bad_input),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    rng ^= (uint64_t)getpid() << 16 ^ (uint64_t)time(NULL);
    return tu_main(argc, argv, cases);
}
