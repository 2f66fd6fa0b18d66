/*
 * bench_start.c - start+join latency of a child that does nothing.
 *
 *   bench_start <method> <iterations> [--rss-mib N]
 *
 * method:
 *   mproc-fork        mproc_process_create/start/join/free, MPROC_START_FORK
 *   mproc-spawn       the same with MPROC_START_SPAWN
 *   mproc-forkserver  the same with MPROC_START_FORKSERVER; the helper is
 *                     started before the parent grows
 *   raw-fork          fork(), child _exit(0), waitpid(): the fork floor
 *   raw-spawn         posix_spawn() of /proc/self/exe with an argument that
 *                     makes it _exit(0) at the top of main, waitpid(): the
 *                     exec floor
 *   raw-forkserver    a minimal hand-written forkserver: a helper forked
 *                     before the parent grows forks, reaps and reports a
 *                     child per request byte on a socketpair: the floor of
 *                     a forkserver round trip
 *
 * --rss-mib N makes the parent allocate and touch N MiB before measuring, so
 * the cost of copying a big parent's page tables shows.
 *
 * A few untimed iterations run first. Each timed iteration is measured on
 * CLOCK_MONOTONIC; the program prints one line:
 *
 *   median_us=<float> p10_us=<float> p90_us=<float> n=<iterations>
 *
 * Any error is printed to stderr and ends the program with status 1.
 */
#define _POSIX_C_SOURCE 200809L

#include "bench_util.h"
#include "mproc.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* argv[1] of a raw-spawn child: leave at once, before anything else. */
#define RAW_EXIT_ARG "--bench-raw-exit"

/* Untimed iterations before measuring: caches, lazy binding, the helper. */
#define WARMUP_ITERATIONS 3

/* ------------------------------------------------------------------------ */
/* Children                                                                 */
/* ------------------------------------------------------------------------ */

/* A child's wait status must say "exited with 0". */
static void check_status(const char *what, int status)
{
    char why[64];

    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return;
    if (WIFEXITED(status))
        snprintf(why, sizeof why, "child exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(why, sizeof why, "child killed by signal %d", WTERMSIG(status));
    else
        snprintf(why, sizeof why, "unexpected wait status 0x%x", (unsigned)status);
    die(what, why);
}

static int wait_child(pid_t pid)
{
    int status;

    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            die_errno("waitpid");
    }
    return status;
}

/* ------------------------------------------------------------------------ */
/* mproc methods                                                            */
/* ------------------------------------------------------------------------ */

static int noop_entry(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return 0;
}

static void mproc_start_join(mproc_start_method_t method)
{
    const mproc_process_opts_t opts = {.name = NULL, .method = method, .daemon = 0};
    mproc_process_t *p;
    int rc, code;

    rc = mproc_process_create(&p, noop_entry, NULL, 0, &opts);
    if (rc < 0)
        die_mproc("mproc_process_create", rc);
    rc = mproc_process_start(p);
    if (rc < 0)
        die_mproc("mproc_process_start", rc);
    rc = mproc_process_join(p, MPROC_FOREVER);
    if (rc < 0)
        die_mproc("mproc_process_join", rc);
    rc = mproc_process_exitcode(p, &code);
    if (rc < 0)
        die_mproc("mproc_process_exitcode", rc);
    if (code != 0) {
        char why[64];
        snprintf(why, sizeof why, "child exit code %d", code);
        die("mproc child", why);
    }
    rc = mproc_process_free(p);
    if (rc < 0)
        die_mproc("mproc_process_free", rc);
}

static void mproc_fork_once(void)
{
    mproc_start_join(MPROC_START_FORK);
}

static void mproc_spawn_once(void)
{
    mproc_start_join(MPROC_START_SPAWN);
}

static void mproc_forkserver_setup(void)
{
    int rc = mproc_forkserver_start(NULL, NULL, 0);
    if (rc < 0)
        die_mproc("mproc_forkserver_start", rc);
}

static void mproc_forkserver_once(void)
{
    mproc_start_join(MPROC_START_FORKSERVER);
}

static void mproc_forkserver_teardown(void)
{
    int rc = mproc_forkserver_stop();
    if (rc < 0)
        die_mproc("mproc_forkserver_stop", rc);
}

/* ------------------------------------------------------------------------ */
/* raw-fork and raw-spawn                                                   */
/* ------------------------------------------------------------------------ */

static void raw_fork_once(void)
{
    pid_t pid = fork();

    if (pid < 0)
        die_errno("fork");
    if (pid == 0)
        _exit(0);
    check_status("raw-fork", wait_child(pid));
}

static void raw_spawn_once(void)
{
    char *child_argv[] = {(char *)bench_prog, RAW_EXIT_ARG, NULL};
    pid_t pid;
    int rc;

    rc = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, child_argv, environ);
    if (rc != 0)
        die("posix_spawn", strerror(rc));
    check_status("raw-spawn", wait_child(pid));
}

/* ------------------------------------------------------------------------ */
/* raw-forkserver: the least a forkserver round trip can cost               */
/* ------------------------------------------------------------------------ */

static int fs_sock = -1;  /* the client's end of the socketpair */
static pid_t fs_pid = -1; /* the helper */

/* Read exactly len bytes; 0 on success, 1 on EOF before any byte. */
static int read_exact(int fd, void *buf, size_t len)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            if (done == 0)
                return 1;
            errno = ECONNRESET;
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

static int send_exact(int fd, const void *buf, size_t len)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

/*
 * The helper: per request byte, fork a child that _exit(0)s, reap it and
 * answer with its wait status, or with -errno if fork or waitpid failed.
 * Leaves when the client closes its end.
 */
static _Noreturn void fs_serve(int sock)
{
    for (;;) {
        char req;
        int32_t reply;
        int status, rc;
        pid_t pid;

        rc = read_exact(sock, &req, 1);
        if (rc == 1)
            _exit(0);
        if (rc < 0)
            _exit(1);

        pid = fork();
        if (pid == 0)
            _exit(0);
        if (pid < 0) {
            reply = -errno;
        } else {
            while ((rc = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
                ;
            reply = rc < 0 ? -errno : status;
        }
        if (send_exact(sock, &reply, sizeof reply) < 0)
            _exit(1);
    }
}

static void raw_forkserver_setup(void)
{
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        die_errno("socketpair");
    fflush(NULL);
    fs_pid = fork();
    if (fs_pid < 0)
        die_errno("fork (forkserver helper)");
    if (fs_pid == 0) {
        close(sv[0]);
        fs_serve(sv[1]);
    }
    close(sv[1]);
    fs_sock = sv[0];
}

static void raw_forkserver_once(void)
{
    const char req = 'F';
    int32_t reply;
    int rc;

    if (send_exact(fs_sock, &req, 1) < 0)
        die_errno("raw-forkserver: send request");
    rc = read_exact(fs_sock, &reply, sizeof reply);
    if (rc < 0)
        die_errno("raw-forkserver: read reply");
    if (rc == 1)
        die("raw-forkserver", "helper closed the socket");
    if (reply < 0)
        die("raw-forkserver: helper", strerror(-reply));
    check_status("raw-forkserver", reply);
}

static void raw_forkserver_teardown(void)
{
    close(fs_sock);
    fs_sock = -1;
    check_status("raw-forkserver helper", wait_child(fs_pid));
}

/* ------------------------------------------------------------------------ */
/* The methods                                                              */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *name;
    void (*setup)(void);    /* before the parent grows; may be NULL */
    void (*once)(void);     /* one start+join; dies on any error    */
    void (*teardown)(void); /* may be NULL                          */
} method_t;

static const method_t methods[] = {
    {"mproc-fork", NULL, mproc_fork_once, NULL},
    {"mproc-spawn", NULL, mproc_spawn_once, NULL},
    {"mproc-forkserver", mproc_forkserver_setup, mproc_forkserver_once, mproc_forkserver_teardown},
    {"raw-fork", NULL, raw_fork_once, NULL},
    {"raw-spawn", NULL, raw_spawn_once, NULL},
    {"raw-forkserver", raw_forkserver_setup, raw_forkserver_once, raw_forkserver_teardown},
};

static const method_t *find_method(const char *name)
{
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        if (strcmp(methods[i].name, name) == 0)
            return &methods[i];
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Measuring                                                                */
/* ------------------------------------------------------------------------ */

/*
 * The parent's ballast. A volatile pointer, so the compiler cannot prove the
 * memory unused and drop the allocation or the memset.
 */
static unsigned char *volatile ballast;

static void grow_parent(long mib)
{
    size_t size = (size_t)mib << 20;
    unsigned char *p = malloc(size);

    if (p == NULL)
        die_errno("malloc (--rss-mib)");
    memset(p, 0x5a, size);
    ballast = p;
}

static _Noreturn void usage(void)
{
    usage_names("<method> <iterations> [--rss-mib N]", "methods", methods,
                sizeof methods / sizeof methods[0], sizeof methods[0]);
}

int main(int argc, char **argv)
{
    const method_t *method;
    long iterations, rss_mib = 0;
    double *samples;
    int rc;

    /* A raw-spawn child: the exec is the whole measurement. */
    if (argc == 2 && strcmp(argv[1], RAW_EXIT_ARG) == 0)
        _exit(0);

    bench_prog = "bench_start";

    /* A spawn or forkserver child of mproc takes over here. */
    rc = mproc_init(&argc, &argv);
    if (rc < 0)
        die_mproc("mproc_init", rc);
    mproc_set_log(log_to_stderr, NULL);

    if (argc > 0 && argv[0] != NULL)
        bench_prog = argv[0];
    if (argc != 3 && argc != 5)
        usage();
    method = find_method(argv[1]);
    if (method == NULL)
        usage();
    iterations = parse_positive("iterations", argv[2], 10000000);
    if (argc == 5) {
        if (strcmp(argv[3], "--rss-mib") != 0)
            usage();
        rss_mib = parse_positive("--rss-mib", argv[4], 1L << 20);
    }

    samples = malloc((size_t)iterations * sizeof *samples);
    if (samples == NULL)
        die_errno("malloc");

    if (method->setup != NULL)
        method->setup();
    if (rss_mib > 0)
        grow_parent(rss_mib);

    for (int i = 0; i < WARMUP_ITERATIONS; i++)
        method->once();
    for (long i = 0; i < iterations; i++) {
        double t0 = now_us();
        method->once();
        samples[i] = now_us() - t0;
    }

    if (method->teardown != NULL)
        method->teardown();

    print_quantiles("us", samples, (size_t)iterations, iterations);
    free(samples);
    return 0;
}
