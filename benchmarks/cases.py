"""The benchmarked operations: shapes, parameters, and how cnorm and the reference run them."""
from dataclasses import dataclass, field

import numpy as np

import cnorm
from cnorm import _openmp, reference

OPERATIONS = ("lrn_forward", "lrn_forward_beta0.6", "lrn_backward",
              "bn_inference", "bn_training", "bn_backward")
LRN_SHAPES = [(16, 55, 55, 96), (16, 27, 27, 256), (1, 55, 55, 96)]
BN_SHAPES = [(32, 56, 56, 64), (32, 28, 28, 512), (32, 7, 7, 2048), (1, 56, 56, 256)]
ALEXNET = dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
BN_EPS = 1e-5


@dataclass
class Case:
    """One operation on one shape: arrays made once, callables made per thread count."""
    name: str
    shape: tuple
    params: dict
    arrays: dict = field(default_factory=dict)
    reads: int = 1  # tensors read, besides the one written, for the traffic count

    @property
    def x(self):
        return self.arrays["x"]

    @property
    def traffic_bytes(self):
        return (self.reads + 1) * self.x.nbytes

    def cnorm(self, n_threads):
        a, out = self.arrays, self.arrays["out"]
        if self.name.startswith("lrn_forward"):
            return lambda: cnorm.lrn(a["x"], **self.params, out=out, n_threads=n_threads)
        if self.name == "lrn_backward":
            return lambda: cnorm.lrn_backward(a["dy"], a["x"], **self.params, out=out,
                                              n_threads=n_threads)
        if self.name == "bn_inference":
            return lambda: cnorm.batch_norm_inference(
                a["x"], a["mean"], a["var"], a["gamma"], a["beta"], BN_EPS, out=out,
                n_threads=n_threads)
        if self.name == "bn_training":
            return lambda: cnorm.batch_norm_training(
                a["x"], a["gamma"], a["beta"], BN_EPS, out=out, n_threads=n_threads)
        if self.name == "bn_backward":
            return lambda: cnorm.batch_norm_backward(
                a["dy"], a["x"], a["mean"], a["invstd"], a["gamma"], out=out,
                n_threads=n_threads)
        raise ValueError(self.name)

    def reference(self):
        a = self.arrays
        if self.name.startswith("lrn_forward"):
            return lambda: reference.lrn(a["x"], **self.params)
        if self.name == "lrn_backward":
            return lambda: reference.lrn_backward(a["dy"], a["x"], **self.params)
        if self.name == "bn_inference":
            return lambda: reference.batch_norm_inference(
                a["x"], a["mean"], a["var"], a["gamma"], a["beta"], BN_EPS)
        if self.name == "bn_training":
            return lambda: reference.batch_norm_training(a["x"], a["gamma"], a["beta"], BN_EPS)
        if self.name == "bn_backward":
            return lambda: reference.batch_norm_backward(
                a["dy"], a["x"], a["mean"], a["invstd"], a["gamma"])
        raise ValueError(self.name)


def _arrays(shape, *names):
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(shape, dtype=np.float32) for name in names}
    arrays["out"] = np.zeros(shape, np.float32)
    return arrays


def _bn_arrays(shape, *names):
    arrays = _arrays(shape, *names)
    n_channels = shape[-1]
    rng = np.random.default_rng(1)
    arrays["x"] += rng.uniform(-2, 2, n_channels).astype(np.float32)  # per-channel means
    arrays["mean"] = arrays["x"].reshape(-1, n_channels).mean(axis=0, dtype=np.float64)
    arrays["var"] = arrays["x"].reshape(-1, n_channels).var(axis=0, dtype=np.float64)
    arrays["invstd"] = 1 / np.sqrt(arrays["var"] + BN_EPS)
    arrays["gamma"] = rng.uniform(0.5, 1.5, n_channels)
    arrays["beta"] = rng.uniform(-1, 1, n_channels)
    return arrays


def all_cases(operations):
    for name in operations:
        if name not in OPERATIONS:
            raise SystemExit(f"unknown operation {name!r}; choose from {OPERATIONS}")
        if name.startswith("bn_"):
            for shape in BN_SHAPES:
                names = ("x", "dy") if name == "bn_backward" else ("x",)
                yield Case(name, shape, {}, _bn_arrays(shape, *names), reads=len(names))
            continue
        for shape in LRN_SHAPES:
            if name == "lrn_forward":
                yield Case(name, shape, ALEXNET, _arrays(shape, "x"))
            elif name == "lrn_forward_beta0.6":
                yield Case(name, shape, dict(ALEXNET, beta=0.6), _arrays(shape, "x"))
            elif name == "lrn_backward":
                yield Case(name, shape, ALEXNET, _arrays(shape, "x", "dy"), reads=2)


def copy_function(case, n_threads):
    """The yardstick: a parallel copy of x (one read, one write) with n_threads."""
    source = case.x.reshape(-1, case.x.shape[-1]).view(np.uint8)
    target = case.arrays["out"].reshape(source.shape[0], -1).view(np.uint8)
    copy_target = np.empty_like(target)
    return lambda: _openmp.parallel_copy(source, copy_target, n_threads)
