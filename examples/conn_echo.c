/*
 * conn_echo.c - a connection to a child: a spawned worker upper-cases
 * every message it gets and sends it back; the parent sends a few, then
 * an empty message that tells the worker to stop.
 *
 *   build/examples/conn_echo [fork|spawn|forkserver]
 */
#include <ctype.h>
#include <errno.h>
#include <mproc.h>
#include <stdio.h>
#include <string.h>

/* Runs in the child: arg is the parent's mproc_conn_ref_t. */
static int upper_worker(const void *arg, size_t len)
{
    mproc_conn_ref_t ref;
    if (len != sizeof ref)
        return 2;
    memcpy(&ref, arg, sizeof ref);
    mproc_conn_t *c = NULL;
    int rc = mproc_conn_attach(&c, &ref);
    if (rc != 0) {
        fprintf(stderr, "worker: attach: %s\n", mproc_strerror(rc));
        return 1;
    }
    char buf[256];
    size_t n;
    while ((rc = mproc_conn_recv(c, buf, sizeof buf, &n, MPROC_FOREVER)) == 0 && n > 0) {
        for (size_t i = 0; i < n; i++)
            buf[i] = (char)toupper((unsigned char)buf[i]);
        if ((rc = mproc_conn_send(c, buf, n, 5000)) != 0)
            break;
    }
    mproc_conn_close(c);
    /* An empty message or the parent's end (-EPIPE): a clean stop. */
    return rc == 0 || rc == -EPIPE ? 0 : 1;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    mproc_process_opts_t opts = {.method = MPROC_START_SPAWN};
    if (argc > 1 && strcmp(argv[1], "fork") == 0)
        opts.method = MPROC_START_FORK;
    else if (argc > 1 && strcmp(argv[1], "forkserver") == 0)
        opts.method = MPROC_START_FORKSERVER;

    mproc_conn_t *mine = NULL, *theirs = NULL;
    int rc = mproc_pipe(&mine, &theirs, 1, NULL);
    if (rc != 0) {
        fprintf(stderr, "pipe: %s\n", mproc_strerror(rc));
        return 1;
    }
    mproc_conn_ref_t ref;
    mproc_process_t *p = NULL;
    rc = mproc_conn_ref(theirs, &ref);
    if (rc == 0)
        rc = mproc_process_create(&p, upper_worker, &ref, sizeof ref, &opts);
    if (rc == 0)
        rc = mproc_process_pass_conn(p, theirs);
    if (rc == 0)
        rc = mproc_process_start(p);
    /* The child has its own copy now: close ours, so that the child's
     * end closes for good when the child exits. */
    mproc_conn_close(theirs);
    if (rc != 0) {
        fprintf(stderr, "start: %s\n", mproc_strerror(rc));
        mproc_process_free(p);
        mproc_conn_close(mine);
        return 1;
    }

    const char *words[] = {"hello", "from", "the", "parent"};
    for (size_t i = 0; i < sizeof words / sizeof words[0] && rc == 0; i++) {
        char buf[256];
        size_t n;
        rc = mproc_conn_send(mine, words[i], strlen(words[i]), 5000);
        if (rc == 0)
            rc = mproc_conn_recv(mine, buf, sizeof buf, &n, 5000);
        if (rc == 0)
            printf("%s -> %.*s\n", words[i], (int)n, buf);
    }
    if (rc != 0)
        fprintf(stderr, "exchange: %s\n", mproc_strerror(rc));

    /* Not just a close: under fork the child holds a copy of our end too
     * (it copied every fd), so it would never see -EPIPE from us. */
    mproc_conn_send(mine, NULL, 0, 5000);
    mproc_conn_close(mine);
    int jr = mproc_process_join(p, 5000);
    if (jr == -ETIMEDOUT) {
        mproc_process_kill(p);
        mproc_process_join(p, MPROC_FOREVER);
    }
    int code = -1;
    mproc_process_exitcode(p, &code);
    printf("worker exited with %d\n", code);
    mproc_process_free(p);
    return rc == 0 && code == 0 ? 0 : 1;
}
