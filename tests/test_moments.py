"""cnorm.Moments and cnorm.moments: against the float64 reference, exact merges,
the identity, the array round trip, pickling, determinism and bad input."""
import pickle

import numpy as np
import pytest

import cnorm
from cnorm import Moments
from cnorm import reference as ref

from helpers import assert_close


def assert_moments_close(actual, expected, rtol_factor=1.0):
    assert isinstance(actual, Moments)
    assert actual.count == expected.count
    assert actual.mean.dtype == np.float64 and actual.m2.dtype == np.float64
    scale = np.sqrt(expected.m2 / max(expected.count, 1))
    # float64 accumulation: mean relative to |mean| + std, m2 to itself.
    assert_close(actual.mean, expected.mean, scale=scale, rtol_factor=rtol_factor)
    assert_close(actual.m2, expected.m2, rtol_factor=rtol_factor)


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (2, 5, 5, 16), (300, 33), (4, 64, 64, 8)])
@pytest.mark.parametrize("offset", [0.0, 1e5])
def test_against_reference(shape, offset, dtype, n_threads, rng):
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    assert_moments_close(cnorm.moments(x, n_threads=n_threads), ref.moments(x))


@pytest.mark.parametrize("axis", [0, 1, -2, 2])
def test_any_channel_axis(axis, rng):
    x = rng.standard_normal((5, 6, 7)) * 3 + 2
    expected = ref.moments(x, axis=axis)
    assert_moments_close(cnorm.moments(x, axis=axis), expected)
    # the same as moving the axis last by hand, bit for bit
    moved = np.moveaxis(x, axis, -1)
    actual = cnorm.moments(x, axis=axis)
    np.testing.assert_array_equal(actual.mean, cnorm.moments(moved).mean)
    np.testing.assert_array_equal(actual.m2, cnorm.moments(moved).m2)


def test_equals_the_batch_norm_statistics(dtype, rng):
    x = (rng.standard_normal((64, 9, 9, 12)) * 2 + 50).astype(dtype)
    m = cnorm.moments(x)
    _, mean, invstd = cnorm.batch_norm_training(x, eps=1e-5)
    np.testing.assert_array_equal(m.mean, mean)  # the same kernel
    assert_close(m.var(), invstd**-2 - 1e-5, scale=1e-5)


def test_var_ddof():
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    m = cnorm.moments(x)
    np.testing.assert_allclose(m.var(), [1.25])
    np.testing.assert_allclose(m.var(ddof=1), [5 / 3])
    assert np.isnan(cnorm.moments(x[:1]).var(ddof=1)).all()
    assert np.isnan(Moments.empty(3).var()).all()


@pytest.mark.parametrize("sizes", [[10], [3, 7], [1, 0, 4, 5], [2, 3, 5, 7, 11, 13, 17]])
@pytest.mark.parametrize("offset", [0.0, 1e5])
def test_merge_of_parts_equals_the_whole(sizes, offset, dtype, rng):
    x = (rng.standard_normal((sum(sizes), 2, 6)) + offset).astype(dtype)
    bounds = np.cumsum([0] + sizes)
    parts = [cnorm.moments(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = Moments.merge_all(parts)
    assert_moments_close(merged, ref.moments(x), rtol_factor=10)
    pairwise = parts[0]
    for part in parts[1:]:
        pairwise = pairwise.merge(part)
    np.testing.assert_array_equal(merged.mean, pairwise.mean)
    np.testing.assert_array_equal(merged.m2, pairwise.m2)


def test_merge_is_accurate_where_sums_of_squares_cancel(rng):
    # float32 data at mean 1e5, std 1: E[x^2] - E[x]^2 in float64 would lose ~1e-6.
    x = (rng.standard_normal((100_000, 4)) + 1e5).astype(np.float32)
    parts = [cnorm.moments(chunk) for chunk in np.array_split(x, 13)]
    expected = ref.moments(x)
    error = np.abs(Moments.merge_all(parts).var() - expected.var()) / expected.var()
    assert error.max() <= 1e-12


def test_empty_is_the_identity(rng):
    a = cnorm.moments(rng.standard_normal((5, 3)))
    empty = Moments.empty(3)
    assert empty.count == 0 and empty.n_channels == 3
    for merged in (a.merge(empty), empty.merge(a)):
        assert merged.count == a.count
        np.testing.assert_array_equal(merged.mean, a.mean)
        np.testing.assert_array_equal(merged.m2, a.m2)
    empty_x = cnorm.moments(np.empty((0, 4, 3), dtype=np.float32))
    assert empty_x.count == 0 and empty_x.n_channels == 3
    assert Moments.merge_all([empty, empty]).count == 0


def test_array_round_trip_and_pickle(rng):
    m = cnorm.moments(rng.standard_normal((9, 5)) + 3)
    array = m.to_array()
    assert array.dtype == np.float64 and array.shape == (11,)
    assert array[0] == 9
    for back in (Moments.from_array(array), pickle.loads(pickle.dumps(m))):
        assert back.count == m.count
        np.testing.assert_array_equal(back.mean, m.mean)
        np.testing.assert_array_equal(back.m2, m.m2)
    empty = Moments.from_array(Moments.empty(0).to_array())
    assert empty.count == 0 and empty.n_channels == 0


def test_constructor_copies_and_is_read_only():
    mean, m2 = np.array([1.0, 2.0]), np.array([0.5, 0.0])
    m = Moments(np.int64(3), mean, m2.astype(np.float32))
    mean[0] = 99.0
    assert m.mean[0] == 1.0 and type(m.count) is int
    with pytest.raises(ValueError):
        m.mean[0] = 5.0
    with pytest.raises(AttributeError):
        m.count = 4
    assert "Moments(count=3" in repr(m)


def test_deterministic_over_repeats(rng):
    x = rng.standard_normal((4096, 48)).astype(np.float32) + 7
    first = cnorm.moments(x)
    for n_threads in (1, 2, 3):
        again = cnorm.moments(x, n_threads=n_threads)
        np.testing.assert_array_equal(again.mean, first.mean)
        np.testing.assert_array_equal(again.m2, first.m2)


@pytest.mark.parametrize("call, error, message", [
    (lambda: Moments(1.5, [0.0], [0.0]), TypeError, "count must be an integer"),
    (lambda: Moments(True, [0.0], [0.0]), TypeError, "count must be an integer"),
    (lambda: Moments(-1, [0.0], [0.0]), ValueError, "count must be >= 0"),
    (lambda: Moments(2, [0, 1], [0.0, 0.0]), TypeError, "mean must have a floating dtype"),
    (lambda: Moments(2, [0.0], [0.0, 1.0]), ValueError, "same shape"),
    (lambda: Moments(2, [[0.0]], [[0.0]]), ValueError, "mean must have shape"),
    (lambda: Moments(2, [0.0], [-1.0]), ValueError, "m2 must be >= 0"),
    (lambda: Moments(0, [0.0], [1.0]), ValueError, "count is 0"),
    (lambda: Moments.empty(-1), ValueError, "n_channels must be >= 0"),
    (lambda: Moments.empty(2).merge(Moments.empty(3)), ValueError, "2 channels with"),
    (lambda: Moments.empty(2).merge(np.zeros(5)), TypeError, "must be a cnorm.Moments"),
    (lambda: Moments.merge_all([]), ValueError, "at least one"),
    (lambda: Moments.merge_all([Moments.empty(2), Moments.empty(3)]), ValueError,
     r"moments\[1\] has 3 channels"),
    (lambda: Moments.merge_all([Moments.empty(2), "x"]), TypeError, r"moments\[1\]"),
    (lambda: Moments.from_array(np.zeros(4)), ValueError, r"shape \(2\*C \+ 1,\)"),
    (lambda: Moments.from_array(np.array([1, 2, 3])), TypeError, "floating dtype"),
    (lambda: Moments.from_array(np.array([1.5, 0.0, 0.0])), ValueError, "the count"),
    (lambda: Moments.from_array(np.array([-1.0, 0.0, 0.0])), ValueError, "the count"),
    (lambda: Moments.from_array(np.array([np.nan, 0.0, 0.0])), ValueError, "the count"),
    (lambda: Moments(2**53 + 2, [0.0], [0.0]).to_array(), ValueError, "2\\*\\*53"),
    (lambda: Moments.empty(1).var(ddof=-1), ValueError, "ddof"),
    (lambda: cnorm.moments(np.zeros((3, 2), dtype=np.int32)), TypeError, "must have dtype"),
    (lambda: cnorm.moments(np.float64(1.0)), ValueError, "at least 1 dimension"),
    (lambda: cnorm.moments(np.zeros((3, 2)), axis=2), ValueError, "out of bounds"),
    (lambda: cnorm.moments(np.zeros((3, 2)), n_threads=0), ValueError, "n_threads"),
])
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_not_imported_with_dask():
    import subprocess
    import sys

    code = "import sys, cnorm; cnorm.moments; assert 'dask' not in sys.modules, 'dask imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
