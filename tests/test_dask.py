"""cnorm.dask with Dask's local schedulers: against single-process cnorm for many
chunkings and channel axes, determinism, the reduction tree, and bad input.
(The tests on a real cluster are in test_dask_cluster.py.)"""
import math

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
cnorm_dask = pytest.importorskip("cnorm.dask")

from dask.delayed import Delayed  # noqa: E402

import cnorm  # noqa: E402
from cnorm import reference as ref  # noqa: E402

from helpers import assert_close  # noqa: E402

CHUNKINGS = {
    "one-block": (64, 6, 5, 10),
    "batch": (8, 6, 5, 10),
    "uneven": (5, 4, 2, 10),
    "channels-too": (16, 6, 5, 3),
    "single-rows": (1, 6, 5, 10),
}


def data(rng, dtype, offset=0.0, shape=(64, 6, 5, 10)):
    return (rng.standard_normal(shape) * 3 + offset).astype(dtype)


def assert_same_moments(actual, expected):
    assert actual.count == expected.count
    np.testing.assert_array_equal(actual.mean, expected.mean)
    np.testing.assert_array_equal(actual.m2, expected.m2)


@pytest.mark.parametrize("chunks", list(CHUNKINGS.values()), ids=list(CHUNKINGS))
@pytest.mark.parametrize("offset", [0.0, 1e5])
def test_moments_equal_single_process(chunks, offset, dtype, rng):
    x = data(rng, dtype, offset)
    lazy = cnorm_dask.moments(da.from_array(x, chunks=chunks))
    assert isinstance(lazy, Delayed)
    result = lazy.compute(scheduler="sync")
    expected = cnorm.moments(x)
    assert result.count == expected.count
    std = np.sqrt(expected.var())
    assert_close(result.mean, expected.mean, scale=std, rtol_factor=0.1)
    assert_close(result.m2, expected.m2, rtol_factor=0.1)
    # the threaded scheduler runs the same graph: the same bits
    assert_same_moments(lazy.compute(scheduler="threads"), result)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_moments_any_channel_axis(axis, rng):
    x = data(rng, np.float64, 2.0)
    result = cnorm_dask.moments(da.from_array(x, chunks=(16, 3, 5, 4)), axis=axis).compute()
    expected = ref.moments(x, axis=axis)
    assert result.n_channels == x.shape[axis]
    assert_close(result.mean, expected.mean, scale=np.sqrt(expected.var()), rtol_factor=0.1)
    assert_close(result.m2, expected.m2, rtol_factor=0.1)


def test_moments_is_float64_and_accurate_for_float32(rng):
    x = (rng.standard_normal((20_000, 4)) + 1e5).astype(np.float32)
    result = cnorm_dask.moments(da.from_array(x, chunks=(1000, 4))).compute()
    assert result.mean.dtype == np.float64
    expected = ref.moments(x).var()
    assert (np.abs(result.var() - expected) / expected).max() <= 1e-10


def test_moments_bit_identical_over_repeats(rng):
    x = da.from_array(data(rng, np.float32, 10.0), chunks=(4, 3, 5, 5))
    first = cnorm_dask.moments(x).compute()
    for _ in range(3):
        assert_same_moments(cnorm_dask.moments(x).compute(), first)


def test_moments_graph_is_the_same_at_every_call(rng):
    # The result depends on the reduction's blocks by their own keys: a scheduler that
    # still holds the key from an earlier compute gets the same task and dependencies
    # (an array passed to delayed as a whole gets a new finalize key at each compute).
    x = da.from_array(rng.standard_normal((64, 8)), chunks=(8, 8))
    first, second = cnorm_dask.moments(x), cnorm_dask.moments(x)
    assert first.key == second.key
    graph = dict(first.__dask_graph__())
    assert graph.keys() == dict(second.__dask_graph__()).keys()
    assert not any("finalize" in str(key) for key in graph)


def test_moments_split_every_changes_only_the_rounding(rng):
    x = data(rng, np.float64, 1e3)
    array = da.from_array(x, chunks=(2, 3, 5, 10))
    shallow = cnorm_dask.moments(array).compute()
    for split_every in (2, {0: 4, 1: 2}, 1000):
        other = cnorm_dask.moments(array, split_every=split_every).compute()
        assert_close(other.m2, shallow.m2, rtol_factor=0.1)


def test_default_tree_is_shallow():
    x = da.zeros((4096, 8, 8, 4), chunks=(16, 8, 8, 4))  # 256 blocks along N only
    split_every = cnorm_dask._default_split_every(x, (0, 1, 2))
    assert split_every[0] == cnorm_dask.SPLIT_EVERY
    depth = math.ceil(math.log(x.numblocks[0], split_every[0]))
    assert depth == 2  # dask's default (4 over 3 axes: 2 each) would take 8 levels
    x = da.zeros((64, 8, 8, 4), chunks=(16, 4, 2, 4))  # 4 x 2 x 4 blocks: one step
    split_every = cnorm_dask._default_split_every(x, (0, 1, 2))
    assert math.prod(split_every[axis] for axis in (0, 1, 2)) <= cnorm_dask.SPLIT_EVERY
    assert all(split_every[axis] >= x.numblocks[axis] for axis in (0, 1, 2))


def test_moments_one_dimensional_and_unknown_batch_sizes(rng):
    x = rng.standard_normal(6)
    result = cnorm_dask.moments(da.from_array(x, chunks=2)).compute()
    assert result.count == 1 and (result.mean == x).all() and (result.m2 == 0).all()
    x = data(rng, np.float64)
    array = da.from_array(x, chunks=(8, 6, 5, 10))
    kept = array[array[:, 0, 0, 0] > 0]  # unknown sizes along N only
    assert math.isnan(kept.shape[0])
    expected = cnorm.moments(x[x[:, 0, 0, 0] > 0])
    result = cnorm_dask.moments(kept).compute()
    assert result.count == expected.count
    assert_close(result.m2, expected.m2, rtol_factor=0.1)


@pytest.mark.parametrize("chunks", list(CHUNKINGS.values()), ids=list(CHUNKINGS))
def test_batch_norm_inference_equals_single_process(chunks, dtype, rng):
    x = data(rng, dtype, 4.0)
    mean, var = rng.standard_normal(10) + 4, rng.random(10) * 9 + 0.5
    gamma, beta = rng.standard_normal(10), rng.standard_normal(10)
    y = cnorm_dask.batch_norm_inference(da.from_array(x, chunks=chunks), mean, var, gamma, beta,
                                        eps=1e-3)
    assert y.dtype == x.dtype and y.chunks == da.from_array(x, chunks=chunks).chunks
    expected = cnorm.batch_norm_inference(x, mean, var, gamma, beta, eps=1e-3)
    if chunks[-1] == x.shape[-1]:
        np.testing.assert_array_equal(y.compute(), expected)  # the same kernel per block
    else:  # the kernel picks its form (folded or centered) per call, over its channels
        assert_close(y.compute(), expected, scale=np.abs(gamma) * 3 + np.abs(beta))


@pytest.mark.parametrize("axis", [0, 1, 3])
def test_batch_norm_inference_any_axis(axis, rng):
    x = data(rng, np.float32)
    n = x.shape[axis]
    mean, var = rng.standard_normal(n), rng.random(n) + 0.5
    y = cnorm_dask.batch_norm_inference(da.from_array(x, chunks=(16, 3, 5, 4)), mean, var,
                                        axis=axis).compute()
    moved = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    expected = np.moveaxis(cnorm.batch_norm_inference(moved, mean, var), -1, axis)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("function, args, kwargs", [
    ("lrn", (2, 1.0, 1.0, 0.75), {}),
    ("lrn", (20, 0.5, 1.0, 1.0), {}),  # a window wider than C
    ("local_response_norm", (4, 1.0, 0.75, 1.0), {"convention": "torch"}),
    ("local_response_norm", (4, 1.0, 0.75, 1.0), {"convention": "onnx"}),
    ("local_response_norm", (5, 1e-4, 0.75, 2.0), {"convention": "caffe"}),
])
@pytest.mark.parametrize("channel_chunks", [12, 5, 1])
def test_lrn_equals_single_process(function, args, kwargs, channel_chunks, dtype, rng):
    x = data(rng, dtype, shape=(4, 3, 5, 12))
    array = da.from_array(x, chunks=(2, 3, 2, channel_chunks))
    expected = getattr(cnorm, function)(x, *args, **kwargs)
    if channel_chunks < 12:
        with pytest.raises(ValueError, match="rechunk"):
            getattr(cnorm_dask, function)(array, *args, **kwargs)
        kwargs = dict(kwargs, allow_rechunk=True)
    y = getattr(cnorm_dask, function)(array, *args, **kwargs)
    assert y.dtype == x.dtype and y.chunks == array.chunks
    np.testing.assert_array_equal(y.compute(), expected)


def test_lrn_channel_axis_first(rng):
    x = data(rng, np.float64, shape=(12, 4, 5))  # CHW
    y = cnorm_dask.lrn(da.from_array(x, chunks=(12, 2, 5)), 2, axis=0).compute()
    expected = np.moveaxis(cnorm.lrn(np.ascontiguousarray(np.moveaxis(x, 0, -1)), 2), -1, 0)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("unbiased, ddof", [(True, 1), (False, 0)])
def test_recalibrate(unbiased, ddof, rng):
    x = data(rng, np.float32, 50.0)
    running_mean, running_var = np.zeros(10, np.float32), np.ones(10)
    result = cnorm_dask.recalibrate(da.from_array(x, chunks=(7, 6, 5, 3)), running_mean,
                                    running_var, unbiased=unbiased)
    rows = x.reshape(-1, 10).astype(np.float64)
    assert result.count == rows.shape[0]
    assert_close(running_mean, rows.mean(axis=0))
    assert_close(running_var, rows.var(axis=0, ddof=ddof))


@pytest.mark.parametrize("running_var_unbiased, ddof", [(True, 1), (False, 0)])
def test_recalibrate_layer(running_var_unbiased, ddof, rng):
    # recalibrate(x, layer): the layer's axis (NCHW here) and convention, through
    # its setters, so its cached inference coefficients follow.
    x = data(rng, np.float32, 50.0, shape=(9, 5, 4, 3))
    layer = cnorm.BatchNorm(5, axis=1, running_var_unbiased=running_var_unbiased)
    before = layer(x[:2])  # caches coefficients from the initial statistics
    result = cnorm_dask.recalibrate(da.from_array(x, chunks=(4, 5, 2, 3)), layer)
    rows = np.moveaxis(x, 1, -1).reshape(-1, 5).astype(np.float64)
    assert result.count == rows.shape[0]
    assert_close(layer.running_mean, rows.mean(axis=0))
    assert_close(layer.running_var, rows.var(axis=0, ddof=ddof))
    after = layer(x[:2])
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, cnorm.batch_norm_inference(
        x[:2], layer.running_mean, layer.running_var, layer.gamma, layer.beta, layer.eps,
        axis=1))


def test_recalibrate_iterable_of_batches(rng):
    # Batches of different sizes, read one at a time (a generator), give the
    # statistics of their concatenation; bit-identical to merging by hand.
    x = data(rng, np.float64, 1e3, shape=(23, 6))
    sizes = [5, 1, 9, 8]
    batches = np.split(x, np.cumsum(sizes)[:-1])
    running_mean, running_var = np.zeros(6), np.ones(6, np.float32)
    result = cnorm_dask.recalibrate((b for b in batches), running_mean, running_var,
                                    unbiased=False)
    merged = cnorm.Moments.merge_all(cnorm.moments(b) for b in batches)
    np.testing.assert_array_equal(result.to_array(), merged.to_array())
    assert_close(running_mean, x.mean(axis=0))
    assert_close(running_var, x.var(axis=0))
    layer = cnorm.BatchNorm(6, axis=-1)
    cnorm_dask.recalibrate(iter(batches), layer)
    assert_close(layer.running_var, x.var(axis=0, ddof=1))


def _layer():
    return cnorm.BatchNorm(4)


@pytest.mark.parametrize("call, error, message", [
    (lambda: cnorm_dask.recalibrate(good(), _layer(), np.ones(4)), TypeError, "running_var"),
    (lambda: cnorm_dask.recalibrate(good(), np.zeros(4)), TypeError, "running_var"),
    (lambda: cnorm_dask.recalibrate(good(), cnorm.BatchNorm(4, track_running_stats=False)),
     ValueError, "track_running_stats"),
    (lambda: cnorm_dask.recalibrate(good(), cnorm.BatchNorm(5)), ValueError, "num_features"),
    (lambda: cnorm_dask.recalibrate(np.ones((8, 4)), _layer()), TypeError, r"pass \[x\]"),
    (lambda: cnorm_dask.recalibrate([], _layer()), ValueError, "no batch"),
    (lambda: cnorm_dask.recalibrate([np.ones((2, 4)), np.ones((2, 3))], _layer()), ValueError,
     r"x\[1\]"),
    (lambda: cnorm_dask.recalibrate([np.ones((2, 4), np.int64)], _layer()), TypeError,
     r"x\[0\]"),
    (lambda: cnorm_dask.recalibrate([np.ones((1, 4))], _layer()), ValueError,
     "more than 1 value"),
    (lambda: cnorm_dask.recalibrate(good(), _layer(), unbiased="yes"), TypeError, "unbiased"),
])
def test_recalibrate_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_recalibrate_layer_unchanged_on_error():
    layer = _layer()
    state = layer.state_dict()
    with pytest.raises(ValueError):
        cnorm_dask.recalibrate([np.ones((3, 4)), np.ones((3, 5))], layer)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


def test_tasks_thread_counts(monkeypatch):
    import threading

    assert cnorm_dask._task_threads(3) == 3
    assert cnorm_dask._task_threads(None) is None  # main thread: OpenMP's default
    seen = []
    worker = threading.Thread(target=lambda: seen.append(cnorm_dask._task_threads(None)))
    worker.start()
    worker.join()
    assert seen == [1]  # a thread of the threaded scheduler: one per core already


def good():
    return da.ones((8, 4), chunks=(4, 4))


@pytest.mark.parametrize("call, error, message", [
    (lambda: cnorm_dask.moments(np.ones((8, 4))), TypeError, "dask.array.Array"),
    (lambda: cnorm_dask.moments(da.ones((8, 4), dtype=np.int64)), TypeError, "must have dtype"),
    (lambda: cnorm_dask.moments(good(), axis=2), ValueError, "out of bounds"),
    (lambda: cnorm_dask.moments(good(), axis="c"), TypeError, "axis must be an integer"),
    (lambda: cnorm_dask.moments(good(), split_every=1), ValueError, "split_every must be >= 2"),
    (lambda: cnorm_dask.moments(good(), split_every={5: 2}), ValueError, "not an axis"),
    (lambda: cnorm_dask.moments(good(), n_threads=0), ValueError, "n_threads"),
    (lambda: cnorm_dask.moments(good()[good()[:, 0] > 0], axis=0), ValueError,
     "unknown chunk sizes"),
    (lambda: cnorm_dask.batch_norm_inference(np.ones((8, 4)), np.zeros(4), np.ones(4)),
     TypeError, "dask.array.Array"),
    (lambda: cnorm_dask.batch_norm_inference(good(), np.zeros(3), np.ones(4)), ValueError,
     r"running_mean must have shape \(4,\)"),
    (lambda: cnorm_dask.batch_norm_inference(good(), np.zeros(4), -np.ones(4)), ValueError,
     "running_var must be >= 0"),
    (lambda: cnorm_dask.batch_norm_inference(good(), np.zeros(4), np.ones(4), eps=0), ValueError,
     "eps"),
    (lambda: cnorm_dask.batch_norm_inference(da.ones(4), np.zeros(4), np.ones(4)), ValueError,
     "at least 2 dimensions"),
    (lambda: cnorm_dask.batch_norm_inference(good()[good()[:, 0] > 0], np.zeros(4),
                                             np.ones(4), axis=0), ValueError, "compute_chunk_sizes"),
    (lambda: cnorm_dask.lrn(da.ones((8, 4), chunks=(4, 2)), 1), ValueError, "rechunk"),
    (lambda: cnorm_dask.lrn(good(), -1), ValueError, "depth_radius"),
    (lambda: cnorm_dask.lrn(good(), 1, allow_rechunk=1), TypeError, "allow_rechunk"),
    (lambda: cnorm_dask.local_response_norm(good(), 2, convention="caffe"), ValueError, "odd"),
    (lambda: cnorm_dask.local_response_norm([1.0], 2), TypeError, "dask.array.Array"),
    (lambda: cnorm_dask.recalibrate(good(), [0.0] * 4, np.ones(4)), TypeError, "numpy.ndarray"),
    (lambda: cnorm_dask.recalibrate(good(), np.zeros(4), np.ones(5)), ValueError, "shape"),
    (lambda: cnorm_dask.recalibrate(da.ones((1, 4)), np.zeros(4), np.ones(4)), ValueError,
     "more than 1 value"),
])
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_recalibrate_leaves_running_statistics_on_error():
    running_mean, running_var = np.zeros(4), np.ones(4)
    ones = da.ones((8, 4), chunks=(4, 4))
    with pytest.raises(ValueError):
        cnorm_dask.recalibrate(ones[ones[:, 0] > 1], running_mean, running_var)  # no rows
    assert (running_mean == 0).all() and (running_var == 1).all()


def test_docstring_examples():
    import doctest

    result = doctest.testmod(cnorm_dask, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
