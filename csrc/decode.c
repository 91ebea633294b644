/*
 * decode.c -- how a decoding call is cut into units (decode_impl.h computes
 * them): which calls take the decoding path, the key chunks of a row, the
 * waves of groups whose partial results are held at once, and a thread's
 * scratch.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* A call whose kv groups hold at most DECODE_ROWS rows: packing K and V into
   panels (tiled_impl.h) would cost about as much as using them. The test
   reads only kv_group and L, which attnref_row_block's splits keep (a piece
   shorter than the whole call is at least a row block long). */
int decode_suits(const attnref_params *p)
{
    int64_t rows;
    return p->kv_group <= DECODE_ROWS && mul_fits(p->kv_group, p->L, &rows)
           && rows <= DECODE_ROWS;
}

/* Keys per chunk: DECODE_CHUNK, or more when S has more than
   DECODE_MAX_CHUNKS of those; a multiple of TILE_KEYS. It depends on S
   alone, so the chunks, and the results, are the same for any thread count
   and any split of the call's rows. */
static int64_t chunk_keys(int64_t S)
{
    const int64_t fewest = S / DECODE_MAX_CHUNKS + 1;
    const int64_t chunk = fewest > DECODE_CHUNK ? fewest : DECODE_CHUNK;
    return (chunk + TILE_KEYS - 1) / TILE_KEYS * TILE_KEYS;
}

/* Units are (group, chunk) pairs, group-major. With one chunk a unit
   finishes its rows; with more, each writes its chunk's partial results and
   the unit that finishes a group's last chunk combines them, in chunk
   order. Groups run in waves whose partial results fit in about
   DECODE_PARTIAL_BYTES (at least one group a wave). Each thread takes a
   contiguous run of a wave's units (run_shares' static split, not the
   shared counter): a thread then knows the unit it computes next, whose
   keys follow in memory, and prefetches them while it ends the current
   one. The units are of equal work but where masks or bands differ. */
int run_decode(const sdpa_job *whole, size_t real_size)
{
    const attnref_params *p = whole->params;
    const int64_t groups = p->B * ((p->H - 1) / p->kv_group + 1);
    sdpa_job job = *whole;
    decode_plan plan;
    int64_t group_bytes = 0, wave = groups;
    int status = ATTNREF_OK;

    memset(&plan, 0, sizeof plan);
    plan.chunk = chunk_keys(p->S);
    plan.chunks = p->S == 0 ? 1 : (p->S - 1) / plan.chunk + 1;
    plan.group_rows = p->kv_group * p->L;
    if (plan.chunks > 1) {
        /* chunks x rows x (Ev + 2) REALs a group */
        if (!mul_fits(plan.chunks * plan.group_rows, p->Ev + 2, &group_bytes)
            || !mul_fits(group_bytes, (int64_t)real_size, &group_bytes)
            || (uint64_t)group_bytes > SIZE_MAX / 2)
            return ATTNREF_ERR_NOMEM;
        wave = DECODE_PARTIAL_BYTES / group_bytes;
        if (wave < 1) wave = 1;
        if (wave > groups) wave = groups;
        plan.partial = malloc((size_t)(wave * group_bytes));
        plan.done = malloc((size_t)wave * sizeof *plan.done);
        if (plan.partial == NULL || plan.done == NULL) {
            free(plan.partial);
            free(plan.done);
            return ATTNREF_ERR_NOMEM;
        }
    }
    job.decode = &plan;
    for (int64_t g0 = 0; g0 < groups && status == ATTNREF_OK; g0 += wave) {
        const int64_t g1 = groups - g0 < wave ? groups : g0 + wave;
        plan.group_begin = g0;
        if (plan.done != NULL) memset(plan.done, 0, (size_t)wave * sizeof *plan.done);
        job.next = NULL;
        job.row_begin = 0;
        job.row_end = (g1 - g0) * plan.chunks;
        status = run_shares(&job, job.row_end);
    }
    free(plan.partial);
    free(plan.done);
    return status;
}

/* Byte offsets of a decoding thread's scratch (see decode_impl.h), each
   64-byte aligned; offset[4] is the total, the last `rows_size` bytes of
   which hold the unit's row table. Returns 0 when the sizes overflow. */
int decode_scratch_layout(int64_t E, int64_t Evp, size_t real, size_t rows_size,
                          size_t offset[5])
{
    const uint64_t limit = (uint64_t)1 << 56;
    uint64_t sizes[4], total = 0;
    if ((uint64_t)E > limit / (DECODE_ROWS * sizeof(double))
        || (uint64_t)Evp > limit / (DECODE_ROWS * sizeof(double)))
        return 0;
    sizes[0] = (uint64_t)DECODE_ROWS * E * sizeof(double);
    sizes[1] = (uint64_t)DECODE_ROWS * TILE_KEYS * sizeof(double);
    sizes[2] = (uint64_t)DECODE_ROWS * TILE_KEYS * real;
    sizes[3] = (uint64_t)DECODE_ROWS * Evp * real;
    for (int u = 0; u < 4; u++) {
        offset[u] = (size_t)total;
        total += (sizes[u] + 63) / 64 * 64;
    }
    if (total + rows_size > SIZE_MAX) return 0;
    offset[4] = (size_t)(total + rows_size);
    return 1;
}
