/* The paged KV cache as the CPU attention kernels see it: K and V pools of [slots, Hkv, d]
 * floats; a sequence's token t lives in slot table[t / block_size] * block_size + t % block_size
 * (model/kv_cache.py). */
#ifndef PAGED_KV_H
#define PAGED_KV_H

#include <stdint.h>

/* The pool row holding key t of the sequence whose block table is ``table``. */
static inline int64_t slot_of(const int64_t *table, int64_t t, int64_t block_size) {
    return table[t / block_size] * block_size + t % block_size;
}

#endif
