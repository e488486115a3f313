"""Local response normalization kernels over the (outer, C, inner) view of a tensor.

Design (the layers of the kernel core: docs/design.md)
------
Layout
    The tensor is C-contiguous in memory, seen as ``(outer, C, inner)``
    (cnorm/_layout.py). ``inner == 1`` (channels last): row ``r`` holds the
    ``C`` channels of one pixel, contiguous, and the window runs along the
    row (_forward_rows, _backward_rows). ``inner > 1`` (NCHW): a tile is a
    block of pixels of one outer index, every channel, channel ``c``'s run at
    ``(o*C + c)*inner``; the window runs across the channel rows of the tile
    (_planes), with the rows' per-element arithmetic and their per-pixel
    float-path decision, so every element has the same bits in both layouts.
Storage
    Half-precision tiles are loaded into a per-thread float scratch, computed
    by the float kernels and stored rounded once (cnorm/_storage.h): exactly
    float32's results on the same values.
Formula (the canonical form of docs/guide/conventions.md)
    ``S_c = sum(x_i**2, i in [c - before, c + after])`` clipped to ``[0, C)``,
    ``D_c = k + a*S_c``, ``y_c = x_c * D_c**-beta``.  The backward is
    ``dx_i = dy_i*D_i**-beta - 2*a*beta*x_i * sum(dy_j*x_j*D_j**(-beta-1))`` with
    ``j`` over the MIRRORED window ``[i - after, i + before]``.
Window sums
    Per row, the squares go into a zero-padded scratch row (``before`` zeros in
    front, ``after`` behind), so every window has the same width and the sum adds
    ``width`` shifted runs of contiguous channels: the compiler vectorises it, and a
    direct sum neither drifts nor turns inf into NaN as a sliding add/subtract
    window would.  The pads are zeroed once per call and never written.
Accumulation
    Squares and window sums in double for both dtypes (a float32 square is
    exact in double); windows up to 11 wide are summed in one unrolled pass.
    float64 data: the power in double too.  float32 data: the divisor is
    rounded once to float and the power taken in float (the float32 fast
    path), for rows whose largest square keeps every divisor D in a range where
    D**-beta and D**(-beta-1) are normal floats (float_square_limit) and, in
    the backward, whose largest |dy| keeps every float product finite
    (float_dy_limit: about 3e17 for AlexNet's parameters); other rows (huge
    or tiny values, k near 0) take the power and the products in double.  The result
    is cast once at the store.
Power
    beta = 0.5, 0.75 and 1 use sqrt and division (a few roundings); on the
    float path of AVX-512 builds beta = 0.75 uses the hardware rsqrt estimate
    and a Newton step, then one sqrt (cnorm_forward_075); any other beta uses
    pow in double, or on the float path a branch-free polynomial exp2/log2
    that vectorises (_power_float, relative error below 1e-6).
Chunking and threads
    Rows are cut into chunks of a fixed number of rows (about CHUNK_ELEMENTS
    values: the tuning number lrn_chunk_elements of cnorm/_tuning.py),
    handed out by a static schedule.  Rows are independent, so the result
    is bit-identical for every thread count.  Small inputs take a serial path that
    never enters an OpenMP region.  Each thread owns one scratch row of a buffer
    allocated before the parallel region (rows padded to whole cache lines).
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.float cimport FLT_MAX
from libc.math cimport INFINITY, fabs, fabsf, frexp, ldexp, pow, sqrt, sqrtf
from libc.stdint cimport int32_t, uint32_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from cnorm._buffers cimport DEBUG_CHECKS, Buffers, check_sizes
from cnorm._storage cimport (CN_FLOAT32, CN_FLOAT64, cn_is_half, cn_item_size, cn_load_run,
                             cn_store_run)

cdef extern from *:
    """
    #include "cnorm/_simd.h"

    /* The window sum of an AVX-512 build for widths up to 9: each shifted run
       of the padded row is built from two aligned vectors in registers
       (CN_SHIFT_D) instead of an unaligned load that splits cache lines;
       added left to right as in _window_sum_fixed, so the same bits.
       Measured: 0.24 -> 0.10 ns per channel for width 5 (2.3x). `padded`
       64-byte aligned, with at least 8 readable doubles past n + width - 1
       (lanes never used). Other builds take _window_sum_fixed: GCC 12 turns
       the shifts into scalar moves there. */
    #define CNORM_AVX512 CN_HAS_ESTIMATES
    #if CN_HAS_ESTIMATES
    static void cnorm_window_sum(const double *padded, double *out, Py_ssize_t n,
                                 Py_ssize_t width) {
        Py_ssize_t c = 0, t;
        if (n >= 8) {
            cn_vd low = cn_load_d_f64(padded);
            for (; c + 8 <= n; c += 8) {
                cn_vd high = cn_load_d_f64(padded + c + 8);
                cn_vd total = low;
                if (width > 1) total = total + CN_SHIFT_D(low, high, 1);
                if (width > 2) total = total + CN_SHIFT_D(low, high, 2);
                if (width > 3) total = total + CN_SHIFT_D(low, high, 3);
                if (width > 4) total = total + CN_SHIFT_D(low, high, 4);
                if (width > 5) total = total + CN_SHIFT_D(low, high, 5);
                if (width > 6) total = total + CN_SHIFT_D(low, high, 6);
                if (width > 7) total = total + CN_SHIFT_D(low, high, 7);
                if (width > 8) total = total + high;
                cn_store_d(out + c, total);
                low = high;
            }
        }
        for (; c < n; c++) {
            double total = padded[c];
            for (t = 1; t < width; t++) total = total + padded[c + t];
            out[c] = total;
        }
    }

    /* beta = 0.75 on the float path of a build with estimates (AVX-512):
       D**-0.5 by the hardware estimate and one Newton step (cn_rsqrt_f), then
       D**-0.75 = r*sqrt(r): one square root where sqrt, sqrt and a division
       were three long-latency operations (the backward's D**-1 likewise by
       cn_reciprocal_f). Relative error below 1e-6 (tested against the
       reference). D = k + a*sums rounded to float, a normal float
       (float_square_limit). The tail (n not a multiple of 16) goes through
       the same vector code on a padded copy, so a value's bits do not depend
       on its position in the row: the planar layout, whose rows are pixels,
       gives the channels-last bits. */
    static inline cn_vf16 cnorm_divisors16(const double *sums, cn_vd a, cn_vd k) {
        return cn_narrow_d(cn_fma_d(a, cn_load_d_f64(sums), k),
                           cn_fma_d(a, cn_load_d_f64(sums + 8), k));
    }
    static void cnorm_forward_075(const float *x, float *y, const double *sums,
                                  Py_ssize_t n, double a, double k) {
        cn_vd va = cn_broadcast_d(a), vk = cn_broadcast_d(k);
        Py_ssize_t c = 0;
        for (; c + 16 <= n; c += 16) {
            cn_vf16 r = cn_rsqrt_f(cnorm_divisors16(sums + c, va, vk));
            cn_store_f16x(y + c, cn_load_f16x(x + c) * (r * cn_sqrt_f(r)));
        }
        if (c < n) {  /* the tail through the same vector code: the same bits at every position */
            float xb[16] = {0}, yb[16];
            double sb[16] = {0};
            memcpy(xb, x + c, (size_t)(n - c) * sizeof(float));
            memcpy(sb, sums + c, (size_t)(n - c) * sizeof(double));
            cnorm_forward_075(xb, yb, sb, 16, a, k);
            memcpy(y + c, yb, (size_t)(n - c) * sizeof(float));
        }
    }
    static void cnorm_backward_075(const float *dy, const float *x, const double *sums,
                                   float *q, double *p, Py_ssize_t n, double a, double k) {
        cn_vd va = cn_broadcast_d(a), vk = cn_broadcast_d(k);
        Py_ssize_t c = 0;
        for (; c + 16 <= n; c += 16) {
            cn_vf16 d = cnorm_divisors16(sums + c, va, vk);
            cn_vf16 r = cn_rsqrt_f(d);
            cn_vf16 q0 = r * cn_sqrt_f(r);                    /* D**-0.75 */
            cn_vf16 q1 = q0 * cn_reciprocal_f(d);             /* D**-1.75 */
            /* dy*x*q1 in float: finite for rows within FloatPath's limits */
            cn_vf16 prod = cn_load_f16x(dy + c) * cn_load_f16x(x + c) * q1;
            cn_store_f16x(q + c, q0);
            cn_store_d(p + c, cn_widen_f(prod, 0));
            cn_store_d(p + c + 8, cn_widen_f(prod, 1));
        }
        if (c < n) {  /* the tail through the same vector code, as in the forward */
            float dyb[16] = {0}, xb[16] = {0}, qb[16];
            double sb[16] = {0}, pb[16];
            size_t m = (size_t)(n - c);
            memcpy(dyb, dy + c, m * sizeof(float));
            memcpy(xb, x + c, m * sizeof(float));
            memcpy(sb, sums + c, m * sizeof(double));
            cnorm_backward_075(dyb, xb, sb, qb, pb, 16, a, k);
            memcpy(q + c, qb, m * sizeof(float));
            memcpy(p + c, pb, m * sizeof(double));
        }
    }
    #else
    static void cnorm_window_sum(const double *padded, double *out, Py_ssize_t n,
                                 Py_ssize_t width) {}
    static void cnorm_forward_075(const float *x, float *y, const double *sums,
                                  Py_ssize_t n, double a, double k) {}
    static void cnorm_backward_075(const float *dy, const float *x, const double *sums,
                                   float *q, double *p, Py_ssize_t n, double a, double k) {}
    #endif
    """
    const bint AVX512_KERNELS "CNORM_AVX512"
    void _window_sum_simd "cnorm_window_sum"(const double* padded, double* out,
                                             Py_ssize_t n, Py_ssize_t width) noexcept nogil
    void _forward_075_simd "cnorm_forward_075"(const float* x, float* y, const double* sums,
                                               Py_ssize_t n, double a, double k) noexcept nogil
    void _backward_075_simd "cnorm_backward_075"(const float* dy, const float* x,
                                                 const double* sums, float* q, double* p,
                                                 Py_ssize_t n, double a,
                                                 double k) noexcept nogil


cdef enum:
    # About 64 KiB of float32 per chunk: a chunk's rows plus scratch stay in L2.
    CHUNK_ELEMENTS = 16384
    # Below this many elements the OpenMP entry cost (1-2 us warm, far more after
    # idling) outweighs any gain from a second thread.
    SERIAL_ELEMENTS = 32768
    # Planar tiles (inner > 1, see _plane_block): about this many values of
    # every channel for a block of pixels (the tile's squares and products in
    # double: 0.5-2 MiB of scratch, in L2), blocks of 16 to 2048 pixels, a
    # multiple of 16 (whole float32 vectors). Long runs per channel read
    # fastest: measured at 1 thread (min of 10, loaded machine), forward
    # 16x96x55x55 14.7 ms at 4096 values, 7.3 at 32768, 4.8 at 65536, 5.5 at
    # 131072 (NHWC 3.4); backward 29.5 -> 12.1 ms (NHWC 6.3).
    PLANE_TILE_VALUES = 65536
    PLANE_BLOCK_MIN = 16
    PLANE_BLOCK_MAX = 2048
    PLANE_MIN_TILES = 16
    PLANE_SMALL_BLOCK = 64

# Divisors inside this range keep D**-beta and D**(-beta-1) inside float range.
cdef double FLOAT_SAFE_MIN = 1e-12
cdef double FLOAT_SAFE_MAX = 1e12

cdef enum BetaPath:
    BETA_GENERAL
    BETA_HALF
    BETA_THREE_QUARTERS
    BETA_ONE


cdef BetaPath _beta_path(double beta) noexcept nogil:
    if beta == 0.5:
        return BETA_HALF
    if beta == 0.75:
        return BETA_THREE_QUARTERS
    if beta == 1.0:
        return BETA_ONE
    return BETA_GENERAL


# The tuning numbers in use, set at import by cnorm._tuning (the compiled
# defaults above, lowered where this machine's L2 is smaller; CNORM_TUNING
# overrides) through set_tuning. They cut the work into chunks and tiles;
# LRN's value at a point does not depend on its tile, so no setting changes
# a bit.
cdef Py_ssize_t _chunk_elements = CHUNK_ELEMENTS
cdef Py_ssize_t _plane_tile_values = PLANE_TILE_VALUES
TUNING_NAMES = ("lrn_chunk_elements", "lrn_plane_tile_values")
DEFAULT_TUNING = (CHUNK_ELEMENTS, PLANE_TILE_VALUES)
TUNING_RANGES = ((1, 2**40), (PLANE_BLOCK_MIN, 2**40))


def set_tuning(*values):
    """Set the tuning numbers, one value for each of TUNING_NAMES (see
    cnorm._tuning); returns the previous ones, as a tuple."""
    global _chunk_elements, _plane_tile_values
    from cnorm._tuning import checked
    previous = tuning()
    _chunk_elements, _plane_tile_values = checked(TUNING_NAMES, TUNING_RANGES, values)
    return previous


def tuning():
    """The tuning numbers in use, one for each of TUNING_NAMES."""
    return (_chunk_elements, _plane_tile_values)


cdef Py_ssize_t _rows_per_chunk(Py_ssize_t n_channels) noexcept nogil:
    return max(1, _chunk_elements // max(n_channels, 1))


def n_chunks(Py_ssize_t n_rows, Py_ssize_t n_channels):
    """Number of row chunks the kernels split an (n_rows, n_channels) input into."""
    cdef Py_ssize_t rows = _rows_per_chunk(n_channels)
    return (n_rows + rows - 1) // rows


cdef inline void _window_sum_fixed(const double* padded, double* out,
                                   Py_ssize_t n, Py_ssize_t width,
                                   Py_ssize_t step) noexcept nogil:
    # Called with a literal width: the compiler unrolls the window and
    # vectorises the loop over i, one store per value instead of one per offset.
    cdef Py_ssize_t i, t
    cdef double total
    for i in range(n):
        total = padded[i]
        for t in range(1, width):
            total = total + padded[i + t * step]
        out[i] = total


cdef void _window_sum(const double* padded, double* out, Py_ssize_t n, Py_ssize_t width,
                      Py_ssize_t step) noexcept nogil:
    # out[i] = padded[i] + padded[i + step] + ... (width terms), left to right
    # for every width and step, so all branches give the same bits: a row's
    # window (step 1, i a channel) and a planar tile's window across channel
    # rows (step: the row length, i a pixel; see _planes) alike. Widths up to
    # 11 get an unrolled single pass; wider ones go offset by offset.
    cdef Py_ssize_t i, t
    if AVX512_KERNELS and step == 1 and width <= 9 and (<size_t>padded) % 64 == 0:
        _window_sum_simd(padded, out, n, width)
    elif width == 1:
        _window_sum_fixed(padded, out, n, 1, step)
    elif width == 2:
        _window_sum_fixed(padded, out, n, 2, step)
    elif width == 3:
        _window_sum_fixed(padded, out, n, 3, step)
    elif width == 4:
        _window_sum_fixed(padded, out, n, 4, step)
    elif width == 5:
        _window_sum_fixed(padded, out, n, 5, step)
    elif width == 6:
        _window_sum_fixed(padded, out, n, 6, step)
    elif width == 7:
        _window_sum_fixed(padded, out, n, 7, step)
    elif width == 8:
        _window_sum_fixed(padded, out, n, 8, step)
    elif width == 9:
        _window_sum_fixed(padded, out, n, 9, step)
    elif width == 10:
        _window_sum_fixed(padded, out, n, 10, step)
    elif width == 11:
        _window_sum_fixed(padded, out, n, 11, step)
    else:
        for i in range(n):
            out[i] = padded[i]
        for t in range(1, width):
            for i in range(n):
                out[i] += padded[i + t * step]


cdef inline double _inverse_power_one(double d, BetaPath path, double beta) noexcept nogil:
    # d**-beta in double: the one formula of the double path, for whole rows
    # (_inverse_power) and for single values (the planar kernels' fix-ups).
    cdef double root
    if path == BETA_THREE_QUARTERS:
        root = sqrt(d)
        return 1.0 / (root * sqrt(root))
    if path == BETA_HALF:
        return 1.0 / sqrt(d)
    if path == BETA_ONE:
        return 1.0 / d
    return pow(d, -beta)


cdef void _inverse_power(const double* d, double* q, Py_ssize_t n_channels,
                         BetaPath path, double beta) noexcept nogil:
    # q[c] = d[c]**-beta in double; one loop per path, so each vectorises.
    cdef Py_ssize_t c
    if path == BETA_THREE_QUARTERS:
        for c in range(n_channels):
            q[c] = _inverse_power_one(d[c], BETA_THREE_QUARTERS, beta)
    elif path == BETA_HALF:
        for c in range(n_channels):
            q[c] = _inverse_power_one(d[c], BETA_HALF, beta)
    elif path == BETA_ONE:
        for c in range(n_channels):
            q[c] = _inverse_power_one(d[c], BETA_ONE, beta)
    else:
        for c in range(n_channels):
            q[c] = _inverse_power_one(d[c], BETA_GENERAL, beta)


cdef inline bint _squares(const floating* x_row, double* squares, Py_ssize_t n_channels,
                          double square_limit) noexcept nogil:
    # squares[c] = x_row[c]**2 in double (exact for float32 data); True if all
    # are <= square_limit (a NaN is not).
    cdef Py_ssize_t c
    cdef double v
    cdef int bad = 0
    for c in range(n_channels):
        v = <double>x_row[c] * <double>x_row[c]
        squares[c] = v
        bad |= not (v <= square_limit)
    return not bad


cdef inline void _divisors(const floating* x_row, double* squares, double* d,
                           Py_ssize_t n_channels, Py_ssize_t before, Py_ssize_t width,
                           double a, double k) noexcept nogil:
    # d = k + a * (window sums of x**2) for one row, in double.
    cdef Py_ssize_t c
    _squares(x_row, squares + before, n_channels, INFINITY)
    _window_sum(squares, d, n_channels, width, 1)
    for c in range(n_channels):
        d[c] = k + a * d[c]


cdef void _forward_rows(const floating* x, floating* y, double* scratch,
                        Py_ssize_t row_start, Py_ssize_t row_stop,
                        Py_ssize_t n_channels, Py_ssize_t before, Py_ssize_t after,
                        double a, double k, BetaPath path, double beta,
                        double square_limit) noexcept nogil:
    cdef Py_ssize_t width = before + after + 1
    cdef double* squares = scratch                                # before + C + after, pads zero
    cdef double* d = squares + _lines(n_channels + width - 1)      # C
    cdef double* q = d + _lines(n_channels)                        # C
    cdef Py_ssize_t r, c
    cdef const floating* x_row
    cdef floating* y_row
    for r in range(row_start, row_stop):
        x_row = x + r * n_channels
        y_row = y + r * n_channels
        if floating is float:
            if square_limit > 0 and _squares(x_row, squares + before, n_channels,
                                             square_limit):
                _window_sum(squares, d, n_channels, width, 1)
                _forward_power_float(x_row, y_row, d, n_channels, a, k, path, beta)
                continue
        _divisors(x_row, squares, d, n_channels, before, width, a, k)
        _inverse_power(d, q, n_channels, path, beta)
        for c in range(n_channels):
            y_row[c] = <floating>(x_row[c] * q[c])


cdef void _backward_rows(const floating* dy, const floating* x, floating* dx,
                         double* scratch, Py_ssize_t row_start, Py_ssize_t row_stop,
                         Py_ssize_t n_channels, Py_ssize_t before, Py_ssize_t after,
                         double a, double k, BetaPath path, double beta,
                         const FloatPath* limits) noexcept nogil:
    cdef Py_ssize_t width = before + after + 1
    cdef double* squares = scratch                                # before + C + after, pads zero
    cdef double* d = squares + _lines(n_channels + width - 1)      # C
    cdef double* q = d + _lines(n_channels)                        # C
    cdef double* p = q + _lines(n_channels)                        # after + C + before, pads zero
    cdef double* g = p + _lines(n_channels + width - 1)            # C
    cdef double two_a_beta = 2.0 * a * beta
    cdef Py_ssize_t r, c
    cdef const floating* x_row
    cdef const floating* dy_row
    cdef floating* dx_row
    for r in range(row_start, row_stop):
        x_row = x + r * n_channels
        dy_row = dy + r * n_channels
        dx_row = dx + r * n_channels
        # p_j = dy_j * y_j / D_j is placed so that the window sum of width
        # `width` starting at i covers the mirrored window [i - after, i + before].
        if floating is float and limits.dy > 0 and _squares(
                x_row, squares + before, n_channels, limits.square) and _within(
                <const float*> dy_row, n_channels, limits.dy):
            _window_sum(squares, d, n_channels, width, 1)
            _backward_power_float(dy_row, x_row, d, <float*>q, p + after, n_channels,
                                  a, k, path, beta)
            _window_sum(p, g, n_channels, width, 1)
            _backward_finish_float(dy_row, x_row, dx_row, <float*>q, g, n_channels,
                                   two_a_beta)
            continue
        _divisors(x_row, squares, d, n_channels, before, width, a, k)
        _inverse_power(d, q, n_channels, path, beta)
        # y_j / D_j in that order: D**(-beta-1) alone can overflow where it does not.
        for c in range(n_channels):
            p[after + c] = <double>dy_row[c] * (<double>x_row[c] * q[c]) / d[c]
        _window_sum(p, g, n_channels, width, 1)
        for c in range(n_channels):
            dx_row[c] = <floating>(dy_row[c] * q[c] - two_a_beta * x_row[c] * g[c])


# ---------------------------------------------------------------------------
# float32 fast path: the sums as everywhere in double, the power in float.
# Taken for rows whose squares are all <= square_limit (float_square_limit):
# every divisor and its powers are then normal floats. A row that fails the
# check goes the double way; nothing is written before the check, so in-place
# calls stay exact.

cdef union FloatBits:
    float value
    uint32_t bits


cdef inline float _exponent_high(float exponent) noexcept nogil:
    # exponent with its low 8 mantissa bits cleared: 16 significant bits, so its
    # product with an integer of at most 8 bits is exact in float.
    cdef FloatBits u
    u.value = exponent
    u.bits = u.bits & <uint32_t>0xffffff00
    return u.value


cdef inline float _power_float(float d, float exponent, float exponent_high) noexcept nogil:
    # d**exponent as exp2(exponent * log2(d)) with polynomials, for the general
    # beta of the float path: branch-free, so the channel loop vectorises (a
    # libm powf call would not). Valid for normal d > 0 and |exponent*log2(d)|
    # < 126, which float_square_limit guarantees. With d = m * 2**e:
    # log2(m) for m in [sqrt(1/2), sqrt(2)) by a degree-8 fit (error 4e-8);
    # exponent*e is split as exponent_high*e (exact) + the rest, so the integer
    # part of the product is taken exactly and only a small remainder carries
    # float rounding; exp2 of the fraction in [-1/2, 1/2] by a degree-6 fit
    # (error 2e-8). Relative error below 1e-6 (tested against the reference).
    cdef FloatBits u
    cdef float magic = 12582912.0  # 1.5 * 2**23: adding it rounds to an integer
    u.value = d
    cdef uint32_t mantissa = u.bits & 0x7fffff
    cdef uint32_t above = mantissa > 0x3504f3  # m > sqrt(2): take m/2, exponent + 1
    cdef float e = <float>(<int32_t>(u.bits >> 23) - 127 + <int32_t>above)
    u.bits = mantissa | (<uint32_t>0x3f800000 - (above << 23))
    cdef float t = u.value - <float>1.0
    cdef float p = <float>-0.1443716436624527
    p = p * t + <float>0.23131930828094482
    p = p * t + <float>-0.24826620519161224
    p = p * t + <float>0.28739508986473083
    p = p * t + <float>-0.3603087365627289
    p = p * t + <float>0.48091503977775574
    p = p * t + <float>-0.7213515043258667
    p = p * t + <float>1.4426950216293335
    cdef float z_high = exponent_high * e  # exact
    cdef float whole_high = (z_high + magic) - magic
    cdef float z_low = ((z_high - whole_high) + (exponent - exponent_high) * e
                        + exponent * (t * p))  # |z_low| < 1 + |exponent|
    cdef float whole_low = (z_low + magic) - magic
    cdef float fraction = z_low - whole_low
    cdef float q = <float>0.0001546531857457012
    q = q * fraction + <float>0.0013395285932347178
    q = q * fraction + <float>0.009618040174245834
    q = q * fraction + <float>0.05550340563058853
    q = q * fraction + <float>0.24022650718688965
    q = q * fraction + <float>0.6931471824645996
    q = q * fraction + <float>1.0
    u.bits = <uint32_t>(<int32_t>whole_high + <int32_t>whole_low + 127) << 23
    return q * u.value


cdef void _backward_finish_float(const float* dy_row, const float* x_row, float* dx_row,
                                 const float* q, const double* g, Py_ssize_t n_channels,
                                 double two_a_beta) noexcept nogil:
    # dx = dy*q - x * (2*a*beta * g), g the mirrored window sums (double),
    # finite for rows within FloatPath's limits. 2*a*beta * g is formed in
    # double and rounded once, then times x: (2*a*beta * x) * g in float had a
    # subnormal factor where the term is not (alpha 1.2e-7, x -1.2e-38:
    # -2.4e-45, two bits, a 16% error once times g 1.5e8; found by the fuzzer).
    cdef Py_ssize_t c
    for c in range(n_channels):
        dx_row[c] = dy_row[c] * q[c] - x_row[c] * <float>(two_a_beta * g[c])


def power_float32(const float[::1] d, float exponent, float[::1] out):
    """out = d**exponent by the float path's polynomial power (for the tests)."""
    cdef Py_ssize_t i
    cdef float high = _exponent_high(exponent)
    for i in range(d.shape[0]):
        out[i] = _power_float(d[i], exponent, high)


cdef void _forward_power_float(const float* x_row, float* y_row, const double* sums,
                               Py_ssize_t n_channels, double a, double k,
                               BetaPath path, double beta) noexcept nogil:
    # y = x * D**-beta with D = k + a*sums rounded once to float.
    cdef Py_ssize_t c
    cdef float d, r, high
    if path == BETA_THREE_QUARTERS and AVX512_KERNELS:
        _forward_075_simd(x_row, y_row, sums, n_channels, a, k)
    elif path == BETA_THREE_QUARTERS:
        for c in range(n_channels):
            d = <float>(k + a * sums[c])
            r = sqrtf(d)
            y_row[c] = x_row[c] / (r * sqrtf(r))
    elif path == BETA_HALF:
        for c in range(n_channels):
            y_row[c] = x_row[c] / sqrtf(<float>(k + a * sums[c]))
    elif path == BETA_ONE:
        for c in range(n_channels):
            y_row[c] = x_row[c] / <float>(k + a * sums[c])
    else:
        high = _exponent_high(<float>-beta)
        for c in range(n_channels):
            y_row[c] = x_row[c] * _power_float(<float>(k + a * sums[c]), <float>-beta, high)


cdef void _backward_power_float(const float* dy_row, const float* x_row,
                                const double* sums, float* q, double* p,
                                Py_ssize_t n_channels, double a, double k,
                                BetaPath path, double beta) noexcept nogil:
    # q = D**-beta and p = dy * x * D**(-beta-1), in float from D = k + a*sums
    # rounded once to float (q1 = D**(-beta-1), q = D * q1); p is stored in
    # double, to be summed in double. The row's |dy| <= FloatPath.dy keeps
    # every float product finite (_float_dy_limit).
    cdef Py_ssize_t c
    cdef float d, r, q1, high
    if path == BETA_THREE_QUARTERS and AVX512_KERNELS:
        _backward_075_simd(dy_row, x_row, sums, q, p, n_channels, a, k)
    elif path == BETA_THREE_QUARTERS:
        for c in range(n_channels):
            d = <float>(k + a * sums[c])
            r = sqrtf(d)
            q1 = <float>1.0 / (d * r * sqrtf(r))
            q[c] = d * q1
            p[c] = dy_row[c] * x_row[c] * q1
    elif path == BETA_HALF:
        for c in range(n_channels):
            d = <float>(k + a * sums[c])
            q1 = <float>1.0 / (d * sqrtf(d))
            q[c] = d * q1
            p[c] = dy_row[c] * x_row[c] * q1
    elif path == BETA_ONE:
        for c in range(n_channels):
            d = <float>(k + a * sums[c])
            q1 = <float>1.0 / (d * d)
            q[c] = d * q1
            p[c] = dy_row[c] * x_row[c] * q1
    else:
        high = _exponent_high(<float>(-beta - 1.0))
        for c in range(n_channels):
            d = <float>(k + a * sums[c])
            q1 = _power_float(d, <float>(-beta - 1.0), high)
            q[c] = d * q1
            p[c] = dy_row[c] * x_row[c] * q1


cdef struct FloatPath:
    # When a row (a pixel of a planar tile) takes the float32 path: all its
    # squares x**2 <= square, and in the backward all |dy| <= dy.
    double square
    double dy


def float_square_limit(double a, double k, double beta, Py_ssize_t width):
    """Largest x**2 for which the float32 fast path is exact enough, or 0 for none."""
    return _float_square_limit(a, k, beta, width)


cdef double _float_square_limit(double a, double k, double beta,
                                Py_ssize_t width) noexcept nogil:
    # With a >= 0 every divisor lies in [k, k + a*width*limit]. The float path
    # is taken when that interval keeps D**-beta and D**(-beta-1) in float's
    # normal range: |log10 D| <= 36 / (|beta| + 1).
    if a < 0 or beta != beta:
        return 0.0
    cdef double bound = pow(10.0, 36.0 / (fabs(beta) + 1.0))
    if not (1.0 / bound <= k < bound):
        return 0.0
    if a == 0:
        return 1e300
    # At most 1e300: with a tiny a (5e-324, say) the quotient overflowed to inf,
    # and x = inf (x**2 <= inf) took the float path, whose polynomial power of
    # D = inf gave -2**64 (y = -1.8e19 for an expected 0; NaN at beta 0.75).
    return min((bound - k) / (a * width), 1e300)


def float_dy_limit(double a, double k, double beta, Py_ssize_t width):
    """Largest |dy| for which the backward's float32 path cannot overflow, or 0 for none."""
    return _float_dy_limit(a, k, beta, width, _float_square_limit(a, k, beta, width))


cdef double _float_dy_limit(double a, double k, double beta, Py_ssize_t width,
                            double square_limit) noexcept nogil:
    # The backward's float path computes p = dy*x*D**(-beta-1) and
    # dx = dy*q - x*(2*a*beta*g) (g: window sums of p) in float. For rows with
    # x**2 <= square_limit, |x| <= X and D lies in [k, Dmax], so
    # |q| <= Q, |D**(-beta-1)| <= Q1, |p| <= |dy|*X*Q1 and |g| <= width*|p|:
    # every intermediate stays below FLT_MAX/4 for |dy| up to the returned
    # limit, a power of two (so a float compares with it exactly, row or
    # planar pixel alike). A row with a larger |dy| (e.g. 1e20, or near
    # float's largest value) takes the double path, as a row with a large x does.
    if square_limit <= 0:
        return 0.0
    cdef double x_max = min(sqrt(square_limit), <double>FLT_MAX)
    cdef double d_max = k + a * width * x_max * x_max
    cdef double q = max(pow(k, -beta), pow(d_max, -beta))
    cdef double q1 = max(pow(k, -beta - 1.0), pow(d_max, -beta - 1.0))
    cdef double scale = 2.0 * a * fabs(beta) * x_max
    if not scale < FLT_MAX / 4:
        return 0.0
    cdef double worst = max(max(1.0, q), x_max * max(1.0, q1 * width * max(1.0, scale)))
    # and 2*a*beta * g, rounded to float before x multiplies it
    # (_backward_finish_float): larger than the term where x_max < 1.
    worst = max(worst, q1 * width * scale)
    cdef int exponent
    if not worst < INFINITY:
        return 0.0
    frexp((FLT_MAX / 4) / worst, &exponent)
    return ldexp(1.0, exponent - 1)


cdef inline bint _within(const float* values, Py_ssize_t n, double limit) noexcept nogil:
    # True if all |values| <= limit (a NaN is not).
    cdef Py_ssize_t c
    cdef int bad = 0
    cdef float bound = <float>limit  # a power of two within float's range: exact
    for c in range(n):
        bad |= not (fabsf(values[c]) <= bound)
    return not bad


cdef inline Py_ssize_t _lines(Py_ssize_t n) noexcept nogil:
    # n doubles rounded up to whole 64-byte cache lines: every scratch array
    # starts on a line (the AVX-512 window sum loads aligned vectors).
    return (n + 7) // 8 * 8


cdef Py_ssize_t _scratch_size(Py_ssize_t n_channels, Py_ssize_t width, bint forward) noexcept nogil:
    # Doubles of one thread's scratch: padded squares, d and q (forward), plus
    # the padded products p and their sums g (backward), each on whole lines.
    if forward:
        return _lines(n_channels + width - 1) + 2 * _lines(n_channels)
    return 2 * _lines(n_channels + width - 1) + 3 * _lines(n_channels)


cdef double* _scratch(Py_ssize_t n_threads, Py_ssize_t per_thread, Py_ssize_t* stride,
                      double** aligned, bint zeroed) except NULL:
    # One scratch row per thread, each a whole number of cache lines plus one
    # line of separation (so no two threads write the same line and the
    # window sums may read a vector past their row), starting on a line:
    # *aligned; all zeros if ``zeroed``, else the caller zeroes what must be
    # (a planar scratch is megabytes: calloc's memset of it took a sixth of a
    # 1x96x55x55 forward). Returns the pointer to free.
    stride[0] = _lines(per_thread) + 8
    cdef size_t count = n_threads * stride[0] + 8
    cdef double* buffer = <double*> (calloc(count, sizeof(double)) if zeroed
                                     else malloc(count * sizeof(double)))
    if buffer == NULL:
        raise MemoryError("cnorm: cannot allocate LRN scratch")
    aligned[0] = <double*> ((<size_t>buffer + 63) // 64 * 64)
    return buffer


cdef void _zero_plane_pads(double* scratch, Py_ssize_t n_channels, Py_ssize_t before,
                           Py_ssize_t after, Py_ssize_t lines) noexcept nogil:
    # The rows of one thread's planar scratch that _planes reads and never
    # writes: the pads of the squares (before, after) and of the products
    # (after, before) around their C rows.
    cdef Py_ssize_t width = before + after + 1
    cdef double* products = scratch + (n_channels + width - 1) * lines
    memset(scratch, 0, before * lines * sizeof(double))
    memset(scratch + (before + n_channels) * lines, 0, after * lines * sizeof(double))
    memset(products, 0, after * lines * sizeof(double))
    memset(products + (after + n_channels) * lines, 0, before * lines * sizeof(double))


def lrn_forward(const floating[:, ::1] x, floating[:, ::1] y, Py_ssize_t before,
                Py_ssize_t after, double a, double k, double beta, int n_threads):
    """y = x * (k + a * window_sum(x**2))**-beta over rows of (M, C) arrays.

    The caller has validated everything: 0 <= before, after < C; x and y of the
    same shape (y may be x); n_threads >= 1.
    """
    if DEBUG_CHECKS:
        _check_memoryviews(x, y, x, before, after, n_threads)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    _run(<const floating*> NULL, &x[0, 0], &y[0, 0],
         CN_FLOAT64 if floating is double else CN_FLOAT32, x.shape[0], x.shape[1], 1,
         before, after, a, k, beta, n_threads)


def lrn_backward(const floating[:, ::1] dy, const floating[:, ::1] x,
                 floating[:, ::1] dx, Py_ssize_t before, Py_ssize_t after, double a,
                 double k, double beta, int n_threads):
    """Gradient of lrn_forward with respect to x, D recomputed from x.

    The caller has validated everything, as for lrn_forward; dx may be dy or x.
    """
    if DEBUG_CHECKS:
        _check_memoryviews(x, dx, dy, before, after, n_threads)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    _run(&dy[0, 0], &x[0, 0], &dx[0, 0], CN_FLOAT64 if floating is double else CN_FLOAT32,
         x.shape[0], x.shape[1], 1, before, after, a, k, beta, n_threads)


cdef int _check_memoryviews(const floating[:, ::1] x, const floating[:, ::1] y,
                            const floating[:, ::1] dy, Py_ssize_t before, Py_ssize_t after,
                            int n_threads) except -1:
    # Debug builds: the (M, C) arrays of lrn_forward / lrn_backward agree in
    # shape and the window fits.
    if y.shape[0] != x.shape[0] or y.shape[1] != x.shape[1] or dy.shape[0] != x.shape[0] \
            or dy.shape[1] != x.shape[1]:
        raise ValueError("cnorm kernel: x, dy and the output differ in shape")
    if x.shape[0] and x.shape[1]:
        check_sizes(x.shape[1], before, after, n_threads)
    return 0


def run(x, dy, y, Py_ssize_t before, Py_ssize_t after, double a, double k, double beta,
        int n_threads, int storage, Py_ssize_t outer, Py_ssize_t n_channels,
        Py_ssize_t inner):
    """lrn_forward (dy None) or lrn_backward on C-contiguous tensors seen as (outer, C, inner).

    The arrays are read through the buffer protocol (cnorm._buffers): no
    reshape and no memoryview objects, so a call costs a fraction of a
    microsecond more than the kernel. The caller has validated everything:
    x, dy and y C-contiguous, of one shape and storage type (``storage``,
    cnorm/_storage.h; bfloat16 as uint16), y writable (y may be x or dy),
    0 <= before, after < C, n_threads >= 1.
    """
    cdef Buffers b = Buffers()
    cdef const void* xp = b.get(x, False)
    cdef void* yp = b.get(y, True)
    cdef const void* dyp = b.get(dy, False)
    if DEBUG_CHECKS:
        b.check(b.count, storage, outer, n_channels, inner, before, after, n_threads)
    if outer * n_channels * inner == 0:
        return
    if storage == CN_FLOAT64:
        _run(<const double*> dyp, <const double*> xp, <double*> yp, storage, outer, n_channels,
             inner, before, after, a, k, beta, n_threads)
    else:
        _run(<const float*> dyp, <const float*> xp, <float*> yp, storage, outer, n_channels,
             inner, before, after, a, k, beta, n_threads)


cdef Py_ssize_t _plane_block(Py_ssize_t n_channels, Py_ssize_t inner,
                             Py_ssize_t outer) noexcept nogil:
    # Pixels per planar tile: about PLANE_TILE_VALUES values, whole vectors;
    # smaller (down to PLANE_SMALL_BLOCK pixels) where that leaves fewer than
    # PLANE_MIN_TILES tiles, so that a batch of one still keeps every thread
    # busy (1x96x55x55 made 5 tiles: 3 for one thread, 2 for the other).
    cdef Py_ssize_t block = _plane_tile_values // max(n_channels, 1)
    cdef Py_ssize_t per_outer
    block = min(max(block, <Py_ssize_t>PLANE_BLOCK_MIN), <Py_ssize_t>PLANE_BLOCK_MAX)
    block = (block + PLANE_BLOCK_MIN - 1) // PLANE_BLOCK_MIN * PLANE_BLOCK_MIN
    if outer * ((inner + block - 1) // block) < PLANE_MIN_TILES:
        per_outer = (PLANE_MIN_TILES + outer - 1) // outer
        block = max((inner + per_outer - 1) // per_outer, <Py_ssize_t>PLANE_SMALL_BLOCK)
        block = (block + PLANE_BLOCK_MIN - 1) // PLANE_BLOCK_MIN * PLANE_BLOCK_MIN
    return min(block, inner)


def plane_block(Py_ssize_t n_channels, Py_ssize_t inner, Py_ssize_t outer=1):
    """Pixels per tile of an (outer, C, inner) tensor with inner > 1 (for the tests)."""
    return _plane_block(n_channels, inner, outer)


cdef Py_ssize_t _plane_scratch_size(Py_ssize_t n_channels, Py_ssize_t width,
                                    Py_ssize_t lines) noexcept nogil:
    # Doubles of one thread's planar scratch (see _planes): squares and
    # products (C + width - 1 rows each), the double and float powers (C rows
    # each), sums, window sums of products, fix-ups and flags (a row each);
    # rows of ``lines`` doubles.
    return (2 * (n_channels + width - 1) + 2 * n_channels + 4) * lines


cdef void _plane_squares(const floating* x, Py_ssize_t row_stride, Py_ssize_t n,
                         Py_ssize_t n_channels, double* squares, Py_ssize_t lines,
                         double square_limit, int* bad) noexcept nogil:
    # squares[c*lines + p] = x[c*row_stride + p]**2 in double; bad[p] = 1 if
    # one of pixel p's squares is above square_limit (or NaN): that pixel
    # takes the double path, as a row of _forward_rows would.
    cdef Py_ssize_t c, p
    cdef double v
    cdef const floating* x_c
    cdef double* sq_c
    for p in range(n):
        bad[p] = 0
    for c in range(n_channels):
        x_c = x + c * row_stride
        sq_c = squares + c * lines
        for p in range(n):
            v = <double>x_c[p] * <double>x_c[p]
            sq_c[p] = v
            bad[p] |= not (v <= square_limit)


cdef void _planes(const floating* dy, const floating* x, floating* out, Py_ssize_t row_stride,
                  Py_ssize_t n, Py_ssize_t n_channels, Py_ssize_t before, Py_ssize_t after,
                  double a, double k, BetaPath path, double beta, const FloatPath* limits,
                  double* scratch, Py_ssize_t lines) noexcept nogil:
    # One planar tile (inner > 1): n pixels of every channel, channel c's run
    # at c*row_stride; forward (dy NULL) or backward, out may be x or dy. The
    # per-element arithmetic of _forward_rows and _backward_rows, with the
    # window across channel rows; a pixel whose squares fail the float path's
    # check (or, in the backward, whose dy does) is computed in double, as
    # that pixel's row would be, so every element has the bits it has in the
    # channels-last layout.
    cdef Py_ssize_t width = before + after + 1, c, p
    cdef double* squares = scratch                               # rows: before pads, C, after pads
    cdef double* products = squares + (n_channels + width - 1) * lines   # after pads, C, before pads
    cdef double* q = products + (n_channels + width - 1) * lines          # C rows
    cdef float* q_float = <float*> (q + n_channels * lines)              # C rows (of floats)
    cdef double* sums = q + 2 * n_channels * lines
    cdef double* g = sums + lines
    cdef double* fix = g + lines
    cdef int* bad = <int*> (fix + lines)
    cdef double two_a_beta = 2.0 * a * beta, d, qd
    cdef bint float_path = floating is float and (limits.square > 0 if dy == NULL
                                                  else limits.dy > 0)
    cdef bint any_bad = False
    cdef const floating* x_c
    cdef const floating* dy_c
    cdef floating* out_c
    _plane_squares(x, row_stride, n, n_channels, squares + before * lines, lines,
                   limits.square if float_path else INFINITY, bad)
    if float_path and dy != NULL:
        for c in range(n_channels):
            dy_c = dy + c * row_stride
            for p in range(n):
                bad[p] |= not (fabsf(<float>dy_c[p]) <= <float>limits.dy)
    if float_path:
        for p in range(n):
            any_bad |= bad[p]
    for c in range(n_channels):
        x_c = x + c * row_stride
        _window_sum(squares + c * lines, sums, n, width, lines)
        if dy == NULL:
            out_c = out + c * row_stride
            if floating is float:
                if float_path:
                    if any_bad:  # before the float path writes (out may be x)
                        for p in range(n):
                            if bad[p]:
                                fix[p] = x_c[p] * _inverse_power_one(k + a * sums[p], path, beta)
                    _forward_power_float(x_c, out_c, sums, n, a, k, path, beta)
                    if any_bad:
                        for p in range(n):
                            if bad[p]:
                                out_c[p] = <floating>fix[p]
                    continue
            for p in range(n):
                sums[p] = k + a * sums[p]
            _inverse_power(sums, q, n, path, beta)
            for p in range(n):
                out_c[p] = <floating>(x_c[p] * q[p])
            continue
        dy_c = dy + c * row_stride
        if floating is float:
            if float_path:
                _backward_power_float(dy_c, x_c, sums, q_float + c * lines,
                                      products + (after + c) * lines, n, a, k, path, beta)
                if any_bad:
                    for p in range(n):
                        if bad[p]:
                            d = k + a * sums[p]
                            qd = _inverse_power_one(d, path, beta)
                            q[c * lines + p] = qd
                            products[(after + c) * lines + p] = <double>dy_c[p] * (
                                <double>x_c[p] * qd) / d
                continue
        for p in range(n):
            sums[p] = k + a * sums[p]
        _inverse_power(sums, q + c * lines, n, path, beta)
        for p in range(n):
            products[(after + c) * lines + p] = <double>dy_c[p] * (
                <double>x_c[p] * q[c * lines + p]) / sums[p]
    if dy == NULL:
        return
    for c in range(n_channels):
        x_c = x + c * row_stride
        dy_c = dy + c * row_stride
        out_c = out + c * row_stride
        # the mirrored window [c - after, c + before], as in _backward_rows
        _window_sum(products + c * lines, g, n, width, lines)
        if floating is float:
            if float_path:
                if any_bad:
                    for p in range(n):
                        if bad[p]:
                            fix[p] = (dy_c[p] * q[c * lines + p]
                                      - two_a_beta * x_c[p] * g[p])
                _backward_finish_float(dy_c, x_c, out_c, q_float + c * lines, g, n,
                                       two_a_beta)
                if any_bad:
                    for p in range(n):
                        if bad[p]:
                            out_c[p] = <floating>fix[p]
                continue
        for p in range(n):
            out_c[p] = <floating>(dy_c[p] * q[c * lines + p] - two_a_beta * x_c[p] * g[p])


cdef void _run(const floating* dyp, const floating* xp, floating* yp, int storage,
               Py_ssize_t outer, Py_ssize_t n_channels, Py_ssize_t inner, Py_ssize_t before,
               Py_ssize_t after, double a, double k, double beta, int n_threads) except *:
    # The driver of forward (dyp NULL) and backward over the (outer, C, inner)
    # view: tiles of rows (inner == 1) or of pixel blocks of one outer index
    # (inner > 1) over n_threads (static), or serially below SERIAL_ELEMENTS;
    # one scratch per thread, allocated before the parallel region. Half-
    # precision data is loaded tile by tile into the thread's float scratch,
    # computed there in place by the float kernels and stored back, rounded once.
    cdef Py_ssize_t width = before + after + 1
    cdef Py_ssize_t rows = _rows_per_chunk(n_channels)
    cdef Py_ssize_t block = _plane_block(n_channels, inner, outer)
    cdef Py_ssize_t per_outer = (inner + block - 1) // block
    cdef Py_ssize_t tiles = ((outer + rows - 1) // rows if inner == 1 else outer * per_outer)
    cdef Py_ssize_t tile_values = rows * n_channels if inner == 1 else block * n_channels
    cdef Py_ssize_t lines = _lines(block)
    cdef Py_ssize_t t, stride, kernel_size, half_size = 0
    cdef BetaPath path = _beta_path(beta)
    cdef FloatPath limits
    limits.square = _float_square_limit(a, k, beta, width)
    limits.dy = _float_dy_limit(a, k, beta, width, limits.square)
    cdef bint forward = dyp == NULL
    if outer * n_channels * inner < SERIAL_ELEMENTS:
        n_threads = 1
    n_threads = <int>min(<Py_ssize_t>n_threads, tiles)
    kernel_size = (_scratch_size(n_channels, width, forward) if inner == 1
                   else _plane_scratch_size(n_channels, width, lines))
    if cn_is_half(storage):
        half_size = _lines((1 if forward else 2) * ((tile_values + 1) // 2 + 8))
    cdef double* scratch
    cdef double* allocated = _scratch(n_threads, kernel_size + half_size, &stride, &scratch,
                                      inner == 1)
    if inner > 1:
        for t in range(n_threads):
            _zero_plane_pads(scratch + t * stride, n_channels, before, after, lines)
    try:
        if n_threads == 1:
            with nogil:
                for t in range(tiles):
                    _run_tile(dyp, xp, yp, storage, outer, n_channels, inner, t, rows, block,
                              per_outer, scratch, kernel_size, lines, before, after, a, k,
                              path, beta, &limits)
        else:
            for t in prange(tiles, nogil=True, schedule="static", num_threads=n_threads):
                _run_tile(dyp, xp, yp, storage, outer, n_channels, inner, t, rows, block,
                          per_outer, scratch + threadid() * stride, kernel_size, lines,
                          before, after, a, k, path, beta, &limits)
    finally:
        free(allocated)


cdef void _run_tile(const floating* dyp, const floating* xp, floating* yp, int storage,
                    Py_ssize_t outer, Py_ssize_t n_channels, Py_ssize_t inner, Py_ssize_t t,
                    Py_ssize_t rows, Py_ssize_t block, Py_ssize_t per_outer, double* scratch,
                    Py_ssize_t kernel_size, Py_ssize_t lines, Py_ssize_t before,
                    Py_ssize_t after, double a, double k, BetaPath path, double beta,
                    const FloatPath* limits) noexcept nogil:
    # Tile t: rows [t*rows, ...) (inner == 1), or pixels [p0, p0 + n) of outer
    # index o (inner > 1), channel c's run at (o*C + c)*inner + p0.
    cdef Py_ssize_t start, n, o, p0, c, values, run_stride
    cdef bint half = cn_is_half(storage)
    cdef size_t item = cn_item_size(storage)
    cdef float* x_s = <float*> (scratch + kernel_size)
    cdef float* dy_s = NULL
    cdef const floating* dy_t = NULL
    cdef const floating* x_t
    cdef floating* y_t
    if inner == 1:
        start = t * rows
        n = min(rows, outer - start)
        values = n * n_channels
        if not half:
            _run_rows(dyp, xp, yp, scratch, start, start + n, n_channels, before, after, a, k,
                      path, beta, limits)
            return
        dy_s = x_s + (values + 15) // 16 * 16
        cn_load_run(storage, <const char*> xp + start * n_channels * item, x_s, values)
        if dyp != NULL:
            cn_load_run(storage, <const char*> dyp + start * n_channels * item, dy_s, values)
        _run_rows(<const floating*> (NULL if dyp == NULL else dy_s), <const floating*> x_s,
                  <floating*> x_s, scratch, 0, n, n_channels, before, after, a, k, path, beta,
                  limits)
        cn_store_run(storage, x_s, <char*> yp + start * n_channels * item, values)
        return
    o = t // per_outer
    p0 = (t % per_outer) * block
    n = min(block, inner - p0)
    start = o * n_channels * inner + p0
    if not half:
        _planes(NULL if dyp == NULL else dyp + start, xp + start, yp + start, inner, n,
                n_channels, before, after, a, k, path, beta, limits, scratch, lines)
        return
    dy_s = x_s + n_channels * block
    for c in range(n_channels):
        cn_load_run(storage, <const char*> xp + (start + c * inner) * item, x_s + c * n, n)
        if dyp != NULL:
            cn_load_run(storage, <const char*> dyp + (start + c * inner) * item, dy_s + c * n, n)
    _planes(<const floating*> (NULL if dyp == NULL else dy_s), <const floating*> x_s,
            <floating*> x_s, n, n, n_channels, before, after, a, k, path, beta, limits, scratch,
            lines)
    for c in range(n_channels):
        cn_store_run(storage, x_s + c * n, <char*> yp + (start + c * inner) * item, n)


cdef inline void _run_rows(const floating* dyp, const floating* xp, floating* yp,
                           double* scratch, Py_ssize_t row_start, Py_ssize_t row_stop,
                           Py_ssize_t n_channels, Py_ssize_t before, Py_ssize_t after,
                           double a, double k, BetaPath path, double beta,
                           const FloatPath* limits) noexcept nogil:
    if dyp == NULL:
        _forward_rows(xp, yp, scratch, row_start, row_stop, n_channels, before, after, a,
                      k, path, beta, limits.square)
    else:
        _backward_rows(dyp, xp, yp, scratch, row_start, row_stop, n_channels, before,
                       after, a, k, path, beta, limits)
