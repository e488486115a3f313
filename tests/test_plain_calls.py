"""Plain calls: the compiled checks of cnorm._buffers (the common case of every
public function and layer) give what the checked Python path gives.

Each case runs twice, once as it comes and once with ``cnorm._buffers.plain``
answering None (every call then takes the checked path): the results must be
the same bits, the errors the same type and message, the inputs unmodified.
"""
import numpy as np
import pytest

import cnorm
from cnorm import _buffers, _validation

RNG = np.random.default_rng(5)
X = RNG.standard_normal((3, 4, 5)).astype(np.float32)
DY = RNG.standard_normal((3, 4, 5)).astype(np.float32)
C = 5
MEAN, VAR = RNG.standard_normal(C), RNG.random(C) + 0.5
GAMMA, BETA = RNG.standard_normal(C), RNG.standard_normal(C)


def _calls(x, dy, out, axis=-1, n_threads=None):
    """{name: call} of every function over the same arguments."""
    channels = x.shape[axis] if type(axis) is int and -x.ndim <= axis < x.ndim else C
    mean, var = MEAN[:channels], VAR[:channels]
    gamma, beta = GAMMA[:channels], BETA[:channels]
    common = dict(axis=axis, out=out, n_threads=n_threads)
    return {
        "lrn": lambda: cnorm.lrn(x, 2, 1.0, 0.5, 0.75, **common),
        "lrn_backward": lambda: cnorm.lrn_backward(dy, x, 2, 1.0, 0.5, 0.75, **common),
        "local_response_norm": lambda: cnorm.local_response_norm(x, 3, 0.5, 0.75, 1.0,
                                                                 **common),
        "local_response_norm_backward": lambda: cnorm.local_response_norm_backward(
            dy, x, 3, 0.5, 0.75, 1.0, **common),
        "batch_norm_inference": lambda: cnorm.batch_norm_inference(x, mean, var, gamma, beta,
                                                                   **common),
        "batch_norm_training": lambda: cnorm.batch_norm_training(x, gamma, beta, **common),
        "batch_norm_backward": lambda: cnorm.batch_norm_backward(
            dy, x, mean, 1.0 / np.sqrt(var), gamma, **common),
    }


def _outcome(call, arrays):
    before = [a.copy() for a in arrays]
    try:
        result = call()
    except (TypeError, ValueError) as exc:
        outcome = (type(exc), str(exc))
    else:
        results = result if isinstance(result, tuple) else (result,)
        outcome = tuple((r.dtype, r.shape, r.tobytes()) for r in results)
    changed = [i for i, (a, b) in enumerate(zip(arrays, before))
               if a is not None and not np.array_equal(a, b, equal_nan=True)]
    return outcome, changed


def _overlapping():
    base = np.arange(X.size + 1, dtype=np.float32)  # x and out one element apart
    return base[1:].reshape(X.shape), DY.copy(), base[:-1].reshape(X.shape)


def _read_only_out():
    out = np.empty_like(X)
    out.flags.writeable = False
    return X.copy(), DY.copy(), out


def _in_place(dtype):
    x = X.astype(dtype)
    return x, DY.astype(dtype), x


def _out_is_dy():
    dy = DY.copy()
    return X.copy(), dy, dy


def _given(x, dy=DY, out=None):
    return lambda: (np.array(x, copy=True), dy.copy(), None if out is None else out.copy())


# (name, () -> fresh (x, dy, out), keyword arguments)
CASES = [
    ("out None", _given(X), {}),
    ("out given", _given(X, out=np.empty_like(X)), {}),
    ("float64", _given(X.astype(np.float64), DY.astype(np.float64)), {}),
    ("float16 in place", lambda: _in_place(np.float16), {}),
    ("out is dy", _out_is_dy, {}),
    ("axis 1", _given(X[:, :, :4], DY[:, :, :4]), {"axis": 1}),
    ("axis -3", _given(X[:, :, :3], DY[:, :, :3]), {"axis": -3}),
    ("n_threads 3", _given(X), {"n_threads": 3}),
    ("n_threads huge", _given(X), {"n_threads": 2 ** 40}),
    # refused, or taken by the checked path only
    ("out partly over x", _overlapping, {}),
    ("out of another dtype", _given(X, out=np.empty(X.shape)), {}),
    ("out of another shape", _given(X, out=np.empty((3, 4, 6), np.float32)), {}),
    ("out read-only", _read_only_out, {}),
    ("out strided", lambda: (X.copy(), DY.copy(), np.empty((3, 4, 10), np.float32)[..., ::2]),
     {}),
    ("dy of another dtype", _given(X, DY.astype(np.float64)), {}),
    ("dy Fortran order", lambda: (X.copy(), np.asfortranarray(DY), None), {}),
    ("x strided", lambda: (X[:, :, ::-1], DY.copy(), None), {}),
    ("axis out of range", _given(X), {"axis": 3}),
    ("axis a float", _given(X), {"axis": 1.0}),
    ("n_threads 0", _given(X), {"n_threads": 0}),
    ("n_threads True", _given(X), {"n_threads": True}),
    ("x empty", _given(X[:0], DY[:0]), {}),
    ("x 1-d", _given(X[0, 0], DY[0, 0]), {}),
]


@pytest.mark.parametrize("make, kwargs", [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_plain_path_gives_what_the_checked_path_gives(make, kwargs, monkeypatch):
    outcomes = []
    for checked in (False, True):
        if checked:
            monkeypatch.setattr(_buffers, "plain", lambda *args: None)
        run = {}
        for name in _calls(*make(), **kwargs):
            x, dy, out = make()  # fresh arrays for every call
            call = _calls(x, dy, out, **kwargs)[name]
            run[name] = _outcome(call, [a for a in (x, dy) if a is not out])
        outcomes.append(run)
    assert outcomes[0] == outcomes[1]
    for name, (_, changed) in outcomes[0].items():
        assert not changed, f"{name} modified an input"


def test_plain_path_is_taken():
    """The common calls are plain: what the overhead benchmark times."""
    out = np.empty_like(X)
    for x, dy, axis in ((X, None, -1), (X, DY, -1), (X, DY, 1), (X.astype(np.float16), None, 0)):
        plain = _buffers.plain(x, out if x.dtype == out.dtype else None, None, axis, 2, dy)
        assert plain is not None
        y, threads, t = plain
        assert threads >= 1 and (t.outer, t.channels, t.inner) == (
            int(np.prod(x.shape[:axis % 3])), x.shape[axis], int(np.prod(x.shape[axis % 3 + 1:])))
        assert t.storage == {"float64": 0, "float32": 1, "float16": 2}[x.dtype.name]
        assert t.array is x and t.memory is x and t.order is None


def test_layer_n_threads_is_capped():
    layer = cnorm.BatchNorm(C)
    expected = layer(X)
    np.testing.assert_array_equal(layer(X, n_threads=2 ** 40), expected)
    assert _buffers.MAX_THREADS == _validation.MAX_THREADS
