/*
 * simd_exp.h -- TILED(vexp), the vector exp of the SIMD kernels, for one
 * (ISA, REAL) instance: included after simd.h (whose RV_* operations,
 * TILED(scale2) and TILED(exp_special) it is written in) by tiled_impl.h,
 * and by any other kernel of the instance that needs exp. simd_end.h
 * undefines its EXP_* constants.
 */

/*
 * exp, for x in [ln(min normal), ln(max)]: n = round(x / ln 2) and
 * r = x - n ln 2 (Cody & Waite's two-constant split, exact to r's
 * rounding), exp(r) by its Taylor polynomial of degree 7 (float) or 13
 * (double) in Horner form (truncation below 0.1 ulp on |r| <= ln2 / 2),
 * scaled by 2^n. Below ln(min normal) the result is 0 (subnormal results
 * are flushed: they are below any weight that can change a float sum of
 * weights >= 1), above ln(max) it is +inf, and NaN stays NaN. Measured
 * below 1 ulp (0.92 float, 0.86 double) against a wider exp on 10^7 and 10^6
 * random points; tests/test_kernel_paths.py checks the stated bound, 2 ulp.
 */
#if REAL_IS_DOUBLE
#define EXP_LO LOG_DBL_MIN
#define EXP_HI 709.78271289338397    /* ln(DBL_MAX) */
#define EXP_LN2_HI 6.93147180369123816490e-01   /* fdlibm's split of ln 2 */
#define EXP_LN2_LO 1.90821492927058770002e-10
static const double TILED(exp_taylor)[] = {      /* 1/k!, k = 13 .. 0 */
    1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
    1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
    1.0 / 6.0, 0.5, 1.0, 1.0};
#else
#define EXP_LO LOG_FLT_MIN
#define EXP_HI 88.72283905f          /* ln(FLT_MAX) */
#define EXP_LN2_HI 0.693359375f      /* Cephes' split of ln 2 */
#define EXP_LN2_LO -2.12194440e-4f
static const float TILED(exp_taylor)[] = {       /* 1/k!, k = 7 .. 0 */
    1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f};
#endif

ALWAYS_INLINE RVEC TILED(vexp)(RVEC x)
{
    const int terms = sizeof TILED(exp_taylor) / sizeof TILED(exp_taylor)[0];
    /* x out of range gives 0 below EXP_LO (not EXP_LO: its result is
       subnormal, and a subnormal operand or result costs a microcode assist
       of about a hundred cycles per instruction; masked keys, -inf, are
       common) and +inf above EXP_HI; either lane's result is replaced below */
    const RVEC xc = TILED(exp_special)(x, x, EXP_LO, EXP_HI);
    const RVEC n = RV_ROUND(RV_MUL(xc, RV_SET1((REAL)1.4426950408889634)));   /* log2 e */
    const RVEC r = RV_FNMADD(n, RV_SET1(EXP_LN2_LO), RV_FNMADD(n, RV_SET1(EXP_LN2_HI), xc));
    RVEC p = RV_SET1(TILED(exp_taylor)[0]);
    for (int k = 1; k < terms; k++) p = RV_FMA(p, r, RV_SET1(TILED(exp_taylor)[k]));
    return TILED(exp_special)(TILED(scale2)(p, n), x, EXP_LO, EXP_HI);
}

/*
 * exp of weights, for x <= 0 or x = -inf (never NaN, never above 0): the
 * softmax's exp(s - m), s <= m. The same bits as TILED(vexp) there, with
 * fewer checks: x is clamped from below to EXP_LO (so n >= the smallest
 * normal exponent and 2^n is built directly: TILED(round_scale) rounds
 * (the same n as RV_ROUND) into the operand of TILED(scale2_normal)), and the
 * lanes below EXP_LO (masked keys among them) are set to exactly 0 once.
 */
ALWAYS_INLINE RVEC TILED(vexp_weight)(RVEC x)
{
    const int terms = sizeof TILED(exp_taylor) / sizeof TILED(exp_taylor)[0];
    const RVEC xc = RV_MAX(x, RV_SET1(EXP_LO));
    RVEC scale;
    const RVEC n = TILED(round_scale)(RV_MUL(xc, RV_SET1((REAL)1.4426950408889634)), &scale);
    const RVEC r = RV_FNMADD(n, RV_SET1(EXP_LN2_LO), RV_FNMADD(n, RV_SET1(EXP_LN2_HI), xc));
    /* the polynomial times ROUND_SCALE_PRESCALE, a power of 2: each step
       scaled exactly, the same bits once scaled back */
    RVEC p = RV_SET1(ROUND_SCALE_PRESCALE * TILED(exp_taylor)[0]);
    for (int k = 1; k < terms; k++)
        p = RV_FMA(p, r, RV_SET1(ROUND_SCALE_PRESCALE * TILED(exp_taylor)[k]));
    return TILED(zero_below)(TILED(scale2_normal)(p, scale), x, EXP_LO);
}
