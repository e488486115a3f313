"""Layer objects over the public functions: ``BatchNorm`` and ``LocalResponseNorm``.

A layer holds its parameters (and, for batch norm, its running statistics),
checks them once, and is loaded from a trained PyTorch, Keras 3 or ONNX model
or from a plain state dict with PyTorch's key names. No framework is imported
by cnorm: framework objects are read by their attributes (duck typing), and
``from_onnx`` imports the optional ``onnx`` package when it is called.

An inference call on a plain array (a C-contiguous, aligned float32, float64 or
float16 numpy.ndarray, channels on any axis) is checked in compiled code and
goes straight to the kernel (cnorm._layers); every other call takes the public
function's path, with ``axis=``, its conversions and its errors. Both give the
same result, bit for bit.
"""
import numbers
import os
import sys
import threading

import numpy as np

from cnorm import _layout
from cnorm import _validation as check
from cnorm.batchnorm import (_eps, _momentum, _relu, batch_norm_backward,
                             batch_norm_inference, batch_norm_training)
from cnorm.lrn import (_lrn_params, _size_params, local_response_norm,
                       local_response_norm_backward, lrn, lrn_backward)
from cnorm._layers import _BatchNormPlan, _LocalResponseNormPlan

# The widest window a layer stores: windows are clipped to the channels per call.
_WIDEST = 2 ** 62

__all__ = ["BatchNorm", "LocalResponseNorm"]


def _kernels(module):
    # The kernel module that the public module (batchnorm or lrn) calls now: a
    # layer's fast path binds its entry point when the layer is made
    # (cnorm._dispatch.using swaps the public modules' bindings for the tests).
    return getattr(sys.modules[f"cnorm.{module}"], {"batchnorm": "_bn", "lrn": "_lrn"}[module])


_STATE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Rows of a BatchNorm's (4, C) state array.
_GAMMA, _BETA, _MEAN, _VAR = range(4)


# ---------------------------------------------------------------------------
# Helpers: arguments, framework objects, the channel axis

def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _axis(axis):
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer, got {type(axis).__name__} {axis!r}")
    return int(axis)


def _plan_axis(axis):
    # The axis as the compiled fast path's C int takes it: one no input has
    # (out of range for every array) where it would not fit.
    return axis if -2**30 <= axis < 2**30 else 2**30


def _input_array(x, axis, min_ndim):
    """x as the array the public functions take (converted once, not copied
    when it already is one) and its channel axis as an index."""
    t = _layout.tensor(x, "x", axis, min_ndim=min_ndim)
    return t.array, _layout.channel_axis(axis, t.array.ndim)


def _matching_dy(dy, x):
    """dy checked against the last forward's x (shape and dtype), not converted."""
    array = dy if isinstance(dy, np.ndarray) else np.asarray(dy)
    if array.dtype != x.dtype:
        raise TypeError(f"dy must have the dtype of the last forward's x ({x.dtype}), got "
                        f"{array.dtype}")
    if array.shape != x.shape:
        raise ValueError(f"dy must have the shape of the last forward's x {x.shape}, got "
                         f"{array.shape}")
    return array


def _class_names(obj):
    return {cls.__name__ for cls in type(obj).__mro__}


def _to_numpy(value, name):
    """A framework tensor or variable (torch, Keras, NumPy, anything with
    ``__array__``) as a NumPy array, read by duck typing."""
    if value is None:
        raise ValueError(f"{name} is None")
    if not isinstance(value, np.ndarray):
        if callable(getattr(value, "detach", None)):  # torch: drop autograd
            value = value.detach()
        if callable(getattr(value, "cpu", None)):
            value = value.cpu()
        if callable(getattr(value, "numpy", None)):  # torch tensors, Keras variables
            try:
                value = value.numpy()
            except TypeError:  # torch's bfloat16 has no NumPy dtype: upcast (exact)
                if not callable(getattr(value, "float", None)):
                    raise
                value = value.float().numpy()
    try:
        return np.asarray(value)
    except ValueError as exc:  # e.g. a ragged nested list
        raise ValueError(f"{name} must be an array of numbers, got {type(value).__name__} "
                         f"that NumPy cannot make an array of ({exc})") from None


def _state_dtype(dtype):
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be numpy.float32 or numpy.float64, got {dtype!r}") from None
    if resolved not in _STATE_DTYPES:
        raise TypeError(f"dtype must be numpy.float32 or numpy.float64, got {resolved}")
    return resolved


def _import_onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:
        raise ImportError("from_onnx needs the onnx package: pip install 'cnorm[onnx]'") from error
    return onnx, numpy_helper


def _onnx_float(value):
    # ONNX float attributes (and their defaults) are float32: what ONNX Runtime uses.
    return float(np.float32(value))


def _onnx_node(model, node_name, op_type):
    """The node named `node_name` of an ONNX model (ModelProto or path), its
    attributes as a dict, and a function giving an input's array."""
    onnx, numpy_helper = _import_onnx()
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    graph = getattr(model, "graph", None)
    if graph is None or not hasattr(graph, "node"):
        raise TypeError(f"model must be an onnx.ModelProto or a path to one, got "
                        f"{type(model).__name__}")
    nodes = {node.name: node for node in graph.node}
    if node_name not in nodes:
        names = [node.name for node in graph.node
                 if node.op_type in ("BatchNormalization", "LRN")]
        raise ValueError(f"node_name {node_name!r} is not a node of the model; its "
                         f"BatchNormalization and LRN nodes are {names}")
    node = nodes[node_name]
    if node.op_type != op_type:
        raise ValueError(f"node {node_name!r} is a {node.op_type} node, not {op_type}")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    constants = {t.name: t for t in graph.initializer}
    for other in graph.node:  # Constant nodes hold values too
        if other.op_type == "Constant":
            for a in other.attribute:
                if a.name == "value":
                    constants[other.output[0]] = a.t

    def value(index, what):
        if index >= len(node.input) or not node.input[index]:
            raise ValueError(f"node {node_name!r} has no {what} input")
        name = node.input[index]
        if name not in constants:
            raise ValueError(f"the {what} input {name!r} of node {node_name!r} is not an "
                             "initializer or Constant of the graph")
        return numpy_helper.to_array(constants[name])

    return attributes, value


# ---------------------------------------------------------------------------
# BatchNorm

class BatchNorm:
    """Batch normalization layer with state, as ``torch.nn.BatchNorm2d``.

    Normalizes per channel (the `axis`) with the batch statistics in
    training and with the running statistics in inference::

        y = gamma * (x - mean) / sqrt(var + eps) + beta

    Training calls update ``running_mean`` and ``running_var`` in place with
    PyTorch's rule ``running = (1 - momentum) * running + momentum * batch_stat``
    (the unbiased batch variance if `running_var_unbiased`, as PyTorch; the
    biased one otherwise, as Keras 3 and ONNX) and count
    ``num_batches_tracked``.

    Parameters
    ----------
    num_features : int
        Number of channels C, >= 1.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    momentum : float in [0, 1] or None, default 0.1
        Weight of the new batch in the running statistics; None is PyTorch's
        cumulative average (the weight ``1 / num_batches_tracked``).
    affine : bool, default True
        Whether the layer has ``gamma`` and ``beta`` (PyTorch's ``weight`` and
        ``bias``); without them they are None and act as 1 and 0.
    track_running_stats : bool, default True
        Whether the layer keeps running statistics. Without them they are None
        and inference calls normalize with the batch statistics too, as PyTorch.
    running_var_unbiased : bool, default True
        Whether the running variance takes the unbiased batch variance
        (PyTorch, TensorFlow) or the biased one (Keras 3, ONNX).
    axis : int, default -1
        The channel axis of the inputs: -1 for channels-last data (NHWC), 1
        for PyTorch's and ONNX's NCHW.
    dtype : numpy.float32 or numpy.float64, default numpy.float32
        dtype of the state arrays. Inputs may be float32, float64, float16 or
        bfloat16 either way (as the public functions take them).
    activation : {None, "relu"}, default None
        Fused after the normalization in every call (``relu(bn(x))``, or
        ``relu(bn(x) + residual)`` with a residual), and differentiated by
        `backward`.

    Attributes
    ----------
    gamma, beta : numpy.ndarray of shape (C,) or None
        Scale and shift (aliases ``weight`` and ``bias``), None if not affine.
    running_mean, running_var : numpy.ndarray of shape (C,) or None
        Running statistics, None if not track_running_stats.
    num_batches_tracked : int
        Training calls counted so far (with track_running_stats).

    Notes
    -----
    The state arrays may be changed in place or assigned (an assignment checks
    the values and copies them in; the arrays stay the same objects), and
    `eps` may be assigned: the next call sees the change. What inference
    keeps: float64 copies of the state, checked once (``running_var >= 0``)
    and made again only when the state changes. Each call compares the state
    with the copy it was made from (4 * C values), so nothing assigned or
    written in place is ever missed.

    For `backward` the layer keeps a reference to the last forward's x (not a
    copy: x must not be changed before `backward`), and after a training call
    its batch statistics and gamma. A forward that wrote its output over x
    (``out=x``) leaves nothing to differentiate.

    Threads: inference calls on one layer from several threads at once are
    safe and give the results of serial calls. Training calls on one layer are
    serialized by a lock; an inference call made while a training call of the
    same layer updates the running statistics may use the statistics before or
    after the update, or partly both. ``backward`` differentiates the last
    forward of any thread.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> layer = cnorm.BatchNorm(2, eps=1e-12)
    >>> layer.running_mean[:] = [2.0, 20.0]
    >>> layer.running_var[:] = [1.0, 100.0]
    >>> layer(np.array([[1.0, 10.0], [3.0, 30.0]]))
    array([[-1., -1.],
           [ 1.,  1.]])
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, *, affine=True,
                 track_running_stats=True, running_var_unbiased=True, axis=-1,
                 dtype=np.float32, activation=None):
        num_features = check.integer(num_features, "num_features", minimum=1)
        self._relu = _relu(activation)
        self._residual_last = False
        eps = _eps(eps)
        momentum = self._checked_momentum(momentum)
        affine = _flag(affine, "affine")
        track_running_stats = _flag(track_running_stats, "track_running_stats")
        self._running_var_unbiased = _flag(running_var_unbiased, "running_var_unbiased")
        axis = _axis(axis)
        dtype = _state_dtype(dtype)
        state = np.zeros((4, num_features), dtype=dtype)
        state[_GAMMA] = 1
        state[_VAR] = 1
        self._state = state
        self._momentum = momentum
        self._affine = affine
        self._track_running_stats = track_running_stats
        self._axis = axis
        self._num_batches_tracked = 0
        self._lock = threading.Lock()
        self._plan = _BatchNormPlan(tuple(state), _kernels("batchnorm"), eps, affine,
                                    track_running_stats, _plan_axis(axis))
        self._plan.relu = self._relu

    # -- configuration ------------------------------------------------------
    @property
    def num_features(self):
        """Number of channels C."""
        return self._state.shape[1]

    @property
    def activation(self):
        """The fused activation: None or "relu"."""
        return "relu" if self._relu else None

    @property
    def eps(self):
        """Added to the variance; may be assigned (finite, > 0)."""
        return self._plan.eps

    @eps.setter
    def eps(self, value):
        self._plan.eps = _eps(value)

    @property
    def momentum(self):
        """Weight of the new batch, or None (cumulative average); may be assigned."""
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        self._momentum = self._checked_momentum(value)

    @staticmethod
    def _checked_momentum(value):
        return None if value is None else _momentum(value)

    @property
    def affine(self):
        """Whether the layer has gamma and beta."""
        return self._affine

    @property
    def track_running_stats(self):
        """Whether the layer keeps running statistics."""
        return self._track_running_stats

    @property
    def running_var_unbiased(self):
        """Whether the running variance takes the unbiased batch variance."""
        return self._running_var_unbiased

    @property
    def axis(self):
        """The channel axis of the inputs."""
        return self._axis

    @property
    def dtype(self):
        """dtype of the state arrays."""
        return self._state.dtype

    # -- state ----------------------------------------------------------------
    def _row(self, row, present):
        return self._state[row] if present else None

    def _assign(self, row, value, name, present, absent_reason):
        if not present:
            raise ValueError(f"{name} cannot be set: the layer has {absent_reason}")
        self._state[row] = self._checked_vector(value, name)

    def _checked_vector(self, value, name):
        """`value` as a float64 array of shape (C,), checked (nothing is written)."""
        array = _to_numpy(value, name)
        if (array.dtype.kind not in "fiu" or array.dtype.itemsize > 8) and (
                array.dtype.name != "bfloat16"):  # ml_dtypes' bfloat16: an exact upcast
            raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
        if array.shape != (self.num_features,):
            raise ValueError(f"{name} must have shape ({self.num_features},) (num_features "
                             f"values), got {array.shape}")
        array = array.astype(np.float64)
        if name.endswith("running_var"):
            check.non_negative(array, name)
        return array

    gamma = property(lambda self: self._row(_GAMMA, self._affine),
                     lambda self, v: self._assign(_GAMMA, v, "gamma", self._affine,
                                                  "affine=False"),
                     doc="Scale per channel (PyTorch's weight), or None if not affine.")
    beta = property(lambda self: self._row(_BETA, self._affine),
                    lambda self, v: self._assign(_BETA, v, "beta", self._affine,
                                                 "affine=False"),
                    doc="Shift per channel (PyTorch's bias), or None if not affine.")
    weight, bias = gamma, beta
    running_mean = property(lambda self: self._row(_MEAN, self._track_running_stats),
                            lambda self, v: self._assign(_MEAN, v, "running_mean",
                                                         self._track_running_stats,
                                                         "track_running_stats=False"),
                            doc="Running mean per channel, or None.")
    running_var = property(lambda self: self._row(_VAR, self._track_running_stats),
                           lambda self, v: self._assign(_VAR, v, "running_var",
                                                        self._track_running_stats,
                                                        "track_running_stats=False"),
                           doc="Running variance per channel, or None.")

    @property
    def num_batches_tracked(self):
        """Training calls counted (PyTorch's counter); may be assigned an int >= 0."""
        return self._num_batches_tracked

    @num_batches_tracked.setter
    def num_batches_tracked(self, value):
        self._num_batches_tracked = check.integer(value, "num_batches_tracked", minimum=0)

    # -- calls ----------------------------------------------------------------
    def __call__(self, x, *, training=False, residual=None, out=None, n_threads=None):
        """Normalize x: with the running statistics, or the batch's if `training`.

        Parameters
        ----------
        x : array_like of float32, float64, float16 or bfloat16
            Input with num_features channels on `axis`; ndim >= 2, not empty.
        training : bool, default False
            True normalizes with the batch statistics and updates the running
            ones (if tracked) and num_batches_tracked.
        residual : array_like, optional
            Inference only: added after the normalization and before the
            layer's activation, in the same pass (``act(bn(x) + residual)``);
            x's shape and dtype, not sharing memory with `out`.
        out : numpy.ndarray, optional
            C-contiguous array of x's shape and dtype to write y into (may be x).
        n_threads : int, optional
            Upper bound on the threads used; None uses OpenMP's default.

        Returns
        -------
        numpy.ndarray
            y, of x's shape and dtype (``out`` if given).

        Raises
        ------
        TypeError, ValueError
            As the public functions (`cnorm.batch_norm_inference`,
            `cnorm.batch_norm_training`), and ValueError if x does not have
            num_features channels on `axis`; nothing is changed then.
        """
        if training is False and residual is None:
            y = self._plan.infer(x, out, n_threads)
            if y is not None:
                self._residual_last = False
                return y
        elif _flag(training, "training"):
            if residual is not None:
                raise ValueError("residual applies to inference calls only (training=False)")
            return self._train(x, out, n_threads)
        return self._infer(x, out, n_threads, residual)

    def _input(self, x):
        """x as the functions take it, with num_features channels on the layer's axis."""
        x, axis = _input_array(x, self._axis, 2)
        if x.shape[axis] != self.num_features:
            raise ValueError(f"x must have {self.num_features} channels (num_features) on "
                             f"axis {self._axis}, got shape {x.shape}")
        return x

    def _infer(self, x, out, n_threads, residual=None):
        if not self._track_running_stats:  # batch statistics, nothing updated
            if residual is not None:
                raise ValueError("residual needs running statistics (track_running_stats=True)")
            return self._train(x, out, n_threads, update=False)
        x = self._input(x)
        vectors = self._plan.refresh()
        mean, var, gamma, beta = vectors
        eps = self._plan.eps
        y = batch_norm_inference(x, mean, var, gamma, beta, eps, axis=self._axis, out=out,
                                 n_threads=n_threads, activation=self.activation,
                                 residual=residual)
        self._plan.last = (False, None if np.may_share_memory(y, x) else x, vectors, eps)
        self._residual_last = residual is not None
        return y

    def _train(self, x, out, n_threads, update=True):
        with self._lock:
            x = self._input(x)
            track = update and self._track_running_stats
            count = self._num_batches_tracked + 1
            momentum = self._momentum
            if momentum is None:
                momentum = 1.0 / count
            gamma = self._state[_GAMMA] if self._affine else None
            beta = self._state[_BETA] if self._affine else None
            y, mean, invstd = batch_norm_training(
                x, gamma, beta, self._plan.eps, momentum=momentum,
                running_var_unbiased=self._running_var_unbiased,
                running_mean=self._state[_MEAN] if track else None,
                running_var=self._state[_VAR] if track else None,
                axis=self._axis, out=out, n_threads=n_threads, activation=self.activation)
            if track:
                self._num_batches_tracked = count
            saved_gamma = None if gamma is None else gamma.astype(np.float64)
            saved_beta = None if beta is None else beta.astype(np.float64)
            self._plan.last = (True, None if np.may_share_memory(y, x) else x, mean, invstd,
                               saved_gamma, saved_beta)
            self._residual_last = False
            return y

    def backward(self, dy, *, out=None, n_threads=None):
        """Gradients of the last forward call with respect to x, gamma and beta.

        After a training call (or an inference call without running
        statistics) the gradient flows through the batch statistics; after an
        inference call the running statistics are constants (the frozen
        backward)::

            dx = gamma * invstd * (dy - dbeta/m - xhat * dgamma/m)   (training)
            dx = gamma * invstd * dy                                 (inference)
            dgamma = sum(dy * xhat),  dbeta = sum(dy)

        Parameters
        ----------
        dy : array_like, shape and dtype of the last forward's x
            Gradient of the loss with respect to the forward's output.
        out : numpy.ndarray, optional
            C-contiguous array of x's shape and dtype to write dx into (may be dy).
        n_threads : int, optional
            As for the call.

        Returns
        -------
        dx : numpy.ndarray
            Of x's shape and dtype (``out`` if given).
        dgamma, dbeta : numpy.ndarray of float64, shape (C,)
            Returned whether or not the layer is affine.

        Raises
        ------
        RuntimeError
            If there was no forward call yet, or it wrote its output over x.
        TypeError, ValueError
            If dy does not match the forward's x in shape or dtype, or as
            `cnorm.batch_norm_backward`.
        """
        last = self._plan.last
        x = self._last_input(last)
        if self._relu and self._residual_last:
            raise RuntimeError("backward of relu(bn(x) + residual) is not available: the "
                               "ReLU mask depends on the residual, which the layer does not "
                               "keep")
        dy = _matching_dy(dy, x)
        if last[0]:
            _, _, mean, invstd, gamma, beta = last
            training = True
        else:
            _, _, (mean, var, gamma, beta), eps = last
            invstd = 1.0 / np.sqrt(var + eps)
            training = False
        return batch_norm_backward(dy, x, mean, invstd, gamma, beta=beta,
                                   activation=self.activation, training=training,
                                   axis=self._axis, out=out, n_threads=n_threads)

    @staticmethod
    def _last_input(last):
        if last is None:
            raise RuntimeError("backward needs a forward call first: there was none")
        if last[1] is None:
            raise RuntimeError("backward needs the last forward's x, but that call wrote its "
                               "output over x (out=x)")
        return last[1]

    # -- export -----------------------------------------------------------------
    def state_dict(self, prefix=""):
        """The state with PyTorch's key names (copies), as ``module.state_dict()``.

        Keys ``weight`` and ``bias`` (if affine), ``running_mean``,
        ``running_var`` and ``num_batches_tracked`` (an int64 0-d array; if
        track_running_stats), each after `prefix`. The result loads into
        ``torch.nn.BatchNorm2d.load_state_dict`` (after ``torch.from_numpy``)
        and saves with ``safetensors.numpy.save_file``.
        """
        state = {}
        if self._affine:
            state[prefix + "weight"] = self._state[_GAMMA].copy()
            state[prefix + "bias"] = self._state[_BETA].copy()
        if self._track_running_stats:
            state[prefix + "running_mean"] = self._state[_MEAN].copy()
            state[prefix + "running_var"] = self._state[_VAR].copy()
            state[prefix + "num_batches_tracked"] = np.array(self._num_batches_tracked,
                                                             dtype=np.int64)
        return state

    def get_weights(self):
        """The state in Keras's ``get_weights()`` order (copies).

        ``[gamma, beta, running_mean, running_var]`` (Keras's gamma, beta,
        moving_mean, moving_variance), without gamma and beta if not affine and
        without the running statistics if not track_running_stats. A Keras 3
        ``BatchNormalization`` with center and scale takes it in ``set_weights``.
        """
        rows = ([_GAMMA, _BETA] if self._affine else []) + (
            [_MEAN, _VAR] if self._track_running_stats else [])
        return [self._state[row].copy() for row in rows]

    def set_weights(self, weights):
        """Assign the state from a list in `get_weights` order (checked whole first)."""
        rows = ([(_GAMMA, "gamma"), (_BETA, "beta")] if self._affine else []) + (
            [(_MEAN, "running_mean"), (_VAR, "running_var")] if self._track_running_stats
            else [])
        weights = list(weights)
        if len(weights) != len(rows):
            raise ValueError(f"weights must hold {len(rows)} arrays "
                             f"({', '.join(name for _, name in rows)}), got {len(weights)}")
        checked = [self._checked_vector(w, name) for w, (_, name) in zip(weights, rows)]
        for value, (row, _) in zip(checked, rows):
            self._state[row] = value

    def load_state_dict(self, mapping, prefix=""):
        """Assign the state from a mapping with PyTorch's key names (see `state_dict`).

        Every key this layer has must be present (``num_batches_tracked`` may
        be missing: older checkpoints lack it) and is checked before anything
        is assigned. Other keys are ignored.
        """
        wanted = ([(_GAMMA, "weight"), (_BETA, "bias")] if self._affine else []) + (
            [(_MEAN, "running_mean"), (_VAR, "running_var")] if self._track_running_stats
            else [])
        missing = [prefix + key for _, key in wanted if prefix + key not in mapping]
        if missing:
            raise ValueError(f"the state dict lacks {missing}")
        checked = [(row, self._checked_vector(mapping[prefix + key], prefix + key))
                   for row, key in wanted]
        count = self._num_batches_tracked
        if self._track_running_stats and prefix + "num_batches_tracked" in mapping:
            value = _to_numpy(mapping[prefix + "num_batches_tracked"], "num_batches_tracked")
            if value.shape not in ((), (1,)) or value.dtype.kind not in "iu":
                raise ValueError(f"num_batches_tracked must be one integer, got dtype "
                                 f"{value.dtype} and shape {value.shape}")
            count = check.integer(int(value.reshape(())), "num_batches_tracked", minimum=0)
        for row, value in checked:
            self._state[row] = value
        self._num_batches_tracked = count

    # -- import -----------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, mapping, prefix="", *, eps=1e-5, momentum=0.1, axis=1,
                        dtype=None, running_var_unbiased=True):
        """A layer from a mapping with PyTorch's key names.

        Works with ``module.state_dict()``, ``torch.load`` of one, and
        ``safetensors.numpy.load_file`` (no torch needed). affine and
        track_running_stats follow from the keys present; eps and momentum are
        not in a state dict and are given here (PyTorch's defaults).

        Parameters
        ----------
        mapping : Mapping of str to array_like
            Holds ``prefix + "weight"``, ``"bias"``, ``"running_mean"``,
            ``"running_var"``, ``"num_batches_tracked"`` (each pair optional).
        prefix : str, default ""
            The module's name with a dot, e.g. ``"features.1."``.
        eps, momentum, running_var_unbiased
            As for `BatchNorm`.
        axis : int, default 1
            The channel axis of the inputs: 1 is PyTorch's NCHW.
        dtype : numpy.float32 or numpy.float64, optional
            Of the state; None takes the arrays' (float64 stays float64,
            anything else becomes float32).

        Raises
        ------
        TypeError
            If mapping is not a mapping or an array is not of real numbers.
        ValueError
            If the keys are incomplete (weight without bias, running_mean
            without running_var, or none of them), or the arrays' shapes differ.
        """
        if not callable(getattr(mapping, "keys", None)) or not hasattr(mapping, "__getitem__"):
            raise TypeError(f"mapping must be a mapping of names to arrays, got "
                            f"{type(mapping).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        has = {key: prefix + key in mapping for key in
               ("weight", "bias", "running_mean", "running_var")}
        for first, second in (("weight", "bias"), ("running_mean", "running_var")):
            if has[first] != has[second]:
                present, absent = (first, second) if has[first] else (second, first)
                raise ValueError(f"the state dict has {prefix + present!r} but lacks "
                                 f"{prefix + absent!r}")
        if not any(has.values()):
            raise ValueError(f"the state dict has no BatchNorm keys under prefix {prefix!r} "
                             f"(weight, bias, running_mean, running_var)")
        key = "running_mean" if has["running_mean"] else "weight"
        first = _to_numpy(mapping[prefix + key], prefix + key)
        if first.ndim != 1:
            raise ValueError(f"{prefix + key} must be a vector (one value per channel), got "
                             f"shape {first.shape}")
        if dtype is None:
            dtype = np.float64 if first.dtype == np.float64 else np.float32
        layer = cls(first.shape[0], eps, momentum, affine=has["weight"],
                    track_running_stats=has["running_mean"],
                    running_var_unbiased=running_var_unbiased, axis=axis, dtype=dtype)
        layer.load_state_dict(mapping, prefix)
        return layer

    @classmethod
    def from_torch(cls, module, *, axis=1):
        """A layer from a ``torch.nn.BatchNorm1d/2d/3d`` or ``SyncBatchNorm``.

        Copies the state and every flag (eps, momentum including None, affine,
        track_running_stats); the layer then computes what the module computes
        in ``eval()`` (``training=False``) and ``train()`` (``training=True``).
        torch is not imported: the module is read by its attributes.

        Parameters
        ----------
        module : torch.nn.modules.batchnorm._BatchNorm
            The module: float32 or float64 (the layer's dtype), or float16 or
            bfloat16 (its state is then held in float32, exactly; the layer
            takes half inputs as the module does).
        axis : int, default 1
            The channel axis of the inputs: 1 is what the module takes (NCHW,
            or (N, C, L)); -1 for the same data channels last.

        Raises
        ------
        TypeError
            If module is not a PyTorch batch-norm module (an InstanceNorm is
            not one), or of another dtype.
        """
        names = _class_names(module)
        if "_BatchNorm" not in names or not {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                                             "SyncBatchNorm"} & names:
            raise TypeError("module must be a torch.nn BatchNorm1d, BatchNorm2d, BatchNorm3d "
                            f"or SyncBatchNorm, got {type(module).__name__}")
        if not module.num_features:
            raise ValueError(f"module has num_features={module.num_features!r} "
                             "(an uninitialized lazy module?)")
        affine = bool(module.affine)
        track = bool(module.track_running_stats)
        sample = module.running_mean if track else module.weight if affine else None
        dtype = str(getattr(sample, "dtype", "float32")).replace("torch.", "")
        if dtype not in ("float32", "float64", "float16", "bfloat16"):
            raise TypeError(f"module must be float32, float64, float16 or bfloat16, got {dtype}")
        if dtype in ("float16", "bfloat16"):  # half state held in float32 (exact)
            dtype = "float32"
        layer = cls(int(module.num_features), float(module.eps), module.momentum,
                    affine=affine, track_running_stats=track, axis=axis, dtype=dtype)
        state = {}
        if affine:
            state["weight"], state["bias"] = module.weight, module.bias
        if track:
            state["running_mean"], state["running_var"] = module.running_mean, module.running_var
            if getattr(module, "num_batches_tracked", None) is not None:
                state["num_batches_tracked"] = module.num_batches_tracked
        layer.load_state_dict(state)
        return layer

    @classmethod
    def from_keras(cls, layer):
        """A layer from a built Keras 3 ``BatchNormalization`` layer.

        Takes Keras's axis, epsilon and moving statistics; Keras's momentum
        ``mu`` becomes ``momentum = 1 - mu`` and the running variance biased
        (``running_var_unbiased=False``), so training calls update the
        statistics as Keras does. ``center=False`` gives beta = 0 and
        ``scale=False`` gamma = 1 (the layer is affine if either is set).
        Keras is not imported.

        Raises
        ------
        TypeError
            If layer is not a Keras BatchNormalization layer.
        ValueError
            If it is not built, or uses renorm or several axes.
        """
        if "BatchNormalization" not in _class_names(layer) or not hasattr(layer, "moving_mean"):
            raise TypeError(f"layer must be a Keras BatchNormalization layer, got "
                            f"{type(layer).__name__}")
        if getattr(layer, "moving_mean", None) is None:
            raise ValueError("layer is not built: call it once or build(input_shape) first")
        if getattr(layer, "renorm", False):
            raise ValueError("layer uses renorm (batch renormalization), which cnorm does not")
        if not isinstance(layer.axis, numbers.Integral):
            raise ValueError(f"layer must normalize along one axis, got axis={layer.axis!r}")
        mean = _to_numpy(layer.moving_mean, "moving_mean")
        variance = _to_numpy(layer.moving_variance, "moving_variance")
        dtype = mean.dtype if mean.dtype in _STATE_DTYPES else np.float32
        center, scale = bool(layer.center), bool(layer.scale)
        result = cls(mean.shape[0], float(layer.epsilon), 1.0 - float(layer.momentum),
                     affine=center or scale, running_var_unbiased=False, axis=int(layer.axis),
                     dtype=dtype)
        weights = []
        if center or scale:
            weights.append(_to_numpy(layer.gamma, "gamma") if scale
                           else np.ones(mean.shape[0]))
            weights.append(_to_numpy(layer.beta, "beta") if center
                           else np.zeros(mean.shape[0]))
        result.set_weights(weights + [mean, variance])
        return result

    @classmethod
    def from_onnx(cls, model, node_name, *, axis=1):
        """A layer from a ``BatchNormalization`` node of an ONNX model.

        The node's scale, B, mean and var inputs must be initializers (or
        Constant nodes) of the graph. ONNX's momentum ``mu`` becomes
        ``momentum = 1 - mu`` with the biased (population) running variance,
        as opset 15 defines the training-mode update. Needs the ``onnx``
        package (``pip install 'cnorm[onnx]'``), imported here.

        Parameters
        ----------
        model : onnx.ModelProto or path
            The model, or the path of a .onnx file.
        node_name : str
            The node's name.
        axis : int, default 1
            The channel axis of the inputs: 1 is ONNX's NCHW.

        Raises
        ------
        ImportError
            If onnx is not installed.
        ValueError
            If there is no such node, it is of another op type, an input is
            not constant, or it has ``spatial=0``.
        """
        attributes, value = _onnx_node(model, node_name, "BatchNormalization")
        if attributes.get("spatial", 1) != 1:
            raise ValueError(f"node {node_name!r} has spatial=0 (statistics per element), "
                             "which cnorm does not compute")
        scale, shift = value(1, "scale"), value(2, "B")
        mean, var = value(3, "input_mean"), value(4, "input_var")
        dtype = mean.dtype if mean.dtype in _STATE_DTYPES else np.float32
        layer = cls(mean.shape[0], attributes.get("epsilon", _onnx_float(1e-5)),
                    1.0 - attributes.get("momentum", _onnx_float(0.9)),
                    running_var_unbiased=False, axis=axis, dtype=dtype)
        layer.set_weights([scale, shift, mean, var])
        return layer

    def __reduce__(self):
        # Pickling and copy.deepcopy: the configuration and the state (not the
        # record of the last forward).
        config = dict(num_features=self.num_features, eps=self.eps, momentum=self._momentum,
                      affine=self._affine, track_running_stats=self._track_running_stats,
                      running_var_unbiased=self._running_var_unbiased, axis=self._axis,
                      dtype=self.dtype, activation=self.activation)
        return _restore_batch_norm, (config, self._state.copy(), self._num_batches_tracked)

    def __repr__(self):
        return (f"BatchNorm({self.num_features}, eps={self.eps!r}, momentum={self._momentum!r}, "
                f"affine={self._affine}, track_running_stats={self._track_running_stats}, "
                f"running_var_unbiased={self._running_var_unbiased}, axis={self._axis}, "
                f"dtype={self.dtype.name}"
                + ("" if not self._relu else ", activation='relu'") + ")")


def _restore_batch_norm(config, state, num_batches_tracked):
    layer = BatchNorm(**config)
    layer._state[...] = state
    layer._num_batches_tracked = num_batches_tracked
    return layer


# ---------------------------------------------------------------------------
# LocalResponseNorm

class LocalResponseNorm:
    """Local response normalization across channels, as ``torch.nn.LocalResponseNorm``.

    For channel ``c``, with the window of `size` channels around it clipped to
    the channels that exist::

        y_c = x_c / (k + alpha / size * sum(x_i ** 2 over the window)) ** beta

    Parameters
    ----------
    size : int
        Number of channels in the window, >= 1.
    alpha : float, default 1e-4
        Scale; divided by `size`, as PyTorch, ONNX and Caffe do.
    beta : float, default 0.75
        Exponent.
    k : float, default 1.0
        Additive constant (ONNX's ``bias``).
    convention : {"torch", "onnx", "caffe"}, default "torch"
        Where the window sits for an even size (see
        `cnorm.local_response_norm`); for odd sizes they agree.
    axis : int, default -1
        The channel axis of the inputs: -1 for channels last, 1 for NCHW.

    Notes
    -----
    For `backward` the layer keeps a reference to the last forward's x (not a
    copy: x must not change before `backward`). The layer has no state that
    changes: calls from several threads at once are safe; ``backward``
    differentiates the last forward of any thread.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> layer = cnorm.LocalResponseNorm(2, alpha=1.0, beta=1.0, k=1.0)
    >>> layer(np.arange(1.0, 6.0)).round(6)
    array([0.666667, 0.571429, 0.4     , 0.296296, 0.232558])
    """

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0, *, convention="torch", axis=-1):
        # The function's checks and a = alpha/size (exact for any int size);
        # a window wider than any tensor's channels is clipped per call, so
        # it is stored clipped to what a Py_ssize_t holds.
        before, after, a, k, beta = _size_params(size, alpha, beta, k, convention)
        self._size, self._alpha, self._beta, self._k = (
            int(size), check.finite_real(alpha, "alpha"), beta, k)
        self._convention = convention
        self._axis = _axis(axis)
        self._depth_radius = self._tf_alpha = None  # set by from_tf: TensorFlow's lrn
        self._plan = _LocalResponseNormPlan(_kernels("lrn").run, min(before, _WIDEST),
                                            min(after, _WIDEST), a, k, beta,
                                            _plan_axis(self._axis))

    size = property(lambda self: self._size, doc="Channels in the window.")
    alpha = property(lambda self: self._alpha, doc="Scale of the sum (divided by size).")
    beta = property(lambda self: self._beta, doc="Exponent.")
    k = property(lambda self: self._k, doc="Additive constant.")
    convention = property(lambda self: self._convention, doc="Window placement for even sizes.")
    axis = property(lambda self: self._axis, doc="The channel axis of the inputs.")

    @classmethod
    def from_tf(cls, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5, *, axis=-1):
        """TensorFlow's ``tf.nn.local_response_normalization`` as a layer.

        ``size = 2 * depth_radius + 1``, ``alpha = alpha_tf * size`` and
        ``k = bias``; the layer computes with TensorFlow's own coefficient
        (alpha_tf, not ``alpha * size / size``), so it equals `cnorm.lrn`
        exactly. TensorFlow's defaults differ from PyTorch's.
        """
        depth_radius, bias, alpha, beta = _lrn_params(depth_radius, bias, alpha, beta)
        size = 2 * depth_radius + 1
        layer = cls(size, alpha * size, beta, bias, convention="torch", axis=axis)
        layer._depth_radius = depth_radius
        layer._tf_alpha = alpha
        layer._plan.a = alpha
        return layer

    @classmethod
    def from_torch(cls, module, *, axis=1):
        """A layer from a ``torch.nn.LocalResponseNorm`` (torch is not imported).

        ``axis=1`` takes what the module takes (NCHW); -1 for channels last.

        Raises
        ------
        TypeError
            If module is not a torch.nn.LocalResponseNorm.
        """
        if "LocalResponseNorm" not in _class_names(module):
            raise TypeError(f"module must be a torch.nn.LocalResponseNorm, got "
                            f"{type(module).__name__}")
        return cls(module.size, float(module.alpha), float(module.beta), float(module.k),
                   convention="torch", axis=axis)

    @classmethod
    def from_onnx(cls, model, node_name, *, axis=1):
        """A layer from an ``LRN`` node of an ONNX model (ONNX's window, ``convention="onnx"``).

        Needs the ``onnx`` package, imported here. ``axis=1`` is ONNX's NCHW.

        Raises
        ------
        ImportError
            If onnx is not installed.
        ValueError
            If there is no such node or it is of another op type.
        """
        attributes, _ = _onnx_node(model, node_name, "LRN")
        if "size" not in attributes:
            raise ValueError(f"LRN node {node_name!r} has no size attribute")
        return cls(int(attributes["size"]), attributes.get("alpha", _onnx_float(1e-4)),
                   attributes.get("beta", 0.75), attributes.get("bias", 1.0),
                   convention="onnx", axis=axis)

    def __call__(self, x, *, out=None, n_threads=None):
        """Normalize x across the channels of `axis`.

        Parameters
        ----------
        x : array_like of float32, float64, float16 or bfloat16
            Input with channels on `axis`.
        out : numpy.ndarray, optional
            C-contiguous array of x's shape and dtype to write y into (may be x).
        n_threads : int, optional
            Upper bound on the threads used; None uses OpenMP's default.

        Returns
        -------
        numpy.ndarray
            y, of x's shape and dtype (``out`` if given).

        Raises
        ------
        TypeError, ValueError
            As `cnorm.local_response_norm`, and ValueError if `axis` is out of
            range for x.
        """
        y = self._plan.infer(x, out, n_threads)
        if y is not None:
            return y
        x, _ = _input_array(x, self._axis, 1)
        y = self._run(x, out, n_threads)
        self._plan.last = (None if np.may_share_memory(y, x) else x,)
        return y

    def backward(self, dy, *, out=None, n_threads=None):
        """Gradient of the last forward call with respect to x.

        Parameters
        ----------
        dy : array_like, shape and dtype of the last forward's x
            Gradient of the loss with respect to the forward's output.
        out : numpy.ndarray, optional
            C-contiguous array of x's shape and dtype to write dx into (may be dy).
        n_threads : int, optional
            As for the call.

        Returns
        -------
        numpy.ndarray
            dx, of x's shape and dtype (``out`` if given).

        Raises
        ------
        RuntimeError
            If there was no forward call yet, or it wrote its output over x.
        TypeError, ValueError
            If dy does not match the forward's x in shape or dtype.
        """
        last = self._plan.last
        if last is None:
            raise RuntimeError("backward needs a forward call first: there was none")
        if last[0] is None:
            raise RuntimeError("backward needs the last forward's x, but that call wrote its "
                               "output over x (out=x)")
        x = last[0]
        return self._run(x, out, n_threads, dy=_matching_dy(dy, x))

    def _run(self, x, out, n_threads, dy=None):
        """The public function: the forward, or the backward if dy is given."""
        if self._depth_radius is not None:
            params = dict(depth_radius=self._depth_radius, bias=self._k, alpha=self._tf_alpha,
                          beta=self._beta)
            function = lrn if dy is None else lrn_backward
        else:
            params = dict(size=self._size, alpha=self._alpha, beta=self._beta, k=self._k,
                          convention=self._convention)
            function = (local_response_norm if dy is None
                        else local_response_norm_backward)
        inputs = (x,) if dy is None else (dy, x)
        return function(*inputs, axis=self._axis, out=out, n_threads=n_threads, **params)

    def __reduce__(self):
        # Pickling and copy.deepcopy (not the record of the last forward).
        if self._depth_radius is not None:
            return _restore_lrn, ((self._depth_radius, self._k, self._tf_alpha, self._beta),
                                  self._axis, None)
        return _restore_lrn, ((self._size, self._alpha, self._beta, self._k), self._axis,
                              self._convention)

    def __repr__(self):
        if self._depth_radius is not None:
            return (f"LocalResponseNorm.from_tf(depth_radius={self._depth_radius}, "
                    f"bias={self._k!r}, alpha={self._tf_alpha!r}, beta={self._beta!r}, "
                    f"axis={self._axis})")
        return (f"LocalResponseNorm({self._size}, alpha={self._alpha!r}, beta={self._beta!r}, "
                f"k={self._k!r}, convention={self._convention!r}, axis={self._axis})")


def _restore_lrn(arguments, axis, convention):
    if convention is None:  # TensorFlow's
        return LocalResponseNorm.from_tf(*arguments, axis=axis)
    return LocalResponseNorm(*arguments, convention=convention, axis=axis)
