"""cnorm against PyTorch's float16/bfloat16 batch norm and TensorFlow's float16 LRN,
on CPU (tests/golden/data/half/torch_bn_half_*, tf_lrn_half_*; made by
tests/golden/make_golden_half.py).

Both are measured against the float64 reference on the same half inputs, in
units in the last place (ulps) of the storage type at the reference value.
cnorm must be within its documented bound (1 ulp, plus float32's error relative
to the terms that were summed) and no worse than the framework on any case. The
framework's errors are recorded, not bounded; its NaN and inf outputs where the
answer is finite are counted. ``python tests/test_golden_half.py`` prints the
table of docs/guide/precision.md.
"""
import os

import numpy as np
import pytest

import cnorm
from cnorm import reference as ref

from helpers import (RTOL, assert_within_ulp, batch_norm_backward_scales, golden_load,
                     golden_names, ulp)

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "data", "half")


def load(name):
    return golden_load(name, GOLDEN)


def names(prefix):
    return golden_names(prefix, GOLDEN)


def storage(d):
    """The file's half dtype; bfloat16 needs ml_dtypes (skip without it)."""
    if str(d["dtype"]) == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(np.float16)


def half(d, key):
    """The stored raw bits of `key` as the file's half dtype."""
    return d[key].view(storage(d))


def ulp_errors(actual, expected, dtype):
    """(max error in ulps over the finite outputs, NaN count, inf count), the
    counts taken where the reference is finite."""
    a = np.asarray(actual).astype(np.float64)
    expected = np.asarray(expected, np.float64)
    finite = np.isfinite(expected)
    nan = int((np.isnan(a) & finite).sum())
    inf = int((np.isinf(a) & finite).sum())
    ok = finite & np.isfinite(a)
    error = np.abs(a - expected)[ok] / ulp(expected[ok], dtype)
    return (float(error.max()) if error.size else np.nan), nan, inf


def relative_errors(actual, expected, scale):
    """max |actual - expected| / (|expected| + scale): the per-channel float arrays."""
    error = np.abs(np.asarray(actual, np.float64) - expected)
    return float((error / (np.abs(expected) + scale)).max())


# The largest error of a value rounded once, to nearest, from a float32 result
# a few float32 roundings off (the half paths compute in float32, as the
# frameworks' do): half an ulp, plus four float32 roundings in ulps of the
# storage type. A framework's maximum can be below cnorm's only by a value this
# near a tie, rounded the other way (one such value in the float16 eval case).
ROUNDED_ONCE = {"float16": 0.5 + 4 * 2.0**-13, "bfloat16": 0.5 + 4 * 2.0**-16}


def no_worse(ours, theirs, dtype):
    """cnorm's error triple is no worse than the framework's, or within one rounding."""
    return worst(ours) <= max(worst(theirs), ROUNDED_ONCE[np.dtype(dtype).name])


def worst(errors):
    """An error triple as one number: NaN or inf outputs where the answer is finite
    count as an infinite error."""
    max_ulps, nan, inf = errors
    return np.inf if nan or inf or np.isnan(max_ulps) else max_ulps


def channels(values):
    return np.asarray(values, np.float64)[None, :, None, None]


def nhwc(array):
    return np.moveaxis(np.asarray(array), 1, -1)


# --------------------------------------------------------------------------- PyTorch batch norm
def torch_bn(name):
    """cnorm's and torch's outputs and errors on one file, asserting cnorm's bound.
    Returns {output: (errors of torch, errors of cnorm)}."""
    d = load(name)
    assert str(d["framework"]) == "torch" and str(d["layout"]) == "NCHW"
    dtype = storage(d)
    x, gamma, beta, eps = half(d, "x"), d["gamma"], d["beta"], float(d["eps"])
    assert x.dtype == dtype and gamma.dtype == np.float32
    out = {}
    if str(d["mode"]) == "inference":
        rm, rv = d["running_mean"], d["running_var"]
        y = cnorm.batch_norm_inference(x, rm, rv, gamma, beta, eps=eps, axis=1)
        y_ref = ref.batch_norm_inference(x, rm, rv, gamma, beta, eps=eps, axis=1)
        mean_ref, invstd_ref = np.asarray(rm, np.float64), 1 / np.sqrt(rv.astype(np.float64) + eps)
    else:
        y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, eps=eps, axis=1)
        y_ref, mean_ref, invstd_ref = ref.batch_norm_training(x, gamma, beta, eps=eps, axis=1)
    assert y.dtype == dtype
    xhat = (x.astype(np.float64) - channels(mean_ref)) * channels(invstd_ref)
    assert_within_ulp(y, y_ref, scale=np.abs(channels(gamma) * xhat) + np.abs(channels(beta)))
    out["y"] = (ulp_errors(half(d, "y"), y_ref, dtype), ulp_errors(y, y_ref, dtype))
    if str(d["mode"]) == "training":
        dy = half(d, "dy")
        dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, axis=1)
        dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(dy, x, mean_ref, invstd_ref,
                                                                gamma, axis=1)
        dx_scale, dgamma_scale, dbeta_scale = batch_norm_backward_scales(
            nhwc(dy), nhwc(x), mean_ref, invstd_ref, gamma, True)
        assert dx.dtype == dtype
        assert_within_ulp(dx, dx_ref, scale=np.moveaxis(dx_scale, -1, 1))
        out["dx"] = (ulp_errors(half(d, "dx"), dx_ref, dtype), ulp_errors(dx, dx_ref, dtype))
        # dgamma and dbeta are float32 (torch) and float64 (cnorm): relative errors.
        for key, got, expected, scale in (("dgamma", dgamma, dgamma_ref, dgamma_scale),
                                          ("dbeta", dbeta, dbeta_ref, dbeta_scale)):
            cnorm_error = relative_errors(got, expected, scale)
            assert cnorm_error <= RTOL[np.dtype(np.float32)], (key, cnorm_error)
            out[key] = (relative_errors(d[key], expected, scale), cnorm_error)
    return out


@pytest.mark.parametrize("name", names("torch_bn_half_"))
def test_torch_half_batch_norm(name):
    dtype = storage(load(name))
    for key, (theirs, ours) in torch_bn(name).items():
        if key in ("dgamma", "dbeta"):
            assert ours <= theirs, (key, ours, theirs)
        else:
            assert no_worse(ours, theirs, dtype), (key, ours, theirs)


# --------------------------------------------------------------------------- TensorFlow LRN
# TF 2.21's float16 LRN squares in float16: squares of 256 and more overflow to inf,
# inf * 0 in its windowed sum gives NaN, and a bias below float16's range is 0.
TF_NONFINITE = {"tf_lrn_half_issue": (4, 0), "tf_lrn_half_large": (192, 0),
                "tf_lrn_half_subnormal": (0, 192)}


def tf_lrn(name):
    """{"y": (errors of TF, errors of cnorm)} on one file, asserting cnorm's bound."""
    d = load(name)
    assert str(d["framework"]) == "tensorflow" and str(d["convention"]) == "tf"
    dtype = storage(d)
    params = dict(depth_radius=int(d["depth_radius"]), bias=float(d["bias"]),
                  alpha=float(d["alpha"]), beta=float(d["beta"]))
    x = half(d, "x")
    y = cnorm.lrn(x, **params)
    y_ref = ref.lrn(x, **params)
    assert y.dtype == dtype and np.isfinite(y_ref).all()
    assert_within_ulp(y, y_ref)
    return {"y": (ulp_errors(half(d, "y"), y_ref, dtype), ulp_errors(y, y_ref, dtype))}


@pytest.mark.parametrize("name", names("tf_lrn_half_"))
def test_tf_half_lrn(name):
    (theirs, ours), = tf_lrn(name).values()
    assert no_worse(ours, theirs, storage(load(name))), (ours, theirs)
    assert theirs[1:] == TF_NONFINITE.get(name, (0, 0))


def test_tf_half_lrn_issue_case():
    # Five channels of 300 (depth_radius 2, bias 1, alpha 1e-4, beta 0.75): TF's
    # float16 LRN gives [nan, nan, 0, nan, nan]; the answer is about
    # [24.65, 20.00, 16.98, 20.00, 24.65] (the middle window holds all five).
    d = load("tf_lrn_half_issue")
    x = half(d, "x")
    assert (x.astype(np.float64) == 300.0).all() and x.shape == (1, 1, 1, 5)
    tf_y = half(d, "y").astype(np.float64).ravel()
    assert np.isnan(tf_y[[0, 1, 3, 4]]).all() and tf_y[2] == 0.0
    y = cnorm.lrn(x, depth_radius=2, bias=1.0, alpha=1e-4, beta=0.75).astype(np.float64).ravel()
    np.testing.assert_allclose(y, [24.65, 20.0, 16.98, 20.0, 24.65], rtol=2e-3)


def table():
    """Rows (case, output, framework's errors, cnorm's errors) of every file."""
    rows = []
    for name in names("torch_bn_half_"):
        rows += [(name, key, *pair) for key, pair in torch_bn(name).items()]
    for name in names("tf_lrn_half_"):
        rows += [(name, key, *pair) for key, pair in tf_lrn(name).items()]
    return rows


if __name__ == "__main__":
    def show(errors):
        if isinstance(errors, float):
            return f"{errors:.1e} relative"
        max_ulps, nan, inf = errors
        return f"{max_ulps:.4f} ulp, NaN {nan}, inf {inf}"
    for name, key, theirs, ours in table():
        print(f"{name:34s} {key:7s} framework {show(theirs):32s} cnorm {show(ours)}")
