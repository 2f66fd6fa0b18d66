/*
 * idle_worker.c - the smallest worker for `mproc run`, for bench_run.py: it
 * sends "READY=1" to NOTIFY_SOCKET (when set) and then does nothing until a
 * signal ends it (SIGTERM's default action). It never sends WATCHDOG=1, so
 * under `mproc run --timeout SEC` it is a hung worker: the master kills it
 * SEC after its READY=1. Without --timeout it is an idle worker (the
 * 1,000-worker figure).
 *
 * No mproc here: a worker is any program, and this one is the floor.
 * Exit status 1 if NOTIFY_SOCKET is set but unusable.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int notify_ready(const char *path)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof sa.sun_path || (path[0] != '/' && path[0] != '@'))
        return -1;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    static const char msg[] = "READY=1";
    ssize_t n = sendto(fd, msg, sizeof msg - 1, 0, (struct sockaddr *)&sa,
                       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    close(fd);
    return n == (ssize_t)(sizeof msg - 1) ? 0 : -1;
}

int main(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path && notify_ready(path) < 0) {
        perror("idle_worker: READY=1");
        return 1;
    }
    for (;;)
        pause();
}
