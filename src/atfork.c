/*
 * atfork.c - the at-fork registry, the fork generation, guards and
 * per-process initialisation (P1, P5), and the stdio flush before any fork
 * (P13).
 *
 * One set of pthread_atfork handlers, installed when the library loads,
 * fires for every fork() in the process, mproc's and the application's
 * alike; everything here hangs off it. The registry lock is held from the
 * prepare handler to the parent/child handler, so a registration never
 * changes under a fork in progress.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct mproc_atfork {
    mproc_atfork_fn prepare, parent, child;
    void *ctx;
    struct mproc_atfork *prev, *next;
};

#define MAX_INTERNAL_HOOKS 16

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mproc_atfork *reg_head, *reg_tail;
static void (*internal_hooks[MAX_INTERNAL_HOOKS])(void); /* mproc's own resets */
static int n_internal_hooks;
static _Thread_local int in_callback; /* a callback must not re-enter */

static _Atomic uint64_t generation;
static pid_t self_pid; /* this process's pid, kept without a syscall */

/* Serialises guard rebuilds in a process; re-made in every child, where
 * the thread that held it does not exist. */
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_prepare(void)
{
    pthread_mutex_lock(&reg_lock);
    in_callback = 1;
    for (struct mproc_atfork *r = reg_tail; r; r = r->prev)
        if (r->prepare)
            r->prepare(r->ctx);
    in_callback = 0;
    /* Last, after callbacks that may print: what stdio holds now would
     * otherwise be written by both processes (P13). */
    fflush(NULL);
}

static void on_parent(void)
{
    in_callback = 1;
    for (struct mproc_atfork *r = reg_head; r; r = r->next)
        if (r->parent)
            r->parent(r->ctx);
    in_callback = 0;
    pthread_mutex_unlock(&reg_lock);
}

static void on_child(void)
{
    atomic_fetch_add(&generation, 1);
    __atomic_store_n(&self_pid, getpid(), __ATOMIC_RELEASE);
    pthread_mutex_init(&guard_lock, NULL);
    mproc__tid_reset_after_fork();
    for (int i = 0; i < n_internal_hooks; i++)
        internal_hooks[i]();
    in_callback = 1;
    for (struct mproc_atfork *r = reg_head; r; r = r->next)
        if (r->child)
            r->child(r->ctx);
    in_callback = 0;
    pthread_mutex_unlock(&reg_lock); /* held since prepare, by this thread */
}

__attribute__((constructor)) static void atfork_install(void)
{
    self_pid = getpid();
    pthread_atfork(on_prepare, on_parent, on_child);
}

int mproc__atfork_child(void (*fn)(void))
{
    pthread_mutex_lock(&reg_lock);
    /* Once per hook: callers register from per-process initialisation,
     * which runs again in every fork child (the child inherits the table). */
    for (int i = 0; i < n_internal_hooks; i++)
        if (internal_hooks[i] == fn) {
            pthread_mutex_unlock(&reg_lock);
            return 0;
        }
    int rc = -ENOMEM;
    if (n_internal_hooks < MAX_INTERNAL_HOOKS) {
        internal_hooks[n_internal_hooks++] = fn;
        rc = 0;
    }
    pthread_mutex_unlock(&reg_lock);
    return rc;
}

int mproc_atfork_register(mproc_atfork_fn prepare, mproc_atfork_fn parent, mproc_atfork_fn child,
                          void *ctx, mproc_atfork_t **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (in_callback)
        return MPROC_ESTATE;
    struct mproc_atfork *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->prepare = prepare;
    r->parent = parent;
    r->child = child;
    r->ctx = ctx;
    pthread_mutex_lock(&reg_lock);
    r->prev = reg_tail;
    if (reg_tail)
        reg_tail->next = r;
    else
        reg_head = r;
    reg_tail = r;
    pthread_mutex_unlock(&reg_lock);
    *out = r;
    return 0;
}

int mproc_atfork_unregister(mproc_atfork_t *r)
{
    if (!r)
        return 0;
    if (in_callback)
        return MPROC_ESTATE;
    pthread_mutex_lock(&reg_lock);
    if (r->prev)
        r->prev->next = r->next;
    else
        reg_head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        reg_tail = r->prev;
    pthread_mutex_unlock(&reg_lock);
    free(r);
    return 0;
}

uint64_t mproc_fork_generation(void)
{
    return atomic_load(&generation);
}

/* ---- guards and per-process init ----------------------------------------- */

void mproc_guard_claim(mproc_guard_t *g)
{
    if (g)
        __atomic_store_n(&g->owner, __atomic_load_n(&self_pid, __ATOMIC_ACQUIRE), __ATOMIC_RELEASE);
}

int mproc_guard_inherited(const mproc_guard_t *g)
{
    return __atomic_load_n(&g->owner, __ATOMIC_ACQUIRE) !=
           __atomic_load_n(&self_pid, __ATOMIC_RELAXED);
}

int mproc_guard_ensure(mproc_guard_t *g, mproc_guard_fn rebuild, void *ctx)
{
    if (!g || !rebuild)
        return -EINVAL;
    if (!mproc_guard_inherited(g))
        return 0;
    /* Double-checked: of the threads racing here, one rebuilds. */
    pthread_mutex_lock(&guard_lock);
    int rc = 0;
    if (mproc_guard_inherited(g)) {
        rc = rebuild(ctx);
        if (rc >= 0) {
            mproc_guard_claim(g);
            rc = 1;
        }
    }
    pthread_mutex_unlock(&guard_lock);
    return rc;
}

int mproc_once(mproc_once_t *o, mproc_guard_fn init, void *ctx)
{
    return mproc_guard_ensure(o, init, ctx);
}

int mproc_close_fds_except(const int *keep, size_t n)
{
    if ((n && !keep) || n > 1024)
        return -EINVAL;
    int copy[1024]; /* sorted by the call below: not the caller's */
    for (size_t i = 0; i < n; i++) {
        if (keep[i] < 0)
            return -EINVAL;
        copy[i] = keep[i];
    }
    return mproc__close_fds_except(copy, n);
}
