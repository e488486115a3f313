"""A fuzzer over every public entry point: hostile arguments of every kind.

One table, ENTRIES, lists the public functions with the role of each argument;
a new entry point is one row. For each example hypothesis draws a valid call
(float32, float64, float16 or bfloat16 data, shape up to 6-D with zero-size
axes, C = 1 and wide C, values with NaN, inf, -0.0, huge and subnormal ones,
the channels on any axis: a permuted view or a contiguous NCHW-style copy,
axis= positive or negative) and then, usually, replaces one
argument by a hostile one: another dtype (integers, bool, complex, object,
datetime, structured, strings, float16, longdouble), another memory layout
(Fortran order, negative and zero strides, broadcast, read-only,
byte-swapped, misaligned views into a byte buffer), an aliased `out` (an
input itself, partly overlapping one, a broadcast view), an aliased running
statistic, or a parameter that is NaN, inf, -0.0, huge, a bool, a NumPy
scalar, a 0-d array, a Fraction, a Decimal, None or a string.

The batch-norm entries draw their keywords too: the fused epilogues
(``activation="relu"``, ``residual=`` of batch_norm_inference; ``activation=``
of batch_norm_training and, with ``beta=``, of batch_norm_backward), the
synchronized forms (``moments=`` of batch_norm_training: the Moments of x
merged with another shard's, or arbitrary ones; ``sums=``/``count=`` of
batch_norm_backward: x's own sums or arbitrary ones, counts past 2**31), and
batch_norm_backward_sums is an entry of its own. Where the reference has no
such keyword the expected result is composed from it (inference with the
moments' statistics; the frozen dx minus the sums' terms).

The property: the call either raises TypeError or ValueError whose message
names the replaced argument (or the argument it must match), with every
array argument byte-for-byte unchanged; or it returns what the float64
reference returns, within a tolerance relative to the size of the terms.
Never another exception, a crash (the sanitizer run of .ci/run turns memory
errors and undefined behaviour into crashes), or a wrong answer.

The layer objects (cnorm.BatchNorm, cnorm.LocalResponseNorm: constructor
arguments, state assignment, calls, backward) and cnorm.Moments / cnorm.moments
(constructor, merge, merge_all, from_array) have a test each at the end, with
the same property.

Examples per test: CNORM_FUZZ_EXAMPLES (default 60) for the long sanitizer
run; the normal suite keeps the profile's modest count.
"""
import decimal
import fractions
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cnorm
from cnorm import reference
from helpers import (BFLOAT16, RTOL, batch_norm_backward_scales, batch_norm_y_scale, finfo,
                     lrn_backward_scale, need)

EXAMPLES = int(os.environ.get("CNORM_FUZZ_EXAMPLES", "0")) or None
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES or settings.default.max_examples,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)

FLOATS = (np.float32, np.float64)
# The storage types of the data: the per-channel vectors stay float32/float64.
DATA_DTYPES = (np.float32, np.float64, np.float16) + ((BFLOAT16.type,) if BFLOAT16 else ())

OTHER_DTYPES = [
    np.int8, np.int32, np.int64, np.uint8, np.uint64, np.bool_, np.complex64,
    np.complex128, np.float16, np.longdouble, object, "datetime64[ns]", "timedelta64[s]",
    [("a", "f4"), ("b", "f4")], "U3", "S3", "V8",
]


# ---------------------------------------------------------------------------
# Arrays in every memory layout. Each returns an array equal in values to
# `values` (a C-contiguous array) of the given dtype.

def _misaligned(values, dtype):
    dtype = np.dtype(dtype)
    raw = np.zeros(values.size * dtype.itemsize + 1, np.uint8)
    view = raw[1:].view(dtype).reshape(values.shape)
    view[...] = values
    return view


def _fortran(values, dtype):
    return np.asfortranarray(values.astype(dtype))


def _negative_strides(values, dtype):
    flipped = np.ascontiguousarray(values.astype(dtype)[(slice(None, None, -1),) * values.ndim])
    return flipped[(slice(None, None, -1),) * values.ndim]


def _strided(values, dtype):
    wide = np.zeros(values.shape[:-1] + (2 * values.shape[-1],), dtype)
    wide[..., ::2] = values
    return wide[..., ::2]


def _read_only(values, dtype):
    array = values.astype(dtype)
    array.flags.writeable = False
    return array


def _byte_swapped(values, dtype):
    try:
        swapped = np.dtype(dtype).newbyteorder()
    except (TypeError, ValueError):  # bfloat16 has no byte order: the unswapped array
        swapped = np.dtype(dtype)
    return values.astype(swapped)


def _broadcast(values, dtype):
    # Zero strides on every axis but the channels': every row is the first row
    # (a vector: every element the first).
    if not (values.size and values.ndim):
        return values.astype(dtype)
    rows = values.astype(dtype).reshape(-1, values.shape[-1])
    return np.broadcast_to(rows[:1] if values.ndim > 1 else rows[0, :1], values.shape)


def _broadcast_channels(values, dtype):
    # A zero stride along the channel axis (every channel the first one's
    # value), and along the rows too for 2-D and wider.
    if not (values.size and values.ndim):
        return values.astype(dtype)
    first = values.astype(dtype)[..., :1]
    if values.ndim > 1:
        first = np.broadcast_to(first.reshape(-1, 1)[:1], values.shape[:-1] + (1,))
    return np.broadcast_to(first, values.shape)


LAYOUTS = {
    "contiguous": lambda values, dtype: values.astype(dtype),
    "misaligned": _misaligned,
    "fortran": _fortran,
    "negative strides": _negative_strides,
    "strided": _strided,
    "read-only": _read_only,
    "broadcast": _broadcast,
    "broadcast channels": _broadcast_channels,
    "byte-swapped": _byte_swapped,
    "list": lambda values, dtype: values.astype(dtype).tolist(),
}


# ---------------------------------------------------------------------------
# Argument roles: how to draw a valid value and a hostile one.

SPECIALS = [np.nan, np.inf, -np.inf, -0.0, 1e30, -1e30, 1e-40, 1e200, 3e38]
# float32 batch norm computes products of data and coefficients in float32:
# where they exceed float32's range while the float64 answer does not (|dy| near
# 3e38 with gamma*invstd > 1, say), the result is inf or NaN. A known limit
# (docs/guide/precision.md, "Non-finite values"), so its values stay where no
# such product overflows; per-channel values beyond float32's range are drawn
# (they are widened).
BN_FLOAT32_SPECIALS = [np.nan, np.inf, -np.inf, -0.0, 1e6, -1e6, 1e-40]


def _values(draw, shape, positive=False, call=None):
    """Float64 values with, sometimes, NaN, inf, -0.0, huge and tiny entries."""
    size = int(np.prod(shape))
    base = np.array(draw(st.lists(st.floats(-4, 4, allow_nan=False, width=32),
                                  min_size=size, max_size=size)), np.float64)
    if size and draw(st.integers(0, 4)) == 0:
        specials = SPECIALS
        if call is not None and call.batch_norm and call.narrow:
            specials = BN_FLOAT32_SPECIALS
        base[draw(st.integers(0, size - 1))] = draw(st.sampled_from(specials))
    if positive:
        base = np.abs(base)
    return base.reshape(shape)


class Role:
    """An argument's role; `partners` are the argument names a message about it may name."""
    partners = ()

    def valid(self, draw, call):
        raise NotImplementedError

    def hostile(self, draw, call):
        raise NotImplementedError


class Tensor(Role):
    """x: the data (its dtype and shape decide the call's)."""
    partners = ("out", "dy")

    def valid(self, draw, call):
        values = _values(draw, call.shape, call=call)
        call.data[self] = values
        return LAYOUTS["contiguous"](values, call.dtype)

    def hostile(self, draw, call):
        values = _values(draw, call.shape, call=call)
        kind = draw(st.sampled_from(["layout", "layout", "dtype", "shape", "ragged",
                                     "object", "scalar"]))
        if kind == "layout":
            layout = draw(st.sampled_from(sorted(LAYOUTS)))
            call.data[self] = values
            return LAYOUTS[layout](values, call.dtype)
        if kind == "dtype":
            dtype = draw(st.sampled_from(OTHER_DTYPES))
            try:
                return values.astype(dtype)
            except (TypeError, ValueError):
                return np.zeros(call.shape, dtype)
        if kind == "shape":
            shape = draw(st.sampled_from([(), (0,), (1,), (3, 0), (0, 4)]))
            return np.ones(shape, call.dtype)
        if kind == "ragged":
            return [[1.0, 2.0], [3.0]]
        if kind == "object":
            return draw(st.sampled_from([None, "x", object(), {"a": 1}, 3.0]))
        return call.dtype(1.0)


class Like(Tensor):
    """dy: the shape and dtype of x."""
    partners = ("x", "out")

    def valid(self, draw, call):
        values = _values(draw, call.shape, call=call)
        call.data[self] = values
        return values.astype(call.dtype)

    def hostile(self, draw, call):
        if draw(st.booleans()):
            other = np.float64 if call.dtype == np.float32 else np.float32
            return np.ones(call.shape, other)
        return super().hostile(draw, call)


def _channel_values(draw, call, positive):
    values = _values(draw, (call.n_channels,))
    if positive:
        values = np.abs(values)
    if call.narrow:
        # Beyond float32's range (widened to float64) or inside the range
        # where no float32 product overflows (see BN_FLOAT32_SPECIALS).
        values = np.where((np.abs(values) > 1e6) & (np.abs(values) < 1e39),
                          np.sign(values) * 1e6, values)
        values = np.where((np.abs(values) < 1e-6) & (np.abs(values) > 1e-30), 0.0, values)
    return values


class Channels(Role):
    """A per-channel array of shape (C,) that is only read (None allowed if `optional`)."""

    def __init__(self, optional=False, positive=False):
        self.optional = optional
        self.positive = positive

    def valid(self, draw, call):
        if self.optional and draw(st.integers(0, 3)) == 0:
            return None
        values = _channel_values(draw, call, self.positive)
        call.data[self] = values
        return values.astype(draw(st.sampled_from(FLOATS)))

    def hostile(self, draw, call):
        kind = draw(st.sampled_from(["layout", "dtype", "shape", "none", "negative",
                                     "ragged", "into out"]))
        values = _channel_values(draw, call, True) + 1
        if kind == "layout":
            call.data[self] = values
            return LAYOUTS[draw(st.sampled_from(sorted(LAYOUTS)))](values, np.float64)
        if kind == "dtype":
            return np.ones(call.n_channels, draw(st.sampled_from(OTHER_DTYPES[:10])))
        if kind == "shape":
            return np.ones(draw(st.sampled_from([(), (call.n_channels + 1,),
                                                 (1, call.n_channels), (0,)])))
        if kind == "none":
            return None
        if kind == "negative":
            values[0] = -1.0 if self.positive else values[0]
            call.data[self] = values
            return values
        if kind == "ragged":
            return [[1.0], [1.0, 2.0]]
        call.alias_out[self] = "into out"  # a view into `out`, filled in later
        call.data[self] = values
        return values


class Running(Role):
    """A running statistic, updated in place: ndarray only, writable, shape (C,)."""
    partners = ("running_mean", "running_var")

    def __init__(self, var=False):
        self.var = var

    def valid(self, draw, call):
        values = np.abs(_values(draw, (call.n_channels,))) if self.var else _values(
            draw, (call.n_channels,))
        values = np.where(np.isnan(values), 1.0, values)
        call.data[self] = values
        return values.astype(draw(st.sampled_from(FLOATS)))

    def hostile(self, draw, call):
        kind = draw(st.sampled_from(["list", "read-only", "dtype", "shape", "negative",
                                     "into x", "into out", "strided"]))
        values = np.ones(call.n_channels)
        if kind == "list":
            return values.tolist()
        if kind == "read-only":
            return _read_only(values, np.float64)
        if kind == "dtype":
            return np.ones(call.n_channels, draw(st.sampled_from(OTHER_DTYPES[:10])))
        if kind == "shape":
            return np.ones(call.n_channels + 1)
        if kind == "negative":
            values[0] = -1.0 if self.var else 0.0
            call.data[self] = values
            return values
        if kind == "strided":
            call.data[self] = values
            return _strided(values[None], np.float64)[0]
        call.alias_out[self] = kind  # filled in once x and out exist
        call.data[self] = values
        return values


class Real(Role):
    """A scalar hyper-parameter drawn from [low, high] (finite, never NaN)."""

    def __init__(self, low, high, positive=False):
        self.low, self.high, self.positive = low, high, positive

    def valid(self, draw, call):
        value = draw(st.floats(self.low, self.high, allow_nan=False,
                               exclude_min=self.positive))
        return draw(st.sampled_from([value, np.float64(value), np.float32(value)
                                     if np.isfinite(np.float32(value)) and
                                     (not self.positive or np.float32(value) > 0) else value,
                                     fractions.Fraction(value)]))

    def hostile(self, draw, call):
        return draw(st.sampled_from([
            np.nan, np.inf, -np.inf, 10 ** 400, -(10 ** 400), fractions.Fraction(10 ** 400),
            True, np.bool_(False), None, "1.0", 1j, decimal.Decimal("0.5"), np.array(0.5),
            np.array([0.5]), self.low - 1 if np.isfinite(self.low) else -np.inf,
            self.high + 1 if np.isfinite(self.high) else np.inf, -0.0 if self.positive else np.nan,
        ]))


class Integer(Role):
    def __init__(self, low, high):
        self.low, self.high = low, high

    def valid(self, draw, call):
        value = draw(st.integers(self.low, self.high))
        return draw(st.sampled_from([value, np.int64(value), np.uint8(value)]))

    def hostile(self, draw, call):
        return draw(st.sampled_from([self.low - 1, -(10 ** 30), 1.0, 2.5, True, None, "3",
                                     np.float64(3.0), np.array(3)]))


class Huge(Integer):
    """An integer that may be far beyond C (the window is clipped)."""

    def valid(self, draw, call):
        return draw(st.sampled_from([draw(st.integers(self.low, self.high)), 10 ** 30,
                                     2 ** 63, 10 ** 400]))


class Choice(Role):
    def __init__(self, *values):
        self.values = values

    def valid(self, draw, call):
        return draw(st.sampled_from(self.values))

    def hostile(self, draw, call):
        return draw(st.sampled_from(["bogus", None, 1, b"torch", ("torch",)]))


class Flag(Choice):
    def __init__(self):
        super().__init__(True, False, np.bool_(True))

    def hostile(self, draw, call):
        return draw(st.sampled_from([1, 0, None, "True", 1.0, np.array(True)]))


class Threads(Role):
    def valid(self, draw, call):
        return draw(st.sampled_from([None, 1, 2, 3, np.int32(2), 2 ** 31, 2 ** 64, 10 ** 9]))

    def hostile(self, draw, call):
        return draw(st.sampled_from([0, -1, -(2 ** 63), 1.5, True, "2", np.float64(2.0)]))


class Axis(Role):
    """axis: valid, any axis, positive or negative, with x, dy and out moved there
    (a permuted view, or a C-contiguous copy: NCHW); hostile: out of range, a
    float, a bool, a string, None, a list."""

    def valid(self, draw, call):
        return "move"  # resolved once the arrays exist (_move_channels)

    def hostile(self, draw, call):
        ndim = len(call.shape)
        return draw(st.sampled_from([ndim, -ndim - 1, 10 ** 30, 1.0, True, np.bool_(False),
                                     None, "1", np.float64(0.0), [0]]))


class Activation(Choice):
    """activation: None or "relu" (a str subclass too); hostile: another name,
    another case, bytes, a tuple, a 0-d array, a number."""

    def __init__(self):
        super().__init__(None, "relu", np.str_("relu"))

    def hostile(self, draw, call):
        return draw(st.sampled_from(["sigmoid", "Relu", "", "relu ", 0, True, b"relu",
                                     ("relu",), np.array("relu")]))


class Residual(Like):
    """residual: None, or x's shape and dtype in any memory layout, or x itself;
    hostile: another dtype or shape, ragged, not an array, or sharing memory with out."""
    partners = ("x", "out")

    def valid(self, draw, call):
        kind = draw(st.sampled_from(["none", "layout", "layout", "x"]))
        if kind == "none":
            return None
        if kind == "x":
            return "x"  # x itself, resolved once x exists (_resolve_aliases)
        values = _values(draw, call.shape, call=call)
        call.data[self] = values
        layout = draw(st.sampled_from(["contiguous", "fortran", "negative strides", "strided",
                                       "read-only", "broadcast", "misaligned"]))
        return LAYOUTS[layout](values, call.dtype)

    def hostile(self, draw, call):
        if draw(st.integers(0, 3)) == 0:
            return "into out"  # out itself, resolved once out exists
        return super().hostile(draw, call)


class MomentsArg(Role):
    """moments: None, or the Moments of x's values merged with another shard's (a
    synchronized batch), or arbitrary ones; hostile: not a Moments (its array, a
    tuple), another channel count, a count of 0 or 1."""
    partners = ("x",)

    def valid(self, draw, call):
        kind = draw(st.sampled_from(["none", "batch", "arbitrary"]))
        if kind == "none":
            return None
        n = call.n_channels
        x = call.kwargs.get("x")
        if kind == "batch" and isinstance(x, np.ndarray) and x.shape == call.shape \
                and x.dtype == call.dtype:  # not a hostile x of another dtype
            shard = _values(draw, (draw(st.integers(0, 4)), n), call=call)
            rows = np.concatenate([np.array(x, np.float64).reshape(-1, n), shard])
            return reference.moments(rows)
        mean = _channel_values(draw, call, False)
        m2 = np.abs(_channel_values(draw, call, True))
        return cnorm.Moments(draw(st.sampled_from([2, 3, 1000, 2 ** 40])), mean,
                             np.where(np.isnan(m2), 1.0, m2))

    def hostile(self, draw, call):
        n = call.n_channels
        good = cnorm.Moments(4, np.zeros(n), np.ones(n))
        return draw(st.sampled_from([
            good.to_array(), (4, np.zeros(n), np.ones(n)), {"count": 4}, "moments", 1.0,
            cnorm.Moments.empty(n), cnorm.Moments(1, np.zeros(n), np.zeros(n)),
            cnorm.Moments(4, np.zeros(n + 1), np.ones(n + 1)), cnorm.Moments.empty(0)]))


class Sums(Role):
    """sums: None, or (sum_dy, sum_dy_xhat) with training=True and no activation:
    x's own sums (with count = its rows) or arbitrary per-channel values, as
    tuples or lists of float32/float64 arrays or lists; hostile: not a pair, a
    2-D array, wrong shapes or dtypes, None inside."""
    partners = ("count",)

    def valid(self, draw, call):
        kwargs = call.kwargs
        if kwargs.get("training") is not True and kwargs.get("training") is not np.True_ \
                or kwargs.get("activation") is not None or draw(st.booleans()):
            return None
        pair = None
        if draw(st.booleans()):
            try:
                with np.errstate(all="ignore"):
                    pair = reference.batch_norm_backward_sums(
                        *(np.array(kwargs[name], np.float64) for name in
                          ("dy", "x", "mean", "invstd")))
                call.count = int(np.prod(call.shape[:-1]))
            except (TypeError, ValueError, KeyError, IndexError):  # a hostile x, dy, ...
                pair = None
        if pair is None:
            pair = (_channel_values(draw, call, False), _channel_values(draw, call, False))
        kinds = [draw(st.sampled_from([np.float64, np.float32, list])) for _ in pair]
        pair = [p.tolist() if kind is list else p.astype(kind) for p, kind in zip(pair, kinds)]
        return draw(st.sampled_from([tuple, list]))(pair)

    def hostile(self, draw, call):
        n = call.n_channels
        return draw(st.sampled_from([
            (np.ones(n),), (np.ones(n),) * 3, np.ones((2, n)), {"a": 1}, "sums",
            (np.ones(n + 1), np.ones(n)), (np.ones(n), np.ones((1, n))),
            (np.ones(n, np.int32), np.ones(n)), (None, np.ones(n)), (np.ones(n), "x"),
            ([[1.0], [1.0, 2.0]], np.ones(n)), (np.ones(n, np.complex128), np.ones(n))]))


class Count(Role):
    """count: with sums, an integer in [1, 2**63 - 1] (x's rows for its own
    sums, or far beyond them); None without sums. Hostile: below 1, 2**63 and
    beyond, a float, a bool, a string, None with sums, or given without sums."""
    partners = ("sums",)

    def valid(self, draw, call):
        if call.kwargs.get("sums") is None:
            return None
        own = getattr(call, "count", None)
        value = own if own is not None and draw(st.booleans()) else draw(st.sampled_from(
            [1, 2, 7, 1000, 2 ** 31 + 1, 2 ** 62, 2 ** 63 - 1]))
        return draw(st.sampled_from([value, np.int64(value), np.uint64(value)]))

    def hostile(self, draw, call):
        return draw(st.sampled_from([0, -1, -(2 ** 64), 2 ** 63, np.uint64(2 ** 63), 10 ** 30,
                                     1.5, True, np.bool_(True), "3",
                                     np.float64(3.0), np.array([3]),
                                     None if call.kwargs.get("sums") is not None else 5]))


class Out(Role):
    """out: None, a fresh array, x or dy itself, or hostile: wrong dtype/shape,
    read-only, broadcast, non-contiguous, misaligned, partly overlapping an input."""
    partners = ("x", "dy")

    def valid(self, draw, call):
        kind = draw(st.sampled_from(["none", "fresh", "input", "misaligned"]))
        if kind == "none":
            return None
        if kind == "input":
            return "input"  # resolved once the inputs exist
        values = np.zeros(call.shape)
        layout = "misaligned" if kind == "misaligned" else "contiguous"
        return LAYOUTS[layout](values, call.dtype)

    def hostile(self, draw, call):
        kind = draw(st.sampled_from(["dtype", "shape", "read-only", "broadcast", "fortran",
                                     "overlap", "list"]))
        if kind == "overlap":
            return "overlap"
        values = np.zeros(call.shape)
        if kind == "dtype":
            other = np.float64 if call.dtype == np.float32 else np.float32
            return values.astype(other)
        if kind == "shape":
            return np.zeros(call.shape + (1,), call.dtype)
        if kind == "read-only":
            return _read_only(values, call.dtype)
        if kind == "broadcast":
            return np.broadcast_to(np.zeros(call.n_channels, call.dtype), call.shape)
        if kind == "list":
            return values.tolist()
        return np.asfortranarray(np.zeros(call.shape + (2,), call.dtype))[..., 0]


class Call:
    """The state of one drawn call."""

    def __init__(self, dtype, shape, batch_norm=False):
        self.batch_norm = batch_norm
        self.dtype = dtype
        # float32 and the half types: computed with float32 products
        self.narrow = np.dtype(dtype).itemsize <= 4
        self.position = None  # where _move_channels put the channel axis
        self.shape = shape
        self.n_channels = shape[-1] if shape else 0
        self.data = {}        # role -> float64 values the argument holds
        self.alias_out = {}   # role -> aliasing to set up once x and out exist
        self.kwargs = {}      # the arguments drawn so far (a role may depend on earlier ones)
        self.count = None     # count of x's own sums (Sums, Count)


# ---------------------------------------------------------------------------
# The entry points. `min_ndim`, and the reference of each: expected outputs
# with the size of their terms.

def _f64(value):
    return None if value is None else np.array(value, dtype=np.float64)


def _lrn_reference(kw):
    x = _f64(kw["x"])
    r = kw["depth_radius"]
    return [(reference.lrn_canonical(x, r, r, float(kw["alpha"]), float(kw["bias"]),
                                     float(kw["beta"])), None)]


def _window(size, convention):
    if size < 2 ** 62:
        return reference.lrn_window(size, convention)
    return size // 2, (size - 1) // 2


def _size_args(kw):
    size = int(kw["size"])
    before, after = _window(size, kw["convention"])
    n_channels = np.shape(kw["x"])[-1]
    a = float(fractions.Fraction(float(kw["alpha"])) / size)
    return min(before, n_channels), min(after, n_channels), a


def _local_response_norm_reference(kw):
    before, after, a = _size_args(kw)
    return [(reference.lrn_canonical(_f64(kw["x"]), before, after, a, float(kw["k"]),
                                     float(kw["beta"])), None)]


def _lrn_backward_reference(kw):
    x, dy = _f64(kw["x"]), _f64(kw["dy"])
    r, a, k, beta = kw["depth_radius"], float(kw["alpha"]), float(kw["bias"]), float(kw["beta"])
    with np.errstate(all="ignore"):
        return [(reference.lrn_canonical_backward(dy, x, r, r, a, k, beta),
                 lrn_backward_scale(dy, x, r, r, a, k, beta))]


def _local_response_norm_backward_reference(kw):
    before, after, a = _size_args(kw)
    x, dy = _f64(kw["x"]), _f64(kw["dy"])
    k, beta = float(kw["k"]), float(kw["beta"])
    with np.errstate(all="ignore"):
        return [(reference.lrn_canonical_backward(dy, x, before, after, a, k, beta),
                 lrn_backward_scale(dy, x, before, after, a, k, beta))]


def _channels(value, n, default):
    return np.full(n, default) if value is None else _f64(value)


def _inference_reference(kw):
    x = _f64(kw["x"])
    n = x.shape[-1]
    gamma, beta = _channels(kw["gamma"], n, 1.0), _channels(kw["beta"], n, 0.0)
    mean, var = _f64(kw["running_mean"]), _f64(kw["running_var"])
    eps = float(kw["eps"])
    residual = _f64(kw.get("residual"))
    y = reference.batch_norm_inference(x, mean, var, gamma, beta, eps,
                                       activation=kw.get("activation"), residual=residual)
    invstd = 1 / np.sqrt(var + eps)
    scale = batch_norm_y_scale(x, mean, invstd, gamma, beta)
    return [(y, scale if residual is None else scale + np.abs(residual))]


def _training_reference(kw):
    if kw.get("moments") is not None:
        return _training_moments_reference(kw)
    x = _f64(kw["x"])
    n = x.shape[-1]
    gamma, beta = _channels(kw["gamma"], n, 1.0), _channels(kw["beta"], n, 0.0)
    eps = float(kw["eps"])
    running_mean, running_var = _f64(kw.get("running_mean")), _f64(kw.get("running_var"))
    if float(kw.get("momentum", 0.1)) == 1.0 and running_mean is not None:
        # cnorm's documented rule: momentum 1 replaces (an inf running value
        # does not survive as 0 * inf = NaN, as in the reference's formula).
        running_mean[...] = 0.0
        running_var[...] = 0.0
    y, mean, invstd = reference.batch_norm_training(
        x, gamma, beta, eps, running_mean=running_mean, running_var=running_var,
        momentum=float(kw.get("momentum", 0.1)),
        running_var_unbiased=bool(kw.get("running_var_unbiased", True)),
        activation=kw.get("activation"))
    rows = x.reshape(-1, n)
    spread = np.abs(rows - mean).max(axis=0) if rows.size else np.zeros(n)
    outputs = [(y, batch_norm_y_scale(x, mean, invstd, gamma, beta)),
               (mean, np.abs(rows).mean(axis=0)),
               (invstd, invstd + 0.5 * invstd ** 3 * spread ** 2)]
    if running_mean is not None:
        momentum = float(kw.get("momentum", 0.1))
        outputs.append((running_mean, np.abs(_f64(kw["running_mean"])) + np.abs(mean)))
        outputs.append((running_var, np.abs(_f64(kw["running_var"]))
                        + 2 * momentum * spread ** 2))
    return outputs


def _training_moments_reference(kw):
    """batch_norm_training(x, moments=...), composed: x normalized as inference
    with the moments' mean and biased variance; the running statistics take
    those, m being moments.count."""
    x = _f64(kw["x"])
    n = x.shape[-1]
    gamma, beta = _channels(kw["gamma"], n, 1.0), _channels(kw["beta"], n, 0.0)
    eps = float(kw["eps"])
    moments = kw["moments"]
    mean, var, m = moments.mean.copy(), moments.var(), moments.count
    y = reference.batch_norm_inference(x, mean, var, gamma, beta, eps,
                                       activation=kw.get("activation"))
    invstd = 1.0 / np.sqrt(var + eps)
    outputs = [(y, batch_norm_y_scale(x, mean, invstd, gamma, beta)), (mean, None),
               (invstd, invstd)]
    if kw.get("running_mean") is not None:
        momentum = float(kw.get("momentum", 0.1))
        stat = var * m / (m - 1) if bool(kw.get("running_var_unbiased", True)) else var
        for old, new in ((_f64(kw["running_mean"]), mean), (_f64(kw["running_var"]), stat)):
            value = new if momentum == 1.0 else (1 - momentum) * old + momentum * new
            outputs.append((value, np.abs(old) + np.abs(new)))
    return outputs


def _backward_reference(kw):
    x, g = _f64(kw["x"]), _f64(kw["dy"])
    n = x.shape[-1]
    mean, invstd = _f64(kw["mean"]), _f64(kw["invstd"])
    gamma = _channels(kw["gamma"], n, 1.0)
    training = bool(kw.get("training", True))
    if kw.get("sums") is not None:
        return _backward_sums_given_reference(kw, g, x, mean, invstd, gamma)
    activation = kw.get("activation")
    dx, dgamma, dbeta = reference.batch_norm_backward(
        g, x, mean, invstd, gamma, beta=_f64(kw.get("beta")), activation=activation,
        training=training)
    if activation is not None:  # the terms of the masked gradient
        xhat = (x - mean) * invstd
        g = np.where(gamma * xhat + _channels(kw.get("beta"), n, 0.0) > 0, g, 0.0)
    scales = batch_norm_backward_scales(g, x, mean, invstd, gamma, training)
    dx = _zero_scale_channels(dx, x, g, mean, invstd, gamma)
    return list(zip((dx, dgamma, dbeta), scales))


def _zero_scale_channels(dx, x, g, mean, invstd, gamma, *sums):
    """dx of a channel whose gamma*invstd is exactly 0, with finite inputs, is 0
    times a finite real: exactly 0. The float64 formula may overflow in its
    bracket (xhat*dgamma of 1e200 data) and give 0*inf = NaN there; the exact
    value is expected."""
    n = x.shape[-1]
    with np.errstate(all="ignore"):
        finite = (np.isfinite(x).reshape(-1, n).all(axis=0)
                  & np.isfinite(g).reshape(-1, n).all(axis=0)
                  & np.isfinite(mean) & np.isfinite(invstd) & np.isfinite(gamma))
        for value in sums:
            finite &= np.isfinite(value)
        zero = finite & (gamma * invstd == 0)
    return np.where(zero & np.isnan(dx), 0.0, dx)


def _backward_sums_given_reference(kw, g, x, mean, invstd, gamma):
    """batch_norm_backward(..., sums=(sum_dy, sum_dy_xhat), count=m), composed:
    the frozen-statistics dx of the reference minus the sums' terms
    (dx = gamma*invstd*(g - sum_dy/m - xhat*sum_dy_xhat/m)); dgamma, dbeta the sums."""
    sum_dy, sum_dy_xhat = (_f64(value) for value in kw["sums"])
    count = float(kw["count"])
    frozen = reference.batch_norm_backward(g, x, mean, invstd, gamma, training=False)[0]
    xhat = (x - mean) * invstd
    coefficient = gamma * invstd
    dx = frozen - coefficient * (sum_dy / count + xhat * (sum_dy_xhat / count))
    scale = np.abs(coefficient) * (np.abs(g) + np.abs(sum_dy) / count
                                   + np.abs(xhat) * (np.abs(sum_dy_xhat) / count))
    dx = _zero_scale_channels(dx, x, g, mean, invstd, gamma, sum_dy, sum_dy_xhat)
    return [(dx, scale), (sum_dy_xhat, None), (sum_dy, None)]


def _backward_sums_reference(kw):
    x, g = _f64(kw["x"]), _f64(kw["dy"])
    mean, invstd = _f64(kw["mean"]), _f64(kw["invstd"])
    sum_dy, sum_dy_xhat = reference.batch_norm_backward_sums(g, x, mean, invstd)
    _, dgamma_scale, dbeta_scale = batch_norm_backward_scales(
        g, x, mean, invstd, np.ones(x.shape[-1]), True)
    return [(sum_dy, dbeta_scale), (sum_dy_xhat, dgamma_scale)]


class Entry:
    def __init__(self, name, function, reference, args, min_ndim=1, outputs=()):
        self.name = name
        self.function = function
        self.reference = reference
        self.args = args            # name -> Role, in the order of the signature
        self.min_ndim = min_ndim
        self.outputs = outputs      # names of arguments updated in place (returned too)

    def __repr__(self):
        return self.name


_LRN = {"x": Tensor(), "depth_radius": Huge(0, 7), "bias": Real(1e-3, 10.0),
        "alpha": Real(0.0, 2.0), "beta": Real(0.1, 1.5)}
_SIZE = {"x": Tensor(), "size": Huge(1, 9), "alpha": Real(0.0, 2.0), "beta": Real(0.1, 1.5),
         "k": Real(1e-3, 10.0), "convention": Choice("torch", "onnx")}
_COMMON = {"out": Out(), "n_threads": Threads(), "axis": Axis()}

ENTRIES = [
    Entry("lrn", cnorm.lrn, _lrn_reference, {**_LRN, **_COMMON}),
    Entry("lrn_backward", cnorm.lrn_backward, _lrn_backward_reference,
          {"dy": Like(), **_LRN, **_COMMON}),
    Entry("local_response_norm", cnorm.local_response_norm, _local_response_norm_reference,
          {**_SIZE, **_COMMON}),
    Entry("local_response_norm_backward", cnorm.local_response_norm_backward,
          _local_response_norm_backward_reference, {"dy": Like(), **_SIZE, **_COMMON}),
    Entry("batch_norm_inference", cnorm.batch_norm_inference, _inference_reference,
          {"x": Tensor(), "running_mean": Channels(), "running_var": Channels(positive=True),
           "gamma": Channels(optional=True), "beta": Channels(optional=True),
           "eps": Real(1e-6, 1.0, positive=True), "activation": Activation(),
           "residual": Residual(), **_COMMON}, min_ndim=2),
    Entry("batch_norm_training", cnorm.batch_norm_training, _training_reference,
          {"x": Tensor(), "gamma": Channels(optional=True), "beta": Channels(optional=True),
           "eps": Real(1e-6, 1.0, positive=True), "running_mean": Running(),
           "running_var": Running(var=True), "momentum": Real(0.0, 1.0),
           "running_var_unbiased": Flag(), "moments": MomentsArg(),
           "activation": Activation(), **_COMMON},
          min_ndim=2, outputs=("running_mean", "running_var")),
    Entry("batch_norm_backward", cnorm.batch_norm_backward, _backward_reference,
          {"dy": Like(), "x": Tensor(), "mean": Channels(),
           "invstd": Channels(positive=True), "gamma": Channels(optional=True),
           "beta": Channels(optional=True), "activation": Activation(), "training": Flag(),
           "sums": Sums(), "count": Count(), **_COMMON}, min_ndim=2),
    Entry("batch_norm_backward_sums", cnorm.batch_norm_backward_sums,
          _backward_sums_reference,
          {"dy": Like(), "x": Tensor(), "mean": Channels(), "invstd": Channels(positive=True),
           "n_threads": Threads(), "axis": Axis()}, min_ndim=2),
]


# ---------------------------------------------------------------------------
# Drawing a call, running it, checking the property.

SHAPES = st.one_of(
    st.lists(st.integers(1, 4), min_size=1, max_size=6).map(tuple),          # up to 6-D
    st.tuples(st.integers(0, 3), st.integers(0, 3)),                          # zero-size axes
    st.tuples(st.integers(1, 40), st.just(1)),                                # C = 1
    st.tuples(st.integers(1, 3), st.integers(100, 400)),                      # wide C
)


@st.composite
def calls(draw, entry):
    dtype = draw(st.sampled_from(DATA_DTYPES))
    shape = draw(SHAPES)
    while len(shape) < entry.min_ndim:
        shape = (2,) + shape
    if entry.min_ndim == 2:  # batch norm: not empty, more than one value per channel
        shape = tuple(max(n, 1) for n in shape)
        if int(np.prod(shape[:-1])) < 2:
            shape = (2,) + shape
    call = Call(dtype, shape, batch_norm=entry.min_ndim == 2)
    hostile = draw(st.one_of(st.none(), st.sampled_from(sorted(entry.args))))  # about half
    kwargs = call.kwargs
    for name, role in entry.args.items():
        if name == hostile:
            kwargs[name] = role.hostile(draw, call)
        else:
            kwargs[name] = role.valid(draw, call)
    if "running_mean" in entry.outputs and draw(st.integers(0, 2)) == 0 and hostile not in (
            "running_mean", "running_var"):
        kwargs["running_mean"] = kwargs["running_var"] = None  # neither, as is allowed
    _resolve_aliases(draw, entry, call, kwargs)
    _move_channels(draw, call, kwargs)
    return call, hostile, kwargs


def _move_channels(draw, call, kwargs):
    """A valid axis: the channel axis of x, dy and out moved to a drawn position
    (the same object moved once, so aliasing holds), as a view or a copy."""
    if not (isinstance(kwargs.get("axis"), str) and kwargs["axis"] == "move"):
        return
    ndim = len(call.shape)
    data = [kwargs[name] for name in ("x", "dy") if name in kwargs]
    if not all(isinstance(value, np.ndarray) and value.shape == call.shape for value in data):
        kwargs["axis"] = -1  # a hostile x or dy: the channels stay last
        return
    position = draw(st.integers(0, ndim - 1))
    copy = draw(st.booleans())
    moved = {}
    for name in ("x", "dy", "out", "residual"):
        value = kwargs.get(name)
        if not isinstance(value, np.ndarray) or value.shape != call.shape:
            continue
        if id(value) not in moved:
            view = np.moveaxis(value, -1, position)
            moved[id(value)] = np.ascontiguousarray(view) if copy else view
        kwargs[name] = moved[id(value)]
    call.position = position
    kwargs["axis"] = draw(st.sampled_from([position, position - ndim, np.int64(position)]))


def _resolve_aliases(draw, entry, call, kwargs):
    inputs = [name for name in ("x", "dy") if name in kwargs]
    if isinstance(kwargs.get("out"), str):
        source = kwargs[draw(st.sampled_from(inputs))]
        if kwargs["out"] == "input":
            kwargs["out"] = source  # out is x or dy itself
        elif isinstance(source, np.ndarray) and source.size > 1 and source.ndim:
            # out partly overlapping an input: same buffer, one element further
            flat = np.zeros(source.size + 1, source.dtype)
            flat[:source.size] = np.asarray(source).reshape(-1)
            name = [n for n in inputs if kwargs[n] is source][0]
            kwargs[name] = flat[:source.size].reshape(source.shape)
            kwargs["out"] = flat[1:].reshape(source.shape)
        else:
            kwargs["out"] = None
    residual = kwargs.get("residual")
    if isinstance(residual, str):  # x itself, or out itself (made if there is none)
        if residual == "x":  # a copy where out is x (residual must not share out's memory)
            x = kwargs["x"]
            copy = isinstance(x, np.ndarray) and kwargs.get("out") is x
            kwargs["residual"] = np.array(x) if copy else x
        else:
            out = kwargs.get("out")
            if not isinstance(out, np.ndarray):
                out = kwargs["out"] = np.zeros(call.shape, call.dtype)
            kwargs["residual"] = out
    for role, kind in call.alias_out.items():
        name = [n for n, r in entry.args.items() if r is role][0]
        if "out" not in entry.args:
            kind = "into x"  # no out: a view into x (only read)
        target = kwargs.get("x") if kind == "into x" else kwargs.get("out")
        if not isinstance(target, np.ndarray) or target.dtype != call.dtype or \
                target.size < call.n_channels or not target.flags.writeable:
            target = np.zeros(call.shape, call.dtype)
            if kind != "into x":
                kwargs["out"] = target
        view = target.reshape(-1)[:call.n_channels] if target.flags.c_contiguous else None
        if view is None or not np.shares_memory(view, target):
            continue
        view[...] = call.data.get(role, np.ones(call.n_channels))
        kwargs[name] = view


def _arrays(kwargs):
    """Every array among the arguments (in a tuple or list too, and a Moments'
    vectors), with a copy of its bytes."""
    arrays = {}
    for name, value in kwargs.items():
        if isinstance(value, np.ndarray):
            arrays[name] = (value, np.array(value, copy=True))
        elif isinstance(value, (tuple, list)):
            arrays.update({f"{name}[{i}]": (item, np.array(item, copy=True))
                           for i, item in enumerate(value) if isinstance(item, np.ndarray)})
        elif isinstance(value, cnorm.Moments):
            arrays.update({f"{name}.{field}": (getattr(value, field),
                                               getattr(value, field).copy())
                           for field in ("mean", "m2")})
    return arrays


# x87 extended precision (x86's long double) holds 10 bytes of value in 12 or
# 16: the rest is padding that NumPy's casts leave uninitialised (valgrind
# flags a comparison of it).
_LONGDOUBLE_BYTES = 10 if np.finfo(np.longdouble).nmant == 63 else None


def _value_bytes(array):
    """The bytes of `array`'s values, C order (a long double's padding left out)."""
    array = np.ascontiguousarray(array)
    if array.dtype.type is np.longdouble and _LONGDOUBLE_BYTES and array.dtype.isnative:
        return array.reshape(-1).view(np.uint8).reshape(array.size, array.itemsize)[
            :, :_LONGDOUBLE_BYTES].tobytes()
    return array.tobytes()


def _unchanged(snapshot):
    for name, (value, saved) in snapshot.items():
        if value.dtype.kind == "O":
            same = all(a is b for a, b in zip(value.ravel(), saved.ravel()))
        else:
            same = _value_bytes(value) == _value_bytes(saved)
        assert same, f"{name} was modified by a failing call"


def _agree(actual, expected, scale, err_msg):
    """actual (the call's dtype) against the float64 expected, within RTOL of the
    size of the terms; non-finite expected values must be non-finite, values
    beyond the dtype's range may overflow to inf."""
    actual = np.asarray(actual)
    assert actual.shape == np.shape(expected), (actual.shape, np.shape(expected), err_msg)
    a = actual.astype(np.float64)
    expected = np.asarray(expected, np.float64)
    info = finfo(actual.dtype)
    with np.errstate(all="ignore"):
        bound = np.abs(expected) if scale is None else np.broadcast_to(
            np.abs(scale), expected.shape) + np.abs(expected)
        in_range = np.isfinite(expected) & np.isfinite(bound) & (bound <= info.max / 4)
        bad_nonfinite = ~np.isfinite(expected) & np.isfinite(a)
        wrong_sign = np.isinf(expected) & np.isinf(a) & (np.sign(a) != np.sign(expected))
        error = np.where(in_range, np.abs(a - expected), 0.0)
        bad_value = in_range & ~(error <= RTOL[actual.dtype] * bound + 4 * info.tiny)
    bad = bad_nonfinite | wrong_sign | bad_value
    if bad.any():
        index = np.unravel_index(np.argmax(bad), bad.shape)
        raise AssertionError(f"{err_msg}: {bad.sum()} of {bad.size} wrong; at {index} got "
                             f"{a[index]!r}, expected {expected[index]!r} "
                             f"(scale {bound[index]!r})")


def _finite_channels(kwargs):
    """Per channel, whether the data (x, and dy if given) hold only finite values."""
    finite = None
    for name in ("x", "dy"):
        value = kwargs.get(name)
        if isinstance(value, np.ndarray):
            rows = np.isfinite(value).reshape(-1, value.shape[-1]).all(axis=0)
            finite = rows if finite is None else finite & rows
    return finite


def check_call(entry, call, hostile, kwargs):
    snapshot = _arrays(kwargs)
    before = {name: np.array(value, dtype=np.float64) for name, (value, _) in snapshot.items()
              if value.dtype.kind == "f" or value.dtype == BFLOAT16}
    try:
        with np.errstate(all="ignore"):
            result = entry.function(**kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        # The replaced argument, or one it must match; with none replaced, an
        # aliasing the valid draw set up (a running statistic inside out).
        names = [hostile, *entry.args[hostile].partners] if hostile else list(entry.args)
        assert any(name in message for name in names), (
            f"{entry.name}: message does not name {names}: {message!r}")
        _unchanged(snapshot)
        return "error"
    # Success: against the reference on the values as given (before the call).
    inputs = dict(kwargs)
    inputs.update(before)
    for name, value in kwargs.items():
        if isinstance(value, list) and name != "sums":
            inputs[name] = np.array(value, dtype=np.float64)
        if name == "sums" and value is not None:  # the values as given
            inputs[name] = [before.get(f"sums[{i}]", item) for i, item in enumerate(value)]
    if call.position is not None:  # the reference takes the channels last
        for name in ("x", "dy", "residual"):
            if inputs.get(name) is not None:
                inputs[name] = np.moveaxis(inputs[name], call.position, -1)
    with np.errstate(all="ignore"):
        expected = entry.reference(inputs)
    results = list(result) if isinstance(result, tuple) else [result]
    results += [kwargs[name] for name in entry.outputs if kwargs.get(name) is not None]
    if call.position is not None:
        results = [np.moveaxis(r, call.position, -1) if np.ndim(r) == len(call.shape) > 1
                   else r for r in results]
    assert len(results) == len(expected), (entry.name, len(results), len(expected))
    if entry.name == "batch_norm_training" and kwargs.get("moments") is None:
        _mask_non_finite_statistics(inputs, results, expected)
    if entry.name == "batch_norm_backward" and kwargs.get("activation") is not None:
        _mask_relu_boundary(inputs, results, expected)
    for index, (actual, (want, scale)) in enumerate(zip(results, expected)):
        _agree(actual, want, scale, f"{entry.name} output {index}")
    return "ok"


def _mask_non_finite_statistics(inputs, results, expected):
    """Training: a channel whose data hold NaN or inf, or whose squares overflow
    float64, must get non-finite statistics (a NaN variance where the two-pass
    reference may find an infinite one); its outputs are then not compared."""
    finite = _finite_channels(inputs)
    with np.errstate(all="ignore"):
        reference_var = expected[2][0] ** -2.0
    doubtful = ~finite | ~np.isfinite(reference_var)
    mean, invstd = results[1], results[2]
    signalled = ~np.isfinite(mean) | ~np.isfinite(invstd) | (invstd == 0)
    assert signalled[doubtful].all(), (
        f"finite statistics for non-finite data: mean {mean[doubtful]}, "
        f"invstd {invstd[doubtful]}")
    for index, (want, scale) in enumerate(expected):
        if np.ndim(want) == 0:
            continue
        mask = np.broadcast_to(doubtful, np.shape(want))
        expected[index] = (np.where(mask, np.nan, want), scale)
        results[index] = np.where(mask, np.nan, results[index]).astype(
            np.asarray(results[index]).dtype)


def _mask_relu_boundary(inputs, results, expected):
    """The ReLU backward: where gamma*xhat + beta is zero to within the rounding
    of its terms, the kernel and the reference may take the mask either way,
    which changes dx (and, training, the whole channel's sums): such channels
    are not compared. The rounding is relative to the terms, and absolute
    below the smallest subnormal of the type the mask is computed in (float32
    for float32 and the half types): there a positive value rounds to 0, the
    forward's y is 0 and its mask closed (mean -1.2e-38, gamma*invstd 1e-8:
    1.2e-46 > 0 in float64)."""
    x = inputs["x"]
    n = x.shape[-1]
    mean, invstd = _f64(inputs["mean"]), _f64(inputs["invstd"])
    gamma, beta = _channels(inputs.get("gamma"), n, 1.0), _channels(inputs.get("beta"), n, 0.0)
    with np.errstate(all="ignore"):
        pre = gamma * (x - mean) * invstd + beta
        scale = batch_norm_y_scale(x, mean, invstd, gamma, beta)
    dtype = np.asarray(results[0]).dtype
    rtol = RTOL[dtype]
    floor = 4 * np.finfo(np.float64 if dtype == np.float64 else np.float32).smallest_subnormal
    near = (np.abs(pre) <= 8 * rtol * scale + floor).reshape(-1, n).any(axis=0)
    if not near.any():
        return
    event("relu backward: a channel on the mask's boundary not compared")
    for index, (want, scale) in enumerate(expected):
        mask = np.broadcast_to(near, np.shape(want))
        expected[index] = (np.where(mask, np.nan, want), scale)
        results[index] = np.where(mask, np.nan, results[index]).astype(
            np.asarray(results[index]).dtype)


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
@FUZZ_SETTINGS
@given(data=st.data())
def test_hostile_arguments(entry, data):
    call, hostile, kwargs = data.draw(calls(entry))
    event(f"{check_call(entry, call, hostile, kwargs)} ({'hostile' if hostile else 'valid'})")


# ---------------------------------------------------------------------------
# The layer objects and Moments: constructor arguments, state assignment,
# calls and backward, merges. The same property: a TypeError/ValueError naming
# the argument with nothing changed, or the reference's answer.

def _expect_named_error(call, names, *snapshots):
    """Run `call`; on TypeError/ValueError check the message names one of `names`
    and every snapshot (array, saved copy) is unchanged; return the result or
    the string "error"."""
    try:
        with np.errstate(all="ignore"):
            return call()
    except (TypeError, ValueError) as exc:
        assert any(name in str(exc) for name in names), (names, str(exc))
        for snapshot in snapshots:
            _unchanged(snapshot)
        return "error"


_BN_CONSTRUCTOR = {"eps": Real(1e-6, 1.0, positive=True), "momentum": Real(0.0, 1.0),
                   "affine": Flag(), "track_running_stats": Flag(),
                   "running_var_unbiased": Flag()}
_LAYER_AXIS = st.sampled_from([-1, 1])


def _state(layer):
    return {name: (value, value.copy()) for name, value in layer.state_dict().items()}


@FUZZ_SETTINGS
@given(data=st.data())
def test_hostile_batch_norm_layer(data):
    draw = data.draw
    dtype = draw(st.sampled_from(FLOATS))
    shape = (draw(st.integers(2, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 3)))
    axis = draw(_LAYER_AXIS)
    n_channels = shape[axis]
    call = Call(dtype, (shape[0] * shape[2 if axis == 1 else 1], n_channels), batch_norm=True)
    hostile = draw(st.sampled_from([None, None, "num_features", "axis", "dtype",
                                    *_BN_CONSTRUCTOR]))
    kwargs = {name: (role.hostile if name == hostile else role.valid)(draw, call)
              for name, role in _BN_CONSTRUCTOR.items()}
    if hostile != "momentum" and draw(st.integers(0, 3)) == 0:
        kwargs["momentum"] = None  # the cumulative average
    kwargs["axis"] = draw(st.sampled_from([1.0, "1", None, 3, -4])) if hostile == "axis" else axis
    kwargs["dtype"] = draw(st.sampled_from([np.int64, "x", np.complex64, None])) \
        if hostile == "dtype" else dtype
    features = draw(st.sampled_from([0, -1, 1.5, True, None, "3"])) \
        if hostile == "num_features" else n_channels
    layer = _expect_named_error(lambda: cnorm.BatchNorm(features, **kwargs),
                                [hostile or "", "num_features"])
    if hostile is not None:
        return
    assert not isinstance(layer, str)
    # State assignment: a valid vector, or a hostile one that must change nothing.
    for name, role in (("gamma", Channels()), ("beta", Channels()),
                       ("running_mean", Channels()), ("running_var", Channels(positive=True))):
        if draw(st.booleans()):
            value = (role.hostile if draw(st.booleans()) else role.valid)(draw, call)
            if isinstance(value, np.ndarray) and name in call.alias_out:
                continue
            _expect_named_error(lambda: setattr(layer, name, value), [name], _state(layer))
    x = _values(draw, shape, call=call).astype(dtype)
    training = bool(draw(st.booleans()))
    state = {name: np.array(value, np.float64) for name, value in layer.state_dict().items()}
    ones, zeros = np.ones(n_channels), np.zeros(n_channels)
    gamma, beta = state.get("weight", ones), state.get("bias", zeros)
    y = _expect_named_error(lambda: layer(x, training=training), ["x"])
    if isinstance(y, str):
        return
    rows = np.moveaxis(x.astype(np.float64), axis, -1)
    batch = training or not layer.track_running_stats
    if batch:
        want, mean, invstd = reference.batch_norm_training(rows, gamma, beta, layer.eps)
    else:
        mean, var = state["running_mean"], state["running_var"]
        want = reference.batch_norm_inference(rows, mean, var, gamma, beta, layer.eps)
        invstd = 1 / np.sqrt(var + layer.eps)
    scale = batch_norm_y_scale(rows, mean, invstd, gamma, beta)
    if np.isfinite(rows).all() and np.isfinite(want).all():
        _agree(np.moveaxis(y, axis, -1), want, scale, "BatchNorm call")
    dy = _values(draw, shape).astype(dtype)
    grads = _expect_named_error(lambda: layer.backward(dy), ["dy"])
    finite = (np.isfinite(rows).all() and np.isfinite(dy).all() and np.isfinite(mean).all()
              and np.isfinite(invstd).all())
    if isinstance(grads, str) or not finite:
        return
    g = np.moveaxis(dy.astype(np.float64), axis, -1)
    expected = reference.batch_norm_backward(g, rows, mean, invstd, gamma, training=batch)
    scales = batch_norm_backward_scales(g, rows, mean, invstd, gamma, batch)
    for index, (actual, want, scale) in enumerate(zip(grads, expected, scales)):
        if actual is None:  # dgamma, dbeta of a layer that is not affine
            continue
        actual = np.moveaxis(actual, axis, -1) if np.ndim(actual) == 3 else actual
        _agree(actual, want, scale, f"BatchNorm backward output {index}")


_LRN_CONSTRUCTOR = {"size": Huge(1, 9), "alpha": Real(0.0, 2.0), "beta": Real(0.1, 1.5),
                    "k": Real(1e-3, 10.0), "convention": Choice("torch", "onnx")}


@FUZZ_SETTINGS
@given(data=st.data())
def test_hostile_local_response_norm_layer(data):
    draw = data.draw
    dtype = draw(st.sampled_from(DATA_DTYPES))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 3)))
    axis = draw(_LAYER_AXIS)
    call = Call(dtype, shape)
    hostile = draw(st.sampled_from([None, None, "axis", *_LRN_CONSTRUCTOR]))
    kwargs = {name: (role.hostile if name == hostile else role.valid)(draw, call)
              for name, role in _LRN_CONSTRUCTOR.items()}
    kwargs["axis"] = draw(st.sampled_from([1.0, "1", None])) if hostile == "axis" else axis
    layer = _expect_named_error(lambda: cnorm.LocalResponseNorm(**kwargs), [hostile or ""])
    if hostile is not None:
        return
    x = _values(draw, shape).astype(dtype)
    y = _expect_named_error(lambda: layer(x), ["x"])
    if isinstance(y, str):
        return
    kw = dict(kwargs, x=np.moveaxis(np.asarray(x, np.float64), axis, -1))
    (want, _), = _local_response_norm_reference(kw)
    _agree(np.moveaxis(y, axis, -1), want, None, "LocalResponseNorm call")
    dy = _values(draw, shape).astype(dtype)
    dx = _expect_named_error(lambda: layer.backward(dy), ["dy"])
    if isinstance(dx, str):
        return
    kw["dy"] = np.moveaxis(np.asarray(dy, np.float64), axis, -1)
    (want, scale), = _local_response_norm_backward_reference(kw)
    _agree(np.moveaxis(dx, axis, -1), want, scale, "LocalResponseNorm backward")


_MOMENTS_HOSTILE = {
    "count": [-1, 1.5, True, None, "3", 10 ** 30, np.nan],
    "mean": [None, "x", [[1.0]], np.ones(2, np.complex128), np.ones((2, 2))],
    "m2": [None, -np.ones(3), np.ones(7), "x", np.ones(3, np.int8) * -1],
}


@FUZZ_SETTINGS
@given(data=st.data())
def test_hostile_moments(data):
    draw = data.draw
    n_channels = draw(st.integers(1, 5))
    parts = [_values(draw, (draw(st.integers(0, 4)), n_channels))
             for _ in range(draw(st.integers(1, 4)))]
    dtype = draw(st.sampled_from(DATA_DTYPES))
    parts = [part.astype(dtype) for part in parts]
    # moments / merge / merge_all against the statistics of the concatenation
    pieces = [_expect_named_error(lambda p=p: cnorm.moments(p), ["x"]) for p in parts]
    assert not any(isinstance(p, str) for p in pieces)
    total = cnorm.Moments.merge_all(pieces)
    pairwise = pieces[0]
    for piece in pieces[1:]:
        pairwise = pairwise.merge(piece)
    np.testing.assert_array_equal(pairwise.to_array(), total.to_array())
    rows = np.concatenate([p.astype(np.float64) for p in parts])
    assert total.count == rows.shape[0]
    if rows.shape[0] and np.isfinite(rows).all() and (np.abs(rows) < 1e150).all():
        _agree(total.mean, rows.mean(axis=0), np.abs(rows).mean(axis=0), "Moments mean")
        spread = np.abs(rows - rows.mean(axis=0)).max(axis=0)
        _agree(total.var(), rows.var(axis=0), spread ** 2, "Moments var")
    # to_array / from_array round trip; the constructor; hostile values
    array = total.to_array()
    np.testing.assert_array_equal(cnorm.Moments.from_array(array).to_array(), array)
    kind = draw(st.sampled_from(["constructor", "from_array", "merge", "merge_all"]))
    if kind == "constructor":
        args = {"count": total.count, "mean": total.mean.copy(), "m2": total.m2.copy()}
        hostile = draw(st.sampled_from(sorted(_MOMENTS_HOSTILE)))
        args[hostile] = draw(st.sampled_from(_MOMENTS_HOSTILE[hostile]))
        snapshot = _arrays(args)
        result = _expect_named_error(lambda: cnorm.Moments(**args),
                                     [hostile, "mean", "m2", "count"], snapshot)
        if not isinstance(result, str):  # e.g. a list mean of the right shape
            np.testing.assert_array_equal(result.mean, np.asarray(args["mean"], np.float64))
    elif kind == "from_array":
        bad = draw(st.sampled_from([array[:-1], array[None], -array, "x", None,
                                    np.append(array, 1.0), array.astype(np.complex128)]))
        snapshot = _arrays({"a": bad}) if isinstance(bad, np.ndarray) else {}
        result = _expect_named_error(lambda: cnorm.Moments.from_array(bad),
                                     ["array", "count", "m2", "mean"], snapshot)
        if not isinstance(result, str):
            assert result.n_channels == (np.size(bad) - 1) // 2
    elif kind == "merge":
        other = draw(st.sampled_from([None, array, "x", cnorm.Moments.empty(n_channels + 1)]))
        result = _expect_named_error(lambda: total.merge(other), ["other", "channel", "Moments"])
        assert isinstance(result, str)
    else:
        items = draw(st.sampled_from([[], [total, array], [total, None],
                                      [total, cnorm.Moments.empty(n_channels + 1)]]))
        result = _expect_named_error(lambda: cnorm.Moments.merge_all(items),
                                     ["moments", "channel", "Moments"])
        assert isinstance(result, str)
    np.testing.assert_array_equal(total.to_array(), array)  # never modified


# ---------------------------------------------------------------------------
# cnorm.dask: hostile arguments to its five functions. Few examples (each
# builds and computes a graph): CNORM_FUZZ_EXAMPLES // 10, at least 20.

DASK_SETTINGS = settings(FUZZ_SETTINGS, max_examples=max(20, (EXAMPLES or 0) // 10))
_DASK_FUNCTIONS = ("moments", "batch_norm_inference", "lrn", "local_response_norm",
                   "recalibrate")
# What each function takes besides x and axis: name -> role.
_DASK_ARGS = {
    "moments": {},
    "batch_norm_inference": {"running_mean": Channels(), "running_var": Channels(positive=True),
                             "gamma": Channels(optional=True),
                             "beta": Channels(optional=True),
                             "eps": Real(1e-6, 1.0, positive=True)},
    "lrn": {**{name: role for name, role in _LRN.items() if name != "x"},
            "allow_rechunk": Flag()},
    "local_response_norm": {**{name: role for name, role in _SIZE.items() if name != "x"},
                            "allow_rechunk": Flag()},
    "recalibrate": {"running_mean": Running(), "running_var": Running(var=True),
                    "unbiased": Flag()},
}


def _dask_hostile_x(draw, function, x, axis):
    """x as a NumPy array or list (for recalibrate: a list of NumPy batches,
    which it takes), 1-D with unknown chunk sizes, with unknown sizes along the
    first axis (hostile only where that is the channel axis, or for LRN with
    allow_rechunk=True and the channels split), or, for LRN, with the channel
    axis split over chunks (allow_rechunk=False)."""
    kinds = ["numpy", "list", "flat unknown", "rows unknown"]
    kind = draw(st.sampled_from(kinds + (["split"] if "lrn" in function or
                                         "local" in function else [])))
    if kind == "numpy":
        return x.compute()
    if kind == "list":
        values = x.compute()
        if function != "recalibrate":
            return values.tolist()
        batch_axis = 1 if axis % x.ndim == 0 else 0
        return np.array_split(values, draw(st.integers(1, 3)), axis=batch_axis)
    if kind == "flat unknown":
        return x[x > 0]
    if kind == "split":
        return x.rechunk({axis: 1})
    return x[x[(slice(None),) + (0,) * (x.ndim - 1)] > -1]  # every row, sizes unknown


def _dask_expect(function, x, computed, kwargs, result):
    """The dask result against the NumPy cnorm function on the computed array."""
    numpy_kwargs = {name: value for name, value in kwargs.items() if name != "allow_rechunk"}
    if function == "moments":
        expected = cnorm.moments(computed, **numpy_kwargs)
        actual = result.compute(scheduler="sync")
        assert actual.count == expected.count
        spread = np.sqrt(np.abs(expected.var())) if expected.count else 0.0
        _agree(actual.mean, expected.mean, spread + np.abs(expected.mean), "dask moments mean")
        _agree(actual.m2, expected.m2, None, "dask moments m2")
        return
    if function == "recalibrate":
        expected = cnorm.moments(computed, axis=kwargs["axis"])
        unbiased = kwargs.get("unbiased", True)
        assert result.count == expected.count
        _agree(kwargs["running_mean"], expected.mean, np.sqrt(np.abs(expected.var()))
               + np.abs(expected.mean), "dask recalibrate running_mean")
        _agree(kwargs["running_var"], expected.var(ddof=1 if unbiased else 0), None,
               "dask recalibrate running_var")
        return
    assert isinstance(result, type(x)), type(result)
    actual = result.compute(scheduler="sync")
    expected = getattr(cnorm, function)(computed, **numpy_kwargs)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = None
    if function == "batch_norm_inference":
        rows = np.moveaxis(computed.astype(np.float64), kwargs["axis"], -1)
        n = rows.shape[-1]
        mean, var = _f64(kwargs["running_mean"]), _f64(kwargs["running_var"])
        gamma, beta = _channels(kwargs["gamma"], n, 1.0), _channels(kwargs["beta"], n, 0.0)
        with np.errstate(all="ignore"):
            invstd = 1 / np.sqrt(var + float(kwargs["eps"]))
            scale = np.moveaxis(batch_norm_y_scale(rows, mean, invstd, gamma, beta), -1,
                                kwargs["axis"])
    _agree(actual, expected.astype(np.float64), scale, f"dask {function}")


def test_hostile_dask():
    need("dask.array")
    need("cnorm.dask")
    _hostile_dask()


@DASK_SETTINGS
@given(data=st.data())
def _hostile_dask(data):
    import dask.array as da

    import cnorm.dask as cnorm_dask
    draw = data.draw
    function = draw(st.sampled_from(_DASK_FUNCTIONS))
    dtype = draw(st.sampled_from(DATA_DTYPES))
    shape = tuple(draw(st.integers(1, 5)) for _ in range(draw(st.integers(2, 3))))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    if np.prod(shape) // shape[axis] < 2:  # more than one value per channel
        first = 1 if axis % len(shape) == 0 else 0
        shape = shape[:first] + (2,) + shape[first + 1:]
    call = Call(dtype, shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
                + (shape[axis],), batch_norm=function == "batch_norm_inference")
    values = _values(draw, shape, call=call)
    roles = _DASK_ARGS[function]
    hostile = draw(st.sampled_from([None, None, "x", "axis", *roles]))
    kwargs = {}
    for name, role in roles.items():
        kwargs[name] = (role.hostile if name == hostile else role.valid)(draw, call)
    if hostile == "x" and "allow_rechunk" in kwargs:
        kwargs["allow_rechunk"] = False  # a split channel axis is an error
    if hostile == "unbiased" and kwargs["unbiased"] is None:
        kwargs["unbiased"] = 1  # None is recalibrate's default (True), not hostile
    kwargs["axis"] = Axis().hostile(draw, call) if hostile == "axis" else axis
    if kwargs["axis"] is None and function == "recalibrate":
        kwargs["axis"] = 1.0  # None is recalibrate's default (-1), not hostile
    chunks = [draw(st.integers(1, n)) for n in shape]
    if kwargs.get("allow_rechunk") is False and hostile != "allow_rechunk":
        chunks[axis] = shape[axis]  # LRN: the channels in one chunk, else an error
    x = da.from_array(values.astype(dtype), chunks=tuple(chunks))
    argument = _dask_hostile_x(draw, function, x, axis) if hostile == "x" else x
    snapshot = _arrays(kwargs)
    try:
        with np.errstate(all="ignore"):
            result = getattr(cnorm_dask, function)(argument, **kwargs)
    except (TypeError, ValueError) as exc:
        names = {None: list(roles) + ["x", "axis"], "x": ["x", "axis"]}.get(
            hostile, [hostile, *getattr(roles.get(hostile), "partners", ())])
        assert any(name in str(exc) for name in names), (function, names, str(exc))
        _unchanged(snapshot)
        event(f"dask {function}: error ({'hostile' if hostile else 'valid'})")
        return
    event(f"dask {function}: ok ({'hostile' if hostile else 'valid'})")
    computed = (argument if isinstance(argument, da.Array) else x).compute(scheduler="sync")
    kwargs = dict(kwargs)
    with np.errstate(all="ignore"):
        _dask_expect(function, argument, computed, kwargs, result)
