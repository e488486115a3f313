# The arrays of one kernel call, read through the buffer protocol (see _buffers.pyx).
cdef class Buffers:
    cdef Py_buffer views[10]
    cdef int count

    cdef void* get(self, object array, bint writable) except? NULL
    cdef Py_ssize_t channels(self)
    cdef Py_ssize_t rows(self)
    cdef bint single(self)
    cdef int check(self, int n_tensors, int storage, Py_ssize_t outer, Py_ssize_t n_channels,
                   Py_ssize_t inner, Py_ssize_t before, Py_ssize_t after,
                   int n_threads) except -1


# True in a debug build (CNORM_CYTHON_DEBUG=1 sets -DCNORM_DEBUG_CHECKS=1): the
# kernel entry points then check what they are given (Buffers.check,
# check_sizes) instead of trusting their caller.
cdef extern from *:
    """
    #ifndef CNORM_DEBUG_CHECKS
    #define CNORM_DEBUG_CHECKS 0
    #endif
    """
    const bint DEBUG_CHECKS "CNORM_DEBUG_CHECKS"


# Below this eps, 1/sqrt(var + eps) can exceed float32's largest value: data
# stored as float32 or a half type are then normalized in float64 (the one
# definition; cnorm.batchnorm reads it as cnorm._buffers.FLOAT32_MIN_EPS).
cdef extern from *:
    """
    #define CNORM_FLOAT32_MIN_EPS 1e-76
    """
    const double FLOAT32_MIN_EPS "CNORM_FLOAT32_MIN_EPS"

cdef int check_sizes(Py_ssize_t n_channels, Py_ssize_t before, Py_ssize_t after,
                     int n_threads) except -1


# Plain calls, checked in C (see _buffers.pyx; the layers' fast paths use them).
cdef int storage_of(const Py_buffer* view) noexcept
cdef int plain_threads(object n_threads) except -2
cdef object plain_call(object x, object out, object dy, object n_threads, object axis,
                       int min_ndim, Py_ssize_t n_channels, Py_ssize_t* view, int* threads,
                       bint* in_place)
cdef bint plain_like_x(object value, object x) except -1
cdef int plain_vector(object array, Py_ssize_t n, bint scan) except -2


# The batch-norm kernels' inference on validated data (cnorm._batchnorm's
# _normalize_plain: x, y, mean, var, gamma, beta, eps, n_threads, storage,
# outer, n_channels, inner, relu), which each ISA build exports as a capsule of
# this name (NORMALIZE_PLAIN) for the layers' fast paths (cnorm._layers).
ctypedef int (*normalize_plain_t)(const void*, void*, const double*, const double*,
                                  const double*, const double*, double, int, int, Py_ssize_t,
                                  Py_ssize_t, Py_ssize_t, bint) except -1
cdef extern from *:
    """
    #define CNORM_NORMALIZE_PLAIN_NAME "cnorm._batchnorm.normalize_plain_t"
    """
    const char* NORMALIZE_PLAIN_NAME "CNORM_NORMALIZE_PLAIN_NAME"
