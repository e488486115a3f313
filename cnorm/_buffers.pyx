"""The arrays of one kernel call, read through the buffer protocol.

The kernel entry points (cnorm._lrn.run, cnorm._batchnorm's normalize,
batch_stats and backward) take the caller's arrays as they are, channels last
and of any ndim, through a ``Buffers``: no reshape, no memoryview objects and
no fused-type lookup, so a call costs little more than its work. The buffers
are released when the ``Buffers`` goes, however the call ends. The callers
have validated the arrays (C-contiguous, float32/float64, shapes).
"""
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


cdef class Buffers:
    """Buffers of up to eight arrays; views[0] is the first one taken (the tensor)."""

    cdef void* get(self, object array, bint writable) except? NULL:
        # The data of a C-contiguous array; NULL for None.
        if array is None:
            return NULL
        PyObject_GetBuffer(array, &self.views[self.count],
                           PyBUF_C_CONTIGUOUS | (PyBUF_WRITABLE if writable else 0))
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

    def __dealloc__(self):
        cdef int i
        for i in range(self.count):
            PyBuffer_Release(&self.views[i])
