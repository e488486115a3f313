"""The arrays of one kernel call, read through the buffer protocol.

The kernel entry points (cnorm._lrn.run, cnorm._batchnorm's normalize,
batch_stats and backward) take the caller's arrays as they are, channels last
and of any ndim, through a ``Buffers``: no reshape, no memoryview objects and
no fused-type lookup, so a call costs little more than its work. The buffers
are released when the ``Buffers`` goes, however the call ends. The callers
have validated the arrays (C-contiguous, float32/float64, shapes).
"""
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)


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
