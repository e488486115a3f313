"""Thread-count resolution and the OpenMP facts cnorm reports.

Every kernel takes an explicit thread count; it is resolved here, once per call,
from the user's ``n_threads`` and OpenMP's current default (which follows
OMP_NUM_THREADS and threadpoolctl's limits).
"""
from cython.parallel cimport prange
from libc.string cimport memcpy


cdef extern from *:
    """
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
    static int cnorm_cpu_level(void) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("x86-64-v4")) return 4;
        if (__builtin_cpu_supports("x86-64-v3")) return 3;
        return 1;
    }
    #else
    static int cnorm_cpu_level(void) { return 0; }
    #endif
    """
    int cnorm_cpu_level() noexcept nogil


cdef extern from *:
    """
    /* The address of omp_get_max_threads as this module is bound to it: the
       OpenMP runtime the kernels actually use (NULL without OpenMP). */
    static void *cnorm_openmp_symbol(void) {
    #if CNORM_OPENMP_ENABLED
        return (void *)&omp_get_max_threads;
    #else
        return NULL;
    #endif
    }
    """
    void* cnorm_openmp_symbol() noexcept nogil


def openmp_symbol_address():
    """Address of the omp_get_max_threads cnorm's kernels are bound to, 0 without OpenMP.

    ``cnorm._openmp_runtime.library_of`` turns it into the runtime's path.
    """
    return <size_t>cnorm_openmp_symbol()


def cpu_level():
    """The x86-64 microarchitecture level of this CPU (1, 3 or 4), or 0 elsewhere.

    Levels 3 (AVX2, FMA) and 4 (AVX-512) also require the OS to save the vector
    registers, which the compiler's check includes.
    """
    return cnorm_cpu_level()


def openmp_enabled():
    """Return True if cnorm was built with OpenMP support."""
    return bool(CNORM_OPENMP_ENABLED)


def max_threads():
    """Return the number of threads OpenMP would use now (1 without OpenMP)."""
    return omp_get_max_threads()


cdef int resolve_n_threads(object n_threads, Py_ssize_t n_chunks) except -1:
    # n_threads is None or an int >= 1, checked by the caller.
    cdef int n = omp_get_max_threads() if n_threads is None else n_threads
    if not CNORM_OPENMP_ENABLED:
        return 1
    if n_chunks < n:
        n = <int>n_chunks
    return max(n, 1)


def _resolve_n_threads(n_threads, Py_ssize_t n_chunks):
    """Python-visible resolve_n_threads, for the public modules and tests."""
    return resolve_n_threads(n_threads, n_chunks)


def parallel_copy(const unsigned char[:, ::1] src, unsigned char[:, ::1] dst, int n_threads):
    """Copy rows of src into dst with n_threads threads (static schedule).

    The bandwidth yardstick of the benchmarks: one read and one write of the
    tensor, the least traffic any normalization of it can cause.
    """
    cdef Py_ssize_t n_rows = src.shape[0], width = src.shape[1], i
    if n_rows == 0 or width == 0:
        return
    cdef const unsigned char* source = &src[0, 0]
    cdef unsigned char* target = &dst[0, 0]
    for i in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        memcpy(target + i * width, source + i * width, width)
