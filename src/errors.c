/*
 * errors.c - error messages, the log hook, the version string.
 */
#include "internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define STR2(x) #x
#define STR(x) STR2(x)

const char *mproc_version(void)
{
    return STR(MPROC_VERSION_MAJOR) "." STR(MPROC_VERSION_MINOR) "." STR(MPROC_VERSION_PATCH);
}

const char *mproc_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
    case MPROC_ESTATE:
        return "operation not valid in the object's current state";
    case MPROC_ETHREADS:
        return "fork refused: the calling process has more than one thread";
    case MPROC_EBOOTSTRAP:
        return "spawned child failed before reaching its entry";
    case MPROC_EENTRY:
        return "entry function cannot be found in the child (module differs or missing)";
    case MPROC_ESERVER:
        return "forkserver died or cannot be reached";
    case MPROC_EPROTO:
        return "malformed message from another process";
    case MPROC_ESTATUS:
        return "child exited but its exit status was lost with its forkserver";
    case MPROC_ENOINIT:
        return "spawned child's main() did not call mproc_init()";
    case MPROC_EBROKEN:
        return "barrier broken (a wait timed out, it was aborted or reset, or a party died)";
    case MPROC_ETYPE:
        return "shared object is not of the expected type (or not an mproc segment)";
    case MPROC_EWORKER:
        return "the worker process running the task died";
    case MPROC_ETASK:
        return "some tasks failed (see their statuses)";
    }
    if (code < 0 && code > -4096) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
        /* strerrordesc_np returns static text: thread-safe, unlike strerror. */
        const char *s = strerrordesc_np(-code);
        if (s)
            return s;
#else
        return strerror(-code);
#endif
    }
    return "unknown error";
}

/* Atomics, not a mutex: a mutex held by another thread at fork() would
 * deadlock a child that logs. Install the hook before starting threads if
 * fn and ctx must change together. */
static _Atomic(mproc_log_fn) log_fn;
static _Atomic(void *) log_ctx;

void mproc_set_log(mproc_log_fn fn, void *ctx)
{
    atomic_store(&log_ctx, ctx);
    atomic_store(&log_fn, fn);
}

int mproc__log_enabled(void)
{
    return atomic_load(&log_fn) != NULL;
}

void mproc__log(mproc_log_level_t level, const char *fmt, ...)
{
    mproc_log_fn fn = atomic_load(&log_fn);
    if (!fn)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fn(atomic_load(&log_ctx), level, msg);
}
