/*
 * backward_impl.h -- the backward pass of attnref.h's attention, for one
 * float type. Included by backward.c with BWD_T (float or double) and
 * BWD_NAME(x) (x ## _f32 or x ## _f64) defined; <tgmath.h> picks exp and
 * tanh of the type.
 *
 * FlashAttention-2's recomputation (Dao 2023, arXiv:2307.08691, Algorithm
 * 2), with the weights rebuilt from each row's maximum m_i and sum l_i
 * (pass 1) rather than from the lse: exp(s - lse) carries a relative error
 * of eps |lse|, which at scores in the thousands (or a finfo.min bias, where
 * lse absorbs log S) exceeds the forward's own rounding by orders of
 * magnitude (docs/torch-2.13-backward.md: torch's CPU flash backward):
 *   m_i   = max_j s_ij,  l_i = sum_j exp(s_ij - m_i)   (visible keys with
 *           s_ij - m_i >= ln T_MIN, the forward's rule 5)
 *   p_ij  = exp(s_ij - m_i) / l_i    (0 on a fully masked row)
 *   D_i   = dot(dO_i, O_i)
 *   ds_ij = p_ij (dot(dO_i, v_j) - D_i),  da_ij = ds_ij (1 - (t_ij / c)^2)
 *   dv_j  = sum_i p_ij dO_i,  dk_j = scale sum_i da_ij q_i,
 *   dq_i  = scale sum_j da_ij k_j
 * with s, t, the band and the mask exactly as the forward (attnref.h), every
 * sum accumulated in double. No L x S matrix is formed and there are no
 * atomics: pass 1 gives each query row's m, l and D to one worker, pass 2
 * each row's dq, pass 3 each key's dk and dv (summed over its kv head's
 * query heads, rows in ascending order), so the result is bit-identical for
 * any thread count.
 */

typedef struct {
    const attnref_params *p;
    BWD_T *dq, *dk, *dv;
    double *rows;             /* per query row: m, l, D */
    double *scratch;          /* E + Ev doubles per worker: the sums of one unit */
    int worker;
    const BWD_T *grad_out, *out, *lse, *q, *k, *v;
    const void *mask;
    int64_t start, end;       /* units of the pass this worker owns */
    int pass;
} BWD_NAME(bwd_work);

/* Score s_ij and the softcap factor dt/ds (1 without softcap); 0 when key j
   is hidden from row i of (b, h), else 1. */
static int BWD_NAME(bwd_score)(const BWD_NAME(bwd_work) *w, int64_t b, int64_t h,
                               int64_t i, int64_t j, double *score, double *factor)
{
    const attnref_params *p = w->p;
    int64_t offset = j - i - p->diag_offset;
    if (offset < p->band_lower || offset > p->band_upper)
        return 0;
    const unsigned char *mask8 = (const unsigned char *)w->mask;
    const BWD_T *bias = (const BWD_T *)w->mask;
    int64_t at = b * p->mask_stride[0] + h * p->mask_stride[1] + i * p->mask_stride[2]
                 + j * p->mask_stride[3];
    if (p->mask_kind == ATTNREF_MASK_BOOL && !mask8[at])
        return 0;
    int64_t kvh = h / p->kv_group;
    const BWD_T *qi = w->q + b * p->q_stride[0] + h * p->q_stride[1] + i * p->q_stride[2];
    const BWD_T *kj = w->k + b * p->k_stride[0] + kvh * p->k_stride[1] + j * p->k_stride[2];
    double s = 0;
    for (int64_t e = 0; e < p->E; e++)
        s += (double)qi[e] * (double)kj[e];
    s *= p->scale;
    *factor = 1;
    if (p->softcap > 0) {
        double c = p->softcap, t = c * tanh(s / c);
        *factor = 1 - (t / c) * (t / c);
        s = t;
    }
    if (p->mask_kind == ATTNREF_MASK_BIAS)
        s += (double)bias[at];
    *score = s;
    return 1;
}

/* The weight of key j in row i from the row's m and l (pass 1): 0 on a
   fully masked row (m = -inf) and where s - m < ln T_MIN (rule 5). */
static double BWD_NAME(bwd_weight)(double score, const double *row)
{
    if (isinf(row[0]) && row[0] < 0)
        return 0;
    double shifted = score - row[0];
    if (shifted < log((double)BWD_T_MIN))
        return 0;
    return exp(shifted) / row[1];
}

static const BWD_T *BWD_NAME(bwd_row)(const BWD_T *base, const int64_t *stride, int64_t b,
                                      int64_t h, int64_t i)
{
    return base + b * stride[0] + h * stride[1] + i * stride[2];
}

/* Pass 1, unit = one query row (b, h, i): m_i, l_i and D_i = dot(dO_i, O_i).
   A NaN score makes m_i NaN, and so every weight of the row. Given the
   forward's lse, m_i = lse_i and l_i = 1 (FlashAttention-2's exp(s - lse),
   which lets a caller split the keys: the lse-combined halves). */
static void BWD_NAME(bwd_rows)(BWD_NAME(bwd_work) *w, int64_t unit)
{
    const attnref_params *p = w->p;
    int64_t i = unit % p->L, h = unit / p->L % p->H, b = unit / p->L / p->H;
    double *row = w->rows + 3 * unit, peak = -INFINITY, total = 0, score, factor;
    if (w->lse) {
        peak = (double)*BWD_NAME(bwd_row)(w->lse, p->lse_stride, b, h, i);
        total = 1;
    }
    for (int64_t j = 0; j < p->S && !w->lse; j++)
        if (BWD_NAME(bwd_score)(w, b, h, i, j, &score, &factor))
            peak = isnan(score) || isnan(peak) ? NAN : score > peak ? score : peak;
    if (!w->lse && !(isinf(peak) && peak < 0))
        for (int64_t j = 0; j < p->S; j++)
            if (BWD_NAME(bwd_score)(w, b, h, i, j, &score, &factor)
                    && !(score - peak < log((double)BWD_T_MIN)))
                total += exp(score - peak);
    const BWD_T *dO = BWD_NAME(bwd_row)(w->grad_out, p->out_stride, b, h, i);
    const BWD_T *O = BWD_NAME(bwd_row)(w->out, p->out_stride, b, h, i);
    double d = 0;
    for (int64_t e = 0; e < p->Ev; e++)
        d += (double)dO[e] * (double)O[e];
    row[0] = peak;
    row[1] = total;
    row[2] = d;
}

/* Pass 2, unit = one query row: dq_i (dense [B, H, L, E]). */
static void BWD_NAME(bwd_dq)(BWD_NAME(bwd_work) *w, int64_t unit)
{
    const attnref_params *p = w->p;
    int64_t i = unit % p->L, h = unit / p->L % p->H, b = unit / p->L / p->H;
    int64_t kvh = h / p->kv_group;
    BWD_T *dq = w->dq + unit * p->E;
    const double *row = w->rows + 3 * unit;
    for (int64_t e = 0; e < p->E; e++)
        dq[e] = 0;
    if (isinf(row[0]) && row[0] < 0) {
        if (p->masked_rows == ATTNREF_ROWS_NAN)
            for (int64_t e = 0; e < p->E; e++)
                dq[e] = (BWD_T)NAN;
        return;
    }
    const BWD_T *dO = BWD_NAME(bwd_row)(w->grad_out, p->out_stride, b, h, i);
    double *sum = w->scratch + (size_t)w->worker * (size_t)(p->E + p->Ev);
    for (int64_t e = 0; e < p->E; e++)
        sum[e] = 0;
    for (int64_t j = 0; j < p->S; j++) {
        double score, factor;
        if (!BWD_NAME(bwd_score)(w, b, h, i, j, &score, &factor))
            continue;
        double weight = BWD_NAME(bwd_weight)(score, row);
        if (weight == 0)
            continue;
        const BWD_T *vj = BWD_NAME(bwd_row)(w->v, p->v_stride, b, kvh, j);
        const BWD_T *kj = BWD_NAME(bwd_row)(w->k, p->k_stride, b, kvh, j);
        double dp = 0;
        for (int64_t e = 0; e < p->Ev; e++)
            dp += (double)dO[e] * (double)vj[e];
        double da = weight * (dp - row[2]) * factor * p->scale;
        for (int64_t e = 0; e < p->E; e++)
            sum[e] += da * (double)kj[e];
    }
    for (int64_t e = 0; e < p->E; e++)
        dq[e] = (BWD_T)sum[e];
}

/* Pass 3, unit = one key (b, kv head, j): dk_j and dv_j (dense [B, Hkv, S, .]),
   summed over the kv head's query heads and their rows in ascending order. */
static void BWD_NAME(bwd_dkdv)(BWD_NAME(bwd_work) *w, int64_t unit)
{
    const attnref_params *p = w->p;
    int64_t Hkv = p->H / p->kv_group;
    int64_t j = unit % p->S, kvh = unit / p->S % Hkv, b = unit / p->S / Hkv;
    BWD_T *dk = w->dk + unit * p->E, *dv = w->dv + unit * p->Ev;
    double *sum_k = w->scratch + (size_t)w->worker * (size_t)(p->E + p->Ev);
    double *sum_v = sum_k + p->E;
    for (int64_t e = 0; e < p->E; e++)
        sum_k[e] = 0;
    for (int64_t e = 0; e < p->Ev; e++)
        sum_v[e] = 0;
    const BWD_T *vj = BWD_NAME(bwd_row)(w->v, p->v_stride, b, kvh, j);
    int nan_rows = 0;
    for (int64_t g = 0; g < p->kv_group; g++) {
        int64_t h = kvh * p->kv_group + g;
        for (int64_t i = 0; i < p->L; i++) {
            const double *row = w->rows + 3 * ((b * p->H + h) * p->L + i);
            if (isinf(row[0]) && row[0] < 0) {
                nan_rows |= p->masked_rows == ATTNREF_ROWS_NAN;
                continue;
            }
            double score, factor;
            if (!BWD_NAME(bwd_score)(w, b, h, i, j, &score, &factor))
                continue;
            double weight = BWD_NAME(bwd_weight)(score, row);
            if (weight == 0)
                continue;
            const BWD_T *dO = BWD_NAME(bwd_row)(w->grad_out, p->out_stride, b, h, i);
            const BWD_T *qi = BWD_NAME(bwd_row)(w->q, p->q_stride, b, h, i);
            double dp = 0;
            for (int64_t e = 0; e < p->Ev; e++) {
                sum_v[e] += weight * (double)dO[e];
                dp += (double)dO[e] * (double)vj[e];
            }
            double da = weight * (dp - row[2]) * factor * p->scale;
            for (int64_t e = 0; e < p->E; e++)
                sum_k[e] += da * (double)qi[e];
        }
    }
    /* a NaN row's weights reach every key of its head */
    for (int64_t e = 0; e < p->E; e++)
        dk[e] = nan_rows ? (BWD_T)NAN : (BWD_T)sum_k[e];
    for (int64_t e = 0; e < p->Ev; e++)
        dv[e] = nan_rows ? (BWD_T)NAN : (BWD_T)sum_v[e];
}

static void *BWD_NAME(bwd_worker)(void *argument)
{
    BWD_NAME(bwd_work) *w = (BWD_NAME(bwd_work) *)argument;
    for (int64_t unit = w->start; unit < w->end; unit++) {
        if (w->pass == 1)
            BWD_NAME(bwd_rows)(w, unit);
        else if (w->pass == 2)
            BWD_NAME(bwd_dq)(w, unit);
        else
            BWD_NAME(bwd_dkdv)(w, unit);
    }
    return NULL;
}

int BWD_NAME(attnref_sdpa_backward)(const attnref_params *params, BWD_T *dq, BWD_T *dk,
                                    BWD_T *dv, const BWD_T *grad_out, const BWD_T *out,
                                    const BWD_T *lse, const BWD_T *q, const BWD_T *k,
                                    const BWD_T *v, const void *mask)
{
    int status = bwd_check(params, dq, dk, dv, grad_out, out, q, k, v, mask);
    if (status != ATTNREF_OK)
        return status;
    const attnref_params *p = params;
    int64_t rows = p->B * p->H * p->L, keys = p->B * (p->H / p->kv_group) * p->S;
    double *row_data = (double *)malloc((size_t)(rows > 0 ? 3 * rows : 1) * sizeof(double));
    double *scratch = (double *)malloc((size_t)p->threads * (size_t)(p->E + p->Ev)
                                       * sizeof(double));
    BWD_NAME(bwd_work) *works = (BWD_NAME(bwd_work) *)calloc((size_t)p->threads,
                                                             sizeof(BWD_NAME(bwd_work)));
    pthread_t *ids = (pthread_t *)calloc((size_t)p->threads, sizeof(pthread_t));
    char *started = (char *)calloc((size_t)p->threads, 1);
    if (!row_data || !scratch || !works || !ids || !started) {
        free(row_data); free(scratch); free(works); free(ids); free(started);
        return ATTNREF_ERR_NOMEM;
    }
    for (int pass = 1; pass <= 3; pass++) {
        int64_t units = pass == 3 ? keys : rows;
        for (int t = 0; t < p->threads; t++) {
            BWD_NAME(bwd_work) *w = &works[t];
            w->p = p; w->dq = dq; w->dk = dk; w->dv = dv; w->rows = row_data;
            w->scratch = scratch; w->worker = t;
            w->grad_out = grad_out; w->out = out; w->lse = lse;
            w->q = q; w->k = k; w->v = v; w->mask = mask; w->pass = pass;
            w->start = units * t / p->threads;
            w->end = units * (t + 1) / p->threads;
            started[t] = t > 0 && pthread_create(&ids[t], NULL, BWD_NAME(bwd_worker), w) == 0;
        }
        BWD_NAME(bwd_worker)(&works[0]);
        for (int t = 1; t < p->threads; t++) {
            if (started[t])
                pthread_join(ids[t], NULL);
            else   /* a worker that cannot start runs on the caller */
                BWD_NAME(bwd_worker)(&works[t]);
        }
    }
    free(row_data); free(scratch); free(works); free(ids); free(started);
    return ATTNREF_OK;
}
