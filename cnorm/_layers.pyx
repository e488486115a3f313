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

State and staleness (BatchNorm, and cnorm.torch's batch norms in eval)
    cnorm.BatchNorm keeps its state (gamma, beta, running_mean, running_var)
    as the rows of one ``(4, C)`` array of the layer's dtype, which users see
    as four row views; a cnorm.torch module has four tensors of its own.
    ``_BatchNormPlan`` holds the buffers of the four vectors (NumPy views of
    the tensors, for cnorm.torch), a byte copy of them (the snapshot) and the
    float64 vectors computed from the snapshot and checked (running_var >= 0,
    NaN passes as in the functions). Every call first compares the state with
    the snapshot (``memcmp`` of 4*C values), so no assignment or in-place
    write of the state, however made, leaves the vectors stale.
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

from cpython.pycapsule cimport PyCapsule_GetPointer

from cnorm._buffers cimport (DEBUG_CHECKS, FLOAT32_MIN_EPS, NORMALIZE_PLAIN_NAME, Buffers,
                             check_sizes, normalize_plain_t, plain_call, plain_threads,
                             plain_vector)
from cnorm._storage cimport CN_BFLOAT16, CN_FLOAT64, cn_item_size

import numpy

cdef object _empty = numpy.empty


cdef class _BatchNormPlan:
    """The float64 vectors of a batch norm's inference, kept while its state is unchanged."""

    cdef object arrays             # the state: gamma, beta, running_mean, running_var
    cdef Py_buffer views[4]        # their buffers, held for the plan's lifetime
    cdef bint held[4]              # False for a None (gamma, beta: not affine)
    cdef Py_ssize_t offsets[5]     # where each array's bytes are in the snapshot
    cdef char* snapshot            # the state's bytes the vectors were made from
    cdef Py_ssize_t n_channels
    cdef normalize_plain_t normalize  # the dispatched kernels' inference (NORMALIZE_PLAIN)
    cdef object kernels            # the kernel module it is from (kept alive)
    cdef const double* data[4]     # the vectors' data: mean, var, gamma, beta (or NULL)
    cdef public double eps
    cdef public bint affine
    cdef public bint fast          # False: every inference call takes the checked path
    cdef public bint relu          # the layer's fused activation (activation="relu")
    cdef public int axis
    cdef public object vectors     # float64 (mean, var, gamma, beta); gamma, beta None: not affine
    cdef public object last        # the record of the last forward, for backward
    cdef public bint record        # keep that record (cnorm.torch keeps its own)
    cdef bint unsafe               # a vector outside float32's normal range (see infer)

    def __cinit__(self, arrays, kernels, double eps, bint affine, bint fast, int axis):
        # arrays: (gamma, beta, running_mean, running_var), C-contiguous
        # float32/float64 vectors of one length (gamma and beta may be None);
        # kernels: the dispatched batch-norm kernel module (cnorm._batchnorm*).
        cdef int i
        cdef Py_buffer* v
        self.arrays = tuple(arrays)
        self.offsets[0] = 0
        self.n_channels = len(self.arrays[2])
        for i in range(4):
            self.held[i] = False
            self.offsets[i + 1] = self.offsets[i]
            if self.arrays[i] is None:
                continue
            v = &self.views[i]
            PyObject_GetBuffer(self.arrays[i], v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
            self.held[i] = True
            if not (v.ndim == 1 and v.shape[0] == self.n_channels and v.format[1] == 0
                    and (v.format[0] == b"f" or v.format[0] == b"d")):
                raise ValueError("cnorm: a batch norm plan takes float32/float64 vectors of "
                                 "one length")
            self.offsets[i + 1] += v.len
        self.snapshot = <char*> malloc(self.offsets[4] if self.offsets[4] else 1)
        if self.snapshot == NULL:
            raise MemoryError("cnorm: cannot allocate a layer's snapshot")
        self.kernels = kernels
        self.normalize = <normalize_plain_t> PyCapsule_GetPointer(kernels.NORMALIZE_PLAIN,
                                                                  NORMALIZE_PLAIN_NAME)
        self.eps = eps
        self.affine = affine
        self.fast = fast
        self.relu = False
        self.axis = axis
        self.vectors = None
        self.last = None
        self.record = True
        self.refresh()

    def __dealloc__(self):
        cdef int i
        for i in range(4):
            if self.held[i]:
                PyBuffer_Release(&self.views[i])
        free(self.snapshot)

    cdef bint _changed(self) noexcept:
        # Whether the state differs from the snapshot (byte for byte).
        cdef int i
        for i in range(4):
            if self.held[i] and memcmp(self.views[i].buf, self.snapshot + self.offsets[i],
                                       self.views[i].len) != 0:
                return True
        return False

    def refresh(self):
        """Make the float64 vectors from the state as it is now, if it changed.

        Raises ValueError if running_var has a negative value; the previous
        vectors and snapshot are then kept (the next call checks again).
        """
        cdef Py_ssize_t c, n = self.n_channels
        cdef Py_ssize_t nbytes = self.offsets[4]
        cdef int i
        if self.vectors is not None and not self._changed():
            return self.vectors
        cdef char* copy = <char*> malloc(nbytes if nbytes else 1)
        if copy == NULL:
            raise MemoryError("cnorm: cannot allocate a layer's snapshot")
        vectors = _empty((4, n))
        cdef double[:, ::1] v = vectors
        cdef const char* part
        try:
            for i in range(4):
                if not self.held[i]:
                    continue
                part = copy + self.offsets[i]
                memcpy(copy + self.offsets[i], self.views[i].buf, self.views[i].len)
                for c in range(n):
                    v[i, c] = ((<const float*> part)[c] if self.views[i].format[0] == b"f"
                               else (<const double*> part)[c])
            for c in range(n):
                if v[3, c] < 0:
                    raise ValueError(
                        f"running_var must be >= 0 everywhere, got {v[3, c]!r} in channel {c}")
            unsafe = False
            for i in range(4):  # the vectors the kernel reads: mean, var (gamma, beta)
                if ((i >= 2 or self.affine and self.held[i])
                        and plain_vector(vectors[i], n, True) == 1):
                    unsafe = True
            memcpy(self.snapshot, copy, nbytes)
            self.unsafe = unsafe
        finally:
            free(copy)
        # rows: gamma, beta, running_mean, running_var
        self.vectors = (vectors[2], vectors[3],
                        vectors[0] if self.affine and self.held[0] else None,
                        vectors[1] if self.affine and self.held[1] else None)
        # (the rows' data, kept alive by self.vectors: never written once made)
        for i in range(4):
            self.data[i] = (&v[(i + 2) % 4, 0] if n and self.vectors[i] is not None
                            else NULL)
        return self.vectors

    def infer(self, x, out, n_threads):
        """y for a plain call, or None: the caller takes the checked path."""
        cdef Py_ssize_t view[4]
        cdef int threads
        cdef bint in_place
        if not self.fast:
            return None
        if self._changed():
            self.refresh()
        y = plain_call(x, out, None, n_threads, self.axis, 2, self.n_channels, view, &threads,
                       &in_place)
        if y is None or view[0] != 0 and (self.unsafe or self.eps < FLOAT32_MIN_EPS):
            return None  # (the checked path normalizes such data in float64)
        cdef Buffers b = Buffers()
        cdef const void* xp = b.get(x, False)
        cdef void* yp = b.get(y, True)
        if DEBUG_CHECKS:
            b.check(2, <int> view[0], view[1], view[2], view[3], -1, -1, threads)
        self.normalize(xp, yp, self.data[0], self.data[1], self.data[2], self.data[3],
                       self.eps, threads, <int> view[0], view[1], view[2], view[3], self.relu)
        if self.record:
            self.last = (False, None if in_place else x, self.vectors, self.eps)
        return y

    def infer_tensor(self, x, empty_like, int storage, n_threads, large=None,
                     Py_ssize_t large_bytes=0):
        """y for a torch tensor x, or None: the caller takes the checked path.

        x: a tensor of the storage type `storage` (cnorm._layout.STORAGE; the caller has
        checked its dtype and that no graph is recorded); it is taken here if
        it is a contiguous CPU tensor with its channels on axis 1 (NCHW and the
        like), and y = empty_like(x) is written. Its data are read at
        x.data_ptr(), without a NumPy view (in a ResNet-50 at batch 1, a
        tensor's first .numpy() after a convolution took 12-15 us).
        `n_threads` as the functions take it. From `large_bytes` of data on,
        y = large(x) instead of empty_like(x) (cnorm.torch: NumPy's memory, in
        huge pages).
        """
        cdef Py_ssize_t outer, n_channels, inner = 1, d
        cdef size_t xp, item
        cdef int threads = plain_threads(n_threads)
        if (not self.fast or self.axis != 1 or threads < 0
                or not CN_FLOAT64 <= storage <= CN_BFLOAT16):
            return None
        if not x.is_cpu:
            return None
        shape = x.shape
        if len(shape) < 2:
            return None
        outer, n_channels = shape[0], shape[1]
        for d in shape[2:]:
            inner *= d
        if n_channels != self.n_channels or outer * n_channels * inner == 0:
            return None
        if not x.is_contiguous():
            return None
        xp = x.data_ptr()
        item = cn_item_size(storage)
        if xp % item != 0:
            return None  # (torch.from_numpy of a misaligned view: copied by the checked path)
        if self._changed():
            self.refresh()
        if storage != CN_FLOAT64 and (self.unsafe or self.eps < FLOAT32_MIN_EPS):
            return None  # (the checked path normalizes such data in float64)
        y = (large(x) if large is not None and outer * n_channels * inner * <Py_ssize_t> item
             >= large_bytes else empty_like(x))
        if DEBUG_CHECKS:  # (the debug build checks what the kernel is given)
            check_sizes(n_channels, -1, -1, threads)
            if (tuple(y.shape) != tuple(shape) or not y.is_contiguous()
                    or y.data_ptr() % item != 0 or y.dtype != x.dtype):
                raise ValueError("cnorm kernel: the output tensor is not a contiguous, "
                                 "aligned tensor like x")
        self.normalize(<const void*> xp, <void*> <size_t> y.data_ptr(), self.data[0],
                       self.data[1], self.data[2], self.data[3], self.eps, threads, storage,
                       outer, n_channels, inner, self.relu)
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
