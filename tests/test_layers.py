"""cnorm.BatchNorm and cnorm.LocalResponseNorm: the layer objects.

Against the public functions (bit for bit), the stored golden round trips of
PyTorch, Keras 3 and ONNX Runtime (tests/golden/data/layers, made by
tests/golden/make_golden_layers.py), bad input, staleness of the inference
coefficients and concurrent calls. The live round trips with the frameworks
are in test_layers_frameworks.py.
"""
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import cnorm

GOLDEN = pathlib.Path(__file__).parent / "golden" / "data" / "layers"
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}


def golden(name):
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as data:
        return dict(data)


def close(actual, expected, what=""):
    """Within float rounding: rtol of the dtype, relative to the largest expected value."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    rtol = RTOL[np.dtype(expected.dtype) if expected.dtype in RTOL else np.dtype(np.float32)]
    scale = max(float(np.abs(expected).max()), 1e-30) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def random_layer(rng, n_channels=8, dtype=np.float32, **options):
    layer = cnorm.BatchNorm(n_channels, dtype=dtype, **options)
    if layer.affine:
        layer.gamma[:] = rng.uniform(0.5, 2, n_channels)
        layer.beta[:] = rng.standard_normal(n_channels)
    if layer.track_running_stats:
        layer.running_mean[:] = rng.standard_normal(n_channels)
        layer.running_var[:] = rng.uniform(0.5, 2, n_channels)
    return layer


def as_float64(layer):
    """The layer's running_mean, running_var, gamma, beta as float64 (None if absent)."""
    return [None if a is None else a.astype(np.float64)
            for a in (layer.running_mean, layer.running_var, layer.gamma, layer.beta)]


# ---------------------------------------------------------------------------
# BatchNorm against the public functions

@pytest.mark.parametrize("shape", [(2, 8), (3, 4, 5, 8), (1, 8)])
def test_inference_is_batch_norm_inference_bit_for_bit(rng, dtype, shape):
    layer = random_layer(rng)
    x = rng.standard_normal(shape).astype(dtype)
    mean, var, gamma, beta = as_float64(layer)
    expected = cnorm.batch_norm_inference(x, mean, var, gamma, beta, eps=layer.eps)
    np.testing.assert_array_equal(layer(x), expected)
    out = np.empty_like(x)
    assert layer(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(layer(x.tolist()), cnorm.batch_norm_inference(
        x.tolist(), mean, var, gamma, beta, eps=layer.eps))
    in_place = x.copy()
    assert layer(in_place, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, expected)


def test_inference_slow_paths_give_the_same_result(rng):
    layer = random_layer(rng)
    x = rng.standard_normal((4, 8))
    expected = layer(x)
    np.testing.assert_array_equal(layer(np.asfortranarray(x)), expected)  # strided: copied
    np.testing.assert_array_equal(layer(x, n_threads=np.int64(1)), expected)
    np.testing.assert_array_equal(layer(x, training=np.False_), expected)


def channels_last_twin(layer):
    """A layer with the same state and channels on the last axis."""
    return cnorm.BatchNorm.from_state_dict(layer.state_dict(), eps=layer.eps,
                                           momentum=layer.momentum, axis=-1, dtype=layer.dtype)


@pytest.mark.parametrize("axis", [0, 1, -3])
def test_channel_axis_other_than_last(rng, dtype, axis):
    layer = random_layer(rng, 5, axis=axis)
    twin = channels_last_twin(layer)
    shape = [3, 4, 6]
    shape[axis] = 5
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    last = [np.moveaxis(x, axis, -1), np.moveaxis(dy, axis, -1)]
    for training in (False, True):
        expected = np.moveaxis(twin(last[0], training=training), -1, axis)
        y = layer(x, training=training) if training else layer(x, out=np.empty_like(x))
        assert y.flags.c_contiguous and y.shape == x.shape
        np.testing.assert_array_equal(y, expected)
        dx, dgamma, dbeta = layer.backward(dy)
        dx_last, dgamma_last, dbeta_last = twin.backward(last[1])
        np.testing.assert_array_equal(dx, np.moveaxis(dx_last, -1, axis))
        np.testing.assert_array_equal(dgamma, dgamma_last)
        np.testing.assert_array_equal(dbeta, dbeta_last)
    np.testing.assert_array_equal(layer.running_var, twin.running_var)
    assert layer.num_batches_tracked == twin.num_batches_tracked == 1


def test_training_is_batch_norm_training(rng, dtype):
    layer = random_layer(rng, dtype=dtype)
    mean, var = layer.running_mean.copy(), layer.running_var.copy()
    gamma, beta = layer.gamma.astype(np.float64), layer.beta.astype(np.float64)
    for step in range(3):
        x = rng.standard_normal((6, 3, 8)).astype(dtype)
        expected, batch_mean, invstd = cnorm.batch_norm_training(
            x, gamma, beta, layer.eps, running_mean=mean, running_var=var, momentum=0.1)
        np.testing.assert_array_equal(layer(x, training=True), expected)
        np.testing.assert_array_equal(layer.running_mean, mean)
        np.testing.assert_array_equal(layer.running_var, var)
        assert layer.num_batches_tracked == step + 1
        dy = rng.standard_normal(x.shape).astype(dtype)
        for got, want in zip(layer.backward(dy),
                             cnorm.batch_norm_backward(dy, x, batch_mean, invstd, gamma)):
            np.testing.assert_array_equal(got, want)
    # then inference with the updated statistics
    x = rng.standard_normal((2, 8)).astype(dtype)
    np.testing.assert_array_equal(layer(x), cnorm.batch_norm_inference(
        x, mean.astype(np.float64), var.astype(np.float64), gamma, beta, layer.eps))


def test_momentum_none_is_the_cumulative_average(rng):
    layer = cnorm.BatchNorm(3, momentum=None, dtype=np.float64)
    batches = [rng.standard_normal((10, 3)) * (i + 1) + i for i in range(4)]
    for x in batches:
        layer(x, training=True)
    means = np.array([x.mean(axis=0) for x in batches])
    variances = np.array([x.var(axis=0, ddof=1) for x in batches])
    np.testing.assert_allclose(layer.running_mean, means.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, variances.mean(axis=0), rtol=1e-12)
    assert layer.num_batches_tracked == 4


def test_without_running_stats_inference_uses_the_batch(rng):
    layer = cnorm.BatchNorm(4, affine=False, track_running_stats=False)
    assert layer.running_mean is None and layer.gamma is None and layer.weight is None
    x = rng.standard_normal((5, 4)).astype(np.float32)
    expected, mean, invstd = cnorm.batch_norm_training(x)
    np.testing.assert_array_equal(layer(x), expected)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(dy)[0],
                                  cnorm.batch_norm_backward(dy, x, mean, invstd)[0])
    layer(x, training=True)
    assert layer.num_batches_tracked == 0
    assert layer.state_dict() == {} and layer.get_weights() == []


def test_inference_backward_is_the_frozen_backward(rng, dtype):
    layer = random_layer(rng, dtype=dtype)
    x = rng.standard_normal((7, 8)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    layer(x)
    mean, var, gamma, _ = as_float64(layer)
    expected = cnorm.batch_norm_backward(dy, x, mean, 1 / np.sqrt(var + layer.eps), gamma,
                                         training=False)
    for got, want in zip(layer.backward(dy), expected):
        np.testing.assert_array_equal(got, want)
    out = np.empty_like(dy)
    assert layer.backward(dy, out=out)[0] is out


# ---------------------------------------------------------------------------
# The inference coefficients are never stale

def test_state_changes_are_seen_by_the_next_call(rng):
    layer = random_layer(rng)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    out = np.empty_like(x)

    def expected():
        mean, var, gamma, beta = as_float64(layer)
        return cnorm.batch_norm_inference(x, mean, var, gamma, beta, eps=layer.eps)

    layer(x, out=out)
    changes = [
        lambda: layer.gamma.__setitem__(3, 7.0),           # in place
        lambda: layer.running_var.__imul__(2),
        lambda: np.copyto(layer.running_mean, 0.5),
        lambda: setattr(layer, "beta", np.arange(8.0)),    # assigned (copied in)
        lambda: setattr(layer, "running_mean", rng.standard_normal(8).tolist()),
        lambda: setattr(layer, "eps", 0.5),
        lambda: layer.set_weights([np.ones(8), np.zeros(8), np.zeros(8), np.full(8, 3.0)]),
        lambda: layer.load_state_dict({k: v * 2 for k, v in layer.state_dict().items()}),
    ]
    state_view = layer.running_var
    for change in changes:
        before = out.copy()
        change()
        np.testing.assert_array_equal(layer(x, out=out), expected())
        assert not np.array_equal(out, before)
    assert layer.running_var is not None and np.shares_memory(state_view, layer.running_var)


def test_negative_running_var_written_in_place_is_an_error_at_the_call(rng):
    layer = random_layer(rng)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    out = np.zeros_like(x)
    layer(x)
    layer.running_var[2] = -1.0
    for call in (lambda: layer(x, out=out), lambda: layer(x.tolist())):
        with pytest.raises(ValueError, match="running_var must be >= 0"):
            call()
    assert not out.any()
    layer.running_var[2] = 1.0
    layer(x, out=out)
    assert out.any()


# ---------------------------------------------------------------------------
# Bad input: clear errors, nothing changed

def test_bad_constructor_arguments():
    for kwargs, error, match in [
        (dict(num_features=0), ValueError, "num_features must be >= 1"),
        (dict(num_features=2.0), TypeError, "num_features must be an integer"),
        (dict(num_features=2, eps=0), ValueError, "eps must be > 0"),
        (dict(num_features=2, momentum=1.5), ValueError, "momentum must be in"),
        (dict(num_features=2, affine=1), TypeError, "affine must be True or False"),
        (dict(num_features=2, axis=1.0), TypeError, "axis must be an integer"),
        (dict(num_features=2, dtype=np.int32), TypeError, "dtype must be numpy.float32"),
        (dict(num_features=2, dtype="float16"), TypeError, "dtype must be numpy.float32"),
    ]:
        with pytest.raises(error, match=match):
            cnorm.BatchNorm(**kwargs)
    with pytest.raises(TypeError, match="convention|size"):
        cnorm.LocalResponseNorm(2.5)
    with pytest.raises(ValueError, match="convention"):
        cnorm.LocalResponseNorm(3, convention="tf")
    with pytest.raises(ValueError, match="odd"):
        cnorm.LocalResponseNorm(4, convention="caffe")


def snapshot(layer):
    return {k: np.array(v) for k, v in layer.state_dict().items()}, layer.num_batches_tracked


def assert_unchanged(layer, before):
    state, count = snapshot(layer)
    assert count == before[1]
    for key in state:
        np.testing.assert_array_equal(state[key], before[0][key])


@pytest.mark.parametrize("training", [False, True])
def test_wrong_input_is_an_error_and_changes_nothing(rng, training):
    layer = random_layer(rng, axis=1)
    before = snapshot(layer)
    good = rng.standard_normal((2, 8, 3)).astype(np.float32)
    out = np.zeros_like(good)
    cases = [
        (rng.standard_normal((2, 7, 3)), {}, ValueError, "8 channels .num_features. on axis 1"),
        (rng.standard_normal((2, 3, 8)), {}, ValueError, "8 channels"),
        (rng.standard_normal(8), {}, ValueError, "at least 2 dimensions"),
        (good.astype(np.int64), {}, TypeError, "x must have dtype float32, float64, float16 or bfloat16"),
        (good, dict(out=np.zeros((2, 8, 4), np.float32)), ValueError, "out must have shape"),
        (good, dict(out=np.zeros_like(good, dtype=np.float64)), TypeError, "out must have dtype"),
        (good, dict(out=out[:, :, ::-1]), ValueError, "C-contiguous"),
        (good, dict(n_threads=0), ValueError, "n_threads must be >= 1"),
        (np.zeros((2, 8, 0), np.float32), {}, ValueError, "must not be empty"),
    ]
    if training:
        cases.append((np.ones((1, 8, 1), np.float32), {}, ValueError, "more than 1 value"))
    for x, kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            layer(x, training=training, **kwargs)
        assert_unchanged(layer, before)
    assert not out.any()
    with pytest.raises(TypeError, match="training must be True or False"):
        layer(good, training="yes")
    assert_unchanged(layer, before)
    # axis out of range for the input
    with pytest.raises(ValueError, match="axis 1 is out of bounds for x with 1 dimension"):
        cnorm.LocalResponseNorm(3, axis=1)(np.ones(4))


def test_backward_errors(rng):
    layer = random_layer(rng)
    with pytest.raises(RuntimeError, match="no.*forward|forward call first"):
        layer.backward(np.ones((2, 8), np.float32))
    x = rng.standard_normal((2, 8)).astype(np.float32)
    layer(x)
    with pytest.raises(ValueError, match="dy must have the shape of the last forward's x"):
        layer.backward(np.ones((3, 8), np.float32))
    with pytest.raises(TypeError, match="dy must have the dtype"):
        layer.backward(np.ones((2, 8)))
    for training in (False, True):
        layer(x, out=x, training=training)
        with pytest.raises(RuntimeError, match="out=x"):
            layer.backward(np.ones((2, 8), np.float32))
        layer(x, out=x.view(), training=training)  # the same memory, another object
        with pytest.raises(RuntimeError, match="out=x"):
            layer.backward(np.ones((2, 8), np.float32))
    lrn = cnorm.LocalResponseNorm(3)
    with pytest.raises(RuntimeError, match="forward call first"):
        lrn.backward(np.ones(4))
    lrn(x, out=x)
    with pytest.raises(RuntimeError, match="out=x"):
        lrn.backward(x)


def test_bad_state_assignments_change_nothing(rng):
    layer = random_layer(rng)
    before = snapshot(layer)
    for name, value, error, match in [
        ("gamma", np.ones(7), ValueError, r"gamma must have shape \(8,\)"),
        ("running_var", -np.ones(8), ValueError, "running_var must be >= 0"),
        ("beta", np.ones(8, complex), TypeError, "beta must hold real numbers"),
        ("running_mean", ["a"] * 8, TypeError, "running_mean must hold real numbers"),
        ("num_batches_tracked", -1, ValueError, "num_batches_tracked must be >= 0"),
        ("eps", -1.0, ValueError, "eps must be > 0"),
        ("momentum", "0.1", TypeError, "momentum must be a real number"),
    ]:
        with pytest.raises(error, match=match):
            setattr(layer, name, value)
        assert_unchanged(layer, before)
    for attribute in ("num_features", "affine", "axis", "dtype"):
        with pytest.raises(AttributeError):
            setattr(layer, attribute, 1)
    with pytest.raises(ValueError, match="affine=False"):
        cnorm.BatchNorm(2, affine=False).gamma = np.ones(2)
    with pytest.raises(ValueError, match="weights must hold 4 arrays"):
        layer.set_weights([np.ones(8)] * 3)
    with pytest.raises(ValueError, match="running_var must be >= 0"):
        layer.set_weights([np.ones(8), np.ones(8), np.ones(8), -np.ones(8)])
    assert_unchanged(layer, before)


# ---------------------------------------------------------------------------
# State dicts and Keras weights

def test_state_dict_round_trip(rng):
    layer = random_layer(rng, 5, momentum=None)
    layer(rng.standard_normal((4, 5)).astype(np.float32), training=True)
    state = layer.state_dict(prefix="features.1.")
    assert sorted(state) == [f"features.1.{k}" for k in
                             ("bias", "num_batches_tracked", "running_mean", "running_var",
                              "weight")]
    assert state["features.1.num_batches_tracked"].dtype == np.int64
    state["features.1.weight"][0] = 99  # a copy
    assert layer.gamma[0] != 99
    state["other.weight"] = np.ones(3)
    copy = cnorm.BatchNorm.from_state_dict(state, "features.1.", momentum=None, axis=-1)
    assert copy.gamma[0] == 99 and copy.num_batches_tracked == 1 and copy.momentum is None
    np.testing.assert_array_equal(copy.running_var, layer.running_var)
    assert copy.dtype == np.float32 and copy.axis == -1
    assert cnorm.BatchNorm.from_state_dict(state, "features.1.").axis == 1
    weights = layer.get_weights()
    assert len(weights) == 4
    np.testing.assert_array_equal(weights[3], layer.running_var)
    copy.set_weights(weights)
    np.testing.assert_array_equal(copy.gamma, layer.gamma)
    only_stats = cnorm.BatchNorm.from_state_dict({"running_mean": np.zeros(3),
                                                  "running_var": np.ones(3)})
    assert not only_stats.affine and only_stats.dtype == np.float64
    assert only_stats.num_batches_tracked == 0


def without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


def test_bad_state_dicts():
    good = cnorm.BatchNorm(3).state_dict()
    for mapping, prefix, error, match in [
        (without(good, "bias"), "", ValueError, "has 'weight' but lacks 'bias'"),
        (without(good, "running_mean"), "", ValueError, "lacks 'running_mean'"),
        (good, "bn.", ValueError, "no BatchNorm keys under prefix 'bn.'"),
        ({**good, "weight": np.ones(4)}, "", ValueError, r"weight must have shape \(3,\)"),
        ({**good, "running_var": np.ones((3, 1))}, "", ValueError, r"running_var must have shape"),
        ({**good, "running_mean": np.ones((3, 1))}, "", ValueError, "must be a vector"),
        ({**good, "bias": np.array(["a", "b", "c"])}, "", TypeError, "bias must hold real numbers"),
        ({**good, "num_batches_tracked": np.ones(2)}, "", ValueError,
         "num_batches_tracked must be one integer"),
        ([1, 2], "", TypeError, "mapping must be a mapping"),
    ]:
        with pytest.raises(error, match=match):
            cnorm.BatchNorm.from_state_dict(mapping, prefix)
    layer = cnorm.BatchNorm(3)
    before = snapshot(layer)
    with pytest.raises(ValueError, match=r"lacks \['running_var'\]"):
        layer.load_state_dict({k: v * 2 for k, v in good.items() if k != "running_var"})
    with pytest.raises(ValueError, match="running_var must have shape"):
        layer.load_state_dict({**{k: v * 2 for k, v in good.items()}, "running_var": np.ones(2)})
    assert_unchanged(layer, before)


def test_framework_objects_of_the_wrong_kind():
    class InstanceNorm2d:  # has the attributes of a batch norm, but is not one
        num_features, eps, momentum, affine, track_running_stats = 3, 1e-5, 0.1, False, True
        running_mean, running_var = np.zeros(3), np.ones(3)

    for call, match in [
        (lambda: cnorm.BatchNorm.from_torch(InstanceNorm2d()), "got InstanceNorm2d"),
        (lambda: cnorm.BatchNorm.from_torch(np.ones(3)), "module must be a torch.nn BatchNorm"),
        (lambda: cnorm.BatchNorm.from_keras(InstanceNorm2d()), "Keras BatchNormalization"),
        (lambda: cnorm.LocalResponseNorm.from_torch(InstanceNorm2d()), "LocalResponseNorm"),
    ]:
        with pytest.raises(TypeError, match=match):
            call()


# Objects shaped as the frameworks' (duck typing is all cnorm reads), so the
# import paths are tested without the frameworks.
class _BatchNorm:
    pass


class BatchNorm2d(_BatchNorm):
    def __init__(self, state, **flags):
        self.__dict__.update(flags)
        self.weight, self.bias = state.get("weight"), state.get("bias")
        self.running_mean, self.running_var = state.get("running_mean"), state.get("running_var")
        self.num_batches_tracked = state.get("num_batches_tracked")


class BatchNormalization:
    def __init__(self, **attributes):
        self.renorm = False
        self.__dict__.update(attributes)


def torch_like(d):
    state = {k[len("state_"):]: v for k, v in d.items() if k.startswith("state_")}
    momentum = None if np.isnan(d["momentum"]) else float(d["momentum"])
    return BatchNorm2d(state, num_features=d["x_0"].shape[1], eps=float(d["eps"]),
                       momentum=momentum, affine=bool(d["affine"]),
                       track_running_stats=bool(d["track_running_stats"]))


# ---------------------------------------------------------------------------
# Golden round trips (tests/golden/data/layers)

TORCH_FILES = ["torch_bn2d_m0.1_f32", "torch_bn2d_mNone_f64", "torch_bn1d_m0.3_eps1e-3_f32",
               "torch_bn1d_noaffine_notrack_f32"]


def replay(layer, d, steps, check_state, prefix=""):
    """Run the file's training steps and evaluation through `layer`, checking
    outputs, gradients and (check_state) the running statistics after each."""
    for tag in steps:
        training = tag != "eval"
        x, dy = d[f"x_{tag}"], d[f"dy_{tag}"]
        close(layer(x, training=training), d[f"y_{tag}"], f"y_{tag}")
        dx, dgamma, dbeta = layer.backward(dy)
        close(dx, d[f"dx_{tag}"], f"dx_{tag}")
        if f"dgamma_{tag}" in d:
            close(dgamma, d[f"dgamma_{tag}"], f"dgamma_{tag}")
        if f"dbeta_{tag}" in d:
            close(dbeta, d[f"dbeta_{tag}"], f"dbeta_{tag}")
        check_state(layer, tag)


def check_torch_state(d):
    def check(layer, tag):
        for key, value in layer.state_dict().items():
            if key == "num_batches_tracked":
                assert value == d[f"{key}_{tag}"]
            else:
                close(value, d[f"{key}_{tag}"], f"{key}_{tag}")
    return check


@pytest.mark.parametrize("name", TORCH_FILES)
def test_golden_torch(name):
    d = golden(name)
    layer = cnorm.BatchNorm.from_torch(torch_like(d))
    assert layer.axis == 1 and layer.dtype == d["x_0"].dtype
    assert layer.momentum == (None if np.isnan(d["momentum"]) else d["momentum"])
    replay(layer, d, ["0", "1", "2", "eval"], check_torch_state(d))
    if layer.affine:  # the same from the state dict, without any framework object
        state = {k[len("state_"):]: v for k, v in d.items() if k.startswith("state_")}
        layer = cnorm.BatchNorm.from_state_dict(state, eps=float(d["eps"]),
                                                momentum=layer.momentum)
        replay(layer, d, ["0", "1", "2", "eval"], check_torch_state(d))


@pytest.mark.parametrize("name", ["keras_bn_axis-1", "keras_bn_axis1_nocenter"])
def test_golden_keras(name):
    d = golden(name)
    weights = [d[f"weights_in_{i}"] for i in range(4) if f"weights_in_{i}" in d]
    names = (["gamma"] if d["scale"] else []) + (["beta"] if d["center"] else [])
    attributes = dict(zip(names, weights))
    keras_layer = BatchNormalization(
        axis=int(d["axis"]), epsilon=float(d["epsilon"]), momentum=float(d["momentum"]),
        center=bool(d["center"]), scale=bool(d["scale"]), moving_mean=weights[-2],
        moving_variance=weights[-1], **attributes)
    layer = cnorm.BatchNorm.from_keras(keras_layer)
    assert not layer.running_var_unbiased and layer.axis == int(d["axis"])

    def check(layer, tag):
        close(layer.running_mean, d[f"moving_mean_{tag}"], f"moving_mean_{tag}")
        close(layer.running_var, d[f"moving_variance_{tag}"], f"moving_variance_{tag}")

    replay(layer, d, ["0", "1", "2", "eval"], check)


def test_golden_onnx_chain():
    """x -> bn1 -> lrn1 -> bn2 -> lrn2 as ONNX Runtime ran it, layer by layer,
    built as from_onnx builds them (from_onnx itself: test_layers_frameworks.py)."""
    d = golden("onnx_chain")

    def bn(prefix, eps, momentum):
        layer = cnorm.BatchNorm(6, float(np.float32(eps)), 1 - float(np.float32(momentum)),
                                running_var_unbiased=False, axis=1)
        layer.set_weights([d[f"{prefix}_{w}"] for w in ("scale", "B", "mean", "var")])
        return layer

    layers = [bn("bn1", 1e-3, 0.8),
              cnorm.LocalResponseNorm(3, 1.0, 0.75, 2.0, convention="onnx", axis=1),
              bn("bn2", 1e-5, 0.9),
              cnorm.LocalResponseNorm(5, float(np.float32(1e-4)), 0.75, 1.0, convention="onnx",
                                      axis=1)]
    value = d["x"]
    for layer, key in zip(layers, ("t1", "t2", "t3", "y")):
        value = layer(value)
        close(value, d[key], key)


def test_golden_onnx_training():
    d = golden("onnx_bn_training")
    layer = cnorm.BatchNorm(3, float(np.float32(1e-4)), 1 - float(np.float32(0.7)),
                            running_var_unbiased=False, axis=1)
    layer.set_weights([d[f"bn_{w}"] for w in ("scale", "B", "mean", "var")])
    for i in range(3):
        close(layer(d[f"x_{i}"], training=True), d[f"y_{i}"], f"y_{i}")
        close(layer.running_mean, d[f"running_mean_{i}"], f"running_mean_{i}")
        close(layer.running_var, d[f"running_var_{i}"], f"running_var_{i}")


# ---------------------------------------------------------------------------
# LocalResponseNorm

@pytest.mark.parametrize("size,convention", [(1, "torch"), (2, "torch"), (2, "onnx"),
                                             (4, "onnx"), (5, "caffe"), (9, "torch")])
def test_lrn_is_local_response_norm_bit_for_bit(rng, dtype, size, convention):
    layer = cnorm.LocalResponseNorm(size, 1.0, 0.75, 0.5, convention=convention)
    x = rng.standard_normal((2, 3, 6)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    params = dict(alpha=1.0, beta=0.75, k=0.5, convention=convention)
    expected = cnorm.local_response_norm(x, size, **params)
    np.testing.assert_array_equal(layer(x), expected)
    np.testing.assert_array_equal(layer.backward(dy),
                                  cnorm.local_response_norm_backward(dy, x, size, **params))
    out = np.empty_like(x)
    assert layer(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(layer(x.tolist()), cnorm.local_response_norm(x.tolist(), size,
                                                                               **params))
    moved = cnorm.LocalResponseNorm(size, 1.0, 0.75, 0.5, convention=convention, axis=0)
    xt = np.ascontiguousarray(np.moveaxis(x, -1, 0))
    np.testing.assert_array_equal(moved(xt), np.moveaxis(expected, -1, 0))
    np.testing.assert_array_equal(moved.backward(np.moveaxis(dy, -1, 0)), np.moveaxis(
        cnorm.local_response_norm_backward(dy, x, size, **params), -1, 0))


def test_lrn_from_tf_is_tf_lrn_exactly(rng, dtype):
    layer = cnorm.LocalResponseNorm.from_tf(depth_radius=2, bias=0.5, alpha=0.3, beta=0.6)
    assert layer.size == 5 and layer.k == 0.5 and layer.alpha == 0.3 * 5
    x = rng.standard_normal((3, 4, 11)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    params = dict(depth_radius=2, bias=0.5, alpha=0.3, beta=0.6)
    np.testing.assert_array_equal(layer(x), cnorm.lrn(x, **params))
    np.testing.assert_array_equal(layer.backward(dy), cnorm.lrn_backward(dy, x, **params))
    np.testing.assert_array_equal(layer(x.tolist()), cnorm.lrn(x.tolist(), **params))
    default = cnorm.LocalResponseNorm.from_tf()
    assert (default.size, default.alpha, default.beta, default.k) == (11, 11.0, 0.5, 1.0)
    # docs/guide/conventions.md example: TF depth_radius=1, bias=0, alpha=1, beta=1 on 2*ones(C=3)
    example = cnorm.LocalResponseNorm.from_tf(1, 0.0, 1.0, 1.0)(np.full((2, 2, 2, 3), 2.0))
    np.testing.assert_allclose(example[0, 0, 0], [0.25, 1 / 6, 0.25], rtol=1e-15)
    assert "from_tf(depth_radius=1" in repr(cnorm.LocalResponseNorm.from_tf(1, 0.0, 1.0, 1.0))


def test_lrn_golden_files():
    """The LRN golden files of the functions, through layers built as each framework's."""
    data = pathlib.Path(__file__).parent / "golden" / "data"
    for path in sorted(data.glob("*_lrn_*.npz")):
        with np.load(path) as file:
            d = dict(file)
        convention = str(d["convention"])
        axis = 1 if str(d.get("layout", "NHWC")) == "NCHW" else -1  # torch_nchw_* files
        if convention == "tf":
            layer = cnorm.LocalResponseNorm.from_tf(int(d["depth_radius"]), float(d["bias"]),
                                                    float(d["alpha"]), float(d["beta"]),
                                                    axis=axis)
        else:
            layer = cnorm.LocalResponseNorm(int(d["size"]), float(d["alpha"]), float(d["beta"]),
                                            float(d["k"]), convention=convention, axis=axis)
        y = layer(d["x"])
        np.testing.assert_allclose(y, d["y"], rtol=1e-5, atol=1e-6, err_msg=path.name)
        if "dx" in d:
            np.testing.assert_allclose(layer.backward(d["dy"]), d["dx"], rtol=1e-5, atol=1e-5,
                                       err_msg=path.name)


# ---------------------------------------------------------------------------
# Threads

def test_concurrent_inference_calls_on_one_layer(rng):
    bn = random_layer(rng, 16)
    lrn = cnorm.LocalResponseNorm(5, 1.0, 0.75, 1.0)
    shapes = [(2, 16), (1, 8, 8, 16), (4, 30, 30, 16), (3, 16)]  # serial and parallel kernels
    inputs = [rng.standard_normal(shapes[i % 4]).astype((np.float32, np.float64)[i % 2])
              for i in range(32)]
    expected = [(bn(x), lrn(x)) for x in inputs]

    def call(i):
        x = inputs[i]
        out = np.empty_like(x)
        for _ in range(20):
            y_bn = bn(x, out=out).copy()
            y_lrn = lrn(x, n_threads=1 + i % 2)
        return y_bn, y_lrn

    with ThreadPoolExecutor(max_workers=8) as pool:
        for (y_bn, y_lrn), (want_bn, want_lrn) in zip(pool.map(call, range(32)), expected):
            np.testing.assert_array_equal(y_bn, want_bn)
            np.testing.assert_array_equal(y_lrn, want_lrn)


def test_concurrent_inference_on_the_checked_path(rng):
    layer = random_layer(rng, 6, axis=0)
    inputs = [rng.standard_normal((6, 5, 4)) for _ in range(16)]
    expected = [layer(x) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for got, want in zip(pool.map(lambda x: [layer(x.tolist()) for _ in range(5)], inputs),
                             expected):
            for y in got:
                np.testing.assert_array_equal(y, want)


def test_inference_while_another_thread_changes_the_state(rng):
    """Every call sees the state before or after a change, never a stale mix."""
    layer = random_layer(rng, 8)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    values = (layer.running_mean[3], layer.running_mean[3] + 5)
    outputs = []
    for value in values:
        layer.running_mean[3] = value
        outputs.append(layer(x))
    stop = []

    def toggle():
        for i in range(2000):
            layer.running_mean[3] = values[i % 2]
        stop.append(True)

    def infer():
        out = np.empty_like(x)
        seen = set()
        while not stop:
            layer(x, out=out)
            matches = [i for i, y in enumerate(outputs) if np.array_equal(out, y)]
            assert matches, out
            seen.update(matches)
        return seen

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [pool.submit(infer) for _ in range(3)]
        pool.submit(toggle).result()
        for result in results:
            result.result()
    layer.running_mean[3] = values[1]
    np.testing.assert_array_equal(layer(x), outputs[1])


def test_huge_axis_is_out_of_range_for_every_input():
    layer = cnorm.BatchNorm(3, axis=2**40)
    with pytest.raises(ValueError, match="out of bounds"):
        layer(np.ones((2, 3)))


def test_concurrent_training_calls_are_serialized(rng):
    layer = cnorm.BatchNorm(4, momentum=None, dtype=np.float64)
    batches = [rng.standard_normal((50, 4)) + i for i in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda x: layer(x, training=True), batches))
    assert layer.num_batches_tracked == 40
    # the cumulative average does not depend on the order of the batches
    np.testing.assert_allclose(layer.running_mean,
                               np.mean([x.mean(axis=0) for x in batches], axis=0), rtol=1e-12)


# ---------------------------------------------------------------------------
# cnorm imports no framework

def test_import_cnorm_imports_no_framework():
    code = ("import sys, cnorm, cnorm.layers; cnorm.BatchNorm(3)(__import__('numpy').ones((2, 3)));"
            "print(sorted(m for m in ('torch', 'keras', 'onnx', 'onnxruntime', 'safetensors',"
            " 'tensorflow') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_repr_and_docstring_example():
    assert repr(cnorm.BatchNorm(3)) == (
        "BatchNorm(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, "
        "running_var_unbiased=True, axis=-1, dtype=float32)")
    assert repr(cnorm.LocalResponseNorm(2, convention="onnx", axis=1)) == (
        "LocalResponseNorm(2, alpha=0.0001, beta=0.75, k=1.0, convention='onnx', axis=1)")


def test_pickle_and_deepcopy_keep_configuration_and_state(rng):
    import copy
    import pickle

    layer = random_layer(rng, 5, momentum=None, axis=1, dtype=np.float64, eps=1e-3)
    layer(rng.standard_normal((4, 5, 2)), training=True)
    lrns = [cnorm.LocalResponseNorm(4, 0.5, 0.6, 2.0, convention="onnx", axis=0),
            cnorm.LocalResponseNorm.from_tf(2, 0.5, 0.3, 0.6, axis=1)]
    for copier in (copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))):
        twin = copier(layer)
        assert repr(twin) == repr(layer) and twin.num_batches_tracked == 1
        for key, value in layer.state_dict().items():
            np.testing.assert_array_equal(twin.state_dict()[key], value)
        assert not np.shares_memory(twin.running_var, layer.running_var)
        x = rng.standard_normal((3, 5, 2))
        np.testing.assert_array_equal(twin(x), layer(x))
        for lrn in lrns:
            twin = copier(lrn)
            assert repr(twin) == repr(lrn)
            x = rng.standard_normal((6, 7))
            np.testing.assert_array_equal(twin(x), lrn(x))


@pytest.mark.parametrize("axis", [1, -3, 0])
@pytest.mark.parametrize("storage", ["float16", "float32", "float64", "bfloat16"])
def test_any_axis_and_storage_are_the_functions_bit_for_bit(rng, axis, storage):
    """The layers' fast path (C-contiguous float16/32/64) and checked path
    (bfloat16, transposed, misaligned out) call what the functions call."""
    if storage == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    else:
        dtype = np.dtype(storage)
    shape = [3, 5, 4]
    shape[axis] = 6
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    bn = random_layer(rng, 6, axis=axis)
    lrn = cnorm.LocalResponseNorm(3, 0.5, 0.75, 1.0, axis=axis)
    dy = rng.standard_normal(shape).astype(dtype)
    transposed = np.ascontiguousarray(x.transpose(2, 1, 0)).transpose(2, 1, 0)
    raw = np.empty(x.nbytes + x.itemsize, np.uint8)
    for x_ in (x, transposed):
        mean, var, gamma, beta = as_float64(bn)  # the training call below changes them
        misaligned = raw[1:1 + x.nbytes].view(x.dtype)  # in x_'s memory layout
        misaligned = (misaligned.reshape(x.shape) if x_ is x else
                      misaligned.reshape(x.shape[::-1]).transpose(2, 1, 0))
        expected = cnorm.batch_norm_inference(x_, mean, var, gamma, beta, bn.eps, axis=axis)
        np.testing.assert_array_equal(bn(x_), expected)
        np.testing.assert_array_equal(bn(x_, out=misaligned), expected)
        np.testing.assert_array_equal(
            bn.backward(dy)[0], cnorm.batch_norm_backward(
                dy, x_, mean, 1 / np.sqrt(var + bn.eps), gamma, training=False, axis=axis)[0])
        expected = cnorm.local_response_norm(x_, 3, 0.5, 0.75, 1.0, axis=axis)
        np.testing.assert_array_equal(lrn(x_), expected)
        np.testing.assert_array_equal(lrn(x_, out=misaligned), expected)
        np.testing.assert_array_equal(lrn.backward(dy), cnorm.local_response_norm_backward(
            dy, x_, 3, 0.5, 0.75, 1.0, axis=axis))
        y = bn(x_, training=True)
        twin, _, _ = cnorm.batch_norm_training(x_, gamma, beta, bn.eps, axis=axis)
        np.testing.assert_array_equal(y, twin)


def test_half_state_values_are_taken_exactly():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.array([0.1, -2.5, 3.0], dtype=ml_dtypes.bfloat16)
    layer = cnorm.BatchNorm.from_state_dict({"weight": values, "bias": values.astype(np.float16),
                                             "running_mean": values, "running_var": -values * 0 + 1})
    assert layer.dtype == np.float32
    np.testing.assert_array_equal(layer.gamma, values.astype(np.float32))
    np.testing.assert_array_equal(layer.beta, values.astype(np.float16).astype(np.float32))


def test_every_isa_build(rng, isa):
    """Layers made under each ISA build call that build's kernels (fast and checked paths)."""
    bn = random_layer(rng, 16, axis=1)
    lrn = cnorm.LocalResponseNorm(5, 0.5, 0.75, 1.0, axis=1)
    mean, var, gamma, beta = as_float64(bn)
    for dtype in (np.float32, np.float64, np.float16):
        x = rng.standard_normal((2, 16, 9, 7)).astype(dtype)
        for x_ in (x, x.tolist() if dtype == np.float64 else x):
            np.testing.assert_array_equal(bn(x_), cnorm.batch_norm_inference(
                x_, mean, var, gamma, beta, bn.eps, axis=1))
            np.testing.assert_array_equal(lrn(x_), cnorm.local_response_norm(
                x_, 5, 0.5, 0.75, 1.0, axis=1))
