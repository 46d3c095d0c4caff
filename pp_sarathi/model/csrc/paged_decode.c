/* Decode attention over the paged KV cache, read in place (float32, CPU).
 *
 * A decode is one query token per sequence. Its keys and values are the slots its block table
 * names; SDPA needs them gathered into a contiguous copy first, which moves as many bytes as the
 * attention itself reads. These two loops read each K and V row where it lies, once, for all
 * the query heads that share it (grouped-query attention). The softmax between them stays in
 * torch (vectorised exp).
 *
 * Layouts (all contiguous): q [D, H, d]; k_pool, v_pool [slots, Hkv, d]; tables [D, W] block
 * ids; lens [D] keys per sequence; scores/probs [D, H, width] with width >= W * block_size;
 * out [D, H, d]. Sequences are split across OpenMP threads; loaded into a torch process, the
 * library shares torch's OpenMP runtime (same soname), so it uses torch's thread pool; the
 * caller passes the thread count (a thread other than the one that set it would not see it).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "paged_kv.h"

#define LANES 16

static inline float dot(const float *restrict a, const float *restrict b, int64_t d) {
    float acc[LANES] = {0};
    for (int64_t i = 0; i < d; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[i + l] * b[i + l];
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) s += acc[l];
    return s;
}

void paged_decode_scores(const float *restrict q, const float *restrict k_pool,
                         const int64_t *restrict tables, const int64_t *restrict lens,
                         float *restrict scores, int64_t W, int64_t H, int64_t Hkv, int64_t d,
                         int64_t D, int64_t block_size, int64_t width, float scale,
                         int threads) {
    const int64_t g = H / Hkv;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t s = 0; s < D; s++) {
        const float *qs = q + s * H * d;
        float *sc = scores + s * H * width;
        const int64_t len = lens[s];
        for (int64_t t = 0; t < len; t++) {
            const float *krow = k_pool + slot_of(tables + s * W, t, block_size) * Hkv * d;
            for (int64_t kvh = 0; kvh < Hkv; kvh++)
                for (int64_t j = 0; j < g; j++) {
                    const int64_t h = kvh * g + j;
                    sc[h * width + t] = dot(qs + h * d, krow + kvh * d, d) * scale;
                }
        }
        for (int64_t h = 0; h < H; h++)
            for (int64_t t = len; t < width; t++) sc[h * width + t] = -INFINITY;
    }
}

void paged_decode_values(const float *restrict probs, const float *restrict v_pool,
                         const int64_t *restrict tables, const int64_t *restrict lens,
                         float *restrict out, int64_t W, int64_t H, int64_t Hkv, int64_t d,
                         int64_t D, int64_t block_size, int64_t width, int threads) {
    const int64_t g = H / Hkv;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t s = 0; s < D; s++) {
        const float *p = probs + s * H * width;
        float *o = out + s * H * d;
        memset(o, 0, (size_t)(H * d) * sizeof(float));
        const int64_t len = lens[s];
        for (int64_t t = 0; t < len; t++) {
            const float *vrow = v_pool + slot_of(tables + s * W, t, block_size) * Hkv * d;
            for (int64_t kvh = 0; kvh < Hkv; kvh++)
                for (int64_t j = 0; j < g; j++) {
                    const int64_t h = kvh * g + j;
                    const float w = p[h * width + t];
                    float *restrict oh = o + h * d;
                    const float *restrict vh = vrow + kvh * d;
                    for (int64_t x = 0; x < d; x++) oh[x] += w * vh[x];
                }
        }
    }
}
