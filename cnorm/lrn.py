"""Local response normalization across channels: the public API.

Every function validates its arguments, resolves the window and thread count
and calls ``cnorm._lrn.run``, which reads the tensors through the buffer
protocol as the ``(outer, C, inner)`` view of cnorm._layout (channels on any
axis, no copy). Semantics and framework conventions: docs/guide/conventions.md,
"Local response normalization".
"""

from cnorm import _buffers, _layout
from cnorm import _validation as check
from cnorm._dispatch import kernels

_lrn = kernels("_lrn")

__all__ = ["lrn", "lrn_backward", "local_response_norm", "local_response_norm_backward"]

CONVENTIONS = ("torch", "onnx", "caffe")


def _size_window(size, convention):
    """Return (before, after) channels of the window of `size` in `convention`."""
    if not isinstance(convention, str) or convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    size = check.integer(size, "size", minimum=1)
    if convention == "torch":  # front-heavy for even sizes
        return size // 2, (size - 1) // 2
    if convention == "onnx":  # back-heavy for even sizes
        return (size - 1) // 2, size // 2
    if size % 2 == 0:
        raise ValueError(f"size must be odd with convention='caffe', got {size}")
    return (size - 1) // 2, (size - 1) // 2


def _tensors(x, dy, axis, out, n_threads, backward=False):
    """x (and, for the backward, dy) as they go to the kernels: a
    `cnorm._layout.Tensor` with channels on `axis`, and dy in x's memory order;
    and what ``cnorm._buffers.plain`` says of the call (None: not plain).
    A backward's dy is checked even when it is None (a TypeError): the kernel
    takes dy None for the forward, and lrn_backward(None, x) had returned it."""
    plain = _buffers.plain(x, out, n_threads, axis, 1, dy)
    x = _layout.tensor(x, "x", axis, plain=plain)
    if backward:
        dy = _layout.matching(dy, "dy", x, "x")
    return x, dy, plain


def _run(x, dy, out, before, after, a, k, beta, n_threads, plain):
    """Clip the window to C - 1 and run the forward kernel (dy None) or the
    backward one on the (outer, C, inner) view of the Tensor x (no copy)."""
    n_channels = x.channels
    if plain is not None:
        y = written = plain[0]
    else:
        y = _layout.output(out, x)
        if out is not None:
            check.no_partial_overlap(x.buffer(y), x.buffer(),
                                     None if dy is None else x.buffer(dy))
        written = _layout.target(y, x)
    n_threads = check.n_threads(n_threads, plain)
    if y.size:
        _lrn.run(x.buffer(), None if dy is None else x.buffer(dy), x.buffer(written),
                 min(before, n_channels - 1), min(after, n_channels - 1), a, k, beta,
                 n_threads, x.storage, x.outer, n_channels, x.inner)
    return _layout.finish(y, written)


def _lrn_params(depth_radius, bias, alpha, beta):
    if type(depth_radius) is int and depth_radius >= 0 and _buffers.finite_floats(bias, alpha,
                                                                                   beta):
        return depth_radius, bias, alpha, beta  # the common case, as the checks would give
    depth_radius = check.integer(depth_radius, "depth_radius", minimum=0)
    bias = check.finite_real(bias, "bias")
    alpha = check.finite_real(alpha, "alpha")
    beta = check.finite_real(beta, "beta")
    return depth_radius, bias, alpha, beta


def lrn(x, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5, *, axis=-1, out=None,
        n_threads=None):
    """Local response normalization, as ``tf.nn.local_response_normalization``.

    For every element, with channels on `axis` (the last by default)::

        sqr_sum[..., c] = sum(x[..., c - depth_radius : c + depth_radius + 1] ** 2)
        y = x / (bias + alpha * sqr_sum) ** beta

    The window is clipped at the channel edges and alpha is NOT divided by the
    window size (TensorFlow's convention; see `local_response_norm` for PyTorch's,
    ONNX's and Caffe's).

    Parameters
    ----------
    x : array_like of float32, float64, float16 or bfloat16
        Input with C channels on `axis` (NHWC images with the default, NCHW
        with ``axis=1``). Any ndim >= 1. Half-precision data is computed in
        float32 (sums in float64) and each output rounded once.
    depth_radius : int, default 5
        Half-width of the window: it spans ``2 * depth_radius + 1`` channels.
    bias : float, default 1.0
        Constant added to the scaled sum (TensorFlow's ``bias``, PyTorch's ``k``).
    alpha : float, default 1.0
        Scale of the sum of squares.
    beta : float, default 0.5
        Exponent.
    axis : int, default -1
        The channel axis: the window runs along it. NCHW data (PyTorch) is
        ``axis=1`` and is read in place, with no copy.
    out : numpy.ndarray, optional
        Array of x's shape, dtype and memory layout to write into; may be ``x``
        itself (in-place) when x is used without a copy.
    n_threads : int, optional
        Upper bound on the threads used. None uses OpenMP's default, which
        follows ``OMP_NUM_THREADS`` and threadpoolctl. The result is the same,
        bit for bit, for every thread count.

    Returns
    -------
    numpy.ndarray
        Array of x's shape, dtype and memory layout (``out`` if given).

    Raises
    ------
    TypeError
        If x is not float32/float64/float16/bfloat16, or a parameter (axis
        included) has the wrong type.
    ValueError
        If x is 0-d, axis is out of range (numpy's AxisError), depth_radius is
        negative, a float parameter is not finite, `out` does not match x, or
        n_threads < 1.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> x = np.full((1, 1, 1, 3), 2.0, dtype=np.float32)
    >>> cnorm.lrn(x, depth_radius=1, bias=0.0, alpha=1.0, beta=1.0)
    array([[[[0.25      , 0.16666667, 0.25      ]]]], dtype=float32)
    """
    x, _, plain = _tensors(x, None, axis, out, n_threads)
    depth_radius, bias, alpha, beta = _lrn_params(depth_radius, bias, alpha, beta)
    return _run(x, None, out, depth_radius, depth_radius, alpha, bias, beta, n_threads, plain)


def lrn_backward(dy, x, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5, *, axis=-1, out=None,
                 n_threads=None):
    """Gradient of `lrn` with respect to x, as TensorFlow's ``LRNGrad``.

    The divisor is recomputed from `x` (TensorFlow passes the forward output too,
    but recovering the divisor from it is unstable for small x)::

        dx_i = dy_i * D_i**-beta
               - 2 * alpha * beta * x_i * sum_j(dy_j * y_j / D_j)

    with ``j`` over the channels whose window contains ``i``.

    Parameters
    ----------
    dy : array_like, shape and dtype of x
        Gradient of the loss with respect to ``lrn(x, ...)``.
    x : array_like of float32, float64, float16 or bfloat16
        The forward input, channels on `axis`.
    depth_radius, bias, alpha, beta, axis
        As for `lrn`.
    out : numpy.ndarray, optional
        Array of x's shape, dtype and memory layout to write dx into (may be dy).
    n_threads : int, optional
        As for `lrn`.

    Returns
    -------
    numpy.ndarray
        dx, of x's shape and dtype (``out`` if given).

    Raises
    ------
    TypeError, ValueError
        As for `lrn`, and if dy does not match x in shape or dtype.
    """
    x, dy, plain = _tensors(x, dy, axis, out, n_threads, backward=True)
    depth_radius, bias, alpha, beta = _lrn_params(depth_radius, bias, alpha, beta)
    return _run(x, dy, out, depth_radius, depth_radius, alpha, bias, beta, n_threads, plain)


def _size_params(size, alpha, beta, k, convention):
    if (convention == "torch" and type(size) is int and 1 <= size <= _SMALL_SIZE
            and _buffers.finite_floats(alpha, beta, k)):
        # the common case, as the checks below would give it
        return size // 2, (size - 1) // 2, alpha / size, k, beta
    before, after = _size_window(size, convention)
    alpha = check.finite_real(alpha, "alpha")
    beta = check.finite_real(beta, "beta")
    k = check.finite_real(k, "k")
    return before, after, check.exact_ratio(alpha, size), k, beta


_SMALL_SIZE = 2 ** 53  # alpha / size is plain float division below this


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, *, convention="torch",
                        axis=-1, out=None, n_threads=None):
    """Size-based local response normalization (PyTorch, ONNX and Caffe).

    For channel ``c``, with the window ``[c - before, c + after]`` clipped to
    the channels that exist::

        y_c = x_c / (k + alpha / size * sum(x_i ** 2 over the window)) ** beta

    Parameters
    ----------
    x : array_like of float32, float64, float16 or bfloat16
        Input with C channels on `axis` (NHWC with the default, NCHW with
        ``axis=1``, read in place). Any ndim >= 1.
    size : int
        Number of channels in the window, >= 1.
    alpha : float, default 1e-4
        Scale; divided by `size`, as all three frameworks do.
    beta : float, default 0.75
        Exponent.
    k : float, default 1.0
        Additive constant (ONNX's ``bias``).
    convention : {"torch", "onnx", "caffe"}, default "torch"
        Where the window sits for an even size: ``"torch"``
        (``F.local_response_norm``) puts ``size // 2`` channels before ``c`` and
        ``(size - 1) // 2`` after; ``"onnx"`` (ONNX ``LRN``, ONNX Runtime) puts
        ``(size - 1) // 2`` before and ``size // 2`` after; ``"caffe"`` accepts
        odd sizes only. For odd sizes all three agree.
    axis : int, default -1
        The channel axis: the window runs along it. NCHW data (PyTorch) is
        ``axis=1`` and is read in place, with no copy.
    out : numpy.ndarray, optional
        As for `lrn`.
    n_threads : int, optional
        As for `lrn`.

    Returns
    -------
    numpy.ndarray
        Array of x's shape and dtype (``out`` if given).

    Raises
    ------
    TypeError, ValueError
        As for `lrn`; ValueError also if size < 1, the convention is unknown or
        an even size is given with ``convention="caffe"``.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> x = np.arange(1.0, 6.0)
    >>> cnorm.local_response_norm(x, 2, alpha=1.0, beta=1.0, k=1.0).round(6)
    array([0.666667, 0.571429, 0.4     , 0.296296, 0.232558])
    >>> cnorm.local_response_norm(x, 2, 1.0, 1.0, 1.0, convention="onnx").round(6)
    array([0.285714, 0.266667, 0.222222, 0.186047, 0.37037 ])
    """
    x, _, plain = _tensors(x, None, axis, out, n_threads)
    before, after, a, k, beta = _size_params(size, alpha, beta, k, convention)
    return _run(x, None, out, before, after, a, k, beta, n_threads, plain)


def local_response_norm_backward(dy, x, size, alpha=1e-4, beta=0.75, k=1.0, *,
                                 convention="torch", axis=-1, out=None, n_threads=None):
    """Gradient of `local_response_norm` with respect to x.

    For even sizes the sum over outputs runs over the MIRRORED window
    ``[i - after, i + before]``, which is what PyTorch's autograd computes.

    Parameters
    ----------
    dy : array_like, shape and dtype of x
        Gradient of the loss with respect to the forward output.
    x : array_like of float32, float64, float16 or bfloat16
        The forward input, channels on `axis`.
    size, alpha, beta, k, convention, axis
        As for `local_response_norm`.
    out : numpy.ndarray, optional
        Array of x's shape, dtype and memory layout to write dx into.
    n_threads : int, optional
        As for `lrn`.

    Returns
    -------
    numpy.ndarray
        dx, of x's shape and dtype (``out`` if given).

    Raises
    ------
    TypeError, ValueError
        As for `local_response_norm`, and if dy does not match x.
    """
    x, dy, plain = _tensors(x, dy, axis, out, n_threads, backward=True)
    before, after, a, k, beta = _size_params(size, alpha, beta, k, convention)
    return _run(x, dy, out, before, after, a, k, beta, n_threads, plain)
