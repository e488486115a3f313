"""Fused batch norm: activation="relu" and residual (inference), relu (training and
backward), through the one epilogue of the kernel core, on every layout, storage
type, ISA build and kernel path (rows, narrow rows, planes, segments, streaming
stores), against the float64 reference and against the unfused sequence."""
import numpy as np
import pytest

import cnorm
from cnorm import _dispatch, reference
from conftest import THREAD_COUNTS

bn_kernels = _dispatch.kernels("_batchnorm")

# (shape, axis): narrow rows (cnorm_affine_range), wide rows (row loop), planes
# (NCHW), segments of planes (few outer indices, large planes), 2-D.
CASES = [
    ((4, 6, 5, 16), -1),
    ((3, 5, 7, 96), -1),
    ((2, 12, 9, 9), 1),
    ((1, 3, 300, 301), 1),
    ((40, 7), -1),
]


def _params(rng, n, offset=0.0):
    return dict(running_mean=rng.normal(offset, 1.0, n), running_var=rng.uniform(0.2, 2.0, n),
                gamma=rng.normal(1.0, 0.5, n), beta=rng.normal(0.0, 0.5, n))


def _half(dtype):
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


TOLERANCE = {np.float64: 1e-13, np.float32: 2e-6, np.float16: 2e-3}


@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0.0, 50.0])  # folded and centered coefficients
def test_inference_fused_matches_reference(shape, axis, dtype, offset, rng, isa):
    x = (rng.normal(offset, 1.0, shape)).astype(dtype)
    z = rng.normal(0, 1.0, shape).astype(dtype)
    p = _params(rng, shape[axis], offset)
    for activation, residual in [("relu", None), (None, z), ("relu", z)]:
        y = cnorm.batch_norm_inference(x, eps=1e-3, activation=activation, residual=residual,
                                       axis=axis, **p)
        expected = reference.batch_norm_inference(x, eps=1e-3, activation=activation,
                                                  residual=residual, axis=axis, **p)
        scale = 1.0 + np.abs(expected) + (0 if residual is None else np.abs(z))
        assert y.dtype == dtype and y.shape == shape
        assert (np.abs(y - expected) <= TOLERANCE[dtype] * 8 * scale).all()
        if activation == "relu":
            assert (y >= 0).all()


@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_fused_equals_unfused_bits(shape, axis, dtype, rng, isa):
    """The epilogue is bn(x) (its own bits) + residual, then max(., 0), in the
    storage type: the same bits as the three-step sequence."""
    x = rng.normal(0, 1.0, shape).astype(dtype)
    z = rng.normal(0, 1.0, shape).astype(dtype)
    p = _params(rng, shape[axis])
    plain = cnorm.batch_norm_inference(x, axis=axis, **p)
    fused = cnorm.batch_norm_inference(x, axis=axis, activation="relu", residual=z, **p)
    np.testing.assert_array_equal(fused, np.maximum(plain + z, 0))
    np.testing.assert_array_equal(cnorm.batch_norm_inference(x, axis=axis, activation="relu",
                                                             **p), np.maximum(plain, 0))


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape, axis", CASES[:4])
def test_half_fused_is_float32_rounded_once(half, shape, axis, rng, isa):
    dtype = _half(half)
    x = rng.normal(0, 1.0, shape).astype(dtype)
    z = rng.normal(0, 1.0, shape).astype(dtype)
    p = _params(rng, shape[axis])
    fused = cnorm.batch_norm_inference(x, axis=axis, activation="relu", residual=z, **p)
    plain32 = cnorm.batch_norm_inference(x.astype(np.float32), axis=axis, **p)
    expected = np.maximum(plain32 + z.astype(np.float32), 0).astype(dtype)
    assert fused.dtype == dtype
    np.testing.assert_array_equal(fused.view(np.uint16), expected.view(np.uint16))


def test_nchw_has_the_nhwc_bits(rng, isa):
    x = rng.normal(size=(2, 24, 9, 11)).astype(np.float32)
    z = rng.normal(size=x.shape).astype(np.float32)
    p = _params(rng, 24)
    nchw = cnorm.batch_norm_inference(x, axis=1, activation="relu", residual=z, **p)
    nhwc = cnorm.batch_norm_inference(np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                                      activation="relu",
                                      residual=np.ascontiguousarray(z.transpose(0, 2, 3, 1)),
                                      **p)
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), nhwc)


@pytest.mark.parametrize("shape, axis", CASES)
def test_fused_bits_for_every_thread_count(shape, axis, rng):
    x = rng.normal(size=shape).astype(np.float32)
    z = rng.normal(size=shape).astype(np.float32)
    p = _params(rng, shape[axis])
    results = [cnorm.batch_norm_inference(x, axis=axis, activation="relu", residual=z,
                                          n_threads=n, **p) for n in THREAD_COUNTS]
    results += [cnorm.batch_norm_training(x, axis=axis, activation="relu", n_threads=n)[0]
                for n in THREAD_COUNTS]
    for r in results[1:len(THREAD_COUNTS)]:
        np.testing.assert_array_equal(r, results[0])
    for r in results[len(THREAD_COUNTS) + 1:]:
        np.testing.assert_array_equal(r, results[len(THREAD_COUNTS)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_paths(dtype, rng, isa):
    """Tensors past the streaming threshold: float32 rows stream through the
    epilogue's scratch pieces, planes through their blocks of whole 16-value
    streaming stores (STREAM_BLOCK values at a time)."""
    # planes of 381 x 379 (odd: every plane starts at another alignment, and
    # ends in a partial block), x and y over the 32 MiB streaming size
    for shape, axis in [((64, 56, 56, 48), -1), ((4, 16, 381, 379), 1)]:
        x = rng.normal(size=shape).astype(dtype)
        z = rng.normal(size=shape).astype(dtype)
        p = _params(rng, shape[axis])
        plain = cnorm.batch_norm_inference(x, axis=axis, **p)
        fused = cnorm.batch_norm_inference(x, axis=axis, activation="relu", residual=z, **p)
        np.testing.assert_array_equal(fused, np.maximum(plain + z, 0))


def test_out_in_place_over_x_and_misaligned_out(rng):
    x = rng.normal(size=(6, 5, 32)).astype(np.float32)
    z = rng.normal(size=x.shape).astype(np.float32)
    p = _params(rng, 32)
    expected = cnorm.batch_norm_inference(x, activation="relu", residual=z, **p)
    buffer = np.empty(x.size * 4 + 1, np.uint8)[1:].view(np.float32).reshape(x.shape)
    cnorm.batch_norm_inference(x, activation="relu", residual=z, out=buffer, **p)
    np.testing.assert_array_equal(buffer, expected)
    x2 = x.copy()
    y = cnorm.batch_norm_inference(x2, activation="relu", residual=z, out=x2, **p)
    assert y is x2
    np.testing.assert_array_equal(x2, expected)


def test_residual_in_another_layout_is_copied_once(rng):
    x = rng.normal(size=(2, 7, 6, 8)).astype(np.float32)
    z = np.asfortranarray(rng.normal(size=x.shape).astype(np.float32))
    p = _params(rng, 8)
    expected = np.maximum(cnorm.batch_norm_inference(x, **p) + z, 0)
    np.testing.assert_array_equal(
        cnorm.batch_norm_inference(x, activation="relu", residual=z, **p), expected)


def test_nan_propagates_through_relu(rng):
    x = rng.normal(size=(40, 4))
    x[3, 1] = np.nan
    y = cnorm.batch_norm_inference(x, np.zeros(4), np.ones(4), activation="relu")
    assert np.isnan(y[3, 1]) and (y[~np.isnan(y)] >= 0).all()


def test_training_relu(rng, isa):
    for shape, axis in CASES:
        for dtype in (np.float32, np.float64):
            x = rng.normal(2.0, 3.0, shape).astype(dtype)
            gamma, beta = rng.normal(1, 0.5, shape[axis]), rng.normal(0, 0.5, shape[axis])
            rm, rv = np.zeros(shape[axis]), np.ones(shape[axis])
            y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, activation="relu",
                                                        running_mean=rm, running_var=rv,
                                                        axis=axis)
            y0, mean0, invstd0 = cnorm.batch_norm_training(x, gamma, beta, axis=axis)
            np.testing.assert_array_equal(y, np.maximum(y0, 0))
            np.testing.assert_array_equal(mean, mean0)
            np.testing.assert_array_equal(invstd, invstd0)
            expected, _, _ = reference.batch_norm_training(x, gamma, beta, activation="relu",
                                                           axis=axis)
            assert (np.abs(y - expected) <= TOLERANCE[dtype] * 8 * (1 + np.abs(expected))).all()


def test_bad_input(rng):
    x = rng.normal(size=(4, 3)).astype(np.float32)
    p = dict(running_mean=np.zeros(3), running_var=np.ones(3))
    with pytest.raises(ValueError, match="activation must be None or 'relu', got 'gelu'"):
        cnorm.batch_norm_inference(x, activation="gelu", **p)
    with pytest.raises(TypeError, match="activation must be None or 'relu'"):
        cnorm.batch_norm_inference(x, activation=True, **p)
    with pytest.raises(ValueError, match="activation"):
        cnorm.batch_norm_training(x, activation="tanh")
    with pytest.raises(TypeError, match=r"residual must have the dtype of x \(float32\)"):
        cnorm.batch_norm_inference(x, residual=x.astype(np.float64), **p)
    with pytest.raises(ValueError, match="residual must have the shape of x"):
        cnorm.batch_norm_inference(x, residual=x[:2], **p)
    with pytest.raises(ValueError, match="residual must not share memory with out"):
        cnorm.batch_norm_inference(x, residual=x, out=x, **p)
    z = x.copy()
    with pytest.raises(ValueError, match="residual must not share memory with out"):
        cnorm.batch_norm_inference(x, residual=z, out=z, **p)
    np.testing.assert_array_equal(z, x)  # nothing written


def _loss_grad_check(x, gamma, beta, dy, axis, eps=1e-3):
    """Finite differences of sum(dy * relu(bn_train(x))) in float64."""
    def loss(xv, gv, bv):
        y, _, _ = reference.batch_norm_training(xv, gv, bv, eps, activation="relu", axis=axis)
        return float((dy * y).sum())
    h = 1e-6
    grads = []
    for which, value in (("x", x), ("gamma", gamma), ("beta", beta)):
        grad = np.zeros_like(value)
        flat = grad.reshape(-1)
        for i in range(value.size):
            plus, minus = value.copy(), value.copy()
            plus.reshape(-1)[i] += h
            minus.reshape(-1)[i] -= h
            args = {"x": (x, gamma, beta), "gamma": (x, gamma, beta), "beta": (x, gamma, beta)}
            a = [x, gamma, beta]
            k = ["x", "gamma", "beta"].index(which)
            a[k] = plus
            lp = loss(*a)
            a[k] = minus
            flat[i] = (lp - loss(*a)) / (2 * h)
        grads.append(grad)
    return grads


@pytest.mark.parametrize("shape, axis", [((6, 5, 4), -1), ((3, 4, 5), 1)])
def test_reference_relu_backward_by_finite_differences(shape, axis, rng):
    x = rng.normal(size=shape)
    gamma, beta = rng.normal(1, 0.5, shape[axis]), rng.normal(0, 0.7, shape[axis])
    dy = rng.normal(size=shape)
    _, mean, invstd = reference.batch_norm_training(x, gamma, beta, 1e-3, axis=axis)
    dx, dgamma, dbeta = reference.batch_norm_backward(dy, x, mean, invstd, gamma, beta=beta,
                                                      activation="relu", axis=axis)
    fx, fgamma, fbeta = _loss_grad_check(x, gamma, beta, dy, axis)
    np.testing.assert_allclose(dx, fx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dgamma, fgamma, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dbeta, fbeta, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_relu_backward_matches_reference(shape, axis, dtype, training, rng, isa):
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    n = shape[axis]
    gamma, beta = rng.normal(1, 0.5, n), rng.normal(0, 0.7, n)
    y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, activation="relu", axis=axis)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, beta=beta,
                                                  activation="relu", training=training,
                                                  axis=axis)
    # The mask is the forward's own: dy where y > 0.
    masked = np.where(y > 0, dy, 0).astype(dtype)
    e_dx, e_dgamma, e_dbeta = reference.batch_norm_backward(masked, x, mean, invstd, gamma,
                                                            training=training, axis=axis)
    plain = cnorm.batch_norm_backward(masked, x, mean, invstd, gamma, training=training,
                                      axis=axis)
    np.testing.assert_array_equal(dgamma, plain[1])
    np.testing.assert_array_equal(dbeta, plain[2])
    np.testing.assert_array_equal(dx, plain[0])
    tol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(dgamma, e_dgamma, rtol=tol, atol=tol * np.abs(e_dgamma).max())
    np.testing.assert_allclose(dbeta, e_dbeta, rtol=tol, atol=tol * np.abs(e_dbeta).max())
    np.testing.assert_allclose(dx, e_dx, rtol=tol * 10, atol=tol * 10 * np.abs(e_dx).max())
    r_dx, _, _ = reference.batch_norm_backward(dy, x, mean, invstd, gamma, beta=beta,
                                               activation="relu", training=training, axis=axis)
    agree = np.isclose(dx, r_dx, rtol=tol * 10, atol=tol * 10 * np.abs(r_dx).max())
    assert agree.mean() > 0.999  # only values on the mask's edge may differ


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape, axis", CASES[:4])
def test_half_relu_backward_is_float32_rounded_once(half, shape, axis, rng, isa):
    dtype = _half(half)
    x = rng.normal(size=shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    n = shape[axis]
    gamma, beta = rng.normal(1, 0.5, n), rng.normal(0, 0.7, n)
    _, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, axis=axis)
    for training in (True, False):
        dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, beta=beta,
                                                      activation="relu", training=training,
                                                      axis=axis)
        e = cnorm.batch_norm_backward(dy.astype(np.float32), x.astype(np.float32), mean,
                                      invstd, gamma, beta=beta, activation="relu",
                                      training=training, axis=axis)
        np.testing.assert_array_equal(dx.view(np.uint16), e[0].astype(dtype).view(np.uint16))
        np.testing.assert_array_equal(dgamma, e[1])
        np.testing.assert_array_equal(dbeta, e[2])


@pytest.mark.parametrize("shape, axis", CASES)
def test_relu_backward_bits_for_every_thread_count(shape, axis, rng):
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    n = shape[axis]
    gamma, beta = rng.normal(1, 0.5, n), rng.normal(0, 0.7, n)
    _, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, axis=axis)
    results = [cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, beta=beta,
                                         activation="relu", axis=axis, n_threads=t)
               for t in THREAD_COUNTS]
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            np.testing.assert_array_equal(a, b)


def test_relu_backward_streaming_sizes(rng, isa):
    for shape, axis in [((64, 56, 56, 48), -1), ((4, 16, 280, 280), 1)]:
        x = rng.normal(size=shape).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        n = shape[axis]
        gamma, beta = rng.normal(1, 0.5, n), rng.normal(0, 0.7, n)
        y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, activation="relu",
                                                    axis=axis)
        fused = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, beta=beta,
                                          activation="relu", axis=axis)
        plain = cnorm.batch_norm_backward(np.where(y > 0, dy, 0).astype(np.float32), x, mean,
                                          invstd, gamma, axis=axis)
        for a, b in zip(fused, plain):
            np.testing.assert_array_equal(a, b)


# Rows of the reduction orders: channel groups (C <= 16 or 64 and multiples of the
# vector), 8-row blocks (C = 96, 7), and, with the stream threshold at 0 bytes, rows
# (C = 256) and streamed outputs; planes (NCHW, short and long, and a plane count
# below the thread count).
MASK_PATHS = [((70, 16), -1), ((33, 64), -1), ((9, 96), -1), ((40, 256), -1), ((13, 7), -1),
              ((3, 40, 37), 1), ((2, 5, 19, 17), 1), ((1, 4, 600), 1)]


@pytest.fixture(params=[False, True], ids=["cached", "streamed"])
def stream_threshold(request, isa):
    from cnorm import _tuning

    if not request.param:
        yield False
        return
    module = _dispatch.kernels("_batchnorm")
    previous = _tuning.override(module, stream_bytes=0, reread_stream_bytes=0)
    try:
        yield True
    finally:
        _tuning.override(module, **previous)


@pytest.mark.parametrize("shape, axis", MASK_PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0.0, 30.0])  # folded and centered forward coefficients
def test_relu_backward_masks_inside_every_kernel(shape, axis, dtype, offset, stream_threshold,
                                                 rng, isa):
    # Every kernel that reads dy masks it as it reads it (the sums' groups, blocks,
    # rows and planes, the dx pass's rows, range kernel and planes): the same bits
    # as the plain backward of the masked dy, and dy, x untouched.
    x = rng.normal(offset, 1.0, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    n = shape[axis]
    gamma, beta = rng.normal(1, 0.5, n), rng.normal(0, 0.7, n)
    y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, activation="relu", axis=axis)
    masked = np.where(y > 0, dy, 0).astype(dtype)
    assert 0 < (masked == 0).mean() < 1
    dy_before, x_before = dy.copy(), x.copy()
    for training in (True, False):
        fused = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, beta=beta,
                                          activation="relu", training=training, axis=axis)
        plain = cnorm.batch_norm_backward(masked, x, mean, invstd, gamma, training=training,
                                          axis=axis)
        for a, b in zip(fused, plain):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dy, dy_before)
    np.testing.assert_array_equal(x, x_before)


def test_backward_bad_input(rng):
    x = rng.normal(size=(8, 3))
    _, mean, invstd = cnorm.batch_norm_training(x)
    with pytest.raises(ValueError, match="activation must be None or 'relu'"):
        cnorm.batch_norm_backward(x, x, mean, invstd, activation="sigmoid")
    with pytest.raises(ValueError, match=r"beta must have shape \(3,\)"):
        cnorm.batch_norm_backward(x, x, mean, invstd, beta=np.zeros(4), activation="relu")
    with pytest.raises(ValueError, match="sums"):
        cnorm.batch_norm_backward(x, x, mean, invstd, activation="relu",
                                  sums=(np.zeros(3), np.zeros(3)), count=8)


def test_layer_takes_the_same_options(rng):
    x = rng.normal(size=(16, 6, 5, 8)).astype(np.float32)
    z = rng.normal(size=x.shape).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    layer = cnorm.BatchNorm(8, activation="relu")
    assert layer.activation == "relu" and "relu" in repr(layer)
    layer.running_mean[:] = rng.normal(size=8)
    layer.gamma[:] = rng.normal(1, 0.5, 8)
    layer.beta[:] = rng.normal(0, 0.5, 8)
    p = dict(running_mean=layer.running_mean, running_var=layer.running_var,
             gamma=layer.gamma, beta=layer.beta)
    np.testing.assert_array_equal(layer(x), cnorm.batch_norm_inference(x, activation="relu", **p))
    np.testing.assert_array_equal(layer(x, residual=z), cnorm.batch_norm_inference(
        x, activation="relu", residual=z, **p))
    with pytest.raises(RuntimeError, match="residual"):
        layer.backward(dy)
    layer(x)
    np.testing.assert_array_equal(layer.backward(dy)[0], cnorm.batch_norm_backward(
        dy, x, p["running_mean"], 1 / np.sqrt(p["running_var"].astype(np.float64) + 1e-5),
        p["gamma"], beta=p["beta"], activation="relu", training=False)[0])
    y = layer(x, training=True)
    y0, mean, invstd = cnorm.batch_norm_training(x, p["gamma"], p["beta"])
    np.testing.assert_array_equal(y, np.maximum(y0, 0))
    np.testing.assert_array_equal(layer.backward(dy)[0], cnorm.batch_norm_backward(
        dy, x, mean, invstd, p["gamma"], beta=p["beta"], activation="relu")[0])
    with pytest.raises(ValueError, match="inference"):
        layer(x, training=True, residual=z)
    with pytest.raises(ValueError, match="activation"):
        cnorm.BatchNorm(8, activation="gelu")
    import pickle
    assert pickle.loads(pickle.dumps(layer)).activation == "relu"
    plain = cnorm.BatchNorm(8)
    np.testing.assert_array_equal(plain(x, residual=z), cnorm.batch_norm_inference(
        x, np.zeros(8), np.ones(8), residual=z))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_layer_relu_fast_path_every_layout(dtype, rng, isa):
    # The layer's compiled fast path (plain C-contiguous inputs) carries the
    # activation: the same bits as the function, channels last and NCHW.
    for axis, shape in [(-1, (4, 5, 6, 8)), (1, (4, 8, 5, 6))]:
        x = rng.normal(size=shape).astype(dtype)
        layer = cnorm.BatchNorm(8, activation="relu", axis=axis)
        layer.running_mean[:] = rng.normal(size=8)
        layer.beta[:] = rng.normal(0, 0.5, 8)
        expected = cnorm.batch_norm_inference(
            x, layer.running_mean, layer.running_var, layer.gamma, layer.beta,
            activation="relu", axis=axis)
        np.testing.assert_array_equal(layer(x), expected)
        out = np.empty_like(x)
        assert layer(x, out=out) is out
        np.testing.assert_array_equal(out, expected)
        assert (expected >= 0).all() and (expected == 0).any()
