/*
 * pool_map.c - a pool of workers squares 100,000 numbers; one task kills
 * its own worker on the way. The pool replaces the worker, that one task
 * fails with MPROC_EWORKER (-SIGKILL), every other result is right.
 *
 *   pool_map [fork|spawn|forkserver]      (default: forkserver)
 */
#include <errno.h>
#include <mproc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 100000
#define VICTIM 54321 /* the task that kills its worker */

/* A task: in and out are one int64 each. */
static int square(const void *arg, size_t len, void *out, size_t cap, size_t *out_len)
{
    int64_t v;
    if (len != sizeof v || cap < sizeof v)
        return -EINVAL;
    memcpy(&v, arg, sizeof v);
    if (v == VICTIM)
        raise(SIGKILL); /* as the OOM killer or an operator would */
    v *= v;
    memcpy(out, &v, sizeof v);
    *out_len = sizeof v;
    return 0;
}

int main(int argc, char **argv)
{
    int rc = mproc_init(&argc, &argv);
    if (rc < 0) {
        fprintf(stderr, "mproc_init: %s\n", mproc_strerror(rc));
        return 1;
    }
    mproc_pool_opts_t o = {.method = MPROC_START_FORKSERVER}; /* workers: one per CPU */
    if (argc > 1 && strcmp(argv[1], "fork") == 0)
        o.method = MPROC_START_FORK;
    else if (argc > 1 && strcmp(argv[1], "spawn") == 0)
        o.method = MPROC_START_SPAWN;
    mproc_pool_t *pool;
    if ((rc = mproc_pool_create(&pool, &o)) < 0) {
        fprintf(stderr, "mproc_pool_create: %s\n", mproc_strerror(rc));
        return 1;
    }
    int64_t *in = malloc(N * sizeof *in), *out = malloc(N * sizeof *out);
    mproc_task_status_t *st = malloc(N * sizeof *st);
    if (!in || !out || !st)
        return 1;
    for (int64_t i = 0; i < N; i++)
        in[i] = i;

    rc = mproc_pool_map(pool, square, in, sizeof *in, out, sizeof *out, N, 0, st, 10000);
    printf("map of %d tasks: %s\n", N, mproc_strerror(rc));
    int wrong = 0;
    for (int64_t i = 0; i < N; i++) {
        if (st[i].rc == MPROC_EWORKER)
            printf("  task %lld: its worker died (status %d)\n", (long long)i, st[i].status);
        else if (st[i].rc != 0 || out[i] != i * i)
            wrong++;
    }
    printf("  other results wrong: %d; workers started: %u\n", wrong,
           mproc_pool_workers_started(pool));

    mproc_pool_close(pool);
    mproc_pool_join(pool, 10000);
    mproc_pool_free(pool);
    free(in);
    free(out);
    int ok = rc == MPROC_ETASK && st[VICTIM].rc == MPROC_EWORKER && wrong == 0;
    free(st);
    return ok ? 0 : 1;
}
