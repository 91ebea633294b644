/*
 * threads.c -- a call's rows (portable path) or units (tiled path) over
 * threads: a pool of workers that outlive a call, fresh threads when it is
 * busy, and how many threads a call can use.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"

#include <pthread.h>
#include <stdlib.h>

static void *run_job(void *arg)
{
    sdpa_job *job = arg;
    job->status = job->rows(job);
    return NULL;
}

/* Runs jobs[0] on the calling thread and jobs[1..threads) on new threads. A
   worker that cannot be started has its job run on the calling thread: same
   work, only slower; so ATTNREF_ERR_THREAD is never returned. */
static int run_fresh_threads(sdpa_job *jobs, int64_t threads)
{
    pthread_t *tids = malloc((size_t)threads * sizeof *tids);
    int *started = calloc((size_t)threads, sizeof *started);
    int status = ATTNREF_OK;
    if (tids == NULL || started == NULL) {
        free(tids);
        free(started);
        return ATTNREF_ERR_NOMEM;
    }
    for (int64_t t = 1; t < threads; t++) {
        started[t] = pthread_create(&tids[t], NULL, run_job, &jobs[t]) == 0;
        if (!started[t]) run_job(&jobs[t]);
    }
    run_job(&jobs[0]);
    for (int64_t t = 1; t < threads; t++)
        if (started[t]) pthread_join(tids[t], NULL);
    for (int64_t t = 0; t < threads && status == ATTNREF_OK; t++)
        status = jobs[t].status;
    free(tids);
    free(started);
    return status;
}

/* A pool of workers that outlive a call: starting threads costs tens of
   microseconds, a call on small inputs little more. Worker w runs
   jobs[1 + w] of each round it is given; one call dispatches at a time (a
   concurrent caller starts fresh threads instead), and a forked child,
   which has none of the parent's workers, starts its own. */
#define POOL_MAX 256

static struct {
    pthread_mutex_t lock;       /* guards every field below */
    pthread_cond_t work, done;  /* a round was dispatched / its workers finished */
    sdpa_job *jobs;             /* this round's jobs; worker w takes jobs[1 + w] */
    int64_t count;              /* workers this round */
    int64_t pending;            /* of those, still running */
    uint64_t round;
    int64_t workers;            /* started so far */
    uint64_t born[POOL_MAX];    /* the round before worker w's first */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
          NULL, 0, 0, 0, 0, {0}};
static pthread_mutex_t pool_dispatch = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t pool_fork_handler = PTHREAD_ONCE_INIT;

static void *pool_worker(void *arg)
{
    const int64_t w = (int64_t)(intptr_t)arg;
    uint64_t seen;
    pthread_mutex_lock(&pool.lock);
    /* not pool.round: a worker started for a round may first get the lock
       after that round was dispatched */
    seen = pool.born[w];
    for (;;) {
        while (pool.round == seen) pthread_cond_wait(&pool.work, &pool.lock);
        seen = pool.round;
        if (w < pool.count) {
            sdpa_job *job = &pool.jobs[1 + w];
            pthread_mutex_unlock(&pool.lock);
            run_job(job);
            pthread_mutex_lock(&pool.lock);
            if (--pool.pending == 0) pthread_cond_signal(&pool.done);
        }
    }
    return NULL;
}

/* In a forked child the parent's workers do not exist and the locks may be
   in any state: start over. */
static void pool_after_fork(void)
{
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.work, NULL);
    pthread_cond_init(&pool.done, NULL);
    pthread_mutex_init(&pool_dispatch, NULL);
    pool.jobs = NULL;
    pool.count = pool.pending = 0;
    pool.workers = 0;
}

static void pool_register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, pool_after_fork);
}

/* Runs jobs[0] on the calling thread and jobs[1..threads) on pool workers
   (or on fresh threads when the pool is busy or cannot grow). */
static int run_threads(sdpa_job *jobs, int64_t threads)
{
    int status = ATTNREF_OK;
    if (threads <= 1) {
        run_job(&jobs[0]);
        return jobs[0].status;
    }
    if (threads - 1 > POOL_MAX || pthread_mutex_trylock(&pool_dispatch) != 0)
        return run_fresh_threads(jobs, threads);
    pthread_once(&pool_fork_handler, pool_register_fork_handler);
    pthread_mutex_lock(&pool.lock);
    while (pool.workers < threads - 1) {
        pthread_t tid;
        pool.born[pool.workers] = pool.round;
        if (pthread_create(&tid, NULL, pool_worker, (void *)(intptr_t)pool.workers) != 0)
            break;
        pthread_detach(tid);
        pool.workers++;
    }
    if (pool.workers < threads - 1) {
        pthread_mutex_unlock(&pool.lock);
        pthread_mutex_unlock(&pool_dispatch);
        return run_fresh_threads(jobs, threads);
    }
    pool.jobs = jobs;
    pool.count = pool.pending = threads - 1;
    pool.round++;
    pthread_cond_broadcast(&pool.work);
    pthread_mutex_unlock(&pool.lock);

    run_job(&jobs[0]);

    pthread_mutex_lock(&pool.lock);
    while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.lock);
    pool.count = 0;
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool_dispatch);
    for (int64_t t = 0; t < threads && status == ATTNREF_OK; t++)
        status = jobs[t].status;
    return status;
}

/* Multiply-adds below which another thread costs more (waking it, about
   10-20 us) than it saves. */
#define WORK_PER_THREAD ((int64_t)1 << 20)

/* At most params->threads and `pieces` threads, and fewer when the call is
   too small to share: results do not depend on the count, only the time. */
static int64_t useful_threads(const attnref_params *p, int64_t pieces)
{
    /* B H L S (E + Ev) multiply-adds, saturated (sizes are < 2^61) */
    int64_t work = p->E + p->Ev, threads;
    const int64_t factors[4] = {p->B, p->H, p->L, p->S};
    for (int f = 0; f < 4; f++)
        if (!mul_fits(work, factors[f], &work)) work = INT64_MAX;
    threads = work / WORK_PER_THREAD > 0 ? work / WORK_PER_THREAD : 1;
    if (threads > p->threads) threads = p->threads;
    return threads < pieces ? threads : pieces;
}

/* Runs `whole` on as many threads as its `count` rows (portable path) or
   units (tiled path) can use. Portable: thread t computes the t-th of
   contiguous ranges of rows. Tiled (whole->next set): every thread takes
   units from the shared counter until it reaches whole->row_end = count.
   Each row is computed by one thread in a fixed order of operations, so the
   result is bit-identical for any thread count. */
int run_shares(const sdpa_job *whole, int64_t count)
{
    const int64_t threads = useful_threads(whole->params, count);
    sdpa_job *jobs;
    int status;
    if (count == 0) return ATTNREF_OK;
    jobs = malloc((size_t)threads * sizeof *jobs);
    if (jobs == NULL) return ATTNREF_ERR_NOMEM;
    for (int64_t t = 0; t < threads; t++) {
        /* count / threads each, the first count % threads one more */
        const int64_t base = count / threads, extra = count % threads;
        jobs[t] = *whole;
        if (whole->next == NULL) {
            jobs[t].row_begin = t * base + (t < extra ? t : extra);
            jobs[t].row_end = jobs[t].row_begin + base + (t < extra ? 1 : 0);
        }
    }
    status = run_threads(jobs, threads);
    free(jobs);
    return status;
}
