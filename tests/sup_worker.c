/*
 * sup_worker.c - the worker command test_supervisor.c runs under
 * `mproc run`: reports what it was given on a FIFO, then behaves as its
 * mode says.
 *
 *   sup_worker FIFO MODE
 *
 * Report line (one write, atomic on a FIFO): "start ID PID LISTEN_FDS
 * LISTEN_PID_OK FD3_LISTENING FD3_CLOEXEC FDNAMES NOTIFY_SOCKET WORKERS
 * NFDS" (NFDS: fds open when it started).
 * Modes: wait (until SIGTERM, exit 0), ignore-term (SIGTERM ignored),
 * fail (exit 1 at once), ok (exit 0 at once), exit3, ready (send READY=1,
 * then wait), silent (never notify, wait), beat (READY=1, then WATCHDOG=1
 * every 50 ms), recycle (READY=1, and MPROC_RECYCLE=1 if it is the first
 * worker to create FIFO.recycled; then wait), ready-unless-broken (exit 1
 * at once if FIFO.broken exists, else as ready: a bad deploy).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void notify(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path)
        return;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (fd >= 0)
        sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&sa, sizeof sa);
    if (fd >= 0)
        close(fd);
}

static volatile sig_atomic_t term;
static void on_term(int sig)
{
    (void)sig;
    term = 1;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    const char *mode = argv[2];
    int listening = 0, acc = 0, cloexec = -1;
    socklen_t len = sizeof acc;
    if (getsockopt(3, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0)
        listening = acc;
    int fl = fcntl(3, F_GETFD);
    if (fl >= 0)
        cloexec = (fl & FD_CLOEXEC) != 0;
    /* fds open at start (the directory's own not counted) */
    int nfd = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d && (e = readdir(d));)
        nfd += e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d);
    if (d)
        closedir(d);
    const char *lp = getenv("LISTEN_PID");
    int pid_ok = lp && atoi(lp) == (int)getpid();
    char line[512];
    int n = snprintf(line, sizeof line, "start %s %d %s %d %d %d %s %s %s %d\n",
                     getenv("MPROC_WORKER_ID") ? getenv("MPROC_WORKER_ID") : "-1", (int)getpid(),
                     getenv("LISTEN_FDS") ? getenv("LISTEN_FDS") : "0", pid_ok, listening, cloexec,
                     getenv("LISTEN_FDNAMES") ? getenv("LISTEN_FDNAMES") : "-",
                     getenv("NOTIFY_SOCKET") ? getenv("NOTIFY_SOCKET") : "-",
                     getenv("MPROC_WORKERS") ? getenv("MPROC_WORKERS") : "0", nfd);
    /* Signal dispositions first: the test acts on the report at once. */
    struct sigaction sa = {.sa_handler = strcmp(mode, "ignore-term") == 0 ? SIG_IGN : on_term};
    sigaction(SIGTERM, &sa, NULL);
    int fifo = open(argv[1], O_WRONLY | O_CLOEXEC);
    if (fifo < 0 || write(fifo, line, (size_t)n) != n)
        return 2;
    close(fifo);

    if (strcmp(mode, "fail") == 0)
        return 1;
    if (strcmp(mode, "ready-unless-broken") == 0) {
        char marker[600];
        snprintf(marker, sizeof marker, "%s.broken", argv[1]);
        if (access(marker, F_OK) == 0)
            return 1;
        mode = "ready";
    }
    if (strcmp(mode, "ok") == 0)
        return 0;
    if (strcmp(mode, "exit3") == 0)
        return 3;
    if (strcmp(mode, "ready") == 0 || strcmp(mode, "beat") == 0 || strcmp(mode, "recycle") == 0)
        notify("READY=1");
    if (strcmp(mode, "recycle") == 0) {
        char marker[600];
        snprintf(marker, sizeof marker, "%s.recycled", argv[1]);
        int fd = open(marker, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        if (fd >= 0) {
            close(fd);
            notify("MPROC_RECYCLE=1");
        }
    }
    while (!term) {
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL); /* a worker's idle loop, not synchronisation */
        if (strcmp(mode, "beat") == 0)
            notify("WATCHDOG=1");
    }
    return 0;
}
