/* Machine-limit probes for bench_sdpa.py, compiled at run time by probe.py.
 *
 * probe_fma_*: FMA_CHAINS independent chains acc = acc * M + A, so that the
 * FMA latency (4 cycles) times the FMA ports (2) is covered with room to spare
 * and the loop runs at the core's FMA throughput. Each iteration is
 * FMA_CHAINS FMAs of a full vector: 2 flops per lane.
 *
 * probe_read_*: a streaming read of n floats, summed into four vector
 * accumulators so the adds never wait on each other; the sum is returned so
 * the loads cannot be dropped.
 *
 * Each function carries its own target attribute (no -march in the build);
 * probe_isa says which ones this CPU runs.
 */
#include <stddef.h>
#include <immintrin.h>

#define FMA_CHAINS_512 16 /* of 32 zmm registers; 2 more hold M and A */
#define FMA_CHAINS_256 12 /* of 16 ymm registers */
#define FMA_M 0.999999f   /* |M| < 1 and A > 0: the chains converge, never */
#define FMA_A 1e-7f       /* overflow nor turn denormal */

/* 2: AVX-512F, 1: AVX2 + FMA, 0: neither. */
int probe_isa(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
    return 0;
}

__attribute__((target("avx512f")))
float probe_fma_avx512(long long iterations)
{
    const __m512 m = _mm512_set1_ps(FMA_M), a = _mm512_set1_ps(FMA_A);
    __m512 acc[FMA_CHAINS_512];
    for (int c = 0; c < FMA_CHAINS_512; c++)
        acc[c] = _mm512_set1_ps(1.0f + c);
    for (long long i = 0; i < iterations; i++)
#pragma GCC unroll 16 /* the chains must live in registers, not in acc[] */
        for (int c = 0; c < FMA_CHAINS_512; c++)
            acc[c] = _mm512_fmadd_ps(acc[c], m, a);
    for (int c = 1; c < FMA_CHAINS_512; c++)
        acc[0] = _mm512_add_ps(acc[0], acc[c]);
    return _mm512_reduce_add_ps(acc[0]);
}

/* The sum of the 8 lanes: AVX2 has no _mm512_reduce_add_ps counterpart. */
__attribute__((target("avx2,fma")))
static float reduce_add_256(__m256 v)
{
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
}

__attribute__((target("avx2,fma")))
float probe_fma_avx2(long long iterations)
{
    const __m256 m = _mm256_set1_ps(FMA_M), a = _mm256_set1_ps(FMA_A);
    __m256 acc[FMA_CHAINS_256];
    for (int c = 0; c < FMA_CHAINS_256; c++)
        acc[c] = _mm256_set1_ps(1.0f + c);
    for (long long i = 0; i < iterations; i++)
#pragma GCC unroll 16
        for (int c = 0; c < FMA_CHAINS_256; c++)
            acc[c] = _mm256_fmadd_ps(acc[c], m, a);
    for (int c = 1; c < FMA_CHAINS_256; c++)
        acc[0] = _mm256_add_ps(acc[0], acc[c]);
    return reduce_add_256(acc[0]);
}

/* n must be a multiple of 64 (four zmm loads per step). */
__attribute__((target("avx512f")))
float probe_read_avx512(const float *data, size_t n)
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

/* n must be a multiple of 32 (four ymm loads per step). */
__attribute__((target("avx2,fma")))
float probe_read_avx2(const float *data, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(data + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(data + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(data + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(data + i + 24));
    }
    return reduce_add_256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}
