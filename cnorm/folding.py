"""Folding an inference batch norm into the convolution or linear layer before it.

Pure NumPy: the per-channel coefficients are computed in float64 and each
folded value is rounded once into the weight's dtype (docs/guide/fusion.md, "Fused
inference and folding"). Semantics, per output channel ``o``::

    s[o]     = gamma[o] / sqrt(running_var[o] + eps)
    W'[o...] = W[o...] * s[o]                 (along the layout's output axis)
    b'[o]    = (b[o] - running_mean[o]) * s[o] + beta[o]     (b None: 0)
"""
import numpy as np

from cnorm import _validation as check

__all__ = ["fold_batch_norm"]

# Where each weight layout keeps its output channels, and its number of axes.
LAYOUTS = {
    "OIHW": (0, 4),   # PyTorch Conv2d, ONNX Conv
    "IOHW": (1, 4),   # PyTorch ConvTranspose2d
    "HWIO": (3, 4),   # TensorFlow / Keras Conv2D
    "OHWI": (0, 4),   # channels-last weights
    "OI": (0, 2),     # PyTorch Linear
    "IO": (1, 2),     # Keras Dense
}

_WEIGHT_DTYPES = (np.float16, np.float32, np.float64)


def _vector(value, name, n_channels, default):
    """A per-channel argument as float64 of shape (C,); None gives ``default``."""
    if value is None:
        return np.full(n_channels, default)
    array = check.as_array(value, name)
    if array.dtype.type not in check.SUPPORTED_DTYPES + (np.float16,):
        raise TypeError(f"{name} must have dtype float16, float32 or float64, got {array.dtype}")
    if array.shape != (n_channels,):
        raise ValueError(f"{name} must have shape ({n_channels},) (one value per output "
                         f"channel of the weight), got {array.shape}")
    return array.astype(np.float64)


def _from_layer(layer):
    """(running_mean, running_var, gamma, beta, eps) of a cnorm.BatchNorm."""
    if layer.running_mean is None:
        raise ValueError("the BatchNorm layer has no running statistics "
                         "(track_running_stats=False): there is nothing to fold")
    return layer.running_mean, layer.running_var, layer.gamma, layer.beta, layer.eps


def fold_batch_norm(weight, bias, running_mean, running_var=None, gamma=None, beta=None,
                    eps=1e-5, *, layout):
    """Fold an inference batch norm into the preceding convolution or linear layer.

    Returns ``(weight', bias')`` such that the layer with them computes what
    the original layer followed by ``batch_norm_inference`` computes::

        s       = gamma / sqrt(running_var + eps)       per output channel
        weight' = weight * s                            along the output-channel axis
        bias'   = (bias - running_mean) * s + beta

    ``s`` and every product are computed in float64 and rounded once into
    weight's dtype (``torch.nn.utils.fusion.fuse_conv_bn_weights`` computes in
    the weight's dtype, so cnorm's folded float32 weights are the exact
    values correctly rounded).

    Parameters
    ----------
    weight : array_like of float16, float32 or float64
        The layer's weight, its output channels where `layout` says.
    bias : array_like of shape (C_out,), or None
        The layer's bias; None means zero (a bias is returned either way).
    running_mean : array_like of shape (C_out,), or cnorm.BatchNorm
        The batch norm's running mean. A `cnorm.BatchNorm` layer may be given
        here instead of the four per-channel arrays and eps (then leave
        running_var, gamma, beta and eps at their defaults).
    running_var : array_like of shape (C_out,)
        The running variance, >= 0.
    gamma, beta : array_like of shape (C_out,), optional
        Scale and shift; None means 1 and 0.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    layout : {"OIHW", "IOHW", "HWIO", "OHWI", "OI", "IO"}
        Where the weight keeps its output channels (keyword only): ``"OIHW"``
        PyTorch and ONNX convolutions, ``"IOHW"`` PyTorch ConvTranspose,
        ``"HWIO"`` TensorFlow/Keras Conv2D, ``"OHWI"`` channels-last weights,
        ``"OI"`` PyTorch Linear, ``"IO"`` Keras Dense. (A 1-D or 3-D
        convolution's weight works with the 4-D name of its channel order:
        only the output axis, first or last or second, matters.)

    Returns
    -------
    weight, bias : numpy.ndarray
        New arrays in weight's dtype (the inputs are not modified); bias of
        shape (C_out,).

    Raises
    ------
    TypeError
        If weight is not float16/float32/float64, a per-channel array is not
        a float array, or layout is not a str.
    ValueError
        If layout is not one of the names above, weight's ndim does not match
        it, a per-channel array does not have the output axis's length,
        running_var has a negative value, or eps is not finite and > 0.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> w = np.ones((2, 1, 1, 1), np.float32)                    # OIHW, 2 output channels
    >>> w2, b2 = cnorm.fold_batch_norm(w, None, [1.0, 0.0], [4.0, 1.0], eps=1e-12, layout="OIHW")
    >>> w2.ravel(), b2
    (array([0.5, 1. ], dtype=float32), array([-0.5,  0. ], dtype=float32))
    """
    if not isinstance(layout, str):
        raise TypeError(f"layout must be a str, one of {sorted(LAYOUTS)}, got "
                        f"{type(layout).__name__}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    out_axis, ndim = LAYOUTS[layout]
    weight = check.as_array(weight, "weight")
    if weight.dtype.type not in _WEIGHT_DTYPES:
        raise TypeError(f"weight must have dtype float16, float32 or float64, got "
                        f"{weight.dtype}")
    if weight.ndim != ndim and not (ndim == 4 and weight.ndim in (3, 5)):
        raise ValueError(f"weight must have {ndim} axes for layout {layout!r}, got shape "
                         f"{weight.shape}")
    if out_axis == ndim - 1:  # last axis (HWIO, IO), whatever the convolution's rank
        out_axis = weight.ndim - 1
    n_out = weight.shape[out_axis]
    if hasattr(running_mean, "running_mean") and hasattr(running_mean, "num_features"):
        if running_var is not None or gamma is not None or beta is not None or eps != 1e-5:
            raise TypeError("with a BatchNorm layer in place of running_mean, leave "
                            "running_var, gamma, beta and eps unset (the layer's are used)")
        running_mean, running_var, gamma, beta, eps = _from_layer(running_mean)
    if running_var is None:
        raise TypeError(f"running_var must be an array of shape ({n_out},), got None")
    mean = _vector(running_mean, "running_mean", n_out, 0.0)
    var = _vector(running_var, "running_var", n_out, 1.0)
    if (var < 0).any():
        index = int(np.flatnonzero(var < 0)[0])
        raise ValueError(f"running_var must be >= 0 everywhere, got {var[index]} at index "
                         f"{index}")
    scale_gamma = _vector(gamma, "gamma", n_out, 1.0)
    shift = _vector(beta, "beta", n_out, 0.0)
    b = _vector(bias, "bias", n_out, 0.0)
    eps = check.finite_real(eps, "eps")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")

    scale = scale_gamma / np.sqrt(var + eps)
    shape = [1] * weight.ndim
    shape[out_axis] = n_out
    folded_weight = (weight.astype(np.float64) * scale.reshape(shape)).astype(weight.dtype)
    folded_bias = ((b - mean) * scale + shift).astype(weight.dtype)
    return folded_weight, folded_bias
