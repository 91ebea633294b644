/*
 * backward.c -- the backward pass of the attention kernel (attnref.h): its
 * entries, the portable path (backward_impl.h: scalar C99, sums in double)
 * and the choice of path: the SIMD paths of backward_tiled.c on the code
 * path the forward uses (attnref_kernel_path), portable elsewhere.
 * backward.h says how a call is cut into passes and units.
 */
#define _POSIX_C_SOURCE 200809L

#include <float.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

#include "backward.h"

/* The checks every entry point shares; ATTNREF_OK or the first problem. */
static int bwd_check(const attnref_params *p, const void *dq, const void *dk, const void *dv,
                     const void *grad_out, const void *out, const void *q, const void *k,
                     const void *v, const void *mask)
{
    if (!p || !dq || !dk || !dv || !grad_out || !out || !q || !k || !v)
        return ATTNREF_ERR_NULL;
    if (p->B < 0 || p->H < 0 || p->L < 0 || p->S < 0 || p->E < 1 || p->Ev < 0)
        return ATTNREF_ERR_SIZE;
    if (p->kv_group < 1 || p->H % p->kv_group != 0 || p->threads < 1
            || p->mask_kind < ATTNREF_MASK_NONE || p->mask_kind > ATTNREF_MASK_BIAS
            || (p->mask_kind != ATTNREF_MASK_NONE && !mask)
            || p->masked_rows < ATTNREF_ROWS_ZERO || p->masked_rows > ATTNREF_ROWS_NAN
            || !(p->scale > 0) || isinf(p->scale) || !(p->softcap >= 0) || isinf(p->softcap)
            || p->path < ATTNREF_PATH_AUTO || p->path > ATTNREF_PATH_NEON
            || (p->path != ATTNREF_PATH_AUTO && !path_supported(p->path)))
        return ATTNREF_ERR_OPTION;
    return ATTNREF_OK;
}

#define BWD_T float
#define BWD_T_MIN FLT_MIN
#define BWD_NAME(x) x##_f32
#include "backward_impl.h"
#undef BWD_T
#undef BWD_T_MIN
#undef BWD_NAME

#define BWD_T double
#define BWD_T_MIN DBL_MIN
#define BWD_NAME(x) x##_f64
#include "backward_impl.h"
#undef BWD_T
#undef BWD_T_MIN
#undef BWD_NAME

/* The path a call runs on: params->path, or for AUTO the forward's
   (attnref_select_path's choice, named by attnref_kernel_path). */
static int bwd_path(const attnref_params *p)
{
    static const struct { const char *prefix; int path; } names[] = {
        {"avx512", ATTNREF_PATH_AVX512}, {"avx2", ATTNREF_PATH_AVX2}, {"neon", ATTNREF_PATH_NEON}};
    if (p->path != ATTNREF_PATH_AUTO)
        return p->path;
    const char *name = attnref_kernel_path();
    for (size_t u = 0; u < sizeof names / sizeof names[0]; u++)
        if (strncmp(name, names[u].prefix, strlen(names[u].prefix)) == 0
                && name[strlen(names[u].prefix)] == ' ')
            return names[u].path;
    return ATTNREF_PATH_PORTABLE;
}

/* The SIMD worker of a path and float type, NULL where this build has none. */
static rows_fn bwd_tiled_worker(int path, int is_double)
{
    switch (path) {
#if ATTNREF_TILED
    case ATTNREF_PATH_AVX512: return is_double ? bwd_rows_avx512_f64 : bwd_rows_avx512_f32;
    case ATTNREF_PATH_AVX2: return is_double ? bwd_rows_avx2_f64 : bwd_rows_avx2_f32;
#endif
#if ATTNREF_NEON
    case ATTNREF_PATH_NEON: return is_double ? bwd_rows_neon_f64 : bwd_rows_neon_f32;
#endif
    default: return NULL;
    }
}

/* The (batch entry, kv head) pairs from which a backward call on `path`
   (ATTNREF_PATH_AUTO: the one in use) fuses its dq and dk, dv passes; 0 when
   that path never does. kernel.py cuts a long call into calls of whole
   pairs, each with at least this many when the whole call has them, so each
   runs the passes the whole call would: the same bits. */
int64_t attnref_backward_fused_pairs(int path)
{
    attnref_params p;
    memset(&p, 0, sizeof p);
    p.path = path;
    return bwd_tiled_worker(bwd_path(&p), 0) != NULL ? BWD_FUSED_UNITS : 0;
}

static int bwd(const attnref_params *p, int is_double, void *dq, void *dk, void *dv,
               const void *grad_out, const void *out, const void *lse, const void *q,
               const void *k, const void *v, const void *mask, void *dmask)
{
    int status = bwd_check(p, dq, dk, dv, grad_out, out, q, k, v, mask);
    if (status != ATTNREF_OK)
        return status;
    const size_t real = is_double ? sizeof(double) : sizeof(float);
    const int64_t Hkv = p->H / p->kv_group;
    int64_t rows, keys, dq_size, dk_size, dv_size, dmask_size;
    if (!mul_fits(p->B, p->H, &rows) || !mul_fits(rows, p->L, &rows)
            || !mul_fits(p->B, Hkv, &keys) || !mul_fits(keys, p->S, &keys)
            || !mul_fits(rows, p->E, &dq_size) || !mul_fits(keys, p->E, &dk_size)
            || !mul_fits(keys, p->Ev, &dv_size) || !mul_fits(rows, p->S, &dmask_size)
            || rows > INT64_MAX / 2 || (uint64_t)dmask_size > SIZE_MAX / real
            || (uint64_t)dq_size > SIZE_MAX / real || (uint64_t)dk_size > SIZE_MAX / real
            || (uint64_t)dv_size > SIZE_MAX / real || (uint64_t)rows > SIZE_MAX / 16)
        return ATTNREF_ERR_OVERFLOW;
    memset(dq, 0, (size_t)dq_size * real);
    memset(dk, 0, (size_t)dk_size * real);
    memset(dv, 0, (size_t)dv_size * real);
    if (dmask)
        memset(dmask, 0, (size_t)dmask_size * real);
    const rows_fn tiled = bwd_tiled_worker(bwd_path(p), is_double);
    const rows_fn portable = is_double ? bwd_portable_rows_f64 : bwd_portable_rows_f32;
    bwd_call call = {p, dq, dk, dv, dmask, grad_out, out, lse, q, k, v, mask, NULL, 0};
    /* without the forward's lse: each row's m and l (the tiled path keeps
       them in REAL, the portable one in double) */
    if (!lse && rows > 0) {
        call.stats = malloc((size_t)(2 * rows) * (tiled ? real : sizeof(double)));
        if (!call.stats)
            return ATTNREF_ERR_NOMEM;
    }
    const int64_t qblocks = (p->L + BWD_QBLOCK - 1) / BWD_QBLOCK;
    const int64_t kblocks = (p->S + BWD_KEYS - 1) / BWD_KEYS;
    const int fused = tiled && p->B * Hkv >= BWD_FUSED_UNITS;
    const int last = fused ? BWD_PASS_FUSED : BWD_PASS_DKDV;
    for (int pass = lse ? BWD_PASS_DQ : BWD_PASS_STATS; pass <= last && status == ATTNREF_OK;
         pass++) {
        int64_t next = 0, units;
        if (fused && (pass == BWD_PASS_DQ || pass == BWD_PASS_DKDV)) continue;
        sdpa_job job;
        memset(&job, 0, sizeof job);
        call.pass = pass;
        job.params = p;
        job.out = &call;
        job.rows = tiled ? tiled : portable;
        if (tiled) {
            units = pass == BWD_PASS_FUSED ? p->B * Hkv
                    : pass == BWD_PASS_DKDV ? p->B * Hkv * kblocks : p->B * p->H * qblocks;
            job.next = &next;
            job.row_end = units;
        } else {
            units = pass == BWD_PASS_DKDV ? keys : rows;
        }
        status = run_shares(&job, units);
    }
    free(call.stats);
    return status;
}

int attnref_sdpa_backward_f32(const attnref_params *params, float *dq, float *dk, float *dv,
                              const float *grad_out, const float *out, const float *lse,
                              const float *q, const float *k, const float *v, const void *mask,
                              float *dmask)
{
    return bwd(params, 0, dq, dk, dv, grad_out, out, lse, q, k, v, mask, dmask);
}

int attnref_sdpa_backward_f64(const attnref_params *params, double *dq, double *dk,
                              double *dv, const double *grad_out, const double *out,
                              const double *lse, const double *q, const double *k,
                              const double *v, const void *mask, double *dmask)
{
    return bwd(params, 1, dq, dk, dv, grad_out, out, lse, q, k, v, mask, dmask);
}
