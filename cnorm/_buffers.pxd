# The arrays of one kernel call, read through the buffer protocol (see _buffers.pyx).
cdef class Buffers:
    cdef Py_buffer views[8]
    cdef int count

    cdef void* get(self, object array, bint writable) except? NULL
    cdef Py_ssize_t channels(self)
    cdef Py_ssize_t rows(self)
    cdef bint single(self)
