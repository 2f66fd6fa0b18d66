/*
 * bench_sync - the cost of the process-shared sync objects: lock,
 * semaphore, event; uncontended, contended, and a cross-process ping-pong.
 *
 *   bench_sync <mode> <iterations>
 *
 * Uncontended modes time <iterations> operations in 100 batches (after one
 * untimed warm-up batch), as bench_guard does; a sample is a batch's time
 * per operation, loop overhead included, in nanoseconds:
 *
 *   mproc-lock         mproc_lock_acquire(FOREVER) + mproc_lock_release
 *   raw-pthread-lock   pthread_mutex_lock + unlock of a PTHREAD_PROCESS_SHARED,
 *                      PTHREAD_MUTEX_ROBUST mutex in MAP_SHARED memory (what
 *                      a robust lock costs at least with glibc)
 *   raw-futex-lock     a classic non-robust futex mutex (Drepper's
 *                      "mutex 2": cmpxchg 0->1, else xchg 2 + FUTEX_WAIT;
 *                      shared futexes, not FUTEX_PRIVATE) in MAP_SHARED
 *                      memory: the least a process-shared lock can cost
 *   mproc-sem          mproc_semaphore_acquire(FOREVER) + release, value 1
 *   raw-sem            sem_wait + sem_post of a sem_t, pshared=1, in
 *                      MAP_SHARED memory
 *   mproc-event        mproc_event_set, _wait (returns at once), _clear,
 *                      _is_set (must say 0)
 *   raw-event          the same four on a futex flag (0 clear, 1 set, 2
 *                      clear with waiters; set wakes only when it was 2)
 *
 * Contended modes fork two workers, pinned to two different CPUs
 * (pin_to), that each make <iterations> acquire / increment a shared
 * counter / release on one lock. Both spin on a start flag, then time
 * their loop; a sample is (last end - first start) / (2 * iterations), in
 * nanoseconds per operation, over 5 rounds (fresh workers each). The
 * counter must end at 2 * iterations in every round, or the program fails.
 *
 *   mproc-lock-contended          mproc_lock, workers by mproc_process (fork)
 *   raw-pthread-lock-contended    the robust pthread mutex, fork()
 *   raw-futex-lock-contended      the futex mutex, fork()
 *
 * Ping-pong modes: the parent and one forked child hand a turn back and
 * forth with two events: the parent sets e1 and waits for e2, then clears
 * e2; the child waits for e1, clears it and sets e2. <iterations> round
 * trips in 20 timed batches (after an untimed warm-up batch); a sample is a
 * batch's round trips per second. Parent and child are pinned to two
 * different CPUs: every round trip is two cross-CPU wake-ups.
 *
 *   mproc-pingpong    two mproc_events, the child by mproc_process (fork)
 *   raw-pingpong      two futex flags as raw-event, fork()
 *
 * Output: one line,
 *
 *   median_ns=... p10_ns=... p90_ns=... n=<iterations>      (uncontended)
 *   median_ns=... p10_ns=... p90_ns=... ops_per_s=... n=...  (contended)
 *   median_per_s=... p10_per_s=... p90_per_s=... n=...        (ping-pong)
 *
 * Any error is printed to stderr and ends the program with status 1.
 */
#define _GNU_SOURCE /* syscall(), MAP_ANONYMOUS */

#include "bench_util.h"
#include "mproc.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_BATCHES 100
#define CONTENDED_ROUNDS 5
#define PINGPONG_BATCHES 20

static volatile unsigned long sink;

/* ------------------------------------------------------------------------ */
/* Raw floors: futex mutex, futex event flag                                */
/* ------------------------------------------------------------------------ */

static long futex(_Atomic uint32_t *addr, int op, uint32_t val)
{
    /* Not FUTEX_PRIVATE_FLAG: the word is shared between processes. */
    return syscall(SYS_futex, (uint32_t *)addr, op, val, NULL, NULL, 0);
}

/* Drepper, "Futexes Are Tricky", mutex 2: 0 free, 1 locked, 2 contended. */
static inline void flock_acquire(_Atomic uint32_t *w)
{
    uint32_t c = 0;
    if (atomic_compare_exchange_strong(w, &c, 1))
        return;
    if (c != 2)
        c = atomic_exchange(w, 2);
    while (c != 0) {
        futex(w, FUTEX_WAIT, 2);
        c = atomic_exchange(w, 2);
    }
}

static inline void flock_release(_Atomic uint32_t *w)
{
    if (atomic_fetch_sub(w, 1) != 1) {
        atomic_store(w, 0);
        futex(w, FUTEX_WAKE, 1);
    }
}

/* An event flag: 0 clear, 1 set, 2 clear with (possible) waiters. */
static inline void fevent_set(_Atomic uint32_t *w)
{
    if (atomic_exchange(w, 1) == 2)
        futex(w, FUTEX_WAKE, INT_MAX);
}

static inline void fevent_clear(_Atomic uint32_t *w)
{
    uint32_t one = 1;
    atomic_compare_exchange_strong(w, &one, 0);
}

static inline int fevent_is_set(_Atomic uint32_t *w)
{
    return atomic_load(w) == 1;
}

static inline void fevent_wait(_Atomic uint32_t *w)
{
    uint32_t c;
    while ((c = atomic_load(w)) != 1) {
        if (c == 0 && !atomic_compare_exchange_strong(w, &c, 2))
            continue; /* changed under us: look again */
        futex(w, FUTEX_WAIT, 2);
    }
}

static void *map_shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die_errno("mmap");
    return p;
}

/*
 * Pin the calling process to the k-th CPU (bench_pin_cpu: of those the
 * program could use at its first pin, so that the child of a pinned parent
 * still gets a CPU of its own). The two sides of a contended or ping-pong
 * mode go to different CPUs, so every run measures the same thing: left
 * to the scheduler, the two sometimes share one CPU and take turns by time
 * slice (no contention, ~5 µs wake-ups) and sometimes do not (~60 ns per
 * contended operation, ~50 µs wake-ups), and the medians jump between the
 * two.
 */
static void pin_to(int k)
{
    bench_pin_cpu(k);
}

static void robust_mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (!rc)
        rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!rc)
        rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!rc)
        rc = pthread_mutex_init(m, &a);
    if (rc) {
        errno = rc;
        die_errno("pthread_mutex_init");
    }
    pthread_mutexattr_destroy(&a);
}

/* ------------------------------------------------------------------------ */
/* The objects: one of each kind, in one segment (mproc) or one mapping     */
/* ------------------------------------------------------------------------ */

/* Shared state of the contended and ping-pong modes, 64-byte lines apart. */
typedef struct {
    _Alignas(64) _Atomic uint32_t ready;
    _Alignas(64) _Atomic uint32_t go;
    _Alignas(64) uint64_t counter;
    _Alignas(64) int64_t t0[2];
    int64_t t1[2];
} shared_t;

typedef struct {
    _Alignas(64) pthread_mutex_t mutex;
    _Alignas(64) _Atomic uint32_t futex_lock;
    _Alignas(64) sem_t sem;
    _Alignas(64) _Atomic uint32_t ev1;
    _Alignas(64) _Atomic uint32_t ev2;
    shared_t sh;
} raw_objs_t;

static mproc_shm_t *shm;
static mproc_lock_t *m_lock;
static mproc_semaphore_t *m_sem;
static mproc_event_t *m_ev1, *m_ev2;
static raw_objs_t *raw;
static shared_t *sh; /* in the segment (mproc) or in raw */

static void setup_mproc(void)
{
    int rc = mproc_shm_create(&shm, 8 * MPROC_SHM_OBJECT_OVERHEAD + 4096);
    if (rc == 0)
        rc = mproc_lock_create(shm, NULL, &m_lock);
    if (rc == 0)
        rc = mproc_semaphore_create(shm, NULL, 1, 0, &m_sem);
    if (rc == 0)
        rc = mproc_event_create(shm, NULL, &m_ev1);
    if (rc == 0)
        rc = mproc_event_create(shm, NULL, &m_ev2);
    if (rc == 0)
        rc = mproc_shm_alloc(shm, sizeof(shared_t), NULL, (void **)&sh);
    if (rc < 0)
        die_mproc("setting up the segment", rc);
}

static void setup_raw(void)
{
    raw = map_shared(sizeof *raw);
    robust_mutex_init(&raw->mutex);
    if (sem_init(&raw->sem, 1, 1) < 0)
        die_errno("sem_init");
    sh = &raw->sh;
}

static void cleanup(void)
{
    if (shm) {
        int rc = mproc_shm_close(shm); /* anonymous: nothing to unlink */
        if (rc < 0)
            die_mproc("mproc_shm_close", rc);
        shm = NULL;
    }
    if (raw) {
        sem_destroy(&raw->sem);
        munmap(raw, sizeof *raw);
        raw = NULL;
    }
}

/* ------------------------------------------------------------------------ */
/* Uncontended batches: `calls` operations, a sum that must come out 0      */
/* ------------------------------------------------------------------------ */

static unsigned long mproc_lock_batch(long calls)
{
    unsigned long bad = 0;
    for (long i = 0; i < calls; i++) {
        bad += mproc_lock_acquire(m_lock, MPROC_FOREVER) != 0;
        bad += mproc_lock_release(m_lock) != 0;
    }
    return bad;
}

static unsigned long raw_pthread_lock_batch(long calls)
{
    unsigned long bad = 0;
    for (long i = 0; i < calls; i++) {
        bad += pthread_mutex_lock(&raw->mutex) != 0;
        bad += pthread_mutex_unlock(&raw->mutex) != 0;
    }
    return bad;
}

static unsigned long raw_futex_lock_batch(long calls)
{
    for (long i = 0; i < calls; i++) {
        flock_acquire(&raw->futex_lock);
        flock_release(&raw->futex_lock);
    }
    return atomic_load(&raw->futex_lock) != 0;
}

static unsigned long mproc_sem_batch(long calls)
{
    unsigned long bad = 0;
    for (long i = 0; i < calls; i++) {
        bad += mproc_semaphore_acquire(m_sem, MPROC_FOREVER) != 0;
        bad += mproc_semaphore_release(m_sem) != 0;
    }
    return bad;
}

static unsigned long raw_sem_batch(long calls)
{
    unsigned long bad = 0;
    for (long i = 0; i < calls; i++) {
        bad += sem_wait(&raw->sem) != 0;
        bad += sem_post(&raw->sem) != 0;
    }
    return bad;
}

static unsigned long mproc_event_batch(long calls)
{
    unsigned long bad = 0;
    for (long i = 0; i < calls; i++) {
        bad += mproc_event_set(m_ev1) != 0;
        bad += mproc_event_wait(m_ev1, MPROC_FOREVER) != 0;
        bad += mproc_event_clear(m_ev1) != 0;
        bad += mproc_event_is_set(m_ev1) != 0;
    }
    return bad;
}

static unsigned long raw_event_batch(long calls)
{
    unsigned long bad = 0;
    for (long i = 0; i < calls; i++) {
        fevent_set(&raw->ev1);
        fevent_wait(&raw->ev1);
        fevent_clear(&raw->ev1);
        bad += fevent_is_set(&raw->ev1) != 0;
    }
    return bad;
}

static void run_uncontended(const char *name, unsigned long (*batch)(long), long iterations)
{
    double samples[MAX_BATCHES];
    long nbatch = iterations < MAX_BATCHES ? iterations : MAX_BATCHES;
    unsigned long bad = batch(iterations / nbatch); /* warm-up */

    for (long b = 0; b < nbatch; b++) {
        long calls = iterations / nbatch + (b < iterations % nbatch);
        double t0 = now_ns();
        unsigned long acc = batch(calls);
        double t1 = now_ns();
        sink = acc;
        bad += acc;
        samples[b] = (t1 - t0) / (double)calls;
    }
    if (bad != 0)
        die(name, "an operation failed or an event stayed set");
    print_quantiles("ns", samples, (size_t)nbatch, iterations);
}

/* ------------------------------------------------------------------------ */
/* Contended: two workers, one lock, one counter                            */
/* ------------------------------------------------------------------------ */

typedef enum { K_MPROC, K_PTHREAD, K_FUTEX } lock_kind_t;

static lock_kind_t kind;
static long per_worker;

static int64_t now_i64(void)
{
    return (int64_t)now_ns();
}

/* A worker's loop; returns its exit status (0, or 1 on a lock error). */
static int contend(int idx)
{
    pin_to(idx);
    atomic_fetch_add(&sh->ready, 1);
    while (!atomic_load_explicit(&sh->go, memory_order_acquire))
        ;
    int64_t t0 = now_i64();
    int bad = 0;
    switch (kind) {
    case K_MPROC:
        for (long i = 0; i < per_worker; i++) {
            bad |= mproc_lock_acquire(m_lock, MPROC_FOREVER) != 0;
            sh->counter++;
            bad |= mproc_lock_release(m_lock) != 0;
        }
        break;
    case K_PTHREAD:
        for (long i = 0; i < per_worker; i++) {
            bad |= pthread_mutex_lock(&raw->mutex) != 0;
            sh->counter++;
            bad |= pthread_mutex_unlock(&raw->mutex) != 0;
        }
        break;
    case K_FUTEX:
        for (long i = 0; i < per_worker; i++) {
            flock_acquire(&raw->futex_lock);
            sh->counter++;
            flock_release(&raw->futex_lock);
        }
        break;
    }
    sh->t0[idx] = t0;
    sh->t1[idx] = now_i64();
    return bad;
}

static int mproc_worker(const void *arg, size_t len)
{
    int idx = 0;
    if (len == sizeof idx)
        memcpy(&idx, arg, sizeof idx);
    return contend(idx);
}

static void check_status(const char *what, int status)
{
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return;
    char why[64];
    if (WIFSIGNALED(status))
        snprintf(why, sizeof why, "worker killed by signal %d", WTERMSIG(status));
    else
        snprintf(why, sizeof why, "worker failed (wait status 0x%x)", (unsigned)status);
    die(what, why);
}

/* Wait for both workers to be spinning, then let them go. */
static void release_workers(void)
{
    while (atomic_load(&sh->ready) < 2)
        sched_yield();
    atomic_store_explicit(&sh->go, 1, memory_order_release);
}

static double contended_round(const char *name)
{
    sh->ready = 0;
    sh->go = 0;
    sh->counter = 0;

    if (kind == K_MPROC) {
        mproc_process_t *w[2] = {NULL, NULL};
        mproc_process_opts_t opts = {.name = "bench-worker", .method = MPROC_START_FORK};
        for (int i = 0; i < 2; i++) {
            int rc = mproc_process_create(&w[i], mproc_worker, &i, sizeof i, &opts);
            if (rc == 0)
                rc = mproc_process_start(w[i]);
            if (rc < 0)
                die_mproc("starting a worker", rc);
        }
        release_workers();
        for (int i = 0; i < 2; i++) {
            int code = -1;
            int rc = mproc_process_join(w[i], MPROC_FOREVER);
            if (rc == 0)
                rc = mproc_process_exitcode(w[i], &code);
            if (rc < 0)
                die_mproc("joining a worker", rc);
            if (code != 0)
                die(name, "a worker failed");
            mproc_process_free(w[i]);
        }
    } else {
        pid_t pid[2];
        for (int i = 0; i < 2; i++) {
            pid[i] = fork();
            if (pid[i] < 0)
                die_errno("fork");
            if (pid[i] == 0)
                _exit(contend(i));
        }
        release_workers();
        for (int i = 0; i < 2; i++) {
            int status;
            while (waitpid(pid[i], &status, 0) < 0)
                if (errno != EINTR)
                    die_errno("waitpid");
            check_status(name, status);
        }
    }

    if (sh->counter != 2 * (uint64_t)per_worker) {
        char why[96];
        snprintf(why, sizeof why, "counter is %llu, expected %llu: the lock let both in",
                 (unsigned long long)sh->counter, 2 * (unsigned long long)per_worker);
        die(name, why);
    }
    int64_t start = sh->t0[0] < sh->t0[1] ? sh->t0[0] : sh->t0[1];
    int64_t end = sh->t1[0] > sh->t1[1] ? sh->t1[0] : sh->t1[1];
    return (double)(end - start) / (2.0 * (double)per_worker);
}

static void run_contended(const char *name, lock_kind_t k, long iterations)
{
    double samples[CONTENDED_ROUNDS];
    kind = k;
    per_worker = iterations;
    for (int r = 0; r < CONTENDED_ROUNDS; r++)
        samples[r] = contended_round(name);
    qsort(samples, CONTENDED_ROUNDS, sizeof *samples, cmp_double);
    double med = quantile(samples, CONTENDED_ROUNDS, 0.5);
    printf("median_ns=%.3f p10_ns=%.3f p90_ns=%.3f ops_per_s=%.0f n=%ld\n", med,
           quantile(samples, CONTENDED_ROUNDS, 0.1), quantile(samples, CONTENDED_ROUNDS, 0.9),
           1e9 / med, iterations);
    if (fflush(stdout) != 0)
        die_errno("stdout");
}

/* ------------------------------------------------------------------------ */
/* Ping-pong: two events, a turn handed back and forth                      */
/* ------------------------------------------------------------------------ */

static long pp_total; /* round trips the child answers: warm-up + timed */

/* The mproc side waits with MPROC_FOREVER, as the raw flags do: a finite
 * timeout makes every sleep arm a kernel timer, ~0.6 us per round trip
 * here (17% of it), which the raw floor does not pay. */
static int pong(int is_mproc)
{
    int bad = 0;
    pin_to(1);
    for (long i = 0; i < pp_total; i++) {
        if (is_mproc) {
            bad |= mproc_event_wait(m_ev1, MPROC_FOREVER) != 0;
            bad |= mproc_event_clear(m_ev1) != 0;
            bad |= mproc_event_set(m_ev2) != 0;
        } else {
            fevent_wait(&raw->ev1);
            fevent_clear(&raw->ev1);
            fevent_set(&raw->ev2);
        }
        if (bad)
            return 1;
    }
    return 0;
}

static int mproc_pong(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return pong(1);
}

static int ping(int is_mproc, long n)
{
    int bad = 0;
    for (long i = 0; i < n; i++) {
        if (is_mproc) {
            bad |= mproc_event_set(m_ev1) != 0;
            bad |= mproc_event_wait(m_ev2, MPROC_FOREVER) != 0;
            bad |= mproc_event_clear(m_ev2) != 0;
        } else {
            fevent_set(&raw->ev1);
            fevent_wait(&raw->ev2);
            fevent_clear(&raw->ev2);
        }
        if (bad)
            return 1;
    }
    return 0;
}

static void run_pingpong(const char *name, int is_mproc, long iterations)
{
    double samples[PINGPONG_BATCHES];
    long nbatch = iterations < PINGPONG_BATCHES ? iterations : PINGPONG_BATCHES;
    long warm = iterations / nbatch;
    mproc_process_t *child = NULL;
    pid_t pid = -1;

    pp_total = warm + iterations;
    pin_to(0);
    if (is_mproc) {
        mproc_process_opts_t opts = {.name = "bench-pong", .method = MPROC_START_FORK};
        int rc = mproc_process_create(&child, mproc_pong, NULL, 0, &opts);
        if (rc == 0)
            rc = mproc_process_start(child);
        if (rc < 0)
            die_mproc("starting the child", rc);
    } else {
        pid = fork();
        if (pid < 0)
            die_errno("fork");
        if (pid == 0)
            _exit(pong(0));
    }

    if (ping(is_mproc, warm))
        die(name, "a wait timed out or an event call failed");
    for (long b = 0; b < nbatch; b++) {
        long n = iterations / nbatch + (b < iterations % nbatch);
        double t0 = now_ns();
        if (ping(is_mproc, n))
            die(name, "a wait timed out or an event call failed");
        samples[b] = (double)n * 1e9 / (now_ns() - t0);
    }

    if (is_mproc) {
        int code = -1;
        int rc = mproc_process_join(child, MPROC_FOREVER);
        if (rc == 0)
            rc = mproc_process_exitcode(child, &code);
        if (rc < 0)
            die_mproc("joining the child", rc);
        if (code != 0)
            die(name, "the child failed");
        mproc_process_free(child);
    } else {
        int status;
        while (waitpid(pid, &status, 0) < 0)
            if (errno != EINTR)
                die_errno("waitpid");
        check_status(name, status);
    }
    print_quantiles("per_s", samples, (size_t)nbatch, iterations);
}

/* ------------------------------------------------------------------------ */
/* Modes                                                                    */
/* ------------------------------------------------------------------------ */

typedef enum { UNCONTENDED, CONTENDED, PINGPONG } shape_t;

typedef struct {
    const char *name;
    int is_mproc;
    shape_t shape;
    unsigned long (*batch)(long calls); /* UNCONTENDED */
    lock_kind_t kind;                   /* CONTENDED */
} sync_mode_t;

static const sync_mode_t modes[] = {
    {"mproc-lock", 1, UNCONTENDED, mproc_lock_batch, 0},
    {"raw-pthread-lock", 0, UNCONTENDED, raw_pthread_lock_batch, 0},
    {"raw-futex-lock", 0, UNCONTENDED, raw_futex_lock_batch, 0},
    {"mproc-sem", 1, UNCONTENDED, mproc_sem_batch, 0},
    {"raw-sem", 0, UNCONTENDED, raw_sem_batch, 0},
    {"mproc-event", 1, UNCONTENDED, mproc_event_batch, 0},
    {"raw-event", 0, UNCONTENDED, raw_event_batch, 0},
    {"mproc-lock-contended", 1, CONTENDED, NULL, K_MPROC},
    {"raw-pthread-lock-contended", 0, CONTENDED, NULL, K_PTHREAD},
    {"raw-futex-lock-contended", 0, CONTENDED, NULL, K_FUTEX},
    {"mproc-pingpong", 1, PINGPONG, NULL, 0},
    {"raw-pingpong", 0, PINGPONG, NULL, 0},
};

int main(int argc, char **argv)
{
    long iterations;
    const sync_mode_t *mode =
        bench_setup(&argc, &argv, "bench_sync", modes, sizeof modes / sizeof modes[0],
                    sizeof modes[0], &iterations);

    if (mode->is_mproc)
        setup_mproc();
    else
        setup_raw();

    switch (mode->shape) {
    case UNCONTENDED:
        run_uncontended(mode->name, mode->batch, iterations);
        break;
    case CONTENDED:
        run_contended(mode->name, mode->kind, iterations);
        break;
    case PINGPONG:
        run_pingpong(mode->name, mode->is_mproc, iterations);
        break;
    }
    cleanup();
    return 0;
}
