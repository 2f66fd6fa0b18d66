/*
 * prefork_server.c - mproc's library prefork mode for bench_run.py: a
 * master (mproc_supervise) with 4 workers forked without exec, each
 * sending READY=1 and then idling; the driver SIGKILLs workers and times
 * their replacements from the master's log. The crash-loop limit is set
 * out of the way: the driver kills on purpose.
 */
#include <mproc.h>
#include <stdio.h>
#include <unistd.h>

static int worker(void *ctx, int id, const int *fds, int nfds)
{
    (void)ctx;
    (void)id;
    (void)fds;
    (void)nfds;
    mproc_notify("READY=1");
    for (;;)
        pause(); /* until killed (SIGKILL by the driver, SIGTERM at the end) */
    return 0;
}

int main(int argc, char **argv)
{
    int rc = mproc_init(&argc, &argv);
    if (rc < 0) {
        fprintf(stderr, "mproc_init: %s\n", mproc_strerror(rc));
        return 1;
    }
    const char *binds[] = {"127.0.0.1:0"};
    mproc_supervisor_opts_t o = {.workers = 4,
                                 .binds = binds,
                                 .nbinds = 1,
                                 .ready = 1,
                                 .max_restarts = 1000000,
                                 .restart_window_ms = 60000,
                                 .graceful_timeout_ms = 10000,
                                 .worker = worker};
    rc = mproc_supervise(&o);
    if (rc < 0)
        fprintf(stderr, "mproc_supervise: %s\n", mproc_strerror(rc));
    return rc < 0 ? 1 : rc;
}
