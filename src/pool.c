/*
 * pool.c - a pool of worker processes that survives its workers' deaths.
 *
 * Shape. The pool owns one anonymous segment: a table of task functions
 * (as entry references, so they cross exec), one small task queue per
 * worker, one result queue for all, and an arena for jobs. A job is one
 * block holding its items' arguments, results and states; map makes one
 * job per window of items, apply_async one job of one item. Workers are
 * told only (job offset, first item, count) and write results in place,
 * so no task data goes through a queue.
 *
 * Who runs what. The parent assigns ranges of items to each worker's own
 * queue, at most WINDOW ranges ahead, and remembers every range it
 * assigned, in order. A worker marks an item RUNNING before it calls the
 * function and DONE (with rc and length) after, and reports each range on
 * the result queue. There is no thread: everything the parent does
 * happens inside pool calls (step()).
 *
 * Deaths. Each worker's process fd is in the pool's epoll set with the
 * result queue's eventfd. When a worker has died, the parent first takes
 * every report already queued (a report is all or nothing), then looks at
 * the item states of the ranges the worker still had: DONE items are done
 * (the report was lost with it), the one RUNNING item is the task it died
 * in (MPROC_EWORKER with its exit status, or run again if retries allow),
 * and NEW items never ran, so they go to other workers. Then a fresh
 * worker takes the slot. No item is lost, and only the item that was
 * running when the worker died can fail because of it.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define POOL_MAGIC 0x6c6f6f70u /* "pool" */
#define JOB_MAGIC 0x626f6a70u  /* "pjob" */
#define ARG_MAGIC 0x67726170u  /* "parg" */
#define FNS_MAX 32
#define WINDOW 64 /* ranges queued ahead per worker */
#define TASKQ_CAPACITY 4096
#define RESULTQ_CAPACITY (64u << 10)
#define ARENA_DEFAULT (64u << 20)
#define MAX_RESULT_DEFAULT (64u << 10)
#define WORKERS_MAX 1024
/*
 * How long an idle worker spins on its empty task queue before it sleeps,
 * in µs. Measured with bench/bench_pool.c (map of x+1, chunk 1, 2 workers,
 * 2 CPUs): on a quiet machine 5 µs does as well as the queues' default
 * 50 µs (5-11 M tasks/s, both), and with two CPU hogs running it keeps
 * 2.5-2.8 M tasks/s where 50 µs fell to 0.7 M in some runs: workers that
 * spin long take the CPU the parent needs to feed them. Never spinning
 * costs 30-60% on a quiet machine.
 */
#define TASK_SPIN_US 5

/* ---- what lives in the segment ---------------------------------------------- */

/* A task function as an entry reference (request.c), flattened. */
typedef struct {
    uint32_t used;
    uint8_t is_main, build_id_len;
    uint8_t build_id[MPROC__MAX_BUILD_ID];
    uint64_t offset, dev, ino, mtime_ns;
    char path[MPROC__MAX_PATH];
} fn_slot_t;

struct pool_shared {
    uint32_t magic;
    uint32_t nfns;
    fn_slot_t fns[FNS_MAX];
};

enum { ITEM_NEW = 0, ITEM_RUNNING = 1, ITEM_DONE = 2 };

typedef struct {
    _Atomic uint32_t state;
    int32_t rc;
    uint32_t len;
    int32_t status; /* MPROC_EWORKER: how the worker ended */
} item_t;

/* A job block: this header, count items, the arguments, the results. */
typedef struct {
    uint32_t magic;
    uint32_t fn;
    uint64_t count, in_size, out_size;
    uint64_t size; /* of the whole block */
} job_shared_t;

typedef struct {
    uint64_t job; /* offset in the segment; 0: stop */
    uint32_t start, count;
} task_msg_t;

typedef struct {
    uint64_t job;
    uint32_t start, count;
    uint32_t worker;
    uint32_t pad;
} done_msg_t;

/* What a worker is started with (then init_len bytes of init argument). */
typedef struct {
    uint32_t magic;
    uint32_t index;
    mproc_shm_ref_t shm;
    mproc_queue_ref_t tasks, results;
    uint64_t pool_off;
    uint32_t max_tasks;
    int32_t init_fn; /* -1: none */
    uint64_t init_len;
} worker_arg_t;

static size_t items_off(void)
{
    return (sizeof(job_shared_t) + 63) & ~(size_t)63;
}

/* The block size a job of count items needs; 0 on overflow. */
static size_t job_size(uint64_t count, uint64_t in_size, uint64_t out_size)
{
    if (count == 0 || count > UINT32_MAX || in_size > SIZE_MAX / 4 || out_size > SIZE_MAX / 4)
        return 0;
    uint64_t per = sizeof(item_t) + in_size + out_size;
    if (per && count > (SIZE_MAX / 2) / per)
        return 0;
    return items_off() + (size_t)(count * per);
}

/* Where a job's parts are, from sizes the reader holds itself: a
 * process never re-reads them from the segment after checking them. */
typedef struct {
    unsigned char *base;
    uint64_t count, in_size, out_size;
} layout_t;

static item_t *job_items(const layout_t *l)
{
    return (item_t *)(l->base + items_off());
}

static unsigned char *job_in(const layout_t *l, uint64_t i)
{
    return (unsigned char *)(job_items(l) + l->count) + i * l->in_size;
}

static unsigned char *job_out(const layout_t *l, uint64_t i)
{
    return (unsigned char *)(job_items(l) + l->count) + l->count * l->in_size + i * l->out_size;
}

/* ---- the worker's side ------------------------------------------------------ */

static int fn_resolve(const fn_slot_t *slot, mproc_entry_fn *fn)
{
    if (!slot->used || slot->build_id_len > MPROC__MAX_BUILD_ID ||
        !memchr(slot->path, '\0', sizeof slot->path))
        return MPROC_EENTRY;
    mproc__entry_ref_t ref;
    memset(&ref, 0, sizeof ref);
    ref.is_main = slot->is_main;
    ref.build_id_len = slot->build_id_len;
    memcpy(ref.build_id, slot->build_id, sizeof ref.build_id);
    ref.path = slot->path;
    ref.offset = slot->offset;
    ref.dev = slot->dev;
    ref.ino = slot->ino;
    ref.mtime_ns = slot->mtime_ns;
    return mproc__entry_resolve(&ref, fn);
}

/* The job a message names, checked against the mapping; its layout and
 * function number copied out once checked. 0, or -1 if anything is off. */
static int job_at(unsigned char *base, size_t total, const task_msg_t *m, layout_t *l, uint32_t *fn)
{
    if (m->job < MPROC__SHM_HEADER || m->job > total - sizeof(job_shared_t) || (m->job & 7))
        return -1;
    job_shared_t j;
    memcpy(&j, base + m->job, sizeof j);
    size_t size = job_size(j.count, j.in_size, j.out_size);
    if (j.magic != JOB_MAGIC || j.fn >= FNS_MAX || size == 0 || j.size != size ||
        size > total - m->job || m->count == 0 || m->start > j.count ||
        m->count > j.count - m->start)
        return -1;
    *l = (layout_t){base + m->job, j.count, j.in_size, j.out_size};
    *fn = j.fn;
    return 0;
}

static int run_range(const layout_t *l, const task_msg_t *m, mproc_task_fn fn)
{
    item_t *items = job_items(l);
    for (uint64_t i = m->start; i < (uint64_t)m->start + m->count; i++) {
        atomic_store_explicit(&items[i].state, ITEM_RUNNING, memory_order_relaxed);
        size_t len = 0;
        int rc = fn(job_in(l, i), l->in_size, job_out(l, i), l->out_size, &len);
        if (len > l->out_size) {
            rc = -EMSGSIZE; /* it said more than it was given room for */
            len = 0;
        }
        items[i].rc = rc > 0 ? 0 : rc;
        items[i].len = (uint32_t)len;
        atomic_store_explicit(&items[i].state, ITEM_DONE, memory_order_release);
    }
    return 0;
}

/* A worker's life: attach, init, then run what its queue says until told
 * to stop or max_tasks ranges are done. Exit status 0: asked to go; 2: its
 * setup failed; 3: init refused; 4: a queue broke. */
static int pool_worker(const void *arg, size_t len)
{
    worker_arg_t a;
    if (len < sizeof a)
        return 2;
    memcpy(&a, arg, sizeof a);
    if (a.magic != ARG_MAGIC || a.init_len != len - sizeof a)
        return 2;
    mproc_shm_t *shm = NULL;
    mproc_queue_t *tasks = NULL, *results = NULL;
    if (mproc_shm_attach(&shm, &a.shm) < 0 || mproc_queue_attach(&tasks, &a.tasks) < 0 ||
        mproc_queue_attach(&results, &a.results) < 0)
        return 2;
    unsigned char *base;
    size_t total;
    mproc__shm_mapping(shm, &base, &total);
    if (a.pool_off < MPROC__SHM_HEADER || a.pool_off > total - sizeof(struct pool_shared))
        return 2;
    struct pool_shared *ps = (struct pool_shared *)(base + a.pool_off);
    if (ps->magic != POOL_MAGIC)
        return 2;

    if (a.init_fn >= 0) {
        mproc_entry_fn init;
        if (a.init_fn >= FNS_MAX || fn_resolve(&ps->fns[a.init_fn], &init) < 0)
            return 2;
        if (init((const char *)arg + sizeof a, (size_t)a.init_len) != 0)
            return 3;
    }

    mproc_task_fn fns[FNS_MAX] = {0};
    unsigned done = 0;
    for (;;) {
        task_msg_t m;
        size_t n;
        if (mproc_queue_get(tasks, &m, sizeof m, &n, MPROC_FOREVER) < 0 || n != sizeof m)
            return 4;
        if (m.job == 0)
            return 0;
        layout_t l;
        uint32_t fn;
        if (job_at(base, total, &m, &l, &fn) < 0)
            return 4;
        if (!fns[fn]) {
            mproc_entry_fn e;
            if (fn_resolve(&ps->fns[fn], &e) < 0)
                return 2;
            memcpy(&fns[fn], &e, sizeof e);
        }
        run_range(&l, &m, fns[fn]);
        done_msg_t d = {m.job, m.start, m.count, a.index, 0};
        if (mproc_queue_put(results, &d, sizeof d, MPROC_FOREVER) < 0)
            return 4;
        if (a.max_tasks && ++done >= a.max_tasks)
            return 0;
    }
}

/* ---- the parent's side ------------------------------------------------------ */

typedef struct job job_t;

typedef struct {
    job_t *job;
    uint32_t start, count;
} range_t;

enum { JOB_MAP, JOB_APPLY };

struct job {
    job_t *next;                /* jobs with items not assigned yet, in order */
    job_t *all_prev, *all_next; /* every job of the pool */
    job_shared_t *s;
    layout_t l; /* the parent's own copy of its sizes */
    uint64_t off;
    uint32_t count, chunk, next_item, ended;
    int kind;
    int orphan;              /* nobody waits: free it when it ends */
    int in_callback;         /* its task's callback runs now */
    uint8_t *tries;          /* per item: runs after a death (retries) */
    struct mproc_task *task; /* JOB_APPLY */
};

struct mproc_task {
    mproc_pool_t *pool;
    job_t *job;
    mproc_task_cb cb;
    void *ctx;
    int ended;
    uint64_t index; /* in its imap stream */
};

typedef struct {
    mproc_process_t *p;
    mproc_queue_t *q;
    range_t inflight[WINDOW];
    unsigned head, n;
    int stopping; /* told to stop: do not replace */
    int worked;   /* reported, or started an item, since it started */
} worker_t;

struct mproc_pool {
    mproc_pool_opts_t o;
    unsigned nworkers, started;
    mproc_shm_t *shm;
    unsigned char *base;
    size_t total;
    struct pool_shared *ps;
    uint64_t ps_off;
    mproc_task_fn fns[FNS_MAX];
    int init_fn;
    void *init_copy;
    mproc_queue_t *results;
    worker_t *w;
    int epfd;
    range_t *rq; /* ranges to assign before new ones (a ring) */
    size_t rq_head, rq_n, rq_cap;
    job_t *jobs, *jobs_tail;
    job_t *all;
    unsigned live_jobs;
    unsigned running_jobs; /* live jobs with items not ended */
    unsigned fresh_deaths; /* workers in a row that died without running anything */
    int broken;            /* gave up replacing workers: why */
    int closed, terminated;
    int draining;    /* join told the workers to stop: no replacements */
    int start_error; /* the last replacement that failed */
};

static int cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* The function's slot in the table, added on first use. */
static int fn_id(mproc_pool_t *pool, mproc_task_fn fn)
{
    for (uint32_t i = 0; i < pool->ps->nfns; i++)
        if (pool->fns[i] == fn)
            return (int)i;
    if (pool->ps->nfns == FNS_MAX)
        return -ENOSPC;
    mproc_entry_fn e;
    memcpy(&e, &fn, sizeof e);
    mproc__entry_ref_t ref;
    int rc = mproc__entry_ref_of(e, &ref);
    if (rc < 0)
        return rc;
    uint32_t i = pool->ps->nfns;
    fn_slot_t *s = &pool->ps->fns[i];
    memset(s, 0, sizeof *s);
    s->is_main = ref.is_main;
    s->build_id_len = ref.build_id_len;
    memcpy(s->build_id, ref.build_id, sizeof s->build_id);
    s->offset = ref.offset;
    s->dev = ref.dev;
    s->ino = ref.ino;
    s->mtime_ns = ref.mtime_ns;
    if (strlen(ref.path) >= sizeof s->path)
        return MPROC_EENTRY;
    strcpy(s->path, ref.path);
    s->used = 1;
    pool->fns[i] = fn;
    pool->ps->nfns = i + 1; /* published to workers by the queue put after */
    return (int)i;
}

static int start_worker(mproc_pool_t *pool, unsigned idx)
{
    worker_t *w = &pool->w[idx];
    size_t len = sizeof(worker_arg_t) + pool->o.init_len;
    worker_arg_t *a = calloc(1, len);
    if (!a)
        return -ENOMEM;
    a->magic = ARG_MAGIC;
    a->index = idx;
    a->pool_off = pool->ps_off;
    a->max_tasks = pool->o.max_tasks_per_child;
    a->init_fn = pool->init_fn;
    a->init_len = pool->o.init_len;
    if (pool->o.init_len)
        memcpy(a + 1, pool->init_copy, pool->o.init_len);
    int rc = mproc_shm_ref(pool->shm, &a->shm);
    if (rc == 0)
        rc = mproc_queue_ref(w->q, &a->tasks);
    if (rc == 0)
        rc = mproc_queue_ref(pool->results, &a->results);
    mproc_process_opts_t po = {.name = "mproc-worker", .method = pool->o.method, .daemon = 1};
    mproc_process_t *p = NULL;
    if (rc == 0)
        rc = mproc_process_create(&p, pool_worker, a, len, &po);
    free(a);
    if (rc == 0)
        rc = mproc_process_pass_shm(p, pool->shm);
    if (rc == 0)
        rc = mproc_process_pass_fd(p, mproc_queue_fd(pool->results));
    if (rc == 0)
        rc = mproc_process_start(p);
    if (rc == 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = idx + 1};
        if (epoll_ctl(pool->epfd, EPOLL_CTL_ADD, mproc_process_fd(p), &ev) < 0) {
            rc = -errno;
            mproc_process_kill(p);
            mproc_process_join(p, MPROC_FOREVER);
        }
    }
    if (rc < 0) {
        mproc_process_free(p);
        return rc;
    }
    w->p = p;
    w->stopping = 0;
    w->worked = 0;
    pool->started++;
    return 0;
}

/* ---- ranges and jobs -------------------------------------------------------- */

static int rq_push(mproc_pool_t *pool, range_t r)
{
    if (pool->rq_n == pool->rq_cap) {
        size_t cap = pool->rq_cap ? pool->rq_cap * 2 : 64;
        range_t *n = malloc(cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        for (size_t i = 0; i < pool->rq_n; i++)
            n[i] = pool->rq[(pool->rq_head + i) % pool->rq_cap];
        free(pool->rq);
        pool->rq = n;
        pool->rq_cap = cap;
        pool->rq_head = 0;
    }
    pool->rq[(pool->rq_head + pool->rq_n) % pool->rq_cap] = r;
    pool->rq_n++;
    return 0;
}

static void job_free(mproc_pool_t *pool, job_t *j)
{
    /* Out of the lists: every job, and the ones with items to assign. */
    if (j->all_prev)
        j->all_prev->all_next = j->all_next;
    else
        pool->all = j->all_next;
    if (j->all_next)
        j->all_next->all_prev = j->all_prev;
    for (job_t **pp = &pool->jobs, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            if (pool->jobs_tail == j)
                pool->jobs_tail = prev;
            break;
        }
    mproc_shm_free(pool->shm, j->s);
    free(j->tries);
    free(j);
    pool->live_jobs--;
}

/* Every item of j has ended. */
static void job_ended(mproc_pool_t *pool, job_t *j)
{
    pool->running_jobs--;
    if (j->kind == JOB_APPLY && j->task) {
        struct mproc_task *t = j->task;
        t->ended = 1;
        if (t->cb) {
            j->in_callback = 1; /* a task_free in there is deferred to here */
            t->cb(t->ctx, t);
            j->in_callback = 0;
        }
    }
    if (j->orphan)
        job_free(pool, j);
}

static void item_end(mproc_pool_t *pool, job_t *j, uint32_t i, int rc, int status)
{
    item_t *it = &job_items(&j->l)[i];
    it->rc = rc;
    it->status = status;
    it->len = 0;
    atomic_store(&it->state, ITEM_DONE);
    if (++j->ended == j->count)
        job_ended(pool, j);
}

/* The next range to assign, or 0 if there is none. */
static int next_range(mproc_pool_t *pool, range_t *r)
{
    if (pool->rq_n) {
        *r = pool->rq[pool->rq_head];
        pool->rq_head = (pool->rq_head + 1) % pool->rq_cap;
        pool->rq_n--;
        return 1;
    }
    while (pool->jobs) {
        job_t *j = pool->jobs;
        if (j->next_item < j->count) {
            uint32_t n = j->count - j->next_item < j->chunk ? j->count - j->next_item : j->chunk;
            *r = (range_t){j, j->next_item, n};
            j->next_item += n;
            return 1;
        }
        pool->jobs = j->next;
        if (!pool->jobs)
            pool->jobs_tail = NULL;
    }
    return 0;
}

/* End every item of r with rc (no worker will run them). */
static void range_end(mproc_pool_t *pool, range_t r, int rc)
{
    for (uint32_t i = r.start; i < r.start + r.count; i++)
        item_end(pool, r.job, i, rc, 0);
}

/* Hand out ranges one per worker per pass, the least loaded first, so
 * that work spreads evenly; each worker gets at most WINDOW ahead. */
static void assign(mproc_pool_t *pool)
{
    for (unsigned depth = 0; depth < WINDOW; depth++) {
        int gave = 0;
        for (unsigned k = 0; k < pool->nworkers; k++) {
            worker_t *w = &pool->w[k];
            if (!w->p || w->stopping || w->n > depth)
                continue;
            range_t r;
            if (!next_range(pool, &r))
                return;
            task_msg_t m = {r.job->off, r.start, r.count};
            if (mproc_queue_put(w->q, &m, sizeof m, 0) < 0) {
                /* Cannot happen with WINDOW ranges in TASKQ_CAPACITY; if
                 * it does, the range waits for another turn. */
                if (rq_push(pool, r) < 0)
                    range_end(pool, r, -ENOMEM);
                continue;
            }
            w->inflight[(w->head + w->n) % WINDOW] = r;
            w->n++;
            gave = 1;
        }
        if (!gave && depth >= 1)
            return;
    }
}

/* A report from a worker: its oldest range is done. */
static void on_done(mproc_pool_t *pool, const done_msg_t *d)
{
    if (d->worker >= pool->nworkers)
        return;
    worker_t *w = &pool->w[d->worker];
    if (!w->n)
        return;
    range_t r = w->inflight[w->head];
    if (r.job->off != d->job || r.start != d->start || r.count != d->count)
        return; /* not what was asked: the death path will sort it out */
    w->head = (w->head + 1) % WINDOW;
    w->n--;
    w->worked = 1;
    pool->fresh_deaths = 0;
    r.job->ended += r.count;
    if (r.job->ended == r.job->count)
        job_ended(pool, r.job);
}

/* Take every report queued now; how many. */
static int collect(mproc_pool_t *pool)
{
    int n = 0;
    done_msg_t d;
    size_t len;
    while (mproc_queue_get(pool->results, &d, sizeof d, &len, 0) == 0)
        if (len == sizeof d) {
            on_done(pool, &d);
            n++;
        }
    return n;
}

/* Worker idx has exited: settle what it had, then replace it. */
static void worker_exited(mproc_pool_t *pool, unsigned idx)
{
    worker_t *w = &pool->w[idx];
    int code = 0;
    mproc_process_join(w->p, MPROC_FOREVER);
    mproc_process_exitcode(w->p, &code);
    epoll_ctl(pool->epfd, EPOLL_CTL_DEL, mproc_process_fd(w->p), NULL);
    mproc_process_free(w->p);
    w->p = NULL;
    collect(pool); /* its last reports, all or nothing each */
    for (; w->n; w->n--, w->head = (w->head + 1) % WINDOW) {
        range_t r = w->inflight[w->head];
        job_t *j = r.job;
        item_t *items = job_items(&j->l);
        uint32_t run_start = 0, run_n = 0; /* a run of items to hand out again */
        for (uint32_t i = r.start; i < r.start + r.count; i++) {
            uint32_t st = atomic_load(&items[i].state);
            int again = st == ITEM_NEW;
            w->worked |= st != ITEM_NEW;
            if (st == ITEM_DONE) {
                if (++j->ended == j->count)
                    job_ended(pool, j);
            } else if (st == ITEM_RUNNING) {
                if (pool->terminated) {
                    item_end(pool, j, i, -ECANCELED, 0);
                } else if (j->tries && j->tries[i] < pool->o.retries) {
                    j->tries[i]++;
                    atomic_store(&items[i].state, ITEM_NEW);
                    again = 1;
                } else {
                    item_end(pool, j, i, MPROC_EWORKER, code);
                }
            }
            if (again && run_n && run_start + run_n == i) {
                run_n++;
                continue;
            }
            if (run_n && rq_push(pool, (range_t){j, run_start, run_n}) < 0)
                for (uint32_t k = run_start; k < run_start + run_n; k++)
                    item_end(pool, j, k, -ENOMEM, 0);
            run_n = 0;
            if (again) {
                run_start = i;
                run_n = 1;
            }
        }
        if (run_n && rq_push(pool, (range_t){j, run_start, run_n}) < 0)
            for (uint32_t k = run_start; k < run_start + run_n; k++)
                item_end(pool, j, k, -ENOMEM, 0);
    }
    /* Messages it never took: the ranges above are handed out again. */
    task_msg_t m;
    size_t len;
    while (mproc_queue_get(w->q, &m, sizeof m, &len, 0) == 0)
        ;
    w->head = 0;
    if (w->stopping || pool->terminated || pool->draining)
        return;
    /* A worker that dies before reporting anything, again and again (an
     * init that fails, a crash at start): stop replacing them, or the
     * pool would spin; the work fails instead (step()). */
    if (!w->worked && ++pool->fresh_deaths > 3 * pool->nworkers + 3) {
        pool->broken = MPROC_EWORKER; /* until the next submission tries again */
        return;
    }
    int rc = start_worker(pool, idx);
    if (rc < 0)
        pool->start_error = rc;
}

static int live_workers(const mproc_pool_t *pool)
{
    int n = 0;
    for (unsigned k = 0; k < pool->nworkers; k++)
        n += pool->w[k].p != NULL;
    return n;
}

/* No worker can be started: every item not ended fails with why. */
static int fail_all(mproc_pool_t *pool, int rc)
{
    range_t r;
    int n = 0;
    while (next_range(pool, &r)) {
        range_end(pool, r, rc);
        n++;
    }
    return n;
}

/*
 * One turn of the parent's work: take reports, settle dead workers,
 * assign ranges; if none of that happened, wait up to timeout_ms for
 * something to. Returns how many events were handled, or an error.
 */
static int step(mproc_pool_t *pool, int timeout_ms)
{
    int events = collect(pool);
    struct epoll_event ev[16];
    int n = epoll_wait(pool->epfd, ev, 16, 0);
    for (int i = 0; i < n; i++)
        if (ev[i].data.u32 > 0 && ev[i].data.u32 <= pool->nworkers &&
            pool->w[ev[i].data.u32 - 1].p &&
            mproc_process_is_alive(pool->w[ev[i].data.u32 - 1].p) == 0) {
            worker_exited(pool, ev[i].data.u32 - 1);
            events++;
        }
    if (!pool->terminated && !pool->draining && !pool->broken) {
        /* Slots whose replacement failed to start: try again. */
        for (unsigned k = 0; k < pool->nworkers; k++) {
            int rc = !pool->w[k].p && !pool->w[k].stopping ? start_worker(pool, k) : 0;
            if (rc < 0) {
                pool->start_error = rc;
                break;
            }
        }
    }
    if (!live_workers(pool) && !pool->terminated && !pool->draining)
        /* Nobody can run the work: it fails now, rather than wait. */
        events += fail_all(pool, pool->broken        ? pool->broken
                                 : pool->start_error ? pool->start_error
                                                     : MPROC_EWORKER);
    assign(pool);
    if (events || timeout_ms == 0)
        return events;
    n = epoll_wait(pool->epfd, ev, 1, timeout_ms);
    if (n < 0 && errno != EINTR)
        return -errno;
    return n > 0 ? step(pool, 0) : 0; /* handle what woke us */
}

/* Run step() until done(ctx) or the deadline: 0 or -ETIMEDOUT. */
static int pump_until(mproc_pool_t *pool, int (*done)(void *), void *ctx, int timeout_ms)
{
    int64_t deadline = mproc__deadline(timeout_ms);
    for (;;) {
        if (done(ctx))
            return 0;
        int left = mproc__remaining_ms(deadline);
        int rc = step(pool, left);
        if (rc < 0)
            return rc;
        if (done(ctx))
            return 0;
        if (left == 0)
            return -ETIMEDOUT;
    }
}

/* A new job of count items (arguments copied in), waiting for arena room
 * up to the deadline. */
static int job_new(mproc_pool_t *pool, mproc_task_fn fn, uint64_t count, uint64_t in_size,
                   uint64_t out_size, int64_t deadline, job_t **out)
{
    size_t size = job_size(count, in_size, out_size);
    if (!size)
        return -E2BIG;
    if (size > pool->o.arena)
        return -E2BIG;
    int id = fn_id(pool, fn);
    if (id < 0)
        return id;
    /* New work: a pool that gave up on starting workers tries again. */
    pool->broken = 0;
    pool->fresh_deaths = 0;
    job_t *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    if (pool->o.retries && !(j->tries = calloc(count, 1))) {
        free(j);
        return -ENOMEM;
    }
    void *mem;
    int rc;
    while ((rc = mproc__shm_alloc_dirty(pool->shm, size, &mem)) == -ENOMEM) {
        int left = mproc__remaining_ms(deadline);
        if (pool->running_jobs == 0) {
            /* Full of results nobody took yet: waiting cannot help. */
            rc = -ENOBUFS;
            break;
        }
        if (left == 0)
            break;
        rc = step(pool, left); /* results free arena blocks */
        if (rc < 0)
            break;
    }
    if (rc < 0) {
        free(j->tries);
        free(j);
        return rc == -ENOMEM && mproc__remaining_ms(deadline) == 0 ? -ETIMEDOUT : rc;
    }
    j->s = mem;
    j->l = (layout_t){mem, count, in_size, out_size};
    memset(mem, 0, items_off() + count * sizeof(item_t)); /* header, states */
    j->s->fn = (uint32_t)id;
    j->s->count = count;
    j->s->in_size = in_size;
    j->s->out_size = out_size;
    j->s->size = size;
    j->s->magic = JOB_MAGIC;
    mproc_shm_offset(pool->shm, mem, &j->off);
    j->count = (uint32_t)count;
    j->chunk = 1;
    pool->running_jobs++;
    j->all_next = pool->all;
    if (pool->all)
        pool->all->all_prev = j;
    pool->all = j;
    pool->live_jobs++;
    *out = j;
    return 0;
}

static void job_queue(mproc_pool_t *pool, job_t *j)
{
    if (pool->jobs_tail)
        pool->jobs_tail->next = j;
    else
        pool->jobs = j;
    pool->jobs_tail = j;
}

/* ---- the API ---------------------------------------------------------------- */

int mproc_pool_create(mproc_pool_t **out, const mproc_pool_opts_t *opts)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    mproc_pool_opts_t o = {0};
    if (opts)
        o = *opts;
    if (o.workers < 0 || o.workers > WORKERS_MAX || (o.init_len && !o.init_arg) ||
        o.init_len > MPROC_ARG_MAX / 2 || o.retries > 255 || o.max_result > UINT32_MAX ||
        o.arena > ((size_t)1 << 40))
        return -EINVAL;
    if (!o.workers)
        o.workers = cpus();
    if (!o.max_result)
        o.max_result = MAX_RESULT_DEFAULT;
    if (!o.arena)
        o.arena = ARENA_DEFAULT;
    mproc_pool_t *pool = calloc(1, sizeof *pool);
    if (!pool)
        return -ENOMEM;
    pool->o = o;
    pool->nworkers = (unsigned)o.workers;
    pool->epfd = -1;
    pool->init_fn = -1;
    int rc = -ENOMEM;
    pool->w = calloc(pool->nworkers, sizeof *pool->w);
    if (o.init_len && (pool->init_copy = malloc(o.init_len)))
        memcpy(pool->init_copy, o.init_arg, o.init_len);
    if (!pool->w || (o.init_len && !pool->init_copy))
        goto fail;
    pool->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (pool->epfd < 0) {
        rc = -errno;
        goto fail;
    }
    /* The segment: function table, queues and the arena for jobs. */
    size_t per_q = TASKQ_CAPACITY + 1024 + MPROC_SHM_OBJECT_OVERHEAD;
    size_t size = sizeof(struct pool_shared) + MPROC_SHM_OBJECT_OVERHEAD + RESULTQ_CAPACITY + 1024 +
                  MPROC_SHM_OBJECT_OVERHEAD + pool->nworkers * per_q + o.arena;
    if ((rc = mproc_shm_create(&pool->shm, size)) < 0)
        goto fail;
    mproc__shm_mapping(pool->shm, &pool->base, &pool->total);
    if ((rc = mproc_shm_alloc(pool->shm, sizeof *pool->ps, NULL, (void **)&pool->ps)) < 0)
        goto fail;
    pool->ps->magic = POOL_MAGIC;
    mproc_shm_offset(pool->shm, pool->ps, &pool->ps_off);
    mproc_queue_opts_t rq = {.capacity = RESULTQ_CAPACITY,
                             .max_message = sizeof(done_msg_t),
                             .flags = MPROC_QUEUE_POLLABLE};
    if ((rc = mproc_queue_create(pool->shm, NULL, &rq, &pool->results)) < 0)
        goto fail;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0};
    if (epoll_ctl(pool->epfd, EPOLL_CTL_ADD, mproc_queue_fd(pool->results), &ev) < 0) {
        rc = -errno;
        goto fail;
    }
    mproc_queue_opts_t tq = {
        .capacity = TASKQ_CAPACITY, .max_message = sizeof(task_msg_t), .spin_us = TASK_SPIN_US};
    for (unsigned k = 0; k < pool->nworkers; k++)
        if ((rc = mproc_queue_create(pool->shm, NULL, &tq, &pool->w[k].q)) < 0)
            goto fail;
    if (o.init) {
        mproc_task_fn f;
        memcpy(&f, &o.init, sizeof f);
        if ((rc = fn_id(pool, f)) < 0)
            goto fail;
        pool->init_fn = rc;
    }
    for (unsigned k = 0; k < pool->nworkers; k++)
        if ((rc = start_worker(pool, k)) < 0)
            goto fail;
    *out = pool;
    return 0;
fail:
    mproc_pool_terminate(pool);
    mproc_pool_free(pool);
    return rc;
}

typedef struct {
    job_t *job;
} job_wait_t;

static int job_done(void *ctx)
{
    job_t *j = ctx;
    return j->ended == j->count;
}

int mproc_pool_map(mproc_pool_t *pool, mproc_task_fn fn, const void *in, size_t in_size, void *out,
                   size_t out_size, size_t count, size_t chunk, mproc_task_status_t *st,
                   int timeout_ms)
{
    if (!pool || !fn || (count && ((!in && in_size) || (!out && out_size))))
        return -EINVAL;
    if (pool->closed || pool->terminated)
        return MPROC_ESTATE;
    if (count == 0)
        return 0;
    if (!chunk) {
        chunk = count / (4 * pool->nworkers);
        if (count % (4 * pool->nworkers))
            chunk++;
    }
    if (chunk > UINT32_MAX)
        chunk = UINT32_MAX;
    int64_t deadline = mproc__deadline(timeout_ms);
    /* Windows of items that fit half the arena: memory stays bounded
     * whatever count is. */
    uint64_t per = sizeof(item_t) + in_size + out_size;
    uint64_t window = (pool->o.arena / 2) / (per ? per : 1);
    if (window > UINT32_MAX / 2)
        window = UINT32_MAX / 2;
    if (window == 0)
        window = 1;
    if (chunk > window)
        chunk = window; /* a chunk never outgrows the arena */
    int failed = 0;
    for (size_t at = 0; at < count;) {
        uint64_t n = count - at < window ? count - at : window;
        job_t *j;
        int rc = job_new(pool, fn, n, in_size, out_size, deadline, &j);
        if (rc < 0)
            return rc;
        if (in_size)
            memcpy(job_in(&j->l, 0), (const unsigned char *)in + at * in_size, n * in_size);
        j->chunk = (uint32_t)chunk;
        j->kind = JOB_MAP;
        job_queue(pool, j);
        rc = pump_until(pool, job_done, j, mproc__remaining_ms(deadline));
        if (rc < 0) {
            /* Abandoned: what was not handed out never will be; what was
             * ends on its own, and the job is freed then. */
            for (uint32_t i = j->next_item; i < j->count; i++)
                item_end(pool, j, i, rc, 0);
            j->next_item = j->count;
            if (j->ended == j->count)
                job_free(pool, j);
            else
                j->orphan = 1;
            return rc;
        }
        /* The usual case, every item full-length and fine, is one copy. */
        item_t *items = job_items(&j->l);
        int all_full = 1;
        for (uint64_t i = 0; i < n && all_full; i++)
            all_full = items[i].rc == 0 && items[i].len == out_size;
        if (all_full && out_size)
            memcpy((unsigned char *)out + at * out_size, job_out(&j->l, 0), n * out_size);
        for (uint64_t i = 0; i < n && !all_full; i++) {
            if (out_size) {
                unsigned char *dst = (unsigned char *)out + (at + i) * out_size;
                size_t len = items[i].rc == 0 && items[i].len <= out_size ? items[i].len : 0;
                memcpy(dst, job_out(&j->l, i), len);
                memset(dst + len, 0, out_size - len);
            }
            failed |= items[i].rc != 0;
        }
        for (uint64_t i = 0; st && i < n; i++) {
            st[at + i].rc = items[i].rc;
            st[at + i].status = items[i].rc == MPROC_EWORKER ? items[i].status : 0;
        }
        job_free(pool, j);
        at += n;
    }
    return failed ? MPROC_ETASK : 0;
}

int mproc_pool_apply_async(mproc_pool_t *pool, mproc_task_fn fn, const void *arg, size_t len,
                           mproc_task_cb cb, void *ctx, mproc_task_t **out, int timeout_ms)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!pool || !fn || (len && !arg))
        return -EINVAL;
    if (pool->closed || pool->terminated)
        return MPROC_ESTATE;
    struct mproc_task *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    job_t *j;
    int rc = job_new(pool, fn, 1, len, pool->o.max_result, mproc__deadline(timeout_ms), &j);
    if (rc < 0) {
        free(t);
        return rc;
    }
    if (len)
        memcpy(job_in(&j->l, 0), arg, len);
    j->kind = JOB_APPLY;
    j->task = t;
    t->pool = pool;
    t->job = j;
    t->cb = cb;
    t->ctx = ctx;
    job_queue(pool, j);
    assign(pool);
    *out = t;
    return 0;
}

static int task_ended(void *ctx)
{
    return ((struct mproc_task *)ctx)->ended;
}

int mproc_task_wait(mproc_task_t *t, int timeout_ms)
{
    if (!t || !t->job)
        return -EINVAL;
    return pump_until(t->pool, task_ended, t, timeout_ms);
}

int mproc_task_ready(mproc_task_t *t)
{
    if (!t || !t->job)
        return -EINVAL;
    if (!t->ended)
        step(t->pool, 0);
    return t->ended;
}

int mproc_task_result(const mproc_task_t *t, const void **buf, size_t *len, mproc_task_status_t *st)
{
    if (!t || !t->job)
        return -EINVAL;
    if (!t->ended)
        return MPROC_ESTATE;
    item_t *it = job_items(&t->job->l);
    if (buf)
        *buf = job_out(&t->job->l, 0);
    if (len) /* what a worker wrote is not trusted past the room it had */
        *len = it->rc == 0 && it->len <= t->job->l.out_size ? it->len : 0;
    if (st) {
        st->rc = it->rc;
        st->status = it->rc == MPROC_EWORKER ? it->status : 0;
    }
    return it->rc;
}

int mproc_task_free(mproc_task_t *t)
{
    if (!t)
        return 0;
    job_t *j = t->job;
    if (!j) { /* its pool was freed first */
        free(t);
        return 0;
    }
    j->task = NULL;
    if (t->ended && !j->in_callback)
        job_free(t->pool, j);
    else
        j->orphan = 1; /* freed when it ends, or when its callback returns */
    free(t);
    return 0;
}

int mproc_pool_apply(mproc_pool_t *pool, mproc_task_fn fn, const void *arg, size_t len, void *out,
                     size_t cap, size_t *out_len, mproc_task_status_t *st, int timeout_ms)
{
    if (!out_len || (cap && !out))
        return -EINVAL;
    *out_len = 0;
    int64_t deadline = mproc__deadline(timeout_ms);
    mproc_task_t *t;
    int rc = mproc_pool_apply_async(pool, fn, arg, len, NULL, NULL, &t, timeout_ms);
    if (rc < 0)
        return rc;
    rc = mproc_task_wait(t, mproc__remaining_ms(deadline));
    if (rc == 0) {
        const void *buf;
        size_t n;
        rc = mproc_task_result(t, &buf, &n, st);
        *out_len = n;
        if (rc == 0 && n > cap)
            rc = -EMSGSIZE;
        else if (rc == 0)
            memcpy(out, buf, n);
    }
    mproc_task_free(t);
    return rc;
}

/* ---- imap ------------------------------------------------------------------- */

/* A stream: its tasks in the order they were put (a ring), and for the
 * unordered kind, the positions of those that ended, in the order they
 * did (filled by the tasks' callback). */
typedef struct {
    mproc_task_t *task; /* NULL once taken */
    uint64_t index;
} slot_t;

struct mproc_imap {
    mproc_pool_t *pool;
    mproc_task_fn fn;
    int ordered;
    slot_t *ring;
    size_t head, n, cap; /* ring[head .. head + n) in put order  */
    uint64_t next_index; /* of the next put                      */
    uint64_t *ended;     /* unordered: indexes that ended (FIFO)  */
    size_t ehead, en;
};

int mproc_pool_imap(mproc_pool_t *pool, mproc_task_fn fn, int ordered, mproc_imap_t **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!pool || !fn)
        return -EINVAL;
    mproc_imap_t *it = calloc(1, sizeof *it);
    if (!it)
        return -ENOMEM;
    it->pool = pool;
    it->fn = fn;
    it->ordered = ordered != 0;
    *out = it;
    return 0;
}

static slot_t *slot_of(mproc_imap_t *it, uint64_t index)
{
    uint64_t first = it->next_index - it->n;
    if (index < first || index >= it->next_index)
        return NULL;
    return &it->ring[(it->head + (index - first)) % it->cap];
}

static void imap_ended(void *ctx, mproc_task_t *t)
{
    mproc_imap_t *it = ctx;
    it->ended[(it->ehead + it->en) % it->cap] = t->index;
    it->en++;
}

static int imap_grow(mproc_imap_t *it)
{
    size_t cap = it->cap ? it->cap * 2 : 64;
    slot_t *ring = malloc(cap * sizeof *ring);
    uint64_t *ended = malloc(cap * sizeof *ended);
    if (!ring || !ended) {
        free(ring);
        free(ended);
        return -ENOMEM;
    }
    for (size_t k = 0; k < it->n; k++)
        ring[k] = it->ring[(it->head + k) % it->cap];
    for (size_t k = 0; k < it->en; k++)
        ended[k] = it->ended[(it->ehead + k) % it->cap];
    free(it->ring);
    free(it->ended);
    it->ring = ring;
    it->ended = ended;
    it->head = it->ehead = 0;
    it->cap = cap;
    return 0;
}

int mproc_imap_put(mproc_imap_t *it, const void *arg, size_t len, int timeout_ms)
{
    if (!it)
        return -EINVAL;
    if (it->n == it->cap) {
        int rc = imap_grow(it);
        if (rc < 0)
            return rc;
    }
    mproc_task_t *t;
    int rc = mproc_pool_apply_async(it->pool, it->fn, arg, len, it->ordered ? NULL : imap_ended, it,
                                    &t, timeout_ms);
    if (rc < 0)
        return rc;
    /* Its callback runs in a later pool call, never in this one. */
    t->index = it->next_index;
    it->ring[(it->head + it->n) % it->cap] = (slot_t){t, it->next_index++};
    it->n++;
    return 0;
}

/* Drop taken slots from the front of the ring. */
static void imap_trim(mproc_imap_t *it)
{
    while (it->n && !it->ring[it->head].task) {
        it->head = (it->head + 1) % it->cap;
        it->n--;
    }
}

static int imap_has_next(void *ctx)
{
    mproc_imap_t *it = ctx;
    if (it->ordered)
        return it->n && it->ring[it->head].task->ended;
    return it->en > 0;
}

int mproc_imap_next(mproc_imap_t *it, void *out, size_t cap, size_t *len, uint64_t *index,
                    mproc_task_status_t *st, int timeout_ms)
{
    if (!it || !len || (cap && !out))
        return -EINVAL;
    *len = 0;
    imap_trim(it);
    if (!it->n)
        return -ENODATA;
    int rc = pump_until(it->pool, imap_has_next, it, timeout_ms);
    if (rc < 0)
        return rc;
    slot_t *s = it->ordered ? &it->ring[it->head] : slot_of(it, it->ended[it->ehead]);
    if (!s || !s->task)
        return MPROC_ESTATE; /* cannot happen: an ended index is in the ring */
    const void *buf;
    size_t n;
    rc = mproc_task_result(s->task, &buf, &n, st);
    *len = n;
    if (rc == 0 && n > cap)
        return -EMSGSIZE; /* it stays for a larger buffer */
    if (rc == 0)
        memcpy(out, buf, n);
    if (index)
        *index = s->index;
    mproc_task_free(s->task);
    s->task = NULL;
    if (!it->ordered) {
        it->ehead = (it->ehead + 1) % it->cap;
        it->en--;
    }
    imap_trim(it);
    return rc;
}

int mproc_imap_free(mproc_imap_t *it)
{
    if (!it)
        return 0;
    for (size_t k = 0; k < it->n; k++) {
        slot_t *s = &it->ring[(it->head + k) % it->cap];
        if (s->task) {
            s->task->cb = NULL; /* the stream goes: nobody to tell */
            mproc_task_free(s->task);
        }
    }
    free(it->ring);
    free(it->ended);
    free(it);
    return 0;
}

int mproc_pool_poll(mproc_pool_t *pool, int timeout_ms)
{
    if (!pool)
        return -EINVAL;
    return step(pool, timeout_ms);
}

int mproc_pool_fd(const mproc_pool_t *pool)
{
    return pool ? pool->epfd : -EINVAL;
}

unsigned mproc_pool_workers_started(const mproc_pool_t *pool)
{
    return pool ? pool->started : 0;
}

int mproc_pool_close(mproc_pool_t *pool)
{
    if (!pool)
        return -EINVAL;
    if (pool->closed || pool->terminated)
        return MPROC_ESTATE;
    pool->closed = 1;
    return 0;
}

int mproc_pool_terminate(mproc_pool_t *pool)
{
    if (!pool)
        return -EINVAL;
    if (!pool->w)
        return 0;
    if (!pool->terminated)
        step(pool, 0); /* workers already dead: their tasks get their status */
    pool->terminated = 1;
    for (unsigned k = 0; k < pool->nworkers; k++) {
        worker_t *w = &pool->w[k];
        if (!w->p)
            continue;
        w->stopping = 1;
        mproc_process_kill(w->p);
        worker_exited(pool, k); /* joins it; its items: RUNNING fails, NEW waits */
    }
    /* Nothing runs any more: whatever has not ended is cancelled. */
    range_t r;
    while (next_range(pool, &r))
        for (uint32_t i = r.start; i < r.start + r.count; i++)
            if (atomic_load(&job_items(&r.job->l)[i].state) != ITEM_DONE)
                item_end(pool, r.job, i, -ECANCELED, 0);
    return 0;
}

static int all_ended(void *ctx)
{
    mproc_pool_t *pool = ctx;
    for (job_t *j = pool->jobs; j; j = j->next)
        if (j->next_item < j->count)
            return 0;
    if (pool->rq_n)
        return 0;
    for (unsigned k = 0; k < pool->nworkers; k++)
        if (pool->w[k].n)
            return 0;
    return 1;
}

static int all_exited(void *ctx)
{
    return live_workers(ctx) == 0;
}

int mproc_pool_join(mproc_pool_t *pool, int timeout_ms)
{
    if (!pool)
        return -EINVAL;
    if (!pool->closed && !pool->terminated)
        return MPROC_ESTATE;
    int64_t deadline = mproc__deadline(timeout_ms);
    int rc = pump_until(pool, all_ended, pool, timeout_ms);
    if (rc < 0)
        return rc;
    pool->draining = 1;
    for (unsigned k = 0; k < pool->nworkers; k++) {
        worker_t *w = &pool->w[k];
        if (w->p && !w->stopping) {
            task_msg_t stop = {0, 0, 0};
            if (mproc_queue_put(w->q, &stop, sizeof stop, 0) == 0)
                w->stopping = 1;
        }
    }
    return pump_until(pool, all_exited, pool, mproc__remaining_ms(deadline));
}

int mproc_pool_free(mproc_pool_t *pool)
{
    if (!pool)
        return 0;
    if (pool->w && live_workers(pool))
        mproc_pool_terminate(pool);
    /* Jobs still held (tasks not freed, abandoned maps): their memory goes
     * with the segment; the handles of unfreed tasks are invalid now. */
    while (pool->all) {
        job_t *j = pool->all;
        pool->all = j->all_next;
        if (j->task)
            j->task->job = NULL;
        free(j->tries);
        free(j);
    }
    for (unsigned k = 0; pool->w && k < pool->nworkers; k++)
        mproc_queue_close(pool->w[k].q);
    mproc_queue_close(pool->results);
    mproc_shm_close(pool->shm);
    if (pool->epfd >= 0)
        close(pool->epfd);
    free(pool->w);
    free(pool->rq);
    free(pool->init_copy);
    free(pool);
    return 0;
}
