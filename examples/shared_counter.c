/*
 * shared_counter.c - four workers increment one counter under a robust lock
 * in a named shared memory segment; one of them is SIGKILLed while it holds
 * the lock, and the next worker to acquire it repairs the state (P9).
 *
 *   shared_counter [fork|spawn|forkserver]      (default: forkserver)
 *
 * The same code runs under every start method: the segment reaches each
 * worker as a mproc_shm_ref_t in its argument plus mproc_process_pass_shm,
 * and the worker finds the objects in it by name.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <mproc.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define WORKERS 4
#define VICTIM 3 /* the worker that gets killed */
#define N 20000  /* increments per worker */

/* What the lock protects. in_progress is 1 while an update is half done:
 * a holder that dies leaves it set for the next one to see. */
typedef struct {
    uint64_t count;
    uint32_t in_progress;
    uint32_t recoveries;
} state_t;

typedef struct {
    mproc_shm_ref_t seg;
    int index;
} worker_arg_t;

/* Acquire the lock; if its holder died, repair the state first. */
static int lock_state(mproc_lock_t *lock, state_t *st, int me)
{
    int rc = mproc_lock_acquire(lock, 5000);
    if (rc == -EOWNERDEAD) {
        /* We hold the lock, but the state may be half updated. Here an
         * update is "set in_progress, count++, clear in_progress"; the
         * dead holder never got to count++, so undoing in_progress is the
         * whole repair. */
        printf("worker %d: previous holder died (EOWNERDEAD), in_progress=%u, "
               "count=%llu: repaired\n",
               me, st->in_progress, (unsigned long long)st->count);
        fflush(stdout);
        st->in_progress = 0;
        st->recoveries++;
        rc = mproc_lock_consistent(lock);
    }
    return rc;
}

static int worker(const void *arg, size_t len)
{
    const worker_arg_t *a = arg;
    mproc_shm_t *shm;
    mproc_lock_t *lock;
    mproc_barrier_t *half;
    mproc_event_t *holding;
    state_t *st;

    if (len != sizeof *a)
        return 2;
    int rc = mproc_shm_attach(&shm, &a->seg);
    if (rc == 0)
        rc = mproc_lock_open(shm, "lock", &lock);
    if (rc == 0)
        rc = mproc_barrier_open(shm, "half", &half);
    if (rc == 0)
        rc = mproc_event_open(shm, "holding", &holding);
    if (rc == 0)
        rc = mproc_shm_find(shm, "state", MPROC_OBJ_BYTES, (void **)&st);
    if (rc < 0) {
        fprintf(stderr, "worker %d: %s\n", a->index, mproc_strerror(rc));
        return 1;
    }

    for (int i = 0; i < N; i++) {
        if (i == N / 2) {
            /* Everyone is half-way: now the victim dies holding the lock. */
            rc = mproc_barrier_wait(half, 5000);
            if (rc < 0)
                break;
            if (a->index == VICTIM) {
                rc = lock_state(lock, st, a->index);
                if (rc < 0)
                    break;
                st->in_progress = 1; /* ... and never finishes */
                mproc_event_set(holding);
                for (;;)
                    nanosleep(&(struct timespec){1, 0}, NULL); /* SIGKILL ends it */
            }
            /* The others carry on once the victim holds the lock: their
             * next acquire blocks until it dies, and one of them gets
             * -EOWNERDEAD. */
            rc = mproc_event_wait(holding, 5000);
            if (rc < 0)
                break;
        }
        rc = lock_state(lock, st, a->index);
        if (rc < 0)
            break;
        st->in_progress = 1;
        st->count++;
        st->in_progress = 0;
        rc = mproc_lock_release(lock);
        if (rc < 0)
            break;
    }
    if (rc < 0)
        fprintf(stderr, "worker %d: %s\n", a->index, mproc_strerror(rc));
    mproc_shm_close(shm);
    return rc < 0;
}

static int parse_method(const char *s, mproc_start_method_t *m)
{
    static const struct {
        const char *name;
        mproc_start_method_t method;
    } methods[] = {{"fork", MPROC_START_FORK},
                   {"spawn", MPROC_START_SPAWN},
                   {"forkserver", MPROC_START_FORKSERVER}};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (strcmp(s, methods[i].name) == 0) {
            *m = methods[i].method;
            return 0;
        }
    return -1;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv); /* spawn and forkserver children take over here */

    mproc_start_method_t method = MPROC_START_FORKSERVER;
    if (argc > 2 || (argc == 2 && parse_method(argv[1], &method) < 0)) {
        fprintf(stderr, "usage: %s [fork|spawn|forkserver]\n", argv[0]);
        return 2;
    }

    /* A named segment (NULL: an unpredictable name), so the tracker would
     * unlink it if this program were killed before mproc_shm_unlink. */
    mproc_shm_t *shm;
    mproc_lock_t *lock;
    mproc_barrier_t *half;
    mproc_event_t *holding;
    state_t *st;
    int rc = mproc_shm_create_named(&shm, 8 * MPROC_SHM_OBJECT_OVERHEAD + 4096, NULL);
    if (rc < 0) {
        fprintf(stderr, "mproc_shm_create_named: %s\n", mproc_strerror(rc));
        return 1;
    }
    rc = mproc_lock_create(shm, "lock", &lock);
    if (rc == 0)
        rc = mproc_barrier_create(shm, "half", WORKERS, &half);
    if (rc == 0)
        rc = mproc_event_create(shm, "holding", &holding);
    if (rc == 0)
        rc = mproc_shm_alloc(shm, sizeof(state_t), "state", (void **)&st);
    if (rc < 0) {
        fprintf(stderr, "setting up the segment: %s\n", mproc_strerror(rc));
        goto out;
    }
    printf("segment /dev/shm/mproc-%s, start method %s\n", mproc_shm_name(shm),
           argc == 2 ? argv[1] : "forkserver");

    mproc_process_t *w[WORKERS] = {NULL};
    mproc_process_opts_t opts = {.name = "counter-worker", .method = method};
    for (int i = 0; i < WORKERS && rc == 0; i++) {
        worker_arg_t a = {.index = i};
        rc = mproc_shm_ref(shm, &a.seg);
        if (rc == 0)
            rc = mproc_process_create(&w[i], worker, &a, sizeof a, &opts);
        if (rc == 0)
            rc = mproc_process_pass_shm(w[i], shm);
        if (rc == 0)
            rc = mproc_process_start(w[i]);
    }
    if (rc < 0) {
        fprintf(stderr, "starting the workers: %s\n", mproc_strerror(rc));
        for (int i = 0; i < WORKERS; i++)
            if (w[i] && mproc_process_pid(w[i]) > 0) {
                mproc_process_kill(w[i]);
                mproc_process_join(w[i], MPROC_FOREVER);
            }
        goto free_workers;
    }

    /* Kill the victim once it holds the lock in the middle of an update. */
    rc = mproc_event_wait(holding, 5000);
    if (rc == 0) {
        printf("killing worker %d (pid %d) while it holds the lock\n", VICTIM,
               (int)mproc_process_pid(w[VICTIM]));
        fflush(stdout);
        rc = mproc_process_kill(w[VICTIM]);
    }
    int failed = rc < 0;
    for (int i = 0; i < WORKERS; i++) {
        int code = -1;
        if (mproc_process_join(w[i], 10000) < 0 || mproc_process_exitcode(w[i], &code) < 0)
            failed = 1;
        else if (code != (i == VICTIM ? -SIGKILL : 0))
            failed = 1;
        printf("worker %d: exit code %d\n", i, code);
    }

    uint64_t expected = (uint64_t)(WORKERS - 1) * N + N / 2;
    printf("count = %llu (expected %llu), recoveries = %u\n", (unsigned long long)st->count,
           (unsigned long long)expected, st->recoveries);
    if (failed || st->count != expected || st->recoveries != 1) {
        fprintf(stderr, "shared_counter: FAILED\n");
        rc = -1;
    }

free_workers:
    for (int i = 0; i < WORKERS; i++)
        mproc_process_free(w[i]);
out:
    mproc_shm_unlink(shm); /* the name goes; our mapping stays until close */
    mproc_shm_close(shm);
    return rc < 0 ? 1 : 0;
}
