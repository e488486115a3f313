"""Checks shared by every public function.

Each check raises TypeError (wrong kind of thing) or ValueError (right kind,
wrong value) with a message that names the argument, says what was expected and
what came. They run before any kernel, so a kernel never sees bad input.

Non-finite values: scalar hyper-parameters (eps, alpha, beta, bias, k,
momentum) must be finite (`finite_real`); arrays (the data, gamma, beta, the
statistics) may hold NaN and inf, which go through the formulas under IEEE
rules. Messages print plain numbers (``-1.0``, not ``np.float64(-1.0)``).

Arrays handed to a kernel are C-contiguous, native-endian and aligned to
their item size: a float32 view at an odd byte offset of a buffer is copied
(`float_array`, `matching_array`, `float64_vector`; tensors in
cnorm._layout), or, as an output, computed into an aligned temporary and
copied back (cnorm._layout.target), so no kernel dereferences a misaligned
``float*``.
"""
import fractions
import math
import numbers

import numpy as np

from cnorm import _buffers, _openmp

SUPPORTED_DTYPES = (np.float32, np.float64)


_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _shown(value):
    # A short, plain rendering of a rejected value for a message: NumPy
    # scalars as Python numbers (1.5, not np.float64(1.5)).
    if isinstance(value, np.generic) and value.ndim == 0 and value.dtype.kind in "biuf":
        value = value.item()
    try:
        text = repr(value)
    except ValueError:  # an int beyond str()'s digit limit
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} characters)"


def as_array(value, name):
    """``np.asarray(value)``, with NumPy's own errors (a ragged nested list, an
    object whose ``__array__`` fails) re-raised naming the argument."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(
            f"{name} must be an array or a nested sequence of numbers of equal lengths, "
            f"got {type(value).__name__} that NumPy cannot convert ({exc})"
        ) from None


def _kernel_ready(array):
    # C-contiguous and aligned (NumPy's flag: the data pointer and strides are
    # multiples of the item size), as every kernel assumes.
    flags = array.flags
    return flags.c_contiguous and flags.aligned


def _contiguous(array, dtype):
    # A C-contiguous, aligned, native-endian copy of `array` as `dtype` (or
    # `array` itself where it already is one).
    array = np.ascontiguousarray(array, dtype=dtype)
    return array if array.flags.aligned else array.copy()


def float_array(value, name, *, min_ndim=1):
    """Return `value` as a C-contiguous, aligned float32/float64 array in native byte order.

    Arrays of another float width, integers, bools, complex and objects are
    rejected rather than cast: a silent cast would hide a caller's mistake.
    """
    if (type(value) is np.ndarray and value.dtype in _NATIVE_FLOATS
            and value.ndim >= min_ndim and _kernel_ready(value)):
        return value  # the common case, in a fraction of a microsecond
    array = as_array(value, name)
    if array.dtype.type not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {array.dtype}"
        )
    if array.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension"
            f"{'s' if min_ndim > 1 else ''} with channels last, got shape {array.shape}"
        )
    return _contiguous(array, np.dtype(array.dtype.type))


def float64_vector(array):
    """`array` (float32/float64) as a C-contiguous, aligned native float64 array."""
    return _contiguous(array, np.float64)


def matching_array(value, name, like, like_name):
    """Return `value` as an array of the same shape and dtype as `like`."""
    if (type(value) is np.ndarray and value.dtype == like.dtype and value.shape == like.shape
            and _kernel_ready(value)):
        return value
    array = as_array(value, name)
    if array.dtype.type is not like.dtype.type:
        raise TypeError(
            f"{name} must have the dtype of {like_name} ({like.dtype}), got {array.dtype}"
        )
    if array.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape of {like_name} {like.shape}, got {array.shape}"
        )
    return _contiguous(array, like.dtype)


def output_array(out, shape, dtype, name="out"):
    """Return a writable C-contiguous output of `shape` and `dtype`: `out` or a new one."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray or None, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writable")
    return out


def integer(value, name, *, minimum):
    """Return `value` as an int >= minimum (bools are not integers here)."""
    if type(value) is not int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"{name} must be an integer, got {type(value).__name__} {_shown(value)}")
        value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {_shown(value)}")
    return value


def finite_real(value, name):
    """Return `value` as a finite Python float.

    Scalar hyper-parameters are never NaN or infinite: NaN, inf and values
    beyond float64's range (``10**400``, a huge Fraction) raise ValueError;
    bools, strings, None, complex, Decimal and arrays raise TypeError.
    """
    if type(value) is not float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"{name} must be a real number, got {type(value).__name__} {_shown(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise ValueError(
                f"{name} must be finite, got {type(value).__name__} {_shown(value)} "
                "(beyond float64's range)") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def exact_ratio(numerator, denominator):
    """``numerator / denominator`` for a float and a positive int of any size
    (Python's float division raises OverflowError past 2**1024)."""
    try:
        return numerator / denominator
    except OverflowError:
        return float(fractions.Fraction(numerator) / denominator)


# n_threads is an upper bound: requests above this are capped here. The kernels
# also cap it by their number of chunks, but a huge tensor has millions of
# chunks, and OpenMP would try to start every requested thread (the kernels
# take a C int, so 2**31 and above could not even be passed).
MAX_THREADS = _buffers.MAX_THREADS


def n_threads(value, plain=None):
    """Resolve `n_threads`: None is OpenMP's current default, else an int >= 1,
    capped at MAX_THREADS (already resolved in `plain`, what
    ``cnorm._buffers.plain`` returned for the call, when it is not None)."""
    if plain is not None:
        return plain[1]
    if value is None:
        return _openmp.max_threads()
    if type(value) is not int or value < 1:
        value = integer(value, "n_threads", minimum=1)
    return value if value <= MAX_THREADS else MAX_THREADS


def no_partial_overlap(out, x, dy=None):
    """Check that `out` is x (or dy) exactly or shares no memory with it: every kernel
    reads an element before it writes the same one, but an output that partly
    overlaps an input would overwrite values still to be read. All arrays
    C-contiguous, `out` of x's shape."""
    overlapped = _buffers.partial_overlap(out, x, dy)
    if overlapped:
        raise ValueError(f"out must be {'x' if overlapped == 1 else 'dy'} itself or not "
                         "overlap it")


def non_negative(array, name):
    """Check a float32/float64 array of shape (C,) has no negative value (NaN passes)."""
    first = _buffers.first_negative(array)  # a fraction of np.any's microseconds
    negative = (array < 0).any() if first == -2 else first >= 0
    if negative:
        index = int(np.flatnonzero(array < 0)[0])
        raise ValueError(f"{name} must be >= 0 everywhere, got {float(array[index])} "
                         f"at index {index}")
