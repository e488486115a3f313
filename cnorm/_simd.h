/* SIMD primitives: the one place that names vector instructions for the
   kernels written with them (the planar reductions and streaming stores of
   _batchnorm.pyx so far; the older channels-last kernels still carry their own
   intrinsics, to be moved here).

   GCC/clang vector extensions: a cn_vd is 8 doubles, a cn_vf 8 floats, and
   arithmetic on them is lane by lane, so a kernel written with them computes
   the same lanes in the same order in every build; each kernel module is
   compiled once per ISA level (setup.py), and the compiler maps the vectors
   to 4 SSE2 registers, 2 AVX2 or 1 AVX-512 register. Only fused multiply-adds
   differ between levels (contracted where the level has FMA).

   Loads and stores are unaligned (memcpy of a vector: one instruction).
   cn_stream_f32 writes 16 floats with a non-temporal store where the build
   has one (AVX-512, AVX2; the address must then be 64-byte aligned) and a
   normal store elsewhere; cn_stream_fence orders them before the data is
   read by another thread. */
#ifndef CNORM_SIMD_H
#define CNORM_SIMD_H

#include <stddef.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

typedef double cn_vd __attribute__((vector_size(64)));
typedef float cn_vf __attribute__((vector_size(32)));

#define CN_VD_LANES 8

static inline cn_vd cn_broadcast_d(double value) {
    cn_vd v = {value, value, value, value, value, value, value, value};
    return v;
}

/* 8 consecutive values as doubles (exact for float). */
static inline cn_vd cn_load_d_f32(const float *p) {
#if defined(__AVX512F__)
    return (cn_vd)_mm512_cvtps_pd(_mm256_loadu_ps(p));
#elif defined(__AVX2__)
    union { cn_vd v; __m256d half[2]; } u;
    u.half[0] = _mm256_cvtps_pd(_mm_loadu_ps(p));
    u.half[1] = _mm256_cvtps_pd(_mm_loadu_ps(p + 4));
    return u.v;
#else  /* GCC 12 widens this through 128-bit halves: fine for the baseline build */
    cn_vf v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, cn_vd);
#endif
}

static inline cn_vd cn_load_d_f64(const double *p) {
    cn_vd v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The lanes of a vector added in lane order. */
static inline double cn_lanes_sum(cn_vd v) {
    double total = v[0];
    int j;
    for (j = 1; j < CN_VD_LANES; j++) total = total + v[j];
    return total;
}

#define CN_STREAM_ALIGN 64

static inline int cn_has_streaming(void) {
#if defined(__AVX512F__) || defined(__AVX2__)
    return 1;
#else
    return 0;
#endif
}

/* 16 floats at p (64-byte aligned where streaming exists). */
static inline void cn_stream_f32(float *p, const float *values) {
#if defined(__AVX512F__)
    _mm512_stream_ps(p, _mm512_loadu_ps(values));
#elif defined(__AVX2__)
    _mm256_stream_ps(p, _mm256_loadu_ps(values));
    _mm256_stream_ps(p + 8, _mm256_loadu_ps(values + 8));
#else
    memcpy(p, values, 16 * sizeof(float));
#endif
}

static inline void cn_stream_fence(void) {
#if defined(__AVX512F__) || defined(__AVX2__)
    _mm_sfence();
#endif
}

#endif
