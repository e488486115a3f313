"""Channels on any axis and half-precision storage, for every public function.

- The (outer, C, inner) view: NCHW with ``axis=1`` gives the bits of NHWC with
  ``axis=-1`` where the arithmetic is the same (LRN forward and backward, batch
  norm inference and the frozen backward); the training statistics agree to
  float64 rounding. Every layout is bit-identical for 1, 2 and 3 threads.
- Each test that takes the ``isa`` fixture runs on every ISA build this CPU
  runs (baseline, x86-64-v3, x86-64-v4), in one process.
- float16 and bfloat16: each result is what the float32 kernels give on the
  same values upcast, rounded once to the storage type (bit for bit), and
  within one unit in the last place of the storage type of the float64
  reference, plus float32's own error where terms cancel.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cnorm
from cnorm import reference as ref
from cnorm._dispatch import kernels

from helpers import assert_close, assert_within_ulp

try:
    import ml_dtypes
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # optional: the bfloat16 tests skip
    BFLOAT16 = None

HALF = [pytest.param(np.dtype(np.float16), id="float16"),
        pytest.param(BFLOAT16, id="bfloat16",
                     marks=pytest.mark.skipif(BFLOAT16 is None, reason="needs ml_dtypes"))]

def nchw(array):
    return np.ascontiguousarray(np.moveaxis(array, -1, 1))


def lrn_calls(size=5, alpha=1.0, beta=0.75, k=2.0, convention="torch"):
    """(name, forward(x, axis, n_threads), backward(dy, x, axis, n_threads))."""
    def forward(x, axis=-1, n_threads=None):
        return cnorm.local_response_norm(x, size, alpha, beta, k, convention=convention,
                                         axis=axis, n_threads=n_threads)

    def backward(dy, x, axis=-1, n_threads=None):
        return cnorm.local_response_norm_backward(dy, x, size, alpha, beta, k,
                                                  convention=convention, axis=axis,
                                                  n_threads=n_threads)
    return forward, backward


LRN_SETTINGS = [
    dict(size=5, alpha=1e-4, beta=0.75, k=2.0),            # AlexNet, beta 0.75 path
    dict(size=4, alpha=1.0, beta=0.75, k=0.5),             # even, front-heavy
    dict(size=4, alpha=1.0, beta=0.5, k=0.5, convention="onnx"),  # even, back-heavy
    dict(size=3, alpha=1.0, beta=1.0, k=1.0),
    dict(size=7, alpha=0.5, beta=0.6, k=1.0),              # general beta: polynomial power
    dict(size=13, alpha=0.1, beta=0.75, k=1e-3),           # wide window (not unrolled)
]


def lrn_case(rng, shape, dtype, huge=False):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    if huge:  # some pixels leave the float32 fast path: squares, or in the
        # backward |dy|, beyond its limits (float_square_limit, float_dy_limit)
        x.reshape(-1, shape[-1])[::7, 1] = 3e18 if dtype == np.float32 else 3e150
        dy.reshape(-1, shape[-1])[3::5, 2] = 1e36 if dtype == np.float32 else 1e300
    return x, dy


@pytest.mark.parametrize("setting", LRN_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("shape", [(2, 5, 7, 12), (3, 3, 3, 96), (1, 9, 9, 40), (2, 1, 19, 3)])
def test_lrn_nchw_has_the_nhwc_bits(setting, shape, dtype, isa):
    rng = np.random.default_rng(sum(shape))
    forward, backward = lrn_calls(**setting)
    x, dy = lrn_case(rng, shape, dtype, huge=shape[-1] > 3)
    y = forward(x)
    dx = backward(dy, x)
    expected = ref.local_response_norm(x, **setting)
    assert_close(y, expected)
    assert_close(dx, ref.local_response_norm_backward(dy, x, **setting), scale=np.abs(dy))
    for n_threads in (1, 2, 3):
        np.testing.assert_array_equal(forward(nchw(x), axis=1, n_threads=n_threads), nchw(y))
        np.testing.assert_array_equal(backward(nchw(dy), nchw(x), axis=1, n_threads=n_threads),
                                      nchw(dx))


def test_lrn_nchw_many_tiles(n_threads):
    # Several pixel blocks per image and several images, partial last block.
    rng = np.random.default_rng(5)
    x, dy = lrn_case(rng, (3, 96, 37, 41), np.float32)
    forward, backward = lrn_calls(size=5, alpha=1e-4, beta=0.75, k=2.0)
    block = kernels("_lrn").plane_block(96, 37 * 41, 3)
    assert (37 * 41) % block != 0 and 37 * 41 > block
    y = forward(x, axis=1, n_threads=n_threads)
    assert_close(y, ref.local_response_norm(x, 5, 1e-4, 0.75, 2.0, axis=1))
    x_nhwc = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    np.testing.assert_array_equal(np.moveaxis(y, 1, -1), forward(x_nhwc))
    dx = backward(dy, x, axis=1, n_threads=n_threads)
    dx_ref = ref.local_response_norm_backward(dy, x, 5, 1e-4, 0.75, 2.0, axis=1)
    assert_close(dx, dx_ref, scale=np.abs(dy))


def bn_case(rng, shape, dtype, axis, offset=0.0):
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    n_channels = shape[axis]
    gamma = rng.uniform(0.5, 2, n_channels)
    beta = rng.standard_normal(n_channels)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dy


@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (2, 64, 9, 9), (1, 16, 80, 80), (3, 5, 2, 2)])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_batch_norm_nchw(shape, offset, dtype, isa):
    rng = np.random.default_rng(sum(shape))
    x, gamma, beta, dy = bn_case(rng, shape, dtype, 1, offset)
    x_nhwc = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    dy_nhwc = np.ascontiguousarray(np.moveaxis(dy, 1, -1))
    axes = (0, 2, 3)
    mean64, var64 = np.asarray(x, np.float64).mean(axes), np.asarray(x, np.float64).var(axes)
    running_mean, running_var = mean64 + 0.1, var64 + 0.5
    # inference and the frozen backward: the same arithmetic, the same bits
    y = cnorm.batch_norm_inference(x, running_mean, running_var, gamma, beta, axis=1)
    np.testing.assert_array_equal(
        np.moveaxis(y, 1, -1),
        cnorm.batch_norm_inference(x_nhwc, running_mean, running_var, gamma, beta))
    assert_close(y, ref.batch_norm_inference(x, running_mean, running_var, gamma, beta, axis=1),
                 scale=np.abs(gamma)[:, None, None] * (np.abs(offset) + 10) + 1)
    invstd_run = 1 / np.sqrt(running_var + 1e-5)
    frozen = cnorm.batch_norm_backward(dy, x, running_mean, invstd_run, gamma, training=False,
                                       axis=1)
    frozen_nhwc = cnorm.batch_norm_backward(dy_nhwc, x_nhwc, running_mean, invstd_run, gamma,
                                            training=False)
    np.testing.assert_array_equal(np.moveaxis(frozen[0], 1, -1), frozen_nhwc[0])
    # training: statistics to float64 rounding, bit-identical over thread counts
    results = []
    for n_threads in (1, 2, 3):
        rm, rv = running_mean.copy(), running_var.copy()
        y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, running_mean=rm,
                                                    running_var=rv, axis=1,
                                                    n_threads=n_threads)
        dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, axis=1,
                                                      n_threads=n_threads)
        results.append((y, mean, invstd, rm, rv, dx, dgamma, dbeta))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)
    y, mean, invstd, rm, rv, dx, dgamma, dbeta = results[0]
    rm_ref, rv_ref = running_mean.copy(), running_var.copy()
    y_ref, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma, beta, running_mean=rm_ref,
                                                          running_var=rv_ref, axis=1)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-13, atol=1e-12 * (abs(offset) + 1))
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-9)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-9)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-13, atol=1e-12 * (abs(offset) + 1))
    _, mean_nhwc, invstd_nhwc = cnorm.batch_norm_training(x_nhwc, gamma, beta)
    np.testing.assert_allclose(mean, mean_nhwc, rtol=1e-14, atol=1e-13 * (abs(offset) + 1))
    np.testing.assert_allclose(invstd, invstd_nhwc, rtol=1e-9)
    xhat = (np.asarray(x, np.float64) - mean_ref[:, None, None]) * invstd_ref[:, None, None]
    assert_close(y, y_ref, scale=np.abs(gamma[:, None, None] * xhat) + np.abs(beta)[:, None, None]
                 + 1, rtol_factor=1 + abs(offset) / 100)
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(dy, x, mean, invstd, gamma, axis=1)
    dy64 = np.abs(np.asarray(dy, np.float64))
    assert_close(dx, dx_ref, scale=(gamma * invstd)[:, None, None] * (dy64 + dy64.mean() * 4),
                 rtol_factor=1 + abs(offset) / 100)
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=1e-9, atol=1e-9 * dy64.sum())
    np.testing.assert_allclose(dbeta, dbeta_ref, rtol=1e-9, atol=1e-11 * dy64.sum())


def test_batch_norm_large_planes_split_into_segments(n_threads):
    # 1x64x150x150: one image's planes are cut into segments (several tiles
    # per channel): the statistics still equal the reference to float64
    # rounding and are bit-identical over thread counts (checked above for
    # smaller planes).
    rng = np.random.default_rng(3)
    x, gamma, beta, dy = bn_case(rng, (1, 64, 150, 150), np.float32, 1, 5.0)
    tiles, block, segment = kernels("_batchnorm").grid(1, 1, 64, 150 * 150)
    assert tiles > 1 and segment < 150 * 150
    y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, axis=1, n_threads=n_threads)
    _, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma, beta, axis=1)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-13)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-10)
    _, mean_1, invstd_1 = cnorm.batch_norm_training(x, gamma, beta, axis=1, n_threads=1)
    np.testing.assert_array_equal(mean, mean_1)
    np.testing.assert_array_equal(invstd, invstd_1)


@given(st.data())
def test_any_axis_matches_the_reference(data):
    ndim = data.draw(st.integers(1, 4), label="ndim")
    shape = tuple(data.draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim),
                            label="shape"))
    axis = data.draw(st.integers(-ndim, ndim - 1), label="axis")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    rng = np.random.default_rng(ndim * 7 + axis)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    size = data.draw(st.integers(1, 6), label="size")
    y = cnorm.local_response_norm(x, size, 1.0, 0.75, 0.5, axis=axis)
    assert y.shape == x.shape
    assert_close(y, ref.local_response_norm(x, size, 1.0, 0.75, 0.5, axis=axis))
    dx = cnorm.lrn_backward(dy, x, 2, 0.5, 1.0, 0.75, axis=axis)
    assert_close(dx, ref.lrn_backward(dy, x, 2, 0.5, 1.0, 0.75, axis=axis), scale=np.abs(dy))
    if ndim < 2 or x.size // shape[axis] < 2:
        return
    n_channels = shape[axis]
    gamma, beta = rng.uniform(0.5, 2, n_channels), rng.standard_normal(n_channels)
    y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, axis=axis)
    y_ref, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma, beta, axis=axis)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12, atol=1e-12)
    expand = [1] * ndim
    expand[axis] = n_channels
    assert_close(y, y_ref, scale=(np.abs(gamma) * 4 + np.abs(beta)).reshape(expand))
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(dy, x, mean, invstd, gamma,
                                                            axis=axis)
    np.testing.assert_allclose(dbeta, dbeta_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=1e-9, atol=1e-9)
    assert_close(dx, dx_ref, scale=(np.abs(gamma * invstd) * 10).reshape(expand)
                 * (np.abs(dy).max() + 1), rtol_factor=10)


def test_permuted_layouts_are_used_without_a_copy():
    # PyTorch's channels_last tensors, seen from NumPy: NCHW shape, NHWC memory.
    rng = np.random.default_rng(2)
    memory = rng.standard_normal((2, 7, 7, 16)).astype(np.float32)
    channels_last = memory.transpose(0, 3, 1, 2)  # shape (2, 16, 7, 7), axis 1
    mean, var = np.zeros(16), np.ones(16)
    y = cnorm.batch_norm_inference(channels_last, mean, var, axis=1)
    assert y.shape == channels_last.shape and y.strides == channels_last.strides
    np.testing.assert_array_equal(y.transpose(0, 2, 3, 1),
                                  cnorm.batch_norm_inference(memory, mean, var))
    out = np.empty_like(memory).transpose(0, 3, 1, 2)
    assert cnorm.lrn(channels_last, 2, axis=1, out=out) is out
    np.testing.assert_array_equal(out.transpose(0, 2, 3, 1), cnorm.lrn(memory, 2))
    with pytest.raises(ValueError, match="out must have the memory layout of x"):
        cnorm.lrn(channels_last, 2, axis=1, out=np.empty(channels_last.shape, np.float32))
    # in place on the permuted view
    view = memory.copy().transpose(0, 3, 1, 2)
    cnorm.lrn(view, 2, axis=1, out=view)
    np.testing.assert_array_equal(view.transpose(0, 2, 3, 1), cnorm.lrn(memory, 2))


# ---------------------------------------------------------------------------
# Half-precision storage

def half_case(rng, shape, dtype, scale=1.0):
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy


def float32_of(x):
    return np.asarray(x).astype(np.float32)


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("setting", LRN_SETTINGS[:5], ids=lambda s: "-".join(map(str, s.values())))
def test_half_lrn_is_float32_rounded_once(half, layout, setting, isa):
    rng = np.random.default_rng(11)
    x, dy = half_case(rng, (3, 9, 11, 40), half, scale=3.0)
    axis = -1 if layout == "nhwc" else 1
    if layout == "nchw":
        x, dy = nchw(x), nchw(dy)
    forward, backward = lrn_calls(**setting)
    y = forward(x, axis=axis)
    assert y.dtype == half and y.shape == x.shape
    np.testing.assert_array_equal(y.view(np.uint16),
                                  forward(float32_of(x), axis=axis).astype(half).view(np.uint16))
    assert_within_ulp(y, ref.local_response_norm(x, axis=axis, **setting))
    dx = backward(dy, x, axis=axis)
    np.testing.assert_array_equal(
        dx.view(np.uint16),
        backward(float32_of(dy), float32_of(x), axis=axis).astype(half).view(np.uint16))
    dx_ref = ref.local_response_norm_backward(dy, x, axis=axis, **setting)
    assert_within_ulp(dx, dx_ref, scale=np.abs(float32_of(dy)) * 4)
    for n_threads in (1, 2, 3):
        np.testing.assert_array_equal(forward(x, axis=axis, n_threads=n_threads).view(np.uint16),
                                      y.view(np.uint16))


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_half_batch_norm_is_float32_rounded_once(half, layout, offset, isa):
    rng = np.random.default_rng(12)
    shape = (6, 11, 13, 24) if layout == "nhwc" else (6, 24, 31, 37)
    axis = -1 if layout == "nhwc" else 1
    x = (rng.standard_normal(shape) + offset).astype(half)
    dy = rng.standard_normal(shape).astype(half)
    n_channels = shape[axis]
    gamma, beta = rng.uniform(0.5, 2, n_channels), rng.standard_normal(n_channels)
    expand = [1] * 4
    expand[axis] = n_channels
    running_mean, running_var = np.full(n_channels, offset + 0.1), np.full(n_channels, 1.5)
    x32, dy32 = float32_of(x), float32_of(dy)

    def bits(array):
        return array.view(np.uint16)

    y = cnorm.batch_norm_inference(x, running_mean, running_var, gamma, beta, axis=axis)
    assert y.dtype == half
    y32 = cnorm.batch_norm_inference(x32, running_mean, running_var, gamma, beta, axis=axis)
    np.testing.assert_array_equal(bits(y), bits(y32.astype(half)))
    scale = (np.abs(gamma) * (offset + 4) + np.abs(beta)).reshape(expand)
    assert_within_ulp(y, ref.batch_norm_inference(x, running_mean, running_var, gamma, beta,
                                                  axis=axis), scale=scale)
    rm, rv = running_mean.copy(), running_var.copy()
    rm32, rv32 = running_mean.copy(), running_var.copy()
    y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, running_mean=rm, running_var=rv,
                                                axis=axis)
    y32, mean32, invstd32 = cnorm.batch_norm_training(x32, gamma, beta, running_mean=rm32,
                                                      running_var=rv32, axis=axis)
    assert mean.dtype == invstd.dtype == np.float64
    np.testing.assert_array_equal(mean, mean32)
    np.testing.assert_array_equal(invstd, invstd32)
    np.testing.assert_array_equal(rv, rv32)
    np.testing.assert_array_equal(bits(y), bits(y32.astype(half)))
    y_ref, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma, beta, axis=axis)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-13)
    assert_within_ulp(y, y_ref, scale=scale)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    dx32, dgamma32, dbeta32 = cnorm.batch_norm_backward(dy32, x32, mean, invstd, gamma,
                                                        axis=axis)
    np.testing.assert_array_equal(bits(dx), bits(dx32.astype(half)))
    np.testing.assert_array_equal(dgamma, dgamma32)
    np.testing.assert_array_equal(dbeta, dbeta32)
    dx_ref, _, _ = ref.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    assert_within_ulp(dx, dx_ref, scale=(np.abs(gamma * invstd) * 6).reshape(expand))


@pytest.mark.parametrize("half", HALF)
def test_half_extremes(half, isa):
    # Values near the top of the range and among the subnormals; squares are
    # never formed in half precision (fp16 squares overflow from 256).
    info = np.finfo(half)
    top = float(info.max)
    values = np.array([top, -top * 0.999, top / 3, 300.0, -256.0, 1.0, float(info.tiny),
                       float(info.tiny) / 64, -float(info.tiny) / 4, 0.0], np.float64)
    x = np.tile(values, (3, 1)).astype(half)
    for setting in LRN_SETTINGS[:4]:
        forward, backward = lrn_calls(**setting)
        y = forward(x)
        assert_within_ulp(y, ref.local_response_norm(x, **setting))
        np.testing.assert_array_equal(y.view(np.uint16),
                                      forward(float32_of(x)).astype(half).view(np.uint16))
    # TensorFlow 2.21's fp16 LRN gives [nan, nan, 0, nan, nan] here; the middle
    # channel's window holds all five (16.98), the others are clipped.
    x = np.full((1, 5), 300.0, half)
    y = cnorm.lrn(x, depth_radius=2, bias=1.0, alpha=1e-4, beta=0.75)
    assert_within_ulp(y, ref.lrn(x, 2, 1.0, 1e-4, 0.75))
    np.testing.assert_allclose(y.astype(np.float64)[0, 2], 16.98, rtol=4e-3)
    # batch norm whose output overflows the storage type: inf, as rounding gives
    x = np.array([[top * 0.5], [-top * 0.5], [0.0]], np.float64).astype(half)
    y = cnorm.batch_norm_inference(x, np.zeros(1), np.full(1, 1e-6), np.full(1, 4.0),
                                   np.zeros(1))
    assert_within_ulp(y, ref.batch_norm_inference(x, np.zeros(1), np.full(1, 1e-6),
                                                  np.full(1, 4.0), np.zeros(1)))
    assert np.isinf(y.astype(np.float64)[:2]).all()


@pytest.mark.parametrize("half", HALF)
def test_half_nan_and_out(half):
    x = np.random.default_rng(4).standard_normal((4, 6)).astype(half)
    x[1, 2] = np.nan
    y = cnorm.local_response_norm(x, 3)
    assert np.isnan(y.astype(np.float32)[1, 1:4]).all()
    assert not np.isnan(y.astype(np.float32)[0]).any()
    out = np.empty_like(x)
    assert cnorm.local_response_norm(x, 3, out=out) is out
    np.testing.assert_array_equal(out.view(np.uint16), y.view(np.uint16))
    with pytest.raises(TypeError, match="out must have dtype"):
        cnorm.local_response_norm(x, 3, out=np.empty(x.shape, np.float32))
    with pytest.raises(TypeError, match="gamma must have dtype"):
        cnorm.batch_norm_inference(x, np.zeros(6), np.ones(6), np.ones(6, half))
    same = x.copy()
    cnorm.local_response_norm(same, 3, out=same)
    np.testing.assert_array_equal(same.view(np.uint16), y.view(np.uint16))


def test_every_isa_build_is_tested():
    # The fixture covers every build the CPU runs: on an AVX-512 machine all three.
    from cnorm import _dispatch

    levels = _dispatch.available_levels()
    assert "baseline" in levels and _dispatch.ISA_LEVEL in levels
    import importlib

    lrn_module = importlib.import_module("cnorm.lrn")
    for level in levels:
        with _dispatch.using(level):
            suffix = "" if level == "baseline" else "_" + level.replace("-", "_")
            assert lrn_module._lrn.__name__ == "cnorm._lrn" + suffix


@pytest.mark.parametrize("shape, dtype", [((1, 1024, 14, 14), np.float32),
                                          ((1, 2048, 7, 7), np.float64),
                                          ((1, 512, 14, 14), np.float16),
                                          ((2, 768, 9, 9), np.float32)])
def test_batch_norm_few_plane_tiles_split_by_channels(shape, dtype, isa):
    # A batch of one (NCHW) is one tile of whole planes: its elementwise
    # passes split the channels over the threads instead. Same bits for every
    # thread count, and as channels last (the same arithmetic per element),
    # with the fused epilogue too.
    rng = np.random.default_rng(11)
    x, gamma, beta, dy = bn_case(rng, shape, dtype, 1, 2.0)
    tiles, _, _ = kernels("_batchnorm").grid(1, shape[0], shape[1], shape[2] * shape[3])
    assert tiles < 3
    residual = rng.standard_normal(shape).astype(dtype)
    mean, var = rng.standard_normal(shape[1]), rng.random(shape[1]) + 0.5
    results = []
    for n_threads in (1, 2, 3):
        common = dict(axis=1, n_threads=n_threads)
        y = cnorm.batch_norm_inference(x, mean, var, gamma, beta, **common)
        fused = cnorm.batch_norm_inference(x, mean, var, gamma, beta, activation="relu",
                                           residual=residual, **common)
        train = cnorm.batch_norm_training(x, gamma, beta, **common)
        back = cnorm.batch_norm_backward(dy, x, train[1], train[2], gamma, **common)
        frozen = cnorm.batch_norm_backward(dy, x, mean, 1 / np.sqrt(var + 1e-5), gamma,
                                           training=False, **common)
        results.append((y, fused, *train, *back, frozen[0]))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)
    nhwc = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    np.testing.assert_array_equal(
        np.moveaxis(results[0][0], 1, -1),
        cnorm.batch_norm_inference(nhwc, mean, var, gamma, beta))
    assert_close(results[0][0], ref.batch_norm_inference(x, mean, var, gamma, beta, axis=1),
                 scale=np.abs(gamma)[:, None, None] * 4 + np.abs(beta)[:, None, None] + 1)
