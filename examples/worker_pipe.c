/*
 * worker_pipe.c - hand a pipe to a child, read its answer, join with a
 * timeout, and stop it (SIGTERM, then SIGKILL) if it overstays.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mproc.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int out_fd; /* the pipe's write end: the same number in the child */
    unsigned n;
} job_t;

/* Runs in the child: arg is a private copy of the parent's job_t. */
static int sum_worker(const void *arg, size_t len)
{
    job_t job;
    if (len != sizeof job)
        return 2;
    memcpy(&job, arg, sizeof job);
    unsigned long long sum = 0;
    for (unsigned i = 1; i <= job.n; i++)
        sum += i;
    return write(job.out_fd, &sum, sizeof sum) == (ssize_t)sizeof sum ? 0 : 1;
}

/* Join within timeout_ms; past it, ask politely, then insist. */
static int join_or_stop(mproc_process_t *p, int timeout_ms)
{
    int rc = mproc_process_join(p, timeout_ms);
    if (rc == -ETIMEDOUT) {
        mproc_process_terminate(p); /* SIGTERM */
        rc = mproc_process_join(p, 1000);
    }
    if (rc == -ETIMEDOUT) {
        mproc_process_kill(p); /* SIGKILL cannot be caught */
        rc = mproc_process_join(p, MPROC_FOREVER);
    }
    return rc;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);

    /* O_CLOEXEC: nothing reaches a child unless handed over explicitly. */
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        perror("pipe2");
        return 1;
    }
    job_t job = {.out_fd = pipefd[1], .n = 1000000};
    mproc_process_opts_t opts = {.name = "summer", .method = MPROC_START_SPAWN};
    mproc_process_t *p = NULL;
    int rc = mproc_process_create(&p, sum_worker, &job, sizeof job, &opts);
    if (rc == 0)
        rc = mproc_process_pass_fd(p, pipefd[1]);
    if (rc == 0)
        rc = mproc_process_start(p);
    close(pipefd[1]); /* the child has its own copy: EOF if it dies */
    if (rc < 0) {
        fprintf(stderr, "start: %s\n", mproc_strerror(rc));
        mproc_process_free(p);
        return 1;
    }

    unsigned long long sum = 0;
    struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
    if (poll(&pfd, 1, 5000) == 1 && read(pipefd[0], &sum, sizeof sum) == (ssize_t)sizeof sum)
        printf("child %d (%s) computed %llu\n", (int)mproc_process_pid(p), mproc_process_name(p),
               sum);
    else
        printf("no answer from the child\n");
    close(pipefd[0]);

    int code = 0;
    rc = join_or_stop(p, 5000);
    if (rc == 0)
        rc = mproc_process_exitcode(p, &code);
    if (rc < 0)
        printf("join: %s\n", mproc_strerror(rc));
    else if (code < 0)
        printf("killed by signal %d\n", -code);
    else
        printf("exit status %d\n", code);
    mproc_process_free(p);
    return rc == 0 && code == 0 ? 0 : 1;
}
