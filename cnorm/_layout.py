"""Tensors as the kernels see them: storage type and the (outer, C, inner) view.

Every public function turns its tensor arguments into a `Tensor`: the array in
memory order (C-contiguous, the half types as they are held), its storage code
(the dtype table below, shared with cnorm/_storage.h) and the three extents of
the ``(outer, C, inner)`` view with the channel axis in the middle. NHWC data
with ``axis=-1`` is ``(N*H*W, C, 1)``, NCHW data with ``axis=1`` is
``(N, C, H*W)``. An array whose strides are a permutation of C-contiguous ones
(a transposed view, PyTorch's channels_last as NumPy sees it) is used as it is,
through that permutation, and the outputs are allocated in the same memory
layout; any other array is copied once to C order.
"""
import operator

import numpy as np

from cnorm import _buffers

try:
    from numpy.exceptions import AxisError
except ImportError:  # NumPy < 1.25
    AxisError = np.AxisError  # type: ignore[attr-defined,misc]

# dtype name -> storage code (cnorm/_storage.h). bfloat16 is recognised by its
# name (ml_dtypes.bfloat16) and handed to the kernels as a uint16 view: NumPy
# cannot export it through the buffer protocol, and cnorm never imports ml_dtypes.
STORAGE = {"float64": 0, "float32": 1, "float16": 2, "bfloat16": 3}
DTYPE_NAMES = "float32, float64, float16 or bfloat16"

_NATIVE = {np.dtype(np.float64): 0, np.dtype(np.float32): 1, np.dtype(np.float16): 2}


def storage_of(dtype):
    """The storage code of a dtype, or None if cnorm does not take it."""
    code = _NATIVE.get(dtype)
    if code is not None:
        return code
    if dtype.name == "bfloat16" and dtype.itemsize == 2 and dtype.isnative:
        # (a byte-swapped bfloat16 has the same name: read natively, its bytes
        # would be other numbers; tensor() swaps it first)
        return STORAGE["bfloat16"]
    return None


def is_half(dtype):
    """Whether `dtype` is float16 or bfloat16."""
    return storage_of(dtype) in (2, 3)


def channel_axis(axis, ndim, name="x"):
    """`axis` as an index in [0, ndim), or AxisError (a ValueError) naming it."""
    if type(axis) is not int:
        if isinstance(axis, (bool, np.bool_)):
            raise TypeError(f"axis must be an integer, got bool {axis!r}")
        try:
            axis = operator.index(axis)
        except TypeError:
            raise TypeError(
                f"axis must be an integer, got {type(axis).__name__} {axis!r}") from None
    if not -ndim <= axis < ndim:
        raise AxisError(f"axis {axis} is out of bounds for {name} with {ndim} dimension"
                        f"{'s' if ndim != 1 else ''}")
    return axis % ndim


# The validated tensor argument: compiled (cnorm/_buffers.pyx), so that a plain
# call's Tensor is made in C by ``_buffers.plain``.
Tensor = _buffers.Tensor


def _in_order(array, order):
    return array if order is None else array.transpose(order)


def _memory_order(array):
    """The axes of `array` in decreasing stride, if that makes it C-contiguous; else None."""
    if array.ndim < 2 or 0 in array.shape:
        return None
    order = tuple(sorted(range(array.ndim), key=lambda i: -array.strides[i]))
    if order == tuple(range(array.ndim)):
        return None
    if array.transpose(order).flags.c_contiguous:
        return order
    return None


def tensor(value, name, axis, *, min_ndim=1, plain=None):
    """Return `value` as a `Tensor` with its channels on `axis`.

    Arrays of another dtype are rejected rather than cast: a silent cast would
    hide a caller's mistake. `plain` is what ``cnorm._buffers.plain`` returned
    for this call: if not None, `value` is a plain array (checked in C) and
    its Tensor was made there.
    """
    if plain is not None:
        return plain[2]
    t = Tensor.__new__(Tensor)
    if type(value) is np.ndarray:
        array = value
    else:
        try:
            array = np.asarray(value)
        except ValueError as exc:  # e.g. a ragged nested list
            raise ValueError(f"{name} must be an array of numbers, got {type(value).__name__} "
                             f"that NumPy cannot make an array of ({exc})") from None
    storage = storage_of(array.dtype)
    if storage is None:
        if array.dtype.kind == "f" and not array.dtype.isnative and array.dtype.itemsize != 16:
            array = array.astype(array.dtype.newbyteorder("="))  # byte-swapped: one copy
            storage = storage_of(array.dtype)
        elif array.dtype.name == "bfloat16" and not array.dtype.isnative:
            # ml_dtypes' casts ignore the byte order: swap the bytes themselves
            array = array.byteswap().view(array.dtype.newbyteorder("="))
            storage = storage_of(array.dtype)
        if storage is None:
            raise TypeError(f"{name} must have dtype {DTYPE_NAMES}, got {array.dtype}")
    if array.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension{'s' if min_ndim > 1 else ''}, "
            f"got shape {array.shape}")
    ndim = array.ndim
    if type(axis) is int and (axis == -1 or axis == ndim - 1):
        axis = ndim - 1
    else:
        axis = channel_axis(axis, ndim, name)
    order = None
    if not (array.flags.c_contiguous and array.flags.aligned):
        order = _memory_order(array) if array.flags.aligned else None
        if order is None:
            array = np.ascontiguousarray(array)
            if not array.flags.aligned:
                array = array.copy()
    memory = array if order is None else array.transpose(order)
    memory_axis = axis if order is None else order.index(axis)
    shape = memory.shape
    outer = 1
    for n in shape[:memory_axis]:
        outer *= n
    inner = 1
    for n in shape[memory_axis + 1:]:
        inner *= n
    t.array = array
    t.memory = memory
    t.order = order
    t.storage = storage
    t.outer = outer
    t.channels = shape[memory_axis]
    t.inner = inner
    return t


def matching(value, name, like, like_name):
    """`value` as an array of `like`'s shape and dtype, in `like`'s memory order."""
    if like.order is None and _buffers.plain_like(value, like.array):
        return value
    if type(value) is np.ndarray:
        array = value
    else:
        try:
            array = np.asarray(value)
        except ValueError as exc:
            raise ValueError(f"{name} must be an array of numbers ({exc})") from None
    if array.dtype != like.dtype:
        raise TypeError(
            f"{name} must have the dtype of {like_name} ({like.dtype}), got {array.dtype}")
    if array.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape of {like_name} {like.shape}, got {array.shape}")
    memory = _in_order(array, like.order)
    if not (memory.flags.c_contiguous and memory.flags.aligned):
        memory = np.ascontiguousarray(memory)
        if not memory.flags.aligned:
            memory = memory.copy()
        array = memory if like.order is None else memory.transpose(np.argsort(like.order))
    return array


def output(out, like, name="out"):
    """A writable output of `like`'s shape, dtype and memory layout: `out` or a new one."""
    if out is None:
        if like.order is None:
            return np.empty(like.shape, dtype=like.dtype)
        memory = np.empty(like.memory.shape, dtype=like.dtype)
        return memory.transpose(np.argsort(like.order))
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray or None, got {type(out).__name__}")
    if out.dtype != like.dtype:
        raise TypeError(f"{name} must have dtype {like.dtype}, got {out.dtype}")
    if out.shape != like.shape:
        raise ValueError(f"{name} must have shape {like.shape}, got {out.shape}")
    if not _in_order(out, like.order).flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous" if like.order is None else
            f"{name} must have the memory layout of x (axes in memory order {like.order})")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writable")
    return out


def target(out, like):
    """The array a kernel writes for the output `out` (from `output`): `out`
    itself, or a fresh aligned one when `out` is not aligned to its item size
    (to be copied into `out` by `finish`), so no kernel sees a misaligned pointer."""
    return out if out.flags.aligned else output(None, like)


def finish(out, written):
    """Copy `written` into `out` if they differ (see `target`); return `out`."""
    if written is not out:
        np.copyto(out, written)
    return out
