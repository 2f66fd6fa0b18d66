/*
 * clean_exec PROGRAM [ARG...] - run PROGRAM in a clean process state.
 *
 * CTest launches every test through this: it closes every fd above 2,
 * puts every ignored signal back to its default action, unblocks every
 * signal, then execs PROGRAM. The tests count and compare fds and signal
 * states, and what they inherit must not depend on who started them:
 * CTest 3.25 itself leaks its log file to tests as fd 3, and shells, CI
 * runners and terminals leak more.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void close_from_3(void)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3u, ~0u, 0u) == 0)
        return;
#endif
    /* Older kernels: close what /proc says is open. */
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        int self = dirfd(d);
        int fds[1024];
        int n = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL && n < (int)(sizeof fds / sizeof fds[0])) {
            char *end;
            long fd = strtol(e->d_name, &end, 10);
            if (*end == '\0' && end != e->d_name && fd > 2 && fd != self)
                fds[n++] = (int)fd;
        }
        closedir(d);
        for (int i = 0; i < n; i++)
            close(fds[i]);
        return;
    }
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (long fd = 3; fd < max; fd++)
        close((int)fd);
}

static void default_signals(void)
{
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;
        if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN) {
            sa.sa_handler = SIG_DFL;
            sigemptyset(&sa.sa_mask);
            sa.sa_flags = 0;
            sigaction(sig, &sa, NULL);
        }
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: clean_exec PROGRAM [ARG...]\n");
        return 2;
    }
    close_from_3();
    default_signals();
    execvp(argv[1], argv + 1);
    fprintf(stderr, "clean_exec: %s: %s\n", argv[1], strerror(errno));
    return 127;
}
