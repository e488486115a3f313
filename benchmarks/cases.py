"""The benchmarked operations: shapes, parameters, and how cnorm and the reference run them."""
from dataclasses import dataclass, field

import numpy as np

import cnorm
from cnorm import _openmp, reference

OPERATIONS = ("lrn_forward", "lrn_forward_beta0.6", "lrn_backward",
              "bn_inference", "bn_training", "bn_backward",
              "bn_inference_relu", "bn_residual_relu", "bn_training_relu", "bn_backward_relu")
# The fused forms (docs/guide/fusion.md): each is timed beside
# its plain operation ("cnorm plain", same run, interleaved) and bn_residual_relu
# also beside the unfused sequence (cnorm BN, then numpy.add and numpy.maximum
# with out=). The cnorm row's "x plain" is its time over that row's.
FUSED = {"bn_inference_relu": "bn_inference", "bn_residual_relu": "bn_inference",
         "bn_training_relu": "bn_training", "bn_backward_relu": "bn_backward"}
# How the data is held: channels last in float32 (the default rows), NCHW in
# float32 (cnorm with axis=1, PyTorch on its native contiguous layout), or
# channels last in a half type (beside cnorm on a float32 copy, "cnorm float32").
VARIANTS = ("nhwc", "nchw", "float16", "bfloat16")
# The half-precision rows: the operations the issue names (not the backward of LRN).
HALF_OPERATIONS = ("lrn_forward", "bn_inference", "bn_training", "bn_backward") + tuple(FUSED)
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
    variant: str = "nhwc"

    @property
    def x(self):
        return self.arrays["x"]

    @property
    def axis_keywords(self):
        """The keyword arguments naming the channel axis: none for NHWC, so that
        the suite also runs against builds from before ``axis=`` (benchmarks/ab.py)."""
        return {"axis": 1} if self.variant == "nchw" else {}

    @property
    def label(self):
        return self.name if self.variant == "nhwc" else f"{self.name} {self.variant}"

    @property
    def traffic_bytes(self):
        return (self.reads + 1) * self.x.nbytes

    def cnorm(self, n_threads, arrays=None, name=None):
        """cnorm on this case's arrays (or on `arrays`, e.g. a float32 copy), as
        operation `name` (default: the case's own)."""
        a = self.arrays if arrays is None else arrays
        out, axis = a["out"], self.axis_keywords
        name = self.name if name is None else name
        relu = {"activation": "relu"} if name in FUSED else {}
        if name.startswith("lrn_forward"):
            return lambda: cnorm.lrn(a["x"], **self.params, **axis, out=out,
                                     n_threads=n_threads)
        if name == "lrn_backward":
            return lambda: cnorm.lrn_backward(a["dy"], a["x"], **self.params, **axis,
                                              out=out, n_threads=n_threads)
        if name == "bn_residual_relu":
            relu["residual"] = a["z"]
        if name in ("bn_inference", "bn_inference_relu", "bn_residual_relu"):
            return lambda: cnorm.batch_norm_inference(
                a["x"], a["mean"], a["var"], a["gamma"], a["beta"], BN_EPS, **axis,
                out=out, n_threads=n_threads, **relu)
        if name in ("bn_training", "bn_training_relu"):
            return lambda: cnorm.batch_norm_training(
                a["x"], a["gamma"], a["beta"], BN_EPS, **axis, out=out,
                n_threads=n_threads, **relu)
        if name in ("bn_backward", "bn_backward_relu"):
            if relu:
                relu["beta"] = a["beta"]
            return lambda: cnorm.batch_norm_backward(
                a["dy"], a["x"], a["mean"], a["invstd"], a["gamma"], **axis, out=out,
                n_threads=n_threads, **relu)
        raise ValueError(self.name)

    def extras(self, n_threads):
        """The same-run comparisons of a fused operation: {implementation: callable}."""
        if self.name not in FUSED:
            return {}
        extras = {"cnorm plain": self.cnorm(n_threads, name=FUSED[self.name])}
        if self.name == "bn_residual_relu":
            plain, out, z = extras["cnorm plain"], self.arrays["out"], self.arrays["z"]
            zero = out.dtype.type(0)

            def unfused():
                plain()
                np.add(out, z, out=out)
                np.maximum(out, zero, out=out)
            extras["unfused numpy"] = unfused
        return extras

    def float32_copy(self, n_threads):
        """For a half-precision case: cnorm on float32 copies of the same values."""
        arrays = {key: (value.astype(np.float32) if value.dtype.itemsize == 2 else value)
                  for key, value in self.arrays.items()}
        return self.cnorm(n_threads, arrays)

    def reference(self):
        a, axis = self.arrays, self.axis_keywords
        relu = {"activation": "relu"} if self.name in FUSED else {}
        if self.name == "bn_residual_relu":
            relu["residual"] = a["z"]
        if self.name.startswith("lrn_forward"):
            return lambda: reference.lrn(a["x"], **self.params, **axis)
        if self.name == "lrn_backward":
            return lambda: reference.lrn_backward(a["dy"], a["x"], **self.params, **axis)
        if self.name in ("bn_inference", "bn_inference_relu", "bn_residual_relu"):
            return lambda: reference.batch_norm_inference(
                a["x"], a["mean"], a["var"], a["gamma"], a["beta"], BN_EPS, **axis, **relu)
        if self.name in ("bn_training", "bn_training_relu"):
            return lambda: reference.batch_norm_training(a["x"], a["gamma"], a["beta"], BN_EPS,
                                                         **axis, **relu)
        if self.name in ("bn_backward", "bn_backward_relu"):
            if relu:
                relu["beta"] = a["beta"]
            return lambda: reference.batch_norm_backward(
                a["dy"], a["x"], a["mean"], a["invstd"], a["gamma"], **axis, **relu)
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


def _in_variant(arrays, variant):
    """The NHWC float32 arrays as `variant` holds them (per-channel ones unchanged)."""
    if variant == "nhwc":
        return arrays
    if variant == "nchw":
        return {key: (np.ascontiguousarray(value.transpose(0, 3, 1, 2)) if value.ndim == 4
                      else value) for key, value in arrays.items()}
    if variant == "float16":
        dtype = np.dtype(np.float16)
    else:
        import ml_dtypes  # the bfloat16 rows need it (pip install ml_dtypes)
        dtype = np.dtype(ml_dtypes.bfloat16)
    return {key: (value.astype(dtype) if value.ndim == 4 else value)
            for key, value in arrays.items()}


def all_cases(operations, variants=("nhwc",)):
    for variant in variants:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {VARIANTS}")
        for case in _nhwc_cases(operations):
            if variant in ("float16", "bfloat16") and case.name not in HALF_OPERATIONS:
                continue
            case.arrays = _in_variant(case.arrays, variant)
            case.variant = variant
            yield case


def _nhwc_cases(operations):
    for name in operations:
        if name not in OPERATIONS:
            raise SystemExit(f"unknown operation {name!r}; choose from {OPERATIONS}")
        if name.startswith("bn_"):
            for shape in BN_SHAPES:
                names = {"bn_backward": ("x", "dy"), "bn_backward_relu": ("x", "dy"),
                         "bn_residual_relu": ("x", "z")}.get(name, ("x",))
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
    source = case.x.reshape(case.x.shape[0], -1).view(np.uint8)
    target = case.arrays["out"].reshape(source.shape[0], -1).view(np.uint8)
    copy_target = np.empty_like(target)
    return lambda: _openmp.parallel_copy(source, copy_target, n_threads)
