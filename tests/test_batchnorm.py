"""Batch normalization: kernels against the float64 reference, the frameworks'
golden outputs, finite differences, thread invariance, stability and bad input."""
import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cnorm
from cnorm import _dispatch
from cnorm import reference as ref
from cnorm._dispatch import kernels

from helpers import assert_close, batch_norm_backward_scales, numerical_gradient

GOLDEN = pathlib.Path(__file__).parent / "golden" / "data"


def golden(name):
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def rows(array):
    array = np.asarray(array, dtype=np.float64)
    return array.reshape(-1, array.shape[-1])


def make_case(rng, shape, dtype, offset=0.0):
    n_channels = shape[-1]
    mean = offset + 2.0 * rng.standard_normal(n_channels)
    std = rng.uniform(0.5, 3.0, n_channels)
    x = (mean + std * rng.standard_normal(shape)).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, n_channels) * rng.choice([-1.0, 1.0], n_channels)
    beta = rng.standard_normal(n_channels)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dy


# ---------------------------------------------------------------------------
# Error scales: where terms cancel, an error relative to the terms is all a
# finite precision can promise (see helpers.assert_close).

def training_y_scale(x, gamma, beta, mean, invstd):
    return np.abs(gamma * (np.asarray(x, np.float64) - mean) * invstd) + np.abs(beta)



# ---------------------------------------------------------------------------
# Against the reference, hypothesis-generated shapes

shapes = st.lists(st.integers(1, 7), min_size=1, max_size=3).flatmap(
    lambda lead: st.integers(1, 40).map(lambda c: tuple(lead) + (c,)))


@given(shape=shapes, dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**32 - 1), offset=st.sampled_from([0.0, 100.0]),
       n_threads=st.sampled_from([1, 2, 3]))
def test_against_reference(shape, dtype, seed, offset, n_threads):
    rng = np.random.default_rng(seed)
    x, gamma, beta, dy = make_case(rng, shape, dtype, offset)
    n_channels = shape[-1]
    running_mean = rng.standard_normal(n_channels) + offset
    running_var = rng.uniform(0.1, 4.0, n_channels)

    # inference: float32 computes x*A + B in float, so the error is relative to those terms
    y = cnorm.batch_norm_inference(x, running_mean, running_var, gamma, beta, eps=1e-3,
                                   n_threads=n_threads)
    a = gamma / np.sqrt(running_var + 1e-3)
    assert y.dtype == dtype and y.shape == shape
    assert_close(y, ref.batch_norm_inference(x, running_mean, running_var, gamma, beta, 1e-3),
                 scale=np.abs(x * a) + np.abs(beta - running_mean * a))

    if x.size == n_channels:
        return  # one value per channel: training is an error (tested below)
    y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, eps=1e-3, n_threads=n_threads)
    y_ref, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma, beta, 1e-3)
    assert mean.dtype == invstd.dtype == np.float64
    assert_close(y, y_ref, scale=training_y_scale(x, gamma, beta, mean_ref, invstd_ref))
    # mean and invstd are float64 whatever x's dtype: float64 tolerance, relative to |x|
    assert_close(mean, mean_ref, scale=np.abs(rows(x)).max(axis=0))
    assert_close(invstd, invstd_ref, rtol_factor=100)

    for training in (True, False):
        dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma,
                                                      training=training, n_threads=n_threads)
        dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(dy, x, mean, invstd, gamma,
                                                                training=training)
        dx_scale, dgamma_scale, dbeta_scale = batch_norm_backward_scales(dy, x, mean, invstd, gamma,
                                                              training)
        assert dx.dtype == dtype and dgamma.dtype == dbeta.dtype == np.float64
        assert_close(dx, dx_ref, scale=dx_scale)
        np.testing.assert_allclose(dgamma, dgamma_ref, rtol=0, atol=1e-12 * dgamma_scale.max())
        np.testing.assert_allclose(dbeta, dbeta_ref, rtol=0, atol=1e-12 * dbeta_scale.max())


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (2, 64, 64, 16), (3, 7, 7, 600), (50, 1)])
def test_against_reference_large(shape, dtype, n_threads, rng):
    # Shapes above the serial threshold, with many chunks and a merge in channel blocks.
    x, gamma, beta, dy = make_case(rng, shape, dtype, offset=5.0)
    y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, n_threads=n_threads)
    y_ref, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma, beta)
    assert_close(y, y_ref, scale=training_y_scale(x, gamma, beta, mean_ref, invstd_ref))
    assert_close(mean, mean_ref, scale=np.abs(rows(x)).max(axis=0))
    assert_close(invstd, invstd_ref, rtol_factor=100)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma,
                                                  n_threads=n_threads)
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(dy, x, mean, invstd, gamma)
    dx_scale, dgamma_scale, dbeta_scale = batch_norm_backward_scales(dy, x, mean, invstd, gamma, True)
    assert_close(dx, dx_ref, scale=dx_scale)
    assert_close(dgamma, dgamma_ref, scale=dgamma_scale * 1e-3)
    assert_close(dbeta, dbeta_ref, scale=dbeta_scale * 1e-3)


def test_defaults_gamma_beta_none(dtype, rng):
    x, _, _, dy = make_case(rng, (3, 4, 5), dtype)
    y, mean, invstd = cnorm.batch_norm_training(x)
    y1, mean1, invstd1 = cnorm.batch_norm_training(x, np.ones(5), np.zeros(5))
    np.testing.assert_array_equal(y, y1)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd)
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(dy, x, mean, invstd)
    assert dgamma.shape == dbeta.shape == (5,)
    assert_close(dgamma, dgamma_ref, rtol_factor=1e-3, scale=np.abs(rows(dy)).sum(axis=0))
    assert_close(dbeta, dbeta_ref, rtol_factor=1e-3, scale=np.abs(rows(dy)).sum(axis=0))


def test_mixed_per_channel_dtypes(dtype, rng):
    # Per-channel arrays may be float32 or float64 whatever x's dtype.
    x, gamma, beta, _ = make_case(rng, (6, 5, 4), dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    y = cnorm.batch_norm_training(x, gamma.astype(other), beta.astype(other))[0]
    y_ref, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma.astype(other),
                                                          beta.astype(other))
    assert y.dtype == dtype
    assert_close(y, y_ref, scale=training_y_scale(x, gamma, beta, mean_ref, invstd_ref))


# ---------------------------------------------------------------------------
# Golden data from the frameworks (tests/golden/README.md)

TORCH_TRAIN = ["torch_bn_train_m0.1_f32", "torch_bn_train_m0.1_f64", "torch_bn_train_mNone_f32",
               "torch_bn_train_mNone_f64", "torch_bn_train_m0.3_eps0.1_f32",
               "torch_bn_train_bigmean_f32"]


def check_golden_training_backward(d, mean, invstd, name):
    """cnorm's training backward with its own saved statistics against a golden file;
    returns the scales of dx, dgamma and dbeta for further comparisons."""
    dx, dgamma, dbeta = cnorm.batch_norm_backward(d["dy"], d["x"], mean, invstd, d["gamma"])
    dx_scale, dgamma_scale, dbeta_scale = batch_norm_backward_scales(d["dy"], d["x"], mean, invstd,
                                                          d["gamma"], True)
    golden_close(dx, d["dx"], name, scale=dx_scale)
    golden_close(dgamma, d["dgamma"], name, scale=dgamma_scale, bigmean_atol=1e-2)
    golden_close(dbeta, d["dbeta"], name, scale=dbeta_scale)
    return dx_scale, dgamma_scale, dbeta_scale


def golden_close(actual, expected, name, scale=None, bigmean_atol=1.5e-3):
    """Compare with a framework's output, at the precision of the framework's dtype."""
    # Our per-channel results are float64; the framework's carry its dtype's rounding.
    actual = np.asarray(actual).astype(expected.dtype)
    if "bigmean" in name:
        # float32 data around 1e4 (ulp 1e-3): the frameworks themselves agree with
        # float64 only to about 1e-3 absolute for y and dx, and their float32 sums
        # for dgamma carry errors of several 1e-3 (tests/golden/README.md).
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=bigmean_atol)
    else:
        assert_close(actual, expected, scale=scale, rtol_factor=5)


@pytest.mark.parametrize("name", TORCH_TRAIN)
def test_golden_torch_training(name):
    d = golden(name)
    dtype = d["x"].dtype
    running_mean, running_var = d["running_mean_in"].copy(), d["running_var_in"].copy()
    for batch in range(3):
        # momentum=None in torch is the cumulative average: 1/num_batches_tracked
        momentum = 1.0 / (batch + 1) if np.isnan(d["momentum"]) else float(d["momentum"])
        y, mean, invstd = cnorm.batch_norm_training(
            d[f"x_{batch}"], d["gamma"], d["beta"], float(d["eps"]), running_mean=running_mean,
            running_var=running_var, momentum=momentum)
        assert running_mean.dtype == running_var.dtype == dtype
        golden_close(running_mean, d[f"running_mean_out_{batch}"], name,
                     scale=np.abs(d[f"running_mean_out_{batch}"]).max())
        golden_close(running_var, d[f"running_var_out_{batch}"], name)
    golden_close(y, d["y"], name, scale=np.abs(d["y"]).max())
    golden_close(mean, d["saved_mean"], name, scale=np.abs(d["saved_mean"]).max())
    golden_close(invstd, d["saved_invstd"], name)
    np.testing.assert_allclose(mean, d["batch_mean"], rtol=1e-12, atol=1e-12 * np.abs(d["x"]).max())
    np.testing.assert_allclose(1.0 / invstd**2 - float(d["eps"]), d["batch_var_biased"],
                               rtol=1e-9)
    dx_scale, dgamma_scale, dbeta_scale = check_golden_training_backward(d, mean, invstd, name)
    # the backward also accepts the framework's own (float32) saved statistics
    dx2 = cnorm.batch_norm_backward(d["dy"], d["x"], d["saved_mean"], d["saved_invstd"],
                                    d["gamma"])[0]
    golden_close(dx2, d["dx"], name, scale=dx_scale)


@pytest.mark.parametrize("name", ["torch_bn_eval_f32", "torch_bn_eval_f64", "tf_bn_infer",
                                  "tf_bn_infer_eps1e-4", "onnx_bn_infer",
                                  "onnx_bn_infer_eps0.01"])
def test_golden_inference(name):
    d = golden(name)
    eps = float(d["eps"])
    running_mean, running_var = d["running_mean"], d["running_var"]
    y = cnorm.batch_norm_inference(d["x"], running_mean, running_var, d["gamma"], d["beta"], eps)
    a = d["gamma"].astype(np.float64) / np.sqrt(running_var.astype(np.float64) + eps)
    b = d["beta"] - running_mean * a
    assert y.dtype == d["x"].dtype
    golden_close(y, d["y"], name, scale=np.abs(d["x"] * a) + np.abs(b))
    if "dy" not in d:
        return  # ONNX Runtime: forward only
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(d["dy"], d["x"], running_mean, invstd,
                                                  d["gamma"], training=False)
    dx_scale, dgamma_scale, dbeta_scale = batch_norm_backward_scales(d["dy"], d["x"], running_mean,
                                                          invstd, d["gamma"], False)
    golden_close(dx, d["dx"], name, scale=dx_scale)
    golden_close(dgamma, d["dgamma"], name, scale=dgamma_scale)
    golden_close(dbeta, d["dbeta"], name, scale=dbeta_scale)


@pytest.mark.parametrize("name", ["tf_bn_train_f1.0", "tf_bn_train_f0.3",
                                  "tf_bn_train_bigmean_f1.0"])
def test_golden_tensorflow_training(name):
    d = golden(name)
    eps = float(d["eps"])
    running_mean, running_var = d["running_mean_in"].copy(), d["running_var_in"].copy()
    # TF's exponential_avg_factor f is momentum=f; its batch_mean/batch_variance outputs
    # are the updated running statistics, with the UNBIASED variance.
    y, mean, invstd = cnorm.batch_norm_training(
        d["x"], d["gamma"], d["beta"], eps, running_mean=running_mean, running_var=running_var,
        momentum=float(d["exponential_avg_factor"]))
    golden_close(running_mean, d["running_mean_out"], name,
                 scale=np.abs(d["running_mean_out"]).max())
    golden_close(running_var, d["running_var_out"], name)
    golden_close(y, d["y"], name, scale=np.abs(d["y"]).max())
    # reserve_space_1 is the batch mean, reserve_space_2 the BIASED batch variance
    golden_close(mean, d["saved_mean"], name, scale=np.abs(d["saved_mean"]).max())
    golden_close(1.0 / invstd**2 - eps, d["saved_var_or_invstd"], name)
    check_golden_training_backward(d, mean, invstd, name)


# ---------------------------------------------------------------------------
# Running-statistics conventions: the worked example of docs/guide/conventions.md

X_EXAMPLE = np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1)  # mean 2.5, var_b 1.25, unbiased 5/3


@pytest.mark.parametrize("convention, kwargs, expected_mean, expected_var", [
    ("torch momentum=0.1", dict(momentum=0.1), 0.25, 0.9 + 0.1 * 5 / 3),  # 1.06667
    ("torch default", dict(), 0.25, 1.0 + 0.1 * (5 / 3 - 1)),
    ("tf exponential_avg_factor=1", dict(momentum=1.0), 2.5, 5 / 3),  # 1.66667: replace
    ("tf exponential_avg_factor=0.3", dict(momentum=0.3), 0.75, 0.7 + 0.3 * 5 / 3),
    # Keras 3 momentum=0.99: the project's first specification said 0.9925, a typo: Keras gives
    # 0.99*1 + 0.01*1.25 = 1.0025 (checked against Keras 3 when making the golden data).
    ("keras momentum=0.99", dict(momentum=1 - 0.99, running_var_unbiased=False), 0.025, 1.0025),
    ("onnx momentum=0.9", dict(momentum=1 - 0.9, running_var_unbiased=False), 0.25, 1.025),
])
def test_running_statistics_conventions(convention, kwargs, expected_mean, expected_var, dtype):
    running_mean, running_var = np.zeros(1, dtype), np.ones(1, dtype)
    y, mean, invstd = cnorm.batch_norm_training(X_EXAMPLE.astype(dtype), running_mean=running_mean,
                                                running_var=running_var, **kwargs)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(mean, [2.5], rtol=1e-15)
    np.testing.assert_allclose(1.0 / invstd**2 - 1e-5, [1.25], rtol=1e-12)
    np.testing.assert_allclose(running_mean, [expected_mean], rtol=rtol)
    np.testing.assert_allclose(running_var, [expected_var], rtol=rtol)
    assert running_mean.dtype == running_var.dtype == dtype
    # the reference implements the same conventions
    ref_mean, ref_var = np.zeros(1), np.ones(1)
    ref.batch_norm_training(X_EXAMPLE, running_mean=ref_mean, running_var=ref_var, **kwargs)
    np.testing.assert_allclose(running_var, ref_var, rtol=rtol)


def test_semantics_examples_rounded():
    # The numbers exactly as docs/guide/conventions.md prints them.
    results = {}
    for label, kwargs in [("torch", dict(momentum=0.1)), ("tf", dict(momentum=1.0)),
                          ("keras", dict(momentum=0.01, running_var_unbiased=False)),
                          ("onnx", dict(momentum=0.1, running_var_unbiased=False))]:
        running_var = np.ones(1)
        cnorm.batch_norm_training(X_EXAMPLE, running_mean=np.zeros(1), running_var=running_var,
                                  **kwargs)
        results[label] = round(float(running_var[0]), 5)
    assert results == {"torch": 1.06667, "tf": 1.66667, "keras": 1.0025, "onnx": 1.025}


def test_momentum_one_replaces_non_finite_running_values():
    running_mean, running_var = np.array([np.inf]), np.array([np.nan])
    cnorm.batch_norm_training(X_EXAMPLE, running_mean=running_mean, running_var=running_var,
                              momentum=1.0)
    np.testing.assert_allclose(running_mean, [2.5])
    np.testing.assert_allclose(running_var, [5 / 3])


def test_momentum_zero_keeps_running_statistics():
    running_mean, running_var = np.array([0.5]), np.array([2.0])
    cnorm.batch_norm_training(X_EXAMPLE, running_mean=running_mean, running_var=running_var,
                              momentum=0.0)
    assert running_mean[0] == 0.5 and running_var[0] == 2.0


# ---------------------------------------------------------------------------
# Gradients by finite differences of the float64 reference

@pytest.mark.parametrize("training", [True, False])
def test_gradients_by_finite_differences(training, rng):
    x, gamma, beta, dy = make_case(rng, (3, 2, 4), np.float64, offset=3.0)
    running_mean = rng.standard_normal(4)
    running_var = rng.uniform(0.5, 2.0, 4)
    eps = 1e-3

    def loss():
        if training:
            y = ref.batch_norm_training(x, gamma, beta, eps)[0]
        else:
            y = ref.batch_norm_inference(x, running_mean, running_var, gamma, beta, eps)
        return float((dy * y).sum())

    if training:
        _, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, eps)
    else:
        mean, invstd = running_mean, 1.0 / np.sqrt(running_var + eps)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, training=training)
    np.testing.assert_allclose(dx, numerical_gradient(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dgamma, numerical_gradient(loss, gamma), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dbeta, numerical_gradient(loss, beta), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# Determinism: bit-identical for every thread count

@pytest.mark.parametrize("shape", [(8, 16, 16, 32), (8, 7, 7, 600), (40000, 3)])
def test_bit_identical_across_thread_counts(shape, dtype, n_threads, rng):
    x, gamma, beta, dy = make_case(rng, shape, dtype, offset=10.0)
    assert kernels("_batchnorm").n_chunks(x.size // shape[-1], shape[-1]) > 3

    def run(threads):
        running_mean, running_var = np.zeros(shape[-1]), np.ones(shape[-1])
        y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, running_mean=running_mean,
                                                    running_var=running_var, n_threads=threads)
        dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma,
                                                      n_threads=threads)
        frozen = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, training=False,
                                           n_threads=threads)
        inference = cnorm.batch_norm_inference(x, mean, 1 / invstd**2, gamma, beta,
                                               n_threads=threads)
        return (y, mean, invstd, running_mean, running_var, dx, dgamma, dbeta, *frozen,
                inference)

    for got, want in zip(run(n_threads), run(1)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# Numerical stability: |mean| >> std in float32

@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_variance_stable_for_large_means(offset, n_threads):
    rng = np.random.default_rng(7)
    n_channels = 8
    x = (offset * (1 + 0.1 * rng.uniform(-1, 1, n_channels))
         + rng.standard_normal((16, 32, 32, n_channels))).astype(np.float32)
    eps = 1e-5
    _, mean, invstd = cnorm.batch_norm_training(x, eps=eps, n_threads=n_threads)
    xr = rows(x)
    mean_ref = xr.mean(axis=0)
    var_ref = ((xr - mean_ref) ** 2).mean(axis=0)
    var = 1.0 / invstd**2 - eps
    assert np.all(np.abs(var - var_ref) <= 1e-3 * var_ref), (var, var_ref)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12)
    # The one-pass E[x^2] - E[x]^2 in float32 fails the same bound (the test has teeth).
    naive = (x * x).mean(axis=(0, 1, 2), dtype=np.float32) - x.mean(axis=(0, 1, 2),
                                                                   dtype=np.float32) ** 2
    assert not np.all(np.abs(naive - var_ref) <= 1e-3 * var_ref)


def test_stable_backward_for_large_means(dtype, rng):
    x, gamma, beta, dy = make_case(rng, (8, 8, 8, 6), dtype, offset=1e4)
    _, mean, invstd = cnorm.batch_norm_training(x, gamma, beta)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma)
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(dy, x, mean, invstd, gamma)
    dx_scale, dgamma_scale, _ = batch_norm_backward_scales(dy, x, mean, invstd, gamma, True)
    assert_close(dx, dx_ref, scale=dx_scale)
    assert_close(dgamma, dgamma_ref, scale=dgamma_scale * 1e-3)


@pytest.mark.parametrize("sigmas", [0.0, 3.9, 4.1, 1e4])
def test_inference_precision_either_side_of_the_fold(sigmas, dtype, rng):
    # Channels whose |mean| is within 4 standard deviations of 0 are computed as
    # x*A + B, others in the centered form (see cnorm/_batchnorm.pyx): either way
    # the error is a few roundings of |gamma*xhat| + |beta| + |gamma|, never of
    # |mean*gamma/std| (which the folded form would give at 1e4 sigmas).
    n_channels = 16
    std = rng.uniform(0.5, 3.0, n_channels)
    mean = sigmas * std * rng.choice([-1.0, 1.0], n_channels)
    x = (mean + std * rng.standard_normal((64, 40, n_channels))).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, n_channels)
    beta = rng.standard_normal(n_channels)
    y = cnorm.batch_norm_inference(x, mean, std**2, gamma, beta, eps=1e-5)
    y_ref = ref.batch_norm_inference(x, mean, std**2, gamma, beta, 1e-5)
    xhat = (np.asarray(x, np.float64) - mean) / np.sqrt(std**2 + 1e-5)
    assert_close(y, y_ref, scale=np.abs(gamma * xhat) + np.abs(beta) + gamma,
                 rtol_factor=0.1)


@pytest.mark.usefixtures("measured_tuning")
def test_stream_decisions():
    # Streaming stores: float32 in AVX2/AVX-512 builds, for passes over more than
    # 32 MiB of tensors, or 16 MiB for the second pass of training and backward
    # (reread), which re-reads its inputs from the cache.
    bn = kernels("_batchnorm")
    available = _dispatch.ISA_LEVEL != "baseline"
    mib = 2**20
    for tensors in (2, 3):
        over_16, under_16 = 16 * mib // (4 * tensors) + 1, 16 * mib // (4 * tensors)
        over_32, under_32 = 32 * mib // (4 * tensors) + 1, 32 * mib // (4 * tensors)
        assert bn.streams(tensors, over_16, 1, 4, True) == available
        assert not bn.streams(tensors, under_16, 1, 4, True)
        assert not bn.streams(tensors, over_16, 1, 4)
        assert bn.streams(tensors, over_32, 1, 4) == available
        assert not bn.streams(tensors, under_32, 1, 4)
        assert not bn.streams(tensors, over_32, 1, 8) and not bn.streams(tensors, over_32, 1, 8, True)
    # The backward's one-row sums: float32 rows of 256-512 channels, over 32 MiB
    # of dy, x and dx.
    for n_channels in (255, 256, 512, 513):
        over = 32 * mib // (12 * n_channels) + 1
        by_rows = bn.reduction_order(False, over, n_channels, 4) == "rows"
        assert by_rows == (256 <= n_channels <= 512)
        assert bn.reduction_order(False, over - 1, n_channels, 4) != "rows"
        assert bn.reduction_order(False, over, n_channels, 8) != "rows"


@pytest.mark.usefixtures("measured_tuning")
def test_reduction_order_decisions():
    # How the float32 reductions walk a chunk (see _reduction_order): channel
    # groups in AVX-512 builds for C a multiple of 8 when one group holds every
    # channel (C <= 64) or the chunk is at most 512 KiB of the tensors read and
    # they fit in the cache; in AVX2 builds for C a multiple of 4 up to 16 only;
    # the backward's one-row sums as test_stream_decisions pins them; row
    # blocks otherwise, and for float64.
    bn = kernels("_batchnorm")
    v4, v3 = _dispatch.ISA_LEVEL == "x86-64-v4", _dispatch.ISA_LEVEL == "x86-64-v3"
    wide = "groups" if v4 else "blocks"
    narrow = "groups" if v4 or v3 else "blocks"
    assert bn.reduction_order(True, 16 * 112 * 112, 16, 4) == narrow  # one sweep
    assert bn.reduction_order(False, 16 * 112 * 112, 16, 4) == narrow
    assert bn.reduction_order(True, 1000, 12, 4) == ("groups" if v3 else "blocks")  # 3 x 4
    assert bn.reduction_order(True, 32 * 56 * 56, 64, 4) == wide  # sequential, 25.7 MB
    assert bn.reduction_order(False, 32 * 56 * 56, 64, 4) == wide
    assert bn.reduction_order(True, 56 * 56, 256, 4) == wide
    assert bn.reduction_order(False, 56 * 56, 256, 4) == wide
    assert bn.reduction_order(True, 32 * 49, 2048, 4) == wide  # 392 KiB chunks
    assert bn.reduction_order(False, 32 * 49, 2048, 4) == "blocks"  # 784 KiB chunks
    assert bn.reduction_order(True, 32 * 28 * 28, 512, 4) == "blocks"  # beyond the cache
    assert bn.reduction_order(False, 32 * 28 * 28, 512, 4) == "rows"
    assert bn.reduction_order(True, 1000, 36, 4) == "blocks"  # 36 % 8 != 0; > 16 (AVX2)
    assert bn.reduction_order(True, 1000, 64, 8) == "blocks"  # float64


@pytest.mark.parametrize("n_channels", [4, 12, 16, 8, 24, 64, 120, 136, 2048])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_reductions_by_channel_groups(n_channels, offset, n_threads):
    # Every way the group kernels take the channels apart (AVX2: one group of
    # 4, 12, 16; AVX-512: one group of 8, 24, 64; 64 and 56; two of 64 and one
    # of 8; 32 of 64), with |mean| >> std too: the statistics and the
    # backward's sums to float64 tolerance, as the row blocks; dx and y
    # through the same elementwise passes. 256 rows of 2048 channels make
    # 32-row chunks, 512 KiB of dy and x: the sums' limit.
    rng = np.random.default_rng(n_channels)
    m = 256 if n_channels == 2048 else max(300, 65536 // n_channels)
    x, gamma, beta, dy = make_case(rng, (m, n_channels), np.float32, offset)
    level = _dispatch.ISA_LEVEL
    groups = ((level == "x86-64-v4" and n_channels % 8 == 0)
              or (level == "x86-64-v3" and n_channels <= 16))
    bn = kernels("_batchnorm")
    assert bn.reduction_order(True, m, n_channels, 4) == ("groups" if groups else "blocks")
    assert bn.reduction_order(False, m, n_channels, 4) == ("groups" if groups else "blocks")
    y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, n_threads=n_threads)
    y_ref, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma, beta)
    assert_close(mean, mean_ref, scale=np.abs(rows(x)).max(axis=0))
    assert_close(invstd, invstd_ref, rtol_factor=100)
    assert_close(y, y_ref, scale=training_y_scale(x, gamma, beta, mean_ref, invstd_ref))
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma,
                                                  n_threads=n_threads)
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(dy, x, mean, invstd, gamma)
    dx_scale, dgamma_scale, dbeta_scale = batch_norm_backward_scales(dy, x, mean, invstd, gamma, True)
    assert_close(dx, dx_ref, scale=dx_scale)
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=0, atol=1e-12 * dgamma_scale.max())
    np.testing.assert_allclose(dbeta, dbeta_ref, rtol=0, atol=1e-12 * dbeta_scale.max())


@pytest.mark.parametrize("n_channels", [3, 16, 24, 32])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_narrow_rows_across_row_ends(n_channels, offset):
    # Rows of at most 32 float32 channels are computed as one range per chunk
    # whose vectors cross row ends (AVX2/AVX-512 builds; see _apply): outputs
    # at any offset, even not a multiple of 4 bytes, and in place give the
    # same bits, for the folded (offset 0) and centered (1e4) forms, in every
    # elementwise pass, for 1, 2 and 3 threads.
    rng = np.random.default_rng(n_channels)
    m = 100_000 // n_channels  # several chunks, above the serial threshold
    x, gamma, beta, dy = make_case(rng, (m, n_channels), np.float32, offset)
    running_mean, running_var = rows(x).mean(axis=0) + 0.1, rows(x).var(axis=0) + 0.5
    y = cnorm.batch_norm_inference(x, running_mean, running_var, gamma, beta)
    y_ref = ref.batch_norm_inference(x, running_mean, running_var, gamma, beta)
    xhat = (rows(x) - running_mean) / np.sqrt(running_var + 1e-5)
    assert_close(y, y_ref, scale=np.abs(gamma * xhat) + np.abs(beta) + np.abs(gamma))
    for byte_offset in (1, 4, 28):
        buffer = np.zeros(x.nbytes + 128, np.uint8)
        start = (-buffer.ctypes.data) % 64 + byte_offset
        out = np.ndarray(x.shape, np.float32, buffer, offset=start)
        cnorm.batch_norm_inference(x, running_mean, running_var, gamma, beta, out=out)
        np.testing.assert_array_equal(out, y)
    in_place = x.copy()
    cnorm.batch_norm_inference(in_place, running_mean, running_var, gamma, beta, out=in_place)
    np.testing.assert_array_equal(in_place, y)

    def passes(n_threads):
        y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, n_threads=n_threads)
        dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma,
                                                      n_threads=n_threads)
        frozen, _, _ = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, training=False,
                                                 n_threads=n_threads)
        return y, dx, frozen

    y, dx, frozen = passes(1)
    y_ref, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma, beta)
    assert_close(y, y_ref, scale=training_y_scale(x, gamma, beta, mean_ref, invstd_ref))
    _, mean, invstd = cnorm.batch_norm_training(x, gamma, beta)
    dx_ref, _, _ = ref.batch_norm_backward(dy, x, mean, invstd, gamma)
    assert_close(dx, dx_ref, scale=batch_norm_backward_scales(dy, x, mean, invstd, gamma, True)[0])
    frozen_ref, _, _ = ref.batch_norm_backward(dy, x, mean, invstd, gamma, training=False)
    assert_close(frozen, frozen_ref,
                 scale=batch_norm_backward_scales(dy, x, mean, invstd, gamma, False)[0])
    for n_threads in (2, 3):
        for got, want in zip(passes(n_threads), (y, dx, frozen)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n_channels, offset", [(37, 0.0), (64, 0.0), (3, 1e4), (300, 0.0)])
@pytest.mark.usefixtures("measured_tuning")
def test_streamed_outputs_of_large_tensors(n_channels, offset):
    # float32 outputs of passes over more than 32 MiB of tensors are written with
    # streaming stores (AVX2/AVX-512 builds), in chunk-long runs whose vectors
    # cross rows: C not a multiple of the vector width, folded (offset 0) and
    # centered (1e4) forms, every pass (x and y: just over 16 MiB each), in place
    # too, bit-identical for 1, 2 and 3 threads. C = 300 also takes the
    # backward's one-row sums (middle-width rows of tensors beyond the cache).
    rng = np.random.default_rng(n_channels)
    m = (4 * 2**20 + 5 * n_channels) // n_channels + 1  # just over 16 MiB of float32
    bn = kernels("_batchnorm")
    if _dispatch.ISA_LEVEL != "baseline":
        assert bn.streams(2, m, n_channels, 4) and bn.streams(3, m, n_channels, 4)
        assert bn.streams(2, m, n_channels, 4, True) and bn.streams(3, m, n_channels, 4, True)
    assert (bn.reduction_order(False, m, n_channels, 4) == "rows") == (n_channels == 300)
    x, gamma, beta, dy = make_case(rng, (m, n_channels), np.float32, offset)
    running_mean = rows(x).mean(axis=0) + 0.1
    running_var = rows(x).var(axis=0) + 0.5
    # Streamed into resident memory only: outputs written beforehand (not
    # fresh pages, which take normal stores; see cn_pages_resident), and the
    # results of fresh outputs are the same bits.
    def resident():
        out = np.full_like(x, np.nan)
        assert bn.pages_resident(out)
        return out

    fresh = cnorm.batch_norm_inference(x, running_mean, running_var, gamma, beta)
    y = cnorm.batch_norm_inference(x, running_mean, running_var, gamma, beta, out=resident())
    np.testing.assert_array_equal(fresh, y)
    y_ref = ref.batch_norm_inference(x, running_mean, running_var, gamma, beta)
    xhat = (rows(x) - running_mean) / np.sqrt(running_var + 1e-5)
    assert_close(y, y_ref, scale=np.abs(gamma * xhat) + np.abs(beta) + np.abs(gamma))
    in_place = x.copy()
    cnorm.batch_norm_inference(in_place, running_mean, running_var, gamma, beta, out=in_place)
    np.testing.assert_array_equal(in_place, y)
    for shift in (1, 7):  # outputs 4 and 28 bytes past NumPy's alignment of the buffer
        out = np.full(x.size + shift, np.nan, np.float32)[shift:].reshape(x.shape)
        cnorm.batch_norm_inference(x, running_mean, running_var, gamma, beta, out=out)
        np.testing.assert_array_equal(out, y)

    results = []
    for n_threads in (1, 2, 3):
        y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, n_threads=n_threads,
                                                    out=resident())
        dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma,
                                                      n_threads=n_threads, out=resident())
        frozen, _, _ = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, training=False,
                                                 n_threads=n_threads, out=resident())
        results.append((y, dx, frozen, dgamma, dbeta))
    fresh = cnorm.batch_norm_training(x, gamma, beta)[0], cnorm.batch_norm_backward(
        dy, x, mean, invstd, gamma)[0]
    np.testing.assert_array_equal(fresh[0], results[0][0])
    np.testing.assert_array_equal(fresh[1], results[0][1])
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)
    y, dx, frozen, dgamma, dbeta = results[0]
    y_ref, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma, beta)
    assert_close(y, y_ref, scale=training_y_scale(x, gamma, beta, mean_ref, invstd_ref))
    for training, got in ((True, dx), (False, frozen)):
        dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(dy, x, mean, invstd, gamma,
                                                                training=training)
        dx_scale, dgamma_scale, dbeta_scale = batch_norm_backward_scales(dy, x, mean, invstd, gamma,
                                                              training)
        assert_close(got, dx_ref, scale=dx_scale)
        if training:
            np.testing.assert_allclose(dgamma, dgamma_ref, rtol=0,
                                       atol=1e-12 * dgamma_scale.max())
            np.testing.assert_allclose(dbeta, dbeta_ref, rtol=0, atol=1e-12 * dbeta_scale.max())


def test_infinite_gamma_gives_the_references_infinities(dtype):
    # An infinite scale is not folded into x*A + B (inf - inf would make NaN of
    # the whole channel): the centered form gives +-inf as the reference does.
    x = np.random.default_rng(2).standard_normal((6, 3)).astype(dtype)
    gamma = np.array([np.inf, 1.0, 1.0])
    y = cnorm.batch_norm_inference(x, np.zeros(3), np.ones(3), gamma)
    np.testing.assert_array_equal(y[:, 0], ref.batch_norm_inference(x, np.zeros(3), np.ones(3),
                                                                    gamma)[:, 0])
    dx, _, _ = cnorm.batch_norm_backward(x, x, np.zeros(3), np.ones(3), gamma, training=False)
    np.testing.assert_array_equal(
        dx[:, 0], ref.batch_norm_backward(x, x, np.zeros(3), np.ones(3), gamma,
                                          training=False)[0][:, 0])


def test_strided_and_unusual_per_channel_arguments():
    # Per-channel arguments that are not contiguous float64 vectors take the checked
    # path: strided ones are copied, a wrong dtype is a TypeError.
    x = np.random.default_rng(4).standard_normal((4, 6))
    strided = np.ones(12)[::2]
    want = cnorm.batch_norm_inference(x, np.zeros(6), np.ones(6), np.ones(6))
    np.testing.assert_array_equal(cnorm.batch_norm_inference(x, np.zeros(12)[::2], strided,
                                                             strided), want)
    y, mean, invstd = cnorm.batch_norm_training(x, gamma=strided)
    np.testing.assert_array_equal(y, cnorm.batch_norm_training(x, gamma=np.ones(6))[0])
    dx, _, _ = cnorm.batch_norm_backward(x, x, mean, np.repeat(invstd, 2)[::2], strided)
    np.testing.assert_array_equal(dx, cnorm.batch_norm_backward(x, x, mean, invstd)[0])
    with pytest.raises(TypeError, match="gamma must have dtype"):
        cnorm.batch_norm_training(x, gamma=np.zeros(6, "M8[s]"))


def test_constant_channel_gives_finite_output(dtype):
    # var = 0: eps > 0 keeps invstd finite; y = beta.
    x = np.full((5, 3), 7.0, dtype)
    y, mean, invstd = cnorm.batch_norm_training(x, beta=np.array([1.0, 2.0, 3.0]), eps=1e-5)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(1e-5))
    np.testing.assert_array_equal(y, np.broadcast_to(np.array([1.0, 2.0, 3.0], dtype), (5, 3)))


# ---------------------------------------------------------------------------
# In-place and out=

def test_inplace_inference_equals_out_of_place(dtype, n_threads, rng):
    x, gamma, beta, _ = make_case(rng, (4, 30, 30, 16), dtype)
    running_mean, running_var = rng.standard_normal(16), rng.uniform(0.5, 2, 16)
    expected = cnorm.batch_norm_inference(x, running_mean, running_var, gamma, beta,
                                          n_threads=n_threads)
    result = cnorm.batch_norm_inference(x, running_mean, running_var, gamma, beta, out=x,
                                        n_threads=n_threads)
    assert result is x
    np.testing.assert_array_equal(x, expected)


def test_out_arguments(dtype, rng):
    x, gamma, beta, dy = make_case(rng, (4, 9, 9, 5), dtype)
    y_new, mean, invstd = cnorm.batch_norm_training(x, gamma, beta)
    y = np.empty_like(x)
    assert cnorm.batch_norm_training(x, gamma, beta, out=y)[0] is y
    np.testing.assert_array_equal(y, y_new)
    dx_new = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma)[0]
    dx = np.empty_like(x)
    assert cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, out=dx)[0] is dx
    np.testing.assert_array_equal(dx, dx_new)
    # dx may overwrite dy, y may overwrite x
    dy_copy = dy.copy()
    cnorm.batch_norm_backward(dy_copy, x, mean, invstd, gamma, out=dy_copy)
    np.testing.assert_array_equal(dy_copy, dx_new)
    x_copy = x.copy()
    cnorm.batch_norm_training(x_copy, gamma, beta, out=x_copy)
    np.testing.assert_array_equal(x_copy, y_new)


def test_non_contiguous_and_nchw_views(dtype, rng):
    # Any array is accepted, channels on the last axis by default. A Fortran-
    # ordered array is a permutation of a C-contiguous one: used without a
    # copy, its channels then outermost in memory (the (1, C, inner) view).
    # Inference is the same arithmetic in every layout: the same bits. The
    # training statistics are summed in another order: equal to float64
    # rounding (see test_layouts_agree).
    x, gamma, beta, _ = make_case(rng, (2, 5, 6, 4), dtype)
    view = np.asfortranarray(x)
    mean, var = rows(x).mean(axis=0), rows(x).var(axis=0) + 0.5
    np.testing.assert_array_equal(cnorm.batch_norm_inference(view, mean, var, gamma, beta),
                                  cnorm.batch_norm_inference(x, mean, var, gamma, beta))
    y_view = cnorm.batch_norm_training(view, gamma, beta)[0]
    assert y_view.flags.f_contiguous
    y_ref, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma, beta)
    assert_close(y_view, y_ref, scale=training_y_scale(x, gamma, beta, mean_ref, invstd_ref))
    strided = x[:, ::2]  # no permutation of it is contiguous: copied
    np.testing.assert_array_equal(cnorm.batch_norm_training(strided, gamma, beta)[0],
                                  cnorm.batch_norm_training(strided.copy(), gamma, beta)[0])


# ---------------------------------------------------------------------------
# Bad input: the right error, naming the argument, and nothing modified

C = 3


def good_args(dtype=np.float32):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, C)).astype(dtype)
    return dict(x=x, dy=rng.standard_normal((2, 4, C)).astype(dtype),
                gamma=np.ones(C), beta=np.zeros(C), mean=np.zeros(C), invstd=np.ones(C),
                running_mean=np.zeros(C, np.float32), running_var=np.ones(C, np.float32))


def call_inference(a, **over):
    kw = dict(x=a["x"], running_mean=a["running_mean"], running_var=a["running_var"],
              gamma=a["gamma"], beta=a["beta"])
    kw.update(over)
    return cnorm.batch_norm_inference(**kw)


def call_training(a, **over):
    kw = dict(x=a["x"], gamma=a["gamma"], beta=a["beta"], running_mean=a["running_mean"],
              running_var=a["running_var"])
    kw.update(over)
    return cnorm.batch_norm_training(**kw)


def call_backward(a, **over):
    kw = dict(dy=a["dy"], x=a["x"], mean=a["mean"], invstd=a["invstd"], gamma=a["gamma"])
    kw.update(over)
    return cnorm.batch_norm_backward(**kw)


def read_only(array):
    array = array.copy()
    array.flags.writeable = False
    return array


BAD = [
    # (function, overrides (callables of the good args), exception, message fragment)
    (call_inference, dict(x=lambda a: a["x"].astype(np.int32)), TypeError, "x must have dtype"),
    (call_inference, dict(x=lambda a: a["x"].astype(np.complex64)), TypeError, "x must have dtype"),
    (call_inference, dict(x=lambda a: a["x"].astype(np.longdouble)), TypeError, "x must have dtype"),
    (call_inference, dict(axis=lambda a: 3), ValueError, "axis 3 is out of bounds for x with 3 dimensions"),
    (call_inference, dict(axis=lambda a: -4), ValueError, "axis -4 is out of bounds"),
    (call_inference, dict(axis=lambda a: 1.0), TypeError, "axis must be an integer, got float"),
    (call_inference, dict(axis=lambda a: True), TypeError, "axis must be an integer, got bool"),
    (call_inference, dict(axis=lambda a: None), TypeError, "axis must be an integer, got NoneType"),
    (call_inference, dict(running_mean=lambda a: np.zeros(C, np.float16)), TypeError, "running_mean must have dtype"),
    (call_inference, dict(axis=lambda a: 1), ValueError, "running_mean must have shape (4,)"),
    (call_training, dict(axis=lambda a: 0), ValueError, "gamma must have shape (2,)"),
    (call_backward, dict(axis=lambda a: 5), ValueError, "axis 5 is out of bounds"),
    (call_backward, dict(dy=lambda a: a["dy"].astype(np.float16)), TypeError, "dy must have the dtype of x"),
    (call_inference, dict(x=lambda a: np.ones(C, np.float32)), ValueError, "x must have at least 2"),
    (call_inference, dict(x=lambda a: np.ones((0, C), np.float32)), ValueError, "x must not be empty"),
    (call_inference, dict(running_mean=lambda a: np.zeros(C + 1)), ValueError, "running_mean must have shape"),
    (call_inference, dict(running_var=lambda a: np.ones((1, C))), ValueError, "running_var must have shape"),
    (call_inference, dict(running_var=lambda a: np.array([1.0, -1e-3, 1.0])), ValueError, "running_var must be >= 0"),
    (call_inference, dict(running_mean=lambda a: np.zeros(C, np.int64)), TypeError, "running_mean must have dtype"),
    (call_inference, dict(gamma=lambda a: np.ones(C + 1)), ValueError, "gamma must have shape"),
    (call_inference, dict(beta=lambda a: np.zeros(C, np.complex128)), TypeError, "beta must have dtype"),
    (call_inference, dict(eps=lambda a: 0.0), ValueError, "eps must be > 0"),
    (call_inference, dict(eps=lambda a: -1e-5), ValueError, "eps must be > 0"),
    (call_inference, dict(eps=lambda a: float("nan")), ValueError, "eps must be finite"),
    (call_inference, dict(eps=lambda a: float("inf")), ValueError, "eps must be finite"),
    (call_inference, dict(eps=lambda a: "1e-5"), TypeError, "eps must be a real number"),
    (call_inference, dict(out=lambda a: np.empty((2, 4, C), np.float64)), TypeError, "out must have dtype"),
    (call_inference, dict(out=lambda a: np.empty((2, 4, C + 1), np.float32)), ValueError, "out must have shape"),
    (call_inference, dict(out=lambda a: np.empty((C, 4, 2), np.float32).T), ValueError, "out must be C-contiguous"),
    (call_inference, dict(out=lambda a: read_only(a["x"])), ValueError, "out must be writable"),
    (call_inference, dict(out=lambda a: [0.0] * 24), TypeError, "out must be a numpy.ndarray"),
    (call_inference, dict(n_threads=lambda a: 0), ValueError, "n_threads must be >= 1"),
    (call_inference, dict(n_threads=lambda a: 1.5), TypeError, "n_threads must be an integer"),
    (call_inference, dict(n_threads=lambda a: True), TypeError, "n_threads must be an integer"),
    (call_training, dict(x=lambda a: a["x"][:1, :1]), ValueError, "Expected more than 1 value per channel when training"),
    (call_training, dict(x=lambda a: np.ones((0, C))), ValueError, "x must not be empty"),
    (call_training, dict(momentum=lambda a: 1.5), ValueError, "momentum must be in [0, 1]"),
    (call_training, dict(momentum=lambda a: -0.1), ValueError, "momentum must be in [0, 1]"),
    (call_training, dict(momentum=lambda a: float("nan")), ValueError, "momentum must be finite"),
    (call_training, dict(momentum=lambda a: None), TypeError, "momentum must be a real number"),
    (call_training, dict(running_var_unbiased=lambda a: 1), TypeError, "running_var_unbiased must be True or False"),
    (call_training, dict(running_mean=lambda a: [0.0] * C), TypeError, "running_mean must be a numpy.ndarray"),
    (call_training, dict(running_mean=lambda a: np.zeros(C, np.int32)), TypeError, "running_mean must have dtype"),
    (call_training, dict(running_var=lambda a: np.ones(C + 1)), ValueError, "running_var must have shape"),
    (call_training, dict(running_var=lambda a: read_only(np.ones(C))), ValueError, "running_var must be writable"),
    (call_training, dict(running_var=lambda a: np.array([1.0, -1.0, 1.0])), ValueError, "running_var must be >= 0"),
    (call_training, dict(running_var=lambda a: None), ValueError, "running_mean and running_var must be given together"),
    (call_training, dict(gamma=lambda a: np.ones(C - 1)), ValueError, "gamma must have shape"),
    (call_training, dict(eps=lambda a: 0), ValueError, "eps must be > 0"),
    (call_training, dict(out=lambda a: np.empty((2, 4, C), np.float64)), TypeError, "out must have dtype"),
    (call_training, dict(out=lambda a: a["x"][::-1]), ValueError, "out must be C-contiguous"),
    (call_training, dict(n_threads=lambda a: -2), ValueError, "n_threads must be >= 1"),
    (call_backward, dict(dy=lambda a: a["dy"].astype(np.float64)), TypeError, "dy must have the dtype of x"),
    (call_backward, dict(dy=lambda a: a["dy"][:1]), ValueError, "dy must have the shape of x"),
    (call_backward, dict(x=lambda a: a["x"].astype(np.int16)), TypeError, "x must have dtype"),
    (call_backward, dict(mean=lambda a: np.zeros(C + 2)), ValueError, "mean must have shape"),
    (call_backward, dict(invstd=lambda a: np.ones(C, np.int8)), TypeError, "invstd must have dtype"),
    (call_backward, dict(invstd=lambda a: None), TypeError, "invstd must be an array"),
    (call_backward, dict(gamma=lambda a: np.ones((C, 1))), ValueError, "gamma must have shape"),
    (call_backward, dict(training=lambda a: "yes"), TypeError, "training must be True or False"),
    (call_backward, dict(out=lambda a: np.empty((2, 4, C), np.float64)), TypeError, "out must have dtype"),
    (call_backward, dict(n_threads=lambda a: 0), ValueError, "n_threads must be >= 1"),
]


@pytest.mark.parametrize("function, overrides, error, message", BAD,
                         ids=[f"{f.__name__}-{'-'.join(o)}-{i}" for i, (f, o, _, _) in enumerate(BAD)])
def test_bad_input(function, overrides, error, message):
    a = good_args()
    snapshot = {key: value.copy() for key, value in a.items()}
    over = {key: make(a) for key, make in overrides.items()}
    snapshot_over = {key: value.copy() for key, value in over.items()
                     if isinstance(value, np.ndarray)}
    with pytest.raises(error, match=pytest.importorskip("re").escape(message)):
        function(a, **over)
    for key, value in a.items():  # nothing modified, running statistics included
        np.testing.assert_array_equal(value, snapshot[key], err_msg=key)
    for key, value in snapshot_over.items():
        np.testing.assert_array_equal(over[key], value, err_msg=key)


def test_partly_overlapping_out_is_rejected():
    buffer = np.zeros(2 * 4 * C + C, np.float32)
    x = buffer[:2 * 4 * C].reshape(2, 4, C)
    out = buffer[C:].reshape(2, 4, C)
    with pytest.raises(ValueError, match="out must be x itself or not overlap it"):
        cnorm.batch_norm_inference(x, np.zeros(C), np.ones(C), out=out)


def test_running_statistics_untouched_when_a_later_argument_is_bad():
    a = good_args()
    running_mean = np.array([0.5, 0.25, 0.125], np.float32)
    running_var = np.array([2.0, 3.0, 4.0], np.float32)
    for bad in (dict(n_threads=0), dict(out=np.empty((1, 1), np.float32)),
                dict(x=a["x"][:1, :1]), dict(momentum=2.0), dict(eps=0.0)):
        with pytest.raises((TypeError, ValueError)):
            call_training(a, running_mean=running_mean, running_var=running_var, **bad)
        np.testing.assert_array_equal(running_mean, [0.5, 0.25, 0.125])
        np.testing.assert_array_equal(running_var, [2.0, 3.0, 4.0])


def test_exports():
    for name in ("batch_norm_inference", "batch_norm_training", "batch_norm_backward"):
        assert name in cnorm.__all__ and callable(getattr(cnorm, name))
        assert callable(getattr(ref, name))
