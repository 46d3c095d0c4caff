/* The decoder layer's row-wise float32 work on the CPU, each as one pass over memory: RMSNorm
 * (alone and fused with the residual add before it), SiLU(gate) * up, and rotary embedding in
 * place. torch runs each of these as several kernels with a fresh activation-sized tensor in
 * between; inside a step, where the linears have just streamed megabytes of weights through
 * the caches, those extra passes cost 2-3x what they cost in isolation.
 *
 * Rows are split across OpenMP threads (torch's pool: the library links the same runtime) when
 * there is enough work to pay for the fork. Every row is a contiguous run of floats; row strides
 * are in floats. The arithmetic is the reference's, in the same order, except that sums are
 * accumulated in vector lanes and multiply-adds may fuse.
 */
#include <math.h>
#include <stdint.h>

#include "vec_math.h"

#define PARALLEL_MIN 32768 /* elements: below this one thread is faster than a fork */

static float mean_square(const float *x, int64_t dim) {
    vf acc = splat(0.0f);
    int64_t j = 0;
    for (; j + VL <= dim; j += VL) {
        vf v = load_vf(x + j);
        acc += v * v;
    }
    float s = sum_vf(acc);
    for (; j < dim; j++) s += x[j] * x[j];
    return s / (float)dim;
}

static void norm_row(const float *x, const float *w, float *out, int64_t dim, float eps) {
    const float r = 1.0f / sqrtf(mean_square(x, dim) + eps);
    const vf rv = splat(r);
    int64_t j = 0;
    for (; j + VL <= dim; j += VL) store_vf(out + j, load_vf(x + j) * rv * load_vf(w + j));
    for (; j < dim; j++) out[j] = x[j] * r * w[j];
}

/* out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w */
void rms_norm_rows(const float *x, int64_t x_stride, const float *w, float *out, int64_t rows, int64_t dim,
                   float eps, int threads) {
#pragma omp parallel for num_threads(threads) if (rows * dim >= PARALLEL_MIN) schedule(static)
    for (int64_t t = 0; t < rows; t++) norm_row(x + t * x_stride, w, out + t * dim, dim, eps);
}

/* h[t] += r[t] (the residual add, in place), then out[t] = rms_norm(h[t]) */
void add_rms_norm_rows(float *h, const float *r, const float *w, float *out, int64_t rows, int64_t dim,
                       float eps, int threads) {
#pragma omp parallel for num_threads(threads) if (rows * dim >= PARALLEL_MIN) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        float *hr = h + t * dim;
        const float *rr = r + t * dim;
        int64_t j = 0;
        for (; j + VL <= dim; j += VL) store_vf(hr + j, load_vf(hr + j) + load_vf(rr + j));
        for (; j < dim; j++) hr[j] += rr[j];
        norm_row(hr, w, out + t * dim, dim, eps);
    }
}

/* out[t, j] = silu(gu[t, j]) * gu[t, inter + j]; rows of gu are 2 * inter floats */
void silu_mul_rows(const float *gu, float *out, int64_t rows, int64_t inter, int threads) {
#pragma omp parallel for num_threads(threads) if (rows * inter >= PARALLEL_MIN) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        const float *g = gu + t * 2 * inter, *u = g + inter;
        float *o = out + t * inter;
        int64_t j = 0;
        for (; j + VL <= inter; j += VL) {
            vf x = load_vf(g + j);
            store_vf(o + j, x / (splat(1.0f) + exp_vf(-x)) * load_vf(u + j));
        }
        for (; j < inter; j++) o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}

/* Rotary embedding in place on the first `heads` heads (d floats each) of every row:
 * x[i] = x[i] * cos[i] + rot[i] * sin[i] with rot = (-x[h:], x[:h]), h = d / 2, and cos/sin
 * rows of d floats per token (each half the same angles, as the reference lays them out). */
void rope_rows(float *x, int64_t x_stride, const float *cos_t, const float *sin_t, int64_t rows, int64_t heads,
               int64_t d, int threads) {
    const int64_t half = d / 2;
#pragma omp parallel for num_threads(threads) if (rows * heads * d >= PARALLEL_MIN) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        const float *c = cos_t + t * d, *s = sin_t + t * d;
        for (int64_t hd = 0; hd < heads; hd++) {
            float *a = x + t * x_stride + hd * d, *b = a + half;
            int64_t j = 0;
            for (; j + VL <= half; j += VL) {
                vf xa = load_vf(a + j), xb = load_vf(b + j);
                store_vf(a + j, xa * load_vf(c + j) + -xb * load_vf(s + j));
                store_vf(b + j, xb * load_vf(c + half + j) + xa * load_vf(s + half + j));
            }
            for (; j < half; j++) {
                float xa = a[j], xb = b[j];
                a[j] = xa * c[j] + -xb * s[j];
                b[j] = xb * c[half + j] + xa * s[half + j];
            }
        }
    }
}
