/*
 * test_fds.c - fd hygiene (P3) and mproc_process_pass_fd.
 *
 * spawn and forkserver children start with fds 0, 1, 2 and the passed fds
 * only, at the same numbers, pointing at the same open files; fork children
 * inherit everything. Invalid fds are refused before a child exists.
 */
#define _GNU_SOURCE
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
    r.n = tu_list_fds(r.fds, 128);
    if (r.n < 0)
        return 251;
    for (int i = 0, nt = 0; i < r.n && i < 128; i++) {
        int fl = fcntl(r.fds[i], F_GETFD);
        r.cloexec[i] = fl >= 0 && (fl & FD_CLOEXEC);
        if (r.fds[i] > 2 && r.fds[i] != a.report_fd && nt < 8)
            tu_fd_target(r.fds[i], r.targets[nt++], sizeof r.targets[0]);
    }
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

/* An entry_check_fds argument for fds[0..n) (their identities filled in). */
static fds_arg_t *check_fds_arg(const int *fds, int n, int write_byte)
{
    fds_arg_t *a = calloc(1, sizeof *a);
    a->n = n;
    for (int i = 0; i < n; i++) {
        a->fds[i] = fds[i];
        fill_id(fds[i], &a->dev[i], &a->ino[i]);
    }
    a->write_byte = write_byte;
    return a;
}

/* entry_check_fds in a child of method m, with fds[0..n) passed: its exit
 * code (0: all arrived; with write_byte, each got a 'k' written to it). */
static int check_fds_in_child(mproc_start_method_t m, const int *fds, int n, int write_byte)
{
    fds_arg_t *a = check_fds_arg(fds, n, write_byte);
    int code = tu_run_with_fds(m, entry_check_fds, a, sizeof *a, fds, n);
    free(a);
    return code;
}

/* The 'k' a child wrote arrives on rfd. */
static void expect_k(int rfd)
{
    char c = 0;
    TU_CHECK_EQ_INT(tu_read_full(rfd, &c, 1, TU_T_MS), 1);
    TU_CHECK_EQ_INT(c, 'k');
}

/* ------------------------------------------------------------------ cases */

static void test_only_stdio_and_passed_fds(void)
{
    int parent_has_stdio = tu_fd_is_open(0) && tu_fd_is_open(1) && tu_fd_is_open(2);
    TU_CHECK(parent_has_stdio);
    TU_FOR_EACH_METHOD(m) {
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
            fds_arg_t *a = check_fds_arg(&rp[1], 1, 1);
            a->check_inherited_n = 4;
            a->inherited[0] = np[0];
            a->inherited[1] = np[1];
            a->inherited[2] = file;
            a->inherited[3] = sp[0];
            TU_CHECK_EQ_INT(tu_run_with_fds(m, entry_check_fds, a, sizeof *a, &rp[1], 1), 0);
            free(a);
            close(rp[1]);
            expect_k(rp[0]);
        } else {
            list_arg_t a = {rp[1], 0, 0};
            fill_id(rp[1], &a.dev, &a.ino);
            TU_CHECK_EQ_INT(tu_run_with_fds(m, entry_list_fds, &a, sizeof a, &rp[1], 1), 0);
            close(rp[1]);
            list_report_t *r = calloc(1, sizeof *r);
            ssize_t n = tu_read_full(rp[0], r, sizeof *r, TU_T_MS);
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
    TU_FOR_EACH_METHOD(m) {
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
        TU_CHECK_EQ_INT(check_fds_in_child(m, &number, 1, 1), 0);
        close(number);
        expect_k(rp[0]);
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
    TU_FOR_EACH_METHOD(m) {
        int rd[N], wr[N];
        for (int i = 0; i < N; i++) {
            int p[2];
            TU_REQUIRE(tu_pipe(p) == 0);
            rd[i] = p[0];
            wr[i] = p[1];
        }
        TU_CHECK_EQ_INT(check_fds_in_child(m, wr, N, 1), 0);
        for (int i = 0; i < N; i++) {
            close(wr[i]);
            expect_k(rd[i]);
            close(rd[i]);
        }
    }
}

static void expect_no_child(mproc_start_method_t m, int fd)
{
    int before = tu_count_real_children();
    mproc_process_opts_t o = {.method = m};
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
    TU_CHECK_EQ_INT(tu_count_real_children(), before);
    if (src == 0) /* it started after all: do not leave it behind */
        mproc_process_join(p, TU_T_MS);
    TU_CHECK_OK(mproc_process_free(p));
}

static void test_pass_invalid_fd(void)
{
    TU_FOR_EACH_METHOD(m) {
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
    if (ndups == MAX_PASS + 1) {
        TU_FOR_EACH_METHOD(m) {
            /* 257th refused */
            mproc_process_opts_t o = {.method = m};
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
            pid_t helper = mproc_forkserver_pid();
            TU_CHECK_EQ_INT(check_fds_in_child(m, dups, MAX_PASS, 0), 0);
            /* a running helper is not lost on the way */
            if (helper > 0)
                TU_CHECK_EQ_INT(mproc_forkserver_pid(), helper);
        }
    }
    for (int i = 0; i < ndups; i++)
        close(dups[i]);
    close(p[0]);
    close(p[1]);
}

/* A passed non-CLOEXEC fd that the parent keeps has nothing to do with the
 * library: passing does not change the parent's flags. */
static void test_pass_fd_keeps_parent_flags(void)
{
    TU_FOR_EACH_METHOD(m) {
        int p[2];
        TU_REQUIRE(tu_pipe(p) == 0);
        int before = fcntl(p[1], F_GETFD);
        TU_CHECK_EQ_INT(check_fds_in_child(m, &p[1], 1, 0), 0);
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
    int fds[1024];
    int n = tu_list_fds(fds, 1024);
    TU_CHECK(n >= 0 && n <= 1024);
    int checked = 0;
    for (int i = 0; i < n && i < 1024; i++) {
        if (fds[i] <= 2)
            continue;
        checked++;
        int fl = fcntl(fds[i], F_GETFD);
        if (fl >= 0 && !(fl & FD_CLOEXEC)) {
            char tgt[128];
            tu_fd_target(fds[i], tgt, sizeof tgt);
            tu_fail(__FILE__, __LINE__, "fd %d -> '%s' is not O_CLOEXEC", fds[i], tgt);
        }
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
