/*
 * shm.c - shared memory segments and the arena inside them.
 *
 * A segment is a header page and an arena. Anonymous segments are memfds;
 * named ones are files in /dev/shm, "mproc-<name>", 0600.
 *
 * Who uses a named segment is told by the kernel, not by bookkeeping that a
 * SIGKILL could leave stale: every process that uses one holds a shared
 * flock(2) on its fd (fork and fd passing share the open file, and so the
 * lock). A segment nobody locks is unused; the tracker and `mproc clean`
 * unlink it only while holding the exclusive lock, so an opener can never
 * map a file that is being removed (it checks the link count after locking).
 * Creation builds the file unnamed (O_TMPFILE), locks and initialises it,
 * then links the name, so no one ever sees a half-made segment; where
 * O_TMPFILE is missing, shm_open(O_EXCL) and the header's ready flag do.
 *
 * The arena is a list of blocks, each a 128-byte header (size, previous
 * size, type, name) and its payload, 64-byte aligned (no false sharing
 * between two locks). Allocation is first-fit under a robust lock in the
 * segment header, written so that a process killed in the middle leaves a
 * walkable list: the next locker gets EOWNERDEAD and re-validates it.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK_HDR MPROC_SHM_OBJECT_OVERHEAD
#define BLOCK_ALIGN 64u
#define BLOCK_MAGIC 0x6b636f6cu /* "lock" */
#define REF_MAGIC 0x6d736872u   /* "mshr" */

_Static_assert(sizeof(mproc__shm_header_t) <= MPROC__SHM_HEADER, "header fits its page");

typedef struct {
    uint64_t size;      /* whole block, header included, BLOCK_ALIGN multiple */
    uint64_t prev_size; /* of the block before (0 for the first)           */
    uint32_t magic;
    uint32_t used;
    uint32_t type;    /* mproc_obj_type_t                                 */
    uint32_t ctype;   /* arrays: mproc_ctype_t                             */
    uint64_t payload; /* bytes asked for                                 */
    char name[MPROC_NAME_MAX + 1];
    uint8_t pad[BLOCK_HDR - 40 - (MPROC_NAME_MAX + 1)];
} block_t;
_Static_assert(sizeof(block_t) == BLOCK_HDR, "block header size");

struct mproc_shm {
    struct mproc_shm *next; /* this process's segments, for attach */
    int refs;               /* attaches sharing this handle         */
    int fd;
    unsigned char *base;
    size_t total;
    uint64_t dev, ino;
    char *name; /* user-facing name, NULL when anonymous */
};

/* Segments mapped by this process; a fork child inherits the list with the
 * mappings, and a fresh lock. */
static pthread_mutex_t segs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mproc_shm *segs;
static mproc_once_t segs_once = MPROC_ONCE_INIT;

static void segs_after_fork(void)
{
    pthread_mutex_init(&segs_lock, NULL);
}

static int segs_setup(void *ctx)
{
    (void)ctx;
    return mproc__atfork_child(segs_after_fork);
}

static mproc__shm_header_t *header(const mproc_shm_t *shm)
{
    return (mproc__shm_header_t *)shm->base;
}

/* ---- names --------------------------------------------------------------- */

static int name_ok(const char *name)
{
    if (!name || !*name || *name == '.')
        return 0;
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        char c = *p;
        if (n >= MPROC_NAME_MAX)
            return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static void generate_name(char *out, const unsigned char rnd[12])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 12; i++) {
        out[2 * i] = hex[rnd[i] >> 4];
        out[2 * i + 1] = hex[rnd[i] & 15];
    }
    out[24] = '\0';
}

/* ---- mapping and registering ----------------------------------------------- */

static void publish(mproc_shm_t *shm)
{
    mproc_once(&segs_once, segs_setup, NULL);
    pthread_mutex_lock(&segs_lock);
    shm->next = segs;
    segs = shm;
    pthread_mutex_unlock(&segs_lock);
}

void mproc__shm_forget_fds(void)
{
    mproc_once(&segs_once, segs_setup, NULL);
    pthread_mutex_lock(&segs_lock);
    for (mproc_shm_t *s = segs; s; s = s->next)
        s->fd = -1;
    pthread_mutex_unlock(&segs_lock);
}

static void destroy(mproc_shm_t *shm)
{
    if (shm->base)
        munmap(shm->base, shm->total);
    if (shm->fd >= 0)
        close(shm->fd);
    free(shm->name);
    free(shm);
}

static int map(mproc_shm_t *shm, size_t total)
{
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, shm->fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    shm->base = p;
    shm->total = total;
    return 0;
}

/* Header and one free block spanning the arena; ready is set last. */
static int format(mproc_shm_t *shm)
{
    mproc__shm_header_t *h = header(shm);
    if (shm->name)
        snprintf(h->name, sizeof h->name, "%s", shm->name);
    h->version = MPROC__SHM_VERSION;
    h->header_size = MPROC__SHM_HEADER;
    h->total = shm->total;
    int rc = mproc__random_bytes(h->id, sizeof h->id);
    if (rc < 0)
        return rc; /* (the arena lock is ready as zeroes) */
    block_t *b = (block_t *)(shm->base + MPROC__SHM_HEADER);
    b->size = shm->total - MPROC__SHM_HEADER;
    b->magic = BLOCK_MAGIC;
    h->magic = MPROC__SHM_MAGIC;
    __atomic_store_n(&h->ready, 1, __ATOMIC_RELEASE);
    return 0;
}

static int total_for(size_t size, size_t *total)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (size == 0)
        return -EINVAL;
    if (size > SIZE_MAX / 2)
        return -ENOMEM;
    size_t t = MPROC__SHM_HEADER + size;
    t = (t + page - 1) / page * page;
    if (t - MPROC__SHM_HEADER < BLOCK_HDR + BLOCK_ALIGN)
        t += page;
    *total = t;
    return 0;
}

static mproc_shm_t *new_handle(void)
{
    mproc_shm_t *shm = calloc(1, sizeof *shm);
    if (shm) {
        shm->fd = -1;
        shm->refs = 1;
    }
    return shm;
}

static int fd_size(int fd, size_t total)
{
    while (ftruncate(fd, (off_t)total) < 0)
        if (errno != EINTR)
            return -errno;
    return 0;
}

int mproc_shm_create(mproc_shm_t **out, size_t size)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    size_t total;
    int rc = total_for(size, &total);
    if (rc < 0)
        return rc;
    mproc_shm_t *shm = new_handle();
    if (!shm)
        return -ENOMEM;
#ifndef MPROC_NO_FASTPATHS
    shm->fd = memfd_create("mproc-shm", MFD_CLOEXEC);
    if (shm->fd < 0 && errno != ENOSYS) {
        rc = -errno;
        destroy(shm);
        return rc;
    }
#endif
    if (shm->fd < 0) {
        /* No memfd: a named file, unlinked at once. */
        unsigned char rnd[12];
        char name[64];
        rc = mproc__random_bytes(rnd, sizeof rnd);
        if (rc == 0) {
            memcpy(name, "/mproc-anon-", 12);
            generate_name(name + 12, rnd);
            shm->fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            if (shm->fd < 0)
                rc = -errno;
            else
                shm_unlink(name);
        }
    }
    if (rc == 0)
        rc = fd_size(shm->fd, total);
    if (rc == 0)
        rc = map(shm, total);
    if (rc == 0)
        rc = format(shm);
    if (rc < 0) {
        destroy(shm);
        return rc;
    }
    publish(shm);
    *out = shm;
    return 0;
}

static int lock_shared(int fd)
{
    /* A cleaner holds the exclusive lock for a few microseconds at most. */
    for (int i = 0;; i++) {
        if (flock(fd, LOCK_SH | LOCK_NB) == 0)
            return 0;
        if (errno != EWOULDBLOCK && errno != EINTR)
            return -errno;
        if (i >= 1000)
            return -EBUSY;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static void file_name(char *out, size_t n, const char *name)
{
    snprintf(out, n, MPROC__SHM_PREFIX "%s", name);
}

/* The named file made whole, then linked: O_TMPFILE, or shm_open(O_EXCL). */
static int create_file(mproc_shm_t *shm, const char *file, size_t total)
{
    int rc = 0;
    int linked = 0;
#ifndef MPROC_NO_FASTPATHS
    shm->fd = open(MPROC__SHM_DIR, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
    if (shm->fd < 0) {
        char path[MPROC_NAME_MAX + 32];
        snprintf(path, sizeof path, "/%s", file);
        shm->fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (shm->fd < 0)
            return -errno;
        linked = 1;
    }
    /* Exactly 0600 whatever the umask; locked before anyone can look. */
    if (fchmod(shm->fd, 0600) < 0 || flock(shm->fd, LOCK_SH) < 0)
        rc = -errno;
    if (rc == 0)
        rc = fd_size(shm->fd, total);
    if (rc == 0)
        rc = map(shm, total);
    if (rc == 0)
        rc = format(shm);
    if (rc == 0 && !linked) {
        char src[64], dst[MPROC_NAME_MAX + 64];
        snprintf(src, sizeof src, "/proc/self/fd/%d", shm->fd);
        snprintf(dst, sizeof dst, MPROC__SHM_DIR "/%s", file);
        if (linkat(AT_FDCWD, src, AT_FDCWD, dst, AT_SYMLINK_FOLLOW) < 0)
            rc = -errno;
    }
    if (rc < 0 && linked) {
        char path[MPROC_NAME_MAX + 32];
        snprintf(path, sizeof path, "/%s", file);
        shm_unlink(path);
    }
    return rc;
}

static int identify(mproc_shm_t *shm)
{
    struct stat st;
    if (fstat(shm->fd, &st) < 0)
        return -errno;
    shm->dev = (uint64_t)st.st_dev;
    shm->ino = (uint64_t)st.st_ino;
    return 0;
}

int mproc_shm_create_named(mproc_shm_t **out, size_t size, const char *name)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (name && !name_ok(name))
        return -EINVAL;
    size_t total;
    int rc = total_for(size, &total);
    if (rc < 0)
        return rc;
    mproc_shm_t *shm = new_handle();
    if (!shm)
        return -ENOMEM;
    char gen[32];
    if (!name) {
        unsigned char rnd[12];
        rc = mproc__random_bytes(rnd, sizeof rnd);
        generate_name(gen, rnd);
        name = gen;
    }
    shm->name = rc == 0 ? strdup(name) : NULL;
    if (rc == 0 && !shm->name)
        rc = -ENOMEM;
    char file[MPROC_NAME_MAX + 16];
    file_name(file, sizeof file, name);
    if (rc == 0)
        rc = create_file(shm, file, total);
    if (rc == 0)
        rc = identify(shm);
    if (rc < 0) {
        destroy(shm);
        return rc;
    }
    /* Best effort: without a tracker the segment works, and `mproc clean`
     * still finds it if everything dies. */
    int trc = mproc__tracker_register(file, shm->dev, shm->ino);
    if (trc < 0)
        mproc__log(MPROC_LOG_WARN, "segment %s is not tracked: %s", name, mproc_strerror(trc));
    publish(shm);
    *out = shm;
    return 0;
}

/* A mapped file is one of ours: magic, version, size, complete. */
static int check_header(const mproc__shm_header_t *h, size_t size)
{
    if (h->magic != MPROC__SHM_MAGIC || h->version != MPROC__SHM_VERSION ||
        h->header_size != MPROC__SHM_HEADER || h->total != size ||
        !__atomic_load_n(&h->ready, __ATOMIC_ACQUIRE))
        return MPROC_ETYPE;
    return 0;
}

/* How long an opener waits for a segment another process is still
 * creating (only the shm_open fallback lets anyone see one). */
#define CREATING_WAIT_MS 2000

/* One attempt at opening; -EAGAIN while the file is still being created. */
static int open_once(mproc_shm_t *shm, const char *path)
{
    shm->fd = shm_open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
    if (shm->fd < 0)
        return errno == EACCES ? -EPERM : -errno; /* another user's 0600 file */
    int rc = lock_shared(shm->fd);
    struct stat st;
    if (rc == 0 && fstat(shm->fd, &st) < 0)
        rc = -errno;
    if (rc < 0)
        return rc;
    if (st.st_nlink == 0)
        return -ENOENT; /* reclaimed while we waited for the lock */
    if (!S_ISREG(st.st_mode))
        return MPROC_ETYPE;
    if (st.st_uid != geteuid())
        return -EPERM;
    shm->dev = (uint64_t)st.st_dev;
    shm->ino = (uint64_t)st.st_ino;
    int young = time(NULL) - st.st_ctime < 5;
    if ((uint64_t)st.st_size < MPROC__SHM_HEADER + BLOCK_HDR || (uint64_t)st.st_size > SIZE_MAX / 2)
        return young && st.st_size == 0 ? -EAGAIN : MPROC_ETYPE;
    rc = map(shm, (size_t)st.st_size);
    if (rc == 0)
        rc = check_header(header(shm), shm->total);
    if (rc == MPROC_ETYPE && young &&
        (header(shm)->magic == 0 || (header(shm)->magic == MPROC__SHM_MAGIC &&
                                     !__atomic_load_n(&header(shm)->ready, __ATOMIC_ACQUIRE))))
        rc = -EAGAIN; /* its creator is still formatting it */
    return rc;
}

int mproc_shm_open(mproc_shm_t **out, const char *name)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!name_ok(name))
        return -EINVAL;
    char file[MPROC_NAME_MAX + 16], path[MPROC_NAME_MAX + 64];
    file_name(file, sizeof file, name);
    snprintf(path, sizeof path, "/%s", file);
    int64_t deadline = mproc__deadline(CREATING_WAIT_MS);
    mproc_shm_t *shm;
    int rc;
    for (;;) {
        shm = new_handle();
        if (!shm)
            return -ENOMEM;
        rc = open_once(shm, path);
        if (rc != -EAGAIN)
            break;
        destroy(shm);
        if (mproc__remaining_ms(deadline) == 0)
            return MPROC_ETYPE; /* never finished: not a segment */
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (rc == 0) {
        shm->name = strdup(name);
        if (!shm->name)
            rc = -ENOMEM;
    }
    if (rc < 0) {
        destroy(shm);
        return rc;
    }
    /* Not registered: the creator's tracker owns the segment's fate, and
     * this handle's lock keeps it from reclaiming it while we use it. */
    publish(shm);
    *out = shm;
    return 0;
}

void mproc__shm_mapping(const mproc_shm_t *shm, unsigned char **base, size_t *total)
{
    *base = shm->base;
    *total = shm->total;
}

int mproc_shm_ref(const mproc_shm_t *shm, mproc_shm_ref_t *ref)
{
    if (!shm || !ref)
        return -EINVAL;
    memset(ref, 0, sizeof *ref);
    ref->magic = REF_MAGIC;
    ref->fd = shm->fd;
    memcpy(ref->id, header(shm)->id, sizeof ref->id);
    return 0;
}

int mproc_shm_attach(mproc_shm_t **out, const mproc_shm_ref_t *ref)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!ref || ref->magic != REF_MAGIC || ref->fd < 0)
        return -EINVAL;
    mproc_once(&segs_once, segs_setup, NULL);

    /* Already mapped here (a fork child, or a second attach): share it. */
    pthread_mutex_lock(&segs_lock);
    for (mproc_shm_t *s = segs; s; s = s->next)
        if (s->fd == ref->fd && memcmp(header(s)->id, ref->id, sizeof ref->id) == 0) {
            s->refs++;
            *out = s;
            break;
        }
    pthread_mutex_unlock(&segs_lock);
    if (*out)
        return 0;

    struct stat st;
    if (fstat(ref->fd, &st) < 0)
        return -errno; /* -EBADF: the fd was not passed */
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < MPROC__SHM_HEADER + BLOCK_HDR ||
        (uint64_t)st.st_size > SIZE_MAX / 2)
        return MPROC_ETYPE;
    mproc_shm_t *shm = new_handle();
    if (!shm)
        return -ENOMEM;
    /* The passed fd becomes the handle's: one fd, one share of the lock. */
    shm->fd = ref->fd;
    int rc = mproc__set_cloexec(shm->fd, 1);
    if (rc == 0)
        rc = map(shm, (size_t)st.st_size);
    if (rc == 0)
        rc = check_header(header(shm), shm->total);
    if (rc == 0 && memcmp(header(shm)->id, ref->id, sizeof ref->id) != 0)
        rc = MPROC_ETYPE;
    if (rc < 0) {
        shm->fd = -1; /* still the caller's */
        destroy(shm);
        return rc;
    }
    shm->dev = (uint64_t)st.st_dev;
    shm->ino = (uint64_t)st.st_ino;
    /* A named segment: its name is in the header (the fd's own path does
     * not tell: a segment made with O_TMPFILE keeps its unnamed dentry). */
    char name[MPROC_NAME_MAX + 1];
    memcpy(name, header(shm)->name, sizeof name);
    name[MPROC_NAME_MAX] = '\0';
    if (name_ok(name))
        shm->name = strdup(name);
    publish(shm);
    *out = shm;
    return 0;
}

const char *mproc_shm_name(const mproc_shm_t *shm)
{
    return shm ? shm->name : NULL;
}

size_t mproc_shm_size(const mproc_shm_t *shm)
{
    return shm ? shm->total - MPROC__SHM_HEADER : 0;
}

int mproc_shm_fd(const mproc_shm_t *shm)
{
    return shm ? shm->fd : -EINVAL;
}

int mproc_shm_keep(mproc_shm_t *shm)
{
    if (!shm || !shm->name)
        return -EINVAL;
    char file[MPROC_NAME_MAX + 16];
    file_name(file, sizeof file, shm->name);
    return mproc__tracker_unregister(file, shm->dev, shm->ino);
}

int mproc_shm_unlink(mproc_shm_t *shm)
{
    if (!shm || !shm->name)
        return -EINVAL;
    char file[MPROC_NAME_MAX + 16], path[MPROC_NAME_MAX + 64];
    file_name(file, sizeof file, shm->name);
    snprintf(path, sizeof path, MPROC__SHM_DIR "/%s", file);
    /* Only our file: the name may have been reclaimed and reused. */
    struct stat st;
    if (stat(path, &st) < 0)
        return -errno;
    if ((uint64_t)st.st_dev != shm->dev || (uint64_t)st.st_ino != shm->ino)
        return -ENOENT;
    if (unlink(path) < 0)
        return -errno;
    mproc__tracker_unregister(file, shm->dev, shm->ino);
    return 0;
}

int mproc_shm_close(mproc_shm_t *shm)
{
    if (!shm)
        return 0;
    /* The last reference leaves the list in the same critical section, so
     * an attach in another thread cannot pick up a handle being freed. */
    pthread_mutex_lock(&segs_lock);
    int last = --shm->refs <= 0;
    if (last)
        for (mproc_shm_t **pp = &segs; *pp; pp = &(*pp)->next)
            if (*pp == shm) {
                *pp = shm->next;
                break;
            }
    pthread_mutex_unlock(&segs_lock);
    if (last)
        destroy(shm);
    return 0;
}

/* ---- the arena --------------------------------------------------------------- */

static unsigned char *arena_start(const mproc_shm_t *shm)
{
    return shm->base + MPROC__SHM_HEADER;
}

static unsigned char *arena_end(const mproc_shm_t *shm)
{
    return shm->base + shm->total;
}

/* A block header as another process left it: never trusted for more than
 * the mapping holds (a size of 0 would make every walk loop for ever). */
static int block_sane(const mproc_shm_t *shm, const block_t *b)
{
    uint64_t room = (uint64_t)(arena_end(shm) - (const unsigned char *)b);
    return b->magic == BLOCK_MAGIC && b->size >= BLOCK_HDR && b->size % BLOCK_ALIGN == 0 &&
           b->size <= room && b->payload <= b->size - BLOCK_HDR;
}

static block_t *first_block(const mproc_shm_t *shm)
{
    block_t *b = (block_t *)arena_start(shm);
    return block_sane(shm, b) ? b : NULL;
}

/* The next block, or NULL at the end, or at a block that is not sane (the
 * walk stops there; arena_repair tells the difference under the lock). */
static block_t *next_block(const mproc_shm_t *shm, const block_t *b)
{
    unsigned char *n = (unsigned char *)b + b->size;
    if (n >= arena_end(shm) || !block_sane(shm, (const block_t *)n))
        return NULL;
    return (block_t *)n;
}

/*
 * Walk the blocks, checking every header and repairing prev_size (the one
 * field a process killed mid-split or mid-merge can leave stale). 0, or
 * -ENOTRECOVERABLE if the list is not walkable.
 */
static int arena_repair(mproc_shm_t *shm)
{
    uint64_t prev = 0;
    unsigned char *p = arena_start(shm);
    while (p < arena_end(shm)) {
        block_t *b = (block_t *)p;
        if (!block_sane(shm, b))
            return -ENOTRECOVERABLE;
        b->prev_size = prev;
        prev = b->size;
        p += b->size;
    }
    return 0;
}

/* The arena's lock. A process that died holding it may have been half-way
 * through an allocation: the walk is checked (and prev_size repaired)
 * before the arena is used again; if it cannot be walked, the lock is
 * released unrepaired, which makes it, and the arena, unusable for good
 * (-ENOTRECOVERABLE) rather than wrong. */
static int arena_lock(mproc_shm_t *shm)
{
    struct mproc_lock *l = &header(shm)->arena_lock;
    int rc = mproc__lock_take(l, -1);
    if (rc == -EOWNERDEAD) {
        if (arena_repair(shm) < 0) {
            mproc__lock_give(l);
            return -ENOTRECOVERABLE;
        }
        rc = mproc__lock_consistent(l);
    }
    return rc;
}

static void arena_unlock(mproc_shm_t *shm)
{
    mproc__lock_give(&header(shm)->arena_lock);
}

static block_t *find_named(mproc_shm_t *shm, const char *name)
{
    for (block_t *b = first_block(shm); b; b = next_block(shm, b))
        if (b->used && b->name[0] && strcmp(b->name, name) == 0)
            return b;
    return NULL;
}

/* The used block whose payload is at p, or NULL. */
static block_t *block_of(const mproc_shm_t *shm, const void *p)
{
    const unsigned char *q = p;
    if (!shm || q < shm->base + MPROC__SHM_HEADER + BLOCK_HDR || q >= arena_end(shm))
        return NULL;
    for (block_t *b = first_block(shm); b; b = next_block(shm, b))
        if ((const unsigned char *)b + BLOCK_HDR == q)
            return b->used ? b : NULL;
        else if ((const unsigned char *)b > q)
            break;
    return NULL;
}

static int shm_new(mproc_shm_t *shm, const char *name, mproc_obj_type_t type, uint32_t ctype,
                   size_t size, int (*init)(void *obj, void *ctx), void *ctx, int zero, void **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!shm || size == 0 || (name && !name_ok(name)))
        return -EINVAL;
    if (size > shm->total)
        return -ENOMEM;
    uint64_t need = BLOCK_HDR + ((uint64_t)size + BLOCK_ALIGN - 1) / BLOCK_ALIGN * BLOCK_ALIGN;
    int rc = arena_lock(shm);
    if (rc < 0)
        return rc;
    if (name && find_named(shm, name)) {
        arena_unlock(shm);
        return -EEXIST;
    }
    block_t *b = first_block(shm);
    for (; b; b = next_block(shm, b))
        if (!b->used && b->size >= need)
            break;
    if (!b) {
        arena_unlock(shm);
        return -ENOMEM;
    }
    unsigned char *payload = (unsigned char *)b + BLOCK_HDR;
    /* Split: the new free block is complete before the old one shrinks, so
     * a death in between leaves a walkable list (prev_size is repaired). */
    if (b->size - need >= BLOCK_HDR + BLOCK_ALIGN) {
        block_t *rest = (block_t *)((unsigned char *)b + need);
        memset(rest, 0, BLOCK_HDR);
        rest->size = b->size - need;
        rest->prev_size = need;
        rest->magic = BLOCK_MAGIC;
        block_t *after = next_block(shm, rest);
        if (after)
            after->prev_size = rest->size;
        __atomic_store_n(&b->size, need, __ATOMIC_RELEASE);
    }
    if (zero)
        memset(payload, 0, b->size - BLOCK_HDR);
    rc = init ? init(payload, ctx) : 0;
    if (rc == 0) {
        b->type = (uint32_t)type;
        b->ctype = ctype;
        b->payload = size;
        memset(b->name, 0, sizeof b->name);
        if (name)
            memcpy(b->name, name, strlen(name));
        __atomic_store_n(&b->used, 1, __ATOMIC_RELEASE);
        *out = payload;
    }
    arena_unlock(shm);
    return rc;
}

int mproc__shm_new(mproc_shm_t *shm, const char *name, mproc_obj_type_t type, uint32_t ctype,
                   size_t size, int (*init)(void *obj, void *ctx), void *ctx, void **out)
{
    return shm_new(shm, name, type, ctype, size, init, ctx, 1, out);
}

int mproc__shm_alloc_dirty(mproc_shm_t *shm, size_t size, void **out)
{
    return shm_new(shm, NULL, MPROC_OBJ_BYTES, 0, size, NULL, NULL, 0, out);
}

int mproc_shm_alloc(mproc_shm_t *shm, size_t size, const char *name, void **out)
{
    return mproc__shm_new(shm, name, MPROC_OBJ_BYTES, 0, size, NULL, NULL, out);
}

int mproc_shm_free(mproc_shm_t *shm, void *ptr)
{
    if (!shm || !ptr)
        return -EINVAL;
    int rc = arena_lock(shm);
    if (rc < 0)
        return rc;
    block_t *b = block_of(shm, ptr);
    if (!b) {
        arena_unlock(shm);
        return -EINVAL;
    }
    b->used = 0;
    b->type = 0;
    b->name[0] = '\0';
    /* Merge with the next, then the previous free block. One store each
     * joins two blocks; a stale prev_size left by a death is repaired. */
    block_t *n = next_block(shm, b);
    if (n && !n->used) {
        __atomic_store_n(&b->size, b->size + n->size, __ATOMIC_RELEASE);
        block_t *after = next_block(shm, b);
        if (after)
            after->prev_size = b->size;
    }
    /* prev_size is shared memory too: merge backwards only into a block
     * that really ends where this one starts (else leave it unmerged). */
    uint64_t before = (uint64_t)((unsigned char *)b - arena_start(shm));
    if (b->prev_size && b->prev_size <= before && b->prev_size % BLOCK_ALIGN == 0) {
        block_t *p = (block_t *)((unsigned char *)b - b->prev_size);
        if (block_sane(shm, p) && p->size == b->prev_size && !p->used) {
            __atomic_store_n(&p->size, p->size + b->size, __ATOMIC_RELEASE);
            block_t *after = next_block(shm, p);
            if (after)
                after->prev_size = p->size;
        }
    }
    arena_unlock(shm);
    return 0;
}

static int type_matches(const block_t *b, mproc_obj_type_t type)
{
    return type == MPROC_OBJ_ANY || b->type == (uint32_t)type;
}

int mproc_shm_find(mproc_shm_t *shm, const char *name, mproc_obj_type_t type, void **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!shm || !name_ok(name))
        return -EINVAL;
    int rc = arena_lock(shm);
    if (rc < 0)
        return rc;
    block_t *b = find_named(shm, name);
    if (!b)
        rc = -ENOENT;
    else if (!type_matches(b, type))
        rc = MPROC_ETYPE;
    else
        *out = (unsigned char *)b + BLOCK_HDR;
    arena_unlock(shm);
    return rc;
}

int mproc_shm_offset(const mproc_shm_t *shm, const void *ptr, uint64_t *offset)
{
    if (!shm || !ptr || !offset)
        return -EINVAL;
    const unsigned char *p = ptr;
    if (p < shm->base + MPROC__SHM_HEADER || p >= arena_end(shm))
        return -EINVAL;
    *offset = (uint64_t)(p - shm->base);
    return 0;
}

int mproc_shm_at(mproc_shm_t *shm, uint64_t offset, mproc_obj_type_t type, void **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!shm || offset >= shm->total)
        return -EINVAL;
    int rc = arena_lock(shm);
    if (rc < 0)
        return rc;
    block_t *b = block_of(shm, shm->base + offset);
    if (!b)
        rc = -EINVAL;
    else if (!type_matches(b, type))
        rc = MPROC_ETYPE;
    else
        *out = shm->base + offset;
    arena_unlock(shm);
    return rc;
}

size_t mproc_shm_object_size(const mproc_shm_t *shm, const void *ptr)
{
    if (!shm || !ptr)
        return 0;
    const unsigned char *p = ptr;
    if (p < shm->base + MPROC__SHM_HEADER + BLOCK_HDR || p >= arena_end(shm))
        return 0;
    /* Unlocked read of an immutable field of a live object. */
    const block_t *b = (const block_t *)(p - BLOCK_HDR);
    return block_sane(shm, b) && __atomic_load_n(&b->used, __ATOMIC_ACQUIRE) ? (size_t)b->payload
                                                                             : 0;
}

/* ---- typed arrays -------------------------------------------------------------- */

static size_t ctype_size(mproc_ctype_t t)
{
    switch (t) {
    case MPROC_INT8:
    case MPROC_UINT8:
        return 1;
    case MPROC_INT16:
    case MPROC_UINT16:
        return 2;
    case MPROC_INT32:
    case MPROC_UINT32:
    case MPROC_FLOAT:
        return 4;
    case MPROC_INT64:
    case MPROC_UINT64:
    case MPROC_DOUBLE:
        return 8;
    }
    return 0;
}

int mproc_array_create(mproc_shm_t *shm, const char *name, mproc_ctype_t type, size_t count,
                       void **out)
{
    size_t es = ctype_size(type);
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (es == 0 || count == 0)
        return -EINVAL;
    if (count > SIZE_MAX / es)
        return -ENOMEM;
    return mproc__shm_new(shm, name, MPROC_OBJ_ARRAY, (uint32_t)type, count * es, NULL, NULL, out);
}

int mproc_array_open(mproc_shm_t *shm, const char *name, mproc_ctype_t type, void **out,
                     size_t *count)
{
    size_t es = ctype_size(type);
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (es == 0)
        return -EINVAL;
    void *p;
    int rc = mproc_shm_find(shm, name, MPROC_OBJ_ARRAY, &p);
    if (rc < 0)
        return rc;
    const block_t *b = (const block_t *)((unsigned char *)p - BLOCK_HDR);
    if (b->ctype != (uint32_t)type)
        return MPROC_ETYPE;
    if (count)
        *count = (size_t)(b->payload / es);
    *out = p;
    return 0;
}
