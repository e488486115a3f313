"""Peer frameworks, each used only if installed: name -> callable for a Case.

cnorm itself never imports any of them. Each peer gets the same data in its
own preferred layout (the conversion is not timed) and the same thread count;
every builder checks the peer's first result against the NumPy reference, so a
misconfigured peer is reported, not timed. A builder returns None for an
operation the peer does not offer.

* torch: channels_last tensors (NCHW-contiguous ones for the nchw rows, bfloat16
  or float16 channels_last ones for the half rows); backward via autograd
  (retain_graph) timing the backward alone. The only peer of the nchw and half
  rows.
* onnxruntime: single-node graphs (LRN, BatchNormalization) on NCHW data, one
  session per case, intra-op threads fixed; inference ops only.
* tensorflow: NHWC eager ops (tf.nn.local_response_normalization, LRNGrad,
  FusedBatchNormV3 and its gradient).
* openvino: single-node models (LRN, BatchNormInference) compiled for the CPU
  plugin with INFERENCE_NUM_THREADS fixed and f32 precision.
"""
import importlib.util
import os

import numpy as np


PEERS = ("torch", "onnxruntime", "tensorflow", "openvino")
_problems = []


def available():
    have = [name for name in PEERS if importlib.util.find_spec(name) is not None]
    return have, [name for name in PEERS if name not in have]


def problems():
    """Peers that were skipped for a case, with the reason."""
    return list(_problems)


def set_threads(n_threads):
    """Fix the intra-op thread count of every installed peer that has a global one."""
    have, _ = available()
    if "torch" in have:
        import torch
        torch.set_num_threads(n_threads)
    if "tensorflow" in have:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n_threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised
            pass


def function(name, case, n_threads):
    """A zero-argument callable running `case` in peer `name`, or None."""
    if (case.variant != "nhwc" or case.name.endswith("_relu")) and name != "torch":
        return None  # the fused forms: PyTorch's eager relu(bn(x) + z) only
    try:
        built = _BUILDERS[name](case, n_threads)
        if built is None:
            return None
        run, result = built
        got = np.asarray(result(run()), dtype=np.float64)
    except Exception as exc:  # a peer that cannot run this case is reported, not fatal
        _problems.append(f"{name} {case.label} {case.shape}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}")
        return None
    expected = _expected(case)
    scale = np.max(np.abs(expected)) + 1e-30
    tolerance = 3e-2 if case.variant in ("float16", "bfloat16") else 2e-3
    if got.shape != expected.shape or np.max(np.abs(got - expected)) > tolerance * scale:
        _problems.append(f"{name} {case.label} {case.shape}: result differs from the reference")
        return None
    return run


_EXPECTED = {}


def _expected(case):
    key = (case.label, case.shape)
    if key not in _EXPECTED:
        output = case.reference()()
        _EXPECTED.clear()
        _EXPECTED[key] = output[0] if isinstance(output, tuple) else output
    return _EXPECTED[key]


def _nchw(array):
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2))


def _nhwc(array):
    return np.asarray(array).transpose(0, 2, 3, 1)


def _lrn_size(params):
    return 2 * params["depth_radius"] + 1


# --- torch -------------------------------------------------------------------------

def _torch(case, n_threads):
    import torch
    import torch.nn.functional as F

    a, p = case.arrays, case.params
    if case.variant == "nchw":  # NCHW-contiguous: PyTorch's native layout
        to_torch = torch.from_numpy
        back = lambda tensor: tensor.detach().numpy()
    elif case.variant in ("float16", "bfloat16"):  # channels_last, in the half type
        dtype = torch.float16 if case.variant == "float16" else torch.bfloat16
        to_torch = lambda array: torch.from_numpy(array.astype(np.float32)).permute(
            0, 3, 1, 2).to(dtype)
        back = lambda tensor: tensor.detach().float().permute(0, 2, 3, 1).numpy()
    else:
        to_torch = lambda array: torch.from_numpy(array).permute(0, 3, 1, 2)  # channels_last
        back = lambda tensor: tensor.detach().permute(0, 2, 3, 1).numpy()
    if case.name.startswith("lrn"):
        size = _lrn_size(p)
        args = dict(size=size, alpha=p["alpha"] * size, beta=p["beta"], k=p["bias"])
        x = to_torch(a["x"])
        if case.name.startswith("lrn_forward"):
            def run():
                with torch.no_grad():
                    return F.local_response_norm(x, **args)
            return run, back
        x = x.detach().requires_grad_(True)
        y = F.local_response_norm(x, **args)
        dy = to_torch(a["dy"])
        return (lambda: torch.autograd.grad(y, x, dy, retain_graph=True)[0]), back
    weight = torch.from_numpy(a["gamma"].astype(np.float32))
    bias = torch.from_numpy(a["beta"].astype(np.float32))
    x = to_torch(a["x"])
    relu = case.name.endswith("_relu")
    act = (lambda y: y.relu_()) if relu else (lambda y: y)
    if case.name in ("bn_inference", "bn_inference_relu", "bn_residual_relu"):
        mean = torch.from_numpy(a["mean"].astype(np.float32))
        var = torch.from_numpy(a["var"].astype(np.float32))
        z = to_torch(a["z"]) if "z" in a else None
        def run():
            with torch.no_grad():
                y = F.batch_norm(x, mean, var, weight, bias, False, 0.1, 1e-5)
                return act(y if z is None else y.add_(z))
        return run, back
    if case.name in ("bn_training", "bn_training_relu"):
        running_mean = torch.zeros(x.shape[1])
        running_var = torch.ones(x.shape[1])
        def run():
            with torch.no_grad():
                return act(F.batch_norm(x, running_mean, running_var, weight, bias, True, 0.1,
                                        1e-5))
        return run, back
    x = x.detach().requires_grad_(True)
    y = F.batch_norm(x, None, None, weight, bias, True, 0.1, 1e-5)
    if relu:
        y = F.relu(y)
    dy = to_torch(a["dy"])
    return (lambda: torch.autograd.grad(y, x, dy, retain_graph=True)[0]), back


# --- ONNX Runtime --------------------------------------------------------------------

def _onnxruntime(case, n_threads):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    a, p = case.arrays, case.params
    if case.name.startswith("lrn_forward"):
        size = _lrn_size(p)
        node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=p["alpha"] * size,
                                beta=p["beta"], bias=p["bias"])
        initializers = []
    elif case.name == "bn_inference":
        node = helper.make_node("BatchNormalization", ["x", "gamma", "beta", "mean", "var"],
                                ["y"], epsilon=1e-5)
        initializers = [helper.make_tensor(name, TensorProto.FLOAT, [a["x"].shape[-1]],
                                           a[key].astype(np.float32))
                        for name, key in [("gamma", "gamma"), ("beta", "beta"),
                                          ("mean", "mean"), ("var", "var")]]
    else:
        return None
    x = _nchw(a["x"])
    graph = helper.make_graph(
        [node], "cnorm_peer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return (lambda: session.run(None, {"x": x})[0]), _nhwc


# --- TensorFlow ----------------------------------------------------------------------

def _tensorflow(case, n_threads):
    import tensorflow as tf

    a, p = case.arrays, case.params
    x = tf.constant(a["x"])
    if case.name.startswith("lrn"):
        args = dict(depth_radius=p["depth_radius"], bias=p["bias"], alpha=p["alpha"],
                    beta=p["beta"])
        if case.name.startswith("lrn_forward"):
            return (lambda: tf.nn.local_response_normalization(x, **args)), np.asarray
        y = tf.nn.local_response_normalization(x, **args)
        dy = tf.constant(a["dy"])
        return (lambda: tf.raw_ops.LRNGrad(input_grads=dy, input_image=x, output_image=y,
                                           **args)), np.asarray
    scale = tf.constant(a["gamma"].astype(np.float32))
    offset = tf.constant(a["beta"].astype(np.float32))
    if case.name == "bn_inference":
        mean = tf.constant(a["mean"].astype(np.float32))
        var = tf.constant(a["var"].astype(np.float32))
        return (lambda: tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=mean, variance=var, epsilon=1e-5,
            data_format="NHWC", is_training=False)[0]), np.asarray
    empty = tf.constant([], dtype=tf.float32)
    if case.name == "bn_training":
        return (lambda: tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=empty, variance=empty, epsilon=1e-5,
            data_format="NHWC", is_training=True)[0]), np.asarray
    forward = tf.raw_ops.FusedBatchNormV3(x=x, scale=scale, offset=offset, mean=empty,
                                          variance=empty, epsilon=1e-5, data_format="NHWC",
                                          is_training=True)
    dy = tf.constant(a["dy"])
    return (lambda: tf.raw_ops.FusedBatchNormGradV3(
        y_backprop=dy, x=x, scale=scale, reserve_space_1=forward[3],
        reserve_space_2=forward[4], reserve_space_3=forward[5], epsilon=1e-5,
        data_format="NHWC", is_training=True)[0]), np.asarray


# --- OpenVINO ------------------------------------------------------------------------

def _openvino(case, n_threads):
    import openvino as ov
    import openvino.opset13 as ops

    a, p = case.arrays, case.params
    x = _nchw(a["x"])
    data = ops.parameter(list(x.shape), np.float32, name="x")
    if case.name.startswith("lrn_forward"):
        size = _lrn_size(p)
        # OpenVINO divides alpha by size**len(axes), as PyTorch and ONNX do.
        node = ops.lrn(data, ops.constant(np.array([1], np.int64)), p["alpha"] * size,
                       p["beta"], p["bias"], size)
    elif case.name == "bn_inference":
        f32 = lambda key: ops.constant(a[key].astype(np.float32))
        node = ops.batch_norm_inference(data, f32("gamma"), f32("beta"), f32("mean"),
                                        f32("var"), 1e-5)
    else:
        return None
    model = ov.Model([node], [data], "cnorm_peer")
    compiled = ov.Core().compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": n_threads, "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run():
        request.infer({0: x})
        return request.get_output_tensor(0).data
    return run, _nhwc


_BUILDERS = {"torch": _torch, "onnxruntime": _onnxruntime, "tensorflow": _tensorflow,
             "openvino": _openvino}
