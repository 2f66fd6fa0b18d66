/*
 * child.c - the child's side of every start method: tie a daemon to its
 * parent, name the process, run the entry, and leave through _exit so the
 * parent's atexit handlers never run twice (P13).
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

int mproc__child_bind_to_parent(pid_t parent)
{
#ifdef __linux__
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
        return -errno;
#endif
    /* The parent may have died before the line above: then nobody will
     * send the signal, and we were already reparented. */
    if (getppid() != parent)
        return -ESRCH;
    return 0;
}

void mproc__child_set_name(const char *name)
{
#ifdef __linux__
    if (name && *name) {
        /* By hand, not snprintf: a fork child pays a page fault for every
         * stack page it touches first. */
        char comm[16];
        size_t n = strnlen(name, sizeof comm - 1);
        memcpy(comm, name, n);
        comm[n] = '\0';
        prctl(PR_SET_NAME, comm);
    }
#else
    (void)name;
#endif
}

/* Fallback builds (no pidfd): the write end of this process's exit pipe.
 * Only this process may hold it, or its parent would not see it exit. */
static int own_exit_fd = -1;

void mproc__child_adopt_exit_fd(int fd)
{
    if (own_exit_fd >= 0 && own_exit_fd != fd)
        close(own_exit_fd); /* our parent's, inherited through fork */
    own_exit_fd = fd;
    if (fd >= 0)
        mproc__set_cloexec(fd, 1); /* and not in whatever we exec */
}

/* Hooks registered in this process with mproc_on_child_exit. */
#define MAX_EXIT_HOOKS 32
static struct {
    mproc_atfork_fn fn;
    void *ctx;
} exit_hooks[MAX_EXIT_HOOKS];
static int n_exit_hooks;
static pthread_mutex_t exit_hooks_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t exit_hooks_once = PTHREAD_ONCE_INIT;

/* A fork child does not inherit its parent's hooks: they were registered
 * for the parent's own exit. */
static void exit_hooks_after_fork(void)
{
    pthread_mutex_init(&exit_hooks_lock, NULL);
    n_exit_hooks = 0;
}

static void exit_hooks_install(void)
{
    mproc__atfork_child(exit_hooks_after_fork);
}

int mproc_on_child_exit(mproc_atfork_fn fn, void *ctx)
{
    if (!fn)
        return -EINVAL;
    pthread_once(&exit_hooks_once, exit_hooks_install);
    pthread_mutex_lock(&exit_hooks_lock);
    int rc = -ENOMEM;
    if (n_exit_hooks < MAX_EXIT_HOOKS) {
        exit_hooks[n_exit_hooks].fn = fn;
        exit_hooks[n_exit_hooks].ctx = ctx;
        n_exit_hooks++;
        rc = 0;
    }
    pthread_mutex_unlock(&exit_hooks_lock);
    return rc;
}

/* What a child runs after its entry, before _exit: set by higher layers
 * (the process registry joins the child's own children, as at exit()). */
static void (*exit_hook)(void);

void mproc__child_set_exit_hook(void (*fn)(void))
{
    exit_hook = fn;
}

_Noreturn void mproc__child_run(mproc_entry_fn fn, const void *arg, size_t len)
{
    /* The argument arrives inside a request buffer at any offset; the entry
     * is promised malloc's alignment, as under fork. */
    if (len && (uintptr_t)arg % _Alignof(max_align_t)) {
        void *copy = malloc(len);
        if (!copy)
            mproc__child_fail(-ENOMEM);
        memcpy(copy, arg, len);
        arg = copy;
    }
    int rc = fn(len ? arg : NULL, len);
    /* The child's own hooks first (they may stop threads that still use
     * its children), newest first, as atexit runs. */
    pthread_mutex_lock(&exit_hooks_lock);
    int n = n_exit_hooks;
    pthread_mutex_unlock(&exit_hooks_lock);
    while (n-- > 0)
        exit_hooks[n].fn(exit_hooks[n].ctx);
    if (exit_hook)
        exit_hook();
    /* The child's own buffered output is real output: flush it, then skip
     * atexit (those handlers belong to the parent's program). */
    fflush(NULL);
    _exit(rc & 0xff);
}

_Noreturn void mproc__child_fail(int code)
{
    (void)code;
    _exit(127);
}
