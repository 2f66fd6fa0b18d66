/*
 * test_fds.c - fd hygiene (P3) and mproc_process_pass_fd.
 *
 * spawn and forkserver children start with fds 0, 1, 2 and the passed fds
 * only, at the same numbers, pointing at the same open files; fork children
 * inherit everything. Invalid fds are refused before a child exists.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

#define T_MS 10000
#define MAX_PASS MPROC_PASS_FDS_MAX

/* ------------------------------------------------------------------ entries */

typedef struct {
    int report_fd;
    dev_t dev;
    ino_t ino;
} list_arg_t;

typedef struct {
    int same_file; /* fstat(report_fd) matches the parent's */
    int n;
    int fds[128];
    int cloexec[128];
    char targets[8][64]; /* readlink of the first few unexpected ones */
} list_report_t;

/* Lists its open fds and writes them back through the passed fd. */
static int entry_list_fds(const void *arg, size_t len)
{
    list_arg_t a;
    if (len != sizeof a)
        return 250;
    memcpy(&a, arg, sizeof a);
    list_report_t r;
    memset(&r, 0, sizeof r);
    struct stat st;
    r.same_file = fstat(a.report_fd, &st) == 0 && st.st_dev == a.dev && st.st_ino == a.ino;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 251;
    struct dirent *e;
    int nt = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        int fd = atoi(e->d_name);
        if (fd == dirfd(d))
            continue;
        if (r.n < 128) {
            r.fds[r.n] = fd;
            int fl = fcntl(fd, F_GETFD);
            r.cloexec[r.n] = fl >= 0 && (fl & FD_CLOEXEC);
        }
        r.n++;
        if (fd > 2 && fd != a.report_fd && nt < 8) {
            char path[64];
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
            ssize_t k = readlink(path, r.targets[nt], sizeof r.targets[nt] - 1);
            if (k < 0)
                k = 0;
            r.targets[nt][k] = '\0';
            nt++;
        }
    }
    closedir(d);
    return tu_write_full(a.report_fd, &r, sizeof r) == 0 ? 0 : 252;
}

typedef struct {
    int n;
    int fds[MAX_PASS];
    dev_t dev[MAX_PASS];
    ino_t ino[MAX_PASS];
    int write_byte; /* write one byte to each fd */
    int check_inherited_n;
    int inherited[4]; /* fork only: fds that must also be open */
} fds_arg_t;

/* Checks every fd in the list is open and is the same file as in the
 * parent; optionally writes one byte to each. Exit status: 0, or 10 + the
 * index of the first bad fd (capped), or 9 for a missing inherited fd. */
static int entry_check_fds(const void *arg, size_t len)
{
    if (len != sizeof(fds_arg_t))
        return 250;
    fds_arg_t *a = malloc(sizeof *a);
    if (!a)
        return 251;
    memcpy(a, arg, sizeof *a);
    int rc = 0;
    for (int i = 0; i < a->n && rc == 0; i++) {
        struct stat st;
        if (fstat(a->fds[i], &st) != 0 || st.st_dev != a->dev[i] || st.st_ino != a->ino[i]) {
            rc = 10 + (i < 200 ? i : 200);
            break;
        }
        if (a->write_byte && tu_write_full(a->fds[i], "k", 1) != 0)
            rc = 8;
    }
    for (int i = 0; i < a->check_inherited_n && rc == 0; i++)
        if (!tu_fd_is_open(a->inherited[i]))
            rc = 9;
    free(a);
    return rc;
}

/* ------------------------------------------------------------------ helpers */

static void fill_id(int fd, dev_t *dev, ino_t *ino)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        tu_fail(__FILE__, __LINE__, "fstat(%d) failed", fd);
        *dev = 0;
        *ino = 0;
        return;
    }
    *dev = st.st_dev;
    *ino = st.st_ino;
}

/* Children of ours other than the forkserver helper. */
static int count_real_children(void)
{
    pid_t kids[64];
    int n = tu_count_children(kids, 64);
    pid_t helper = mproc_forkserver_pid();
    int real = 0;
    for (int i = 0; i < n && i < 64; i++)
        if (kids[i] != helper)
            real++;
    return real;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Start entry with arg, passing the listed fds, join, return exit code (or
 * -9999 after reporting an error). */
static int run_with_fds(mproc_start_method_t m, mproc_entry_fn fn, const void *arg, size_t len,
                        const int *fds, int nfds)
{
    mproc_process_opts_t o = {0};
    o.method = m;
    mproc_process_t *p = NULL;
    int rc = mproc_process_create(&p, fn, arg, len, &o);
    if (!TU_CHECK_OK(rc))
        return -9999;
    for (int i = 0; i < nfds && rc == 0; i++) {
        rc = mproc_process_pass_fd(p, fds[i]);
        if (rc != 0)
            tu_fail(__FILE__, __LINE__, "pass_fd(%d) (#%d): %d (%s)", fds[i], i, rc,
                    mproc_strerror(rc));
    }
    if (rc == 0)
        rc = mproc_process_start(p);
    int code = -9999;
    if (TU_CHECK_OK(rc)) {
        if (TU_CHECK_OK(mproc_process_join(p, T_MS)))
            TU_CHECK_OK(mproc_process_exitcode(p, &code));
        else {
            mproc_process_kill(p);
            mproc_process_join(p, T_MS);
        }
    }
    TU_CHECK_OK(mproc_process_free(p));
    /* the caller's fds are still its own */
    for (int i = 0; i < nfds; i++)
        if (!tu_fd_is_open(fds[i]))
            tu_fail(__FILE__, __LINE__, "passed fd %d was closed in the parent", fds[i]);
    return code;
}

/* ------------------------------------------------------------------ cases */

static void test_only_stdio_and_passed_fds(void)
{
    int parent_has_stdio = tu_fd_is_open(0) && tu_fd_is_open(1) && tu_fd_is_open(2);
    TU_CHECK(parent_has_stdio);
    for (int mi = 0; mi < TU_NMETHODS; mi++) {
        mproc_start_method_t m = tu_methods[mi];
        tu_context("method=%s", tu_method_name(m));
        /* clutter the parent: fds without O_CLOEXEC, a file, a socketpair */
        int np[2];
        TU_REQUIRE(pipe(np) == 0);
        int file = open("/proc/self/status", O_RDONLY);
        int sp[2];
        TU_REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
        TU_REQUIRE(file >= 0);
        int rp[2];
        TU_REQUIRE(tu_pipe(rp) == 0);

        if (m == MPROC_START_FORK) {
            /* fork: everything is inherited, and the passed fd works */
            fds_arg_t *a = calloc(1, sizeof *a);
            a->n = 1;
            a->fds[0] = rp[1];
            fill_id(rp[1], &a->dev[0], &a->ino[0]);
            a->write_byte = 1;
            a->check_inherited_n = 4;
            a->inherited[0] = np[0];
            a->inherited[1] = np[1];
            a->inherited[2] = file;
            a->inherited[3] = sp[0];
            int code = run_with_fds(m, entry_check_fds, a, sizeof *a, &rp[1], 1);
            TU_CHECK_EQ_INT(code, 0);
            free(a);
            close(rp[1]);
            char c = 0;
            TU_CHECK_EQ_INT(tu_read_full(rp[0], &c, 1, T_MS), 1);
            TU_CHECK_EQ_INT(c, 'k');
        } else {
            list_arg_t a = {rp[1], 0, 0};
            fill_id(rp[1], &a.dev, &a.ino);
            int code = run_with_fds(m, entry_list_fds, &a, sizeof a, &rp[1], 1);
            TU_CHECK_EQ_INT(code, 0);
            close(rp[1]);
            list_report_t *r = calloc(1, sizeof *r);
            ssize_t n = tu_read_full(rp[0], r, sizeof *r, T_MS);
            if (TU_CHECK_EQ_INT(n, (long long)sizeof *r)) {
                TU_CHECK(r->same_file);
                int cnt = r->n < 128 ? r->n : 128;
                /* Without pidfds every child holds one extra fd, the
                 * close-on-exec write end of its exit pipe (mproc.h). */
                int extra = 0, extra_ok = 1, seen[4] = {0, 0, 0, 0};
                int want[4] = {0, 1, 2, rp[1]};
                for (int i = 0; i < cnt; i++) {
                    int known = 0;
                    for (int k = 0; k < 4; k++)
                        if (r->fds[i] == want[k])
                            seen[k] = known = 1;
                    if (!known) {
                        extra++;
                        if (!r->cloexec[i])
                            extra_ok = 0;
                    }
                }
                int ok = seen[0] && seen[1] && seen[2] && seen[3] && r->n == cnt;
                if (mproc_have_pidfd())
                    ok = ok && extra == 0;
                else
                    ok = ok && extra == 1 && extra_ok;
                qsort(r->fds, (size_t)cnt, sizeof r->fds[0], cmp_int);
                if (!ok) {
                    char list[512] = "";
                    for (int i = 0; i < cnt; i++) {
                        char one[16];
                        snprintf(one, sizeof one, " %d", r->fds[i]);
                        strncat(list, one, sizeof list - strlen(list) - 1);
                    }
                    tu_fail(__FILE__, __LINE__,
                            "child fds are {%s } (n=%d); want { 0 1 2 %d }%s (unexpected: "
                            "%s %s %s)",
                            list, r->n, rp[1],
                            mproc_have_pidfd() ? "" : " and one close-on-exec exit pipe",
                            r->targets[0], r->targets[1], r->targets[2]);
                }
            }
            free(r);
        }
        close(rp[0]);
        close(np[0]);
        close(np[1]);
        close(file);
        close(sp[0]);
        close(sp[1]);
    }
}

/* Passing fd 3 when it already is fd 3: dup2(3, 3) does not clear
 * FD_CLOEXEC; the fd must still arrive. Also a high fd number. */
static void pass_at_number(int number)
{
    for (int mi = 0; mi < TU_NMETHODS; mi++) {
        mproc_start_method_t m = tu_methods[mi];
        tu_context("method=%s fd=%d", tu_method_name(m), number);
        if (tu_fd_is_open(number)) {
            tu_fail(__FILE__, __LINE__, "fd %d is already open in the test process", number);
            return;
        }
        int tmp[2], rp[2];
        TU_REQUIRE(tu_pipe(tmp) == 0);
        /* keep both ends away from `number` (the pipe may have landed on it) */
        rp[0] = fcntl(tmp[0], F_DUPFD_CLOEXEC, number + 1);
        rp[1] = fcntl(tmp[1], F_DUPFD_CLOEXEC, number + 1);
        close(tmp[0]);
        close(tmp[1]);
        TU_REQUIRE(rp[0] >= 0 && rp[1] >= 0);
        TU_REQUIRE(dup3(rp[1], number, O_CLOEXEC) == number);
        close(rp[1]);
        TU_CHECK(fcntl(number, F_GETFD) & FD_CLOEXEC); /* the trap is armed */
        fds_arg_t *a = calloc(1, sizeof *a);
        a->n = 1;
        a->fds[0] = number;
        fill_id(number, &a->dev[0], &a->ino[0]);
        a->write_byte = 1;
        int code = run_with_fds(m, entry_check_fds, a, sizeof *a, &number, 1);
        free(a);
        TU_CHECK_EQ_INT(code, 0);
        close(number);
        char c = 0;
        TU_CHECK_EQ_INT(tu_read_full(rp[0], &c, 1, T_MS), 1);
        TU_CHECK_EQ_INT(c, 'k');
        close(rp[0]);
    }
}

static void test_pass_fd_3(void)
{
    pass_at_number(3);
}

static void test_pass_fd_high(void)
{
    pass_at_number(700);
}

/* fds 0..9 shuffled around: passing several fds whose numbers are low and
 * interleaved with where the library might put its own. */
static void test_pass_several(void)
{
    enum { N = 6 };
    for (int mi = 0; mi < TU_NMETHODS; mi++) {
        mproc_start_method_t m = tu_methods[mi];
        tu_context("method=%s", tu_method_name(m));
        int rd[N], wr[N];
        for (int i = 0; i < N; i++) {
            int p[2];
            TU_REQUIRE(tu_pipe(p) == 0);
            rd[i] = p[0];
            wr[i] = p[1];
        }
        fds_arg_t *a = calloc(1, sizeof *a);
        a->n = N;
        for (int i = 0; i < N; i++) {
            a->fds[i] = wr[i];
            fill_id(wr[i], &a->dev[i], &a->ino[i]);
        }
        a->write_byte = 1;
        int code = run_with_fds(m, entry_check_fds, a, sizeof *a, wr, N);
        free(a);
        TU_CHECK_EQ_INT(code, 0);
        for (int i = 0; i < N; i++) {
            close(wr[i]);
            char c = 0;
            TU_CHECK_EQ_INT(tu_read_full(rd[i], &c, 1, T_MS), 1);
            close(rd[i]);
        }
    }
}

static void expect_no_child(mproc_start_method_t m, int fd)
{
    int before = count_real_children();
    mproc_process_opts_t o = {0};
    o.method = m;
    mproc_process_t *p = NULL;
    TU_REQUIRE_OK(mproc_process_create(&p, entry_check_fds, NULL, 0, &o));
    int prc = mproc_process_pass_fd(p, fd);
    int src = 1;
    TU_CHECK_EQ_INT(prc, -EBADF); /* "-EBADF if fd is not open" */
    if (prc == 0) {
        src = mproc_process_start(p);
        TU_CHECK(src < 0);
        TU_CHECK_EQ_INT(mproc_process_pid(p), 0);
    }
    TU_CHECK_EQ_INT(count_real_children(), before);
    if (src == 0) { /* it started after all: do not leave it behind */
        mproc_process_join(p, T_MS);
    }
    TU_CHECK_OK(mproc_process_free(p));
}

static void test_pass_invalid_fd(void)
{
    for (int mi = 0; mi < TU_NMETHODS; mi++) {
        mproc_start_method_t m = tu_methods[mi];
        tu_context("method=%s fd=9999", tu_method_name(m));
        TU_REQUIRE(!tu_fd_is_open(9999));
        expect_no_child(m, 9999);
        /* a number that was open a moment ago */
        tu_context("method=%s closed fd", tu_method_name(m));
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        TU_REQUIRE(fd >= 0);
        close(fd);
        expect_no_child(m, fd);
    }
}

static void test_pass_max_fds(void)
{
    int p[2];
    TU_REQUIRE(tu_pipe(p) == 0);
    int dups[MAX_PASS + 1];
    int ndups = 0;
    for (int i = 0; i < MAX_PASS + 1; i++) {
        dups[i] = fcntl(p[1], F_DUPFD_CLOEXEC, 100);
        if (dups[i] < 0) {
            tu_fail(__FILE__, __LINE__, "dup #%d failed (RLIMIT_NOFILE too low?)", i);
            break;
        }
        ndups++;
    }
    fds_arg_t *a = calloc(1, sizeof *a);
    if (ndups == MAX_PASS + 1) {
        for (int mi = 0; mi < TU_NMETHODS; mi++) {
            mproc_start_method_t m = tu_methods[mi];
            tu_context("method=%s", tu_method_name(m));
            /* 257th refused */
            mproc_process_opts_t o = {0};
            o.method = m;
            mproc_process_t *q = NULL;
            TU_REQUIRE_OK(mproc_process_create(&q, entry_check_fds, NULL, 0, &o));
            int rc = 0, i;
            for (i = 0; i < MAX_PASS + 1; i++) {
                rc = mproc_process_pass_fd(q, dups[i]);
                if (rc != 0)
                    break;
            }
            TU_CHECK_EQ_INT(i, MAX_PASS); /* the first MPROC_PASS_FDS_MAX were accepted */
            TU_CHECK_EQ_INT(rc, -E2BIG);
            TU_CHECK_OK(mproc_process_free(q));

            /* MPROC_PASS_FDS_MAX passed: all arrive (with the helper running, to
             * see that it survives) */
            if (m == MPROC_START_FORKSERVER) {
                int src = mproc_forkserver_start(NULL, NULL, 0);
                TU_CHECK(src == 0 || src == MPROC_ESTATE);
            }
            a->n = MAX_PASS;
            for (int k = 0; k < MAX_PASS; k++) {
                a->fds[k] = dups[k];
                fill_id(dups[k], &a->dev[k], &a->ino[k]);
            }
            pid_t helper = mproc_forkserver_pid();
            int code = run_with_fds(m, entry_check_fds, a, sizeof *a, dups, MAX_PASS);
            TU_CHECK_EQ_INT(code, 0);
            /* a running helper is not lost on the way */
            if (helper > 0)
                TU_CHECK_EQ_INT(mproc_forkserver_pid(), helper);
        }
    }
    free(a);
    for (int i = 0; i < ndups; i++)
        close(dups[i]);
    close(p[0]);
    close(p[1]);
}

/* A passed non-CLOEXEC fd that the parent keeps has nothing to do with the
 * library: passing does not change the parent's flags. */
static void test_pass_fd_keeps_parent_flags(void)
{
    for (int mi = 0; mi < TU_NMETHODS; mi++) {
        mproc_start_method_t m = tu_methods[mi];
        tu_context("method=%s", tu_method_name(m));
        int p[2];
        TU_REQUIRE(tu_pipe(p) == 0);
        int before = fcntl(p[1], F_GETFD);
        fds_arg_t *a = calloc(1, sizeof *a);
        a->n = 1;
        a->fds[0] = p[1];
        fill_id(p[1], &a->dev[0], &a->ino[0]);
        int code = run_with_fds(m, entry_check_fds, a, sizeof *a, &p[1], 1);
        free(a);
        TU_CHECK_EQ_INT(code, 0);
        TU_CHECK_EQ_INT(fcntl(p[1], F_GETFD), before);
        close(p[0]);
        close(p[1]);
    }
}

/* "Every file descriptor mproc opens is O_CLOEXEC": with a helper and a
 * running child of each method, every fd above 2 in this process (the
 * test's own are all O_CLOEXEC) has FD_CLOEXEC. */
static void test_library_fds_are_cloexec(void)
{
    tu_blocked_t b[TU_NMETHODS];
    int started = 0;
    TU_CHECK_OK(mproc_forkserver_start(NULL, NULL, 0));
    for (int mi = 0; mi < TU_NMETHODS; mi++) {
        tu_context("method=%s", tu_method_name(tu_methods[mi]));
        if (!TU_CHECK_OK(tu_start_blocked(&b[mi], tu_methods[mi], NULL, 0)))
            break;
        started++;
    }
    tu_context(NULL);
    DIR *d = opendir("/proc/self/fd");
    TU_CHECK(d != NULL);
    int checked = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9')
                continue;
            int fd = atoi(e->d_name);
            if (fd <= 2 || fd == dirfd(d))
                continue;
            checked++;
            int fl = fcntl(fd, F_GETFD);
            if (fl >= 0 && !(fl & FD_CLOEXEC)) {
                char path[64], tgt[128];
                snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
                ssize_t n = readlink(path, tgt, sizeof tgt - 1);
                tgt[n < 0 ? 0 : n] = '\0';
                tu_fail(__FILE__, __LINE__, "fd %d -> '%s' is not O_CLOEXEC", fd, tgt);
            }
        }
        closedir(d);
    }
    TU_CHECK(checked >= 2 * started); /* the test's own pipes at least */
    for (int i = 0; i < started; i++) {
        TU_CHECK_OK(tu_release(&b[i]));
        tu_blocked_cleanup(&b[i]);
    }
}

static const tu_case_t cases[] = {
    TU_CASE(test_only_stdio_and_passed_fds),
    TU_CASE(test_pass_fd_3),
    TU_CASE(test_pass_fd_high),
    TU_CASE(test_pass_several),
    TU_CASE(test_pass_invalid_fd),
    TU_CASE(test_pass_max_fds),
    TU_CASE(test_pass_fd_keeps_parent_flags),
    TU_CASE(test_library_fds_are_cloexec),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
