/*
 * fork_safety.c - the fork-safety toolkit on a stand-in "connection": a
 * socketpair whose other end plays the server. The parent opens it, then
 * forks children (mproc's fork start method and a raw fork()). Each process
 * checks the guard before using the connection: an inherited one is dropped
 * without a byte sent on it, and a fresh one is made for that process.
 *
 * Build: make (examples/ is part of the build); run: build/examples/fork_safety
 */
#define _GNU_SOURCE
#include <mproc.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* A connection: an fd and the guard that says which process owns it. */
typedef struct {
    int fd, server_fd;
    mproc_guard_t guard;
} conn_t;

static conn_t g_conn = {-1, -1, MPROC_GUARD_INIT};

/* The rebuild of mproc_guard_ensure: drop the inherited fd without writing
 * to it (no "QUIT": the parent still talks on that stream), open a fresh
 * one for this process. */
static int conn_rebuild(void *ctx)
{
    conn_t *c = ctx;
    if (c->fd >= 0)
        close(c->fd);
    if (c->server_fd >= 0)
        close(c->server_fd);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    c->fd = sv[0];
    c->server_fd = sv[1];
    return 0;
}

/* Every use goes through the guard: a few nanoseconds when it is ours. */
static int conn_send(conn_t *c, const char *msg)
{
    if (mproc_guard_ensure(&c->guard, conn_rebuild, c) < 0)
        return -1;
    return send(c->fd, msg, strlen(msg), MSG_NOSIGNAL) < 0 ? -1 : 0;
}

/* Per-process lazy state: made once in each process that asks for it. */
static mproc_once_t g_cache_once = MPROC_ONCE_INIT;
static int g_cache_builds;

static int build_cache(void *ctx)
{
    (void)ctx;
    g_cache_builds++;
    return 0;
}

/* A worker thread the child must not leave running when its entry returns. */
static volatile int g_stop;
static pthread_t g_worker;

static void *worker(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&g_stop, __ATOMIC_ACQUIRE))
        sched_yield();
    return NULL;
}

static void stop_worker(void *ctx)
{
    (void)ctx;
    __atomic_store_n(&g_stop, 1, __ATOMIC_RELEASE);
    pthread_join(g_worker, NULL);
    printf("  child %d: exit hook joined its worker thread\n", (int)getpid());
}

static void on_child(void *ctx)
{
    (void)ctx; /* runs in every fork child, mproc's or raw */
}

static int child_entry(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    int was_inherited = mproc_guard_inherited(&g_conn.guard);
    int rc = conn_send(&g_conn, "hello from the child\n");
    mproc_once(&g_cache_once, build_cache, NULL);
    printf("  child %d: generation %llu, connection inherited=%d, send=%d, cache builds=%d\n",
           (int)getpid(), (unsigned long long)mproc_fork_generation(), was_inherited, rc,
           g_cache_builds);
    pthread_create(&g_worker, NULL, worker, NULL);
    mproc_on_child_exit(stop_worker, NULL);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    mproc_atfork_t *reg;
    mproc_atfork_register(NULL, NULL, on_child, NULL, &reg);

    conn_rebuild(&g_conn); /* the parent's connection */
    mproc_guard_claim(&g_conn.guard);
    mproc_once(&g_cache_once, build_cache, NULL);
    printf("parent %d: generation %llu, cache builds=%d\n", (int)getpid(),
           (unsigned long long)mproc_fork_generation(), g_cache_builds);

    mproc_process_opts_t o = {.name = "fs-demo", .method = MPROC_START_FORK};
    mproc_process_t *p;
    int code = -1;
    if (mproc_process_create(&p, child_entry, NULL, 0, &o) == 0 && mproc_process_start(p) == 0 &&
        mproc_process_join(p, 10000) == 0)
        mproc_process_exitcode(p, &code);
    mproc_process_free(p);
    printf("mproc fork child exit code %d\n", code);

    fflush(stdout);
    pid_t pid = fork(); /* a raw fork: the guard works here too */
    if (pid == 0) {
        int inherited = mproc_guard_inherited(&g_conn.guard);
        printf("  raw child %d: generation %llu, connection inherited=%d\n", (int)getpid(),
               (unsigned long long)mproc_fork_generation(), inherited);
        fflush(stdout);
        _exit(inherited == 1 ? 0 : 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);

    /* The parent's connection was never touched by the children. */
    int ours = conn_send(&g_conn, "parent still owns its stream\n");
    printf("parent: connection inherited=%d, send=%d, raw child ok=%d\n",
           mproc_guard_inherited(&g_conn.guard), ours, WIFEXITED(st) && WEXITSTATUS(st) == 0);
    mproc_atfork_unregister(reg);
    return code == 0 && ours == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
