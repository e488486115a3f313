"""Batch normalization kernels over the (outer, C, inner) view of a tensor.

Design (the layers of the kernel core: docs/design.md)
------
Layout
    The tensor is C-contiguous in memory, seen as ``(outer, C, inner)`` with the
    channels in the middle (cnorm/_layout.py). ``inner == 1`` (channels last,
    NHWC): row ``r`` holds the ``C`` channels of one pixel, contiguous, so the
    loops over channels are innermost and unit-stride and per-channel
    quantities are plain ``C``-long vectors. ``inner > 1`` (NCHW): the plane of
    channel ``c`` at outer index ``o`` is a contiguous run of ``inner`` values,
    and per-channel quantities are scalars of that run (the *_planes and
    cn_plane_* kernels). A ``Grid`` cuts the view into tiles (see _grid).
Storage
    Kernels compute in double (float64 data) or float (float32, float16,
    bfloat16). Half-precision tiles pass through a per-thread float scratch
    (cnorm/_storage.h): loaded, computed by the float kernels, stored rounded
    once; so they give exactly float32's results on the same values.
Formula (docs/guide/conventions.md, "Batch normalization")
    ``mean = sum(x)/m``, ``var_b = sum((x - mean)**2)/m`` (m = M rows), and every
    output is an affine map per channel whose coefficients are computed once
    per call, in double, from C values, by the entry points (``normalize``,
    ``backward``; cnorm/batchnorm.py validates their arguments), and applied
    by one elementwise driver, ``_apply``:
    ``y = (x - center)*scale + shift``, and for the training backward
    ``dx = dy*dy_scale + ((x - center)*scale + shift)``.
    One reduction driver, ``_reduce``, gives mean and variance or the two
    backward sums.
Passes and tensor traffic
    inference        ``normalize`` (``_apply``): reads x once, writes y once;
    training         ``batch_stats`` (``_reduce``: reads x) then ``normalize``
                     (reads x, writes y);
    backward         ``_reduce`` (reads dy, x) then ``_apply`` (reads dy, x,
                     writes dx); the frozen-statistics dx is an ``_apply`` of
                     dy alone.
    float32 outputs of a pass whose tensors (inputs and output) exceed
    STREAM_WORKING_SET (32 MiB) are written with streaming stores in AVX2 and
    AVX-512 builds (cnorm_affine_range, see _streams): not read into the cache
    before being written, which saves one memory transfer in three of
    inference and one in six of the backward. The second pass of training and
    backward, which re-reads what the first pass left in the caches, streams
    from REREAD_STREAM_WORKING_SET (16 MiB): there a normal store would evict
    the inputs that the pass is about to read.
    ``batch_stats`` reads each chunk once (shifted sums, see _chunk_stats),
    REDUCE_ROWS rows at a time (8 in AVX-512 builds, 4 elsewhere); so do the
    backward's sums, except float32 rows of 256-512 channels beyond
    STREAM_WORKING_SET, which take one row at a time (see _sums_by_rows).
    In AVX2 and AVX-512 builds, float32 chunks whose C is a multiple of the
    vector width are reduced by groups of 16 or 64 channels instead, each
    down all the chunk's rows with its sums in registers: when one group
    holds every channel (one sequential sweep), and in AVX-512 builds also
    when the chunk fits in L2 and the tensors in the cache (see
    _reduction_order).
    The second pass of training and backward walks each thread's chunks in
    REVERSE order: the chunks read last by the first pass are then still in
    that core's L2 and the last-level cache, so a tensor that fits in it is
    read from DRAM about once.
Accumulation and reduction order
    Sums are in double for both dtypes.  Each chunk of rows writes its partials
    (mean and M2, or sum(dy) and sum(dy*(x - center))) to row ``chunk`` of a
    ``(n_chunks, C)`` double array; the partials are then merged channel by
    channel in chunk order (Chan's formula for mean and M2: ``d = mean_b -
    mean_a; mean += d*n_b/n; M2 += M2_b + d*d*n_a*n_b/n``).  Chunks are a fixed
    number of rows that depends only on the shape, so results are bit-identical
    for every thread count; the shifted chunk sums and Chan's merge stay
    accurate when |mean| >> std, where E[x**2] - E[x]**2 cancels.  The merge of
    one channel never depends on another, so it is split over threads by
    channel blocks without changing a bit.
Elementwise arithmetic
    float64 data: double throughout.  float32 data: float.  Folded,
    ``x*A + B``, when every channel's center is within FOLD_SIGMAS standard
    deviations of 0: the coefficients' rounding then costs a few roundings of
    |gamma| + |beta|, and the pass reads three per-channel arrays, not four.
    Otherwise (|mean| >> std) in the centered form ``(x - c_f)*scale_f +
    shift_f``, where ``c_f`` is the center rounded to float and ``shift_f`` is
    corrected in double for that rounding (see _coefficients): ``x - c_f`` is
    (nearly) exact, so the error is a few float roundings relative to |y|, where
    the folded form's would be relative to |center*scale|.  The reductions take
    every term in double (a float32 value, its square and its product with
    another are exact in double).
Chunking and threads
    Rows are cut into chunks of ``_rows_per_chunk`` rows (a function of the
    shape and the tuning number chunk_elements, CHUNK_ELEMENTS by default, see
    cnorm/_tuning.py: about that many values, a chunk count that is a
    multiple of CHUNK_MULTIPLE).  Each thread owns one contiguous share of the chunks
    (``_first_chunk``), the same in both passes of a call, so the reverse
    second pass starts on the chunks that thread's own cache read last.
    ``n_threads`` is capped by the number of chunks, and inputs below
    SERIAL_ELEMENTS values take a serial path (the same chunks, in the same
    order) that never enters an OpenMP region.  Per-call scratch (the partials)
    is allocated before the parallel region and freed in ``finally``; nothing
    is kept in module state.
"""
from cython cimport floating
from cython.parallel cimport prange
from cpython.pycapsule cimport PyCapsule_New
from libc.float cimport FLT_MAX, FLT_MIN
from libc.math cimport INFINITY, fabs, isfinite, sqrt
from libc.stdlib cimport calloc, free, malloc

from cnorm._buffers cimport (DEBUG_CHECKS, FLOAT32_MIN_EPS, NORMALIZE_PLAIN_NAME, Buffers,
                             check_sizes, normalize_plain_t, plain_call, plain_like_x,
                             plain_vector)
from cnorm._storage cimport (CN_FLOAT32, CN_FLOAT64, cn_is_half, cn_item_size, cn_load_run,
                             cn_store_run)

cdef extern from "cnorm/_simd.h":
    enum:
        CN_STREAM_ALIGN
    void cn_stream_f32(float* p, const float* values) noexcept nogil
    int cn_pages_resident(const void* p, size_t nbytes) noexcept nogil
    float cn_keep_f32(float v, int keep) noexcept nogil
    double cn_keep_f64(double v, int keep) noexcept nogil

cdef extern from *:
    # GCC and clang: a hint, never a fault (even past the end of an array).
    void __builtin_prefetch(const void* address, int rw, int locality) noexcept nogil

cdef extern from *:
    """
    #include "cnorm/_simd.h"
    /* Rows per block of the reductions: 8 where the build has AVX-512's 32
       vector registers (measured: statistics 10-23 % faster than 4), 4
       elsewhere (AVX2's 16 registers: 8 rows were slower for narrow layers). */
    #if CN_REGISTERS >= 32
    #define CNORM_REDUCE_ROWS 8
    #else
    #define CNORM_REDUCE_ROWS 4
    #endif
    """
    const Py_ssize_t REDUCE_ROWS "CNORM_REDUCE_ROWS"

cdef extern from *:
    """
    /* The float32 reductions of AVX2 and AVX-512 builds over one chunk, by
       groups of channels: up to 64 channels at a time in AVX-512 builds (8
       vectors of 8 doubles; 24 of the 32 vector registers for the backward's
       two sums and center), 16 in AVX2 builds (4 of 4; 12 of 16 registers),
       each down every row of the chunk with its sums in registers, written
       once at the end; the channels left over after the full groups are one
       more, narrower group. C within one group is one sequential sweep of the
       chunk, where the row blocks of _chunk_stats read REDUCE_ROWS interleaved
       streams and load and store their sums again for every block (and the
       compiler's code for those loads each vector twice). Wider C (AVX-512
       builds only, see _reduction_order) takes one sweep per group, every
       row's group a short run of lines, after one sequential pass of
       prefetches that brings the chunk into L2 (without it, two-group widths
       were 1.3-1.8x slower than the row blocks on 10-13 MB tensors while the
       shared L3 was busy).
       Measured on AMD Zen 5 at 2 threads against the row blocks, builds
       alternated call by call in one process, two runs each:
       - one sweep, AVX-512: statistics 27-55 % and backward 7-30 % faster on
         32x56x56x32, 16x112x112x16, 32x28x28x24, 32x28x28x48; on 32x56x56x64
         statistics 14-15 %, training 7-8 %, backward 5-6 %;
       - one sweep, AVX2: 16x112x112x16 statistics 39-41 %, backward 12-24 %;
       - several sweeps, AVX-512: 32x28x28x128 statistics 13-17 %, training
         6-8 %; 32x7x7x2048 and 1x56x56x256 statistics 2-8 % faster,
         training and backward within noise (11 % faster to 3 % slower, and
         one round of training 15 % slower while the L3 was busy).
       In AVX2 builds several 16-channel sweeps were faster for some widths
       and up to 2x slower for others (48, 64, 96, 128): those keep the blocks.
       Each channel's sum runs over the rows in order, in double (a float32
       value, its difference from another and their products are exact or
       nearly so in double), so the result is a function of the chunk alone. */
    /* Written with the native-width vectors of _simd.h (cn_vdn: CN_VDN_LANES
       channels, one register): a group is CN_REGISTERS / 4 of them, so that
       the three arrays of the backward's sums take 3/4 of the registers. */
    #if CN_WIDE
    #define CNORM_GROUPS 1
    #define CNORM_GW CN_VDN_LANES             /* channels (doubles) per vector */
    #define CNORM_GV (CN_REGISTERS / 4)       /* vectors per group: 64 or 16 channels */
    #define CNORM_SWEEPS (CN_REGISTERS >= 32) /* wider C in several sweeps (see _reduction_order) */
    /* Shifted sums of x's rows: total += x - shift, squares += (x - shift)**2,
       shift the chunk's first row; NV vectors of CNORM_GW channels from g. */
    #define CNORM_STATS_GROUP(NV) do { \
        cn_vdn s[NV], t[NV], q[NV]; int v; Py_ssize_t r; \
        for (v = 0; v < NV; v++) { \
            s[v] = cn_load_dn_f32(x + g + CNORM_GW * v); \
            t[v] = cn_zero_dn(); q[v] = cn_zero_dn(); } \
        for (r = 0; r < n_rows; r++) { \
            const float *row = x + r * n + g; \
            for (v = 0; v < NV; v++) { \
                cn_vdn d = cn_load_dn_f32(row + CNORM_GW * v) - s[v]; \
                t[v] = t[v] + d; \
                q[v] = cn_fma_dn(d, d, q[v]); } } \
        for (v = 0; v < NV; v++) { \
            cn_store_dn(total + g + CNORM_GW * v, t[v]); \
            cn_store_dn(squares + g + CNORM_GW * v, q[v]); } \
        g += CNORM_GW * NV; } while (0)
    /* The vectors left after the full groups as one more group: one sweep,
       not one per vector (at most CNORM_GV - 1 of them). */
    #define CNORM_LAST_GROUP(GROUP) \
        switch ((n - g) / CNORM_GW) { \
        case 7: GROUP(7); break; case 6: GROUP(6); break; case 5: GROUP(5); break; \
        case 4: GROUP(4); break; case 3: GROUP(3); break; case 2: GROUP(2); break; \
        case 1: GROUP(1); break; default: break; }
    /* More than one group: bring the chunk into L2 in one sequential pass of
       prefetches first, so the sweeps down its rows (strided) read it there. */
    static void cnorm_prefetch_chunk(const float *a, Py_ssize_t n_rows, Py_ssize_t n) {
        const char *p = (const char *)a, *end = (const char *)(a + n_rows * n);
        if (n <= CNORM_GW * CNORM_GV) return;
        for (; p < end; p += 64) cn_prefetch_l2(p);
    }
    /* n (C) must be a multiple of CNORM_GW: _reduction_order sends no other here. */
    static void cnorm_group_stats(const float *x, Py_ssize_t n_rows, Py_ssize_t n,
                                  double *total, double *squares) {
        Py_ssize_t g = 0;
        cnorm_prefetch_chunk(x, n_rows, n);
        while (g + CNORM_GW * CNORM_GV <= n) CNORM_STATS_GROUP(CNORM_GV);
        CNORM_LAST_GROUP(CNORM_STATS_GROUP)
    }
    /* The backward's sums: sum_dy += dy, sum_dyc += dy*(x - center); dy as
       GET(dy at p, x at q, channel) reads it: plain, or masked by the fused
       ReLU's forward (cn_masked_dn_f32; ``mask`` its center, scale and shift
       arrays, ``stride`` apart: see _relu_gradient). */
    #define CNORM_SUMS_GROUP_AS(NV, GET) do { \
        cn_vdn m[NV], a[NV], b[NV]; int v; Py_ssize_t r; \
        for (v = 0; v < NV; v++) { \
            m[v] = cn_load_dn(center + g + CNORM_GW * v); \
            a[v] = cn_zero_dn(); b[v] = cn_zero_dn(); } \
        for (r = 0; r < n_rows; r++) { \
            const float *dy_row = dy + r * n + g, *x_row = x + r * n + g; \
            for (v = 0; v < NV; v++) { \
                cn_vdn gv = GET(dy_row + CNORM_GW * v, x_row + CNORM_GW * v, \
                                g + CNORM_GW * v); \
                a[v] = a[v] + gv; \
                b[v] = cn_fma_dn(gv, cn_load_dn_f32(x_row + CNORM_GW * v) - m[v], b[v]); } } \
        for (v = 0; v < NV; v++) { \
            cn_store_dn(sum_dy + g + CNORM_GW * v, a[v]); \
            cn_store_dn(sum_dyc + g + CNORM_GW * v, b[v]); } \
        g += CNORM_GW * NV; } while (0)
    #define CNORM_PLAIN_DY(p, q, c) cn_load_dn_f32(p)
    #define CNORM_MASKED_DY(p, q, c) cn_masked_dn_f32(p, q, cn_load_fh(mask + (c)), \
        cn_load_fh(mask + stride + (c)), cn_load_fh(mask + 2 * stride + (c)))
    #define CNORM_SUMS_GROUP(NV) CNORM_SUMS_GROUP_AS(NV, CNORM_PLAIN_DY)
    #define CNORM_MASKED_SUMS_GROUP(NV) CNORM_SUMS_GROUP_AS(NV, CNORM_MASKED_DY)
    static void cnorm_group_sums(const float *dy, const float *x, const double *center,
                                 Py_ssize_t n_rows, Py_ssize_t n, double *sum_dy,
                                 double *sum_dyc, const float *mask, Py_ssize_t stride) {
        Py_ssize_t g = 0;
        cnorm_prefetch_chunk(dy, n_rows, n);
        cnorm_prefetch_chunk(x, n_rows, n);
        if (mask == NULL) {
            while (g + CNORM_GW * CNORM_GV <= n) CNORM_SUMS_GROUP(CNORM_GV);
            CNORM_LAST_GROUP(CNORM_SUMS_GROUP)
        } else {
            while (g + CNORM_GW * CNORM_GV <= n) CNORM_MASKED_SUMS_GROUP(CNORM_GV);
            CNORM_LAST_GROUP(CNORM_MASKED_SUMS_GROUP)
        }
    }
    #undef CNORM_SUMS_GROUP_AS
    #undef CNORM_PLAIN_DY
    #undef CNORM_MASKED_DY
    #undef CNORM_SUMS_GROUP
    #undef CNORM_MASKED_SUMS_GROUP
    #undef CNORM_LAST_GROUP
    #else
    #define CNORM_GROUPS 0
    #define CNORM_GW 1
    #define CNORM_GV 1
    #define CNORM_SWEEPS 0
    static void cnorm_group_stats(const float *x, Py_ssize_t n_rows, Py_ssize_t n,
                                  double *total, double *squares) {}
    static void cnorm_group_sums(const float *dy, const float *x, const double *center,
                                 Py_ssize_t n_rows, Py_ssize_t n, double *sum_dy,
                                 double *sum_dyc, const float *mask, Py_ssize_t stride) {}
    #endif
    """
    const bint GROUP_KERNELS "CNORM_GROUPS"
    # Channels per vector of the group kernels, and vectors per group.
    const Py_ssize_t GROUP_VECTOR "CNORM_GW"
    const Py_ssize_t GROUP_VECTORS "CNORM_GV"
    # Whether C wider than a group is reduced by groups too (several sweeps).
    const bint GROUP_SWEEPS "CNORM_SWEEPS"
    void _group_stats "cnorm_group_stats"(const float* x, Py_ssize_t n_rows, Py_ssize_t n,
                                          double* total, double* squares) noexcept nogil
    void _group_sums "cnorm_group_sums"(const float* dy, const float* x, const double* center,
                                        Py_ssize_t n_rows, Py_ssize_t n, double* sum_dy,
                                        double* sum_dyc, const float* mask,
                                        Py_ssize_t stride) noexcept nogil

cdef extern from *:
    """
    /* The float32 elementwise passes of AVX2 and AVX-512 builds (CNORM_RANGE 0
       elsewhere) over a chunk of rows taken as one contiguous range, for
       streaming stores and for narrow rows (see _apply).
       Streaming (non-temporal) stores: the output is written to memory
       without being read into the cache first (a normal store reads each line
       before writing it), one memory transfer in three of a pass that reads x
       and writes y. Measured on AMD Zen 5 at 2 threads, 51 MB float32
       tensors: inference 2.9 -> 2.3 ms, the backward's second pass 4.3 ->
       3.6 ms. In-cache outputs are slower this way, so the kernels stream
       only past STREAM_WORKING_SET.
       Narrow rows: the vectors run across row ends, where the compiler's loop
       over one row pays its setup (overlap checks, head and tail) for every
       row, which is most of the work when a row is one or two vectors.
       Vectors start where the output is aligned (a scalar head before, a
       scalar tail after); the coefficient arrays start at the output's offset
       in a cache line (see _coefficients). The same fused multiply-adds as
       the compiler contracts the Cython loops into, so every element has the
       same bits whichever way it is computed. */
    /* Written with the native-width float vectors of _simd.h (cn_vfn:
       CNORM_W floats, one register). */
    #if CN_WIDE
    #define CNORM_RANGE 1
    #define CNORM_W CN_VFN_LANES
    #define CNORM_ALIGN (CNORM_W * 4)
    /* out[i] for i in [start, stop) of the flat (M, C) arrays, i = start a
       row's first element; the coefficient arrays hold C + CNORM_W values,
       wrapped (value j is that of channel j mod C), so a vector that runs
       past the end of a row reads the next row's channels. */
    static void cnorm_affine_range(const float *dy, const float *x, float *out,
                                   const float *center, const float *scale,
                                   const float *shift, const float *dy_scale,
                                   int folded, int stream, Py_ssize_t start,
                                   Py_ssize_t stop, Py_ssize_t n, const float *residual,
                                   int relu, const float *mask, Py_ssize_t stride,
                                   int mask_folded) {
        Py_ssize_t i = start, c = 0;
        Py_ssize_t aligned = i + (Py_ssize_t)(((CNORM_ALIGN - ((size_t)(out + i) % CNORM_ALIGN))
                                              % CNORM_ALIGN) / 4);
        if ((size_t)out % 4 != 0)  /* no vector of it is ever aligned */
            aligned = stream ? stop : start;
        if (aligned > stop) aligned = stop;
    /* dy, or with ``mask`` (the ReLU backward, see _relu_gradient: the
       forward's center, scale, shift, wrapped as the others; the center 0 in
       its folded form) dy where the forward's affine step is > 0, else 0. */
    #define CNORM_DY(i, c) (mask == NULL ? dy[i] \
            : cn_masked_f32(dy[i], x[i], mask[c], mask[stride + c], mask[2 * stride + c]))
    #define CNORM_ONE(i, c) (dy == NULL \
            ? (folded ? fmaf(x[i], scale[c], shift[c]) \
                      : fmaf(x[i] - center[c], scale[c], shift[c])) \
            : fmaf(CNORM_DY(i, c), dy_scale[c], folded ? fmaf(x[i], scale[c], shift[c]) \
                                               : fmaf(x[i] - center[c], scale[c], shift[c])))
    #define CNORM_NEXT(c, step) do { c += (step); while (c >= n) c -= n; } while (0)
    #define CNORM_AFFINE(i, c, folded) ((folded) \
            ? cn_fma_fn(cn_load_fn(x + i), cn_load_fn(scale + c), cn_load_fn(shift + c)) \
            : cn_fma_fn(cn_load_fn(x + i) - cn_load_fn(center + c), \
                        cn_load_fn(scale + c), cn_load_fn(shift + c)))
    /* The forward's epilogue (see _finish, whose bits these are: the
       affine result rounded to float, plus the residual in float, then the
       ReLU), applied in registers before the store. */
    #define CNORM_EPILOGUE(v, i, with_residual, with_relu) \
        ((with_relu) ? cn_relu_fn((with_residual) ? (v) + cn_load_fn(residual + i) : (v)) \
                     : ((with_residual) ? (v) + cn_load_fn(residual + i) : (v)))
    /* The vector of dy, masked (with_mask: 1 with the forward's folded form,
       2 with its centered form) as CNORM_DY. */
    #define CNORM_MASKED_DY(i, c, with_mask) ((with_mask) == 0 ? cn_load_fn(dy + i) \
            : cn_and_fn(cn_load_fn(dy + i), cn_positive_fn(cn_fma_fn( \
                  (with_mask) == 1 ? cn_load_fn(x + i) : cn_load_fn(x + i) - cn_load_fn(mask + c), \
                  cn_load_fn(mask + stride + c), cn_load_fn(mask + 2 * stride + c)))))
    #define CNORM_VECTORS(STORE, with_dy, folded, with_residual, with_relu) \
        CNORM_VECTORS_M(STORE, with_dy, folded, with_residual, with_relu, 0)
    #define CNORM_VECTORS_M(STORE, with_dy, folded, with_residual, with_relu, with_mask) \
        for (; i + CNORM_W <= stop; i += CNORM_W) { \
            cn_vfn v = (with_dy) ? cn_fma_fn(CNORM_MASKED_DY(i, c, with_mask), \
                                             cn_load_fn(dy_scale + c), \
                                             CNORM_AFFINE(i, c, folded)) \
                                 : CNORM_AFFINE(i, c, folded); \
            STORE(out + i, CNORM_EPILOGUE(v, i, with_residual, with_relu)); \
            CNORM_NEXT(c, CNORM_W); \
        }
    #define CNORM_FORWARD(STORE, folded) \
        if (residual != NULL && relu) { CNORM_VECTORS(STORE, 0, folded, 1, 1) } \
        else if (residual != NULL) { CNORM_VECTORS(STORE, 0, folded, 1, 0) } \
        else if (relu) { CNORM_VECTORS(STORE, 0, folded, 0, 1) } \
        else { CNORM_VECTORS(STORE, 0, folded, 0, 0) }
    #define CNORM_CASES(STORE) \
        if (dy == NULL && folded) { CNORM_FORWARD(STORE, 1) } \
        else if (dy == NULL) { CNORM_FORWARD(STORE, 0) } \
        else if (mask != NULL) { CNORM_BACKWARD_MASKED(STORE) } \
        else if (folded) { CNORM_VECTORS(STORE, 1, 1, 0, 0) } \
        else { CNORM_VECTORS(STORE, 1, 0, 0, 0) }
    #define CNORM_BACKWARD_MASKED(STORE) \
        if (folded && mask_folded) { CNORM_VECTORS_M(STORE, 1, 1, 0, 0, 1) } \
        else if (folded) { CNORM_VECTORS_M(STORE, 1, 1, 0, 0, 2) } \
        else if (mask_folded) { CNORM_VECTORS_M(STORE, 1, 0, 0, 0, 1) } \
        else { CNORM_VECTORS_M(STORE, 1, 0, 0, 0, 2) }
    #define CNORM_SCALAR(i, c) do { \
            float v = CNORM_ONE(i, c); \
            if (residual != NULL) v = v + residual[i]; \
            out[i] = (relu && v < 0) ? 0.0f : v; } while (0)
        for (; i < aligned; i++) { CNORM_SCALAR(i, c); CNORM_NEXT(c, 1); }
        if (stream) {
            CNORM_CASES(cn_stream_fn)
        } else {
            CNORM_CASES(cn_store_fn)
        }
        for (; i < stop; i++) { CNORM_SCALAR(i, c); CNORM_NEXT(c, 1); }
    #undef CNORM_DY
    #undef CNORM_ONE
    #undef CNORM_NEXT
    #undef CNORM_AFFINE
    #undef CNORM_EPILOGUE
    #undef CNORM_MASKED_DY
    #undef CNORM_VECTORS
    #undef CNORM_VECTORS_M
    #undef CNORM_BACKWARD_MASKED
    #undef CNORM_FORWARD
    #undef CNORM_CASES
    #undef CNORM_SCALAR
    }
    #else
    #define CNORM_RANGE 0
    #define CNORM_W 1
    static void cnorm_affine_range(const float *dy, const float *x, float *out,
                                   const float *center, const float *scale,
                                   const float *shift, const float *dy_scale,
                                   int folded, int stream, Py_ssize_t start,
                                   Py_ssize_t stop, Py_ssize_t n, const float *residual,
                                   int relu, const float *mask, Py_ssize_t stride,
                                   int mask_folded) {}
    #endif
    """
    # The build has cnorm_affine_range, and with it streaming stores.
    const bint RANGE_KERNEL "CNORM_RANGE"
    void _affine_range "cnorm_affine_range"(const float* dy, const float* x, float* out,
                                            const float* center, const float* scale,
                                            const float* shift, const float* dy_scale,
                                            int folded, int stream, Py_ssize_t start,
                                            Py_ssize_t stop, Py_ssize_t n,
                                            const float* residual, int relu,
                                            const float* mask, Py_ssize_t mask_stride,
                                            int mask_folded) noexcept nogil
    void _stream_fence "cn_stream_fence"() noexcept nogil

cdef extern from *:
    """
    #include "cnorm/_simd.h"
    /* The planar reductions (inner > 1): one channel of a tile, its runs of
       n_inner values at o*outer_stride for o < n_outer, each run summed in
       16 lanes (two cn_vd; lane j takes the values at j mod 16 of every run),
       the lanes added in lane order at the end. Statistics: shifted sums
       S1 = sum(x - shift), S2 = sum((x - shift)**2); backward: sum(dy) and
       sum(dy*(x - center)); all in double. */
    #define CN_PLANE_STATS(NAME, T, LOAD) \
    static void NAME(const T *x, ptrdiff_t n_outer, ptrdiff_t n_inner, \
                     ptrdiff_t outer_stride, double shift, double *total, double *squares) { \
        cn_vd s = cn_broadcast_d(shift), zero = cn_broadcast_d(0.0); \
        cn_vd t0 = zero, t1 = zero, q0 = zero, q1 = zero; \
        ptrdiff_t o, i, j; \
        for (o = 0; o < n_outer; o++) { \
            const T *run = x + o * outer_stride; \
            for (i = 0; i + 16 <= n_inner; i += 16) { \
                cn_vd d0 = LOAD(run + i) - s, d1 = LOAD(run + i + 8) - s; \
                t0 += d0; t1 += d1; q0 += d0 * d0; q1 += d1 * d1; \
            } \
            for (j = 0; i < n_inner; i++, j++) { \
                double d = (double)run[i] - shift; \
                if (j < 8) { t0[j] += d; q0[j] += d * d; } \
                else { t1[j - 8] += d; q1[j - 8] += d * d; } \
            } \
        } \
        *total = cn_lanes_sum(t0) + cn_lanes_sum(t1); \
        *squares = cn_lanes_sum(q0) + cn_lanes_sum(q1); \
    }
    CN_PLANE_STATS(cn_plane_stats_f32, float, cn_load_d_f32)
    CN_PLANE_STATS(cn_plane_stats_f64, double, cn_load_d_f64)
    /* GET(p, q): the vector of dy at p (x at q), GET1(a, b) one value of it:
       plain, or masked by the fused ReLU's forward (cn_masked_*: mc, ms, mb
       the channel's forward center, scale and shift). */
    #define CN_PLANE_SUMS(NAME, T, LOAD, GET, GET1) \
    static void NAME(const T *dy, const T *x, ptrdiff_t n_outer, ptrdiff_t n_inner, \
                     ptrdiff_t outer_stride, double center, double *sum_dy, \
                     double *sum_dy_centered, T mc, T ms, T mb) { \
        cn_vd m = cn_broadcast_d(center), zero = cn_broadcast_d(0.0); \
        cn_vd a0 = zero, a1 = zero, b0 = zero, b1 = zero; \
        ptrdiff_t o, i, j; \
        (void)mc; (void)ms; (void)mb; \
        for (o = 0; o < n_outer; o++) { \
            const T *g = dy + o * outer_stride, *v = x + o * outer_stride; \
            for (i = 0; i + 16 <= n_inner; i += 16) { \
                cn_vd g0 = GET(g + i, v + i), g1 = GET(g + i + 8, v + i + 8); \
                a0 += g0; a1 += g1; \
                b0 += g0 * (LOAD(v + i) - m); b1 += g1 * (LOAD(v + i + 8) - m); \
            } \
            for (j = 0; i < n_inner; i++, j++) { \
                double gi = (double)GET1(g[i], v[i]), di = (double)v[i] - center; \
                if (j < 8) { a0[j] += gi; b0[j] += gi * di; } \
                else { a1[j - 8] += gi; b1[j - 8] += gi * di; } \
            } \
        } \
        *sum_dy = cn_lanes_sum(a0) + cn_lanes_sum(a1); \
        *sum_dy_centered = cn_lanes_sum(b0) + cn_lanes_sum(b1); \
    }
    #define CN_PLAIN_F32(p, q) cn_load_d_f32(p)
    #define CN_PLAIN_F64(p, q) cn_load_d_f64(p)
    #define CN_PLAIN1(a, b) (a)
    #define CN_MASKED_F32(p, q) cn_masked_d_f32(p, q, mc, ms, mb)
    #define CN_MASKED_F64(p, q) cn_masked_d_f64(p, q, mc, ms, mb)
    #define CN_MASKED1_F32(a, b) cn_masked_f32(a, b, mc, ms, mb)
    #define CN_MASKED1_F64(a, b) cn_masked_f64(a, b, mc, ms, mb)
    CN_PLANE_SUMS(cn_plane_sums_f32, float, cn_load_d_f32, CN_PLAIN_F32, CN_PLAIN1)
    CN_PLANE_SUMS(cn_plane_sums_f64, double, cn_load_d_f64, CN_PLAIN_F64, CN_PLAIN1)
    CN_PLANE_SUMS(cn_plane_sums_masked_f32, float, cn_load_d_f32, CN_MASKED_F32, CN_MASKED1_F32)
    CN_PLANE_SUMS(cn_plane_sums_masked_f64, double, cn_load_d_f64, CN_MASKED_F64, CN_MASKED1_F64)
    #undef CN_PLAIN_F32
    #undef CN_PLAIN_F64
    #undef CN_PLAIN1
    #undef CN_MASKED_F32
    #undef CN_MASKED_F64
    #undef CN_MASKED1_F32
    #undef CN_MASKED1_F64
    #undef CN_PLANE_STATS
    #undef CN_PLANE_SUMS
    """
    void _plane_stats_f32 "cn_plane_stats_f32"(const float* x, Py_ssize_t n_outer,
                                               Py_ssize_t n_inner, Py_ssize_t outer_stride,
                                               double shift, double* total,
                                               double* squares) noexcept nogil
    void _plane_stats_f64 "cn_plane_stats_f64"(const double* x, Py_ssize_t n_outer,
                                               Py_ssize_t n_inner, Py_ssize_t outer_stride,
                                               double shift, double* total,
                                               double* squares) noexcept nogil
    void _plane_sums_f32 "cn_plane_sums_f32"(const float* dy, const float* x,
                                             Py_ssize_t n_outer, Py_ssize_t n_inner,
                                             Py_ssize_t outer_stride, double center,
                                             double* sum_dy, double* sum_dy_centered,
                                             float mc, float ms, float mb) noexcept nogil
    void _plane_sums_f64 "cn_plane_sums_f64"(const double* dy, const double* x,
                                             Py_ssize_t n_outer, Py_ssize_t n_inner,
                                             Py_ssize_t outer_stride, double center,
                                             double* sum_dy, double* sum_dy_centered,
                                             double mc, double ms, double mb) noexcept nogil
    void _plane_sums_masked_f32 "cn_plane_sums_masked_f32"(
        const float* dy, const float* x, Py_ssize_t n_outer, Py_ssize_t n_inner,
        Py_ssize_t outer_stride, double center, double* sum_dy, double* sum_dy_centered,
        float mc, float ms, float mb) noexcept nogil
    void _plane_sums_masked_f64 "cn_plane_sums_masked_f64"(
        const double* dy, const double* x, Py_ssize_t n_outer, Py_ssize_t n_inner,
        Py_ssize_t outer_stride, double center, double* sum_dy, double* sum_dy_centered,
        double mc, double ms, double mb) noexcept nogil


cdef enum:
    # About 64 KiB of float32 per chunk (more for wide layers, see below): a
    # chunk and its partials stay in L2 (1 MiB per core here, 512 KiB on most
    # x86 cores), and there are chunks enough for many threads.
    CHUNK_ELEMENTS = 16384
    # At least this many rows per chunk: each chunk writes 2*C double partials
    # that the merge reads back, 4/rows of the float32 data's own traffic, so
    # wide layers (C = 2048) need tall chunks (64 rows: 6 %, 512 KiB, in L2).
    MIN_CHUNK_ROWS = 64
    # Below this many elements the OpenMP entry cost (1-2 us warm, far more
    # after idling) outweighs any gain from a second thread.
    SERIAL_ELEMENTS = 32768
    # Centers within this many standard deviations of 0 take the folded x*A + B
    # (see _coefficients).
    FOLD_SIGMAS = 4
    # The chunk count is rounded up to a multiple of this (see _rows_per_chunk).
    CHUNK_MULTIPLE = 8
    # The float32 output of an elementwise pass is written with streaming
    # stores where the build has them (see cnorm_affine_range) when the pass's
    # tensors (x and y, or dy, x and dx) are more than this many bytes: more
    # than the last-level cache (32 MiB on the AMD Zen 5 measured here), so
    # the output would not stay there for its reader anyway, while a pass
    # that fits keeps it in the cache and its inputs too. Measured on
    # 32x7x7x2048 (12.8 MB tensors) with benchmarks/run.py at 2 threads:
    # backward (38.4 MB) 2.9 -> 2.5 of the copy streamed; inference (25.6 MB)
    # 0.93-1.35 (median 1.22, 8 runs) streamed, 1.01-1.23 (median 1.13, 11
    # runs) not. Measured again on a later day, builds alternated: streamed
    # ahead in 3 of 4 runs without ONNX Runtime among the peers, behind
    # (median 1.36 against 1.27) with it; paired probes streamed 8-15 %
    # faster. What costs at C = 2048 is the 16 KiB of coefficients that every
    # row reads (the same loop over a 2 KiB footprint ran at the copy's speed).
    # Only into resident memory, though (cn_pages_resident, in _apply): a
    # fresh output, whose pages the kernel zeroes into the cache at the first
    # write, is written faster by normal stores (measured at 2 threads, BN
    # inference of 16x256x56x56 and 16x64x112x112 NCHW into torch.empty_like
    # outputs, 51 MB each: 1.33-1.40x torch's time streamed, 0.88-0.95x not).
    STREAM_WORKING_SET = 32 * 1024 * 1024
    # Values of a plane computed (and finished by the epilogue) per block before
    # its 16-value streaming stores (_apply_planes): 1 KiB of the stack, in L1;
    # blocks of 16 called the epilogue per 16 values (NCHW relu(bn(x) + z)
    # about 3x the plain pass at 2 threads, under load).
    STREAM_BLOCK = 256
    # The same for the second pass of training and backward (dy, x and dx, or x
    # and y), which re-reads the inputs that the first pass has just read, the
    # last of them still in the caches: a normal store allocates the output's
    # lines there and evicts those inputs before the pass reaches them.
    # Measured at 2 threads, streamed against normal stores: training over
    # 12.8 MB tensors (32x7x7x2048, 8x28x28x512, 1x112x112x256; 25.6 MB in the
    # pass) 13-17 % faster in paired runs with steal-time rounds dropped, and
    # 32x7x7x2048 with benchmarks/run.py, 6 alternations of the two builds,
    # 4-30 % faster each time (0.72-0.97 ms -> 0.61-0.93 ms); over 6.4 MB
    # tensors equal. The backward over 1x56x56x256
    # (9.6 MB in the pass) was 10 % faster paired, 5-20 % slower in
    # benchmarks/run.py: below this size outputs are written normally, for the
    # next layer to find in the cache.
    REREAD_STREAM_WORKING_SET = 16 * 1024 * 1024
    # Rows of at most this many channels take cnorm_affine_range in the
    # elementwise passes (see _apply).
    RANGE_MAX_CHANNELS = 32
    # How a chunk's reduction walks it (see _reduction_order).
    BY_BLOCKS = 0
    BY_ROWS = 1
    BY_GROUPS = 2
    # Largest chunk, in bytes of the tensors a reduction reads, that is
    # reduced by channel groups (see _reduction_order): half a 1 MiB L2, so
    # the sweeps after the first find the chunk there.
    GROUP_CHUNK_BYTES = 512 * 1024
    # Channel range of the backward's one-row sums (see _sums_by_rows).
    SUM_ROWS_MIN_CHANNELS = 256
    SUM_ROWS_MAX_CHANNELS = 512
    # Values after the C of each coefficient array (at least one vector).
    COEFFICIENT_WRAP = 16
    # Cache line size: the coefficient arrays' alignment (see _coefficients).
    LINE_BYTES = 64
    # Channels per block of the parallel merge (a cache-friendly stripe).
    MERGE_BLOCK = 256
    # Tiles of data with inner > 1 (see _grid): whole plane sets (one outer
    # index, every channel), several of them up to PLANAR_TILE values when
    # that leaves 2*PLANAR_MIN_TILES tiles; a plane set of more than
    # PLANAR_MAX_TILE values (4 MiB of float32), or one of few when there
    # are fewer than PLANAR_MIN_TILES of them, is cut into segments of a
    # multiple of SEGMENT_MULTIPLE values (whole 64-byte lines of float32)
    # for the threads. Long runs read fastest (measured on 32x64x56x56 at 1
    # thread: statistics over 784-value segments 1.4x the time of whole
    # planes).
    PLANAR_TILE = 65536
    PLANAR_MAX_TILE = 1048576
    # Values per piece of the half-precision elementwise passes (8 KiB of
    # float scratch per tensor: L1), see _apply_half_tile.
    HALF_PIECE = 2048
    PLANAR_MIN_TILES = 8
    SEGMENT_MULTIPLE = 16
    # Planes shorter than two segments of this many values are not cut:
    # segments of a few lines give runs too short to stream, and neighbouring
    # segments share the cache lines where one plane ends and the next
    # begins, so the threads write the same lines. Measured on 1x2048x7x7
    # NCHW inference (segments of 16 values): 2 threads 92 us, 1 thread 53,
    # NHWC 35, the copy 10; 1x512x14x14 49, 31, 21, 10.
    MIN_SEGMENT = 256
    # The reductions prefetch PREFETCH_BYTES ahead of the rows they read when
    # four rows are at most PREFETCH_MAX_BLOCK bytes (narrow layers: C <= 128
    # in float32): there the hardware prefetcher alone leaves the core waiting
    # (measured here: the stats pass of 32x56x56x64 about 20 % faster); wide
    # rows were slower with it.
    PREFETCH_BYTES = 4096
    PREFETCH_MAX_BLOCK = 2048


cdef inline void _prefetch_block(const void* block, Py_ssize_t size) noexcept nogil:
    # Prefetch the ``size`` bytes PREFETCH_BYTES after ``block`` into the caches.
    cdef const char* start = <const char*> block + PREFETCH_BYTES
    cdef Py_ssize_t offset
    for offset in range(0, size, 64):
        __builtin_prefetch(start + offset, 0, 0)



cdef Py_ssize_t _rows_per_chunk(Py_ssize_t n_rows, Py_ssize_t n_channels) noexcept nogil:
    # About CHUNK_ELEMENTS values and at least MIN_CHUNK_ROWS rows, then evened
    # out so that the number of chunks is a multiple of CHUNK_MULTIPLE: 2, 4 or
    # 8 threads get equal shares (32x7x7x2048: 32 chunks of 49 rows, where 64-row
    # chunks made 25 and one thread of two did 13). A function of the shape only.
    cdef Py_ssize_t rows = max(<Py_ssize_t>MIN_CHUNK_ROWS, _chunk_elements // max(n_channels, 1))
    cdef Py_ssize_t chunks = (n_rows + rows - 1) // rows
    if chunks <= 1:
        return max(n_rows, 1)
    chunks = (chunks + CHUNK_MULTIPLE - 1) // CHUNK_MULTIPLE * CHUNK_MULTIPLE
    return (n_rows + chunks - 1) // chunks


# The tuning numbers in use, set at import by cnorm._tuning (the compiled
# defaults of the enum above, lowered where this machine's caches are smaller;
# CNORM_TUNING overrides) through set_tuning. The stream thresholds and
# group_chunk_bytes decide only how a pass stores and walks its data;
# chunk_elements and planar_tile_values where the statistics' partial sums
# begin and end. None depends on the thread count, so neither do the bits.
cdef Py_ssize_t _stream_bytes = STREAM_WORKING_SET
cdef Py_ssize_t _reread_stream_bytes = REREAD_STREAM_WORKING_SET
cdef Py_ssize_t _chunk_elements = CHUNK_ELEMENTS
cdef Py_ssize_t _group_chunk_bytes = GROUP_CHUNK_BYTES
cdef Py_ssize_t _planar_tile = PLANAR_TILE
TUNING_NAMES = ("stream_bytes", "reread_stream_bytes", "chunk_elements", "group_chunk_bytes",
                "planar_tile_values")
DEFAULT_TUNING = (STREAM_WORKING_SET, REREAD_STREAM_WORKING_SET, CHUNK_ELEMENTS,
                  GROUP_CHUNK_BYTES, PLANAR_TILE)
# Each number's range (a planar tile beyond PLANAR_MAX_TILE would be cut anyway).
TUNING_RANGES = ((0, 2**62), (0, 2**62), (1, 2**40), (0, 2**62),
                 (SEGMENT_MULTIPLE, PLANAR_MAX_TILE))


def set_tuning(*values):
    """Set the tuning numbers, one value for each of TUNING_NAMES (see
    cnorm._tuning); returns the previous ones, as a tuple."""
    global _stream_bytes, _reread_stream_bytes, _chunk_elements, _group_chunk_bytes
    global _planar_tile
    from cnorm._tuning import checked
    previous = tuning()
    (_stream_bytes, _reread_stream_bytes, _chunk_elements, _group_chunk_bytes,
     _planar_tile) = checked(TUNING_NAMES, TUNING_RANGES, values)
    return previous


def tuning():
    """The tuning numbers in use, one for each of TUNING_NAMES."""
    return (_stream_bytes, _reread_stream_bytes, _chunk_elements, _group_chunk_bytes,
            _planar_tile)


cdef inline bint _beyond_cache(Py_ssize_t tensors, Py_ssize_t n_rows, Py_ssize_t n_channels,
                               Py_ssize_t item_size, bint reread) noexcept nogil:
    # Whether ``tensors`` (M, C) tensors together exceed the stream threshold
    # (STREAM_WORKING_SET by default), or the reread one
    # (REREAD_STREAM_WORKING_SET) for a pass that re-reads its inputs.
    return (tensors * n_rows * n_channels * item_size
            > (_reread_stream_bytes if reread else _stream_bytes))


cdef inline bint _streams(Py_ssize_t tensors, Py_ssize_t n_rows, Py_ssize_t n_channels,
                          Py_ssize_t item_size, bint reread) noexcept nogil:
    # Whether an elementwise pass over ``tensors`` (M, C) tensors (its inputs
    # and its output) writes its output with streaming stores: float32, a
    # build that has them, and tensors beyond the cache (``reread``: the pass
    # re-reads its inputs, the second pass of training and backward; see
    # REREAD_STREAM_WORKING_SET).
    return (RANGE_KERNEL and item_size == 4
            and _beyond_cache(tensors, n_rows, n_channels, item_size, reread))


def streams(Py_ssize_t tensors, Py_ssize_t n_rows, Py_ssize_t n_channels,
            Py_ssize_t item_size, bint reread=False):
    """Whether an elementwise pass over ``tensors`` such tensors streams its output.

    ``reread``: the pass re-reads its inputs (the second pass of training and
    backward).
    """
    return _streams(tensors, n_rows, n_channels, item_size, reread)


def pages_resident(array):
    """Whether the memory of a C-contiguous array is mapped to pages already
    (sampled; see cn_pages_resident): the last condition of streaming stores."""
    cdef const unsigned char[::1] data = numpy.asarray(array).reshape(-1).view(numpy.uint8)
    return bool(cn_pages_resident(&data[0], data.shape[0])) if data.shape[0] else True


def n_chunks(Py_ssize_t n_rows, Py_ssize_t n_channels):
    """Number of row chunks the kernels split an (n_rows, n_channels) input into."""
    cdef Py_ssize_t rows = _rows_per_chunk(n_rows, n_channels)
    return (n_rows + rows - 1) // rows


cdef inline Py_ssize_t _first_chunk(Py_ssize_t chunks, int n_threads,
                                    Py_ssize_t thread) noexcept nogil:
    # Thread ``thread`` of ``n_threads`` owns chunks [_first_chunk(t), _first_chunk(t + 1)):
    # one contiguous share each, the same in every pass of a call.
    return chunks * thread // n_threads


cdef int _threads_for(Py_ssize_t n_rows, Py_ssize_t n_channels, Py_ssize_t chunks,
                      int n_threads) noexcept nogil:
    if n_rows * n_channels < SERIAL_ELEMENTS:
        return 1
    return <int>max(<Py_ssize_t>1, min(<Py_ssize_t>n_threads, chunks))


cdef double* _partials(Py_ssize_t chunks, Py_ssize_t n_channels) except NULL:
    # Two (chunks, C) double arrays, back to back.
    cdef double* buffer = <double*> malloc(2 * chunks * n_channels * sizeof(double))
    if buffer == NULL:
        raise MemoryError("cnorm: cannot allocate batch-norm partials")
    return buffer


# ---------------------------------------------------------------------------
# The (outer, C, inner) view and its tiles

cdef struct Grid:
    # A tensor seen as (outer, C, inner), channels in the middle, cut into
    # tiles: ``block`` outer indices by ``segment`` inner values, every
    # channel. inner == 1 (channels last) is the row chunks of
    # _rows_per_chunk; inner > 1 (e.g. NCHW) whole planes of several outer
    # indices, or one outer index and a segment of the planes when a plane
    # set is large (see _grid). A function of the shape only, so that every
    # reduction is bit-identical for every thread count.
    int storage               # cnorm/_storage.h code
    Py_ssize_t outer, channels, inner
    Py_ssize_t block          # outer indices per tile
    Py_ssize_t segment        # inner values per tile
    Py_ssize_t segments       # tiles along inner
    Py_ssize_t tiles
    Py_ssize_t tile_size      # values in the largest tile


cdef struct Tile:
    Py_ssize_t outer_start, n_outer, inner_start, n_inner


cdef Grid _grid(int storage, Py_ssize_t outer, Py_ssize_t channels,
                Py_ssize_t inner) noexcept nogil:
    cdef Grid g
    cdef Py_ssize_t plane = channels * inner
    g.storage = storage
    g.outer = outer
    g.channels = channels
    g.inner = inner
    g.segments = 1
    g.segment = inner
    if inner == 1:
        g.block = _rows_per_chunk(outer, channels)
    elif plane <= _planar_tile and outer >= 2 * PLANAR_MIN_TILES * _planar_tile // plane:
        g.block = _planar_tile // plane          # several whole plane sets
    elif (plane <= _planar_tile or outer >= PLANAR_MIN_TILES) and plane <= PLANAR_MAX_TILE:
        g.block = 1                             # one plane set
    elif inner < 2 * MIN_SEGMENT and plane <= PLANAR_MAX_TILE:  # too short to cut
        g.block = 1
    else:                                       # segments of the planes
        g.block = 1
        g.segments = max((plane + _planar_tile - 1) // _planar_tile,
                         (PLANAR_MIN_TILES + outer - 1) // outer)
        g.segment = (inner + g.segments - 1) // g.segments
        g.segment = (g.segment + SEGMENT_MULTIPLE - 1) // SEGMENT_MULTIPLE * SEGMENT_MULTIPLE
        g.segments = (inner + g.segment - 1) // g.segment
    g.tiles = (outer + g.block - 1) // g.block * g.segments
    g.tile_size = min(g.block, outer) * channels * min(g.segment, inner)
    return g


cdef inline Tile _tile(const Grid* g, Py_ssize_t t) noexcept nogil:
    cdef Tile tile
    tile.outer_start = (t // g.segments) * g.block
    tile.n_outer = min(g.block, g.outer - tile.outer_start)
    tile.inner_start = (t % g.segments) * g.segment
    tile.n_inner = min(g.segment, g.inner - tile.inner_start)
    return tile


cdef inline double _tile_count(const Grid* g, Py_ssize_t t) noexcept nogil:
    cdef Tile tile = _tile(g, t)
    return <double>(tile.n_outer * tile.n_inner)


cdef inline Py_ssize_t _tile_offset(const Grid* g, const Tile* tile) noexcept nogil:
    # Index of the tile's first value (outer_start, 0, inner_start).
    return tile.outer_start * g.channels * g.inner + tile.inner_start


cdef void _load_tile(const Grid* g, const Tile* tile, const void* src,
                     float* dst) noexcept nogil:
    # A tile of half-precision data into dst as float, packed as
    # (n_outer, C, n_inner); one run when the tile holds whole planes.
    cdef const char* base = <const char*> src
    cdef size_t item = cn_item_size(g.storage)
    cdef Py_ssize_t o, c, start = _tile_offset(g, tile)
    if tile.n_inner == g.inner:
        cn_load_run(g.storage, base + start * item, dst, tile.n_outer * g.channels * g.inner)
        return
    for o in range(tile.n_outer):
        for c in range(g.channels):
            cn_load_run(g.storage, base + (start + (o * g.channels + c) * g.inner) * item,
                        dst + (o * g.channels + c) * tile.n_inner, tile.n_inner)


cdef void _store_tile(const Grid* g, const Tile* tile, const float* src,
                      void* dst) noexcept nogil:
    # The inverse of _load_tile: each value rounded once to the storage type.
    cdef char* base = <char*> dst
    cdef size_t item = cn_item_size(g.storage)
    cdef Py_ssize_t o, c, start = _tile_offset(g, tile)
    if tile.n_inner == g.inner:
        cn_store_run(g.storage, src, base + start * item, tile.n_outer * g.channels * g.inner)
        return
    for o in range(tile.n_outer):
        for c in range(g.channels):
            cn_store_run(g.storage, src + (o * g.channels + c) * tile.n_inner,
                         base + (start + (o * g.channels + c) * g.inner) * item, tile.n_inner)


cdef float* _half_scratch(const Grid* g, int n_threads, Py_ssize_t tensors) except? NULL:
    # Per-thread float scratch of ``tensors`` tiles for half-precision data
    # (NULL for float32/float64, which the kernels read in place).
    if not cn_is_half(g.storage):
        return NULL
    cdef float* buffer = <float*> malloc(n_threads * tensors * _scratch_stride(g) * sizeof(float))
    if buffer == NULL:
        raise MemoryError("cnorm: cannot allocate batch-norm scratch")
    return buffer


cdef inline Py_ssize_t _scratch_stride(const Grid* g) noexcept nogil:
    # Floats of one tile's scratch, in whole cache lines (no two threads share one).
    return (g.tile_size + 15) // 16 * 16


def grid(int storage, Py_ssize_t outer, Py_ssize_t channels, Py_ssize_t inner):
    """The tiling of an (outer, C, inner) tensor: (tiles, block, segment) (for the tests)."""
    cdef Grid g = _grid(storage, outer, channels, inner)
    return g.tiles, g.block, g.segment


# ---------------------------------------------------------------------------
# Elementwise passes

cdef inline floating _affine(floating x, floating center, floating scale, floating shift,
                            bint folded) noexcept nogil:
    # The one elementwise formula of batch norm: (x - center)*scale + shift, or
    # x*scale + shift if ``folded`` (see _coefficients); contracted into FMAs
    # where the build has them, the same way in every loop that uses it.
    if folded:
        return x * scale + shift
    return (x - center) * scale + shift


cdef inline floating _relu_gradient(floating dy, floating x, floating center, floating scale,
                                   floating shift, bint folded) noexcept nogil:
    # The backward of the fused ReLU: dy where the forward's ReLU passed its
    # input (_affine(x) > 0, with the forward's own coefficients and so its
    # bits: center is 0 for its folded form, and x - 0 is x), else 0. The
    # mask is recomputed from x wherever dy is read, inside each kernel that
    # reads dy (the `form` variants below; cn_masked_* in _simd.h for the
    # vector kernels); no mask tensor is kept and no tile is masked first.
    # (cn_keep_*: a select that loops vectorise.)
    if floating is float:
        return cn_keep_f32(dy, _affine(x, center, scale, shift, folded) > 0)
    else:
        return cn_keep_f64(dy, _affine(x, center, scale, shift, folded) > 0)


# The form of a pass, as a compile-time parameter (a fused type of empty
# structs: each kernel taking a ``form*`` is compiled once for each, the
# pointer itself never read): how it reads dy and how it finishes its output.
# dy as it is, or masked by the fused ReLU's forward (_relu_gradient; the
# forward's (center, scale, shift) block from _coefficients, which the kernel
# takes beside its own) in the forward's centered or folded form (the folded
# one reads no center: one load and one subtraction less per vector; the C
# kernels take the center, 0 there); the output as it is, or finished by the
# forward's epilogue (_finish: the ReLU, the residual, both). The reductions
# take the first three.
cdef struct _Plain:
    char unused

cdef struct _Masked:
    char unused

cdef struct _MaskedFolded:
    char unused

cdef struct _Relu:
    char unused

cdef struct _Residual:
    char unused

cdef struct _ResidualRelu:
    char unused

ctypedef fused form:
    _Plain
    _Masked
    _MaskedFolded
    _Relu
    _Residual
    _ResidualRelu


cdef inline void _mask_of(const floating* mask, Py_ssize_t stride, Py_ssize_t c,
                          floating* mc, floating* ms, floating* mb, form* how) noexcept nogil:
    # The forward's (center, scale, shift) of channel c from the mask block
    # (arrays ``stride`` apart) for a masked form; nothing for the others.
    if form is _Masked or form is _MaskedFolded:
        mc[0] = mask[c]
        ms[0] = mask[stride + c]
        mb[0] = mask[2 * stride + c]


cdef inline floating _dy_of(floating dy, floating x, floating center, floating scale,
                            floating shift, form* how) noexcept nogil:
    # dy as a kernel of the ``how`` variant reads it.
    if form is _Masked:
        return _relu_gradient(dy, x, center, scale, shift, False)
    elif form is _MaskedFolded:
        return _relu_gradient(dy, x, 0, scale, shift, True)
    else:
        return dy


cdef inline floating _relu(floating v) noexcept nogil:
    # max(v, 0) with NaN passed through (as torch.relu); -0.0 stays -0.0
    # (cn_keep_*: a select that loops vectorise, see _relu_gradient).
    if floating is float:
        return cn_keep_f32(v, not v < 0)
    else:
        return cn_keep_f64(v, not v < 0)


cdef inline floating _finish(floating v, const floating* residual, Py_ssize_t i,
                             form* how) noexcept nogil:
    # THE epilogue of the forward elementwise pass (docs/design.md, "Epilogue"):
    # act(v + residual[i]) of the output value v that the affine step has just
    # computed, as the form ``how`` asks (residual NULL in the forms without
    # one). Every layout, storage type and ISA path finishes its outputs with
    # this one step (cnorm_affine_range with its vector copy, CNORM_EPILOGUE),
    # in the loop that computes them, so the fused forms have the same bits
    # everywhere; the plain form is v.
    if form is _ResidualRelu:
        return _relu(v + residual[i])
    elif form is _Residual:
        return v + residual[i]
    elif form is _Relu:
        return _relu(v)
    else:
        return v


cdef void _apply_rows(const floating* dy, const floating* x, floating* out,
                      const floating* coefficients, bint folded, Py_ssize_t row_start,
                      Py_ssize_t row_stop, Py_ssize_t n_channels, const floating* mask,
                      const floating* residual, form* how) noexcept nogil:
    # Rows of channels (inner == 1): out = _affine(x), plus dy*dy_scale when dy
    # is not NULL, in the compute precision; coefficients holds center, scale,
    # shift, dy_scale (see _coefficients), one vector of C each; dy read and
    # the output finished as ``how`` asks (_dy_of, ``mask`` the forward's
    # coefficients; _finish, ``residual`` at x's offsets).
    cdef Py_ssize_t r, c, n = n_channels
    cdef Py_ssize_t stride = _coefficient_stride(n_channels)
    cdef const floating* center = coefficients
    cdef const floating* scale = coefficients + stride
    cdef const floating* shift = coefficients + 2 * stride
    cdef const floating* dy_scale = coefficients + 3 * stride
    cdef const floating* m = mask if form is _Masked or form is _MaskedFolded else coefficients
    cdef Py_ssize_t offset
    for r in range(row_start, row_stop):
        offset = r * n
        if dy == NULL and folded:
            for c in range(n):
                out[offset + c] = _finish(_affine(x[offset + c], center[c], scale[c], shift[c],
                                                  True), residual, offset + c, how)
        elif dy == NULL:
            for c in range(n):
                out[offset + c] = _finish(_affine(x[offset + c], center[c], scale[c], shift[c],
                                                  False), residual, offset + c, how)
        elif folded:
            for c in range(n):
                out[offset + c] = _dy_of(dy[offset + c], x[offset + c], m[c], m[stride + c],
                                         m[2 * stride + c], how) * dy_scale[c] + _affine(
                    x[offset + c], center[c], scale[c], shift[c], True)
        else:
            for c in range(n):
                out[offset + c] = _dy_of(dy[offset + c], x[offset + c], m[c], m[stride + c],
                                         m[2 * stride + c], how) * dy_scale[c] + _affine(
                    x[offset + c], center[c], scale[c], shift[c], False)


cdef void _apply_planes(const floating* dy, const floating* x, floating* out,
                        const floating* coefficients, bint folded, bint stream,
                        Py_ssize_t n_outer, Py_ssize_t n_channels, Py_ssize_t n_inner,
                        Py_ssize_t channel_stride, Py_ssize_t outer_stride,
                        const floating* residual, Py_ssize_t c_first, Py_ssize_t c_stop,
                        const floating* mask, form* how) noexcept nogil:
    # Planes of channels [c_first, c_stop) of n_channels (inner > 1): the run
    # of n_inner values of channel c at o*outer_stride + c*channel_stride, dy
    # read and the outputs finished as ``how`` asks (_dy_of, ``mask`` the
    # forward's coefficients; _finish, ``residual`` at x's offsets), with that
    # channel's coefficients as scalars; the same formula as _apply_rows, so
    # the same bits per element. ``stream`` (float32 only): whole aligned
    # blocks of 16 outputs written by cn_stream_f32 (see _streams), the same
    # values, computed STREAM_BLOCK values at a time into a stack block.
    cdef Py_ssize_t o, c, i, base, aligned
    cdef Py_ssize_t stride = _coefficient_stride(n_channels)
    cdef floating center, scale, shift, dy_scale, mc = 0, ms = 0, mb = 0
    cdef const floating* x_r
    cdef const floating* dy_r
    cdef const floating* residual_r
    cdef floating* out_r
    cdef Py_ssize_t j, m
    cdef float block[STREAM_BLOCK]
    for o in range(n_outer):
        for c in range(c_first, c_stop):
            base = o * outer_stride + c * channel_stride
            x_r = x + base
            out_r = out + base
            dy_r = NULL if dy == NULL else dy + base
            residual_r = NULL if residual == NULL else residual + base
            center = coefficients[c]
            scale = coefficients[stride + c]
            shift = coefficients[2 * stride + c]
            dy_scale = coefficients[3 * stride + c]
            _mask_of(mask, stride, c, &mc, &ms, &mb, how)
            if floating is float:
                if stream and (<size_t>out) % sizeof(float) == 0:
                    aligned = min(n_inner, <Py_ssize_t>(
                        ((CN_STREAM_ALIGN - (<size_t>out_r) % CN_STREAM_ALIGN)
                         % CN_STREAM_ALIGN) // sizeof(float)))
                    _affine_run(dy_r, x_r, out_r, center, scale, shift, dy_scale, folded, 0,
                                aligned, mc, ms, mb, residual_r, how)
                    i = aligned
                    while i + 16 <= n_inner:
                        # up to STREAM_BLOCK values (whole 16-value stores) at a time,
                        # finished in the block before they are streamed
                        m = min(<Py_ssize_t>STREAM_BLOCK, (n_inner - i) // 16 * 16)
                        for j in range(m):
                            if dy == NULL:
                                block[j] = _finish(_affine(x_r[i + j], center, scale, shift,
                                                           folded), residual_r, i + j, how)
                            else:
                                block[j] = _dy_of(dy_r[i + j], x_r[i + j], mc, ms, mb,
                                                  how) * dy_scale + _affine(
                                    x_r[i + j], center, scale, shift, folded)
                        for j in range(0, m, 16):
                            cn_stream_f32(out_r + i + j, block + j)
                        i += m
                    _affine_run(dy_r, x_r, out_r, center, scale, shift, dy_scale, folded, i,
                                n_inner, mc, ms, mb, residual_r, how)
                    continue
            _affine_run(dy_r, x_r, out_r, center, scale, shift, dy_scale, folded, 0, n_inner,
                        mc, ms, mb, residual_r, how)


cdef inline void _affine_run(const floating* dy, const floating* x, floating* out,
                             floating center, floating scale, floating shift,
                             floating dy_scale, bint folded, Py_ssize_t start,
                             Py_ssize_t stop, floating mc, floating ms, floating mb,
                             const floating* residual, form* how) noexcept nogil:
    # out[i] = _affine(x[i]) [+ dy[i]*dy_scale] for i in [start, stop), one
    # channel; dy read and the output finished as ``how`` asks (_dy_of, mc,
    # ms, mb the forward's coefficients of the channel; _finish, ``residual``
    # at x's offsets).
    cdef Py_ssize_t i
    if dy == NULL and folded:
        for i in range(start, stop):
            out[i] = _finish(_affine(x[i], center, scale, shift, True), residual, i, how)
    elif dy == NULL:
        for i in range(start, stop):
            out[i] = _finish(_affine(x[i], center, scale, shift, False), residual, i, how)
    elif folded:
        for i in range(start, stop):
            out[i] = _dy_of(dy[i], x[i], mc, ms, mb, how) * dy_scale + _affine(
                x[i], center, scale, shift, True)
    else:
        for i in range(start, stop):
            out[i] = _dy_of(dy[i], x[i], mc, ms, mb, how) * dy_scale + _affine(
                x[i], center, scale, shift, False)


cdef inline Py_ssize_t _coefficient_stride(Py_ssize_t n_channels) noexcept nogil:
    # Values per coefficient array: C + COEFFICIENT_WRAP, in whole cache lines.
    return (n_channels + COEFFICIENT_WRAP + 15) // 16 * 16


cdef floating* _coefficients(const floating* kind, size_t line_offset,
                             const double* center, const double* scale,
                             const double* shift, const double* dy_scale,
                             const double* invstd, Py_ssize_t n_channels, bint* folded,
                             void** block) except NULL:
    # The (center, scale, shift, dy_scale) block of _apply_rows in the data's
    # type (``kind`` only selects it; dy_scale NULL gives zeros), in memory
    # that the caller frees as ``block[0]``. Each array starts ``line_offset``
    # (mod 64) bytes into a cache line: 0 for the row loop of _apply_rows,
    # which reads every array at the same channel offsets, so no vector load
    # splits a line (measured on 32x7x7x2048 inference with x aligned: 5-10 %
    # faster than malloc's 16-byte alignment); the output's offset for
    # cnorm_affine_range, whose vectors start where the output is aligned
    # (its coefficient loads are then aligned in every row if C is a multiple
    # of 16; otherwise the channel of an aligned output vector moves from row
    # to row).
    #
    # Folded, x*scale + (shift - center*scale), when every channel's center is
    # within FOLD_SIGMAS standard deviations of 0 (|center|*invstd, invstd not
    # NULL): the rounding of the two coefficients then costs a few roundings of
    # |gamma| + |beta|, as the centered form's, and the pass reads one
    # per-channel array less (measured: 1.33 -> 1.15 of the copy's time on
    # 32x7x7x2048, whose four arrays of 8 KiB crowd the L1 cache).
    #
    # Centered otherwise (|mean| >> std): float32 rounds the center to float and
    # corrects the shift for that rounding in double, shift + (center_f -
    # center)*scale, so x - center_f is exact or nearly (x and center_f are
    # floats) and the error is relative to |y|, not to |center*scale| as the
    # folded form's would be.
    # Each of the four arrays holds C + COEFFICIENT_WRAP values, the last ones
    # repeating the first channels (for _affine_range's vectors across rows),
    # and so on up to the end of the cache line.
    cdef Py_ssize_t stride = _coefficient_stride(n_channels)
    cdef char* raw = <char*> malloc(4 * stride * sizeof(floating) + 2 * LINE_BYTES)
    cdef floating* out
    cdef Py_ssize_t c, j
    cdef floating rounded
    if raw == NULL:
        raise MemoryError("cnorm: cannot allocate batch-norm coefficients")
    block[0] = raw
    out = <floating*> (raw + (LINE_BYTES - <size_t> raw % LINE_BYTES)
                       + line_offset % LINE_BYTES // sizeof(floating) * sizeof(floating))
    folded[0] = invstd != NULL
    if invstd != NULL:
        for c in range(n_channels):
            # NaN fails the test; an infinite scale would fold into inf - inf.
            if not (fabs(center[c]) * fabs(invstd[c]) <= FOLD_SIGMAS
                    and isfinite(center[c] * scale[c])):
                folded[0] = False
                break
    for c in range(n_channels):
        out[stride + c] = <floating>scale[c]
        out[3 * stride + c] = 0 if dy_scale == NULL else <floating>dy_scale[c]
        if folded[0]:
            out[c] = 0
            out[2 * stride + c] = <floating>(shift[c] - center[c] * scale[c])
            continue
        rounded = <floating>center[c]
        out[c] = rounded
        if floating is float and rounded != center[c]:  # (not 0 * inf where it is exact)
            out[2 * stride + c] = <floating>(shift[c] + (rounded - center[c]) * scale[c])
        else:
            out[2 * stride + c] = <floating>shift[c]
    for j in range(4):
        for c in range(n_channels, stride):
            out[j * stride + c] = out[j * stride + c % n_channels]
    return out


def affine(const floating[:, ::1] x, floating[:, ::1] y, const double[::1] center,
           const double[::1] scale, const double[::1] shift, bint reverse,
           int n_threads):
    """y = (x - center)*scale + shift per channel, over rows of (M, C) arrays.

    ``reverse`` walks the chunks last to first: right after a pass that read x
    first to last, the chunks read last are then still in cache; such a pass
    also streams its float32 output from a smaller size (see _streams).
    float64 data: in double. float32 data: in float, with the coefficients of
    _coefficients. The caller has validated everything: y of x's shape
    (y may be x), the per-channel arrays of length C, n_threads >= 1.
    """
    if DEBUG_CHECKS:
        if y.shape[0] != x.shape[0] or y.shape[1] != x.shape[1]:
            raise ValueError("cnorm kernel: x and y differ in shape")
        if x.shape[1] and not (center.shape[0] == scale.shape[0] == shift.shape[0]
                               == x.shape[1]):
            raise ValueError("cnorm kernel: coefficients not of length C")
        check_sizes(x.shape[1], -1, -1, n_threads)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    cdef Grid g = _grid(CN_FLOAT64 if floating is double else CN_FLOAT32, x.shape[0],
                        x.shape[1], 1)
    _apply(<const floating*> NULL, &x[0, 0], &y[0, 0], &center[0], &scale[0], &shift[0],
           NULL, NULL, &g, reverse, n_threads)


def normalize(x, y, mean, var, gamma, beta, double eps, invstd, bint reverse,
              int n_threads, int storage, Py_ssize_t outer, Py_ssize_t n_channels,
              Py_ssize_t inner, residual=None, bint relu=False):
    """y = (x - mean)*gamma*invstd + beta with invstd = 1/sqrt(var + eps), per channel.

    Batch-norm inference (running statistics) and training's second pass
    (batch statistics, ``reverse`` True: chunks last to first, right after
    batch_stats read them; see affine). x and y: C-contiguous tensors of one
    shape and storage type (``storage``, cnorm/_storage.h; bfloat16 as uint16),
    seen as (outer, n_channels, inner) (y may be x); mean, var, gamma, beta:
    float64 of shape (C,), gamma None meaning 1 and beta None 0; invstd: None
    or a writable float64 array of shape (C,) that receives 1/sqrt(var + eps).
    The fused epilogue: ``residual`` (None, or a tensor like x, not
    overlapping y) is added to the normalized value, and ``relu`` clips the
    sum at 0, in the same pass: y = act(bn(x) + residual). The coefficients
    are computed here in double. The caller has validated everything, var >= 0
    and eps > 0 included.
    """
    cdef Buffers b = Buffers()
    cdef const void* xp = b.get(x, False)
    cdef void* yp = b.get(y, True)
    cdef const void* residual_p = b.get(residual, False)
    cdef const double* mean_p = <const double*> b.get(mean, False)
    cdef const double* var_p = <const double*> b.get(var, False)
    cdef const double* gamma_p = <const double*> b.get(gamma, False)
    cdef const double* beta_p = <const double*> b.get(beta, False)
    cdef double* invstd_p = <double*> b.get(invstd, True)
    if DEBUG_CHECKS:
        b.check(2 + (residual is not None), storage, outer, n_channels, inner, -1, -1,
                n_threads)
    cdef Grid g = _grid(storage, outer, n_channels, inner)
    _normalize_view(xp, yp, mean_p, var_p, gamma_p, beta_p, eps, invstd_p, reverse, &g,
                    n_threads, residual_p, relu)


cdef int _normalize_plain(const void* xp, void* yp, const double* mean_p,
                          const double* var_p, const double* gamma_p, const double* beta_p,
                          double eps, int n_threads, int storage, Py_ssize_t outer,
                          Py_ssize_t n_channels, Py_ssize_t inner, bint relu) except -1:
    # Inference on validated data (`normalize` without invstd, reverse or a
    # residual), for the layers' fast paths (cnorm._layers), which call it
    # through the NORMALIZE_PLAIN capsule: no Python call, no buffer requests.
    cdef Grid g = _grid(storage, outer, n_channels, inner)
    return _normalize_view(xp, yp, mean_p, var_p, gamma_p, beta_p, eps, NULL, False, &g,
                           n_threads, NULL, relu)


# The address of _normalize_plain, for cnorm._layers (the name is its type).
cdef normalize_plain_t _normalize_plain_p = _normalize_plain
NORMALIZE_PLAIN = PyCapsule_New(<void*> _normalize_plain_p, NORMALIZE_PLAIN_NAME, NULL)


cdef int _normalize_view(const void* xp, void* yp, const double* mean_p, const double* var_p,
                         const double* gamma_p, const double* beta_p, double eps,
                         double* invstd_p, bint reverse, const Grid* g, int n_threads,
                         const void* residual_p, bint relu) except -1:
    # `normalize` on its arrays' data (also the plain calls' fast path, infer_plain).
    if g.outer * g.channels * g.inner == 0:
        return 0
    if g.storage == CN_FLOAT64:
        _normalize(<const double*> xp, <double*> yp, mean_p, var_p, gamma_p, beta_p, eps,
                   invstd_p, reverse, g, n_threads, <const double*> residual_p, relu)
    else:
        _normalize(<const float*> xp, <float*> yp, mean_p, var_p, gamma_p, beta_p, eps,
                   invstd_p, reverse, g, n_threads, <const float*> residual_p, relu)
    return 0


cdef void _normalize(const floating* x, floating* y, const double* mean, const double* var,
                     const double* gamma, const double* beta, double eps, double* invstd,
                     bint reverse, const Grid* g, int n_threads, const floating* residual,
                     bint relu) except *:
    cdef Py_ssize_t c, n_channels = g.channels
    cdef double inverse
    cdef double* coefficients = <double*> malloc(3 * n_channels * sizeof(double))
    if coefficients == NULL:
        raise MemoryError("cnorm: cannot allocate batch-norm coefficients")
    cdef double* scale = coefficients
    cdef double* shift = coefficients + n_channels
    cdef double* inverse_std = coefficients + 2 * n_channels
    try:
        for c in range(n_channels):
            inverse = 1.0 / sqrt(var[c] + eps)
            inverse_std[c] = inverse
            if invstd != NULL:
                invstd[c] = inverse
            scale[c] = inverse if gamma == NULL else gamma[c] * inverse
            shift[c] = 0.0 if beta == NULL else beta[c]
        _apply(<const floating*> NULL, x, y, mean, scale, shift, NULL, inverse_std, g,
               reverse, n_threads, residual, relu)
    finally:
        free(coefficients)


cdef void _apply_tiles(const floating* dy, const floating* x, floating* out,
                       const floating* coefficients, bint folded, bint stream,
                       bint by_range, const Grid* g, Py_ssize_t first, Py_ssize_t stop,
                       bint reverse, float* scratch, const floating* residual,
                       bint relu, const floating* mask, bint mask_folded,
                       Py_ssize_t c_first, Py_ssize_t c_stop, form* how) noexcept nogil:
    # The elementwise pass over channels [c_first, c_stop) (all but for
    # planes: see _apply) of tiles [first, stop), last to first if
    # ``reverse``: rows (inner == 1) by _apply_rows, or by _affine_range if
    # ``by_range`` (float32 only); planes (inner > 1) by _apply_planes.
    # Half-precision data (``scratch`` not NULL; the pointers then hold that
    # type, and floating is float) is loaded tile by tile into the scratch,
    # computed there in place and stored back, rounded once. A thread that
    # streamed fences its stores before the region ends.
    # ``how``, the form of the pass (see `form`): every kernel masks dy as it
    # reads it (the backward of the fused ReLU; ``mask`` the forward's
    # coefficients, folded or not: see _relu_gradient) and finishes each
    # output with the epilogue (``residual``, of x's storage and offsets, and
    # ``relu``; see _finish) before it stores it, in its registers: the
    # Cython loops through _finish, the range kernel through its vector copy
    # (measured at 2 threads, NHWC 32x56x56x64 inference with ReLU 1.32x the
    # plain pass when the streamed rows went through a scratch piece, a second
    # loop and a copying streamed store).
    cdef Py_ssize_t i, t, offset, stride = _coefficient_stride(g.channels)
    cdef Tile tile
    cdef const floating* dy_t
    cdef const floating* x_t
    cdef const floating* residual_t = NULL
    cdef floating* out_t
    cdef Py_ssize_t channel_stride, outer_stride
    for i in range(stop - first):
        t = stop - 1 - i if reverse else first + i
        tile = _tile(g, t)
        if floating is float:
            if scratch != NULL and cn_is_half(g.storage):
                _apply_half_tile(dy, x, out, coefficients, folded, g, &tile, scratch,
                                 scratch + _scratch_stride(g), residual, relu, mask,
                                 mask_folded, c_first, c_stop, how)
                continue
        if True:
            offset = _tile_offset(g, &tile)
            x_t = x + offset
            out_t = out + offset
            dy_t = NULL
            if dy != NULL:
                dy_t = dy + offset
            if residual != NULL:
                residual_t = residual + offset
            channel_stride = g.inner
        outer_stride = g.channels * channel_stride
        if g.inner == 1 and by_range:  # (float32 only)
            if floating is float:
                # The epilogue in the range kernel's registers (see cnorm_affine_range).
                _affine_range(dy_t, x_t, out_t, coefficients, coefficients + stride,
                              coefficients + 2 * stride, coefficients + 3 * stride,
                              folded, stream, 0, tile.n_outer * g.channels, g.channels,
                              residual_t if residual != NULL else NULL, relu,
                              mask, stride, mask_folded)
        elif g.inner == 1:
            _apply_rows(dy_t, x_t, out_t, coefficients, folded, 0, tile.n_outer, g.channels,
                        mask, residual_t, how)
        else:
            _apply_planes(dy_t, x_t, out_t, coefficients, folded, stream, tile.n_outer,
                          g.channels, tile.n_inner, channel_stride, outer_stride, residual_t,
                          c_first, c_stop, mask, how)
    if stream:
        _stream_fence()


cdef inline void _apply_tiles_of(const floating* dy, const floating* x, floating* out,
                                 const floating* coefficients, bint folded, bint stream,
                                 bint by_range, const Grid* g, Py_ssize_t first,
                                 Py_ssize_t stop, bint reverse, float* scratch,
                                 const floating* residual, bint relu, const floating* mask,
                                 bint mask_folded, Py_ssize_t c_first,
                                 Py_ssize_t c_stop) noexcept nogil:
    # _apply_tiles of the form that ``mask``, ``residual`` and ``relu`` ask for.
    if mask != NULL and mask_folded:
        _apply_tiles(dy, x, out, coefficients, folded, stream, by_range, g, first, stop,
                     reverse, scratch, residual, relu, mask, mask_folded, c_first, c_stop,
                     <_MaskedFolded*> NULL)
    elif mask != NULL:
        _apply_tiles(dy, x, out, coefficients, folded, stream, by_range, g, first, stop,
                     reverse, scratch, residual, relu, mask, mask_folded, c_first, c_stop,
                     <_Masked*> NULL)
    elif residual != NULL and relu:
        _apply_tiles(dy, x, out, coefficients, folded, stream, by_range, g, first, stop,
                     reverse, scratch, residual, relu, mask, mask_folded, c_first, c_stop,
                     <_ResidualRelu*> NULL)
    elif residual != NULL:
        _apply_tiles(dy, x, out, coefficients, folded, stream, by_range, g, first, stop,
                     reverse, scratch, residual, relu, mask, mask_folded, c_first, c_stop,
                     <_Residual*> NULL)
    elif relu:
        _apply_tiles(dy, x, out, coefficients, folded, stream, by_range, g, first, stop,
                     reverse, scratch, residual, relu, mask, mask_folded, c_first, c_stop,
                     <_Relu*> NULL)
    else:
        _apply_tiles(dy, x, out, coefficients, folded, stream, by_range, g, first, stop,
                     reverse, scratch, residual, relu, mask, mask_folded, c_first, c_stop,
                     <_Plain*> NULL)


cdef void _apply_half_tile(const void* dy, const void* x, void* out,
                           const float* coefficients, bint folded, const Grid* g,
                           const Tile* tile, float* x_s, float* dy_s, const void* residual,
                           bint relu, const float* mask, bint mask_folded, Py_ssize_t c_first,
                           Py_ssize_t c_stop, form* how) noexcept nogil:
    # The elementwise pass over one tile of half-precision data, a piece of at
    # most HALF_PIECE values (or one row) at a time: loaded into the float
    # scratch, computed there in place by the float kernels, stored back
    # rounded once; the pieces stay in L1. Every value is computed as in a
    # float32 tensor holding the same values. dy is read and the outputs
    # finished as ``how`` asks (see _apply_tiles), the residual loaded into
    # the scratch after dy's (or in dy's place: the forward has no dy).
    cdef float* r_s = NULL
    cdef float mc = 0, ms = 0, mb = 0
    if residual != NULL:
        r_s = dy_s if dy == NULL else dy_s + _scratch_stride(g)
    cdef const char* rb = <const char*> residual
    cdef size_t item = cn_item_size(g.storage)
    cdef Py_ssize_t n_channels = g.channels, stride = _coefficient_stride(n_channels)
    cdef Py_ssize_t rows = max(1, HALF_PIECE // n_channels)
    cdef Py_ssize_t r, n, o, c, i, offset
    cdef const char* xb = <const char*> x
    cdef const char* dyb = <const char*> dy
    cdef char* outb = <char*> out
    if g.inner == 1:
        r = tile.outer_start
        while r < tile.outer_start + tile.n_outer:
            n = min(rows, tile.outer_start + tile.n_outer - r) * n_channels
            offset = r * n_channels
            cn_load_run(g.storage, xb + offset * item, x_s, n)
            if dy != NULL:
                cn_load_run(g.storage, dyb + offset * item, dy_s, n)
            if r_s != NULL:
                cn_load_run(g.storage, rb + offset * item, r_s, n)
            # Narrow rows take the range kernel, as float32 rows (see _apply);
            # wide rows keep the row loop (the range kernel was 1.16-1.18x its
            # time on float16 32x28x28x512 and 32x7x7x2048 inference, 2 threads).
            if RANGE_KERNEL and n_channels <= RANGE_MAX_CHANNELS:
                _affine_range(NULL if dy == NULL else dy_s, x_s, x_s, coefficients,
                              coefficients + stride, coefficients + 2 * stride,
                              coefficients + 3 * stride, folded, False, 0, n, n_channels,
                              r_s, relu, mask, stride,
                              mask_folded)
            else:
                _apply_rows(NULL if dy == NULL else dy_s, x_s, x_s, coefficients, folded, 0,
                            n // n_channels, n_channels, mask, r_s, how)
            cn_store_run(g.storage, x_s, outb + offset * item, n)
            r += rows
        return
    for o in range(tile.outer_start, tile.outer_start + tile.n_outer):
        for c in range(c_first, c_stop):
            i = tile.inner_start
            while i < tile.inner_start + tile.n_inner:
                n = min(<Py_ssize_t>HALF_PIECE, tile.inner_start + tile.n_inner - i)
                offset = (o * n_channels + c) * g.inner + i
                cn_load_run(g.storage, xb + offset * item, x_s, n)
                if dy != NULL:
                    cn_load_run(g.storage, dyb + offset * item, dy_s, n)
                if r_s != NULL:
                    cn_load_run(g.storage, rb + offset * item, r_s, n)
                _mask_of(mask, stride, c, &mc, &ms, &mb, how)
                _affine_run(NULL if dy == NULL else dy_s, x_s, x_s, coefficients[c],
                            coefficients[stride + c], coefficients[2 * stride + c],
                            coefficients[3 * stride + c], folded, 0, n, mc, ms, mb, r_s, how)
                cn_store_run(g.storage, x_s, outb + offset * item, n)
                i += HALF_PIECE


cdef void _apply(const floating* dy, const floating* x, floating* out, const double* center,
                 const double* scale, const double* shift, const double* dy_scale,
                 const double* invstd, const Grid* g, bint reverse, int n_threads,
                 const floating* residual=NULL, bint relu=False,
                 const floating* mask=NULL, bint mask_folded=False) except *:
    # out = (x - center)*scale + shift [+ dy*dy_scale if dy is not NULL] per
    # channel: the body of affine, normalize and backward. ``invstd`` (1/std of
    # x per channel, or NULL) decides the folded form (see _coefficients).
    # ``reverse`` walks each thread's tiles last to first (see affine): a
    # second pass, which re-reads its inputs (see _streams). float32 rows
    # (inner == 1) in passes that stream, and rows of at most
    # RANGE_MAX_CHANNELS channels, take cnorm_affine_range where the build
    # has it. Measured at 2 threads against the Cython row loop (builds
    # alternated call by call, four runs): inference 16x112x112x16 24-50 %
    # faster, 32x56x56x32 6-25 %, training of both 3-14 %; 32x56x56x64
    # equal; 32x7x7x2048 0-5 % slower (so wider rows keep the row loop).
    # ``residual`` (x's storage and layout, or NULL) and ``relu``: the fused
    # epilogue of the forward, act(out + residual) (see _finish; dy NULL).
    cdef Py_ssize_t n_channels = g.channels, n_rows = g.outer * g.inner
    cdef Py_ssize_t tiles = g.tiles
    cdef Py_ssize_t thread
    cdef bint folded
    cdef bint native_rows = g.inner == 1 and not cn_is_half(g.storage)
    cdef bint stream = (not cn_is_half(g.storage) and _streams(
        (2 if dy == NULL else 3) + (residual != NULL), n_rows, n_channels, sizeof(floating),
        reverse) and cn_pages_resident(out, n_rows * n_channels * sizeof(floating)))
    cdef void* block = NULL
    cdef bint by_range = (floating is float and RANGE_KERNEL and native_rows
                          and (stream or n_channels <= RANGE_MAX_CHANNELS))
    cdef floating* coefficients = _coefficients(x, <size_t> out if by_range else 0, center,
                                                scale, shift, dy_scale, invstd, n_channels,
                                                &folded, &block)
    cdef float* scratch = NULL
    # Scratch tiles per thread: x and dy for half data, and the residual.
    cdef Py_ssize_t tensors = (1 if dy == NULL else 2) + (residual != NULL)
    # Planes in fewer tiles than threads (a batch of one, NCHW), or cut into
    # segments (large planes of few images) in a first pass: each thread takes
    # a share of the channels of every tile instead, which for one image is
    # one contiguous share of the tensor, as torch's batch norm splits it (the
    # convolution before has likely left it in that core's cache). Elementwise,
    # so the same bits; the threads meet in one cache line a plane set, not
    # one a plane. Not in a second pass (``reverse``: it re-reads the tiles
    # the first pass left in each core's cache).
    cdef bint by_channels = (g.inner > 1
                             and (tiles < n_threads or g.segments > 1 and not reverse)
                             and n_rows * n_channels >= SERIAL_ELEMENTS)
    n_threads = (<int> min(<Py_ssize_t> n_threads, n_channels) if by_channels
                 else _threads_for(n_rows, n_channels, tiles, n_threads))
    try:
        scratch = _half_scratch(g, n_threads, tensors)
        if n_threads == 1:
            with nogil:
                _apply_tiles_of(dy, x, out, coefficients, folded, stream, by_range, g, 0,
                                tiles, reverse, scratch, residual, relu, mask, mask_folded,
                                0, n_channels)
        else:
            for thread in prange(n_threads, nogil=True, schedule="static",
                                 num_threads=n_threads):
                _apply_tiles_of(dy, x, out, coefficients, folded, stream, by_range, g,
                                0 if by_channels else _first_chunk(tiles, n_threads, thread),
                                tiles if by_channels
                                else _first_chunk(tiles, n_threads, thread + 1), reverse,
                                NULL if scratch == NULL
                                else scratch + thread * tensors * _scratch_stride(g),
                                residual, relu, mask, mask_folded,
                                _first_chunk(n_channels, n_threads, thread) if by_channels
                                else 0,
                                _first_chunk(n_channels, n_threads, thread + 1)
                                if by_channels else n_channels)
    finally:
        free(block)
        free(scratch)


# ---------------------------------------------------------------------------
# Reductions: per-chunk partials, merged in chunk order

cdef void _chunk_stats(const floating* x, Py_ssize_t n_rows, Py_ssize_t n_channels,
                       int order, double* mean, double* m2) noexcept nogil:
    # Mean and M2 = sum((x - mean)**2) of one chunk in one pass, by shifted
    # sums: with the chunk's first row as per-channel shift s, S1 = sum(x - s)
    # and S2 = sum((x - s)**2) in double, then mean = s + S1/n and
    # M2 = S2 - S1**2/n. As s is a value of the channel, x - s is of the order
    # of the spread, not of the mean, so nothing cancels when |mean| >> std
    # (and for float32 data x - s is exact in double). Rows are taken
    # REDUCE_ROWS at a time (4, or 8 with AVX-512's 32 vector registers), the
    # accumulator row loaded and stored once per block; or, ``order``
    # BY_GROUPS, by cnorm_group_stats (same sums, each channel's rows in order).
    cdef Py_ssize_t r, c, n = n_channels
    cdef Py_ssize_t blocked = n_rows - n_rows % REDUCE_ROWS
    cdef const floating* x_row
    cdef double s, d0, d1, d2, d3, total, squares
    cdef Py_ssize_t block_bytes = REDUCE_ROWS * n_channels * sizeof(floating)
    cdef bint prefetch = block_bytes <= PREFETCH_MAX_BLOCK * REDUCE_ROWS // 4
    if floating is float:
        if order == BY_GROUPS:
            _group_stats(x, n_rows, n_channels, mean, m2)
            _finish_stats(x, n_rows, n_channels, mean, m2)
            return
    for c in range(n_channels):
        mean[c] = 0.0
        m2[c] = 0.0
    for r in range(blocked // REDUCE_ROWS):
        x_row = x + r * REDUCE_ROWS * n_channels
        if prefetch:
            _prefetch_block(x_row, block_bytes)
        for c in range(n_channels):
            s = x[c]
            d0 = x_row[c] - s
            d1 = x_row[n + c] - s
            d2 = x_row[2 * n + c] - s
            d3 = x_row[3 * n + c] - s
            total = (d0 + d1) + (d2 + d3)
            squares = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            if REDUCE_ROWS == 8:  # a compile-time constant: one branch is compiled
                d0 = x_row[4 * n + c] - s
                d1 = x_row[5 * n + c] - s
                d2 = x_row[6 * n + c] - s
                d3 = x_row[7 * n + c] - s
                total = total + ((d0 + d1) + (d2 + d3))
                squares = squares + ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3))
            mean[c] += total
            m2[c] += squares
    for r in range(blocked, n_rows):
        x_row = x + r * n_channels
        for c in range(n_channels):
            d0 = x_row[c] - <double>x[c]
            mean[c] += d0
            m2[c] += d0 * d0
    _finish_stats(x, n_rows, n_channels, mean, m2)


cdef inline void _shifted_moments(double shift, double total, double squares, double count,
                                  double* mean, double* m2) noexcept nogil:
    # Mean and M2 of ``count`` values from their shifted sums S1 = ``total``
    # and S2 = ``squares`` (deviations from ``shift``, a value of the
    # channel): mean = shift + S1/n, M2 = S2 - S1*(S1/n). A rounding below 0
    # is clipped; a NaN (non-finite data: S1 is then inf or NaN, and inf - inf
    # NaN) is kept, so non-finite data give non-finite statistics (max(0.0,
    # NaN) was 0: invstd 1/sqrt(eps) and a finite running variance). S1*(S1/n)
    # <= S2, so it overflows only when S2 does: finite data whose M2 is past
    # the double range give M2 = inf (invstd 0), as the reference does, not
    # inf - inf = NaN (S1**2 overflowed first), nor a huge S1**2 clipped to 0.
    cdef double moment = squares - total * (total / count)
    if squares == INFINITY and isfinite(total):
        # S2 itself overflowed (finite data, deviations past 1e154): M2 is
        # past the double range too, not inf - inf (found on the baseline
        # build, whose shift was the 1e200 of the channel).
        moment = INFINITY
    m2[0] = 0.0 if moment < 0.0 else moment
    mean[0] = shift + total / count


cdef inline void _finish_stats(const floating* x, Py_ssize_t n_rows, Py_ssize_t n_channels,
                               double* mean, double* m2) noexcept nogil:
    # From the shifted sums S1 (in mean) and S2 (in m2), shift the chunk's
    # first row.
    cdef Py_ssize_t c
    for c in range(n_channels):
        _shifted_moments(x[c], mean[c], m2[c], <double>n_rows, &mean[c], &m2[c])


cdef void _plane_stats(const floating* x, Py_ssize_t n_outer, Py_ssize_t n_channels,
                       Py_ssize_t n_inner, Py_ssize_t channel_stride, Py_ssize_t outer_stride,
                       double* mean, double* m2) noexcept nogil:
    # Mean and M2 of each channel over a tile of planes (inner > 1) by shifted
    # sums, as _chunk_stats: shift the channel's first value in the tile
    # (cn_plane_stats_*: 16 lanes of double sums, added in a fixed order).
    cdef Py_ssize_t c
    cdef double s, total, squares
    for c in range(n_channels):
        s = x[c * channel_stride]
        if floating is float:
            _plane_stats_f32(x + c * channel_stride, n_outer, n_inner, outer_stride, s,
                             &total, &squares)
        else:
            _plane_stats_f64(x + c * channel_stride, n_outer, n_inner, outer_stride, s,
                             &total, &squares)
        _shifted_moments(s, total, squares, <double>(n_outer * n_inner), &mean[c], &m2[c])


cdef void _plane_sums(const floating* dy, const floating* x, const double* center,
                      Py_ssize_t n_outer, Py_ssize_t n_channels, Py_ssize_t n_inner,
                      Py_ssize_t channel_stride, Py_ssize_t outer_stride, double* sum_dy,
                      double* sum_dy_centered, const floating* mask,
                      form* how) noexcept nogil:
    # sum(dy) and sum(dy*(x - center)) of each channel over a tile of planes
    # (cn_plane_sums_*, lanes as _plane_stats; cn_plane_sums_masked_* read dy
    # as _dy_of, ``mask`` the forward's coefficients).
    cdef Py_ssize_t c, offset, stride = _coefficient_stride(n_channels)
    for c in range(n_channels):
        offset = c * channel_stride
        if form is _Masked or form is _MaskedFolded:
            if floating is float:
                _plane_sums_masked_f32(dy + offset, x + offset, n_outer, n_inner,
                                       outer_stride, center[c], &sum_dy[c],
                                       &sum_dy_centered[c], mask[c], mask[stride + c],
                                       mask[2 * stride + c])
            else:
                _plane_sums_masked_f64(dy + offset, x + offset, n_outer, n_inner,
                                       outer_stride, center[c], &sum_dy[c],
                                       &sum_dy_centered[c], mask[c], mask[stride + c],
                                       mask[2 * stride + c])
        elif floating is float:
            _plane_sums_f32(dy + offset, x + offset, n_outer, n_inner, outer_stride,
                            center[c], &sum_dy[c], &sum_dy_centered[c], 0, 0, 0)
        else:
            _plane_sums_f64(dy + offset, x + offset, n_outer, n_inner, outer_stride,
                            center[c], &sum_dy[c], &sum_dy_centered[c], 0, 0, 0)


cdef void _merge_stats(const double* chunk_mean, const double* chunk_m2, const Grid* g,
                       Py_ssize_t c_start, Py_ssize_t c_stop, double* mean,
                       double* var) noexcept nogil:
    # Chan's merge of channels [c_start, c_stop) in tile order; var = M2 / m.
    cdef Py_ssize_t k, c, n_channels = g.channels
    cdef double count = _tile_count(g, 0), count_b, total, weight, cross, d
    for c in range(c_start, c_stop):
        mean[c] = chunk_mean[c]
        var[c] = chunk_m2[c]
    for k in range(1, g.tiles):
        count_b = _tile_count(g, k)
        total = count + count_b
        weight = count_b / total
        cross = count * count_b / total
        for c in range(c_start, c_stop):
            d = chunk_mean[k * n_channels + c] - mean[c]
            mean[c] += d * weight
            var[c] += chunk_m2[k * n_channels + c] + d * d * cross
        count = total
    for c in range(c_start, c_stop):
        var[c] = var[c] / (g.outer * g.inner)


def batch_stats(x, mean, var, int n_threads, int storage, Py_ssize_t outer,
                Py_ssize_t n_channels, Py_ssize_t inner):
    """Per-channel mean and biased variance of x, into mean and var.

    x: a C-contiguous tensor of storage type ``storage`` seen as (outer,
    n_channels, inner); mean and var: writable float64 arrays of shape (C,).
    Bit-identical for every n_threads. The caller has validated everything:
    x not empty, n_threads >= 1.

    Returns whether x is not float64 and a mean or variance is finite,
    nonzero and outside float32's normal range: then the normalizing pass
    must run in float64 (cnorm.batchnorm._widen), which this saves the
    caller a scan of its own to find out.
    """
    cdef Buffers b = Buffers()
    cdef const void* xp = b.get(x, False)
    cdef double* mean_p = <double*> b.get(mean, True)
    cdef double* var_p = <double*> b.get(var, True)
    if DEBUG_CHECKS:
        b.check(1, storage, outer, n_channels, inner, -1, -1, n_threads)
    cdef Grid g = _grid(storage, outer, n_channels, inner)
    return _stats_view(xp, mean_p, var_p, &g, n_threads)


cdef bint _stats_view(const void* xp, double* mean_p, double* var_p, const Grid* g,
                      int n_threads) except -1:
    # `batch_stats` on its arrays' data (also train_plain's).
    cdef Py_ssize_t c, n_channels = g.channels
    cdef double magnitude
    if g.outer * n_channels * g.inner == 0:
        return False
    if g.storage == CN_FLOAT64:
        _reduce(<const double*> NULL, <const double*> xp, NULL, mean_p, var_p, g, n_threads)
        return False
    _reduce(<const float*> NULL, <const float*> xp, NULL, mean_p, var_p, g, n_threads)
    for c in range(2 * n_channels):
        magnitude = fabs(mean_p[c] if c < n_channels else var_p[c - n_channels])
        if magnitude != 0 and (magnitude < FLT_MIN or FLT_MAX < magnitude < INFINITY):
            return True
    return False


cdef void _chunk_sums(const floating* dy, const floating* x, const double* center,
                      Py_ssize_t n_rows, Py_ssize_t n_channels, int order,
                      double* sum_dy, double* sum_dy_centered, const floating* mask,
                      form* how) noexcept nogil:
    # sum(dy) and sum(dy*(x - center)) over the rows of one chunk, REDUCE_ROWS
    # rows at a time as in _chunk_stats, one at a time (BY_ROWS) or by channel
    # groups (BY_GROUPS; see _reduction_order); dy read as ``how`` (_dy_of,
    # ``mask`` the forward's coefficients).
    cdef Py_ssize_t r, c, o, n = n_channels
    cdef Py_ssize_t blocked = 0 if order == BY_ROWS else n_rows - n_rows % REDUCE_ROWS
    cdef double g0, g1, g2, g3, m, total, products
    cdef Py_ssize_t block_bytes = REDUCE_ROWS * n_channels * sizeof(floating)
    cdef bint prefetch = block_bytes <= PREFETCH_MAX_BLOCK * REDUCE_ROWS // 4
    cdef Py_ssize_t stride = _coefficient_stride(n_channels)
    cdef floating mc = 0, ms = 0, mb = 0
    if floating is float:
        if order == BY_GROUPS:
            _group_sums(dy, x, center, n_rows, n_channels, sum_dy, sum_dy_centered,
                        mask, stride)
            return
    for c in range(n_channels):
        sum_dy[c] = 0.0
        sum_dy_centered[c] = 0.0
    for r in range(blocked // REDUCE_ROWS):
        o = r * REDUCE_ROWS * n_channels
        if prefetch:
            _prefetch_block(dy + o, block_bytes)
            _prefetch_block(x + o, block_bytes)
        for c in range(n_channels):
            m = center[c]
            _mask_of(mask, stride, c, &mc, &ms, &mb, how)
            g0 = _dy_of(dy[o + c], x[o + c], mc, ms, mb, how)
            g1 = _dy_of(dy[o + n + c], x[o + n + c], mc, ms, mb, how)
            g2 = _dy_of(dy[o + 2 * n + c], x[o + 2 * n + c], mc, ms, mb, how)
            g3 = _dy_of(dy[o + 3 * n + c], x[o + 3 * n + c], mc, ms, mb, how)
            total = (g0 + g1) + (g2 + g3)
            products = ((g0 * (x[o + c] - m) + g1 * (x[o + n + c] - m))
                        + (g2 * (x[o + 2 * n + c] - m) + g3 * (x[o + 3 * n + c] - m)))
            if REDUCE_ROWS == 8:  # a compile-time constant: one branch is compiled
                g0 = _dy_of(dy[o + 4 * n + c], x[o + 4 * n + c], mc, ms, mb, how)
                g1 = _dy_of(dy[o + 5 * n + c], x[o + 5 * n + c], mc, ms, mb, how)
                g2 = _dy_of(dy[o + 6 * n + c], x[o + 6 * n + c], mc, ms, mb, how)
                g3 = _dy_of(dy[o + 7 * n + c], x[o + 7 * n + c], mc, ms, mb, how)
                total = total + ((g0 + g1) + (g2 + g3))
                products = products + (
                    (g0 * (x[o + 4 * n + c] - m) + g1 * (x[o + 5 * n + c] - m))
                    + (g2 * (x[o + 6 * n + c] - m) + g3 * (x[o + 7 * n + c] - m)))
            sum_dy[c] += total
            sum_dy_centered[c] += products
    for r in range(blocked, n_rows):
        o = r * n_channels
        for c in range(n_channels):
            _mask_of(mask, stride, c, &mc, &ms, &mb, how)
            g0 = _dy_of(dy[o + c], x[o + c], mc, ms, mb, how)
            sum_dy[c] += g0
            sum_dy_centered[c] += g0 * (x[o + c] - center[c])


cdef inline bint _sums_by_rows(Py_ssize_t n_rows, Py_ssize_t n_channels,
                              Py_ssize_t item_size) noexcept nogil:
    # The backward's float32 sums take one row at a time when dy and x come
    # from memory (the backward's three tensors exceed STREAM_WORKING_SET) and
    # the rows are of middle width: two input streams instead of 2*REDUCE_ROWS
    # interleaved ones. Measured here at 2 threads (sums then dx, paired with
    # the 8-row blocks): C = 256, 384, 512 13-24 % faster; C = 128 and 64 (where
    # the blocks prefetch in software) 0-5 % and 10 % slower, C = 1024 7 %
    # slower; cache-resident tensors (compute-bound) 3-35 % slower. float64
    # data keep the blocks (not measured).
    return (item_size == 4
            and SUM_ROWS_MIN_CHANNELS <= n_channels <= SUM_ROWS_MAX_CHANNELS
            and _beyond_cache(3, n_rows, n_channels, item_size, False))


cdef int _reduction_order(bint stats, Py_ssize_t n_rows, Py_ssize_t n_channels,
                          Py_ssize_t item_size) noexcept nogil:
    # How each chunk of a reduction is walked: BY_ROWS for the backward's sums
    # of _sums_by_rows; BY_GROUPS for float32 in AVX2 and AVX-512 builds
    # (cnorm_group_stats, cnorm_group_sums) when C is a multiple of the vector
    # width (8 channels, or 4 in AVX2 builds) and either one group holds every
    # channel (C <= 64, or 16: one sequential sweep) or, in AVX-512 builds
    # (GROUP_SWEEPS), the chunk's rows of the tensors read (x, or dy and x) fit
    # in GROUP_CHUNK_BYTES and the tensors in the cache (from memory, the
    # sweeps were slower: statistics of 32x28x28x512 1.16x the time; and the
    # backward of 32x7x7x2048, 784 KiB chunks of dy and x, 1.25x, or 1.43x
    # with the chunks swept 16 rows at a time to stay in L2, where the rows'
    # 8 KiB stride puts every row's group in the same L1 sets); BY_BLOCKS
    # otherwise.
    cdef Py_ssize_t tensors = 1 if stats else 2
    if not stats and _sums_by_rows(n_rows, n_channels, item_size):
        return BY_ROWS
    if not (GROUP_KERNELS and item_size == 4 and n_channels % GROUP_VECTOR == 0):
        return BY_BLOCKS
    if n_channels <= GROUP_VECTOR * GROUP_VECTORS:
        return BY_GROUPS
    if (GROUP_SWEEPS and tensors * _rows_per_chunk(n_rows, n_channels) * n_channels * item_size
            <= _group_chunk_bytes
            and not _beyond_cache(tensors, n_rows, n_channels, item_size, False)):
        return BY_GROUPS
    return BY_BLOCKS


def reduction_order(bint stats, Py_ssize_t n_rows, Py_ssize_t n_channels,
                    Py_ssize_t item_size):
    """How each chunk of such a tensor is reduced: "blocks", "rows" or "groups".

    ``stats``: the statistics of batch_stats; otherwise the backward's sums.
    """
    return ("blocks", "rows", "groups")[_reduction_order(stats, n_rows, n_channels,
                                                         item_size)]


cdef void _merge_sums(const double* chunk_a, const double* chunk_b, const Grid* g,
                      Py_ssize_t c_start, Py_ssize_t c_stop, double* total_a,
                      double* total_b) noexcept nogil:
    cdef Py_ssize_t k, c, n_channels = g.channels
    for c in range(c_start, c_stop):
        total_a[c] = chunk_a[c]
        total_b[c] = chunk_b[c]
    for k in range(1, g.tiles):
        for c in range(c_start, c_stop):
            total_a[c] += chunk_a[k * n_channels + c]
            total_b[c] += chunk_b[k * n_channels + c]


cdef inline void _tile_partials(const floating* dy, const floating* x, const double* center,
                                const Grid* g, Py_ssize_t t, int order, double* partial_a,
                                double* partial_b, float* scratch, const floating* mask,
                                form* how) noexcept nogil:
    # Row ``t`` of the partials: mean and M2 of the tile's x (dy NULL), or
    # sum(dy) and sum(dy*(x - center)) with dy read as ``how`` (the ReLU
    # backward: see _dy_of); half-precision data is loaded into ``scratch``
    # first (see _apply_tiles).
    cdef Tile tile = _tile(g, t)
    cdef Py_ssize_t offset, channel_stride, n_channels = g.channels
    cdef const floating* x_t
    cdef const floating* dy_t = NULL
    cdef double* a = partial_a + t * n_channels
    cdef double* b = partial_b + t * n_channels
    if scratch != NULL:
        _load_tile(g, &tile, x, scratch)
        x_t = <const floating*> scratch
        if dy != NULL:
            _load_tile(g, &tile, dy, scratch + _scratch_stride(g))
            dy_t = <const floating*> (scratch + _scratch_stride(g))
        channel_stride = tile.n_inner
    else:
        offset = _tile_offset(g, &tile)
        x_t = x + offset
        if dy != NULL:
            dy_t = dy + offset
        channel_stride = g.inner
    if g.inner == 1:
        if dy == NULL:
            _chunk_stats(x_t, tile.n_outer, n_channels, order, a, b)
        else:
            _chunk_sums(dy_t, x_t, center, tile.n_outer, n_channels, order, a, b, mask, how)
    elif dy == NULL:
        _plane_stats(x_t, tile.n_outer, n_channels, tile.n_inner, channel_stride,
                     n_channels * channel_stride, a, b)
    else:
        _plane_sums(dy_t, x_t, center, tile.n_outer, n_channels, tile.n_inner,
                    channel_stride, n_channels * channel_stride, a, b, mask, how)


cdef inline void _tile_partials_of(const floating* dy, const floating* x,
                                   const double* center, const Grid* g, Py_ssize_t t,
                                   int order, double* partial_a, double* partial_b,
                                   float* scratch, const floating* mask,
                                   bint mask_folded) noexcept nogil:
    # _tile_partials of the variant ``mask`` asks for (NULL: plain).
    if mask == NULL:
        _tile_partials(dy, x, center, g, t, order, partial_a, partial_b, scratch, mask,
                       <_Plain*> NULL)
    elif mask_folded:
        _tile_partials(dy, x, center, g, t, order, partial_a, partial_b, scratch, mask,
                       <_MaskedFolded*> NULL)
    else:
        _tile_partials(dy, x, center, g, t, order, partial_a, partial_b, scratch, mask,
                       <_Masked*> NULL)


cdef inline void _merge_partials(bint stats, const double* partial_a, const double* partial_b,
                                 const Grid* g, Py_ssize_t c_start, Py_ssize_t c_stop,
                                 double* total_a, double* total_b) noexcept nogil:
    if stats:
        _merge_stats(partial_a, partial_b, g, c_start, c_stop, total_a, total_b)
    else:
        _merge_sums(partial_a, partial_b, g, c_start, c_stop, total_a, total_b)


cdef void _reduce(const floating* dy, const floating* x, const double* center,
                  double* total_a, double* total_b, const Grid* g, int n_threads,
                  const floating* mask=NULL, bint mask_folded=False) except *:
    # Per-channel reductions, bit-identical for every n_threads: mean and
    # biased variance of x (dy NULL), or sum(dy) and sum(dy*(x - center)),
    # with dy masked by the fused ReLU's forward if ``mask`` is not NULL (the
    # forward's coefficients; see _relu_gradient).
    # Each tile writes its partials to row ``tile`` of two (tiles, C) arrays;
    # the merge runs in tile order, split over threads by channels.
    cdef Py_ssize_t n_channels = g.channels, tiles = g.tiles
    cdef Py_ssize_t blocks = (n_channels + MERGE_BLOCK - 1) // MERGE_BLOCK
    cdef Py_ssize_t t, block, thread
    cdef bint stats = dy == NULL
    cdef Py_ssize_t tensors = 1 if stats else 2
    cdef int order = (_reduction_order(stats, g.outer, n_channels, sizeof(floating))
                      if g.inner == 1 else BY_BLOCKS)
    n_threads = _threads_for(g.outer * g.inner, n_channels, tiles, n_threads)
    cdef double* partial_a = _partials(tiles, n_channels)
    cdef double* partial_b = partial_a + tiles * n_channels
    cdef float* scratch = NULL
    try:
        scratch = _half_scratch(g, n_threads, tensors)
        if n_threads == 1:
            with nogil:
                for t in range(tiles):
                    _tile_partials_of(dy, x, center, g, t, order, partial_a, partial_b,
                                      scratch, mask, mask_folded)
                _merge_partials(stats, partial_a, partial_b, g, 0, n_channels, total_a,
                                total_b)
        else:
            # Each thread its share of tiles (_first_chunk), as the _apply that
            # follows in training and backward, which walks the share backwards.
            for thread in prange(n_threads, nogil=True, schedule="static",
                                 num_threads=n_threads):
                for t in range(_first_chunk(tiles, n_threads, thread),
                               _first_chunk(tiles, n_threads, thread + 1)):
                    _tile_partials_of(dy, x, center, g, t, order, partial_a, partial_b,
                                      NULL if scratch == NULL
                                      else scratch + thread * tensors * _scratch_stride(g),
                                      mask, mask_folded)
            for block in prange(blocks, nogil=True, schedule="static",
                                num_threads=min(<Py_ssize_t>n_threads, blocks),
                                use_threads_if=blocks > 1):
                _merge_partials(stats, partial_a, partial_b, g, block * MERGE_BLOCK,
                                min(block * MERGE_BLOCK + MERGE_BLOCK, n_channels),
                                total_a, total_b)
    finally:
        free(partial_a)
        free(scratch)


def backward(dy, x, dx, mean, invstd, gamma, bint training, dgamma, dbeta, int n_threads,
             int storage, Py_ssize_t outer, Py_ssize_t n_channels, Py_ssize_t inner,
             bint sums_given=False, Py_ssize_t count=0, bint relu=False, beta=None):
    """The whole batch-norm backward: dbeta = sum(dy), dgamma = sum(dy*(x - mean))*invstd, dx.

    dy, x, dx: C-contiguous tensors of one shape and storage type, seen as
    (outer, n_channels, inner) (dx may be dy or x); mean, invstd, gamma (None
    meaning 1): float64 of shape (C,); dgamma, dbeta: writable float64 of
    shape (C,). With k = gamma*invstd and m = outer*inner values per
    channel: training, dx = k*dy - k*invstd*dgamma/m*(x - mean) - k*dbeta/m
    (_reduce, then _apply); frozen statistics, dx = k*dy (_apply of dy
    alone). The per-channel coefficients are computed here in double. The
    steps of a distributed backward: dx None computes the sums only (no
    _apply); ``sums_given`` takes dgamma and dbeta as inputs (sums over all
    shards) and skips the reduction; ``count`` > 0 is the m of the
    coefficients (the global count) in place of outer*inner. ``relu``: the
    backward of relu(bn(x)) (beta: float64 (C,) or None meaning 0), dy masked
    where the forward's gamma*(x - mean)*invstd + beta is not > 0, recomputed
    from x inside each pass (see _relu_gradient). The caller has validated everything.
    Returns False if it declined to write dx (extreme statistics; see
    _declines: dgamma and dbeta hold the sums then, dx is untouched), else True.
    """
    cdef Buffers b = Buffers()
    cdef const void* dyp = b.get(dy, False)
    cdef const void* xp = b.get(x, False)
    cdef void* dxp = b.get(dx, True)
    cdef const double* mean_p = <const double*> b.get(mean, False)
    cdef const double* invstd_p = <const double*> b.get(invstd, False)
    cdef const double* gamma_p = <const double*> b.get(gamma, False)
    cdef double* dgamma_p = <double*> b.get(dgamma, True)
    cdef double* dbeta_p = <double*> b.get(dbeta, True)
    cdef const double* beta_p = <const double*> b.get(beta, False)
    if DEBUG_CHECKS:  # dx None (the sums only): two tensors
        b.check(2 if dx is None else 3, storage, outer, n_channels, inner, -1, -1, n_threads)
    cdef Grid g = _grid(storage, outer, n_channels, inner)
    return _backward_view(dyp, xp, dxp, mean_p, invstd_p, gamma_p, training, dgamma_p,
                          dbeta_p, &g, n_threads, sums_given, count, relu, beta_p) == 0


cdef int _backward_view(const void* dyp, const void* xp, void* dxp, const double* mean_p,
                        const double* invstd_p, const double* gamma_p, bint training,
                        double* dgamma_p, double* dbeta_p, const Grid* g, int n_threads,
                        bint sums_given, Py_ssize_t count, bint relu,
                        const double* beta_p) except -1:
    # `backward` on its arrays' data (also backward_plain's); 1: dx declined.
    if g.outer * g.channels * g.inner == 0:
        return 0
    if count <= 0:
        count = g.outer * g.inner
    if g.storage == CN_FLOAT64:
        return _backward(<const double*> dyp, <const double*> xp, <double*> dxp, mean_p,
                         invstd_p, gamma_p, training, dgamma_p, dbeta_p, g, n_threads,
                         sums_given, count, relu, beta_p)
    return _backward(<const float*> dyp, <const float*> xp, <float*> dxp, mean_p, invstd_p,
                     gamma_p, training, dgamma_p, dbeta_p, g, n_threads, sums_given, count,
                     relu, beta_p)


cdef int _backward(const floating* dy, const floating* x, floating* dx, const double* mean,
                   const double* invstd, const double* gamma, bint training,
                   double* dgamma, double* dbeta, const Grid* g, int n_threads,
                   bint sums_given, Py_ssize_t count, bint relu,
                   const double* beta) except -1:
    # Returns 1 if it declined to write dx (see _declines), else 0.
    cdef Py_ssize_t c, n_channels = g.channels
    cdef double* coefficients = <double*> calloc(6 * n_channels, sizeof(double))
    if coefficients == NULL:
        raise MemoryError("cnorm: cannot allocate batch-norm coefficients")
    cdef double* dy_scale = coefficients
    cdef double* x_scale = coefficients + n_channels
    cdef double* shift = coefficients + 2 * n_channels
    cdef double* sum_dy_centered = coefficients + 3 * n_channels
    cdef double* forward_scale = coefficients + 4 * n_channels
    cdef double* forward_shift = coefficients + 5 * n_channels
    cdef double m = <double>count
    cdef void* mask_block = NULL
    cdef floating* mask = NULL
    cdef bint mask_folded = False
    try:
        if relu:
            # The forward's coefficients, exactly as _normalize makes them, so
            # the mask is the forward's own y > 0 (see _relu_gradient).
            for c in range(n_channels):
                forward_scale[c] = invstd[c] if gamma == NULL else gamma[c] * invstd[c]
                forward_shift[c] = 0.0 if beta == NULL else beta[c]
            mask = _coefficients(x, 0, mean, forward_scale, forward_shift, NULL, invstd,
                                 n_channels, &mask_folded, &mask_block)
        if not sums_given:
            _reduce(dy, x, mean, dbeta, sum_dy_centered, g, n_threads, mask, mask_folded)
            for c in range(n_channels):
                dgamma[c] = sum_dy_centered[c] * invstd[c]
        if dx == NULL:
            return 0
        for c in range(n_channels):
            dy_scale[c] = invstd[c] if gamma == NULL else gamma[c] * invstd[c]
            # invstd * dgamma first: with invstd near 1e200 and data equal to
            # the mean, dy_scale * invstd overflowed and inf * 0 gave dx NaN
            # where the reference gives 0 (found by the fuzzer).
            x_scale[c] = -dy_scale[c] * (invstd[c] * dgamma[c] / m)
            shift[c] = -dy_scale[c] * dbeta[c] / m
            if dy_scale[c] == 0 and isfinite(dgamma[c]) and isfinite(dbeta[c]):
                # gamma = 0 over finite sums: dx is 0, not 0 * inf where
                # invstd*dgamma overflowed (invstd 1e200, dgamma 1e206; found
                # by the fuzzer). Non-finite sums (NaN data) keep the whole
                # channel NaN, as the reference.
                x_scale[c] = 0.0
                shift[c] = 0.0
        if training:
            if not sums_given and _declines(invstd, dy_scale, x_scale, dgamma,
                                            sum_dy_centered, n_channels):
                return 1
            # Right after _reduce read the tiles first to last: reverse.
            _apply(dy, x, dx, mean, x_scale, shift, dy_scale, invstd, g, True, n_threads,
                   NULL, False, mask, mask_folded)
        elif relu:
            # dx = masked dy*k + (0*x + 0): x is read for the mask anyway.
            for c in range(n_channels):
                x_scale[c] = 0.0
                shift[c] = 0.0
            _apply(dy, x, dx, x_scale, x_scale, shift, dy_scale, x_scale, g, False, n_threads,
                   NULL, False, mask, mask_folded)
        else:
            # dx = dy*k + 0: x_scale and shift serve as the zeros (a zero center
            # folds whatever the spread: x_scale again).
            for c in range(n_channels):
                x_scale[c] = 0.0
                shift[c] = 0.0
            _apply(<const floating*> NULL, dy, dx, x_scale, dy_scale, shift, NULL, x_scale,
                   g, False, n_threads)
    finally:
        free(coefficients)
        free(mask_block)
    return 0


cdef bint _declines(const double* invstd, const double* dy_scale, const double* x_scale,
                    const double* dgamma, const double* sum_dy_centered,
                    Py_ssize_t n_channels) noexcept nogil:
    # Whether the training dx of some channel would be NaN where the
    # reference's is not, because of how the coefficients group the product
    # (found by the fuzzer; extreme statistics only):
    # - invstd 0 (a variance that overflowed to inf) over finite data: the
    #   reference's xhat is 0, so dgamma and dx are 0, where
    #   sum(dy*(x - mean)) * invstd is inf * 0 (x = dy = [1e200, 0, 0]);
    # - x_scale = -gamma*invstd * invstd*dgamma/m overflowed over finite
    #   factors (invstd 1e200): (x - mean) * x_scale is 0 * inf at the mean,
    #   where the reference's xhat * dgamma is 0 (x = dy = [1, 0 x 19]).
    # The caller then computes the whole backward by the reference
    # (cnorm.batchnorm._reference_backward); no other call pays more than
    # this scan of the C coefficients.
    cdef Py_ssize_t c
    for c in range(n_channels):
        if invstd[c] == 0 and not isfinite(sum_dy_centered[c]):
            return True
        if (not isfinite(x_scale[c]) and isfinite(dy_scale[c]) and isfinite(invstd[c])
                and isfinite(dgamma[c])):
            return True
    return False


# ---------------------------------------------------------------------------
# Plain calls of the public functions, checked here and run at once
#
# cnorm.batchnorm's functions try these first. Each takes a call as the
# caller gave it and, when it is plain (x, out, dy and n_threads as
# cnorm._buffers.plain_call takes them; every per-channel array a plain
# float64 vector, cnorm._buffers.plain_vector; the scalars of the types and
# ranges the checked path takes as they are), runs the same kernel on the
# same arguments as the checked path would: the result is bit-identical. For
# any other call they return None, having written nothing, and the caller
# takes the checked path, which converts what it may and raises the errors.
# Calls the checked path computes in float64 (a per-channel value or a batch
# statistic outside float32's normal range with data that are not float64,
# cnorm.batchnorm._widen) and its special cases (a residual, running
# statistics, moments, sums, the frozen-statistics ReLU backward) are not plain.

import numpy

cdef object _empty = numpy.empty



cdef int _plain_activation(object activation) noexcept:
    # 0 for None, 1 for "relu" (the fused ReLU), -1 for anything else.
    if activation is None:
        return 0
    if type(activation) is str and activation == "relu":
        return 1
    return -1


cdef bint _plain_eps(object eps) noexcept:
    # eps a float in [1e-76, inf): valid, and float32 coefficients stay in range.
    return type(eps) is float and FLOAT32_MIN_EPS <= <double> eps < INFINITY


cdef bint _plain_vectors(const Py_ssize_t* view, int required, object v0, object v1,
                         object v2=None, object v3=None) except -1:
    # Whether v0..v3 are plain float64 vectors of the view's channel count (or
    # None, past the first `required`), none outside float32's normal range
    # when the data are not float64.
    cdef int i
    vectors = (v0, v1, v2, v3)
    for i in range(4):
        v = vectors[i]
        if (v is not None or i < required) and plain_vector(v, view[2], view[0] != 0) != 0:
            return False
    return True


def infer_plain(x, running_mean, running_var, gamma, beta, eps, activation, out, n_threads,
                axis):
    """y of a plain call of cnorm.batch_norm_inference without a residual, or
    None (see the block comment above). Plain also means running_var >= 0
    (NaN passes), which the checked path would otherwise refuse."""
    cdef Py_ssize_t view[4]
    cdef Py_ssize_t c
    cdef int threads
    cdef bint in_place
    cdef int relu = _plain_activation(activation)
    if relu < 0 or not _plain_eps(eps):
        return None
    y = plain_call(x, out, None, n_threads, axis, 2, -1, view, &threads, &in_place)
    if y is None or not _plain_vectors(view, 2, running_mean, running_var, gamma, beta):
        return None
    cdef Buffers b = Buffers()
    cdef const void* xp = b.get(x, False)
    cdef void* yp = b.get(y, True)
    cdef const double* mean_p = <const double*> b.get(running_mean, False)
    cdef const double* var_p = <const double*> b.get(running_var, False)
    cdef const double* gamma_p = <const double*> b.get(gamma, False)
    cdef const double* beta_p = <const double*> b.get(beta, False)
    for c in range(view[2]):
        if var_p[c] < 0:
            return None
    if DEBUG_CHECKS:
        b.check(2, <int> view[0], view[1], view[2], view[3], -1, -1, threads)
    cdef Grid g = _grid(<int> view[0], view[1], view[2], view[3])
    _normalize_view(xp, yp, mean_p, var_p, gamma_p, beta_p, eps, NULL, False, &g, threads,
                    NULL, relu)
    return y


def train_plain(x, gamma, beta, eps, momentum, running_var_unbiased, activation, out,
                n_threads, axis):
    """``(y, mean, invstd)`` of a plain call of cnorm.batch_norm_training
    without running statistics or moments, or None (see the block comment
    above). Plain also means more than one value per channel, momentum a
    float in [0, 1] and running_var_unbiased a bool: not used without running
    statistics, but checked as the checked path checks them."""
    cdef Py_ssize_t view[4]
    cdef int threads
    cdef bint in_place
    cdef int relu = _plain_activation(activation)
    if (relu < 0 or not _plain_eps(eps) or type(momentum) is not float
            or not 0.0 <= <double> momentum <= 1.0
            or not (running_var_unbiased is True or running_var_unbiased is False)):
        return None
    y = plain_call(x, out, None, n_threads, axis, 2, -1, view, &threads, &in_place)
    if y is None or view[1] * view[3] < 2 or not _plain_vectors(view, 0, gamma, beta):
        return None
    mean, var, invstd = _empty(view[2]), _empty(view[2]), _empty(view[2])
    cdef Buffers b = Buffers()
    cdef const void* xp = b.get(x, False)
    cdef void* yp = b.get(y, True)
    cdef const double* gamma_p = <const double*> b.get(gamma, False)
    cdef const double* beta_p = <const double*> b.get(beta, False)
    cdef double* mean_p = <double*> b.get(mean, True)
    cdef double* var_p = <double*> b.get(var, True)
    cdef double* invstd_p = <double*> b.get(invstd, True)
    if DEBUG_CHECKS:
        b.check(2, <int> view[0], view[1], view[2], view[3], -1, -1, threads)
    cdef Grid g = _grid(<int> view[0], view[1], view[2], view[3])
    if _stats_view(xp, mean_p, var_p, &g, threads):
        return None  # statistics outside float32's range: the checked path widens
    _normalize_view(xp, yp, mean_p, var_p, gamma_p, beta_p, eps, invstd_p, True, &g, threads,
                    NULL, relu)
    return y, mean, invstd


def backward_plain(dy, x, mean, invstd, gamma, beta, activation, training, out, n_threads,
                   axis):
    """``(dx, dgamma, dbeta)`` of a plain call of cnorm.batch_norm_backward
    without sums, or None (see the block comment above). Plain also means dy
    a plain tensor of x's shape and storage, training a bool, and not the
    frozen-statistics ReLU backward (its non-finite x is mended in NumPy)."""
    cdef Py_ssize_t view[4]
    cdef int threads
    cdef bint in_place
    cdef int relu = _plain_activation(activation)
    if (relu < 0 or not (training is True or training is False) or relu and training is False
            or not plain_like_x(dy, x)):
        return None
    dx = plain_call(x, out, dy, n_threads, axis, 2, -1, view, &threads, &in_place)
    if dx is None or not _plain_vectors(view, 2, mean, invstd, gamma, beta):
        return None
    dgamma, dbeta = _empty(view[2]), _empty(view[2])
    if not backward(dy, x, dx, mean, invstd, gamma, training, dgamma, dbeta, threads,
                    <int> view[0], view[1], view[2], view[3], False, 0, relu, beta):
        return None  # declined: the checked path computes it by the reference
    return dx, dgamma, dbeta
