/* Causal attention of a prefill chunk over the paged KV cache, read in place (float32, CPU).
 *
 * A chunk of n query tokens at positions start .. start+n-1 attends to keys 0 .. its own
 * position; its own K/V are already in the cache. SDPA would need the keys gathered into a
 * contiguous copy, and its CPU kernel multiplies through a GEMM path that runs far below the
 * packed linears on some CPUs. This is a flash-attention loop in GCC vector extensions (AVX-512
 * or AVX2, whatever -march=native gives), shaped so that every multiply is a fused multiply-add
 * with one operand broadcast straight from a cache row:
 *
 *   - a tile is VL query vectors of one KV head (lane l = one (position, query head) pair of the
 *     head's group), held transposed: qt[x] is the vector of element x over the tile's lanes;
 *   - scores of KB keys: s[j] = sum_x qt[x] * k_j[x], k_j read where its block table puts it;
 *   - an online softmax per lane (running max m, running sum l), exponentials vectorised;
 *   - values: ot[x] = ot[x] * alpha + sum_j p[j] * v_j[x], v_j read in place.
 *
 * Layouts: q rows at q + i * q_stride (heads contiguous, d floats each); k_pool, v_pool
 * [slots, Hkv, d] contiguous; table: the sequence's block ids; out rows at out + i * out_stride.
 * Tiles are split across OpenMP threads (torch's pool: the library links the same runtime).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "paged_kv.h"
#include "vec_math.h"

#if defined(__AVX512F__)
#define KB 8 /* keys per step */
#else
#define KB 4
#endif
#define NT 2        /* vectors of lanes per tile: each broadcast feeds NT multiply-adds */
#define TL (NT * VL) /* lanes (query vectors) per tile */
#define XB KB       /* value columns per step */

/* One tile: rows [row0, row0 + TL) of KV head g (row = i * group + head in group). */
static void chunk_tile(const float *restrict q, int64_t q_stride, const float *restrict k_pool,
                       const float *restrict v_pool, const int64_t *restrict table, int64_t block_size,
                       int64_t start, int64_t n, float *restrict out, int64_t out_stride, int64_t Hkv,
                       int64_t group, int64_t d, float scale, int64_t g, int64_t row0) {
    const int64_t rows = n * group;
    vf qt[d][NT], ot[d][NT];
    int32_t pos_lane[TL];
    int64_t last_pos = 0;
    for (int l = 0; l < TL; l++) {
        /* Lanes past the last row repeat it (same work, never stored). */
        const int64_t row = row0 + l < rows ? row0 + l : rows - 1;
        const int64_t i = row / group, h = g * group + row % group;
        const float *qr = q + i * q_stride + h * d;
        for (int64_t x = 0; x < d; x++) qt[x][l / VL][l % VL] = qr[x] * scale;
        pos_lane[l] = (int32_t)(start + i);
        if (start + i > last_pos) last_pos = start + i;
    }
    vi pos[NT];
    memcpy(pos, pos_lane, sizeof pos);
    const int32_t first_pos = pos_lane[0];
    for (int64_t x = 0; x < d; x++)
        for (int t = 0; t < NT; t++) ot[x][t] = splat(0.0f);
    vf m[NT], lsum[NT];
    for (int t = 0; t < NT; t++) m[t] = splat(-INFINITY), lsum[t] = splat(0.0f);
    const int64_t kv_stride = Hkv * d, num_keys = last_pos + 1;

    for (int64_t j0 = 0; j0 < num_keys; j0 += KB) {
        const float *kp[KB], *vp[KB];
        const int one_block = block_size % KB == 0 && j0 + KB <= num_keys; /* KB keys in a row */
        const int64_t slot0 = one_block ? slot_of(table, j0, block_size) : 0;
        for (int j = 0; j < KB; j++) {
            /* Keys past the end repeat the last one; the causal mask zeroes them. */
            const int64_t key = j0 + j < num_keys ? j0 + j : num_keys - 1;
            const int64_t off = (one_block ? slot0 + j : slot_of(table, key, block_size)) * kv_stride + g * d;
            kp[j] = k_pool + off;
            vp[j] = v_pool + off;
        }
        vf s[KB][NT];
        for (int j = 0; j < KB; j++)
            for (int t = 0; t < NT; t++) s[j][t] = splat(0.0f);
        for (int64_t x = 0; x < d; x++)
            for (int j = 0; j < KB; j++) {
                const vf k = splat(kp[j][x]);
                for (int t = 0; t < NT; t++) s[j][t] += qt[x][t] * k;
            }
        const int masked = j0 + KB - 1 > first_pos; /* some key lies after some lane's position */
        vf rescale[NT]; /* exp(old max - new max): what the running output is worth now */
        for (int t = 0; t < NT; t++) {
            vf block_max = splat(-INFINITY);
            for (int j = 0; j < KB; j++) {
                if (masked) s[j][t] = select_vf((vi){0} + (int32_t)(j0 + j) <= pos[t], s[j][t], splat(-INFINITY));
                block_max = max_vf(block_max, s[j][t]);
            }
            const vf m_new = max_vf(m[t], block_max);
            const vf alpha = exp_vf(m[t] - m_new);
            vf psum = splat(0.0f);
            for (int j = 0; j < KB; j++) {
                vf p = exp_vf(s[j][t] - m_new);
                if (masked) p = select_vf((vi){0} + (int32_t)(j0 + j) <= pos[t], p, splat(0.0f));
                s[j][t] = p;
                psum += p;
            }
            lsum[t] = lsum[t] * alpha + psum;
            m[t] = m_new;
            rescale[t] = alpha;
        }
        for (int64_t x0 = 0; x0 < d; x0 += XB) {
            vf acc[XB][NT];
            for (int c = 0; c < XB; c++)
                for (int t = 0; t < NT; t++) acc[c][t] = ot[x0 + c][t] * rescale[t];
            for (int j = 0; j < KB; j++) {
                const float *restrict v = vp[j] + x0;
                for (int c = 0; c < XB; c++) {
                    const vf vx = splat(v[c]);
                    for (int t = 0; t < NT; t++) acc[c][t] += s[j][t] * vx;
                }
            }
            for (int c = 0; c < XB; c++)
                for (int t = 0; t < NT; t++) ot[x0 + c][t] = acc[c][t];
        }
    }
    for (int t = 0; t < NT; t++) {
        const vf inv = splat(1.0f) / lsum[t];
        for (int64_t x = 0; x < d; x++) ot[x][t] *= inv;
    }
    for (int l = 0; l < TL && row0 + l < rows; l++) {
        const int64_t row = row0 + l, i = row / group, h = g * group + row % group;
        float *o = out + i * out_stride + h * d;
        for (int64_t x = 0; x < d; x++) o[x] = ot[x][l / VL][l % VL];
    }
}

/* d must be a multiple of XB (the Python side checks it). */
void paged_chunk_attention(const float *q, int64_t q_stride, const float *k_pool, const float *v_pool,
                           const int64_t *table, int64_t block_size, int64_t start, int64_t n,
                           float *out, int64_t out_stride, int64_t H, int64_t Hkv, int64_t d,
                           float scale, int threads) {
    const int64_t group = H / Hkv, tiles = (n * group + TL - 1) / TL;
    /* Later tiles see more keys: hand them out first, one at a time. */
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t item = Hkv * tiles - 1; item >= 0; item--) {
        const int64_t g = item % Hkv, tile = item / Hkv;
        chunk_tile(q, q_stride, k_pool, v_pool, table, block_size, start, n, out, out_stride, Hkv,
                   group, d, scale, g, tile * TL);
    }
}

