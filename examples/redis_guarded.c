/*
 * redis_guarded.c - P1 on a real server: one hiredis connection, opened by
 * the parent, shared across fork by N mproc children, made safe with a
 * guard.
 *
 * The parent opens ONE redisContext, wrapped with an mproc_guard_t it
 * claims, DELs a key and starts N fork children. The parent and every child
 * then run `incrs` INCRs through guarded_command(), which first calls
 * mproc_guard_ensure(): in a child the inherited context is dropped without
 * a byte sent on it and a fresh connection is made. Every INCR is followed
 * by an `ECHO <pid>:<i>` whose reply must be exactly that token: a reply
 * meant for another process would show up as a mismatch. At the end each
 * child sends QUIT on its own connection (harmless: it is its own), and the
 * parent checks the key equals (N + 1) * incrs.
 *
 * Build: make (built only when pkg-config finds hiredis)
 * Run:   build/examples/redis_guarded HOST PORT [children=8] [incrs=10000]
 */
#define _GNU_SOURCE
#include <mproc.h>

#include <hiredis/hiredis.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define KEY "mproc:redis_guarded:counter"
#define JOIN_TIMEOUT_MS 120000
#define EXIT_CONNECT 251 /* a child could not connect or a command failed */

/* The connection and the guard that says which process owns it. */
typedef struct {
    redisContext *ctx;
    mproc_guard_t guard;
    const char *host;
    int port;
} guarded_conn_t;

static guarded_conn_t g_conn = {NULL, MPROC_GUARD_INIT, NULL, 0};

static redisContext *connect_to(const char *host, int port)
{
    struct timeval tv = {10, 0};
    redisContext *ctx = redisConnectWithTimeout(host, port, tv);
    if (ctx == NULL) {
        fprintf(stderr, "redis_guarded[%d]: cannot allocate a redis context\n", (int)getpid());
        return NULL;
    }
    if (ctx->err) {
        fprintf(stderr, "redis_guarded[%d]: connect %s:%d: %s\n", (int)getpid(), host, port,
                ctx->errstr);
        redisFree(ctx);
        return NULL;
    }
    return ctx;
}

/*
 * mproc_guard_ensure's rebuild: runs once in each process that finds the
 * connection inherited. It must not send anything on the inherited stream
 * (the parent is still using it), so no QUIT and no redisFree with the fd
 * in place. redisFree closes ctx->fd only when it is a valid fd and never
 * writes; with ctx->fd set to -1 it frees memory and does no I/O at all.
 * (hiredis's redisFreeKeepFd does the same.) Then the inherited fd is
 * closed: a close() sends nothing either, as the parent's copy keeps the
 * socket open.
 */
static int rebuild(void *arg)
{
    guarded_conn_t *c = arg;
    if (c->ctx != NULL) {
        int fd = c->ctx->fd;
        c->ctx->fd = -1;
        redisFree(c->ctx); /* frees buffers and the reader only */
        c->ctx = NULL;
        if (fd >= 0)
            close(fd);
    }
    c->ctx = connect_to(c->host, c->port);
    return c->ctx != NULL ? 0 : -1;
}

/* Every command goes through the guard: a few nanoseconds when it is ours. */
static redisReply *guarded_command(guarded_conn_t *c, const char *fmt, ...)
{
    if (mproc_guard_ensure(&c->guard, rebuild, c) < 0)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c->ctx, fmt, ap);
    va_end(ap);
    if (r == NULL)
        fprintf(stderr, "redis_guarded[%d]: command failed: %s\n", (int)getpid(),
                c->ctx->errstr[0] ? c->ctx->errstr : "(no reply)");
    return r;
}

/*
 * incrs INCRs, each followed by an ECHO of "<pid>:<i>". Returns the number
 * of replies that were not what this process asked for, or -1 when the
 * connection failed.
 */
static long run_incrs(guarded_conn_t *c, long incrs)
{
    long mismatches = 0;
    char token[64];
    int pid = (int)getpid();
    for (long i = 0; i < incrs; i++) {
        redisReply *r = guarded_command(c, "INCR %s", KEY);
        if (r == NULL)
            return -1;
        if (r->type != REDIS_REPLY_INTEGER)
            mismatches++;
        freeReplyObject(r);

        snprintf(token, sizeof token, "%d:%ld", pid, i);
        r = guarded_command(c, "ECHO %s", token);
        if (r == NULL)
            return -1;
        if (r->type != REDIS_REPLY_STRING || strcmp(r->str, token) != 0) {
            if (mismatches < 5)
                fprintf(stderr, "redis_guarded[%d]: sent ECHO %s, read %s\n", pid, token,
                        r->type == REDIS_REPLY_STRING ? r->str : "(a non-string reply)");
            mismatches++;
        }
        freeReplyObject(r);
    }
    return mismatches;
}

static int child_entry(const void *arg, size_t len)
{
    long incrs;
    if (len != sizeof incrs)
        return EXIT_CONNECT;
    memcpy(&incrs, arg, sizeof incrs);
    long bad = run_incrs(&g_conn, incrs);
    /* A clean goodbye on this process's own connection: safe, because the
     * guard gave the child a connection of its own. Unguarded, this QUIT
     * would end the parent's session. */
    redisReply *r = guarded_command(&g_conn, "QUIT");
    if (r != NULL)
        freeReplyObject(r);
    redisFree(g_conn.ctx);
    g_conn.ctx = NULL;
    if (bad < 0)
        return EXIT_CONNECT;
    return bad > 250 ? 250 : (int)bad;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long parse_long(const char *s, const char *what, long min)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min) {
        fprintf(stderr, "redis_guarded: bad %s: %s\n", what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: %s HOST PORT [children=8] [incrs=10000]\n", argv[0]);
        return 2;
    }
    g_conn.host = argv[1];
    g_conn.port = (int)parse_long(argv[2], "port", 1);
    long nchildren = argc > 3 ? parse_long(argv[3], "children", 0) : 8;
    long incrs = argc > 4 ? parse_long(argv[4], "incrs", 0) : 10000;
    if (nchildren > 1000) {
        fprintf(stderr, "redis_guarded: at most 1000 children\n");
        return 2;
    }

    /* The parent's ONE connection, claimed: it is this process's. */
    g_conn.ctx = connect_to(g_conn.host, g_conn.port);
    if (g_conn.ctx == NULL)
        return 1;
    mproc_guard_claim(&g_conn.guard);

    redisReply *r = guarded_command(&g_conn, "DEL %s", KEY);
    if (r == NULL)
        return 1;
    freeReplyObject(r);

    double t0 = now_s();
    mproc_process_t **procs = calloc((size_t)nchildren + 1, sizeof *procs);
    if (procs == NULL)
        return 1;
    mproc_process_opts_t o = {.name = "redis-child", .method = MPROC_START_FORK};
    long started = 0;
    int failed = 0;
    for (long i = 0; i < nchildren; i++) {
        int rc = mproc_process_create(&procs[i], child_entry, &incrs, sizeof incrs, &o);
        if (rc == 0)
            rc = mproc_process_start(procs[i]);
        if (rc != 0) {
            fprintf(stderr, "redis_guarded: starting child %ld: %s\n", i, mproc_strerror(rc));
            mproc_process_free(procs[i]);
            procs[i] = NULL;
            failed = 1;
            break;
        }
        started++;
    }

    /* The parent works on its own, still original, connection meanwhile. */
    long parent_bad = failed ? 0 : run_incrs(&g_conn, incrs);

    long child_bad = 0, child_failed = 0;
    double deadline = now_s() + JOIN_TIMEOUT_MS / 1000.0;
    for (long i = 0; i < started; i++) {
        int left = (int)((deadline - now_s()) * 1000);
        int rc = mproc_process_join(procs[i], left > 0 ? left : 0);
        if (rc == -ETIMEDOUT) {
            fprintf(stderr, "redis_guarded: child %d timed out; killing it\n",
                    (int)mproc_process_pid(procs[i]));
            mproc_process_kill(procs[i]);
            rc = mproc_process_join(procs[i], 10000);
        }
        int code = -1;
        if (rc == 0)
            mproc_process_exitcode(procs[i], &code);
        if (code == 0) {
            /* nothing */
        } else if (code > 0 && code <= 250) {
            child_bad += code;
        } else {
            fprintf(stderr, "redis_guarded: child %d failed (exit code %d)\n",
                    (int)mproc_process_pid(procs[i]), code);
            child_failed++;
        }
        mproc_process_free(procs[i]);
    }
    free(procs);
    double elapsed = now_s() - t0;

    /* The parent's connection is intact: children never wrote to it. */
    long long value = -1;
    r = guarded_command(&g_conn, "GET %s", KEY);
    if (r != NULL) {
        if (r->type == REDIS_REPLY_STRING)
            value = strtoll(r->str, NULL, 10);
        freeReplyObject(r);
    }
    redisFree(g_conn.ctx);

    long long expect = (long long)(started + 1) * incrs;
    long mismatches = (parent_bad > 0 ? parent_bad : 0) + child_bad;
    int ok = !failed && parent_bad >= 0 && child_failed == 0 && mismatches == 0 &&
             value == expect && started == nchildren;
    printf("redis_guarded: %ld children + parent x %ld INCRs on %s:%d in %.2f s\n", started, incrs,
           g_conn.host, g_conn.port, elapsed);
    printf("  %s = %lld (expected %lld), reply mismatches = %ld, failed processes = %ld\n", KEY,
           value, expect, mismatches, child_failed + (parent_bad < 0));
    printf("%s\n", ok ? "OK: exact count, every reply was its own process's" : "FAILED");
    return ok ? 0 : 1;
}
