/* Storage types: the one place that knows how each dtype is held in memory.

   Every kernel computes in double (float64 data) or in float (float32 data
   and the half types), and sees only those. Data held in a half type is
   brought into float by cn_load_run and written back by cn_store_run, a run
   of contiguous values at a time, into and out of a per-thread scratch (see
   the drivers in _batchnorm.pyx and _lrn.pyx): the kernels then compute
   exactly what they compute for float32 data holding the same values, and
   each result is rounded once from float to the storage type.

   Adding a storage type: a code below, its item size in cn_item_size, a
   load and a store branch here, and its row in the dtype table of
   cnorm/_layout.py. No kernel changes.

   float16: IEEE binary16 (NumPy's float16). With F16C (x86-64-v3 and v4
   builds) eight values per instruction (cn_widen_f16x8 and cn_narrow_f16x8
   of _simd.h); the baseline build converts one
   value at a time through the compiler's _Float16 (GCC >= 12, clang >= 15),
   which rounds to nearest even as the hardware does.
   bfloat16: the high half of a float32 (ml_dtypes.bfloat16, passed in as a
   uint16 view). Loading is a shift; storing rounds to nearest even in
   integer arithmetic (which the compiler vectorises) and keeps a NaN a
   (quiet) NaN instead of letting the rounding carry turn it into an
   infinity. */
#ifndef CNORM_STORAGE_H
#define CNORM_STORAGE_H

#include <stdint.h>
#include <string.h>
#include <stddef.h>

#include "cnorm/_simd.h"

enum {
    CN_FLOAT64 = 0,
    CN_FLOAT32 = 1,
    CN_FLOAT16 = 2,
    CN_BFLOAT16 = 3
};

static inline size_t cn_item_size(int storage) {
    return storage == CN_FLOAT64 ? 8 : storage == CN_FLOAT32 ? 4 : 2;
}

/* Whether data of this storage type is computed in place (float32, float64)
   or through a float scratch (the half types). */
static inline int cn_is_half(int storage) {
    return storage == CN_FLOAT16 || storage == CN_BFLOAT16;
}

static inline float cn_bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t cn_float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (f != f) ? (uint16_t)((u >> 16) | 0x40u) : (uint16_t)rounded;
}

/* dst[i] = the value src holds at i, for i < n. */
static void cn_load_run(int storage, const void *src, float *dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
    if (storage == CN_BFLOAT16) {
        const uint16_t *s = (const uint16_t *)src;
        for (i = 0; i < n; i++) dst[i] = cn_bf16_to_float(s[i]);
        return;
    }
    /* CN_FLOAT16 */
#if CN_HAS_F16_VECTORS
    {
        const unsigned short *s = (const unsigned short *)src;
        for (; i + 8 <= n; i += 8) cn_widen_f16x8(s + i, dst + i);
        for (; i < n; i++) dst[i] = cn_widen_f16(s[i]);
    }
#else
    {
        const _Float16 *s = (const _Float16 *)src;
        for (; i < n; i++) dst[i] = (float)s[i];
    }
#endif
}

/* dst[i] = src[i] rounded to nearest even into the storage type, for i < n. */
static void cn_store_run(int storage, const float *src, void *dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
    if (storage == CN_BFLOAT16) {
        uint16_t *d = (uint16_t *)dst;
        for (i = 0; i < n; i++) d[i] = cn_float_to_bf16(src[i]);
        return;
    }
#if CN_HAS_F16_VECTORS
    {
        unsigned short *d = (unsigned short *)dst;
        for (; i + 8 <= n; i += 8) cn_narrow_f16x8(src + i, d + i);
        for (; i < n; i++) d[i] = cn_narrow_f16(src[i]);
    }
#else
    {
        _Float16 *d = (_Float16 *)dst;
        for (; i < n; i++) d[i] = (_Float16)src[i];
    }
#endif
}

#endif
