/*
 * kernel_driver.c -- runs the C kernel (the .c files of csrc/, linked in)
 * outside Python, so that a path this machine cannot run natively can run
 * under an emulator: the NEON path under qemu-aarch64 on an x86-64 host
 * (tests/test_kernel_driver.py builds it and judges what it writes).
 * It computes and writes; it judges nothing.
 *
 *   kernel_driver paths
 *       prints the code paths this build and CPU can run, one name a line
 *   kernel_driver sdpa CASES OUT PATHS THREADS
 *       runs every case of the file CASES on each path of the comma-separated
 *       PATHS with each thread count of THREADS, and writes to OUT, per case,
 *       per path, per thread count: out (B H L Ev values) then lse (B H L)
 *   kernel_driver backward CASES OUT PATHS THREADS
 *       as sdpa, with a backward case file (grad_out after each case), and
 *       writes per case, per path, per thread count: the forward's out and
 *       lse on that path and thread count, then from the backward given
 *       them dq (B H L E), dk (B H/kv_group S E), dv (B H/kv_group S Ev)
 *       and, with a bias mask, dmask (B H L S), then the same four from the
 *       backward given out alone (the weights from each row's max and sum)
 *   kernel_driver exp IN OUT PATH
 *       writes exp of each value of IN by PATH's exp (attnref_exp_*)
 *
 * Files are native-endian (writer and reader run on one host; qemu-user
 * emulates a little-endian aarch64 on a little-endian x86-64).
 *   CASES: "ATTNCASE", int64 count, then per case int64 is_double, B, H, L,
 *          S, E, Ev, kv_group, mask_kind, masked_rows, diag_offset,
 *          band_lower, band_upper; double scale, softcap; then q (B, H, L,
 *          E), k and v (B, H / kv_group, S, E or Ev) and, with a mask, the
 *          mask (B, H, L, S) of uint8 (bool) or of the float type (bias),
 *          all C-contiguous.
 *   backward CASES: "ATTNGRAD", int64 count, then per case the record of
 *          CASES followed by grad_out (B, H, L, Ev) of the float type.
 *   IN:    int64 is_double, int64 n, then n values of that type.
 * Exit status 0 on success, 1 when the kernel returns an error, 2 on a bad
 * command line or file (one line on stderr).
 */
#include "attnref.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the kernel's names of its paths, indexed by ATTNREF_PATH_* (as
   attnref.kernel.CODE_PATHS) */
static const char *const PATH_NAMES[] = {"auto", "portable", "avx2", "avx512", "neon"};
#define PATH_COUNT ((int)(sizeof PATH_NAMES / sizeof PATH_NAMES[0]))
/* a case larger than this many elements in any array is refused */
#define MAX_ELEMENTS ((int64_t)1 << 26)
#define MAX_LIST 8

static void fail(int status, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fputs("kernel_driver: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    exit(status);
}

static void read_exactly(FILE *file, void *into, size_t bytes, const char *what)
{
    if (bytes > 0 && fread(into, 1, bytes, file) != bytes)
        fail(2, "the input file ends inside %s", what);
}

static void write_exactly(FILE *file, const void *from, size_t bytes)
{
    if (bytes > 0 && fwrite(from, 1, bytes, file) != bytes)
        fail(2, "cannot write the output file");
}

static void *allocate(int64_t count, size_t size)
{
    void *memory = malloc(count > 0 ? (size_t)count * size : 1);
    if (memory == NULL) fail(2, "out of memory");
    return memory;
}

/* the product of n sizes, each in [0, MAX_ELEMENTS], refused beyond MAX_ELEMENTS */
static int64_t elements(const char *what, int n, ...)
{
    va_list args;
    int64_t total = 1;
    va_start(args, n);
    for (int i = 0; i < n; i++) {
        const int64_t size = va_arg(args, int64_t);
        if (size < 0 || size > MAX_ELEMENTS) fail(2, "%s: a size is out of range", what);
        total = size == 0 || total <= MAX_ELEMENTS / size ? total * size : MAX_ELEMENTS + 1;
    }
    va_end(args);
    if (total > MAX_ELEMENTS) fail(2, "%s has more than %lld elements", what,
                                   (long long)MAX_ELEMENTS);
    return total;
}

static int path_code(const char *name)
{
    for (int path = 1; path < PATH_COUNT; path++)
        if (strcmp(name, PATH_NAMES[path]) == 0) return path;
    fail(2, "unknown code path '%s'", name);
    return 0;
}

/* the comma-separated items of `text` as path codes (paths != 0) or
   thread counts in [1, 64]; returns how many */
static int parse_list(char *text, int paths, int *items)
{
    int n = 0;
    for (char *item = strtok(text, ","); item != NULL; item = strtok(NULL, ",")) {
        if (n == MAX_LIST) fail(2, "more than %d items in a list", MAX_LIST);
        if (paths) {
            items[n] = path_code(item);
        } else {
            char *end;
            const long threads = strtol(item, &end, 10);
            if (*end != '\0' || threads < 1 || threads > 64)
                fail(2, "a thread count must be an integer in [1, 64], got '%s'", item);
            items[n] = (int)threads;
        }
        n++;
    }
    if (n == 0) fail(2, "an empty list");
    return n;
}

static void select_path(int path)
{
    if (attnref_select_path(path) != ATTNREF_OK)
        fail(2, "code path '%s' is not supported by this build and CPU", PATH_NAMES[path]);
}

static int list_paths(void)
{
    for (int path = 1; path < PATH_COUNT; path++)
        if (attnref_path_supported(path)) printf("%s\n", PATH_NAMES[path]);
    return 0;
}

/* contiguous strides of a (B, heads, rows, width) array */
static void contiguous(int64_t stride[3], int64_t heads, int64_t rows, int64_t width)
{
    stride[2] = width;
    stride[1] = rows * width;
    stride[0] = heads * rows * width;
}

/* one case of a case file: the call's parameters and its operands */
typedef struct {
    attnref_params p;
    int is_double;
    size_t real, mask_size;
    int64_t Hkv, nq, nk, nv, nm, no, nl, nd;   /* elements of q, k, v, mask, out, lse, dmask */
    void *q, *k, *v, *mask, *grad_out;         /* grad_out: backward files only */
    char what[64];
} attn_case;

/* reads case `index` (and, for a backward file, its grad_out) */
static void read_case(FILE *in, int64_t index, int with_grad, attn_case *c)
{
    int64_t field[13];
    double real_field[2];
    attnref_params *p = &c->p;
    memset(c, 0, sizeof *c);
    snprintf(c->what, sizeof c->what, "case %lld", (long long)index);
    read_exactly(in, field, sizeof field, c->what);
    read_exactly(in, real_field, sizeof real_field, c->what);
    c->is_double = (int)field[0];
    p->B = field[1], p->H = field[2], p->L = field[3], p->S = field[4], p->E = field[5];
    p->Ev = field[6], p->kv_group = field[7];
    p->mask_kind = (int32_t)field[8], p->masked_rows = (int32_t)field[9];
    p->diag_offset = field[10], p->band_lower = field[11], p->band_upper = field[12];
    p->scale = real_field[0], p->softcap = real_field[1];
    if ((field[0] != 0 && field[0] != 1) || p->kv_group < 1 || p->H % p->kv_group != 0
        || field[8] < ATTNREF_MASK_NONE || field[8] > ATTNREF_MASK_BIAS)
        fail(2, "%s: is_double, kv_group or mask_kind out of range", c->what);
    c->real = c->is_double ? sizeof(double) : sizeof(float);
    c->Hkv = p->H / p->kv_group;
    c->nq = elements("q", 4, p->B, p->H, p->L, p->E);
    c->nk = elements("k", 4, p->B, c->Hkv, p->S, p->E);
    c->nv = elements("v", 4, p->B, c->Hkv, p->S, p->Ev);
    c->nm = p->mask_kind == ATTNREF_MASK_NONE ? 0
        : elements("mask", 4, p->B, p->H, p->L, p->S);
    c->mask_size = p->mask_kind == ATTNREF_MASK_BOOL ? 1 : c->real;
    c->no = elements("out", 4, p->B, p->H, p->L, p->Ev);
    c->nl = elements("lse", 3, p->B, p->H, p->L);
    c->nd = p->mask_kind == ATTNREF_MASK_BIAS ? c->nm : 0;
    c->q = allocate(c->nq, c->real), c->k = allocate(c->nk, c->real);
    c->v = allocate(c->nv, c->real), c->mask = allocate(c->nm, c->mask_size);
    c->grad_out = allocate(with_grad ? c->no : 0, c->real);
    read_exactly(in, c->q, (size_t)c->nq * c->real, c->what);
    read_exactly(in, c->k, (size_t)c->nk * c->real, c->what);
    read_exactly(in, c->v, (size_t)c->nv * c->real, c->what);
    read_exactly(in, c->mask, (size_t)c->nm * c->mask_size, c->what);
    if (with_grad) read_exactly(in, c->grad_out, (size_t)c->no * c->real, c->what);
    contiguous(p->q_stride, p->H, p->L, p->E);
    contiguous(p->k_stride, c->Hkv, p->S, p->E);
    contiguous(p->v_stride, c->Hkv, p->S, p->Ev);
    contiguous(p->out_stride, p->H, p->L, p->Ev);
    contiguous(p->lse_stride, p->H, p->L, 1);
    contiguous(p->mask_stride, p->H, p->L, p->S);
    p->mask_stride[3] = 1;
}

static void free_case(attn_case *c)
{
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->mask);
    free(c->grad_out);
}

/* the forward of case `c` on path and threads into o and lse; a kernel
   error ends the run */
static void forward(attn_case *c, int path, int threads, void *o, void *lse)
{
    attnref_params *p = &c->p;
    const void *mask = p->mask_kind ? c->mask : NULL;
    p->path = path;
    p->threads = threads;
    const int status = c->is_double
        ? attnref_sdpa_f64(p, o, lse, c->q, c->k, c->v, mask)
        : attnref_sdpa_f32(p, o, lse, c->q, c->k, c->v, mask);
    if (status != ATTNREF_OK)
        fail(1, "%s on path %s with %d threads: the forward returned error %d", c->what,
             PATH_NAMES[path], threads, status);
}

static void run_case(FILE *in, FILE *out, int64_t index, const int *paths, int path_count,
                     const int *threads, int thread_count)
{
    attn_case c;
    read_case(in, index, 0, &c);
    void *o = allocate(c.no, c.real), *lse = allocate(c.nl, c.real);
    for (int a = 0; a < path_count; a++)
        for (int t = 0; t < thread_count; t++) {
            forward(&c, paths[a], threads[t], o, lse);
            write_exactly(out, o, (size_t)c.no * c.real);
            write_exactly(out, lse, (size_t)c.nl * c.real);
        }
    free(o);
    free(lse);
    free_case(&c);
}

/* the backward of a case: per path and thread count, the forward's out and
   lse on that path, then dq, dk, dv (and dmask with a bias mask) given
   them, then again given out alone (the weights from each row's max and
   sum) */
static void run_backward_case(FILE *in, FILE *out, int64_t index, const int *paths,
                              int path_count, const int *threads, int thread_count)
{
    attn_case c;
    read_case(in, index, 1, &c);
    const attnref_params *p = &c.p;
    void *o = allocate(c.no, c.real), *lse = allocate(c.nl, c.real);
    void *dq = allocate(c.nq, c.real), *dk = allocate(c.nk, c.real);
    void *dv = allocate(c.nv, c.real), *dmask = allocate(c.nd, c.real);
    const void *mask = p->mask_kind ? c.mask : NULL;
    for (int a = 0; a < path_count; a++)
        for (int t = 0; t < thread_count; t++) {
            forward(&c, paths[a], threads[t], o, lse);
            write_exactly(out, o, (size_t)c.no * c.real);
            write_exactly(out, lse, (size_t)c.nl * c.real);
            for (int given = 1; given >= 0; given--) {
                const void *saved = given ? lse : NULL;
                void *dm = p->mask_kind == ATTNREF_MASK_BIAS ? dmask : NULL;
                const int status = c.is_double
                    ? attnref_sdpa_backward_f64(p, dq, dk, dv, c.grad_out, o, saved, c.q, c.k,
                                                c.v, mask, dm)
                    : attnref_sdpa_backward_f32(p, dq, dk, dv, c.grad_out, o, saved, c.q, c.k,
                                                c.v, mask, dm);
                if (status != ATTNREF_OK)
                    fail(1, "%s on path %s with %d threads: the backward returned error %d",
                         c.what, PATH_NAMES[paths[a]], threads[t], status);
                write_exactly(out, dq, (size_t)c.nq * c.real);
                write_exactly(out, dk, (size_t)c.nk * c.real);
                write_exactly(out, dv, (size_t)c.nv * c.real);
                write_exactly(out, dmask, (size_t)c.nd * c.real);
            }
        }
    free(o);
    free(lse);
    free(dq);
    free(dk);
    free(dv);
    free(dmask);
    free_case(&c);
}

typedef void (*case_runner)(FILE *in, FILE *out, int64_t index, const int *paths,
                            int path_count, const int *threads, int thread_count);

/* runs `run` on every case of the file `cases` (header `magic`) */
static int run_cases(const char *magic_expected, case_runner run, const char *cases,
                     const char *output, char *path_list, char *thread_list)
{
    int paths[MAX_LIST], threads[MAX_LIST];
    const int path_count = parse_list(path_list, 1, paths);
    const int thread_count = parse_list(thread_list, 0, threads);
    char magic[8];
    int64_t count;
    FILE *in, *out;
    for (int a = 0; a < path_count; a++) select_path(paths[a]);
    in = fopen(cases, "rb");
    if (in == NULL) fail(2, "cannot open %s", cases);
    read_exactly(in, magic, sizeof magic, "the header");
    if (memcmp(magic, magic_expected, sizeof magic) != 0)
        fail(2, "%s is not a %.8s file", cases, magic_expected);
    read_exactly(in, &count, sizeof count, "the header");
    if (count < 0 || count > 100000) fail(2, "%s: case count %lld out of range", cases,
                                          (long long)count);
    out = fopen(output, "wb");
    if (out == NULL) fail(2, "cannot create %s", output);
    for (int64_t c = 0; c < count; c++)
        run(in, out, c, paths, path_count, threads, thread_count);
    if (fgetc(in) != EOF) fail(2, "%s: data after the last case", cases);
    fclose(in);
    if (fclose(out) != 0) fail(2, "cannot write %s", output);
    return 0;
}

static int run_exp(const char *input, const char *output, const char *path)
{
    int64_t header[2];
    FILE *in, *out;
    void *x, *y;
    int status;
    select_path(path_code(path));
    in = fopen(input, "rb");
    if (in == NULL) fail(2, "cannot open %s", input);
    read_exactly(in, header, sizeof header, "the header");
    if (header[0] != 0 && header[0] != 1) fail(2, "%s: is_double must be 0 or 1", input);
    const size_t real = header[0] ? sizeof(double) : sizeof(float);
    const int64_t n = elements("x", 1, header[1]);
    x = allocate(n, real);
    y = allocate(n, real);
    read_exactly(in, x, (size_t)n * real, "x");
    fclose(in);
    status = header[0] ? attnref_exp_f64(y, x, n) : attnref_exp_f32(y, x, n);
    if (status != ATTNREF_OK) fail(1, "the kernel's exp returned error %d", status);
    out = fopen(output, "wb");
    if (out == NULL) fail(2, "cannot create %s", output);
    write_exactly(out, y, (size_t)n * real);
    if (fclose(out) != 0) fail(2, "cannot write %s", output);
    free(x);
    free(y);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "paths") == 0) return list_paths();
    if (argc == 6 && strcmp(argv[1], "sdpa") == 0)
        return run_cases("ATTNCASE", run_case, argv[2], argv[3], argv[4], argv[5]);
    if (argc == 6 && strcmp(argv[1], "backward") == 0)
        return run_cases("ATTNGRAD", run_backward_case, argv[2], argv[3], argv[4], argv[5]);
    if (argc == 5 && strcmp(argv[1], "exp") == 0) return run_exp(argv[2], argv[3], argv[4]);
    fail(2, "usage: kernel_driver paths | sdpa CASES OUT PATHS THREADS"
            " | backward CASES OUT PATHS THREADS | exp IN OUT PATH");
    return 2;
}
