/*
 * shm_tree NSEG MODE - a process tree holding named segments, for
 * tests/cli_clean.sh (`mproc clean`).
 *
 * The top process creates NSEG named segments, starts a fork child (which
 * raw-forks a grandchild) and a spawn child, each creating NSEG more, and
 * prints on stdout, once all of them have:
 *
 *     seg NAME        one line per segment (NSEG * 4 in all)
 *     tracker PID     one line per distinct tracker pid reported
 *     READY
 *
 * MODE "hold": then every process blocks until killed.
 * MODE "live": the top waits for EOF on stdin, then every process unlinks
 * and closes its segments, lets go of its tracker and exits; the top exits
 * 0 once all did (1 on any error).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mproc.h"

#define MAXSEG 16

typedef struct {
    int report_w;  /* lines go here */
    int release_r; /* EOF: clean up and exit */
    int close_a;   /* the top's ends, closed by a fork child */
    int close_b;
    int nseg;
    int is_fork;
    int hold; /* block until killed, whatever happens to the top */
} tree_arg_t;

static int write_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Create nseg segments and report them in one write each (< PIPE_BUF). */
static int make_segments(mproc_shm_t **segs, int nseg, int report_w)
{
    for (int i = 0; i < nseg; i++) {
        int rc = mproc_shm_create_named(&segs[i], 4096, NULL);
        if (rc != 0) {
            fprintf(stderr, "shm_tree: create: %s\n", mproc_strerror(rc));
            return -1;
        }
        char line[128];
        int n = snprintf(line, sizeof line, "seg %s\n", mproc_shm_name(segs[i]));
        if (write_all(report_w, line, (size_t)n) != 0)
            return -1;
    }
    char line[64];
    int n = snprintf(line, sizeof line, "tracker %d\nEND\n", (int)mproc_tracker_pid());
    return write_all(report_w, line, (size_t)n);
}

static int wait_release(int fd)
{
    char c;
    ssize_t n;
    do
        n = read(fd, &c, 1);
    while (n < 0 && errno == EINTR);
    return n == 0 ? 0 : -1;
}

static int drop_segments(mproc_shm_t **segs, int nseg)
{
    int bad = 0;
    for (int i = 0; i < nseg; i++) {
        if (!segs[i])
            continue;
        bad |= mproc_shm_unlink(segs[i]) != 0;
        bad |= mproc_shm_close(segs[i]) != 0;
    }
    bad |= mproc_tracker_stop(10000) != 0;
    return bad;
}

static int member(const tree_arg_t *a, int with_grandchild)
{
    mproc_shm_t *segs[MAXSEG] = {0};
    pid_t gc = -1;
    if (with_grandchild) {
        fflush(NULL);
        gc = fork();
        if (gc < 0)
            return 10;
        if (gc == 0)
            _exit(member(a, 0));
    }
    if (make_segments(segs, a->nseg, a->report_w) != 0)
        return 11;
    /* hold: not even the top's death (EOF on the release pipe, before the
     * pid namespace is torn down) may make a member clean up */
    while (a->hold)
        pause();
    if (wait_release(a->release_r) != 0)
        return 12;
    int bad = drop_segments(segs, a->nseg);
    if (gc > 0) {
        int st;
        while (waitpid(gc, &st, 0) < 0 && errno == EINTR) {
        }
        bad |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    return bad ? 13 : 0;
}

static int entry_member(const void *arg, size_t len)
{
    tree_arg_t a;
    if (len != sizeof a || !arg)
        return 9;
    memcpy(&a, arg, sizeof a);
    if (a.is_fork) {
        close(a.close_a);
        close(a.close_b);
    }
    return member(&a, a.is_fork);
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    if (argc != 3 || atoi(argv[1]) < 1 || atoi(argv[1]) > MAXSEG ||
        (strcmp(argv[2], "hold") != 0 && strcmp(argv[2], "live") != 0)) {
        fprintf(stderr, "usage: shm_tree NSEG hold|live\n");
        return 2;
    }
    int nseg = atoi(argv[1]);
    int live = strcmp(argv[2], "live") == 0;
    int rp[2], lp[2];
    if (pipe2(rp, O_CLOEXEC) != 0 || pipe2(lp, O_CLOEXEC) != 0)
        return 1;

    mproc_shm_t *segs[MAXSEG] = {0};
    if (make_segments(segs, nseg, rp[1]) != 0)
        return 1;

    mproc_process_t *kids[2] = {0};
    const mproc_start_method_t methods[2] = {MPROC_START_FORK, MPROC_START_SPAWN};
    for (int i = 0; i < 2; i++) {
        tree_arg_t a = {rp[1], lp[0], rp[0], lp[1], nseg, methods[i] == MPROC_START_FORK, !live};
        mproc_process_opts_t o = {.method = methods[i]};
        int rc = mproc_process_create(&kids[i], entry_member, &a, sizeof a, &o);
        if (rc == 0)
            rc = mproc_process_pass_fd(kids[i], rp[1]);
        if (rc == 0)
            rc = mproc_process_pass_fd(kids[i], lp[0]);
        if (rc == 0)
            rc = mproc_process_start(kids[i]);
        if (rc != 0) {
            fprintf(stderr, "shm_tree: child: %s\n", mproc_strerror(rc));
            return 1;
        }
    }
    close(rp[1]);
    close(lp[0]);

    /* 4 ENDs: us, the fork child, its grandchild, the spawn child */
    int ends = 0;
    char buf[8192];
    size_t have = 0;
    pid_t trackers[8];
    int ntrackers = 0;
    while (ends < 4) {
        ssize_t n = read(rp[0], buf + have, sizeof buf - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "shm_tree: a member failed\n");
            return 1;
        }
        have += (size_t)n;
        buf[have] = '\0';
        char *nl;
        while ((nl = memchr(buf, '\n', have)) != NULL) {
            *nl = '\0';
            if (strcmp(buf, "END") == 0) {
                ends++;
            } else if (strncmp(buf, "tracker ", 8) == 0) {
                pid_t t = (pid_t)atoi(buf + 8);
                int seen = 0;
                for (int i = 0; i < ntrackers; i++)
                    seen |= trackers[i] == t;
                if (!seen && ntrackers < 8) {
                    trackers[ntrackers++] = t;
                    printf("%s\n", buf);
                }
            } else {
                printf("%s\n", buf);
            }
            size_t used = (size_t)(nl - buf) + 1;
            memmove(buf, nl + 1, have - used);
            have -= used;
        }
    }
    printf("READY\n");
    fflush(stdout);

    if (!live) {
        for (;;)
            pause();
    }
    if (wait_release(0) != 0)
        return 1;
    close(lp[1]); /* the members clean up and exit */
    int bad = 0;
    for (int i = 0; i < 2; i++) {
        int rc = mproc_process_join(kids[i], 10000), code = -1;
        if (rc == 0)
            rc = mproc_process_exitcode(kids[i], &code);
        if (rc != 0 || code != 0) {
            fprintf(stderr, "shm_tree: member %d: rc %d code %d\n", i, rc, code);
            bad = 1;
        }
        mproc_process_free(kids[i]);
    }
    bad |= drop_segments(segs, nseg);
    return bad;
}
