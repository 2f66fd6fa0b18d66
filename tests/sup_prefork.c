/*
 * sup_prefork.c - a library-mode master (mproc_supervise with a preload
 * and a worker function) for test_supervisor.c's upgrade cases: the code a
 * USR2 must bring in is what its preload reads.
 *
 *   sup_prefork VERSION_FILE WORKERS [no-upgrade]
 *
 * The preload reads VERSION_FILE's first line (the "application", loaded
 * once in the master) and makes a named segment (so the master has a
 * resource tracker, which an upgrade must not leave as a zombie); "fail"
 * makes it fail. A second line, read by main, is an address to bind
 * before 127.0.0.1:0 (a configuration change: one that cannot be bound
 * freezes an upgrade). Each worker says READY=1, then answers every connection on fd 3
 * with "VERSION PID\n" and closes it, until SIGTERM. At start the master
 * logs "sup_prefork upgraded=N" (mproc_supervise_upgraded()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mproc.h"

static char version[64];
static const char *version_file;
static mproc_shm_t *segment;

static int preload(void *ctx)
{
    (void)ctx;
    FILE *f = fopen(version_file, "re");
    if (!f)
        return 1;
    int ok = fgets(version, sizeof version, f) != NULL;
    fclose(f);
    version[strcspn(version, "\n")] = '\0';
    if (!ok || strcmp(version, "fail") == 0)
        return 1;
    return mproc_shm_create_named(&segment, 4096, NULL) == 0 ? 0 : 1;
}

static volatile sig_atomic_t term;
static void on_term(int sig)
{
    (void)sig;
    term = 1;
}

static int worker(void *ctx, int id, const int *fds, int nfds)
{
    (void)ctx;
    (void)id;
    if (nfds < 1)
        return 1;
    struct sigaction sa = {.sa_handler = on_term}; /* no SA_RESTART: poll returns */
    sigaction(SIGTERM, &sa, NULL);
    if (mproc_notify("READY=1") != 0)
        return 1;
    char line[128];
    int n = snprintf(line, sizeof line, "%s %d\n", version, (int)getpid());
    while (!term) {
        struct pollfd p = {fds[nfds - 1], POLLIN, 0}; /* 127.0.0.1:0 */
        if (poll(&p, 1, -1) <= 0)
            continue; /* EINTR: look at term */
        int c = accept4(fds[nfds - 1], NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c < 0)
            continue; /* another worker took it */
        /* Taken, so answered, SIGTERM or not. */
        if (write(c, line, (size_t)n) != n)
            return 1;
        close(c);
    }
    return 0;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    if (argc != 3 && !(argc == 4 && strcmp(argv[3], "no-upgrade") == 0))
        return 2;
    version_file = argv[1];
    fprintf(stderr, "sup_prefork upgraded=%d\n", mproc_supervise_upgraded());
    char extra[128] = "";
    FILE *f = fopen(version_file, "re");
    if (f) {
        char first[64];
        if (fgets(first, sizeof first, f) && fgets(extra, sizeof extra, f))
            extra[strcspn(extra, "\n")] = '\0';
        fclose(f);
    }
    const char *binds[] = {extra, "127.0.0.1:0"};
    int n = extra[0] ? 2 : 1;
    mproc_supervisor_opts_t o = {.workers = atoi(argv[2]),
                                 .binds = binds + 2 - n,
                                 .nbinds = (size_t)n,
                                 .ready = 1,
                                 .upgrade = argc == 3,
                                 .graceful_timeout_ms = 5000,
                                 .preload = preload,
                                 .worker = worker};
    int rc = mproc_supervise(&o);
    if (segment) {
        mproc_shm_unlink(segment);
        mproc_shm_close(segment);
    }
    mproc_tracker_stop(5000); /* gone before we are: the test counts leftovers */
    return rc < 0 ? 1 : rc;
}
