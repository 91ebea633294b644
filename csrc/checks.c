/*
 * checks.c -- the argument checks of a call (attnref.h says what is valid).
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"

#include <math.h>

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

int check_call(const attnref_params *p, const void *out, const void *lse,
               const void *q, const void *k, const void *v, const void *mask)
{
    int64_t rows, heads_rows, kv_heads;
    if (p == NULL) return ATTNREF_ERR_NULL;

    if (p->B < 0 || p->H < 0 || p->L < 0 || p->S < 0 || p->Ev < 0 || p->E < 1)
        return ATTNREF_ERR_SIZE;

    if (p->kv_group < 1 || p->threads < 1 || !path_supported(p->path)
        || (p->mask_kind != ATTNREF_MASK_NONE && p->mask_kind != ATTNREF_MASK_BOOL
            && p->mask_kind != ATTNREF_MASK_BIAS)
        || (p->masked_rows != ATTNREF_ROWS_ZERO && p->masked_rows != ATTNREF_ROWS_NAN)
        || (p->scores != ATTNREF_SCORES_EXACT && p->scores != ATTNREF_SCORES_FAST)
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
