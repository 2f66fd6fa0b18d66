/*
 * process.c - mproc_process: create, start under one of three methods,
 * join, signal, free; the registry of live children that the parent joins
 * (or kills, for daemons) when it exits normally.
 *
 * How a child's exit is observed: its "life fd" polls readable when it
 * exits: the pidfd, or without pidfds an exit pipe whose only write end the
 * child holds. fork and spawn children are then collected with waitid; a
 * forkserver child's code comes from the helper's status pipe (the helper
 * is its parent and reaps it), and only if the helper dies does the life fd
 * decide when join returns.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* STARTING: a start is under way without p->lock held (it may wait on a
 * child or the helper); other calls treat the process as not started. */
typedef enum { CREATED, STARTING, RUNNING, EXITED } state_t;

struct mproc_process {
    pthread_mutex_t lock; /* state, collection; never held while waiting */
    mproc_entry_fn entry;
    void *arg;
    size_t len;
    char *name;
    mproc_start_method_t method; /* resolved at start */
    int daemon;
    int named; /* a name was given: the child's comm is set to it */
    int fds[MPROC_PASS_FDS_MAX];
    size_t nfds;

    state_t state;
    pid_t owner; /* the process that started it */
    pid_t pid;
    int pidfd;       /* -1 when the kernel or build has none            */
    int exit_pipe;   /* without pidfd: EOF when the child exits, or -1  */
    int status_fd;   /* forkserver: the helper writes the exit code     */
    int helper_lost; /* forkserver: status_fd ended without a status   */
    int pipe_lost;   /* fallback: exit pipe closed, child still running */
    int exitcode;
    int status_err; /* MPROC_ESTATUS when the forkserver lost it */

    struct mproc_process *next, *prev; /* registry, while RUNNING */
    int pinned;                        /* exit_cleanup is using it: free must not (registry_lock) */
};

static _Atomic int default_method = MPROC_START_FORKSERVER;
static _Atomic int fork_policy = MPROC_FORK_WARN;

/* Live children started by this process, for the exit-time join. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static mproc_process_t *registry;
static pthread_once_t registry_once = PTHREAD_ONCE_INIT;

static int valid_method(int m)
{
    return m >= MPROC_START_DEFAULT && m <= MPROC_START_FORKSERVER;
}

int mproc_set_start_method(mproc_start_method_t method)
{
    if (mproc__spawn_uninitialised())
        return MPROC_ENOINIT;
    if (!valid_method(method) || method == MPROC_START_DEFAULT)
        return -EINVAL;
    atomic_store(&default_method, method);
    return 0;
}

mproc_start_method_t mproc_get_start_method(void)
{
    return (mproc_start_method_t)atomic_load(&default_method);
}

int mproc_set_fork_policy(mproc_fork_policy_t policy)
{
    if (mproc__spawn_uninitialised())
        return MPROC_ENOINIT;
    if ((int)policy < MPROC_FORK_WARN || policy > MPROC_FORK_REFUSE)
        return -EINVAL;
    atomic_store(&fork_policy, policy);
    return 0;
}

mproc_fork_policy_t mproc_get_fork_policy(void)
{
    return (mproc_fork_policy_t)atomic_load(&fork_policy);
}

/* ---- registry and exit-time cleanup ---------------------------------------- */

static void registry_add(mproc_process_t *p)
{
    pthread_mutex_lock(&registry_lock);
    p->prev = NULL;
    p->next = registry;
    if (registry)
        registry->prev = p;
    registry = p;
    pthread_mutex_unlock(&registry_lock);
}

static void registry_remove_locked(mproc_process_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else if (registry == p)
        registry = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->next = p->prev = NULL;
}

static void registry_remove(mproc_process_t *p)
{
    pthread_mutex_lock(&registry_lock);
    registry_remove_locked(p);
    pthread_mutex_unlock(&registry_lock);
}

static pid_t registry_owner;

/* At normal exit, as Python does: daemons are killed, the others joined.
 * A raw-forked child that calls exit() owns none of them and skips this. */
static void exit_cleanup(void)
{
    if (registry_owner != getpid())
        return;
    pthread_mutex_lock(&registry_lock);
    int idle = registry == NULL;
    pthread_mutex_unlock(&registry_lock);
    if (idle && !mproc_forkserver_pid())
        return; /* the common child: nothing to wait for */
    for (;;) {
        /* Pinned, p cannot be freed by another thread while we join it. */
        pthread_mutex_lock(&registry_lock);
        mproc_process_t *p = registry;
        if (p)
            p->pinned = 1;
        pthread_mutex_unlock(&registry_lock);
        if (!p)
            break;
        if (p->daemon)
            mproc_process_kill(p);
        int rc = mproc_process_join(p, MPROC_FOREVER);
        if (rc < 0)
            registry_remove(p); /* cannot happen; never loop forever */
        pthread_mutex_lock(&registry_lock);
        p->pinned = 0;
        pthread_mutex_unlock(&registry_lock);
    }
    mproc_forkserver_stop();
}

/* In a forked child the parent's children are not ours. */
static void registry_after_fork_child(void)
{
    pthread_mutex_init(&registry_lock, NULL);
    registry = NULL;
    registry_owner = getpid();
}

static void registry_install(void)
{
    registry_owner = getpid();
    atexit(exit_cleanup);
    /* A child leaves through _exit, not exit: it cleans up the same way. */
    mproc__child_set_exit_hook(exit_cleanup);
    mproc__atfork_child(registry_after_fork_child);
}

/* ---- create ---------------------------------------------------------------- */

int mproc_process_create(mproc_process_t **out, mproc_entry_fn entry, const void *arg, size_t len,
                         const mproc_process_opts_t *opts)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!entry || (len && !arg))
        return -EINVAL;
    if (mproc__spawn_uninitialised())
        return MPROC_ENOINIT;
    if (len > MPROC__ARG_MAX)
        return -E2BIG;
    const char *name = opts && opts->name ? opts->name : "mproc-child";
    int method = opts ? (int)opts->method : MPROC_START_DEFAULT;
    if (!valid_method(method) || strlen(name) > MPROC__MAX_NAME)
        return -EINVAL;

    mproc_process_t *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->name = strdup(name);
    p->arg = len ? malloc(len) : NULL;
    if (!p->name || (len && !p->arg)) {
        free(p->name);
        free(p->arg);
        free(p);
        return -ENOMEM;
    }
    if (len)
        memcpy(p->arg, arg, len);
    pthread_mutex_init(&p->lock, NULL);
    p->entry = entry;
    p->len = len;
    p->method = (mproc_start_method_t)method;
    p->daemon = opts ? opts->daemon != 0 : 0;
    p->named = opts && opts->name;
    p->pidfd = p->exit_pipe = p->status_fd = -1;
    *out = p;
    return 0;
}

int mproc_process_pass_fd(mproc_process_t *p, int fd)
{
    if (!p || fd < 0)
        return -EINVAL;
    if (fcntl(fd, F_GETFD) < 0)
        return -EBADF;
    pthread_mutex_lock(&p->lock);
    int rc = 0;
    if (p->state != CREATED)
        rc = MPROC_ESTATE;
    for (size_t i = 0; rc == 0 && i < p->nfds; i++)
        if (p->fds[i] == fd)
            goto out; /* already handed over */
    if (rc == 0 && p->nfds == MPROC_PASS_FDS_MAX)
        rc = -E2BIG;
    if (rc == 0)
        p->fds[p->nfds++] = fd;
out:
    pthread_mutex_unlock(&p->lock);
    return rc;
}

int mproc_process_pass_shm(mproc_process_t *p, const mproc_shm_t *shm)
{
    if (!shm)
        return -EINVAL;
    return mproc_process_pass_fd(p, mproc_shm_fd(shm));
}

/* ---- the three start methods ----------------------------------------------- */

static int start_fork(mproc_process_t *p)
{
    /* Counting threads costs a /proc lookup (~9 us here): only pay it when
     * the answer matters, under REFUSE or a WARN that someone will read. A
     * count we cannot take (no /proc) counts as "maybe threaded": REFUSE
     * must not let a fork through on a guess. */
    int policy = atomic_load(&fork_policy);
    int threads = policy == MPROC_FORK_REFUSE || (policy == MPROC_FORK_WARN && mproc__log_enabled())
                      ? mproc__thread_count()
                      : 1;
    if (threads != 1) {
        if (policy == MPROC_FORK_REFUSE)
            return MPROC_ETHREADS;
        if (policy == MPROC_FORK_WARN && threads > 1)
            mproc__log(MPROC_LOG_WARN,
                       "fork of '%s' from a process with %d threads: locks held by the other "
                       "threads stay locked in the child; use spawn or forkserver",
                       p->name, threads);
        else if (policy == MPROC_FORK_WARN)
            mproc__log(MPROC_LOG_WARN, "fork of '%s': cannot tell how many threads run", p->name);
    }
    int ep[2] = {-1, -1};
    if (!mproc__have_pidfd() && pipe2(ep, O_CLOEXEC) < 0)
        return -errno;

    /* (stdio is flushed by mproc's at-fork prepare handler, P13.) */
    /* Block everything across fork: the child must not run the parent's
     * handlers before it has reset them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        mproc__reset_signals();
        if (p->daemon && mproc__child_bind_to_parent(parent) < 0)
            mproc__child_fail(-ESRCH);
        if (ep[1] >= 0) {
            close(ep[0]);
            mproc__child_adopt_exit_fd(ep[1]);
        }
        if (p->named)
            mproc__child_set_name(p->name);
        mproc__child_run(p->entry, p->arg, p->len);
    }
    int err = pid < 0 ? -errno : 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (ep[1] >= 0)
        close(ep[1]);
    if (err < 0) {
        if (ep[0] >= 0)
            close(ep[0]);
        return err;
    }
    if (ep[0] < 0) {
        int pidfd = mproc__pidfd_open(pid); /* race-free: not reaped yet */
        if (pidfd < 0) {
            /* Cannot fail on a kernel that gave us one before, short of
             * running out of fds: do not leave an unwatchable child. */
            int code;
            kill(pid, SIGKILL);
            mproc__reap(pid, -1, 1, &code);
            return pidfd;
        }
        p->pidfd = pidfd;
    }
    p->pid = pid;
    p->exit_pipe = ep[0];
    return 0;
}

static void fill_request(mproc_process_t *p, mproc__request_t *req, uint32_t type)
{
    memset(req, 0, sizeof *req);
    req->type = type;
    req->flags = MPROC__F_HAS_ENTRY | (p->daemon ? MPROC__F_DAEMON : 0);
    req->exit_fd = -1;
    req->tracker_fd = -1;
    /* Unnamed children keep their program's name (naming costs a forked
     * child a few microseconds); init.c gives a spawned one that name back
     * (exec through /proc/self/exe would show "exe"). */
    req->name = p->named ? p->name : NULL;
    req->nfds = (uint32_t)p->nfds;
    for (size_t i = 0; i < p->nfds; i++)
        req->fds[i] = p->fds[i];
    req->arg = p->arg;
    req->arglen = p->len;
}

static int start_spawn(mproc_process_t *p)
{
    mproc__request_t req;
    fill_request(p, &req, MPROC__REQ_CHILD);
    int rc = mproc__entry_ref_of(p->entry, &req.entry);
    if (rc < 0)
        return rc;
    int keep[MPROC__MAX_FDS + 2];
    size_t nkeep = p->nfds;
    memcpy(keep, p->fds, p->nfds * sizeof keep[0]);
    int ep[2] = {-1, -1};
    if (!mproc__have_pidfd()) {
        if (pipe2(ep, O_CLOEXEC) < 0)
            return -errno;
        keep[nkeep++] = req.exit_fd = ep[1];
    }
    /* The child registers its named segments with our tracker. */
    pid_t tracker_pid;
    int line = mproc__tracker_line_dup(&tracker_pid);
    if (line >= 0) {
        keep[nkeep++] = req.tracker_fd = line;
        req.tracker_pid = tracker_pid;
    }
    rc = mproc__spawn(&req, keep, nkeep, &p->pid, &p->pidfd, NULL);
    if (line >= 0)
        close(line);
    if (ep[1] >= 0)
        close(ep[1]);
    if (rc < 0) {
        if (ep[0] >= 0)
            close(ep[0]);
        return rc;
    }
    p->exit_pipe = ep[0];
    return 0;
}

static int start_forkserver(mproc_process_t *p)
{
    mproc__request_t req;
    fill_request(p, &req, MPROC__REQ_FORK);
    int rc = mproc__entry_ref_of(p->entry, &req.entry);
    if (rc < 0)
        return rc;
    /* The child writes where the caller's stdio points now, not where it
     * pointed when the helper started: the same as under fork and spawn. */
    int fds[MPROC__MAX_FDS];
    uint32_t n = 0;
    for (int fd = 0; fd <= 2; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            req.fds[n] = fds[n] = fd, n++;
    for (size_t i = 0; i < p->nfds; i++)
        if (p->fds[i] > 2)
            req.fds[n] = fds[n] = p->fds[i], n++;
    /* Our tracker's line, where one more fd fits in the message (it does
     * unless the caller passes the maximum, MPROC_PASS_FDS_MAX: the child
     * then starts a tracker of its own if it needs one). */
    pid_t tracker_pid;
    int line = n + 2 <= MPROC__MAX_FDS ? mproc__tracker_line_dup(&tracker_pid) : -1;
    if (line >= 0) {
        req.fds[n] = fds[n] = req.tracker_fd = line;
        req.tracker_pid = tracker_pid;
        n++;
    }
    req.nfds = n;
    int life_fd;
    rc = mproc__forkserver_fork(&req, fds, n, &p->pid, &life_fd, &p->status_fd);
    if (line >= 0)
        close(line);
    if (rc == 0) {
        if (mproc__have_pidfd())
            p->pidfd = life_fd;
        else
            p->exit_pipe = life_fd;
    }
    return rc;
}

int mproc_process_start(mproc_process_t *p)
{
    if (!p)
        return -EINVAL;
    if (mproc__spawn_uninitialised())
        return MPROC_ENOINIT;
    pthread_once(&registry_once, registry_install);
    pthread_mutex_lock(&p->lock);
    int rc = p->state == CREATED ? 0 : MPROC_ESTATE;
    if (rc == 0)
        p->state = STARTING;
    pthread_mutex_unlock(&p->lock);
    if (rc < 0)
        return rc;

    /* Unlocked from here: starting may wait for a spawned child or the
     * helper, and may call the log hook; STARTING keeps others off p. */
    for (size_t i = 0; rc == 0 && i < p->nfds; i++)
        if (fcntl(p->fds[i], F_GETFD) < 0)
            rc = -EBADF; /* closed since pass_fd */
    mproc_start_method_t method = p->method;
    if (method == MPROC_START_DEFAULT)
        method = mproc_get_start_method();
    if (rc == 0) {
        switch (method) {
        case MPROC_START_FORK:
            rc = start_fork(p);
            break;
        case MPROC_START_SPAWN:
            rc = start_spawn(p);
            break;
        default:
            rc = start_forkserver(p);
            break;
        }
    }
    pthread_mutex_lock(&p->lock);
    if (rc == 0) {
        p->method = method;
        p->state = RUNNING;
        p->owner = getpid();
        registry_add(p);
    } else {
        p->state = CREATED;
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* The entry of an adopted child: never run here (it runs what it ran). */
static int adopted_entry(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return 0;
}

int mproc__process_adopt(mproc_process_t **out, pid_t pid, int life_fd, const char *name,
                         int daemon)
{
    *out = NULL;
    /* Our unreaped child (alive or a zombie): its pid cannot be reused
     * while we have not collected it. */
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int rc = 0;
    if (pid <= 0 || life_fd < 0)
        rc = -EINVAL;
    else if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
        rc = -errno;
    mproc_process_t *p = NULL;
    if (rc == 0 && (rc = mproc_process_create(&p, adopted_entry, NULL, 0,
                                              &(mproc_process_opts_t){.name = name,
                                                                      .method = MPROC_START_FORK,
                                                                      .daemon = daemon})) < 0)
        p = NULL;
    if (rc < 0) {
        if (life_fd >= 0)
            close(life_fd);
        return rc;
    }
    pthread_once(&registry_once, registry_install);
    mproc__set_cloexec(life_fd, 1);
    /* The old image may have been a build without pidfds (an exit pipe):
     * then open one. Without pidfds here, a pidfd handed over polls as an
     * exit pipe does (readable once the child exited). */
    struct stat st;
    int is_pipe = fstat(life_fd, &st) == 0 && S_ISFIFO(st.st_mode);
    if (is_pipe && mproc__have_pidfd()) {
        int pidfd = mproc__pidfd_open(pid);
        if (pidfd >= 0) {
            close(life_fd);
            life_fd = pidfd;
            is_pipe = 0;
        }
    }
    if (mproc__have_pidfd() && !is_pipe)
        p->pidfd = life_fd;
    else
        p->exit_pipe = life_fd;
    p->pid = pid;
    p->state = RUNNING;
    p->owner = getpid();
    registry_add(p);
    *out = p;
    return 0;
}

/* ---- waiting and collecting ------------------------------------------------ */

static int life_fd(const mproc_process_t *p)
{
    return p->pidfd >= 0 ? p->pidfd : p->exit_pipe;
}

/* Fallback: look (without reaping) whether the child has exited, with a
 * backoff, until the deadline. Used just after its exit pipe closed (the
 * pipe closes a moment before the child becomes collectable) and, rarely,
 * for a child that closed the pipe itself and runs on: nothing is left to
 * poll then. */
static int wait_exit_peek(mproc_process_t *p, int64_t deadline)
{
    long pause_ns = 20000;
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0 && errno != EINTR)
            return -errno;
        if (si.si_pid != 0)
            return 1;
        int left = mproc__remaining_ms(deadline);
        if (left == 0)
            return 0;
        struct timespec ts = {0, pause_ns};
        if (left >= 0 && (long)left * 1000000 < pause_ns)
            ts.tv_nsec = (long)left * 1000000;
        nanosleep(&ts, NULL);
        if (pause_ns < 50000000)
            pause_ns *= 2;
    }
}

/* Wait, without p->lock, until there is something to collect: 1, or 0 at
 * the deadline. */
static int wait_event(mproc_process_t *p, int64_t deadline)
{
    pthread_mutex_lock(&p->lock);
    int helper_lost = p->helper_lost, pipe_lost = p->pipe_lost;
    pthread_mutex_unlock(&p->lock);
    if (pipe_lost)
        return wait_exit_peek(p, deadline);
    if (p->method != MPROC_START_FORKSERVER && p->pidfd < 0) {
        int rc = mproc__poll1(p->exit_pipe, POLLIN, mproc__remaining_ms(deadline), NULL);
        if (rc <= 0)
            return rc;
        /* Exiting: allow it 100 ms (or the caller's longer timeout) to
         * become collectable before deciding it closed the pipe itself. */
        int64_t grace = mproc__now_ms() + 100;
        rc = wait_exit_peek(p, deadline < 0 || deadline > grace ? deadline : grace);
        if (rc != 0)
            return rc;
        pthread_mutex_lock(&p->lock);
        p->pipe_lost = 1;
        pthread_mutex_unlock(&p->lock);
        return wait_exit_peek(p, deadline);
    }
    if (p->method != MPROC_START_FORKSERVER || helper_lost)
        return mproc__poll1(life_fd(p), POLLIN, mproc__remaining_ms(deadline), NULL);
    int rc = mproc__poll1(p->status_fd, POLLIN, mproc__remaining_ms(deadline), NULL);
    if (rc == 0 && mproc__poll1(life_fd(p), POLLIN, 0, NULL) > 0)
        /* Gone, and the helper has not written yet (a caller woken by the
         * life fd gets here with timeout 0): the status is moments away.
         * A helper that takes longer is merely slow (or stopped): report
         * a timeout, never a lost status. */
        rc = mproc__poll1(p->status_fd, POLLIN, 100, NULL);
    return rc;
}

/* With p->lock held, after wait_event: 1 if the child is now collected. */
static int collect_locked(mproc_process_t *p)
{
    if (p->state == EXITED)
        return 1;
    int code = 0;
    if (p->method != MPROC_START_FORKSERVER) {
        int rc = mproc__reap(p->pid, p->pidfd, 0, &code);
        if (rc <= 0)
            return rc;
    } else {
        if (!p->helper_lost) {
            int32_t status;
            if (mproc__poll1(p->status_fd, POLLIN, 0, NULL) <= 0)
                return 0;
            ssize_t n = mproc__read_full(p->status_fd, &status, sizeof status);
            if (n == (ssize_t)sizeof status)
                code = status;
            else
                p->helper_lost = 1; /* EOF: from now on the life fd decides */
        }
        if (p->helper_lost) {
            if (mproc__poll1(life_fd(p), POLLIN, 0, NULL) <= 0)
                return 0;
            p->status_err = MPROC_ESTATUS; /* the helper died first */
        }
    }
    p->exitcode = code;
    p->state = EXITED;
    registry_remove(p);
    return 1;
}

int mproc_process_join(mproc_process_t *p, int timeout_ms)
{
    if (!p || timeout_ms < -1)
        return -EINVAL;
    int64_t deadline = mproc__deadline(timeout_ms);
    for (;;) {
        pthread_mutex_lock(&p->lock);
        int rc = p->state == CREATED || p->state == STARTING ? MPROC_ESTATE
                 : p->owner != getpid()                      ? -ECHILD
                 : p->state == EXITED                        ? 1
                                                             : 0;
        pthread_mutex_unlock(&p->lock);
        if (rc)
            return rc < 0 ? rc : 0;
        rc = wait_event(p, deadline);
        if (rc < 0)
            return rc;
        if (rc > 0) {
            pthread_mutex_lock(&p->lock);
            rc = collect_locked(p);
            pthread_mutex_unlock(&p->lock);
            if (rc < 0)
                return rc;
            if (rc > 0)
                return 0;
        }
        if (mproc__remaining_ms(deadline) == 0)
            return -ETIMEDOUT;
    }
}

int mproc_process_is_alive(mproc_process_t *p)
{
    if (!p)
        return -EINVAL;
    pthread_mutex_lock(&p->lock);
    int created = p->state == CREATED || p->state == STARTING;
    pthread_mutex_unlock(&p->lock);
    if (created)
        return 0;
    int rc = mproc_process_join(p, 0);
    return rc == -ETIMEDOUT ? 1 : rc == 0 ? 0 : rc;
}

int mproc_process_exitcode(mproc_process_t *p, int *code)
{
    if (!p || !code)
        return -EINVAL;
    int rc = mproc_process_join(p, 0);
    if (rc == -ETIMEDOUT)
        return -EBUSY;
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&p->lock);
    rc = p->status_err;
    if (rc == 0)
        *code = p->exitcode;
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* ---- signals and accessors ------------------------------------------------- */

int mproc_process_signal(mproc_process_t *p, int sig)
{
    if (!p || sig < 0 || sig >= NSIG)
        return -EINVAL;
    pthread_mutex_lock(&p->lock);
    int rc;
    if (p->state == CREATED || p->state == STARTING)
        rc = MPROC_ESTATE;
    else if (p->owner != getpid())
        rc = -ECHILD;
    else if (p->state == EXITED)
        rc = -ESRCH;
    else if (p->pidfd >= 0)
        rc = mproc__pidfd_signal(p->pidfd, sig);
    else if (p->method == MPROC_START_FORKSERVER)
        rc = mproc__forkserver_signal(p->pid, sig); /* the helper owns the pid */
    else
        rc = kill(p->pid, sig) < 0 ? -errno : 0; /* unreaped: still ours */
    pthread_mutex_unlock(&p->lock);
    return rc;
}

int mproc_process_terminate(mproc_process_t *p)
{
    return mproc_process_signal(p, SIGTERM);
}

int mproc_process_kill(mproc_process_t *p)
{
    return mproc_process_signal(p, SIGKILL);
}

/* The accessors take the lock: a start in another thread writes these. */
pid_t mproc_process_pid(const mproc_process_t *p)
{
    if (!p)
        return 0;
    mproc_process_t *w = (mproc_process_t *)p;
    pthread_mutex_lock(&w->lock);
    pid_t pid = p->state >= RUNNING ? p->pid : 0;
    pthread_mutex_unlock(&w->lock);
    return pid;
}

const char *mproc_process_name(const mproc_process_t *p)
{
    return p ? p->name : NULL; /* fixed at create */
}

int mproc_process_is_daemon(const mproc_process_t *p)
{
    return p ? p->daemon : -EINVAL; /* fixed at create */
}

mproc_start_method_t mproc_process_method(const mproc_process_t *p)
{
    if (!p)
        return MPROC_START_DEFAULT;
    mproc_process_t *w = (mproc_process_t *)p;
    pthread_mutex_lock(&w->lock);
    mproc_start_method_t m = p->method;
    pthread_mutex_unlock(&w->lock);
    return m;
}

int mproc_have_pidfd(void)
{
    return mproc__have_pidfd();
}

int mproc_process_fd(const mproc_process_t *p)
{
    if (!p)
        return -EINVAL;
    mproc_process_t *w = (mproc_process_t *)p;
    pthread_mutex_lock(&w->lock);
    int fd = p->state >= RUNNING ? life_fd(p) : MPROC_ESTATE;
    pthread_mutex_unlock(&w->lock);
    return fd;
}

int mproc_process_free(mproc_process_t *p)
{
    if (!p)
        return 0;
    pthread_mutex_lock(&p->lock);
    state_t state = p->state;
    /* A copy inherited through fork is not ours to wait for: just drop it. */
    int mine = state >= RUNNING && p->owner == getpid();
    pthread_mutex_unlock(&p->lock);
    if (state == STARTING)
        return -EBUSY;
    if (mine && state == RUNNING && mproc_process_join(p, 0) == -ETIMEDOUT)
        return -EBUSY;
    pthread_mutex_lock(&registry_lock);
    int pinned = p->pinned;
    if (mine && !pinned)
        registry_remove_locked(p); /* no-op once collected */
    pthread_mutex_unlock(&registry_lock);
    if (pinned)
        return -EBUSY; /* the exit-time join holds it: the process is ending */
    if (p->pidfd >= 0)
        close(p->pidfd);
    if (p->exit_pipe >= 0)
        close(p->exit_pipe);
    if (p->status_fd >= 0)
        close(p->status_fd);
    pthread_mutex_destroy(&p->lock);
    free(p->name);
    free(p->arg);
    free(p);
    return 0;
}
