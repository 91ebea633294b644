/*
 * tiled.c -- the tiled paths: tiled_impl.h and decode_impl.h instantiated
 * per instruction set and per float type. On x86-64, AVX-512 and AVX2+FMA,
 * each inside a target region (TARGET_PUSH / TARGET_POP: GCC's target
 * pragmas or clang's attribute pragma, never -march=native), and attnref.c
 * picks one at run time from the CPU's features; on aarch64, NEON (baseline
 * there).
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"

#if ATTNREF_TILED || ATTNREF_NEON

#include <math.h>
#include <stdlib.h>
#if ATTNREF_TILED
#include <immintrin.h>
#endif
#if ATTNREF_NEON
#include <arm_neon.h>
#endif

static int64_t next_unit(const sdpa_job *job)
{
    return __atomic_fetch_add(job->next, 1, __ATOMIC_RELAXED);
}

/* Byte offsets of a tiled thread's scratch buffers (see tiled_impl.h), each
   64-byte aligned; offset[6] is the total, the last `rows_size` bytes of which
   hold the unit's row table. Returns 0 when the sizes overflow. */
static int tiled_scratch_layout(int64_t E, int64_t Evp, size_t real, size_t rows_size,
                                size_t offset[7])
{
    const uint64_t limit = (uint64_t)1 << 56;
    const uint64_t sizes[6] = {
        (uint64_t)TILE_ROWS * E * sizeof(double), (uint64_t)E * TILE_KEYS * sizeof(double),
        (uint64_t)TILE_KEYS * Evp * real, (uint64_t)TILE_ROWS * TILE_KEYS * sizeof(double),
        (uint64_t)TILE_ROWS * TILE_KEYS * real, (uint64_t)TILE_ROWS * Evp * real};
    uint64_t total = 0;
    if ((uint64_t)E > limit / (TILE_ROWS * sizeof(double))
        || (uint64_t)Evp > limit / (TILE_ROWS * sizeof(double)))
        return 0;
    for (int u = 0; u < 6; u++) {
        offset[u] = (size_t)total;
        total += (sizes[u] + 63) / 64 * 64;
    }
    if (total + rows_size > SIZE_MAX) return 0;
    offset[6] = (size_t)(total + rows_size);
    return 1;
}

static void *aligned_scratch(size_t bytes)
{
    void *memory = NULL;
    return posix_memalign(&memory, 64, bytes) == 0 ? memory : NULL;
}

#if ATTNREF_TILED

TARGET_PUSH("avx512f,avx512dq,fma")
#define SIMD_AVX512 1
#define VALUE_MR 6      /* 6 rows x 4 vectors of dims: 24 accumulators of 32 */
#define VALUE_NV 4

#define REAL float
#define REAL_IS_DOUBLE 0
#define EXP expf
#define LOG logf
#define TILED(name) tiled_##name##_avx512_f32
#define SCORE_MR 4      /* 4 rows x 4 x 8 keys: 16 accumulators of 32 */
#define SCORE_NV 4
#include "simd.h"
#include "tiled_impl.h"
#include "decode_impl.h"
#include "simd_end.h"
#undef SCORE_MR
#undef SCORE_NV

#define REAL double
#define REAL_IS_DOUBLE 1
#define EXP exp
#define LOG log
#define TILED(name) tiled_##name##_avx512_f64
#define SCORE_MR 4      /* Dot2: a sum and an error per lane, 16 of 32 */
#define SCORE_NV 2
#include "simd.h"
#include "tiled_impl.h"
#include "decode_impl.h"
#include "simd_end.h"
#undef SCORE_MR
#undef SCORE_NV

#undef SIMD_AVX512
#undef VALUE_MR
#undef VALUE_NV
TARGET_POP

TARGET_PUSH("avx2,fma")
#define SIMD_AVX2 1
#define VALUE_MR 6      /* 6 rows x 2 x 8 dims: 12 accumulators of 16 */
#define VALUE_NV 2

#define REAL float
#define REAL_IS_DOUBLE 0
#define EXP expf
#define LOG logf
#define TILED(name) tiled_##name##_avx2_f32
#define SCORE_MR 4      /* 4 rows x 2 x 4 keys: 8 accumulators of 16 */
#define SCORE_NV 2
#include "simd.h"
#include "tiled_impl.h"
#include "decode_impl.h"
#include "simd_end.h"
#undef SCORE_MR
#undef SCORE_NV

#define REAL double
#define REAL_IS_DOUBLE 1
#define EXP exp
#define LOG log
#define TILED(name) tiled_##name##_avx2_f64
#define SCORE_MR 2      /* Dot2: a sum and an error per lane, 8 of 16 */
#define SCORE_NV 2
#include "simd.h"
#include "tiled_impl.h"
#include "decode_impl.h"
#include "simd_end.h"
#undef SCORE_MR
#undef SCORE_NV

#undef SIMD_AVX2
#undef VALUE_MR
#undef VALUE_NV
TARGET_POP

#endif /* ATTNREF_TILED */

#if ATTNREF_NEON

#define SIMD_NEON 1
#define VALUE_MR 4      /* 4 rows x 4 x 4 floats (or 2 doubles): 16 accumulators of 32 */
#define VALUE_NV 4

#define REAL float
#define REAL_IS_DOUBLE 0
#define EXP expf
#define LOG logf
#define TILED(name) tiled_##name##_neon_f32
#define SCORE_MR 4      /* 4 rows x 4 x 2 keys: 16 accumulators of 32 */
#define SCORE_NV 4
#include "simd.h"
#include "tiled_impl.h"
#include "decode_impl.h"
#include "simd_end.h"
#undef SCORE_MR
#undef SCORE_NV

#define REAL double
#define REAL_IS_DOUBLE 1
#define EXP exp
#define LOG log
#define TILED(name) tiled_##name##_neon_f64
#define SCORE_MR 4      /* Dot2: a sum and an error per lane, 16 of 32 */
#define SCORE_NV 2
#include "simd.h"
#include "tiled_impl.h"
#include "decode_impl.h"
#include "simd_end.h"
#undef SCORE_MR
#undef SCORE_NV

#undef SIMD_NEON
#undef VALUE_MR
#undef VALUE_NV

#endif /* ATTNREF_NEON */

#endif /* ATTNREF_TILED || ATTNREF_NEON */
