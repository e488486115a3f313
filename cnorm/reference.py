"""NumPy float64 reference: the executable specification of cnorm.

Written for clarity, not speed. Every public function of cnorm has a twin here
with the same name and the same semantic parameters (no ``out`` or
``n_threads``); inputs are converted to float64 and results are float64. The
tests compare the compiled kernels against these functions, and the formulas
follow SEMANTICS.md line by line.
"""
import numpy as np

__all__ = ["lrn", "lrn_backward", "local_response_norm", "local_response_norm_backward",
           "lrn_window"]


def lrn_window(size, convention):
    """(before, after): channels of the window behind and ahead of c, by convention."""
    if convention == "tf":  # size is 2 * depth_radius + 1
        return (size - 1) // 2, (size - 1) // 2
    if convention == "torch":
        return size // 2, (size - 1) // 2
    if convention == "onnx":
        return (size - 1) // 2, size // 2
    if convention == "caffe":
        if size % 2 == 0:
            raise ValueError("caffe: size must be odd")
        return (size - 1) // 2, (size - 1) // 2
    raise ValueError(f"unknown convention {convention!r}")


def _window_sum(values, before, after):
    """sum(values[..., i] for i in [c - before, c + after] inside [0, C)), for every c."""
    n_channels = values.shape[-1]
    total = np.zeros_like(values)
    for c in range(n_channels):
        low, high = max(0, c - before), min(n_channels - 1, c + after)
        total[..., c] = values[..., low:high + 1].sum(axis=-1)
    return total


def _divisor(x, before, after, a, k):
    return k + a * _window_sum(x * x, before, after)


def lrn_canonical(x, before, after, a, k, beta):
    """y = x * (k + a * S)**-beta with S the sum of squares over [c-before, c+after]."""
    x = np.asarray(x, dtype=np.float64)
    return x * _divisor(x, before, after, a, k) ** -beta


def lrn_canonical_backward(dy, x, before, after, a, k, beta):
    """dx_i = dy_i D_i**-beta - 2 a beta x_i sum_{j: i in W(j)} dy_j y_j / D_j.

    {j : i in W(j)} = [i - after, i + before]: the mirrored window.
    """
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    d = _divisor(x, before, after, a, k)
    y = x * d ** -beta
    return dy * d ** -beta - 2 * a * beta * x * _window_sum(dy * y / d, after, before)


def lrn(x, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5):
    """TensorFlow's ``tf.nn.local_response_normalization`` (alpha not divided)."""
    return lrn_canonical(x, depth_radius, depth_radius, alpha, bias, beta)


def lrn_backward(dy, x, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5):
    """TensorFlow's ``LRNGrad``: the gradient of `lrn` with respect to x."""
    return lrn_canonical_backward(dy, x, depth_radius, depth_radius, alpha, bias, beta)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, *, convention="torch"):
    """Size-based LRN of PyTorch, ONNX or Caffe: a = alpha / size."""
    before, after = lrn_window(size, convention)
    return lrn_canonical(x, before, after, alpha / size, k, beta)


def local_response_norm_backward(dy, x, size, alpha=1e-4, beta=0.75, k=1.0, *,
                                 convention="torch"):
    """Gradient of `local_response_norm` with respect to x."""
    before, after = lrn_window(size, convention)
    return lrn_canonical_backward(dy, x, before, after, alpha / size, k, beta)
