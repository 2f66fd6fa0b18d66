/*
 * test_inherited.c - guards on resources a fork child inherits: an open
 * file whose offset the parent and its children would otherwise share, and
 * a singleton "event loop" (an epoll instance) that each process must
 * recreate once, on first use. Also the at-fork registry as an alternative
 * way to notice the new process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

/* ------------------------------------------------------------------ 1. file offsets */

#define NWRITERS 4
#define NRECORDS 1000
#define RECLEN 8 /* "C<i>:<seq 4 digits>\n" and "P:<seq 5 digits>\n" */
#define HEADER "P0\n"
#define HEADER_LEN 3

typedef struct {
    int fd;
    mproc_guard_t guard;
    char path[256];
} shared_file_t;

static shared_file_t g_file = {.fd = -1};
static int g_go_r = -1, g_go_w = -1; /* closing g_go_w releases the writers */

/* The child's rebuild: drop the inherited fd (its open file description,
 * and so its offset, is the parent's) and open the file again, so that
 * this process has a description of its own, in append mode. */
static int reopen_append(void *ctx)
{
    shared_file_t *f = ctx;
    if (f->fd >= 0)
        close(f->fd);
    f->fd = open(f->path, O_WRONLY | O_APPEND | O_CLOEXEC);
    return f->fd >= 0 ? 0 : -errno;
}

/* A MPROC_START_FORK child: rebuild through the guard, wait for the go,
 * append NRECORDS records "C<idx>:<seq>\n", one write each. */
static int entry_writer(const void *arg, size_t len)
{
    int idx;
    if (len != sizeof idx)
        return 250;
    memcpy(&idx, arg, sizeof idx);
    close(g_go_w); /* our copy: the parent's close must give EOF */
    if (mproc_guard_ensure(&g_file.guard, reopen_append, &g_file) != 1)
        return 10;
    if (mproc_guard_ensure(&g_file.guard, reopen_append, &g_file) != 0)
        return 11; /* rebuilt once, not twice */
    int fl = fcntl(g_file.fd, F_GETFL);
    if (fl < 0 || !(fl & O_APPEND))
        return 12;
    if (tu_wait_readable(g_go_r, TU_T_MS) != 1)
        return 13;
    for (int seq = 0; seq < NRECORDS; seq++) {
        char rec[RECLEN + 1];
        if (snprintf(rec, sizeof rec, "C%d:%04d\n", idx, seq) != RECLEN)
            return 14;
        if (write(g_file.fd, rec, RECLEN) != RECLEN)
            return 15;
    }
    close(g_file.fd);
    return 0;
}

/* Check the file: the header, the parent's records in order in the region
 * it reserved, and every record of every writer exactly once. */
static void check_file_contents(const char *path)
{
    const size_t want = HEADER_LEN + (size_t)(NWRITERS + 1) * NRECORDS * RECLEN;
    char *buf = malloc(want + RECLEN);
    static unsigned short seen[NWRITERS + 1][NRECORDS]; /* [NWRITERS]: the parent */
    memset(seen, 0, sizeof seen);
    TU_REQUIRE(buf != NULL);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    TU_CHECK(fd >= 0);
    ssize_t n = fd >= 0 ? tu_read_all(fd, buf, want + RECLEN, TU_T_MS) : -1;
    if (fd >= 0)
        close(fd);
    TU_CHECK_EQ_INT(n, (long long)want);
    if (n != (ssize_t)want) {
        free(buf);
        return;
    }
    TU_CHECK(memcmp(buf, HEADER, HEADER_LEN) == 0);

    int bad = 0, parent_out_of_place = 0;
    for (size_t off = HEADER_LEN; off < want; off += RECLEN) {
        const char *r = buf + off;
        int writer = -1, seq = -1;
        if (r[RECLEN - 1] != '\n') {
            bad++;
            continue;
        }
        if (r[0] == 'P' && r[1] == ':') {
            writer = NWRITERS;
            seq = atoi(r + 2);
        } else if (r[0] == 'C' && r[1] >= '0' && r[1] < '0' + NWRITERS && r[2] == ':') {
            writer = r[1] - '0';
            seq = atoi(r + 3);
        }
        if (writer < 0 || seq < 0 || seq >= NRECORDS) {
            bad++;
            continue;
        }
        seen[writer][seq]++;
        /* The parent wrote at its own offset, in order, right after the header. */
        size_t idx = (off - HEADER_LEN) / RECLEN;
        if ((writer == NWRITERS) != (idx < NRECORDS) || (writer == NWRITERS && (size_t)seq != idx))
            parent_out_of_place++;
    }
    TU_CHECK_EQ_INT(bad, 0);
    TU_CHECK_EQ_INT(parent_out_of_place, 0);
    for (int w = 0; w <= NWRITERS; w++) {
        int once = 0;
        for (int s = 0; s < NRECORDS; s++)
            once += seen[w][s] == 1;
        tu_context("writer %d (%d = the parent)", w, NWRITERS);
        TU_CHECK_EQ_INT(once, NRECORDS);
    }
    tu_context(NULL);
    free(buf);
}

static void test_file_offsets_guarded(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[200];
    snprintf(dir, sizeof dir, "%s/mproc-inherited-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    TU_REQUIRE(mkdtemp(dir) != NULL);

    g_file = (shared_file_t){.fd = -1};
    snprintf(g_file.path, sizeof g_file.path, "%s/file-XXXXXX", dir);
    g_file.fd = mkostemp(g_file.path, O_CLOEXEC); /* O_RDWR, no O_APPEND */
    TU_CHECK(g_file.fd >= 0);
    int fds[2] = {-1, -1};
    if (g_file.fd < 0 || tu_pipe(fds) != 0)
        goto out;
    g_go_r = fds[0];
    g_go_w = fds[1];
    mproc_guard_claim(&g_file.guard);
    TU_CHECK_EQ_INT(mproc_guard_inherited(&g_file.guard), 0);

    /* The header, then reserve the parent's region: the children append
     * after it while the parent fills it through its own offset. */
    TU_CHECK_OK(tu_write_full(g_file.fd, HEADER, HEADER_LEN));
    TU_CHECK_OK(ftruncate(g_file.fd, HEADER_LEN + NRECORDS * RECLEN) == 0 ? 0 : -errno);
    off_t start = lseek(g_file.fd, 0, SEEK_CUR);
    TU_CHECK_EQ_INT(start, HEADER_LEN);

    mproc_process_t *kids[NWRITERS] = {NULL};
    int started = 0;
    for (int i = 0; i < NWRITERS; i++) {
        tu_context("starting writer %d", i);
        if (tu_start(&kids[i], MPROC_START_FORK, entry_writer, &i, sizeof i, NULL, 0) != 0) {
            TU_CHECK(0 && "tu_start failed");
            break;
        }
        started++;
    }
    tu_context(NULL);
    tu_close(&g_go_w); /* go: every writer's wait sees EOF */

    /* Concurrently, the parent's records through its own (claimed, not
     * rebuilt) fd, at its own offset. */
    size_t parent_bytes = 0;
    for (int seq = 0; seq < NRECORDS; seq++) {
        char rec[RECLEN + 1];
        snprintf(rec, sizeof rec, "P:%05d\n", seq);
        if (tu_write_full(g_file.fd, rec, RECLEN) != 0) {
            TU_CHECK(0 && "parent write failed");
            break;
        }
        parent_bytes += RECLEN;
    }

    for (int i = 0; i < started; i++) {
        tu_context("writer %d", i);
        TU_CHECK_EQ_INT(tu_join_free(kids[i]), 0);
    }
    tu_context(NULL);

    /* The guard still says ours; the children moved neither the parent's
     * offset nor its file status flags (they had descriptions of their own). */
    TU_CHECK_EQ_INT(mproc_guard_inherited(&g_file.guard), 0);
    TU_CHECK_EQ_INT(lseek(g_file.fd, 0, SEEK_CUR), (long long)(start + (off_t)parent_bytes));
    int fl = fcntl(g_file.fd, F_GETFL);
    TU_CHECK(fl >= 0 && !(fl & O_APPEND));
    if (started == NWRITERS && parent_bytes == NRECORDS * RECLEN)
        check_file_contents(g_file.path);

out:
    tu_close(&g_go_r);
    tu_close(&g_go_w);
    tu_close(&g_file.fd);
    if (g_file.path[0])
        unlink(g_file.path);
    TU_CHECK_OK(rmdir(dir) == 0 ? 0 : -errno);
    g_file = (shared_file_t){.fd = -1};
}

/* ------------------------------------------------------------------ 2. singleton loop */

typedef struct {
    int epfd;
    mproc_guard_t guard; /* the owner pid */
    int timers;          /* registrations made on this process's loop */
    uint64_t created_gen;
    int builds;         /* make_loop calls in this process's history */
    volatile int stale; /* set in a fork child by the at-fork callback */
} loop_t;

static loop_t g_loop = {.epfd = -1};

static int make_loop(void *ctx)
{
    loop_t *l = ctx;
    if (l->epfd >= 0)
        close(l->epfd); /* the inherited instance: the parent's registrations */
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0)
        return -errno;
    l->timers = 0;
    l->created_gen = mproc_fork_generation();
    l->builds++;
    l->stale = 0;
    return 0;
}

static loop_t *get_loop(void)
{
    return mproc_guard_ensure(&g_loop.guard, make_loop, &g_loop) < 0 ? NULL : &g_loop;
}

static void mark_loop_stale(void *ctx)
{
    ((loop_t *)ctx)->stale = 1;
}

static int g_timer_fd = -1; /* registered on the parent's loop */

/* In a fork child (raw or mproc): 0, or a code naming the failed check. */
static int loop_child_checks(void)
{
    uint64_t gen = mproc_fork_generation();
    if (!g_loop.stale)
        return 20; /* the at-fork child callback ran */
    if (!mproc_guard_inherited(&g_loop.guard))
        return 21;
    /* The inherited epfd is the parent's instance: the fd is already in it. */
    struct epoll_event ev = {.events = EPOLLIN};
    if (epoll_ctl(g_loop.epfd, EPOLL_CTL_ADD, g_timer_fd, &ev) == 0 || errno != EEXIST)
        return 22;
    int before = g_loop.builds;
    loop_t *l = get_loop();
    if (l == NULL)
        return 23;
    if (l->builds != before + 1)
        return 24;
    if (l->created_gen != gen)
        return 25;
    if (l->stale || l->timers != 0)
        return 26;
    if (get_loop() != l || l->builds != before + 1)
        return 27; /* the second call does not rebuild */
    if (mproc_guard_inherited(&l->guard))
        return 28;
    /* A fresh instance: the same fd is not in it yet. */
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, g_timer_fd, &ev) != 0)
        return 29;
    l->timers++;
    close(l->epfd);
    l->epfd = -1;
    return 0;
}

static int raw_child(void *ctx)
{
    (void)ctx;
    return loop_child_checks();
}

static int entry_loop_child(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return loop_child_checks();
}

static void test_singleton_loop_detects_new_process(void)
{
    g_loop = (loop_t){.epfd = -1};
    int p[2] = {-1, -1};
    TU_REQUIRE(tu_pipe(p) == 0);
    g_timer_fd = p[0];

    loop_t *l = get_loop();
    TU_CHECK(l != NULL);
    mproc_atfork_t *h = NULL;
    if (l == NULL)
        goto out;
    TU_CHECK_EQ_INT(l->builds, 1);
    TU_CHECK_EQ_INT(l->created_gen, (long long)mproc_fork_generation());
    TU_CHECK(get_loop() == l);
    TU_CHECK_EQ_INT(l->builds, 1);
    struct epoll_event ev = {.events = EPOLLIN};
    TU_CHECK_OK(epoll_ctl(l->epfd, EPOLL_CTL_ADD, g_timer_fd, &ev) == 0 ? 0 : -errno);
    l->timers++;
    int parent_epfd = l->epfd;

    TU_CHECK_OK(mproc_atfork_register(NULL, NULL, mark_loop_stale, &g_loop, &h));

    int st = TU_NO_CODE;
    tu_context("raw fork child");
    TU_CHECK_OK(tu_run_child(raw_child, NULL, TU_T_MS, &st));
    TU_CHECK_EQ_INT(st, 0);
    tu_context("MPROC_START_FORK child");
    TU_CHECK_EQ_INT(tu_run(MPROC_START_FORK, entry_loop_child, NULL, 0), 0);
    tu_context(NULL);

    /* The parent's loop is untouched: same instance, one build, its
     * registration still there, never marked stale. */
    TU_CHECK(get_loop() == l);
    TU_CHECK_EQ_INT(l->builds, 1);
    TU_CHECK_EQ_INT(l->epfd, parent_epfd);
    TU_CHECK_EQ_INT(l->timers, 1);
    TU_CHECK_EQ_INT(l->stale, 0);
    TU_CHECK_EQ_INT(mproc_guard_inherited(&l->guard), 0);
    errno = 0;
    TU_CHECK(epoll_ctl(l->epfd, EPOLL_CTL_ADD, g_timer_fd, &ev) == -1 && errno == EEXIST);

out:
    TU_CHECK_OK(mproc_atfork_unregister(h));
    tu_close(&g_loop.epfd);
    tu_close(&p[0]);
    tu_close(&p[1]);
    g_timer_fd = -1;
    g_loop = (loop_t){.epfd = -1};
}

/* ------------------------------------------------------------------ main */

static const tu_case_t cases[] = {
    TU_CASE(test_file_offsets_guarded),
    TU_CASE(test_singleton_loop_detects_new_process),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
