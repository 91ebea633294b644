/*
 * attnref.h -- the fused scaled dot-product attention kernel.
 *
 * Shape letters (as in attnref/core.py and README):
 *   B batch (all leading dims before heads, flattened), H query heads,
 *   L query length, S key length, E query/key head dim, Ev value head dim.
 *   Query head h reads key/value head h / kv_group (GQA; kv_group = 1 is MHA).
 *
 * Per row i of every (b, h) the kernel computes, in one streaming pass over
 * key blocks (online softmax, Milakov & Gimelshein 2018; Dao et al. 2022):
 *   s_j   = scale * dot(q_i, k_j)               for visible keys j
 *   s_j   = softcap * tanh(s_j / softcap)        if softcap > 0
 *   s_j  += bias_ij                              if mask_kind == ATTNREF_MASK_BIAS
 *   out_i = sum_j exp(s_j - m) v_j / sum_j exp(s_j - m),  m = max_j s_j
 *   lse_i = m + log(sum_j exp(s_j - m))
 * Key j is visible from row i when
 *   band_lower <= j - i - diag_offset <= band_upper          (causal / window)
 *   and mask_ij != 0                             if mask_kind == ATTNREF_MASK_BOOL.
 * A row with no visible key, or whose visible scores are all -inf, gives
 * out_i = 0 (ATTNREF_ROWS_ZERO) or NaN (ATTNREF_ROWS_NAN) and lse_i = -inf.
 * A key whose weight exp(s_j - m) would be below the smallest normal number
 * of the float type (s_j - m < ln(FLT_MIN) or ln(DBL_MIN)) weighs exactly 0:
 * its value is not read (an inf there cannot reach out_i), m being the
 * row's final max (the streaming paths weigh against the running max, and
 * sum again the dims an inf or NaN value reached: sdpa_impl.h, pass 6).
 * A NaN score on a visible key gives NaN out_i and lse_i.
 *
 * Code paths (attnref_select_path): ATTNREF_PATH_PORTABLE, scalar C99 one
 * row at a time (sdpa_impl.h), the tiled AVX2 and AVX-512 paths on x86-64
 * (tiled_impl.h, simd.h; decode_impl.h for calls with at most 16 rows per
 * kv head), chosen at run time from the CPU's features, and the tiled NEON
 * path on aarch64. All compute the contract above; each is deterministic
 * for any thread count.
 *
 * Everything the CFFI builder must declare lives between the CFFI markers;
 * the builder reads this file, so it is the single source of declarations.
 */
#ifndef ATTNREF_H
#define ATTNREF_H

#include <stdint.h>

/* CFFI_BEGIN */
enum {
    ATTNREF_OK = 0,
    ATTNREF_ERR_NULL = 1,       /* a required pointer is NULL */
    ATTNREF_ERR_SIZE = 2,       /* a size is negative, or E < 1 */
    ATTNREF_ERR_OVERFLOW = 3,   /* an element offset overflows int64 */
    ATTNREF_ERR_OPTION = 4,     /* mask_kind, masked_rows, kv_group, threads, path, scores, scale or softcap out of range */
    ATTNREF_ERR_NOMEM = 5,      /* a scratch allocation failed */
    ATTNREF_ERR_THREAD = 6      /* reserved: a worker that cannot start runs on the caller instead */
};

enum {
    ATTNREF_MASK_NONE = 0,
    ATTNREF_MASK_BOOL = 1,      /* uint8, nonzero = may attend */
    ATTNREF_MASK_BIAS = 2       /* same float type as q, added to scores */
};

enum {
    ATTNREF_ROWS_ZERO = 0,
    ATTNREF_ROWS_NAN = 1
};

enum {
    ATTNREF_SCORES_EXACT = 0,   /* dot products carried in twice REAL's precision, rounded once */
    ATTNREF_SCORES_FAST = 1     /* dot products summed in REAL with FMA (plain float32 / float64) */
};

enum {
    ATTNREF_PATH_AUTO = 0,      /* the fastest the CPU supports */
    ATTNREF_PATH_PORTABLE = 1,  /* scalar C99, one row at a time */
    ATTNREF_PATH_AVX2 = 2,      /* tiled, AVX2 + FMA */
    ATTNREF_PATH_AVX512 = 3,    /* tiled, AVX-512F */
    ATTNREF_PATH_NEON = 4       /* tiled, NEON (aarch64) */
};

typedef struct {
    /* sizes */
    int64_t B, H, L, S, E, Ev;
    int64_t kv_group;           /* >= 1; kv head = h / kv_group */
    /* element strides of [batch, head, row]; elements within a row are
       contiguous (unit stride). 0 = broadcast along that dim. k and v head
       strides step over kv heads. */
    int64_t q_stride[3];
    int64_t k_stride[3];
    int64_t v_stride[3];
    int64_t out_stride[3];
    int64_t lse_stride[3];      /* ignored when lse == NULL */
    int64_t mask_stride[4];     /* [batch, head, query, key]; ignored without mask */
    int32_t mask_kind;          /* ATTNREF_MASK_* */
    int32_t masked_rows;        /* ATTNREF_ROWS_* */
    double scale;               /* finite, > 0 */
    double softcap;             /* 0 = off, else finite > 0 */
    int64_t diag_offset;        /* 0 = top-left alignment, S - L = bottom-right */
    int64_t band_lower;         /* visible: band_lower <= j - i - diag_offset ... */
    int64_t band_upper;         /* ... <= band_upper; use +-ATTNREF_BAND_UNBOUNDED */
    int32_t scores;             /* ATTNREF_SCORES_*: how score dot products are summed */
    int32_t threads;            /* >= 1 */
    int32_t path;               /* ATTNREF_PATH_* this call runs on; AUTO = the
                                   path attnref_select_path chose (read once) */
} attnref_params;

int attnref_sdpa_f32(const attnref_params *params, float *out, float *lse,
                     const float *q, const float *k, const float *v,
                     const void *mask);
int attnref_sdpa_f64(const attnref_params *params, double *out, double *lse,
                     const double *q, const double *k, const double *v,
                     const void *mask);

/* The backward pass (backward.c): dq dense [B, H, L, E], dk [B, H/kv_group, S, E],
   dv [B, H/kv_group, S, Ev]; grad_out and the forward's out use out_stride.
   lse (lse_stride) may be NULL: the weights then come from each row's max
   and sum (2 numbers per query row, the call's one buffer beyond its
   workers' blocks). dmask, when not NULL, gets dense [B, H, L, S] the
   gradient of the scores after softcap (of a bias mask): p (dp - D), 0 where
   the weight is 0, NaN on a fully masked row under ATTNREF_ROWS_NAN. Runs on
   params->path as the forward (the SIMD paths in backward_tiled.c);
   bit-identical for any thread count. */
int attnref_sdpa_backward_f32(const attnref_params *params, float *dq, float *dk, float *dv,
                              const float *grad_out, const float *out, const float *lse,
                              const float *q, const float *k, const float *v,
                              const void *mask, float *dmask);
int attnref_sdpa_backward_f64(const attnref_params *params, double *dq, double *dk,
                              double *dv, const double *grad_out, const double *out,
                              const double *lse, const double *q, const double *k,
                              const double *v, const void *mask, double *dmask);

const char *attnref_kernel_path(void);   /* name of the code path in use */
int attnref_select_path(int path);       /* ATTNREF_PATH_*; ERR_OPTION if the CPU lacks it */
int attnref_path_supported(int path);    /* 1 when this build and CPU can run it */
int attnref_exp_f32(float *out, const float *x, int64_t n);    /* the path's exp */
int attnref_exp_f64(double *out, const double *x, int64_t n);
int64_t attnref_band_unbounded(void);    /* value of ATTNREF_BAND_UNBOUNDED */
int64_t attnref_row_block(int64_t kv_group, int path); /* see attnref.c */
int64_t attnref_backward_fused_pairs(int path);        /* see backward.c */
/* CFFI_END */

/* Large enough for "no bound", small enough that i + diag_offset + bound
   never overflows int64 for any valid size (sizes are < 2^61). */
#define ATTNREF_BAND_UNBOUNDED ((int64_t)1 << 62)

#endif
