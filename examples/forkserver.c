/*
 * forkserver.c - the forkserver helper: started early with a preload,
 * reachable only through the socketpair it inherited, and restarted on
 * the next start after it dies.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <mproc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Built by the preload inside the helper; children forked by the helper
 * inherit it, the parent never builds it. */
static int squares[1000];
static int built_by;

static int preload(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    for (int i = 0; i < 1000; i++)
        squares[i] = i * i;
    built_by = (int)getpid();
    return 0; /* non-zero would make mproc_forkserver_start fail */
}

static int use_table(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    if (built_by)
        printf("   child %d of helper %d: table built by pid %d, squares[999] = %d\n",
               (int)getpid(), (int)getppid(), built_by, squares[999]);
    else
        printf("   child %d of helper %d: no table (this helper ran no preload)\n", (int)getpid(),
               (int)getppid());
    return 0;
}

static int linger(const void *arg, size_t len)
{
    int ms = 0;
    if (len == sizeof ms)
        memcpy(&ms, arg, sizeof ms); /* or *(const int *)arg: arg is aligned */
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return 0;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static mproc_process_t *start(mproc_entry_fn fn, int ms, int daemon)
{
    mproc_process_opts_t opts = {.method = MPROC_START_FORKSERVER, .daemon = daemon};
    mproc_process_t *p = NULL;
    int rc = mproc_process_create(&p, fn, &ms, sizeof ms, &opts);
    if (rc == 0)
        rc = mproc_process_start(p);
    if (rc < 0) {
        fprintf(stderr, "start: %s\n", mproc_strerror(rc));
        mproc_process_free(p);
        return NULL;
    }
    return p;
}

/* Join within 5 s (kill past that) and describe the outcome. */
static void finish(mproc_process_t *p, const char *what)
{
    if (!p)
        return;
    int code = 0, rc = mproc_process_join(p, 5000);
    if (rc == -ETIMEDOUT) {
        mproc_process_kill(p);
        rc = mproc_process_join(p, 5000);
    }
    if (rc == 0)
        rc = mproc_process_exitcode(p, &code);
    if (rc < 0)
        printf("   %s (pid %d): %s\n", what, (int)mproc_process_pid(p), mproc_strerror(rc));
    else
        printf("   %s (pid %d): exit code %d\n", what, (int)mproc_process_pid(p), code);
    mproc_process_free(p);
}

/* Is a Unix socket bound to a name? /proc/net/unix lists a path (or
 * @abstract name) after the inode for bound sockets only. */
static const char *socket_name(unsigned long inode)
{
    static char path[256];
    char line[512];
    FILE *f = fopen("/proc/net/unix", "re");
    const char *name = "(not a Unix socket)";
    while (f && fgets(line, sizeof line, f)) {
        unsigned long ino;
        int used = 0;
        if (sscanf(line, "%*s %*s %*s %*s %*s %*s %lu %n", &ino, &used) < 1 || ino != inode)
            continue;
        line[strcspn(line, "\n")] = '\0';
        snprintf(path, sizeof path, "%s", used ? line + used : "");
        name = path[0] ? path : "(no name: unbound, reachable only by holding it)";
        break;
    }
    if (f)
        fclose(f);
    return name;
}

static void show_helper_fds(pid_t helper)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)helper);
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[320], target[128];
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n < 0)
            continue;
        target[n] = '\0';
        unsigned long inode;
        if (sscanf(target, "socket:[%lu]", &inode) == 1)
            printf("   helper fd %s: %s %s\n", e->d_name, target, socket_name(inode));
        else
            printf("   helper fd %s: %s\n", e->d_name, target);
    }
    closedir(d);
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);         /* the helper itself is a spawn: it starts here */
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep our lines and the children's in order */

    /* Early, before threads exist and before the parent grows. */
    int rc = mproc_forkserver_start(preload, NULL, 0);
    if (rc < 0) {
        fprintf(stderr, "mproc_forkserver_start: %s\n", mproc_strerror(rc));
        return 1;
    }
    pid_t helper = mproc_forkserver_pid();
    printf("1. helper pid %d; in the parent, built_by = %d (it never ran the preload)\n",
           (int)helper, built_by);
    show_helper_fds(helper);
    finish(start(use_table, 0, 0), "child using the preloaded table");

    printf("2. the helper is killed while two of its children run\n");
    mproc_process_t *orphan = start(linger, 300, 0);
    mproc_process_t *daemon = start(linger, 30000, 1);
    /* Safe by pid: the helper is our own child and not reaped yet. */
    kill(helper, SIGKILL);
    long t0 = now_ms();
    finish(daemon, "daemon child (would sleep 30 s)");
    printf("     ... it died with the helper: joined after %ld ms\n", now_ms() - t0);
    finish(orphan, "non-daemon child (sleeps 300 ms)");
    printf("     ... it kept running as an orphan: joined after %ld ms\n", now_ms() - t0);

    printf("3. the next forkserver start restarts the helper\n");
    finish(start(use_table, 0, 0), "child of the new helper");
    printf("   new helper pid %d (was %d)\n", (int)mproc_forkserver_pid(), (int)helper);

    mproc_forkserver_stop(); /* also done at exit: the helper leaves on EOF */
    printf("4. stopped: helper pid %d\n", (int)mproc_forkserver_pid());
    return 0;
}
