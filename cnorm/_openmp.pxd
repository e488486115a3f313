# The one place OpenMP is named. Kernels cimport from here; when cnorm is built
# without OpenMP the functions below fall back to their single-thread answers.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CNORM_OPENMP_ENABLED 1
    #else
    #define CNORM_OPENMP_ENABLED 0
    static int omp_get_max_threads(void) { return 1; }
    static int omp_get_thread_num(void) { return 0; }
    #endif
    """
    bint CNORM_OPENMP_ENABLED
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil

cdef int resolve_n_threads(object n_threads, Py_ssize_t n_chunks) except -1
