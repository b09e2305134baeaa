// CPU kernels for bfloat16 inference: fused residual-add + RMSNorm, RoPE with the KV-pool
// store, and decode attention straight over the paged KV pool.
//
// C11 + OpenMP, compiled by cpu_kernels.py once per instruction set (portable, AVX2 + FMA,
// AVX-512; the loader picks the best one the CPU has) and called through ctypes. Element-wise
// loops are left to the compiler's vectoriser (`omp simd`); the dot products of decode attention
// use AVX-512 or AVX2 intrinsics in the builds for them (gcc reduces an `omp simd` sum with
// serial adds), with a portable loop otherwise. bf16 is handled as raw uint16 bits. Rounding
// matches torch's bf16 ops (round to nearest even), so results agree with the torch path to the
// last bit in most elements and within one bf16 ulp elsewhere (reduction order).

#include <math.h>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#include <stdint.h>
#include <string.h>

#include "cpu_bf16.h"

#define BLK 32     // decode attention: positions per online-softmax block
#define MAX_G 16   // query heads per kv head
#define MAX_D 256  // head_dim

// exp(x) for x <= 0 (softmax after max subtraction): Cody-Waite range reduction and a degree-6
// polynomial, relative error < 2e-7; vectorisable, unlike libm's expf without -ffast-math.
#pragma omp declare simd
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693145751953125f - n * 1.42860682030941723212e-6f;
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { uint32_t u; float f; } s = {.u = (uint32_t)((int32_t)n + 127) << 23};
    return p * s.f;
}

// Pool rows are scattered (pages anywhere in the pool): without a hint every K/V row of decode
// attention is a cache miss the hardware prefetcher cannot foresee (measured: 2.9 ms against
// 0.4 ms on contiguous rows, batch 32 x 160 tokens). Fetch the head's K and V bytes of the row
// PF positions ahead.
#define PF 8
static inline void prefetch_row(const bf16 *k, const bf16 *v, int64_t bytes) {
    for (int64_t b = 0; b < bytes; b += 64) {
        __builtin_prefetch((const char *)k + b, 0, 3);
        __builtin_prefetch((const char *)v + b, 0, 3);
    }
}

// ---- residual add + RMSNorm ------------------------------------------------------------------
// For each row t: if residual: residual[t] = bf16(residual[t] + x[t]) (in place) and r = that,
// else r = x[t]. Then out[t] = bf16(w * bf16(r / rms(r))), rms in float32, as HF's LlamaRMSNorm.
void add_rmsnorm_bf16(const bf16 *x, int64_t x_stride, bf16 *residual, int64_t res_stride,
                      const bf16 *w, bf16 *out, int64_t out_stride, int64_t rows, int64_t n,
                      float eps) {
#pragma omp parallel for schedule(static) if (rows * n >= 32768)
    for (int64_t t = 0; t < rows; t++) {
        const bf16 *xr = x + t * x_stride;
        bf16 *o = out + t * out_stride;
        float ss = 0.0f;
        if (residual) {
            bf16 *rr = residual + t * res_stride;
#pragma omp simd reduction(+ : ss)
            for (int64_t i = 0; i < n; i++) {
                bf16 s = f2bf(bf2f(rr[i]) + bf2f(xr[i]));
                rr[i] = s;
                float f = bf2f(s);
                ss += f * f;
            }
            xr = rr;
        } else {
#pragma omp simd reduction(+ : ss)
            for (int64_t i = 0; i < n; i++) {
                float f = bf2f(xr[i]);
                ss += f * f;
            }
        }
        float inv = 1.0f / sqrtf(ss / (float)n + eps);
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            o[i] = f2bf(bf2f(w[i]) * bf2f(f2bf(bf2f(xr[i]) * inv)));
    }
}

// ---- RoPE (rotate_half convention) ------------------------------------------------------------
// qk: rows of (heads + kv_heads) * d, row stride qk_stride; rotated in place as HF does in bf16:
// bf16(bf16(x * cos) + bf16(rotate_half(x) * sin)). cos/sin: [max_pos, d] bf16 tables (sin with
// the rotate_half sign folded in: [-sin_lo, sin_hi]).
void rope_bf16(bf16 *qk, int64_t qk_stride, const int64_t *pos, const bf16 *cos_t,
               const bf16 *sin_t, int64_t tokens, int64_t heads, int64_t kv_heads, int64_t d) {
    const int64_t half = d / 2, nh = heads + kv_heads;
#pragma omp parallel for schedule(static) if (tokens * nh * d >= 32768)
    for (int64_t t = 0; t < tokens; t++) {
        const bf16 *c = cos_t + pos[t] * d, *s = sin_t + pos[t] * d;
        bf16 *row = qk + t * qk_stride;
        for (int64_t h = 0; h < nh; h++) {
            bf16 *x = row + h * d;
            float lo[MAX_D / 2], hi[MAX_D / 2];
#pragma omp simd
            for (int64_t i = 0; i < half; i++) {
                lo[i] = bf2f(x[i]);
                hi[i] = bf2f(x[i + half]);
            }
#pragma omp simd
            for (int64_t i = 0; i < half; i++) {
                float a = bf2f(f2bf(lo[i] * bf2f(c[i])));
                float b = bf2f(f2bf(hi[i] * bf2f(s[i])));  // s[i] holds -sin
                float a2 = bf2f(f2bf(hi[i] * bf2f(c[i + half])));
                float b2 = bf2f(f2bf(lo[i] * bf2f(s[i + half])));
                x[i] = f2bf(a + b);
                x[i + half] = f2bf(a2 + b2);
            }
        }
    }
}

// ---- KV-pool store ---------------------------------------------------------------------------
// The k and v rows (width elements, row strides k_stride / v_stride) of token t go to pool rows
// loc[t] (row stride pool_stride): one call instead of two index_copy_.
void store_kv_bf16(const bf16 *k, int64_t k_stride, const bf16 *v, int64_t v_stride,
                   const int64_t *loc, int64_t tokens, int64_t width, bf16 *k_pool, bf16 *v_pool,
                   int64_t pool_stride) {
#pragma omp parallel for schedule(static) if (tokens * width >= 65536)
    for (int64_t t = 0; t < tokens; t++) {
        memcpy(k_pool + loc[t] * pool_stride, k + t * k_stride, width * sizeof(bf16));
        memcpy(v_pool + loc[t] * pool_stride, v + t * v_stride, width * sizeof(bf16));
    }
}

// ---- decode attention over the paged pool ----------------------------------------------------
// One query token per request. q: [B, heads * d] (row stride q_stride); the context of request b
// is pool rows idx[b * idx_stride + j], j < lens[b] (k_pool/v_pool rows of kv_heads * d, row
// stride pool_stride). out: [B, heads * d] (row stride out_stride). Grouped-query: the
// g = heads / kv_heads query heads of a kv head share each K/V row read. Online softmax in
// float32 over blocks of BLK positions; one (request, kv head) pair per OpenMP work item.

// Portable version: any g <= MAX_G, d <= MAX_D.
static void attn_item_generic(const bf16 *q, const bf16 *k_pool, const bf16 *v_pool,
                              int64_t pool_stride, const int64_t *ix, int64_t len, int64_t off,
                              bf16 *out, int64_t g, int64_t d, float scale) {
    float qf[MAX_G * MAX_D], acc[MAX_G * MAX_D], m[MAX_G], l[MAX_G], sc[BLK];
    for (int64_t i = 0; i < g * d; i++) {
        qf[i] = bf2f(q[i]) * scale;
        acc[i] = 0.0f;
    }
    for (int64_t j = 0; j < g; j++) {
        m[j] = -INFINITY;
        l[j] = 0.0f;
    }
    for (int64_t p0 = 0; p0 < len; p0 += BLK) {
        const int64_t n = len - p0 < BLK ? len - p0 : BLK;
        for (int64_t j = 0; j < g; j++) {
            float mx = m[j], sum = 0.0f;
            for (int64_t p = 0; p < n; p++) {
                const bf16 *kr = k_pool + ix[p0 + p] * pool_stride + off;
                float s = 0.0f;
                for (int64_t i = 0; i < d; i++) s += qf[j * d + i] * bf2f(kr[i]);
                sc[p] = s;
                mx = s > mx ? s : mx;
            }
            const float corr = exp_neg(m[j] - mx);  // first block: m = -inf, corr ~ 0
            for (int64_t i = 0; i < d; i++) acc[j * d + i] *= corr;
            for (int64_t p = 0; p < n; p++) {
                const float w = exp_neg(sc[p] - mx);
                const bf16 *vr = v_pool + ix[p0 + p] * pool_stride + off;
                sum += w;
                for (int64_t i = 0; i < d; i++) acc[j * d + i] += w * bf2f(vr[i]);
            }
            l[j] = l[j] * corr + sum;
            m[j] = mx;
        }
    }
    for (int64_t j = 0; j < g; j++) {
        const float inv = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
        for (int64_t i = 0; i < d; i++) out[j * d + i] = f2bf(acc[j * d + i] * inv);
    }
}

#if defined(__AVX512F__)
#define VEC 16
static inline __m512 load16(const bf16 *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __m512 exp16(__m512 x) {  // exp_neg, 16 lanes
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// AVX-512 version, d a multiple of 16. Inlined with constant g and d, q and the accumulators
// live in registers and every loop over d is unrolled.
static inline __attribute__((always_inline)) void attn_item_avx512(
    const bf16 *q, const bf16 *k_pool, const bf16 *v_pool, int64_t pool_stride,
    const int64_t *ix, int64_t len, int64_t off, bf16 *out, const int64_t g, const int64_t d,
    float scale) {
    const int64_t nc = d / VEC;
    __m512 qv[MAX_G][MAX_D / VEC], acc[MAX_G][MAX_D / VEC];
    float m[MAX_G], l[MAX_G], sc[MAX_G][BLK] __attribute__((aligned(64)));
    for (int64_t j = 0; j < g; j++) {
        for (int64_t c = 0; c < nc; c++) {
            qv[j][c] = _mm512_mul_ps(load16(q + j * d + c * VEC), _mm512_set1_ps(scale));
            acc[j][c] = _mm512_setzero_ps();
        }
        m[j] = -INFINITY;
        l[j] = 0.0f;
    }
    for (int64_t p0 = 0; p0 < len; p0 += BLK) {
        const int64_t n = len - p0 < BLK ? len - p0 : BLK;
        const int64_t *bx = ix + p0;
        for (int64_t p = 0; p < n; p++) {  // scores: each K row read once for all g heads
            const bf16 *kr = k_pool + bx[p] * pool_stride + off;
            if (p0 + p + PF < len)
                prefetch_row(k_pool + bx[p + PF] * pool_stride + off,
                             v_pool + bx[p + PF] * pool_stride + off, d * sizeof(bf16));
            __m512 kv[MAX_D / VEC];
            for (int64_t c = 0; c < nc; c++) kv[c] = load16(kr + c * VEC);
            for (int64_t j = 0; j < g; j++) {
                __m512 s = _mm512_mul_ps(qv[j][0], kv[0]);
                for (int64_t c = 1; c < nc; c++) s = _mm512_fmadd_ps(qv[j][c], kv[c], s);
                sc[j][p] = _mm512_reduce_add_ps(s);
            }
        }
        const __mmask16 m0 = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
        const __mmask16 m1 = n >= 32 ? 0xffff : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
        for (int64_t j = 0; j < g; j++) {  // online softmax over the block
            __m512 s0 = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m0, sc[j]);
            __m512 s1 = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m1, sc[j] + VEC);
            float mx = _mm512_reduce_max_ps(_mm512_max_ps(s0, s1));
            mx = mx > m[j] ? mx : m[j];
            const __m512 vmx = _mm512_set1_ps(mx);
            __m512 e0 = _mm512_maskz_mov_ps(m0, exp16(_mm512_sub_ps(s0, vmx)));
            __m512 e1 = _mm512_maskz_mov_ps(m1, exp16(_mm512_sub_ps(s1, vmx)));
            _mm512_store_ps(sc[j], e0);
            _mm512_store_ps(sc[j] + VEC, e1);
            const float corr = exp_neg(m[j] - mx);  // first block: m = -inf, corr ~ 0
            l[j] = l[j] * corr + _mm512_reduce_add_ps(_mm512_add_ps(e0, e1));
            m[j] = mx;
            const __m512 vc = _mm512_set1_ps(corr);
            for (int64_t c = 0; c < nc; c++) acc[j][c] = _mm512_mul_ps(acc[j][c], vc);
        }
        for (int64_t p = 0; p < n; p++) {  // values: each V row read once for all g heads
            const bf16 *vr = v_pool + bx[p] * pool_stride + off;
            for (int64_t c = 0; c < nc; c++) {
                const __m512 vv = load16(vr + c * VEC);
                for (int64_t j = 0; j < g; j++)
                    acc[j][c] = _mm512_fmadd_ps(_mm512_set1_ps(sc[j][p]), vv, acc[j][c]);
            }
        }
    }
    for (int64_t j = 0; j < g; j++) {
        const float inv = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
        float o[MAX_D];
        for (int64_t c = 0; c < nc; c++)
            _mm512_storeu_ps(o + c * VEC, _mm512_mul_ps(acc[j][c], _mm512_set1_ps(inv)));
        for (int64_t i = 0; i < d; i++) out[j * d + i] = f2bf(o[i]);
    }
}
#define ATTN_ITEM_FAST attn_item_avx512
#define FAST_OK(d) ((d) % VEC == 0)
#elif defined(__AVX2__) && defined(__FMA__)
#define VEC 8
static inline __m256 load8(const bf16 *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// AVX2 version, d a multiple of 8: the dot products and the V accumulation in 8-lane FMAs
// (the portable loop's serial sums cost ~10x); the block's softmax as in the portable version.
static inline __attribute__((always_inline)) void attn_item_avx2(
    const bf16 *q, const bf16 *k_pool, const bf16 *v_pool, int64_t pool_stride,
    const int64_t *ix, int64_t len, int64_t off, bf16 *out, const int64_t g, const int64_t d,
    float scale) {
    const int64_t nc = d / VEC;
    __m256 qv[MAX_G][MAX_D / VEC], acc[MAX_G][MAX_D / VEC];
    float m[MAX_G], l[MAX_G], sc[MAX_G][BLK];
    for (int64_t j = 0; j < g; j++) {
        for (int64_t c = 0; c < nc; c++) {
            qv[j][c] = _mm256_mul_ps(load8(q + j * d + c * VEC), _mm256_set1_ps(scale));
            acc[j][c] = _mm256_setzero_ps();
        }
        m[j] = -INFINITY;
        l[j] = 0.0f;
    }
    for (int64_t p0 = 0; p0 < len; p0 += BLK) {
        const int64_t n = len - p0 < BLK ? len - p0 : BLK;
        const int64_t *bx = ix + p0;
        for (int64_t p = 0; p < n; p++) {  // scores: each K row read once for all g heads
            const bf16 *kr = k_pool + bx[p] * pool_stride + off;
            if (p0 + p + PF < len)
                prefetch_row(k_pool + bx[p + PF] * pool_stride + off,
                             v_pool + bx[p + PF] * pool_stride + off, d * sizeof(bf16));
            __m256 kv[MAX_D / VEC];
            for (int64_t c = 0; c < nc; c++) kv[c] = load8(kr + c * VEC);
            for (int64_t j = 0; j < g; j++) {
                __m256 s = _mm256_mul_ps(qv[j][0], kv[0]);
                for (int64_t c = 1; c < nc; c++) s = _mm256_fmadd_ps(qv[j][c], kv[c], s);
                sc[j][p] = hsum8(s);
            }
        }
        for (int64_t j = 0; j < g; j++) {  // online softmax over the block
            float mx = m[j], sum = 0.0f;
            for (int64_t p = 0; p < n; p++) mx = sc[j][p] > mx ? sc[j][p] : mx;
#pragma omp simd reduction(+ : sum)
            for (int64_t p = 0; p < n; p++) {
                sc[j][p] = exp_neg(sc[j][p] - mx);
                sum += sc[j][p];
            }
            const float corr = exp_neg(m[j] - mx);  // first block: m = -inf, corr ~ 0
            l[j] = l[j] * corr + sum;
            m[j] = mx;
            const __m256 vc = _mm256_set1_ps(corr);
            for (int64_t c = 0; c < nc; c++) acc[j][c] = _mm256_mul_ps(acc[j][c], vc);
        }
        for (int64_t p = 0; p < n; p++) {  // values: each V row read once for all g heads
            const bf16 *vr = v_pool + bx[p] * pool_stride + off;
            for (int64_t c = 0; c < nc; c++) {
                const __m256 vv = load8(vr + c * VEC);
                for (int64_t j = 0; j < g; j++)
                    acc[j][c] = _mm256_fmadd_ps(_mm256_set1_ps(sc[j][p]), vv, acc[j][c]);
            }
        }
    }
    for (int64_t j = 0; j < g; j++) {
        const float inv = l[j] > 0.0f ? 1.0f / l[j] : 0.0f;
        float o[MAX_D];
        for (int64_t c = 0; c < nc; c++)
            _mm256_storeu_ps(o + c * VEC, _mm256_mul_ps(acc[j][c], _mm256_set1_ps(inv)));
        for (int64_t i = 0; i < d; i++) out[j * d + i] = f2bf(o[i]);
    }
}
#define ATTN_ITEM_FAST attn_item_avx2
#define FAST_OK(d) ((d) % VEC == 0)
#else
#define ATTN_ITEM_FAST attn_item_generic
#define FAST_OK(d) 1
#endif

// One copy of the parallel loop per common (g, d), so that the inner loops have fixed trip
// counts, and a generic copy for any other shape. With a few requests or more, a thread takes
// all kv heads of a request in a row, so its K/V rows come from DRAM once (then from cache).
#define ATTN_LOOP(ITEM, G, D)                                                                    \
    _Pragma("omp parallel for collapse(2) schedule(dynamic, chunk)")                             \
    for (int64_t b = 0; b < batch; b++)                                                          \
        for (int64_t kh = 0; kh < kv_heads; kh++)                                                \
            ITEM(q + b * q_stride + kh * (G) * (D), k_pool, v_pool, pool_stride,                 \
                 idx + b * idx_stride, lens[b], kh * (D), out + b * out_stride + kh * (G) * (D), \
                 G, D, scale);

void decode_attn_bf16(const bf16 *q, int64_t q_stride, const bf16 *k_pool, const bf16 *v_pool,
                      int64_t pool_stride, const int64_t *idx, int64_t idx_stride,
                      const int64_t *lens, bf16 *out, int64_t out_stride, int64_t batch,
                      int64_t heads, int64_t kv_heads, int64_t d, float scale) {
    const int64_t g = heads / kv_heads, chunk = batch >= 4 ? kv_heads : 1;
#define CASE(G, D) else if (g == G && d == D) { ATTN_LOOP(ATTN_ITEM_FAST, G, D) }
    if (0) {
    }
    CASE(1, 64) CASE(2, 64) CASE(3, 64) CASE(4, 64) CASE(8, 64)
    CASE(1, 128) CASE(2, 128) CASE(4, 128) CASE(5, 128) CASE(6, 128) CASE(7, 128) CASE(8, 128)
    else if (FAST_OK(d)) { ATTN_LOOP(ATTN_ITEM_FAST, g, d) }
    else { ATTN_LOOP(attn_item_generic, g, d) }
#undef CASE
}

// ---- greedy sampling ------------------------------------------------------------------------
// out[r] = the first index of the largest value of float32 row r (as torch.argmax; NaN-free rows).
void argmax_f32(const float *x, int64_t stride, int64_t rows, int64_t n, int64_t *out) {
#pragma omp parallel for schedule(static) if (rows * n >= 8388608)
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * stride;
        float best = -INFINITY;
#pragma omp simd reduction(max : best)
        for (int64_t i = 0; i < n; i++) best = row[i] > best ? row[i] : best;
        int64_t i = 0;
#if defined(__AVX512F__)
        const __m512 vb = _mm512_set1_ps(best);
        for (; i + VEC <= n; i += VEC) {
            __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + i), vb, _CMP_EQ_OQ);
            if (m) {
                i += __builtin_ctz(m);
                break;
            }
        }
#endif
        while (i < n - 1 && row[i] != best) i++;
        out[r] = i;
    }
}

int kernels_abi_version(void) { return 4; }

// The instruction-set extensions this build may contain, in /proc/cpuinfo's spelling. The loader
// (cpu_kernels.py) reads this string from the file's bytes before loading it, and refuses a build
// that uses anything the CPU lacks: running it would kill the process with SIGILL.
__attribute__((used)) const char sglang_kernel_isa[] = "sglang-kernel-isa:"
#ifdef __AVX__
    " avx"
#endif
#ifdef __AVX2__
    " avx2"
#endif
#ifdef __FMA__
    " fma"
#endif
#ifdef __F16C__
    " f16c"
#endif
#ifdef __BMI__
    " bmi1"
#endif
#ifdef __BMI2__
    " bmi2"
#endif
#ifdef __AVX512F__
    " avx512f"
#endif
#ifdef __AVX512BW__
    " avx512bw"
#endif
#ifdef __AVX512DQ__
    " avx512dq"
#endif
#ifdef __AVX512VL__
    " avx512vl"
#endif
#ifdef __AVX512CD__
    " avx512cd"
#endif
#ifdef __AVX512VNNI__
    " avx512_vnni"
#endif
#ifdef __AVX512BF16__
    " avx512_bf16"
#endif
#ifdef __AVX512FP16__
    " avx512_fp16"
#endif
#ifdef __AMX_TILE__
    " amx_tile"
#endif
    ";";
