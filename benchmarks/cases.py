"""The benchmarked operations: shapes, parameters, and how cnorm and the reference run them."""
from dataclasses import dataclass, field

import numpy as np

import cnorm
from cnorm import _openmp, reference

OPERATIONS = ("lrn_forward", "lrn_forward_beta0.6", "lrn_backward")
LRN_SHAPES = [(16, 55, 55, 96), (16, 27, 27, 256), (1, 55, 55, 96)]
ALEXNET = dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)


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
        raise ValueError(self.name)

    def reference(self):
        a = self.arrays
        if self.name.startswith("lrn_forward"):
            return lambda: reference.lrn(a["x"], **self.params)
        if self.name == "lrn_backward":
            return lambda: reference.lrn_backward(a["dy"], a["x"], **self.params)
        raise ValueError(self.name)


def _arrays(shape, *names):
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(shape, dtype=np.float32) for name in names}
    arrays["out"] = np.zeros(shape, np.float32)
    return arrays


def all_cases(operations):
    for name in operations:
        if name not in OPERATIONS:
            raise SystemExit(f"unknown operation {name!r}; choose from {OPERATIONS}")
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
