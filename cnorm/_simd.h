/* SIMD primitives: the one place that names vector instructions. Every
   vector kernel (the batch-norm reductions and elementwise passes of
   _batchnorm.pyx, the LRN window sums and beta-0.75 rows of _lrn.pyx, the
   float16 conversions of _storage.h) is written with these types and
   functions, and none carries an intrinsic of its own.

   GCC/clang vector extensions, in two kinds:
   - fixed width: a cn_vd is 8 doubles, a cn_vf 8 floats, a cn_vf16 16
     floats, the same lanes in every build; the compiler maps them to 4 SSE2
     registers, 2 AVX2 or 1 AVX-512 register. A kernel written with them
     computes the same lanes in the same order at every ISA level.
   - native width: a cn_vdn or cn_vfn is one register of the build's widest
     kind (CN_NATIVE_BYTES: 16 in the baseline build, 32 AVX2, 64 AVX-512),
     CN_VDN_LANES doubles or CN_VFN_LANES floats, and CN_REGISTERS of them
     exist (16, or 32 in AVX-512 builds). For kernels whose blocking depends
     on the register file (the channel groups of the batch-norm reductions);
     such a kernel must give results that do not depend on the width (each
     lane a channel of its own, say).
   Each kernel module is compiled once per ISA level (setup.py). Fused
   multiply-adds are named (cn_fma_*) where a kernel's bits depend on them;
   in builds without FMA (baseline) they round twice, and the kernels that
   use them run only where CN_WIDE is 1 (AVX2 or AVX-512, which have FMA).

   Loads and stores are unaligned (memcpy of a vector: one instruction).
   cn_stream_f32 and cn_stream_fn write with a non-temporal store where the
   build has one (CN_WIDE; the address must then be 64-byte aligned, or 32
   for cn_stream_fn in AVX2 builds) and a normal store elsewhere;
   cn_stream_fence orders them before the data is read by another thread. */
#ifndef CNORM_SIMD_H
#define CNORM_SIMD_H

#include <stddef.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

typedef double cn_vd __attribute__((vector_size(64)));
typedef float cn_vf __attribute__((vector_size(32)));

#define CN_VD_LANES 8

static inline cn_vd cn_broadcast_d(double value) {
    cn_vd v = {value, value, value, value, value, value, value, value};
    return v;
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

/* Native width (see above). CN_WIDE: the build has 256-bit or wider FMA
   vectors and streaming stores (AVX2, AVX-512). */
#if defined(__AVX512F__)
#define CN_NATIVE_BYTES 64
#define CN_REGISTERS 32
#elif defined(__AVX2__)
#define CN_NATIVE_BYTES 32
#define CN_REGISTERS 16
#else
#define CN_NATIVE_BYTES 16
#define CN_REGISTERS 16
#endif
#define CN_WIDE (CN_NATIVE_BYTES >= 32)
#define CN_VDN_LANES (CN_NATIVE_BYTES / 8)
#define CN_VFN_LANES (CN_NATIVE_BYTES / 4)

typedef double cn_vdn __attribute__((vector_size(CN_NATIVE_BYTES)));
typedef float cn_vfn __attribute__((vector_size(CN_NATIVE_BYTES)));
typedef float cn_vfh __attribute__((vector_size(CN_NATIVE_BYTES / 2)));

static inline cn_vdn cn_zero_dn(void) {
    cn_vdn v = {0};
    return v;
}

static inline cn_vdn cn_load_dn(const double *p) {
    cn_vdn v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void cn_store_dn(double *p, cn_vdn v) { memcpy(p, &v, sizeof v); }

static inline cn_vfh cn_load_fh(const float *p) {
    cn_vfh v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* CN_VDN_LANES floats (a half-width register) as doubles (exact). */
static inline cn_vdn cn_widen_fh(cn_vfh v) {
#if defined(__AVX512F__)
    return (cn_vdn)_mm512_cvtps_pd((__m256)v);
#elif defined(__AVX2__)
    return (cn_vdn)_mm256_cvtps_pd((__m128)v);
#else
    return __builtin_convertvector(v, cn_vdn);
#endif
}

/* CN_VDN_LANES consecutive floats as doubles (exact). */
static inline cn_vdn cn_load_dn_f32(const float *p) { return cn_widen_fh(cn_load_fh(p)); }

/* 8 consecutive floats as doubles (exact), from native-width loads. */
static inline cn_vd cn_load_d_f32(const float *p) {
    union { cn_vd v; cn_vdn part[CN_VD_LANES / CN_VDN_LANES]; } u;
    int j;
    for (j = 0; j < CN_VD_LANES / CN_VDN_LANES; j++)
        u.part[j] = cn_load_dn_f32(p + j * CN_VDN_LANES);
    return u.v;
}

static inline cn_vfn cn_load_fn(const float *p) {
    cn_vfn v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void cn_store_fn(float *p, cn_vfn v) { memcpy(p, &v, sizeof v); }

/* a*b + c, rounded once where the build has FMA (CN_WIDE), twice elsewhere. */
static inline cn_vdn cn_fma_dn(cn_vdn a, cn_vdn b, cn_vdn c) {
#if defined(__AVX512F__)
    return (cn_vdn)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif defined(__AVX2__)
    return (cn_vdn)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
    return a * b + c;
#endif
}

static inline cn_vfh cn_fma_fh(cn_vfh a, cn_vfh b, cn_vfh c) {
#if defined(__AVX512F__)
    return (cn_vfh)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif defined(__AVX2__)
    return (cn_vfh)_mm_fmadd_ps((__m128)a, (__m128)b, (__m128)c);
#else
    return a * b + c;
#endif
}

/* The same for one float (cn_fma_f) or one double (cn_fma_d1). */
#if CN_WIDE
#define CN_FMA_SCALAR(NAME, T, FMA) \
    static inline T NAME(T a, T b, T c) { return FMA(a, b, c); }
#else
#define CN_FMA_SCALAR(NAME, T, FMA) \
    static inline T NAME(T a, T b, T c) { return a * b + c; }
#endif
CN_FMA_SCALAR(cn_fma_f, float, __builtin_fmaf)
CN_FMA_SCALAR(cn_fma_d1, double, __builtin_fma)
#undef CN_FMA_SCALAR

static inline cn_vfn cn_fma_fn(cn_vfn a, cn_vfn b, cn_vfn c) {
#if defined(__AVX512F__)
    return (cn_vfn)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__AVX2__)
    return (cn_vfn)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    return a * b + c;
#endif
}

/* max(v, 0) lane by lane as cnorm's ReLU computes it (_relu in
   _batchnorm.pyx: 0 where v < 0, else v), so NaN and -0.0 pass through. */
typedef int cn_vin __attribute__((vector_size(CN_NATIVE_BYTES)));
static inline cn_vfn cn_relu_fn(cn_vfn v) {
    cn_vfn zero = {0};
    return (cn_vfn)((cn_vin)v & ~(cn_vin)(v < zero));
}

/* All ones in the lanes where v > 0 (not NaN), and v kept in those lanes, 0
   (+0.0) in the others. */
static inline cn_vin cn_positive_fn(cn_vfn v) {
    cn_vfn zero = {0};
    return (cn_vin)(v > zero);
}

static inline cn_vfn cn_and_fn(cn_vfn v, cn_vin keep) { return (cn_vfn)((cn_vin)v & keep); }

/* The dy that the backward of the fused ReLU reads (_relu_gradient in
   _batchnorm.pyx): dy where the forward's ReLU passed its input, that is
   where fma(x - center, scale, shift) > 0 computed in x's type as the
   forward computes it (center 0 for the forward's folded form: x - 0 is x,
   so the bits are the same), and +0.0 elsewhere. CN_VDN_LANES values as
   doubles, the coefficients lane by lane (a group of channels); 8 values of
   one channel (cn_vd, for planes); one value. */
typedef int cn_vih __attribute__((vector_size(CN_NATIVE_BYTES / 2)));
typedef long long cn_vln __attribute__((vector_size(CN_NATIVE_BYTES)));

static inline cn_vdn cn_masked_dn_f32(const float *dy, const float *x, cn_vfh center,
                                      cn_vfh scale, cn_vfh shift) {
    cn_vfh zero = {0};
    cn_vih keep = (cn_vih)(cn_fma_fh(cn_load_fh(x) - center, scale, shift) > zero);
    return cn_widen_fh((cn_vfh)((cn_vih)cn_load_fh(dy) & keep));
}

static inline cn_vdn cn_masked_dn_f64(const double *dy, const double *x, cn_vdn center,
                                      cn_vdn scale, cn_vdn shift) {
    cn_vdn zero = {0};
    cn_vln keep = (cn_vln)(cn_fma_dn(cn_load_dn(x) - center, scale, shift) > zero);
    return (cn_vdn)((cn_vln)cn_load_dn(dy) & keep);
}

static inline cn_vd cn_masked_d_f32(const float *dy, const float *x, float center,
                                    float scale, float shift) {
    union { cn_vd v; cn_vdn part[CN_VD_LANES / CN_VDN_LANES]; } u;
    cn_vfh c, s, b;
    int j;
    for (j = 0; j < CN_VDN_LANES; j++) { c[j] = center; s[j] = scale; b[j] = shift; }
    for (j = 0; j < CN_VD_LANES / CN_VDN_LANES; j++)
        u.part[j] = cn_masked_dn_f32(dy + j * CN_VDN_LANES, x + j * CN_VDN_LANES, c, s, b);
    return u.v;
}

static inline cn_vd cn_masked_d_f64(const double *dy, const double *x, double center,
                                    double scale, double shift) {
    union { cn_vd v; cn_vdn part[CN_VD_LANES / CN_VDN_LANES]; } u;
    cn_vdn c, s, b;
    int j;
    for (j = 0; j < CN_VDN_LANES; j++) { c[j] = center; s[j] = scale; b[j] = shift; }
    for (j = 0; j < CN_VD_LANES / CN_VDN_LANES; j++)
        u.part[j] = cn_masked_dn_f64(dy + j * CN_VDN_LANES, x + j * CN_VDN_LANES, c, s, b);
    return u.v;
}

/* v where keep is 1, +0.0 where it is 0, by a mask of its bits: as a select
   (keep ? v : 0) GCC does not if-convert it in loops that go on in double
   (-ftrapping-math), and such loops were then not vectorised (the backward's
   row sums with the ReLU mask 12x the plain sums' time). */
static inline float cn_keep_f32(float v, int keep) {
    unsigned int bits;
    memcpy(&bits, &v, sizeof bits);
    bits &= -(unsigned int)keep;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static inline double cn_keep_f64(double v, int keep) {
    unsigned long long bits;
    memcpy(&bits, &v, sizeof bits);
    bits &= -(unsigned long long)keep;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static inline float cn_masked_f32(float dy, float x, float center, float scale, float shift) {
    return cn_keep_f32(dy, cn_fma_f(x - center, scale, shift) > 0);
}

static inline double cn_masked_f64(double dy, double x, double center, double scale,
                                   double shift) {
    return cn_keep_f64(dy, cn_fma_d1(x - center, scale, shift) > 0);
}

/* A non-temporal store of v at p (CN_NATIVE_BYTES-aligned) where CN_WIDE. */
static inline void cn_stream_fn(float *p, cn_vfn v) {
#if defined(__AVX512F__)
    _mm512_stream_ps(p, (__m512)v);
#elif defined(__AVX2__)
    _mm256_stream_ps(p, (__m256)v);
#else
    memcpy(p, &v, sizeof v);
#endif
}

/* Bring the line at p into L2 (prefetcht1 on x86). */
static inline void cn_prefetch_l2(const void *p) { __builtin_prefetch(p, 0, 2); }

/* float16 (IEEE binary16) <-> float, 8 values: with F16C (x86-64-v3 and v4
   builds, CN_HAS_F16_VECTORS) one instruction, rounding to nearest even. */
#if defined(__F16C__)
#define CN_HAS_F16_VECTORS 1
static inline void cn_widen_f16x8(const unsigned short *src, float *dst) {
    _mm256_storeu_ps(dst, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)src)));
}

static inline void cn_narrow_f16x8(const float *src, unsigned short *dst) {
    _mm_storeu_si128((__m128i *)dst,
                     _mm256_cvtps_ph(_mm256_loadu_ps(src), _MM_FROUND_TO_NEAREST_INT));
}

static inline float cn_widen_f16(unsigned short h) { return _cvtsh_ss(h); }

static inline unsigned short cn_narrow_f16(float f) {
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
#else
#define CN_HAS_F16_VECTORS 0
#endif

#define CN_STREAM_ALIGN 64

/* Whether the memory at [p, p + bytes) is mapped to pages already (Linux:
   mincore of CN_RESIDENT_SAMPLES pages spread over the range, the first and
   last excluded, as they may be shared with other allocations; elsewhere
   assumed). A large new array (NumPy's or torch's, beyond glibc's mmap
   threshold of at most 32 MiB) is fresh anonymous memory: its pages are
   mapped and zeroed by the kernel at the first write, which leaves the
   zeroed lines in the cache, and a streaming store over such a line is
   slower than a normal store (measured: BN inference of 16x256x56x56 NCHW
   into torch.empty_like outputs 1.4x torch's time streamed, 0.93x with
   normal stores); over resident memory streaming is faster (see
   STREAM_WORKING_SET in _batchnorm.pyx). */
#define CN_RESIDENT_SAMPLES 4
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
static inline int cn_pages_resident(const void *p, size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t start = (size_t)p, i;
    unsigned char resident;
    if (page == 0 || bytes < (CN_RESIDENT_SAMPLES + 2) * page) return 1;
    for (i = 1; i <= CN_RESIDENT_SAMPLES; i++) {
        size_t at = (start + bytes / (CN_RESIDENT_SAMPLES + 1) * i) / page * page;
        if (mincore((void *)at, page, &resident) != 0) return 1;
        if (!(resident & 1)) return 0;
    }
    return 1;
}
#else
static inline int cn_pages_resident(const void *p, size_t bytes) {
    (void)p; (void)bytes;
    return 1;
}
#endif

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
#if CN_WIDE
    _mm_sfence();
#endif
}

/* Lanes k .. k+7 of the 16 doubles (low, high), k a constant in 1..7: a
   shifted window of a row from two aligned vectors in registers (valignq in
   AVX-512 builds) instead of an unaligned load that splits cache lines. */
#if defined(__AVX512F__)
#define CN_SHIFT_D(low, high, k) ((cn_vd)_mm512_castsi512_pd(_mm512_alignr_epi64( \
    _mm512_castpd_si512((__m512d)(high)), _mm512_castpd_si512((__m512d)(low)), (k))))
#else
#define CN_SHIFT_D(low, high, k) __builtin_shufflevector((low), (high), (k), (k) + 1, \
    (k) + 2, (k) + 3, (k) + 4, (k) + 5, (k) + 6, (k) + 7)
#endif

static inline void cn_store_d(double *p, cn_vd v) { memcpy(p, &v, sizeof v); }

/* 16 floats: the vector of the float estimates below. */
typedef float cn_vf16 __attribute__((vector_size(64)));

static inline cn_vf16 cn_load_f16x(const float *p) {
    cn_vf16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void cn_store_f16x(float *p, cn_vf16 v) { memcpy(p, &v, sizeof v); }

static inline cn_vf16 cn_broadcast_f16x(float value) {
    cn_vf16 v = {value, value, value, value, value, value, value, value,
                 value, value, value, value, value, value, value, value};
    return v;
}

/* The two halves of 16 doubles rounded to float, as one vector; and lanes
   0-7 (half 0) or 8-15 (half 1) of 16 floats as doubles (exact). GCC 12
   converts vector-extension types through 128-bit pieces and the stack, so
   AVX-512 builds name the one-instruction conversions. */
#if defined(__AVX512F__)
static inline cn_vf16 cn_narrow_d(cn_vd low, cn_vd high) {
    return (cn_vf16)_mm512_insertf32x8(
        _mm512_castps256_ps512(_mm512_cvtpd_ps((__m512d)low)),
        _mm512_cvtpd_ps((__m512d)high), 1);
}

static inline cn_vd cn_widen_f(cn_vf16 v, int half) {
    return (cn_vd)_mm512_cvtps_pd(half ? _mm512_extractf32x8_ps((__m512)v, 1)
                                       : _mm512_castps512_ps256((__m512)v));
}
#else
static inline cn_vf16 cn_narrow_d(cn_vd low, cn_vd high) {
    cn_vf half_low = __builtin_convertvector(low, cn_vf);
    cn_vf half_high = __builtin_convertvector(high, cn_vf);
    return __builtin_shufflevector(half_low, half_high, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                   12, 13, 14, 15);
}

static inline cn_vd cn_widen_f(cn_vf16 v, int half) {
    cn_vf part;
    memcpy(&part, (const float *)&v + 8 * half, sizeof part);
    return __builtin_convertvector(part, cn_vd);
}
#endif

/* Hardware estimates of 1/sqrt(d) and 1/d to 2**-14 (AVX-512's vrsqrt14ps
   and vrcp14ps), each refined by one Newton step: relative error about 1e-7,
   for normal positive floats. Only in builds where CN_HAS_ESTIMATES is 1;
   other builds compute exactly and never call these. */
#if defined(__AVX512F__)
#define CN_HAS_ESTIMATES 1
static inline cn_vf16 cn_rsqrt_f(cn_vf16 d) {
    cn_vf16 r = (cn_vf16)_mm512_rsqrt14_ps((__m512)d);
    cn_vf16 half_d_r = cn_broadcast_f16x(0.5f) * d * r;
    return r * (cn_vf16)_mm512_fnmadd_ps((__m512)half_d_r, (__m512)r,
                                         (__m512)cn_broadcast_f16x(1.5f));
}

static inline cn_vf16 cn_reciprocal_f(cn_vf16 d) {
    cn_vf16 inv = (cn_vf16)_mm512_rcp14_ps((__m512)d);
    return inv * (cn_vf16)_mm512_fnmadd_ps((__m512)d, (__m512)inv,
                                           (__m512)cn_broadcast_f16x(2.0f));
}

static inline cn_vf16 cn_sqrt_f(cn_vf16 v) { return (cn_vf16)_mm512_sqrt_ps((__m512)v); }

/* a*b + c rounded once. */
static inline cn_vd cn_fma_d(cn_vd a, cn_vd b, cn_vd c) {
    return (cn_vd)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
}
#else
#define CN_HAS_ESTIMATES 0
#endif

#endif
