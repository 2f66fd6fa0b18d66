/*
 * bench_conn - connections: the round trip of a small message between two
 * processes, and one-way throughput of 64 B, 4 KiB and 1 MiB messages.
 *
 *   bench_conn <mode> <iterations>
 *
 * Ping-pong modes: the parent and one forked child bounce a 64-byte message
 * <iterations> times (the parent sends, the child receives and sends it
 * back), in 20 timed batches after an untimed warm-up batch; a sample is a
 * batch's time per round trip, in microseconds. Parent and child are pinned
 * to two different CPUs (bench_pin_cpu): every round trip is two cross-CPU
 * wake-ups, as in bench_sync's ping-pong.
 *
 *   mproc-pingpong            a duplex mproc_pipe (a Unix stream socket
 *                             pair), mproc_conn_send / mproc_conn_recv with
 *                             MPROC_FOREVER; the child is an mproc_process
 *                             (MPROC_START_FORK) using its inherited end
 *   raw-pipe-pingpong         two pipe()s, one each way: write(64) /
 *                             read until 64 bytes, fork() child
 *   raw-socketpair-pingpong   one socketpair(AF_UNIX, SOCK_STREAM), the
 *                             same writes and reads
 *
 * Stream modes: a forked child (the writer, pinned to one CPU) sends
 * messages of one size to the parent (the reader, pinned to another) as
 * fast as it can. <iterations> messages in all, in 5 timed rounds after an
 * untimed warm-up round; each round starts when the parent sends the
 * writer a one-byte "go" message the other way and ends when the parent has
 * received the round's last message. A sample is a round's messages per
 * second (and the same as MB/s, 10^6 bytes of payload per second).
 *
 *   mproc-stream-<size>   mproc_conn_send / mproc_conn_recv (FOREVER) of
 *                         <size>-byte messages into a <size>-byte buffer
 *   raw-stream-<size>     a socketpair(AF_UNIX, SOCK_STREAM): the writer
 *                         write()s the same <size> bytes per message (no
 *                         framing), the reader read()s until it has exactly
 *                         <size> bytes per message
 *
 * with <size> one of 64, 4k, 1m.
 *
 * Output: one line,
 *
 *   median_us=... p10_us=... p90_us=... n=<iterations>                (ping-pong)
 *   median_per_s=... p10_per_s=... p90_per_s=...
 *       median_mb_s=... p10_mb_s=... p90_mb_s=... size=<bytes> n=...   (stream)
 *
 * Any error is printed to stderr and ends the program with status 1.
 */
#define _GNU_SOURCE /* MSG_NOSIGNAL */

#include "bench_util.h"
#include "mproc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define PINGPONG_BATCHES 20
#define PINGPONG_SIZE 64
#define STREAM_ROUNDS 5

/* ------------------------------------------------------------------------ */
/* Raw byte I/O                                                             */
/* ------------------------------------------------------------------------ */

/* Write all of buf; 0, or -1 with errno set. */
static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t k = write(fd, p, len);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

/* Read exactly len bytes; 0, or -1 (errno set; EPIPE at end of file). */
static int read_exact(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t k = read(fd, p, len);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (k == 0) {
            errno = EPIPE;
            return -1;
        }
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* State shared with the (forked) child through fork                        */
/* ------------------------------------------------------------------------ */

static mproc_conn_t *m_parent, *m_child;   /* mproc: the two ends           */
static int parent_rd = -1, parent_wr = -1; /* raw: the parent's fds       */
static int child_rd = -1, child_wr = -1;   /* raw: the child's fds        */

static long child_total;                   /* ping-pong: round trips the child answers      */
static size_t msg_size;                    /* stream: bytes per message                     */
static long round_msgs[STREAM_ROUNDS + 1]; /* stream: warm-up, then rounds */

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* Close one side's ends: its connection (mproc), or its fds (raw; one fd
 * for both directions with a socketpair). */
static void close_side(int is_mproc, mproc_conn_t **m, int *rd, int *wr)
{
    if (is_mproc) {
        int rc = mproc_conn_close(*m);
        if (rc < 0)
            die_mproc("mproc_conn_close", rc);
        *m = NULL;
    } else if (*rd == *wr) {
        close_fd(rd);
        *wr = -1;
    } else {
        close_fd(rd);
        close_fd(wr);
    }
}

/* In the child: drop the parent's ends, so that the parent's death (or
 * its closing) shows up here as end of file. */
static void child_drop_parent_ends(int is_mproc)
{
    close_side(is_mproc, &m_parent, &parent_rd, &parent_wr);
}

/* In the parent, once the child runs: drop the child's ends. */
static void parent_drop_child_ends(int is_mproc)
{
    close_side(is_mproc, &m_child, &child_rd, &child_wr);
}

/* ------------------------------------------------------------------------ */
/* Ping-pong                                                                */
/* ------------------------------------------------------------------------ */

static int mproc_pong(const void *arg, size_t len)
{
    char buf[PINGPONG_SIZE];
    size_t got;
    (void)arg;
    (void)len;

    child_drop_parent_ends(1);
    bench_pin_cpu(1);
    for (long i = 0; i < child_total; i++) {
        if (mproc_conn_recv(m_child, buf, sizeof buf, &got, MPROC_FOREVER) != 0 ||
            got != sizeof buf)
            return 1;
        if (mproc_conn_send(m_child, buf, got, MPROC_FOREVER) != 0)
            return 1;
    }
    return 0;
}

static int raw_pong(void *arg)
{
    char buf[PINGPONG_SIZE];
    (void)arg;

    child_drop_parent_ends(0);
    bench_pin_cpu(1);
    for (long i = 0; i < child_total; i++) {
        if (read_exact(child_rd, buf, sizeof buf) < 0 || write_all(child_wr, buf, sizeof buf) < 0)
            return 1;
    }
    return 0;
}

/* n round trips from the parent; 0, or 1 on an error. */
static int ping(int is_mproc, long n, char *buf)
{
    for (long i = 0; i < n; i++) {
        buf[0] = (char)i;
        if (is_mproc) {
            size_t got;
            if (mproc_conn_send(m_parent, buf, PINGPONG_SIZE, MPROC_FOREVER) != 0)
                return 1;
            if (mproc_conn_recv(m_parent, buf, PINGPONG_SIZE, &got, MPROC_FOREVER) != 0 ||
                got != PINGPONG_SIZE)
                return 1;
        } else {
            if (write_all(parent_wr, buf, PINGPONG_SIZE) < 0 ||
                read_exact(parent_rd, buf, PINGPONG_SIZE) < 0)
                return 1;
        }
        if (buf[0] != (char)i)
            return 1;
    }
    return 0;
}

typedef enum { T_MPROC, T_PIPE, T_SOCKETPAIR } transport_t;

static void make_channel(transport_t t)
{
    int rc, sv[2], p1[2], p2[2];

    switch (t) {
    case T_MPROC:
        rc = mproc_pipe(&m_parent, &m_child, 1, NULL);
        if (rc < 0)
            die_mproc("mproc_pipe", rc);
        break;
    case T_PIPE:
        if (pipe(p1) < 0 || pipe(p2) < 0)
            die_errno("pipe");
        parent_wr = p1[1];
        child_rd = p1[0];
        child_wr = p2[1];
        parent_rd = p2[0];
        break;
    case T_SOCKETPAIR:
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
            die_errno("socketpair");
        parent_rd = parent_wr = sv[0];
        child_rd = child_wr = sv[1];
        break;
    }
}

static void close_channel(int is_mproc)
{
    close_side(is_mproc, &m_parent, &parent_rd, &parent_wr);
}

static void run_pingpong(const char *name, transport_t t, long iterations)
{
    double samples[PINGPONG_BATCHES];
    char buf[PINGPONG_SIZE];
    long nbatch = iterations < PINGPONG_BATCHES ? iterations : PINGPONG_BATCHES;
    long warm = iterations / nbatch;
    int is_mproc = t == T_MPROC;
    mproc_process_t *child = NULL;
    pid_t pid = -1;

    memset(buf, 'x', sizeof buf);
    child_total = warm + iterations;
    make_channel(t);
    bench_pin_cpu(0);
    if (is_mproc)
        child = bench_start_child(mproc_pong, NULL, 0);
    else
        pid = bench_fork(raw_pong, NULL);
    parent_drop_child_ends(is_mproc);

    if (ping(is_mproc, warm, buf))
        die(name, "a send or receive failed");
    for (long b = 0; b < nbatch; b++) {
        long n = iterations / nbatch + (b < iterations % nbatch);
        double t0 = now_us();
        if (ping(is_mproc, n, buf))
            die(name, "a send or receive failed");
        samples[b] = (now_us() - t0) / (double)n;
    }

    if (is_mproc)
        bench_join_child(child, name);
    else
        bench_wait(pid, name);
    close_channel(is_mproc);
    print_quantiles("us", samples, (size_t)nbatch, iterations);
}

/* ------------------------------------------------------------------------ */
/* Stream                                                                   */
/* ------------------------------------------------------------------------ */

/* The writer: per round, wait for "go", then send the round's messages. */
static int stream_writer(int is_mproc)
{
    char go;
    char *buf = malloc(msg_size);

    if (buf == NULL)
        return 1;
    memset(buf, 'w', msg_size);
    child_drop_parent_ends(is_mproc);
    bench_pin_cpu(1);
    for (int r = 0; r <= STREAM_ROUNDS; r++) {
        if (is_mproc) {
            size_t got;
            if (mproc_conn_recv(m_child, &go, 1, &got, MPROC_FOREVER) != 0 || got != 1)
                return 1;
            for (long i = 0; i < round_msgs[r]; i++)
                if (mproc_conn_send(m_child, buf, msg_size, MPROC_FOREVER) != 0)
                    return 1;
        } else {
            if (read_exact(child_rd, &go, 1) < 0)
                return 1;
            for (long i = 0; i < round_msgs[r]; i++)
                if (write_all(child_wr, buf, msg_size) < 0)
                    return 1;
        }
    }
    free(buf);
    return 0;
}

static int mproc_stream_writer(const void *arg, size_t len)
{
    (void)arg;
    (void)len;
    return stream_writer(1);
}

static int raw_stream_writer(void *arg)
{
    (void)arg;
    return stream_writer(0);
}

/* One round in the parent: "go", then receive n messages; 0 or 1. */
static int stream_round(int is_mproc, long n, char *buf)
{
    char go = 'g';

    if (is_mproc) {
        if (mproc_conn_send(m_parent, &go, 1, MPROC_FOREVER) != 0)
            return 1;
        for (long i = 0; i < n; i++) {
            size_t got;
            if (mproc_conn_recv(m_parent, buf, msg_size, &got, MPROC_FOREVER) != 0 ||
                got != msg_size)
                return 1;
        }
    } else {
        if (write_all(parent_wr, &go, 1) < 0)
            return 1;
        for (long i = 0; i < n; i++)
            if (read_exact(parent_rd, buf, msg_size) < 0)
                return 1;
    }
    /* The payload arrived intact (the last message, both ends). */
    return buf[0] != 'w' || buf[msg_size - 1] != 'w';
}

static void run_stream(const char *name, int is_mproc, size_t size, long iterations)
{
    double per_s[STREAM_ROUNDS], mb_s[STREAM_ROUNDS];
    long nround = iterations < STREAM_ROUNDS ? iterations : STREAM_ROUNDS;
    mproc_process_t *child = NULL;
    pid_t pid = -1;
    char *buf;

    msg_size = size;
    buf = malloc(size);
    if (buf == NULL)
        die_errno("malloc");
    round_msgs[0] = iterations / nround / 4 + 1; /* warm-up */
    for (long r = 0; r < STREAM_ROUNDS; r++)
        round_msgs[r + 1] = r < nround ? iterations / nround + (r < iterations % nround) : 0;

    make_channel(is_mproc ? T_MPROC : T_SOCKETPAIR);
    bench_pin_cpu(0);
    if (is_mproc)
        child = bench_start_child(mproc_stream_writer, NULL, 0);
    else
        pid = bench_fork(raw_stream_writer, NULL);
    parent_drop_child_ends(is_mproc);

    if (stream_round(is_mproc, round_msgs[0], buf))
        die(name, "a send or receive failed (warm-up)");
    for (long r = 0; r < STREAM_ROUNDS; r++) {
        long n = round_msgs[r + 1];
        double t0 = now_ns();
        if (stream_round(is_mproc, n, buf))
            die(name, "a send or receive failed, or the payload is wrong");
        if (r < nround) {
            double secs = (now_ns() - t0) / 1e9;
            per_s[r] = (double)n / secs;
            mb_s[r] = (double)n * (double)size / 1e6 / secs;
        }
    }

    if (is_mproc)
        bench_join_child(child, name);
    else
        bench_wait(pid, name);
    close_channel(is_mproc);
    free(buf);
    print_quantiles_part("per_s", per_s, (size_t)nround);
    print_quantiles_part("mb_s", mb_s, (size_t)nround);
    printf("size=%zu n=%ld\n", size, iterations);
    bench_flush();
}

/* ------------------------------------------------------------------------ */
/* Modes                                                                    */
/* ------------------------------------------------------------------------ */

typedef enum { PINGPONG, STREAM } shape_t;

typedef struct {
    const char *name;
    shape_t shape;
    transport_t transport; /* PINGPONG */
    int is_mproc;          /* STREAM */
    size_t size;           /* STREAM */
} conn_mode_t;

static const conn_mode_t modes[] = {
    {"mproc-pingpong", PINGPONG, T_MPROC, 1, 0},
    {"raw-pipe-pingpong", PINGPONG, T_PIPE, 0, 0},
    {"raw-socketpair-pingpong", PINGPONG, T_SOCKETPAIR, 0, 0},
    {"mproc-stream-64", STREAM, 0, 1, 64},
    {"raw-stream-64", STREAM, 0, 0, 64},
    {"mproc-stream-4k", STREAM, 0, 1, 4096},
    {"raw-stream-4k", STREAM, 0, 0, 4096},
    {"mproc-stream-1m", STREAM, 0, 1, 1 << 20},
    {"raw-stream-1m", STREAM, 0, 0, 1 << 20},
};

int main(int argc, char **argv)
{
    long iterations;
    const conn_mode_t *mode =
        bench_setup(&argc, &argv, "bench_conn", modes, sizeof modes / sizeof modes[0],
                    sizeof modes[0], &iterations);

    if (mode->shape == PINGPONG)
        run_pingpong(mode->name, mode->transport, iterations);
    else
        run_stream(mode->name, mode->is_mproc, mode->size, iterations);
    return 0;
}
