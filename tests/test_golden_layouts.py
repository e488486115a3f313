"""PyTorch's golden outputs in its native NCHW layout (tests/golden/data/torch_nchw_*),
read by cnorm with axis=1 and no copy; tolerances per dtype as the NHWC golden tests."""
import os

import numpy as np
import pytest

import cnorm

from helpers import assert_close, golden_load, golden_names

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "data")


def load(name):
    return golden_load(name)


def names(prefix):
    return golden_names(prefix)


def channels(values):
    return np.asarray(values, np.float64)[None, :, None, None]


@pytest.mark.parametrize("name", names("torch_nchw_lrn_"))
def test_torch_nchw_lrn(name):
    d = load(name)
    assert str(d["layout"]) == "NCHW"
    params = dict(alpha=float(d["alpha"]), beta=float(d["beta"]), k=float(d["k"]), axis=1)
    size = int(d["size"])
    y = cnorm.local_response_norm(d["x"], size, **params)
    assert y.dtype == d["x"].dtype and y.flags.c_contiguous
    assert_close(y, d["y"], rtol_factor=5)
    dx = cnorm.local_response_norm_backward(d["dy"], d["x"], size, **params)
    assert_close(dx, d["dx"], scale=np.abs(d["dy"]) * 4, rtol_factor=5)


@pytest.mark.parametrize("name", names("torch_nchw_bn_train_"))
def test_torch_nchw_batch_norm_training(name):
    d = load(name)
    eps = float(d["eps"])
    running_mean, running_var = d["running_mean_in"].copy(), d["running_var_in"].copy()
    for batch in range(3):
        momentum = 1.0 / (batch + 1) if np.isnan(d["momentum"]) else float(d["momentum"])
        y, mean, invstd = cnorm.batch_norm_training(
            d[f"x_{batch}"], d["gamma"], d["beta"], eps, running_mean=running_mean,
            running_var=running_var, momentum=momentum, axis=1)
        assert_close(running_mean, d[f"running_mean_out_{batch}"], rtol_factor=5,
                     scale=np.abs(d[f"running_mean_out_{batch}"]).max())
        assert_close(running_var, d[f"running_var_out_{batch}"], rtol_factor=5)
    dtype = d["x"].dtype
    xhat = (d["x"] - channels(mean)) * channels(invstd)
    assert_close(y, d["y"], rtol_factor=5,
                 scale=np.abs(channels(d["gamma"]) * xhat) + np.abs(channels(d["beta"])))
    assert_close(mean.astype(dtype), d["saved_mean"], rtol_factor=5,
                 scale=np.abs(d["saved_mean"]).max())
    assert_close(invstd.astype(dtype), d["saved_invstd"], rtol_factor=5)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(d["dy"], d["x"], mean, invstd, d["gamma"],
                                                  axis=1)
    g = np.abs(d["dy"].astype(np.float64))
    axes = (0, 2, 3)
    m = g.size // g.shape[1]
    dbeta_terms, dgamma_terms = g.sum(axes), (g * np.abs(xhat)).sum(axes)
    dx_scale = np.abs(channels(d["gamma"] * invstd)) * (
        g + channels(dbeta_terms) / m + np.abs(xhat) * channels(dgamma_terms) / m)
    assert_close(dx, d["dx"], scale=dx_scale, rtol_factor=5)
    assert_close(dgamma.astype(dtype), d["dgamma"], scale=dgamma_terms, rtol_factor=5)
    assert_close(dbeta.astype(dtype), d["dbeta"], scale=dbeta_terms, rtol_factor=5)


@pytest.mark.parametrize("name", names("torch_nchw_bn_eval_"))
def test_torch_nchw_batch_norm_inference(name):
    d = load(name)
    eps = float(d["eps"])
    y = cnorm.batch_norm_inference(d["x"], d["running_mean"], d["running_var"], d["gamma"],
                                   d["beta"], eps, axis=1)
    a = d["gamma"].astype(np.float64) / np.sqrt(d["running_var"].astype(np.float64) + eps)
    b = d["beta"] - d["running_mean"] * a
    assert y.dtype == d["x"].dtype
    assert_close(y, d["y"], scale=np.abs(d["x"] * channels(a)) + np.abs(channels(b)),
                 rtol_factor=5)
    invstd = 1.0 / np.sqrt(d["running_var"].astype(np.float64) + eps)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(d["dy"], d["x"], d["running_mean"], invstd,
                                                  d["gamma"], training=False, axis=1)
    g = np.abs(d["dy"].astype(np.float64))
    xhat = np.abs(d["x"] - channels(d["running_mean"])) * channels(invstd)
    assert_close(dx, d["dx"], scale=np.abs(channels(d["gamma"] * invstd)) * g, rtol_factor=5)
    assert_close(dgamma.astype(d["x"].dtype), d["dgamma"], scale=(g * xhat).sum((0, 2, 3)),
                 rtol_factor=5)
    assert_close(dbeta.astype(d["x"].dtype), d["dbeta"], scale=g.sum((0, 2, 3)), rtol_factor=5)
