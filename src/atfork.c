/*
 * atfork.c - the fork generation and mproc's own child-side resets.
 *
 * pthread_atfork fires for every fork() in the process, mproc's and the
 * application's alike, so state registered here is corrected in any child,
 * however it was made (P5). The handlers are installed once, lazily.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

#define MAX_CHILD_HOOKS 16

static _Atomic uint64_t generation;
static void (*child_hooks[MAX_CHILD_HOOKS])(void);
static _Atomic int n_child_hooks;
static pthread_mutex_t hooks_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t installed = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    atomic_fetch_add(&generation, 1);
    /* The lock may have been held by a thread that did not survive fork. */
    pthread_mutex_init(&hooks_lock, NULL);
    int n = atomic_load(&n_child_hooks);
    for (int i = 0; i < n; i++)
        child_hooks[i]();
}

static void install(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

uint64_t mproc__fork_generation(void)
{
    pthread_once(&installed, install);
    return atomic_load(&generation);
}

int mproc__atfork_child(void (*fn)(void))
{
    pthread_once(&installed, install);
    pthread_mutex_lock(&hooks_lock);
    int n = atomic_load(&n_child_hooks);
    int rc = -ENOMEM;
    if (n < MAX_CHILD_HOOKS) {
        child_hooks[n] = fn;
        atomic_store(&n_child_hooks, n + 1);
        rc = 0;
    }
    pthread_mutex_unlock(&hooks_lock);
    return rc;
}
