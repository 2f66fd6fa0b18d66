/*
 * errors.c - mproc's error model: every call returns 0 or a negative code,
 * mproc_strerror names it, and warnings go to a log hook you install.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <mproc.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>

static void log_to_stdout(void *ctx, mproc_log_level_t level, const char *msg)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    printf("   [mproc %s] %s\n", level <= MPROC_LOG_ERROR ? names[level] : "?", msg);
    ++*(int *)ctx;
}

static int quick(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return 0;
}

static sem_t release;

static void *idle(void *unused)
{
    (void)unused;
    while (sem_wait(&release) < 0 && errno == EINTR)
        ;
    return NULL;
}

#define SHOW(call)                                                                                 \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        printf("   %-48s -> %d (%s)\n", #call, rc_, mproc_strerror(rc_));                          \
    } while (0)

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep our lines and the children's in order */

    printf("mproc's own codes:\n");
    static const struct {
        int code;
        const char *name;
    } codes[] = {
        {MPROC_ESTATE, "MPROC_ESTATE"},         {MPROC_ETHREADS, "MPROC_ETHREADS"},
        {MPROC_EBOOTSTRAP, "MPROC_EBOOTSTRAP"}, {MPROC_EENTRY, "MPROC_EENTRY"},
        {MPROC_ESERVER, "MPROC_ESERVER"},       {MPROC_EPROTO, "MPROC_EPROTO"},
        {MPROC_ESTATUS, "MPROC_ESTATUS"},       {MPROC_ENOINIT, "MPROC_ENOINIT"},
        {MPROC_EBROKEN, "MPROC_EBROKEN"},       {MPROC_ETYPE, "MPROC_ETYPE"},
        {MPROC_EWORKER, "MPROC_EWORKER"},       {MPROC_ETASK, "MPROC_ETASK"},
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        printf("   %-18s %6d  %s\n", codes[i].name, codes[i].code, mproc_strerror(codes[i].code));

    printf("bad calls return codes; nothing aborts, exits or prints:\n");
    mproc_process_t *p = NULL;
    SHOW(mproc_process_create(&p, NULL, NULL, 0, NULL));
    SHOW(mproc_process_create(&p, quick, NULL, 0, NULL));
    SHOW(mproc_process_join(p, 0));
    SHOW(mproc_process_start(p));
    SHOW(mproc_process_start(p));
    SHOW(mproc_process_join(p, 5000));
    SHOW(mproc_process_free(p));

    printf("warnings reach the log hook, if one is installed:\n");
    int warnings = 0;
    mproc_set_log(log_to_stdout, &warnings);
    pthread_t t;
    sem_init(&release, 0, 0);
    pthread_create(&t, NULL, idle, NULL); /* now this process has two threads */
    mproc_process_opts_t opts = {.method = MPROC_START_FORK};
    p = NULL;
    SHOW(mproc_process_create(&p, quick, NULL, 0, &opts));
    SHOW(mproc_process_start(p)); /* MPROC_FORK_WARN: allowed, reported */
    SHOW(mproc_process_join(p, 5000));
    mproc_process_free(p);
    sem_post(&release);
    pthread_join(t, NULL);
    mproc_set_log(NULL, NULL);
    printf("   %d warning(s) received\n", warnings);
    return 0;
}
