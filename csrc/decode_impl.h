/*
 * decode_impl.h -- the decoding kernel: calls with few query rows per kv
 * head (kv_group L <= DECODE_ROWS: one new token, or a few, under GQA), one
 * instruction set and one float type per inclusion. tiled.c includes it
 * after simd.h and tiled_impl.h, whose vector exp, Dot2 step, row table,
 * softmax passes and row finish it uses; simd_end.h undefines it all.
 *
 * With so few rows, packing K and V into panels (tiled_impl.h) costs about
 * as much as using them, and the call is bound by reading K and V. So K and
 * V rows are streamed as they are, each read once for all the query rows
 * that share them:
 *
 *   group     = batch entry b x kv head: the kv group's query heads x all L
 *               positions (the row table of tiled_impl.h, up to DECODE_ROWS)
 *   chunk     = keys [c C, (c + 1) C) with C from S alone (decode.c): the
 *               same chunks for any thread count and any split of the call
 *   unit      = a group x a chunk, over key blocks of TILE_KEYS keys:
 *   pass 1    scores of a few rows x keys per micro-kernel (below), each a
 *             vector of partial sums along E, whose lanes a tree of shuffles
 *             and adds (sums_ps / sums_pd) sums for a whole vector of pairs
 *             at once: for ATTNREF_SCORES_EXACT float products summed in
 *             double (the float score rounded once) and double ones by Dot2
 *             (their lanes and errors by a transpose), as tiled_impl.h; for
 *             ATTNREF_SCORES_FAST plain FMA sums in
 *             REAL, written straight into the weights
 *   pass 2-3  softcap, bias, band and mask, NaN check and online softmax:
 *             tiled_impl.h's weigh_tile
 *   pass 4    acc += p V for 4, 2 or 1 rows x DECODE_VALUE_NV vectors of
 *             value dims, the block's sums apart: one that is inf or NaN is
 *             summed again without the keys of weight 0 (0 x inf must not
 *             reach acc)
 *   prefetch  pass 1 fetches the next block's keys and pass 4 its values
 *             (after a unit's last block, the first block of the unit the
 *             thread computes next), key by key along with the keys of this
 *             block, into L2: one full block ahead of the loads, a few
 *             lines at each step, so that the line fill buffers never fill
 *             up in a burst. Each of K and V is read from memory once.
 *   after the last block, with one chunk: tiled_impl.h's finish_row (pass 5,
 *   and pass 6 of sdpa_impl.h where acc is not finite). With more, the
 *   chunk's m, l and acc go to the wave's partial table, and the unit that
 *   finishes a group's last chunk folds the chunks in chunk order, as the
 *   online softmax folds key blocks, then finishes the rows. Which thread
 *   does it does not change the order: results are bit-identical for any
 *   thread count.
 */

/* Register blocks. Exact float scores: DECODE_MR rows x DW / 2 keys, 2 DW
   double sums (a key converted to double once serves 4 rows). Fast scores:
   mr rows x DECODE_SUMS / mr keys (mr = 4, 2 or 1), DECODE_SUMS REAL sums:
   half of the vector registers, the rest holding queries and keys. Values:
   mr rows x DECODE_VALUE_NV vectors of dims, at most DECODE_SUMS sums. */
#define DECODE_MR 4
#define DECODE_SUMS (SIMD_REGISTERS / 2)
#define DECODE_VALUE_NV (DECODE_SUMS / 4)
_Static_assert(DECODE_SUMS % RW == 0 && DECODE_SUMS / RW >= 1 && DECODE_SUMS >= 4,
               "DECODE_SUMS is a multiple of the lanes, and 4 rows share it");

/* RW REALs of x, zero from `width` on (the edge of a row) */
ALWAYS_INLINE RVEC TILED(decode_load)(const REAL *x, int64_t width)
{
    REAL part[RW];
    if (width >= RW) return RV_LOAD(x);
    for (int u = 0; u < RW; u++) part[u] = u < width ? x[u] : 0;
    return RV_LOAD(part);
}

/* Lane sums: lane u of the result is the sum of the lanes of x[u], for as
   many vectors as a vector has lanes. A tree of shuffles and adds, each
   level halving the vectors (log2(lanes) levels, lanes - 1 adds): about
   half the shuffles of a transpose followed by adds. sums_ps: float
   vectors, sums_pd: double vectors. */
#if defined(SIMD_AVX512)
ALWAYS_INLINE __m512 TILED(sums_ps)(const __m512 x[16])
{
    __m512 a[8], b[4], c[2];
    /* within each 128-bit lane: [x0 + x2, y0 + y2, x1 + x3, y1 + y3] */
    for (int i = 0; i < 8; i++)
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]),
                             _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
    /* lane 4L + v: vector 4i + v's sum over 128-bit lane L */
    for (int i = 0; i < 4; i++)
        b[i] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0xEE));
    /* 128-bit lanes: 0 + 1 and 2 + 3 of b[2i], then of b[2i + 1] */
    for (int i = 0; i < 2; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88),
                         _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
}

ALWAYS_INLINE __m512d TILED(sums_pd)(const __m512d x[8])
{
    __m512d a[4], b[2];
    /* within each 128-bit lane: [x0 + x1, y0 + y1] */
    for (int i = 0; i < 4; i++)
        a[i] = _mm512_add_pd(_mm512_unpacklo_pd(x[2 * i], x[2 * i + 1]),
                             _mm512_unpackhi_pd(x[2 * i], x[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        b[i] = _mm512_add_pd(_mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0x88),
                             _mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0xDD));
    return _mm512_add_pd(_mm512_shuffle_f64x2(b[0], b[1], 0x88),
                         _mm512_shuffle_f64x2(b[0], b[1], 0xDD));
}
#elif defined(SIMD_AVX2)
ALWAYS_INLINE __m256 TILED(sums_ps)(const __m256 x[8])
{
    __m256 a[4], b[2];
    for (int i = 0; i < 4; i++)
        a[i] = _mm256_add_ps(_mm256_unpacklo_ps(x[2 * i], x[2 * i + 1]),
                             _mm256_unpackhi_ps(x[2 * i], x[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        b[i] = _mm256_add_ps(_mm256_shuffle_ps(a[2 * i], a[2 * i + 1], 0x44),
                             _mm256_shuffle_ps(a[2 * i], a[2 * i + 1], 0xEE));
    return _mm256_add_ps(_mm256_permute2f128_ps(b[0], b[1], 0x20),
                         _mm256_permute2f128_ps(b[0], b[1], 0x31));
}

ALWAYS_INLINE __m256d TILED(sums_pd)(const __m256d x[4])
{
    /* [x0 + x1, y0 + y1, x2 + x3, y2 + y3] */
    const __m256d a = _mm256_hadd_pd(x[0], x[1]), b = _mm256_hadd_pd(x[2], x[3]);
    return _mm256_add_pd(_mm256_permute2f128_pd(a, b, 0x20),
                         _mm256_permute2f128_pd(a, b, 0x31));
}
#elif defined(SIMD_NEON)
ALWAYS_INLINE float32x4_t TILED(sums_ps)(const float32x4_t x[4])
{
    return vpaddq_f32(vpaddq_f32(x[0], x[1]), vpaddq_f32(x[2], x[3]));
}

ALWAYS_INLINE float64x2_t TILED(sums_pd)(const float64x2_t x[2])
{
    return vpaddq_f64(x[0], x[1]);
}
#else
#error "decode_impl.h: no lane sums for this instruction set"
#endif
#if REAL_IS_DOUBLE
#define DECODE_SUMS_REAL TILED(sums_pd)
#else
#define DECODE_SUMS_REAL TILED(sums_ps)
#endif

/* pass 1 micro-kernel, ATTNREF_SCORES_FAST: s[r][u] = scale q_r . key_u for
   r < mr (4, 2 or 1) and u < DECODE_SUMS / mr keys, each (row, key) a vector
   of partial sums along E in REAL (FMA), then DECODE_SUMS / RW trees of
   lane sums (sums_ps / sums_pd): pair a = r keys + u is lane a % RW of
   tree a / RW. q[r] and key[u] point at rows of E REALs; s rows are
   TILE_KEYS apart. */
ALWAYS_INLINE void TILED(decode_fast_block)(REAL *s, const REAL *const *q,
                                            const REAL *const *key, int64_t E, REAL scale,
                                            int mr)
{
    const int keys = DECODE_SUMS / mr;
    RVEC acc[DECODE_SUMS];
    REAL sums[DECODE_SUMS];
    int64_t d = 0;
    for (int a = 0; a < DECODE_SUMS; a++) acc[a] = RV_SET1(0);
    for (; d + RW <= E; d += RW) {
        RVEC query[4];
        for (int r = 0; r < mr; r++) query[r] = RV_LOAD(q[r] + d);
        for (int u = 0; u < keys; u++) {
            const RVEC k = RV_LOAD(key[u] + d);
            for (int r = 0; r < mr; r++) acc[r * keys + u] = RV_FMA(query[r], k, acc[r * keys + u]);
        }
    }
    if (d < E) {   /* the edge: the rest zero */
        RVEC query[4];
        for (int r = 0; r < mr; r++) query[r] = TILED(decode_load)(q[r] + d, E - d);
        for (int u = 0; u < keys; u++) {
            const RVEC k = TILED(decode_load)(key[u] + d, E - d);
            for (int r = 0; r < mr; r++) acc[r * keys + u] = RV_FMA(query[r], k, acc[r * keys + u]);
        }
    }
    for (int a = 0; a < DECODE_SUMS; a += RW)
        RV_STORE(sums + a, RV_MUL(DECODE_SUMS_REAL(acc + a), RV_SET1(scale)));
    for (int r = 0; r < mr; r++)
        for (int u = 0; u < keys; u++) s[r * TILE_KEYS + u] = sums[r * keys + u];
}

#if !REAL_IS_DOUBLE
/* DW floats of x, zero from `width` on, as a double vector (the edge of a row) */
ALWAYS_INLINE DVEC TILED(decode_load_wide)(const float *x, int64_t width)
{
    float part[DW];
    for (int u = 0; u < DW; u++) part[u] = u < width ? x[u] : 0;
    return DV_FROM_REAL(part);
}

/* pass 1 micro-kernel, ATTNREF_SCORES_EXACT for float: sd[r][u] = scale *
   q_r . key_u for r < mr (<= DECODE_MR) and u < DW / 2, the products exact
   in double and summed in double, so the float score is rounded once (as
   the portable path's dot_f32). The sums of two rows make the DW vectors of
   one lane sum. qd (mr, E): the queries in double. */
ALWAYS_INLINE void TILED(decode_score_block)(double *sd, const double *qd,
                                             const float *const *key, int64_t E,
                                             double scale, int mr)
{
    enum { KEYS = DW / 2 };
    DVEC acc[DECODE_MR][KEYS];
    int64_t d = 0;
    for (int r = 0; r < mr; r++)
        for (int u = 0; u < KEYS; u++) acc[r][u] = DV_ZERO();
    for (; d + DW <= E; d += DW) {
        DVEC k[KEYS];
        for (int u = 0; u < KEYS; u++) k[u] = DV_FROM_REAL(key[u] + d);
        for (int r = 0; r < mr; r++) {
            const DVEC query = DV_LOAD(qd + r * E + d);
            for (int u = 0; u < KEYS; u++) acc[r][u] = DV_FMA(query, k[u], acc[r][u]);
        }
    }
    if (d < E) {   /* the edge: the rest zero */
        DVEC k[KEYS];
        for (int u = 0; u < KEYS; u++) k[u] = TILED(decode_load_wide)(key[u] + d, E - d);
        for (int r = 0; r < mr; r++) {
            double part[DW];
            for (int u = 0; u < DW; u++) part[u] = d + u < E ? qd[r * E + d + u] : 0;
            for (int u = 0; u < KEYS; u++) acc[r][u] = DV_FMA(DV_LOAD(part), k[u], acc[r][u]);
        }
    }
    for (int r = 0; r < mr; r += 2) {
        /* rows r and r + 1 (r again past the last) */
        const int second = r + 1 < mr ? r + 1 : r;
        DVEC pair[DW];
        double scores[DW];
        for (int u = 0; u < KEYS; u++) {
            pair[u] = acc[r][u];
            pair[KEYS + u] = acc[second][u];
        }
        DV_STORE(scores, DV_MUL(TILED(sums_pd)(pair), DV_SET1(scale)));
        for (int u = 0; u < KEYS; u++) {
            sd[r * TILE_KEYS + u] = scores[u];
            sd[second * TILE_KEYS + u] = scores[KEYS + u];
        }
    }
}
#else
/* pass 1 micro-kernel, ATTNREF_SCORES_EXACT for double: sd[u] = scale *
   q . key_u for u < DW, each lane a Dot2 sum (tiled_impl.h's dot2_step);
   the lanes of a score are then added by Dot2 too, their errors summed
   apart and added back once. */
ALWAYS_INLINE void TILED(decode_score_block)(double *sd, const double *q,
                                             const double *const *key, int64_t E,
                                             double scale)
{
    DVEC sum[DW], error[DW], total, total_error;
    for (int u = 0; u < DW; u++) sum[u] = error[u] = DV_ZERO();
    int64_t d = 0;
    for (; d + DW <= E; d += DW) {
        const DVEC query = DV_LOAD(q + d);
        for (int u = 0; u < DW; u++)
            TILED(dot2_step)(&sum[u], &error[u], query, DV_LOAD(key[u] + d));
    }
    if (d < E) {   /* the edge: the rest zero */
        const DVEC query = TILED(decode_load)(q + d, E - d);
        for (int u = 0; u < DW; u++)
            TILED(dot2_step)(&sum[u], &error[u], query, TILED(decode_load)(key[u] + d, E - d));
    }
    TILED(transpose)(sum);
    TILED(transpose)(error);
    total = sum[0];
    total_error = error[0];
    for (int c = 1; c < DW; c++) {
        TILED(dot2_step)(&total, &total_error, sum[c], DV_SET1(1.0));
        total_error = DV_ADD(total_error, error[c]);
    }
    DV_STORE(sd, DV_MUL(TILED(dot2_result)(total, total_error), DV_SET1(scale)));
}
#endif

/* pass 1, ATTNREF_SCORES_FAST, rows r0 .. r0 + mr - 1 and keys t < n of a
   block (k its first key, keys ks2 apart): scaled scores s (rows,
   TILE_KEYS) in REAL. Columns from n up to a multiple of the micro-kernel's
   keys repeat key n - 1; pass 2 drops them. With `next` > 0 the keys of the
   next block (k_next) are prefetched, each along with the key of this block
   at its place: a burst would stall on the line fill buffers. */
ALWAYS_INLINE void TILED(decode_fast_rows)(const attnref_params *p, const TILED(unit_rows) *rows,
                                           int r0, int mr, const REAL *k, int64_t ks2, int n,
                                           REAL *s, const REAL *k_next, int next)
{
    const int keys = DECODE_SUMS / mr;
    for (int t0 = 0; t0 < n; t0 += keys) {
        const REAL *key[DECODE_SUMS];
        for (int u = 0; u < keys; u++) {
            key[u] = k + (t0 + u < n ? t0 + u : n - 1) * ks2;
            if (t0 + u < next) TILED(prefetch)(k_next + (t0 + u) * ks2, p->E);
        }
        TILED(decode_fast_block)(s + r0 * TILE_KEYS + t0, rows->q + r0, key, p->E,
                                 (REAL)p->scale, mr);
    }
}

/* pass 1, ATTNREF_SCORES_FAST, for every row: rows in blocks of 4, 2 and 1
   (the first block prefetches the next block's keys) */
static void TILED(decode_scores_fast)(const attnref_params *p, const TILED(unit_rows) *rows,
                                      const REAL *k, int64_t ks2, int n, REAL *s,
                                      const REAL *k_next, int next)
{
#define FAST_ROWS(r, mr) TILED(decode_fast_rows)(p, rows, r, mr, k, ks2, n, s, k_next, \
                                                 (r) == 0 ? next : 0)
    ROW_BLOCKS(rows->rows, 4, FAST_ROWS);
#undef FAST_ROWS
}

/* pass 1, ATTNREF_SCORES_EXACT, for every row and keys t < n of a block (as
   decode_scores_fast): scaled scores sd (rows, TILE_KEYS) in double. */
static void TILED(decode_scores_exact)(const attnref_params *p, const TILED(unit_rows) *rows,
                                       const double *qd, const REAL *k, int64_t ks2, int n,
                                       double *sd, const REAL *k_next, int next)
{
    const int64_t E = p->E;
    for (int t0 = 0; t0 < n; t0 += DW) {
        const REAL *key[DW];
        int r = 0;
        for (int u = 0; u < DW; u++) {
            key[u] = k + (t0 + u < n ? t0 + u : n - 1) * ks2;
            if (t0 + u < next) TILED(prefetch)(k_next + (t0 + u) * ks2, E);
        }
#if REAL_IS_DOUBLE
        (void)qd;
        for (; r < rows->rows; r++)
            TILED(decode_score_block)(sd + r * TILE_KEYS + t0, rows->q[r], key, E, p->scale);
#else
        for (int h = 0; h < DW; h += DW / 2) {   /* two halves of the DW keys */
            const float *half[DW / 2];
            double *at = sd + t0 + h;
            for (int u = 0; u < DW / 2; u++) half[u] = key[h + u];
            for (r = 0; r + DECODE_MR <= rows->rows; r += DECODE_MR)
                TILED(decode_score_block)(at + r * TILE_KEYS, qd + r * E, half, E, p->scale,
                                          DECODE_MR);
            /* the last rows, in blocks of a constant count */
            if (rows->rows - r >= 2) {
                TILED(decode_score_block)(at + r * TILE_KEYS, qd + r * E, half, E, p->scale, 2);
                r += 2;
            }
            if (r < rows->rows)
                TILED(decode_score_block)(at + r * TILE_KEYS, qd + r * E, half, E, p->scale, 1);
        }
#endif
    }
}

/* pass 4 micro-kernel: acc[r][c] += sum_{t < n} p[r][t] v_t[c] for r < mr
   (4, 2 or 1) and c < nv RW (nv <= DECODE_VALUE_NV), dims from `width` on
   taken as 0, v_t = v + t vs2. The block's sums start from 0 (two levels,
   as tiled_impl.h's value_block); one that is inf or NaN is summed again
   without the keys of weight 0 (0 x inf must not reach acc). With a
   v_next, the same dims of the next block's key t are prefetched along
   with key t. p (mr, TILE_KEYS); acc (mr, Evp). */
ALWAYS_INLINE void TILED(decode_value_block)(REAL *acc, const REAL *p, const REAL *v,
                                             int64_t vs2, int n, int64_t Evp, int mr, int nv,
                                             int width, const REAL *v_next, int next)
{
    RVEC sum[4][DECODE_VALUE_NV];
    RVEC zero_if_finite = RV_SET1(0);   /* x * 0 is 0 for finite x, NaN for inf or NaN */
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nv; c++) sum[r][c] = RV_SET1(0);
    for (int t = 0; t < n; t++) {
        RVEC value[DECODE_VALUE_NV];
        if (t < next) TILED(prefetch)(v_next + t * vs2, width);
        for (int c = 0; c < nv; c++)
            value[c] = TILED(decode_load)(v + t * vs2 + c * RW, width - c * RW);
        for (int r = 0; r < mr; r++) {
            const RVEC weight = RV_SET1(p[r * TILE_KEYS + t]);
            for (int c = 0; c < nv; c++) sum[r][c] = RV_FMA(weight, value[c], sum[r][c]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nv; c++)
            zero_if_finite = RV_ADD(zero_if_finite, RV_MUL(sum[r][c], RV_SET1(0)));
    if (TILED(any_nan)(zero_if_finite))
        for (int r = 0; r < mr; r++)
            for (int c = 0; c < nv; c++) {
                if (!TILED(any_nan)(RV_MUL(sum[r][c], RV_SET1(0)))) continue;
                sum[r][c] = RV_SET1(0);
                for (int t = 0; t < n; t++)
                    if (p[r * TILE_KEYS + t] != 0)
                        sum[r][c] = RV_FMA(RV_SET1(p[r * TILE_KEYS + t]),
                                           TILED(decode_load)(v + t * vs2 + c * RW,
                                                              width - c * RW),
                                           sum[r][c]);
            }
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nv; c++)
            RV_STORE(acc + r * Evp + c * RW, RV_ADD(RV_LOAD(acc + r * Evp + c * RW), sum[r][c]));
}

/* pass 4 for every row, n keys (v the first one's values, vs2 apart): dims
   in passes of DECODE_VALUE_NV vectors, rows in blocks of 4, 2 and 1; the
   first block of each pass prefetches that pass's dims of the next block's
   values (v_next, `next` keys) */
static void TILED(decode_values)(REAL *acc, const REAL *p, const REAL *v, int64_t vs2, int n,
                                 int64_t Ev, int64_t Evp, int rows, const REAL *v_next,
                                 int next)
{
    enum { PANEL = DECODE_VALUE_NV * RW };
    int64_t c0 = 0;
    for (; c0 + PANEL <= Ev; c0 += PANEL) {
#define VALUE_ROWS(r, mr) TILED(decode_value_block)(acc + (r) * Evp + c0, p + (r) * TILE_KEYS, \
        v + c0, vs2, n, Evp, mr, DECODE_VALUE_NV, PANEL, v_next + c0, (r) == 0 ? next : 0)
        ROW_BLOCKS(rows, 4, VALUE_ROWS);
#undef VALUE_ROWS
    }
    if (c0 < Ev) {   /* the edge: fewer vectors, the last one part zero */
        const int width = (int)(Ev - c0), nv = (width - 1) / RW + 1;
#define VALUE_ROWS(r, mr) TILED(decode_value_block)(acc + (r) * Evp + c0, p + (r) * TILE_KEYS, \
        v + c0, vs2, n, Evp, mr, nv, width, v_next + c0, (r) == 0 ? next : 0)
        ROW_BLOCKS(rows, 4, VALUE_ROWS);
#undef VALUE_ROWS
    }
}

/* Scratch of one thread, laid out by decode_scratch_layout (decode.c). */
typedef struct {
    double *qd;    /* (DECODE_ROWS, E) queries in double (exact scores of float) */
    double *sd;    /* (DECODE_ROWS, TILE_KEYS) scaled scores in double */
    REAL *p;       /* (DECODE_ROWS, TILE_KEYS) scores, then weights */
    REAL *acc;     /* (DECODE_ROWS, Evp) weighted sums of values */
    TILED(unit_rows) *rows;
    TILED(unit_rows) *ahead;   /* the rows of the unit computed next */
} TILED(decode_scratch);

/* The rows of wave group `group` (rows->rows of them) from its chunks'
   partial results: folded in chunk order as the online softmax folds key
   blocks (rescaled to the larger max; a factor below the smallest normal
   weighs exactly 0), then finished. acc (DECODE_ROWS, Evp): room for the
   sums. */
static void TILED(decode_combine)(const attnref_params *p, const decode_plan *plan,
                                  int64_t group, TILED(unit_rows) *rows, REAL *acc,
                                  const REAL *k_bh, const REAL *v_bh)
{
    const int64_t Ev = p->Ev, Evp = VALUE_PAD(Ev), entry = Ev + 2;
    const REAL *partial = (const REAL *)plan->partial + group * plan->chunks * plan->group_rows
                          * entry;
    for (int r = 0; r < rows->rows; r++) {
        REAL *sum = acc + r * Evp;
        REAL m = -INFINITY, l = 0;
        int nan = 0;
        for (int64_t c = 0; c < Ev; c++) sum[c] = 0;
        for (int64_t chunk = 0; chunk < plan->chunks; chunk++) {
            const REAL *part = partial + (chunk * plan->group_rows + r) * entry;
            const REAL m_part = part[0];
            REAL m_new, keep, add;
            if (m_part != m_part) {
                nan = 1;
                continue;
            }
            if (m_part == -INFINITY) continue;
            m_new = m_part > m ? m_part : m;
            keep = m_new > m ? (m - m_new < EXP_LO ? 0 : EXP(m - m_new)) : 1;
            add = m_part < m_new ? (m_part - m_new < EXP_LO ? 0 : EXP(m_part - m_new)) : 1;
            /* a factor 0 leaves those keys out: multiplying would turn an
               inf or NaN value of theirs into NaN */
            for (int64_t c = 0; c < Ev; c++)
                sum[c] = (keep > 0 ? sum[c] * keep : 0) + (add > 0 ? part[2 + c] * add : 0);
            l = l * keep + part[1] * add;
            m = m_new;
        }
        rows->m[r] = m;
        /* l as the tiled path keeps it: RW partial sums (here one) */
        for (int u = 0; u < RW; u++) rows->l[r][u] = u == 0 ? l : 0;
        rows->nan[r] = nan;
        TILED(finish_row)(p, rows, r, sum, k_bh, v_bh, 0);
    }
}

/* The rows of unit u of the wave (group u / chunks, chunk u % chunks) into
   rows, their kv head's keys and values (*k_bh, *v_bh) and the keys
   [*j_lo, *j_hi) of the chunk that some row sees (none: *j_lo >= *j_hi). */
static void TILED(decode_unit_keys)(const sdpa_job *job, int64_t u, TILED(unit_rows) *rows,
                                    const REAL **k_bh, const REAL **v_bh, int64_t *j_lo,
                                    int64_t *j_hi)
{
    const attnref_params *p = job->params;
    const decode_plan *plan = job->decode;
    const int64_t chunk = u % plan->chunks;
    int64_t kv_h, b;
    TILED(gather_rows)(p, job, plan->group_begin + u / plan->chunks, rows, &kv_h, &b);
    *k_bh = (const REAL *)job->k + (b * p->k_stride[0] + kv_h * p->k_stride[1]);
    *v_bh = (const REAL *)job->v + (b * p->v_stride[0] + kv_h * p->v_stride[1]);
    *j_lo = INT64_MAX;
    *j_hi = 0;
    for (int r = 0; r < rows->rows; r++)
        if (rows->j_end[r] > rows->j_begin[r]) {
            if (rows->j_begin[r] < *j_lo) *j_lo = rows->j_begin[r];
            if (rows->j_end[r] > *j_hi) *j_hi = rows->j_end[r];
        }
    if (*j_lo < chunk * plan->chunk) *j_lo = chunk * plan->chunk;
    if (*j_hi > (chunk + 1) * plan->chunk) *j_hi = (chunk + 1) * plan->chunk;
}

/* Unit u of the wave. `following` is the unit this thread computes next (or
   -1): the last key block prefetches its first one, so that K and V keep
   streaming from one unit to the next. */
static void TILED(decode_unit)(const sdpa_job *job, TILED(decode_scratch) *w, int64_t u,
                               int64_t following)
{
    const attnref_params *p = job->params;
    const decode_plan *plan = job->decode;
    const int64_t E = p->E, Ev = p->Ev, Evp = VALUE_PAD(Ev);
    const int64_t *ks = p->k_stride, *vs = p->v_stride;
    const int64_t group = u / plan->chunks, chunk = u % plan->chunks;
    const int fast = p->scores == ATTNREF_SCORES_FAST;
    const int exact_float = !REAL_IS_DOUBLE && !fast;
    TILED(unit_rows) *rows = w->rows;
    int64_t j_lo, j_hi, ahead_lo = 0, ahead_hi = 0;
    const REAL *k_bh, *v_bh, *k_ahead = NULL, *v_ahead = NULL;

    if (following >= 0)
        TILED(decode_unit_keys)(job, following, w->ahead, &k_ahead, &v_ahead, &ahead_lo,
                                &ahead_hi);
    TILED(decode_unit_keys)(job, u, rows, &k_bh, &v_bh, &j_lo, &j_hi);
    for (int r = 0; r < rows->rows; r++) {
        if (exact_float)
            for (int64_t d = 0; d < E; d++) w->qd[r * E + d] = rows->q[r][d];
        for (int64_t c = 0; c < Evp; c++) w->acc[r * Evp + c] = 0;
    }

    for (int64_t j0 = j_lo; j0 < j_hi; j0 += TILE_KEYS) {
        const int n = (int)(j_hi - j0 < TILE_KEYS ? j_hi - j0 : TILE_KEYS);
        /* the keys of the block after this one (after the last: the
           following unit's first), prefetched during this one: K and V
           stream from memory at the rate of the passes */
        const int last = j0 + n >= j_hi;
        const int64_t ahead = last ? ahead_lo : j0 + n, ahead_end = last ? ahead_hi : j_hi;
        const int next = (int)(ahead_end - ahead <= 0 ? 0 : ahead_end - ahead < TILE_KEYS
                               ? ahead_end - ahead : TILE_KEYS);
        /* (with no key ahead, no prefetch: any pointer will do) */
        const REAL *k_next = next > 0 ? (last ? k_ahead : k_bh) + ahead * ks[2] : k_bh;
        const REAL *v_next = next > 0 ? (last ? v_ahead : v_bh) + ahead * vs[2] : v_bh;
        if (fast) {
            TILED(decode_scores_fast)(p, rows, k_bh + j0 * ks[2], ks[2], n, w->p, k_next,
                                      next);
        } else {
            TILED(decode_scores_exact)(p, rows, w->qd, k_bh + j0 * ks[2], ks[2], n, w->sd,
                                       k_next, next);
        }
        TILED(weigh_tile)(p, rows, j0, n, fast ? NULL : w->sd, w->p, w->acc, Evp);
        TILED(decode_values)(w->acc, w->p, v_bh + j0 * vs[2], vs[2], n, Ev, Evp, rows->rows,
                             v_next, next);
    }

    if (plan->chunks == 1) {
        for (int r = 0; r < rows->rows; r++)
            TILED(finish_row)(p, rows, r, w->acc + r * Evp, k_bh, v_bh, 0);
        return;
    }
    {
        REAL *partial = (REAL *)plan->partial
                        + (group * plan->chunks + chunk) * plan->group_rows * (Ev + 2);
        for (int r = 0; r < rows->rows; r++) {
            REAL *part = partial + r * (Ev + 2);
            part[0] = rows->nan[r] ? (REAL)NAN : rows->m[r];
            part[1] = TILED(hsum)(RV_LOAD(rows->l[r]));
            for (int64_t c = 0; c < Ev; c++) part[2 + c] = w->acc[r * Evp + c];
        }
    }
    /* the last of the group's chunks to finish combines them (acquiring the
       others' partial results, releasing this one's) */
    if (__atomic_add_fetch(&plan->done[group], 1, __ATOMIC_ACQ_REL) == plan->chunks)
        TILED(decode_combine)(p, plan, group, rows, w->acc, k_bh, v_bh);
}

/* A thread's share of a decoding wave: the units [row_begin, row_end), in
   order (contiguous in memory within a group), each knowing the next. */
int TILED(decode_rows)(const sdpa_job *job)
{
    const attnref_params *p = job->params;
    const int64_t Evp = VALUE_PAD(p->Ev);
    TILED(decode_scratch) w;
    void *memory;
    size_t offset[5];
    if (!decode_scratch_layout(p->E, Evp, sizeof(REAL), 2 * sizeof(TILED(unit_rows)), offset))
        return ATTNREF_ERR_NOMEM;
    memory = aligned_scratch(offset[4]);
    if (memory == NULL) return ATTNREF_ERR_NOMEM;
    w.qd = (double *)((char *)memory + offset[0]);
    w.sd = (double *)((char *)memory + offset[1]);
    w.p = (REAL *)((char *)memory + offset[2]);
    w.acc = (REAL *)((char *)memory + offset[3]);
    w.rows = (TILED(unit_rows) *)((char *)memory + offset[4] - 2 * sizeof(TILED(unit_rows)));
    w.ahead = w.rows + 1;
    /* the columns of sd and p past a block's keys are read (then dropped) by pass 2 */
    for (int64_t c = 0; c < (int64_t)DECODE_ROWS * TILE_KEYS; c++) w.sd[c] = w.p[c] = 0;
    for (int64_t u = job->row_begin; u < job->row_end; u++)
        TILED(decode_unit)(job, &w, u, u + 1 < job->row_end ? u + 1 : -1);
    free(memory);
    return ATTNREF_OK;
}

#undef DECODE_MR
#undef DECODE_SUMS
#undef DECODE_VALUE_NV
#undef DECODE_SUMS_REAL
