#!/usr/bin/env python3
"""Generate golden half-precision data: PyTorch's float16/bfloat16 batch norm and
TensorFlow's float16 LRN, on CPU.

Run from the repo root inside the framework venv (see README.md in this folder):

    /tmp/golden-venv/bin/python tests/golden/make_golden_half.py

Writes tests/golden/data/half/torch_bn_half_*.npz and tf_lrn_half_*.npz (np.savez, no
pickle) and deletes only those names before writing. They have a folder of their own:
make_golden.py deletes data/*.npz, and tests/test_lrn.py reads every data/tf_lrn_*. Half tensors are stored as
their raw bits (uint16) beside a "dtype" key ("float16" or "bfloat16"). Every file
has the string keys "op", "framework" and "versions". See README.md for the schema.
tests/test_golden_half.py compares cnorm and the frameworks against the float64
reference there; this script does not import cnorm.
"""
import os
import sys
import glob
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import ml_dtypes
import torch
import torch.nn.functional as F
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "half")  # own folder: make_golden.py deletes data/*.npz
PATTERNS = ("torch_bn_half_*.npz", "tf_lrn_half_*.npz")

VERSIONS = (
    f"python={platform.python_version()} numpy={np.__version__} torch={torch.__version__} "
    f"tensorflow={tf.__version__} ml_dtypes={ml_dtypes.__version__} "
    f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '<unset>')}"
)

torch.set_num_threads(1)
TORCH_DTYPE = {"float16": torch.float16, "bfloat16": torch.bfloat16}
NP_DTYPE = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


# ----------------------------------------------------------------------------- helpers
def save(name, op, framework, **kw):
    out = {"op": np.array(op), "framework": np.array(framework), "versions": np.array(VERSIONS)}
    for k, v in kw.items():
        if isinstance(v, str):
            out[k] = np.array(v)
        elif isinstance(v, (float, int)) and not isinstance(v, bool):
            out[k] = np.array(float(v), dtype=np.float64)
        else:
            a = np.asarray(v)
            assert a.dtype != object, (name, k)
            out[k] = a
    np.savez(os.path.join(OUT, name + ".npz"), **out)


def torch_bits(t):
    """Raw bits of a float16/bfloat16 torch tensor, as numpy uint16."""
    return t.detach().contiguous().view(torch.int16).numpy().view(np.uint16).copy()


def values(bits, dtype):
    """float64 values of stored half bits."""
    return bits.view(NP_DTYPE[dtype]).astype(np.float64)


def max_rel(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    ok = np.isfinite(ref)
    err = np.abs(got[ok] - ref[ok])
    err = err[~np.isnan(err)]
    return float(err.max() / max(np.max(np.abs(ref[ok])), 1e-300)) if err.size else np.nan


# ============================================================================= PyTorch batch norm
def bn_ref(x, gamma, beta, eps, mean=None, var=None):
    """float64 batch norm of NCHW x; batch statistics if mean is None."""
    x = np.asarray(x, np.float64)
    if mean is None:
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    invstd = 1 / np.sqrt(np.asarray(var, np.float64) + eps)
    s = (1, -1, 1, 1)
    return (gamma.reshape(s) * (x - mean.reshape(s)) * invstd.reshape(s) + beta.reshape(s),
            mean, invstd)


def torch_bn_cases():
    # name, dtype, per-channel offset (None: spread), std, mode
    cases = []
    for dtype in ("float16", "bfloat16"):
        short = "f16" if dtype == "float16" else "bf16"
        cases += [(f"torch_bn_half_train_{short}", dtype, None, None, "training"),
                  (f"torch_bn_half_train_bigmean_{short}", dtype, 100.0, 1.0, "training"),
                  (f"torch_bn_half_eval_{short}", dtype, None, None, "inference"),
                  (f"torch_bn_half_eval_bigmean_{short}", dtype, 100.0, 1.0, "inference")]
    shape, eps, momentum = (4, 8, 5, 5), 1e-5, 0.1
    C = shape[1]
    per_channel = (1, C, 1, 1)
    for i, (name, dtype, offset, std, mode) in enumerate(cases):
        rng = np.random.default_rng(1300 + i)
        tdt = TORCH_DTYPE[dtype]
        gamma = (rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C)).astype(np.float32)
        beta = rng.standard_normal(C).astype(np.float32)
        if offset is None:  # means and spreads that differ by channel
            loc = 2 * rng.standard_normal(per_channel)
            spread = rng.uniform(0.5, 3.0, per_channel)
        else:
            loc, spread = np.full(per_channel, offset), np.full(per_channel, std)
        x64 = loc + spread * rng.standard_normal(shape)
        dy64 = rng.standard_normal(shape)
        # Rounded to the storage type by torch (to nearest even); the bits are the input.
        xt = torch.tensor(x64, dtype=torch.float32).to(tdt).requires_grad_(True)
        dyt = torch.tensor(dy64, dtype=torch.float32).to(tdt)
        x = values(torch_bits(xt), dtype)
        if mode == "training":
            rm_in = (loc.ravel() + rng.standard_normal(C)).astype(np.float32)
            rv_in = rng.uniform(0.5, 2.0, C).astype(np.float32)
        else:  # statistics close to the data's, as after training
            rm_in = (x.mean(axis=(0, 2, 3)) + 0.1 * rng.standard_normal(C)).astype(np.float32)
            rv_in = (x.var(axis=(0, 2, 3)) * rng.uniform(0.8, 1.25, C)).astype(np.float32)
        rm, rv = torch.tensor(rm_in), torch.tensor(rv_in)
        w = torch.tensor(gamma, requires_grad=True)
        b = torch.tensor(beta, requires_grad=True)
        yt = F.batch_norm(xt, rm, rv, w, b, training=(mode == "training"), momentum=momentum,
                          eps=eps)
        assert yt.dtype == tdt and rm.dtype == rv.dtype == torch.float32
        extra = {}
        if mode == "training":
            yt.backward(dyt)  # half backward on CPU works: dx half, dgamma/dbeta float32
            assert xt.grad.dtype == tdt and w.grad.dtype == torch.float32
            with torch.no_grad():
                _, saved_mean, saved_invstd = torch.native_batch_norm(
                    xt.detach(), w.detach(), b.detach(), torch.tensor(rm_in), torch.tensor(rv_in),
                    True, momentum, eps)
            assert saved_mean.dtype == saved_invstd.dtype == torch.float32
            extra = dict(dy=torch_bits(dyt), dx=torch_bits(xt.grad),
                         dgamma=w.grad.numpy().copy(), dbeta=b.grad.numpy().copy(),
                         saved_mean=saved_mean.numpy(), saved_invstd=saved_invstd.numpy(),
                         running_mean_out=rm.numpy().copy(), running_var_out=rv.numpy().copy())
            ref, _, _ = bn_ref(x, gamma, beta, eps)
        else:
            ref, _, _ = bn_ref(x, gamma, beta, eps, rm_in.astype(np.float64),
                               rv_in.astype(np.float64))
        # Does torch compute in float32 and round once? Its float32 on the upcast values:
        with torch.no_grad():
            y32 = F.batch_norm(xt.detach().float(), torch.tensor(rm_in), torch.tensor(rv_in),
                               torch.tensor(gamma), torch.tensor(beta),
                               training=(mode == "training"), momentum=momentum, eps=eps)
        same = int((torch_bits(y32.to(tdt)) == torch_bits(yt)).sum())
        y = values(torch_bits(yt), dtype)
        print(f"{name:34s} y rel err {max_rel(y, ref):.2e}; bits equal to torch float32 "
              f"rounded: {same}/{y.size}")
        save(name, "batch_norm", "torch", mode=mode, layout="NCHW", dtype=dtype,
             x=torch_bits(xt), y=torch_bits(yt), gamma=gamma, beta=beta, eps=eps,
             momentum=momentum, running_mean=rm_in, running_var=rv_in, **extra)


# ============================================================================= TensorFlow LRN
def lrn_ref(x, r, bias, alpha, beta):
    x = np.asarray(x, np.float64)
    sq = x * x
    S = np.stack([sq[..., max(0, c - r):c + r + 1].sum(-1) for c in range(x.shape[-1])], -1)
    return x * (bias + alpha * S) ** -beta


def tf_lrn(x, r, bias, alpha, beta):
    """TF's LRN of the float16 array x, given as a tf.Tensor. (Given a numpy float16
    array, TF 2.21's eager op runs in float16 on the first call only: later calls
    return float32, the op's default type, computed in float32.)"""
    y = tf.nn.local_response_normalization(tf.constant(x, dtype=tf.float16), depth_radius=r,
                                           bias=bias, alpha=alpha, beta=beta).numpy()
    assert y.dtype == np.float16
    return y


def tf_lrn_cases():
    f16 = np.float16
    tiny = float(np.finfo(f16).tiny)  # 6.1e-5, the smallest normal float16
    rng = np.random.default_rng(1400)
    cases = [
        # name, x (float64, NHWC), depth_radius, bias, alpha, beta
        ("tf_lrn_half_issue", np.full((1, 1, 1, 5), 300.0), 2, 1.0, 1e-4, 0.75),
        ("tf_lrn_half_alexnet", 10 * rng.standard_normal((2, 4, 4, 16)), 2, 2.0, 1e-4, 0.75),
        ("tf_lrn_half_default", 3 * rng.standard_normal((2, 3, 4, 16)), 5, 1.0, 1.0, 0.5),
        ("tf_lrn_half_large", rng.choice([-1, 1], (2, 3, 4, 8))
         * rng.uniform(3e4, 65504, (2, 3, 4, 8)), 2, 1.0, 1e-4, 0.75),
        ("tf_lrn_half_subnormal", rng.choice([-1, 1], (2, 3, 4, 8))
         * rng.uniform(tiny / 256, tiny / 8, (2, 3, 4, 8)), 2, 1e-8, 1.0, 0.5),
        ("tf_lrn_half_subnormal_bias1", rng.choice([-1, 1], (2, 3, 4, 8))
         * rng.uniform(tiny / 256, 4 * tiny, (2, 3, 4, 8)), 2, 1.0, 1.0, 0.5),
    ]
    for name, x64, r, bias, alpha, beta in cases:
        x = x64.astype(f16)
        y = tf_lrn(x, r, bias, alpha, beta)
        assert np.array_equal(tf_lrn(x, r, bias, alpha, beta).view(np.uint16), y.view(np.uint16))
        ref = lrn_ref(x, r, bias, alpha, beta)
        nan = int((np.isnan(y) & np.isfinite(ref)).sum())
        inf = int((np.isinf(y) & np.isfinite(ref)).sum())
        print(f"{name:24s} y rel err {max_rel(y, ref):.2e}; NaN {nan}, inf {inf} of {y.size} "
              f"where the answer is finite")
        save(name, "lrn", "tensorflow", convention="tf", dtype="float16",
             x=x.view(np.uint16), y=y.view(np.uint16),
             depth_radius=r, bias=bias, alpha=alpha, beta=beta)
    x = np.full((1, 1, 1, 5), 300.0, f16)
    print("issue case: TF", tf_lrn(x, 2, 1.0, 1e-4, 0.75).ravel(),
          "float64 answer", lrn_ref(x, 2, 1.0, 1e-4, 0.75).ravel())
    # No bfloat16 LRN on CPU: the CPU kernel takes half and float only, and XLA's
    # (jit_compile) fails for half types. Print what TF says, store nothing.
    xb = tf.cast(tf.constant(x.astype(np.float32)), tf.bfloat16)
    try:
        tf.nn.local_response_normalization(xb, depth_radius=2)
        print("bfloat16 LRN on CPU: runs (add a case)")
    except Exception as e:
        print("bfloat16 LRN on CPU:", type(e).__name__, str(e).splitlines()[0][:100])
    try:
        tf.function(lambda t: tf.nn.local_response_normalization(t, depth_radius=2),
                    jit_compile=True)(xb)
        print("bfloat16 LRN with XLA: runs (add a case)")
    except Exception as e:
        print("bfloat16 LRN with XLA:", type(e).__name__, str(e).splitlines()[0][:100])


def main():
    os.makedirs(OUT, exist_ok=True)
    for pattern in PATTERNS:
        for f in glob.glob(os.path.join(OUT, pattern)):
            os.remove(f)
    print("versions:", VERSIONS)
    torch_bn_cases()
    tf_lrn_cases()
    files = sorted(f for pattern in PATTERNS for f in glob.glob(os.path.join(OUT, pattern)))
    total = sum(os.path.getsize(f) for f in files)
    print(f"\nwrote {len(files)} files, {total / 1024:.1f} KiB total, to {OUT}")


if __name__ == "__main__":
    sys.exit(main())
