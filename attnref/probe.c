/* Machine-limit probes for attnref.probe: the peak fused multiply-add rate of
 * one instruction set, and the streaming read bandwidth.
 *
 * attnref.probe compiles this file at run time with the C compiler it finds
 * (cc -O2 -shared, no -march) and calls it through ctypes, which releases the
 * GIL, so Python threads run it on several cores at once. Each SIMD function
 * carries its own target attribute (GCC and clang), and probe_supported says
 * which of them this CPU runs.
 *
 * ISA codes (attnref.probe.ISA_CODES): 0 generic C (read only: C has no
 * FMA instruction it can promise), 1 AVX2 + FMA, 2 AVX-512F, 3 NEON
 * (aarch64, where it is baseline).
 *
 * probe_fma_f32 / probe_fma_f64: CHAINS independent chains
 * acc = acc * M + A, enough that the FMA latency (4 cycles) times the FMA
 * ports (2 on x86, up to 4 on Arm Neoverse) is covered and the loop runs at
 * the core's FMA throughput. One iteration is CHAINS vector FMAs, 2 flops per
 * lane; probe_fma_flops gives the flops of one iteration (0: no FMA probe
 * for that ISA here). |M| < 1 and A > 0: the chains converge, they never
 * overflow nor turn denormal. The sum of the chains is returned so that the
 * compiler cannot drop them.
 *
 * probe_read: a streaming read of n floats (n a multiple of READ_STEP),
 * summed into four vector accumulators so that the adds never wait on one
 * another; the sum is returned so that the loads cannot be dropped.
 */
#include <stddef.h>

#define PROBE_GENERIC 0
#define PROBE_AVX2 1
#define PROBE_AVX512 2
#define PROBE_NEON 3
#define READ_STEP 64 /* floats per step of the widest read loop (4 zmm) */

#define FMA_M 0.999999
#define FMA_A 1e-7

/* Repeat op(i) for each chain: the accumulators are named variables so that
 * they live in registers whatever the compiler's unrolling heuristics. */
#define CHAINS_12(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) \
    op(10) op(11)
#define CHAINS_16(op) CHAINS_12(op) op(12) op(13) op(14) op(15)
#define CHAINS_24(op) CHAINS_16(op) op(16) op(17) op(18) op(19) op(20) op(21) op(22) op(23)

#define COUNT(c) +1 /* (0 CHAINS_16(COUNT)) is 16 */
#define NAME(c) acc##c,
#define INIT(c) acc##c = SET1(1.0 + (c));
#define STEP(c) acc##c = FMADD(acc##c, m, a);
#define FOLD(c) total = ADD(total, acc##c);

/* The body of every FMA probe: SET1, FMADD and ADD are the intrinsics of
 * one vector type, defined around each use. Each chain starts from its own
 * value, so that no compiler can merge two chains that compute the same. */
#define FMA_PROBE_BODY(vector, CHAINS)        \
    const vector m = SET1(FMA_M), a = SET1(FMA_A); \
    vector CHAINS(NAME) total = SET1(0.0);      \
    CHAINS(INIT)                                \
    for (long long i = 0; i < iterations; i++) { \
        CHAINS(STEP)                            \
    }                                           \
    CHAINS(FOLD)

/* Generic C: the read probe only. */
static double read_generic(const float *data, size_t n)
{
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    for (size_t i = 0; i < n; i += 4) {
        s0 += data[i];
        s1 += data[i + 1];
        s2 += data[i + 2];
        s3 += data[i + 3];
    }
    return (double)s0 + s1 + s2 + s3;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

static int supported(int isa)
{
    __builtin_cpu_init();
    if (isa == PROBE_AVX512)
        return __builtin_cpu_supports("avx512f");
    if (isa == PROBE_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return isa == PROBE_GENERIC;
}

/* AVX-512: 16 chains; of the 32 zmm registers two more hold M and A. */
#define SET1(x) _mm512_set1_ps((float)(x))
#define FMADD _mm512_fmadd_ps
#define ADD _mm512_add_ps
__attribute__((target("avx512f")))
static double fma_avx512_f32(long long iterations)
{
    FMA_PROBE_BODY(__m512, CHAINS_16)
    return _mm512_reduce_add_ps(total);
}
#undef SET1
#undef FMADD
#undef ADD

#define SET1(x) _mm512_set1_pd(x)
#define FMADD _mm512_fmadd_pd
#define ADD _mm512_add_pd
__attribute__((target("avx512f")))
static double fma_avx512_f64(long long iterations)
{
    FMA_PROBE_BODY(__m512d, CHAINS_16)
    return _mm512_reduce_add_pd(total);
}
#undef SET1
#undef FMADD
#undef ADD

/* AVX2: 12 chains; of the 16 ymm registers two more hold M and A. */
#define SET1(x) _mm256_set1_ps((float)(x))
#define FMADD _mm256_fmadd_ps
#define ADD _mm256_add_ps
__attribute__((target("avx2,fma")))
static double fma_avx2_f32(long long iterations)
{
    FMA_PROBE_BODY(__m256, CHAINS_12)
    float lanes[8];
    _mm256_storeu_ps(lanes, total);
    return (double)lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5]
           + lanes[6] + lanes[7];
}
#undef SET1
#undef FMADD
#undef ADD

#define SET1(x) _mm256_set1_pd(x)
#define FMADD _mm256_fmadd_pd
#define ADD _mm256_add_pd
__attribute__((target("avx2,fma")))
static double fma_avx2_f64(long long iterations)
{
    FMA_PROBE_BODY(__m256d, CHAINS_12)
    double lanes[4];
    _mm256_storeu_pd(lanes, total);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#undef SET1
#undef FMADD
#undef ADD

__attribute__((target("avx512f")))
static double read_avx512(const float *data, size_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 64) {
        s0 = _mm512_add_ps(s0, _mm512_loadu_ps(data + i));
        s1 = _mm512_add_ps(s1, _mm512_loadu_ps(data + i + 16));
        s2 = _mm512_add_ps(s2, _mm512_loadu_ps(data + i + 32));
        s3 = _mm512_add_ps(s3, _mm512_loadu_ps(data + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

__attribute__((target("avx2,fma")))
static double read_avx2(const float *data, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(data + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(data + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(data + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(data + i + 24));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    return (double)lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5]
           + lanes[6] + lanes[7];
}

static double fma_f32(int isa, long long iterations)
{
    return isa == PROBE_AVX512 ? fma_avx512_f32(iterations) : fma_avx2_f32(iterations);
}

static double fma_f64(int isa, long long iterations)
{
    return isa == PROBE_AVX512 ? fma_avx512_f64(iterations) : fma_avx2_f64(iterations);
}

static double read_isa(int isa, const float *data, size_t n)
{
    if (isa == PROBE_AVX512)
        return read_avx512(data, n);
    if (isa == PROBE_AVX2)
        return read_avx2(data, n);
    return read_generic(data, n);
}

static int fma_flops(int isa, int is_double)
{
    if (isa == PROBE_AVX512)
        return (0 CHAINS_16(COUNT)) * (is_double ? 8 : 16) * 2;
    if (isa == PROBE_AVX2)
        return (0 CHAINS_12(COUNT)) * (is_double ? 4 : 8) * 2;
    return 0;
}

#elif defined(__aarch64__)
#include <arm_neon.h>

static int supported(int isa)
{
    return isa == PROBE_NEON || isa == PROBE_GENERIC;
}

/* NEON: 24 chains; of the 32 q registers two more hold M and A. vfmaq
 * takes the addend first: acc * m + a is vfmaq(a, acc, m). */
#define SET1(x) vdupq_n_f32((float)(x))
#define FMADD(x, y, z) vfmaq_f32(z, x, y)
#define ADD vaddq_f32
static double fma_neon_f32(long long iterations)
{
    FMA_PROBE_BODY(float32x4_t, CHAINS_24)
    return vaddvq_f32(total);
}
#undef SET1
#undef FMADD
#undef ADD

#define SET1(x) vdupq_n_f64(x)
#define FMADD(x, y, z) vfmaq_f64(z, x, y)
#define ADD vaddq_f64
static double fma_neon_f64(long long iterations)
{
    FMA_PROBE_BODY(float64x2_t, CHAINS_24)
    return vaddvq_f64(total);
}
#undef SET1
#undef FMADD
#undef ADD

static double read_neon(const float *data, size_t n)
{
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 16) {
        s0 = vaddq_f32(s0, vld1q_f32(data + i));
        s1 = vaddq_f32(s1, vld1q_f32(data + i + 4));
        s2 = vaddq_f32(s2, vld1q_f32(data + i + 8));
        s3 = vaddq_f32(s3, vld1q_f32(data + i + 12));
    }
    return vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
}

static double fma_f32(int isa, long long iterations)
{
    (void)isa;
    return fma_neon_f32(iterations);
}

static double fma_f64(int isa, long long iterations)
{
    (void)isa;
    return fma_neon_f64(iterations);
}

static double read_isa(int isa, const float *data, size_t n)
{
    return isa == PROBE_NEON ? read_neon(data, n) : read_generic(data, n);
}

static int fma_flops(int isa, int is_double)
{
    return isa == PROBE_NEON ? (0 CHAINS_24(COUNT)) * (is_double ? 2 : 4) * 2 : 0;
}

#else /* any other CPU or compiler: the generic read probe alone */

static int supported(int isa)
{
    return isa == PROBE_GENERIC;
}

static double fma_f32(int isa, long long iterations)
{
    (void)isa;
    (void)iterations;
    return 0.0;
}

static double fma_f64(int isa, long long iterations)
{
    (void)isa;
    (void)iterations;
    return 0.0;
}

static double read_isa(int isa, const float *data, size_t n)
{
    (void)isa;
    return read_generic(data, n);
}

static int fma_flops(int isa, int is_double)
{
    (void)isa;
    (void)is_double;
    return 0;
}
#endif

/* The entry points attnref.probe calls. Each checks its ISA first, so that
 * no call can run an instruction the CPU lacks. */

/* 1 when this CPU (and this build) runs the probes of ``isa``, else 0. */
int probe_supported(int isa)
{
    return supported(isa);
}

/* Flops of one iteration of probe_fma_f32/f64 on ``isa``; 0 when there is
 * no FMA probe for it here. */
int probe_fma_flops(int isa, int is_double)
{
    return supported(isa) ? fma_flops(isa, is_double) : 0;
}

double probe_fma_f32(int isa, long long iterations)
{
    return probe_fma_flops(isa, 0) ? fma_f32(isa, iterations) : 0.0;
}

double probe_fma_f64(int isa, long long iterations)
{
    return probe_fma_flops(isa, 1) ? fma_f64(isa, iterations) : 0.0;
}

/* The sum of n floats (n a multiple of READ_STEP), read with ``isa``'s loads. */
double probe_read(int isa, const float *data, size_t n)
{
    return supported(isa) ? read_isa(isa, data, n) : 0.0;
}
