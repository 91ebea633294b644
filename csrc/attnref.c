/*
 * attnref.c -- the public entries of the kernel declared in attnref.h, and
 * the choice of code path (internal.h lists the other files). Two
 * algorithms compute the same contract:
 *   sdpa_impl.h   portable: one row at a time, scalar C99 (any compiler),
 *                 instantiated in portable.c;
 *   tiled_impl.h  tiled: register-blocked SIMD micro-kernels, instantiated
 *                 in tiled.c for AVX-512 and for AVX2+FMA, chosen here at run
 *                 time from the CPU's features (x86-64), and for NEON
 *                 (aarch64); GCC or clang;
 *   decode_impl.h the SIMD paths' kernel for calls with few rows per kv head
 *                 (decoding): K and V streamed unpacked, keys in chunks
 *                 (decode.c), instantiated beside tiled_impl.h.
 * Each is written once and instantiated for float and for double.
 */
#include "internal.h"

#include <math.h>
#include <string.h>

/* A code path's workers: f32 and f64 for any call, and decode_f32 and
   decode_f64 (NULL where the path has none) for calls decode_suits. */
typedef struct {
    const char *name;
    rows_fn f32, f64;
    rows_fn decode_f32, decode_f64;
} code_path;

static const code_path PATHS[] = {
    [ATTNREF_PATH_PORTABLE] = {"portable (scalar C99, one row at a time)",
                               sdpa_rows_f32, sdpa_rows_f64, NULL, NULL},
#if ATTNREF_TILED
    [ATTNREF_PATH_AVX2] = {"avx2 (tiled, AVX2 + FMA)",
                           tiled_rows_avx2_f32, tiled_rows_avx2_f64,
                           tiled_decode_rows_avx2_f32, tiled_decode_rows_avx2_f64},
    [ATTNREF_PATH_AVX512] = {"avx512 (tiled, AVX-512F)",
                             tiled_rows_avx512_f32, tiled_rows_avx512_f64,
                             tiled_decode_rows_avx512_f32, tiled_decode_rows_avx512_f64},
#endif
#if ATTNREF_NEON
    [ATTNREF_PATH_NEON] = {"neon (tiled, NEON)", tiled_rows_neon_f32, tiled_rows_neon_f64,
                           tiled_decode_rows_neon_f32, tiled_decode_rows_neon_f64},
#endif
};

int path_supported(int path)
{
    switch (path) {
    case ATTNREF_PATH_PORTABLE: return 1;
#if ATTNREF_TILED
    case ATTNREF_PATH_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case ATTNREF_PATH_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#endif
#if ATTNREF_NEON
    case ATTNREF_PATH_NEON: return 1;   /* baseline on aarch64 */
#endif
    case ATTNREF_PATH_AUTO: return 1;
    default: return 0;
    }
}

/* the tiled path the build and CPU have (x86-64: AVX-512 before AVX2), else
   the portable one */
static int best_path(void)
{
    for (int path = ATTNREF_PATH_NEON; path > ATTNREF_PATH_PORTABLE; path--)
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

/* The positions a split may not cut, for a kv group size on a code path
   (ATTNREF_PATH_*; auto is the path in use): a call split into calls over
   positions [i0, i1) with i0 a multiple of this (and diag_offset raised by
   i0), each as long as this at least (but for a call that is not split),
   gives the bits of the whole call. On the tiled paths it is the query
   positions of a unit (see sdpa below): every row then sees the same key
   tiles in the same order, and a piece that long has more than DECODE_ROWS
   rows per kv group, so it takes the decoding path (decode_suits) only when
   the whole call does, and that path splits keys by S alone. The portable
   path computes each row on its own and has no decoding path: 1. */
int64_t attnref_row_block(int64_t kv_group, int path)
{
    if ((path == ATTNREF_PATH_AUTO ? path_in_use() : path) == ATTNREF_PATH_PORTABLE) return 1;
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
    if (PATHS[path].decode_f32 != NULL && decode_suits(params)) {
        /* a group: all positions of the query heads of one kv head */
        job.rows = is_double ? PATHS[path].decode_f64 : PATHS[path].decode_f32;
        job.head_chunk = params->kv_group;
        job.block = params->L;
        job.blocks = 1;
        return run_decode(&job, is_double ? sizeof(double) : sizeof(float));
    }
    {
        /* a unit: the query heads of one kv head (or one head, when a group
           is larger than a unit) x a block of positions */
        int64_t next = 0;
        job.head_chunk = params->kv_group <= TILE_ROWS ? params->kv_group : 1;
        job.block = attnref_row_block(params->kv_group, path);
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
#if ATTNREF_NEON
    case ATTNREF_PATH_NEON:
        return is_double ? tiled_exp_array_neon_f64(out, x, n)
                         : tiled_exp_array_neon_f32(out, x, n);
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
