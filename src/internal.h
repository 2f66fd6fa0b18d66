/*
 * internal.h - declarations shared between the library's files. Nothing here
 * is public API; names carry the mproc__ prefix.
 *
 * Layering (a file only calls files listed before it):
 *   platform  errors  atfork  lock  request  child  spawn  tracker  shm
 *   sync  forkserver  process  channel  queue  pool  upgrade  supervisor  init
 */
#ifndef MPROC_INTERNAL_H
#define MPROC_INTERNAL_H

#include "mproc.h"
#include "platform.h"

#include <stdalign.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>

#define MPROC__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- limits of what crosses a process boundary -------------------------- */
#define MPROC__MAX_FDS 253           /* fds in one request (SCM_MAX_FD)     */
#define MPROC__MAX_NAME 255          /* bytes of a process name             */
#define MPROC__MAX_PATH 4096         /* bytes of a module path              */
#define MPROC__MAX_BUILD_ID 64       /* bytes of a GNU build-id             */
#define MPROC__ARG_MAX MPROC_ARG_MAX /* bytes of an entry argument         */

/* ---- errors.c ----------------------------------------------------------- */
int mproc__log_enabled(void); /* a hook is installed */
void mproc__log(mproc_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- atfork.c ----------------------------------------------------------- */
/* Run fn in the child of every fork (mproc's or a raw fork()), before the
 * user's child callbacks, in registration order (at most 16 hooks; a hook
 * registered again is registered once). */
int mproc__atfork_child(void (*fn)(void));

/* ---- request.c: what crosses to a child, and how it is framed ---------- */

/* A function pointer as (module, offset): survives ASLR across exec. */
typedef struct {
    uint8_t is_main;      /* the executable itself            */
    uint8_t build_id_len; /* 0: the module has no build-id    */
    uint8_t build_id[MPROC__MAX_BUILD_ID];
    const char *path;            /* module path ("" for the main)    */
    uint64_t offset;             /* from the module's load base      */
    uint64_t dev, ino, mtime_ns; /* file identity when no build-id   */
} mproc__entry_ref_t;

int mproc__entry_ref_of(mproc_entry_fn fn, mproc__entry_ref_t *ref);
int mproc__entry_resolve(const mproc__entry_ref_t *ref, mproc_entry_fn *fn);

enum {
    MPROC__REQ_CHILD = 1,  /* spawn: run the entry                         */
    MPROC__REQ_SERVER = 2, /* spawn: become the forkserver (entry=preload) */
    MPROC__REQ_FORK = 3,   /* to the forkserver: fork a child              */
    MPROC__REQ_SIGNAL = 4  /* to the forkserver: signal a child of yours   */
};

enum {
    MPROC__F_DAEMON = 1u << 0,    /* die with the parent (PDEATHSIG)       */
    MPROC__F_CLOSE_FDS = 1u << 1, /* child must close stray fds itself     */
    MPROC__F_HAS_ENTRY = 1u << 2, /* the entry field is set                */
    MPROC__F_CWD = 1u << 3        /* one more fd, last: the working dir    */
};

typedef struct {
    uint32_t type;
    uint32_t flags;
    int32_t ppid;        /* the parent the child must still have           */
    int32_t exit_fd;     /* fallback exit pipe's write end, or -1          */
    int32_t tracker_fd;  /* the parent's resource tracker line, or -1   */
    int32_t tracker_pid; /* and that tracker's pid (0: unknown)          */
    int32_t pid, sig;    /* MPROC__REQ_SIGNAL                              */
    mproc__entry_ref_t entry;
    const char *name;
    uint32_t nfds;
    int32_t fds[MPROC__MAX_FDS]; /* fd numbers the child gets             */
    const void *arg;
    uint64_t arglen;
} mproc__request_t;

/* Encode into a malloc()ed buffer. */
int mproc__request_encode(const mproc__request_t *r, void **buf, size_t *len);
/* Decode and bounds-check; r's pointers point into buf. MPROC_EPROTO on any
 * malformed input. */
int mproc__request_decode(const void *buf, size_t len, mproc__request_t *r);

/* A reply: an error code and a pid. */
typedef struct {
    int32_t err;
    int32_t pid;
} mproc__reply_t;

/*
 * Frames on a SOCK_STREAM Unix socket: a 4-byte length, the payload, and up
 * to MPROC__MAX_FDS fds riding on the first byte. recv allocates the payload
 * (at most max bytes), received fds are close-on-exec, and a frame that
 * lies (too long, cut short) is -EMSGSIZE / -ECONNRESET; the peer closing
 * between frames is -EPIPE. -EMFILE: the frame was read whole (the caller
 * frees *buf) but its fds could not all be received, and none are kept.
 * reply_recv returns -EMFILE with *reply filled in that case.
 */
int mproc__frame_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds);
int mproc__frame_recv(int sock, size_t max, void **buf, size_t *len, int *fds, size_t maxfds,
                      size_t *nfds, int timeout_ms);
int mproc__reply_send(int sock, int32_t err, int32_t pid, const int *fds, size_t nfds);
int mproc__reply_recv(int sock, mproc__reply_t *reply, int *fds, size_t maxfds, size_t *nfds,
                      int timeout_ms);

/* ---- child.c: the child side, common to all start methods ------------- */
/* Daemon: die with the parent; 0, or -ESRCH if the parent is already gone. */
int mproc__child_bind_to_parent(pid_t parent);
void mproc__child_set_name(const char *name);
/* Fallback builds: in a new child, take fd as this process's exit pipe and
 * drop the one inherited from the parent. */
void mproc__child_adopt_exit_fd(int fd);
/* Called after the entry returns, before _exit. */
void mproc__child_set_exit_hook(void (*fn)(void));
/* Run the entry, the exit hook, flush stdio, _exit with its result. */
_Noreturn void mproc__child_run(mproc_entry_fn fn, const void *arg, size_t len);
/* Leave a child without running its entry. */
_Noreturn void mproc__child_fail(int code);

/* ---- spawn.c ------------------------------------------------------------ */
/*
 * Start a fresh exec of this executable that receives req. The child gets
 * fds 0-2, keep[0..nkeep) at the same numbers and the request socket; on
 * success *pid, *pidfd (or -1) are set and, when sock is not NULL, the
 * request socket stays open in *sock (the forkserver's line); otherwise the
 * call waits for the child's acknowledgement that its entry resolved.
 */
int mproc__spawn(mproc__request_t *req, const int *keep, size_t nkeep, pid_t *pid, int *pidfd,
                 int *sock);
/*
 * The exec part alone: posix_spawn this executable with env_add[] ("NAME=
 * value" each, NULL-terminated) set in a copy of our environment, fds 0-2
 * and keep[] only, every signal at its default, those in *blocked (NULL:
 * none) blocked. *child_closes: the child must close stray fds itself (no
 * closefrom here).
 */
int mproc__spawn_exec(const char *const *env_add, const int *keep, size_t nkeep,
                      const sigset_t *blocked, pid_t *pid, int *child_closes);
/* In mproc_init: 1 and the request if this process is a spawn child, 0 if
 * not. The request socket is returned in *sock. */
int mproc__spawn_receive(mproc__request_t *req, void **buf, int *sock);
/* Non-zero if this is a spawned child whose main skipped mproc_init. */
int mproc__spawn_uninitialised(void);
/* argv[0] for spawned children, remembered by mproc_init. */
void mproc__spawn_set_argv0(const char *argv0);

/* ---- lock.c: the robust lock ----------------------------------------------- */

/* The layout of a lock in shared memory (lock.c explains the fields and
 * why the links sit where pthread_mutex_t's do). All zero: unlocked. */
struct mproc_lock {
    _Atomic uint32_t word; /* the futex word, offset 0                   */
    uint32_t count;        /* rlock: recursion depth                      */
    uint32_t state;        /* LOCK_*, the holder's                        */
    uint32_t recursive;
    uint32_t spare[2];
    void *prev, *next; /* robust list links, as pthread_mutex_t's     */
};

struct mproc_rlock {
    struct mproc_lock l;
};

enum { MPROC__LOCK_OK = 0, MPROC__LOCK_INCONSISTENT = 1 };

/*
 * The slow paths, also for locks mproc keeps for itself (the arena's, a
 * condition's own, a barrier's). deadline in ns from mproc__deadline_ns
 * (-1 forever, 0 one try). take: 0, -EOWNERDEAD (held), -ENOTRECOVERABLE,
 * -EDEADLK, -EOVERFLOW (rlock depth), -ETIMEDOUT. give: 0, -EPERM.
 * consistent: 0, -EINVAL if the lock is not held and inconsistent.
 */
int mproc__lock_take(struct mproc_lock *l, int64_t deadline);
int mproc__lock_give(struct mproc_lock *l);
int mproc__lock_consistent(struct mproc_lock *l);
/* The calling thread holds it. */
int mproc__lock_held(const struct mproc_lock *l);

/* ---- tracker.c: the resource tracker ------------------------------------ */

/* Where named segments live, and the prefix of their file names. */
#define MPROC__SHM_DIR "/dev/shm"
#define MPROC__SHM_PREFIX "mproc-"

/* Tell the tracker (started if needed) that this process created or opened
 * the named segment file (its name under MPROC__SHM_DIR, e.g.
 * "mproc-abc") whose inode is (dev, ino); unregister when it unlinked it. */
int mproc__tracker_register(const char *file, uint64_t dev, uint64_t ino);
/*
 * For a spawn or forkserver child: a close-on-exec duplicate of this
 * process's line (the caller hands it over and closes it), -1 when there
 * is no tracker; *pid gets the tracker's pid where known (else 0). The
 * child takes it with mproc__tracker_adopt, so one tracker serves the whole
 * program tree, whatever the start method.
 */
int mproc__tracker_line_dup(pid_t *pid);
void mproc__tracker_adopt(int fd, pid_t pid);
/* Drop the line without closing it: its fd is being closed under us (a
 * forkserver child closing everything the helper had). */
void mproc__tracker_forget(void);
int mproc__tracker_unregister(const char *file, uint64_t dev, uint64_t ino);
/*
 * Unlink the segment file if nobody uses it: 1 unlinked (or would be, with
 * dry_run), 0 in use / not ours / being created, negative errno. With
 * dev == 0 any inode under that name is considered.
 */
int mproc__shm_reclaim(const char *file, uint64_t dev, uint64_t ino, int dry_run);
/* A message on the tracker's line (len bytes) is well formed: the one
 * check between what a process sends and what the tracker acts on. */
int mproc__tracker_msg_ok(const void *buf, size_t len);

/* ---- shm.c: segments and the arena -------------------------------------- */

/* The segment header, at offset 0 of every segment. */
#define MPROC__SHM_MAGIC 0x31764d4853637270ull /* "prcSHMv1" */
#define MPROC__SHM_VERSION 1u
#define MPROC__SHM_HEADER 4096u

typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint64_t total; /* bytes mapped, header included */
    uint8_t id[16]; /* random: tells segments apart  */
    uint32_t ready; /* set last when created         */
    uint32_t reserved;
    struct mproc_lock arena_lock;  /* lock.c's robust lock */
    char name[MPROC_NAME_MAX + 1]; /* named segments: the name it was created with */
} mproc__shm_header_t;

/*
 * Allocate an object of size bytes and type in the arena, zeroed; init
 * (may be NULL) prepares it before anyone can find it by name.
 */
/* A forkserver child is about to close every fd the helper had: handles the
 * helper made (in a preload) keep their mappings but lose their fds. */
void mproc__shm_forget_fds(void);

/* As mproc_shm_alloc, without zeroing the bytes (the caller writes
 * every byte it reads later): a pool job's result room is large and
 * mostly untouched. */
int mproc__shm_alloc_dirty(mproc_shm_t *shm, size_t size, void **out);

/* The segment's mapping in this process: its first byte and its size. */
void mproc__shm_mapping(const mproc_shm_t *shm, unsigned char **base, size_t *total);

int mproc__shm_new(mproc_shm_t *shm, const char *name, mproc_obj_type_t type, uint32_t ctype,
                   size_t size, int (*init)(void *obj, void *ctx), void *ctx, void **out);

/* ---- forkserver.c ------------------------------------------------------- */
/* Ask the helper (started if needed) to fork a child running req. */
int mproc__forkserver_fork(mproc__request_t *req, const int *fds, size_t nfds, pid_t *pid,
                           int *pidfd, int *status_fd);
/* Signal a child of the helper when no pidfd is available. */
int mproc__forkserver_signal(pid_t pid, int sig);
/* The helper's loop (spawn child role SERVER); never returns. */
_Noreturn void mproc__forkserver_serve(int sock, const mproc__request_t *req);

/* ---- queue.c: queues in shared memory ---------------------------------- */

/* A queue as it lies in its arena object (queue.c explains the fields);
 * declared here for fuzz/fuzz_queue.c, which writes anything into one. */
struct mproc__queue_shared {
    uint32_t magic;
    uint32_t capacity; /* ring bytes, a power of two         */
    uint32_t max_message;
    uint32_t max_count; /* 0: no limit but bytes          */
    uint32_t flags;
    int32_t spin_us;

    /* Each side's line: written by its lock holder on every message. */
    alignas(64) struct mproc_lock put_lock;
    _Atomic uint64_t head;      /* (count << 32) | position, producers' */
    _Atomic uint64_t tail_seen; /* producers' last look at tail (<= it)  */

    alignas(64) struct mproc_lock get_lock;
    _Atomic uint64_t tail;      /* (count << 32) | position, consumers' */
    _Atomic uint64_t head_seen; /* consumers' last look at head (<= it)  */

    /* Read by the other side on every message, written only by sleepers:
     * lines of their own, so reading them costs no cache miss. */
    alignas(64) _Atomic uint32_t data_wait;  /* consumer asleep, fd armed */
    alignas(64) _Atomic uint32_t space_wait; /* a producer sleeps for room */

    alignas(64) _Atomic uint32_t done; /* task_done calls (joinable)   */
    _Atomic uint32_t join_wait;

    alignas(64) unsigned char ring[];
};

/* ---- process.c ---------------------------------------------------------- */
/* Make a process object for a child a previous image of this process
 * started with fork, before it exec'd itself (a supervisor's upgrade):
 * still unreaped, so still ours. life_fd is its pidfd, or the read end of
 * its exit pipe in builds without pidfds; it is taken over (closed on
 * failure too). -ECHILD if pid is not an unreaped child of this process. */
int mproc__process_adopt(mproc_process_t **out, pid_t pid, int life_fd, const char *name,
                         int daemon);

/* ---- upgrade.c: what a supervisor hands to its next image ---------------- */
typedef struct {
    int slot;
    pid_t pid;
    int life_fd; /* its pidfd, or its exit pipe                 */
    int ready;
    int current;      /* the slot's current worker                */
    int kill_left_ms; /* being stopped: SIGKILL in this many ms; -1: not */
} mproc__handover_worker_t;

typedef struct {
    int fd;
    uint64_t ino; /* a unix socket's file, to remove only if still it */
    char *spec;   /* the --bind text it was made from                   */
} mproc__handover_socket_t;

typedef struct {
    uint64_t sigmask;       /* signals 1..64 the first master's caller blocked */
    int chld_ign, pipe_ign; /* ... and SIGCHLD, SIGPIPE were ignored     */
    int notify_fd;
    char notify_dir[64];
    mproc__handover_socket_t sockets[64];
    size_t nsockets;
    mproc__handover_worker_t *workers;
    size_t nworkers;
    pid_t reap[32]; /* old images' helpers: collected when they end */
    size_t nreap;
} mproc__handover_t;

/* Write h to an anonymous file; *fd (close-on-exec) reads it back. */
int mproc__handover_write(const mproc__handover_t *h, int *fd);
/* Parse a handover text (bounds-checked; MPROC_EPROTO if malformed). */
int mproc__handover_parse(const char *text, size_t len, mproc__handover_t **out);
void mproc__handover_free(mproc__handover_t *h);
/* Name fd in the environment for the next image; undo that. */
int mproc__handover_env(int fd);
void mproc__handover_env_clear(void);
/* mproc_init: remember main's arguments and working directory. */
void mproc__upgrade_record(int argc, char **argv);
/* What mproc_init recorded (NULLs if it was not called), and 1 if this is
 * the process main() runs in (0: a forked copy, which must not re-run main). */
int mproc__upgrade_self(char *const **argv, const char **cwd);
/* The supervisor: the handover taken (1), none (0), or an error. */
int mproc__handover_claim(mproc__handover_t **out);

#endif
