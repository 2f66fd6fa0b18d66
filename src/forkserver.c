/*
 * forkserver.c - the forkserver start method.
 *
 * The helper is a spawn of this executable (role MPROC__REQ_SERVER), so it
 * starts clean and single-threaded whatever the client has become: forking
 * it is cheap and safe at any time (P2). The only way to reach it is the
 * socketpair it inherited from its client: nothing is bound anywhere (P12).
 *
 * Per child the helper answers with the child's pid, the read end of a
 * status pipe (the helper reaps the child and writes its exit code, int32,
 * there; if the helper dies the pipe ends without one) and a "life fd" that
 * polls readable when the child exits: its pidfd (the client also signals
 * through it, P11) or, without pidfds, an exit pipe only the child holds.
 * The caller's stdio travels with every request, so the child writes where
 * the caller's stdout points now, as under fork and spawn.
 *
 * The client serialises requests on one socket under fs_lock. The helper
 * exits when the socket closes: when the client stops it, exits or dies.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- client ---------------------------------------------------------------- */

static pthread_mutex_t fs_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t fs_pid; /* 0: not running; written under fs_lock, read atomically */
static int fs_pidfd = -1;
static int fs_sock = -1;
static mproc_entry_fn fs_preload;
static void *fs_preload_arg;
static size_t fs_preload_len;
static pthread_once_t fs_once = PTHREAD_ONCE_INIT;
static uid_t fs_euid; /* the helper's credentials: the client's at its start */
static gid_t fs_egid;
static struct stat fs_cwd; /* the helper's working directory: ours at its start */

/* A forked child is not the helper's client: drop its copies quietly (the
 * parent's connection is untouched, P1 applied to ourselves). */
static void fs_after_fork_child(void)
{
    pthread_mutex_init(&fs_lock, NULL);
    if (fs_sock >= 0)
        close(fs_sock);
    if (fs_pidfd >= 0)
        close(fs_pidfd);
    fs_sock = fs_pidfd = -1;
    __atomic_store_n(&fs_pid, 0, __ATOMIC_RELEASE);
}

static void fs_install(void)
{
    mproc__atfork_child(fs_after_fork_child);
}

/* Forget the helper, reaping it. Killing first makes the wait bounded: we
 * only get here once the helper is dead, unwanted, or misbehaving. */
static void fs_discard_locked(int kill_it)
{
    if (!fs_pid)
        return;
    if (fs_sock >= 0)
        close(fs_sock);
    fs_sock = -1;
    /* Closing the line makes the helper leave by itself, and SIGTERM makes
     * it leave even if a stray copy of our end (held by a fork elsewhere)
     * keeps the line open. Either way it first reaps the children that
     * have exited, so none is left a zombie for a subreaper. The pid is
     * still ours to signal: the helper is not reaped yet. */
    int code;
    int sig = kill_it ? SIGKILL : SIGTERM;
    if (fs_pidfd >= 0)
        mproc__pidfd_signal(fs_pidfd, sig);
    else
        kill(fs_pid, sig);
    if (!kill_it && fs_pidfd >= 0 && mproc__poll1(fs_pidfd, POLLIN, 5000, NULL) == 0)
        mproc__pidfd_signal(fs_pidfd, SIGKILL); /* stuck: do not hang the caller */
    mproc__reap(fs_pid, fs_pidfd, 1, &code);
    if (fs_pidfd >= 0)
        close(fs_pidfd);
    fs_pidfd = -1;
    __atomic_store_n(&fs_pid, 0, __ATOMIC_RELEASE);
}

/* The helper never speaks first: a readable or hung-up socket between
 * requests means it is gone. */
static int fs_alive_locked(void)
{
    if (!fs_pid)
        return 0;
    short rev = 0;
    if (mproc__poll1(fs_sock, POLLIN, 0, &rev) == 0)
        return 1;
    fs_discard_locked(1);
    return 0;
}

static int fs_start_locked(void)
{
    mproc__request_t req;
    memset(&req, 0, sizeof req);
    req.type = MPROC__REQ_SERVER;
    req.exit_fd = req.tracker_fd = -1;
    req.name = NULL;
    if (fs_preload) {
        int rc = mproc__entry_ref_of(fs_preload, &req.entry);
        if (rc < 0)
            return rc;
        req.flags |= MPROC__F_HAS_ENTRY;
        req.arg = fs_preload_arg;
        req.arglen = fs_preload_len;
    }
    pid_t pid;
    int pidfd, sock;
    int rc = mproc__spawn(&req, NULL, 0, &pid, &pidfd, &sock);
    if (rc < 0)
        return rc;
    __atomic_store_n(&fs_pid, pid, __ATOMIC_RELEASE);
    fs_pidfd = pidfd;
    fs_sock = sock;
    fs_euid = geteuid();
    fs_egid = getegid();
    if (stat(".", &fs_cwd) < 0)
        memset(&fs_cwd, 0, sizeof fs_cwd);
    return 0;
}

int mproc_forkserver_start(mproc_entry_fn preload, const void *arg, size_t len)
{
    if ((len && !arg) || len > MPROC__ARG_MAX)
        return -EINVAL;
    if (mproc__spawn_uninitialised())
        return MPROC_ENOINIT;
    pthread_once(&fs_once, fs_install);
    pthread_mutex_lock(&fs_lock);
    int rc = MPROC_ESTATE;
    if (!fs_alive_locked()) {
        void *copy = NULL;
        rc = 0;
        if (len && !(copy = malloc(len)))
            rc = -ENOMEM;
        if (rc == 0) {
            if (len)
                memcpy(copy, arg, len);
            free(fs_preload_arg);
            fs_preload = preload;
            fs_preload_arg = copy;
            fs_preload_len = len;
            rc = fs_start_locked();
        }
    }
    pthread_mutex_unlock(&fs_lock);
    return rc;
}

int mproc_forkserver_stop(void)
{
    pthread_once(&fs_once, fs_install);
    pthread_mutex_lock(&fs_lock);
    fs_discard_locked(0);
    pthread_mutex_unlock(&fs_lock);
    return 0;
}

pid_t mproc_forkserver_pid(void)
{
    return __atomic_load_n(&fs_pid, __ATOMIC_ACQUIRE);
}

/* One request, one reply. Any failure of the line itself means the helper
 * is gone: reap it and report MPROC_ESERVER; the next call restarts it. */
static int fs_call_locked(const mproc__request_t *req, const int *fds, size_t nfds,
                          mproc__reply_t *reply, int *rfds, size_t *nr)
{
    if (fs_pid && (geteuid() != fs_euid || getegid() != fs_egid))
        /* The caller changed identity (a server dropping root): children
         * must not be forked with the credentials it gave up. */
        fs_discard_locked(0);
    if (!fs_alive_locked()) {
        int rc = fs_start_locked(); /* its own error says why best */
        if (rc < 0)
            return rc;
    }
    void *buf;
    size_t len;
    int rc = mproc__request_encode(req, &buf, &len);
    if (rc < 0)
        return rc;
    rc = mproc__frame_send(fs_sock, buf, len, fds, nfds);
    free(buf);
    if (rc == 0)
        rc = mproc__reply_recv(fs_sock, reply, rfds, 2, nr, MPROC_FOREVER);
    if (rc == -EMFILE)
        return rc; /* the line is fine: we could not take the reply's fds */
    if (rc < 0) {
        fs_discard_locked(1);
        return MPROC_ESERVER;
    }
    return 0;
}

int mproc__forkserver_fork(mproc__request_t *req, const int *fds, size_t nfds, pid_t *pid,
                           int *life_fd, int *status_fd)
{
    pthread_once(&fs_once, fs_install);
    pthread_mutex_lock(&fs_lock);
    /* The child starts in our working directory, as under spawn (Python's
     * forkserver does the same). Only when it differs from the helper's
     * does a handle to it travel with the request. */
    struct stat cwd;
    int cwd_fd = -1;
    int all[MPROC__MAX_FDS];
    memcpy(all, fds, nfds * sizeof fds[0]);
    if (stat(".", &cwd) == 0 && (cwd.st_dev != fs_cwd.st_dev || cwd.st_ino != fs_cwd.st_ino) &&
        nfds < MPROC__MAX_FDS && (cwd_fd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC)) >= 0) {
        all[nfds++] = cwd_fd;
        req->flags |= MPROC__F_CWD;
    }
    mproc__reply_t reply;
    int rfds[2];
    size_t nr = 0;
    int rc = fs_call_locked(req, all, nfds, &reply, rfds, &nr);
    if (cwd_fd >= 0)
        close(cwd_fd);
    if (rc == -EMFILE && reply.err == 0 && reply.pid > 0) {
        /* Forked, but we cannot hold it: it must not run on unwatched. */
        mproc__request_t kill_req = {.type = MPROC__REQ_SIGNAL,
                                     .exit_fd = -1,
                                     .tracker_fd = -1,
                                     .pid = reply.pid,
                                     .sig = SIGKILL};
        mproc__reply_t ignored;
        int none[2];
        size_t nnone = 0;
        fs_call_locked(&kill_req, NULL, 0, &ignored, none, &nnone);
    }
    pthread_mutex_unlock(&fs_lock);
    if (rc < 0)
        return rc;
    if (reply.err == 0 && nr == 2 && reply.pid > 0) {
        *pid = reply.pid;
        *status_fd = rfds[0];
        *life_fd = rfds[1];
        return 0;
    }
    for (size_t i = 0; i < nr; i++)
        close(rfds[i]);
    return reply.err < 0 ? reply.err : MPROC_EPROTO;
}

int mproc__forkserver_signal(pid_t pid, int sig)
{
    mproc__request_t req;
    memset(&req, 0, sizeof req);
    req.type = MPROC__REQ_SIGNAL;
    req.exit_fd = req.tracker_fd = -1;
    req.pid = pid;
    req.sig = sig;
    pthread_once(&fs_once, fs_install);
    pthread_mutex_lock(&fs_lock);
    int rc = -ESRCH; /* no helper: it cannot still own the child */
    if (fs_alive_locked()) {
        mproc__reply_t reply;
        int rfds[2];
        size_t nr = 0;
        rc = fs_call_locked(&req, NULL, 0, &reply, rfds, &nr);
        for (size_t i = 0; i < nr; i++)
            close(rfds[i]);
        if (rc == 0)
            rc = reply.err;
    }
    pthread_mutex_unlock(&fs_lock);
    return rc;
}

/* ---- the helper ------------------------------------------------------------ */

typedef struct {
    pid_t pid;
    int status_fd; /* write end */
} child_t;

static child_t *children;
static size_t n_children, cap_children;
static int sigchld_pipe[2] = {-1, -1};
/* Signals not at their default in the helper, taken once after preload:
 * its children reset just these, not all 64 (spawn reset the rest). */
static sigset_t helper_signals;
static volatile sig_atomic_t told_to_leave;

static void on_signal(int sig)
{
    if (sig == SIGTERM)
        told_to_leave = 1;
    int saved = errno;
    ssize_t n = write(sigchld_pipe[1], "c", 1); /* full pipe: a wake-up is pending */
    (void)n;
    errno = saved;
}

static void reap_children(void)
{
    char drain[64];
    while (read(sigchld_pipe[0], drain, sizeof drain) > 0)
        ;
    for (size_t i = 0; i < n_children;) {
        int code;
        if (mproc__reap(children[i].pid, -1, 0, &code) == 1) {
            int32_t status = code;
            /* A client that closed its end gets EPIPE: nothing to do. */
            ssize_t n = write(children[i].status_fd, &status, sizeof status);
            (void)n;
            close(children[i].status_fd);
            children[i] = children[--n_children];
        } else {
            i++;
        }
    }
}

static int remember_child(pid_t pid, int status_fd)
{
    if (n_children == cap_children) {
        size_t cap = cap_children ? cap_children * 2 : 64;
        child_t *c = realloc(children, cap * sizeof *c);
        if (!c)
            return -ENOMEM;
        children = c;
        cap_children = cap;
    }
    children[n_children++] = (child_t){pid, status_fd};
    return 0;
}

/* In the new child: move the received fds to the numbers the client asked
 * for (its stdio among them), close everything else the helper had, and run
 * the entry. exit_fd is the child's exit pipe in fallback builds, or -1. */
_Noreturn static void become_child(const mproc__request_t *req, mproc_entry_fn fn, int *fds,
                                   int exit_fd, int go_fd, pid_t server)
{
    int base = 3;
    int has_stdio[3] = {0, 0, 0};
    for (uint32_t i = 0; i < req->nfds; i++) {
        if (req->fds[i] >= base)
            base = req->fds[i] + 1;
        if (fds[i] >= base)
            base = fds[i] + 1;
        if (req->fds[i] <= 2)
            has_stdio[req->fds[i]] = 1;
    }
    /* Park above every source and target, so no dup2 below can clobber a
     * fd still to be moved. The cwd fd is parked (and kept) the same way. */
    int cwd_fd = -1;
    if ((req->flags & MPROC__F_CWD) && (cwd_fd = fcntl(fds[req->nfds], F_DUPFD_CLOEXEC, base)) < 0)
        mproc__child_fail(-errno);
    int parked[MPROC__MAX_FDS];
    for (uint32_t i = 0; i < req->nfds; i++)
        if ((parked[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, base)) < 0)
            mproc__child_fail(-errno);
    /* Our own pipes too: their numbers may be ones the client asked for. */
    if (exit_fd >= 0 && (exit_fd = fcntl(exit_fd, F_DUPFD_CLOEXEC, base)) < 0)
        mproc__child_fail(-errno);
    if ((go_fd = fcntl(go_fd, F_DUPFD_CLOEXEC, base)) < 0)
        mproc__child_fail(-errno);
    int keep[MPROC__MAX_FDS + 3]; /* sorted in place by the call below */
    size_t nkeep = req->nfds;
    memcpy(keep, parked, nkeep * sizeof keep[0]);
    keep[nkeep++] = go_fd;
    if (exit_fd >= 0)
        keep[nkeep++] = exit_fd;
    if (cwd_fd >= 0)
        keep[nkeep++] = cwd_fd;
    /* State of the helper's own that names fds about to go (a preload may
     * have made segments and started a tracker): forget, never reuse. */
    mproc__tracker_forget();
    mproc__shm_forget_fds();
    mproc__close_fds_except(keep, nkeep);
    for (uint32_t i = 0; i < req->nfds; i++) {
        if (dup2(parked[i], req->fds[i]) < 0) /* dup2 clears FD_CLOEXEC */
            mproc__child_fail(-errno);
        close(parked[i]);
    }
    for (int fd = 0; fd <= 2; fd++)
        if (!has_stdio[fd])
            close(fd); /* the client had it closed: so does its child */
    if (req->flags & MPROC__F_CWD) {
        /* The client's working directory rode in last; failing to enter
         * it would run the child somewhere its caller did not mean. */
        if (fchdir(cwd_fd) < 0)
            mproc__child_fail(-errno);
        close(cwd_fd);
    }
    mproc__child_adopt_exit_fd(exit_fd);
    /* The client's tracker line came as one of the fds, now at its number. */
    for (uint32_t i = 0; i < req->nfds; i++)
        if (req->tracker_fd >= 0 && req->fds[i] == req->tracker_fd)
            mproc__tracker_adopt(req->tracker_fd, req->tracker_pid);
    /* Run only once the client has been told about us: if the helper dies
     * or cannot answer first, the client's start fails, and so do we. */
    char go;
    ssize_t n;
    do
        n = read(go_fd, &go, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1)
        mproc__child_fail(MPROC_ESERVER);
    close(go_fd);
    mproc__reset_signals_in(&helper_signals);
    if ((req->flags & MPROC__F_DAEMON) && mproc__child_bind_to_parent(server) < 0)
        mproc__child_fail(-ESRCH);
    mproc__child_set_name(req->name);
    mproc__child_run(fn, req->arg, (size_t)req->arglen);
}

/* Clients start the same few entries over and over: remember the last.
 * (The path is kept on the heap: a 4 KiB buffer in .bss would spread the
 * library's globals over one more page, one more copy-on-write fault in
 * every forked child.) */
static int resolve_cached(const mproc__entry_ref_t *ref, mproc_entry_fn *fn)
{
    static mproc__entry_ref_t last;
    static mproc_entry_fn last_fn;
    if (last_fn && ref->offset == last.offset && ref->is_main == last.is_main &&
        ref->build_id_len == last.build_id_len &&
        memcmp(ref->build_id, last.build_id, ref->build_id_len) == 0 && ref->dev == last.dev &&
        ref->ino == last.ino && ref->mtime_ns == last.mtime_ns &&
        strcmp(ref->path, last.path) == 0) {
        *fn = last_fn;
        return 0;
    }
    int rc = mproc__entry_resolve(ref, fn);
    char *path = rc == 0 ? strdup(ref->path) : NULL;
    if (path) {
        free((char *)last.path);
        last = *ref;
        last.path = path;
        last_fn = *fn;
    }
    return rc;
}

static void serve_fork(int sock, const mproc__request_t *req, int *fds, size_t nfds)
{
    mproc_entry_fn fn = NULL;
    int rc = 0;
    if (nfds != req->nfds + !!(req->flags & MPROC__F_CWD) || !(req->flags & MPROC__F_HAS_ENTRY))
        rc = MPROC_EPROTO;
    if (rc == 0)
        rc = resolve_cached(&req->entry, &fn);
    int sp[2] = {-1, -1}, ep[2] = {-1, -1}, gp[2] = {-1, -1};
    if (rc == 0 && (pipe2(sp, O_CLOEXEC) < 0 || pipe2(gp, O_CLOEXEC) < 0))
        rc = -errno;
    if (rc == 0 && !mproc__have_pidfd() && pipe2(ep, O_CLOEXEC) < 0)
        rc = -errno;
    pid_t pid = -1;
    if (rc == 0) {
        sigset_t all, old;
        sigfillset(&all);
        sigprocmask(SIG_SETMASK, &all, &old);
        pid_t server = getpid();
        pid = fork();
        if (pid == 0)
            become_child(req, fn, fds, ep[1], gp[0], server);
        if (pid < 0)
            rc = -errno;
        sigprocmask(SIG_SETMASK, &old, NULL);
    }
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
    if (ep[1] >= 0)
        close(ep[1]);
    if (gp[0] >= 0)
        close(gp[0]);
    if (rc < 0) {
        int leftovers[4] = {sp[0], sp[1], ep[0], gp[1]};
        for (int i = 0; i < 4; i++)
            if (leftovers[i] >= 0)
                close(leftovers[i]);
        mproc__reply_send(sock, rc, 0, NULL, 0);
        return;
    }
    if (remember_child(pid, sp[1]) < 0)
        close(sp[1]); /* the client will see the status as lost */
    /* The client watches the child through a pidfd, or the exit pipe. */
    /* The child runs its entry only once the reply is on its way: if we
     * die first or cannot send it, the go line ends and the child leaves
     * without running. (Letting the client send the go would also cover a
     * client that cannot take the fds, but costs a wake-up on every start:
     * that rare case is handled by the client killing the child.) */
    int out[2] = {sp[0], ep[0] >= 0 ? ep[0] : mproc__pidfd_open(pid)};
    rc = out[1] >= 0 ? 0 : out[1];
    if (mproc__reply_send(sock, rc, pid, out, rc == 0 ? 2 : 1) == 0 && rc == 0)
        mproc__write_full(gp[1], "g", 1);
    close(gp[1]);
    close(out[0]);
    if (out[1] >= 0)
        close(out[1]);
}

static void serve_signal(int sock, const mproc__request_t *req)
{
    int rc = -ESRCH;
    for (size_t i = 0; i < n_children; i++) {
        if (children[i].pid == req->pid) {
            /* Not reaped yet, so the pid is still this child's. */
            rc = kill(req->pid, req->sig) < 0 ? -errno : 0;
            break;
        }
    }
    mproc__reply_send(sock, rc, 0, NULL, 0);
}

_Noreturn void mproc__forkserver_serve(int sock, const mproc__request_t *boot)
{
    /* The program's name, which unnamed children inherit (as forked ones
     * do); the helper is told apart by its pid (mproc_forkserver_pid). */
    mproc__child_set_name(mproc__program_name());
    if (pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        mproc__reply_send(sock, -errno, 0, NULL, 0);
        mproc__child_fail(-errno);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL); /* the client's stop: leave cleanly */
    /* A client's dead status reader must not kill us; Ctrl-C in the
     * terminal is for the client to handle, as Python's helper does. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, SIG_IGN);

    if (boot->flags & MPROC__F_HAS_ENTRY) {
        mproc_entry_fn preload;
        int rc = mproc__entry_resolve(&boot->entry, &preload);
        if (rc == 0 && preload(boot->arg, (size_t)boot->arglen) != 0)
            rc = MPROC_EBOOTSTRAP;
        if (rc < 0) {
            mproc__reply_send(sock, rc, 0, NULL, 0);
            mproc__child_fail(rc);
        }
    }
    /* (What preload leaves in stdio buffers is flushed by the at-fork
     * prepare handler before each fork, so no child repeats it.) */
    mproc__nondefault_signals(&helper_signals);
    mproc__reply_send(sock, 0, getpid(), NULL, 0);

    for (;;) {
        struct pollfd pfd[2] = {{.fd = sock, .events = POLLIN},
                                {.fd = sigchld_pipe[0], .events = POLLIN}};
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) /* SIGCHLD */
                continue;
            break;
        }
        if (pfd[1].revents)
            reap_children();
        if (told_to_leave)
            break;
        if (!pfd[0].revents)
            continue;
        void *buf;
        size_t len, nfds;
        int fds[MPROC__MAX_FDS];
        /* A frame that starts must finish promptly; a client that stalls
         * mid-frame is broken, and we leave as if it had closed. */
        int rc = mproc__frame_recv(sock, MPROC__ARG_MAX + 65536, &buf, &len, fds, MPROC__MAX_FDS,
                                   &nfds, 30000);
        if (rc == -EMFILE) {
            /* At our fd limit: refuse this request, keep serving. */
            free(buf);
            mproc__reply_send(sock, rc, 0, NULL, 0);
            continue;
        }
        if (rc < 0)
            break;
        mproc__request_t req;
        rc = mproc__request_decode(buf, len, &req);
        if (rc == 0 && req.type == MPROC__REQ_FORK) {
            serve_fork(sock, &req, fds, nfds);
        } else {
            for (size_t i = 0; i < nfds; i++)
                close(fds[i]);
            if (rc == 0 && req.type == MPROC__REQ_SIGNAL)
                serve_signal(sock, &req);
            else
                mproc__reply_send(sock, rc < 0 ? rc : MPROC_EPROTO, 0, NULL, 0);
        }
        free(buf);
    }
    /* The client is gone. Children that have exited are reaped (their
     * status pipes then end); the others keep running as orphans. */
    reap_children();
    _exit(0);
}
