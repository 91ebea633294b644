/*
 * simd.h -- the vector operations the tiled kernel (tiled_impl.h) is written
 * in, for one instruction set and one float type. attnref.c includes it,
 * then tiled_impl.h, inside a `#pragma GCC target` region, once per
 * (ISA, REAL). The includer defines
 *   SIMD_AVX512 or SIMD_AVX2   the instruction set
 *   REAL                       float or double (the operands' type)
 *   TILED(name)                name##_<isa>_<type>: this instance's names
 * and gets:
 *   DVEC, DW, DV_*             double vectors (scores are summed in double)
 *   DV_FROM_REAL(p)            DW REALs from p as a double vector
 *   TILED(transpose)(rows)     DW x DW transpose of double vectors, in place
 *   RVEC, RW, RV_*             REAL vectors (softmax and weighted values)
 *   TILED(vexp)(x)             exp of a REAL vector (max error below)
 *   TILED(hmax), TILED(hsum)   horizontal max / sum of a REAL vector
 *   TILED(from_scores)(sd)     RW double scores as a REAL vector
 *   TILED(any_nan)(x)          whether a lane of x is NaN
 *   TILED(keep_range)(x, t0, lo, hi)  lanes t0 + u in [lo, hi) of x, -inf elsewhere
 * tiled_impl.h undefines all of it at its end.
 *
 * exp, for x in [ln(min normal), ln(max)]: n = round(x / ln 2) and
 * r = x - n ln 2 (Cody & Waite's two-constant split, exact to r's
 * rounding), exp(r) by its Taylor polynomial of degree 7 (float) or 13
 * (double) in Horner form (truncation below 0.1 ulp on |r| <= ln2 / 2),
 * scaled by 2^n. Below ln(min normal) the result is 0 (subnormal results
 * are flushed: they are below any weight that can change a float sum of
 * weights >= 1), above ln(max) it is +inf, and NaN stays NaN. Measured
 * against the correctly rounded exp over [-104, 89] (float, every float
 * in the range) and on 10^7 points of [-745, 710] (double):
 * tests/test_kernel_paths.py states and checks the bound, 2 ulp.
 */

#if defined(SIMD_AVX512)

#define DVEC __m512d
#define DW 8
#define DV_LOAD _mm512_loadu_pd
#define DV_STORE _mm512_storeu_pd
#define DV_SET1 _mm512_set1_pd
#define DV_ZERO _mm512_setzero_pd
#define DV_FMA _mm512_fmadd_pd
#define DV_MUL _mm512_mul_pd
#define DV_ADD _mm512_add_pd
#define DV_SUB _mm512_sub_pd
#define DV_FMSUB _mm512_fmsub_pd
/* `corrected` where `error` is finite, else `plain` */
#define DV_KEEP_FINITE(corrected, plain, error) _mm512_mask_mov_pd( \
    plain, _mm512_cmp_pd_mask(_mm512_sub_pd(error, error), _mm512_setzero_pd(), _CMP_EQ_OQ), \
    corrected)

/* rows[u][c] <-> rows[c][u]: an 8 x 8 transpose in three rounds of shuffles */
static inline void TILED(transpose)(__m512d rows[8])
{
    const __m512i pairs_lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
    const __m512i pairs_hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    const __m512i halves_lo = _mm512_set_epi64(11, 10, 9, 8, 3, 2, 1, 0);
    const __m512i halves_hi = _mm512_set_epi64(15, 14, 13, 12, 7, 6, 5, 4);
    __m512d t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_pd(rows[i], rows[i + 1]);
        t[i + 1] = _mm512_unpackhi_pd(rows[i], rows[i + 1]);
    }
    for (int i = 0; i < 8; i += 4)
        for (int odd = 0; odd < 2; odd++) {
            u[i + odd] = _mm512_permutex2var_pd(t[i + odd], pairs_lo, t[i + 2 + odd]);
            u[i + 2 + odd] = _mm512_permutex2var_pd(t[i + odd], pairs_hi, t[i + 2 + odd]);
        }
    /* u[0]: columns 0 and 4 of rows 0-3, u[1]: 1 and 5, u[2]: 2 and 6, u[3]: 3 and 7 */
    for (int c = 0; c < 4; c++) {
        rows[c] = _mm512_permutex2var_pd(u[c], halves_lo, u[4 + c]);
        rows[c + 4] = _mm512_permutex2var_pd(u[c], halves_hi, u[4 + c]);
    }
}

#if REAL_IS_DOUBLE
#define DV_FROM_REAL(p) _mm512_loadu_pd(p)
#define RVEC __m512d
#define RW 8
#define RV_LOAD _mm512_loadu_pd
#define RV_STORE _mm512_storeu_pd
#define RV_SET1 _mm512_set1_pd
#define RV_FMA _mm512_fmadd_pd
#define RV_MUL _mm512_mul_pd
#define RV_ADD _mm512_add_pd
#define RV_SUB _mm512_sub_pd
#define RV_MAX _mm512_max_pd

static inline double TILED(hmax)(__m512d x) { return _mm512_reduce_max_pd(x); }
static inline __m512d TILED(from_scores)(const double *sd) { return _mm512_loadu_pd(sd); }
static inline int TILED(any_nan)(__m512d x) { return _mm512_cmp_pd_mask(x, x, _CMP_UNORD_Q) != 0; }
/* x where t0 + lane is in [lo, hi), else -inf */
static inline __m512d TILED(keep_range)(__m512d x, int t0, int lo, int hi)
{
    const __m512i lane = _mm512_add_epi64(_mm512_set1_epi64(t0),
                                          _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
    const __mmask8 keep = _mm512_cmp_epi64_mask(lane, _mm512_set1_epi64(lo), _MM_CMPINT_NLT)
                          & _mm512_cmp_epi64_mask(lane, _mm512_set1_epi64(hi), _MM_CMPINT_LT);
    return _mm512_mask_mov_pd(_mm512_set1_pd(-INFINITY), keep, x);
}
static inline double TILED(hsum)(__m512d x) { return _mm512_reduce_add_pd(x); }

static inline __m512d TILED(vexp)(__m512d x)
{
    const __m512d lo = _mm512_set1_pd(-708.39641853226408), hi = _mm512_set1_pd(709.78271289338397);
    const __mmask8 nan = _mm512_cmp_pd_mask(x, x, _CMP_UNORD_Q);
    const __mmask8 under = _mm512_cmp_pd_mask(x, lo, _CMP_LT_OQ);
    const __mmask8 over = _mm512_cmp_pd_mask(x, hi, _CMP_GT_OQ);
    const __m512d xc = _mm512_min_pd(_mm512_max_pd(x, lo), hi);
    const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(xc, _mm512_set1_pd(1.4426950408889634)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), xc);
    __m512d p = _mm512_set1_pd(1.0 / 6227020800.0);                    /* 1/13! */
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), r);
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 479001600.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 39916800.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 3628800.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 362880.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 40320.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 5040.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 720.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 120.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 24.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 6.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0.5));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
    p = _mm512_scalef_pd(p, n);
    p = _mm512_mask_mov_pd(p, under, _mm512_setzero_pd());
    p = _mm512_mask_mov_pd(p, over, _mm512_set1_pd(INFINITY));
    return _mm512_mask_mov_pd(p, nan, x);
}

#else /* float */
#define DV_FROM_REAL(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))
#define RVEC __m512
#define RW 16
#define RV_LOAD _mm512_loadu_ps
#define RV_STORE _mm512_storeu_ps
#define RV_SET1 _mm512_set1_ps
#define RV_FMA _mm512_fmadd_ps
#define RV_MUL _mm512_mul_ps
#define RV_ADD _mm512_add_ps
#define RV_SUB _mm512_sub_ps
#define RV_MAX _mm512_max_ps

static inline float TILED(hmax)(__m512 x) { return _mm512_reduce_max_ps(x); }
/* 16 double scores rounded to float */
static inline __m512 TILED(from_scores)(const double *sd)
{
    const __m256 lo = _mm512_cvtpd_ps(_mm512_loadu_pd(sd));
    const __m256 hi = _mm512_cvtpd_ps(_mm512_loadu_pd(sd + 8));
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}
static inline int TILED(any_nan)(__m512 x) { return _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q) != 0; }
static inline __m512 TILED(keep_range)(__m512 x, int t0, int lo, int hi)
{
    const __m512i lane = _mm512_add_epi32(_mm512_set1_epi32(t0), _mm512_set_epi32(
        15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
    const __mmask16 keep = _mm512_cmp_epi32_mask(lane, _mm512_set1_epi32(lo), _MM_CMPINT_NLT)
                           & _mm512_cmp_epi32_mask(lane, _mm512_set1_epi32(hi), _MM_CMPINT_LT);
    return _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), keep, x);
}
static inline float TILED(hsum)(__m512 x) { return _mm512_reduce_add_ps(x); }

static inline __m512 TILED(vexp)(__m512 x)
{
    const __m512 lo = _mm512_set1_ps(-87.33654475f), hi = _mm512_set1_ps(88.72283905f);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    const __mmask16 over = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
    const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);                         /* 1/7! */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_scalef_ps(p, n);
    p = _mm512_mask_mov_ps(p, under, _mm512_setzero_ps());
    p = _mm512_mask_mov_ps(p, over, _mm512_set1_ps(INFINITY));
    return _mm512_mask_mov_ps(p, nan, x);
}
#endif

#elif defined(SIMD_AVX2)

#define DVEC __m256d
#define DW 4
#define DV_LOAD _mm256_loadu_pd
#define DV_STORE _mm256_storeu_pd
#define DV_SET1 _mm256_set1_pd
#define DV_ZERO _mm256_setzero_pd
#define DV_FMA _mm256_fmadd_pd
#define DV_MUL _mm256_mul_pd
#define DV_ADD _mm256_add_pd
#define DV_SUB _mm256_sub_pd
#define DV_FMSUB _mm256_fmsub_pd
#define DV_KEEP_FINITE(corrected, plain, error) _mm256_blendv_pd( \
    plain, corrected, _mm256_cmp_pd(_mm256_sub_pd(error, error), _mm256_setzero_pd(), _CMP_EQ_OQ))

/* rows[u][c] <-> rows[c][u]: a 4 x 4 transpose */
static inline void TILED(transpose)(__m256d rows[4])
{
    const __m256d t0 = _mm256_unpacklo_pd(rows[0], rows[1]);
    const __m256d t1 = _mm256_unpackhi_pd(rows[0], rows[1]);
    const __m256d t2 = _mm256_unpacklo_pd(rows[2], rows[3]);
    const __m256d t3 = _mm256_unpackhi_pd(rows[2], rows[3]);
    rows[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    rows[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    rows[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    rows[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

#if REAL_IS_DOUBLE
#define DV_FROM_REAL(p) _mm256_loadu_pd(p)
#define RVEC __m256d
#define RW 4
#define RV_LOAD _mm256_loadu_pd
#define RV_STORE _mm256_storeu_pd
#define RV_SET1 _mm256_set1_pd
#define RV_FMA _mm256_fmadd_pd
#define RV_MUL _mm256_mul_pd
#define RV_ADD _mm256_add_pd
#define RV_SUB _mm256_sub_pd
#define RV_MAX _mm256_max_pd

static inline double TILED(hmax)(__m256d x)
{
    __m128d m = _mm_max_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
    return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
}

static inline __m256d TILED(from_scores)(const double *sd) { return _mm256_loadu_pd(sd); }
static inline int TILED(any_nan)(__m256d x)
{
    return _mm256_movemask_pd(_mm256_cmp_pd(x, x, _CMP_UNORD_Q)) != 0;
}
static inline __m256d TILED(keep_range)(__m256d x, int t0, int lo, int hi)
{
    const __m256d lane = _mm256_add_pd(_mm256_set1_pd(t0), _mm256_set_pd(3, 2, 1, 0));
    const __m256d keep = _mm256_and_pd(_mm256_cmp_pd(lane, _mm256_set1_pd(lo), _CMP_GE_OQ),
                                       _mm256_cmp_pd(lane, _mm256_set1_pd(hi), _CMP_LT_OQ));
    return _mm256_blendv_pd(_mm256_set1_pd(-INFINITY), x, keep);
}

static inline double TILED(hsum)(__m256d x)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/* x 2^n for integral n in [-1022, 1024], as (x 2^(n/2)) 2^(n - n/2): each
   factor's exponent field stays in range, and so does the first product */
static inline __m256d TILED(scale2)(__m256d x, __m256d n)
{
    const __m128i whole = _mm256_cvtpd_epi32(n);
    const __m128i half = _mm_srai_epi32(whole, 1), rest = _mm_sub_epi32(whole, half);
    const __m256i bias = _mm256_set1_epi64x(1023);
    const __m256d a = _mm256_castsi256_pd(_mm256_slli_epi64(
        _mm256_add_epi64(_mm256_cvtepi32_epi64(half), bias), 52));
    const __m256d b = _mm256_castsi256_pd(_mm256_slli_epi64(
        _mm256_add_epi64(_mm256_cvtepi32_epi64(rest), bias), 52));
    return _mm256_mul_pd(_mm256_mul_pd(x, a), b);
}

static inline __m256d TILED(vexp)(__m256d x)
{
    const __m256d lo = _mm256_set1_pd(-708.39641853226408), hi = _mm256_set1_pd(709.78271289338397);
    const __m256d nan = _mm256_cmp_pd(x, x, _CMP_UNORD_Q);
    const __m256d under = _mm256_cmp_pd(x, lo, _CMP_LT_OQ);
    const __m256d over = _mm256_cmp_pd(x, hi, _CMP_GT_OQ);
    const __m256d xc = _mm256_min_pd(_mm256_max_pd(x, lo), hi);
    const __m256d n = _mm256_round_pd(_mm256_mul_pd(xc, _mm256_set1_pd(1.4426950408889634)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93147180369123816490e-01), xc);
    __m256d p = _mm256_set1_pd(1.0 / 6227020800.0);
    r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.90821492927058770002e-10), r);
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 479001600.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 39916800.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 3628800.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 362880.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 40320.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 5040.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 720.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 120.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 24.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 6.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0.5));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
    p = TILED(scale2)(p, n);
    p = _mm256_blendv_pd(p, _mm256_setzero_pd(), under);
    p = _mm256_blendv_pd(p, _mm256_set1_pd(INFINITY), over);
    return _mm256_blendv_pd(p, x, nan);
}

#else /* float */
#define DV_FROM_REAL(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
#define RVEC __m256
#define RW 8
#define RV_LOAD _mm256_loadu_ps
#define RV_STORE _mm256_storeu_ps
#define RV_SET1 _mm256_set1_ps
#define RV_FMA _mm256_fmadd_ps
#define RV_MUL _mm256_mul_ps
#define RV_ADD _mm256_add_ps
#define RV_SUB _mm256_sub_ps
#define RV_MAX _mm256_max_ps

static inline float TILED(hmax)(__m256 x)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

/* 8 double scores rounded to float */
static inline __m256 TILED(from_scores)(const double *sd)
{
    return _mm256_set_m128(_mm256_cvtpd_ps(_mm256_loadu_pd(sd + 4)),
                           _mm256_cvtpd_ps(_mm256_loadu_pd(sd)));
}
static inline int TILED(any_nan)(__m256 x)
{
    return _mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)) != 0;
}
static inline __m256 TILED(keep_range)(__m256 x, int t0, int lo, int hi)
{
    const __m256 lane = _mm256_add_ps(_mm256_set1_ps((float)t0),
                                      _mm256_set_ps(7, 6, 5, 4, 3, 2, 1, 0));
    const __m256 keep = _mm256_and_ps(_mm256_cmp_ps(lane, _mm256_set1_ps((float)lo), _CMP_GE_OQ),
                                      _mm256_cmp_ps(lane, _mm256_set1_ps((float)hi), _CMP_LT_OQ));
    return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), x, keep);
}

static inline float TILED(hsum)(__m256 x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

/* x 2^n for integral n in [-126, 128], as (x 2^(n/2)) 2^(n - n/2) */
static inline __m256 TILED(scale2)(__m256 x, __m256 n)
{
    const __m256i whole = _mm256_cvtps_epi32(n);
    const __m256i half = _mm256_srai_epi32(whole, 1), rest = _mm256_sub_epi32(whole, half);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
    const __m256 b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(rest, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(x, a), b);
}

static inline __m256 TILED(vexp)(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.33654475f), hi = _mm256_set1_ps(88.72283905f);
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    const __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = TILED(scale2)(p, n);
    p = _mm256_blendv_ps(p, _mm256_setzero_ps(), under);
    p = _mm256_blendv_ps(p, _mm256_set1_ps(INFINITY), over);
    return _mm256_blendv_ps(p, x, nan);
}
#endif

#else
#error "simd.h: define SIMD_AVX512 or SIMD_AVX2"
#endif
