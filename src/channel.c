/*
 * channel.c - connections: whole messages, with fds, between two processes
 * over a Unix stream socket (mproc_pipe, Listener/Client).
 *
 * Framing. Every message is one frame: an 8-byte header (length, fd count,
 * magic; host order, both ends are on this machine) and the payload, sent
 * with one sendmsg whose SCM_RIGHTS rides on the first byte, i.e. on the
 * header. A stream socket may take a frame in several pieces (a signal, a
 * timeout): the rest follows with further sends. If a timed send gives up
 * with part of a frame out, the peer would see half a message: the sending
 * side is then broken for good (MPROC_EPROTO), never silently out of step.
 *
 * Read-ahead. The receiver reads into a per-connection buffer (64 KiB,
 * allocated on first use) as much as the kernel has, so a burst of small
 * messages costs one recvmsg, not two per message. A frame too large for
 * the buffer is read straight into the caller's memory (no double copy of
 * a 1 MiB message); if such a read times out, what arrived is put back
 * into the buffer (grown to fit: it holds only bytes that arrived) so the
 * next call resumes. recv_alloc grows its allocation as bytes arrive, never
 * by the length the peer claims.
 *
 * File descriptors. Received fds go to a FIFO in the handle, and a frame
 * takes its count off the front when it is delivered. The kernel attaches
 * fds to the skb that starts a frame and ends a stream recvmsg right after
 * an skb that carried fds, so one recvmsg brings at most one frame's fds,
 * and before each recvmsg the FIFO holds at most the current frame's: more
 * than MPROC_CONN_FDS_MAX queued, a truncated control message, or a header
 * claiming fds that never came is a foreign writer (MPROC_EPROTO), and
 * every queued fd is closed.
 *
 * Errors. A frame over the maximum is dropped as it arrives (the skip
 * count survives across calls) and reported at once with -EMSGSIZE; the
 * stream stays in step. EOF between frames is -EPIPE, inside one
 * -ECONNRESET (a kernel ECONNRESET only means the peer closed with bytes
 * unread on its side, so it counts as EOF too). EOF and MPROC_EPROTO are
 * sticky: every later recv returns the same, with the buffer freed and the
 * queued fds closed.
 *
 * Threads: one sender and one receiver at a time. Sending touches only fd
 * and send_err, receiving only the rest.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define FRAME_MAGIC 0x636du /* "mc" */
#define HDR 8u
#define RB_SIZE (64u << 10)
#define FDQ_CAP (2 * MPROC_CONN_FDS_MAX)
#define REF_MAGIC 0x6e6f636du /* "mcon" */
#define F_SEND 1u
#define F_RECV 2u

typedef struct {
    uint32_t len;
    uint16_t nfds;
    uint16_t magic;
} frame_hdr_t;
_Static_assert(sizeof(frame_hdr_t) == HDR, "frame header size");

typedef union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * MPROC_CONN_FDS_MAX)];
} fd_cmsg_t;

struct mproc_conn {
    int fd;
    unsigned flags; /* F_SEND, F_RECV */
    size_t max;
    int send_err; /* sticky: part of a frame went out and the rest did not */

    int recv_err;      /* sticky: -EPIPE, -ECONNRESET, MPROC_EPROTO... */
    int eof;           /* the peer's end was read; bytes may remain   */
    unsigned char *rb; /* read-ahead: rb[rpos, rend) not yet consumed */
    size_t rcap, rpos, rend;
    uint64_t skip;    /* bytes of a dropped oversize frame to come   */
    int fdq[FDQ_CAP]; /* received fds not yet handed out (a ring)    */
    size_t fdq_head, fdq_n;
};

/* Where a received message goes. */
typedef struct {
    void *buf; /* fixed buffer of cap bytes, or NULL for recv_alloc */
    size_t cap;
    void **abuf; /* recv_alloc: the allocation, on success */
    size_t *len;
    int *fds;
    size_t maxfds;
    size_t *nfds;
} sink_t;

/* ---- handles ---------------------------------------------------------------- */

static int max_of(size_t want, size_t *max)
{
    if (want == 0)
        want = MPROC_CONN_MAX_DEFAULT;
    /* The header's length is 32 bits, and HDR + max must not wrap. */
    if (want > MPROC_CONN_MAX_LIMIT || want > SIZE_MAX - 2 * HDR)
        return -EINVAL;
    *max = want;
    return 0;
}

static mproc_conn_t *conn_new(int fd, unsigned flags, size_t max)
{
    mproc_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = fd;
    c->flags = flags;
    c->max = max;
    return c;
}

static void fdq_clear(mproc_conn_t *c)
{
    while (c->fdq_n) {
        close(c->fdq[c->fdq_head]);
        c->fdq_head = (c->fdq_head + 1) % FDQ_CAP;
        c->fdq_n--;
    }
}

static int fdq_pop(mproc_conn_t *c)
{
    int fd = c->fdq[c->fdq_head];
    c->fdq_head = (c->fdq_head + 1) % FDQ_CAP;
    c->fdq_n--;
    return fd;
}

static void rb_free(mproc_conn_t *c)
{
    free(c->rb);
    c->rb = NULL;
    c->rcap = c->rpos = c->rend = 0;
}

/* The receiving side is done for: every later recv returns code. */
static int fail(mproc_conn_t *c, int code)
{
    c->recv_err = code;
    c->skip = 0;
    fdq_clear(c);
    rb_free(c);
    return code;
}

int mproc_pipe(mproc_conn_t **a, mproc_conn_t **b, int duplex, const mproc_conn_opts_t *opts)
{
    if (!a || !b)
        return -EINVAL;
    *a = *b = NULL;
    size_t max;
    int rc = max_of(opts ? opts->max_message : 0, &max);
    if (rc < 0)
        return rc;
    /* One-way pairs are a socketpair too: the direction is the handle's to
     * enforce. Shutting a direction down at the socket would make the
     * reader's end look closed to a peer that polls it. */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    *a = conn_new(sv[0], duplex ? F_SEND | F_RECV : F_RECV, max);
    *b = conn_new(sv[1], duplex ? F_SEND | F_RECV : F_SEND, max);
    if (!*a || !*b) {
        free(*a);
        free(*b);
        *a = *b = NULL;
        close(sv[0]);
        close(sv[1]);
        return -ENOMEM;
    }
    return 0;
}

int mproc_conn_fd(const mproc_conn_t *c)
{
    return c ? c->fd : -EINVAL;
}

size_t mproc_conn_max_message(const mproc_conn_t *c)
{
    return c ? c->max : 0;
}

int mproc_conn_close(mproc_conn_t *c)
{
    if (!c)
        return 0;
    fdq_clear(c);
    free(c->rb);
    close(c->fd);
    free(c);
    return 0;
}

/* ---- sending ---------------------------------------------------------------- */

/* Drop the first n bytes of the iovec array. */
static void iov_advance(struct msghdr *mh, size_t n)
{
    while (n) {
        struct iovec *v = mh->msg_iov;
        if (n < v->iov_len) {
            v->iov_base = (char *)v->iov_base + n;
            v->iov_len -= n;
            return;
        }
        n -= v->iov_len;
        mh->msg_iov++;
        mh->msg_iovlen--;
    }
}

int mproc_conn_send_fds(mproc_conn_t *c, const void *buf, size_t len, const int *fds, size_t nfds,
                        int timeout_ms)
{
    if (!c || (len && !buf) || (nfds && !fds) || nfds > MPROC_CONN_FDS_MAX)
        return -EINVAL;
    if (!(c->flags & F_SEND))
        return -EBADF;
    if (c->send_err)
        return c->send_err;
    if (len > c->max)
        return -EMSGSIZE;

    frame_hdr_t h = {.len = (uint32_t)len, .nfds = (uint16_t)nfds, .magic = FRAME_MAGIC};
    struct iovec iov[2] = {{&h, HDR}, {(void *)buf, len}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = len ? 2 : 1};
    fd_cmsg_t u;
    if (nfds) {
        memset(&u, 0, sizeof u);
        mh.msg_control = u.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }

    /* Forever: a blocking sendmsg takes the whole frame (short only after
     * a signal). With a timeout: MSG_DONTWAIT, and poll only when full. */
    int64_t deadline = mproc__deadline(timeout_ms);
    int flags = MSG_NOSIGNAL | (timeout_ms >= 0 ? MSG_DONTWAIT : 0);
    size_t total = HDR + len, sent = 0;
    for (;;) {
        ssize_t n = sendmsg(c->fd, &mh, flags);
        if (n > 0) {
            sent += (size_t)n;
            if (sent == total)
                return 0;
            /* The fds went with the first byte. */
            mh.msg_control = NULL;
            mh.msg_controllen = 0;
            iov_advance(&mh, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            int err = errno == ECONNRESET ? -EPIPE : -errno;
            if (sent)
                c->send_err = err == -EPIPE ? -EPIPE : MPROC_EPROTO;
            return err;
        }
        int left = mproc__remaining_ms(deadline);
        if (left != 0) {
            int pr = mproc__poll1(c->fd, POLLOUT, left, NULL);
            if (pr > 0)
                continue;
            if (pr < 0) {
                if (sent)
                    c->send_err = MPROC_EPROTO;
                return pr;
            }
        }
        if (sent)
            c->send_err = MPROC_EPROTO;
        return -ETIMEDOUT;
    }
}

int mproc_conn_send(mproc_conn_t *c, const void *buf, size_t len, int timeout_ms)
{
    return mproc_conn_send_fds(c, buf, len, NULL, 0, timeout_ms);
}

/* ---- receiving: the byte source --------------------------------------------- */

/* Queue the fds a recvmsg brought. MPROC_EPROTO (all closed) when they
 * were cut short or would overflow the queue. */
static int take_fds(mproc_conn_t *c, struct msghdr *mh)
{
    int bad = (mh->msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
            if (c->fdq_n == FDQ_CAP) {
                close(fd);
                bad = 1;
                continue;
            }
            c->fdq[(c->fdq_head + c->fdq_n) % FDQ_CAP] = fd;
            c->fdq_n++;
        }
    }
    return bad ? fail(c, MPROC_EPROTO) : 0;
}

/*
 * One recvmsg into p[0, n) (n > 0): bytes read, 0 at the peer's end, or a
 * negative error (-ETIMEDOUT once the deadline passed; a sticky one if the
 * fds were malformed). Forever is a plain blocking recvmsg; with a
 * deadline, MSG_DONTWAIT first and poll only when there is nothing.
 */
static ssize_t rd(mproc_conn_t *c, void *p, size_t n, int64_t deadline, int waitall)
{
    if (c->fdq_n > MPROC_CONN_FDS_MAX)
        return fail(c, MPROC_EPROTO); /* more fds than a frame can take */
    for (;;) {
        fd_cmsg_t u;
        struct iovec iov = {p, n};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
        int flags = MSG_CMSG_CLOEXEC;
        if (deadline >= 0)
            flags |= MSG_DONTWAIT;
        else if (waitall)
            flags |= MSG_WAITALL;
        ssize_t r = recvmsg(c->fd, &mh, flags);
        if (r >= 0) {
            int rc = mh.msg_controllen ? take_fds(c, &mh) : 0;
            return rc < 0 ? rc : r;
        }
        if (errno == EINTR)
            continue;
        if (errno == ECONNRESET)
            return 0; /* the peer closed with bytes unread on its side */
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int left = mproc__remaining_ms(deadline);
        if (left == 0)
            return -ETIMEDOUT;
        int pr = mproc__poll1(c->fd, POLLIN, left, NULL);
        if (pr < 0)
            return pr;
        if (pr == 0)
            return -ETIMEDOUT;
    }
}

/*
 * Make the read-ahead buffer able to take more bytes toward `need`
 * buffered (the caller has fewer). It grows only when full, at most
 * doubling: its size follows the bytes that arrived, not a claimed length.
 */
static int make_room(mproc_conn_t *c, size_t need)
{
    size_t avail = c->rend - c->rpos;
    if (c->rpos && (avail == 0 || c->rcap - c->rpos < need)) {
        memmove(c->rb, c->rb + c->rpos, avail);
        c->rpos = 0;
        c->rend = avail;
    }
    if (c->rend < c->rcap)
        return 0;
    size_t ncap = !c->rcap ? RB_SIZE : (need < c->rcap * 2 ? need : c->rcap * 2);
    if (ncap < RB_SIZE)
        ncap = RB_SIZE;
    unsigned char *nb = realloc(c->rb, ncap);
    if (!nb)
        return -ENOMEM;
    c->rb = nb;
    c->rcap = ncap;
    return 0;
}

/* Read ahead until need bytes are buffered: 0, 1 at the peer's end (some
 * may be buffered still), or a negative error. */
static int ensure(mproc_conn_t *c, size_t need, int64_t deadline)
{
    while (c->rend - c->rpos < need) {
        if (c->eof)
            return 1;
        int rc = make_room(c, need);
        if (rc < 0)
            return rc;
        ssize_t n = rd(c, c->rb + c->rend, c->rcap - c->rend, deadline, 0);
        if (n < 0)
            return (int)n;
        if (n == 0) {
            c->eof = 1;
            return 1;
        }
        c->rend += (size_t)n;
    }
    return 0;
}

/* A consumed buffer goes back to its start, and to its normal size if a
 * big frame had grown it. */
static void consumed(mproc_conn_t *c)
{
    if (c->rpos != c->rend)
        return;
    c->rpos = c->rend = 0;
    if (c->rcap > RB_SIZE)
        rb_free(c);
}

/* Discard what is left of a dropped oversize frame. */
static int skip_dropped(mproc_conn_t *c, int64_t deadline)
{
    while (c->skip) {
        size_t avail = c->rend - c->rpos;
        if (avail) {
            size_t k = avail < c->skip ? avail : (size_t)c->skip;
            c->rpos += k;
            c->skip -= k;
            consumed(c);
            continue;
        }
        int rc = ensure(c, 1, deadline);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* The peer's end was reached with no whole frame buffered. */
static int at_eof(mproc_conn_t *c)
{
    return fail(c, c->rend == c->rpos && !c->skip ? -EPIPE : -ECONNRESET);
}

/* ---- receiving: frames ------------------------------------------------------ */

static void deliver_fds(mproc_conn_t *c, unsigned n, const sink_t *s)
{
    size_t k = 0;
    for (unsigned i = 0; i < n; i++) {
        int fd = fdq_pop(c);
        if (k < s->maxfds)
            s->fds[k++] = fd;
        else
            close(fd);
    }
    if (s->nfds)
        *s->nfds = k;
}

/* Parse the buffered header: 0, or MPROC_EPROTO (sticky). */
static int header(mproc_conn_t *c, frame_hdr_t *h)
{
    memcpy(h, c->rb + c->rpos, HDR);
    if (h->magic != FRAME_MAGIC || h->nfds > MPROC_CONN_FDS_MAX)
        return fail(c, MPROC_EPROTO);
    return 0;
}

/* Put a frame's header and the got bytes of its payload (read straight
 * into dst) back into the empty buffer, so the next call resumes. */
static int save_partial(mproc_conn_t *c, const frame_hdr_t *h, const void *dst, size_t got)
{
    if (c->rcap < HDR + got) {
        unsigned char *nb = realloc(c->rb, HDR + got);
        if (!nb)
            return fail(c, -ENOMEM); /* the bytes are lost: out of step */
        c->rb = nb;
        c->rcap = HDR + got;
    }
    memcpy(c->rb, h, HDR);
    memcpy(c->rb + HDR, dst, got);
    c->rpos = 0;
    c->rend = HDR + got;
    return 0;
}

/* A frame larger than the buffer: the payload goes straight to the
 * caller's buffer, or to an allocation that grows as bytes arrive. */
static int recv_direct(mproc_conn_t *c, const frame_hdr_t *h, const sink_t *s, int64_t deadline)
{
    size_t len = h->len, got = c->rend - c->rpos - HDR;
    unsigned char *dst = s->buf;
    size_t dcap = len;
    if (!s->buf) {
        dcap = got > RB_SIZE ? got : RB_SIZE;
        if (dcap > len)
            dcap = len;
        if (!(dst = malloc(dcap)))
            return -ENOMEM;
    }
    memcpy(dst, c->rb + c->rpos + HDR, got);
    c->rpos = c->rend = 0; /* every buffered byte was this frame's */
    int rc = 0;
    while (got < len) {
        if (got == dcap) {
            size_t ncap = dcap * 2 < len ? dcap * 2 : len;
            unsigned char *nd = realloc(dst, ncap);
            if (!nd) {
                rc = -ENOMEM;
                break;
            }
            dst = nd;
            dcap = ncap;
        }
        ssize_t n = rd(c, dst + got, dcap - got, deadline, 1);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n == 0) {
            c->eof = 1;
            rc = fail(c, -ECONNRESET);
        } else {
            rc = (int)n;
        }
        break;
    }
    if (rc < 0) {
        if (!c->recv_err) {
            int sr = save_partial(c, h, dst, got);
            rc = sr < 0 ? sr : rc;
        }
        if (!s->buf)
            free(dst);
        return rc;
    }
    consumed(c);
    deliver_fds(c, h->nfds, s);
    if (!s->buf)
        *s->abuf = dst;
    return 0;
}

static int recv_frame(mproc_conn_t *c, const sink_t *s, int timeout_ms)
{
    if (c->recv_err)
        return c->recv_err;
    int64_t deadline = mproc__deadline(timeout_ms);
    int rc = skip_dropped(c, deadline);
    if (rc == 0)
        rc = ensure(c, HDR, deadline);
    if (rc != 0)
        return rc < 0 ? rc : at_eof(c);

    frame_hdr_t h;
    if ((rc = header(c, &h)) < 0)
        return rc;
    if (c->fdq_n < h.nfds)
        return fail(c, MPROC_EPROTO); /* fds arrive with the header */
    *s->len = h.len;
    if (h.len > c->max) {
        /* Drop it as it arrives; the caller hears at once. */
        for (unsigned i = 0; i < h.nfds; i++)
            close(fdq_pop(c));
        c->rpos += HDR;
        c->skip = h.len;
        size_t k = c->rend - c->rpos < h.len ? c->rend - c->rpos : h.len;
        c->rpos += k; /* what is here already */
        c->skip -= k;
        consumed(c);
        return -EMSGSIZE;
    }
    if (s->buf && s->cap < h.len)
        return -EMSGSIZE; /* it stays queued */

    size_t need = HDR + (size_t)h.len;
    if (need > (c->rcap > RB_SIZE ? c->rcap : RB_SIZE) && c->rend - c->rpos < need)
        return recv_direct(c, &h, s, deadline);
    rc = ensure(c, need, deadline);
    if (rc != 0)
        return rc < 0 ? rc : at_eof(c);
    void *dst = s->buf;
    if (!dst && !(dst = malloc(h.len ? h.len : 1)))
        return -ENOMEM;
    memcpy(dst, c->rb + c->rpos + HDR, h.len);
    c->rpos += need;
    consumed(c);
    deliver_fds(c, h.nfds, s);
    if (!s->buf)
        *s->abuf = dst;
    return 0;
}

static int recv_check(mproc_conn_t *c)
{
    if (!c)
        return -EINVAL;
    return c->flags & F_RECV ? 0 : -EBADF;
}

int mproc_conn_recv_fds(mproc_conn_t *c, void *buf, size_t cap, size_t *len, int *fds,
                        size_t maxfds, size_t *nfds, int timeout_ms)
{
    if (nfds)
        *nfds = 0;
    if (!len || (cap && !buf) || (maxfds && (!fds || !nfds)))
        return -EINVAL;
    int rc = recv_check(c);
    if (rc < 0)
        return rc;
    static unsigned char none; /* a valid destination for a 0-byte cap */
    sink_t s = {.buf = buf ? buf : &none,
                .cap = cap,
                .len = len,
                .fds = fds,
                .maxfds = fds ? maxfds : 0,
                .nfds = nfds};
    return recv_frame(c, &s, timeout_ms);
}

int mproc_conn_recv(mproc_conn_t *c, void *buf, size_t cap, size_t *len, int timeout_ms)
{
    return mproc_conn_recv_fds(c, buf, cap, len, NULL, 0, NULL, timeout_ms);
}

int mproc_conn_recv_alloc(mproc_conn_t *c, void **buf, size_t *len, int timeout_ms)
{
    if (!buf || !len)
        return -EINVAL;
    *buf = NULL;
    int rc = recv_check(c);
    if (rc < 0)
        return rc;
    sink_t s = {.abuf = buf, .len = len};
    return recv_frame(c, &s, timeout_ms);
}

int mproc_conn_poll(mproc_conn_t *c, int timeout_ms)
{
    int rc = recv_check(c);
    if (rc < 0)
        return rc;
    if (c->recv_err)
        return 1;
    int64_t deadline = mproc__deadline(timeout_ms);
    rc = skip_dropped(c, deadline);
    if (rc == 0)
        rc = ensure(c, HDR, deadline);
    if (rc == 0) {
        frame_hdr_t h;
        memcpy(&h, c->rb + c->rpos, HDR);
        /* Whatever makes recv answer at once without the payload (a bad
         * header, missing fds, an oversize frame) is "ready" too. */
        if (h.magic != FRAME_MAGIC || h.nfds > MPROC_CONN_FDS_MAX || c->fdq_n < h.nfds ||
            h.len > c->max)
            return 1;
        rc = ensure(c, HDR + (size_t)h.len, deadline);
    }
    if (rc == 0 || rc == 1)
        return 1;
    if (rc == -ETIMEDOUT)
        return 0;
    return c->recv_err ? 1 : rc;
}

/* ---- handing a connection to a child ----------------------------------------- */

int mproc_conn_ref(const mproc_conn_t *c, mproc_conn_ref_t *ref)
{
    if (!c || !ref)
        return -EINVAL;
    struct stat st;
    if (fstat(c->fd, &st) < 0)
        return -errno;
    memset(ref, 0, sizeof *ref);
    ref->magic = REF_MAGIC;
    ref->fd = c->fd;
    ref->flags = c->flags;
    ref->max_message = (uint32_t)c->max;
    ref->ino = (uint64_t)st.st_ino;
    return 0;
}

int mproc_process_pass_conn(mproc_process_t *p, const mproc_conn_t *c)
{
    if (!c)
        return -EINVAL;
    return mproc_process_pass_fd(p, c->fd);
}

int mproc_conn_attach(mproc_conn_t **out, const mproc_conn_ref_t *ref)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!ref || ref->magic != REF_MAGIC || ref->fd < 0 || !ref->flags ||
        (ref->flags & ~(F_SEND | F_RECV)))
        return -EINVAL;
    size_t max;
    int rc = max_of(ref->max_message, &max);
    if (rc < 0)
        return rc;
    if (fcntl(ref->fd, F_GETFD) < 0)
        return -EBADF; /* not passed */
    struct stat st;
    int type = 0;
    socklen_t tlen = sizeof type;
    if (fstat(ref->fd, &st) < 0)
        return -errno;
    if (!S_ISSOCK(st.st_mode) || (uint64_t)st.st_ino != ref->ino ||
        getsockopt(ref->fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_STREAM)
        return MPROC_ETYPE;
    /* A passed fd arrives without FD_CLOEXEC. */
    if ((rc = mproc__set_cloexec(ref->fd, 1)) < 0)
        return rc;
    if (!(*out = conn_new(ref->fd, ref->flags, max)))
        return -ENOMEM;
    return 0;
}

/* ---- listener and client ----------------------------------------------------- */

struct mproc_listener {
    int fd;
    pid_t owner; /* only the creating process unlinks            */
    char *path;  /* the socket                                   */
    char *dir;   /* the private directory we made, or NULL       */
    dev_t dev;   /* the socket file we bound, to unlink only it  */
    ino_t ino;
    size_t max;
    int (*allow)(void *ctx, pid_t pid, uid_t uid, gid_t gid);
    void *allow_ctx;
};

static int fill_addr(struct sockaddr_un *sa, const char *path)
{
    if (!path || !path[0])
        return -EINVAL; /* never the abstract namespace (P12) */
    size_t n = strlen(path);
    if (n >= sizeof sa->sun_path)
        return -ENAMETOOLONG;
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, path, n + 1);
    return 0;
}

/* $XDG_RUNTIME_DIR if it is a directory of ours nobody else can write
 * (and short enough for a socket path), else /tmp. */
static const char *private_base(void)
{
    const char *x = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    struct sockaddr_un sa;
    if (x && x[0] == '/' && strlen(x) + sizeof "/mproc-XXXXXX/listener" <= sizeof sa.sun_path &&
        stat(x, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid() &&
        !(st.st_mode & (S_IWGRP | S_IWOTH)))
        return x;
    return "/tmp";
}

static int listener_paths(mproc_listener_t *l, const char *path)
{
    struct sockaddr_un sa;
    if (path) {
        int rc = fill_addr(&sa, path);
        if (rc < 0)
            return rc;
        return (l->path = strdup(path)) ? 0 : -ENOMEM;
    }
    const char *base = private_base();
    size_t n = strlen(base) + sizeof "/mproc-XXXXXX/listener";
    if (n > sizeof sa.sun_path)
        return -ENAMETOOLONG;
    l->dir = malloc(n);
    l->path = malloc(n);
    if (!l->dir || !l->path)
        return -ENOMEM;
    snprintf(l->dir, n, "%s/mproc-XXXXXX", base);
    if (!mkdtemp(l->dir)) { /* 0700, an unpredictable name */
        int err = -errno;
        free(l->dir);
        l->dir = NULL;
        return err;
    }
    snprintf(l->path, n, "%s/listener", l->dir);
    return 0;
}

static int listener_bind(mproc_listener_t *l, int backlog)
{
    struct sockaddr_un sa;
    int rc = fill_addr(&sa, l->path);
    if (rc < 0)
        return rc;
    struct stat st;
    if (lstat(l->path, &st) == 0)
        return -EADDRINUSE;
    l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (l->fd < 0)
        return -errno;
    /* Linux creates the socket file with the socket inode's mode (less
     * the umask): 0600 from the start, not after a window. */
    if (fchmod(l->fd, 0600) < 0)
        return -errno;
    if (bind(l->fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return -errno;
    if (lstat(l->path, &st) < 0)
        return -errno;
    l->dev = st.st_dev;
    l->ino = st.st_ino;
    /* No chmod by path after bind: in a directory others can write, the
     * name could be a symlink by then. The fchmod above already holds. */
    if (listen(l->fd, backlog) < 0)
        return -errno;
    return 0;
}

/* Remove the socket file if it is still the one we bound. */
static void listener_unlink(mproc_listener_t *l)
{
    struct stat st;
    if (l->ino && lstat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
        unlink(l->path);
    if (l->dir)
        rmdir(l->dir);
}

static void listener_free(mproc_listener_t *l)
{
    if (l->fd >= 0)
        close(l->fd);
    if (getpid() == l->owner)
        listener_unlink(l);
    free(l->path);
    free(l->dir);
    free(l);
}

int mproc_listener_create(mproc_listener_t **out, const mproc_listener_opts_t *opts)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    mproc_listener_opts_t none = {0};
    if (!opts)
        opts = &none;
    if (opts->backlog < 0)
        return -EINVAL;
    mproc_listener_t *l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    l->fd = -1;
    l->owner = getpid();
    l->allow = opts->allow;
    l->allow_ctx = opts->allow_ctx;
    int rc = max_of(opts->max_message, &l->max);
    if (rc == 0)
        rc = listener_paths(l, opts->path);
    if (rc == 0)
        rc = listener_bind(l, opts->backlog ? opts->backlog : 128);
    if (rc < 0) {
        listener_free(l);
        return rc;
    }
    *out = l;
    return 0;
}

const char *mproc_listener_path(const mproc_listener_t *l)
{
    return l ? l->path : NULL;
}

int mproc_listener_fd(const mproc_listener_t *l)
{
    return l ? l->fd : -EINVAL;
}

static int peer_allowed(const mproc_listener_t *l, int fd)
{
    struct ucred cr;
    socklen_t n = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &n) < 0)
        return 0;
    if (l->allow)
        return l->allow(l->allow_ctx, cr.pid, cr.uid, cr.gid) != 0;
    return cr.uid == geteuid();
}

int mproc_listener_accept(mproc_listener_t *l, mproc_conn_t **out, int timeout_ms)
{
    if (!l || !out)
        return -EINVAL;
    *out = NULL;
    int64_t deadline = mproc__deadline(timeout_ms);
    for (;;) {
        /* Accepted sockets are blocking (not inherited from the listener). */
        int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            if (!peer_allowed(l, fd)) {
                close(fd); /* before any byte is read */
                continue;
            }
            if (!(*out = conn_new(fd, F_SEND | F_RECV, l->max))) {
                close(fd);
                return -ENOMEM;
            }
            return 0;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int left = mproc__remaining_ms(deadline);
        if (left == 0)
            return -ETIMEDOUT;
        int pr = mproc__poll1(l->fd, POLLIN, left, NULL);
        if (pr < 0)
            return pr;
        if (pr == 0)
            return -ETIMEDOUT;
    }
}

int mproc_listener_close(mproc_listener_t *l)
{
    if (l)
        listener_free(l);
    return 0;
}

/*
 * connect() on a Unix stream socket with a full backlog: non-blocking it
 * fails with EAGAIN at once, and poll(POLLOUT) cannot tell when room
 * appears (an unconnected socket is always "writable"). A blocking
 * connect waits for room in the kernel for up to SO_SNDTIMEO: that is the
 * timeout, exact and without a retry loop.
 */
static int connect_within(int fd, const struct sockaddr_un *sa, int timeout_ms)
{
    int64_t deadline = mproc__deadline(timeout_ms);
    for (;;) {
        int left = mproc__remaining_ms(deadline);
        struct timeval tv = {0, 0};
        if (left > 0) {
            tv.tv_sec = left / 1000;
            tv.tv_usec = (left % 1000) * 1000;
        }
        if (left == 0 && fcntl(fd, F_SETFL, O_NONBLOCK) < 0)
            return -errno;
        if (left != 0 && setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
            return -errno;
        int r = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
        int err = r < 0 ? errno : 0;
        if (err == EINTR)
            continue;
        /* Back to plain blocking: timed sends bring their own deadline. */
        struct timeval zero = {0, 0};
        if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof zero) < 0 ||
            fcntl(fd, F_SETFL, 0) < 0)
            return -errno;
        if (err == EAGAIN || err == EINPROGRESS)
            return -ETIMEDOUT;
        return -err;
    }
}

int mproc_client_connect(mproc_conn_t **out, const char *path, const mproc_conn_opts_t *opts,
                         int timeout_ms)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    size_t max;
    struct sockaddr_un sa;
    int rc = max_of(opts ? opts->max_message : 0, &max);
    if (rc == 0)
        rc = fill_addr(&sa, path);
    if (rc < 0)
        return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    rc = connect_within(fd, &sa, timeout_ms);
    if (rc == 0) {
        /* The listener's credentials, as of its listen(): ours or root. */
        struct ucred cr;
        socklen_t n = sizeof cr;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &n) < 0)
            rc = -errno;
        else if (cr.uid != geteuid() && cr.uid != 0)
            rc = -EACCES;
    }
    if (rc == 0 && !(*out = conn_new(fd, F_SEND | F_RECV, max)))
        rc = -ENOMEM;
    if (rc < 0)
        close(fd);
    return rc;
}
