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


import numpy

cdef object _ndarray = numpy.ndarray


def float64_vectors(Py_ssize_t n, *arrays):
    """True if every one of ``arrays`` that is not None is a numpy.ndarray holding a
    C-contiguous, 8-byte aligned native float64 vector of length n: the
    per-channel arguments' common case, checked at once (the callers check one
    by one otherwise)."""
    cdef Py_buffer view
    cdef bint ok
    for array in arrays:
        if array is None:
            continue
        if type(array) is not _ndarray:
            return False
        try:
            PyObject_GetBuffer(array, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        except (BufferError, ValueError, TypeError):  # NumPy: strided, or no buffer format
            return False
        ok = (view.ndim == 1 and view.shape[0] == n and view.format != NULL
              and view.format[0] == b"d" and view.format[1] == 0
              and <size_t>view.buf % sizeof(double) == 0)
        PyBuffer_Release(&view)
        if not ok:
            return False
    return True


def float32_unsafe(*arrays):
    """True if an array (each None, or a C-contiguous aligned float64 vector) holds a
    finite nonzero value outside float32's normal range: above its largest
    value or below its smallest normal one (1.2e-38). float32 data are then
    normalized in float64: coefficients rounded to float32 would be inf or lose
    their precision (NaN and inf are the same in both types)."""
    cdef Py_buffer view
    cdef Py_ssize_t i
    cdef const double* data
    cdef double magnitude
    for array in arrays:
        if array is None:
            continue
        PyObject_GetBuffer(array, &view, PyBUF_C_CONTIGUOUS)
        try:
            data = <const double*> view.buf
            for i in range(view.len // <Py_ssize_t>sizeof(double)):
                magnitude = fabs(data[i])
                if magnitude != 0 and (magnitude < FLT_MIN
                                       or FLT_MAX < magnitude < INFINITY):
                    return True
        finally:
            PyBuffer_Release(&view)
    return False


def first_negative(values):
    """Index of the first value < 0 of a C-contiguous float64 array, or -1 (NaN is not negative)."""
    cdef Py_buffer view
    cdef Py_ssize_t i
    cdef const double* data
    PyObject_GetBuffer(values, &view, PyBUF_C_CONTIGUOUS)
    try:
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
    """Buffers of up to eight arrays; views[0] is the first one taken (the tensor)."""

    cdef void* get(self, object array, bint writable) except? NULL:
        # The data of a C-contiguous array; NULL for None.
        if array is None:
            return NULL
        if self.count == 8:
            raise ValueError("cnorm: a kernel call takes at most 8 arrays")
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
