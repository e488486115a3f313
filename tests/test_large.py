"""Tensors past 2**31 elements: indices and sizes must not wrap at 32 bits.

Slow and big (one float32 tensor of 8.6 GB, peak resident memory about 8.7 GB):
runs only with CNORM_TEST_LARGE=1, which .ci/run sets once. Rows at the start,
on both sides of element 2**31 and at the end are checked against the reference.
"""
import os

import numpy as np
import pytest

import cnorm
from cnorm import reference

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("CNORM_TEST_LARGE"),
                       reason="set CNORM_TEST_LARGE=1 (needs about 9 GB of memory)"),
]

C = 16
PERIOD = 7
M = PERIOD * -(-(2 ** 31 // C + 4096) // PERIOD)  # rows: M * C > 2**31, a multiple of 7
BOUNDARY_ROW = 2 ** 31 // C                        # the row holding element 2**31
PROBES = np.array([0, 1, BOUNDARY_ROW - 2, BOUNDARY_ROW - 1, BOUNDARY_ROW, BOUNDARY_ROW + 1,
                   M - 2, M - 1])


def test_past_two_to_the_31_elements():
    assert M * C > 2 ** 31
    x = np.empty((M, C), np.float32)
    # Rows repeat with period 7: x[r, c] = (r % 7 - 3) * (c + 1), so the batch
    # statistics are exactly mean 0 and variance 4 * (c + 1)**2.
    pattern = (np.arange(PERIOD)[:, None] - 3.0) * (np.arange(C) + 1.0)
    x.reshape(M // PERIOD, PERIOD, C)[...] = pattern

    _, mean, invstd = cnorm.batch_norm_training(x, eps=1e-5, out=x)
    np.testing.assert_allclose(mean, 0.0, atol=1e-9)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(4.0 * (np.arange(C) + 1.0) ** 2 + 1e-5),
                               rtol=1e-12)
    expected = (pattern[PROBES % PERIOD] * invstd).astype(np.float64)
    np.testing.assert_allclose(x[PROBES], expected, rtol=1e-5, atol=1e-6)

    rng = np.random.default_rng(31)
    probe = rng.standard_normal((PROBES.size, C)).astype(np.float32)
    x[PROBES] = probe
    cnorm.lrn(x, depth_radius=2, bias=1.0, alpha=0.5, beta=0.75, out=x)
    np.testing.assert_allclose(x[PROBES], reference.lrn(probe, 2, 1.0, 0.5, 0.75), rtol=2e-5)

    x[PROBES] = probe
    running_mean, running_var = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    cnorm.batch_norm_inference(x, running_mean, running_var, out=x)
    np.testing.assert_allclose(
        x[PROBES], reference.batch_norm_inference(probe, running_mean, running_var),
        rtol=2e-5, atol=2e-5)
