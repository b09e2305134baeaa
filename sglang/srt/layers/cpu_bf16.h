// bf16 as raw uint16 bits, shared by the C files of the CPU kernel library (cpu_kernels.py builds
// them together). Rounding is torch's: to nearest even.
#ifndef SGLANG_CPU_BF16_H
#define SGLANG_CPU_BF16_H

#include <stdint.h>

typedef uint16_t bf16;

static inline float bf2f(bf16 x) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)x << 16};
    return v.f;
}

static inline bf16 f2bf(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (bf16)((v.u >> 16) | 0x40u);  // NaN stays NaN
    return (bf16)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

#endif
