/*
 * queue_workers.c - a parent puts jobs on a queue, three workers take
 * them, square them and put the results on a second queue; the parent
 * sums the results and checks them.
 *
 *   queue_workers [fork|spawn|forkserver]      (default: spawn)
 *
 * The same worker code runs under every start method: each queue reaches
 * a worker as a mproc_queue_ref_t in its argument plus
 * mproc_process_pass_queue, and the worker attaches it.
 */
#include <errno.h>
#include <mproc.h>
#include <stdio.h>
#include <string.h>

#define WORKERS 3
#define JOBS 1000

typedef struct {
    mproc_queue_ref_t jobs, results;
} arg_t;

static int worker(const void *arg, size_t len)
{
    arg_t a;
    if (len != sizeof a)
        return 1;
    memcpy(&a, arg, sizeof a);
    mproc_queue_t *jobs, *results;
    if (mproc_queue_attach(&jobs, &a.jobs) < 0)
        return 1;
    if (mproc_queue_attach(&results, &a.results) < 0) {
        mproc_queue_close(jobs);
        return 1;
    }
    int rc = 0;
    for (;;) {
        int n;
        size_t got;
        if (mproc_queue_get(jobs, &n, sizeof n, &got, 5000) < 0 || got != sizeof n) {
            rc = 1;
            break;
        }
        if (n < 0)
            break; /* no more jobs */
        long sq = (long)n * n;
        if (mproc_queue_put(results, &sq, sizeof sq, 5000) < 0) {
            rc = 1;
            break;
        }
    }
    mproc_queue_close(jobs);
    mproc_queue_close(results);
    return rc;
}

int main(int argc, char **argv)
{
    int rc = mproc_init(&argc, &argv);
    if (rc < 0) {
        fprintf(stderr, "mproc_init: %s\n", mproc_strerror(rc));
        return 1;
    }
    mproc_start_method_t method = MPROC_START_SPAWN;
    if (argc > 1 && strcmp(argv[1], "fork") == 0)
        method = MPROC_START_FORK;
    else if (argc > 1 && strcmp(argv[1], "forkserver") == 0)
        method = MPROC_START_FORKSERVER;

    /* Each queue in a segment of its own; defaults: a 64 KiB ring. */
    mproc_queue_t *jobs = NULL, *results = NULL;
    if ((rc = mproc_queue_create(NULL, NULL, NULL, &jobs)) < 0 ||
        (rc = mproc_queue_create(NULL, NULL, NULL, &results)) < 0) {
        fprintf(stderr, "mproc_queue_create: %s\n", mproc_strerror(rc));
        return 1;
    }
    arg_t a;
    mproc_queue_ref(jobs, &a.jobs);
    mproc_queue_ref(results, &a.results);

    mproc_process_t *w[WORKERS] = {0};
    mproc_process_opts_t o = {.method = method};
    for (int i = 0; i < WORKERS && rc == 0; i++) {
        rc = mproc_process_create(&w[i], worker, &a, sizeof a, &o);
        if (rc == 0)
            rc = mproc_process_pass_queue(w[i], jobs);
        if (rc == 0)
            rc = mproc_process_pass_queue(w[i], results);
        if (rc == 0)
            rc = mproc_process_start(w[i]);
    }
    if (rc < 0) {
        fprintf(stderr, "starting a worker: %s\n", mproc_strerror(rc));
        return 1; /* mproc joins or kills what did start at exit */
    }

    long want = 0, sum = 0;
    int put = 0, got = 0;
    /* Put and collect at the same time: neither queue can fill up. */
    while (got < JOBS) {
        while (put < JOBS && mproc_queue_put(jobs, &put, sizeof put, 0) == 0) {
            want += (long)put * put;
            put++;
        }
        long sq;
        size_t len;
        rc = mproc_queue_get(results, &sq, sizeof sq, &len, put < JOBS ? 0 : 5000);
        if (rc == 0) {
            sum += sq;
            got++;
        } else if (rc != -ETIMEDOUT || put == JOBS) {
            fprintf(stderr, "mproc_queue_get: %s\n", mproc_strerror(rc));
            return 1;
        }
    }
    for (int i = 0; i < WORKERS; i++) {
        int stop = -1;
        mproc_queue_put(jobs, &stop, sizeof stop, 5000);
    }
    int bad = 0;
    for (int i = 0; i < WORKERS; i++) {
        int code = -1;
        if (mproc_process_join(w[i], 5000) < 0 || mproc_process_exitcode(w[i], &code) < 0 ||
            code != 0)
            bad = 1;
        mproc_process_free(w[i]);
    }
    mproc_queue_close(jobs);
    mproc_queue_close(results);
    printf("%d jobs by %d %s workers: sum of squares %ld (%s)\n", JOBS, WORKERS,
           method == MPROC_START_FORK    ? "fork"
           : method == MPROC_START_SPAWN ? "spawn"
                                         : "forkserver",
           sum, sum == want && !bad ? "correct" : "WRONG");
    return sum == want && !bad ? 0 : 1;
}
