/*
 * test_shm.c - shared memory segments and their arena (mproc_shm_*,
 * mproc_array_*): anonymous and named segments, names (generated, chosen,
 * refused), file mode and owner, exclusive creation, opening what is not a
 * segment, unlink semantics, the in-use lock, the arena's allocator (reuse,
 * coalescing, names, offsets, sizes), typed arrays, and segments crossing to
 * children under every start method.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mproc.h"
#include "testutil.h"

/* ------------------------------------------------------------------ helpers */

#define SHM_DIR "/dev/shm"
#define PREFIX "mproc-"

static void seg_path(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, SHM_DIR "/" PREFIX "%s", name);
}

static int path_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static int seg_exists(const char *name)
{
    char p[256];
    seg_path(name, p, sizeof p);
    return path_exists(p);
}

/* Entries in /dev/shm (not . and ..). */
static int count_shm_entries(void)
{
    DIR *d = opendir(SHM_DIR);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static unsigned char pat(size_t i, unsigned seed)
{
    return (unsigned char)((i * 2654435761u + seed * 97u + (i >> 7)) >> 3);
}

static void fill(void *p, size_t n, unsigned seed)
{
    unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        c[i] = pat(i, seed);
}

/* Index of the first byte that differs from the pattern, or -1. */
static long verify(const void *p, size_t n, unsigned seed)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != pat(i, seed))
            return (long)i;
    return -1;
}

static int all_zero(const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i])
            return 0;
    return 1;
}

static int fd_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    return fl >= 0 && (fl & FD_CLOEXEC);
}

/* 1 if some process holds a flock on the file (LOCK_EX cannot be taken). */
static int seg_in_use(const char *name)
{
    char p[256];
    seg_path(name, p, sizeof p);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = flock(fd, LOCK_EX | LOCK_NB);
    int busy = r != 0 && errno == EWOULDBLOCK;
    close(fd);
    return busy;
}

/* Write a file in /dev/shm directly (not a segment). */
static int write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = len ? tu_write_full(fd, data, len) : 0;
    close(fd);
    return rc;
}

/* Unlink a named segment through the API and close it (for cleanup). */
static void drop_named(mproc_shm_t *s)
{
    if (!s)
        return;
    TU_CHECK_OK(mproc_shm_unlink(s));
    TU_CHECK_OK(mproc_shm_close(s));
}

/* create + pass_shm(shms) + pass_fd(fds) + start, with opts {.method = m}. */
static int start_with_shm(mproc_process_t **p, mproc_start_method_t m, mproc_entry_fn fn,
                          const void *arg, size_t len, mproc_shm_t *const *shms, int nshm,
                          const int *fds, int nfds)
{
    mproc_process_opts_t o = {.method = m};
    *p = NULL;
    int rc = mproc_process_create(p, fn, arg, len, &o);
    if (!TU_CHECK_OK(rc))
        return rc;
    for (int i = 0; i < nshm && rc == 0; i++)
        rc = mproc_process_pass_shm(*p, shms[i]);
    TU_CHECK_OK(rc);
    for (int i = 0; i < nfds && rc == 0; i++)
        rc = mproc_process_pass_fd(*p, fds[i]);
    TU_CHECK_OK(rc);
    if (rc == 0)
        rc = mproc_process_start(*p);
    if (rc != 0) {
        mproc_process_free(*p);
        *p = NULL;
    }
    return rc;
}

static int run_with_shm(mproc_start_method_t m, mproc_entry_fn fn, const void *arg, size_t len,
                        mproc_shm_t *const *shms, int nshm)
{
    mproc_process_t *p;
    int rc = start_with_shm(&p, m, fn, arg, len, shms, nshm, NULL, 0);
    if (!TU_CHECK_OK(rc))
        return TU_NO_CODE;
    return tu_join_free(p);
}

/* ------------------------------------------------------------------ anonymous */

static void test_anon_create_close(void)
{
    int before = count_shm_entries();
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&s, 4096));
    TU_REQUIRE(s != NULL);
    TU_CHECK(mproc_shm_name(s) == NULL);
    TU_CHECK(mproc_shm_size(s) >= 4096);
    int fd = mproc_shm_fd(s);
    TU_CHECK(fd > 2);
    TU_CHECK(fd_cloexec(fd));
    /* an anonymous segment is nowhere in /dev/shm */
    TU_CHECK_EQ_INT(count_shm_entries(), before);
    TU_CHECK_EQ_INT(mproc_shm_unlink(s), -EINVAL);

    void *p = NULL;
    TU_CHECK_OK(mproc_shm_alloc(s, 1000, NULL, &p));
    TU_CHECK(p != NULL);
    if (p) {
        TU_CHECK(all_zero(p, 1000));
        fill(p, 1000, 1);
        TU_CHECK_EQ_INT(verify(p, 1000, 1), -1);
    }
    TU_CHECK_OK(mproc_shm_close(s));
    TU_CHECK(!tu_fd_is_open(fd));
    TU_CHECK_OK(mproc_shm_close(NULL));

    /* several at once are independent */
    mproc_shm_t *a = NULL, *b = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&a, 8192));
    TU_REQUIRE_OK(mproc_shm_create(&b, 8192));
    void *pa = NULL, *pb = NULL;
    TU_CHECK_OK(mproc_shm_alloc(a, 512, "x", &pa));
    TU_CHECK_OK(mproc_shm_alloc(b, 512, "x", &pb)); /* same name, other arena */
    if (pa && pb) {
        TU_CHECK(pa != pb);
        fill(pa, 512, 2);
        TU_CHECK(all_zero(pb, 512));
    }
    TU_CHECK(mproc_shm_fd(a) != mproc_shm_fd(b));
    TU_CHECK_OK(mproc_shm_close(a));
    TU_CHECK_OK(mproc_shm_close(b));
}

static void test_size_rounding(void)
{
    static const size_t sizes[] = {1, 63, 64, 100, 4095, 4096, 4097, 65539, 1u << 20, 3u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        tu_context("size=%zu", sizes[i]);
        mproc_shm_t *s = NULL;
        TU_REQUIRE_OK(mproc_shm_create(&s, sizes[i]));
        size_t got = mproc_shm_size(s);
        TU_CHECK(got >= sizes[i]);
        TU_CHECK(got < sizes[i] + (1u << 20)); /* rounded, not inflated */
        TU_CHECK_OK(mproc_shm_close(s));

        TU_REQUIRE_OK(mproc_shm_create_named(&s, sizes[i], NULL));
        got = mproc_shm_size(s);
        TU_CHECK(got >= sizes[i]);
        /* another handle reports the same size */
        mproc_shm_t *o = NULL;
        TU_CHECK_OK(mproc_shm_open(&o, mproc_shm_name(s)));
        if (o) {
            TU_CHECK_EQ_INT(mproc_shm_size(o), got);
            TU_CHECK_OK(mproc_shm_close(o));
        }
        /* the file holds the arena (and a header page) */
        char path[256];
        seg_path(mproc_shm_name(s), path, sizeof path);
        struct stat st;
        TU_CHECK_EQ_INT(stat(path, &st), 0);
        TU_CHECK((size_t)st.st_size >= got);
        drop_named(s);
    }
}

/* ------------------------------------------------------------------ named */

static void check_file_attrs(const char *name, size_t size)
{
    char path[256];
    seg_path(name, path, sizeof path);
    struct stat st;
    if (!TU_CHECK_EQ_INT(lstat(path, &st), 0))
        return;
    TU_CHECK(S_ISREG(st.st_mode));
    TU_CHECK_EQ_INT(st.st_mode & 07777, 0600);
    TU_CHECK_EQ_INT(st.st_uid, geteuid());
    TU_CHECK_EQ_INT(st.st_gid, getegid());
    TU_CHECK_EQ_INT(st.st_nlink, 1);
    TU_CHECK((size_t)st.st_size >= size);
}

static void test_named_create_close(void)
{
    /* umask 0: the mode must not come from the umask */
    mode_t old = umask(0);
    mproc_shm_t *s = NULL;
    int rc = mproc_shm_create_named(&s, 4096, "t-basic");
    umask(old);
    TU_REQUIRE_OK(rc);
    TU_CHECK_EQ_STR(mproc_shm_name(s), "t-basic");
    TU_CHECK(mproc_shm_size(s) >= 4096);
    TU_CHECK(fd_cloexec(mproc_shm_fd(s)));
    check_file_attrs("t-basic", 4096);
    /* in use: this process holds a shared lock on it */
    TU_CHECK_EQ_INT(seg_in_use("t-basic"), 1);

    /* close without unlink: the name stays, and nobody uses it any more */
    TU_CHECK_OK(mproc_shm_close(s));
    TU_CHECK(seg_exists("t-basic"));
    TU_CHECK_EQ_INT(seg_in_use("t-basic"), 0);

    /* open it again: it is the same segment */
    s = NULL;
    TU_REQUIRE_OK(mproc_shm_open(&s, "t-basic"));
    TU_CHECK_EQ_STR(mproc_shm_name(s), "t-basic");
    TU_CHECK(fd_cloexec(mproc_shm_fd(s)));
    TU_CHECK_EQ_INT(seg_in_use("t-basic"), 1);
    TU_CHECK_OK(mproc_shm_unlink(s));
    TU_CHECK(!seg_exists("t-basic"));
    TU_CHECK_OK(mproc_shm_close(s));

    /* a generated name, with umask 077 this time */
    old = umask(077);
    s = NULL;
    rc = mproc_shm_create_named(&s, 100, NULL);
    umask(old);
    TU_REQUIRE_OK(rc);
    const char *name = mproc_shm_name(s);
    TU_REQUIRE(name != NULL);
    check_file_attrs(name, 100);
    TU_CHECK_EQ_INT(seg_in_use(name), 1);
    char copy[MPROC_NAME_MAX + 1];
    snprintf(copy, sizeof copy, "%s", name);
    drop_named(s);
    TU_CHECK(!seg_exists(copy));
}

static int name_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

#define NGEN 100

static void test_generated_names(void)
{
    static char names[NGEN][MPROC_NAME_MAX + 2];
    mproc_shm_t *segs[NGEN] = {0};
    int n = 0;
    for (; n < NGEN; n++) {
        int rc = mproc_shm_create_named(&segs[n], 64, NULL);
        if (!TU_CHECK_OK(rc))
            break;
        const char *nm = mproc_shm_name(segs[n]);
        if (!TU_CHECK(nm != NULL))
            break;
        size_t len = strlen(nm);
        TU_CHECK(len <= MPROC_NAME_MAX);
        /* 96 random bits need at least 16 characters of a 65-letter alphabet */
        TU_CHECK(len >= 16);
        TU_CHECK(nm[0] != '.');
        for (size_t k = 0; k < len; k++)
            if (!name_char_ok(nm[k]))
                tu_fail(__FILE__, __LINE__, "generated name '%s' has a bad character", nm);
        snprintf(names[n], sizeof names[n], "%s", nm);
        TU_CHECK(seg_exists(nm));
    }
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (strcmp(names[i], names[j]) == 0)
                tu_fail(__FILE__, __LINE__, "generated names %d and %d are both '%s'", i, j,
                        names[i]);
    /* not a counter: consecutive names differ in many places */
    for (int i = 1; i < n; i++) {
        size_t la = strlen(names[i - 1]), lb = strlen(names[i]);
        size_t l = la < lb ? la : lb, diff = la > lb ? la - lb : lb - la;
        for (size_t k = 0; k < l; k++)
            diff += names[i - 1][k] != names[i][k];
        if (diff < 6)
            tu_fail(__FILE__, __LINE__, "generated names look sequential: '%s' then '%s'",
                    names[i - 1], names[i]);
    }
    if (n > 0)
        printf("  (a generated name: '%s')\n", names[0]);
    for (int i = 0; i < n; i++)
        drop_named(segs[i]);
}

static void test_exclusive(void)
{
    mproc_shm_t *a = NULL, *b = NULL;
    TU_REQUIRE_OK(mproc_shm_create_named(&a, 4096, "t-excl"));
    void *p = NULL;
    TU_CHECK_OK(mproc_shm_alloc(a, 256, "mark", &p));
    if (p)
        fill(p, 256, 7);
    TU_CHECK_EQ_INT(mproc_shm_create_named(&b, 4096, "t-excl"), -EEXIST);
    TU_CHECK_EQ_INT(mproc_shm_create_named(&b, 1 << 20, "t-excl"), -EEXIST);
    /* the first is intact */
    TU_REQUIRE_OK(mproc_shm_open(&b, "t-excl"));
    void *q = NULL;
    TU_CHECK_OK(mproc_shm_find(b, "mark", MPROC_OBJ_BYTES, &q));
    if (q)
        TU_CHECK_EQ_INT(verify(q, 256, 7), -1);
    TU_CHECK_EQ_INT(mproc_shm_size(b), mproc_shm_size(a));
    TU_CHECK_OK(mproc_shm_close(b));
    /* an existing non-segment file also blocks the name */
    TU_CHECK_OK(write_file(SHM_DIR "/" PREFIX "t-excl2", "junk", 4));
    b = NULL;
    TU_CHECK_EQ_INT(mproc_shm_create_named(&b, 4096, "t-excl2"), -EEXIST);
    if (b)
        mproc_shm_close(b);
    unlink(SHM_DIR "/" PREFIX "t-excl2");
    drop_named(a);
}

/* Racing creators of the same names: exactly one creates each, and every
 * loser opens a fully initialised segment at once (never a half-made one). */
#define RACERS 4
#define RACE_NAMES 25

typedef struct {
    atomic_int created[RACE_NAMES];
    atomic_int opened[RACE_NAMES];
    atomic_int errors;
    atomic_int first_error;
} race_t;

typedef struct {
    race_t *r;
    int go_r, go_w;     /* EOF on go_r: start */
    int done_w, done_r; /* one byte on done_w: finished */
    int rel_r, rel_w;   /* EOF on rel_r: close everything and exit */
    int idx;
} racer_ctx;

static int racer(void *vctx)
{
    racer_ctx *c = vctx;
    char b;
    close(c->go_w);
    close(c->done_r);
    close(c->rel_w);
    if (read(c->go_r, &b, 1) != 0) /* wait for EOF: everyone released at once */
        return 3;
    mproc_shm_t *held[RACE_NAMES] = {0};
    for (int i = 0; i < RACE_NAMES; i++) {
        char name[32];
        snprintf(name, sizeof name, "t-race-%d", i);
        mproc_shm_t *s = NULL;
        int rc = mproc_shm_create_named(&s, 4096 * (size_t)(c->idx + 1), name);
        if (rc == 0) {
            atomic_fetch_add(&c->r->created[i], 1);
            void *p;
            if (mproc_shm_alloc(s, 64, "owner", &p) == 0)
                *(int *)p = c->idx + 1;
            held[i] = s;
            continue;
        }
        if (rc != -EEXIST) {
            atomic_fetch_add(&c->r->errors, 1);
            atomic_store(&c->r->first_error, rc);
            continue;
        }
        rc = mproc_shm_open(&s, name);
        if (rc != 0) {
            atomic_fetch_add(&c->r->errors, 1);
            atomic_store(&c->r->first_error, rc);
            continue;
        }
        atomic_fetch_add(&c->r->opened[i], 1);
        held[i] = s;
    }
    /* hold everything until the parent has looked (a creator that exits
     * without unlinking has its segments unlinked by the tracker) */
    if (tu_write_full(c->done_w, "d", 1) != 0)
        return 4;
    if (read(c->rel_r, &b, 1) != 0)
        return 5;
    for (int i = 0; i < RACE_NAMES; i++)
        mproc_shm_close(held[i]);
    mproc_tracker_stop(TU_T_MS);
    return 0;
}

static void test_create_race(void)
{
    mproc_shm_t *board = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&board, sizeof(race_t) + 4096));
    race_t *r = NULL;
    TU_REQUIRE_OK(mproc_shm_alloc(board, sizeof *r, NULL, (void **)&r));
    TU_REQUIRE_OK(mproc_tracker_start()); /* shared by the racers: no start-up in the race */
    int go[2], done[2], rel[2];
    TU_REQUIRE(tu_pipe(go) == 0);
    TU_REQUIRE(tu_pipe(done) == 0);
    TU_REQUIRE(tu_pipe(rel) == 0);
    pid_t pids[RACERS];
    int pidfds[RACERS];
    racer_ctx ctx[RACERS];
    int started = 0;
    for (int i = 0; i < RACERS; i++) {
        ctx[i] = (racer_ctx){r, go[0], go[1], done[1], done[0], rel[0], rel[1], i};
        pids[i] = tu_fork(racer, &ctx[i], &pidfds[i]);
        if (pids[i] < 0)
            break;
        started++;
    }
    close(go[0]);
    close(done[1]);
    close(rel[0]);
    close(go[1]); /* go */
    char buf[RACERS];
    TU_CHECK_EQ_INT(tu_read_full(done[0], buf, (size_t)started, TU_T_MS), started);
    close(done[0]);
    TU_CHECK_EQ_INT(atomic_load(&r->errors), 0);
    if (atomic_load(&r->errors))
        printf("  first error %d (%s)\n", atomic_load(&r->first_error),
               mproc_strerror(atomic_load(&r->first_error)));
    mproc_shm_t *mine[RACE_NAMES] = {0};
    for (int i = 0; i < RACE_NAMES; i++) {
        tu_context("name t-race-%d", i);
        TU_CHECK_EQ_INT(atomic_load(&r->created[i]), 1);
        TU_CHECK_EQ_INT(atomic_load(&r->opened[i]), started - 1);
        char name[32];
        snprintf(name, sizeof name, "t-race-%d", i);
        TU_CHECK_OK(mproc_shm_open(&mine[i], name));
    }
    tu_context(NULL);
    close(rel[1]); /* the racers close theirs and exit */
    for (int i = 0; i < started; i++) {
        int st = -1;
        TU_CHECK_OK(tu_wait_child(pids[i], pidfds[i], TU_T_MS, &st));
        TU_CHECK_EQ_INT(st, 0);
    }
    for (int i = 0; i < RACE_NAMES; i++) {
        if (!mine[i])
            continue;
        tu_context("name t-race-%d", i);
        int *owner = NULL;
        TU_CHECK_OK(mproc_shm_find(mine[i], "owner", MPROC_OBJ_BYTES, (void **)&owner));
        if (owner) {
            TU_CHECK(*owner >= 1 && *owner <= RACERS);
            if (*owner >= 1 && *owner <= RACERS)
                TU_CHECK(mproc_shm_size(mine[i]) >= 4096 * (size_t)*owner);
        }
        drop_named(mine[i]);
    }
    tu_context(NULL);
    TU_CHECK_OK(mproc_shm_close(board));
    TU_CHECK_OK(mproc_tracker_stop(TU_T_MS));
}

/* A file named like a segment that is not one. */
static void expect_etype(const char *name, const void *data, size_t len)
{
    char path[256];
    seg_path(name, path, sizeof path);
    tu_context("bogus file %s (%zu bytes)", name, len);
    if (!TU_CHECK_OK(write_file(path, data, len)))
        return;
    mproc_shm_t *s = NULL;
    TU_CHECK_EQ_INT(mproc_shm_open(&s, name), MPROC_ETYPE);
    TU_CHECK(s == NULL);
    if (s)
        mproc_shm_close(s);
    /* the failed open neither removed nor changed it */
    struct stat st;
    TU_CHECK_EQ_INT(stat(path, &st), 0);
    TU_CHECK_EQ_INT(st.st_size, (long long)len);
    TU_CHECK_EQ_INT(seg_in_use(name), 0);
    unlink(path);
    tu_context(NULL);
}

static void test_open_errors(void)
{
    mproc_shm_t *s = NULL;
    TU_CHECK_EQ_INT(mproc_shm_open(&s, "t-missing"), -ENOENT);
    TU_CHECK(s == NULL);

    static const char junk[] = "this is not a shared memory segment\n";
    expect_etype("bogus", junk, sizeof junk - 1);
    expect_etype("bogus-empty", "", 0);

    /* a plausible size (header page plus an arena), bad contents */
    size_t big = 4096 * 4;
    unsigned char *buf = malloc(big);
    TU_REQUIRE(buf != NULL);
    memset(buf, 0, big);
    expect_etype("bogus-zero", buf, big);
    memset(buf, 0xA5, big);
    expect_etype("bogus-a5", buf, big);

    /* a real segment's header with its first bytes (the magic) damaged */
    mproc_shm_t *real = NULL;
    if (TU_CHECK_OK(mproc_shm_create_named(&real, 8192, "t-real"))) {
        char path[256];
        seg_path("t-real", path, sizeof path);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (TU_CHECK(fd >= 0) && TU_CHECK_EQ_INT(fstat(fd, &st), 0)) {
            size_t n = (size_t)st.st_size < big ? (size_t)st.st_size : big;
            ssize_t got = pread(fd, buf, n, 0);
            TU_CHECK_EQ_INT(got, (long long)n);
            if (got == (ssize_t)n) {
                for (int i = 0; i < 8; i++)
                    buf[i] ^= 0x5a;
                expect_etype("bogus-magic", buf, n);
            }
        }
        if (fd >= 0)
            close(fd);
        drop_named(real);
    }
    free(buf);

    /* a directory and a symlink named like a segment */
    TU_CHECK_EQ_INT(mkdir(SHM_DIR "/" PREFIX "t-dir", 0700), 0);
    s = NULL;
    int rc = mproc_shm_open(&s, "t-dir");
    TU_CHECK(rc < 0);
    if (s)
        mproc_shm_close(s);
    rmdir(SHM_DIR "/" PREFIX "t-dir");

    /* another user's segment (root can make one): -EPERM */
    if (geteuid() == 0) {
        mproc_shm_t *o = NULL;
        if (TU_CHECK_OK(mproc_shm_create_named(&o, 4096, "t-other"))) {
            char path[256];
            seg_path("t-other", path, sizeof path);
            TU_CHECK_EQ_INT(chown(path, 65534, 65534), 0);
            s = NULL;
            TU_CHECK_EQ_INT(mproc_shm_open(&s, "t-other"), -EPERM);
            if (s)
                mproc_shm_close(s);
            drop_named(o);
        }
    }
}

static void test_bad_names(void)
{
    char long64[MPROC_NAME_MAX + 2], long63[MPROC_NAME_MAX + 1];
    memset(long64, 'n', MPROC_NAME_MAX + 1);
    long64[MPROC_NAME_MAX + 1] = '\0';
    memset(long63, 'n', MPROC_NAME_MAX);
    long63[MPROC_NAME_MAX] = '\0';
    const char *bad[] = {"",    long64, "a/b",         "/abs", ".hidden", ".",     "..",
                         "a b", "a\nb", "caf\xc3\xa9", "a*",   "a:b",     "tab\t", "../x"};
    int before = count_shm_entries();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tu_context("name #%zu '%s'", i, bad[i]);
        mproc_shm_t *s = NULL;
        TU_CHECK_EQ_INT(mproc_shm_create_named(&s, 4096, bad[i]), -EINVAL);
        TU_CHECK(s == NULL);
        if (s)
            drop_named(s);
        s = NULL;
        TU_CHECK_EQ_INT(mproc_shm_open(&s, bad[i]), -EINVAL);
        if (s)
            mproc_shm_close(s);
    }
    tu_context(NULL);
    TU_CHECK_EQ_INT(count_shm_entries(), before);

    /* the longest name and every allowed character are fine */
    const char *good[] = {long63, "Az09._-", "a.b", "x-", "_"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        tu_context("name '%s'", good[i]);
        mproc_shm_t *s = NULL;
        if (!TU_CHECK_OK(mproc_shm_create_named(&s, 4096, good[i])))
            continue;
        TU_CHECK_EQ_STR(mproc_shm_name(s), good[i]);
        TU_CHECK(seg_exists(good[i]));
        mproc_shm_t *o = NULL;
        TU_CHECK_OK(mproc_shm_open(&o, good[i]));
        if (o)
            mproc_shm_close(o);
        drop_named(s);
    }
}

static void test_bad_args(void)
{
    mproc_shm_t *s = NULL;
    TU_CHECK_EQ_INT(mproc_shm_create(&s, 0), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_create_named(&s, 0, "t-zero"), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_create_named(&s, 0, NULL), -EINVAL);
    TU_CHECK(s == NULL);
    TU_CHECK(!seg_exists("t-zero"));
    TU_CHECK_EQ_INT(mproc_shm_create(NULL, 4096), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_create_named(NULL, 4096, "t-null"), -EINVAL);
    TU_CHECK(!seg_exists("t-null"));
    TU_CHECK_EQ_INT(mproc_shm_open(NULL, "t-null"), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_open(&s, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_unlink(NULL), -EINVAL);
    mproc_shm_ref_t ref;
    TU_CHECK_EQ_INT(mproc_shm_ref(NULL, &ref), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_attach(&s, NULL), -EINVAL);
    void *p = NULL;
    TU_CHECK_EQ_INT(mproc_shm_alloc(NULL, 64, NULL, &p), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_free(NULL, &ref), -EINVAL);

    TU_REQUIRE_OK(mproc_shm_create(&s, 4096));
    TU_CHECK_EQ_INT(mproc_shm_ref(s, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_attach(NULL, &ref), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_alloc(s, 0, NULL, &p), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_alloc(s, 0, "zero", &p), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_alloc(s, 64, NULL, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_alloc(s, 64, "", &p), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_alloc(s, 64, ".x", &p), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_alloc(s, 64, "a/b", &p), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_find(s, NULL, MPROC_OBJ_ANY, &p), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_find(s, "x", MPROC_OBJ_ANY, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_free(s, NULL), -EINVAL);
    uint64_t off;
    TU_CHECK_EQ_INT(mproc_shm_offset(s, NULL, &off), -EINVAL);
    TU_CHECK_EQ_INT(mproc_array_create(s, "arr", MPROC_INT32, 0, &p), -EINVAL);
    TU_CHECK_EQ_INT(mproc_array_create(s, "arr", (mproc_ctype_t)0, 4, &p), -EINVAL);
    TU_CHECK_EQ_INT(mproc_array_create(s, "arr", (mproc_ctype_t)99, 4, &p), -EINVAL);
    TU_CHECK_EQ_INT(mproc_array_create(s, "arr", MPROC_INT32, 4, NULL), -EINVAL);
    TU_CHECK_EQ_INT(mproc_array_open(s, "arr", MPROC_INT32, &p, NULL), -ENOENT);
    TU_CHECK_EQ_INT(mproc_array_open(s, NULL, MPROC_INT32, &p, NULL), -EINVAL);
    /* nothing of the refused calls is left in the arena: it is still empty */
    size_t big = mproc_shm_size(s) - MPROC_SHM_OBJECT_OVERHEAD;
    TU_CHECK_OK(mproc_shm_alloc(s, big, NULL, &p));
    TU_CHECK_OK(mproc_shm_close(s));
}

static void test_unlink_keeps_mapping(void)
{
    mproc_shm_t *a = NULL, *b = NULL;
    TU_REQUIRE_OK(mproc_shm_create_named(&a, 8192, "t-unl"));
    void *pa = NULL;
    TU_REQUIRE_OK(mproc_shm_alloc(a, 1024, "blk", &pa));
    fill(pa, 1024, 3);
    TU_REQUIRE_OK(mproc_shm_open(&b, "t-unl"));
    void *pb = NULL;
    TU_CHECK_OK(mproc_shm_find(b, "blk", MPROC_OBJ_BYTES, &pb));

    TU_CHECK_OK(mproc_shm_unlink(a));
    TU_CHECK(!seg_exists("t-unl"));
    mproc_shm_t *c = NULL;
    TU_CHECK_EQ_INT(mproc_shm_open(&c, "t-unl"), -ENOENT);
    TU_CHECK_EQ_INT(mproc_shm_unlink(a), -ENOENT);
    TU_CHECK_EQ_INT(mproc_shm_unlink(b), -ENOENT);

    /* both mappings still work, and still share memory */
    TU_CHECK_EQ_INT(verify(pa, 1024, 3), -1);
    if (pb) {
        TU_CHECK_EQ_INT(verify(pb, 1024, 3), -1);
        fill(pa, 1024, 4);
        TU_CHECK_EQ_INT(verify(pb, 1024, 4), -1);
    }
    void *more = NULL;
    TU_CHECK_OK(mproc_shm_alloc(b, 512, "more", &more));
    void *seen = NULL;
    TU_CHECK_OK(mproc_shm_find(a, "more", MPROC_OBJ_BYTES, &seen));
    TU_CHECK(seen != NULL);
    TU_CHECK_OK(mproc_shm_close(a));
    if (pb)
        TU_CHECK_EQ_INT(verify(pb, 1024, 4), -1);

    /* the name is free again: a new, different segment */
    TU_CHECK_OK(mproc_shm_create_named(&c, 4096, "t-unl"));
    if (c) {
        void *x = NULL;
        TU_CHECK_EQ_INT(mproc_shm_find(c, "blk", MPROC_OBJ_ANY, &x), -ENOENT);
        drop_named(c);
    }
    TU_CHECK_OK(mproc_shm_close(b));
}

static void test_two_handles_in_use_lock(void)
{
    mproc_shm_t *a = NULL, *b = NULL;
    TU_REQUIRE_OK(mproc_shm_create_named(&a, 4096, "t-two"));
    TU_REQUIRE_OK(mproc_shm_open(&b, "t-two"));
    TU_CHECK(a != b);
    int *x = NULL, *y = NULL;
    TU_CHECK_OK(mproc_shm_alloc(a, sizeof *x, "x", (void **)&x));
    TU_CHECK_OK(mproc_shm_find(b, "x", MPROC_OBJ_BYTES, (void **)&y));
    if (x && y) {
        *x = 12345;
        TU_CHECK_EQ_INT(*y, 12345);
    }
    TU_CHECK_EQ_INT(seg_in_use("t-two"), 1);
    TU_CHECK_OK(mproc_shm_close(a));
    TU_CHECK_EQ_INT(seg_in_use("t-two"), 1); /* b still uses it */
    if (y)
        TU_CHECK_EQ_INT(*y, 12345);
    TU_CHECK_OK(mproc_shm_unlink(b));
    TU_CHECK_OK(mproc_shm_close(b));
}

/* ------------------------------------------------------------------ arena */

static void test_arena_alloc_free_reuse(void)
{
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&s, 64 * 1024));
    size_t total = mproc_shm_size(s);

    /* alignment, zeroed, usable to its last byte, distinct */
    static const size_t sizes[] = {1, 7, 64, 65, 100, 1000, 4096, 5000};
    void *ptrs[sizeof sizes / sizeof sizes[0]] = {0};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        tu_context("size %zu", sizes[i]);
        TU_CHECK_OK(mproc_shm_alloc(s, sizes[i], NULL, &ptrs[i]));
        if (!ptrs[i])
            continue;
        TU_CHECK_EQ_INT((uintptr_t)ptrs[i] % 64, 0);
        TU_CHECK(all_zero(ptrs[i], sizes[i]));
        TU_CHECK(mproc_shm_object_size(s, ptrs[i]) >= sizes[i]);
        fill(ptrs[i], sizes[i], (unsigned)i + 10);
    }
    tu_context(NULL);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (ptrs[i])
            TU_CHECK_EQ_INT(verify(ptrs[i], sizes[i], (unsigned)i + 10), -1);

    /* freed memory comes back, zeroed */
    void *p = ptrs[5], *q = NULL;
    TU_CHECK_OK(mproc_shm_free(s, p));
    TU_CHECK_OK(mproc_shm_alloc(s, 1000, NULL, &q));
    if (q) {
        TU_CHECK(q == p); /* the hole it left is the one that fits */
        TU_CHECK(all_zero(q, 1000));
    }
    /* double free and foreign pointers are refused */
    int local = 0;
    TU_CHECK_OK(mproc_shm_free(s, q));
    TU_CHECK_EQ_INT(mproc_shm_free(s, q), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_free(s, &local), -EINVAL);
    if (ptrs[6])
        TU_CHECK_EQ_INT(mproc_shm_free(s, (char *)ptrs[6] + 64), -EINVAL);
    mproc_shm_t *other = NULL;
    TU_CHECK_OK(mproc_shm_create(&other, 4096));
    if (other && ptrs[0]) {
        TU_CHECK_EQ_INT(mproc_shm_free(other, ptrs[0]), -EINVAL);
        TU_CHECK_EQ_INT(mproc_shm_object_size(other, ptrs[0]), 0);
        uint64_t off;
        TU_CHECK_EQ_INT(mproc_shm_offset(other, ptrs[0], &off), -EINVAL);
    }
    mproc_shm_close(other);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (ptrs[i] && i != 5)
            TU_CHECK_OK(mproc_shm_free(s, ptrs[i]));

    /* too big, or absurd */
    TU_CHECK_EQ_INT(mproc_shm_alloc(s, total + 1, NULL, &q), -ENOMEM);
    int rc = mproc_shm_alloc(s, SIZE_MAX, NULL, &q);
    TU_CHECK(rc == -ENOMEM || rc == -EINVAL);
    rc = mproc_shm_alloc(s, SIZE_MAX - 63, NULL, &q);
    TU_CHECK(rc == -ENOMEM || rc == -EINVAL);

    /* the whole arena as one object: everything freed above coalesced */
    void *whole = NULL;
    TU_CHECK_OK(mproc_shm_alloc(s, total - MPROC_SHM_OBJECT_OVERHEAD, NULL, &whole));
    if (whole) {
        TU_CHECK(all_zero(whole, total - MPROC_SHM_OBJECT_OVERHEAD));
        fill(whole, total - MPROC_SHM_OBJECT_OVERHEAD, 99);
        TU_CHECK_EQ_INT(mproc_shm_alloc(s, 1, NULL, &q), -ENOMEM);
        TU_CHECK_OK(mproc_shm_free(s, whole));
        whole = NULL;
        TU_CHECK_OK(mproc_shm_alloc(s, total - MPROC_SHM_OBJECT_OVERHEAD, NULL, &whole));
        if (whole)
            TU_CHECK(all_zero(whole, total - MPROC_SHM_OBJECT_OVERHEAD));
    }
    TU_CHECK_OK(mproc_shm_close(s));
}

/* Fill the arena, free in a scattered order, check it all coalesces. */
#define FILL_K 40
#define FILL_OBJ 192

static int fill_arena(mproc_shm_t *s, void **objs, int cap)
{
    int n = 0;
    for (;;) {
        void *p = NULL;
        int rc = mproc_shm_alloc(s, FILL_OBJ, NULL, &p);
        if (rc == -ENOMEM)
            break;
        if (!TU_CHECK_OK(rc))
            break;
        if (n == cap) {
            tu_fail(__FILE__, __LINE__, "more than %d objects fit", cap);
            mproc_shm_free(s, p);
            break;
        }
        memset(p, n & 0xff, FILL_OBJ);
        objs[n++] = p;
    }
    return n;
}

static void test_arena_fill_coalesce(void)
{
    /* sized by the documented rule: FILL_K objects plus overhead each */
    mproc_shm_t *s = NULL;
    size_t asked = FILL_K * (size_t)(FILL_OBJ + MPROC_SHM_OBJECT_OVERHEAD);
    TU_REQUIRE_OK(mproc_shm_create(&s, asked));
    size_t total = mproc_shm_size(s);
    enum { CAP = 4096 };
    void **objs = calloc(CAP, sizeof *objs);
    TU_REQUIRE(objs != NULL);
    int n = fill_arena(s, objs, CAP);
    TU_CHECK(n >= FILL_K);
    /* objects do not overlap */
    for (int i = 0; i < n; i++) {
        const unsigned char *c = objs[i];
        for (int k = 0; k < FILL_OBJ; k++)
            if (c[k] != (unsigned char)(i & 0xff)) {
                tu_fail(__FILE__, __LINE__, "object %d overwritten at byte %d", i, k);
                break;
            }
    }
    /* one freed in the middle: exactly that room comes back */
    if (n > 2) {
        void *mid = objs[n / 2];
        TU_CHECK_OK(mproc_shm_free(s, mid));
        void *again = NULL;
        TU_CHECK_OK(mproc_shm_alloc(s, FILL_OBJ, NULL, &again));
        TU_CHECK(again == mid);
        void *none = NULL;
        TU_CHECK_EQ_INT(mproc_shm_alloc(s, FILL_OBJ, NULL, &none), -ENOMEM);
        objs[n / 2] = again;
    }
    /* two adjacent freed: a block of twice the size fits there */
    if (n > 4) {
        TU_CHECK_OK(mproc_shm_free(s, objs[1]));
        TU_CHECK_OK(mproc_shm_free(s, objs[2]));
        void *two = NULL;
        TU_CHECK_OK(mproc_shm_alloc(s, 2 * FILL_OBJ, NULL, &two));
        objs[1] = two;
        objs[2] = NULL;
    }
    /* free odd ones first, then even ones (both neighbours merge) */
    for (int i = 1; i < n; i += 2)
        if (objs[i])
            TU_CHECK_OK(mproc_shm_free(s, objs[i]));
    for (int i = 0; i < n; i += 2)
        if (objs[i])
            TU_CHECK_OK(mproc_shm_free(s, objs[i]));
    void *big = NULL;
    TU_CHECK_OK(mproc_shm_alloc(s, total - MPROC_SHM_OBJECT_OVERHEAD, NULL, &big));
    if (big)
        TU_CHECK_OK(mproc_shm_free(s, big));
    /* and the same number fits again: no bookkeeping was lost */
    int n2 = fill_arena(s, objs, CAP);
    TU_CHECK_EQ_INT(n2, n);
    for (int i = n2 - 1; i >= 0; i--)
        TU_CHECK_OK(mproc_shm_free(s, objs[i]));
    big = NULL;
    TU_CHECK_OK(mproc_shm_alloc(s, total - MPROC_SHM_OBJECT_OVERHEAD, NULL, &big));
    free(objs);
    TU_CHECK_OK(mproc_shm_close(s));
}

static void test_arena_names(void)
{
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&s, 32 * 1024));
    void *a = NULL, *b = NULL, *f = NULL;
    TU_REQUIRE_OK(mproc_shm_alloc(s, 100, "alpha", &a));
    TU_CHECK_OK(mproc_shm_alloc(s, 200, "beta", &b));
    TU_CHECK_OK(mproc_shm_find(s, "alpha", MPROC_OBJ_BYTES, &f));
    TU_CHECK(f == a);
    f = NULL;
    TU_CHECK_OK(mproc_shm_find(s, "alpha", MPROC_OBJ_ANY, &f));
    TU_CHECK(f == a);
    f = NULL;
    TU_CHECK_OK(mproc_shm_find(s, "beta", MPROC_OBJ_BYTES, &f));
    TU_CHECK(f == b);
    void *d = NULL;
    TU_CHECK_EQ_INT(mproc_shm_alloc(s, 100, "alpha", &d), -EEXIST);
    TU_CHECK_EQ_INT(mproc_shm_alloc(s, 5000, "alpha", &d), -EEXIST);
    TU_CHECK_EQ_INT(mproc_array_create(s, "alpha", MPROC_INT32, 4, &d), -EEXIST);
    TU_CHECK_EQ_INT(mproc_shm_find(s, "alpha", MPROC_OBJ_LOCK, &f), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_shm_find(s, "alpha", MPROC_OBJ_ARRAY, &f), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_array_open(s, "alpha", MPROC_INT32, &f, NULL), MPROC_ETYPE);
    TU_CHECK_EQ_INT(mproc_shm_find(s, "gamma", MPROC_OBJ_ANY, &f), -ENOENT);
    TU_CHECK_EQ_INT(mproc_shm_find(s, "alph", MPROC_OBJ_ANY, &f), -ENOENT);
    TU_CHECK_EQ_INT(mproc_shm_find(s, "alphax", MPROC_OBJ_ANY, &f), -ENOENT);

    /* freed: the name is gone and can be used again */
    TU_CHECK_OK(mproc_shm_free(s, a));
    TU_CHECK_EQ_INT(mproc_shm_find(s, "alpha", MPROC_OBJ_ANY, &f), -ENOENT);
    void *a2 = NULL;
    TU_CHECK_OK(mproc_shm_alloc(s, 300, "alpha", &a2));
    f = NULL;
    TU_CHECK_OK(mproc_shm_find(s, "alpha", MPROC_OBJ_BYTES, &f));
    TU_CHECK(f == a2);

    /* name length limits; unnamed objects are not found by any name */
    char n63[MPROC_NAME_MAX + 1], n64[MPROC_NAME_MAX + 2];
    memset(n63, 'q', MPROC_NAME_MAX);
    n63[MPROC_NAME_MAX] = 0;
    memset(n64, 'q', MPROC_NAME_MAX + 1);
    n64[MPROC_NAME_MAX + 1] = 0;
    void *l = NULL;
    TU_CHECK_OK(mproc_shm_alloc(s, 64, n63, &l));
    f = NULL;
    TU_CHECK_OK(mproc_shm_find(s, n63, MPROC_OBJ_ANY, &f));
    TU_CHECK(f == l);
    TU_CHECK_EQ_INT(mproc_shm_alloc(s, 64, n64, &d), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_find(s, n64, MPROC_OBJ_ANY, &f), -EINVAL);

    /* many names */
    for (int i = 0; i < 50; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "obj%d", i);
        void *o = NULL;
        if (!TU_CHECK_OK(mproc_shm_alloc(s, 64, nm, &o)))
            break;
        *(int *)o = i;
    }
    for (int i = 0; i < 50; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "obj%d", i);
        int *o = NULL;
        if (TU_CHECK_OK(mproc_shm_find(s, nm, MPROC_OBJ_BYTES, (void **)&o)))
            TU_CHECK_EQ_INT(*o, i);
    }
    TU_CHECK_OK(mproc_shm_close(s));
}

static void test_arena_offsets(void)
{
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&s, 32 * 1024));
    void *objs[6] = {0};
    uint64_t offs[6];
    for (int i = 0; i < 6; i++) {
        TU_REQUIRE_OK(mproc_shm_alloc(s, 100 + 300 * (size_t)i, NULL, &objs[i]));
        TU_REQUIRE_OK(mproc_shm_offset(s, objs[i], &offs[i]));
        void *back = NULL;
        TU_CHECK_OK(mproc_shm_at(s, offs[i], MPROC_OBJ_BYTES, &back));
        TU_CHECK(back == objs[i]);
        back = NULL;
        TU_CHECK_OK(mproc_shm_at(s, offs[i], MPROC_OBJ_ANY, &back));
        TU_CHECK(back == objs[i]);
        TU_CHECK_EQ_INT(mproc_shm_at(s, offs[i], MPROC_OBJ_LOCK, &back), MPROC_ETYPE);
        TU_CHECK_EQ_INT(mproc_shm_at(s, offs[i], MPROC_OBJ_ARRAY, &back), MPROC_ETYPE);
        /* the size it was allocated with */
        TU_CHECK_EQ_INT(mproc_shm_object_size(s, objs[i]), 100 + 300 * (long long)i);
    }
    /* offsets are distinct and the difference matches the addresses */
    for (int i = 1; i < 6; i++)
        TU_CHECK_EQ_INT((long long)(offs[i] - offs[0]),
                        (long long)((char *)objs[i] - (char *)objs[0]));

    void *x = NULL;
    TU_CHECK_EQ_INT(mproc_shm_at(s, offs[1] + 64, MPROC_OBJ_ANY, &x), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_at(s, offs[1] + 1, MPROC_OBJ_ANY, &x), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_at(s, offs[1] - 64, MPROC_OBJ_ANY, &x), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_at(s, 0, MPROC_OBJ_ANY, &x), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_at(s, (uint64_t)mproc_shm_size(s) * 4, MPROC_OBJ_ANY, &x), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_at(s, UINT64_MAX, MPROC_OBJ_ANY, &x), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_at(s, UINT64_MAX - 63, MPROC_OBJ_ANY, &x), -EINVAL);
    TU_CHECK(x == NULL);

    /* object_size of what is not an object */
    int local;
    TU_CHECK_EQ_INT(mproc_shm_object_size(s, &local), 0);
    TU_CHECK_EQ_INT(mproc_shm_object_size(s, (char *)objs[2] + 64), 0);
    TU_CHECK_EQ_INT(mproc_shm_object_size(s, NULL), 0);
    uint64_t off;
    TU_CHECK_EQ_INT(mproc_shm_offset(s, &local, &off), -EINVAL);

    /* a freed object's offset no longer leads anywhere */
    TU_CHECK_OK(mproc_shm_free(s, objs[3]));
    TU_CHECK_EQ_INT(mproc_shm_at(s, offs[3], MPROC_OBJ_ANY, &x), -EINVAL);
    TU_CHECK_EQ_INT(mproc_shm_object_size(s, objs[3]), 0);

    /* the same offset in another mapping of the same segment */
    mproc_shm_t *n = NULL, *m = NULL;
    TU_REQUIRE_OK(mproc_shm_create_named(&n, 8192, "t-off"));
    void *o = NULL;
    uint64_t oo = 0;
    TU_CHECK_OK(mproc_shm_alloc(n, 128, NULL, &o));
    TU_CHECK_OK(mproc_shm_offset(n, o, &oo));
    TU_CHECK_OK(mproc_shm_open(&m, "t-off"));
    if (m && o) {
        *(uint64_t *)o = 0xfeedfacecafebeefull;
        void *o2 = NULL;
        TU_CHECK_OK(mproc_shm_at(m, oo, MPROC_OBJ_BYTES, &o2));
        if (o2)
            TU_CHECK(*(uint64_t *)o2 == 0xfeedfacecafebeefull);
        TU_CHECK_EQ_INT(mproc_shm_object_size(m, o2), 128);
        mproc_shm_close(m);
    }
    drop_named(n);
    TU_CHECK_OK(mproc_shm_close(s));
}

/* Block headers are written by other processes: a corrupted one (a size
 * of 0, past the end, a payload bigger than its block) stops a walk and
 * fails calls cleanly; nothing loops or reads past the mapping. The block
 * header is the MPROC_SHM_OBJECT_OVERHEAD bytes before an object, its
 * first field the block size (block_t in src/shm.c). */
static void test_corrupt_block_headers(void)
{
    static const uint64_t bad_sizes[] = {0, 7, UINT64_MAX / 2, UINT64_MAX - 63};
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        tu_context("size %llu", (unsigned long long)bad_sizes[i]);
        mproc_shm_t *s = NULL;
        TU_REQUIRE_OK(mproc_shm_create(&s, 16 * 1024));
        void *a = NULL, *b = NULL;
        TU_CHECK_OK(mproc_shm_alloc(s, 100, "a", &a));
        TU_CHECK_OK(mproc_shm_alloc(s, 100, "b", &b));
        if (b) {
            uint64_t *hdr = (uint64_t *)((unsigned char *)b - MPROC_SHM_OBJECT_OVERHEAD);
            hdr[0] = bad_sizes[i];
        }
        void *p = NULL;
        TU_CHECK_OK(mproc_shm_find(s, "a", MPROC_OBJ_ANY, &p)); /* before the damage */
        TU_CHECK_EQ_INT(mproc_shm_find(s, "b", MPROC_OBJ_ANY, &p), -ENOENT);
        TU_CHECK_EQ_INT(mproc_shm_find(s, "zz", MPROC_OBJ_ANY, &p), -ENOENT);
        TU_CHECK_EQ_INT(mproc_shm_free(s, b), -EINVAL);
        TU_CHECK_EQ_INT((long long)mproc_shm_object_size(s, b), 0);
        int rc = mproc_shm_alloc(s, 64, NULL, &p);
        TU_CHECK(rc == -ENOMEM || rc == 0);
        TU_CHECK_OK(mproc_shm_close(s));
    }
    tu_context(NULL);

    /* a prev_size pointing far before the arena, or inside a neighbour's
     * payload: free does not merge backwards through it (it used to read
     * and write there), and the arena stays usable */
    static const uint64_t bad_prev[] = {1ull << 40, 64, 3};
    for (size_t i = 0; i < sizeof bad_prev / sizeof bad_prev[0]; i++) {
        tu_context("prev_size %llu", (unsigned long long)bad_prev[i]);
        mproc_shm_t *s = NULL;
        TU_REQUIRE_OK(mproc_shm_create(&s, 16 * 1024));
        void *a = NULL, *b = NULL, *q = NULL;
        TU_CHECK_OK(mproc_shm_alloc(s, 100, "a", &a));
        TU_CHECK_OK(mproc_shm_alloc(s, 100, "b", &b));
        TU_CHECK_OK(mproc_shm_free(s, a)); /* b's neighbour is free: a merge candidate */
        if (b) {
            uint64_t *hdr = (uint64_t *)((unsigned char *)b - MPROC_SHM_OBJECT_OVERHEAD);
            hdr[1] = bad_prev[i]; /* prev_size: the second field */
            TU_CHECK_OK(mproc_shm_free(s, b));
        }
        TU_CHECK_OK(mproc_shm_alloc(s, 100, "c", &q));
        TU_CHECK_OK(mproc_shm_find(s, "c", MPROC_OBJ_BYTES, &q));
        TU_CHECK_OK(mproc_shm_close(s));
    }
    tu_context(NULL);

    /* an array whose recorded payload outgrows its block: not an object */
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&s, 16 * 1024));
    int32_t *arr = NULL;
    TU_CHECK_OK(mproc_array_create(s, "arr", MPROC_INT32, 4, (void **)&arr));
    if (arr) {
        uint64_t *hdr = (uint64_t *)((unsigned char *)arr - MPROC_SHM_OBJECT_OVERHEAD);
        hdr[4] = 1u << 30; /* payload: bytes 32-39 of the header (src/shm.c) */
        size_t count = 0;
        void *p = NULL;
        TU_CHECK_EQ_INT(mproc_array_open(s, "arr", MPROC_INT32, &p, &count), -ENOENT);
        TU_CHECK_EQ_INT((long long)mproc_shm_object_size(s, arr), 0);
    }
    TU_CHECK_OK(mproc_shm_close(s));
}

static void test_arrays(void)
{
    static const struct {
        mproc_ctype_t t;
        size_t esize;
    } types[] = {
        {MPROC_INT8, 1},  {MPROC_UINT8, 1},  {MPROC_INT16, 2}, {MPROC_UINT16, 2},
        {MPROC_INT32, 4}, {MPROC_UINT32, 4}, {MPROC_INT64, 8}, {MPROC_UINT64, 8},
        {MPROC_FLOAT, 4}, {MPROC_DOUBLE, 8},
    };
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create_named(&s, 64 * 1024, "t-arr"));
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "arr%zu", i);
        tu_context("array %s", nm);
        size_t count = 37 + i;
        void *p = NULL;
        if (!TU_CHECK_OK(mproc_array_create(s, nm, types[i].t, count, &p)))
            continue;
        TU_CHECK_EQ_INT((uintptr_t)p % 64, 0);
        TU_CHECK(all_zero(p, count * types[i].esize));
        TU_CHECK(mproc_shm_object_size(s, p) >= count * types[i].esize);
        fill(p, count * types[i].esize, (unsigned)i);
        void *q = NULL;
        size_t got = 0;
        TU_CHECK_OK(mproc_array_open(s, nm, types[i].t, &q, &got));
        TU_CHECK(q == p);
        TU_CHECK_EQ_INT(got, count);
        q = NULL;
        TU_CHECK_OK(mproc_array_open(s, nm, types[i].t, &q, NULL));
        TU_CHECK(q == p);
        /* another element type: refused */
        mproc_ctype_t wrong = types[i].t == MPROC_DOUBLE ? MPROC_INT8 : types[i].t + 1;
        TU_CHECK_EQ_INT(mproc_array_open(s, nm, wrong, &q, &got), MPROC_ETYPE);
        TU_CHECK_EQ_INT(mproc_array_create(s, nm, types[i].t, 1, &q), -EEXIST);
        q = NULL;
        TU_CHECK_OK(mproc_shm_find(s, nm, MPROC_OBJ_ARRAY, &q));
        TU_CHECK(q == p);
        TU_CHECK_EQ_INT(mproc_shm_find(s, nm, MPROC_OBJ_BYTES, &q), MPROC_ETYPE);
        uint64_t off;
        TU_CHECK_OK(mproc_shm_offset(s, p, &off));
        q = NULL;
        TU_CHECK_OK(mproc_shm_at(s, off, MPROC_OBJ_ARRAY, &q));
        TU_CHECK(q == p);
    }
    tu_context(NULL);

    /* a value is an array of one; arithmetic through another handle */
    double *v = NULL;
    TU_REQUIRE_OK(mproc_array_create(s, "value", MPROC_DOUBLE, 1, (void **)&v));
    *v = 2.5;
    mproc_shm_t *o = NULL;
    TU_REQUIRE_OK(mproc_shm_open(&o, "t-arr"));
    double *w = NULL;
    size_t cnt = 0;
    TU_CHECK_OK(mproc_array_open(o, "value", MPROC_DOUBLE, (void **)&w, &cnt));
    TU_CHECK_EQ_INT(cnt, 1);
    if (w)
        TU_CHECK(*w == 2.5);
    /* every array before still holds its contents in the other mapping */
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "arr%zu", i);
        void *q = NULL;
        if (TU_CHECK_OK(mproc_array_open(o, nm, types[i].t, &q, &cnt)))
            TU_CHECK_EQ_INT(verify(q, cnt * types[i].esize, (unsigned)i), -1);
    }
    mproc_shm_close(o);

    /* an unnamed array, reached by offset; freed like anything else */
    int64_t *u = NULL;
    TU_CHECK_OK(mproc_array_create(s, NULL, MPROC_INT64, 10, (void **)&u));
    if (u) {
        uint64_t off;
        TU_CHECK_OK(mproc_shm_offset(s, u, &off));
        void *q = NULL;
        TU_CHECK_OK(mproc_shm_at(s, off, MPROC_OBJ_ARRAY, &q));
        TU_CHECK(q == u);
        TU_CHECK_OK(mproc_shm_free(s, u));
    }
    /* an array too large for the arena; and a count whose byte size overflows */
    void *big = NULL;
    TU_CHECK_EQ_INT(mproc_array_create(s, "huge", MPROC_INT64, 1u << 20, &big), -ENOMEM);
    int rc = mproc_array_create(s, "ovf", MPROC_INT64, SIZE_MAX / 4, &big);
    TU_CHECK(rc == -ENOMEM || rc == -EINVAL || rc == -EOVERFLOW);
    drop_named(s);
}

/* Several processes allocate, fill, check and free in one arena at once
 * (and name, find and free named objects): nobody's block is handed to
 * another or overwritten, and everything coalesces back at the end. */
#define CHURN_SLOTS 8

typedef struct {
    mproc_shm_ref_t ref;
    int32_t idx;
    int32_t iters; /* < 0: forever, after reporting on report_fd */
    int32_t max_size;
    int32_t report_fd;
    int32_t go_fd; /* >= 0: wait for EOF on it first (everyone at once) */
    int32_t go_w;  /* the write end, closed by a fork child */
    int32_t is_fork;
} churn_arg_t;

static int churn(mproc_shm_t *s, const churn_arg_t *a)
{
    if (a->go_fd >= 0) {
        char c;
        ssize_t r;
        do
            r = read(a->go_fd, &c, 1);
        while (r < 0 && errno == EINTR);
        if (r != 0)
            return 21;
    }
    void *held[CHURN_SLOTS] = {0};
    size_t sz[CHURN_SLOTS] = {0};
    unsigned seed = (unsigned)a->idx * 7919u + 1u;
    for (long i = 0; a->iters < 0 || i < a->iters; i++) {
        if (a->iters < 0 && i == 200 && tu_write_full(a->report_fd, "r", 1) != 0)
            return 20;
        int k = rand_r(&seed) % CHURN_SLOTS;
        unsigned pseed = (unsigned)a->idx * 1000u + (unsigned)k;
        if (held[k]) {
            if (verify(held[k], sz[k], pseed) != -1)
                return 10; /* someone else wrote into our block */
            if (mproc_shm_object_size(s, held[k]) != sz[k])
                return 15;
            if (mproc_shm_free(s, held[k]) != 0)
                return 11;
            held[k] = NULL;
        } else {
            sz[k] = 1 + (size_t)(rand_r(&seed) % a->max_size);
            int rc = mproc_shm_alloc(s, sz[k], NULL, &held[k]);
            if (rc == -ENOMEM) {
                held[k] = NULL;
                continue;
            }
            if (rc != 0)
                return 12;
            if (!all_zero(held[k], sz[k]))
                return 13; /* handed out a block still in use */
            fill(held[k], sz[k], pseed);
        }
        if (i % 16 == 0) {
            char nm[32];
            snprintf(nm, sizeof nm, "w%d-%ld", a->idx, i);
            void *o = NULL, *f = NULL;
            int rc = mproc_shm_alloc(s, 64, nm, &o);
            if (rc == -ENOMEM)
                continue;
            if (rc != 0)
                return 14;
            if (mproc_shm_find(s, nm, MPROC_OBJ_BYTES, &f) != 0 || f != o)
                return 16;
            if (mproc_shm_free(s, o) != 0)
                return 17;
        }
    }
    for (int k = 0; k < CHURN_SLOTS; k++) {
        if (!held[k])
            continue;
        if (verify(held[k], sz[k], (unsigned)a->idx * 1000u + (unsigned)k) != -1)
            return 18;
        if (mproc_shm_free(s, held[k]) != 0)
            return 19;
    }
    return 0;
}

static int entry_churn(const void *arg, size_t len)
{
    churn_arg_t a;
    if (len != sizeof a || !arg)
        return 200;
    memcpy(&a, arg, sizeof a);
    if (a.is_fork)
        close(a.go_w);
    mproc_shm_t *s = NULL;
    if (mproc_shm_attach(&s, &a.ref) != 0)
        return 201;
    int rc = churn(s, &a);
    mproc_shm_close(s);
    return rc;
}

static void test_arena_concurrent(void)
{
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&s, 256 * 1024));
    size_t total = mproc_shm_size(s);
    churn_arg_t a;
    memset(&a, 0, sizeof a);
    TU_REQUIRE_OK(mproc_shm_ref(s, &a.ref));
    a.iters = 50000;
    a.max_size = 2048;
    int go[2];
    TU_REQUIRE(tu_pipe(go) == 0);
    a.go_fd = go[0];
    a.go_w = go[1];
    mproc_process_t *kids[TU_NMETHODS] = {0};
    int n = 0;
    TU_FOR_EACH_METHOD(m) {
        a.idx = n + 1;
        a.is_fork = m == MPROC_START_FORK;
        if (TU_CHECK_OK(start_with_shm(&kids[n], m, entry_churn, &a, sizeof a, &s, 1, &go[0], 1)))
            n++;
    }
    close(go[0]);
    close(go[1]); /* go, all at once */
    a.idx = 0;
    a.go_fd = -1;
    TU_CHECK_EQ_INT(churn(s, &a), 0); /* the parent too, meanwhile */
    for (int i = 0; i < n; i++) {
        tu_context("child %d (%s)", i + 1, tu_method_name(mproc_process_method(kids[i])));
        TU_CHECK_EQ_INT(tu_join_free(kids[i]), 0);
    }
    tu_context(NULL);
    void *whole = NULL;
    TU_CHECK_OK(mproc_shm_alloc(s, total - MPROC_SHM_OBJECT_OVERHEAD, NULL, &whole));
    TU_CHECK_OK(mproc_shm_close(s));
}

/* Processes SIGKILLed while they allocate and free as fast as they can
 * (inside the arena's lock most of the time): the arena stays usable by
 * everyone else (its lock is robust and the list is repaired). */
static int probe_arena(void *ctx)
{
    mproc_shm_t *s = ctx;
    for (int i = 0; i < 200; i++) {
        void *p = NULL;
        int rc = mproc_shm_alloc(s, 100 + (size_t)i, NULL, &p);
        if (rc != 0)
            return 30;
        fill(p, 100 + (size_t)i, 5);
        if (mproc_shm_free(s, p) != 0)
            return 31;
    }
    return 0;
}

static int raw_churn(void *ctx)
{
    churn_arg_t *a = ctx;
    mproc_shm_t *s = NULL;
    if (mproc_shm_attach(&s, &a->ref) != 0)
        return 201;
    return churn(s, a);
}

static void test_arena_killed_inside(void)
{
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create(&s, 1 << 20));
    size_t total = mproc_shm_size(s);
    for (int round = 0; round < 20; round++) {
        tu_context("round %d", round);
        int rp[2];
        TU_REQUIRE(tu_pipe(rp) == 0);
        churn_arg_t a;
        memset(&a, 0, sizeof a);
        TU_REQUIRE_OK(mproc_shm_ref(s, &a.ref));
        a.idx = round + 1;
        a.iters = -1;
        a.max_size = 64; /* small: the time goes to the locked part */
        a.report_fd = rp[1];
        a.go_fd = -1;
        int pidfd = -1;
        pid_t pid = tu_fork(raw_churn, &a, &pidfd);
        close(rp[1]);
        char c;
        TU_CHECK_EQ_INT(tu_read_full(rp[0], &c, 1, TU_T_MS), 1);
        close(rp[0]);
        if (pid > 0)
            tu_kill_child(pid, pidfd);
        /* another process, then this one, still allocate and free */
        int st = -1;
        int rc = tu_run_child(probe_arena, s, 5000, &st);
        TU_CHECK_OK(rc);
        TU_CHECK_EQ_INT(st, 0);
        if (rc != 0 || st != 0)
            break;
        TU_CHECK_EQ_INT(probe_arena(s), 0);
    }
    tu_context(NULL);
    /* what the killed ones held is lost, the rest is one usable arena:
     * fill it, check nothing overlaps, free it all */
    enum { CAP = 8192 };
    void **objs = calloc(CAP, sizeof *objs);
    TU_REQUIRE(objs != NULL);
    int n = fill_arena(s, objs, CAP);
    TU_CHECK(n > (int)(total / 2 / (FILL_OBJ + MPROC_SHM_OBJECT_OVERHEAD)));
    for (int i = 0; i < n; i++) {
        const unsigned char *p = objs[i];
        for (int k = 0; k < FILL_OBJ; k++)
            if (p[k] != (unsigned char)(i & 0xff)) {
                tu_fail(__FILE__, __LINE__, "object %d overwritten at byte %d", i, k);
                break;
            }
    }
    for (int i = 0; i < n; i++)
        TU_CHECK_OK(mproc_shm_free(s, objs[i]));
    TU_CHECK_EQ_INT(fill_arena(s, objs, CAP), n);
    free(objs);
    TU_CHECK_OK(mproc_shm_close(s));
}

/* ------------------------------------------------------------------ crossing to children */

#define XLEN 4096

typedef struct {
    mproc_shm_ref_t ref;
    uint64_t off;
    uint64_t parent_addr;
    uint64_t size;
    int32_t is_fork;
    int32_t named;
    char name[MPROC_NAME_MAX + 1];
} xarg_t;

/* Child: attach, check what the parent wrote, write the second half. */
static int entry_cross(const void *arg, size_t len)
{
    xarg_t a;
    if (len != sizeof a || !arg)
        return 200;
    memcpy(&a, arg, sizeof a);
    mproc_shm_t *s = NULL;
    if (mproc_shm_attach(&s, &a.ref) != 0)
        return 201;
    void *p = NULL;
    if (mproc_shm_at(s, a.off, MPROC_OBJ_BYTES, &p) != 0)
        return 202;
    if (a.is_fork && (uint64_t)(uintptr_t)p != a.parent_addr)
        return 203; /* fork: the parent's mapping, same address */
    if (verify(p, XLEN, 21) != -1)
        return 204;
    void *f = NULL;
    if (mproc_shm_find(s, "blk", MPROC_OBJ_BYTES, &f) != 0 || f != p)
        return 205;
    /* checked last, so that a wrong name does not hide the rest */
    const char *nm = mproc_shm_name(s);
    int name_bad = a.named ? (!nm || strcmp(nm, a.name) != 0) : nm != NULL;
    if (mproc_shm_size(s) != a.size)
        return 207;
    if (mproc_shm_object_size(s, p) != 2 * XLEN)
        return 208;
    fill((char *)p + XLEN, XLEN, 22);
    /* the child can allocate too; the parent finds it by name */
    int *mine = NULL;
    if (mproc_shm_alloc(s, sizeof *mine, "from-child", (void **)&mine) != 0)
        return 209;
    *mine = (int)getpid();
    if (mproc_shm_close(s) != 0)
        return 210;
    if (mproc_tracker_stop(TU_T_MS) != 0)
        return 211;
    return name_bad ? 206 : 0; /* 206: mproc_shm_name is not the segment's name */
}

static void cross_one(mproc_start_method_t m, int named)
{
    tu_context("method=%s %s", tu_method_name(m), named ? "named" : "anonymous");
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(named ? mproc_shm_create_named(&s, 4 * XLEN, NULL)
                        : mproc_shm_create(&s, 4 * XLEN));
    void *p = NULL;
    xarg_t a;
    memset(&a, 0, sizeof a);
    if (!TU_CHECK_OK(mproc_shm_alloc(s, 2 * XLEN, "blk", &p)) ||
        !TU_CHECK_OK(mproc_shm_offset(s, p, &a.off)) || !TU_CHECK_OK(mproc_shm_ref(s, &a.ref))) {
        named ? drop_named(s) : (void)mproc_shm_close(s);
        return;
    }
    fill(p, XLEN, 21);
    a.parent_addr = (uint64_t)(uintptr_t)p;
    a.size = mproc_shm_size(s);
    a.is_fork = m == MPROC_START_FORK;
    a.named = named;
    if (named)
        snprintf(a.name, sizeof a.name, "%s", mproc_shm_name(s));
    int code = run_with_shm(m, entry_cross, &a, sizeof a, &s, 1);
    TU_CHECK_EQ_INT(code, 0);
    if (code == 0) {
        TU_CHECK_EQ_INT(verify(p, XLEN, 21), -1);
        TU_CHECK_EQ_INT(verify((char *)p + XLEN, XLEN, 22), -1);
        int *theirs = NULL;
        TU_CHECK_OK(mproc_shm_find(s, "from-child", MPROC_OBJ_BYTES, (void **)&theirs));
        if (theirs)
            TU_CHECK(*theirs > 0 && *theirs != (int)getpid());
    }
    /* the parent's handle is intact after the child closed its own */
    TU_CHECK(fd_cloexec(mproc_shm_fd(s)));
    if (named) {
        TU_CHECK(seg_exists(a.name));
        drop_named(s);
    } else {
        TU_CHECK_OK(mproc_shm_close(s));
    }
}

static void test_child_writes_seen(void)
{
    TU_FOR_EACH_METHOD(m) {
        cross_one(m, 0);
        cross_one(m, 1);
    }
}

/* Child: attach a ref whose fd was not passed. */
static int entry_attach_unpassed(const void *arg, size_t len)
{
    mproc_shm_ref_t r;
    if (len != sizeof r || !arg)
        return 200;
    memcpy(&r, arg, sizeof r);
    int open_here = fcntl(r.fd, F_GETFD) != -1;
    mproc_shm_t *s = NULL;
    int rc = mproc_shm_attach(&s, &r);
    if (rc == 0) {
        mproc_shm_close(s);
        return 10;
    }
    if (open_here)
        return 11; /* cannot tell: the number is used by something else here */
    return rc == -EBADF ? 0 : 12;
}

static void test_attach_errors(void)
{
    /* push the segments' fds up, out of the range a fresh child uses */
    int pad[24];
    for (int i = 0; i < 24; i++)
        pad[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    mproc_shm_t *a = NULL, *b = NULL;
    int ra = mproc_shm_create(&a, 4096);
    int rb = mproc_shm_create_named(&b, 4096, "t-att");
    for (int i = 0; i < 24; i++)
        if (pad[i] >= 0)
            close(pad[i]);
    TU_REQUIRE_OK(ra);
    TU_REQUIRE_OK(rb);
    mproc_shm_ref_t refa, refb, r;
    TU_REQUIRE_OK(mproc_shm_ref(a, &refa));
    TU_REQUIRE_OK(mproc_shm_ref(b, &refb));
    TU_CHECK_EQ_INT(refa.fd, mproc_shm_fd(a));
    TU_CHECK(memcmp(refa.id, refb.id, sizeof refa.id) != 0);

    /* in this process: an fd that is not open, another segment's fd, a bad magic */
    r = refa;
    r.fd = 1000;
    mproc_shm_t *x = NULL;
    TU_CHECK(!tu_fd_is_open(1000));
    TU_CHECK_EQ_INT(mproc_shm_attach(&x, &r), -EBADF);
    r = refa;
    r.fd = refb.fd;
    TU_CHECK_EQ_INT(mproc_shm_attach(&x, &r), MPROC_ETYPE);
    r = refb;
    r.fd = refa.fd;
    TU_CHECK_EQ_INT(mproc_shm_attach(&x, &r), MPROC_ETYPE);
    r = refa;
    r.magic ^= 0x01010101u;
    TU_CHECK(mproc_shm_attach(&x, &r) < 0);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    r = refa;
    r.fd = devnull;
    TU_CHECK(mproc_shm_attach(&x, &r) < 0);
    close(devnull);
    TU_CHECK(x == NULL);

    /* in a spawn or forkserver child that was not given the segment */
    for (int named = 0; named <= 1; named++) {
        mproc_start_method_t ms[] = {MPROC_START_SPAWN, MPROC_START_FORKSERVER};
        for (int i = 0; i < 2; i++) {
            tu_context("method=%s %s", tu_method_name(ms[i]), named ? "named" : "anonymous");
            const mproc_shm_ref_t *rr = named ? &refb : &refa;
            int code = tu_run(ms[i], entry_attach_unpassed, rr, sizeof *rr);
            TU_CHECK_EQ_INT(code, 0);
        }
    }
    TU_CHECK_OK(mproc_shm_close(a));
    drop_named(b);
}

/* Fork child: attach twice, both handles work, close both. */
static int entry_attach_twice(const void *arg, size_t len)
{
    xarg_t a;
    if (len != sizeof a || !arg)
        return 200;
    memcpy(&a, arg, sizeof a);
    mproc_shm_t *s1 = NULL, *s2 = NULL;
    if (mproc_shm_attach(&s1, &a.ref) != 0)
        return 201;
    if (mproc_shm_attach(&s2, &a.ref) != 0)
        return 202;
    unsigned char *p1 = NULL, *p2 = NULL;
    if (mproc_shm_at(s1, a.off, MPROC_OBJ_BYTES, (void **)&p1) != 0)
        return 203;
    if (mproc_shm_at(s2, a.off, MPROC_OBJ_BYTES, (void **)&p2) != 0)
        return 204;
    p1[0] = 0x11;
    if (p2[0] != 0x11)
        return 205;
    if (mproc_shm_close(s1) != 0)
        return 206;
    p2[1] = 0x22; /* the second handle survives the first's close */
    void *f = NULL;
    if (mproc_shm_find(s2, "blk", MPROC_OBJ_BYTES, &f) != 0 || f != p2)
        return 207;
    if (mproc_shm_size(s2) != a.size)
        return 208;
    if (mproc_shm_close(s2) != 0)
        return 209;
    if (mproc_tracker_stop(TU_T_MS) != 0)
        return 210;
    return 0;
}

static void test_attach_twice_fork(void)
{
    for (int named = 0; named <= 1; named++) {
        tu_context("%s", named ? "named" : "anonymous");
        mproc_shm_t *s = NULL;
        TU_REQUIRE_OK(named ? mproc_shm_create_named(&s, 8192, NULL) : mproc_shm_create(&s, 8192));
        xarg_t a;
        memset(&a, 0, sizeof a);
        unsigned char *p = NULL;
        TU_CHECK_OK(mproc_shm_alloc(s, 64, "blk", (void **)&p));
        TU_CHECK_OK(mproc_shm_offset(s, p, &a.off));
        TU_CHECK_OK(mproc_shm_ref(s, &a.ref));
        a.size = mproc_shm_size(s);
        a.is_fork = 1;
        TU_CHECK_EQ_INT(run_with_shm(MPROC_START_FORK, entry_attach_twice, &a, sizeof a, &s, 1), 0);
        if (p) {
            TU_CHECK_EQ_INT(p[0], 0x11);
            TU_CHECK_EQ_INT(p[1], 0x22);
        }
        /* the parent's handle and fd are untouched */
        TU_CHECK(tu_fd_is_open(mproc_shm_fd(s)));
        if (named) {
            TU_CHECK_EQ_INT(seg_in_use(mproc_shm_name(s)), 1);
            drop_named(s);
        } else {
            TU_CHECK_OK(mproc_shm_close(s));
        }
    }
}

/* By name, from a process that was handed nothing. */
typedef struct {
    char name[MPROC_NAME_MAX + 1];
    int value;
} byname_t;

static int open_by_name_and_write(const byname_t *b)
{
    mproc_shm_t *s = NULL;
    int rc = mproc_shm_open(&s, b->name);
    if (rc != 0)
        return 201;
    int *v = NULL;
    if (mproc_array_open(s, "counter", MPROC_INT32, (void **)&v, NULL) != 0)
        return 202;
    if (*v != b->value)
        return 203;
    *v = b->value + 1;
    if (mproc_shm_close(s) != 0)
        return 204;
    /* no mproc_tracker_stop: under spawn and forkserver this child has a
     * tracker of its own, which must wait while the parent still uses the
     * segment (it finishes alone once the parent unlinks it) */
    return 0;
}

static int raw_byname(void *ctx)
{
    return open_by_name_and_write(ctx);
}

static int entry_byname(const void *arg, size_t len)
{
    if (len != sizeof(byname_t) || !arg)
        return 200;
    byname_t b;
    memcpy(&b, arg, sizeof b);
    return open_by_name_and_write(&b);
}

static void test_open_by_name_elsewhere(void)
{
    mproc_shm_t *s = NULL;
    TU_REQUIRE_OK(mproc_shm_create_named(&s, 4096, "t-byname"));
    int *v = NULL;
    TU_REQUIRE_OK(mproc_array_create(s, "counter", MPROC_INT32, 1, (void **)&v));
    byname_t b;
    memset(&b, 0, sizeof b);
    snprintf(b.name, sizeof b.name, "t-byname");
    b.value = 0;
    /* a raw fork() child: no mproc process, opens the name */
    int st = -1;
    TU_CHECK_OK(tu_run_child(raw_byname, &b, TU_T_MS, &st));
    TU_CHECK_EQ_INT(st, 0);
    TU_CHECK_EQ_INT(*v, 1);
    /* children of every method, handed nothing but the name */
    b.value = 1;
    TU_FOR_EACH_METHOD(m) {
        TU_CHECK_EQ_INT(tu_run(m, entry_byname, &b, sizeof b), 0);
        b.value++;
        TU_CHECK_EQ_INT(*v, b.value);
    }
    drop_named(s);
}

/* ------------------------------------------------------------------ main */

static const tu_case_t cases[] = {
    TU_CASE(test_anon_create_close),
    TU_CASE(test_size_rounding),
    TU_CASE(test_named_create_close),
    TU_CASE(test_generated_names),
    TU_CASE(test_exclusive),
    TU_CASE(test_create_race),
    TU_CASE(test_open_errors),
    TU_CASE(test_bad_names),
    TU_CASE(test_bad_args),
    TU_CASE(test_unlink_keeps_mapping),
    TU_CASE(test_two_handles_in_use_lock),
    TU_CASE(test_arena_alloc_free_reuse),
    TU_CASE(test_arena_fill_coalesce),
    TU_CASE(test_arena_names),
    TU_CASE(test_arena_offsets),
    TU_CASE(test_arena_concurrent),
    TU_CASE(test_arena_killed_inside),
    TU_CASE(test_arrays),
    TU_CASE(test_corrupt_block_headers),
    TU_CASE(test_child_writes_seen),
    TU_CASE(test_attach_errors),
    TU_CASE(test_attach_twice_fork),
    TU_CASE(test_open_by_name_elsewhere),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
