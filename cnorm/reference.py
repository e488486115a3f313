"""NumPy float64 reference: the executable specification of cnorm.

Written for clarity, not speed. Every public function of cnorm has a twin here
with the same name and the same semantic parameters (``axis`` included; no
``out`` or ``n_threads``); inputs of any float dtype (float16 and bfloat16
too) are converted to float64 and results are float64. The tests compare the
compiled kernels against these functions, and the formulas follow
docs/guide/conventions.md line by line. Channels are computed on the last axis:
``axis`` moves them there and back.
"""
import functools

import numpy as np

__all__ = ["lrn", "lrn_backward", "local_response_norm", "local_response_norm_backward",
           "lrn_window", "batch_norm_inference", "batch_norm_training",
           "batch_norm_backward", "batch_norm_backward_sums", "moments"]


def _channels_last(function):
    """Give `function` (channels on the last axis of its array arguments) an
    ``axis`` keyword: array arguments are moved to put `axis` last, array
    results of x's ndim moved back."""
    @functools.wraps(function)
    def wrapper(*args, axis=-1, **kwargs):
        ndim = None
        moved = []
        for arg in args:
            if isinstance(arg, np.ndarray) or isinstance(arg, (list, tuple)):
                arg = np.asarray(arg)
                if ndim is None:
                    ndim = arg.ndim
                if arg.ndim == ndim and ndim > 1:
                    arg = np.moveaxis(arg, axis, -1)
            moved.append(arg)
        if isinstance(kwargs.get("residual"), np.ndarray) and ndim is not None and ndim > 1:
            kwargs["residual"] = np.moveaxis(kwargs["residual"], axis, -1)
        result = function(*moved, **kwargs)

        def back(value):
            if isinstance(value, np.ndarray) and value.ndim == ndim and ndim > 1:
                return np.moveaxis(value, -1, axis)
            return value
        if isinstance(result, tuple):
            return tuple(back(value) for value in result)
        return back(result)
    return wrapper


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


@_channels_last
def lrn_canonical(x, before, after, a, k, beta):
    """y = x * (k + a * S)**-beta with S the sum of squares over [c-before, c+after]."""
    x = np.asarray(x, dtype=np.float64)
    return x * _divisor(x, before, after, a, k) ** -beta


@_channels_last
def lrn_canonical_backward(dy, x, before, after, a, k, beta):
    """dx_i = dy_i D_i**-beta - 2 a beta x_i sum_{j: i in W(j)} dy_j y_j / D_j.

    {j : i in W(j)} = [i - after, i + before]: the mirrored window.
    """
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    d = _divisor(x, before, after, a, k)
    y = x * d ** -beta
    return dy * d ** -beta - 2 * a * beta * x * _window_sum(dy * y / d, after, before)


@_channels_last
def lrn(x, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5):
    """TensorFlow's ``tf.nn.local_response_normalization`` (alpha not divided)."""
    return lrn_canonical(x, depth_radius, depth_radius, alpha, bias, beta)


@_channels_last
def lrn_backward(dy, x, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5):
    """TensorFlow's ``LRNGrad``: the gradient of `lrn` with respect to x."""
    return lrn_canonical_backward(dy, x, depth_radius, depth_radius, alpha, bias, beta)


@_channels_last
def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, *, convention="torch"):
    """Size-based LRN of PyTorch, ONNX or Caffe: a = alpha / size."""
    before, after = lrn_window(size, convention)
    return lrn_canonical(x, before, after, alpha / size, k, beta)


@_channels_last
def local_response_norm_backward(dy, x, size, alpha=1e-4, beta=0.75, k=1.0, *,
                                 convention="torch"):
    """Gradient of `local_response_norm` with respect to x."""
    before, after = lrn_window(size, convention)
    return lrn_canonical_backward(dy, x, before, after, alpha / size, k, beta)


# ---------------------------------------------------------------------------
# Batch normalization (docs/guide/conventions.md), over the (M, C) view


def _channels(value, n_channels, default):
    if value is None:
        return np.full(n_channels, default, dtype=np.float64)
    return np.asarray(value, dtype=np.float64)


def _product(*factors):
    """The product of the factors, left to right, with no intermediate overflow
    or underflow: their mantissas (frexp, in [0.5, 1)) multiplied, their
    exponents added, and the result scaled once (ldexp). Where no intermediate
    leaves float64's normal range it is bit for bit the plain product; where
    one does, the plain product is wrong: gamma 1e200 times x - mean -1e200
    times invstd 0 (an infinite running variance) is 0, not -inf * 0 = NaN;
    invstd 4e-37 * xhat 4e163 * dgamma 4e163 is 7e290, not inf. NaN, inf and
    0 * inf are as in the plain product."""
    mantissa, exponent = np.float64(1.0), 0
    for factor in factors:
        m, e = np.frexp(np.asarray(factor, dtype=np.float64))
        mantissa = mantissa * m
        exponent = exponent + e
    return np.ldexp(mantissa, exponent)


def _activation(y, activation):
    """The fused activation: None, or "relu" (max(y, 0), NaN passed through)."""
    return y if activation is None else np.maximum(y, 0.0)


@_channels_last
def batch_norm_inference(x, running_mean, running_var, gamma=None, beta=None, eps=1e-5, *,
                         activation=None, residual=None):
    """y = act(gamma * (x - running_mean) / sqrt(running_var + eps) + beta + residual)."""
    x = np.asarray(x, dtype=np.float64)
    n_channels = x.shape[-1]
    gamma = _channels(gamma, n_channels, 1.0)
    beta = _channels(beta, n_channels, 0.0)
    invstd = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    y = _product(gamma, x - np.asarray(running_mean, dtype=np.float64), invstd) + beta
    if residual is not None:
        y = y + np.asarray(residual, dtype=np.float64)
    return _activation(y, activation)


@_channels_last
def batch_norm_training(x, gamma=None, beta=None, eps=1e-5, *, running_mean=None,
                        running_var=None, momentum=0.1, running_var_unbiased=True,
                        activation=None):
    """Normalize with the batch statistics; return (y, mean, invstd).

    mean and the biased variance by two passes over the data. Running statistics,
    if given, are updated in place: ``running = (1 - momentum)*running +
    momentum*stat``, the variance stat being var_b*m/(m-1) if
    running_var_unbiased else var_b.
    """
    x = np.asarray(x, dtype=np.float64)
    n_channels = x.shape[-1]
    rows = x.reshape(-1, n_channels)
    m = rows.shape[0]
    gamma = _channels(gamma, n_channels, 1.0)
    beta = _channels(beta, n_channels, 0.0)
    mean = rows.mean(axis=0)
    var_b = ((rows - mean) ** 2).mean(axis=0)
    invstd = 1.0 / np.sqrt(var_b + eps)
    y = _activation(_product(gamma, x - mean, invstd) + beta, activation)
    if running_mean is not None:
        stat_var = var_b * m / (m - 1) if running_var_unbiased else var_b
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        running_var[...] = (1 - momentum) * running_var + momentum * stat_var
    return y, mean, invstd


@_channels_last
def batch_norm_backward(dy, x, mean, invstd, gamma=None, *, beta=None, activation=None,
                        training=True):
    """Return (dx, dgamma, dbeta); training=False treats mean and invstd as constants.

    activation="relu": the gradient of relu(bn(x)), dy taken where
    gamma*xhat + beta > 0 only."""
    x = np.asarray(x, dtype=np.float64)
    n_channels = x.shape[-1]
    g = np.asarray(dy, dtype=np.float64).reshape(-1, n_channels)
    rows = x.reshape(-1, n_channels)
    m = rows.shape[0]
    mean = np.asarray(mean, dtype=np.float64)
    invstd = np.asarray(invstd, dtype=np.float64)
    gamma = _channels(gamma, n_channels, 1.0)
    xhat = (rows - mean) * invstd
    if activation is not None:
        g = np.where(gamma * xhat + _channels(beta, n_channels, 0.0) > 0, g, 0.0)
    dbeta = g.sum(axis=0)
    dgamma = (g * xhat).sum(axis=0)
    if training:
        dx = _product(gamma, invstd, g - dbeta / m - _product(xhat, dgamma / m))
        # Where the bracket overflowed (xhat*dgamma 1e327) but dx is finite:
        # gamma*invstd*(g - dbeta/m) - gamma*invstd*(x - mean)*invstd*dgamma/m.
        with np.errstate(invalid="ignore"):
            split = (_product(gamma, invstd, g - dbeta / m)
                     - _product(gamma, invstd, rows - mean, invstd, dgamma / m))
        dx = np.where(~np.isfinite(dx) & np.isfinite(split), split, dx)
    else:
        dx = _product(gamma, invstd, g)
    return dx.reshape(x.shape), dgamma, dbeta


def batch_norm_backward_sums(dy, x, mean, invstd):
    """Return (sum(dy), sum(dy * (x - mean) * invstd)) per channel."""
    _, dgamma, dbeta = batch_norm_backward(dy, x, mean, invstd)
    return dbeta, dgamma


def moments(x, *, axis=-1):
    """Return cnorm.Moments(count, mean, m2) of x by two passes in float64."""
    from cnorm.moments import Moments

    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    rows = x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1])  # C = 0 too
    if rows.shape[0] == 0:
        return Moments.empty(rows.shape[1])
    mean = rows.mean(axis=0)
    return Moments(rows.shape[0], mean, ((rows - mean) ** 2).sum(axis=0))
