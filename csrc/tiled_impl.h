/*
 * tiled_impl.h -- the fast kernel: register-blocked tiles, one instruction
 * set and one float type per inclusion (see simd.h for what the includer
 * defines). It computes exactly what sdpa_impl.h computes (the contract in
 * attnref.h), with the same policy for masked keys, masked rows and NaN,
 * only blocked for the machine:
 *
 *   unit      = one batch entry b, one kv head, a block of up to TILE_ROWS
 *               query rows: the kv group's query heads x a run of positions i
 *               (GQA heads that share K/V share their packing)
 *   key tile  = TILE_KEYS keys, packed once per unit into panels that the
 *               micro-kernels stream through: K transposed (tiled_scores.h:
 *               in double for exact scores, in REAL for fast ones); V
 *               zero-padded to Evp (whole vectors) in panels of VALUE_PANEL
 *               dims, the last one narrower when Evp is not a multiple of
 *               VALUE_PANEL: panel c0 is (TILE_KEYS, its width) at
 *               vt + c0 TILE_KEYS. Rows of a panel are contiguous: no
 *               cache-set conflicts between them, whatever E or Ev
 *   pass 1    scores, a register block of rows x keys per micro-kernel,
 *             exact (summed in double or by Dot2, rounded once, as in the
 *             portable kernel) or fast (plain REAL sums): tiled_scores.h
 *   pass 2    softcap, bias, band and bool mask, NaN check
 *   pass 3    online softmax: running max m, rescale, p = exp(s - m), sum l
 *   pass 4    acc += p V, MR rows x (NV * RW) value dims per micro-kernel
 *   pass 5    out = acc / l, lse = m + log l
 *
 * Tiles whose keys are all outside every row's band are never visited
 * (causal and window block skipping), and passes 1 to 4 of a tile run only
 * over the unit's rows from the first to the last whose band meets it. Each
 * row is computed by one unit in a fixed order of tiles, so results do not
 * depend on the thread count (nor on the unit size: a row's result is the
 * same whichever rows share its unit).
 */

#if REAL_IS_DOUBLE
#define TILED_nonfinite_dims nonfinite_dims_f64
#else
#define TILED_nonfinite_dims nonfinite_dims_f32
#endif
#define KEY_PANEL (SCORE_NV * DW)
/* Rows [0, rows) of a pass in blocks of MR (<= 8) rows, then the rest in
   blocks of 4, 2 and 1: each a constant, so that a block's accumulators stay
   in registers. BLOCK(r, mr) computes rows r .. r + mr - 1. */
#define ROW_BLOCKS(rows, MR, BLOCK) do {                          \
        int r_ = 0;                                               \
        for (; r_ + (MR) <= (rows); r_ += (MR)) BLOCK(r_, (MR));  \
        if ((MR) > 4 && r_ + 4 <= (rows)) { BLOCK(r_, 4); r_ += 4; } \
        if ((MR) > 2 && r_ + 2 <= (rows)) { BLOCK(r_, 2); r_ += 2; } \
        if (r_ < (rows)) BLOCK(r_, 1);                            \
    } while (0)
_Static_assert(VALUE_MR <= 8 && SCORE_MR <= 8, "ROW_BLOCKS covers blocks of at most 8 rows");
#define VALUE_PANEL (VALUE_NV * RW)
/* Ev rounded up to whole vectors (not to whole panels: a head of 80 or 96
   dims on AVX-512 sums 80 or 96, not 128) */
#define VALUE_PAD(Ev) round_up(Ev, RW)
/* dims in the panel that starts at dim c0 (a multiple of VALUE_PANEL) */
#define PANEL_WIDTH(c0, Evp) ((Evp) - (c0) < VALUE_PANEL ? (int)((Evp) - (c0)) : VALUE_PANEL)
_Static_assert(VALUE_NV == 2 || VALUE_NV == 4, "values() has a case for each narrow panel");

#include "simd_exp.h"

/* The cache lines of x[0 .. n) on their way to L2. The packing of a tile
   fetches the next tile's rows this way, row by row beside its own: a burst
   of them would stall on the line fill buffers, and rows that arrive a
   tile's work ahead cost no wait (perf showed the packing's loads of K and
   V stalling otherwise: 8-11% of a call at N = 2048). */
ALWAYS_INLINE void TILED(prefetch)(const REAL *x, int64_t n)
{
    for (int64_t c = 0; c < n; c += 64 / sizeof(REAL)) __builtin_prefetch(x + c, 0, 2);
}

#include "tiled_scores.h"

/* pass 4 micro-kernel: acc[r][c] += sum_{j < n} p[r][j] vt[j][c] for
   r < mr (<= VALUE_MR), c < nv RW (nv <= VALUE_NV vectors: a constant at
   each call, so that the sums stay in registers). The tile's sum starts from 0 and is
   added to acc once (as the portable path's block_acc): a row's weighted
   values are summed in two levels, n terms per tile, then S / TILE_KEYS
   tiles, so the rounding error grows with TILE_KEYS + S / TILE_KEYS rather
   than with S (long rows).
   p (mr, TILE_KEYS); vt one value panel (TILE_KEYS, nv RW); acc (mr, Evp). */
ALWAYS_INLINE void TILED(value_block)(REAL *acc, const REAL *p, const REAL *vt,
                                      int64_t Evp, int n, int mr, int nv)
{
    RVEC sum[VALUE_MR][VALUE_NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) sum[r][v] = RV_SET1(0);
    for (int64_t j = 0; j < n; j++) {
        RVEC value[VALUE_NV];
        for (int v = 0; v < nv; v++) value[v] = RV_LOAD(vt + j * nv * RW + v * RW);
        for (int r = 0; r < mr; r++) {
            const RVEC weight = RV_SET1(p[r * TILE_KEYS + j]);
            for (int v = 0; v < nv; v++) sum[r][v] = RV_FMA(weight, value[v], sum[r][v]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++)
            RV_STORE(acc + r * Evp + v * RW, RV_ADD(RV_LOAD(acc + r * Evp + v * RW), sum[r][v]));
}

/* pass 4 for `rows` rows, n keys, all Evp value dims: the panels of
   VALUE_NV vectors, then the narrower last one, if any */
static void TILED(values)(REAL *acc, const REAL *p, const REAL *vt, int64_t Evp, int n,
                          int rows)
{
    int64_t c = 0;
#define VALUE_ROWS(r, mr) TILED(value_block)(acc + (r) * Evp + c, p + (r) * TILE_KEYS, \
                                             vt + c * TILE_KEYS, Evp, n, mr, nv)
    for (; c + VALUE_PANEL <= Evp; c += VALUE_PANEL) {
        enum { nv = VALUE_NV };
        ROW_BLOCKS(rows, VALUE_MR, VALUE_ROWS);
    }
    switch ((Evp - c) / RW) {
    case 0: break;
    case 1: { enum { nv = 1 }; ROW_BLOCKS(rows, VALUE_MR, VALUE_ROWS); break; }
#if VALUE_NV == 4
    case 2: { enum { nv = 2 }; ROW_BLOCKS(rows, VALUE_MR, VALUE_ROWS); break; }
    default: { enum { nv = 3 }; ROW_BLOCKS(rows, VALUE_MR, VALUE_ROWS); break; }
#endif
    }
#undef VALUE_ROWS
}

/* One panel row of pack_values: row t of the panel <- the `width` values
   of key t from dim c0 (value), zero-padded from Ev; x * 0 (0 for finite
   x, NaN for inf or NaN) added to sums, one per vector. */
ALWAYS_INLINE void TILED(pack_value_row)(REAL *row, const REAL *value, int64_t c0, int64_t Ev,
                                         int width, RVEC sums[VALUE_NV])
{
    for (int c = 0; c < width; c += RW) {
        RVEC x;
        if (c0 + c + RW <= Ev) {
            x = RV_LOAD(value + c);
        } else {   /* the zero-padded edge */
            REAL edge[RW];
            for (int u = 0; u < RW; u++) edge[u] = c0 + c + u < Ev ? value[c + u] : 0;
            x = RV_LOAD(edge);
        }
        RV_STORE(row + c, x);
        sums[c / RW] = RV_ADD(sums[c / RW], RV_MUL(x, RV_SET1(0)));
    }
}

/* One panel of pack_values (the panel of dims c0 .. c0 + width - 1): rows
   0 .. n-1 from v (rows vs2 apart), even keys' finiteness sums into even,
   odd keys' into odd. Called with a constant width for the full panels, so
   that the sums stay in registers (with a variable one they went through
   memory, a store-to-load chain per vector). The first panel's rows fetch
   the next tile's (v_next, `next` rows), two by two. */
ALWAYS_INLINE void TILED(pack_value_panel)(REAL *panel, const REAL *v, int64_t vs2, int n,
                                           int64_t c0, int64_t Ev, int width,
                                           RVEC even[VALUE_NV], RVEC odd[VALUE_NV],
                                           const REAL *v_next, int next)
{
    int t = 0;
    for (; t + 2 <= n; t += 2) {
        for (int u = t; c0 == 0 && u < t + 2 && u < next; u++)
            TILED(prefetch)(v_next + u * vs2, Ev);
        TILED(pack_value_row)(panel + t * width, v + t * vs2 + c0, c0, Ev, width, even);
        TILED(pack_value_row)(panel + (t + 1) * width, v + (t + 1) * vs2 + c0, c0, Ev, width,
                              odd);
    }
    if (t < n)
        TILED(pack_value_row)(panel + t * width, v + t * vs2 + c0, c0, Ev, width, even);
}

/* vt (panels of TILE_KEYS x their width, see the top) <- values 0 .. n-1
   of v (rows vs2 apart), each zero-padded from Ev to Evp; the first `next`
   rows from v_next (the next tile's) are prefetched. Returns whether every
   value is finite: the finiteness sums are kept apart for even and odd keys
   and per vector of a panel row, 2 VALUE_NV independent chains of additions
   rather than one (a chain costs an addition's latency per vector). */
static int TILED(pack_values)(REAL *vt, const REAL *v, int64_t vs2, int n, int64_t Ev,
                              int64_t Evp, const REAL *v_next, int next)
{
    RVEC even[VALUE_NV], odd[VALUE_NV], all = RV_SET1(0);
    for (int u = 0; u < VALUE_NV; u++) even[u] = odd[u] = RV_SET1(0);
    for (int64_t c0 = 0; c0 < Evp; c0 += VALUE_PANEL) {
        REAL *panel = vt + c0 * TILE_KEYS;
        const int width = PANEL_WIDTH(c0, Evp);
        if (width == VALUE_PANEL)
            TILED(pack_value_panel)(panel, v, vs2, n, c0, Ev, VALUE_PANEL, even, odd, v_next,
                                    next);
        else
            TILED(pack_value_panel)(panel, v, vs2, n, c0, Ev, width, even, odd, v_next, next);
    }
    for (int u = 0; u < VALUE_NV; u++) all = RV_ADD(all, RV_ADD(even[u], odd[u]));
    return TILED(hsum)(all) == 0;
}

/* The rows of one unit and everything a row needs. */
typedef struct {
    const REAL *q[TILE_ROWS];
    REAL *out[TILE_ROWS];
    REAL *lse[TILE_ROWS];          /* NULL without lse */
    const void *mask[TILE_ROWS];   /* (S,) row of the mask or bias, or NULL */
    int64_t j_begin[TILE_ROWS], j_end[TILE_ROWS];
    REAL m[TILE_ROWS], l[TILE_ROWS][RW];   /* l: RW partial sums */
    int nan[TILE_ROWS];
    int rows;
} TILED(unit_rows);

/* Scratch of one thread, laid out by tiled_scratch_layout (tiled.c). */
typedef struct {
    double *qd;    /* (TILE_ROWS, E) queries in double (exact scores) */
    double *kt;    /* (TILE_KEYS / KEY_PANEL, E, KEY_PANEL) keys of the tile, in double */
    REAL *qr;      /* fast scores: (TILE_ROWS, E) queries, in qd's memory */
    REAL *kr;      /* fast scores: (TILE_KEYS / RW, E, RW) keys of the tile, in kt's */
    REAL *vt;      /* (TILE_KEYS, Evp) values in panels, zero-padded (see the top) */
    double *sd;    /* (TILE_ROWS, TILE_KEYS) scaled scores in double */
    REAL *p;       /* (TILE_ROWS, TILE_KEYS) scores, then weights */
    REAL *acc;     /* (TILE_ROWS, Evp) weighted sums of values */
    TILED(unit_rows) *rows;
} TILED(scratch);

/* Rows of unit u: batch entry b, a chunk of query heads that share one kv
   head (job->head_chunk of them), then a block of positions i (blocks of
   later positions first: under a causal band they are the longest). Sets
   *kv_h and *b. */
static void TILED(gather_rows)(const attnref_params *p, const sdpa_job *job, int64_t u,
                               TILED(unit_rows) *rows, int64_t *kv_h, int64_t *b)
{
    const int64_t chunks = (p->H - 1) / job->head_chunk + 1;
    const int64_t ib = job->blocks - 1 - u % job->blocks;
    const int64_t h0 = (u / job->blocks) % chunks * job->head_chunk;
    const int64_t h1 = h0 + job->head_chunk < p->H ? h0 + job->head_chunk : p->H;
    const int64_t i0 = ib * job->block, i1 = i0 + job->block < p->L ? i0 + job->block : p->L;
    const int64_t *qs = p->q_stride, *os = p->out_stride, *ls = p->lse_stride;
    const int64_t *ms = p->mask_stride;
    const size_t mask_size = p->mask_kind == ATTNREF_MASK_BIAS ? sizeof(REAL) : 1;
    int n = 0;
    *b = u / job->blocks / chunks;
    *kv_h = h0 / p->kv_group;
    for (int64_t h = h0; h < h1; h++)
        for (int64_t i = i0; i < i1; i++, n++) {
            const int64_t bhi = *b * qs[0] + h * qs[1] + i * qs[2];
            rows->q[n] = (const REAL *)job->q + bhi;
            rows->out[n] = (REAL *)job->out + (*b * os[0] + h * os[1] + i * os[2]);
            rows->lse[n] = job->lse == NULL ? NULL
                : (REAL *)job->lse + (*b * ls[0] + h * ls[1] + i * ls[2]);
            rows->mask[n] = p->mask_kind == ATTNREF_MASK_NONE ? NULL
                : (const char *)job->mask + (*b * ms[0] + h * ms[1] + i * ms[2]) * mask_size;
            band_keys(p, i, &rows->j_begin[n], &rows->j_end[n]);
            rows->m[n] = -INFINITY;
            for (int u = 0; u < RW; u++) rows->l[n][u] = 0;
            rows->nan[n] = 0;
        }
    rows->rows = n;
}

/* whether row r's band meets the keys [j0, j0 + n) */
static inline int TILED(sees)(const TILED(unit_rows) *rows, int r, int64_t j0, int n)
{
    return j0 < rows->j_end[r] && j0 + n > rows->j_begin[r];
}

/* pass 2 for row r over the tile [j0, j0 + n): softcap, bias, band and mask;
   invisible keys get -inf. The scaled scores are sd (exact) or, when sd is
   NULL, s itself (fast), keys 0 .. n-1 rounded up to whole vectors (the
   columns past them may hold anything: they are set to -inf). Returns the
   tile's max score (NaN when a visible score is NaN). */
ALWAYS_INLINE REAL TILED(finish_scores)(const attnref_params *p,
                                        const TILED(unit_rows) *rows, int r, int64_t j0, int n,
                                        const double *sd, REAL *s)
{
    /* the visible band within the tile, as tile offsets in [0, n] */
    const int lo = (int)(rows->j_begin[r] - j0 < 0 ? 0 : rows->j_begin[r] - j0);
    const int hi = (int)(rows->j_end[r] - j0 < n ? rows->j_end[r] - j0 : n);
    const int64_t ms3 = p->mask_stride[3];
    const int direct = p->softcap == 0 && p->mask_kind == ATTNREF_MASK_NONE;
    /* the whole tile is visible: no key to set to -inf */
    const int whole = lo == 0 && hi == TILE_KEYS;
    /* the keys 0 .. n-1 in whole vectors */
    const int width = (int)round_up(n, RW);
    /* the scores in s are final as they are (fast scores, no softcap, mask
       or band edge): read, not written back */
    const int final = direct && sd == NULL && whole;
    /* two of each, for the even and odd vectors of the tile: two chains of
       dependent operations instead of one (a max is the same in any order) */
    RVEC max[2] = {RV_SET1(-INFINITY), RV_SET1(-INFINITY)};
    /* the sum of the scores is NaN when one is (or when inf meets -inf:
       then the scores are looked at one by one) */
    RVEC total[2] = {RV_SET1(0), RV_SET1(0)};
    int nan = 0;
    if (!direct) {
        if (p->softcap > 0)
            for (int t = 0; t < width; t++)
                s[t] = (REAL)(p->softcap * tanh((sd != NULL ? sd[t] : s[t]) / p->softcap));
        else if (sd != NULL)
            for (int t = 0; t < width; t++) s[t] = (REAL)sd[t];
        if (p->mask_kind == ATTNREF_MASK_BIAS) {
            const REAL *bias = (const REAL *)rows->mask[r] + j0 * ms3;
            for (int t = 0; t < n; t++) s[t] += bias[t * ms3];
        } else if (p->mask_kind == ATTNREF_MASK_BOOL) {
            const uint8_t *allowed = (const uint8_t *)rows->mask[r] + j0 * ms3;
            for (int t = 0; t < n; t++)
                if (allowed[t * ms3] == 0) s[t] = -INFINITY;
        }
    }
    _Static_assert(TILE_KEYS % (2 * RW) == 0, "a key tile is an even number of vectors");
    for (int t = 0; t < width; t += RW) {
        const int odd = t / RW % 2;
        RVEC x = direct && sd != NULL ? TILED(from_scores)(sd + t) : RV_LOAD(s + t);
        if (!whole) x = TILED(keep_range)(x, t, lo, hi);
        if (!final) RV_STORE(s + t, x);
        max[odd] = RV_MAX(x, max[odd]);
        total[odd] = RV_ADD(total[odd], x);
    }
    if (TILED(any_nan)(RV_ADD(total[0], total[1])))
        for (int t = 0; t < width; t += RW) nan |= TILED(any_nan)(RV_LOAD(s + t));
    return nan ? (REAL)NAN : TILED(hmax)(RV_MAX(max[0], max[1]));
}

/* pass 3 for row r: weights p = exp(s - m_new) in place for the first
   `width` scores (the tile's keys in whole vectors, as pass 2 left them), l
   and acc rescaled */
ALWAYS_INLINE void TILED(softmax_step)(TILED(unit_rows) *rows, int r, REAL tile_max, REAL *s,
                                       int width, REAL *acc, int64_t Evp)
{
    const REAL m = rows->m[r], m_new = tile_max > m ? tile_max : m;
    /* 1 while the max holds; 0 on the first visible tile (m = -inf) */
    /* the policy of vexp: below EXP_LO the earlier keys weigh exactly 0 */
    const REAL rescale = m_new > m ? (m - m_new < EXP_LO ? 0 : EXP(m - m_new)) : 1;
    const RVEC shift = RV_SET1(m_new);
    /* l is kept as RW partial sums (summed once, in pass 5), each the sum
       of its tile sums (two levels, as the weighted values in value_block) */
    RVEC sum = RV_SET1(0);
    for (int t = 0; t < width; t += RW) {
        const RVEC weight = TILED(vexp_weight)(RV_SUB(RV_LOAD(s + t), shift));
        RV_STORE(s + t, weight);
        sum = RV_ADD(sum, weight);
    }
    sum = RV_FMA(RV_LOAD(rows->l[r]), RV_SET1(rescale), sum);
    /* rescale 0: the keys so far now weigh 0, and multiplying would turn an
       inf or NaN value of theirs into NaN */
    if (rescale == 0)
        for (int64_t c = 0; c < Evp; c++) acc[c] = 0;
    else if (rescale != 1)
        for (int64_t c = 0; c < Evp; c += RW) RV_STORE(acc + c, RV_MUL(RV_LOAD(acc + c), RV_SET1(rescale)));
    RV_STORE(rows->l[r], sum);
    rows->m[r] = m_new;
}

/* passes 2 and 3 for row r over the tile [j0, j0 + n) (see weigh_tile) */
ALWAYS_INLINE void TILED(weigh_row)(const attnref_params *p, TILED(unit_rows) *rows, int r,
                                    int64_t j0, int n, const double *sd, REAL *s, REAL *acc,
                                    int64_t Evp)
{
    REAL tile_max;
    if (rows->nan[r] || !TILED(sees)(rows, r, j0, n)) {
        for (int t = 0; t < TILE_KEYS; t++) s[t] = 0;
        return;
    }
    tile_max = TILED(finish_scores)(p, rows, r, j0, n, sd, s);
    if (tile_max != tile_max) {
        rows->nan[r] = 1;
        for (int t = 0; t < TILE_KEYS; t++) s[t] = 0;
    } else if (tile_max == -INFINITY) {
        /* no visible key of this tile scores above -inf: it adds nothing */
        for (int t = 0; t < TILE_KEYS; t++) s[t] = 0;
    } else {
        TILED(softmax_step)(rows, r, tile_max, s, (int)round_up(n, RW), acc, Evp);
    }
}

/* passes 2 and 3 for every row of a unit over the tile [j0, j0 + n): the
   weights of its keys into weights (TILE_ROWS, TILE_KEYS), 0 for keys that
   add nothing, from the scores sd (TILE_ROWS, TILE_KEYS), and each row's m,
   l and acc (rows Evp apart) brought up to date; sd NULL: the scaled scores
   are already in weights (fast scores). decode_impl.h weighs its key blocks
   with it too. A whole tile is weighed with n the constant TILE_KEYS, so
   that the loops over its vectors unroll (a variable n cost 3-4%). */
static void TILED(weigh_tile)(const attnref_params *p, TILED(unit_rows) *rows, int64_t j0,
                              int n, const double *sd, REAL *weights, REAL *acc, int64_t Evp)
{
    for (int r = 0; r < rows->rows; r++) {
        const double *row_sd = sd != NULL ? sd + r * TILE_KEYS : NULL;
        if (n == TILE_KEYS)
            TILED(weigh_row)(p, rows, r, j0, TILE_KEYS, row_sd, weights + r * TILE_KEYS,
                             acc + r * Evp, Evp);
        else
            TILED(weigh_row)(p, rows, r, j0, n, row_sd, weights + r * TILE_KEYS, acc + r * Evp,
                             Evp);
    }
}

/* pass 5 for row r: out = acc / l (by division, as the NumPy reference) or
   the masked-row or NaN rule, and the lse. Unless every value the row's
   keys brought was finite, pass 6 (sdpa_impl.h) first sums again the dims
   that an inf or NaN value of a key the final max drops made inf or NaN.
   k_bh and v_bh are the row's kv head. decode_impl.h finishes rows with it. */
static void TILED(finish_row)(const attnref_params *p, const TILED(unit_rows) *rows, int r,
                              const REAL *acc, const REAL *k_bh, const REAL *v_bh,
                              int values_seen_finite)
{
    const REAL m = rows->m[r], l = TILED(hsum)(RV_LOAD(rows->l[r]));
    REAL *out = rows->out[r];
    if (rows->nan[r]) {
        for (int64_t c = 0; c < p->Ev; c++) out[c] = (REAL)NAN;
    } else if (m == -INFINITY) {
        const REAL masked_row_value = p->masked_rows == ATTNREF_ROWS_NAN ? (REAL)NAN : 0;
        for (int64_t c = 0; c < p->Ev; c++) out[c] = masked_row_value;
    } else {
        for (int64_t c = 0; c < p->Ev; c++) out[c] = acc[c] / l;
        if (!values_seen_finite)
            TILED_nonfinite_dims(p, rows->q[r], k_bh, v_bh,
                                  p->mask_kind == ATTNREF_MASK_BOOL ? rows->mask[r] : NULL,
                                  p->mask_kind == ATTNREF_MASK_BIAS ? rows->mask[r] : NULL,
                                  rows->j_begin[r], rows->j_end[r], m, l, acc, out);
    }
    if (rows->lse[r] != NULL)
        *rows->lse[r] = rows->nan[r] ? (REAL)NAN : m == -INFINITY ? -INFINITY : m + LOG(l);
}

/* One unit: all its rows against all the key tiles any of them sees. */
static void TILED(unit)(const sdpa_job *job, TILED(scratch) *w, int64_t u)
{
    const attnref_params *p = job->params;
    const int64_t E = p->E, Ev = p->Ev, Evp = VALUE_PAD(Ev);
    const int64_t *ks = p->k_stride, *vs = p->v_stride;
    const int fast = p->scores == ATTNREF_SCORES_FAST;
    TILED(unit_rows) *rows = w->rows;
    int64_t j_lo = INT64_MAX, j_hi = 0, kv_h, b;
    const REAL *k_bh, *v_bh;
    int values_seen_finite = 1;   /* no inf or NaN value in any tile so far */

    TILED(gather_rows)(p, job, u, rows, &kv_h, &b);
    k_bh = (const REAL *)job->k + (b * ks[0] + kv_h * ks[1]);
    v_bh = (const REAL *)job->v + (b * vs[0] + kv_h * vs[1]);
    for (int r = 0; r < rows->rows; r++) {
        if (rows->j_end[r] > rows->j_begin[r]) {
            if (rows->j_begin[r] < j_lo) j_lo = rows->j_begin[r];
            if (rows->j_end[r] > j_hi) j_hi = rows->j_end[r];
        }
        if (fast)
            for (int64_t d = 0; d < E; d++) w->qr[r * E + d] = rows->q[r][d];
        else
            for (int64_t d = 0; d < E; d++) w->qd[r * E + d] = rows->q[r][d];
        for (int64_t c = 0; c < Evp; c++) w->acc[r * Evp + c] = 0;
    }

    for (int64_t j0 = j_lo; j0 < j_hi; j0 += TILE_KEYS) {
        const int n = (int)(j_hi - j0 < TILE_KEYS ? j_hi - j0 : TILE_KEYS);
        /* keys of the next tile, fetched while this one packs */
        const int next = (int)(j_hi - j0 - n < TILE_KEYS ? j_hi - j0 - n : TILE_KEYS);
        /* rows [r0, r1) hold every row whose band meets the tile (under a
           causal band, the later rows): passes 1 and 4 skip the others,
           whose weights weigh_tile sets to 0 (they would add exactly 0) */
        int r0 = 0, r1 = rows->rows;
        while (r0 < r1 && !TILED(sees)(rows, r0, j0, n)) r0++;
        while (r1 > r0 && !TILED(sees)(rows, r1 - 1, j0, n)) r1--;
        /* pack: K^T (tiled_scores.h), V zero-padded to Evp, both into panels;
           the next tile's K and V rows are prefetched on the way */
        if (fast)
            TILED(pack_keys_fast)(w->kr, k_bh + j0 * ks[2], ks[2], n, E,
                                  k_bh + (j0 + n) * ks[2], next);
        else
            TILED(pack_keys_exact)(w->kt, k_bh + j0 * ks[2], ks[2], n, E,
                                   k_bh + (j0 + n) * ks[2], next);
        const int values_finite = TILED(pack_values)(w->vt, v_bh + j0 * vs[2], vs[2], n,
                                                     Ev, Evp, v_bh + (j0 + n) * vs[2], next);
        values_seen_finite &= values_finite;

        /* pass 1: scores, into sd (exact) or straight into p (fast) */
        if (fast)
            TILED(scores_fast)(w->p + r0 * TILE_KEYS, w->qr + r0 * E, w->kr, E,
                               (REAL)p->scale, r1 - r0, n);
        else
            TILED(scores_exact)(w->sd + r0 * TILE_KEYS, w->qd + r0 * E, w->kt, E, p->scale,
                                r1 - r0, n);

        /* passes 2 and 3 */
        TILED(weigh_tile)(p, rows, j0, n, fast ? NULL : w->sd, w->p, w->acc, Evp);

        /* pass 4: weighted values */
        if (values_finite) {
            TILED(values)(w->acc + r0 * Evp, w->p + r0 * TILE_KEYS, w->vt, Evp, n, r1 - r0);
        } else {
            /* an inf or NaN value: keys of weight 0 must contribute nothing,
               not 0 * inf = NaN. The same fused multiply-adds in the same
               order as value_block (a tile sum from 0, added to acc once),
               so visible keys give the same bits. */
            for (int r = r0; r < r1; r++)
                for (int64_t c = 0; c < Evp; c += RW) {
                    const int64_t c0 = c / VALUE_PANEL * VALUE_PANEL;
                    const int width = PANEL_WIDTH(c0, Evp);
                    const REAL *panel = w->vt + c0 * TILE_KEYS + (c - c0);
                    RVEC sum = RV_SET1(0);
                    for (int t = 0; t < n; t++)
                        if (w->p[r * TILE_KEYS + t] != 0)
                            sum = RV_FMA(RV_SET1(w->p[r * TILE_KEYS + t]),
                                         RV_LOAD(panel + t * width), sum);
                    RV_STORE(w->acc + r * Evp + c, RV_ADD(RV_LOAD(w->acc + r * Evp + c), sum));
                }
        }
    }

    /* pass 5 */
    for (int r = 0; r < rows->rows; r++)
        TILED(finish_row)(p, rows, r, w->acc + r * Evp, k_bh, v_bh, values_seen_finite);
}

/* A thread's share: units taken one at a time from the shared counter. */
int TILED(rows)(const sdpa_job *job)
{
    const attnref_params *p = job->params;
    const int64_t Evp = VALUE_PAD(p->Ev);
    TILED(scratch) w;
    void *memory;
    size_t offset[7];
    int64_t u;
    if (!tiled_scratch_layout(p->E, Evp, sizeof(REAL), sizeof(TILED(unit_rows)), offset))
        return ATTNREF_ERR_NOMEM;
    memory = aligned_scratch(offset[6]);
    if (memory == NULL) return ATTNREF_ERR_NOMEM;
    w.qd = (double *)((char *)memory + offset[0]);
    w.kt = (double *)((char *)memory + offset[1]);
    w.qr = (REAL *)w.qd;
    w.kr = (REAL *)w.kt;
    w.vt = (REAL *)((char *)memory + offset[2]);
    w.sd = (double *)((char *)memory + offset[3]);
    w.p = (REAL *)((char *)memory + offset[4]);
    w.acc = (REAL *)((char *)memory + offset[5]);
    w.rows = (TILED(unit_rows) *)((char *)memory + offset[6] - sizeof(TILED(unit_rows)));
    while ((u = next_unit(job)) < job->row_end)
        TILED(unit)(job, &w, u);
    free(memory);
    return ATTNREF_OK;
}

/* out[i] = exp(x[i]) with this instance's vector exp (attnref_exp_*) */
int TILED(exp_array)(REAL *out, const REAL *x, int64_t n)
{
    int64_t i = 0;
    REAL tail[RW];
    for (; i + RW <= n; i += RW) RV_STORE(out + i, TILED(vexp)(RV_LOAD(x + i)));
    if (i < n) {
        for (int u = 0; u < RW; u++) tail[u] = i + u < n ? x[i + u] : 0;
        RV_STORE(tail, TILED(vexp)(RV_LOAD(tail)));
        for (int u = 0; i + u < n; u++) out[i + u] = tail[u];
    }
    return ATTNREF_OK;
}
