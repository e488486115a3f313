"""Round trips of the layer objects with the live frameworks: PyTorch, Keras 3
(torch backend), ONNX and ONNX Runtime, safetensors. Each test skips when its
framework is not installed (``pip install 'cnorm[frameworks]'`` has them all);
the stored golden data (test_layers.py) runs always. CI sets
CNORM_REQUIRE_FRAMEWORKS=1 where it installs them, so none is skipped there.

Each round trip loads a cnorm layer from the framework's layer, runs several
training steps side by side on the same batches, then evaluates: running
statistics, outputs and gradients agree within float rounding.
"""
import os
import types

import numpy as np
import pytest

import cnorm
from helpers import need
from test_layers import close

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 without TensorFlow

# Keras 3.15's variables warn under NumPy 2 when converted (np.array(variable)).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def torch_steps(module, layer, rng, shape, steps=3):
    """Training steps then an evaluation, module and layer side by side."""
    torch = need("torch")
    dtype = np.float64 if module_dtype(module) == torch.float64 else np.float32
    for step in range(steps + 1):
        training = step < steps
        module.train(training)
        x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        xt = torch.tensor(x, requires_grad=True)
        module.zero_grad()
        yt = module(xt)
        yt.backward(torch.from_numpy(dy))
        close(layer(x, training=training), yt.detach().numpy(), f"y, step {step}")
        dx, dgamma, dbeta = layer.backward(dy)
        close(dx, xt.grad.numpy(), f"dx, step {step}")
        if module.affine:
            close(dgamma, module.weight.grad.numpy(), f"dgamma, step {step}")
            close(dbeta, module.bias.grad.numpy(), f"dbeta, step {step}")
        for key, value in layer.state_dict().items():
            expected = module.state_dict()[key].numpy()
            if key == "num_batches_tracked":
                assert value == expected
            else:
                close(value, expected, f"{key}, step {step}")


def module_dtype(module):
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    import torch
    return torch.float32


def randomize(module, rng):
    torch = need("torch")
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            tensor.copy_(torch.from_numpy(rng.uniform(0.5, 2, tensor.shape)))
        if module.running_mean is not None:
            module.running_mean.copy_(torch.from_numpy(rng.standard_normal(module.num_features)))
            module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2, module.num_features)))
    return module


TORCH_CASES = [
    ("BatchNorm2d", dict(), (4, 3, 5, 5), "float32"),
    ("BatchNorm2d", dict(momentum=None), (4, 3, 5, 5), "float32"),
    ("BatchNorm2d", dict(momentum=None, eps=1e-3), (2, 3, 4, 4), "float64"),
    ("BatchNorm1d", dict(momentum=0.5), (6, 4), "float32"),
    ("BatchNorm1d", dict(affine=False), (6, 4, 5), "float32"),
    ("BatchNorm3d", dict(track_running_stats=False), (2, 3, 2, 3, 4), "float32"),
    ("BatchNorm3d", dict(affine=False, track_running_stats=False), (2, 3, 2, 3, 4), "float64"),
]


@pytest.mark.parametrize("kind,options,shape,dtype", TORCH_CASES)
def test_torch_round_trip(rng, kind, options, shape, dtype):
    torch = need("torch")
    module = randomize(getattr(torch.nn, kind)(shape[1], **options).to(getattr(torch, dtype)), rng)
    layer = cnorm.BatchNorm.from_torch(module)
    assert (layer.momentum, layer.affine, layer.track_running_stats, layer.axis) == (
        module.momentum, module.affine, module.track_running_stats, 1)
    assert layer.eps == module.eps
    if module.affine or module.track_running_stats:  # else the module has no dtype to copy
        assert layer.dtype == np.dtype(dtype)
    torch_steps(module, layer, rng, shape)
    # exported back: the state dict loads into a fresh module, exactly
    fresh = getattr(torch.nn, kind)(shape[1], **options).to(getattr(torch, dtype))
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    assert fresh.state_dict().keys() == module.state_dict().keys()
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[key].numpy(), value)


def test_torch_sync_batch_norm_and_channels_last(rng):
    torch = need("torch")
    module = randomize(torch.nn.SyncBatchNorm(4, momentum=0.2), rng).eval()
    layer = cnorm.BatchNorm.from_torch(module, axis=-1)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    close(layer(nhwc).transpose(0, 3, 1, 2), expected)


def test_torch_three_lines(rng):
    """The docs' front-page lines: a BatchNorm2d of a torch model, torch's eval output."""
    torch = need("torch")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    model.train()
    for _ in range(3):
        model(torch.randn(4, 3, 8, 8))
    model.eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        expected = model[1](x).numpy()
    bn = cnorm.BatchNorm.from_torch(model[1])
    y = bn(x.numpy())
    close(y, expected)


class _BatchNorm:
    pass


class BatchNorm2d(_BatchNorm):
    """Shaped as a torch batch norm (cnorm reads only that), with int8 state."""
    num_features, eps, momentum, affine, track_running_stats = 3, 1e-5, 0.1, False, True
    running_mean = types.SimpleNamespace(dtype="torch.int8")


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_torch_half_modules(rng, half):
    torch = need("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    module = randomize(torch.nn.BatchNorm2d(4), rng).to(getattr(torch, half)).eval()
    layer = cnorm.BatchNorm.from_torch(module)
    assert layer.dtype == np.float32
    np.testing.assert_array_equal(layer.running_var, module.running_var.float().numpy())
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x).to(getattr(torch, half))).float().numpy()
    x_half = x.astype(np.float16 if half == "float16" else ml_dtypes.bfloat16)
    y = layer(x_half)
    assert y.dtype == x_half.dtype
    ulp = 2.0 ** (-10 if half == "float16" else -7)
    np.testing.assert_allclose(y.astype(np.float32), expected, rtol=2 * ulp,
                               atol=2 * ulp * np.abs(expected).max())


def test_torch_errors():
    torch = need("torch")
    for module in (torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
                   torch.nn.Linear(3, 3), torch.nn.LocalResponseNorm(3)):
        with pytest.raises(TypeError, match="module must be a torch.nn BatchNorm"):
            cnorm.BatchNorm.from_torch(module)
    with pytest.raises(TypeError, match="module must be a torch.nn.LocalResponseNorm"):
        cnorm.LocalResponseNorm.from_torch(torch.nn.BatchNorm2d(3))
    with pytest.raises(TypeError, match="float16 or bfloat16, got int8"):
        cnorm.BatchNorm.from_torch(BatchNorm2d())
    with pytest.raises(ValueError, match="lacks"):
        cnorm.BatchNorm.from_state_dict({k: v for k, v in torch.nn.BatchNorm2d(3).state_dict()
                                         .items() if k != "bias"})


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_torch_lrn_round_trip(rng, size):
    torch = need("torch")
    module = torch.nn.LocalResponseNorm(size, alpha=0.5, beta=0.75, k=0.5)
    layer = cnorm.LocalResponseNorm.from_torch(module)
    x = rng.standard_normal((2, 6, 3, 4)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = module(xt)
    yt.backward(torch.from_numpy(dy))
    close(layer(x), yt.detach().numpy())
    close(layer.backward(dy), xt.grad.numpy())


def test_safetensors_state_dict(rng, tmp_path):
    need("safetensors")
    from safetensors.numpy import load_file, save_file

    layer = cnorm.BatchNorm(5, momentum=None)
    layer.gamma[:] = rng.uniform(0.5, 2, 5)
    layer(rng.standard_normal((4, 5)).astype(np.float32), training=True)
    path = tmp_path / "bn.safetensors"
    save_file(layer.state_dict(prefix="block.bn."), str(path))
    loaded = cnorm.BatchNorm.from_state_dict(load_file(str(path)), prefix="block.bn.",
                                             momentum=None, axis=-1)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x), layer(x))


# ---------------------------------------------------------------------------
# Keras 3

@pytest.mark.parametrize("options,shape", [
    (dict(momentum=0.9), (4, 5, 5, 3)),
    (dict(), (6, 4)),
    (dict(axis=1, center=False, epsilon=1e-2), (4, 3, 5)),
    (dict(scale=False, momentum=0.5), (4, 5, 3)),
])
def test_keras_round_trip(rng, options, shape):
    keras = need("keras")
    torch = need("torch")
    if keras.backend.backend() != "torch":
        pytest.skip("the Keras round trip runs on the torch backend")
    keras_layer = keras.layers.BatchNormalization(**options)
    keras_layer.build(shape)
    n = shape[keras_layer.axis]
    weights = ([rng.uniform(0.5, 2, n)] if keras_layer.scale else []) + (
        [rng.standard_normal(n)] if keras_layer.center else []) + [
        rng.standard_normal(n), rng.uniform(0.5, 2, n)]
    keras_layer.set_weights([w.astype(np.float32) for w in weights])
    layer = cnorm.BatchNorm.from_keras(keras_layer)
    assert layer.axis == keras_layer.axis and not layer.running_var_unbiased
    for step in range(4):
        training = step < 3
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        for variable in keras_layer.trainable_variables:
            variable.value.grad = None
        yt = keras_layer(xt, training=training)
        yt.backward(torch.from_numpy(dy))
        close(layer(x, training=training), yt.detach().numpy(), f"y, step {step}")
        dx, dgamma, dbeta = layer.backward(dy)
        close(dx, xt.grad.numpy(), f"dx, step {step}")
        if keras_layer.scale:
            close(dgamma, keras_layer.gamma.value.grad.numpy(), f"dgamma, step {step}")
        if keras_layer.center:
            close(dbeta, keras_layer.beta.value.grad.numpy(), f"dbeta, step {step}")
        close(layer.running_mean, keras_layer.moving_mean.numpy(), f"moving_mean, step {step}")
        close(layer.running_var, keras_layer.moving_variance.numpy(), f"moving_var, step {step}")
    if keras_layer.center and keras_layer.scale:  # exported back in get_weights order
        fresh = keras.layers.BatchNormalization(**options)
        fresh.build(shape)
        fresh.set_weights(layer.get_weights())
        for a, b in zip(fresh.get_weights(), layer.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_keras_errors():
    keras = need("keras")
    with pytest.raises(ValueError, match="not built"):
        cnorm.BatchNorm.from_keras(keras.layers.BatchNormalization())
    with pytest.raises(TypeError, match="Keras BatchNormalization"):
        cnorm.BatchNorm.from_keras(keras.layers.LayerNormalization())
    renorm = keras.layers.BatchNormalization(renorm=True)
    renorm.build((2, 3))
    with pytest.raises(ValueError, match="renorm"):
        cnorm.BatchNorm.from_keras(renorm)


# ---------------------------------------------------------------------------
# ONNX and ONNX Runtime

def onnx_model(rng, shape, training=False):
    """x -> bn1 -> lrn1 -> relu -> bn2 -> lrn2, every intermediate an output."""
    onnx = need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    n = shape[1]

    def bn(name, source, target, **attributes):
        values = [rng.uniform(0.5, 2, n), rng.standard_normal(n), rng.standard_normal(n),
                  rng.uniform(0.5, 2, n)]
        inputs = [f"{name}_{w}" for w in ("scale", "B", "mean", "var")]
        outputs = [target] + ([f"{name}_running_mean", f"{name}_running_var"] if training else [])
        node = helper.make_node("BatchNormalization", [source, *inputs], outputs, name=name,
                                training_mode=int(training), **attributes)
        return node, [numpy_helper.from_array(v.astype(np.float32), i)
                      for v, i in zip(values, inputs)]

    bn1, init1 = bn("bn1", "x", "t1", epsilon=1e-3, momentum=0.8)
    bn2, init2 = bn("bn2", "t3", "t4")
    nodes = [bn1, helper.make_node("LRN", ["t1"], ["t2"], name="lrn1", size=3, alpha=0.5,
                                   beta=0.75, bias=2.0),
             helper.make_node("Relu", ["t2"], ["t3"], name="relu"),
             bn2, helper.make_node("LRN", ["t4"], ["y"], name="lrn2", size=5)]
    info = lambda name, dims=shape: helper.make_tensor_value_info(  # noqa: E731
        name, TensorProto.FLOAT, list(dims))
    outputs = [info(name) for name in ("t1", "t2", "t3", "t4", "y")]
    if training:
        outputs += [info(f"{b}_running_{s}", [n]) for b in ("bn1", "bn2") for s in ("mean", "var")]
    graph = helper.make_graph(nodes, "layers", [info("x")], outputs, initializer=init1 + init2)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    onnx.checker.check_model(model)
    return model


def ort_run(model, x):
    ort = need("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in model.graph.output]
    return dict(zip(names, session.run(None, {"x": x})))


def test_onnx_model_into_layers_by_name(rng, tmp_path):
    onnx = need("onnx")
    shape = (2, 6, 4, 4)
    model = onnx_model(rng, shape)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    expected = ort_run(model, x)
    layers = {name: kind.from_onnx(model, name) for name, kind in [
        ("bn1", cnorm.BatchNorm), ("lrn1", cnorm.LocalResponseNorm),
        ("bn2", cnorm.BatchNorm), ("lrn2", cnorm.LocalResponseNorm)]}
    assert layers["lrn1"].convention == "onnx" and layers["bn1"].axis == 1
    assert layers["bn2"].eps == float(np.float32(1e-5)) and not layers["bn2"].running_var_unbiased
    assert layers["bn2"].momentum == 1 - float(np.float32(0.9))
    t1 = layers["bn1"](x)
    close(t1, expected["t1"], "bn1")
    close(layers["lrn1"](expected["t1"]), expected["t2"], "lrn1")
    close(layers["bn2"](expected["t3"]), expected["t4"], "bn2")
    close(layers["lrn2"](expected["t4"]), expected["y"], "lrn2")
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    np.testing.assert_array_equal(cnorm.BatchNorm.from_onnx(path, "bn1")(x), t1)


def test_onnx_runtime_training_mode(rng):
    need("onnx")
    from onnx import numpy_helper

    shape = (4, 6, 3, 3)
    model = onnx_model(rng, shape, training=True)
    layer = cnorm.BatchNorm.from_onnx(model, "bn1")
    for step in range(3):
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        expected = ort_run(model, x)
        close(layer(x, training=True), expected["t1"], f"y, step {step}")
        close(layer.running_mean, expected["bn1_running_mean"], f"running_mean, step {step}")
        close(layer.running_var, expected["bn1_running_var"], f"running_var, step {step}")
        # the next step's model starts from the updated statistics, as the layer does
        for initializer in model.graph.initializer:
            key = {"bn1_mean": "bn1_running_mean", "bn1_var": "bn1_running_var"}.get(
                initializer.name)
            if key:
                initializer.CopyFrom(numpy_helper.from_array(expected[key], initializer.name))


def test_onnx_errors(rng):
    need("onnx")
    model = onnx_model(rng, (2, 6, 4, 4))
    with pytest.raises(ValueError, match="'relu' is a Relu node, not BatchNormalization"):
        cnorm.BatchNorm.from_onnx(model, "relu")
    with pytest.raises(ValueError, match="'bn1' is a BatchNormalization node, not LRN"):
        cnorm.LocalResponseNorm.from_onnx(model, "bn1")
    with pytest.raises(ValueError, match=r"not a node of the model.*'bn1', 'lrn1', 'bn2', 'lrn2'"):
        cnorm.BatchNorm.from_onnx(model, "conv")
    model.graph.initializer.pop()  # bn2_var
    with pytest.raises(ValueError, match="input_var input 'bn2_var' of node 'bn2' is not an"):
        cnorm.BatchNorm.from_onnx(model, "bn2")
    with pytest.raises(TypeError, match="onnx.ModelProto"):
        cnorm.BatchNorm.from_onnx({"graph": None}, "bn1")
