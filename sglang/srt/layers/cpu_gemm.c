// bf16 linear layers on CPUs without a bf16 dot-product instruction (no AVX512-BF16, no AMX):
// out[m, n] = bf16(sum_k x[m, k] * w[n, k] + bias[n]), products and sums in float32.
//
// There, oneDNN and torch run a bf16 matmul at 10-18 GFLOP/s on two cores, against 50-160 for
// an fp32 sgemm; the weights stay bf16 here (half the memory of an fp32 copy) and are widened
// to float32 in registers. Compiled into the same library as cpu_kernels.c (AVX2 + FMA
// intrinsics; gemm_supported() is 0 on a build without them and the caller keeps torch).
//
// Layout: the weight [N, K] is packed once into panels of NR = 16 output columns, panel p
// holding row k of w[16p : 16p + 16, k] at [p][k] (zero past N; columns interleaved, see
// micro()), so the microkernel reads 32 contiguous bytes per k. x is widened once per call into
// a float32 [M, K] buffer. The microkernel keeps an MR x 16 block of float32 sums in 12 ymm
// registers; every output element is summed over k in the same order whatever M is, so a row's
// result does not depend on the batch it is in.

#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GEMM_OK 1
#else
#define GEMM_OK 0
#endif

#include "cpu_bf16.h"

#define NR 16   // output columns per panel
#define MR 6    // rows per microkernel call
#define MC 96   // rows per outer chunk (a multiple of MR): x chunk stays in L2

int gemm_supported(void) { return GEMM_OK; }

// panels: ceil(n / NR) * k * NR bf16; column c of a panel at slot 2c (c < 8) or 2(c - 8) + 1.
void gemm_pack_bf16(const bf16 *w, int64_t ldw, int64_t n, int64_t k, bf16 *panels) {
    const int64_t np = (n + NR - 1) / NR;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < np; p++) {
        bf16 *dst = panels + p * k * NR;
        for (int64_t c = 0; c < NR; c++) {
            const int64_t row = p * NR + c, slot = c < NR / 2 ? 2 * c : 2 * (c - NR / 2) + 1;
            if (row < n) {
                const bf16 *src = w + row * ldw;
                for (int64_t i = 0; i < k; i++) dst[i * NR + slot] = src[i];
            } else {
                for (int64_t i = 0; i < k; i++) dst[i * NR + slot] = 0;
            }
        }
    }
}

#if GEMM_OK
// sums[r][c] = sum_k x[r * ldx + k] * panel[k][c], r < rows (rows <= MR, a constant once
// inlined: the loops over r unroll and the 2 * rows accumulators stay in registers). A panel
// row holds its 16 bf16 interleaved (c0 c8 c1 c9 ...), so that as 32-bit lanes the low halves
// are columns 0-7 and the high halves columns 8-15: a shift and a mask widen them to float32
// (a bf16 is the top half of its float32) with no register beyond the 12 sums, the two halves
// and the broadcast.
// (Named sums, not arrays: with arrays gcc keeps one sum on the stack, a store-to-load chain
// that slowed the loop 1.5x.)
#define ROW(R)                                                              \
    if (rows > R) {                                                         \
        const __m256 b = _mm256_broadcast_ss(x + R * ldx + i);              \
        s##R##a = _mm256_fmadd_ps(b, lo, s##R##a);                          \
        s##R##b = _mm256_fmadd_ps(b, hi, s##R##b);                          \
    }
#define STORE(R)                                                            \
    if (rows > R) {                                                         \
        _mm256_storeu_ps(sums + R * NR, s##R##a);                           \
        _mm256_storeu_ps(sums + R * NR + 8, s##R##b);                       \
    }

static inline __attribute__((always_inline)) void micro(const float *x, int64_t ldx,
                                                        const bf16 *panel, int64_t k,
                                                        const int rows, float *sums) {
    __m256 s0a = _mm256_setzero_ps(), s0b = s0a, s1a = s0a, s1b = s0a, s2a = s0a, s2b = s0a,
           s3a = s0a, s3b = s0a, s4a = s0a, s4b = s0a, s5a = s0a, s5b = s0a;
    const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(-65536));
    for (int64_t i = 0; i < k; i++) {
        const __m256i w = _mm256_loadu_si256((const __m256i *)(panel + i * NR));
        const __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
        const __m256 hi = _mm256_and_ps(_mm256_castsi256_ps(w), mask);
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
    }
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5)
}
#undef ROW
#undef STORE

// One out-of-line copy per row count (inlined into the big loop, gcc spilled a sum anyway).
#define MICRO(R)                                                                          \
    static __attribute__((noinline)) void micro##R(const float *x, int64_t ldx,           \
                                                   const bf16 *panel, int64_t k, float *sums) { \
        micro(x, ldx, panel, k, R, sums);                                                 \
    }
MICRO(1) MICRO(2) MICRO(3) MICRO(4) MICRO(5) MICRO(6)
#undef MICRO

static void micro_any(const float *x, int64_t ldx, const bf16 *panel, int64_t k, int rows,
                      float *sums) {
    switch (rows) {
        case 6: micro6(x, ldx, panel, k, sums); break;
        case 5: micro5(x, ldx, panel, k, sums); break;
        case 4: micro4(x, ldx, panel, k, sums); break;
        case 3: micro3(x, ldx, panel, k, sums); break;
        case 2: micro2(x, ldx, panel, k, sums); break;
        default: micro1(x, ldx, panel, k, sums); break;
    }
}
#endif

// x: [m, k] bf16 rows (row stride ldx); panels from gemm_pack_bf16 for an [n, k] weight; bias
// [n] bf16 or NULL; out: [m, n] bf16 rows (row stride ldo).
void gemm_bf16(const bf16 *x, int64_t ldx, int64_t m, const bf16 *panels, int64_t n, int64_t k,
               const bf16 *bias, bf16 *out, int64_t ldo) {
#if GEMM_OK
    const int64_t np = (n + NR - 1) / NR;
    float *xf = aligned_alloc(64, ((m * k * sizeof(float)) + 63) / 64 * 64);
    if (!xf) abort();
    const int par = m * n * k >= 65536;
#pragma omp parallel if (par)
    {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < m; r++)
            for (int64_t i = 0; i < k; i++) xf[r * k + i] = bf2f(x[r * ldx + i]);
        for (int64_t m0 = 0; m0 < m; m0 += MC) {
            const int64_t mc = m - m0 < MC ? m - m0 : MC;
#pragma omp for schedule(static)
            for (int64_t p = 0; p < np; p++) {
                const int64_t c0 = p * NR, nc = n - c0 < NR ? n - c0 : NR;
                float sums[MR * NR];
                for (int64_t r0 = m0; r0 < m0 + mc; r0 += MR) {
                    const int rows = (int)(m0 + mc - r0 < MR ? m0 + mc - r0 : MR);
                    micro_any(xf + r0 * k, k, panels + p * k * NR, k, rows, sums);
                    for (int r = 0; r < rows; r++) {
                        bf16 *o = out + (r0 + r) * ldo + c0;
                        for (int64_t c = 0; c < nc; c++) {
                            float v = sums[r * NR + c];
                            if (bias) v += bf2f(bias[c0 + c]);
                            o[c] = f2bf(v);
                        }
                    }
                }
            }
        }
    }
    free(xf);
#else
    (void)x, (void)ldx, (void)m, (void)panels, (void)n, (void)k, (void)bias, (void)out,
        (void)ldo;
    abort();  // the caller checks gemm_supported() first
#endif
}
