/*
 * upgrade.c - what a supervisor hands to the next image of itself when it
 * re-executes its binary in place (SIGUSR2, docs/supervisor.md).
 *
 * The master execve()s its own program with main()'s arguments, which
 * mproc_init records here (with main's directory): the pid
 * stays the same, so its workers stay its children (they keep running,
 * PDEATHSIG does not fire on exec) and systemd, a pidfile or a container
 * runtime see no change. What the new image cannot find out by itself
 * travels in an anonymous file whose fd is named by MPROC_UPGRADE_FD: the
 * listening sockets (fd, the --bind text they came from), the notify
 * socket, each worker (slot, pid, the fd that tells of its exit, ready or
 * not, being stopped or not), the helpers of the old image to reap, and
 * the signal state the first master found, to restore when it returns.
 *
 * A text of one record per line, written and read only here:
 *
 *   mproc-upgrade 1
 *   mask HEX  chld 0|1  pipe 0|1
 *   notify FD DIR
 *   socket FD INO HEXSPEC
 *   worker SLOT PID FD READY CURRENT KILL_LEFT_MS(-1: not stopping)
 *   reap PID
 *   end
 *
 * The reader trusts nothing it cannot check: every number is range-checked,
 * every fd must be open, and a text without its "end" line is refused.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#define ENV_NAME "MPROC_UPGRADE_FD"
#define TEXT_MAX (64u << 20) /* far beyond 1M workers' worth of lines */
#define FD_MAX (1 << 24)

void mproc__handover_free(mproc__handover_t *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->nsockets; i++)
        free(h->sockets[i].spec);
    free(h->workers);
    free(h);
}

/* ---- writing ---------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} text_t;

static void put(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text_t *t, const char *fmt, ...)
{
    for (int tries = 0; tries < 2 && !t->failed; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
        } else if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        } else {
            size_t cap = (t->cap + (size_t)n) * 2;
            char *b = realloc(t->buf, cap);
            if (!b)
                t->failed = 1;
            else {
                t->buf = b;
                t->cap = cap;
            }
        }
    }
}

/* An anonymous file (close-on-exec until the caller clears it, just
 * before the one exec it is meant to cross). */
static int anon_file(void)
{
#if defined(__linux__) && !defined(MPROC_NO_FASTPATHS)
    int fd = memfd_create("mproc-upgrade", MFD_CLOEXEC);
    if (fd >= 0 || errno != ENOSYS)
        return fd < 0 ? -errno : fd;
#endif
    char path[] = "/tmp/mproc-upgrade-XXXXXX";
    int fd2 = mkostemp(path, O_CLOEXEC);
    if (fd2 < 0)
        return -errno;
    unlink(path);
    return fd2;
}

int mproc__handover_write(const mproc__handover_t *h, int *fd_out)
{
    text_t t = {NULL, 0, 0, 0};
    t.cap = 4096 + h->nworkers * 48;
    t.buf = malloc(t.cap);
    if (!t.buf)
        return -ENOMEM;
    put(&t, "mproc-upgrade 1\nmask %llx\nchld %d\npipe %d\nnotify %d %s\n",
        (unsigned long long)h->sigmask, h->chld_ign, h->pipe_ign, h->notify_fd, h->notify_dir);
    for (size_t i = 0; i < h->nsockets; i++) {
        put(&t, "socket %d %llu ", h->sockets[i].fd, (unsigned long long)h->sockets[i].ino);
        for (const unsigned char *c = (const unsigned char *)h->sockets[i].spec; *c; c++)
            put(&t, "%02x", *c);
        put(&t, "\n");
    }
    for (size_t i = 0; i < h->nworkers; i++) {
        const mproc__handover_worker_t *w = &h->workers[i];
        put(&t, "worker %d %d %d %d %d %d\n", w->slot, (int)w->pid, w->life_fd, w->ready,
            w->current, w->kill_left_ms);
    }
    for (size_t i = 0; i < h->nreap; i++)
        put(&t, "reap %d\n", (int)h->reap[i]);
    put(&t, "end\n");
    int rc = t.failed ? -ENOMEM : 0;
    int fd = rc == 0 ? anon_file() : -1;
    if (rc == 0 && fd < 0)
        rc = fd;
    if (rc == 0)
        rc = mproc__write_full(fd, t.buf, t.len);
    if (rc == 0 && lseek(fd, 0, SEEK_SET) < 0)
        rc = -errno;
    free(t.buf);
    if (rc < 0) {
        if (fd >= 0)
            close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

/* ---- reading ---------------------------------------------------------------- */

/* The next space-separated word of a line, or NULL. */
static char *word(char **at)
{
    char *s = *at;
    while (*s == ' ')
        s++;
    if (!*s)
        return NULL;
    char *end = s;
    while (*end && *end != ' ')
        end++;
    if (*end)
        *end++ = '\0';
    *at = end;
    return s;
}

/* A whole decimal word in [lo, hi]; 0, or -1 if it is not one. */
static int number(char **at, long long lo, long long hi, long long *out)
{
    char *w = word(at);
    if (!w)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(w, &end, 10);
    if (end == w || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int hex_spec(const char *w, char **out)
{
    size_t n = strlen(w);
    if (n == 0 || n % 2 || n / 2 > MPROC__MAX_PATH)
        return -1;
    char *s = malloc(n / 2 + 1);
    if (!s)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(w + 2 * i, "%2x", &v) != 1 || v == 0 ||
            !strchr("0123456789abcdefABCDEF", w[2 * i]) ||
            !strchr("0123456789abcdefABCDEF", w[2 * i + 1])) {
            free(s);
            return -1;
        }
        s[i] = (char)v;
    }
    s[n / 2] = '\0';
    *out = s;
    return 0;
}

int mproc__handover_parse(const char *text, size_t len, mproc__handover_t **out)
{
    *out = NULL;
    if (len > TEXT_MAX)
        return MPROC_EPROTO;
    char *copy = malloc(len + 1);
    mproc__handover_t *h = calloc(1, sizeof *h);
    if (!copy || !h) {
        free(copy);
        free(h);
        return -ENOMEM;
    }
    memcpy(copy, text, len);
    copy[len] = '\0';
    h->notify_fd = -1;
    size_t cap = 0;
    int rc = MPROC_EPROTO, ended = 0, lineno = 0;
    char *next = copy;
    while (next && *next && !ended) {
        char *line = next, *nl = strchr(line, '\n');
        if (!nl)
            goto out; /* every line ends with one */
        *nl = '\0';
        next = nl + 1;
        if (strlen(line) != (size_t)(nl - line))
            goto out; /* a NUL inside */
        char *at = line, *key = word(&at);
        long long a, b, c, d, e, f;
        if (!key)
            goto out;
        if (lineno++ == 0) {
            if (strcmp(key, "mproc-upgrade") || number(&at, 1, 1, &a))
                goto out;
        } else if (!strcmp(key, "mask")) {
            char *w = word(&at), *end;
            if (!w)
                goto out;
            errno = 0;
            unsigned long long m = strtoull(w, &end, 16);
            if (end == w || *end || errno || w[0] == '-')
                goto out;
            h->sigmask = m;
        } else if (!strcmp(key, "chld") || !strcmp(key, "pipe")) {
            if (number(&at, 0, 1, &a))
                goto out;
            *(key[0] == 'c' ? &h->chld_ign : &h->pipe_ign) = (int)a;
        } else if (!strcmp(key, "notify")) {
            char *dir;
            if (h->notify_fd >= 0 || number(&at, 0, FD_MAX, &a) || !(dir = word(&at)) ||
                strlen(dir) >= sizeof h->notify_dir || dir[0] != '/')
                goto out;
            h->notify_fd = (int)a;
            strcpy(h->notify_dir, dir);
        } else if (!strcmp(key, "socket")) {
            char *w;
            if (h->nsockets == MPROC__ARRAY_LEN(h->sockets) || number(&at, 0, FD_MAX, &a) ||
                number(&at, 0, INT64_MAX, &b) || !(w = word(&at)) ||
                hex_spec(w, &h->sockets[h->nsockets].spec))
                goto out;
            h->sockets[h->nsockets].fd = (int)a;
            h->sockets[h->nsockets++].ino = (uint64_t)b;
        } else if (!strcmp(key, "worker")) {
            if (number(&at, 0, 1000000, &a) || number(&at, 1, INT32_MAX, &b) ||
                number(&at, 0, FD_MAX, &c) || number(&at, 0, 1, &d) || number(&at, 0, 1, &e) ||
                number(&at, -1, INT32_MAX, &f))
                goto out;
            if (h->nworkers == cap) {
                size_t ncap = cap ? cap * 2 : 64;
                mproc__handover_worker_t *n = realloc(h->workers, ncap * sizeof *n);
                if (!n) {
                    rc = -ENOMEM;
                    goto out;
                }
                h->workers = n;
                cap = ncap;
            }
            h->workers[h->nworkers++] =
                (mproc__handover_worker_t){(int)a, (pid_t)b, (int)c, (int)d, (int)e, (int)f};
        } else if (!strcmp(key, "reap")) {
            if (h->nreap == MPROC__ARRAY_LEN(h->reap) || number(&at, 1, INT32_MAX, &a))
                goto out;
            h->reap[h->nreap++] = (pid_t)a;
        } else if (!strcmp(key, "end")) {
            ended = 1;
        } else {
            goto out;
        }
        if (word(&at))
            goto out; /* trailing words */
    }
    if (ended && (!next || !*next) && h->notify_fd >= 0)
        rc = 0;
out:
    free(copy);
    if (rc < 0) {
        mproc__handover_free(h);
        return rc;
    }
    *out = h;
    return 0;
}

/* ---- taking it over --------------------------------------------------------- */

static int fd_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

/* Read the handover the environment names, if any: 1 and *out, 0 if none,
 * or an error. Every fd it names is checked open and made close-on-exec;
 * the variable is removed. */
static int handover_take(mproc__handover_t **out)
{
    *out = NULL;
    const char *v = getenv(ENV_NAME);
    if (!v)
        return 0;
    char *end;
    errno = 0;
    long fd = strtol(v, &end, 10);
    int bad = !*v || *end || errno || fd < 3 || fd > FD_MAX;
    unsetenv(ENV_NAME); /* read once, and never seen by a worker */
    if (bad || !fd_open((int)fd))
        return MPROC_EPROTO;
    struct stat st;
    int rc = fstat((int)fd, &st) < 0 ? -errno : 0;
    if (rc == 0 && (!S_ISREG(st.st_mode) || st.st_size < 0 || (uint64_t)st.st_size > TEXT_MAX))
        rc = MPROC_EPROTO;
    char *text = rc == 0 ? malloc((size_t)st.st_size + 1) : NULL;
    if (rc == 0 && !text)
        rc = -ENOMEM;
    if (rc == 0) {
        ssize_t n = pread((int)fd, text, (size_t)st.st_size, 0);
        rc = n < 0 ? -errno : n != st.st_size ? MPROC_EPROTO : 0;
    }
    close((int)fd);
    mproc__handover_t *h = NULL;
    if (rc == 0)
        rc = mproc__handover_parse(text, (size_t)st.st_size, &h);
    free(text);
    if (rc < 0)
        return rc;
    /* Every fd named must be open; from here each is close-on-exec again,
     * so nothing else this image starts inherits one. */
    rc = fd_open(h->notify_fd) ? 0 : MPROC_EPROTO;
    for (size_t i = 0; rc == 0 && i < h->nsockets; i++)
        rc = fd_open(h->sockets[i].fd) ? 0 : MPROC_EPROTO;
    for (size_t i = 0; rc == 0 && i < h->nworkers; i++)
        rc = fd_open(h->workers[i].life_fd) ? 0 : MPROC_EPROTO;
    if (rc < 0) {
        mproc__handover_free(h);
        return rc;
    }
    mproc__set_cloexec(h->notify_fd, 1);
    for (size_t i = 0; i < h->nsockets; i++)
        mproc__set_cloexec(h->sockets[i].fd, 1);
    for (size_t i = 0; i < h->nworkers; i++)
        mproc__set_cloexec(h->workers[i].life_fd, 1);
    *out = h;
    return 1;
}

int mproc__handover_env(int fd)
{
    char buf[16];
    snprintf(buf, sizeof buf, "%d", fd);
    return setenv(ENV_NAME, buf, 1) < 0 ? -errno : 0;
}

void mproc__handover_env_clear(void)
{
    unsetenv(ENV_NAME);
}

/* Taken once per image, before main (so that the fds are close-on-exec
 * again before main starts anything), and kept until the supervisor claims
 * it. A forked copy of the image is not the master. */
static int taken;
static int taken_rc;
static pid_t taken_by;
static mproc__handover_t *taken_h;

/* What an upgrade re-executes: main's process, arguments and directory
 * (mproc_init records them; without it the supervisor reads /proc). */
static pid_t main_pid;
static char **main_argv;
static char *main_cwd;

static void handover_early(void);

__attribute__((constructor)) static void upgrade_before_main(void)
{
    main_pid = getpid();
    if (getenv(ENV_NAME))
        handover_early();
}

void mproc__upgrade_record(int argc, char **argv)
{
    if (main_argv || getpid() != main_pid || argc <= 0 || !argv)
        return;
    char **copy = calloc((size_t)argc + 1, sizeof *copy);
    for (int i = 0; copy && i < argc; i++)
        if (!(copy[i] = strdup(argv[i] ? argv[i] : ""))) {
            while (i--)
                free(copy[i]);
            free(copy);
            copy = NULL;
        }
    main_argv = copy;
    main_cwd = getcwd(NULL, 0);
}

int mproc__upgrade_self(char *const **argv, const char **cwd)
{
    *argv = main_argv;
    *cwd = main_cwd;
    return getpid() == main_pid;
}

static void handover_early(void)
{
    if (taken)
        return;
    taken = 1;
    taken_by = getpid();
    taken_rc = handover_take(&taken_h);
}

int mproc__handover_claim(mproc__handover_t **out)
{
    handover_early();
    *out = NULL;
    if (taken_by != getpid())
        return 0;
    int rc = taken_rc;
    *out = taken_h;
    taken_h = NULL;
    taken_rc = 0;
    return rc;
}

int mproc_supervise_upgraded(void)
{
    handover_early();
    return taken_by == getpid() && (taken_h != NULL || taken_rc < 0);
}
