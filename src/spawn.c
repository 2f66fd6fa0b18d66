/*
 * spawn.c - the spawn start method: a fresh exec of this executable that
 * takes over in mproc_init and learns what to run from a request it reads
 * on an inherited socket.
 *
 * Parent side: posix_spawn (vfork-fast, and it reports exec's errno
 * honestly), with the child's fd table decided by file actions: stray fds
 * closed, handed-over fds kept at their numbers with FD_CLOEXEC cleared
 * (dup2 onto itself: the trap where fd 3 handed as fd 3 would otherwise be
 * closed at exec). Then the request goes over the socket, and start waits
 * for the child's acknowledgement that it reached mproc_init and resolved
 * its entry, so a failure is start's error, not a mysterious exit 127.
 *
 * Child side: MPROC_SPAWN=<fd>:<ppid> in the environment names the socket.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SPAWN_ENV "MPROC_SPAWN"

extern char **environ;

#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 34) && !defined(MPROC_NO_FASTPATHS)
#define HAVE_ADDCLOSEFROM 1
#endif

static char spawn_argv0[256] = "mproc-child";

void mproc__spawn_set_argv0(const char *argv0)
{
    if (argv0 && *argv0)
        snprintf(spawn_argv0, sizeof spawn_argv0, "%s", argv0);
}

/* kv ("NAME=value") sets the variable named by entry ("NAME" or
 * "NAME=value"). */
static int is_var(const char *kv, const char *entry)
{
    size_t n = strcspn(entry, "=");
    return strncmp(kv, entry, n) == 0 && kv[n] == '=';
}

/* The environment of the child: ours, minus any stale MPROC_SPAWN and the
 * variables add[] sets, plus add[] ("NAME=value" each, NULL-terminated). */
static char **child_environ(const char *const *add)
{
    size_t n = 0, na = 0;
    while (environ && environ[n])
        n++;
    while (add[na])
        na++;
    char **env = malloc((n + na + 1) * sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int drop = is_var(environ[i], SPAWN_ENV);
        for (size_t j = 0; j < na && !drop; j++)
            drop = is_var(environ[i], add[j]);
        if (!drop)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < na; j++)
        env[k++] = (char *)add[j];
    env[k] = NULL;
    return env;
}

static int is_kept(const int *keep, size_t n, int fd)
{
    for (size_t i = 0; i < n; i++)
        if (keep[i] == fd)
            return 1;
    return 0;
}

/* File actions that leave the child fds 0-2 and keep[] only. Returns
 * whether the child must still close strays itself (no closefrom here). */
static int build_fd_actions(posix_spawn_file_actions_t *fa, const int *keep, size_t n, int *rc)
{
    int max = 2;
    for (size_t i = 0; i < n; i++)
        if (keep[i] > max)
            max = keep[i];
    *rc = 0;
    /* Below the highest kept fd, close the others one by one: fcntl tells
     * which are open. Above it, one closefrom. */
    for (int fd = 3; fd < max && *rc == 0; fd++)
        if (!is_kept(keep, n, fd) && fcntl(fd, F_GETFD) >= 0)
            *rc = -posix_spawn_file_actions_addclose(fa, fd);
    int child_closes = 1;
#ifdef HAVE_ADDCLOSEFROM
    if (*rc == 0) {
        *rc = -posix_spawn_file_actions_addclosefrom_np(fa, max + 1);
        child_closes = 0;
    }
#endif
    for (size_t i = 0; i < n && *rc == 0; i++)
        *rc = -posix_spawn_file_actions_adddup2(fa, keep[i], keep[i]);
    return child_closes;
}

/* Collect a child that failed to start. One that said why is leaving by
 * itself: give it a moment to finish its exit (killing it mid-exit can
 * orphan helpers of its own, such as a sanitizer's tracer), then kill. */
/* The child's answer. Its death ends the wait too (through the pidfd),
 * even if a fork elsewhere in this process holds a copy of the child's end
 * of the socket and so keeps EOF from arriving. */
static int await_ack(int sock, int pidfd, mproc__reply_t *ack)
{
    size_t nfds;
    if (pidfd >= 0) {
        struct pollfd pfd[2] = {{.fd = sock, .events = POLLIN}, {.fd = pidfd, .events = POLLIN}};
        while (poll(pfd, 2, -1) < 0)
            if (errno != EINTR)
                return -errno;
        if (!pfd[0].revents)
            return -ECONNRESET; /* died without a word */
    }
    return mproc__reply_recv(sock, ack, NULL, 0, &nfds, pidfd >= 0 ? 0 : MPROC_FOREVER);
}

static void kill_and_reap(pid_t pid, int pidfd, int leaving)
{
    int code;
    if (leaving && pidfd >= 0 && mproc__poll1(pidfd, POLLIN, 5000, NULL) > 0 &&
        mproc__reap(pid, pidfd, 0, &code) == 1)
        return;
    if (pidfd >= 0)
        mproc__pidfd_signal(pidfd, SIGKILL);
    else
        kill(pid, SIGKILL); /* unreaped child of ours: the pid is still ours */
    mproc__reap(pid, pidfd, 1, &code);
}

int mproc__spawn_exec(const char *const *env_add, const int *keep, size_t nkeep,
                      const sigset_t *blocked, pid_t *pid_out, int *child_closes)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    int rc;
    *child_closes = build_fd_actions(&fa, keep, nkeep, &rc);

    /* Every signal at its default and none blocked: the same start as a
     * forked child, whatever the parent had installed. */
    sigset_t def, none;
    sigfillset(&def);
    sigdelset(&def, SIGKILL);
    sigdelset(&def, SIGSTOP);
    sigemptyset(&none);
    if (rc == 0)
        rc = -posix_spawnattr_setsigdefault(&attr, &def);
    if (rc == 0)
        rc = -posix_spawnattr_setsigmask(&attr, blocked ? blocked : &none);
    if (rc == 0)
        rc = -posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

    char **env = rc == 0 ? child_environ(env_add) : NULL;
    if (rc == 0 && !env)
        rc = -ENOMEM;
    if (rc == 0) {
        char *argv[] = {spawn_argv0, NULL};
        rc = -posix_spawn(pid_out, mproc__self_exe(), &fa, &attr, argv, env);
    }
    free(env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    return rc;
}

int mproc__spawn(mproc__request_t *req, const int *keep, size_t nkeep, pid_t *pid_out,
                 int *pidfd_out, int *sock_out)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;

    int all[MPROC__MAX_FDS + 2];
    size_t nall = 0;
    for (size_t i = 0; i < nkeep; i++)
        all[nall++] = keep[i];
    all[nall++] = sv[1];

    char entry[64];
    snprintf(entry, sizeof entry, SPAWN_ENV "=%d:%ld", sv[1], (long)getpid());
    pid_t pid = -1;
    int child_closes;
    const char *add[] = {entry, NULL};
    int rc = mproc__spawn_exec(add, all, nall, NULL, &pid, &child_closes);
    if (child_closes)
        req->flags |= MPROC__F_CLOSE_FDS;
    close(sv[1]);
    if (rc < 0) {
        close(sv[0]);
        return rc;
    }

    /* Our unreaped child cannot have its pid reused, so this is race-free
     * unless someone else reaps our children (SIGCHLD set to SIG_IGN). */
    int pidfd = mproc__have_pidfd() ? mproc__pidfd_open(pid) : -ENOSYS;
    if (pidfd < 0 && pidfd != -ENOSYS)
        rc = pidfd; /* out of fds: a child we cannot watch must not run */
    if (pidfd < 0)
        pidfd = -1;

    req->ppid = (int32_t)getpid();
    void *buf = NULL;
    size_t len = 0;
    if (rc == 0)
        rc = mproc__request_encode(req, &buf, &len);
    if (rc == 0)
        rc = mproc__frame_send(sv[0], buf, len, NULL, 0);
    free(buf);

    /* A child that died early may still have said why (MPROC_ENOINIT from a
     * main() without mproc_init): read the answer even if the send failed. */
    mproc__reply_t ack = {0};
    if (rc == 0 || rc == -EPIPE || rc == -ECONNRESET) {
        int sent = rc;
        rc = await_ack(sv[0], pidfd, &ack);
        if (rc == 0)
            rc = ack.err < 0 ? ack.err : sent;
        else if (rc == -EPIPE || rc == -ECONNRESET)
            rc = MPROC_EBOOTSTRAP; /* died before mproc_init could answer */
    }
    if (rc < 0) {
        kill_and_reap(pid, pidfd, ack.err < 0 || rc == MPROC_EBOOTSTRAP);
        if (pidfd >= 0)
            close(pidfd);
        close(sv[0]);
        return rc;
    }
    if (sock_out)
        *sock_out = sv[0];
    else
        close(sv[0]);
    *pid_out = pid;
    *pidfd_out = pidfd;
    return 0;
}

/* ---- child side ------------------------------------------------------------ */

static int spawn_fd = -1; /* the request socket, from the environment */
static int uninitialised; /* spawned, and mproc_init not reached yet  */

static int parse_env(const char *v, int *fd, pid_t *ppid)
{
    char *end;
    long f = strtol(v, &end, 10);
    if (end == v || *end != ':' || f < 0 || f > 1 << 20)
        return -1;
    const char *p = end + 1;
    long pp = strtol(p, &end, 10);
    if (end == p || *end != '\0' || pp <= 0)
        return -1;
    *fd = (int)f;
    *ppid = (pid_t)pp;
    return 0;
}

/* A spawned child whose main() returns without calling mproc_init: tell the
 * parent's start why its child never acknowledged. */
static void report_noinit(void)
{
    if (uninitialised && spawn_fd >= 0)
        mproc__reply_send(spawn_fd, MPROC_ENOINIT, 0, NULL, 0);
}

/* Runs before main: remember that we are a spawned child even if main()
 * never calls mproc_init, so mproc refuses to start grandchildren from a
 * program that would otherwise run its parent's main() again (a fork bomb).
 * The socket's peer credentials, fixed when the parent made the pair, tell a
 * real request socket from a stale variable, even if the parent has died. */
__attribute__((constructor)) static void spawn_detect(void)
{
    const char *v = getenv(SPAWN_ENV);
    pid_t ppid;
    int fd;
    if (!v || parse_env(v, &fd, &ppid) < 0)
        return;
#ifdef SO_PEERCRED
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 || cred.pid != ppid)
        return;
#else
    if (fcntl(fd, F_GETFD) < 0)
        return;
#endif
    spawn_fd = fd;
    uninitialised = 1;
    /* Ours alone: neither the socket nor the variable may reach what this
     * process execs, even if its main() never calls mproc_init. */
    mproc__set_cloexec(fd, 1);
    unsetenv(SPAWN_ENV);
    atexit(report_noinit);
}

int mproc__spawn_uninitialised(void)
{
    return uninitialised;
}

int mproc__spawn_receive(mproc__request_t *req, void **buf, int *sock)
{
    if (!uninitialised)
        return 0;
    uninitialised = 0;
    int fd = spawn_fd;
    spawn_fd = -1;

    size_t len, nfds;
    int rc =
        mproc__frame_recv(fd, MPROC__ARG_MAX + 65536, buf, &len, NULL, 0, &nfds, MPROC_FOREVER);
    if (rc == -EMFILE)
        rc = MPROC_EPROTO; /* our parent sends no fds */
    if (rc == 0)
        rc = mproc__request_decode(*buf, len, req);
    if (rc == 0 && req->type != MPROC__REQ_CHILD && req->type != MPROC__REQ_SERVER)
        rc = MPROC_EPROTO;
    if (rc < 0) {
        mproc__reply_send(fd, rc, 0, NULL, 0);
        mproc__child_fail(rc);
    }
    *sock = fd;
    return 1;
}
