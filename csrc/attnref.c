/*
 * attnref.c -- the fused attention kernel declared in attnref.h.
 *
 * This file holds what does not depend on the float type: argument checks,
 * the visible key range of a row, the split of work over threads, and the
 * choice of code path. Two algorithms compute the same contract:
 *   sdpa_impl.h   portable: one row at a time, scalar C99 (any compiler);
 *   tiled_impl.h  tiled: register-blocked SIMD micro-kernels, compiled for
 *                 AVX-512 and for AVX2+FMA with GCC target pragmas (never
 *                 -march=native) and chosen at run time from the CPU's
 *                 features; GCC on x86-64 only.
 * Each is written once and instantiated below for float and for double.
 */
#define _POSIX_C_SOURCE 200809L

#include "attnref.h"

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ATTNREF_TILED 1
#include <immintrin.h>
#else
#define ATTNREF_TILED 0
#endif

/* Keys per online-softmax block of the portable path: scratch per thread is
   O(KEY_BLOCK + Ev). */
#define KEY_BLOCK 64
/* Tiled path: query rows per unit and keys per tile; scratch per thread is
   O(TILE_ROWS (E + Ev + TILE_KEYS) + TILE_KEYS (E + Ev)). */
#define TILE_ROWS 64
#define TILE_KEYS 64
/* Independent partial sums in a dot product: the compiler can vectorise them
   without reassociating (no -ffast-math). */
#define DOT_LANES 16
/* ln of the smallest normal float and double, rounded to the type: a key with
   s_j - m below it weighs exactly 0 on every path (attnref.h; the vector exp
   of simd.h flushes there too), as attnref.core's reference does. */
#define LOG_FLT_MIN -87.33654475f
#define LOG_DBL_MIN -708.39641853226408

/* ------------------------------------------------------------------------ */
/* int64 arithmetic that cannot overflow                                     */

/* *r = a * b for a, b >= 0; returns 0 when that overflows. */
static int mul_fits(int64_t a, int64_t b, int64_t *r)
{
    if (b != 0 && a > INT64_MAX / b) return 0;
    *r = a * b;
    return 1;
}

/* *r = a + b for a, b >= 0; returns 0 when that overflows. */
static int add_fits(int64_t a, int64_t b, int64_t *r)
{
    if (a > INT64_MAX - b) return 0;
    *r = a + b;
    return 1;
}

/* a + b, saturated to [INT64_MIN, INT64_MAX]: any band arithmetic stays
   monotone, so clamping the result to [0, S] afterwards is exact. */
static int64_t add_saturated(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b) return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b) return INT64_MIN;
    return a + b;
}

static int64_t clamp(int64_t x, int64_t lo, int64_t hi)
{
    return x < lo ? lo : x > hi ? hi : x;
}

/* Largest |element offset| an operand reaches is
   sum_d (size[d] - 1) * |stride[d]| + (row_len - 1); returns 0 when that does
   not fit in int64. An operand with an empty dim is never addressed. */
static int extent_fits(int ndim, const int64_t *size, const int64_t *stride,
                       int64_t row_len)
{
    int64_t extent = row_len > 0 ? row_len - 1 : 0;
    for (int d = 0; d < ndim; d++)
        if (size[d] == 0) return 1;
    for (int d = 0; d < ndim; d++) {
        int64_t step, reach;
        if (stride[d] == INT64_MIN) return 0;  /* |INT64_MIN| is not an int64 */
        step = stride[d] < 0 ? -stride[d] : stride[d];
        if (!mul_fits(size[d] - 1, step, &reach) || !add_fits(extent, reach, &extent))
            return 0;
    }
    return 1;
}

/* Keys j visible from row i by the band, band_lower <= j - i - diag_offset
   <= band_upper, as the half-open range [*j_begin, *j_end) within [0, S). */
static void band_keys(const attnref_params *p, int64_t i,
                      int64_t *j_begin, int64_t *j_end)
{
    int64_t diag = add_saturated(i, p->diag_offset);
    *j_begin = clamp(add_saturated(diag, p->band_lower), 0, p->S);
    *j_end = clamp(add_saturated(add_saturated(diag, p->band_upper), 1), 0, p->S);
    if (*j_end < *j_begin) *j_end = *j_begin;  /* band_lower > band_upper: empty */
}

/* ------------------------------------------------------------------------ */
/* argument checks                                                           */

static int path_supported(int path);

static int check_call(const attnref_params *p, const void *out, const void *lse,
                      const void *q, const void *k, const void *v,
                      const void *mask)
{
    int64_t rows, heads_rows, kv_heads;
    if (p == NULL) return ATTNREF_ERR_NULL;

    if (p->B < 0 || p->H < 0 || p->L < 0 || p->S < 0 || p->Ev < 0 || p->E < 1)
        return ATTNREF_ERR_SIZE;

    if (p->kv_group < 1 || p->threads < 1 || !path_supported(p->path)
        || (p->mask_kind != ATTNREF_MASK_NONE && p->mask_kind != ATTNREF_MASK_BOOL
            && p->mask_kind != ATTNREF_MASK_BIAS)
        || (p->masked_rows != ATTNREF_ROWS_ZERO && p->masked_rows != ATTNREF_ROWS_NAN)
        || !isfinite(p->scale) || p->scale <= 0
        || !isfinite(p->softcap) || p->softcap < 0)
        return ATTNREF_ERR_OPTION;

    /* rows index (b, h, i) flattened; it must fit before anything else is sized */
    if (!mul_fits(p->H, p->L, &heads_rows) || !mul_fits(p->B, heads_rows, &rows))
        return ATTNREF_ERR_OVERFLOW;

    /* with no row to compute nothing is read or written */
    if (rows > 0 && (q == NULL || k == NULL || v == NULL || out == NULL
                     || (p->mask_kind != ATTNREF_MASK_NONE && mask == NULL)))
        return ATTNREF_ERR_NULL;

    kv_heads = p->H == 0 ? 0 : (p->H - 1) / p->kv_group + 1;
    {
        const int64_t q_size[3] = {p->B, p->H, p->L};
        const int64_t kv_size[3] = {p->B, kv_heads, p->S};
        const int64_t mask_size[4] = {p->B, p->H, p->L, p->S};
        if (!extent_fits(3, q_size, p->q_stride, p->E)
            || !extent_fits(3, kv_size, p->k_stride, p->E)
            || !extent_fits(3, kv_size, p->v_stride, p->Ev)
            || !extent_fits(3, q_size, p->out_stride, p->Ev)
            || (lse != NULL && !extent_fits(3, q_size, p->lse_stride, 1))
            || (p->mask_kind != ATTNREF_MASK_NONE
                && !extent_fits(4, mask_size, p->mask_stride, 1)))
            return ATTNREF_ERR_OVERFLOW;
    }
    return ATTNREF_OK;
}

/* ------------------------------------------------------------------------ */
/* rows over threads                                                         */

/* The work of one call, or a thread's share of it. The portable path takes
   the contiguous range [row_begin, row_end) of flattened (b, h, i) rows;
   the tiled path takes units (see tiled_impl.h) from the shared counter
   *next until it reaches row_end, the number of units. `rows` is the float
   or double worker of the path. */
typedef struct sdpa_job {
    int (*rows)(const struct sdpa_job *job);
    const attnref_params *params;
    void *out, *lse;
    const void *q, *k, *v, *mask;
    int64_t row_begin, row_end;
    int64_t block, blocks, head_chunk;   /* tiled: positions per unit, ... */
    int64_t *next;                       /* tiled: next unit to take */
    int status;
} sdpa_job;

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
static int run_shares(const sdpa_job *whole, int64_t count)
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

/* ------------------------------------------------------------------------ */
/* score dot products, about twice as precise as their operands              */

/* Why not a plain dot: the equivalence rule allows the kernel twice the error
   of a plain implementation in the same dtype. Where q.k cancels heavily
   (|q.k| << sum_c |q_c k_c|, e.g. large scale with softcap) the score error
   of any plain dot is a random draw as large as the reference's own, and
   "twice" then fails by chance. A dot carried in twice the precision leaves
   only the final rounding. */

/* sum of DOT_LANES partial sums, pairwise */
static double sum_lanes(double *lane)
{
    for (int width = DOT_LANES / 2; width > 0; width /= 2)
        for (int u = 0; u < width; u++)
            lane[u] += lane[u + width];
    return lane[0];
}

/* float: a product of two floats is exact in double (24 + 24 <= 53 bits), so
   the sum is carried in double; the caller rounds the score to float once. */
static double dot_f32(const float *a, const float *b, int64_t n)
{
    double lane[DOT_LANES] = {0};
    int64_t c = 0;
    for (; c + DOT_LANES <= n; c += DOT_LANES)
        for (int u = 0; u < DOT_LANES; u++)
            lane[u] += (double)a[c + u] * b[c + u];
    for (int u = 0; c < n; c++, u++)
        lane[u] += (double)a[c] * b[c];
    return sum_lanes(lane);
}

/* Dekker's TwoProduct with Veltkamp's split: a * b == product + the result,
   exactly (no FMA needed; the build disables FP contraction). */
static double product_error(double a, double b, double product)
{
    const double split = 134217729.0;  /* 2^27 + 1 */
    const double a_big = split * a, b_big = split * b;
    const double a_hi = a_big - (a_big - a), a_lo = a - a_hi;
    const double b_hi = b_big - (b_big - b), b_lo = b - b_hi;
    return ((a_hi * b_hi - product) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo;
}

/* Knuth's TwoSum: *sum + x == new *sum + the result, exactly. */
static double add_exactly(double *sum, double x)
{
    const double total = *sum + x, z = total - *sum;
    const double error = (*sum - (total - z)) + (x - z);
    *sum = total;
    return error;
}

/* double: Dot2 of Ogita, Rump & Oishi ("Accurate sum and dot product", SIAM
   J. Sci. Comput. 26(6), 2005, Alg. 5.3): every rounding error of products
   and sums is kept and added back once, as if computed in twice the
   precision. */
static double dot_f64(const double *a, const double *b, int64_t n)
{
    double lane[DOT_LANES] = {0}, error[DOT_LANES] = {0};
    double total = 0, total_error = 0;
    int64_t c = 0;
    for (; c + DOT_LANES <= n; c += DOT_LANES)
        for (int u = 0; u < DOT_LANES; u++) {
            const double product = a[c + u] * b[c + u];
            error[u] += add_exactly(&lane[u], product)
                        + product_error(a[c + u], b[c + u], product);
        }
    for (int u = 0; c < n; c++, u++) {
        const double product = a[c] * b[c];
        error[u] += add_exactly(&lane[u], product) + product_error(a[c], b[c], product);
    }
    for (int u = 0; u < DOT_LANES; u++)
        total_error += add_exactly(&total, lane[u]) + error[u];
    /* the split overflows for |a| or |b| near DBL_MAX: keep the plain sum */
    return isfinite(total_error) ? total + total_error : total;
}

/* ------------------------------------------------------------------------ */
/* the portable path, once per float type                                    */

#define REAL float
#define EXP expf
#define LOG logf
#define LOG_MIN LOG_FLT_MIN
#define DOT dot_f32
#define AXPY axpy_f32
#define SDPA_ROWS sdpa_rows_f32
#define NONFINITE_DIMS nonfinite_dims_f32
#include "sdpa_impl.h"

#define REAL double
#define EXP exp
#define LOG log
#define LOG_MIN LOG_DBL_MIN
#define DOT dot_f64
#define AXPY axpy_f64
#define SDPA_ROWS sdpa_rows_f64
#define NONFINITE_DIMS nonfinite_dims_f64
#include "sdpa_impl.h"

/* ------------------------------------------------------------------------ */
/* the tiled path, once per instruction set and float type                   */

#if ATTNREF_TILED

static int64_t next_unit(const sdpa_job *job)
{
    return __atomic_fetch_add(job->next, 1, __ATOMIC_RELAXED);
}

/* Byte offsets of a tiled thread's scratch buffers (see tiled_impl.h), each
   64-byte aligned; offset[6] is the total, the last `rows_size` bytes of which
   hold the unit's row table. Returns 0 when the sizes overflow. */
static int tiled_scratch_layout(int64_t E, int64_t Evp, size_t real, size_t rows_size,
                                size_t offset[7])
{
    const uint64_t limit = (uint64_t)1 << 56;
    const uint64_t sizes[6] = {
        (uint64_t)TILE_ROWS * E * sizeof(double), (uint64_t)E * TILE_KEYS * sizeof(double),
        (uint64_t)TILE_KEYS * Evp * real, (uint64_t)TILE_ROWS * TILE_KEYS * sizeof(double),
        (uint64_t)TILE_ROWS * TILE_KEYS * real, (uint64_t)TILE_ROWS * Evp * real};
    uint64_t total = 0;
    if ((uint64_t)E > limit / (TILE_ROWS * sizeof(double))
        || (uint64_t)Evp > limit / (TILE_ROWS * sizeof(double)))
        return 0;
    for (int u = 0; u < 6; u++) {
        offset[u] = (size_t)total;
        total += (sizes[u] + 63) / 64 * 64;
    }
    if (total + rows_size > SIZE_MAX) return 0;
    offset[6] = (size_t)(total + rows_size);
    return 1;
}

static void *aligned_scratch(size_t bytes)
{
    void *memory = NULL;
    return posix_memalign(&memory, 64, bytes) == 0 ? memory : NULL;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,fma")
#define SIMD_AVX512 1
#define VALUE_MR 4
#define VALUE_NV 4

#define REAL float
#define REAL_IS_DOUBLE 0
#define EXP expf
#define LOG logf
#define TILED(name) tiled_##name##_avx512_f32
#define SCORE_MR 4      /* 4 rows x 4 x 8 keys: 16 accumulators of 32 */
#define SCORE_NV 4
#include "simd.h"
#include "tiled_impl.h"
#undef SCORE_MR
#undef SCORE_NV

#define REAL double
#define REAL_IS_DOUBLE 1
#define EXP exp
#define LOG log
#define TILED(name) tiled_##name##_avx512_f64
#define SCORE_MR 4      /* Dot2: a sum and an error per lane, 16 of 32 */
#define SCORE_NV 2
#include "simd.h"
#include "tiled_impl.h"
#undef SCORE_MR
#undef SCORE_NV

#undef SIMD_AVX512
#undef VALUE_MR
#undef VALUE_NV
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SIMD_AVX2 1
#define VALUE_MR 4      /* 4 rows x 2 x 8 dims: 8 accumulators of 16 */
#define VALUE_NV 2

#define REAL float
#define REAL_IS_DOUBLE 0
#define EXP expf
#define LOG logf
#define TILED(name) tiled_##name##_avx2_f32
#define SCORE_MR 4      /* 4 rows x 2 x 4 keys: 8 accumulators of 16 */
#define SCORE_NV 2
#include "simd.h"
#include "tiled_impl.h"
#undef SCORE_MR
#undef SCORE_NV

#define REAL double
#define REAL_IS_DOUBLE 1
#define EXP exp
#define LOG log
#define TILED(name) tiled_##name##_avx2_f64
#define SCORE_MR 2      /* Dot2: a sum and an error per lane, 8 of 16 */
#define SCORE_NV 2
#include "simd.h"
#include "tiled_impl.h"
#undef SCORE_MR
#undef SCORE_NV

#undef SIMD_AVX2
#undef VALUE_MR
#undef VALUE_NV
#pragma GCC pop_options

#endif /* ATTNREF_TILED */

/* ------------------------------------------------------------------------ */
/* code paths and the public entries                                         */

typedef int (*rows_fn)(const sdpa_job *job);

typedef struct {
    const char *name;
    rows_fn f32, f64;
} code_path;

static const code_path PATHS[] = {
    [ATTNREF_PATH_PORTABLE] = {"portable (scalar C99, one row at a time)",
                               sdpa_rows_f32, sdpa_rows_f64},
#if ATTNREF_TILED
    [ATTNREF_PATH_AVX2] = {"avx2 (tiled, AVX2 + FMA)",
                           tiled_rows_avx2_f32, tiled_rows_avx2_f64},
    [ATTNREF_PATH_AVX512] = {"avx512 (tiled, AVX-512F)",
                             tiled_rows_avx512_f32, tiled_rows_avx512_f64},
#endif
};

static int path_supported(int path)
{
    switch (path) {
    case ATTNREF_PATH_PORTABLE: return 1;
#if ATTNREF_TILED
    case ATTNREF_PATH_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case ATTNREF_PATH_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#endif
    case ATTNREF_PATH_AUTO: return 1;
    default: return 0;
    }
}

static int best_path(void)
{
    for (int path = ATTNREF_PATH_AVX512; path > ATTNREF_PATH_PORTABLE; path--)
        if (path_supported(path)) return path;
    return ATTNREF_PATH_PORTABLE;
}

/* 0 until the first call picks the best path; then the path in use. Read
   and written atomically: one thread may select a path while others call. */
static int current_path = ATTNREF_PATH_AUTO;

static int path_in_use(void)
{
    int path = __atomic_load_n(&current_path, __ATOMIC_RELAXED);
    if (path == ATTNREF_PATH_AUTO) {
        /* a concurrent first call stores the same value */
        path = best_path();
        __atomic_store_n(&current_path, path, __ATOMIC_RELAXED);
    }
    return path;
}

int attnref_select_path(int path)
{
    if (path == ATTNREF_PATH_AUTO) path = best_path();
    if (!path_supported(path)) return ATTNREF_ERR_OPTION;
    __atomic_store_n(&current_path, path, __ATOMIC_RELAXED);
    return ATTNREF_OK;
}

int attnref_path_supported(int path)
{
    return path == ATTNREF_PATH_AUTO || path_supported(path);
}

const char *attnref_kernel_path(void)
{
    return PATHS[path_in_use()].name;
}

int64_t attnref_band_unbounded(void)
{
    return ATTNREF_BAND_UNBOUNDED;
}

/* Query positions per tiled unit for a kv group size (see sdpa below): a
   call split into calls over positions [i0, i1) with i0 a multiple of this
   (and diag_offset raised by i0) computes every row from the same key tiles
   in the same order, so the split gives the same bits. The portable path
   computes each row on its own: any split gives the same bits there. */
int64_t attnref_row_block(int64_t kv_group)
{
    return TILE_ROWS / (kv_group >= 1 && kv_group <= TILE_ROWS ? kv_group : 1);
}

static int sdpa(const attnref_params *params, int is_double, void *out, void *lse,
                const void *q, const void *k, const void *v, const void *mask)
{
    const int status = check_call(params, out, lse, q, k, v, mask);
    if (status != ATTNREF_OK) return status;
    const int path = params->path == ATTNREF_PATH_AUTO ? path_in_use() : params->path;
    const int64_t rows = params->B * params->H * params->L;
    sdpa_job job;
    /* an empty output and no lse: nothing to compute */
    if (rows == 0 || (params->Ev == 0 && lse == NULL)) return ATTNREF_OK;
    memset(&job, 0, sizeof job);
    job.rows = is_double ? PATHS[path].f64 : PATHS[path].f32;
    job.params = params;
    job.out = out;
    job.lse = lse;
    job.q = q;
    job.k = k;
    job.v = v;
    job.mask = mask;
    if (path == ATTNREF_PATH_PORTABLE) return run_shares(&job, rows);
    {
        /* a unit: the query heads of one kv head (or one head, when a group
           is larger than a unit) x a block of positions */
        int64_t next = 0;
        job.head_chunk = params->kv_group <= TILE_ROWS ? params->kv_group : 1;
        job.block = attnref_row_block(params->kv_group);
        job.blocks = (params->L - 1) / job.block + 1;
        job.row_end = params->B * ((params->H - 1) / job.head_chunk + 1) * job.blocks;
        job.next = &next;
        return run_shares(&job, job.row_end);
    }
}

int attnref_sdpa_f32(const attnref_params *params, float *out, float *lse,
                     const float *q, const float *k, const float *v, const void *mask)
{
    return sdpa(params, 0, out, lse, q, k, v, mask);
}

int attnref_sdpa_f64(const attnref_params *params, double *out, double *lse,
                     const double *q, const double *k, const double *v, const void *mask)
{
    return sdpa(params, 1, out, lse, q, k, v, mask);
}

/* out[i] = exp(x[i]) by the path in use (tests measure its error) */
static int exp_array(int is_double, void *out, const void *x, int64_t n)
{
    if (n < 0 || (n > 0 && (out == NULL || x == NULL))) return ATTNREF_ERR_SIZE;
    switch (path_in_use()) {
#if ATTNREF_TILED
    case ATTNREF_PATH_AVX512:
        return is_double ? tiled_exp_array_avx512_f64(out, x, n)
                         : tiled_exp_array_avx512_f32(out, x, n);
    case ATTNREF_PATH_AVX2:
        return is_double ? tiled_exp_array_avx2_f64(out, x, n)
                         : tiled_exp_array_avx2_f32(out, x, n);
#endif
    default:
        for (int64_t i = 0; i < n; i++) {
            if (is_double) ((double *)out)[i] = exp(((const double *)x)[i]);
            else ((float *)out)[i] = expf(((const float *)x)[i]);
        }
        return ATTNREF_OK;
    }
}

int attnref_exp_f32(float *out, const float *x, int64_t n)
{
    return exp_array(0, out, x, n);
}

int attnref_exp_f64(double *out, const double *x, int64_t n)
{
    return exp_array(1, out, x, n);
}
