/*
 * simd.h -- the vector operations the tiled kernel (tiled_impl.h) is written
 * in, for one instruction set and one float type. tiled.c includes it,
 * then tiled_impl.h, once per (ISA, REAL): on x86-64 inside a target region
 * (TARGET_PUSH / TARGET_POP), on aarch64 as is (NEON is baseline). The
 * includer defines
 *   SIMD_AVX512, SIMD_AVX2 or SIMD_NEON   the instruction set
 *   REAL                       float or double (the operands' type)
 *   TILED(name)                name##_<isa>_<type>: this instance's names
 * and gets:
 *   DVEC, DW, DV_*             double vectors (scores are summed in double)
 *   DV_FROM_REAL(p)            DW REALs from p as a double vector
 *   SIMD_REGISTERS             the number of vector registers (sizes the
 *                              fast score micro-kernel of tiled_scores.h)
 *   TILED(transpose_real)(rows)  RW x RW transpose of REAL vectors, in place
 *   TILED(transpose)(rows)     DW x DW transpose of double vectors, in place
 *   RVEC, RW, RV_*             REAL vectors (softmax and weighted values)
 *   RV_MIN, RV_FNMADD, RV_ROUND, TILED(scale2), TILED(exp_special)
 *                              the pieces of simd_exp.h's vector exp
 *   TILED(round_scale), TILED(scale2_normal), TILED(zero_below)
 *                              the cheaper ones of its exp of weights
 *                              (arguments <= 0: no overflow, no NaN):
 *                              n = round(y) and its scale operand k, then
 *                              p 2^n from k and ROUND_SCALE_PRESCALE p (1/2
 *                              where k gives 2^(n + 1), else 1), then the lanes
 *                              below a bound to 0
 *   ALWAYS_INLINE              static inline, always inlined
 *   TILED(hmax), TILED(hsum)   horizontal max / sum of a REAL vector
 *   TILED(from_scores)(sd)     RW double scores as a REAL vector
 *   TILED(any_nan)(x)          whether a lane of x is NaN
 *   TILED(keep_range)(x, t0, lo, hi)  lanes t0 + u in [lo, hi) of x, -inf elsewhere
 * simd_end.h undefines all of it after the last kernel of an instance.
 */

#define ALWAYS_INLINE static inline __attribute__((always_inline))

#if defined(SIMD_AVX512)

#define SIMD_REGISTERS 32
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
static inline void TILED(transpose_real)(__m512d rows[8]) { TILED(transpose)(rows); }
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

/* the exp kernel's pieces (TILED(vexp) in simd_exp.h puts them together) */
#define RV_MIN _mm512_min_pd
#define RV_FNMADD _mm512_fnmadd_pd
#define RV_ROUND(x) _mm512_roundscale_pd(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* p 2^n for integral n (overflow to inf, underflow to 0) */
static inline __m512d TILED(scale2)(__m512d p, __m512d n) { return _mm512_scalef_pd(p, n); }

/* y where lo <= x <= hi; 0 below, +inf above, x where x is NaN */
static inline __m512d TILED(exp_special)(__m512d y, __m512d x, double lo, double hi)
{
    y = _mm512_mask_mov_pd(y, _mm512_cmp_pd_mask(x, _mm512_set1_pd(lo), _CMP_LT_OQ),
                           _mm512_setzero_pd());
    y = _mm512_mask_mov_pd(y, _mm512_cmp_pd_mask(x, _mm512_set1_pd(hi), _CMP_GT_OQ),
                           _mm512_set1_pd(INFINITY));
    return _mm512_mask_mov_pd(y, _mm512_cmp_pd_mask(x, x, _CMP_UNORD_Q), x);
}
/* n = y rounded to the nearest integer (ties to even), and in *k the
   operand of scale2_normal for 2^n: n itself here */
static inline __m512d TILED(round_scale)(__m512d y, __m512d *k)
{
    return *k = _mm512_roundscale_pd(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#define ROUND_SCALE_PRESCALE 1
/* p 2^n for integral n with 2^n normal (vexp_weight's range), k from round_scale */
static inline __m512d TILED(scale2_normal)(__m512d p, __m512d k) { return _mm512_scalef_pd(p, k); }
/* y where x >= lo, else 0 (x -inf or below lo) */
static inline __m512d TILED(zero_below)(__m512d y, __m512d x, double lo)
{
    return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, _mm512_set1_pd(lo), _CMP_GE_OQ), y);
}
#else /* float */
#define DV_FROM_REAL(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))

/* rows[u][c] <-> rows[c][u]: a 16 x 16 transpose. Within each 128-bit lane
   L, u[4g + c] gathers column 4L + c of rows 4g .. 4g + 3; then two rounds
   of 128-bit lane shuffles put the four groups of a column together. */
static inline void TILED(transpose_real)(__m512 rows[16])
{
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(rows[i], rows[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(rows[i], rows[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) {
        u[g] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44);
        u[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xEE);
        u[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
        u[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        /* lanes 0 and 2 (0x88), 1 and 3 (0xDD) of groups 0-1 and of groups 2-3 */
        const __m512 even01 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
        const __m512 odd01 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
        const __m512 even23 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        const __m512 odd23 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
        rows[c] = _mm512_shuffle_f32x4(even01, even23, 0x88);
        rows[8 + c] = _mm512_shuffle_f32x4(even01, even23, 0xDD);
        rows[4 + c] = _mm512_shuffle_f32x4(odd01, odd23, 0x88);
        rows[12 + c] = _mm512_shuffle_f32x4(odd01, odd23, 0xDD);
    }
}
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

#define RV_MIN _mm512_min_ps
#define RV_FNMADD _mm512_fnmadd_ps
#define RV_ROUND(x) _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static inline __m512 TILED(scale2)(__m512 p, __m512 n) { return _mm512_scalef_ps(p, n); }

static inline __m512 TILED(exp_special)(__m512 y, __m512 x, float lo, float hi)
{
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(lo), _CMP_LT_OQ),
                           _mm512_setzero_ps());
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(hi), _CMP_GT_OQ),
                           _mm512_set1_ps(INFINITY));
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}
#define ROUND_SCALE_PRESCALE 1
static inline __m512 TILED(round_scale)(__m512 y, __m512 *k)
{
    return *k = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
static inline __m512 TILED(scale2_normal)(__m512 p, __m512 k) { return _mm512_scalef_ps(p, k); }
static inline __m512 TILED(zero_below)(__m512 y, __m512 x, float lo)
{
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(lo), _CMP_GE_OQ), y);
}
#endif

#elif defined(SIMD_AVX2)

#define SIMD_REGISTERS 16
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
static inline void TILED(transpose_real)(__m256d rows[4]) { TILED(transpose)(rows); }
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

#define RV_MIN _mm256_min_pd
#define RV_FNMADD _mm256_fnmadd_pd
#define RV_ROUND(x) _mm256_round_pd(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static inline __m256d TILED(exp_special)(__m256d y, __m256d x, double lo, double hi)
{
    y = _mm256_blendv_pd(y, _mm256_setzero_pd(), _mm256_cmp_pd(x, _mm256_set1_pd(lo), _CMP_LT_OQ));
    y = _mm256_blendv_pd(y, _mm256_set1_pd(INFINITY),
                         _mm256_cmp_pd(x, _mm256_set1_pd(hi), _CMP_GT_OQ));
    return _mm256_blendv_pd(y, x, _mm256_cmp_pd(x, x, _CMP_UNORD_Q));
}
/* n = y rounded to the nearest integer (ties to even) for |y| < 2^50, by
   adding and taking away 1.5 2^52 + 1024 (even, so that its ties go where
   RV_ROUND's go): k = y + that is rounded to an integer (the unit of its
   binade is 1), and its low bits hold n + 1024, the exponent field of
   2^(n + 1), which scale2_normal shifts into place. Two additions instead
   of a rounding (two micro-ops) and a conversion: the same n. */
#define ROUND_SCALE_SHIFTER (6755399441055744.0 + 1024.0)
/* what the polynomial is multiplied by before scale2_normal's 2^(n + 1):
   1/2, exactly, in each of its coefficients */
#define ROUND_SCALE_PRESCALE 0.5
static inline __m256d TILED(round_scale)(__m256d y, __m256d *k)
{
    *k = _mm256_add_pd(y, _mm256_set1_pd(ROUND_SCALE_SHIFTER));
    return _mm256_sub_pd(*k, _mm256_set1_pd(ROUND_SCALE_SHIFTER));
}
/* p 2^(n + 1) for integral n in [-1022, 1022], k from round_scale: one
   exact product with 2^(n + 1) built in its exponent field; for p half
   the polynomial, the same bits as scale2 */
static inline __m256d TILED(scale2_normal)(__m256d p, __m256d k)
{
    return _mm256_mul_pd(p, _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(k), 52)));
}
/* y where x >= lo, else 0 (x -inf or below lo) */
static inline __m256d TILED(zero_below)(__m256d y, __m256d x, double lo)
{
    return _mm256_and_pd(y, _mm256_cmp_pd(x, _mm256_set1_pd(lo), _CMP_GE_OQ));
}
#else /* float */
#define DV_FROM_REAL(p) _mm256_cvtps_pd(_mm_loadu_ps(p))

/* rows[u][c] <-> rows[c][u]: an 8 x 8 transpose. Within each 128-bit half
   L, u[4g + c] gathers column 4L + c of rows 4g .. 4g + 3; then the halves
   of the two groups are put together. */
static inline void TILED(transpose_real)(__m256 rows[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(rows[i], rows[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(rows[i], rows[i + 1]);
    }
    for (int g = 0; g < 8; g += 4) {
        u[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
        u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
        u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
        u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        rows[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        rows[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}
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

#define RV_MIN _mm256_min_ps
#define RV_FNMADD _mm256_fnmadd_ps
#define RV_ROUND(x) _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static inline __m256 TILED(exp_special)(__m256 y, __m256 x, float lo, float hi)
{
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_LT_OQ));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY),
                         _mm256_cmp_ps(x, _mm256_set1_ps(hi), _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
/* n = round(y) for |y| < 2^21 and k, as in the double section: with
   1.5 2^23 + 128, whose unit is 1 and whose low bits after the addition are
   n + 128, the exponent field of 2^(n + 1) */
#define ROUND_SCALE_SHIFTER (12582912.0f + 128.0f)
#define ROUND_SCALE_PRESCALE 0.5f
static inline __m256 TILED(round_scale)(__m256 y, __m256 *k)
{
    *k = _mm256_add_ps(y, _mm256_set1_ps(ROUND_SCALE_SHIFTER));
    return _mm256_sub_ps(*k, _mm256_set1_ps(ROUND_SCALE_SHIFTER));
}
/* p 2^(n + 1) for integral n in [-126, 126], k from round_scale */
static inline __m256 TILED(scale2_normal)(__m256 p, __m256 k)
{
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(k), 23)));
}
static inline __m256 TILED(zero_below)(__m256 y, __m256 x, float lo)
{
    return _mm256_and_ps(y, _mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_GE_OQ));
}
#endif

#elif defined(SIMD_NEON)

/* AArch64 Advanced SIMD: 32 registers of 128 bits. The same operations, in
   the same order, as the sections above; where an instruction set lacks an
   operation (scalef, roundscale, masks) the AVX2 section's construction is
   used. Every FMA here is fused (vfmaq / vfmsq), as on x86. */

#define SIMD_REGISTERS 32
#define DVEC float64x2_t
#define DW 2
#define DV_LOAD vld1q_f64
#define DV_STORE vst1q_f64
#define DV_SET1 vdupq_n_f64
#define DV_ZERO() vdupq_n_f64(0.0)
/* a b + c, fused */
#define DV_FMA(a, b, c) vfmaq_f64(c, a, b)
#define DV_MUL vmulq_f64
#define DV_ADD vaddq_f64
#define DV_SUB vsubq_f64
/* a b - c, fused: -(c - a b), negation being exact */
#define DV_FMSUB(a, b, c) vnegq_f64(vfmsq_f64(c, a, b))
/* `corrected` where `error` is finite, else `plain` */
#define DV_KEEP_FINITE(corrected, plain, error) vbslq_f64( \
    vceqq_f64(vsubq_f64(error, error), vdupq_n_f64(0.0)), corrected, plain)

/* rows[u][c] <-> rows[c][u]: a 2 x 2 transpose */
static inline void TILED(transpose)(float64x2_t rows[2])
{
    const float64x2_t first = vtrn1q_f64(rows[0], rows[1]);
    rows[1] = vtrn2q_f64(rows[0], rows[1]);
    rows[0] = first;
}

#if REAL_IS_DOUBLE
static inline void TILED(transpose_real)(float64x2_t rows[2]) { TILED(transpose)(rows); }
#define DV_FROM_REAL(p) vld1q_f64(p)
#define RVEC float64x2_t
#define RW 2
#define RV_LOAD vld1q_f64
#define RV_STORE vst1q_f64
#define RV_SET1 vdupq_n_f64
/* a b + c, fused */
#define RV_FMA(a, b, c) vfmaq_f64(c, a, b)
#define RV_MUL vmulq_f64
#define RV_ADD vaddq_f64
#define RV_SUB vsubq_f64
/* lane max: NaN where either lane is NaN (x86: the second operand); the
   kernel takes no decision on a max of NaN (finish_scores tests NaN apart,
   vexp restores it through exp_special) */
#define RV_MAX vmaxq_f64

static inline double TILED(hmax)(float64x2_t x) { return vmaxvq_f64(x); }
static inline float64x2_t TILED(from_scores)(const double *sd) { return vld1q_f64(sd); }
static inline int TILED(any_nan)(float64x2_t x)
{
    /* x == x is all ones in a lane unless it is NaN */
    return vminvq_u32(vreinterpretq_u32_u64(vceqq_f64(x, x))) == 0;
}
/* x where t0 + lane is in [lo, hi), else -inf */
static inline float64x2_t TILED(keep_range)(float64x2_t x, int t0, int lo, int hi)
{
    static const int64_t lanes[2] = {0, 1};
    const int64x2_t lane = vaddq_s64(vdupq_n_s64(t0), vld1q_s64(lanes));
    const uint64x2_t keep = vandq_u64(vcgeq_s64(lane, vdupq_n_s64(lo)),
                                      vcltq_s64(lane, vdupq_n_s64(hi)));
    return vbslq_f64(keep, x, vdupq_n_f64(-INFINITY));
}
static inline double TILED(hsum)(float64x2_t x) { return vaddvq_f64(x); }

/* the exp kernel's pieces (TILED(vexp) in simd_exp.h puts them together) */
#define RV_MIN vminq_f64
/* c - a b, fused */
#define RV_FNMADD(a, b, c) vfmsq_f64(c, a, b)
/* to the nearest integer, ties to even */
#define RV_ROUND(x) vrndnq_f64(x)

/* x 2^n for integral n in [-1022, 1024], as (x 2^(n/2)) 2^(n - n/2): each
   factor's exponent field stays in range, and so does the first product */
static inline float64x2_t TILED(scale2)(float64x2_t x, float64x2_t n)
{
    const int64x2_t whole = vcvtq_s64_f64(n);
    const int64x2_t half = vshrq_n_s64(whole, 1), rest = vsubq_s64(whole, half);
    const int64x2_t bias = vdupq_n_s64(1023);
    const float64x2_t a = vreinterpretq_f64_s64(vshlq_n_s64(vaddq_s64(half, bias), 52));
    const float64x2_t b = vreinterpretq_f64_s64(vshlq_n_s64(vaddq_s64(rest, bias), 52));
    return vmulq_f64(vmulq_f64(x, a), b);
}

/* y where lo <= x <= hi; 0 below, +inf above, x where x is NaN */
static inline float64x2_t TILED(exp_special)(float64x2_t y, float64x2_t x, double lo, double hi)
{
    y = vbslq_f64(vcltq_f64(x, vdupq_n_f64(lo)), vdupq_n_f64(0.0), y);
    y = vbslq_f64(vcgtq_f64(x, vdupq_n_f64(hi)), vdupq_n_f64(INFINITY), y);
    return vbslq_f64(vceqq_f64(x, x), y, x);
}
/* n = y rounded to the nearest integer (ties to even), and in *k the
   operand of scale2_normal for 2^n: n itself here */
#define ROUND_SCALE_PRESCALE 1
static inline float64x2_t TILED(round_scale)(float64x2_t y, float64x2_t *k)
{
    return *k = vrndnq_f64(y);
}
/* p 2^n for integral n in [-1022, 1023] (2^n normal), n from round_scale */
static inline float64x2_t TILED(scale2_normal)(float64x2_t p, float64x2_t n)
{
    const int64x2_t field = vaddq_s64(vcvtq_s64_f64(n), vdupq_n_s64(1023));
    return vmulq_f64(p, vreinterpretq_f64_s64(vshlq_n_s64(field, 52)));
}
/* y where x >= lo, else 0 (x -inf or below lo) */
static inline float64x2_t TILED(zero_below)(float64x2_t y, float64x2_t x, double lo)
{
    return vbslq_f64(vcgeq_f64(x, vdupq_n_f64(lo)), y, vdupq_n_f64(0.0));
}
#else /* float */
/* rows[u][c] <-> rows[c][u]: a 4 x 4 transpose, pairs of floats then pairs
   of those (as doubles' worth of bits) */
static inline void TILED(transpose_real)(float32x4_t rows[4])
{
    const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(rows[0], rows[1]));
    const float64x2_t t1 = vreinterpretq_f64_f32(vtrn2q_f32(rows[0], rows[1]));
    const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(rows[2], rows[3]));
    const float64x2_t t3 = vreinterpretq_f64_f32(vtrn2q_f32(rows[2], rows[3]));
    rows[0] = vreinterpretq_f32_f64(vtrn1q_f64(t0, t2));
    rows[1] = vreinterpretq_f32_f64(vtrn1q_f64(t1, t3));
    rows[2] = vreinterpretq_f32_f64(vtrn2q_f64(t0, t2));
    rows[3] = vreinterpretq_f32_f64(vtrn2q_f64(t1, t3));
}
#define DV_FROM_REAL(p) vcvt_f64_f32(vld1_f32(p))
#define RVEC float32x4_t
#define RW 4
#define RV_LOAD vld1q_f32
#define RV_STORE vst1q_f32
#define RV_SET1 vdupq_n_f32
/* a b + c, fused */
#define RV_FMA(a, b, c) vfmaq_f32(c, a, b)
#define RV_MUL vmulq_f32
#define RV_ADD vaddq_f32
#define RV_SUB vsubq_f32
/* lane max: NaN where either lane is NaN (see the double section) */
#define RV_MAX vmaxq_f32

static inline float TILED(hmax)(float32x4_t x) { return vmaxvq_f32(x); }
/* 4 double scores rounded to float */
static inline float32x4_t TILED(from_scores)(const double *sd)
{
    return vcvt_high_f32_f64(vcvt_f32_f64(vld1q_f64(sd)), vld1q_f64(sd + 2));
}
static inline int TILED(any_nan)(float32x4_t x)
{
    return vminvq_u32(vceqq_f32(x, x)) == 0;
}
static inline float32x4_t TILED(keep_range)(float32x4_t x, int t0, int lo, int hi)
{
    static const int32_t lanes[4] = {0, 1, 2, 3};
    const int32x4_t lane = vaddq_s32(vdupq_n_s32(t0), vld1q_s32(lanes));
    const uint32x4_t keep = vandq_u32(vcgeq_s32(lane, vdupq_n_s32(lo)),
                                      vcltq_s32(lane, vdupq_n_s32(hi)));
    return vbslq_f32(keep, x, vdupq_n_f32(-INFINITY));
}
static inline float TILED(hsum)(float32x4_t x) { return vaddvq_f32(x); }

#define RV_MIN vminq_f32
#define RV_FNMADD(a, b, c) vfmsq_f32(c, a, b)
#define RV_ROUND(x) vrndnq_f32(x)

/* x 2^n for integral n in [-126, 128], as (x 2^(n/2)) 2^(n - n/2) */
static inline float32x4_t TILED(scale2)(float32x4_t x, float32x4_t n)
{
    const int32x4_t whole = vcvtq_s32_f32(n);
    const int32x4_t half = vshrq_n_s32(whole, 1), rest = vsubq_s32(whole, half);
    const int32x4_t bias = vdupq_n_s32(127);
    const float32x4_t a = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(half, bias), 23));
    const float32x4_t b = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(rest, bias), 23));
    return vmulq_f32(vmulq_f32(x, a), b);
}

static inline float32x4_t TILED(exp_special)(float32x4_t y, float32x4_t x, float lo, float hi)
{
    y = vbslq_f32(vcltq_f32(x, vdupq_n_f32(lo)), vdupq_n_f32(0.0f), y);
    y = vbslq_f32(vcgtq_f32(x, vdupq_n_f32(hi)), vdupq_n_f32(INFINITY), y);
    return vbslq_f32(vceqq_f32(x, x), y, x);
}
#define ROUND_SCALE_PRESCALE 1
static inline float32x4_t TILED(round_scale)(float32x4_t y, float32x4_t *k)
{
    return *k = vrndnq_f32(y);
}
/* p 2^n for integral n in [-126, 127] (2^n normal), n from round_scale */
static inline float32x4_t TILED(scale2_normal)(float32x4_t p, float32x4_t n)
{
    const int32x4_t field = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
    return vmulq_f32(p, vreinterpretq_f32_s32(vshlq_n_s32(field, 23)));
}
static inline float32x4_t TILED(zero_below)(float32x4_t y, float32x4_t x, float lo)
{
    return vbslq_f32(vcgeq_f32(x, vdupq_n_f32(lo)), y, vdupq_n_f32(0.0f));
}
#endif

#else
#error "simd.h: define SIMD_AVX512, SIMD_AVX2 or SIMD_NEON"
#endif
