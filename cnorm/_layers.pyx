"""Fast paths of the layer objects of cnorm.layers (BatchNorm, LocalResponseNorm).

Design
------
A layer's inference call on a plain array (a C-contiguous, aligned, native
float64, float32 or float16 numpy.ndarray with its channels on the layer's
axis, an ``out`` of its shape and dtype or None) is checked here, in C, and
goes straight to the kernel entry point that the public function would call
(``cnorm._batchnorm.normalize``, ``cnorm._lrn.run``, from the ISA level
cnorm._dispatch chose) with the same arguments, the ``(outer, C, inner)``
view included: the result is bit-identical to the public function's. Any
other call (bfloat16, a list, a strided or transposed array, a bad ``out``,
a bad ``n_threads``) returns None and the caller takes the public function's
path, which converts what it may and raises the errors the functions raise.

State and staleness (BatchNorm)
    The layer keeps its state (gamma, beta, running_mean, running_var) as the
    rows of one ``(4, C)`` array of the layer's dtype, which users see as four
    row views. ``_BatchNormPlan`` holds that array's buffer, a byte copy of it
    (the snapshot) and the float64 vectors computed from the snapshot and
    checked (running_var >= 0, NaN passes as in the functions). Every call
    first compares the state with the snapshot (``memcmp`` of 4*C values), so
    no assignment or in-place write of the state, however made, leaves the
    vectors stale.
Threads
    Everything here runs holding the GIL except the kernel, which reads only
    float64 vectors that are never written once made (a refresh makes new ones)
    and the caller's x and out. Concurrent inference calls on one layer are
    therefore safe; the record of the last forward (for ``backward``) is one
    tuple, stored at once.
"""
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from cnorm._openmp cimport omp_get_max_threads

import numpy

cdef object _ndarray = numpy.ndarray
cdef object _empty = numpy.empty


cdef inline int _storage(const Py_buffer* view) noexcept:
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


cdef object _output(object x, const Py_buffer* xv, object out, bint* in_place):
    # `out` if it is a usable output for x (same shape and dtype, C-contiguous,
    # writable, x's memory exactly or not overlapping it); a new array if out
    # is None; None otherwise (the caller falls back to the checked path).
    # ``in_place`` tells whether the output is x's memory.
    cdef Py_buffer ov
    cdef int i
    cdef bint ok
    cdef const char* start_x
    cdef const char* start_o
    in_place[0] = False
    if out is None:
        return _empty(x.shape, x.dtype)
    if type(out) is not _ndarray:
        return None
    try:
        PyObject_GetBuffer(out, &ov, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE)
    except (BufferError, ValueError, TypeError):
        return None
    ok = (ov.ndim == xv.ndim and _storage(&ov) == _storage(xv) and ov.len == xv.len)
    if ok:
        for i in range(ov.ndim):
            if ov.shape[i] != xv.shape[i]:
                ok = False
                break
    if ok:
        start_x = <const char*> xv.buf
        start_o = <const char*> ov.buf
        # x itself, or disjoint from it
        in_place[0] = start_o == start_x
        ok = in_place[0] or start_o + ov.len <= start_x or start_x + xv.len <= start_o
    PyBuffer_Release(&ov)
    return out if ok else None


cdef int _threads(object n_threads) except -2:
    # The thread count of a valid n_threads; -1 if the checked path must judge it.
    if n_threads is None:
        return omp_get_max_threads()
    if type(n_threads) is int and n_threads >= 1:
        return n_threads
    return -1


cdef object _plain_call(object x, object out, object n_threads, int axis, int min_ndim,
                        Py_ssize_t n_channels, Py_ssize_t* view, int* threads,
                        bint* in_place):
    # The output of a plain call (a C-contiguous, aligned, native float64,
    # float32 or float16 ndarray x, not empty, of ndim >= min_ndim, with
    # n_channels channels on `axis` unless n_channels is -1; a usable `out`; a
    # valid n_threads), with the kernels' view of x in ``view`` (storage,
    # outer, channels, inner), the thread count and whether the output is x's
    # memory; None for any other call.
    cdef Py_buffer xv
    cdef int i, ndim
    if type(x) is not _ndarray:
        return None
    try:
        PyObject_GetBuffer(x, &xv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, ValueError, TypeError):
        return None
    try:
        ndim = xv.ndim
        if axis < 0:
            axis += ndim
        if (ndim < min_ndim or xv.len == 0 or not 0 <= axis < ndim
                or (n_channels >= 0 and xv.shape[axis] != n_channels)):
            return None
        view[0] = _storage(&xv)
        if view[0] < 0:
            return None
        view[1] = 1
        view[2] = xv.shape[axis]
        view[3] = 1
        for i in range(axis):
            view[1] *= xv.shape[i]
        for i in range(axis + 1, ndim):
            view[3] *= xv.shape[i]
        y = _output(x, &xv, out, in_place)
    finally:
        PyBuffer_Release(&xv)
    if y is None:
        return None
    threads[0] = _threads(n_threads)
    return None if threads[0] < 0 else y


cdef class _BatchNormPlan:
    """The float64 vectors of a BatchNorm's inference, kept while its state is unchanged."""

    cdef object state              # the layer's (4, C) state array
    cdef Py_buffer state_view      # held for the plan's lifetime
    cdef bint has_view
    cdef char* snapshot            # the state's bytes the vectors were made from
    cdef Py_ssize_t n_channels
    cdef object normalize          # the dispatched kernel entry point
    cdef public double eps
    cdef public bint affine
    cdef public bint fast          # False: every inference call takes the checked path
    cdef public int axis
    cdef public object vectors     # float64 (mean, var, gamma, beta); gamma, beta None: not affine
    cdef public object last        # the record of the last forward, for backward

    def __cinit__(self, state, normalize, double eps, bint affine, bint fast, int axis):
        PyObject_GetBuffer(state, &self.state_view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        self.has_view = True
        self.state = state
        self.n_channels = self.state_view.shape[1]
        self.snapshot = <char*> malloc(self.state_view.len if self.state_view.len else 1)
        if self.snapshot == NULL:
            raise MemoryError("cnorm: cannot allocate a layer's snapshot")
        self.normalize = normalize
        self.eps = eps
        self.affine = affine
        self.fast = fast
        self.axis = axis
        self.vectors = None
        self.last = None
        self.refresh()

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.state_view)
        free(self.snapshot)

    def refresh(self):
        """Make the float64 vectors from the state as it is now, if it changed.

        Raises ValueError if running_var has a negative value; the previous
        vectors and snapshot are then kept (the next call checks again).
        """
        cdef Py_ssize_t c, n = self.n_channels
        cdef Py_ssize_t nbytes = self.state_view.len
        if self.vectors is not None and memcmp(self.state_view.buf, self.snapshot, nbytes) == 0:
            return self.vectors
        cdef char* copy = <char*> malloc(nbytes if nbytes else 1)
        if copy == NULL:
            raise MemoryError("cnorm: cannot allocate a layer's snapshot")
        vectors = _empty((4, n))
        cdef double[:, ::1] v = vectors
        cdef const float* single = <const float*> copy
        cdef const double* double_ = <const double*> copy
        cdef bint is_single = self.state_view.format[0] == b"f"
        try:
            memcpy(copy, self.state_view.buf, nbytes)
            for c in range(4 * n):
                v[c // n, c % n] = single[c] if is_single else double_[c]
            for c in range(n):
                if v[3, c] < 0:
                    raise ValueError(
                        f"running_var must be >= 0 everywhere, got {v[3, c]!r} in channel {c}")
            memcpy(self.snapshot, copy, nbytes)
        finally:
            free(copy)
        # rows: gamma, beta, running_mean, running_var
        if self.affine:
            self.vectors = (vectors[2], vectors[3], vectors[0], vectors[1])
        else:
            self.vectors = (vectors[2], vectors[3], None, None)
        return self.vectors

    def infer(self, x, out, n_threads):
        """y for a plain call, or None: the caller takes the checked path."""
        cdef Py_ssize_t view[4]
        cdef int threads
        cdef bint in_place
        if not self.fast:
            return None
        if memcmp(self.state_view.buf, self.snapshot, self.state_view.len) != 0:
            self.refresh()
        y = _plain_call(x, out, n_threads, self.axis, 2, self.n_channels, view, &threads,
                        &in_place)
        if y is None:
            return None
        vectors = self.vectors
        mean, var, gamma, beta = vectors
        self.normalize(x, y, mean, var, gamma, beta, self.eps, None, False, threads, view[0],
                       view[1], view[2], view[3])
        self.last = (False, None if in_place else x, vectors, self.eps)
        return y


cdef class _LocalResponseNormPlan:
    """A LocalResponseNorm's canonical parameters and its kernel."""

    cdef object run                # the dispatched kernel entry point
    cdef public Py_ssize_t before, after
    cdef public double a, k, beta
    cdef public int axis
    cdef public object last        # (x,) of the last forward, (None,) if it wrote over x

    def __cinit__(self, run, Py_ssize_t before, Py_ssize_t after, double a, double k,
                  double beta, int axis):
        self.run = run
        self.before = before
        self.after = after
        self.a = a
        self.k = k
        self.beta = beta
        self.axis = axis
        self.last = None

    def infer(self, x, out, n_threads):
        """y for a plain call, or None: the caller takes the checked path."""
        cdef Py_ssize_t view[4]
        cdef int threads
        cdef bint in_place
        y = _plain_call(x, out, n_threads, self.axis, 1, -1, view, &threads, &in_place)
        if y is None:
            return None
        self.run(x, None, y, min(self.before, view[2] - 1), min(self.after, view[2] - 1),
                 self.a, self.k, self.beta, threads, view[0], view[1], view[2], view[3])
        self.last = (None if in_place else x,)
        return y
