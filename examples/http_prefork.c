/*
 * http_prefork.c - a small prefork HTTP/1.1 worker, the kind a supervisor
 * (`mproc run`, gunicorn's master, systemd socket activation) starts several
 * of on one shared listening socket. It counts requests across all workers
 * in a named shared memory segment under a robust mproc lock (P9).
 *
 *   http_prefork                         serve (under a supervisor)
 *   http_prefork --master ADDR N         be the supervisor too: N workers
 *   http_prefork --make-counter NAME     create the shared counter segment
 *   http_prefork --remove-counter NAME   unlink it
 *
 * --master is mproc_supervise's prefork mode: this program binds ADDR
 * (HOST:PORT, [IPV6]:PORT, unix:PATH), its preload makes the counter once
 * (every worker inherits it, lock included), and workers are forked from
 * it, no exec. Signals as for `mproc run` (docs/supervisor.md): HUP
 * reloads, and SIGUSR2 re-executes this program in place, so a rebuilt
 * http_prefork takes over without refusing a connection. The master's log
 * goes to stderr. again
 *
 * What it takes from its environment (systemd's conventions):
 *
 *   LISTEN_FDS, LISTEN_PID   the listening socket(s), from fd 3 on; LISTEN_PID
 *                            must be this process. The first one is used.
 *                            Missing: exit 2. (Unset after reading, with
 *                            LISTEN_FDNAMES, as sd_listen_fds(1) does.)
 *   NOTIFY_SOCKET            AF_UNIX datagram socket (a path, or "@name" for
 *                            an abstract one): "READY=1" once serving,
 *                            "WATCHDOG=1" every WATCHDOG_USEC / 2,
 *                            "MPROC_RECYCLE=1" once MAX_REQUESTS is reached,
 *                            "STOPPING=1" when a graceful stop begins.
 *   WATCHDOG_USEC, WATCHDOG_PID   the watchdog period; WATCHDOG_PID, if set,
 *                            must be this process. (Unset after reading.)
 *   MPROC_WORKER_ID          shown in the greeting.
 *   HTTP_COUNTER_SHM         name of the segment made by --make-counter:
 *                            objects "lock" (lock) and "count" (uint64[1]).
 *                            Unset: a private counter (this worker only).
 *   MAX_REQUESTS             after this many requests, ask to be replaced.
 *
 * HTTP: GET (and HEAD) of "/" answers "hello from worker <id> pid <pid>
 * request <n>"; "/count" answers how many requests for "/" and "/count" all
 * the workers have answered, this one included (n above is the same count).
 * Any other path is 404, another method 405; a malformed request or one
 * whose head exceeds 8 KiB gets 400 and the connection closes. Keep-alive
 * unless the client says "Connection: close" (or is HTTP/1.0 without
 * "Connection: keep-alive"). Idle connections close after 30 s.
 *
 * The counter segment outlives --make-counter on purpose (see make_counter):
 * remove it with --remove-counter; `mproc clean` also sweeps it whenever no
 * process has it open, so do not run a sweep between the two.
 *
 * SIGTERM or SIGINT: stop accepting, finish the requests already received
 * (for at most 3 s), exit 0. Exit codes: 0 stopped, 1 runtime failure, 2
 * bad usage or environment.
 *
 * Single-threaded: one poll() loop over a self-pipe (signals), the listening
 * socket (non-blocking accept4: the other workers accept on the same socket,
 * so EAGAIN is normal) and up to 1024 client connections.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <mproc.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define REQ_MAX 8192          /* request line + headers, bytes */
#define OUT_MAX 4096          /* queued response bytes per connection */
#define RESP_MAX 512          /* the longest response we build */
#define MAX_CONNS 1024        /* open client connections per worker */
#define IDLE_MS 30000         /* idle keep-alive connections close after */
#define GRACE_MS 3000         /* how long a graceful stop may take */
#define ACCEPT_BATCH 64       /* accepts per wake-up, to stay fair */
#define ACCEPT_BACKOFF_MS 100 /* pause after EMFILE and friends */
#define COUNTER_SHM_SIZE 4096 /* arena of the counter segment */
#define LOCK_TIMEOUT_MS 1000  /* a counter update waits at most this */

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail with this clock */
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A decimal number in [min, max] and nothing else; -1 if it is not one. */
static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static void close_fd(int fd)
{
    /* close is not retried on EINTR on Linux: the fd is gone either way. */
    if (fd >= 0)
        close(fd);
}

/* ------------------------------------------------------------------------ */
/* Signals: the handler only sets a flag and wakes poll through a pipe      */
/* ------------------------------------------------------------------------ */

static volatile sig_atomic_t stop_requested;
static int sig_pipe[2] = {-1, -1};

static void on_stop_signal(int sig)
{
    (void)sig;
    int saved = errno;
    stop_requested = 1;
    ssize_t n = write(sig_pipe[1], "x", 1); /* full pipe: a wake-up is pending */
    (void)n;
    errno = saved;
}

static int setup_signals(void)
{
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        perror("http_prefork: pipe2");
        return -1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0) {
        perror("http_prefork: sigaction");
        return -1;
    }
    /* Writes use MSG_NOSIGNAL; this is for anything else. */
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL) < 0) {
        perror("http_prefork: sigaction");
        return -1;
    }
    return 0;
}

static void drain_sig_pipe(void)
{
    char buf[64];
    while (read(sig_pipe[0], buf, sizeof buf) > 0)
        ;
}

/* ------------------------------------------------------------------------ */
/* sd_listen_fds and sd_notify, without libsystemd                          */
/* ------------------------------------------------------------------------ */

#define LISTEN_FDS_START 3

/* The first socket passed with LISTEN_FDS, made close-on-exec and
 * non-blocking; -1 after printing why not. */
static int listen_fd_from_env(void)
{
    const char *fds = getenv("LISTEN_FDS");
    const char *pid = getenv("LISTEN_PID");
    uint64_t nfds, lpid;
    int fd = -1;
    if (!fds || !pid) {
        fprintf(stderr, "http_prefork: LISTEN_FDS/LISTEN_PID not set: run me under a "
                        "supervisor that passes a listening socket (systemd socket "
                        "activation, `mproc run`)\n");
    } else if (parse_u64(pid, 1, INT_MAX, &lpid) < 0 || (pid_t)lpid != getpid()) {
        fprintf(stderr, "http_prefork: LISTEN_PID=%s is not this process (%d)\n", pid,
                (int)getpid());
    } else if (parse_u64(fds, 1, INT_MAX - LISTEN_FDS_START, &nfds) < 0) {
        fprintf(stderr, "http_prefork: LISTEN_FDS=%s: need a count of at least 1\n", fds);
    } else {
        fd = LISTEN_FDS_START;
    }
    /* As sd_listen_fds(1): the variables are for this process only. */
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDNAMES");
    if (fd < 0)
        return -1;

    int type = 0, listening = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) {
        fprintf(stderr, "http_prefork: fd %d: %s\n", fd, strerror(errno));
        return -1;
    }
    len = sizeof listening;
    if (type != SOCK_STREAM || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 ||
        !listening) {
        fprintf(stderr, "http_prefork: fd %d is not a listening stream socket\n", fd);
        return -1;
    }
    /* FD_CLOEXEC is this fd's own flag (sd_listen_fds sets it too).
     * O_NONBLOCK is the open file's, shared with the other workers: they
     * all poll and accept4 the same way, and must not block in accept
     * when another worker took the connection. */
    int fdfl = fcntl(fd, F_GETFD);
    int flfl = fdfl < 0 ? -1 : fcntl(fd, F_GETFL);
    if (flfl < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0 ||
        fcntl(fd, F_SETFL, flfl | O_NONBLOCK) < 0) {
        fprintf(stderr, "http_prefork: fd %d: fcntl: %s\n", fd, strerror(errno));
        return -1;
    }
    return fd;
}

typedef struct {
    int fd; /* -1: no NOTIFY_SOCKET */
    struct sockaddr_un addr;
    socklen_t addr_len;
    int warned;
} notifier_t;

/* 0 with n->fd -1 if NOTIFY_SOCKET is not set; -1 if it is unusable. */
static int notify_setup(notifier_t *n)
{
    memset(n, 0, sizeof *n);
    n->fd = -1;
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len < 2 || len > sizeof n->addr.sun_path) {
        fprintf(stderr, "http_prefork: NOTIFY_SOCKET=%s: not an absolute path or @name\n", path);
        return -1;
    }
    if (path[0] == '/' && len == sizeof n->addr.sun_path) {
        fprintf(stderr, "http_prefork: NOTIFY_SOCKET: path too long\n");
        return -1;
    }
    n->addr.sun_family = AF_UNIX;
    memcpy(n->addr.sun_path, path, len);
    if (path[0] == '@')
        n->addr.sun_path[0] = '\0'; /* abstract: no terminating NUL counted */
    n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (n->fd < 0) {
        perror("http_prefork: socket(NOTIFY_SOCKET)");
        return -1;
    }
    return 0;
}

/* Best effort, never blocks the event loop: a supervisor whose queue is
 * full or that is gone loses the message (said once on stderr). */
static void notify_send(notifier_t *n, const char *msg)
{
    if (n->fd < 0)
        return;
    ssize_t r;
    do
        r = sendto(n->fd, msg, strlen(msg), MSG_NOSIGNAL | MSG_DONTWAIT,
                   (const struct sockaddr *)&n->addr, n->addr_len);
    while (r < 0 && errno == EINTR);
    if (r < 0 && !n->warned) {
        fprintf(stderr, "http_prefork: notify \"%s\": %s\n", msg, strerror(errno));
        n->warned = 1;
    } else if (r >= 0) {
        n->warned = 0;
    }
}

/* The watchdog interval in ms (WATCHDOG_USEC / 2), 0 if none. */
static int64_t watchdog_interval_from_env(void)
{
    const char *usec = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    uint64_t u = 0, p;
    int64_t ms = 0;
    if (usec) {
        if (parse_u64(usec, 1, UINT64_MAX / 2, &u) < 0)
            fprintf(stderr, "http_prefork: WATCHDOG_USEC=%s ignored: not a number\n", usec);
        else if (pid && (parse_u64(pid, 1, INT_MAX, &p) < 0 || (pid_t)p != getpid()))
            ; /* meant for another process: not ours to feed */
        else
            ms = (int64_t)(u / 2000) > 0 ? (int64_t)(u / 2000) : 1;
    }
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    return ms;
}

/* ------------------------------------------------------------------------ */
/* The request counter                                                      */
/* ------------------------------------------------------------------------ */

typedef struct {
    mproc_shm_t *shm;
    mproc_lock_t *lock;
    uint64_t *count;
    int shared; /* 1: HTTP_COUNTER_SHM, all workers; 0: this worker's own */
} counter_t;

static int counter_objects(counter_t *c, int create)
{
    int rc;
    if (create) {
        rc = mproc_lock_create(c->shm, "lock", &c->lock);
        if (rc == 0)
            rc = mproc_array_create(c->shm, "count", MPROC_UINT64, 1, (void **)&c->count);
        return rc;
    }
    size_t n = 0;
    rc = mproc_lock_open(c->shm, "lock", &c->lock);
    if (rc == 0)
        rc = mproc_array_open(c->shm, "count", MPROC_UINT64, (void **)&c->count, &n);
    if (rc == 0 && n < 1)
        rc = MPROC_ETYPE;
    return rc;
}

static int counter_setup(counter_t *c)
{
    memset(c, 0, sizeof *c);
    const char *name = getenv("HTTP_COUNTER_SHM");
    int rc;
    if (name && *name) {
        c->shared = 1;
        rc = mproc_shm_open(&c->shm, name);
        if (rc == 0)
            rc = counter_objects(c, 0);
    } else {
        rc = mproc_shm_create(&c->shm, COUNTER_SHM_SIZE);
        if (rc == 0)
            rc = counter_objects(c, 1);
    }
    if (rc < 0) {
        fprintf(stderr, "http_prefork: counter %s%s: %s\n", c->shared ? "segment " : "",
                c->shared ? name : "(private)", mproc_strerror(rc));
        mproc_shm_close(c->shm);
        c->shm = NULL;
    }
    return rc;
}

/* Count one request; *total gets the count including it. */
static int counter_bump(counter_t *c, uint64_t *total)
{
    int rc = mproc_lock_acquire(c->lock, LOCK_TIMEOUT_MS);
    if (rc == -EOWNERDEAD) {
        /* A worker died holding the lock. The count is one aligned 64-bit
         * store, so whatever it left is a valid count: nothing to repair. */
        fprintf(stderr, "http_prefork: counter lock holder died: recovered\n");
        rc = mproc_lock_consistent(c->lock);
        if (rc < 0) {
            mproc_lock_release(c->lock);
            return rc;
        }
    } else if (rc < 0) {
        return rc;
    }
    *total = ++*c->count;
    return mproc_lock_release(c->lock);
}

static int counter_read(counter_t *c, uint64_t *total)
{
    return counter_bump(c, total); /* /count is a request too */
}

/*
 * --make-counter NAME: a segment that outlives this command. A named
 * segment is registered with the resource tracker, which unlinks it once
 * its creator has exited and nobody maps it (P7): mproc_shm_keep takes it
 * off the tracker's list, so it stays until --remove-counter unlinks it
 * (or `mproc clean` sweeps it, unused).
 *
 * --remove-counter NAME: open and unlink.
 */
static int make_counter(const char *name)
{
    counter_t c = {0};
    int rc = mproc_shm_create_named(&c.shm, COUNTER_SHM_SIZE, name);
    if (rc < 0)
        return rc;
    rc = counter_objects(&c, 1);
    if (rc == 0)
        rc = mproc_shm_keep(c.shm);
    if (rc < 0)
        mproc_shm_unlink(c.shm);
    mproc_shm_close(c.shm);
    return rc;
}

static int counter_admin(const char *what, const char *name)
{
    int rc;
    if (strcmp(what, "--make-counter") == 0) {
        rc = make_counter(name);
    } else {
        mproc_shm_t *shm = NULL;
        rc = mproc_shm_open(&shm, name);
        if (rc == 0)
            rc = mproc_shm_unlink(shm);
        mproc_shm_close(shm);
    }
    if (rc < 0)
        fprintf(stderr, "http_prefork: %s %s: %s\n", what, name, mproc_strerror(rc));
    return rc < 0 ? 1 : 0;
}

/* ------------------------------------------------------------------------ */
/* Connections and HTTP                                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
    int fd;
    int closing;      /* close once out is flushed; read no more */
    int dead;         /* closed: drop from the table */
    int64_t last_ms;  /* last activity, for the idle timeout */
    uint64_t discard; /* request body bytes still to skip */
    size_t in_len;
    size_t out_len, out_off;
    char in[REQ_MAX];
    char out[OUT_MAX];
} conn_t;

typedef struct {
    counter_t counter;
    notifier_t notify;
    const char *worker_id;
    pid_t pid;
    uint64_t served;       /* by this worker */
    uint64_t max_requests; /* 0: no limit */
    int recycle_sent;
    int stopping;
    conn_t *conns[MAX_CONNS];
    size_t nconns;
} server_t;

typedef struct {
    int head; /* HEAD: headers only */
    int keep_alive;
    int status;        /* 0 while fine */
    uint64_t body_len; /* Content-Length */
} request_t;

/* Where the head (request line + headers) ends: the index just past its
 * empty line, 0 if it has not all arrived. Bare LF is accepted for CRLF. */
static size_t head_end(const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        size_t j = i + 1;
        if (j < len && buf[j] == '\r')
            j++;
        if (j < len && buf[j] == '\n')
            return j + 1;
    }
    return 0;
}

static int is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Does the comma-separated list v[0..n) hold token tok (any case)? */
static int has_token(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok), i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, tok, tl) == 0)
            return 1;
    }
    return 0;
}

/*
 * Parse the head buf[0..len) (its empty line included). Fills r; the
 * path goes to *path / *path_len (without the query). r->status is set
 * to an error status for requests we refuse.
 */
static void parse_request(const char *buf, size_t len, request_t *r, const char **path,
                          size_t *path_len)
{
    memset(r, 0, sizeof *r);
    *path = "";
    *path_len = 0;
    if (memchr(buf, '\0', len)) {
        r->status = 400;
        return;
    }
    /* Request line: METHOD SP target SP HTTP/x.y */
    const char *end = memchr(buf, '\n', len);
    size_t line = (size_t)(end - buf);
    if (line > 0 && buf[line - 1] == '\r')
        line--;
    const char *sp1 = memchr(buf, ' ', line);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', line - (size_t)(sp1 + 1 - buf)) : NULL;
    if (!sp1 || !sp2 || sp1 == buf || sp2 == sp1 + 1) {
        r->status = 400;
        return;
    }
    for (const char *p = buf; p < sp1; p++)
        if (!is_tchar((unsigned char)*p)) {
            r->status = 400;
            return;
        }
    const char *target = sp1 + 1;
    size_t target_len = (size_t)(sp2 - target);
    const char *version = sp2 + 1;
    size_t version_len = line - (size_t)(version - buf);
    for (size_t i = 0; i < target_len; i++)
        if ((unsigned char)target[i] <= ' ' || target[i] == 0x7f) {
            r->status = 400;
            return;
        }
    int minor;
    if (version_len == 8 && memcmp(version, "HTTP/1.", 7) == 0 && version[7] >= '0' &&
        version[7] <= '9') {
        minor = version[7] - '0';
    } else if (version_len == 8 && memcmp(version, "HTTP/", 5) == 0 && version[5] >= '2' &&
               version[5] <= '9' && version[6] == '.' && version[7] >= '0' && version[7] <= '9') {
        r->status = 505;
        return;
    } else {
        r->status = 400;
        return;
    }
    r->keep_alive = minor >= 1;

    size_t mlen = (size_t)(sp1 - buf);
    if (mlen == 4 && memcmp(buf, "HEAD", 4) == 0)
        r->head = 1;
    else if (!(mlen == 3 && memcmp(buf, "GET", 3) == 0))
        r->status = 405; /* still parse the headers: the body must be skipped */

    const char *q = memchr(target, '?', target_len);
    *path = target;
    *path_len = q ? (size_t)(q - target) : target_len;

    /* Headers: name ":" OWS value OWS, one per line, up to the empty line. */
    int have_length = 0;
    size_t pos = (size_t)(end - buf) + 1;
    while (pos < len) {
        const char *l = buf + pos;
        const char *nl = memchr(l, '\n', len - pos);
        if (!nl)
            break; /* cannot happen: the head ends with an empty line */
        size_t ll = (size_t)(nl - l);
        pos += ll + 1;
        if (ll > 0 && l[ll - 1] == '\r')
            ll--;
        if (ll == 0)
            break; /* the empty line */
        const char *colon = memchr(l, ':', ll);
        if (!colon || colon == l) {
            r->status = 400; /* also obsolete line folding (leading space) */
            return;
        }
        for (const char *p = l; p < colon; p++)
            if (!is_tchar((unsigned char)*p)) {
                r->status = 400;
                return;
            }
        size_t nlen = (size_t)(colon - l);
        const char *v = colon + 1;
        size_t vlen = ll - nlen - 1;
        while (vlen > 0 && (*v == ' ' || *v == '\t'))
            v++, vlen--;
        while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
            vlen--;
        if (nlen == 10 && strncasecmp(l, "connection", 10) == 0) {
            if (has_token(v, vlen, "close"))
                r->keep_alive = 0;
            else if (has_token(v, vlen, "keep-alive"))
                r->keep_alive = 1;
        } else if (nlen == 14 && strncasecmp(l, "content-length", 14) == 0) {
            char num[24];
            uint64_t n;
            if (vlen == 0 || vlen >= sizeof num) {
                r->status = 400;
                return;
            }
            memcpy(num, v, vlen);
            num[vlen] = '\0';
            if (parse_u64(num, 0, UINT64_MAX, &n) < 0 || (have_length && n != r->body_len)) {
                r->status = 400;
                return;
            }
            have_length = 1;
            r->body_len = n;
        } else if (nlen == 17 && strncasecmp(l, "transfer-encoding", 17) == 0) {
            r->status = 501; /* no chunked bodies here: cannot find the next request */
            r->keep_alive = 0;
            return;
        }
    }
}

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

/* Queue one response on c (there is room for RESP_MAX bytes). */
static void queue_response(conn_t *c, int status, const char *body, int head, int keep_alive)
{
    char date[64];
    time_t t = time(NULL);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
        date[0] = '\0';
    size_t blen = strlen(body);
    int n =
        snprintf(c->out + c->out_len, OUT_MAX - c->out_len,
                 "HTTP/1.1 %d %s\r\n"
                 "Date: %s\r\n"
                 "Content-Type: text/plain; charset=utf-8\r\n"
                 "Content-Length: %zu\r\n"
                 "%s"
                 "Connection: %s\r\n"
                 "\r\n"
                 "%s",
                 status, reason(status), date, blen, status == 405 ? "Allow: GET, HEAD\r\n" : "",
                 keep_alive ? "keep-alive" : "close", head ? "" : body);
    if (n < 0 || (size_t)n >= OUT_MAX - c->out_len) {
        /* Cannot happen with RESP_MAX of room; never send half a response. */
        c->closing = 1;
        return;
    }
    c->out_len += (size_t)n;
    if (!keep_alive)
        c->closing = 1;
}

static void after_request(server_t *s)
{
    s->served++;
    if (s->max_requests && s->served >= s->max_requests && !s->recycle_sent) {
        notify_send(&s->notify, "MPROC_RECYCLE=1");
        s->recycle_sent = 1;
    }
}

/* Answer every complete request buffered on c, while output has room. */
static void process_input(server_t *s, conn_t *c)
{
    while (!c->closing && OUT_MAX - c->out_len >= RESP_MAX) {
        /* Skip what is left of the previous request's body. */
        if (c->discard > 0) {
            size_t d = c->discard < c->in_len ? (size_t)c->discard : c->in_len;
            memmove(c->in, c->in + d, c->in_len - d);
            c->in_len -= d;
            c->discard -= d;
            if (c->discard > 0)
                return;
        }
        /* Empty lines before a request line are allowed (RFC 9112 2.2). */
        size_t skip = 0;
        while (skip < c->in_len && (c->in[skip] == '\r' || c->in[skip] == '\n'))
            skip++;
        if (skip > 0) {
            memmove(c->in, c->in + skip, c->in_len - skip);
            c->in_len -= skip;
        }
        size_t hlen = head_end(c->in, c->in_len);
        if (hlen == 0) {
            if (c->in_len == REQ_MAX) {
                queue_response(c, 400, "request head too large\n", 0, 0);
                after_request(s);
            }
            return; /* wait for more */
        }

        request_t r;
        const char *path;
        size_t plen;
        parse_request(c->in, hlen, &r, &path, &plen);
        int keep = r.keep_alive && !s->stopping;
        char body[RESP_MAX / 2];
        int status = r.status;
        if (status == 0 && plen == 1 && path[0] == '/') {
            uint64_t n;
            int rc = counter_bump(&s->counter, &n);
            if (rc < 0) {
                fprintf(stderr, "http_prefork: counter: %s\n", mproc_strerror(rc));
                status = 500;
            } else {
                status = 200;
                snprintf(body, sizeof body, "hello from worker %s pid %d request %llu\n",
                         s->worker_id, (int)s->pid, (unsigned long long)n);
            }
        } else if (status == 0 && plen == 6 && memcmp(path, "/count", 6) == 0) {
            uint64_t n;
            int rc = counter_read(&s->counter, &n);
            if (rc < 0) {
                fprintf(stderr, "http_prefork: counter: %s\n", mproc_strerror(rc));
                status = 500;
            } else {
                status = 200;
                snprintf(body, sizeof body, "%llu\n", (unsigned long long)n);
            }
        } else if (status == 0) {
            status = 404;
        }
        if (status != 200)
            snprintf(body, sizeof body, "%d %s\n", status, reason(status));
        if (status == 400 || status == 501 || status == 505)
            keep = 0; /* we may not know where the next request starts */
        queue_response(c, status, body, r.head, keep);
        after_request(s);

        memmove(c->in, c->in + hlen, c->in_len - hlen);
        c->in_len -= hlen;
        c->discard = keep ? r.body_len : 0;
    }
}

static void conn_close(conn_t *c)
{
    if (!c->dead) {
        close_fd(c->fd);
        c->fd = -1;
        c->dead = 1;
    }
}

/* Read what the peer sent (until EAGAIN or a full buffer). */
static void conn_read(server_t *s, conn_t *c, int64_t now)
{
    for (;;) {
        size_t room = REQ_MAX - c->in_len;
        if (room == 0)
            break;
        ssize_t n = recv(c->fd, c->in + c->in_len, room, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            c->last_ms = now;
            process_input(s, c);
            if (c->closing || OUT_MAX - c->out_len < RESP_MAX)
                break; /* stop reading until the output drains */
            continue;
        }
        if (n == 0) {
            /* The peer is done sending; what is queued can still go out. */
            c->closing = 1;
            c->in_len = 0;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            conn_close(c); /* ECONNRESET and the like */
        break;
    }
}

/* Send queued output; close when done and closing; then answer requests
 * that waited for room, until the socket would block. */
static void conn_write(server_t *s, conn_t *c, int64_t now)
{
    for (;;) {
        while (c->out_off < c->out_len) {
            ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n >= 0) {
                c->out_off += (size_t)n;
                c->last_ms = now;
                continue;
            }
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_close(c); /* EPIPE, ECONNRESET: the peer is gone */
            return;
        }
        c->out_off = c->out_len = 0;
        if (c->closing) {
            /* Our side is done: FIN before close, so the peer reads the
             * last response rather than a reset. */
            shutdown(c->fd, SHUT_WR);
            conn_close(c);
            return;
        }
        process_input(s, c);
        if (c->out_len == 0)
            return;
    }
}

static void accept_clients(server_t *s, int lfd, int64_t now, int64_t *backoff_until)
{
    for (int i = 0; i < ACCEPT_BATCH && s->nconns < MAX_CONNS; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            switch (errno) {
            case EAGAIN:
#if EWOULDBLOCK != EAGAIN
            case EWOULDBLOCK:
#endif
                return; /* another worker took it, or nobody is waiting */
            case EINTR:
            case ECONNABORTED:
            case EPROTO:
            case ENETDOWN:
            case ENOPROTOOPT:
            case EHOSTDOWN:
            case ENONET:
            case EHOSTUNREACH:
            case EOPNOTSUPP:
            case ENETUNREACH:
            case EPERM:   /* firewall */
                continue; /* that connection failed; the next may not */
            case EMFILE:
            case ENFILE:
            case ENOBUFS:
            case ENOMEM:
                fprintf(stderr, "http_prefork: accept4: %s: pausing\n", strerror(errno));
                *backoff_until = now + ACCEPT_BACKOFF_MS;
                return;
            default:
                fprintf(stderr, "http_prefork: accept4: %s\n", strerror(errno));
                *backoff_until = now + ACCEPT_BACKOFF_MS;
                return;
            }
        }
        conn_t *c = malloc(sizeof *c);
        if (!c) {
            close_fd(fd);
            *backoff_until = now + ACCEPT_BACKOFF_MS;
            return;
        }
        c->fd = fd;
        c->closing = c->dead = 0;
        c->last_ms = now;
        c->discard = 0;
        c->in_len = c->out_len = c->out_off = 0;
        s->conns[s->nconns++] = c;
    }
}

/* ------------------------------------------------------------------------ */
/* The event loop                                                           */
/* ------------------------------------------------------------------------ */

static int serve(server_t *s, int lfd, int64_t watchdog_ms)
{
    static struct pollfd pfd[2 + MAX_CONNS];
    int64_t now = now_ms();
    int64_t next_watchdog = watchdog_ms ? now + watchdog_ms : INT64_MAX;
    int64_t backoff_until = 0, stop_deadline = INT64_MAX;

    notify_send(&s->notify, "READY=1");
    if (watchdog_ms)
        notify_send(&s->notify, "WATCHDOG=1");

    for (;;) {
        now = now_ms();
        if (stop_requested && !s->stopping) {
            /* Graceful stop: no new connections. Every open connection
             * gets the answer to its next request, with "Connection:
             * close", and then closes; one with no request by GRACE_MS is
             * closed then. Closing an idle keep-alive connection at once
             * would race a client already sending on it (it would see a
             * reset): under a reload that is a failed request. */
            s->stopping = 1;
            stop_deadline = now + GRACE_MS;
            close_fd(lfd);
            lfd = -1;
            notify_send(&s->notify, "STOPPING=1");
        }
        if (s->stopping && (s->nconns == 0 || now >= stop_deadline))
            break;
        if (now >= next_watchdog) {
            notify_send(&s->notify, "WATCHDOG=1");
            next_watchdog = now + watchdog_ms;
        }

        /* Drop closed connections; close idle ones; build the poll set. */
        int64_t wake = next_watchdog < stop_deadline ? next_watchdog : stop_deadline;
        size_t n = 0;
        for (size_t i = 0; i < s->nconns;) {
            conn_t *c = s->conns[i];
            if (!c->dead && now - c->last_ms >= IDLE_MS)
                conn_close(c);
            if (c->dead) {
                free(c);
                s->conns[i] = s->conns[--s->nconns];
                continue;
            }
            if (c->last_ms + IDLE_MS < wake)
                wake = c->last_ms + IDLE_MS;
            short ev = 0;
            if (!c->closing && c->in_len < REQ_MAX && OUT_MAX - c->out_len >= RESP_MAX)
                ev |= POLLIN;
            if (c->out_off < c->out_len)
                ev |= POLLOUT;
            pfd[2 + n] = (struct pollfd){.fd = c->fd, .events = ev};
            n++;
            i++;
        }
        if (s->stopping && s->nconns == 0)
            break;
        pfd[0] = (struct pollfd){.fd = sig_pipe[0], .events = POLLIN};
        int accepting = lfd >= 0 && s->nconns < MAX_CONNS && now >= backoff_until;
        pfd[1] = (struct pollfd){.fd = accepting ? lfd : -1, .events = POLLIN};
        if (lfd >= 0 && !accepting && backoff_until > now && backoff_until < wake)
            wake = backoff_until;

        int timeout = -1;
        if (wake != INT64_MAX)
            timeout = wake <= now ? 0 : (wake - now > INT_MAX ? INT_MAX : (int)(wake - now));
        int rc = poll(pfd, 2 + n, timeout);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            perror("http_prefork: poll");
            return 1;
        }
        now = now_ms();
        if (pfd[0].revents)
            drain_sig_pipe();
        /* Connections first (the table is not reordered until the next
         * round, so pfd[2 + i] is still conns[i]). */
        for (size_t i = 0; i < n; i++) {
            conn_t *c = s->conns[i];
            short re = pfd[2 + i].revents;
            if (!re || c->dead)
                continue;
            if (re & POLLNVAL) {
                c->dead = 1; /* cannot happen; do not loop on it */
                continue;
            }
            if (re & (POLLIN | POLLERR | POLLHUP))
                conn_read(s, c, now);
            if (!c->dead && (c->out_off < c->out_len || c->closing))
                conn_write(s, c, now);
            if (!c->dead && (re & (POLLERR | POLLHUP)) && c->out_off == c->out_len)
                conn_close(c);
        }
        if (accepting && (pfd[1].revents & POLLIN))
            accept_clients(s, lfd, now, &backoff_until);
        else if (accepting && (pfd[1].revents & (POLLERR | POLLHUP | POLLNVAL))) {
            fprintf(stderr, "http_prefork: listening socket failed\n");
            return 1;
        }
    }
    for (size_t i = 0; i < s->nconns; i++) {
        conn_close(s->conns[i]);
        free(s->conns[i]);
    }
    s->nconns = 0;
    close_fd(lfd);
    return 0;
}

static int usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s                        (serve: LISTEN_FDS/LISTEN_PID required)\n"
            "       %s --master ADDR N        supervise N workers on ADDR\n"
            "       %s --make-counter NAME    create the shared request counter\n"
            "       %s --remove-counter NAME  unlink it\n",
            prog, prog, prog, prog);
    return 2;
}

/* One worker: serve on the socket LISTEN_FDS names (a prefork worker of
 * --master gets it the same way), counting in *counter (NULL: set it up
 * from the environment). */
static int run_worker(const counter_t *counter)
{
    int lfd = listen_fd_from_env();
    if (lfd < 0)
        return 2;
    static server_t s; /* big (the connection table): not on the stack */
    s.pid = getpid();
    s.worker_id = getenv("MPROC_WORKER_ID");
    if (!s.worker_id || !*s.worker_id)
        s.worker_id = "?";
    const char *max = getenv("MAX_REQUESTS");
    if (max && *max && parse_u64(max, 1, UINT64_MAX, &s.max_requests) < 0) {
        fprintf(stderr, "http_prefork: MAX_REQUESTS=%s: need a positive number\n", max);
        return 2;
    }
    int64_t watchdog_ms = watchdog_interval_from_env();
    if (notify_setup(&s.notify) < 0)
        return 2;
    if (counter)
        s.counter = *counter;
    if (setup_signals() < 0 || (!counter && counter_setup(&s.counter) < 0))
        return 1;

    int rc = serve(&s, lfd, watchdog_ms);

    if (!counter)
        mproc_shm_close(s.counter.shm);
    close_fd(s.notify.fd);
    return rc;
}

/* --master: the preload runs once, in the master, before any worker. */
static int master_preload(void *ctx)
{
    return counter_setup(ctx) < 0 ? 1 : 0;
}

static int master_worker(void *ctx, int id, const int *fds, int nfds)
{
    (void)id;
    (void)fds; /* fds[0] is fd 3, which LISTEN_FDS names too */
    (void)nfds;
    return run_worker(ctx);
}

static int run_master(const char *addr, const char *workers)
{
    uint64_t n;
    if (parse_u64(workers, 1, 1024, &n) < 0) {
        fprintf(stderr, "http_prefork: --master: bad worker count %s\n", workers);
        return 2;
    }
    static counter_t counter;
    const char *binds[] = {addr};
    mproc_supervisor_opts_t o = {.workers = (int)n,
                                 .binds = binds,
                                 .nbinds = 1,
                                 .ready = 1,
                                 .upgrade = 1,
                                 .graceful_timeout_ms = 10000,
                                 .preload = master_preload,
                                 .worker = master_worker,
                                 .ctx = &counter};
    int rc = mproc_supervise(&o);
    mproc_shm_close(counter.shm);
    if (rc < 0) {
        fprintf(stderr, "http_prefork: --master: %s\n", mproc_strerror(rc));
        return 1;
    }
    return rc;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);

    if (argc == 3 &&
        (strcmp(argv[1], "--make-counter") == 0 || strcmp(argv[1], "--remove-counter") == 0))
        return counter_admin(argv[1], argv[2]);
    if (argc == 4 && strcmp(argv[1], "--master") == 0)
        return run_master(argv[2], argv[3]);
    if (argc != 1)
        return usage(argv[0]);
    return run_worker(NULL);
}
