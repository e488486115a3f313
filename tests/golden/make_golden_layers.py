#!/usr/bin/env python3
"""Golden data for the layer objects (cnorm.BatchNorm, cnorm.LocalResponseNorm):
round trips through PyTorch, Keras 3 (torch backend) and ONNX Runtime.

Run inside a venv that has the frameworks (see README.md in this folder):

    KERAS_BACKEND=torch python tests/golden/make_golden_layers.py

Writes tests/golden/data/layers/*.npz (np.savez, no pickle; a folder of its
own, so make_golden.py, which deletes data/*.npz, leaves it alone). Tensors are
in the framework's own layout (key "layout": "NCHW" for torch and ONNX, "NHWC"
for the Keras cases), as a layer loaded from that framework takes them. Each
file records a layer's initial state, several training steps on fixed batches
(outputs, gradients and the running statistics after each step), and an
evaluation after them. See README.md for the schema.
"""
import glob
import os
import platform
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "layers")
VERSIONS = (f"python={platform.python_version()} numpy={np.__version__} torch={torch.__version__} "
            f"keras={keras.__version__} backend={keras.backend.backend()} "
            f"onnxruntime={ort.__version__} onnx={onnx.__version__}")
STEPS = 3

torch.set_num_threads(1)


def save(name, framework, layout, **arrays):
    out = {"framework": np.array(framework), "versions": np.array(VERSIONS),
           "layout": np.array(layout)}
    for key, value in arrays.items():
        value = np.asarray(value)
        assert value.dtype != object, (name, key)
        out[key] = value
    np.savez(os.path.join(OUT, name + ".npz"), **out)


def numpy(tensor):
    return tensor.detach().cpu().numpy().copy()


# ----------------------------------------------------------------------------- PyTorch
def torch_case(name, module_type, num_features, shape, dtype, seed, **options):
    """Random initial state, STEPS training steps, then eval, with gradients."""
    rng = np.random.default_rng(seed)
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    module = module_type(num_features, **options).to(torch_dtype)
    with torch.no_grad():
        if module.affine:
            module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2, num_features)))
            module.bias.copy_(torch.from_numpy(rng.standard_normal(num_features)))
        if module.track_running_stats:
            module.running_mean.copy_(torch.from_numpy(rng.standard_normal(num_features)))
            module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2, num_features)))
    arrays = {f"state_{key}": numpy(value) for key, value in module.state_dict().items()}
    arrays.update(eps=module.eps, momentum=np.nan if module.momentum is None else module.momentum,
                  affine=module.affine, track_running_stats=module.track_running_stats)

    def step(tag, train):
        module.train(train)
        x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        xt = torch.tensor(x, requires_grad=True)
        module.zero_grad()
        yt = module(xt)
        yt.backward(torch.from_numpy(dy))
        arrays.update({f"x_{tag}": x, f"dy_{tag}": dy, f"y_{tag}": numpy(yt),
                       f"dx_{tag}": numpy(xt.grad)})
        if module.affine:
            arrays[f"dgamma_{tag}"] = numpy(module.weight.grad)
            arrays[f"dbeta_{tag}"] = numpy(module.bias.grad)
        for key, value in module.state_dict().items():
            arrays[f"{key}_{tag}"] = numpy(value)

    for i in range(STEPS):
        step(str(i), True)
    step("eval", False)
    save(name, "torch", "NCHW", **arrays)


def torch_cases():
    torch_case("torch_bn2d_m0.1_f32", torch.nn.BatchNorm2d, 3, (4, 3, 5, 5), np.float32, 1)
    torch_case("torch_bn2d_mNone_f64", torch.nn.BatchNorm2d, 4, (2, 4, 3, 5), np.float64, 2,
               momentum=None)
    torch_case("torch_bn1d_m0.3_eps1e-3_f32", torch.nn.BatchNorm1d, 5, (8, 5), np.float32, 3,
               momentum=0.3, eps=1e-3)
    torch_case("torch_bn1d_noaffine_notrack_f32", torch.nn.BatchNorm1d, 6, (4, 6, 7), np.float32,
               4, affine=False, track_running_stats=False)


# ----------------------------------------------------------------------------- Keras 3
def keras_case(name, shape, seed, **options):
    rng = np.random.default_rng(seed)
    layer = keras.layers.BatchNormalization(**options)
    layer.build(shape)
    axis = layer.axis
    n = shape[axis]
    weights = []
    if layer.scale:
        weights.append(rng.uniform(0.5, 2, n).astype(np.float32))
    if layer.center:
        weights.append(rng.standard_normal(n).astype(np.float32))
    weights += [rng.standard_normal(n).astype(np.float32),
                rng.uniform(0.5, 2, n).astype(np.float32)]
    layer.set_weights(weights)
    arrays = {f"weights_in_{i}": w for i, w in enumerate(weights)}
    arrays.update(axis=axis, epsilon=layer.epsilon, momentum=layer.momentum, center=layer.center,
                  scale=layer.scale)

    def step(tag, training):
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        for variable in layer.trainable_variables:
            variable.value.grad = None
        yt = layer(xt, training=training)
        yt.backward(torch.from_numpy(dy))
        arrays.update({f"x_{tag}": x, f"dy_{tag}": dy, f"y_{tag}": numpy(yt),
                       f"dx_{tag}": numpy(xt.grad)})
        if layer.scale:
            arrays[f"dgamma_{tag}"] = numpy(layer.gamma.value.grad)
        if layer.center:
            arrays[f"dbeta_{tag}"] = numpy(layer.beta.value.grad)
        arrays[f"moving_mean_{tag}"] = np.asarray(layer.moving_mean.numpy())
        arrays[f"moving_variance_{tag}"] = np.asarray(layer.moving_variance.numpy())

    for i in range(STEPS):
        step(str(i), True)
    step("eval", False)
    save(name, "keras", "NHWC" if axis in (-1, len(shape) - 1) else f"axis {axis}", **arrays)


def keras_cases():
    keras_case("keras_bn_axis-1", (4, 5, 5, 3), 11, momentum=0.9)
    keras_case("keras_bn_axis1_nocenter", (4, 3, 5, 5), 12, axis=1, center=False)


# ----------------------------------------------------------------------------- ONNX Runtime
def session(model):
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def bn_initializers(rng, prefix, n):
    values = [rng.uniform(0.5, 2, n), rng.standard_normal(n), rng.standard_normal(n),
              rng.uniform(0.5, 2, n)]
    return [numpy_helper.from_array(v.astype(np.float32), f"{prefix}_{what}")
            for v, what in zip(values, ("scale", "B", "mean", "var"))]


def onnx_chain():
    """x -> bn1 -> lrn1 -> bn2 -> lrn2, every intermediate an output; inference."""
    rng = np.random.default_rng(21)
    shape = [2, 6, 4, 4]
    info = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    nodes = [
        helper.make_node("BatchNormalization", ["x", *(f"bn1_{w}" for w in ("scale", "B", "mean",
                         "var"))], ["t1"], name="bn1", epsilon=1e-3, momentum=0.8),
        helper.make_node("LRN", ["t1"], ["t2"], name="lrn1", size=3, alpha=1.0, beta=0.75,
                         bias=2.0),
        helper.make_node("BatchNormalization", ["t2", *(f"bn2_{w}" for w in ("scale", "B", "mean",
                         "var"))], ["t3"], name="bn2"),
        helper.make_node("LRN", ["t3"], ["y"], name="lrn2", size=5),
    ]
    initializers = bn_initializers(rng, "bn1", shape[1]) + bn_initializers(rng, "bn2", shape[1])
    graph = helper.make_graph(nodes, "chain", [info("x")],
                              [info(n) for n in ("t1", "t2", "t3", "y")], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    t1, t2, t3, y = session(model).run(None, {"x": x})
    save("onnx_chain", "onnxruntime", "NCHW", model=np.frombuffer(model.SerializeToString(),
         np.uint8), x=x, t1=t1, t2=t2, t3=t3, y=y,
         **{t.name: numpy_helper.to_array(t) for t in initializers})


def onnx_training():
    """One BatchNormalization node in training mode, STEPS steps: each step's
    model holds the previous step's running statistics as initializers."""
    rng = np.random.default_rng(22)
    shape, n = [4, 3, 5, 5], 3
    initializers = bn_initializers(rng, "bn", n)
    arrays = {}
    for i in range(STEPS):
        node = helper.make_node("BatchNormalization",
                                ["x", "bn_scale", "bn_B", "bn_mean", "bn_var"],
                                ["y", "running_mean", "running_var"], name="bn", epsilon=1e-4,
                                momentum=0.7, training_mode=1)
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape),
                   helper.make_tensor_value_info("running_mean", TensorProto.FLOAT, [n]),
                   helper.make_tensor_value_info("running_var", TensorProto.FLOAT, [n])]
        graph = helper.make_graph([node], "bn", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, shape)], outputs, initializer=initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
        if i == 0:
            arrays["model"] = np.frombuffer(model.SerializeToString(), np.uint8)
            arrays.update({t.name: numpy_helper.to_array(t) for t in initializers})
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        y, running_mean, running_var = session(model).run(None, {"x": x})
        arrays.update({f"x_{i}": x, f"y_{i}": y, f"running_mean_{i}": running_mean,
                       f"running_var_{i}": running_var})
        initializers = initializers[:2] + [numpy_helper.from_array(running_mean, "bn_mean"),
                                           numpy_helper.from_array(running_var, "bn_var")]
    save("onnx_bn_training", "onnxruntime", "NCHW", **arrays)


def main():
    os.makedirs(OUT, exist_ok=True)
    for path in glob.glob(os.path.join(OUT, "*.npz")):
        os.remove(path)
    print("versions:", VERSIONS)
    torch_cases()
    keras_cases()
    onnx_chain()
    onnx_training()
    files = sorted(glob.glob(os.path.join(OUT, "*.npz")))
    total = sum(os.path.getsize(f) for f in files)
    print(f"wrote {len(files)} files, {total / 1024:.1f} KiB total, to {OUT}")


if __name__ == "__main__":
    sys.exit(main())
