/*
 * tracker.c - the resource tracker (P7) and `mproc clean`.
 *
 * A named segment outlives every process that uses it unless someone
 * unlinks it; a process killed by a signal never does. The tracker is a
 * helper process that hears of every named segment created by the
 * processes holding its line (the process that started it and its fork
 * children, which inherit the line), watches each creator through a pidfd,
 * and when one dies, reclaims what it created. A segment still in use then
 * (by a child it was handed to, or a program that opened it by name) is
 * retried until its last user is gone. Openers do not register: while the
 * creator lives, the segment is the creator's to unlink, however many
 * openers come and go. Reclaiming never
 * trusts the tracker's own counts: it unlinks a segment only if it can take
 * the exclusive flock, which no live user allows (see shm.c). So a segment
 * another program still maps (cpython#82300) is safe, and a wrong count
 * can at worst delay an unlink, never cause a wrong one.
 *
 * The line is a SOCK_SEQPACKET socketpair, one message per registration;
 * fork children inherit it, and spawn and forkserver children are handed a
 * copy at start (process.c), so the whole program tree shares one tracker;
 * the kernel stamps each with the sender's pid (SO_PASSCRED), so the
 * tracker needs no trust in what the message says about its sender. When
 * the last holder of the line is gone (EOF), the tracker sweeps what is
 * left and exits. It is a spawn of this executable with MPROC_TRACKER in
 * its environment and takes over in a constructor, before main: programs
 * need nothing from their main() for it, and it never runs user code.
 */
#include "internal.h"

#include <dirent.h>
#include <dlfcn.h>
#include <link.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TRACKER_ENV "MPROC_TRACKER"
#define MSG_MAGIC 0x6b637274u /* "trck" */
#define SEND_TIMEOUT_MS 2000
/* A segment file younger than this without a complete header may be being
 * created (the shm_open fallback): leave it. */
#define YOUNG_S 5
/* How often a segment whose registrant died, but that is still in use, is
 * tried again. */
#define ORPHAN_POLL_MS 250

enum { OP_REGISTER = 1, OP_UNREGISTER = 2 };

typedef struct {
    uint32_t magic;
    uint32_t op;
    uint64_t dev, ino;
    char file[MPROC_NAME_MAX + 16];
} track_msg_t;

/* ---- reclaiming: shared by the tracker and mproc_clean ----------------------- */

static int file_ok(const char *file)
{
    size_t pl = strlen(MPROC__SHM_PREFIX);
    if (strncmp(file, MPROC__SHM_PREFIX, pl) != 0 || strlen(file) > pl + MPROC_NAME_MAX ||
        !file[pl] || file[pl] == '.')
        return 0;
    for (const char *p = file + pl; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return 0;
    return 1;
}

/* Ours, complete, or young enough to be in the making (0 / 1 / -1). */
static int segment_state(int fd, const struct stat *st)
{
    mproc__shm_header_t h;
    ssize_t n = pread(fd, &h, sizeof h, 0);
    if (n == (ssize_t)sizeof h && h.magic == MPROC__SHM_MAGIC &&
        __atomic_load_n(&h.ready, __ATOMIC_RELAXED))
        return 1;
    int young = time(NULL) - st->st_ctime < YOUNG_S;
    if (young)
        return -1;
    /* Abandoned mid-creation: an empty file, or our magic without ready. */
    if (st->st_size == 0 || (n >= 8 && h.magic == MPROC__SHM_MAGIC))
        return 1;
    return 0; /* someone else's file that happens to use our prefix */
}

int mproc__shm_reclaim(const char *file, uint64_t dev, uint64_t ino, int dry_run)
{
    if (!file_ok(file))
        return 0;
    char path[300];
    snprintf(path, sizeof path, MPROC__SHM_DIR "/%s", file);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) /* gone, or another user's: not ours to judge */
        return errno == ENOENT || errno == EACCES || errno == EPERM ? 0 : -errno;
    int rc = 0;
    struct stat st;
    if (fstat(fd, &st) < 0)
        rc = -errno;
    else if (!S_ISREG(st.st_mode) ||
             (dev && ((uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino)))
        rc = 0; /* not the file that was registered */
    else if (flock(fd, LOCK_EX | LOCK_NB) < 0)
        rc = errno == EWOULDBLOCK ? -EBUSY : -errno; /* in use */
    else {
        int state = segment_state(fd, &st);
        if (state < 0)
            rc = -EBUSY; /* being created */
        else if (state == 1) {
            /* Held exclusively: no one can start using it. Unlink the very
             * file we hold, not whatever the name means now. */
            struct stat now;
            rc = stat(path, &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino;
            if (rc && !dry_run && unlink(path) < 0)
                rc = errno == ENOENT ? 0 : -errno;
        }
    }
    close(fd);
    return rc;
}

int mproc_clean(unsigned flags, mproc_clean_fn fn, void *ctx)
{
    if (flags & ~MPROC_CLEAN_DRY_RUN)
        return -EINVAL;
    DIR *d = opendir(MPROC__SHM_DIR);
    if (!d)
        return -errno;
    int found = 0, err = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!file_ok(e->d_name))
            continue;
        int rc = mproc__shm_reclaim(e->d_name, 0, 0, flags & MPROC_CLEAN_DRY_RUN);
        if (rc == -EBUSY)
            continue; /* in use, or being created */
        if (rc < 0 && !err)
            err = rc;
        if (rc == 1) {
            found++;
            if (fn) {
                char path[300];
                snprintf(path, sizeof path, MPROC__SHM_DIR "/%s", e->d_name);
                fn(ctx, path);
            }
        }
    }
    closedir(d);
    return found ? found : err;
}

/* ---- the tracker process --------------------------------------------------------- */

typedef struct {
    char file[MPROC_NAME_MAX + 16];
    uint64_t dev, ino;
    pid_t pid;
} entry_t;

typedef struct {
    pid_t pid;
    int pidfd; /* -1: watched by polling kill(pid, 0) */
} watch_t;

static entry_t *entries;
static size_t n_entries, cap_entries;
static watch_t *watches;
static size_t n_watches, cap_watches;

static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, c * elem);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = c;
    return 0;
}

static void watch_pid(pid_t pid)
{
    for (size_t i = 0; i < n_watches; i++)
        if (watches[i].pid == pid)
            return;
    if (grow((void **)&watches, &cap_watches, n_watches, sizeof *watches) < 0)
        return; /* unwatched: the final sweep still covers it */
    int fd = mproc__have_pidfd() ? mproc__pidfd_open(pid) : -ENOSYS;
    watches[n_watches++] = (watch_t){pid, fd >= 0 ? fd : -1};
}

/* Try to reclaim an entry: 1 when it is settled (unlinked, gone, or not
 * the registered file any more), 0 while someone still uses it. */
static int settle(const entry_t *e)
{
    int rc = mproc__shm_reclaim(e->file, e->dev, e->ino, 0);
    return rc != -EBUSY;
}

/* pid is gone: reclaim what it registered. What another process still
 * uses becomes an orphan (pid 0), retried until its users are gone too. */
static void on_death(pid_t pid)
{
    size_t k = 0;
    for (size_t i = 0; i < n_entries; i++) {
        if (entries[i].pid == pid) {
            if (settle(&entries[i]))
                continue;
            entries[i].pid = 0;
        }
        entries[k++] = entries[i];
    }
    n_entries = k;
    for (size_t i = 0; i < n_watches; i++)
        if (watches[i].pid == pid) {
            if (watches[i].pidfd >= 0)
                close(watches[i].pidfd);
            watches[i] = watches[--n_watches];
            break;
        }
}

/* Retry the orphans; the number still in use. (Their users may be anyone,
 * not only processes we watch, so this is a poll.) */
static size_t retry_orphans(void)
{
    size_t k = 0, left = 0;
    for (size_t i = 0; i < n_entries; i++) {
        if (entries[i].pid == 0) {
            if (settle(&entries[i]))
                continue;
            left++;
        }
        entries[k++] = entries[i];
    }
    n_entries = k;
    return left;
}

static size_t count_orphans(void)
{
    size_t n = 0;
    for (size_t i = 0; i < n_entries; i++)
        n += entries[i].pid == 0;
    return n;
}

int mproc__tracker_msg_ok(const void *buf, size_t len)
{
    track_msg_t m;
    if (len != sizeof m)
        return 0;
    memcpy(&m, buf, sizeof m);
    return m.magic == MSG_MAGIC && (m.op == OP_REGISTER || m.op == OP_UNREGISTER) &&
           memchr(m.file, '\0', sizeof m.file) != NULL && file_ok(m.file);
}

static void on_message(const track_msg_t *m, pid_t sender)
{
    if (!mproc__tracker_msg_ok(m, sizeof *m) || sender <= 0)
        return;
    if (m->op == OP_REGISTER) {
        for (size_t i = 0; i < n_entries; i++)
            if (entries[i].pid == sender && entries[i].ino == m->ino && entries[i].dev == m->dev &&
                strcmp(entries[i].file, m->file) == 0)
                return;
        if (grow((void **)&entries, &cap_entries, n_entries, sizeof *entries) < 0)
            return;
        entry_t *e = &entries[n_entries++];
        memcpy(e->file, m->file, sizeof e->file);
        e->dev = m->dev;
        e->ino = m->ino;
        e->pid = sender;
        watch_pid(sender);
    } else if (m->op == OP_UNREGISTER) {
        size_t k = 0;
        for (size_t i = 0; i < n_entries; i++)
            if (!(entries[i].ino == m->ino && entries[i].dev == m->dev &&
                  strcmp(entries[i].file, m->file) == 0))
                entries[k++] = entries[i];
        n_entries = k;
    }
}

/* Read every queued message; 1 at EOF (no holder of the line is left). */
static int drain(int sock)
{
    for (;;) {
        track_msg_t m;
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(struct ucred))];
        } ctl;
        struct iovec iov = {&m, sizeof m};
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = ctl.buf,
                            .msg_controllen = sizeof ctl.buf};
        ssize_t n = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : 1;
        if (n == 0)
            return 1;
        pid_t sender = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
                c->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
                struct ucred cr;
                memcpy(&cr, CMSG_DATA(c), sizeof cr);
                sender = cr.pid;
            } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                /* Nobody should send fds here: do not keep them. */
                int *fds = (int *)CMSG_DATA(c);
                size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < nfd; i++)
                    close(fds[i]);
            }
        }
        if ((size_t)n == sizeof m && !(mh.msg_flags & MSG_TRUNC))
            on_message(&m, sender);
    }
}

static _Noreturn void tracker_serve(int sock)
{
    prctl(PR_SET_NAME, "mproc-tracker", 0, 0, 0);
    /* Outlive a Ctrl-C or a TERM sent to the whole group: the tree's death
     * is exactly when there is work to do. EOF on the line ends us. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL); /* blocked at spawn until now */
    if (chdir("/") < 0) {
        /* harmless: only keeps a directory busy */
    }
    struct pollfd *pfd = NULL;
    size_t cap = 0;
    for (;;) {
        if (cap < n_watches + 1) {
            cap = n_watches + 16;
            struct pollfd *p = realloc(pfd, cap * sizeof *pfd);
            if (!p)
                break;
            pfd = p;
        }
        size_t n = 0, polled = 0;
        pfd[n++] = (struct pollfd){.fd = sock, .events = POLLIN};
        for (size_t i = 0; i < n_watches; i++) {
            if (watches[i].pidfd >= 0)
                pfd[n++] = (struct pollfd){.fd = watches[i].pidfd, .events = POLLIN};
            else
                polled++;
        }
        int timeout = polled ? 200 : count_orphans() ? ORPHAN_POLL_MS : -1;
        int rc = poll(pfd, (nfds_t)n, timeout);
        if (rc < 0 && errno != EINTR)
            break;
        if (pfd[0].revents && drain(sock))
            break;
        if (rc == 0)
            retry_orphans();
        /* Deaths, by pidfd or (fallback) by polling. Collect first: on_death
         * reorders the watch table. */
        pid_t dead[64];
        size_t nd = 0;
        for (size_t i = 0, j = 1; i < n_watches && nd < 64; i++) {
            int gone;
            if (watches[i].pidfd >= 0)
                gone = j < n && pfd[j++].revents != 0;
            else
                gone = kill(watches[i].pid, 0) < 0 && errno == ESRCH;
            if (gone)
                dead[nd++] = watches[i].pid;
        }
        for (size_t i = 0; i < nd; i++)
            on_death(dead[i]);
    }
    /* The line is closed: every holder is gone. What is still in use (by
     * a process outside the tree, or a spawned child that never held the
     * line) is retried until its users have gone too. */
    close(sock);
    for (size_t i = 0; i < n_entries; i++)
        entries[i].pid = 0;
    /* Whoever waits for us (mproc_tracker_stop) should not wait for other
     * programs to let go: a copy of us keeps retrying, we leave now. */
    /* The last holder of the line may still be closing its other fds (and
     * releasing its segment locks): a few ms of grace before forking. */
    for (int i = 0; i < 10 && retry_orphans() > 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (retry_orphans() > 0 && fork() > 0)
        _exit(0); /* (if fork fails, we keep retrying ourselves) */
    while (retry_orphans() > 0) {
        struct timespec ts = {ORPHAN_POLL_MS / 1000, (ORPHAN_POLL_MS % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    _exit(0);
}

/* Before main: a spawned tracker never returns from here. The line's peer
 * credentials tell a real tracker start from a stale variable. */
__attribute__((constructor)) static void tracker_detect(void)
{
    const char *v = getenv(TRACKER_ENV);
    if (!v)
        return;
    char *end;
    long fd = strtol(v, &end, 10);
    if (end == v || *end != ':' || fd < 3 || fd > 1 << 20)
        return;
    long ppid = strtol(end + 1, &end, 10);
    if (*end != '\0' || ppid <= 0)
        return;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    int type = 0;
    socklen_t tlen = sizeof type;
    if (getsockopt((int)fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 || cred.pid != ppid ||
        getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_SEQPACKET)
        return;
    unsetenv(TRACKER_ENV);
    mproc__set_cloexec((int)fd, 1);
    /* Nothing to say, and it may outlive the program: holding its stdout
     * would keep a `$(prog)` or a log pipe open long after the program. */
    int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int i = 0; null_fd >= 0 && i <= 2; i++)
        if (i != null_fd)
            dup2(null_fd, i);
    int keep = (int)fd;
    mproc__close_fds_except(&keep, 1);
    tracker_serve((int)fd);
}

/* ---- the client side --------------------------------------------------------------- */

/* The line to the tracker, shared by this process's threads; a fork child
 * inherits it (and so registers with the same tracker) but did not start
 * it, so it neither waits for nor reaps it. */
static pthread_mutex_t client_lock = PTHREAD_MUTEX_INITIALIZER;
static int line = -1;
static dev_t line_dev; /* what the line's fd number must still name */
static ino_t line_ino;
static pid_t tracker_pid_, starter_pid, tracker_pidfd = -1;
static mproc_once_t client_once = MPROC_ONCE_INIT;
/* Trackers of ours a stop gave up waiting for, replaced since: collected
 * whenever this process touches the tracker again (zombies otherwise). */
static struct {
    pid_t pid;
    int pidfd;
} retired[4];
static int n_retired;

/* Under client_lock: take fd as the line. */
static void set_line(int fd)
{
    struct stat st;
    line = fd;
    line_dev = 0;
    line_ino = 0;
    if (fd >= 0 && fstat(fd, &st) == 0) {
        line_dev = st.st_dev;
        line_ino = st.st_ino;
    }
}

/*
 * Under client_lock: 1 if the line's fd number still names the line. Code
 * that forks by hand may close every fd (mproc_close_fds_except) and reuse
 * the number for a socket of its own: then the line is forgotten, never
 * written to or closed.
 */
static int line_ok(void)
{
    struct stat st;
    if (line < 0)
        return 0;
    if (fstat(line, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == line_dev &&
        st.st_ino == line_ino)
        return 1;
    line = -1;
    return 0;
}

static void client_after_fork(void)
{
    pthread_mutex_init(&client_lock, NULL);
    for (int i = 0; i < n_retired; i++)
        if (retired[i].pidfd >= 0)
            close(retired[i].pidfd);
    n_retired = 0; /* our parent's children, not ours */
    /* Not ours to wait for; the inherited pidfd is dropped. */
    if (tracker_pidfd >= 0)
        close(tracker_pidfd);
    tracker_pidfd = -1;
}

static int client_setup(void *ctx)
{
    (void)ctx;
    return mproc__atfork_child(client_after_fork);
}

void mproc__tracker_forget(void)
{
    mproc_once(&client_once, client_setup, NULL);
    pthread_mutex_lock(&client_lock);
    line = -1; /* its fd is gone (or about to be), not to be closed */
    tracker_pidfd = -1;
    starter_pid = 0;
    pthread_mutex_unlock(&client_lock);
}

/* Collect a tracker we started once it has exited (a zombie otherwise). */
static int reap_tracker(int block_ms)
{
    if (starter_pid != getpid() || tracker_pid_ <= 0)
        return 0;
    int code;
    int64_t deadline = mproc__deadline(block_ms);
    for (;;) {
        if (tracker_pidfd >= 0)
            mproc__poll1(tracker_pidfd, POLLIN, mproc__remaining_ms(deadline), NULL);
        int rc = mproc__reap(tracker_pid_, tracker_pidfd, 0, &code);
        if (rc != 0)
            break; /* collected, or not ours to collect (-ECHILD) */
        if (mproc__remaining_ms(deadline) == 0)
            return -ETIMEDOUT;
        if (tracker_pidfd < 0) {
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
    }
    if (tracker_pidfd >= 0)
        close(tracker_pidfd);
    tracker_pidfd = -1;
    tracker_pid_ = 0;
    starter_pid = 0;
    return 0;
}

/* The executable's dynamic section, load base and address range, from
 * the first entry of the link map. */
typedef struct {
    const ElfW(Dyn) * dyn;
    uintptr_t base, lo, hi;
} main_info_t;

static int first_object(struct dl_phdr_info *info, size_t size, void *ctx)
{
    (void)size;
    main_info_t *m = ctx;
    m->base = (uintptr_t)info->dlpi_addr;
    m->lo = UINTPTR_MAX;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = (uintptr_t)info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_DYNAMIC)
            m->dyn = (const ElfW(Dyn) *)start;
        if (ph->p_type == PT_LOAD) {
            if (start < m->lo)
                m->lo = start;
            if (start + ph->p_memsz > m->hi)
                m->hi = start + ph->p_memsz;
        }
    }
    return 1; /* the first entry is the executable */
}

/* The executable names a library called like ours (libmproc.so.0) among
 * the ones it needs: ours is loaded before main in any exec of it. */
static int main_needs(const main_info_t *m, const char *lib)
{
    if (!m->dyn)
        return 0;
    uintptr_t strtab = 0;
    for (const ElfW(Dyn) *d = m->dyn; d->d_tag != DT_NULL; d++)
        if (d->d_tag == DT_STRTAB)
            strtab = (uintptr_t)d->d_un.d_ptr;
    if (!strtab)
        return 0;
    if (strtab < m->base)
        strtab += m->base; /* not relocated in place by this loader */
    const char *base = strrchr(lib, '/');
    base = base ? base + 1 : lib;
    for (const ElfW(Dyn) *d = m->dyn; d->d_tag != DT_NULL; d++)
        if (d->d_tag == DT_NEEDED && strcmp((const char *)strtab + d->d_un.d_val, base) == 0)
            return 1;
    return 0;
}

/*
 * "LD_PRELOAD=<this library> [<the one we had>]" when the tracker, a
 * re-execution of this program, would otherwise not load libmproc before
 * main: the program loaded it with dlopen (a plugin, an interpreter's
 * extension) or through another library. Without it, the re-executed
 * program would run its own main instead of becoming the tracker. NULL when
 * mproc is linked into the executable or a library the executable needs
 * directly (nothing to do; and preloading would upset sanitizer runtimes
 * that must come first).
 */
static char *preload_entry(void)
{
    Dl_info di;
    main_info_t m = {NULL, 0, 0, 0};
    dl_iterate_phdr(first_object, &m);
    uintptr_t self = (uintptr_t)tracker_detect;
    if (self >= m.lo && self < m.hi)
        return NULL; /* linked into the executable (PIE or not) */
    if (!dladdr((void *)tracker_detect, &di) || !di.dli_fname || !*di.dli_fname ||
        main_needs(&m, di.dli_fname))
        return NULL;
    char *path = realpath(di.dli_fname, NULL);
    if (!path)
        return NULL;
    const char *old = getenv("LD_PRELOAD");
    size_t n = strlen(path) + (old ? strlen(old) : 0) + 32;
    char *entry = malloc(n);
    if (entry)
        snprintf(entry, n, "LD_PRELOAD=%s%s%s", path, old && *old ? " " : "", old ? old : "");
    free(path);
    return entry;
}

/* Under client_lock: collect retired trackers that have exited. */
static void reap_retired(void)
{
    int k = 0;
    for (int i = 0; i < n_retired; i++) {
        int code;
        if (mproc__reap(retired[i].pid, retired[i].pidfd, 0, &code) != 0) {
            if (retired[i].pidfd >= 0)
                close(retired[i].pidfd);
            continue;
        }
        retired[k++] = retired[i];
    }
    n_retired = k;
}

/* Under client_lock. */
static int start_locked(void)
{
    if (line_ok())
        return 0;
    reap_retired();
    /* A previous one of ours: collected if it has exited; if it is still
     * finishing (a stop that timed out), retired, to be collected later. */
    if (reap_tracker(0) == -ETIMEDOUT && n_retired < (int)MPROC__ARRAY_LEN(retired)) {
        retired[n_retired].pid = tracker_pid_;
        retired[n_retired++].pidfd = tracker_pidfd;
        tracker_pidfd = -1;
        tracker_pid_ = 0;
        starter_pid = 0;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    /* Credentials on the tracker's end from the start: a message queued
     * before the tracker runs must carry its sender too. */
    int on = 1;
    if (setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &on, sizeof on) < 0) {
        int e = -errno;
        close(sv[0]);
        close(sv[1]);
        return e;
    }
    char entry[64];
    snprintf(entry, sizeof entry, TRACKER_ENV "=%d:%ld", sv[1], (long)getpid());
    char *preload = preload_entry();
    const char *add[] = {entry, preload, NULL};
    pid_t pid;
    int child_closes;
    /* Blocked from birth, ignored before they are unblocked: a Ctrl-C that
     * lands while the tracker is still starting cannot kill it. */
    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGHUP);
    int rc = mproc__spawn_exec(add, &sv[1], 1, &blocked, &pid, &child_closes);
    free(preload);
    close(sv[1]);
    if (rc < 0) {
        close(sv[0]);
        return rc;
    }
    set_line(sv[0]);
    tracker_pid_ = pid;
    starter_pid = getpid();
    tracker_pidfd = mproc__have_pidfd() ? mproc__pidfd_open(pid) : -1;
    if (tracker_pidfd < 0)
        tracker_pidfd = -1;
    return 0;
}

static int send_msg(const track_msg_t *m)
{
    int64_t deadline = mproc__deadline(SEND_TIMEOUT_MS);
    for (;;) {
        if (send(line, m, sizeof *m, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)sizeof *m)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        int left = mproc__remaining_ms(deadline);
        if (left == 0)
            return -ETIMEDOUT; /* a tracker that does not read */
        mproc__poll1(line, POLLOUT, left, NULL);
    }
}

static int tell(uint32_t op, const char *file, uint64_t dev, uint64_t ino)
{
    track_msg_t m;
    memset(&m, 0, sizeof m);
    m.magic = MSG_MAGIC;
    m.op = op;
    m.dev = dev;
    m.ino = ino;
    snprintf(m.file, sizeof m.file, "%s", file);
    mproc_once(&client_once, client_setup, NULL);
    pthread_mutex_lock(&client_lock);
    int rc = 0;
    if (op == OP_REGISTER)
        rc = start_locked();
    if (rc == 0 && line_ok()) {
        rc = send_msg(&m);
        if (rc == -EPIPE || rc == -ECONNRESET || rc == -ECONNREFUSED) {
            /* The tracker died (killed by hand): start another. */
            close(line);
            line = -1;
            if (op == OP_REGISTER) {
                rc = start_locked();
                if (rc == 0)
                    rc = send_msg(&m);
            } else {
                rc = 0;
            }
        }
    }
    pthread_mutex_unlock(&client_lock);
    return rc;
}

int mproc__tracker_line_dup(pid_t *pid)
{
    *pid = 0;
    mproc_once(&client_once, client_setup, NULL);
    pthread_mutex_lock(&client_lock);
    int fd = line_ok() ? fcntl(line, F_DUPFD_CLOEXEC, 3) : -1;
    if (fd >= 0)
        *pid = tracker_pid_;
    pthread_mutex_unlock(&client_lock);
    return fd;
}

void mproc__tracker_adopt(int fd, pid_t pid)
{
    /* Only a line: a stale or wrong number is dropped, not trusted. */
    int type = 0;
    socklen_t tlen = sizeof type;
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_SEQPACKET)
        return;
    mproc__set_cloexec(fd, 1);
    mproc_once(&client_once, client_setup, NULL);
    pthread_mutex_lock(&client_lock);
    if (line_ok() && line != fd)
        close(line); /* a forkserver helper's own, inherited through its fork */
    set_line(fd);
    tracker_pid_ = pid > 0 ? pid : 0;
    starter_pid = 0; /* not ours to wait for */
    pthread_mutex_unlock(&client_lock);
}

int mproc__tracker_register(const char *file, uint64_t dev, uint64_t ino)
{
    return tell(OP_REGISTER, file, dev, ino);
}

int mproc__tracker_unregister(const char *file, uint64_t dev, uint64_t ino)
{
    return tell(OP_UNREGISTER, file, dev, ino);
}

int mproc_tracker_start(void)
{
    mproc_once(&client_once, client_setup, NULL);
    pthread_mutex_lock(&client_lock);
    int rc = start_locked();
    pthread_mutex_unlock(&client_lock);
    return rc;
}

pid_t mproc_tracker_pid(void)
{
    mproc_once(&client_once, client_setup, NULL);
    pthread_mutex_lock(&client_lock);
    pid_t pid = line_ok() ? tracker_pid_ : 0;
    pthread_mutex_unlock(&client_lock);
    return pid;
}

int mproc_tracker_stop(int timeout_ms)
{
    mproc_once(&client_once, client_setup, NULL);
    pthread_mutex_lock(&client_lock);
    if (line_ok())
        close(line);
    line = -1;
    reap_retired();
    int rc = reap_tracker(timeout_ms);
    if (starter_pid != getpid())
        tracker_pid_ = 0; /* a fork child's view: gone from here */
    pthread_mutex_unlock(&client_lock);
    return rc;
}
