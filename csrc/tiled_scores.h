/*
 * tiled_scores.h -- pass 1 of the tiled kernel (tiled_impl.h includes it):
 * the scores s = scale * q.k of a unit's rows against one key tile, and the
 * packing of the tile's keys that the score micro-kernels stream through.
 * Two modes (attnref_params.scores):
 *
 *   ATTNREF_SCORES_EXACT  keys transposed to double panels of KEY_PANEL keys
 *                         (E, KEY_PANEL); float products are exact in double
 *                         and summed there, double scores use Dot2: a score is
 *                         rounded once (as the portable path's dot_f32/dot_f64)
 *   ATTNREF_SCORES_FAST   keys transposed to REAL panels of RW keys (E, RW);
 *                         a plain sum of fused multiply-adds in REAL over
 *                         d = 0 .. E-1, one lane per key, then times scale
 *                         (the standard dot-product error: |s - s_exact| <=
 *                         ~E u scale sum_d |q_d k_d|, Higham, "Accuracy and
 *                         Stability of Numerical Algorithms", 2002, eq. 3.5)
 *
 * The fast micro-kernel holds SCORE_FAST_MR rows x SCORE_FAST_NV panels of
 * accumulators in registers, sized from the ISA's vector register count
 * (SIMD_REGISTERS): 6 x 4 of 32 (AVX-512), 6 x 2 of 16 (AVX2), leaving
 * registers for the NV keys and the broadcast query element.
 */

#define SCORE_FAST_NV (SIMD_REGISTERS >= 32 ? 4 : 2)
#define SCORE_FAST_MR ((SIMD_REGISTERS - SCORE_FAST_NV - 2) / SCORE_FAST_NV)
_Static_assert(TILE_KEYS % (SCORE_FAST_NV * RW) == 0, "a key tile is whole micro-kernel blocks");
_Static_assert(SCORE_FAST_MR <= 8, "ROW_BLOCKS covers blocks of at most 8 rows");

#if !REAL_IS_DOUBLE
/* pass 1 micro-kernel, exact: sd[r][c] = scale * sum_d qd[r][d] kt[d][c] for
   r < mr (<= SCORE_MR), c < SCORE_NV * DW. Float products are exact in
   double and the sum is carried in double, so the float score is rounded
   once (as the portable path's dot_f32).
   qd (mr, E) rows E apart; kt one key panel (E, KEY_PANEL); sd (mr, TILE_KEYS). */
ALWAYS_INLINE void TILED(score_block)(double *sd, const double *qd, const double *kt,
                                      int64_t E, double scale, int mr)
{
    DVEC acc[SCORE_MR][SCORE_NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < SCORE_NV; v++) acc[r][v] = DV_ZERO();
    for (int64_t d = 0; d < E; d++) {
        DVEC key[SCORE_NV];
        for (int v = 0; v < SCORE_NV; v++) key[v] = DV_LOAD(kt + d * KEY_PANEL + v * DW);
        for (int r = 0; r < mr; r++) {
            const DVEC query = DV_SET1(qd[r * E + d]);
            for (int v = 0; v < SCORE_NV; v++) acc[r][v] = DV_FMA(query, key[v], acc[r][v]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < SCORE_NV; v++)
            DV_STORE(sd + r * TILE_KEYS + v * DW, DV_MUL(acc[r][v], DV_SET1(scale)));
}
#else
/* One step of Dot2 in each lane (below): *sum + a * b == new *sum + the
   rounding errors added to *error, exactly (TwoProduct with the FMA, then
   Knuth's TwoSum). Half the additions are written as x * 1 + y (exactly
   x + y, the same rounding) so that they run on the multiply-add units
   beside the adders. decode_impl.h sums with it too. */
ALWAYS_INLINE void TILED(dot2_step)(DVEC *sum, DVEC *error, DVEC a, DVEC b)
{
    const DVEC one = DV_SET1(1.0);
    const DVEC product = DV_MUL(a, b);
    const DVEC product_error = DV_FMSUB(a, b, product);
    const DVEC total = DV_FMA(*sum, one, product);
    const DVEC z = DV_SUB(total, *sum);
    const DVEC sum_error = DV_ADD(DV_SUB(*sum, DV_SUB(total, z)), DV_FMSUB(product, one, z));
    *error = DV_FMA(*error, one, DV_ADD(product_error, sum_error));
    *sum = total;
}

/* The sum Dot2 carried: sum + error, or the plain sum where the error is
   not finite (a product beyond DBL_MAX) */
ALWAYS_INLINE DVEC TILED(dot2_result)(DVEC sum, DVEC error)
{
    return DV_KEEP_FINITE(DV_ADD(sum, error), sum, error);
}

/* pass 1 micro-kernel, exact, for double: as above, but each lane is Ogita, Rump &
   Oishi's Dot2 (SIAM J. Sci. Comput. 26(6), 2005, Alg. 5.3, with the FMA
   TwoProduct): the rounding error of every product and every sum is kept
   and added back once, as if summed in twice the precision (as the portable
   path's dot_f64). Where an error term is not finite (a product beyond
   DBL_MAX) the plain sum is kept. */
ALWAYS_INLINE void TILED(score_block)(double *sd, const double *qd, const double *kt,
                                      int64_t E, double scale, int mr)
{
    DVEC sum[SCORE_MR][SCORE_NV], error[SCORE_MR][SCORE_NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < SCORE_NV; v++) sum[r][v] = error[r][v] = DV_ZERO();
    for (int64_t d = 0; d < E; d++) {
        DVEC key[SCORE_NV];
        for (int v = 0; v < SCORE_NV; v++) key[v] = DV_LOAD(kt + d * KEY_PANEL + v * DW);
        for (int r = 0; r < mr; r++) {
            const DVEC query = DV_SET1(qd[r * E + d]);
            for (int v = 0; v < SCORE_NV; v++)
                TILED(dot2_step)(&sum[r][v], &error[r][v], query, key[v]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < SCORE_NV; v++)
            DV_STORE(sd + r * TILE_KEYS + v * DW,
                     DV_MUL(TILED(dot2_result)(sum[r][v], error[r][v]), DV_SET1(scale)));
}
#endif

/* pass 1, exact, for `rows` rows and the key panels that hold keys 0 .. n-1
   (a tile's last panels, past n, are not computed: a short last tile of
   keys costs what it holds) */
static void TILED(scores_exact)(double *sd, const double *qd, const double *kt, int64_t E,
                                double scale, int rows, int n)
{
    for (int c = 0; c < n; c += KEY_PANEL) {
        const double *panel = kt + c * E;
#define SCORE_ROWS(r, mr) TILED(score_block)(sd + (r) * TILE_KEYS + c, qd + (r) * E, panel, E, \
                                             scale, mr)
        ROW_BLOCKS(rows, SCORE_MR, SCORE_ROWS);
#undef SCORE_ROWS
    }
}

/* kt (TILE_KEYS / KEY_PANEL, E, KEY_PANEL) <- keys 0 .. n-1 of k (rows ks2
   apart), transposed to double; the keys from n to the end of their panel
   are 0 (later panels are not packed). DW x DW blocks go through registers.
   The first `next` rows of k_next (the next tile's) are prefetched, each
   block of DW of them before the block of this tile at its place. */
static void TILED(pack_keys_exact)(double *kt, const REAL *k, int64_t ks2, int n, int64_t E,
                                   const REAL *k_next, int next)
{
    for (int t0 = 0; t0 < round_up(n, KEY_PANEL); t0 += DW) {
        double *panel = kt + t0 / KEY_PANEL * E * KEY_PANEL + t0 % KEY_PANEL;
        int64_t d = 0;
        for (int u = t0; u < t0 + DW && u < next; u++) TILED(prefetch)(k_next + u * ks2, E);
        if (t0 + DW <= n)
            for (; d + DW <= E; d += DW) {
                DVEC block[DW];
                for (int u = 0; u < DW; u++) block[u] = DV_FROM_REAL(k + (t0 + u) * ks2 + d);
                TILED(transpose)(block);
                for (int u = 0; u < DW; u++) DV_STORE(panel + (d + u) * KEY_PANEL, block[u]);
            }
        for (; d < E; d++)
            for (int u = 0; u < DW; u++)
                panel[d * KEY_PANEL + u] = t0 + u < n ? k[(t0 + u) * ks2 + d] : 0;
    }
}


/* pass 1 micro-kernel, fast: s[r][c] = scale * sum_d q[r][d] kr[d][c] for
   r < mr (<= SCORE_FAST_MR), c < SCORE_FAST_NV * RW, summed in REAL.
   q (mr, E) rows E apart; kr SCORE_FAST_NV key panels (E, RW), E * RW apart;
   s (mr, TILE_KEYS). */
ALWAYS_INLINE void TILED(score_block_fast)(REAL *s, const REAL *q, const REAL *kr,
                                           int64_t E, REAL scale, int mr)
{
    RVEC acc[SCORE_FAST_MR][SCORE_FAST_NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < SCORE_FAST_NV; v++) acc[r][v] = RV_SET1(0);
    for (int64_t d = 0; d < E; d++) {
        RVEC key[SCORE_FAST_NV];
        for (int v = 0; v < SCORE_FAST_NV; v++) key[v] = RV_LOAD(kr + v * E * RW + d * RW);
        for (int r = 0; r < mr; r++) {
            const RVEC query = RV_SET1(q[r * E + d]);
            for (int v = 0; v < SCORE_FAST_NV; v++) acc[r][v] = RV_FMA(query, key[v], acc[r][v]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < SCORE_FAST_NV; v++)
            RV_STORE(s + r * TILE_KEYS + v * RW, RV_MUL(acc[r][v], RV_SET1(scale)));
}

/* pass 1, fast, for `rows` rows and the micro-kernel blocks of keys that
   hold keys 0 .. n-1 (as scores_exact) */
static void TILED(scores_fast)(REAL *s, const REAL *q, const REAL *kr, int64_t E, REAL scale,
                               int rows, int n)
{
    for (int c = 0; c < n; c += SCORE_FAST_NV * RW) {
        const REAL *panels = kr + c * E;
#define SCORE_ROWS(r, mr) TILED(score_block_fast)(s + (r) * TILE_KEYS + c, q + (r) * E, panels, \
                                                  E, scale, mr)
        ROW_BLOCKS(rows, SCORE_FAST_MR, SCORE_ROWS);
#undef SCORE_ROWS
    }
}

/* kr (TILE_KEYS / RW, E, RW) <- keys 0 .. n-1 of k (rows ks2 apart),
   transposed, in REAL; the keys from n to the end of their micro-kernel
   block are 0 (later blocks are not packed). RW x RW blocks go through
   registers. The first `next` rows of k_next are prefetched, as in
   pack_keys_exact. */
static void TILED(pack_keys_fast)(REAL *kr, const REAL *k, int64_t ks2, int n, int64_t E,
                                  const REAL *k_next, int next)
{
    for (int t0 = 0; t0 < round_up(n, SCORE_FAST_NV * RW); t0 += RW) {
        REAL *panel = kr + t0 * E;
        int64_t d = 0;
        for (int u = t0; u < t0 + RW && u < next; u++) TILED(prefetch)(k_next + u * ks2, E);
        if (t0 + RW <= n)
            for (; d + RW <= E; d += RW) {
                RVEC block[RW];
                for (int u = 0; u < RW; u++) block[u] = RV_LOAD(k + (t0 + u) * ks2 + d);
                TILED(transpose_real)(block);
                for (int u = 0; u < RW; u++) RV_STORE(panel + (d + u) * RW, block[u]);
            }
        for (; d < E; d++)
            for (int u = 0; u < RW; u++)
                panel[d * RW + u] = t0 + u < n ? k[(t0 + u) * ks2 + d] : 0;
    }
}

#undef SCORE_FAST_NV
#undef SCORE_FAST_MR
