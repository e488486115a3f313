"""Several Python threads calling cnorm (LRN and batch norm) at once.

The kernels release the GIL and allocate their scratch per call, so concurrent
callers on different arrays must get exactly the results of serial calls.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import cnorm

# Serial-path and parallel-path sizes (the kernels go parallel from 32768
# elements), various channel counts, both dtypes.
SHAPES = [(3, 5), (7, 7, 13), (1, 56, 56, 64), (2, 30, 30, 96), (4, 9, 9, 3), (200, 257)]


def _jobs(rng):
    jobs = []
    for i in range(24):
        shape = SHAPES[i % len(SHAPES)]
        dtype = (np.float32, np.float64)[i % 2]
        x = rng.standard_normal(shape).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        params = dict(depth_radius=1 + i % 4, bias=1.0 + i % 3, alpha=1e-3 * (1 + i % 5),
                      beta=(0.5, 0.75, 1.0, 0.6)[i % 4])
        jobs.append((x, dy, params, (None, 1, 2)[i % 3]))
    return jobs


def _run(job):
    x, dy, params, n_threads = job
    size = 2 * params["depth_radius"] + 1
    results = [cnorm.lrn(x, **params, n_threads=n_threads),
               cnorm.lrn_backward(dy, x, **params, n_threads=n_threads),
               cnorm.local_response_norm(x, size, params["alpha"], params["beta"],
                                         params["bias"], n_threads=n_threads)]
    if x.ndim >= 2:  # batch norm: every operation, with its per-call partials
        n_channels = x.shape[-1]
        running_mean, running_var = np.zeros(n_channels), np.ones(n_channels)
        y, mean, invstd = cnorm.batch_norm_training(
            x, running_mean=running_mean, running_var=running_var, n_threads=n_threads)
        results += [y, mean, invstd, running_mean, running_var,
                    cnorm.batch_norm_inference(x, running_mean, running_var,
                                               n_threads=n_threads),
                    *cnorm.batch_norm_backward(dy, x, mean, invstd, n_threads=n_threads)]
    return results


@pytest.mark.parametrize("workers", [2, 8])
def test_threads_calling_at_once_get_serial_results(workers):
    jobs = _jobs(np.random.default_rng(7))
    expected = [_run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(3):  # several rounds: more interleavings
            for got, want in zip(pool.map(_run, jobs), expected):
                for g, w in zip(got, want):
                    np.testing.assert_array_equal(g, w)


def test_threads_writing_out_arrays_in_place():
    rng = np.random.default_rng(8)
    arrays = [rng.standard_normal((1, 56, 56, 64), dtype=np.float32) for _ in range(8)]
    expected = [cnorm.lrn(a, depth_radius=2) for a in arrays]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda a: cnorm.lrn(a, depth_radius=2, out=a, n_threads=2), arrays))
    for got, want in zip(arrays, expected):
        np.testing.assert_array_equal(got, want)
