/* Decode attention over the paged KV cache, read in place (float32, CPU).
 *
 * A decode is one query token per sequence. Its keys and values are the slots its block table
 * names; SDPA needs them gathered into a contiguous copy first, which moves as many bytes as the
 * attention itself reads. Here each K and V row is read once, where it lies, for all the query
 * heads that share it (grouped-query attention), and the softmax runs in between on the
 * sequence's own score rows.
 *
 * Scores: a dot product ends in a sum across vector lanes, which costs as much as the dot
 * itself when done one at a time. So VL keys are scored together: their VL lane-partial
 * vectors are folded pairwise (log2 VL rounds of two shuffles and an add) into one vector
 * whose lane j is key j's score.
 *
 * Layouts (all contiguous): q [D, H, d]; k_pool, v_pool [slots, Hkv, d]; tables [D, W] block
 * ids; lens [D] keys per sequence (>= 1); scratch [D, H, width] floats with width >= every
 * len rounded up to VL; out [D, H, d]. Sequences are split across OpenMP threads; loaded into
 * a torch process, the library shares torch's OpenMP runtime (same soname), so it uses torch's
 * thread pool; the caller passes the thread count (a thread other than the one that set it
 * would not see it).
 */
#include <math.h>
#include <stdint.h>

#include "paged_kv.h"
#include "vec_math.h"

/* Shuffle masks of the fold, one pair per round with half-width w = VL/2, VL/4, .., 1: lane i
 * takes element (i / w) * 2w + i mod w of the pair (a, b) (lo) or the one w further (hi), so
 * lo + hi sums each group of 2w lanes down to w, keeping a's groups, then b's. */
#if VL == 16
#define FOLD_ROUNDS 4
static const int32_t FOLD[FOLD_ROUNDS][2][VL] __attribute__((aligned(64))) = {
    {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
     {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}},
    {{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27},
     {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31}},
    {{0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29},
     {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31}},
    {{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30},
     {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}},
};
#else
#define FOLD_ROUNDS 3
static const int32_t FOLD[FOLD_ROUNDS][2][VL] __attribute__((aligned(64))) = {
    {{0, 1, 2, 3, 8, 9, 10, 11},
     {4, 5, 6, 7, 12, 13, 14, 15}},
    {{0, 1, 4, 5, 8, 9, 12, 13},
     {2, 3, 6, 7, 10, 11, 14, 15}},
    {{0, 2, 4, 6, 8, 10, 12, 14},
     {1, 3, 5, 7, 9, 11, 13, 15}},
};
#endif

/* The VL horizontal sums of p[0..VL): lane j of the result is the sum of p[j]'s lanes. p is
 * overwritten. */
static inline vf fold_sums(vf *p) {
    int n = VL;
    for (int r = 0; r < FOLD_ROUNDS; r++) {
        const vi lo = *(const vi *)FOLD[r][0], hi = *(const vi *)FOLD[r][1];
        for (int i = 0; i < n / 2; i++)
            p[i] = __builtin_shuffle(p[2 * i], p[2 * i + 1], lo) + __builtin_shuffle(p[2 * i], p[2 * i + 1], hi);
        n /= 2;
    }
    return p[0];
}

/* Asks for the cache rows of keys [t0, t0 + VL) ahead of use. A block of rows is contiguous,
 * but the passes below read it head by head, a strided pattern the hardware prefetcher does
 * not follow well enough to keep the loads from stalling on DRAM. */
static inline void prefetch_rows(const float *pool, const int64_t *table, int64_t t0, int64_t len,
                                 int64_t block_size, int64_t kv_stride) {
    for (int64_t t = t0; t < t0 + VL && t < len; t++) {
        const float *row = pool + slot_of(table, t, block_size) * kv_stride;
        for (int64_t x = 0; x < kv_stride; x += 64 / sizeof(float)) __builtin_prefetch(row + x, 0, 3);
    }
}

/* One sequence: scores of every query head, softmax, values. Each pass walks the keys in order,
 * VL at a time, and uses a block of rows for every head while it sits in L1. ``strips`` (d / VL)
 * is a constant in each caller below, so the per-head accumulators live in registers. */
static inline __attribute__((always_inline)) void
decode_seq_impl(const float *restrict q, const float *restrict k_pool, const float *restrict v_pool,
                const int64_t *restrict table, int64_t len, float *restrict sc, float *restrict out,
                int64_t H, int64_t Hkv, int64_t block_size, int64_t width, float scale, const int64_t strips) {
    const int64_t d = strips * VL, group = H / Hkv, kv_stride = Hkv * d;
    const float *rows[VL];

    /* Scores (keys past len repeat the last one; the softmax ignores them). */
    prefetch_rows(k_pool, table, 0, len, block_size, kv_stride);
    for (int64_t t0 = 0; t0 < len; t0 += VL) {
        prefetch_rows(k_pool, table, t0 + VL, len, block_size, kv_stride);
        for (int j = 0; j < VL; j++)
            rows[j] = k_pool + slot_of(table, t0 + j < len ? t0 + j : len - 1, block_size) * kv_stride;
        for (int64_t h = 0; h < H; h++) {
            vf qh[strips], part[VL];
            for (int64_t c = 0; c < strips; c++) qh[c] = load_vf(q + h * d + c * VL);
            const int64_t off = h / group * d;
            for (int j = 0; j < VL; j++) {
                vf acc = qh[0] * load_vf(rows[j] + off);
                for (int64_t c = 1; c < strips; c++) acc += qh[c] * load_vf(rows[j] + off + c * VL);
                part[j] = acc;
            }
            store_vf(sc + h * width + t0, fold_sums(part) * splat(scale));
        }
    }

    /* Softmax per query head over keys [0, len), normalised in place; the tail lanes of the
     * last vector are excluded (the values pass never reads them). */
    const int64_t full = len / VL * VL;
    vi tail_mask;
    for (int l = 0; l < VL; l++) tail_mask[l] = full + l < len ? -1 : 0;
    for (int64_t h = 0; h < H; h++) {
        float *row = sc + h * width;
        vf m = splat(-INFINITY);
        for (int64_t t = 0; t < full; t += VL) m = max_vf(m, load_vf(row + t));
        if (full < len) m = max_vf(m, select_vf(tail_mask, load_vf(row + full), splat(-INFINITY)));
        float mx = m[0];
        for (int l = 1; l < VL; l++) mx = m[l] > mx ? m[l] : mx;
        vf sum = splat(0.0f);
        for (int64_t t = 0; t < full; t += VL) {
            const vf p = exp_vf(load_vf(row + t) - splat(mx));
            store_vf(row + t, p);
            sum += p;
        }
        if (full < len) {
            const vf p = select_vf(tail_mask, exp_vf(load_vf(row + full) - splat(mx)), splat(0.0f));
            store_vf(row + full, p);
            sum += p;
        }
        const vf inv = splat(1.0f / sum_vf(sum));
        for (int64_t t = 0; t < len; t += VL) store_vf(row + t, load_vf(row + t) * inv);
    }

    /* Values: per query head, its output stays in registers over the block's rows and is added
     * to out once per block. */
    for (int64_t x = 0; x < H * d; x++) out[x] = 0.0f;
    prefetch_rows(v_pool, table, 0, len, block_size, kv_stride);
    for (int64_t t0 = 0; t0 < len; t0 += VL) {
        prefetch_rows(v_pool, table, t0 + VL, len, block_size, kv_stride);
        const int n = len - t0 < VL ? (int)(len - t0) : VL;
        for (int j = 0; j < n; j++) rows[j] = v_pool + slot_of(table, t0 + j, block_size) * kv_stride;
        for (int64_t h = 0; h < H; h++) {
            const int64_t off = h / group * d;
            const float *p = sc + h * width + t0;
            vf acc[strips];
            for (int64_t c = 0; c < strips; c++) acc[c] = load_vf(out + h * d + c * VL);
            for (int j = 0; j < n; j++) {
                const vf w = splat(p[j]);
                for (int64_t c = 0; c < strips; c++) acc[c] += w * load_vf(rows[j] + off + c * VL);
            }
            for (int64_t c = 0; c < strips; c++) store_vf(out + h * d + c * VL, acc[c]);
        }
    }
}

static void decode_seq(const float *q, const float *k_pool, const float *v_pool, const int64_t *table,
                       int64_t len, float *sc, float *out, int64_t H, int64_t Hkv, int64_t d,
                       int64_t block_size, int64_t width, float scale) {
    switch (d / VL) { /* 4, 8, 16 strips unrolled: heads of 64/128/256 (AVX-512), 32/64/128 (AVX2) */
    case 4: decode_seq_impl(q, k_pool, v_pool, table, len, sc, out, H, Hkv, block_size, width, scale, 4); break;
    case 8: decode_seq_impl(q, k_pool, v_pool, table, len, sc, out, H, Hkv, block_size, width, scale, 8); break;
    case 16: decode_seq_impl(q, k_pool, v_pool, table, len, sc, out, H, Hkv, block_size, width, scale, 16); break;
    default: decode_seq_impl(q, k_pool, v_pool, table, len, sc, out, H, Hkv, block_size, width, scale, d / VL);
    }
}

/* d must be a multiple of VL (the Python side checks it). */
void paged_decode_attention(const float *q, const float *k_pool, const float *v_pool, const int64_t *tables,
                            const int64_t *lens, float *scratch, float *out, int64_t W, int64_t H,
                            int64_t Hkv, int64_t d, int64_t D, int64_t block_size, int64_t width,
                            float scale, int threads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t s = 0; s < D; s++)
        decode_seq(q + s * H * d, k_pool, v_pool, tables + s * W, lens[s], scratch + s * H * width,
                   out + s * H * d, H, Hkv, d, block_size, width, scale);
}
