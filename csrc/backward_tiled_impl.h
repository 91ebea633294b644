/*
 * backward_tiled_impl.h -- the SIMD backward, one instruction set and one
 * float type per inclusion (backward_tiled.c; simd.h says what the includer
 * defines). FlashAttention-2's backward (Dao 2023, arXiv:2307.08691,
 * Algorithm 2) blocked for a CPU, with the formulas of backward_impl.h:
 *   s_ij  = scale dot(q_i, k_j), t_ij = c tanh(s_ij / c) (softcap c), + bias
 *   p_ij  = exp(s_ij - m_i) / l_i   (m_i = lse_i, l_i = 1 with the forward's
 *           lse; 0 where s_ij - m_i < ln REAL_MIN, the forward's rule)
 *   D_i   = dot(dO_i, O_i),  dp_ij = dot(dO_i, v_j)
 *   da_ij = scale p_ij (dp_ij - D_i) (1 - (t_ij / c)^2)   (0 where p_ij = 0)
 *   dv_j  = sum_i p_ij dO_i,  dk_j = sum_i da_ij q_i,  dq_i = sum_j da_ij k_j
 *   dmask_ij = p_ij (dp_ij - D_i)   (the bias's gradient; written by the
 *           pass that owns dq)
 * Every sum is carried in REAL (float32 sums in float: each is a dot product
 * or a sum over rows or keys with the error of a float GEMM, the error the
 * NumPy float32 reference has too); D_i is recomputed per query block
 * rather than stored.
 *
 *   key block   BWD_KEYS keys of one (b, kv head), packed transposed
 *               (kt: E x BWD_KEYS, vt: Ev x BWD_KEYS, padded keys 0) and, for
 *               dq, k's rows (in place when they are whole vectors, else
 *               copied into rows padded to Ep, kp)
 *   query block up to BWD_QBLOCK query rows, loaded once per walk: q and dO
 *               copied into rows padded to Ep and Evp, D, m and 1 / l (rows
 *               of masked or missing positions are 0)
 *   row block   BWD_ROWS rows of the query block: scores, weights (sc, dp,
 *               fac, pw, da: BWD_ROWS x BWD_KEYS) against one key block
 *   register block  4 rows (or keys) x BWD_VECS vectors of accumulators
 *               (AVX-512 4 of its 32 registers, AVX2 3 of 16, NEON 2): scores
 *               and dp are 4 rows x BWD_VECS vectors of keys summed over E or
 *               Ev, and dq 4 rows x BWD_VECS vectors of E held across the key
 *               block's keys (one kernel, bwd_rows_block); dv and dk are 4
 *               keys x BWD_VECS vectors of E held across the BWD_ROWS rows
 *               of a row block (bwd_keys_block)
 *   the walk    (bwd_walk) a query block against its band's key blocks in
 *               ascending order, each against the row blocks in ascending
 *               order, summing what the pass asks (BWD_SUM_*): dk and dv in
 *               the outputs (or, when their rows are not whole vectors, in
 *               acc_k and acc_v copied in and out per key block), dq in acc_q
 *   BWD_PASS_FUSED unit = (b, kv head): the walks of its query heads' query
 *               blocks in ascending order, summing dq, dk and dv
 *   BWD_PASS_DKDV  unit = a key block: dk, dv summed over the kv head's query
 *               heads and the band's rows, by walks of that key block only
 *   BWD_PASS_DQ    unit = (b, h, BWD_QBLOCK rows): one walk summing dq
 *   BWD_PASS_STATS unit as for dq: m_i (first walk) and l_i (second)
 * Every sum runs in ascending order of rows (or keys, or E), whatever the
 * schedule, so the passes give the same bits as each other.
 * Key blocks outside a query block's band are never visited, nor row
 * blocks outside a key block's.
 */

#include "simd_exp.h"

#if REAL_IS_DOUBLE
#define BWD_TANH tanh
#define BWD_REAL_MAX DBL_MAX
#define BWD_REAL_TRUE_MIN 4.9406564584124654e-324   /* the least subnormal */
#else
#define BWD_TANH tanhf
#define BWD_REAL_MAX FLT_MAX
#define BWD_REAL_TRUE_MIN 1.40129846e-45f
#endif

#define BWD_PAD(n) (((n) + RW - 1) / RW * RW)
_Static_assert(BWD_KEYS % (2 * RW) == 0, "a key block is whole pairs of vectors");

typedef struct {
    const bwd_call *c;
    int64_t Ep, Evp;
    REAL *kt, *vt, *kp;          /* the key block */
    REAL *acc_k, *acc_v, *acc_q; /* BWD_KEYS x Ep, BWD_KEYS x Evp, BWD_QBLOCK x Ep */
    const REAL *k_rows;          /* the key block's k rows for dq: kp, or k itself */
    REAL *sum_k, *sum_v;         /* its dk, dv sums: acc_k, acc_v, or the outputs */
    REAL *qr, *dor, *orow;       /* BWD_QBLOCK x Ep, BWD_QBLOCK x Evp, Evp */
    REAL *sc, *dp, *fac, *pw, *da;   /* BWD_ROWS x BWD_KEYS */
    REAL m[BWD_QBLOCK], linv[BWD_QBLOCK], d[BWD_QBLOCK];
    int active[BWD_QBLOCK];
    int64_t i0;                    /* the loaded rows: [i0, i0 + rows) of (b, h) */
    int rows;
    int keys[BWD_KEYS], weighed;   /* the keys some row weighs (bwd_weights) */
} TILED(bwd_work);

static const REAL *TILED(bwd_at)(const void *base, const int64_t *stride, int64_t b,
                                 int64_t h, int64_t i)
{
    return (const REAL *)base + b * stride[0] + h * stride[1] + i * stride[2];
}

/* out[e][j] = rows j0 + j of (b, kvh) at dim e, for j < nk, e < n: RW x RW
   blocks by simd.h's transpose, the edges one by one. */
static void TILED(bwd_transpose)(REAL *out, const void *base, const int64_t *stride, int64_t b,
                                 int64_t kvh, int64_t j0, int nk, int64_t n)
{
    int j = 0;
    for (; j + RW <= nk; j += RW) {
        int64_t e = 0;
        for (; e + RW <= n; e += RW) {
            RVEC block[RW];
            for (int u = 0; u < RW; u++)
                block[u] = RV_LOAD(TILED(bwd_at)(base, stride, b, kvh, j0 + j + u) + e);
            TILED(transpose_real)(block);
            for (int u = 0; u < RW; u++) RV_STORE(out + (e + u) * BWD_KEYS + j, block[u]);
        }
        for (int u = 0; u < RW; u++) {
            const REAL *row = TILED(bwd_at)(base, stride, b, kvh, j0 + j + u);
            for (int64_t f = e; f < n; f++) out[f * BWD_KEYS + j + u] = row[f];
        }
    }
    for (; j < nk; j++) {
        const REAL *row = TILED(bwd_at)(base, stride, b, kvh, j0 + j);
        for (int64_t e = 0; e < n; e++) out[e * BWD_KEYS + j] = row[e];
    }
}

/* Packs keys [j0, j0 + nk) of (b, kvh): kt and vt, and, when `rows`, the
   k rows dq reads (k itself when its rows are whole vectors, else kp). */
static void TILED(bwd_keys)(TILED(bwd_work) *w, int64_t b, int64_t kvh, int64_t j0, int nk,
                            int rows)
{
    const attnref_params *p = w->c->p;
    if (nk < BWD_KEYS) {   /* padded keys are 0 */
        memset(w->kt, 0, (size_t)(p->E * BWD_KEYS) * sizeof(REAL));
        memset(w->vt, 0, (size_t)(p->Ev * BWD_KEYS) * sizeof(REAL));
    }
    TILED(bwd_transpose)(w->kt, w->c->k, p->k_stride, b, kvh, j0, nk, p->E);
    TILED(bwd_transpose)(w->vt, w->c->v, p->v_stride, b, kvh, j0, nk, p->Ev);
    w->k_rows = TILED(bwd_at)(w->c->k, p->k_stride, b, kvh, j0);
    if (!rows || (p->E == w->Ep && p->k_stride[2] == p->E)) return;
    for (int j = 0; j < nk; j++) {
        memcpy(w->kp + j * w->Ep, TILED(bwd_at)(w->c->k, p->k_stride, b, kvh, j0 + j),
               (size_t)p->E * sizeof(REAL));
        memset(w->kp + j * w->Ep + p->E, 0, (size_t)(w->Ep - p->E) * sizeof(REAL));
    }
    w->k_rows = w->kp;
}

/* Row i's statistics (m, 1 / l); 0 when the row has no visible key. */
static int TILED(bwd_stats)(const TILED(bwd_work) *w, int64_t b, int64_t h, int64_t i,
                            REAL *m, REAL *linv)
{
    const attnref_params *p = w->c->p;
    if (w->c->lse) {
        *m = *TILED(bwd_at)(w->c->lse, p->lse_stride, b, h, i);
        *linv = 1;
    } else {
        const REAL *row = (const REAL *)w->c->stats + 2 * ((b * p->H + h) * p->L + i);
        *m = row[0];
        *linv = 1 / row[1];
    }
    return !(isinf(*m) && *m < 0);
}

/* Loads rows [i0, i0 + nr) of (b, h), nr <= BWD_QBLOCK, once for all the
   key blocks they see: q (and, unless `stats_only`, dO, the statistics and
   D); a fully masked row is 0 and inactive, and so are the rows after nr
   up to a whole row block. */
static void TILED(bwd_load_rows)(TILED(bwd_work) *w, int64_t b, int64_t h, int64_t i0, int nr,
                                 int stats_only)
{
    const attnref_params *p = w->c->p;
    const int padded = (nr + BWD_ROWS - 1) / BWD_ROWS * BWD_ROWS;
    for (int r = 0; r < padded; r++) {
        REAL *qr = w->qr + r * w->Ep, *dor = w->dor + r * w->Evp;
        int active = r < nr;
        if (active && !stats_only)
            active = TILED(bwd_stats)(w, b, h, i0 + r, &w->m[r], &w->linv[r]);
        w->active[r] = active;
        w->d[r] = 0;
        memset(qr, 0, (size_t)w->Ep * sizeof(REAL));
        if (active)
            memcpy(qr, TILED(bwd_at)(w->c->q, p->q_stride, b, h, i0 + r),
                   (size_t)p->E * sizeof(REAL));
        if (stats_only) continue;
        memset(dor, 0, (size_t)w->Evp * sizeof(REAL));
        memset(w->orow, 0, (size_t)w->Evp * sizeof(REAL));
        if (!active) continue;
        memcpy(dor, TILED(bwd_at)(w->c->grad_out, p->out_stride, b, h, i0 + r),
               (size_t)p->Ev * sizeof(REAL));
        memcpy(w->orow, TILED(bwd_at)(w->c->out, p->out_stride, b, h, i0 + r),
               (size_t)p->Ev * sizeof(REAL));
        RVEC sum = RV_SET1(0);
        for (int64_t e = 0; e < w->Evp; e += RW)
            sum = RV_FMA(RV_LOAD(dor + e), RV_LOAD(w->orow + e), sum);
        w->d[r] = TILED(hsum)(sum);
    }
    w->i0 = i0;
    w->rows = nr;
}

/* Register blocks: BWD_GROUP rows (or keys) x up to BWD_VECS vectors of
   accumulators, with the vectors' operands and a broadcast beside them:
   AVX-512 4 x 4 + 4 + 1 of its 32 registers; AVX2 4 x 3 + 3 + 1 of its 16
   (12 accumulators: an FMA's latency, 4, times its two ports is 8, so 8
   leave no slack); NEON 4 x 2 + 2 + 1. A width that is not whole blocks
   ends with a block of 2 vectors, then 1 (BWD_VECTOR_BLOCKS). */
#if defined(SIMD_AVX512)
#define BWD_VECS 4
#elif defined(SIMD_AVX2)
#define BWD_VECS 3
#else
#define BWD_VECS 2
#endif
#define BWD_GROUP 4   /* rows (or keys) per register block */
_Static_assert(BWD_ROWS % BWD_GROUP == 0, "a row block is whole groups of rows");

/* Runs `block(e, V)` over [0, width) (a multiple of RW) in register blocks
   of V = BWD_VECS vectors, then 2, then 1: V a constant at each call, so a
   block's accumulators live in registers. */
#define BWD_VECTOR_BLOCKS(width, block) \
    do { \
        int64_t e_ = 0; \
        for (; e_ + BWD_VECS * RW <= (width); e_ += BWD_VECS * RW) block(e_, BWD_VECS); \
        for (; e_ + 2 * RW <= (width); e_ += 2 * RW) block(e_, 2); \
        for (; e_ < (width); e_ += RW) block(e_, 1); \
    } while (0)

/* The register block of bwd_gemm and bwd_update_rows: for t < BWD_GROUP
   and V vectors,
     c[t][:] = c0[t][:] + sum_{s < count} a[t][i_s] b[i_s][:]
   summed in ascending s, with i_s = keys[s] (or s without keys); rows of
   c, a, b c_rows, a_rows, b_rows apart; c0 = 0 when `zero`, else c. */
ALWAYS_INLINE void TILED(bwd_rows_block)(REAL *c, int64_t c_rows, int zero, const REAL *a,
                                         int64_t a_rows, const REAL *b, int64_t b_rows,
                                         const int *keys, int64_t count, const int V)
{
    RVEC acc[BWD_GROUP][BWD_VECS];
    for (int t = 0; t < BWD_GROUP; t++)
        for (int v = 0; v < V; v++) acc[t][v] = zero ? RV_SET1(0) : RV_LOAD(c + t * c_rows + v * RW);
    for (int64_t s = 0; s < count; s++) {
        const int64_t i = keys ? keys[s] : s;
        RVEC x[BWD_VECS];
        for (int v = 0; v < V; v++) x[v] = RV_LOAD(b + i * b_rows + v * RW);
        for (int t = 0; t < BWD_GROUP; t++) {
            const RVEC scalar = RV_SET1(a[t * a_rows + i]);
            for (int v = 0; v < V; v++) acc[t][v] = RV_FMA(scalar, x[v], acc[t][v]);
        }
    }
    for (int t = 0; t < BWD_GROUP; t++)
        for (int v = 0; v < V; v++) RV_STORE(c + t * c_rows + v * RW, acc[t][v]);
}

/* bwd_rows_block over rows r < nr of c (rounded up to a group) and width
   REALs (a multiple of RW): the products whose register blocks are rows. */
ALWAYS_INLINE void TILED(bwd_rows_product)(REAL *c, int64_t c_rows, int zero, const REAL *a,
                                           int64_t a_rows, const REAL *b, int64_t b_rows,
                                           const int *keys, int64_t count, int nr,
                                           int64_t width)
{
    for (int r0 = 0; r0 < nr; r0 += BWD_GROUP) {
#define BWD_ROWS_BLOCK(e, V) \
        TILED(bwd_rows_block)(c + r0 * c_rows + e, c_rows, zero, a + r0 * a_rows, a_rows, \
                              b + e, b_rows, keys, count, V)
        BWD_VECTOR_BLOCKS(width, BWD_ROWS_BLOCK);
#undef BWD_ROWS_BLOCK
    }
}

/* out[r][j] = sum_{e < n} a[r][e] bt[e][j]: rows r < nr rounded up to a
   group, BWD_KEYS keys, summed over e in ascending order. */
static void TILED(bwd_gemm)(const REAL *a, int64_t lda, const REAL *bt, int64_t n, REAL *out,
                            int nr)
{
    TILED(bwd_rows_product)(out, BWD_KEYS, 1, a, lda, bt, BWD_KEYS, NULL, n, nr, BWD_KEYS);
}

/* The row block of the loaded rows from row `first`: its rows' count. */
static int TILED(bwd_block_rows)(const TILED(bwd_work) *w, int first)
{
    return w->rows - first < BWD_ROWS ? w->rows - first : BWD_ROWS;
}

/* Whether some row of the row block `first` is active. */
static int TILED(bwd_any_active)(const TILED(bwd_work) *w, int first)
{
    int any = 0;
    for (int r = 0; r < BWD_ROWS; r++) any |= w->active[first + r];
    return any;
}

/* The scores of the row block `first` against keys [j0, j0 + nk): sc (-inf
   where hidden: band, bool mask, padding) and, with softcap, fac = dt/ds. */
static void TILED(bwd_scores)(TILED(bwd_work) *w, int64_t b, int64_t h, int first, int64_t j0,
                              int nk)
{
    const attnref_params *p = w->c->p;
    const REAL scale = (REAL)p->scale, cap = (REAL)p->softcap;
    const int64_t i0 = w->i0 + first;
    TILED(bwd_gemm)(w->qr + first * w->Ep, w->Ep, w->kt, p->E, w->sc,
                    TILED(bwd_block_rows)(w, first));
    for (int r = 0; r < BWD_ROWS; r++) {
        REAL *sc = w->sc + r * BWD_KEYS, *fac = w->fac + r * BWD_KEYS;
        if (!w->active[first + r]) {   /* padding or a fully masked row: mask not read */
            for (int j = 0; j < BWD_KEYS; j++) sc[j] = -INFINITY;
            continue;
        }
        int64_t jb, je;
        band_keys(p, i0 + r, &jb, &je);
        const int64_t at = b * p->mask_stride[0] + h * p->mask_stride[1]
                           + (i0 + r) * p->mask_stride[2] + j0 * p->mask_stride[3];
        for (int j = 0; j < BWD_KEYS; j += RW)
            RV_STORE(sc + j, RV_MUL(RV_LOAD(sc + j), RV_SET1(scale)));
        if (cap > 0)
            for (int j = 0; j < BWD_KEYS; j++) {
                const REAL t = cap * BWD_TANH(sc[j] / cap);
                fac[j] = 1 - (t / cap) * (t / cap);
                sc[j] = t;
            }
        if (p->mask_kind == ATTNREF_MASK_BIAS) {
            const REAL *bias = (const REAL *)w->c->mask + at;
            for (int j = 0; j < nk; j++) sc[j] += bias[j * p->mask_stride[3]];
        }
        /* keys outside the band or the block are hidden */
        const int lo = (int)clamp(jb - j0, 0, nk), hi = (int)clamp(je - j0, 0, nk);
        if (lo > 0 || hi < BWD_KEYS)
            for (int j = 0; j < BWD_KEYS; j += RW)
                RV_STORE(sc + j, TILED(keep_range)(RV_LOAD(sc + j), j, lo, hi));
        if (p->mask_kind == ATTNREF_MASK_BOOL) {
            const unsigned char *allowed = (const unsigned char *)w->c->mask + at;
            for (int j = 0; j < nk; j++)
                if (!allowed[j * p->mask_stride[3]]) sc[j] = -INFINITY;
        }
    }
}

/* The keys j < nk (ascending) that some row of the block weighs (a key with
   weight[r][j] = 0 for every r is left out: a hidden key's k and v are not
   read; da is 0 wherever p is); returns their count. The weights are p:
   0, positive or NaN, so their column sum is 0 exactly when every one is. */
static int TILED(bwd_weighed)(const REAL *weight, int nk, int *keys)
{
    REAL total[BWD_KEYS];
    for (int j = 0; j < BWD_KEYS; j += RW) {
        RVEC sum = RV_LOAD(weight + j);
        for (int r = 1; r < BWD_ROWS; r++) sum = RV_ADD(sum, RV_LOAD(weight + r * BWD_KEYS + j));
        RV_STORE(total + j, sum);
    }
    int n = 0;
    for (int j = 0; j < nk; j++)
        if (total[j] != 0) keys[n++] = j;
    return n;
}

/* pw = p and da (see the top) of the row block `first` from sc and fac; dp
   from dO V^T. */
static void TILED(bwd_weights)(TILED(bwd_work) *w, int first)
{
    const attnref_params *p = w->c->p;
    TILED(bwd_gemm)(w->dor + first * w->Evp, w->Evp, w->vt, p->Ev, w->dp,
                    TILED(bwd_block_rows)(w, first));
    for (int r = 0; r < BWD_ROWS; r++) {
        REAL *pw = w->pw + r * BWD_KEYS, *da = w->da + r * BWD_KEYS;
        const REAL *sc = w->sc + r * BWD_KEYS, *dp = w->dp + r * BWD_KEYS;
        const REAL *fac = w->fac + r * BWD_KEYS;
        if (!w->active[first + r]) {
            for (int j = 0; j < BWD_KEYS; j++) pw[j] = da[j] = 0;
            continue;
        }
        const RVEC m = RV_SET1(w->m[first + r]), linv = RV_SET1(w->linv[first + r]);
        const RVEC d = RV_SET1(w->d[first + r]), scale = RV_SET1((REAL)p->scale);
        const int finite_m = isfinite(w->m[first + r]);
        for (int j = 0; j < BWD_KEYS; j += RW) {
            /* a hidden key (s = -inf) weighs 0, even on a NaN row (with a
               finite m, exp(s - m) is 0 already); a NaN weight stays NaN */
            const RVEC s = RV_LOAD(sc + j);
            RVEC pj = RV_MUL(TILED(vexp)(RV_SUB(s, m)), linv);
            if (!finite_m) pj = TILED(exp_special)(pj, s, -BWD_REAL_MAX, INFINITY);
            RVEC dj = RV_MUL(scale, RV_MUL(pj, RV_SUB(RV_LOAD(dp + j), d)));
            if (p->softcap > 0) dj = RV_MUL(dj, RV_LOAD(fac + j));
            /* da is 0 wherever p is: a NaN from 0 (dp - D) (a hidden key's
               v may hold inf) or from a hidden key's softcap factor is
               replaced (a 0 of either sign adds nothing to a sum) */
            if (TILED(any_nan)(dj)) dj = TILED(exp_special)(dj, pj, BWD_REAL_TRUE_MIN, INFINITY);
            RV_STORE(pw + j, pj);
            RV_STORE(da + j, dj);
        }
    }
    w->weighed = TILED(bwd_weighed)(w->pw, BWD_KEYS, w->keys);
}

/* The register block of bwd_update_keys: keys `at` (their acc rows, their
   weights' columns wt) at V vectors from e, across the rows r < nr. */
ALWAYS_INLINE void TILED(bwd_keys_block)(REAL *const *at, const REAL *const *wt,
                                         const REAL *rows, int64_t n, int nr, int64_t e,
                                         const int V)
{
    RVEC c[BWD_GROUP][BWD_VECS];
    for (int t = 0; t < BWD_GROUP; t++)
        for (int v = 0; v < V; v++) c[t][v] = RV_LOAD(at[t] + e + v * RW);
    for (int r = 0; r < nr; r++) {
        RVEC x[BWD_VECS];
        for (int v = 0; v < V; v++) x[v] = RV_LOAD(rows + r * n + e + v * RW);
        for (int t = 0; t < BWD_GROUP; t++) {
            const RVEC s = RV_SET1(wt[t][r * BWD_KEYS]);
            for (int v = 0; v < V; v++) c[t][v] = RV_FMA(s, x[v], c[t][v]);
        }
    }
    for (int t = 0; t < BWD_GROUP; t++)
        for (int v = 0; v < V; v++) RV_STORE(at[t] + e + v * RW, c[t][v]);
}

/* acc[j][:] += sum_{r < nr} weight[r][j] rows[r][:] for the weighed keys
   (width n, a multiple of RW): register blocks of BWD_GROUP keys held
   across the rows, summed in ascending r. */
static void TILED(bwd_update_keys)(REAL *acc, const REAL *weight, const REAL *rows, int64_t n,
                                   const int *keys, int count, int nr)
{
    int u = 0;
    for (; u + BWD_GROUP <= count; u += BWD_GROUP) {
        REAL *at[BWD_GROUP];
        const REAL *wt[BWD_GROUP];
        for (int t = 0; t < BWD_GROUP; t++) {
            at[t] = acc + keys[u + t] * n;
            wt[t] = weight + keys[u + t];
        }
#define BWD_KEYS_BLOCK(e, V) TILED(bwd_keys_block)(at, wt, rows, n, nr, e, V)
        BWD_VECTOR_BLOCKS(n, BWD_KEYS_BLOCK);
#undef BWD_KEYS_BLOCK
    }
    for (; u < count; u++) {
        REAL *at = acc + keys[u] * n;
        const REAL *wt = weight + keys[u];
        for (int64_t e = 0; e < n; e += RW) {
            RVEC c = RV_LOAD(at + e);
            for (int r = 0; r < nr; r++)
                c = RV_FMA(RV_SET1(wt[r * BWD_KEYS]), RV_LOAD(rows + r * n + e), c);
            RV_STORE(at + e, c);
        }
    }
}

/* acc[r][:] += sum_j da[r][j] kp[j][:] for rows r < nr (rounded up to a
   group; acc rows of Ep) over the weighed keys, in ascending order. */
static void TILED(bwd_update_rows)(REAL *acc, const REAL *da, const REAL *kp, int64_t Ep,
                                   const int *keys, int count, int nr)
{
    TILED(bwd_rows_product)(acc, Ep, 0, da, BWD_KEYS, kp, Ep, keys, count, nr, Ep);
}

/* Key blocks [*kb_begin, *kb_end) the rows [i0, i1) can see. */
static void TILED(bwd_key_blocks)(const attnref_params *p, int64_t i0, int64_t i1,
                                  int64_t *kb_begin, int64_t *kb_end)
{
    int64_t jb, je, unused;
    band_keys(p, i0, &jb, &unused);
    band_keys(p, i1 - 1, &unused, &je);
    *kb_begin = jb / BWD_KEYS;
    *kb_end = je > jb ? (je - 1) / BWD_KEYS + 1 : *kb_begin;
}

/* Rows [*i_begin, *i_end) that can see a key of [j0, j1): i with
   band_lower <= j - i - diag_offset <= band_upper for some j. */
static void TILED(bwd_row_range)(const attnref_params *p, int64_t j0, int64_t j1,
                                 int64_t *i_begin, int64_t *i_end)
{
    *i_begin = clamp(add_saturated(add_saturated(j0, -p->diag_offset), -p->band_upper), 0, p->L);
    *i_end = clamp(add_saturated(add_saturated(add_saturated(j1 - 1, -p->diag_offset),
                                               -p->band_lower), 1), 0, p->L);
    if (*i_end < *i_begin) *i_end = *i_begin;
}

/* dmask of the row block `first` against keys [j0, j0 + nk), when asked. */
static void TILED(bwd_store_dmask)(const TILED(bwd_work) *w, int64_t b, int64_t h, int first,
                                   int64_t j0, int nk)
{
    const attnref_params *p = w->c->p;
    if (!w->c->dmask) return;
    for (int r = 0; r < TILED(bwd_block_rows)(w, first); r++) {
        if (!w->active[first + r]) continue;
        REAL *row = (REAL *)w->c->dmask + ((b * p->H + h) * p->L + w->i0 + first + r) * p->S + j0;
        const REAL *pw = w->pw + r * BWD_KEYS, *dp = w->dp + r * BWD_KEYS;
        for (int j = 0; j < nk; j++)
            row[j] = pw[j] == 0 ? 0 : pw[j] * (dp[j] - w->d[first + r]);
    }
}

/* dq of the loaded rows of (b, h) from acc_q (0 or NaN on a fully masked
   row; so is the row of dmask under ATTNREF_ROWS_NAN). */
static void TILED(bwd_store_dq)(const TILED(bwd_work) *w, int64_t b, int64_t h)
{
    const attnref_params *p = w->c->p;
    for (int64_t i = w->i0; i < w->i0 + w->rows; i++) {
        REAL *dq = (REAL *)w->c->dq + ((b * p->H + h) * p->L + i) * p->E, m, linv;
        const REAL *acc = w->acc_q + (i - w->i0) * w->Ep;
        const int active = TILED(bwd_stats)(w, b, h, i, &m, &linv);
        for (int64_t e = 0; e < p->E; e++)
            dq[e] = active ? acc[e]
                    : p->masked_rows == ATTNREF_ROWS_NAN ? (REAL)NAN : 0;
        if (!active && w->c->dmask && p->masked_rows == ATTNREF_ROWS_NAN)
            for (int64_t j = 0; j < p->S; j++)
                ((REAL *)w->c->dmask)[((b * p->H + h) * p->L + i) * p->S + j] = (REAL)NAN;
    }
}

/* BWD_SUM_MAX or BWD_SUM_EXP of the row block `first` from its scores
   against nk keys, into the (m, l) of `stats`. */
static void TILED(bwd_sum_stats)(TILED(bwd_work) *w, int64_t b, int64_t h, int first, int nk,
                                 int sums)
{
    const attnref_params *p = w->c->p;
    REAL *stats = (REAL *)w->c->stats + 2 * ((b * p->H + h) * p->L + w->i0 + first);
    for (int r = 0; r < TILED(bwd_block_rows)(w, first); r++) {
        REAL *row = stats + 2 * r;
        const REAL *sc = w->sc + r * BWD_KEYS;
        if (sums == BWD_SUM_MAX) {
            for (int j = 0; j < nk; j++)
                row[0] = isnan(sc[j]) || isnan(row[0]) ? (REAL)NAN
                         : sc[j] > row[0] ? sc[j] : row[0];
        } else if (!(isinf(row[0]) && row[0] < 0)) {
            const RVEC m = RV_SET1(row[0]);
            REAL *pw = w->pw;
            for (int j = 0; j < BWD_KEYS; j += RW)
                RV_STORE(pw + j, TILED(vexp)(RV_SUB(RV_LOAD(sc + j), m)));
            for (int j = 0; j < nk; j++) row[1] += pw[j];
        }
    }
}

/* The row block `first` of the loaded rows of (b, h) against the packed
   key block [j0, j0 + nk): the `sums` of its scores, skipped when no row
   of it sees a key of the block (every weight would be 0). */
static void TILED(bwd_block)(TILED(bwd_work) *w, int64_t b, int64_t h, int first, int64_t j0,
                             int nk, int sums)
{
    const int nr = TILED(bwd_block_rows)(w, first);
    int64_t kb0, kb1;
    TILED(bwd_key_blocks)(w->c->p, w->i0 + first, w->i0 + first + nr, &kb0, &kb1);
    if (j0 / BWD_KEYS < kb0 || j0 / BWD_KEYS >= kb1 || !TILED(bwd_any_active)(w, first)) return;
    TILED(bwd_scores)(w, b, h, first, j0, nk);
    if (sums & (BWD_SUM_MAX | BWD_SUM_EXP)) {
        TILED(bwd_sum_stats)(w, b, h, first, nk, sums);
        return;
    }
    TILED(bwd_weights)(w, first);
    if (sums & BWD_SUM_DKDV) {
        TILED(bwd_update_keys)(w->sum_v, w->pw, w->dor + first * w->Evp, w->Evp, w->keys,
                               w->weighed, nr);
        TILED(bwd_update_keys)(w->sum_k, w->da, w->qr + first * w->Ep, w->Ep, w->keys,
                               w->weighed, nr);
    }
    if (sums & BWD_SUM_DQ) {
        TILED(bwd_store_dmask)(w, b, h, first, j0, nk);
        TILED(bwd_update_rows)(w->acc_q + first * w->Ep, w->da, w->k_rows, w->Ep, w->keys,
                               w->weighed, nr);
    }
}

/* dk and dv of keys [j0, j0 + nk) of (b, kvh): where their sums are held,
   sum_k and sum_v. The outputs themselves when their rows are whole
   vectors; else acc_k and acc_v, the sums so far copied from the outputs
   (padding 0) and, with `store`, back. */
static void TILED(bwd_key_sums)(TILED(bwd_work) *w, int64_t b, int64_t kvh, int64_t j0, int nk,
                                int store)
{
    const attnref_params *p = w->c->p;
    const int64_t first = (b * (p->H / p->kv_group) + kvh) * p->S + j0;
    REAL *dk = (REAL *)w->c->dk + first * p->E, *dv = (REAL *)w->c->dv + first * p->Ev;
    if (p->E == w->Ep && p->Ev == w->Evp) {
        w->sum_k = dk;
        w->sum_v = dv;
        return;
    }
    w->sum_k = w->acc_k;
    w->sum_v = w->acc_v;
    for (int j = 0; j < nk; j++) {
        REAL *acc_k = w->acc_k + j * w->Ep, *acc_v = w->acc_v + j * w->Evp;
        if (store) {
            memcpy(dk + j * p->E, acc_k, (size_t)p->E * sizeof(REAL));
            memcpy(dv + j * p->Ev, acc_v, (size_t)p->Ev * sizeof(REAL));
            continue;
        }
        memcpy(acc_k, dk + j * p->E, (size_t)p->E * sizeof(REAL));
        memset(acc_k + p->E, 0, (size_t)(w->Ep - p->E) * sizeof(REAL));
        memcpy(acc_v, dv + j * p->Ev, (size_t)p->Ev * sizeof(REAL));
        memset(acc_v + p->Ev, 0, (size_t)(w->Evp - p->Ev) * sizeof(REAL));
    }
}

/* The walk every pass takes: rows [i0, i1) of (b, h) (at most BWD_QBLOCK,
   loaded once) against the key blocks of [kb_lo, kb_hi) in their band, in
   ascending order, and each key block against the row blocks in ascending
   order: the `sums` asked. dk and dv are summed in the outputs, key block
   by key block; dq in acc_q, then stored. */
static void TILED(bwd_walk)(TILED(bwd_work) *w, int64_t b, int64_t h, int64_t i0, int64_t i1,
                            int64_t kb_lo, int64_t kb_hi, int sums)
{
    const attnref_params *p = w->c->p;
    const int64_t kvh = h / p->kv_group;
    int64_t kb0, kb1;
    TILED(bwd_key_blocks)(p, i0, i1, &kb0, &kb1);
    if (kb0 < kb_lo) kb0 = kb_lo;
    if (kb1 > kb_hi) kb1 = kb_hi;
    TILED(bwd_load_rows)(w, b, h, i0, (int)(i1 - i0), (sums & (BWD_SUM_MAX | BWD_SUM_EXP)) != 0);
    if (sums & BWD_SUM_DQ)
        memset(w->acc_q, 0, (size_t)(BWD_QBLOCK * w->Ep) * sizeof(REAL));
    for (int64_t kb = kb0; kb < kb1; kb++) {
        const int64_t j0 = kb * BWD_KEYS;
        const int nk = (int)(p->S - j0 < BWD_KEYS ? p->S - j0 : BWD_KEYS);
        TILED(bwd_keys)(w, b, kvh, j0, nk, (sums & BWD_SUM_DQ) != 0);
        if (sums & BWD_SUM_DKDV) TILED(bwd_key_sums)(w, b, kvh, j0, nk, 0);
        for (int first = 0; first < w->rows; first += BWD_ROWS)
            TILED(bwd_block)(w, b, h, first, j0, nk, sums);
        if (sums & BWD_SUM_DKDV) TILED(bwd_key_sums)(w, b, kvh, j0, nk, 1);
    }
    if (sums & BWD_SUM_DQ) TILED(bwd_store_dq)(w, b, h);
}

/* Whether head h of batch b has a fully masked row under ATTNREF_ROWS_NAN:
   its NaN weights reach every key of its kv head. */
static int TILED(bwd_nan_rows)(const TILED(bwd_work) *w, int64_t b, int64_t h)
{
    const attnref_params *p = w->c->p;
    for (int64_t i = 0; i < p->L && p->masked_rows == ATTNREF_ROWS_NAN; i++) {
        REAL m, linv;
        if (!TILED(bwd_stats)(w, b, h, i, &m, &linv)) return 1;
    }
    return 0;
}

/* dk and dv of keys [j0, j0 + nk) of (b, kvh) set to NaN. */
static void TILED(bwd_nan_keys)(const TILED(bwd_work) *w, int64_t b, int64_t kvh, int64_t j0,
                                int64_t nk)
{
    const attnref_params *p = w->c->p;
    const int64_t first = (b * (p->H / p->kv_group) + kvh) * p->S + j0;
    for (int64_t x = 0; x < nk * p->E; x++) ((REAL *)w->c->dk)[first * p->E + x] = (REAL)NAN;
    for (int64_t x = 0; x < nk * p->Ev; x++) ((REAL *)w->c->dv)[first * p->Ev + x] = (REAL)NAN;
}

/* BWD_PASS_STATS: m and l of the rows [i0, i1) of (b, h), two walks. */
static void TILED(bwd_unit_stats)(TILED(bwd_work) *w, int64_t b, int64_t h, int64_t i0,
                                  int64_t i1)
{
    const attnref_params *p = w->c->p;
    REAL *stats = (REAL *)w->c->stats + 2 * ((b * p->H + h) * p->L);
    for (int64_t i = i0; i < i1; i++) {
        stats[2 * i] = -INFINITY;
        stats[2 * i + 1] = 0;
    }
    TILED(bwd_walk)(w, b, h, i0, i1, 0, INT64_MAX, BWD_SUM_MAX);
    TILED(bwd_walk)(w, b, h, i0, i1, 0, INT64_MAX, BWD_SUM_EXP);
}

/* BWD_PASS_DKDV: dk and dv of key block kb of (b, kv head): the walks of
   its query heads' rows that see it, in ascending order. */
static void TILED(bwd_unit_dkdv)(TILED(bwd_work) *w, int64_t b, int64_t kvh, int64_t kb)
{
    const attnref_params *p = w->c->p;
    const int64_t j0 = kb * BWD_KEYS, nk = p->S - j0 < BWD_KEYS ? p->S - j0 : BWD_KEYS;
    int64_t i_begin, i_end;
    int nan_rows = 0;
    TILED(bwd_row_range)(p, j0, j0 + nk, &i_begin, &i_end);
    for (int64_t h = kvh * p->kv_group; h < (kvh + 1) * p->kv_group; h++) {
        nan_rows = nan_rows || TILED(bwd_nan_rows)(w, b, h);
        for (int64_t i0 = i_begin; i0 < i_end; i0 += BWD_QBLOCK)
            TILED(bwd_walk)(w, b, h, i0, i_end - i0 < BWD_QBLOCK ? i_end : i0 + BWD_QBLOCK, kb,
                            kb + 1, BWD_SUM_DKDV);
    }
    if (nan_rows) TILED(bwd_nan_keys)(w, b, kvh, j0, nk);
}

/* BWD_PASS_FUSED: dq, dk and dv of unit (b, kv head), in one sweep over
   its query heads and their blocks of BWD_QBLOCK rows, each a walk over
   its key blocks (every product computed once: 5 per score instead of the
   two passes' 7). */
static void TILED(bwd_unit_fused)(TILED(bwd_work) *w, int64_t b, int64_t kvh)
{
    const attnref_params *p = w->c->p;
    int nan_rows = 0;
    for (int64_t h = kvh * p->kv_group; h < (kvh + 1) * p->kv_group; h++) {
        for (int64_t i0 = 0; i0 < p->L; i0 += BWD_QBLOCK)
            TILED(bwd_walk)(w, b, h, i0, p->L - i0 < BWD_QBLOCK ? p->L : i0 + BWD_QBLOCK, 0,
                            INT64_MAX, BWD_SUM_DQ | BWD_SUM_DKDV);
        nan_rows = nan_rows || TILED(bwd_nan_rows)(w, b, h);
    }
    if (nan_rows) TILED(bwd_nan_keys)(w, b, kvh, 0, p->S);
}

/* A worker: its scratch, then units from job->next until job->row_end. */
INTERNAL int TILED(bwd_rows)(const sdpa_job *job)
{
    const bwd_call *c = (const bwd_call *)job->out;
    const attnref_params *p = c->p;
    TILED(bwd_work) w;
    memset(&w, 0, sizeof w);
    w.c = c;
    w.Ep = BWD_PAD(p->E);
    w.Evp = BWD_PAD(p->Ev > 0 ? p->Ev : 1);
    /* kt, vt, kp, acc_k, acc_v, acc_q, qr, dor, orow, then sc, dp, fac, pw, da */
    const size_t sizes[10] = {
        (size_t)(p->E * BWD_KEYS), (size_t)(w.Evp * BWD_KEYS), (size_t)(BWD_KEYS * w.Ep),
        (size_t)(BWD_KEYS * w.Ep), (size_t)(BWD_KEYS * w.Evp), (size_t)(BWD_QBLOCK * w.Ep),
        (size_t)(BWD_QBLOCK * w.Ep), (size_t)(BWD_QBLOCK * w.Evp), (size_t)w.Evp,
        5 * BWD_ROWS * BWD_KEYS};
    REAL **parts[9] = {&w.kt, &w.vt, &w.kp, &w.acc_k, &w.acc_v, &w.acc_q, &w.qr, &w.dor,
                       &w.orow};
    size_t total = 0;
    for (int u = 0; u < 10; u++) total += (sizes[u] + 15) / 16 * 16;   /* 64-byte aligned parts */
    void *memory = NULL;
    if (posix_memalign(&memory, 64, total * sizeof(REAL)) != 0) return ATTNREF_ERR_NOMEM;
    REAL *at = (REAL *)memory;
    for (int u = 0; u < 9; u++) {
        *parts[u] = at;
        at += (sizes[u] + 15) / 16 * 16;
    }
    w.sc = at;
    w.dp = at + BWD_ROWS * BWD_KEYS;
    w.fac = at + 2 * BWD_ROWS * BWD_KEYS;
    w.pw = at + 3 * BWD_ROWS * BWD_KEYS;
    w.da = at + 4 * BWD_ROWS * BWD_KEYS;
    const int64_t Hkv = p->H / p->kv_group;
    const int64_t qblocks = (p->L + BWD_QBLOCK - 1) / BWD_QBLOCK;
    const int64_t kblocks = (p->S + BWD_KEYS - 1) / BWD_KEYS;
    for (int64_t unit = __atomic_fetch_add(job->next, 1, __ATOMIC_RELAXED); unit < job->row_end;
         unit = __atomic_fetch_add(job->next, 1, __ATOMIC_RELAXED)) {
        if (c->pass == BWD_PASS_FUSED) {
            TILED(bwd_unit_fused)(&w, unit / Hkv, unit % Hkv);
        } else if (c->pass == BWD_PASS_DKDV) {
            TILED(bwd_unit_dkdv)(&w, unit / kblocks / Hkv, unit / kblocks % Hkv, unit % kblocks);
        } else {
            const int64_t qb = unit % qblocks, h = unit / qblocks % p->H, b = unit / qblocks / p->H;
            const int64_t i0 = qb * BWD_QBLOCK, i1 = i0 + BWD_QBLOCK < p->L ? i0 + BWD_QBLOCK : p->L;
            if (c->pass == BWD_PASS_STATS)
                TILED(bwd_unit_stats)(&w, b, h, i0, i1);
            else
                TILED(bwd_walk)(&w, b, h, i0, i1, 0, INT64_MAX, BWD_SUM_DQ);
        }
    }
    free(memory);
    return ATTNREF_OK;
}

#undef BWD_PAD
#undef BWD_VECS
#undef BWD_GROUP
#undef BWD_VECTOR_BLOCKS
#undef BWD_TANH
#undef BWD_REAL_MAX
#undef BWD_REAL_TRUE_MIN
