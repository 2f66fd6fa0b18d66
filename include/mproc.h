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
    MPROC_ENOINIT = -10008,    /* spawned child's main skipped mproc_init  */
    MPROC_EBROKEN = -10009,    /* barrier broken (timeout, abort, death)   */
    MPROC_ETYPE = -10010,      /* shared object is not of the type asked   */
    MPROC_EWORKER = -10011,    /* the worker running the task died         */
    MPROC_ETASK = -10012       /* some tasks of a map failed (see statuses) */
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

struct mproc_shm;
/*
 * Hand a shared memory segment to the child (its fd, at the same number):
 * the child then calls mproc_shm_attach with a mproc_shm_ref_t it was
 * given in its argument. Same rules as mproc_process_pass_fd.
 */
int mproc_process_pass_shm(mproc_process_t *p, const struct mproc_shm *shm);

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

/* ------------------------------------------------------------------------ */
/* Shared memory (docs/shm.md)                                              */
/* ------------------------------------------------------------------------ */

/*
 * A segment is a mapping of shared memory holding an arena: sync objects,
 * typed arrays and raw blocks are allocated in it, by name or not, so one
 * segment hands many objects to a child at once.
 *
 *  - Anonymous segments (a memfd) reach children only: inherited under
 *    fork, handed over with mproc_process_pass_shm under spawn and
 *    forkserver. The kernel frees them with their last user.
 *  - Named segments live in /dev/shm as "mproc-<name>", created 0600 and
 *    exclusively (-EEXIST if the name is taken). An unrelated process of
 *    the same user opens them by name. A NULL name gives an unpredictable
 *    one (96 random bits); chosen names are for rendezvous between
 *    processes that cannot be told a name. The resource tracker unlinks a
 *    named segment whose creator died without unlinking it, once no
 *    process uses it (docs/tracker.md); call mproc_shm_unlink when done.
 *
 * A mproc_shm_t is this process's handle: its mapping and its fd, which
 * must stay open while the segment is in use (its lock is how the tracker
 * and `mproc clean` know the segment is in use). Objects inside hold no
 * pointers, only offsets, so a segment can be mapped at a different address
 * in every process. Handles may be used from several threads; close must
 * not race with other calls on the same handle. Do not close a segment
 * while this process holds a lock that lives in it.
 */

typedef struct mproc_shm mproc_shm_t;

/* Longest name of a segment or of an object in an arena, in bytes. Names
 * are made of [A-Za-z0-9._-] and do not start with '.'. */
#define MPROC_NAME_MAX 63

/* Bytes of arena bookkeeping per object (round an arena size up by it). */
#define MPROC_SHM_OBJECT_OVERHEAD 128

/* size: bytes of arena wanted (objects plus MPROC_SHM_OBJECT_OVERHEAD
 * each); a page more is mapped for the header. -EINVAL for 0. */
int mproc_shm_create(mproc_shm_t **out, size_t size);
/* name NULL: generate one (read it with mproc_shm_name). */
int mproc_shm_create_named(mproc_shm_t **out, size_t size, const char *name);
/*
 * Open a named segment. -ENOENT if there is none; MPROC_ETYPE if the file
 * is not a mproc segment (or of another version); -EPERM if another user
 * owns it.
 */
int mproc_shm_open(mproc_shm_t **out, const char *name);

/*
 * A reference to a segment that can cross to a child: put it in the
 * child's argument, pass the segment with mproc_process_pass_shm, and call
 * mproc_shm_attach in the child. Under fork the child gets the mapping the
 * parent has (same address); under spawn and forkserver a new mapping of
 * the same memory.
 */
typedef struct {
    uint32_t magic;
    int32_t fd;
    uint8_t id[16];
} mproc_shm_ref_t;

int mproc_shm_ref(const mproc_shm_t *shm, mproc_shm_ref_t *ref);
/* -EBADF if the fd was not passed, MPROC_ETYPE if it is another segment. */
int mproc_shm_attach(mproc_shm_t **out, const mproc_shm_ref_t *ref);

/* The name given or generated (NULL for an anonymous segment). */
const char *mproc_shm_name(const mproc_shm_t *shm);
/* The arena's size in bytes (what was asked, rounded up). */
size_t mproc_shm_size(const mproc_shm_t *shm);
/* The segment's fd (for mproc_process_pass_fd and the like). */
int mproc_shm_fd(const mproc_shm_t *shm);

/*
 * Keep a named segment this process created after it exits: the resource
 * tracker forgets it and will not unlink it (for state prepared by one
 * command and used by processes started later). Removing it is then the
 * caller's business: mproc_shm_unlink from any process that opens it; or
 * `mproc clean`, which removes every unused mproc segment, kept ones too.
 * -EINVAL for an anonymous segment.
 */
int mproc_shm_keep(mproc_shm_t *shm);

/* Remove the name: mappings stay valid, new opens fail. -ENOENT if already
 * gone, -EINVAL for an anonymous segment. */
int mproc_shm_unlink(mproc_shm_t *shm);
/* Unmap and release this handle (NULL is a no-op). Objects in the segment
 * are invalid in this process afterwards. */
int mproc_shm_close(mproc_shm_t *shm);

/* Object types in an arena. */
typedef enum {
    MPROC_OBJ_ANY = 0, /* for mproc_shm_find: any type */
    MPROC_OBJ_BYTES = 1,
    MPROC_OBJ_LOCK,
    MPROC_OBJ_RLOCK,
    MPROC_OBJ_SEMAPHORE,
    MPROC_OBJ_CONDITION,
    MPROC_OBJ_EVENT,
    MPROC_OBJ_BARRIER,
    MPROC_OBJ_ARRAY,
    MPROC_OBJ_QUEUE
} mproc_obj_type_t;

/*
 * Raw bytes from the arena, 64-byte aligned, zeroed. name may be NULL
 * (unnamed: reach it by offset). -ENOMEM if the arena is full, -EEXIST if
 * the name is taken, -EINVAL for size 0 or a bad name.
 */
int mproc_shm_alloc(mproc_shm_t *shm, size_t size, const char *name, void **out);
/* Return any object (sync objects included) to the arena. No process may
 * use it any more. -EINVAL if ptr is not an object of this arena. */
int mproc_shm_free(mproc_shm_t *shm, void *ptr);
/* An object by name; -ENOENT, or MPROC_ETYPE if it has another type. */
int mproc_shm_find(mproc_shm_t *shm, const char *name, mproc_obj_type_t type, void **out);
/* An object's offset in its segment, the same in every process. */
int mproc_shm_offset(const mproc_shm_t *shm, const void *ptr, uint64_t *offset);
/* The object at offset; -EINVAL if none starts there, MPROC_ETYPE. */
int mproc_shm_at(mproc_shm_t *shm, uint64_t offset, mproc_obj_type_t type, void **out);
/* Size in bytes an object was allocated with (0 if ptr is not one). */
size_t mproc_shm_object_size(const mproc_shm_t *shm, const void *ptr);

/* Typed arrays (Python's Value and Array): elements of a C type, zeroed.
 * A single value is an array of one. */
typedef enum {
    MPROC_INT8 = 1,
    MPROC_UINT8,
    MPROC_INT16,
    MPROC_UINT16,
    MPROC_INT32,
    MPROC_UINT32,
    MPROC_INT64,
    MPROC_UINT64,
    MPROC_FLOAT,
    MPROC_DOUBLE
} mproc_ctype_t;

int mproc_array_create(mproc_shm_t *shm, const char *name, mproc_ctype_t type, size_t count,
                       void **out);
/* Open by name: MPROC_ETYPE if the element type differs; *count (may be
 * NULL) receives the number of elements. */
int mproc_array_open(mproc_shm_t *shm, const char *name, mproc_ctype_t type, void **out,
                     size_t *count);

/* ------------------------------------------------------------------------ */
/* Synchronisation (docs/sync.md)                                           */
/* ------------------------------------------------------------------------ */

/*
 * Every object lives in a segment's arena and is process-shared: there is
 * no process-private variant to pick by mistake (P8). Each has
 * mproc_X_create(shm, name, ..., &obj) (name may be NULL) and, for a named
 * one, mproc_X_open(shm, name, &obj); mproc_shm_free destroys it. The
 * pointer is valid in the process that created or opened it; another
 * process reaches the same object through its own mapping (open by name, or
 * mproc_shm_offset / mproc_shm_at).
 *
 * Every wait takes timeout_ms (MPROC_FOREVER, 0 to poll), measured on the
 * monotonic clock, is EINTR-safe, and fails with -ETIMEDOUT when it
 * expires. Owners are threads: a lock taken by one thread is released by
 * the same thread. Robustness needs the thread's robust list, which glibc
 * keeps for every thread it creates and for the child of fork(); a thread
 * made by raw clone() takes locks that work but are not recovered at its
 * death. A child made by _Fork() or a raw fork system call runs no at-fork
 * handlers, so mproc's per-thread state there is its parent's: it must not
 * use mproc's locks (nor mproc at all) before it execs or exits.
 */

/*
 * lock: non-recursive and robust (P9). If its holder dies (or its thread
 * exits) holding it, the next acquirer gets -EOWNERDEAD and holds the lock:
 * repair what it protects and call mproc_lock_consistent, or release it
 * without that and every later acquire fails with -ENOTRECOVERABLE.
 * acquire: 0, -ETIMEDOUT, -EOWNERDEAD (held), -ENOTRECOVERABLE, -EDEADLK
 * (the caller holds it already). release: -EPERM if the caller does not
 * hold it.
 */
typedef struct mproc_lock mproc_lock_t;
int mproc_lock_create(mproc_shm_t *shm, const char *name, mproc_lock_t **out);
int mproc_lock_open(mproc_shm_t *shm, const char *name, mproc_lock_t **out);
int mproc_lock_acquire(mproc_lock_t *lock, int timeout_ms);
int mproc_lock_release(mproc_lock_t *lock);
int mproc_lock_consistent(mproc_lock_t *lock);

/* rlock: recursive, owned by a (process, thread); released as many times as
 * acquired (-EOVERFLOW past 2^32 - 1 levels). Robust like lock
 * (-EOWNERDEAD, mproc_rlock_consistent). */
typedef struct mproc_rlock mproc_rlock_t;
int mproc_rlock_create(mproc_shm_t *shm, const char *name, mproc_rlock_t **out);
int mproc_rlock_open(mproc_shm_t *shm, const char *name, mproc_rlock_t **out);
int mproc_rlock_acquire(mproc_rlock_t *lock, int timeout_ms);
int mproc_rlock_release(mproc_rlock_t *lock);
int mproc_rlock_consistent(mproc_rlock_t *lock);

/*
 * semaphore: a counter. max 0: unbounded (up to INT32_MAX, -EOVERFLOW
 * past it); max > 0: a bounded semaphore, whose release past max fails
 * with -EOVERFLOW and changes nothing. A semaphore has no owner: a process
 * that dies between acquire and release loses that unit.
 */
typedef struct mproc_semaphore mproc_semaphore_t;
int mproc_semaphore_create(mproc_shm_t *shm, const char *name, unsigned value, unsigned max,
                           mproc_semaphore_t **out);
int mproc_semaphore_open(mproc_shm_t *shm, const char *name, mproc_semaphore_t **out);
int mproc_semaphore_acquire(mproc_semaphore_t *sem, int timeout_ms);
int mproc_semaphore_release(mproc_semaphore_t *sem);
/* The current count (a snapshot). */
int mproc_semaphore_value(const mproc_semaphore_t *sem);

/*
 * condition: wait / notify over a lock of the same segment (lock NULL: the
 * condition makes its own; mproc_condition_lock returns it). wait and
 * notify require the caller to hold the lock (-EPERM otherwise). wait
 * releases it, sleeps, and re-acquires it before returning, also on
 * -ETIMEDOUT; -EOWNERDEAD as for lock (the lock is held). Wake-ups may be
 * spurious: wait in a loop over the predicate. A waiter that dies leaves
 * nothing behind; a notifier that dies holding the lock is lock's case.
 */
typedef struct mproc_condition mproc_condition_t;
int mproc_condition_create(mproc_shm_t *shm, const char *name, mproc_lock_t *lock,
                           mproc_condition_t **out);
int mproc_condition_open(mproc_shm_t *shm, const char *name, mproc_condition_t **out);
mproc_lock_t *mproc_condition_lock(mproc_condition_t *cond);
int mproc_condition_wait(mproc_condition_t *cond, int timeout_ms);
/* Wake up to n waiters (n >= 1). */
int mproc_condition_notify(mproc_condition_t *cond, int n);
int mproc_condition_notify_all(mproc_condition_t *cond);

/* event: a flag processes wait for. */
typedef struct mproc_event mproc_event_t;
int mproc_event_create(mproc_shm_t *shm, const char *name, mproc_event_t **out);
int mproc_event_open(mproc_shm_t *shm, const char *name, mproc_event_t **out);
int mproc_event_set(mproc_event_t *ev);
int mproc_event_clear(mproc_event_t *ev);
/* 1 if set, 0 if not. */
int mproc_event_is_set(const mproc_event_t *ev);
/* 0 once set (at once if it is), -ETIMEDOUT. A set wakes every waiter of
 * the moment, even if the event is cleared again before it runs. */
int mproc_event_wait(mproc_event_t *ev, int timeout_ms);

/*
 * barrier: parties processes (or threads) meet. wait returns the caller's
 * arrival index, 0..parties-1 (exactly one caller gets parties-1, the last
 * to arrive). A wait that times out breaks the barrier and returns
 * -ETIMEDOUT; every other waiter, and every wait until reset, returns
 * MPROC_EBROKEN. abort breaks it; reset makes it usable again (current
 * waiters get MPROC_EBROKEN). A party that dies inside the barrier's
 * bookkeeping breaks it; one that dies while waiting counts as arrived; a
 * party that dies before arriving is seen through the others' timeouts or
 * an abort by whoever watches it (docs/sync.md).
 */
typedef struct mproc_barrier mproc_barrier_t;
int mproc_barrier_create(mproc_shm_t *shm, const char *name, unsigned parties,
                         mproc_barrier_t **out);
int mproc_barrier_open(mproc_shm_t *shm, const char *name, mproc_barrier_t **out);
int mproc_barrier_wait(mproc_barrier_t *b, int timeout_ms);
int mproc_barrier_abort(mproc_barrier_t *b);
int mproc_barrier_reset(mproc_barrier_t *b);
/* 1 if broken, 0 if not. */
int mproc_barrier_is_broken(mproc_barrier_t *b);
unsigned mproc_barrier_parties(const mproc_barrier_t *b);
/* Parties waiting now (a snapshot). */
unsigned mproc_barrier_n_waiting(const mproc_barrier_t *b);

/* ------------------------------------------------------------------------ */
/* Connections (docs/connection.md)                                         */
/* ------------------------------------------------------------------------ */

/*
 * A connection carries whole messages, 0 bytes up to a maximum, and file
 * descriptors with them, between two processes over a Unix stream socket
 * (Python's Connection, for bytes: the caller chooses the serialisation).
 * A message arrives whole or not at all: a receiver never sees part of
 * one, and never allocates by a length the peer claims (memory grows with
 * the bytes that actually arrived). Sends never raise SIGPIPE.
 *
 * Errors particular to connections:
 *  -EMSGSIZE     send: the message is larger than the connection's maximum
 *                (nothing sent). recv: the next message is larger than the
 *                buffer (it stays queued; *len says how large it is), or
 *                than the maximum (it is dropped as it arrives, fds closed;
 *                *len is the size it claimed; the next recv goes on after it).
 *  -EPIPE        the peer closed its end (recv: between two messages, once
 *                every whole message was received; send: the peer is gone).
 *  -ECONNRESET   the peer went away part-way through a message (killed
 *                mid-send): the partial message is dropped.
 *  MPROC_EPROTO  the byte stream is not mproc's framing (a foreign or
 *                corrupt writer); receiving is over after that.
 *                (-EPIPE, -ECONNRESET and MPROC_EPROTO from recv are
 *                sticky: every later recv returns the same.)
 *  -EBADF        the call needs the direction this end does not have
 *                (one-way pair).
 *  -ETIMEDOUT    the timeout expired. A recv that times out mid-message
 *                keeps what arrived and resumes at the next call. A send
 *                that times out after part of a message went out leaves
 *                the sending side unusable (later sends: MPROC_EPROTO), as
 *                the peer would otherwise see half a message: close it.
 *
 * A connection may be used by one sending and one receiving thread at a
 * time; close must not race with other calls.
 */
typedef struct mproc_conn mproc_conn_t;

/* The default largest message, and the hard limit, in bytes. */
#define MPROC_CONN_MAX_DEFAULT (64u << 20)
#define MPROC_CONN_MAX_LIMIT 0xffffffffu
/* File descriptors one message can carry. */
#define MPROC_CONN_FDS_MAX 64

typedef struct {
    size_t max_message; /* 0: MPROC_CONN_MAX_DEFAULT; -EINVAL past the limit */
} mproc_conn_opts_t;

/*
 * A connected pair (Python's Pipe()). duplex non-zero: both ends send and
 * receive. duplex 0: *a only receives and *b only sends (the
 * order of Python's Pipe(duplex=False)). opts may be NULL.
 */
int mproc_pipe(mproc_conn_t **a, mproc_conn_t **b, int duplex, const mproc_conn_opts_t *opts);

int mproc_conn_send(mproc_conn_t *c, const void *buf, size_t len, int timeout_ms);
/* Send a message with nfds (<= MPROC_CONN_FDS_MAX, else -EINVAL) fds,
 * which stay open here; the receiver gets its own copies. */
int mproc_conn_send_fds(mproc_conn_t *c, const void *buf, size_t len, const int *fds, size_t nfds,
                        int timeout_ms);

/* Receive the next message into buf (cap bytes); *len gets its length.
 * A message that carried fds has them closed: use recv_fds to take them. */
int mproc_conn_recv(mproc_conn_t *c, void *buf, size_t cap, size_t *len, int timeout_ms);
/* Same, with up to maxfds fds received into fds (close-on-exec, now the
 * caller's) and their count in *nfds; fds beyond maxfds are closed and the
 * call returns 0 with the message. */
int mproc_conn_recv_fds(mproc_conn_t *c, void *buf, size_t cap, size_t *len, int *fds,
                        size_t maxfds, size_t *nfds, int timeout_ms);
/* Receive into a buffer from malloc (free it; never NULL on success, even
 * for 0 bytes). */
int mproc_conn_recv_alloc(mproc_conn_t *c, void **buf, size_t *len, int timeout_ms);

/* 1 when a recv would not block (a whole message is buffered, or the
 * peer's end or an error is pending), 0 when the timeout expired first.
 * It reads ahead to tell, into the handle's buffer (which grows to hold a
 * large message as its bytes arrive). */
int mproc_conn_poll(mproc_conn_t *c, int timeout_ms);
/*
 * The socket, for an event loop (owned by c: do not read, write or close
 * it). Readable means bytes arrived, not that a whole message did: when it
 * fires, call recv with timeout 0 until -ETIMEDOUT. The connection reads
 * ahead, so also drain before going back to the loop: a message already
 * buffered does not make the fd readable (mproc_conn_poll(c, 0) tells).
 */
int mproc_conn_fd(const mproc_conn_t *c);
size_t mproc_conn_max_message(const mproc_conn_t *c);
/* Close this end (NULL is a no-op). The peer's recv gets -EPIPE once it
 * has read every whole message sent before. */
int mproc_conn_close(mproc_conn_t *c);

/*
 * Handing a connection to a child, the same code under every method: put
 * a mproc_conn_ref_t in the child's argument, pass the connection with
 * mproc_process_pass_conn, and call mproc_conn_attach in the child. The
 * parent usually closes its copy of the child's end once the child
 * started. Messages the parent's handle had already read ahead stay
 * there: hand an end over before receiving on it. A fork child also holds
 * a copy of the parent's end (every fd is copied), so it does not see
 * -EPIPE when the parent closes: end with a message, or close that handle
 * in the child.
 */
typedef struct {
    uint32_t magic;
    int32_t fd;
    uint32_t flags;
    uint32_t max_message;
    uint64_t ino; /* the socket's inode: attach checks it */
} mproc_conn_ref_t;

int mproc_conn_ref(const mproc_conn_t *c, mproc_conn_ref_t *ref);
int mproc_process_pass_conn(mproc_process_t *p, const mproc_conn_t *c);
/* -EBADF if the fd was not passed, MPROC_ETYPE if it is not that socket. */
int mproc_conn_attach(mproc_conn_t **out, const mproc_conn_ref_t *ref);

/*
 * Listener and client (Python's Listener and Client): connections between
 * processes that do not share a parent, over a Unix socket path. Nothing is
 * ever bound in the abstract namespace (P12).
 *
 * A listener made without a path binds "listener" in a new private
 * directory (0700, unpredictable name) under $XDG_RUNTIME_DIR, else /tmp;
 * with a path, it binds there (-EADDRINUSE if something exists there) and
 * sets the socket 0600. Every peer's credentials are read from the kernel
 * (SO_PEERCRED) as it is accepted: a peer that allow refuses (default:
 * only this process's effective uid) is closed before any byte is read,
 * and accept goes on waiting. close unlinks the socket (and the directory
 * it made) when called in the process that created the listener; in a
 * fork child it only closes the fd.
 */
typedef struct mproc_listener mproc_listener_t;

typedef struct {
    const char *path;   /* NULL: a private directory, see above          */
    int backlog;        /* 0: 128                                         */
    size_t max_message; /* for accepted connections (0: the default)    */
    /* Non-zero to let the peer in; NULL: same effective uid only. */
    int (*allow)(void *ctx, pid_t pid, uid_t uid, gid_t gid);
    void *allow_ctx;
} mproc_listener_opts_t;

int mproc_listener_create(mproc_listener_t **out, const mproc_listener_opts_t *opts);
const char *mproc_listener_path(const mproc_listener_t *l);
/* The listening socket, readable when a peer is waiting (owned by l). */
int mproc_listener_fd(const mproc_listener_t *l);
/* The next allowed peer; -ETIMEDOUT. */
int mproc_listener_accept(mproc_listener_t *l, mproc_conn_t **out, int timeout_ms);
int mproc_listener_close(mproc_listener_t *l);

/*
 * Connect to a listener's path. The listener's owner must be this
 * process's effective uid or root (-EACCES otherwise, checked with
 * SO_PEERCRED before anything is sent). -ENOENT / -ECONNREFUSED if nobody
 * listens there; a full backlog is waited out until the timeout (0: one
 * try). opts may be NULL.
 */
int mproc_client_connect(mproc_conn_t **out, const char *path, const mproc_conn_opts_t *opts,
                         int timeout_ms);

/* ------------------------------------------------------------------------ */
/* Queues (docs/queue.md)                                                   */
/* ------------------------------------------------------------------------ */

/*
 * A queue of byte messages in shared memory: many producers, many
 * consumers, bounded, each message 0 bytes up to the queue's maximum.
 * Python's Queue, SimpleQueue and JoinableQueue are all this object (a
 * joinable one is made with MPROC_QUEUE_JOINABLE).
 *
 * Messages sit in a byte ring in FIFO order, each taking its length
 * rounded up to 8 plus 8 bytes: there are no slots, so every size up to
 * the maximum takes the same path. Producers take turns under one robust
 * lock and consumers under another, so a producer and a consumer never
 * wait for each other except on a full or empty ring.
 *
 * Death of any party (docs/queue.md): a producer killed inside put has put
 * the whole message or none of it; a consumer killed inside get has taken
 * the message (it is lost with the consumer) or left it at the head of the
 * queue for the next get. Nobody else blocks because of it.
 *
 * A mproc_queue_t is this process's handle; the queue itself lives in a
 * segment's arena (or in a segment of its own). A handle may be used from
 * several threads at once; close must not race with other calls.
 */
typedef struct mproc_queue mproc_queue_t;

#define MPROC_QUEUE_JOINABLE 1u /* task_done / join                      */
#define MPROC_QUEUE_POLLABLE 2u /* mproc_queue_fd: an fd for "not empty"  */

typedef struct {
    size_t capacity;    /* ring bytes, rounded up to a power of two
                           (0: 64 KiB; at least 4 KiB, at most 1 GiB)   */
    size_t max_message; /* 0: capacity / 4; at most capacity - 8       */
    unsigned max_count; /* messages at most (Python's maxsize); 0: no
                           limit but the bytes                          */
    unsigned flags;     /* MPROC_QUEUE_*                                */
    int spin_us;        /* how long a get on an empty queue (or a put on
                           a full one) spins before it sleeps; 0: the
                           default (docs/queue.md), -1: never spin      */
} mproc_queue_opts_t;

/*
 * Create a queue in shm's arena (name may be NULL), or, with shm NULL, in
 * an anonymous segment of its own that the handle owns (name must be NULL
 * then). opts may be NULL (all defaults). -ENOMEM if the arena is too
 * small (a queue needs its capacity plus 512 bytes of it).
 */
int mproc_queue_create(mproc_shm_t *shm, const char *name, const mproc_queue_opts_t *opts,
                       mproc_queue_t **out);
/* Open a named queue. A queue created POLLABLE has no fd here: the fd
 * reaches only processes handed the queue (mproc_queue_attach). */
int mproc_queue_open(mproc_shm_t *shm, const char *name, mproc_queue_t **out);

/* Put a message; waits while the queue is full. -EMSGSIZE past the
 * maximum. With timeout 0 (and for get too) nothing waits for room or
 * for a message, but a call may wait for another process to finish a
 * copy it is in the middle of, rather than answer wrongly. */
int mproc_queue_put(mproc_queue_t *q, const void *msg, size_t len, int timeout_ms);
/*
 * Take the oldest message into buf (cap bytes), its length in *len; waits
 * while the queue is empty. -EMSGSIZE if cap is too small: the message
 * stays at the head and *len says how large it is. MPROC_EPROTO if the
 * ring's contents are corrupt (something wrote over the segment).
 */
int mproc_queue_get(mproc_queue_t *q, void *buf, size_t cap, size_t *len, int timeout_ms);

/* Snapshots: messages in the queue; 1 if empty / 0; 1 if a put of an
 * empty message would wait / 0. */
size_t mproc_queue_qsize(const mproc_queue_t *q);
int mproc_queue_empty(const mproc_queue_t *q);
int mproc_queue_full(const mproc_queue_t *q);
size_t mproc_queue_max_message(const mproc_queue_t *q);

/* JOINABLE queues: a consumer calls task_done once per message it got
 * (-EOVERFLOW if more than were put, MPROC_ETYPE if not joinable); join
 * waits until every message put has been marked done. A consumer that
 * dies before task_done leaves join waiting (use its timeout). */
int mproc_queue_task_done(mproc_queue_t *q);
int mproc_queue_join(mproc_queue_t *q, int timeout_ms);

/*
 * POLLABLE queues: an fd (owned by q) that polls readable when the queue
 * may have messages. When it fires, get with timeout 0 until -ETIMEDOUT;
 * a get that finds the queue empty clears it. MPROC_ETYPE if the queue is
 * not pollable, -ENOTSUP on a handle from mproc_queue_open.
 */
int mproc_queue_fd(const mproc_queue_t *q);

/* Release this handle (NULL is a no-op); the queue stays in its arena
 * until mproc_queue_free. A queue in its own segment goes with the last
 * handle of the last process. */
int mproc_queue_close(mproc_queue_t *q);
/* Close the handle and return the queue's memory to its arena: no process
 * may use the queue any more. */
int mproc_queue_free(mproc_queue_t *q);

/*
 * Handing a queue to a child, the same code under every method: put a
 * mproc_queue_ref_t in the child's argument, pass the queue with
 * mproc_process_pass_queue (its segment, and its fd if pollable), and
 * call mproc_queue_attach in the child, which attaches the segment too.
 */
typedef struct {
    mproc_shm_ref_t shm;
    uint64_t offset;
    int32_t efd;
    uint32_t magic;
} mproc_queue_ref_t;

int mproc_queue_ref(const mproc_queue_t *q, mproc_queue_ref_t *ref);
int mproc_process_pass_queue(mproc_process_t *p, const mproc_queue_t *q);
int mproc_queue_attach(mproc_queue_t **out, const mproc_queue_ref_t *ref);

/* ------------------------------------------------------------------------ */
/* Pool (docs/pool.md)                                                      */
/* ------------------------------------------------------------------------ */

/*
 * A pool of worker processes that run tasks (Python's Pool, for C
 * functions and bytes). A worker that dies, whatever kills it, is replaced
 * at once; the one task it was running fails with MPROC_EWORKER (or runs
 * again, if retries allow), tasks it had not started go to other workers,
 * and every other task completes normally: no call waits for a dead
 * worker (P10).
 *
 * Tasks travel through shared memory: a submitted task's argument and its
 * result live in the pool's arena, and the workers are told only where.
 * The arena bounds what is in flight: a submission that finds it full
 * waits (back-pressure) while results are collected.
 *
 * The pool runs no thread: results are collected, callbacks run and dead
 * workers are replaced inside pool calls (any wait, map, or
 * mproc_pool_poll), in the calling thread. One thread at a time may use a
 * pool. Workers are daemons: they die with the process that made the pool.
 */

/*
 * A task function, run in a worker on arg[0, len): writes up to cap bytes
 * of result into out and their count into *out_len (0 if untouched), and
 * returns 0 or a negative code that becomes the task's error. Like an
 * entry, it must live in the executable or a library the workers load.
 */
typedef int (*mproc_task_fn)(const void *arg, size_t len, void *out, size_t cap, size_t *out_len);

typedef struct mproc_pool mproc_pool_t;

typedef struct {
    int workers;                 /* 0: the CPUs this process may run on   */
    mproc_start_method_t method; /* MPROC_START_DEFAULT: the global default */
    /* Run once in each worker before its first task (replacements too),
     * with a copy of init_arg: the place to open a per-worker connection.
     * A non-zero return makes the worker exit (and be replaced). */
    mproc_entry_fn init;
    const void *init_arg;
    size_t init_len;
    unsigned max_tasks_per_child; /* a worker is replaced after this many
                                     tasks (0: never); a map's chunk is one
                                     task, as in Python                   */
    unsigned retries;             /* runs again of a task whose worker died (0)  */
    size_t max_result;            /* largest result of an apply (0: 64 KiB)      */
    size_t arena;                 /* bytes for tasks in flight (0: 64 MiB)       */
} mproc_pool_opts_t;

/* Start the workers. opts may be NULL (all defaults). */
int mproc_pool_create(mproc_pool_t **out, const mproc_pool_opts_t *opts);

/* How one task ended. */
typedef struct {
    int rc;     /* 0, the task's own negative code, MPROC_EWORKER (its
                   worker died while running it), or -ECANCELED (the pool
                   was terminated first)                                 */
    int status; /* MPROC_EWORKER: how the worker ended, as
                   mproc_process_exitcode: -signal, or an exit status     */
} mproc_task_status_t;

/*
 * map: out[i] = fn(in[i]) for count items of in_size bytes in, out_size
 * bytes out (a result shorter than out_size leaves the rest zeroed).
 * chunk: items per task (0: automatic, about count / (4 * workers)).
 * Returns 0 when every item succeeded, MPROC_ETASK when some failed (st,
 * which may be NULL, gets every item's status), -ETIMEDOUT (items still
 * running are abandoned: their results are dropped when they come).
 */
int mproc_pool_map(mproc_pool_t *pool, mproc_task_fn fn, const void *in, size_t in_size, void *out,
                   size_t out_size, size_t count, size_t chunk, mproc_task_status_t *st,
                   int timeout_ms);

/* A task in flight (Python's AsyncResult). */
typedef struct mproc_task mproc_task_t;
/* Called (in a pool call, in the calling thread) when a task has ended. */
typedef void (*mproc_task_cb)(void *ctx, mproc_task_t *task);

/*
 * Submit fn(arg) and return at once with a handle (cb may be NULL).
 * The task takes len plus max_result bytes of the arena until its handle
 * is freed. timeout_ms bounds the wait for arena room (-ETIMEDOUT);
 * -ENOBUFS when the arena is full of results not freed yet (waiting could
 * not help: free some); -E2BIG if the task alone cannot fit the arena.
 */
int mproc_pool_apply_async(mproc_pool_t *pool, mproc_task_fn fn, const void *arg, size_t len,
                           mproc_task_cb cb, void *ctx, mproc_task_t **out, int timeout_ms);
/* 0 once the task ended, -ETIMEDOUT. */
int mproc_task_wait(mproc_task_t *task, int timeout_ms);
/* 1 if the task ended, 0 if not (collects results first, no wait). */
int mproc_task_ready(mproc_task_t *task);
/* An ended task's result (valid until mproc_task_free) and status;
 * returns the status's rc. MPROC_ESTATE if it has not ended. */
int mproc_task_result(const mproc_task_t *task, const void **buf, size_t *len,
                      mproc_task_status_t *st);
/* Forget the task (its result is dropped whenever it ends). */
int mproc_task_free(mproc_task_t *task);

/* apply: apply_async, wait, copy the result into out (-EMSGSIZE if cap is
 * too small, *out_len saying how much), free. Returns the task's rc. */
int mproc_pool_apply(mproc_pool_t *pool, mproc_task_fn fn, const void *arg, size_t len, void *out,
                     size_t cap, size_t *out_len, mproc_task_status_t *st, int timeout_ms);

/*
 * imap and imap_unordered, for streams whose length is not known up
 * front: put items one by one (a put waits for arena room, up to
 * timeout_ms: back-pressure; -ENOBUFS when only taking results would make
 * room), take results with next, in the order the
 * items were put (ordered non-zero) or as they end. next returns the
 * item's rc (0, the task's code, MPROC_EWORKER...) with *index the item's
 * number (0 for the first put) and st (may be NULL) its status;
 * -EMSGSIZE if cap is too small (the result stays, *len says its size);
 * -ENODATA when every item put so far was taken; -ETIMEDOUT.
 */
typedef struct mproc_imap mproc_imap_t;
int mproc_pool_imap(mproc_pool_t *pool, mproc_task_fn fn, int ordered, mproc_imap_t **out);
int mproc_imap_put(mproc_imap_t *it, const void *arg, size_t len, int timeout_ms);
int mproc_imap_next(mproc_imap_t *it, void *out, size_t cap, size_t *len, uint64_t *index,
                    mproc_task_status_t *st, int timeout_ms);
/* Forget the stream (items still running end on their own). */
int mproc_imap_free(mproc_imap_t *it);

/* Collect results, run callbacks, replace dead workers: waits up to
 * timeout_ms for something to happen; returns how many events (reports
 * of finished ranges, workers that exited) were handled. */
int mproc_pool_poll(mproc_pool_t *pool, int timeout_ms);
/* An fd that polls readable when mproc_pool_poll has something to do. */
int mproc_pool_fd(const mproc_pool_t *pool);

/* No more tasks (MPROC_ESTATE after, and on a second close); the workers
 * go on with the tasks submitted, and exit when join has seen them done. */
int mproc_pool_close(mproc_pool_t *pool);
/* Kill the workers now; tasks not ended get -ECANCELED. */
int mproc_pool_terminate(mproc_pool_t *pool);
/* After close or terminate: wait for every task and worker to end. */
int mproc_pool_join(mproc_pool_t *pool, int timeout_ms);
/* Free the pool (terminating it first if it still runs). Free task
 * handles and imap streams before; after this, the only call allowed on
 * one is mproc_task_free / mproc_imap_free, which releases its memory. */
int mproc_pool_free(mproc_pool_t *pool);
/* Workers started so far, replacements included (a snapshot). */
unsigned mproc_pool_workers_started(const mproc_pool_t *pool);

/* ------------------------------------------------------------------------ */
/* Supervisor (docs/supervisor.md)                                          */
/* ------------------------------------------------------------------------ */

/*
 * A master that runs N copies of a command and keeps them running, as
 * gunicorn's master and systemd do: what `mproc run` is. It binds the
 * listening sockets once and hands them to every worker as fds 3.. with
 * LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES (systemd socket activation),
 * gives each worker NOTIFY_SOCKET (sd_notify: READY=1, WATCHDOG=1, and
 * MPROC_RECYCLE=1 to ask for a successor), MPROC_WORKER_ID (a slot number
 * 0..N-1 its replacement reuses) and MPROC_WORKERS, and replaces workers
 * that exit, per the restart policy, with exponential back-off between
 * quick deaths of one slot. A worker that exits with
 * MPROC_EXIT_NO_RESTART (3) is not restarted; its slot stays empty.
 *
 * Signals (blocked in the calling thread and read from a signalfd, so none
 * is lost and no handler runs): TERM and INT stop gracefully (SIGTERM,
 * then SIGKILL after the graceful timeout) and return 0; QUIT kills every
 * worker at once and returns 0; HUP starts a new generation and stops the
 * old one once the new one is up (ready, with opts.ready); TTIN and TTOU
 * add and remove one worker; with opts.upgrade, USR2 re-executes the
 * master's own executable with its own arguments (same pid), and the new
 * image takes the sockets and workers over, starts its own generation and
 * retires the old one as HUP does (docs/supervisor.md, "Upgrading in
 * place"). Workers die with the master (PDEATHSIG), however it dies. One
 * line per event goes to stderr. Under systemd (NOTIFY_SOCKET in the
 * caller's environment) the master itself sends READY=1 with MAINPID once
 * its workers are up, STOPPING=1, and WATCHDOG=1 if WATCHDOG_USEC asks.
 */
typedef enum {
    MPROC_RESTART_ALWAYS = 0,
    MPROC_RESTART_ON_FAILURE, /* exit status other than 0, or a signal */
    MPROC_RESTART_NEVER
} mproc_restart_t;

#define MPROC_EXIT_NO_RESTART 3

typedef struct {
    /* What a worker runs: a command (argv, exec'd after fork), or, in the
     * library's prefork mode, worker() called in the forked child with no
     * exec. Exactly one of the two. */
    char *const *argv; /* the worker command, NULL-terminated (execvp) */
    /* Prefork mode: preload runs once in the master, after the sockets are
     * bound and before any worker starts (load the application, make the
     * shared memory and locks workers will share: they inherit it); a
     * non-zero return stops everything. worker_init (may be NULL) runs in
     * each worker first, a non-zero return being its exit status; worker
     * then runs with the listening sockets (also at fds 3.., with the same
     * environment as a command gets), and what it returns is the worker's
     * exit status. Workers call mproc_notify for READY=1 and WATCHDOG=1. */
    int (*preload)(void *ctx);
    int (*worker_init)(void *ctx, int worker_id);
    int (*worker)(void *ctx, int worker_id, const int *fds, int nfds);
    void *ctx;
    int workers;              /* 0: the CPUs this process may use          */
    const char *const *binds; /* "HOST:PORT", "[IPV6]:PORT", "unix:PATH"  */
    size_t nbinds;
    mproc_restart_t restart;
    unsigned max_restarts;   /* more restarts than this ...               */
    int restart_window_ms;   /* ... within this: give up (0, 0: 10 in 60 s) */
    int graceful_timeout_ms; /* SIGTERM to SIGKILL (0: 30 s)              */
    int timeout_ms;          /* kill a worker silent this long (0: never) */
    int ready;               /* a worker is up only once it sent READY=1  */
    const char *pidfile;     /* NULL: none                                 */
    /* 1: SIGUSR2 re-executes this program in place (same pid, same
     * arguments, from main() again: call mproc_init(&argc, &argv) first),
     * and its next mproc_supervise takes the sockets and workers over
     * (docs/supervisor.md, "Upgrading in place"). 0: USR2 is ignored.
     * `mproc run` sets it. */
    int upgrade;
} mproc_supervisor_opts_t;

/*
 * Run the master until it is stopped. Returns 0 after a stop by signal,
 * 1 after a crash loop (more than max_restarts restarts within the
 * window: every worker is stopped first), or a negative error when it
 * could not start (a bad bind address: -EINVAL; one that is taken:
 * -EADDRINUSE, ...).
 */
int mproc_supervise(const mproc_supervisor_opts_t *opts);

/*
 * 1 if this process image is a master re-executed by SIGUSR2 (an upgrade
 * in place: same pid, the old image's workers still running), whose next
 * mproc_supervise call takes the workers and sockets over; else 0. A
 * program that detaches, writes files or starts helpers in main() before
 * calling mproc_supervise checks this to skip what the first image did
 * already (detaching again would orphan the workers).
 */
int mproc_supervise_upgraded(void);

/*
 * sd_notify for workers of a supervisor (or of systemd): send state (e.g.
 * "READY=1", "WATCHDOG=1", "MPROC_RECYCLE=1") to $NOTIFY_SOCKET. 0 when
 * sent, 0 as well when there is no NOTIFY_SOCKET (not supervised), or a
 * negative error.
 */
int mproc_notify(const char *state);

/* ------------------------------------------------------------------------ */
/* Resource tracker (docs/tracker.md)                                       */
/* ------------------------------------------------------------------------ */

/*
 * The tracker is a helper process (a spawn of this executable, taking over
 * before main) that learns every named segment this process and its fork
 * children create, and unlinks each one whose creator died without
 * unlinking it (SIGKILL included, P7) once no process uses it any more. A
 * segment still mapped by a live process, of this tree or not, is never
 * unlinked; one whose creator lives is left to the creator. It starts with the
 * first named segment created (or with mproc_tracker_start) and ignores
 * SIGINT, SIGTERM and SIGHUP. Children share their parent's tracker: fork
 * children inherit its line, spawn and forkserver children are handed a
 * copy when they start (a child started before its parent had a tracker,
 * or under forkserver with MPROC_PASS_FDS_MAX fds passed, starts its own
 * if it creates a named segment).
 * Once no process holds its line, it reclaims what is unused and exits;
 * segments still in use by processes it does not watch are left to a copy
 * of it that re-checks them every 250 ms until they are reclaimed.
 */
int mproc_tracker_start(void);
/* The tracker's pid, 0 if none is known to this process. */
pid_t mproc_tracker_pid(void);
/*
 * Let go of the tracker: it sweeps and exits once no other process holds
 * its line. If this process started it, wait for that (timeout_ms;
 * -ETIMEDOUT, and the tracker is then left to finish alone and is reaped
 * by the next stop). 0 if there is none.
 */
int mproc_tracker_stop(int timeout_ms);

/*
 * Sweep /dev/shm for mproc segments no live process uses (a tree killed
 * wholesale, tracker included) and unlink them; with MPROC_CLEAN_DRY_RUN
 * only report them. fn (may be NULL) is called once per segment found,
 * with its path. Returns the number of segments found, or a negative
 * error. A segment being created right now is left alone.
 */
#define MPROC_CLEAN_DRY_RUN 1u
typedef void (*mproc_clean_fn)(void *ctx, const char *path);
int mproc_clean(unsigned flags, mproc_clean_fn fn, void *ctx);

#ifdef __cplusplus
}
#endif

#endif /* MPROC_H */
