/*
 * wait_any.c - wait for several children in one epoll loop, in the order
 * they finish, through mproc_process_fd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <mproc.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define N 3

static int nap(const void *arg, size_t len)
{
    int ms = 0;
    if (len == sizeof ms)
        memcpy(&ms, arg, sizeof ms); /* or *(const int *)arg: arg is aligned */
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return ms / 100; /* exit status 3, 1, 2 */
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        perror("epoll_create1");
        return 1;
    }
    const int naps[N] = {300, 100, 200};
    mproc_process_t *kids[N] = {NULL};
    int running = 0;
    for (int i = 0; i < N; i++) {
        int rc = mproc_process_create(&kids[i], nap, &naps[i], sizeof naps[i], NULL);
        if (rc == 0)
            rc = mproc_process_start(kids[i]);
        if (rc < 0) {
            fprintf(stderr, "child %d: %s\n", i, mproc_strerror(rc));
            mproc_process_free(kids[i]);
            kids[i] = NULL;
            continue;
        }
        /* Readable once the child has exited; owned by mproc: never read
         * or close it. */
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, mproc_process_fd(kids[i]), &ev);
        running++;
    }

    while (running > 0) {
        struct epoll_event evs[N];
        int n = epoll_wait(ep, evs, N, 5000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* nobody finished in 5 s: give up, see below */
        for (int k = 0; k < n; k++) {
            mproc_process_t *p = kids[evs[k].data.u32];
            int code;
            /* The fd fired: join(0) collects the child without waiting. */
            if (mproc_process_join(p, 0) == 0 && mproc_process_exitcode(p, &code) == 0)
                printf("child %u (pid %d, slept %d ms) exited with %d\n", evs[k].data.u32,
                       (int)mproc_process_pid(p), naps[evs[k].data.u32], code);
            epoll_ctl(ep, EPOLL_CTL_DEL, mproc_process_fd(p), NULL);
            mproc_process_free(p);
            kids[evs[k].data.u32] = NULL;
            running--;
        }
    }
    for (int i = 0; i < N; i++) { /* left over only after a timeout */
        if (kids[i]) {
            mproc_process_kill(kids[i]);
            mproc_process_join(kids[i], MPROC_FOREVER);
            mproc_process_free(kids[i]);
        }
    }
    close(ep);
    return running == 0 ? 0 : 1;
}
