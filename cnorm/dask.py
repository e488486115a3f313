"""cnorm on Dask arrays: statistics, inference and LRN over chunked data.

Thin adapters over cnorm's NumPy API for data that does not fit in one
process: each task calls a cnorm function on one block, so the arithmetic is
cnorm's, and Dask (threads, processes or a ``distributed`` cluster) does the
scheduling. Imported on its own (``import cnorm.dask``); ``import cnorm``
never imports Dask. Needs ``dask[array]``: ``pip install "cnorm[dask]"``.

- `moments`: a ``dask.array.reduction`` whose chunk step is `cnorm.moments`
  and whose combine step is `cnorm.Moments.merge`, in a fixed order: float64
  and exact (Chan's formula) whatever the input dtype.
- `batch_norm_inference`: blockwise, any chunking.
- `lrn`, `local_response_norm`: blockwise along the non-channel axes.
- `recalibrate`: running statistics from a dataset of activations.

Threads: a task calls cnorm with ``n_threads`` if given; otherwise, in a
``distributed`` worker, with OpenMP's default there (the Nanny starts worker
processes with ``OMP_NUM_THREADS=1``, so each worker thread runs one
single-threaded task); under Dask's local threaded scheduler (one task per
core already) with 1 thread; elsewhere (the synchronous scheduler, in the
calling thread) with OpenMP's default.
"""
import functools
import math
import numbers
import sys
import threading

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        'cnorm.dask needs dask[array]: pip install "cnorm[dask]"'
    ) from error

import cnorm
from cnorm import _layout
from cnorm import _validation as check
from cnorm import batchnorm as _batchnorm
from cnorm.lrn import _lrn_params, _size_params
from cnorm.moments import Moments

__all__ = ["moments", "batch_norm_inference", "lrn", "local_response_norm", "recalibrate"]

# The children of one combine or aggregate step of `moments` when split_every
# is not given. Merging Moments of C channels costs microseconds and each
# carries 24*C bytes, so a wide, shallow tree costs nothing in the merge and
# saves a round of tasks (each a millisecond or more of scheduler and transfer
# time on a cluster) per level. Dask's own default (4, split evenly over the
# reduced axes) gives a binary tree when only the batch axis is chunked.
SPLIT_EVERY = 64

# One channel's statistics in the blocks of the reduction's output.
_RECORD = np.dtype([("count", np.int64), ("mean", np.float64), ("m2", np.float64)])


# ---------------------------------------------------------------------------
# Checks

def _dask_array(x, name="x"):
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{name} must be a dask.array.Array, got {type(x).__name__}; wrap a NumPy array "
            f"with dask.array.from_array, or call the cnorm function of the same name"
        )
    if _layout.storage_of(x.dtype) is None:
        raise TypeError(f"{name} must have dtype {_layout.DTYPE_NAMES}, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension, got shape {x.shape}")
    return x


def _channel_axis(x, axis, name="x"):
    """The channel axis normalized to >= 0, with known chunk sizes."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer, got {type(axis).__name__} {axis!r}")
    axis = int(axis)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of bounds for {name} of {x.ndim} dimensions")
    axis %= x.ndim
    if any(math.isnan(size) for size in x.chunks[axis]):
        raise ValueError(
            f"{name} has unknown chunk sizes along its channel axis {axis}; call "
            f"{name}.compute_chunk_sizes() (or give the sizes when creating it) first"
        )
    return axis


def _threads(n_threads):
    return None if n_threads is None else check.integer(n_threads, "n_threads", minimum=1)


def _task_threads(n_threads):
    """The n_threads of one task's cnorm call (see the module docstring)."""
    if n_threads is not None:
        return n_threads
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            distributed.get_worker()
            return None  # OpenMP's default in the worker: OMP_NUM_THREADS from the Nanny
        except ValueError:
            pass
    return None if threading.current_thread() is threading.main_thread() else 1


# ---------------------------------------------------------------------------
# Moments

def _flatten(parts):
    # The nested lists dask gives combine and aggregate (one level per reduced
    # axis, in block order), or a single part: a flat list in C order.
    if not isinstance(parts, list):
        return [parts]
    flat = []
    for part in parts:
        flat.extend(_flatten(part))
    return flat


def _records(moments):
    # The blocks of the reduction are arrays of per-channel records, so that
    # dask's array machinery (its meta inference too) handles them.
    records = np.empty(moments.n_channels, dtype=_RECORD)
    records["count"] = moments.count
    records["mean"] = moments.mean
    records["m2"] = moments.m2
    return records


def _from_records(records, count=0):
    if records.shape[0]:
        count = int(records["count"][0])
    return Moments._unchecked(count, records["mean"].copy(), records["m2"].copy())


def _chunk_moments(block, axis=None, keepdims=None, channel_axis=-1, n_threads=None):
    return _records(cnorm.moments(block, axis=channel_axis, n_threads=_task_threads(n_threads)))


def _combine_moments(parts, axis=None, keepdims=None):
    return _records(Moments.merge_all(_from_records(part) for part in _flatten(parts)))


def _records_to_moments(blocks, count):
    return _from_records(np.concatenate(blocks), count)


def _default_split_every(x, reduced):
    # A budget of SPLIT_EVERY children per step, given first to the axes with
    # fewest blocks (all of theirs, when it fits), the rest to the others.
    split_every = {}
    budget = SPLIT_EVERY
    chunked = sorted((axis for axis in reduced if x.numblocks[axis] > 1),
                     key=lambda axis: x.numblocks[axis])
    for index, axis in enumerate(chunked):
        share = max(2, int(budget ** (1.0 / (len(chunked) - index)) + 1e-9))
        split_every[axis] = min(x.numblocks[axis], share)
        budget = max(1, budget // split_every[axis])
    for axis in reduced:
        split_every.setdefault(axis, 2)  # one block: no step
    return split_every


def _split_every(split_every, x, reduced):
    if split_every is None:
        return _default_split_every(x, reduced)
    if isinstance(split_every, dict):
        normalized = {}
        for key, value in split_every.items():
            if (isinstance(key, (bool, np.bool_)) or not isinstance(key, numbers.Integral)
                    or not -x.ndim <= key < x.ndim):
                raise ValueError(f"split_every has key {key!r}, not an axis of x ({x.ndim}-d)")
            normalized[int(key) % x.ndim] = check.integer(value, f"split_every[{key}]",
                                                          minimum=2)
        return normalized
    return check.integer(split_every, "split_every", minimum=2)


def moments(x, *, axis=-1, split_every=None, n_threads=None):
    """Per-channel `cnorm.Moments` of a Dask array, lazily.

    A ``dask.array.reduction`` over every axis but the channel axis: each block's
    statistics by `cnorm.moments` (float64, whatever x's dtype), merged by
    `cnorm.Moments.merge` in block order up a fixed tree. The result is exact
    to float64 rounding where ``x.var()`` in float32 loses most digits
    (``|mean| >> std``), and bit-identical over repeated runs of the same
    chunking and split_every. The channel axis may be chunked.

    Parameters
    ----------
    x : dask.array.Array of float32, float64, float16 or bfloat16
        Data with channels on `axis` (ndim >= 1; chunk sizes along the channel
        axis known).
    axis : int, default -1
        The channel axis; every other axis is reduced.
    split_every : int >= 2 or dict of {axis: int >= 2}, optional
        Children per step of the reduction tree, as for ``dask.array.reduction``.
        None: up to SPLIT_EVERY (64) children per step shared over the
        chunked reduced axes (a shallow tree; Dask's default is binary when
        only the batch axis is chunked).
    n_threads : int, optional
        Threads of each task's cnorm call; None: see the module docstring.

    Returns
    -------
    dask.delayed.Delayed
        Computes (``.compute()``, ``dask.compute``, ``Client.compute``) to a
        `cnorm.Moments` with mean and m2 of shape (C,).

    Raises
    ------
    TypeError
        If x is not a Dask array of a dtype cnorm takes, or an argument has the wrong type.
    ValueError
        If axis is out of range, the channel axis has unknown chunk sizes, or
        split_every or n_threads is out of range.

    Examples
    --------
    >>> import numpy as np, dask.array as da, cnorm.dask
    >>> x = da.from_array(np.arange(8.0).reshape(4, 2), chunks=(1, 2))
    >>> m = cnorm.dask.moments(x).compute(scheduler="sync")
    >>> m.count, m.mean, m.var()
    (4, array([3., 4.]), array([5., 5.]))
    """
    x = _dask_array(x)
    axis = _channel_axis(x, axis)
    n_threads = _threads(n_threads)
    reduced = tuple(i for i in range(x.ndim) if i != axis)
    split_every = _split_every(split_every, x, reduced)
    count = math.prod(x.shape[i] for i in reduced)  # the count when C = 0 (no records)
    count = 0 if math.isnan(count) else count
    if reduced:
        chunk = functools.partial(_chunk_moments, channel_axis=axis, n_threads=n_threads)
        records = da.reduction(
            x, chunk, _combine_moments, combine=_combine_moments, axis=reduced,
            keepdims=False, dtype=_RECORD, split_every=split_every, concatenate=False,
            meta=np.empty((0,), _RECORD), name="cnorm-moments",
        )
    else:  # 1-d: one value per channel
        records = da.map_blocks(_one_row_records, x, dtype=_RECORD, meta=np.empty((0,), _RECORD))
    # Delayed over the blocks' own keys: the same graph, keys and dependencies at
    # every call (a dask array passed to delayed gets a new finalize key each time,
    # which a distributed scheduler warns about for a key it already holds).
    blocks = list(records.to_delayed().ravel())
    return dask.delayed(_records_to_moments, pure=True)(blocks, count)


def _one_row_records(block):
    records = np.zeros(block.shape[0], dtype=_RECORD)
    records["count"] = 1
    records["mean"] = block
    return records


# ---------------------------------------------------------------------------
# Elementwise over blocks

def _meta(x):
    return np.empty((0,) * x.ndim, dtype=x.dtype)


def _inference_block(block, running_mean, running_var, gamma, beta, *, eps, axis, n_threads):
    return cnorm.batch_norm_inference(block, running_mean, running_var, gamma, beta, eps,
                                      axis=axis, n_threads=_task_threads(n_threads))


def batch_norm_inference(x, running_mean, running_var, gamma=None, beta=None, eps=1e-5, *,
                         axis=-1, n_threads=None):
    """`cnorm.batch_norm_inference` of a Dask array, block by block.

    ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta`` per
    channel, by ``dask.array.blockwise``: every block is normalized by cnorm
    with the per-channel values of its channels, so any chunking works (the
    channel axis chunked too). y keeps x's dtype and chunks. It is
    `cnorm.batch_norm_inference` of x bit for bit when the channel axis is one
    chunk; otherwise to the rounding of x's dtype (the kernel chooses its
    arithmetic, folded or centered, per call over the channels it sees).

    Parameters
    ----------
    x : dask.array.Array of float32, float64, float16 or bfloat16
        Input with channels on `axis` (ndim >= 2; chunk sizes along the channel
        axis known).
    running_mean, running_var : array_like of float32 or float64, shape (C,)
        The statistics to normalize with; running_var >= 0.
    gamma, beta : array_like of float32 or float64, shape (C,), optional
        Scale and shift; None means 1 and 0.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    axis : int, default -1
        The channel axis.
    n_threads : int, optional
        Threads of each task's cnorm call; None: see the module docstring.

    Returns
    -------
    dask.array.Array
        y, lazily, of x's shape, dtype and chunks.

    Raises
    ------
    TypeError, ValueError
        As `cnorm.batch_norm_inference`, checked when called (not when
        computed), and if x is not a Dask array or its channel axis has
        unknown chunk sizes.
    """
    x = _dask_array(x)
    axis = _channel_axis(x, axis)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"x must not be empty, got shape {x.shape}")
    n_channels = x.shape[axis]
    running_mean = _batchnorm._per_channel(running_mean, "running_mean", n_channels)
    running_var = _batchnorm._per_channel(running_var, "running_var", n_channels)
    _batchnorm._non_negative(running_var, "running_var")
    gamma = None if gamma is None else _batchnorm._per_channel(gamma, "gamma", n_channels)
    beta = None if beta is None else _batchnorm._per_channel(beta, "beta", n_channels)
    eps = _batchnorm._eps(eps)
    n_threads = _threads(n_threads)

    index = tuple(range(x.ndim))
    channel_chunks = (x.chunks[axis],)
    arguments = [x, index]
    for value in (running_mean, running_var, gamma, beta):
        # A per-channel dask array chunked as x's channel axis (None stays None).
        arguments += ([None, None] if value is None else
                      [da.from_array(value, chunks=channel_chunks), (axis,)])
    return da.blockwise(
        _inference_block, index, *arguments, eps=eps, axis=axis, n_threads=n_threads,
        dtype=x.dtype, meta=_meta(x), token="cnorm-batch-norm-inference",
    )


def _lrn_block(block, *, function, axis, parameters, n_threads):
    return function(block, **parameters, axis=axis, n_threads=_task_threads(n_threads))


def _window_map(x, axis, function, parameters, depth, allow_rechunk, n_threads):
    """function(block, **parameters) over blocks whose channels are all there."""
    flag = _batchnorm._flag(allow_rechunk, "allow_rechunk")
    run = functools.partial(_lrn_block, function=function, axis=axis, parameters=parameters,
                            n_threads=n_threads)
    if len(x.chunks[axis]) == 1:
        return x.map_blocks(run, dtype=x.dtype, meta=_meta(x))
    if not flag:
        raise ValueError(
            f"x's channel axis {axis} is split over {len(x.chunks[axis])} chunks "
            f"{x.chunks[axis]}, but LRN mixes neighbouring channels: rechunk it into one "
            f"chunk (x.rechunk({{{axis}: -1}})), or pass allow_rechunk=True to exchange "
            f"{depth} channels with the neighbouring chunks (map_overlap)"
        )
    unknown = [i for i in range(x.ndim) if any(math.isnan(n) for n in x.chunks[i])]
    if unknown:  # map_overlap needs every chunk size (else a bare AssertionError in dask)
        raise ValueError(
            f"x has unknown chunk sizes along axis {unknown[0]}, and allow_rechunk=True "
            f"exchanges channels between chunks with map_overlap, which needs them: call "
            f"x.compute_chunk_sizes() first, or rechunk the channel axis into one chunk "
            f"(x.rechunk({{{axis}: -1}}))"
        )
    depth = min(depth, x.shape[axis] - 1)
    depths = {i: (depth if i == axis else 0) for i in range(x.ndim)}
    y = x.map_overlap(run, depth=depths, boundary="none", trim=True, dtype=x.dtype,
                      meta=_meta(x))
    # map_overlap merges chunks narrower than the depth first: give x's back.
    return y if y.chunks == x.chunks else y.rechunk(x.chunks)


def lrn(x, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5, *, axis=-1, allow_rechunk=False,
        n_threads=None):
    """`cnorm.lrn` (TensorFlow's convention) of a Dask array, block by block.

    Pointwise in every axis but the channel axis, so blocks are independent
    when each holds all the channels. A channel axis split over chunks raises
    ValueError unless ``allow_rechunk=True``: then ``map_overlap`` gives each
    block ``depth_radius`` channels of its neighbours, and trims them after.

    Parameters
    ----------
    x : dask.array.Array of float32, float64, float16 or bfloat16
        Input with channels on `axis` (chunk sizes along it known).
    depth_radius, bias, alpha, beta
        As for `cnorm.lrn`.
    axis : int, default -1
        The channel axis.
    allow_rechunk : bool, default False
        Whether a channel axis in several chunks is exchanged between them
        (overlaps of the window's depth) instead of an error; every chunk size
        of x must then be known.
    n_threads : int, optional
        Threads of each task's cnorm call; None: see the module docstring.

    Returns
    -------
    dask.array.Array
        Lazily, of x's shape, dtype and chunks.

    Raises
    ------
    TypeError, ValueError
        As `cnorm.lrn`, checked when called, and if x is not a Dask array,
        its channel axis has unknown chunk sizes, or is split without
        allow_rechunk.
    """
    x = _dask_array(x)
    axis = _channel_axis(x, axis)
    depth_radius, bias, alpha, beta = _lrn_params(depth_radius, bias, alpha, beta)
    parameters = dict(depth_radius=depth_radius, bias=bias, alpha=alpha, beta=beta)
    return _window_map(x, axis, cnorm.lrn, parameters, depth_radius, allow_rechunk,
                       _threads(n_threads))


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, *, convention="torch",
                        axis=-1, allow_rechunk=False, n_threads=None):
    """`cnorm.local_response_norm` (PyTorch, ONNX, Caffe) of a Dask array.

    As `lrn`, with the size-based parameters: a channel axis split over
    chunks needs ``allow_rechunk=True`` (overlaps of ``max(before, after)``
    channels of the window).

    Parameters
    ----------
    x : dask.array.Array of float32, float64, float16 or bfloat16
        Input with channels on `axis` (chunk sizes along it known).
    size, alpha, beta, k, convention
        As for `cnorm.local_response_norm`.
    axis : int, default -1
        The channel axis.
    allow_rechunk : bool, default False
        As for `lrn`.
    n_threads : int, optional
        Threads of each task's cnorm call; None: see the module docstring.

    Returns
    -------
    dask.array.Array
        Lazily, of x's shape, dtype and chunks.

    Raises
    ------
    TypeError, ValueError
        As `cnorm.local_response_norm` and `lrn`.
    """
    x = _dask_array(x)
    axis = _channel_axis(x, axis)
    before, after, _, _, _ = _size_params(size, alpha, beta, k, convention)
    parameters = dict(size=size, alpha=alpha, beta=beta, k=k, convention=convention)
    return _window_map(x, axis, cnorm.local_response_norm, parameters, max(before, after),
                       allow_rechunk, _threads(n_threads))


# ---------------------------------------------------------------------------
# Recalibration

def recalibrate(x, running_mean, running_var=None, *, axis=None, unbiased=None,
                split_every=None, n_threads=None):
    """Set running statistics to the population statistics of a dataset.

    For recalibrating batch norm after pruning or quantization, or adapting it
    to a new domain (AdaBN), over activations that need not fit in memory:
    either a Dask array (run through `moments` now, with the current
    scheduler: a ``distributed.Client`` if one is active) or an iterable of
    batches (NumPy arrays, read one at a time with `cnorm.moments` and merged
    in order with `cnorm.Moments.merge`). Then, in place::

        running_mean[...] = mean
        running_var[...]  = m2 / (count - 1)   if unbiased (PyTorch's running_var)
                            m2 / count         otherwise (Keras 3, ONNX)

    ``recalibrate(x, layer)`` does the same for a `cnorm.BatchNorm`'s
    ``running_mean`` and ``running_var`` (through their setters, so the
    layer's cached coefficients follow), on the layer's axis and with its
    ``running_var_unbiased`` convention unless `axis` or `unbiased` is given.

    Parameters
    ----------
    x : dask.array.Array, or iterable of numpy.ndarray
        Activations of dtype float32, float64, float16 or bfloat16 with
        channels on `axis`. The batches of an iterable may differ in every
        size but the channel axis; an iterator is read once.
    running_mean : numpy.ndarray of float32 or float64, shape (C,), or cnorm.BatchNorm
        A writable array to set (e.g. a PyTorch module's buffer through
        ``.numpy()``), or a layer whose running statistics to set.
    running_var : numpy.ndarray of float32 or float64, shape (C,), optional
        The array for the variance; None (and only None) with a layer.
    axis : int, optional
        The channel axis; default the layer's ``axis``, or -1 for arrays.
    unbiased : bool, optional
        Whether running_var takes the unbiased variance (PyTorch, TensorFlow)
        or the biased one; default the layer's ``running_var_unbiased``, or
        True for arrays.
    split_every, n_threads
        As for `moments` (split_every: Dask arrays only).

    Returns
    -------
    cnorm.Moments
        The statistics that were written.

    Raises
    ------
    TypeError, ValueError
        As `moments` / `cnorm.moments`; if a running array is not a writable
        float32/float64 numpy.ndarray of shape (C,); if a layer has no running
        statistics (``track_running_stats=False``) or `running_var` is given
        with it; if an iterable holds no batch; ValueError if unbiased and
        there is only one value per channel. The running statistics are
        untouched if an error is raised.
    """
    layer = running_mean if isinstance(running_mean, cnorm.BatchNorm) else None
    if layer is not None:
        if running_var is not None:
            raise TypeError("running_var must be None when running_mean is a cnorm.BatchNorm "
                            f"(its own statistics are set), got {type(running_var).__name__}")
        if not layer.track_running_stats:
            raise ValueError("running_mean: the cnorm.BatchNorm has no running statistics "
                             "(track_running_stats=False)")
        axis = layer.axis if axis is None else axis
        unbiased = layer.running_var_unbiased if unbiased is None else unbiased
    elif running_var is None:
        raise TypeError("running_var must be a numpy.ndarray of shape (C,) (or running_mean "
                        f"a cnorm.BatchNorm), got None")
    axis = -1 if axis is None else axis
    unbiased = _batchnorm._flag(True if unbiased is None else unbiased, "unbiased")
    if isinstance(x, da.Array):
        statistics = _dask_statistics(x, axis, unbiased, split_every, n_threads,
                                      None if layer else (running_mean, running_var))
    else:
        statistics = _batch_statistics(x, axis, n_threads,
                                       None if layer else (running_mean, running_var))
    if layer is not None and statistics.n_channels != layer.num_features:
        raise ValueError(f"x must have {layer.num_features} channels (the layer's "
                         f"num_features) on axis {axis}, got {statistics.n_channels}")
    if unbiased and statistics.count <= 1:
        raise ValueError(f"Expected more than 1 value per channel for an unbiased "
                         f"variance, got {statistics.count}")
    var = statistics.var(ddof=1 if unbiased else 0)
    if layer is not None:
        layer.running_mean = statistics.mean
        layer.running_var = var
    else:
        running_mean[...] = statistics.mean
        running_var[...] = var
    return statistics


def _dask_statistics(x, axis, unbiased, split_every, n_threads, running):
    x = _dask_array(x)
    axis = _channel_axis(x, axis)
    if running is not None:
        _batchnorm._running(running[0], "running_mean", x.shape[axis])
        _batchnorm._running(running[1], "running_var", x.shape[axis])
    count = math.prod(x.shape[i] for i in range(x.ndim) if i != axis)
    if unbiased and count <= 1:  # NaN (unknown sizes) passes, to be checked after
        raise ValueError(f"Expected more than 1 value per channel for an unbiased "
                         f"variance, got x of shape {x.shape}")
    return moments(x, axis=axis, split_every=split_every, n_threads=n_threads).compute()


def _batch_statistics(batches, axis, n_threads, running):
    if isinstance(batches, (np.ndarray, str, bytes)) or not hasattr(batches, "__iter__"):
        raise TypeError(f"x must be a dask.array.Array or an iterable of batches (numpy "
                        f"arrays), got {type(batches).__name__}; for one in-memory array, "
                        f"pass [x]")
    total = None
    for index, batch in enumerate(batches):
        try:
            part = cnorm.moments(batch, axis=axis, n_threads=n_threads)
        except (TypeError, ValueError) as error:
            raise type(error)(f"x[{index}] (batch {index}): {error}") from None
        if total is not None and part.n_channels != total.n_channels:
            raise ValueError(f"x[{index}] (batch {index}) has {part.n_channels} channels on "
                             f"axis {axis}, the first batch {total.n_channels}")
        total = part if total is None else total.merge(part)
    if total is None:
        raise ValueError("x holds no batch: the iterable was empty")
    if running is not None:
        _batchnorm._running(running[0], "running_mean", total.n_channels)
        _batchnorm._running(running[1], "running_var", total.n_channels)
    return total
