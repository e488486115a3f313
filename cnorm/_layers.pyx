"""Fast paths of the layer objects of cnorm.layers (BatchNorm, LocalResponseNorm).

Design
------
A layer's inference call on a plain array (a C-contiguous, aligned, native
float64, float32 or float16 numpy.ndarray with its channels on the layer's
axis, an ``out`` of its shape and dtype or None) is checked in C, by the
plain-call checks of cnorm._buffers that the public functions use too, and
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
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBuffer_Release,
                             PyObject_GetBuffer)
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from cnorm._buffers cimport plain_call

import numpy

cdef object _empty = numpy.empty


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
    cdef public bint relu          # the layer's fused activation (activation="relu")
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
        self.relu = False
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
        y = plain_call(x, out, None, n_threads, self.axis, 2, self.n_channels, view, &threads,
                       &in_place)
        if y is None:
            return None
        vectors = self.vectors
        mean, var, gamma, beta = vectors
        self.normalize(x, y, mean, var, gamma, beta, self.eps, None, False, threads, view[0],
                       view[1], view[2], view[3], None, self.relu)
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
        y = plain_call(x, out, None, n_threads, self.axis, 1, -1, view, &threads, &in_place)
        if y is None:
            return None
        self.run(x, None, y, min(self.before, view[2] - 1), min(self.after, view[2] - 1),
                 self.a, self.k, self.beta, threads, view[0], view[1], view[2], view[3])
        self.last = (None if in_place else x,)
        return y
