/*
 * bench_boost_mq - Boost.Interprocess message_queue, 1 producer -> 1
 * consumer, 64-byte messages: the same work as `bench_queue mproc-1-1`,
 * for comparison in the same run. Bench code only (C++, header-only Boost
 * from libboost-dev); nothing in mproc depends on it.
 *
 *   bench_boost_mq boost-1-1 <iterations>
 *
 * The queue is a boost::interprocess::message_queue of 1024 messages of at
 * most 64 bytes (64 KiB of payload, as mproc's default 64 KiB ring and the
 * raw ring's 1024 slots), created under a name unique to this process
 * ("mproc_bench_mq_<pid>", in /dev/shm) and removed at the end, on errors
 * and on SIGINT/SIGTERM/SIGHUP too. Its children are plain fork()s using
 * the inherited queue object; send() and receive() block without a
 * timeout (Boost's process-shared mutex and condition variable).
 *
 * As in bench_queue: <iterations> messages, then one sentinel; the
 * producer is pinned to one CPU, the consumer to another; both wait on a
 * start flag (a futex), and a round runs from the moment the parent raises
 * it to the consumer's end. One untimed warm-up round (a tenth of the
 * messages), then 5 timed rounds with fresh processes; a sample is a
 * round's messages per second. The consumer checks that the messages come
 * exactly in sequence and the count must add up, or the program fails.
 *
 * Output: one line, median_per_s=... p10_per_s=... p90_per_s=... n=<iterations>
 * Any error is printed to stderr and ends the program with status 1.
 */
#include <boost/interprocess/ipc/message_queue.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <string>
#include <vector>

#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace bip = boost::interprocess;

namespace
{

constexpr size_t kMsgSize = 64;
constexpr size_t kMaxMessages = 1024;
constexpr int kRounds = 5;

const char *prog = "bench_boost_mq";
char queue_name[64];     // for the signal handler and cleanup
bool queue_made = false; // in the parent only
pid_t parent_pid;

struct Msg {
    uint32_t sentinel;
    uint32_t pad0;
    uint64_t seq;
    unsigned char pad[kMsgSize - 16];
};
static_assert(sizeof(Msg) == kMsgSize, "a message is 64 bytes");

struct alignas(64) Ctl {
    alignas(64) std::atomic<uint32_t> ready;
    alignas(64) std::atomic<uint32_t> go; // a futex word: 0, then 1
    alignas(64) std::atomic<uint64_t> received;
    int64_t end_ns;
};

Ctl *ctl;

void remove_queue()
{
    if (queue_made && getpid() == parent_pid) {
        bip::message_queue::remove(queue_name);
        queue_made = false;
    }
}

[[noreturn]] void die(const std::string &what)
{
    std::fprintf(stderr, "%s: %s\n", prog, what.c_str());
    remove_queue();
    std::exit(1);
}

extern "C" void on_signal(int sig)
{
    // shm_unlink is what message_queue::remove does; Boost names the
    // object "/<name>".
    if (getpid() == parent_pid && queue_made) {
        char path[sizeof queue_name + 1] = "/";
        std::strcat(path, queue_name);
        shm_unlink(path);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

long futex(std::atomic<uint32_t> *addr, int op, uint32_t val)
{
    // Not FUTEX_PRIVATE_FLAG: the word is shared between processes.
    return syscall(SYS_futex, reinterpret_cast<uint32_t *>(addr), op, val, nullptr, nullptr, 0);
}

double now_ns()
{
    timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        die(std::string("clock_gettime: ") + std::strerror(errno));
    return double(ts.tv_sec) * 1e9 + double(ts.tv_nsec);
}

cpu_set_t pin_allowed;

// Pin to the k-th CPU of those the program started with (as bench_util.c).
void pin_cpu(int k)
{
    int want = k % CPU_COUNT(&pin_allowed), n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &pin_allowed))
            continue;
        if (n++ == want) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            if (sched_setaffinity(0, sizeof one, &one) < 0)
                _exit(1);
            return;
        }
    }
}

void wait_for_go()
{
    ctl->ready.fetch_add(1);
    while (ctl->go.load() == 0)
        futex(&ctl->go, FUTEX_WAIT, 0);
}

int producer(bip::message_queue &mq, long n)
{
    Msg m{};
    pin_cpu(0);
    wait_for_go();
    for (long i = 0; i < n; i++) {
        m.seq = uint64_t(i);
        mq.send(&m, sizeof m, 0);
    }
    m.sentinel = 1;
    mq.send(&m, sizeof m, 0);
    return 0;
}

int consumer(bip::message_queue &mq)
{
    Msg m{};
    uint64_t next = 0;
    pin_cpu(1);
    wait_for_go();
    for (;;) {
        bip::message_queue::size_type got = 0;
        unsigned prio = 0;
        mq.receive(&m, sizeof m, got, prio);
        if (got != sizeof m)
            return 2;
        if (m.sentinel)
            break;
        if (m.seq != next)
            return 3;
        next++;
    }
    ctl->end_ns = int64_t(now_ns());
    ctl->received.store(next);
    return 0;
}

pid_t start(int (*fn)(bip::message_queue &, long), bip::message_queue &mq, long n)
{
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid < 0)
        die(std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
        // Die with the parent, however it dies: no child left blocked on
        // the queue.
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent_pid)
            _exit(1);
        int rc;
        try {
            rc = fn(mq, n);
        } catch (const std::exception &e) {
            std::fprintf(stderr, "%s: child: %s\n", prog, e.what());
            rc = 1;
        }
        _exit(rc);
    }
    return pid;
}

double round_(bip::message_queue &mq, long total)
{
    ctl->ready.store(0);
    ctl->go.store(0);
    ctl->received.store(0);
    std::vector<pid_t> kids;
    kids.push_back(start(producer, mq, total));
    kids.push_back(start([](bip::message_queue &q, long) { return consumer(q); }, mq, 0));

    timespec nap = {0, 100000};
    while (ctl->ready.load() < 2)
        nanosleep(&nap, nullptr);
    double t0 = now_ns();
    ctl->go.store(1);
    futex(&ctl->go, FUTEX_WAKE, INT_MAX);

    // Reap both; if one fails, the other may block forever: kill it.
    std::string failure;
    for (size_t left = kids.size(); left > 0;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            die(std::string("waitpid: ") + std::strerror(errno));
        }
        auto it = std::find(kids.begin(), kids.end(), pid);
        if (it == kids.end())
            continue;
        *it = -1;
        left--;
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0) && failure.empty()) {
            char why[64];
            std::snprintf(why, sizeof why, "a child failed (wait status 0x%x)", unsigned(status));
            failure = why;
            for (pid_t k : kids)
                if (k > 0)
                    kill(k, SIGKILL);
        }
    }
    if (!failure.empty())
        die(failure);
    if (ctl->received.load() != uint64_t(total))
        die("the consumer got " + std::to_string(ctl->received.load()) + " messages, " +
            std::to_string(total) + " were put");
    return double(total) * 1e9 / (double(ctl->end_ns) - t0);
}

double quantile(const std::vector<double> &s, double q)
{
    double pos = q * double(s.size() - 1);
    size_t lo = size_t(pos);
    if (lo + 1 >= s.size())
        return s.back();
    return s[lo] + (pos - double(lo)) * (s[lo + 1] - s[lo]);
}

} // namespace

int main(int argc, char **argv)
{
    if (argc > 0 && argv[0] != nullptr)
        prog = argv[0];
    if (argc != 3 || std::strcmp(argv[1], "boost-1-1") != 0) {
        std::fprintf(stderr, "usage: %s boost-1-1 <iterations>\n", prog);
        return 1;
    }
    char *end;
    errno = 0;
    long n = std::strtol(argv[2], &end, 10);
    if (errno != 0 || end == argv[2] || *end != '\0' || n <= 0 || n > 1000000000L)
        die(std::string("iterations: '") + argv[2] + "' is not an integer in 1..1000000000");

    parent_pid = getpid();
    if (sched_getaffinity(0, sizeof pin_allowed, &pin_allowed) < 0)
        die(std::string("sched_getaffinity: ") + std::strerror(errno));
    void *p = mmap(nullptr, sizeof(Ctl), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die(std::string("mmap: ") + std::strerror(errno));
    ctl = new (p) Ctl();

    std::snprintf(queue_name, sizeof queue_name, "mproc_bench_mq_%ld", long(parent_pid));
    struct sigaction sa {
    };
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP})
        sigaction(sig, &sa, nullptr);

    std::vector<double> samples;
    try {
        bip::message_queue::remove(queue_name); // a stale one of a reused pid
        bip::message_queue mq(bip::create_only, queue_name, kMaxMessages, kMsgSize);
        queue_made = true;
        round_(mq, n / 10 + 1);
        for (int r = 0; r < kRounds; r++)
            samples.push_back(round_(mq, n));
    } catch (const std::exception &e) {
        die(std::string("message_queue: ") + e.what());
    }
    remove_queue();

    std::sort(samples.begin(), samples.end());
    std::printf("median_per_s=%.3f p10_per_s=%.3f p90_per_s=%.3f n=%ld\n", quantile(samples, 0.5),
                quantile(samples, 0.1), quantile(samples, 0.9), n);
    if (std::fflush(stdout) != 0)
        die("stdout");
    return 0;
}
