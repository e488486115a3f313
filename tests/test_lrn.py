"""cnorm.lrn and friends against the float64 reference, the frameworks and bad input."""
import glob
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cnorm
from cnorm import _dispatch, _lrn, reference
from helpers import assert_close, lrn_backward_scale, numerical_gradient

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "data")
# Elements per chunk row count: shapes below straddle chunk edges and reach the
# parallel path (more than 32768 elements).
PARALLEL_SHAPE = (3, 17, 23, 96)


def tf_window(depth_radius, n_channels):
    return depth_radius, depth_radius


def check_lrn(x, depth_radius, bias, alpha, beta, n_threads=None, dy=None):
    """Forward and backward of cnorm.lrn on x against the reference."""
    y = cnorm.lrn(x, depth_radius, bias, alpha, beta, n_threads=n_threads)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, reference.lrn(x, depth_radius, bias, alpha, beta), err_msg="forward")
    if dy is None:
        dy = np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)
    dx = cnorm.lrn_backward(dy, x, depth_radius, bias, alpha, beta, n_threads=n_threads)
    expected = reference.lrn_backward(dy, x, depth_radius, bias, alpha, beta)
    scale = lrn_backward_scale(dy, x, depth_radius, depth_radius, alpha, bias, beta)
    assert_close(dx, expected, scale=scale, err_msg="backward")


# --- the worked examples ------------------------------------------------------

def test_tf_examples(dtype):
    x = 2 * np.ones((2, 2, 2, 3), dtype)
    y = cnorm.lrn(x, depth_radius=1, bias=0.0, alpha=1.0, beta=1.0)
    assert_close(y, np.broadcast_to([0.25, 1 / 6, 0.25], x.shape))
    x = np.arange(1, 33, dtype=dtype).reshape(2, 2, 2, 4)
    y = cnorm.lrn(x, depth_radius=2, bias=0.0, alpha=1.0, beta=1.0)
    assert y[1, 1, 0, 1] == pytest.approx(26 / (25**2 + 26**2 + 27**2 + 28**2), rel=1e-6)


@pytest.mark.parametrize("size, convention, expected", [
    (2, "torch", [0.666667, 0.571429, 0.4, 0.296296, 0.232558]),
    (2, "onnx", [0.285714, 0.266667, 0.222222, 0.186047, 0.37037]),
    (4, "torch", [0.444444, 0.444444, 0.352941, 0.275862, 0.37037]),
    (4, "onnx", [0.222222, 0.235294, 0.206897, 0.296296, 0.444444]),
    (3, "caffe", [0.375, 0.352941, 0.28125, 0.226415, 0.340909]),
])
def test_size_based_examples(dtype, size, convention, expected):
    x = np.arange(1, 6, dtype=dtype)
    y = cnorm.local_response_norm(x, size, alpha=1.0, beta=1.0, k=1.0, convention=convention)
    np.testing.assert_allclose(y, expected, atol=5e-7)


# --- the edge corpus ------------------------------------------------------------

def _corpus():
    rng = np.random.default_rng(7)
    normal = rng.standard_normal
    yield "C=1", normal((5, 1)), 2, 1.0, 1.0, 0.75
    yield "window wider than C", normal((4, 3)), 5, 0.5, 1.0, 0.75
    yield "huge depth_radius", normal((4, 6)), 10**9, 1.0, 0.5, 0.5
    yield "depth_radius 0", normal((4, 8)), 0, 1.0, 1.0, 1.0
    yield "ndim 1", normal(7), 2, 1.0, 1.0, 0.5
    yield "M not a multiple of the chunk", normal((16384 // 96 * 2 + 5, 96)), 2, 2.0, 1e-4, 0.75
    yield "parallel path", normal(PARALLEL_SHAPE), 2, 2.0, 1e-4, 0.75
    yield "parallel, general beta", normal(PARALLEL_SHAPE), 3, 0.5, 1.0, 0.6
    yield "TF defaults, wide channels", normal((3, 5, 300)), 5, 1.0, 1.0, 0.5
    yield "beta 2", normal((6, 9)), 1, 0.5, 1.0, 2.0
    yield "negative beta", normal((6, 9)), 1, 0.5, 1.0, -0.5
    yield "beta 0", normal((6, 9)), 1, 0.5, 1.0, 0.0
    yield "alpha 0", normal((6, 9)), 1, 2.0, 0.0, 0.75
    yield "wide window (float path off)", normal((5, 80)), 20, 1.0, 1.0, 0.75
    yield "huge values", normal((4, 16)) * 1e17, 2, 1.0, 1.0, 0.75
    yield "tiny values, small bias", normal((4, 16)) * 1e-19, 2, 1e-30, 1.0, 0.75
    yield "tiny bias", normal((4, 16)), 2, 1e-20, 1.0, 1.0
    yield "mixed rows", np.concatenate([normal((3, 16)), 1e18 * normal((1, 16))]), 1, 1.0, 1.0, 0.5
    yield "zeros with bias 0 (0/0)", np.zeros((2, 5)), 1, 0.0, 1.0, 0.75
    yield "negative bias", normal((4, 6)), 1, -0.5, 1.0, 0.75


CORPUS = list(_corpus())


@pytest.mark.parametrize("name, x, depth_radius, bias, alpha, beta", CORPUS,
                         ids=[case[0] for case in CORPUS])
def test_edge_corpus(dtype, name, x, depth_radius, bias, alpha, beta):
    with np.errstate(all="ignore"):
        x = x.astype(dtype)
        if dtype == np.float32 and not np.all(np.isfinite(x)):
            pytest.skip("not representable in float32")
        check_lrn(x, depth_radius, bias, alpha, beta)


def test_extreme_float64_values():
    x = np.random.default_rng(3).standard_normal((4, 8)) * 1e150
    check_lrn(x, 2, 1.0, 1.0, 0.75)
    check_lrn(x * 1e-300, 2, 1e-300, 1.0, 0.5)


def test_nan_and_inf_follow_ieee(dtype):
    x = np.array([[1.0, np.nan, 2.0, 3.0, 4.0], [np.inf, 1.0, 2.0, -np.inf, 0.0]], dtype)
    with np.errstate(all="ignore"):
        expected = reference.lrn(x, 1, 1.0, 1.0, 0.75)
    y = cnorm.lrn(x, 1, 1.0, 1.0, 0.75)
    assert_close(y, expected)
    # a NaN poisons exactly the outputs whose window holds it
    assert np.isnan(y[0, :3]).all() and np.isfinite(y[0, 3:]).all()


@pytest.mark.parametrize("convention", ["torch", "onnx", "caffe"])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 12])
def test_size_based_against_reference(dtype, convention, size):
    if convention == "caffe" and size % 2 == 0:
        pytest.skip("caffe rejects even sizes")
    rng = np.random.default_rng(size)
    x = rng.standard_normal((3, 4, 10)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    params = dict(alpha=float(size), beta=0.75, k=0.3, convention=convention)  # a = 1
    y = cnorm.local_response_norm(x, size, **params)
    assert_close(y, reference.local_response_norm(x, size, **params))
    dx = cnorm.local_response_norm_backward(dy, x, size, **params)
    before, after = reference.lrn_window(size, convention)
    scale = lrn_backward_scale(dy, x, before, after, 1.0, 0.3, 0.75)
    assert_close(dx, reference.local_response_norm_backward(dy, x, size, **params), scale=scale)


def test_even_sizes_differ_between_torch_and_onnx():
    x = np.arange(1.0, 6.0)
    torch_y = cnorm.local_response_norm(x, 4, 1.0, 1.0, 1.0, convention="torch")
    onnx_y = cnorm.local_response_norm(x, 4, 1.0, 1.0, 1.0, convention="onnx")
    assert not np.allclose(torch_y, onnx_y)


def test_backward_matches_finite_differences_of_the_kernel():
    """Gradient of the compiled forward itself, alpha = 1, small bias, float64."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 2, 9))
    dy = rng.standard_normal(x.shape)
    for depth_radius, beta in [(1, 0.75), (2, 0.5), (3, 1.0), (2, 0.6)]:
        args = (depth_radius, 0.25, 1.0, beta)
        numeric = numerical_gradient(lambda: np.sum(dy * cnorm.lrn(x, *args)), x)
        np.testing.assert_allclose(cnorm.lrn_backward(dy, x, *args), numeric, rtol=1e-6, atol=1e-7)


# --- hypothesis -------------------------------------------------------------------

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9)
betas = st.one_of(st.sampled_from([0.5, 0.75, 1.0]), st.floats(0.05, 2.0))


@given(
    data=st.data(),
    shape=shapes,
    depth_radius=st.integers(0, 7),
    bias=st.floats(0.01, 4.0),
    alpha=st.floats(1e-4, 2.0),
    beta=betas,
    float32=st.booleans(),
)
def test_lrn_hypothesis(data, shape, depth_radius, bias, alpha, beta, float32):
    dtype = np.float32 if float32 else np.float64
    elements = st.floats(-1e3, 1e3, allow_nan=False, width=32 if float32 else 64)
    x = data.draw(hnp.arrays(dtype, shape, elements=elements))
    dy = data.draw(hnp.arrays(dtype, shape, elements=st.floats(-10, 10, width=32)))
    check_lrn(x, depth_radius, bias, alpha, beta, dy=dy)


@given(
    data=st.data(),
    shape=shapes,
    size=st.integers(1, 9),
    convention=st.sampled_from(["torch", "onnx", "caffe"]),
    beta=betas,
)
def test_local_response_norm_hypothesis(data, shape, size, convention, beta):
    if convention == "caffe" and size % 2 == 0:
        size += 1
    x = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-100, 100, width=32)))
    y = cnorm.local_response_norm(x, size, 1.0, beta, 0.5, convention=convention)
    assert_close(y, reference.local_response_norm(x, size, 1.0, beta, 0.5, convention=convention))


# --- threads, in-place, layout ------------------------------------------------------

@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_bit_identical_for_every_thread_count(dtype, n_threads, beta):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(PARALLEL_SHAPE).astype(dtype)
    dy = rng.standard_normal(PARALLEL_SHAPE).astype(dtype)
    serial_y = cnorm.lrn(x, 2, 2.0, 1e-4, beta, n_threads=1)
    serial_dx = cnorm.lrn_backward(dy, x, 2, 2.0, 1e-4, beta, n_threads=1)
    assert _lrn.n_chunks(x.size // 96, 96) > 3
    np.testing.assert_array_equal(cnorm.lrn(x, 2, 2.0, 1e-4, beta, n_threads=n_threads), serial_y)
    np.testing.assert_array_equal(
        cnorm.lrn_backward(dy, x, 2, 2.0, 1e-4, beta, n_threads=n_threads), serial_dx)


def test_in_place_equals_out_of_place(dtype):
    x = np.random.default_rng(2).standard_normal(PARALLEL_SHAPE).astype(dtype)
    x[0, 0, 0, :5] = 1e18  # a row on the double path too
    expected = cnorm.lrn(x, 2, 2.0, 1e-4, 0.75)
    result = cnorm.lrn(x, 2, 2.0, 1e-4, 0.75, out=x)
    assert result is x
    np.testing.assert_array_equal(x, expected)


def test_backward_into_dy_equals_fresh_output(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 5, 12)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    expected = cnorm.lrn_backward(dy, x, 2, 0.5, 1.0, 0.75)
    assert cnorm.lrn_backward(dy, x, 2, 0.5, 1.0, 0.75, out=dy) is dy
    np.testing.assert_array_equal(dy, expected)


def test_out_is_returned_and_inputs_untouched(dtype):
    x = np.random.default_rng(8).standard_normal((3, 4, 8)).astype(dtype)
    dy = np.ones_like(x)
    keep_x, keep_dy = x.copy(), dy.copy()
    out = np.empty_like(x)
    assert cnorm.lrn(x, out=out) is out
    assert cnorm.local_response_norm_backward(dy, x, 3, out=out) is out
    np.testing.assert_array_equal(x, keep_x)
    np.testing.assert_array_equal(dy, keep_dy)


def test_non_contiguous_and_other_layouts(dtype):
    # Strided views are copied once (the result C-contiguous); a permutation of
    # a C-contiguous array (Fortran order here) is used as it is, and the
    # result has its memory layout.
    base = np.random.default_rng(9).standard_normal((6, 5, 16)).astype(dtype)
    views = [base[:, ::2, :], base[..., ::2], np.asfortranarray(base), base.tolist()]
    for view in views:
        expected = reference.lrn(np.asarray(view, dtype=np.float64), 2, 1.0, 1.0, 0.75)
        result = cnorm.lrn(np.asarray(view, dtype=dtype) if isinstance(view, list) else view,
                           2, 1.0, 1.0, 0.75)
        if isinstance(view, np.ndarray) and view.flags.f_contiguous:
            assert result.flags.f_contiguous
        else:
            assert result.flags.c_contiguous
        assert_close(result, expected)


def test_read_only_and_big_endian_input():
    x = np.random.default_rng(1).standard_normal((3, 8))
    x.flags.writeable = False
    assert_close(cnorm.lrn(x), reference.lrn(x))
    big = x.astype(">f4")
    assert cnorm.lrn(big).dtype == np.float32
    assert_close(cnorm.lrn(big), reference.lrn(x.astype(np.float32)))


@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0), (2, 0, 4)])
def test_empty_input(dtype, shape):
    x = np.empty(shape, dtype)
    assert cnorm.lrn(x).shape == shape
    assert cnorm.lrn_backward(x, x).shape == shape
    assert cnorm.local_response_norm(x, 3).shape == shape


def test_n_threads_none_follows_threadpoolctl():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from cnorm import _openmp
    if not cnorm.openmp_enabled():
        pytest.skip("built without OpenMP")
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert _openmp.max_threads() == 1
    x = np.random.default_rng(0).standard_normal(PARALLEL_SHAPE)
    np.testing.assert_array_equal(cnorm.lrn(x), cnorm.lrn(x, n_threads=1))


# --- the frameworks' own outputs ------------------------------------------------------

def _golden(prefix):
    files = sorted(glob.glob(os.path.join(GOLDEN, prefix + "*.npz")))
    assert files, f"no golden files {prefix}*"
    return files


def _load(path):
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("path", _golden("tf_lrn_"), ids=os.path.basename)
def test_tensorflow_golden(path):
    g = _load(path)
    args = (int(g["depth_radius"]), float(g["bias"]), float(g["alpha"]), float(g["beta"]))
    assert_close(cnorm.lrn(g["x"], *args), g["y"])
    scale = lrn_backward_scale(g["dy"], g["x"], args[0], args[0], args[2], args[1], args[3])
    assert_close(cnorm.lrn_backward(g["dy"], g["x"], *args), g["dx"], scale=scale)


@pytest.mark.parametrize("path", _golden("torch_lrn_") + _golden("onnx_lrn_"), ids=os.path.basename)
def test_torch_and_onnx_golden(path):
    g = _load(path)
    convention = str(g["convention"])
    size = int(g["size"])
    params = dict(alpha=float(g["alpha"]), beta=float(g["beta"]), k=float(g["k"]),
                  convention=convention)
    assert_close(cnorm.local_response_norm(g["x"], size, **params), g["y"])
    if "dx" in g:
        before, after = reference.lrn_window(size, convention)
        scale = lrn_backward_scale(g["dy"], g["x"], before, after, params["alpha"] / size,
                               params["k"], params["beta"])
        assert_close(cnorm.local_response_norm_backward(g["dy"], g["x"], size, **params),
                     g["dx"], scale=scale)


# --- bad input ------------------------------------------------------------------------

X = np.ones((2, 3, 4), np.float32)


@pytest.mark.parametrize("value", [
    np.ones(3, np.int32), np.ones(3, bool), np.ones(3, complex), np.array([None, 1.0]),
    np.ones(3, np.longdouble), np.ones(3, np.uint16), "abc",
])
def test_unsupported_dtypes_raise_type_error(value):
    with pytest.raises(TypeError, match="x must have dtype float32, float64, float16 or bfloat16"):
        cnorm.lrn(value)
    with pytest.raises(TypeError, match="x must have dtype"):
        cnorm.local_response_norm(value, 3)


def test_zero_dim_input():
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        cnorm.lrn(np.float32(3.0))


@pytest.mark.parametrize("call, error, match", [
    (lambda: cnorm.lrn(X, depth_radius=-1), ValueError, "depth_radius must be >= 0, got -1"),
    (lambda: cnorm.lrn(X, depth_radius=2.5), TypeError, "depth_radius must be an integer"),
    (lambda: cnorm.lrn(X, depth_radius=True), TypeError, "depth_radius must be an integer"),
    (lambda: cnorm.lrn(X, bias=np.inf), ValueError, "bias must be finite"),
    (lambda: cnorm.lrn(X, alpha=np.nan), ValueError, "alpha must be finite"),
    (lambda: cnorm.lrn(X, beta="0.5"), TypeError, "beta must be a real number"),
    (lambda: cnorm.local_response_norm(X, 0), ValueError, "size must be >= 1"),
    (lambda: cnorm.local_response_norm(X, 3.0), TypeError, "size must be an integer"),
    (lambda: cnorm.local_response_norm(X, 3, convention="tf"), ValueError, "convention must be one of"),
    (lambda: cnorm.local_response_norm(X, 4, convention="caffe"), ValueError, "size must be odd"),
    (lambda: cnorm.local_response_norm(X, 3, k=np.inf), ValueError, "k must be finite"),
    (lambda: cnorm.lrn(X, out=np.empty((2, 3, 5), np.float32)), ValueError, "out must have shape"),
    (lambda: cnorm.lrn(X, out=np.empty((2, 3, 4))), TypeError, "out must have dtype float32"),
    (lambda: cnorm.lrn(X, out=np.empty((2, 4, 3), np.float32).transpose(0, 2, 1)), ValueError,
     "out must be C-contiguous"),
    (lambda: cnorm.lrn(X, out=[0.0] * 24), TypeError, "out must be a numpy.ndarray"),
    (lambda: cnorm.lrn_backward(np.ones((2, 3, 5), np.float32), X), ValueError, "dy must have the shape"),
    (lambda: cnorm.lrn_backward(np.ones((2, 3, 4)), X), TypeError, "dy must have the dtype"),
    (lambda: cnorm.lrn(X, n_threads=0), ValueError, "n_threads must be >= 1"),
    (lambda: cnorm.lrn(X, n_threads=1.5), TypeError, "n_threads must be an integer"),
    (lambda: cnorm.lrn(X, n_threads="2"), TypeError, "n_threads must be an integer"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_read_only_out():
    out = np.empty_like(X)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writable"):
        cnorm.lrn(X, out=out)


@pytest.mark.parametrize("backward", [False, True])
def test_partly_overlapping_out_is_rejected(backward):
    # out one row after x: row r's output would overwrite row r + 1 before it is read.
    buffer = np.arange(5 * 8 + 8, dtype=np.float32)
    x = buffer[:5 * 8].reshape(5, 8)
    out = buffer[8:].reshape(5, 8)
    before = buffer.copy()
    with pytest.raises(ValueError, match="out must be x itself or not overlap it"):
        if backward:
            cnorm.lrn_backward(np.ones_like(x), x, out=out)
        else:
            cnorm.lrn(x, out=out)
    np.testing.assert_array_equal(buffer, before)
    if backward:
        x = x.copy()
        dy, out = buffer[:5 * 8].reshape(5, 8), buffer[8:].reshape(5, 8)
        with pytest.raises(ValueError, match="out must be dy itself or not overlap it"):
            cnorm.lrn_backward(dy, x, out=out)
        np.testing.assert_array_equal(buffer, before)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0, 1e4])
def test_float_path_beta_three_quarters_is_within_1e6(scale):
    # beta 0.75 takes the hardware rsqrt estimate and a Newton step in AVX-512 builds
    # (sqrt and division elsewhere): relative error below 1e-6 over divisors from k
    # to ~1e10, forward and backward (the backward's terms measured separately).
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 100)) * scale).astype(np.float32)
    dy = rng.standard_normal((64, 100)).astype(np.float32)
    for bias, alpha in ((2.0, 1e-4), (1.0, 1.0), (1e-3, 1.0)):
        y = cnorm.lrn(x, 2, bias, alpha, 0.75)
        np.testing.assert_allclose(y, reference.lrn(x, 2, bias, alpha, 0.75), rtol=1e-6, atol=0)
        dx = cnorm.lrn_backward(dy, x, 2, bias, alpha, 0.75)
        x64 = x.astype(np.float64)
        sums = sum(np.pad(x64**2, ((0, 0), (2, 2)))[:, t:t + 100] for t in range(5))
        d = bias + alpha * sums
        first = dy * d**-0.75
        np.testing.assert_allclose(dx, reference.lrn_backward(dy, x, 2, bias, alpha, 0.75),
                                   rtol=0, atol=2e-6 * np.abs(first).max())


# --- the float path's polynomial power ------------------------------------------------

@pytest.mark.parametrize("beta", [0.6, 0.1, 1.3, 2.0, 0.75, -0.4])
def test_polynomial_power_over_the_range_the_float_path_admits(beta):
    """Every exponent the float path uses (-beta, -beta-1) over every divisor it admits."""
    bound = 10.0 ** (36.0 / (abs(beta) + 1.0))  # float_square_limit's divisor range
    rng = np.random.default_rng(int(beta * 100) % 97)
    d = np.concatenate([
        np.geomspace(1 / bound, bound, 200001),
        np.exp(rng.uniform(np.log(1 / bound), np.log(bound), 100000)),
        np.nextafter(np.sqrt(2.0), [0.0, 4.0]) * np.array([1.0, 1.0]),  # mantissa split
        [1.0, 2.0, 0.5],
    ]).astype(np.float32)
    for exponent in (-beta, -beta - 1.0):
        out = np.empty_like(d)
        _lrn.power_float32(d, np.float32(exponent), out)
        expected = d.astype(np.float64) ** np.float64(np.float32(exponent))
        relative = np.abs(out / expected - 1.0)
        assert relative.max() < 1e-6, (exponent, d[np.argmax(relative)], relative.max())


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_float32_backward_with_dy_beyond_the_float_path(layout, isa):
    # x within the float path's squares, dy so large that dy*x overflows
    # float32 (1e30 * 1e12): those pixels take the products in double.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 20)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    x[0, 1, 2, 5] = 1e12
    dy[0, 1, 2, 4:7] = 1e30
    params = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
    limit = _dispatch.kernels("_lrn").float_dy_limit(1e-4 / 5, 2.0, 0.75, 5)
    assert 1e12 ** 2 <= _dispatch.kernels("_lrn").float_square_limit(1e-4 / 5, 2.0, 0.75, 5)
    assert 1e17 < limit < 1e30 and limit == 2.0 ** np.floor(np.log2(limit))
    expected = reference.local_response_norm_backward(dy, x, **params)
    if layout == "nchw":
        dx = cnorm.local_response_norm_backward(np.moveaxis(dy, -1, 1).copy(),
                                                np.moveaxis(x, -1, 1).copy(), **params, axis=1)
        dx = np.moveaxis(dx, 1, -1)
    else:
        dx = cnorm.local_response_norm_backward(dy, x, **params)
    assert np.isfinite(dx).all()
    assert_close(dx, expected, scale=np.abs(dy))
