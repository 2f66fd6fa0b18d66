/*
 * supervisor.c - the master behind `mproc run`: N workers kept running,
 * sharing listening sockets, watched over pidfds and a notify socket.
 *
 * One loop. Every signal the master acts on is blocked and read from a
 * signalfd, so nothing runs in a handler and nothing arrives between a
 * fork and a handler's set-up (gunicorn#1910, #3198): the signals sit in
 * the signalfd until the loop reads them. The loop waits (epoll) on that
 * signalfd, the notify socket and every worker's process fd, with a
 * timeout for the next timer (a restart after back-off, a SIGKILL after
 * the graceful timeout, a watchdog).
 *
 * Slots and workers. A slot is a worker id 0..N-1; it has at most one
 * current worker, plus old ones being retired (a reload, a recycle). A
 * worker is a mproc child (fork, daemon: it dies with the master) that
 * puts the listening sockets at fds 3.., sets the environment and execs
 * the command.
 *
 * Notify socket. A datagram socket in a private 0700 directory; the
 * kernel stamps each datagram with the sender's pid (SO_PASSCRED), and
 * only a datagram from a current worker's pid is acted on.
 *
 * Upgrade (SIGUSR2). The master execve()s its own executable with its own
 * arguments, keeping its pid: the workers stay its children. The new image
 * takes over the sockets and the workers (upgrade.c carries them across),
 * starts a generation of its own, and retires each old worker once its
 * successor is up, as a reload does. If the new image cannot start
 * workers (its preload fails, a new address cannot be bound), the old
 * workers go on serving under it and nothing new is started ("frozen"):
 * the service stays up and another USR2 can try again.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BINDS_MAX 64
#define QUICK_DEATH_MS 1000 /* a worker dead sooner counts toward back-off */
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 10000

typedef struct worker {
    struct worker *next;
    mproc_process_t *p;
    pid_t pid;
    int slot;
    int64_t started, beat; /* ms: start, last READY/WATCHDOG   */
    int64_t kill_at;       /* ms: SIGKILL then (0: not stopping) */
    int ready;
    int retiring;     /* stopping on purpose: no restart    */
    int succeeded_by; /* a successor of this slot is coming up */
} worker_t;

typedef struct {
    worker_t *current;
    int64_t restart_at; /* ms, 0: none pending                 */
    unsigned quick;     /* quick deaths in a row (back-off)     */
    int empty;          /* exited MPROC_EXIT_NO_RESTART, or removed */
} slot_t;

typedef struct {
    int fd;
    uint64_t ino; /* a unix socket's file: removed at exit only if still it */
    char *path;   /* that file (unix: binds), else NULL */
    char *spec;   /* the --bind text it was made from */
} listener_t;

typedef struct {
    mproc_supervisor_opts_t o;
    listener_t socks[BINDS_MAX];
    int nfds;
    char notify_dir[64], notify_path[96];
    int notify_fd, sig_fd, ep;
    slot_t *slots;
    int nslots, slots_cap;
    worker_t *workers;
    int64_t *restarts; /* times of recent restarts (a ring) */
    unsigned nrestarts;
    int stopping; /* 1 graceful, 2 at once */
    /* A supervisor above (systemd, Type=notify): told READY=1 once the
     * workers are up, STOPPING=1, and fed WATCHDOG=1 if it asked. */
    int told_ready;
    int64_t watchdog_ms, next_watchdog; /* 0: no watchdog above */
    int exit_code;
    int wrote_pidfile;
    sigset_t blocked, old_mask;
    struct sigaction old_chld, old_pipe;
    char *exe, *cwd;        /* an upgrade execs exe in cwd ...   */
    char *const *exec_argv; /* ... with these arguments           */
    const char *no_upgrade; /* why USR2 cannot re-execute, or NULL */
    int frozen;             /* an upgrade that cannot start workers */
    pid_t reap[32];         /* old images' helpers, to collect */
    size_t nreap;
} sup_t;

/* The worker being started (read by the fork child before it execs). */
static sup_t *starting_sup;
static int starting_slot;

static int64_t now_ms(void)
{
    return mproc__now_ms();
}

static void say(const char *fmt, ...)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[512];
    int n = snprintf(line, sizeof line,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ mproc[%d]: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line - 1)
        n = sizeof line - 2;
    line[n++] = '\n';
    mproc__write_full(2, line, (size_t)n);
}

static void status_text(int code, char *buf, size_t cap)
{
    if (code < 0)
        snprintf(buf, cap, "killed by signal %d (%s)", -code, strsignal(-code));
    else
        snprintf(buf, cap, "exit status %d", code);
}

/* ---- listening sockets -------------------------------------------------------- */

static void add_listener(sup_t *s, int fd, uint64_t ino, const char *path, const char *spec)
{
    listener_t *l = &s->socks[s->nfds++];
    l->fd = fd;
    l->ino = ino;
    l->path = path ? strdup(path) : NULL;
    l->spec = strdup(spec); /* NULL only without memory: an upgrade then drops it */
}

static int bind_one(sup_t *s, const char *spec)
{
    int fd;
    if (strncmp(spec, "unix:", 5) == 0) {
        const char *path = spec + 5;
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (!*path || strlen(path) >= sizeof sa.sun_path)
            return -EINVAL;
        strcpy(sa.sun_path, path);
        struct stat st;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        if (lstat(path, &st) == 0) {
            /* Never remove what is not a socket, nor one somebody still
             * listens on: only a stale one an earlier run left. */
            if (!S_ISSOCK(st.st_mode) || connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ||
                errno != ECONNREFUSED) {
                close(fd);
                return -EADDRINUSE;
            }
            close(fd);
            unlink(path);
            fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0)
                return -errno;
        }
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 1024) < 0 ||
            lstat(path, &st) < 0) {
            int e = -errno;
            close(fd);
            return e;
        }
        add_listener(s, fd, (uint64_t)st.st_ino, path, spec);
        return 0;
    }
    /* HOST:PORT or [IPV6]:PORT */
    char host[256];
    const char *port;
    if (spec[0] == '[') {
        const char *end = strchr(spec, ']');
        if (!end || end[1] != ':' || (size_t)(end - spec - 1) >= sizeof host)
            return -EINVAL;
        memcpy(host, spec + 1, (size_t)(end - spec - 1));
        host[end - spec - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host)
            return -EINVAL;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        port = colon + 1;
    }
    char *endp;
    long p = strtol(port, &endp, 10);
    if (!*port || *endp || p < 0 || p > 65535)
        return -EINVAL;
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (!*host || strcmp(host, "0.0.0.0") == 0 || inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)p);
        len = sizeof *in4;
    } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)p);
        len = sizeof *in6;
    } else {
        return -EINVAL; /* names are not resolved: give an address */
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    /* [::] means IPv6 only, so that 0.0.0.0 can be bound beside it. */
    if ((ss.ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0) ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 1024) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    add_listener(s, fd, 0, NULL, spec);
    return 0;
}

/* The address a socket got (the port the kernel chose for :0), as text. */
static const char *bound_name(int fd, const char *spec)
{
    static char buf[128];
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[INET6_ADDRSTRLEN];
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return spec;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in4->sin_addr, host, sizeof host);
        snprintf(buf, sizeof buf, "%s:%d", host, ntohs(in4->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(buf, sizeof buf, "[%s]:%d", host, ntohs(in6->sin6_port));
    } else {
        return spec;
    }
    return buf;
}

/* ---- the notify socket ---------------------------------------------------------- */

/* A master killed by SIGKILL leaves its notify directory behind: the next
 * one to start removes those of this user whose socket nobody holds any
 * more (connect: ECONNREFUSED). A directory without its socket yet is a
 * master being born: left alone. */
static void sweep_stale_notify_dirs(const char *base)
{
    DIR *d = opendir(base);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, "mproc-run-", 10) != 0 || strlen(e->d_name) != 16)
            continue;
        char dir[64], path[96];
        snprintf(dir, sizeof dir, "%s/%s", base, e->d_name);
        snprintf(path, sizeof path, "%s/notify", dir);
        struct stat st;
        if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
            lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode) || st.st_uid != geteuid())
            continue;
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            break;
        int dead = connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno == ECONNREFUSED;
        close(fd);
        if (dead && unlink(path) == 0)
            rmdir(dir);
    }
    closedir(d);
}

static int notify_open(sup_t *s)
{
    const char *base = "/tmp";
    sweep_stale_notify_dirs(base);
    snprintf(s->notify_dir, sizeof s->notify_dir, "%s/mproc-run-XXXXXX", base);
    if (!mkdtemp(s->notify_dir)) {
        s->notify_dir[0] = '\0';
        return -errno;
    }
    snprintf(s->notify_path, sizeof s->notify_path, "%s/notify", s->notify_dir);
    /* Workers may drop privileges: they must still reach the socket. The
     * directory can be passed through, not listed (0711), the socket
     * written by anyone (0666); what authenticates a message is its
     * sender's pid, stamped by the kernel. */
    if (chmod(s->notify_dir, 0711) < 0)
        return -errno;
    s->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s->notify_fd < 0 || fchmod(s->notify_fd, 0666) < 0)
        return -errno;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, s->notify_path);
    int one = 1;
    if (setsockopt(s->notify_fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) < 0 ||
        bind(s->notify_fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return -errno;
    return 0;
}

static worker_t *worker_by_pid(sup_t *s, pid_t pid)
{
    for (worker_t *w = s->workers; w; w = w->next)
        if (w->pid == pid)
            return w;
    return NULL;
}

static void retire(sup_t *s, worker_t *w, const char *why);

static void on_notify(sup_t *s)
{
    for (;;) {
        char buf[1024];
        union {
            char b[CMSG_SPACE(sizeof(struct ucred))];
            struct cmsghdr align;
        } ctl;
        struct iovec iov = {buf, sizeof buf - 1};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
        ssize_t n = recvmsg(s->notify_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
            return; /* EAGAIN: drained */
        if (mh.msg_flags & MSG_TRUNC)
            continue; /* longer than any message we act on: not acted on in part */
        struct ucred cred = {0, 0, 0};
        int have = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
                c->cmsg_len == CMSG_LEN(sizeof cred)) {
                memcpy(&cred, CMSG_DATA(c), sizeof cred);
                have = 1;
            }
        worker_t *w = have ? worker_by_pid(s, cred.pid) : NULL;
        if (!w)
            continue; /* not one of ours: ignored */
        buf[n] = '\0';
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
            if (strcmp(line, "READY=1") == 0) {
                w->beat = now_ms();
                if (!w->ready) {
                    w->ready = 1;
                    say("worker %d pid %d ready", w->slot, (int)w->pid);
                }
                if (s->slots[w->slot].current != w)
                    continue; /* an old worker: nobody waits on it */
                s->slots[w->slot].quick = 0;
                /* Old workers of this slot waiting for it can go. */
                for (worker_t *o = s->workers; o; o = o->next)
                    if (o != w && o->slot == w->slot && o->succeeded_by && !o->kill_at)
                        retire(s, o, "its successor is ready");
            } else if (strcmp(line, "WATCHDOG=1") == 0) {
                w->beat = now_ms();
            } else if (strcmp(line, "MPROC_RECYCLE=1") == 0 && !w->succeeded_by &&
                       s->slots[w->slot].current == w && !s->stopping && !s->frozen) {
                say("worker %d pid %d asks to be replaced", w->slot, (int)w->pid);
                w->succeeded_by = 1;
                s->slots[w->slot].current = NULL;
                s->slots[w->slot].restart_at = now_ms(); /* at once */
            }
        }
    }
}

/* ---- workers -------------------------------------------------------------------- */

static void set_env_int(const char *name, long v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%ld", v);
    setenv(name, buf, 1);
}

/* In the fork child: sockets to 3.., the environment, exec. Never returns
 * on success; 127 if the command cannot be run. */
static int worker_main(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    sup_t *s = starting_sup;
    int n = s->nfds;
    /* Move the sockets above every target number, then down to 3.. (a
     * dup2 onto itself would keep close-on-exec: never do that). */
    int tmp[BINDS_MAX];
    for (int i = 0; i < n; i++) {
        tmp[i] = fcntl(s->socks[i].fd, F_DUPFD_CLOEXEC, 3 + n);
        if (tmp[i] < 0)
            _exit(127);
    }
    if (s->o.worker) {
        /* Prefork: keep what the preload opened; drop the master's own
         * (before the sockets land on 3..: one of them may be there). */
        close(s->ep);
        close(s->sig_fd);
        close(s->notify_fd);
    }
    for (int i = 0; i < n; i++) {
        if (dup2(tmp[i], 3 + i) < 0) /* dup2 clears close-on-exec */
            _exit(127);
        close(tmp[i]);
    }
    int keep[BINDS_MAX];
    for (int i = 0; i < n; i++)
        keep[i] = 3 + i;
    if (!s->o.worker) {
        /* A command starts with stdio and its sockets, nothing the master
         * inherited from whoever started it (as systemd does). */
        mproc__close_fds_except(keep, (size_t)n);
    }
    char names[BINDS_MAX * 8] = ""; /* "bind0:bind1:..." */
    size_t at = 0;
    for (int i = 0; i < n && at < sizeof names; i++)
        at += (size_t)snprintf(names + at, sizeof names - at, "%sbind%d", i ? ":" : "", i);
    if (n) {
        set_env_int("LISTEN_FDS", n);
        set_env_int("LISTEN_PID", (long)getpid());
        setenv("LISTEN_FDNAMES", names, 1);
    } else {
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_PID");
        unsetenv("LISTEN_FDNAMES");
    }
    setenv("NOTIFY_SOCKET", s->notify_path, 1);
    set_env_int("MPROC_WORKER_ID", starting_slot);
    set_env_int("MPROC_WORKERS", s->nslots);
    if (s->o.timeout_ms > 0) {
        set_env_int("WATCHDOG_USEC", (long)s->o.timeout_ms * 1000);
        set_env_int("WATCHDOG_PID", (long)getpid());
    } else {
        unsetenv("WATCHDOG_USEC"); /* a watchdog above is the master's, not ours */
        unsetenv("WATCHDOG_PID");
    }
    if (s->o.worker) {
        /* Prefork mode: no exec; what the preload made is inherited. */
        int rc = s->o.worker_init ? s->o.worker_init(s->o.ctx, starting_slot) : 0;
        if (rc != 0)
            return rc;
        return s->o.worker(s->o.ctx, starting_slot, keep, n);
    }
    execvp(s->o.argv[0], s->o.argv);
    char msg[256];
    int k = snprintf(msg, sizeof msg, "mproc: cannot run %s: %s\n", s->o.argv[0], strerror(errno));
    if (k > 0)
        mproc__write_full(2, msg, (size_t)k < sizeof msg ? (size_t)k : sizeof msg - 1);
    _exit(127);
}

static int start_worker(sup_t *s, int slot)
{
    if (s->frozen)
        return -ECANCELED;
    starting_sup = s;
    starting_slot = slot;
    mproc_process_opts_t po = {.name = "mproc-worker", .method = MPROC_START_FORK, .daemon = 1};
    mproc_process_t *p = NULL;
    int rc = mproc_process_create(&p, worker_main, NULL, 0, &po);
    if (rc == 0)
        rc = mproc_process_start(p);
    worker_t *w = rc == 0 ? calloc(1, sizeof *w) : NULL;
    if (rc == 0 && !w)
        rc = -ENOMEM;
    if (rc == 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = w};
        if (epoll_ctl(s->ep, EPOLL_CTL_ADD, mproc_process_fd(p), &ev) < 0)
            rc = -errno;
    }
    if (rc < 0) {
        if (p && mproc_process_pid(p)) {
            mproc_process_kill(p);
            mproc_process_join(p, MPROC_FOREVER);
        }
        mproc_process_free(p);
        free(w);
        say("worker %d could not be started: %s", slot, mproc_strerror(rc));
        return rc;
    }
    w->p = p;
    w->pid = mproc_process_pid(p);
    w->slot = slot;
    w->started = w->beat = now_ms();
    w->next = s->workers;
    s->workers = w;
    s->slots[slot].current = w;
    s->slots[slot].restart_at = 0;
    say("worker %d pid %d started", slot, (int)w->pid);
    /* Without --ready a successor counts as up once started: the worker
     * it replaces (a recycle) goes now. */
    if (!s->o.ready)
        for (worker_t *o = s->workers; o; o = o->next)
            if (o != w && o->slot == slot && o->succeeded_by && !o->kill_at)
                retire(s, o, "its successor started");
    return 0;
}

/* Stop w gracefully (SIGTERM, SIGKILL after the graceful timeout). */
static void retire(sup_t *s, worker_t *w, const char *why)
{
    w->retiring = 1;
    if (s->slots[w->slot].current == w)
        s->slots[w->slot].current = NULL;
    if (!w->kill_at) {
        mproc_process_terminate(w->p);
        w->kill_at = now_ms() + s->o.graceful_timeout_ms;
        say("worker %d pid %d stopping (%s)", w->slot, (int)w->pid, why);
    }
}

static void forget(sup_t *s, worker_t *w)
{
    for (worker_t **pp = &s->workers; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    epoll_ctl(s->ep, EPOLL_CTL_DEL, mproc_process_fd(w->p), NULL);
    mproc_process_free(w->p);
    free(w);
}

/* Crash-loop accounting: 1 if this restart is one too many. */
static int too_many_restarts(sup_t *s)
{
    int64_t now = now_ms();
    unsigned keep = 0;
    for (unsigned i = 0; i < s->nrestarts; i++)
        if (now - s->restarts[i] <= s->o.restart_window_ms)
            s->restarts[keep++] = s->restarts[i];
    s->nrestarts = keep;
    if (s->nrestarts >= s->o.max_restarts)
        return 1;
    s->restarts[s->nrestarts++] = now;
    return 0;
}

static void begin_stop(sup_t *s, int how, int code);

/* The worker a slot's coming successor is to replace, still running. */
static worker_t *waiting_old(sup_t *s, int slot)
{
    for (worker_t *o = s->workers; o; o = o->next)
        if (o->slot == slot && o->succeeded_by && !o->kill_at)
            return o;
    return NULL;
}

/* A slot's successor ended for good before taking over: the worker it was
 * to replace stays the slot's. 1 if there was one. */
static int reinstate(sup_t *s, int slot)
{
    worker_t *o = waiting_old(s, slot);
    if (!o)
        return 0;
    o->succeeded_by = 0;
    s->slots[slot].current = o;
    say("worker %d pid %d stays: its successor ended", slot, (int)o->pid);
    return 1;
}

/* A new generation (reload, upgrade, recycle) that crash-loops while the
 * worker it was to replace in the dying worker's slot still runs: the old
 * workers stay in charge, in every slot that has one, and the successors
 * not yet ready are stopped. A bad deploy then costs nothing but the log
 * line. The number of slots handed back. */
static int abandon_reload(sup_t *s)
{
    int back = 0;
    for (int i = 0; i < s->nslots; i++) {
        if (!waiting_old(s, i))
            continue;
        worker_t *cur = s->slots[i].current;
        if (cur && !cur->ready)
            retire(s, cur, "its generation crash-loops");
        else if (cur)
            continue; /* ready: it takes over as planned */
        s->slots[i].restart_at = 0;
        reinstate(s, i);
        back++;
    }
    if (back)
        s->nrestarts = 0; /* the old generation starts with a clean slate */
    return back;
}

static void on_worker_exit(sup_t *s, worker_t *w)
{
    int code = 0;
    mproc_process_join(w->p, MPROC_FOREVER);
    mproc_process_exitcode(w->p, &code);
    char st[64];
    status_text(code, st, sizeof st);
    int slot = w->slot, pid = (int)w->pid;
    slot_t *sl = &s->slots[slot];
    int was_current = sl->current == w;
    int lived = (int)(now_ms() - w->started);
    int retiring = w->retiring;
    if (was_current)
        sl->current = NULL;
    forget(s, w);
    if (retiring || s->stopping) {
        say("worker %d pid %d exited, %s", slot, pid, st);
        return;
    }
    if (!was_current) {
        say("worker %d pid %d exited, %s (a successor is on its way)", slot, pid, st);
        return;
    }
    if (s->frozen) {
        sl->empty = 1;
        say("worker %d pid %d exited, %s: not restarted (the upgrade could not start workers)",
            slot, pid, st);
        return;
    }
    if (code == MPROC_EXIT_NO_RESTART) {
        if (reinstate(s, slot))
            return;
        sl->empty = 1;
        say("worker %d pid %d exited with status %d: not restarted, the slot stays empty", slot,
            pid, MPROC_EXIT_NO_RESTART);
        return;
    }
    int restart = s->o.restart == MPROC_RESTART_ALWAYS ||
                  (s->o.restart == MPROC_RESTART_ON_FAILURE && code != 0);
    if (!restart) {
        if (reinstate(s, slot))
            return;
        sl->empty = 1;
        say("worker %d pid %d exited, %s: not restarted (--restart %s)", slot, pid, st,
            s->o.restart == MPROC_RESTART_NEVER ? "never" : "on-failure");
        return;
    }
    if (too_many_restarts(s)) {
        if (waiting_old(s, slot) && abandon_reload(s)) {
            say("crash loop in the new generation: more than %u restarts within %d s: the old "
                "workers stay, the reload is abandoned",
                s->o.max_restarts, s->o.restart_window_ms / 1000);
            return;
        }
        say("crash loop: more than %u restarts within %d s: stopping everything", s->o.max_restarts,
            s->o.restart_window_ms / 1000);
        begin_stop(s, 1, 1);
        return;
    }
    /* Back-off: a slot whose workers keep dying young waits longer each
     * time; the first restart is immediate. */
    int delay = 0;
    if (lived < QUICK_DEATH_MS && sl->quick++ > 0) {
        delay = BACKOFF_FIRST_MS << (sl->quick - 2 < 10 ? sl->quick - 2 : 10);
        if (delay > BACKOFF_MAX_MS)
            delay = BACKOFF_MAX_MS;
    } else if (lived >= QUICK_DEATH_MS) {
        sl->quick = 0;
    }
    say("worker %d pid %d exited, %s: restarting%s", slot, pid, st, delay ? " after back-off" : "");
    sl->restart_at = now_ms() + delay;
    if (!sl->restart_at)
        sl->restart_at = 1;
}

/* ---- stopping, reloading, resizing --------------------------------------------- */

static void begin_stop(sup_t *s, int how, int code)
{
    if (code > s->exit_code)
        s->exit_code = code; /* a crash loop stays a failure */
    if (s->stopping >= how)
        return;
    if (!s->stopping)
        mproc_notify("STOPPING=1"); /* to a supervisor above, if any */
    s->stopping = how;
    for (int i = 0; i < s->nslots; i++)
        s->slots[i].restart_at = 0;
    for (worker_t *w = s->workers; w; w = w->next) {
        if (how == 2) {
            mproc_process_kill(w->p);
            w->kill_at = 1; /* killed: wait for its exit */
        } else if (!w->kill_at) {
            mproc_process_terminate(w->p);
            w->kill_at = now_ms() + s->o.graceful_timeout_ms;
        }
        w->retiring = 1;
    }
}

static void reload(sup_t *s)
{
    if (s->frozen) {
        say("SIGHUP: not reloading: the upgrade could not start workers (SIGUSR2 to try again)");
        return;
    }
    say("reload: starting a new generation of %d workers", s->nslots);
    for (int i = 0; i < s->nslots; i++) {
        slot_t *sl = &s->slots[i];
        if (sl->empty)
            continue;
        worker_t *old = sl->current;
        int waited_on = 0; /* an older worker waits for old to be ready */
        for (worker_t *o = s->workers; old && o; o = o->next)
            waited_on |= o != old && o->slot == i && o->succeeded_by && !o->kill_at;
        if (old && !old->ready && waited_on) {
            retire(s, old, "superseded before it was ready"); /* no pile of generations */
            old = NULL;
        }
        if (old)
            old->succeeded_by = 1;
        sl->current = NULL;
        if (start_worker(s, i) < 0) {
            if (old) {
                old->succeeded_by = 0;
                sl->current = old; /* keep the old one rather than nothing */
            }
            continue;
        }
    }
}

static int grow(sup_t *s)
{
    if (s->nslots == s->slots_cap) {
        int cap = s->slots_cap * 2;
        slot_t *n = realloc(s->slots, (size_t)cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        memset(n + s->slots_cap, 0, (size_t)(cap - s->slots_cap) * sizeof *n);
        s->slots = n;
        s->slots_cap = cap;
    }
    if (s->frozen) {
        say("SIGTTIN: no worker added: the upgrade could not start workers");
        return -ECANCELED;
    }
    int slot = s->nslots++;
    memset(&s->slots[slot], 0, sizeof s->slots[slot]);
    say("adding worker %d (now %d)", slot, s->nslots);
    int rc = start_worker(s, slot);
    if (rc < 0)
        s->slots[slot].restart_at = now_ms() + BACKOFF_FIRST_MS;
    return rc;
}

static void shrink(sup_t *s)
{
    if (s->nslots <= 1)
        return;
    int slot = --s->nslots;
    say("removing worker %d (now %d)", slot, s->nslots);
    for (worker_t *w = s->workers; w; w = w->next)
        if (w->slot == slot)
            retire(s, w, "TTOU");
    s->slots[slot].restart_at = 0;
}

/* ---- upgrading in place (SIGUSR2) ---------------------------------------- */

/* What to exec on SIGUSR2, decided now (by then the old file may be gone):
 * main's arguments, as mproc_init recorded them, in the working directory
 * main started in; the program is argv[0] when that is a path (so a
 * symlink switched to a new release is followed), else the file this
 * executable was started from (a package upgrade renames a new one
 * there). Without mproc_init's record (not called, or this is a spawned
 * child, which main() never ran in) or in a forked copy of main's
 * process, there is nothing safe to re-execute. */
static void record_self(sup_t *s)
{
    char *const *argv;
    const char *cwd;
    if (!mproc__upgrade_self(&argv, &cwd)) {
        s->no_upgrade = "this process is a fork of the one main() runs in";
        return;
    }
    if (!argv || !argv[0] || !cwd) {
        s->no_upgrade = "main() did not call mproc_init(&argc, &argv) (or this is a spawned "
                        "child): its arguments are not known";
        return;
    }
    if (strchr(argv[0], '/')) {
        s->exe = strdup(argv[0]);
    } else {
        char path[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
        const char *gone = " (deleted)"; /* replaced before we started: the path holds the new */
        size_t glen = strlen(gone);
        if (n > 0) {
            path[n] = '\0';
            if ((size_t)n > glen && strcmp(path + n - glen, gone) == 0)
                path[n - glen] = '\0';
            s->exe = strdup(path);
        }
    }
    s->cwd = strdup(cwd);
    s->exec_argv = argv;
    if (!s->exe || !s->cwd)
        s->no_upgrade = "this executable's path could not be found at start";
}

static uint64_t mask_bits(const sigset_t *set)
{
    uint64_t m = 0;
    for (int sig = 1; sig <= 64 && sig < NSIG; sig++)
        if (sigismember(set, sig) == 1)
            m |= 1ull << (sig - 1);
    return m;
}

static void set_workers_cloexec(sup_t *s, int on)
{
    mproc__set_cloexec(s->notify_fd, on);
    for (int i = 0; i < s->nfds; i++)
        if (s->socks[i].spec) /* one without (no memory) is not handed over */
            mproc__set_cloexec(s->socks[i].fd, on);
    for (worker_t *w = s->workers; w; w = w->next)
        mproc__set_cloexec(mproc_process_fd(w->p), on);
}

static void upgrade(sup_t *s)
{
    if (!s->o.upgrade) {
        say("SIGUSR2: ignored (upgrades in place are not enabled)");
        return;
    }
    if (s->no_upgrade) {
        say("SIGUSR2: cannot re-execute: %s", s->no_upgrade);
        return;
    }
    mproc__handover_t h;
    memset(&h, 0, sizeof h);
    h.sigmask = mask_bits(&s->old_mask);
    h.chld_ign = s->old_chld.sa_handler == SIG_IGN;
    h.pipe_ign = s->old_pipe.sa_handler == SIG_IGN;
    h.notify_fd = s->notify_fd;
    snprintf(h.notify_dir, sizeof h.notify_dir, "%s", s->notify_dir);
    for (int i = 0; i < s->nfds; i++)
        if (s->socks[i].spec)
            h.sockets[h.nsockets++] =
                (mproc__handover_socket_t){s->socks[i].fd, s->socks[i].ino, s->socks[i].spec};
    size_t n = 0;
    for (worker_t *w = s->workers; w; w = w->next)
        n++;
    h.workers = calloc(n ? n : 1, sizeof *h.workers);
    if (!h.workers) {
        say("SIGUSR2: cannot re-execute: out of memory");
        return;
    }
    int64_t now = now_ms();
    for (worker_t *w = s->workers; w; w = w->next)
        h.workers[h.nworkers++] =
            (mproc__handover_worker_t){w->slot,
                                       w->pid,
                                       mproc_process_fd(w->p),
                                       w->ready,
                                       s->slots[w->slot].current == w,
                                       !w->kill_at         ? -1
                                       : w->kill_at <= now ? 0
                                                           : (int)(w->kill_at - now)};
    for (size_t i = 0; i < s->nreap && h.nreap < MPROC__ARRAY_LEN(h.reap); i++)
        h.reap[h.nreap++] = s->reap[i];
    pid_t helpers[2] = {mproc_tracker_pid(), mproc_forkserver_pid()};
    for (size_t i = 0; i < 2 && h.nreap < MPROC__ARRAY_LEN(h.reap); i++)
        if (helpers[i] > 0)
            h.reap[h.nreap++] = helpers[i];
    int fd = -1;
    int rc = mproc__handover_write(&h, &fd);
    free(h.workers);
    if (rc == 0)
        rc = mproc__handover_env(fd);
    if (rc < 0) {
        if (fd >= 0)
            close(fd);
        say("SIGUSR2: cannot re-execute: %s", mproc_strerror(rc));
        return;
    }
    say("SIGUSR2: re-executing %s, handing over %zu workers and %d sockets", s->exe, n, s->nfds);
    /* Exactly these fds cross the exec, and only now lose close-on-exec. */
    set_workers_cloexec(s, 0);
    mproc__set_cloexec(fd, 0);
    fflush(NULL); /* the caller's buffered output would die with this image */
    int here = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    int e = 0;
    if (chdir(s->cwd) < 0) {
        /* Gone (a pruned release directory, say): an absolute program can
         * still run, from here; a relative one cannot be found. */
        say("SIGUSR2: main's directory %s: %s%s", s->cwd, strerror(errno),
            s->exe[0] == '/' ? ": re-executing from here" : "");
        if (s->exe[0] != '/')
            e = ENOENT;
    }
    if (e == 0) {
        execv(s->exe, s->exec_argv);
        e = errno;
    }
    if (here >= 0) {
        if (fchdir(here) < 0)
            say("SIGUSR2: cannot return to the working directory: %s", strerror(errno));
        close(here);
    }
    set_workers_cloexec(s, 1);
    mproc__handover_env_clear();
    close(fd);
    say("SIGUSR2: cannot re-execute %s: %s: carrying on", s->exe, strerror(e));
}

/* The new image: take over the workers the old one handed over. Each
 * slot's current worker (or, mid-reload, the one still in charge) stays
 * until its successor is up; the rest are on their way out. */
static int adopt_workers(sup_t *s, const mproc__handover_t *h)
{
    /* Every slot a worker is in must exist here, even one beyond this
     * image's count (a TTIN since the first start): those are retired. */
    int top = s->nslots - 1;
    for (size_t i = 0; i < h->nworkers; i++)
        if (h->workers[i].slot > top)
            top = h->workers[i].slot;
    if (top >= s->slots_cap) {
        slot_t *n = realloc(s->slots, (size_t)(top + 1) * sizeof *n);
        if (!n)
            return -ENOMEM;
        memset(n + s->slots_cap, 0, (size_t)(top + 1 - s->slots_cap) * sizeof *n);
        s->slots = n;
        s->slots_cap = top + 1;
    }
    int64_t now = now_ms();
    for (size_t i = 0; i < h->nworkers; i++) {
        const mproc__handover_worker_t *hw = &h->workers[i];
        mproc_process_t *p = NULL;
        int rc = mproc__process_adopt(&p, hw->pid, hw->life_fd, "mproc-worker", 1);
        worker_t *w = rc == 0 ? calloc(1, sizeof *w) : NULL;
        if (rc == 0 && !w)
            rc = -ENOMEM;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = w};
        if (rc == 0 && epoll_ctl(s->ep, EPOLL_CTL_ADD, mproc_process_fd(p), &ev) < 0)
            rc = -errno;
        if (rc < 0) {
            say("worker %d pid %d cannot be taken over: %s", hw->slot, (int)hw->pid,
                mproc_strerror(rc));
            if (p) {
                mproc_process_kill(p);
                mproc_process_join(p, MPROC_FOREVER);
                mproc_process_free(p);
            }
            free(w);
            continue;
        }
        w->p = p;
        w->pid = hw->pid;
        w->slot = hw->slot;
        w->started = w->beat = now;
        w->ready = hw->ready;
        w->next = s->workers;
        s->workers = w;
        if (hw->kill_left_ms >= 0) { /* was being stopped: goes on */
            w->retiring = 1;
            w->kill_at = now + hw->kill_left_ms;
            if (w->kill_at <= 1)
                w->kill_at = 2;
        }
    }
    /* One worker per slot stays in charge: the current one if it is ready
     * (or the only one), else the ready one it was to replace. */
    for (worker_t *w = s->workers; w; w = w->next) {
        if (w->retiring)
            continue;
        if (w->slot >= s->nslots) {
            retire(s, w, "not in the new image's worker count");
            continue;
        }
        int current = 0;
        for (size_t i = 0; i < h->nworkers; i++)
            if (h->workers[i].pid == w->pid)
                current = h->workers[i].current;
        worker_t *keep = s->slots[w->slot].current;
        if (!keep) {
            s->slots[w->slot].current = w;
        } else if ((current && w->ready) || (!keep->ready && w->ready)) {
            retire(s, keep, "superseded before it was ready");
            s->slots[w->slot].current = w;
        } else {
            retire(s, w, "superseded before it was ready");
        }
    }
    for (size_t i = 0; i < h->nreap && s->nreap < MPROC__ARRAY_LEN(s->reap); i++)
        s->reap[s->nreap++] = h->reap[i];
    return 0;
}

/* An old image's helpers (tracker, forkserver) end once the last of their
 * users is gone; nobody else collects them. */
static void reap_leftovers(sup_t *s)
{
    size_t keep = 0;
    for (size_t i = 0; i < s->nreap; i++) {
        int st;
        pid_t r = waitpid(s->reap[i], &st, WNOHANG);
        if (r == 0 || (r < 0 && errno == EINTR))
            s->reap[keep++] = s->reap[i];
    }
    s->nreap = keep;
}

/* At the end: the helpers end with the last old worker, moments after
 * it; collect them rather than leave them to whoever inherits them. */
static void reap_leftovers_at_exit(sup_t *s)
{
    int64_t end = now_ms() + 2000;
    while (s->nreap) {
        int left = (int)(end - now_ms());
        if (left <= 0)
            break;
        int fd = mproc__pidfd_open(s->reap[0]);
        if (fd >= 0) {
            mproc__poll1(fd, POLLIN, left, NULL);
            close(fd);
        } else {
            struct timespec ts = {0, 5000000}; /* no pidfd: look again shortly */
            nanosleep(&ts, NULL);
        }
        reap_leftovers(s);
    }
}

static void on_signals(sup_t *s)
{
    struct signalfd_siginfo si;
    while (read(s->sig_fd, &si, sizeof si) == (ssize_t)sizeof si) {
        switch (si.ssi_signo) {
        case SIGTERM:
        case SIGINT:
            say("%s: stopping gracefully", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
            begin_stop(s, 1, 0);
            break;
        case SIGQUIT:
            say("SIGQUIT: stopping now");
            begin_stop(s, 2, 0);
            break;
        case SIGHUP:
            if (!s->stopping)
                reload(s);
            break;
        case SIGTTIN:
            if (!s->stopping)
                grow(s);
            break;
        case SIGTTOU:
            if (!s->stopping)
                shrink(s);
            break;
        case SIGUSR2:
            if (!s->stopping)
                upgrade(s);
            break;
        case SIGUSR1:
            say("SIGUSR1: not supported (ignored)");
            break;
        default:
            break; /* SIGCHLD: the pidfds tell */
        }
    }
}

/* ---- the loop ------------------------------------------------------------------- */

/* Every slot that should have a worker has one that is up (ready, with
 * opts.ready): the moment to tell a supervisor above READY=1. */
static int generation_up(sup_t *s)
{
    for (int i = 0; i < s->nslots; i++) {
        worker_t *w = s->slots[i].current;
        if (s->slots[i].empty)
            continue;
        if (!w || (s->o.ready && !w->ready))
            return 0;
    }
    return 1;
}

/* systemd's watchdog for this process (WATCHDOG_USEC, and WATCHDOG_PID if
 * set must be ours): fed at half the period. 0: none. */
static int64_t watchdog_above(void)
{
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    char *end;
    if (!usec || !getenv("NOTIFY_SOCKET"))
        return 0;
    errno = 0;
    unsigned long long u = strtoull(usec, &end, 10);
    if (!*usec || *end || errno || u == 0)
        return 0;
    if (pid && (strtol(pid, &end, 10) != (long)getpid() || *end))
        return 0;
    return u / 2000 > 0 ? (int64_t)(u / 2000) : 1;
}

static int64_t next_timer(sup_t *s)
{
    int64_t t = s->watchdog_ms ? s->next_watchdog : -1;
    for (int i = 0; i < s->nslots; i++)
        if (s->slots[i].restart_at && (t < 0 || s->slots[i].restart_at < t))
            t = s->slots[i].restart_at;
    for (worker_t *w = s->workers; w; w = w->next) {
        if (w->kill_at > 1 && (t < 0 || w->kill_at < t))
            t = w->kill_at;
        if (s->o.timeout_ms > 0 && !w->kill_at) {
            int64_t due = w->beat + s->o.timeout_ms;
            if (t < 0 || due < t)
                t = due;
        }
    }
    return t;
}

static void on_timers(sup_t *s)
{
    int64_t now = now_ms();
    if (s->watchdog_ms && now >= s->next_watchdog) {
        mproc_notify("WATCHDOG=1");
        s->next_watchdog = now + s->watchdog_ms;
    }
    for (worker_t *w = s->workers; w; w = w->next) {
        if (w->kill_at && w->kill_at <= now && w->kill_at > 1) {
            say("worker %d pid %d still running after the graceful timeout: SIGKILL", w->slot,
                (int)w->pid);
            mproc_process_kill(w->p);
            w->kill_at = 1; /* killed: wait for its exit */
        } else if (s->o.timeout_ms > 0 && !w->kill_at && now - w->beat >= s->o.timeout_ms) {
            say("worker %d pid %d silent for %d ms (--timeout): SIGKILL", w->slot, (int)w->pid,
                s->o.timeout_ms);
            mproc_process_kill(w->p);
            w->kill_at = 1; /* its exit restarts the slot, as any death */
            w->retiring = 0;
        }
    }
    for (int i = 0; i < s->nslots; i++) {
        slot_t *sl = &s->slots[i];
        if (sl->restart_at && sl->restart_at <= now && !s->stopping) {
            sl->restart_at = 0;
            if (s->frozen) {
                sl->empty = 1; /* nothing can start here any more */
                continue;
            }
            if (start_worker(s, i) < 0)
                sl->restart_at = now + BACKOFF_MAX_MS;
        }
    }
}

static void cleanup(sup_t *s)
{
    for (int i = 0; i < s->nfds; i++) {
        listener_t *l = &s->socks[i];
        close(l->fd);
        struct stat st;
        if (l->path && lstat(l->path, &st) == 0 && (uint64_t)st.st_ino == l->ino)
            unlink(l->path); /* only if it is still ours */
        free(l->path);
        free(l->spec);
    }
    if (s->notify_fd >= 0)
        close(s->notify_fd);
    if (s->notify_path[0])
        unlink(s->notify_path);
    if (s->notify_dir[0])
        rmdir(s->notify_dir);
    if (s->sig_fd >= 0)
        close(s->sig_fd);
    if (s->ep >= 0)
        close(s->ep);
    if (s->wrote_pidfile)
        unlink(s->o.pidfile);
    while (s->workers) { /* only on a setup failure */
        worker_t *w = s->workers;
        mproc_process_kill(w->p);
        mproc_process_join(w->p, MPROC_FOREVER);
        forget(s, w);
    }
    free(s->slots);
    free(s->restarts);
    free(s->exe);
    free(s->cwd);
    /* Signals that arrived at the end are the master's, handled or not:
     * none may reach the caller with its default action (TTIN would stop
     * it, HUP kill it). */
    struct timespec zero = {0, 0};
    while (sigtimedwait(&s->blocked, NULL, &zero) > 0)
        ;
    sigaction(SIGCHLD, &s->old_chld, NULL);
    sigaction(SIGPIPE, &s->old_pipe, NULL);
    pthread_sigmask(SIG_SETMASK, &s->old_mask, NULL);
}

static int write_pidfile(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    int rc = mproc__write_full(fd, buf, (size_t)n);
    close(fd);
    return rc;
}

int mproc_notify(const char *state)
{
    if (!state)
        return -EINVAL;
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* systemd's spelling of an abstract address */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    ssize_t n;
    do
        n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
                   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    while (n < 0 && errno == EINTR);
    int rc = n < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* The new image of an upgrade: the index of an unclaimed socket the old one
 * listened on for the same --bind text, or -1. */
static int handed_socket(const mproc__handover_t *h, const char *spec, unsigned char *claimed)
{
    for (size_t i = 0; i < h->nsockets; i++)
        if (!claimed[i] && strcmp(h->sockets[i].spec, spec) == 0) {
            claimed[i] = 1;
            return (int)i;
        }
    return -1;
}

static void take_socket(sup_t *s, mproc__handover_socket_t *hs)
{
    int unix_sock = strncmp(hs->spec, "unix:", 5) == 0;
    add_listener(s, hs->fd, hs->ino, unix_sock ? hs->spec + 5 : NULL, hs->spec);
    hs->fd = -1;
}

/* Sockets of the old image left over once this one has its own: dropped
 * when its workers run (it does not listen there any more), kept when it
 * is frozen (the old workers still serve them; the next upgrade gets them). */
static void settle_sockets(sup_t *s, mproc__handover_t *h, int keep)
{
    for (size_t i = 0; i < h->nsockets; i++) {
        mproc__handover_socket_t *hs = &h->sockets[i];
        if (hs->fd < 0)
            continue;
        if (keep && s->nfds < BINDS_MAX) {
            take_socket(s, hs);
            continue;
        }
        if (keep) { /* the old workers serve it still: only our copy goes */
            say("%s: more than %d sockets, not kept for the next upgrade", hs->spec, BINDS_MAX);
            close(hs->fd);
            hs->fd = -1;
            continue;
        }
        say("no longer listening on %s", bound_name(hs->fd, hs->spec));
        struct stat st;
        if (strncmp(hs->spec, "unix:", 5) == 0 && lstat(hs->spec + 5, &st) == 0 &&
            (uint64_t)st.st_ino == hs->ino)
            unlink(hs->spec + 5);
        close(hs->fd);
        hs->fd = -1;
    }
}

/* The new image cannot run at all: nothing may go on unsupervised. */
static void abandon_handover(mproc__handover_t *h)
{
    for (size_t i = 0; i < h->nworkers; i++) {
        pid_t pid = h->workers[i].pid;
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0) { /* ours */
            kill(pid, SIGKILL);
            int st;
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        }
        close(h->workers[i].life_fd);
    }
    h->nworkers = 0;
    settle_sockets(NULL, h, 0);
    if (h->notify_fd >= 0) { /* not taken over yet: nobody else removes it */
        char path[96];
        snprintf(path, sizeof path, "%s/notify", h->notify_dir);
        unlink(path);
        rmdir(h->notify_dir);
        close(h->notify_fd);
    }
    h->notify_fd = -1;
}

/* What to restore on return after an upgrade: the supervisor's own signals
 * as the first image's caller had them (the exec kept them blocked, and
 * SIGPIPE ignored); whatever this image's main() set stays. */
static void restore_point(sup_t *s, const mproc__handover_t *h)
{
    for (int sig = 1; sig <= 64 && sig < NSIG; sig++) {
        if (sigismember(&s->blocked, sig) != 1)
            continue;
        if (h->sigmask & (1ull << (sig - 1)))
            sigaddset(&s->old_mask, sig);
        else
            sigdelset(&s->old_mask, sig);
    }
    struct sigaction *old[] = {&s->old_chld, &s->old_pipe};
    int ign[] = {h->chld_ign, h->pipe_ign};
    for (int i = 0; i < 2; i++)
        if (!(old[i]->sa_flags & SA_SIGINFO) &&
            (old[i]->sa_handler == SIG_DFL || old[i]->sa_handler == SIG_IGN))
            old[i]->sa_handler = ign[i] ? SIG_IGN : SIG_DFL; /* not main's own handler */
}

int mproc_supervise(const mproc_supervisor_opts_t *opts)
{
    if (!opts || (opts->worker != NULL) == (opts->argv != NULL) || (opts->argv && !opts->argv[0]) ||
        opts->workers < 0 || opts->nbinds > BINDS_MAX || (opts->nbinds && !opts->binds) ||
        (unsigned)opts->restart > MPROC_RESTART_NEVER || opts->graceful_timeout_ms < 0 ||
        opts->timeout_ms < 0 || opts->restart_window_ms < 0 || opts->max_restarts > 1000000)
        return -EINVAL;
    for (size_t i = 0; i < opts->nbinds; i++)
        if (!opts->binds[i])
            return -EINVAL;
    mproc__handover_t *h = NULL;
    int rc = mproc__handover_claim(&h);
    if (rc < 0) {
        /* Cannot happen short of a bug: the old image wrote it. Without it
         * the workers and sockets cannot be found; they end with us. */
        say("the previous image's handover is unusable (%s): not starting", mproc_strerror(rc));
        return rc;
    }
    rc = 0;
    sup_t *s = calloc(1, sizeof *s);
    if (!s) {
        mproc__handover_free(h);
        return -ENOMEM;
    }
    s->o = *opts;
    s->notify_fd = s->sig_fd = s->ep = -1;
    if (!s->o.workers) {
        cpu_set_t set;
        s->o.workers = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    }
    if (!s->o.graceful_timeout_ms)
        s->o.graceful_timeout_ms = 30000;
    if (!s->o.max_restarts && !s->o.restart_window_ms) {
        s->o.max_restarts = 10;
        s->o.restart_window_ms = 60000;
    }
    sigemptyset(&s->blocked);
    int sigs[] = {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGTTIN, SIGTTOU, SIGCHLD, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaddset(&s->blocked, sigs[i]);
    /* Blocked before anything else: a signal sent from now on waits in
     * the signalfd, whatever the loop is doing. (After an upgrade they
     * were never unblocked: the mask survives exec, and what arrived
     * meanwhile is still pending.) */
    pthread_sigmask(SIG_BLOCK, &s->blocked, &s->old_mask);
    /* SIGCHLD at SIG_IGN (inherited across exec) would make the kernel
     * reap workers behind the master's back; a closed stderr must not
     * kill it (SIGPIPE). Both are put back when it returns. */
    struct sigaction dfl = {.sa_handler = SIG_DFL}, ign = {.sa_handler = SIG_IGN};
    sigaction(SIGCHLD, &dfl, &s->old_chld);
    sigaction(SIGPIPE, &ign, &s->old_pipe);
    if (h)
        restore_point(s, h);
    record_self(s);

    s->slots_cap = s->o.workers > 4 ? s->o.workers : 4;
    s->slots = calloc((size_t)s->slots_cap, sizeof *s->slots);
    s->restarts = calloc(s->o.max_restarts + 1, sizeof *s->restarts);
    if (!s->slots || !s->restarts)
        rc = -ENOMEM;
    if (rc == 0 && h) {
        say("master pid %d: re-executed, taking over %zu workers and %zu sockets", (int)getpid(),
            h->nworkers, h->nsockets);
        s->notify_fd = h->notify_fd;
        h->notify_fd = -1;
        snprintf(s->notify_dir, sizeof s->notify_dir, "%s", h->notify_dir);
        snprintf(s->notify_path, sizeof s->notify_path, "%s/notify", s->notify_dir);
    } else if (rc == 0) {
        rc = notify_open(s);
    }
    if (rc == 0 && (s->sig_fd = signalfd(-1, &s->blocked, SFD_CLOEXEC | SFD_NONBLOCK)) < 0)
        rc = -errno;
    if (rc == 0 && (s->ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        rc = -errno;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &s->sig_fd};
    if (rc == 0 && epoll_ctl(s->ep, EPOLL_CTL_ADD, s->sig_fd, &ev) < 0)
        rc = -errno;
    ev.data.ptr = &s->notify_fd;
    if (rc == 0 && epoll_ctl(s->ep, EPOLL_CTL_ADD, s->notify_fd, &ev) < 0)
        rc = -errno;
    s->nslots = s->o.workers;
    if (rc == 0 && h) /* from here on, a failure leaves them serving ("frozen") */
        rc = adopt_workers(s, h);
    if (rc != 0 && h)
        abandon_handover(h);
    /* Every socket handed over for a --bind given again is taken before
     * anything is bound: a bind that fails must not lose one. */
    int handed[BINDS_MAX];
    unsigned char claimed[BINDS_MAX] = {0};
    for (size_t i = 0; i < opts->nbinds; i++)
        handed[i] = h && rc == 0 ? handed_socket(h, opts->binds[i], claimed) : -1;
    for (size_t i = 0; rc == 0 && i < opts->nbinds; i++) {
        if (handed[i] >= 0)
            take_socket(s, &h->sockets[handed[i]]);
        else
            rc = bind_one(s, opts->binds[i]);
        if (rc < 0)
            say("cannot listen on %s: %s", opts->binds[i], mproc_strerror(rc));
        else
            say("listening on %s (fd %d in workers%s)",
                bound_name(s->socks[s->nfds - 1].fd, opts->binds[i]), 3 + (int)i,
                handed[i] >= 0 ? ", kept from the previous image" : "");
    }
    /* After the binds: a second instance that finds its address taken must
     * not touch the first one's pidfile. */
    if (rc == 0 && s->o.pidfile && (rc = write_pidfile(s->o.pidfile)) < 0)
        say("cannot write the pidfile %s: %s", s->o.pidfile, mproc_strerror(rc));
    s->wrote_pidfile = rc == 0 && s->o.pidfile;
    if (rc == 0 && s->o.preload && (rc = s->o.preload(s->o.ctx)) != 0) {
        say("preload failed (%d): not starting", rc);
        rc = 1;
    }
    if (rc != 0 && h && s->workers && s->ep >= 0) {
        say("the upgrade cannot start workers: the old ones go on serving, none will be "
            "started (SIGUSR2 to try again, SIGTERM to stop)");
        s->frozen = 1;
        s->exit_code = 1;
        /* Same pid as the image that wrote it: this one removes it. */
        if (s->o.pidfile && !s->wrote_pidfile)
            s->wrote_pidfile = write_pidfile(s->o.pidfile) == 0;
        for (int i = 0; i < s->nslots; i++)
            if (!s->slots[i].current)
                s->slots[i].empty = 1;
        rc = 0;
    }
    if (h)
        settle_sockets(s, h, s->frozen);
    mproc__handover_free(h);
    if (rc != 0) {
        cleanup(s);
        free(s);
        return rc;
    }
    if ((s->watchdog_ms = watchdog_above()) > 0)
        s->next_watchdog = now_ms(); /* the first beat at once */
    if (!s->frozen) {
        say("master pid %d: %d workers of %s", (int)getpid(), s->nslots,
            s->o.argv ? s->o.argv[0] : "a function (prefork)");
        for (int i = 0; i < s->nslots; i++) {
            worker_t *old = s->slots[i].current; /* taken over: waits for its successor */
            if (old) {
                old->succeeded_by = 1;
                s->slots[i].current = NULL;
            }
            if (start_worker(s, i) < 0) {
                if (old && reinstate(s, i))
                    continue;
                s->slots[i].restart_at = now_ms() + BACKOFF_FIRST_MS;
            }
        }
    }

    while (!(s->stopping && !s->workers)) {
        int64_t t = next_timer(s);
        int wait = t < 0 ? -1 : (int)(t - now_ms() > 0 ? t - now_ms() : 0);
        struct epoll_event evs[32];
        int n = epoll_wait(s->ep, evs, 32, wait);
        if (n < 0 && errno != EINTR) {
            say("epoll_wait: %s", strerror(errno));
            begin_stop(s, 2, 1);
            continue;
        }
        worker_t *exited[32];
        int nexited = 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &s->sig_fd)
                on_signals(s);
            else if (evs[i].data.ptr == &s->notify_fd)
                on_notify(s);
            else
                exited[nexited++] = evs[i].data.ptr; /* a worker's process fd */
        }
        /* After the signals and notes: a worker is freed here, and only here. */
        for (int i = 0; i < nexited; i++)
            if (mproc_process_is_alive(exited[i]->p) <= 0) /* < 0: cannot tell: gone */
                on_worker_exit(s, exited[i]);
        on_timers(s);
        if (!s->told_ready && !s->stopping && generation_up(s)) {
            char up[96];
            snprintf(up, sizeof up, "READY=1\nMAINPID=%d\nSTATUS=%d workers up", (int)getpid(),
                     s->nslots);
            mproc_notify(up);
            s->told_ready = 1;
        }
        if (s->nreap)
            reap_leftovers(s);
        int live = 0;
        for (int i = 0; i < s->nslots; i++)
            live += !s->slots[i].empty;
        if (!s->stopping && !s->workers && !live) {
            say("no worker left to run: stopping");
            begin_stop(s, 1, 0);
        }
    }
    reap_leftovers_at_exit(s);
    int code = s->exit_code;
    say("master exits with status %d", code);
    cleanup(s);
    free(s);
    return code;
}
