/*
 * backward.h -- what backward.c (the entries, the portable path) and
 * backward_tiled.c (the SIMD paths) share: the work of one backward call.
 * Not part of the contract (that is attnref.h).
 *
 * Every path runs the call as passes over units, on threads.c's workers
 * (run_shares, the forward's pool); a unit is computed by one worker in a
 * fixed order of operations and owns what it writes, so the result is
 * bit-identical for any thread count and there are no atomics:
 *   BWD_PASS_STATS  (only without lse) each query row's max m and sum l
 *   BWD_PASS_DQ     dq, owned by query rows (portable: a row; tiled: a block)
 *   BWD_PASS_DKDV   dk and dv, owned by keys (portable: a key; tiled: a block)
 *   BWD_PASS_FUSED  (tiled, instead of the two above, when the call has at
 *                   least BWD_FUSED_UNITS (b, kv head) pairs) dq, dk and dv
 *                   of one (b, kv head), each product computed once
 * Which passes run depends on the shapes only, never on the thread count.
 */
#ifndef ATTNREF_BACKWARD_H
#define ATTNREF_BACKWARD_H

#include "internal.h"

enum { BWD_PASS_STATS = 1, BWD_PASS_DQ = 2, BWD_PASS_DKDV = 3, BWD_PASS_FUSED = 4 };

/* What the tiled path's walk (backward_tiled_impl.h, bwd_walk) sums: the
   rows' statistics, max m (first sweep) or l = sum exp(s - m) (second),
   without the forward's lse; dq (and dmask); dk and dv. */
enum { BWD_SUM_MAX = 1, BWD_SUM_EXP = 2, BWD_SUM_DQ = 4, BWD_SUM_DKDV = 8 };

/* Tiled backward: query rows per row block (the rows a dk, dv register
   block is held across; a multiple of 4), keys per block (a multiple of
   four times every vector width), query rows per query block (loaded once
   per walk over its key blocks) and per dq unit (a multiple of BWD_ROWS).
   Scratch per worker is O(BWD_KEYS (E + Ev) + BWD_QBLOCK (E + Ev)). */
#define BWD_ROWS 32
#define BWD_KEYS 64
#define BWD_QBLOCK 128
/* (b, kv head) pairs from which the tiled path fuses dq with dk, dv: 5
   products per score instead of 7, but units only as many as the pairs
   (enough for the threads of a desktop CPU from 8). */
#define BWD_FUSED_UNITS 8

/* One backward call. The row statistics: with the forward's lse, m = lse
   and l = 1; without it, `stats` holds (m, l) per query row (2 B H L REALs,
   written by BWD_PASS_STATS). The sdpa_job a pass gives run_shares points
   at this through its `out` field. */
typedef struct bwd_call {
    const attnref_params *p;
    void *dq, *dk, *dv, *dmask;   /* dmask: NULL, or dense [B, H, L, S] */
    const void *grad_out, *out, *lse, *q, *k, *v, *mask;
    void *stats;
    int pass;
} bwd_call;

/* backward_tiled.c: a worker of the SIMD path (units from job->next) */
#define BWD_TILED_ENTRIES(isa) \
    INTERNAL int bwd_rows_##isa##_f32(const sdpa_job *job); \
    INTERNAL int bwd_rows_##isa##_f64(const sdpa_job *job);
#if ATTNREF_TILED
BWD_TILED_ENTRIES(avx2)
BWD_TILED_ENTRIES(avx512)
#endif
#if ATTNREF_NEON
BWD_TILED_ENTRIES(neon)
#endif
#undef BWD_TILED_ENTRIES

#endif
