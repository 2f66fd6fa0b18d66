/* hello.c - one child per start method: create, start, join. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <mproc.h>
#include <stdio.h>
#include <unistd.h>

static int hello(const void *arg, size_t len)
{
    printf("  child %d says %.*s\n", (int)getpid(), (int)len, (const char *)arg);
    return 7; /* the child's exit status */
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv); /* first: a spawned child takes over here */
    const char *names[] = {"", "fork", "spawn", "forkserver"};
    for (int m = MPROC_START_FORK; m <= MPROC_START_FORKSERVER; m++) {
        mproc_process_opts_t opts = {.method = (mproc_start_method_t)m};
        mproc_process_t *p = NULL;
        int code = 0, rc = mproc_process_create(&p, hello, "hello", 5, &opts);
        if (rc == 0 && (rc = mproc_process_start(p)) == 0 &&
            (rc = mproc_process_join(p, 5000)) == 0) /* timeouts are in ms */
            rc = mproc_process_exitcode(p, &code);
        printf("%-10s %s, exit code %d\n", names[m], mproc_strerror(rc), code);
        if (rc == -ETIMEDOUT && mproc_process_kill(p) == 0)
            mproc_process_join(p, MPROC_FOREVER);
        mproc_process_free(p);
    }
    return 0;
}
