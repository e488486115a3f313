# Storage types (see _storage.h): the one place that knows how each dtype is held.
cdef extern from "cnorm/_storage.h":
    enum:
        CN_FLOAT64
        CN_FLOAT32
        CN_FLOAT16
        CN_BFLOAT16
    size_t cn_item_size(int storage) noexcept nogil
    bint cn_is_half(int storage) noexcept nogil
    void cn_load_run(int storage, const void* src, float* dst, Py_ssize_t n) noexcept nogil
    void cn_store_run(int storage, const float* src, void* dst, Py_ssize_t n) noexcept nogil
