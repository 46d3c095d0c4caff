/* Float vectors for the CPU kernels, in GCC vector extensions: -march=native makes them AVX-512
 * (16 floats) or AVX2 (8 floats), so one source serves both. */
#ifndef VEC_MATH_H
#define VEC_MATH_H

#include <stdint.h>

#if defined(__AVX512F__)
#define VL 16 /* floats per vector */
#else
#define VL 8
#endif

typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef float vf_unaligned __attribute__((vector_size(VL * 4), aligned(4)));

static inline vf splat(float x) { return (vf){0} + x; }
static inline vf load_vf(const float *p) { return *(const vf_unaligned *)p; }
static inline void store_vf(float *p, vf x) { *(vf_unaligned *)p = x; }
static inline vf select_vf(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
static inline vf max_vf(vf a, vf b) { return select_vf(a > b, a, b); }
static inline vf min_vf(vf a, vf b) { return select_vf(a < b, a, b); }

static inline float sum_vf(vf x) {
    float s = 0.0f;
    for (int l = 0; l < VL; l++) s += x[l];
    return s;
}

/* exp(x) per lane: 2^n * e^r with n = round(x / ln 2), |r| <= ln(2) / 2, degree-6 polynomial
 * (relative error ~2e-7). Inputs are clamped to [-87, 88]: below, the result is ~1e-38 (callers
 * that need exact zeros mask them); above, ~1.6e38 instead of overflowing. */
static inline vf exp_vf(vf x) {
    x = min_vf(max_vf(x, splat(-87.0f)), splat(88.0f));
    const vf round_magic = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vf n = (x * splat(1.44269504f) + round_magic) - round_magic;
    vf r = x - n * splat(0.693145752f) - n * splat(1.42860677e-6f);
    vf p = splat(1.0f / 720);
    p = p * r + splat(1.0f / 120);
    p = p * r + splat(1.0f / 24);
    p = p * r + splat(1.0f / 6);
    p = p * r + splat(0.5f);
    p = p * r + splat(1.0f);
    p = p * r + splat(1.0f);
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)e;
}

#endif
