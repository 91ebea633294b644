/*
 * internal.h -- what the kernel's C files share and the public header does
 * not say: tile sizes, the work of one call (sdpa_job), int64 arithmetic that
 * cannot overflow, the band of a row, and the functions each file gives the
 * others. Not part of the contract (that is attnref.h).
 *
 *   checks.c    argument checks of a call
 *   threads.c   rows and units over threads (a pool of workers)
 *   portable.c  the portable path: score dot products and sdpa_impl.h
 *   tiled.c     the SIMD paths: tiled_impl.h and decode_impl.h per instruction set
 *   decode.c    how a decoding call (few rows per kv head) is cut into units
 *   attnref.c   code paths and the public entries
 */
#ifndef ATTNREF_INTERNAL_H
#define ATTNREF_INTERNAL_H

#include "attnref.h"

#include <stddef.h>
#include <stdint.h>

/* The tiled SIMD paths this build compiles (GCC and clang both define
   __GNUC__): ATTNREF_TILED the x86-64 ones, AVX2 and AVX-512, each in a
   target region of tiled.c and chosen at run time from the CPU's features;
   ATTNREF_NEON the aarch64 one, NEON being baseline there. */
#if defined(__GNUC__) && defined(__x86_64__)
#define ATTNREF_TILED 1
#else
#define ATTNREF_TILED 0
#endif
#if defined(__GNUC__) && defined(__aarch64__) && defined(__ARM_NEON)
#define ATTNREF_NEON 1
#else
#define ATTNREF_NEON 0
#endif

/* TARGET_PUSH("isa,..."): the functions defined until TARGET_POP may use
   those instruction sets (GCC's target names, which clang shares); code
   outside stays baseline, so the extension runs on any CPU of the arch. */
#define TARGET_PRAGMA(text) _Pragma(#text)
#if defined(__clang__)
#define TARGET_PUSH(isa) \
    TARGET_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define TARGET_POP TARGET_PRAGMA(clang attribute pop)
#else
#define TARGET_PUSH(isa) TARGET_PRAGMA(GCC push_options) TARGET_PRAGMA(GCC target(isa))
#define TARGET_POP TARGET_PRAGMA(GCC pop_options)
#endif

/* shared between the kernel's files, never exported from the extension */
#if defined(__GNUC__)
#define INTERNAL __attribute__((visibility("hidden")))
#else
#define INTERNAL
#endif

/* Keys per online-softmax block of the portable path: scratch per thread is
   O(KEY_BLOCK + Ev). */
#define KEY_BLOCK 64
/* Tiled path: query rows per unit and keys per tile; scratch per thread is
   O(TILE_ROWS (E + Ev + TILE_KEYS) + TILE_KEYS (E + Ev)). A unit packs each
   key tile once for all its rows: 256 rows (rather than 64) cut that
   packing per row by 4 (2-6% faster than 128 rows, 5-10% than 64, non-causal
   float32 on an AVX-512 Xeon, both paths); its scores and weights
   (TILE_ROWS x TILE_KEYS) then sit in the second-level cache. */
#define TILE_ROWS 256
#define TILE_KEYS 64
/* Decoding (decode_impl.h, decode.c): a call whose kv groups hold at most
   DECODE_ROWS query rows (kv_group * L) streams K and V rows as they are,
   keys split into chunks of DECODE_CHUNK keys or more (at most
   DECODE_MAX_CHUNKS per row) whose partial results are combined in chunk
   order; the partial results of one wave of groups take at most about
   DECODE_PARTIAL_BYTES. DECODE_ROWS stays below TILE_ROWS / 2: a piece of a
   split call (attnref_row_block) then chooses the path the whole call does. */
#define DECODE_ROWS 16
#define DECODE_CHUNK 1024
#define DECODE_MAX_CHUNKS 256
#define DECODE_PARTIAL_BYTES ((int64_t)16 << 20)
/* Independent partial sums in a dot product: the compiler can vectorise them
   without reassociating (no -ffast-math). */
#define DOT_LANES 16
/* ln of the smallest normal float and double, rounded to the type: a key with
   s_j - m below it weighs exactly 0 on every path (attnref.h; the vector exp
   of simd.h flushes there too), as attnref.core's reference does. */
#define LOG_FLT_MIN -87.33654475f
#define LOG_DBL_MIN -708.39641853226408

/* ------------------------------------------------------------------------ */
/* int64 arithmetic that cannot overflow                                     */

/* *r = a * b for a, b >= 0; returns 0 when that overflows. */
static inline int mul_fits(int64_t a, int64_t b, int64_t *r)
{
    if (b != 0 && a > INT64_MAX / b) return 0;
    *r = a * b;
    return 1;
}

/* *r = a + b for a, b >= 0; returns 0 when that overflows. */
static inline int add_fits(int64_t a, int64_t b, int64_t *r)
{
    if (a > INT64_MAX - b) return 0;
    *r = a + b;
    return 1;
}

/* a + b, saturated to [INT64_MIN, INT64_MAX]: any band arithmetic stays
   monotone, so clamping the result to [0, S] afterwards is exact. */
static inline int64_t add_saturated(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b) return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b) return INT64_MIN;
    return a + b;
}

/* n rounded up to a multiple of m (n >= 0, m > 0) */
static inline int64_t round_up(int64_t n, int64_t m)
{
    return (n + m - 1) / m * m;
}

static inline int64_t clamp(int64_t x, int64_t lo, int64_t hi)
{
    return x < lo ? lo : x > hi ? hi : x;
}

/* Keys j visible from row i by the band, band_lower <= j - i - diag_offset
   <= band_upper, as the half-open range [*j_begin, *j_end) within [0, S). */
static inline void band_keys(const attnref_params *p, int64_t i,
                      int64_t *j_begin, int64_t *j_end)
{
    int64_t diag = add_saturated(i, p->diag_offset);
    *j_begin = clamp(add_saturated(diag, p->band_lower), 0, p->S);
    *j_end = clamp(add_saturated(add_saturated(diag, p->band_upper), 1), 0, p->S);
    if (*j_end < *j_begin) *j_end = *j_begin;  /* band_lower > band_upper: empty */
}

/* ------------------------------------------------------------------------ */
/* the work of a call                                                        */

/* A decoding call's key chunks and the partial results of one wave of its
   groups (decode.c; decode_impl.h says what a group and a unit are). */
typedef struct decode_plan {
    int64_t chunk;         /* keys per chunk: chunk c is [c chunk, (c + 1) chunk) */
    int64_t chunks;        /* chunks per row, units per group */
    int64_t group_begin;   /* the wave's first group */
    int64_t group_rows;    /* rows of a whole group, kv_group L */
    void *partial;         /* (groups of the wave, chunks, group_rows, Ev + 2) REALs:
                              m (NaN for a NaN row), l, acc; NULL with one chunk */
    int64_t *done;         /* per group of the wave: its chunks finished */
} decode_plan;

/* The work of one call, or a thread's share of it. The portable path takes
   the contiguous range [row_begin, row_end) of flattened (b, h, i) rows;
   the tiled and decoding paths take units (see tiled_impl.h, decode_impl.h)
   from the shared counter *next until it reaches row_end, the number of
   units. `rows` is the float or double worker of the path. */
typedef struct sdpa_job {
    int (*rows)(const struct sdpa_job *job);
    const attnref_params *params;
    void *out, *lse;
    const void *q, *k, *v, *mask;
    int64_t row_begin, row_end;
    int64_t block, blocks, head_chunk;   /* tiled: positions per unit, ... */
    int64_t *next;                       /* tiled: next unit to take */
    const decode_plan *decode;           /* decoding: chunks and partial results */
    int status;
} sdpa_job;

typedef int (*rows_fn)(const sdpa_job *job);

/* checks.c: ATTNREF_OK or the ATTNREF_ERR_* of the first problem */
INTERNAL int check_call(const attnref_params *p, const void *out, const void *lse,
                        const void *q, const void *k, const void *v, const void *mask);

/* attnref.c: 1 when this build and CPU can run the path */
INTERNAL int path_supported(int path);

/* threads.c: runs `whole` over its `count` rows or units */
INTERNAL int run_shares(const sdpa_job *whole, int64_t count);

/* portable.c */
INTERNAL double dot_f32(const float *a, const float *b, int64_t n);
INTERNAL double dot_f64(const double *a, const double *b, int64_t n);
INTERNAL float dot_fast_f32(const float *a, const float *b, int64_t n);
INTERNAL double dot_fast_f64(const double *a, const double *b, int64_t n);
INTERNAL int sdpa_rows_f32(const sdpa_job *job);
INTERNAL int sdpa_rows_f64(const sdpa_job *job);
INTERNAL void nonfinite_dims_f32(const attnref_params *p, const float *q_bhi,
                                 const float *k_bh, const float *v_bh,
                                 const uint8_t *allowed_bhi, const float *bias_bhi,
                                 int64_t j_begin, int64_t j_end, float m, float l,
                                 const float *acc, float *out_bhi);
INTERNAL void nonfinite_dims_f64(const attnref_params *p, const double *q_bhi,
                                 const double *k_bh, const double *v_bh,
                                 const uint8_t *allowed_bhi, const double *bias_bhi,
                                 int64_t j_begin, int64_t j_end, double m, double l,
                                 const double *acc, double *out_bhi);

/* decode.c: whether a call suits the decoding path, its run (rows_fn the
   path's decoding worker, real_size sizeof(REAL)), and the byte offsets of
   a decoding thread's scratch (0 when they overflow) */
INTERNAL int decode_suits(const attnref_params *p);
INTERNAL int run_decode(const sdpa_job *whole, size_t real_size);
INTERNAL int decode_scratch_layout(int64_t E, int64_t Evp, size_t real, size_t rows_size,
                                   size_t offset[5]);

/* tiled.c: a thread's share of units (tiled or decoding), and the path's
   exp over an array */
#define TILED_ENTRIES(isa) \
    INTERNAL int tiled_rows_##isa##_f32(const sdpa_job *job); \
    INTERNAL int tiled_rows_##isa##_f64(const sdpa_job *job); \
    INTERNAL int tiled_decode_rows_##isa##_f32(const sdpa_job *job); \
    INTERNAL int tiled_decode_rows_##isa##_f64(const sdpa_job *job); \
    INTERNAL int tiled_exp_array_##isa##_f32(float *out, const float *x, int64_t n); \
    INTERNAL int tiled_exp_array_##isa##_f64(double *out, const double *x, int64_t n);
#if ATTNREF_TILED
TILED_ENTRIES(avx2)
TILED_ENTRIES(avx512)
#endif
#if ATTNREF_NEON
TILED_ENTRIES(neon)
#endif
#undef TILED_ENTRIES

#endif
