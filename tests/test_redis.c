/*
 * test_redis.c - P1 against a real redis-server: runs the redis_guarded
 * example (examples/redis_guarded.c: one hiredis connection shared across
 * fork by 8 children and the parent, made safe with mproc_guard_ensure)
 * against a private server and checks it exits 0 (exact count, every ECHO
 * reply its own process's).
 *
 * The server is started here: a free loopback port, no persistence, a
 * private temporary directory; it is stopped and the directory removed
 * afterwards. Skipped (77) when redis-server or the example (built only
 * when hiredis is found) is missing. Needs no hiredis itself.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

/* ctest runs tests from the build directory. */
#define EXAMPLE_PATH "examples/redis_guarded"
#define EXAMPLE_CHILDREN "8"
#define EXAMPLE_INCRS "10000"
#define READY_TIMEOUT_MS 10000
#define EXAMPLE_TIMEOUT_MS 90000

static char g_redis_path[4096];

/* redis-server on PATH (or in the usual places); 1 if found. */
static int find_redis_server(void)
{
    const char *path = getenv("PATH");
    char buf[8192];
    snprintf(buf, sizeof buf, "%s:/usr/bin:/usr/local/bin:/usr/sbin", path ? path : "");
    char *save = NULL;
    for (char *dir = strtok_r(buf, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        if (!*dir)
            continue;
        snprintf(g_redis_path, sizeof g_redis_path, "%s/redis-server", dir);
        if (access(g_redis_path, X_OK) == 0)
            return 1;
    }
    g_redis_path[0] = '\0';
    return 0;
}

/* A port that was free on 127.0.0.1 a moment ago (bind to port 0). */
static int pick_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    int port = -1;
    if (bind(s, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(s, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(s);
    return port;
}

/* One nonblocking connect to 127.0.0.1:port, waiting up to timeout_ms for
 * it to complete. 1 connected, 0 not (refused, timed out). */
static int try_connect(int port, int timeout_ms)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0)
        return 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = 0;
    if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
        ok = 1;
    } else if (errno == EINPROGRESS) {
        struct pollfd p = {.fd = s, .events = POLLOUT};
        if (poll(&p, 1, timeout_ms) == 1) {
            int err = 0;
            socklen_t len = sizeof err;
            ok = getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
        }
    }
    close(s);
    return ok;
}

/* ------------------------------------------------------------ the server */

typedef struct {
    char dir[64];
    int port;
    pid_t pid;
    int pidfd;
} server_t;

static int exec_redis(void *ctx)
{
    server_t *s = ctx;
    char log[128], port[16];
    snprintf(log, sizeof log, "%s/redis.log", s->dir);
    snprintf(port, sizeof port, "%d", s->port);
    int in = open("/dev/null", O_RDONLY);
    int out = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (in < 0 || out < 0)
        return 127;
    dup2(in, 0);
    dup2(out, 1);
    dup2(out, 2);
    int keep_none[1] = {-1};
    mproc_close_fds_except(keep_none, 0);
    char *args[] = {g_redis_path, "--port",       port, "--bind",      "127.0.0.1", "--save",
                    "",           "--appendonly", "no", "--daemonize", "no",        "--dir",
                    s->dir,       "--logfile",    "",   NULL};
    execv(g_redis_path, args);
    return 127;
}

/* Print the server's log (on failure). */
static void dump_log(const server_t *s)
{
    char path[128], buf[4096];
    snprintf(path, sizeof path, "%s/redis.log", s->dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    fprintf(stderr, "---- redis-server log ----\n");
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)n, stderr);
    fprintf(stderr, "---- end of log ----\n");
    close(fd);
}

/* Start the server and wait until it accepts connections. A server that
 * exits at once (the port was taken in between) is retried on a new port.
 * 0 or -1 (reported). */
static int server_start(server_t *s)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        s->port = pick_port();
        if (s->port <= 0) {
            tu_fail(__FILE__, __LINE__, "no free loopback port: %s", strerror(errno));
            return -1;
        }
        s->pidfd = -1;
        s->pid = tu_fork(exec_redis, s, &s->pidfd);
        if (s->pid < 0) {
            tu_fail(__FILE__, __LINE__, "fork: %s", strerror((int)-s->pid));
            return -1;
        }
        int64_t deadline = tu_now_ms() + READY_TIMEOUT_MS;
        int exited = 0;
        while (tu_now_ms() < deadline) {
            if (try_connect(s->port, 200))
                return 0;
            /* Not listening yet: wait a little, on the server's exit. */
            struct pollfd p = {.fd = s->pidfd, .events = POLLIN};
            if (poll(&p, 1, 20) == 1) {
                exited = 1;
                break;
            }
        }
        int st = 0;
        if (exited) {
            tu_wait_child(s->pid, s->pidfd, TU_T_MS, &st);
            fprintf(stderr, "redis-server on port %d exited (status %d); retrying\n", s->port, st);
            dump_log(s);
            s->pid = -1;
            s->pidfd = -1;
            continue;
        }
        dump_log(s);
        tu_kill_child(s->pid, s->pidfd);
        s->pid = -1;
        s->pidfd = -1;
        tu_fail(__FILE__, __LINE__, "redis-server did not accept connections within %d ms",
                READY_TIMEOUT_MS);
        return -1;
    }
    tu_fail(__FILE__, __LINE__, "redis-server did not start (3 attempts)");
    return -1;
}

/* SIGTERM (no save configured, so nothing is written), wait, SIGKILL if it
 * lingers. */
static void server_stop(server_t *s)
{
    if (s->pid <= 0)
        return;
    kill(s->pid, SIGTERM);
    int st = 0;
    int rc = tu_wait_child(s->pid, s->pidfd, TU_T_MS, &st);
    if (rc == -ETIMEDOUT) {
        fprintf(stderr, "redis-server ignored SIGTERM; killing it\n");
        tu_kill_child(s->pid, s->pidfd);
    }
    s->pid = -1;
    s->pidfd = -1;
}

/* Remove the temporary directory and whatever is in it. */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        char path[512];
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    TU_CHECK(rmdir(dir) == 0);
}

/* ------------------------------------------------------------ the case */

static int exec_example(void *ctx)
{
    const server_t *s = ctx;
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    char *args[] = {EXAMPLE_PATH, "127.0.0.1", port, EXAMPLE_CHILDREN, EXAMPLE_INCRS, NULL};
    execv(EXAMPLE_PATH, args);
    fprintf(stderr, "exec %s: %s\n", EXAMPLE_PATH, strerror(errno));
    return 127;
}

static void test_redis_guarded_example(void)
{
    server_t s = {.pid = -1, .pidfd = -1};
    snprintf(s.dir, sizeof s.dir, "/tmp/mproc-redis-XXXXXX");
    TU_REQUIRE(mkdtemp(s.dir) != NULL);

    if (server_start(&s) == 0) {
        tu_context("redis-server port %d", s.port);
        int64_t t0 = tu_now_ms();
        int pidfd = -1;
        pid_t pid = tu_fork(exec_example, &s, &pidfd);
        TU_CHECK(pid > 0);
        if (pid > 0) {
            int st = TU_NO_CODE;
            int rc = tu_wait_child(pid, pidfd, EXAMPLE_TIMEOUT_MS, &st);
            if (rc == -ETIMEDOUT) {
                tu_fail(__FILE__, __LINE__, "redis_guarded still running after %d ms",
                        EXAMPLE_TIMEOUT_MS);
                tu_kill_child(pid, pidfd);
            } else {
                TU_CHECK_OK(rc);
                TU_CHECK_EQ_INT(st, 0);
            }
        }
        printf("redis_guarded ran in %lld ms\n", (long long)(tu_now_ms() - t0));
        if (tu_failed)
            dump_log(&s);
        server_stop(&s);
    }
    remove_dir(s.dir);
}

static const tu_case_t cases[] = {TU_CASE(test_redis_guarded_example), TU_END};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    if (!find_redis_server()) {
        printf("SKIP: redis-server not found (scripts/deps.sh installs it)\n");
        return 77;
    }
    if (access(EXAMPLE_PATH, X_OK) != 0) {
        printf("SKIP: %s not built (it needs hiredis: libhiredis-dev and pkg-config)\n",
               EXAMPLE_PATH);
        return 77;
    }
    return tu_main(argc, argv, cases);
}
