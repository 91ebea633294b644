/*
 * sdpa_impl.h -- the attention kernel for one float type, included by
 * portable.c once per type. The includer defines
 *   REAL                 float or double, the type of every operand and sum
 *   EXP, LOG             the libm functions for REAL
 *   LOG_MIN              ln of REAL's smallest normal number: exp(x) for
 *                        x < LOG_MIN counts as 0 (the weight policy of attnref.h)
 *   DOT                  the exact score dot product for REAL, returned in
 *                        double (in portable.c: computed more precisely than
 *                        REAL, differently per type)
 *   DOT_FAST             the fast one: a plain sum in REAL
 *   AXPY, SDPA_ROWS,     names of this file's functions for REAL
 *   NONFINITE_DIMS, SCORE_DOT
 * and this file undefines them at its end. SDPA_ROWS is the portable code
 * path: scalar C99 that any compiler builds, and the plain twin the tiled
 * paths (tiled_impl.h) are tested against. NONFINITE_DIMS serves both. No
 * include guard: that is the point.
 */

/* exp(x), or exactly 0 where that is below the smallest normal REAL */
#define WEIGHT(x) ((x) < LOG_MIN ? (REAL)0 : EXP(x))

/* q.k by the call's score mode (attnref_params.scores), in double */
static double SCORE_DOT(const attnref_params *p, const REAL *q, const REAL *k)
{
    return p->scores == ATTNREF_SCORES_FAST ? (double)DOT_FAST(q, k, p->E) : DOT(q, k, p->E);
}

/* acc[c] += p * x[c] */
static void AXPY(REAL *restrict acc, REAL p, const REAL *restrict x, int64_t n)
{
    for (int64_t c = 0; c < n; c++)
        acc[c] += p * x[c];
}

/* Pass 6 of a row (rare: only where a value was inf or NaN). A streaming
   pass weighs each key against the running max when its block comes; a key
   whose weight is below the smallest normal only against the row's final
   max m must weigh 0 (attnref.h), but an inf or NaN value it brought into
   acc cannot be taken out again. So every output dim whose acc is not
   finite is summed again over the row's visible keys j with exact weights
   exp(s_j - m), 0 below LOG_MIN, and divided by the same l; other dims keep
   out = acc / l. Finite values are unaffected either way (by less than
   S * REAL_MIN * max|v|). q, k, v, allowed and bias point at the row's
   query, its kv head's keys and values, and its mask row (or NULL). */
void NONFINITE_DIMS(const attnref_params *p, const REAL *q_bhi, const REAL *k_bh,
                    const REAL *v_bh, const uint8_t *allowed_bhi, const REAL *bias_bhi,
                    int64_t j_begin, int64_t j_end, REAL m, REAL l,
                    const REAL *acc, REAL *out_bhi)
{
    const int64_t ks2 = p->k_stride[2], vs2 = p->v_stride[2], ms3 = p->mask_stride[3];
    int any = 0;
    for (int64_t c = 0; c < p->Ev; c++)
        if (!isfinite(acc[c])) {
            out_bhi[c] = 0;
            any = 1;
        }
    if (!any) return;
    for (int64_t j = j_begin; j < j_end; j++) {
        double s_wide;
        REAL s, x, weight;
        if (allowed_bhi != NULL && allowed_bhi[j * ms3] == 0) continue;
        s_wide = p->scale * SCORE_DOT(p, q_bhi, k_bh + j * ks2);
        if (p->softcap > 0) s_wide = p->softcap * tanh(s_wide / p->softcap);
        s = (REAL)s_wide;
        if (bias_bhi != NULL) s += bias_bhi[j * ms3];
        x = s - m;
        if (!(x >= LOG_MIN)) continue;   /* below the smallest normal, or -inf */
        weight = EXP(x);
        for (int64_t c = 0; c < p->Ev; c++)
            if (!isfinite(acc[c])) out_bhi[c] += weight * v_bh[j * vs2 + c];
    }
    for (int64_t c = 0; c < p->Ev; c++)
        if (!isfinite(acc[c])) out_bhi[c] /= l;
}

/* Computes the flattened (b, h, i) rows [job->row_begin, job->row_end). */
int SDPA_ROWS(const sdpa_job *job)
{
    /* q (B,H,L,E), k (B,H/kv_group,S,E), v (B,H/kv_group,S,Ev),
       out (B,H,L,Ev), lse (B,H,L) or NULL, mask (B,H,L,S) uint8 or REAL or
       NULL, each at the element strides in params (rows contiguous).
       Scratch: acc (Ev) for one row and block_acc (Ev) for one key block;
       score and key (KEY_BLOCK) for the visible keys of one key block. */
    const attnref_params *p = job->params;
    const REAL *q = job->q, *k = job->k, *v = job->v;
    REAL *out = job->out, *lse = job->lse;
    const int64_t *qs = p->q_stride, *ks = p->k_stride, *vs = p->v_stride;
    const int64_t *os = p->out_stride, *ls = p->lse_stride, *ms = p->mask_stride;
    const REAL masked_row_value = p->masked_rows == ATTNREF_ROWS_NAN ? (REAL)NAN : 0;
    REAL score[KEY_BLOCK];
    int64_t key[KEY_BLOCK];
    REAL *acc, *block_acc;

    if ((uint64_t)p->Ev > SIZE_MAX / (2 * sizeof *acc)) return ATTNREF_ERR_NOMEM;
    acc = malloc(p->Ev > 0 ? 2 * (size_t)p->Ev * sizeof *acc : 1);
    if (acc == NULL) return ATTNREF_ERR_NOMEM;
    block_acc = acc + p->Ev;

    for (int64_t row = job->row_begin; row < job->row_end; row++) {
        const int64_t b = row / (p->H * p->L), h = (row / p->L) % p->H, i = row % p->L;
        const int64_t kv_h = h / p->kv_group;
        /* without a mask its strides are unchecked, so they are not used */
        const int64_t mask_bhi = p->mask_kind == ATTNREF_MASK_NONE
            ? 0 : b * ms[0] + h * ms[1] + i * ms[2];
        const uint8_t *allowed_bhi = p->mask_kind == ATTNREF_MASK_BOOL
            ? (const uint8_t *)job->mask + mask_bhi : NULL;
        const REAL *bias_bhi = p->mask_kind == ATTNREF_MASK_BIAS
            ? (const REAL *)job->mask + mask_bhi : NULL;
        const REAL *q_bhi = q + (b * qs[0] + h * qs[1] + i * qs[2]);
        const REAL *k_bh = k + (b * ks[0] + kv_h * ks[1]);
        const REAL *v_bh = v + (b * vs[0] + kv_h * vs[1]);
        REAL *out_bhi = out + (b * os[0] + h * os[1] + i * os[2]);
        REAL m = -INFINITY;     /* running max of the scores */
        REAL l = 0;             /* running sum of exp(score - m) */
        int score_is_nan = 0;   /* x > m comparisons cannot see a NaN score */
        int64_t j_begin, j_end;

        band_keys(p, i, &j_begin, &j_end);

        for (int64_t j0 = j_begin; j0 < j_end && !score_is_nan; j0 += KEY_BLOCK) {
            const int64_t j1 = j_end - j0 < KEY_BLOCK ? j_end : j0 + KEY_BLOCK;
            REAL block_max = -INFINITY;
            int n = 0;

            /* pass 1: scores of the visible keys of this block and their max */
            for (int64_t j = j0; j < j1; j++) {
                REAL s;
                /* a masked key is never read: k and v behind it may hold anything */
                if (allowed_bhi != NULL && allowed_bhi[j * ms[3]] == 0) continue;
                {
                    /* scaled and capped in double, rounded to REAL once:
                       exact scores are as exact as their inputs allow (see
                       DOT), fast ones carry the error of a plain REAL dot */
                    double s_wide = p->scale * SCORE_DOT(p, q_bhi, k_bh + j * ks[2]);
                    if (p->softcap > 0) s_wide = p->softcap * tanh(s_wide / p->softcap);
                    s = (REAL)s_wide;
                }
                if (bias_bhi != NULL) s += bias_bhi[j * ms[3]];
                if (s != s) { score_is_nan = 1; break; }
                if (s > block_max) block_max = s;
                score[n] = s;
                key[n] = j;
                n++;
            }
            /* no visible key of this block scores above -inf: the block adds
               nothing, and -inf - -inf would make a NaN below */
            if (score_is_nan || block_max == -INFINITY) continue;

            /* pass 2: exp and sum against the running max, raised to this block's */
            const REAL m_new = block_max > m ? block_max : m;
            /* 1 while the max holds; 0 on the first block (m = -inf), whose
               merge below then sets acc and l */
            const REAL rescale = m_new > m ? WEIGHT(m - m_new) : 1;
            REAL block_l = 0;
            for (int t = 0; t < n; t++) {
                score[t] = WEIGHT(score[t] - m_new);
                block_l += score[t];
            }

            /* pass 3: weighted values of this block, summed apart from the row
               so that no float32 sum runs over more than KEY_BLOCK or S/KEY_BLOCK
               terms */
            for (int64_t c = 0; c < p->Ev; c++) block_acc[c] = 0;
            for (int t = 0; t < n; t++) {
                /* a key of weight 0 contributes nothing, not 0 * inf or 0 * NaN */
                if (score[t] == 0) continue;
                AXPY(block_acc, score[t], v_bh + key[t] * vs[2], p->Ev);
            }

            /* pass 4: merge the block into the row, rescaled to the new max */
            for (int64_t c = 0; c < p->Ev; c++)
                /* rescale 0: the keys so far now weigh 0, and multiplying would
                   turn an inf or NaN value of theirs into NaN */
                acc[c] = rescale > 0 ? acc[c] * rescale + block_acc[c] : block_acc[c];
            l = l * rescale + block_l;
            m = m_new;
        }

        /* pass 5: normalise (by division, as the NumPy reference) and the lse */
        if (score_is_nan) {
            for (int64_t c = 0; c < p->Ev; c++) out_bhi[c] = (REAL)NAN;
        } else if (m == -INFINITY) {
            /* no visible key, or only -inf scores: the masked-row rule */
            for (int64_t c = 0; c < p->Ev; c++) out_bhi[c] = masked_row_value;
        } else {
            for (int64_t c = 0; c < p->Ev; c++) out_bhi[c] = acc[c] / l;
            /* pass 6: dims made inf or NaN by a key the final max drops */
            NONFINITE_DIMS(p, q_bhi, k_bh, v_bh, allowed_bhi, bias_bhi, j_begin, j_end, m, l,
                           acc, out_bhi);
        }
        if (lse != NULL) {
            REAL *lse_bhi = lse + (b * ls[0] + h * ls[1] + i * ls[2]);
            *lse_bhi = score_is_nan ? (REAL)NAN : m == -INFINITY ? -INFINITY : m + LOG(l);
        }
    }
    free(acc);
    return ATTNREF_OK;
}

#undef REAL
#undef EXP
#undef LOG
#undef LOG_MIN
#undef WEIGHT
#undef DOT
#undef DOT_FAST
#undef SCORE_DOT
#undef AXPY
#undef SDPA_ROWS
#undef NONFINITE_DIMS
