"""Batch normalization with channels on any axis: the public API.

A plain call (C-contiguous arrays, float64 per-channel vectors, ``out``
ready; see ``cnorm._batchnorm``'s infer_plain, train_plain and
backward_plain) is checked and run by one compiled call. Any other call is
checked here first, every argument (so a bad call changes nothing), then
makes one call into ``cnorm._batchnorm`` (two in training: statistics, then
normalization), with the results the compiled path would give. The kernels
read the tensors through the buffer protocol as the ``(outer, C, inner)``
view of cnorm._layout (channels on any axis, no copy), compute the
per-channel coefficients in float64 and run the passes over the tensor.
Running statistics are updated in NumPy, after the kernels. Semantics and the
framework conventions: docs/guide/conventions.md, "Batch normalization".
"""
import numpy as np

from cnorm import _buffers, _layout
from cnorm import _validation as check
from cnorm._dispatch import kernels
from cnorm.moments import Moments

_bn = kernels("_batchnorm")

__all__ = ["batch_norm_inference", "batch_norm_training", "batch_norm_backward",
           "batch_norm_backward_sums"]


# ---------------------------------------------------------------------------
# Checks particular to batch norm (the shared ones are in cnorm._validation)

def _input(x, axis, name="x", *, allow_empty=False, plain=None):
    """x as a `cnorm._layout.Tensor` with its channels on `axis` (`plain`: see
    cnorm._layout.tensor)."""
    t = _layout.tensor(x, name, axis, min_ndim=2, plain=plain)
    if t.array.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty, got shape {t.shape}")
    return t


def _global_moments(moments, n_channels):
    """Check the global statistics given to batch_norm_training."""
    if not isinstance(moments, Moments):
        raise TypeError(f"moments must be a cnorm.Moments or None, got {type(moments).__name__}")
    if moments.n_channels != n_channels:
        raise ValueError(
            f"moments must have {n_channels} channels (x's channel axis), got "
            f"{moments.n_channels}"
        )
    if moments.count <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got moments of count "
            f"{moments.count}"
        )
    return moments


def _global_sums(sums, count, n_channels, training):
    """Check the (sum_dy, sum_dy_xhat) and count given to batch_norm_backward."""
    if (sums is None) != (count is None):
        raise ValueError("sums and count must be given together (or neither)")
    if sums is None:
        return None
    if not training:
        raise ValueError("sums and count apply to training=True only (frozen statistics "
                         "need no sums for dx)")
    if not isinstance(sums, (tuple, list)) or len(sums) != 2:
        raise TypeError(
            "sums must be a pair (sum_dy, sum_dy_xhat) as batch_norm_backward_sums returns, "
            f"got {type(sums).__name__}"
        )
    sum_dy = _per_channel(sums[0], "sums[0] (sum_dy)", n_channels)
    sum_dy_xhat = _per_channel(sums[1], "sums[1] (sum_dy_xhat)", n_channels)
    count = check.integer(count, "count", minimum=1)
    if count > _MAX_COUNT:  # the kernel's Py_ssize_t: no batch holds more values
        raise ValueError(f"count must be <= 2**63 - 1 (values per channel), got {count}")
    return sum_dy, sum_dy_xhat, count


_MAX_COUNT = 2 ** 63 - 1


_FLOAT64 = np.dtype(np.float64)
_INF = float("inf")


def _per_channel(value, name, n_channels):
    """Return a per-channel float32/float64 argument as a float64 array of shape (C,).

    The caller's array itself when it already is one (it is only read)."""
    if (type(value) is np.ndarray and value.dtype == _FLOAT64 and value.shape == (n_channels,)
            and value.flags.c_contiguous and value.flags.aligned):
        return value  # the common case, checked in a fraction of a microsecond
    if value is None:
        raise TypeError(f"{name} must be an array of shape ({n_channels},), got None")
    array = check.as_array(value, name)
    if array.dtype.type not in check.SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {array.dtype}")
    if array.shape != (n_channels,):
        raise ValueError(
            f"{name} must have shape ({n_channels},) (one value per channel), got {array.shape}"
        )
    return check.float64_vector(array)


_non_negative = check.non_negative


def _eps(eps):
    if type(eps) is float and 0.0 < eps < _INF:
        return eps
    eps = check.finite_real(eps, "eps")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return eps


def _momentum(momentum):
    if momentum is None:
        raise TypeError(
            "momentum must be a real number in [0, 1], got None; for PyTorch's "
            "momentum=None (cumulative average) pass momentum=1/num_batches_tracked"
        )
    if type(momentum) is float and 0.0 <= momentum <= 1.0:
        return momentum
    momentum = check.finite_real(momentum, "momentum")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return momentum


def _flag(value, name):
    if value is True or value is False:
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _running(value, name, n_channels):
    """Check a running statistic that will be updated in place."""
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray (it is updated in place), got {type(value).__name__}"
        )
    if value.dtype.type not in check.SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {value.dtype}")
    if value.shape != (n_channels,):
        raise ValueError(
            f"{name} must have shape ({n_channels},) (one value per channel), got {value.shape}"
        )
    if not value.flags.writeable:
        raise ValueError(f"{name} must be writable (it is updated in place)")
    return value


def _separate_running(running_mean, running_var, **others):
    """Check the running statistics share no memory with each other or with any
    other argument: they are written after the kernels have read the inputs
    and written `out`, so an overlap would give a wrong y, wrong statistics,
    or a modified input."""
    if np.may_share_memory(running_mean, running_var):
        raise ValueError("running_mean and running_var must not share memory")
    for name, other in others.items():
        if not isinstance(other, np.ndarray):
            continue
        for running_name, running in (("running_mean", running_mean),
                                      ("running_var", running_var)):
            if np.may_share_memory(running, other):
                raise ValueError(f"{running_name} must not share memory with {name}")


def _relu(activation):
    """Whether the fused activation is ReLU: `activation` None or "relu"."""
    if activation is None:
        return False
    if not isinstance(activation, str):
        raise TypeError(f"activation must be None or 'relu', got {type(activation).__name__} "
                        f"{activation!r}")
    if activation != "relu":
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    return True


def _residual(residual, x, out):
    """The residual of x's shape and dtype, in x's memory layout (copied once if
    it is not), or None. It must not share memory with `out`: the pass reads
    each residual value after it has written the output value of that index."""
    if residual is None:
        return None
    residual = _layout.matching(residual, "residual", x, "x")
    if out is not None and np.may_share_memory(out, residual):
        raise ValueError("residual must not share memory with out (y = act(bn(x) + residual) "
                         "cannot be written over residual)")
    return residual


# Below this eps, 1/sqrt(var + eps) can exceed float32's largest value.
_FLOAT32_MIN_EPS = _buffers.FLOAT32_MIN_EPS


def _vectors(x, *vectors):
    """None unless each of `vectors` is None or a plain float64 vector of x's
    channel count; then whether x must be normalized in float64 because of
    one (see `_widen`)."""
    return _buffers.plain_vectors(x.channels, x.storage != 0, *vectors)


def _widen(x, unsafe, eps=1.0):
    """Whether data stored in float32, float16 or bfloat16 (computed in float32)
    must be normalized in float64 instead: a per-channel value (``unsafe``,
    from `_vectors`) or 1/sqrt(eps) outside float32's normal range would round
    to inf, 0 or a subnormal in the float32 pass's coefficients, and give inf,
    NaN or lost precision where the float64 answer fits. Never for float64
    data."""
    return x.storage != 0 and (unsafe or eps < _FLOAT32_MIN_EPS)


def _widened(x, array=None):
    """`array` (default: x's data) in x's memory order, as float64."""
    return (x.memory if array is None else x.buffer(array).view(x.memory.dtype)).astype(
        np.float64)


def _store_widened(y, x, values):
    """Round the float64 `values` (x's memory order) once into the output y."""
    memory = y if x.order is None else y.transpose(x.order)
    np.copyto(memory, values, casting="unsafe")
    return y


def _output(out, x, dy=None, plain=None):
    """The output array (`out` checked against the Tensor x, or a new one) and
    the array the kernel writes (see cnorm._layout.target).

    `out` may be x or dy exactly (every kernel reads an element before it
    writes the same element) but must not partly overlap either. A plain call
    (`plain`, from ``cnorm._buffers.plain``) has its output checked already.
    """
    if plain is not None:
        return plain[0], plain[0]
    y = _layout.output(out, x)
    if out is not None:
        check.no_partial_overlap(x.buffer(y), x.buffer(), None if dy is None else x.buffer(dy))
    return y, _layout.target(y, x)


# ---------------------------------------------------------------------------
# Public functions

def batch_norm_inference(x, running_mean, running_var, gamma=None, beta=None, eps=1e-5,
                         *, activation=None, residual=None, axis=-1, out=None,
                         n_threads=None):
    """Batch normalization with fixed statistics (inference, ``model.eval()``).

    Per channel ``c`` (the index along `axis`, the last by default)::

        y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta
          = x * A + B,  A = gamma / sqrt(running_var + eps),  B = beta - running_mean * A

    With `residual` and `activation`, ``y = act(bn(x) + residual)``, the
    tail of a ResNet block, in the same single pass (x and residual read once,
    y written once); the sum and the ReLU are taken in x's compute precision
    after the affine step, and each output is rounded once.

    The coefficients are computed once per call in float64. float64 data is
    normalized in float64, float32 data in float32: as ``x * A + B`` where
    every channel has ``|running_mean| <= 4 * sqrt(running_var + eps)`` (the
    error is then a few float32 roundings of ``|gamma| + |beta| + |y|``),
    otherwise as ``(x - m) * A + B'`` with ``m`` the running mean rounded to
    float32 and ``B'`` corrected in float64 for that rounding, so the error
    stays a few float32 roundings of ``|y|`` even where
    ``|running_mean| >> sqrt(running_var)`` (the folded ``x * A + B`` that
    TensorFlow and ONNX Runtime apply regardless is relative to
    ``|x * A| + |B|`` there).

    Parameters
    ----------
    x : array_like of float32, float64, float16 or bfloat16
        Input with C channels on `axis` (NHWC images with the default, NCHW
        with ``axis=1``), ndim >= 2, not empty. Half-precision data is
        normalized in float32 and each output rounded once.
    running_mean, running_var : array_like of float32 or float64, shape (C,)
        The statistics to normalize with; running_var must be >= 0.
    gamma, beta : array_like of float32 or float64, shape (C,), optional
        Scale and shift (PyTorch's ``weight`` and ``bias``); None means 1 and 0.
    eps : float, default 1e-5
        Added to the variance; must be finite and > 0 (PyTorch's default; TF's
        Keras layer uses 1e-3).
    activation : {None, "relu"}, default None
        Applied last, fused: "relu" is ``max(y, 0)`` (NaN stays NaN).
    residual : array_like, optional
        Added to the normalized value before the activation; x's shape and
        dtype (a layout other than x's is copied once). It must not share
        memory with `out`.
    axis : int, default -1
        The channel axis: statistics are per index along it (NCHW data from
        PyTorch is ``axis=1``, read in place with no copy).
    out : numpy.ndarray, optional
        Array of x's shape, dtype and memory layout to write into; may be
        ``x`` itself (in-place).
    n_threads : int, optional
        Upper bound on the threads used; None uses OpenMP's default (which
        follows ``OMP_NUM_THREADS`` and threadpoolctl).

    Returns
    -------
    numpy.ndarray
        y, of x's shape, dtype and memory layout (``out`` if given).

    Raises
    ------
    TypeError
        If x is not float32/float64/float16/bfloat16, a per-channel array is
        not float32/float64, a scalar (axis included) has the wrong type,
        activation is not None or a str, or residual's dtype is not x's.
    ValueError
        If x is empty or has ndim < 2, axis is out of range (numpy's
        AxisError), a per-channel array is not of shape (C,),
        running_var has a negative value, eps is not finite and > 0, `out` does
        not match x, n_threads < 1, activation is not None or "relu", or
        residual's shape is not x's or it shares memory with `out`.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> cnorm.batch_norm_inference(x, [2.0, 20.0], [1.0, 100.0], eps=1e-12)
    array([[-1., -1.],
           [ 1.,  1.]])
    """
    if residual is None:  # a plain call runs at once (cnorm._batchnorm.infer_plain)
        y = _bn.infer_plain(x, running_mean, running_var, gamma, beta, eps, activation, out,
                            n_threads, axis)
        if y is not None:
            return y
    plain = _buffers.plain(x, out, n_threads, axis, 2)
    x = _input(x, axis, plain=plain)
    n_channels = x.channels
    unsafe = _vectors(x, running_mean, running_var, gamma, beta)
    if running_mean is None or running_var is None or unsafe is None:
        running_mean = _per_channel(running_mean, "running_mean", n_channels)
        running_var = _per_channel(running_var, "running_var", n_channels)
        if gamma is not None:  # None: the kernel takes 1 (and 0 for beta)
            gamma = _per_channel(gamma, "gamma", n_channels)
        if beta is not None:
            beta = _per_channel(beta, "beta", n_channels)
        unsafe = _vectors(x, running_mean, running_var, gamma, beta)
    _non_negative(running_var, "running_var")
    # (the common cases inline: a tenth of a microsecond each on a tiny call)
    eps = eps if type(eps) is float and 0.0 < eps < _INF else _eps(eps)
    relu = activation is not None and _relu(activation)
    residual = None if residual is None else _residual(residual, x, out)
    y, written = _output(out, x, plain=plain)
    n_threads = check.n_threads(n_threads, plain)
    if _widen(x, unsafe, eps):
        wide = _widened(x)
        _bn.normalize(wide, wide, running_mean, running_var, gamma, beta, eps, None, False,
                      n_threads, 0, x.outer, n_channels, x.inner,
                      None if residual is None else _widened(x, residual), relu)
        return _store_widened(y, x, wide)
    _bn.normalize(x.buffer(), x.buffer(written), running_mean, running_var, gamma, beta, eps,
                  None, False, n_threads, x.storage, x.outer, n_channels, x.inner,
                  None if residual is None else x.buffer(residual), relu)
    return _layout.finish(y, written)


def batch_norm_training(x, gamma=None, beta=None, eps=1e-5, *, running_mean=None,
                        running_var=None, momentum=0.1, running_var_unbiased=True,
                        moments=None, activation=None, axis=-1, out=None, n_threads=None):
    """Batch normalization with the statistics of the batch (training).

    Per channel ``c`` over the ``m = x.size // C`` values of the channel::

        mean   = sum(x) / m
        var_b  = sum((x - mean)**2) / m          (biased: used to normalize)
        invstd = 1 / sqrt(var_b + eps)
        y      = gamma * (x - mean) * invstd + beta

    ``activation="relu"`` returns ``max(y, 0)`` instead, fused into the
    normalizing pass (its backward: `batch_norm_backward` with the same
    activation and beta).

    The statistics are accumulated in float64 by shifted sums (deviations from
    a value of the channel) per chunk of rows, merged with Chan's formula:
    accurate when ``|mean| >> std``, and bit-identical for every thread count.

    When running statistics are given they are updated in place, after the
    normalization, as::

        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var  = (1 - momentum) * running_var  + momentum * v
        v = var_b * m / (m - 1)  if running_var_unbiased  else  var_b

    (``momentum == 1`` replaces the running statistics outright.)

    With ``moments`` (the statistics of the whole batch, e.g. merged over the
    shards of data-parallel workers: a synchronized batch norm), x is
    normalized with ``moments.mean`` and ``moments.var()`` instead of its own
    statistics, and ``m`` above is ``moments.count``.

    The defaults are PyTorch's; every framework's convention is one setting:

    - PyTorch ``momentum=mu``: ``momentum=mu`` (default 0.1).
    - PyTorch ``momentum=None`` (cumulative average): ``momentum=1/n`` where n is
      ``num_batches_tracked`` counting this batch (1 for the first batch, which
      therefore replaces the running statistics).
    - TensorFlow ``FusedBatchNormV3(exponential_avg_factor=f)``: ``momentum=f``
      (TF's default f = 1.0 replaces the running statistics).
    - Keras 3 ``BatchNormalization(momentum=mu)``: ``momentum=1 - mu`` (0.01 for
      Keras's 0.99) and ``running_var_unbiased=False``.
    - ONNX ``BatchNormalization(momentum=mu)``: ``momentum=1 - mu`` (0.1 for
      ONNX's 0.9) and ``running_var_unbiased=False``.

    Parameters
    ----------
    x : array_like of float32, float64, float16 or bfloat16
        Input with C channels on `axis`; ndim >= 2, and more than one value
        per channel.
    gamma, beta : array_like of float32 or float64, shape (C,), optional
        Scale and shift; None means 1 and 0.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    running_mean, running_var : numpy.ndarray of float32 or float64, shape (C,), optional
        Writable running statistics, updated in place; give both or neither.
        running_var must be >= 0. Neither is touched if an error is raised.
    momentum : float in [0, 1], default 0.1
        Weight of the NEW batch in the update (PyTorch's meaning).
    running_var_unbiased : bool, default True
        Whether the running variance takes the unbiased batch variance
        (PyTorch, TensorFlow) or the biased one (Keras 3, ONNX).
    moments : Moments, optional
        Statistics of the whole batch to normalize with (count > 1, C
        channels), for example ``Moments.merge_all`` of every worker's
        ``cnorm.moments(x)`` in rank order. x may then be empty (a worker
        without data). None: x's own statistics.
    activation : {None, "relu"}, default None
        Applied to y in the same pass ("relu": ``max(y, 0)``, NaN stays NaN).
    axis : int, default -1
        The channel axis: statistics are per index along it (NCHW data from
        PyTorch is ``axis=1``, read in place with no copy).
    out : numpy.ndarray, optional
        Array of x's shape, dtype and memory layout to write y into (may be x).
    n_threads : int, optional
        As for `batch_norm_inference`.

    Returns
    -------
    y : numpy.ndarray
        x's shape and dtype (``out`` if given).
    mean, invstd : numpy.ndarray of float64, shape (C,)
        The batch mean and ``1 / sqrt(var_b + eps)``, always float64 (whatever
        x's dtype), ready for `batch_norm_backward`. ``var_b = invstd**-2 - eps``.
        With ``moments``, those of the whole batch.

    Raises
    ------
    TypeError, ValueError
        As for `batch_norm_inference`; ValueError also if there is only one
        value per channel ("Expected more than 1 value per channel when
        training", as PyTorch), momentum is outside [0, 1], or only one of the
        running statistics is given; TypeError if a running statistic is not a
        float32/float64 numpy.ndarray, ValueError if it has the wrong shape or
        is read-only; TypeError if moments is not a `Moments`, ValueError if it
        has another channel count or a count <= 1.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1)
    >>> running_mean, running_var = np.zeros(1), np.ones(1)
    >>> y, mean, invstd = cnorm.batch_norm_training(
    ...     x, running_mean=running_mean, running_var=running_var, momentum=0.1)
    >>> mean, running_var.round(5)
    (array([2.5]), array([1.06667]))
    """
    if running_mean is None and running_var is None and moments is None:
        plain = _bn.train_plain(x, gamma, beta, eps, momentum, running_var_unbiased,
                                activation, out, n_threads, axis)
        if plain is not None:  # a plain call, run at once (cnorm._batchnorm)
            return plain
    given = (None if running_mean is None  # as passed: for _separate_running
             else dict(x=x, out=out, gamma=gamma, beta=beta))
    plain = _buffers.plain(x, out, n_threads, axis, 2)
    x = _input(x, axis, allow_empty=moments is not None, plain=plain)
    n_channels = x.channels
    if moments is not None:
        moments = _global_moments(moments, n_channels)
    m = x.outer * x.inner if moments is None else moments.count
    unsafe = _vectors(x, gamma, beta)
    if unsafe is None:
        if gamma is not None:  # None: the kernel takes 1 (and 0 for beta)
            gamma = _per_channel(gamma, "gamma", n_channels)
        if beta is not None:
            beta = _per_channel(beta, "beta", n_channels)
        unsafe = _vectors(x, gamma, beta)
    eps = eps if type(eps) is float and 0.0 < eps < _INF else _eps(eps)
    relu = activation is not None and _relu(activation)
    momentum = _momentum(momentum)
    running_var_unbiased = _flag(running_var_unbiased, "running_var_unbiased")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or neither)")
    if running_mean is not None:
        _running(running_mean, "running_mean", n_channels)
        _running(running_var, "running_var", n_channels)
        _non_negative(running_var, "running_var")
        _separate_running(running_mean, running_var, **given)
    if m == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got x of shape {x.shape}"
        )
    y, written = _output(out, x, plain=plain)
    n_threads = check.n_threads(n_threads, plain)

    view = (x.storage, x.outer, n_channels, x.inner)
    if moments is None:
        mean = np.empty(n_channels)
        var_biased = np.empty(n_channels)
        unsafe = _bn.batch_stats(x.buffer(), mean, var_biased, n_threads, *view) or unsafe
    else:
        mean = moments.mean.copy()
        var_biased = moments.var()
        unsafe = unsafe or _vectors(x, mean, var_biased)
    invstd = np.empty(n_channels)
    if x.array.size == 0:  # the kernel's own arithmetic (IEEE division and square root)
        invstd[...] = 1.0 / np.sqrt(var_biased + eps)
    elif _widen(x, unsafe, eps):
        wide = _widened(x)
        _bn.normalize(wide, wide, mean, var_biased, gamma, beta, eps, invstd, True, n_threads,
                      0, x.outer, n_channels, x.inner, None, relu)
        _store_widened(y, x, wide)
    else:
        _bn.normalize(x.buffer(), x.buffer(written), mean, var_biased, gamma, beta, eps,
                      invstd, True, n_threads, *view, None, relu)
        _layout.finish(y, written)

    if running_mean is not None:
        batch_var = var_biased * (m / (m - 1)) if running_var_unbiased else var_biased
        _update_running(running_mean, mean, momentum)
        _update_running(running_var, batch_var, momentum)
    return y, mean, invstd


def _update_running(running, batch_stat, momentum):
    # In float64, rounded once into the running array's dtype; momentum 1 replaces
    # (so an inf or NaN running value does not survive as 0 * inf).
    if momentum == 1.0:
        running[...] = batch_stat
    else:
        running[...] = (1.0 - momentum) * running.astype(np.float64) + momentum * batch_stat


def batch_norm_backward(dy, x, mean, invstd, gamma=None, *, beta=None, activation=None,
                        training=True, sums=None, count=None, axis=-1, out=None,
                        n_threads=None):
    """Gradients of batch normalization with respect to x, gamma and beta.

    With ``g = dy`` and ``xhat = (x - mean) * invstd``, per channel over its m values::

        dbeta  = sum(g)
        dgamma = sum(g * xhat)
        dx     = gamma * invstd * (g - dbeta/m - xhat * dgamma/m)   (training=True)
        dx     = gamma * invstd * g                                 (training=False)

    ``activation="relu"`` differentiates ``relu(bn(x))`` (the forward's
    ``activation="relu"``): ``g = dy`` where ``gamma*xhat + beta > 0`` and 0
    elsewhere, the mask recomputed from x, the statistics, gamma and `beta`
    inside the two passes (no mask tensor, no extra pass); pass the forward's
    beta.

    ``training=True`` differentiates through the batch statistics: pass the
    ``mean`` and ``invstd`` returned by `batch_norm_training`. ``training=False``
    treats the statistics as constants (the backward of `batch_norm_inference`):
    pass ``running_mean`` and ``1 / sqrt(running_var + eps)``. The sums are
    accumulated in float64 in a fixed order (bit-identical for every thread
    count); dx is computed in x's precision from per-channel coefficients
    computed in float64 (centered on the mean, so float32 stays accurate where
    ``|mean| >> std``).

    Distributed (synchronized) batch norm: with ``sums`` (``dbeta`` and
    ``dgamma`` summed over every worker's `batch_norm_backward_sums`) and
    ``count`` (``m``, the whole batch's values per channel), dx of this
    worker's x is computed from them and no sums are taken over x, as
    PyTorch's ``batch_norm_backward_elemt``.

    Parameters
    ----------
    dy : array_like, shape and dtype of x
        Gradient of the loss with respect to y.
    x : array_like of float32, float64, float16 or bfloat16
        The forward input, channels on `axis` (ndim >= 2, not empty).
    mean, invstd : array_like of float32 or float64, shape (C,)
        The statistics the forward normalized with (float64 as returned by
        `batch_norm_training`; float32 is accepted too, e.g. a framework's saved
        statistics).
    gamma : array_like of float32 or float64, shape (C,), optional
        The forward's scale; None means 1.
    beta : array_like of float32 or float64, shape (C,), optional
        The forward's shift; None means 0. Only the ReLU mask depends on it.
    activation : {None, "relu"}, default None
        The forward's fused activation.
    training : bool, default True
        Whether the statistics were those of the batch (True) or fixed (False).
    sums : (array_like, array_like), optional
        ``(sum_dy, sum_dy_xhat)`` of the whole batch, each of shape (C,): the
        sums of `batch_norm_backward_sums` over all workers. Give with
        ``count``, and with ``training=True`` only. x may then be empty.
    count : int, optional
        Values per channel of the whole batch (``moments.count`` of the
        forward), >= 1 and <= 2**63 - 1.
    axis : int, default -1
        The channel axis: statistics are per index along it (NCHW data from
        PyTorch is ``axis=1``, read in place with no copy).
    out : numpy.ndarray, optional
        Array of x's shape, dtype and memory layout to write dx into (may be dy or x).
    n_threads : int, optional
        As for `batch_norm_inference`.

    Returns
    -------
    dx : numpy.ndarray
        x's shape and dtype (``out`` if given).
    dgamma, dbeta : numpy.ndarray of float64, shape (C,)
        Returned whether or not gamma was given; with ``sums``, copies of
        ``sum_dy_xhat`` and ``sum_dy`` (the gradients of the whole batch).

    Raises
    ------
    TypeError, ValueError
        As for `batch_norm_inference`, and if dy does not match x in shape or
        dtype, only one of sums and count is given, sums is given with
        ``training=False`` or with ``activation="relu"``, or a sum is not of
        shape (C,); as for `batch_norm_inference` if activation or beta is wrong.
    """
    if sums is None and count is None:
        plain = _bn.backward_plain(dy, x, mean, invstd, gamma, beta, activation, training, out,
                                   n_threads, axis)
        if plain is not None:  # a plain call, run at once (cnorm._batchnorm)
            return plain
    plain = _buffers.plain(x, out, n_threads, axis, 2, dy)
    x = _input(x, axis, allow_empty=sums is not None, plain=plain)
    dy = _layout.matching(dy, "dy", x, "x")
    n_channels = x.channels
    unsafe = _vectors(x, mean, invstd, gamma, beta)
    if mean is None or invstd is None or unsafe is None:
        mean = _per_channel(mean, "mean", n_channels)
        invstd = _per_channel(invstd, "invstd", n_channels)
        if gamma is not None:  # None: the kernel takes 1
            gamma = _per_channel(gamma, "gamma", n_channels)
        if beta is not None:
            beta = _per_channel(beta, "beta", n_channels)
        unsafe = _vectors(x, mean, invstd, gamma, beta)
    relu = activation is not None and _relu(activation)
    training = _flag(training, "training")
    given = _global_sums(sums, count, n_channels, training)
    if relu and given is not None:
        raise ValueError("activation='relu' cannot be combined with sums (the distributed "
                         "backward's sums are of the unmasked dy)")
    dx, written = _output(out, x, dy, plain)
    n_threads = check.n_threads(n_threads, plain)

    if given is None:
        dgamma = np.empty(n_channels)
        dbeta = np.empty(n_channels)
        frozen_relu = relu and not training
        if frozen_relu:  # the inputs _frozen_relu_at_non_finite_x may read after the kernel
            inputs = _frozen_relu_inputs(x, dy, dx if out is not None else None)
        if not _backward_pass(x, dy, dx, written, _widen(x, unsafe), mean, invstd, gamma,
                              training, dgamma, dbeta, n_threads, relu=relu, beta=beta):
            return _reference_backward(dx, x, dy, mean, invstd, gamma, beta, relu)
        if frozen_relu and not np.isfinite(dgamma).all():
            _frozen_relu_at_non_finite_x(dx, x, *inputs, mean, invstd, gamma, beta, dgamma)
        return dx, dgamma, dbeta
    sum_dy, sum_dy_xhat, count = given
    dgamma = sum_dy_xhat.copy()  # read by the kernel, returned to the caller
    dbeta = sum_dy.copy()
    if x.array.size == 0:
        return dx, dgamma, dbeta
    widen = _widen(x, unsafe or _sums_unsafe(x, sum_dy, sum_dy_xhat, count, invstd, gamma))
    _backward_pass(x, dy, dx, written, widen, mean, invstd, gamma, True, dgamma, dbeta,
                   n_threads, sums_given=True, count=count)
    return dx, dgamma, dbeta


def _backward_pass(x, dy, dx, written, widen, mean, invstd, gamma, training, dgamma, dbeta,
                   n_threads, *, sums_given=False, count=0, relu=False, beta=None):
    """Run the kernel's backward into dx (see _output for `written`), over x's
    storage, or in float64 if `widen` (see `_widen`), rounded once into dx.
    False if the kernel declined (extreme statistics: see `_reference_backward`;
    dx is then untouched), else True."""
    args = (mean, invstd, gamma, training, dgamma, dbeta, n_threads)
    keywords = (sums_given, count, relu, beta)
    if widen:
        wide = _widened(x)
        if not _bn.backward(_widened(x, dy), wide, wide, *args, 0, x.outer, x.channels,
                            x.inner, *keywords):
            return False
        _store_widened(dx, x, wide)
        return True
    if not _bn.backward(x.buffer(dy), x.buffer(), x.buffer(written), *args, x.storage,
                        x.outer, x.channels, x.inner, *keywords):
        return False
    _layout.finish(dx, written)
    return True


def _reference_backward(dx, x, dy, mean, invstd, gamma, beta, relu):
    """The training backward by cnorm.reference, in float64, rounded once into
    dx: for the calls the kernel declines (cnorm._batchnorm._declines), whose
    statistics are so extreme (invstd 0 from a variance that overflowed,
    invstd near 1e200) that its per-channel coefficients would give NaN where
    the reference's grouping of the same products does not. Found by the
    fuzzer; no ordinary call comes here. x and dy are read before dx is
    written (dx may be either)."""
    from cnorm import reference

    shape = (x.outer, x.channels, x.inner)
    data = np.moveaxis(np.asarray(x.memory, np.float64).reshape(shape), 1, -1)
    grad = np.moveaxis(np.asarray(_layout._in_order(dy, x.order), np.float64).reshape(shape),
                       1, -1)
    with np.errstate(all="ignore"):
        result, dgamma, dbeta = reference.batch_norm_backward(
            grad, data, mean, invstd, gamma, beta=beta, activation="relu" if relu else None)
    memory = np.moveaxis(result, -1, 1).reshape(x.memory.shape)
    with np.errstate(over="ignore"):  # (rounded to inf, as a kernel's store does)
        np.copyto(dx, memory if x.order is None else memory.transpose(np.argsort(x.order)),
                  casting="unsafe")
    return dx, dgamma, dbeta


def _sums_unsafe(x, sum_dy, sum_dy_xhat, count, invstd, gamma):
    """Whether the coefficients of dx from given sums (``gamma*invstd *
    invstd*sum_dy_xhat/count`` of x, ``gamma*invstd * sum_dy/count``), or the
    sums themselves, are outside float32's normal range (see `_widen`): in a
    float32 pass they would round to inf and give inf or NaN (inf * 0 at the
    mean) where the float64 answer is finite. Found by the fuzzer."""
    if x.storage == 0:
        return False
    scale = invstd if gamma is None else gamma * invstd
    with np.errstate(all="ignore"):
        x_scale = scale * (invstd * (sum_dy_xhat / count))
        shift = scale * (sum_dy / count)
    return bool(_vectors(x, sum_dy, sum_dy_xhat, x_scale, shift))


def _frozen_relu_inputs(x, dy, out):
    """x's and dy's data in x's memory order, as the frozen ReLU backward read
    them: copied if `out` (the output given, or None) shares memory with one
    (dx written over x or dy), so that the fix-up can still read them."""
    data = x.memory
    grad = dy if x.order is None else dy.transpose(x.order)
    if out is not None:
        data = data.copy() if np.may_share_memory(out, data) else data
        grad = grad.copy() if np.may_share_memory(out, grad) else grad
    return data, grad


def _frozen_relu_at_non_finite_x(dx, x, data, grad, mean, invstd, gamma, beta, dgamma):
    """Redo dx where x is NaN or infinite, in the frozen-statistics ReLU backward.

    The kernel computes that dx as ``masked_dy * gamma*invstd + 0*x`` (one
    elementwise form for every backward), and 0*x is NaN there; the answer is
    ``gamma*invstd*masked_dy``, ``masked_dy`` being dy where ``gamma*xhat + beta
    > 0`` and 0 elsewhere (NaN fails the test: 0). A non-finite x makes its
    channel's dgamma (a sum of ``masked_dy * xhat``) non-finite, so only such
    channels are visited, and calls on finite data pay nothing. Found by the
    fuzzer. `data` and `grad` are x and dy as the kernel read them (see
    _frozen_relu_inputs)."""
    channels = ~np.isfinite(dgamma)
    shape = (x.outer, x.channels, x.inner)
    # A view: dx is C-contiguous in x's memory order (see _output).
    memory = (dx if x.order is None else dx.transpose(x.order)).reshape(shape)
    data = data.reshape(shape)[:, channels].astype(np.float64)
    bad = ~np.isfinite(data)
    if not bad.any():
        return
    grad = grad.reshape(shape)[:, channels].astype(np.float64)
    scale = invstd[channels] if gamma is None else gamma[channels] * invstd[channels]
    shift = 0.0 if beta is None else beta[channels]
    with np.errstate(all="ignore"):
        passed = (data - mean[channels][:, None]) * scale[:, None] + np.reshape(
            shift, (-1, 1)) > 0
        values = np.where(passed, grad, 0.0) * scale[:, None]  # masked dy, as the kernel
    part = memory[:, channels]
    part[bad] = values[bad]
    memory[:, channels] = part


def batch_norm_backward_sums(dy, x, mean, invstd, *, axis=-1, n_threads=None):
    """The per-channel sums of the batch-norm backward over this worker's data.

    The first step of a distributed (synchronized) batch-norm backward, as
    PyTorch's ``batch_norm_backward_reduce``: with ``xhat = (x - mean) * invstd``::

        sum_dy      = sum(dy)          (dbeta)
        sum_dy_xhat = sum(dy * xhat)   (dgamma)

    Sum them over all workers (an all-reduce; floating-point sums depend on
    their order, so add in rank order for bit-identical results), then pass
    them to ``batch_norm_backward(..., sums=(sum_dy, sum_dy_xhat),
    count=global_count)`` on each worker. Accumulated in float64 in a fixed
    order, as in `batch_norm_backward`.

    Parameters
    ----------
    dy : array_like, shape and dtype of x
        Gradient of the loss with respect to y.
    x : array_like of float32, float64, float16 or bfloat16
        This worker's forward input, channels on `axis` (ndim >= 2; may be empty).
    mean, invstd : array_like of float32 or float64, shape (C,)
        The statistics the forward normalized with (of the whole batch).
    axis : int, default -1
        The channel axis.
    n_threads : int, optional
        As for `batch_norm_inference`.

    Returns
    -------
    sum_dy, sum_dy_xhat : numpy.ndarray of float64, shape (C,)
        Zeros for an empty x.

    Raises
    ------
    TypeError, ValueError
        As for `batch_norm_backward`.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> x = np.array([[1.0], [2.0], [3.0], [4.0]])
    >>> y, mean, invstd = cnorm.batch_norm_training(x)
    >>> shards = [(x[:1], y[:1]), (x[1:], y[1:])]      # dy = y: two workers
    >>> sums = [cnorm.batch_norm_backward_sums(dy, xs, mean, invstd) for xs, dy in shards]
    >>> total = tuple(sum(s[i] for s in sums) for i in range(2))
    >>> dx, dgamma, dbeta = cnorm.batch_norm_backward(y[1:], x[1:], mean, invstd,
    ...                                               sums=total, count=4)
    >>> np.allclose(dx, cnorm.batch_norm_backward(y, x, mean, invstd)[0][1:])
    True
    """
    x = _input(x, axis, allow_empty=True)
    dy = _layout.matching(dy, "dy", x, "x")
    n_channels = x.channels
    if (mean is None or invstd is None
            or not _buffers.float64_vectors(n_channels, mean, invstd)):
        mean = _per_channel(mean, "mean", n_channels)
        invstd = _per_channel(invstd, "invstd", n_channels)
    n_threads = check.n_threads(n_threads)
    sum_dy_xhat = np.zeros(n_channels)
    sum_dy = np.zeros(n_channels)
    if x.array.size:
        _bn.backward(x.buffer(dy), x.buffer(), None, mean, invstd, None, True, sum_dy_xhat,
                     sum_dy, n_threads, x.storage, x.outer, n_channels, x.inner)
    return sum_dy, sum_dy_xhat
