/*
 * backward_impl.h -- the backward pass of attnref.h's attention, for one
 * float type. Included by backward.c with BWD_T (float or double) and
 * BWD_NAME(x) (x ## _f32 or x ## _f64) defined; <tgmath.h> picks exp and
 * tanh of the type.
 *
 * FlashAttention-2's recomputation (Dao 2023, arXiv:2307.08691, Algorithm
 * 2), with the weights rebuilt from each row's maximum m_i and sum l_i
 * (BWD_PASS_STATS) rather than from the lse: exp(s - lse) carries a relative error
 * of eps |lse|, which at scores in the thousands (or a finfo.min bias, where
 * lse absorbs log S) exceeds the forward's own rounding by orders of
 * magnitude (docs/torch-2.13-backward.md: torch's CPU flash backward):
 *   m_i   = max_j s_ij,  l_i = sum_j exp(s_ij - m_i)   (visible keys with
 *           s_ij - m_i >= ln T_MIN, the forward's rule 5)
 *   p_ij  = exp(s_ij - m_i) / l_i    (0 on a fully masked row)
 *   D_i   = dot(dO_i, O_i)
 *   ds_ij = p_ij (dot(dO_i, v_j) - D_i),  da_ij = ds_ij (1 - (t_ij / c)^2)
 *   dv_j  = sum_i p_ij dO_i,  dk_j = scale sum_i da_ij q_i,
 *   dq_i  = scale sum_j da_ij k_j,  dmask_ij = ds_ij (the bias's gradient)
 * with s, t, the band and the mask exactly as the forward (attnref.h), every
 * sum accumulated in double. No L x S matrix is formed and there are no
 * atomics (backward.h's passes): without lse, BWD_PASS_STATS gives each
 * query row's m and l to one worker; BWD_PASS_DQ each row's dq,
 * BWD_PASS_DKDV each key's dk and dv (summed over its kv head's query heads,
 * rows in ascending order), so the result is bit-identical for any thread
 * count. D_i is recomputed where it is needed rather than stored.
 */

/* Score s_ij and the softcap factor dt/ds (1 without softcap); 0 when key j
   is hidden from row i of (b, h), else 1. */
static int BWD_NAME(bwd_score)(const bwd_call *c, int64_t b, int64_t h, int64_t i, int64_t j,
                               double *score, double *factor)
{
    const attnref_params *p = c->p;
    int64_t offset = j - i - p->diag_offset;
    if (offset < p->band_lower || offset > p->band_upper)
        return 0;
    const unsigned char *mask8 = (const unsigned char *)c->mask;
    const BWD_T *bias = (const BWD_T *)c->mask;
    int64_t at = b * p->mask_stride[0] + h * p->mask_stride[1] + i * p->mask_stride[2]
                 + j * p->mask_stride[3];
    if (p->mask_kind == ATTNREF_MASK_BOOL && !mask8[at])
        return 0;
    int64_t kvh = h / p->kv_group;
    const BWD_T *qi = (const BWD_T *)c->q + b * p->q_stride[0] + h * p->q_stride[1]
                      + i * p->q_stride[2];
    const BWD_T *kj = (const BWD_T *)c->k + b * p->k_stride[0] + kvh * p->k_stride[1]
                      + j * p->k_stride[2];
    double s = 0;
    for (int64_t e = 0; e < p->E; e++)
        s += (double)qi[e] * (double)kj[e];
    s *= p->scale;
    *factor = 1;
    if (p->softcap > 0) {
        double cap = p->softcap, t = cap * tanh(s / cap);
        *factor = 1 - (t / cap) * (t / cap);
        s = t;
    }
    if (p->mask_kind == ATTNREF_MASK_BIAS)
        s += (double)bias[at];
    *score = s;
    return 1;
}

static const BWD_T *BWD_NAME(bwd_row)(const void *base, const int64_t *stride, int64_t b,
                                      int64_t h, int64_t i)
{
    return (const BWD_T *)base + b * stride[0] + h * stride[1] + i * stride[2];
}

/* Row i's m and l: the forward's lse and 1 (FlashAttention-2's
   exp(s - lse), which lets a caller split the keys: the lse-combined
   halves), else BWD_PASS_STATS's. */
static void BWD_NAME(bwd_stats)(const bwd_call *c, int64_t b, int64_t h, int64_t i, double *m,
                                double *l)
{
    const attnref_params *p = c->p;
    if (c->lse) {
        *m = (double)*BWD_NAME(bwd_row)(c->lse, p->lse_stride, b, h, i);
        *l = 1;
    } else {
        const double *row = (const double *)c->stats + 2 * ((b * p->H + h) * p->L + i);
        *m = row[0];
        *l = row[1];
    }
}

/* The weight of a score from its row's m and l: 0 on a fully masked row
   (m = -inf) and where s - m < ln T_MIN (rule 5). */
static double BWD_NAME(bwd_weight)(double score, double m, double l)
{
    if (isinf(m) && m < 0)
        return 0;
    double shifted = score - m;
    if (shifted < log((double)BWD_T_MIN))
        return 0;
    return exp(shifted) / l;
}

/* D_i = dot(dO_i, O_i) */
static double BWD_NAME(bwd_d)(const bwd_call *c, int64_t b, int64_t h, int64_t i)
{
    const attnref_params *p = c->p;
    const BWD_T *dO = BWD_NAME(bwd_row)(c->grad_out, p->out_stride, b, h, i);
    const BWD_T *O = BWD_NAME(bwd_row)(c->out, p->out_stride, b, h, i);
    double d = 0;
    for (int64_t e = 0; e < p->Ev; e++)
        d += (double)dO[e] * (double)O[e];
    return d;
}

/* The pair (row i of (b, h), key j) both passes recompute: 0 when it adds
   nothing (key j hidden from row i, or p_ij = 0), else 1 with p_ij, dp_ij =
   dot(dO_i, v_j) (dO: row i of grad_out) and the softcap factor. m and l
   are row i's statistics (bwd_stats). */
static int BWD_NAME(bwd_pair)(const bwd_call *c, int64_t b, int64_t h, int64_t i, int64_t j,
                              double m, double l, const BWD_T *dO, double *weight, double *dp,
                              double *factor)
{
    const attnref_params *p = c->p;
    double score;
    if (!BWD_NAME(bwd_score)(c, b, h, i, j, &score, factor))
        return 0;
    *weight = BWD_NAME(bwd_weight)(score, m, l);
    if (*weight == 0)
        return 0;
    const BWD_T *vj = BWD_NAME(bwd_row)(c->v, p->v_stride, b, h / p->kv_group, j);
    double sum = 0;
    for (int64_t e = 0; e < p->Ev; e++)
        sum += (double)dO[e] * (double)vj[e];
    *dp = sum;
    return 1;
}

/* BWD_PASS_STATS, unit = one query row (b, h, i): m_i and l_i. A NaN score
   makes m_i NaN, and so every weight of the row. */
static void BWD_NAME(bwd_unit_stats)(const bwd_call *c, int64_t unit)
{
    const attnref_params *p = c->p;
    int64_t i = unit % p->L, h = unit / p->L % p->H, b = unit / p->L / p->H;
    double *row = (double *)c->stats + 2 * unit, peak = -INFINITY, total = 0, score, factor;
    for (int64_t j = 0; j < p->S; j++)
        if (BWD_NAME(bwd_score)(c, b, h, i, j, &score, &factor))
            peak = isnan(score) || isnan(peak) ? NAN : score > peak ? score : peak;
    if (!(isinf(peak) && peak < 0))
        for (int64_t j = 0; j < p->S; j++)
            if (BWD_NAME(bwd_score)(c, b, h, i, j, &score, &factor)
                    && !(score - peak < log((double)BWD_T_MIN)))
                total += exp(score - peak);
    row[0] = peak;
    row[1] = total;
}

/* BWD_PASS_DQ, unit = one query row: dq_i (dense [B, H, L, E]). */
static void BWD_NAME(bwd_unit_dq)(const bwd_call *c, double *sum, int64_t unit)
{
    const attnref_params *p = c->p;
    int64_t i = unit % p->L, h = unit / p->L % p->H, b = unit / p->L / p->H;
    int64_t kvh = h / p->kv_group;
    BWD_T *dq = (BWD_T *)c->dq + unit * p->E;
    double m, l;
    BWD_NAME(bwd_stats)(c, b, h, i, &m, &l);
    for (int64_t e = 0; e < p->E; e++)
        dq[e] = 0;
    BWD_T *dmask = c->dmask ? (BWD_T *)c->dmask + unit * p->S : NULL;
    if (isinf(m) && m < 0) {
        if (p->masked_rows == ATTNREF_ROWS_NAN) {
            for (int64_t e = 0; e < p->E; e++)
                dq[e] = (BWD_T)NAN;
            for (int64_t j = 0; j < p->S && dmask; j++)
                dmask[j] = (BWD_T)NAN;
        }
        return;
    }
    const BWD_T *dO = BWD_NAME(bwd_row)(c->grad_out, p->out_stride, b, h, i);
    double d = BWD_NAME(bwd_d)(c, b, h, i);
    for (int64_t e = 0; e < p->E; e++)
        sum[e] = 0;
    for (int64_t j = 0; j < p->S; j++) {
        double weight, dp, factor;
        if (!BWD_NAME(bwd_pair)(c, b, h, i, j, m, l, dO, &weight, &dp, &factor))
            continue;
        const BWD_T *kj = BWD_NAME(bwd_row)(c->k, p->k_stride, b, kvh, j);
        double ds = weight * (dp - d);
        if (dmask)
            dmask[j] = (BWD_T)ds;
        double da = ds * factor * p->scale;
        for (int64_t e = 0; e < p->E; e++)
            sum[e] += da * (double)kj[e];
    }
    for (int64_t e = 0; e < p->E; e++)
        dq[e] = (BWD_T)sum[e];
}

/* BWD_PASS_DKDV, unit = one key (b, kv head, j): dk_j and dv_j (dense
   [B, Hkv, S, .]), summed over the kv head's query heads and their rows in
   ascending order. */
static void BWD_NAME(bwd_unit_dkdv)(const bwd_call *c, double *sum_k, int64_t unit)
{
    const attnref_params *p = c->p;
    int64_t Hkv = p->H / p->kv_group;
    int64_t j = unit % p->S, kvh = unit / p->S % Hkv, b = unit / p->S / Hkv;
    BWD_T *dk = (BWD_T *)c->dk + unit * p->E, *dv = (BWD_T *)c->dv + unit * p->Ev;
    double *sum_v = sum_k + p->E;
    for (int64_t e = 0; e < p->E; e++)
        sum_k[e] = 0;
    for (int64_t e = 0; e < p->Ev; e++)
        sum_v[e] = 0;
    int nan_rows = 0;
    for (int64_t g = 0; g < p->kv_group; g++) {
        int64_t h = kvh * p->kv_group + g;
        for (int64_t i = 0; i < p->L; i++) {
            double m, l;
            BWD_NAME(bwd_stats)(c, b, h, i, &m, &l);
            if (isinf(m) && m < 0) {
                nan_rows |= p->masked_rows == ATTNREF_ROWS_NAN;
                continue;
            }
            const BWD_T *dO = BWD_NAME(bwd_row)(c->grad_out, p->out_stride, b, h, i);
            double weight, dp, factor;
            if (!BWD_NAME(bwd_pair)(c, b, h, i, j, m, l, dO, &weight, &dp, &factor))
                continue;
            const BWD_T *qi = BWD_NAME(bwd_row)(c->q, p->q_stride, b, h, i);
            for (int64_t e = 0; e < p->Ev; e++)
                sum_v[e] += weight * (double)dO[e];
            double da = weight * (dp - BWD_NAME(bwd_d)(c, b, h, i)) * factor * p->scale;
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

/* A worker of the portable path: units [row_begin, row_end) of the pass,
   with E + Ev doubles of scratch (the sums of one unit). */
static int BWD_NAME(bwd_portable_rows)(const sdpa_job *job)
{
    const bwd_call *c = (const bwd_call *)job->out;
    double *scratch = (double *)malloc((size_t)(c->p->E + c->p->Ev) * sizeof(double));
    if (!scratch)
        return ATTNREF_ERR_NOMEM;
    for (int64_t unit = job->row_begin; unit < job->row_end; unit++) {
        if (c->pass == BWD_PASS_STATS)
            BWD_NAME(bwd_unit_stats)(c, unit);
        else if (c->pass == BWD_PASS_DQ)
            BWD_NAME(bwd_unit_dq)(c, scratch, unit);
        else
            BWD_NAME(bwd_unit_dkdv)(c, scratch, unit);
    }
    free(scratch);
    return ATTNREF_OK;
}
