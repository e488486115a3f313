"""The steps of a distributed (synchronized) batch norm: K shards of one batch,
statistics merged in rank order, backward sums added in rank order, against the
single-process batch_norm_training and batch_norm_backward."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import cnorm
from cnorm import Moments

from helpers import assert_close

SHARDINGS = {
    "K1": [24],
    "K2": [12, 12],
    "K3-uneven": [5, 11, 8],
    "K7-one-empty": [3, 4, 0, 5, 2, 6, 4],
}


def sync_batch_norm(shards, gamma, beta, dys, running_mean, running_var, **kwargs):
    """What each of len(shards) workers computes, the all-gathers simulated by lists."""
    local = [cnorm.moments(x) for x in shards]  # step 1, then all-gather
    total = Moments.merge_all(local)  # in rank order on every worker
    outputs = []
    for rank, x in enumerate(shards):
        # Every worker updates its own copy of the running statistics alike.
        own_mean, own_var = running_mean.copy(), running_var.copy()
        y, mean, invstd = cnorm.batch_norm_training(
            x, gamma, beta, running_mean=own_mean, running_var=own_var, moments=total,
            **kwargs)
        outputs.append((y, mean, invstd, own_mean, own_var))
    mean, invstd = outputs[0][1], outputs[0][2]
    sums = [cnorm.batch_norm_backward_sums(dy, x, mean, invstd) for dy, x in zip(dys, shards)]
    sum_dy = sum(s[0] for s in sums)  # all-reduce, in rank order
    sum_dy_xhat = sum(s[1] for s in sums)
    grads = [cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, sums=(sum_dy, sum_dy_xhat),
                                       count=total.count)
             for dy, x in zip(dys, shards)]
    return outputs, grads


@pytest.mark.parametrize("sizes", list(SHARDINGS.values()), ids=list(SHARDINGS))
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_shards_give_the_single_process_results(sizes, offset, dtype, rng):
    n_channels = 5
    x = (rng.standard_normal((sum(sizes), 3, 2, n_channels)) * 2 + offset).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta = rng.standard_normal(n_channels), rng.standard_normal(n_channels)
    running_mean, running_var = rng.standard_normal(n_channels), rng.random(n_channels) + 0.5
    bounds = np.cumsum([0] + sizes)
    shards = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    dys = [dy[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    single_mean, single_var = running_mean.copy(), running_var.copy()
    y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, running_mean=single_mean,
                                                running_var=single_var, momentum=0.3)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma)

    outputs, grads = sync_batch_norm(shards, gamma, beta, dys, running_mean, running_var,
                                     momentum=0.3)
    std = invstd**-1
    # Statistics equal to float64 rounding of |mean| move y by that much over std.
    x_scale = (np.abs(mean) + std) * invstd
    y_scale = np.abs(gamma) * x_scale + np.abs(beta)
    m = x.size // n_channels
    dx_scale = np.abs(gamma) * invstd * (np.abs(dy).max() + np.abs(dbeta) / m
                                         + x_scale * np.abs(dgamma) / m)
    for rank, ((y_k, mean_k, invstd_k, run_mean_k, run_var_k), (dx_k, dgamma_k, dbeta_k)) in \
            enumerate(zip(outputs, grads)):
        a, b = bounds[rank], bounds[rank + 1]
        assert y_k.dtype == x.dtype and y_k.shape == x[a:b].shape
        # float64 statistics: equal to float64 rounding (relative to |mean| + std)
        assert_close(mean_k, mean, scale=std, rtol_factor=0.1)
        assert_close(invstd_k, invstd, rtol_factor=0.1)
        assert_close(run_mean_k, single_mean, scale=std, rtol_factor=0.1)
        assert_close(run_var_k, single_var, rtol_factor=0.1)
        assert_close(dgamma_k, dgamma, scale=np.abs(dy).sum(axis=(0, 1, 2)), rtol_factor=0.1)
        assert_close(dbeta_k, dbeta, scale=np.abs(dy).sum(axis=(0, 1, 2)), rtol_factor=0.1)
        # tensors in x's dtype: one or two roundings of that dtype
        assert_close(y_k, y[a:b], scale=y_scale, rtol_factor=0.1)
        assert_close(dx_k, dx[a:b], scale=dx_scale, rtol_factor=0.1)


def test_backward_with_own_sums_is_the_plain_backward(dtype, rng):
    x = (rng.standard_normal((40, 6)) + 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    gamma = rng.standard_normal(6)
    _, mean, invstd = cnorm.batch_norm_training(x)
    sums = cnorm.batch_norm_backward_sums(dy, x, mean, invstd)
    plain = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma)
    stepped = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, sums=sums, count=40)
    np.testing.assert_array_equal(sums[0], plain[2])  # the same kernel sums
    np.testing.assert_array_equal(sums[1], plain[1])
    for a, b in zip(stepped, plain):  # the same coefficients, bit for bit
        np.testing.assert_array_equal(a, b)


def test_own_moments_give_the_plain_training(dtype, rng):
    x = (rng.standard_normal((64, 7)) * 3 + 1e3).astype(dtype)
    y, mean, invstd = cnorm.batch_norm_training(x)
    y2, mean2, invstd2 = cnorm.batch_norm_training(x, moments=cnorm.moments(x))
    np.testing.assert_array_equal(mean2, mean)
    assert_close(invstd2, invstd, rtol_factor=0.01)
    assert_close(y2, y, scale=1.0)


def test_empty_shard():
    x = np.empty((0, 3), dtype=np.float32)
    total = Moments(10, [1.0, 2.0, 3.0], [9.0, 18.0, 0.0])
    y, mean, invstd = cnorm.batch_norm_training(x, moments=total, eps=1e-3)
    assert y.shape == (0, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(mean, total.mean)
    np.testing.assert_array_equal(invstd, 1.0 / np.sqrt(total.var() + 1e-3))
    sum_dy, sum_dy_xhat = cnorm.batch_norm_backward_sums(x, x, mean, invstd)
    assert (sum_dy == 0).all() and (sum_dy_xhat == 0).all()
    dx, dgamma, dbeta = cnorm.batch_norm_backward(x, x, mean, invstd,
                                                  sums=([1.0, 2, 3], [4.0, 5, 6]), count=10)
    assert dx.shape == (0, 3)
    np.testing.assert_array_equal(dgamma, [4.0, 5, 6])
    np.testing.assert_array_equal(dbeta, [1.0, 2, 3])


def test_running_statistics_use_the_global_count():
    # One shard of 2 values out of a global batch of 4: unbiased var uses m = 4.
    total = cnorm.moments(np.array([[1.0], [2.0], [3.0], [4.0]]))
    running_mean, running_var = np.zeros(1), np.ones(1)
    cnorm.batch_norm_training(np.array([[1.0], [2.0]]), running_mean=running_mean,
                              running_var=running_var, momentum=0.1, moments=total)
    np.testing.assert_allclose(running_mean, [0.25])
    np.testing.assert_allclose(running_var, [1.06666666667])  # as the example of docs/guide/conventions.md


def good():
    """(dy, x, mean, invstd) of a valid call."""
    x = np.ones((4, 2))
    return x, x, np.zeros(2), np.ones(2)


@pytest.mark.parametrize("call, error, message", [
    (lambda: cnorm.batch_norm_training(good()[1], moments="m"), TypeError, "cnorm.Moments"),
    (lambda: cnorm.batch_norm_training(good()[1], moments=Moments.empty(3)), ValueError,
     "2 channels"),
    (lambda: cnorm.batch_norm_training(good()[1], moments=Moments(1, [0.0, 0], [0.0, 0])),
     ValueError, "more than 1 value per channel"),
    (lambda: cnorm.batch_norm_training(np.empty((0, 2))), ValueError, "must not be empty"),
    (lambda: cnorm.batch_norm_backward(*good(), sums=(np.zeros(2), np.zeros(2))), ValueError,
     "together"),
    (lambda: cnorm.batch_norm_backward(*good(), count=4), ValueError, "together"),
    (lambda: cnorm.batch_norm_backward(*good(), sums=(np.zeros(2), np.zeros(2)), count=4,
                                       training=False), ValueError, "training=True"),
    (lambda: cnorm.batch_norm_backward(*good(), sums=np.zeros((2, 2)), count=4), TypeError,
     "pair"),
    (lambda: cnorm.batch_norm_backward(*good(), sums=(np.zeros(3), np.zeros(2)), count=4),
     ValueError, r"sums\[0\] \(sum_dy\) must have shape \(2,\)"),
    (lambda: cnorm.batch_norm_backward(*good(), sums=(np.zeros(2), np.zeros(2)), count=0),
     ValueError, "count must be >= 1"),
    (lambda: cnorm.batch_norm_backward(*good(), sums=(np.zeros(2), np.zeros(2)), count=2.0),
     TypeError, "count must be an integer"),
    (lambda: cnorm.batch_norm_backward_sums(np.ones((4, 3)), *good()[1:]), ValueError, "shape"),
    (lambda: cnorm.batch_norm_backward_sums(np.ones((4, 2), np.float32), *good()[1:]), TypeError,
     "dtype"),
])
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_running_statistics_untouched_on_bad_moments():
    running_mean, running_var = np.zeros(2), np.ones(2)
    with pytest.raises(ValueError):
        cnorm.batch_norm_training(np.ones((4, 2)), running_mean=running_mean,
                                  running_var=running_var, moments=Moments.empty(2))
    assert (running_mean == 0).all() and (running_var == 1).all()


EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sync_batchnorm.py"


@pytest.mark.skipif(not EXAMPLE.exists(), reason="examples/ is not beside these tests "
                    "(the installed-wheel run copies tests/ alone)")
@pytest.mark.parametrize("backend", ["shm", "gloo"])
def test_example_with_a_real_all_gather(backend):
    if backend == "gloo":
        pytest.importorskip("torch.distributed")
    result = subprocess.run([sys.executable, str(EXAMPLE), "--ranks", "3", "--backend", backend],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shards [" in result.stdout
