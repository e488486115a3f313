"""The arrays of one kernel call, read through the buffer protocol.

The kernel entry points (cnorm._lrn.run, cnorm._batchnorm's normalize,
batch_stats and backward) take the caller's arrays as they are, channels last
and of any ndim, through a ``Buffers``: no reshape, no memoryview objects and
no fused-type lookup, so a call costs little more than its work. The buffers
are released when the ``Buffers`` goes, however the call ends. The callers
have validated the arrays (C-contiguous, float32/float64, shapes). A debug
build (DEBUG_CHECKS) checks that too, in ``Buffers.check`` and
``check_sizes``, and raises ValueError where a release build trusts.
"""
from libc.float cimport FLT_MAX, FLT_MIN
from libc.math cimport INFINITY, fabs
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)


cdef int _overlap(const Py_buffer* a, object b) except -1:
    # 0: b shares no memory with a; 1: exactly a's (same start and size); 2: partly.
    cdef Py_buffer view
    cdef const char* start_a = <const char*> a.buf
    cdef const char* start_b
    PyObject_GetBuffer(b, &view, PyBUF_C_CONTIGUOUS)
    start_b = <const char*> view.buf
    cdef int result = 0
    if a.len == 0 or view.len == 0:
        result = 0
    elif start_a == start_b and a.len == view.len:
        result = 1
    elif start_a < start_b + view.len and start_b < start_a + a.len:
        result = 2
    PyBuffer_Release(&view)
    return result


def partial_overlap(out, x, dy=None):
    """Which input a C-contiguous ``out`` partly overlaps: 0 none, 1 x, 2 dy.

    Being an input exactly (same start and size) is no overlap. A fraction of
    numpy.may_share_memory's cost.
    """
    cdef Py_buffer view
    PyObject_GetBuffer(out, &view, PyBUF_C_CONTIGUOUS)
    try:
        if _overlap(&view, x) == 2:
            return 1
        if dy is not None and _overlap(&view, dy) == 2:
            return 2
        return 0
    finally:
        PyBuffer_Release(&view)


import os

import numpy

from cnorm._openmp cimport omp_get_max_threads

cdef object _ndarray = numpy.ndarray
cdef object _empty = numpy.empty

# The most threads a call uses, whatever n_threads asks (cnorm._validation says why).
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))
cdef int _max_threads = MAX_THREADS

globals()["FLOAT32_MIN_EPS"] = FLOAT32_MIN_EPS  # (see _buffers.pxd)


# ---------------------------------------------------------------------------
# Plain calls: the common case of every public function and layer, checked in C
#
# A plain call has x a C-contiguous, aligned, native float64, float32 or
# float16 numpy.ndarray, not empty, with its channels on a valid int axis;
# `out` None or an ndarray of x's shape and storage, C-contiguous, aligned,
# writable, and x (or dy) exactly or disjoint from both; n_threads None or an
# int >= 1. For such a call these functions give what the checked path
# (cnorm._layout, cnorm._validation) would; for any other call they return
# None (or -1) and the caller takes the checked path, which converts what it
# may and raises the errors. So the checks of a call are written once, in
# Python, and this is only a faster way to a result they would accept.

cdef int storage_of(const Py_buffer* view) noexcept:
    # The storage code (cnorm/_storage.h) of a native float64/float32/float16
    # buffer aligned to its item size, else -1 (bfloat16 and anything else
    # take the checked path).
    if view.format == NULL or view.format[0] == 0 or view.format[1] != 0:
        return -1
    if (<size_t> view.buf) % <size_t> view.itemsize != 0:
        return -1
    if view.format[0] == b"d":
        return 0
    if view.format[0] == b"f":
        return 1
    if view.format[0] == b"e":
        return 2
    return -1


cdef inline bint _apart(const Py_buffer* a, const Py_buffer* b) noexcept:
    # a is b's memory exactly, or disjoint from it.
    cdef const char* start_a = <const char*> a.buf
    cdef const char* start_b = <const char*> b.buf
    return ((start_a == start_b and a.len == b.len)
            or start_a + a.len <= start_b or start_b + b.len <= start_a)


cdef object plain_output(object x, const Py_buffer* xv, object out, object dy,
                         bint* in_place):
    # `out` if it is a usable output for x (and dy, when not None: a plain
    # array of x's shape and storage); a new array if out is None; None
    # otherwise. ``in_place`` tells whether the output is x's memory.
    cdef Py_buffer ov, dv
    cdef int i
    cdef bint ok
    in_place[0] = False
    if out is None:
        return _empty(x.shape, x.dtype)
    if type(out) is not _ndarray:
        return None
    try:
        PyObject_GetBuffer(out, &ov, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE)
    except (BufferError, ValueError, TypeError):
        return None
    ok = (ov.ndim == xv.ndim and storage_of(&ov) == storage_of(xv) and ov.len == xv.len)
    if ok:
        for i in range(ov.ndim):
            if ov.shape[i] != xv.shape[i]:
                ok = False
                break
    if ok:
        in_place[0] = ov.buf == xv.buf
        ok = _apart(&ov, xv)
    if ok and dy is not None:
        try:
            PyObject_GetBuffer(dy, &dv, PyBUF_C_CONTIGUOUS)
        except (BufferError, ValueError, TypeError):
            ok = False
        else:
            ok = _apart(&ov, &dv)
            PyBuffer_Release(&dv)
    PyBuffer_Release(&ov)
    return out if ok else None


cdef int plain_threads(object n_threads) except -2:
    # The thread count of a valid n_threads, capped at MAX_THREADS; -1 if the
    # checked path must judge it.
    if n_threads is None:
        return omp_get_max_threads()
    if type(n_threads) is int and n_threads >= 1:
        return n_threads if n_threads <= _max_threads else _max_threads
    return -1


cdef int plain_view(object x, object axis, int min_ndim, Py_ssize_t n_channels,
                    Py_buffer* xv, Py_ssize_t* view) except -2:
    # 0 with the buffer of a plain x taken into ``xv`` (the caller releases
    # it) and the kernels' view in ``view`` (storage, outer, channels,
    # inner), if x is a plain tensor of ndim >= min_ndim with n_channels
    # channels (any, if n_channels is -1) on `axis`; -1 (no buffer held) if not.
    cdef int i, ndim, ax
    if type(x) is not _ndarray or type(axis) is not int:
        return -1
    try:
        PyObject_GetBuffer(x, xv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, ValueError, TypeError):
        return -1
    ndim = xv.ndim
    ax = -1
    if -ndim <= axis < ndim:
        ax = axis + ndim if axis < 0 else axis
    view[0] = storage_of(xv)
    if (ndim < min_ndim or xv.len == 0 or ax < 0 or view[0] < 0
            or (n_channels >= 0 and xv.shape[ax] != n_channels)):
        PyBuffer_Release(xv)
        return -1
    view[1] = 1
    view[2] = xv.shape[ax]
    view[3] = 1
    for i in range(ax):
        view[1] *= xv.shape[i]
    for i in range(ax + 1, ndim):
        view[3] *= xv.shape[i]
    return 0


cdef object plain_call(object x, object out, object dy, object n_threads, object axis,
                       int min_ndim, Py_ssize_t n_channels, Py_ssize_t* view, int* threads,
                       bint* in_place):
    # The output of a plain call (see above; dy None or a plain array of x's
    # shape and storage that the caller has checked), with the kernels' view
    # of x in ``view``, the thread count and whether the output is x's memory;
    # None for any other call.
    cdef Py_buffer xv
    if plain_view(x, axis, min_ndim, n_channels, &xv, view) < 0:
        return None
    try:
        y = plain_output(x, &xv, out, dy, in_place)
    finally:
        PyBuffer_Release(&xv)
    if y is None:
        return None
    threads[0] = plain_threads(n_threads)
    return None if threads[0] < 0 else y


cdef object _UINT16 = numpy.dtype(numpy.uint16)


cdef class Tensor:
    """A validated tensor argument in the kernels' terms (made by
    cnorm._layout.tensor, or for a plain call by `plain`).

    Attributes
    ----------
    array : numpy.ndarray
        The data in the caller's shape (a copy if it had to be made contiguous).
    memory : numpy.ndarray
        The same data in memory order, C-contiguous.
    order : tuple of int or None
        The axes of `array` in memory order (None: C order).
    storage : int
        The storage code (cnorm/_storage.h, cnorm._layout.STORAGE).
    outer, channels, inner : int
        The ``(outer, C, inner)`` view.
    """

    cdef public object array, memory, order
    cdef public int storage
    cdef public Py_ssize_t outer, channels, inner

    def buffer(self, array=None):
        """`array` (default: this tensor) in memory order, as the kernels take it."""
        if array is None:
            memory = self.memory
        elif self.order is None:
            memory = array
        else:
            memory = array.transpose(self.order)
        return memory.view(_UINT16) if self.storage == 3 else memory

    @property
    def shape(self):
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype


def plain(x, out, n_threads, axis, Py_ssize_t min_ndim, dy=None):
    """``(y, threads, tensor)`` for a plain call of the public functions (the
    block comment above), or None: take the checked path.

    y is `out`, or a new array of x's shape and dtype if out is None; tensor
    is x's `Tensor` (C order, its view).
    """
    cdef Py_ssize_t view[4]
    cdef int threads
    cdef bint in_place
    y = plain_call(x, out, dy, n_threads, axis, min_ndim, -1, view, &threads, &in_place)
    if y is None:
        return None
    cdef Tensor t = Tensor.__new__(Tensor)
    t.array = t.memory = x
    t.order = None
    t.storage = <int> view[0]
    t.outer = view[1]
    t.channels = view[2]
    t.inner = view[3]
    return y, threads, t


cdef bint plain_like_x(object value, object x) except -1:
    # Whether `value` (dy) is a plain tensor of x's shape and storage (x as
    # plain_view accepted it): the backward's dy needs no conversion.
    cdef Py_buffer xv, dv
    cdef int i
    cdef bint ok
    if type(value) is not _ndarray:
        return False
    try:
        PyObject_GetBuffer(value, &dv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, ValueError, TypeError):
        return False
    try:
        PyObject_GetBuffer(x, &xv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, ValueError, TypeError):
        PyBuffer_Release(&dv)
        return False
    ok = (dv.ndim == xv.ndim and storage_of(&dv) == storage_of(&xv) and storage_of(&dv) >= 0
          and dv.len == xv.len)
    if ok:
        for i in range(dv.ndim):
            if dv.shape[i] != xv.shape[i]:
                ok = False
                break
    PyBuffer_Release(&xv)
    PyBuffer_Release(&dv)
    return ok


def plain_like(value, x):
    """True if `value` (dy) is a plain tensor of x's shape and storage (x as
    `plain` accepted it): the backward's dy needs no conversion."""
    return plain_like_x(value, x)


def finite_floats(*values):
    """True if every value is a Python float (not a subclass) and finite: the
    scalar parameters' common case (cnorm._validation.finite_real checks the rest)."""
    cdef double v
    for value in values:
        if type(value) is not float:
            return False
        v = value
        if not fabs(v) < INFINITY:
            return False
    return True


cdef int plain_vector(object array, Py_ssize_t n, bint scan) except -2:
    # -1 unless `array` is a numpy.ndarray holding a C-contiguous, 8-byte
    # aligned native float64 vector of length n; else 1 if ``scan`` and it
    # holds a finite nonzero value outside float32's normal range, 0 if not.
    cdef Py_buffer view
    cdef Py_ssize_t i
    cdef const double* data
    cdef double magnitude
    cdef int result = 0
    if type(array) is not _ndarray:
        return -1
    try:
        PyObject_GetBuffer(array, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, ValueError, TypeError):  # NumPy: strided, or no buffer format
        return -1
    if not (view.ndim == 1 and view.shape[0] == n and view.format != NULL
            and view.format[0] == b"d" and view.format[1] == 0
            and <size_t>view.buf % sizeof(double) == 0):
        result = -1
    elif scan:
        data = <const double*> view.buf
        for i in range(n):
            magnitude = fabs(data[i])
            if magnitude != 0 and (magnitude < FLT_MIN or FLT_MAX < magnitude < INFINITY):
                result = 1
                break
    PyBuffer_Release(&view)
    return result


def float64_vectors(Py_ssize_t n, *arrays):
    """True if every one of ``arrays`` that is not None is a numpy.ndarray holding a
    C-contiguous, 8-byte aligned native float64 vector of length n: the
    per-channel arguments' common case, checked at once (the callers check one
    by one otherwise)."""
    for array in arrays:
        if array is not None and plain_vector(array, n, False) < 0:
            return False
    return True


def plain_vectors(Py_ssize_t n, bint scan, *arrays):
    """None unless every one of ``arrays`` that is not None is a plain float64
    vector of length n (as `float64_vectors`); then, if ``scan``, whether one
    holds a finite nonzero value outside float32's normal range (above its
    largest value or below its smallest normal one, 1.2e-38), else False: both
    checks of the per-channel arguments in one pass. float32 data are
    normalized in float64 where one is: coefficients rounded to float32 would
    be inf or lose their precision (NaN and inf are the same in both types)."""
    cdef int state
    cdef bint unsafe = False
    for array in arrays:
        if array is not None:
            state = plain_vector(array, n, scan and not unsafe)
            if state < 0:
                return None
            unsafe = unsafe or state == 1
    return unsafe


def first_negative(values):
    """Index of the first value < 0 of a C-contiguous, aligned float64 array, or
    -1 (NaN is not negative); -2 if `values` is not such an array."""
    cdef Py_buffer view
    cdef Py_ssize_t i
    cdef const double* data
    try:
        PyObject_GetBuffer(values, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, ValueError, TypeError):
        return -2
    try:
        if (view.format == NULL or view.format[0] != b"d" or view.format[1] != 0
                or <size_t>view.buf % sizeof(double) != 0):
            return -2
        data = <const double*> view.buf
        for i in range(view.len // <Py_ssize_t>sizeof(double)):
            if data[i] < 0:
                return i
        return -1
    finally:
        PyBuffer_Release(&view)


# Item size and buffer format per storage code (cnorm/_storage.h, _layout.STORAGE).
cdef const char* _FORMATS = b"dfeH"
cdef Py_ssize_t[4] _ITEM_SIZES
_ITEM_SIZES[:] = [8, 4, 2, 2]


cdef class Buffers:
    """Buffers of up to ten arrays; views[0] is the first one taken (the tensor)."""

    cdef void* get(self, object array, bint writable) except? NULL:
        # The data of a C-contiguous array; NULL for None.
        if array is None:
            return NULL
        if self.count == 10:
            raise ValueError("cnorm: a kernel call takes at most 10 arrays")
        PyObject_GetBuffer(array, &self.views[self.count],
                           PyBUF_C_CONTIGUOUS | (PyBUF_WRITABLE if writable else 0)
                           | (PyBUF_FORMAT if DEBUG_CHECKS else 0))
        self.count += 1
        return self.views[self.count - 1].buf

    cdef Py_ssize_t channels(self):
        # The last dimension of views[0].
        return self.views[0].shape[self.views[0].ndim - 1]

    cdef Py_ssize_t rows(self):
        # The number of rows of views[0] viewed as (M, C); 0 if it is empty.
        cdef Py_ssize_t n_channels = self.channels()
        return 0 if n_channels == 0 else self.views[0].len // (self.views[0].itemsize
                                                                 * n_channels)

    cdef bint single(self):
        # Whether views[0] holds float32 (else float64).
        return self.views[0].itemsize == sizeof(float)

    cdef int check(self, int n_tensors, int storage, Py_ssize_t outer, Py_ssize_t n_channels,
                   Py_ssize_t inner, Py_ssize_t before, Py_ssize_t after,
                   int n_threads) except -1:
        # Debug builds: the first n_tensors views are tensors of the storage
        # type `storage` (cnorm/_storage.h: float64, float32, float16, or
        # bfloat16 as uint16), each holding outer * n_channels * inner values,
        # aligned, and either the same memory as another or disjoint from it;
        # the other views are aligned float64 vectors of length n_channels; the
        # window (before, after; -1 for none) fits in n_channels.
        cdef int i, j
        cdef const Py_buffer* v
        cdef const char* start_i
        cdef const char* start_j
        cdef Py_ssize_t item = _ITEM_SIZES[storage] if 0 <= storage < 4 else 0
        if not DEBUG_CHECKS:
            return 0
        if item == 0:
            raise ValueError(f"cnorm kernel: unknown storage type {storage}")
        if outer < 0 or n_channels < 0 or inner < 0:
            raise ValueError(f"cnorm kernel: negative view ({outer}, {n_channels}, {inner})")
        if n_tensors < 1 or n_tensors > self.count:
            raise ValueError(f"cnorm kernel: {n_tensors} tensors of {self.count} arrays")
        for i in range(self.count):
            v = &self.views[i]
            if v.format == NULL or v.format[1] != 0:
                raise ValueError(f"cnorm kernel: array {i} has no simple format")
            if <size_t>v.buf % <size_t>v.itemsize:
                raise ValueError(f"cnorm kernel: array {i} is not aligned")
            if i < n_tensors:
                if v.format[0] != _FORMATS[storage] or v.itemsize != item:
                    raise ValueError(f"cnorm kernel: tensor {i} is not of storage {storage}")
                if v.len != outer * n_channels * inner * item:
                    raise ValueError(f"cnorm kernel: tensor {i} holds {v.len} bytes, not "
                                     f"({outer}, {n_channels}, {inner}) values")
                for j in range(i):
                    start_i = <const char*> v.buf
                    start_j = <const char*> self.views[j].buf
                    if (start_i != start_j and start_i < start_j + v.len
                            and start_j < start_i + v.len):
                        raise ValueError(f"cnorm kernel: tensors {j} and {i} partly overlap")
            elif (v.format[0] != b"d" or v.ndim != 1 or v.shape[0] != n_channels):
                raise ValueError(f"cnorm kernel: array {i} is not a float64 vector of "
                                 f"length {n_channels}")
        if outer * n_channels * inner:
            check_sizes(n_channels, before, after, n_threads)
        return 0

    def __dealloc__(self):
        cdef int i
        for i in range(self.count):
            PyBuffer_Release(&self.views[i])


cdef int check_sizes(Py_ssize_t n_channels, Py_ssize_t before, Py_ssize_t after,
                     int n_threads) except -1:
    # Debug builds: 0 <= before, after < C (-1: no window) and n_threads >= 1.
    if not DEBUG_CHECKS:
        return 0
    if n_threads < 1:
        raise ValueError(f"cnorm kernel: n_threads {n_threads} < 1")
    if before != -1 or after != -1:
        if not (0 <= before < n_channels and 0 <= after < n_channels):
            raise ValueError(f"cnorm kernel: window ({before}, {after}) does not fit in "
                             f"{n_channels} channels")
    return 0
