"""Hostile input, case by case: the defects the fuzzer (test_fuzz.py) found, the
n_threads cap, the debug build's kernel checks and that the sanitizers are live."""
import os
import subprocess
import sys

import numpy as np
import pytest

import cnorm
from cnorm import _validation, reference
from cnorm._build_info import BUILD_INFO


def test_nan_data_gives_non_finite_statistics():
    x = np.arange(40.0).reshape(10, 4)
    x[3, 1] = np.nan
    running_mean, running_var = np.zeros(4), np.ones(4)
    _, mean, invstd = cnorm.batch_norm_training(x, running_mean=running_mean,
                                                running_var=running_var)
    assert np.isnan(mean[1]) and np.isnan(invstd[1]) and np.isnan(running_var[1])
    assert np.isfinite(invstd[[0, 2, 3]]).all()


def test_overflowing_squares_give_non_finite_variance():
    x = np.array([1.0, 2.0, 3.0, 1e160]).reshape(4, 1)
    _, _, invstd = cnorm.batch_norm_training(x)
    assert not np.isfinite(invstd[0]) or invstd[0] == 0


@pytest.mark.parametrize("axis", [-1, 1])
def test_finite_data_past_the_double_range_of_m2(axis, isa):
    # Found by the fuzzer (CI): one 1e200 among zeros. S1**2 overflowed, and
    # S2 - S1**2/n was inf - inf = NaN; M2 is inf, invstd 0, y = beta, as in
    # the reference (and the layer's running variance becomes inf).
    x = np.zeros((2, 4, 4))
    x[0, 0, 0] = 1e200
    channels = x.shape[axis]
    moments = cnorm.moments(x, axis=axis)
    assert moments.m2[0] == np.inf and (moments.m2[1:] == 0).all()
    beta = np.arange(channels, dtype=np.float64)
    running_var = np.ones(channels)
    y, mean, invstd = cnorm.batch_norm_training(x, beta=beta, running_mean=np.zeros(channels),
                                                running_var=running_var, axis=axis)
    want, _, want_invstd = reference.batch_norm_training(np.moveaxis(x, axis, -1), None, beta)
    np.testing.assert_array_equal(invstd, want_invstd)
    np.testing.assert_array_equal(np.moveaxis(y, axis, -1), want)
    assert running_var[0] == np.inf
    layer = cnorm.BatchNorm(channels, axis=axis, dtype=np.float64)
    layer.beta = beta
    np.testing.assert_array_equal(layer(x, training=True), y)


def test_zero_gamma_gives_zero_dx_when_invstd_times_dgamma_overflows(isa):
    # Found by the fuzzer (baseline build): gamma 0, invstd 1e200, dgamma
    # 1e206: x's coefficient was -0 * inf = NaN; dx is 0.
    dy = np.array([[1e6, 0.0]], np.float32)
    x = np.array([[1.0, 0.0]], np.float32)
    for activation in (None, "relu"):
        dx, _, _ = cnorm.batch_norm_backward(dy, x, np.zeros(1), np.array([1e200]), np.zeros(1),
                                             beta=np.ones(1), activation=activation, axis=0)
        np.testing.assert_array_equal(dx, np.zeros_like(x))


@pytest.mark.parametrize("n_threads", [2 ** 31, 2 ** 64, 10 ** 9])
def test_huge_n_threads_is_capped(n_threads):
    x = np.ones((3, 4))
    for call in (lambda: cnorm.lrn(x, n_threads=n_threads),
                 lambda: cnorm.batch_norm_training(x, n_threads=n_threads)):
        call()
    assert _validation.n_threads(n_threads) == _validation.MAX_THREADS


@pytest.mark.parametrize("value", [10 ** 400, -(10 ** 400)])
def test_huge_int_parameter_is_a_value_error(value):
    with pytest.raises(ValueError, match="bias must be finite"):
        cnorm.lrn(np.ones((2, 3)), bias=value)


def test_huge_size_is_clipped():
    x = np.arange(1.0, 6.0)
    y = cnorm.local_response_norm(x, 10 ** 400, alpha=1.0, beta=1.0, k=1.0)
    np.testing.assert_array_equal(y, x)  # alpha / size rounds to 0


def test_ragged_list_names_x():
    with pytest.raises(ValueError, match="^x must be an array"):
        cnorm.lrn([[1.0, 2.0], [3.0]])


def test_negative_variance_message_is_a_plain_number():
    with pytest.raises(ValueError, match=r"got -1\.0 at index 1$"):
        cnorm.batch_norm_inference(np.ones((2, 2)), np.zeros(2), np.array([1.0, -1.0]))


def test_backward_without_dy_is_a_type_error():
    for call in (lambda: cnorm.lrn_backward(None, np.ones((2, 3))),
                 lambda: cnorm.local_response_norm_backward(None, np.ones((2, 3)), 3)):
        with pytest.raises(TypeError, match="dy"):
            call()


@pytest.mark.parametrize("kind", ["into out", "into x", "each other"])
def test_running_statistics_must_not_alias(kind):
    x = np.arange(12.0).reshape(6, 2)
    out = np.empty_like(x)
    running_mean, running_var = np.zeros(2), np.ones(2)
    if kind == "into out":
        running_mean = out.reshape(-1)[:2]
    elif kind == "into x":
        running_var = x.reshape(-1)[2:4]
    else:
        both = np.ones(3)
        running_mean, running_var = both[:2], both[1:]
    saved = x.copy()
    with pytest.raises(ValueError, match="must not share memory"):
        cnorm.batch_norm_training(x, running_mean=running_mean, running_var=running_var,
                                  out=out)
    np.testing.assert_array_equal(x, saved)


def _misaligned(values):
    raw = np.zeros(values.nbytes + 1, np.uint8)
    view = raw[1:].view(values.dtype).reshape(values.shape)
    view[...] = values
    return view


def test_misaligned_per_channel_vectors():
    x = np.random.default_rng(0).standard_normal((5, 3))
    mean, var = _misaligned(np.array([0.5, -1.0, 2.0])), _misaligned(np.array([1.0, 2.0, 0.5]))
    assert not mean.flags.aligned
    y = cnorm.batch_norm_inference(x, mean, var, gamma=_misaligned(np.ones(3)))
    np.testing.assert_allclose(y, reference.batch_norm_inference(x, mean, var), rtol=1e-12)


@pytest.mark.parametrize("values", [dict(running_mean=[1e300, 0.0], running_var=[1e300, 1.0],
                                         gamma=[1e300, 1.0]),
                                    dict(running_mean=[0.0, 0.0], running_var=[1.0, 1.0],
                                         gamma=[1e-41, 1.0])])
def test_float32_data_with_per_channel_values_beyond_float32(values):
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    y = cnorm.batch_norm_inference(x, **values)
    with np.errstate(over="ignore"):
        expected = reference.batch_norm_inference(x, **values).astype(np.float32)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=0)


def test_lrn_float32_backward_products_beyond_float32():
    x = np.array([[3e38, 0.0]], np.float32)
    dy = np.array([[2.0, 0.0]], np.float32)
    dx = cnorm.local_response_norm_backward(dy, x, 1, alpha=0.0, beta=1.0, k=1.0)
    np.testing.assert_array_equal(dx, [[2.0, 0.0]])
    x, dy = np.array([[1e19, 0.0]], np.float32), np.array([[1e20, 0.0]], np.float32)
    dx = cnorm.local_response_norm_backward(dy, x, 1, alpha=1e-30, beta=0.75, k=1.0)
    expected = reference.local_response_norm_backward(dy, x, 1, alpha=1e-30, beta=0.75, k=1.0)
    np.testing.assert_allclose(dx, expected, rtol=1e-5)


def test_byte_swapped_bfloat16_is_read_as_its_values():
    # Found by the fuzzer once it drew bfloat16: a byte-swapped bfloat16 keeps
    # the dtype name "bfloat16" and was read as native bytes, a silent wrong
    # answer ([1, 2, 3] became [1, 6.5e-27, 1.5e31]). It is swapped first now,
    # as byte-swapped float32/float64 are.
    ml_dtypes = pytest.importorskip("ml_dtypes")
    native = np.array([1.0, 2.0, 3.0, -0.5]).astype(ml_dtypes.bfloat16).reshape(2, 2)
    swapped = native.astype(native.dtype.newbyteorder())
    saved = swapped.tobytes()
    for function in (lambda x: cnorm.lrn(x, 1), lambda x: cnorm.lrn(x, 1, axis=0),
                     lambda x: cnorm.batch_norm_inference(x, np.zeros(2), np.ones(2)),
                     lambda x: cnorm.batch_norm_training(x)[0],
                     lambda x: cnorm.moments(x).to_array()):
        np.testing.assert_array_equal(np.asarray(function(swapped), np.float64),
                                      np.asarray(function(native), np.float64))
    assert swapped.tobytes() == saved


@pytest.mark.parametrize("size", [2 ** 63, 10 ** 30, 10 ** 400])
def test_local_response_norm_layer_takes_a_huge_size(size):
    # Found by the fuzzer once it covered the layers: the function clips a
    # window wider than C, the layer gave a bare OverflowError (size past
    # Py_ssize_t, or alpha / size past float). Now it does what the function does.
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    layer = cnorm.LocalResponseNorm(size, alpha=1.0)
    np.testing.assert_array_equal(layer(x), cnorm.local_response_norm(x, size, alpha=1.0))
    np.testing.assert_array_equal(layer.backward(x),
                                  cnorm.local_response_norm_backward(x, x, size, alpha=1.0))
    assert layer.size == size


@pytest.mark.parametrize("name", ["gamma", "beta", "running_mean", "running_var"])
def test_batch_norm_layer_state_ragged_list_names_the_attribute(name):
    # Found by the fuzzer: NumPy's own ValueError, which did not name the state.
    layer = cnorm.BatchNorm(2)
    state = layer.state_dict()
    with pytest.raises(ValueError, match=name):
        setattr(layer, name, [[1.0], [1.0, 2.0]])
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


@pytest.mark.skipif(not BUILD_INFO.get("debug_directives"), reason="needs CNORM_CYTHON_DEBUG=1")
def test_debug_build_kernels_check_their_arguments():
    from cnorm import _batchnorm, _lrn
    x, y = np.ones((4, 3)), np.empty((4, 3))
    bad = [lambda: _lrn.run(x, None, y, 5, 0, 1.0, 1.0, 0.5, 1, 0, 4, 3, 1),
           lambda: _lrn.run(x, None, y, 0, 0, 1.0, 1.0, 0.5, 1, 0, 5, 3, 1),
           lambda: _lrn.run(x, None, y, 0, 0, 1.0, 1.0, 0.5, 1, 1, 4, 3, 1),
           lambda: _lrn.run(x, None, y, 0, 0, 1.0, 1.0, 0.5, 0, 0, 4, 3, 1),
           lambda: _batchnorm.normalize(x, y, np.zeros(2), np.ones(3), None, None, 1e-5, None,
                                        False, 1, 0, 4, 3, 1),
           lambda: _batchnorm.batch_stats(x, np.zeros(3), np.zeros(3, np.float32), 1, 0, 4, 3,
                                          1),
           lambda: _lrn.lrn_forward(x, y, 3, 0, 1.0, 1.0, 0.5, 1)]
    for call in bad:
        with pytest.raises(ValueError, match="cnorm kernel"):
            call()


@pytest.mark.skipif(not os.environ.get("CNORM_EXPECT_SANITIZER"),
                    reason="the sanitizer run of .ci/run sets CNORM_EXPECT_SANITIZER=1")
def test_sanitizers_are_live():
    """A misaligned pointer handed to a kernel directly must abort the process:
    proof that the run's sanitizers would have reported a defect."""
    assert BUILD_INFO.get("sanitize"), BUILD_INFO
    program = ("import numpy as np\nfrom cnorm import _lrn\n"
               "raw = np.zeros(8 * 12 + 1, np.uint8)\n"
               "x = raw[1:].view(np.float64).reshape(4, 3); x[:] = 1\n"
               "_lrn.run(x, None, np.empty((4, 3)), 1, 1, 1.0, 1.0, 0.5, 1, 0, 4, 3, 1)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.returncode != 0 and "runtime error" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("beta", [1.5, 0.75, 0.6])
@pytest.mark.parametrize("alpha", [5e-324, 1e-300])
@pytest.mark.parametrize("axis", [-1, 0])
def test_lrn_float32_tiny_alpha_with_inf_data(alpha, beta, axis):
    # Found by the fuzzer: with alpha this small the float path's square limit
    # overflowed to inf, so x = inf took the float path, whose power of D = inf
    # gave -2**64: y = -1.8e19 where the reference gives 0 (NaN at beta 0.75).
    x = np.zeros((100, 3), np.float32) if axis == 0 else np.zeros((3, 100), np.float32)
    index = (0, 0)
    x[index] = np.inf
    x[(-1, -1)] = 1.0
    from cnorm import _lrn
    assert 0 < _lrn.float_square_limit(alpha, 1.0, beta, 201) <= 1e300
    for dy in (None, np.ones_like(x)):
        if dy is None:
            y = cnorm.lrn(x, depth_radius=10 ** 30, alpha=alpha, beta=beta, axis=axis)
            expected = reference.lrn(x, depth_radius=10 ** 30, alpha=alpha, beta=beta, axis=axis)
        else:
            y = cnorm.lrn_backward(dy, x, depth_radius=10 ** 30, alpha=alpha, beta=beta,
                                   axis=axis)
            with np.errstate(all="ignore"):
                expected = reference.lrn_backward(dy, x, depth_radius=10 ** 30, alpha=alpha,
                                                  beta=beta, axis=axis)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batch_norm_backward_huge_invstd_at_the_mean(dtype):
    # Found by the fuzzer: invstd 1e200 over data equal to the mean gave dx NaN
    # (invstd * invstd overflowed, times dgamma = 0); the reference gives 0.
    x = np.zeros((2, 1, 2), dtype)
    dy = np.zeros_like(x)
    dy[:, :, 1] = [[1.0], [-3.0]]
    mean, invstd = np.zeros(2), np.array([1e200, 2.0])
    for training in (True, False):
        dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, training=training)
        expected = reference.batch_norm_backward(dy, x, mean, invstd, training=training)
        np.testing.assert_allclose(dx, expected[0], rtol=1e-6, atol=0)
        np.testing.assert_allclose(dgamma, expected[1], rtol=1e-12, atol=0)
        np.testing.assert_allclose(dbeta, expected[2], rtol=1e-12, atol=0)


@pytest.mark.parametrize("count", [2 ** 63, 10 ** 30])
def test_batch_norm_backward_count_beyond_ssize_t_is_a_value_error(count):
    # Found by the fuzzer: sums= with count >= 2**63 passed the check and gave
    # a bare OverflowError where the kernel takes it as Py_ssize_t.
    x = np.arange(8.0).reshape(4, 2)
    dy = np.ones_like(x)
    mean, invstd = np.zeros(2), np.ones(2)
    sums = (np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="count"):
        cnorm.batch_norm_backward(dy, x, mean, invstd, sums=sums, count=count)
    dx, _, _ = cnorm.batch_norm_backward(dy, x, mean, invstd, sums=sums, count=2 ** 63 - 1)
    np.testing.assert_allclose(dx, dy, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("axis", [-1, 1])
def test_frozen_relu_backward_at_non_finite_x(dtype, axis):
    # Found by the fuzzer: the ReLU backward with frozen statistics gave dx NaN
    # where x is NaN (the mask is 0: dx 0) or infinite (dy*gamma*invstd or 0),
    # from 0*x in the kernel's elementwise form; the reference gives finite values.
    x = np.zeros((3, 2, 4), dtype)
    x[0, 0, 0] = np.nan
    x[1, 1, 1] = np.inf
    x[2, 1, 0] = -np.inf
    dy = np.arange(1.0, 25.0).reshape(x.shape).astype(dtype)
    channels = x.shape[axis]
    mean, invstd = np.zeros(channels), np.full(channels, 2.0)
    gamma, beta = np.linspace(0.5, 1.5, channels), np.ones(channels)
    out = np.empty_like(x)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, beta=beta,
                                                  activation="relu", training=False,
                                                  axis=axis, out=out)
    with np.errstate(invalid="ignore"):
        expected = reference.batch_norm_backward(dy, x, mean, invstd, gamma, beta=beta,
                                                 activation="relu", training=False,
                                                 axis=axis)
    assert dx is out and np.isfinite(dx).all()
    np.testing.assert_allclose(dx, expected[0], rtol=1e-3 if dtype == np.float16 else 1e-6)
    np.testing.assert_array_equal(np.isfinite(dgamma), np.isfinite(expected[1]))
    np.testing.assert_allclose(dbeta, expected[2], rtol=1e-12)


def test_frozen_relu_backward_at_non_finite_x_with_nan_invstd():
    # The masked dy times gamma*invstd, as elsewhere: NaN invstd gives NaN.
    x = np.array([[np.nan, 0.0], [0.0, 0.0]], np.float32)
    dx, _, _ = cnorm.batch_norm_backward(np.ones_like(x), x, np.zeros(2),
                                         np.array([np.nan, 1.0]), activation="relu",
                                         training=False)
    assert np.isnan(dx[:, 0]).all() and (dx[:, 1] == 0).all()


@pytest.mark.parametrize("function, args", [("lrn", (1,)), ("local_response_norm", (3,))])
def test_dask_lrn_split_channels_unknown_chunk_sizes_is_a_value_error(function, args):
    # Found by the fuzzer: a channel axis split over chunks with
    # allow_rechunk=True and unknown chunk sizes along another axis (x[mask])
    # gave a bare AssertionError from dask's map_overlap.
    from helpers import need

    da = need("dask.array")
    cnorm_dask = need("cnorm.dask")
    values = np.arange(12.0).reshape(4, 3)
    x = da.from_array(values, chunks=(2, 1))
    kept = x[x[:, 0] > -1]  # every row, sizes unknown
    with pytest.raises(ValueError, match="unknown chunk sizes along axis 0"):
        getattr(cnorm_dask, function)(kept, *args, allow_rechunk=True)
    y = getattr(cnorm_dask, function)(kept.rechunk({1: -1}), *args).compute()
    np.testing.assert_array_equal(y, getattr(cnorm, function)(values, *args))


@pytest.mark.parametrize("written_over", ["x", "dy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_frozen_relu_backward_at_non_finite_x_written_over_its_input(written_over, dtype):
    # Found by the fuzzer: with out=x (or out=dy) the fix-up for non-finite x
    # read x (dy) after dx had been written over it, and took the mask of dx's
    # NaN: dx 0 where the reference gives NaN (dy NaN through an open mask) or
    # dy*gamma*invstd (x = inf).
    x = np.array([[0.0, np.inf], [1.0, 2.0], [np.nan, 1.0]], dtype)
    dy = np.array([[np.nan, 3.0], [1.0, 2.0], [5.0, 7.0]], dtype)
    mean, invstd, beta = np.zeros(2), np.array([0.0, 2.0]), np.ones(2)
    with np.errstate(invalid="ignore"):
        expected = reference.batch_norm_backward(dy, x, mean, invstd, beta=beta,
                                                 activation="relu", training=False)
    x_in, dy_in = x.copy(), dy.copy()
    out = x_in if written_over == "x" else dy_in
    dx, _, _ = cnorm.batch_norm_backward(dy_in, x_in, mean, invstd, beta=beta,
                                         activation="relu", training=False, out=out)
    assert dx is out
    np.testing.assert_allclose(dx, expected[0], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_batch_norm_backward_sums_beyond_float32(dtype):
    # Found by the fuzzer: with sums= the float32 pass took the coefficients
    # rounded to float32 (sum_dy_xhat 1e200 gave x_scale -inf) and gave dx NaN
    # at the mean, where the float64 answer is finite; nor were per-channel
    # values beyond float32 (gamma, invstd) widened on that path.
    x = np.array([[0.0], [1.0], [2.0], [3.0]], dtype)
    dy = np.array([[1.0], [2.0], [3.0], [4.0]], dtype)
    for mean, invstd, gamma, sums in [
            ([0.0], [1.0], None, ([0.0], [1e200])),
            ([0.0], [1e-30], [1e30], ([1e-40], [1e-30])),
            ([0.0], [1e20], [1e-20], ([0.0], [1e-19]))]:
        args = (np.array(mean), np.array(invstd), None if gamma is None else np.array(gamma))
        sums = tuple(np.array(s) for s in sums)
        dx, _, _ = cnorm.batch_norm_backward(dy, x, *args, sums=sums, count=4)
        wide, _, _ = cnorm.batch_norm_backward(dy.astype(np.float64), x.astype(np.float64),
                                               *args, sums=sums, count=4)
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(dx, wide.astype(dtype))


def test_lrn_backward_with_alpha_near_the_smallest_subnormal(isa):
    # Found by the fuzzer: alpha 1.4e-45 (float32's smallest subnormal) made
    # 2*alpha*beta a one-bit float on the float32 path, and dx twice the answer.
    x = (np.random.default_rng(3).uniform(1, 4, (2, 5)) * 1e22).astype(np.float32)  # x**2 ~ 1/alpha
    dy = np.random.default_rng(4).standard_normal((2, 5)).astype(np.float32)
    alpha = float(np.finfo(np.float32).smallest_subnormal)
    got = cnorm.local_response_norm_backward(dy, x, 1, alpha=alpha, beta=0.75, k=1.0)
    want = reference.local_response_norm_backward(dy.astype(np.float64), x.astype(np.float64),
                                                  1, alpha=alpha, beta=0.75, k=1.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batch_norm_inference_huge_gamma_and_mean_with_tiny_invstd(dtype, isa):
    # Found by the fuzzer (baseline, 800 examples): x = [nan, 0] along one
    # channel, running_mean 1e200, running_var inf, gamma 1e200. invstd is
    # exactly 0, so y = beta at x = 0, as the kernels give; the reference gave
    # NaN, from gamma * (x - mean) = -inf before the multiply by 0 (and -inf
    # where invstd is 1e-150 and y is -1e250). It normalizes first now.
    x = np.array([[np.nan], [0.0], [1.0]], dtype)
    beta = np.array([0.5])
    for var, want in ((np.inf, [np.nan, 0.5, 0.5]), (1e300, [np.nan, -1e250, -1e250])):
        args = dict(running_mean=np.array([1e200]), running_var=np.array([var]),
                    gamma=np.array([1e200]), beta=beta, eps=1.0)
        want = np.reshape(want, x.shape)
        np.testing.assert_allclose(reference.batch_norm_inference(x, **args), want, rtol=1e-15)
        with np.errstate(over="ignore"):
            y = cnorm.batch_norm_inference(x, **args)
            want = want.astype(dtype)
        np.testing.assert_allclose(y, want, rtol=1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("beta", [0.8648658, 0.75, 0.5, 1.0])
def test_lrn_backward_float32_tiny_x_times_small_alpha(beta, isa):
    # Found by the fuzzer (x86-64-v4, 800 examples): the float32 path formed
    # 2*alpha*beta * x in float, subnormal for alpha 1.2e-7 and x -1.2e-38
    # (float32's smallest normal): -2.4e-45, two significant bits, so dx there
    # was 3.52e-37 for 3.04e-37 once times the window sum 1.5e8. The term is
    # formed in double now (alpha 1.4e-45, a subnormal 2*alpha*beta, no longer
    # needs the double path: test_lrn_backward_with_alpha_near_the_smallest_subnormal).
    rng = np.random.default_rng(17)
    x = np.zeros((2, 64), np.float32)
    x[:, :40] = rng.uniform(1, 4, (2, 40))
    x[:, 41] = -np.finfo(np.float32).tiny
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dy[:, 41] = 0.0
    for axis in (-1, 0):
        xt, dyt = (x, dy) if axis == -1 else (x.T.copy(), dy.T.copy())
        got = cnorm.lrn_backward(dyt, xt, depth_radius=10 ** 30, bias=1e-3,
                                 alpha=1.1920929e-07, beta=beta, axis=axis)
        want = reference.lrn_backward(dyt.astype(np.float64), xt.astype(np.float64),
                                      depth_radius=10 ** 30, bias=1e-3, alpha=1.1920929e-07,
                                      beta=beta, axis=axis)
        got, want = (got, want) if axis == -1 else (got.T, want.T)
        np.testing.assert_allclose(got[:, 41], want[:, 41], rtol=1e-5, atol=0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_relu_backward_mask_below_float32_subnormals(isa):
    # Found by the fuzzer (x86-64-v3, 800 examples): x = 0, mean -1.2e-38
    # (float32's smallest normal), gamma = invstd = 1e-4. gamma*xhat + beta is
    # 1.2e-46 > 0 in float64 but rounds to 0 in float32, where the forward's y
    # is 0: the float32 backward's mask (the forward's own y > 0) is closed and
    # dx, dbeta are 0, while float64 data pass dy. Both are right for their
    # type; the fuzzer now leaves channels this close to the boundary uncompared.
    mean, invstd, gamma = (np.array([v], np.float32) for v in (-1.1754944e-38, 1e-4, 1e-4))
    assert np.float32(float(gamma[0]) * float(invstd[0]) * -float(mean[0])) == 0
    dy = np.array([[1.0], [0.0], [2.0]])
    for dtype, passed in ((np.float32, False), (np.float64, True)):
        x = np.zeros((3, 1), dtype)
        dx, dgamma, dbeta = cnorm.batch_norm_backward(dy.astype(dtype), x, mean, invstd, gamma,
                                                      activation="relu")
        assert dbeta[0] == (3.0 if passed else 0.0)
        with np.errstate(all="ignore"):
            want = reference.batch_norm_backward(dy, x, mean, invstd, gamma, activation="relu")
        if passed:
            # (dy - dbeta/m cancels exactly: the scale is gamma*invstd*|dy|, 1e-8)
            np.testing.assert_allclose(dx, want[0], rtol=1e-12, atol=1e-12 * 1e-8)
        else:
            np.testing.assert_array_equal(dx, np.zeros_like(x))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batch_norm_backward_finite_dx_past_an_overflowing_bracket(dtype, isa):
    # Found by the fuzzer (x86-64-v3, 800 examples): one 1e200 in a channel
    # with invstd 4e-37 and dy 1 there. xhat is 4e163 and dgamma 4e163, so the
    # reference's bracket g - dbeta/m - xhat*dgamma/m overflowed and it gave dx
    # -inf; the answer, -1.654e290, is what the kernels give. The reference
    # forms its products without intermediate overflow now (_product).
    x = np.zeros((4, 2))
    x[2, 1] = 1e200
    dy = np.zeros_like(x)
    dy[2, 1] = 1.0
    mean, invstd = np.zeros(2), np.array([1.0, 4.044641e-37])
    if dtype == np.float32:  # 1e200 is inf in float32: a smaller x, a smaller invstd
        x[2, 1], invstd[1] = 1e30, 4.044641e-207
    s, big = invstd[1], x[2, 1]  # dx = s*(3/4 - xhat**2/4), xhat = big*s, in a safe order
    want = 0.75 * s - s ** 3 * big * big / 4
    assert np.isfinite(want) and abs(want) < (1e38 if dtype == np.float32 else 1e300)
    dx, dgamma, _ = reference.batch_norm_backward(dy, x, mean, invstd)
    assert dx[2, 1] == pytest.approx(want, rel=1e-12) and dgamma[1] == pytest.approx(big * s)
    got, _, _ = cnorm.batch_norm_backward(dy.astype(dtype), x.astype(dtype), mean, invstd)
    assert got[2, 1] == pytest.approx(want, rel=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("axis", [-1, 0])
def test_training_backward_with_an_overflowed_variance(axis, isa):
    # Found by the fuzzer: x = dy = [1e200, 0, 0] (float64) has the variance
    # inf, so invstd is 0 and the reference's xhat is 0: dgamma and dx are 0.
    # The kernel's dgamma = sum(dy*(x - mean)) * invstd was inf * 0 = NaN, and
    # dx NaN with it. Such calls now take the reference (the kernel declines,
    # cnorm._batchnorm._declines); a second, ordinary channel is unchanged.
    x = np.array([[1e200, 1.0], [0.0, 2.0], [0.0, 4.0]])
    dy = np.array([[1e200, 0.5], [0.0, -1.0], [0.0, 2.0]])
    if axis == 0:
        x, dy = np.ascontiguousarray(x.T), np.ascontiguousarray(dy.T)
    y, mean, invstd = cnorm.batch_norm_training(x, axis=axis)
    assert invstd[0] == 0 and np.isfinite(mean[0])
    with np.errstate(all="ignore"):
        want = reference.batch_norm_backward(np.moveaxis(dy, axis, -1), np.moveaxis(x, axis, -1),
                                             mean, invstd)
    assert want[1][0] == 0 and (want[0][:, 0] == 0).all()
    out = np.full_like(x, np.nan)
    for given in (None, out):
        dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, axis=axis,
                                                      out=given)
        assert given is None or dx is given
        np.testing.assert_array_equal(np.moveaxis(dx, axis, -1)[:, 0], 0.0)
        assert dgamma[0] == 0
        np.testing.assert_allclose(np.moveaxis(dx, axis, -1)[:, 1], want[0][:, 1], rtol=1e-12)
        np.testing.assert_allclose(dgamma, want[1], rtol=1e-12)
        np.testing.assert_allclose(dbeta, want[2], rtol=1e-12)
    # A non-finite x with invstd 0 stays NaN, as in the reference.
    x_inf = x.copy()
    np.moveaxis(x_inf, axis, -1)[1, 0] = np.inf
    dx, dgamma, _ = cnorm.batch_norm_backward(dy, x_inf, mean, invstd, axis=axis)
    assert np.isnan(dgamma[0]) and np.isnan(np.moveaxis(dx, axis, -1)[:, 0]).all()
    assert np.isfinite(np.moveaxis(dx, axis, -1)[:, 1]).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("relu", [False, True])
def test_training_backward_huge_invstd_at_the_mean_of_a_spread_channel(dtype, relu, isa):
    # Found by the fuzzer: x = dy = [1, 0 x 19] with mean 0 and invstd 1e200.
    # dx's coefficient of x - mean, gamma*invstd * invstd*dgamma/m, is inf, so
    # dx = (x - mean) * inf was NaN at the 19 values equal to the mean, where
    # the reference's xhat * dgamma is 0 * 1e200 = 0: dx = -invstd*sum(dy)/m
    # there. The reference computes such calls now.
    x = np.zeros((20, 1), dtype)
    x[0] = 1
    dy = x.copy()
    mean, invstd, gamma, beta = np.zeros(1), np.array([1e200]), np.array([0.5]), np.zeros(1)
    keywords = dict(beta=beta, activation="relu") if relu else {}
    with np.errstate(all="ignore"):
        want = reference.batch_norm_backward(dy, x, mean, invstd, gamma, **keywords)
    assert want[0][0] == -np.inf and np.allclose(want[0][1:], -0.5e200 / 20, rtol=1e-15)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, **keywords)
    assert dx.dtype == dtype and not np.isnan(dx).any()
    with np.errstate(over="ignore"):  # (float32, float16: -inf, rounded)
        np.testing.assert_array_equal(dx, want[0].astype(dtype))
    np.testing.assert_array_equal(dgamma, want[1])
    np.testing.assert_array_equal(dbeta, want[2])
