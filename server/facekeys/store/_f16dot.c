/* facekeys.store._f16dot: exact float16 x float32 dot products over several W+ layers at memory bandwidth.
 *
 * dot(out, q, layers, start, stop)   rows start..stop-1 of every layer
 * dot(out, q, layers, rows)          the rows listed in `rows` (int64, any order)
 *
 *   q       float32, C-contiguous (nq, L, dim) or (L, dim) (nq = 1): one probe per layer
 *   layers  sequence of L C-contiguous 2-D buffers (cap, dim), all float16 (format 'e') or all float32 ('f'):
 *           numpy arrays or memory maps (float32 rows take the same kernels without the conversion: the
 *           exact float32 index uses them for its two-streams-per-thread single-probe scan)
 *   out     float32, C-contiguous, nq * m values ((nq, m) or (m,)), overwritten:
 *           out[p, i] = sum_l sum_d q[p, l, d] * float(layers[l][row_i, d])   (float32 accumulation)
 *
 * Every float16 is converted exactly (F16C / AVX-512 vcvtph2ps, or bit arithmetic on the scalar path,
 * subnormals, infinities and NaN included). Rows are processed in blocks: for one block, each layer's rows are
 * read once, sequentially, and the block's outputs stay in L1, so memory is streamed once per call. The GIL is
 * released during the scan. Kernels: "avx512" (AVX-512F), "avx2" (AVX2 + FMA + F16C), "scalar" (portable C),
 * chosen at import from CPUID (and the OS's register-state support); nothing is compiled at import.
 *
 * dot(out, q, layers, start, stop | rows, norms=N, metric="l2" | "cosine")   one probe: out is turned into the
 *           scan's costs (smaller is better) in the same call, x2 = sum_l N[l][row] (N: L float32 (rows,) arrays
 *           of per-layer squared norms): "l2" -> x2 - 2 ip; "cosine" -> -ip / sqrt(x2), 0 where x2 is 0
 *           (float32, the same operations numpy's path applies, so the same values).
 *
 * exact(out, q, layers, rows, metric)   the re-rank: out (m,) float64 = the paper's metric over the L layers of
 *           each listed row, accumulated in float64 from the exact values of the stored floats: "l2" ->
 *           sqrt(sum (x - q)^2); "cosine" -> <q, x> / (|q| |x|), 0 where either norm is 0. Reads the rows in
 *           place (no gathered copies); q (L, dim) float32, rows int64. kernel= as for dot().
 *
 * smallest(cost, pos, vals) -> count   the k = len(pos) smallest values of cost (float32, 1-D) with their
 *           positions, best first (pos int64, vals float32, both k long): a bounded max-heap in one pass. NaN and +inf
 *           are never selected; returns how many were (the rest of pos/vals is left as it was).
 *
 * top(q, layers, norms, metric, pos, vals, start, stop, mask=None) -> count   one probe's scan of rows start..stop-1
 *           with the selection folded in: products and costs (as dot(norms=, metric=)) per row block, offered to one
 *           bounded max-heap, so no cost vector is written; the k = len(pos) best rows (pos int64, their costs in
 *           vals float32) best first, ties by row; mask (bool or uint8, one per row) skips rows where it is 0. The
 *           caller's threads each take a share of the rows (one call each, the GIL released).
 *
 * rank(q, layers, metric, pos, vals, kk, ids, out_ids, out_scores) -> count   the end of a one-probe search: of
 *           the candidate rows pos (-1: none; e.g. several top() results side by side) the kk best by their costs
 *           vals, re-scored as exact() does and ordered best first (cosine: largest similarity, l2: smallest
 *           distance; ties by key id ids[row]); the first len(out_ids) written to out_ids (key ids) and
 *           out_scores (float64).
 *
 * kernels() -> tuple of the kernels this CPU can run, best first; KERNEL: the one dot() uses by default.
 * dot(..., kernel="scalar") forces one of them (tests compare them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FK_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#define BLOCK_ONE 1024 /* rows per block, one probe: 1 MiB of a layer read sequentially (measured: 256 5 % slower, 64 10 %) */
#define BLOCK_MANY 256 /* rows per block, several probes: a layer's block is re-read from L2 per group of 4 probes */
#define PREFETCH_AHEAD 4 /* gathered rows: software prefetch this many rows ahead */

typedef struct {
    float *out;            /* (nq, m) */
    const float *q;        /* (nq, L, dim) */
    const char **x;        /* L pointers to (cap, dim) float16 or float32 */
    int nq, L, dim;
    int esize;             /* bytes per element: 2 (float16) or 4 (float32) */
    int64_t start;         /* first row when idx is NULL */
    const int64_t *idx;    /* m row numbers, or NULL */
    int64_t m;
    int64_t block;         /* rows per block */
} job_t;

static inline const void *row_ptr(const job_t *j, int l, int64_t i) {
    int64_t r = j->idx ? j->idx[i] : j->start + i;
    return j->x[l] + r * (int64_t)j->dim * j->esize;
}

/* out[i] (an inner product) -> its cost, rows idx[i] or start + i; metric 1 = l2, 2 = cosine */
static void costs(float *out, int64_t m, const float **norms, int L, int64_t start, const int64_t *idx,
                  int metric) {
    for (int64_t i = 0; i < m; i++) {
        int64_t r = idx ? idx[i] : start + i;
        float x2 = norms[0][r];
        for (int l = 1; l < L; l++) x2 += norms[l][r];
        if (metric == 1)
            out[i] = x2 - out[i] * 2.0f;
        else
            out[i] = x2 > 0.0f ? -(out[i] / sqrtf(x2)) : -out[i]; /* a zero-norm key has ip 0: cost 0 */
    }
}

/* -- portable scalar kernel ------------------------------------------------------------------------------ */
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    float f;
    if (e == 0) {
        f = (float)man * 5.9604644775390625e-8f; /* man * 2**-24: exact (subnormals and zero) */
        return sign ? -f : f;
    }
    if (e == 31)
        bits = sign | 0x7f800000u | (man << 13);
    else
        bits = sign | ((e + 112u) << 23) | (man << 13);
    memcpy(&f, &bits, 4);
    return f;
}

static void kernel_scalar(const job_t *j) {
    const int dim = j->dim, L = j->L, nq = j->nq, f32 = j->esize == 4;
    float buf[1024];
    for (int64_t b = 0; b < j->m; b += j->block) {
        int64_t e = b + j->block < j->m ? b + j->block : j->m;
        for (int p = 0; p < nq; p++)
            for (int64_t i = b; i < e; i++) j->out[p * j->m + i] = 0.0f;
        for (int l = 0; l < L; l++) {
            for (int64_t i = b; i < e; i++) {
                const void *xr = row_ptr(j, l, i);
                for (int d0 = 0; d0 < dim; d0 += 1024) {
                    int n = dim - d0 < 1024 ? dim - d0 : 1024;
                    if (f32)
                        memcpy(buf, (const float *)xr + d0, (size_t)n * sizeof(float));
                    else
                        for (int d = 0; d < n; d++) buf[d] = half_to_float(((const uint16_t *)xr)[d0 + d]);
                    for (int p = 0; p < nq; p++) {
                        const float *qp = j->q + ((int64_t)p * L + l) * dim + d0;
                        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
                        int d = 0;
                        for (; d + 4 <= n; d += 4) {
                            s0 += qp[d] * buf[d];
                            s1 += qp[d + 1] * buf[d + 1];
                            s2 += qp[d + 2] * buf[d + 2];
                            s3 += qp[d + 3] * buf[d + 3];
                        }
                        for (; d < n; d++) s0 += qp[d] * buf[d];
                        j->out[p * j->m + i] += (s0 + s1) + (s2 + s3);
                    }
                }
            }
        }
    }
}

#ifdef FK_X86
/* -- SIMD kernels -----------------------------------------------------------------------------------------
 * Per row block and layer: one probe streams the block's two halves at once (two rows in flight, four
 * accumulator chains: measured +30 % for one thread, +5-20 % for two, over one row at a time); several probes
 * go in groups of four (each converted vector feeds four FMAs), the group's probe rows (8 KiB per layer)
 * staying in L1 while the block's rows (256 KiB) are re-read from L2 by the next group. Outputs of the block
 * stay in L1. Gathered rows are software-prefetched a few rows ahead (the first group only). */
#define SIMD_KERNEL(NAME, TARGET, VEC, W, ZERO, FMA, LOADQ, CVT, ADD, HSUM, ELEM)                                       \
    static TARGET void NAME(const job_t *j) {                                                                     \
        const int dim = j->dim, L = j->L, nq = j->nq;                                                             \
        const int64_t m = j->m, qstride = (int64_t)L * dim;                                                       \
        for (int64_t b = 0; b < m; b += j->block) {                                                               \
            const int64_t e = b + j->block < m ? b + j->block : m;                                                \
            for (int p = 0; p < nq; p++) memset(j->out + p * m + b, 0, (size_t)(e - b) * sizeof(float));         \
            for (int l = 0; l < L; l++) {                                                                         \
                const float *ql = j->q + (int64_t)l * dim;                                                        \
                int p = 0;                                                                                        \
                if (nq == 1) { /* two rows at once, half a block apart: two streams per thread in flight */  \
                    const int64_t half = (e - b + 1) / 2;                                                         \
                    for (int64_t k = 0; k < half; k++) {                                                          \
                        const int64_t i0 = b + k, i1 = b + half + k;                                              \
                        const int two = i1 < e;                                                                   \
                        const ELEM *x0 = row_ptr(j, l, i0), *x1 = two ? row_ptr(j, l, i1) : x0;                   \
                        if (j->idx && i1 + PREFETCH_AHEAD < e) {                                                  \
                            prefetch_row(j, l, i0 + PREFETCH_AHEAD);                                              \
                            prefetch_row(j, l, i1 + PREFETCH_AHEAD);                                              \
                        }                                                                                         \
                        VEC a0 = ZERO(), a1 = a0, c0 = a0, c1 = a0;                                               \
                        int d = 0;                                                                                \
                        for (; d + 2 * W <= dim; d += 2 * W) {                                                    \
                            VEC qa = LOADQ(ql + d), qb = LOADQ(ql + d + W);                                       \
                            a0 = FMA(CVT(x0 + d), qa, a0);                                                        \
                            c0 = FMA(CVT(x1 + d), qa, c0);                                                        \
                            a1 = FMA(CVT(x0 + d + W), qb, a1);                                                    \
                            c1 = FMA(CVT(x1 + d + W), qb, c1);                                                    \
                        }                                                                                         \
                        for (; d < dim; d += W) {                                                                 \
                            VEC qa = LOADQ(ql + d);                                                               \
                            a0 = FMA(CVT(x0 + d), qa, a0);                                                        \
                            c0 = FMA(CVT(x1 + d), qa, c0);                                                        \
                        }                                                                                         \
                        j->out[i0] += HSUM(ADD(a0, a1));                                                          \
                        if (two) j->out[i1] += HSUM(ADD(c0, c1));                                                 \
                    }                                                                                             \
                    continue;                                                                                     \
                }                                                                                                 \
                for (; p + 4 <= nq; p += 4) {                                                                     \
                    const float *q0 = ql + p * qstride, *q1 = q0 + qstride, *q2 = q1 + qstride, *q3 = q2 + qstride; \
                    float *o0 = j->out + p * m, *o1 = o0 + m, *o2 = o1 + m, *o3 = o2 + m;                         \
                    for (int64_t i = b; i < e; i++) {                                                             \
                        const ELEM *xr = row_ptr(j, l, i);                                                        \
                        if (p == 0 && j->idx && i + PREFETCH_AHEAD < e) prefetch_row(j, l, i + PREFETCH_AHEAD);   \
                        VEC a0 = ZERO(), a1 = a0, a2 = a0, a3 = a0;                                               \
                        for (int d = 0; d < dim; d += W) {                                                        \
                            VEC xv = CVT(xr + d);                                                                 \
                            a0 = FMA(xv, LOADQ(q0 + d), a0);                                                      \
                            a1 = FMA(xv, LOADQ(q1 + d), a1);                                                      \
                            a2 = FMA(xv, LOADQ(q2 + d), a2);                                                      \
                            a3 = FMA(xv, LOADQ(q3 + d), a3);                                                      \
                        }                                                                                         \
                        o0[i] += HSUM(a0);                                                                        \
                        o1[i] += HSUM(a1);                                                                        \
                        o2[i] += HSUM(a2);                                                                        \
                        o3[i] += HSUM(a3);                                                                        \
                    }                                                                                             \
                }                                                                                                 \
                for (; p < nq; p++) {                                                                             \
                    const float *q0 = ql + p * qstride;                                                           \
                    float *o0 = j->out + p * m;                                                                   \
                    for (int64_t i = b; i < e; i++) {                                                             \
                        const ELEM *xr = row_ptr(j, l, i);                                                        \
                        if (p == 0 && j->idx && i + PREFETCH_AHEAD < e) prefetch_row(j, l, i + PREFETCH_AHEAD);   \
                        VEC a0 = ZERO(), a1 = a0;                                                                 \
                        int d = 0;                                                                                \
                        for (; d + 2 * W <= dim; d += 2 * W) {                                                    \
                            a0 = FMA(CVT(xr + d), LOADQ(q0 + d), a0);                                             \
                            a1 = FMA(CVT(xr + d + W), LOADQ(q0 + d + W), a1);                                     \
                        }                                                                                         \
                        for (; d < dim; d += W) a0 = FMA(CVT(xr + d), LOADQ(q0 + d), a0);                         \
                        o0[i] += HSUM(ADD(a0, a1));                                                               \
                    }                                                                                             \
                }                                                                                                 \
            }                                                                                                     \
        }                                                                                                         \
    }

static inline void prefetch_row(const job_t *j, int l, int64_t i) {
    const char *p = (const char *)row_ptr(j, l, i);
    for (int o = 0; o < j->dim * j->esize; o += 64) __builtin_prefetch(p + o, 0, 3);
}

/* AVX2 + FMA + F16C: 8 floats per vector (dim % 8 == 0) */
#define T_AVX2 __attribute__((target("avx2,fma,f16c")))
static inline T_AVX2 float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#define CVT8(ptr) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(ptr)))
SIMD_KERNEL(kernel_avx2, T_AVX2, __m256, 8, _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_loadu_ps, CVT8, _mm256_add_ps,
            hsum256, uint16_t)
SIMD_KERNEL(kernel_avx2_f32, T_AVX2, __m256, 8, _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_loadu_ps,
            _mm256_add_ps, hsum256, float)

/* AVX-512F: 16 floats per vector (dim % 16 == 0) */
#define T_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#define CVT16(ptr) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(ptr)))
SIMD_KERNEL(kernel_avx512, T_AVX512, __m512, 16, _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_loadu_ps, CVT16,
            _mm512_add_ps, _mm512_reduce_add_ps, uint16_t)
SIMD_KERNEL(kernel_avx512_f32, T_AVX512, __m512, 16, _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_loadu_ps,
            _mm512_loadu_ps, _mm512_add_ps, _mm512_reduce_add_ps, float)

/* CPU and OS support, from CPUID and XGETBV (no compiler runtime needed) */
static unsigned long long fk_xgetbv(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static void detect(int *avx2, int *avx512) {
    unsigned int a, b, c, d;
    *avx2 = *avx512 = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1, avx = (c >> 28) & 1;
    if (!(osxsave && avx && fma && f16c)) return;
    unsigned long long xcr0 = fk_xgetbv();
    if ((xcr0 & 0x6) != 0x6) return; /* XMM and YMM state */
    if (__get_cpuid_max(0, NULL) < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    *avx2 = (b >> 5) & 1;
    *avx512 = *avx2 && ((b >> 16) & 1) && (xcr0 & 0xe6) == 0xe6; /* + opmask, ZMM_Hi256, Hi16_ZMM state */
}
#endif /* FK_X86 */

/* -- the float64 re-rank ----------------------------------------------------------------------------- */
/* Adds one layer of one row to the float64 sums a[8] (l2: sum (x - q)^2; cosine: <x, q>) and b[8] (cosine: |x|^2),
 * 8 independent chains. */
static void layer_sums(const float *x, const float *q, int dim, int metric, double *a, double *b) {
    int d = 0;
    if (metric == 1) {
        for (; d + 8 <= dim; d += 8)
            for (int t = 0; t < 8; t++) {
                double diff = (double)x[d + t] - (double)q[d + t];
                a[t] += diff * diff;
            }
        for (; d < dim; d++) a[0] += ((double)x[d] - (double)q[d]) * ((double)x[d] - (double)q[d]);
        return;
    }
    for (; d + 8 <= dim; d += 8)
        for (int t = 0; t < 8; t++) {
            a[t] += (double)x[d + t] * (double)q[d + t];
            b[t] += (double)x[d + t] * (double)x[d + t];
        }
    for (; d < dim; d++) {
        a[0] += (double)x[d] * (double)q[d];
        b[0] += (double)x[d] * (double)x[d];
    }
}

#ifdef FK_X86
static T_AVX512 void layer_sums_avx512(const float *x, const float *q, int dim, int metric, double *a, double *b) {
    __m512d a0 = _mm512_loadu_pd(a), a1 = _mm512_setzero_pd(), b0 = _mm512_loadu_pd(b), b1 = a1;
    int d = 0;
    for (; d + 16 <= dim; d += 16) {
        __m512d xl = _mm512_cvtps_pd(_mm256_loadu_ps(x + d)), xh = _mm512_cvtps_pd(_mm256_loadu_ps(x + d + 8));
        __m512d ql = _mm512_cvtps_pd(_mm256_loadu_ps(q + d)), qh = _mm512_cvtps_pd(_mm256_loadu_ps(q + d + 8));
        if (metric == 1) {
            __m512d dl = _mm512_sub_pd(xl, ql), dh = _mm512_sub_pd(xh, qh);
            a0 = _mm512_fmadd_pd(dl, dl, a0);
            a1 = _mm512_fmadd_pd(dh, dh, a1);
        } else {
            a0 = _mm512_fmadd_pd(xl, ql, a0);
            a1 = _mm512_fmadd_pd(xh, qh, a1);
            b0 = _mm512_fmadd_pd(xl, xl, b0);
            b1 = _mm512_fmadd_pd(xh, xh, b1);
        }
    }
    _mm512_storeu_pd(a, _mm512_add_pd(a0, a1));
    _mm512_storeu_pd(b, _mm512_add_pd(b0, b1));
    if (d < dim) layer_sums(x + d, q + d, dim - d, metric, a, b);
}

static T_AVX2 void f16_row_f16c(const uint16_t *src, float *dst, int dim) {
    int d = 0;
    for (; d + 8 <= dim; d += 8) _mm256_storeu_ps(dst + d, CVT8(src + d));
    for (; d < dim; d++) dst[d] = _cvtsh_ss(src[d]);
}
#endif

/* out[i] = the float64 metric of row idx[i] over the L layers (see exact() above); buf: dim floats of scratch for
 * a float16 row's exact float32 values; simd: 2 = AVX-512 sums and F16C, 1 = F16C, 0 = portable C. */
static void exact_rows(double *out, const float *q, const char **x, int L, int dim, int esize, const int64_t *idx,
                       int64_t m, int metric, float *buf, int simd) {
    double qn2 = 0.0;
    for (int64_t t = 0; t < (int64_t)L * dim; t++) qn2 += (double)q[t] * (double)q[t];
    const int64_t row_bytes = (int64_t)dim * esize;
    for (int64_t i = 0; i < m; i++) {
        double a[8] = {0}, b[8] = {0};
        /* the rows are scattered (cold in cache): fetch the next row's layers while this one is summed */
        for (int64_t r = i == 0 ? 0 : i + 1; r <= i + 1 && r < m; r++)
            for (int l = 0; l < L; l++)
                for (int64_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(x[l] + idx[r] * row_bytes + o, 0, 3);
        for (int l = 0; l < L; l++) {
            const char *row = x[l] + idx[i] * row_bytes;
            const float *xr = (const float *)row;
            if (esize == 2) {
#ifdef FK_X86
                if (simd >= 1)
                    f16_row_f16c((const uint16_t *)row, buf, dim);
                else
#endif
                    for (int d = 0; d < dim; d++) buf[d] = half_to_float(((const uint16_t *)row)[d]);
                xr = buf;
            }
            const float *ql = q + (int64_t)l * dim;
#ifdef FK_X86
            if (simd == 2) {
                layer_sums_avx512(xr, ql, dim, metric, a, b);
                continue;
            }
#endif
            layer_sums(xr, ql, dim, metric, a, b);
        }
        double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        if (metric == 1) {
            out[i] = sqrt(s > 0.0 ? s : 0.0);
        } else {
            double xn2 = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
            double denom = sqrt(qn2) * sqrt(xn2);
            out[i] = denom > 0.0 ? s / denom : 0.0;
        }
    }
}

typedef void (*kernel_fn)(const job_t *);
typedef struct {
    const char *name;
    kernel_fn fn;     /* float16 rows */
    kernel_fn fn_f32; /* float32 rows */
    int width;        /* dim must be a multiple of this */
} kernel_t;

static kernel_t KERNELS[3];
static int N_KERNELS = 0;

/* -- Python binding -------------------------------------------------------------------------------------- */
static int get_buf(PyObject *obj, Py_buffer *v, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, v, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: a C-contiguous%s buffer is required", what, writable ? " writable" : "");
        return -1;
    }
    return 0;
}

/* releases the first n views of an array of buffers (if any) and frees the array */
static void release_all(Py_buffer *b, Py_ssize_t n) {
    if (b)
        for (Py_ssize_t i = 0; i < n; i++)
            if (b[i].obj) PyBuffer_Release(&b[i]);
    PyMem_Free(b);
}

/* A per-layer argument's cleanup: its n buffers, their data-pointer array and the sequence they came from. */
static void release_layers(Py_buffer *b, Py_ssize_t n, const void *ptrs, PyObject *seq) {
    release_all(b, n);
    PyMem_Free((void *)ptrs);
    Py_XDECREF(seq);
}

static int fmt_is(const Py_buffer *v, char c) {
    const char *f = v->format ? v->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    return f[0] == c && f[1] == 0;
}

/* Views of the L layers in `seq` (2-D C-contiguous buffers of dim columns, all float16 or all float32) into
 * xb[0..L) and their data pointers into xp; *got = views taken (to release), *esize = 2 or 4, *cap = the fewest
 * rows. -1 with an exception set. */
static int get_layers(PyObject *seq, Py_ssize_t L, int64_t dim, Py_buffer *xb, const char **xp, Py_ssize_t *got,
                      int *esize, int64_t *cap) {
    char etype = 0; /* 'e' or 'f', the type of layers[0]; every layer must match it */
    *cap = INT64_MAX;
    for (*got = 0; *got < L; (*got)++) {
        Py_buffer *v = &xb[*got];
        if (get_buf(PySequence_Fast_GET_ITEM(seq, *got), v, 0, "layers[i]") < 0) return -1;
        if (!etype) etype = fmt_is(v, 'f') ? 'f' : fmt_is(v, 'e') ? 'e' : '?';
        if (!fmt_is(v, etype) || v->ndim != 2 || v->shape[1] != dim) {
            Py_ssize_t bad = (*got)++;
            if (etype == '?')
                PyErr_Format(PyExc_TypeError, "layers[0] must be float16 or float32 (rows, %lld)", (long long)dim);
            else
                PyErr_Format(PyExc_TypeError, "layers[%zd] must be %s (rows, %lld) like layers[0]", bad,
                             etype == 'f' ? "float32" : "float16", (long long)dim);
            return -1;
        }
        if (v->shape[0] < *cap) *cap = v->shape[0];
        xp[*got] = (const char *)v->buf;
    }
    *esize = etype == 'f' ? 4 : 2;
    return 0;
}

/* a 1-D int64 buffer */
static int is_i64_vec(const Py_buffer *b) {
    return (fmt_is(b, 'l') || fmt_is(b, 'q')) && b->itemsize == 8 && b->ndim == 1;
}

/* A 1-D int64 buffer of row numbers, each in 0..cap-1. -1 with an exception set (the view released). */
static int get_rows(PyObject *o, Py_buffer *rowsb, int64_t cap) {
    if (get_buf(o, rowsb, 0, "rows") < 0) return -1;
    if (!is_i64_vec(rowsb)) {
        PyErr_SetString(PyExc_TypeError, "rows must be a 1-D int64 array");
        PyBuffer_Release(rowsb);
        return -1;
    }
    const int64_t *idx = (const int64_t *)rowsb->buf;
    for (Py_ssize_t i = 0; i < rowsb->shape[0]; i++)
        if (idx[i] < 0 || idx[i] >= cap) {
            PyErr_Format(PyExc_IndexError, "row %lld out of range 0..%lld", (long long)idx[i], (long long)cap);
            PyBuffer_Release(rowsb);
            return -1;
        }
    return 0;
}

/* q: one probe, float32 (L, dim), into qb, *L and *dim. -1 with an exception set (qb, if taken, left to release). */
static int get_probe(PyObject *o, Py_buffer *qb, Py_ssize_t *L, int64_t *dim) {
    if (get_buf(o, qb, 0, "q") < 0) return -1;
    if (!fmt_is(qb, 'f') || qb->ndim != 2 || qb->shape[0] < 1 || qb->shape[1] < 1 || qb->shape[1] > INT32_MAX / 2) {
        PyErr_SetString(PyExc_TypeError, "q must be float32 (L, dim)");
        return -1;
    }
    *L = qb->shape[0];
    *dim = qb->shape[1];
    return 0;
}

/* `layers` as a fast sequence of exactly L items (a new reference), or NULL with an exception set */
static PyObject *layer_seq(PyObject *layers_o, Py_ssize_t L) {
    PyObject *seq = PySequence_Fast(layers_o, "layers must be a sequence of float16 or float32 arrays");
    if (seq && (PySequence_Fast_GET_SIZE(seq) != L || L < 1)) {
        PyErr_Format(PyExc_ValueError, "q has %zd layers, layers has %zd", L, PySequence_Fast_GET_SIZE(seq));
        Py_DECREF(seq);
        return NULL;
    }
    return seq;
}

/* pos (int64) and vals (float32), writable, 1-D, one length: the k slots of a selection. -1 with an exception set
 * (views taken are left to release). */
static int get_selection(PyObject *pos_o, PyObject *vals_o, Py_buffer *pb, Py_buffer *vb) {
    if (get_buf(pos_o, pb, 1, "pos") < 0 || get_buf(vals_o, vb, 1, "vals") < 0) return -1;
    if (!is_i64_vec(pb)) {
        PyErr_SetString(PyExc_TypeError, "pos must be a 1-D int64 array");
        return -1;
    }
    if (!fmt_is(vb, 'f') || vb->ndim != 1 || vb->shape[0] != pb->shape[0]) {
        PyErr_SetString(PyExc_TypeError, "vals must be 1-D float32, as long as pos");
        return -1;
    }
    return 0;
}

/* norms: a sequence of L 1-D float32 buffers of at least `need` values (per-layer squared norms), viewed into
 * nb[0..L) with data pointers in np_; *nseq is the fast sequence (to release), *ngot the views taken. -1 with an
 * exception set. */
static int get_norms(PyObject *norms_o, Py_ssize_t L, int64_t need, PyObject **nseq, Py_buffer *nb,
                     const float **np_, Py_ssize_t *ngot) {
    *nseq = PySequence_Fast(norms_o, "norms must be a sequence of float32 arrays");
    if (!*nseq) return -1;
    if (PySequence_Fast_GET_SIZE(*nseq) != L) {
        PyErr_Format(PyExc_ValueError, "norms has %zd arrays, q has %zd layers", PySequence_Fast_GET_SIZE(*nseq), L);
        return -1;
    }
    for (*ngot = 0; *ngot < L; (*ngot)++) {
        Py_buffer *v = &nb[*ngot];
        if (get_buf(PySequence_Fast_GET_ITEM(*nseq, *ngot), v, 0, "norms[i]") < 0) return -1;
        if (!fmt_is(v, 'f') || v->ndim != 1 || v->shape[0] < need) {
            PyErr_Format(PyExc_ValueError, "norms[%zd] must be 1-D float32 with at least %lld values", (*ngot)++,
                         (long long)need);
            return -1;
        }
        np_[*ngot] = (const float *)v->buf;
    }
    return 0;
}

/* KERNELS[0], or the one named (NULL with an exception set when this CPU lacks it) */
static const kernel_t *find_kernel(const char *kname) {
    if (!kname) return &KERNELS[0];
    for (int i = 0; i < N_KERNELS; i++)
        if (strcmp(KERNELS[i].name, kname) == 0) return &KERNELS[i];
    PyErr_Format(PyExc_ValueError, "kernel %s is not available on this CPU", kname);
    return NULL;
}

/* exact_rows()'s `simd` for a kernel: 2 = AVX-512 sums and F16C, 1 = F16C, 0 = portable C */
static int simd_level(const kernel_t *k) {
    return strcmp(k->name, "avx512") == 0 ? 2 : strcmp(k->name, "avx2") == 0 ? 1 : 0;
}

static PyObject *py_dot(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"out", "q", "layers", "start", "stop", "kernel", "block", "norms", "metric", NULL};
    PyObject *out_o, *q_o, *layers_o, *start_o, *stop_o = Py_None, *norms_o = Py_None;
    const char *kname = NULL, *mname = NULL;
    Py_ssize_t block = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|OznOz:dot", kwlist, &out_o, &q_o, &layers_o, &start_o, &stop_o,
                                     &kname, &block, &norms_o, &mname))
        return NULL;
    if (block < 0) return PyErr_Format(PyExc_ValueError, "block must be >= 0 (0: the default)");
    int metric = 0;
    if (mname && strcmp(mname, "l2") == 0) metric = 1;
    else if (mname && strcmp(mname, "cosine") == 0) metric = 2;
    else if (mname) return PyErr_Format(PyExc_ValueError, "metric must be 'l2' or 'cosine', got '%s'", mname);
    if ((norms_o == Py_None) != (metric == 0))
        return PyErr_Format(PyExc_ValueError, "norms and metric go together");
    const kernel_t *k = find_kernel(kname);
    if (!k) return NULL;
    Py_buffer outb = {0}, qb = {0}, rowsb = {0};
    Py_buffer *xb = NULL, *nb = NULL;
    const char **xp = NULL;
    const float **np_ = NULL;
    PyObject *seq = NULL, *nseq = NULL, *ret = NULL;
    Py_ssize_t L = 0, got = 0, ngot = 0;
    int have_rows = 0;
    job_t j;
    memset(&j, 0, sizeof j);

    if (get_buf(out_o, &outb, 1, "out") < 0) return NULL;
    if (!fmt_is(&outb, 'f')) { PyErr_SetString(PyExc_TypeError, "out must be float32"); goto done; }
    if (get_buf(q_o, &qb, 0, "q") < 0) goto done;
    if (!fmt_is(&qb, 'f') || (qb.ndim != 2 && qb.ndim != 3)) {
        PyErr_SetString(PyExc_TypeError, "q must be float32 (L, dim) or (nq, L, dim)");
        goto done;
    }
    int64_t nq = qb.ndim == 3 ? qb.shape[0] : 1;
    L = qb.shape[qb.ndim - 2];
    int64_t dim = qb.shape[qb.ndim - 1];
    seq = layer_seq(layers_o, L);
    if (!seq) goto done;
    if (nq < 1 || dim < 1 || dim > INT32_MAX / 2 || nq > INT32_MAX || L > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "q: bad shape");
        goto done;
    }
    xb = PyMem_Calloc((size_t)L, sizeof(Py_buffer));
    xp = PyMem_Calloc((size_t)L, sizeof(*xp));
    if (!xb || !xp) { PyErr_NoMemory(); goto done; }
    int64_t cap;
    int esize;
    if (get_layers(seq, L, dim, xb, xp, &got, &esize, &cap) < 0) goto done;
    int64_t m, start = 0;
    if (stop_o == Py_None && PyObject_CheckBuffer(start_o)) { /* dot(out, q, layers, rows) */
        if (get_rows(start_o, &rowsb, cap) < 0) goto done;
        have_rows = 1;
        m = rowsb.shape[0];
        j.idx = (const int64_t *)rowsb.buf;
    } else {
        start = PyLong_AsLongLong(start_o);
        int64_t stop = stop_o == Py_None ? -1 : PyLong_AsLongLong(stop_o);
        if (PyErr_Occurred()) goto done;
        if (stop_o == Py_None || start < 0 || stop < start || stop > cap) {
            PyErr_Format(PyExc_IndexError, "rows %lld..%lld out of range 0..%lld", (long long)start, (long long)stop,
                         (long long)cap);
            goto done;
        }
        m = stop - start;
    }
    if (outb.len != (Py_ssize_t)(nq * m * (int64_t)sizeof(float))) {
        PyErr_Format(PyExc_ValueError, "out holds %zd floats, %lld needed", outb.len / 4, (long long)(nq * m));
        goto done;
    }
    if (metric) {
        if (nq != 1) {
            PyErr_SetString(PyExc_ValueError, "norms/metric: one probe only (q (L, dim) or (1, L, dim))");
            goto done;
        }
        int64_t need = start + m; /* norms needed: rows start..start+m-1, or up to the largest listed row */
        if (have_rows) {
            need = 0;
            for (int64_t i = 0; i < m; i++)
                if (j.idx[i] >= need) need = j.idx[i] + 1;
        }
        nb = PyMem_Calloc((size_t)L, sizeof(Py_buffer));
        np_ = PyMem_Calloc((size_t)L, sizeof(*np_));
        if (!nb || !np_) { PyErr_NoMemory(); goto done; }
        if (get_norms(norms_o, L, need, &nseq, nb, np_, &ngot) < 0) goto done;
    }
    if (dim % k->width) k = &KERNELS[N_KERNELS - 1]; /* scalar: any dim */
    j.out = (float *)outb.buf;
    j.q = (const float *)qb.buf;
    j.x = xp;
    j.esize = esize;
    j.nq = (int)nq;
    j.L = (int)L;
    j.dim = (int)dim;
    j.start = start;
    j.m = m;
    j.block = block ? block : (nq == 1 ? BLOCK_ONE : BLOCK_MANY);
    if (m > 0) {
        Py_BEGIN_ALLOW_THREADS
        (esize == 4 ? k->fn_f32 : k->fn)(&j);
        if (metric) costs(j.out, m, np_, (int)L, start, j.idx, metric);
        Py_END_ALLOW_THREADS
    }
    ret = Py_NewRef(Py_None);
done:
    release_layers(xb, got, xp, seq);
    release_layers(nb, ngot, np_, nseq);
    if (have_rows) PyBuffer_Release(&rowsb);
    if (qb.obj) PyBuffer_Release(&qb);
    if (outb.obj) PyBuffer_Release(&outb);
    return ret;
}

static PyObject *py_exact(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"out", "q", "layers", "rows", "metric", "kernel", NULL};
    PyObject *out_o, *q_o, *layers_o, *rows_o;
    const char *mname, *kname = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOs|z:exact", kwlist, &out_o, &q_o, &layers_o, &rows_o, &mname,
                                     &kname))
        return NULL;
    int metric = strcmp(mname, "l2") == 0 ? 1 : strcmp(mname, "cosine") == 0 ? 2 : 0;
    if (!metric) return PyErr_Format(PyExc_ValueError, "metric must be 'l2' or 'cosine', got '%s'", mname);
    const kernel_t *k = find_kernel(kname);
    if (!k) return NULL;
    int simd = simd_level(k);
    Py_buffer outb = {0}, qb = {0}, rowsb = {0};
    Py_buffer *xb = NULL;
    const char **xp = NULL;
    float *buf = NULL;
    PyObject *seq = NULL, *ret = NULL;
    Py_ssize_t L = 0, got = 0;
    int have_rows = 0, esize;
    int64_t cap;

    if (get_buf(out_o, &outb, 1, "out") < 0) return NULL;
    if (!fmt_is(&outb, 'd')) { PyErr_SetString(PyExc_TypeError, "out must be float64"); goto done; }
    int64_t dim;
    if (get_probe(q_o, &qb, &L, &dim) < 0) goto done;
    seq = layer_seq(layers_o, L);
    if (!seq) goto done;
    xb = PyMem_Calloc((size_t)L, sizeof(Py_buffer));
    xp = PyMem_Calloc((size_t)L, sizeof(*xp));
    buf = PyMem_Malloc((size_t)dim * sizeof(float));
    if (!xb || !xp || !buf) { PyErr_NoMemory(); goto done; }
    if (get_layers(seq, L, dim, xb, xp, &got, &esize, &cap) < 0) goto done;
    if (get_rows(rows_o, &rowsb, cap) < 0) goto done;
    have_rows = 1;
    int64_t m = rowsb.shape[0];
    if (outb.len != (Py_ssize_t)(m * (int64_t)sizeof(double))) {
        PyErr_Format(PyExc_ValueError, "out holds %zd values, %lld needed", outb.len / 8, (long long)m);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    exact_rows((double *)outb.buf, (const float *)qb.buf, xp, (int)L, (int)dim, esize, (const int64_t *)rowsb.buf, m,
               metric, buf, simd);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    release_layers(xb, got, xp, seq);
    PyMem_Free(buf);
    if (have_rows) PyBuffer_Release(&rowsb);
    if (qb.obj) PyBuffer_Release(&qb);
    if (outb.obj) PyBuffer_Release(&outb);
    return ret;
}

/* -- selection --------------------------------------------------------------------------------------------- */
/* max-heap of (value, position) on [0, n): the largest value at the root; ties: the larger position is "larger",
 * so that among equal values the earliest positions are kept */
static inline int heap_gt(float va, int64_t pa, float vb, int64_t pb) { return va > vb || (va == vb && pa > pb); }

static void heap_down(float *v, int64_t *p, int64_t n, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && heap_gt(v[l], p[l], v[m], p[m])) m = l;
        if (r < n && heap_gt(v[r], p[r], v[m], p[m])) m = r;
        if (m == i) return;
        float tv = v[i]; v[i] = v[m]; v[m] = tv;
        int64_t tp = p[i]; p[i] = p[m]; p[m] = tp;
        i = m;
    }
}

/* offers (v, i) to the bounded max-heap vals/pos of *n <= k entries: kept if among the k smallest so far (NaN and
 * +inf never are) */
static inline void heap_push(float *vals, int64_t *pos, int64_t *n, int64_t k, float v, int64_t i) {
    if (!(v < INFINITY)) return; /* NaN, +inf */
    if (*n < k) {
        int64_t j = (*n)++; /* sift up */
        vals[j] = v; pos[j] = i;
        while (j > 0) {
            int64_t up = (j - 1) / 2;
            if (!heap_gt(vals[j], pos[j], vals[up], pos[up])) break;
            float tv = vals[j]; vals[j] = vals[up]; vals[up] = tv;
            int64_t tp = pos[j]; pos[j] = pos[up]; pos[up] = tp;
            j = up;
        }
    } else if (k > 0 && heap_gt(vals[0], pos[0], v, i)) {
        vals[0] = v; pos[0] = i;
        heap_down(vals, pos, *n, 0);
    }
}

/* the heap's n entries in ascending order (heap sort, in place) */
static void heap_sort(float *vals, int64_t *pos, int64_t n) {
    for (int64_t e = n - 1; e > 0; e--) {
        float tv = vals[0]; vals[0] = vals[e]; vals[e] = tv;
        int64_t tp = pos[0]; pos[0] = pos[e]; pos[e] = tp;
        heap_down(vals, pos, e, 0);
    }
}

/* the k smallest finite-or-minus-inf values of x[0..m), best first, into vals/pos; returns how many */
static int64_t select_smallest(const float *x, int64_t m, int64_t k, float *vals, int64_t *pos) {
    int64_t n = 0;
    for (int64_t i = 0; i < m; i++) heap_push(vals, pos, &n, k, x[i], i);
    heap_sort(vals, pos, n);
    return n;
}

static PyObject *py_smallest(PyObject *self, PyObject *args) {
    PyObject *cost_o, *pos_o, *vals_o;
    if (!PyArg_ParseTuple(args, "OOO:smallest", &cost_o, &pos_o, &vals_o)) return NULL;
    Py_buffer cb = {0}, pb = {0}, vb = {0};
    PyObject *ret = NULL;
    if (get_buf(cost_o, &cb, 0, "cost") < 0) return NULL;
    if (get_selection(pos_o, vals_o, &pb, &vb) < 0) goto done;
    if (!fmt_is(&cb, 'f') || cb.ndim != 1) { PyErr_SetString(PyExc_TypeError, "cost must be 1-D float32"); goto done; }
    int64_t n;
    Py_BEGIN_ALLOW_THREADS
    n = select_smallest((const float *)cb.buf, cb.shape[0], pb.shape[0], (float *)vb.buf, (int64_t *)pb.buf);
    Py_END_ALLOW_THREADS
    ret = PyLong_FromLongLong(n);
done:
    if (vb.obj) PyBuffer_Release(&vb);
    if (pb.obj) PyBuffer_Release(&pb);
    PyBuffer_Release(&cb);
    return ret;
}

/* -- one probe: scan, costs and selection in one pass ------------------------------------------------------ */
typedef struct {
    job_t j;               /* rows j.start .. j.start + j.m - 1 (j.out unused) */
    kernel_fn fn;
    const float **norms;
    int metric;
    const uint8_t *mask;   /* NULL, or nonzero for the rows to consider (indexed by row number) */
    int64_t k, n;          /* heap capacity and size */
    float *vals;           /* the share's heap */
    int64_t *pos;
} top_t;

/* row blocks of BLOCK_ONE scored into a buffer that stays in L1, turned into costs, offered to the heap */
static void top_share(top_t *t) {
    float buf[BLOCK_ONE];
    job_t j = t->j;
    const int64_t end = t->j.start + t->j.m;
    j.out = buf;
    j.block = BLOCK_ONE;
    for (int64_t s = t->j.start; s < end; s += BLOCK_ONE) {
        j.start = s;
        j.m = end - s < BLOCK_ONE ? end - s : BLOCK_ONE;
        t->fn(&j);
        costs(buf, j.m, t->norms, j.L, s, NULL, t->metric);
        for (int64_t i = 0; i < j.m; i++)
            if (!t->mask || t->mask[s + i]) heap_push(t->vals, t->pos, &t->n, t->k, buf[i], s + i);
    }
}

static PyObject *py_top(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "layers", "norms", "metric", "pos", "vals", "start", "stop", "mask", "kernel",
                             NULL};
    PyObject *q_o, *layers_o, *norms_o, *pos_o, *vals_o, *mask_o = Py_None;
    const char *mname, *kname = NULL;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOsOOnn|Oz:top", kwlist, &q_o, &layers_o, &norms_o, &mname, &pos_o,
                                     &vals_o, &start, &stop, &mask_o, &kname))
        return NULL;
    int metric = strcmp(mname, "l2") == 0 ? 1 : strcmp(mname, "cosine") == 0 ? 2 : 0;
    if (!metric) return PyErr_Format(PyExc_ValueError, "metric must be 'l2' or 'cosine', got '%s'", mname);
    const kernel_t *k = find_kernel(kname);
    if (!k) return NULL;
    Py_buffer qb = {0}, pb = {0}, vb = {0}, mb = {0};
    Py_buffer *xb = NULL, *nb = NULL;
    const char **xp = NULL;
    const float **np_ = NULL;
    PyObject *seq = NULL, *nseq = NULL, *ret = NULL;
    Py_ssize_t L = 0, got = 0, ngot = 0;
    top_t t;
    memset(&t, 0, sizeof t);

    int64_t dim;
    if (get_probe(q_o, &qb, &L, &dim) < 0) goto done;
    if (get_selection(pos_o, vals_o, &pb, &vb) < 0) goto done;
    seq = layer_seq(layers_o, L);
    if (!seq) goto done;
    xb = PyMem_Calloc((size_t)L, sizeof(Py_buffer));
    xp = PyMem_Calloc((size_t)L, sizeof(*xp));
    nb = PyMem_Calloc((size_t)L, sizeof(Py_buffer));
    np_ = PyMem_Calloc((size_t)L, sizeof(*np_));
    if (!xb || !xp || !nb || !np_) { PyErr_NoMemory(); goto done; }
    int64_t cap;
    int esize;
    if (get_layers(seq, L, dim, xb, xp, &got, &esize, &cap) < 0) goto done;
    if (start < 0 || stop < start || stop > cap) {
        PyErr_Format(PyExc_IndexError, "rows %lld..%lld out of range 0..%lld", (long long)start, (long long)stop,
                     (long long)cap);
        goto done;
    }
    if (get_norms(norms_o, L, stop, &nseq, nb, np_, &ngot) < 0) goto done;
    if (mask_o != Py_None) {
        if (get_buf(mask_o, &mb, 0, "mask") < 0) goto done;
        if (!(fmt_is(&mb, '?') || fmt_is(&mb, 'B')) || mb.ndim != 1 || mb.shape[0] < stop) {
            PyErr_Format(PyExc_TypeError, "mask must be 1-D bool or uint8 with at least %zd values", stop);
            goto done;
        }
    }
    if (dim % k->width) k = &KERNELS[N_KERNELS - 1]; /* scalar: any dim */
    t.j.q = (const float *)qb.buf;
    t.j.x = xp;
    t.j.nq = 1;
    t.j.L = (int)L;
    t.j.dim = (int)dim;
    t.j.esize = esize;
    t.j.start = start;
    t.j.m = stop - start;
    t.fn = esize == 4 ? k->fn_f32 : k->fn;
    t.norms = np_;
    t.metric = metric;
    t.mask = mb.obj ? (const uint8_t *)mb.buf : NULL;
    t.k = pb.shape[0];
    t.vals = (float *)vb.buf;
    t.pos = (int64_t *)pb.buf;
    Py_BEGIN_ALLOW_THREADS
    top_share(&t);
    heap_sort(t.vals, t.pos, t.n);
    Py_END_ALLOW_THREADS
    ret = PyLong_FromLongLong(t.n);
done:
    release_layers(xb, got, xp, seq);
    release_layers(nb, ngot, np_, nseq);
    if (mb.obj) PyBuffer_Release(&mb);
    if (vb.obj) PyBuffer_Release(&vb);
    if (pb.obj) PyBuffer_Release(&pb);
    if (qb.obj) PyBuffer_Release(&qb);
    return ret;
}

/* rank(): the result order, best first: cosine by descending similarity, l2 by ascending distance; ties by key id */
static inline int rank_before(double sa, int64_t ia, double sb, int64_t ib, int metric) {
    if (sa != sb) return metric == 1 ? sa < sb : sa > sb;
    return ia < ib;
}

static PyObject *py_rank(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"q", "layers", "metric", "pos", "vals", "kk", "ids", "out_ids", "out_scores", "kernel",
                             NULL};
    PyObject *q_o, *layers_o, *pos_o, *vals_o, *ids_o, *oid_o, *osc_o;
    const char *mname, *kname = NULL;
    Py_ssize_t kk;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOsOOnOOO|z:rank", kwlist, &q_o, &layers_o, &mname, &pos_o, &vals_o,
                                     &kk, &ids_o, &oid_o, &osc_o, &kname))
        return NULL;
    int metric = strcmp(mname, "l2") == 0 ? 1 : strcmp(mname, "cosine") == 0 ? 2 : 0;
    if (!metric) return PyErr_Format(PyExc_ValueError, "metric must be 'l2' or 'cosine', got '%s'", mname);
    if (kk < 0) return PyErr_Format(PyExc_ValueError, "kk must be >= 0");
    const kernel_t *k = find_kernel(kname);
    if (!k) return NULL;
    int simd = simd_level(k);
    Py_buffer qb = {0}, pb = {0}, vb = {0}, ib = {0}, oib = {0}, osb = {0};
    Py_buffer *xb = NULL;
    const char **xp = NULL;
    float *buf = NULL, *cv = NULL;
    int64_t *cp = NULL;
    double *sc = NULL;
    PyObject *seq = NULL, *ret = NULL;
    Py_ssize_t L = 0, got = 0;
    int esize;
    int64_t cap;

    int64_t dim;
    if (get_probe(q_o, &qb, &L, &dim) < 0) goto done;
    if (get_buf(pos_o, &pb, 0, "pos") < 0 || get_buf(vals_o, &vb, 0, "vals") < 0 || get_buf(ids_o, &ib, 0, "ids") < 0 ||
        get_buf(oid_o, &oib, 1, "out_ids") < 0 || get_buf(osc_o, &osb, 1, "out_scores") < 0)
        goto done;
    if (!is_i64_vec(&pb) || !fmt_is(&vb, 'f') || vb.ndim != 1 || vb.shape[0] != pb.shape[0]) {
        PyErr_SetString(PyExc_TypeError, "pos (int64) and vals (float32) must be 1-D and as long as each other");
        goto done;
    }
    if (!is_i64_vec(&ib)) {
        PyErr_SetString(PyExc_TypeError, "ids must be a 1-D int64 array");
        goto done;
    }
    if (!is_i64_vec(&oib) || !fmt_is(&osb, 'd') || osb.ndim != 1 || osb.shape[0] != oib.shape[0]) {
        PyErr_SetString(PyExc_TypeError,
                        "out_ids (int64) and out_scores (float64) must be 1-D and as long as each other");
        goto done;
    }
    seq = layer_seq(layers_o, L);
    if (!seq) goto done;
    xb = PyMem_Calloc((size_t)L, sizeof(Py_buffer));
    xp = PyMem_Calloc((size_t)L, sizeof(*xp));
    buf = PyMem_Malloc((size_t)dim * sizeof(float));
    cv = PyMem_Malloc((size_t)(kk + 1) * sizeof(float));
    cp = PyMem_Malloc((size_t)(kk + 1) * sizeof(int64_t));
    sc = PyMem_Malloc((size_t)(kk + 1) * sizeof(double));
    if (!xb || !xp || !buf || !cv || !cp || !sc) { PyErr_NoMemory(); goto done; }
    if (get_layers(seq, L, dim, xb, xp, &got, &esize, &cap) < 0) goto done;
    const int64_t *pos = pb.buf, *ids = ib.buf;
    const float *vals = vb.buf;
    if (ib.shape[0] < cap) cap = ib.shape[0];
    for (Py_ssize_t i = 0; i < pb.shape[0]; i++)
        if (pos[i] < -1 || pos[i] >= cap) {
            PyErr_Format(PyExc_IndexError, "pos: row %lld out of range 0..%lld (or -1: none)", (long long)pos[i],
                         (long long)cap);
            goto done;
        }
    int64_t n = 0, kout = oib.shape[0];
    int64_t *oid = oib.buf;
    double *osc = osb.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < pb.shape[0]; i++) /* the kk best candidates by the scan's cost */
        if (pos[i] >= 0) heap_push(cv, cp, &n, kk, vals[i], pos[i]);
    exact_rows(sc, (const float *)qb.buf, xp, (int)L, (int)dim, esize, cp, n, metric, buf, simd);
    for (int64_t i = 1; i < n; i++) { /* insertion sort by (score, key id): n is small */
        double s = sc[i];
        int64_t r = cp[i], j = i;
        for (; j > 0 && rank_before(s, ids[r], sc[j - 1], ids[cp[j - 1]], metric); j--) {
            sc[j] = sc[j - 1];
            cp[j] = cp[j - 1];
        }
        sc[j] = s;
        cp[j] = r;
    }
    if (n > kout) n = kout;
    for (int64_t i = 0; i < n; i++) {
        oid[i] = ids[cp[i]];
        osc[i] = sc[i];
    }
    Py_END_ALLOW_THREADS
    ret = PyLong_FromLongLong(n);
done:
    release_layers(xb, got, xp, seq);
    PyMem_Free(buf);
    PyMem_Free(cv);
    PyMem_Free(cp);
    PyMem_Free(sc);
    Py_buffer *views[] = {&qb, &pb, &vb, &ib, &oib, &osb};
    for (int i = 0; i < 6; i++)
        if (views[i]->obj) PyBuffer_Release(views[i]);
    return ret;
}

/* -- 4-bit PQ scores of listed rows (the ann refine step) ----------------------------------------------------- */
/* out[i] = sum over j < L of sum over s < m of lut[j, s, code s of layer layers[j] of row rows[i]], where a row of
 * codes holds every layer's m/2 bytes side by side and code s sits in the low (s even) or high (s odd) nibble of
 * byte s/2 (FAISS' 4-bit PQ packing). Rows outer, layers inner: the L tables (8 KB each at m = 128) stay in L2. */
#define PQ_AHEAD 8
#define PQ_STEPS_AHEAD 1 /* SIMD paths: prefetch the rows of the step this many steps (16 rows AVX-512, 8 AVX2) ahead */
static void pq4_rows(float *out, const uint8_t *codes, int64_t width, const int64_t *rows, int64_t c,
                     const int64_t *layers, int64_t L, int64_t m, const float *lut) {
    const int64_t half = m / 2;
    for (int64_t i = 0; i < c; i++) {
        const uint8_t *row = codes + rows[i] * width;
        if (i + PQ_AHEAD < c) /* scattered rows: fetch ahead (memory latency, not the lookups, bounds large stores) */
            for (int64_t j = 0; j < L; j++) __builtin_prefetch(codes + rows[i + PQ_AHEAD] * width + layers[j] * half);
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        for (int64_t j = 0; j < L; j++) {
            const uint8_t *p = row + layers[j] * half;
            const float *t = lut + j * m * 16;
            for (int64_t b = 0; b + 1 < half; b += 2) {
                s0 += t[(2 * b) * 16 + (p[b] & 15)];
                s1 += t[(2 * b + 1) * 16 + (p[b] >> 4)];
                s2 += t[(2 * b + 2) * 16 + (p[b + 1] & 15)];
                s3 += t[(2 * b + 3) * 16 + (p[b + 1] >> 4)];
            }
            if (half & 1) {
                int64_t b = half - 1;
                s0 += t[(2 * b) * 16 + (p[b] & 15)] + t[(2 * b + 1) * 16 + (p[b] >> 4)];
            }
        }
        out[i] = (s0 + s1) + (s2 + s3);
    }
}

#ifdef FK_X86
/* The start of a SIMD step of `step` rows from row i: their byte offsets in off, and every row of the next step
 * asked of the cache (scattered rows; fetching 8 of the next 16 left the other 8 to demand misses: 5,120 rows x 4
 * layers of 1M, AVX-512, ad hoc: 0.64 -> 0.57 ms on one thread, 0.81 -> 0.68-0.71 on two; 2 or 4 steps ahead: no
 * gain). */
static inline void pq4_step(int64_t *off, int step, const uint8_t *codes, int64_t width, const int64_t *rows,
                            int64_t i, int64_t c, const int64_t *layers, int64_t L, int64_t half) {
    for (int k = 0; k < step; k++) off[k] = rows[i + k] * width;
    for (int64_t k = i + step * PQ_STEPS_AHEAD, e = k + step < c ? k + step : c; k < e; k++)
        for (int64_t j = 0; j < L; j++) __builtin_prefetch(codes + rows[k] * width + layers[j] * half);
}

/* Adds the table lookups of 8 codes (the nibbles of v's 32-bit lanes, code 0 lowest) for 16 rows: each code's
 * 16-entry float table (t, t + 16, ...) is one register, looked up by one permute (vpermps reads the index's low 4
 * bits: the nibble needs no mask). */
static T_AVX512 inline void pq4_add8(__m512i v, const float *t, __m512 a[4]) {
    for (int s = 0; s < 8; s++)
        a[s & 3] = _mm512_add_ps(a[s & 3],
                                 _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4 * s), _mm512_loadu_ps(t + 16 * s)));
}

/* pq4_rows, 16 rows at a time (AVX-512F). Per layer, 16 code bytes (32 codes) of the 16 rows at a time: 16 plain
 * loads transposed by permutes into 4 vectors of 4 bytes per row (faster than gathers: 18 layers x 15,360 rows of
 * random codes, ad hoc, 21.6 -> 17.9 ns per row and layer; 4 layers x 5,120 rows 0.55 -> 0.47 ms); a layer's
 * last m/2 % 16 bytes by gathers of 4 bytes (64-bit offsets: stores beyond 2 GB of codes). Rows c - c % 16 .. c - 1
 * go to the scalar loop. Needs m % 8 == 0. */
static T_AVX512 void pq4_rows_avx512(float *out, const uint8_t *codes, int64_t width, const int64_t *rows, int64_t c,
                                     const int64_t *layers, int64_t L, int64_t m, const float *lut) {
    const int64_t half = m / 2;
    /* after 4 loads of 16 bytes per vector (rows 4q..4q+3, one row per 128-bit lane): dwords 0 and 1 of 8 rows, then
     * dwords 2 and 3 (second source: rows 4q+4..4q+7) */
    const __m512i d01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const __m512i d23 = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    int64_t i = 0;
    for (; i + 16 <= c; i += 16) {
        int64_t off[16];
        pq4_step(off, 16, codes, width, rows, i, c, layers, L, half);
        __m512i lo = _mm512_loadu_si512((const void *)off), hi = _mm512_loadu_si512((const void *)(off + 8));
        __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int64_t j = 0; j < L; j++) {
            const uint8_t *base = codes + layers[j] * half;
            const float *t = lut + j * m * 16;
            int64_t b = 0;
            for (; b + 16 <= half; b += 16) {
                __m512i z[4];
                for (int q = 0; q < 4; q++) {
                    const uint8_t *p = base + b;
                    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p + off[4 * q])));
                    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + off[4 * q + 1])), 1);
                    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + off[4 * q + 2])), 2);
                    z[q] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + off[4 * q + 3])), 3);
                }
                __m512i lo01 = _mm512_permutex2var_epi32(z[0], d01, z[1]);
                __m512i lo23 = _mm512_permutex2var_epi32(z[0], d23, z[1]);
                __m512i hi01 = _mm512_permutex2var_epi32(z[2], d01, z[3]);
                __m512i hi23 = _mm512_permutex2var_epi32(z[2], d23, z[3]);
                /* 256-bit halves: rows 0-7 from lo.., rows 8-15 from hi.. */
                pq4_add8(_mm512_shuffle_i64x2(lo01, hi01, 0x44), t, a);
                pq4_add8(_mm512_shuffle_i64x2(lo01, hi01, 0xEE), t + 128, a);
                pq4_add8(_mm512_shuffle_i64x2(lo23, hi23, 0x44), t + 256, a);
                pq4_add8(_mm512_shuffle_i64x2(lo23, hi23, 0xEE), t + 384, a);
                t += 512;
            }
            for (; b < half; b += 4, t += 8 * 16) {
                __m256i g0 = _mm512_i64gather_epi32(lo, (const void *)(base + b), 1);
                __m256i g1 = _mm512_i64gather_epi32(hi, (const void *)(base + b), 1);
                pq4_add8(_mm512_inserti64x4(_mm512_castsi256_si512(g0), g1, 1), t, a); /* 8 codes of 16 rows */
            }
        }
        _mm512_storeu_ps(out + i, _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
    }
    if (i < c) pq4_rows(out + i, codes, width, rows + i, c - i, layers, L, m, lut);
}

/* Adds the table lookups of 8 codes (the nibbles of v's 32-bit lanes, code 0 lowest) for 8 rows (AVX2): a code's
 * 16-entry float table is two registers, each looked up by vpermps (it reads the index's low 3 bits); the nibble's
 * bit 3, shifted into the sign bit, picks one of the two (blendv). No masks. */
static T_AVX2 inline void pq4_add8_avx2(__m256i v, const float *t, __m256 a[4]) {
    for (int s = 0; s < 8; s++) {
        __m256i idx = _mm256_srli_epi32(v, 4 * s);
        __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t + 16 * s), idx);
        __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t + 16 * s + 8), idx);
        a[s & 3] = _mm256_add_ps(a[s & 3], _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))));
    }
}

static inline int32_t load32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* pq4_rows, 8 rows at a time (AVX2; for hosts without AVX-512, where the scalar loop took ~100 ns per row and
 * layer). Per layer, 16 code bytes of the 8 rows at a time: rows q and q + 4 share a register (one per 128-bit
 * lane), and two rounds of 32- and 64-bit unpacks leave 4 vectors of 4 bytes (8 codes) per row, rows in order; a
 * layer's last m/2 % 16 bytes 4 at a time by scalar loads. Rows c - c % 8 .. c - 1 go to the scalar loop. Needs
 * m % 8 == 0. */
static T_AVX2 void pq4_rows_avx2(float *out, const uint8_t *codes, int64_t width, const int64_t *rows, int64_t c,
                                 const int64_t *layers, int64_t L, int64_t m, const float *lut) {
    const int64_t half = m / 2;
    int64_t i = 0;
    for (; i + 8 <= c; i += 8) {
        int64_t off[8];
        pq4_step(off, 8, codes, width, rows, i, c, layers, L, half);
        __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t j = 0; j < L; j++) {
            const uint8_t *base = codes + layers[j] * half;
            const float *t = lut + j * m * 16;
            int64_t b = 0;
            for (; b + 16 <= half; b += 16, t += 512) {
                const uint8_t *p = base + b;
                __m256i z[4]; /* lane 0: row q, lane 1: row q + 4; 4 dwords each */
                for (int q = 0; q < 4; q++)
                    z[q] = _mm256_inserti128_si256(
                        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(p + off[q]))),
                        _mm_loadu_si128((const __m128i *)(p + off[q + 4])), 1);
                __m256i d01a = _mm256_unpacklo_epi32(z[0], z[1]), d01b = _mm256_unpacklo_epi32(z[2], z[3]);
                __m256i d23a = _mm256_unpackhi_epi32(z[0], z[1]), d23b = _mm256_unpackhi_epi32(z[2], z[3]);
                pq4_add8_avx2(_mm256_unpacklo_epi64(d01a, d01b), t, a); /* dword 0 of rows 0-3 | rows 4-7 */
                pq4_add8_avx2(_mm256_unpackhi_epi64(d01a, d01b), t + 128, a);
                pq4_add8_avx2(_mm256_unpacklo_epi64(d23a, d23b), t + 256, a);
                pq4_add8_avx2(_mm256_unpackhi_epi64(d23a, d23b), t + 384, a);
            }
            for (; b < half; b += 4, t += 128) {
                const uint8_t *p = base + b;
                pq4_add8_avx2(_mm256_setr_epi32(load32(p + off[0]), load32(p + off[1]), load32(p + off[2]),
                                                load32(p + off[3]), load32(p + off[4]), load32(p + off[5]),
                                                load32(p + off[6]), load32(p + off[7])), t, a);
            }
        }
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    }
    if (i < c) pq4_rows(out + i, codes, width, rows + i, c - i, layers, L, m, lut);
}
#endif

static PyObject *py_pq4(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"out", "codes", "rows", "layers", "lut", "kernel", NULL};
    PyObject *out_o, *codes_o, *rows_o, *layers_o, *lut_o;
    const char *kname = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO|z:pq4", kwlist, &out_o, &codes_o, &rows_o, &layers_o, &lut_o,
                                     &kname))
        return NULL;
    const kernel_t *kern = find_kernel(kname);
    if (!kern) return NULL;
    Py_buffer ob = {0}, cb = {0}, rb = {0}, lb = {0}, tb = {0};
    PyObject *ret = NULL;
    if (get_buf(codes_o, &cb, 0, "codes") < 0) return NULL;
    if (!fmt_is(&cb, 'B') || cb.ndim != 2) { PyErr_SetString(PyExc_TypeError, "codes must be uint8 (n, width)"); goto done; }
    if (get_rows(rows_o, &rb, cb.shape[0]) < 0) goto done;
    if (get_buf(out_o, &ob, 1, "out") < 0 || get_buf(layers_o, &lb, 0, "layers") < 0 || get_buf(lut_o, &tb, 0, "lut") < 0)
        goto done;
    if (!fmt_is(&ob, 'f') || ob.ndim != 1 || ob.shape[0] != rb.shape[0]) {
        PyErr_SetString(PyExc_TypeError, "out must be float32 with one value per row");
        goto done;
    }
    if (!fmt_is(&tb, 'f') || tb.ndim != 3 || tb.shape[2] != 16 || tb.shape[1] < 2 || tb.shape[1] % 2) {
        PyErr_SetString(PyExc_TypeError, "lut must be float32 (L, m, 16) with m even");
        goto done;
    }
    if (!is_i64_vec(&lb) || lb.shape[0] != tb.shape[0]) {
        PyErr_SetString(PyExc_TypeError, "layers must be a 1-D int64 array, one per table in lut");
        goto done;
    }
    int64_t m = tb.shape[1], width = cb.shape[1];
    const int64_t *lay = (const int64_t *)lb.buf;
    for (Py_ssize_t j = 0; j < lb.shape[0]; j++)
        if (lay[j] < 0 || (lay[j] + 1) * (m / 2) > width) {
            PyErr_Format(PyExc_IndexError, "layer %lld: its codes are beyond the row width %lld", (long long)lay[j],
                         (long long)width);
            goto done;
        }
    int simd = m % 8 != 0 ? 0 : strcmp(kern->name, "avx512") == 0 ? 2 : strcmp(kern->name, "avx2") == 0;
    Py_BEGIN_ALLOW_THREADS
#ifdef FK_X86
    if (simd == 2)
        pq4_rows_avx512((float *)ob.buf, (const uint8_t *)cb.buf, width, (const int64_t *)rb.buf, rb.shape[0], lay,
                        lb.shape[0], m, (const float *)tb.buf);
    else if (simd == 1)
        pq4_rows_avx2((float *)ob.buf, (const uint8_t *)cb.buf, width, (const int64_t *)rb.buf, rb.shape[0], lay,
                      lb.shape[0], m, (const float *)tb.buf);
    else
#endif
    pq4_rows((float *)ob.buf, (const uint8_t *)cb.buf, width, (const int64_t *)rb.buf, rb.shape[0], lay, lb.shape[0],
             m, (const float *)tb.buf);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    if (tb.obj) PyBuffer_Release(&tb);
    if (lb.obj) PyBuffer_Release(&lb);
    if (ob.obj) PyBuffer_Release(&ob);
    if (rb.obj) PyBuffer_Release(&rb);
    PyBuffer_Release(&cb);
    return ret;
}

static PyObject *py_kernels(PyObject *self, PyObject *unused) {
    PyObject *t = PyTuple_New(N_KERNELS);
    if (!t) return NULL;
    for (int i = 0; i < N_KERNELS; i++) {
        PyObject *s = PyUnicode_FromString(KERNELS[i].name);
        if (!s) { Py_DECREF(t); return NULL; }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

static PyMethodDef methods[] = {
    {"dot", (PyCFunction)(void (*)(void))py_dot, METH_VARARGS | METH_KEYWORDS,
     "dot(out, q, layers, start, stop, kernel=None) or dot(out, q, layers, rows, kernel=None): out[p, i] = "
     "sum over layers l of <q[p, l], row i of layers[l]> (float16 or float32 rows), float32; releases the GIL. "
     "norms=, metric='l2'|'cosine' (one probe): out holds the scan's costs instead."},
    {"exact", (PyCFunction)(void (*)(void))py_exact, METH_VARARGS | METH_KEYWORDS,
     "exact(out, q, layers, rows, metric, kernel=None): out[i] (float64) = the 'l2' distance or 'cosine' "
     "similarity of q (L, dim) float32 and row rows[i] of the L float16 or float32 layers, accumulated in float64; "
     "releases the GIL."},
    {"smallest", py_smallest, METH_VARARGS,
     "smallest(cost, pos, vals) -> count: the len(pos) smallest values of 1-D float32 cost, best first (NaN and "
     "+inf never selected); releases the GIL."},
    {"top", (PyCFunction)(void (*)(void))py_top, METH_VARARGS | METH_KEYWORDS,
     "top(q, layers, norms, metric, pos, vals, start, stop, mask=None, kernel=None) -> count: one probe's "
     "len(pos) best rows of start..stop-1 by the scan's cost (as dot(norms=, metric=)), best first, ties by row; "
     "mask (bool) limits the rows; releases the GIL."},
    {"rank", (PyCFunction)(void (*)(void))py_rank, METH_VARARGS | METH_KEYWORDS,
     "rank(q, layers, metric, pos, vals, kk, ids, out_ids, out_scores, kernel=None) -> count: the best kk candidate "
     "rows (pos, -1 = none) by their scan cost vals, re-scored as exact() does, ordered best first (ties by key id "
     "ids[row]); the first len(out_ids) written as key ids and float64 scores; releases the GIL."},
    {"pq4", (PyCFunction)(void (*)(void))py_pq4, METH_VARARGS | METH_KEYWORDS,
     "pq4(out, codes, rows, layers, lut, kernel=None): out[i] (float32) = the 4-bit PQ table sum of row rows[i] of "
     "codes (uint8 (n, width): every layer's m/2 bytes side by side) over the layers listed (int64), lut float32 "
     "(L, m, 16); releases the GIL."},
    {"kernels", py_kernels, METH_NOARGS, "Kernels this CPU can run, best first."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_f16dot",
                                    "Exact float16 x float32 multi-layer dot products (see _f16dot.c).", -1, methods};

PyMODINIT_FUNC PyInit__f16dot(void) {
    N_KERNELS = 0;
#ifdef FK_X86
    int avx2, avx512;
    detect(&avx2, &avx512);
    if (avx512) KERNELS[N_KERNELS++] = (kernel_t){"avx512", kernel_avx512, kernel_avx512_f32, 16};
    if (avx2) KERNELS[N_KERNELS++] = (kernel_t){"avx2", kernel_avx2, kernel_avx2_f32, 8};
#endif
    KERNELS[N_KERNELS++] = (kernel_t){"scalar", kernel_scalar, kernel_scalar, 1};
    PyObject *mod = PyModule_Create(&moddef);
    if (!mod) return NULL;
    if (PyModule_AddStringConstant(mod, "KERNEL", KERNELS[0].name) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
