"""Checks shared by every public function.

Each check raises TypeError (wrong kind of thing) or ValueError (right kind,
wrong value) with a message that names the argument, says what was expected and
what came. They run before any kernel, so a kernel never sees bad input.
"""
import math
import numbers

import numpy as np

from cnorm import _buffers, _openmp

SUPPORTED_DTYPES = (np.float32, np.float64)


_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(value, name, *, min_ndim=1):
    """Return `value` as a C-contiguous float32/float64 array in native byte order.

    Arrays of another float width, integers, bools, complex and objects are
    rejected rather than cast: a silent cast would hide a caller's mistake.
    """
    if (type(value) is np.ndarray and value.dtype in _NATIVE_FLOATS
            and value.flags.c_contiguous and value.ndim >= min_ndim):
        return value  # the common case, in a fraction of a microsecond
    array = np.asarray(value)
    if array.dtype.type not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {array.dtype}"
        )
    if array.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension"
            f"{'s' if min_ndim > 1 else ''} with channels last, got shape {array.shape}"
        )
    return np.ascontiguousarray(array, dtype=np.dtype(array.dtype.type))


def matching_array(value, name, like, like_name):
    """Return `value` as an array of the same shape and dtype as `like`."""
    if (type(value) is np.ndarray and value.dtype == like.dtype and value.shape == like.shape
            and value.flags.c_contiguous):
        return value
    array = np.asarray(value)
    if array.dtype.type is not like.dtype.type:
        raise TypeError(
            f"{name} must have the dtype of {like_name} ({like.dtype}), got {array.dtype}"
        )
    if array.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape of {like_name} {like.shape}, got {array.shape}"
        )
    return np.ascontiguousarray(array, dtype=like.dtype)


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
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
        value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def finite_real(value, name):
    """Return `value` as a finite Python float."""
    if type(value) is not float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
        value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def n_threads(value):
    """Resolve `n_threads`: None is OpenMP's current default, else an int >= 1."""
    if value is None:
        return _openmp.max_threads()
    if type(value) is int and value >= 1:
        return value
    return integer(value, "n_threads", minimum=1)


def no_partial_overlap(out, x, dy=None):
    """Check that `out` is x (or dy) exactly or shares no memory with it: every kernel
    reads an element before it writes the same one, but an output that partly
    overlaps an input would overwrite values still to be read. All arrays
    C-contiguous, `out` of x's shape."""
    overlapped = _buffers.partial_overlap(out, x, dy)
    if overlapped:
        raise ValueError(f"out must be {'x' if overlapped == 1 else 'dy'} itself or not "
                         "overlap it")
