#!/usr/bin/env python3
"""Generate golden reference data for cnorm from TensorFlow, PyTorch and ONNX Runtime.

Run inside a venv that has the frameworks (see README.md in this folder):

    /tmp/golden-venv/bin/python tests/golden/make_golden.py

Writes tests/golden/data/*.npz (np.savez, no pickle). All tensors are NHWC
(channels last), even for frameworks that compute in NCHW. Every file has the
string keys "op", "framework", "versions". See README.md for the schema.

Besides writing files, the script cross-checks every case against the canonical
formulas of docs/guide/conventions.md (numpy, float64) and prints the worst relative
errors, plus the worked examples of docs/guide/conventions.md (LRN and batch norm).
"""
import os
import sys
import glob
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import torch
import torch.nn.functional as F
import tensorflow as tf
import onnx
from onnx import helper, TensorProto
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data")

VERSIONS = (
    f"python={platform.python_version()} numpy={np.__version__} torch={torch.__version__} "
    f"tensorflow={tf.__version__} onnxruntime={ort.__version__} onnx={onnx.__version__} "
    f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '<unset>')}"
)

torch.set_num_threads(1)
CHECKS = []  # (case name, quantity, max relative error)


# ----------------------------------------------------------------------------- helpers
def s(v):
    """0-d numpy unicode array."""
    return np.array(str(v))


def f64(v):
    """0-d float64 array."""
    return np.array(float(v), dtype=np.float64)


def save(name, op, framework, **kw):
    out = {"op": s(op), "framework": s(framework), "versions": s(VERSIONS)}
    for k, v in kw.items():
        if isinstance(v, str):
            out[k] = s(v)
        elif isinstance(v, (float, int)) and not isinstance(v, bool):
            out[k] = f64(v)
        else:
            a = np.asarray(v)
            assert a.dtype != object, (name, k)
            out[k] = a
    np.savez(os.path.join(OUT, name + ".npz"), **out)


def nhwc_to_nchw(a):
    return np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2)))


def nchw_to_nhwc(a):
    return np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1)))


def relerr(got, ref):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    scale = max(np.max(np.abs(ref)), 1e-30)
    return float(np.max(np.abs(got - ref)) / scale) if ref.size else 0.0


def check(case, what, got, ref):
    CHECKS.append((case, what, relerr(got, ref)))


# ----------------------------------------------------------------------------- canonical references (docs/guide/conventions.md)
def lrn_ref(x, L, R, a, k, beta, dy=None):
    """Canonical LRN on (..., C), float64; returns y (and dx if dy given)."""
    x = np.asarray(x, np.float64)
    C = x.shape[-1]
    sq = x * x
    S = np.zeros_like(x)
    for c in range(C):
        lo, hi = max(0, c - L), min(C - 1, c + R)
        S[..., c] = sq[..., lo:hi + 1].sum(-1)
    D = k + a * S
    y = x * D ** (-beta)
    if dy is None:
        return y
    dy = np.asarray(dy, np.float64)
    t = dy * y / D
    acc = np.zeros_like(x)
    for i in range(C):  # mirrored window [i-R, i+L]
        lo, hi = max(0, i - R), min(C - 1, i + L)
        acc[..., i] = t[..., lo:hi + 1].sum(-1)
    dx = dy * D ** (-beta) - 2 * a * beta * x * acc
    return y, dx


def bn_ref_train(x, gamma, beta, eps, dy):
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    g = np.asarray(dy, np.float64).reshape(x.shape)
    m = x.shape[0]
    mean = x.mean(0)
    var_b = ((x - mean) ** 2).mean(0)
    invstd = 1 / np.sqrt(var_b + eps)
    xhat = (x - mean) * invstd
    y = gamma * xhat + beta
    dbeta = g.sum(0)
    dgamma = (g * xhat).sum(0)
    dx = gamma * invstd * (g - dbeta / m - xhat * dgamma / m)
    return y, dx, dgamma, dbeta, mean, var_b, invstd


def bn_ref_infer(x, gamma, beta, eps, rm, rv, dy):
    C = x.shape[-1]
    x = np.asarray(x, np.float64).reshape(-1, C)
    g = np.asarray(dy, np.float64).reshape(x.shape)
    inv = 1 / np.sqrt(np.asarray(rv, np.float64) + eps)
    y = gamma * (x - rm) * inv + beta
    return y, gamma * inv * g, (g * (x - rm) * inv).sum(0), g.sum(0)


def batch_stats64(x):
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    mean = x.mean(0)
    var_b = ((x - mean) ** 2).mean(0)
    return mean, var_b, x.shape[0]


# ============================================================================= LRN: TensorFlow
def tf_lrn_cases():
    cases = [
        # name, shape, depth_radius, bias, alpha, beta
        ("tf_lrn_0", (2, 4, 4, 16), 5, 1.0, 1.0, 0.5),        # TF defaults
        ("tf_lrn_1", (2, 3, 4, 8), 2, 2.0, 1e-4, 0.75),       # AlexNet
        ("tf_lrn_2", (2, 3, 4, 5), 1, 0.5, 1.0, 0.75),
        ("tf_lrn_3", (2, 3, 4, 3), 3, 0.5, 1.0, 1.0),         # window wider than C
        ("tf_lrn_4", (2, 4, 4, 7), 2, 0.25, 1.0, 0.5),        # small bias, alpha=1
    ]
    for i, (name, shape, r, bias, alpha, beta) in enumerate(cases):
        rng = np.random.default_rng(100 + i)
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            yt = tf.nn.local_response_normalization(xt, depth_radius=r, bias=bias, alpha=alpha, beta=beta)
        dx_tape = tape.gradient(yt, xt, output_gradients=tf.constant(dy)).numpy()
        y = yt.numpy()
        dx_raw = tf.raw_ops.LRNGrad(input_grads=dy, input_image=x, output_image=y, depth_radius=r,
                                    bias=bias, alpha=alpha, beta=beta).numpy()
        check(name, "dx tape vs LRNGrad", dx_tape, dx_raw)
        yr, dxr = lrn_ref(x, r, r, alpha, bias, beta, dy)
        check(name, "y vs canonical", y, yr)
        check(name, "dx vs canonical", dx_raw, dxr)
        save(name, "lrn", "tensorflow", convention="tf", x=x, y=y, dy=dy, dx=dx_raw,
             depth_radius=r, bias=bias, alpha=alpha, beta=beta)


# ============================================================================= LRN: PyTorch
def torch_lrn_forward(x_nhwc, size, alpha, beta, k, dy_nhwc=None):
    dt = torch.float64 if x_nhwc.dtype == np.float64 else torch.float32
    xt = torch.tensor(nhwc_to_nchw(x_nhwc), dtype=dt, requires_grad=True)
    yt = F.local_response_norm(xt, size, alpha=alpha, beta=beta, k=k)
    y = nchw_to_nhwc(yt.detach().numpy())
    if dy_nhwc is None:
        return y
    yt.backward(torch.tensor(nhwc_to_nchw(dy_nhwc), dtype=dt))
    return y, nchw_to_nhwc(xt.grad.numpy())


def torch_lrn_cases():
    cases = []
    for size in (1, 2, 3, 4, 5):
        for dt in ("f32", "f64"):
            cases.append((f"torch_lrn_size{size}_{dt}", dt, (2, 3, 4, 8), size, 1.0, 0.75, 0.5))
    cases += [
        ("torch_lrn_size5_default_f32", "f32", (2, 4, 4, 16), 5, 1e-4, 0.75, 1.0),
        ("torch_lrn_size4_default_f64", "f64", (2, 3, 4, 8), 4, 1e-4, 0.75, 1.0),
        ("torch_lrn_C3_size5_f32", "f32", (2, 3, 4, 3), 5, 1.0, 1.0, 0.5),
        ("torch_lrn_C3_size5_f64", "f64", (2, 3, 4, 3), 5, 1.0, 1.0, 0.5),
    ]
    for i, (name, dt, shape, size, alpha, beta, k) in enumerate(cases):
        rng = np.random.default_rng(200 + i)
        npdt = np.float64 if dt == "f64" else np.float32
        x = rng.standard_normal(shape).astype(npdt)
        dy = rng.standard_normal(shape).astype(npdt)
        y, dx = torch_lrn_forward(x, size, alpha, beta, k, dy)
        yr, dxr = lrn_ref(x, size // 2, (size - 1) // 2, alpha / size, k, beta, dy)
        check(name, "y vs canonical", y, yr)
        check(name, "dx vs canonical", dx, dxr)
        save(name, "lrn", "torch", convention="torch", x=x, y=y, dy=dy, dx=dx,
             size=size, alpha=alpha, beta=beta, k=k)


# ============================================================================= LRN: ONNX Runtime
def ort_session(model):
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # silence the expected error log for even LRN sizes
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def onnx_lrn_model(shape_nchw, size, alpha, beta, bias):
    node = helper.make_node("LRN", ["X"], ["Y"], size=size, alpha=alpha, beta=beta, bias=bias)
    graph = helper.make_graph([node], "lrn",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(shape_nchw))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(shape_nchw))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def onnx_lrn_forward(x_nhwc, size, alpha, beta, bias):
    """ONNX Runtime CPU. Its LRN kernel refuses EVEN sizes (constructor check size_ % 2 == 1)."""
    x = nhwc_to_nchw(x_nhwc.astype(np.float32))
    (y,) = ort_session(onnx_lrn_model(x.shape, size, alpha, beta, bias)).run(None, {"X": x})
    return nchw_to_nhwc(y)


def onnx_ref_lrn_forward(x_nhwc, size, alpha, beta, bias):
    """onnx.reference.ReferenceEvaluator, used for EVEN sizes that ORT rejects.

    onnx<=1.23's reference LRN loops `for c in range(x.shape[0])` (batch axis, onnx/onnx#7805,
    fixed upstream by onnx/onnx#8331): it is only correct when N == C, so callers must pass N == C.
    """
    from onnx.reference import ReferenceEvaluator
    x = nhwc_to_nchw(x_nhwc.astype(np.float32))
    assert x.shape[0] == x.shape[1], "onnx.reference LRN is only correct for N == C (onnx#7805)"
    (y,) = ReferenceEvaluator(onnx_lrn_model(x.shape, size, alpha, beta, bias)).run(None, {"X": x})
    return nchw_to_nhwc(y)


def onnx_lrn_cases():
    cases = [(f"onnx_lrn_size{n}", (8, 2, 3, 8), n, 1.0, 0.75, 0.5) for n in (2, 3, 4, 5)]
    cases += [
        ("onnx_lrn_size5_default", (2, 4, 4, 16), 5, 1e-4, 0.75, 1.0),
        ("onnx_lrn_size2_default", (8, 2, 3, 8), 2, 1e-4, 0.75, 1.0),
        ("onnx_lrn_C3_size5", (2, 3, 4, 3), 5, 1.0, 1.0, 0.5),
    ]
    for i, (name, shape, size, alpha, beta, bias) in enumerate(cases):
        rng = np.random.default_rng(300 + i)
        x = rng.standard_normal(shape).astype(np.float32)
        if size % 2 == 1:
            fw = "onnxruntime"
            y = onnx_lrn_forward(x, size, alpha, beta, bias)
            if shape[0] == shape[-1]:
                check(name, "ORT vs onnx.reference", y, onnx_ref_lrn_forward(x, size, alpha, beta, bias))
        else:
            fw = "onnx.reference"
            try:
                onnx_lrn_forward(x, size, alpha, beta, bias)
                raise SystemExit("ORT accepted an even LRN size: use it for even sizes too")
            except ort.capi.onnxruntime_pybind11_state.Fail:
                pass
            y = onnx_ref_lrn_forward(x, size, alpha, beta, bias)
        yr = lrn_ref(x, (size - 1) // 2, size // 2, alpha / size, bias, beta)  # ceil((n-1)/2) == n//2
        check(name, "y vs canonical", y, yr)
        save(name, "lrn", fw, convention="onnx", x=x, y=y,
             size=size, alpha=alpha, beta=beta, k=bias)


# ============================================================================= BN: PyTorch
def torch_bn_train_cases():
    cases = [
        # name, dtype, shape, momentum, eps, mean_scale/offset
        ("torch_bn_train_m0.1_f32", "f32", (2, 3, 4, 6), 0.1, 1e-5, None),
        ("torch_bn_train_m0.1_f64", "f64", (2, 3, 4, 6), 0.1, 1e-5, None),
        ("torch_bn_train_mNone_f32", "f32", (2, 3, 4, 6), None, 1e-5, None),
        ("torch_bn_train_mNone_f64", "f64", (2, 3, 4, 6), None, 1e-3, None),
        ("torch_bn_train_m0.3_eps0.1_f32", "f32", (2, 4, 4, 16), 0.3, 0.1, None),
        ("torch_bn_train_bigmean_f32", "f32", (2, 4, 4, 8), 0.1, 1e-5, 1e4),
    ]
    for i, (name, dt, shape, momentum, eps, big) in enumerate(cases):
        rng = np.random.default_rng(400 + i)
        npdt = np.float64 if dt == "f64" else np.float32
        tdt = torch.float64 if dt == "f64" else torch.float32
        C = shape[-1]
        gamma = rng.uniform(0.5, 1.5, C).astype(npdt) * rng.choice([-1, 1], C).astype(npdt)
        beta = rng.standard_normal(C).astype(npdt)
        rm_in = rng.standard_normal(C).astype(npdt)
        rv_in = rng.uniform(0.5, 2.0, C).astype(npdt)
        xs = []
        for b in range(3):
            if big is not None:
                mu = big * (1 + 0.1 * rng.standard_normal(C))   # means ~1e4, std 1
                sd = np.ones(C)
            else:
                mu = 2 * rng.standard_normal(C)
                sd = rng.uniform(0.5, 3.0, C)
            xs.append((mu + sd * rng.standard_normal(shape)).astype(npdt))
        dy = rng.standard_normal(shape).astype(npdt)

        # nn.BatchNorm2d does the running-stat bookkeeping itself (momentum=None: cumulative
        # average with factor 1/num_batches_tracked, num_batches_tracked starting at 0)
        bn = torch.nn.BatchNorm2d(C, eps=eps, momentum=momentum, dtype=tdt)
        with torch.no_grad():
            bn.weight.copy_(torch.tensor(gamma))
            bn.bias.copy_(torch.tensor(beta))
            bn.running_mean.copy_(torch.tensor(rm_in))
            bn.running_var.copy_(torch.tensor(rv_in))
        bn.train()
        w, bb, rm, rv = bn.weight, bn.bias, bn.running_mean, bn.running_var
        extra = {}
        ref_rm, ref_rv = rm_in.astype(np.float64), rv_in.astype(np.float64)
        for b, x in enumerate(xs):
            factor = (1.0 / (b + 1)) if momentum is None else momentum
            xt = torch.tensor(nhwc_to_nchw(x), dtype=tdt, requires_grad=(b == 2))
            bn.zero_grad(set_to_none=True)
            yt = bn(xt)
            extra[f"running_mean_out_{b}"] = rm.detach().numpy().copy()
            extra[f"running_var_out_{b}"] = rv.detach().numpy().copy()
            mean64, varb64, m = batch_stats64(x)
            ref_rm = (1 - factor) * ref_rm + factor * mean64
            ref_rv = (1 - factor) * ref_rv + factor * varb64 * m / (m - 1)
            check(name, f"running_mean after batch {b}", rm.detach().numpy(), ref_rm)
            check(name, f"running_var after batch {b}", rv.detach().numpy(), ref_rv)
        assert int(bn.num_batches_tracked) == 3
        yt.backward(torch.tensor(nhwc_to_nchw(dy), dtype=tdt))
        x = xs[2]
        y = nchw_to_nhwc(yt.detach().numpy())
        dx = nchw_to_nhwc(xt.grad.numpy())
        dgamma = w.grad.numpy().copy()
        dbeta = bb.grad.numpy().copy()
        rm, rv = rm.detach(), rv.detach()
        # saved mean / invstd from the aten op on the last batch (running stats copies)
        with torch.no_grad():
            y2, save_mean, save_invstd = torch.native_batch_norm(
                torch.tensor(nhwc_to_nchw(x), dtype=tdt), torch.tensor(gamma, dtype=tdt),
                torch.tensor(beta, dtype=tdt), torch.tensor(rm_in, dtype=tdt),
                torch.tensor(rv_in, dtype=tdt), True, 0.1, eps)
        check(name, "native_batch_norm y == BatchNorm2d y", nchw_to_nhwc(y2.numpy()), y)
        yr, dxr, dgr, dbr, mean64, varb64, inv64 = bn_ref_train(x, gamma, beta, eps, dy)
        check(name, "y vs canonical", y, yr.reshape(x.shape))
        check(name, "dx vs canonical", dx, dxr.reshape(x.shape))
        check(name, "dgamma vs canonical", dgamma, dgr)
        check(name, "dbeta vs canonical", dbeta, dbr)
        check(name, "saved_mean vs mean", save_mean.numpy(), mean64)
        check(name, "saved_invstd vs 1/sqrt(var_b+eps)", save_invstd.numpy(), inv64)
        save(name, "batch_norm", "torch", mode="training",
             x=x, x_0=xs[0], x_1=xs[1], x_2=xs[2], gamma=gamma, beta=beta, eps=eps,
             momentum=(np.nan if momentum is None else momentum),
             y=y, batch_mean=mean64, batch_var_biased=varb64,
             saved_mean=save_mean.numpy(), saved_invstd=save_invstd.numpy(),
             running_mean_in=rm_in, running_var_in=rv_in,
             running_mean_out=rm.numpy().copy(), running_var_out=rv.numpy().copy(),
             dy=dy, dx=dx, dgamma=dgamma, dbeta=dbeta, **extra)


def torch_bn_eval_cases():
    cases = [
        ("torch_bn_eval_f32", "f32", (2, 3, 4, 6), 1e-5),
        ("torch_bn_eval_f64", "f64", (2, 4, 4, 8), 1e-3),
    ]
    for i, (name, dt, shape, eps) in enumerate(cases):
        rng = np.random.default_rng(500 + i)
        npdt = np.float64 if dt == "f64" else np.float32
        tdt = torch.float64 if dt == "f64" else torch.float32
        C = shape[-1]
        gamma = (rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C)).astype(npdt)
        beta = rng.standard_normal(C).astype(npdt)
        rm_ = rng.standard_normal(C).astype(npdt)
        rv_ = rng.uniform(0.5, 2.0, C).astype(npdt)
        x = (2 * rng.standard_normal(C) + rng.uniform(0.5, 3.0, C) * rng.standard_normal(shape)).astype(npdt)
        dy = rng.standard_normal(shape).astype(npdt)
        xt = torch.tensor(nhwc_to_nchw(x), dtype=tdt, requires_grad=True)
        w = torch.tensor(gamma, dtype=tdt, requires_grad=True)
        bb = torch.tensor(beta, dtype=tdt, requires_grad=True)
        rmt, rvt = torch.tensor(rm_, dtype=tdt), torch.tensor(rv_, dtype=tdt)
        yt = F.batch_norm(xt, rmt, rvt, w, bb, training=False, momentum=0.1, eps=eps)
        yt.backward(torch.tensor(nhwc_to_nchw(dy), dtype=tdt))
        assert np.array_equal(rmt.numpy(), rm_) and np.array_equal(rvt.numpy(), rv_)
        y = nchw_to_nhwc(yt.detach().numpy())
        dx = nchw_to_nhwc(xt.grad.numpy())
        yr, dxr, dgr, dbr = bn_ref_infer(x, gamma, beta, eps, rm_, rv_, dy)
        check(name, "y vs canonical", y, yr.reshape(shape))
        check(name, "dx vs canonical", dx, dxr.reshape(shape))
        check(name, "dgamma vs canonical", w.grad.numpy(), dgr)
        check(name, "dbeta vs canonical", bb.grad.numpy(), dbr)
        save(name, "batch_norm", "torch", mode="inference", x=x, gamma=gamma, beta=beta, eps=eps,
             running_mean=rm_, running_var=rv_, y=y, dy=dy, dx=dx,
             dgamma=w.grad.numpy().copy(), dbeta=bb.grad.numpy().copy())


# ============================================================================= BN: TensorFlow
TF_TRAIN_NOTE = ("FusedBatchNormV3 is_training=True (CPU): reserve_space_1 = batch mean (saved_mean); "
                 "reserve_space_2 = BIASED batch variance var_b (saved_var_or_invstd; NOT invstd, on this CPU build; "
                 "a GPU/cuDNN kernel may store invstd instead, not checked here); the op's batch_mean/batch_variance outputs are the "
                 "UPDATED running statistics (1-f)*running_in + f*batch_stat with the UNBIASED variance, "
                 "stored as running_mean_out/running_var_out. Gradient: FusedBatchNormGradV3 with "
                 "is_training=True fed reserve_space_1/2/3 from the forward.")
TF_INFER_NOTE = ("FusedBatchNormV3 is_training=False: the forward's reserve_space_1/2 outputs are "
                 "unused placeholders (not stored); the gradient FusedBatchNormGradV3 with "
                 "is_training=False was fed reserve_space_1=running_mean, reserve_space_2=running_var "
                 "(as TF's own registered gradient does); saved_mean/saved_var_or_invstd hold those "
                 "inputs, i.e. the running statistics.")


def tf_bn_cases():
    cases = [
        # name, shape, is_training, factor, eps, big mean
        ("tf_bn_train_f1.0", (2, 3, 4, 6), True, 1.0, 1e-3, None),
        ("tf_bn_train_f0.3", (2, 4, 4, 8), True, 0.3, 1e-4, None),
        ("tf_bn_train_bigmean_f1.0", (2, 4, 4, 8), True, 1.0, 1e-3, 1e4),
        ("tf_bn_infer", (2, 3, 4, 6), False, 1.0, 1e-3, None),
        ("tf_bn_infer_eps1e-4", (2, 4, 4, 16), False, 1.0, 1e-4, None),
    ]
    for i, (name, shape, is_training, factor, eps, big) in enumerate(cases):
        rng = np.random.default_rng(600 + i)
        C = shape[-1]
        gamma = (rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C)).astype(np.float32)
        beta = rng.standard_normal(C).astype(np.float32)
        rm_in = rng.standard_normal(C).astype(np.float32)
        rv_in = rng.uniform(0.5, 2.0, C).astype(np.float32)
        if big is not None:
            mu, sd = big * (1 + 0.1 * rng.standard_normal(C)), np.ones(C)
        else:
            mu, sd = 2 * rng.standard_normal(C), rng.uniform(0.5, 3.0, C)
        x = (mu + sd * rng.standard_normal(shape)).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        y, bm, bv, rs1, rs2, rs3 = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=rm_in, variance=rv_in, epsilon=eps,
            exponential_avg_factor=factor, data_format="NHWC", is_training=is_training)
        y, bm, bv, rs1, rs2 = (t.numpy() for t in (y, bm, bv, rs1, rs2))
        if is_training:
            g_rs1, g_rs2 = rs1, rs2
        else:
            g_rs1, g_rs2 = rm_in, rv_in
        dx, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=dy, x=x, scale=gamma, reserve_space_1=g_rs1, reserve_space_2=g_rs2,
            reserve_space_3=rs3, epsilon=eps, data_format="NHWC", is_training=is_training)
        dx, dgamma, dbeta = dx.numpy(), dgamma.numpy(), dbeta.numpy()
        # cross-check against GradientTape through the same op
        xt, gt, bt = tf.constant(x), tf.constant(gamma), tf.constant(beta)
        with tf.GradientTape() as tape:
            tape.watch([xt, gt, bt])
            yt = tf.raw_ops.FusedBatchNormV3(
                x=xt, scale=gt, offset=bt, mean=rm_in, variance=rv_in, epsilon=eps,
                exponential_avg_factor=factor, data_format="NHWC", is_training=is_training)[0]
        gx, gg, gb = tape.gradient(yt, [xt, gt, bt], output_gradients=tf.constant(dy))
        check(name, "dx raw vs tape", dx, gx.numpy())
        check(name, "dgamma raw vs tape", dgamma, gg.numpy())
        check(name, "dbeta raw vs tape", dbeta, gb.numpy())
        mean64, varb64, m = batch_stats64(x)
        common = dict(x=x, gamma=gamma, beta=beta, eps=eps, y=y, dy=dy, dx=dx, dgamma=dgamma, dbeta=dbeta)
        if is_training:
            yr, dxr, dgr, dbr, _, _, _ = bn_ref_train(x, gamma, beta, eps, dy)
            check(name, "y vs canonical", y, yr.reshape(shape))
            check(name, "dx vs canonical", dx, dxr.reshape(shape))
            check(name, "dgamma vs canonical", dgamma, dgr)
            check(name, "dbeta vs canonical", dbeta, dbr)
            check(name, "reserve_space_1 vs batch mean", rs1, mean64)
            check(name, "reserve_space_2 vs var_b", rs2, varb64)
            check(name, "batch_mean out vs running update", bm, (1 - factor) * rm_in + factor * mean64)
            check(name, "batch_variance out vs running update (unbiased)", bv,
                  (1 - factor) * rv_in + factor * varb64 * m / (m - 1))
            save(name, "batch_norm", "tensorflow", mode="training", **common,
                 batch_mean=mean64, batch_var_biased=varb64,
                 saved_mean=rs1, saved_var_or_invstd=rs2, saved_note=TF_TRAIN_NOTE,
                 running_mean_in=rm_in, running_var_in=rv_in,
                 running_mean_out=bm, running_var_out=bv, exponential_avg_factor=factor)
        else:
            yr, dxr, dgr, dbr = bn_ref_infer(x, gamma, beta, eps, rm_in, rv_in, dy)
            check(name, "y vs canonical", y, yr.reshape(shape))
            check(name, "dx vs canonical", dx, dxr.reshape(shape))
            check(name, "dgamma vs canonical", dgamma, dgr)
            check(name, "dbeta vs canonical", dbeta, dbr)
            check(name, "batch_mean out == running_mean in", bm, rm_in)
            check(name, "batch_variance out == running_var in", bv, rv_in)
            save(name, "batch_norm", "tensorflow", mode="inference", **common,
                 running_mean=rm_in, running_var=rv_in,
                 saved_mean=rm_in, saved_var_or_invstd=rv_in, saved_note=TF_INFER_NOTE)


# ============================================================================= BN: ONNX Runtime
def onnx_bn_cases():
    cases = [("onnx_bn_infer", (2, 3, 4, 6), 1e-5), ("onnx_bn_infer_eps0.01", (2, 4, 4, 16), 1e-2)]
    for i, (name, shape, eps) in enumerate(cases):
        rng = np.random.default_rng(700 + i)
        C = shape[-1]
        gamma = (rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C)).astype(np.float32)
        beta = rng.standard_normal(C).astype(np.float32)
        rm_ = rng.standard_normal(C).astype(np.float32)
        rv_ = rng.uniform(0.5, 2.0, C).astype(np.float32)
        x = (2 * rng.standard_normal(C) + rng.uniform(0.5, 3.0, C) * rng.standard_normal(shape)).astype(np.float32)
        xn = nhwc_to_nchw(x)
        node = helper.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], ["Y"],
                                epsilon=eps, momentum=0.9, training_mode=0)
        inits = [helper.make_tensor(n, TensorProto.FLOAT, [C], v.tolist())
                 for n, v in (("scale", gamma), ("B", beta), ("mean", rm_), ("var", rv_))]
        graph = helper.make_graph([node], "bn",
                                  [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(xn.shape))],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(xn.shape))],
                                  initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
        model.ir_version = 8
        (yn,) = ort_session(model).run(None, {"X": xn})
        y = nchw_to_nhwc(yn)
        yr = bn_ref_infer(x, gamma, beta, eps, rm_, rv_, np.zeros_like(x))[0]
        check(name, "y vs canonical", y, yr.reshape(shape))
        save(name, "batch_norm", "onnxruntime", mode="inference", x=x, gamma=gamma, beta=beta,
             eps=eps, running_mean=rm_, running_var=rv_, y=y)


# ============================================================================= PyTorch in its native NCHW layout
# These files are NCHW (layout = "NCHW"): x, y, dy, dx as torch holds them; cnorm reads them with axis=1.
def torch_nchw_lrn_cases():
    cases = [(f"torch_nchw_lrn_size{n}_{dt}", dt, (2, 8, 5, 7), n, 1.0, 0.75, 0.5)
             for n in (2, 3, 4, 5) for dt in ("f32", "f64")]
    cases.append(("torch_nchw_lrn_size5_default_f32", "f32", (2, 16, 4, 5), 5, 1e-4, 0.75, 1.0))
    for i, (name, dt, shape, size, alpha, beta, k) in enumerate(cases):
        rng = np.random.default_rng(800 + i)
        npdt = np.float64 if dt == "f64" else np.float32
        x = rng.standard_normal(shape).astype(npdt)
        dy = rng.standard_normal(shape).astype(npdt)
        xt = torch.tensor(x, requires_grad=True)
        yt = F.local_response_norm(xt, size, alpha=alpha, beta=beta, k=k)
        yt.backward(torch.tensor(dy))
        y, dx = yt.detach().numpy(), xt.grad.numpy()
        yr, dxr = lrn_ref(nchw_to_nhwc(x), size // 2, (size - 1) // 2, alpha / size, k, beta,
                          nchw_to_nhwc(dy))
        check(name, "y vs canonical", y, nhwc_to_nchw(yr))
        check(name, "dx vs canonical", dx, nhwc_to_nchw(dxr))
        save(name, "lrn", "torch", convention="torch", layout="NCHW", x=x, y=y, dy=dy, dx=dx,
             size=size, alpha=alpha, beta=beta, k=k)


def torch_nchw_bn_train_cases():
    cases = [(f"torch_nchw_bn_train_m{m}_{dt}", dt, (3, 8, 5, 6), None if m == "None" else 0.1)
             for m in ("0.1", "None") for dt in ("f32", "f64")]
    for i, (name, dt, shape, momentum) in enumerate(cases):
        rng = np.random.default_rng(900 + i)
        npdt = np.float64 if dt == "f64" else np.float32
        C, eps = shape[1], 1e-5
        gamma = (rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C)).astype(npdt)
        beta = rng.standard_normal(C).astype(npdt)
        rm_in = rng.standard_normal(C).astype(npdt)
        rv_in = rng.uniform(0.5, 2.0, C).astype(npdt)
        per_channel = (1, C, 1, 1)
        xs = [(2 * rng.standard_normal(per_channel) + rng.uniform(0.5, 3.0, per_channel)
               * rng.standard_normal(shape)).astype(npdt) for _ in range(3)]
        dy = rng.standard_normal(shape).astype(npdt)
        rm, rv = torch.tensor(rm_in), torch.tensor(rv_in)
        # momentum=None is nn.BatchNorm2d's cumulative average: it passes F.batch_norm the
        # factor 1/num_batches_tracked; the module, run beside, must give the same bits.
        module = torch.nn.BatchNorm2d(C, eps=eps, momentum=momentum, dtype=rm.dtype)
        with torch.no_grad():
            module.running_mean.copy_(rm)
            module.running_var.copy_(rv)
        extra = {}
        for b, x in enumerate(xs):
            factor = 1.0 / (b + 1) if momentum is None else momentum
            xt = torch.tensor(x, requires_grad=True)
            w = torch.tensor(gamma, requires_grad=True)
            bb = torch.tensor(beta, requires_grad=True)
            yt = F.batch_norm(xt, rm, rv, w, bb, training=True, momentum=factor, eps=eps)
            module(torch.tensor(x))
            assert torch.equal(module.running_mean, rm) and torch.equal(module.running_var, rv)
            extra[f"running_mean_out_{b}"] = rm.numpy().copy()
            extra[f"running_var_out_{b}"] = rv.numpy().copy()
        yt.backward(torch.tensor(dy))
        x = xs[2]
        with torch.no_grad():
            _, save_mean, save_invstd = torch.native_batch_norm(
                torch.tensor(x), torch.tensor(gamma), torch.tensor(beta), torch.tensor(rm_in),
                torch.tensor(rv_in), True, 0.1, eps)
        y, dx = yt.detach().numpy(), xt.grad.numpy()
        yr, dxr, dgr, dbr, mean64, varb64, inv64 = bn_ref_train(nchw_to_nhwc(x), gamma, beta,
                                                                eps, nchw_to_nhwc(dy))
        check(name, "y vs canonical", y, nhwc_to_nchw(yr.reshape(nchw_to_nhwc(x).shape)))
        check(name, "dx vs canonical", dx, nhwc_to_nchw(dxr.reshape(nchw_to_nhwc(x).shape)))
        check(name, "dgamma vs canonical", w.grad.numpy(), dgr)
        check(name, "dbeta vs canonical", bb.grad.numpy(), dbr)
        save(name, "batch_norm", "torch", mode="training", layout="NCHW",
             x=x, x_0=xs[0], x_1=xs[1], x_2=xs[2], gamma=gamma, beta=beta, eps=eps,
             momentum=(np.nan if momentum is None else momentum),
             y=y, batch_mean=mean64, batch_var_biased=varb64,
             saved_mean=save_mean.numpy(), saved_invstd=save_invstd.numpy(),
             running_mean_in=rm_in, running_var_in=rv_in,
             running_mean_out=rm.numpy().copy(), running_var_out=rv.numpy().copy(),
             dy=dy, dx=dx, dgamma=w.grad.numpy().copy(), dbeta=bb.grad.numpy().copy(), **extra)


def torch_nchw_bn_eval_cases():
    for i, dt in enumerate(("f32", "f64")):
        name = f"torch_nchw_bn_eval_{dt}"
        rng = np.random.default_rng(950 + i)
        npdt = np.float64 if dt == "f64" else np.float32
        shape, eps = (2, 8, 5, 6), 1e-3
        C = shape[1]
        gamma = (rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C)).astype(npdt)
        beta = rng.standard_normal(C).astype(npdt)
        rm_ = rng.standard_normal(C).astype(npdt)
        rv_ = rng.uniform(0.5, 2.0, C).astype(npdt)
        x = (2 * rng.standard_normal((1, C, 1, 1)) + rng.standard_normal(shape)).astype(npdt)
        dy = rng.standard_normal(shape).astype(npdt)
        xt = torch.tensor(x, requires_grad=True)
        w = torch.tensor(gamma, requires_grad=True)
        bb = torch.tensor(beta, requires_grad=True)
        yt = F.batch_norm(xt, torch.tensor(rm_), torch.tensor(rv_), w, bb, training=False,
                          momentum=0.1, eps=eps)
        yt.backward(torch.tensor(dy))
        y, dx = yt.detach().numpy(), xt.grad.numpy()
        yr, dxr, dgr, dbr = bn_ref_infer(nchw_to_nhwc(x), gamma, beta, eps, rm_, rv_,
                                         nchw_to_nhwc(dy))
        check(name, "y vs canonical", y, nhwc_to_nchw(yr.reshape(nchw_to_nhwc(x).shape)))
        check(name, "dx vs canonical", dx, nhwc_to_nchw(dxr.reshape(nchw_to_nhwc(x).shape)))
        check(name, "dgamma vs canonical", w.grad.numpy(), dgr)
        check(name, "dbeta vs canonical", bb.grad.numpy(), dbr)
        save(name, "batch_norm", "torch", mode="inference", layout="NCHW", x=x, gamma=gamma,
             beta=beta, eps=eps, running_mean=rm_, running_var=rv_, y=y, dy=dy, dx=dx,
             dgamma=w.grad.numpy().copy(), dbeta=bb.grad.numpy().copy())


# ============================================================================= docs/guide/conventions.md worked examples
def semantics_examples():
    print("\n== docs/guide/conventions.md, LRN: x=[1,2,3,4,5] along C, alpha=1, k=1, beta=1 ==")
    x = np.arange(1, 6, dtype=np.float64).reshape(1, 1, 1, 5)
    np.set_printoptions(precision=6, suppress=True)
    expected = {
        ("torch", 2): [0.666667, 0.571429, 0.4, 0.296296, 0.232558],
        ("onnx", 2): [0.285714, 0.266667, 0.222222, 0.186047, 0.37037],
        ("torch", 4): [0.444444, 0.444444, 0.352941, 0.275862, 0.37037],
        ("onnx", 4): [0.222222, 0.235294, 0.206897, 0.296296, 0.444444],
        ("torch", 3): [0.375, 0.352941, 0.28125, 0.226415, 0.340909],
        ("onnx", 3): [0.375, 0.352941, 0.28125, 0.226415, 0.340909],
    }
    for size in (2, 4, 3):
        for fw in ("torch", "onnx"):
            if fw == "torch":
                y = torch_lrn_forward(x, size, 1.0, 1.0, 1.0).ravel()
            elif size % 2:
                y = onnx_lrn_forward(x.astype(np.float32), size, 1.0, 1.0, 1.0).ravel()
            else:  # ORT rejects even sizes; onnx.reference with N == C (onnx#7805)
                x5 = np.repeat(x.astype(np.float32), 5, axis=0)
                y = onnx_ref_lrn_forward(x5, size, 1.0, 1.0, 1.0)[0].ravel()
                fw = "onnx.reference"
            ok = np.allclose(y, expected[(fw.split(".")[0], size)], atol=1e-6, rtol=0)
            print(f"size={size} {fw:14s} {np.array2string(y.astype(np.float64), precision=6)}  "
                  f"{'MATCHES' if ok else 'DIFFERS from'} docs/guide/conventions.md")
    x = 2 * np.ones((2, 2, 2, 3), np.float32)
    y = tf.nn.local_response_normalization(x, depth_radius=1, bias=0.0, alpha=1.0, beta=1.0).numpy()
    print("TF 2*ones r=1 bias=0:", y[0, 0, 0], "expect [0.25 0.166667 0.25]")
    x = np.arange(1, 33, dtype=np.float32).reshape(2, 2, 2, 4)
    y = tf.nn.local_response_normalization(x, depth_radius=2, bias=0.0, alpha=1.0, beta=1.0).numpy()
    print("TF arange r=2 bias=0 y[1,1,0,1]:", f"{y[1, 1, 0, 1]:.8f}", "expect 0.00923952")

    print("\n== docs/guide/conventions.md, batch norm: x=[1,2,3,4], running var starts at 1 ==")
    xt = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).reshape(1, 1, 2, 2)
    rm, rv = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    F.batch_norm(xt, rm, rv, training=True, momentum=0.1)
    print(f"torch momentum=0.1 running_var = {rv.item():.6f} (expect 1.06667)")
    x1 = np.array([1, 2, 3, 4], np.float32).reshape(1, 2, 2, 1)
    r = tf.raw_ops.FusedBatchNormV3(x=x1, scale=np.ones(1, np.float32), offset=np.zeros(1, np.float32),
                                    mean=np.zeros(1, np.float32), variance=np.ones(1, np.float32),
                                    epsilon=1e-3, exponential_avg_factor=1.0, data_format="NHWC",
                                    is_training=True)
    print(f"TF fused f=1.0 batch_variance = {r[2].numpy()[0]:.6f} (expect 1.66667); "
          f"reserve_space_2 = {r[4].numpy()[0]:.6f}")
    try:
        import keras
        bn = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3)
        bn.build((None, 1))
        bn(np.array([[1.0], [2.0], [3.0], [4.0]], np.float32), training=True)
        print(f"Keras {keras.__version__} momentum=0.99 moving_variance = "
              f"{float(np.asarray(bn.moving_variance)[0]):.6f} (docs/guide/conventions.md: 0.99*1 + 0.01*1.25 = 1.0025)")
    except Exception as e:  # keras is informative only
        print("keras check skipped:", e)


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in glob.glob(os.path.join(OUT, "*.npz")):
        os.remove(f)
    print("versions:", VERSIONS)
    tf_lrn_cases()
    torch_lrn_cases()
    onnx_lrn_cases()
    torch_bn_train_cases()
    torch_bn_eval_cases()
    tf_bn_cases()
    onnx_bn_cases()
    torch_nchw_lrn_cases()
    torch_nchw_bn_train_cases()
    torch_nchw_bn_eval_cases()

    print("\n== cross-checks against docs/guide/conventions.md formulas (max |diff| / max |ref|) ==")
    worst = {}
    for case, what, err in CHECKS:
        tol = 1e-9 if ("f64" in case) else 2e-5
        if err > tol:
            print(f"{case:34s} {what:50s} {err:.2e}   <-- LARGE (tol {tol:g})")
        if case not in worst or err > worst[case][1]:
            worst[case] = (what, err)
    for case, (what, err) in worst.items():
        print(f"{case:34s} worst: {what:50s} {err:.2e}")
    print(f"\n{len(CHECKS)} checks; worst relative error overall: {max(e for _, _, e in CHECKS):.2e}")
    semantics_examples()

    files = sorted(glob.glob(os.path.join(OUT, "*.npz")))
    total = sum(os.path.getsize(f) for f in files)
    print(f"\nwrote {len(files)} files, {total / 1024:.1f} KiB total, to {OUT}")


if __name__ == "__main__":
    sys.exit(main())
