/*
 * mproc.c - the mproc command-line tool.
 *
 * A thin shell over the library: each command is one library call and its
 * output. The supervisor command (run) arrives with supervisor.c.
 *
 * Exit status: 0 on success, 1 on failure, 2 on a usage error.
 */
#include <stdio.h>
#include <string.h>

#include "mproc.h"

static void usage(FILE *out)
{
    fputs("usage: mproc <command> [args...]\n"
          "\n"
          "commands:\n"
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
    if (is_any(cmd, "help", "--help", "-h")) {
        usage(stdout);
        return flush_stdout();
    }

    fprintf(stderr, "mproc: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
