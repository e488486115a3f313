"""Per-channel statistics that merge exactly: count, mean and M2.

`moments` computes them with the batch-norm statistics kernel (per-chunk
partials in float64, merged in chunk order with Chan's formula); `Moments`
merges them in the same way, so the statistics of data that lives in several
places (shards of a batch on several processes, blocks of an array on a
cluster, the batches of a dataset that does not fit in memory) can be merged
in a fixed order into exactly what one pass would give, to float64 rounding.

A `Moments` converts to and from one float64 array, ``[count, mean..., m2...]``,
so that any transport (MPI, gloo, shared memory, pickle) can carry it.
"""
import numbers

import numpy as np

from cnorm import _layout
from cnorm import _validation as check
from cnorm._dispatch import kernels

_bn = kernels("_batchnorm")

__all__ = ["Moments", "moments"]

# Counts travel as float64 in `to_array`: exact up to 2**53.
_MAX_COUNT = 2**53


def _count(value, name="count"):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _channel_vector(value, name):
    """`value` as a new read-only float64 array of shape (C,)."""
    array = np.asarray(value)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must have a floating dtype, got {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must have shape (C,) (one value per channel), got {array.shape}")
    array = np.array(array, dtype=np.float64)  # always a copy: the Moments owns it
    array.flags.writeable = False
    return array


class Moments:
    """Per-channel count, mean and sum of squared deviations (M2) of some data.

    ``count`` values of each of ``C`` channels, with ``mean[c]`` their mean and
    ``m2[c] = sum((x[:, c] - mean[c])**2)``. Two `Moments` of disjoint data
    merge (`merge`, `merge_all`) with Chan's formula into the `Moments` of all
    the data::

        n = n_a + n_b;  d = mean_b - mean_a
        mean = mean_a + d * n_b / n
        m2   = m2_a + m2_b + d * d * n_a * n_b / n

    in float64 and in the given order, so a fixed order gives a bit-identical
    result. Unlike sums of ``x`` and ``x**2`` (which cancel catastrophically
    when ``|mean| >> std``) or ``(mean, invstd)`` (from which M2 comes back
    only through ``eps`` and a square root), nothing is lost in a merge.

    A `Moments` is immutable: ``mean`` and ``m2`` are read-only float64 arrays
    owned by it.

    Parameters
    ----------
    count : int
        Number of values per channel, >= 0.
    mean, m2 : array_like of floats, shape (C,)
        Per-channel mean and sum of squared deviations from it (m2 >= 0,
        NaN allowed; all zero when count is 0). Copied into float64.

    Raises
    ------
    TypeError
        If count is not an integer, or mean or m2 has a non-floating dtype.
    ValueError
        If count is negative, mean and m2 are not both of shape (C,), m2 has a
        negative value, or count is 0 and m2 is not all zero.

    See Also
    --------
    moments : the `Moments` of an array.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> a = cnorm.moments(np.array([[1.0], [2.0]]))
    >>> b = cnorm.moments(np.array([[3.0], [4.0]]))
    >>> total = a.merge(b)
    >>> total.count, total.mean, total.var()
    (4, array([2.5]), array([1.25]))
    >>> cnorm.Moments.from_array(total.to_array()).m2
    array([5.])
    """

    __slots__ = ("_count", "_mean", "_m2")

    def __init__(self, count, mean, m2):
        count = _count(count)
        mean = _channel_vector(mean, "mean")
        m2 = _channel_vector(m2, "m2")
        if mean.shape != m2.shape:
            raise ValueError(
                f"mean and m2 must have the same shape (C,), got {mean.shape} and {m2.shape}"
            )
        check.non_negative(m2, "m2")
        if count == 0 and (m2 != 0).any():
            raise ValueError("m2 must be all zero when count is 0 (no values)")
        self._init(count, mean, m2)

    def _init(self, count, mean, m2):
        # Unchecked: mean and m2 are read-only float64 arrays of one shape.
        self._count = count
        self._mean = mean
        self._m2 = m2

    @classmethod
    def _unchecked(cls, count, mean, m2):
        mean.flags.writeable = False
        m2.flags.writeable = False
        moments = cls.__new__(cls)
        moments._init(count, mean, m2)
        return moments

    @property
    def count(self):
        """int: number of values per channel."""
        return self._count

    @property
    def mean(self):
        """numpy.ndarray of float64, shape (C,): per-channel mean (read-only)."""
        return self._mean

    @property
    def m2(self):
        """numpy.ndarray of float64, shape (C,): per-channel sum of squared deviations."""
        return self._m2

    @property
    def n_channels(self):
        """int: number of channels C."""
        return self._mean.shape[0]

    @classmethod
    def empty(cls, n_channels):
        """The `Moments` of no data: the identity of `merge`.

        Parameters
        ----------
        n_channels : int
            Number of channels C, >= 0.

        Returns
        -------
        Moments
            count 0, mean and m2 zeros of shape (C,).
        """
        n_channels = check.integer(n_channels, "n_channels", minimum=0)
        return cls._unchecked(0, np.zeros(n_channels), np.zeros(n_channels))

    def merge(self, other):
        """The `Moments` of this data and `other`'s together (Chan's formula).

        Parameters
        ----------
        other : Moments
            Statistics of other data, with the same number of channels.

        Returns
        -------
        Moments
            A new `Moments` (or ``self``/``other`` when the other one is empty).
            ``a.merge(b)`` and ``b.merge(a)`` agree to float64 rounding, not
            always bit for bit: fix the order for bit-identical results.

        Raises
        ------
        TypeError
            If other is not a `Moments`.
        ValueError
            If the channel counts differ.
        """
        if not isinstance(other, Moments):
            raise TypeError(f"other must be a cnorm.Moments, got {type(other).__name__}")
        if other.n_channels != self.n_channels:
            raise ValueError(
                f"cannot merge Moments of {self.n_channels} channels with Moments of "
                f"{other.n_channels} channels"
            )
        return _merge(self, other)

    @classmethod
    def merge_all(cls, moments):
        """Merge `Moments` left to right: ``((m0.merge(m1)).merge(m2))...``.

        Parameters
        ----------
        moments : iterable of Moments
            At least one, all with the same number of channels, in the order to
            merge (e.g. rank order): the same order gives the same bits.

        Returns
        -------
        Moments

        Raises
        ------
        TypeError
            If an item is not a `Moments`.
        ValueError
            If there is none, or the channel counts differ.
        """
        total = None
        for index, item in enumerate(moments):
            if not isinstance(item, Moments):
                raise TypeError(
                    f"moments[{index}] must be a cnorm.Moments, got {type(item).__name__}"
                )
            if total is None:
                total = item
                continue
            if item.n_channels != total.n_channels:
                raise ValueError(
                    f"moments[{index}] has {item.n_channels} channels, the ones before it "
                    f"{total.n_channels}"
                )
            total = _merge(total, item)
        if total is None:
            raise ValueError(
                "merge_all needs at least one Moments (Moments.empty(C) stands for no data)"
            )
        return total

    def var(self, ddof=0):
        """Per-channel variance ``m2 / (count - ddof)``.

        Parameters
        ----------
        ddof : int, default 0
            Delta degrees of freedom: 0 gives the biased (population) variance
            that batch norm normalizes with, 1 the unbiased one that PyTorch
            keeps in ``running_var``.

        Returns
        -------
        numpy.ndarray of float64, shape (C,)
            NaN where ``count - ddof <= 0`` (as NumPy's ``var``, without its warning).
        """
        ddof = check.integer(ddof, "ddof", minimum=0)
        if self._count - ddof <= 0:
            return np.full(self.n_channels, np.nan)
        return self._m2 / (self._count - ddof)

    def to_array(self):
        """The statistics as one float64 array ``[count, mean[0..C-1], m2[0..C-1]]``.

        Returns
        -------
        numpy.ndarray of float64, shape (2*C + 1,)
            For a transport that carries arrays (an all-gather in MPI or
            torch.distributed, shared memory); `from_array` inverts it exactly.

        Raises
        ------
        ValueError
            If count exceeds 2**53 (float64 would round it).
        """
        if self._count > _MAX_COUNT:
            raise ValueError(f"count {self._count} exceeds 2**53: float64 cannot carry it")
        return np.concatenate(([float(self._count)], self._mean, self._m2))

    @classmethod
    def from_array(cls, array):
        """The `Moments` that `to_array` wrote into ``array``.

        Parameters
        ----------
        array : array_like of floats, shape (2*C + 1,)
            ``[count, mean..., m2...]``.

        Returns
        -------
        Moments

        Raises
        ------
        TypeError
            If array has a non-floating dtype.
        ValueError
            If it is not 1-D of odd length, count is not a non-negative integer
            value, or the values fail the checks of `Moments`.
        """
        values = np.asarray(array)
        if values.dtype.kind != "f":
            raise TypeError(f"array must have a floating dtype, got {values.dtype}")
        if values.ndim != 1 or values.shape[0] % 2 != 1:
            raise ValueError(
                f"array must have shape (2*C + 1,) ([count, mean..., m2...]), got {values.shape}"
            )
        count = float(values[0])
        if not (np.isfinite(count) and count >= 0 and count == int(count)):
            raise ValueError(f"array[0] (the count) must be an integer >= 0, got {values[0]!r}")
        n_channels = (values.shape[0] - 1) // 2
        return cls(int(count), values[1:1 + n_channels], values[1 + n_channels:])

    def __reduce__(self):
        return (Moments, (self._count, self._mean, self._m2))

    def __repr__(self):
        return (f"Moments(count={self._count}, mean={self._mean!r}, m2={self._m2!r})")


def _merge(a, b):
    # Chan's merge in the arithmetic of the statistics kernel's own merge
    # (cnorm/_batchnorm.pyx, _merge_stats), counts in double.
    if b._count == 0:
        return a
    if a._count == 0:
        return b
    total = float(a._count + b._count)
    weight = float(b._count) / total
    cross = float(a._count) * float(b._count) / total
    d = b._mean - a._mean
    mean = a._mean + d * weight
    m2 = a._m2 + (b._m2 + d * d * cross)
    return Moments._unchecked(a._count + b._count, mean, m2)


def moments(x, *, axis=-1, n_threads=None):
    """Per-channel count, mean and M2 of ``x``, as a mergeable `Moments`.

    The statistics of `batch_norm_training` (the same kernel: shifted sums in
    float64 per chunk of rows, merged in chunk order with Chan's formula),
    accurate when ``|mean| >> std`` and bit-identical for every thread count.

    Parameters
    ----------
    x : array_like of float32, float64, float16 or bfloat16, ndim >= 1
        Data with channels on `axis` (read in place, any axis); may be empty
        (count 0).
    axis : int, default -1
        The channel axis; every other axis is reduced.
    n_threads : int, optional
        Upper bound on the threads used; None uses OpenMP's default.

    Returns
    -------
    Moments
        ``count = x.size // C``, mean and m2 of shape (C,) in float64.

    Raises
    ------
    TypeError
        If x is not float32/float64/float16/bfloat16, or axis is not an integer.
    ValueError
        If x is 0-d, axis is out of range, or n_threads < 1.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> m = cnorm.moments(np.array([[1.0, 10.0], [3.0, 30.0]]))
    >>> m.count, m.mean, m.var(ddof=1)
    (2, array([ 2., 20.]), array([  2., 200.]))
    """
    t = _layout.tensor(x, "x", axis, min_ndim=1)
    n_threads = check.n_threads(n_threads)
    n_channels = t.channels
    count = t.outer * t.inner
    if count == 0 or n_channels == 0:
        return Moments._unchecked(count, np.zeros(n_channels), np.zeros(n_channels))
    mean = np.empty(n_channels)
    var = np.empty(n_channels)
    _bn.batch_stats(t.buffer(), mean, var, n_threads, t.storage, t.outer, n_channels, t.inner)
    # The kernel divides its merged M2 by the count: one more rounding back.
    return Moments._unchecked(count, mean, var * count)
