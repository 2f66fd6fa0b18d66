/*
 * mproc.h - multiprocessing for C.
 *
 * The whole public API of libmproc, grouped by object. Conventions that hold
 * for every function below:
 *
 *  - Functions return 0 (or a non-negative value) on success and a negative
 *    errno-style code on failure (-EINVAL, -ETIMEDOUT, ... or one of the
 *    MPROC_E* codes below). mproc_strerror() names any of them.
 *  - Invalid arguments are reported with an error code; the library never
 *    aborts, exits or prints (unless a log hook was installed).
 *  - Every timeout is an int count of milliseconds: MPROC_FOREVER (-1) waits
 *    without limit, 0 polls. Timeouts use the monotonic clock and are
 *    EINTR-safe (a signal does not shorten or restart the wait).
 *  - Every file descriptor mproc opens is O_CLOEXEC.
 *
 * A program that uses the spawn or forkserver start methods must call
 * mproc_init(&argc, &argv) first thing in main(): a spawned child is a fresh
 * exec of the same executable and takes over there.
 */
#ifndef MPROC_H
#define MPROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MPROC_VERSION_MAJOR 0
#define MPROC_VERSION_MINOR 1
#define MPROC_VERSION_PATCH 0

/* "0.1.0": the version of the library actually linked. */
const char *mproc_version(void);

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* mproc's own codes, beyond the errno range. */
enum {
    MPROC_ESTATE = -10001,     /* call not valid in the object's state     */
    MPROC_ETHREADS = -10002,   /* fork refused: the caller has threads     */
    MPROC_EBOOTSTRAP = -10003, /* spawned child failed before its entry    */
    MPROC_EENTRY = -10004,     /* entry function cannot cross exec         */
    MPROC_ESERVER = -10005,    /* forkserver died or cannot be reached     */
    MPROC_EPROTO = -10006,     /* malformed message from another process   */
    MPROC_ESTATUS = -10007,    /* child exited but its status was lost     */
    MPROC_ENOINIT = -10008     /* spawned child's main skipped mproc_init  */
};

/*
 * A message for any code this library returns: negative errno values and
 * MPROC_E* codes. Never NULL; unknown codes get a generic message. The
 * returned string is static.
 */
const char *mproc_strerror(int code);

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum {
    MPROC_LOG_DEBUG = 0,
    MPROC_LOG_INFO = 1,
    MPROC_LOG_WARN = 2,
    MPROC_LOG_ERROR = 3
} mproc_log_level_t;

typedef void (*mproc_log_fn)(void *ctx, mproc_log_level_t level, const char *msg);

/*
 * The library prints nothing by itself. Install fn to receive its warnings
 * (for example the thread-fork policy MPROC_FORK_WARN). fn may be called from
 * any thread, never from a signal handler, never between fork and exec.
 * NULL uninstalls. Not inherited across exec.
 */
void mproc_set_log(mproc_log_fn fn, void *ctx);

/* ------------------------------------------------------------------------ */
/* Initialisation                                                           */
/* ------------------------------------------------------------------------ */

/*
 * Call first in main(). In the parent it returns 0 at once. In a child made
 * by the spawn start method, and in the forkserver helper, it takes over:
 * it runs the child's entry (or the server loop) and ends the process with
 * _exit(); it does not return. argc/argv may be NULL.
 *
 * If a spawned child's main() does not call mproc_init, it runs main() like
 * a fresh program, but mproc refuses to work in it: create, start, the
 * forkserver and the global setters fail with MPROC_ENOINIT (so it cannot
 * start children of its own by accident). The parent's start call waits
 * until that child's main() returns or calls exit(), and then reports
 * MPROC_ENOINIT.
 */
int mproc_init(int *argc, char ***argv);

/* ------------------------------------------------------------------------ */
/* Processes                                                                */
/* ------------------------------------------------------------------------ */

#define MPROC_FOREVER (-1)

typedef enum {
    MPROC_START_DEFAULT = 0,   /* the global default, see mproc_set_start_method */
    MPROC_START_FORK = 1,      /* fork() of the caller: inherits everything     */
    MPROC_START_SPAWN = 2,     /* fresh exec of the same executable             */
    MPROC_START_FORKSERVER = 3 /* forked by a clean single-threaded helper      */
} mproc_start_method_t;

/*
 * The method used when a process is created with MPROC_START_DEFAULT.
 * Initially MPROC_START_FORKSERVER: the child starts from a clean,
 * single-threaded image (no inherited locks, connections or threads: P1, P2,
 * P3) at a cost close to fork's, whatever the size of the parent.
 */
int mproc_set_start_method(mproc_start_method_t method);
mproc_start_method_t mproc_get_start_method(void);

typedef enum {
    MPROC_FORK_WARN = 0,  /* default: allow, and report through the log hook */
    MPROC_FORK_ALLOW = 1, /* allow silently                                  */
    MPROC_FORK_REFUSE = 2 /* start fails with MPROC_ETHREADS                 */
} mproc_fork_policy_t;

/*
 * What MPROC_START_FORK does when the calling process has more than one
 * thread: only the calling thread survives fork, so any lock another thread
 * holds stays locked forever in the child (P2). spawn and forkserver are not
 * affected.
 */
int mproc_set_fork_policy(mproc_fork_policy_t policy);
mproc_fork_policy_t mproc_get_fork_policy(void);

/*
 * A child's entry. arg/len is a private copy of the bytes given to
 * mproc_process_create (arg is NULL when len is 0), aligned as malloc()
 * aligns. The return value is the
 * child's exit status (0..255). Under every start method the child leaves
 * through _exit() after flushing stdio: the parent's atexit handlers never
 * run in it.
 *
 * Under spawn and forkserver the function pointer crosses exec: it must live
 * in the executable or in a shared library the child also loads (a library
 * the parent dlopen()ed is dlopen()ed by path in the child); the module must
 * be the same file (same build-id) or start fails with MPROC_EENTRY.
 */
typedef int (*mproc_entry_fn)(const void *arg, size_t len);

typedef struct mproc_process mproc_process_t;

typedef struct {
    const char *name;            /* NULL: "mproc-child"; copied; a given
                                    name also becomes the child's comm (its
                                    first 15 bytes); unnamed children show
                                    their program's name, as forked copies do */
    mproc_start_method_t method; /* MPROC_START_DEFAULT: the global default  */
    int daemon;                  /* non-zero: killed when the parent exits  */
} mproc_process_opts_t;

/* The largest argument a child can be given, in bytes. */
#define MPROC_ARG_MAX (64u << 20)

/*
 * Create (do not start) a process that will run entry(arg, len). arg is
 * copied; -E2BIG beyond MPROC_ARG_MAX. opts may be NULL (all defaults).
 * Child state under each method:
 *  - fork: a copy of the caller, all of its fds included.
 *  - spawn, forkserver: a fresh image of the executable; fds 0, 1, 2 (the
 *    caller's at start time) and those given to mproc_process_pass_fd are
 *    open, nothing else; the working directory is the caller's at start.
 *    A spawn child inherits the caller's environment, umask and rlimits at
 *    start; a forkserver child has those of the helper, as they were when
 *    the helper started (as with Python's forkserver).
 * In every method the child starts with every signal at its default action
 * and none blocked. A daemon child is killed (SIGKILL) when its parent
 * exits, however it exits (see docs/process.md for the thread caveat); a
 * non-daemon child is joined at the parent's normal exit.
 *
 * A mproc_process_t may be used from several threads at once, except that
 * free must not race with any other call on it. mproc reaps its own
 * children: a program that reaps them behind its back (waitpid(-1), or
 * SIGCHLD set to SIG_IGN) makes join report -ECHILD.
 */
int mproc_process_create(mproc_process_t **out, mproc_entry_fn entry, const void *arg, size_t len,
                         const mproc_process_opts_t *opts);

#define MPROC_PASS_FDS_MAX 249

/*
 * Hand fd to the child at the same number, for any start method (it is
 * already inherited under fork). Call before start; the caller keeps fd
 * open until start returns. Up to MPROC_PASS_FDS_MAX fds (-E2BIG beyond);
 * fds 0-2 always follow the caller's and need not be passed. -EBADF if fd
 * is not open, MPROC_ESTATE after start.
 */
int mproc_process_pass_fd(mproc_process_t *p, int fd);

/*
 * Start the child. Honest: when it returns 0 the child is running its entry
 * (spawn: exec succeeded and the child reached mproc_init and resolved its
 * entry; forkserver: the helper forked it). Otherwise nothing is left
 * running and the error says why (exec's errno, MPROC_EENTRY, MPROC_ESERVER,
 * MPROC_ETHREADS, ...). A process starts once: MPROC_ESTATE after that.
 */
int mproc_process_start(mproc_process_t *p);

/*
 * Wait up to timeout_ms for the child to exit and collect its status.
 * 0 once it has exited (again 0 on later calls), -ETIMEDOUT, MPROC_ESTATE if
 * it was never started, -ECHILD if called in a process other than the one
 * that started it.
 */
int mproc_process_join(mproc_process_t *p, int timeout_ms);

/* 1 while the child runs, 0 once it has exited, or an error code. */
int mproc_process_is_alive(mproc_process_t *p);

/*
 * The exit status once the child has exited (the join or is_alive that
 * observed it collects it): >= 0 exit status, or minus the signal number
 * that killed it, as Python's Process.exitcode. -EBUSY while it still runs,
 * MPROC_ESTATE if never started, MPROC_ESTATUS if the forkserver that owned
 * it died before reporting it.
 */
int mproc_process_exitcode(mproc_process_t *p, int *code);

/* Child's pid once started, else 0. */
pid_t mproc_process_pid(const mproc_process_t *p);
const char *mproc_process_name(const mproc_process_t *p);
int mproc_process_is_daemon(const mproc_process_t *p);
mproc_start_method_t mproc_process_method(const mproc_process_t *p);

/*
 * Send sig to the child, through its pidfd where the kernel has pidfds: a
 * reused pid is never signalled (P11). -ESRCH once the child has been
 * collected.
 */
int mproc_process_signal(mproc_process_t *p, int sig);
int mproc_process_terminate(mproc_process_t *p); /* SIGTERM */
int mproc_process_kill(mproc_process_t *p);      /* SIGKILL */

/*
 * An fd that polls readable (POLLIN) once the child has exited, for epoll,
 * libuv, libevent. Owned by p: do not close or read it. Valid from start to
 * free. Call join (timeout 0) when it fires.
 */
int mproc_process_fd(const mproc_process_t *p);

/*
 * Free p. A child that has exited is collected first. -EBUSY (and nothing
 * freed) while a started child still runs: join, or kill and join, first.
 * NULL is a no-op.
 */
int mproc_process_free(mproc_process_t *p);

/*
 * 1 when children are held by pidfd (Linux >= 5.4, not a MPROC_PORTABLE
 * build), else 0. Without pidfds, signals go only to unreaped children (a
 * pid is never reused while mproc holds it unreaped) and every child holds
 * one extra fd, close-on-exec: the write end of the exit pipe through which
 * its parent sees it exit.
 */
int mproc_have_pidfd(void);

/* ------------------------------------------------------------------------ */
/* The forkserver                                                           */
/* ------------------------------------------------------------------------ */

/*
 * The helper is started on first use. Starting it explicitly, early (before
 * the program starts threads or grows), is cheaper to reason about; preload,
 * if not NULL, runs once inside the helper before it serves (import caches,
 * warm allocators): children forked by the helper inherit what it did.
 * MPROC_ESTATE if already running. The helper is a spawn of the executable:
 * the program must call mproc_init. If preload returns non-zero the helper
 * is not started and the call fails with MPROC_EBOOTSTRAP. preload and its
 * argument are remembered: a restarted helper runs preload again.
 *
 * The helper is reachable only through a socketpair it inherited: nothing
 * is bound in any namespace (P12). If it dies, the next forkserver start
 * restarts it; children it had forked keep running, and their join
 * completes with exitcode MPROC_ESTATUS. Daemon children die with it.
 * The helper forks with the credentials the caller had when it started:
 * if the caller's effective uid or gid has changed since (a server that
 * dropped root), the next forkserver start replaces the helper.
 */
int mproc_forkserver_start(mproc_entry_fn preload, const void *arg, size_t len);

/*
 * Stop the helper. Its non-daemon children keep running (their exit status
 * is then lost: MPROC_ESTATUS); its daemon children die with it. 0 if it
 * was not running. The next forkserver start starts a new helper.
 */
int mproc_forkserver_stop(void);

/* The helper's pid, or 0 when it is not running. */
pid_t mproc_forkserver_pid(void);

/* ------------------------------------------------------------------------ */
/* Fork safety: at-fork registry, guards, per-process init (P1, P5, P6)      */
/* ------------------------------------------------------------------------ */

/*
 * Everything in this section works for children made by mproc and by a raw
 * fork() the program or a library calls (glibc runs mproc's at-fork
 * handlers for both; a raw clone() or vfork() is not covered). mproc also
 * flushes stdio before every fork, so no child repeats the parent's
 * buffered output (P13).
 */

typedef void (*mproc_atfork_fn)(void *ctx);
typedef struct mproc_atfork mproc_atfork_t;

/*
 * Register callbacks around every fork of this process; any may be NULL.
 * prepare runs in the forking thread before the fork, in reverse
 * registration order; parent and child run after it, in registration order
 * (as pthread_atfork, but with a context and an unregister). Callbacks must
 * not register, unregister or fork (MPROC_ESTATE). *out receives a handle.
 */
int mproc_atfork_register(mproc_atfork_fn prepare, mproc_atfork_fn parent, mproc_atfork_fn child,
                          void *ctx, mproc_atfork_t **out);
/* Remove and free a registration. NULL is a no-op. */
int mproc_atfork_unregister(mproc_atfork_t *handle);

/* 0 in a process started fresh (the program, or a spawned child); one more
 * in each child of a fork than in its parent. */
uint64_t mproc_fork_generation(void);

/*
 * A guard records which process owns a resource (a socket, a client
 * handle). Zero-initialise it (MPROC_GUARD_INIT): it is then owned by no
 * process. mproc_guard_claim marks it as this process's; it is inherited
 * when checked in any other process (a fork child, however made).
 */
typedef struct {
    pid_t owner; /* private: use the functions below */
} mproc_guard_t;
#define MPROC_GUARD_INIT                                                                           \
    {                                                                                              \
        0                                                                                          \
    }

void mproc_guard_claim(mproc_guard_t *g);
/* 1 if g is not this process's (inherited, or never claimed), else 0. A
 * few nanoseconds: no system call. */
int mproc_guard_inherited(const mproc_guard_t *g);

/*
 * The redis-py _checkpid pattern. If g is this process's, returns 0 at
 * once. Otherwise, under a process-wide lock (so racing threads of a child
 * rebuild once, not twice), calls rebuild(ctx) if g is still not ours: it
 * must drop the inherited resource without touching its peer (close the
 * fd; never send QUIT or a TLS close_notify) and make or plan a fresh
 * one. On success (rebuild returns 0) g becomes this process's and the
 * call returns 1; a negative result from rebuild is returned as is and g
 * stays unowned, so the next call retries.
 */
typedef int (*mproc_guard_fn)(void *ctx);
int mproc_guard_ensure(mproc_guard_t *g, mproc_guard_fn rebuild, void *ctx);

/* Per-process lazy initialisation: init(ctx) runs once in each process
 * that calls mproc_once on o (a zero-initialised MPROC_ONCE_INIT). */
typedef mproc_guard_t mproc_once_t;
#define MPROC_ONCE_INIT MPROC_GUARD_INIT
int mproc_once(mproc_once_t *o, mproc_guard_fn init, void *ctx);

/*
 * For code that forks by hand: close every fd >= 3 except keep[0..n)
 * (close_range where the kernel has it). n up to 1024, -EINVAL beyond.
 */
int mproc_close_fds_except(const int *keep, size_t n);

/*
 * Child exit hooks (P6): fn(ctx) runs when this process, a child started by
 * mproc under any method, returns from its entry, before it leaves with
 * _exit: the place to stop and join the threads it started. Hooks run in
 * reverse registration order; a fork child does not inherit its parent's.
 * At most 32 per process (-ENOMEM beyond).
 */
int mproc_on_child_exit(mproc_atfork_fn fn, void *ctx);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_H */
