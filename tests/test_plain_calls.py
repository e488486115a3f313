"""Plain calls: the compiled checks of cnorm._buffers (the common case of every
public function and layer) give what the checked Python path gives.

Each case runs twice, once as it comes and once with ``cnorm._buffers.plain``
and the batch-norm fast paths of cnorm._batchnorm (infer_plain, train_plain,
backward_plain) answering None (every call then takes the checked path): the
results must be the same bits, the errors the same type and message, the
inputs unmodified.
"""
import numpy as np
import pytest

import cnorm
from cnorm import _buffers, _validation, batchnorm

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


def _checked_only(monkeypatch):
    """Make every call take the checked path."""
    monkeypatch.setattr(_buffers, "plain", lambda *args: None)
    for name in ("infer_plain", "train_plain", "backward_plain"):
        monkeypatch.setattr(batchnorm._bn, name, lambda *args: None)


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
            _checked_only(monkeypatch)
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


_HUGE = np.full(C, 1e300)
_TINY = np.full(C, 1e-300)
_SUBNORMAL = np.full(C, 3e-41)  # a float32 subnormal: the float32 pass would lose bits

# (function, keyword arguments) of batch norm beyond the common ones: those the
# fast paths take (relu, frozen statistics) and those they leave to the
# checked path (float64 widening, errors, running statistics).
BN_CASES = [
    ("inference", {}), ("inference", {"activation": "relu"}),
    ("inference", {"gamma": _HUGE}), ("inference", {"beta": _TINY}),
    ("inference", {"gamma": _SUBNORMAL}), ("training", {"gamma": _SUBNORMAL}),
    ("backward", {"gamma": _SUBNORMAL}),
    ("inference", {"var": -VAR}), ("inference", {"var": np.full(C, np.nan)}),
    ("inference", {"eps": 1e-80}), ("inference", {"eps": 0.0}), ("inference", {"eps": 1}),
    ("inference", {"activation": "tanh"}), ("inference", {"activation": ["relu"]}),
    ("inference", {"gamma": None, "beta": None}), ("inference", {"mean": None}),
    ("inference", {"mean": MEAN.astype(np.float32)}), ("inference", {"gamma": GAMMA[:4]}),
    ("training", {}), ("training", {"activation": "relu"}), ("training", {"gamma": _HUGE}),
    ("training", {"momentum": 1}), ("training", {"momentum": 1.5}),
    ("training", {"running_var_unbiased": 1}), ("training", {"running": True}),
    ("training", {"x": X * np.float32(1e20)}), ("training", {"x": X[:1, :1]}),
    ("training", {"gamma": None, "beta": None}),
    ("backward", {}), ("backward", {"activation": "relu", "beta": BETA}),
    ("backward", {"training": False}), ("backward", {"training": False, "activation": "relu"}),
    ("backward", {"training": 1}), ("backward", {"invstd": _HUGE}),
    ("backward", {"gamma": None}), ("backward", {"dy": DY[:, :, :4]}),
]


def _bn_call(function, kwargs):
    """A batch-norm call over fresh arrays: (call, the inputs it must not modify)."""
    kwargs = dict(kwargs)
    x = kwargs.pop("x", X).copy()
    dy = kwargs.pop("dy", DY).copy()
    mean, var = kwargs.pop("mean", MEAN), kwargs.pop("var", VAR)
    gamma, beta = kwargs.pop("gamma", GAMMA), kwargs.pop("beta", BETA)
    inputs = [a for a in (x, dy, mean, var, gamma, beta) if isinstance(a, np.ndarray)]
    if function == "inference":
        return lambda: cnorm.batch_norm_inference(x, mean, var, gamma, beta, **kwargs), inputs
    if function == "training":
        if kwargs.pop("running", False):
            kwargs.update(running_mean=np.zeros(C), running_var=np.ones(C))
        return lambda: cnorm.batch_norm_training(x, gamma, beta, **kwargs), inputs
    invstd = kwargs.pop("invstd", 1.0 / np.sqrt(var))
    return lambda: cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, **kwargs), inputs


@pytest.mark.parametrize("function, kwargs", BN_CASES,
                         ids=[f"{f} {k}" if len(repr(k)) < 60 else f"{f} {list(k)}"
                              for f, k in BN_CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_fast_paths_give_what_the_checked_path_gives(function, kwargs, dtype,
                                                                monkeypatch):
    kwargs = dict(kwargs)
    for name in ("x", "dy"):
        kwargs[name] = kwargs.get(name, X if name == "x" else DY).astype(dtype)
    outcomes = []
    for checked in (False, True):
        if checked:
            _checked_only(monkeypatch)
        call, inputs = _bn_call(function, kwargs)
        outcomes.append(_outcome(call, inputs))
    assert outcomes[0] == outcomes[1]
    assert not outcomes[0][1], "an input was modified"


def test_batch_norm_fast_paths_are_taken():
    """The calls the overhead benchmark times run in the fast paths."""
    out = np.empty_like(X)
    invstd = 1.0 / np.sqrt(VAR)
    bn = batchnorm._bn
    assert bn.infer_plain(X, MEAN, VAR, GAMMA, BETA, 1e-5, None, out, None, -1) is out
    y, mean, invstd_ = bn.train_plain(X, GAMMA, BETA, 1e-5, 0.1, True, "relu", out, 2, -1)
    assert y is out and mean.shape == invstd_.shape == (C,)
    dx, dgamma, dbeta = bn.backward_plain(DY, X, MEAN, invstd, GAMMA, None, None, True, out,
                                          None, -1)
    assert dx is out and dgamma.shape == dbeta.shape == (C,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("row, value", [("gamma", 1e300), ("gamma", 3e-41),
                                        ("running_var", 1e-300),
                                        ("eps", 1e-80)])
def test_layer_fast_path_widens_as_the_function(dtype, row, value):
    """A layer whose state (or eps) is outside float32's normal range gives the
    function's answer, which normalizes float32 data in float64 then."""
    layer = cnorm.BatchNorm(C, dtype=dtype)
    layer.running_mean[...] = MEAN
    layer.running_var[...] = VAR
    if row == "eps":
        layer.eps = value
    else:
        getattr(layer, row)[...] = value
    expected = cnorm.batch_norm_inference(X, layer.running_mean.astype(np.float64),
                                          layer.running_var.astype(np.float64),
                                          layer.gamma.astype(np.float64),
                                          layer.beta.astype(np.float64), layer.eps)
    np.testing.assert_array_equal(layer(X), expected)
