/*
 * portable.c -- the portable path: score dot products about twice as
 * precise as their operands (ATTNREF_SCORES_EXACT) or plain
 * (ATTNREF_SCORES_FAST), and sdpa_impl.h instantiated for float and for
 * double (scalar C99, one row at a time, any compiler).
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"

#include <math.h>
#include <stdlib.h>

/* Why not a plain dot: the equivalence rule allows the kernel twice the error
   of a plain implementation in the same dtype. Where q.k cancels heavily
   (|q.k| << sum_c |q_c k_c|, e.g. large scale with softcap) the score error
   of any plain dot is a random draw as large as the reference's own, and
   "twice" then fails by chance. A dot carried in twice the precision leaves
   only the final rounding. */

/* sum of DOT_LANES partial sums, pairwise */
static double sum_lanes(double *lane)
{
    for (int width = DOT_LANES / 2; width > 0; width /= 2)
        for (int u = 0; u < width; u++)
            lane[u] += lane[u + width];
    return lane[0];
}

/* float: a product of two floats is exact in double (24 + 24 <= 53 bits), so
   the sum is carried in double; the caller rounds the score to float once. */
double dot_f32(const float *a, const float *b, int64_t n)
{
    double lane[DOT_LANES] = {0};
    int64_t c = 0;
    for (; c + DOT_LANES <= n; c += DOT_LANES)
        for (int u = 0; u < DOT_LANES; u++)
            lane[u] += (double)a[c + u] * b[c + u];
    for (int u = 0; c < n; c++, u++)
        lane[u] += (double)a[c] * b[c];
    return sum_lanes(lane);
}

/* Dekker's TwoProduct with Veltkamp's split: a * b == product + the result,
   exactly (no FMA needed; the build disables FP contraction). */
static double product_error(double a, double b, double product)
{
    const double split = 134217729.0;  /* 2^27 + 1 */
    const double a_big = split * a, b_big = split * b;
    const double a_hi = a_big - (a_big - a), a_lo = a - a_hi;
    const double b_hi = b_big - (b_big - b), b_lo = b - b_hi;
    return ((a_hi * b_hi - product) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo;
}

/* Knuth's TwoSum: *sum + x == new *sum + the result, exactly. */
static double add_exactly(double *sum, double x)
{
    const double total = *sum + x, z = total - *sum;
    const double error = (*sum - (total - z)) + (x - z);
    *sum = total;
    return error;
}

/* double: Dot2 of Ogita, Rump & Oishi ("Accurate sum and dot product", SIAM
   J. Sci. Comput. 26(6), 2005, Alg. 5.3): every rounding error of products
   and sums is kept and added back once, as if computed in twice the
   precision. */
double dot_f64(const double *a, const double *b, int64_t n)
{
    double lane[DOT_LANES] = {0}, error[DOT_LANES] = {0};
    double total = 0, total_error = 0;
    int64_t c = 0;
    for (; c + DOT_LANES <= n; c += DOT_LANES)
        for (int u = 0; u < DOT_LANES; u++) {
            const double product = a[c + u] * b[c + u];
            error[u] += add_exactly(&lane[u], product)
                        + product_error(a[c + u], b[c + u], product);
        }
    for (int u = 0; c < n; c++, u++) {
        const double product = a[c] * b[c];
        error[u] += add_exactly(&lane[u], product) + product_error(a[c], b[c], product);
    }
    for (int u = 0; u < DOT_LANES; u++)
        total_error += add_exactly(&total, lane[u]) + error[u];
    /* the split overflows for |a| or |b| near DBL_MAX: keep the plain sum */
    return isfinite(total_error) ? total + total_error : total;
}

/* ATTNREF_SCORES_FAST: a plain sum in the operands' type, in DOT_LANES
   partial sums added pairwise at the end (as the tiled paths' registers do,
   the error of a plain dot product: Higham 2002, eq. 3.5) */
float dot_fast_f32(const float *a, const float *b, int64_t n)
{
    float lane[DOT_LANES] = {0};
    int64_t c = 0;
    for (; c + DOT_LANES <= n; c += DOT_LANES)
        for (int u = 0; u < DOT_LANES; u++)
            lane[u] += a[c + u] * b[c + u];
    for (int u = 0; c < n; c++, u++)
        lane[u] += a[c] * b[c];
    for (int width = DOT_LANES / 2; width > 0; width /= 2)
        for (int u = 0; u < width; u++)
            lane[u] += lane[u + width];
    return lane[0];
}

double dot_fast_f64(const double *a, const double *b, int64_t n)
{
    double lane[DOT_LANES] = {0};
    int64_t c = 0;
    for (; c + DOT_LANES <= n; c += DOT_LANES)
        for (int u = 0; u < DOT_LANES; u++)
            lane[u] += a[c + u] * b[c + u];
    for (int u = 0; c < n; c++, u++)
        lane[u] += a[c] * b[c];
    return sum_lanes(lane);
}

#define REAL float
#define EXP expf
#define LOG logf
#define LOG_MIN LOG_FLT_MIN
#define DOT dot_f32
#define DOT_FAST dot_fast_f32
#define SCORE_DOT score_dot_f32
#define AXPY axpy_f32
#define SDPA_ROWS sdpa_rows_f32
#define NONFINITE_DIMS nonfinite_dims_f32
#include "sdpa_impl.h"

#define REAL double
#define EXP exp
#define LOG log
#define LOG_MIN LOG_DBL_MIN
#define DOT dot_f64
#define DOT_FAST dot_fast_f64
#define SCORE_DOT score_dot_f64
#define AXPY axpy_f64
#define SDPA_ROWS sdpa_rows_f64
#define NONFINITE_DIMS nonfinite_dims_f64
#include "sdpa_impl.h"
