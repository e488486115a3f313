"""The one comparator of kernels against the float64 reference, its tolerances,
the ulp bound of the half types, and the sizes of the terms a result sums (the
scale of the tolerance)."""
import glob
import importlib
import os

import numpy as np
import pytest

from cnorm import reference

# Relative tolerance per dtype: float32 results carry a few float32 roundings
# (and the float32 fast paths sum short windows in float), float64 ones a few
# float64 roundings; the ISA levels differ by FMA contraction. The half types
# are computed in float32 and rounded once at the store: two of their ulps.
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11,
        np.dtype(np.float16): 2.0 ** -9}
try:
    import ml_dtypes
except ImportError:  # pragma: no cover - optional
    BFLOAT16 = None
else:
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
    RTOL[BFLOAT16] = 2.0 ** -6


def finfo(dtype):
    """np.finfo, also for ml_dtypes' bfloat16."""
    dtype = np.dtype(dtype)
    return ml_dtypes.finfo(dtype) if dtype == BFLOAT16 else np.finfo(dtype)


# Significand bits (with the implicit one) and smallest normal exponent.
_FORMAT = {"float16": (11, -14), "bfloat16": (8, -126)}


def ulp(values, dtype):
    """The unit in the last place of `dtype` at each of `values` (float64)."""
    bits, min_exponent = _FORMAT[np.dtype(dtype).name]
    magnitude = np.abs(np.asarray(values, dtype=np.float64))
    exponent = np.floor(np.log2(np.where(magnitude > 0, magnitude, 1.0)))
    return np.ldexp(1.0, (np.maximum(exponent, min_exponent) - (bits - 1)).astype(int))


def assert_within_ulp(actual, expected, *, scale=None):
    """|actual - expected| <= 1 ulp of actual's dtype at expected, + 2e-5 * scale
    (float32's error relative to the terms that were summed, where they cancel).
    Values beyond the storage type's range must be infinite; NaN must match NaN."""
    a = np.asarray(actual).astype(np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(expected))
    top = float(finfo(actual.dtype).max)
    beyond = np.abs(expected) > top * (1 + 2.0 ** -(_FORMAT[actual.dtype.name][0]))
    np.testing.assert_array_equal(np.isinf(a) & ~np.isnan(expected), beyond)
    ok = ~(np.isnan(expected) | beyond)
    bound = ulp(expected, actual.dtype) + (0.0 if scale is None else 2e-5 * np.abs(scale))
    error = np.abs(a - expected)
    bad = ok & (error > bound)
    assert not bad.any(), (f"{bad.sum()} of {a.size} beyond 1 ulp; worst "
                           f"{(error / bound)[ok].max():.3g} ulp: got {a[bad][:3]}, "
                           f"expected {expected[bad][:3]}")


def lrn_backward_scale(dy, x, before, after, a, k, beta):
    """Size of the two terms of the LRN gradient, which may cancel."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    d = reference._divisor(x, before, after, a, k)
    y = x * d ** -beta
    cross = reference._window_sum(np.abs(dy * y / d), after, before)
    return np.abs(dy * d ** -beta) + np.abs(2 * a * beta * x) * cross


def batch_norm_y_scale(x, mean, invstd, gamma, beta):
    """Size of the terms of y = x*A + B (A = gamma*invstd, B = beta - mean*A), the
    form the kernels compute: where x is close to the mean, x*A and mean*A cancel,
    and a float32 result carries an error relative to them."""
    return np.abs(gamma * invstd) * (np.abs(np.asarray(x, np.float64)) + np.abs(mean)) \
        + np.abs(beta)


def batch_norm_backward_scales(dy, x, mean, invstd, gamma, training):
    """Sizes of the terms of dx, dgamma and dbeta (channels last)."""
    n = np.shape(x)[-1]
    g = np.asarray(dy, dtype=np.float64).reshape(-1, n)
    xr = np.asarray(x, dtype=np.float64).reshape(-1, n)
    m = g.shape[0]
    xhat = (xr - mean) * invstd
    dbeta_terms = np.abs(g).sum(axis=0)
    dgamma_terms = np.abs(g * xhat).sum(axis=0)
    dx_terms = np.abs(g)
    if training:
        dx_terms = dx_terms + dbeta_terms / m + np.abs(xhat) * dgamma_terms / m
    dx_scale = (np.abs(gamma * invstd) * dx_terms).reshape(np.shape(x))
    return dx_scale, dgamma_terms, dbeta_terms


def assert_close(actual, expected, *, scale=None, rtol_factor=1.0, err_msg=""):
    """Assert `actual` (float32/64) matches the float64 `expected`.

    Each element must satisfy |actual - expected| <= rtol * (|expected| + scale),
    where rtol depends on actual's dtype. `scale` (array or scalar) is the size of
    the terms that were summed to make expected: where they cancel, an error
    relative to them is all a finite precision can promise. NaN must match NaN
    and infinities must match exactly.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    rtol = RTOL[actual.dtype] * rtol_factor
    a = actual.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(expected)
    np.testing.assert_array_equal(nan_a, nan_e, err_msg=f"NaN positions differ {err_msg}")
    inf = np.isinf(expected) | np.isinf(a)
    np.testing.assert_array_equal(a[inf], expected[inf], err_msg=f"inf differ {err_msg}")
    ok = ~(nan_e | inf)
    bound = np.abs(expected) + (0.0 if scale is None else np.broadcast_to(np.abs(scale), expected.shape))
    error = np.abs(a - expected)
    bad = ok & (error > rtol * bound + np.finfo(actual.dtype).tiny)
    if bad.any():
        index = np.unravel_index(np.argmax(np.where(bad, error / np.maximum(bound, 1e-300), 0)), a.shape)
        raise AssertionError(
            f"{bad.sum()} of {a.size} elements differ beyond rtol={rtol:g} {err_msg}; "
            f"worst at {index}: got {a[index]!r}, expected {expected[index]!r} "
            f"(scale {bound[index]!r})"
        )


def numerical_gradient(loss, value, step=1e-6):
    """Central differences of the scalar `loss()` with respect to the array `value`.

    `value` is perturbed in place, element by element, and restored; `loss`
    reads it (a closure), so gradients with respect to any argument work.
    """
    grad = np.zeros_like(value)
    flat, gflat = value.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + step
        up = loss()
        flat[i] = saved - step
        down = loss()
        flat[i] = saved
        gflat[i] = (up - down) / (2 * step)
    return grad


def need(module):
    """Import an optional framework, or skip the test without it; with
    CNORM_REQUIRE_FRAMEWORKS=1 (CI, where the extras are installed) fail instead."""
    if os.environ.get("CNORM_REQUIRE_FRAMEWORKS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "data")


def golden_load(name, folder=GOLDEN):
    """The arrays of the golden file `name` (tests/golden/data, or `folder`)."""
    with np.load(os.path.join(folder, name + ".npz"), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def golden_names(prefix, folder=GOLDEN):
    """The golden files whose names start with `prefix`; at least one."""
    found = sorted(os.path.basename(f)[:-4]
                   for f in glob.glob(os.path.join(folder, prefix + "*.npz")))
    assert found, f"no golden files {prefix}* in {folder}"
    return found
