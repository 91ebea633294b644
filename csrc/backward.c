/*
 * backward.c -- the backward pass of the attention kernel (attnref.h):
 * portable C99, float32 and float64, threads without atomics. The formulas
 * and the order of every sum are in backward_impl.h.
 */
#define _POSIX_C_SOURCE 200809L

#include <float.h>
#include <pthread.h>
#include <stdlib.h>
#include <tgmath.h>

#include "attnref.h"

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
            || !(p->scale > 0) || isinf(p->scale) || !(p->softcap >= 0) || isinf(p->softcap))
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
