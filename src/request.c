/*
 * request.c - what a parent hands to a child it does not fork itself (spawn,
 * forkserver), and how it travels: the entry as (module, offset), the
 * request codec, and length-prefixed frames that carry fds.
 *
 * Everything decoded here comes from another process: every length is
 * checked against the bytes actually present and against a fixed limit
 * before it is used, and a malformed request is MPROC_EPROTO, never a crash
 * or an allocation sized by the peer beyond those limits.
 */
#include "internal.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- entry references ----------------------------------------------------- */

typedef struct {
    uintptr_t addr;                 /* parent: the function to locate             */
    const mproc__entry_ref_t *want; /* child: the module to find       */
    mproc__entry_ref_t *ref;
    uintptr_t base; /* child: load base of the match              */
    int exec_ok;    /* the address lies in an executable segment  */
    int index, found;
} dl_search_t;

static void read_build_id(const struct dl_phdr_info *info, mproc__entry_ref_t *ref)
{
    ref->build_id_len = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE)
            continue;
        const uint8_t *p = (const uint8_t *)(info->dlpi_addr + ph->p_vaddr);
        const uint8_t *end = p + ph->p_memsz;
        while (p + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
            size_t namesz = (nh->n_namesz + 3) & ~3u, descsz = (nh->n_descsz + 3) & ~3u;
            const uint8_t *name = p + sizeof *nh, *desc = name + namesz;
            if (desc + descsz > end)
                break;
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && memcmp(name, "GNU", 4) == 0 &&
                nh->n_descsz <= MPROC__MAX_BUILD_ID) {
                ref->build_id_len = (uint8_t)nh->n_descsz;
                memcpy(ref->build_id, desc, nh->n_descsz);
                return;
            }
            p = desc + descsz;
        }
    }
}

static int in_exec_segment(const struct dl_phdr_info *info, uintptr_t addr)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X) && addr >= start &&
            addr - start < ph->p_memsz)
            return 1;
    }
    return 0;
}

static int find_by_addr(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    dl_search_t *s = data;
    int index = s->index++;
    if (!in_exec_segment(info, s->addr))
        return 0;
    mproc__entry_ref_t *ref = s->ref;
    ref->is_main = index == 0;
    ref->path = info->dlpi_name ? info->dlpi_name : "";
    ref->offset = s->addr - info->dlpi_addr;
    read_build_id(info, ref);
    s->found = 1;
    return 1;
}

int mproc__entry_ref_of(mproc_entry_fn fn, mproc__entry_ref_t *ref)
{
    memset(ref, 0, sizeof *ref);
    dl_search_t s = {.addr = (uintptr_t)fn, .ref = ref};
    dl_iterate_phdr(find_by_addr, &s);
    if (!s.found || strlen(ref->path) >= MPROC__MAX_PATH)
        return MPROC_EENTRY;
    if (!ref->is_main && ref->build_id_len == 0) {
        /* No build-id: identify the file by inode and mtime instead. */
        struct stat st;
        if (stat(ref->path, &st) < 0)
            return MPROC_EENTRY;
        ref->dev = (uint64_t)st.st_dev;
        ref->ino = (uint64_t)st.st_ino;
        ref->mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec;
    }
    return 0;
}

static int find_module(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    dl_search_t *s = data;
    int index = s->index++;
    const mproc__entry_ref_t *want = s->want;
    const char *name = info->dlpi_name ? info->dlpi_name : "";
    if (want->is_main ? index != 0 : strcmp(name, want->path) != 0)
        return 0;
    mproc__entry_ref_t have;
    memset(&have, 0, sizeof have);
    read_build_id(info, &have);
    if (have.build_id_len != want->build_id_len ||
        memcmp(have.build_id, want->build_id, want->build_id_len) != 0)
        return 1; /* found, but not the same file: found stays 0 */
    s->base = info->dlpi_addr;
    s->exec_ok = in_exec_segment(info, info->dlpi_addr + (uintptr_t)want->offset);
    s->found = 1;
    return 1;
}

static int same_file(const mproc__entry_ref_t *want)
{
    if (want->is_main || want->build_id_len)
        return 1; /* the main program is re-executed from /proc/self/exe */
    struct stat st;
    if (stat(want->path, &st) < 0)
        return 0;
    uint64_t mtime = (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec;
    return (uint64_t)st.st_dev == want->dev && (uint64_t)st.st_ino == want->ino &&
           mtime == want->mtime_ns;
}

int mproc__entry_resolve(const mproc__entry_ref_t *ref, mproc_entry_fn *fn)
{
    dl_search_t s = {.want = ref};
    dl_iterate_phdr(find_module, &s);
    if (!s.found && !ref->is_main && ref->path[0] == '/') {
        /* The parent dlopen()ed it: load the same path here. The handle is
         * kept for the life of the process, as the parent's was. */
        if (!dlopen(ref->path, RTLD_NOW | RTLD_LOCAL))
            return MPROC_EENTRY;
        s = (dl_search_t){.want = ref};
        dl_iterate_phdr(find_module, &s);
    }
    if (!s.found || !s.exec_ok || !same_file(ref))
        return MPROC_EENTRY;
    /* Converting an address to a function pointer is what dlsym does too. */
    uintptr_t addr = s.base + (uintptr_t)ref->offset;
    memcpy(fn, &addr, sizeof addr);
    return 0;
}

/* ---- the request codec ----------------------------------------------------- */

#define REQUEST_MAGIC 0x3152504du /* "MPR1" */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    int err;
} wbuf_t;

static void put(wbuf_t *w, const void *src, size_t n)
{
    if (w->err || n == 0)
        return;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n)
            cap *= 2;
        uint8_t *p = realloc(w->p, cap);
        if (!p) {
            w->err = -ENOMEM;
            return;
        }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->len, src, n);
    w->len += n;
}

static void put_u32(wbuf_t *w, uint32_t v)
{
    put(w, &v, sizeof v);
}
static void put_u64(wbuf_t *w, uint64_t v)
{
    put(w, &v, sizeof v);
}

static void put_str(wbuf_t *w, const char *s)
{
    uint32_t n = s ? (uint32_t)strlen(s) + 1 : 0; /* the NUL travels too */
    put_u32(w, n);
    put(w, s, n);
}

int mproc__request_encode(const mproc__request_t *r, void **buf, size_t *len)
{
    if (r->nfds > MPROC__MAX_FDS || r->arglen > MPROC__ARG_MAX)
        return -EINVAL;
    wbuf_t w = {0};
    put_u32(&w, REQUEST_MAGIC);
    put_u32(&w, r->type);
    put_u32(&w, r->flags);
    put_u32(&w, (uint32_t)r->ppid);
    put_u32(&w, (uint32_t)r->exit_fd);
    put_u32(&w, (uint32_t)r->tracker_fd);
    put_u32(&w, (uint32_t)r->tracker_pid);
    put_u32(&w, (uint32_t)r->pid);
    put_u32(&w, (uint32_t)r->sig);
    if (r->flags & MPROC__F_HAS_ENTRY) {
        const mproc__entry_ref_t *e = &r->entry;
        put(&w, &e->is_main, 1);
        put(&w, &e->build_id_len, 1);
        put(&w, e->build_id, e->build_id_len);
        put_str(&w, e->path);
        put_u64(&w, e->offset);
        put_u64(&w, e->dev);
        put_u64(&w, e->ino);
        put_u64(&w, e->mtime_ns);
    }
    put_str(&w, r->name);
    put_u32(&w, r->nfds);
    put(&w, r->fds, r->nfds * sizeof r->fds[0]);
    put_u64(&w, r->arglen);
    put(&w, r->arg, (size_t)r->arglen);
    if (w.err) {
        free(w.p);
        return w.err;
    }
    *buf = w.p;
    *len = w.len;
    return 0;
}

typedef struct {
    const uint8_t *p;
    size_t len, off;
    int bad;
} rbuf_t;

static const void *take(rbuf_t *r, size_t n)
{
    if (r->bad || n > r->len - r->off) {
        r->bad = 1;
        return NULL;
    }
    const void *at = r->p + r->off;
    r->off += n;
    return at;
}

static uint32_t get_u32(rbuf_t *r)
{
    uint32_t v = 0;
    const void *at = take(r, sizeof v);
    if (at)
        memcpy(&v, at, sizeof v);
    return v;
}

static uint64_t get_u64(rbuf_t *r)
{
    uint64_t v = 0;
    const void *at = take(r, sizeof v);
    if (at)
        memcpy(&v, at, sizeof v);
    return v;
}

static uint8_t get_u8(rbuf_t *r)
{
    const uint8_t *at = take(r, 1);
    return at ? *at : 0;
}

/* A NUL-terminated string of at most max bytes, without embedded NULs.
 * Absent (length 0) decodes as NULL. */
static const char *get_str(rbuf_t *r, size_t max)
{
    uint32_t n = get_u32(r);
    if (n == 0)
        return NULL;
    if (n > max + 1) {
        r->bad = 1;
        return NULL;
    }
    const char *s = take(r, n);
    if (s && memchr(s, '\0', n) != s + n - 1) {
        r->bad = 1;
        return NULL;
    }
    return s;
}

int mproc__request_decode(const void *buf, size_t len, mproc__request_t *out)
{
    rbuf_t r = {.p = buf, .len = len};
    memset(out, 0, sizeof *out);
    if (get_u32(&r) != REQUEST_MAGIC)
        return MPROC_EPROTO;
    out->type = get_u32(&r);
    out->flags = get_u32(&r);
    out->ppid = (int32_t)get_u32(&r);
    out->exit_fd = (int32_t)get_u32(&r);
    out->tracker_fd = (int32_t)get_u32(&r);
    out->tracker_pid = (int32_t)get_u32(&r);
    out->pid = (int32_t)get_u32(&r);
    out->sig = (int32_t)get_u32(&r);
    if (out->type < MPROC__REQ_CHILD || out->type > MPROC__REQ_SIGNAL)
        return MPROC_EPROTO;
    if (out->flags & MPROC__F_HAS_ENTRY) {
        mproc__entry_ref_t *e = &out->entry;
        e->is_main = get_u8(&r);
        e->build_id_len = get_u8(&r);
        if (e->build_id_len > MPROC__MAX_BUILD_ID)
            return MPROC_EPROTO;
        const void *id = take(&r, e->build_id_len);
        if (id)
            memcpy(e->build_id, id, e->build_id_len);
        e->path = get_str(&r, MPROC__MAX_PATH);
        if (!e->path)
            e->path = "";
        e->offset = get_u64(&r);
        e->dev = get_u64(&r);
        e->ino = get_u64(&r);
        e->mtime_ns = get_u64(&r);
    }
    out->name = get_str(&r, MPROC__MAX_NAME);
    out->nfds = get_u32(&r);
    if (out->nfds > MPROC__MAX_FDS)
        return MPROC_EPROTO;
    const void *fds = take(&r, out->nfds * sizeof out->fds[0]);
    if (fds)
        memcpy(out->fds, fds, out->nfds * sizeof out->fds[0]);
    for (uint32_t i = 0; i < out->nfds; i++)
        if (out->fds[i] < 0)
            return MPROC_EPROTO;
    out->arglen = get_u64(&r);
    if (out->arglen > MPROC__ARG_MAX)
        return MPROC_EPROTO;
    out->arg = out->arglen ? take(&r, (size_t)out->arglen) : NULL;
    if (r.bad || r.off != r.len)
        return MPROC_EPROTO;
    return 0;
}

/* ---- frames ---------------------------------------------------------------- */

int mproc__frame_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds)
{
    if (len > UINT32_MAX || nfds > MPROC__MAX_FDS)
        return -EMSGSIZE;
    uint32_t hdr = (uint32_t)len;
    struct iovec iov[2] = {{&hdr, sizeof hdr}, {(void *)buf, len}};
    union {
        char buf[CMSG_SPACE(sizeof(int) * MPROC__MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = len ? 2 : 1};
    if (nfds) {
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t n;
    do
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    /* A short write on a stream socket: the fds went with the first byte,
     * push the rest as plain bytes. */
    size_t sent = (size_t)n, total = sizeof hdr + len;
    if (sent < sizeof hdr) {
        int rc = mproc__write_full(sock, (char *)&hdr + sent, sizeof hdr - sent);
        if (rc < 0)
            return rc;
        sent = sizeof hdr;
    }
    if (sent < total)
        return mproc__write_full(sock, (const char *)buf + (sent - sizeof hdr), total - sent);
    return 0;
}

static void close_all(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        close(fds[i]);
}

/* Read exactly len bytes before the deadline; -ECONNRESET on EOF. */
static int read_exact(int sock, void *buf, size_t len, int64_t deadline)
{
    size_t got = 0;
    while (got < len) {
        int rc = mproc__poll1(sock, POLLIN, mproc__remaining_ms(deadline), NULL);
        if (rc < 0)
            return rc;
        if (rc == 0)
            return -ETIMEDOUT;
        ssize_t n = recv(sock, (char *)buf + got, len - got, 0);
        if (n == 0)
            return -ECONNRESET;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        got += (size_t)n;
    }
    return 0;
}

int mproc__frame_recv(int sock, size_t max, void **buf, size_t *len, int *fds, size_t maxfds,
                      size_t *nfds, int timeout_ms)
{
    int64_t deadline = mproc__deadline(timeout_ms);
    uint32_t hdr;
    union {
        char buf[CMSG_SPACE(sizeof(int) * MPROC__MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    if (maxfds > MPROC__MAX_FDS)
        maxfds = MPROC__MAX_FDS;
    *nfds = 0;
    *buf = NULL;
    *len = 0;

    ssize_t n;
    struct iovec iov = {&hdr, sizeof hdr};
    struct msghdr msg;
    for (;;) {
        int rc = mproc__poll1(sock, POLLIN, mproc__remaining_ms(deadline), NULL);
        if (rc < 0)
            return rc;
        if (rc == 0)
            return -ETIMEDOUT;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.buf;
        msg.msg_controllen = maxfds ? CMSG_SPACE(sizeof(int) * maxfds) : 0;
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n >= 0 || (errno != EINTR && errno != EAGAIN))
            break;
    }
    if (n < 0)
        return -errno;
    if (n == 0)
        return -EPIPE; /* the peer closed between frames */

    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (*nfds < maxfds)
                fds[(*nfds)++] = fd;
            else
                close(fd);
        }
    }
    int rc = 0;
    if ((size_t)n < sizeof hdr)
        rc = read_exact(sock, (char *)&hdr + n, sizeof hdr - (size_t)n, deadline);
    if (rc == 0 && hdr > max)
        rc = -EMSGSIZE;
    if (rc == 0) {
        *buf = malloc(hdr ? hdr : 1);
        if (!*buf)
            rc = -ENOMEM;
        else
            rc = read_exact(sock, *buf, hdr, deadline);
    }
    if (rc < 0) {
        free(*buf);
        *buf = NULL;
        close_all(fds, *nfds);
        *nfds = 0;
        return rc;
    }
    *len = hdr;
    if (msg.msg_flags & MSG_CTRUNC) {
        /* Some fds were dropped (our fd limit, or more than we take): the
         * frame itself was read whole, so the stream stays in step, and
         * the caller gets the payload to decide what to do. */
        close_all(fds, *nfds);
        *nfds = 0;
        return -EMFILE;
    }
    return 0;
}

#define REPLY_MAGIC 0x3150524du /* "MRP1" */

int mproc__reply_send(int sock, int32_t err, int32_t pid, const int *fds, size_t nfds)
{
    uint32_t msg[3] = {REPLY_MAGIC, (uint32_t)err, (uint32_t)pid};
    return mproc__frame_send(sock, msg, sizeof msg, fds, nfds);
}

int mproc__reply_recv(int sock, mproc__reply_t *reply, int *fds, size_t maxfds, size_t *nfds,
                      int timeout_ms)
{
    void *buf;
    size_t len;
    int rc = mproc__frame_recv(sock, 64, &buf, &len, fds, maxfds, nfds, timeout_ms);
    if (rc < 0 && rc != -EMFILE)
        return rc;
    uint32_t msg[3];
    if (len != sizeof msg) {
        free(buf);
        close_all(fds, *nfds);
        *nfds = 0;
        return MPROC_EPROTO;
    }
    memcpy(msg, buf, sizeof msg);
    free(buf);
    if (msg[0] != REPLY_MAGIC) {
        close_all(fds, *nfds);
        *nfds = 0;
        return MPROC_EPROTO;
    }
    reply->err = (int32_t)msg[1];
    reply->pid = (int32_t)msg[2];
    return rc; /* 0, or -EMFILE with the reply but without its fds */
}
