/*
 * mproc.c - the mproc command-line tool.
 *
 * A thin shell over the library: each command is one library call and its
 * output (run: mproc_supervise, clean: mproc_clean).
 *
 * Exit status: 0 on success, 1 on failure, 2 on a usage error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mproc.h"

static void usage(FILE *out)
{
    fputs("usage: mproc <command> [args...]\n"
          "\n"
          "commands:\n"
          "  run [options] -- CMD [ARGS...]\n"
          "             run N copies of CMD and keep them running (docs/supervisor.md):\n"
          "               -w, --workers N          copies (default: the CPUs)\n"
          "               --bind ADDR              listen on HOST:PORT, [IPV6]:PORT or\n"
          "                                        unix:PATH; workers get fds 3.. with\n"
          "                                        LISTEN_FDS (repeatable)\n"
          "               --restart POLICY         always (default), on-failure, never\n"
          "               --max-restarts N         more restarts than N within ...\n"
          "               --restart-window SEC     ... SEC: stop everything, exit 1\n"
          "                                        (default 10 in 60)\n"
          "               --graceful-timeout SEC   SIGTERM to SIGKILL (default 30)\n"
          "               --timeout SEC            kill a worker silent for SEC (no\n"
          "                                        WATCHDOG=1 or READY=1; default 0: off)\n"
          "               --ready                  a worker is up once it sent READY=1\n"
          "               --pidfile PATH           write the master's pid there\n"
          "             signals: TERM/INT stop gracefully, QUIT at once, HUP reloads,\n"
          "             TTIN/TTOU add/remove a worker, USR2 re-executes mproc itself\n"
          "             (same pid, sockets and workers handed over); a worker exiting 3\n"
          "             is not restarted\n"
          "  clean [--dry-run]\n"
          "             remove the shared memory segments (/dev/shm/mproc-*) that no\n"
          "             live process uses, left by a process tree killed wholesale;\n"
          "             print each one's path (--dry-run: only print them)\n"
          "  version    print the version of mproc (also: --version)\n"
          "  help       print this message (also: --help, -h)\n",
          out);
}

/* 0, or 1 if stdout could not be written (mproc version >/dev/full). */
static int flush_stdout(void)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        perror("mproc: stdout");
        return 1;
    }
    return 0;
}

static void print_path(void *ctx, const char *path)
{
    (void)ctx;
    printf("%s\n", path);
}

static int cmd_clean(int argc, char **argv)
{
    unsigned flags = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--dry-run") == 0 || strcmp(argv[i], "-n") == 0) {
            flags |= MPROC_CLEAN_DRY_RUN;
        } else {
            fprintf(stderr, "mproc clean: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    int rc = mproc_clean(flags, print_path, NULL);
    if (flush_stdout())
        return 1;
    if (rc < 0) {
        fprintf(stderr, "mproc clean: %s\n", mproc_strerror(rc));
        return 1;
    }
    return 0;
}

/* Seconds (decimals allowed) to milliseconds; -1 if not a number >= 0. */
static int seconds_ms(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !(v >= 0 && v <= 86400.0 * 24)) /* NaN fails too */
        return -1;
    int ms = (int)(v * 1000 + 0.5);
    return ms == 0 && v > 0 ? 1 : ms; /* a positive time never rounds to "off" */
}

static int run_usage(const char *why, const char *arg)
{
    fprintf(stderr, "mproc run: %s%s%s\n", why, arg ? ": " : "", arg ? arg : "");
    usage(stderr);
    return 2;
}

static int cmd_run(int argc, char **argv)
{
    mproc_supervisor_opts_t o = {0};
    const char *binds[64];
    size_t nbinds = 0;
    int max_given = 0, window_given = 0;
    int i = 2;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(a, "--ready") == 0) {
            o.ready = 1;
            continue;
        }
        if (a[0] != '-')
            break; /* the command, without "--" */
        /* No value starts with '-' (a path that does: ./-name): an option
         * right after another is a missing value, not a strange one. */
        if (i + 1 >= argc || argv[i + 1][0] == '-')
            return run_usage("missing value for", a);
        const char *v = argv[++i];
        char *end;
        if (strcmp(a, "-w") == 0 || strcmp(a, "--workers") == 0) {
            long n = strtol(v, &end, 10);
            if (!*v || *end || n < 1 || n > 100000)
                return run_usage("bad worker count", v);
            o.workers = (int)n;
        } else if (strcmp(a, "--bind") == 0) {
            if (nbinds == sizeof binds / sizeof binds[0])
                return run_usage("too many --bind", NULL);
            binds[nbinds++] = v;
        } else if (strcmp(a, "--restart") == 0) {
            if (strcmp(v, "always") == 0)
                o.restart = MPROC_RESTART_ALWAYS;
            else if (strcmp(v, "on-failure") == 0)
                o.restart = MPROC_RESTART_ON_FAILURE;
            else if (strcmp(v, "never") == 0)
                o.restart = MPROC_RESTART_NEVER;
            else
                return run_usage("bad restart policy", v);
        } else if (strcmp(a, "--max-restarts") == 0) {
            long n = strtol(v, &end, 10);
            if (!*v || *end || n < 0 || n > 1000000)
                return run_usage("bad --max-restarts", v);
            o.max_restarts = (unsigned)n;
            max_given = 1;
        } else if (strcmp(a, "--restart-window") == 0) {
            if ((o.restart_window_ms = seconds_ms(v)) <= 0)
                return run_usage("bad --restart-window", v);
            window_given = 1;
        } else if (strcmp(a, "--graceful-timeout") == 0) {
            if ((o.graceful_timeout_ms = seconds_ms(v)) < 0)
                return run_usage("bad --graceful-timeout", v);
            if (!o.graceful_timeout_ms)
                o.graceful_timeout_ms = 1; /* 0 s: SIGKILL right after SIGTERM */
        } else if (strcmp(a, "--timeout") == 0) {
            if ((o.timeout_ms = seconds_ms(v)) < 0)
                return run_usage("bad --timeout", v);
        } else if (strcmp(a, "--pidfile") == 0) {
            o.pidfile = v;
        } else {
            return run_usage("unknown option", a);
        }
    }
    if (i >= argc)
        return run_usage("no command to run", NULL);
    /* The crash-loop limit: what was given, the default for the rest
     * (--max-restarts 0: the first restart is one too many). */
    if (!max_given)
        o.max_restarts = 10;
    if (!window_given)
        o.restart_window_ms = 60000;
    o.argv = argv + i;
    o.upgrade = 1; /* USR2: a new mproc takes over in place */
    o.binds = binds;
    o.nbinds = nbinds;
    int rc = mproc_supervise(&o);
    if (rc < 0) {
        fprintf(stderr, "mproc run: %s\n", mproc_strerror(rc));
        return 1;
    }
    return rc;
}

static int is_any(const char *s, const char *a, const char *b, const char *c)
{
    return strcmp(s, a) == 0 || (b && strcmp(s, b) == 0) || (c && strcmp(s, c) == 0);
}

int main(int argc, char **argv)
{
    int rc = mproc_init(&argc, &argv);
    if (rc < 0) {
        fprintf(stderr, "mproc: initialisation failed: %s\n", mproc_strerror(rc));
        return 1;
    }

    if (argc < 2) {
        usage(stdout);
        return flush_stdout();
    }

    const char *cmd = argv[1];
    if (is_any(cmd, "version", "--version", NULL)) {
        if (argc > 2) {
            fprintf(stderr, "mproc: %s takes no arguments\n", cmd);
            return 2;
        }
        printf("mproc %s\n", mproc_version());
        return flush_stdout();
    }
    if (strcmp(cmd, "clean") == 0)
        return cmd_clean(argc, argv);
    if (strcmp(cmd, "run") == 0)
        return cmd_run(argc, argv);
    if (is_any(cmd, "help", "--help", "-h")) {
        usage(stdout);
        return flush_stdout();
    }

    fprintf(stderr, "mproc: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
